//! The JSON batch decoder on batches as the SDKs and partners write them.

use super::*;

#[test]
fn python_sdk_batch_decodes() {
    let decoded = decode(PYTHON_SDK_BATCH.as_bytes(), None, DEFAULT_MAX_MESSAGE_BYTES);
    let Ok(Inbound::Batch(batch)) = decoded else {
        panic!("expected a batch, got {decoded:?}");
    };
    assert_eq!(batch.mpid, 8675309);
    assert_eq!(batch.timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(batch.app_version.as_deref(), Some("4.2.0"));

    let attributes: BTreeMap<_, _> = batch.user_attributes.iter().cloned().collect();
    assert_eq!(attributes.len(), 7);
    assert_eq!(attributes["$FirstName"], AttrValue::String("Ada".into()));
    assert_eq!(attributes["LTV"], AttrValue::Number(1234.5));
    assert_eq!(attributes["visits"], AttrValue::Number(12.0));
    assert_eq!(attributes["subscribed"], AttrValue::Bool(true));
    assert_eq!(attributes["nickname"], AttrValue::Null);
    assert_eq!(
        attributes["favourite_colours"],
        AttrValue::List(vec!["red".into(), "blue".into(), "7".into(), "true".into()])
    );
    assert_eq!(batch.deleted_user_attributes, vec!["old_attr".to_string()]);
    // Keys lowercased, nulls and empty values dropped.
    let identities: BTreeMap<_, _> = batch.user_identities.iter().cloned().collect();
    let expected_identities: BTreeMap<String, String> = [
        ("customer_id", "cust-1"),
        ("email", "ada@example.com"),
        ("other_id_2", "x2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(identities, expected_identities);
    assert_eq!(batch.user_identities.len(), 3);
    assert_eq!(
        batch.device_identities,
        vec![("ios_idfv".to_string(), "IDFV-1".to_string())]
    );
    assert_eq!(
        batch.device_info,
        Some(DeviceInfo {
            platform: Some("iOS".into()),
            os_version: Some("17.1".into()),
            device_model: Some("iPhone15,2".into()),
            device_manufacturer: Some("Apple".into()),
            network_carrier: None,
            brand: Some("Apple".into()),
            locale_country: Some("GB".into()),
            locale_language: Some("en".into()),
        })
    );
    let consent = batch.consent.as_ref().expect("consent state");
    assert_eq!(consent.ccpa_data_sale_opt_out, Some(false));
    assert_eq!(
        consent.gdpr.get("marketing"),
        Some(&GdprConsent {
            consented: true,
            timestamp_ms: Some(1_699_999_999_000),
            document: Some("v2".into()),
        })
    );
    assert_eq!(consent.gdpr.len(), 1);

    let kinds: Vec<&str> = batch.events.iter().map(|e| e.kind.event_type()).collect();
    assert_eq!(
        kinds,
        vec![
            "custom_event",
            "screen_view",
            "commerce_event",
            "commerce_event",
            "commerce_event",
            "commerce_event",
            "commerce_event",
            "session_start",
            "session_end",
            "crash_report",
            "first_run",
            "uninstall",
            "application_state_transition",
            "user_attribute_change",
            "user_identity_change",
            "opt_out",
            "push_registration",
            "push_message",
            "network_performance",
            "breadcrumb",
            "profile",
            "media",
        ]
    );

    let first = &batch.events[0];
    assert_eq!(first.timestamp_ms, 1_700_000_000_100);
    assert_eq!(
        first.kind,
        EventKind::Custom {
            name: "Added to Wishlist".into(),
            custom_type: Some("navigation".into()),
        }
    );
    let expected: BTreeMap<String, String> = [
        ("price", "9"),
        ("discount", "0.25"),
        ("sku", "A1"),
        ("count", "3"),
        ("gift", "false"),
        ("tags", "[\"a\",\"b\"]"),
        ("meta", "{\"k\":1}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(first.attributes, expected);

    // No event timestamp: the batch's.
    assert_eq!(batch.events[1].timestamp_ms, 1_700_000_000_000);
    assert_eq!(
        batch.events[1].kind,
        EventKind::ScreenView {
            name: "Home".into()
        }
    );
    assert!(batch.events[1].attributes.is_empty());

    assert_eq!(
        batch.events[2].kind,
        EventKind::Commerce {
            product_action: Some("purchase".into()),
            products: vec![Product {
                id: Some("sku-1".into()),
                name: Some("Shoe".into()),
                brand: None,
                category: Some("shoes".into()),
                variant: None,
                price: Some(49.99),
                quantity: Some(2.0),
            }],
            total_amount: Some(99.98),
            transaction_id: Some("T-1".into()),
        }
    );
    assert_eq!(
        batch.events[3].kind,
        EventKind::Commerce {
            product_action: Some("add_to_cart".into()),
            products: vec![Product {
                id: Some("1001".into()),
                name: Some("Hat".into()),
                brand: None,
                category: None,
                variant: None,
                price: Some(15.0),
                quantity: Some(1.0),
            }],
            total_amount: None,
            transaction_id: None,
        }
    );
    assert_eq!(
        batch.events[4].kind,
        EventKind::Promotion {
            action: "view".into(),
            promotions: vec![Promotion {
                id: Some("p1".into()),
                name: None,
                creative: None,
                position: None,
            }],
        }
    );
    for i in [5, 6] {
        assert_eq!(
            batch.events[i].kind,
            EventKind::Impression {
                list: Some("home".into()),
                products: vec![],
            }
        );
        assert_eq!(batch.events[i].kind.selector_name(), "impression");
    }
    assert_eq!(batch.events[7].timestamp_ms, 1_700_000_000_300);
    assert_eq!(
        batch.events[8].kind,
        EventKind::SessionEnd {
            duration_ms: Some(60000)
        }
    );
    assert_eq!(
        batch.events[12].kind,
        EventKind::ApplicationStateTransition {
            transition: Some("application_background".into()),
            is_upgrade: false,
        }
    );
    assert_eq!(
        batch.events[13].kind,
        EventKind::UserAttributeChange {
            name: "Tier".into(),
            new_value: Some(AttrValue::String("gold".into())),
            deleted: false,
        }
    );
    assert_eq!(
        batch.events[14].kind,
        EventKind::UserIdentityChange(IdentityChange {
            identity_type: "email".into(),
            old_value: None,
            new_value: Some("ada@example.com".into()),
        })
    );
    assert_eq!(batch.events[15].kind, EventKind::OptOut { opted_out: true });
    assert_eq!(
        batch.events[21].kind,
        EventKind::Other {
            event_type: "media".into()
        }
    );
}

#[test]
fn the_source_is_the_scalar_at_the_configured_path() {
    let field: Vec<String> = vec!["context".into(), "source".into()];
    let source = |value: serde_json::Value, field: &[String]| {
        decode_sourced(
            value.to_string().as_bytes(),
            None,
            DEFAULT_MAX_MESSAGE_BYTES,
            field,
        )
        .unwrap()
        .1
    };
    let batch = json!({"mpid": 1, "context": {"source": "ios"}, "events": []});
    assert_eq!(source(batch.clone(), &field), Some("ios".to_string()));
    assert_eq!(source(batch, &[]), None, "no field configured");
    let number = json!({"mpid": 1, "context": {"source": 7}});
    assert_eq!(source(number, &field), Some("7".to_string()));
    for absent in [
        json!({"mpid": 1}),
        json!({"mpid": 1, "context": null}),
        json!({"mpid": 1, "context": {"source": null}}),
        json!({"mpid": 1, "context": {"source": ""}}),
        json!({"mpid": 1, "context": {"source": {"name": "ios"}}}),
        json!({"mpid": 1, "context": {"source": ["ios"]}}),
    ] {
        assert_eq!(source(absent.clone(), &field), None, "{absent}");
    }
    // An identity message has its source where a batch has it.
    let identity = json!({"mpid": 1, "context": {"source": "web"},
        "identity_changes": [{"identity_type": "email", "new_value": "a@b.c"}]});
    assert_eq!(source(identity, &field), Some("web".to_string()));
}

#[test]
fn json_identity_message_decodes() {
    let message = json!({
        "mpid": "123",
        "timestamp_unixtime_ms": 1_700_000_000_000_i64,
        "environment": "production",
        "identity_changes": [
            {"identity_type": "Email", "old_value": null, "new_value": "a@b.c"},
            null,
            {"identity_type": "customer_id", "old_value": "c1", "new_value": null}
        ]
    });
    assert_eq!(
        decode_value(&message),
        Ok(Inbound::Identity(IdentityUpdate {
            mpid: 123,
            timestamp_ms: Some(1_700_000_000_000),
            changes: vec![
                IdentityChange {
                    identity_type: "email".into(),
                    old_value: None,
                    new_value: Some("a@b.c".into()),
                },
                IdentityChange {
                    identity_type: "customer_id".into(),
                    old_value: Some("c1".into()),
                    new_value: None,
                },
            ],
            input: None,
        }))
    );
}

#[test]
fn event_timestamp_falls_back_to_the_batch_then_zero() {
    let batch = batch_of(&json!({"mpid": 1, "events": [custom("a")]}));
    assert_eq!(batch.timestamp_ms, None);
    assert_eq!(batch.events[0].timestamp_ms, 0);

    let batch = batch_of(&json!({
        "mpid": 1,
        "timestamp_unixtime_ms": "1700000000000",
        "events": [custom("a"), {"event_type": "custom_event",
            "data": {"event_name": "b", "timestamp_unixtime_ms": 1_700_000_000_500.7}}]
    }));
    assert_eq!(batch.events[0].timestamp_ms, 1_700_000_000_000);
    assert_eq!(batch.events[1].timestamp_ms, 1_700_000_000_500);
}

#[test]
fn mpid_forms() {
    for (mpid, expected) in [
        (json!(42), 42),
        (json!(-9_223_372_036_854_775_808_i64), i64::MIN),
        (json!("-8675309"), -8675309),
        (json!(1e3), 1000),
    ] {
        assert_eq!(batch_of(&json!({"mpid": mpid})).mpid, expected);
    }
}

#[test]
fn attribution_ip_and_positions_are_read() {
    let batch = batch_of(&json!({
        "mpid": 5,
        "ip": "81.2.69.5",
        "attribution_info": {"service_provider": "Adjust", "publisher": "Meta", "campaign": "spring"},
        "context": {"location": {"latitude": 48.85, "longitude": 2.35}},
        "events": [
            {"event_type": "custom_event", "data": {"event_name": "attribution", "custom_event_type": "other"}},
            {"event_type": "custom_event", "data": {"event_name": "play", "custom_event_type": "navigation",
                "location": {"latitude": 51.5, "longitude": -0.12}}},
            {"event_type": "application_state_transition", "data": {
                "application_transition_type": "application_initialized", "is_upgrade": true}}
        ]
    }));
    assert_eq!(batch.ip.as_deref(), Some("81.2.69.5"));
    let attribution = batch.attribution.as_ref().unwrap();
    assert_eq!(attribution.publisher.as_deref(), Some("Meta"));
    assert_eq!(attribution.campaign.as_deref(), Some("spring"));
    // The partner's batch makes its untyped custom events attribution events; typed ones
    // keep their type.
    assert_eq!(
        batch.events[0].kind,
        EventKind::Custom {
            name: "attribution".into(),
            custom_type: Some("attribution".into())
        }
    );
    assert_eq!(
        batch.events[1].kind,
        EventKind::Custom {
            name: "play".into(),
            custom_type: Some("navigation".into())
        }
    );
    // The latest position wins: the event's, after the batch context's.
    let location = batch.location.unwrap();
    assert_eq!(
        (location.latitude, location.longitude),
        (Some(51.5), Some(-0.12))
    );
    assert_eq!(
        batch.events[2].kind,
        EventKind::ApplicationStateTransition {
            transition: Some("application_initialized".into()),
            is_upgrade: true,
        }
    );
    // A position off the globe (a device's "unknown" sentinel) is ignored, not fatal.
    let off = batch_of(
        &json!({"mpid": 5, "context": {"location": {"latitude": -999, "longitude": -999}}}),
    );
    assert_eq!(off.location, None);
    let impressions: Vec<serde_json::Value> = (0..101)
        .map(|i| json!({"product_impression_list": format!("l{i}")}))
        .collect();
    let error = error_of(
        &json!({"mpid": 5, "events": [{"event_type": "commerce_event",
        "data": {"product_impressions": impressions}}]}),
    );
    assert!(
        error.to_string().contains("events[0]: 101 actions"),
        "{error}"
    );
    let error = error_of(
        &json!({"mpid": 5, "events": [{"event_type": "commerce_event",
        "data": {"promotion_action": {"action": "hover"}}}]}),
    );
    assert!(
        error.to_string().contains("promotion_action.action"),
        "{error}"
    );
}

#[test]
fn product_actions_are_normalised() {
    let path = Path::top("action");
    for (raw, expected) in [
        ("add_to_cart", "add_to_cart"),
        ("AddToCart", "add_to_cart"),
        ("addToCart", "add_to_cart"),
        ("ADD_TO_CART", "add_to_cart"),
        ("add to cart", "add_to_cart"),
        ("Checkout Option", "checkout_option"),
        ("ViewDetail", "view_detail"),
        ("RemoveFromWishlist", "remove_from_wishlist"),
        (" Purchase ", "purchase"),
        ("refund", "refund"),
    ] {
        assert_eq!(product_action(raw, &path).as_deref(), Ok(expected), "{raw}");
    }
    assert_eq!(
        product_action("AddToBasket", &path)
            .unwrap_err()
            .to_string(),
        "action: unknown product action \"AddToBasket\""
    );
}
