//! A partition's state as SST files and back (see [`crate::changelog::snapshot`]): written from
//! one consistent view of the database on the node that owns the partition, ingested by a node
//! that takes it over, which then reads only the changelog past the snapshot's position.

use super::db::*;
use super::keys::{meta_key_partition, seq_key};
use crate::changelog::follow::Position;
use crate::changelog::snapshot::{SnapshotFile, LEGACY_SNAPSHOT_FORMAT};
use std::path::Path;

/// What [`Store::write_partition_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContents {
    pub position: Position,
    pub files: Vec<SnapshotFile>,
}

fn snapshot_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Snapshot(format!("{}: {e}", path.display()))
}

impl Store {
    /// Writes the partition's replicated keys into `dir`, one SST file per column family that
    /// has any, read from one consistent view of the database, and returns the changelog
    /// position that view stands at.
    ///
    /// `Ok(None)` when the view is not a state of the changelog: units still wait for the topic,
    /// or this node committed units the topic did not accept as its own (a zombie's); or the
    /// partition has no unit yet.
    pub fn write_partition_snapshot(
        &self,
        partition: Partition,
        dir: &Path,
    ) -> StoreResult<Option<SnapshotContents>> {
        let view = self.db.snapshot();
        let changelog = self.cf(CF_CHANGELOG);
        let mut waiting = view.iterator_cf(
            changelog,
            rocksdb::IteratorMode::From(&seq_key(partition, 0), rocksdb::Direction::Forward),
        );
        if let Some(item) = waiting.next() {
            let (k, _) = item?;
            if k.len() == 12 && k[..4] == partition.to_be_bytes() {
                return Ok(None);
            }
        }
        drop(waiting);
        let position = match view.get_cf(changelog, super::changelog::position_key(partition))? {
            Some(v) => Position::decode(&v).map_err(|reason| StoreError::Corrupt {
                cf: CF_CHANGELOG,
                key: format!("{partition}/pos"),
                reason,
            })?,
            None => return Ok(None),
        };
        let committed = view
            .get_cf(
                self.cf(CF_META),
                super::changelog::next_seq_key(partition).as_bytes(),
            )?
            .map_or(0, |v| be_u64(&v));
        if position.seq == 0 || committed != position.seq {
            return Ok(None);
        }
        let (from, to) = super::changelog::partition_range(partition);
        let mut files = Vec::new();
        for cf in REPLICATED {
            let path = dir.join(format!("{cf}.sst"));
            let options = rocksdb::Options::default();
            let mut writer = rocksdb::SstFileWriter::create(&options);
            writer.open(&path)?;
            let mut entries = 0u64;
            if *cf == CF_META {
                // Meta keys are text, not partition-prefixed: every key naming the partition.
                for item in view.iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start) {
                    let (k, v) = item?;
                    if meta_key_partition(&k) == Some(partition) {
                        writer.put(&k, &v)?;
                        entries += 1;
                    }
                }
            } else if *cf != CF_AUDIENCES {
                let mut options = scan_options();
                options.set_iterate_upper_bound(to.to_vec());
                let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
                for item in view.iterator_cf_opt(self.cf(cf), options, mode) {
                    let (k, v) = item?;
                    writer.put(&k, &v)?;
                    entries += 1;
                }
            }
            if entries == 0 {
                // An SST file holds at least one key.
                drop(writer);
                let _ = std::fs::remove_file(&path);
                continue;
            }
            writer.finish()?;
            let bytes = std::fs::metadata(&path)
                .map_err(|e| snapshot_error(&path, e))?
                .len();
            files.push(SnapshotFile {
                column_family: cf.to_string(),
                name: format!("{cf}.sst"),
                entries,
                bytes,
            });
        }
        Ok(Some(SnapshotContents {
            position: Position {
                own_epoch: 0,
                ..position
            },
            files,
        }))
    }

    /// Replaces this node's state of the partition by a snapshot's (files in `dir`, written in
    /// snapshot `format`), and its changelog position by the snapshot's: the changelog is
    /// then read from there. The partition is not writable afterwards (it needs a claim).
    pub fn load_partition_snapshot(
        &self,
        partition: Partition,
        dir: &Path,
        position: &Position,
        files: &[SnapshotFile],
        format: u32,
    ) -> StoreResult<()> {
        let mut ingest = Vec::new();
        for file in files {
            let cf = REPLICATED
                .iter()
                .find(|cf| **cf == file.column_family && **cf != CF_AUDIENCES)
                .ok_or_else(|| {
                    StoreError::Snapshot(format!(
                        "column family {:?} is not partition state",
                        file.column_family
                    ))
                })?;
            let path = dir.join(&file.name);
            let bytes = std::fs::metadata(&path)
                .map_err(|e| snapshot_error(&path, e))?
                .len();
            if bytes != file.bytes {
                return Err(snapshot_error(
                    &path,
                    format!("{bytes} bytes, the manifest says {}", file.bytes),
                ));
            }
            ingest.push((*cf, path));
        }
        // The files are linked (copied across file systems) next to the database and moved in
        // from there: the repository's files stay for other nodes, and no byte is copied when
        // both are on one file system (SST files are never modified in place).
        let local = self.db.path().join(format!("ingest-{partition}"));
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).map_err(|e| snapshot_error(&local, e))?;
        let mut linked = Vec::new();
        for (cf, path) in ingest {
            let target = local.join(path.file_name().unwrap_or_default());
            if std::fs::hard_link(&path, &target).is_err() {
                std::fs::copy(&path, &target).map_err(|e| snapshot_error(&path, e))?;
            }
            linked.push((cf, target));
        }
        self.wipe_partition(partition)?;
        let mut options = rocksdb::IngestExternalFileOptions::default();
        options.set_move_files(true);
        let ingested = linked.into_iter().try_for_each(|(cf, path)| {
            self.db
                .ingest_external_file_cf_opts(self.cf(cf), &options, vec![path])
        });
        let _ = std::fs::remove_dir_all(&local);
        ingested?;
        if format == LEGACY_SNAPSHOT_FORMAT {
            self.frame_legacy_rows_of(partition)?;
        }
        let committed = self
            .meta_u64(&super::changelog::next_seq_key(partition))?
            .unwrap_or(0);
        if committed != position.seq {
            return Err(StoreError::Snapshot(format!(
                "{}: holds unit {committed} of partition {partition}, its manifest says {}",
                dir.display(),
                position.seq
            )));
        }
        let position = Position {
            own_epoch: 0,
            ..*position
        };
        self.save_changelog_follow_position(partition, &position)
    }
}
