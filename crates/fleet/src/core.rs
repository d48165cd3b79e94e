//! The transport algorithms, written once over a store's primitives: small
//! metadata values with compare-and-set (pointer, lease) and named objects
//! streamed in and out (payloads).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use slipstream_protocol::{
    LeaseState, lease_takeover_allowed, payload_prunable, pointer_publish_allowed,
};
use slipstream_snapshot::{ArtifactManifest, MANIFEST_FILE, MAX_MANIFEST_BYTES, ManifestFile};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::error::{FleetError, Refusal, bounded};
use crate::naming::{
    FleetKey, LeaseValue, PointerValue, is_payload_id, new_payload_id, now_unix_ms, payload_rank,
};
use crate::transport::{
    FleetTimeouts, LeaseGrant, PayloadRef, PointerReading, PruneReport, PublishOutcome, Published,
};

/// How many CAS races a pointer or lease write may lose before giving up.
const CAS_ATTEMPTS: u32 = 8;
/// Read buffer for downloads and manifests.
const CHUNK: usize = 64 * 1024;
/// Downloads reach the file in writes of this size: each write of an async
/// file is a trip to a blocking thread, so one per chunk costs more than
/// the copy.
const WRITE_BUFFER: usize = 1 << 20;

/// A metadata value and its revision; `value` is `None` for a delete
/// marker (the key existed and was deleted).
#[derive(Debug, Clone)]
pub(crate) struct MetaEntry {
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) revision: u64,
}

/// The result of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cas {
    Written,
    Conflict,
}

/// A stored object being read.
pub(crate) struct Download {
    /// The size the store announces.
    pub(crate) size: u64,
    pub(crate) reader: Box<dyn AsyncRead + Unpin + Send>,
}

