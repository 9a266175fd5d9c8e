//! The audience requests' criteria as JSON, and the workspace filters of ListAudiences
//! (single, multi, shared with me).
//! Pure: no I/O.

use crate::convert;
use crate::workspace_view::WorkspaceView;
use audience_proto::v1 as pb;
use tonic::Status;

/// The criteria tree of a request that needs one, as JSON.
pub fn required_criteria(
    criteria: Option<prost_types::Struct>,
) -> Result<serde_json::Value, Status> {
    criteria
        .map(|c| convert::struct_to_json(&c))
        .ok_or_else(|| Status::invalid_argument("criteria: missing"))
}

/// Whether an audience passes a ListAudiences request's workspace filters, for the caller's
/// `view` (which "me" is, for the audiences shared with me).
pub fn in_workspace_filter(
    a: &audience_state::catalog::AudienceRecord,
    workspace: &str,
    kind: pb::WorkspaceKind,
    view: &WorkspaceView,
) -> bool {
    let reads_workspace = workspace.is_empty() || a.workspaces.iter().any(|w| w == workspace);
    match kind {
        pb::WorkspaceKind::Unspecified => reads_workspace,
        pb::WorkspaceKind::SingleWorkspace => reads_workspace && a.workspaces.len() == 1,
        pb::WorkspaceKind::MultiWorkspace => reads_workspace && a.workspaces.len() > 1,
        pb::WorkspaceKind::SharedWithMe => view.shared_with(a, workspace),
    }
}
