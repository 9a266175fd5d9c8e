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

use crate::history::EventSeries;
use crate::model::{AttrValue, TimestampMs, DAY_MS, PRODUCT_ACTIONS};
use crate::profile::ProfileState;
use chrono::NaiveDate;
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

// ------------------------------------------------------------------ the JSON language

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceRef {
    pub id: crate::model::AudienceId,
    #[serde(default = "default_true")]
    pub member: bool,
}

fn default_true() -> bool {
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
}

fn default_event_type() -> String {
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
    fn walk(c: &Criterion, path: &str, out: &mut Vec<(String, String, String)>) {
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
fn normalize(criterion: &mut Criterion, path: &str) -> Result<(), DefinitionError> {
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

// ------------------------------------------------------------------ compiled form

/// What a compiled audience reads, for the index from changes to audiences.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadKey {
    /// Events of a type with a selector name (event name, screen name, product action; "" for
    /// types without one).
    Event { event_type: String, name: String },
    /// A user attribute, lowercased.
    Attribute(String),
    /// An identity type, lowercased.
    Identity(String),
    /// Device info or app version.
    Device,
    /// Consent state.
    Consent,
    /// First seen: fixed when the profile is created.
    FirstSeen,
    /// Membership in another audience.
    Audience(crate::model::AudienceId),
    /// A calculated attribute, by lowercased name.
    Calculated(String),
    /// Install or uninstall attribution.
    Attribution,
    /// The profile's location (GeoIP or device position).
    Location,
}

/// An event criterion with attribute conditions keeps its own series in the profile, recorded
/// as events arrive, keyed by the hash of its canonical form (shared by identical criteria).
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub history_key: String,
    pub event_type: String,
    pub name: String,
    pub custom_event_type: Option<String>,
    pub conditions: Vec<CompiledCondition>,
    pub product_conditions: Vec<CompiledCondition>,
    pub transaction_conditions: Vec<CompiledCondition>,
    pub promotion_conditions: Vec<CompiledCondition>,
    /// Impressions: the list's name, lowercased.
    pub impression_list: Option<String>,
}

/// The fields of a promotion that promotion conditions read.
pub const PROMOTION_FIELDS: &[&str] = &["id", "name", "creative", "position"];

/// The fields of a product that product conditions read.
pub const PRODUCT_FIELDS: &[&str] = &[
    "id", "sku", "name", "brand", "category", "variant", "price", "quantity",
];
/// The fields of a transaction that transaction conditions read.
pub const TRANSACTION_FIELDS: &[&str] = &["total_amount", "transaction_id"];

pub(crate) fn product_field(p: &crate::model::Product, field: &str) -> Option<AttrValue> {
    let text = |v: &Option<String>| v.clone().map(AttrValue::String);
    match field {
        "id" | "sku" => text(&p.id),
        "name" => text(&p.name),
        "brand" => text(&p.brand),
        "category" => text(&p.category),
        "variant" => text(&p.variant),
        "price" => p.price.map(AttrValue::Number),
        "quantity" => p.quantity.map(AttrValue::Number),
        _ => None,
    }
}

impl Matcher {
    pub fn accepts(&self, event: &crate::model::Event) -> bool {
        if event.kind.event_type() != self.event_type || event.kind.selector_name() != self.name {
            return false;
        }
        if let (Some(want), crate::model::EventKind::Custom { custom_type, .. }) =
            (&self.custom_event_type, &event.kind)
        {
            if custom_type.as_deref().map(str::to_lowercase).as_deref() != Some(want.as_str()) {
                return false;
            }
        }
        let attributes_hold = self.conditions.iter().all(|c| {
            let value = event
                .attributes
                .iter()
                .find(|(k, _)| k.to_lowercase() == c.name)
                .map(|(_, v)| AttrValue::String(v.clone()));
            c.test.holds(value.as_ref())
        });
        if !attributes_hold {
            return false;
        }
        if self.product_conditions.is_empty()
            && self.transaction_conditions.is_empty()
            && self.promotion_conditions.is_empty()
            && self.impression_list.is_none()
        {
            return true;
        }
        let some_product_holds = |products: &[crate::model::Product]| {
            self.product_conditions.is_empty()
                || products.iter().any(|p| {
                    self.product_conditions
                        .iter()
                        .all(|c| c.test.holds(product_field(p, &c.name).as_ref()))
                })
        };
        let (products, total_amount, transaction_id) = match &event.kind {
            crate::model::EventKind::Commerce {
                products,
                total_amount,
                transaction_id,
                ..
            } => (products, total_amount, transaction_id),
            crate::model::EventKind::Impression { list, products } => {
                let list_holds = self.impression_list.as_ref().is_none_or(|want| {
                    list.as_deref().map(str::to_lowercase).as_deref() == Some(want.as_str())
                });
                return list_holds && some_product_holds(products);
            }
            crate::model::EventKind::Promotion { promotions, .. } => {
                return self.promotion_conditions.is_empty()
                    || promotions.iter().any(|p| {
                        self.promotion_conditions.iter().all(|c| {
                            let text = |v: &Option<String>| v.clone().map(AttrValue::String);
                            let value = match c.name.as_str() {
                                "id" => text(&p.id),
                                "name" => text(&p.name),
                                "creative" => text(&p.creative),
                                _ => text(&p.position),
                            };
                            c.test.holds(value.as_ref())
                        })
                    });
            }
            _ => return false,
        };
        let transaction_holds = self.transaction_conditions.iter().all(|c| {
            let value = match c.name.as_str() {
                "total_amount" => total_amount.map(AttrValue::Number),
                _ => transaction_id.clone().map(AttrValue::String),
            };
            c.test.holds(value.as_ref())
        });
        transaction_holds && some_product_holds(products)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledCondition {
    /// Attribute name, lowercased.
    pub name: String,
    pub test: Test,
}

/// A compiled operator with its operand, strings already lowercased.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Exists,
    Contains(String),
    ExactMatch(String),
    Pattern(String),
    Includes(String),
    PartialMatch(String),
    NumberCmp(std::cmp::Ordering, bool, f64),
    NumberBetween(f64, f64),
    IsBool(bool),
    /// Dotted versions compared part by part as numbers ("16.10" > "16.9").
    VersionCmp(std::cmp::Ordering, bool, Vec<u64>),
    /// A date in `[from, until)`, milliseconds since the epoch.
    DateIn(i64, i64),
    /// The complement of the inner test.
    Not(Box<Test>),
}

/// Parses "16.4.1" (or "v16.4", "16.4-beta") into its numeric parts; `None` when it has none.
pub fn parse_version(text: &str) -> Option<Vec<u64>> {
    let trimmed = text.trim().trim_start_matches(['v', 'V']);
    let parts: Vec<u64> = trimmed
        .split('.')
        .map_while(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    (!parts.is_empty()).then_some(parts)
}

pub fn compare_versions(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

impl Test {
    /// Applies the test to a value, `None` when the attribute is absent.
    pub fn holds(&self, value: Option<&AttrValue>) -> bool {
        match self {
            Test::Not(inner) => !inner.holds(value),
            Test::Exists => value.is_some(),
            _ => match value {
                None => false,
                Some(v) => self.holds_on_value(v),
            },
        }
    }

    fn holds_on_value(&self, v: &AttrValue) -> bool {
        let text = || v.as_text().map(|s| s.to_lowercase());
        let list = || match v {
            AttrValue::List(items) => Some(items.iter().map(|i| i.to_lowercase()).collect()),
            _ => text().map(|t| vec![t]),
        };
        match self {
            Test::Exists => true,
            Test::Not(inner) => !inner.holds_on_value(v),
            Test::Contains(needle) => {
                list().is_some_and(|items: Vec<String>| items.iter().any(|i| i.contains(needle)))
            }
            Test::ExactMatch(needle) | Test::Includes(needle) => {
                list().is_some_and(|items: Vec<String>| items.iter().any(|i| i == needle))
            }
            Test::PartialMatch(needle) => {
                list().is_some_and(|items: Vec<String>| items.iter().any(|i| i.contains(needle)))
            }
            Test::Pattern(pattern) => list()
                .is_some_and(|items: Vec<String>| items.iter().any(|i| glob_match(pattern, i))),
            Test::NumberCmp(ord, or_equal, operand) => {
                v.as_number().is_some_and(|n| match n.partial_cmp(operand) {
                    Some(std::cmp::Ordering::Equal) => *or_equal,
                    Some(o) => o == *ord,
                    None => false,
                })
            }
            Test::NumberBetween(lo, hi) => v.as_number().is_some_and(|n| n >= *lo && n <= *hi),
            Test::IsBool(b) => v.as_bool() == Some(*b),
            Test::DateIn(from, until) => date_of(v).is_some_and(|ms| ms >= *from && ms < *until),
            Test::VersionCmp(ord, or_equal, operand) => v
                .as_text()
                .and_then(|t| parse_version(&t))
                .is_some_and(|version| match compare_versions(&version, operand) {
                    std::cmp::Ordering::Equal => *or_equal,
                    o => o == *ord,
                }),
        }
    }
}

/// A value read as a date: a date attribute, epoch milliseconds, or an ISO 8601 date or
/// date-time string ("2024-03-01", "2024-03-01T10:00:00Z").
pub fn date_of(v: &AttrValue) -> Option<i64> {
    match v {
        AttrValue::Date(ms) => Some(*ms),
        AttrValue::Number(n) if n.is_finite() => Some(*n as i64),
        AttrValue::String(s) => {
            let s = s.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp_millis());
            }
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                return Some(t.and_utc().timestamp_millis());
            }
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return d
                    .and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis());
            }
            s.parse::<i64>().ok()
        }
        _ => None,
    }
}

