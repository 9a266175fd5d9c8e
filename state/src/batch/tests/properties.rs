//! Property tests: arbitrary bytes never panic a decoder, and what is encoded decodes back.

use super::*;

const REASONS: &[&str] = &[
    "oversized",
    "malformed",
    "missing_mpid",
    "unknown_event_type",
    "invalid_field",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z0-9_ .]{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "custom_event",
            "purchase",
            "AddToCart",
            "true",
            "12",
            "1.5",
            "email",
            "",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,8}",
                    prop::sample::select(vec![
                        "event_type",
                        "data",
                        "event_name",
                        "identity_type",
                        "identity",
                        "consented",
                        "action",
                        "products",
                        "price",
                    ])
                    .prop_map(String::from),
                ],
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers into [`python_sdk_batch`] and the path an error there must name.
const MUTATION_TARGETS: &[(&str, &str)] = &[
    ("/mpid", "mpid"),
    ("/timestamp_unixtime_ms", "timestamp_unixtime_ms"),
    ("/events", "events"),
    ("/events/0", "events[0]"),
    ("/events/0/event_type", "events[0].event_type"),
    ("/events/0/data", "events[0].data"),
    ("/events/0/data/event_name", "events[0].data.event_name"),
    (
        "/events/0/data/timestamp_unixtime_ms",
        "events[0].data.timestamp_unixtime_ms",
    ),
    (
        "/events/0/data/custom_attributes",
        "events[0].data.custom_attributes",
    ),
    (
        "/events/2/data/product_action",
        "events[2].data.product_action",
    ),
    (
        "/events/2/data/product_action/products",
        "events[2].data.product_action.products",
    ),
    (
        "/events/2/data/product_action/products/0/price",
        "events[2].data.product_action.products[0].price",
    ),
    (
        "/events/6/data/session_duration_ms",
        "events[6].data.session_duration_ms",
    ),
    ("/events/11/data/new", "events[11].data.new"),
    (
        "/events/12/data/new/identity_type",
        "events[12].data.new.identity_type",
    ),
    (
        "/events/13/data/is_opted_out",
        "events[13].data.is_opted_out",
    ),
    ("/user_attributes", "user_attributes"),
    ("/user_attributes/Tier", "user_attributes.Tier"),
    ("/deleted_user_attributes", "deleted_user_attributes"),
    ("/user_identities", "user_identities"),
    ("/user_identities/email", "user_identities.email"),
    ("/device_info", "device_info"),
    ("/device_info/platform", "device_info.platform"),
    (
        "/consent_state/gdpr/Marketing",
        "consent_state.gdpr.Marketing",
    ),
    ("/consent_state/ccpa", "consent_state.ccpa"),
    ("/application_info", "application_info"),
    ("/environment", "environment"),
];

#[derive(Debug, Clone)]
enum GenValue {
    Text(String),
    Int(i64),
    Quarter(i32),
    Bool(bool),
    Null,
}

impl GenValue {
    fn json(&self) -> Value {
        match self {
            GenValue::Text(s) => json!(s),
            GenValue::Int(i) => json!(i),
            GenValue::Quarter(q) => json!(f64::from(*q) / 4.0),
            GenValue::Bool(b) => json!(b),
            GenValue::Null => Value::Null,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            GenValue::Text(s) => Some(s.clone()),
            GenValue::Int(i) => Some(i.to_string()),
            GenValue::Quarter(q) => Some(format_number(f64::from(*q) / 4.0)),
            GenValue::Bool(b) => Some(b.to_string()),
            GenValue::Null => None,
        }
    }
}

fn gen_value() -> impl Strategy<Value = GenValue> {
    prop_oneof![
        ".{0,16}".prop_map(GenValue::Text),
        any::<i64>().prop_map(GenValue::Int),
        any::<i32>().prop_map(GenValue::Quarter),
        any::<bool>().prop_map(GenValue::Bool),
        Just(GenValue::Null),
    ]
}

#[derive(Debug, Clone)]
struct GenEvent {
    name: String,
    custom_type: Option<String>,
    timestamp: Option<i64>,
    attributes: BTreeMap<String, GenValue>,
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    (
        ".{1,24}".prop_filter("non-empty", |s: &String| !s.is_empty()),
        prop::option::of(prop::sample::select(vec![
            "navigation",
            "Transaction",
            "OTHER",
        ])),
        prop::option::of(0..4_102_444_800_000_i64),
        prop::collection::btree_map(".{0,12}", gen_value(), 0..6),
    )
        .prop_map(|(name, custom_type, timestamp, attributes)| GenEvent {
            name,
            custom_type: custom_type.map(String::from),
            timestamp,
            attributes,
        })
}

