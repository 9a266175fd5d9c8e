//! The store's own tests: key order, one batch holding a unit of work, dead-letter bounds,
//! membership-history pruning and wipes.

use super::db::*;
use super::deadletter::*;
use super::keys::*;
use super::logs::*;
use crate::model::{AudienceId, Delta, DeltaKind, Mpid};
use crate::profile::ProfileState;
use serde::Serialize;

#[test]
fn ordered_keys_sort_like_integers() {
    let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
    let keys: Vec<_> = values.iter().map(|&v| ordered_i64(v)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    for v in values {
        assert_eq!(from_ordered_i64(&ordered_i64(v)), v);
    }
}

#[test]
fn one_batch_holds_state_deltas_timers_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut profile = ProfileState::new(-42);
    profile.first_seen_ms = 5;
    let delta = Delta {
        audience_id: 3,
        mpid: -42,
        kind: DeltaKind::Added,
        event_time_ms: 1,
        processing_time_ms: 2,
        version: 1,
    };
    let mut b = store.batch();
    b.put_profile(7, &profile);
    b.put_delta(7, 1, &delta);
    b.set_outbox_head(7, 1);
    b.set_timer(7, 100, -42);
    b.set_next_offset("events", 7, 11);
    b.set_audience_size(3, 7, 1);
    store.commit(b).unwrap();
    drop(store);

    let store = Store::open(dir.path(), false).unwrap();
    assert_eq!(store.load_profile(7, -42).unwrap(), Some(profile));
    assert_eq!(store.read_outbox(7, 0, 10).unwrap(), vec![(1, delta)]);
    assert_eq!(store.outbox_head(7).unwrap(), 1);
    assert_eq!(store.due_timers(7, 99, 10).unwrap(), vec![]);
    assert_eq!(store.due_timers(7, 100, 10).unwrap(), vec![(100, -42)]);
    assert_eq!(store.next_offset("events", 7).unwrap(), Some(11));
    assert_eq!(store.audience_sizes().unwrap(), vec![(3, 7, 1)]);
    assert_eq!(store.known_partitions().unwrap(), vec![7]);
    store.prune_outbox(7, 1).unwrap();
    assert!(store.read_outbox(7, 0, 10).unwrap().is_empty());
}

/// The partitions' commits are counted in bytes (keys, values, framing), from the store's
/// opening: what a unit of work costs the store, for status and benchmarks.
#[test]
fn partition_commits_are_counted_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    assert_eq!(store.partition_bytes_committed(), 0);
    let mut profile = ProfileState::new(9);
    profile
        .identities
        .insert("email".into(), vec!["x".repeat(3_000)]);
    let mut b = store.partition_batch();
    b.put_profile(2, &profile);
    let size = b.size_in_bytes() as u64;
    assert!(size > 3_000, "{size}");
    store.commit_partition(b, 2).unwrap();
    assert_eq!(store.partition_bytes_committed(), size);
    let mut b = store.partition_batch();
    b.set_next_offset("events", 2, 5);
    let more = b.size_in_bytes() as u64;
    store.commit_partition(b, 2).unwrap();
    assert_eq!(store.partition_bytes_committed(), size + more);
    // Other writes (catalog, outputs) are not the partitions' state.
    let mut b = store.batch();
    b.set_audience_size(3, 2, 1);
    store.commit(b).unwrap();
    assert_eq!(store.partition_bytes_committed(), size + more);
    drop(store);
    let store = Store::open(dir.path(), false).unwrap();
    assert_eq!(
        store.partition_bytes_committed(),
        0,
        "counted since the store opened"
    );
}

fn letter(offset: i64, payload: &[u8], limits: DeadLetterLimits) -> DeadLetter {
    DeadLetter::new(
        "events".into(),
        0,
        offset,
        "malformed".into(),
        "not a JSON batch object (found an array) nor a protobuf envelope".into(),
        Some(b"42".to_vec()),
        payload,
        7,
        limits,
    )
}

