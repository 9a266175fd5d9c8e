//! Validation and compilation: a [`Criterion`] checked field by field (every refusal names
//! its JSON path) and turned into a [`CompiledAudience`].

use super::compiled::*;
use super::condition::*;
use super::definition::*;
use super::scope::*;
use super::values::*;
use crate::model::{DAY_MS, PRODUCT_ACTIONS};

pub(super) const EVENT_TYPES: &[&str] = &[
    "custom_event",
    "screen_view",
    "commerce_event",
    "session_start",
    "session_end",
    "crash_report",
    "first_run",
    "application_state_transition",
    "opt_out",
    "uninstall",
    "push_registration",
    "push_message",
    "network_performance",
    "breadcrumb",
    "profile",
    "media",
    "upgrade",
];

/// How a definition finds the calculated attributes it reads, by lowercased name.
pub type CalcLookup<'a> = &'a dyn Fn(&str) -> Option<crate::aggregate::CalcSpec>;

/// Validates and compiles a definition that reads no calculated attribute.
pub fn compile(criterion: &Criterion) -> Result<CompiledAudience, DefinitionError> {
    compile_with(criterion, &|_| None)
}

/// Validates and compiles a definition, resolving calculated attributes with `calc`.
pub fn compile_with(
    criterion: &Criterion,
    calc: CalcLookup<'_>,
) -> Result<CompiledAudience, DefinitionError> {
    compile_scoped(criterion, calc, &Scope::default())
}

/// Validates and compiles a definition of an audience reading from `scope` (see
/// [`Scope`]): its event criteria count the events of the scope's sources only, and the tree
/// is gated on the profile having been seen in one of its workspaces.
pub fn compile_scoped(
    criterion: &Criterion,
    calc: CalcLookup<'_>,
    scope: &Scope,
) -> Result<CompiledAudience, DefinitionError> {
    let root = scope.gate(compile_node(criterion, "criteria", calc, scope)?);
    let mut reads = Vec::new();
    let mut matchers = Vec::new();
    root.collect_reads(&mut reads);
    collect_matchers(criterion, scope, &mut matchers);
    reads.sort();
    reads.dedup();
    let time_dependent = root.is_time_dependent();
    let references = reads
        .iter()
        .filter_map(|r| match r {
            ReadKey::Audience(id) => Some(*id),
            _ => None,
        })
        .collect();
    Ok(CompiledAudience {
        root,
        reads,
        references,
        matchers,
        time_dependent,
    })
}

pub(super) fn collect_matchers(criterion: &Criterion, scope: &Scope, out: &mut Vec<Matcher>) {
    match criterion {
        Criterion::And(c) | Criterion::Or(c) => {
            c.iter().for_each(|n| collect_matchers(n, scope, out))
        }
        Criterion::Exclude(c) => collect_matchers(c, scope, out),
        Criterion::Event(e) if e.needs_series(scope) => {
            // Validated already: compiling again cannot fail.
            if let Ok(m) = series_matcher(e, "", scope) {
                add_matcher(out, m);
            }
        }
        Criterion::CartAbandonment(c) => {
            let any_action = c.ended_by_any_action().unwrap_or_default();
            if let Some(source) = scope.event_source_in("commerce_event", c.workspace.as_deref()) {
                let (added, ended_by) = cart_matchers(any_action, &source);
                for m in std::iter::once(added).chain(ended_by) {
                    add_matcher(out, m);
                }
            }
        }
        _ => {}
    }
}

/// The matchers of a cart abandonment reading `source`: its adds to cart, then the product
/// actions that end it (a purchase, or with `any_action` every product action but an add).
/// Keyed as the event criteria of the same actions and source, whose series they share.
fn cart_matchers(any_action: bool, source: &EventSource) -> (Matcher, Vec<Matcher>) {
    let action = |product_action: &str| {
        let selector = EventCriterion {
            event_type: "commerce_event".into(),
            name: None,
            custom_event_type: None,
            product_action: Some(product_action.into()),
            attributes: vec![],
            product: vec![],
            transaction: vec![],
            promotion_action: None,
            promotion: vec![],
            impression: false,
            impression_list: None,
            count: None,
            time: None,
            workspace: None,
        };
        let matcher = event_selector(&selector, "").expect("a product action is a selector");
        scoped(matcher, source.clone())
    };
    let ended_by = PRODUCT_ACTIONS
        .iter()
        .filter(|&&a| {
            if any_action {
                a != "add_to_cart"
            } else {
                a == "purchase"
            }
        })
        .map(|a| action(a))
        .collect();
    (action("add_to_cart"), ended_by)
}

