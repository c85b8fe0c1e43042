//! `DELETE /api/v1/recordings/{id}` and `GET /api/v1/deletes`: deleting one recording
//! here and in the store, and what the store side still has to do.
//!
//! The index hides the recording and queues its store objects in one transaction
//! (`index/deletes.rs`); when no recording over its capture is left, the capture's folder
//! and rows go too (invariant 3, as retention does), and the uploader's deleter removes
//! the objects, retrying while the store is unreachable.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Path, Query};
#[cfg(test)]
use super::ErrorBody;
use super::{rfc3339, ApiError, ApiState};
use crate::index::{DeleteError, FileRow, RecordingState, StoreDeleteRow, Update};

/// How long `?stop=true` waits for a live recording's writer to seal and stop.
const STOP_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct DeleteQuery {
    /// `true`: end a recording that is still being recorded (or waits in its resume
    /// window) first, instead of refusing with 409.
    stop: Option<bool>,
}

/// What a delete did.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct DeletedView {
    pub id: String,
    /// The capture's segments were removed from flash: no recording over them is left.
    pub local_files_removed: bool,
    /// Store objects (and multipart uploads) still to remove; see `GET /api/v1/deletes`.
    pub store_objects_pending: usize,
}

/// A deleted recording's store objects still to remove.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct StoreDeleteView {
    pub id: String,
    pub objects_left: usize,
    pub multipart_uploads_left: usize,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt: String,
    pub queued_at: String,
}

impl StoreDeleteView {
    fn new(row: &StoreDeleteRow) -> StoreDeleteView {
        StoreDeleteView {
            id: row.id.clone(),
            objects_left: row.keys.len(),
            multipart_uploads_left: row.aborts.len(),
            attempts: row.attempts,
            last_error: row.last_error.clone(),
            next_attempt: rfc3339(row.next_attempt_ms),
            queued_at: rfc3339(row.created_ms),
        }
    }
}

/// Deletes a recording (HLS or one file): its local files once no recording over its
/// capture is left, and its objects in the store (queued, retried until done).
#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/recordings/{id}", operation_id = "delete_recording", tag = "recordings",
    params(("id" = String, Path, description = "A recording id: a capture's, or a file's (`<capture>_<format><n>`), or a task's over a rule's capture (`<capture>_<format>-<task>-<n>`)"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted here; store objects queued", body = DeletedView),
        (status = 400, description = "A malformed path or query", body = ErrorBody),
        (status = 404, description = "No such recording (or already deleted)", body = ErrorBody),
        (status = 409, description = "Still being recorded, and `stop` was not `true`", body = ErrorBody),
    )))]
pub async fn delete_recording(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<DeletedView>, ApiError> {
    let capture_id = FileRow::capture_of(&id).unwrap_or(&id).to_owned();
    // `stop` ends the recording's own capture; a task's recording over a rule's capture
    // never stops the rule's recording (its task window decides when it is final).
    if q.stop == Some(true) && !FileRow::is_overlay_id(&id) {
        stop(&s, &capture_id).await?;
    }
    let state = s.clone();
    let target = id.clone();
    let view = tokio::task::spawn_blocking(move || -> Result<DeletedView, ApiError> {
        let deleted = state.index.delete_recording(&target).map_err(|e| match e {
            DeleteError::NotFound(_) => ApiError::not_found(format!("recording {target}")),
            DeleteError::Open(_, how) => ApiError::conflict(format!(
                "recording {target} is {how}; DELETE with ?stop=true ends it first"
            )),
            DeleteError::Index(e) => e.into(),
        })?;
        let local_files_removed = deleted.capture.is_some();
        if let Some(capture) = &deleted.capture {
            crate::storage::recovery::finish_delete(&state.index, &state.storage, capture)
                .map_err(|e| ApiError::internal(format!("removing {}: {e}", capture.id)))?;
        }
        tracing::info!(recording = %target, local_files_removed, store_objects = deleted.store_objects, "recording deleted over the API");
        Ok(DeletedView {
            id: target,
            local_files_removed,
            store_objects_pending: deleted.store_objects,
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("delete task: {e}")))??;
    if let Some(uploader) = &s.uploader {
        uploader.wake_deleter();
    }
    Ok(Json(view))
}

/// Ends an open capture: a live one is stopped (its writer seals and the publisher is
/// disconnected), then one waiting in its resume window is closed.
async fn stop(s: &ApiState, capture_id: &str) -> Result<(), ApiError> {
    let deadline = Instant::now() + STOP_WAIT;
    s.recorders
        .stop_recording(capture_id, "its recording is being deleted over the API");
    loop {
        let index = s.index.clone();
        let id = capture_id.to_owned();
        let row = tokio::task::spawn_blocking(move || index.get_recording(&id))
            .await
            .map_err(|e| ApiError::internal(format!("index task: {e}")))??;
        let Some(row) = row else {
            return Ok(());
        };
        if row.state != RecordingState::Recording {
            break; // Sealed, and finished: a camera that reconnects records anew.
        }
        if Instant::now() >= deadline {
            return Err(ApiError::conflict(format!(
                "recording {capture_id} did not stop within {} s",
                STOP_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let index = s.index.clone();
    let id = capture_id.to_owned();
    tokio::task::spawn_blocking(move || {
        index.update_recording(&id, |r| {
            if r.state != RecordingState::Resumable {
                return Update::Skip;
            }
            r.state = RecordingState::Finished;
            r.resumable_until_ms = None;
            Update::Write
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("index task: {e}")))??;
    Ok(())
}

/// Deleted recordings whose store objects are not all removed yet.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/deletes", operation_id = "list_store_deletes", tag = "recordings",
    responses((status = 200, description = "Store deletes still to do, oldest recording first", body = Vec<StoreDeleteView>))))]
pub async fn list(State(s): State<ApiState>) -> Result<Json<Vec<StoreDeleteView>>, ApiError> {
    let index = s.index.clone();
    let rows = tokio::task::spawn_blocking(move || index.store_deletes())
        .await
        .map_err(|e| ApiError::internal(format!("index task: {e}")))??;
    Ok(Json(rows.iter().map(StoreDeleteView::new).collect()))
}
