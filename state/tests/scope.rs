//! Scoped audiences on one profile: event based criteria count the events of their inputs,
//! user based ones read every input of their workspaces, and the audience holds only
//! profiles seen in one of its workspaces, whatever its criteria (an exclusion too).
//! Explanations name the sources.

use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::EvalContext;
use audience_state::model::*;
use audience_state::profile::ProfileState;
use serde_json::json;
use std::collections::BTreeMap;

const T0: i64 = 1_700_000_000_000;
const RETENTION: i64 = 30 * DAY_MS;

fn scoped(
    id: u64,
    criteria: serde_json::Value,
    workspaces: &[&str],
    inputs: &[&str],
) -> AudienceRecord {
    let mut r = AudienceRecord::active(id, format!("a{id}"), criteria);
    r.workspaces = workspaces.iter().map(|w| w.to_string()).collect();
    r.inputs = inputs.iter().map(|i| i.to_string()).collect();
    r
}

fn tag(input: &str, workspace: &str) -> Option<InputTag> {
    Some(InputTag {
        input: input.into(),
        workspace: workspace.into(),
    })
}

fn batch(
    input: Option<InputTag>,
    at: i64,
    events: Vec<Event>,
    identities: &[(&str, &str)],
) -> Inbound {
    Inbound::Batch(Batch {
        mpid: 1,
        timestamp_ms: Some(at),
        events,
        user_identities: identities
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_string()))
            .collect(),
        input,
        ..Default::default()
    })
}

fn play(at: i64) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Custom {
            name: "Play".into(),
            custom_type: None,
        },
        attributes: BTreeMap::new(),
    }
}

fn crash(at: i64) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::CrashReport,
        attributes: BTreeMap::new(),
    }
}

/// Applies `message` at `now` and evaluates the audiences it touched: those the profile is
/// then a member of.
fn apply_at(p: &mut ProfileState, catalog: &Catalog, message: Inbound, now: i64) -> Vec<u64> {
    let changes = p.apply(&message, now, RETENTION, catalog);
    let ctx = EvalContext {
        now,
        retention_ms: RETENTION,
    };
    p.evaluate(catalog.affected_by(&changes), catalog, &ctx, now);
    p.member_of().map(|(id, _)| id).collect()
}

#[test]
fn scoped_audiences_read_their_sources_and_hold_only_profiles_seen_in_their_workspaces() {
    let twice =
        json!({"event": {"type": "custom_event", "name": "Play", "count": {"at_least": 2}}});
    let catalog = Catalog::build(
        1,
        vec![
            // Plays on ios twice, with an email (given on the web, same workspace).
            scoped(
                1,
                json!({"and": [twice.clone(), {"identity": {"type": "email", "op": "exists"}}]}),
                &["app-a"],
                &["ios"],
            ),
            // Plays twice anywhere in app-a.
            scoped(2, twice.clone(), &["app-a"], &[]),
            // A crash in app-a, whatever input the audience selects for its events.
            scoped(
                3,
                json!({"event": {"type": "crash_report"}}),
                &["app-a"],
                &["web"],
            ),
            // Never purchased, among app-b's profiles.
            scoped(
                4,
                json!({"exclude": {"event": {"type": "commerce_event", "product_action": "purchase"}}}),
                &["app-b"],
                &[],
            ),
            // Unscoped.
            AudienceRecord::active(5, "anywhere", twice),
        ],
    );
    let mut p = ProfileState::new(1);
    let mut now = T0;
    let mut step = |p: &mut ProfileState, message: Inbound| {
        now += 1_000;
        apply_at(p, &catalog, message, now)
    };
    // Unstamped plays count only for the unscoped audience.
    assert_eq!(
        step(&mut p, batch(None, T0, vec![play(T0), play(T0)], &[])),
        vec![5]
    );
    // One play on ios, one through app-b's feed: not twice on ios, nor twice in app-a; the
    // profile is now seen in app-b, where it never purchased.
    assert_eq!(
        step(&mut p, batch(tag("ios", "app-a"), T0, vec![play(T0)], &[])),
        vec![5]
    );
    assert_eq!(
        step(&mut p, batch(tag("feed", "app-b"), T0, vec![play(T0)], &[])),
        vec![4, 5]
    );
    // A second ios play, and a crash on the web with an email: audience 1 needs the email of
    // the workspace, audience 3 reads crashes of every input of app-a.
    assert_eq!(
        step(&mut p, batch(tag("ios", "app-a"), T0, vec![play(T0)], &[])),
        vec![2, 4, 5]
    );
    assert_eq!(
        step(
            &mut p,
            batch(
                tag("web", "app-a"),
                T0,
                vec![crash(T0)],
                &[("email", "a@b.c")]
            )
        ),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        p.workspaces.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["app-a", "app-b"]
    );
    let ctx = EvalContext {
        now: T0 + 10_000,
        retention_ms: RETENTION,
    };
    let why = catalog.active(1).unwrap().compiled.root.explain(&p, &ctx);
    assert_eq!(why.children[0].criterion, "seen in workspace \"app-a\"");
    assert_eq!(
        why.children[0].detail, "seen in workspace \"app-a\"",
        "the gate's workspaces only"
    );
    let event = &why.children[1].children[0];
    assert!(
        event.criterion.contains("from input \"ios\"") && event.detail.starts_with("counted 2"),
        "{event:?}"
    );
    // A profile seen in no workspace is outside every scoped audience, an exclusion included.
    let other = ProfileState::new(2);
    let why = catalog
        .active(4)
        .unwrap()
        .compiled
        .root
        .explain(&other, &ctx);
    assert!(!why.matched);
    assert_eq!(why.children[0].detail, "seen in none of them");
}

