//! `audiencectl profile` and `audiencectl explain`: a profile as the engine holds it, and why
//! it is or is not in an audience.

use crate::print::*;
use audience_proto::v1 as pb;
use pb::profile_service_client::ProfileServiceClient;
use serde_json::{json, Map, Value};

/// A map of attribute values, sorted by name, as a JSON object.
fn values_json(values: &std::collections::HashMap<String, pb::AttributeValue>) -> Value {
    let mut sorted: Vec<_> = values.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn profile_json(p: &pb::Profile) -> Value {
    let strings = |fields: &[(&str, &String)]| {
        Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    };
    json!({
        "mpid": p.mpid,
        "first_seen": when_json(p.first_seen_ms),
        "last_seen": when_json(p.last_seen_ms),
        "app_version": p.app_version,
        "identities": p.identities.iter()
            .map(|i| json!({"type": i.identity_type, "value": i.value}))
            .collect::<Vec<_>>(),
        "user_attributes": values_json(&p.user_attributes),
        "calculated_attributes": values_json(&p.calculated_attributes),
        "device": p.device_info.as_ref().map(|d| strings(&[
            ("platform", &d.platform),
            ("os_version", &d.os_version),
            ("device_model", &d.device_model),
            ("device_manufacturer", &d.device_manufacturer),
            ("network_carrier", &d.network_carrier),
            ("brand", &d.brand),
        ])),
        "consent": p.consent_state.as_ref().map(|c| json!({
            "gdpr": c.gdpr.iter()
                .map(|(purpose, g)| (purpose.clone(), json!({"consented": g.consented})))
                .collect::<Map<_, _>>(),
            "ccpa_data_sale_opt_out": c.ccpa_data_sale_opt_out,
        })),
        "location": p.location.as_ref().filter(|l| **l != pb::Location::default()).map(|l| {
            let mut o = strings(&[
                ("city", &l.city),
                ("state", &l.state),
                ("zip", &l.zip),
                ("dma", &l.dma),
                ("country", &l.country),
            ]);
            o["latitude"] = json!(l.latitude);
            o["longitude"] = json!(l.longitude);
            o
        }),
        "install_attribution": p.install_attribution.as_ref().map(attribution_json),
        "uninstall_attribution": p.uninstall_attribution.as_ref().map(attribution_json),
        "audiences": p.audiences.iter().map(|m| json!({
            "audience_id": m.audience_id,
            "audience_name": m.audience_name,
            "since": when_json(m.since_ms),
            "version": m.version,
        })).collect::<Vec<_>>(),
        "events": p.events.iter().map(|e| json!({
            "event": e.event_key,
            "count_in_retention": e.count_in_retention,
            "last_seen": when_json(e.last_seen_ms),
        })).collect::<Vec<_>>(),
    })
}

fn attribution_json(a: &pb::Attribution) -> Value {
    json!({
        "publisher": a.publisher,
        "campaign": a.campaign,
        "service_provider": a.service_provider,
    })
}

pub async fn profile(ctx: &Ctx, mpid: i64) -> anyhow::Result<()> {
    let mut client = ProfileServiceClient::new(ctx.channel().await?);
    let p = client
        .get_profile(pb::GetProfileRequest { mpid })
        .await?
        .into_inner();
    let view = profile_json(&p);
    if ctx.json() {
        say_json(&view);
        return Ok(());
    }
    say!(
        "mpid {}  first seen {}  last seen {}{}",
        p.mpid,
        when(p.first_seen_ms),
        when(p.last_seen_ms),
        if p.app_version.is_empty() {
            String::new()
        } else {
            format!("  app version {}", p.app_version)
        }
    );
    say!("identities:");
    for i in &p.identities {
        say!("  {:<28} {}", i.identity_type, i.value);
    }
    for (title, key) in [
        ("user attributes", "user_attributes"),
        ("calculated attributes", "calculated_attributes"),
    ] {
        let Some(values) = view[key].as_object().filter(|o| !o.is_empty()) else {
            continue;
        };
        say!("{title}:");
        for (name, value) in values {
            say!("  {name:<28} {value}");
        }
    }
    for (title, key) in [
        ("device", "device"),
        ("location", "location"),
        ("install attribution", "install_attribution"),
        ("uninstall attribution", "uninstall_attribution"),
    ] {
        if let Some(fields) = view[key].as_object().filter(|o| !o.is_empty()) {
            let words: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null() && *v != "")
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            say!("{title}: {}", words.join(", "));
        }
    }
    say!("audiences:");
    for m in &p.audiences {
        say!(
            "  {:>5} {:<32} since {} (version {})",
            m.audience_id,
            m.audience_name,
            when(m.since_ms),
            m.version
        );
    }
    say!("events in retention:");
    for e in &p.events {
        say!(
            "  {:<48} {:>6}  last {}",
            e.event_key,
            e.count_in_retention,
            when(e.last_seen_ms)
        );
    }
    Ok(())
}

pub async fn explain(ctx: &Ctx, mpid: i64, audience: u64) -> anyhow::Result<()> {
    let mut client = ProfileServiceClient::new(ctx.channel().await?);
    let e = client
        .explain(pb::ExplainRequest {
            mpid,
            audience_id: audience,
        })
        .await?
        .into_inner();
    if ctx.json() {
        say_json(&json!({
            "mpid": mpid,
            "audience_id": audience,
            "member": e.member,
            "evaluated_at": when_json(e.evaluated_at_ms),
            "root": e.root.as_ref().map(explain_json),
        }));
        return Ok(());
    }
    say!(
        "mpid {mpid} is {} audience {audience} (evaluated at {})",
        if e.member {
            "a member of"
        } else {
            "not a member of"
        },
        when(e.evaluated_at_ms)
    );
    if let Some(root) = &e.root {
        explain_text(root, 1);
    }
    Ok(())
}
