//! Calculated attributes: per-workspace definitions of a value computed over a user's events
//! (count, sum, min, max, average, first and last value or timestamp, unique values count, most
//! frequent value, unique list), over the whole lifetime or within a sliding window of days;
//! kept up to date incrementally in each profile as events arrive, readable by criteria and
//! shown by the profile lookup.
//!
//! Invariants:
//! - a lifetime attribute keeps one [`Aggregate`](crate::aggregate::Aggregate) per profile, folded event by event, so its
//!   cost does not grow with the user's history;
//! - a windowed attribute keeps the matching occurrences (time, value) that are still in its
//!   window and folds them when read, so the value slides exactly with the clock and the
//!   instant it next changes is known ([`CalcState::value_at`](crate::aggregate::CalcState::value_at));
//! - a profile's state is tied to the definition's revision: redefining an attribute starts
//!   it anew instead of mixing two definitions;
//! - the calculation starts when the attribute is defined: events from before are not replayed
//!   (profiles keep event counts, not every event's values).
//!
//! This module holds the definitions and their compilation; the per-profile aggregates and
//! the value read from them are in [`crate::aggregate`], below the criteria.

pub use crate::aggregate::{
    value_of, Aggregate, CalcSpec, CalcState, Calculation, TRACKED_VALUES_MAX, UNIQUE_LIST_MAX,
    VALUE_CHARS_MAX, WINDOW_ENTRIES_MAX,
};
use crate::criteria::{event_selector, DefinitionError, EventCriterion, EventSource, Matcher};
use crate::model::{format_number, Event, EventKind, TimestampMs, DAY_MS};
use serde::{Deserialize, Serialize};

/// A calculated attribute as stored and as users write it:
/// `{"name": "spend_30d", "calculation": "sum", "event": {"type": "commerce_event",
/// "product_action": "purchase"}, "field": "total_amount", "window_days": 30}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalculatedAttributeRecord {
    pub name: String,
    pub calculation: Calculation,
    /// The events it is calculated over: an event criterion without count or time.
    pub event: EventCriterion,
    /// An event attribute, or on commerce events `total_amount`, `transaction_id` or
    /// `product.<field>` (one value per product).
    #[serde(default)]
    pub field: Option<String>,
    /// Within the last N days (sliding, 24-hour days); the whole lifetime when absent.
    #[serde(default)]
    pub window_days: Option<u32>,
    /// The workspaces whose inputs' events it is calculated over (a calculated attribute is
    /// user data, which the seed keeps per workspace); empty: every message's, stamped or
    /// not. Saved sorted, each a known workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<String>,
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    #[serde(default)]
    pub updated_at_ms: TimestampMs,
    #[serde(default)]
    pub revision: u64,
}

/// A definition ready to fold events.
#[derive(Debug, Clone, PartialEq)]
pub struct CalculatedDef {
    /// The name, lowercased: how criteria and profiles refer to it.
    pub key: String,
    pub calculation: Calculation,
    pub matcher: Matcher,
    pub field: Option<String>,
    pub window_ms: Option<i64>,
    pub revision: u64,
}

impl CalculatedDef {
    pub fn spec(&self) -> CalcSpec {
        CalcSpec {
            calculation: self.calculation,
            window_ms: self.window_ms,
            revision: self.revision,
        }
    }
}

fn name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ' ' | '.'))
}

impl CalculatedAttributeRecord {
    /// Whether two records define the same calculation (times and revisions aside).
    pub fn same_definition(&self, other: &CalculatedAttributeRecord) -> bool {
        self.name.trim() == other.name.trim()
            && self.calculation == other.calculation
            && self.event == other.event
            && self.field == other.field
            && self.window_days == other.window_days
            && self.workspaces == other.workspaces
    }