fn attributes(
    input: Option<InputTag>,
    at: i64,
    set: &[(&str, &str)],
    events: Vec<Event>,
) -> Inbound {
    Inbound::Batch(Batch {
        mpid: 1,
        timestamp_ms: Some(at),
        events,
        user_attributes: set
            .iter()
            .map(|(k, v)| (k.to_string(), AttrValue::String(v.to_string())))
            .collect(),
        input,
        ..Default::default()
    })
}

/// The seed: "all user profile data is scoped and maintained within a single workspace; in
/// multiworkspace audiences, you can select which workspace to use". A criterion that picks
/// a workspace reads the attributes its inputs set and counts its events; one that picks none
/// reads the latest value from any source.
#[test]
fn a_multi_workspace_audience_picks_the_workspace_of_each_criterion() {
    let gold_in = |workspace: Option<&str>| {
        let mut c = json!({"name": "tier", "op": "exact_match", "value": "gold"});
        if let Some(w) = workspace {
            c["workspace"] = json!(w);
        }
        json!({"user_attribute": c})
    };
    let play_in =
        |w: &str| json!({"event": {"type": "custom_event", "name": "Play", "workspace": w}});
    let both = ["app-a", "app-b"];
    let catalog = Catalog::build(
        1,
        vec![
            // Gold in app-b, and played in app-a.
            scoped(
                1,
                json!({"and": [gold_in(Some("app-b")), play_in("app-a")]}),
                &both,
                &[],
            ),
            // Gold, from any source.
            scoped(2, gold_in(None), &both, &[]),
            // Played through the audience's inputs of app-b: the feed, not ios.
            scoped(3, play_in("app-b"), &both, &["feed", "ios"]),
        ],
    );
    let mut p = ProfileState::new(1);
    let mut now = T0;
    let mut step = |p: &mut ProfileState, message: Inbound| {
        now += 1_000;
        apply_at(p, &catalog, message, now)
    };
    let (ios, feed) = (tag("ios", "app-a"), tag("feed", "app-b"));
    assert_eq!(
        step(
            &mut p,
            attributes(ios.clone(), T0, &[("Tier", "gold")], vec![play(T0)])
        ),
        vec![2],
        "gold in app-a only; played on ios"
    );
    assert_eq!(
        step(
            &mut p,
            attributes(feed.clone(), T0, &[("tier", "silver")], vec![])
        ),
        Vec::<u64>::new(),
        "the latest value is app-b's silver"
    );
    assert_eq!(
        step(
            &mut p,
            attributes(feed.clone(), T0, &[("tier", "gold")], vec![play(T0)])
        ),
        vec![1, 2, 3]
    );
    assert_eq!(
        p.attribute_in("app-a", "tier"),
        Some(&AttrValue::String("gold".into()))
    );
    // Deleted through ios: gone from app-a and from the latest values, kept in app-b.
    let deleted = Inbound::Batch(Batch {
        mpid: 1,
        timestamp_ms: Some(T0),
        deleted_user_attributes: vec!["tier".into()],
        input: ios,
        ..Default::default()
    });
    assert_eq!(step(&mut p, deleted), vec![1, 3]);
    assert_eq!(p.attribute("tier"), None);
    assert!(!p.workspace_attributes.contains_key("app-a"));
    assert_eq!(
        p.attribute_in("app-b", "tier"),
        Some(&AttrValue::String("gold".into()))
    );
    // The core row keeps each workspace's attributes.
    let read = ProfileState::decode(&p.encode_core()).unwrap();
    assert_eq!(read.workspace_attributes, p.workspace_attributes);

    let ctx = EvalContext {
        now: T0 + 10_000,
        retention_ms: RETENTION,
    };
    let why = catalog.active(1).unwrap().compiled.root.explain(&p, &ctx);
    let criteria = &why.children[1].children;
    assert_eq!(
        criteria[0].criterion,
        "tier exact match \"gold\" in workspace \"app-b\""
    );
    assert!(criteria[0].detail.contains("gold"), "{:?}", criteria[0]);
    assert!(
        criteria[1].criterion.contains("from workspace \"app-a\""),
        "{:?}",
        criteria[1]
    );
    // Identities are workspace-scoped too: an email collected through ios is app-a's.
    let email_in_b = Catalog::build(
        1,
        vec![scoped(
            7,
            json!({"identity": {"type": "email", "op": "exists", "workspace": "app-b"}}),
            &both,
            &[],
        )],
    );
    let mut q = ProfileState::new(2);
    let member =
        |q: &mut ProfileState, message: Inbound| apply_at(q, &email_in_b, message, T0) == [7];
    let email = [("email", "q@example.com")];
    assert!(!member(
        &mut q,
        batch(tag("ios", "app-a"), T0, vec![], &email)
    ));
    assert!(member(
        &mut q,
        batch(tag("feed", "app-b"), T0, vec![], &email)
    ));
    assert_eq!(
        q.identities_in("app-a", "email"),
        Some(&vec!["q@example.com".to_string()])
    );
    let why = email_in_b
        .active(7)
        .unwrap()
        .compiled
        .root
        .explain(&q, &ctx);
    assert_eq!(
        why.children[1].criterion,
        "identity email exists in workspace \"app-b\""
    );

    let why = catalog.active(3).unwrap().compiled.root.explain(&p, &ctx);
    assert!(
        why.children[1]
            .criterion
            .contains("from input \"feed\" or \"ios\" of workspace \"app-b\""),
        "{why:?}"
    );
}

