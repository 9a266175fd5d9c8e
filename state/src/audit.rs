//! The audit log: who changed which definition, and when. Every record of the catalog topic,
//! accepted or refused, gives one [`AuditEntry`] as it is applied; each node stores the
//! entries of the records it applies, so every node holds the same log, keyed and ordered by
//! the record's offset.
//!
//! Invariants:
//! - an entry is a pure function of the record, its offset and what applying it did
//!   ([`entry`]): nodes agree on it, and applying a record again (after a crash before its
//!   offset was stored) writes the same entry under the same key;
//! - the caller is the name of the token the change came with, never the token; "" where the
//!   engine runs without tokens or made the change itself (a catalog brought from an earlier
//!   version, audiences of `engine.audiences_dir`);
//! - an entry names what changed in words (`audience 12 'gold'`), not the definition: the
//!   definition as it stands is read from the catalog, and its earlier revisions from the
//!   topic.

use crate::catalog_log::{Applied, CatalogRecord, Change, Refusal};
use crate::model::TimestampMs;
use serde::{Deserialize, Serialize};

/// One change as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The change's offset on the catalog topic: the log's order.
    pub offset: i64,
    /// When it was proposed (the proposing node's clock).
    pub at_ms: TimestampMs,
    /// The name of the token it came with ("" without one).
    pub by: String,
    /// The node (and its incarnation) that proposed it.
    pub node: String,
    /// What was done, as the catalog topic's `op` names it (`create_audience`, `connect`...).
    pub op: String,
    /// What it was done to, in words.
    pub subject: String,
    /// Why it was refused; "" when it was applied.
    pub refusal: String,
}

impl AuditEntry {
    pub fn accepted(&self) -> bool {
        self.refusal.is_empty()
    }
}

/// The entry of the record at `offset`, applied with `outcome`.
pub fn entry(
    offset: i64,
    record: &CatalogRecord,
    outcome: &Result<Applied, Refusal>,
) -> AuditEntry {
    let (op, subject) = describe(&record.change, outcome.as_ref().ok());
    AuditEntry {
        offset,
        at_ms: record.at_ms,
        by: record.by.clone(),
        node: record.proposal.node.clone(),
        op: op.to_string(),
        subject,
        refusal: match outcome {
            Ok(_) => String::new(),
            Err(refusal) => refusal.to_string(),
        },
    }
}

