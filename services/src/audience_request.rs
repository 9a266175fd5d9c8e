//! The audience requests' fields as the registry takes them, and the workspace filters of
//! ListAudiences. Pure: no I/O.

use crate::convert;
use audience_actors::registry::AudienceSpec;
use audience_proto::v1 as pb;
use tonic::Status;

/// The fields of a create or update request, as the registry takes them.
pub struct SpecFields {
    pub name: String,
    pub external_name: String,
    pub criteria: Option<prost_types::Struct>,
    pub tags: Vec<String>,
    pub workspaces: Vec<String>,
    pub inputs: Vec<String>,
}

pub fn spec(f: SpecFields) -> Result<AudienceSpec, Status> {
    let criteria = f
        .criteria
        .map(|c| convert::struct_to_json(&c))
        .ok_or_else(|| Status::invalid_argument("criteria: missing"))?;
    Ok(AudienceSpec {
        name: f.name,
        external_name: f.external_name,
        criteria,
        tags: f.tags,
        workspaces: f.workspaces,
        inputs: f.inputs,
    })
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
