//! The local HTTP API (axum): health, live streams, recordings, and HLS playback of
//! recordings and live streams. Handlers read the index and the live registry; they never
//! write media. Errors map to HTTP statuses with a JSON `{"error": ...}` body. Every route
//! but `/healthz` sits behind `access::guard` (bearer tokens, signed playback URLs).
//! Served over plain HTTP, or HTTPS when `[http] cert_file` is set (see `https`). The
//! routes, their parameters and JSON shapes are described by `openapi` at
//! `/api/v1/openapi.json`.

mod access;
mod catalog;
mod deletes;
mod extract;
mod files;
mod gzipped;
mod hls;
mod https;
mod metrics;
mod openapi;
mod page;
mod ranged;
mod recordings;
mod server;
mod sources;
mod tasks;
mod uploads;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

pub use access::{Access, PlaybackGrant};
pub use files::PlanCache;

use crate::config::Config;
use crate::index::{Index, IndexError};
use crate::ingest::slots::ConnectionSlots;
use crate::record::Recorders;
use crate::storage::Storage;
use crate::upload::Uploader;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub index: Index,
    pub storage: Storage,
    pub recorders: Recorders,
    pub config: Arc<Config>,
    /// None when uploads are off.
    pub uploader: Option<Uploader>,
    /// Recently planned MP4/FLV/AAC files (range requests plan once).
    pub plans: PlanCache,
    /// Tokens and the playback key (`[http]`).
    pub access: Access,
    /// RTSP cameras pulled and recorded.
    pub sources: crate::ingest::camera::Sources,
    /// Recording tasks (time windows).
    pub tasks: crate::record::tasks::Tasks,
}

/// The whole route table.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/", get(page::index))
        .route("/assets/hls.light.min.js", get(page::hls_js))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/recordings", get(recordings::list))
        .route(
            "/api/v1/recordings/{id}",
            get(recordings::get_one).delete(deletes::delete_recording),
        )
        .route("/api/v1/deletes", get(deletes::list))
        .route("/api/v1/recordings/{id}/file", get(files::download))
        .route(
            "/api/v1/templates",
            get(catalog::list_templates).post(catalog::create_template),
        )
        .route(
            "/api/v1/templates/{name}",
            get(catalog::get_template)
                .put(catalog::replace_template)
                .delete(catalog::delete_template),
        )
        .route(
            "/api/v1/rules",
            get(catalog::list_rules).post(catalog::create_rule),
        )
        .route("/api/v1/rules/{id}", delete(catalog::delete_rule))
        .route("/api/v1/sources", get(sources::list).post(sources::create))
        .route(
            "/api/v1/sources/{name}",
            get(sources::get_one).delete(sources::delete),
        )
        .route("/api/v1/tasks", get(tasks::list).post(tasks::create))
        .route(
            "/api/v1/tasks/{id}",
            get(tasks::get_one).delete(tasks::cancel),
        )
        .route("/api/v1/uploads", get(uploads::list))
        .route("/api/v1/uploads/{id}/retry", post(uploads::retry))
        .route("/api/v1/callbacks", get(uploads::callbacks))
        .route(
            "/api/v1/callbacks/{id}/retry",
            post(uploads::retry_callback),
        )
        .route("/api/v1/storage", get(uploads::storage))
        .route(
            "/hls/recordings/{id}/index.m3u8",
            get(hls::recording_playlist),
        )
        .route("/hls/recordings/{id}/{file}", get(hls::recording_segment))
        .route(
            "/hls/live/{app}/{stream}/index.m3u8",
            get(hls::live_playlist),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::guard,
        ))
        .with_state(state)
}

