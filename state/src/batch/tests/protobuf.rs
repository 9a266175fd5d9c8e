//! The protobuf envelope decoder: round trips, commerce actions and its errors.

use super::*;

#[test]
fn protobuf_commerce_yields_one_event_per_action() {
    use pb::event::Kind as K;
    let commerce = pb::CommerceEvent {
        promotion_action: Some(pb::PromotionAction {
            action: "click".into(),
            promotions: vec![pb::Promotion {
                name: "Summer".into(),
                ..Default::default()
            }],
        }),
        product_impressions: vec![pb::ProductImpression {
            product_impression_list: "search".into(),
            products: vec![pb::Product {
                id: "sku-9".into(),
                ..Default::default()
            }],
        }],
        ..Default::default()
    };
    let batch = pb::EventBatch {
        mpid: 3,
        events: vec![pb_event(5, K::CommerceEvent(commerce))],
        attribution_info: Some(pb::AttributionInfo {
            publisher: "Meta".into(),
            ..Default::default()
        }),
        location: Some(pb::GeoPosition {
            latitude: 40.7,
            longitude: -74.0,
            accuracy: 0.0,
        }),
        ..Default::default()
    };
    let bytes = envelope_bytes(pb::envelope::Payload::Batch(batch));
    let Inbound::Batch(batch) = decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES).unwrap() else {
        panic!("a batch")
    };
    let names: Vec<String> = batch
        .events
        .iter()
        .map(|e| e.kind.selector_name())
        .collect();
    assert_eq!(names, vec!["promotion_click", "impression"]);
    assert_eq!(
        batch.attribution.unwrap().publisher.as_deref(),
        Some("Meta")
    );
    assert_eq!(batch.location.unwrap().latitude, Some(40.7));
}

