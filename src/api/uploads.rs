//! The upload side of the API: `GET /api/v1/uploads[?state=]`, `POST
//! /api/v1/uploads/{id}/retry`, `GET /api/v1/callbacks`, `POST
//! /api/v1/callbacks/{id}/retry` and `GET /api/v1/storage` (disk policy).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::notify::{self, CallbackView};

#[derive(Debug, Deserialize)]
pub struct UploadsQuery {
    state: Option<String>,
}

pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<UploadsQuery>,
) -> Result<Response, ApiError> {
    let Some(uploader) = s.uploader else {
        return Ok(Json(serde_json::json!({ "enabled": false, "objects": [] })).into_response());
    };
    let view = tokio::task::spawn_blocking(move || uploader.status(q.state.as_deref()))
        .await
        .map_err(|e| ApiError::internal(format!("uploads task: {e}")))??;
    Ok(Json(view).into_response())
}

pub async fn retry(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uploader = s
        .uploader
        .ok_or_else(|| ApiError::bad_request("uploads are not enabled"))?;
    let view = tokio::task::spawn_blocking(move || uploader.retry(&id).map(|v| (id, v)))
        .await
        .map_err(|e| ApiError::internal(format!("retry task: {e}")))??;
    match view {
        (_, Some(v)) => Ok(Json(v).into_response()),
        (id, None) => Err(ApiError::not_found(format!("upload {id}"))),
    }
}

pub async fn callbacks(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let rows = s.index.callbacks()?;
    let views: Vec<CallbackView> = rows.iter().map(CallbackView::new).collect();
    Ok(Json(views).into_response())
}

pub async fn retry_callback(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match notify::retry(&s.index, &id)? {
        Some(row) => Ok(Json(CallbackView::new(&row)).into_response()),
        None => Err(ApiError::not_found(format!("callback {id}"))),
    }
}

pub async fn storage(State(s): State<ApiState>) -> Response {
    Json(s.recorders.disk_state().status()).into_response()
}
