//! The membership reads beside the delta stream: an audience's members at an instant, a
//! profile's membership history, and audiences' figures; each over the whole cluster (this
//! node's partitions, and every other live node's, asked for theirs).
//!
//! Invariants, for a token limited to workspaces ([`crate::workspace_view`]):
//! - an audience it does not see answers as absent (NOT_FOUND); one this node's catalog does
//!   not hold yet is another node's fresh creation, whose figures it asks for, and is answered;
//! - members, histories and figures name only what it sees: the members of an audience it
//!   does not own are filtered to the profiles seen in its workspaces (those of an audience it
//!   owns all are: the audience's gate admits only profiles seen in its workspaces), and a
//!   profile it does not see has no history;
//! - a page of members is as full as asked while the partition holds more it sees, so that the
//!   page token's "partition:last MPID" resumes after the last one listed, wherever the
//!   filter skipped.

use crate::blocking::off_runtime;
use crate::convert;
use crate::grpc::Services;
use crate::peers::{Peer, PARTITION_HEADER};
use crate::workspace_view::WorkspaceView;
use audience_proto::v1 as pb;
use std::collections::BTreeSet;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// The members listed when a request names no page size, and the most one page holds.
const DEFAULT_MEMBERS_PAGE: usize = 1_000;
const MAX_MEMBERS_PAGE: usize = 100_000;

impl Services {
    pub(crate) async fn list_members_of(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let engine = &self.node.engine;
        let audience = self.seen_audience(&view, r.audience_id)?;
        // Members of an audience the token owns are all seen in its workspaces.
        let filtered = !view.owns_audience(&audience);
        let now = engine.clock.now();
        let as_of = if r.as_of_ms == 0 { now } else { r.as_of_ms };
        if as_of > now || as_of < now - engine.settings.retention_ms {
            return Err(Status::out_of_range(format!(
                "as_of_ms: {as_of} is outside the retention window {}..{now}",
                now - engine.settings.retention_ms
            )));
        }
        let page_size = match r.page_size {
            0 => DEFAULT_MEMBERS_PAGE,
            n => (n as usize).min(MAX_MEMBERS_PAGE),
        };
        let (mut partition, mut after) = parse_members_token(&r.page_token)?;
        // Partition after partition, each read from its owner: this node, or another.
        let owned: BTreeSet<u32> = self.partitions(&caller)?.into_iter().collect();
        let mut every = owned.clone();
        let peers = self.peers.others(&caller).await?;
        if !self.peers.answers_alone(&caller) {
            every.extend(0..self.peers.cluster().await?.partitions);
        }
        let types = match r.identity_types.is_empty() {
            true => Vec::new(),
            false => audience_state::download::identity_types(&r.identity_types)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        };
        let mut mpids = Vec::new();
        let mut identities = Vec::new();
        let mut next_page_token = String::new();
        for p in every {
            if partition.is_some_and(|from| p < from) {
                continue;
            }
            if partition.is_some_and(|from| p > from) {
                after = None;
            }
            partition = Some(p);
            let want = page_size - mpids.len();
            let (page, page_identities) = if owned.contains(&p) {
                let (engine, view, audience) = (engine.clone(), view.clone(), r.audience_id);
                let types = types.clone();
                off_runtime(move || {
                    let visible = |mpid| -> Result<bool, Status> {
                        let profile = engine
                            .store
                            .load_profile(p, mpid)
                            .map_err(convert::internal)?;
                        Ok(profile.is_some_and(|profile| view.sees_profile(&profile)))
                    };
                    let read = |after, limit| {
                        engine
                            .store
                            .members_at(p, audience, as_of, after, limit)
                            .map_err(convert::internal)
                    };
                    let page = if filtered {
                        visible_members(after, want, read, visible)?
                    } else {
                        read(after, want)?
                    };
                    let identities = match types.is_empty() {
                        true => Vec::new(),
                        false => identities_here(&engine, p, &page, &types)?,
                    };
                    Ok((page, identities))
                })
                .await?
            } else {
                // The node that owns it filters for the same token.
                let asked = pb::ListMembersRequest {
                    audience_id: r.audience_id,
                    as_of_ms: as_of,
                    page_size: want as u32,
                    page_token: after.map(|m| format!("{p}:{m}")).unwrap_or_default(),
                    identity_types: types.clone(),
                };
                let answer = self.members_elsewhere(&caller, &peers, p, asked).await?;
                (answer.mpids, answer.identities)
            };
            let full = page.len() == want;
            if let Some(last) = page.last() {
                if full {
                    next_page_token = format!("{p}:{last}");
                }
            }
            mpids.extend(page);
            identities.extend(page_identities);
            if full {
                break;
            }
        }
        Ok(Response::new(pb::ListMembersResponse {
            mpids,
            next_page_token,
            as_of_ms: as_of,
            identities,
        }))
    }

