//! Reads that answer for the whole cluster from any node (cluster step 3, item 2). A node holds
//! only the partitions it owns; asked for sizes, members, a profile or a membership history,
//! it answers for its own partitions and asks every other live node (the members topic lists
//! them with their gRPC addresses, see `audience_actors::cluster_view`) for theirs, then
//! merges the answers.
//!
//! Invariants:
//! - a call one node makes to another carries `x-audience-scope: node`: the node asked answers
//!   for its own partitions only and asks nobody, so calls never loop;
//! - the caller's `authorization` goes with those calls: the other nodes check it as this one
//!   did (a deployment shares its tokens), so a read grants nothing the caller lacks;
//! - a live node that does not answer fails a read that needs every partition (UNAVAILABLE,
//!   naming the node), rather than giving a partial figure; a look-up of one MPID passes over
//!   it when another node has the profile.

use audience_actors::cluster_view::{is_silent_after, now_ms, MembersTopic};
use audience_state::store::Partition;
use futures::future::join_all;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The header that marks a call of one node to another.
pub const SCOPE_HEADER: &str = "x-audience-scope";
const NODE_SCOPE: &str = "node";
/// With [`SCOPE_HEADER`], the one partition a node-scoped call reads (ListMembers).
pub const PARTITION_HEADER: &str = "x-audience-partition";
/// How long the list of the other nodes is reused before the members topic is read again.
const PEERS_FRESH_FOR: Duration = Duration::from_secs(2);
/// The longest a node waits for another's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a request is another node's, for the partitions of the node asked only.
pub fn node_scoped(metadata: &MetadataMap) -> bool {
    metadata
        .get(SCOPE_HEADER)
        .is_some_and(|v| v.as_bytes() == NODE_SCOPE.as_bytes())
}

/// The one partition a node-scoped call asks for, if it names one.
pub fn scoped_partition(metadata: &MetadataMap) -> Result<Option<Partition>, Status> {
    if !node_scoped(metadata) {
        return Ok(None);
    }
    match metadata.get(PARTITION_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                Status::invalid_argument(format!("{PARTITION_HEADER}: not a partition"))
            }),
    }
}

/// Another live node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    /// Its gRPC address, as it announces it (`host:port`).
    pub grpc: String,
    /// The partitions it owns, and those it is restoring (moving to it).
    pub partitions: Vec<Partition>,
    pub restoring: Vec<Partition>,
}

/// The cluster as a read sees it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// The other live nodes.
    pub peers: Vec<Peer>,
    /// The partitions of the input topics.
    pub partitions: u32,
}

/// The other nodes of this node's cluster, and how to call them.
pub struct Peers {
    members: MembersTopic,
    node_id: String,
    /// An input topic: its partition count is the cluster's.
    input_topic: String,
    /// Off on a node without the changelog: it reads every partition it has, alone.
    enabled: bool,
    /// `https` when the nodes serve TLS.
    scheme: &'static str,
    /// How this node reaches the others: the CA that signed their certificates (the system's
    /// roots without) and, where they require client certificates, this node's own.
    client: crate::auth::ClientOptions,
    /// A node not heard from for this long is not asked (`cluster.silent_after_ms`).
    silent_after: Duration,
    known: tokio::sync::Mutex<Option<(Instant, Cluster)>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub fn new(
        members: MembersTopic,
        node_id: String,
        input_topic: String,
        enabled: bool,
        (tls, client): (bool, crate::auth::ClientOptions),
        silent_after: Duration,
    ) -> Peers {
        Peers {
            members,
            node_id,
            input_topic,
            enabled,
            scheme: if tls { "https" } else { "http" },
            client,
            silent_after,
            known: tokio::sync::Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// This node's id, as the members topic names it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node answers for its own partitions only: alone (changelog off), or
    /// asked by another node.
    pub fn answers_alone(&self, metadata: &MetadataMap) -> bool {
        !self.enabled || node_scoped(metadata)
    }

    /// The other live nodes to ask for a read, none when this node answers alone.
    pub async fn others(&self, metadata: &MetadataMap) -> Result<Vec<Peer>, Status> {
        if self.answers_alone(metadata) {
            return Ok(Vec::new());
        }
        Ok(self.cluster().await?.peers)
    }

    /// The other live nodes and the partition count, read from the members topic and the
    /// input topic's metadata at most every [`PEERS_FRESH_FOR`].
    pub async fn cluster(&self) -> Result<Cluster, Status> {
        let mut known = self.known.lock().await;
        if let Some((at, cluster)) = known.as_ref() {
            if at.elapsed() < PEERS_FRESH_FOR {
                return Ok(cluster.clone());
            }
        }
        let members = self.members.clone();
        let topic = self.input_topic.clone();
        let (nodes, partitions) = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            let consumer: rdkafka::consumer::BaseConsumer = members
                .kafka
                .create()
                .map_err(|e| format!("a client for {topic}: {e}"))?;
            let partitions =
                audience_actors::catalog_topic::partition_count(consumer.client(), &topic)
                    .map_err(|e| format!("topic {topic}: {e}"))?;
            Ok::<_, String>((members.read()?, partitions))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(format!("the cluster's nodes are unknown: {e}")))?;
        let now = now_ms();
        let peers = nodes
            .into_values()
            .filter(|a| a.node_id != self.node_id && !is_silent_after(a, now, self.silent_after))
            .map(|a| Peer {
                node_id: a.node_id,
                grpc: a.grpc,
                partitions: a.partitions,
                restoring: a.restoring,
            })
            .collect();
        let cluster = Cluster {
            peers,
            partitions: partitions.max(0) as u32,
        };
        *known = Some((Instant::now(), cluster.clone()));
        Ok(cluster)
    }

    /// A channel to a node, connected at its first call and kept.
    pub fn channel(&self, peer: &Peer) -> Result<Channel, Status> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(&peer.grpc) {
            return Ok(channel.clone());
        }
        // The channel carries no token: the caller's goes with each call (`request`).
        let url = format!("{}://{}", self.scheme, peer.grpc);
        let channel = self
            .client
            .endpoint(&url)
            .map_err(|e| Status::internal(format!("node {}: {e}", peer.node_id)))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        channels.insert(peer.grpc.clone(), channel.clone());
        Ok(channel)
    }

