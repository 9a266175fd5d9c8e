//! An audience's scope: the workspaces and inputs it reads (the seed's "Workspaces, inputs,
//! and audience criteria"), compiled into the tree and the matchers.
//!
//! - The workspaces are the data source of user based criteria: a scoped audience holds only
//!   profiles seen in one of its workspaces (a [`Node::SeenIn`] gate at the root), and its
//!   user based event criteria (crashes, installs, uninstalls, upgrades) count the events of
//!   every input of those workspaces.
//! - The inputs are the data source of event based criteria (custom events, commerce, sessions,
//!   screen views and the rest): they count only the events of those inputs.
//!
//! A scoped event criterion keeps its own series, like one with conditions: its matcher admits
//! an event by the input stamped on its message, and its key folds the source in, so that two
//! audiences of different scopes never share a series.

use super::compiled::{fnv1a64, EventSource, Matcher, Node};
use super::definition::DefinitionError;

/// The data sources of an audience. Empty: every message, stamped or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Workspace names, sorted.
    pub workspaces: Vec<String>,
    /// Input names, sorted.
    pub inputs: Vec<String>,
}

/// Event types whose criteria are user based (the seed's table): their source is the
/// workspace, not the input.
pub const USER_BASED_EVENT_TYPES: &[&str] = &["crash_report", "first_run", "uninstall", "upgrade"];

impl Scope {
    pub fn is_global(&self) -> bool {
        self.workspaces.is_empty() && self.inputs.is_empty()
    }

    /// Where an event criterion of `event_type` reads from; `None` in a global scope.
    pub fn event_source(&self, event_type: &str) -> Option<EventSource> {
        self.event_source_in(event_type, None)
    }

    /// Where an event criterion of `event_type` that picked `workspace` (one of the scope's,
    /// see [`Scope::check_pick`]) reads from: the scope's inputs of that workspace, or all of
    /// its inputs when the scope selects none or the criterion is user based.
    pub fn event_source_in(
        &self,
        event_type: &str,
        workspace: Option<&str>,
    ) -> Option<EventSource> {
        let user_based = USER_BASED_EVENT_TYPES.contains(&event_type);
        if let Some(workspace) = workspace {
            return Some(if user_based || self.inputs.is_empty() {
                EventSource::Workspaces(vec![workspace.to_string()])
            } else {
                EventSource::InputsOf {
                    workspace: workspace.to_string(),
                    inputs: self.inputs.clone(),
                }
            });
        }
        if (user_based || self.inputs.is_empty()) && !self.workspaces.is_empty() {
            Some(EventSource::Workspaces(self.workspaces.clone()))
        } else if !self.inputs.is_empty() {
            Some(EventSource::Inputs(self.inputs.clone()))
        } else {
            None
        }
    }

    /// The workspace a criterion at `path` picked (`None`: none), checked: a multi
    /// workspace audience's criteria pick one of its workspaces (the seed's "in multiworkspace
    /// audiences, you can select which workspace to use").
    pub fn check_pick(
        &self,
        workspace: Option<&str>,
        path: &str,
    ) -> Result<Option<String>, DefinitionError> {
        let Some(workspace) = workspace else {
            return Ok(None);
        };
        if self.workspaces.iter().any(|w| w == workspace) {
            return Ok(Some(workspace.to_string()));
        }
        let reason = if self.workspaces.is_empty() {
            "only the criteria of an audience that selects workspaces pick one".to_string()
        } else {
            format!(
                "\"{workspace}\" is not one of the audience's workspaces ({})",
                self.workspaces.join(", ")
            )
        };
        Err(DefinitionError::new(format!("{path}.workspace"), reason))
    }

    /// The compiled tree under the scope's gate: profiles seen in none of its workspaces are
    /// never members, whatever the criteria (an exclusion would otherwise hold every profile
    /// of every other workspace).
    pub(super) fn gate(&self, root: Node) -> Node {
        if self.workspaces.is_empty() {
            root
        } else {
            Node::And(vec![Node::SeenIn(self.workspaces.clone()), root])
        }
    }
}

/// The matcher restricted to `source`, under a key of its own.
pub(super) fn scoped(mut matcher: Matcher, source: EventSource) -> Matcher {
    let canonical = format!("{}|{source:?}", matcher.history_key);
    matcher.history_key = format!(
        "{}{:016x}",
        crate::profile::MATCHER_SERIES_PREFIX,
        fnv1a64(canonical.as_bytes())
    );
    matcher.source = Some(source);
    matcher
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InputTag;

    fn tag(input: &str, workspace: &str) -> InputTag {
        InputTag {
            input: input.into(),
            workspace: workspace.into(),
        }
    }

    #[test]
    fn event_based_criteria_read_inputs_and_user_based_ones_workspaces() {
        let scope = Scope {
            workspaces: vec!["w1".into()],
            inputs: vec!["a".into()],
        };
        let events = scope.event_source("custom_event").unwrap();
        assert!(events.admits(Some(&tag("a", "w1"))));
        assert!(!events.admits(Some(&tag("b", "w1"))));
        assert!(!events.admits(None));
        let crashes = scope.event_source("crash_report").unwrap();
        assert!(crashes.admits(Some(&tag("b", "w1"))));
        assert!(!crashes.admits(Some(&tag("c", "w2"))));
        let workspace_only = Scope {
            workspaces: vec!["w1".into()],
            inputs: vec![],
        };
        let all_inputs = workspace_only.event_source("screen_view").unwrap();
        assert!(all_inputs.admits(Some(&tag("b", "w1"))));
        assert_eq!(Scope::default().event_source("custom_event"), None);
    }

    #[test]
    fn a_criterion_picks_one_of_the_audiences_workspaces_and_reads_its_inputs_there() {
        let scope = Scope {
            workspaces: vec!["w1".into(), "w2".into()],
            inputs: vec!["a".into(), "c".into()],
        };
        assert_eq!(scope.check_pick(None, "criteria").unwrap(), None);
        assert_eq!(
            scope.check_pick(Some("w2"), "criteria").unwrap(),
            Some("w2".to_string())
        );
        let e = scope.check_pick(Some("w3"), "criteria.and[0]").unwrap_err();
        assert_eq!(e.field, "criteria.and[0].workspace");
        assert!(e.reason.contains("\"w3\" is not one of") && e.reason.contains("w1, w2"));
        let e = Scope::default()
            .check_pick(Some("w1"), "criteria")
            .unwrap_err();
        assert!(e.reason.contains("selects workspaces"), "{e}");
        // Input a is w1's, c is w2's.
        let events = scope.event_source_in("custom_event", Some("w2")).unwrap();
        assert!(events.admits(Some(&tag("c", "w2"))));
        assert!(!events.admits(Some(&tag("a", "w1"))));
        assert!(
            !events.admits(Some(&tag("d", "w2"))),
            "not an input of the audience"
        );
        let crashes = scope.event_source_in("crash_report", Some("w2")).unwrap();
        assert!(crashes.admits(Some(&tag("d", "w2"))));
        assert!(!crashes.admits(Some(&tag("a", "w1"))));
        assert_ne!(
            scope.event_source_in("custom_event", Some("w1")),
            scope.event_source("custom_event"),
            "a picked criterion keeps a series of its own"
        );
    }
}
