//! The event log: appends, sealing, bounds, retention and garbage that must not panic.

use super::*;
use crate::model::*;
use proptest::prelude::*;

fn custom(name: &str, at: TimestampMs, attrs: &[(&str, &str)]) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Custom {
            name: name.into(),
            custom_type: Some("search".into()),
        },
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn read_all(log: &EventLog, chunks: &[Vec<u8>], dict: &Dictionary) -> Vec<Event> {
    let mut out = Vec::new();
    for c in chunks {
        for e in ChunkReader::new(chunk_body(c).unwrap()) {
            out.push(e.unwrap().decode(dict).unwrap());
        }
    }
    for e in ChunkReader::new(&log.tail) {
        out.push(e.unwrap().decode(dict).unwrap());
    }
    out
}

#[test]
fn appends_seal_and_read_back_in_order() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    let mut events = Vec::new();
    for i in 0..500 {
        let e = custom(
            "Search",
            1_700_000_000_000 + i * 1000,
            &[("query", &format!("shoe {i}"))],
        );
        log.append(&mut dict, e.timestamp_ms, &e);
        events.push(e);
    }
    let w = log.take_writes();
    assert!(!w.put_chunks.is_empty());
    let chunks: Vec<Vec<u8>> = w.put_chunks.into_iter().map(|(_, b)| b).collect();
    assert_eq!(read_all(&log, &chunks, &dict), events);
    assert_eq!(log.events(), 500);
    // Names are coded once: "Search", "search" and "query".
    assert_eq!(dict.len(), 3);
    let per_event = log.bytes() as f64 / 500.0;
    assert!(per_event < 20.0, "{per_event} bytes per event");
}

#[test]
fn bounds_drop_the_oldest_and_count_them() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    let limits = LogLimits {
        max_events: 100,
        max_bytes: 1 << 20,
    };
    for i in 0..1000 {
        let e = custom("Search", 1_700_000_000_000 + i, &[("q", "x")]);
        log.append(&mut dict, e.timestamp_ms, &e);
        log.enforce(0, limits);
    }
    assert!(log.events() <= 100);
    assert_eq!(log.dropped_events, 1000 - log.events());
    assert!(log.events() > 0);
}

#[test]
fn tiny_bounds_trim_the_tail() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    let limits = LogLimits {
        max_events: 3,
        max_bytes: 1 << 20,
    };
    let mut all = Vec::new();
    for i in 0..10 {
        let e = custom("A", 1_000 + i * 7, &[]);
        log.append(&mut dict, e.timestamp_ms, &e);
        log.enforce(0, limits);
        all.push(e);
    }
    assert_eq!(read_all(&log, &[], &dict), all[7..].to_vec());
    assert_eq!(log.dropped_events, 7);
}

#[test]
fn retention_drops_whole_days() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    for i in 0..400 {
        let e = custom(
            "Search",
            i * 3_600_000,
            &[("query", "long enough to seal chunks")],
        );
        log.append(&mut dict, e.timestamp_ms, &e);
    }
    let _ = log.take_writes();
    let before = log.events();
    let cutoff = 10 * DAY_MS + 5;
    log.enforce(cutoff, LogLimits::default());
    let w = log.take_writes();
    assert!(!w.delete_chunks.is_empty());
    assert_eq!(w.dropped_by_bounds, 0);
    assert!(log.events() < before);
    // Nothing of the cutoff's day or later is gone.
    let oldest_chunk = log.sealed.first().map(|m| m.max_ms).unwrap();
    assert!((oldest_chunk.div_euclid(DAY_MS) + 1) * DAY_MS > cutoff);
    assert_eq!(log.dropped_events, 0);
}

#[test]
fn head_round_trips() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    for i in 0..300 {
        let e = custom("Search", i, &[("query", "abc")]);
        log.append(&mut dict, e.timestamp_ms, &e);
    }
    let _ = log.take_writes();
    assert_eq!(EventLog::decode(&log.encode()).unwrap(), log);
    let d2 = Dictionary::from_entries(dict.take_new()).unwrap();
    assert_eq!(d2.len(), dict.len());
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z ]{0,8}", ".{0,80}"]
}

fn arb_product() -> impl Strategy<Value = Product> {
    (
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(prop_oneof![
            (-1e6..1e6f64),
            (0i64..100_000).prop_map(|n| n as f64)
        ]),
        proptest::option::of((0i64..100).prop_map(|n| n as f64)),
    )
        .prop_map(
            |(id, name, brand, category, variant, price, quantity)| Product {
                id,
                name,
                brand,
                category,
                variant,
                price,
                quantity,
            },
        )
}