/// A store's primitives. Each call is one round trip (or one object
/// transfer); [`Core`] bounds them.
pub(crate) trait Backend: fmt::Debug + Send + Sync + 'static {
    /// The metadata value at `key`.
    fn meta_get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<MetaEntry>, FleetError>> + Send;
    /// Write `value` at `key` only if the key is absent or deleted.
    fn meta_create(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<Cas, FleetError>> + Send;
    /// Write `value` at `key` only if its revision is still `revision`.
    fn meta_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> impl Future<Output = Result<Cas, FleetError>> + Send;
    /// Delete `key` only if its revision is still `revision`.
    fn meta_delete(
        &self,
        key: &str,
        revision: u64,
    ) -> impl Future<Output = Result<Cas, FleetError>> + Send;
    /// Store the object `name` from `data`, streaming.
    fn put_object(
        &self,
        name: &str,
        data: &mut (dyn AsyncRead + Unpin + Send),
    ) -> impl Future<Output = Result<(), FleetError>> + Send;
    /// Open the object `name`; `None` when it does not exist.
    fn get_object(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Download>, FleetError>> + Send;
    /// Every object name starting with `prefix`.
    fn list_objects(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, FleetError>> + Send;
    /// Remove the object `name` (absent is fine).
    fn delete_object(&self, name: &str) -> impl Future<Output = Result<(), FleetError>> + Send;
}

/// The algorithms over a [`Backend`] for one [`FleetKey`].
#[derive(Debug)]
pub(crate) struct Core<B> {
    pub(crate) backend: B,
    key: FleetKey,
    prefix: String,
    timeouts: FleetTimeouts,
}

impl<B: Backend> Core<B> {
    pub(crate) fn new(backend: B, key: FleetKey, timeouts: FleetTimeouts) -> Self {
        let prefix = key.prefix();
        Self {
            backend,
            key,
            prefix,
            timeouts,
        }
    }

    pub(crate) fn key(&self) -> &FleetKey {
        &self.key
    }

    pub(crate) fn pointer_key(&self) -> String {
        format!("{}.pointer", self.prefix)
    }

    pub(crate) fn lease_key(&self) -> String {
        format!("{}.lease", self.prefix)
    }

    /// The object-name prefix of every payload of this key.
    pub(crate) fn payloads_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub(crate) fn object_name(&self, payload: &str, path: &str) -> String {
        format!("{}/{payload}/{path}", self.prefix)
    }

    fn request(&self) -> Duration {
        self.timeouts.request
    }

    async fn read_pointer(
        &self,
    ) -> Result<(PointerReading, Option<MetaEntry>, Option<PointerValue>), FleetError> {
        let key = self.pointer_key();
        let entry = bounded(
            "read the artifact pointer",
            self.request(),
            self.backend.meta_get(&key),
        )
        .await?;
        let value = entry
            .as_ref()
            .and_then(|e| e.value.as_deref())
            .map(PointerValue::parse);
        let reading = match &value {
            None => PointerReading::Absent,
            Some(None) => PointerReading::Corrupt,
            Some(Some(v)) => PointerReading::At {
                payload: v.payload.clone(),
                rank: v.rank,
            },
        };
        Ok((reading, entry, value.flatten()))
    }

    pub(crate) async fn pointer(&self) -> Result<PointerReading, FleetError> {
        Ok(self.read_pointer().await?.0)
    }

    pub(crate) async fn publish(&self, artifact: &Path) -> Result<Published, FleetError> {
        let manifest_path = artifact.join(MANIFEST_FILE);
        let manifest_json = read_local_manifest(&manifest_path).await?;
        let manifest = ArtifactManifest::from_json(&manifest_json)?;
        if !self.key.matches(&manifest) {
            return Err(FleetError::WrongArtifact {
                expected: self.key.describe(),
                found: format!(
                    "scope {:?}, backend {}",
                    manifest.scope,
                    manifest.backend_label()
                ),
            });
        }
        let rank = manifest.cursor.rank();
        // Known stale before any upload: skip the transfer.
        let (reading, _, _) = self.read_pointer().await?;
        if !pointer_publish_allowed(reading.state(), rank) {
            return Ok(Published {
                rank,
                outcome: PublishOutcome::Stale {
                    pointer_rank: reading.rank().unwrap_or(0),
                    uploaded: None,
                },
            });
        }
        let payload = new_payload_id(rank);
        check_unique_paths(&manifest, &self.object_name(&payload, MANIFEST_FILE))?;
        for file in &manifest.files {
            self.upload_file(artifact, &payload, file).await?;
        }
        // The manifest last: a payload without one is visibly incomplete.
        let name = self.object_name(&payload, MANIFEST_FILE);
        let mut reader: &[u8] = &manifest_json;
        bounded(
            "upload the manifest",
            self.timeouts.transfer,
            self.backend.put_object(&name, &mut reader),
        )
        .await?;
        let value = PointerValue {
            payload: payload.clone(),
            rank,
            manifest_blake3: blake3::hash(&manifest_json).to_hex().to_string(),
            published_at_unix_ms: Some(now_unix_ms()),
        };
        self.move_pointer(value).await
    }

    async fn upload_file(
        &self,
        artifact: &Path,
        payload: &str,
        file: &ManifestFile,
    ) -> Result<(), FleetError> {
        let path = artifact.join(&file.path);
        let opened = tokio::fs::File::open(&path)
            .await
            .map_err(|e| FleetError::io("open", &path, e))?;
        let mut reader = HashingReader::new(opened);
        let name = self.object_name(payload, &file.path);
        bounded(
            "upload an artifact file",
            self.timeouts.transfer,
            self.backend.put_object(&name, &mut reader),
        )
        .await?;
        // What was uploaded is what the manifest promises, or the payload
        // is never pointed at.
        let (size, digest) = reader.finish();
        if size != file.size || digest != file.blake3 {
            return Err(FleetError::SourceChanged {
                path: file.path.clone(),
            });
        }
        Ok(())
    }

    async fn move_pointer(&self, value: PointerValue) -> Result<Published, FleetError> {
        let key = self.pointer_key();
        let rank = value.rank;
        for _ in 0..CAS_ATTEMPTS {
            let (reading, entry, _) = self.read_pointer().await?;
            if !pointer_publish_allowed(reading.state(), rank) {
                return Ok(Published {
                    rank,
                    outcome: PublishOutcome::Stale {
                        pointer_rank: reading.rank().unwrap_or(0),
                        uploaded: Some(value.payload),
                    },
                });
            }
            let bytes = value.encode();
            let cas = match entry {
                Some(MetaEntry {
                    value: Some(_),
                    revision,
                }) => {
                    bounded(
                        "move the artifact pointer",
                        self.request(),
                        self.backend.meta_update(&key, bytes, revision),
                    )
                    .await?
                }
                _ => {
                    bounded(
                        "create the artifact pointer",
                        self.request(),
                        self.backend.meta_create(&key, bytes),
                    )
                    .await?
                }
            };
            if cas == Cas::Written {
                tracing::info!(payload = %value.payload, rank, previous = ?reading.rank(), "artifact pointer moved");
                return Ok(Published {
                    rank,
                    outcome: PublishOutcome::Moved {
                        payload: value.payload,
                        previous_rank: reading.rank(),
                    },
                });
            }
        }
        Err(FleetError::Contended {
            operation: "move the artifact pointer",
            attempts: CAS_ATTEMPTS,
        })
    }

    pub(crate) async fn newest(&self) -> Result<Option<PayloadRef>, FleetError> {
        let (reading, entry, value) = self.read_pointer().await?;
        let value = match (reading, value) {
            (PointerReading::Absent, _) => return Ok(None),
            (PointerReading::At { .. }, Some(v)) => v,
            _ => {
                let detail = entry
                    .and_then(|e| e.value)
                    .map(|v| String::from_utf8_lossy(&v[..v.len().min(200)]).into_owned())
                    .unwrap_or_default();
                return Err(FleetError::PointerCorrupt {
                    key: self.pointer_key(),
                    detail,
                });
            }
        };
        let name = self.object_name(&value.payload, MANIFEST_FILE);
        let download = self.open(&name).await?;
        if download.size > MAX_MANIFEST_BYTES {
            return Err(FleetError::refused(name, Refusal::ManifestTooLarge));
        }
        let manifest_json = bounded(
            "download the manifest",
            self.timeouts.transfer,
            read_capped(
                download.reader,
                MAX_MANIFEST_BYTES,
                self.timeouts.stall,
                &name,
            ),
        )
        .await?;
        if blake3::hash(&manifest_json).to_hex().as_str() != value.manifest_blake3 {
            return Err(FleetError::refused(name, Refusal::DigestMismatch));
        }
        let manifest = ArtifactManifest::from_json(&manifest_json)?;
        if manifest.cursor.rank() != value.rank {
            return Err(FleetError::refused(
                name,
                Refusal::RankMismatch {
                    pointer: value.rank,
                    manifest: manifest.cursor.rank(),
                },
            ));
        }
        if !self.key.matches(&manifest) {
            return Err(FleetError::WrongArtifact {
                expected: self.key.describe(),
                found: format!(
                    "scope {:?}, backend {}",
                    manifest.scope,
                    manifest.backend_label()
                ),
            });
        }
        Ok(Some(PayloadRef {
            id: value.payload,
            rank: value.rank,
            published_at: value
                .published_at_unix_ms
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            manifest,
            manifest_json,
        }))
    }

    async fn open(&self, name: &str) -> Result<Download, FleetError> {
        bounded(
            "open a stored object",
            self.request(),
            self.backend.get_object(name),
        )
        .await?
        .ok_or_else(|| FleetError::refused(name, Refusal::MissingObject))
    }

    pub(crate) async fn fetch(
        &self,
        payload: &PayloadRef,
        scratch: &Path,
    ) -> Result<PathBuf, FleetError> {
        if !is_payload_id(&payload.id) {
            return Err(FleetError::UnknownPayload(payload.id.clone()));
        }
        let dest = scratch.join(format!("fetch-{}", payload.id));
        remove_dir_if_present(&dest).await?;
        tokio::fs::create_dir_all(&dest)
            .await
            .map_err(|e| FleetError::io("create", &dest, e))?;
        match self.fetch_into(payload, &dest).await {
            Ok(()) => Ok(dest),
            Err(e) => {
                // Nothing of a refused or failed download stays behind.
                if let Err(cleanup) = remove_dir_if_present(&dest).await {
                    tracing::warn!(error = %cleanup, "removing a failed download");
                }
                Err(e)
            }
        }
    }

    async fn fetch_into(&self, payload: &PayloadRef, dest: &Path) -> Result<(), FleetError> {
        let manifest = &payload.manifest;
        check_unique_paths(manifest, &self.object_name(&payload.id, MANIFEST_FILE))?;
        for file in &manifest.files {
            let name = self.object_name(&payload.id, &file.path);
            let to = dest.join(&file.path);
            if let Some(parent) = to.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| FleetError::io("create", parent, e))?;
            }
            let download = self.open(&name).await?;
            if download.size != file.size {
                return Err(FleetError::refused(
                    name,
                    Refusal::SizeMismatch {
                        expected: file.size,
                        announced: download.size,
                    },
                ));
            }
            bounded(
                "download an artifact file",
                self.timeouts.transfer,
                receive(download.reader, file, &to, &name, self.timeouts.stall),
            )
            .await?;
        }
        let manifest_path = dest.join(MANIFEST_FILE);
        tokio::fs::write(&manifest_path, &payload.manifest_json)
            .await
            .map_err(|e| FleetError::io("write", &manifest_path, e))
    }

    pub(crate) async fn prune(&self, keep_last: NonZeroUsize) -> Result<PruneReport, FleetError> {
        let (reading, _, _) = self.read_pointer().await?;
        let PointerReading::At {
            payload: target,
            rank: pointer_rank,
        } = reading
        else {
            // Without a readable pointer nothing is known to be superseded.
            return Ok(PruneReport::default());
        };
        let prefix = self.payloads_prefix();
        let names = bounded(
            "list stored objects",
            self.request(),
            self.backend.list_objects(&prefix),
        )
        .await?;
        let mut payloads: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in names {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let id = rest.split('/').next().unwrap_or_default().to_owned();
            payloads.entry(id).or_default().push(name);
        }
        // Newest first: by rank, then id (ids of one rank are unordered, so
        // which of them counts as newer is arbitrary but stable).
        let mut order: Vec<(Option<u64>, &String)> =
            payloads.keys().map(|id| (payload_rank(id), id)).collect();
        order.sort_by(|a, b| b.cmp(a));
        let recent: BTreeSet<&String> = order
            .iter()
            .filter(|(rank, _)| rank.is_some())
            .take(keep_last.get())
            .map(|(_, id)| *id)
            .collect();
        let mut report = PruneReport {
            target: Some(target.clone()),
            ..PruneReport::default()
        };
        for (id, objects) in &payloads {
            let prunable = payload_prunable(
                payload_rank(id),
                pointer_rank,
                *id == target,
                !recent.contains(id),
            );
            if !prunable {
                report.kept.push(id.clone());
                continue;
            }
            // The manifest first, so a prune cut short leaves a payload
            // that is visibly incomplete, never one that looks whole.
            let manifest = self.object_name(id, MANIFEST_FILE);
            let mut objects = objects.clone();
            objects.sort_by_key(|n| *n != manifest);
            for name in &objects {
                bounded(
                    "delete a stored object",
                    self.request(),
                    self.backend.delete_object(name),
                )
                .await?;
            }
            tracing::debug!(payload = %id, "pruned an artifact payload");
            report.pruned.push(id.clone());
        }
        Ok(report)
    }

    pub(crate) async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, FleetError> {
        let key = self.lease_key();
        for _ in 0..CAS_ATTEMPTS {
            let entry = bounded(
                "read the export lease",
                self.request(),
                self.backend.meta_get(&key),
            )
            .await?;
            let now = now_unix_ms();
            let expires_at_unix_ms =
                now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let mine = LeaseValue {
                holder: holder.to_owned(),
                expires_at_unix_ms,
            }
            .encode();
            let (cas, grant) = match entry {
                None | Some(MetaEntry { value: None, .. }) => {
                    let cas = bounded(
                        "create the export lease",
                        self.request(),
                        self.backend.meta_create(&key, mine),
                    )
                    .await?;
                    (cas, LeaseGrant::Acquired { expires_at_unix_ms })
                }
                Some(MetaEntry {
                    value: Some(bytes),
                    revision,
                }) => {
                    let current = LeaseValue::parse(&bytes);
                    let grant = match &current {
                        Some(l) if l.holder == holder => LeaseGrant::Renewed { expires_at_unix_ms },
                        _ => {
                            let state =
                                LeaseState::Present(current.as_ref().map(|l| l.expires_at_unix_ms));
                            if !lease_takeover_allowed(now, state) {
                                let held = current.unwrap_or(LeaseValue {
                                    holder: String::new(),
                                    expires_at_unix_ms: 0,
                                });
                                return Ok(LeaseGrant::HeldElsewhere {
                                    holder: held.holder,
                                    expires_at_unix_ms: held.expires_at_unix_ms,
                                });
                            }
                            LeaseGrant::TakenOver {
                                from: current.map(|l| l.holder),
                                expires_at_unix_ms,
                            }
                        }
                    };
                    let cas = bounded(
                        "write the export lease",
                        self.request(),
                        self.backend.meta_update(&key, mine, revision),
                    )
                    .await?;
                    (cas, grant)
                }
            };
            if cas == Cas::Written {
                if !matches!(grant, LeaseGrant::Renewed { .. }) {
                    tracing::info!(holder, grant = ?grant, "export lease acquired");
                }
                return Ok(grant);
            }
        }
        Err(FleetError::Contended {
            operation: "acquire the export lease",
            attempts: CAS_ATTEMPTS,
        })
    }

    pub(crate) async fn release_lease(&self, holder: &str) -> Result<(), FleetError> {
        let key = self.lease_key();
        let entry = bounded(
            "read the export lease",
            self.request(),
            self.backend.meta_get(&key),
        )
        .await?;
        let Some(MetaEntry {
            value: Some(bytes),
            revision,
        }) = entry
        else {
            return Ok(());
        };
        if LeaseValue::parse(&bytes).is_some_and(|l| l.holder == holder) {
            // A conflict means it was taken over meanwhile: not ours to delete.
            bounded(
                "release the export lease",
                self.request(),
                self.backend.meta_delete(&key, revision),
            )
            .await?;
        }
        Ok(())
    }
}

