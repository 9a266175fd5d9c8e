//! A profile's two stored rows, written field by field into one buffer.
//!
//! The bytes are exactly postcard's for the row structs of [`super::state`] (`CoreRef`,
//! `DerivedRef`, and the workspace parts after the core): the readers stay postcard's, and
//! a property test compares both writers on arbitrary profiles. Written by hand because every
//! batch rewrites its profile: through serde, each varint of the memberships, timers and
//! series went through a generic serializer and a small copy, a quarter of the CPU of an event
//! (`audience-cpu-bench`). Calculated attributes, rarely large, still go through postcard.
//!
//! postcard's encoding, as used here: unsigned integers are LEB128 varints, signed ones zigzag
//! then varint, `f64` its 8 little-endian bytes, `bool` one byte, `Option` a byte 0 or 1 then
//! the value, strings and byte strings their length then their bytes, maps and sequences
//! their length then their entries, an enum its variant's index then its content, a struct its
//! fields in order.

use super::state::{
    is_derived_series, NamedAttr, ProfileState, WorkspaceData, CORE_FORMAT, DERIVED_FORMAT,
};
use crate::history::EventSeries;
use crate::model::{AttrValue, Attribution, ConsentState, DeviceInfo, GeoLocation};
use crate::varint::{put_varint, zigzag};
use std::collections::BTreeMap;

/// The buffer [`ProfileState::encode_core`] starts with: a profile with a few attributes,
/// identities, consent, device information and the series of a month of events fits.
const CORE_CAPACITY: usize = 2048;

/// The buffer [`ProfileState::encode_derived`] starts with: a few memberships and series.
const DERIVED_CAPACITY: usize = 256;

impl ProfileState {
    /// The stored core row (format 7): what messages set (see [`ProfileState::encode_derived`]
    /// for the rest).
    pub fn encode_core(&self) -> Vec<u8> {
        let mut w = RowWriter::with_format(CORE_FORMAT, CORE_CAPACITY);
        w.signed(self.mpid);
        w.signed(self.first_seen_ms);
        w.signed(self.last_seen_ms);
        w.identities(&self.identities);
        w.attributes(&self.attributes);
        w.device(&self.device);
        w.consent(&self.consent);
        w.option_str(self.app_version.as_deref());
        w.bool(self.opted_out);
        w.series_of(&self.history, false);
        w.location(&self.location);
        w.attribution(self.install_attribution.as_ref());
        w.attribution(self.uninstall_attribution.as_ref());
        w.option_str(self.highest_app_version.as_deref());
        // Format 5 is format 4's fields, then the workspaces; format 6 adds the workspaces'
        // attributes and identities; format 7 their other data.
        w.len(self.workspaces.len());
        for workspace in &self.workspaces {
            w.str(workspace);
        }
        w.len(self.workspace_attributes.len());
        for (workspace, attributes) in &self.workspace_attributes {
            w.str(workspace);
            w.attributes(attributes);
        }
        w.len(self.workspace_identities.len());
        for (workspace, identities) in &self.workspace_identities {
            w.str(workspace);
            w.identities(identities);
        }
        w.len(self.workspace_data.len());
        for (workspace, data) in &self.workspace_data {
            w.str(workspace);
            w.workspace_data(data);
        }
        w.out
    }

    /// The stored derived row: what the catalog's definitions derive from the profile's
    /// inputs (the series of event criteria with conditions, calculated attributes,
    /// memberships and their timers). A backfill changes only these, and writes only this
    /// row: the core is most of a profile's bytes.
    pub fn encode_derived(&self) -> Vec<u8> {
        let mut w = RowWriter::with_format(DERIVED_FORMAT, DERIVED_CAPACITY);
        w.series_of(&self.history, true);
        w.bytes_with(|out| super::derived::pack_memberships(out, &self.memberships));
        w.bytes_with(|out| super::derived::pack_due(out, &self.due));
        w.out = postcard::to_extend(&self.calculated, w.out)
            .expect("calculated attributes always serialise");
        w.out
    }
}

/// Appends postcard's bytes of each value to one buffer.
struct RowWriter {
    out: Vec<u8>,
}

impl RowWriter {
    fn with_format(format: u8, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(format);
        RowWriter { out }
    }

    #[inline]
    fn unsigned(&mut self, v: u64) {
        put_varint(&mut self.out, v);
    }

    #[inline]
    fn signed(&mut self, v: i64) {
        put_varint(&mut self.out, zigzag(v));
    }

