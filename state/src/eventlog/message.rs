//! Messages in the log (format 2): every message that changed a profile is logged as a header
//! entry, then the entries of its events. The header holds the processing time, the message
//! time and the profile-level parts of the message that changed the profile when it was
//! applied (attributes set and removed, identities, device, app version, location,
//! attribution, consent, identity changes); its events follow as ordinary event entries.
//!
//! A part that changed nothing when it was applied is not logged: applying it again to the
//! same state would change nothing either, so the fold of the log is the same with or without
//! it, and the SDKs' habit of repeating every attribute and identity in every batch costs the
//! log nothing.
//!
//! A message stamped with an input (see [`crate::inputs`]) has the input and its workspace
//! in its header, right after the part mask, so that a scan reads them without decoding
//! the parts: the events that follow count for the criteria of that input.
//!
//! Event entries carry flags in the high bits of their kind tag: an event the engine derived
//! (an upgrade) is re-derived when the message is folded again, and an event outside the
//! real-time tier is kept for what it does to the profile (an attribute change event sets the
//! attribute whatever the tier) but read by no event criterion.

use super::decode::*;
use super::dictionary::*;
use super::encode::*;
use crate::model::{
    AttrValue, Attribution, Batch, ConsentState, DeviceInfo, Event, GeoLocation, IdentityChange,
    IdentityUpdate, Inbound, InputTag, Mpid, TimestampMs,
};
use std::borrow::Cow;

/// The parts of a message that changed the profile when it was applied, in the order the
/// profile applies them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageParts {
    /// An identity message (of the identities topic) rather than a batch.
    pub identity_message: bool,
    pub user_identities: Vec<(String, String)>,
    pub device_identities: Vec<(String, String)>,
    pub device_info: Option<DeviceInfo>,
    pub app_version: Option<String>,
    pub location: Option<GeoLocation>,
    pub attribution: Option<Attribution>,
    pub consent: Option<ConsentState>,
    pub user_attributes: Vec<(String, AttrValue)>,
    pub deleted_user_attributes: Vec<String>,
    pub identity_changes: Vec<IdentityChange>,
}

impl MessageParts {
    pub fn is_empty(&self) -> bool {
        *self
            == MessageParts {
                identity_message: self.identity_message,
                ..Default::default()
            }
    }
}

/// One event of a logged message.
#[derive(Debug, Clone)]
pub struct MessageEvent<'a> {
    /// The time the event counts from (its own, or the processing time).
    pub at: TimestampMs,
    pub event: Cow<'a, Event>,
    /// Derived by the engine (an upgrade): folding the message derives it again.
    pub derived: bool,
    /// Outside the real-time tier when it was applied: read by no event criterion.
    pub outside_tier: bool,
}

/// A message as a profile applied it: what its log keeps.
#[derive(Debug, Clone)]
pub struct LoggedMessage<'a> {
    /// Processing time.
    pub now: TimestampMs,
    /// The message's time as the profile took it (its own, or the processing time).
    pub message_time: TimestampMs,
    /// The input the message came through (borrowed from the message while streaming).
    pub input: Option<Cow<'a, InputTag>>,
    pub parts: MessageParts,
    pub events: Vec<MessageEvent<'a>>,
}

impl LoggedMessage<'_> {
    /// The message to apply again, taken apart (nothing is copied): what changed the profile,
    /// and every event but the derived.
    pub fn into_inbound(self, mpid: Mpid) -> Inbound {
        let p = self.parts;
        if p.identity_message {
            return Inbound::Identity(IdentityUpdate {
                mpid,
                timestamp_ms: Some(self.message_time),
                changes: p.identity_changes,
                input: self.input.map(Cow::into_owned),
            });
        }
        Inbound::Batch(Batch {
            mpid,
            timestamp_ms: Some(self.message_time),
            events: self
                .events
                .into_iter()
                .filter(|e| !e.derived)
                .map(|e| e.event.into_owned())
                .collect(),
            user_attributes: p.user_attributes,
            deleted_user_attributes: p.deleted_user_attributes,
            user_identities: p.user_identities,
            device_identities: p.device_identities,
            device_info: p.device_info,
            consent: p.consent,
            app_version: p.app_version,
            attribution: p.attribution,
            ip: None,
            location: p.location,
            input: self.input.map(Cow::into_owned),
        })
    }
}

