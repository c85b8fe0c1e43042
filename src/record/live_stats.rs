//! What one live publisher looks like while it publishes: [`LiveStats`], the counters and
//! state the ingest, its recorder thread and the API share (bytes, frames, drops, gaps,
//! the writer's heartbeat and backlog, why it stopped), and [`StreamView`], its JSON for
//! `GET /api/v1/streams` and the status page.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus::IntCounter;
use serde::Serialize;

use super::lock;
use crate::clock::monotonic_ms;
use crate::media::Tracks;
use crate::metrics;
use crate::stream_key::StreamKey;

/// Live numbers about one publisher, shared by the ingest, its recorder and the API.
pub struct LiveStats {
    pub app: String,
    pub stream: String,
    pub remote: String,
    /// `rtmp`, `rtmps`, `rtsp` (publish) or `camera` (pull).
    pub protocol: &'static str,
    /// When the publish began (unix ms, moved when the wall clock jumps: [`Self::since_ms`]).
    pub(super) since_ms: AtomicI64,
    /// The recording its writer makes, empty while nothing records it (a task attaches
    /// one mid-publish and takes it away when its window closes).
    pub(super) recording_id: Mutex<String>,
    /// The recording task that recording is for, if a task made it.
    pub(super) task_id: Mutex<Option<String>>,
    pub bytes_received: AtomicU64,
    /// Frames the publisher sent (recorded or not).
    pub frames_received: AtomicU64,
    pub bitrate_bps: AtomicU64,
    pub segments_written: AtomicU64,
    pub frames_skipped: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub timestamps_repaired: AtomicU64,
    /// Holes in the recording: the writer fell behind and dropped frames, or the
    /// publisher's timestamps jumped forward (media it never sent).
    pub gaps: AtomicU64,
    /// Media the forward jumps skipped, in ms.
    pub gap_ms: AtomicU64,
    /// Segments that began after a discontinuity (jumps, codec changes, gaps, resumes).
    pub discontinuities: AtomicU64,
    /// Media time handed to the writer on this connection: the newest frame's decode time
    /// minus the first's. What a power cut may lose is measured from here.
    pub media_received_ms: AtomicU64,
    /// Media bytes waiting in the channel to the writer.
    pub(super) in_flight: AtomicUsize,
    /// [`monotonic_ms`] when the writer thread last came round its loop (it does at least
    /// every `flush_interval`); a stale value means it is stuck in IO.
    pub(super) heartbeat_ms: AtomicU64,
    pub(super) tracks: Mutex<Tracks>,
    pub(super) failure: Mutex<Option<String>>,
    /// Why the recorder ended the publish (a [`write_bounds`] limit), if it did.
    pub(super) dropped: Mutex<Option<String>>,
    /// Ended from outside for good (the API deleting the recording): it closes finished,
    /// not resumable, so a publisher or camera that reconnects at once starts a new
    /// recording instead of continuing the one being deleted.
    pub(super) no_resume: AtomicBool,
    /// A task window over this recording opened or closed: the writer cuts the segment at
    /// the next keyframe, so the window's edge is a segment edge (`task_files`).
    pub(super) cut_requested: AtomicBool,
    /// Why the publisher's audio is not recorded (a codec MPEG-TS cannot carry).
    pub(super) audio_dropped: Mutex<Option<String>>,
    /// This protocol's lifetime series (`edgerec_received_*_total`).
    pub(super) bytes_counter: IntCounter,
    pub(super) frames_counter: IntCounter,
}

impl LiveStats {
    /// The recording being written for this publish; empty when nothing records it.
    pub fn recording_id(&self) -> String {
        lock(&self.recording_id).clone()
    }

    /// The recording task the recording is made for, if any.
    pub fn task_id(&self) -> Option<String> {
        lock(&self.task_id).clone()
    }

    /// A writer starts (`Some`) or stops (`None`) recording this publish.
    pub(super) fn set_recording(&self, recording: Option<(&str, Option<&str>)>) {
        let (id, task) = recording.unwrap_or_default();
        *lock(&self.recording_id) = id.to_owned();
        *lock(&self.task_id) = task.map(str::to_owned);
    }

    /// Asks the writer to start a new segment at the next keyframe.
    pub(super) fn request_cut(&self) {
        self.cut_requested.store(true, Ordering::Relaxed);
    }

    /// `app/stream` of this publisher.
    pub fn stream_key(&self) -> StreamKey {
        StreamKey::new(&self.app, &self.stream)
    }

    /// The connection has received `total` bytes so far (counted in the lifetime total
    /// too).
    pub fn set_bytes_received(&self, total: u64) {
        let before = self.bytes_received.swap(total, Ordering::Relaxed);
        self.bytes_counter.inc_by(total.saturating_sub(before));
    }

    pub(super) fn set_tracks(&self, tracks: &Tracks) {
        *lock(&self.tracks) = tracks.clone();
    }

    /// When the publish began, unix ms.
    pub fn since_ms(&self) -> i64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// The wall clock jumped by `delta_ms`: `since` moves with it.
    pub(super) fn shift_since(&self, delta_ms: i64) {
        self.since_ms.fetch_add(delta_ms, Ordering::Relaxed);
    }