/// Wildcard match of a whole string: `*` any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The time window of an event criterion, resolved to milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// Everything in retention.
    Retention,
    /// Counted while `t + enter_after <= now <= t + exit_after` (relative to now).
    Sliding { enter_after: i64, exit_after: i64 },
    /// `from <= t < until` (fixed calendar bounds).
    Fixed { from: i64, until: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventNode {
    pub event_type: String,
    pub name: String,
    pub custom_event_type: Option<String>,
    /// The profile history keys holding this criterion's occurrences; a key ending in the
    /// separator is a prefix (custom events of any custom event type).
    pub history_key: HistoryKey,
    pub count: Count,
    pub window: Window,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryKey {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Event(EventNode),
    Attribute(CompiledCondition),
    Identity {
        identity_type: String,
        test: Test,
    },
    Consent(ConsentTest),
    Device {
        field: String,
        test: Test,
    },
    FirstSeen(Window),
    Audience {
        id: crate::model::AudienceId,
        member: bool,
    },
    CartAbandonment {
        wait_ms: i64,
        any_action: bool,
    },
    /// A calculated attribute's value at evaluation time.
    Calculated {
        key: String,
        spec: crate::calculated::CalcSpec,
        test: Test,
    },
    /// Install or uninstall attribution; without a field the test reads whether it exists.
    Attribution {
        uninstall: bool,
        field: Option<String>,
        test: Test,
    },
    LocationField {
        field: String,
        test: Test,
    },
    LocationWithin {
        latitude: f64,
        longitude: f64,
        radius_km: f64,
        /// What the definition named ("Paris, FR" or the coordinates), for explanations.
        label: String,
    },
}

/// A location field of a profile: the reserved user attributes (`$City`, `$State`, `$Zip`,
/// `$Country`, `$DMA`) win over what GeoIP or the device reported.
pub fn location_field(profile: &ProfileState, field: &str) -> Option<String> {
    let reserved = profile
        .attribute(&format!("${field}"))
        .and_then(AttrValue::as_text)
        .filter(|v| !v.is_empty());
    reserved.or_else(|| {
        let l = &profile.location;
        match field {
            "city" => l.city.clone(),
            "state" => l.state.clone(),
            "zip" => l.zip.clone(),
            "dma" => l.dma.clone(),
            "country" => l.country.clone(),
            _ => None,
        }
    })
}

fn attribution_value(
    profile: &ProfileState,
    uninstall: bool,
    field: Option<&str>,
) -> Option<AttrValue> {
    let a = if uninstall {
        profile.uninstall_attribution.as_ref()
    } else {
        profile.install_attribution.as_ref()
    }?;
    match field {
        None => Some(AttrValue::Bool(true)),
        Some("publisher") => a.publisher.clone().map(AttrValue::String),
        Some(_) => a.campaign.clone().map(AttrValue::String),
    }
}

fn distance_to(profile: &ProfileState, latitude: f64, longitude: f64) -> Option<f64> {
    let (lat, lon) = (profile.location.latitude?, profile.location.longitude?);
    Some(crate::geo::distance_km(lat, lon, latitude, longitude))
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConsentTest {
    /// GDPR purpose (lowercased): Some(consented) or None for "no state".
    Gdpr {
        purpose: String,
        state: Option<bool>,
    },
    /// CCPA data-sale opt-out: Some(opted out) or None for "no state".
    Ccpa { state: Option<bool> },
}

/// The answer for one profile at one instant, with the next instant at which time alone may
/// change it (`None`: only a new event or change can).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub matched: bool,
    pub next_change: Option<TimestampMs>,
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Separator between event name and custom event type in history keys.
pub const KEY_SEP: char = '\u{1f}';

/// The history key an event is recorded under (without attribute conditions).
pub fn event_history_key(event: &crate::model::Event) -> String {
    match &event.kind {
        crate::model::EventKind::Custom { name, custom_type } => format!(
            "custom_event:{}{KEY_SEP}{}",
            name.to_lowercase(),
            custom_type.as_deref().unwrap_or("").to_lowercase()
        ),
        kind => {
            let name = kind.selector_name();
            if name.is_empty() {
                kind.event_type().to_string()
            } else {
                format!("{}:{}", kind.event_type(), name)
            }
        }
    }
}

/// Evaluation context: the instant and the retention of event history.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext {
    pub now: TimestampMs,
    pub retention_ms: i64,
}

impl Node {
    pub fn evaluate(&self, profile: &ProfileState, ctx: &EvalContext) -> Outcome {
        match self {
            Node::And(children) => {
                let mut next = None;
                let mut matched = true;
                for child in children {
                    let o = child.evaluate(profile, ctx);
                    matched &= o.matched;
                    next = earliest(next, o.next_change);
                }
                Outcome {
                    matched,
                    next_change: next,
                }
            }
            Node::Or(children) => {
                let mut next = None;
                let mut matched = false;
                for child in children {
                    let o = child.evaluate(profile, ctx);
                    matched |= o.matched;
                    next = earliest(next, o.next_change);
                }
                Outcome {
                    matched,
                    next_change: next,
                }
            }
            Node::Not(child) => {
                let o = child.evaluate(profile, ctx);
                Outcome {
                    matched: !o.matched,
                    next_change: o.next_change,
                }
            }
            Node::Attribute(cond) => Outcome {
                matched: cond.test.holds(profile.attribute(&cond.name)),
                next_change: None,
            },
            Node::Identity {
                identity_type,
                test,
            } => {
                let values = profile.identities.get(identity_type);
                let matched = match (test, values) {
                    (Test::Not(inner), _) => !any_identity(inner, values),
                    (t, v) => any_identity(t, v),
                };
                Outcome {
                    matched,
                    next_change: None,
                }
            }
            Node::Event(node) => node.evaluate(profile, ctx),
            Node::Consent(test) => Outcome {
                matched: match test {
                    ConsentTest::Gdpr { purpose, state } => {
                        profile.consent.gdpr.get(purpose).map(|c| c.consented) == *state
                    }
                    ConsentTest::Ccpa { state } => profile.consent.ccpa_data_sale_opt_out == *state,
                },
                next_change: None,
            },
            Node::Device { field, test } => {
                let value = device_field(profile, field).map(AttrValue::String);
                Outcome {
                    matched: test.holds(value.as_ref()),
                    next_change: None,
                }
            }
            Node::Audience { id, member } => Outcome {
                matched: profile.memberships.get(id).is_some_and(|r| r.member) == *member,
                next_change: None,
            },
            Node::CartAbandonment {
                wait_ms,
                any_action,
            } => cart_abandonment(profile, ctx, *wait_ms, *any_action),
            Node::Calculated { key, spec, test } => {
                let (value, next_change) =
                    crate::calculated::value_of(profile.calculated.get(key), spec, ctx.now);
                Outcome {
                    matched: test.holds(value.as_ref()),
                    next_change,
                }
            }
            Node::Attribution {
                uninstall,
                field,
                test,
            } => Outcome {
                matched: test
                    .holds(attribution_value(profile, *uninstall, field.as_deref()).as_ref()),
                next_change: None,
            },
            Node::LocationField { field, test } => Outcome {
                matched: test.holds(
                    location_field(profile, field)
                        .map(AttrValue::String)
                        .as_ref(),
                ),
                next_change: None,
            },
            Node::LocationWithin {
                latitude,
                longitude,
                radius_km,
                ..
            } => Outcome {
                matched: distance_to(profile, *latitude, *longitude)
                    .is_some_and(|d| d <= *radius_km),
                next_change: None,
            },
            Node::FirstSeen(window) => {
                if profile.first_seen_ms == 0 {
                    return Outcome {
                        matched: false,
                        next_change: None,
                    };
                }
                // First seen is profile data: no event retention applies to it.
                let (matched, next_change) =
                    occurrence(*window, profile.first_seen_ms, ctx.now, i64::MAX / 4);
                Outcome {
                    matched,
                    next_change,
                }
            }
        }
    }

    fn collect_reads(&self, reads: &mut Vec<ReadKey>) {
        match self {
            Node::And(c) | Node::Or(c) => c.iter().for_each(|n| n.collect_reads(reads)),
            Node::Not(c) => c.collect_reads(reads),
            Node::Attribute(cond) => reads.push(ReadKey::Attribute(cond.name.clone())),
            Node::Identity { identity_type, .. } => {
                reads.push(ReadKey::Identity(identity_type.clone()))
            }
            Node::Event(e) => reads.push(ReadKey::Event {
                event_type: e.event_type.clone(),
                name: e.name.clone(),
            }),
            Node::Consent(_) => reads.push(ReadKey::Consent),
            Node::Device { .. } => reads.push(ReadKey::Device),
            Node::FirstSeen(_) => reads.push(ReadKey::FirstSeen),
            Node::Audience { id, .. } => reads.push(ReadKey::Audience(*id)),
            // Every product action matters: the add, the purchase, any other action.
            Node::CartAbandonment { .. } => reads.push(ReadKey::Event {
                event_type: "commerce_event".into(),
                name: String::new(),
            }),
            Node::Calculated { key, .. } => reads.push(ReadKey::Calculated(key.clone())),
            Node::Attribution { .. } => reads.push(ReadKey::Attribution),
            Node::LocationField { field, .. } => {
                reads.push(ReadKey::Location);
                reads.push(ReadKey::Attribute(format!("${field}")));
            }
            Node::LocationWithin { .. } => reads.push(ReadKey::Location),
        }
    }

    fn is_time_dependent(&self) -> bool {
        match self {
            Node::And(c) | Node::Or(c) => c.iter().any(Node::is_time_dependent),
            Node::Not(c) => c.is_time_dependent(),
            Node::Event(_) | Node::FirstSeen(_) | Node::CartAbandonment { .. } => true,
            Node::Calculated { spec, .. } => spec.window_ms.is_some(),
            Node::Attribution { .. } | Node::LocationField { .. } | Node::LocationWithin { .. } => {
                false
            }
            Node::Attribute(_)
            | Node::Identity { .. }
            | Node::Consent(_)
            | Node::Device { .. }
            | Node::Audience { .. } => false,
        }
    }
}

/// Why a node of a criteria tree holds or not for one profile at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// What the node asks, in words ("custom_event 'search' at least 1 time(s) ...").
    pub criterion: String,
    pub matched: bool,
    /// The values and counts that decided it.
    pub detail: String,
    /// When time alone may change this node's answer.
    pub next_change: Option<TimestampMs>,
    pub children: Vec<Explanation>,
}

impl Node {
    /// The evaluation of [`Node::evaluate`], node by node, with what decided each answer.
    pub fn explain(&self, profile: &ProfileState, ctx: &EvalContext) -> Explanation {
        let outcome = self.evaluate(profile, ctx);
        let mut children = Vec::new();
        let (criterion, detail) = match self {
            Node::And(c) | Node::Or(c) => {
                children = c.iter().map(|n| n.explain(profile, ctx)).collect();
                let held = children.iter().filter(|e| e.matched).count();
                let op = if matches!(self, Node::And(_)) {
                    "all of"
                } else {
                    "any of"
                };
                (op.to_string(), format!("{held} of {} hold", children.len()))
            }
            Node::Not(c) => {
                let child = c.explain(profile, ctx);
                let detail = if child.matched {
                    "the excluded criterion holds".to_string()
                } else {
                    "the excluded criterion does not hold".to_string()
                };
                children.push(child);
                ("exclude".to_string(), detail)
            }
            Node::Event(e) => {
                let (count, _) = e.count(profile, ctx);
                let mut what = e.event_type.clone();
                if !e.name.is_empty() {
                    what.push_str(&format!(" '{}'", e.name));
                }
                if let Some(t) = &e.custom_event_type {
                    what.push_str(&format!(" ({t})"));
                }
                (
                    format!("{what} {:?} in {:?}", e.count, e.window),
                    format!("counted {count}"),
                )
            }
            Node::Attribute(c) => (
                format!("user attribute '{}' {:?}", c.name, c.test),
                format!("value {:?}", profile.attribute(&c.name)),
            ),
            Node::Identity {
                identity_type,
                test,
            } => (
                format!("identity '{identity_type}' {test:?}"),
                format!("values {:?}", profile.identities.get(identity_type)),
            ),
            Node::Consent(t) => (
                format!("consent {t:?}"),
                format!(
                    "gdpr {:?}, ccpa opt-out {:?}",
                    profile
                        .consent
                        .gdpr
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.consented))
                        .collect::<Vec<_>>(),
                    profile.consent.ccpa_data_sale_opt_out
                ),
            ),
            Node::Device { field, test } => (
                format!("device {field} {test:?}"),
                format!("value {:?}", device_field(profile, field)),
            ),
            Node::FirstSeen(w) => (
                format!("first seen in {w:?}"),
                format!("first seen at {} ms", profile.first_seen_ms),
            ),
            Node::CartAbandonment {
                wait_ms,
                any_action,
            } => (
                format!(
                    "added to cart, then no {} for {} minutes",
                    if *any_action {
                        "product action"
                    } else {
                        "purchase"
                    },
                    wait_ms / 60_000
                ),
                format!(
                    "last add to cart at {:?} ms",
                    last_in_retention(profile, "commerce_event:add_to_cart", ctx)
                ),
            ),
            Node::Calculated { key, spec, test } => {
                let (value, _) =
                    crate::calculated::value_of(profile.calculated.get(key), spec, ctx.now);
                (
                    format!(
                        "calculated attribute '{key}' ({:?}) {test:?}",
                        spec.calculation
                    ),
                    format!("value {value:?}"),
                )
            }
            Node::Attribution {
                uninstall,
                field,
                test,
            } => (
                format!(
                    "{} attribution {} {test:?}",
                    if *uninstall { "uninstall" } else { "install" },
                    field.as_deref().unwrap_or("(any)")
                ),
                format!(
                    "value {:?}",
                    attribution_value(profile, *uninstall, field.as_deref())
                ),
            ),
            Node::LocationField { field, test } => (
                format!("location {field} {test:?}"),
                format!("value {:?}", location_field(profile, field)),
            ),
            Node::LocationWithin {
                radius_km, label, ..
            } => (
                format!("within {radius_km:.1} km of {label}"),
                match (profile.location.latitude, profile.location.longitude) {
                    (Some(lat), Some(lon)) => format!("at ({lat}, {lon})"),
                    _ => "no known position".to_string(),
                },
            ),
            Node::Audience { id, member } => (
                format!("{} audience {id}", if *member { "in" } else { "not in" }),
                format!(
                    "member: {}",
                    profile.memberships.get(id).is_some_and(|r| r.member)
                ),
            ),
        };
        Explanation {
            criterion,
            matched: outcome.matched,
            detail,
            next_change: outcome.next_change,
            children,
        }
    }
}

