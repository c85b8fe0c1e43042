//! The upload side of the API: `GET /api/v1/uploads[?state=]`, `POST
//! /api/v1/uploads/{id}/retry`, `GET /api/v1/callbacks[?state=]`, `POST
//! /api/v1/callbacks/{id}/retry` and `GET /api/v1/storage` (disk policy).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::extract::{Path, Query};
#[cfg(test)]
use super::ErrorBody;
use super::{ApiError, ApiState};
use crate::index::CallbackState;
use crate::notify::{self, CallbackView};
use crate::storage::retention::DiskStatus;
use crate::upload::{ObjectView, UploadsView};

/// Filter of `GET /api/v1/uploads`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct UploadsQuery {
    /// Only objects in this state (`queued`, `uploading`, `uploaded`, `failed`).
    state: Option<String>,
}

/// The store's state and the upload queue, newest first.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/uploads", operation_id = "list_uploads", tag = "upload",
    params(UploadsQuery),
    responses(
        (status = 200, description = "The queue (`enabled: false` and empty when uploads are off)", body = UploadsView),
        (status = 400, description = "A malformed query", body = ErrorBody),
    )))]
pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<UploadsQuery>,
) -> Result<Json<UploadsView>, ApiError> {
    let Some(uploader) = s.uploader else {
        return Ok(Json(UploadsView::disabled()));
    };
    let view = tokio::task::spawn_blocking(move || uploader.status(q.state.as_deref()))
        .await
        .map_err(|e| ApiError::internal(format!("uploads task: {e}")))??;
    Ok(Json(view))
}

/// Sends a failed object again now (and resets its backoff).
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/uploads/{id}/retry", operation_id = "retry_upload", tag = "upload",
    params(("id" = String, Path, description = "The object's id in the queue")),
    responses(
        (status = 200, description = "The object, queued again", body = ObjectView),
        (status = 400, description = "Uploads are off, or a malformed path", body = ErrorBody),
        (status = 404, description = "No such object", body = ErrorBody),
    )))]
pub async fn retry(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ObjectView>, ApiError> {
    let uploader = s
        .uploader
        .ok_or_else(|| ApiError::bad_request("uploads are not enabled"))?;
    let view = tokio::task::spawn_blocking(move || uploader.retry(&id).map(|v| (id, v)))
        .await
        .map_err(|e| ApiError::internal(format!("retry task: {e}")))??;
    match view {
        (_, Some(v)) => Ok(Json(v)),
        (id, None) => Err(ApiError::not_found(format!("upload {id}"))),
    }
}

/// Filter of `GET /api/v1/callbacks`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct CallbacksQuery {
    /// Only callbacks in these states, comma-separated (`pending`, `delivered`,
    /// `failed`). Without it every callback, delivered ones included: a box keeps
    /// every one it ever sent, so a page that polls should ask for `pending,failed`.
    state: Option<String>,
}

/// Completion (and status) callbacks, by id.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/callbacks", operation_id = "list_callbacks", tag = "upload",
    params(CallbacksQuery),
    responses(
        (status = 200, description = "The callbacks asked for", body = Vec<CallbackView>),
        (status = 400, description = "An unknown state", body = ErrorBody),
    )))]
pub async fn callbacks(
    State(s): State<ApiState>,
    Query(q): Query<CallbacksQuery>,
) -> Result<Json<Vec<CallbackView>>, ApiError> {
    let states = match q.state.as_deref() {
        None => CallbackState::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|name| {
                CallbackState::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state: {name:?} is not one of pending, delivered, failed"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let index = s.index.clone();
    let rows = tokio::task::spawn_blocking(move || index.callbacks_in(&states))
        .await
        .map_err(|e| ApiError::internal(format!("callbacks task: {e}")))??;
    Ok(Json(rows.iter().map(CallbackView::new).collect()))
}

/// Delivers a failed callback again now.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/callbacks/{id}/retry", tag = "upload",
    params(("id" = String, Path, description = "The callback's id (its recording's)")),
    responses(
        (status = 200, description = "The callback, pending again", body = CallbackView),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such callback", body = ErrorBody),
    )))]
pub async fn retry_callback(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CallbackView>, ApiError> {
    match notify::retry(&s.index, &id)? {
        Some(row) => Ok(Json(CallbackView::new(&row))),
        None => Err(ApiError::not_found(format!("callback {id}"))),
    }
}

/// The disk policy: usage against the watermarks and what it did last.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/storage", operation_id = "disk_policy", tag = "status",
    responses((status = 200, description = "The disk policy's state", body = DiskStatus))))]
pub async fn storage(State(s): State<ApiState>) -> Json<DiskStatus> {
    Json(s.recorders.disk_state().status())
}