fn assert_error_is_well_formed(error: &DecodeError) {
    assert!(REASONS.contains(&error.reason_code()));
    let message = error.to_string();
    assert!(!message.is_empty());
    assert!(message.len() < 1024, "unbounded message: {message}");
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for content_type in [None, JSON, PROTOBUF] {
            if let Err(error) = decode(&bytes, content_type, DEFAULT_MAX_MESSAGE_BYTES) {
                assert_error_is_well_formed(&error);
            }
        }
        // Also behind a `{`, where the JSON parser does the work.
        let mut json = b"{".to_vec();
        json.extend_from_slice(&bytes);
        if let Err(error) = decode(&json, None, DEFAULT_MAX_MESSAGE_BYTES) {
            assert_error_is_well_formed(&error);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_strings(text in ".{0,256}", jsonish in "[{}\\[\\]\":,0-9a-z_ .-]{0,256}") {
        for payload in [&text, &jsonish] {
            for content_type in [None, JSON] {
                if let Err(error) = decode(payload.as_bytes(), content_type, DEFAULT_MAX_MESSAGE_BYTES) {
                    assert_error_is_well_formed(&error);
                }
            }
        }
    }

    /// Whatever value replaces a field of a valid batch, the batch decodes or the error
    /// names that field.
    #[test]
    fn a_bad_field_is_named_by_the_error(
        target in prop::sample::select(MUTATION_TARGETS),
        replacement in arb_json(),
    ) {
        let (pointer, path) = target;
        let mut batch = python_sdk_batch();
        *batch.pointer_mut(pointer).expect("target exists") = replacement.clone();
        match decode_value(&batch) {
            Ok(inbound) => prop_assert!(matches!(inbound, Inbound::Batch(_))),
            Err(error) => {
                assert_error_is_well_formed(&error);
                let message = error.to_string();
                prop_assert!(
                    message.starts_with(path),
                    "replacing {} with {} gave {:?}", pointer, replacement, message
                );
            }
        }
    }

    #[test]
    fn custom_events_roundtrip(
        mpid in any::<i64>().prop_filter("0 is no mpid", |m| *m != 0),
        mpid_as_string in any::<bool>(),
        batch_timestamp in prop::option::of(0..4_102_444_800_000_i64),
        events in prop::collection::vec(gen_event(), 0..8),
    ) {
        let wire_events: Vec<Value> = events
            .iter()
            .map(|event| {
                let attributes: Map<String, Value> = event
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.json()))
                    .collect();
                json!({
                    "event_type": "custom_event",
                    "data": {
                        "event_name": event.name,
                        "custom_event_type": event.custom_type,
                        "timestamp_unixtime_ms": event.timestamp,
                        "custom_attributes": attributes,
                        "event_id": null,
                        "source_message_id": null,
                        "session_id": null,
                        "location": null,
                        "device_current_state": null,
                        "custom_flags": null
                    }
                })
            })
            .collect();
        let mpid_json = if mpid_as_string { json!(mpid.to_string()) } else { json!(mpid) };
        let message = json!({
            "mpid": mpid_json,
            "environment": "production",
            "timestamp_unixtime_ms": batch_timestamp,
            "events": wire_events,
        });

        let batch = batch_of(&message);
        let expected: Vec<Event> = events
            .iter()
            .map(|event| Event {
                timestamp_ms: event.timestamp.or(batch_timestamp).unwrap_or(0),
                kind: EventKind::Custom {
                    name: event.name.clone(),
                    custom_type: event.custom_type.as_ref().map(|t| t.to_lowercase()),
                },
                attributes: event
                    .attributes
                    .iter()
                    .filter_map(|(k, v)| v.text().map(|text| (k.clone(), text)))
                    .collect(),
            })
            .collect();
        prop_assert_eq!(batch.mpid, mpid);
        prop_assert_eq!(batch.timestamp_ms, batch_timestamp);
        prop_assert_eq!(batch.events, expected);
    }
}
