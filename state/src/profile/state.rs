//! A profile's data: attributes, identities, consent, device, location, event histories,
//! calculated aggregates and memberships, and its stored encoding: two rows, each a format byte
//! then postcard (written by `super::encode`, read here). The core row holds what messages
//! set; the derived row what the catalog's definitions derive from them, so that a backfill
//! rewrites only the small derived row. The whole rows of earlier formats are still read. Invariant: this module depends on nothing above the model's
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

pub use super::derived::MemberRecord;

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
    // Format 5 of the core row: not in the whole rows of formats 1 to 3, which hold none.
    /// The workspaces the profile was seen in: those owning an input a message of it came
    /// through (see [`crate::inputs`]).
    #[serde(skip)]
    pub workspaces: BTreeSet<String>,
    // Format 6 of the core row.
    /// Workspace to the attributes messages of its inputs set (lowercased name to the
    /// attribute): profile data as each workspace keeps it, which a criterion of a multi
    /// workspace audience picks (`attributes` holds the latest of every source).
    #[serde(skip)]
    pub workspace_attributes: BTreeMap<String, BTreeMap<String, NamedAttr>>,
    /// Workspace to the identities messages of its inputs brought (type to values, as
    /// `identities`): a criterion of a multi workspace audience picks them too.
    #[serde(skip)]
    pub workspace_identities: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    // Format 7 of the core row.
    /// Workspace to the device, app version, consent, location and attributions messages of
    /// its inputs set: what a criterion of a multi workspace audience picks, and what a token
    /// limited to the workspace reads (the fields above hold the latest of every source).
    #[serde(skip)]
    pub workspace_data: BTreeMap<String, WorkspaceData>,
}

/// One workspace's copy of the profile data a batch sets besides attributes and identities
/// (the seed: "all user profile data is scoped and maintained within a single workspace").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceData {
    /// When a message of the workspace's inputs was first and last seen (0: none yet).
    pub first_seen_ms: TimestampMs,
    pub last_seen_ms: TimestampMs,
    pub device: DeviceInfo,
    pub app_version: Option<String>,
    pub consent: ConsentState,
    pub location: GeoLocation,
    pub install_attribution: Option<Attribution>,
    pub uninstall_attribution: Option<Attribution>,
}

impl WorkspaceData {
    /// Notes a message of the workspace at `at`; whether its first or last seen moved.
    pub fn seen_at(&mut self, at: TimestampMs) -> bool {
        let before = (self.first_seen_ms, self.last_seen_ms);
        if before == (0, 0) {
            self.first_seen_ms = at;
        }
        self.first_seen_ms = self.first_seen_ms.min(at);
        self.last_seen_ms = self.last_seen_ms.max(at);
        before != (self.first_seen_ms, self.last_seen_ms)
    }

    /// Overlays what `newer` holds (a view over several workspaces: the last named wins;
    /// first seen is the earliest, last seen the latest).
    pub fn merge_from(&mut self, newer: &WorkspaceData) {
        if newer.first_seen_ms != 0 || newer.last_seen_ms != 0 {
            if self.first_seen_ms == 0 && self.last_seen_ms == 0 {
                self.first_seen_ms = newer.first_seen_ms;
            }
            self.first_seen_ms = self.first_seen_ms.min(newer.first_seen_ms);
            self.last_seen_ms = self.last_seen_ms.max(newer.last_seen_ms);
        }
        self.device.merge_from(&newer.device);
        if newer.app_version.is_some() {
            self.app_version.clone_from(&newer.app_version);
        }
        for (purpose, consent) in &newer.consent.gdpr {
            self.consent.gdpr.insert(purpose.clone(), consent.clone());
        }
        if newer.consent.ccpa_data_sale_opt_out.is_some() {
            self.consent.ccpa_data_sale_opt_out = newer.consent.ccpa_data_sale_opt_out;
        }
        self.location.merge_from(&newer.location);
        if newer.install_attribution.is_some() {
            self.install_attribution
                .clone_from(&newer.install_attribution);
        }
        if newer.uninstall_attribution.is_some() {
            self.uninstall_attribution
                .clone_from(&newer.uninstall_attribution);
        }
    }
}

