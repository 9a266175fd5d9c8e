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
        let user_based = USER_BASED_EVENT_TYPES.contains(&event_type);
        if (user_based || self.inputs.is_empty()) && !self.workspaces.is_empty() {
            Some(EventSource::Workspaces(self.workspaces.clone()))
        } else if !self.inputs.is_empty() {
            Some(EventSource::Inputs(self.inputs.clone()))
        } else {
            None
        }
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
}
