//! The definition language as users write it: the serde types of the JSON criteria tree,
//! [`parse_definition`] and the normalisation every definition goes through.

use serde::{Deserialize, Serialize};

/// A definition refused: the field (a JSON path into the criteria) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DefinitionError {
    pub field: String,
    pub reason: String,
}

impl DefinitionError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DefinitionError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A criteria tree, as users write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Criterion {
    /// Every child matches.
    And(Vec<Criterion>),
    /// At least one child matches.
    Or(Vec<Criterion>),
    /// Users matching the child are excluded (used inside `and`: `{"and": [A, {"exclude": B}]}`).
    Exclude(Box<Criterion>),
    /// The user performed an event, counted in a time window.
    Event(EventCriterion),
    /// A user attribute compared with an operator.
    UserAttribute(Condition),
    /// A user or device identity of a type, present or absent, or compared as a string.
    Identity(IdentityCriterion),
    /// GDPR consent for a purpose, or the CCPA data-sale opt-out.
    Consent(ConsentCriterion),
    /// Device, OS, carrier or app version: `{"field": "os_version", "op": "version_greater_than",
    /// "value": "16.4"}`.
    Device(DeviceCriterion),
    /// When the user was first seen, by recency or by calendar date.
    FirstSeen(TimeWindow),
    /// Membership in another audience: `{"id": 3}` (in) or `{"id": 3, "member": false}` (not
    /// in). Only an audience without audience criteria of its own may be referenced.
    Audience(AudienceRef),
    /// Added to cart, then no purchase (or no product action at all) for a while: the user
    /// enters when the wait has passed, with no new event, and leaves on purchase.
    CartAbandonment(CartAbandonment),
    /// A calculated attribute compared with an operator: `{"name": "spend_30d", "op":
    /// "greater_than", "value": 100}`.
    CalculatedAttribute(Condition),
    /// Install or uninstall attribution: `{"kind": "install", "field": "campaign", "op":
    /// "exact_match", "value": "spring"}`; without a field, whether there is one.
    Attribution(AttributionCriterion),
    /// Where the user is: a field (city, state, zip, dma, country) compared with a string
    /// operator, or within a distance of a point or a named city.
    Location(LocationCriterion),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionCriterion {
    /// `install` or `uninstall`.
    pub kind: String,
    /// `publisher` or `campaign`; absent: the attribution exists.
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub op: Option<Operator>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// In a multi workspace audience: the workspace whose data it reads (as a user attribute
    /// criterion's); absent: the profile's latest from any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationCriterion {
    /// city, state, zip, dma or country, compared with `op` and `value`.
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub op: Option<Operator>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// Within a distance of a point or of a named world city.
    #[serde(default)]
    pub within: Option<Within>,
    /// In a multi workspace audience: the workspace whose data it reads (as a user attribute
    /// criterion's); absent: the profile's latest from any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Within {
    pub distance: f64,
    /// `mi` (default) or `km`.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    /// A city of the gazetteer ("Paris", "Paris, FR", "Portland, US-OR").
    #[serde(default)]
    pub city: Option<String>,
}

/// The location fields a location criterion compares.
pub const LOCATION_FIELDS: &[&str] = &["city", "state", "zip", "dma", "country"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartAbandonment {
    /// How long after the last add to cart, in minutes.
    pub wait_minutes: u32,
    /// `purchase` (default): no purchase since; `product_action`: no product action at all.
    #[serde(default)]
    pub without: Option<String>,
    /// In a multi workspace audience: the workspace whose commerce events it reads (the
    /// audience's inputs of it, every input of it when the audience selects none); absent:
    /// every source of the audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

impl CartAbandonment {
    /// Whether any product action ends the abandonment (`without: product_action`), or only a
    /// purchase; the error names the value.
    pub(super) fn ended_by_any_action(&self) -> Result<bool, String> {
        match self.without.as_deref().map(str::to_lowercase).as_deref() {
            None | Some("purchase") => Ok(false),
            Some("product_action") => Ok(true),
            Some(other) => Err(format!("\"{other}\" is not purchase or product_action")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceRef {
    pub id: crate::model::AudienceId,
    #[serde(default = "default_true")]
    pub member: bool,
}

pub(super) fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentCriterion {
    /// `gdpr` (with a `purpose`) or `ccpa`.
    pub regulation: String,
    #[serde(default)]
    pub purpose: Option<String>,
    /// GDPR: `consented`, `not_consented`, `no_state`; CCPA: `opted_out`, `not_opted_out`,
    /// `no_state`.
    pub state: String,
    /// In a multi workspace audience: the workspace whose data it reads (as a user attribute
    /// criterion's); absent: the profile's latest from any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCriterion {
    /// platform, os_version, device_model, device_manufacturer, network_carrier, brand,
    /// locale_country, locale_language, app_version.
    pub field: String,
    pub op: Operator,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// In a multi workspace audience: the workspace whose data it reads (as a user attribute
    /// criterion's); absent: the profile's latest from any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// The profile fields a device criterion can read.
pub const DEVICE_FIELDS: &[&str] = &[
    "platform",
    "os_version",
    "device_model",
    "device_manufacturer",
    "network_carrier",
    "brand",
    "locale_country",
    "locale_language",
    "app_version",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventCriterion {
    /// mParticle event type: custom_event (default), screen_view, commerce_event, session_start,
    /// session_end, crash_report, first_run, application_state_transition, opt_out, uninstall...
    #[serde(rename = "type", default = "default_event_type")]
    pub event_type: String,
    /// Event name (custom events) or screen name (screen views).
    #[serde(default)]
    pub name: Option<String>,
    /// Custom event type (navigation, transaction, ...): only for custom events, optional.
    #[serde(default)]
    pub custom_event_type: Option<String>,
    /// Product action of a commerce event (add_to_cart, purchase, ...).
    #[serde(default)]
    pub product_action: Option<String>,
    /// Conditions on the event's custom attributes, all of which must hold.
    #[serde(default)]
    pub attributes: Vec<Condition>,
    /// Commerce events: conditions on a product's fields (id or sku, name, brand, category,
    /// variant, price, quantity); some product of the event must meet all of them.
    #[serde(default)]
    pub product: Vec<Condition>,
    /// Commerce events: conditions on the transaction (total_amount, transaction_id).
    #[serde(default)]
    pub transaction: Vec<Condition>,
    /// Commerce events: a promotion action (`view` or `click`) instead of a product action.
    #[serde(default)]
    pub promotion_action: Option<String>,
    /// Promotion events: conditions on a promotion's fields (id, name, creative, position);
    /// some promotion of the event must meet all of them.
    #[serde(default)]
    pub promotion: Vec<Condition>,
    /// Commerce events: product impressions instead of a product action (`product`
    /// conditions then apply to the impressed products).
    #[serde(default)]
    pub impression: bool,
    /// Impressions: the impression list's name (exact, case-insensitive).
    #[serde(default)]
    pub impression_list: Option<String>,
    /// How many times; at least once by default.
    #[serde(default)]
    pub count: Option<Count>,
    /// When; the whole retention window by default.
    #[serde(default)]
    pub time: Option<TimeWindow>,
    /// In a multi workspace audience: the workspace whose events it counts (the audience's
    /// inputs of that workspace; every input of it when the audience selects none, or for
    /// the user based event types); absent: every source of the audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

pub(super) fn default_event_type() -> String {
    "custom_event".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Count {
    AtLeast(u64),
    AtMost(u64),
    Exactly(u64),
}

impl Count {
    pub fn holds(self, n: u64) -> bool {
        match self {
            Count::AtLeast(k) => n >= k,
            Count::AtMost(k) => n <= k,
            Count::Exactly(k) => n == k,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeWindow {
    /// Within the last N days (a day is 24 hours before now).
    WithinLastDays(u32),
    /// Between N and M days ago, N < M.
    BetweenDaysAgo([u32; 2]),
    /// Strictly before a UTC calendar date ("YYYY-MM-DD").
    Before(String),
    /// On or after a UTC calendar date.
    After(String),
    /// On a UTC calendar date, 00:00 to 23:59:59.999.
    On(String),
    /// Between two UTC calendar dates, both included.
    Between([String; 2]),
}

/// One attribute condition: `{"name": "color", "op": "contains", "value": "blue"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub name: String,
    pub op: Operator,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// A user attribute criterion of a multi workspace audience: the workspace whose data it
    /// reads (the seed: "all user profile data is scoped and maintained within a single
    /// workspace"); absent: the profile's latest value from any source. Refused elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityCriterion {
    /// Identity type: customer_id, email, ios_idfv, android_advertising_id, ...
    #[serde(rename = "type")]
    pub identity_type: String,
    /// `exists` (default), `not_exists`, or a string operator on the identity value.
    #[serde(default)]
    pub op: Option<Operator>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// In a multi workspace audience: the workspace whose identities it reads (identities
    /// are workspace-scoped); absent: the profile's, from every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Contains,
    DoesNotContain,
    ExactMatch,
    DoesNotMatch,
    Pattern,
    Includes,
    DoesNotInclude,
    PartialMatch,
    Exists,
    NotExists,
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual,
    Between,
    IsTrue,
    IsFalse,
    VersionEquals,
    VersionGreaterThan,
    VersionGreaterThanOrEqual,
    VersionLessThan,
    VersionLessThanOrEqual,
    /// Dates (a date attribute, epoch milliseconds, or an ISO 8601 string) against UTC
    /// calendar days, as event dates are: before is exclusive; after, on and between inclusive.
    DateBefore,
    DateAfter,
    DateOn,
    DateBetween,
}

/// Every event a definition selects: (field path of its selector, event type, lowercased
/// selector name).
pub fn event_references(criterion: &Criterion) -> Vec<(String, String, String)> {
    pub(super) fn walk(c: &Criterion, path: &str, out: &mut Vec<(String, String, String)>) {
        match c {
            Criterion::And(children) | Criterion::Or(children) => {
                let op = if matches!(c, Criterion::And(_)) {
                    "and"
                } else {
                    "or"
                };
                for (i, child) in children.iter().enumerate() {
                    walk(child, &format!("{path}.{op}[{i}]"), out);
                }
            }
            Criterion::Exclude(child) => walk(child, &format!("{path}.exclude"), out),
            Criterion::Event(e) => {
                let field = if e.event_type == "commerce_event" {
                    if e.promotion_action.is_some() {
                        "promotion_action"
                    } else if e.impression {
                        "impression"
                    } else {
                        "product_action"
                    }
                } else if e.name.is_some() {
                    "name"
                } else {
                    "type"
                };
                out.push((
                    format!("{path}.event.{field}"),
                    e.event_type.clone(),
                    selector_name(e),
                ));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(criterion, "criteria", &mut out);
    out
}

/// Parses a definition from JSON, naming the path of the first problem.
pub fn parse_definition(json: &serde_json::Value) -> Result<Criterion, DefinitionError> {
    let criterion: Criterion = serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "criteria".to_string()
        } else {
            format!("criteria.{path}")
        };
        DefinitionError::new(field, e.into_inner().to_string())
    })?;
    let mut criterion = criterion;
    normalize(&mut criterion, "criteria")?;
    Ok(criterion)
}

/// Rewrites the shorthands of the language into their one canonical form, so that every
/// later step sees a single spelling: an event of type `attribution` is a custom event of
/// custom event type `attribution`.
pub(super) fn normalize(criterion: &mut Criterion, path: &str) -> Result<(), DefinitionError> {
    let (op, children) = match criterion {
        Criterion::And(children) => ("and", children),
        Criterion::Or(children) => ("or", children),
        Criterion::Exclude(child) => return normalize(child, &format!("{path}.exclude")),
        Criterion::Event(e) => return normalize_event(e, &format!("{path}.event")),
        _ => return Ok(()),
    };
    for (i, child) in children.iter_mut().enumerate() {
        normalize(child, &format!("{path}.{op}[{i}]"))?;
    }
    Ok(())
}

/// An attribution event criterion, as a custom event criterion.
pub fn normalize_event(e: &mut EventCriterion, path: &str) -> Result<(), DefinitionError> {
    if e.event_type.eq_ignore_ascii_case("attribution") {
        if e.custom_event_type.is_some() {
            return Err(DefinitionError::new(
                format!("{path}.custom_event_type"),
                "attribution events have the custom event type attribution",
            ));
        }
        e.event_type = "custom_event".to_string();
        e.custom_event_type = Some("attribution".to_string());
    }
    Ok(())
}

pub(super) fn selector_name(e: &EventCriterion) -> String {
    match e.event_type.as_str() {
        "commerce_event" if e.impression => crate::model::IMPRESSION.to_string(),
        "commerce_event" if e.promotion_action.is_some() => format!(
            "promotion_{}",
            e.promotion_action
                .as_deref()
                .unwrap_or("")
                .trim()
                .to_lowercase()
        ),
        "commerce_event" => e.product_action.clone().unwrap_or_default().to_lowercase(),
        _ => e.name.clone().unwrap_or_default().to_lowercase(),
    }
}
