//! Conversions between the domain and the wire: protobuf `Struct` to JSON, records and
//! profiles to their messages, and the one mapping of errors to gRPC statuses.

use audience_actors::latency::{DeltaLatency, Histogram};
use audience_actors::registry::RegistryError;
use audience_actors::stats::Figures;
use audience_proto::v1 as pb;
use audience_state::ab_test::AbTest;
use audience_state::calculated::{value_of, CalcSpec, CalculatedAttributeRecord};
use audience_state::catalog::{AudienceAccess, AudienceRecord, AudienceStatus};
use audience_state::criteria::location_field;
use audience_state::model::{AttrValue, Attribution, DeltaKind};
use audience_state::profile::ProfileState;
use prost_types::value::Kind;
use tonic::Status;

pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            // Counts and days arrive as doubles: keep integers integral.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

pub fn json_to_struct(v: &serde_json::Value) -> prost_types::Struct {
    match json_to_value(v).kind {
        Some(Kind::StructValue(s)) => s,
        _ => prost_types::Struct::default(),
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// An audience's figures, with its delta latencies when they are known (a subscriber's own
/// figures have none).
pub fn stats(f: &Figures, latency: Option<&DeltaLatency>) -> pb::AudienceStats {
    pb::AudienceStats {
        size: f.size,
        adds_24h: f.adds_24h,
        drops_24h: f.drops_24h,
        volatility_24h: f.volatility_24h,
        event_to_delta: latency.map(|l| delta_latency(&l.from_event)),
        produce_to_delta: latency.map(|l| delta_latency(&l.from_produce)),
    }
}

pub fn delta_latency(h: &Histogram) -> pb::DeltaLatency {
    let q = |q: f64| h.quantile_ms(q).unwrap_or(0.0);
    pb::DeltaLatency {
        count: h.count(),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        buckets: h.buckets().iter().map(|(i, n)| (*i, *n)).collect(),
    }
}

/// What a peer's answer says of an audience's latencies.
pub fn latency_of(stats: &pb::AudienceStats) -> DeltaLatency {
    let histogram = |l: &Option<pb::DeltaLatency>| {
        Histogram::from_buckets(
            l.iter()
                .flat_map(|l| l.buckets.iter().map(|(i, n)| (*i, *n))),
        )
    };
    DeltaLatency {
        from_event: histogram(&stats.event_to_delta),
        from_produce: histogram(&stats.produce_to_delta),
    }
}

pub fn audience(r: &AudienceRecord, figures: Option<&(Figures, DeltaLatency)>) -> pb::Audience {
    pb::Audience {
        id: r.id,
        name: r.name.clone(),
        external_name: r.external_name.clone(),
        status: match r.status {
            AudienceStatus::Draft => pb::AudienceStatus::Draft,
            AudienceStatus::Active => pb::AudienceStatus::Active,
        } as i32,
        criteria: Some(json_to_struct(&r.criteria)),
        tags: r.tags.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        revision: r.revision,
        stats: figures.map(|(f, latency)| stats(f, Some(latency))),
        connected_outputs: 0,
        faulted_connections: 0,
        calculation: None,
        created_by: r.created_by.clone(),
        updated_by: r.updated_by.clone(),
        workspaces: r.workspaces.clone(),
        inputs: r.inputs.clone(),
        access: access_to_pb(r.access) as i32,
        ab_test: r.ab_test.as_ref().map(ab_test),
    }
}

/// A test as the API shows it: the variations created, then Control with the rest.
pub fn ab_test(test: &AbTest) -> pb::AbTest {
    pb::AbTest {
        id: test.id,
        variations: test
            .split()
            .map(|(name, percent)| pb::AbVariation {
                name: name.to_string(),
                percent,
            })
            .collect(),
        created_at_ms: test.created_at_ms,
    }
}

pub fn access_to_pb(access: AudienceAccess) -> pb::AudienceAccess {
    match access {
        AudienceAccess::Private => pb::AudienceAccess::Private,
        AudienceAccess::ViewOnly => pb::AudienceAccess::ViewOnly,
        AudienceAccess::Usable => pb::AudienceAccess::Usable,
    }
}

/// A request's access (`None`: unspecified; an unknown number is INVALID_ARGUMENT).
pub fn access_of(field: &str, value: i32) -> Result<Option<AudienceAccess>, Status> {
    match pb::AudienceAccess::try_from(value) {
        Ok(pb::AudienceAccess::Unspecified) => Ok(None),
        Ok(pb::AudienceAccess::Private) => Ok(Some(AudienceAccess::Private)),
        Ok(pb::AudienceAccess::ViewOnly) => Ok(Some(AudienceAccess::ViewOnly)),
        Ok(pb::AudienceAccess::Usable) => Ok(Some(AudienceAccess::Usable)),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field}: {value} is no access (1 private, 2 view only, 3 usable)"
        ))),
    }
}

