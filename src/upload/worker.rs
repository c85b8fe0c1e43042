//! Sending one object: a single PUT below the part size, otherwise a multipart upload that
//! persists its upload id before the first part and each part's ETag after its PUT, and
//! that on resume asks the store (ListParts) before sending anything (invariant 4).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::resume::{part_count, part_range, plan_resume, same_etag};
use super::s3::{content_md5, hex_md5, metered_body, FaultKind, Payload, StoreError};
use super::Shared;
use crate::index::{DonePart, Multipart, ObjectKind, UploadRow, UploadState};
use crate::package::{DerivedFile, MUXER_VERSION};
use crate::record::playlist::recording_playlist;

/// Why an attempt failed.
#[derive(Debug)]
pub enum Failure {
    Store(StoreError),
    /// A local problem with this object (file unreadable, recording gone, index error).
    Local(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

impl From<crate::index::IndexError> for Failure {
    fn from(e: crate::index::IndexError) -> Failure {
        Failure::Local(format!("index: {e}"))
    }
}

/// The slowest link a request is expected to survive: sets request timeouts.
const MIN_RATE: u64 = 32 * 1024;

fn timeout_for(len: u64, cap: Option<u64>) -> Duration {
    let rate = cap.unwrap_or(MIN_RATE).clamp(1, MIN_RATE);
    Duration::from_secs(30 + len / rate)
}

/// The throttled, metered body of `data` with its digest and timeout.
fn payload(shared: &Shared, data: Bytes, progress: &Arc<AtomicU64>) -> Payload {
    let len = data.len() as u64;
    Payload {
        md5: content_md5(&data),
        len,
        timeout: timeout_for(len, shared.config.bandwidth_limit()),
        body: metered_body(data, shared.throttle.clone(), progress.clone()),
    }
}

/// Sends `row`'s object; on success the row is stored as uploaded.
pub async fn send(
    shared: &Shared,
    row: &mut UploadRow,
    progress: &Arc<AtomicU64>,
) -> Result<(), Failure> {
    match row.kind.clone() {
        ObjectKind::Playlist => send_playlist(shared, row, progress).await,
        ObjectKind::Segment { seq, file } => send_segment(shared, row, seq, &file, progress).await,
        ObjectKind::File {
            muxer_version,
            fingerprint,
            ..
        } => send_file(shared, row, muxer_version, fingerprint, progress).await,
    }
}

/// Where an object's bytes come from.
#[derive(Clone)]
enum Source {
    /// A segment file on flash.
    Path(PathBuf),
    /// An MP4/FLV/AAC file derived from the capture's segments as it is read.
    Derived(Arc<DerivedFile>),
}

impl Source {
    async fn read_range(&self, start: u64, end: u64) -> Result<Bytes, Failure> {
        match self {
            Source::Path(path) => read_range(path.clone(), start, end).await,
            Source::Derived(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.read_range(start, end))
                    .await
                    .map_err(|e| Failure::Local(format!("packaging task: {e}")))?
                    .map(Bytes::from)
                    .map_err(|e| Failure::Local(e.to_string()))
            }
        }
    }
}

/// Sends a file recording: plans its derived bytes from the segments (the same bytes
/// after a reboot), then a single PUT or a multipart upload resumed part by part.
async fn send_file(
    shared: &Shared,
    row: &mut UploadRow,
    muxer_version: u32,
    fingerprint: u64,
    progress: &Arc<AtomicU64>,
) -> Result<(), Failure> {
    let (index, storage, file_id) = (
        shared.index.clone(),
        shared.storage.clone(),
        row.recording_id.clone(),
    );
    let plan = tokio::task::spawn_blocking(move || -> Result<DerivedFile, Failure> {
        let file = index
            .get_file(&file_id)?
            .ok_or_else(|| Failure::Local("the recording was deleted".into()))?;
        DerivedFile::plan(&index, &storage, &file).map_err(|e| Failure::Local(e.to_string()))
    })
    .await
    .map_err(|e| Failure::Local(format!("packaging task: {e}")))??;
    let size = plan.len();
    let now = plan.fingerprint();
    let stale = row.multipart.is_some()
        && (muxer_version != MUXER_VERSION || row.size != size || fingerprint != now);
    if stale {
        tracing::warn!(object = %row.key, "the file's bytes differ from the interrupted upload's (another muxer version or changed segments); starting it over");
        row.multipart = None;
    }
    row.kind = ObjectKind::File {
        format: plan.format,
        muxer_version: MUXER_VERSION,
        fingerprint: now,
    };
    row.size = size;
    let part_size = row
        .multipart
        .as_ref()
        .map_or(shared.config.part_size(), |m| m.part_size);
    let source = Source::Derived(Arc::new(plan));
    if size < part_size && row.multipart.is_none() {
        let data = source.read_range(0, size).await?;
        put_whole(shared, row, data, progress).await?;
        return mark_uploaded(shared, row).await;
    }
    send_multipart(shared, row, source, size, part_size, progress).await
}

async fn persist(shared: &Shared, row: &UploadRow) -> Result<(), Failure> {
    let (index, copy) = (shared.index.clone(), row.clone());
    let stored = tokio::task::spawn_blocking(move || index.put_upload(&copy))
        .await
        .map_err(|e| Failure::Local(format!("index task: {e}")))??;
    if stored {
        Ok(())
    } else {
        // Deleted while this object was being sent: what reached the store (the object,
        // or the parts of its multipart upload) is queued for removal, so none is left.
        let aborts: Vec<(String, String)> = row
            .multipart
            .iter()
            .map(|m| (row.key.clone(), m.upload_id.clone()))
            .collect();
        let (index, id, key) = (
            shared.index.clone(),
            row.recording_id.clone(),
            row.key.clone(),
        );
        let queued =
            tokio::task::spawn_blocking(move || index.queue_store_delete(&id, &[key], &aborts))
                .await;
        if let Ok(Err(e)) = queued {
            tracing::error!(error = %e, "cannot queue the removal of a deleted recording's object");
        }
        shared.deletes_due.notify_one();
        Err(Failure::Local("the recording was deleted".into()))
    }
}

async fn mark_uploaded(shared: &Shared, row: &mut UploadRow) -> Result<(), Failure> {
    let now = crate::clock::now_ms();
    row.state = UploadState::Uploaded;
    row.uploaded_ms = Some(now);
    row.last_error = None;
    persist(shared, row).await?;
    let m = crate::metrics::global();
    m.uploaded_objects.inc();
    m.uploaded_bytes.inc_by(row.size);
    // Queued when its file was sealed: the wait an offline venue's recordings see.
    m.upload_delay_seconds
        .observe((now - row.created_ms).max(0) as f64 / 1000.0);
    Ok(())
}

async fn send_playlist(
    shared: &Shared,
    row: &mut UploadRow,
    progress: &Arc<AtomicU64>,
) -> Result<(), Failure> {
    let (index, id) = (shared.index.clone(), row.recording_id.clone());
    let target = shared.segment_target_s;
    let text = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let gone = || Failure::Local("the recording was deleted".into());
        if crate::index::FileRow::capture_of(&id).is_some() {
            // A task's HLS recording: its span of the capture's segments.
            let file = index.get_file(&id)?.ok_or_else(gone)?;
            let capture = index.get_recording(&file.capture_id)?.ok_or_else(gone)?;
            let rec = file.as_recording(&capture);
            let segments = file.span_view(index.segment_span(
                &file.capture_id,
                file.first_seq,
                file.last_seq,
            )?);
            return Ok(recording_playlist(&rec, &segments, target, ""));
        }
        let rec = index.get_recording(&id)?.ok_or_else(gone)?;
        let segments = index.segments(&id)?;
        Ok(recording_playlist(&rec, &segments, target, ""))
    })
    .await
    .map_err(|e| Failure::Local(format!("playlist task: {e}")))??;
    let data = Bytes::from(text);
    row.size = data.len() as u64;
    put_whole(shared, row, data, progress).await?;
    mark_uploaded(shared, row).await
}

