//! One publish session's recorder: runs on its own thread, takes frames from the ingest
//! through the byte-budgeted channel, cuts keyframe-aligned segments, muxes them to
//! MPEG-TS, writes them per the fsync discipline and commits each sealed segment to the
//! index.
//!
//! Owns the segmenting rule (cut at the first keyframe at or after the target duration;
//! audio-only streams cut on any frame), track-set decisions (audio-only, video-only, a
//! codec change mid-stream = a new segment after a discontinuity), where audio starts
//! against the video keyframe that begins a run of segments ([`super::preroll`]) and
//! failure handling (a write error fails this recording with its reason; other streams
//! are untouched). It never talks to the network.
//!
//! Output timestamps are continuous for the whole recording: a resumed session, or a jump
//! in the encoder's clock, is re-anchored to continue where the recording's media ended
//! (the segment still carries `EXT-X-DISCONTINUITY`, since codec parameters may change).
//! Players and demuxers that do not reset their clocks at a discontinuity (ffmpeg's HLS
//! demuxer among them) then play the whole recording, and later MP4 packaging gets one
//! monotonic timeline.
//!
//! Wall clock (segment `start_time`, `EXT-X-PROGRAM-DATE-TIME`): arrival time, unless the
//! publisher sends RTCP sender reports (RTSP) and its clock is within a minute of ours;
//! then the session's segments are dated by the reports, so a picture is dated when it
//! was taken. The choice is made at the first report and kept for the session: a report
//! that comes after the session's first segment was committed is not adopted, since the
//! dates would step back. Reports map presentation time; segments start at a decode time,
//! so with B-frames a date is early by the reorder delay (a frame or two).
//!
//! Arrival times come from `clock_watch::recording_now`, with the clock epoch they belong
//! to: when the wall clock jumps, the recording's stored times are moved with it
//! ([`super::clock_anchor`]) and a segment stamped before the jump is moved as it commits.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clock_anchor::ClockAnchors;
use super::preroll::AudioPreroll;
use super::timeline::{TimelineGuard, Verdict};
use super::write_bounds::{self, Amplification, CutHistory};
use super::{lock, LiveStats, Msg, RecordError};
use crate::clock_watch::recording_now;
use crate::config::RecordConfig;
use crate::index::{Index, RecordingRow, RecordingState, SegmentRow, Update};
use crate::media::{CodecParams, Frame, Ticks, TrackKind, Tracks, TICKS_PER_MS, TICKS_PER_SECOND};
use crate::metrics;
use crate::mux::ts::TsMuxer;
use crate::storage::{recovery, SegmentWriter, Storage};

/// Cut tolerance: encoders round timestamps to milliseconds.
const CUT_TOLERANCE: Ticks = TICKS_PER_SECOND / 100;
/// How long audio is held back waiting for an announced video track before recording
/// audio-only.
const VIDEO_WAIT: Ticks = 3 * TICKS_PER_SECOND;
/// A publisher's sender-report clock is trusted for program date time only within this of
/// ours: search and the resume window work on our clock, and a camera that never had NTP
/// must not date a recording 1970.
pub const MAX_WALL_SKEW_MS: i64 = 60_000;

struct OpenSegment {
    writer: SegmentWriter,
    seq: u32,
    start_dts: Ticks,
    end_dts: Ticks,
    wall_start_ms: i64,
    /// The clock epoch `wall_start_ms` was stamped at (see [`ClockAnchors`]).
    wall_epoch: i64,
    /// When it was opened, for the cut by wall time ([`write_bounds::must_cut`]).
    opened: Instant,
    /// It starts with a video keyframe (or has no video); not after a forced cut.
    keyframe: bool,
    discontinuity: bool,
    codec_change: bool,
    /// Fingerprint of the tracks its muxer was made for.
    params: u64,
}

