//! The catalog as a log: replicas applying the same records in the same order end with the
//! same catalog, ids come from offsets, and conflicting changes are refused the same way
//! everywhere.

use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::{AudienceAccess, AudienceRecord, AudienceStatus};
use audience_state::catalog_log::*;
use audience_state::outputs::{Connection, ConnectionStatus, OutputConfig};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

fn audience(name: &str, criteria: serde_json::Value) -> AudienceRecord {
    AudienceRecord::active(0, name, criteria)
}

fn gold() -> serde_json::Value {
    json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}})
}

fn record(node: &str, seq: u64, change: Change) -> CatalogRecord {
    CatalogRecord {
        proposal: ProposalId {
            node: node.into(),
            seq,
        },
        at_ms: 1_000 + seq as i64,
        by: format!("token of {node}"),
        change,
    }
}

/// Applies records at consecutive offsets from `first`, returning each outcome.
fn apply_all(
    state: &mut CatalogState,
    first: i64,
    records: &[CatalogRecord],
) -> Vec<Result<Applied, Refusal>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // Through the bytes the topic carries.
            let read = CatalogRecord::decode(&r.encode()).expect("records round-trip");
            state.apply(first + i as i64, &read)
        })
        .collect()
}

#[test]
fn ids_come_from_offsets_and_replicas_agree() {
    let records: Vec<CatalogRecord> = (0..200u64)
        .map(|i| {
            let node = if i % 2 == 0 { "a" } else { "b" };
            record(
                node,
                i / 2,
                Change::CreateAudience {
                    audience: audience(&format!("audience {i}"), gold()),
                },
            )
        })
        .collect();
    let mut a = CatalogState::default();
    let mut b = CatalogState::default();
    let on_a = apply_all(&mut a, 40, &records);
    let on_b = apply_all(&mut b, 40, &records);
    assert_eq!(on_a, on_b);
    assert_eq!(a, b);
    let ids: BTreeSet<u64> = a.audiences.keys().copied().collect();
    assert_eq!(ids.len(), 200, "200 distinct ids");
    assert_eq!(ids.first(), Some(&id_at(40)));
    assert_eq!(a.applied_offset, Some(239));
    assert!(a.audiences.values().all(|r| r.revision == 1));
}

#[test]
fn a_delete_and_a_reference_made_at_once_end_the_same_everywhere() {
    let mut state = CatalogState::default();
    let base = apply_all(
        &mut state,
        0,
        &[record(
            "a",
            0,
            Change::CreateAudience {
                audience: audience("gold", gold()),
            },
        )],
    );
    let Ok(Applied::Audience(gold_audience)) = &base[0] else {
        panic!("{base:?}")
    };
    let referrer = Change::CreateAudience {
        audience: audience(
            "gold and more",
            json!({"audience": {"id": gold_audience.id}}),
        ),
    };
    let delete = Change::DeleteAudience {
        id: gold_audience.id,
    };

    // Node A's delete is ordered first: node B's reference is refused.
    let mut first = state.clone();
    let outcome = apply_all(
        &mut first,
        1,
        &[
            record("a", 1, delete.clone()),
            record("b", 0, referrer.clone()),
        ],
    );
    assert!(matches!(outcome[0], Ok(Applied::AudienceDeleted { .. })));
    let refusal = outcome[1].as_ref().unwrap_err().to_string();
    assert!(refusal.contains("does not exist"), "{refusal}");
    assert!(first.audiences.is_empty());

    // Node B's reference is ordered first: node A's delete is refused, naming the referrer.
    let mut second = state.clone();
    let outcome = apply_all(
        &mut second,
        1,
        &[record("b", 0, referrer), record("a", 1, delete)],
    );
    assert!(matches!(outcome[0], Ok(Applied::Audience(_))));
    let refusal = outcome[1].as_ref().unwrap_err().to_string();
    assert!(
        refusal.contains("is used by audience(s) 2 (\"gold and more\")"),
        "{refusal}"
    );
    assert_eq!(second.audiences.len(), 2);
}

