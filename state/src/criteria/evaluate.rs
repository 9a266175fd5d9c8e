//! Evaluation of a compiled node against a profile at an instant: the outcome and the next
//! instant it may change (recency windows slide with no new event).

use super::compiled::*;
use super::values::*;
use crate::history::EventSeries;
use crate::model::{AttrValue, PRODUCT_ACTIONS};
use crate::profile::{ProfileState, UserData};

/// A location field of a profile, as `workspace` keeps it (`None`: the profile's latest from
/// any source): the reserved user attributes (`$City`, `$State`, `$Zip`, `$Country`, `$DMA`)
/// win over what GeoIP or the device reported.
pub fn location_field(
    profile: &ProfileState,
    workspace: Option<&str>,
    field: &str,
) -> Option<String> {
    let reserved = profile
        .attribute_from(workspace, &format!("${field}"))
        .and_then(AttrValue::as_text)
        .filter(|v| !v.is_empty());
    reserved.or_else(|| {
        let l = profile.user_data(workspace).location;
        match field {
            "city" => l.city.clone(),
            "state" => l.state.clone(),
            "zip" => l.zip.clone(),
            "dma" => l.dma.clone(),
            "country" => l.country.clone(),
            _ => None,
        }
    })
}

pub(super) fn attribution_value(
    data: UserData<'_>,
    uninstall: bool,
    field: Option<&str>,
) -> Option<AttrValue> {
    let a = if uninstall {
        data.uninstall_attribution.as_ref()
    } else {
        data.install_attribution.as_ref()
    }?;
    match field {
        None => Some(AttrValue::Bool(true)),
        Some("publisher") => a.publisher.clone().map(AttrValue::String),
        Some(_) => a.campaign.clone().map(AttrValue::String),
    }
}

pub(super) fn distance_to(data: UserData<'_>, latitude: f64, longitude: f64) -> Option<f64> {
    let (lat, lon) = (data.location.latitude?, data.location.longitude?);
    Some(crate::geo::distance_km(lat, lon, latitude, longitude))
}

