//! Profile states (a core row and a derived row each), their facts records, the sample index
//! and timers. A profile's first write also adds it to the sample and the partition's count.

use super::db::*;
use super::keys::*;
use super::logs::decode_log_head;
use crate::eventlog::EventLog;
use crate::model::{Mpid, TimestampMs};
use crate::profile::ProfileState;
use rocksdb::{Direction, IteratorMode};

impl WriteBatch<'_> {
    /// Writes both rows of a profile.
    pub fn put_profile(&mut self, partition: Partition, profile: &ProfileState) {
        let key = profile_key(partition, profile.mpid);
        self.put(CF_PROFILES, key, profile.encode_core());
        self.put(CF_DERIVED, key, profile.encode_derived());
    }

    /// Writes only the derived row of a profile whose core is stored as it is (a backfill's
    /// change: series of event criteria with conditions, calculated attributes, memberships).
    pub fn put_profile_derived(&mut self, partition: Partition, profile: &ProfileState) {
        let key = profile_key(partition, profile.mpid);
        self.put(CF_DERIVED, key, profile.encode_derived());
    }

    pub fn set_timer(&mut self, partition: Partition, due: TimestampMs, mpid: Mpid) {
        let cf = CF_TIMERS;
        self.put(cf, timer_key(partition, due, mpid), []);
    }

    pub fn clear_timer(&mut self, partition: Partition, due: TimestampMs, mpid: Mpid) {
        let cf = CF_TIMERS;
        self.delete(cf, timer_key(partition, due, mpid));
    }

    /// A profile's facts record ([`crate::facts::encode_facts`]).
    pub fn put_facts(&mut self, partition: Partition, mpid: Mpid, record: &[u8]) {
        let cf = CF_FACTS;
        self.put(cf, profile_key(partition, mpid), record);
    }

    /// Marks every stored profile of the partition as having its facts record.
    pub fn set_facts_indexed(&mut self, partition: Partition) {
        self.put_meta_u64(&facts_indexed_key(partition), 1);
    }

    /// Deletes every profile state and timer of a partition: what a replay rebuilds from the
    /// logs. The logs, the outbox, sizes and offsets stay.
    pub fn wipe_profile_states(&mut self, partition: Partition) {
        let (from, to) = (
            profile_key(partition, i64::MIN),
            profile_key(partition, i64::MAX),
        );
        for profiles in [CF_PROFILES, CF_DERIVED] {
            self.delete_range(profiles, from, to);
            self.delete(profiles, to);
        }
        let timers = CF_TIMERS;
        let (from, to) = (
            timer_key(partition, i64::MIN, i64::MIN),
            timer_key(partition, i64::MAX, i64::MAX),
        );
        self.delete_range(timers, from, to);
        self.delete(timers, to);
    }

    /// Lists a newly stored profile in the sample index.
    pub fn add_to_sample(&mut self, partition: Partition, mpid: Mpid) {
        let cf = CF_SAMPLE;
        self.put(cf, sample_key(partition, mpid), []);
    }

    /// How many profiles the partition stores.
    pub fn set_profile_count(&mut self, partition: Partition, count: u64) {
        self.put_meta_u64(&profile_count_key(partition), count);
    }
}

/// A profile read by [`Store::load_profiles_with_heads`]: `None` when none is stored, else
/// its state and log head (empty when it has logged nothing), or the row that does not decode.
pub type LoadedProfile = Option<Result<(ProfileState, EventLog), UnreadableRow>>;

