//! The gRPC services of a node: audience management, membership subscription, profile lookup
//! and administration. Requests are validated here, once; domain errors map to statuses in
//! [`crate::convert::status`].

use crate::audience_request::{in_workspace_filter, required_criteria};
use crate::auth::caller_name;
use crate::convert;
use crate::paging::{self, TierKey, DEFAULT_PAGE, MAX_PAGE};
use crate::peers::{scoped_partition, Peers};
use crate::workspace_view::WorkspaceView;
use audience_actors::connector::{Connectors, CursorError};
use audience_actors::deltas_tail::StreamError;
use audience_actors::node::Node;
use audience_actors::registry::{AudienceSpec, Registry};
use audience_proto::v1 as pb;
use audience_state::ab_test::Variation;
use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::AudienceStatus;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// The largest sample `EstimateAudience` draws: 100,000 profiles already put a 95% interval
/// within half a percent of the population. A larger one is refused, not turned into a scan
/// holding every MPID it draws.
pub const MAX_ESTIMATE_SAMPLE: u32 = 100_000;

/// The most profiles `PreviewUpdate` lists on each side (leaving, entering).
pub const MAX_PREVIEW_SAMPLE: u32 = 1_000;

#[derive(Clone)]
pub struct Services {
    /// Who may call: its configured tokens, and whether it asks for any.
    pub auth: crate::auth::Authenticator,
    /// The delta streams each token holds open (`grpc.max_subscribers_per_token`).
    pub subscriber_slots: std::sync::Arc<crate::subscriber_slots::SubscriberSlots>,
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
    /// The other nodes, asked for their partitions' part of a read.
    pub peers: Arc<Peers>,
    /// Bounds the estimates and previews this node scans at once.
    pub scans: crate::scan_gate::ScanGate,
}

/// The registry's spec of a create or update request (both carry the same fields), moved out
/// of the request `$r`.
macro_rules! spec_of {
    ($r:ident) => {
        AudienceSpec {
            name: $r.name,
            external_name: $r.external_name,
            criteria: required_criteria($r.criteria)?,
            tags: $r.tags,
            workspaces: $r.workspaces,
            inputs: $r.inputs,
            access: convert::access_of("access", $r.access)?,
            ab_test: None,
        }
    };
}

#[tonic::async_trait]
impl pb::audience_service_server::AudienceService for Services {
    async fn create_audience(
        &self,
        req: Request<pb::CreateAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let draft = r.draft;
        let spec = spec_of!(r);
        self.check_saved(&view, &spec)?;
        let record = self
            .registry
            .create(&by, spec, draft)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
    }

    async fn get_audience(
        &self,
        req: Request<pb::GetAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let record = self.seen_audience(&view, req.into_inner().id)?;
        let mut audience = self.one(&caller, record.clone()).await?.into_inner();
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
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let page = paging::page::<u64>(
            "ListAudiences",
            r.page_size,
            &r.page_token,
            DEFAULT_PAGE,
            MAX_PAGE,
        )?;
        let kind = r.workspace_kind();
        let mut records: Vec<_> = self
            .registry
            .list(&r.tags)
            .into_iter()
            .filter(|a| in_workspace_filter(a, &r.workspace, kind, &view))
            .filter(|a| view.sees_audience(a))
            .collect();
        records.sort_by_key(|a| a.id);
        let (records, next_page_token) = paging::take(records, &page, |a| a.id);
        Ok(Response::new(pb::ListAudiencesResponse {
            audiences: self.with_figures(&caller, records).await?,
            next_page_token,
        }))
    }

    async fn update_audience(
        &self,
        req: Request<pb::UpdateAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let id = r.id;
        self.owned_audience(&view, id)?;
        let spec = spec_of!(r);
        self.check_saved(&view, &spec)?;
        let record = self
            .registry
            .update(&by, id, spec)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
    }