    /// `message` as a call to another node: node-scoped, with the caller's authorization.
    pub fn request<T>(&self, caller: &MetadataMap, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(SCOPE_HEADER, NODE_SCOPE.parse().expect("an ASCII value"));
        if let Some(authorization) = caller.get("authorization") {
            metadata.insert("authorization", authorization.clone());
        }
        request
    }

    /// Calls every node of `peers` at once; the answers in their order.
    pub async fn ask<T, F, Fut>(&self, peers: &[Peer], call: F) -> Vec<Result<T, Status>>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let answers = join_all(peers.iter().map(|peer| {
            let channel = self.channel(peer);
            let call = &call;
            async move {
                let answer = call(channel?).await;
                answer
                    .map(|r| r.into_inner())
                    .map_err(|e| unanswered(peer, &e))
            }
        }))
        .await;
        // A node that did not answer may have died: the next read looks at the members topic
        // again rather than at the list kept.
        if answers
            .iter()
            .any(|a| matches!(a, Err(e) if e.code() == tonic::Code::Unavailable))
        {
            *self.known.lock().await = None;
        }
        answers
    }

    /// This node's answer, or when it lacks what was asked (`missing`), the first other
    /// node's that has it ([`first_found`]).
    pub async fn here_or_elsewhere<T, F, Fut>(
        &self,
        caller: &MetadataMap,
        here: Result<T, Status>,
        missing: fn(&Status) -> bool,
        ask: F,
    ) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let lacking = match here {
            Err(e) if missing(&e) => e,
            here => return here,
        };
        let peers = self.others(caller).await?;
        first_found(self.ask(&peers, ask).await, lacking)
    }

    /// [`Peers::ask`] where every answer is needed: the first failure fails the read.
    pub async fn ask_every<T, F, Fut>(&self, peers: &[Peer], call: F) -> Result<Vec<T>, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.ask(peers, call).await.into_iter().collect()
    }
}

/// A node's failure to answer, as the caller sees it.
fn unanswered(peer: &Peer, e: &Status) -> Status {
    let why = format!(
        "node {} ({}) did not answer for its partitions {:?}: {}",
        peer.node_id,
        peer.grpc,
        peer.partitions,
        e.message()
    );
    match e.code() {
        // Its answer, passed on: a profile it does not have, a refused token.
        tonic::Code::NotFound
        | tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied
        | tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::OutOfRange => Status::new(e.code(), e.message().to_string()),
        _ => Status::unavailable(why),
    }
}