/// The latest occurrence of a history key within retention, at `now`.
fn last_in_retention(profile: &ProfileState, key: &str, ctx: &EvalContext) -> Option<i64> {
    profile
        .history
        .get(key)?
        .occurrences()
        .map(|(t, _)| t)
        .filter(|&t| t <= ctx.now && t >= ctx.now - ctx.retention_ms)
        .last()
}

/// Cart abandonment: the latest add to cart (in retention) is followed by no purchase (or no
/// other product action) and is at least `wait_ms` old.
fn cart_abandonment(
    profile: &ProfileState,
    ctx: &EvalContext,
    wait_ms: i64,
    any_action: bool,
) -> Outcome {
    let not_matched = Outcome {
        matched: false,
        next_change: None,
    };
    let Some(added) = last_in_retention(profile, "commerce_event:add_to_cart", ctx) else {
        return not_matched;
    };
    let prefix = if any_action {
        "commerce_event:"
    } else {
        "commerce_event:purchase"
    };
    let followed = profile
        .history
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| {
            // Only product actions: promotions and impressions are not.
            let action = &k["commerce_event:".len()..];
            action != "add_to_cart" && PRODUCT_ACTIONS.contains(&action)
        })
        .any(|(_, series)| series.occurrences().any(|(t, _)| t > added && t <= ctx.now));
    if followed {
        return not_matched;
    }
    let due = added.saturating_add(wait_ms);
    let leaves_retention = added.saturating_add(ctx.retention_ms).saturating_add(1);
    if ctx.now < due {
        Outcome {
            matched: false,
            next_change: Some(due),
        }
    } else if ctx.now < leaves_retention {
        Outcome {
            matched: true,
            next_change: Some(leaves_retention),
        }
    } else {
        not_matched
    }
}

