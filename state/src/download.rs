//! Audience downloads: what a download's ZIP holds. One CSV file per audience or A/B test
//! variation, a row per identity of each member (`mpid,scanned_timestamp_ms,identity_value,
//! identity_type`), and `manifest.json` describing the files with the seed's field names.
//!
//! Pure: names, rows, the manifest's figures and the sample's choice; the services write the
//! files.
//!
//! Invariants:
//! - a file's figures are those of the rows written to it (a member without any of the
//!   identity types chosen has no row, and is not counted among its users);
//! - a sample keeps at most its size of users per file, each member equally likely
//!   (reservoir sampling), whatever the audience's size, in bounded memory.

use crate::criteria::DefinitionError;
use crate::model::{Mpid, TimestampMs};
use serde::Serialize;
use std::collections::BTreeMap;

/// The first line of every CSV file.
pub const CSV_HEADER: &str = "mpid,scanned_timestamp_ms,identity_value,identity_type\n";
/// The largest sample, in users per file: a sample is held in memory until it is written.
pub const MAX_SAMPLE_USERS: u32 = 100_000;
/// The most identity types one download includes.
pub const MAX_IDENTITY_TYPES: usize = 32;
/// The most files (audiences and variations) one download writes.
pub const MAX_FILES: usize = 100;

