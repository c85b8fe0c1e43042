//! `GET /api/v1/recordings/{id}/file`: an MP4, FLV or AAC recording's bytes, derived
//! from its capture's segments as they are sent (`package`), with an exact
//! `Content-Length`, its `Content-Type`, and single-range `Range` requests (RFC 9110
//! section 14), so a player can seek in a file that is being generated.
//!
//! Planning a file reads all of its segments once; the last few plans are kept in memory
//! so a player's run of range requests plans once. Bytes go out in chunks of
//! [`CHUNK`] made on the blocking pool.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::index::{FileRow, FileState};
use crate::package::{DerivedFile, PackageError};

/// Bytes produced per step of a response body.
const CHUNK: u64 = 1024 * 1024;
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

/// A single byte range from a `Range` header: `Ok(None)` = the whole file.
fn parse_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let Some(spec) = value.to_str().ok().and_then(|v| v.strip_prefix("bytes=")) else {
        return Ok(None); // another unit: ignore the header, as RFC 9110 allows
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            if b < a {
                return Err(());
            }
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

pub async fn download(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = s
        .index
        .get_file(&id)?
        .ok_or_else(|| ApiError::not_found(format!("file recording {id}")))?;
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
    let len = plan.len();
    let (status, start, end) = match parse_range(&headers, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response())
        }
    };
    let stream = futures_util::stream::unfold(start, move |at| {
        let plan = plan.clone();
        async move {
            if at >= end {
                return None;
            }
            let to = (at + CHUNK).min(end);
            let chunk = tokio::task::spawn_blocking(move || plan.read_range(at, to)).await;
            let item = match chunk {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let next = if item.is_ok() { to } else { end };
            Some((item, next))
        }
    });
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, row.format.content_type())
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", row.download_name()),
        );
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    response
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        parse_range(&h, len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range("bytes=0-3", 10), Ok(Some((0, 4))));
        assert_eq!(range("bytes=4-", 10), Ok(Some((4, 10))));
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 10))));
        assert_eq!(range("bytes=5-100", 10), Ok(Some((5, 10))));
        assert_eq!(range("bytes=10-", 10), Err(()));
        assert_eq!(range("bytes=5-2", 10), Err(()));
        assert_eq!(range("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(range("items=0-1", 10), Ok(None));
    }
}