/// The API server on its own thread and runtime: its handlers read the index and files
/// (sled scans, segment reads) and must never hold up the ingest runtime, whose single
/// thread serves every publisher.
pub struct ApiServer {
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl ApiServer {
    /// Starts serving `listener` (registered with the caller's runtime; moved to the API's
    /// own) until `cancel`.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<crate::tls::ServerTls>>,
        state: ApiState,
        cancel: CancellationToken,
    ) -> std::io::Result<ApiServer> {
        let listener = listener.into_std()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(crate::system::API_BLOCKING_THREADS)
            .enable_all()
            .build()?;
        let (done, stopped) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, tls, state, cancel).await,
                        Err(e) => tracing::error!(error = %e, "http listener"),
                    }
                });
                let _ = done.send(());
            })?;
        Ok(ApiServer { stopped })
    }

    /// Waits until the server has stopped (after its `cancel`).
    pub async fn stopped(self) {
        let _ = self.stopped.await;
    }
}

/// Serves the API until `cancel`: over HTTPS with `tls`, else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::ServerTls>>,
    state: ApiState,
    cancel: CancellationToken,
) {
    let http = &state.config.http;
    let slots = ConnectionSlots::new(http.max_connections, http.max_connections_per_ip);
    let router = router(state);
    match tls {
        None => {
            let incoming = server::PlainListener::new(listener, slots);
            server::serve(incoming, router, cancel).await
        }
        Some(tls) => {
            let incoming = https::TlsListener::new(listener, tls, slots, cancel.clone());
            server::serve(incoming, router, cancel).await
        }
    }
}

/// An API error: a status and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("{what} not found"),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    /// 409: the change conflicts with what exists (the message says why).
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    /// 410: the thing existed but its bytes cannot be had here (evicted, nothing to make).
    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::GONE,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> ApiError {
        tracing::error!(error = %e, "index error in api");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        }
    }
}

/// The body of every error the API answers.
#[derive(Debug, serde::Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

pub use crate::clock::rfc3339;

/// `GET /healthz`.
#[derive(Debug, serde::Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct HealthView {
    /// `ok`, or `unhealthy` (then the status is 503 and `problems` says why).
    pub status: &'static str,
    pub problems: Vec<String>,
    pub live_streams: usize,
    /// Media received but not yet written to flash.
    pub writer_backlog_bytes: usize,
    /// False while the disk policy refuses new publishes.
    pub accepting_new_recordings: bool,
    /// The media folder's filesystem; absent when it cannot be read.
    pub disk: Option<crate::storage::DiskSpace>,
    pub clock: crate::clock_watch::ClockStatus,
}

/// 200 when recording is possible: the index takes a write and the media folder is
/// writable.
#[cfg_attr(test, utoipa::path(get, path = "/healthz", tag = "status",
    responses(
        (status = 200, description = "Recording is possible", body = HealthView),
        (status = 503, description = "Recording is not possible; `problems` says why", body = HealthView),
    )))]
async fn healthz(axum::extract::State(s): axum::extract::State<ApiState>) -> Response {
    let mut problems = Vec::new();
    let index = s.index.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || index.probe_write()).await {
        problems.push(format!("the index cannot write: {e}"));
    }
    if !s.storage.is_writable() {
        problems.push(format!(
            "{} is not writable",
            s.storage.media_dir().display()
        ));
    }
    let healthy = problems.is_empty();
    let body = HealthView {
        status: if healthy { "ok" } else { "unhealthy" },
        problems,
        live_streams: s.recorders.live().len(),
        writer_backlog_bytes: s.recorders.writer_backlog_bytes(),
        accepting_new_recordings: s.recorders.disk_state().accepting(),
        disk: s.storage.disk_space().ok(),
        clock: crate::clock_watch::status(),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Live publishers, each with its live playlist URL (signed when a playback key is set).
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/streams", operation_id = "list_streams", tag = "live",
    responses((status = 200, description = "Live publishers", body = Vec<crate::record::StreamView>))))]
async fn streams(
    axum::extract::State(s): axum::extract::State<ApiState>,
) -> Json<Vec<crate::record::StreamView>> {
    let views = s
        .recorders
        .live()
        .iter()
        .map(|st| {
            let mut view = st.view();
            view.playlist = Some(s.access.playback_url(&format!(
                "/hls/live/{}/{}/index.m3u8",
                view.app, view.stream
            )));
            view
        })
        .collect();
    Json(views)
}
