//! The RocksDB layout of the engine. One database per node, column families by kind of record,
//! every per-partition key prefixed by the partition so a partition's data is one key range.
//!
//! | column family | key                                   | value                          |
//! |---------------|---------------------------------------|--------------------------------|
//! | `profiles`    | partition, mpid                       | [`ProfileState`](crate::profile::ProfileState) (postcard)    |
//! | `outbox`      | partition, sequence                   | [`Delta`](crate::model::Delta) (postcard)           |
//! | `timers`      | partition, due time, mpid             | empty                          |
//! | `deadletters` | partition, sequence                   | [`DeadLetter`] (postcard), until published |
//! | `meta`        | text (`offset/…`, `head/…`, `size/…`) | big-endian integers            |
//! | `audiences`   | audience id                           | [`AudienceRecord`](crate::catalog::AudienceRecord) (JSON)      |
//! | `eventlog`    | partition, mpid, chunk seq (u32 BE)   | a sealed chunk: format byte, events |
//! | `eventlog`    | partition, mpid, `u32::MAX`           | the log head [`EventLog`](crate::eventlog::EventLog): format byte, postcard |
//! | `logdict`     | partition, code (u32 BE)              | a dictionary name (UTF-8)      |
//! | `sample`      | partition, sample rank (u64 BE), mpid | empty: profiles in sample order |
//! | `members`     | partition, `a`, audience, mpid, version | a membership change: kind, time |
//! | `members`     | partition, `m`, mpid, audience, version | the same change, by profile   |
//! | `facts`       | partition, mpid                       | [`crate::facts`]: format byte, postcard |
//!
//! The event log (format [`crate::eventlog::LOG_FORMAT`]) is described in [`crate::eventlog`]:
//! a profile's chunks sort before its head, so one forward scan of a partition reads every
//! profile's log in MPID order, as `profiles` lists them. Meta keys `evaluated/{p}/{audience}`
//! and `calc-evaluated/{p}/{name}` hold the revisions a partition's stored profiles were
//! computed for: a definition at another revision is backfilled. `sample` lists every stored
//! profile by [`crate::estimate::sample_rank`], so a uniform sample of n profiles is the first
//! n keys of a partition; meta `profiles/{p}` counts them. Both are written with the profile's
//! first write. `members` holds every delta's change (processing time, version), written with
//! the delta: ListMembers as of an instant reads the `a` range of an audience, a profile's
//! membership history the `m` range of an MPID; closed intervals that left before retention
//! are pruned, but never a pair's last record (it holds the version deltas continue from).
//! `facts` holds each profile's latest facts, written with the profile whenever they change
//! (meta `facts/{p}` marks a partition whose every profile has one): with `eventlog` and
//! `members` it is what [`crate::replay`] rebuilds a profile from, so `profiles` and
//! `timers` are caches of those logs.
//!
//! Invariant: the state a batch produced, the deltas it emitted, the timers it set and the
//! offsets it consumed are written in ONE [`WriteBatch`]: never split. On restart the engine
//! resumes from the stored offsets, so every message's effects are applied exactly once.

mod deadletter;
mod definitions;
mod keys;
mod logs;
mod members;
mod outbox;
mod profiles;
#[cfg(test)]
mod tests;

pub use deadletter::{DeadLetter, DeadLetterLimits};
pub use keys::{log_key, profile_key};
pub use logs::{ProfileLogs, ProfileWithLog, ReplayCursor};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use std::path::Path;

pub type Partition = u32;

const CF_PROFILES: &str = "profiles";

const CF_OUTBOX: &str = "outbox";

const CF_TIMERS: &str = "timers";

const CF_DEADLETTERS: &str = "deadletters";

const CF_META: &str = "meta";

const CF_AUDIENCES: &str = "audiences";

const CF_EVENTLOG: &str = "eventlog";

const CF_LOGDICT: &str = "logdict";

const CF_SAMPLE: &str = "sample";

const CF_MEMBERS: &str = "members";

const CF_FACTS: &str = "facts";

const COLUMN_FAMILIES: &[&str] = &[
    CF_PROFILES,
    CF_OUTBOX,
    CF_TIMERS,
    CF_DEADLETTERS,
    CF_META,
    CF_AUDIENCES,
    CF_EVENTLOG,
    CF_LOGDICT,
    CF_SAMPLE,
    CF_MEMBERS,
    CF_FACTS,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record in {cf} at key {key}: {reason}")]
    Corrupt {
        cf: &'static str,
        key: String,
        reason: String,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Read options of the long forward scans of backfills: read ahead, so a page of profiles is
/// a few large reads rather than one per block.
fn scan_options() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_readahead_size(1 << 20);
    opts
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(a)
}

pub struct Store {
    db: DB,
    sync_writes: bool,
}

/// One atomic write: build it, then [`Store::commit`] it.
pub struct WriteBatch<'a> {
    store: &'a Store,
    batch: rocksdb::WriteBatch,
}

impl WriteBatch<'_> {
    fn put_meta_u64(&mut self, key: &str, value: u64) {
        let cf = self.store.cf(CF_META);
        self.batch.put_cf(cf, key.as_bytes(), value.to_be_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, sync_writes: bool) -> StoreResult<Store> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        // One memory budget for the memtables of every column family, so that six column
        // families do not each grow their own 64 MiB buffers.
        options.set_db_write_buffer_size(96 << 20);
        let descriptors = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if *name == CF_EVENTLOG {
                // Logs are read whole, in key order, by backfills: bigger blocks mean fewer
                // block decodes per profile scanned (a profile's log is a few KiB).
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_block_size(16 << 10);
                cf_opts.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        Ok(Store { db, sync_writes })
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    pub fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            store: self,
            batch: rocksdb::WriteBatch::default(),
        }
    }

    pub fn commit(&self, batch: WriteBatch<'_>) -> StoreResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        self.db.write_opt(batch.batch, &opts)?;
        Ok(())
    }

    fn meta_u64(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), key.as_bytes())?
            .map(|v| be_u64(&v)))
    }

    pub fn flush(&self) -> StoreResult<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}