    /// Validates the definition, naming the field of the first problem.
    pub fn compile(&self) -> Result<CalculatedDef, DefinitionError> {
        let name = self.name.trim();
        if !name_is_valid(name) {
            return Err(DefinitionError::new(
                "name",
                format!(
                    "\"{}\" is not a name of 1 to 64 letters, digits, spaces, '_', '-' or '.'",
                    self.name
                ),
            ));
        }
        if self.event.count.is_some() {
            return Err(DefinitionError::new(
                "event.count",
                "a calculated attribute counts with its calculation, not with count",
            ));
        }
        if self.event.time.is_some() {
            return Err(DefinitionError::new(
                "event.time",
                "a calculated attribute's window is window_days",
            ));
        }
        if self.event.event_type == "upgrade" {
            return Err(DefinitionError::new(
                "event.type",
                "upgrades are derived from app versions: count them with an event criterion",
            ));
        }
        let mut matcher = event_selector(&self.event, "event")?;
        if !self.workspaces.is_empty() {
            matcher.source = Some(EventSource::Workspaces(self.workspaces.clone()));
        }
        let field = self
            .field
            .as_deref()
            .map(|f| f.trim().to_lowercase())
            .filter(|f| !f.is_empty());
        match (&field, self.calculation.needs_field()) {
            (None, true) => {
                return Err(DefinitionError::new(
                    "field",
                    format!(
                        "calculation {:?} needs the event field it reads",
                        self.calculation
                    ),
                ))
            }
            (Some(f), _) if f.starts_with("product.") => {
                let product_field = &f["product.".len()..];
                if self.event.event_type != "commerce_event" {
                    return Err(DefinitionError::new(
                        "field",
                        "only commerce events have product fields",
                    ));
                }
                if !crate::criteria::PRODUCT_FIELDS.contains(&product_field) {
                    return Err(DefinitionError::new(
                        "field",
                        format!(
                            "unknown product field \"{product_field}\" (one of: {})",
                            crate::criteria::PRODUCT_FIELDS.join(", ")
                        ),
                    ));
                }
            }
            _ => {}
        }
        let window_ms = match self.window_days {
            None => None,
            Some(0) => {
                return Err(DefinitionError::new("window_days", "must be at least 1"));
            }
            Some(days) => Some(days as i64 * DAY_MS),
        };
        Ok(CalculatedDef {
            key: name.to_lowercase(),
            calculation: self.calculation,
            matcher,
            field,
            window_ms,
            revision: self.revision,
        })
    }
}

impl CalculatedDef {
    /// The values an event contributes: none when it lacks the field, one per product for a
    /// product field, and one valueless occurrence when the calculation reads no field.
    pub fn values_of(&self, event: &Event) -> Vec<Option<String>> {
        let Some(field) = &self.field else {
            return vec![None];
        };
        if let Some(product_field) = field.strip_prefix("product.") {
            let products = match &event.kind {
                EventKind::Commerce { products, .. } | EventKind::Impression { products, .. } => {
                    products
                }
                _ => return Vec::new(),
            };
            return products
                .iter()
                .filter_map(|p| crate::criteria::product_field(p, product_field))
                .filter_map(|v| v.as_text())
                .map(Some)
                .collect();
        }
        if let EventKind::Commerce {
            total_amount,
            transaction_id,
            ..
        } = &event.kind
        {
            match field.as_str() {
                "total_amount" => {
                    return total_amount
                        .map(|n| Some(format_number(n)))
                        .into_iter()
                        .collect()
                }
                "transaction_id" => return transaction_id.clone().map(Some).into_iter().collect(),
                _ => {}
            }
        }
        event
            .attributes
            .iter()
            .find(|(k, _)| k.to_lowercase() == *field)
            .map(|(_, v)| Some(v.clone()))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DAY_MS;

    #[test]
    fn definitions_are_validated_by_field() {
        let record = |json: serde_json::Value| -> CalculatedAttributeRecord {
            serde_json::from_value(json).unwrap()
        };
        let sum_without_field = record(serde_json::json!({
            "name": "spend", "calculation": "sum",
            "event": {"type": "commerce_event", "product_action": "purchase"}
        }));
        assert_eq!(sum_without_field.compile().unwrap_err().field, "field");
        let with_count = record(serde_json::json!({
            "name": "n", "calculation": "count",
            "event": {"name": "play", "count": {"at_least": 2}}
        }));
        assert_eq!(with_count.compile().unwrap_err().field, "event.count");
        let bad_product = record(serde_json::json!({
            "name": "n", "calculation": "max", "field": "product.colour",
            "event": {"type": "commerce_event", "product_action": "purchase"}
        }));
        assert!(bad_product.compile().unwrap_err().reason.contains("colour"));
        let ok = record(serde_json::json!({
            "name": "Spend 30d", "calculation": "sum", "field": "total_amount", "window_days": 30,
            "event": {"type": "commerce_event", "product_action": "purchase"}
        }));
        let def = ok.compile().unwrap();
        assert_eq!(def.key, "spend 30d");
        assert_eq!(def.window_ms, Some(30 * DAY_MS));
    }
}
