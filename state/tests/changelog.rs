//! The changelog of a partition: applying the units its owner wrote, in order, on another
//! store gives the owner's keys byte for byte (the invariant a moved partition rests on).

use audience_state::changelog::follow::Position;
use audience_state::changelog::snapshot::{SnapshotManifest, SnapshotRepository, SNAPSHOT_FORMAT};
use audience_state::changelog::Unit;
use audience_state::model::{Delta, DeltaKind};
use audience_state::profile::ProfileState;
use audience_state::store::{replicated_column_families, Store, WriteBatch};
use proptest::prelude::*;

const PARTITION: u32 = 3;

/// One write a partition's unit of work can make.
#[derive(Debug, Clone)]
enum Action {
    Profile(i64),
    Timer(i64, i64),
    ClearTimer(i64, i64),
    Facts(i64, Vec<u8>),
    Sample(i64),
    WipeProfiles,
    Delta(u64, i64, bool),
    DeadLettersThrough(u64),
    Offset(i64),
    Size(u64, u64),
    Dictionary(u32, String),
    DeleteLog(i64),
}

fn action() -> impl Strategy<Value = Action> {
    let mpid = 1..20i64;
    prop_oneof![
        mpid.clone().prop_map(Action::Profile),
        (0..50i64, mpid.clone()).prop_map(|(d, m)| Action::Timer(d, m)),
        (0..50i64, mpid.clone()).prop_map(|(d, m)| Action::ClearTimer(d, m)),
        (mpid.clone(), proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(m, b)| Action::Facts(m, b)),
        mpid.clone().prop_map(Action::Sample),
        Just(Action::WipeProfiles),
        (1..40u64, mpid.clone(), any::<bool>()).prop_map(|(s, m, a)| Action::Delta(s, m, a)),
        (0..40u64).prop_map(Action::DeadLettersThrough),
        (0..1000i64).prop_map(Action::Offset),
        (1..4u64, 0..100u64).prop_map(|(a, n)| Action::Size(a, n)),
        (0..10u32, "[a-z]{1,6}").prop_map(|(c, n)| Action::Dictionary(c, n)),
        mpid.prop_map(Action::DeleteLog),
    ]
}

