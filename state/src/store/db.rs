//! The database and its atomic write: opening RocksDB with its column families, and the
//! [`WriteBatch`] every unit of work is written in. The other files of this folder add methods
//! to [`Store`] and [`WriteBatch`] per kind of record.

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use std::path::Path;

pub type Partition = u32;

pub(super) const CF_PROFILES: &str = "profiles";

pub(super) const CF_OUTBOX: &str = "outbox";

pub(super) const CF_TIMERS: &str = "timers";

pub(super) const CF_DEADLETTERS: &str = "deadletters";

pub(super) const CF_META: &str = "meta";

pub(super) const CF_AUDIENCES: &str = "audiences";

pub(super) const CF_EVENTLOG: &str = "eventlog";

pub(super) const CF_LOGDICT: &str = "logdict";

pub(super) const CF_SAMPLE: &str = "sample";

pub(super) const CF_MEMBERS: &str = "members";

pub(super) const CF_FACTS: &str = "facts";

pub(super) const COLUMN_FAMILIES: &[&str] = &[
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
pub(super) fn scan_options() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_readahead_size(1 << 20);
    opts
}

pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(a)
}

pub struct Store {
    pub(super) db: DB,
    pub(super) sync_writes: bool,
}

/// One atomic write: build it, then [`Store::commit`] it.
pub struct WriteBatch<'a> {
    pub(super) store: &'a Store,
    pub(super) batch: rocksdb::WriteBatch,
}

impl WriteBatch<'_> {
    pub(super) fn put_meta_u64(&mut self, key: &str, value: u64) {
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

    pub(super) fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
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

    pub(super) fn meta_u64(&self, key: &str) -> StoreResult<Option<u64>> {
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