/// The identity types a caller chose, lowercased, in the order given, without repeats;
/// refused when empty or when a name is not an identity type's shape.
pub fn identity_types(chosen: &[String]) -> Result<Vec<String>, DefinitionError> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in chosen.iter().enumerate() {
        let name = name.trim().to_lowercase();
        let shaped = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !shaped {
            return Err(DefinitionError::new(
                format!("identity_types[{i}]"),
                format!("{name:?} is not an identity type (such as email, customer_id, ios_idfv)"),
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(DefinitionError::new(
            "identity_types",
            "choose at least one identity type: each row is one identity of a member",
        ));
    }
    if out.len() > MAX_IDENTITY_TYPES {
        return Err(DefinitionError::new(
            "identity_types",
            format!("{} types: at most {MAX_IDENTITY_TYPES}", out.len()),
        ));
    }
    Ok(out)
}

/// The rows of one member: an identity value of each chosen type, in the types' order.
pub fn member_rows(
    mpid: Mpid,
    scanned_ms: TimestampMs,
    identities: &BTreeMap<String, Vec<String>>,
    types: &[String],
    out: &mut String,
) -> Vec<(String, usize)> {
    let mut written = Vec::new();
    for t in types {
        let Some(values) = identities.get(t) else {
            continue;
        };
        for value in values {
            out.push_str(&mpid.to_string());
            out.push(',');
            out.push_str(&scanned_ms.to_string());
            out.push(',');
            push_csv_field(out, value);
            out.push(',');
            push_csv_field(out, t);
            out.push('\n');
        }
        if !values.is_empty() {
            written.push((t.clone(), values.len()));
        }
    }
    written
}

/// A CSV field, quoted (with inner quotes doubled) when it holds a comma, a quote or a line
/// break, or starts or ends with a space (RFC 4180).
fn push_csv_field(out: &mut String, value: &str) {
    let quoted =
        value.contains([',', '"', '\n', '\r']) || value.starts_with(' ') || value.ends_with(' ');
    if quoted {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// A file's entry in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FileManifest {
    pub file_name: String,
    pub audience_id: u64,
    /// The A/B test variation, for a variation's file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variation: Option<String>,
    /// The earliest and latest `scanned_timestamp_ms` of its rows (absent without rows).
    pub min_timestamp_ms: Option<TimestampMs>,
    pub max_timestamp_ms: Option<TimestampMs>,
    pub total_users: u64,
    pub total_rows: u64,
    pub rows_by_identity: BTreeMap<String, u64>,
}

impl FileManifest {
    /// Counts one member's rows (as [`member_rows`] returned them), read at `scanned_ms`.
    pub fn count(&mut self, rows: &[(String, usize)], scanned_ms: TimestampMs) {
        if rows.is_empty() {
            return;
        }
        self.total_users += 1;
        for (t, n) in rows {
            *self.rows_by_identity.entry(t.clone()).or_default() += *n as u64;
            self.total_rows += *n as u64;
        }
        self.min_timestamp_ms = Some(
            self.min_timestamp_ms
                .map_or(scanned_ms, |m| m.min(scanned_ms)),
        );
        self.max_timestamp_ms = Some(
            self.max_timestamp_ms
                .map_or(scanned_ms, |m| m.max(scanned_ms)),
        );
    }
}

/// `manifest.json`, with the seed's field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Manifest {
    pub archive_name: String,
    pub id: String,
    pub audience_ids: Vec<u64>,
    pub included_identities: Vec<String>,
    /// RFC 3339, UTC, with milliseconds.
    pub manifest_generated: String,
    pub min_timestamp_ms: Option<TimestampMs>,
    pub max_timestamp_ms: Option<TimestampMs>,
    pub total_rows: u64,
    pub rows_by_identity: BTreeMap<String, u64>,
    /// Whether the files hold a sample, and of how many users per file at most.
    pub sample: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<u32>,
    pub files: Vec<FileManifest>,
}

impl Manifest {
    /// The manifest of `files`, its totals summed from theirs.
    pub fn of(
        archive_name: String,
        id: String,
        included_identities: Vec<String>,
        generated_ms: TimestampMs,
        sample_size: Option<u32>,
        files: Vec<FileManifest>,
    ) -> Manifest {
        let mut audience_ids: Vec<u64> = files.iter().map(|f| f.audience_id).collect();
        audience_ids.dedup();
        let mut rows_by_identity = BTreeMap::new();
        for f in &files {
            for (t, n) in &f.rows_by_identity {
                *rows_by_identity.entry(t.clone()).or_default() += n;
            }
        }
        Manifest {
            archive_name,
            id,
            audience_ids,
            included_identities,
            manifest_generated: rfc3339_millis(generated_ms),
            min_timestamp_ms: files.iter().filter_map(|f| f.min_timestamp_ms).min(),
            max_timestamp_ms: files.iter().filter_map(|f| f.max_timestamp_ms).max(),
            total_rows: files.iter().map(|f| f.total_rows).sum(),
            rows_by_identity,
            sample: sample_size.is_some(),
            sample_size,
            files,
        }
    }
}

fn rfc3339_millis(ms: TimestampMs) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A download's id: 128 random bits as a UUID (version 4).
pub fn download_id(random: u128) -> String {
    let v = (random & !(0xf_u128 << 76) | (0x4_u128 << 76)) & !(0x3_u128 << 62) | (0x2_u128 << 62);
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The archive's name, as the seed's: `Audiences_<HHMMSS><Mon><DD><YYYY>_<first 4 of the id>.zip`.
pub fn archive_name(id: &str, generated_ms: TimestampMs) -> String {
    let when = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(generated_ms)
        .map(|t| t.format("%H%M%S%b%d%Y").to_string())
        .unwrap_or_else(|| generated_ms.to_string());
    format!("Audiences_{when}_{}.zip", &id[..4.min(id.len())])
}

/// A file's name in the archive: the audience's id and downstream name (with the variation's
/// for a variation), reduced to characters every file system takes.
pub fn file_name(audience_id: u64, name: &str, variation: Option<&str>) -> String {
    let full = match variation {
        Some(v) => format!("{audience_id}_{name} - {v}"),
        None => format!("{audience_id}_{name}"),
    };
    let safe: String = full
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | ' ' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .take(120)
        .collect();
    format!("{}.csv", safe.trim())
}

/// A uniform sample of at most `capacity` items of a stream of unknown length (Algorithm R):
/// each item offered is kept with the same probability.
#[derive(Debug, Clone)]
pub struct Reservoir<T> {
    capacity: usize,
    seen: u64,
    items: Vec<T>,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize) -> Reservoir<T> {
        Reservoir {
            capacity,
            seen: 0,
            items: Vec::new(),
        }
    }

    /// Offers an item; `random` is a uniform random number (the caller's generator).
    pub fn offer(&mut self, item: T, random: u64) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
        } else {
            let slot = random % self.seen;
            if (slot as usize) < self.capacity {
                self.items[slot as usize] = item;
            }
        }
    }

    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_one_per_identity_and_quoted_when_they_must_be() {
        let identities: BTreeMap<String, Vec<String>> = [
            (
                "email".to_string(),
                vec!["a@example.com".to_string(), "b,c@example.com".to_string()],
            ),
            ("customer_id".to_string(), vec!["say \"hi\"".to_string()]),
            ("ios_idfv".to_string(), vec!["X".to_string()]),
        ]
        .into();
        let mut out = String::new();
        let types = vec!["email".to_string(), "customer_id".to_string()];
        let rows = member_rows(-5, 1_700, &identities, &types, &mut out);
        assert_eq!(
            out,
            "-5,1700,a@example.com,email\n-5,1700,\"b,c@example.com\",email\n\
             -5,1700,\"say \"\"hi\"\"\",customer_id\n"
        );
        assert_eq!(rows, vec![("email".into(), 2), ("customer_id".into(), 1)]);
        let mut file = FileManifest::default();
        file.count(&rows, 1_700);
        file.count(&[], 1_600);
        file.count(&[("email".into(), 1)], 1_800);
        assert_eq!(file.total_users, 2);
        assert_eq!(file.total_rows, 4);
        assert_eq!(file.rows_by_identity["email"], 3);
        assert_eq!(
            (file.min_timestamp_ms, file.max_timestamp_ms),
            (Some(1_700), Some(1_800))
        );
    }

    #[test]
    fn identity_types_are_checked_and_lowercased() {
        let chosen = vec![
            "Email".to_string(),
            "customer_id".to_string(),
            "email".to_string(),
        ];
        assert_eq!(
            identity_types(&chosen).unwrap(),
            vec!["email", "customer_id"]
        );
        assert_eq!(identity_types(&[]).unwrap_err().field, "identity_types");
        let bad = identity_types(&["email".into(), "e mail".into()]).unwrap_err();
        assert_eq!(bad.field, "identity_types[1]");
    }

    #[test]
    fn the_manifest_sums_its_files_and_names_like_the_seed() {
        let id = download_id(0x9dd9_b6dc_f0ec_4acf_8b18_f3a3_5767_3d00);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let name = archive_name(&id, 1_546_463_180_021);
        assert_eq!(name, "Audiences_210620Jan022019_9dd9.zip");
        let mut a = FileManifest {
            file_name: file_name(8754, "Lapsed/users", Some("Email")),
            audience_id: 8754,
            ..Default::default()
        };
        a.count(&[("email".into(), 2)], 10);
        let mut b = FileManifest {
            file_name: file_name(8754, "Lapsed/users", Some("Control")),
            audience_id: 8754,
            ..Default::default()
        };
        b.count(&[("customer_id".into(), 1)], 30);
        assert_eq!(a.file_name, "8754_Lapsed_users - Email.csv");
        let m = Manifest::of(
            name,
            id,
            vec!["email".into()],
            1_546_463_180_021,
            None,
            vec![a, b],
        );
        assert_eq!(m.audience_ids, vec![8754]);
        assert_eq!(m.total_rows, 3);
        assert_eq!(
            (m.min_timestamp_ms, m.max_timestamp_ms),
            (Some(10), Some(30))
        );
        assert_eq!(m.manifest_generated, "2019-01-02T21:06:20.021Z");
        let json = serde_json::to_value(&m).unwrap();
        for field in [
            "archive_name",
            "id",
            "audience_ids",
            "included_identities",
            "manifest_generated",
            "min_timestamp_ms",
            "max_timestamp_ms",
            "total_rows",
            "rows_by_identity",
            "files",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn a_reservoir_keeps_its_size_and_gives_every_item_a_chance() {
        let mut kept = [0u32; 100];
        let mut state = 1u64;
        for _ in 0..2_000 {
            let mut r = Reservoir::new(10);
            for i in 0..100usize {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                r.offer(i, state >> 11);
            }
            let items = r.into_items();
            assert_eq!(items.len(), 10);
            for i in items {
                kept[i] += 1;
            }
        }
        // Each item is kept in about 10% of the draws (200 of 2,000).
        assert!(kept.iter().all(|&n| (120..290).contains(&n)), "{kept:?}");
    }
}