fn write(b: &mut WriteBatch<'_>, action: &Action) {
    match action {
        Action::Profile(mpid) => b.put_profile(PARTITION, &ProfileState::new(*mpid)),
        Action::Timer(due, mpid) => b.set_timer(PARTITION, *due, *mpid),
        Action::ClearTimer(due, mpid) => b.clear_timer(PARTITION, *due, *mpid),
        Action::Facts(mpid, bytes) => b.put_facts(PARTITION, *mpid, bytes),
        Action::Sample(mpid) => b.add_to_sample(PARTITION, *mpid),
        Action::WipeProfiles => b.wipe_profile_states(PARTITION),
        Action::Delta(seq, mpid, added) => {
            let delta = Delta {
                audience_id: 1,
                mpid: *mpid,
                kind: if *added {
                    DeltaKind::Added
                } else {
                    DeltaKind::Dropped
                },
                event_time_ms: 1_000,
                processing_time_ms: 2_000 + *seq as i64,
                version: *seq,
            };
            b.put_delta(PARTITION, *seq, &delta);
            b.set_outbox_head(PARTITION, *seq);
            b.record_membership(PARTITION, &delta);
        }
        Action::DeadLettersThrough(seq) => b.delete_dead_letters_through(PARTITION, *seq),
        Action::Offset(offset) => b.set_next_offset("events", PARTITION, *offset),
        Action::Size(audience, size) => b.set_audience_size(*audience, PARTITION, *size),
        Action::Dictionary(code, name) => b.put_dictionary(PARTITION, &[(*code, name.clone())]),
        Action::DeleteLog(mpid) => b.delete_log(PARTITION, *mpid),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_replica_applying_the_changelog_holds_the_owners_state_byte_for_byte(
        units in proptest::collection::vec(proptest::collection::vec(action(), 1..12), 1..20)
    ) {
        let (owner_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let owner = Store::open(owner_dir.path(), false).unwrap();
        let replica = Store::open(replica_dir.path(), false).unwrap();
        for (i, actions) in units.iter().enumerate() {
            let mut b = owner.logged_batch();
            for a in actions {
                write(&mut b, a);
            }
            let unit = Unit {
                partition: PARTITION,
                epoch: 1,
                seq: i as u64 + 1,
                ops: b.ops().expect("a logged batch records its operations").to_vec(),
            };
            owner.commit(b).unwrap();
            // Through the bytes the changelog topic carries.
            let read = Unit::decode(&unit.encode()).unwrap();
            replica.apply_unit(&read).unwrap();
        }
        for cf in replicated_column_families() {
            prop_assert_eq!(owner.entries(cf).unwrap(), replica.entries(cf).unwrap(), "{}", cf);
        }
    }
}

/// Commits each list of actions as one unit of [`PARTITION`] (the store logs partition writes
/// and holds a claim on it).
fn commit_units(store: &Store, units: &[Vec<Action>]) {
    for actions in units {
        let mut b = store.partition_batch();
        for a in actions {
            write(&mut b, a);
        }
        store.commit_partition(b, PARTITION).unwrap();
    }
}

/// Writes of another partition than [`PARTITION`], in every kind of key it has.
fn write_other_partition(store: &Store) {
    const OTHER: u32 = PARTITION + 1;
    let mut b = store.batch();
    b.put_profile(OTHER, &ProfileState::new(5));
    b.set_timer(OTHER, 9, 5);
    b.set_next_offset("events", OTHER, 5);
    b.set_audience_size(1, OTHER, 3);
    b.set_outbox_head(OTHER, 2);
    b.add_to_sample(OTHER, 5);
    b.put_dictionary(OTHER, &[(1, "x".into())]);
    store.commit(b).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn wiping_a_partition_deletes_every_key_of_its_units_and_nothing_else(
        units in proptest::collection::vec(proptest::collection::vec(action(), 1..12), 1..10)
    ) {
        let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::open(dir.path(), false).unwrap();
        let others_only = Store::open(other_dir.path(), false).unwrap();
        write_other_partition(&store);
        write_other_partition(&others_only);
        store.log_partition_writes();
        store.set_partition_epoch(PARTITION, 1);
        commit_units(&store, &units);
        let position = Position { next_offset: 4, seq: 3, epoch: 2, own_epoch: 2 };
        store.save_changelog_follow_position(PARTITION, &position).unwrap();

        store.wipe_partition(PARTITION).unwrap();
        for cf in replicated_column_families() {
            prop_assert_eq!(store.entries(cf).unwrap(), others_only.entries(cf).unwrap(), "{}", cf);
        }
        prop_assert_eq!(store.changelog_position(PARTITION).unwrap(), (0, 0));
        prop_assert!(store.pending_units(PARTITION, 10).unwrap().is_empty());
        prop_assert_eq!(store.changelog_follow_position(PARTITION).unwrap(), Position::default());
    }
}

#[test]
fn a_unit_read_from_the_topic_is_applied_with_the_position_past_it() {
    let (owner_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let owner = Store::open(owner_dir.path(), false).unwrap();
    let replica = Store::open(replica_dir.path(), false).unwrap();
    owner.log_partition_writes();
    owner.set_partition_epoch(PARTITION, 0);
    let mut b = owner.partition_batch();
    b.set_next_offset("events", PARTITION, 41);
    owner.commit_partition(b, PARTITION).unwrap();
    let (_, bytes) = owner.pending_units(PARTITION, 1).unwrap().remove(0);
    let position = Position {
        next_offset: 2,
        seq: 1,
        epoch: 1,
        own_epoch: 0,
    };
    replica
        .apply_unit_at(&Unit::decode(&bytes).unwrap(), &position)
        .unwrap();
    assert_eq!(replica.next_offset("events", PARTITION).unwrap(), Some(41));
    assert_eq!(replica.changelog_position(PARTITION).unwrap().0, 1);
    assert_eq!(
        replica.changelog_follow_position(PARTITION).unwrap(),
        position
    );
}

#[test]
fn with_the_changelog_on_only_a_claimed_partition_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.log_partition_writes();
    let write = || {
        let mut b = store.partition_batch();
        b.set_next_offset("events", PARTITION, 1);
        store.commit_partition(b, PARTITION)
    };
    // Never claimed (a publisher of a partition another node owns, say): no unit.
    let refused = write().unwrap_err();
    assert!(refused.to_string().contains("not this node's"), "{refused}");
    store.set_partition_epoch(PARTITION, 3);
    write().unwrap();
    // Revoked: refused again, nothing committed meanwhile.
    store.stop_writing(PARTITION);
    assert!(write().is_err());
    assert_eq!(store.changelog_position(PARTITION).unwrap().0, 1);
    assert_eq!(store.next_offset("events", PARTITION).unwrap(), Some(1));
}

#[test]
fn an_unlogged_batch_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut b = store.batch();
    b.set_next_offset("events", PARTITION, 7);
    assert!(b.ops().is_none());
}

#[test]
fn units_wait_for_the_topic_in_order_and_a_new_owner_continues_the_numbering() {
    let (owner_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let owner = Store::open(owner_dir.path(), false).unwrap();
    let replica = Store::open(replica_dir.path(), false).unwrap();
    let commit = |store: &Store, offset: i64| {
        let mut b = store.logged_batch();
        b.set_next_offset("events", PARTITION, offset);
        b.put_profile(PARTITION, &ProfileState::new(offset));
        store.commit_unit(b, PARTITION, 1).unwrap()
    };
    assert_eq!((commit(&owner, 10), commit(&owner, 11)), (1, 2));
    // Another partition's units are numbered apart.
    let mut other = owner.logged_batch();
    other.set_next_offset("events", PARTITION + 1, 5);
    assert_eq!(owner.commit_unit(other, PARTITION + 1, 1).unwrap(), 1);

    let pending = owner.pending_units(PARTITION, 100).unwrap();
    assert_eq!(
        pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2]
    );
    for (_, bytes) in &pending {
        replica.apply_unit(&Unit::decode(bytes).unwrap()).unwrap();
    }
    owner.acknowledge_units(PARTITION, &[(1, 0)], &[]).unwrap();
    assert_eq!(owner.changelog_position(PARTITION).unwrap(), (2, 1));
    assert_eq!(
        owner.pending_units(PARTITION, 100).unwrap().len(),
        1,
        "unit 2 still waits"
    );
    owner.acknowledge_units(PARTITION, &[(2, 1)], &[]).unwrap();
    assert!(owner.pending_units(PARTITION, 100).unwrap().is_empty());
    assert_eq!(owner.pending_units(PARTITION + 1, 100).unwrap().len(), 1);

    // What waits for the topic is the owner's own; the rest is the replica's too.
    for cf in replicated_column_families() {
        let owners: Vec<_> = owner
            .entries(cf)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !String::from_utf8_lossy(k).contains(&format!("/{}", PARTITION + 1)))
            .collect();
        assert_eq!(owners, replica.entries(cf).unwrap(), "{cf}");
    }
    // The replica, taking the partition over, continues the owner's numbering.
    assert_eq!(commit(&replica, 12), 3);
}