#[test]
fn a_dead_letter_keeps_the_message_when_it_fits_and_a_prefix_when_not() {
    let limits = DeadLetterLimits {
        max_record_bytes: 4096,
        prefix_bytes: 100,
    };
    let small = letter(1, &[b'x'; 1000], limits);
    assert_eq!(
        (small.payload.len(), small.original_size, small.truncated),
        (1000, 1000, false)
    );
    let big = letter(2, &[b'y'; 5000], limits);
    assert_eq!(
        (big.payload.len(), big.original_size, big.truncated),
        (100, 5000, true)
    );
    // Room left after the key and headers bounds the prefix too.
    let tight = letter(
        3,
        &[b'z'; 5000],
        DeadLetterLimits {
            max_record_bytes: 600,
            prefix_bytes: 1000,
        },
    );
    assert!(tight.truncated);
    assert!(tight.payload.len() + tight.record_bytes_without_payload() <= 600);
    let cut = small.cut_to(10);
    assert_eq!(
        (cut.payload.len(), cut.original_size, cut.truncated),
        (10, 1000, true)
    );
}

#[test]
fn dead_letters_are_deleted_once_done_and_old_rows_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let limits = DeadLetterLimits::default();
    let mut b = store.batch();
    for seq in 1..=5 {
        b.put_dead_letter(3, seq, &letter(seq as i64, b"[1]", limits));
    }
    b.put_dead_letter(4, 1, &letter(9, b"null", limits));
    store.commit(b).unwrap();
    // A row written before letters knew their original size.
    #[derive(Serialize)]
    struct Untruncated<'a> {
        topic: &'a str,
        partition: i32,
        offset: i64,
        reason_code: &'a str,
        reason: &'a str,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        at_ms: i64,
    }
    let old = postcard::to_stdvec(&Untruncated {
        topic: "events",
        partition: 0,
        offset: 6,
        reason_code: "malformed",
        reason: "old",
        key: None,
        payload: b"abc".to_vec(),
        at_ms: 1,
    })
    .unwrap();
    // As the store's open frames a row of its time (see `tests_quarantine`).
    let framed = [&[crate::row_format::LETTER_FORMAT][..], &old].concat();
    store
        .db
        .put_cf(store.cf(CF_DEADLETTERS), seq_key(3, 6), framed)
        .unwrap();
    let read = store.read_dead_letters(3, 5, 10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        (
            read[0].1.original_size,
            read[0].1.truncated,
            read[0].1.offset
        ),
        (3, false, 6)
    );
    assert_eq!(store.count_dead_letters(3).unwrap(), 6);

    let mut b = store.batch();
    b.delete_dead_letters_through(3, 4);
    store.commit(b).unwrap();
    let left: Vec<u64> = store
        .read_dead_letters(3, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(left, vec![5, 6]);
    assert_eq!(store.count_dead_letters(3).unwrap(), 2);
    // Another partition's letters stay.
    assert_eq!(store.count_dead_letters(4).unwrap(), 1);
}

fn delta(audience: AudienceId, mpid: Mpid, kind: DeltaKind, version: u64, at: i64) -> Delta {
    Delta {
        audience_id: audience,
        mpid,
        kind,
        event_time_ms: at,
        processing_time_ms: at,
        version,
    }
}

