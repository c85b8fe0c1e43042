//! RTSP pull: cameras listed in `[[source]]` or added over the API, each recorded like an
//! RTMP publish (same recorder, resume window, templates, rules, upload, callbacks).
//!
//! Owns: the registry of sources ([`Sources`]: start, add, remove, list, persisted API
//! sources) and the seam to the RTSP client ([`CameraConnector`] / [`CameraFeed`], which
//! yield only our own [`Pulled`] items: the recorder never sees retina types, and tests
//! can inject a feed). Supervision (reconnect, backoff, idle detection) is in
//! `supervisor`; the retina adapter in `retina_feed`.
//!
//! Credentials: a source's URL is shown only through `SourceSpec::redacted_url`.

mod retina_feed;
mod supervisor;
mod tls_tunnel;
mod track_sync;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use retina_feed::RetinaConnector;

use crate::config::SourceSpec;
use crate::index::Index;
use crate::media::{CodecParams, Frame, Ticks};
use crate::record::catalog::Source as Origin;
use crate::record::Recorders;

/// One item from a camera, in arrival order.
#[derive(Debug)]
pub enum Pulled {
    /// A track's decoder configuration: before its first frame, and again when the
    /// camera changes it (the recorder starts a new segment with a discontinuity).
    Params(CodecParams),
    /// A frame with decode and presentation times in 90 kHz ticks.
    Frame(Frame),
    /// The camera's wall clock from an RTCP sender report: presentation time `at` (the
    /// frames' ticks) was `unix_ms`. Not media: it does not count against the idle timeout.
    WallClock { at: Ticks, unix_ms: i64 },
    /// The first sender reports of both tracks were compared: the audio was moved onto
    /// the video's timeline, or the reports were not believed. Logged.
    Aligned(track_sync::Alignment),
}

/// What a connected camera offers, as the API shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct FeedInfo {
    /// The recorded video codec (`h264`, `h265`), if any.
    pub video: Option<String>,
    /// The recorded audio codec (`aac`), if any.
    pub audio: Option<String>,
    /// Why the camera's audio is not recorded (`"pcma: not storable in MPEG-TS"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_dropped: Option<String>,
}

/// A connected camera session, playing.
pub trait CameraFeed: Send {
    fn info(&self) -> &FeedInfo;
    /// The next item; `Ok(None)` when the camera ended the session.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Pulled>, String>>;
}

/// Opens camera sessions (DESCRIBE, SETUP, PLAY).
pub trait CameraConnector: Send + Sync + 'static {
    fn connect(&self, spec: SourceSpec) -> BoxFuture<'static, Result<Box<dyn CameraFeed>, String>>;
}

/// Where a source's supervisor is.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub enum SourceState {
    Connecting,
    Recording,
    Backoff,
    Stopped,
}

/// A source as `GET /api/v1/sources` shows it. Never carries credentials.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct SourceView {
    pub name: String,
    pub app: String,
    pub stream: String,
    /// With any user and password replaced by `***`.
    pub url: String,
    pub transport: &'static str,
    pub idle_timeout_s: u64,
    /// `config` (read-only over the API) or `api`.
    #[cfg_attr(test, schema(value_type = crate::record::catalog::Source))]
    pub source: Origin,
    pub state: SourceState,
    pub last_error: Option<String>,
    /// When the next connection attempt is due (RFC 3339), while in `backoff`.
    pub next_attempt: Option<String>,
    /// Connection attempts since the daemon started.
    pub attempts: u64,
    /// The recording being written, while `recording`.
    pub recording_id: Option<String>,
    #[serde(flatten)]
    pub codecs: FeedInfo,
    pub resolution: Option<String>,
    pub bitrate_bps: u64,
}

/// A supervisor's live state, written by it and read by the API.
#[derive(Clone)]
struct Status {
    state: SourceState,
    last_error: Option<String>,
    next_attempt_ms: Option<i64>,
    attempts: u64,
    recording: Option<Arc<crate::record::LiveStats>>,
    info: FeedInfo,
}

struct Entry {
    spec: SourceSpec,
    origin: Origin,
    status: Mutex<Status>,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    fn view(&self) -> SourceView {
        let s = lock(&self.status).clone();
        let live = s.recording.as_ref().map(|stats| stats.view());
        SourceView {
            name: self.spec.name(),
            app: self.spec.app.clone(),
            stream: self.spec.stream.clone(),
            url: self.spec.redacted_url(),
            transport: self.spec.transport.as_str(),
            idle_timeout_s: self.spec.idle_timeout_s,
            source: self.origin,
            state: s.state,
            last_error: s.last_error,
            next_attempt: s.next_attempt_ms.map(crate::clock::rfc3339),
            attempts: s.attempts,
            recording_id: live.as_ref().map(|v| v.recording_id.clone()),
            codecs: s.info,
            resolution: live.as_ref().and_then(|v| v.resolution.clone()),
            bitrate_bps: live.as_ref().map_or(0, |v| v.bitrate_bps),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }
}

/// Why an API change to the sources was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("source {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
}