/// The state of one publish session's recording.
pub(super) struct RecordingSession {
    index: Index,
    storage: Storage,
    config: RecordConfig,
    stats: Arc<LiveStats>,
    recording: RecordingRow,
    dir: PathBuf,
    tracks: Tracks,
    expect_video: bool,
    first_audio_dts: Option<Ticks>,
    /// Audio waiting for the video keyframe that starts a run of segments.
    preroll: AudioPreroll,
    muxer: Option<TsMuxer>,
    segment: Option<OpenSegment>,
    next_seq: u32,
    discontinuity_next: bool,
    /// The next segment starts after a codec or track change (see [`SegmentRow::codec_change`]).
    codec_change_next: bool,
    timeline: TimelineGuard,
    /// Added to the encoder's timestamps to get recording time.
    offset: Ticks,
    /// Set on resume and after a jump: the next segment-opening frame re-anchors `offset`
    /// so recording time continues from `media_end`.
    reanchor: bool,
    /// End of the recording's media so far (recording time).
    media_end: Ticks,
    /// Last output DTS per track (video, audio), to keep the output strictly increasing
    /// right after a re-anchor.
    last_out: [Option<Ticks>; 2],
    /// The publisher's wall clock from its latest sender report: (input ticks, unix ms).
    wall_anchor: Option<(Ticks, i64)>,
    /// Whether this session's segments are dated by the publisher's reports: decided at
    /// the first report, yes if the session's first segment is still open (it is re-dated),
    /// no if segments dated by arrival are already committed (dates must not step back).
    dated_by_reports: Option<bool>,
    /// The sequence number of this session's first segment.
    first_seq: u32,
    /// Whether a publisher clock too far from ours has been logged.
    wall_skew_logged: bool,
    /// When the last sync that made everything written so far durable began. Counting the
    /// flush interval from its start, not its end, keeps media at risk within one interval
    /// even when the storage takes a good part of a second to sync.
    last_flush: Instant,
    /// The stream's unplanned cuts, shared with its other sessions.
    cuts: Arc<Mutex<CutHistory>>,
    amplification: Amplification,
    /// The recordings' clock epochs, shared with the registry.
    clock: Arc<ClockAnchors>,
    /// The clock epoch the stored times were last brought to.
    clock_seen: i64,
}

impl RecordingSession {
    /// `resumed_at`: this session continues an existing recording whose media ends there,
    /// so its first segment follows a discontinuity. `cuts`: the stream's unplanned cuts.
    pub(super) fn new(
        (index, storage, clock): (Index, Storage, Arc<ClockAnchors>),
        config: RecordConfig,
        stats: Arc<LiveStats>,
        recording: RecordingRow,
        resumed_at: Option<Ticks>,
        cuts: Arc<Mutex<CutHistory>>,
    ) -> RecordingSession {
        let resumed = resumed_at.is_some();
        let dir = storage.recording_dir(&recording.app, &recording.stream, &recording.id);
        let next_seq = recording.next_seq;
        RecordingSession {
            index,
            storage,
            config,
            stats,
            next_seq,
            recording,
            dir,
            tracks: Tracks::default(),
            expect_video: false,
            first_audio_dts: None,
            preroll: AudioPreroll::default(),
            muxer: None,
            segment: None,
            discontinuity_next: resumed,
            codec_change_next: false,
            timeline: TimelineGuard::default(),
            offset: 0,
            reanchor: resumed,
            media_end: resumed_at.unwrap_or(0),
            last_out: [None, None],
            wall_anchor: None,
            dated_by_reports: None,
            first_seq: next_seq,
            wall_skew_logged: false,
            last_flush: Instant::now(),
            cuts,
            amplification: Amplification::new(Instant::now()),
            clock,
            clock_seen: crate::clock_watch::epoch(),
        }
    }

