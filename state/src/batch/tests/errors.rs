//! Bad input: every refusal names the field or position that was wrong, and nothing panics.

use super::*;

#[test]
fn oversized_is_refused_before_parsing() {
    let error = decode(&[0xff; 100], None, 10).unwrap_err();
    assert_eq!(
        error,
        DecodeError::Oversized {
            size: 100,
            limit: 10
        }
    );
    assert_eq!(
        error.to_string(),
        "message of 100 bytes exceeds the limit of 10"
    );
    assert_eq!(error.reason_code(), "oversized");

    let big = vec![b' '; 2_000_000];
    assert_eq!(
        decode(&big, JSON, DEFAULT_MAX_MESSAGE_BYTES)
            .unwrap_err()
            .to_string(),
        "message of 2000000 bytes exceeds the limit of 1048576"
    );

    let exact = json!({"mpid": 1}).to_string();
    assert!(decode(exact.as_bytes(), None, exact.len()).is_ok());
}

#[test]
fn malformed_json_names_line_and_column() {
    let error = decode(b"{\"mpid\": }", None, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid json at line 1 column 10: expected value"
    );
    assert_eq!(error.reason_code(), "malformed");

    let error = decode(b"{\"mpid\": 1,\n \"events\": [", JSON, 1 << 20).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid json at line 2 column 12: EOF"),
        "{error}"
    );

    // Non-UTF-8 inside a string, and trailing garbage.
    for payload in [&b"{\"mpid\": \"\xff\xfe\"}"[..], b"{\"mpid\": 1} x"] {
        let error = decode(payload, None, 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::InvalidJson { .. }), "{error}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!(
        "{{\"mpid\": 1, \"x\": {}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let error = decode(deep.as_bytes(), None, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
    assert_eq!(error.reason_code(), "malformed");
    assert!(
        error.to_string().contains("recursion limit exceeded"),
        "{error}"
    );
}

#[test]
fn non_object_json_is_malformed() {
    for (payload, found) in [
        ("[1, 2]", "an array"),
        ("\"batch\"", "a string"),
        ("42", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let error = decode(payload.as_bytes(), JSON, 1 << 20).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("expected a json object, found {found}")
        );
        assert_eq!(error.reason_code(), "malformed");
    }
}

#[test]
fn missing_mpid() {
    for batch in [
        json!({"events": [custom("a")]}),
        json!({"mpid": null}),
        json!({"mpid": 0}),
        json!({"mpid": "0"}),
        json!({"identity_changes": [{"identity_type": "email", "new_value": "a@b.c"}]}),
    ] {
        let error = error_of(&batch);
        assert_eq!(error.to_string(), "mpid: missing", "{batch}");
        assert_eq!(error.reason_code(), "missing_mpid");
    }
}

#[test]
fn mpid_that_is_not_an_integer() {
    for (mpid, shown) in [
        (json!("abc"), "\"abc\""),
        (json!("12.5"), "\"12.5\""),
        (json!(1.5), "1.5"),
        (
            json!(18_446_744_073_709_551_615_u64),
            "18446744073709551615",
        ),
        (json!(true), "true"),
        (json!([1]), "an array"),
    ] {
        let error = error_of(&json!({"mpid": mpid}));
        assert_eq!(
            error.to_string(),
            format!("mpid: expected a signed 64-bit integer, found {shown}")
        );
        assert_eq!(error.reason_code(), "invalid_field");
    }
}

#[test]
fn unknown_event_type_names_index_and_type() {
    let batch = json!({"mpid": 1, "events": [
        custom("a"),
        {"event_type": "session_start", "data": {}},
        {"event_type": "attribution", "data": {}}
    ]});
    let error = error_of(&batch);
    assert_eq!(
        error.to_string(),
        "events[2].event_type: unknown event type \"attribution\""
    );
    assert_eq!(error.reason_code(), "unknown_event_type");

    let long = "x".repeat(10_000);
    let error = error_of(&json!({"mpid": 1, "events": [{"event_type": long}]}));
    assert!(error.to_string().len() < 120, "{error}");
}

