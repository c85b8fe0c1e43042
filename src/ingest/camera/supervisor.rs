//! One camera's supervisor: connect, record, and on any failure reconnect with backoff
//! (1 s doubling to 30 s, with jitter), forever, until the source is removed or the
//! daemon stops.
//!
//! Owns: the connection lifecycle and the hand-off to the recorder. A publish starts at
//! the camera's first frame, not at PLAY, so a camera that answers but never sends media
//! creates no recording. A camera that keeps its session but sends nothing for
//! `idle_timeout_s` is reconnected. A reconnect within the resume window continues the
//! same recording with a discontinuity (the recorder decides, exactly as for RTMP).
//! Errors are logged at warn when they change and at debug while they repeat, so a
//! camera that is off for days does not flood the journal.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rand::Rng;
use tokio::time::{timeout, Instant};

use super::track_sync::Alignment;
use super::{CameraConnector, CameraFeed, Entry, Pulled, SourceState};
use crate::config::SourceSpec;
use crate::ingest::rate::RateMeter;
use crate::media::{TICKS_PER_MS, TICKS_PER_SECOND};
use crate::record::{PublishHandle, Recorders};

/// DESCRIBE + SETUP + PLAY must complete within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// See the hand-over in [`session`].
const HAND_OVER_EVERY: Duration = Duration::from_millis(100);
/// A session that recorded this long resets the backoff to its first step.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Runs `entry`'s supervisor until its cancel token fires.
pub(super) async fn run(
    entry: Arc<Entry>,
    connector: Arc<dyn CameraConnector>,
    recorders: Recorders,
) {
    let name = entry.spec.name();
    let mut backoff = BACKOFF_FIRST;
    let mut last_logged: Option<String> = None;
    loop {
        entry.update(|s| {
            s.state = SourceState::Connecting;
            s.next_attempt_ms = None;
            s.attempts += 1;
        });
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = entry.cancel.cancelled() => break,
            r = session(&entry, &*connector, &recorders) => r,
        };
        entry.update(|s| s.recording = None);
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = BACKOFF_FIRST;
        }
        let reason = match outcome {
            Ok(()) => "the camera ended the session".to_owned(),
            Err(reason) => reason,
        };
        if last_logged.as_deref() != Some(reason.as_str()) {
            tracing::warn!(source = %name, stream = %entry.spec.stream_key(), %reason, retry_in_ms = backoff.as_millis() as u64, "camera source disconnected");
            last_logged = Some(reason.clone());
        } else {
            tracing::debug!(source = %name, %reason, "camera source still failing");
        }
        let wait = jitter(backoff);
        entry.update(|s| {
            s.state = SourceState::Backoff;
            s.last_error = Some(reason);
            s.next_attempt_ms = Some(crate::clock::now_ms() + wait.as_millis() as i64);
        });
        tokio::select! {
            _ = entry.cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    entry.update(|s| {
        s.state = SourceState::Stopped;
        s.next_attempt_ms = None;
        s.recording = None;
    });
    tracing::debug!(source = %name, "camera supervisor stopped");
}