/// The value of a device criterion's field on a profile.
fn device_field(profile: &ProfileState, field: &str) -> Option<String> {
    let d = &profile.device;
    match field {
        "platform" => d.platform.clone(),
        "os_version" => d.os_version.clone(),
        "device_model" => d.device_model.clone(),
        "device_manufacturer" => d.device_manufacturer.clone(),
        "network_carrier" => d.network_carrier.clone(),
        "brand" => d.brand.clone(),
        "locale_country" => d.locale_country.clone(),
        "locale_language" => d.locale_language.clone(),
        "app_version" => profile.app_version.clone(),
        _ => None,
    }
}

fn any_identity(test: &Test, values: Option<&Vec<String>>) -> bool {
    match (test, values) {
        (Test::Exists, v) => v.is_some_and(|v| !v.is_empty()),
        (_, None) => false,
        (t, Some(values)) => values
            .iter()
            .any(|v| t.holds(Some(&AttrValue::String(v.clone())))),
    }
}

/// Whether something that happened at `t` is inside `window` at `now` (and younger than
/// `retention_ms`), and the next instant after `now` at which that changes.
fn occurrence(window: Window, t: i64, now: i64, retention_ms: i64) -> (bool, Option<i64>) {
    let retention_exit = t.saturating_add(retention_ms).saturating_add(1);
    let (enter, exit) = match window {
        Window::Retention => (t, retention_exit),
        Window::Sliding {
            enter_after,
            exit_after,
        } => (
            t.saturating_add(enter_after),
            t.saturating_add(exit_after)
                .saturating_add(1)
                .min(retention_exit),
        ),
        Window::Fixed { from, until } => {
            if t < from || t >= until {
                return (false, None);
            }
            (t, retention_exit)
        }
    };
    if now < enter {
        (false, Some(enter))
    } else if now < exit {
        (true, Some(exit))
    } else {
        (false, None)
    }
}

impl EventNode {
    fn series<'a>(&self, profile: &'a ProfileState) -> Vec<&'a EventSeries> {
        match &self.history_key {
            HistoryKey::Exact(k) => profile.history.get(k).into_iter().collect(),
            HistoryKey::Prefix(p) => profile
                .history
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(p.as_str()))
                .map(|(_, s)| s)
                .collect(),
        }
    }

    pub fn count(&self, profile: &ProfileState, ctx: &EvalContext) -> (u64, Option<i64>) {
        let mut count = 0u64;
        let mut next = None;
        for series in self.series(profile) {
            for (t, n) in series.occurrences() {
                let (counted, change) = occurrence(self.window, t, ctx.now, ctx.retention_ms);
                if counted {
                    count += n as u64;
                }
                next = earliest(next, change);
            }
        }
        (count, next)
    }

    fn evaluate(&self, profile: &ProfileState, ctx: &EvalContext) -> Outcome {
        let (count, next_change) = self.count(profile, ctx);
        Outcome {
            matched: self.count.holds(count),
            next_change,
        }
    }
}

/// An audience ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledAudience {
    pub root: Node,
    pub reads: Vec<ReadKey>,
    /// The audiences whose membership it reads (kept apart from `reads` for the hot path).
    pub references: Vec<crate::model::AudienceId>,
    pub matchers: Vec<Matcher>,
    pub time_dependent: bool,
}

impl CompiledAudience {
    pub fn evaluate(&self, profile: &ProfileState, ctx: &EvalContext) -> Outcome {
        self.root.evaluate(profile, ctx)
    }

