//! `/api/v1/sources`: RTSP cameras pulled and recorded. Lists every source with its
//! supervisor's state (`connecting`, `recording`, `backoff`), last error, next attempt,
//! codecs and bitrate; adds and removes API sources (persisted in the index, surviving
//! restarts). Config-defined sources are read-only (409). URLs are shown redacted.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{ApiError, ApiState};
use crate::config::SourceSpec;
use crate::ingest::camera::{SourceError, SourceView};

impl From<SourceError> for ApiError {
    fn from(e: SourceError) -> ApiError {
        match e {
            SourceError::Invalid(m) => ApiError::bad_request(m),
            SourceError::Conflict(m) => ApiError::conflict(m),
            SourceError::NotFound(name) => ApiError::not_found(format!("source {name:?}")),
            SourceError::Index(e) => e.into(),
        }
    }
}

pub async fn list(State(s): State<ApiState>) -> Json<Vec<SourceView>> {
    Json(s.sources.list())
}

pub async fn get_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<SourceView>, ApiError> {
    s.sources
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("source {name:?}")))
}

pub async fn create(
    State(s): State<ApiState>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let spec: SourceSpec =
        serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("source: {e}")))?;
    let view = s.sources.add(spec)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.sources.remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