/// What a workspace that set nothing holds.
static EMPTY_WORKSPACE_DATA: WorkspaceData = WorkspaceData {
    first_seen_ms: 0,
    last_seen_ms: 0,
    device: DeviceInfo {
        platform: None,
        os_version: None,
        device_model: None,
        device_manufacturer: None,
        network_carrier: None,
        brand: None,
        locale_country: None,
        locale_language: None,
    },
    app_version: None,
    consent: ConsentState {
        gdpr: BTreeMap::new(),
        ccpa_data_sale_opt_out: None,
    },
    location: GeoLocation {
        city: None,
        state: None,
        zip: None,
        dma: None,
        country: None,
        latitude: None,
        longitude: None,
    },
    install_attribution: None,
    uninstall_attribution: None,
};

/// The device, app version, consent, location and attributions one source of a profile holds:
/// the profile's latest from every source, or one workspace's copy
/// ([`ProfileState::user_data`]). Criteria read them through it, whichever they picked.
#[derive(Debug, Clone, Copy)]
pub struct UserData<'a> {
    pub device: &'a DeviceInfo,
    pub app_version: &'a Option<String>,
    pub consent: &'a ConsentState,
    pub location: &'a GeoLocation,
    pub install_attribution: &'a Option<Attribution>,
    pub uninstall_attribution: &'a Option<Attribution>,
}

impl<'a> From<&'a WorkspaceData> for UserData<'a> {
    fn from(d: &'a WorkspaceData) -> Self {
        UserData {
            device: &d.device,
            app_version: &d.app_version,
            consent: &d.consent,
            location: &d.location,
            install_attribution: &d.install_attribution,
            uninstall_attribution: &d.uninstall_attribution,
        }
    }
}

/// [`UserData`], writable: what a batch merges into (the profile's, then its workspace's).
pub struct UserDataMut<'a> {
    pub device: &'a mut DeviceInfo,
    pub app_version: &'a mut Option<String>,
    pub consent: &'a mut ConsentState,
    pub location: &'a mut GeoLocation,
    pub install_attribution: &'a mut Option<Attribution>,
    pub uninstall_attribution: &'a mut Option<Attribution>,
}

