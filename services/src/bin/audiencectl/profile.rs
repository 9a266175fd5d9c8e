//! `audiencectl profile` and `audiencectl explain`: a profile as the engine holds it, and why
//! it is or is not in an audience.

use crate::client::*;
use audience_proto::v1 as pb;
use pb::profile_service_client::ProfileServiceClient;

pub async fn profile(server: &str, mpid: i64) -> anyhow::Result<()> {
    let mut client = ProfileServiceClient::new(channel(server).await?);
    let p = client
        .get_profile(pb::GetProfileRequest { mpid })
        .await?
        .into_inner();
    println!(
        "mpid {}  first seen {}  last seen {}  app version {}",
        p.mpid, p.first_seen_ms, p.last_seen_ms, p.app_version
    );
    println!("identities:");
    for i in &p.identities {
        println!("  {:<28} {}", i.identity_type, i.value);
    }
    println!("user attributes:");
    let mut attrs: Vec<_> = p.user_attributes.iter().collect();
    attrs.sort_by_key(|(k, _)| (*k).clone());
    for (k, v) in attrs {
        println!("  {k:<28} {:?}", v.value);
    }
    if let Some(d) = &p.device_info {
        println!(
            "device: platform {:?} os {:?} model {:?} carrier {:?}",
            d.platform, d.os_version, d.device_model, d.network_carrier
        );
    }
    if !p.calculated_attributes.is_empty() {
        println!("calculated attributes:");
        let mut calc: Vec<_> = p.calculated_attributes.iter().collect();
        calc.sort_by_key(|(k, _)| (*k).clone());
        for (k, v) in calc {
            println!("  {k:<28} {:?}", v.value);
        }
    }
    if let Some(l) = p
        .location
        .as_ref()
        .filter(|l| **l != pb::Location::default())
    {
        println!(
            "location: city {:?} state {:?} zip {:?} dma {:?} country {:?} at {:?}, {:?}",
            l.city, l.state, l.zip, l.dma, l.country, l.latitude, l.longitude
        );
    }
    for (kind, a) in [
        ("install", &p.install_attribution),
        ("uninstall", &p.uninstall_attribution),
    ] {
        if let Some(a) = a {
            println!(
                "{kind} attribution: publisher {:?} campaign {:?} ({})",
                a.publisher, a.campaign, a.service_provider
            );
        }
    }
    println!("audiences:");
    for m in &p.audiences {
        println!(
            "  {:>5} {:<32} since {} (v{})",
            m.audience_id, m.audience_name, m.since_ms, m.version
        );
    }
    println!("events in retention:");
    for e in &p.events {
        println!(
            "  {:<48} {:>6}  last {}",
            e.event_key, e.count_in_retention, e.last_seen_ms
        );
    }
    Ok(())
}

pub async fn explain(server: &str, mpid: i64, audience: u64) -> anyhow::Result<()> {
    let mut client = ProfileServiceClient::new(channel(server).await?);
    let e = client
        .explain(pb::ExplainRequest {
            mpid,
            audience_id: audience,
        })
        .await?
        .into_inner();
    println!(
        "mpid {mpid} is {} audience {audience} (evaluated at {})",
        if e.member {
            "a member of"
        } else {
            "not a member of"
        },
        e.evaluated_at_ms
    );
    if let Some(root) = &e.root {
        print_explain_node(root, 1);
    }
    Ok(())
}