pub(super) fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Node {
    pub fn evaluate(&self, profile: &ProfileState, ctx: &EvalContext) -> Outcome {
        match self {
            Node::And(children) => {
                let mut next = None;
                let mut matched = true;
                for child in children {
                    let o = child.evaluate(profile, ctx);
                    matched &= o.matched;
                    next = earliest(next, o.next_change);
                }
                Outcome {
                    matched,
                    next_change: next,
                }
            }
            Node::Or(children) => {
                let mut next = None;
                let mut matched = false;
                for child in children {
                    let o = child.evaluate(profile, ctx);
                    matched |= o.matched;
                    next = earliest(next, o.next_change);
                }
                Outcome {
                    matched,
                    next_change: next,
                }
            }
            Node::Not(child) => {
                let o = child.evaluate(profile, ctx);
                Outcome {
                    matched: !o.matched,
                    next_change: o.next_change,
                }
            }
            Node::Attribute(cond) => Outcome {
                matched: cond.test.holds(profile.attribute(&cond.name)),
                next_change: None,
            },
            Node::WorkspaceAttribute { workspace, cond } => Outcome {
                matched: cond.test.holds(profile.attribute_in(workspace, &cond.name)),
                next_change: None,
            },
            Node::Identity {
                identity_type,
                test,
                workspace,
            } => {
                let values = profile.identities_from(workspace.as_deref(), identity_type);
                let matched = match (test, values) {
                    (Test::Not(inner), _) => !any_identity(inner, values),
                    (t, v) => any_identity(t, v),
                };
                Outcome {
                    matched,
                    next_change: None,
                }
            }
            Node::Event(node) => node.evaluate(profile, ctx),
            Node::Consent { test, workspace } => {
                let consent = profile.user_data(workspace.as_deref()).consent;
                Outcome {
                    matched: match test {
                        ConsentTest::Gdpr { purpose, state } => {
                            consent.gdpr.get(purpose).map(|c| c.consented) == *state
                        }
                        ConsentTest::Ccpa { state } => consent.ccpa_data_sale_opt_out == *state,
                    },
                    next_change: None,
                }
            }
            Node::Device {
                field,
                test,
                workspace,
            } => {
                let data = profile.user_data(workspace.as_deref());
                let value = device_field(data, field).map(AttrValue::String);
                Outcome {
                    matched: test.holds(value.as_ref()),
                    next_change: None,
                }
            }
            Node::Audience { id, member } => Outcome {
                matched: profile.memberships.get(id).is_some_and(|r| r.member) == *member,
                next_change: None,
            },
            Node::CartAbandonment {
                wait_ms,
                any_action,
                series,
            } => cart_abandonment(profile, ctx, *wait_ms, *any_action, series.as_ref()),
            Node::Calculated { key, spec, test } => {
                let (value, next_change) =
                    crate::aggregate::value_of(profile.calculated.get(key), spec, ctx.now);
                Outcome {
                    matched: test.holds(value.as_ref()),
                    next_change,
                }
            }
            Node::Attribution {
                uninstall,
                field,
                test,
                workspace,
            } => {
                let data = profile.user_data(workspace.as_deref());
                Outcome {
                    matched: test
                        .holds(attribution_value(data, *uninstall, field.as_deref()).as_ref()),
                    next_change: None,
                }
            }
            Node::LocationField {
                field,
                test,
                workspace,
            } => Outcome {
                matched: test.holds(
                    location_field(profile, workspace.as_deref(), field)
                        .map(AttrValue::String)
                        .as_ref(),
                ),
                next_change: None,
            },
            Node::LocationWithin {
                latitude,
                longitude,
                radius_km,
                workspace,
                ..
            } => Outcome {
                matched: distance_to(
                    profile.user_data(workspace.as_deref()),
                    *latitude,
                    *longitude,
                )
                .is_some_and(|d| d <= *radius_km),
                next_change: None,
            },
            Node::SeenIn(workspaces) => Outcome {
                matched: workspaces.iter().any(|w| profile.workspaces.contains(w)),
                next_change: None,
            },
            Node::FirstSeen(window) => {
                if profile.first_seen_ms == 0 {
                    return Outcome {
                        matched: false,
                        next_change: None,
                    };
                }
                // First seen is profile data: no event retention applies to it.
                let (matched, next_change) =
                    occurrence(*window, profile.first_seen_ms, ctx.now, i64::MAX / 4);
                Outcome {
                    matched,
                    next_change,
                }
            }
        }
    }

    pub(super) fn collect_reads(&self, reads: &mut Vec<ReadKey>) {
        match self {
            Node::And(c) | Node::Or(c) => c.iter().for_each(|n| n.collect_reads(reads)),
            Node::Not(c) => c.collect_reads(reads),
            Node::Attribute(cond) | Node::WorkspaceAttribute { cond, .. } => {
                reads.push(ReadKey::Attribute(cond.name.clone()))
            }
            Node::Identity { identity_type, .. } => {
                reads.push(ReadKey::Identity(identity_type.clone()))
            }
            Node::Event(e) => reads.push(ReadKey::Event {
                event_type: e.event_type.clone(),
                name: e.name.clone(),
            }),
            Node::Consent { .. } => reads.push(ReadKey::Consent),
            Node::Device { .. } => reads.push(ReadKey::Device),
            Node::FirstSeen(_) => reads.push(ReadKey::FirstSeen),
            Node::Audience { id, .. } => reads.push(ReadKey::Audience(*id)),
            // Every product action matters: the add, the purchase, any other action.
            Node::CartAbandonment { .. } => reads.push(ReadKey::Event {
                event_type: "commerce_event".into(),
                name: String::new(),
            }),
            Node::Calculated { key, .. } => reads.push(ReadKey::Calculated(key.clone())),
            Node::Attribution { .. } => reads.push(ReadKey::Attribution),
            Node::LocationField { field, .. } => {
                reads.push(ReadKey::Location);
                reads.push(ReadKey::Attribute(format!("${field}")));
            }
            Node::LocationWithin { .. } => reads.push(ReadKey::Location),
            Node::SeenIn(_) => reads.push(ReadKey::Workspaces),
        }
    }

    pub(super) fn is_time_dependent(&self) -> bool {
        match self {
            Node::And(c) | Node::Or(c) => c.iter().any(Node::is_time_dependent),
            Node::Not(c) => c.is_time_dependent(),
            Node::Event(_) | Node::FirstSeen(_) | Node::CartAbandonment { .. } => true,
            Node::Calculated { spec, .. } => spec.window_ms.is_some(),
            Node::Attribution { .. } | Node::LocationField { .. } | Node::LocationWithin { .. } => {
                false
            }
            Node::Attribute(_)
            | Node::WorkspaceAttribute { .. }
            | Node::Identity { .. }
            | Node::Consent { .. }
            | Node::Device { .. }
            | Node::Audience { .. }
            | Node::SeenIn(_) => false,
        }
    }
}

