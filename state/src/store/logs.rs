//! The event log's RocksDB layout (chunks, head, dictionary), the scans backfill and replay
//! read, and the revisions a partition's profiles were computed for.

use super::db::*;
use super::keys::*;
use crate::eventlog::{Dictionary, EventLog, LogWrites};
use crate::model::{AudienceId, Mpid};
use crate::profile::ProfileState;
use rocksdb::{Direction, IteratorMode};
use std::collections::BTreeMap;

/// A replay in progress: whether it wiped the profile states first, and the last profile it
/// rebuilt (`None`: none yet). Stored, so a restart resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCursor {
    pub wiped: bool,
    pub after: Option<Mpid>,
}

/// A profile's log as stored: its head (`None`: nothing logged) and sealed chunks.
pub(super) type LogParts = (Option<EventLog>, Vec<Vec<u8>>);

/// The logs of a range of profiles, read in one scan ([`Store::logs_between`]).
#[derive(Default)]
pub(super) struct ProfileLogsBetween {
    found: BTreeMap<Mpid, LogParts>,
    unreadable_heads: std::collections::BTreeSet<Mpid>,
}

impl ProfileLogsBetween {
    /// A profile's log (empty when it logged nothing); `None` when its head is unreadable.
    pub(super) fn remove(&mut self, mpid: &Mpid) -> Option<LogParts> {
        if self.unreadable_heads.contains(mpid) {
            return None;
        }
        Some(self.found.remove(mpid).unwrap_or_default())
    }
}

/// What a profile is rebuilt from: its facts, its event log and its membership history.
#[derive(Debug, Clone)]
pub struct ProfileLogs {
    pub mpid: Mpid,
    pub facts: crate::facts::ProfileFacts,
    pub log: EventLog,
    pub chunks: Vec<Vec<u8>>,
    pub memberships: BTreeMap<AudienceId, Vec<crate::membership::Change>>,
}

/// A stored profile with its event log: the head and the sealed chunks, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ProfileWithLog {
    pub profile: ProfileState,
    pub log: EventLog,
    pub chunks: Vec<Vec<u8>>,
}

impl WriteBatch<'_> {
    /// Records the revision of an audience the partition's stored profiles were all evaluated
    /// against (`None`: forget it).
    pub fn set_evaluated_revision(
        &mut self,
        audience: AudienceId,
        partition: Partition,
        revision: Option<u64>,
    ) {
        let key = evaluated_key(partition, audience);
        match revision {
            Some(r) => self.put_meta_u64(&key, r),
            None => {
                let cf = CF_META;
                self.delete(cf, key.as_bytes());
            }
        }
    }

    /// Writes what changed in a profile's log: its sealed chunks, the chunks it dropped and
    /// its head.
    pub fn put_log(
        &mut self,
        partition: Partition,
        mpid: Mpid,
        log: &EventLog,
        writes: &LogWrites,
    ) {
        let cf = CF_EVENTLOG;
        for (seq, bytes) in &writes.put_chunks {
            self.put(cf, log_key(partition, mpid, *seq), bytes);
        }
        for seq in &writes.delete_chunks {
            self.delete(cf, log_key(partition, mpid, *seq));
        }
        if writes.head_changed {
            self.put(cf, log_key(partition, mpid, LOG_HEAD_SEQ), log.encode());
        }
    }

    /// Deletes a profile's whole log (every chunk and the head).
    pub fn delete_log(&mut self, partition: Partition, mpid: Mpid) {
        let cf = CF_EVENTLOG;
        self.delete_range(
            cf,
            log_key(partition, mpid, 0),
            log_key(partition, mpid, LOG_HEAD_SEQ),
        );
        self.delete(cf, log_key(partition, mpid, LOG_HEAD_SEQ));
    }

    /// Names newly coded in a partition's dictionary.
    pub fn put_dictionary(&mut self, partition: Partition, entries: &[(u32, String)]) {
        let cf = CF_LOGDICT;
        for (code, name) in entries {
            self.put(cf, dict_key(partition, *code), name.as_bytes());
        }
    }

    /// Records the revision of a calculated attribute the partition's stored profiles were
    /// calculated for (`None`: forget it).
    pub fn set_calculated_evaluated(
        &mut self,
        partition: Partition,
        key: &str,
        revision: Option<u64>,
    ) {
        let key = calc_evaluated_key(partition, key);
        match revision {
            Some(r) => self.put_meta_u64(&key, r),
            None => {
                let cf = CF_META;
                self.delete(cf, key.as_bytes());
            }
        }
    }

    /// Where a running replay of the partition stands (`None`: none runs).
    pub fn set_replay_cursor(&mut self, partition: Partition, cursor: Option<ReplayCursor>) {
        let cf = CF_META;
        let key = replay_key(partition);
        match cursor {
            None => self.delete(cf, key.as_bytes()),
            Some(c) => {
                let mut v = vec![u8::from(c.wiped)];
                if let Some(after) = c.after {
                    v.extend_from_slice(&after.to_be_bytes());
                }
                self.put(cf, key.as_bytes(), v);
            }
        }
    }
}

