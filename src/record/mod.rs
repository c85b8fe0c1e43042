//! Recording: which live stream records into which recording, the resume window, and the
//! hand-off from the ingest to the per-stream writer thread.
//!
//! Owns [`Recorders`] (the registry of live publishers: one recorder per `app/stream`, a
//! second publisher is refused), [`PublishHandle`] (what an ingest connection holds: it
//! sends frames through a byte-budgeted channel and never waits on flash, invariant 6) and
//! the resume window (a publish within `flow_continue_duration_s` of the last one
//! continues the same recording; [`run_resume_reaper`] finishes recordings whose window
//! passed). Writing happens in [`session`], on one thread per live stream.

mod budget;
pub mod catalog;
mod clock_anchor;
pub mod files;
mod handle;
mod live_stats;
pub mod lookback;
pub mod playlist;
mod preroll;
mod reaper;
mod session;
pub mod task_files;
pub mod tasks;
pub mod timeline;
pub mod write_bounds;

pub use handle::{PublishHandle, RecorderStopped};
use handle::{Rewire, Wiring};
use live_stats::placeholder_stats;
pub use live_stats::{LiveStats, StreamView};
pub use reaper::run_resume_reaper;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{RecordConfig, Template};
use crate::index::{Index, IndexError, RecordingRow, RecordingState, Update};
use crate::media::{CodecParams, Ticks};
use crate::metrics;
use crate::mux::MuxError;
use crate::storage::retention::DiskState;
use crate::storage::Storage;
use crate::stream_key::StreamKey;
use catalog::{Catalog, Plan};
use session::RecordingSession;
use write_bounds::CutHistory;

/// Frames are handed to the writer thread in batches, so it wakes a few times a second
/// instead of once per frame: the ingest hands over what it collected each time it has
/// drained its socket ([`PublishHandle::hand_over`]), and a batch never holds more than
/// this much media (or [`BATCH_BYTES`]). Handing over per socket wakeup keeps media in
/// the process only for as long as the writer takes to mux it (it waits in the kernel's
/// socket buffer before that), so memory per stream stays small. Small against the
/// flush interval, so it does not change what a crash can lose.
pub const BATCH_TICKS: crate::media::Ticks = crate::media::TICKS_PER_SECOND / 2;
/// See [`BATCH_TICKS`].
pub const BATCH_BYTES: usize = 256 * 1024;

pub use crate::clock::{monotonic_ms, now_ms};

/// Why recording failed or a publish could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{what} in {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot mux: {0}")]
    Mux(#[from] MuxError),
    #[error("recording {0} disappeared from the index")]
    Gone(String),
    #[error("the recorder thread panicked: {0}")]
    Panicked(String),
    /// Not a failure of the recording: the publisher crossed a [`write_bounds`] limit, so
    /// its publish ends (the recording stays resumable).
    #[error("{0}")]
    PublisherDropped(String),
}

