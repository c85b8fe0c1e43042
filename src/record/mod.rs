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
mod live_stats;
pub mod lookback;
pub mod playlist;
mod preroll;
mod session;
pub mod timeline;
pub mod write_bounds;

use live_stats::placeholder_stats;
pub use live_stats::{LiveStats, StreamView};

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{RecordConfig, Template};
use crate::index::{Index, IndexError, RecordingRow, RecordingState, Update};
use crate::media::{CodecParams, Frame, Ticks, TICKS_PER_MS};
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
    stats: Arc<LiveStats>,
    done: watch::Receiver<bool>,
}

struct Inner {
    index: Index,
    storage: Storage,
    config: RecordConfig,
    catalog: Catalog,
    live: Mutex<HashMap<String, Slot>>,
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
}

/// The registry of live recorders. Cheap to clone.
#[derive(Clone)]
pub struct Recorders {
    inner: Arc<Inner>,
}

/// Held by the ingest connection that publishes a stream. Dropping it ends the publish
/// session: the recorder seals its segment and the recording becomes resumable.
pub struct PublishHandle {
    inner: Arc<Inner>,
    key: String,
    generation: u64,
    /// `None`: a rule says this stream is not recorded; frames are counted and dropped.
    tx: Option<Sender<Msg>>,
    /// The template records audio only: video never reaches the writer.
    audio_only: bool,
    stats: Arc<LiveStats>,
    budget: usize,
    /// Shared by every stream (see `budget`).
    total_budget: Arc<budget::Budget>,
    dropping: u64,
    batch: Vec<Frame>,
    batch_bytes: usize,
    /// Decode time of the first frame handed over, for `media_received_ms`.
    first_dts: Option<Ticks>,
}

impl PublishHandle {
    pub fn stats(&self) -> &Arc<LiveStats> {
        &self.stats
    }

    pub fn recording_id(&self) -> &str {
        &self.stats.recording_id
    }

    /// Whether the recorder has stopped taking this publish's frames (its recording failed,
    /// or the publisher crossed a [`write_bounds`] limit); see [`LiveStats::stop_reason`].
    pub fn recorder_stopped(&self) -> bool {
        self.tx.is_some() && (lock(&self.stats.dropped).is_some() || self.stats.failure().is_some())
    }

    /// Whether this publish records anything (a rule may say it does not).
    pub fn is_recording(&self) -> bool {
        self.tx.is_some()
    }

