//! Explain: a compiled node evaluated with the reasons, one [`Explanation`] per node.

use super::compiled::*;
use super::evaluate::*;
use crate::model::TimestampMs;
use crate::profile::ProfileState;

/// Why a node of a criteria tree holds or not for one profile at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// What the node asks, in words ("custom_event 'search' at least 1 time(s) ...").
    pub criterion: String,
    pub matched: bool,
    /// The values and counts that decided it.
    pub detail: String,
    /// When time alone may change this node's answer.
    pub next_change: Option<TimestampMs>,
    pub children: Vec<Explanation>,
}

impl Node {
    /// The evaluation of [`Node::evaluate`], node by node, with what decided each answer.
    pub fn explain(&self, profile: &ProfileState, ctx: &EvalContext) -> Explanation {
        let outcome = self.evaluate(profile, ctx);
        let mut children = Vec::new();
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
                let mut what = e.event_type.clone();
                if !e.name.is_empty() {
                    what.push_str(&format!(" '{}'", e.name));
                }
                if let Some(t) = &e.custom_event_type {
                    what.push_str(&format!(" ({t})"));
                }
                (
                    format!("{what} {:?} in {:?}", e.count, e.window),
                    format!("counted {count}"),
                )
            }
            Node::Attribute(c) => (
                format!("user attribute '{}' {:?}", c.name, c.test),
                format!("value {:?}", profile.attribute(&c.name)),
            ),
            Node::Identity {
                identity_type,
                test,
            } => (
                format!("identity '{identity_type}' {test:?}"),
                format!("values {:?}", profile.identities.get(identity_type)),
            ),
            Node::Consent(t) => (
                format!("consent {t:?}"),
                format!(
                    "gdpr {:?}, ccpa opt-out {:?}",
                    profile
                        .consent
                        .gdpr
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.consented))
                        .collect::<Vec<_>>(),
                    profile.consent.ccpa_data_sale_opt_out
                ),
            ),
            Node::Device { field, test } => (
                format!("device {field} {test:?}"),
                format!("value {:?}", device_field(profile, field)),
            ),
            Node::FirstSeen(w) => (
                format!("first seen in {w:?}"),
                format!("first seen at {} ms", profile.first_seen_ms),
            ),
            Node::CartAbandonment {
                wait_ms,
                any_action,
            } => (
                format!(
                    "added to cart, then no {} for {} minutes",
                    if *any_action {
                        "product action"
                    } else {
                        "purchase"
                    },
                    wait_ms / 60_000
                ),
                format!(
                    "last add to cart at {:?} ms",
                    last_in_retention(profile, "commerce_event:add_to_cart", ctx)
                ),
            ),
            Node::Calculated { key, spec, test } => {
                let (value, _) =
                    crate::aggregate::value_of(profile.calculated.get(key), spec, ctx.now);
                (
                    format!(
                        "calculated attribute '{key}' ({:?}) {test:?}",
                        spec.calculation
                    ),
                    format!("value {value:?}"),
                )
            }
            Node::Attribution {
                uninstall,
                field,
                test,
            } => (
                format!(
                    "{} attribution {} {test:?}",
                    if *uninstall { "uninstall" } else { "install" },
                    field.as_deref().unwrap_or("(any)")
                ),
                format!(
                    "value {:?}",
                    attribution_value(profile, *uninstall, field.as_deref())
                ),
            ),
            Node::LocationField { field, test } => (
                format!("location {field} {test:?}"),
                format!("value {:?}", location_field(profile, field)),
            ),
            Node::LocationWithin {
                radius_km, label, ..
            } => (
                format!("within {radius_km:.1} km of {label}"),
                match (profile.location.latitude, profile.location.longitude) {
                    (Some(lat), Some(lon)) => format!("at ({lat}, {lon})"),
                    _ => "no known position".to_string(),
                },
            ),
            Node::Audience { id, member } => (
                format!("{} audience {id}", if *member { "in" } else { "not in" }),
                format!(
                    "member: {}",
                    profile.memberships.get(id).is_some_and(|r| r.member)
                ),
            ),
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
