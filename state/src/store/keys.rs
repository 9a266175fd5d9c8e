//! The key layout: how every record's key is built, so that a partition's records are one key
//! range and keys sort as their integers do (big-endian, sign-flipped for signed values).

use super::db::*;
use crate::model::{AudienceId, Mpid, TimestampMs};

/// The chunk seq of a profile's log head: after every chunk of the profile.
pub(super) const LOG_HEAD_SEQ: u32 = u32::MAX;

/// Order-preserving encoding of a signed integer (sign bit flipped, big-endian).
pub(super) fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn from_ordered_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

pub fn profile_key(partition: Partition, mpid: Mpid) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&ordered_i64(mpid));
    k
}

/// The first profile key of a partition scan that resumes after `after` (exclusive); `None`
/// when nothing can follow it.
pub(super) fn profile_scan_start(partition: Partition, after: Option<Mpid>) -> Option<[u8; 12]> {
    match after {
        Some(m) => m.checked_add(1).map(|next| profile_key(partition, next)),
        None => Some(profile_key(partition, i64::MIN)),
    }
}

pub fn log_key(partition: Partition, mpid: Mpid, seq: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..12].copy_from_slice(&profile_key(partition, mpid));
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn dict_key(partition: Partition, code: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&code.to_be_bytes());
    k
}

pub(super) fn sample_key(partition: Partition, mpid: Mpid) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..12].copy_from_slice(&crate::estimate::sample_rank(mpid).to_be_bytes());
    k[12..].copy_from_slice(&ordered_i64(mpid));
    k
}

/// `members` key by audience: partition, `a`, audience, mpid, version.
pub(super) fn member_by_audience_key(
    partition: Partition,
    audience: AudienceId,
    mpid: Mpid,
    version: u64,
) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4] = b'a';
    k[5..13].copy_from_slice(&audience.to_be_bytes());
    k[13..21].copy_from_slice(&ordered_i64(mpid));
    k[21..].copy_from_slice(&version.to_be_bytes());
    k
}

/// `members` key by profile: partition, `m`, mpid, audience, version.
pub fn member_by_profile_key(
    partition: Partition,
    mpid: Mpid,
    audience: AudienceId,
    version: u64,
) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4] = b'm';
    k[5..13].copy_from_slice(&ordered_i64(mpid));
    k[13..21].copy_from_slice(&audience.to_be_bytes());
    k[21..].copy_from_slice(&version.to_be_bytes());
    k
}

pub(super) fn profile_count_key(partition: Partition) -> String {
    format!("profiles/{partition}")
}

pub(super) fn replay_key(partition: Partition) -> String {
    format!("replay/{partition}")
}

pub(super) fn facts_indexed_key(partition: Partition) -> String {
    format!("facts/{partition}")
}

pub(super) fn calc_evaluated_key(partition: Partition, key: &str) -> String {
    format!("calc-evaluated/{partition}/{key}")
}

pub(super) fn seq_key(partition: Partition, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn timer_key(partition: Partition, due: TimestampMs, mpid: Mpid) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..12].copy_from_slice(&ordered_i64(due));
    k[12..].copy_from_slice(&ordered_i64(mpid));
    k
}

pub(super) fn offset_key(topic: &str, partition: Partition) -> String {
    format!("offset/{topic}/{partition}")
}

pub(super) fn outbox_head_key(partition: Partition) -> String {
    format!("head/outbox/{partition}")
}

pub(super) fn deadletter_head_key(partition: Partition) -> String {
    format!("head/deadletters/{partition}")
}

pub(super) fn published_key(sink: &str, partition: Partition) -> String {
    format!("published/{sink}/{partition}")
}

pub(super) fn size_key(audience: AudienceId, partition: Partition) -> String {
    format!("size/{audience}/{partition}")
}

pub(super) fn evaluated_key(partition: Partition, audience: AudienceId) -> String {
    format!("evaluated/{partition}/{audience}")
}

/// The partition a `meta` key holds state of, if it is partition state (the keys above that
/// name a partition); `None` for the catalog's and the node's own keys.
pub(super) fn meta_key_partition(key: &[u8]) -> Option<Partition> {
    let key = std::str::from_utf8(key).ok()?;
    let parts: Vec<&str> = key.split('/').collect();
    let at = match parts[0] {
        "profiles" | "replay" | "facts" | "evaluated" | "calc-evaluated" | "delivered"
        | "syncing" => 1,
        "head" if matches!(parts.get(1), Some(&"outbox") | Some(&"deadletters")) => 2,
        "changelog" if parts.get(1) == Some(&"seq") => 2,
        // Their middle part (a topic, a sink, an audience id) never holds a `/`.
        "offset" | "published" | "size" if parts.len() == 3 => 2,
        _ => return None,
    };
    parts.get(at)?.parse().ok()
}

pub(super) const CALC_PREFIX: &str = "calc/";
/// Meta keys of the API tokens: `token/<name>`.
pub(super) const TOKEN_PREFIX: &str = "token/";
