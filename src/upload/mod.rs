//! The durable upload queue: a planner that queues sealed segments as they are committed
//! and a recording's playlist once its segments are in the store, and a pool of workers
//! that send objects to the S3-compatible store.
//!
//! Faults are handled by who must act: an outage or refused credentials pause every
//! worker behind one store-wide backoff (1 s doubling to 5 min, with jitter) and never
//! park an object, so a venue offline for days catches up by itself; a fault of one
//! object (a rejected request, an unreadable file) backs that object off and parks it as
//! failed after `max_attempts`, kept and shown until retried from the API. A 401/403 is
//! taken as the credentials' fault until another object goes through while this one is
//! still refused (`refusals`): then it is this object's.

mod deleter;
mod planner;
mod refusals;
mod resume;
pub mod s3;
pub mod throttle;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::config::{CallbackConfig, UploadConfig};
use crate::index::{CallbackRow, Index, IndexError, UploadRow, UploadState};
use crate::storage::Storage;

pub use planner::{render_name, store_path};
use refusals::{Refusals, Refused};
use s3::{FaultKind, S3Store};
use throttle::{backoff, Throttle};
use worker::Failure;

const STORE_BACKOFF_CAP: Duration = Duration::from_secs(300);
const OBJECT_BACKOFF_CAP: Duration = Duration::from_secs(300);
const PLAN_INTERVAL: Duration = Duration::from_secs(1);

/// Store-wide health, shared by the workers.
#[derive(Debug, Default)]
struct StoreHealth {
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    retry_at_ms: i64,
    last_error: Option<String>,
    kind: Option<FaultKind>,
}

pub(crate) struct Shared {
    index: Index,
    storage: Storage,
    config: UploadConfig,
    store: S3Store,
    throttle: Arc<Throttle>,
    segment_target_s: u32,
    public_base: String,
    callback: CallbackConfig,
    health: Mutex<StoreHealth>,
    /// Which 401/403 refusals concern one object rather than the credentials.
    refusals: Mutex<Refusals>,
    /// Objects being sent, with the bytes sent in the current attempt.
    in_flight: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Wakes the planner and idle workers.
    wake: Notify,
    /// Wakes the callback sender.
    pub(crate) callbacks_due: Arc<Notify>,
    /// Wakes the store deleter.
    deletes_due: Notify,
}

/// The upload queue at a glance (see [`Uploader::backlog_summary`]).
#[derive(Debug, Default)]
pub struct BacklogSummary {
    /// Objects by state (`queued`, `uploading`, `failed`; `uploaded` until the
    /// recording's rows go).
    pub objects: HashMap<&'static str, u64>,
    /// Bytes of the objects not yet uploaded.
    pub bytes: u64,
    /// When the oldest object not yet uploaded was queued.
    pub oldest_created_ms: Option<i64>,
    /// `ok`, `unavailable` or `credentials_rejected`.
    pub store_state: &'static str,
}

/// The running uploader; cheap to clone, for the API.
#[derive(Clone)]
pub struct Uploader {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Uploader {
    /// Builds the store client (fails on a bad endpoint, CA file or missing credentials).
    pub fn new(
        index: Index,
        storage: Storage,
        config: &crate::config::Config,
        callbacks_due: Arc<Notify>,
    ) -> Result<Uploader, String> {
        let upload = config.upload.clone();
        let credentials = upload.s3.credentials()?;
        let store = S3Store::new(&upload.s3, &credentials)?;
        let public_base = match &upload.public_base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => store.object_url("").trim_end_matches('/').to_owned(),
        };
        Ok(Uploader {
            shared: Arc::new(Shared {
                index,
                storage,
                throttle: Arc::new(Throttle::new(upload.bandwidth_limit())),
                store,
                segment_target_s: config.record.segment_duration_s,
                public_base,
                callback: config.callback.clone(),
                config: upload,
                health: Mutex::new(StoreHealth::default()),
                refusals: Mutex::new(Refusals::default()),
                in_flight: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                callbacks_due,
                deletes_due: Notify::new(),
            }),
        })
    }

