//! [`PublishHandle`]: what an ingest connection holds while it publishes. It hands frames
//! to the stream's writer thread through a byte-budgeted channel and never waits on flash
//! (invariant 6), and it can be rewired mid-publish ([`Wiring`]): a recording task whose
//! window opens on a live stream nothing records attaches a writer, and the window's end
//! takes it away, while the publisher goes on unaware.
//!
//! A writer attached mid-publish needs what the publisher said before it existed: the
//! handle keeps the codec configurations in force, whether video was announced and the
//! last wall-clock report, and replays them to a new writer before its first frame (the
//! writer waits for a keyframe to start, as for any publish).
//!
//! While nothing records the publish, its frames feed a [`LookBack`] (`[record]
//! lookback_s`, `lookback_mib`): a highlight clip (a task with a pre-roll) attaches a
//! writer that is first handed the look-back from the keyframe at or before its start,
//! with a wall-clock anchor (the newest frame's arrival) so the program date time of the
//! replayed media is when it arrived, not when it was replayed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::lookback::{Event, LookBack};
use super::{budget, lock, Inner, LiveStats, Msg, BATCH_BYTES, BATCH_TICKS};
use crate::media::{CodecParams, Frame, Ticks, TrackKind, TICKS_PER_MS};
use crate::metrics;

/// How the registry gives a live publish a writer, or takes it away, without the
/// ingest's help: a counter the handle checks on every call (one atomic load) and the
/// change itself.
#[derive(Default)]
pub(super) struct Wiring {
    changes: AtomicU64,
    next: Mutex<Option<Rewire>>,
}

pub(super) enum Rewire {
    /// Record from now on into this writer; with `from_ms`, first hand it the
    /// look-back from the keyframe at or before that wall time.
    Attach {
        tx: Sender<Msg>,
        audio_only: bool,
        from_ms: Option<i64>,
    },
    /// Stop recording: hand the writer what is batched and close its channel (the
    /// recording finishes; the publish goes on unrecorded).
    Detach,
}

impl Wiring {
    pub(super) fn set(&self, change: Rewire) {
        *lock(&self.next) = Some(change);
        self.changes.fetch_add(1, Ordering::Release);
    }
}

/// Held by the ingest connection that publishes a stream. Dropping it ends the publish
/// session: the recorder seals its segment and the recording becomes resumable.
pub struct PublishHandle {
    inner: Arc<Inner>,
    key: String,
    generation: u64,
    /// `None`: nothing records this stream now (a rule says not to, and no task window is
    /// open); frames are counted and dropped.
    tx: Option<Sender<Msg>>,
    wiring: Arc<Wiring>,
    /// `wiring.changes` when the handle last looked.
    wired: u64,
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
    /// What a writer attached later must be told first.
    replay: Replay,
    /// The last seconds of media while nothing records the publish.
    lookback: LookBack,
    /// The newest frame fed to the look-back: its decode time and arrival (unix ms).
    newest: Option<(Ticks, i64)>,
    /// The look-back's bytes as last counted in the registry's total.
    lookback_counted: usize,
}

/// What the publisher said that a writer attached mid-publish needs.
#[derive(Default)]
struct Replay {
    /// The configuration in force per track.
    configs: Vec<CodecParams>,
    expects_video: bool,
    wall_clock: Option<(Ticks, i64)>,
}

impl PublishHandle {
    /// The handle of publish `generation` of stream `key`; `writer` is the channel to its
    /// writer thread and whether it records audio only (None: nothing records it now).
    pub(super) fn new(
        inner: Arc<Inner>,
        key: String,
        generation: u64,
        stats: Arc<LiveStats>,
        wiring: Arc<Wiring>,
        writer: Option<(Sender<Msg>, bool)>,
    ) -> PublishHandle {
        let config = &inner.config;
        let lookback = LookBack::new(
            config.lookback_s,
            config.lookback_mib as usize * 1024 * 1024,
        );
        let budget = config.writer_budget_kb * 1024;
        let (tx, audio_only) = writer.map_or((None, false), |(tx, a)| (Some(tx), a));
        PublishHandle {
            total_budget: inner.total_budget.clone(),
            inner,
            key,
            generation,
            tx,
            wiring,
            wired: 0,
            audio_only,
            stats,
            budget,
            dropping: 0,
            batch: Vec::with_capacity(32),
            batch_bytes: 0,
            first_dts: None,
            replay: Replay::default(),
            lookback,
            newest: None,
            lookback_counted: 0,
        }
    }