#[test]
fn invalid_fields_are_named() {
    let cases = [
        (
            json!({"mpid": 1, "events": [{"event_type": "custom_event", "data": {"custom_event_type": "other"}}]}),
            "events[0].data.event_name: missing",
        ),
        (
            json!({"mpid": 1, "events": [custom("a"), {"event_type": "custom_event", "data": null}]}),
            "events[1].data.event_name: missing",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "custom_event", "data": {"event_name": ""}}]}),
            "events[0].data.event_name: expected a non-empty string, found \"\"",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "screen_view", "data": {"screen_name": {"a": 1}}}]}),
            "events[0].data.screen_name: expected a string, found an object",
        ),
        (
            json!({"mpid": 1, "events": [{"data": {"event_name": "a"}}]}),
            "events[0].event_type: missing",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": 7}]}),
            "events[0].event_type: expected a string, found 7",
        ),
        (
            json!({"mpid": 1, "events": [[]]}),
            "events[0]: expected an object, found an array",
        ),
        (
            json!({"mpid": 1, "events": {"event_type": "custom_event"}}),
            "events: expected an array, found an object",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "custom_event", "data": "x"}]}),
            "events[0].data: expected an object, found \"x\"",
        ),
        (
            json!({"mpid": 1, "timestamp_unixtime_ms": "yesterday"}),
            "timestamp_unixtime_ms: expected a 64-bit integer, found \"yesterday\"",
        ),
        (
            json!({"mpid": 1, "user_attributes": {"address": {"city": "Paris"}}}),
            "user_attributes.address: expected a string, number, boolean, null or list, found an object",
        ),
        (
            json!({"mpid": 1, "deleted_user_attributes": "tier"}),
            "deleted_user_attributes: expected an array, found \"tier\"",
        ),
        (
            json!({"mpid": 1, "user_identities": {"email": ["a"]}}),
            "user_identities.email: expected a string, found an array",
        ),
        (
            json!({"mpid": 1, "consent_state": {"gdpr": {"marketing": {"document": "v1"}}}}),
            "consent_state.gdpr.marketing.consented: missing",
        ),
        (
            json!({"mpid": 1, "consent_state": {"ccpa": {"data_sale_opt_out": {"consented": "maybe"}}}}),
            "consent_state.ccpa.data_sale_opt_out.consented: expected a boolean, found \"maybe\"",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "commerce_event", "data": {"product_action": {"action": "steal"}}}]}),
            "events[0].data.product_action.action: unknown product action \"steal\"",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "commerce_event", "data": {"product_action": {"action": "purchase", "products": [{"price": "free"}]}}}]}),
            "events[0].data.product_action.products[0].price: expected a number, found \"free\"",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "user_attribute_change", "data": {"user_attribute_name": "a", "new": {"x": 1}}}]}),
            "events[0].data.new: expected a string, number, boolean, null or list, found an object",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "user_identity_change", "data": {"new": null, "old": null}}]}),
            "events[0].data: neither new nor old identity is set",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "user_identity_change", "data": {"new": {"identity": "x"}}}]}),
            "events[0].data.new.identity_type: missing",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "opt_out", "data": {"is_opted_out": null}}]}),
            "events[0].data.is_opted_out: missing",
        ),
        (
            json!({"mpid": 1, "identity_changes": [{"identity_type": "email", "new_value": "a"}, {"old_value": "x"}]}),
            "identity_changes[1].identity_type: missing",
        ),
        (
            json!({"mpid": 1, "identity_changes": [{"identity_type": "email", "old_value": null, "new_value": null}]}),
            "identity_changes[0]: neither old_value nor new_value is set",
        ),
        (
            json!({"mpid": 1, "identity_changes": {"identity_type": "email"}}),
            "identity_changes: expected an array, found an object",
        ),
    ];
    for (message, expected) in cases {
        let error = error_of(&message);
        assert_eq!(error.to_string(), expected, "{message}");
        assert_eq!(error.reason_code(), "invalid_field", "{message}");
    }
}