    /// A page of a partition this node does not own, from the node that does: the one that
    /// announces it first, then the others (announcements are up to 2 s old, and a node that
    /// does not own it refuses the call).
    async fn members_elsewhere(
        &self,
        caller: &MetadataMap,
        peers: &[Peer],
        p: u32,
        asked: pb::ListMembersRequest,
    ) -> Result<pb::ListMembersResponse, Status> {
        let mut candidates: Vec<&Peer> =
            peers.iter().filter(|n| n.partitions.contains(&p)).collect();
        candidates.extend(peers.iter().filter(|n| !n.partitions.contains(&p)));
        for peer in candidates {
            let mut answers = self
                .peers
                .ask(std::slice::from_ref(peer), |channel| {
                    let mut request = self.peers.request(caller, asked.clone());
                    let partition = p.to_string().parse().expect("digits are ASCII");
                    request.metadata_mut().insert(PARTITION_HEADER, partition);
                    async move {
                        pb::membership_service_client::MembershipServiceClient::new(channel)
                            .list_members(request)
                            .await
                    }
                })
                .await;
            match answers.remove(0) {
                Ok(page) => return Ok(page),
                Err(e) if e.code() == tonic::Code::Unavailable => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Status::unavailable(format!(
            "partition {p}: no node answers for it now (it is moving, or its node died): retry"
        )))
    }

    pub(crate) async fn membership_history_of(
        &self,
        req: Request<pb::GetMembershipHistoryRequest>,
    ) -> Result<Response<pb::MembershipHistory>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let mpid = req.into_inner().mpid;
        let partitions = self.partitions(&caller)?;
        let (engine, local_view) = (self.node.engine.clone(), view.clone());
        let mut intervals =
            off_runtime(move || history_here(&engine, &local_view, mpid, partitions)).await?;
        // The other nodes' partitions: a profile is on one, unless its producers' keys moved.
        let peers = self.peers.others(&caller).await?;
        let asked = pb::GetMembershipHistoryRequest { mpid };
        let answers = self
            .peers
            .ask_every(&peers, |channel| {
                let request = self.peers.request(&caller, asked);
                async move {
                    pb::membership_service_client::MembershipServiceClient::new(channel)
                        .get_membership_history(request)
                        .await
                }
            })
            .await?;
        intervals.extend(answers.into_iter().flat_map(|h| h.intervals));
        intervals.sort_by_key(|i| (i.entered_ms, i.audience_id));
        Ok(Response::new(pb::MembershipHistory { mpid, intervals }))
    }

    pub(crate) async fn audience_stats_of(
        &self,
        req: Request<pb::GetAudienceStatsRequest>,
    ) -> Result<Response<pb::GetAudienceStatsResponse>, Status> {
        let caller = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let ids = req.into_inner().audience_ids;
        // An audience this node's catalog does not hold yet (another node created it a moment
        // ago and asks for this node's figures) is answered as before, not as absent.
        let catalog = self.node.engine.catalog.load();
        let seen = |id: u64| catalog.record(id).is_none_or(|a| view.sees_audience(a));
        if let Some(hidden) = ids.iter().find(|id| !seen(**id)) {
            return Err(Status::not_found(format!("audience {hidden} not found")));
        }
        let figures = self.cluster_figures(&caller, &ids).await?;
        let mut audiences: Vec<pb::ConnectorAudienceStats> = figures
            .iter()
            .filter(|(id, _)| seen(**id))
            .map(|(id, (f, latency))| pb::ConnectorAudienceStats {
                audience_id: *id,
                stats: Some(convert::stats(f, Some(latency))),
            })
            .collect();
        audiences.sort_by_key(|a| a.audience_id);
        Ok(Response::new(pb::GetAudienceStatsResponse { audiences }))
    }
}