/// The op and subject of a change; ids allocated at apply time come from what it did.
fn describe(change: &Change, applied: Option<&Applied>) -> (&'static str, String) {
    let audience = |id: u64, name: &str, revision: u64| {
        if id == 0 {
            format!("audience '{name}'")
        } else {
            format!("audience {id} '{name}' (revision {revision})")
        }
    };
    let output = |id: u64, name: &str| {
        if id == 0 {
            format!("output '{name}'")
        } else {
            format!("output {id} '{name}'")
        }
    };
    let connection = |id: u64, audience: u64, output: u64| {
        let to = format!("audience {audience} to output {output}");
        if id == 0 {
            format!("connection of {to}")
        } else {
            format!("connection {id} of {to}")
        }
    };
    match (change, applied) {
        (Change::CreateAudience { .. }, Some(Applied::Audience(done))) => (
            "create_audience",
            audience(done.id, &done.name, done.revision),
        ),
        (Change::PutAudience { .. }, Some(Applied::Audience(done))) => {
            ("put_audience", audience(done.id, &done.name, done.revision))
        }
        (Change::CreateAudience { audience: a }, _) => ("create_audience", audience(0, &a.name, 0)),
        (
            Change::PutAudience {
                audience: a,
                expected_revision,
            },
            _,
        ) => (
            "put_audience",
            format!(
                "{} from revision {expected_revision}",
                audience(a.id, &a.name, expected_revision + 1)
            ),
        ),
        (Change::DeleteAudience { id }, _) => ("delete_audience", format!("audience {id}")),
        (Change::CreateAbTest { audience, test }, _) => (
            "create_ab_test",
            format!(
                "audience {audience}: {}",
                test.split()
                    .map(|(name, percent)| format!("{name} {percent}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (Change::DeleteAbTest { audience }, done) => {
            let gone = match done {
                Some(Applied::AbTestDeleted { connections, .. }) => connections.len(),
                _ => 0,
            };
            (
                "delete_ab_test",
                format!("audience {audience}, with {gone} connections of its variations"),
            )
        }
        (
            Change::SetEventTier {
                event_type,
                name,
                tier,
            },
            _,
        ) => (
            "set_event_tier",
            format!("event {event_type} '{name}' to tier {tier}"),
        ),
        (Change::PutCalculated { attribute }, _) => (
            "put_calculated",
            format!("calculated attribute '{}'", attribute.name),
        ),
        (Change::DeleteCalculated { name }, _) => (
            "delete_calculated",
            format!("calculated attribute '{name}'"),
        ),
        (Change::CreateOutput { output: o }, done) => {
            let id = match done {
                Some(Applied::Output(done)) => done.id,
                _ => 0,
            };
            ("create_output", output(id, &o.name))
        }
        (Change::PutOutput { output: o }, _) => ("put_output", output(o.id, &o.name)),
        (Change::DeleteOutput { id }, _) => ("delete_output", format!("output {id}")),
        (Change::Connect { connection: c }, done) => {
            let id = match done {
                Some(Applied::Connection(done)) => done.id,
                _ => 0,
            };
            ("connect", connection(id, c.audience_id, c.output_id))
        }
        (Change::PutConnection { connection: c }, _) => (
            "put_connection",
            connection(c.id, c.audience_id, c.output_id),
        ),
        (Change::Disconnect { id }, _) => ("disconnect", format!("connection {id}")),
        (Change::Resume { id }, _) => ("resume", format!("connection {id}")),
        (Change::CreateToken { token }, _) => ("create_token", format!("token '{}'", token.name)),
        (Change::RevokeToken { name }, _) => ("revoke_token", format!("token '{name}'")),
        (Change::Import { catalog }, _) => (
            "import",
            format!(
                "the catalog of an earlier version: {} audiences, {} calculated attributes, \
                 {} outputs, {} connections",
                catalog.audiences.len(),
                catalog.calculated.len(),
                catalog.outputs.len(),
                catalog.connections.len()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::AudienceRecord;
    use crate::catalog_log::{CatalogState, ProposalId};
    use serde_json::json;

    fn record(seq: u64, by: &str, change: Change) -> CatalogRecord {
        CatalogRecord {
            proposal: ProposalId {
                node: "node-a-1".into(),
                seq,
            },
            at_ms: 1_000 + seq as i64,
            by: by.into(),
            change,
        }
    }

    #[test]
    fn entries_name_the_caller_the_change_and_its_outcome() {
        let mut state = CatalogState::default();
        let gold = AudienceRecord::active(
            0,
            "gold",
            json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
        );
        let create = record(0, "ops", Change::CreateAudience { audience: gold });
        let outcome = state.apply(0, &create);
        assert!(outcome.is_ok(), "{outcome:?}");
        let e = entry(0, &create, &outcome);
        assert_eq!(e.by, "ops");
        assert_eq!(e.op, "create_audience");
        assert_eq!(e.subject, "audience 1 'gold' (revision 1)");
        assert_eq!((e.offset, e.at_ms, e.node.as_str()), (0, 1_000, "node-a-1"));
        assert!(e.accepted());
        // The same record and outcome give the same entry (a re-application writes it again).
        assert_eq!(entry(0, &create, &outcome), e);

        // A refused edit is logged with its refusal, by whoever tried it.
        let mut stale = state.audiences[&1].clone();
        stale.name = "platinum".into();
        let edit = record(
            1,
            "ci",
            Change::PutAudience {
                audience: stale,
                expected_revision: 7,
            },
        );
        let outcome = state.apply(1, &edit);
        let e = entry(1, &edit, &outcome);
        assert!(!e.accepted());
        assert_eq!(e.by, "ci");
        assert_eq!(e.op, "put_audience");
        assert!(e.refusal.contains("changed meanwhile"), "{}", e.refusal);
        assert!(e.subject.contains("audience 1 'platinum'"), "{}", e.subject);

        let delete = record(2, "", Change::DeleteAudience { id: 1 });
        let outcome = state.apply(2, &delete);
        let e = entry(2, &delete, &outcome);
        assert_eq!(
            (e.op.as_str(), e.subject.as_str()),
            ("delete_audience", "audience 1")
        );
        assert!(e.accepted() && e.by.is_empty());
    }
}
