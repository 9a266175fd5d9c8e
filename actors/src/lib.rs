//! The actors of an audience engine node.
//!
//! - [`partition`]: one actix actor per owned partition, hosting the virtual per-MPID state
//!   machines; it applies poll batches and fires timers, one RocksDB write per unit of work;
//! - [`node`]: the actix system, its arbiters and the routing of partitions to actors;
//! - [`ingest`]: the Kafka consumer feeding the partition actors (a consumer group member, or
//!   assigned by [`self_assignment`] over the placement of [`assignment`]), through one lane
//!   per partition ([`ingest_lanes`]);
//! - [`registry`]: the single writer of audience definitions;
//! - [`output_registry`]: the single writer of output configurations and connections;
//! - [`publisher`]: outbox to Kafka (deltas topic, dead-letter topic), at least once;
//! - [`connector`]: one actor per membership subscription, with its delivery pump and figures;
//!   [`deltas_tail`]: in a cluster, the pump reads every partition from the deltas topic;
//! - [`delivery`]: one delivery loop per output connection (webhook, Kafka), with retries,
//!   faults and resume;
//! - [`sampling`]: read-only evaluations of drafts over stored profiles (estimate, preview);
//! - [`geoip`]: client IP to location (MaxMind DB format), when configured;
//! - [`catalog_topic`]: proposing definition changes to the catalog topic and applying it in
//!   order (cluster step 1; not wired into the registries yet);
//! - [`cluster_view`]: every node's announcements on the members topic, as `audiencectl
//!   cluster` shows them;
//! - [`engine`], [`clock`], [`stats`]: shared state, the injectable clock, 24-hour figures;
//!   [`latency`]: each audience's event-to-delta and produce-to-delta latencies.
//!
//! Invariant: nothing on the per-event path waits on another actor; the only awaited replies
//! are per batch (a partition's next batch waits for its actor's write of the one before).

pub mod assignment;
pub mod catalog_applier;
pub mod catalog_topic;
pub mod changelog_publisher;
pub mod changelog_restore;
pub mod changelog_snapshots;
pub mod clock;
pub mod cluster_view;
pub mod connector;
pub mod delivery;
pub mod deltas_tail;
pub mod engine;
pub mod geoip;
pub mod ingest;
pub mod ingest_lanes;
pub mod input_positions;
pub mod latency;
pub mod network_guard;
pub mod node;
pub mod output_kinds;
pub mod output_registry;
pub mod partition;
pub mod publisher;
pub mod registry;
pub mod sampling;
pub mod self_assignment;
pub mod standby;
pub mod stats;