impl RecordError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> RecordError {
        RecordError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishRefused {
    #[error("stream {0} is already being published")]
    AlreadyPublishing(String),
    #[error("the previous publish of {0} is still being closed; try again")]
    StillClosing(String),
    #[error("the recorder's disk is above its high watermark with nothing evictable; new recordings are refused until recordings are uploaded or space is freed")]
    DiskFull,
    #[error("cannot start recording {stream}: {source}")]
    Failed { stream: String, source: RecordError },
    #[error("cannot decide what {stream} records: {reason}")]
    NoTemplate { stream: String, reason: String },
}

impl PublishRefused {
    /// The `reason` label this refusal is counted under.
    pub fn reason(&self) -> metrics::RefusalReason {
        use metrics::RefusalReason as R;
        match self {
            PublishRefused::AlreadyPublishing(_) | PublishRefused::StillClosing(_) => {
                R::AlreadyPublishing
            }
            PublishRefused::DiskFull => R::DiskFull,
            PublishRefused::Failed { .. } => R::Failed,
            PublishRefused::NoTemplate { .. } => R::NoTemplate,
        }
    }
}

/// What the ingest sends to a recorder thread.
pub(crate) enum Msg {
    Config(CodecParams),
    /// The publisher's metadata announced a video track.
    ExpectVideo,
    /// A batch of frames in arrival order (see [`BATCH_TICKS`]), charged to the budgets.
    Frames(budget::Batch),
    /// Frames were dropped because the writer fell behind the byte budget.
    Gap {
        dropped: u64,
    },
    /// The publisher's wall clock: presentation time `at` (the ingest's ticks) was
    /// `unix_ms`, from an RTCP sender report.
    WallClock {
        at: Ticks,
        unix_ms: i64,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Slot {
    generation: u64,
    /// A publisher holds the handle; false while its recorder is closing.
    active: bool,
    /// A writer thread records this publish (or is being started for it).
    writer: bool,
    /// The recording task the writer records for; None for a rule's recording.
    task: Option<String>,
    stats: Arc<LiveStats>,
    /// True once the slot's last writer thread has exited.
    done: watch::Receiver<bool>,
    /// Gives the publisher's handle a writer mid-publish, or takes it away.
    wiring: Arc<Wiring>,
}

impl Slot {
    /// A new live slot; `writer`: a writer thread is being started for it (its `done`
    /// channel replaces this one when it is).
    fn new(generation: u64, stats: Arc<LiveStats>, writer: bool) -> Slot {
        let (_, done) = watch::channel(!writer);
        Slot {
            generation,
            active: true,
            writer,
            task: None,
            stats,
            done,
            wiring: Arc::default(),
        }
    }
}

/// A recording task whose window is open on a stream: what the stream records with
/// while nothing else records it (`record::tasks` sets and clears these).
#[derive(Debug, Clone)]
pub struct TaskWant {
    pub task_id: String,
    pub template: Template,
    /// A highlight clip: begin at the keyframe at or before this wall time (unix ms),
    /// from the look-back, if the stream is live when the window opens.
    pub from_ms: Option<i64>,
    /// The window (unix ms), for spans over a capture a rule makes.
    pub start_ms: i64,
    pub end_ms: i64,
}

impl TaskWant {
    /// The task's window over `capture` (a rule's), whose next segment is `next_seq`.
    fn overlay(&self, capture_id: &str, next_seq: u32) -> crate::index::OverlayRow {
        crate::index::OverlayRow {
            capture_id: capture_id.to_owned(),
            task_id: self.task_id.clone(),
            template: self.template.clone(),
            from_ms: self.start_ms,
            to_ms: self.end_ms,
            pre_roll: self.from_ms.is_some(),
            // A clip reaches back at most a minute: no segment is shorter than a second.
            scan_from_seq: next_seq.saturating_sub(OVERLAY_LOOK_BACK_SEGMENTS).max(1),
            started: false,
        }
    }
}

/// How many segments before the capture's newest a task window over it may start in.
const OVERLAY_LOOK_BACK_SEGMENTS: u32 = 2 * tasks::MAX_PRE_ROLL_S;

/// What became of a task whose window opened ([`Recorders::open_task`]).
#[derive(Debug, PartialEq, Eq)]
pub enum TaskStart {
    /// The stream is live and now records for the task.
    Recording(String),
    /// The stream is not live: its next publish inside the window records for the task.
    Waiting,
    /// A rule records the stream: the task's recordings are spans of that capture
    /// (`task_files`), whose id this is.
    Spanning(String),
    /// Something else records the stream already (another task), or its recording is
    /// still starting (try again).
    Taken(String),
}

struct Inner {
    index: Index,
    storage: Storage,
    config: RecordConfig,
    catalog: Catalog,
    live: Mutex<HashMap<String, Slot>>,
    /// Open task windows by stream key, oldest first (several only on a stream a rule
    /// records: their recordings are spans of its capture). Locked after `live` when both
    /// are held.
    tasks: Mutex<HashMap<String, Vec<TaskWant>>>,
    generation: AtomicU64,
    running: AtomicUsize,
    idle: tokio::sync::Notify,
    /// Poked when a writer thread ends (its recording may have become resumable), so the
    /// resume reaper re-plans its next check.
    ended: tokio::sync::Notify,
    disk: Arc<DiskState>,
    /// Each stream's recent unplanned segment cuts, across its sessions.
    cut_histories: Mutex<HashMap<String, Arc<Mutex<CutHistory>>>>,
    /// Media in flight to every writer (`writer_budget_total_kb`).
    total_budget: Arc<budget::Budget>,
    /// Open recordings' clock epochs (wall-clock jumps).
    clock: Arc<clock_anchor::ClockAnchors>,
    /// Bytes held by every live publish's look-back.
    lookback_bytes: AtomicUsize,
}

/// The registry of live recorders. Cheap to clone.
#[derive(Clone)]
pub struct Recorders {
    inner: Arc<Inner>,
}

impl Recorders {
    pub fn new(
        index: Index,
        storage: Storage,
        config: RecordConfig,
        catalog: Catalog,
    ) -> Recorders {
        let total_budget = Arc::new(budget::Budget::new(config.writer_budget_total_kb * 1024));
        Recorders {
            inner: Arc::new(Inner {
                index,
                storage,
                config,
                catalog,
                live: Mutex::new(HashMap::new()),
                tasks: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                running: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                ended: tokio::sync::Notify::new(),
                disk: Arc::new(DiskState::default()),
                cut_histories: Mutex::new(HashMap::new()),
                total_budget,
                clock: Arc::default(),
                lookback_bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// Starts (or resumes) the recording of `app/stream` for a new publisher. The names
    /// must already be validated; `query` is the stream key's query string (`record_id=`
    /// names the recordings). Refused while another publisher is live on the stream.
    /// A stream no rule records is recorded for a task whose window is open on it.
    pub async fn start_publish(
        &self,
        app: &str,
        stream: &str,
        query: &str,
        remote: String,
        protocol: &'static str,
    ) -> Result<PublishHandle, PublishRefused> {
        let key = StreamKey::new(app, stream).to_string();
        let mut overlays = Vec::new();
        let (template, task_id) = match self.inner.catalog.plan(app, stream) {
            Ok(Plan::Record(t)) => {
                // A task window open on a stream a rule records: spans of this capture.
                overlays = lock(&self.inner.tasks)
                    .get(&key)
                    .cloned()
                    .unwrap_or_default();
                (*t, None)
            }
            Ok(Plan::Off) => match lock(&self.inner.tasks).get(&key).and_then(|w| w.first()) {
                Some(want) => (want.template.clone(), Some(want.task_id.clone())),
                None => return self.start_unrecorded(app, stream, remote, protocol),
            },
            Err(reason) => {
                return Err(PublishRefused::NoTemplate {
                    stream: key,
                    reason,
                })
            }
        };
        if !self.inner.disk.accepting() {
            return Err(PublishRefused::DiskFull);
        }
        let start = StartInfo {
            template,
            task_id,
            record_id: query_value(query, "record_id"),
            stream_param: (!query.is_empty()).then(|| query.to_owned()),
            overlays,
        };
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // Claim the slot, waiting for a closing recorder of the same stream first.
        let stats = Arc::new(LiveStats {
            remote,
            ..placeholder_stats(app, stream, protocol)
        });
        loop {
            let mut done = {
                let mut live = lock(&self.inner.live);
                match live.get(&key) {
                    Some(slot) if slot.active => {
                        return Err(PublishRefused::AlreadyPublishing(key))
                    }
                    Some(slot) => slot.done.clone(),
                    None => {
                        let mut slot = Slot::new(generation, stats.clone(), true);
                        slot.task = start.task_id.clone();
                        live.insert(key.clone(), slot);
                        break;
                    }
                }
            };
            let closed = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
            if closed.is_err() {
                return Err(PublishRefused::StillClosing(key));
            }
        }
        let task_id = start.task_id.clone();
        let writer = match self.start_writer(&key, generation, &stats, start).await {
            Ok(writer) => writer,
            Err(source) => {
                lock(&self.inner.live).remove(&key);
                return Err(PublishRefused::Failed {
                    stream: key,
                    source,
                });
            }
        };
        let wiring = {
            let live = lock(&self.inner.live);
            let wiring = live.get(&key).map(|s| s.wiring.clone()).unwrap_or_default();
            // The task's window closed while the writer started: it ends at once.
            if task_id.is_some() && self.task_of(&key) != task_id {
                stats.no_resume.store(true, Ordering::Relaxed);
                wiring.set(Rewire::Detach);
            }
            wiring
        };
        Ok(PublishHandle::new(
            self.inner.clone(),
            key,
            generation,
            stats,
            wiring,
            Some((writer.tx, writer.audio_only)),
        ))
    }

    /// The open task window on stream `key`, if any.
    fn task_of(&self, key: &str) -> Option<String> {
        lock(&self.inner.tasks)
            .get(key)
            .and_then(|w| w.first())
            .map(|w| w.task_id.clone())
    }

    /// Begins (or resumes) the stream's recording and starts its writer thread, for the
    /// claimed slot `generation` of `key`. The slot must say `writer`; when the thread
    /// exits it clears that, and removes the slot if the publisher has gone.
    async fn start_writer(
        &self,
        key: &str,
        generation: u64,
        stats: &Arc<LiveStats>,
        start: StartInfo,
    ) -> Result<Writer, RecordError> {
        let inner = self.inner.clone();
        let (app_s, stream_s) = (stats.app.clone(), stats.stream.clone());
        let begun = tokio::task::spawn_blocking(move || {
            let overlays = start.overlays.clone();
            let begun = begin_recording(&inner, &app_s, &stream_s, start)?;
            for want in overlays {
                let row = &begun.0;
                if inner.index.add_overlay(&want.overlay(&row.id, row.next_seq))? {
                    tracing::info!(recording = %row.id, task = %want.task_id, "a task window is open on this stream: its recordings are spans of this one");
                }
            }
            Ok(begun)
        })
        .await
        .unwrap_or_else(|e| Err(RecordError::Gone(format!("start task: {e}"))));
        let (row, resumed, media_end) = begun?;
        stats.set_recording(Some((&row.id, row.task_id.as_deref())));
        stats.no_resume.store(false, Ordering::Relaxed);
        let (done_tx, done_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel();
        if let Some(slot) = lock(&self.inner.live).get_mut(key) {
            if slot.generation == generation {
                slot.done = done_rx;
            }
        }
        let audio_only = row.template.as_ref().is_some_and(|t| t.record_audio_only);
        let mut config = self.inner.config.clone();
        if let Some(t) = &row.template {
            config.flow_continue_duration_s = t.resume_window_s(config.flow_continue_duration_s);
        }
        let session = RecordingSession::new(
            (
                self.inner.index.clone(),
                self.inner.storage.clone(),
                self.inner.clock.clone(),
            ),
            config,
            stats.clone(),
            row,
            resumed.then_some(media_end),
            self.cut_history(key),
        );
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        let thread_key = key.to_owned();
        let thread_stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("rec {key}"))
            // The writer needs little stack; keep per-stream memory small.
            .stack_size(256 * 1024)
            .spawn(move || {
                // A panic ends this recording only: what is durable is kept, the row is
                // marked failed with the message, and the bookkeeping below still runs, so
                // the stream can publish again and shutdown does not wait for it.
                let mut session = session;
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| session.run(rx)));
                if let Err(panic) = ran {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(stream = %thread_key, %message, "the recorder thread panicked; this recording is marked failed, every other stream goes on");
                    let failed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        session.fail_after_panic(&message)
                    }));
                    if failed.is_err() {
                        tracing::error!(stream = %thread_key, "marking the recording failed panicked too; startup recovery will settle it");
                    }
                }
                {
                    let mut live = lock(&inner.live);
                    if let Some(slot) = live.get_mut(&thread_key) {
                        if slot.generation == generation {
                            slot.writer = false;
                            slot.task = None;
                            if slot.active {
                                // Detached: the publish goes on, recorded by nothing.
                                if thread_stats.failure().is_none() && !thread_stats.is_dropped() {
                                    thread_stats.set_recording(None);
                                }
                            } else {
                                live.remove(&thread_key);
                            }
                        }
                    }
                }
                let _ = done_tx.send(true);
                inner.ended.notify_one();
                if inner.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    inner.idle.notify_waiters();
                }
            });
        if let Err(e) = spawned {
            self.inner.running.fetch_sub(1, Ordering::AcqRel);
            return Err(RecordError::io("spawn recorder thread", Path::new("-"), e));
        }
        Ok(Writer { tx, audio_only })
    }