/// The latest add to cart within retention a cart abandonment reads: of its source's series
/// in a scoped audience, else of every message.
pub(super) fn last_add_to_cart(
    profile: &ProfileState,
    series: Option<&CartSeries>,
    ctx: &EvalContext,
) -> Option<i64> {
    let key = series.map_or("commerce_event:add_to_cart", |s| s.added.as_str());
    last_in_retention(profile, key, ctx)
}

/// The latest occurrence of a history key within retention, at `now`.
pub(super) fn last_in_retention(
    profile: &ProfileState,
    key: &str,
    ctx: &EvalContext,
) -> Option<i64> {
    profile
        .history
        .get(key)?
        .occurrences()
        .map(|(t, _)| t)
        .filter(|&t| t <= ctx.now && t >= ctx.now - ctx.retention_ms)
        .last()
}

/// Cart abandonment: the latest add to cart (in retention) is followed by no purchase (or no
/// other product action) and is at least `wait_ms` old.
pub(super) fn cart_abandonment(
    profile: &ProfileState,
    ctx: &EvalContext,
    wait_ms: i64,
    any_action: bool,
    series: Option<&CartSeries>,
) -> Outcome {
    let not_matched = Outcome {
        matched: false,
        next_change: None,
    };
    let Some(added) = last_add_to_cart(profile, series, ctx) else {
        return not_matched;
    };
    let since_added = |s: &EventSeries| s.occurrences().any(|(t, _)| t > added && t <= ctx.now);
    let followed = match series {
        Some(scoped) => scoped
            .ended_by
            .iter()
            .filter_map(|key| profile.history.get(key))
            .any(since_added),
        None => {
            let prefix = if any_action {
                "commerce_event:"
            } else {
                "commerce_event:purchase"
            };
            profile
                .history
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(k, _)| {
                    // Only product actions: promotions and impressions are not.
                    let action = &k["commerce_event:".len()..];
                    action != "add_to_cart" && PRODUCT_ACTIONS.contains(&action)
                })
                .any(|(_, s)| since_added(s))
        }
    };
    if followed {
        return not_matched;
    }
    let due = added.saturating_add(wait_ms);
    let leaves_retention = added.saturating_add(ctx.retention_ms).saturating_add(1);
    if ctx.now < due {
        Outcome {
            matched: false,
            next_change: Some(due),
        }
    } else if ctx.now < leaves_retention {
        Outcome {
            matched: true,
            next_change: Some(leaves_retention),
        }
    } else {
        not_matched
    }
}

/// The value of a device criterion's field on a profile.
pub(super) fn device_field(data: UserData<'_>, field: &str) -> Option<String> {
    let d = data.device;
    match field {
        "platform" => d.platform.clone(),
        "os_version" => d.os_version.clone(),
        "device_model" => d.device_model.clone(),
        "device_manufacturer" => d.device_manufacturer.clone(),
        "network_carrier" => d.network_carrier.clone(),
        "brand" => d.brand.clone(),
        "locale_country" => d.locale_country.clone(),
        "locale_language" => d.locale_language.clone(),
        "app_version" => data.app_version.clone(),
        _ => None,
    }
}

pub(super) fn any_identity(test: &Test, values: Option<&Vec<String>>) -> bool {
    match (test, values) {
        (Test::Exists, v) => v.is_some_and(|v| !v.is_empty()),
        (_, None) => false,
        (t, Some(values)) => values
            .iter()
            .any(|v| t.holds(Some(&AttrValue::String(v.clone())))),
    }
}

