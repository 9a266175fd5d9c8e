//! What the audience calls show beside each definition: its size, adds and drops over the
//! whole cluster, its calculation while it is calculating, and its connections and faults.

use crate::blocking::off_runtime;
use crate::convert;
use crate::grpc::Services;
use audience_actors::latency::DeltaLatency;
use audience_actors::stats::Figures;
use audience_proto::v1 as pb;
use audience_state::catalog::AudienceStatus;
use std::collections::HashMap;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status};

impl Services {
    /// Size, adds and drops of the last 24 hours of audiences, and their delta latencies of
    /// the last minutes, over the whole cluster: this node's partitions, and every other live
    /// node's (asked for theirs).
    pub(crate) async fn cluster_figures(
        &self,
        caller: &MetadataMap,
        ids: &[u64],
    ) -> Result<HashMap<u64, (Figures, DeltaLatency)>, Status> {
        let (engine, asked_ids) = (self.node.engine.clone(), ids.to_vec());
        // Sizes are read from the store.
        let here = off_runtime(move || {
            let figures = engine.figures(&asked_ids).map_err(convert::internal)?;
            let ids_here: Vec<u64> = figures.iter().map(|(id, _)| *id).collect();
            Ok((figures, engine.latencies(&ids_here)))
        });
        let (figures, mut latencies) = here.await?;
        let mut sums: HashMap<u64, ((u64, u64, u64), DeltaLatency)> = HashMap::new();
        for (id, f) in figures {
            let latency = latencies.remove(&id).unwrap_or_default();
            sums.insert(id, ((f.size, f.adds_24h, f.drops_24h), latency));
        }
        let peers = self.peers.others(caller).await?;
        let asked = pb::GetAudienceStatsRequest {
            audience_ids: ids.to_vec(),
        };
        let answers = self
            .peers
            .ask_every(&peers, |channel| {
                let request = self.peers.request(caller, asked.clone());
                async move {
                    pb::membership_service_client::MembershipServiceClient::new(channel)
                        .get_audience_stats(request)
                        .await
                }
            })
            .await?;
        for answer in answers {
            for a in answer.audiences {
                let (Some(stats), Some((sum, latency))) = (a.stats, sums.get_mut(&a.audience_id))
                else {
                    continue;
                };
                sum.0 += stats.size;
                sum.1 += stats.adds_24h;
                sum.2 += stats.drops_24h;
                latency.merge(&convert::latency_of(&stats));
            }
        }
        Ok(sums
            .into_iter()
            .map(|(id, ((size, adds, drops), latency))| {
                (id, (Figures::new(size, adds, drops), latency))
            })
            .collect())
    }

    pub(crate) async fn with_figures(
        &self,
        caller: &MetadataMap,
        records: Vec<audience_state::catalog::AudienceRecord>,
    ) -> Result<Vec<pb::Audience>, Status> {
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        let figures = self.cluster_figures(caller, &ids).await?;
        let active: Vec<(u64, u64)> = records
            .iter()
            .filter(|r| r.status == AudienceStatus::Active)
            .map(|r| (r.id, r.revision))
            .collect();
        // Store reads (the partitions' evaluated revisions, the connections): on the
        // blocking pool, as every store read of the API (review R4).
        let (calculations, connections) = {
            let (engine, owned) = (self.node.engine.clone(), self.node.owned());
            let outputs = self.outputs.clone();
            off_runtime(move || {
                let calculations = engine
                    .calculations(&owned, &active)
                    .map_err(convert::internal)?;
                let connections = outputs.connections().map_err(convert::status)?;
                Ok((calculations, connections))
            })
            .await?
        };
        let estimates = {
            let mut cached = self.node.engine.estimates.lock();
            // Estimates of finished calculations are not shown again.
            cached.retain(|(id, _), _| calculations.contains_key(id));
            cached.clone()
        };
        let faults =
            crate::grpc_outputs::cluster_faults(&self.outputs, &self.peers, caller).await?;
        Ok(records
            .iter()
            .map(|r| {
                let mut a = convert::audience(r, figures.get(&r.id));
                if let Some(c) = calculations.get(&r.id) {
                    a.status = pb::AudienceStatus::Calculating as i32;
                    let mut calculation = convert::calculation(c);
                    calculation.estimate =
                        estimates.get(&(r.id, r.revision)).map(convert::estimate);
                    a.calculation = Some(calculation);
                }
                let mine: Vec<_> = connections
                    .iter()
                    .filter(|c| c.audience_id == r.id)
                    .collect();
                a.connected_outputs = mine.len() as u32;
                a.faulted_connections = mine
                    .iter()
                    .filter(|c| faults.iter().any(|f| f.connection_id == c.id))
                    .count() as u32;
                a
            })
            .collect())
    }

    pub(crate) async fn one(
        &self,
        caller: &MetadataMap,
        record: audience_state::catalog::AudienceRecord,
    ) -> Result<Response<pb::Audience>, Status> {
        let mut shown = self.with_figures(caller, vec![record]).await?;
        Ok(Response::new(shown.remove(0)))
    }
}