#[test]
fn a_picked_workspace_must_be_one_of_the_audiences_and_only_some_criteria_pick() {
    let refused = |criteria: serde_json::Value, workspaces: &[&str]| {
        scoped(9, criteria, workspaces, &[]).validate().unwrap_err()
    };
    let e = refused(
        json!({"and": [{"user_attribute": {"name": "tier", "op": "exists", "workspace": "app-c"}}]}),
        &["app-a", "app-b"],
    );
    assert_eq!(e.field, "criteria.and[0].user_attribute.workspace");
    assert!(
        e.reason
            .contains("\"app-c\" is not one of the audience's workspaces (app-a, app-b)"),
        "{e}"
    );
    let e = refused(
        json!({"event": {"name": "Play", "workspace": "app-a"}}),
        &[],
    );
    assert_eq!(e.field, "criteria.event.workspace");
    assert!(e.reason.contains("selects workspaces"), "{e}");
    let e = refused(
        json!({"event": {"name": "Play", "attributes": [{"name": "x", "op": "exists", "workspace": "app-a"}]}}),
        &["app-a"],
    );
    assert!(e.field.ends_with(".workspace"), "{e}");
    assert!(
        e.reason
            .contains("only user attribute, identity, event, consent, device, location"),
        "{e}"
    );
    // Picked right, it compiles; the definition reads back as written.
    let fine = scoped(
        9,
        json!({"user_attribute": {"name": "tier", "op": "exists", "workspace": "app-a"}}),
        &["app-a", "app-b"],
        &[],
    );
    assert!(fine.validate().is_ok());
}

