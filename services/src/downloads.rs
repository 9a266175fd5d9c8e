//! Audience downloads (README: "Downloads"): `DownloadService`. A download is a job on the
//! node asked: it pages through the members of each audience selected over the whole cluster
//! (`ListMembers` with identities, as the caller: a token limited to workspaces gets what it
//! sees), writes each file's rows to a part file (a sample is kept in a reservoir until the
//! end), then packs the parts and `manifest.json` into a ZIP in the downloads directory, which
//! `FetchDownload` streams.
//!
//! Invariants:
//! - memory is bounded by a page of members, or by the sample; never by the audience's size;
//! - a ZIP appears under its name only once complete (written as `.partial`, then renamed);
//! - a download is seen and fetched by the token that started it, or by a token without
//!   workspaces (an administrator); to any other it does not exist.

use crate::auth::{caller_name, Caller};
use crate::grpc::Services;
use crate::workspace_view::WorkspaceView;
use audience_proto::v1 as pb;
use audience_state::download::{
    archive_name, download_id, file_name, identity_types, member_rows, FileManifest, Manifest,
    Reservoir, CSV_HEADER, MAX_FILES, MAX_SAMPLE_USERS,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Members read per page.
const PAGE_MEMBERS: u32 = 5_000;
/// Bytes per chunk of `FetchDownload`.
const CHUNK_BYTES: usize = 1024 * 1024;
/// A sample's users over all its files, held in memory until written.
const MAX_SAMPLE_TOTAL: u64 = 1_000_000;
/// Downloads a node remembers (older ones are forgotten; their files stay).
const MAX_JOBS: usize = 200;

struct Job {
    download: pb::Download,
    /// The token that started it, and whether it was limited to workspaces.
    owner: String,
    path: PathBuf,
}

/// The downloads of this node.
pub struct Downloads {
    dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Arc<Mutex<Job>>>>,
}

impl Downloads {
    pub fn new(dir: PathBuf) -> anyhow::Result<Downloads> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("storage.downloads_dir {}: {e}", dir.display()))?;
        Ok(Downloads {
            dir,
            jobs: Mutex::new(BTreeMap::new()),
        })
    }

    /// A job the caller may see.
    fn job(&self, id: &str, caller: &Caller) -> Result<Arc<Mutex<Job>>, Status> {
        let job = self.jobs.lock().get(id).cloned();
        match job {
            Some(job) if may_see(&job.lock(), caller) => Ok(job),
            _ => Err(Status::not_found(format!(
                "download {id} not found on this node"
            ))),
        }
    }

    fn remember(&self, job: Arc<Mutex<Job>>) {
        let mut jobs = self.jobs.lock();
        let id = job.lock().download.id.clone();
        jobs.insert(id, job);
        while jobs.len() > MAX_JOBS {
            let oldest = jobs
                .iter()
                .min_by_key(|(_, j)| j.lock().download.started_at_ms)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => jobs.remove(&id),
                None => break,
            };
        }
    }
}

fn may_see(job: &Job, caller: &Caller) -> bool {
    caller.workspaces.is_empty() || job.owner == caller.name
}

/// The caller of a request: the token's, or an unlimited anonymous one on an engine without
/// tokens.
fn caller_of<T>(req: &Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller {
        name: caller_name(req),
        scopes: Default::default(),
        workspaces: Vec::new(),
    })
}

#[derive(Clone)]
pub struct DownloadServices {
    pub services: Services,
    pub downloads: Arc<Downloads>,
}

/// One file of a download: an audience, whole or one variation.
struct PlannedFile {
    variation: Option<String>,
    manifest: FileManifest,
}

/// A sampled member: its rows as CSV text, their count by identity type, and when its page was
/// read.
type SampledMember = (String, Vec<(String, usize)>, i64);