    /// Runs the planner and the workers until `cancel`; in-flight requests are dropped
    /// (their progress is in the index, so the next start resumes them).
    pub async fn run(self, cancel: CancellationToken) {
        let tasks = TaskTracker::new();
        tasks.spawn(plan_loop(self.shared.clone(), cancel.clone()));
        tasks.spawn(deleter::run(self.shared.clone(), cancel.clone()));
        for n in 0..self.shared.config.concurrency {
            tasks.spawn(worker_loop(self.shared.clone(), n, cancel.clone()));
        }
        tasks.close();
        tasks.wait().await;
    }

    /// A recording was deleted: remove its objects from the store now.
    pub fn wake_deleter(&self) {
        self.shared.deletes_due.notify_one();
    }

    /// The public URL of an object key (callbacks and the API).
    pub fn public_url(&self, key: &str) -> String {
        self.shared.public_url(key)
    }

    /// Queue state for `GET /api/v1/uploads`.
    pub fn status(&self, state_filter: Option<&str>) -> Result<UploadsView, IndexError> {
        let in_flight: HashMap<String, u64> = lock(&self.shared.in_flight)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        let store_retry = {
            let h = lock(&self.shared.health);
            h.retry_at
                .filter(|t| h.kind.is_some() && *t > Instant::now())
                .map(|_| crate::clock::rfc3339(h.retry_at_ms))
        };
        let mut objects = Vec::new();
        let mut counts = HashMap::<&'static str, usize>::new();
        for row in self.shared.index.uploads() {
            let row = row?;
            let sending = in_flight.get(&row.id).copied();
            let mut view = ObjectView::new(&row, sending);
            if view.next_attempt.is_none() && sending.is_none() && row.state != UploadState::Failed
            {
                view.next_attempt = store_retry.clone();
            }
            *counts.entry(view.state).or_default() += 1;
            if state_filter.is_none_or(|s| s == view.state) {
                objects.push(view);
            }
        }
        let health = lock(&self.shared.health);
        Ok(UploadsView {
            enabled: true,
            store: StoreView {
                endpoint: self.shared.config.s3.endpoint.clone(),
                bucket: self.shared.config.s3.bucket.clone(),
                state: match health.kind {
                    None => "ok",
                    Some(FaultKind::Credentials) => "credentials_rejected",
                    Some(_) => "unavailable",
                },
                last_error: health.last_error.clone(),
                retry_at: health
                    .retry_at
                    .filter(|_| health.kind.is_some())
                    .map(|_| crate::clock::rfc3339(health.retry_at_ms)),
            },
            counts: counts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            objects,
        })
    }

    /// Puts a parked or backing-off object back in line now, and lifts the store-wide
    /// backoff (the operator fixed something). Returns None if there is no such object.
    pub fn retry(&self, id: &str) -> Result<Option<ObjectView>, IndexError> {
        let Some(mut row) = self.shared.index.get_upload(id)? else {
            return Ok(None);
        };
        if row.state == UploadState::Failed {
            row.state = if row.multipart.is_some() {
                UploadState::Uploading
            } else {
                UploadState::Queued
            };
        }
        row.failures = 0;
        row.next_attempt_ms = 0;
        if !self.shared.index.put_upload(&row)? {
            return Ok(None);
        }
        *lock(&self.shared.health) = StoreHealth::default();
        self.shared.wake.notify_waiters();
        tracing::info!(object = %row.key, "retry requested from the API");
        Ok(Some(ObjectView::new(&row, None)))
    }

