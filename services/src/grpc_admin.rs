//! The admin service: the manual clock of tests, replays from the event log, the cluster as
//! the members topic shows it (`audiencectl cluster`), this node's engine status, the audit
//! log and API tokens (`crate::grpc_tokens`).

use crate::blocking::off_runtime;
use crate::convert;
use crate::grpc::Services;
use audience_actors::partition::ReplayMode;
use audience_actors::publisher::DELTAS_SINK;
use audience_proto::v1 as pb;
use std::sync::atomic::Ordering;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Entries of a ListAuditLog page without a size, and the most one page holds.
const DEFAULT_AUDIT_PAGE: usize = 100;
const MAX_AUDIT_PAGE: usize = 1_000;

impl Services {
    /// The replays of this node's partitions, running or finished.
    fn replay_status(&self) -> pb::ReplayStatus {
        crate::replay_report::local_status(&self.node.engine, self.peers.node_id())
    }

    /// `here` with the replays of every other live node (each answering for its own
    /// partitions), by partition.
    async fn with_peers_replays(
        &self,
        caller: &MetadataMap,
        here: pb::ReplayStatus,
    ) -> Result<pb::ReplayStatus, Status> {
        let peers = self.peers.others(caller).await?;
        let ask = |channel| {
            let request = self.peers.request(caller, pb::GetReplayRequest {});
            async move {
                pb::admin_service_client::AdminServiceClient::new(channel)
                    .get_replay(request)
                    .await
            }
        };
        let theirs = self.peers.ask_every(&peers, ask).await?;
        Ok(merge_replays(here, theirs))
    }
}

/// Replay statuses of several nodes as one: every partition, running if any runs.
fn merge_replays(here: pb::ReplayStatus, theirs: Vec<pb::ReplayStatus>) -> pb::ReplayStatus {
    let mut partitions = here.partitions;
    let mut definitions_quarantined = here.definitions_quarantined;
    for status in theirs {
        partitions.extend(status.partitions);
        definitions_quarantined.extend(status.definitions_quarantined);
    }
    partitions.sort_by(|a, b| (a.partition, &a.node_id).cmp(&(b.partition, &b.node_id)));
    pb::ReplayStatus {
        running: partitions.iter().any(|p| p.running),
        partitions,
        definitions_quarantined,
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
        let caller = req.metadata().clone();
        let req = req.into_inner();
        let mode = match (req.wipe_profiles, req.check_only) {
            (false, false) => ReplayMode::Rebuild,
            (true, false) => ReplayMode::RebuildWiped,
            (false, true) => ReplayMode::Verify,
            (true, true) => {
                return Err(Status::invalid_argument(
                    "check_only writes nothing: it cannot wipe the profiles too",
                ))
            }
        };
        let started = self.node.start_replay(mode).await;
        let peers = self.peers.others(&caller).await?;
        if started.is_empty() && peers.is_empty() {
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
        // Every other live node starts it on the partitions it owns.
        let ask = |channel| {
            let request = self.peers.request(&caller, req);
            async move {
                pb::admin_service_client::AdminServiceClient::new(channel)
                    .replay_from_log(request)
                    .await
            }
        };
        let mut theirs = Vec::new();
        for answer in self.peers.ask(&peers, ask).await {
            match answer {
                Ok(status) => theirs.push(status),
                // A node that owns no partition has nothing to replay.
                Err(e) if e.code() == tonic::Code::FailedPrecondition => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Response::new(merge_replays(self.replay_status(), theirs)))
    }

    async fn get_replay(
        &self,
        req: Request<pb::GetReplayRequest>,
    ) -> Result<Response<pb::ReplayStatus>, Status> {
        let here = self.replay_status();
        let status = self.with_peers_replays(req.metadata(), here).await?;
        Ok(Response::new(status))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        self.create_token_call(req).await
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.list_tokens_call()
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.revoke_token_call(req).await
    }

    async fn list_audit_log(
        &self,
        req: Request<pb::ListAuditLogRequest>,
    ) -> Result<Response<pb::ListAuditLogResponse>, Status> {
        let r = req.into_inner();
        let page = crate::paging::page::<i64>(
            "ListAuditLog",
            r.page_size,
            &r.page_token,
            DEFAULT_AUDIT_PAGE,
            MAX_AUDIT_PAGE,
        )?;
        let by = Some(r.by.trim())
            .filter(|b| !b.is_empty())
            .map(str::to_string);
        let store = self.node.engine.store.clone();
        // One more than the page: whether another page follows.
        let mut entries = tokio::task::spawn_blocking(move || {
            store.audit_log(page.after, page.size + 1, by.as_deref())
        })
        .await
        .map_err(convert::internal)?
        .map_err(convert::internal)?;
        let next_page_token = crate::paging::cut(&mut entries, page.size, |e| e.offset);
        Ok(Response::new(pb::ListAuditLogResponse {
            entries: entries.iter().map(convert::audit_entry).collect(),
            next_page_token,
        }))
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
        let snapshots = self.node.snapshots().await;
        let stalled = self.node.stalled();
        let owned: Vec<u32> = engine.partitions.lock().iter().copied().collect();
        let store = engine.store.clone();
        // Counted and read from the store.
        let (dead_letters_kept, changelog_units_pending, partitions) = off_runtime(move || {
            let mut kept = 0;
            for p in owned {
                kept += store.count_dead_letters(p).map_err(convert::internal)?;
            }
            let mut partitions = Vec::with_capacity(snapshots.len());
            for s in snapshots {
                partitions.push(pb::PartitionStatus {
                    partition: s.partition,
                    next_offsets: s.next_offsets.into_iter().collect(),
                    outbox_head: s.outbox_head,
                    profiles_active: s.profiles_active,
                    stalled: stalled.contains(&s.partition),
                    deltas_published: store
                        .published(DELTAS_SINK, s.partition)
                        .map_err(convert::internal)?,
                });
            }
            let mut pending = 0;
            for p in store
                .partitions_with_pending_units()
                .map_err(convert::internal)?
            {
                let (written, acknowledged) =
                    store.changelog_position(p).map_err(convert::internal)?;
                pending += written.saturating_sub(acknowledged);
            }
            Ok((kept, pending, partitions))
        })
        .await?;
        let c = &engine.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let catalog = self.catalog.status();
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
            state_bytes_written: engine.store.partition_bytes_committed(),
        }))
    }
}
