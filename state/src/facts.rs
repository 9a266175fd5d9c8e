//! Profile facts: what a profile *is* (identities, user attributes, device, consent, location,
//! attributions, app versions, opt-out, first and last seen), as opposed to what it *did*
//! (events, kept in the event log) and what the engine derived from both (event series,
//! calculated attributes, memberships, timers).
//!
//! The stored facts record is a profile's **base**: its facts before the first message its
//! event log still holds. Every message that changed a profile is in its log (since log
//! format 2), so the current facts are the base with the log folded over it
//! ([`crate::replay::fold`]); when messages leave the log (retention, bounds), what they did is
//! folded into the base in the same write, so an attribute set long ago outlives the chunk
//! that set it. Facts are latest-wins values: the base is one record per profile, the way a
//! compacted changelog topic keeps the latest value per key. With the event log and the
//! membership history it is everything a profile can be rebuilt from.
//!
//! Invariants:
//! - a profile's base, with its log folded over it, gives the facts of its stored state; the
//!   base is written in the batch that drops messages from the log (and, empty, in the batch
//!   that creates the profile);
//! - a store from before log format 2 wrote the record with every change of the facts: there,
//!   it is the base of the format 2 messages that follow, its format 1 events being already
//!   in it;
//! - the encoding is positional (postcard): fields are only ever appended, after a format byte.

use crate::model::{Attribution, ConsentState, DeviceInfo, GeoLocation, Mpid, TimestampMs};
use crate::profile::{NamedAttr, ProfileState, WorkspaceData};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Version byte of the facts record (2: format 1's fields, then the workspaces the profile
/// was seen in; 3: then the attributes and identities each workspace's inputs brought; 4: then
/// each workspace's device, consent, location and attributions).
pub const FACTS_FORMAT: u8 = 4;
const FACTS_FORMAT_3: u8 = 3;
const FACTS_FORMAT_2: u8 = 2;
const FACTS_FORMAT_1: u8 = 1;

/// The facts of one profile, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileFacts {
    pub first_seen_ms: TimestampMs,
    pub last_seen_ms: TimestampMs,
    pub identities: BTreeMap<String, Vec<String>>,
    pub attributes: BTreeMap<String, NamedAttr>,
    pub device: DeviceInfo,
    pub consent: ConsentState,
    pub app_version: Option<String>,
    pub highest_app_version: Option<String>,
    pub opted_out: bool,
    pub location: GeoLocation,
    pub install_attribution: Option<Attribution>,
    pub uninstall_attribution: Option<Attribution>,
    /// Format 2, written after the fields above (see [`ProfileFacts::encode`]).
    #[serde(skip)]
    pub workspaces: BTreeSet<String>,
    /// Format 3, after the workspaces.
    #[serde(skip)]
    pub workspace_attributes: WorkspaceAttributes,
    #[serde(skip)]
    pub workspace_identities: WorkspaceIdentities,
    /// Format 4, after the attributes and identities.
    #[serde(skip)]
    pub workspace_data: BTreeMap<String, WorkspaceData>,
}

type WorkspaceAttributes = BTreeMap<String, BTreeMap<String, NamedAttr>>;
type WorkspaceIdentities = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// What format 3 appends: each workspace's attributes and identities.
#[derive(Serialize)]
struct PerWorkspace<'a> {
    attributes: &'a WorkspaceAttributes,
    identities: &'a WorkspaceIdentities,
}

#[derive(Deserialize)]
struct PerWorkspaceOwned {
    attributes: WorkspaceAttributes,
    identities: WorkspaceIdentities,
}

/// The same fields, borrowed from a profile: encoding a profile's facts copies nothing.
#[derive(Serialize)]
struct FactsRef<'a> {
    first_seen_ms: TimestampMs,
    last_seen_ms: TimestampMs,
    identities: &'a BTreeMap<String, Vec<String>>,
    attributes: &'a BTreeMap<String, NamedAttr>,
    device: &'a DeviceInfo,
    consent: &'a ConsentState,
    app_version: &'a Option<String>,
    highest_app_version: &'a Option<String>,
    opted_out: bool,
    location: &'a GeoLocation,
    install_attribution: &'a Option<Attribution>,
    uninstall_attribution: &'a Option<Attribution>,
}

/// The facts record of a profile: format byte, then the fields.
pub fn encode_facts(p: &ProfileState) -> Vec<u8> {
    let facts = FactsRef {
        first_seen_ms: p.first_seen_ms,
        last_seen_ms: p.last_seen_ms,
        identities: &p.identities,
        attributes: &p.attributes,
        device: &p.device,
        consent: &p.consent,
        app_version: &p.app_version,
        highest_app_version: &p.highest_app_version,
        opted_out: p.opted_out,
        location: &p.location,
        install_attribution: &p.install_attribution,
        uninstall_attribution: &p.uninstall_attribution,
    };
    framed(
        &facts,
        &p.workspaces,
        PerWorkspace {
            attributes: &p.workspace_attributes,
            identities: &p.workspace_identities,
        },
        &p.workspace_data,
    )
}

/// A facts record: the format byte, the format 1 fields, the workspaces, then what each
/// holds.
fn framed(
    facts: &impl Serialize,
    workspaces: &BTreeSet<String>,
    per_workspace: PerWorkspace<'_>,
    data: &BTreeMap<String, WorkspaceData>,
) -> Vec<u8> {
    let out =
        postcard::to_extend(facts, vec![FACTS_FORMAT]).expect("profile facts always serialise");
    let out = postcard::to_extend(workspaces, out).expect("profile facts always serialise");
    let out = postcard::to_extend(&per_workspace, out).expect("profile facts always serialise");
    postcard::to_extend(data, out).expect("profile facts always serialise")
}