/// Adds a matcher, once per series.
fn add_matcher(out: &mut Vec<Matcher>, m: Matcher) {
    if !out.iter().any(|x| x.history_key == m.history_key) {
        out.push(m);
    }
}

pub(super) fn compile_node(
    criterion: &Criterion,
    path: &str,
    calc: CalcLookup<'_>,
    scope: &Scope,
) -> Result<Node, DefinitionError> {
    Ok(match criterion {
        Criterion::And(children) | Criterion::Or(children) => {
            let op = if matches!(criterion, Criterion::And(_)) {
                "and"
            } else {
                "or"
            };
            if children.is_empty() {
                return Err(DefinitionError::new(
                    format!("{path}.{op}"),
                    "needs at least one criterion",
                ));
            }
            let nodes = children
                .iter()
                .enumerate()
                .map(|(i, c)| compile_node(c, &format!("{path}.{op}[{i}]"), calc, scope))
                .collect::<Result<Vec<_>, _>>()?;
            if op == "and" {
                Node::And(nodes)
            } else {
                Node::Or(nodes)
            }
        }
        Criterion::Exclude(child) => Node::Not(Box::new(compile_node(
            child,
            &format!("{path}.exclude"),
            calc,
            scope,
        )?)),
        Criterion::UserAttribute(cond) => {
            let path = format!("{path}.user_attribute");
            let unpicked = Condition {
                workspace: None,
                ..cond.clone()
            };
            let compiled = compile_condition(&unpicked, &path)?;
            match scope.check_pick(cond.workspace.as_deref(), &path)? {
                Some(workspace) => Node::WorkspaceAttribute {
                    workspace,
                    cond: compiled,
                },
                None => Node::Attribute(compiled),
            }
        }
        Criterion::Identity(id) => {
            let path = format!("{path}.identity");
            let identity_type = id.identity_type.trim().to_lowercase();
            if identity_type.is_empty() {
                return Err(DefinitionError::new(
                    format!("{path}.type"),
                    "must not be empty",
                ));
            }
            let cond = Condition {
                name: identity_type.clone(),
                op: id.op.unwrap_or(Operator::Exists),
                value: id.value.clone(),
                workspace: None,
            };
            let compiled = compile_condition(&cond, &path)?;
            if matches!(
                compiled.test,
                Test::NumberCmp(..) | Test::NumberBetween(..) | Test::IsBool(_) | Test::DateIn(..)
            ) {
                return Err(DefinitionError::new(
                    format!("{path}.op"),
                    "identities take string operators, exists or not_exists",
                ));
            }
            Node::Identity {
                identity_type,
                test: compiled.test,
                workspace: scope.check_pick(id.workspace.as_deref(), &path)?,
            }
        }
        Criterion::Event(e) => {
            let path = format!("{path}.event");
            scope.check_pick(e.workspace.as_deref(), &path)?;
            Node::Event(compile_event(e, &path, scope)?)
        }
        Criterion::Consent(c) => {
            let path = format!("{path}.consent");
            Node::Consent {
                test: compile_consent(c, &path)?,
                workspace: scope.check_pick(c.workspace.as_deref(), &path)?,
            }
        }
        Criterion::Device(d) => {
            let path = format!("{path}.device");
            let field = d.field.trim().to_lowercase();
            if !DEVICE_FIELDS.contains(&field.as_str()) {
                return Err(DefinitionError::new(
                    format!("{path}.field"),
                    format!(
                        "unknown device field \"{}\" (one of: {})",
                        d.field,
                        DEVICE_FIELDS.join(", ")
                    ),
                ));
            }
            let cond = Condition {
                name: field.clone(),
                op: d.op,
                value: d.value.clone(),
                workspace: None,
            };
            Node::Device {
                field,
                test: compile_condition(&cond, &path)?.test,
                workspace: scope.check_pick(d.workspace.as_deref(), &path)?,
            }
        }
        Criterion::Audience(r) => {
            if r.id == 0 {
                return Err(DefinitionError::new(
                    format!("{path}.audience.id"),
                    "audience ids start at 1",
                ));
            }
            Node::Audience {
                id: r.id,
                member: r.member,
            }
        }
        Criterion::CartAbandonment(c) => {
            let path = format!("{path}.cart_abandonment");
            if c.wait_minutes == 0 {
                return Err(DefinitionError::new(
                    format!("{path}.wait_minutes"),
                    "must be at least 1",
                ));
            }
            let any_action = c
                .ended_by_any_action()
                .map_err(|reason| DefinitionError::new(format!("{path}.without"), reason))?;
            let picked = scope.check_pick(c.workspace.as_deref(), &path)?;
            let series = scope
                .event_source_in("commerce_event", picked.as_deref())
                .map(|source| {
                    let (added, ended_by) = cart_matchers(any_action, &source);
                    CartSeries {
                        added: added.history_key,
                        ended_by: ended_by.into_iter().map(|m| m.history_key).collect(),
                        source,
                    }
                });
            Node::CartAbandonment {
                wait_ms: c.wait_minutes as i64 * 60_000,
                any_action,
                series,
            }
        }
        Criterion::FirstSeen(window) => {
            Node::FirstSeen(compile_window(Some(window), &format!("{path}.first_seen"))?)
        }
        Criterion::CalculatedAttribute(cond) => {
            let path = format!("{path}.calculated_attribute");
            let compiled = compile_condition(cond, &path)?;
            let spec = calc(&compiled.name).ok_or_else(|| {
                DefinitionError::new(
                    format!("{path}.name"),
                    format!(
                        "calculated attribute \"{}\" is not defined",
                        cond.name.trim()
                    ),
                )
            })?;
            Node::Calculated {
                key: compiled.name,
                spec,
                test: compiled.test,
            }
        }
        Criterion::Attribution(a) => {
            let path = format!("{path}.attribution");
            let uninstall = match a.kind.trim().to_lowercase().as_str() {
                "install" => false,
                "uninstall" => true,
                other => {
                    return Err(DefinitionError::new(
                        format!("{path}.kind"),
                        format!("\"{other}\" is not install or uninstall"),
                    ))
                }
            };
            let field = match a.field.as_deref().map(|f| f.trim().to_lowercase()) {
                None => None,
                Some(f) if f == "publisher" || f == "campaign" => Some(f),
                Some(f) => {
                    return Err(DefinitionError::new(
                        format!("{path}.field"),
                        format!("\"{f}\" is not publisher or campaign"),
                    ))
                }
            };
            let op = a.op.unwrap_or(Operator::Exists);
            if field.is_none() && !matches!(op, Operator::Exists | Operator::NotExists) {
                return Err(DefinitionError::new(
                    format!("{path}.op"),
                    "without a field, attribution takes exists or not_exists",
                ));
            }
            let cond = Condition {
                name: field.clone().unwrap_or_else(|| a.kind.clone()),
                op,
                value: a.value.clone(),
                workspace: None,
            };
            Node::Attribution {
                uninstall,
                field,
                test: string_test(&cond, &path)?,
                workspace: scope.check_pick(a.workspace.as_deref(), &path)?,
            }
        }
        Criterion::Location(l) => {
            let path = format!("{path}.location");
            let workspace = scope.check_pick(l.workspace.as_deref(), &path)?;
            compile_location(l, &path, workspace)?
        }
    })
}