#[test]
fn with_partition_writes_logged_even_maintenance_writes_are_units() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let mut b = store.partition_batch();
    b.put_profile(PARTITION, &ProfileState::new(1));
    store.commit_partition(b, PARTITION).unwrap();
    assert_eq!(
        store.changelog_position(PARTITION).unwrap(),
        (0, 0),
        "not logged yet"
    );

    store.log_partition_writes();
    store.set_partition_epoch(PARTITION, 7);
    let mut b = store.partition_batch();
    b.put_profile(PARTITION, &ProfileState::new(2));
    store.commit_partition(b, PARTITION).unwrap();
    store.set_published("deltas", PARTITION, 3).unwrap();
    store.prune_outbox(PARTITION, 2).unwrap();
    store.index_sample(PARTITION).unwrap();
    let units: Vec<Unit> = store
        .pending_units(PARTITION, 100)
        .unwrap()
        .iter()
        .map(|(_, bytes)| Unit::decode(bytes).unwrap())
        .collect();
    assert_eq!(
        units.iter().map(|u| u.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(units
        .iter()
        .all(|u| u.epoch == 7 && u.partition == PARTITION));
}

/// Writes the partition's delta `seq` (an add of user `seq`) and moves its outbox head there.
fn write_delta(store: &Store, seq: u64) {
    let delta = Delta {
        audience_id: 1,
        mpid: seq as i64,
        kind: DeltaKind::Added,
        event_time_ms: 1_000,
        processing_time_ms: 2_000,
        version: 1,
    };
    let mut b = store.partition_batch();
    b.put_delta(PARTITION, seq, &delta);
    b.set_outbox_head(PARTITION, seq);
    store.commit_partition(b, PARTITION).unwrap();
}

#[test]
fn deltas_are_readable_only_once_the_changelog_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let write = |seq: u64| write_delta(&store, seq);
    // Before the changelog: readable as soon as written.
    write(1);
    assert_eq!(store.readable_outbox_head(PARTITION).unwrap(), 1);

    store.log_partition_writes();
    store.set_partition_epoch(PARTITION, 0);
    write(2);
    write(3);
    assert_eq!(store.outbox_head(PARTITION).unwrap(), 3);
    assert_eq!(
        store.readable_outbox_head(PARTITION).unwrap(),
        1,
        "units not on the topic yet: their deltas wait"
    );
    let readable: Vec<u64> = store
        .read_readable_outbox(PARTITION, 0, 10)
        .unwrap()
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(readable, vec![1]);
    assert!(store.acknowledge_units(PARTITION, &[(1, 0)], &[]).unwrap());
    assert_eq!(store.readable_outbox_head(PARTITION).unwrap(), 2);
    assert!(store.acknowledge_units(PARTITION, &[(2, 1)], &[]).unwrap());
    assert_eq!(store.readable_outbox_head(PARTITION).unwrap(), 3);
    assert_eq!(
        store.read_readable_outbox(PARTITION, 0, 10).unwrap().len(),
        3
    );
}

