//! Activation: a profile brought into memory to apply a message or fire a timer, from the
//! cache, else from the store, else new. A poll batch's profiles are read from the store
//! together, in batched lookups, before its messages are applied; a profile whose rows do not
//! decode is left out of that read and activated alone, where its unreadable row is set aside
//! and the profile repaired from what can be read.

use super::*;

impl PartitionActor {
    /// Reads the stored profiles among `mpids` that are not cached, with their log heads, in
    /// batched lookups ([`Store::load_profiles_with_heads`]), so that activating them finds
    /// them cached. Profiles not stored are cached as new. Profiles whose rows do not decode,
    /// and profiles a wiping replay has yet to rebuild, are left to [`Self::activate`].
    ///
    /// [`Store::load_profiles_with_heads`]: audience_state::store::Store::load_profiles_with_heads
    pub(super) fn prefetch(
        &mut self,
        mpids: impl IntoIterator<Item = Mpid>,
    ) -> Result<(), StoreError> {
        let missing: Vec<Mpid> = mpids
            .into_iter()
            .filter(|m| !self.cache.contains_key(m))
            .collect();
        if missing.len() < 2 {
            return Ok(()); // a lookup of one is no batch: activation reads it
        }
        let store = self.engine.store.clone();
        for (mpid, loaded) in store.load_profiles_with_heads(self.partition, &missing)? {
            let cached = match loaded {
                Some(Ok((state, log))) => Cached::stored(state, log),
                None if !self.awaits_replay(mpid) => Cached::new(mpid),
                // Unreadable (set aside when activated), or to rebuild from its logs.
                _ => continue,
            };
            self.cache.insert(mpid, cached);
        }
        Ok(())
    }

    /// Whether a replay that wiped the profile states has yet to reach this profile: its state
    /// is then rebuilt from its logs when activated.
    fn awaits_replay(&self, mpid: Mpid) -> bool {
        self.replay
            .is_some_and(|r| r.wiped && r.after.is_none_or(|after| mpid > after))
    }

    /// Activates a profile: from the cache, else from RocksDB, else new.
    pub(super) fn activate(&mut self, mpid: Mpid) -> Result<&mut Cached, StoreError> {
        if !self.cache.contains_key(&mpid) {
            let store = self.engine.store.clone();
            let cached = match store.load_profile(self.partition, mpid)? {
                Some(state) => {
                    let log = store.load_log_head(self.partition, mpid)?;
                    Cached::stored(state, log.unwrap_or_default())
                }
                // Its state was wiped and the replay has not reached it: from its logs.
                None if self.awaits_replay(mpid) => {
                    match store.load_profile_logs(self.partition, mpid)? {
                        Some(logs) => self.rebuild_from_logs(logs).0,
                        None => Cached::new(mpid),
                    }
                }
                // A log is only ever written with its profile: a new profile has none to read.
                None => Cached::new(mpid),
            };
            self.cache.insert(mpid, cached);
        }
        let cached = self.cache.get_mut(&mpid).expect("inserted above");
        cached.last_used = Instant::now();
        Ok(cached)
    }

    /// [`Self::activate`] for a profile whose stored rows may not decode; the unreadable row
    /// is set aside, and the profile goes on from what can be read:
    /// - its state row: rebuilt from its base and log, its memberships from their history
    ///   (the row is a cache of those), as if nothing happened (`Ok(true)`: rebuilt);
    /// - its log head: the state row is whole, so the profile keeps it and its log starts
    ///   again, empty, over a base of its current facts (the history its log held is lost to
    ///   backfills of new definitions, never to the audiences it is in);
    /// - both: nothing to go on from, and `Err` says why the message that needed it is
    ///   dead-lettered.
    pub(super) fn activate_or_repair(
        &mut self,
        mpid: Mpid,
        pending: &mut Pending,
    ) -> Result<Result<bool, String>, StoreError> {
        let row = match self.activate(mpid) {
            Ok(_) => return Ok(Ok(false)),
            Err(StoreError::Unreadable(row)) => *row,
            Err(e) => return Err(e),
        };
        let why = format!("the stored state of MPID {mpid} is unreadable ({row}); set aside");
        let state_unreadable = row.is_profile_state();
        pending.quarantine.push(row);
        let store = self.engine.store.clone();
        if !state_unreadable {
            if let Some(state) = store.load_profile(self.partition, mpid)? {
                pending
                    .reset_logs
                    .insert(mpid, ProfileFacts::of(&state).encode());
                pending.dirty.insert(mpid);
                self.cache
                    .insert(mpid, Cached::stored(state, EventLog::default()));
                tracing::warn!(
                    partition = self.partition,
                    mpid,
                    "unreadable event log head: the log starts again over the current facts"
                );
                metrics::counter!("audience_eventlogs_restarted_total").increment(1);
                return Ok(Ok(false));
            }
            return Ok(Err(why));
        }
        match store.load_profile_logs(self.partition, mpid) {
            Ok(Some(logs)) => {
                let (cached, _) = self.rebuild_from_logs(logs);
                self.cache.insert(mpid, cached);
                tracing::warn!(
                    partition = self.partition,
                    mpid,
                    "unreadable profile row rebuilt from its base and log"
                );
                metrics::counter!("audience_profiles_repaired_total").increment(1);
                Ok(Ok(true))
            }
            // Stored before facts records: nothing to rebuild from.
            Ok(None) => Ok(Err(why)),
            Err(StoreError::Unreadable(other)) => {
                pending.quarantine.push(*other);
                Ok(Err(why))
            }
            // A membership record that does not decode either: nothing to rebuild from.
            Err(StoreError::Corrupt { cf, key, reason }) => {
                tracing::error!(cf, %key, %reason, "unreadable record; the profile cannot be rebuilt");
                Ok(Err(why))
            }
            Err(e) => Err(e),
        }
    }
}