    pub fn stats(&self) -> &Arc<LiveStats> {
        &self.stats
    }

    /// The recording being written for this publish; empty when nothing records it.
    pub fn recording_id(&self) -> String {
        self.stats.recording_id()
    }

    /// Whether the recorder has stopped taking this publish's frames (its recording failed,
    /// or the publisher crossed a [`super::write_bounds`] limit); see
    /// [`LiveStats::stop_reason`].
    pub fn recorder_stopped(&self) -> bool {
        self.tx.is_some() && (lock(&self.stats.dropped).is_some() || self.stats.failure().is_some())
    }

    /// Whether this publish records anything right now.
    pub fn is_recording(&self) -> bool {
        self.tx.is_some()
    }

    /// Takes a writer the registry attached or detached since the last call.
    fn rewire(&mut self) -> Result<(), RecorderStopped> {
        let changes = self.wiring.changes.load(Ordering::Acquire);
        if changes == self.wired {
            return Ok(());
        }
        self.wired = changes;
        let Some(change) = lock(&self.wiring.next).take() else {
            return Ok(());
        };
        match change {
            Rewire::Attach {
                tx,
                audio_only,
                from_ms,
            } => {
                self.tx = Some(tx);
                self.audio_only = audio_only;
                self.budget = self.inner.config.writer_budget_kb * 1024;
                self.dropping = 0;
                if self.replay.expects_video && !audio_only {
                    self.send(Msg::ExpectVideo)?;
                }
                let clip = from_ms.and_then(|from| {
                    let (newest_dts, newest_ms) = self.newest?;
                    self.lookback
                        .since(newest_dts - (newest_ms - from) * TICKS_PER_MS)
                });
                let configs = match &clip {
                    Some(clip) => clip.configs.clone(),
                    None => self.replay.configs.clone(),
                };
                for params in configs {
                    if !(audio_only && params.kind() == TrackKind::Video) {
                        self.send(Msg::Config(params))?;
                    }
                }
                // The publisher's own clock if it sent one, else the newest frame's
                // arrival when media from before now is replayed.
                let anchor = match (self.replay.wall_clock, &clip) {
                    (Some(reported), _) => Some(reported),
                    (None, Some(_)) => self.newest,
                    (None, None) => None,
                };
                if let Some((at, unix_ms)) = anchor {
                    self.send(Msg::WallClock { at, unix_ms })?;
                }
                self.lookback.clear();
                self.count_lookback();
                self.newest = None;
                for event in clip.map(|c| c.events).unwrap_or_default() {
                    match event {
                        Event::Config(params) => {
                            if !(audio_only && params.kind() == TrackKind::Video) {
                                self.flush_batch()?;
                                self.send(Msg::Config(params))?;
                            }
                        }
                        Event::Frame(frame) => self.queue_frame(frame)?,
                    }
                }
            }
            Rewire::Detach => {
                // The writer gets what was batched for it, then its channel closes.
                let _ = self.flush_batch();
                self.tx = None;
                self.dropping = 0;
            }
        }
        Ok(())
    }

    /// Moves the registry's look-back total by what this handle's changed by.
    fn count_lookback(&mut self) {
        let now = self.lookback.bytes();
        let total = &self.inner.lookback_bytes;
        if now >= self.lookback_counted {
            total.fetch_add(now - self.lookback_counted, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.lookback_counted - now, Ordering::Relaxed);
        }
        self.lookback_counted = now;
    }