    /// The audiences this one reads the membership of.
    pub fn referenced_audiences(&self) -> &[crate::model::AudienceId] {
        &self.references
    }
}

// ------------------------------------------------------------------ validation and compilation

const EVENT_TYPES: &[&str] = &[
    "custom_event",
    "screen_view",
    "commerce_event",
    "session_start",
    "session_end",
    "crash_report",
    "first_run",
    "application_state_transition",
    "opt_out",
    "uninstall",
    "push_registration",
    "push_message",
    "network_performance",
    "breadcrumb",
    "profile",
    "media",
    "upgrade",
];

/// How a definition finds the calculated attributes it reads, by lowercased name.
pub type CalcLookup<'a> = &'a dyn Fn(&str) -> Option<crate::calculated::CalcSpec>;

/// Validates and compiles a definition that reads no calculated attribute.
pub fn compile(criterion: &Criterion) -> Result<CompiledAudience, DefinitionError> {
    compile_with(criterion, &|_| None)
}

/// Validates and compiles a definition, resolving calculated attributes with `calc`.
pub fn compile_with(
    criterion: &Criterion,
    calc: CalcLookup<'_>,
) -> Result<CompiledAudience, DefinitionError> {
    let root = compile_node(criterion, "criteria", calc)?;
    let mut reads = Vec::new();
    let mut matchers = Vec::new();
    root.collect_reads(&mut reads);
    collect_matchers(criterion, &mut matchers);
    reads.sort();
    reads.dedup();
    let time_dependent = root.is_time_dependent();
    let references = reads
        .iter()
        .filter_map(|r| match r {
            ReadKey::Audience(id) => Some(*id),
            _ => None,
        })
        .collect();
    Ok(CompiledAudience {
        root,
        reads,
        references,
        matchers,
        time_dependent,
    })
}

fn collect_matchers(criterion: &Criterion, out: &mut Vec<Matcher>) {
    match criterion {
        Criterion::And(c) | Criterion::Or(c) => c.iter().for_each(|n| collect_matchers(n, out)),
        Criterion::Exclude(c) => collect_matchers(c, out),
        Criterion::Event(e) if e.has_conditions() => {
            // Validated already: compiling again cannot fail.
            if let Ok(m) = matcher_of(e, "") {
                if !out.iter().any(|x| x.history_key == m.history_key) {
                    out.push(m);
                }
            }
        }
        _ => {}
    }
}

fn compile_node(
    criterion: &Criterion,
    path: &str,
    calc: CalcLookup<'_>,
) -> Result<Node, DefinitionError> {
    Ok(match criterion {
        Criterion::And(children) | Criterion::Or(children) => {
            let op = if matches!(criterion, Criterion::And(_)) {
                "and"
            } else {
                "or"
            };
            if children.is_empty() {
                return Err(DefinitionError::new(
                    format!("{path}.{op}"),
                    "needs at least one criterion",
                ));
            }
            let nodes = children
                .iter()
                .enumerate()
                .map(|(i, c)| compile_node(c, &format!("{path}.{op}[{i}]"), calc))
                .collect::<Result<Vec<_>, _>>()?;
            if op == "and" {
                Node::And(nodes)
            } else {
                Node::Or(nodes)
            }
        }
        Criterion::Exclude(child) => Node::Not(Box::new(compile_node(
            child,
            &format!("{path}.exclude"),
            calc,
        )?)),
        Criterion::UserAttribute(cond) => {
            Node::Attribute(compile_condition(cond, &format!("{path}.user_attribute"))?)
        }
        Criterion::Identity(id) => {
            let path = format!("{path}.identity");
            let identity_type = id.identity_type.trim().to_lowercase();
            if identity_type.is_empty() {
                return Err(DefinitionError::new(
                    format!("{path}.type"),
                    "must not be empty",
                ));
            }
            let cond = Condition {
                name: identity_type.clone(),
                op: id.op.unwrap_or(Operator::Exists),
                value: id.value.clone(),
            };
            let compiled = compile_condition(&cond, &path)?;
            if matches!(
                compiled.test,
                Test::NumberCmp(..) | Test::NumberBetween(..) | Test::IsBool(_) | Test::DateIn(..)
            ) {
                return Err(DefinitionError::new(
                    format!("{path}.op"),
                    "identities take string operators, exists or not_exists",
                ));
            }
            Node::Identity {
                identity_type,
                test: compiled.test,
            }
        }
        Criterion::Event(e) => Node::Event(compile_event(e, &format!("{path}.event"))?),
        Criterion::Consent(c) => Node::Consent(compile_consent(c, &format!("{path}.consent"))?),
        Criterion::Device(d) => {
            let path = format!("{path}.device");
            let field = d.field.trim().to_lowercase();
            if !DEVICE_FIELDS.contains(&field.as_str()) {
                return Err(DefinitionError::new(
                    format!("{path}.field"),
                    format!(
                        "unknown device field \"{}\" (one of: {})",
                        d.field,
                        DEVICE_FIELDS.join(", ")
                    ),
                ));
            }
            let cond = Condition {
                name: field.clone(),
                op: d.op,
                value: d.value.clone(),
            };
            Node::Device {
                field,
                test: compile_condition(&cond, &path)?.test,
            }
        }
        Criterion::Audience(r) => {
            if r.id == 0 {
                return Err(DefinitionError::new(
                    format!("{path}.audience.id"),
                    "audience ids start at 1",
                ));
            }
            Node::Audience {
                id: r.id,
                member: r.member,
            }
        }
        Criterion::CartAbandonment(c) => {
            let path = format!("{path}.cart_abandonment");
            if c.wait_minutes == 0 {
                return Err(DefinitionError::new(
                    format!("{path}.wait_minutes"),
                    "must be at least 1",
                ));
            }
            let any_action = match c.without.as_deref().map(str::to_lowercase).as_deref() {
                None | Some("purchase") => false,
                Some("product_action") => true,
                Some(other) => {
                    return Err(DefinitionError::new(
                        format!("{path}.without"),
                        format!("\"{other}\" is not purchase or product_action"),
                    ))
                }
            };
            Node::CartAbandonment {
                wait_ms: c.wait_minutes as i64 * 60_000,
                any_action,
            }
        }
        Criterion::FirstSeen(window) => {
            Node::FirstSeen(compile_window(Some(window), &format!("{path}.first_seen"))?)
        }
        Criterion::CalculatedAttribute(cond) => {
            let path = format!("{path}.calculated_attribute");
            let compiled = compile_condition(cond, &path)?;
            let spec = calc(&compiled.name).ok_or_else(|| {
                DefinitionError::new(
                    format!("{path}.name"),
                    format!(
                        "calculated attribute \"{}\" is not defined",
                        cond.name.trim()
                    ),
                )
            })?;
            Node::Calculated {
                key: compiled.name,
                spec,
                test: compiled.test,
            }
        }
        Criterion::Attribution(a) => {
            let path = format!("{path}.attribution");
            let uninstall = match a.kind.trim().to_lowercase().as_str() {
                "install" => false,
                "uninstall" => true,
                other => {
                    return Err(DefinitionError::new(
                        format!("{path}.kind"),
                        format!("\"{other}\" is not install or uninstall"),
                    ))
                }
            };
            let field = match a.field.as_deref().map(|f| f.trim().to_lowercase()) {
                None => None,
                Some(f) if f == "publisher" || f == "campaign" => Some(f),
                Some(f) => {
                    return Err(DefinitionError::new(
                        format!("{path}.field"),
                        format!("\"{f}\" is not publisher or campaign"),
                    ))
                }
            };
            let op = a.op.unwrap_or(Operator::Exists);
            if field.is_none() && !matches!(op, Operator::Exists | Operator::NotExists) {
                return Err(DefinitionError::new(
                    format!("{path}.op"),
                    "without a field, attribution takes exists or not_exists",
                ));
            }
            let cond = Condition {
                name: field.clone().unwrap_or_else(|| a.kind.clone()),
                op,
                value: a.value.clone(),
            };
            Node::Attribution {
                uninstall,
                field,
                test: string_test(&cond, &path)?,
            }
        }
        Criterion::Location(l) => compile_location(l, &format!("{path}.location"))?,
    })
}

