//! Snapshots of a partition: its replicated keys as RocksDB SST files, one per column family,
//! with the changelog [`Position`] they stand at, so that a node taking the partition over
//! ingests the files and reads only the changelog past them (and the log before them can be
//! trimmed).
//!
//! The repository is a directory every node reaches (a shared volume in production; one
//! directory on a test machine): `partition-{p}/{next_offset:020}/` holds the files and
//! `manifest.json`. A snapshot is written into a staging directory and renamed into place once
//! every file and its manifest are synced, so a reader sees a snapshot whole or not at all;
//! two nodes snapshotting the same position write the same keys, and the second rename loses.
//!
//! Invariant: a snapshot's keys are exactly the state the changelog's units up to
//! `position.seq` produce (the writer checks it in one consistent view of its database; see
//! [`crate::store::Store::write_partition_snapshot`]).

use super::follow::Position;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// Version of the manifest and of the file layout. 2: the outbox's and the dead letters'
/// rows open with their format byte ([`crate::row_format`]).
pub const SNAPSHOT_FORMAT: u32 = 2;

/// Snapshots whose outbox and dead-letter rows have no format byte: still loaded, the rows
/// framed as they come in.
pub const LEGACY_SNAPSHOT_FORMAT: u32 = 1;

const MANIFEST: &str = "manifest.json";
const STAGING_PREFIX: &str = ".staging-";

/// One column family's keys of the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub column_family: String,
    /// The file's name in the snapshot's directory.
    pub name: String,
    pub entries: u64,
    pub bytes: u64,
}

/// What a snapshot holds, written last into its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    pub partition: u32,
    /// Where the snapshot stands in the changelog topic: the next offset to read and the last
    /// unit it holds. `own_epoch` is always 0: a snapshot belongs to no writer.
    pub position: Position,
    /// The node that wrote it.
    pub node: String,
    pub created_ms: i64,
    /// Column families with no key of the partition have no file.
    pub files: Vec<SnapshotFile>,
}

impl SnapshotManifest {
    pub fn profiles_hint(&self) -> u64 {
        self.files
            .iter()
            .find(|f| f.column_family == "profiles")
            .map_or(0, |f| f.entries)
    }
}

/// A published snapshot: its directory and manifest.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
}

