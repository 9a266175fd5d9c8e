//! The audience requests' criteria as JSON, and the workspace filters of ListAudiences.
//! Pure: no I/O.

use crate::convert;
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

/// Whether an audience passes a ListAudiences request's workspace filters.
pub fn in_workspace_filter(
    a: &audience_state::catalog::AudienceRecord,
    workspace: &str,
    kind: pb::WorkspaceKind,
) -> bool {
    let kind_holds = match kind {
        pb::WorkspaceKind::Unspecified => true,
        pb::WorkspaceKind::SingleWorkspace => a.workspaces.len() == 1,
        pb::WorkspaceKind::MultiWorkspace => a.workspaces.len() > 1,
    };
    kind_holds && (workspace.is_empty() || a.workspaces.iter().any(|w| w == workspace))
}