/// A condition whose operator must be a string operator, exists or not_exists.
fn string_test(cond: &Condition, path: &str) -> Result<Test, DefinitionError> {
    let compiled = compile_condition(cond, path)?;
    let numeric = |t: &Test| {
        matches!(
            t,
            Test::NumberCmp(..)
                | Test::NumberBetween(..)
                | Test::IsBool(_)
                | Test::VersionCmp(..)
                | Test::DateIn(..)
        )
    };
    match &compiled.test {
        Test::Not(inner) if numeric(inner) => {}
        t if !numeric(t) => return Ok(compiled.test),
        _ => {}
    }
    Err(DefinitionError::new(
        format!("{path}.op"),
        format!(
            "operator {} does not apply here: use a string operator, exists or not_exists",
            op_name(cond.op)
        ),
    ))
}

fn compile_location(l: &LocationCriterion, path: &str) -> Result<Node, DefinitionError> {
    match (&l.field, &l.within) {
        (Some(field), None) => {
            let field = field.trim().to_lowercase();
            if !LOCATION_FIELDS.contains(&field.as_str()) {
                return Err(DefinitionError::new(
                    format!("{path}.field"),
                    format!(
                        "unknown location field \"{field}\" (one of: {})",
                        LOCATION_FIELDS.join(", ")
                    ),
                ));
            }
            let cond = Condition {
                name: field.clone(),
                op: l.op.unwrap_or(Operator::ExactMatch),
                value: l.value.clone(),
            };
            Ok(Node::LocationField {
                test: string_test(&cond, path)?,
                field,
            })
        }
        (None, Some(w)) => {
            let path = format!("{path}.within");
            if l.op.is_some() || l.value.is_some() {
                return Err(DefinitionError::new(
                    &path,
                    "within takes no op or value: distance, unit and a point or a city",
                ));
            }
            if !(w.distance.is_finite() && w.distance > 0.0) {
                return Err(DefinitionError::new(
                    format!("{path}.distance"),
                    format!("{} is not a positive distance", w.distance),
                ));
            }
            let per_unit = match w
                .unit
                .as_deref()
                .map(|u| u.trim().to_lowercase())
                .as_deref()
            {
                None | Some("mi") | Some("miles") => crate::geo::KM_PER_MILE,
                Some("km") | Some("kilometers") | Some("kilometres") => 1.0,
                Some(other) => {
                    return Err(DefinitionError::new(
                        format!("{path}.unit"),
                        format!("\"{other}\" is not mi or km"),
                    ))
                }
            };
            let (latitude, longitude, label) = match (w.latitude, w.longitude, &w.city) {
                (Some(lat), Some(lon), None) => {
                    if !(-90.0..=90.0).contains(&lat) {
                        return Err(DefinitionError::new(
                            format!("{path}.latitude"),
                            format!("{lat} is not a latitude (-90 to 90)"),
                        ));
                    }
                    if !(-180.0..=180.0).contains(&lon) {
                        return Err(DefinitionError::new(
                            format!("{path}.longitude"),
                            format!("{lon} is not a longitude (-180 to 180)"),
                        ));
                    }
                    (lat, lon, format!("({lat}, {lon})"))
                }
                (None, None, Some(city)) => {
                    let found = crate::geo::find_city(city)
                        .map_err(|e| DefinitionError::new(format!("{path}.city"), e))?;
                    (
                        found.latitude,
                        found.longitude,
                        format!("{}, {}-{}", found.name, found.country, found.admin1),
                    )
                }
                _ => {
                    return Err(DefinitionError::new(
                        &path,
                        "give either latitude and longitude, or a city",
                    ))
                }
            };
            Ok(Node::LocationWithin {
                latitude,
                longitude,
                radius_km: w.distance * per_unit,
                label,
            })
        }
        _ => Err(DefinitionError::new(
            path,
            "a location criterion has either a field (city, state, zip, dma, country) or within",
        )),
    }
}

fn matcher_of(e: &EventCriterion, path: &str) -> Result<Matcher, DefinitionError> {
    let conditions = e
        .attributes
        .iter()
        .enumerate()
        .map(|(i, c)| compile_condition(c, &format!("{path}.attributes[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let fields = |list: &[Condition], allowed: &[&str], what: &str| {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                let field = format!("{path}.{what}[{i}]");
                if e.event_type != "commerce_event" {
                    return Err(DefinitionError::new(
                        &field,
                        format!("only commerce events have {what} fields"),
                    ));
                }
                let compiled = compile_condition(c, &field)?;
                if !allowed.contains(&compiled.name.as_str()) {
                    return Err(DefinitionError::new(
                        format!("{field}.name"),
                        format!(
                            "unknown {what} field \"{}\" (one of: {})",
                            c.name,
                            allowed.join(", ")
                        ),
                    ));
                }
                Ok(compiled)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let product_conditions = fields(&e.product, PRODUCT_FIELDS, "product")?;
    let transaction_conditions = fields(&e.transaction, TRANSACTION_FIELDS, "transaction")?;
    let promotion_conditions = fields(&e.promotion, PROMOTION_FIELDS, "promotion")?;
    if !promotion_conditions.is_empty() && e.promotion_action.is_none() {
        return Err(DefinitionError::new(
            format!("{path}.promotion"),
            "promotion conditions need a promotion_action",
        ));
    }
    if e.promotion_action.is_some() {
        for (list, what) in [(&e.product, "product"), (&e.transaction, "transaction")] {
            if !list.is_empty() {
                return Err(DefinitionError::new(
                    format!("{path}.{what}"),
                    format!("promotions have no {what}: use promotion conditions"),
                ));
            }
        }
    }
    if e.impression && !transaction_conditions.is_empty() {
        return Err(DefinitionError::new(
            format!("{path}.transaction"),
            "impressions have no transaction",
        ));
    }
    let impression_list = e
        .impression_list
        .as_deref()
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty());
    let name = selector_name(e);
    let custom_event_type = e.custom_event_type.as_ref().map(|t| t.to_lowercase());
    // The key is stored in profiles: it must be stable across builds, so it is FNV-1a of the
    // canonical form, not the standard library's hasher (whose output may change).
    let mut canonical = format!(
        "{}|{name}|{custom_event_type:?}|{conditions:?}",
        e.event_type
    );
    if !product_conditions.is_empty() || !transaction_conditions.is_empty() {
        canonical.push_str(&format!(
            "|{product_conditions:?}|{transaction_conditions:?}"
        ));
    }
    if !promotion_conditions.is_empty() || impression_list.is_some() {
        canonical.push_str(&format!("|{promotion_conditions:?}|{impression_list:?}"));
    }
    Ok(Matcher {
        history_key: format!("m:{:016x}", fnv1a64(canonical.as_bytes())),
        event_type: e.event_type.clone(),
        name,
        custom_event_type,
        conditions,
        product_conditions,
        transaction_conditions,
        promotion_conditions,
        impression_list,
    })
}

impl EventCriterion {
    /// Whether the criterion needs its own series (conditions beyond the event's name).
    fn has_conditions(&self) -> bool {
        !self.attributes.is_empty()
            || !self.product.is_empty()
            || !self.transaction.is_empty()
            || !self.promotion.is_empty()
            || self.impression_list.is_some()
    }
}

/// The events an event criterion selects, as a matcher (its count and time are not read):
/// what calculated attributes fold.
pub fn event_selector(e: &EventCriterion, path: &str) -> Result<Matcher, DefinitionError> {
    let mut e = e.clone();
    normalize_event(&mut e, path)?;
    validate_selector(&e, path)?;
    matcher_of(&e, path)
}

/// 64-bit FNV-1a: small, stable, good enough to key matcher series.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn selector_name(e: &EventCriterion) -> String {
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

fn parse_date(s: &str, field: &str) -> Result<i64, DefinitionError> {
    let date = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
        DefinitionError::new(
            field,
            format!("\"{s}\" is not a date in the form YYYY-MM-DD"),
        )
    })?;
    Ok(date
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc().timestamp_millis())
        .unwrap_or_default())
}