/// The snapshots of every partition under one directory.
#[derive(Debug, Clone)]
pub struct SnapshotRepository {
    root: PathBuf,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl SnapshotRepository {
    pub fn new(root: impl Into<PathBuf>) -> SnapshotRepository {
        SnapshotRepository { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn partition_dir(&self, partition: u32) -> PathBuf {
        self.root.join(format!("partition-{partition}"))
    }

    /// A new, empty directory to write a snapshot of the partition into, then
    /// [`SnapshotRepository::publish`] it.
    pub fn staging(&self, partition: u32) -> io::Result<PathBuf> {
        let parent = self.partition_dir(partition);
        std::fs::create_dir_all(&parent)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = parent.join(format!("{STAGING_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Writes the manifest into the staging directory, syncs everything in it and renames it
    /// into place. When the same position was published already (by another node, or before a
    /// crash) the staging directory goes and the published one stays.
    pub fn publish(&self, staging: &Path, manifest: &SnapshotManifest) -> io::Result<PathBuf> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| invalid(e.to_string()))?;
        std::fs::write(staging.join(MANIFEST), bytes)?;
        for entry in std::fs::read_dir(staging)? {
            std::fs::File::open(entry?.path())?.sync_all()?;
        }
        std::fs::File::open(staging)?.sync_all()?;
        let parent = self.partition_dir(manifest.partition);
        let target = parent.join(format!("{:020}", manifest.position.next_offset));
        if target.exists() {
            std::fs::remove_dir_all(staging)?;
            return Ok(target);
        }
        match std::fs::rename(staging, &target) {
            Ok(()) => {}
            // Another node's rename came first, with the same keys.
            Err(_) if target.exists() => std::fs::remove_dir_all(staging)?,
            Err(e) => return Err(e),
        }
        std::fs::File::open(&parent)?.sync_all()?;
        Ok(target)
    }

    /// The partition's published snapshots, oldest first. A directory whose manifest is
    /// unreadable or names another partition is an error: the repository is not ours to guess.
    pub fn list(&self, partition: u32) -> io::Result<Vec<StoredSnapshot>> {
        let parent = self.partition_dir(partition);
        let entries = match std::fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let dir = entry?.path();
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || name.parse::<i64>().is_err() {
                continue;
            }
            let manifest = read_manifest(&dir)?;
            let known = [SNAPSHOT_FORMAT, LEGACY_SNAPSHOT_FORMAT].contains(&manifest.format);
            if manifest.partition != partition || !known {
                return Err(invalid(format!(
                    "snapshot {} is of partition {} in format {}, not partition {partition} in \
                     format {SNAPSHOT_FORMAT}",
                    dir.display(),
                    manifest.partition,
                    manifest.format
                )));
            }
            out.push(StoredSnapshot { dir, manifest });
        }
        out.sort_by_key(|s| s.manifest.position.next_offset);
        Ok(out)
    }

    /// The newest published snapshot of the partition.
    pub fn latest(&self, partition: u32) -> io::Result<Option<StoredSnapshot>> {
        Ok(self.list(partition)?.pop())
    }

    /// Deletes all but the newest `keep` snapshots of the partition (at least one stays), and
    /// staging directories an hour old (a writer that died half way). Returns the oldest
    /// snapshot kept: the changelog before its position is no longer needed.
    pub fn prune(&self, partition: u32, keep: usize) -> io::Result<Option<StoredSnapshot>> {
        let mut snapshots = self.list(partition)?;
        let excess = snapshots.len().saturating_sub(keep.max(1));
        for old in snapshots.drain(..excess) {
            std::fs::remove_dir_all(&old.dir)?;
        }
        if let Ok(entries) = std::fs::read_dir(self.partition_dir(partition)) {
            for entry in entries.flatten() {
                let stale = entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(STAGING_PREFIX)
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(snapshots.into_iter().next())
    }
}

/// A snapshot this many units past a node's position is loaded rather than the units read:
/// reading a unit costs about as much as ingesting a few hundred keys.
pub const SNAPSHOT_WORTH_UNITS: u64 = 1_000;

/// Where a restore starts reading the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStart {
    /// From this node's own position: it holds the state up to there.
    Local,
    /// From the snapshot's position, once its files replaced this node's state.
    Snapshot,
}

/// Where a restore starts, given this node's position, the first offset the changelog still
/// holds (`log_start`: the log may have been trimmed below the snapshots kept) and the newest
/// snapshot. A node with no state of the partition, one the log no longer reaches, or one
/// [`SNAPSHOT_WORTH_UNITS`] behind the snapshot loads it; a node near the end reads the tail.
/// An error when no start reaches the log: the units between are gone.
pub fn restore_start(
    local: &Position,
    log_start: i64,
    snapshot: Option<&SnapshotManifest>,
) -> Result<RestoreStart, String> {
    let trimmed = log_start > local.next_offset;
    let ahead = snapshot
        .filter(|s| s.position.next_offset > local.next_offset && s.position.seq > local.seq);
    match ahead {
        Some(s)
            if trimmed || local.seq == 0 || s.position.seq - local.seq >= SNAPSHOT_WORTH_UNITS =>
        {
            if s.position.next_offset < log_start {
                return Err(format!(
                    "the changelog starts at offset {log_start}, past the newest snapshot's \
                     position {}: the units between are gone",
                    s.position.next_offset
                ));
            }
            Ok(RestoreStart::Snapshot)
        }
        _ if trimmed => Err(format!(
            "the changelog starts at offset {log_start}, past this node's position {}, and no \
             snapshot reaches it",
            local.next_offset
        )),
        _ => Ok(RestoreStart::Local),
    }
}

fn read_manifest(dir: &Path) -> io::Result<SnapshotManifest> {
    let bytes = std::fs::read(dir.join(MANIFEST))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "snapshot manifest in {} does not parse: {e}",
            dir.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(partition: u32, next_offset: i64) -> SnapshotManifest {
        SnapshotManifest {
            format: SNAPSHOT_FORMAT,
            partition,
            position: Position {
                next_offset,
                seq: next_offset as u64,
                epoch: 1,
                own_epoch: 0,
            },
            node: "a".into(),
            created_ms: 0,
            files: vec![],
        }
    }

    fn at(next_offset: i64, seq: u64) -> Position {
        Position {
            next_offset,
            seq,
            epoch: 1,
            own_epoch: 0,
        }
    }

    #[test]
    fn a_restore_loads_the_snapshot_only_when_it_saves_reading_or_the_log_needs_it() {
        let snapshot = SnapshotManifest {
            position: at(5_000, 4_000),
            ..manifest(0, 5_000)
        };
        let fresh = Position::default();
        assert_eq!(restore_start(&fresh, 0, None), Ok(RestoreStart::Local));
        assert_eq!(
            restore_start(&fresh, 0, Some(&snapshot)),
            Ok(RestoreStart::Snapshot)
        );
        // A former owner near the end reads the tail; far behind, it loads the snapshot.
        assert_eq!(
            restore_start(&at(4_900, 3_950), 0, Some(&snapshot)),
            Ok(RestoreStart::Local)
        );
        assert_eq!(
            restore_start(&at(1_000, 900), 0, Some(&snapshot)),
            Ok(RestoreStart::Snapshot)
        );
        // Ahead of the snapshot: never back to it.
        assert_eq!(
            restore_start(&at(6_000, 4_500), 0, Some(&snapshot)),
            Ok(RestoreStart::Local)
        );
        // The log was trimmed past this node's position: the snapshot, however close.
        assert_eq!(
            restore_start(&at(4_900, 3_950), 4_950, Some(&snapshot)),
            Ok(RestoreStart::Snapshot)
        );
        let gone = restore_start(&at(10, 9), 20, None).unwrap_err();
        assert!(gone.contains("no snapshot reaches it"), "{gone}");
        let gone = restore_start(&fresh, 6_000, Some(&snapshot)).unwrap_err();
        assert!(gone.contains("units between are gone"), "{gone}");
    }

    #[test]
    fn published_snapshots_list_oldest_first_and_prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SnapshotRepository::new(dir.path());
        assert!(repo.latest(2).unwrap().is_none());
        for offset in [30, 10, 20] {
            let staging = repo.staging(2).unwrap();
            std::fs::write(staging.join("profiles.sst"), b"x").unwrap();
            repo.publish(&staging, &manifest(2, offset)).unwrap();
        }
        let offsets = |repo: &SnapshotRepository| -> Vec<i64> {
            let list = repo.list(2).unwrap();
            list.iter()
                .map(|s| s.manifest.position.next_offset)
                .collect()
        };
        assert_eq!(offsets(&repo), vec![10, 20, 30]);
        assert_eq!(repo.latest(2).unwrap().unwrap().manifest, manifest(2, 30));
        let oldest_kept = repo.prune(2, 2).unwrap().unwrap();
        assert_eq!(oldest_kept.manifest.position.next_offset, 20);
        assert_eq!(offsets(&repo), vec![20, 30]);
        assert!(repo.list(3).unwrap().is_empty());
    }

    #[test]
    fn a_position_published_twice_keeps_the_first_and_drops_the_staging() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SnapshotRepository::new(dir.path());
        let first = repo.staging(0).unwrap();
        std::fs::write(first.join("a.sst"), b"first").unwrap();
        let published = repo.publish(&first, &manifest(0, 5)).unwrap();
        let second = repo.staging(0).unwrap();
        std::fs::write(second.join("a.sst"), b"second").unwrap();
        assert_eq!(repo.publish(&second, &manifest(0, 5)).unwrap(), published);
        assert!(!second.exists());
        assert_eq!(std::fs::read(published.join("a.sst")).unwrap(), b"first");
    }

    #[test]
    fn a_manifest_of_another_partition_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SnapshotRepository::new(dir.path());
        let staging = repo.staging(1).unwrap();
        let target = repo.publish(&staging, &manifest(1, 7)).unwrap();
        std::fs::create_dir_all(dir.path().join("partition-4")).unwrap();
        std::fs::rename(&target, dir.path().join("partition-4").join("7")).unwrap();
        let err = repo.list(4).unwrap_err();
        assert!(err.to_string().contains("of partition 1"), "{err}");
    }
}
