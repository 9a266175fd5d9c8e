//! The checks of the audience calls for a token limited to workspaces (see
//! [`crate::workspace_view`]): the audience it names must be one it sees, and the scope it
//! saves within its workspaces.

use crate::convert;
use crate::grpc::Services;
use crate::workspace_view::WorkspaceView;
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

    /// Whether a token limited to workspaces may save an audience of this scope (completed
    /// as the registry completes it).
    pub(crate) fn check_saved_scope(
        &self,
        view: &WorkspaceView,
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
        view.check_scope(&workspaces)
    }
}