/// A batch of `input` carrying device, consent, location and, with a first run, an install
/// attribution.
fn user_data(
    input: Option<InputTag>,
    at: i64,
    platform: &str,
    city: Option<&str>,
    ccpa_opted_out: Option<bool>,
    publisher: Option<&str>,
) -> Inbound {
    let events = match publisher {
        Some(_) => vec![Event {
            timestamp_ms: at,
            kind: EventKind::FirstRun,
            attributes: BTreeMap::new(),
        }],
        None => vec![],
    };
    Inbound::Batch(Batch {
        mpid: 1,
        timestamp_ms: Some(at),
        events,
        device_info: Some(DeviceInfo {
            platform: Some(platform.into()),
            ..Default::default()
        }),
        location: city.map(|c| GeoLocation {
            city: Some(c.into()),
            ..Default::default()
        }),
        consent: ccpa_opted_out.map(|opted_out| ConsentState {
            gdpr: BTreeMap::new(),
            ccpa_data_sale_opt_out: Some(opted_out),
        }),
        attribution: publisher.map(|p| Attribution {
            publisher: Some(p.into()),
            ..Default::default()
        }),
        input,
        ..Default::default()
    })
}

/// Device, consent, location and attribution are user profile data as well: each workspace
/// keeps what its inputs set, a multi workspace audience's criterion picks one, and a profile
/// folded again from its logged messages holds the same copies.
#[test]
fn consent_device_location_and_attribution_criteria_pick_a_workspace_too() {
    let both = ["app-a", "app-b"];
    let catalog = Catalog::build(
        1,
        vec![
            scoped(
                11,
                json!({"device": {"field": "platform", "op": "exact_match", "value": "Android", "workspace": "app-b"}}),
                &both,
                &[],
            ),
            scoped(
                12,
                json!({"consent": {"regulation": "ccpa", "state": "opted_out", "workspace": "app-a"}}),
                &both,
                &[],
            ),
            scoped(
                13,
                json!({"location": {"field": "city", "op": "exact_match", "value": "Lyon", "workspace": "app-b"}}),
                &both,
                &[],
            ),
            scoped(
                14,
                json!({"attribution": {"kind": "install", "workspace": "app-a"}}),
                &both,
                &[],
            ),
            // No pick: the latest platform from any source.
            scoped(
                15,
                json!({"device": {"field": "platform", "op": "exact_match", "value": "Android"}}),
                &both,
                &[],
            ),
            scoped(
                16,
                json!({"location": {"within": {"distance": 50, "unit": "km", "city": "Lyon, FR"}, "workspace": "app-a"}}),
                &both,
                &[],
            ),
        ],
    );
    let (ios, feed) = (tag("ios", "app-a"), tag("feed", "app-b"));
    let mut p = ProfileState::new(1);
    let mut logged = Vec::new();
    let mut now = T0;
    let mut step = |p: &mut ProfileState, message: Inbound| {
        now += 1_000;
        let changes = p.apply_logged(&message, now, RETENTION, &catalog, &mut |m| {
            logged.push((now, m.clone().into_inbound(1)))
        });
        let ctx = EvalContext {
            now,
            retention_ms: RETENTION,
        };
        p.evaluate(catalog.affected_by(&changes), &catalog, &ctx, now);
        p.member_of().map(|(id, _)| id).collect::<Vec<_>>()
    };
    assert_eq!(
        step(
            &mut p,
            user_data(
                ios.clone(),
                T0,
                "iOS",
                Some("Paris"),
                Some(true),
                Some("ads")
            )
        ),
        vec![12, 14],
        "app-a opted out and was attributed; app-b set nothing"
    );
    assert_eq!(
        step(
            &mut p,
            user_data(feed.clone(), T0, "Android", Some("Lyon"), None, None)
        ),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(
        step(
            &mut p,
            user_data(ios.clone(), T0, "iOS", None, Some(false), None)
        ),
        vec![11, 13, 14],
        "the latest platform is iOS again, app-a opted back in; app-b still keeps Android"
    );
    assert_eq!(p.device.platform.as_deref(), Some("iOS"));
    assert_eq!(
        p.user_data(Some("app-b")).device.platform.as_deref(),
        Some("Android")
    );
    assert!(p.user_data(Some("app-b")).install_attribution.is_none());
    // Paris is not within 50 km of Lyon: app-a's position is Paris's, without coordinates.
    assert!(!p.member_of().any(|(id, _)| id == 16));

    // The stored row and the log keep the copies.
    let read = ProfileState::decode(&p.encode_core()).unwrap();
    assert_eq!(read.workspace_data, p.workspace_data);
    let mut folded = ProfileState::new(1);
    for (at, message) in &logged {
        folded.apply(message, *at, RETENTION, &catalog);
    }
    assert_eq!(folded.workspace_data, p.workspace_data);
    assert_eq!(folded.device, p.device);

    // Explain names the workspace and shows its value.
    let ctx = EvalContext {
        now: T0 + 10_000,
        retention_ms: RETENTION,
    };
    let why = catalog.active(11).unwrap().compiled.root.explain(&p, &ctx);
    assert_eq!(
        why.children[1].criterion,
        "device platform exact match \"android\" in workspace \"app-b\""
    );
    assert_eq!(why.children[1].detail, "the value is \"Android\"");
    let why = catalog.active(12).unwrap().compiled.root.explain(&p, &ctx);
    assert_eq!(
        why.children[1].criterion,
        "CCPA data sale opt-out is opted out in workspace \"app-a\""
    );
    assert_eq!(why.children[1].detail, "not opted out");

    // A pick outside the audience's workspaces is refused, naming the field.
    let e = scoped(
        17,
        json!({"consent": {"regulation": "ccpa", "state": "opted_out", "workspace": "app-c"}}),
        &both,
        &[],
    )
    .validate()
    .unwrap_err();
    assert_eq!(e.field, "criteria.consent.workspace");
}

fn commerce(action: &str, at: i64) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Commerce {
            product_action: Some(action.into()),
            products: vec![],
            total_amount: None,
            transaction_id: None,
        },
        attributes: BTreeMap::new(),
    }
}