pub fn audit_entry(e: &audience_state::audit::AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        offset: e.offset,
        at_ms: e.at_ms,
        by: e.by.clone(),
        node: e.node.clone(),
        op: e.op.clone(),
        subject: e.subject.clone(),
        accepted: e.accepted(),
        refusal: e.refusal.clone(),
    }
}

pub fn calculation(c: &audience_actors::engine::Calculation) -> pb::Calculation {
    pb::Calculation {
        profiles_scanned: c.scanned,
        profiles_total: c.total,
        percent: c.percent,
        eta_ms: c.eta_ms.unwrap_or_default(),
        started_at_ms: c.started_at_ms,
        estimate: None,
    }
}

/// The profiles seen in an estimate's workspaces, from the share of the sample seen there
/// (exact when the sample was every profile).
pub fn population_in_scope(s: &audience_actors::engine::SampledEstimate) -> u64 {
    if s.sampled == 0 {
        return 0;
    }
    if s.sampled >= s.population {
        return s.sampled_in_scope;
    }
    let scaled = u128::from(s.population) * u128::from(s.sampled_in_scope);
    ((scaled + u128::from(s.sampled) / 2) / u128::from(s.sampled)) as u64
}

pub fn estimate(s: &audience_actors::engine::SampledEstimate) -> pb::AudienceEstimate {
    use audience_state::estimate::Estimate;
    let mut out = pb::AudienceEstimate {
        sample_size: s.sampled,
        sampled_members: s.sampled_members,
        sampled_in_scope: s.sampled_in_scope,
        profiles_total: s.population,
        ..Default::default()
    };
    match s.estimate {
        Estimate::TooSmall => out.too_small = true,
        Estimate::Size {
            estimate,
            low,
            high,
            exact,
        } => {
            out.estimate = estimate;
            out.low = low;
            out.high = high;
            out.exact = exact;
        }
    }
    out
}

pub fn log_stats(s: &audience_state::eventlog::LogStats) -> pb::EventLogStats {
    pb::EventLogStats {
        events: s.events,
        bytes: s.bytes,
        oldest_ms: s.oldest_ms.unwrap_or_default(),
        newest_ms: s.newest_ms.unwrap_or_default(),
        dropped_events: s.dropped_events,
    }
}

pub fn delta_kind(k: DeltaKind) -> pb::DeltaKind {
    match k {
        DeltaKind::Added => pb::DeltaKind::Added,
        DeltaKind::Dropped => pb::DeltaKind::Dropped,
    }
}

pub fn attr_value(v: &AttrValue) -> pb::AttributeValue {
    use pb::attribute_value::Value;
    let value = match v {
        AttrValue::String(s) => Value::StringValue(s.clone()),
        AttrValue::Number(n) => Value::NumberValue(*n),
        AttrValue::Bool(b) => Value::BoolValue(*b),
        AttrValue::Date(d) => Value::DateUnixtimeMs(*d),
        AttrValue::List(l) => Value::ListValue(pb::StringList { values: l.clone() }),
        AttrValue::Null => Value::NullValue(true),
    };
    pb::AttributeValue { value: Some(value) }
}