/// An audience of app-b references app-a's usable one: app-a's owners may not make it private
/// or view only (nor move it out of reach) while it does; an audience whose owners own it
/// anyway (one reading app-a too, or an unscoped one) does not hold it back.
#[test]
fn a_usable_audience_referenced_from_another_workspace_stays_usable_until_freed() {
    let scoped = |name: &str, criteria: serde_json::Value, workspaces: &[&str]| {
        let mut a = audience(name, criteria);
        a.workspaces = workspaces.iter().map(|w| w.to_string()).collect();
        a
    };
    let mut shared = scoped("a gold", gold(), &["app-a"]);
    shared.access = AudienceAccess::Usable;
    let mut state = CatalogState::default();
    let made = apply_all(
        &mut state,
        0,
        &[record("a", 0, Change::CreateAudience { audience: shared })],
    );
    let Ok(Applied::Audience(shared)) = &made[0] else {
        panic!("{made:?}")
    };
    let refers = json!({"audience": {"id": shared.id}});
    let made = apply_all(
        &mut state,
        1,
        &[
            record(
                "b",
                0,
                Change::CreateAudience {
                    audience: scoped("both read it", refers.clone(), &["app-a", "app-b"]),
                },
            ),
            record(
                "b",
                1,
                Change::CreateAudience {
                    audience: audience("everywhere reads it", refers.clone()),
                },
            ),
        ],
    );
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    let put = |audience: AudienceRecord| Change::PutAudience {
        expected_revision: audience.revision,
        audience,
    };
    // Owned by every owner of its referrers: made view only.
    let mut view_only = shared.clone();
    view_only.access = AudienceAccess::ViewOnly;
    let outcome = apply_all(&mut state, 3, &[record("a", 1, put(view_only.clone()))]);
    let Ok(Applied::Audience(view_only)) = &outcome[0] else {
        panic!("{outcome:?}")
    };
    // Usable again, then referenced from app-b alone: held usable, and within reach.
    let mut usable = view_only.clone();
    usable.access = AudienceAccess::Usable;
    let outcome = apply_all(
        &mut state,
        4,
        &[
            record("a", 2, put(usable)),
            record(
                "b",
                2,
                Change::CreateAudience {
                    audience: scoped("b reads it", refers, &["app-b"]),
                },
            ),
        ],
    );
    let Ok(Applied::Audience(usable)) = &outcome[0] else {
        panic!("{outcome:?}")
    };
    assert!(outcome[1].is_ok(), "{outcome:?}");
    for access in [AudienceAccess::Private, AudienceAccess::ViewOnly] {
        let mut closed = usable.clone();
        closed.access = access;
        let outcome = apply_all(&mut state.clone(), 6, &[record("a", 3, put(closed))]);
        let refusal = outcome[0].as_ref().unwrap_err().to_string();
        assert!(
            refusal.contains("is used by audience(s) 6 (\"b reads it\") of other workspaces")
                && refusal.contains(access.name()),
            "{refusal}"
        );
    }
    assert_eq!(
        state.audiences[&shared.id].access,
        AudienceAccess::Usable,
        "refused changes change nothing"
    );
}