/// A file as it is written: its part file, or its sample until the end.
struct PartFile {
    planned: PlannedFile,
    writer: BufWriter<std::fs::File>,
    path: PathBuf,
    sample: Option<Reservoir<SampledMember>>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::download_service_server::DownloadService for DownloadServices {
    type FetchDownloadStream = ChunkStream;

    async fn start_download(
        &self,
        req: Request<pb::StartDownloadRequest>,
    ) -> Result<Response<pb::Download>, Status> {
        let caller = caller_of(&req);
        let metadata = req.metadata().clone();
        let view = WorkspaceView::of(&req);
        let r = req.into_inner();
        let invalid = |e: String| Status::invalid_argument(e);
        if r.selections.is_empty() {
            return Err(invalid(
                "selections: choose at least one audience".to_string(),
            ));
        }
        let types = identity_types(&r.identity_types).map_err(|e| invalid(e.to_string()))?;
        if r.sample_size > MAX_SAMPLE_USERS {
            return Err(invalid(format!(
                "sample_size: {} users; a sample holds at most {MAX_SAMPLE_USERS} per file",
                r.sample_size
            )));
        }
        let mut plan: Vec<(audience_state::catalog::AudienceRecord, Vec<PlannedFile>)> = Vec::new();
        for (i, selection) in r.selections.iter().enumerate() {
            let audience = self.services.seen_audience(&view, selection.audience_id)?;
            if plan.iter().any(|(a, _)| a.id == audience.id) {
                return Err(invalid(format!(
                    "selections[{i}]: audience {} is selected twice",
                    audience.id
                )));
            }
            let name = audience.downstream_name();
            let mut files = Vec::new();
            let variations: Vec<Option<String>> = match selection.variations.is_empty() {
                true => vec![None],
                false => {
                    let mut chosen = Vec::new();
                    for (j, v) in selection.variations.iter().enumerate() {
                        let found = audience.ab_test.as_ref().and_then(|t| t.find(v));
                        let Some(found) = found else {
                            return Err(invalid(format!(
                                "selections[{i}].variations[{j}]: audience {} has no variation \
                                 \"{v}\"{}",
                                audience.id,
                                match &audience.ab_test {
                                    Some(t) => format!(
                                        " (its variations: {})",
                                        t.split().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
                                    ),
                                    None => " (it has no A/B test)".to_string(),
                                }
                            )));
                        };
                        if !chosen.contains(&Some(found.to_string())) {
                            chosen.push(Some(found.to_string()));
                        }
                    }
                    chosen
                }
            };
            for variation in variations {
                files.push(PlannedFile {
                    manifest: FileManifest {
                        file_name: file_name(audience.id, &name, variation.as_deref()),
                        audience_id: audience.id,
                        variation: variation.clone(),
                        ..Default::default()
                    },
                    variation,
                });
            }
            plan.push((audience, files));
        }
        let file_count: usize = plan.iter().map(|(_, f)| f.len()).sum();
        if file_count > MAX_FILES {
            return Err(invalid(format!(
                "selections: {file_count} files (audiences and variations); at most {MAX_FILES}"
            )));
        }
        if u64::from(r.sample_size) * file_count as u64 > MAX_SAMPLE_TOTAL {
            return Err(invalid(format!(
                "sample_size: {} users in each of {file_count} files is more than \
                 {MAX_SAMPLE_TOTAL} in all",
                r.sample_size
            )));
        }
        let now = self.services.node.engine.clock.now();
        let id = download_id(rand::random());
        let archive = archive_name(&id, now);
        let job = Arc::new(Mutex::new(Job {
            download: pb::Download {
                id: id.clone(),
                state: pb::DownloadState::Preparing as i32,
                archive_name: archive.clone(),
                started_at_ms: now,
                sample_size: r.sample_size,
                created_by: caller.name.clone(),
                ..Default::default()
            },
            owner: caller.name.clone(),
            path: self.downloads.dir.join(&archive),
        }));
        self.downloads.remember(job.clone());
        let shown = job.lock().download.clone();
        tracing::info!(download = %id, files = file_count, sample = r.sample_size, "download started");
        let preparation = Preparation {
            services: self.services.clone(),
            dir: self.downloads.dir.clone(),
            job,
            metadata,
            caller,
            types,
            sample: (r.sample_size > 0).then_some(r.sample_size),
        };
        tokio::spawn(preparation.run(plan));
        Ok(Response::new(shown))
    }

    async fn get_download(
        &self,
        req: Request<pb::DownloadIdRequest>,
    ) -> Result<Response<pb::Download>, Status> {
        let caller = caller_of(&req);
        let job = self.downloads.job(&req.into_inner().id, &caller)?;
        let download = job.lock().download.clone();
        Ok(Response::new(download))
    }

    async fn list_downloads(
        &self,
        req: Request<pb::ListDownloadsRequest>,
    ) -> Result<Response<pb::ListDownloadsResponse>, Status> {
        let caller = caller_of(&req);
        let mut downloads: Vec<pb::Download> = self
            .downloads
            .jobs
            .lock()
            .values()
            .filter_map(|j| {
                let j = j.lock();
                may_see(&j, &caller).then(|| j.download.clone())
            })
            .collect();
        downloads.sort_by_key(|d| std::cmp::Reverse(d.started_at_ms));
        Ok(Response::new(pb::ListDownloadsResponse { downloads }))
    }

    async fn fetch_download(
        &self,
        req: Request<pb::FetchDownloadRequest>,
    ) -> Result<Response<Self::FetchDownloadStream>, Status> {
        let caller = caller_of(&req);
        let r = req.into_inner();
        let job = self.downloads.job(&r.id, &caller)?;
        let (state, path) = {
            let job = job.lock();
            (job.download.state, job.path.clone())
        };
        if state != pb::DownloadState::Ready as i32 {
            return Err(Status::failed_precondition(format!(
                "download {} is not ready: see GetDownload for its progress",
                r.id
            )));
        }
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
        let total = file
            .metadata()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        if r.offset > total {
            return Err(Status::out_of_range(format!(
                "offset {} is past the archive's {total} bytes",
                r.offset
            )));
        }
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        file.seek(std::io::SeekFrom::Start(r.offset))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = r.offset;
            loop {
                let mut data = vec![0u8; CHUNK_BYTES];
                let read = match file.read(&mut data).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                data.truncate(read);
                let chunk = pb::DownloadChunk {
                    offset,
                    data,
                    total_bytes: total,
                };
                offset += read as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A download being prepared.
struct Preparation {
    services: Services,
    dir: PathBuf,
    job: Arc<Mutex<Job>>,
    metadata: MetadataMap,
    caller: Caller,
    types: Vec<String>,
    sample: Option<u32>,
}

impl Preparation {
    async fn run(self, plan: Vec<(audience_state::catalog::AudienceRecord, Vec<PlannedFile>)>) {
        let id = self.job.lock().download.id.clone();
        let parts = self.dir.join(format!("{id}.parts"));
        let outcome = self.prepare(&parts, plan).await;
        let _ = std::fs::remove_dir_all(&parts);
        let now = self.services.node.engine.clock.now();
        let mut job = self.job.lock();
        job.download.finished_at_ms = now;
        match outcome {
            Ok((size, manifest)) => {
                job.download.state = pb::DownloadState::Ready as i32;
                job.download.size_bytes = size;
                job.download.manifest_json = manifest;
                job.download.percent = 100.0;
                tracing::info!(download = %id, bytes = size, "download ready");
            }
            Err(e) => {
                tracing::warn!(download = %id, error = %e, "download failed");
                job.download.state = pb::DownloadState::Failed as i32;
                job.download.error = e;
            }
        }
    }

    /// The request of a page, as the caller made it.
    fn as_caller<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        *req.metadata_mut() = self.metadata.clone();
        req.extensions_mut().insert(self.caller.clone());
        req
    }

    async fn prepare(
        &self,
        parts: &Path,
        plan: Vec<(audience_state::catalog::AudienceRecord, Vec<PlannedFile>)>,
    ) -> Result<(u64, String), String> {
        std::fs::create_dir_all(parts).map_err(|e| format!("{}: {e}", parts.display()))?;
        // Every partition of the cluster, as ListMembers reads them.
        let services = &self.services;
        let mut every: BTreeSet<u32> = services
            .partitions(&self.metadata)
            .map_err(|e| e.message().to_string())?
            .into_iter()
            .collect();
        if !services.peers.answers_alone(&self.metadata) {
            let cluster = services
                .peers
                .cluster()
                .await
                .map_err(|e| e.message().to_string())?;
            every.extend(0..cluster.partitions);
        }
        let partitions: Vec<u32> = every.into_iter().collect();
        self.job.lock().download.partitions_total = (partitions.len() * plan.len()) as u64;
        let mut written: Vec<PartFile> = Vec::new();
        for (done_audiences, (audience, files)) in plan.into_iter().enumerate() {
            let first = written.len();
            for planned in files {
                let path = parts.join(format!("{}.csv", written.len()));
                let file =
                    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut writer = BufWriter::new(file);
                writer
                    .write_all(CSV_HEADER.as_bytes())
                    .map_err(|e| e.to_string())?;
                written.push(PartFile {
                    planned,
                    writer,
                    path,
                    sample: self.sample.map(|n| Reservoir::new(n as usize)),
                });
            }
            let mut token = String::new();
            loop {
                let asked = pb::ListMembersRequest {
                    audience_id: audience.id,
                    as_of_ms: 0,
                    page_size: PAGE_MEMBERS,
                    page_token: token,
                    identity_types: self.types.clone(),
                };
                let mut page = services
                    .list_members_of(self.as_caller(asked))
                    .await
                    .map_err(|e| format!("audience {}: {}", audience.id, e.message()))?
                    .into_inner();
                let scanned = page.mpids.len() as u64;
                let next_token = std::mem::take(&mut page.next_page_token);
                let (types, test) = (self.types.clone(), audience.ab_test.clone());
                let mut files = written.split_off(first);
                let audience_id = audience.id;
                let (files_back, rows) = tokio::task::spawn_blocking(move || {
                    let rows = write_page(&mut files, &page, audience_id, test.as_ref(), &types);
                    (files, rows)
                })
                .await
                .map_err(|e| e.to_string())?;
                written.extend(files_back);
                let rows = rows?;
                token = next_token;
                let within = match token.split_once(':') {
                    Some((p, _)) => p
                        .parse::<u32>()
                        .ok()
                        .and_then(|p| partitions.iter().position(|&q| q == p))
                        .unwrap_or(0),
                    None => partitions.len(),
                };
                let mut job = self.job.lock();
                let d = &mut job.download;
                d.users_scanned += scanned;
                d.rows_written += rows;
                d.partitions_done = (done_audiences * partitions.len() + within) as u64;
                d.percent = match d.partitions_total {
                    0 => 100.0,
                    total => 100.0 * d.partitions_done as f64 / total as f64,
                };
                if token.is_empty() {
                    break;
                }
            }
        }
        // The samples are written now; every part is flushed.
        let finished = tokio::task::spawn_blocking(move || finish_parts(written))
            .await
            .map_err(|e| e.to_string())??;
        let (paths, files): (Vec<PathBuf>, Vec<FileManifest>) = finished.into_iter().unzip();
        let (manifest, path) = {
            let job = self.job.lock();
            let manifest = Manifest::of(
                job.download.archive_name.clone(),
                job.download.id.clone(),
                self.types.clone(),
                self.services.node.engine.clock.now(),
                self.sample,
                files,
            );
            (manifest, job.path.clone())
        };
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
        let packed = json.clone();
        let size =
            tokio::task::spawn_blocking(move || pack(&path, &paths, &manifest.files, &packed))
                .await
                .map_err(|e| e.to_string())??;
        Ok((size, json))
    }
}

/// Writes each file's sample (a file without one was written as it went) and flushes it;
/// gives each part's path with its figures.
fn finish_parts(written: Vec<PartFile>) -> Result<Vec<(PathBuf, FileManifest)>, String> {
    let mut parts = Vec::with_capacity(written.len());
    for mut part in written {
        if let Some(sample) = part.sample.take() {
            for (text, rows, scanned) in sample.into_items() {
                part.writer
                    .write_all(text.as_bytes())
                    .map_err(|e| e.to_string())?;
                part.planned.manifest.count(&rows, scanned);
            }
        }
        part.writer.flush().map_err(|e| e.to_string())?;
        parts.push((part.path, part.planned.manifest));
    }
    Ok(parts)
}

/// Writes a page of members to the files of its audience (`files`): each member to the file
/// of its variation, or to the whole audience's. Returns the rows written (a sample's count
/// when written at the end).
fn write_page(
    files: &mut [PartFile],
    page: &pb::ListMembersResponse,
    audience_id: u64,
    test: Option<&audience_state::ab_test::AbTest>,
    types: &[String],
) -> Result<u64, String> {
    let mut rows_written = 0;
    let mut text = String::new();
    for member in &page.identities {
        let file = match files.iter().position(|f| match &f.planned.variation {
            None => true,
            Some(v) => test.is_some_and(|t| t.variation_of(audience_id, member.mpid) == v),
        }) {
            Some(i) => &mut files[i],
            None => continue,
        };
        let identities: BTreeMap<String, Vec<String>> = member
            .identities
            .iter()
            .map(|(t, values)| (t.clone(), values.values.clone()))
            .collect();
        text.clear();
        let rows = member_rows(member.mpid, page.as_of_ms, &identities, types, &mut text);
        if rows.is_empty() {
            continue;
        }
        match &mut file.sample {
            Some(sample) => sample.offer((text.clone(), rows, page.as_of_ms), rand::random()),
            None => {
                file.writer
                    .write_all(text.as_bytes())
                    .map_err(|e| e.to_string())?;
                rows_written += rows.iter().map(|(_, n)| *n as u64).sum::<u64>();
                file.planned.manifest.count(&rows, page.as_of_ms);
            }
        }
    }
    Ok(rows_written)
}

/// Packs the part files under their names and the manifest into the ZIP at `path`, written
/// as `.partial` and renamed once complete; returns its size.
fn pack(
    path: &Path,
    parts: &[PathBuf],
    files: &[FileManifest],
    manifest: &str,
) -> Result<u64, String> {
    let partial = path.with_extension("zip.partial");
    let out = std::fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(out));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    for (part, file) in parts.iter().zip(files) {
        zip.start_file(file.file_name.as_str(), options)
            .map_err(|e| e.to_string())?;
        let mut input =
            std::fs::File::open(part).map_err(|e| format!("{}: {e}", part.display()))?;
        std::io::copy(&mut input, &mut zip).map_err(|e| e.to_string())?;
    }
    zip.start_file("manifest.json", options)
        .map_err(|e| e.to_string())?;
    zip.write_all(manifest.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = zip.finish().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    std::fs::rename(&partial, path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| e.to_string())
}