    /// Runs until the publisher leaves (the sender side is dropped) or writing fails.
    pub(super) fn run(&mut self, rx: Receiver<Msg>) {
        let interval = self.config.flush_interval();
        // A resumed session starts a segment after a discontinuity: an unplanned cut.
        if self.reanchor {
            if let Err(e) = self.unplanned_cut() {
                self.end_with(e);
                return;
            }
        }
        loop {
            self.stats
                .heartbeat_ms
                .store(super::monotonic_ms(), Ordering::Relaxed);
            let result = match rx.recv_timeout(interval) {
                Ok(Msg::Frames(mut batch)) => {
                    // Dropping the batch after its frames are written gives its bytes back.
                    let frames = std::mem::take(&mut batch.frames);
                    frames.into_iter().try_for_each(|f| self.on_frame(f))
                }
                Ok(Msg::Config(params)) => self.on_config(params),
                Ok(Msg::ExpectVideo) => {
                    self.expect_video = true;
                    Ok(())
                }
                Ok(Msg::Gap { dropped }) => self.on_gap(dropped),
                Ok(Msg::WallClock { at, unix_ms }) => {
                    self.on_wall_clock(at, unix_ms);
                    Ok(())
                }
                Err(RecvTimeoutError::Timeout) => Ok(()),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let result = result
                .and_then(|()| self.flush_if_due())
                .and_then(|()| self.follow_clock());
            if let Err(e) = result {
                self.end_with(e);
                return;
            }
            if self.stats.is_dropped() {
                // Stopped from outside (the API ending it to delete it): as if it left.
                break;
            }
        }
        if let Err(e) = self.finish() {
            self.fail(e);
        }
    }

    /// Moves the recording's stored times when the wall clock has jumped (the open
    /// segment's start moves as it commits), and the live view's `since` with them.
    fn follow_clock(&mut self) -> Result<(), RecordError> {
        if crate::clock_watch::epoch() == self.clock_seen {
            return Ok(());
        }
        let id = self.recording.id.clone();
        let epoch = self.clock.clone().on_current_clock(
            &self.index,
            &id,
            self.moves_with_clock(),
            Ok::<_, RecordError>,
        )?;
        self.stats.shift_since(epoch - self.clock_seen);
        self.clock_seen = epoch;
        if let Some(row) = self.index.get_recording(&id)? {
            self.recording = row;
        }
        Ok(())
    }

    /// Whether this recording's times are on our clock (not its publisher's).
    fn moves_with_clock(&self) -> bool {
        self.dated_by_reports != Some(true)
    }

    /// Stops on `e`: a publisher that crossed a [`write_bounds`] limit is dropped and its
    /// recording ends as if it had left (resumable); anything else fails the recording.
    fn end_with(&mut self, e: RecordError) {
        let RecordError::PublisherDropped(reason) = e else {
            self.fail(e);
            return;
        };
        tracing::warn!(recording = %self.recording.id, stream = %self.recording.stream_key(), %reason,
            "dropping the publisher");
        self.stats.set_dropped(&reason);
        if let Err(e) = self.finish() {
            self.fail(e);
        }
    }

    /// Counts a segment cut the publisher caused (see [`write_bounds`]).
    fn unplanned_cut(&mut self) -> Result<(), RecordError> {
        lock(&self.cuts)
            .record(Instant::now())
            .map_err(RecordError::PublisherDropped)
    }

    fn on_frame(&mut self, mut frame: Frame) -> Result<(), RecordError> {
        self.amplification.received(frame.data.len());
        match self.timeline.check(&mut frame) {
            Verdict::InOrder => {}
            Verdict::Adjusted => {
                self.stats
                    .timestamps_repaired
                    .fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Jump { step } => {
                if step > 0 {
                    // Media the publisher never sent: a hole in the recording.
                    self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                    let ms = (step / TICKS_PER_MS) as u64;
                    self.stats.gap_ms.fetch_add(ms, Ordering::Relaxed);
                    let m = metrics::global();
                    m.gaps.inc();
                    m.gap_seconds.inc_by(ms as f64 / 1000.0);
                }
                tracing::warn!(stream = %self.recording.stream_key(), step_s = step as f64 / TICKS_PER_SECOND as f64,
                    "timestamps jumped; starting a new segment after a discontinuity");
                self.unplanned_cut()?;
                self.close_segment()?;
                self.discontinuity_next = true;
                self.reanchor = true;
                // The publisher's timeline restarted: its old sender report no longer maps.
                self.wall_anchor = None;
                let held = self.preroll.clear();
                self.skipped(held);
                self.timeline.check(&mut frame);
            }
        }
        if self.segment.is_none() && !self.can_start_with(&frame) {
            let skipped = if frame.kind == TrackKind::Audio && self.awaits_video() {
                self.preroll.hold(frame)
            } else {
                1
            };
            self.skipped(skipped);
            return Ok(());
        }
        if frame.kind == TrackKind::Audio && !self.preroll.admits(&frame) {
            self.skipped(1);
            return Ok(());
        }
        let opens_run = self.segment.is_none();
        let (kind, pts) = (frame.kind, frame.pts);
        self.place(frame)?;
        if opens_run && self.segment.is_some() {
            let dropped = if kind == TrackKind::Video {
                let audio_frame = self.frame_ticks(TrackKind::Audio);
                let (kept, dropped) = self.preroll.release(pts, audio_frame);
                for audio in kept {
                    self.place(audio)?;
                }
                dropped
            } else {
                self.preroll.clear()
            };
            self.skipped(dropped);
        }
        Ok(())
    }

    /// Whether audio that cannot start a segment should be held for the video keyframe.
    fn awaits_video(&self) -> bool {
        self.tracks.audio.is_some() && (self.tracks.video.is_some() || self.expect_video)
    }

    fn skipped(&self, frames: u64) {
        self.stats
            .frames_skipped
            .fetch_add(frames, Ordering::Relaxed);
    }

    /// Writes a frame that belongs in the recording: re-anchors, opens or cuts the segment
    /// it starts, and muxes it.
    fn place(&mut self, mut frame: Frame) -> Result<(), RecordError> {
        if std::mem::take(&mut self.reanchor) {
            self.offset = self.media_end - frame.dts;
        }
        frame.dts += self.offset;
        frame.pts += self.offset;
        let slot = frame.kind.slot();
        if self.last_out[slot].is_some_and(|last| frame.dts <= last) {
            // Only right after a re-anchor: a frame that interleaved before the anchor.
            self.skipped(1);
            return Ok(());
        }
        self.last_out[slot] = Some(frame.dts);
        let keyframe =
            self.tracks.video.is_none() || frame.kind == TrackKind::Video && frame.keyframe;
        if self.segment.is_none() {
            self.open_segment(frame.dts, keyframe)?;
        } else if self.should_cut_before(&frame) {
            self.cut_segment(frame.dts, keyframe)?;
        }
        let frame_ticks = self.frame_ticks(frame.kind);
        let (Some(segment), Some(muxer)) = (self.segment.as_mut(), self.muxer.as_mut()) else {
            return Ok(());
        };
        let before = segment.writer.len();
        if let Err(e) = muxer.write_frame(&frame, &mut segment.writer) {
            // A malformed access unit costs that frame only.
            self.stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(stream = %self.recording.stream_key(), error = %e, "frame not muxed");
            return Ok(());
        }
        let muxed = (segment.writer.len() - before) as usize;
        self.amplification
            .written(muxed, Instant::now())
            .map_err(RecordError::PublisherDropped)?;
        segment.end_dts = segment.end_dts.max(frame.dts + frame_ticks);
        segment
            .writer
            .spill()
            .map_err(|e| RecordError::io("write segment", &self.dir, e))
    }

    fn frame_ticks(&self, kind: TrackKind) -> Ticks {
        if let Some(t) = self.timeline.frame_ticks(kind) {
            return t;
        }
        match (kind, self.tracks.get(kind)) {
            (TrackKind::Audio, Some(CodecParams::Aac(aac))) => aac.frame_ticks(),
            _ => TICKS_PER_SECOND / 25,
        }
    }

    /// A segment starts with a video keyframe, or with audio when there is no video.
    fn can_start_with(&mut self, frame: &Frame) -> bool {
        if self.tracks.video.is_some() {
            return frame.kind == TrackKind::Video && frame.keyframe;
        }
        if frame.kind != TrackKind::Audio || self.tracks.audio.is_none() {
            return false;
        }
        if !self.expect_video {
            return true;
        }
        let first = *self.first_audio_dts.get_or_insert(frame.dts);
        if frame.dts - first >= VIDEO_WAIT {
            tracing::info!(stream = %self.recording.stream_key(), "video was announced but never came; recording audio only");
            self.expect_video = false;
            return true;
        }
        false
    }

    /// At a cut point (a video keyframe; any audio frame without video) once the target
    /// duration is reached; at any frame once the segment is too long without one.
    fn should_cut_before(&self, frame: &Frame) -> bool {
        let Some(segment) = &self.segment else {
            return false;
        };
        let target = i64::from(self.config.segment_duration_s) * TICKS_PER_SECOND - CUT_TOLERANCE;
        let cut_point = match self.tracks.video {
            Some(_) => frame.kind == TrackKind::Video && frame.keyframe,
            None => frame.kind == TrackKind::Audio,
        };
        let media = frame.dts - segment.start_dts;
        if cut_point && media >= target {
            self.stats.cut_requested.store(false, Ordering::Relaxed);
            return true;
        }
        // A task window's edge (`task_files`): cut here unless the segment is empty.
        if cut_point && media > 0 && self.stats.cut_requested.swap(false, Ordering::Relaxed) {
            return true;
        }
        let forced = write_bounds::must_cut(
            segment.writer.len(),
            Duration::from_millis((media.max(0) / TICKS_PER_MS) as u64),
            segment.opened.elapsed(),
            Duration::from_secs(u64::from(self.config.segment_duration_s)),
        );
        if forced {
            tracing::warn!(stream = %self.recording.stream_key(), bytes = segment.writer.len(),
                media_s = media as f64 / TICKS_PER_SECOND as f64,
                "no keyframe to cut the segment at; cutting it anyway (the next one starts without a keyframe)");
        }
        forced
    }

    fn on_config(&mut self, params: CodecParams) -> Result<(), RecordError> {
        if self.tracks.get(params.kind()) == Some(&params) {
            return Ok(());
        }
        tracing::info!(stream = %self.recording.stream_key(), codec = params.codec_name(),
            resolution = ?params.resolution(), "track configured");
        self.tracks.set(params);
        self.stats.set_tracks(&self.tracks);
        let held = self.preroll.clear();
        self.skipped(held);
        if self.muxer.is_some() {
            // The track set or its parameters changed mid-recording.
            self.unplanned_cut()?;
            self.close_segment()?;
            self.muxer = None;
            self.discontinuity_next = true;
            self.codec_change_next = true;
        }
        Ok(())
    }

    fn on_gap(&mut self, dropped: u64) -> Result<(), RecordError> {
        tracing::warn!(stream = %self.recording.stream_key(), dropped_frames = dropped,
            "the flash writer fell behind; frames were dropped and the segment is closed with a discontinuity");
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
        metrics::global().gaps.inc();
        self.close_segment()?;
        self.discontinuity_next = true;
        self.timeline.reset();
        let held = self.preroll.clear();
        self.skipped(held);
        Ok(())
    }

    fn open_segment(&mut self, start_dts: Ticks, keyframe: bool) -> Result<(), RecordError> {
        let segment = self.new_segment(start_dts, keyframe, SegmentWriter::create)?;
        self.segment = Some(segment);
        Ok(())
    }

    /// Ends the open segment where the next one starts. The next file is created first, so
    /// the old one's seal makes both folder changes durable with one fsync.
    fn cut_segment(&mut self, start_dts: Ticks, keyframe: bool) -> Result<(), RecordError> {
        let Some(old) = self.segment.take() else {
            return self.open_segment(start_dts, keyframe);
        };
        let mut next = match self.new_segment(start_dts, keyframe, SegmentWriter::create_deferred) {
            Ok(next) => next,
            Err(e) => {
                // No next file (a full disk, no inodes): the old segment is still sealed.
                self.commit_segment(old, start_dts, None)?;
                return Err(e);
            }
        };
        self.commit_segment(old, start_dts, Some(&mut next.writer))?;
        self.segment = Some(next);
        Ok(())
    }

    fn new_segment(
        &mut self,
        start_dts: Ticks,
        keyframe: bool,
        create: fn(&Path, &str) -> std::io::Result<SegmentWriter>,
    ) -> Result<OpenSegment, RecordError> {
        if self.muxer.is_none() {
            self.muxer = Some(TsMuxer::new(&self.tracks)?);
            self.record_tracks()?;
        }
        let seq = self.next_seq;
        #[cfg(debug_assertions)]
        test_fault_hook(&self.recording, seq);
        let mut writer = create(&self.dir, &SegmentRow::file_name(seq))
            .map_err(|e| RecordError::io("create segment", &self.dir, e))?;
        if let Some(muxer) = self.muxer.as_mut() {
            muxer.write_tables(&mut writer);
        }
        self.next_seq += 1;
        let (wall_start_ms, wall_epoch) = match self.dated_by_reports {
            Some(true) => (self.wall_at(start_dts), crate::clock_watch::epoch()),
            _ => recording_now(),
        };
        Ok(OpenSegment {
            writer,
            seq,
            start_dts,
            end_dts: start_dts,
            wall_start_ms,
            wall_epoch,
            opened: Instant::now(),
            keyframe,
            discontinuity: std::mem::take(&mut self.discontinuity_next),
            codec_change: std::mem::take(&mut self.codec_change_next),
            params: self.tracks.fingerprint(),
        })
    }

    fn on_wall_clock(&mut self, at: Ticks, unix_ms: i64) {
        self.wall_anchor = Some((at, unix_ms));
        if self.dated_by_reports.is_some() {
            return;
        }
        let first_open = self.segment.as_ref().map(|s| (s.seq, s.start_dts));
        let adopt = match first_open {
            Some((seq, _)) => seq == self.first_seq,
            None => self.next_seq == self.first_seq,
        };
        self.dated_by_reports = Some(adopt);
        if let (true, Some((_, start_dts))) = (adopt, first_open) {
            let wall = self.wall_at(start_dts);
            if let Some(segment) = self.segment.as_mut() {
                segment.wall_start_ms = wall;
            }
        }
    }

    /// The wall clock of output time `dts`: from the publisher's sender report when it sent
    /// one and its clock agrees with ours within [`MAX_WALL_SKEW_MS`] (so program date
    /// time is when the picture was taken, not when it arrived), else arrival time. A
    /// publisher whose clock is further off (a camera that never had NTP) is said once.
    fn wall_at(&mut self, dts: Ticks) -> i64 {
        let (now, _) = recording_now();
        let Some((at, unix_ms)) = self.wall_anchor else {
            return now;
        };
        let wall = unix_ms + (dts - self.offset - at) / TICKS_PER_MS;
        if (wall - now).abs() <= MAX_WALL_SKEW_MS {
            return wall;
        }
        if !std::mem::replace(&mut self.wall_skew_logged, true) {
            tracing::warn!(stream = %self.recording.stream_key(), skew_s = (wall - now) / 1000,
                "the publisher's clock (RTCP sender reports) is off from ours; program date time uses arrival time");
        }
        now
    }

    /// Seals the open segment (if any) and commits it.
    fn close_segment(&mut self) -> Result<(), RecordError> {
        let Some(segment) = self.segment.take() else {
            return Ok(());
        };
        let end = segment.end_dts;
        self.commit_segment(segment, end, None)
    }

    /// Writes the muxer's buffered audio into `segment`, seals it and writes its row. `end`
    /// is the DTS where the next segment starts (or the end of its media), which makes
    /// durations sum exactly.
    fn commit_segment(
        &mut self,
        mut segment: OpenSegment,
        end: Ticks,
        next: Option<&mut SegmentWriter>,
    ) -> Result<(), RecordError> {
        if let Some(muxer) = self.muxer.as_mut() {
            muxer.flush(&mut segment.writer);
        }
        let sync_started = Instant::now();
        let duration_ticks = (end - segment.start_dts).max(1);
        self.media_end = segment.start_dts + duration_ticks;
        let sealed = segment
            .writer
            .seal(next)
            .map_err(|e| RecordError::io("seal segment", &self.dir, e))?;
        let mut row = SegmentRow {
            seq: segment.seq,
            file: sealed.name,
            duration_ticks,
            bytes: sealed.bytes,
            media_start: segment.start_dts,
            wall_start_ms: segment.wall_start_ms,
            keyframe: segment.keyframe,
            discontinuity: segment.discontinuity,
            gap: false,
            recovered: false,
            codec_change: segment.codec_change,
            params: segment.params,
        };
        let (index, id) = (&self.index, self.recording.id.clone());
        self.recording =
            self.clock
                .on_current_clock(index, &id, self.moves_with_clock(), |epoch| {
                    if self.dated_by_reports != Some(true) {
                        row.wall_start_ms += epoch - segment.wall_epoch;
                    }
                    index.commit_segment(&id, &row)
                })?;
        self.stats.segments_written.fetch_add(1, Ordering::Relaxed);
        let m = metrics::global();
        m.segments.inc();
        if row.discontinuity {
            m.discontinuities.inc();
            self.stats.discontinuities.fetch_add(1, Ordering::Relaxed);
        }
        self.last_flush = sync_started;
        Ok(())
    }

    fn flush_if_due(&mut self) -> Result<(), RecordError> {
        if self.last_flush.elapsed() < self.config.flush_interval() {
            return Ok(());
        }
        let sync_started = Instant::now();
        if let Some(segment) = self.segment.as_mut() {
            if segment.writer.is_dirty() {
                segment
                    .writer
                    .make_durable()
                    .map_err(|e| RecordError::io("flush segment", &self.dir, e))?;
            }
        }
        self.last_flush = sync_started;
        Ok(())
    }

    fn record_tracks(&mut self) -> Result<(), RecordError> {
        let video = self
            .tracks
            .video
            .as_ref()
            .map(|p| p.codec_name().to_owned());
        let audio = self
            .tracks
            .audio
            .as_ref()
            .map(|p| p.codec_name().to_owned());
        let resolution = self.tracks.video.as_ref().and_then(|p| p.resolution());
        self.recording = self.index.update_recording(&self.recording.id, |r| {
            r.video_codec = video.clone();
            r.audio_codec = audio.clone();
            if resolution.is_some() {
                r.resolution = resolution;
            }
            Update::Write
        })?;
        Ok(())
    }

    /// The publisher left: seal, then make the recording resumable or finished. A new
    /// recording that never got a segment is removed rather than listed empty.
    fn finish(&mut self) -> Result<(), RecordError> {
        self.close_segment()?;
        let id = self.recording.id.clone();
        let current = self
            .index
            .get_recording(&id)?
            .ok_or_else(|| RecordError::Gone(id.clone()))?;
        if current.segments == 0 && current.sessions <= 1 {
            self.storage
                .remove_recording_dir(&current.app, &current.stream, &id)
                .map_err(|e| RecordError::io("remove empty recording", &self.dir, e))?;
            self.index.remove_recording(&id)?;
            tracing::info!(recording = %id, "publish ended before any media; nothing recorded");
            return Ok(());
        }
        let window_ms = if self.stats.no_resume.load(Ordering::Relaxed) {
            0
        } else {
            self.config.resume_window().as_millis() as i64
        };
        let index = &self.index;
        let row = self
            .clock
            .on_current_clock(index, &id, self.moves_with_clock(), |epoch| {
                let now = crate::clock_watch::recording_now_at(epoch);
                index.update_recording(&id, |r| {
                    if window_ms > 0 {
                        r.state = RecordingState::Resumable;
                        r.resumable_until_ms = Some(now + window_ms);
                    } else {
                        r.state = RecordingState::Finished;
                        r.resumable_until_ms = None;
                    }
                    Update::Write
                })
            })?;
        tracing::info!(recording = %id, state = row.state.as_str(), segments = row.segments,
            duration_s = row.duration_s(), "publish ended");
        Ok(())
    }

    /// After a panic in [`RecordingSession::run`]: the same as a failed write, so what is
    /// durable is kept and the recording is marked failed with the panic's message.
    pub(super) fn fail_after_panic(&mut self, message: &str) {
        self.fail(RecordError::Panicked(message.to_owned()));
    }

    /// A write failed (typically a full disk): keep what is durable, mark the recording
    /// failed with the reason, and stop. The ingest sees the channel close and drops the
    /// connection.
    fn fail(&mut self, error: RecordError) {
        let reason = error.to_string();
        tracing::error!(recording = %self.recording.id, stream = %self.recording.stream_key(), error = %reason,
            "recording failed");
        self.stats.set_failure(&reason);
        if let Some(segment) = self.segment.take() {
            segment.writer.abandon();
        }
        // Adopt the durable part of the open segment now, if the disk allows.
        let mut report = recovery::RecoveryReport::default();
        if let Err(e) =
            recovery::reconcile_files(&self.index, &self.storage, &self.recording, &mut report)
        {
            tracing::warn!(recording = %self.recording.id, error = %e, "could not adopt the last segment now; startup recovery will");
        }
        let marked = self.index.update_recording(&self.recording.id, |r| {
            r.state = RecordingState::Failed;
            r.resumable_until_ms = None;
            r.failure = Some(reason.clone());
            Update::Write
        });
        if let Err(e) = marked {
            tracing::error!(recording = %self.recording.id, error = %e, "could not mark the recording failed");
        }
    }
}

/// Debug builds only (the integration tests run them): `EDGEREC_TEST_WRITER_PANIC=STREAM`
/// makes that stream's writer panic as it opens its third segment, after two are durable,
/// so the containment of a writer panic can be tested against the real daemon.
#[cfg(debug_assertions)]
fn test_fault_hook(recording: &RecordingRow, seq: u32) {
    if seq >= 3 && std::env::var("EDGEREC_TEST_WRITER_PANIC").is_ok_and(|s| s == recording.stream) {
        panic!("test fault hook: writer of {} panics", recording.stream);
    }
}