#[test]
fn an_edit_from_a_stale_revision_is_refused() {
    let mut state = CatalogState::default();
    apply_all(
        &mut state,
        0,
        &[record(
            "a",
            0,
            Change::CreateAudience {
                audience: audience("gold", gold()),
            },
        )],
    );
    let current = state.audiences[&1].clone();
    let edit = |name: &str| Change::PutAudience {
        audience: AudienceRecord {
            name: name.into(),
            ..current.clone()
        },
        expected_revision: 1,
    };
    let outcome = apply_all(
        &mut state,
        1,
        &[record("a", 1, edit("by a")), record("b", 0, edit("by b"))],
    );
    assert!(matches!(&outcome[0], Ok(Applied::Audience(a)) if a.revision == 2));
    let refusal = outcome[1].as_ref().unwrap_err().to_string();
    assert!(refusal.contains("changed meanwhile"), "{refusal}");
    assert_eq!(state.audiences[&1].name, "by a");
    // A draft is checked like any save.
    let broken_draft = Change::PutAudience {
        audience: AudienceRecord {
            status: AudienceStatus::Draft,
            criteria: json!({"audience": {"id": 1}}),
            ..state.audiences[&1].clone()
        },
        expected_revision: 2,
    };
    let outcome = apply_all(&mut state, 3, &[record("a", 2, broken_draft)]);
    assert!(
        outcome[0].is_err(),
        "a self-reference is refused: {outcome:?}"
    );
    // A replayed offset changes nothing.
    let again = state.apply(1, &record("a", 1, edit("replayed")));
    assert!(again.is_err());
    assert_eq!(state.audiences[&1].name, "by a");
    // Who created it and who edited it last come from the records applied, whatever the edit
    // carried.
    let forged = Change::PutAudience {
        audience: AudienceRecord {
            created_by: "forged".into(),
            updated_by: "forged".into(),
            ..state.audiences[&1].clone()
        },
        expected_revision: 2,
    };
    let outcome = apply_all(&mut state, 4, &[record("b", 5, forged)]);
    assert!(outcome[0].is_ok(), "{outcome:?}");
    assert_eq!(state.audiences[&1].created_by, "token of a");
    assert_eq!(state.audiences[&1].updated_by, "token of b");
    // Each record's audit entry names its caller and its outcome.
    let audit = audience_state::audit::entry(
        4,
        &record("b", 5, Change::DeleteAudience { id: 1 }),
        &Err(Refusal::NotFound("gone".into())),
    );
    assert_eq!(
        (audit.by.as_str(), audit.op.as_str(), audit.accepted()),
        ("token of b", "delete_audience", false)
    );
}