impl Store {
    /// The partition's running replay, if any.
    pub fn replay_cursor(&self, partition: Partition) -> StoreResult<Option<ReplayCursor>> {
        let key = replay_key(partition);
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_META), key.as_bytes())? else {
            return Ok(None);
        };
        let after = match v.len() {
            1 => None,
            9 => Some(i64::from_be_bytes(v[1..].try_into().expect("8 bytes"))),
            n => {
                return Err(StoreError::Corrupt {
                    cf: CF_META,
                    key,
                    reason: format!("replay cursor of {n} bytes, not 1 or 9"),
                })
            }
        };
        Ok(Some(ReplayCursor {
            wiped: v[0] == 1,
            after,
        }))
    }

    /// Everything one profile is rebuilt from (`None`: it has no facts record).
    pub fn load_profile_logs(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<Option<ProfileLogs>> {
        let Some(facts) = self.load_facts(partition, mpid)? else {
            return Ok(None);
        };
        Ok(Some(ProfileLogs {
            mpid,
            facts,
            log: self.load_log_head(partition, mpid)?.unwrap_or_default(),
            chunks: self.load_log_chunks(partition, mpid)?,
            memberships: self.membership_changes_of(partition, mpid)?,
        }))
    }

    /// Visits at most `limit` profiles of a partition that have facts, in MPID order, from
    /// `after` (exclusive), with everything each is rebuilt from. Reads no profile state. A
    /// profile whose facts or log head do not decode is left out, its row returned apart.
    pub fn scan_profile_logs(
        &self,
        partition: Partition,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<ScanPage<ProfileLogs>> {
        let mut page = ScanPage::default();
        let Some(start) = profile_scan_start(partition, after) else {
            return Ok(page);
        };
        let mut facts = Vec::new();
        let rows = self.db.iterator_cf_opt(
            self.cf(CF_FACTS),
            scan_options(),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in rows.take(limit) {
            let (k, v) = item?;
            if k[..4] != partition.to_be_bytes() {
                break;
            }
            let mpid = from_ordered_i64(&k[4..]);
            page.last = Some(mpid);
            match crate::facts::ProfileFacts::decode(&v) {
                Ok(decoded) => facts.push((mpid, decoded)),
                Err(reason) => page.unreadable.push(UnreadableRow::new(
                    partition,
                    CF_FACTS,
                    &k,
                    format!("{partition}/{mpid}"),
                    reason,
                )),
            }
        }
        let (Some(first), Some(last)) = (facts.first(), facts.last()) else {
            return Ok(page);
        };
        let mut logs = self.logs_between(partition, first.0, last.0, &mut page.unreadable)?;
        for (mpid, facts) in facts {
            let Some((log, chunks)) = logs.remove(&mpid) else {
                continue; // its head is unreadable
            };
            page.items.push(ProfileLogs {
                mpid,
                facts,
                log: log.unwrap_or_default(),
                chunks,
                memberships: self.membership_changes_of(partition, mpid)?,
            });
        }
        Ok(page)
    }

    /// A profile's log head (`None`: the profile has logged nothing).
    pub fn load_log_head(&self, partition: Partition, mpid: Mpid) -> StoreResult<Option<EventLog>> {
        let key = log_key(partition, mpid, LOG_HEAD_SEQ);
        match self.db.get_pinned_cf(self.cf(CF_EVENTLOG), key)? {
            None => Ok(None),
            Some(bytes) => decode_log_head(partition, mpid, &key, &bytes)
                .map(Some)
                .map_err(UnreadableRow::into_error),
        }
    }

    /// One sealed chunk of a profile's log, as stored (`None`: no such chunk).
    pub fn load_log_chunk(
        &self,
        partition: Partition,
        mpid: Mpid,
        seq: u32,
    ) -> StoreResult<Option<Vec<u8>>> {
        let key = log_key(partition, mpid, seq);
        Ok(self.db.get_cf(self.cf(CF_EVENTLOG), key)?)
    }

    /// A profile's sealed chunks as stored, oldest first.
    pub fn load_log_chunks(&self, partition: Partition, mpid: Mpid) -> StoreResult<Vec<Vec<u8>>> {
        let start = log_key(partition, mpid, 0);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_EVENTLOG),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k[..12] != start[..12] || k[12..] == LOG_HEAD_SEQ.to_be_bytes() {
                break;
            }
            out.push(v.into_vec());
        }
        Ok(out)
    }

    /// A partition's dictionary of log names.
    pub fn load_dictionary(&self, partition: Partition) -> StoreResult<Dictionary> {
        let start = dict_key(partition, 0);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_LOGDICT),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k[..4] != start[..4] {
                break;
            }
            let code = u32::from_be_bytes([k[4], k[5], k[6], k[7]]);
            entries.push((code, String::from_utf8_lossy(&v).into_owned()));
        }
        Dictionary::from_entries(entries).map_err(|reason| StoreError::Corrupt {
            cf: CF_LOGDICT,
            key: format!("{partition}"),
            reason,
        })
    }

    /// Visits at most `limit` profiles of a partition with their event logs, in MPID order,
    /// from `after` (exclusive): two forward scans side by side, no lookup per profile. A
    /// profile whose row or log head does not decode is left out, its row returned apart.
    pub fn scan_profiles_with_logs(
        &self,
        partition: Partition,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<ScanPage<ProfileWithLog>> {
        let profiles = self.scan_profiles(partition, after, limit)?;
        let mut page = ScanPage {
            items: Vec::with_capacity(profiles.items.len()),
            unreadable: profiles.unreadable,
            last: profiles.last,
        };
        let (Some(first), Some(last)) = (profiles.items.first(), profiles.items.last()) else {
            return Ok(page);
        };
        let mut logs = self.logs_between(partition, first.mpid, last.mpid, &mut page.unreadable)?;
        for profile in profiles.items {
            let Some((log, chunks)) = logs.remove(&profile.mpid) else {
                continue; // its head is unreadable
            };
            page.items.push(ProfileWithLog {
                profile,
                log: log.unwrap_or_default(),
                chunks,
            });
        }
        Ok(page)
    }

    /// The event logs (head, sealed chunks oldest first) of the profiles from `first` to
    /// `last` (inclusive): one forward scan. Every profile of the range is in the map (with
    /// no head and no chunk when it logged nothing) except those whose head does not decode:
    /// their rows go to `unreadable`.
    pub(super) fn logs_between(
        &self,
        partition: Partition,
        first: Mpid,
        last: Mpid,
        unreadable: &mut Vec<UnreadableRow>,
    ) -> StoreResult<ProfileLogsBetween> {
        let start = log_key(partition, first, 0);
        let end = profile_key(partition, last);
        let mut logs = ProfileLogsBetween::default();
        // A raw iterator: heads decode from RocksDB's own buffer; chunks are copied once.
        let mut rows = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_EVENTLOG), scan_options());
        rows.seek(start);
        while let (Some(k), Some(v)) = (rows.key(), rows.value()) {
            if k.len() != 16 || k[..12] > end[..] {
                break;
            }
            let mpid = from_ordered_i64(&k[4..12]);
            let entry = logs.found.entry(mpid).or_default();
            if k[12..] == LOG_HEAD_SEQ.to_be_bytes() {
                match decode_log_head(partition, mpid, k, v) {
                    Ok(head) => entry.0 = Some(head),
                    Err(row) => {
                        logs.unreadable_heads.insert(mpid);
                        unreadable.push(row);
                    }
                }
            } else {
                entry.1.push(v.to_vec());
            }
            rows.next();
        }
        rows.status()?;
        Ok(logs)
    }

    /// (calculated attribute, revision) pairs the partition's profiles were calculated for.
    pub fn calculated_evaluated(&self, partition: Partition) -> StoreResult<Vec<(String, u64)>> {
        let prefix = format!("calc-evaluated/{partition}/");
        Ok(self
            .meta_with_prefix(&prefix)?
            .into_iter()
            .map(|(rest, v)| (String::from_utf8_lossy(&rest).into_owned(), be_u64(&v)))
            .collect())
    }

    /// Approximate bytes on disk (SST files) and in memtables of the event log.
    pub fn event_log_bytes(&self) -> StoreResult<(u64, u64)> {
        let cf = self.cf(CF_EVENTLOG);
        let sst = self
            .db
            .property_int_value_cf(cf, "rocksdb.total-sst-files-size")?
            .unwrap_or(0);
        let mem = self
            .db
            .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")?
            .unwrap_or(0);
        Ok((sst, mem))
    }

    /// (audience, revision) pairs the partition's profiles were evaluated against.
    pub fn evaluated_revisions(&self, partition: Partition) -> StoreResult<Vec<(AudienceId, u64)>> {
        let prefix = format!("evaluated/{partition}/");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        ) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            if let Ok(a) = String::from_utf8_lossy(rest).parse::<AudienceId>() {
                out.push((a, be_u64(&v)));
            }
        }
        Ok(out)
    }
}

/// A stored log head decoded, or the row named as unreadable (`partition/mpid/head`).
pub(super) fn decode_log_head(
    partition: Partition,
    mpid: Mpid,
    key: &[u8],
    bytes: &[u8],
) -> Result<EventLog, UnreadableRow> {
    EventLog::decode(bytes).map_err(|reason| {
        let display = format!("{partition}/{mpid}/head");
        UnreadableRow::new(partition, CF_EVENTLOG, key, display, reason)
    })
}