fn compile_event(e: &EventCriterion, path: &str) -> Result<EventNode, DefinitionError> {
    validate_selector(e, path)?;
    let count = e.count.unwrap_or(Count::AtLeast(1));
    let window = compile_window(e.time.as_ref(), &format!("{path}.time"))?;
    let name = selector_name(e);
    let custom_event_type = e.custom_event_type.as_ref().map(|t| t.to_lowercase());
    let history_key = if e.has_conditions() {
        HistoryKey::Exact(matcher_of(e, path)?.history_key)
    } else if e.event_type == "custom_event" {
        match &custom_event_type {
            Some(t) => HistoryKey::Exact(format!("custom_event:{name}{KEY_SEP}{t}")),
            None => HistoryKey::Prefix(format!("custom_event:{name}{KEY_SEP}")),
        }
    } else if name.is_empty() {
        HistoryKey::Exact(e.event_type.clone())
    } else {
        HistoryKey::Exact(format!("{}:{name}", e.event_type))
    };
    Ok(EventNode {
        event_type: e.event_type.clone(),
        name,
        custom_event_type,
        history_key,
        count,
        window,
    })
}

/// Checks what selects the events: the type, and the name or action each type needs.
fn validate_selector(e: &EventCriterion, path: &str) -> Result<(), DefinitionError> {
    if !EVENT_TYPES.contains(&e.event_type.as_str()) {
        return Err(DefinitionError::new(
            format!("{path}.type"),
            format!(
                "unknown event type \"{}\" (one of: {})",
                e.event_type,
                EVENT_TYPES.join(", ")
            ),
        ));
    }
    match e.event_type.as_str() {
        "custom_event" | "screen_view" if e.name.as_deref().is_none_or(|n| n.trim().is_empty()) => {
            return Err(DefinitionError::new(
                format!("{path}.name"),
                format!("a {} criterion needs the event's name", e.event_type),
            ));
        }
        "commerce_event" if e.impression || e.promotion_action.is_some() => {
            if e.product_action.is_some() || (e.impression && e.promotion_action.is_some()) {
                return Err(DefinitionError::new(
                    format!("{path}.product_action"),
                    "a commerce_event criterion selects one of product_action, promotion_action or impression",
                ));
            }
            if let Some(a) = &e.promotion_action {
                if !matches!(a.trim().to_lowercase().as_str(), "view" | "click") {
                    return Err(DefinitionError::new(
                        format!("{path}.promotion_action"),
                        format!("unknown promotion action \"{a}\" (view or click)"),
                    ));
                }
            }
        }
        "commerce_event" => match e.product_action.as_deref() {
            Some(a) if PRODUCT_ACTIONS.contains(&a.to_lowercase().as_str()) => {}
            Some(a) => {
                return Err(DefinitionError::new(
                    format!("{path}.product_action"),
                    format!(
                        "unknown product action \"{a}\" (one of: {})",
                        PRODUCT_ACTIONS.join(", ")
                    ),
                ))
            }
            None => {
                return Err(DefinitionError::new(
                    format!("{path}.product_action"),
                    "a commerce_event criterion needs a product_action, a promotion_action or impression: true",
                ))
            }
        },
        _ => {}
    }
    if e.custom_event_type.is_some() && e.event_type != "custom_event" {
        return Err(DefinitionError::new(
            format!("{path}.custom_event_type"),
            "only custom events have a custom event type",
        ));
    }
    if e.name.is_some() && !matches!(e.event_type.as_str(), "custom_event" | "screen_view") {
        return Err(DefinitionError::new(
            format!("{path}.name"),
            format!("{} events are not selected by name", e.event_type),
        ));
    }
    if e.event_type != "commerce_event"
        && (e.promotion_action.is_some() || e.impression || e.impression_list.is_some())
    {
        return Err(DefinitionError::new(
            format!("{path}.type"),
            "promotions and impressions are commerce events",
        ));
    }
    if e.event_type == "upgrade" && e.has_conditions() {
        return Err(DefinitionError::new(
            format!("{path}.attributes"),
            "upgrades are derived from app versions and carry no attributes",
        ));
    }
    if e.impression_list.is_some() && !e.impression {
        return Err(DefinitionError::new(
            format!("{path}.impression_list"),
            "impression_list needs impression: true",
        ));
    }
    Ok(())
}

/// Resolves a time window; `path` names the window in errors.
fn compile_window(time: Option<&TimeWindow>, path: &str) -> Result<Window, DefinitionError> {
    Ok(match time {
        None => Window::Retention,
        Some(TimeWindow::WithinLastDays(n)) => {
            if *n == 0 {
                return Err(DefinitionError::new(
                    format!("{path}.within_last_days"),
                    "must be at least 1",
                ));
            }
            Window::Sliding {
                enter_after: 0,
                exit_after: *n as i64 * DAY_MS,
            }
        }
        Some(TimeWindow::BetweenDaysAgo([a, b])) => {
            if a >= b {
                return Err(DefinitionError::new(
                    format!("{path}.between_days_ago"),
                    format!("the first bound ({a}) must be less than the second ({b})"),
                ));
            }
            Window::Sliding {
                enter_after: *a as i64 * DAY_MS,
                exit_after: *b as i64 * DAY_MS,
            }
        }
        Some(TimeWindow::Before(d)) => Window::Fixed {
            from: i64::MIN,
            until: parse_date(d, &format!("{path}.before"))?,
        },
        Some(TimeWindow::After(d)) => Window::Fixed {
            from: parse_date(d, &format!("{path}.after"))?,
            until: i64::MAX,
        },
        Some(TimeWindow::On(d)) => {
            let from = parse_date(d, &format!("{path}.on"))?;
            Window::Fixed {
                from,
                until: from + DAY_MS,
            }
        }
        Some(TimeWindow::Between([a, b])) => {
            let from = parse_date(a, &format!("{path}.between[0]"))?;
            let last = parse_date(b, &format!("{path}.between[1]"))?;
            if last < from {
                return Err(DefinitionError::new(
                    format!("{path}.between"),
                    format!("{b} is before {a}"),
                ));
            }
            Window::Fixed {
                from,
                until: last + DAY_MS,
            }
        }
    })
}