/// Refuse a manifest listing a path twice, or one that is not `data/` and
/// plain names (the manifest parser checks this too; the download writes
/// under these paths, so it is checked where it is used).
fn check_unique_paths(manifest: &ArtifactManifest, object: &str) -> Result<(), FleetError> {
    let mut seen = BTreeSet::new();
    for f in &manifest.files {
        let mut parts = f.path.split('/');
        let under_data = parts.next() == Some("data");
        let plain = parts
            .map(|p| !p.is_empty() && p != "." && p != ".." && !p.contains(['\\', '\0']))
            .fold(None, |acc: Option<bool>, ok| {
                Some(acc.unwrap_or(true) && ok)
            });
        if !under_data || plain != Some(true) || !seen.insert(f.path.as_str()) {
            return Err(FleetError::refused(object, Refusal::HostilePath));
        }
    }
    Ok(())
}

async fn read_local_manifest(path: &Path) -> Result<Vec<u8>, FleetError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| FleetError::io("open", path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| FleetError::io("read", path, e))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_MANIFEST_BYTES {
        return Err(FleetError::refused(
            path.display().to_string(),
            Refusal::ManifestTooLarge,
        ));
    }
    Ok(bytes)
}

async fn remove_dir_if_present(dir: &Path) -> Result<(), FleetError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FleetError::io("remove", dir, e)),
    }
}

