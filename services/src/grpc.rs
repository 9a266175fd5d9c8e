//! The gRPC services of a node: audience management, membership subscription, profile lookup
//! and administration. Requests are validated here, once; domain errors map to statuses in
//! [`crate::convert::status`].

use crate::convert;
use audience_actors::connector::{Connectors, CursorError};
use audience_actors::node::Node;
use audience_actors::registry::{AudienceSpec, Registry};
use audience_proto::v1 as pb;
use audience_state::calculated::{CalcSpec, CalculatedAttributeRecord};
use audience_state::catalog::AudienceStatus;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Services {
    pub node: Arc<Node>,
    pub registry: Arc<Registry>,
    pub outputs: Arc<audience_actors::output_registry::OutputRegistry>,
    pub connectors: Arc<Connectors>,
    pub catalog: Arc<audience_actors::catalog_applier::CatalogApplier>,
    pub bootstrap_servers: String,
    /// Where the nodes announce themselves, the group, and the input topics.
    pub members: audience_actors::cluster_view::MembersTopic,
    pub group_id: String,
    pub input_topics: Vec<String>,
}

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

    fn with_figures(
        &self,
        records: Vec<audience_state::catalog::AudienceRecord>,
    ) -> Result<Vec<pb::Audience>, Status> {
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        let figures: HashMap<_, _> = self
            .node
            .engine
            .figures(&ids)
            .map_err(convert::internal)?
            .into_iter()
            .collect();
        let active: Vec<(u64, u64)> = records
            .iter()
            .filter(|r| r.status == AudienceStatus::Active)
            .map(|r| (r.id, r.revision))
            .collect();
        let calculations = self
            .node
            .engine
            .calculations(&self.node.owned(), &active)
            .map_err(convert::internal)?;
        let estimates = {
            let mut cached = self.node.engine.estimates.lock();
            // Estimates of finished calculations are not shown again.
            cached.retain(|(id, _), _| calculations.contains_key(id));
            cached.clone()
        };
        let connections = self.outputs.connections().map_err(convert::status)?;
        let faults = self.outputs.faults().map_err(convert::status)?;
        Ok(records
            .iter()
            .map(|r| {
                let mut a = convert::audience(r, figures.get(&r.id));
                if let Some(c) = calculations.get(&r.id) {
                    a.status = pb::AudienceStatus::Calculating as i32;
                    let mut calculation = convert::calculation(c);
                    calculation.estimate =
                        estimates.get(&(r.id, r.revision)).map(convert::estimate);
                    a.calculation = Some(calculation);
                }
                let mine: Vec<_> = connections
                    .iter()
                    .filter(|c| c.audience_id == r.id)
                    .collect();
                a.connected_outputs = mine.len() as u32;
                a.faulted_connections = mine
                    .iter()
                    .filter(|c| faults.iter().any(|f| f.connection_id == c.id))
                    .count() as u32;
                a
            })
            .collect())
    }

    fn one(
        &self,
        record: audience_state::catalog::AudienceRecord,
    ) -> Result<Response<pb::Audience>, Status> {
        Ok(Response::new(self.with_figures(vec![record])?.remove(0)))
    }
}

fn spec(
    name: String,
    external_name: String,
    criteria: Option<prost_types::Struct>,
    tags: Vec<String>,
) -> Result<AudienceSpec, Status> {
    let criteria = criteria
        .map(|c| convert::struct_to_json(&c))
        .ok_or_else(|| Status::invalid_argument("criteria: missing"))?;
    Ok(AudienceSpec {
        name,
        external_name,
        criteria,
        tags,
    })
}

#[tonic::async_trait]
impl pb::audience_service_server::AudienceService for Services {
    async fn create_audience(
        &self,
        req: Request<pb::CreateAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let r = req.into_inner();
        let spec = spec(r.name, r.external_name, r.criteria, r.tags)?;
        let record = self
            .registry
            .create(spec, r.draft)
            .await
            .map_err(convert::status)?;
        self.one(record)
    }

