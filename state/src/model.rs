//! The domain vocabulary shared by the parser, the profile state machine and the evaluator.
//! Nothing here knows about Kafka, RocksDB or protobuf.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// mParticle profile id: a signed 64-bit integer.
pub type Mpid = i64;
/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = i64;
/// Audience ids are assigned by the engine, starting at 1.
pub type AudienceId = u64;

pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Product actions of mParticle commerce events, in their snake_case form.
pub const PRODUCT_ACTIONS: &[&str] = &[
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "add_to_wishlist",
    "remove_from_wishlist",
];

/// Device identity types (fields of `device_info`): a profile keeps every value seen (one per
/// device), where a user identity type keeps the latest.
pub const DEVICE_IDENTITY_TYPES: &[&str] = &[
    "android_uuid",
    "ios_advertising_id",
    "ios_idfv",
    "android_advertising_id",
    "push_token",
    "roku_advertising_id",
    "roku_publisher_id",
    "microsoft_advertising_id",
    "microsoft_publisher_id",
    "fire_advertising_id",
    "amp_id",
    "device_application_stamp",
];

/// A user attribute value. `Null` is an attribute present with no value: it EXISTS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    String(String),
    Number(f64),
    Bool(bool),
    /// A date, in milliseconds since the epoch.
    Date(TimestampMs),
    List(Vec<String>),
    Null,
}

impl AttrValue {
    /// The value as the string operators see it (lists have no single string form).
    pub fn as_text(&self) -> Option<String> {
        match self {
            AttrValue::String(s) => Some(s.clone()),
            AttrValue::Number(n) => Some(format_number(*n)),
            AttrValue::Bool(b) => Some(b.to_string()),
            AttrValue::Date(ms) => Some(ms.to_string()),
            AttrValue::List(_) | AttrValue::Null => None,
        }
    }

    /// The value as the numeric operators see it: numbers, and strings that parse as numbers.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            AttrValue::Number(n) => Some(*n),
            AttrValue::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            AttrValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            AttrValue::Date(ms) => Some(*ms as f64),
            AttrValue::List(_) | AttrValue::Null => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(b) => Some(*b),
            AttrValue::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            AttrValue::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }
}

/// Numbers print without a trailing `.0` when they are integral, as users typed them.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// What a batch says about the device. Every field is optional: absent fields leave the
/// profile's previous value in place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub platform: Option<String>,
    pub os_version: Option<String>,
    pub device_model: Option<String>,
    pub device_manufacturer: Option<String>,
    pub network_carrier: Option<String>,
    pub brand: Option<String>,
    pub locale_country: Option<String>,
    pub locale_language: Option<String>,
}

impl DeviceInfo {
    /// Overlays the fields `newer` carries; whether any changed (found without a copy: this
    /// runs for the profile and its workspace's copy on every batch).
    pub fn merge_from(&mut self, newer: &DeviceInfo) -> bool {
        fn take(slot: &mut Option<String>, v: &Option<String>) -> bool {
            let changed = v.is_some() && slot != v;
            if changed {
                slot.clone_from(v);
            }
            changed
        }
        // Every field is taken: `|`, not `||`.
        take(&mut self.platform, &newer.platform)
            | take(&mut self.os_version, &newer.os_version)
            | take(&mut self.device_model, &newer.device_model)
            | take(&mut self.device_manufacturer, &newer.device_manufacturer)
            | take(&mut self.network_carrier, &newer.network_carrier)
            | take(&mut self.brand, &newer.brand)
            | take(&mut self.locale_country, &newer.locale_country)
            | take(&mut self.locale_language, &newer.locale_language)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GdprConsent {
    pub consented: bool,
    pub timestamp_ms: Option<TimestampMs>,
    pub document: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsentState {
    /// Purpose (lowercased) to consent.
    pub gdpr: BTreeMap<String, GdprConsent>,
    pub ccpa_data_sale_opt_out: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: Option<String>,
    pub name: Option<String>,
    pub brand: Option<String>,
    pub category: Option<String>,
    pub variant: Option<String>,
    pub price: Option<f64>,
    pub quantity: Option<f64>,
}

/// A promotion of a commerce event's promotion action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: Option<String>,
    pub name: Option<String>,
    pub creative: Option<String>,
    pub position: Option<String>,
}

/// The selector names of the commerce events that are not product actions: a promotion viewed
/// or clicked, and a list of product impressions.
pub const PROMOTION_VIEW: &str = "promotion_view";
pub const PROMOTION_CLICK: &str = "promotion_click";
pub const IMPRESSION: &str = "impression";

/// Install or uninstall attribution: the publisher and campaign a partner attributed it to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub publisher: Option<String>,
    pub campaign: Option<String>,
    pub service_provider: Option<String>,
}

/// A location a batch carries: a device position, or where GeoIP placed the batch's IP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeoLocation {
    pub city: Option<String>,
    /// State or region (ISO code when known, e.g. "WA").
    pub state: Option<String>,
    pub zip: Option<String>,
    /// Nielsen DMA (metro) code, US only.
    pub dma: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

impl GeoLocation {
    pub fn is_empty(&self) -> bool {
        *self == GeoLocation::default()
    }