    #[inline]
    fn len(&mut self, n: usize) {
        put_varint(&mut self.out, n as u64);
    }

    #[inline]
    fn bool(&mut self, v: bool) {
        self.out.push(v as u8);
    }

    fn f64(&mut self, v: f64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn option_str(&mut self, s: Option<&str>) {
        self.bool(s.is_some());
        if let Some(s) = s {
            self.str(s);
        }
    }

    fn strings(&mut self, values: &[String]) {
        self.len(values.len());
        for v in values {
            self.str(v);
        }
    }

    /// A byte string whose bytes `fill` appends: its length goes before them, moved in once
    /// they are written (a series is short; no buffer of its own).
    fn bytes_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.out.len();
        fill(&mut self.out);
        let len = (self.out.len() - start) as u64;
        if len < 0x80 {
            self.out.insert(start, len as u8);
        } else {
            let mut prefix = Vec::with_capacity(10);
            put_varint(&mut prefix, len);
            self.out.splice(start..start, prefix);
        }
    }

    /// The series one row holds: the event keys' (core) or the matchers' (derived).
    fn series_of(&mut self, history: &BTreeMap<String, EventSeries>, derived: bool) {
        let held = |key: &String| is_derived_series(key) == derived;
        self.len(history.keys().filter(|k| held(k)).count());
        for (key, series) in history.iter().filter(|(k, _)| held(k)) {
            self.str(key);
            self.bytes_with(|out| series.pack_into(out));
        }
    }

    fn identities(&mut self, identities: &BTreeMap<String, Vec<String>>) {
        self.len(identities.len());
        for (kind, values) in identities {
            self.str(kind);
            self.strings(values);
        }
    }

    fn attributes(&mut self, attributes: &BTreeMap<String, NamedAttr>) {
        self.len(attributes.len());
        for (key, attribute) in attributes {
            self.str(key);
            self.str(&attribute.name);
            self.attr_value(&attribute.value);
        }
    }

    /// The variant's index in declaration order, then its content.
    fn attr_value(&mut self, value: &AttrValue) {
        match value {
            AttrValue::String(s) => {
                self.unsigned(0);
                self.str(s);
            }
            AttrValue::Number(n) => {
                self.unsigned(1);
                self.f64(*n);
            }
            AttrValue::Bool(b) => {
                self.unsigned(2);
                self.bool(*b);
            }
            AttrValue::Date(t) => {
                self.unsigned(3);
                self.signed(*t);
            }
            AttrValue::List(values) => {
                self.unsigned(4);
                self.strings(values);
            }
            AttrValue::Null => self.unsigned(5),
        }
    }

    fn device(&mut self, d: &DeviceInfo) {
        for field in [
            &d.platform,
            &d.os_version,
            &d.device_model,
            &d.device_manufacturer,
            &d.network_carrier,
            &d.brand,
            &d.locale_country,
            &d.locale_language,
        ] {
            self.option_str(field.as_deref());
        }
    }

    fn consent(&mut self, c: &ConsentState) {
        self.len(c.gdpr.len());
        for (purpose, consent) in &c.gdpr {
            self.str(purpose);
            self.bool(consent.consented);
            self.bool(consent.timestamp_ms.is_some());
            if let Some(t) = consent.timestamp_ms {
                self.signed(t);
            }
            self.option_str(consent.document.as_deref());
        }
        self.bool(c.ccpa_data_sale_opt_out.is_some());
        if let Some(opt_out) = c.ccpa_data_sale_opt_out {
            self.bool(opt_out);
        }
    }

    fn location(&mut self, l: &GeoLocation) {
        for field in [&l.city, &l.state, &l.zip, &l.dma, &l.country] {
            self.option_str(field.as_deref());
        }
        for field in [l.latitude, l.longitude] {
            self.bool(field.is_some());
            if let Some(v) = field {
                self.f64(v);
            }
        }
    }

    fn attribution(&mut self, a: Option<&Attribution>) {
        self.bool(a.is_some());
        if let Some(a) = a {
            for field in [&a.publisher, &a.campaign, &a.service_provider] {
                self.option_str(field.as_deref());
            }
        }
    }

