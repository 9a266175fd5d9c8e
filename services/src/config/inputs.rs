//! `[inputs]`: which messages belong to which input, and the workspace of each (README:
//! "Workspaces and inputs"). Every node of a deployment has the same.
//!
//! An input may claim the messages of any Kafka topic: the engine reads the events and the
//! identities topics and every topic an input claims, all co-partitioned by MPID (checked at
//! start). It never reads a topic it writes (deltas, dead letters, catalog, changelog,
//! members): that would feed its own output back to itself.

use audience_state::inputs::{InputDef, InputMap};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputsConfig {
    /// The dotted path of the JSON field holding a message's source value
    /// (`context.source`); the protobuf envelope has its own `source` field.
    pub source_field: String,
    /// `[[inputs.input]]`: name, workspace, and topic, source or both.
    pub input: Vec<InputDef>,
}

/// The longest Kafka topic name.
const MAX_TOPIC_CHARS: usize = 249;

impl InputsConfig {
    /// The inputs, checked: a claimed topic is a legal Kafka topic name and none of
    /// `engine_writes`, the topics the engine writes.
    pub fn map(&self, engine_writes: &[String]) -> anyhow::Result<InputMap> {
        for input in &self.input {
            let Some(topic) = input.topic.as_deref() else {
                continue;
            };
            let legal = !topic.is_empty()
                && topic.len() <= MAX_TOPIC_CHARS
                && topic != "."
                && topic != ".."
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !legal {
                anyhow::bail!(
                    "inputs: input \"{}\" claims topic \"{topic}\", which is not a Kafka topic \
                     name (1 to {MAX_TOPIC_CHARS} letters, digits, '-', '_' or '.')",
                    input.name
                );
            }
            if engine_writes.iter().any(|w| w == topic) {
                anyhow::bail!(
                    "inputs: input \"{}\" claims topic \"{topic}\", which the engine writes \
                     (its {}): reading it would feed the engine its own output",
                    input.name,
                    engine_writes.join(", ")
                );
            }
        }
        InputMap::new(self.input.clone()).map_err(|e| anyhow::anyhow!("inputs: {e}"))
    }

    /// The topics the engine consumes: the events and the identities topics, then each topic
    /// an input claims that is neither, in the configured order, once each. Every reader of
    /// input offsets takes them in this order.
    pub fn read_topics(&self, events: &str, identities: &str) -> Vec<String> {
        let mut topics = vec![events.to_string()];
        let claimed = self.input.iter().filter_map(|i| i.topic.as_deref());
        for topic in std::iter::once(identities).chain(claimed) {
            if !topics.iter().any(|t| t == topic) {
                topics.push(topic.to_string());
            }
        }
        topics
    }

    /// The source field as a path of object fields (empty: none).
    pub fn source_path(&self) -> Vec<String> {
        self.source_field
            .split('.')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(String::from)
            .collect()
    }
}

/// Reads `AUDIENCE_INPUTS`: inputs separated by `;`, each `name@workspace` then `:topic=T`,
/// `:source=S` or both (`ios@app-a:source=ios;feed@app-b:topic=partner-events`).
pub fn parse_inputs(value: &str) -> Result<Vec<InputDef>, String> {
    let mut out = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.split(':');
        let head = parts.next().unwrap_or_default();
        let (name, workspace) = head
            .split_once('@')
            .ok_or_else(|| format!("\"{entry}\": expected name@workspace:source=S"))?;
        let mut def = InputDef {
            name: name.trim().into(),
            workspace: workspace.trim().into(),
            topic: None,
            source: None,
        };
        for rule in parts {
            match rule.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("topic", t)) => def.topic = Some(t.into()),
                Some(("source", s)) => def.source = Some(s.into()),
                _ => {
                    return Err(format!(
                        "\"{entry}\": \"{rule}\" is not topic=T or source=S"
                    ))
                }
            }
        }
        out.push(def);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, topic: Option<&str>) -> InputDef {
        InputDef {
            name: name.into(),
            workspace: "w".into(),
            topic: topic.map(String::from),
            source: Some(name.into()),
        }
    }

    /// The events and identities topics first, then the claimed topics once each, in the
    /// configured order.
    #[test]
    fn the_engine_reads_every_claimed_topic_once() {
        let config = InputsConfig {
            source_field: String::new(),
            input: vec![
                input("a", Some("partner")),
                input("b", None),
                input("c", Some("events")),
                input("d", Some("tv")),
                input("e", Some("partner")),
            ],
        };
        assert_eq!(
            config.read_topics("events", "identities"),
            vec!["events", "identities", "partner", "tv"]
        );
    }

    /// A topic the engine writes, or no topic name at all, is refused, naming the input.
    #[test]
    fn a_claimed_topic_is_a_topic_the_engine_does_not_write() {
        let writes = ["deltas".to_string(), "dead-letters".to_string()];
        let refused = |topic: &str| {
            InputsConfig {
                source_field: String::new(),
                input: vec![input("feed", Some(topic))],
            }
            .map(&writes)
            .unwrap_err()
            .to_string()
        };
        let own = refused("deltas");
        assert!(
            own.contains("input \"feed\"") && own.contains("which the engine writes"),
            "{own}"
        );
        let illegal = refused("partner events");
        assert!(illegal.contains("not a Kafka topic name"), "{illegal}");
        assert!(refused("").contains("not a Kafka topic name"));
        let fine = InputsConfig {
            source_field: String::new(),
            input: vec![input("feed", Some("partner-events"))],
        };
        assert_eq!(fine.map(&writes).unwrap().inputs().len(), 1);
    }
}
