//! `GET /api/v1/recordings/{id}/file`: an MP4, FLV or AAC recording's bytes, derived
//! from its capture's segments as they are sent (`package`), with an exact
//! `Content-Length`, its `Content-Type`, and single-range `Range` requests (RFC 9110
//! section 14), so a player can seek in a file that is being generated.
//!
//! Planning a file reads all of its segments once; the last few plans are kept in memory
//! so a player's run of range requests plans once. Bytes go out in chunks made on the
//! blocking pool (`ranged`).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;

use super::extract::Path;
use super::{ranged, ApiError, ApiState};
use crate::index::{FileRow, FileState};
use crate::package::{DerivedFile, PackageError};

/// Plans kept for repeated range requests.
const CACHED_PLANS: usize = 4;

/// A planned file under the key it was planned for.
type Entry = (String, Arc<DerivedFile>);

/// Recently planned files, newest last.
#[derive(Clone, Default)]
pub struct PlanCache {
    plans: Arc<Mutex<Vec<Entry>>>,
}

impl PlanCache {
    /// A key that changes whenever the file's span or segments do.
    fn key(row: &FileRow) -> String {
        format!(
            "{}:{}:{}:{}",
            row.id, row.last_seq, row.segments, row.ts_bytes
        )
    }

    fn get(&self, key: &str) -> Option<Arc<DerivedFile>> {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.iter().find(|(k, _)| k == key).map(|(_, p)| p.clone())
    }

    fn put(&self, key: String, plan: Arc<DerivedFile>) {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.retain(|(k, _)| *k != key);
        plans.push((key, plan));
        let excess = plans.len().saturating_sub(CACHED_PLANS);
        plans.drain(..excess);
    }
}

impl From<PackageError> for ApiError {
    fn from(e: PackageError) -> ApiError {
        match e {
            PackageError::Evicted(_) | PackageError::Empty(_) => ApiError::gone(e.to_string()),
            PackageError::Gone(id) => ApiError::not_found(format!("recording {id}")),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// The planned file of `row`, from the cache or made now.
async fn plan(s: &ApiState, row: &FileRow) -> Result<Arc<DerivedFile>, ApiError> {
    let key = PlanCache::key(row);
    if let Some(plan) = s.plans.get(&key) {
        return Ok(plan);
    }
    let (index, storage, row) = (s.index.clone(), s.storage.clone(), row.clone());
    let plan = tokio::task::spawn_blocking(move || DerivedFile::plan(&index, &storage, &row))
        .await
        .map_err(|e| ApiError::internal(format!("packaging task: {e}")))??;
    let plan = Arc::new(plan);
    s.plans.put(key, plan.clone());
    Ok(plan)
}

/// The file, packaged from the capture's segments on the fly (an open one as far as it
/// has recorded), with `Range` support.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/recordings/{id}/file", operation_id = "download_file", tag = "recordings",
    params(
        ("id" = String, Path, description = "A file recording's id (`<capture>_<format><n>`)"),
        ("Range" = Option<String>, Header, nullable = false, description = "One byte range, `bytes=FROM-[TO]` or `bytes=-SUFFIX`; others are ignored"),
    ),
    responses(
        (status = 200, description = "The whole file", content(
            (Vec<u8> = "video/mp4"), (Vec<u8> = "video/x-flv"), (Vec<u8> = "audio/mp4"))),
        (status = 206, description = "The range asked for", content(
            (Vec<u8> = "video/mp4"), (Vec<u8> = "video/x-flv"), (Vec<u8> = "audio/mp4"))),
        (status = 400, description = "A malformed path", body = super::ErrorBody),
        (status = 404, description = "No such file recording", body = super::ErrorBody),
        (status = 410, description = "Evicted after upload, or nothing to make (skipped)", body = super::ErrorBody),
        (status = 416, description = "The range is outside the file"),
    )))]
pub async fn download(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = s
        .index
        .get_file(&id)?
        .ok_or_else(|| ApiError::not_found(format!("file recording {id}")))?;
    if row.format == crate::config::Format::Hls {
        return Err(ApiError::not_found(format!(
            "recording {id} is HLS: play /hls/recordings/{id}/index.m3u8"
        )));
    }
    let capture = s
        .index
        .get_recording(&row.capture_id)?
        .filter(|c| !c.deleting)
        .ok_or_else(|| ApiError::not_found(format!("file recording {id}")))?;
    if capture.evicted_ms.is_some() {
        return Err(PackageError::Evicted(id).into());
    }
    // An open file is served as far as its capture has recorded.
    let row = row.live(&capture);
    if row.state == FileState::Skipped {
        return Err(ApiError::gone(
            row.note.unwrap_or_else(|| "nothing to make".into()),
        ));
    }
    let plan = plan(&s, &row).await?;
    ranged::response(
        &headers,
        plan.len(),
        &[
            (header::CONTENT_TYPE, row.format.content_type().to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", row.download_name()),
            ),
        ],
        move |from, to| {
            plan.read_range(from, to)
                .map(axum::body::Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string()))
        },
    )
}
