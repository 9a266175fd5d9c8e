//! The gRPC `OutputService`: output configurations (secrets redacted), connections with their
//! figures and faults, bulk connect and resume. Each node delivers the partitions it owns and
//! meets its own faults: a connection's figures and faults, and the fault list, are those of
//! every live node (asked through [`crate::peers`]), whichever node is asked.

use crate::auth::caller_name;
use crate::convert::{self, json_to_struct, struct_to_json};
use crate::peers::Peers;
use audience_actors::output_kinds::{GrpcHub, StreamBatch};
use audience_actors::output_registry::OutputRegistry;
use audience_proto::v1 as pb;
use audience_state::outputs::{Connection, ConnectionStatus, Fault, OutputConfig};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct OutputServices {
    pub outputs: Arc<OutputRegistry>,
    pub node: Arc<audience_actors::node::Node>,
    pub peers: Arc<Peers>,
}

fn settings_of(s: Option<prost_types::Struct>) -> BTreeMap<String, serde_json::Value> {
    match s.map(|s| struct_to_json(&s)) {
        Some(serde_json::Value::Object(map)) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

fn settings_struct(s: &BTreeMap<String, serde_json::Value>) -> prost_types::Struct {
    json_to_struct(&serde_json::Value::Object(
        s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    ))
}

fn status_of(s: i32) -> Result<ConnectionStatus, Status> {
    match pb::ConnectionStatus::try_from(s) {
        Ok(pb::ConnectionStatus::Unspecified) | Ok(pb::ConnectionStatus::Sending) => {
            Ok(ConnectionStatus::Sending)
        }
        Ok(pb::ConnectionStatus::Inactive) => Ok(ConnectionStatus::Inactive),
        Err(_) => Err(Status::invalid_argument(format!(
            "status: {s} is not a connection status"
        ))),
    }
}

fn fault(f: &Fault, c: Option<&Connection>, node_id: &str) -> pb::Fault {
    pb::Fault {
        node_id: node_id.to_string(),
        connection_id: f.connection_id,
        status: f.status.unwrap_or_default(),
        body_excerpt: f.body_excerpt.clone(),
        message: f.message.clone(),
        at_ms: f.at_ms,
        attempts: f.attempts,
        audience_id: c.map_or(0, |c| c.audience_id),
        output_id: c.map_or(0, |c| c.output_id),
    }
}

/// A fault's place in the list: its connection, then the node that met it (each node keeps one
/// fault per connection); as a page token `connection/node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FaultKey(u64, String);

impl FaultKey {
    fn of(f: &pb::Fault) -> FaultKey {
        FaultKey(f.connection_id, f.node_id.clone())
    }
}

impl std::fmt::Display for FaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

impl std::str::FromStr for FaultKey {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (connection, node) = s.split_once('/').ok_or(())?;
        Ok(FaultKey(connection.parse().map_err(|_| ())?, node.into()))
    }
}

/// The page of the cluster's faults `asked` names (this node's and every other live node's,
/// each asked for the same page of its own), and the next page's token. The first `size` of
/// the cluster's are among the first `size` of each node's; and when a node has more than it
/// answered, so has the cluster.
pub(crate) async fn faults_page(
    outputs: &OutputRegistry,
    peers: &Peers,
    caller: &MetadataMap,
    asked: pb::ListFaultsRequest,
) -> Result<(Vec<pb::Fault>, String), Status> {
    let page = crate::paging::page::<FaultKey>(
        "ListFaults",
        asked.page_size,
        &asked.page_token,
        crate::paging::DEFAULT_PAGE,
        crate::paging::MAX_PAGE,
    )?;
    let connections = outputs.connections().map_err(convert::status)?;
    let faults: Vec<pb::Fault> = outputs
        .faults()
        .map_err(convert::status)?
        .iter()
        .map(|f| {
            let c = connections.iter().find(|c| c.id == f.connection_id);
            fault(f, c, peers.node_id())
        })
        .collect();
    let others = peers.others(caller).await?;
    let answers = peers
        .ask_every(&others, |channel| {
            let request = peers.request(caller, asked.clone());
            async move {
                pb::output_service_client::OutputServiceClient::new(channel)
                    .list_faults(request)
                    .await
            }
        })
        .await?;
    Ok(merge_fault_pages(faults, answers, &page))
}

/// The page of the cluster's faults out of this node's (`mine`, all of them) and the other
/// nodes' answers for the same page, with the next page's token.
fn merge_fault_pages(
    mut faults: Vec<pb::Fault>,
    answers: Vec<pb::ListFaultsResponse>,
    page: &crate::paging::Page<FaultKey>,
) -> (Vec<pb::Fault>, String) {
    let more_elsewhere = answers.iter().any(|a| !a.next_page_token.is_empty());
    faults.extend(answers.into_iter().flat_map(|a| a.faults));
    faults.sort_by_key(FaultKey::of);
    let (shown, mut next) = crate::paging::take(faults, page, FaultKey::of);
    if next.is_empty() && more_elsewhere {
        next = shown
            .last()
            .map(|f| FaultKey::of(f).to_string())
            .unwrap_or_default();
    }
    (shown, next)
}

/// Every fault of the cluster, page after page: what a connection's or an output's figures
/// count.
pub(crate) async fn cluster_faults(
    outputs: &OutputRegistry,
    peers: &Peers,
    caller: &MetadataMap,
) -> Result<Vec<pb::Fault>, Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let asked = pb::ListFaultsRequest {
            page_size: crate::paging::MAX_PAGE as u32,
            page_token,
        };
        let (faults, next) = faults_page(outputs, peers, caller, asked).await?;
        all.extend(faults);
        if next.is_empty() {
            return Ok(all);
        }
        page_token = next;
    }
}

