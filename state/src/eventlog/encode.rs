//! Encoding of events into a chunk: zigzag varint time deltas, kind tags, dictionary-coded
//! names and literal values, each event prefixed by its body length.

use super::dictionary::*;
use crate::model::{AttrValue, Event, EventKind, Product};

pub(super) use crate::varint::{put_varint, unzigzag, zigzag};

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A name: 0 and the bytes inline, or its dictionary code plus one.
pub(super) fn put_name(out: &mut Vec<u8>, dict: &mut Dictionary, name: &str) {
    match dict.intern(name) {
        Some(code) => put_varint(out, code as u64 + 1),
        None => {
            put_varint(out, 0);
            put_bytes(out, name.as_bytes());
        }
    }
}

pub(super) fn put_opt_name(out: &mut Vec<u8>, dict: &mut Dictionary, name: &Option<String>) {
    match name {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            put_name(out, dict, n);
        }
    }
}

pub(super) fn put_opt_text(out: &mut Vec<u8>, text: &Option<String>) {
    match text {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_bytes(out, t.as_bytes());
        }
    }
}

/// Numbers: integral ones as zigzag varints (most prices in cents, quantities, totals), the
/// others as 8 bytes.
pub(super) fn put_opt_number(out: &mut Vec<u8>, n: Option<f64>) {
    match n {
        None => out.push(0),
        Some(n)
            if n.fract() == 0.0
                && n.abs() < (1u64 << 53) as f64
                && !(n == 0.0 && n.is_sign_negative()) =>
        {
            out.push(1);
            put_varint(out, zigzag(n as i64));
        }
        Some(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub(super) const KIND_CUSTOM: u8 = 1;
pub(super) const KIND_SCREEN_VIEW: u8 = 2;
pub(super) const KIND_COMMERCE: u8 = 3;
pub(super) const KIND_PROMOTION: u8 = 4;
pub(super) const KIND_IMPRESSION: u8 = 5;
pub(super) const KIND_SESSION_START: u8 = 6;
pub(super) const KIND_SESSION_END: u8 = 7;
pub(super) const KIND_CRASH_REPORT: u8 = 8;
pub(super) const KIND_FIRST_RUN: u8 = 9;
pub(super) const KIND_STATE_TRANSITION: u8 = 10;
pub(super) const KIND_ATTRIBUTE_CHANGE: u8 = 11;
pub(super) const KIND_IDENTITY_CHANGE: u8 = 12;
pub(super) const KIND_OPT_OUT: u8 = 13;
pub(super) const KIND_UNINSTALL: u8 = 14;
pub(super) const KIND_OTHER: u8 = 15;
/// The kind tag of a message header entry (log format 2; see `message`).
pub(super) const KIND_MESSAGE: u8 = 16;
/// Flag bits of an event entry's kind tag (see `message`), and the mask of the kind.
pub(super) const FLAG_DERIVED: u8 = 0x40;
pub(super) const FLAG_OUTSIDE_TIER: u8 = 0x20;
pub(super) const KIND_MASK: u8 = 0x1f;

/// The event type a kind tag stands for (`Other` carries its own, as its selector).
pub(super) fn tag_event_type(tag: u8) -> Option<&'static str> {
    Some(match tag {
        KIND_CUSTOM => "custom_event",
        KIND_SCREEN_VIEW => "screen_view",
        KIND_COMMERCE | KIND_PROMOTION | KIND_IMPRESSION => "commerce_event",
        KIND_SESSION_START => "session_start",
        KIND_SESSION_END => "session_end",
        KIND_CRASH_REPORT => "crash_report",
        KIND_FIRST_RUN => "first_run",
        KIND_STATE_TRANSITION => "application_state_transition",
        KIND_ATTRIBUTE_CHANGE => "user_attribute_change",
        KIND_IDENTITY_CHANGE => "user_identity_change",
        KIND_OPT_OUT => "opt_out",
        KIND_UNINSTALL => "uninstall",
        _ => return None,
    })
}

/// Kind tag and the name the selector is made of (as the producer spelled it).
pub(super) fn head_of(kind: &EventKind) -> (u8, Option<&str>) {
    match kind {
        EventKind::Custom { name, .. } => (KIND_CUSTOM, Some(name)),
        EventKind::ScreenView { name } => (KIND_SCREEN_VIEW, Some(name)),
        EventKind::Commerce { product_action, .. } => {
            (KIND_COMMERCE, Some(product_action.as_deref().unwrap_or("")))
        }
        EventKind::Promotion { action, .. } => (KIND_PROMOTION, Some(action)),
        EventKind::Impression { list, .. } => (KIND_IMPRESSION, list.as_deref()),
        EventKind::SessionStart => (KIND_SESSION_START, None),
        EventKind::SessionEnd { .. } => (KIND_SESSION_END, None),
        EventKind::CrashReport => (KIND_CRASH_REPORT, None),
        EventKind::FirstRun => (KIND_FIRST_RUN, None),
        EventKind::ApplicationStateTransition { .. } => (KIND_STATE_TRANSITION, None),
        EventKind::UserAttributeChange { .. } => (KIND_ATTRIBUTE_CHANGE, None),
        EventKind::UserIdentityChange(_) => (KIND_IDENTITY_CHANGE, None),
        EventKind::OptOut { .. } => (KIND_OPT_OUT, None),
        EventKind::Uninstall => (KIND_UNINSTALL, None),
        EventKind::Other { event_type } => (KIND_OTHER, Some(event_type)),
    }
}

pub(super) fn put_products(out: &mut Vec<u8>, dict: &mut Dictionary, products: &[Product]) {
    put_varint(out, products.len() as u64);
    for p in products {
        put_opt_text(out, &p.id);
        put_opt_text(out, &p.name);
        put_opt_name(out, dict, &p.brand);
        put_opt_name(out, dict, &p.category);
        put_opt_name(out, dict, &p.variant);
        put_opt_number(out, p.price);
        put_opt_number(out, p.quantity);
    }
}

pub(super) fn put_attr_value(out: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::String(s) => {
            out.push(0);
            put_bytes(out, s.as_bytes());
        }
        AttrValue::Number(n) => {
            out.push(1);
            put_opt_number(out, Some(*n));
        }
        AttrValue::Bool(b) => out.push(if *b { 3 } else { 2 }),
        AttrValue::Date(ms) => {
            out.push(4);
            put_varint(out, zigzag(*ms));
        }
        AttrValue::List(items) => {
            out.push(5);
            put_varint(out, items.len() as u64);
            for i in items {
                put_bytes(out, i.as_bytes());
            }
        }
        AttrValue::Null => out.push(6),
    }
}

/// An event entry; `flags` go in the high bits of its kind tag (see `message`).
pub(super) fn encode_event(
    out: &mut Vec<u8>,
    dict: &mut Dictionary,
    delta: i64,
    event: &Event,
    flags: u8,
) {
    put_varint(out, zigzag(delta));
    let (tag, name) = head_of(&event.kind);
    out.push(tag | flags);
    match name {
        Some(n) => {
            out.push(1);
            put_name(out, dict, n);
        }
        None => out.push(0),
    }
    let mut body = Vec::with_capacity(32);
    match &event.kind {
        EventKind::Custom { custom_type, .. } => put_opt_name(&mut body, dict, custom_type),
        EventKind::Commerce {
            products,
            total_amount,
            transaction_id,
            ..
        } => {
            put_products(&mut body, dict, products);
            put_opt_number(&mut body, *total_amount);
            put_opt_text(&mut body, transaction_id);
        }
        EventKind::Promotion { promotions, .. } => {
            put_varint(&mut body, promotions.len() as u64);
            for p in promotions {
                put_opt_text(&mut body, &p.id);
                put_opt_text(&mut body, &p.name);
                put_opt_name(&mut body, dict, &p.creative);
                put_opt_name(&mut body, dict, &p.position);
            }
        }
        EventKind::Impression { products, .. } => put_products(&mut body, dict, products),
        EventKind::SessionEnd { duration_ms } => match duration_ms {
            None => body.push(0),
            Some(d) => {
                body.push(1);
                put_varint(&mut body, zigzag(*d));
            }
        },
        EventKind::ApplicationStateTransition {
            transition,
            is_upgrade,
        } => {
            put_opt_name(&mut body, dict, transition);
            body.push(*is_upgrade as u8);
        }
        EventKind::UserAttributeChange {
            name,
            new_value,
            deleted,
        } => {
            put_name(&mut body, dict, name);
            match new_value {
                None => body.push(0),
                Some(v) => {
                    body.push(1);
                    put_attr_value(&mut body, v);
                }
            }
            body.push(*deleted as u8);
        }
        EventKind::UserIdentityChange(change) => {
            put_name(&mut body, dict, &change.identity_type);
            put_opt_text(&mut body, &change.old_value);
            put_opt_text(&mut body, &change.new_value);
        }
        EventKind::OptOut { opted_out } => body.push(*opted_out as u8),
        EventKind::ScreenView { .. }
        | EventKind::SessionStart
        | EventKind::CrashReport
        | EventKind::FirstRun
        | EventKind::Uninstall
        | EventKind::Other { .. } => {}
    }
    put_varint(&mut body, event.attributes.len() as u64);
    for (k, v) in &event.attributes {
        put_name(&mut body, dict, k);
        put_bytes(&mut body, v.as_bytes());
    }
    put_bytes(out, &body);
}
