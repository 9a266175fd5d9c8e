//! The protobuf decoder: the [`pb::Envelope`] of `proto/audience/v1/envelope.proto` into the
//! same model the JSON decoder yields, with proto3's defaults read as absent.

use super::shared::*;
use crate::model::{
    AttrValue, Attribution, Batch, ConsentState, DeviceInfo, Event, EventKind, GdprConsent,
    GeoLocation, IdentityChange, IdentityUpdate, Inbound, Product, Promotion, TimestampMs,
};
use audience_proto::v1 as pb;
use prost::Message;
use std::collections::{BTreeMap, HashMap};

pub(super) fn decode_protobuf(payload: &[u8]) -> Result<(Inbound, Option<String>)> {
    let envelope = pb::Envelope::decode(payload).map_err(|e| {
        let message = e.to_string();
        let message = message
            .strip_prefix("failed to decode Protobuf message: ")
            .unwrap_or(&message);
        DecodeError::InvalidProtobuf(message.to_string())
    })?;
    from_envelope(envelope)
}

/// The message of an envelope, and its `source` (see [`super::decode_sourced`]).
pub(super) fn from_envelope(envelope: pb::Envelope) -> Result<(Inbound, Option<String>)> {
    match envelope.payload {
        Some(pb::envelope::Payload::Batch(mut batch)) => {
            let source = non_empty(std::mem::take(&mut batch.source));
            Ok((Inbound::Batch(batch_from_proto(batch)?), source))
        }
        Some(pb::envelope::Payload::Identity(mut identity)) => {
            let source = non_empty(std::mem::take(&mut identity.source));
            Ok((Inbound::Identity(identity_from_proto(identity)?), source))
        }
        None => Err(DecodeError::EmptyEnvelope),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn non_zero_i64(n: i64) -> Option<i64> {
    (n != 0).then_some(n)
}

/// A time field: unset at 0 (proto3's default), else checked as [`check_timestamp`] does.
fn timestamp(ms: i64, path: &Path<'_>) -> Result<Option<i64>> {
    non_zero_i64(ms)
        .map(|ms| check_timestamp(ms, path))
        .transpose()
}

fn non_zero_f64(n: f64) -> Option<f64> {
    (n != 0.0 && n.is_finite()).then_some(n)
}

fn required(s: String, path: &Path<'_>) -> Result<String> {
    non_empty(s).ok_or_else(|| invalid(path, "missing"))
}

/// `(type, value)` pairs of a proto map, types lowercased, empty values dropped, sorted so
/// the result does not depend on hash order.
fn identity_pairs(map: HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = map
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(identity_type, value)| (identity_type.to_lowercase(), value))
        .collect();
    pairs.sort();
    pairs
}

fn batch_from_proto(batch: pb::EventBatch) -> Result<Batch> {
    if batch.mpid == 0 {
        return Err(DecodeError::MissingMpid);
    }
    let timestamp_ms = timestamp(
        batch.timestamp_unixtime_ms,
        &Path::top("timestamp_unixtime_ms"),
    )?;
    let events_path = Path::top("events");
    let mut location = batch.location.and_then(position_from_proto);
    let mut events = Vec::with_capacity(batch.events.len());
    let mut copies = 0;
    for (i, mut event) in batch.events.into_iter().enumerate() {
        let path = events_path.index(i);
        if let Some(p) = event.location.take().and_then(position_from_proto) {
            location = Some(p);
        }
        events_from_proto(event, &path, timestamp_ms, &mut events, &mut copies)?;
    }
    let attribution = batch.attribution_info.and_then(|info| {
        let a = Attribution {
            publisher: non_empty(info.publisher),
            campaign: non_empty(info.campaign),
            service_provider: non_empty(info.service_provider),
        };
        (a != Attribution::default()).then_some(a)
    });
    if attribution.is_some() {
        mark_attribution_events(&mut events);
    }

    let attributes_path = Path::top("user_attributes");
    let mut user_attributes = batch
        .user_attributes
        .into_iter()
        .map(|(name, value)| {
            let value = attr_value_from_proto(value, &attributes_path.key(&name))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>>>()?;
    user_attributes.sort_by(|a, b| a.0.cmp(&b.0));

    let (device_info, device_identities) = match batch.device_info {
        Some(device) => {
            let info = DeviceInfo {
                platform: non_empty(device.platform),
                os_version: non_empty(device.os_version),
                device_model: non_empty(device.device_model),
                device_manufacturer: non_empty(device.device_manufacturer),
                network_carrier: non_empty(device.network_carrier),
                brand: non_empty(device.brand),
                locale_country: non_empty(device.locale_country),
                locale_language: non_empty(device.locale_language),
            };
            let info = (info != DeviceInfo::default()).then_some(info);
            (info, identity_pairs(device.device_identities))
        }
        None => (None, Vec::new()),
    };

    let consent = batch.consent_state.and_then(|consent| {
        let state = ConsentState {
            gdpr: consent
                .gdpr
                .into_iter()
                .map(|(purpose, c)| {
                    let consent = GdprConsent {
                        consented: c.consented,
                        timestamp_ms: non_zero_i64(c.timestamp_unixtime_ms),
                        document: non_empty(c.document),
                    };
                    (purpose.to_lowercase(), consent)
                })
                .collect(),
            ccpa_data_sale_opt_out: consent.ccpa_data_sale_opt_out,
        };
        (state != ConsentState::default()).then_some(state)
    });

    Ok(Batch {
        mpid: batch.mpid,
        timestamp_ms,
        events,
        user_attributes,
        deleted_user_attributes: batch
            .deleted_user_attributes
            .into_iter()
            .filter(|name| !name.is_empty())
            .collect(),
        user_identities: identity_pairs(batch.user_identities),
        device_identities,
        device_info,
        consent,
        app_version: batch
            .application_info
            .and_then(|app| non_empty(app.application_version)),
        attribution,
        ip: non_empty(batch.ip),
        location,
        input: None,
    })
}

/// A protobuf position; (0, 0) is proto3's "unset", not a point in the Gulf of Guinea.
fn position_from_proto(p: pb::GeoPosition) -> Option<GeoLocation> {
    if p.latitude == 0.0 && p.longitude == 0.0 {
        return None;
    }
    valid_position(p.latitude, p.longitude)
}

fn product_from_proto(p: pb::Product) -> Product {
    Product {
        id: non_empty(p.id),
        name: non_empty(p.name),
        brand: non_empty(p.brand),
        category: non_empty(p.category),
        variant: non_empty(p.variant),
        price: non_zero_f64(p.price),
        quantity: non_zero_f64(p.quantity),
    }
}

fn attr_value_from_proto(value: pb::AttributeValue, path: &Path<'_>) -> Result<AttrValue> {
    use pb::attribute_value::Value as V;
    match value.value {
        Some(V::StringValue(s)) => Ok(AttrValue::String(s)),
        Some(V::NumberValue(n)) if n.is_finite() => Ok(AttrValue::Number(n)),
        Some(V::NumberValue(n)) => Err(invalid(
            path,
            format!("expected a finite number, found {n}"),
        )),
        Some(V::BoolValue(b)) => Ok(AttrValue::Bool(b)),
        Some(V::DateUnixtimeMs(ms)) => Ok(AttrValue::Date(ms)),
        Some(V::ListValue(list)) => Ok(AttrValue::List(list.values)),
        Some(V::NullValue(_)) => Ok(AttrValue::Null),
        None => Err(invalid(path, "missing value")),
    }
}

/// Appends the events of one protobuf event (a commerce event yields one per action, as in
/// JSON).
fn events_from_proto(
    event: pb::Event,
    path: &Path<'_>,
    batch_timestamp: Option<TimestampMs>,
    out: &mut Vec<Event>,
    copies: &mut usize,
) -> Result<()> {
    use pb::event::Kind as K;
    let mut kinds = Vec::with_capacity(1);
    let kind = match event.kind {
        None => {
            return Err(DecodeError::MissingEventKind {
                path: path.to_string(),
            })
        }
        Some(K::CustomEvent(custom)) => EventKind::Custom {
            name: required(
                custom.event_name,
                &path.key("custom_event").key("event_name"),
            )?,
            custom_type: non_empty(custom.custom_event_type).map(|t| t.to_lowercase()),
        },
        Some(K::ScreenView(screen)) => EventKind::ScreenView {
            name: required(
                screen.screen_name,
                &path.key("screen_view").key("screen_name"),
            )?,
        },
        Some(K::CommerceEvent(commerce)) => {
            let commerce_path = path.key("commerce_event");
            let product_action = match non_empty(commerce.product_action) {
                Some(raw) => Some(product_action(&raw, &commerce_path.key("product_action"))?),
                None => None,
            };
            let has_product_part = product_action.is_some()
                || !commerce.products.is_empty()
                || commerce.total_amount != 0.0
                || !commerce.transaction_id.is_empty();
            if let Some(promotion) = commerce.promotion_action {
                let action = promotion_action(
                    &promotion.action,
                    &commerce_path.key("promotion_action").key("action"),
                )?;
                kinds.push(EventKind::Promotion {
                    action,
                    promotions: promotion
                        .promotions
                        .into_iter()
                        .map(|p| Promotion {
                            id: non_empty(p.id),
                            name: non_empty(p.name),
                            creative: non_empty(p.creative),
                            position: non_empty(p.position),
                        })
                        .collect(),
                });
            }
            for impression in commerce.product_impressions {
                kinds.push(EventKind::Impression {
                    list: non_empty(impression.product_impression_list),
                    products: impression
                        .products
                        .into_iter()
                        .map(product_from_proto)
                        .collect(),
                });
            }
            if has_product_part || kinds.is_empty() {
                kinds.insert(
                    0,
                    EventKind::Commerce {
                        product_action,
                        products: commerce
                            .products
                            .into_iter()
                            .map(product_from_proto)
                            .collect(),
                        total_amount: non_zero_f64(commerce.total_amount),
                        transaction_id: non_empty(commerce.transaction_id),
                    },
                );
            }
            // Never empty: the product part is kept when there is nothing else.
            kinds.remove(0)
        }
        Some(K::SessionStart(_)) => EventKind::SessionStart,
        Some(K::SessionEnd(end)) => EventKind::SessionEnd {
            duration_ms: non_zero_i64(end.session_duration_ms),
        },
        Some(K::CrashReport(_)) => EventKind::CrashReport,
        Some(K::FirstRun(_)) => EventKind::FirstRun,
        Some(K::ApplicationStateTransition(transition)) => EventKind::ApplicationStateTransition {
            transition: non_empty(transition.application_transition_type),
            is_upgrade: transition.is_upgrade,
        },
        Some(K::UserAttributeChange(change)) => {
            let change_path = path.key("user_attribute_change");
            EventKind::UserAttributeChange {
                name: required(
                    change.user_attribute_name,
                    &change_path.key("user_attribute_name"),
                )?,
                new_value: change
                    .new
                    .map(|v| attr_value_from_proto(v, &change_path.key("new")))
                    .transpose()?,
                deleted: change.deleted,
            }
        }
        Some(K::UserIdentityChange(change)) => {
            let change_path = path.key("user_identity_change");
            EventKind::UserIdentityChange(IdentityChange {
                identity_type: required(change.identity_type, &change_path.key("identity_type"))?
                    .to_lowercase(),
                old_value: change.old_value.and_then(non_empty),
                new_value: change.new_value.and_then(non_empty),
            })
        }
        Some(K::OptOut(opt_out)) => EventKind::OptOut {
            opted_out: opt_out.is_opted_out,
        },
        Some(K::Uninstall(_)) => EventKind::Uninstall,
    };
    let timestamp_ms = timestamp(
        event.timestamp_unixtime_ms,
        &path.key("timestamp_unixtime_ms"),
    )?
    .or(batch_timestamp)
    .unwrap_or(0);
    let attributes: BTreeMap<String, String> = event.custom_attributes.into_iter().collect();
    check_split(1 + kinds.len(), attributes.len(), copies, path)?;
    for kind in std::iter::once(kind).chain(kinds) {
        out.push(Event {
            timestamp_ms,
            kind,
            attributes: attributes.clone(),
        });
    }
    Ok(())
}

fn identity_from_proto(message: pb::IdentityMessage) -> Result<IdentityUpdate> {
    if message.mpid == 0 {
        return Err(DecodeError::MissingMpid);
    }
    let changes_path = Path::top("identity_changes");
    let changes = message
        .identity_changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| {
            let path = changes_path.index(i);
            let identity_type = required(change.identity_type, &path.key("identity_type"))?;
            let old_value = change.old_value.and_then(non_empty);
            let new_value = change.new_value.and_then(non_empty);
            if old_value.is_none() && new_value.is_none() {
                return Err(invalid(&path, "neither old_value nor new_value is set"));
            }
            Ok(IdentityChange {
                identity_type: identity_type.to_lowercase(),
                old_value,
                new_value,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let timestamp_ms = timestamp(
        message.timestamp_unixtime_ms,
        &Path::top("timestamp_unixtime_ms"),
    )?;
    Ok(IdentityUpdate {
        mpid: message.mpid,
        timestamp_ms,
        changes,
        input: None,
    })
}
