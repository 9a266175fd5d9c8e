//! The compiled form of an audience: the node tree evaluation walks, the matchers that pick
//! events, and what an audience reads (for the index from changes to audiences).

use super::definition::*;
use super::values::*;
use crate::model::{AttrValue, TimestampMs};
use crate::profile::ProfileState;

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
    /// The workspaces the profile was seen in.
    Workspaces,
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
    /// A scoped audience's criterion: the inputs or workspaces whose events it counts
    /// (see [`super::Scope`]); `None`: every message's.
    pub source: Option<EventSource>,
}

/// The messages whose events a scoped event criterion counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
    /// Messages stamped with one of these inputs.
    Inputs(Vec<String>),
    /// Messages stamped with an input of one of these workspaces.
    Workspaces(Vec<String>),
    /// Messages stamped with one of these inputs, of this workspace (a criterion of a multi
    /// workspace audience that picked it).
    InputsOf {
        workspace: String,
        inputs: Vec<String>,
    },
}

impl EventSource {
    /// Whether an event of a message stamped `input` counts; an unstamped message's never does.
    pub fn admits(&self, input: Option<&crate::model::InputTag>) -> bool {
        match (self, input) {
            (_, None) => false,
            (EventSource::Inputs(names), Some(tag)) => names.contains(&tag.input),
            (EventSource::Workspaces(names), Some(tag)) => names.contains(&tag.workspace),
            (EventSource::InputsOf { workspace, inputs }, Some(tag)) => {
                tag.workspace == *workspace && inputs.contains(&tag.input)
            }
        }
    }

    /// The words explanations use: `input "a" or "b"`, `workspace "w1"`.
    pub fn describe(&self) -> String {
        let quoted = |names: &[String]| -> String {
            let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            quoted.join(" or ")
        };
        match self {
            EventSource::Inputs(n) => format!("input {}", quoted(n)),
            EventSource::Workspaces(n) => format!("workspace {}", quoted(n)),
            EventSource::InputsOf { workspace, inputs } => {
                format!("input {} of workspace \"{workspace}\"", quoted(inputs))
            }
        }
    }
}

/// 64-bit FNV-1a: small, stable, good enough to key matcher series.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    /// Whether `event`, of a message stamped `input`, counts for this criterion.
    pub fn accepts(
        &self,
        event: &crate::model::Event,
        input: Option<&crate::model::InputTag>,
    ) -> bool {
        if self.source.as_ref().is_some_and(|s| !s.admits(input)) {
            return false;
        }
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
    /// The selector, lowercased: event name, screen name or product action.
    pub name: String,
    /// The selector as the definition wrote it, for explanations.
    pub label: String,
    pub custom_event_type: Option<String>,
    /// The profile history keys holding this criterion's occurrences; a key ending in the
    /// separator is a prefix (custom events of any custom event type).
    pub history_key: HistoryKey,
    pub count: Count,
    pub window: Window,
    /// In a scoped audience: the sources whose events count (see [`super::Scope`]).
    pub source: Option<EventSource>,
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
    /// A user attribute as one workspace's messages set it.
    WorkspaceAttribute {
        workspace: String,
        cond: CompiledCondition,
    },
    Identity {
        identity_type: String,
        test: Test,
        /// The workspace whose identities it reads (a multi workspace audience's pick);
        /// `None`: the profile's, from every source.
        workspace: Option<String>,
    },
    Consent {
        test: ConsentTest,
        /// The workspace whose data it reads (a multi workspace audience's pick); `None`: the
        /// profile's latest from any source.
        workspace: Option<String>,
    },
    Device {
        field: String,
        test: Test,
        /// The workspace whose data it reads (a multi workspace audience's pick); `None`: the
        /// profile's latest from any source.
        workspace: Option<String>,
    },
    FirstSeen(Window),
    Audience {
        id: crate::model::AudienceId,
        member: bool,
    },
    CartAbandonment {
        wait_ms: i64,
        any_action: bool,
        /// A scoped audience's: the series its source's commerce events keep; `None`: the
        /// event keys' (every message's).
        series: Option<CartSeries>,
    },
    /// A calculated attribute's value at evaluation time.
    Calculated {
        key: String,
        spec: crate::aggregate::CalcSpec,
        test: Test,
    },
    /// Install or uninstall attribution; without a field the test reads whether it exists.
    Attribution {
        uninstall: bool,
        field: Option<String>,
        test: Test,
        /// The workspace whose data it reads (a multi workspace audience's pick); `None`: the
        /// profile's latest from any source.
        workspace: Option<String>,
    },
    LocationField {
        field: String,
        test: Test,
        /// The workspace whose data it reads (a multi workspace audience's pick); `None`: the
        /// profile's latest from any source.
        workspace: Option<String>,
    },
    /// A scoped audience's gate: the profile was seen in one of these workspaces.
    SeenIn(Vec<String>),
    LocationWithin {
        latitude: f64,
        longitude: f64,
        radius_km: f64,
        /// What the definition named ("Paris, FR" or the coordinates), for explanations.
        label: String,
        /// The workspace whose data it reads (a multi workspace audience's pick); `None`: the
        /// profile's latest from any source.
        workspace: Option<String>,
    },
}

/// The series a scoped cart abandonment reads, kept by matchers of its source (made by
/// `compile`'s `cart_matchers`, keyed as the event criteria of the same actions).
#[derive(Debug, Clone, PartialEq)]
pub struct CartSeries {
    /// Adds to cart.
    pub added: String,
    /// The product actions that end an abandonment (a purchase, or any but an add).
    pub ended_by: Vec<String>,
    pub source: EventSource,
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

    /// Whether the profile is in the audience's scope: seen in one of its workspaces, or any
    /// profile for an audience without workspaces.
    pub fn scope_admits(&self, profile: &ProfileState) -> bool {
        // A scoped audience's tree is `and(seen in its workspaces, criteria)` (the gate
        // `Scope::gate` puts at the root).
        match &self.root {
            Node::And(children) => match children.first() {
                Some(Node::SeenIn(workspaces)) => {
                    workspaces.iter().any(|w| profile.workspaces.contains(w))
                }
                _ => true,
            },
            _ => true,
        }
    }

    /// The audiences this one reads the membership of.
    pub fn referenced_audiences(&self) -> &[crate::model::AudienceId] {
        &self.references
    }
}
