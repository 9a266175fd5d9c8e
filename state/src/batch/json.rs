//! The JSON decoder: mParticle's server-to-server batch and the JSON identity message, read
//! from a [`serde_json::Value`] tree with explicit field paths, leniently where mParticle SDKs
//! are (numbers as strings, ids as numbers).

use super::shared::*;
use crate::model::{
    format_number, AttrValue, Attribution, Batch, ConsentState, DeviceInfo, Event, EventKind,
    GdprConsent, GeoLocation, IdentityChange, IdentityUpdate, Inbound, Mpid, Product, Promotion,
    TimestampMs, DEVICE_IDENTITY_TYPES,
};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;

/// A JSON value as an error message shows it: scalars as they are, containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn expected(path: &Path<'_>, what: &str, value: &Value) -> DecodeError {
    invalid(path, format!("expected {what}, found {}", describe(value)))
}

// ---------------------------------------------------------------------------------------------
// JSON value readers: lenient where mParticle SDKs are (numbers as strings, ids as numbers)

/// Numbers print as users typed them: integers exactly, floats without a trailing `.0`.
fn number_text(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        format_number(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The string form of an attribute value; `None` for null, which means absent.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(number_text(n)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

fn as_string(value: &Value, path: &Path<'_>) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(number_text(n)),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(expected(path, "a string", value)),
    }
}

fn as_f64(value: &Value, path: &Path<'_>) -> Result<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed
        .filter(|n| n.is_finite())
        .ok_or_else(|| expected(path, "a number", value))
}

fn as_i64(value: &Value, path: &Path<'_>) -> Result<i64> {
    let from_float = |f: f64| {
        // Fractions (a timestamp in fractional milliseconds) are truncated; only a value that
        // does not fit is refused.
        (f.is_finite() && f.abs() < 9.2e18).then_some(f as i64)
    };
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(from_float)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(from_float))
        }
        _ => None,
    };
    parsed.ok_or_else(|| expected(path, "a 64-bit integer", value))
}

fn as_bool(value: &Value, path: &Path<'_>) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(expected(path, "a boolean", value)),
    }
}

/// A user attribute value. Unlike elsewhere, null is kept: a null attribute exists.
fn attr_value(value: &Value, path: &Path<'_>) -> Result<AttrValue> {
    match value {
        Value::Null => Ok(AttrValue::Null),
        Value::String(s) => Ok(AttrValue::String(s.clone())),
        Value::Number(n) => n
            .as_f64()
            .filter(|n| n.is_finite())
            .map(AttrValue::Number)
            .ok_or_else(|| invalid(path, format!("number {n} out of range"))),
        Value::Bool(b) => Ok(AttrValue::Bool(*b)),
        Value::Array(items) => Ok(AttrValue::List(
            items.iter().filter_map(scalar_text).collect(),
        )),
        Value::Object(_) => Err(expected(
            path,
            "a string, number, boolean, null or list",
            value,
        )),
    }
}