#[test]
fn units_landing_after_another_nodes_claim_are_refused_and_their_deltas_never_leave() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.log_partition_writes();
    let write = |seq: u64| write_delta(&store, seq);
    // This node's claim of epoch 2 is at offset 4: its units go to 5, 6...
    let claimed = Position {
        next_offset: 5,
        seq: 0,
        epoch: 2,
        own_epoch: 2,
    };
    store.mark_restored(PARTITION, &claimed).unwrap();
    store.set_partition_epoch(PARTITION, 2);
    write(1);
    write(2);
    assert!(store.acknowledge_units(PARTITION, &[(1, 5)], &[]).unwrap());
    assert_eq!(store.readable_outbox_head(PARTITION).unwrap(), 1);
    // Offset 6 is another node's claim: unit 2 landed after it, refused by every reader.
    assert!(!store.acknowledge_units(PARTITION, &[(2, 7)], &[]).unwrap());
    assert_eq!(
        store.readable_outbox_head(PARTITION).unwrap(),
        1,
        "the refused unit's delta never leaves"
    );
    write(3);
    assert!(
        !store.acknowledge_units(PARTITION, &[(3, 8)], &[]).unwrap(),
        "and nothing after it"
    );
    assert_eq!(store.readable_outbox_head(PARTITION).unwrap(), 1);
    assert_eq!(
        store.changelog_follow_position(PARTITION).unwrap(),
        Position {
            next_offset: 6,
            seq: 1,
            ..claimed
        },
        "the position stays at the last accepted unit: a restore reads on from there"
    );
    assert!(store.pending_units(PARTITION, 10).unwrap().is_empty());
}

#[test]
fn records_between_the_owners_units_that_keep_its_reign_do_not_stop_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    store.log_partition_writes();
    let claimed = Position {
        next_offset: 5,
        seq: 0,
        epoch: 2,
        own_epoch: 2,
    };
    store.mark_restored(PARTITION, &claimed).unwrap();
    store.set_partition_epoch(PARTITION, 2);
    let write = |seq: u64| {
        let mut b = store.partition_batch();
        b.set_outbox_head(PARTITION, seq);
        store.commit_partition(b, PARTITION).unwrap();
    };
    write(1);
    write(2);
    // Offsets 6 and 7 hold a zombie's late unit and a stale claim: read, found benign.
    assert!(store
        .acknowledge_units(PARTITION, &[(1, 5), (2, 8)], &[(6, 8)])
        .unwrap());
    assert_eq!(store.readable_outbox_head(PARTITION).unwrap(), 2);
    assert_eq!(
        store
            .changelog_follow_position(PARTITION)
            .unwrap()
            .next_offset,
        9
    );
}

