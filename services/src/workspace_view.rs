//! What a token limited to workspaces (`workspace:NAME` among its scopes) sees: the audiences
//! it owns (it holds every workspace they read) and those shared with it (their access is view
//! only or usable), and the profiles seen in one of its workspaces. A token without that limit,
//! and every call on an engine without tokens, owns everything.
//!
//! Invariants:
//! - what a limited token does not see answers as absent (NOT_FOUND, worded as for what does
//!   not exist), so that it cannot tell another workspace's private audience or profile from
//!   nothing;
//! - only owners change an audience (update, delete, activate, draft, its access); a shared
//!   one answers PERMISSION_DENIED, naming its access;
//! - a limited token subscribes to, and references in its criteria, only audiences it owns or
//!   that are usable; the rest is PERMISSION_DENIED, naming the audience and why;
//! - what it asks to save outside its workspaces is PERMISSION_DENIED, naming the workspace;
//! - an audience without a scope reads every workspace: no limited token owns it, and one sees
//!   it only when it is shared;
//! - the methods a limited token may call at all are `access::workspace_aware`'s; each one
//!   applies this view, the rest are refused before any service sees the call.

use crate::auth::Caller;
use audience_state::catalog::{AudienceAccess, AudienceRecord};
use audience_state::profile::{ProfileState, WorkspaceData};
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

    /// The workspaces it is limited to (empty: none, it sees every one).
    pub fn own_workspaces(&self) -> &[String] {
        &self.workspaces
    }

    pub fn sees_workspace(&self, workspace: &str) -> bool {
        !self.is_limited() || self.workspaces.iter().any(|w| w == workspace)
    }

    /// Whether the token holds every workspace the audience reads.
    pub fn owns_audience(&self, audience: &AudienceRecord) -> bool {
        !self.is_limited()
            || (!audience.workspaces.is_empty()
                && audience.workspaces.iter().all(|w| self.sees_workspace(w)))
    }

    /// Whether it sees the audience: owns it, or it is shared.
    pub fn sees_audience(&self, audience: &AudienceRecord) -> bool {
        self.owns_audience(audience) || audience.access != AudienceAccess::Private
    }

    /// Whether it may subscribe to the audience and reference it: owns it, or it is usable.
    pub fn uses_audience(&self, audience: &AudienceRecord) -> bool {
        self.owns_audience(audience) || audience.access == AudienceAccess::Usable
    }

    /// Whether the audience is in the "shared with me" list of `workspace` (empty: the
    /// token's workspaces): shared, and reading none of those workspaces. A token without
    /// workspaces naming none lists every shared audience.
    pub fn shared_with(&self, audience: &AudienceRecord, workspace: &str) -> bool {
        if audience.access == AudienceAccess::Private {
            return false;
        }
        let reads_mine = |w: &String| match workspace {
            "" => self.workspaces.contains(w),
            named => w == named,
        };
        !audience.workspaces.iter().any(reads_mine)
    }

    pub fn sees_profile(&self, profile: &ProfileState) -> bool {
        !self.is_limited() || profile.workspaces.iter().any(|w| self.sees_workspace(w))
    }

    /// The profile as the token may read it: what its workspaces hold in place of the
    /// profile's latest from every source. Attributes, identities, device, app version,
    /// consent, location and attributions are the copies its workspaces' inputs set (where
    /// two of its workspaces hold a value, the last named wins; identities' values are
    /// joined); `activity` (the fold of the messages its workspaces' inputs brought, see
    /// [`audience_state::replay::fold_in_workspaces`]) gives the event series and calculated
    /// attributes; first and last seen are those of its workspaces' messages; and the
    /// workspaces listed are its own.
    pub fn narrow(&self, profile: &mut ProfileState, activity: ProfileState) {
        if !self.is_limited() {
            return;
        }
        let mut attributes = std::collections::BTreeMap::new();
        let mut identities: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        let mut data = WorkspaceData::default();
        for workspace in &self.workspaces {
            if let Some(kept) = profile.workspace_attributes.get(workspace) {
                attributes.extend(kept.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            let kept = profile.workspace_identities.get(workspace);
            for (kind, values) in kept.into_iter().flatten() {
                let joined = identities.entry(kind.clone()).or_default();
                for v in values {
                    if !joined.contains(v) {
                        joined.push(v.clone());
                    }
                }
            }
            if let Some(kept) = profile.workspace_data.get(workspace) {
                data.merge_from(kept);
            }
        }
        profile.attributes = attributes;
        profile.identities = identities;
        profile.first_seen_ms = data.first_seen_ms;
        profile.last_seen_ms = data.last_seen_ms;
        profile.device = data.device;
        profile.app_version = data.app_version;
        profile.highest_app_version = None;
        profile.consent = data.consent;
        profile.location = data.location;
        profile.install_attribution = data.install_attribution;
        profile.uninstall_attribution = data.uninstall_attribution;
        profile.history = activity.history;
        profile.calculated = activity.calculated;
        let own = |w: &String| self.workspaces.contains(w);
        profile.workspaces.retain(own);
        profile.workspace_attributes.retain(|w, _| own(w));
        profile.workspace_identities.retain(|w, _| own(w));
        profile.workspace_data.retain(|w, _| own(w));
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

    /// The audience, when the token owns it and so may change it: NOT_FOUND when it does not
    /// see it, PERMISSION_DENIED when it is only shared with it.
    pub fn owned(&self, audience: AudienceRecord) -> Result<AudienceRecord, Status> {
        let audience = self.audience(audience)?;
        if self.owns_audience(&audience) {
            return Ok(audience);
        }
        Err(Status::permission_denied(format!(
            "access: audience {} is shared {} with token '{}'; only a token holding {} changes it",
            audience.id,
            audience.access.name(),
            self.token,
            workspaces_read(&audience)
        )))
    }

    /// Whether the token may subscribe to `audience` (the `i`th asked for).
    pub fn check_subscription(&self, i: usize, audience: &AudienceRecord) -> Result<(), Status> {
        if self.uses_audience(audience) {
            return Ok(());
        }
        if self.sees_audience(audience) {
            return Err(Status::permission_denied(format!(
                "audience_ids[{i}]: audience {} is shared view only with token '{}': its deltas \
                 are for its owners and the tokens it is usable by",
                audience.id, self.token
            )));
        }
        Err(Status::permission_denied(format!(
            "audience_ids[{i}]: token '{}' is limited to workspace {}, and audience {} reads {}",
            self.token,
            self.workspaces.join(", "),
            audience.id,
            workspaces_read(audience)
        )))
    }

    /// Whether the token may reference audience `id` (`None`: none has that id) in the
    /// criteria of an audience it saves: one it does not see reads as one that does not exist,
    /// one shared view only is PERMISSION_DENIED.
    pub fn check_reference(
        &self,
        id: u64,
        audience: Option<&AudienceRecord>,
    ) -> Result<(), Status> {
        match audience {
            Some(a) if self.uses_audience(a) => Ok(()),
            Some(a) if self.sees_audience(a) => Err(Status::permission_denied(format!(
                "criteria.audience.id: audience {id} is shared view only with token '{}'; an \
                 audience it saves references only audiences it owns or that are usable",
                self.token
            ))),
            // The catalog's own check words what does not exist.
            None if !self.is_limited() => Ok(()),
            _ => Err(Status::invalid_argument(format!(
                "criteria.audience.id: audience {id} does not exist"
            ))),
        }
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

/// The workspaces an audience reads, in words: "workspace a, b" or "every workspace".
fn workspaces_read(audience: &AudienceRecord) -> String {
    match audience.workspaces.as_slice() {
        [] => "every workspace".to_string(),
        w => format!("workspace {}", w.join(", ")),
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

    #[test]
    fn a_limited_token_reads_the_data_and_activity_its_workspaces_brought() {
        use audience_state::model::AttrValue;
        use audience_state::profile::NamedAttr;
        let attr = |v: &str| NamedAttr {
            name: "Tier".into(),
            value: AttrValue::String(v.into()),
        };
        let mut p = ProfileState::new(1);
        p.attributes.insert("tier".into(), attr("gold"));
        p.attributes.insert("email_hint".into(), attr("x"));
        for (workspace, tier) in [("app-a", "gold"), ("app-b", "silver")] {
            p.workspace_attributes
                .entry(workspace.into())
                .or_default()
                .insert("tier".into(), attr(tier));
        }
        p.identities
            .insert("email".into(), vec!["a@example.com".into()]);
        p.identities.insert("customer_id".into(), vec!["c1".into()]);
        for (workspace, kind, value) in [
            ("app-a", "email", "a@example.com"),
            ("app-b", "customer_id", "c1"),
        ] {
            p.workspace_identities
                .entry(workspace.into())
                .or_default()
                .insert(kind.into(), vec![value.into()]);
        }
        p.workspaces.insert("app-a".into());
        p.workspaces.insert("app-b".into());
        p.device.platform = Some("iOS".into());
        p.location.city = Some("Paris".into());
        p.consent.ccpa_data_sale_opt_out = Some(true);
        p.first_seen_ms = 100;
        p.last_seen_ms = 900;
        let mut kept = WorkspaceData::default();
        kept.device.platform = Some("Android".into());
        assert!(kept.seen_at(500) && kept.seen_at(400) && !kept.seen_at(450));
        p.workspace_data.insert("app-b".into(), kept);
        let mut a_data = WorkspaceData::default();
        a_data.location.city = Some("Paris".into());
        a_data.consent.ccpa_data_sale_opt_out = Some(true);
        p.workspace_data.insert("app-a".into(), a_data);
        p.history
            .insert("custom_event:play".into(), Default::default());
        // What app-b's inputs did: one other event.
        let mut activity = ProfileState::new(1);
        activity
            .history
            .insert("custom_event:search".into(), Default::default());
        let mut seen = p.clone();
        view(&["app-b"]).narrow(&mut seen, activity.clone());
        assert_eq!(seen.device.platform.as_deref(), Some("Android"));
        assert_eq!((seen.first_seen_ms, seen.last_seen_ms), (400, 500));
        assert_eq!(seen.location.city, None, "Paris is app-a's");
        assert_eq!(seen.consent.ccpa_data_sale_opt_out, None);
        assert_eq!(seen.history, activity.history);
        assert_eq!(seen.workspaces.iter().collect::<Vec<_>>(), vec!["app-b"]);
        assert!(!seen.workspace_data.contains_key("app-a"));
        assert_eq!(
            seen.attributes.keys().collect::<Vec<_>>(),
            vec!["tier"],
            "an unstamped message's attribute is no workspace's"
        );
        assert_eq!(
            seen.attribute("tier"),
            Some(&AttrValue::String("silver".into()))
        );
        assert!(!seen.workspace_attributes.contains_key("app-a"));
        assert_eq!(
            seen.identities.keys().collect::<Vec<_>>(),
            vec!["customer_id"],
            "the email was collected in app-a"
        );
        let mut whole = p.clone();
        WorkspaceView::default().narrow(&mut whole, activity);
        assert_eq!(whole, p);
    }

    #[test]
    fn a_shared_audience_is_seen_and_used_as_its_access_says() {
        let b = view(&["app-b"]);
        let with = |workspaces: &[&str], access| {
            let mut a = audience(workspaces);
            a.access = access;
            a
        };
        let private = with(&["app-a"], AudienceAccess::Private);
        let view_only = with(&["app-a"], AudienceAccess::ViewOnly);
        let usable = with(&["app-a"], AudienceAccess::Usable);
        assert!(!b.sees_audience(&private));
        assert!(b.sees_audience(&view_only) && !b.uses_audience(&view_only));
        assert!(b.sees_audience(&usable) && b.uses_audience(&usable));
        assert!(!b.owns_audience(&usable), "shared is not owned");

        // Changing: absent when hidden, refused naming the access when shared, else allowed.
        assert_eq!(b.owned(private).unwrap_err().code(), tonic::Code::NotFound);
        let refused = b.owned(usable.clone()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("shared usable") && refused.message().contains("app-a"),
            "{refused:?}"
        );
        assert!(b.owned(with(&["app-b"], AudienceAccess::ViewOnly)).is_ok());

        // Using: subscriptions and references.
        assert!(b.check_subscription(0, &usable).is_ok());
        let refused = b.check_subscription(1, &view_only).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().starts_with("audience_ids[1]: "),
            "{refused:?}"
        );
        assert!(b.check_reference(3, Some(&usable)).is_ok());
        let refused = b.check_reference(3, Some(&view_only)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let hidden = with(&["app-a"], AudienceAccess::Private);
        let absent = b.check_reference(3, Some(&hidden)).unwrap_err();
        assert_eq!(absent.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            absent.message(),
            "criteria.audience.id: audience 3 does not exist",
            "a hidden audience reads as one that does not exist"
        );

        // Shared with me: shared, reading none of my workspaces.
        assert!(b.shared_with(&view_only, ""));
        assert!(!b.shared_with(&with(&["app-a"], AudienceAccess::Private), ""));
        assert!(!b.shared_with(&with(&["app-a", "app-b"], AudienceAccess::Usable), ""));
        assert!(!b.shared_with(&view_only, "app-a"), "app-a's own");
        assert!(b.shared_with(&with(&[], AudienceAccess::Usable), "app-c"));
        let all = WorkspaceView::default();
        assert!(all.shared_with(&view_only, "") && all.owned(view_only).is_ok());
    }
}