/// A location criterion reading the data of `workspace` (`None`: the profile's latest).
pub(super) fn compile_location(
    l: &LocationCriterion,
    path: &str,
    workspace: Option<String>,
) -> Result<Node, DefinitionError> {
    match (&l.field, &l.within) {
        (Some(field), None) => {
            let field = field.trim().to_lowercase();
            if !LOCATION_FIELDS.contains(&field.as_str()) {
                return Err(DefinitionError::new(
                    format!("{path}.field"),
                    format!(
                        "unknown location field \"{field}\" (one of: {})",
                        LOCATION_FIELDS.join(", ")
                    ),
                ));
            }
            let cond = Condition {
                name: field.clone(),
                op: l.op.unwrap_or(Operator::ExactMatch),
                value: l.value.clone(),
                workspace: None,
            };
            Ok(Node::LocationField {
                test: string_test(&cond, path)?,
                field,
                workspace,
            })
        }
        (None, Some(w)) => {
            let path = format!("{path}.within");
            if l.op.is_some() || l.value.is_some() {
                return Err(DefinitionError::new(
                    &path,
                    "within takes no op or value: distance, unit and a point or a city",
                ));
            }
            if !(w.distance.is_finite() && w.distance > 0.0) {
                return Err(DefinitionError::new(
                    format!("{path}.distance"),
                    format!("{} is not a positive distance", w.distance),
                ));
            }
            let per_unit = match w
                .unit
                .as_deref()
                .map(|u| u.trim().to_lowercase())
                .as_deref()
            {
                None | Some("mi") | Some("miles") => crate::geo::KM_PER_MILE,
                Some("km") | Some("kilometers") | Some("kilometres") => 1.0,
                Some(other) => {
                    return Err(DefinitionError::new(
                        format!("{path}.unit"),
                        format!("\"{other}\" is not mi or km"),
                    ))
                }
            };
            let (latitude, longitude, label) = match (w.latitude, w.longitude, &w.city) {
                (Some(lat), Some(lon), None) => {
                    if !(-90.0..=90.0).contains(&lat) {
                        return Err(DefinitionError::new(
                            format!("{path}.latitude"),
                            format!("{lat} is not a latitude (-90 to 90)"),
                        ));
                    }
                    if !(-180.0..=180.0).contains(&lon) {
                        return Err(DefinitionError::new(
                            format!("{path}.longitude"),
                            format!("{lon} is not a longitude (-180 to 180)"),
                        ));
                    }
                    (lat, lon, format!("({lat}, {lon})"))
                }
                (None, None, Some(city)) => {
                    let found = crate::geo::find_city(city)
                        .map_err(|e| DefinitionError::new(format!("{path}.city"), e))?;
                    (
                        found.latitude,
                        found.longitude,
                        format!("{}, {}-{}", found.name, found.country, found.admin1),
                    )
                }
                _ => {
                    return Err(DefinitionError::new(
                        &path,
                        "give either latitude and longitude, or a city",
                    ))
                }
            };
            Ok(Node::LocationWithin {
                latitude,
                longitude,
                radius_km: w.distance * per_unit,
                label,
                workspace,
            })
        }
        _ => Err(DefinitionError::new(
            path,
            "a location criterion has either a field (city, state, zip, dma, country) or within",
        )),
    }
}