/// A JSON object and where it sits. Readers treat null and absent alike.
#[derive(Debug, Clone, Copy)]
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: Option<Path<'a>>,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: Path<'a>) -> Result<Obj<'a>> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                path: Some(path),
            }),
            _ => Err(expected(&path, "an object", value)),
        }
    }

    /// The path of the object itself (the top level has none and never needs it).
    fn here(&self) -> Path<'_> {
        self.path.unwrap_or(Path::top("$"))
    }

    fn path<'s>(&'s self, key: &'s str) -> Path<'s> {
        Path::Key(self.path.as_ref(), key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn read<T>(&self, key: &str, read: fn(&Value, &Path<'_>) -> Result<T>) -> Result<Option<T>> {
        self.get(key).map(|v| read(v, &self.path(key))).transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.read(key, as_string)
    }

    /// An optional string where empty means absent.
    fn text(&self, key: &str) -> Result<Option<String>> {
        Ok(self.string(key)?.filter(|s| !s.is_empty()))
    }

    fn required_text(&self, key: &str) -> Result<String> {
        match self.string(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(invalid(
                &self.path(key),
                "expected a non-empty string, found \"\"",
            )),
            None => Err(invalid(&self.path(key), "missing")),
        }
    }

    fn i64(&self, key: &str) -> Result<Option<i64>> {
        self.read(key, as_i64)
    }

    /// An instant in Unix milliseconds, refused outside 1970 to 2199 ([`check_timestamp`]).
    fn timestamp(&self, key: &str) -> Result<Option<i64>> {
        self.read(key, |value, path| {
            check_timestamp(as_i64(value, path)?, path)
        })
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.read(key, as_f64)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.read(key, as_bool)
    }

    fn required_bool(&self, key: &str) -> Result<bool> {
        self.bool(key)?
            .ok_or_else(|| invalid(&self.path(key), "missing"))
    }

    fn object<'s>(&'s self, key: &'s str) -> Result<Option<Obj<'s>>> {
        self.get(key)
            .map(|v| Obj::new(v, self.path(key)))
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(expected(&self.path(key), "an array", other)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// A JSON message, and the scalar at `source_field` (see [`super::decode_sourced`]).
pub(super) fn decode_json(
    payload: &[u8],
    source_field: &[String],
) -> Result<(Inbound, Option<String>)> {
    let body = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let value: Value = serde_json::from_slice(body).map_err(json_error)?;
    let Value::Object(map) = &value else {
        return Err(DecodeError::NotAnObject {
            found: json_kind(&value).to_string(),
        });
    };
    let top = Obj { map, path: None };
    let inbound = if top.get("identity_changes").is_some() {
        identity_from_json(top).map(Inbound::Identity)
    } else {
        batch_from_json(top).map(Inbound::Batch)
    }?;
    Ok((inbound, source_of(&value, source_field)))
}

/// The scalar at `path` (object fields from the top), as text; `None` when a field is missing,
/// the value null, empty or not a scalar, or the path empty.
fn source_of(top: &Value, path: &[String]) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let found = path
        .iter()
        .try_fold(top, |value, field| value.as_object()?.get(field))?;
    match found {
        Value::Array(_) | Value::Object(_) => None,
        scalar => scalar_text(scalar).filter(|s| !s.is_empty()),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn json_error(error: serde_json::Error) -> DecodeError {
    let (line, column) = (error.line(), error.column());
    let full = error.to_string();
    // serde_json appends the position to its message; it has a place of its own here.
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_string();
    DecodeError::InvalidJson {
        line,
        column,
        message,
    }
}

fn mpid_from_json(top: &Obj<'_>) -> Result<Mpid> {
    let Some(value) = top.get("mpid") else {
        return Err(DecodeError::MissingMpid);
    };
    let mpid = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_EXACT_F64_INT)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match mpid {
        Some(0) => Err(DecodeError::MissingMpid),
        Some(mpid) => Ok(mpid),
        None => Err(expected(
            &top.path("mpid"),
            "a signed 64-bit integer",
            value,
        )),
    }
}

fn batch_from_json(top: Obj<'_>) -> Result<Batch> {
    let mpid = mpid_from_json(&top)?;
    let timestamp_ms = top.timestamp("timestamp_unixtime_ms")?;

    let mut events = Vec::new();
    let mut location = match top.object("context")? {
        Some(context) => match context.object("location")? {
            Some(position) => position_from_json(&position)?,
            None => None,
        },
        None => None,
    };
    let mut copies = 0;
    if let Some(items) = top.array("events")? {
        events.reserve(items.len());
        let path = top.path("events");
        for (i, item) in items.iter().enumerate() {
            if !item.is_null() {
                let event = Obj::new(item, path.index(i))?;
                if let Some(data) = event.object("data")? {
                    if let Some(position) = data.object("location")? {
                        if let Some(p) = position_from_json(&position)? {
                            location = Some(p);
                        }
                    }
                }
                events_from_json(event, timestamp_ms, &mut events, &mut copies)?;
            }
        }
    }

    let mut user_attributes = Vec::new();
    if let Some(attributes) = top.object("user_attributes")? {
        for (name, value) in attributes.map {
            user_attributes.push((name.clone(), attr_value(value, &attributes.path(name))?));
        }
    }

    let mut deleted_user_attributes = Vec::new();
    if let Some(items) = top.array("deleted_user_attributes")? {
        let path = top.path("deleted_user_attributes");
        for (i, item) in items.iter().enumerate() {
            if !item.is_null() {
                let name = as_string(item, &path.index(i))?;
                if !name.is_empty() {
                    deleted_user_attributes.push(name);
                }
            }
        }
    }

    let mut user_identities = Vec::new();
    if let Some(identities) = top.object("user_identities")? {
        for (identity_type, value) in identities.map {
            if value.is_null() {
                continue;
            }
            let value = as_string(value, &identities.path(identity_type))?;
            if !value.is_empty() {
                user_identities.push((identity_type.to_lowercase(), value));
            }
        }
    }

    let mut device_identities = Vec::new();
    let mut device_info = None;
    if let Some(device) = top.object("device_info")? {
        let info = DeviceInfo {
            platform: device.text("platform")?,
            os_version: device.text("os_version")?,
            device_model: device.text("device_model")?,
            device_manufacturer: device.text("device_manufacturer")?,
            network_carrier: device.text("network_carrier")?,
            brand: device.text("brand")?,
            locale_country: device.text("locale_country")?,
            locale_language: device.text("locale_language")?,
        };
        if info != DeviceInfo::default() {
            device_info = Some(info);
        }
        for &identity_type in DEVICE_IDENTITY_TYPES {
            if let Some(value) = device.text(identity_type)? {
                device_identities.push((identity_type.to_string(), value));
            }
        }
    }

    let consent = match top.object("consent_state")? {
        Some(consent) => consent_from_json(consent)?,
        None => None,
    };

    let app_version = match top.object("application_info")? {
        Some(app) => app.text("application_version")?,
        None => None,
    };

    let attribution = match top.object("attribution_info")? {
        Some(info) => {
            let a = Attribution {
                publisher: info.text("publisher")?,
                campaign: info.text("campaign")?,
                service_provider: info.text("service_provider")?,
            };
            (a != Attribution::default()).then_some(a)
        }
        None => None,
    };
    if attribution.is_some() {
        mark_attribution_events(&mut events);
    }

    Ok(Batch {
        mpid,
        timestamp_ms,
        events,
        user_attributes,
        deleted_user_attributes,
        user_identities,
        device_identities,
        device_info,
        consent,
        app_version,
        attribution,
        ip: top.text("ip")?,
        location,
        input: None,
    })
}

/// A device position (`{"latitude": .., "longitude": ..}`); `None` unless both are present and
/// on the globe.
fn position_from_json(position: &Obj<'_>) -> Result<Option<GeoLocation>> {
    let (Some(latitude), Some(longitude)) = (position.f64("latitude")?, position.f64("longitude")?)
    else {
        return Ok(None);
    };
    Ok(valid_position(latitude, longitude))
}

fn consent_from_json(consent: Obj<'_>) -> Result<Option<ConsentState>> {
    let mut state = ConsentState::default();
    if let Some(gdpr) = consent.object("gdpr")? {
        for (purpose, value) in gdpr.map {
            if value.is_null() {
                continue;
            }
            let entry = Obj::new(value, gdpr.path(purpose))?;
            state.gdpr.insert(
                purpose.to_lowercase(),
                GdprConsent {
                    consented: entry.required_bool("consented")?,
                    timestamp_ms: entry.i64("timestamp_unixtime_ms")?,
                    document: entry.text("document")?,
                },
            );
        }
    }
    if let Some(ccpa) = consent.object("ccpa")? {
        if let Some(opt_out) = ccpa.object("data_sale_opt_out")? {
            state.ccpa_data_sale_opt_out = Some(opt_out.required_bool("consented")?);
        }
    }
    Ok((state != ConsentState::default()).then_some(state))
}

/// Appends the events one JSON event stands for: one, except for a commerce event, which
/// yields one event per action it carries (product action, promotion action, each impression
/// list), so each can be selected and counted on its own.
fn events_from_json(
    event: Obj<'_>,
    batch_timestamp: Option<TimestampMs>,
    out: &mut Vec<Event>,
    copies: &mut usize,
) -> Result<()> {
    let type_path = event.path("event_type");
    let event_type = match event.get("event_type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(expected(&type_path, "a string", other)),
        None => return Err(invalid(&type_path, "missing")),
    };
    let no_data = Map::new();
    let data = match event.object("data")? {
        Some(data) => data,
        None => Obj {
            map: &no_data,
            path: Some(event.path("data")),
        },
    };

    let mut kinds = Vec::with_capacity(1);
    let kind = match event_type {
        "commerce_event" => {
            kinds = commerce_from_json(&data)?;
            None
        }
        kind => Some(single_event_from_json(kind, &data, &type_path)?),
    };
    kinds.extend(kind);

    let mut attributes = BTreeMap::new();
    if let Some(custom) = data.object("custom_attributes")? {
        for (name, value) in custom.map {
            if let Some(text) = scalar_text(value) {
                attributes.insert(name.clone(), text);
            }
        }
    }
    check_split(kinds.len(), attributes.len(), copies, &event.here())?;
    let timestamp_ms = data
        .timestamp("timestamp_unixtime_ms")?
        .or(batch_timestamp)
        .unwrap_or(0);
    let last = kinds.len().saturating_sub(1);
    for (i, kind) in kinds.into_iter().enumerate() {
        out.push(Event {
            timestamp_ms,
            kind,
            attributes: if i == last {
                std::mem::take(&mut attributes)
            } else {
                attributes.clone()
            },
        });
    }
    Ok(())
}

fn single_event_from_json(
    event_type: &str,
    data: &Obj<'_>,
    type_path: &Path<'_>,
) -> Result<EventKind> {
    Ok(match event_type {
        "custom_event" => EventKind::Custom {
            name: data.required_text("event_name")?,
            custom_type: data.text("custom_event_type")?.map(|t| t.to_lowercase()),
        },
        "screen_view" => EventKind::ScreenView {
            name: data.required_text("screen_name")?,
        },
        "session_start" => EventKind::SessionStart,
        "session_end" => EventKind::SessionEnd {
            duration_ms: data.i64("session_duration_ms")?,
        },
        "crash_report" => EventKind::CrashReport,
        "first_run" => EventKind::FirstRun,
        "uninstall" => EventKind::Uninstall,
        "application_state_transition" => EventKind::ApplicationStateTransition {
            transition: data.text("application_transition_type")?,
            is_upgrade: data.bool("is_upgrade")?.unwrap_or(false),
        },
        "user_attribute_change" => EventKind::UserAttributeChange {
            name: data.required_text("user_attribute_name")?,
            new_value: data.read("new", attr_value)?,
            deleted: data.bool("deleted")?.unwrap_or(false),
        },
        "user_identity_change" => EventKind::UserIdentityChange(identity_event_from_json(data)?),
        "opt_out" => EventKind::OptOut {
            opted_out: data.required_bool("is_opted_out")?,
        },
        other if OTHER_EVENT_TYPES.contains(&other) => EventKind::Other {
            event_type: other.to_string(),
        },
        other => {
            return Err(DecodeError::UnknownEventType {
                path: type_path.to_string(),
                event_type: excerpt(other),
            })
        }
    })
}

fn products_from_json(holder: &Obj<'_>) -> Result<Vec<Product>> {
    let mut products = Vec::new();
    if let Some(items) = holder.array("products")? {
        let path = holder.path("products");
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let product = Obj::new(item, path.index(i))?;
            products.push(Product {
                id: product.text("id")?,
                name: product.text("name")?,
                brand: product.text("brand")?,
                category: product.text("category")?,
                variant: product.text("variant")?,
                price: product.f64("price")?,
                quantity: product.f64("quantity")?,
            });
        }
    }
    Ok(products)
}

/// The events of one commerce event: its product action, its promotion action, one per
/// impression list; a commerce event with none of them stays one event without an action.
fn commerce_from_json(data: &Obj<'_>) -> Result<Vec<EventKind>> {
    let mut kinds = Vec::new();
    if let Some(action) = data.object("product_action")? {
        let product_action = match action.text("action")? {
            Some(raw) => Some(product_action(&raw, &action.path("action"))?),
            None => None,
        };
        kinds.push(EventKind::Commerce {
            product_action,
            products: products_from_json(&action)?,
            total_amount: action.f64("total_amount")?,
            transaction_id: action.text("transaction_id")?,
        });
    }
    if let Some(promotion) = data.object("promotion_action")? {
        let action = promotion_action(
            &promotion.required_text("action")?,
            &promotion.path("action"),
        )?;
        let mut promotions = Vec::new();
        if let Some(items) = promotion.array("promotions")? {
            let path = promotion.path("promotions");
            for (i, item) in items.iter().enumerate() {
                if item.is_null() {
                    continue;
                }
                let p = Obj::new(item, path.index(i))?;
                promotions.push(Promotion {
                    id: p.text("id")?,
                    name: p.text("name")?,
                    creative: p.text("creative")?,
                    position: p.text("position")?,
                });
            }
        }
        kinds.push(EventKind::Promotion { action, promotions });
    }
    if let Some(items) = data.array("product_impressions")? {
        let path = data.path("product_impressions");
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let impression = Obj::new(item, path.index(i))?;
            kinds.push(EventKind::Impression {
                list: impression.text("product_impression_list")?,
                products: products_from_json(&impression)?,
            });
        }
    }
    if kinds.is_empty() {
        kinds.push(EventKind::Commerce {
            product_action: None,
            products: Vec::new(),
            total_amount: None,
            transaction_id: None,
        });
    }
    Ok(kinds)
}

fn identity_event_from_json(data: &Obj<'_>) -> Result<IdentityChange> {
    let new = data.object("new")?;
    let old = data.object("old")?;
    let (Some(first), second) = (new.or(old), new.and(old)) else {
        return Err(invalid(&data.here(), "neither new nor old identity is set"));
    };
    let identity_type = match first.text("identity_type")? {
        Some(t) => t,
        None => second
            .map(|old| old.text("identity_type"))
            .transpose()?
            .flatten()
            .ok_or_else(|| invalid(&first.path("identity_type"), "missing"))?,
    };
    Ok(IdentityChange {
        identity_type: identity_type.to_lowercase(),
        old_value: old.map(|o| o.text("identity")).transpose()?.flatten(),
        new_value: new.map(|n| n.text("identity")).transpose()?.flatten(),
    })
}

fn identity_from_json(top: Obj<'_>) -> Result<IdentityUpdate> {
    let mpid = mpid_from_json(&top)?;
    let timestamp_ms = top.timestamp("timestamp_unixtime_ms")?;
    let mut changes = Vec::new();
    if let Some(items) = top.array("identity_changes")? {
        let path = top.path("identity_changes");
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let change = Obj::new(item, path.index(i))?;
            let identity_type = change
                .text("identity_type")?
                .ok_or_else(|| invalid(&change.path("identity_type"), "missing"))?;
            let old_value = change.text("old_value")?;
            let new_value = change.text("new_value")?;
            if old_value.is_none() && new_value.is_none() {
                return Err(invalid(
                    &change.here(),
                    "neither old_value nor new_value is set",
                ));
            }
            changes.push(IdentityChange {
                identity_type: identity_type.to_lowercase(),
                old_value,
                new_value,
            });
        }
    }
    Ok(IdentityUpdate {
        mpid,
        timestamp_ms,
        changes,
        input: None,
    })
}
