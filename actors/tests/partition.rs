//! The partition actor without a broker: messages injected, clock manual, real RocksDB.

use actix::prelude::*;
use audience_actors::clock::Clock;
use audience_actors::engine::{Engine, EngineSettings};
use audience_actors::partition::{PartitionActor, ProcessBatch, RawMessage, Tick};
use audience_state::catalog::AudienceRecord;
use audience_state::model::{DeltaKind, DAY_MS};
use audience_state::store::Store;
use std::sync::Arc;

fn message(offset: i64, body: serde_json::Value) -> RawMessage {
    RawMessage {
        topic: "events".into(),
        partition: 0,
        offset,
        key: None,
        payload: Some(body.to_string().into_bytes()),
        content_type: None,
        // Produced just now, by the wall clock.
        timestamp_ms: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        ),
    }
}

fn setup(dir: &std::path::Path) -> (Arc<Engine>, Arc<Clock>) {
    let store = Arc::new(Store::open(dir, false).unwrap());
    store
        .put_audience(&AudienceRecord::active(
            1,
            "searched this week",
            serde_json::json!({"event": {"name": "Search", "time": {"within_last_days": 7}}}),
        ))
        .unwrap();
    let clock = Arc::new(Clock::new(true));
    let settings = EngineSettings {
        input_topics: vec!["events".into(), "identities".into()],
        ..Default::default()
    };
    (Engine::new(store, clock.clone(), settings).unwrap(), clock)
}

fn search(mpid: i64, at: i64) -> serde_json::Value {
    serde_json::json!({"mpid": mpid, "events": [{"event_type": "custom_event",
        "data": {"event_name": "Search", "custom_event_type": "search", "timestamp_unixtime_ms": at}}]})
}