    /// A recording's upload state for the API: `queued`, `uploading` or `failed`.
    pub fn recording_state(&self, recording_id: &str) -> Result<&'static str, IndexError> {
        let objects = self.shared.index.uploads_of(recording_id)?;
        Ok(if objects.iter().any(|o| o.state == UploadState::Failed) {
            "failed"
        } else if objects.iter().any(|o| o.state != UploadState::Queued) {
            "uploading"
        } else {
            "queued"
        })
    }

    /// What is waiting for the store, for `/metrics`.
    pub fn backlog_summary(&self) -> Result<BacklogSummary, IndexError> {
        let mut summary = BacklogSummary {
            store_state: match lock(&self.shared.health).kind {
                None => "ok",
                Some(FaultKind::Credentials) => "credentials_rejected",
                Some(_) => "unavailable",
            },
            ..BacklogSummary::default()
        };
        for row in self.shared.index.uploads() {
            let row = row?;
            *summary.objects.entry(row.state.as_str()).or_default() += 1;
            if row.state != UploadState::Uploaded {
                summary.bytes += row.size;
                summary.oldest_created_ms = Some(
                    summary
                        .oldest_created_ms
                        .map_or(row.created_ms, |t| t.min(row.created_ms)),
                );
            }
        }
        Ok(summary)
    }

    /// Pending objects and store state, for `sd_notify` status lines and logs.
    pub fn backlog(&self) -> usize {
        self.shared
            .index
            .uploads()
            .filter(|r| r.as_ref().is_ok_and(|r| r.state != UploadState::Uploaded))
            .count()
    }
}

impl Shared {
    fn public_url(&self, key: &str) -> String {
        format!("{}/{}", self.public_base, key)
    }

    /// Holds a worker while the store is backing off.
    fn store_retry_at(&self) -> Option<Instant> {
        lock(&self.health).retry_at.filter(|t| *t > Instant::now())
    }

    fn store_ok(&self) {
        let mut h = lock(&self.health);
        if h.kind.is_some() {
            tracing::info!("the store answers again");
        }
        *h = StoreHealth::default();
    }

    /// Records a store-wide fault.
    fn store_failed(&self, kind: FaultKind, message: &str) {
        let mut h = lock(&self.health);
        h.consecutive_failures += 1;
        let delay = backoff(h.consecutive_failures, STORE_BACKOFF_CAP);
        let until = Instant::now() + delay;
        // Several workers fail at once; keep the latest deadline.
        if h.retry_at.is_none_or(|t| t < until) {
            h.retry_at = Some(until);
            h.retry_at_ms = now_ms() + delay.as_millis() as i64;
        }
        if h.kind != Some(kind) || h.consecutive_failures == 1 {
            tracing::error!(error = %message, retry_in_s = delay.as_secs(), "store unavailable; uploads paused");
        }
        h.kind = Some(kind);
        h.last_error = Some(message.to_owned());
    }

    /// Claims the next object that is due (oldest recording first), preferring objects
    /// the store has not refused since its last success (see `refusals`).
    fn claim_next(&self) -> Result<Option<(UploadRow, Arc<AtomicU64>)>, IndexError> {
        let now = now_ms();
        let mut in_flight = lock(&self.in_flight);
        let refusals = lock(&self.refusals);
        let mut pick = None;
        for row in self.index.uploads() {
            let row = row?;
            let due = matches!(row.state, UploadState::Queued | UploadState::Uploading)
                && row.next_attempt_ms <= now
                && !in_flight.contains_key(&row.id);
            if !due {
                continue;
            }
            if !refusals.is_suspect(&row.id) {
                pick = Some(row);
                break;
            }
            pick.get_or_insert(row);
        }
        Ok(pick.map(|row| {
            let progress = Arc::new(AtomicU64::new(0));
            in_flight.insert(row.id.clone(), progress.clone());
            (row, progress)
        }))
    }

    fn callback_for(
        &self,
        rec: &crate::index::RecordingRow,
        objects: &[UploadRow],
        now: i64,
    ) -> Option<CallbackRow> {
        if !self.callback.enabled() {
            return None;
        }
        let playlist_key = objects
            .iter()
            .find(|o| o.kind == crate::index::ObjectKind::Playlist)
            .map(|o| o.key.clone())
            .unwrap_or_default();
        let file_size: u64 = objects.iter().map(|o| o.size).sum();
        let body = crate::index::callback_body::completion_body(
            rec,
            &self.callback,
            &self.public_url(&playlist_key),
            file_size,
        );
        Some(CallbackRow::pending(&rec.id, &self.callback.url, body, now))
    }
}