/// +-20 %, so cameras that failed together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// One connection: Ok when the camera ended it, Err with the reason otherwise.
async fn session(
    entry: &Entry,
    connector: &dyn CameraConnector,
    recorders: &Recorders,
) -> Result<(), String> {
    let spec = &entry.spec;
    let mut feed = match timeout(CONNECT_TIMEOUT, connector.connect(spec.clone())).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "no answer to DESCRIBE/SETUP/PLAY within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        }
    };
    let info = feed.info().clone();
    if let Some(dropped) = &info.audio_dropped {
        // Once per source (and again if the reason changes), not at every reconnect.
        if super::lock(&entry.status).info.audio_dropped.as_ref() != Some(dropped) {
            tracing::warn!(source = %spec.name(), reason = %dropped, "camera audio not recorded");
        }
    }
    entry.update(|s| s.info = info.clone());
    let idle = Duration::from_secs(spec.idle_timeout_s);
    let first = next(&mut *feed, Instant::now() + idle, idle).await?;
    let Some(first) = first else {
        return Ok(());
    };
    let remote = format!("rtsp-pull {}", spec.redacted_url());
    let mut handle = recorders
        .start_publish(&spec.app, &spec.stream, "", remote, "camera")
        .await
        .map_err(|e| {
            crate::metrics::global().refused(e.reason());
            e.to_string()
        })?;
    tracing::info!(source = %spec.name(), stream = %spec.stream_key(), recording = handle.recording_id(), video = ?info.video, audio = ?info.audio, "camera recording");
    handle.stats().set_audio_dropped(info.audio_dropped.clone());
    if info.video.is_some() {
        handle
            .expect_video()
            .map_err(|_| recorder_failure(&handle))?;
    }
    entry.update(|s| {
        s.state = SourceState::Recording;
        s.last_error = None;
        s.recording = Some(handle.stats().clone());
    });
    let mut meter = Meter::new();
    let mut item = first;
    let mut handed_over = Instant::now();
    let mut last_media = Instant::now();
    loop {
        if matches!(item, Pulled::Frame(_)) {
            last_media = Instant::now();
        }
        forward(spec, &mut handle, item, &mut meter)?;
        // Frames go to the writer when the camera's data is drained and at least
        // HAND_OVER_EVERY has passed (not half a second at a time, nor one writer wakeup
        // per RTP burst), so media waits in the kernel's socket buffer rather than in
        // this process. The feed's `next` is cancel-safe.
        let ready = match feed.next().now_or_never() {
            Some(ready) => ready?,
            None => {
                if handed_over.elapsed() >= HAND_OVER_EVERY {
                    handle.hand_over().map_err(|_| recorder_failure(&handle))?;
                    handed_over = Instant::now();
                }
                next(&mut *feed, last_media + idle, idle).await?
            }
        };
        item = match ready {
            Some(item) => item,
            None => return Ok(()),
        };
    }
}

/// The feed's next item, or an error at `deadline` (`idle` after the last frame: sender
/// reports alone do not keep a session alive).
async fn next(
    feed: &mut dyn CameraFeed,
    deadline: Instant,
    idle: Duration,
) -> Result<Option<Pulled>, String> {
    match tokio::time::timeout_at(deadline, feed.next()).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no media for {} s (session alive, no RTP)",
            idle.as_secs()
        )),
    }
}

fn forward(
    spec: &SourceSpec,
    handle: &mut PublishHandle,
    item: Pulled,
    meter: &mut Meter,
) -> Result<(), String> {
    let sent = match item {
        Pulled::Aligned(Alignment::Shifted(by)) => {
            tracing::info!(source = %spec.name(), shift_ms = by / TICKS_PER_MS,
                "the camera's sender reports and its RTP-Info disagree on where its audio sits; audio moved onto the video's timeline by the reports (if the camera dates its reports by send time, set align_by_sender_reports = false)");
            Ok(())
        }
        Pulled::Aligned(Alignment::Implausible(apart)) => {
            tracing::warn!(source = %spec.name(), apart_s = apart / TICKS_PER_SECOND,
                "the camera's sender reports put its audio implausibly far from its video; left as its RTP-Info places it");
            Ok(())
        }
        Pulled::Params(params) => handle.send_config(params),
        Pulled::WallClock { at, unix_ms } => handle.send_wall_clock(at, unix_ms),
        Pulled::Frame(frame) => {
            meter.add(handle, frame.data.len());
            handle.send_frame(frame)
        }
    };
    sent.map_err(|_| recorder_failure(handle))
}

fn recorder_failure(handle: &PublishHandle) -> String {
    handle.stats().stop_reason()
}

/// Received bytes and the bitrate into the stream's stats.
struct Meter(RateMeter);

impl Meter {
    fn new() -> Meter {
        Meter(RateMeter::new())
    }

    fn add(&mut self, handle: &PublishHandle, len: usize) {
        use std::sync::atomic::Ordering;
        let stats = handle.stats();
        let total = stats
            .bytes_received
            .fetch_add(len as u64, Ordering::Relaxed)
            + len as u64;
        if let Some(bps) = self.0.sample(total) {
            stats.bitrate_bps.store(bps, Ordering::Relaxed);
        }
    }
}