    fn send(&self, msg: Msg) -> Result<(), RecorderStopped> {
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| RecorderStopped),
            None => Ok(()),
        }
    }

    /// Announces a track's codec parameters. Err = the recorder has stopped (failed).
    pub fn send_config(&mut self, params: CodecParams) -> Result<(), RecorderStopped> {
        if self.audio_only && params.kind() == crate::media::TrackKind::Video {
            return Ok(());
        }
        self.hand_over()?;
        self.send(Msg::Config(params))
    }

    /// The publisher's own wall clock (an RTCP sender report): presentation time `at`, on
    /// the ticks of the frames this handle sends, was `unix_ms`. Segments then take
    /// their program date time from it rather than from arrival (see the session).
    pub fn send_wall_clock(&mut self, at: Ticks, unix_ms: i64) -> Result<(), RecorderStopped> {
        self.hand_over()?;
        self.send(Msg::WallClock { at, unix_ms })
    }

    /// The publisher's metadata announced video: hold audio back until it comes.
    pub fn expect_video(&mut self) -> Result<(), RecorderStopped> {
        if self.audio_only {
            return Ok(());
        }
        self.hand_over()?;
        self.send(Msg::ExpectVideo)
    }

    /// Hands a frame to the writer without waiting. If the writer is more than the byte
    /// budget behind, the frame is dropped and counted; when room returns, the recorder
    /// is told to close the segment with a discontinuity.
    pub fn send_frame(&mut self, frame: Frame) -> Result<(), RecorderStopped> {
        self.stats.frames_received.fetch_add(1, Ordering::Relaxed);
        self.stats.frames_counter.inc();
        if self.tx.is_none() || (self.audio_only && frame.kind == crate::media::TrackKind::Video) {
            return Ok(());
        }
        let len = charge(&frame);
        let in_flight = self.stats.in_flight.load(Ordering::Acquire);
        if in_flight + self.batch_bytes + len > self.budget || !self.total_budget.try_take(len) {
            self.dropping += 1;
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            metrics::global().dropped_frames.inc();
            return Ok(());
        }
        if self.dropping > 0 {
            let dropped = std::mem::take(&mut self.dropping);
            let gap = self
                .hand_over()
                .and_then(|()| self.send(Msg::Gap { dropped }));
            if let Err(stopped) = gap {
                self.total_budget.give_back(len);
                return Err(stopped);
            }
        }
        let span = self.batch.first().map_or(0, |first| frame.dts - first.dts);
        self.batch_bytes += len;
        self.batch.push(frame);
        if span.abs() >= BATCH_TICKS || self.batch_bytes >= BATCH_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Hands the frames collected so far to the writer. The ingest calls this once it
    /// has read everything queued on its socket (see [`BATCH_TICKS`]).
    pub fn hand_over(&mut self) -> Result<(), RecorderStopped> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.batch_bytes);
        if let Some(last) = self.batch.last() {
            let first = *self.first_dts.get_or_insert(self.batch[0].dts);
            let received_ms = (last.dts - first).max(0) / TICKS_PER_MS;
            self.stats
                .media_received_ms
                .fetch_max(received_ms as u64, Ordering::Relaxed);
        }
        let frames = std::mem::replace(&mut self.batch, Vec::with_capacity(32));
        let batch =
            budget::Batch::new(frames, bytes, self.stats.clone(), self.total_budget.clone());
        self.send(Msg::Frames(batch))
    }
}

/// The recorder thread has stopped (its recording failed; see [`LiveStats::failure`]).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the recorder for this stream has stopped")]
pub struct RecorderStopped;

