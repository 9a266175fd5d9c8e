//! Explain: a compiled node evaluated with the reasons, one [`Explanation`] per node, in the
//! words of the definition language: `tier exact match "gold"` and `the value is "bronze"`;
//! `custom event "Viewed Item" at least 2 times in the last 7 days` and `counted 1, the next
//! change at 2026-12-10T09:06:00Z when an occurrence leaves the window`. Instants are RFC 3339
//! in UTC, durations in days, hours and minutes, values as JSON writes them.

use super::compiled::*;
use super::definition::Count;
use super::evaluate::*;
use super::values::Test;
use crate::model::{format_number, AttrValue, ConsentState, TimestampMs, DAY_MS};
use crate::profile::ProfileState;
use crate::time::{format_date, format_duration, format_instant};

/// Why a node of a criteria tree holds or not for one profile at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// What the node asks, in words (`custom event "search" at least 1 time in the last 7 days`).
    pub criterion: String,
    pub matched: bool,
    /// The values and counts that decided it.
    pub detail: String,
    /// When time alone may change this node's answer.
    pub next_change: Option<TimestampMs>,
    pub children: Vec<Explanation>,
}

/// A detail a token limited to workspaces may not read ([`Explanation::withhold_unseen`]).
pub const WITHHELD: &str = "withheld: it reads data of a workspace this token does not hold";

impl Explanation {
    /// The explanation as a token limited to some workspaces may read it. `seen` is the same
    /// tree explained over the profile as those workspaces hold it: a criterion whose detail
    /// differs there read data of another workspace, and its detail (and the instant of its
    /// next change, which would date another workspace's event) is withheld. The answers
    /// stay: they are the membership's. The details of all, any and exclude only count their
    /// children's answers.
    pub fn withhold_unseen(&mut self, seen: &Explanation) {
        if self.children.is_empty() && self.detail != seen.detail {
            self.detail = WITHHELD.to_string();
            self.next_change = None;
        }
        for (mine, theirs) in self.children.iter_mut().zip(&seen.children) {
            mine.withhold_unseen(theirs);
        }
    }
}