impl ProfileFacts {
    /// The facts of a profile.
    pub fn of(p: &ProfileState) -> Self {
        ProfileFacts {
            first_seen_ms: p.first_seen_ms,
            last_seen_ms: p.last_seen_ms,
            identities: p.identities.clone(),
            attributes: p.attributes.clone(),
            device: p.device.clone(),
            consent: p.consent.clone(),
            app_version: p.app_version.clone(),
            highest_app_version: p.highest_app_version.clone(),
            opted_out: p.opted_out,
            location: p.location.clone(),
            install_attribution: p.install_attribution.clone(),
            uninstall_attribution: p.uninstall_attribution.clone(),
            workspaces: p.workspaces.clone(),
            workspace_attributes: p.workspace_attributes.clone(),
            workspace_identities: p.workspace_identities.clone(),
            workspace_data: p.workspace_data.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        framed(
            self,
            &self.workspaces,
            PerWorkspace {
                attributes: &self.workspace_attributes,
                identities: &self.workspace_identities,
            },
            &self.workspace_data,
        )
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&format @ (FACTS_FORMAT | FACTS_FORMAT_3 | FACTS_FORMAT_2), rest)) => {
                let (mut facts, rest) =
                    postcard::take_from_bytes::<ProfileFacts>(rest).map_err(|e| e.to_string())?;
                let (workspaces, rest) =
                    postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
                facts.workspaces = workspaces;
                if format >= FACTS_FORMAT_3 {
                    let (per_workspace, rest): (PerWorkspaceOwned, _) =
                        postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
                    facts.workspace_attributes = per_workspace.attributes;
                    facts.workspace_identities = per_workspace.identities;
                    if format == FACTS_FORMAT {
                        facts.workspace_data =
                            postcard::from_bytes(rest).map_err(|e| e.to_string())?;
                    }
                }
                Ok(facts)
            }
            Some((&FACTS_FORMAT_1, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown profile facts format {v}")),
            None => Err("empty profile facts record".to_string()),
        }
    }

    /// A profile holding these facts and nothing derived yet.
    pub fn into_profile(self, mpid: Mpid) -> ProfileState {
        ProfileState {
            mpid,
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            identities: self.identities,
            attributes: self.attributes,
            device: self.device,
            consent: self.consent,
            app_version: self.app_version,
            opted_out: self.opted_out,
            location: self.location,
            install_attribution: self.install_attribution,
            uninstall_attribution: self.uninstall_attribution,
            highest_app_version: self.highest_app_version,
            workspaces: self.workspaces,
            workspace_attributes: self.workspace_attributes,
            workspace_identities: self.workspace_identities,
            workspace_data: self.workspace_data,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttrValue;

    #[test]
    fn facts_round_trip_through_a_profile_and_leave_derived_state_out() {
        let mut p = ProfileState::new(7);
        p.first_seen_ms = 5;
        p.last_seen_ms = 9;
        p.identities.insert("email".into(), vec!["a@b.c".into()]);
        p.attributes.insert(
            "tier".into(),
            NamedAttr {
                name: "Tier".into(),
                value: AttrValue::String("gold".into()),
            },
        );
        p.opted_out = true;
        p.app_version = Some("2.1".into());
        p.location.city = Some("Paris".into());
        p.due.insert(3, 100);
        p.workspaces.insert("app-a".into());
        p.workspace_attributes
            .entry("app-a".into())
            .or_default()
            .insert("tier".into(), p.attributes["tier"].clone());
        p.workspace_identities
            .entry("app-a".into())
            .or_default()
            .insert("email".into(), vec!["a@b.c".into()]);
        let mut kept = WorkspaceData::default();
        kept.consent.ccpa_data_sale_opt_out = Some(false);
        kept.location.country = Some("FR".into());
        p.workspace_data.insert("app-a".into(), kept);
        let bytes = encode_facts(&p);
        let facts = ProfileFacts::decode(&bytes).unwrap();
        let rebuilt = facts.clone().into_profile(7);
        assert_eq!(encode_facts(&rebuilt), bytes);
        assert!(rebuilt.due.is_empty(), "timers are derived, not facts");
        assert_eq!(rebuilt.attribute("tier"), p.attribute("tier"));
        assert_eq!(rebuilt.workspaces, p.workspaces);
        assert_eq!(rebuilt.workspace_attributes, p.workspace_attributes);
        assert_eq!(rebuilt.workspace_identities, p.workspace_identities);
        assert_eq!(rebuilt.workspace_data, p.workspace_data);
        // Format 3: the same fields without the workspaces' other data (an empty map is one
        // byte); format 2: without their attributes and identities either; format 1: without
        // the workspaces either.
        let mut plain = facts.clone();
        plain.workspace_data.clear();
        let mut v3 = plain.encode();
        v3.truncate(v3.len() - 1);
        v3[0] = FACTS_FORMAT_3;
        assert_eq!(ProfileFacts::decode(&v3).unwrap(), plain);
        plain.workspace_attributes.clear();
        plain.workspace_identities.clear();
        let mut v2 = plain.encode();
        v2.truncate(v2.len() - 3);
        v2[0] = FACTS_FORMAT_2;
        assert_eq!(ProfileFacts::decode(&v2).unwrap(), plain);
        let mut unseen = plain.clone();
        unseen.workspaces.clear();
        let mut v1 = unseen.encode();
        v1.truncate(v1.len() - 4);
        v1[0] = FACTS_FORMAT_1;
        assert_eq!(ProfileFacts::decode(&v1).unwrap(), unseen);
        assert!(ProfileFacts::decode(&[9, 1]).is_err());
        assert!(ProfileFacts::decode(&[]).is_err());
    }
}