impl<'a> From<&'a mut WorkspaceData> for UserDataMut<'a> {
    fn from(d: &'a mut WorkspaceData) -> Self {
        UserDataMut {
            device: &mut d.device,
            app_version: &mut d.app_version,
            consent: &mut d.consent,
            location: &mut d.location,
            install_attribution: &mut d.install_attribution,
            uninstall_attribution: &mut d.uninstall_attribution,
        }
    }
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
            workspaces: BTreeSet::new(),
            workspace_attributes: BTreeMap::new(),
            workspace_identities: BTreeMap::new(),
            workspace_data: BTreeMap::new(),
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
    /// The profile was seen in a workspace for the first time.
    pub workspaces: bool,
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

    /// The values of an identity type as the messages of `workspace`'s inputs brought them.
    pub fn identities_in(&self, workspace: &str, identity_type: &str) -> Option<&Vec<String>> {
        self.workspace_identities.get(workspace)?.get(identity_type)
    }

    /// The values of an identity type as `workspace` keeps them, or the profile's (`None`).
    pub fn identities_from(
        &self,
        workspace: Option<&str>,
        identity_type: &str,
    ) -> Option<&Vec<String>> {
        match workspace {
            Some(w) => self.identities_in(w, identity_type),
            None => self.identities.get(identity_type),
        }
    }

    /// The attribute as the messages of `workspace`'s inputs set it.
    pub fn attribute_in(&self, workspace: &str, lowercase_name: &str) -> Option<&AttrValue> {
        self.workspace_attributes
            .get(workspace)?
            .get(lowercase_name)
            .map(|a| &a.value)
    }

    /// The attribute as `workspace` keeps it, or the profile's (`None`).
    pub fn attribute_from(
        &self,
        workspace: Option<&str>,
        lowercase_name: &str,
    ) -> Option<&AttrValue> {
        match workspace {
            Some(w) => self.attribute_in(w, lowercase_name),
            None => self.attribute(lowercase_name),
        }
    }

    /// The device, app version, consent, location and attributions as `workspace` keeps them
    /// (nothing, for a workspace that set none), or the profile's latest from every source
    /// (`None`).
    pub fn user_data(&self, workspace: Option<&str>) -> UserData<'_> {
        match workspace {
            Some(w) => self
                .workspace_data
                .get(w)
                .unwrap_or(&EMPTY_WORKSPACE_DATA)
                .into(),
            None => UserData {
                device: &self.device,
                app_version: &self.app_version,
                consent: &self.consent,
                location: &self.location,
                install_attribution: &self.install_attribution,
                uninstall_attribution: &self.uninstall_attribution,
            },
        }
    }

    /// The profile's own user data, writable.
    pub fn user_data_mut(&mut self) -> UserDataMut<'_> {
        UserDataMut {
            device: &mut self.device,
            app_version: &mut self.app_version,
            consent: &mut self.consent,
            location: &mut self.location,
            install_attribution: &mut self.install_attribution,
            uninstall_attribution: &mut self.uninstall_attribution,
        }
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

    /// The profile as one row of format 3 (every part): what profiles were stored as before
    /// format 4 split them in two rows; tests write it as older versions did.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let out = vec![WHOLE_FORMAT];
        postcard::to_extend(self, out).expect("profile state always serialises")
    }

    /// The core row as postcard writes it from [`CoreRef`]: what
    /// [`ProfileState::encode_core`] must write, byte for byte.
    #[cfg(test)]
    pub(super) fn encode_core_by_postcard(&self) -> Vec<u8> {
        let core = CoreRef {
            mpid: self.mpid,
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            identities: &self.identities,
            attributes: &self.attributes,
            device: &self.device,
            consent: &self.consent,
            app_version: &self.app_version,
            opted_out: self.opted_out,
            history: SeriesOf {
                history: &self.history,
                derived: false,
            },
            location: &self.location,
            install_attribution: &self.install_attribution,
            uninstall_attribution: &self.uninstall_attribution,
            highest_app_version: &self.highest_app_version,
        };
        let mut out = vec![CORE_FORMAT];
        out.extend(postcard::to_allocvec(&core).unwrap());
        out.extend(postcard::to_allocvec(&self.workspaces).unwrap());
        out.extend(postcard::to_allocvec(&self.workspace_attributes).unwrap());
        out.extend(postcard::to_allocvec(&self.workspace_identities).unwrap());
        out.extend(postcard::to_allocvec(&self.workspace_data).unwrap());
        out
    }

    /// The derived row as postcard writes it from [`DerivedRef`] (see
    /// [`ProfileState::encode_core_by_postcard`]).
    #[cfg(test)]
    pub(super) fn encode_derived_by_postcard(&self) -> Vec<u8> {
        let derived = DerivedRef {
            history: SeriesOf {
                history: &self.history,
                derived: true,
            },
            memberships: super::derived::Packed(
                &self.memberships,
                super::derived::pack_memberships,
            ),
            due: super::derived::Packed(&self.due, super::derived::pack_due),
            calculated: &self.calculated,
        };
        let mut out = vec![DERIVED_FORMAT];
        out.extend(postcard::to_allocvec(&derived).unwrap());
        out
    }

    /// A profile from its core row (formats 4 to 7), or from a whole row of an earlier
    /// format; its derived parts come from [`ProfileState::set_derived`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&format @ (CORE_FORMAT | CORE_FORMAT_6 | CORE_FORMAT_5), rest)) => {
                let (core, rest) =
                    postcard::take_from_bytes::<Core>(rest).map_err(|e| e.to_string())?;
                let mut profile = ProfileState::from(core);
                let (workspaces, rest) =
                    postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
                profile.workspaces = workspaces;
                if format >= CORE_FORMAT_6 {
                    let (attributes, rest) =
                        postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
                    profile.workspace_attributes = attributes;
                    let (identities, rest) =
                        postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
                    profile.workspace_identities = identities;
                    if format == CORE_FORMAT {
                        profile.workspace_data =
                            postcard::from_bytes(rest).map_err(|e| e.to_string())?;
                    }
                }
                Ok(profile)
            }
            Some((&CORE_FORMAT_4, rest)) => postcard::from_bytes::<Core>(rest)
                .map(ProfileState::from)
                .map_err(|e| e.to_string()),
            Some((&WHOLE_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
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

    /// The parts of a derived row ([`ProfileState::encode_derived`]).
    pub fn decode_derived(bytes: &[u8]) -> Result<DerivedParts, String> {
        match bytes.split_first() {
            Some((&DERIVED_FORMAT, rest)) => postcard::from_bytes::<PackedDerivedParts>(rest)
                .map(|p| DerivedParts {
                    history: p.history,
                    memberships: p.memberships,
                    due: p.due,
                    calculated: p.calculated,
                })
                .map_err(|e| e.to_string()),
            Some((&DERIVED_FORMAT_1, rest)) => {
                postcard::from_bytes(rest).map_err(|e| e.to_string())
            }
            Some((v, _)) => Err(format!("unknown derived profile format {v}")),
            None => Err("empty derived profile record".to_string()),
        }
    }

    /// Takes the derived parts of a stored derived row in place of those the profile holds
    /// (a whole row of an earlier format holds them too: the derived row was written later).
    pub fn set_derived(&mut self, parts: DerivedParts) {
        self.history.retain(|key, _| !is_derived_series(key));
        self.history.extend(parts.history);
        self.memberships = parts.memberships;
        self.due = parts.due;
        self.calculated = parts.calculated;
    }
}

/// Whether the series of `key` is derived (an event criterion with conditions, keyed by its
/// matcher) rather than an event key's own: it is stored in the derived row.
pub fn is_derived_series(key: &str) -> bool {
    key.starts_with(MATCHER_SERIES_PREFIX)
}

/// How the history keys of matchers (event criteria with conditions) begin; no event key
/// does (they begin with an event type).
pub const MATCHER_SERIES_PREFIX: &str = "m:";

/// The series of a history that one row holds: the event keys' (core) or the matchers'
/// (derived).
#[cfg(test)]
struct SeriesOf<'a> {
    history: &'a BTreeMap<String, EventSeries>,
    derived: bool,
}