impl Node {
    /// The evaluation of [`Node::evaluate`], node by node, with what decided each answer, in
    /// the words of the definition language (see the module's documentation).
    pub fn explain(&self, profile: &ProfileState, ctx: &EvalContext) -> Explanation {
        let outcome = self.evaluate(profile, ctx);
        let mut children = Vec::new();
        // What makes the next change happen, for the detail's last clause.
        let mut next_because = "";
        let (criterion, detail) = match self {
            Node::And(c) | Node::Or(c) => {
                children = c.iter().map(|n| n.explain(profile, ctx)).collect();
                let held = children.iter().filter(|e| e.matched).count();
                let op = if matches!(self, Node::And(_)) {
                    "all of"
                } else {
                    "any of"
                };
                (op.to_string(), format!("{held} of {} hold", children.len()))
            }
            Node::Not(c) => {
                let child = c.explain(profile, ctx);
                let detail = if child.matched {
                    "the excluded criterion holds".to_string()
                } else {
                    "the excluded criterion does not hold".to_string()
                };
                children.push(child);
                ("exclude".to_string(), detail)
            }
            Node::Event(e) => {
                let (count, _) = e.count(profile, ctx);
                next_because = match e.window {
                    Window::Retention => "when an occurrence leaves retention",
                    Window::Sliding { enter_after: 0, .. } => {
                        "when an occurrence leaves the window"
                    }
                    Window::Sliding { .. } => "when an occurrence enters or leaves the window",
                    // Calendar windows select occurrences by their own time: only leaving
                    // retention changes the count.
                    Window::Fixed { .. } => "when an occurrence leaves retention",
                };
                let mut what = event_type_words(&e.event_type);
                if !e.label.is_empty() {
                    what.push_str(&format!(" {}", quoted(&e.label)));
                }
                if let Some(t) = &e.custom_event_type {
                    what.push_str(&format!(" of type {}", quoted(t)));
                }
                if let Some(source) = &e.source {
                    what.push_str(&format!(" from {}", source.describe()));
                }
                (
                    format!(
                        "{what} {} {}",
                        count_words(e.count),
                        window_words(&e.window)
                    ),
                    format!("counted {count}"),
                )
            }
            Node::Attribute(c) => (
                format!("{} {}", c.name, test_words(&c.test)),
                value_words(profile.attribute(&c.name)),
            ),
            Node::WorkspaceAttribute { workspace, cond } => (
                in_workspace(
                    format!("{} {}", cond.name, test_words(&cond.test)),
                    Some(workspace),
                ),
                value_words(profile.attribute_in(workspace, &cond.name)),
            ),
            Node::Identity {
                identity_type,
                test,
                workspace,
            } => (
                in_workspace(
                    format!("identity {identity_type} {}", test_words(test)),
                    workspace.as_deref(),
                ),
                match profile.identities_from(workspace.as_deref(), identity_type) {
                    Some(values) if !values.is_empty() => format!(
                        "the value is {}",
                        values
                            .iter()
                            .map(|v| quoted(v))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => "no value".to_string(),
                },
            ),
            Node::Consent { test, workspace } => {
                let consent = profile.user_data(workspace.as_deref()).consent;
                let (criterion, detail) = consent_explained(test, consent);
                (in_workspace(criterion, workspace.as_deref()), detail)
            }
            Node::Device {
                field,
                test,
                workspace,
            } => (
                in_workspace(
                    format!("device {field} {}", test_words(test)),
                    workspace.as_deref(),
                ),
                text_value_words(device_field(profile.user_data(workspace.as_deref()), field)),
            ),
            Node::FirstSeen(w) => {
                next_because = match w {
                    Window::Sliding { enter_after: 0, .. } => {
                        "when the first visit leaves the window"
                    }
                    _ => "when the first visit enters or leaves the window",
                };
                (
                    format!("first seen {}", window_words(w)),
                    if profile.is_new() {
                        "never seen".to_string()
                    } else {
                        format!("first seen at {}", format_instant(profile.first_seen_ms))
                    },
                )
            }
            Node::CartAbandonment {
                wait_ms,
                any_action,
                series,
            } => {
                next_because = "when the wait ends";
                let source = series
                    .as_ref()
                    .map(|s| format!(" from {}", s.source.describe()))
                    .unwrap_or_default();
                (
                    format!(
                        "added to cart, then no {} for {}{source}",
                        if *any_action {
                            "product action"
                        } else {
                            "purchase"
                        },
                        format_duration(*wait_ms)
                    ),
                    match last_add_to_cart(profile, series.as_ref(), ctx) {
                        Some(t) => format!("the last add to cart was at {}", format_instant(t)),
                        None => "no add to cart in retention".to_string(),
                    },
                )
            }
            Node::Calculated { key, spec, test } => {
                let (value, _) =
                    crate::aggregate::value_of(profile.calculated.get(key), spec, ctx.now);
                next_because = "when an occurrence leaves the attribute's window";
                (
                    format!(
                        "calculated attribute {} ({}) {}",
                        quoted(key),
                        calculation_words(spec.calculation),
                        test_words(test)
                    ),
                    value_words(value.as_ref()),
                )
            }
            Node::Attribution {
                uninstall,
                field,
                test,
                workspace,
            } => (
                in_workspace(
                    format!(
                        "{} attribution{} {}",
                        if *uninstall { "uninstall" } else { "install" },
                        field
                            .as_deref()
                            .map(|f| format!(" {f}"))
                            .unwrap_or_default(),
                        test_words(test)
                    ),
                    workspace.as_deref(),
                ),
                match (
                    field,
                    attribution_value(
                        profile.user_data(workspace.as_deref()),
                        *uninstall,
                        field.as_deref(),
                    ),
                ) {
                    (None, Some(_)) => "an attribution is recorded".to_string(),
                    (None, None) => "no attribution recorded".to_string(),
                    (Some(_), v) => value_words(v.as_ref()),
                },
            ),
            Node::LocationField {
                field,
                test,
                workspace,
            } => (
                in_workspace(
                    format!("location {field} {}", test_words(test)),
                    workspace.as_deref(),
                ),
                text_value_words(location_field(profile, workspace.as_deref(), field)),
            ),
            Node::LocationWithin {
                radius_km,
                label,
                workspace,
                ..
            } => (
                in_workspace(
                    format!("within {} km of {label}", format_number(*radius_km)),
                    workspace.as_deref(),
                ),
                position_words(profile.user_data(workspace.as_deref()).location),
            ),
            // The detail names only the gate's workspaces: the others decide nothing here
            // (and are not every reader's to know).
            Node::SeenIn(workspaces) => (
                format!("seen in workspace {}", quoted_list(workspaces, " or ")),
                {
                    let seen: Vec<&String> = workspaces
                        .iter()
                        .filter(|w| profile.workspaces.contains(*w))
                        .collect();
                    if seen.is_empty() {
                        "seen in none of them".to_string()
                    } else {
                        format!("seen in workspace {}", quoted_list(seen, " and "))
                    }
                },
            ),
            Node::Audience { id, member } => (
                format!("{} audience {id}", if *member { "in" } else { "not in" }),
                if profile.memberships.get(id).is_some_and(|r| r.member) {
                    "a member".to_string()
                } else {
                    "not a member".to_string()
                },
            ),
        };
        // A next change beyond any horizon (a calendar window that never closes) is none.
        let next_change = outcome
            .next_change
            .filter(|at| *at < ctx.now.saturating_add(NEXT_CHANGE_HORIZON_MS));
        let detail = match next_change {
            Some(at) if next_because.is_empty() => {
                format!("{detail}, the next change at {}", format_instant(at))
            }
            Some(at) => format!(
                "{detail}, the next change at {} {next_because}",
                format_instant(at)
            ),
            None => detail,
        };
        Explanation {
            criterion,
            matched: outcome.matched,
            detail,
            next_change: outcome.next_change,
            children,
        }
    }
}

/// A hundred years: next changes further away are not worth a clause.
const NEXT_CHANGE_HORIZON_MS: i64 = 100 * 366 * DAY_MS;

/// A string as the definition's JSON writes it: quoted, escaped.
/// Names quoted and joined: `"a" or "b"`.
fn quoted_list<'a>(names: impl IntoIterator<Item = &'a String>, joint: &str) -> String {
    names
        .into_iter()
        .map(|n| quoted(n))
        .collect::<Vec<_>>()
        .join(joint)
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("strings always serialise")
}