    fn send(&self, msg: Msg) -> Result<(), RecorderStopped> {
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| RecorderStopped),
            None => Ok(()),
        }
    }

    /// Announces a track's codec parameters. Err = the recorder has stopped (failed).
    pub fn send_config(&mut self, params: CodecParams) -> Result<(), RecorderStopped> {
        let kind = params.kind();
        self.replay.configs.retain(|p| p.kind() != kind);
        self.replay.configs.push(params.clone());
        self.rewire()?;
        if self.tx.is_none() {
            self.lookback.push_config(params);
            return Ok(());
        }
        if self.audio_only && kind == TrackKind::Video {
            return Ok(());
        }
        self.flush_batch()?;
        self.send(Msg::Config(params))
    }

    /// The publisher's own wall clock (an RTCP sender report): presentation time `at`, on
    /// the ticks of the frames this handle sends, was `unix_ms`. Segments then take
    /// their program date time from it rather than from arrival (see the session).
    pub fn send_wall_clock(&mut self, at: Ticks, unix_ms: i64) -> Result<(), RecorderStopped> {
        self.replay.wall_clock = Some((at, unix_ms));
        self.rewire()?;
        self.flush_batch()?;
        self.send(Msg::WallClock { at, unix_ms })
    }

    /// The publisher's metadata announced video: hold audio back until it comes.
    pub fn expect_video(&mut self) -> Result<(), RecorderStopped> {
        self.replay.expects_video = true;
        self.rewire()?;
        if self.audio_only {
            return Ok(());
        }
        self.flush_batch()?;
        self.send(Msg::ExpectVideo)
    }

    /// Hands a frame to the writer without waiting. If the writer is more than the byte
    /// budget behind, the frame is dropped and counted; when room returns, the recorder
    /// is told to close the segment with a discontinuity.
    pub fn send_frame(&mut self, frame: Frame) -> Result<(), RecorderStopped> {
        self.stats.frames_received.fetch_add(1, Ordering::Relaxed);
        self.stats.frames_counter.inc();
        self.rewire()?;
        if self.tx.is_none() {
            if self.lookback.is_on() {
                self.newest = Some((frame.dts, crate::clock::now_ms()));
                self.lookback.push_frame(frame);
                self.count_lookback();
            }
            return Ok(());
        }
        self.queue_frame(frame)
    }

    /// Batches a frame for the writer, charged to the budgets (see [`Self::send_frame`]).
    fn queue_frame(&mut self, frame: Frame) -> Result<(), RecorderStopped> {
        if self.audio_only && frame.kind == TrackKind::Video {
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
                .flush_batch()
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
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Hands the frames collected so far to the writer. The ingest calls this once it
    /// has read everything queued on its socket (see [`BATCH_TICKS`]).
    pub fn hand_over(&mut self) -> Result<(), RecorderStopped> {
        self.rewire()?;
        self.flush_batch()
    }

    fn flush_batch(&mut self) -> Result<(), RecorderStopped> {
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
        let _ = self.flush_batch();
        // A writer attached but not yet picked up must see its channel close too.
        lock(&self.wiring.next).take();
        self.lookback.clear();
        self.count_lookback();
        let mut live = lock(&self.inner.live);
        if let Some(slot) = live.get_mut(&self.key) {
            if slot.generation == self.generation {
                slot.active = false;
                if !slot.writer {
                    // No writer thread will clear the slot of a publish that records nothing.
                    live.remove(&self.key);
                }
            }
        }
        // Dropping `tx` (after this) disconnects the channel: the recorder finishes.
    }
}

/// What a frame costs against the writer's byte budget: what it takes once muxed (TS
/// packets of 184 payload bytes, a PES header), so a flood of tiny frames is charged
/// for the flash it would cost, not the bytes it came in.
fn charge(frame: &Frame) -> usize {
    use crate::mux::ts::PACKET_SIZE;
    (frame.data.len() + 40).div_ceil(PACKET_SIZE - 4) * PACKET_SIZE
}