    /// A recording task's window opened on stream `key`: from now until
    /// [`Self::close_task`] the stream records with `want.template` whenever nothing else
    /// records it, starting at once if it is live unrecorded.
    pub async fn open_task(&self, key: &str, want: TaskWant) -> Result<TaskStart, RecordError> {
        let task_id = want.task_id.clone();
        let template = want.template.clone();
        let from_ms = want.from_ms;
        let want_for_span = want.clone();
        let claim = {
            let mut live = lock(&self.inner.live);
            let mut tasks = lock(&self.inner.tasks);
            let wants = tasks.entry(key.to_owned()).or_default();
            wants.retain(|w| w.task_id != task_id);
            wants.push(want);
            drop(tasks);
            match live.get_mut(key) {
                None => return Ok(TaskStart::Waiting),
                Some(slot) if slot.task.as_deref() == Some(task_id.as_str()) => {
                    return Ok(TaskStart::Recording(slot.stats.recording_id()))
                }
                Some(slot) if slot.active && slot.writer && slot.task.is_none() => {
                    // A rule records it: the task's recordings are spans of its capture.
                    Err(slot.stats.clone())
                }
                Some(slot) if slot.writer || !slot.active => {
                    let by = match &slot.task {
                        Some(other) => format!("task {other}"),
                        None => "a rule".to_owned(),
                    };
                    if !slot.active {
                        // Its publisher left; the next publish records for the task.
                        return Ok(TaskStart::Waiting);
                    }
                    return Ok(TaskStart::Taken(format!("the stream is recorded by {by}")));
                }
                Some(slot) => {
                    slot.writer = true;
                    slot.task = Some(task_id.clone());
                    Ok((slot.generation, slot.stats.clone(), slot.wiring.clone()))
                }
            }
        };
        let (generation, stats, wiring) = match claim {
            Ok(claim) => claim,
            Err(rule_stats) => return self.span_capture(&rule_stats, want_for_span).await,
        };
        let start = StartInfo {
            template,
            task_id: Some(task_id.clone()),
            record_id: None,
            stream_param: None,
            overlays: Vec::new(),
        };
        match self.start_writer(key, generation, &stats, start).await {
            Ok(writer) => {
                let live = lock(&self.inner.live);
                let still = live
                    .get(key)
                    .is_some_and(|s| s.generation == generation && s.active);
                if still && self.task_of(key).as_deref() == Some(task_id.as_str()) {
                    wiring.set(Rewire::Attach {
                        tx: writer.tx,
                        audio_only: writer.audio_only,
                        from_ms,
                    });
                }
                // Otherwise `writer.tx` drops here: the writer finishes with nothing.
                tracing::info!(stream = %key, task = %task_id, recording = %stats.recording_id(), "task window open; recording the live stream");
                Ok(TaskStart::Recording(stats.recording_id()))
            }
            Err(e) => {
                let mut live = lock(&self.inner.live);
                if let Some(slot) = live.get_mut(key) {
                    if slot.generation == generation {
                        slot.writer = false;
                        slot.task = None;
                        if !slot.active {
                            live.remove(key);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Opens a task's window over the live capture `stats` records for a rule: the
    /// window's spans start at the segment the writer cuts at the next keyframe (a clip's
    /// at the segment holding its start).
    async fn span_capture(
        &self,
        stats: &Arc<LiveStats>,
        want: TaskWant,
    ) -> Result<TaskStart, RecordError> {
        let capture_id = stats.recording_id();
        if capture_id.is_empty() {
            return Ok(TaskStart::Taken(
                "the stream's recording is starting".into(),
            ));
        }
        let clip = want.from_ms.is_some();
        let index = self.inner.index.clone();
        let id = capture_id.clone();
        let added = tokio::task::spawn_blocking(move || -> Result<bool, RecordError> {
            let Some(capture) = index.get_recording(&id)? else {
                return Ok(false);
            };
            Ok(index.add_overlay(&want.overlay(&id, capture.next_seq))?)
        })
        .await
        .unwrap_or_else(|e| Err(RecordError::Gone(format!("task window: {e}"))))?;
        if added && !clip {
            stats.request_cut();
        }
        tracing::info!(recording = %capture_id, "task window open on a stream a rule records: its recordings are spans of this capture");
        Ok(TaskStart::Spanning(capture_id))
    }

    /// Task `task_id`'s window on stream `key` closed (or it was cancelled): its
    /// recording ends now, finished rather than resumable, and the publish goes on
    /// unrecorded. A recording of the task waiting for its publisher to come back is
    /// finished too.
    pub async fn close_task(&self, key: &str, task_id: &str) -> Result<(), IndexError> {
        // The task's own writer, if it records the stream: told to close finished.
        let own_writer = {
            let live = lock(&self.inner.live);
            let mut tasks = lock(&self.inner.tasks);
            if let Some(wants) = tasks.get_mut(key) {
                wants.retain(|w| w.task_id != task_id);
                if wants.is_empty() {
                    tasks.remove(key);
                }
            }
            drop(tasks);
            match live.get(key) {
                Some(slot) if slot.task.as_deref() == Some(task_id) => {
                    slot.stats.no_resume.store(true, Ordering::Relaxed);
                    slot.wiring.set(Rewire::Detach);
                    tracing::info!(stream = %key, task = %task_id, recording = %slot.stats.recording_id(), "task window closed; its recording ends");
                    // Its publisher gone, the writer may already have left the recording
                    // resumable: wait for it, then finish that below.
                    Some((slot.active, slot.done.clone()))
                }
                _ => None,
            }
        };
        // Windows over a rule's capture end now (if they reached further: a cancel), and
        // the live one's writer cuts at the next keyframe.
        let index = self.inner.index.clone();
        let task = task_id.to_owned();
        let spanned =
            tokio::task::spawn_blocking(move || index.end_overlays(&task, crate::clock::now_ms()))
                .await
                .unwrap_or_else(|_| Ok(Vec::new()))?;
        if let Some(slot) = lock(&self.inner.live).get(key) {
            if slot.active && spanned.contains(&slot.stats.recording_id()) {
                slot.stats.request_cut();
                tracing::info!(stream = %key, task = %task_id, recording = %slot.stats.recording_id(), "task window closed; its spans of this recording end here");
            }
        }
        match own_writer {
            Some((true, _)) => return Ok(()),
            Some((false, mut done)) => {
                let _ = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
            }
            None => {}
        }
        let index = self.inner.index.clone();
        let (key, task_id) = (key.to_owned(), task_id.to_owned());
        let live = self.clone();
        tokio::task::spawn_blocking(move || {
            let Some(open) = index.open_recording(&key)? else {
                return Ok(());
            };
            if open.task_id.as_deref() != Some(task_id.as_str()) || live.is_live(&key) {
                return Ok(());
            }
            let row = index.update_recording(&open.id, |r| {
                if r.state != RecordingState::Resumable {
                    return Update::Skip;
                }
                r.state = RecordingState::Finished;
                r.resumable_until_ms = None;
                Update::Write
            })?;
            tracing::info!(recording = %row.id, task = %task_id, "task window closed while its stream was away; recording finished");
            Ok(())
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "closing a task's waiting recording failed");
            Ok(())
        })
    }

    /// The unplanned-cut history of stream `key`, shared by its sessions; histories with
    /// nothing in the last minute are dropped.
    fn cut_history(&self, key: &str) -> Arc<Mutex<CutHistory>> {
        let mut all = lock(&self.inner.cut_histories);
        let now = std::time::Instant::now();
        all.retain(|k, h| k == key || Arc::strong_count(h) > 1 || !lock(h).is_stale(now));
        all.entry(key.to_owned()).or_default().clone()
    }

    /// Accepts a publish that nothing records (no rule, no open task window): it holds the
    /// stream name (one publisher per stream still holds) and its frames are dropped until
    /// a task attaches a writer.
    fn start_unrecorded(
        &self,
        app: &str,
        stream: &str,
        remote: String,
        protocol: &'static str,
    ) -> Result<PublishHandle, PublishRefused> {
        let key = StreamKey::new(app, stream).to_string();
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let stats = Arc::new(LiveStats {
            remote,
            ..placeholder_stats(app, stream, protocol)
        });
        let wiring = {
            let mut live = lock(&self.inner.live);
            if live.contains_key(&key) {
                return Err(PublishRefused::AlreadyPublishing(key));
            }
            let slot = Slot::new(generation, stats.clone(), false);
            let wiring = slot.wiring.clone();
            live.insert(key.clone(), slot);
            wiring
        };
        tracing::info!(stream = %key, "a rule says this stream is not recorded; accepting the publish without recording");
        Ok(PublishHandle::new(
            self.inner.clone(),
            key,
            generation,
            stats,
            wiring,
            None,
        ))
    }

    /// The templates and rules in force.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Live publishers, for the API.
    pub fn live(&self) -> Vec<Arc<LiveStats>> {
        let live = lock(&self.inner.live);
        let mut v: Vec<_> = live
            .values()
            .filter(|s| s.active && !s.stats.recording_id().is_empty())
            .map(|s| s.stats.clone())
            .collect();
        v.sort_by(|a, b| (&a.app, &a.stream).cmp(&(&b.app, &b.stream)));
        v
    }

    /// The recording a live publish makes for task `task_id` right now, if any.
    pub fn recording_for_task(&self, task_id: &str) -> Option<String> {
        let live = lock(&self.inner.live);
        let own = live
            .values()
            .find(|s| s.task.as_deref() == Some(task_id) && s.active)
            .map(|s| s.stats.recording_id());
        // Or a rule's recording its window spans.
        let spanned = || {
            let tasks = lock(&self.inner.tasks);
            let (key, _) = tasks
                .iter()
                .find(|(_, w)| w.iter().any(|w| w.task_id == task_id))?;
            live.get(key)
                .filter(|s| s.active && s.writer && s.task.is_none())
                .map(|s| s.stats.recording_id())
        };
        own.or_else(spanned).filter(|id| !id.is_empty())
    }

    /// Ends the live recording `recording_id` for good (its writer seals what it has and
    /// stops, the recording closes finished rather than resumable, and the publisher is
    /// told and disconnected as when it crosses a limit). False when no live publish
    /// records it.
    pub fn stop_recording(&self, recording_id: &str, reason: &str) -> bool {
        let live = lock(&self.inner.live);
        let Some(slot) = live
            .values()
            .find(|s| s.stats.recording_id() == recording_id)
        else {
            return false;
        };
        slot.stats.stop_for_good(reason);
        true
    }

    /// Streams whose writer thread has not come round its loop for `stuck_after`: it is
    /// blocked in IO (a dying card). The health loop stops the watchdog pings for these.
    pub fn wedged(&self, stuck_after: Duration) -> Vec<String> {
        let now = monotonic_ms();
        let limit = stuck_after.as_millis() as u64;
        lock(&self.inner.live)
            .iter()
            .filter(|(_, slot)| {
                let beat = slot.stats.heartbeat_ms.load(Ordering::Relaxed);
                !slot.stats.recording_id().is_empty() && now.saturating_sub(beat) > limit
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Whether `app/stream` has a live publisher or a recorder still closing.
    pub fn is_live(&self, stream_key: &str) -> bool {
        lock(&self.inner.live).contains_key(stream_key)
    }

    /// Waits until every recorder thread has sealed its segment and exited (shutdown).
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.running.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inner.running.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Media bytes queued for every writer thread (`writer_budget_total_kb` caps it).
    pub fn writer_backlog_bytes(&self) -> usize {
        self.inner.total_budget.used()
    }

    /// Media held in RAM by the look-backs of live streams nothing records.
    pub fn lookback_bytes(&self) -> usize {
        self.inner.lookback_bytes.load(Ordering::Relaxed)
    }

    /// The disk policy's verdict, shared with `storage::retention`.
    pub fn disk_state(&self) -> Arc<DiskState> {
        self.inner.disk.clone()
    }

    pub fn index(&self) -> &Index {
        &self.inner.index
    }
}

/// A new recording id: sortable by creation time, readable, URL- and path-safe.
pub fn new_recording_id(now_ms: i64) -> String {
    format!(
        "{}-{:04x}",
        crate::clock::utc(now_ms, "%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u16>()
    )
}

/// A writer thread just started: the channel to it.
struct Writer {
    tx: Sender<Msg>,
    audio_only: bool,
}

/// What a new capture is started with.
struct StartInfo {
    template: Template,
    /// The recording task it records for.
    task_id: Option<String>,
    record_id: Option<String>,
    stream_param: Option<String>,
    /// Task windows open on the stream a rule records: their spans go over this capture.
    overlays: Vec<TaskWant>,
}

/// The value of `name=` in a URL query string (no percent-decoding: names are plain).
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| crate::config::templates::valid_name(v))
}

/// Resumes the stream's open recording if its window has not passed, otherwise finishes
/// it and creates a new one. Returns the row, whether it was resumed, and where its media
/// ends (recording time) so a resumed session continues the timeline.
fn begin_recording(
    inner: &Inner,
    app: &str,
    stream: &str,
    start: StartInfo,
) -> Result<(RecordingRow, bool, Ticks), RecordError> {
    let key = StreamKey::new(app, stream).to_string();
    if let Some(open) = inner.index.open_recording(&key)? {
        // On the clock its deadline was stamped with (moved if the clock jumped since).
        let row = inner
            .clock
            .on_current_clock(&inner.index, &open.id, true, |epoch| {
                let now = crate::clock_watch::recording_now_at(epoch);
                inner.index.update_recording(&open.id, |r| {
                    let in_window = match r.state {
                        RecordingState::Resumable => {
                            r.resumable_until_ms.is_some_and(|until| now <= until)
                        }
                        // Left `recording` by a recorder that is gone: continue it.
                        RecordingState::Recording => true,
                        _ => false,
                    };
                    // A task's recording continues for that task only (and a rule's for
                    // no task): a new window or a rule starts a recording of its own.
                    let in_window = in_window && r.task_id == start.task_id;
                    if in_window {
                        r.state = RecordingState::Recording;
                        r.resumable_until_ms = None;
                        r.sessions += 1;
                    } else {
                        r.state = RecordingState::Finished;
                        r.resumable_until_ms = None;
                    }
                    Update::Write
                })
            })?;
        if row.state == RecordingState::Recording {
            tracing::info!(recording = %row.id, stream = %key, session = row.sessions, "resuming recording inside its window");
            let media_end = inner
                .index
                .last_segments(&row.id, 1)?
                .first()
                .map_or(0, |s| s.media_start + s.duration_ticks);
            return Ok((row, true, media_end));
        }
        tracing::info!(recording = %row.id, stream = %key, "resume window passed; recording finished");
    }
    let (now, epoch) = crate::clock_watch::recording_now();
    let mut row = RecordingRow::new(
        new_recording_id(now),
        app.to_owned(),
        stream.to_owned(),
        now,
    );
    inner.clock.track(&row.id, epoch);
    row.template = Some(start.template);
    row.task_id = start.task_id;
    row.record_id = start.record_id;
    row.stream_param = start.stream_param;
    inner
        .storage
        .create_recording_dir(app, stream, &row.id)
        .map_err(|e| RecordError::io("create recording folder", inner.storage.media_dir(), e))?;
    inner.index.create_recording(&row)?;
    tracing::info!(recording = %row.id, stream = %key, template = row.template_name(), "new recording");
    Ok((row, false, 0))
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn query_values_are_read_and_checked() {
        assert_eq!(
            query_value("record_id=match42&txTime=5", "record_id").as_deref(),
            Some("match42")
        );
        assert_eq!(
            query_value("a=1&record_id=x", "record_id").as_deref(),
            Some("x")
        );
        assert_eq!(
            query_value("record_id=../etc", "record_id"),
            None,
            "not a valid name"
        );
        assert_eq!(query_value("", "record_id"), None);
    }
}