/// `custom_event` as people say it: `custom event`.
fn event_type_words(event_type: &str) -> String {
    event_type.replace('_', " ")
}

fn count_words(count: Count) -> String {
    let (words, n) = match count {
        Count::AtLeast(n) => ("at least", n),
        Count::AtMost(n) => ("at most", n),
        Count::Exactly(n) => ("exactly", n),
    };
    format!("{words} {n} time{}", if n == 1 { "" } else { "s" })
}

/// A fixed range of UTC days `[from, until)` in words: before, on, on or after, between.
fn days_words(from: i64, until: i64) -> String {
    match (from, until) {
        (i64::MIN, until) => format!("before {}", format_date(until)),
        (from, i64::MAX) => format!("on or after {}", format_date(from)),
        (from, until) if until - from == DAY_MS => format!("on {}", format_date(from)),
        (from, until) => format!(
            "between {} and {}",
            format_date(from),
            format_date(until - 1)
        ),
    }
}

fn window_words(window: &Window) -> String {
    match *window {
        Window::Retention => "at any time in retention".to_string(),
        Window::Sliding {
            enter_after: 0,
            exit_after,
        } => format!("in the last {}", format_duration(exit_after)),
        Window::Sliding {
            enter_after,
            exit_after,
        } => format!(
            "between {} and {} ago",
            format_duration(enter_after),
            format_duration(exit_after)
        ),
        Window::Fixed { from, until } => days_words(from, until),
    }
}

