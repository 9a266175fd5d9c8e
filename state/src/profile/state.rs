//! A profile's data: attributes, identities, consent, device, location, event histories,
//! calculated aggregates and memberships, and its stored encoding (format byte, postcard; the
//! previous format still read). Invariant: this module depends on nothing above the model's
//! data types, so every reader of a profile (criteria, catalog, outputs) can import it.

use crate::aggregate::CalcState;
use crate::history::{EventSeries, SeriesV2};
use crate::model::{
    AttrValue, Attribution, AudienceId, ConsentState, DeviceInfo, GeoLocation, Mpid, TimestampMs,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedAttr {
    /// The name as the producer spelled it.
    pub name: String,
    pub value: AttrValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub member: bool,
    pub version: u64,
    pub changed_at_ms: TimestampMs,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileState {
    pub mpid: Mpid,
    pub first_seen_ms: TimestampMs,
    pub last_seen_ms: TimestampMs,
    /// Identity type (lowercased) to its values.
    pub identities: BTreeMap<String, Vec<String>>,
    /// Attribute name lowercased to the attribute.
    pub attributes: BTreeMap<String, NamedAttr>,
    pub device: DeviceInfo,
    pub consent: ConsentState,
    pub app_version: Option<String>,
    pub opted_out: bool,
    /// Event key (or matcher key) to its occurrences within retention.
    pub history: BTreeMap<String, EventSeries>,
    pub memberships: BTreeMap<AudienceId, MemberRecord>,
    /// Audience to the instant time alone may change its answer.
    pub due: BTreeMap<AudienceId, TimestampMs>,
    // Format 2 fields, after every format 1 field (the encoding is positional).
    /// Where the user was last placed (device position, GeoIP).
    pub location: GeoLocation,
    /// The latest install and uninstall attributions.
    pub install_attribution: Option<Attribution>,
    pub uninstall_attribution: Option<Attribution>,
    /// Calculated attribute (lowercased name) to its state.
    pub calculated: BTreeMap<String, CalcState>,
    /// The highest app version seen, for upgrades.
    pub highest_app_version: Option<String>,
}

/// The stored form of format 2 (event series as lists of days), read so that existing stores
/// survive the upgrade; written by tests only.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ProfileStateV2 {
    mpid: Mpid,
    first_seen_ms: TimestampMs,
    last_seen_ms: TimestampMs,
    identities: BTreeMap<String, Vec<String>>,
    attributes: BTreeMap<String, NamedAttr>,
    device: DeviceInfo,
    consent: ConsentState,
    app_version: Option<String>,
    opted_out: bool,
    history: BTreeMap<String, SeriesV2>,
    memberships: BTreeMap<AudienceId, MemberRecord>,
    due: BTreeMap<AudienceId, TimestampMs>,
    location: GeoLocation,
    install_attribution: Option<Attribution>,
    uninstall_attribution: Option<Attribution>,
    calculated: BTreeMap<String, CalcState>,
    highest_app_version: Option<String>,
}

impl From<ProfileStateV2> for ProfileState {
    fn from(v: ProfileStateV2) -> Self {
        ProfileState {
            mpid: v.mpid,
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            identities: v.identities,
            attributes: v.attributes,
            device: v.device,
            consent: v.consent,
            app_version: v.app_version,
            opted_out: v.opted_out,
            history: v.history.into_iter().map(|(k, s)| (k, s.0)).collect(),
            memberships: v.memberships,
            due: v.due,
            location: v.location,
            install_attribution: v.install_attribution,
            uninstall_attribution: v.uninstall_attribution,
            calculated: v.calculated,
            highest_app_version: v.highest_app_version,
        }
    }
}

/// The stored form of format 1, read so that existing stores survive the upgrade.
#[derive(Deserialize)]
struct ProfileStateV1 {
    mpid: Mpid,
    first_seen_ms: TimestampMs,
    last_seen_ms: TimestampMs,
    identities: BTreeMap<String, Vec<String>>,
    attributes: BTreeMap<String, NamedAttr>,
    device: DeviceInfo,
    consent: ConsentState,
    app_version: Option<String>,
    opted_out: bool,
    history: BTreeMap<String, SeriesV2>,
    memberships: BTreeMap<AudienceId, MemberRecord>,
    due: BTreeMap<AudienceId, TimestampMs>,
}

impl From<ProfileStateV1> for ProfileState {
    fn from(v: ProfileStateV1) -> Self {
        ProfileState {
            mpid: v.mpid,
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            identities: v.identities,
            attributes: v.attributes,
            device: v.device,
            consent: v.consent,
            app_version: v.app_version,
            opted_out: v.opted_out,
            history: v.history.into_iter().map(|(k, s)| (k, s.0)).collect(),
            memberships: v.memberships,
            due: v.due,
            ..Default::default()
        }
    }
}

/// What applying a message changed, for the index to pick the audiences to evaluate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    /// The profile did not exist before this message.
    pub created: bool,
    /// (event type, selector name) of the events applied.
    pub events: BTreeSet<(String, String)>,
    /// Lowercased names of attributes whose value changed.
    pub attributes: BTreeSet<String>,
    /// Identity types whose values changed.
    pub identities: BTreeSet<String>,
    /// Device info or app version changed.
    pub device: bool,
    /// Consent state changed.
    pub consent: bool,
    /// Location changed.
    pub location: bool,
    /// Install or uninstall attribution changed.
    pub attribution: bool,
    /// Calculated attributes that took in an event.
    pub calculated: BTreeSet<String>,
    /// The latest event time of the message, for the deltas it causes.
    pub event_time_ms: TimestampMs,
}