/// Waits until the partition has computed audience 1 over its stored profiles: until then,
/// streaming leaves new profiles to that backfill.
async fn calculated(engine: &Engine) {
    for _ in 0..500 {
        if engine
            .store
            .evaluated_revisions(0)
            .unwrap()
            .contains(&(1, 1))
        {
            return;
        }
        actix::clock::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("audience 1 never calculated");
}

#[actix::test]
async fn replayed_offsets_change_nothing_and_timers_drop_members() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, clock) = setup(dir.path());
    let now = clock.now();
    let actor = PartitionActor::new(0, engine.clone()).unwrap().start();
    calculated(&engine).await;
    let batch = vec![
        message(0, search(1, now)),
        message(1, serde_json::json!({"no": "mpid"})),
        message(2, search(2, now)),
    ];
    let outcome = actor
        .send(ProcessBatch(batch.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (outcome.applied, outcome.dead_lettered, outcome.deltas),
        (2, 1, 2)
    );
    assert_eq!(engine.store.next_offset("events", 0).unwrap(), Some(3));

    // A redelivery after a crash: skipped, no new delta, no second dead letter.
    let again = actor.send(ProcessBatch(batch)).await.unwrap().unwrap();
    assert_eq!((again.applied, again.skipped, again.deltas), (0, 3, 0));
    assert_eq!(engine.store.outbox_head(0).unwrap(), 2);
    assert_eq!(engine.store.deadletter_head(0).unwrap(), 1);
    let letter = &engine.store.read_dead_letters(0, 0, 10).unwrap()[0].1;
    assert_eq!(
        (letter.offset, letter.reason_code.as_str()),
        (1, "missing_mpid")
    );

    // A week later, with no event, both users leave.
    clock.advance(7 * DAY_MS + 1).unwrap();
    actor.send(Tick).await.unwrap();
    let deltas = engine.store.read_outbox(0, 2, 10).unwrap();
    assert_eq!(deltas.len(), 2, "{deltas:?}");
    // The two joins were caused by messages and timed, from their events and their records;
    // the two drops of time passing are not.
    let timed = engine.latencies(&[1]).remove(&1).unwrap();
    assert_eq!(
        (timed.from_event.count(), timed.from_produce.count()),
        (2, 2)
    );
    assert!(timed.from_produce.quantile_ms(1.0).unwrap() < 60_000.0);
    assert!(deltas
        .iter()
        .all(|(_, d)| d.kind == DeltaKind::Dropped && d.version == 2));
    assert_eq!(engine.store.audience_size(1, 0).unwrap(), 0);

    // State survives a restart of the actor from the store alone.
    drop(actor);
    let actor = PartitionActor::new(0, engine.clone()).unwrap().start();
    let later = clock.now();
    let outcome = actor
        .send(ProcessBatch(vec![message(3, search(1, later))]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.deltas, 1);
    let (_, d) = engine.store.read_outbox(0, 4, 10).unwrap().remove(0);
    assert_eq!((d.mpid, d.kind, d.version), (1, DeltaKind::Added, 3));
}

/// A damaged row costs neither the partition nor the messages of its profile where the state
/// can be read elsewhere: an unreadable profile row is rebuilt from its log and memberships,
/// an unreadable log head starts the log again over the profile's facts; only a profile with
/// neither has its message dead-lettered (`state_unreadable`). Each row is set aside.
#[actix::test]
async fn unreadable_rows_are_set_aside_and_their_profiles_go_on_from_what_can_be_read() {
    use audience_state::store::{log_key, member_by_profile_key, profile_key};
    let dir = tempfile::tempdir().unwrap();
    let (engine, clock) = setup(dir.path());
    let now = clock.now();
    let actor = PartitionActor::new(0, engine.clone()).unwrap().start();
    calculated(&engine).await;
    let first: Vec<RawMessage> = (1..=5).map(|m| message(m - 1, search(m, now))).collect();
    let outcome = actor.send(ProcessBatch(first)).await.unwrap().unwrap();
    assert_eq!((outcome.applied, outcome.deltas), (5, 5));

    // While the partition is stopped: 1's state row, 2's log head, and both of 3's.
    drop(actor);
    let store = &engine.store;
    store
        .write_raw("profiles", &profile_key(0, 1), b"\x09damaged")
        .unwrap();
    let head = log_key(0, 2, u32::MAX);
    store.write_raw("eventlog", &head, b"\xffdamaged").unwrap();
    store
        .write_raw("profiles", &profile_key(0, 3), b"\x09damaged")
        .unwrap();
    store
        .write_raw("eventlog", &log_key(0, 3, u32::MAX), b"\xffdamaged")
        .unwrap();
    // And 5's state row with its membership record, which a rebuild would need.
    store
        .write_raw("profiles", &profile_key(0, 5), b"\x09damaged")
        .unwrap();
    store
        .write_raw("members", &member_by_profile_key(0, 5, 1, 1), b"\x07")
        .unwrap();

    let actor = PartitionActor::new(0, engine.clone()).unwrap().start();
    let later = now + DAY_MS;
    let second: Vec<RawMessage> = (1..=5).map(|m| message(m + 4, search(m, later))).collect();
    let outcome = actor.send(ProcessBatch(second)).await.unwrap().unwrap();
    assert_eq!(
        (outcome.applied, outcome.dead_lettered, outcome.deltas),
        (3, 2, 0),
        "1 and 2 go on as members (no delta), 3 and 5 are dead-lettered, 4 is untouched"
    );
    let letters = engine.store.read_dead_letters(0, 0, 10).unwrap();
    let letter = &letters[0].1;
    assert_eq!(
        (letter.offset, letter.reason_code.as_str()),
        (7, "state_unreadable")
    );
    assert!(letter.reason.contains("MPID 3"), "{}", letter.reason);
    assert_eq!(
        (letters[1].1.offset, letters[1].1.reason_code.as_str()),
        (9, "state_unreadable")
    );
    let repaired = store.load_profile(0, 1).unwrap().expect("rewritten whole");
    assert_eq!(repaired.memberships[&1].version, 1);
    assert!(
        store.load_log_head(0, 2).unwrap().is_some(),
        "a new log head"
    );
    let (rows, count) = store.quarantined(0, 10).unwrap();
    assert_eq!(count, 5, "{rows:?}");
    assert!(rows.iter().any(|r| r.display_key == "0/2/head"));

    // Time goes on for the repaired profiles: a week after their last search they leave,
    // versions continuing; 3's timer is dropped with its state, and the partition goes on.
    clock.advance(8 * DAY_MS + 1).unwrap();
    actor.send(Tick).await.unwrap();
    let drops: Vec<(i64, u64)> = store
        .read_outbox(0, 5, 10)
        .unwrap()
        .into_iter()
        .filter(|(_, d)| d.kind == DeltaKind::Dropped)
        .map(|(_, d)| (d.mpid, d.version))
        .collect();
    assert_eq!(drops, vec![(1, 2), (2, 2), (4, 2)]);
}