fn arb_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (arb_text(), proptest::option::of(arb_text()))
            .prop_map(|(name, custom_type)| EventKind::Custom { name, custom_type }),
        arb_text().prop_map(|name| EventKind::ScreenView { name }),
        (
            proptest::option::of("[a-z_]{1,12}"),
            proptest::collection::vec(arb_product(), 0..3),
            proptest::option::of(-1e5..1e5f64),
            proptest::option::of(arb_text())
        )
            .prop_map(|(product_action, products, total_amount, transaction_id)| {
                EventKind::Commerce {
                    product_action,
                    products,
                    total_amount,
                    transaction_id,
                }
            }),
        (
            "view|click",
            proptest::collection::vec(
                (
                    proptest::option::of(arb_text()),
                    proptest::option::of(arb_text()),
                    proptest::option::of(arb_text()),
                    proptest::option::of(arb_text())
                ),
                0..3
            )
        )
            .prop_map(|(action, ps)| EventKind::Promotion {
                action,
                promotions: ps
                    .into_iter()
                    .map(|(id, name, creative, position)| Promotion {
                        id,
                        name,
                        creative,
                        position
                    })
                    .collect()
            }),
        (
            proptest::option::of(arb_text()),
            proptest::collection::vec(arb_product(), 0..3)
        )
            .prop_map(|(list, products)| EventKind::Impression { list, products }),
        Just(EventKind::SessionStart),
        proptest::option::of(any::<i64>())
            .prop_map(|duration_ms| EventKind::SessionEnd { duration_ms }),
        Just(EventKind::CrashReport),
        Just(EventKind::FirstRun),
        (proptest::option::of(arb_text()), any::<bool>()).prop_map(|(transition, is_upgrade)| {
            EventKind::ApplicationStateTransition {
                transition,
                is_upgrade,
            }
        }),
        (
            arb_text(),
            proptest::option::of(prop_oneof![
                arb_text().prop_map(AttrValue::String),
                (-1e9..1e9f64).prop_map(AttrValue::Number),
                any::<bool>().prop_map(AttrValue::Bool),
                any::<i64>().prop_map(AttrValue::Date),
                proptest::collection::vec(arb_text(), 0..3).prop_map(AttrValue::List),
                Just(AttrValue::Null),
            ]),
            any::<bool>()
        )
            .prop_map(|(name, new_value, deleted)| {
                EventKind::UserAttributeChange {
                    name,
                    new_value,
                    deleted,
                }
            }),
        (
            arb_text(),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text())
        )
            .prop_map(|(identity_type, old_value, new_value)| {
                EventKind::UserIdentityChange(IdentityChange {
                    identity_type,
                    old_value,
                    new_value,
                })
            }),
        any::<bool>().prop_map(|opted_out| EventKind::OptOut { opted_out }),
        Just(EventKind::Uninstall),
        "[a-z_]{1,12}".prop_map(|event_type| EventKind::Other { event_type }),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        -1_000_000_000i64..4_000_000_000_000,
        arb_kind(),
        proptest::collection::btree_map(arb_text(), arb_text(), 0..4),
    )
        .prop_map(|(timestamp_ms, kind, attributes)| Event {
            timestamp_ms,
            kind,
            attributes,
        })
}

proptest! {
    #[test]
    fn every_event_reads_back_as_written(events in proptest::collection::vec(arb_event(), 0..60)) {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        for e in &events {
            log.append(&mut dict, e.timestamp_ms, e);
        }
        let w = log.take_writes();
        let chunks: Vec<Vec<u8>> = w.put_chunks.into_iter().map(|(_, b)| b).collect();
        // Read with the dictionary as stored and loaded again.
        let stored = Dictionary::from_entries(dict.take_new()).unwrap();
        let back = read_all(&log, &chunks, &stored);
        prop_assert_eq!(back.len(), events.len());
        for (a, b) in back.iter().zip(&events) {
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
        for (e, original) in ChunkReader::new(&log.tail).zip(events.iter().skip(events.len() - log.tail_meta.events as usize)) {
            let e = e.unwrap();
            let (t, n) = e.selector(&stored).unwrap();
            prop_assert_eq!(t, original.kind.event_type());
            prop_assert_eq!(n, original.kind.selector_name());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dict = Dictionary::default();
        for e in ChunkReader::new(&bytes) {
            match e {
                Ok(e) => { let _ = e.decode(&dict); let _ = e.selector(&dict); }
                Err(_) => break,
            }
        }
        let _ = EventLog::decode(&bytes);
    }
}