/// A connection as every node delivering it shows it: faulted when one node is (its latest
/// fault shown), figures summed, its first sync done when every node's is.
fn merge_connection(mine: &mut pb::Connection, theirs: pb::Connection) {
    if theirs.faulted {
        let later = |f: &Option<pb::Fault>| f.as_ref().map_or(i64::MIN, |f| f.at_ms);
        if !mine.faulted || later(&theirs.fault) > later(&mine.fault) {
            mine.fault = theirs.fault;
        }
        mine.faulted = true;
    }
    if let (Some(m), Some(t)) = (mine.figures.as_mut(), theirs.figures) {
        m.size += t.size;
        m.adds_24h += t.adds_24h;
        m.drops_24h += t.drops_24h;
        m.sent += t.sent;
        m.failed += t.failed;
        m.retried += t.retried;
        m.unsendable += t.unsendable;
        m.initial_sync_done &= t.initial_sync_done;
        let changed = (m.adds_24h + m.drops_24h) as f64;
        m.volatility = if m.size == 0 {
            0.0
        } else {
            changed / m.size as f64
        };
    }
}

impl OutputServices {
    /// An output as the API shows it; `connections` are every connection and `faults` the
    /// cluster's (read once per request, however many outputs it shows).
    fn output_message(
        &self,
        o: &OutputConfig,
        connections: &[Connection],
        faults: &[pb::Fault],
    ) -> Result<pb::OutputConfig, Status> {
        let shown = o.redacted();
        let mine: Vec<&Connection> = connections.iter().filter(|c| c.output_id == o.id).collect();
        let faulted = mine
            .iter()
            .filter(|c| faults.iter().any(|f| f.connection_id == c.id))
            .count();
        Ok(pb::OutputConfig {
            id: shown.id,
            name: shown.name.clone(),
            kind: shown.kind.clone(),
            settings: Some(settings_struct(&shown.settings)),
            secrets: shown.secrets.clone().into_iter().collect(),
            accepted_identities: shown.accepted_identities.clone(),
            created_at_ms: shown.created_at_ms,
            updated_at_ms: shown.updated_at_ms,
            connections: mine.len() as u32,
            faulted_connections: faulted as u32,
        })
    }

    async fn one_output(
        &self,
        caller: &MetadataMap,
        o: &OutputConfig,
    ) -> Result<Response<pb::OutputConfig>, Status> {
        let connections = self.outputs.connections().map_err(convert::status)?;
        let faults = cluster_faults(&self.outputs, &self.peers, caller).await?;
        Ok(Response::new(self.output_message(
            o,
            &connections,
            &faults,
        )?))
    }

    /// Connections as every live node shows them (`asked`: the same call, to the others).
    async fn cluster_connections(
        &self,
        caller: &MetadataMap,
        mut shown: Vec<pb::Connection>,
        asked: pb::ListConnectionsRequest,
    ) -> Result<Vec<pb::Connection>, Status> {
        let others = self.peers.others(caller).await?;
        let answers = self
            .peers
            .ask_every(&others, |channel| {
                let request = self.peers.request(caller, asked.clone());
                async move {
                    pb::output_service_client::OutputServiceClient::new(channel)
                        .list_connections(request)
                        .await
                }
            })
            .await?;
        for theirs in answers.into_iter().flat_map(|a| a.connections) {
            if let Some(mine) = shown.iter_mut().find(|c| c.id == theirs.id) {
                merge_connection(mine, theirs);
            }
        }
        Ok(shown)
    }