const PART_USER_IDENTITIES: u64 = 1;
const PART_DEVICE_IDENTITIES: u64 = 1 << 1;
const PART_DEVICE_INFO: u64 = 1 << 2;
const PART_APP_VERSION: u64 = 1 << 3;
const PART_LOCATION: u64 = 1 << 4;
const PART_ATTRIBUTION: u64 = 1 << 5;
const PART_CONSENT: u64 = 1 << 6;
const PART_USER_ATTRIBUTES: u64 = 1 << 7;
const PART_DELETED_ATTRIBUTES: u64 = 1 << 8;
const PART_IDENTITY_CHANGES: u64 = 1 << 9;
const PART_IDENTITY_MESSAGE: u64 = 1 << 10;
const PART_INPUT: u64 = 1 << 11;

fn put_serde<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    put_bytes(
        out,
        &postcard::to_stdvec(value).expect("message parts always serialise"),
    );
}

fn put_pairs(out: &mut Vec<u8>, dict: &mut Dictionary, pairs: &[(String, String)]) {
    put_varint(out, pairs.len() as u64);
    for (kind, value) in pairs {
        put_name(out, dict, kind);
        put_bytes(out, value.as_bytes());
    }
}

/// The body of a header entry: message time (back from the processing time), the number of
/// event entries that follow, which parts are present, then each present part.
pub(super) fn encode_header(out: &mut Vec<u8>, dict: &mut Dictionary, m: &LoggedMessage<'_>) {
    let p = &m.parts;
    put_varint(out, zigzag(m.now.wrapping_sub(m.message_time)));
    put_varint(out, m.events.len() as u64);
    let present = [
        (PART_USER_IDENTITIES, !p.user_identities.is_empty()),
        (PART_DEVICE_IDENTITIES, !p.device_identities.is_empty()),
        (PART_DEVICE_INFO, p.device_info.is_some()),
        (PART_APP_VERSION, p.app_version.is_some()),
        (PART_LOCATION, p.location.is_some()),
        (PART_ATTRIBUTION, p.attribution.is_some()),
        (PART_CONSENT, p.consent.is_some()),
        (PART_USER_ATTRIBUTES, !p.user_attributes.is_empty()),
        (
            PART_DELETED_ATTRIBUTES,
            !p.deleted_user_attributes.is_empty(),
        ),
        (PART_IDENTITY_CHANGES, !p.identity_changes.is_empty()),
        (PART_IDENTITY_MESSAGE, p.identity_message),
        (PART_INPUT, m.input.is_some()),
    ];
    let mask = present
        .iter()
        .filter(|(_, on)| *on)
        .fold(0, |mask, (bit, _)| mask | bit);
    put_varint(out, mask);
    if let Some(tag) = &m.input {
        put_name(out, dict, &tag.input);
        put_name(out, dict, &tag.workspace);
    }
    if mask & PART_USER_IDENTITIES != 0 {
        put_pairs(out, dict, &p.user_identities);
    }
    if mask & PART_DEVICE_IDENTITIES != 0 {
        put_pairs(out, dict, &p.device_identities);
    }
    if let Some(device) = &p.device_info {
        put_serde(out, device);
    }
    if let Some(version) = &p.app_version {
        put_bytes(out, version.as_bytes());
    }
    if let Some(location) = &p.location {
        put_serde(out, location);
    }
    if let Some(attribution) = &p.attribution {
        put_serde(out, attribution);
    }
    if let Some(consent) = &p.consent {
        put_serde(out, consent);
    }
    if mask & PART_USER_ATTRIBUTES != 0 {
        put_varint(out, p.user_attributes.len() as u64);
        for (name, value) in &p.user_attributes {
            put_name(out, dict, name);
            put_attr_value(out, value);
        }
    }
    if mask & PART_DELETED_ATTRIBUTES != 0 {
        put_varint(out, p.deleted_user_attributes.len() as u64);
        for name in &p.deleted_user_attributes {
            put_name(out, dict, name);
        }
    }
    if mask & PART_IDENTITY_CHANGES != 0 {
        put_serde(out, &p.identity_changes);
    }
}