/// Whether something that happened at `t` is inside `window` at `now` (and younger than
/// `retention_ms`), and the next instant after `now` at which that changes.
pub(super) fn occurrence(
    window: Window,
    t: i64,
    now: i64,
    retention_ms: i64,
) -> (bool, Option<i64>) {
    let retention_exit = t.saturating_add(retention_ms).saturating_add(1);
    let (enter, exit) = match window {
        Window::Retention => (t, retention_exit),
        Window::Sliding {
            enter_after,
            exit_after,
        } => (
            t.saturating_add(enter_after),
            t.saturating_add(exit_after)
                .saturating_add(1)
                .min(retention_exit),
        ),
        Window::Fixed { from, until } => {
            if t < from || t >= until {
                return (false, None);
            }
            (t, retention_exit)
        }
    };
    if now < enter {
        (false, Some(enter))
    } else if now < exit {
        (true, Some(exit))
    } else {
        (false, None)
    }
}

/// [`occurrence`] summed over a series: the events counted at `now` and the earliest instant
/// one of them enters or leaves the window. A binary search, not a walk: a hot profile keeps
/// thousands of occurrences per key, read by every audience of the key on every event.
///
/// In time order, an occurrence is first expired (no change ahead), then counted (until its
/// exit), then pending (counted from its entry), because entry and exit both grow with the
/// occurrence's time; a fixed window looks at the times inside its bounds only. So the
/// counted ones are one run of positions, and the next change is the exit of the run's first
/// or the entry of the first pending one.
pub(super) fn count_in_window(
    series: &EventSeries,
    window: Window,
    now: i64,
    retention_ms: i64,
) -> (u64, Option<i64>) {
    let all = 0..series.positions();
    let candidates = match window {
        Window::Fixed { from, until } => {
            let start = series.partition_point(all.clone(), |t| t < from);
            start..series.partition_point(start..all.end, |t| t < until)
        }
        Window::Retention | Window::Sliding { .. } => all,
    };
    let phase = |t| occurrence(window, t, now, retention_ms);
    let counted_from = series.partition_point(candidates.clone(), |t| phase(t) == (false, None));
    let pending_from = series.partition_point(counted_from..candidates.end, |t| phase(t).0);
    let change_at = |position: usize| phase(series.time_at(position)).1;
    let next_exit = (counted_from < pending_from)
        .then(|| change_at(counted_from))
        .flatten();
    let next_entry = (pending_from < candidates.end)
        .then(|| change_at(pending_from))
        .flatten();
    (
        series.events_in(counted_from..pending_from),
        earliest(next_exit, next_entry),
    )
}