    fn connection_message(&self, c: &Connection) -> Result<pb::Connection, Status> {
        let stored_fault = self.outputs.fault(c.id).map_err(convert::status)?;
        let running = self.outputs.deliveries.figures(c.id).unwrap_or_default();
        let changes = self
            .outputs
            .deliveries
            .change_figures(&self.node.engine, c.id)
            .unwrap_or_default();
        Ok(pb::Connection {
            id: c.id,
            audience_id: c.audience_id,
            output_id: c.output_id,
            status: match c.status {
                ConnectionStatus::Sending => pb::ConnectionStatus::Sending,
                ConnectionStatus::Inactive => pb::ConnectionStatus::Inactive,
            } as i32,
            settings: Some(settings_struct(&c.settings)),
            shared_attributes: c.shared_attributes.clone(),
            created_at_ms: c.created_at_ms,
            variation: c.variation.clone(),
            faulted: stored_fault.is_some(),
            fault: stored_fault
                .as_ref()
                .map(|f| fault(f, Some(c), self.peers.node_id())),
            figures: Some(pb::ConnectionFigures {
                size: changes.size,
                adds_24h: changes.adds_24h,
                drops_24h: changes.drops_24h,
                volatility: changes.volatility_24h,
                sent: running.sent,
                failed: running.failed,
                retried: running.retried,
                unsendable: running.unsendable,
                initial_sync_done: running.initial_sync_done,
            }),
        })
    }

    fn connection_of(c: pb::Connection) -> Result<Connection, Status> {
        Ok(Connection {
            id: c.id,
            audience_id: c.audience_id,
            output_id: c.output_id,
            status: status_of(c.status)?,
            settings: settings_of(c.settings),
            shared_attributes: c.shared_attributes,
            created_at_ms: 0,
            updated_at_ms: 0,
            variation: c.variation.trim().to_string(),
        })
    }