impl Shared {
    fn file_callback_for(
        &self,
        file: &crate::index::FileRow,
        capture: &crate::index::RecordingRow,
        object: &UploadRow,
        now: i64,
    ) -> Option<CallbackRow> {
        if !self.callback.enabled() {
            return None;
        }
        let body = crate::index::callback_body::file_completion_body(
            file,
            capture,
            &self.callback,
            &self.public_url(&object.key),
            object.size,
        );
        Some(CallbackRow::pending(
            &file.id,
            &self.callback.url,
            body,
            now,
        ))
    }
}

async fn plan_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let s = shared.clone();
        let result = tokio::task::spawn_blocking(move || {
            let callback = |rec: &crate::index::RecordingRow, objects: &[UploadRow], now: i64| {
                s.callback_for(rec, objects, now)
            };
            let file_callback =
                |file: &crate::index::FileRow,
                 capture: &crate::index::RecordingRow,
                 object: &UploadRow,
                 now: i64| { s.file_callback_for(file, capture, object, now) };
            let ctx = planner::PlanContext {
                config: &s.config,
                callback: &callback,
                file_callback: &file_callback,
            };
            planner::plan_once(&s.index, &ctx, now_ms())
        })
        .await;
        match result {
            Ok(Ok(report)) => {
                if report.queued > 0 {
                    shared.wake.notify_waiters();
                }
                if !report.completed.is_empty() {
                    shared.callbacks_due.notify_one();
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "upload planner"),
            Err(e) => tracing::error!(error = %e, "upload planner task"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PLAN_INTERVAL) => {}
            _ = shared.wake.notified() => {}
        }
    }
}

async fn worker_loop(shared: Arc<Shared>, n: usize, cancel: CancellationToken) {
    loop {
        if let Some(at) = shared.store_retry_at() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = shared.wake.notified() => {}
            }
            continue;
        }
        let s = shared.clone();
        let claimed = tokio::task::spawn_blocking(move || s.claim_next()).await;
        let (mut row, progress) = match claimed {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(PLAN_INTERVAL) => {}
                    _ = shared.wake.notified() => {}
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "upload queue");
                tokio::time::sleep(PLAN_INTERVAL).await;
                continue;
            }
            Err(_) => return,
        };
        row.attempts += 1;
        tracing::debug!(worker = n, object = %row.key, attempt = row.attempts, "sending");
        let outcome = tokio::select! {
            _ = cancel.cancelled() => None,
            r = worker::send(&shared, &mut row, &progress) => Some(r),
        };
        lock(&shared.in_flight).remove(&row.id);
        match outcome {
            None => return,
            Some(Ok(())) => {
                lock(&shared.refusals).succeeded(&row.id);
                shared.store_ok();
                tracing::info!(object = %row.key, bytes = row.size, "uploaded");
                shared.wake.notify_waiters();
            }
            Some(Err(failure)) => record_failure(&shared, row, failure).await,
        }
    }
}