/// The first answer found among a look-up's: this node's, else another node's; NOT_FOUND only
/// when every node answered that it has none.
pub fn first_found<T>(answers: Vec<Result<T, Status>>, not_found: Status) -> Result<T, Status> {
    let mut failure = None;
    for answer in answers {
        match answer {
            Ok(found) => return Ok(found),
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    Err(failure.unwrap_or(not_found))
}

/// One preview of an edit from the previews of each node's partitions: counts summed, the
/// first `sample` MPIDs of each side (in MPID order), and each side's reason given for its
/// first MPID.
pub fn merge_previews(
    parts: Vec<audience_proto::v1::UpdatePreview>,
    sample: usize,
) -> audience_proto::v1::UpdatePreview {
    use audience_proto::v1::Explanation;
    let mut merged = audience_proto::v1::UpdatePreview::default();
    let mut reasons: Vec<Explanation> = Vec::new();
    for part in parts {
        merged.audience_id = part.audience_id;
        merged.members_now += part.members_now;
        merged.would_leave += part.would_leave;
        merged.would_enter += part.would_enter;
        merged.profiles_scanned += part.profiles_scanned;
        merged.leaving_sample.extend(part.leaving_sample);
        merged.entering_sample.extend(part.entering_sample);
        reasons.extend(part.leaving_reason);
        reasons.extend(part.entering_reason);
    }
    for side in [&mut merged.leaving_sample, &mut merged.entering_sample] {
        side.sort_unstable();
        side.truncate(sample);
    }
    let reason_for = |first: Option<&i64>| {
        let first = *first?;
        reasons.iter().find(|r| r.mpid == first).cloned()
    };
    merged.leaving_reason = reason_for(merged.leaving_sample.first());
    merged.entering_reason = reason_for(merged.entering_sample.first());
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use audience_proto::v1 as pb;

    #[test]
    fn previews_of_each_node_make_one_of_the_cluster() {
        let reason = |mpid| pb::Explanation {
            mpid,
            ..Default::default()
        };
        let a = pb::UpdatePreview {
            audience_id: 4,
            members_now: 10,
            would_leave: 3,
            would_enter: 1,
            leaving_sample: vec![5, 9, 12],
            entering_sample: vec![40],
            leaving_reason: Some(reason(5)),
            entering_reason: Some(reason(40)),
            profiles_scanned: 100,
        };
        let b = pb::UpdatePreview {
            audience_id: 4,
            members_now: 7,
            would_leave: 2,
            would_enter: 0,
            leaving_sample: vec![2, 30],
            entering_sample: vec![],
            leaving_reason: Some(reason(2)),
            entering_reason: None,
            profiles_scanned: 80,
        };
        let merged = merge_previews(vec![a, b], 3);
        assert_eq!(merged.audience_id, 4);
        assert_eq!(
            (merged.members_now, merged.would_leave, merged.would_enter),
            (17, 5, 1)
        );
        assert_eq!(merged.profiles_scanned, 180);
        assert_eq!(merged.leaving_sample, [2, 5, 9]);
        assert_eq!(merged.entering_sample, [40]);
        assert_eq!(merged.leaving_reason.map(|r| r.mpid), Some(2));
        assert_eq!(merged.entering_reason.map(|r| r.mpid), Some(40));
    }

    #[test]
    fn a_node_scoped_call_names_its_partition() {
        let mut metadata = MetadataMap::new();
        assert!(!node_scoped(&metadata));
        assert_eq!(scoped_partition(&metadata).unwrap(), None);
        metadata.insert(PARTITION_HEADER, "3".parse().unwrap());
        assert_eq!(
            scoped_partition(&metadata).unwrap(),
            None,
            "a partition header counts only on another node's call"
        );
        metadata.insert(SCOPE_HEADER, "node".parse().unwrap());
        assert!(node_scoped(&metadata));
        assert_eq!(scoped_partition(&metadata).unwrap(), Some(3));
        metadata.insert(PARTITION_HEADER, "x".parse().unwrap());
        assert!(scoped_partition(&metadata).is_err());
    }

    #[test]
    fn a_lookup_is_found_on_any_node_and_not_found_only_when_every_node_says_so() {
        let not_found = || Status::not_found("mpid 7: no profile");
        let down = || Status::unavailable("node b did not answer");
        assert_eq!(
            first_found(vec![Err(not_found()), Ok(5), Err(down())], not_found()).unwrap(),
            5
        );
        let missing = first_found::<u8>(vec![Err(not_found()), Err(not_found())], not_found());
        assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
        let unknown = first_found::<u8>(vec![Err(not_found()), Err(down())], not_found());
        assert_eq!(unknown.unwrap_err().code(), tonic::Code::Unavailable);
    }
}