    pub(super) fn set_failure(&self, reason: &str) {
        *lock(&self.failure) = Some(reason.to_owned());
    }

    /// Says why the publisher's audio track is left out (shown in the stream's entry).
    pub fn set_audio_dropped(&self, reason: Option<String>) {
        *lock(&self.audio_dropped) = reason;
    }

    /// Why the recorder stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    pub(super) fn set_dropped(&self, reason: &str) {
        *lock(&self.dropped) = Some(reason.to_owned());
    }

    /// Ends the recording for good: the writer seals, the publisher is disconnected, and
    /// the recording is not left resumable.
    pub(super) fn stop_for_good(&self, reason: &str) {
        self.no_resume.store(true, Ordering::Relaxed);
        self.set_dropped(reason);
    }

    pub(super) fn is_dropped(&self) -> bool {
        lock(&self.dropped).is_some()
    }

    /// Why the recorder stopped taking this publisher's frames, for the ingest's log line
    /// and the reply it gives: a failed recording, or a limit the publisher crossed.
    pub fn stop_reason(&self) -> String {
        if let Some(reason) = lock(&self.dropped).clone() {
            return format!("publisher dropped: {reason}");
        }
        match self.failure() {
            Some(f) => format!("recording failed: {f}"),
            None => "the recorder stopped".into(),
        }
    }

    /// A JSON view for `GET /api/v1/streams`.
    pub fn view(&self) -> StreamView {
        let tracks = lock(&self.tracks).clone();
        StreamView {
            app: self.app.clone(),
            stream: self.stream.clone(),
            remote: self.remote.clone(),
            protocol: self.protocol,
            since: crate::clock::rfc3339(self.since_ms()),
            recording_id: self.recording_id(),
            task_id: self.task_id(),
            video_codec: tracks.video.as_ref().map(|p| p.codec_name()),
            audio_codec: tracks.audio.as_ref().map(|p| p.codec_name()),
            audio_dropped: lock(&self.audio_dropped).clone(),
            resolution: tracks
                .video
                .as_ref()
                .and_then(|p| p.resolution())
                .map(|(w, h)| format!("{w}x{h}")),
            bitrate_bps: self.bitrate_bps.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            segments_written: self.segments_written.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            frames_rejected: self.frames_rejected.load(Ordering::Relaxed),
            frames_skipped: self.frames_skipped.load(Ordering::Relaxed),
            timestamps_repaired: self.timestamps_repaired.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            gap_ms: self.gap_ms.load(Ordering::Relaxed),
            discontinuities: self.discontinuities.load(Ordering::Relaxed),
            media_received_ms: self.media_received_ms.load(Ordering::Relaxed),
            playlist: None,
        }
    }
}

/// One live publisher as the API shows it.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct StreamView {
    pub app: String,
    pub stream: String,
    pub remote: String,
    pub protocol: &'static str,
    pub since: String,
    pub recording_id: String,
    /// The recording task the recording is made for, if a task made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub video_codec: Option<&'static str>,
    pub audio_codec: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_dropped: Option<String>,
    pub resolution: Option<String>,
    pub bitrate_bps: u64,
    pub bytes_received: u64,
    pub frames_received: u64,
    pub segments_written: u64,
    pub frames_dropped: u64,
    pub frames_rejected: u64,
    /// Frames not recorded while waiting for a keyframe (start, after a discontinuity).
    pub frames_skipped: u64,
    pub timestamps_repaired: u64,
    pub gaps: u64,
    pub gap_ms: u64,
    pub discontinuities: u64,
    pub media_received_ms: u64,
    /// The live playlist's URL here, signed when a playback key is set (filled by the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playlist: Option<String>,
}

pub(super) fn placeholder_stats(app: &str, stream: &str, protocol: &'static str) -> LiveStats {
    let m = metrics::global();
    LiveStats {
        app: app.to_owned(),
        stream: stream.to_owned(),
        remote: String::new(),
        protocol,
        since_ms: AtomicI64::new(crate::clock_watch::recording_now().0),
        recording_id: Mutex::default(),
        task_id: Mutex::default(),
        bytes_received: AtomicU64::new(0),
        frames_received: AtomicU64::new(0),
        bitrate_bps: AtomicU64::new(0),
        segments_written: AtomicU64::new(0),
        frames_skipped: AtomicU64::new(0),
        frames_rejected: AtomicU64::new(0),
        frames_dropped: AtomicU64::new(0),
        timestamps_repaired: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        gap_ms: AtomicU64::new(0),
        discontinuities: AtomicU64::new(0),
        media_received_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        heartbeat_ms: AtomicU64::new(monotonic_ms()),
        tracks: Mutex::new(Tracks::default()),
        failure: Mutex::new(None),
        dropped: Mutex::new(None),
        no_resume: AtomicBool::new(false),
        cut_requested: AtomicBool::new(false),
        audio_dropped: Mutex::new(None),
        bytes_counter: m.received_bytes.with_label_values(&[protocol]),
        frames_counter: m.received_frames.with_label_values(&[protocol]),
    }
}
