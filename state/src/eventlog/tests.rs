//! The event log: appends, sealing, bounds, retention, messages (format 2) and logs of format
//! 1, and garbage that must not panic.

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

/// The tail is sealed small while the log is short (every append rewrites the head, tail
/// included) and larger as the log grows (the head holds a summary per chunk), within the
/// bounds; the head a long log rewrites stays a few KiB.
#[test]
fn the_seal_size_grows_with_the_log_within_its_bounds() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    assert_eq!(log.seal_at(), MIN_SEAL_BYTES, "an empty log seals early");
    let mut sealed_sizes = Vec::new();
    let mut largest_head = 0;
    for i in 0..60_000 {
        let e = custom(
            "Search",
            1_700_000_000_000 + i * 1000,
            &[("query", &format!("shoe {i}"))],
        );
        log.append(&mut dict, e.timestamp_ms, &e);
        largest_head = largest_head.max(log.encode().len());
        sealed_sizes.extend(
            log.take_writes()
                .put_chunks
                .iter()
                .map(|(_, r)| r.len() - 1),
        );
    }
    let first = sealed_sizes[0];
    let last = *sealed_sizes.last().unwrap();
    assert!(
        (MIN_SEAL_BYTES..MIN_SEAL_BYTES + 64).contains(&first),
        "{first}"
    );
    assert!(
        last > 4 * first,
        "a long log seals larger chunks: {first} then {last}"
    );
    assert!(sealed_sizes.iter().all(|&s| s < MAX_SEAL_BYTES + 64));
    assert!(
        sealed_sizes.windows(2).all(|w| w[1] + 64 >= w[0]),
        "never much smaller"
    );
    // About 800 KiB of log in about 360 chunks (a log that grew from nothing: its first chunks
    // are small): the head is the tail plus their summaries, about 13 KiB at most.
    assert!(sealed_sizes.len() < 400, "{} chunks", sealed_sizes.len());
    assert!(largest_head < 16 * 1024, "head of {largest_head} bytes");
    assert_eq!(log.events(), 60_000);
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
        let _ = read_units([bytes.as_slice()], &dict);
    }

    #[test]
    fn messages_read_back_as_logged(
        specs in proptest::collection::vec((0usize..4, proptest::collection::vec(arb_event(), 0..4)), 1..30),
    ) {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        let mut logged = Vec::new();
        for (i, (variant, events)) in specs.iter().enumerate() {
            let now = 1_700_000_000_000 + i as i64 * 1000;
            let m = message(now, *variant, events);
            log.append_message(&mut dict, &m);
            logged.push(m);
        }
        let w = log.take_writes();
        let chunks: Vec<Vec<u8>> = w.put_chunks.into_iter().map(|(_, b)| b).collect();
        let stored = Dictionary::from_entries(dict.take_new()).unwrap();
        let bodies: Vec<&[u8]> = chunks.iter().map(|c| chunk_body(c).unwrap()).collect();
        let units = read_units(bodies.into_iter().chain(Some(log.tail.as_slice())), &stored).unwrap();
        prop_assert_eq!(units.len(), logged.len());
        for (unit, m) in units.iter().zip(&logged) {
            let LogUnit::Message(back) = unit else {
                return Err(TestCaseError::fail("a message reads back as a message"));
            };
            prop_assert_eq!(back.now, m.now);
            prop_assert_eq!(back.message_time, m.message_time);
            prop_assert_eq!(&back.parts, &m.parts);
            prop_assert_eq!(&back.input, &m.input);
            prop_assert_eq!(back.events.len(), m.events.len());
            for (a, b) in back.events.iter().zip(&m.events) {
                prop_assert_eq!((a.at, a.derived, a.outside_tier), (b.at, b.derived, b.outside_tier));
                prop_assert_eq!(format!("{:?}", a.event), format!("{:?}", b.event));
            }
        }
        // Event criteria read the events of the tier, derived ones included, and nothing else.
        let readable = logged.iter().flat_map(|m| &m.events).filter(|e| !e.outside_tier).count();
        prop_assert_eq!(read_all(&log, &chunks, &stored).len(), readable);
        // A scan sees each event with its message's input.
        // Without stamps (a plan no scoped criterion is in), the same events, none stamped.
        let (mut stamps, mut unread) = (Vec::new(), Vec::new());
        let bodies = chunks.iter().map(|c| chunk_body(c).unwrap()).chain(Some(log.tail.as_slice()));
        for body in bodies {
            for_each_stamped_event(body, &stored, true, |_, input| {
                stamps.push(input.map(|t| t.input.clone()));
                Ok(())
            }).unwrap();
            for_each_stamped_event(body, &stored, false, |_, input| {
                unread.push(input.map(|t| t.input.clone()));
                Ok(())
            }).unwrap();
        }
        let expected: Vec<Option<String>> = logged
            .iter()
            .flat_map(|m| m.events.iter().filter(|e| !e.outside_tier).map(|_| m.input.as_ref().map(|t| t.input.clone())))
            .collect();
        prop_assert_eq!(unread, vec![None; expected.len()]);
        prop_assert_eq!(stamps, expected);
        prop_assert_eq!(log.events(), logged.iter().map(|m| m.events.len() as u64).sum::<u64>());
    }
}