/// A value test in the words of the operators of the definition language.
pub fn test_words(test: &Test) -> String {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let version = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
    match test {
        Test::Exists => "exists".to_string(),
        Test::Contains(s) => format!("contains {}", quoted(s)),
        Test::ExactMatch(s) => format!("exact match {}", quoted(s)),
        Test::Pattern(s) => format!("pattern {}", quoted(s)),
        Test::Includes(s) => format!("includes {}", quoted(s)),
        Test::PartialMatch(s) => format!("partial match {}", quoted(s)),
        Test::NumberCmp(Equal, _, n) => format!("equals {}", format_number(*n)),
        Test::NumberCmp(Greater, false, n) => format!("greater than {}", format_number(*n)),
        Test::NumberCmp(Greater, true, n) => {
            format!("greater than or equal to {}", format_number(*n))
        }
        Test::NumberCmp(Less, false, n) => format!("less than {}", format_number(*n)),
        Test::NumberCmp(Less, true, n) => format!("less than or equal to {}", format_number(*n)),
        Test::NumberBetween(lo, hi) => {
            format!("between {} and {}", format_number(*lo), format_number(*hi))
        }
        Test::IsBool(b) => format!("is {b}"),
        Test::VersionCmp(Equal, _, v) => format!("version equals {}", version(v)),
        Test::VersionCmp(Greater, false, v) => format!("version greater than {}", version(v)),
        Test::VersionCmp(Greater, true, v) => {
            format!("version greater than or equal to {}", version(v))
        }
        Test::VersionCmp(Less, false, v) => format!("version less than {}", version(v)),
        Test::VersionCmp(Less, true, v) => {
            format!("version less than or equal to {}", version(v))
        }
        Test::DateIn(from, until) => format!("date {}", days_words(*from, *until)),
        Test::Not(inner) => match inner.as_ref() {
            Test::Exists => "does not exist".to_string(),
            Test::Contains(s) => format!("does not contain {}", quoted(s)),
            Test::ExactMatch(s) => format!("does not match {}", quoted(s)),
            Test::Includes(s) => format!("does not include {}", quoted(s)),
            Test::NumberCmp(Equal, _, n) => format!("does not equal {}", format_number(*n)),
            Test::IsBool(b) => format!("is not {b}"),
            other => format!("not ({})", test_words(other)),
        },
    }
}

/// Where a location places the user, in words.
fn position_words(location: &crate::model::GeoLocation) -> String {
    match (location.latitude, location.longitude) {
        (Some(lat), Some(lon)) => format!("the position is ({lat}, {lon})"),
        _ => "no known position".to_string(),
    }
}

/// A criterion's words, naming the workspace it picked, if any.
fn in_workspace(criterion: String, workspace: Option<&str>) -> String {
    match workspace {
        Some(w) => format!("{criterion} in workspace {}", quoted(w)),
        None => criterion,
    }
}

/// A consent test and the state that decided it.
fn consent_explained(test: &ConsentTest, consent: &ConsentState) -> (String, String) {
    match test {
        ConsentTest::Gdpr { purpose, state } => (
            format!(
                "GDPR consent {} {}",
                quoted(purpose),
                consent_words(*state, "consented", "not consented")
            ),
            match consent.gdpr.get(purpose) {
                Some(c) if c.consented => "consented".to_string(),
                Some(_) => "not consented".to_string(),
                None => "no consent state".to_string(),
            },
        ),
        ConsentTest::Ccpa { state } => (
            format!(
                "CCPA data sale opt-out {}",
                consent_words(*state, "opted out", "not opted out")
            ),
            match consent.ccpa_data_sale_opt_out {
                Some(true) => "opted out".to_string(),
                Some(false) => "not opted out".to_string(),
                None => "no consent state".to_string(),
            },
        ),
    }
}

fn consent_words(state: Option<bool>, yes: &str, no: &str) -> String {
    match state {
        Some(true) => format!("is {yes}"),
        Some(false) => format!("is {no}"),
        None => "has no state".to_string(),
    }
}

fn calculation_words(calculation: crate::aggregate::Calculation) -> String {
    serde_json::to_value(calculation)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// A value as the definition's JSON would write it: strings quoted, numbers plain, dates as
/// RFC 3339, lists in brackets.
pub fn value_json_words(value: &AttrValue) -> String {
    match value {
        AttrValue::String(s) => quoted(s),
        AttrValue::Number(n) => format_number(*n),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Date(ms) => format_instant(*ms),
        AttrValue::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| quoted(i))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AttrValue::Null => "null".to_string(),
    }
}

fn value_words(value: Option<&AttrValue>) -> String {
    match value {
        Some(v) => format!("the value is {}", value_json_words(v)),
        None => "no value".to_string(),
    }
}

fn text_value_words(value: Option<String>) -> String {
    match value {
        Some(v) => format!("the value is {}", quoted(&v)),
        None => "no value".to_string(),
    }
}