    fn config_of(o: pb::OutputConfig) -> OutputConfig {
        OutputConfig {
            id: o.id,
            name: o.name,
            kind: o.kind.trim().to_lowercase(),
            settings: settings_of(o.settings),
            secrets: o.secrets.into_iter().collect(),
            accepted_identities: o
                .accepted_identities
                .iter()
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }
}

fn batch_message(b: StreamBatch) -> pb::DeliveryBatch {
    pb::DeliveryBatch {
        batch_id: b.batch_id,
        connection_id: b.audience.connection_id,
        audience_id: b.audience.id,
        audience_name: b.audience.name,
        r#type: b.kind,
        items: b
            .items
            .into_iter()
            .map(|i| pb::DeliveryItem {
                action: i.action,
                mpid: i.mpid,
                identities: i
                    .identities
                    .into_iter()
                    .map(|(t, values)| (t, pb::StringList { values }))
                    .collect(),
                attributes: Some(json_to_struct(&serde_json::Value::Object(
                    i.attributes.into_iter().collect(),
                ))),
                idempotency_key: i.idempotency_key,
                version: i.version,
                event_time_ms: i.event_time_ms,
                variation: i.variation,
            })
            .collect(),
        variation: b.audience.variation,
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::DeliveryBatch, Status>> + Send>>;

#[tonic::async_trait]
impl pb::output_service_server::OutputService for OutputServices {
    type ReceiveStream = BatchStream;

    async fn receive(
        &self,
        req: Request<tonic::Streaming<pb::ReceiveRequest>>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        use pb::receive_request::Kind;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("connection_id: the first message names the connection")
        })?;
        let Some(Kind::ConnectionId(id)) = first.kind else {
            return Err(Status::invalid_argument(
                "connection_id: the first message names the connection",
            ));
        };
        let connection = self.outputs.connection(id).map_err(convert::status)?;
        let output = self
            .outputs
            .output(connection.output_id)
            .map_err(convert::status)?;
        if output.kind != "grpc" {
            return Err(Status::failed_precondition(format!(
                "connection_id: connection {id} goes to a {} output, not grpc",
                output.kind
            )));
        }
        let hub = GrpcHub::global();
        let (generation, mut batches) = hub.attach(id);
        let pending: Arc<parking_lot::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>> =
            Arc::default();
        let acks = pending.clone();
        // Acknowledgements resolve the batches in flight; the end of the client's stream ends
        // the attachment.
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(Kind::AckBatchId(batch)) = m.kind {
                    if let Some(acked) = acks.lock().remove(&batch) {
                        let _ = acked.send(());
                    }
                }
            }
            GrpcHub::global().detach(id, generation);
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some((batch, acked)) = batches.recv().await {
                pending.lock().insert(batch.batch_id, acked);
                if tx.send(Ok(batch_message(batch))).await.is_err() {
                    break;
                }
            }
            GrpcHub::global().detach(id, generation);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_output(
        &self,
        req: Request<pb::OutputConfig>,
    ) -> Result<Response<pb::OutputConfig>, Status> {
        let caller = req.metadata().clone();
        let created = self
            .outputs
            .create_output(&caller_name(&req), Self::config_of(req.into_inner()))
            .await
            .map_err(convert::status)?;
        self.one_output(&caller, &created).await
    }

    async fn get_output(
        &self,
        req: Request<pb::OutputIdRequest>,
    ) -> Result<Response<pb::OutputConfig>, Status> {
        let caller = req.metadata().clone();
        let o = self
            .outputs
            .output(req.into_inner().id)
            .map_err(convert::status)?;
        self.one_output(&caller, &o).await
    }

    async fn list_outputs(
        &self,
        req: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        let caller = req.metadata().clone();
        let r = req.into_inner();
        let page = crate::paging::page::<u64>(
            "ListOutputs",
            r.page_size,
            &r.page_token,
            crate::paging::DEFAULT_PAGE,
            crate::paging::MAX_PAGE,
        )?;
        let mut all = self.outputs.outputs().map_err(convert::status)?;
        all.sort_by_key(|o| o.id);
        let (shown, next_page_token) = crate::paging::take(all, &page, |o| o.id);
        let connections = self.outputs.connections().map_err(convert::status)?;
        let faults = cluster_faults(&self.outputs, &self.peers, &caller).await?;
        let outputs = shown
            .iter()
            .map(|o| self.output_message(o, &connections, &faults))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListOutputsResponse {
            outputs,
            next_page_token,
        }))
    }

    async fn update_output(
        &self,
        req: Request<pb::OutputConfig>,
    ) -> Result<Response<pb::OutputConfig>, Status> {
        let caller = req.metadata().clone();
        let updated = self
            .outputs
            .update_output(&caller_name(&req), Self::config_of(req.into_inner()))
            .await
            .map_err(convert::status)?;
        self.one_output(&caller, &updated).await
    }

    async fn delete_output(
        &self,
        req: Request<pb::OutputIdRequest>,
    ) -> Result<Response<pb::DeleteOutputResponse>, Status> {
        self.outputs
            .delete_output(&caller_name(&req), req.into_inner().id)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::DeleteOutputResponse {}))
    }

    async fn create_connection(
        &self,
        req: Request<pb::Connection>,
    ) -> Result<Response<pb::Connection>, Status> {
        let created = self
            .outputs
            .connect(&caller_name(&req), Self::connection_of(req.into_inner())?)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(self.connection_message(&created)?))
    }

    async fn get_connection(
        &self,
        req: Request<pb::ConnectionIdRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let caller = req.metadata().clone();
        let c = self
            .outputs
            .connection(req.into_inner().id)
            .map_err(convert::status)?;
        let asked = pb::ListConnectionsRequest {
            audience_id: c.audience_id,
            output_id: c.output_id,
            ..Default::default()
        };
        let shown = vec![self.connection_message(&c)?];
        let mut shown = self.cluster_connections(&caller, shown, asked).await?;
        Ok(Response::new(shown.remove(0)))
    }

    async fn list_connections(
        &self,
        req: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let caller = req.metadata().clone();
        let r = req.into_inner();
        let page = crate::paging::page::<u64>(
            "ListConnections",
            r.page_size,
            &r.page_token,
            crate::paging::DEFAULT_PAGE,
            crate::paging::MAX_PAGE,
        )?;
        let mut matching: Vec<Connection> = self
            .outputs
            .connections()
            .map_err(convert::status)?
            .into_iter()
            .filter(|c| r.audience_id == 0 || c.audience_id == r.audience_id)
            .filter(|c| r.output_id == 0 || c.output_id == r.output_id)
            .collect();
        matching.sort_by_key(|c| c.id);
        let (shown, next_page_token) = crate::paging::take(matching, &page, |c| c.id);
        let shown = shown
            .iter()
            .map(|c| self.connection_message(c))
            .collect::<Result<_, _>>()?;
        // The other nodes answer the same page: the connections are the catalog's.
        let connections = self.cluster_connections(&caller, shown, r).await?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections,
            next_page_token,
        }))
    }

    async fn update_connection(
        &self,
        req: Request<pb::Connection>,
    ) -> Result<Response<pb::Connection>, Status> {
        let updated = self
            .outputs
            .update_connection(&caller_name(&req), Self::connection_of(req.into_inner())?)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(self.connection_message(&updated)?))
    }

    async fn delete_connection(
        &self,
        req: Request<pb::ConnectionIdRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>, Status> {
        self.outputs
            .disconnect(&caller_name(&req), req.into_inner().id)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::DeleteConnectionResponse {}))
    }

    async fn bulk_connect(
        &self,
        req: Request<pb::BulkConnectRequest>,
    ) -> Result<Response<pb::BulkConnectResponse>, Status> {
        let by = caller_name(&req);
        let r = req.into_inner();
        let status = status_of(r.status)?;
        self.outputs.output(r.output_id).map_err(convert::status)?;
        let results = self
            .outputs
            .bulk_connect(
                &by,
                r.output_id,
                &r.audience_ids,
                status,
                settings_of(r.settings),
                r.shared_attributes,
            )
            .await
            .into_iter()
            .map(|(audience_id, result)| match result {
                Ok(c) => pb::BulkConnectResult {
                    audience_id,
                    ok: true,
                    connection_id: c.id,
                    error: String::new(),
                },
                Err(e) => pb::BulkConnectResult {
                    audience_id,
                    ok: false,
                    connection_id: 0,
                    error: e.to_string(),
                },
            })
            .collect();
        Ok(Response::new(pb::BulkConnectResponse { results }))
    }

    async fn list_faults(
        &self,
        req: Request<pb::ListFaultsRequest>,
    ) -> Result<Response<pb::ListFaultsResponse>, Status> {
        let caller = req.metadata().clone();
        let (faults, next_page_token) =
            faults_page(&self.outputs, &self.peers, &caller, req.into_inner()).await?;
        Ok(Response::new(pb::ListFaultsResponse {
            faults,
            next_page_token,
        }))
    }

    async fn resume(
        &self,
        req: Request<pb::ConnectionIdRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let c = self
            .outputs
            .resume(&caller_name(&req), req.into_inner().id)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(self.connection_message(&c)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::Page;

    fn fault(connection_id: u64, node: &str) -> pb::Fault {
        pb::Fault {
            connection_id,
            node_id: node.into(),
            ..Default::default()
        }
    }

    /// What node `node` answers for `page`: its page of `connections`, and a token when it
    /// holds more.
    fn answer(node: &str, connections: &[u64], page: &Page<FaultKey>) -> pb::ListFaultsResponse {
        let all = connections.iter().map(|&c| fault(c, node)).collect();
        let (faults, next_page_token) = crate::paging::take(all, page, FaultKey::of);
        pb::ListFaultsResponse {
            faults,
            next_page_token,
        }
    }

    #[test]
    fn the_clusters_faults_read_back_whole_page_by_page_in_connection_then_node_order() {
        let mine = [1, 4, 5, 6, 7];
        let theirs = [2, 3, 4, 8, 9, 10, 11];
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let page = Page { size: 3, after };
            let local = mine.iter().map(|&c| fault(c, "a")).collect();
            let (faults, next) = merge_fault_pages(local, vec![answer("b", &theirs, &page)], &page);
            assert!(faults.len() <= 3);
            seen.extend(faults.iter().map(|f| (f.connection_id, f.node_id.clone())));
            if next.is_empty() {
                break;
            }
            after = Some(next.parse().unwrap());
        }
        let mut expected: Vec<(u64, String)> = mine
            .iter()
            .map(|&c| (c, "a".to_string()))
            .chain(theirs.iter().map(|&c| (c, "b".to_string())))
            .collect();
        expected.sort();
        assert_eq!(seen, expected);
        assert_eq!(
            "4/node-b".parse::<FaultKey>(),
            Ok(FaultKey(4, "node-b".into()))
        );
        assert!("x/node-b".parse::<FaultKey>().is_err());
    }
}