/// One read, bounded by `stall`.
async fn read_some(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
    stall: Duration,
    name: &str,
) -> Result<usize, FleetError> {
    match tokio::time::timeout(stall, reader.read(buf)).await {
        Err(_) => Err(FleetError::Timeout {
            operation: format!("receiving {name}"),
            after: stall,
        }),
        Ok(Ok(n)) => Ok(n),
        // The object store checks its own digest at the end of an object.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(FleetError::refused(name, Refusal::DigestMismatch))
        }
        Ok(Err(e)) => Err(FleetError::Transfer {
            object: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Read a whole small object, refusing one past `cap`.
async fn read_capped(
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
    cap: u64,
    stall: Duration,
    name: &str,
) -> Result<Vec<u8>, FleetError> {
    let mut out = Vec::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = read_some(reader.as_mut(), &mut buf, stall, name).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if u64::try_from(out.len()).unwrap_or(u64::MAX) > cap {
            return Err(FleetError::refused(name, Refusal::ManifestTooLarge));
        }
    }
}

/// Stream an object into `to`, checking its length and BLAKE3 against
/// `expected` as it arrives; memory stays at one chunk and one write
/// buffer.
async fn receive(
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
    expected: &ManifestFile,
    to: &Path,
    name: &str,
    stall: Duration,
) -> Result<(), FleetError> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .map_err(|e| FleetError::io("create", to, e))?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = blake3::Hasher::new();
    let mut received: u64 = 0;
    let mut buf = vec![0; CHUNK];
    loop {
        let n = read_some(reader.as_mut(), &mut buf, stall, name).await?;
        if n == 0 {
            break;
        }
        received = received.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if received > expected.size {
            return Err(FleetError::refused(
                name,
                Refusal::Oversize {
                    expected: expected.size,
                },
            ));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .map_err(|e| FleetError::io("write", to, e))?;
    }
    if received < expected.size {
        return Err(FleetError::refused(
            name,
            Refusal::Truncated {
                expected: expected.size,
                received,
            },
        ));
    }
    if *hasher.finalize().as_bytes() != expected.blake3 {
        return Err(FleetError::refused(name, Refusal::DigestMismatch));
    }
    out.flush()
        .await
        .map_err(|e| FleetError::io("write", to, e))
}

/// An upload's source: counts and hashes what the store reads from it, so
/// the uploaded bytes themselves are checked against the manifest.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    size: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            size: 0,
        }
    }

    fn finish(&self) -> (u64, [u8; 32]) {
        (self.size, *self.hasher.finalize().as_bytes())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let fresh = &buf.filled()[before..];
            this.hasher.update(fresh);
            this.size = this
                .size
                .saturating_add(u64::try_from(fresh.len()).unwrap_or(u64::MAX));
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use slipstream_kv::{WatchCursor, WatchScope};
    use slipstream_snapshot::MANIFEST_SCHEMA;

    use super::*;
    use crate::local::LocalDir;

    /// A store whose objects announce their true size but deliver other
    /// bytes: what a hostile or broken server could do.
    #[derive(Debug)]
    struct Lying {
        inner: LocalDir,
        deliver: Mutex<Option<Vec<u8>>>,
    }

    impl Backend for Lying {
        async fn meta_get(&self, key: &str) -> Result<Option<MetaEntry>, FleetError> {
            self.inner.meta_get(key).await
        }
        async fn meta_create(&self, key: &str, value: Vec<u8>) -> Result<Cas, FleetError> {
            self.inner.meta_create(key, value).await
        }
        async fn meta_update(
            &self,
            key: &str,
            value: Vec<u8>,
            rev: u64,
        ) -> Result<Cas, FleetError> {
            self.inner.meta_update(key, value, rev).await
        }
        async fn meta_delete(&self, key: &str, rev: u64) -> Result<Cas, FleetError> {
            self.inner.meta_delete(key, rev).await
        }
        async fn put_object(
            &self,
            name: &str,
            data: &mut (dyn AsyncRead + Unpin + Send),
        ) -> Result<(), FleetError> {
            self.inner.put_object(name, data).await
        }
        async fn get_object(&self, name: &str) -> Result<Option<Download>, FleetError> {
            let real = self.inner.get_object(name).await?;
            let lie = self.deliver.lock().unwrap().clone();
            match (real, lie) {
                (Some(d), Some(bytes)) if name.contains("/data/") => Ok(Some(Download {
                    size: d.size,
                    reader: Box::new(std::io::Cursor::new(bytes)),
                })),
                (real, _) => Ok(real),
            }
        }
        async fn list_objects(&self, prefix: &str) -> Result<Vec<String>, FleetError> {
            self.inner.list_objects(prefix).await
        }
        async fn delete_object(&self, name: &str) -> Result<(), FleetError> {
            self.inner.delete_object(name).await
        }
    }

    /// A hand-made artifact with one data file.
    fn artifact(dir: &Path, data: &[u8]) -> ArtifactManifest {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/blob"), data).unwrap();
        let manifest = ArtifactManifest {
            schema: MANIFEST_SCHEMA,
            backend_name: "append-log".into(),
            format_generation: 1,
            cursor: WatchCursor::at(3),
            scope: WatchScope::All,
            files: vec![ManifestFile {
                path: "data/blob".into(),
                size: u64::try_from(data.len()).unwrap(),
                blake3: *blake3::hash(data).as_bytes(),
            }],
        };
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_json().unwrap()).unwrap();
        manifest
    }

    fn refusal(e: FleetError) -> Refusal {
        match e {
            FleetError::Refused { reason, .. } => reason,
            other => panic!("expected a refusal, got {other}"),
        }
    }

    #[tokio::test]
    async fn streams_shorter_or_longer_than_announced_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let key = FleetKey::new(
            "cfg",
            WatchScope::All,
            slipstream_snapshot::BackendId {
                name: "append-log",
                format_generation: 1,
            },
        );
        let core = Core::new(
            Lying {
                inner: LocalDir::at(tmp.path().join("store")),
                deliver: Mutex::new(None),
            },
            key,
            FleetTimeouts::default(),
        );
        let data = vec![7u8; 200_000];
        artifact(&tmp.path().join("a"), &data);
        assert!(core.publish(&tmp.path().join("a")).await.unwrap().moved());
        let newest = core.newest().await.unwrap().unwrap();
        let scratch = tmp.path().join("scratch");

        *core.backend.deliver.lock().unwrap() = Some(data[..150_000].to_vec());
        let e = core.fetch(&newest, &scratch).await.unwrap_err();
        assert_eq!(
            refusal(e),
            Refusal::Truncated {
                expected: 200_000,
                received: 150_000
            }
        );

        let mut longer = data.clone();
        longer.push(7);
        *core.backend.deliver.lock().unwrap() = Some(longer);
        let e = core.fetch(&newest, &scratch).await.unwrap_err();
        assert_eq!(refusal(e), Refusal::Oversize { expected: 200_000 });
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);

        *core.backend.deliver.lock().unwrap() = None;
        core.fetch(&newest, &scratch).await.unwrap();
    }

    #[tokio::test]
    async fn a_manifest_with_a_duplicate_path_is_refused_on_fetch() {
        let tmp = tempfile::tempdir().unwrap();
        let key = FleetKey::new(
            "cfg",
            WatchScope::All,
            slipstream_snapshot::BackendId {
                name: "append-log",
                format_generation: 1,
            },
        );
        let core = Core::new(
            LocalDir::at(tmp.path().join("store")),
            key,
            FleetTimeouts::default(),
        );
        let mut manifest = artifact(&tmp.path().join("a"), b"x");
        manifest.files.push(manifest.files[0].clone());
        let payload = PayloadRef {
            id: new_payload_id(3),
            rank: 3,
            published_at: None,
            manifest,
            manifest_json: Vec::new(),
        };
        let e = core
            .fetch(&payload, &tmp.path().join("scratch"))
            .await
            .unwrap_err();
        assert_eq!(refusal(e), Refusal::HostilePath);
    }
}
