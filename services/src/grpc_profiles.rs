//! The profile service: a profile (identities, attributes, memberships, calculated attributes,
//! its event log's figures) and Explain. A profile lives on the node that owns its partition:
//! the node asked looks in its own partitions, then asks the other live nodes
//! ([`crate::peers`]), so any node answers for any MPID.

use crate::blocking::off_runtime;
use crate::convert;
use crate::grpc::{explain_node, Services};
use crate::workspace_view::WorkspaceView;
use audience_proto::v1 as pb;
use audience_state::calculated::CalcSpec;
use audience_state::eventlog::EventLog;
use audience_state::profile::ProfileState;
use audience_state::replay::{fold_in_workspaces, log_units};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

impl Services {
    /// A profile from whichever of this node's partitions holds it, with that partition; one
    /// the caller's token does not see answers as missing.
    fn load_profile(
        &self,
        caller: &MetadataMap,
        view: &WorkspaceView,
        mpid: i64,
    ) -> Result<(u32, ProfileState), Status> {
        let partitions = self.partitions(caller)?;
        let found = self
            .node
            .engine
            .store
            .find_profile(mpid, partitions)
            .map_err(convert::internal)?;
        found
            .filter(|(_, profile)| view.sees_profile(profile))
            .ok_or_else(|| Status::not_found(format!("mpid {mpid}: no profile")))
    }

    /// The head of a profile's event log (empty when it has none).
    fn log_head(&self, partition: u32, mpid: i64) -> Result<EventLog, Status> {
        Ok(self
            .node
            .engine
            .store
            .load_log_head(partition, mpid)
            .map_err(convert::internal)?
            .unwrap_or_default())
    }

    /// The profile as `view` may read it ([`WorkspaceView::narrow`]): for a token limited to
    /// workspaces, its activity is folded from the logged messages of their inputs (`log`,
    /// the profile's log head, and its sealed chunks).
    fn narrowed(
        &self,
        view: &WorkspaceView,
        partition: u32,
        mut profile: ProfileState,
        log: &EventLog,
    ) -> Result<ProfileState, Status> {
        if !view.is_limited() {
            return Ok(profile);
        }
        let engine = &self.node.engine;
        let store = &engine.store;
        let mpid = profile.mpid;
        let chunks = store
            .load_log_chunks(partition, mpid)
            .map_err(convert::internal)?;
        let dict = store
            .load_dictionary(partition)
            .map_err(convert::internal)?;
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let units = log_units(log, &chunks, &dict).map_err(|reason| {
            Status::internal(format!(
                "mpid {mpid}: its event log is unreadable: {reason}"
            ))
        })?;
        let activity = fold_in_workspaces(
            mpid,
            units,
            view.own_workspaces(),
            &engine.catalog.load(),
            engine.clock.now(),
            engine.settings.retention_ms,
        );
        view.narrow(&mut profile, activity);
        Ok(profile)
    }

    /// The profile as this node has it.
    fn profile_here(
        &self,
        caller: &MetadataMap,
        view: &WorkspaceView,
        mpid: i64,
    ) -> Result<pb::Profile, Status> {
        let engine = &self.node.engine;
        let (partition, profile) = self.load_profile(caller, view, mpid)?;
        let log = self.log_head(partition, mpid)?;
        let profile = self.narrowed(view, partition, profile, &log)?;
        let catalog = engine.catalog.load();
        // Memberships in the audiences the token sees.
        let name = |id: u64| {
            catalog
                .active(id)
                .filter(|a| view.sees_audience(&a.record))
                .map(|a| a.record.name.clone())
        };
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
        Ok(shown)
    }

    /// Explain as this node can answer it: the audience's criteria over its copy of the
    /// profile.
    fn explain_here(
        &self,
        caller: &MetadataMap,
        view: &WorkspaceView,
        r: &pb::ExplainRequest,
    ) -> Result<pb::Explanation, Status> {
        let engine = &self.node.engine;
        let catalog = engine.catalog.load();
        let seen = |id: u64| catalog.record(id).filter(|a| view.sees_audience(a));
        let audience = match (seen(r.audience_id), catalog.active(r.audience_id)) {
            (None, _) => {
                return Err(Status::not_found(format!(
                    "audience_id: audience {} not found",
                    r.audience_id
                )))
            }
            (Some(_), Some(a)) => a.clone(),
            (Some(_), None) => {
                return Err(Status::failed_precondition(format!(
                    "audience_id: audience {} is a draft: activate it to evaluate it",
                    r.audience_id
                )))
            }
        };
        let (partition, profile) = self.load_profile(caller, view, r.mpid)?;
        let ctx = audience_state::criteria::EvalContext {
            now: engine.clock.now(),
            retention_ms: engine.settings.retention_ms,
        };
        let root = &audience.compiled.root;
        let mut explanation = root.explain(&profile, &ctx);
        // A limited token reads the values its workspaces hold: where the profile's differ
        // (another workspace set them), the detail is withheld; the answers stay.
        if profile.workspaces.iter().any(|w| !view.sees_workspace(w)) {
            let log = self.log_head(partition, r.mpid)?;
            let seen = self.narrowed(view, partition, profile.clone(), &log)?;
            explanation.withhold_unseen(&root.explain(&seen, &ctx));
        }
        Ok(pb::Explanation {
            mpid: r.mpid,
            audience_id: r.audience_id,
            member: profile
                .memberships
                .get(&r.audience_id)
                .is_some_and(|m| m.member),
            root: Some(explain_node(&explanation)),
            evaluated_at_ms: ctx.now,
        })
    }
}

/// Whether an answer says this node lacks the profile (not the audience, which is the
/// catalog's, the same on every node).
fn profile_missing(e: &Status) -> bool {
    e.code() == tonic::Code::NotFound && e.message().starts_with("mpid")
}

#[tonic::async_trait]
impl pb::profile_service_server::ProfileService for Services {
    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let asked = req.into_inner();
        let here = {
            let (this, caller, mpid) = (self.clone(), caller.clone(), asked.mpid);
            off_runtime(move || this.profile_here(&caller, &view, mpid)).await
        };
        let ask = |channel| {
            let request = self.peers.request(&caller, asked);
            async move {
                pb::profile_service_client::ProfileServiceClient::new(channel)
                    .get_profile(request)
                    .await
            }
        };
        let found = self
            .peers
            .here_or_elsewhere(&caller, here, profile_missing, ask);
        found.await.map(Response::new)
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let asked = req.into_inner();
        let here = {
            let (this, caller, asked) = (self.clone(), caller.clone(), asked);
            off_runtime(move || this.explain_here(&caller, &view, &asked)).await
        };
        let ask = |channel| {
            let request = self.peers.request(&caller, asked);
            async move {
                pb::profile_service_client::ProfileServiceClient::new(channel)
                    .explain(request)
                    .await
            }
        };
        let found = self
            .peers
            .here_or_elsewhere(&caller, here, profile_missing, ask);
        found.await.map(Response::new)
    }
}