/// Cart abandonment is event based: in a scoped audience it reads the adds to cart and the
/// purchases of the audience's inputs only, as the event criteria of those actions would.
#[test]
fn a_scoped_cart_abandonment_reads_the_commerce_events_of_its_inputs() {
    let abandoned = json!({"cart_abandonment": {"wait_minutes": 10}});
    let catalog = Catalog::build(
        1,
        vec![
            scoped(21, abandoned.clone(), &["app-a"], &["ios"]),
            AudienceRecord::active(22, "anywhere", abandoned.clone()),
            // A multi workspace audience picking app-b's commerce events.
            scoped(
                23,
                json!({"cart_abandonment": {"wait_minutes": 10, "workspace": "app-b"}}),
                &["app-a", "app-b"],
                &[],
            ),
        ],
    );
    let (ios, feed) = (tag("ios", "app-a"), tag("feed", "app-b"));
    let mut p = ProfileState::new(1);
    let mut now = T0;
    // A message at `now`, then the timers that fell due within the next 11 minutes.
    let mut step = |p: &mut ProfileState, input: &Option<InputTag>, action: &str| {
        now += 1_000;
        let message = batch(input.clone(), now, vec![commerce(action, now)], &[]);
        apply_at(p, &catalog, message, now);
        now += 11 * 60_000;
        let ctx = EvalContext {
            now,
            retention_ms: RETENTION,
        };
        p.evaluate(p.due_audiences(now), &catalog, &ctx, now);
        p.member_of().map(|(id, _)| id).collect::<Vec<_>>()
    };
    assert_eq!(
        step(&mut p, &feed, "add_to_cart"),
        vec![22, 23],
        "added through app-b's feed: not through ios"
    );
    assert_eq!(step(&mut p, &ios, "add_to_cart"), vec![21, 22, 23]);
    assert_eq!(
        step(&mut p, &feed, "purchase"),
        vec![21],
        "a purchase through the feed ends the abandonment of every message and of app-b's"
    );
    assert_eq!(step(&mut p, &ios, "purchase"), Vec::<u64>::new());

    let ctx = EvalContext {
        now,
        retention_ms: RETENTION,
    };
    let why = catalog.active(21).unwrap().compiled.root.explain(&p, &ctx);
    assert!(
        why.children[1]
            .criterion
            .ends_with("for 10 minutes from input \"ios\""),
        "{why:?}"
    );
    // The audience's matchers keep the series: an audience created later backfills them.
    let matchers = &catalog.active(21).unwrap().compiled.matchers;
    assert_eq!(matchers.len(), 2, "adds and purchases of ios: {matchers:?}");
    let e = scoped(
        24,
        json!({"cart_abandonment": {"wait_minutes": 10, "workspace": "app-c"}}),
        &["app-a"],
        &[],
    )
    .validate()
    .unwrap_err();
    assert_eq!(e.field, "criteria.cart_abandonment.workspace");
}

