//! Tests of the decoders, by family, over shared fixtures: a Python SDK batch and a
//! protobuf batch with every event kind.

use super::shared::{product_action, Path};
use super::*;
use crate::model::*;
use proptest::prelude::*;
use serde_json::{json, Map};
use std::collections::{BTreeMap, HashMap};

mod errors;
mod json;
mod properties;
mod protobuf;

const JSON: Option<&str> = Some("application/json");
const PROTOBUF: Option<&str> = Some("application/x-protobuf");

fn decode_value(value: &Value) -> Result<Inbound> {
    decode(
        value.to_string().as_bytes(),
        JSON,
        DEFAULT_MAX_MESSAGE_BYTES,
    )
}

fn batch_of(value: &Value) -> Batch {
    match decode_value(value) {
        Ok(Inbound::Batch(batch)) => batch,
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn error_of(value: &Value) -> DecodeError {
    decode_value(value).expect_err("decoding should fail")
}

fn custom(name: &str) -> Value {
    json!({"event_type": "custom_event", "data": {"event_name": name}})
}

/// A batch as `json.dumps(batch.to_dict())` of the `mparticle` Python SDK writes it: every
/// unset optional field is there as null.
const PYTHON_SDK_BATCH: &str = r#"{
        "source_request_id": null,
        "environment": "development",
        "ip": null,
        "schema_version": 2,
        "api_key": null,
        "mpid": 8675309,
        "mp_deviceid": null,
        "timestamp_unixtime_ms": 1700000000000,
        "context": null,
        "batch_id": null,
        "sdk_version": null,
        "integration_attributes": null,
        "partner_identity": null,
        "source_info": {"is_history": false, "received_timestamp_unixtime_ms": null},
        "some_future_field": {"nested": [1, 2, 3]},
        "user_attributes": {
            "$FirstName": "Ada",
            "Tier": "gold",
            "LTV": 1234.5,
            "visits": 12,
            "favourite_colours": ["red", "blue", 7, true, null],
            "nickname": null,
            "subscribed": true
        },
        "deleted_user_attributes": ["old_attr", null],
        "user_identities": {
            "customer_id": "cust-1",
            "email": "ada@example.com",
            "other": null,
            "facebook": null,
            "Other_ID_2": "x2",
            "twitter": ""
        },
        "device_info": {
            "brand": "Apple",
            "product": null,
            "device": null,
            "android_uuid": null,
            "device_manufacturer": "Apple",
            "platform": "iOS",
            "os_version": "17.1",
            "device_model": "iPhone15,2",
            "screen_height": null,
            "screen_width": null,
            "screen_dpi": null,
            "device_country": null,
            "locale_language": "en",
            "locale_country": "GB",
            "network_country": null,
            "network_carrier": null,
            "network_code": null,
            "network_mobile_country_code": null,
            "timezone_offset": null,
            "build_identifier": null,
            "http_header_user_agent": null,
            "ios_advertising_id": null,
            "push_token": "",
            "cpu_architecture": null,
            "is_tablet": false,
            "push_notification_sound_enabled": null,
            "push_notification_vibrate_enabled": null,
            "radio_access_technology": null,
            "supports_telephony": null,
            "has_nfc": null,
            "bluetooth_enabled": null,
            "bluetooth_version": null,
            "ios_idfv": "IDFV-1",
            "android_advertising_id": null,
            "build_version_release": null,
            "limit_ad_tracking": false,
            "amp_id": null,
            "is_dst": null,
            "roku_advertising_id": null,
            "roku_publisher_id": null,
            "microsoft_advertising_id": null,
            "microsoft_publisher_id": null,
            "fire_advertising_id": null
        },
        "application_info": {
            "application_name": "Shop",
            "application_version": "4.2.0",
            "application_build_number": null,
            "install_referrer": null,
            "package": "com.example.shop",
            "os": null,
            "apple_search_ads_attributes": null
        },
        "consent_state": {
            "gdpr": {
                "Marketing": {
                    "regulation": null,
                    "document": "v2",
                    "consented": true,
                    "timestamp_unixtime_ms": 1699999999000,
                    "location": "london",
                    "hardware_id": null
                },
                "analytics": null
            },
            "ccpa": {
                "data_sale_opt_out": {
                    "regulation": null,
                    "document": null,
                    "consented": false,
                    "timestamp_unixtime_ms": 1699999999000,
                    "location": null,
                    "hardware_id": null
                }
            }
        },
        "events": [
            {"event_type": "custom_event", "data": {
                "event_id": null,
                "source_message_id": "m-1",
                "session_id": null,
                "session_uuid": null,
                "session_start_unixtime_ms": null,
                "timestamp_unixtime_ms": 1700000000100,
                "event_start_unixtime_ms": null,
                "location": null,
                "device_current_state": null,
                "is_goal_defined": null,
                "lifetime_value_change": null,
                "lifetime_value_attribute_name": null,
                "data_connection_type": null,
                "event_num": null,
                "view_controller": null,
                "is_main_thread": null,
                "canonical_name": null,
                "event_system_notification_info": null,
                "custom_flags": null,
                "custom_attributes": {
                    "price": 9.0,
                    "discount": 0.25,
                    "sku": "A1",
                    "count": 3,
                    "gift": false,
                    "tags": ["a", "b"],
                    "meta": {"k": 1},
                    "none": null
                },
                "event_name": "Added to Wishlist",
                "custom_event_type": "Navigation"
            }},
            {"event_type": "screen_view", "data": {
                "timestamp_unixtime_ms": null,
                "custom_attributes": null,
                "screen_name": "Home",
                "activity_type": null
            }},
            {"event_type": "commerce_event", "data": {
                "timestamp_unixtime_ms": 1700000000200,
                "custom_attributes": null,
                "product_action": {
                    "action": "purchase",
                    "checkout_step": null,
                    "checkout_options": null,
                    "product_action_list": null,
                    "product_list_source": null,
                    "transaction_id": "T-1",
                    "affiliation": null,
                    "total_amount": 99.98,
                    "tax_amount": null,
                    "shipping_amount": null,
                    "coupon_code": null,
                    "products": [{
                        "id": "sku-1",
                        "name": "Shoe",
                        "brand": null,
                        "category": "shoes",
                        "variant": null,
                        "position": null,
                        "price": "49.99",
                        "quantity": 2,
                        "coupon_code": null,
                        "added_to_cart_time_ms": null,
                        "total_product_amount": 99.98,
                        "custom_attributes": null
                    }]
                },
                "promotion_action": null,
                "product_impressions": null,
                "shopping_cart": null,
                "currency_code": "GBP",
                "screen_name": null,
                "is_non_interactive": null,
                "event_name": null
            }},
            {"event_type": "commerce_event", "data": {
                "product_action": {"action": "AddToCart", "products": [
                    {"id": 1001, "name": "Hat", "price": 15, "quantity": "1"}
                ]},
                "promotion_action": {"action": "view", "promotions": [{"id": "p1"}]},
                "product_impressions": [{"product_impression_list": "home", "products": []}]
            }},
            {"event_type": "commerce_event", "data": {
                "product_action": null,
                "product_impressions": [{"product_impression_list": "home", "products": []}]
            }},
            {"event_type": "session_start", "data": {"timestamp_unixtime_ms": 1700000000300}},
            {"event_type": "session_end", "data": {"session_duration_ms": 60000}},
            {"event_type": "crash_report", "data": {
                "breadcrumbs": null, "class_name": "NPE", "severity": "fatal", "message": "boom",
                "stack_trace": null, "exception_handled": false
            }},
            {"event_type": "first_run", "data": {}},
            {"event_type": "uninstall", "data": null},
            {"event_type": "application_state_transition", "data": {
                "successfully_closed": null, "is_first_run": false, "is_upgrade": false,
                "push_notification_payload": null, "launch_referral": null,
                "application_transition_type": "application_background"
            }},
            {"event_type": "user_attribute_change", "data": {
                "user_attribute_name": "Tier", "new": "gold", "old": "silver",
                "deleted": false, "is_new_attribute": false
            }},
            {"event_type": "user_identity_change", "data": {
                "new": {"identity_type": "Email", "identity": "ada@example.com",
                        "timestamp_unixtime_ms": 1700000000000, "created_this_batch": true},
                "old": null
            }},
            {"event_type": "opt_out", "data": {"is_opted_out": true}},
            {"event_type": "push_registration", "data": {"push_token": "tok", "register": true}},
            {"event_type": "push_message", "data": {"push_message_token": "tok", "push_message_type": "received"}},
            {"event_type": "network_performance", "data": {"http_verb": "GET", "url": "https://x"}},
            {"event_type": "breadcrumb", "data": {"label": "tapped"}},
            {"event_type": "profile", "data": {"profile_event_type": "login"}},
            {"event_type": "media", "data": {"media_content_id": "v1"}}
        ]
    }"#;

fn python_sdk_batch() -> Value {
    serde_json::from_str(PYTHON_SDK_BATCH).expect("valid json")
}

fn pb_event(timestamp: i64, kind: pb::event::Kind) -> pb::Event {
    pb::Event {
        timestamp_unixtime_ms: timestamp,
        custom_attributes: HashMap::new(),
        location: None,
        kind: Some(kind),
    }
}

fn pb_batch() -> pb::EventBatch {
    use pb::event::Kind as K;
    let mut custom = pb_event(
        1_700_000_000_100,
        K::CustomEvent(pb::CustomEvent {
            event_name: "Play".into(),
            custom_event_type: "Navigation".into(),
        }),
    );
    custom
        .custom_attributes
        .insert("genre".into(), "jazz".into());
    pb::EventBatch {
        source: String::new(),
        mpid: -77,
        timestamp_unixtime_ms: 1_700_000_000_000,
        events: vec![
            custom,
            pb_event(
                0,
                K::ScreenView(pb::ScreenView {
                    screen_name: "Home".into(),
                }),
            ),
            pb_event(
                0,
                K::CommerceEvent(pb::CommerceEvent {
                    product_action: "AddToCart".into(),
                    products: vec![pb::Product {
                        id: "sku".into(),
                        price: 10.5,
                        quantity: 2.0,
                        ..Default::default()
                    }],
                    transaction_id: String::new(),
                    total_amount: 21.0,
                    currency_code: "EUR".into(),
                    promotion_action: None,
                    product_impressions: vec![],
                }),
            ),
            pb_event(0, K::SessionStart(pb::SessionStart {})),
            pb_event(
                0,
                K::SessionEnd(pb::SessionEnd {
                    session_duration_ms: 5,
                }),
            ),
            pb_event(0, K::CrashReport(pb::CrashReport::default())),
            pb_event(0, K::FirstRun(pb::FirstRun {})),
            pb_event(
                0,
                K::ApplicationStateTransition(pb::ApplicationStateTransition {
                    application_transition_type: "application_exit".into(),
                    is_upgrade: false,
                }),
            ),
            pb_event(
                0,
                K::UserAttributeChange(pb::UserAttributeChange {
                    user_attribute_name: "Tier".into(),
                    new: Some(pb::AttributeValue {
                        value: Some(pb::attribute_value::Value::NumberValue(3.0)),
                    }),
                    deleted: false,
                }),
            ),
            pb_event(
                0,
                K::UserIdentityChange(pb::UserIdentityChange {
                    identity_type: "EMAIL".into(),
                    old_value: Some("a@x".into()),
                    new_value: Some(String::new()),
                }),
            ),
            pb_event(0, K::OptOut(pb::OptOut { is_opted_out: true })),
            pb_event(0, K::Uninstall(pb::Uninstall {})),
        ],
        user_attributes: [
            (
                "b_list",
                pb::attribute_value::Value::ListValue(pb::StringList {
                    values: vec!["x".into()],
                }),
            ),
            (
                "a_date",
                pb::attribute_value::Value::DateUnixtimeMs(86_400_000),
            ),
            ("c_null", pb::attribute_value::Value::NullValue(true)),
            ("d_bool", pb::attribute_value::Value::BoolValue(false)),
            (
                "e_text",
                pb::attribute_value::Value::StringValue("hi".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), pb::AttributeValue { value: Some(v) }))
        .collect(),
        deleted_user_attributes: vec!["gone".into(), String::new()],
        user_identities: [("Customer_ID", "c1"), ("email", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        device_info: Some(pb::DeviceInfo {
            platform: "Android".into(),
            device_identities: [("android_advertising_id", "aaid"), ("push_token", "pt")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        consent_state: Some(pb::ConsentState {
            gdpr: [(
                "Marketing".to_string(),
                pb::GdprConsent {
                    consented: true,
                    document: "v3".into(),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ccpa_data_sale_opt_out: Some(true),
        }),
        application_info: Some(pb::ApplicationInfo {
            application_version: "1.2.3".into(),
            ..Default::default()
        }),
        source_request_id: "req-1".into(),
        attribution_info: None,
        ip: String::new(),
        location: None,
    }
}

fn envelope_bytes(payload: pb::envelope::Payload) -> Vec<u8> {
    pb::Envelope {
        payload: Some(payload),
    }
    .encode_to_vec()
}