    async fn get_audience(
        &self,
        req: Request<pb::GetAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let record = self
            .registry
            .get(req.into_inner().id)
            .map_err(convert::status)?;
        let mut audience = self.one(record.clone())?.into_inner();
        if let Some(calculation) = audience
            .calculation
            .as_mut()
            .filter(|c| c.estimate.is_none())
        {
            let compiled = self.node.engine.catalog.load().active(record.id).cloned();
            if let Some(active) = compiled {
                let node = self.node.clone();
                let sampled = tokio::task::spawn_blocking(move || {
                    audience_actors::sampling::estimate_size(
                        &node.engine,
                        &node.owned(),
                        &active.compiled,
                        audience_state::estimate::DEFAULT_SAMPLE_SIZE,
                    )
                })
                .await
                .map_err(convert::internal)?
                .map_err(convert::internal)?;
                calculation.estimate = Some(convert::estimate(&sampled));
                self.node
                    .engine
                    .estimates
                    .lock()
                    .insert((record.id, record.revision), sampled);
            }
        }
        Ok(Response::new(audience))
    }

    async fn list_audiences(
        &self,
        req: Request<pb::ListAudiencesRequest>,
    ) -> Result<Response<pb::ListAudiencesResponse>, Status> {
        let records = self.registry.list(&req.into_inner().tags);
        Ok(Response::new(pb::ListAudiencesResponse {
            audiences: self.with_figures(records)?,
        }))
    }

    async fn update_audience(
        &self,
        req: Request<pb::UpdateAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let r = req.into_inner();
        let spec = spec(r.name, r.external_name, r.criteria, r.tags)?;
        let record = self
            .registry
            .update(r.id, spec)
            .await
            .map_err(convert::status)?;
        self.one(record)
    }

    async fn delete_audience(
        &self,
        req: Request<pb::DeleteAudienceRequest>,
    ) -> Result<Response<pb::DeleteAudienceResponse>, Status> {
        let id = req.into_inner().id;
        // Its connections go with it, and their outputs are told.
        self.registry.delete(id).await.map_err(convert::status)?;
        Ok(Response::new(pb::DeleteAudienceResponse {}))
    }

    async fn activate_audience(
        &self,
        req: Request<pb::AudienceIdRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let record = self
            .registry
            .set_status(req.into_inner().id, AudienceStatus::Active)
            .await
            .map_err(convert::status)?;
        self.one(record)
    }