#[cfg(test)]
impl Serialize for SeriesOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let held = |key: &&String| is_derived_series(key) == self.derived;
        // postcard writes a map's length first: counted, not guessed from the filter.
        let len = self.history.keys().filter(held).count();
        let mut map = serializer.serialize_map(Some(len))?;
        for (key, series) in self.history.iter().filter(|(k, _)| held(k)) {
            map.serialize_entry(key, series)?;
        }
        map.end()
    }
}

/// The core row as written (format 4, which format 5 extends): every field of
/// [`ProfileState`] but the derived ones.
#[cfg(test)]
#[derive(Serialize)]
struct CoreRef<'a> {
    mpid: Mpid,
    first_seen_ms: TimestampMs,
    last_seen_ms: TimestampMs,
    identities: &'a BTreeMap<String, Vec<String>>,
    attributes: &'a BTreeMap<String, NamedAttr>,
    device: &'a DeviceInfo,
    consent: &'a ConsentState,
    app_version: &'a Option<String>,
    opted_out: bool,
    history: SeriesOf<'a>,
    location: &'a GeoLocation,
    install_attribution: &'a Option<Attribution>,
    uninstall_attribution: &'a Option<Attribution>,
    highest_app_version: &'a Option<String>,
}

/// The core row as read (the same fields as `CoreRef`, in its order).
#[derive(Deserialize)]
struct Core {
    mpid: Mpid,
    first_seen_ms: TimestampMs,
    last_seen_ms: TimestampMs,
    identities: BTreeMap<String, Vec<String>>,
    attributes: BTreeMap<String, NamedAttr>,
    device: DeviceInfo,
    consent: ConsentState,
    app_version: Option<String>,
    opted_out: bool,
    history: BTreeMap<String, EventSeries>,
    location: GeoLocation,
    install_attribution: Option<Attribution>,
    uninstall_attribution: Option<Attribution>,
    highest_app_version: Option<String>,
}