fn compile_consent(c: &ConsentCriterion, path: &str) -> Result<ConsentTest, DefinitionError> {
    let state = c.state.trim().to_lowercase();
    match c.regulation.trim().to_lowercase().as_str() {
        "gdpr" => {
            let purpose = c
                .purpose
                .as_deref()
                .map(|p| p.trim().to_lowercase())
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    DefinitionError::new(
                        format!("{path}.purpose"),
                        "a gdpr criterion needs a purpose",
                    )
                })?;
            let state = match state.as_str() {
                "consented" => Some(true),
                "not_consented" => Some(false),
                "no_state" => None,
                other => {
                    return Err(DefinitionError::new(
                        format!("{path}.state"),
                        format!(
                            "\"{other}\" is not a gdpr state (consented, not_consented, no_state)"
                        ),
                    ))
                }
            };
            Ok(ConsentTest::Gdpr { purpose, state })
        }
        "ccpa" => {
            if c.purpose.is_some() {
                return Err(DefinitionError::new(
                    format!("{path}.purpose"),
                    "ccpa has no purposes: only the data-sale opt-out",
                ));
            }
            let state = match state.as_str() {
                "opted_out" => Some(true),
                "not_opted_out" => Some(false),
                "no_state" => None,
                other => {
                    return Err(DefinitionError::new(
                        format!("{path}.state"),
                        format!(
                            "\"{other}\" is not a ccpa state (opted_out, not_opted_out, no_state)"
                        ),
                    ))
                }
            };
            Ok(ConsentTest::Ccpa { state })
        }
        other => Err(DefinitionError::new(
            format!("{path}.regulation"),
            format!("\"{other}\" is not a regulation (gdpr, ccpa)"),
        )),
    }
}

fn compile_condition(cond: &Condition, path: &str) -> Result<CompiledCondition, DefinitionError> {
    let name = cond.name.trim().to_lowercase();
    if name.is_empty() {
        return Err(DefinitionError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    let value_field = format!("{path}.value");
    let string_value = || -> Result<String, DefinitionError> {
        match &cond.value {
            Some(serde_json::Value::String(s)) => Ok(s.to_lowercase()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
            Some(other) => Err(DefinitionError::new(
                &value_field,
                format!("operator {:?} needs a string, got {other}", cond.op),
            )),
            None => Err(DefinitionError::new(
                &value_field,
                format!("operator {} needs a value", op_name(cond.op)),
            )),
        }
    };
    let number_value = |v: Option<&serde_json::Value>| -> Result<f64, DefinitionError> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_f64().ok_or_else(|| {
                DefinitionError::new(&value_field, format!("{n} is not a finite number"))
            }),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| {
                    DefinitionError::new(&value_field, format!("\"{s}\" is not a number"))
                }),
            Some(other) => Err(DefinitionError::new(
                &value_field,
                format!("operator {} needs a number, got {other}", op_name(cond.op)),
            )),
            None => Err(DefinitionError::new(
                &value_field,
                format!("operator {} needs a number", op_name(cond.op)),
            )),
        }
    };
    use std::cmp::Ordering::*;
    let test = match cond.op {
        Operator::Exists => Test::Exists,
        Operator::NotExists => Test::Not(Box::new(Test::Exists)),
        Operator::Contains => Test::Contains(string_value()?),
        Operator::DoesNotContain => Test::Not(Box::new(Test::Contains(string_value()?))),
        Operator::ExactMatch => Test::ExactMatch(string_value()?),
        Operator::DoesNotMatch => Test::Not(Box::new(Test::ExactMatch(string_value()?))),
        Operator::Pattern => Test::Pattern(string_value()?),
        Operator::Includes => Test::Includes(string_value()?),
        Operator::DoesNotInclude => Test::Not(Box::new(Test::Includes(string_value()?))),
        Operator::PartialMatch => Test::PartialMatch(string_value()?),
        Operator::Equals => match &cond.value {
            Some(serde_json::Value::Bool(b)) => Test::IsBool(*b),
            v => Test::NumberCmp(Equal, true, number_value(v.as_ref())?),
        },
        Operator::NotEquals => match &cond.value {
            Some(serde_json::Value::Bool(b)) => Test::Not(Box::new(Test::IsBool(*b))),
            v => Test::Not(Box::new(Test::NumberCmp(
                Equal,
                true,
                number_value(v.as_ref())?,
            ))),
        },
        Operator::GreaterThan => {
            Test::NumberCmp(Greater, false, number_value(cond.value.as_ref())?)
        }
        Operator::GreaterThanOrEqual => {
            Test::NumberCmp(Greater, true, number_value(cond.value.as_ref())?)
        }
        Operator::LessThan => Test::NumberCmp(Less, false, number_value(cond.value.as_ref())?),
        Operator::LessThanOrEqual => {
            Test::NumberCmp(Less, true, number_value(cond.value.as_ref())?)
        }
        Operator::Between => match &cond.value {
            Some(serde_json::Value::Array(bounds)) if bounds.len() == 2 => {
                let lo = number_value(bounds.first())?;
                let hi = number_value(bounds.get(1))?;
                if lo > hi {
                    return Err(DefinitionError::new(
                        &value_field,
                        format!("lower bound {lo} is above upper bound {hi}"),
                    ));
                }
                Test::NumberBetween(lo, hi)
            }
            _ => {
                return Err(DefinitionError::new(
                    &value_field,
                    "operator between needs [low, high]",
                ))
            }
        },
        Operator::DateBefore => Test::DateIn(i64::MIN, parse_date(&string_value()?, &value_field)?),
        Operator::DateAfter => Test::DateIn(parse_date(&string_value()?, &value_field)?, i64::MAX),
        Operator::DateOn => {
            let day = parse_date(&string_value()?, &value_field)?;
            Test::DateIn(day, day + DAY_MS)
        }
        Operator::DateBetween => match &cond.value {
            Some(serde_json::Value::Array(bounds)) if bounds.len() == 2 => {
                let text = |i: usize| bounds[i].as_str().unwrap_or_default().to_string();
                let from = parse_date(&text(0), &format!("{value_field}[0]"))?;
                let last = parse_date(&text(1), &format!("{value_field}[1]"))?;
                if last < from {
                    return Err(DefinitionError::new(
                        &value_field,
                        format!("{} is before {}", text(1), text(0)),
                    ));
                }
                Test::DateIn(from, last + DAY_MS)
            }
            _ => {
                return Err(DefinitionError::new(
                    &value_field,
                    "operator date_between needs [\"YYYY-MM-DD\", \"YYYY-MM-DD\"]",
                ))
            }
        },
        Operator::IsTrue => Test::IsBool(true),
        Operator::IsFalse => Test::IsBool(false),
        Operator::VersionEquals
        | Operator::VersionGreaterThan
        | Operator::VersionGreaterThanOrEqual
        | Operator::VersionLessThan
        | Operator::VersionLessThanOrEqual => {
            let text = string_value()?;
            let version = parse_version(&text).ok_or_else(|| {
                DefinitionError::new(
                    &value_field,
                    format!("\"{text}\" is not a version like 16.4.1"),
                )
            })?;
            let (ord, or_equal) = match cond.op {
                Operator::VersionEquals => (Equal, true),
                Operator::VersionGreaterThan => (Greater, false),
                Operator::VersionGreaterThanOrEqual => (Greater, true),
                Operator::VersionLessThan => (Less, false),
                _ => (Less, true),
            };
            Test::VersionCmp(ord, or_equal, version)
        }
    };
    Ok(CompiledCondition { name, test })
}

fn op_name(op: Operator) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
