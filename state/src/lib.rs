//! What the audience engine knows and decides.
//!
//! - [`model`]: the domain vocabulary (events, attributes, identities, deltas).
//! - [`batch`]: decoding of mParticle JSON batches and the protobuf envelope into [`model::Inbound`].
//! - [`eventlog`]: the per-profile log of every event within retention, for backfill.
//! - [`history`]: the compact, retention-bounded event history of a profile.
//! - [`criteria`]: the audience definition language, its validation, compilation and evaluation.
//! - [`calculated`]: calculated attributes, folded per profile as events arrive.
//! - [`geo`]: the world-city gazetteer and distances, for location criteria.
//! - [`backfill`]: rebuilding new or changed definitions from the event logs.
//! - [`membership`]: membership history intervals and as-of answers.
//! - [`download`]: audience downloads: the CSV rows, file names and manifest of the ZIP.
//! - [`estimate`]: audience sizes from a stable, hash-based uniform sample of profiles.
//! - [`ab_test`]: A/B tests, the stable split of an audience's members into variations.
//! - [`catalog`]: the set of audiences and the index from changes to the audiences they affect.
//! - [`outputs`]: output configurations, connections, what a delta becomes for an output.
//! - [`profile`]: the per-MPID state machine: apply a message, evaluate, emit deltas.
//! - [`facts`]: a profile's latest-wins facts, the compacted log of what it is.
//! - [`replay`]: a profile rebuilt from its facts, event log and membership history.
//! - [`store`]: the RocksDB layout: profiles, offsets, outbox, timers, dead letters, audiences.
//!
//! Invariant: every module but `store` is pure (no I/O, no clock): the caller passes `now`.

pub mod ab_test;
pub mod aggregate;
pub mod api_tokens;
pub mod audit;
pub mod backfill;
pub mod batch;
pub mod calculated;
pub mod catalog;
pub mod catalog_log;
pub mod changelog;
pub mod criteria;
pub mod cursor;
pub mod download;
pub mod estimate;
pub mod eventlog;
pub mod facts;
pub mod geo;
pub mod history;
pub mod inputs;
pub mod membership;
pub mod model;
pub mod network;
pub mod outputs;
pub mod profile;
pub mod replay;
mod row_format;
pub mod secrets;
pub mod store;
pub mod time;
mod varint;
