//! Rows that do not decode: scans leave them out and name them, readers set them aside, and
//! stores of earlier versions (rows without a format byte, column families unknown here) open.

use super::db::*;
use super::deadletter::*;
use super::keys::*;
use crate::catalog::AudienceRecord;
use crate::eventlog::EventLog;
use crate::model::{Delta, DeltaKind, Mpid};
use crate::profile::ProfileState;

const P: Partition = 2;

fn store_with_profiles(dir: &std::path::Path, mpids: &[Mpid]) -> Store {
    let store = Store::open(dir, false).unwrap();
    let mut b = store.batch();
    for &mpid in mpids {
        b.put_profile(P, &ProfileState::new(mpid));
        b.put_facts(P, mpid, &crate::facts::ProfileFacts::default().encode());
        b.put(
            CF_EVENTLOG,
            log_key(P, mpid, LOG_HEAD_SEQ),
            EventLog::default().encode(),
        );
    }
    store.commit(b).unwrap();
    store
}

fn damage(store: &Store, cf: &'static str, key: &[u8], bytes: &[u8]) {
    store.db.put_cf(store.cf(cf), key, bytes).unwrap();
}

fn delta(version: u64) -> Delta {
    Delta {
        audience_id: 4,
        mpid: 7,
        kind: DeltaKind::Added,
        event_time_ms: 1,
        processing_time_ms: 2,
        version,
    }
}

#[test]
fn an_unreadable_derived_row_makes_its_profile_unreadable_not_memberless() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_profiles(dir.path(), &[1, 5, 9]);
    damage(&store, CF_DERIVED, &profile_key(P, 5), b"\x01\xff\xff");

    let page = store.scan_profiles(P, None, 10).unwrap();
    let read: Vec<Mpid> = page.items.iter().map(|p| p.mpid).collect();
    assert_eq!(read, vec![1, 9]);
    assert_eq!(page.unreadable.len(), 1);
    let row = &page.unreadable[0];
    assert_eq!(
        (row.cf, row.display_key.as_str(), row.mpid()),
        ("derived", "2/5", Some(5))
    );
    // Rebuilt from its base and log, as an unreadable core row is.
    match store.load_profile(P, 5) {
        Err(StoreError::Unreadable(row)) => assert!(row.is_profile_state()),
        other => panic!("an unreadable row is named: {other:?}"),
    }
}

#[test]
fn an_unreadable_profile_row_is_left_out_of_a_scan_named_and_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_profiles(dir.path(), &[1, 5, 9]);
    damage(&store, CF_PROFILES, &profile_key(P, 5), b"\x09garbage");

    let page = store.scan_profiles(P, None, 10).unwrap();
    let read: Vec<Mpid> = page.items.iter().map(|p| p.mpid).collect();
    assert_eq!(read, vec![1, 9]);
    assert_eq!(page.last, Some(9));
    assert_eq!(page.unreadable.len(), 1);
    let row = &page.unreadable[0];
    assert_eq!(
        (row.cf, row.display_key.as_str(), row.mpid()),
        ("profiles", "2/5", Some(5))
    );
    assert!(row.reason.contains("unknown profile format 9"), "{row}");
    // It counts toward the page's size, so a page of bad rows still moves the scan on.
    let page = store.scan_profiles(P, None, 2).unwrap();
    assert_eq!(
        (page.items.len(), page.unreadable.len(), page.last),
        (1, 1, Some(5))
    );
    match store.load_profile(P, 5) {
        Err(StoreError::Unreadable(row)) => assert!(row.is_profile_state()),
        other => panic!("an unreadable row is named: {other:?}"),
    }

    store.set_aside(&page.unreadable).unwrap();
    store.set_aside(&page.unreadable).unwrap();
    let (rows, count) = store.quarantined(P, 10).unwrap();
    assert_eq!(count, 1, "a row met twice is set aside once");
    assert_eq!(rows[0].cf, "profiles");
    assert_eq!(rows[0].display_key, "2/5");
    assert_eq!(
        rows[0].value, b"\x09garbage",
        "the row is kept as it was found"
    );
    assert_eq!(store.quarantined(P + 1, 10).unwrap().1, 0);
}

