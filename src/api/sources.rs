//! `/api/v1/sources`: RTSP cameras pulled and recorded. Lists every source with its
//! supervisor's state (`connecting`, `recording`, `backoff`), last error, next attempt,
//! codecs and bitrate; adds and removes API sources (persisted in the index, surviving
//! restarts). Config-defined sources are read-only (409). URLs are shown redacted.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::extract::{JsonBody, Path};
#[cfg(test)]
use super::ErrorBody;
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

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/sources", operation_id = "list_sources", tag = "cameras",
    responses((status = 200, description = "Every source with its supervisor's state", body = Vec<SourceView>))))]
pub async fn list(State(s): State<ApiState>) -> Json<Vec<SourceView>> {
    Json(s.sources.list())
}

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/sources/{name}", operation_id = "get_source", tag = "cameras",
    params(("name" = String, Path, description = "The source's name")),
    responses(
        (status = 200, description = "The source", body = SourceView),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
    )))]
pub async fn get_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<SourceView>, ApiError> {
    s.sources
        .get(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("source {name:?}")))
}

/// Persisted; its supervisor starts connecting at once.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/sources", operation_id = "create_source", tag = "cameras",
    request_body = crate::config::SourceSpec,
    responses(
        (status = 201, description = "Created", body = SourceView),
        (status = 400, description = "Invalid: the message names the key", body = ErrorBody),
        (status = 409, description = "The name, or the app and stream, is taken", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
    )))]
pub async fn create(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let spec: SourceSpec =
        serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("source: {e}")))?;
    let view = s.sources.add(spec)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Stops its supervisor; what it recorded stays.
#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/sources/{name}", operation_id = "delete_source", tag = "cameras",
    params(("name" = String, Path, description = "The source's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 409, description = "Defined in the config file: read-only", body = ErrorBody),
    )))]
pub async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.sources.remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