    async fn delete_audience(
        &self,
        req: Request<pb::DeleteAudienceRequest>,
    ) -> Result<Response<pb::DeleteAudienceResponse>, Status> {
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let id = req.into_inner().id;
        self.owned_audience(&view, id)?;
        // Its connections go with it, and their outputs are told.
        self.registry
            .delete(&by, id)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::DeleteAudienceResponse {}))
    }

    async fn activate_audience(
        &self,
        req: Request<pb::AudienceIdRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let id = req.into_inner().id;
        self.owned_audience(&view, id)?;
        let record = self
            .registry
            .set_status(&by, id, AudienceStatus::Active)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
    }

    async fn set_event_tier(
        &self,
        req: Request<pb::EventTier>,
    ) -> Result<Response<pb::EventTier>, Status> {
        let by = caller_name(&req);
        let r = req.into_inner();
        self.registry
            .set_event_tier(&by, &r.event_type, &r.name, &r.tier)
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
        req: Request<pb::ListEventTiersRequest>,
    ) -> Result<Response<pb::ListEventTiersResponse>, Status> {
        let r = req.into_inner();
        let page = paging::page::<TierKey>(
            "ListEventTiers",
            r.page_size,
            &r.page_token,
            DEFAULT_PAGE,
            MAX_PAGE,
        )?;
        let mut all = self
            .node
            .engine
            .store
            .event_tiers()
            .map_err(convert::internal)?;
        all.sort();
        let (tiers, next_page_token) =
            paging::take(all, &page, |(t, n, _)| TierKey(t.clone(), n.clone()));
        let tiers = tiers
            .into_iter()
            .map(|(event_type, name, tier)| pb::EventTier {
                event_type,
                name,
                tier,
            })
            .collect();
        Ok(Response::new(pb::ListEventTiersResponse {
            tiers,
            next_page_token,
        }))
    }

    async fn put_calculated_attribute(
        &self,
        req: Request<pb::CalculatedAttribute>,
    ) -> Result<Response<pb::CalculatedAttribute>, Status> {
        let by = caller_name(&req);
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
            .put_calculated(&by, record)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(convert::calculated_attribute(&record)))
    }

    async fn list_calculated_attributes(
        &self,
        req: Request<pb::ListCalculatedAttributesRequest>,
    ) -> Result<Response<pb::ListCalculatedAttributesResponse>, Status> {
        let r = req.into_inner();
        let page = paging::page::<String>(
            "ListCalculatedAttributes",
            r.page_size,
            &r.page_token,
            DEFAULT_PAGE,
            MAX_PAGE,
        )?;
        let key = |a: &CalculatedAttributeRecord| a.name.trim().to_lowercase();
        let mut all = self.registry.list_calculated();
        all.sort_by_key(key);
        let (attributes, next_page_token) = paging::take(all, &page, key);
        Ok(Response::new(pb::ListCalculatedAttributesResponse {
            attributes: attributes
                .iter()
                .map(convert::calculated_attribute)
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_calculated_attribute(
        &self,
        req: Request<pb::DeleteCalculatedAttributeRequest>,
    ) -> Result<Response<pb::DeleteCalculatedAttributeResponse>, Status> {
        let by = caller_name(&req);
        self.registry
            .delete_calculated(&by, &req.into_inner().name)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::DeleteCalculatedAttributeResponse {}))
    }

    async fn estimate_audience(
        &self,
        req: Request<pb::EstimateAudienceRequest>,
    ) -> Result<Response<pb::AudienceEstimate>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let mut r = req.into_inner();
        let criteria_struct = r.criteria.clone();
        let criteria = required_criteria(r.criteria)?;
        // The nodes asked below estimate the same scope for the same token.
        r.workspaces = self.estimated_scope(&view, &criteria, r.workspaces, &r.inputs)?;
        let compiled = self
            .registry
            .compile_unsaved(criteria, None, &r.workspaces, &r.inputs)
            .map_err(convert::status)?;
        let sample_size = match r.sample_size {
            0 => audience_state::estimate::DEFAULT_SAMPLE_SIZE,
            n if n > MAX_ESTIMATE_SAMPLE => {
                return Err(Status::invalid_argument(format!(
                    "sample_size: {n} is over the limit of {MAX_ESTIMATE_SAMPLE} profiles"
                )))
            }
            n => u64::from(n),
        };
        // A limited token counts only the profiles of its workspaces; a node pooling a
        // sample reads every population.
        let scoped_total = view.is_limited() && !crate::peers::node_scoped(&caller);
        let answer = |sampled: &audience_actors::engine::SampledEstimate| {
            let mut out = convert::estimate(sampled);
            if scoped_total {
                out.profiles_total = convert::population_in_scope(sampled);
            }
            Response::new(out)
        };
        let peers = self.peers.others(&caller).await?;
        if peers.is_empty() {
            let sampled = self.sample_here(compiled, sample_size).await?;
            return Ok(answer(&sampled));
        }
        // One sample over the cluster, as one node draws it over its partitions: each node
        // draws a share proportional to its profiles, and the draws are pooled.
        let population_here = self.profiles_here()?;
        let counted = pb::EstimateAudienceRequest {
            criteria: criteria_struct.clone(),
            sample_size: 1,
            workspaces: r.workspaces.clone(),
            inputs: r.inputs.clone(),
        };
        let populations: Vec<u64> = self
            .peers
            .ask_every(&peers, |channel| {
                let request = self.peers.request(&caller, counted.clone());
                async move {
                    pb::audience_service_client::AudienceServiceClient::new(channel)
                        .estimate_audience(request)
                        .await
                }
            })
            .await?
            .iter()
            .map(|e| e.profiles_total)
            .collect();
        let population = population_here + populations.iter().sum::<u64>();
        let share = |n: u64| -> u64 {
            if population == 0 {
                return 0;
            }
            (u128::from(sample_size) * u128::from(n)).div_ceil(u128::from(population)) as u64
        };
        let mut pooled = self.sample_here(compiled, share(population_here)).await?;
        let draws = peers
            .iter()
            .zip(&populations)
            .filter(|(_, &n)| share(n) > 0)
            .map(|(peer, &n)| {
                let asked = pb::EstimateAudienceRequest {
                    criteria: criteria_struct.clone(),
                    sample_size: share(n).min(u64::from(u32::MAX)) as u32,
                    workspaces: r.workspaces.clone(),
                    inputs: r.inputs.clone(),
                };
                let caller = &caller;
                self.peers
                    .ask_every(std::slice::from_ref(peer), move |channel| {
                        let request = self.peers.request(caller, asked.clone());
                        async move {
                            pb::audience_service_client::AudienceServiceClient::new(channel)
                                .estimate_audience(request)
                                .await
                        }
                    })
            });
        let mut drawn = Vec::new();
        for answers in futures::future::join_all(draws).await {
            drawn.extend(answers?);
        }
        for d in drawn {
            pooled.sampled += d.sample_size;
            pooled.sampled_members += d.sampled_members;
            pooled.sampled_in_scope += d.sampled_in_scope;
        }
        pooled.population = population;
        pooled.estimate = audience_state::estimate::estimate(
            pooled.sampled_members,
            pooled.sampled,
            population.max(pooled.sampled),
        );
        Ok(answer(&pooled))
    }

    async fn list_inputs(
        &self,
        req: Request<pb::ListInputsRequest>,
    ) -> Result<Response<pb::ListInputsResponse>, Status> {
        let view = WorkspaceView::of(&req);
        let settings = &self.node.engine.settings;
        let inputs = settings
            .inputs
            .inputs()
            .iter()
            .filter(|i| view.sees_workspace(&i.workspace))
            .map(|i| pb::Input {
                name: i.name.clone(),
                workspace: i.workspace.clone(),
                topic: i.topic.clone().unwrap_or_default(),
                source: i.source.clone().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListInputsResponse {
            inputs,
            source_field: settings.source_field.join("."),
        }))
    }

    async fn preview_update(
        &self,
        req: Request<pb::PreviewUpdateRequest>,
    ) -> Result<Response<pb::UpdatePreview>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let asked = r.clone();
        // The edit keeps the audience's scope; only its owners edit it.
        let current = self.owned_audience(&view, r.audience_id)?;
        let criteria = required_criteria(r.criteria)?;
        self.check_definition(&view, &criteria, &current.workspaces, &current.inputs)?;
        let compiled = self
            .registry
            .compile_unsaved(
                criteria,
                Some(r.audience_id),
                &current.workspaces,
                &current.inputs,
            )
            .map_err(convert::status)?;
        let sample = match r.sample_size {
            0 => 10,
            n if n > MAX_PREVIEW_SAMPLE => {
                return Err(Status::invalid_argument(format!(
                    "sample_size: {n} is over the limit of {MAX_PREVIEW_SAMPLE} profiles listed per side"
                )))
            }
            n => n as usize,
        };
        let permit = self.scans.enter("PreviewUpdate")?;
        let node = self.node.clone();
        let audience = r.audience_id;
        let preview = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
        let here = pb::UpdatePreview {
            audience_id: audience,
            members_now: p.members_now,
            would_leave: p.would_leave,
            would_enter: p.would_enter,
            leaving_sample: p.leaving,
            entering_sample: p.entering,
            leaving_reason,
            entering_reason,
            profiles_scanned: p.scanned,
        };
        // The other nodes' partitions, each previewed where it is.
        let peers = self.peers.others(&caller).await?;
        let mut parts = self
            .peers
            .ask_every(&peers, |channel| {
                let request = self.peers.request(&caller, asked.clone());
                async move {
                    pb::audience_service_client::AudienceServiceClient::new(channel)
                        .preview_update(request)
                        .await
                }
            })
            .await?;
        parts.push(here);
        Ok(Response::new(crate::peers::merge_previews(parts, sample)))
    }

    async fn save_as_draft(
        &self,
        req: Request<pb::AudienceIdRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let id = req.into_inner().id;
        self.owned_audience(&view, id)?;
        let record = self
            .registry
            .set_status(&by, id, AudienceStatus::Draft)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
    }

    async fn clone_audience(
        &self,
        req: Request<pb::CloneAudienceRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let source = self.seen_audience(&view, r.id)?;
        let spec = AudienceSpec::clone_of(&source, r.name);
        self.check_saved(&view, &spec)?;
        let record = self
            .registry
            .create(&by, spec, true)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
    }

    async fn create_ab_test(
        &self,
        req: Request<pb::CreateAbTestRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        self.owned_audience(&view, r.audience_id)?;
        let variations = r
            .variations
            .into_iter()
            .map(|v| Variation {
                name: v.name,
                percent: v.percent,
            })
            .collect();
        let record = self
            .registry
            .create_ab_test(&by, r.audience_id, variations)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
    }

    async fn delete_ab_test(
        &self,
        req: Request<pb::AudienceIdRequest>,
    ) -> Result<Response<pb::Audience>, Status> {
        let caller = req.metadata().clone();
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let id = req.into_inner().id;
        self.owned_audience(&view, id)?;
        let record = self
            .registry
            .delete_ab_test(&by, id)
            .await
            .map_err(convert::status)?;
        self.one(&caller, record).await
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
        let by = caller_name(&req);
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        view.check_subscription_list(&r.audience_ids)?;
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
            let Some(audience) = catalog.record(*id) else {
                return Err(Status::not_found(format!(
                    "audience_ids[{i}]: audience {id} not found"
                )));
            };
            view.check_subscription(i, audience)?;
        }
        // At most grpc.max_subscribers_per_token streams per token; the slot goes with the
        // stream. The channel is bounded: a subscriber that reads slowly holds the pump back
        // (it reads the durable log where it stands), never a growing buffer.
        let slot = self
            .subscriber_slots
            .take(&by)
            .map_err(Status::resource_exhausted)?;
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
        // Deltas carry their member's variation as the audience's test is when they are read.
        let variations = self.node.engine.clone();
        let stream = async_stream(move |out| async move {
            let _slot = slot;
            loop {
                let item = tokio::select! {
                    item = rx.recv() => item,
                    // The client went away: end now, not at the next delta, so that its slot
                    // and its pump (which stops once `rx` is gone) are freed while it is idle.
                    _ = out.closed() => break,
                };
                let Some(item) = item else { break };
                let msg = item
                    .map(|o| pb::MembershipDelta {
                        variation: variations
                            .catalog
                            .load()
                            .record(o.delta.audience_id)
                            .and_then(|r| r.variation_of(o.delta.mpid))
                            .unwrap_or_default()
                            .to_string(),
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
                    .map_err(|e| match e {
                        StreamError::OutOfRange(why) => Status::out_of_range(why),
                        StreamError::Unavailable(why) => Status::unavailable(why),
                        StreamError::DataLoss(why) => Status::data_loss(why),
                    });
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
                        stats: Some(convert::stats(f, None)),
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
        self.membership_history_of(req).await
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        self.list_members_of(req).await
    }

    async fn get_audience_stats(
        &self,
        req: Request<pb::GetAudienceStatsRequest>,
    ) -> Result<Response<pb::GetAudienceStatsResponse>, Status> {
        self.audience_stats_of(req).await
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

pub(crate) fn explain_node(e: &audience_state::criteria::Explanation) -> pb::ExplainNode {
    pb::ExplainNode {
        criterion: e.criterion.clone(),
        matched: e.matched,
        detail: e.detail.clone(),
        next_change_ms: e.next_change.unwrap_or(0),
        children: e.children.iter().map(explain_node).collect(),
    }
}

impl Services {
    /// A uniform sample of `n` profiles of this node's partitions, `compiled` evaluated on
    /// each.
    async fn sample_here(
        &self,
        compiled: audience_state::criteria::CompiledAudience,
        n: u64,
    ) -> Result<audience_actors::engine::SampledEstimate, Status> {
        let permit = self.scans.enter("EstimateAudience")?;
        let node = self.node.clone();
        let partitions = node.owned();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            audience_actors::sampling::estimate_size(&node.engine, &partitions, &compiled, n)
        })
        .await
        .map_err(convert::internal)?
        .map_err(convert::internal)
    }

    /// The profiles of this node's partitions.
    fn profiles_here(&self) -> Result<u64, Status> {
        let engine = &self.node.engine;
        let mut total = 0;
        for p in self.node.owned() {
            total += engine
                .store
                .profile_count(p)
                .map_err(convert::internal)?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// The partitions this node answers for, in order: with the changelog on, those it owns
    /// (a former owner's copy is stale), or the one another node's call names; alone, every
    /// partition it runs or has stored.
    pub(crate) fn partitions(&self, caller: &MetadataMap) -> Result<Vec<u32>, Status> {
        let engine = &self.node.engine;
        let owned: Vec<u32> = engine.partitions.lock().iter().copied().collect();
        if let Some(p) = scoped_partition(caller)? {
            return if owned.contains(&p) {
                Ok(vec![p])
            } else {
                Err(Status::unavailable(format!(
                    "partition {p} is not this node's now (it moved): retry"
                )))
            };
        }
        if engine.store.logs_partition_writes() {
            return Ok(owned);
        }
        let mut partitions: Vec<u32> = self.node.owned();
        partitions.extend(owned);
        partitions.extend(engine.store.known_partitions().map_err(convert::internal)?);
        partitions.sort();
        partitions.dedup();
        Ok(partitions)
    }
}
