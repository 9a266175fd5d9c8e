//! The audience definition language: a criteria tree of AND, OR and EXCLUDE over leaf
//! criteria, parsed from JSON, validated, compiled and evaluated against a profile.
//!
//! Adding a criterion is adding one variant to [`Criterion`] and [`Node`] and one arm to
//! [`Node::evaluate`] and [`Node::collect_reads`]; nothing else changes.
//!
//! Semantics (from the product documentation):
//! - every string match is case-insensitive;
//! - negative operators (does not contain, does not match, does not include, not exists) are
//!   the complement of their positive: an absent attribute "does not contain" anything;
//! - an attribute present with no value EXISTS;
//! - a day is 24 hours before 'now' for recency windows; calendar dates are UTC days, before is
//!   exclusive, after, on and between are inclusive;
//! - events older than the retention window are not evaluated at all.
//!
//! Layout, by the path a definition travels: `definition` (the JSON types and parsing),
//! `compile` (validation and compilation), `condition` (attribute conditions), `values` (string, number, version, date and glob
//! tests), `compiled` (the node tree and matchers), `evaluate` and `explain`. Imports run
//! one way: `values` and `compiled` read `definition`; `evaluate` reads `compiled` and
//! `values`; `explain` reads `evaluate`; `compile` reads all three below it and nothing reads
//! `compile`.

mod compile;
mod compiled;
mod condition;
mod definition;
mod evaluate;
mod explain;
mod scope;
mod values;

pub use compile::*;
pub use compiled::*;
pub use definition::*;
pub use evaluate::*;
pub use explain::*;
pub use scope::*;
pub use values::*;