    fn workspace_data(&mut self, d: &WorkspaceData) {
        self.signed(d.first_seen_ms);
        self.signed(d.last_seen_ms);
        self.device(&d.device);
        self.option_str(d.app_version.as_deref());
        self.consent(&d.consent);
        self.location(&d.location);
        self.attribution(d.install_attribution.as_ref());
        self.attribution(d.uninstall_attribution.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::CalcState;
    use crate::model::{GdprConsent, DAY_MS};
    use proptest::collection::{btree_map, btree_set, vec};
    use proptest::option::of;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Mostly short, sometimes past 127 bytes (a two-byte length).
        prop_oneof![4 => "[a-zé:_ ]{0,6}", 1 => "[a-z]{120,140}"]
    }

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            text().prop_map(AttrValue::String),
            (-1e12f64..1e12).prop_map(AttrValue::Number),
            any::<bool>().prop_map(AttrValue::Bool),
            any::<i64>().prop_map(AttrValue::Date),
            vec(text(), 0..3).prop_map(AttrValue::List),
            Just(AttrValue::Null),
        ]
    }

    fn attributes() -> impl Strategy<Value = BTreeMap<String, NamedAttr>> {
        btree_map(text(), (text(), attr_value()), 0..4).prop_map(|m| {
            m.into_iter()
                .map(|(k, (name, value))| (k, NamedAttr { name, value }))
                .collect()
        })
    }

    fn identities() -> impl Strategy<Value = BTreeMap<String, Vec<String>>> {
        btree_map(text(), vec(text(), 0..3), 0..3)
    }

    fn device() -> impl Strategy<Value = DeviceInfo> {
        vec(of(text()), 8).prop_map(|mut f| DeviceInfo {
            locale_language: f.pop().unwrap(),
            locale_country: f.pop().unwrap(),
            brand: f.pop().unwrap(),
            network_carrier: f.pop().unwrap(),
            device_manufacturer: f.pop().unwrap(),
            device_model: f.pop().unwrap(),
            os_version: f.pop().unwrap(),
            platform: f.pop().unwrap(),
        })
    }

    fn consent() -> impl Strategy<Value = ConsentState> {
        (
            btree_map(text(), (any::<bool>(), of(any::<i64>()), of(text())), 0..3),
            of(any::<bool>()),
        )
            .prop_map(|(gdpr, ccpa)| ConsentState {
                gdpr: gdpr
                    .into_iter()
                    .map(|(purpose, (consented, timestamp_ms, document))| {
                        let consent = GdprConsent {
                            consented,
                            timestamp_ms,
                            document,
                        };
                        (purpose, consent)
                    })
                    .collect(),
                ccpa_data_sale_opt_out: ccpa,
            })
    }

    fn location() -> impl Strategy<Value = GeoLocation> {
        (vec(of(text()), 5), of(-90f64..90.0), of(-180f64..180.0)).prop_map(|(mut f, la, lo)| {
            GeoLocation {
                country: f.pop().unwrap(),
                dma: f.pop().unwrap(),
                zip: f.pop().unwrap(),
                state: f.pop().unwrap(),
                city: f.pop().unwrap(),
                latitude: la,
                longitude: lo,
            }
        })
    }

    fn attribution() -> impl Strategy<Value = Option<Attribution>> {
        of((of(text()), of(text()), of(text()))).prop_map(|a| {
            a.map(|(publisher, campaign, service_provider)| Attribution {
                publisher,
                campaign,
                service_provider,
            })
        })
    }

    fn workspace_data() -> impl Strategy<Value = WorkspaceData> {
        (
            any::<i64>(),
            any::<i64>(),
            device(),
            of(text()),
            consent(),
            location(),
            attribution(),
            attribution(),
        )
            .prop_map(
                |(first, last, device, app, consent, location, install, uninstall)| WorkspaceData {
                    first_seen_ms: first,
                    last_seen_ms: last,
                    device,
                    app_version: app,
                    consent,
                    location,
                    install_attribution: install,
                    uninstall_attribution: uninstall,
                },
            )
    }

    /// Event keys and matcher keys (the two rows split them), each with a series of up to 60
    /// occurrences (past 127 packed bytes now and then).
    fn history() -> impl Strategy<Value = BTreeMap<String, EventSeries>> {
        btree_map(
            prop_oneof!["custom_event:[a-z]{1,5}", "m:[0-9]{1,4}"],
            vec(-3 * DAY_MS..40 * DAY_MS, 1..60),
            0..5,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(key, times)| {
                    let mut series = EventSeries::default();
                    for t in times {
                        series.record(t);
                    }
                    (key, series)
                })
                .collect()
        })
    }

    fn profile() -> impl Strategy<Value = ProfileState> {
        let facts = (
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            identities(),
            attributes(),
            device(),
            consent(),
            of(text()),
            any::<bool>(),
            location(),
            (attribution(), attribution(), of(text())),
        );
        let derived = (
            history(),
            btree_map(
                any::<u64>(),
                (any::<bool>(), any::<u64>(), any::<i64>()),
                0..6,
            ),
            btree_map(any::<u64>(), any::<i64>(), 0..6),
            btree_map(text(), any::<u64>(), 0..2),
        );
        let workspaces = (
            btree_set(text(), 0..3),
            btree_map(text(), attributes(), 0..2),
            btree_map(text(), identities(), 0..2),
            btree_map(text(), workspace_data(), 0..2),
        );
        (facts, derived, workspaces).prop_map(|(f, d, w)| {
            let (mpid, first, last, identities, attributes, device, consent, app, opted_out) =
                (f.0, f.1, f.2, f.3, f.4, f.5, f.6, f.7, f.8);
            let (location, (install, uninstall, highest)) = (f.9, f.10);
            ProfileState {
                mpid,
                first_seen_ms: first,
                last_seen_ms: last,
                identities,
                attributes,
                device,
                consent,
                app_version: app,
                opted_out,
                history: d.0,
                memberships: d
                    .1
                    .into_iter()
                    .map(|(id, (member, version, changed_at_ms))| {
                        let record = crate::profile::MemberRecord {
                            member,
                            version,
                            changed_at_ms,
                        };
                        (id, record)
                    })
                    .collect(),
                due: d.2,
                location,
                install_attribution: install,
                uninstall_attribution: uninstall,
                calculated: d
                    .3
                    .into_iter()
                    .map(|(name, revision)| {
                        let state = CalcState {
                            revision,
                            ..CalcState::default()
                        };
                        (name, state)
                    })
                    .collect(),
                highest_app_version: highest,
                workspaces: w.0,
                workspace_attributes: w.1,
                workspace_identities: w.2,
                workspace_data: w.3,
            }
        })
    }

    /// Rows written before (derived format 1: every id and instant whole) still read.
    #[test]
    fn a_derived_row_of_format_1_still_reads() {
        use crate::aggregate::CalcState;
        let record = |member, version, changed_at_ms| super::super::derived::MemberRecord {
            member,
            version,
            changed_at_ms,
        };
        // Ten memberships a message changed together, and their timers a week later.
        let at = 1_796_374_800_000;
        let ids = (0..10u64).map(|i| 3 + 7 * i);
        let memberships: BTreeMap<_, _> = ids
            .clone()
            .map(|id| (id, record(id % 2 == 1, id, at)))
            .collect();
        let due: BTreeMap<_, _> = ids.map(|id| (id, at + 7 * DAY_MS)).collect();
        let history: BTreeMap<String, EventSeries> = BTreeMap::new();
        let calculated: BTreeMap<String, CalcState> = BTreeMap::new();
        let mut row = vec![1u8];
        row.extend(postcard::to_allocvec(&(&history, &memberships, &due, &calculated)).unwrap());
        let mut profile = ProfileState::new(1);
        profile.set_derived(ProfileState::decode_derived(&row).unwrap());
        assert_eq!(profile.memberships, memberships);
        assert_eq!(profile.due, due);
        let written = profile.encode_derived();
        assert_eq!(written[0], 2, "written in the packed format");
        assert!(
            written.len() < row.len(),
            "{} bytes against {}",
            written.len(),
            row.len()
        );
        let mut back = ProfileState::new(1);
        back.set_derived(ProfileState::decode_derived(&written).unwrap());
        assert_eq!((back.memberships, back.due), (memberships, due));
    }

    proptest! {
        /// The hand-written rows are postcard's bytes, so postcard's readers (and every row
        /// written before) keep reading them; and they read back as the profile.
        #[test]
        fn both_rows_are_postcards_bytes_and_read_back_as_the_profile(profile in profile()) {
            let core = profile.encode_core();
            let derived = profile.encode_derived();
            prop_assert_eq!(&core, &profile.encode_core_by_postcard());
            prop_assert_eq!(&derived, &profile.encode_derived_by_postcard());
            let mut read = ProfileState::decode(&core).unwrap();
            read.set_derived(ProfileState::decode_derived(&derived).unwrap());
            prop_assert_eq!(read, profile);
        }
    }
}
