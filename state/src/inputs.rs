//! Inputs and workspaces: where a message came from, and the workspace that owns it.
//!
//! An input is a named source of events (a platform or a feed, in mParticle's words). A
//! message belongs to an input by the Kafka topic it was read from, by its *source* (the value
//! of the JSON batch field the operator names, or the protobuf envelope's `source`), or by
//! both. Every input belongs to one workspace. The engine stamps each message with its input
//! when it is read; the event log keeps the stamp, so that a definition created later is
//! computed over the same sources streaming saw.
//!
//! What the stamp decides (see [`crate::criteria::Scope`]):
//! - a profile records every workspace it was seen in; an audience scoped to workspaces only
//!   ever holds profiles seen in one of them;
//! - an audience's event criteria count only the events of its inputs; its user based
//!   criteria (attributes, identities, crashes, installs, uninstalls, upgrades) read what
//!   every input of its workspaces brought, because identities and attributes are
//!   workspace-scoped, not input-scoped.
//!
//! Invariants: resolution is pure and deterministic (the most specific input wins: topic and
//! source, then source, then topic; among equals, the first configured); a message no input
//! claims carries no stamp and feeds only audiences without a scope.

use crate::criteria::DefinitionError;
use crate::model::InputTag;
use std::collections::BTreeSet;

/// One configured input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct InputDef {
    pub name: String,
    pub workspace: String,
    /// The messages of this Kafka topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// The messages whose source value is this string.
    #[serde(default)]
    pub source: Option<String>,
}

impl InputDef {
    fn specificity(&self) -> u8 {
        match (&self.topic, &self.source) {
            (Some(_), Some(_)) => 0,
            (None, Some(_)) => 1,
            _ => 2,
        }
    }

    fn claims(&self, topic: &str, source: Option<&str>) -> bool {
        self.topic.as_deref().is_none_or(|t| t == topic)
            && self.source.as_deref().is_none_or(|s| Some(s) == source)
    }
}

/// The longest input or workspace name.
pub const MAX_SCOPE_NAME_CHARS: usize = 64;

/// Whether `name` can name an input or a workspace: 1 to 64 letters, digits, `-`, `_`, `.`.
pub fn check_scope_name(what: &str, name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.chars().count() <= MAX_SCOPE_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{what} name \"{name}\" must be 1 to {MAX_SCOPE_NAME_CHARS} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The configured inputs, ordered for resolution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputMap {
    inputs: Vec<InputDef>,
}

impl InputMap {
    /// Checks the inputs (names, one of each, each claiming something) and orders them.
    pub fn new(defs: Vec<InputDef>) -> Result<InputMap, String> {
        let mut names = BTreeSet::new();
        for def in &defs {
            check_scope_name("input", &def.name)?;
            check_scope_name("workspace", &def.workspace)
                .map_err(|e| format!("input \"{}\": {e}", def.name))?;
            if !names.insert(def.name.as_str()) {
                return Err(format!("input \"{}\" is defined twice", def.name));
            }
            if def.topic.is_none() && def.source.is_none() {
                return Err(format!(
                    "input \"{}\" claims no message: give it a topic, a source, or both",
                    def.name
                ));
            }
        }
        let mut inputs = defs;
        // Stable: among inputs of one specificity, the first configured wins.
        inputs.sort_by_key(InputDef::specificity);
        Ok(InputMap { inputs })
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The input of a message read from `topic` with `source` (its source value, if any).
    pub fn resolve(&self, topic: &str, source: Option<&str>) -> Option<InputTag> {
        self.inputs
            .iter()
            .find(|i| i.claims(topic, source))
            .map(|i| InputTag {
                input: i.name.clone(),
                workspace: i.workspace.clone(),
            })
    }

    /// The inputs, in resolution order.
    pub fn inputs(&self) -> &[InputDef] {
        &self.inputs
    }

    /// The workspaces that own an input.
    pub fn workspaces(&self) -> BTreeSet<&str> {
        self.inputs.iter().map(|i| i.workspace.as_str()).collect()
    }

    /// An audience's scope as it is saved, from what a caller asked for: every name known,
    /// and the workspace of every input added to the workspaces (an input is read through
    /// its workspace). Sorted, without repeats. Checked when a definition is proposed, against
    /// the proposing node's inputs: the saved scope is then complete in itself, so that nodes
    /// evaluate it alike.
    pub fn complete_scope(
        &self,
        workspaces: &[String],
        inputs: &[String],
    ) -> Result<(Vec<String>, Vec<String>), DefinitionError> {
        let known = self.workspaces();
        let mut scope_workspaces = BTreeSet::new();
        for (i, w) in workspaces.iter().enumerate() {
            let w = w.trim();
            if !known.contains(w) {
                return Err(DefinitionError::new(
                    format!("workspaces[{i}]"),
                    format!(
                        "unknown workspace \"{w}\" (known: {})",
                        joined(known.iter().copied())
                    ),
                ));
            }
            scope_workspaces.insert(w.to_string());
        }
        let mut scope_inputs = BTreeSet::new();
        for (i, name) in inputs.iter().enumerate() {
            let name = name.trim();
            let Some(def) = self.inputs.iter().find(|d| d.name == name) else {
                let names = self.inputs.iter().map(|d| d.name.as_str());
                return Err(DefinitionError::new(
                    format!("inputs[{i}]"),
                    format!("unknown input \"{name}\" (known: {})", joined(names)),
                ));
            };
            scope_inputs.insert(def.name.clone());
            scope_workspaces.insert(def.workspace.clone());
        }
        Ok((
            scope_workspaces.into_iter().collect(),
            scope_inputs.into_iter().collect(),
        ))
    }
}

fn joined<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.collect();
    if all.is_empty() {
        "none are configured".to_string()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, workspace: &str, topic: Option<&str>, source: Option<&str>) -> InputDef {
        InputDef {
            name: name.into(),
            workspace: workspace.into(),
            topic: topic.map(Into::into),
            source: source.map(Into::into),
        }
    }