#[test]
fn pruning_the_membership_history_keeps_each_pairs_last_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut b = store.batch();
    // Pair (1, 5): in and out twice, long ago. Pair (2, 5): in long ago, still a member.
    // Pair (1, 6): out long ago, then in again recently.
    for d in [
        delta(1, 5, DeltaKind::Added, 1, 10),
        delta(1, 5, DeltaKind::Dropped, 2, 20),
        delta(1, 5, DeltaKind::Added, 3, 30),
        delta(1, 5, DeltaKind::Dropped, 4, 40),
        delta(2, 5, DeltaKind::Added, 1, 10),
        delta(1, 6, DeltaKind::Added, 1, 10),
        delta(1, 6, DeltaKind::Dropped, 2, 20),
        delta(1, 6, DeltaKind::Added, 3, 500),
    ] {
        b.record_membership(0, &d);
    }
    store.commit(b).unwrap();
    assert_eq!(store.prune_membership_history(0, 100).unwrap(), 3);
    let versions = |mpid| -> Vec<(AudienceId, Vec<u64>)> {
        store
            .membership_changes_of(0, mpid)
            .unwrap()
            .into_iter()
            .map(|(a, c)| (a, c.iter().map(|c| c.version).collect()))
            .collect()
    };
    assert_eq!(versions(5), vec![(1, vec![4]), (2, vec![1])]);
    assert_eq!(versions(6), vec![(1, vec![3])]);
    // Pruning again finds nothing more to drop: each pair's last word stays.
    assert_eq!(store.prune_membership_history(0, 100).unwrap(), 0);
    assert_eq!(versions(5), vec![(1, vec![4]), (2, vec![1])]);
    // Members at an instant after the prune read the same.
    let members = store.members_at(0, 1, 600, None, 10).unwrap();
    assert_eq!(members, vec![6]);
}

#[test]
fn a_wipe_deletes_states_and_timers_and_keeps_what_profiles_are_rebuilt_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut b = store.batch();
    for (partition, mpid) in [(3, i64::MIN), (3, -1), (3, i64::MAX), (4, 9)] {
        let mut profile = ProfileState::new(mpid);
        profile.last_seen_ms = 77;
        b.put_profile(partition, &profile);
        b.put_facts(partition, mpid, &crate::facts::encode_facts(&profile));
        b.set_timer(partition, 1_000, mpid);
        b.record_membership(partition, &delta(8, mpid, DeltaKind::Added, 2, 50));
    }
    b.set_replay_cursor(
        3,
        Some(ReplayCursor {
            wiped: true,
            after: Some(-1),
        }),
    );
    store.commit(b).unwrap();
    let mut b = store.batch();
    b.wipe_profile_states(3);
    store.commit(b).unwrap();
    assert!(store.scan_profiles(3, None, 10).unwrap().items.is_empty());
    assert!(store.due_timers(3, i64::MAX, 10).unwrap().is_empty());
    // The other partition is untouched.
    assert_eq!(store.scan_profiles(4, None, 10).unwrap().items.len(), 1);
    assert_eq!(store.due_timers(4, 1_000, 10).unwrap(), vec![(1_000, 9)]);
    let logs = store.scan_profile_logs(3, None, 10).unwrap().items;
    let mpids: Vec<Mpid> = logs.iter().map(|l| l.mpid).collect();
    assert_eq!(mpids, vec![i64::MIN, -1, i64::MAX]);
    assert!(logs.iter().all(|l| l.facts.last_seen_ms == 77));
    assert_eq!(logs[1].memberships[&8][0].version, 2);
    assert_eq!(
        store
            .scan_profile_logs(3, Some(-1), 10)
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(store
        .scan_profile_logs(3, Some(i64::MAX), 10)
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        store.replay_cursor(3).unwrap(),
        Some(ReplayCursor {
            wiped: true,
            after: Some(-1)
        })
    );
    let mut b = store.batch();
    b.set_replay_cursor(3, None);
    store.commit(b).unwrap();
    assert_eq!(store.replay_cursor(3).unwrap(), None);
}

