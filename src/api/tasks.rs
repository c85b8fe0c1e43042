//! `/api/v1/tasks`: recording tasks over HTTP (`record::tasks` owns their checks and
//! scheduling). A task is shown with its state as of now (`scheduled`, `waiting`,
//! `recording`, `finished`, `cancelled`) and the recordings made for it.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{JsonBody, Path};
#[cfg(test)]
use super::ErrorBody;
use super::{rfc3339, ApiError, ApiState};
use crate::index::TaskRow;
use crate::record::tasks::{NewTask, TaskError};

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> ApiError {
        match e {
            TaskError::Invalid(m) => ApiError::bad_request(m),
            TaskError::Conflict(m) => ApiError::conflict(m),
            TaskError::NotFound(id) => ApiError::not_found(format!("task {id}")),
            TaskError::Index(e) => e.into(),
        }
    }
}

/// One task as the API shows it.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct TaskView {
    pub task_id: String,
    pub app: String,
    pub stream: String,
    pub template: String,
    /// The window (a clip's start already moved back by its pre-roll).
    pub start_time: String,
    pub end_time: String,
    pub pre_roll_s: u32,
    /// `scheduled`, `waiting` (window open, the stream is not recorded for it right
    /// now), `recording`, `finished` or `cancelled`.
    pub state: &'static str,
    pub created_time: String,
    /// When it finished or was cancelled.
    pub ended_time: Option<String>,
    /// Why it is not recording inside its window, if something stops it.
    pub note: Option<String>,
    /// The recording being made for it now; on a stream a rule records, the rule's
    /// recording its own recordings are spans of.
    pub recording_id: Option<String>,
    /// Every recording made for it (HLS recordings and MP4/FLV/AAC files), newest first;
    /// `GET /api/v1/recordings?task_id=` lists them whole.
    pub recordings: Vec<String>,
}

fn view(s: &ApiState, row: &TaskRow) -> Result<TaskView, ApiError> {
    Ok(TaskView {
        task_id: row.id.clone(),
        app: row.app.clone(),
        stream: row.stream.clone(),
        template: row.template.clone(),
        start_time: rfc3339(row.start_ms),
        end_time: rfc3339(row.end_ms),
        pre_roll_s: row.pre_roll_s,
        state: s.tasks.state_of(row),
        created_time: rfc3339(row.created_ms),
        ended_time: row.ended_ms.map(rfc3339),
        note: row.note.clone(),
        recording_id: s.recorders.recording_for_task(&row.id),
        recordings: s.tasks.recordings(&row.id)?,
    })
}

/// Runs `f` on a blocking thread (index IO).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("task: {e}")))?
}

/// Filters of `GET /api/v1/tasks`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct TaskQuery {
    /// Only tasks in this state (`scheduled`, `waiting`, `recording`, `finished`,
    /// `cancelled`).
    state: Option<String>,
}

const STATES: [&str; 5] = ["scheduled", "waiting", "recording", "finished", "cancelled"];

#[cfg_attr(test, utoipa::path(post, path = "/api/v1/tasks", tag = "tasks",
    request_body = NewTask,
    responses(
        (status = 201, description = "Scheduled", body = TaskView),
        (status = 400, description = "Invalid: end before start, more than 6 days ahead, a window over 24 hours, an unknown template, a bad name", body = ErrorBody),
        (status = 409, description = "Another task's window on the stream overlaps, or a rule records the stream", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
    )))]
pub async fn create(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let new: NewTask =
        serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("task: {e}")))?;
    let state = s.clone();
    let view = blocking(move || {
        let row = state.tasks.create(&new, crate::clock::now_ms())?;
        view(&state, &row)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/tasks", tag = "tasks",
    params(TaskQuery),
    responses(
        (status = 200, description = "Every task (the last 1,000 ended ones are kept), newest first", body = Vec<TaskView>),
        (status = 400, description = "An unknown state", body = ErrorBody),
    )))]
pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    let want = q.state.filter(|w| !w.is_empty());
    if let Some(w) = &want {
        if !STATES.contains(&w.as_str()) {
            return Err(ApiError::bad_request(format!(
                "state must be one of {} (got {w:?})",
                STATES.join(", ")
            )));
        }
    }
    blocking(move || {
        let mut views = Vec::new();
        for row in s.tasks.list()? {
            if want.as_deref().is_none_or(|w| w == s.tasks.state_of(&row)) {
                views.push(view(&s, &row)?);
            }
        }
        Ok(Json(views))
    })
    .await
}

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    )))]
pub async fn get_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    blocking(move || {
        let row = s
            .tasks
            .get(&id)?
            .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
        Ok(Json(view(&s, &row)?))
    })
    .await
}

/// Cancels the task: a running one stops now and keeps what it recorded.
#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Cancelled", body = TaskView),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task already finished or was cancelled", body = ErrorBody),
    )))]
pub async fn cancel(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    blocking(move || {
        let row = s.tasks.cancel(&id, crate::clock::now_ms())?;
        Ok(Json(view(&s, &row)?))
    })
    .await
}