/// The camera sources and their supervisors. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    connector: Arc<dyn CameraConnector>,
    recorders: Recorders,
    index: Index,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// The ingest runtime: supervisors run there even when the API (on its own runtime)
    /// adds a source.
    runtime: tokio::runtime::Handle,
}

impl Sources {
    /// Starts a supervisor for every config source and every API source persisted in
    /// the index. An API source that no longer validates (or collides with a config
    /// source) is skipped with a warning, not deleted.
    pub fn start(
        config: &[SourceSpec],
        index: Index,
        recorders: Recorders,
        connector: Arc<dyn CameraConnector>,
        cancel: CancellationToken,
    ) -> Sources {
        let sources = Sources {
            inner: Arc::new(Inner {
                entries: Mutex::new(BTreeMap::new()),
                connector,
                recorders,
                index,
                cancel,
                tracker: TaskTracker::new(),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        for spec in config {
            sources.spawn(spec.clone(), Origin::Config);
        }
        match sources.inner.index.api_sources() {
            Ok(rows) => {
                for (name, row) in rows {
                    let added = serde_json::from_value::<SourceSpec>(row)
                        .map_err(|e| e.to_string())
                        .and_then(|spec| sources.check(&spec).map(|()| spec));
                    match added {
                        Ok(spec) => sources.spawn(spec, Origin::Api),
                        Err(reason) => {
                            tracing::warn!(source = %name, %reason, "stored camera source not started")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the stored camera sources"),
        }
        sources
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        lock(&self.inner.entries)
    }

    /// Validation and uniqueness against the running sources.
    fn check(&self, spec: &SourceSpec) -> Result<(), String> {
        if let Some(p) = spec.problems("source").into_iter().next() {
            return Err(p.to_string());
        }
        let entries = self.entries();
        if entries.contains_key(&spec.name()) {
            return Err(format!("a source named {:?} exists", spec.name()));
        }
        if let Some(other) = entries
            .values()
            .find(|e| e.spec.stream_key() == spec.stream_key())
        {
            return Err(format!(
                "{} is already pulled by source {:?}",
                spec.stream_key(),
                other.spec.name()
            ));
        }
        Ok(())
    }

    fn spawn(&self, spec: SourceSpec, origin: Origin) {
        let entry = Arc::new(Entry {
            origin,
            status: Mutex::new(Status {
                state: SourceState::Connecting,
                last_error: None,
                next_attempt_ms: None,
                attempts: 0,
                recording: None,
                info: FeedInfo::default(),
            }),
            cancel: self.inner.cancel.child_token(),
            spec,
        });
        self.entries().insert(entry.spec.name(), entry.clone());
        let connector = self.inner.connector.clone();
        let recorders = self.inner.recorders.clone();
        self.inner.tracker.spawn_on(
            supervisor::run(entry, connector, recorders),
            &self.inner.runtime,
        );
    }

    /// Every source, by name.
    pub fn list(&self) -> Vec<SourceView> {
        self.entries().values().map(|e| e.view()).collect()
    }

    pub fn get(&self, name: &str) -> Option<SourceView> {
        self.entries().get(name).map(|e| e.view())
    }

    /// Adds an API source: validated, persisted, then started.
    pub fn add(&self, spec: SourceSpec) -> Result<SourceView, SourceError> {
        self.check(&spec).map_err(|m| {
            if m.starts_with("source.") {
                SourceError::Invalid(m)
            } else {
                SourceError::Conflict(m)
            }
        })?;
        let row = serde_json::to_value(&spec).map_err(|e| SourceError::Invalid(e.to_string()))?;
        self.inner.index.put_api_source(&spec.name(), &row)?;
        let name = spec.name();
        tracing::info!(source = %name, stream = %spec.stream_key(), url = %spec.redacted_url(), "camera source added");
        self.spawn(spec, Origin::Api);
        self.get(&name).ok_or(SourceError::NotFound(name))
    }

    /// Stops and forgets an API source. Its recording ends (and stays resumable for the
    /// resume window, like a publisher that went away).
    pub fn remove(&self, name: &str) -> Result<(), SourceError> {
        let entry = {
            let entries = self.entries();
            let entry = entries
                .get(name)
                .ok_or_else(|| SourceError::NotFound(name.to_owned()))?;
            if entry.origin == Origin::Config {
                return Err(SourceError::Conflict(format!(
                    "source {name:?} is defined in the config file; remove it there"
                )));
            }
            entry.clone()
        };
        self.inner.index.remove_api_source(name)?;
        entry.cancel.cancel();
        self.entries().remove(name);
        tracing::info!(source = %name, "camera source removed");
        Ok(())
    }

    /// Waits for every supervisor to stop (after the daemon's cancel).
    pub async fn stopped(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}