    async fn set_event_tier(
        &self,
        req: Request<pb::EventTier>,
    ) -> Result<Response<pb::EventTier>, Status> {
        let r = req.into_inner();
        self.registry
            .set_event_tier(&r.event_type, &r.name, &r.tier)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::EventTier {
            event_type: r.event_type.trim().to_lowercase(),
            name: r.name.trim().to_lowercase(),
            tier: r.tier.trim().to_lowercase(),
        }))
    }

    async fn list_event_tiers(
        &self,
        _: Request<pb::ListEventTiersRequest>,
    ) -> Result<Response<pb::ListEventTiersResponse>, Status> {
        let tiers = self
            .node
            .engine
            .store
            .event_tiers()
            .map_err(convert::internal)?
            .into_iter()
            .map(|(event_type, name, tier)| pb::EventTier {
                event_type,
                name,
                tier,
            })
            .collect();
        Ok(Response::new(pb::ListEventTiersResponse { tiers }))
    }

    async fn put_calculated_attribute(
        &self,
        req: Request<pb::CalculatedAttribute>,
    ) -> Result<Response<pb::CalculatedAttribute>, Status> {
        let json = req
            .into_inner()
            .definition
            .map(|d| convert::struct_to_json(&d))
            .ok_or_else(|| Status::invalid_argument("definition: missing"))?;
        let record: CalculatedAttributeRecord =
            serde_path_to_error::deserialize(&json).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "definition".to_string()
                } else {
                    format!("definition.{path}")
                };
                Status::invalid_argument(format!("{field}: {}", e.into_inner()))
            })?;
        let record = self
            .registry
            .put_calculated(record)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(convert::calculated_attribute(&record)))
    }

    async fn list_calculated_attributes(
        &self,
        _: Request<pb::ListCalculatedAttributesRequest>,
    ) -> Result<Response<pb::ListCalculatedAttributesResponse>, Status> {
        let attributes = self
            .registry
            .list_calculated()
            .iter()
            .map(convert::calculated_attribute)
            .collect();
        Ok(Response::new(pb::ListCalculatedAttributesResponse {
            attributes,
        }))
    }

    async fn delete_calculated_attribute(
        &self,
        req: Request<pb::DeleteCalculatedAttributeRequest>,
    ) -> Result<Response<pb::DeleteCalculatedAttributeResponse>, Status> {
        self.registry
            .delete_calculated(&req.into_inner().name)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::DeleteCalculatedAttributeResponse {}))
    }

    async fn estimate_audience(
        &self,
        req: Request<pb::EstimateAudienceRequest>,
    ) -> Result<Response<pb::AudienceEstimate>, Status> {
        let r = req.into_inner();
        let criteria = r
            .criteria
            .map(|c| convert::struct_to_json(&c))
            .ok_or_else(|| Status::invalid_argument("criteria: missing"))?;
        let compiled = self
            .registry
            .compile_unsaved(criteria, None)
            .map_err(convert::status)?;
        let sample_size = match r.sample_size {
            0 => audience_state::estimate::DEFAULT_SAMPLE_SIZE,
            n => u64::from(n),
        };
        let node = self.node.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            audience_actors::sampling::estimate_size(
                &node.engine,
                &node.owned(),
                &compiled,
                sample_size,
            )
        })
        .await
        .map_err(convert::internal)?
        .map_err(convert::internal)?;
        Ok(Response::new(convert::estimate(&sampled)))
    }

    async fn preview_update(
        &self,
        req: Request<pb::PreviewUpdateRequest>,
    ) -> Result<Response<pb::UpdatePreview>, Status> {
        let r = req.into_inner();
        self.registry.get(r.audience_id).map_err(convert::status)?;
        let criteria = r
            .criteria
            .map(|c| convert::struct_to_json(&c))
            .ok_or_else(|| Status::invalid_argument("criteria: missing"))?;
        let compiled = self
            .registry
            .compile_unsaved(criteria, Some(r.audience_id))
            .map_err(convert::status)?;
        let sample = match r.sample_size {
            0 => 10,
            n => n as usize,
        };
        let node = self.node.clone();
        let audience = r.audience_id;
        let preview = tokio::task::spawn_blocking(move || {
            let engine = &node.engine;
            let partitions = node.owned();
            let preview = audience_actors::sampling::preview_edit(
                engine,
                &partitions,
                audience,
                &compiled,
                sample,
            )?;
            let ctx = audience_state::criteria::EvalContext {
                now: engine.clock.now(),
                retention_ms: engine.settings.retention_ms,
            };
            let mut reasons = [None, None];
            for (slot, mpid) in [preview.leaving.first(), preview.entering.first()]
                .into_iter()
                .enumerate()
            {
                let Some(&mpid) = mpid else { continue };
                if let Some(profile) = audience_actors::sampling::rebuilt_profile(
                    engine,
                    &partitions,
                    mpid,
                    &compiled,
                )? {
                    reasons[slot] = Some(pb::Explanation {
                        mpid,
                        audience_id: audience,
                        member: profile.memberships.get(&audience).is_some_and(|m| m.member),
                        root: Some(explain_node(&compiled.root.explain(&profile, &ctx))),
                        evaluated_at_ms: ctx.now,
                    });
                }
            }
            Ok::<_, audience_state::store::StoreError>((preview, reasons))
        })
        .await
        .map_err(convert::internal)?
        .map_err(convert::internal)?;
        let (p, [leaving_reason, entering_reason]) = preview;
        Ok(Response::new(pb::UpdatePreview {
            audience_id: audience,
            members_now: p.members_now,
            would_leave: p.would_leave,
            would_enter: p.would_enter,
            leaving_sample: p.leaving,
            entering_sample: p.entering,
            leaving_reason,
            entering_reason,
            profiles_scanned: p.scanned,
        }))
    }

    async fn save_as_draft(
        &self,
        req: Request<pb::AudienceIdRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let record = self
            .registry
            .set_status(req.into_inner().id, AudienceStatus::Draft)
            .await
            .map_err(convert::status)?;
        self.one(record)
    }
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<pb::MembershipDelta, Status>> + Send>>;

