//! What a token limited to workspaces (`workspace:NAME` among its scopes) sees: the audiences
//! every workspace of which it holds, and the profiles seen in one of its workspaces. A token
//! without that limit, and every call on an engine without tokens, sees everything.
//!
//! Invariants:
//! - what a limited token does not see answers as absent (NOT_FOUND, worded as for what does
//!   not exist), so that it cannot tell another workspace's audience or profile from nothing;
//! - what it asks to save or subscribe to outside its workspaces is PERMISSION_DENIED, naming
//!   the workspace;
//! - an audience without a scope reads every workspace: no limited token sees it;
//! - the methods a limited token may call at all are `access::workspace_aware`'s; each one
//!   applies this view, the rest are refused before any service sees the call.

use crate::auth::Caller;
use audience_state::catalog::AudienceRecord;
use audience_state::profile::ProfileState;
use tonic::{Request, Status};

#[derive(Clone, Debug, Default)]
pub struct WorkspaceView {
    token: String,
    /// Empty: every workspace.
    workspaces: Vec<String>,
}

impl WorkspaceView {
    /// The view of the token a call came with.
    pub fn of<T>(request: &Request<T>) -> WorkspaceView {
        request
            .extensions()
            .get::<Caller>()
            .filter(|c| !c.workspaces.is_empty())
            .map(|c| WorkspaceView {
                token: c.name.clone(),
                workspaces: c.workspaces.clone(),
            })
            .unwrap_or_default()
    }

    pub fn is_limited(&self) -> bool {
        !self.workspaces.is_empty()
    }

    pub fn sees_workspace(&self, workspace: &str) -> bool {
        !self.is_limited() || self.workspaces.iter().any(|w| w == workspace)
    }

    pub fn sees_audience(&self, audience: &AudienceRecord) -> bool {
        !self.is_limited()
            || (!audience.workspaces.is_empty()
                && audience.workspaces.iter().all(|w| self.sees_workspace(w)))
    }

    pub fn sees_profile(&self, profile: &ProfileState) -> bool {
        !self.is_limited() || profile.workspaces.iter().any(|w| self.sees_workspace(w))
    }

    /// The audience, when the token sees it; NOT_FOUND as for an audience that does not exist.
    pub fn audience(&self, audience: AudienceRecord) -> Result<AudienceRecord, Status> {
        if self.sees_audience(&audience) {
            Ok(audience)
        } else {
            Err(Status::not_found(format!(
                "audience {} not found",
                audience.id
            )))
        }
    }

    /// Whether the token may save an audience reading `workspaces` (its scope completed):
    /// some, all of them its own.
    pub fn check_scope(&self, workspaces: &[String]) -> Result<(), Status> {
        if !self.is_limited() {
            return Ok(());
        }
        let own = self.workspaces.join(", ");
        if workspaces.is_empty() {
            return Err(Status::permission_denied(format!(
                "workspaces: token '{}' is limited to workspace {own}: an audience it saves selects some of them",
                self.token
            )));
        }
        match workspaces.iter().find(|w| !self.sees_workspace(w)) {
            Some(outside) => Err(Status::permission_denied(format!(
                "workspaces: token '{}' is limited to workspace {own}, not \"{outside}\"",
                self.token
            ))),
            None => Ok(()),
        }
    }

    /// Whether the token may subscribe to `audience` (the `i`th asked for).
    pub fn check_subscription(&self, i: usize, audience: &AudienceRecord) -> Result<(), Status> {
        if self.sees_audience(audience) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "audience_ids[{i}]: token '{}' is limited to workspace {}, and audience {} reads {}",
            self.token,
            self.workspaces.join(", "),
            audience.id,
            match audience.workspaces.as_slice() {
                [] => "every workspace".to_string(),
                w => format!("workspace {}", w.join(", ")),
            }
        )))
    }

    /// A limited token's subscription names its audiences: all of them would be every
    /// workspace's.
    pub fn check_subscription_list(&self, audience_ids: &[u64]) -> Result<(), Status> {
        if self.is_limited() && audience_ids.is_empty() {
            return Err(Status::invalid_argument(format!(
                "audience_ids: token '{}' is limited to workspace {}: name the audiences to subscribe to",
                self.token,
                self.workspaces.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(workspaces: &[&str]) -> WorkspaceView {
        WorkspaceView {
            token: "b".into(),
            workspaces: workspaces.iter().map(|w| w.to_string()).collect(),
        }
    }

    fn audience(workspaces: &[&str]) -> AudienceRecord {
        let mut a = AudienceRecord::active(3, "a", serde_json::json!({}));
        a.workspaces = workspaces.iter().map(|w| w.to_string()).collect();
        a
    }

    #[test]
    fn a_limited_token_sees_only_what_its_workspaces_hold() {
        let b = view(&["app-b"]);
        assert!(b.sees_audience(&audience(&["app-b"])));
        assert!(!b.sees_audience(&audience(&["app-a", "app-b"])));
        assert!(
            !b.sees_audience(&audience(&[])),
            "an unscoped audience reads every workspace"
        );
        let mut p = ProfileState::new(1);
        assert!(!b.sees_profile(&p));
        p.workspaces.insert("app-a".into());
        assert!(!b.sees_profile(&p));
        p.workspaces.insert("app-b".into());
        assert!(b.sees_profile(&p));
        let hidden = b.audience(audience(&["app-a"])).unwrap_err();
        assert_eq!(hidden.code(), tonic::Code::NotFound);
        assert_eq!(hidden.message(), "audience 3 not found");
        let refused = b.check_scope(&["app-a".into()]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("not \"app-a\""));
        assert!(b.check_scope(&[]).is_err());
        assert!(b.check_scope(&["app-b".into()]).is_ok());
        assert!(b.check_subscription_list(&[]).is_err());
        let all = WorkspaceView::default();
        assert!(all.sees_audience(&audience(&[])) && all.sees_profile(&ProfileState::new(2)));
        assert!(all.check_scope(&[]).is_ok() && all.check_subscription_list(&[]).is_ok());
    }
}