    /// Takes in a newer location. The place (city, state, zip, DMA, country) is one unit: a
    /// newer place replaces the whole of the older one, so that fields of two places never
    /// mix; coordinates are replaced when the newer location has them. Whether it changed.
    pub fn merge_from(&mut self, newer: &GeoLocation) -> bool {
        let has_place = newer.city.is_some()
            || newer.state.is_some()
            || newer.zip.is_some()
            || newer.dma.is_some()
            || newer.country.is_some();
        let new_place = has_place
            && (self.city != newer.city
                || self.state != newer.state
                || self.zip != newer.zip
                || self.dma != newer.dma
                || self.country != newer.country);
        if new_place {
            self.city.clone_from(&newer.city);
            self.state.clone_from(&newer.state);
            self.zip.clone_from(&newer.zip);
            self.dma.clone_from(&newer.dma);
            self.country.clone_from(&newer.country);
        }
        let new_position = newer.latitude.is_some()
            && newer.longitude.is_some()
            && (self.latitude != newer.latitude || self.longitude != newer.longitude);
        if new_position {
            self.latitude = newer.latitude;
            self.longitude = newer.longitude;
        }
        new_place || new_position
    }
}

/// One identity change; `old: None` adds, `new: None` removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityChange {
    /// Identity type, lowercased: customer_id, email, ios_idfv, ...
    pub identity_type: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

/// The kinds of events the engine understands. Unknown kinds are refused by the parser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    Custom {
        name: String,
        custom_type: Option<String>,
    },
    ScreenView {
        name: String,
    },
    Commerce {
        product_action: Option<String>,
        products: Vec<Product>,
        total_amount: Option<f64>,
        transaction_id: Option<String>,
    },
    /// A commerce event's promotion action: `view` or `click`.
    Promotion {
        action: String,
        promotions: Vec<Promotion>,
    },
    /// A commerce event's product impressions (one event per impression list).
    Impression {
        list: Option<String>,
        products: Vec<Product>,
    },
    SessionStart,
    SessionEnd {
        duration_ms: Option<i64>,
    },
    CrashReport,
    FirstRun,
    ApplicationStateTransition {
        transition: Option<String>,
        /// The app reports that this launch follows an upgrade.
        is_upgrade: bool,
    },
    UserAttributeChange {
        name: String,
        new_value: Option<AttrValue>,
        deleted: bool,
    },
    UserIdentityChange(IdentityChange),
    OptOut {
        opted_out: bool,
    },
    Uninstall,
    /// Accepted mParticle event types that criteria do not read beyond their type
    /// (push_registration, push_message, network_performance, breadcrumb, profile, ...).
    Other {
        event_type: String,
    },
}

impl EventKind {
    /// The mParticle `event_type` string of this kind.
    pub fn event_type(&self) -> &str {
        match self {
            EventKind::Custom { .. } => "custom_event",
            EventKind::ScreenView { .. } => "screen_view",
            EventKind::Commerce { .. }
            | EventKind::Promotion { .. }
            | EventKind::Impression { .. } => "commerce_event",
            EventKind::SessionStart => "session_start",
            EventKind::SessionEnd { .. } => "session_end",
            EventKind::CrashReport => "crash_report",
            EventKind::FirstRun => "first_run",
            EventKind::ApplicationStateTransition { .. } => "application_state_transition",
            EventKind::UserAttributeChange { .. } => "user_attribute_change",
            EventKind::UserIdentityChange(_) => "user_identity_change",
            EventKind::OptOut { .. } => "opt_out",
            EventKind::Uninstall => "uninstall",
            EventKind::Other { event_type } => event_type,
        }
    }