/// Stores what went wrong and when to try the object again.
async fn record_failure(shared: &Arc<Shared>, mut row: UploadRow, failure: Failure) {
    let now = now_ms();
    match failure {
        Failure::Store(e)
            if e.kind == FaultKind::Credentials
                && lock(&shared.refusals).refused(&row.id) == Refused::Object =>
        {
            // Other objects went through since this one was last refused: a policy on its
            // prefix, or (on some stores) an upload id the store no longer knows.
            tracing::warn!(object = %row.key, "the store refuses this object while others go through; it backs off alone, its multipart upload starts over");
            row.multipart = None;
            row.state = UploadState::Queued;
            object_failed(shared, &mut row, e.message, now);
            if row.state == UploadState::Failed {
                lock(&shared.refusals).forget(&row.id);
            }
        }
        Failure::Store(e) if matches!(e.kind, FaultKind::Unavailable | FaultKind::Credentials) => {
            // The wait is store-wide and held in memory: after a restart every object is
            // tried at once, not at a deadline computed during the outage.
            shared.store_failed(e.kind, &e.message);
            row.last_error = Some(e.message);
        }
        Failure::Store(e) if e.kind == FaultKind::NoSuchUpload => {
            tracing::warn!(object = %row.key, "the store lost the multipart upload; starting the object over");
            shared.store_ok();
            row.multipart = None;
            row.state = UploadState::Queued;
            row.next_attempt_ms = now;
            row.last_error = Some(e.message);
        }
        Failure::Store(e) => {
            shared.store_ok();
            object_failed(shared, &mut row, e.message, now);
        }
        Failure::Local(message) => object_failed(shared, &mut row, message, now),
    }
    let index = shared.index.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = index.put_upload(&row) {
            tracing::error!(error = %e, object = %row.key, "cannot store the upload failure");
        }
    })
    .await;
}

fn object_failed(shared: &Shared, row: &mut UploadRow, message: String, now: i64) {
    row.failures += 1;
    if row.failures >= shared.config.max_attempts {
        tracing::error!(object = %row.key, failures = row.failures, error = %message, "upload parked as failed; retry it from the API");
        row.state = UploadState::Failed;
    } else {
        let delay = backoff(row.failures, OBJECT_BACKOFF_CAP);
        tracing::warn!(object = %row.key, failures = row.failures, error = %message, retry_in_s = delay.as_secs(), "upload failed");
        row.next_attempt_ms = now + delay.as_millis() as i64;
    }
    row.last_error = Some(message);
}

/// `GET /api/v1/uploads`.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct UploadsView {
    pub enabled: bool,
    pub store: StoreView,
    pub counts: HashMap<String, usize>,
    pub objects: Vec<ObjectView>,
}

#[derive(Debug, Serialize, Default)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct StoreView {
    pub endpoint: String,
    pub bucket: String,
    /// `ok`, `unavailable` or `credentials_rejected`.
    pub state: &'static str,
    pub last_error: Option<String>,
    pub retry_at: Option<String>,
}

impl UploadsView {
    /// What the API shows when uploads are off.
    pub fn disabled() -> UploadsView {
        UploadsView {
            enabled: false,
            store: StoreView::default(),
            counts: HashMap::new(),
            objects: Vec::new(),
        }
    }
}

/// One object in the queue.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ObjectView {
    pub id: String,
    pub recording_id: String,
    pub key: String,
    /// `queued`, `sending`, `uploading` (multipart in progress), `uploaded` or `failed`.
    pub state: &'static str,
    pub bytes_sent: u64,
    pub bytes_total: u64,
    /// When it joined the queue (its file was sealed).
    pub queued_at: String,
    pub attempts: u32,
    pub failures: u32,
    pub last_error: Option<String>,
    pub next_attempt: Option<String>,
    pub multipart_upload_id: Option<String>,
}

impl ObjectView {
    fn new(row: &UploadRow, sending: Option<u64>) -> ObjectView {
        let done = row.bytes_done();
        ObjectView {
            id: row.id.clone(),
            recording_id: row.recording_id.clone(),
            key: row.key.clone(),
            state: if sending.is_some() {
                "sending"
            } else {
                row.state.as_str()
            },
            bytes_sent: sending
                .map_or(done, |s| s.max(done))
                .min(row.size.max(done)),
            bytes_total: row.size,
            queued_at: crate::clock::rfc3339(row.created_ms),
            attempts: row.attempts,
            failures: row.failures,
            last_error: row.last_error.clone(),
            next_attempt: (row.next_attempt_ms > now_ms() && row.state != UploadState::Failed)
                .then(|| crate::clock::rfc3339(row.next_attempt_ms)),
            multipart_upload_id: row.multipart.as_ref().map(|m| m.upload_id.clone()),
        }
    }
}