impl EventNode {
    /// The profile's series this node counts. On the hot path of every evaluation: it
    /// allocates nothing (no list, no copy of the prefix).
    pub(super) fn series<'a>(
        &'a self,
        profile: &'a ProfileState,
    ) -> impl Iterator<Item = &'a EventSeries> + 'a {
        use std::ops::Bound;
        let (exact, prefix) = match &self.history_key {
            HistoryKey::Exact(k) => (profile.history.get(k), None),
            HistoryKey::Prefix(p) => {
                let from = (Bound::Included(p.as_str()), Bound::Unbounded);
                let range = profile.history.range::<str, _>(from);
                let within = range.take_while(move |(k, _)| k.starts_with(p.as_str()));
                (None, Some(within.map(|(_, s)| s)))
            }
        };
        exact.into_iter().chain(prefix.into_iter().flatten())
    }

    pub fn count(&self, profile: &ProfileState, ctx: &EvalContext) -> (u64, Option<i64>) {
        let mut count = 0u64;
        let mut next = None;
        for series in self.series(profile) {
            let (counted, change) = count_in_window(series, self.window, ctx.now, ctx.retention_ms);
            count += counted;
            next = earliest(next, change);
        }
        (count, next)
    }

    pub(super) fn evaluate(&self, profile: &ProfileState, ctx: &EvalContext) -> Outcome {
        let (count, next_change) = self.count(profile, ctx);
        Outcome {
            matched: self.count.holds(count),
            next_change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::MAX_OFFSETS_PER_DAY;
    use crate::model::DAY_MS;
    use proptest::prelude::*;

    /// The walk `count_in_window` replaced: every occurrence classified on its own.
    fn count_by_walk(
        series: &EventSeries,
        window: Window,
        now: i64,
        retention_ms: i64,
    ) -> (u64, Option<i64>) {
        let mut count = 0u64;
        let mut next = None;
        for (t, n) in series.occurrences() {
            let (counted, change) = occurrence(window, t, now, retention_ms);
            if counted {
                count += n as u64;
            }
            next = earliest(next, change);
        }
        (count, next)
    }

    fn windows() -> impl Strategy<Value = Window> {
        let span = -3 * DAY_MS..30 * DAY_MS;
        prop_oneof![
            Just(Window::Retention),
            (span.clone(), span.clone()).prop_map(|(enter_after, exit_after)| Window::Sliding {
                enter_after,
                exit_after
            }),
            Just(Window::Sliding {
                enter_after: 0,
                exit_after: i64::MAX
            }),
            (span.clone(), span).prop_map(|(from, until)| Window::Fixed { from, until }),
        ]
    }

    proptest! {
        #[test]
        fn the_search_counts_what_the_walk_counts(
            times in proptest::collection::vec(-5 * DAY_MS..35 * DAY_MS, 0..80),
            window in windows(),
            now in -6 * DAY_MS..40 * DAY_MS,
            retention_days in 0i64..40,
        ) {
            let mut series = EventSeries::default();
            times.iter().for_each(|&t| series.record(t));
            let retention_ms = retention_days * DAY_MS;
            prop_assert_eq!(
                count_in_window(&series, window, now, retention_ms),
                count_by_walk(&series, window, now, retention_ms)
            );
        }

        /// Stored series read back, including a shape `record` never makes (a day of
        /// overflow and no offsets).
        #[test]
        fn the_search_counts_what_the_walk_counts_on_any_stored_series(
            first_day in -5i64..5,
            days in proptest::collection::vec(
                (1u64..4, proptest::collection::vec(0u64..DAY_MS as u64 / 4, 0..5), 0u64..4),
                0..8,
            ),
            window in windows(),
            now in -6 * DAY_MS..40 * DAY_MS,
        ) {
            use crate::varint::{put_varint, zigzag};
            let mut packed = Vec::new();
            put_varint(&mut packed, days.len() as u64);
            for (i, (gap, offsets, overflow)) in days.iter().enumerate() {
                put_varint(&mut packed, if i == 0 { zigzag(first_day) } else { *gap });
                put_varint(&mut packed, offsets.len() as u64);
                put_varint(&mut packed, *overflow);
                offsets.iter().for_each(|&o| put_varint(&mut packed, o));
            }
            let mut framed = Vec::new();
            put_varint(&mut framed, packed.len() as u64);
            framed.extend_from_slice(&packed);
            let series: EventSeries = postcard::from_bytes(&framed).unwrap();
            prop_assert_eq!(
                count_in_window(&series, window, now, 90 * DAY_MS),
                count_by_walk(&series, window, now, 90 * DAY_MS)
            );
        }
    }

    #[test]
    fn an_overflowed_day_counts_its_overflow_with_its_last_offset() {
        let mut series = EventSeries::default();
        let day = 10 * DAY_MS;
        for i in 0..MAX_OFFSETS_PER_DAY as i64 + 300 {
            series.record(day + 1000 + i % 5000);
        }
        series.record(day - 3 * DAY_MS);
        series.record(day + 2 * DAY_MS);
        for now in [day, day + 1000, day + 4000, day + DAY_MS, day + 3 * DAY_MS] {
            for window in [
                Window::Retention,
                Window::Sliding {
                    enter_after: 0,
                    exit_after: DAY_MS,
                },
                Window::Fixed {
                    from: day + 2000,
                    until: day + 3 * DAY_MS,
                },
            ] {
                let walked = count_by_walk(&series, window, now, 30 * DAY_MS);
                assert_eq!(
                    count_in_window(&series, window, now, 30 * DAY_MS),
                    walked,
                    "{window:?} at {now}"
                );
            }
        }
        let all = count_in_window(&series, Window::Retention, day + 3 * DAY_MS, 30 * DAY_MS);
        assert_eq!(all.0, MAX_OFFSETS_PER_DAY as u64 + 302);
    }
}