#[test]
fn protobuf_batch_roundtrip() {
    let bytes = envelope_bytes(pb::envelope::Payload::Batch(pb_batch()));
    let with_header = decode(&bytes, PROTOBUF, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
    let sniffed = decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
    assert_eq!(with_header, sniffed);
    let Inbound::Batch(batch) = with_header else {
        panic!("expected a batch");
    };
    assert_eq!(batch.mpid, -77);
    assert_eq!(batch.timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(batch.events.len(), 12);
    assert_eq!(batch.events[0].timestamp_ms, 1_700_000_000_100);
    assert_eq!(
        batch.events[0].kind,
        EventKind::Custom {
            name: "Play".into(),
            custom_type: Some("navigation".into()),
        }
    );
    assert_eq!(batch.events[0].attributes["genre"], "jazz");
    assert_eq!(batch.events[1].timestamp_ms, 1_700_000_000_000);
    assert_eq!(
        batch.events[2].kind,
        EventKind::Commerce {
            product_action: Some("add_to_cart".into()),
            products: vec![Product {
                id: Some("sku".into()),
                name: None,
                brand: None,
                category: None,
                variant: None,
                price: Some(10.5),
                quantity: Some(2.0),
            }],
            total_amount: Some(21.0),
            transaction_id: None,
        }
    );
    assert_eq!(
        batch.events[4].kind,
        EventKind::SessionEnd {
            duration_ms: Some(5)
        }
    );
    assert_eq!(
        batch.events[8].kind,
        EventKind::UserAttributeChange {
            name: "Tier".into(),
            new_value: Some(AttrValue::Number(3.0)),
            deleted: false,
        }
    );
    assert_eq!(
        batch.events[9].kind,
        EventKind::UserIdentityChange(IdentityChange {
            identity_type: "email".into(),
            old_value: Some("a@x".into()),
            new_value: None,
        })
    );
    assert_eq!(batch.events[10].kind, EventKind::OptOut { opted_out: true });
    assert_eq!(batch.events[11].kind, EventKind::Uninstall);
    assert_eq!(
        batch.user_attributes,
        vec![
            ("a_date".to_string(), AttrValue::Date(86_400_000)),
            ("b_list".to_string(), AttrValue::List(vec!["x".into()])),
            ("c_null".to_string(), AttrValue::Null),
            ("d_bool".to_string(), AttrValue::Bool(false)),
            ("e_text".to_string(), AttrValue::String("hi".into())),
        ]
    );
    assert_eq!(batch.deleted_user_attributes, vec!["gone".to_string()]);
    assert_eq!(
        batch.user_identities,
        vec![("customer_id".into(), "c1".into())]
    );
    assert_eq!(
        batch.device_identities,
        vec![
            ("android_advertising_id".into(), "aaid".into()),
            ("push_token".into(), "pt".into()),
        ]
    );
    assert_eq!(
        batch.device_info,
        Some(DeviceInfo {
            platform: Some("Android".into()),
            ..Default::default()
        })
    );
    let consent = batch.consent.expect("consent");
    assert_eq!(consent.ccpa_data_sale_opt_out, Some(true));
    assert_eq!(
        consent.gdpr["marketing"],
        GdprConsent {
            consented: true,
            timestamp_ms: None,
            document: Some("v3".into()),
        }
    );
    assert_eq!(batch.app_version.as_deref(), Some("1.2.3"));
}

#[test]
fn protobuf_identity_roundtrip() {
    let bytes = envelope_bytes(pb::envelope::Payload::Identity(pb::IdentityMessage {
        mpid: 5,
        timestamp_unixtime_ms: 0,
        identity_changes: vec![pb::UserIdentityChange {
            identity_type: "Email".into(),
            old_value: None,
            new_value: Some("a@b.c".into()),
        }],
        source: "ios".into(),
    }));
    let expected = Inbound::Identity(IdentityUpdate {
        mpid: 5,
        timestamp_ms: None,
        changes: vec![IdentityChange {
            identity_type: "email".into(),
            old_value: None,
            new_value: Some("a@b.c".into()),
        }],
        input: None,
    });
    assert_eq!(
        decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES),
        Ok(expected.clone())
    );
    // The envelope's source is what inputs claim it by, whatever JSON field is configured.
    let field = ["context".to_string(), "source".to_string()];
    assert_eq!(
        decode_sourced(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES, &field),
        Ok((expected, Some("ios".to_string())))
    );
}

#[test]
fn a_protobuf_batch_carries_its_source_and_an_empty_one_is_none() {
    let batch = |source: &str| {
        envelope_bytes(pb::envelope::Payload::Batch(pb::EventBatch {
            mpid: 9,
            source: source.into(),
            ..Default::default()
        }))
    };
    let source = |bytes: &[u8]| {
        decode_sourced(bytes, None, DEFAULT_MAX_MESSAGE_BYTES, &[])
            .unwrap()
            .1
    };
    assert_eq!(source(&batch("web")), Some("web".to_string()));
    assert_eq!(source(&batch("")), None);
}

#[test]
fn protobuf_errors() {
    let garbage = decode(&[0xff, 0xff, 0xff, 0xff], PROTOBUF, 1 << 20).unwrap_err();
    assert!(
        garbage
            .to_string()
            .starts_with("invalid protobuf envelope: "),
        "{garbage}"
    );
    assert_eq!(garbage.reason_code(), "malformed");

    // An envelope without payload is zero bytes; so is an empty message: said so when the
    // content type declares an envelope, told as an empty message otherwise.
    let empty = pb::Envelope { payload: None }.encode_to_vec();
    let error = decode(&empty, PROTOBUF, 1 << 20).unwrap_err();
    assert_eq!(error, DecodeError::EmptyEnvelope);
    assert_eq!(error.to_string(), "envelope: missing payload");
    assert_eq!(error.reason_code(), "malformed");
    for blank in [&b""[..], b"  \n", b"\xEF\xBB\xBF"] {
        let error = decode(blank, None, 1 << 20).unwrap_err();
        assert_eq!(error, DecodeError::Empty, "{blank:?}");
        assert_eq!(error.reason_code(), "malformed");
    }

    let mut batch = pb_batch();
    batch.mpid = 0;
    let error = decode(
        &envelope_bytes(pb::envelope::Payload::Batch(batch)),
        None,
        1 << 20,
    );
    assert_eq!(error, Err(DecodeError::MissingMpid));

    let mut batch = pb_batch();
    batch.events[3].kind = None;
    let error = decode(
        &envelope_bytes(pb::envelope::Payload::Batch(batch)),
        None,
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "events[3].kind: missing or unknown event kind"
    );
    assert_eq!(error.reason_code(), "unknown_event_type");

    let mut batch = pb_batch();
    batch.events[1].kind = Some(pb::event::Kind::ScreenView(pb::ScreenView::default()));
    let error = decode(
        &envelope_bytes(pb::envelope::Payload::Batch(batch)),
        None,
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "events[1].screen_view.screen_name: missing"
    );

    let identity = pb::IdentityMessage {
        mpid: 5,
        timestamp_unixtime_ms: 0,
        identity_changes: vec![pb::UserIdentityChange {
            identity_type: "email".into(),
            old_value: None,
            new_value: None,
        }],
        source: String::new(),
    };
    let error = decode(
        &envelope_bytes(pb::envelope::Payload::Identity(identity)),
        None,
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "identity_changes[0]: neither old_value nor new_value is set"
    );

    // The header wins over sniffing.
    let json = json!({"mpid": 1}).to_string();
    let error = decode(json.as_bytes(), PROTOBUF, 1 << 20).unwrap_err();
    assert_eq!(error.reason_code(), "malformed");
    let bytes = envelope_bytes(pb::envelope::Payload::Batch(pb_batch()));
    let error = decode(&bytes, Some("application/json; charset=utf-8"), 1 << 20).unwrap_err();
    assert!(matches!(error, DecodeError::InvalidJson { .. }), "{error}");
}

/// An envelope whose batch is 123 bytes long starts with `\n{`, which looks like JSON.
#[test]
fn protobuf_that_looks_like_json_is_still_decoded() {
    let mut batch = pb::EventBatch {
        mpid: 42,
        ..Default::default()
    };
    while batch.encoded_len() < 123 {
        batch.source_request_id.push('x');
    }
    assert_eq!(batch.encoded_len(), 123);
    let bytes = envelope_bytes(pb::envelope::Payload::Batch(batch));
    assert_eq!(&bytes[..2], b"\n{");
    let decoded = decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
    assert_eq!(decoded.mpid(), 42);

    // JSON after whitespace stays JSON, and its errors stay JSON errors.
    assert_eq!(
        decode(b"\n {\"mpid\": 7}", None, 1 << 20).unwrap().mpid(),
        7
    );
    assert_eq!(
        decode(b"\xEF\xBB\xBF{\"mpid\": 8}", None, 1 << 20)
            .unwrap()
            .mpid(),
        8
    );
    let error = decode(b"\n {\"mpid\": }", None, 1 << 20).unwrap_err();
    assert!(matches!(error, DecodeError::InvalidJson { .. }), "{error}");
}