#[test]
fn user_identity_change_reads_old_when_new_is_absent() {
    let batch = batch_of(
        &json!({"mpid": 1, "events": [{"event_type": "user_identity_change",
        "data": {"new": null, "old": {"identity_type": "Customer_ID", "identity": "c1"}}}]}),
    );
    assert_eq!(
        batch.events[0].kind,
        EventKind::UserIdentityChange(IdentityChange {
            identity_type: "customer_id".into(),
            old_value: Some("c1".into()),
            new_value: None,
        })
    );
}

#[test]
fn messages_of_neither_format_say_what_they_are() {
    for (payload, reason) in [
        (&b"[1, 2]"[..], "not a JSON batch object (found an array) nor a protobuf envelope"),
        (b"null", "not a JSON batch object (found null) nor a protobuf envelope"),
        (b" \"mpid\"", "not a JSON batch object (found a string) nor a protobuf envelope"),
        (b"42", "not a JSON batch object (found a number) nor a protobuf envelope"),
        (b"true", "not a JSON batch object (found a boolean) nor a protobuf envelope"),
        (
            b"yesterday",
            "not a JSON batch object (invalid json at line 1 column 1: expected value) nor a protobuf envelope (",
        ),
        (
            b"[1, 2",
            "not a JSON batch object (invalid json at line 1 column 5: EOF while parsing a list) nor a protobuf envelope (",
        ),
        (b"\xff\xfe\xfd", "not a JSON batch object (not UTF-8 text: invalid byte at 0) nor a protobuf envelope ("),
    ] {
        let error = decode(payload, None, 1 << 20).unwrap_err();
        assert!(
            error.to_string().starts_with(reason),
            "{:?}: {error}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(error.reason_code(), "malformed");
        assert!(!error.to_string().contains("failed to decode"), "{error}");
    }
    // With a JSON content type, the JSON reading alone speaks.
    assert_eq!(
        decode(b"[1]", JSON, 1 << 20).unwrap_err().to_string(),
        "expected a json object, found an array"
    );
}

#[test]
fn timestamps_outside_1970_to_2199_are_refused_naming_the_field() {
    let year_one = -62_135_596_800_000_i64;
    let year_9999 = 253_402_300_799_000_i64;
    for (value, path) in [
        (
            json!({"mpid": 1, "timestamp_unixtime_ms": year_one}),
            "timestamp_unixtime_ms",
        ),
        (
            json!({"mpid": 1, "events": [{"event_type": "session_start",
                   "data": {"timestamp_unixtime_ms": year_9999}}]}),
            "events[0].data.timestamp_unixtime_ms",
        ),
        (
            json!({"mpid": 1, "timestamp_unixtime_ms": super::super::shared::TIMESTAMP_LIMIT_MS,
                   "identity_changes": []}),
            "timestamp_unixtime_ms",
        ),
    ] {
        let error = error_of(&value);
        assert_eq!(error.reason_code(), "invalid_field", "{error}");
        assert!(
            error.to_string().starts_with(&format!("{path}: ")),
            "{error}"
        );
        assert!(
            error.to_string().contains("from 1970-01-01 to 2199-12-31"),
            "{error}"
        );
    }
    // The edges: the epoch itself and the last millisecond of 2199 are times.
    for ms in [0, super::super::shared::TIMESTAMP_LIMIT_MS - 1] {
        let ok = json!({"mpid": 1, "timestamp_unixtime_ms": ms, "events": [custom("a")]});
        assert!(decode_value(&ok).is_ok(), "{ms}");
    }

    // The protobuf envelope by the same rule, its batch and its events.
    let mut batch = pb_batch();
    batch.events = vec![pb_event(
        year_9999,
        pb_batch().events[0].kind.clone().unwrap(),
    )];
    let bytes = envelope_bytes(pb::envelope::Payload::Batch(batch));
    let error = decode(&bytes, PROTOBUF, 1 << 20).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("events[0].timestamp_unixtime_ms: 253402300799000 is not a time"),
        "{error}"
    );
    let mut batch = pb_batch();
    batch.timestamp_unixtime_ms = year_one;
    let bytes = envelope_bytes(pb::envelope::Payload::Batch(batch));
    let error = decode(&bytes, PROTOBUF, 1 << 20).unwrap_err();
    assert!(
        error.to_string().starts_with("timestamp_unixtime_ms: "),
        "{error}"
    );
}
