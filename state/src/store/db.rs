//! The database and its atomic write: opening RocksDB with its column families, and the
//! [`WriteBatch`] every unit of work is written in. The other files of this folder add methods
//! to [`Store`] and [`WriteBatch`] per kind of record.

use crate::changelog::{cf_code, cf_name, Op, Unit};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use std::path::Path;

pub type Partition = u32;

pub(super) const CF_PROFILES: &str = "profiles";

/// The derived row of each profile (see [`crate::profile::state`]), keyed as its core row in
/// [`CF_PROFILES`].
pub(super) const CF_DERIVED: &str = "derived";

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

/// This node's units of work not yet acknowledged by the changelog topic (never replicated:
/// see [`super::changelog`]).
pub(super) const CF_CHANGELOG: &str = "changelog";

/// Rows this node could not read, set aside (never replicated: see [`super::quarantine`]).
pub(super) const CF_QUARANTINE: &str = "quarantine";

/// The column families of this node only: never in a unit of the changelog.
const NODE_OWN: &[&str] = &[CF_CHANGELOG, CF_QUARANTINE];

/// The column families read by key when a profile is activated (its rows and its log's head)
/// or rebased (its facts): each file of theirs carries a Bloom filter.
const POINT_READ: &[&str] = &[CF_PROFILES, CF_DERIVED, CF_EVENTLOG, CF_FACTS];

/// The column families a partition's changelog carries.
pub(super) const REPLICATED: &[&str] = &[
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
    CF_DERIVED,
];

/// The column families a partition's changelog carries: a replica holds the owner's keys of
/// these, byte for byte.
pub fn replicated_column_families() -> &'static [&'static str] {
    REPLICATED
}

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
    /// A write of a partition this node has not claimed (or no longer owns) with the
    /// changelog on: it would be a unit no reader accepts.
    #[error("partition {partition} is not this node's to write (no accepted claim)")]
    NotWritable { partition: Partition },
    /// A snapshot's file could not be written or read, or does not match its manifest.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A row a reader could not decode, named so that it can be set aside (see
    /// [`super::quarantine`]).
    #[error("unreadable row in {}", .0)]
    Unreadable(Box<UnreadableRow>),
}

/// A row a reader could not decode: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRow {
    /// Its partition ([`NODE_ROWS`]: none).
    pub partition: Partition,
    pub cf: &'static str,
    pub key: Vec<u8>,
    /// The key as people read it (`3/42/head`).
    pub display_key: String,
    pub reason: String,
}

/// A page of a partition's scan: the rows read, those that did not decode (for the caller to
/// set aside), and the last profile visited either way (where the next page starts; `None`:
/// the scan is done).
#[derive(Debug, Clone)]
pub struct ScanPage<T> {
    pub items: Vec<T>,
    pub unreadable: Vec<UnreadableRow>,
    pub last: Option<crate::model::Mpid>,
}

impl<T> Default for ScanPage<T> {
    fn default() -> Self {
        ScanPage {
            items: Vec::new(),
            unreadable: Vec::new(),
            last: None,
        }
    }
}

/// The partition under which rows of no partition (definitions) are named and set aside.
pub const NODE_ROWS: Partition = u32::MAX;

impl std::fmt::Display for UnreadableRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}: {}", self.cf, self.display_key, self.reason)
    }
}

impl UnreadableRow {
    pub(super) fn new(
        partition: Partition,
        cf: &'static str,
        key: &[u8],
        display_key: String,
        reason: impl Into<String>,
    ) -> UnreadableRow {
        UnreadableRow {
            partition,
            cf,
            key: key.to_vec(),
            display_key,
            reason: reason.into(),
        }
    }

    /// The error of a reader that cannot skip the row.
    pub fn into_error(self) -> StoreError {
        StoreError::Unreadable(Box::new(self))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A stored row: its key and its value.
pub(super) type Row = (Box<[u8]>, Box<[u8]>);

/// Read options of the long forward scans of backfills: read ahead, so a page of profiles is
/// a few large reads rather than one per block.
pub(super) fn scan_options() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_readahead_size(1 << 20);
    // A scan reads each block once: caching it would evict the blocks streaming reads again
    // (and costs the cache's insertions and evictions on every block).
    opts.fill_cache(false);
    opts
}

pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(a)
}