impl ProfileState {
    pub fn new(mpid: Mpid) -> Self {
        ProfileState {
            mpid,
            ..Default::default()
        }
    }

    pub fn is_new(&self) -> bool {
        self.first_seen_ms == 0 && self.last_seen_ms == 0
    }

    pub fn attribute(&self, lowercase_name: &str) -> Option<&AttrValue> {
        self.attributes.get(lowercase_name).map(|a| &a.value)
    }

    /// Wake-up time of the profile's timer: the earliest due audience.
    pub fn next_due(&self) -> Option<TimestampMs> {
        self.due.values().copied().min()
    }

    /// The audiences whose `due` instant has come.
    pub fn due_audiences(&self, now: TimestampMs) -> Vec<AudienceId> {
        self.due
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Current audiences of the profile.
    pub fn member_of(&self) -> impl Iterator<Item = (AudienceId, &MemberRecord)> {
        self.memberships
            .iter()
            .filter(|(_, r)| r.member)
            .map(|(&id, r)| (id, r))
    }

    /// The stored row: the format byte, then the state, serialised into one buffer sized for
    /// a typical profile (not grown from empty and copied after the format byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_CAPACITY);
        out.push(PROFILE_FORMAT);
        postcard::to_extend(self, out).expect("profile state always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&PROFILE_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            Some((2, rest)) => postcard::from_bytes::<ProfileStateV2>(rest)
                .map(ProfileState::from)
                .map_err(|e| e.to_string()),
            Some((1, rest)) => postcard::from_bytes::<ProfileStateV1>(rest)
                .map(ProfileState::from)
                .map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown profile format {v}")),
            None => Err("empty profile record".to_string()),
        }
    }
}

/// The event type of the upgrade the engine records when the app version goes up.
pub const UPGRADE_EVENT_TYPE: &str = "upgrade";

/// The buffer [`ProfileState::encode`] starts with: a profile with a few attributes,
/// identities, consent, device information and the series of a month of events fits.
const ENCODED_CAPACITY: usize = 2048;

/// Version byte of the stored profile encoding.
/// 2: location, attribution and calculated attributes.
/// 3: each event series packed into one byte string (see [`crate::history`]).
/// Profiles of formats 1 and 2 are still read, and written as format 3 on their next change.
const PROFILE_FORMAT: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DAY_MS;

    #[test]
    fn a_format_2_row_reads_as_it_was_and_is_written_as_format_3() {
        let mut state = ProfileState::new(42);
        state.first_seen_ms = 7;
        let mut series = EventSeries::default();
        series.record(3 * DAY_MS + 5);
        series.record(4 * DAY_MS + 6);
        state
            .history
            .insert("custom_event:search".into(), series.clone());
        state
            .calculated
            .insert("spend".into(), CalcState::default());
        state.highest_app_version = Some("2.1".into());
        let v2 = ProfileStateV2 {
            mpid: 42,
            first_seen_ms: 7,
            last_seen_ms: 0,
            identities: Default::default(),
            attributes: Default::default(),
            device: Default::default(),
            consent: Default::default(),
            app_version: None,
            opted_out: false,
            history: [("custom_event:search".to_string(), SeriesV2(series))].into(),
            memberships: Default::default(),
            due: Default::default(),
            location: Default::default(),
            install_attribution: None,
            uninstall_attribution: None,
            calculated: state.calculated.clone(),
            highest_app_version: Some("2.1".into()),
        };
        let mut row = vec![2];
        row.extend(postcard::to_allocvec(&v2).unwrap());
        assert_eq!(ProfileState::decode(&row).unwrap(), state);
        let encoded = state.encode();
        assert_eq!(encoded[0], 3);
        assert_eq!(ProfileState::decode(&encoded).unwrap(), state);
    }
}