#[test]
fn a_derived_write_keeps_the_core_row_and_loads_and_scans_read_both_rows() {
    use crate::profile::MemberRecord;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let p = 3;
    let mut stored = ProfileState::new(5);
    stored.last_seen_ms = 9;
    stored.memberships.insert(
        1,
        MemberRecord {
            member: true,
            version: 1,
            changed_at_ms: 3,
        },
    );
    // One profile as earlier versions stored it (one whole row), one as this version does.
    store
        .db
        .put_cf(store.cf(CF_PROFILES), profile_key(p, 5), stored.encode())
        .unwrap();
    let other = ProfileState::new(6);
    let mut b = store.batch();
    b.put_profile(p, &other);
    store.commit(b).unwrap();
    assert_eq!(store.load_profile(p, 5).unwrap(), Some(stored.clone()));

    // A backfill's change: only the derived row is written; the core stays as stored (a
    // core change made in memory alongside is not written by it).
    let mut changed = stored.clone();
    changed.memberships.get_mut(&1).unwrap().member = false;
    changed.due.insert(1, 77);
    changed.last_seen_ms = 10;
    let mut b = store.batch();
    b.put_profile_derived(p, &changed);
    store.commit(b).unwrap();
    let expected = ProfileState {
        last_seen_ms: 9,
        ..changed
    };
    assert_eq!(store.load_profile(p, 5).unwrap(), Some(expected.clone()));
    let scanned = store.scan_profiles(p, None, 10).unwrap().items;
    assert_eq!(scanned, vec![expected, other.clone()]);
    assert_eq!(
        store
            .db
            .get_cf(store.cf(CF_PROFILES), profile_key(p, 5))
            .unwrap(),
        Some(stored.encode())
    );

    // A wipe deletes both rows.
    let mut b = store.batch();
    b.wipe_profile_states(p);
    store.commit(b).unwrap();
    assert_eq!(store.load_profile(p, 5).unwrap(), None);
    let derived_left = store
        .db
        .iterator_cf(store.cf(CF_DERIVED), rocksdb::IteratorMode::Start)
        .count();
    assert_eq!(derived_left, 0);
}

/// The files of the column families a profile's activation reads by key carry a Bloom filter
/// (a new profile's rows are in no file: the filter says so without reading the file's
/// blocks); the others, read in ranges, do not.
#[test]
fn files_read_by_key_carry_bloom_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut b = store.batch();
    for mpid in 1..=200 {
        b.put_profile(3, &ProfileState::new(mpid));
        b.put_facts(3, mpid, b"facts");
        b.put_delta(
            3,
            mpid as u64,
            &Delta {
                audience_id: 1,
                mpid,
                kind: DeltaKind::Added,
                event_time_ms: 1,
                processing_time_ms: 1,
                version: 1,
            },
        );
    }
    store.commit(b).unwrap();
    let filter_bytes = |cf: &'static str| -> u64 {
        store.db.flush_cf(store.cf(cf)).unwrap();
        let properties = store
            .db
            .property_value_cf(store.cf(cf), "rocksdb.aggregated-table-properties")
            .unwrap()
            .expect("a flushed column family has table properties");
        properties
            .split(';')
            .find_map(|p| p.trim().strip_prefix("filter block size="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{cf}: no filter block size in {properties}"))
    };
    for cf in [CF_PROFILES, CF_DERIVED, CF_FACTS] {
        assert!(filter_bytes(cf) > 0, "{cf} files carry a Bloom filter");
    }
    assert_eq!(filter_bytes(CF_OUTBOX), 0, "the outbox is read in ranges");
}

#[test]
fn the_block_cache_bounds_what_reads_keep_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cache_bytes = 256 << 10;
    let store = Store::open_with(
        dir.path(),
        &StoreOptions {
            cache_bytes,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let profiles = 20_000;
    let mut b = store.batch();
    for mpid in 1..=profiles {
        let mut profile = ProfileState::new(mpid);
        profile.attributes.insert(
            "padding".to_string(),
            crate::profile::NamedAttr {
                name: "padding".to_string(),
                value: crate::model::AttrValue::String(format!("{mpid:0>200}")),
            },
        );
        b.put_profile(3, &profile);
    }
    store.commit(b).unwrap();
    assert!(
        store.memory().memtables > 0,
        "unflushed rows are in memtables"
    );
    for cf in [CF_PROFILES, CF_DERIVED] {
        store.db.flush_cf(store.cf(cf)).unwrap();
    }
    for mpid in 1..=profiles {
        assert!(store.load_profile(3, mpid).unwrap().is_some());
    }
    let memory = store.memory();
    // Several MiB of rows were read, through the one shared cache (a column family with a
    // cache of its own would leave this one empty), which kept at most its capacity.
    assert!(memory.block_cache > 0, "{memory:?}");
    assert!(
        memory.block_cache <= cache_bytes as u64,
        "{memory:?} over {cache_bytes}"
    );
}