/// A message of one of four shapes: a batch with every part, a batch with events alone, an
/// identity message, a batch with a derived and an outside-tier event.
fn message(now: TimestampMs, variant: usize, events: &[Event]) -> LoggedMessage<'static> {
    let mut parts = MessageParts::default();
    let mut logged: Vec<MessageEvent<'static>> = events
        .iter()
        .map(|e| MessageEvent {
            at: e.timestamp_ms,
            event: std::borrow::Cow::Owned(e.clone()),
            derived: false,
            outside_tier: false,
        })
        .collect();
    match variant {
        0 => {
            parts.user_identities = vec![("email".into(), "a@b.c".into())];
            parts.device_identities = vec![("ios_idfv".into(), "X-1".into())];
            parts.device_info = Some(DeviceInfo {
                platform: Some("iOS".into()),
                ..Default::default()
            });
            parts.app_version = Some("2.3.1".into());
            parts.location = Some(GeoLocation {
                city: Some("Lyon".into()),
                latitude: Some(45.76),
                longitude: Some(4.83),
                ..Default::default()
            });
            parts.attribution = Some(Attribution {
                publisher: Some("ads".into()),
                ..Default::default()
            });
            let mut consent = ConsentState::default();
            consent.gdpr.insert(
                "marketing".into(),
                GdprConsent {
                    consented: true,
                    timestamp_ms: Some(now),
                    document: None,
                },
            );
            consent.ccpa_data_sale_opt_out = Some(false);
            parts.consent = Some(consent);
            parts.user_attributes = vec![
                ("Tier".into(), AttrValue::String("gold".into())),
                ("score".into(), AttrValue::Number(2.5)),
                ("tags".into(), AttrValue::List(vec!["a".into(), "b".into()])),
            ];
            parts.deleted_user_attributes = vec!["old".into()];
        }
        1 => {}
        2 => {
            parts.identity_message = true;
            parts.identity_changes = vec![IdentityChange {
                identity_type: "email".into(),
                old_value: Some("a@b.c".into()),
                new_value: None,
            }];
            logged.clear();
        }
        _ => {
            for (i, e) in logged.iter_mut().enumerate() {
                e.derived = i % 2 == 0;
                e.outside_tier = i % 2 == 1;
            }
        }
    }
    LoggedMessage {
        now,
        message_time: now - 5_000,
        // Every other variant came through an input.
        input: variant.is_multiple_of(2).then(|| {
            std::borrow::Cow::Owned(InputTag {
                input: format!("input-{variant}"),
                workspace: "app-a".into(),
            })
        }),
        parts,
        events: logged,
    }
}

/// Bounds smaller than one chunk drop whole messages, oldest first, and hand them back for
/// the base; a message never spans two chunks.
#[test]
fn bounds_drop_whole_messages_and_hand_them_back() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    let events: Vec<Event> = (0..3)
        .map(|i| custom("Search", 1_000 + i, &[("query", "shoes")]))
        .collect();
    for i in 0..6 {
        log.append_message(&mut dict, &message(2_000 + i, 1, &events));
    }
    assert!(
        log.sealed.is_empty(),
        "the six messages are in the open tail"
    );
    let limits = LogLimits {
        max_events: 7,
        max_bytes: 1 << 20,
    };
    log.enforce(0, limits);
    let w = log.take_writes();
    assert_eq!(
        log.events(),
        6,
        "two whole messages of three events are kept"
    );
    assert_eq!(w.dropped_by_bounds, 12);
    let gone = read_units([w.dropped_tail.as_slice()], &dict).unwrap();
    assert_eq!(gone.len(), 4, "the four oldest messages leave, whole");
    let kept = read_units([log.tail.as_slice()], &dict).unwrap();
    let times: Vec<i64> = kept
        .iter()
        .map(|u| match u {
            LogUnit::Message(m) => m.now,
            LogUnit::BareEvent(..) => panic!("no bare events"),
        })
        .collect();
    assert_eq!(times, vec![2_004, 2_005]);

    // Sealing happens between messages: every sealed chunk reads as whole messages.
    let mut log = EventLog::default();
    let long: Vec<Event> = (0..40)
        .map(|i| {
            custom(
                "Search",
                1_000 + i,
                &[("query", "long enough to seal chunks")],
            )
        })
        .collect();
    for i in 0..20 {
        log.append_message(&mut dict, &message(5_000 + i, 1, &long));
    }
    let w = log.take_writes();
    assert!(w.put_chunks.len() > 2);
    for (_, record) in &w.put_chunks {
        let units = read_units([chunk_body(record).unwrap()], &dict).unwrap();
        assert!(units
            .iter()
            .all(|u| matches!(u, LogUnit::Message(m) if m.events.len() == 40)));
    }
}

/// A log of format 1 (events alone) still reads: its events are bare, and a format 2 message
/// appended after them reads as a message.
#[test]
fn a_format_1_log_reads_as_bare_events_then_messages() {
    let mut dict = Dictionary::default();
    let mut log = EventLog::default();
    let e = custom("Search", 10, &[("query", "shoes")]);
    log.append(&mut dict, 10, &e);
    let mut head = log.encode();
    head[0] = 1;
    let mut log = EventLog::decode(&head).unwrap();
    log.append_message(&mut dict, &message(20, 1, std::slice::from_ref(&e)));
    let mut record = vec![1u8];
    record.extend_from_slice(&log.tail);
    let units = read_units([chunk_body(&record).unwrap()], &dict).unwrap();
    assert!(matches!(&units[0], LogUnit::BareEvent(10, back) if *back == e));
    assert!(matches!(&units[1], LogUnit::Message(m) if m.events.len() == 1));
    assert!(chunk_body(&[3, 0]).is_err(), "an unknown format is refused");
}