impl Drop for PublishHandle {
    fn drop(&mut self) {
        // The publisher's last frames (a failed recorder has gone; nothing to do then).
        let _ = self.hand_over();
        let mut live = lock(&self.inner.live);
        if let Some(slot) = live.get_mut(&self.key) {
            if slot.generation == self.generation {
                slot.active = false;
                if self.tx.is_none() {
                    // No writer thread will clear the slot of a publish that records nothing.
                    live.remove(&self.key);
                }
            }
        }
        // Dropping `tx` (after this) disconnects the channel: the recorder finishes.
    }
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
                generation: AtomicU64::new(0),
                running: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                ended: tokio::sync::Notify::new(),
                disk: Arc::new(DiskState::default()),
                cut_histories: Mutex::new(HashMap::new()),
                total_budget,
                clock: Arc::default(),
            }),
        }
    }

    /// Starts (or resumes) the recording of `app/stream` for a new publisher. The names
    /// must already be validated; `query` is the stream key's query string (`record_id=`
    /// names the recordings). Refused while another publisher is live on the stream.
    pub async fn start_publish(
        &self,
        app: &str,
        stream: &str,
        query: &str,
        remote: String,
        protocol: &'static str,
    ) -> Result<PublishHandle, PublishRefused> {
        let key = StreamKey::new(app, stream).to_string();
        let template = match self.inner.catalog.plan(app, stream) {
            Ok(Plan::Record(t)) => *t,
            Ok(Plan::Off) => return self.start_unrecorded(app, stream, remote, protocol),
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
            record_id: query_value(query, "record_id"),
            stream_param: (!query.is_empty()).then(|| query.to_owned()),
        };
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // Claim the slot, waiting for a closing recorder of the same stream first.
        loop {
            let mut done = {
                let mut live = lock(&self.inner.live);
                match live.get(&key) {
                    Some(slot) if slot.active => {
                        return Err(PublishRefused::AlreadyPublishing(key))
                    }
                    Some(slot) => slot.done.clone(),
                    None => {
                        let (_tx, rx) = watch::channel(false);
                        live.insert(
                            key.clone(),
                            Slot {
                                generation,
                                active: true,
                                stats: Arc::new(placeholder_stats(app, stream, protocol)),
                                done: rx,
                            },
                        );
                        break;
                    }
                }
            };
            let closed = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
            if closed.is_err() {
                return Err(PublishRefused::StillClosing(key));
            }
        }
        let inner = self.inner.clone();
        let (app_s, stream_s) = (app.to_owned(), stream.to_owned());
        let begun =
            tokio::task::spawn_blocking(move || begin_recording(&inner, &app_s, &stream_s, start))
                .await
                .unwrap_or_else(|e| Err(RecordError::Gone(format!("start task: {e}"))));
        let (row, resumed, media_end) = match begun {
            Ok(v) => v,
            Err(source) => {
                lock(&self.inner.live).remove(&key);
                return Err(PublishRefused::Failed {
                    stream: key,
                    source,
                });
            }
        };
        let stats = Arc::new(LiveStats {
            recording_id: row.id.clone(),
            remote,
            ..placeholder_stats(app, stream, protocol)
        });
        let (done_tx, done_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel();
        {
            let mut live = lock(&self.inner.live);
            live.insert(
                key.clone(),
                Slot {
                    generation,
                    active: true,
                    stats: stats.clone(),
                    done: done_rx,
                },
            );
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
            self.cut_history(&key),
        );
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        let thread_key = key.clone();
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
                    if live
                        .get(&thread_key)
                        .is_some_and(|s| s.generation == generation)
                    {
                        live.remove(&thread_key);
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
            lock(&self.inner.live).remove(&key);
            return Err(PublishRefused::Failed {
                stream: key,
                source: RecordError::io("spawn recorder thread", Path::new("-"), e),
            });
        }
        Ok(PublishHandle {
            budget: self.inner.config.writer_budget_kb * 1024,
            total_budget: self.inner.total_budget.clone(),
            inner: self.inner.clone(),
            key,
            generation,
            tx: Some(tx),
            audio_only,
            stats,
            dropping: 0,
            batch: Vec::with_capacity(32),
            batch_bytes: 0,
            first_dts: None,
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

    /// Accepts a publish that a rule says not to record: it holds the stream name (one
    /// publisher per stream still holds) and its frames are dropped.
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
        {
            let mut live = lock(&self.inner.live);
            if live.contains_key(&key) {
                return Err(PublishRefused::AlreadyPublishing(key));
            }
            let (_tx, rx) = watch::channel(true);
            live.insert(
                key.clone(),
                Slot {
                    generation,
                    active: true,
                    stats: stats.clone(),
                    done: rx,
                },
            );
        }
        tracing::info!(stream = %key, "a rule says this stream is not recorded; accepting the publish without recording");
        Ok(PublishHandle {
            budget: 0,
            total_budget: self.inner.total_budget.clone(),
            inner: self.inner.clone(),
            key,
            generation,
            tx: None,
            audio_only: false,
            stats,
            dropping: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            first_dts: None,
        })
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
            .filter(|s| s.active && !s.stats.recording_id.is_empty())
            .map(|s| s.stats.clone())
            .collect();
        v.sort_by(|a, b| (&a.app, &a.stream).cmp(&(&b.app, &b.stream)));
        v
    }

    /// Ends the live recording `recording_id` for good (its writer seals what it has and
    /// stops, the recording closes finished rather than resumable, and the publisher is
    /// told and disconnected as when it crosses a limit). False when no live publish
    /// records it.
    pub fn stop_recording(&self, recording_id: &str, reason: &str) -> bool {
        let live = lock(&self.inner.live);
        let Some(slot) = live.values().find(|s| s.stats.recording_id == recording_id) else {
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
                !slot.stats.recording_id.is_empty() && now.saturating_sub(beat) > limit
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

    /// The disk policy's verdict, shared with `storage::retention`.
    pub fn disk_state(&self) -> Arc<DiskState> {
        self.inner.disk.clone()
    }

    pub fn index(&self) -> &Index {
        &self.inner.index
    }
}

/// What a frame costs against the writer's byte budget: what it takes once muxed (TS
/// packets of 184 payload bytes, a PES header), so a flood of tiny frames is charged
/// for the flash it would cost, not the bytes it came in.
fn charge(frame: &Frame) -> usize {
    use crate::mux::ts::PACKET_SIZE;
    (frame.data.len() + 40).div_ceil(PACKET_SIZE - 4) * PACKET_SIZE
}

/// A new recording id: sortable by creation time, readable, URL- and path-safe.
pub fn new_recording_id(now_ms: i64) -> String {
    format!(
        "{}-{:04x}",
        crate::clock::utc(now_ms, "%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u16>()
    )
}

/// What a new capture is started with.
struct StartInfo {
    template: Template,
    record_id: Option<String>,
    stream_param: Option<String>,
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

/// Finishes resumable recordings whose window has passed (and whose stream is not live
/// again). Runs until cancelled. Sleeps until the earliest window ends, a writer thread
/// ends, or [`REAPER_MAX_SLEEP`] passes, so an idle box is not woken twice a second.
pub async fn run_resume_reaper(recorders: Recorders, cancel: CancellationToken) {
    loop {
        let r = recorders.clone();
        let result = tokio::task::spawn_blocking(move || finish_expired(&r)).await;
        let next_due_ms = match result {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "resume window check failed");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "resume window task failed");
                None
            }
        };
        let wait = next_due_ms.map_or(REAPER_MAX_SLEEP, |due| {
            // A little past the deadline, so the row is due when we look again.
            let ms = u64::try_from(due - now_ms()).unwrap_or(0) + 50;
            Duration::from_millis(ms).min(REAPER_MAX_SLEEP)
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = recorders.inner.ended.notified() => {}
            // Move waiting recordings' times (and deadlines) with the clock at once.
            _ = crate::clock_watch::jumped().notified() => {}
        }
    }
}

/// Longest the resume reaper sleeps without a reason to look.
const REAPER_MAX_SLEEP: Duration = Duration::from_secs(5);

/// Finishes the expired windows; returns when the next live window ends (ms since the
/// epoch), if any recording is waiting for one.
fn finish_expired(recorders: &Recorders) -> Result<Option<i64>, IndexError> {
    let index = recorders.index();
    let clock = &recorders.inner.clock;
    let open = index.open_entries()?;
    clock.retain(|id| open.iter().any(|(_, open_id)| open_id == id));
    let mut next_due: Option<i64> = None;
    for (stream_key, id) in open {
        if recorders.is_live(&stream_key) {
            continue;
        }
        // Its deadline on the clock it was stamped with (moved if the clock jumped since).
        // Written only when the window has passed: a pass every few seconds must not sync
        // the index for recordings still waiting.
        let row = clock.on_current_clock(index, &id, true, |epoch| {
            let now = crate::clock_watch::recording_now_at(epoch);
            let Some(row) = index.get_recording(&id)? else {
                return Ok(None);
            };
            let expired = |r: &RecordingRow| {
                r.state == RecordingState::Resumable
                    && r.resumable_until_ms.is_none_or(|u| u <= now)
            };
            if !expired(&row) {
                return Ok(Some((row, now)));
            }
            let row = index.update_recording(&id, |r| {
                if expired(r) {
                    r.state = RecordingState::Finished;
                    r.resumable_until_ms = None;
                    Update::Write
                } else {
                    Update::Skip
                }
            });
            match row {
                Err(IndexError::NoSuchRecording(_)) => Ok(None),
                other => other.map(|row| Some((row, now))),
            }
        })?;
        let Some((row, now)) = row else {
            continue;
        };
        match row.state {
            RecordingState::Finished => {
                tracing::info!(recording = %id, segments = row.segments, duration_s = row.duration_s(), "resume window passed; recording finished");
            }
            RecordingState::Resumable => {
                if let Some(until) = row.resumable_until_ms {
                    // As a deadline on the wall clock the sleep is measured against.
                    let until = until + (crate::clock::now_ms() - now);
                    next_due = Some(next_due.map_or(until, |n| n.min(until)));
                }
            }
            _ => {}
        }
    }
    Ok(next_due)
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