    fn tag(input: &str, workspace: &str) -> Option<InputTag> {
        Some(InputTag {
            input: input.into(),
            workspace: workspace.into(),
        })
    }

    #[test]
    fn the_most_specific_input_claims_a_message() {
        let map = InputMap::new(vec![
            def("all-events", "w1", Some("events"), None),
            def("ios", "w1", None, Some("ios")),
            def("ios-feed", "w2", Some("feed"), Some("ios")),
        ])
        .unwrap();
        assert_eq!(map.resolve("events", Some("ios")), tag("ios", "w1"));
        assert_eq!(map.resolve("feed", Some("ios")), tag("ios-feed", "w2"));
        assert_eq!(map.resolve("events", Some("web")), tag("all-events", "w1"));
        assert_eq!(map.resolve("events", None), tag("all-events", "w1"));
        assert_eq!(map.resolve("other", Some("web")), None);
    }

    #[test]
    fn bad_inputs_are_named() {
        let twice = InputMap::new(vec![
            def("a", "w", Some("t"), None),
            def("a", "w", None, Some("s")),
        ]);
        assert!(twice.unwrap_err().contains("\"a\" is defined twice"));
        let nothing = InputMap::new(vec![def("a", "w", None, None)]);
        assert!(nothing.unwrap_err().contains("claims no message"));
        let name = InputMap::new(vec![def("a b", "w", Some("t"), None)]);
        assert!(name.unwrap_err().contains("input name \"a b\""));
        let workspace = InputMap::new(vec![def("a", "", Some("t"), None)]);
        assert!(workspace.unwrap_err().contains("workspace name \"\""));
    }

    #[test]
    fn a_scope_gains_the_workspaces_of_its_inputs_and_refuses_unknown_names() {
        let map = InputMap::new(vec![
            def("a", "w1", None, Some("a")),
            def("b", "w1", None, Some("b")),
            def("c", "w2", None, Some("c")),
        ])
        .unwrap();
        let (w, i) = map
            .complete_scope(&["w2".into()], &["b".into(), "a".into(), "a".into()])
            .unwrap();
        assert_eq!(w, vec!["w1".to_string(), "w2".to_string()]);
        assert_eq!(i, vec!["a".to_string(), "b".to_string()]);
        let e = map.complete_scope(&["w9".into()], &[]).unwrap_err();
        assert_eq!(e.field, "workspaces[0]");
        assert!(e
            .reason
            .contains("unknown workspace \"w9\" (known: w1, w2)"));
        let e = map.complete_scope(&[], &["z".into()]).unwrap_err();
        assert_eq!(e.field, "inputs[0]");
        let e = InputMap::default()
            .complete_scope(&["w".into()], &[])
            .unwrap_err();
        assert!(e.reason.contains("none are configured"));
    }
}