async fn put_whole(
    shared: &Shared,
    row: &UploadRow,
    data: Bytes,
    progress: &Arc<AtomicU64>,
) -> Result<(), Failure> {
    let payload = payload(shared, data, progress);
    shared.store.put_object(&row.key, payload).await?;
    Ok(())
}

async fn send_segment(
    shared: &Shared,
    row: &mut UploadRow,
    seq: u32,
    file: &str,
    progress: &Arc<AtomicU64>,
) -> Result<(), Failure> {
    let (index, storage, rec_id) = (
        shared.index.clone(),
        shared.storage.clone(),
        row.recording_id.clone(),
    );
    let file_name = file.to_owned();
    type Found = (PathBuf, Option<crate::index::SpanStart>);
    let (path, start) = tokio::task::spawn_blocking(move || -> Result<Found, Failure> {
        // A task's HLS recording sends segments of the capture it spans (a clip's first
        // one from its keyframe on).
        let capture_id = crate::index::FileRow::capture_of(&rec_id).unwrap_or(&rec_id);
        let start = match capture_id != rec_id {
            true => index
                .get_file(&rec_id)?
                .filter(|f| f.first_seq == seq)
                .and_then(|f| f.start),
            false => None,
        };
        let rec = index
            .get_recording(capture_id)?
            .ok_or_else(|| Failure::Local("the recording was deleted".into()))?;
        let path = storage
            .recording_dir(&rec.app, &rec.stream, &rec.id)
            .join(file_name);
        Ok((path, start))
    })
    .await
    .map_err(|e| Failure::Local(format!("segment task: {e}")))??;
    if let Some(at) = start {
        let whole = tokio::fs::read(&path)
            .await
            .map_err(|e| Failure::Local(format!("{}: {e}", path.display())))?;
        let data = Bytes::from(crate::mux::ts_cut::cut_at(&whole, at.offset));
        row.size = data.len() as u64;
        put_whole(shared, row, data, progress).await?;
        return mark_uploaded(shared, row).await;
    }
    let size = match tokio::fs::metadata(&path).await {
        Ok(m) => m.len(),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && is_gap(shared, &row.recording_id, seq).await? =>
        {
            // Recovery marked the file lost; the playlist lists it as EXT-X-GAP.
            row.skipped = true;
            return mark_uploaded(shared, row).await;
        }
        Err(e) => return Err(Failure::Local(format!("{}: {e}", path.display()))),
    };
    row.size = size;
    let part_size = row
        .multipart
        .as_ref()
        .map_or(shared.config.part_size(), |m| m.part_size);
    if size < part_size && row.multipart.is_none() {
        let data = read_range(path, 0, size).await?;
        put_whole(shared, row, data, progress).await?;
        return mark_uploaded(shared, row).await;
    }
    send_multipart(shared, row, Source::Path(path), size, part_size, progress).await
}

