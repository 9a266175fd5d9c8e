//! The checks of the audience calls for a token limited to workspaces (see
//! [`crate::workspace_view`]): the audience it names must be one it sees, and the scope it
//! saves within its workspaces (the catalog holds its calculated attributes to them too:
//! `Catalog::check_calculated_scope`).

use crate::convert;
use crate::grpc::Services;
use crate::workspace_view::WorkspaceView;
use audience_actors::registry::AudienceSpec;
use audience_state::catalog::referenced_audiences;
use tonic::Status;

impl Services {
    /// The audience `id`, when the caller's token sees it (NOT_FOUND otherwise, as for one
    /// that does not exist).
    pub(crate) fn seen_audience(
        &self,
        view: &WorkspaceView,
        id: u64,
    ) -> Result<audience_state::catalog::AudienceRecord, Status> {
        view.audience(self.registry.get(id).map_err(convert::status)?)
    }

    /// The audience `id`, when the caller's token owns it and so may change it (NOT_FOUND
    /// when it does not see it, PERMISSION_DENIED when it is only shared with it).
    pub(crate) fn owned_audience(
        &self,
        view: &WorkspaceView,
        id: u64,
    ) -> Result<audience_state::catalog::AudienceRecord, Status> {
        view.owned(self.registry.get(id).map_err(convert::status)?)
    }

    /// Whether a token limited to workspaces may save this audience: its scope (completed as
    /// the registry completes it) within the token's workspaces, and every audience its
    /// criteria reference owned or usable.
    pub(crate) fn check_saved(
        &self,
        view: &WorkspaceView,
        spec: &AudienceSpec,
    ) -> Result<(), Status> {
        self.check_definition(view, &spec.criteria, &spec.workspaces, &spec.inputs)
    }

    /// [`Services::check_saved`] of a definition's parts: its criteria and its scope as named.
    pub(crate) fn check_definition(
        &self,
        view: &WorkspaceView,
        criteria: &serde_json::Value,
        workspaces: &[String],
        inputs: &[String],
    ) -> Result<(), Status> {
        if !view.is_limited() {
            return Ok(());
        }
        let (workspaces, _) = self
            .node
            .engine
            .settings
            .inputs
            .complete_scope(workspaces, inputs)
            .map_err(|e| convert::status(e.into()))?;
        view.check_scope(&workspaces)?;
        let catalog = self.node.engine.catalog.load();
        for id in referenced_audiences(criteria) {
            view.check_reference(id, catalog.record(id))?;
        }
        Ok(())
    }

    /// The scope an estimate of a definition reads: the one named; for a token limited to
    /// workspaces naming none, its workspaces (its own profiles, not every workspace's).
    pub(crate) fn estimated_scope(
        &self,
        view: &WorkspaceView,
        criteria: &serde_json::Value,
        workspaces: Vec<String>,
        inputs: &[String],
    ) -> Result<Vec<String>, Status> {
        let workspaces = if workspaces.is_empty() && inputs.is_empty() {
            view.own_workspaces().to_vec()
        } else {
            workspaces
        };
        self.check_definition(view, criteria, &workspaces, inputs)?;
        Ok(workspaces)
    }
}
