//! The RocksDB layout of the engine. One database per node, column families by kind of record,
//! every per-partition key prefixed by the partition so a partition's data is one key range.
//!
//! | column family | key                                   | value                          |
//! |---------------|---------------------------------------|--------------------------------|
//! | `profiles`    | partition, mpid                       | [`ProfileState`](crate::profile::ProfileState) (postcard)    |
//! | `outbox`      | partition, sequence                   | [`Delta`](crate::model::Delta): format byte, postcard |
//! | `timers`      | partition, due time, mpid             | empty                          |
//! | `deadletters` | partition, sequence                   | [`DeadLetter`]: format byte, postcard, until published |
//! | `meta`        | text (`offset/…`, `head/…`, `size/…`) | big-endian integers            |
//! | `audiences`   | audience id                           | [`AudienceRecord`](crate::catalog::AudienceRecord) (JSON)      |
//! | `eventlog`    | partition, mpid, chunk seq (u32 BE)   | a sealed chunk: format byte, events |
//! | `eventlog`    | partition, mpid, `u32::MAX`           | the log head [`EventLog`](crate::eventlog::EventLog): format byte, postcard |
//! | `logdict`     | partition, code (u32 BE)              | a dictionary name (UTF-8)      |
//! | `sample`      | partition, sample rank (u64 BE), mpid | empty: profiles in sample order |
//! | `members`     | partition, `a`, audience, mpid, version | a membership change: kind, time |
//! | `members`     | partition, `m`, mpid, audience, version | the same change, by profile   |
//! | `facts`       | partition, mpid                       | [`crate::facts`]: format byte, postcard |
//! | `changelog`   | partition, unit sequence              | a [`Unit`](crate::changelog::Unit) not yet acknowledged by the changelog topic |
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
//! `timers` are caches of those logs. Meta `delivered/{p}/{connection}` (or `syncing/…` during
//! a connection's first sync) is where a connection's output stands in the partition's outbox
//! ([`deliveries`]): partition state, so it moves with the partition.
//!
//! Invariant: the state a batch produced, the deltas it emitted, the timers it set and the
//! offsets it consumed are written in ONE [`WriteBatch`]: never split. On restart the engine
//! resumes from the stored offsets, so every message's effects are applied exactly once.

mod catalog;
mod changelog;
mod db;
mod deadletter;
mod definitions;
mod deliveries;
mod keys;
mod logs;
mod members;
mod outbox;
mod profiles;
mod quarantine;
mod snapshot;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_quarantine;

pub use db::{
    replicated_column_families, Partition, ScanPage, Store, StoreError, StoreMemory, StoreOptions,
    StoreResult, UnreadableRow, WriteBatch, NODE_ROWS,
};
pub use deadletter::{DeadLetter, DeadLetterLimits};
pub use deliveries::DeliveryPosition;
pub use keys::{log_key, member_by_profile_key, profile_key};
pub use logs::{ProfileLogs, ProfileWithLog, ReplayCursor};
pub use profiles::LoadedProfile;
pub use quarantine::Quarantined;
pub use snapshot::SnapshotContents;