/// A decoded header: the message without its events (how many follow is
/// [`header_event_count`]'s).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MessageHeader {
    pub now: TimestampMs,
    pub message_time: TimestampMs,
    pub input: Option<InputTag>,
    pub parts: MessageParts,
}

fn serde_part<T: serde::de::DeserializeOwned>(c: &mut Cursor<'_>, what: &str) -> Decoded<T> {
    postcard::from_bytes(c.bytes_field()?)
        .map_err(|e| format!("event log message {what} unreadable: {e}"))
}

fn pairs(c: &mut Cursor<'_>, dict: &Dictionary) -> Decoded<Vec<(String, String)>> {
    let n = c.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        out.push((c.name(dict)?, c.text()?));
    }
    Ok(out)
}

/// The number of event entries that follow a header, read without the dictionary.
pub(super) fn header_event_count(body: &[u8]) -> Decoded<u32> {
    let mut c = Cursor::new(body);
    c.varint()?;
    u32::try_from(c.varint()?).map_err(|_| "event log message: too many events".to_string())
}

pub(super) fn decode_header(
    now: TimestampMs,
    body: &[u8],
    dict: &Dictionary,
) -> Decoded<MessageHeader> {
    let mut c = Cursor::new(body);
    let message_time = now.wrapping_sub(unzigzag(c.varint()?));
    c.varint()?; // the number of event entries that follow
    let mask = c.varint()?;
    let input = header_tag(&mut c, mask, dict)?;
    let mut p = MessageParts {
        identity_message: mask & PART_IDENTITY_MESSAGE != 0,
        ..Default::default()
    };
    if mask & PART_USER_IDENTITIES != 0 {
        p.user_identities = pairs(&mut c, dict)?;
    }
    if mask & PART_DEVICE_IDENTITIES != 0 {
        p.device_identities = pairs(&mut c, dict)?;
    }
    if mask & PART_DEVICE_INFO != 0 {
        p.device_info = Some(serde_part(&mut c, "device")?);
    }
    if mask & PART_APP_VERSION != 0 {
        p.app_version = Some(c.text()?);
    }
    if mask & PART_LOCATION != 0 {
        p.location = Some(serde_part(&mut c, "location")?);
    }
    if mask & PART_ATTRIBUTION != 0 {
        p.attribution = Some(serde_part(&mut c, "attribution")?);
    }
    if mask & PART_CONSENT != 0 {
        p.consent = Some(serde_part(&mut c, "consent")?);
    }
    if mask & PART_USER_ATTRIBUTES != 0 {
        let n = c.varint()? as usize;
        for _ in 0..n {
            let name = c.name(dict)?;
            p.user_attributes.push((name, c.attr_value()?));
        }
    }
    if mask & PART_DELETED_ATTRIBUTES != 0 {
        let n = c.varint()? as usize;
        for _ in 0..n {
            p.deleted_user_attributes.push(c.name(dict)?);
        }
    }
    if mask & PART_IDENTITY_CHANGES != 0 {
        p.identity_changes = serde_part(&mut c, "identity changes")?;
    }
    Ok(MessageHeader {
        now,
        message_time,
        input,
        parts: p,
    })
}

/// The input stamp of a header whose part mask (just read) is `mask`.
fn header_tag(c: &mut Cursor<'_>, mask: u64, dict: &Dictionary) -> Decoded<Option<InputTag>> {
    if mask & PART_INPUT == 0 {
        return Ok(None);
    }
    Ok(Some(InputTag {
        input: c.name(dict)?,
        workspace: c.name(dict)?,
    }))
}

/// The input a header's message was stamped with, read without decoding its parts.
fn header_input(body: &[u8], dict: &Dictionary) -> Decoded<Option<InputTag>> {
    let mut c = Cursor::new(body);
    c.varint()?;
    c.varint()?;
    let mask = c.varint()?;
    header_tag(&mut c, mask, dict)
}

