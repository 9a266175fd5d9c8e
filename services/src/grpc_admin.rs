//! The admin service: the manual clock of tests, replays from the event log, the cluster as
//! the members topic shows it (`audiencectl cluster`), and this node's engine status.

use crate::convert;
use crate::grpc::Services;
use audience_proto::v1 as pb;
use std::sync::atomic::Ordering;
use tonic::{Request, Response, Status};

impl Services {
    /// The replays of this node's partitions, running or finished.
    fn replay_status(&self) -> pb::ReplayStatus {
        let replays = self.node.engine.replays.lock().clone();
        let mut partitions: Vec<pb::PartitionReplay> = replays
            .into_iter()
            .map(|(partition, r)| pb::PartitionReplay {
                partition,
                wiped: r.wiped,
                running: r.finished_at_ms.is_none(),
                profiles_scanned: r.scanned,
                profiles_total: r.total,
                deltas: r.deltas,
                unreadable_logs: r.unreadable,
                started_at_ms: r.started_at_ms,
                finished_at_ms: r.finished_at_ms.unwrap_or(0),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        pb::ReplayStatus {
            running: partitions.iter().any(|p| p.running),
            partitions,
        }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Services {
    async fn advance_clock(
        &self,
        req: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::ClockResponse>, Status> {
        let clock = &self.node.engine.clock;
        let now = clock
            .advance(req.into_inner().millis)
            .map_err(Status::failed_precondition)?;
        self.node.tick();
        Ok(Response::new(pb::ClockResponse {
            now_ms: now,
            manual: true,
        }))
    }

    async fn get_clock(
        &self,
        _: Request<pb::GetClockRequest>,
    ) -> Result<Response<pb::ClockResponse>, Status> {
        let clock = &self.node.engine.clock;
        Ok(Response::new(pb::ClockResponse {
            now_ms: clock.now(),
            manual: clock.is_manual(),
        }))
    }

    async fn replay_from_log(
        &self,
        req: Request<pb::ReplayFromLogRequest>,
    ) -> Result<Response<pb::ReplayStatus>, Status> {
        let wipe = req.into_inner().wipe_profiles;
        let started = self.node.start_replay(wipe).await;
        if started.is_empty() {
            return Err(Status::failed_precondition(
                "this node owns no partition yet: nothing to replay",
            ));
        }
        let failed: Vec<String> = started
            .iter()
            .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("partition {p}: {e}")))
            .collect();
        if !failed.is_empty() {
            return Err(Status::internal(format!(
                "replay could not start on {}",
                failed.join("; ")
            )));
        }
        Ok(Response::new(self.replay_status()))
    }

    async fn get_replay(
        &self,
        _: Request<pb::GetReplayRequest>,
    ) -> Result<Response<pb::ReplayStatus>, Status> {
        Ok(Response::new(self.replay_status()))
    }

    async fn get_cluster_status(
        &self,
        _: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        use audience_actors::cluster_view::{is_silent, now_ms, partitions};
        let members = self.members.clone();
        let topics = self.input_topics.clone();
        let (nodes, ends) = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((members.read()?, members.input_ends(&topics)?))
        })
        .await
        .map_err(convert::internal)?
        .map_err(Status::unavailable)?;
        let now = now_ms();
        let partitions = partitions(&nodes, &ends, now)
            .into_iter()
            .map(|p| pb::ClusterPartition {
                partition: p.partition,
                owner: p.owner,
                restoring_on: p.restoring_on,
                lag: p.lag,
                standbys: p.standbys,
            })
            .collect();
        Ok(Response::new(pb::ClusterStatus {
            cluster_id: self
                .node
                .engine
                .cluster_id
                .read()
                .clone()
                .unwrap_or_default(),
            group_id: self.group_id.clone(),
            answered_by: self.catalog.status().node_id,
            nodes: nodes
                .into_values()
                .map(|a| {
                    let ago = (now - a.at_ms).max(0);
                    let silent = is_silent(&a, now);
                    pb::ClusterNode {
                        node_id: a.node_id,
                        grpc: a.grpc,
                        partitions: a.partitions,
                        restoring: a.restoring,
                        catalog_applied_offset: a.catalog_applied_offset,
                        announced_ms_ago: ago,
                        silent,
                    }
                })
                .collect(),
            partitions,
        }))
    }

    async fn get_engine_status(
        &self,
        _: Request<pb::GetEngineStatusRequest>,
    ) -> Result<Response<pb::EngineStatus>, Status> {
        let engine = &self.node.engine;
        let partitions = self
            .node
            .snapshots()
            .await
            .into_iter()
            .map(|s| pb::PartitionStatus {
                partition: s.partition,
                next_offsets: s.next_offsets.into_iter().collect(),
                outbox_head: s.outbox_head,
                profiles_active: s.profiles_active,
            })
            .collect();
        let owned: Vec<u32> = engine.partitions.lock().iter().copied().collect();
        let mut dead_letters_kept = 0;
        for p in owned {
            dead_letters_kept += engine
                .store
                .count_dead_letters(p)
                .map_err(convert::internal)?;
        }
        let c = &engine.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let catalog = self.catalog.status();
        let mut changelog_units_pending = 0;
        for p in engine
            .store
            .partitions_with_pending_units()
            .map_err(convert::internal)?
        {
            let (written, acknowledged) = engine
                .store
                .changelog_position(p)
                .map_err(convert::internal)?;
            changelog_units_pending += written.saturating_sub(acknowledged);
        }
        Ok(Response::new(pb::EngineStatus {
            messages_processed: engine.counters.messages_processed.load(Ordering::Relaxed),
            messages_dead_lettered: engine
                .counters
                .messages_dead_lettered
                .load(Ordering::Relaxed),
            deltas_emitted: engine.counters.deltas_emitted.load(Ordering::Relaxed),
            partitions,
            bootstrap_servers: self.bootstrap_servers.clone(),
            dead_letters_published: load(&c.dead_letters_published),
            dead_letters_truncated: load(&c.dead_letters_truncated),
            dead_letters_unpublishable: load(&c.dead_letters_unpublishable),
            dead_letters_dropped: load(&c.dead_letters_dropped),
            dead_letters_kept,
            deltas_unpublishable: load(&c.deltas_unpublishable),
            catalog_applied_offset: catalog.applied_offset.unwrap_or(-1),
            catalog_applied_at_start: catalog.applied_at_start,
            catalog_records_undecodable: catalog.undecodable,
            catalog_lag: catalog.lag,
            node_id: catalog.node_id,
            changelog_units_pending,
        }))
    }
}