#[tonic::async_trait]
impl pb::membership_service_server::MembershipService for Services {
    type SubscribeStream = DeltaStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        let engine = self.node.engine.clone();
        let start = self
            .connectors
            .start(&r.cursor, &engine)
            .map_err(|e| match e {
                CursorError::Invalid(why) => Status::invalid_argument(why),
                CursorError::Foreign(why) => Status::out_of_range(why),
            })?;
        let catalog = engine.catalog.load();
        for (i, id) in r.audience_ids.iter().enumerate() {
            if catalog.record(*id).is_none() {
                return Err(Status::not_found(format!(
                    "audience_ids[{i}]: audience {id} not found"
                )));
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let name = if r.subscriber_name.is_empty() {
            "anonymous".to_string()
        } else {
            r.subscriber_name
        };
        self.connectors.subscribe(
            engine,
            name,
            r.audience_ids,
            start,
            &self.node.arbiter(),
            tx,
        );
        let stream = async_stream(move |out| async move {
            while let Some(item) = rx.recv().await {
                let msg = item
                    .map(|o| pb::MembershipDelta {
                        audience_id: o.delta.audience_id,
                        mpid: o.delta.mpid,
                        kind: convert::delta_kind(o.delta.kind) as i32,
                        event_time_ms: o.delta.event_time_ms,
                        processing_time_ms: o.delta.processing_time_ms,
                        version: o.delta.version,
                        delta_id: o.delta.delta_id(),
                        partition: o.partition,
                        sequence: o.sequence,
                        cursor: o.cursor,
                    })
                    .map_err(Status::out_of_range);
                if out.send(msg).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_connectors(
        &self,
        _: Request<pb::ListConnectorsRequest>,
    ) -> Result<Response<pb::ListConnectorsResponse>, Status> {
        let connectors = self
            .connectors
            .describe()
            .await
            .into_iter()
            .map(|c| pb::Connector {
                id: c.id,
                subscriber_name: c.subscriber_name,
                audience_ids: c.audience_ids,
                delivered: c.delivered,
                cursor: c.cursor,
                connected_at_ms: c.connected_at_ms,
                audiences: c
                    .audiences
                    .iter()
                    .map(|(id, f)| pb::ConnectorAudienceStats {
                        audience_id: *id,
                        stats: Some(convert::stats(f)),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListConnectorsResponse { connectors }))
    }

    async fn get_membership_history(
        &self,
        req: Request<pb::GetMembershipHistoryRequest>,
    ) -> Result<Response<pb::MembershipHistory>, Status> {
        let mpid = req.into_inner().mpid;
        let engine = &self.node.engine;
        let catalog = engine.catalog.load();
        let from = engine.clock.now() - engine.settings.retention_ms;
        let mut intervals = Vec::new();
        for p in self.all_partitions()? {
            let changes = engine
                .store
                .membership_changes_of(p, mpid)
                .map_err(convert::internal)?;
            for (audience, changes) in changes {
                for i in audience_state::membership::intervals(audience, &changes) {
                    if i.left_ms.is_some_and(|left| left < from) {
                        continue;
                    }
                    intervals.push(pb::MembershipInterval {
                        audience_id: audience,
                        audience_name: catalog
                            .record(audience)
                            .map(|r| r.name.clone())
                            .unwrap_or_default(),
                        entered_ms: i.entered_ms,
                        left_ms: i.left_ms.unwrap_or_default(),
                        entered_version: i.entered_version,
                        left_version: i.left_version.unwrap_or_default(),
                    });
                }
            }
        }
        intervals.sort_by_key(|i| (i.entered_ms, i.audience_id));
        Ok(Response::new(pb::MembershipHistory { mpid, intervals }))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let r = req.into_inner();
        let engine = &self.node.engine;
        self.registry.get(r.audience_id).map_err(convert::status)?;
        let now = engine.clock.now();
        let as_of = if r.as_of_ms == 0 { now } else { r.as_of_ms };
        if as_of > now || as_of < now - engine.settings.retention_ms {
            return Err(Status::out_of_range(format!(
                "as_of_ms: {as_of} is outside the retention window {}..{now}",
                now - engine.settings.retention_ms
            )));
        }
        let page_size = match r.page_size {
            0 => 1_000,
            n => n.min(100_000) as usize,
        };
        // The token is "partition:last mpid".
        let (mut partition, mut after) = match r.page_token.split_once(':') {
            None if r.page_token.is_empty() => (None, None),
            Some((p, m)) => match (p.parse::<u32>(), m.parse::<i64>()) {
                (Ok(p), Ok(m)) => (Some(p), Some(m)),
                _ => {
                    return Err(Status::invalid_argument(
                        "page_token: not a token of ListMembers",
                    ))
                }
            },
            None => {
                return Err(Status::invalid_argument(
                    "page_token: not a token of ListMembers",
                ))
            }
        };
        let mut mpids = Vec::new();
        let mut next_page_token = String::new();
        for p in self.all_partitions()? {
            if partition.is_some_and(|from| p < from) {
                continue;
            }
            if partition.is_some_and(|from| p > from) {
                after = None;
            }
            partition = Some(p);
            let want = page_size - mpids.len();
            let page = engine
                .store
                .members_at(p, r.audience_id, as_of, after, want)
                .map_err(convert::internal)?;
            let full = page.len() == want;
            if let Some(last) = page.last() {
                if full {
                    next_page_token = format!("{p}:{last}");
                }
            }
            mpids.extend(page);
            if full {
                break;
            }
        }
        Ok(Response::new(pb::ListMembersResponse {
            mpids,
            next_page_token,
            as_of_ms: as_of,
        }))
    }

    async fn get_audience_stats(
        &self,
        req: Request<pb::GetAudienceStatsRequest>,
    ) -> Result<Response<pb::GetAudienceStatsResponse>, Status> {
        let ids = req.into_inner().audience_ids;
        let audiences = self
            .node
            .engine
            .figures(&ids)
            .map_err(convert::internal)?
            .iter()
            .map(|(id, f)| pb::ConnectorAudienceStats {
                audience_id: *id,
                stats: Some(convert::stats(f)),
            })
            .collect();
        Ok(Response::new(pb::GetAudienceStatsResponse { audiences }))
    }
}

/// A stream fed by a task: the task gets a sender and the response gets the receiver.
fn async_stream<F, Fut>(producer: F) -> DeltaStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::MembershipDelta, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn explain_node(e: &audience_state::criteria::Explanation) -> pb::ExplainNode {
    pb::ExplainNode {
        criterion: e.criterion.clone(),
        matched: e.matched,
        detail: e.detail.clone(),
        next_change_ms: e.next_change.unwrap_or(0),
        children: e.children.iter().map(explain_node).collect(),
    }
}

impl Services {
    /// A profile from whichever partition of this node holds it.
    /// Every partition this node runs or has stored, in order.
    fn all_partitions(&self) -> Result<Vec<u32>, Status> {
        let engine = &self.node.engine;
        let mut partitions: Vec<u32> = self.node.owned();
        partitions.extend(engine.partitions.lock().iter().copied());
        partitions.extend(engine.store.known_partitions().map_err(convert::internal)?);
        partitions.sort();
        partitions.dedup();
        Ok(partitions)
    }

    fn load_profile(
        &self,
        mpid: i64,
    ) -> Result<(u32, audience_state::profile::ProfileState), Status> {
        let engine = &self.node.engine;
        let partitions = self.all_partitions()?;
        let found = engine
            .store
            .find_profile(mpid, partitions)
            .map_err(convert::internal)?;
        found.ok_or_else(|| Status::not_found(format!("mpid {mpid}: no profile")))
    }
}

#[tonic::async_trait]
impl pb::profile_service_server::ProfileService for Services {
    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let mpid = req.into_inner().mpid;
        let engine = &self.node.engine;
        let (partition, profile) = self.load_profile(mpid)?;
        let log = engine
            .store
            .load_log_head(partition, mpid)
            .map_err(convert::internal)?
            .unwrap_or_default();
        let catalog = engine.catalog.load();
        let name = |id: u64| catalog.active(id).map(|a| a.record.name.clone());
        let now = engine.clock.now();
        let from = now - engine.settings.retention_ms;
        let calculated: Vec<(String, CalcSpec)> = catalog
            .calculated_records()
            .iter()
            .filter_map(|r| {
                let spec = catalog.calculated_spec(&r.name.trim().to_lowercase())?;
                Some((r.name.clone(), spec))
            })
            .collect();
        let mut shown = convert::profile(&profile, name, from, &calculated, now);
        shown.event_log = Some(convert::log_stats(&log.stats()));
        Ok(Response::new(shown))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let r = req.into_inner();
        let engine = &self.node.engine;
        let catalog = engine.catalog.load();
        let audience = match (catalog.active(r.audience_id), catalog.record(r.audience_id)) {
            (Some(a), _) => a.clone(),
            (None, Some(_)) => {
                return Err(Status::failed_precondition(format!(
                    "audience_id: audience {} is a draft: activate it to evaluate it",
                    r.audience_id
                )))
            }
            (None, None) => {
                return Err(Status::not_found(format!(
                    "audience_id: audience {} not found",
                    r.audience_id
                )))
            }
        };
        let (_, profile) = self.load_profile(r.mpid)?;
        let ctx = audience_state::criteria::EvalContext {
            now: engine.clock.now(),
            retention_ms: engine.settings.retention_ms,
        };
        let explanation = audience.compiled.root.explain(&profile, &ctx);
        Ok(Response::new(pb::Explanation {
            mpid: r.mpid,
            audience_id: r.audience_id,
            member: profile
                .memberships
                .get(&r.audience_id)
                .is_some_and(|m| m.member),
            root: Some(explain_node(&explanation)),
            evaluated_at_ms: ctx.now,
        }))
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
        use audience_actors::cluster_view::{now_ms, owners, SILENT_AFTER};
        let members = self.members.clone();
        let topics = self.input_topics.clone();
        let (nodes, ends) = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((members.read()?, members.input_ends(&topics)?))
        })
        .await
        .map_err(convert::internal)?
        .map_err(Status::unavailable)?;
        let now = now_ms();
        let owners = owners(&nodes, now);
        let partitions = ends
            .iter()
            .map(|(&p, &end)| {
                let owner = owners.get(&p).cloned().unwrap_or_default();
                let lag = nodes
                    .get(&owner)
                    .and_then(|a| a.next_offsets.get(&p))
                    .map_or(-1, |next| (end - next).max(0));
                let restoring_on = nodes
                    .values()
                    .find(|a| a.restoring.contains(&p))
                    .map(|a| a.node_id.clone())
                    .unwrap_or_default();
                pb::ClusterPartition {
                    partition: p,
                    owner,
                    restoring_on,
                    lag,
                }
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
                    pb::ClusterNode {
                        node_id: a.node_id,
                        grpc: a.grpc,
                        partitions: a.partitions,
                        restoring: a.restoring,
                        catalog_applied_offset: a.catalog_applied_offset,
                        announced_ms_ago: ago,
                        silent: ago > SILENT_AFTER.as_millis() as i64,
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