/// The membership intervals of `mpid` in this node's `partitions`, in the audiences `view`
/// sees (store reads: run off the runtime).
fn history_here(
    engine: &audience_actors::engine::Engine,
    view: &WorkspaceView,
    mpid: i64,
    partitions: Vec<u32>,
) -> Result<Vec<pb::MembershipInterval>, Status> {
    let catalog = engine.catalog.load();
    let from = engine.clock.now() - engine.settings.retention_ms;
    let mut intervals = Vec::new();
    for p in partitions {
        if view.is_limited() {
            let profile = engine
                .store
                .load_profile(p, mpid)
                .map_err(convert::internal)?;
            if !profile.is_some_and(|profile| view.sees_profile(&profile)) {
                continue;
            }
        }
        let changes = engine
            .store
            .membership_changes_of(p, mpid)
            .map_err(convert::internal)?;
        for (audience, changes) in changes {
            let record = catalog.record(audience);
            // A deleted audience's intervals are every workspace's: an unlimited token's.
            if view.is_limited() && !record.is_some_and(|a| view.sees_audience(a)) {
                continue;
            }
            for i in audience_state::membership::intervals(audience, &changes) {
                if i.left_ms.is_some_and(|left| left < from) {
                    continue;
                }
                intervals.push(pb::MembershipInterval {
                    audience_id: audience,
                    audience_name: record.map(|r| r.name.clone()).unwrap_or_default(),
                    entered_ms: i.entered_ms,
                    left_ms: i.left_ms.unwrap_or_default(),
                    entered_version: i.entered_version,
                    left_version: i.left_version.unwrap_or_default(),
                });
            }
        }
    }
    Ok(intervals)
}

/// A ListMembers page token: "partition:last MPID listed"; empty for the first page.
fn parse_members_token(token: &str) -> Result<(Option<u32>, Option<i64>), Status> {
    if token.is_empty() {
        return Ok((None, None));
    }
    token
        .split_once(':')
        .and_then(|(p, m)| Some((Some(p.parse::<u32>().ok()?), Some(m.parse::<i64>().ok()?))))
        .ok_or_else(|| Status::invalid_argument("page_token: not a token of ListMembers"))
}

/// At most `want` members after `after` that `visible` admits, read `want` at a time by
/// `read(after, limit)` (in MPID order): fewer only when the partition holds no more.
fn visible_members<E>(
    mut after: Option<i64>,
    want: usize,
    mut read: impl FnMut(Option<i64>, usize) -> Result<Vec<i64>, E>,
    mut visible: impl FnMut(i64) -> Result<bool, E>,
) -> Result<Vec<i64>, E> {
    let mut out = Vec::new();
    while out.len() < want {
        let batch = read(after, want)?;
        let exhausted = batch.len() < want;
        for mpid in batch {
            after = Some(mpid);
            if visible(mpid)? {
                out.push(mpid);
                if out.len() == want {
                    return Ok(out);
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(out)
}

/// The identities of `types` of members of a partition this node owns, in their order (a
/// profile gone since is listed without any).
fn identities_here(
    engine: &audience_actors::engine::Engine,
    p: u32,
    mpids: &[i64],
    types: &[String],
) -> Result<Vec<pb::MemberIdentities>, Status> {
    let mut out = Vec::with_capacity(mpids.len());
    for &mpid in mpids {
        let profile = engine
            .store
            .load_profile(p, mpid)
            .map_err(convert::internal)?;
        let identities = profile
            .map(|profile| {
                types
                    .iter()
                    .filter_map(|t| {
                        let values = profile.identities.get(t)?;
                        (!values.is_empty()).then(|| {
                            (
                                t.clone(),
                                pb::StringList {
                                    values: values.clone(),
                                },
                            )
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(pb::MemberIdentities { mpid, identities });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members 1..=n in order, read as the store reads them.
    fn store(n: i64) -> impl FnMut(Option<i64>, usize) -> Result<Vec<i64>, ()> {
        move |after, limit| {
            Ok((after.map_or(1, |a| a + 1)..=n)
                .take(limit)
                .collect::<Vec<_>>())
        }
    }

    #[test]
    fn a_filtered_page_is_full_while_the_partition_holds_more_it_sees() {
        let even = |m: i64| Ok(m % 2 == 0);
        assert_eq!(visible_members(None, 3, store(20), even), Ok(vec![2, 4, 6]));
        // Resumed after the last one listed.
        assert_eq!(
            visible_members(Some(6), 3, store(20), even),
            Ok(vec![8, 10, 12])
        );
        // Short only at the end.
        assert_eq!(
            visible_members(Some(16), 3, store(20), even),
            Ok(vec![18, 20])
        );
        // Nothing visible: every member read once, none listed.
        let mut reads = 0;
        let counting = |after, limit| {
            reads += 1;
            store(10)(after, limit)
        };
        assert_eq!(
            visible_members(None, 4, counting, |_| Ok(false)),
            Ok(vec![])
        );
        assert_eq!(reads, 3, "10 members in reads of 4: 4, 4, 2");
    }

    #[test]
    fn a_page_token_is_a_partition_and_an_mpid() {
        assert_eq!(parse_members_token("").unwrap(), (None, None));
        assert_eq!(parse_members_token("3:-42").unwrap(), (Some(3), Some(-42)));
        for bad in ["3", "x:1", "3:y", ":"] {
            let e = parse_members_token(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