/// Whether the index marks segment `seq` of the recording as a gap (its file is lost).
async fn is_gap(shared: &Shared, recording_id: &str, seq: u32) -> Result<bool, Failure> {
    let (index, id) = (shared.index.clone(), recording_id.to_owned());
    tokio::task::spawn_blocking(move || {
        let capture_id = crate::index::FileRow::capture_of(&id).unwrap_or(&id);
        Ok(index
            .segments_after(capture_id, seq.saturating_sub(1))?
            .first()
            .is_some_and(|s| s.seq == seq && s.gap))
    })
    .await
    .map_err(|e| Failure::Local(format!("segment task: {e}")))?
}

async fn read_range(path: PathBuf, start: u64, end: u64) -> Result<Bytes, Failure> {
    tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact(&mut buf)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(|e| Failure::Local(format!("read task: {e}")))?
    .map_err(|e| Failure::Local(format!("cannot read the segment file: {e}")))
}

async fn send_multipart(
    shared: &Shared,
    row: &mut UploadRow,
    source: Source,
    size: u64,
    part_size: u64,
    progress: &Arc<AtomicU64>,
) -> Result<(), Failure> {
    let store = &shared.store;
    let to_send: Vec<(u32, Option<String>)> = match &row.multipart {
        None => {
            let upload_id = store.create_multipart(&row.key).await?;
            row.multipart = Some(Multipart {
                upload_id,
                part_size,
                parts: Vec::new(),
            });
            row.state = UploadState::Uploading;
            persist(shared, row).await?;
            (1..=part_count(size, part_size))
                .map(|n| (n, None))
                .collect()
        }
        Some(m) => {
            let listed = store.list_parts(&row.key, &m.upload_id).await?;
            let plan = plan_resume(size, m.part_size, &m.parts, &listed);
            if plan.keep.len() != m.parts.len() {
                tracing::warn!(
                    object = %row.key,
                    committed = m.parts.len(),
                    confirmed = plan.keep.len(),
                    "the store does not hold every committed part; resending the others"
                );
            }
            tracing::info!(object = %row.key, kept = plan.keep.len(), to_send = plan.send.len(), "resuming a multipart upload");
            if let Some(m) = row.multipart.as_mut() {
                m.parts = plan.keep;
            }
            plan.send
        }
    };
    progress.store(row.bytes_done(), std::sync::atomic::Ordering::Relaxed);
    let upload_id = row
        .multipart
        .as_ref()
        .map(|m| m.upload_id.clone())
        .unwrap_or_default();
    for (number, listed_etag) in to_send {
        let (start, end) = part_range(size, part_size, number);
        let data = source.read_range(start, end).await?;
        let etag = match listed_etag.filter(|e| same_etag(e, &hex_md5(&data))) {
            Some(etag) => {
                // Sent before a crash, its ETag never committed: the store has our bytes.
                progress.fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
                etag
            }
            None => {
                let payload = payload(shared, data, progress);
                store
                    .upload_part(&row.key, &upload_id, number, payload)
                    .await?
            }
        };
        if let Some(m) = row.multipart.as_mut() {
            m.parts.retain(|p| p.number != number);
            m.parts.push(DonePart {
                number,
                size: end - start,
                etag,
            });
            m.parts.sort_by_key(|p| p.number);
        }
        persist(shared, row).await?;
    }
    let etags: Vec<String> = row
        .multipart
        .as_ref()
        .map(|m| m.parts.iter().map(|p| p.etag.clone()).collect())
        .unwrap_or_default();
    if etags.len() != part_count(size, part_size) as usize {
        return Err(Failure::Local(format!(
            "{} of {} parts recorded; the upload will be resumed",
            etags.len(),
            part_count(size, part_size)
        )));
    }
    match store.complete_multipart(&row.key, &upload_id, &etags).await {
        Ok(()) => mark_uploaded(shared, row).await,
        Err(e) if e.kind == FaultKind::Rejected => {
            // The store disagrees with our part list: start this object over.
            row.multipart = None;
            row.state = UploadState::Queued;
            persist(shared, row).await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}