impl Store {
    /// A stored profile (`None`: none). A row that does not decode is
    /// [`StoreError::Unreadable`], naming it so that the caller can set it aside.
    pub fn load_profile(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<Option<ProfileState>> {
        let key = profile_key(partition, mpid);
        let Some(core) = self.db.get_pinned_cf(self.cf(CF_PROFILES), key)? else {
            return Ok(None);
        };
        let derived = self.db.get_pinned_cf(self.cf(CF_DERIVED), key)?;
        profile_from_rows(partition, &key, &core, derived.as_deref())
            .map(Some)
            .map_err(UnreadableRow::into_error)
    }

    /// Several profiles with their log heads, in three batched lookups (core rows, then the
    /// derived rows and log heads of the profiles found) instead of three per profile: what a
    /// poll batch activates at once. One entry per distinct MPID, in MPID order:
    /// `None` for a profile not stored, `Err` for one whose rows do not decode, left for
    /// the caller to read again one by one and repair.
    pub fn load_profiles_with_heads(
        &self,
        partition: Partition,
        mpids: &[Mpid],
    ) -> StoreResult<Vec<(Mpid, LoadedProfile)>> {
        let mut mpids = mpids.to_vec();
        mpids.sort_unstable();
        mpids.dedup();
        // Profile keys order as their MPIDs do: the lookups can say the keys are sorted.
        let keys: Vec<[u8; 12]> = mpids.iter().map(|m| profile_key(partition, *m)).collect();
        let cores = self
            .db
            .batched_multi_get_cf(self.cf(CF_PROFILES), &keys, true);
        let mut found = Vec::new();
        let mut out = Vec::with_capacity(mpids.len());
        for ((mpid, key), core) in mpids.iter().zip(&keys).zip(cores) {
            if let Some(core) = core? {
                found.push((out.len(), key, core));
            }
            out.push((*mpid, None));
        }
        let found_keys = found.iter().map(|(_, key, _)| *key);
        let derived = self
            .db
            .batched_multi_get_cf(self.cf(CF_DERIVED), found_keys, true);
        let head_keys: Vec<[u8; 16]> = found
            .iter()
            .map(|(i, _, _)| log_key(partition, out[*i].0, LOG_HEAD_SEQ))
            .collect();
        let heads = self
            .db
            .batched_multi_get_cf(self.cf(CF_EVENTLOG), &head_keys, true);
        for (((i, key, core), derived), (head, head_key)) in found
            .into_iter()
            .zip(derived)
            .zip(heads.into_iter().zip(&head_keys))
        {
            let derived = derived?;
            let head = head?;
            let loaded =
                profile_from_rows(partition, key, &core, derived.as_deref()).and_then(|state| {
                    let log = match head {
                        None => EventLog::default(),
                        Some(bytes) => decode_log_head(partition, state.mpid, head_key, &bytes)?,
                    };
                    Ok((state, log))
                });
            out[i].1 = Some(loaded);
        }
        Ok(out)
    }

    /// Finds a profile in whichever partition holds it.
    pub fn find_profile(
        &self,
        mpid: Mpid,
        partitions: impl IntoIterator<Item = Partition>,
    ) -> StoreResult<Option<(Partition, ProfileState)>> {
        for p in partitions {
            if let Some(profile) = self.load_profile(p, mpid)? {
                return Ok(Some((p, profile)));
            }
        }
        Ok(None)
    }

    /// The partitions that hold any profile, from the keys themselves.
    pub fn known_partitions(&self) -> StoreResult<Vec<Partition>> {
        let mut out = Vec::new();
        let mut next: u64 = 0;
        while next <= u32::MAX as u64 {
            let start = (next as u32).to_be_bytes();
            let mut it = self.db.iterator_cf(
                self.cf(CF_PROFILES),
                IteratorMode::From(&start, Direction::Forward),
            );
            match it.next() {
                Some(item) => {
                    let (k, _) = item?;
                    let p = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
                    out.push(p);
                    next = p as u64 + 1;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Visits at most `limit` profiles of a partition, in MPID order, from `after`
    /// (exclusive). Rows that do not decode count toward the limit and are returned apart, for
    /// the caller to set aside.
    pub fn scan_profiles(
        &self,
        partition: Partition,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<ScanPage<ProfileState>> {
        let mut page = ScanPage::default();
        let Some(start) = profile_scan_start(partition, after) else {
            return Ok(page);
        };
        // Raw iterators: each row decodes from RocksDB's own buffer, never copied first. The
        // derived rows have the core rows' keys: one iterator follows the other.
        let mut rows = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_PROFILES), scan_options());
        let mut derived_rows = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_DERIVED), scan_options());
        rows.seek(start);
        derived_rows.seek(start);
        let mut seen = 0;
        while seen < limit {
            let (Some(k), Some(v)) = (rows.key(), rows.value()) else {
                break;
            };
            if k.len() < 12 || k[..4] != partition.to_be_bytes() {
                break;
            }
            seen += 1;
            let mpid = from_ordered_i64(&k[4..]);
            page.last = Some(mpid);
            while derived_rows.key().is_some_and(|d| d < k) {
                derived_rows.next();
            }
            let derived = derived_rows
                .key()
                .filter(|d| *d == k)
                .and(derived_rows.value());
            match profile_from_rows(partition, k, v, derived) {
                Ok(profile) => page.items.push(profile),
                Err(row) => page.unreadable.push(row),
            }
            rows.next();
        }
        rows.status()?;
        derived_rows.status()?;
        Ok(page)
    }

    /// The first `limit` profiles of a partition in sample order (a uniform sample).
    pub fn sample(&self, partition: Partition, limit: usize) -> StoreResult<Vec<Mpid>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_SAMPLE));
        it.seek(partition.to_be_bytes());
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            match it.key() {
                Some(k) if k.len() == 20 && k[..4] == partition.to_be_bytes() => {
                    out.push(from_ordered_i64(&k[12..]))
                }
                _ => break,
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The stored count of a partition's profiles (`None`: a store from before the count).
    pub fn profile_count(&self, partition: Partition) -> StoreResult<Option<u64>> {
        self.meta_u64(&profile_count_key(partition))
    }

    /// Lists every stored profile of a partition in the sample index and stores their count:
    /// for stores written before the index. Returns the count.
    pub fn index_sample(&self, partition: Partition) -> StoreResult<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_PROFILES));
        it.seek(profile_key(partition, i64::MIN));
        let mut n = 0;
        let mut batch = self.partition_batch();
        while it.valid() {
            match it.key() {
                Some(k) if k[..4] == partition.to_be_bytes() => {
                    batch.add_to_sample(partition, from_ordered_i64(&k[4..]));
                    n += 1;
                }
                _ => break,
            }
            if n % 10_000 == 0 {
                self.commit_partition(
                    std::mem::replace(&mut batch, self.partition_batch()),
                    partition,
                )?;
            }
            it.next();
        }
        it.status()?;
        batch.set_profile_count(partition, n);
        self.commit_partition(batch, partition)?;
        Ok(n)
    }

    /// Whether every stored profile of the partition has its facts record.
    pub fn facts_indexed(&self, partition: Partition) -> StoreResult<bool> {
        Ok(self.meta_u64(&facts_indexed_key(partition))?.is_some())
    }

    /// Writes the facts record of every stored profile of a partition from its state, for
    /// stores written before the record, then marks the partition. Returns the count.
    pub fn index_facts(&self, partition: Partition) -> StoreResult<u64> {
        let mut n = 0;
        let mut after = None;
        loop {
            let page = self.scan_profiles(partition, after, 1_000)?;
            let Some(last) = page.last else { break };
            after = Some(last);
            // An unreadable profile gets no facts record: streaming or a rebuild meets it.
            let mut batch = self.partition_batch();
            for profile in &page.items {
                batch.put_facts(
                    partition,
                    profile.mpid,
                    &crate::facts::encode_facts(profile),
                );
                n += 1;
            }
            self.commit_partition(batch, partition)?;
            if after == Some(Mpid::MAX) {
                break;
            }
        }
        let mut batch = self.partition_batch();
        batch.set_facts_indexed(partition);
        self.commit_partition(batch, partition)?;
        Ok(n)
    }

    /// A profile's facts (`None`: no such profile, or stored before facts records).
    pub fn load_facts(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<Option<crate::facts::ProfileFacts>> {
        let key = profile_key(partition, mpid);
        match self.db.get_pinned_cf(self.cf(CF_FACTS), key)? {
            None => Ok(None),
            Some(bytes) => crate::facts::ProfileFacts::decode(&bytes)
                .map(Some)
                .map_err(|reason| {
                    let display = format!("{partition}/{mpid}");
                    UnreadableRow::new(partition, CF_FACTS, &key, display, reason).into_error()
                }),
        }
    }

    /// Timers of a partition due at or before `now`, earliest first.
    pub fn due_timers(
        &self,
        partition: Partition,
        now: TimestampMs,
        limit: usize,
    ) -> StoreResult<Vec<(TimestampMs, Mpid)>> {
        let start = timer_key(partition, i64::MIN, i64::MIN);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_TIMERS),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, _) = item?;
            if k[..4] != partition.to_be_bytes() || out.len() >= limit {
                break;
            }
            let due = from_ordered_i64(&k[4..12]);
            if due > now {
                break;
            }
            out.push((due, from_ordered_i64(&k[12..20])));
        }
        Ok(out)
    }
}

/// A profile from its core row and its derived row (`None`: a whole row of an earlier format,
/// or a profile with no derived part yet), or the row that does not decode.
fn profile_from_rows(
    partition: Partition,
    key: &[u8],
    core: &[u8],
    derived: Option<&[u8]>,
) -> Result<ProfileState, UnreadableRow> {
    let display = || {
        let mpid = from_ordered_i64(&key[4..12]);
        format!("{partition}/{mpid}")
    };
    let mut profile = ProfileState::decode(core)
        .map_err(|reason| UnreadableRow::new(partition, CF_PROFILES, key, display(), reason))?;
    if let Some(derived) = derived {
        let parts = ProfileState::decode_derived(derived)
            .map_err(|reason| UnreadableRow::new(partition, CF_DERIVED, key, display(), reason))?;
        profile.set_derived(parts);
    }
    Ok(profile)
}