/// How the store uses memory and writes. The defaults hold RocksDB's own memory (the block
/// cache and the memtables) at 224 MiB, whatever the number of profiles stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// fsync every commit (survives power loss, not only process crashes).
    pub sync_writes: bool,
    /// One LRU block cache shared by every column family: data blocks, and the index and
    /// filter blocks of every file, which outside a cache grow with the data stored.
    pub cache_bytes: usize,
    /// The memtables of every column family together: a flush starts when they reach it.
    pub write_buffer_bytes: usize,
    /// Read SST files through memory maps: scans (backfills, rebuilds) copy no block out of
    /// the page cache, but every page read stays in the process's resident memory, which then
    /// grows with the store instead of being bounded by `cache_bytes`.
    pub mmap_reads: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_writes: false,
            cache_bytes: 128 << 20,
            write_buffer_bytes: 96 << 20,
            mmap_reads: false,
        }
    }
}

/// What RocksDB holds in memory, in bytes (see [`Store::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreMemory {
    /// In the block cache: data blocks, and index and filter blocks.
    pub block_cache: u64,
    /// Of which pinned (index and filter blocks of level-0 files, blocks being read).
    pub block_cache_pinned: u64,
    /// Memtables, mutable and being flushed.
    pub memtables: u64,
    /// Table readers outside the cache (their own estimate).
    pub table_readers: u64,
}

/// The key [`Store::flush`] writes, synced, to make every write before it durable.
const DURABILITY_MARK: &[u8] = b"durability-mark";

pub struct Store {
    pub(super) db: DB,
    /// Shared by every column family's tables (see [`StoreOptions::cache_bytes`]).
    pub(super) cache: rocksdb::Cache,
    pub(super) sync_writes: bool,
    /// Serialises the commits of changelog units: a unit's sequence is its commit order.
    pub(super) unit_lock: std::sync::Mutex<()>,
    /// Serialises the writes of changelog positions (the restorer's, and the acknowledgements'
    /// read-modify-write): a position never goes back.
    pub(super) position_lock: std::sync::Mutex<()>,
    pub(super) changelog: ChangelogMode,
    /// Bytes of the partitions' batches committed since the store was opened (see
    /// [`Store::partition_bytes_committed`]).
    pub(super) partition_bytes: std::sync::atomic::AtomicU64,
}

/// Whether this node commits its partitions' writes as changelog units, and the epoch of its
/// claim on each partition it may write: with the changelog on, only those (see
/// `changelog.rs`).
#[derive(Debug, Default)]
pub(super) struct ChangelogMode {
    pub(super) enabled: std::sync::atomic::AtomicBool,
    pub(super) epochs: std::sync::Mutex<std::collections::HashMap<Partition, u64>>,
}

/// One atomic write: build it, then [`Store::commit`] it.
pub struct WriteBatch<'a> {
    pub(super) store: &'a Store,
    pub(super) batch: rocksdb::WriteBatch,
    /// The batch's operations as the changelog carries them, when it is logged.
    pub(super) ops: Option<Vec<Op>>,
}

impl WriteBatch<'_> {
    pub(super) fn put_meta_u64(&mut self, key: &str, value: u64) {
        self.put(CF_META, key.as_bytes(), value.to_be_bytes());
    }

    /// Puts a key, recording the operation when the batch is logged.
    pub(super) fn put(&mut self, cf: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.batch.put_cf(self.store.cf(cf), key, value);
        if let Some(ops) = &mut self.ops {
            ops.push(Op::Put {
                cf: cf_code(cf),
                key: key.to_vec(),
                value: value.to_vec(),
            });
        }
    }

    pub(super) fn delete(&mut self, cf: &'static str, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.batch.delete_cf(self.store.cf(cf), key);
        if let Some(ops) = &mut self.ops {
            ops.push(Op::Delete {
                cf: cf_code(cf),
                key: key.to_vec(),
            });
        }
    }

    /// Deletes the keys from `from` (included) to `to` (excluded).
    pub(super) fn delete_range(
        &mut self,
        cf: &'static str,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
    ) {
        let (from, to) = (from.as_ref(), to.as_ref());
        self.batch.delete_range_cf(self.store.cf(cf), from, to);
        if let Some(ops) = &mut self.ops {
            ops.push(Op::DeleteRange {
                cf: cf_code(cf),
                from: from.to_vec(),
                to: to.to_vec(),
            });
        }
    }

    /// The operations of a logged batch, in the order they were made (`None`: not logged).
    pub fn ops(&self) -> Option<&[Op]> {
        self.ops.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The bytes the batch hands RocksDB (keys, values and their framing): what its commit
    /// writes to the write-ahead log and the memtables, before flushes and compactions
    /// rewrite it.
    pub fn size_in_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }
}

impl Store {
    /// Opens (or creates) the database at `path`, with the default memory budgets.
    pub fn open(path: &Path, sync_writes: bool) -> StoreResult<Store> {
        Store::open_with(
            path,
            &StoreOptions {
                sync_writes,
                ..StoreOptions::default()
            },
        )
    }