#[test]
fn calculated_attributes_outputs_and_connections_follow_the_same_rules() {
    let spend: CalculatedAttributeRecord = serde_json::from_value(json!({
        "name": "Spend", "calculation": "sum", "field": "total_amount",
        "event": {"type": "commerce_event", "product_action": "purchase"}
    }))
    .unwrap();
    let reader = audience(
        "big spenders",
        json!({"calculated_attribute": {"name": "spend", "op": "greater_than", "value": 100}}),
    );
    let output = OutputConfig {
        id: 0,
        name: "partner".into(),
        kind: "grpc".into(),
        settings: Default::default(),
        secrets: Default::default(),
        accepted_identities: vec!["email".into()],
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    let mut state = CatalogState::default();
    let outcome = apply_all(
        &mut state,
        0,
        &[
            record(
                "a",
                0,
                Change::PutCalculated {
                    attribute: spend.clone(),
                },
            ),
            record("a", 1, Change::CreateAudience { audience: reader }),
            record("a", 2, Change::CreateOutput { output }),
            record(
                "a",
                3,
                Change::Connect {
                    connection: Connection {
                        id: 0,
                        audience_id: 2,
                        output_id: 3,
                        status: ConnectionStatus::Sending,
                        settings: Default::default(),
                        shared_attributes: vec![],
                        created_at_ms: 0,
                        updated_at_ms: 0,
                        variation: String::new(),
                    },
                },
            ),
            record(
                "b",
                0,
                Change::DeleteCalculated {
                    name: "SPEND".into(),
                },
            ),
            record("b", 1, Change::DeleteOutput { id: 3 }),
        ],
    );
    assert!(outcome[..4].iter().all(Result::is_ok), "{outcome:?}");
    assert_eq!(state.calculated["spend"].revision, id_at(0));
    assert!(state.connections.contains_key(&id_at(3)));
    assert!(outcome[4]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("big spenders"));
    assert!(outcome[5]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("connection 4"));

    // Redefining the attribute gives it a new revision and re-evaluates its reader.
    let mut redefined = spend;
    redefined.window_days = Some(30);
    let outcome = apply_all(
        &mut state,
        6,
        &[record(
            "b",
            2,
            Change::PutCalculated {
                attribute: redefined,
            },
        )],
    );
    assert!(outcome[0].is_ok(), "{outcome:?}");
    assert_eq!(state.calculated["spend"].revision, id_at(6));
    assert_eq!(state.audiences[&2].revision, 2);

    // Secrets sent back redacted keep their value; not when the destination moves.
    let mut secret = state.outputs[&3].clone();
    secret.secrets.insert("token".into(), "s3cret".into());
    let outcome = apply_all(
        &mut state,
        7,
        &[record(
            "a",
            6,
            Change::PutOutput {
                output: secret.clone(),
            },
        )],
    );
    assert!(outcome[0].is_ok(), "{outcome:?}");
    let mut redacted = secret.clone();
    redacted.secrets.insert("token".into(), "********".into());
    redacted.name = "partner renamed".into();
    let mut moved = redacted.clone();
    moved.kind = "webhook".into();
    moved
        .settings
        .insert("url".into(), json!("https://elsewhere.example/hook"));
    let outcome = apply_all(
        &mut state,
        8,
        &[
            record("a", 7, Change::PutOutput { output: redacted }),
            record("b", 3, Change::PutOutput { output: moved }),
        ],
    );
    assert!(outcome[0].is_ok(), "{outcome:?}");
    assert_eq!(state.outputs[&3].secrets["token"], "s3cret");
    assert_eq!(state.outputs[&3].name, "partner renamed");
    let refusal = outcome[1].as_ref().unwrap_err().to_string();
    assert!(refusal.contains("enter the secret again"), "{refusal}");

    // Deleting the audience takes its connection with it; then the output can go.
    let outcome = apply_all(
        &mut state,
        10,
        &[
            record("a", 4, Change::DeleteAudience { id: 2 }),
            record("a", 5, Change::DeleteOutput { id: 3 }),
        ],
    );
    assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    assert!(
        matches!(&outcome[0], Ok(Applied::AudienceDeleted { id: 2, connections }) if connections.len() == 1 && connections[0].id == id_at(3)),
        "{outcome:?}"
    );
    assert!(state.connections.is_empty() && state.outputs.is_empty());
}

#[test]
fn bad_bytes_are_named() {
    assert!(CatalogRecord::decode(b"").unwrap_err().contains("empty"));
    assert!(CatalogRecord::decode(b"\x07{}")
        .unwrap_err()
        .contains("format 7"));
    let broken = CatalogRecord::decode(b"\x01{\"proposal\": 3}").unwrap_err();
    assert!(broken.contains("does not parse"), "{broken}");
    let r = record("node-a", 9, Change::DeleteAudience { id: 4 });
    assert_eq!(r.key(), "node-a/9");
    assert_eq!(CatalogRecord::decode(&r.encode()), Ok(r));
}

proptest! {
    /// Any interleaving of two nodes' proposals, applied by two replicas: the same outcomes
    /// and the same catalog, whatever was refused.
    #[test]
    fn replicas_of_any_interleaving_agree(ops in prop::collection::vec((0u8..4, 1u64..6), 1..40)) {
        let records: Vec<CatalogRecord> = ops
            .iter()
            .enumerate()
            .map(|(i, (op, target))| {
                let change = match op {
                    0 => Change::CreateAudience { audience: audience("g", gold()) },
                    1 => Change::CreateAudience {
                        audience: audience("ref", json!({"audience": {"id": target}})),
                    },
                    2 => Change::DeleteAudience { id: *target },
                    _ => Change::SetEventTier {
                        event_type: "custom_event".into(),
                        name: format!("e{target}"),
                        tier: "analyze".into(),
                    },
                };
                record(if i % 2 == 0 { "a" } else { "b" }, i as u64, change)
            })
            .collect();
        let mut a = CatalogState::default();
        let mut b = CatalogState::default();
        prop_assert_eq!(apply_all(&mut a, 0, &records), apply_all(&mut b, 0, &records));
        prop_assert_eq!(&a, &b);
        // No audience ever reads one that is gone.
        let catalog = a.catalog(1);
        for r in a.audiences.values() {
            let compiled = r.validate_with(&catalog.calculated_lookup());
            prop_assert!(compiled.is_ok());
            prop_assert!(catalog.check_references(r.id, &compiled.unwrap()).is_ok());
        }
    }
}

#[test]
fn an_import_keeps_its_ids_and_later_ids_start_above_them() {
    let mut imported = AudienceRecord::active(40, "from before the topic", gold());
    imported.revision = 3;
    let catalog = ImportedCatalog {
        audiences: vec![imported.clone()],
        tiers: vec![(
            "custom_event".into(),
            "Purchase".into(),
            "personalize".into(),
        )],
        ..Default::default()
    };
    let mut state = CatalogState::default();
    let outcome = apply_all(
        &mut state,
        0,
        &[
            record(
                "a",
                0,
                Change::Import {
                    catalog: catalog.clone(),
                },
            ),
            record(
                "a",
                1,
                Change::CreateAudience {
                    audience: audience("after", gold()),
                },
            ),
            // A second import would mix two catalogs' ids: refused, changing nothing.
            record("b", 0, Change::Import { catalog }),
        ],
    );
    assert_eq!(outcome[0], Ok(Applied::Imported));
    assert_eq!(state.audiences[&40], imported, "ids and revisions kept");
    let Ok(Applied::Audience(after)) = &outcome[1] else {
        panic!("{:?}", outcome[1]);
    };
    assert_eq!(after.id, 41, "the next id is above every imported one");
    assert!(
        matches!(outcome[2], Err(Refusal::Conflict(_))),
        "{:?}",
        outcome[2]
    );
    assert_eq!(state.audiences.len(), 2);
    assert_eq!(state.tiers.len(), 1);
}

#[test]
fn the_materialised_copy_is_what_applying_gives_and_deletions_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = audience_state::store::Store::open(dir.path(), false).unwrap();
    let mut state = CatalogState::default();
    let records = [
        record(
            "a",
            0,
            Change::CreateAudience {
                audience: audience("kept", gold()),
            },
        ),
        record(
            "a",
            1,
            Change::CreateAudience {
                audience: audience("deleted", gold()),
            },
        ),
        record(
            "a",
            2,
            Change::CreateOutput {
                output: webhook("hook"),
            },
        ),
        record(
            "a",
            3,
            Change::Connect {
                connection: connection(id_at(1), id_at(2)),
            },
        ),
        record("a", 4, Change::DeleteAudience { id: id_at(1) }),
    ];
    // Saved after each record with its audit entry, as a node does while following the topic.
    for (offset, r) in records.iter().enumerate() {
        let outcome = state.apply(offset as i64, r);
        let audit = audience_state::audit::entry(offset as i64, r, &outcome);
        outcome.unwrap();
        let touched = state.take_touched();
        store.save_catalog(&state, &touched, &[audit]).unwrap();
    }
    assert!(state.take_touched().is_empty(), "taking forgets");
    let loaded = store.load_catalog_state().unwrap();
    assert_eq!(loaded, state);
    assert_eq!(loaded.applied_offset, Some(4));
    assert_eq!(loaded.audiences.len(), 1);
    assert!(
        loaded.connections.is_empty(),
        "the connection went with its audience"
    );
    assert!(store.load_connections().unwrap().is_empty());

    // The audit log was written with the changes: every record, in offset order, by caller.
    let log = store.audit_log(None, 100, None).unwrap();
    let ops: Vec<(i64, &str)> = log.iter().map(|e| (e.offset, e.op.as_str())).collect();
    assert_eq!(
        ops,
        [
            (0, "create_audience"),
            (1, "create_audience"),
            (2, "create_output"),
            (3, "connect"),
            (4, "delete_audience")
        ]
    );
    assert_eq!(log[0].subject, "audience 1 'kept' (revision 1)");
    assert_eq!(log[0].by, "token of a");
    // Paged from an offset, and filtered by caller.
    let page = store.audit_log(Some(1), 2, None).unwrap();
    assert_eq!(page.iter().map(|e| e.offset).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(
        store
            .audit_log(None, 100, Some("token of a"))
            .unwrap()
            .len(),
        5
    );
    assert!(store
        .audit_log(None, 100, Some("someone"))
        .unwrap()
        .is_empty());

    // A store that never applied the topic says so.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = audience_state::store::Store::open(fresh_dir.path(), false).unwrap();
    assert_eq!(fresh.load_catalog_state().unwrap().applied_offset, None);
}

fn webhook(name: &str) -> OutputConfig {
    OutputConfig {
        id: 0,
        name: name.into(),
        kind: "webhook".into(),
        settings: [("url".to_string(), json!("http://127.0.0.1:9/hook"))].into(),
        secrets: [("Authorization".to_string(), "Bearer t".to_string())].into(),
        accepted_identities: vec!["email".into()],
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn connection(audience_id: u64, output_id: u64) -> Connection {
    Connection {
        id: 0,
        audience_id,
        output_id,
        status: ConnectionStatus::Sending,
        settings: Default::default(),
        shared_attributes: vec![],
        created_at_ms: 0,
        updated_at_ms: 0,
        variation: String::new(),
    }
}

#[test]
fn the_cluster_id_is_the_first_records_on_every_replica_and_another_deployments_differs() {
    let records: Vec<CatalogRecord> = (0..5u64)
        .map(|i| {
            record(
                "a",
                i,
                Change::CreateAudience {
                    audience: audience(&format!("audience {i}"), gold()),
                },
            )
        })
        .collect();
    let (mut one, mut two) = (CatalogState::default(), CatalogState::default());
    apply_all(&mut one, 0, &records[..1]);
    let first = one.cluster_id.clone().expect("set by the first record");
    apply_all(&mut one, 1, &records[1..]);
    apply_all(&mut two, 0, &records);
    assert_eq!(
        one.cluster_id.as_deref(),
        Some(first.as_str()),
        "later records keep it"
    );
    assert_eq!(two.cluster_id, one.cluster_id, "replicas agree");
    assert_eq!(first.len(), 16);
    // Another deployment: a first record of another proposal or time.
    let mut other = CatalogState::default();
    apply_all(&mut other, 0, &[record("a", 7, records[0].change.clone())]);
    assert_ne!(other.cluster_id, one.cluster_id);
    // A refused record is still the topic's first.
    let mut refused = CatalogState::default();
    let outcome = apply_all(
        &mut refused,
        0,
        &[record("a", 0, Change::DeleteAudience { id: 42 })],
    );
    assert!(outcome[0].is_err());
    assert!(refused.cluster_id.is_some());
}

#[test]
fn api_tokens_are_created_once_by_name_revoked_and_kept_as_digests() {
    use audience_state::api_tokens::ApiTokenRecord;
    let token = |name: &str, digest: char| ApiTokenRecord {
        name: name.into(),
        digest: digest.to_string().repeat(64),
        scopes: vec!["read".into()],
        workspaces: vec!["app-b".into()],
        created_at_ms: 0,
        created_by: String::new(),
        valid_for_ms: 0,
    };
    let create = |seq, t: ApiTokenRecord| record("a", seq, Change::CreateToken { token: t });
    let revoke = |seq, name: &str| {
        record(
            "b",
            seq,
            Change::RevokeToken {
                name: name.to_string(),
            },
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let store = audience_state::store::Store::open(dir.path(), false).unwrap();
    let mut state = CatalogState::default();
    let records = [
        create(0, token("ci", 'a')),
        create(1, token("ci", 'b')),
        create(2, token("bad name", 'c')),
        create(3, token("reader", 'd')),
        revoke(0, "ci"),
        revoke(1, "ci"),
    ];
    let mut outcomes = Vec::new();
    for (offset, r) in records.iter().enumerate() {
        let outcome = state.apply(offset as i64, r);
        let audit = audience_state::audit::entry(offset as i64, r, &outcome);
        outcomes.push(outcome);
        let touched = state.take_touched();
        store.save_catalog(&state, &touched, &[audit]).unwrap();
    }
    match &outcomes[0] {
        Ok(Applied::Token(t)) => {
            assert_eq!(
                (t.created_at_ms, t.created_by.as_str()),
                (1_000, "token of a")
            )
        }
        other => panic!("created: {other:?}"),
    }
    assert!(
        matches!(&outcomes[1], Err(Refusal::Conflict(why)) if why.contains("'ci' exists")),
        "{:?}",
        outcomes[1]
    );
    assert!(matches!(&outcomes[2], Err(Refusal::Invalid(e)) if e.field == "name"));
    assert_eq!(outcomes[4], Ok(Applied::TokenRevoked("ci".into())));
    assert!(matches!(&outcomes[5], Err(Refusal::NotFound(_))));
    assert_eq!(state.tokens.keys().collect::<Vec<_>>(), ["reader"]);

    // The materialised copy holds what applying gave, and the audit log names each token.
    let loaded = store.load_catalog_state().unwrap();
    assert_eq!(loaded, state);
    assert_eq!(
        store.load_api_tokens().unwrap(),
        vec![state.tokens["reader"].clone()]
    );
    let ops: Vec<(String, String)> = store
        .audit_log(None, 100, None)
        .unwrap()
        .into_iter()
        .map(|e| (e.op, e.subject))
        .collect();
    assert_eq!(ops[0], ("create_token".into(), "token 'ci'".into()));
    assert_eq!(ops[4], ("revoke_token".into(), "token 'ci'".into()));
}

#[test]
fn an_ab_test_splits_without_a_new_revision_and_its_end_takes_its_connections() {
    use audience_state::ab_test::{AbTest, Variation};
    let mut state = CatalogState::default();
    let test = AbTest::new(
        77,
        vec![
            Variation {
                name: "Email".into(),
                percent: 40,
            },
            Variation {
                name: "Push".into(),
                percent: 40,
            },
        ],
    )
    .unwrap();
    let with_variation = |variation: &str| {
        let mut c = connection(1, 2);
        c.variation = variation.into();
        Change::Connect { connection: c }
    };
    let outcome = apply_all(
        &mut state,
        0,
        &[
            record(
                "a",
                0,
                Change::CreateAudience {
                    audience: audience("lapsed", gold()),
                },
            ),
            record(
                "a",
                1,
                Change::CreateOutput {
                    output: webhook("crm"),
                },
            ),
            // No test yet: a variation is refused, naming the field.
            record("a", 2, with_variation("Email")),
            record(
                "a",
                3,
                Change::CreateAbTest {
                    audience: 1,
                    test: test.clone(),
                },
            ),
            record(
                "a",
                4,
                Change::CreateAbTest {
                    audience: 1,
                    test: test.clone(),
                },
            ),
            record("a", 5, with_variation("Email")),
            record("a", 6, with_variation("Control")),
            record("a", 7, with_variation("")),
            record("a", 8, with_variation("SMS")),
        ],
    );
    let refusal = outcome[2].as_ref().unwrap_err().to_string();
    assert!(
        refusal.contains("variation") && refusal.contains("no A/B test"),
        "{refusal}"
    );
    assert!(
        matches!(&outcome[3], Ok(Applied::Audience(a)) if a.revision == 1 && a.ab_test.is_some())
    );
    let again = outcome[4].as_ref().unwrap_err().to_string();
    assert!(again.contains("has an A/B test already"), "{again}");
    assert!(outcome[5..8].iter().all(|o| o.is_ok()), "{outcome:?}");
    let unknown = outcome[8].as_ref().unwrap_err().to_string();
    assert!(unknown.contains("Email, Push, Control"), "{unknown}");
    assert_eq!(state.connections.len(), 3);

    // An edit read before the test does not undo it, and keeps the split.
    let mut stale = state.audiences[&1].clone();
    stale.ab_test = None;
    stale.criteria =
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "silver"}});
    let outcome = apply_all(
        &mut state,
        9,
        &[record(
            "b",
            0,
            Change::PutAudience {
                audience: stale,
                expected_revision: 1,
            },
        )],
    );
    assert!(matches!(&outcome[0], Ok(Applied::Audience(a)) if a.revision == 2));
    assert_eq!(state.audiences[&1].ab_test.as_ref().map(|t| t.id), Some(77));

    // The end of the test takes its variations' connections, not the whole audience's.
    let outcome = apply_all(
        &mut state,
        10,
        &[
            record("b", 1, Change::DeleteAbTest { audience: 1 }),
            record("b", 2, Change::DeleteAbTest { audience: 1 }),
        ],
    );
    match &outcome[0] {
        Ok(Applied::AbTestDeleted {
            audience,
            test,
            connections,
        }) => {
            assert!(audience.ab_test.is_none());
            assert_eq!(test.id, 77);
            let gone: BTreeSet<&str> = connections.iter().map(|c| c.variation.as_str()).collect();
            assert_eq!(gone, BTreeSet::from(["Email", "Control"]));
        }
        other => panic!("{other:?}"),
    }
    assert!(outcome[1]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("has no A/B test"));
    let left: Vec<&Connection> = state.connections.values().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].variation, "");
    assert_eq!(
        state.audiences[&1].revision, 2,
        "no new revision: nobody is evaluated again"
    );
}