/// Acknowledges every unit of the partition waiting on `store`, as if the topic held them
/// right after each other from `first_offset`; returns them as the topic carries them.
fn acknowledge_all(store: &Store, first_offset: i64) -> Vec<Unit> {
    let waiting = store.pending_units(PARTITION, 10_000).unwrap();
    let position = store.changelog_follow_position(PARTITION).unwrap();
    assert!(position.next_offset <= first_offset);
    let delivered: Vec<(u64, i64)> = waiting
        .iter()
        .enumerate()
        .map(|(i, (seq, _))| (*seq, first_offset + i as i64))
        .collect();
    let benign = [(position.next_offset, first_offset)];
    let benign = if position.next_offset < first_offset {
        &benign[..]
    } else {
        &[]
    };
    assert!(store
        .acknowledge_units(PARTITION, &delivered, benign)
        .unwrap());
    waiting
        .iter()
        .map(|(_, bytes)| Unit::decode(bytes).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_snapshot_and_the_units_after_it_give_the_owners_state_byte_for_byte(
        before in proptest::collection::vec(proptest::collection::vec(action(), 1..12), 1..10),
        after in proptest::collection::vec(proptest::collection::vec(action(), 1..12), 0..8),
        stale in proptest::collection::vec(action(), 0..8),
    ) {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let owner = Store::open(dirs[0].path(), false).unwrap();
        let replica = Store::open(dirs[1].path(), false).unwrap();
        let repository = SnapshotRepository::new(dirs[2].path());
        write_other_partition(&owner);
        write_other_partition(&replica);
        // What the replica held of the partition before (an old ownership): it goes.
        let mut b = replica.batch();
        for a in &stale {
            write(&mut b, a);
        }
        replica.commit(b).unwrap();

        owner.log_partition_writes();
        owner.set_partition_epoch(PARTITION, 0);
        commit_units(&owner, &before);
        acknowledge_all(&owner, 3);
        let staging = repository.staging(PARTITION).unwrap();
        let contents = owner.write_partition_snapshot(PARTITION, &staging).unwrap().unwrap();
        prop_assert_eq!(contents.position.seq, before.len() as u64);
        prop_assert_eq!(contents.position.next_offset, 3 + before.len() as i64);
        let manifest = SnapshotManifest {
            format: SNAPSHOT_FORMAT,
            partition: PARTITION,
            position: contents.position,
            node: "owner".into(),
            created_ms: 0,
            files: contents.files,
        };
        repository.publish(&staging, &manifest).unwrap();

        commit_units(&owner, &after);
        let tail = acknowledge_all(&owner, manifest.position.next_offset);

        let stored = repository.latest(PARTITION).unwrap().unwrap();
        replica
            .load_partition_snapshot(
                PARTITION,
                &stored.dir,
                &stored.manifest.position,
                &stored.manifest.files,
                stored.manifest.format,
            )
            .unwrap();
        prop_assert_eq!(replica.changelog_follow_position(PARTITION).unwrap(), manifest.position);
        for file in &stored.manifest.files {
            prop_assert!(stored.dir.join(&file.name).exists(), "{} stays for other nodes", file.name);
        }
        // The tail is applied as a restore applies it: runs of units, one write each.
        let mut position = manifest.position;
        for run in tail.chunks(2) {
            position.next_offset += run.len() as i64;
            position.seq = run.last().map_or(position.seq, |unit| unit.seq);
            replica.apply_units_at(PARTITION, run, &position).unwrap();
        }
        for cf in replicated_column_families() {
            prop_assert_eq!(owner.entries(cf).unwrap(), replica.entries(cf).unwrap(), "{}", cf);
        }
        prop_assert_eq!(
            replica.changelog_position(PARTITION).unwrap().0,
            owner.changelog_position(PARTITION).unwrap().0
        );
    }
}

#[test]
fn no_snapshot_of_units_the_topic_does_not_hold_as_the_owners() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), false).unwrap();
    let staging = tempfile::tempdir().unwrap();
    store.log_partition_writes();
    store.set_partition_epoch(PARTITION, 0);
    assert_eq!(
        store
            .write_partition_snapshot(PARTITION, staging.path())
            .unwrap(),
        None,
        "no unit yet"
    );
    write_delta(&store, 1);
    assert_eq!(
        store
            .write_partition_snapshot(PARTITION, staging.path())
            .unwrap(),
        None,
        "a unit waits for the topic"
    );
    acknowledge_all(&store, 0);
    assert!(store
        .write_partition_snapshot(PARTITION, staging.path())
        .unwrap()
        .is_some());
    // A unit the topic holds after another writer's record: not this node's reign.
    write_delta(&store, 2);
    assert!(!store.acknowledge_units(PARTITION, &[(2, 9)], &[]).unwrap());
    assert_eq!(
        store
            .write_partition_snapshot(PARTITION, staging.path())
            .unwrap(),
        None,
        "a refused unit is in the state"
    );
}

#[test]
fn a_snapshot_whose_file_does_not_match_its_manifest_is_refused_before_anything_is_wiped() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let owner = Store::open(dirs[0].path(), false).unwrap();
    let replica = Store::open(dirs[1].path(), false).unwrap();
    owner.log_partition_writes();
    owner.set_partition_epoch(PARTITION, 0);
    write_delta(&owner, 1);
    acknowledge_all(&owner, 0);
    let contents = owner
        .write_partition_snapshot(PARTITION, dirs[2].path())
        .unwrap()
        .unwrap();
    write_delta(&replica, 7);
    let outbox = dirs[2].path().join("outbox.sst");
    let mut bytes = std::fs::read(&outbox).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&outbox, bytes).unwrap();
    let err = replica
        .load_partition_snapshot(
            PARTITION,
            dirs[2].path(),
            &contents.position,
            &contents.files,
            SNAPSHOT_FORMAT,
        )
        .unwrap_err();
    assert!(err.to_string().contains("the manifest says"), "{err}");
    assert_eq!(
        replica.outbox_head(PARTITION).unwrap(),
        7,
        "nothing was wiped"
    );
}