    /// Opens (or creates) the database at `path`.
    pub fn open_with(path: &Path, settings: &StoreOptions) -> StoreResult<Store> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        // With memory maps a scan (backfill, rebuild, verify) copies no block out of the page
        // cache (with pread that copy was a tenth of a backfill's CPU), at the price of a
        // resident set that grows with the store: off unless asked.
        options.set_allow_mmap_reads(settings.mmap_reads);
        // One memory budget for the memtables of every column family, so that the column
        // families do not each grow their own 64 MiB buffers.
        options.set_db_write_buffer_size(settings.write_buffer_bytes);
        // Without a cache of its own each column family's table factory makes a 32 MiB one,
        // and index and filter blocks live outside any: one cache bounds them all.
        let cache = rocksdb::Cache::new_lru_cache(settings.cache_bytes);
        // Every column family on disk is opened, known or not: a store a newer version wrote
        // (a downgrade) may hold families this one does not know. They are kept, unread.
        // An error here is no database yet.
        let on_disk = DB::list_cf(&options, path).unwrap_or_default();
        let foreign: Vec<String> = on_disk
            .into_iter()
            .filter(|name| {
                name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME
                    && !REPLICATED.contains(&name.as_str())
                    && !NODE_OWN.contains(&name.as_str())
            })
            .collect();
        if !foreign.is_empty() {
            tracing::warn!(column_families = ?foreign,
                "column families this version does not know: kept as they are, unread");
        }
        let known = REPLICATED.iter().chain(NODE_OWN.iter()).map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if *name == CF_PROFILES || *name == CF_DERIVED {
                // Profile rows are rewritten whole at every change (and all of them by a
                // backfill), so flushes and the compactions above the bottom level handle
                // each row several times: compressing there took a seventh of a backfill's
                // CPU. The bottom level, where rows rest, stays compressed.
                cf_opts.set_compression_type(rocksdb::DBCompressionType::None);
                cf_opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks are charged to the cache (kept at high priority, and
            // pinned for level-0 files, which every read consults), so the memory of a store
            // of a billion keys is the cache's, not a share of the data.
            table.set_cache_index_and_filter_blocks(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if POINT_READ.contains(name) {
                // A profile's activation reads its rows by key, and a new profile's (most of a
                // workload of new users) are in no file: a Bloom filter per file (10 bits per
                // key, about 1% false positives) answers "not here" without reading the
                // file's index and data blocks, at every level.
                table.set_bloom_filter(10.0, false);
            }
            if *name == CF_EVENTLOG {
                // Logs are read whole, in key order, by backfills: bigger blocks mean fewer
                // block decodes per profile scanned (a profile's log is a few KiB).
                table.set_block_size(16 << 10);
            }
            cf_opts.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let descriptors: Vec<ColumnFamilyDescriptor> = known
            .chain(
                foreign
                    .iter()
                    .map(|name| ColumnFamilyDescriptor::new(name, Options::default())),
            )
            .collect();
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        let store = Store {
            db,
            cache,
            sync_writes: settings.sync_writes,
            unit_lock: std::sync::Mutex::new(()),
            position_lock: std::sync::Mutex::new(()),
            changelog: Default::default(),
            partition_bytes: Default::default(),
        };
        store.migrate_connection_cursors()?;
        store.migrate_row_formats()?;
        Ok(store)
    }

    /// What RocksDB holds in memory now: the figures an operator compares with the budgets of
    /// [`StoreOptions`].
    pub fn memory(&self) -> StoreMemory {
        let total = |property: &str| -> u64 {
            REPLICATED
                .iter()
                .chain(NODE_OWN)
                .filter_map(|name| self.db.cf_handle(name))
                .filter_map(|cf| self.db.property_int_value_cf(cf, property).ok().flatten())
                .sum()
        };
        StoreMemory {
            block_cache: self.cache.get_usage() as u64,
            block_cache_pinned: self.cache.get_pinned_usage() as u64,
            memtables: total("rocksdb.cur-size-all-mem-tables"),
            table_readers: total("rocksdb.estimate-table-readers-mem"),
        }
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
            ops: None,
        }
    }

    /// A batch that also records its operations, for the changelog (see
    /// [`crate::changelog`]).
    pub fn logged_batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            ops: Some(Vec::new()),
            ..self.batch()
        }
    }

    /// Applies a unit of another node's changelog: its operations, in order, in one write.
    pub fn apply_unit(&self, unit: &Unit) -> StoreResult<()> {
        let mut b = self.batch();
        self.add_unit(&mut b, unit)?;
        self.commit(b)
    }

    /// Adds a unit's operations, in order, to `b` (a plain batch: a unit read from the
    /// changelog is not written to it again).
    pub(super) fn add_unit(&self, b: &mut WriteBatch<'_>, unit: &Unit) -> StoreResult<()> {
        for op in &unit.ops {
            let name = |code: u8| {
                cf_name(code).ok_or(StoreError::Corrupt {
                    cf: "changelog",
                    key: format!("partition {} unit {}", unit.partition, unit.seq),
                    reason: format!("unknown column family code {code}"),
                })
            };
            match op {
                Op::Put { cf, key, value } => b.put(name(*cf)?, key, value),
                Op::Delete { cf, key } => b.delete(name(*cf)?, key),
                Op::DeleteRange { cf, from, to } => b.delete_range(name(*cf)?, from, to),
            }
        }
        Ok(())
    }

    pub fn commit(&self, batch: WriteBatch<'_>) -> StoreResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        self.db.write_opt(batch.batch, &opts)?;
        Ok(())
    }

    /// Commits and syncs the WAL whatever `sync_writes` says: for rare writes that were
    /// acknowledged to someone (the catalog: an id answered to a caller must survive a power
    /// cut).
    pub fn commit_synced(&self, batch: WriteBatch<'_>) -> StoreResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch.batch, &opts)?;
        Ok(())
    }

    /// The rows of column family `cf` whose key starts with `prefix` (empty: every row), in
    /// key order.
    pub(super) fn rows_with_prefix<'a>(
        &'a self,
        cf: &'static str,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = StoreResult<Row>> + 'a {
        self.db
            .iterator_cf(
                self.cf(cf),
                rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
            )
            .map(|item| item.map_err(StoreError::from))
            .take_while(move |item| match item {
                Ok((k, _)) => k.starts_with(prefix),
                // The caller sees the error.
                Err(_) => true,
            })
    }

    /// The meta records whose key starts with `prefix`, in key order: (the rest of the key,
    /// the value).
    pub(super) fn meta_with_prefix(&self, prefix: &str) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.rows_with_prefix(CF_META, prefix.as_bytes())
            .map(|row| {
                let (k, v) = row?;
                Ok((k[prefix.len()..].to_vec(), v.into_vec()))
            })
            .collect()
    }

    pub(super) fn meta_u64(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), key.as_bytes())?
            .map(|v| be_u64(&v)))
    }

    /// Every key and value of a column family, in key order: to compare two stores byte for
    /// byte (a changelog's replica against its owner).
    pub fn entries(&self, cf: &'static str) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes bytes under a key of a column family as they are, bypassing every encoding:
    /// for tests that damage a row.
    #[cfg(feature = "test-support")]
    pub fn write_raw(&self, cf: &str, key: &[u8], value: &[u8]) -> StoreResult<()> {
        let handle = self.db.cf_handle(cf).expect("a column family of the store");
        self.db.put_cf(handle, key, value)?;
        Ok(())
    }

    /// Whether every commit syncs its write (`storage.sync_writes`).
    pub fn syncs_every_write(&self) -> bool {
        self.sync_writes
    }

    /// Syncs the WAL: every write committed so far survives a power cut.
    ///
    /// By a synced write of one small key (in the default column family, which holds nothing
    /// else), not by `FlushWAL`: a synced write syncs every log before it just the same, but
    /// goes through RocksDB's write path, which refuses it while the store is in error. A
    /// `FlushWAL` after a write failed for lack of space (ENOSPC) meets the log writer's
    /// "previous error", which RocksDB takes for a fatal error: the store would then refuse
    /// writes until it is opened again, instead of taking them again by itself once space
    /// returns.
    pub fn flush(&self) -> StoreResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_opt(DURABILITY_MARK, b"", &opts)?;
        Ok(())
    }

    /// RocksDB's statistics of each known column family (levels, bytes written by flushes
    /// and compactions, stalls), as its text report: for benchmarks that explain a figure.
    pub fn column_family_stats(&self) -> StoreResult<Vec<(&'static str, String)>> {
        let mut out = Vec::new();
        for name in REPLICATED.iter().chain(NODE_OWN.iter()) {
            let stats = self
                .db
                .property_value_cf(self.cf(name), "rocksdb.cfstats-no-file-histogram")?
                .unwrap_or_default();
            out.push((*name, stats));
        }
        Ok(out)
    }

    /// A consistent copy of the whole store in `path`, which must not exist (its SST files
    /// hard-linked where the file system allows): benchmarks start many runs from one store
    /// written once.
    pub fn checkpoint(&self, path: &Path) -> StoreResult<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(path)?;
        Ok(())
    }
}