impl From<Core> for ProfileState {
    fn from(c: Core) -> Self {
        ProfileState {
            mpid: c.mpid,
            first_seen_ms: c.first_seen_ms,
            last_seen_ms: c.last_seen_ms,
            identities: c.identities,
            attributes: c.attributes,
            device: c.device,
            consent: c.consent,
            app_version: c.app_version,
            opted_out: c.opted_out,
            history: c.history,
            location: c.location,
            install_attribution: c.install_attribution,
            uninstall_attribution: c.uninstall_attribution,
            highest_app_version: c.highest_app_version,
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[derive(Serialize)]
struct DerivedRef<'a> {
    history: SeriesOf<'a>,
    memberships: super::derived::Packed<'a, BTreeMap<AudienceId, MemberRecord>>,
    due: super::derived::Packed<'a, BTreeMap<AudienceId, TimestampMs>>,
    calculated: &'a BTreeMap<String, CalcState>,
}

/// A derived row of the current format: `DerivedRef`'s fields, memberships and timers packed.
#[derive(Deserialize)]
struct PackedDerivedParts {
    history: BTreeMap<String, EventSeries>,
    #[serde(deserialize_with = "super::derived::memberships_from_bytes")]
    memberships: BTreeMap<AudienceId, MemberRecord>,
    #[serde(deserialize_with = "super::derived::due_from_bytes")]
    due: BTreeMap<AudienceId, TimestampMs>,
    calculated: BTreeMap<String, CalcState>,
}

/// What a derived row holds; as format 1 wrote it, every field in postcard's own form.
#[derive(Debug, Deserialize)]
pub struct DerivedParts {
    history: BTreeMap<String, EventSeries>,
    memberships: BTreeMap<AudienceId, MemberRecord>,
    due: BTreeMap<AudienceId, TimestampMs>,
    calculated: BTreeMap<String, CalcState>,
}

/// The event type of the upgrade the engine records when the app version goes up.
pub const UPGRADE_EVENT_TYPE: &str = "upgrade";

/// Version byte of a whole profile row (every part in one row).
/// 2: location, attribution and calculated attributes.
/// 3: each event series packed into one byte string (see [`crate::history`]).
/// Rows of formats 1 to 3 are still read (a derived row written since takes the place of
/// their derived parts), and written as the core format on their next change.
const WHOLE_FORMAT: u8 = 3;

/// Version byte of the core row (4: a profile in two rows, core and derived; 5: the
/// workspaces it was seen in, after format 4's fields; 6: then each workspace's attributes and
/// identities; 7: then each workspace's device, consent, location and attributions).
pub(super) const CORE_FORMAT: u8 = 7;
const CORE_FORMAT_6: u8 = 6;
const CORE_FORMAT_5: u8 = 5;
const CORE_FORMAT_4: u8 = 4;

/// Version byte of the derived row (2: memberships and timers packed, see `super::derived`;
/// rows of format 1 are still read).
pub(super) const DERIVED_FORMAT: u8 = 2;
const DERIVED_FORMAT_1: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DAY_MS;

    #[test]
    fn a_format_2_row_reads_as_it_was_and_is_written_as_formats_3_and_4() {
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
        // And as format 4 since: a core row and a derived row.
        let mut read = ProfileState::decode(&state.encode_core()).unwrap();
        read.set_derived(ProfileState::decode_derived(&state.encode_derived()).unwrap());
        assert_eq!(read, state);
    }

    /// A profile with every part: event-key and matcher series, memberships, a timer and a
    /// calculated attribute.
    fn full_profile() -> ProfileState {
        let mut state = ProfileState::new(7);
        state.first_seen_ms = 11;
        state.last_seen_ms = 12;
        state
            .identities
            .insert("email".into(), vec!["a@b.c".into()]);
        state.attributes.insert(
            "tier".into(),
            NamedAttr {
                name: "Tier".into(),
                value: AttrValue::String("gold".into()),
            },
        );
        let mut series = EventSeries::default();
        series.record(3 * DAY_MS + 5);
        state
            .history
            .insert("custom_event:search\u{1f}".into(), series.clone());
        series.record(4 * DAY_MS + 6);
        state
            .history
            .insert(format!("{MATCHER_SERIES_PREFIX}00000000000000ab"), series);
        state.memberships.insert(
            3,
            MemberRecord {
                member: true,
                version: 2,
                changed_at_ms: 9,
            },
        );
        state.due.insert(3, 5 * DAY_MS);
        state
            .calculated
            .insert("spend".into(), CalcState::default());
        state.highest_app_version = Some("2.1".into());
        state
    }

    #[test]
    fn the_core_and_derived_rows_together_are_the_profile_and_each_holds_only_its_parts() {
        let state = full_profile();
        let core = state.encode_core();
        assert_eq!(core[0], CORE_FORMAT);
        let mut read = ProfileState::decode(&core).unwrap();
        assert!(read.memberships.is_empty() && read.due.is_empty() && read.calculated.is_empty());
        assert_eq!(
            read.history.len(),
            1,
            "the core holds the event keys' series only"
        );
        read.set_derived(ProfileState::decode_derived(&state.encode_derived()).unwrap());
        assert_eq!(read, state);
        let derived = ProfileState::decode_derived(&state.encode_derived()).unwrap();
        assert_eq!(
            derived.history.len(),
            1,
            "the derived row holds the matchers' series"
        );
        assert!(derived.history.keys().all(|k| is_derived_series(k)));
        assert!(ProfileState::decode_derived(&core).is_err());
        assert!(ProfileState::decode_derived(&[]).is_err());
    }

    #[test]
    fn a_derived_row_written_after_a_whole_row_takes_the_place_of_its_derived_parts() {
        let stale = full_profile();
        let whole = stale.encode();
        assert_eq!(whole[0], WHOLE_FORMAT);
        // A backfill since: another matcher's series, the membership gone, no timer.
        let mut now = stale.clone();
        now.history
            .retain(|k, _| !k.starts_with(MATCHER_SERIES_PREFIX));
        let mut series = EventSeries::default();
        series.record(DAY_MS);
        now.history
            .insert(format!("{MATCHER_SERIES_PREFIX}00000000000000cd"), series);
        now.memberships.get_mut(&3).unwrap().member = false;
        now.due.clear();
        let mut read = ProfileState::decode(&whole).unwrap();
        assert_eq!(read, stale);
        read.set_derived(ProfileState::decode_derived(&now.encode_derived()).unwrap());
        assert_eq!(read, now);
    }

    #[test]
    fn the_core_row_keeps_the_workspaces_and_a_format_4_row_reads_as_seen_in_none() {
        let mut state = full_profile();
        state.workspaces.insert("app-a".into());
        state.workspaces.insert("app-b".into());
        let core = state.encode_core();
        assert_eq!(core[0], CORE_FORMAT);
        assert_eq!(
            ProfileState::decode(&core).unwrap().workspaces,
            state.workspaces
        );
        // A format 4 row is a format 7 row without the four trailing parts (an empty set and
        // empty maps are one byte each).
        let mut unseen = state.clone();
        unseen.workspaces.clear();
        let mut v4 = unseen.encode_core();
        v4.truncate(v4.len() - 4);
        v4[0] = CORE_FORMAT_4;
        let read = ProfileState::decode(&v4).unwrap();
        assert!(read.workspaces.is_empty());
        assert_eq!(read.attributes, state.attributes);
        assert_eq!(read.identities, state.identities);
    }

    #[test]
    fn the_core_row_keeps_each_workspaces_attributes_and_identities_and_a_format_5_row_none() {
        let mut state = full_profile();
        state.workspaces.insert("app-a".into());
        let tier = NamedAttr {
            name: "Tier".into(),
            value: AttrValue::String("gold".into()),
        };
        state
            .workspace_attributes
            .entry("app-a".into())
            .or_default()
            .insert("tier".into(), tier);
        state
            .workspace_identities
            .entry("app-a".into())
            .or_default()
            .insert("email".into(), vec!["a@example.com".into()]);
        let core = state.encode_core();
        let read = ProfileState::decode(&core).unwrap();
        assert_eq!(read.workspace_attributes, state.workspace_attributes);
        assert_eq!(read.workspace_identities, state.workspace_identities);
        assert_eq!(
            read.identities_in("app-a", "email"),
            Some(&vec!["a@example.com".to_string()])
        );
        assert_eq!(
            read.attribute_in("app-a", "tier"),
            Some(&AttrValue::String("gold".into()))
        );
        assert_eq!(read.attribute_in("app-b", "tier"), None);
        // A format 5 row is a format 7 row without the three trailing maps.
        let mut plain = state.clone();
        plain.workspace_attributes.clear();
        plain.workspace_identities.clear();
        let mut v5 = plain.encode_core();
        v5.truncate(v5.len() - 3);
        v5[0] = CORE_FORMAT_5;
        let read = ProfileState::decode(&v5).unwrap();
        assert!(read.workspace_attributes.is_empty() && read.workspace_identities.is_empty());
        assert_eq!(read.workspaces, state.workspaces);
    }

    #[test]
    fn the_core_row_keeps_each_workspaces_device_consent_location_and_attributions() {
        let mut state = full_profile();
        state.workspaces.insert("app-a".into());
        state.device.platform = Some("iOS".into());
        let mut kept = WorkspaceData::default();
        kept.device.platform = Some("Android".into());
        kept.app_version = Some("3.1".into());
        kept.consent.ccpa_data_sale_opt_out = Some(true);
        kept.location.city = Some("Lyon".into());
        kept.install_attribution = Some(Attribution {
            publisher: Some("ads".into()),
            ..Default::default()
        });
        state.workspace_data.insert("app-a".into(), kept.clone());
        let read = ProfileState::decode(&state.encode_core()).unwrap();
        assert_eq!(read.workspace_data, state.workspace_data);
        let picked = read.user_data(Some("app-a"));
        assert_eq!(picked.device.platform.as_deref(), Some("Android"));
        assert_eq!(picked.location.city.as_deref(), Some("Lyon"));
        assert_eq!(read.user_data(None).device.platform.as_deref(), Some("iOS"));
        // A workspace that set nothing holds nothing, not the profile's latest values.
        let none = read.user_data(Some("app-b"));
        assert_eq!(none.device.platform, None);
        assert!(none.install_attribution.is_none());
        // A format 6 row is a format 7 row without the trailing map of workspace data.
        let mut plain = state.clone();
        plain.workspace_data.clear();
        let mut v6 = plain.encode_core();
        v6.truncate(v6.len() - 1);
        v6[0] = CORE_FORMAT_6;
        let read = ProfileState::decode(&v6).unwrap();
        assert!(read.workspace_data.is_empty());
        assert_eq!(read.workspaces, state.workspaces);
    }
}