pub(super) fn matcher_of(e: &EventCriterion, path: &str) -> Result<Matcher, DefinitionError> {
    let conditions = e
        .attributes
        .iter()
        .enumerate()
        .map(|(i, c)| compile_condition(c, &format!("{path}.attributes[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let fields = |list: &[Condition], allowed: &[&str], what: &str| {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                let field = format!("{path}.{what}[{i}]");
                if e.event_type != "commerce_event" {
                    return Err(DefinitionError::new(
                        &field,
                        format!("only commerce events have {what} fields"),
                    ));
                }
                let compiled = compile_condition(c, &field)?;
                if !allowed.contains(&compiled.name.as_str()) {
                    return Err(DefinitionError::new(
                        format!("{field}.name"),
                        format!(
                            "unknown {what} field \"{}\" (one of: {})",
                            c.name,
                            allowed.join(", ")
                        ),
                    ));
                }
                Ok(compiled)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let product_conditions = fields(&e.product, PRODUCT_FIELDS, "product")?;
    let transaction_conditions = fields(&e.transaction, TRANSACTION_FIELDS, "transaction")?;
    let promotion_conditions = fields(&e.promotion, PROMOTION_FIELDS, "promotion")?;
    if !promotion_conditions.is_empty() && e.promotion_action.is_none() {
        return Err(DefinitionError::new(
            format!("{path}.promotion"),
            "promotion conditions need a promotion_action",
        ));
    }
    if e.promotion_action.is_some() {
        for (list, what) in [(&e.product, "product"), (&e.transaction, "transaction")] {
            if !list.is_empty() {
                return Err(DefinitionError::new(
                    format!("{path}.{what}"),
                    format!("promotions have no {what}: use promotion conditions"),
                ));
            }
        }
    }
    if e.impression && !transaction_conditions.is_empty() {
        return Err(DefinitionError::new(
            format!("{path}.transaction"),
            "impressions have no transaction",
        ));
    }
    let impression_list = e
        .impression_list
        .as_deref()
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty());
    let name = selector_name(e);
    let custom_event_type = e.custom_event_type.as_ref().map(|t| t.to_lowercase());
    // The key is stored in profiles: it must be stable across builds, so it is FNV-1a of the
    // canonical form, not the standard library's hasher (whose output may change).
    let mut canonical = format!(
        "{}|{name}|{custom_event_type:?}|{conditions:?}",
        e.event_type
    );
    if !product_conditions.is_empty() || !transaction_conditions.is_empty() {
        canonical.push_str(&format!(
            "|{product_conditions:?}|{transaction_conditions:?}"
        ));
    }
    if !promotion_conditions.is_empty() || impression_list.is_some() {
        canonical.push_str(&format!("|{promotion_conditions:?}|{impression_list:?}"));
    }
    Ok(Matcher {
        history_key: format!(
            "{}{:016x}",
            crate::profile::MATCHER_SERIES_PREFIX,
            fnv1a64(canonical.as_bytes())
        ),
        event_type: e.event_type.clone(),
        name,
        custom_event_type,
        conditions,
        product_conditions,
        transaction_conditions,
        promotion_conditions,
        impression_list,
        source: None,
    })
}

impl EventCriterion {
    /// Whether the criterion needs its own series (conditions beyond the event's name).
    pub(super) fn has_conditions(&self) -> bool {
        !self.attributes.is_empty()
            || !self.product.is_empty()
            || !self.transaction.is_empty()
            || !self.promotion.is_empty()
            || self.impression_list.is_some()
    }

    /// Where it reads from in an audience of `scope` (`None`: every message).
    fn source(&self, scope: &Scope) -> Option<EventSource> {
        scope.event_source_in(&self.event_type, self.workspace.as_deref())
    }

    /// Whether the criterion, in an audience of `scope`, needs its own series rather than
    /// the event key's: it has conditions, or reads only some sources.
    pub(super) fn needs_series(&self, scope: &Scope) -> bool {
        self.has_conditions() || self.source(scope).is_some()
    }
}

/// The matcher keeping an event criterion's own series in an audience of `scope`.
pub(super) fn series_matcher(
    e: &EventCriterion,
    path: &str,
    scope: &Scope,
) -> Result<Matcher, DefinitionError> {
    let matcher = matcher_of(e, path)?;
    Ok(match e.source(scope) {
        Some(source) => scoped(matcher, source),
        None => matcher,
    })
}

/// The events an event criterion selects, as a matcher (its count and time are not read):
/// what calculated attributes fold.
pub fn event_selector(e: &EventCriterion, path: &str) -> Result<Matcher, DefinitionError> {
    let mut e = e.clone();
    normalize_event(&mut e, path)?;
    validate_selector(&e, path)?;
    matcher_of(&e, path)
}

pub(super) fn compile_event(
    e: &EventCriterion,
    path: &str,
    scope: &Scope,
) -> Result<EventNode, DefinitionError> {
    validate_selector(e, path)?;
    let count = e.count.unwrap_or(Count::AtLeast(1));
    let window = compile_window(e.time.as_ref(), &format!("{path}.time"))?;
    let name = selector_name(e);
    let custom_event_type = e.custom_event_type.as_ref().map(|t| t.to_lowercase());
    let history_key = if e.needs_series(scope) {
        HistoryKey::Exact(series_matcher(e, path, scope)?.history_key)
    } else if e.event_type == "custom_event" {
        match &custom_event_type {
            Some(t) => HistoryKey::Exact(format!("custom_event:{name}{KEY_SEP}{t}")),
            None => HistoryKey::Prefix(format!("custom_event:{name}{KEY_SEP}")),
        }
    } else if name.is_empty() {
        HistoryKey::Exact(e.event_type.clone())
    } else {
        HistoryKey::Exact(format!("{}:{name}", e.event_type))
    };
    // Names keep the case the user wrote; actions and kinds read as words ("add to cart").
    let label = match e.event_type.as_str() {
        "custom_event" | "screen_view" => e.name.as_deref().unwrap_or("").trim().to_string(),
        _ => name.replace('_', " "),
    };
    Ok(EventNode {
        event_type: e.event_type.clone(),
        name,
        label,
        custom_event_type,
        history_key,
        count,
        window,
        source: e.source(scope),
    })
}

/// Checks what selects the events: the type, and the name or action each type needs.
pub(super) fn validate_selector(e: &EventCriterion, path: &str) -> Result<(), DefinitionError> {
    if !EVENT_TYPES.contains(&e.event_type.as_str()) {
        return Err(DefinitionError::new(
            format!("{path}.type"),
            format!(
                "unknown event type \"{}\" (one of: {})",
                e.event_type,
                EVENT_TYPES.join(", ")
            ),
        ));
    }
    match e.event_type.as_str() {
        "custom_event" | "screen_view" if e.name.as_deref().is_none_or(|n| n.trim().is_empty()) => {
            return Err(DefinitionError::new(
                format!("{path}.name"),
                format!("a {} criterion needs the event's name", e.event_type),
            ));
        }
        "commerce_event" if e.impression || e.promotion_action.is_some() => {
            if e.product_action.is_some() || (e.impression && e.promotion_action.is_some()) {
                return Err(DefinitionError::new(
                    format!("{path}.product_action"),
                    "a commerce_event criterion selects one of product_action, promotion_action or impression",
                ));
            }
            if let Some(a) = &e.promotion_action {
                if !matches!(a.trim().to_lowercase().as_str(), "view" | "click") {
                    return Err(DefinitionError::new(
                        format!("{path}.promotion_action"),
                        format!("unknown promotion action \"{a}\" (view or click)"),
                    ));
                }
            }
        }
        "commerce_event" => match e.product_action.as_deref() {
            Some(a) if PRODUCT_ACTIONS.contains(&a.to_lowercase().as_str()) => {}
            Some(a) => {
                return Err(DefinitionError::new(
                    format!("{path}.product_action"),
                    format!(
                        "unknown product action \"{a}\" (one of: {})",
                        PRODUCT_ACTIONS.join(", ")
                    ),
                ))
            }
            None => {
                return Err(DefinitionError::new(
                    format!("{path}.product_action"),
                    "a commerce_event criterion needs a product_action, a promotion_action or impression: true",
                ))
            }
        },
        _ => {}
    }
    if e.custom_event_type.is_some() && e.event_type != "custom_event" {
        return Err(DefinitionError::new(
            format!("{path}.custom_event_type"),
            "only custom events have a custom event type",
        ));
    }
    if e.name.is_some() && !matches!(e.event_type.as_str(), "custom_event" | "screen_view") {
        return Err(DefinitionError::new(
            format!("{path}.name"),
            format!("{} events are not selected by name", e.event_type),
        ));
    }
    if e.event_type != "commerce_event"
        && (e.promotion_action.is_some() || e.impression || e.impression_list.is_some())
    {
        return Err(DefinitionError::new(
            format!("{path}.type"),
            "promotions and impressions are commerce events",
        ));
    }
    if e.event_type == "upgrade" && e.has_conditions() {
        return Err(DefinitionError::new(
            format!("{path}.attributes"),
            "upgrades are derived from app versions and carry no attributes",
        ));
    }
    if e.impression_list.is_some() && !e.impression {
        return Err(DefinitionError::new(
            format!("{path}.impression_list"),
            "impression_list needs impression: true",
        ));
    }
    Ok(())
}

/// Resolves a time window; `path` names the window in errors.
pub(super) fn compile_window(
    time: Option<&TimeWindow>,
    path: &str,
) -> Result<Window, DefinitionError> {
    Ok(match time {
        None => Window::Retention,
        Some(TimeWindow::WithinLastDays(n)) => {
            if *n == 0 {
                return Err(DefinitionError::new(
                    format!("{path}.within_last_days"),
                    "must be at least 1",
                ));
            }
            Window::Sliding {
                enter_after: 0,
                exit_after: *n as i64 * DAY_MS,
            }
        }
        Some(TimeWindow::BetweenDaysAgo([a, b])) => {
            if a >= b {
                return Err(DefinitionError::new(
                    format!("{path}.between_days_ago"),
                    format!("the first bound ({a}) must be less than the second ({b})"),
                ));
            }
            Window::Sliding {
                enter_after: *a as i64 * DAY_MS,
                exit_after: *b as i64 * DAY_MS,
            }
        }
        Some(TimeWindow::Before(d)) => Window::Fixed {
            from: i64::MIN,
            until: parse_date(d, &format!("{path}.before"))?,
        },
        Some(TimeWindow::After(d)) => Window::Fixed {
            from: parse_date(d, &format!("{path}.after"))?,
            until: i64::MAX,
        },
        Some(TimeWindow::On(d)) => {
            let from = parse_date(d, &format!("{path}.on"))?;
            Window::Fixed {
                from,
                until: from + DAY_MS,
            }
        }
        Some(TimeWindow::Between([a, b])) => {
            let from = parse_date(a, &format!("{path}.between[0]"))?;
            let last = parse_date(b, &format!("{path}.between[1]"))?;
            if last < from {
                return Err(DefinitionError::new(
                    format!("{path}.between"),
                    format!("{b} is before {a}"),
                ));
            }
            Window::Fixed {
                from,
                until: last + DAY_MS,
            }
        }
    })
}

pub(super) fn compile_consent(
    c: &ConsentCriterion,
    path: &str,
) -> Result<ConsentTest, DefinitionError> {
    let state = c.state.trim().to_lowercase();
    match c.regulation.trim().to_lowercase().as_str() {
        "gdpr" => {
            let purpose = c
                .purpose
                .as_deref()
                .map(|p| p.trim().to_lowercase())
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    DefinitionError::new(
                        format!("{path}.purpose"),
                        "a gdpr criterion needs a purpose",
                    )
                })?;
            let state = match state.as_str() {
                "consented" => Some(true),
                "not_consented" => Some(false),
                "no_state" => None,
                other => {
                    return Err(DefinitionError::new(
                        format!("{path}.state"),
                        format!(
                            "\"{other}\" is not a gdpr state (consented, not_consented, no_state)"
                        ),
                    ))
                }
            };
            Ok(ConsentTest::Gdpr { purpose, state })
        }
        "ccpa" => {
            if c.purpose.is_some() {
                return Err(DefinitionError::new(
                    format!("{path}.purpose"),
                    "ccpa has no purposes: only the data-sale opt-out",
                ));
            }
            let state = match state.as_str() {
                "opted_out" => Some(true),
                "not_opted_out" => Some(false),
                "no_state" => None,
                other => {
                    return Err(DefinitionError::new(
                        format!("{path}.state"),
                        format!(
                            "\"{other}\" is not a ccpa state (opted_out, not_opted_out, no_state)"
                        ),
                    ))
                }
            };
            Ok(ConsentTest::Ccpa { state })
        }
        other => Err(DefinitionError::new(
            format!("{path}.regulation"),
            format!("\"{other}\" is not a regulation (gdpr, ccpa)"),
        )),
    }
}