/// `active_audience` names the active audiences; memberships of others are not shown.
/// A profile as the lookup shows it; `calculated` gives each calculated attribute's name and
/// spec, so that values are evaluated at `now`.
pub fn profile(
    p: &ProfileState,
    active_audience: impl Fn(u64) -> Option<String>,
    retention_from: i64,
    calculated: &[(String, CalcSpec)],
    now: i64,
) -> pb::Profile {
    let d = &p.device;
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    pb::Profile {
        mpid: p.mpid,
        identities: p
            .identities
            .iter()
            .flat_map(|(t, values)| {
                values.iter().map(move |v| pb::Identity {
                    identity_type: t.clone(),
                    value: v.clone(),
                })
            })
            .collect(),
        user_attributes: p
            .attributes
            .values()
            .map(|a| (a.name.clone(), attr_value(&a.value)))
            .collect(),
        device_info: Some(pb::DeviceInfo {
            platform: s(&d.platform),
            os_version: s(&d.os_version),
            device_model: s(&d.device_model),
            device_manufacturer: s(&d.device_manufacturer),
            network_carrier: s(&d.network_carrier),
            brand: s(&d.brand),
            locale_country: s(&d.locale_country),
            locale_language: s(&d.locale_language),
            device_identities: Default::default(),
        }),
        consent_state: Some(pb::ConsentState {
            gdpr: p
                .consent
                .gdpr
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        pb::GdprConsent {
                            consented: c.consented,
                            document: c.document.clone().unwrap_or_default(),
                            timestamp_unixtime_ms: c.timestamp_ms.unwrap_or_default(),
                            location: String::new(),
                            hardware_id: String::new(),
                        },
                    )
                })
                .collect(),
            ccpa_data_sale_opt_out: p.consent.ccpa_data_sale_opt_out,
        }),
        first_seen_ms: p.first_seen_ms,
        last_seen_ms: p.last_seen_ms,
        audiences: p
            .member_of()
            .filter_map(|(id, r)| Some((id, r, active_audience(id)?)))
            .map(|(id, r, name)| pb::Membership {
                audience_id: id,
                audience_name: name,
                since_ms: r.changed_at_ms,
                version: r.version,
            })
            .collect(),
        events: p
            .history
            .iter()
            .filter(|(k, _)| !k.starts_with("m:"))
            .map(|(k, series)| pb::EventCount {
                event_key: k
                    .replace(audience_state::criteria::KEY_SEP, ":")
                    .trim_end_matches(':')
                    .to_string(),
                count_in_retention: series.count_between(retention_from, i64::MAX),
                last_seen_ms: series.last().unwrap_or_default(),
            })
            .collect(),
        app_version: p.app_version.clone().unwrap_or_default(),
        calculated_attributes: calculated
            .iter()
            .filter_map(|(name, spec)| {
                let key = name.trim().to_lowercase();
                let (value, _) = value_of(p.calculated.get(&key), spec, now);
                Some((name.clone(), attr_value(&value?)))
            })
            .collect(),
        location: Some(pb::Location {
            city: location_field(p, None, "city").unwrap_or_default(),
            state: location_field(p, None, "state").unwrap_or_default(),
            zip: location_field(p, None, "zip").unwrap_or_default(),
            dma: location_field(p, None, "dma").unwrap_or_default(),
            country: location_field(p, None, "country").unwrap_or_default(),
            latitude: p.location.latitude,
            longitude: p.location.longitude,
        }),
        install_attribution: p.install_attribution.as_ref().map(attribution),
        uninstall_attribution: p.uninstall_attribution.as_ref().map(attribution),
        event_log: None,
        workspaces: p.workspaces.iter().cloned().collect(),
    }
}

fn attribution(a: &Attribution) -> pb::Attribution {
    pb::Attribution {
        publisher: a.publisher.clone().unwrap_or_default(),
        campaign: a.campaign.clone().unwrap_or_default(),
        service_provider: a.service_provider.clone().unwrap_or_default(),
    }
}

pub fn calculated_attribute(r: &CalculatedAttributeRecord) -> pb::CalculatedAttribute {
    let mut definition = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = definition.as_object_mut() {
        for engine_field in ["created_at_ms", "updated_at_ms", "revision"] {
            o.remove(engine_field);
        }
        // Absent optional fields print as null: leave them out.
        o.retain(|_, v| !v.is_null());
    }
    pb::CalculatedAttribute {
        definition: Some(json_to_struct(&definition)),
        revision: r.revision,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

/// The one mapping of registry errors to gRPC statuses.
pub fn status(e: RegistryError) -> Status {
    match e {
        RegistryError::Invalid(d) => Status::invalid_argument(d.to_string()),
        RegistryError::NotFound(_)
        | RegistryError::CalculatedNotFound(_)
        | RegistryError::OutputNotFound(_)
        | RegistryError::ConnectionNotFound(_) => Status::not_found(e.to_string()),
        RegistryError::Conflict(_) | RegistryError::Refused(_) => {
            Status::failed_precondition(e.to_string())
        }
        RegistryError::Gone(_) => Status::not_found(e.to_string()),
        RegistryError::Exists(_) => Status::already_exists(e.to_string()),
        RegistryError::Unavailable(_) => Status::unavailable(e.to_string()),
        RegistryError::Quota(_) => Status::resource_exhausted(e.to_string()),
        RegistryError::Store(_) => Status::internal(e.to_string()),
    }
}

pub fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}