/// Visits, in order, the events event criteria read (as [`ChunkReader::for_each_event`]),
/// each with the input its message was stamped with (`None`: unstamped, or an event logged
/// before messages were). A header's input is decoded once, for the events it counts, and
/// only `with_inputs`: a reader no scoped criterion is in passes `false`, and every event
/// comes with `None`, saving two name look-ups and an allocation per message.
pub fn for_each_stamped_event<'a>(
    body: &'a [u8],
    dict: &Dictionary,
    with_inputs: bool,
    mut visit: impl FnMut(&LoggedEvent<'a>, Option<&std::sync::Arc<InputTag>>) -> Decoded<()>,
) -> Decoded<()> {
    let mut reader = ChunkReader::new(body);
    let mut input: Option<std::sync::Arc<InputTag>> = None;
    let mut owed = 0u32;
    while let Some(entry) = reader.next_entry() {
        let entry = entry?;
        if entry.tag() == KIND_MESSAGE {
            owed = header_event_count(entry.body())?;
            input = if with_inputs {
                header_input(entry.body(), dict)?.map(std::sync::Arc::new)
            } else {
                None
            };
            continue;
        }
        if owed == 0 {
            // A format 1 event, outside any message.
            input = None;
        } else {
            owed -= 1;
        }
        if entry.tag() & FLAG_OUTSIDE_TIER == 0 {
            visit(&entry, input.as_ref())?;
        }
    }
    Ok(())
}

/// One unit of a log, in arrival order.
#[derive(Debug)]
pub enum LogUnit {
    /// A message, with its events (derived ones included, flagged).
    Message(Box<LoggedMessage<'static>>),
    /// An event logged before messages were (log format 1): what the profile's facts record
    /// already holds of it, only its event criteria still read.
    BareEvent(TimestampMs, Event),
}

/// The entries of a chunk body (or a tail) grouped into units, in order: a message (its
/// header, then the event entries it counts), or a format 1 event alone. A message never
/// spans two bodies (the tail is sealed between messages).
pub(super) fn group_units(body: &[u8]) -> Decoded<Vec<Vec<LoggedEvent<'_>>>> {
    let short = |owed: u32| format!("event log ends {owed} event(s) short of a message");
    let mut units: Vec<Vec<LoggedEvent<'_>>> = Vec::new();
    let mut owed = 0u32;
    let mut reader = ChunkReader::new(body);
    while let Some(entry) = reader.next_entry() {
        let entry = entry?;
        if entry.tag() == KIND_MESSAGE {
            if owed > 0 {
                return Err(short(owed));
            }
            owed = header_event_count(entry.body())?;
            units.push(vec![entry]);
        } else if owed > 0 {
            owed -= 1;
            units.last_mut().expect("a message is open").push(entry);
        } else {
            units.push(vec![entry]);
        }
    }
    if owed > 0 {
        return Err(short(owed));
    }
    Ok(units)
}

/// Reads a log's units in arrival order from the bodies of its chunks and its tail.
pub fn read_units<'b>(
    bodies: impl IntoIterator<Item = &'b [u8]>,
    dict: &Dictionary,
) -> Decoded<Vec<LogUnit>> {
    let mut out = Vec::new();
    for body in bodies {
        for unit in group_units(body)? {
            let (first, events) = unit.split_first().expect("a unit has an entry");
            if first.tag() != KIND_MESSAGE {
                out.push(LogUnit::BareEvent(first.at, first.decode(dict)?));
                continue;
            }
            let h = decode_header(first.at, first.body(), dict)?;
            let events = events
                .iter()
                .map(|e| {
                    Ok(MessageEvent {
                        at: e.at,
                        event: Cow::Owned(e.decode(dict)?),
                        derived: e.tag() & FLAG_DERIVED != 0,
                        outside_tier: e.tag() & FLAG_OUTSIDE_TIER != 0,
                    })
                })
                .collect::<Decoded<Vec<_>>>()?;
            out.push(LogUnit::Message(Box::new(LoggedMessage {
                now: h.now,
                message_time: h.message_time,
                input: h.input.map(Cow::Owned),
                parts: h.parts,
                events,
            })));
        }
    }
    Ok(out)
}