#[test]
fn an_unreadable_log_head_or_base_leaves_its_profile_out_of_the_log_scans() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_profiles(dir.path(), &[1, 5, 9]);
    damage(
        &store,
        CF_EVENTLOG,
        &log_key(P, 5, LOG_HEAD_SEQ),
        b"\xffnot a head",
    );
    damage(&store, CF_FACTS, &profile_key(P, 9), b"\xffnot facts");

    let page = store.scan_profiles_with_logs(P, None, 10).unwrap();
    let read: Vec<Mpid> = page.items.iter().map(|p| p.profile.mpid).collect();
    assert_eq!(
        read,
        vec![1, 9],
        "the profile whose head is unreadable is left out"
    );
    let bad: Vec<(&str, Option<Mpid>)> = page.unreadable.iter().map(|r| (r.cf, r.mpid())).collect();
    assert_eq!(bad, vec![("eventlog", Some(5))]);
    assert_eq!(page.unreadable[0].display_key, "2/5/head");

    let page = store.scan_profile_logs(P, None, 10).unwrap();
    let read: Vec<Mpid> = page.items.iter().map(|l| l.mpid).collect();
    assert_eq!(read, vec![1]);
    let mut bad: Vec<(&str, Option<Mpid>)> =
        page.unreadable.iter().map(|r| (r.cf, r.mpid())).collect();
    bad.sort();
    assert_eq!(bad, vec![("eventlog", Some(5)), ("facts", Some(9))]);
    assert_eq!(page.last, Some(9));
    assert!(matches!(
        store.load_profile_logs(P, 9),
        Err(StoreError::Unreadable(_))
    ));
}

#[test]
fn a_damaged_outbox_row_is_skipped_and_set_aside_and_the_others_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut b = store.batch();
    for seq in 1..=3 {
        b.put_delta(P, seq, &delta(seq));
    }
    store.commit(b).unwrap();
    damage(&store, CF_OUTBOX, &seq_key(P, 2), b"\x01\xff\xff");
    let read: Vec<u64> = store
        .read_outbox(P, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(read, vec![1, 3]);
    let (rows, _) = store.quarantined(P, 10).unwrap();
    assert_eq!(
        (rows[0].cf.as_str(), rows[0].display_key.as_str()),
        ("outbox", "2/2")
    );
    // A delta of another format is named as such.
    damage(&store, CF_OUTBOX, &seq_key(P, 3), b"\x07later");
    store.read_outbox(P, 0, 10).unwrap();
    let (rows, count) = store.quarantined(P, 10).unwrap();
    assert_eq!(count, 2);
    assert!(rows[1].reason.contains("format 7"), "{:?}", rows[1]);
}

#[test]
fn outbox_and_dead_letter_rows_of_a_store_before_format_bytes_are_framed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let letter = DeadLetter::new(
        "events".into(),
        0,
        12,
        "malformed".into(),
        "not JSON".into(),
        None,
        b"{",
        5,
        DeadLetterLimits::default(),
    );
    {
        let store = Store::open(dir.path(), false).unwrap();
        // As the previous version wrote them: postcard, no format byte.
        let mut b = store.batch();
        b.put(
            CF_OUTBOX,
            seq_key(P, 1),
            postcard::to_stdvec(&delta(1)).unwrap(),
        );
        b.put(
            CF_DEADLETTERS,
            seq_key(P, 1),
            postcard::to_stdvec(&letter).unwrap(),
        );
        b.delete(CF_META, "rows/format");
        store.commit(b).unwrap();
    }
    for _ in 0..2 {
        // Framed once: a second open changes nothing.
        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(store.read_outbox(P, 0, 10).unwrap(), vec![(1, delta(1))]);
        assert_eq!(
            store.read_dead_letters(P, 0, 10).unwrap(),
            vec![(1, letter.clone())]
        );
        assert_eq!(store.quarantined(P, 10).unwrap().1, 0);
    }
}