/// A calculated attribute is user data: one defined over app-b folds the events of app-b's
/// inputs only.
#[test]
fn a_calculated_attribute_of_a_workspace_folds_only_its_inputs_events() {
    let plays: audience_state::calculated::CalculatedAttributeRecord = serde_json::from_value(
        json!({"name": "plays", "calculation": "count", "event": {"type": "custom_event", "name": "Play"}, "workspaces": ["app-b"]}),
    )
    .unwrap();
    let catalog = Catalog::build_full(
        1,
        vec![scoped(
            31,
            json!({"calculated_attribute": {"name": "plays", "op": "greater_than", "value": 1}}),
            &["app-a", "app-b"],
            &[],
        )],
        vec![],
        vec![plays],
    );
    let (ios, feed) = (tag("ios", "app-a"), tag("feed", "app-b"));
    let mut p = ProfileState::new(1);
    let mut now = T0;
    let mut step = |p: &mut ProfileState, input: &Option<InputTag>| {
        now += 1_000;
        apply_at(
            p,
            &catalog,
            batch(input.clone(), now, vec![play(now)], &[]),
            now,
        )
    };
    assert!(step(&mut p, &ios).is_empty());
    assert!(
        step(&mut p, &ios).is_empty(),
        "app-a's plays are not app-b's"
    );
    assert!(step(&mut p, &feed).is_empty());
    assert_eq!(step(&mut p, &feed), vec![31]);
    let value = |p: &ProfileState| {
        let spec = catalog.calculated_spec("plays").unwrap();
        audience_state::calculated::value_of(p.calculated.get("plays"), &spec, T0 + 10_000).0
    };
    assert_eq!(value(&p), Some(AttrValue::Number(2.0)));

    // An audience of workspaces reads only calculated attributes of its workspaces; the
    // attribute's side: it cannot move outside the workspaces of an audience reading it.
    let record =
        |json: serde_json::Value| -> audience_state::calculated::CalculatedAttributeRecord {
            serde_json::from_value(json).unwrap()
        };
    let everywhere = record(
        json!({"name": "all plays", "calculation": "count", "event": {"type": "custom_event", "name": "Play"}}),
    );
    let with_everywhere = Catalog::build_full(
        2,
        catalog.records().cloned().collect::<Vec<_>>(),
        vec![],
        catalog
            .calculated_records()
            .iter()
            .cloned()
            .chain([everywhere])
            .collect(),
    );
    let reading = |name: &str, workspaces: &[&str]| {
        scoped(
            40,
            json!({"calculated_attribute": {"name": name, "op": "greater_than", "value": 0}}),
            workspaces,
            &[],
        )
    };
    let check = |r: &AudienceRecord| with_everywhere.check_calculated_scope(r);
    assert!(check(&reading("plays", &["app-b"])).is_ok());
    assert!(check(&reading("Plays", &["app-a", "app-b"])).is_ok());
    let e = check(&reading("plays", &["app-a"])).unwrap_err();
    assert_eq!(e.field, "criteria.calculated_attribute.name");
    assert!(
        e.reason
            .contains("\"plays\" is calculated over workspace app-b"),
        "{e}"
    );
    let e = check(&reading("all plays", &["app-b"])).unwrap_err();
    assert!(e.reason.contains("over every workspace"), "{e}");
    let unscoped = AudienceRecord::active(
        41,
        "a41",
        json!({"calculated_attribute": {"name": "all plays", "op": "greater_than", "value": 0}}),
    );
    assert!(check(&unscoped).is_ok(), "an unscoped audience reads any");
    let moved = record(
        json!({"name": "plays", "calculation": "count", "event": {"type": "custom_event", "name": "Play"}, "workspaces": ["app-c"]}),
    );
    let conflict = with_everywhere.calculated_scope_conflict(&moved).unwrap();
    assert!(conflict.contains("audience(s) 31"), "{conflict}");
    let within = record(
        json!({"name": "plays", "calculation": "count", "event": {"type": "custom_event", "name": "Play"}, "workspaces": ["app-a"]}),
    );
    assert_eq!(with_everywhere.calculated_scope_conflict(&within), None);
}
