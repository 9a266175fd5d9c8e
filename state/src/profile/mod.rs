//! The per-MPID state machine: applying a decoded message to a profile, and deciding the
//! membership deltas that follow.
//!
//! Invariants:
//! - messages of one MPID are applied in order, each exactly once (the caller guarantees it by
//!   storing offsets with the state);
//! - a membership's version grows by one on every change, so (audience, MPID, version) names a
//!   delta for ever;
//! - `due` holds, per audience whose answer time alone can change, the instant it may change:
//!   the profile's timer is the earliest of them.
//!
//! The module is split so that nothing below the catalog needs the catalog:
//! - [`state`]: the profile's data, its stored encoding and [`ChangeSet`]. It depends only on
//!   the model, event histories and calculated aggregates, so the criteria evaluator and the
//!   catalog read a profile without importing the code that changes it;
//! - `apply`: applying messages and logs to a profile, and evaluating the catalog's audiences
//!   for it (the layer above the criteria and the catalog);
//! - `encode`: the two stored rows written field by field, in the bytes postcard reads back
//!   in `state`;
//! - `derived`: the derived row's memberships and timers, packed (ids and instants as
//!   distances from the one before).

mod apply;
mod derived;
mod encode;
pub mod state;

pub use state::{
    is_derived_series, ChangeSet, DerivedParts, MemberRecord, NamedAttr, ProfileState, UserData,
    UserDataMut, WorkspaceData, MATCHER_SERIES_PREFIX, UPGRADE_EVENT_TYPE,
};