    /// The name criteria select this event by: event name, screen name or product action.
    /// Lowercased, because every match is case-insensitive.
    pub fn selector_name(&self) -> String {
        match self {
            EventKind::Custom { name, .. } | EventKind::ScreenView { name } => name.to_lowercase(),
            EventKind::Commerce { product_action, .. } => {
                product_action.as_deref().unwrap_or("").to_lowercase()
            }
            EventKind::Promotion { action, .. } => format!("promotion_{action}"),
            EventKind::Impression { .. } => IMPRESSION.to_string(),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub timestamp_ms: TimestampMs,
    pub kind: EventKind,
    /// Custom attributes, values in their string form.
    pub attributes: BTreeMap<String, String>,
}

/// One decoded event batch (mParticle JSON or protobuf envelope).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub mpid: Mpid,
    pub timestamp_ms: Option<TimestampMs>,
    pub events: Vec<Event>,
    /// Attributes set by the batch, in order.
    pub user_attributes: Vec<(String, AttrValue)>,
    pub deleted_user_attributes: Vec<String>,
    /// User identities the batch carries (type lowercased, value).
    pub user_identities: Vec<(String, String)>,
    /// Device identities the batch carries (type lowercased, value).
    pub device_identities: Vec<(String, String)>,
    pub device_info: Option<DeviceInfo>,
    pub consent: Option<ConsentState>,
    pub app_version: Option<String>,
    /// `attribution_info`: set by attribution partners on install, engagement and uninstall
    /// batches.
    pub attribution: Option<Attribution>,
    /// The client IP the batch was sent from, for GeoIP.
    pub ip: Option<String>,
    /// Where the batch places the user: a device position (`context.location` or an event's
    /// `location`) and, once the engine has resolved `ip`, the GeoIP answer.
    pub location: Option<GeoLocation>,
    /// The input the batch came through (see [`crate::inputs`]); `None`: no input claims it.
    pub input: Option<InputTag>,
}

/// A message of the identities topic.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityUpdate {
    pub mpid: Mpid,
    pub timestamp_ms: Option<TimestampMs>,
    pub changes: Vec<IdentityChange>,
    /// The input the message came through; `None`: no input claims it.
    pub input: Option<InputTag>,
}

/// The input a message came through, and the workspace that owns the input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InputTag {
    pub input: String,
    pub workspace: String,
}

/// Anything the engine consumes, decoded. Short-lived (one per message), so the size
/// difference between the variants costs nothing worth a box.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Inbound {
    Batch(Batch),
    Identity(IdentityUpdate),
}

impl Inbound {
    pub fn mpid(&self) -> Mpid {
        match self {
            Inbound::Batch(b) => b.mpid,
            Inbound::Identity(i) => i.mpid,
        }
    }

    pub fn input(&self) -> Option<&InputTag> {
        match self {
            Inbound::Batch(b) => b.input.as_ref(),
            Inbound::Identity(i) => i.input.as_ref(),
        }
    }

    /// Stamps the message with the input it came through.
    pub fn set_input(&mut self, input: Option<InputTag>) {
        match self {
            Inbound::Batch(b) => b.input = input,
            Inbound::Identity(i) => i.input = input,
        }
    }
}

/// A membership change of one MPID in one audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaKind {
    Added,
    Dropped,
}

/// A membership delta as written to the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub audience_id: AudienceId,
    pub mpid: Mpid,
    pub kind: DeltaKind,
    pub event_time_ms: TimestampMs,
    pub processing_time_ms: TimestampMs,
    /// Per (audience, MPID) version, starting at 1.
    pub version: u64,
}

impl Delta {
    /// The stable id receivers deduplicate by.
    pub fn delta_id(&self) -> String {
        format!("{}:{}:{}", self.audience_id, self.mpid, self.version)
    }
}
