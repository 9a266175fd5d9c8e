//! Read-only evaluations of a definition over stored profiles and their event logs, for
//! answers that change nothing: the size estimate of a draft, and the preview of an edit.
//!
//! Both read the store directly (RocksDB reads run beside the partition actors' writes, and a
//! profile is at most one unit of work behind the actor's cache), rebuild what the definition
//! reads from a copy of each profile's log, and evaluate it on the copy.
//!
//! Invariant: nothing here writes; the profiles read are copies.

use crate::engine::{Engine, SampledEstimate};
use audience_state::backfill::{BackfillPlan, Decisions};
use audience_state::criteria::{CompiledAudience, EvalContext};
use audience_state::estimate::estimate;
use audience_state::eventlog::Dictionary;
use audience_state::model::{AudienceId, Mpid};
use audience_state::profile::ProfileState;
use audience_state::store::{Partition, StoreError};
use std::collections::HashMap;

/// Profile reads with one dictionary per partition.
struct Reader<'a> {
    engine: &'a Engine,
    dictionaries: HashMap<Partition, Dictionary>,
}

impl<'a> Reader<'a> {
    fn new(engine: &'a Engine) -> Self {
        Reader {
            engine,
            dictionaries: HashMap::new(),
        }
    }

    fn dictionary(&mut self, p: Partition) -> Result<&Dictionary, StoreError> {
        if !self.dictionaries.contains_key(&p) {
            let dict = self.engine.store.load_dictionary(p)?;
            self.dictionaries.insert(p, dict);
        }
        Ok(&self.dictionaries[&p])
    }

    /// The stored profile with the plan's state rebuilt from its log (`None`: not stored).
    fn rebuilt(
        &mut self,
        p: Partition,
        mpid: Mpid,
        plan: &BackfillPlan,
        ctx: &EvalContext,
    ) -> Result<Option<ProfileState>, StoreError> {
        let store = self.engine.store.clone();
        let Some(mut profile) = store.load_profile(p, mpid)? else {
            return Ok(None);
        };
        let log = store.load_log_head(p, mpid)?.unwrap_or_default();
        let chunks = store.load_log_chunks(p, mpid)?;
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let dict = self.dictionary(p)?;
        if let Err(reason) = plan.rebuild(
            &mut profile,
            &log,
            &chunks,
            dict,
            &mut Decisions::default(),
            ctx.now,
            ctx.retention_ms,
        ) {
            tracing::warn!(partition = p, mpid, %reason, "event log unreadable; evaluating the profile without it");
        }
        Ok(Some(profile))
    }
}

fn ctx(engine: &Engine) -> EvalContext {
    EvalContext {
        now: engine.clock.now(),
        retention_ms: engine.settings.retention_ms,
    }
}

/// Estimates the members of `compiled` over the `partitions` of this node from a uniform
/// sample of about `sample_size` profiles: each partition gives its first profiles in sample
/// order, in proportion to its size.
pub fn estimate_size(
    engine: &Engine,
    partitions: &[Partition],
    compiled: &CompiledAudience,
    sample_size: u64,
) -> Result<SampledEstimate, StoreError> {
    let ctx = ctx(engine);
    let plan = BackfillPlan::for_definition(compiled);
    let mut counts = Vec::new();
    for &p in partitions {
        counts.push((p, engine.store.profile_count(p)?.unwrap_or(0)));
    }
    let population: u64 = counts.iter().map(|(_, n)| n).sum();
    let mut reader = Reader::new(engine);
    let (mut sampled, mut members, mut in_scope) = (0u64, 0u64, 0u64);
    for (p, n) in counts {
        if n == 0 {
            continue;
        }
        let share = (sample_size as u128 * n as u128).div_ceil(population as u128) as usize;
        for mpid in engine.store.sample(p, share)? {
            let Some(profile) = reader.rebuilt(p, mpid, &plan, &ctx)? else {
                continue;
            };
            sampled += 1;
            in_scope += u64::from(compiled.scope_admits(&profile));
            if compiled.evaluate(&profile, &ctx).matched {
                members += 1;
            }
        }
    }
    Ok(SampledEstimate {
        estimate: estimate(members, sampled, population.max(sampled)),
        sampled,
        sampled_members: members,
        sampled_in_scope: in_scope,
        population,
    })
}

/// What an edit of an audience would change, computed over every stored profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EditPreview {
    pub members_now: u64,
    pub would_leave: u64,
    pub would_enter: u64,
    /// The first profiles (in MPID order) of each side, at most `sample` of each.
    pub leaving: Vec<Mpid>,
    pub entering: Vec<Mpid>,
    pub scanned: u64,
}

/// Compares the current members of `audience` with those of `compiled`, over every stored
/// profile of the `partitions`.
pub fn preview_edit(
    engine: &Engine,
    partitions: &[Partition],
    audience: AudienceId,
    compiled: &CompiledAudience,
    sample: usize,
) -> Result<EditPreview, StoreError> {
    let ctx = ctx(engine);
    let plan = BackfillPlan::for_definition(compiled);
    let mut preview = EditPreview::default();
    for &p in partitions {
        let dict = engine.store.load_dictionary(p)?;
        let mut decisions = Decisions::default();
        let mut after = None;
        loop {
            let page = engine.store.scan_profiles_with_logs(p, after, 500)?;
            engine.store.set_aside(&page.unreadable)?;
            let Some(last) = page.last else {
                break;
            };
            for mut item in page.items {
                preview.scanned += 1;
                let member_now = item
                    .profile
                    .memberships
                    .get(&audience)
                    .is_some_and(|r| r.member);
                let chunks: Vec<&[u8]> = item.chunks.iter().map(Vec::as_slice).collect();
                if let Err(reason) = plan.rebuild(
                    &mut item.profile,
                    &item.log,
                    &chunks,
                    &dict,
                    &mut decisions,
                    ctx.now,
                    ctx.retention_ms,
                ) {
                    tracing::warn!(partition = p, mpid = item.profile.mpid, %reason, "event log unreadable");
                }
                let member_after = compiled.evaluate(&item.profile, &ctx).matched;
                preview.members_now += member_now as u64;
                match (member_now, member_after) {
                    (true, false) => {
                        preview.would_leave += 1;
                        if preview.leaving.len() < sample {
                            preview.leaving.push(item.profile.mpid);
                        }
                    }
                    (false, true) => {
                        preview.would_enter += 1;
                        if preview.entering.len() < sample {
                            preview.entering.push(item.profile.mpid);
                        }
                    }
                    _ => {}
                }
            }
            if last == Mpid::MAX {
                break;
            }
            after = Some(last);
        }
    }
    Ok(preview)
}

/// A stored profile with a draft definition's state rebuilt from its log, for explaining
/// the draft on it.
pub fn rebuilt_profile(
    engine: &Engine,
    partitions: &[Partition],
    mpid: Mpid,
    compiled: &CompiledAudience,
) -> Result<Option<ProfileState>, StoreError> {
    let ctx = ctx(engine);
    let plan = BackfillPlan::for_definition(compiled);
    let mut reader = Reader::new(engine);
    for &p in partitions {
        if let Some(profile) = reader.rebuilt(p, mpid, &plan, &ctx)? {
            return Ok(Some(profile));
        }
    }
    Ok(None)
}