#[test]
fn column_families_this_version_does_not_know_are_kept_unread() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), false).unwrap());
    let raw = |create: bool| {
        let mut options = rocksdb::Options::default();
        options.create_missing_column_families(create);
        let mut names = rocksdb::DB::list_cf(&options, dir.path()).unwrap();
        if create {
            names.push("from_a_newer_version".into());
        }
        rocksdb::DB::open_cf(&options, dir.path(), names).unwrap()
    };
    {
        let db = raw(true);
        let cf = db.cf_handle("from_a_newer_version").unwrap();
        db.put_cf(cf, b"k", b"v").unwrap();
    }
    let store = Store::open(dir.path(), false).unwrap();
    store
        .put_audience(&AudienceRecord::active(1, "a", serde_json::json!({})))
        .unwrap();
    drop(store);
    let db = raw(false);
    let cf = db.cf_handle("from_a_newer_version").unwrap();
    assert_eq!(db.get_cf(cf, b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn an_unreadable_definition_is_skipped_and_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    for id in [1, 2] {
        let record = AudienceRecord::active(id, "a", serde_json::json!({}));
        store.put_audience(&record).unwrap();
    }
    damage(
        &store,
        CF_AUDIENCES,
        &3u64.to_be_bytes(),
        b"{\"id\": 3, trunc",
    );
    let ids: Vec<u64> = store
        .load_audiences()
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![1, 2]);
    let (rows, count) = store.quarantined(NODE_ROWS, 10).unwrap();
    assert_eq!(count, 1);
    assert_eq!(
        (rows[0].cf.as_str(), rows[0].display_key.as_str()),
        ("audiences", "3")
    );
}

#[test]
fn a_batched_read_gives_each_profile_as_one_read_would_and_names_the_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_profiles(dir.path(), &[1, 5, 9, 12]);
    let mut seen = ProfileState::new(12);
    seen.last_seen_ms = 1_700_000_000_000;
    seen.first_seen_ms = 1_600_000_000_000;
    seen.identities
        .insert("email".to_string(), vec!["a@example.com".to_string()]);
    let mut b = store.batch();
    b.put_profile(P, &seen);
    b.delete(CF_EVENTLOG, log_key(P, 1, LOG_HEAD_SEQ));
    store.commit(b).unwrap();
    damage(&store, CF_DERIVED, &profile_key(P, 5), b"\x01\xff\xff");
    damage(
        &store,
        CF_EVENTLOG,
        &log_key(P, 9, LOG_HEAD_SEQ),
        b"\xffnot a head",
    );

    // Unsorted and repeated, as a poll batch's MPIDs are; 3 was never stored.
    let loaded = store
        .load_profiles_with_heads(P, &[12, 3, 9, 1, 5, 12])
        .unwrap();
    let order: Vec<Mpid> = loaded.iter().map(|(m, _)| *m).collect();
    assert_eq!(order, vec![1, 3, 5, 9, 12], "one entry per MPID, in order");
    for (mpid, loaded) in loaded {
        match (mpid, loaded) {
            (3, None) => {}
            (1 | 12, Some(Ok((state, log)))) => {
                assert_eq!(Some(state), store.load_profile(P, mpid).unwrap());
                let head = store.load_log_head(P, mpid).unwrap();
                assert_eq!(
                    log,
                    head.unwrap_or_default(),
                    "no head reads as an empty log"
                );
            }
            (5, Some(Err(row))) => {
                assert!(row.is_profile_state());
                assert_eq!((row.cf, row.display_key.as_str()), ("derived", "2/5"));
            }
            (9, Some(Err(row))) => {
                assert!(!row.is_profile_state());
                assert_eq!((row.cf, row.display_key.as_str()), ("eventlog", "2/9/head"));
            }
            (mpid, other) => panic!("MPID {mpid}: {other:?}"),
        }
    }
    assert!(store.load_profiles_with_heads(P, &[]).unwrap().is_empty());
}
