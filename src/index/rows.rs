//! The rows the index stores: [`RecordingRow`] and [`SegmentRow`], and the recording
//! lifecycle ([`RecordingState`]). Plain data with serde; no sled here.

use serde::{Deserialize, Serialize};

use crate::media::{ticks_to_seconds, Ticks};

/// Where a recording is in its life (DESIGN.md "Recording model").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// A publisher is live and segments are being written.
    Recording,
    /// The publisher left; a publish of the same stream before `resumable_until_ms`
    /// continues this recording (with a discontinuity).
    Resumable,
    /// Closed for good: its playlist has `EXT-X-ENDLIST`.
    Finished,
    /// Stopped by an error (`failure` says which); what was durable is kept and playable.
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Resumable => "resumable",
            RecordingState::Finished => "finished",
            RecordingState::Failed => "failed",
        }
    }

    /// Open recordings can still gain segments.
    pub fn is_open(self) -> bool {
        matches!(self, RecordingState::Recording | RecordingState::Resumable)
    }

    pub fn parse(s: &str) -> Option<RecordingState> {
        match s {
            "recording" => Some(RecordingState::Recording),
            "resumable" => Some(RecordingState::Resumable),
            "finished" => Some(RecordingState::Finished),
            "failed" => Some(RecordingState::Failed),
            _ => None,
        }
    }
}

/// The capture of one live stream: its keyframe-aligned TS segment log on flash (one copy
/// of every media byte) and, when its template enables HLS, the HLS recording over it
/// (DESIGN.md "Recording model"). MP4/FLV/AAC recordings over the same segments are
/// [`super::FileRow`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingRow {
    pub id: String,
    pub app: String,
    pub stream: String,
    pub state: RecordingState,
    /// Wall clock (unix ms) when the row was created.
    pub created_ms: i64,
    /// Wall clock (unix ms) of the first segment's start; `created_ms` until one exists.
    pub start_ms: i64,
    /// Wall clock (unix ms) of the last segment's end.
    pub end_ms: i64,
    /// While `Resumable`: the publish deadline for continuing this recording.
    pub resumable_until_ms: Option<i64>,
    /// Sum of segment durations (media time).
    pub duration_ticks: Ticks,
    pub segments: u32,
    pub bytes: u64,
    /// Segments flagged as following a discontinuity (resume, codec change, gap).
    pub discontinuities: u32,
    /// The sequence number the next segment gets.
    pub next_seq: u32,
    /// Publish sessions that contributed (1 + resumes).
    pub sessions: u32,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub resolution: Option<(u32, u32)>,
    /// Why the recording failed, or what recovery had to repair.
    pub failure: Option<String>,
    /// Longest segment so far, in whole seconds rounded up (for `EXT-X-TARGETDURATION`).
    pub max_segment_s: u32,
    /// Phase one of a two-phase delete (invariant 3): files may already be gone.
    #[serde(default)]
    pub deleting: bool,
    /// Where its objects go in the store: `<prefix>/<app>/<stream>/<name>`, fixed when
    /// the first object is queued.
    #[serde(default)]
    pub store_path: Option<String>,
    /// Wall time (unix ms) when every object of the recording was in the store.
    #[serde(default)]
    pub uploaded_ms: Option<i64>,
    /// Wall time (unix ms) when its local files were evicted after upload; the rows stay
    /// so the recording can still be found (and fetched from the store).
    #[serde(default)]
    pub evicted_ms: Option<i64>,
    /// The template this capture records with, as it was when the capture began (a
    /// template edited later applies to the next publish). `None` in rows written before
    /// templates existed: the built-in `default`.
    #[serde(default)]
    pub template: Option<crate::config::Template>,
    /// The publisher's `record_id=` from its stream key query, for `{RecordId}`.
    #[serde(default)]
    pub record_id: Option<String>,
    /// The publish URL's query string as the first publisher sent it (for callbacks).
    #[serde(default)]
    pub stream_param: Option<String>,
    /// Segments so far that start a new file for a codec change
    /// ([`SegmentRow::changes_codec`]): a file planner that sees this unchanged knows no
    /// file must close for one without reading segments.
    #[serde(default)]
    pub codec_changes: u32,
    /// The last known segment parameters' fingerprint (0 = none yet).
    #[serde(default)]
    pub last_params: u64,
    /// Status events (`event_type` 332) queued for this recording: the last one's `seq`.
    #[serde(default)]
    pub events: u32,
    /// Its HLS recording was deleted while files over the capture remain: the segments
    /// stay for them, nothing of the HLS recording is listed, played or uploaded.
    #[serde(default)]
    pub hls_deleted: bool,
    /// When its HLS objects leave the store (the template's `storage_time_s`).
    #[serde(default)]
    pub store_expiry: Option<super::StoreExpiry>,
    /// Files over this capture that were deleted: the file planner, which recomputes a
    /// finished capture's files from its segments (after recovery marked a gap), must not
    /// make them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_files: Vec<String>,
    /// The recording task (`index::tasks`) this capture records for, if one made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

impl RecordingRow {
    pub fn new(id: String, app: String, stream: String, now_ms: i64) -> RecordingRow {
        RecordingRow {
            id,
            app,
            stream,
            state: RecordingState::Recording,
            created_ms: now_ms,
            start_ms: now_ms,
            end_ms: now_ms,
            resumable_until_ms: None,
            duration_ticks: 0,
            segments: 0,
            bytes: 0,
            discontinuities: 0,
            next_seq: 1,
            sessions: 1,
            video_codec: None,
            audio_codec: None,
            resolution: None,
            failure: None,
            max_segment_s: 0,
            deleting: false,
            store_path: None,
            uploaded_ms: None,
            evicted_ms: None,
            template: None,
            record_id: None,
            stream_param: None,
            codec_changes: 0,
            last_params: 0,
            events: 0,
            hls_deleted: false,
            store_expiry: None,
            deleted_files: Vec::new(),
            task_id: None,
        }
    }

    /// The template's name (`default` for rows written before templates existed).
    pub fn template_name(&self) -> &str {
        self.template
            .as_ref()
            .map_or(crate::config::templates::DEFAULT_TEMPLATE, |t| {
                t.name.as_str()
            })
    }

    /// Whether the capture is also delivered as an HLS recording (listed and uploaded):
    /// its template makes one and it was not deleted on its own.
    pub fn has_hls(&self) -> bool {
        !self.hls_deleted && self.template.as_ref().is_none_or(|t| t.hls_enabled())
    }

    /// Whether MP4/FLV/AAC files are made of this capture.
    pub fn has_files(&self) -> bool {
        self.template
            .as_ref()
            .is_some_and(|t| t.file_outputs().next().is_some())
    }

    pub fn duration_s(&self) -> f64 {
        ticks_to_seconds(self.duration_ticks)
    }

    /// Closed for good: no segment will be added.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state,
            RecordingState::Finished | RecordingState::Failed
        )
    }

    /// `app/stream`, the identity of a live stream.
    pub fn stream_key(&self) -> String {
        crate::stream_key::StreamKey::new(&self.app, &self.stream).to_string()
    }

    /// Folds a newly committed segment into the totals.
    pub fn add_segment(&mut self, seg: &SegmentRow) {
        if self.segments == 0 {
            self.start_ms = seg.wall_start_ms;
        }
        self.segments += 1;
        self.bytes += seg.bytes;
        self.duration_ticks += seg.duration_ticks;
        if seg.discontinuity {
            self.discontinuities += 1;
        }
        if seg.changes_codec(self.last_params) {
            self.codec_changes += 1;
        }
        if seg.params != 0 {
            self.last_params = seg.params;
        }
        self.next_seq = self.next_seq.max(seg.seq + 1);
        self.end_ms = self.end_ms.max(seg.wall_end_ms());
        self.max_segment_s = self.max_segment_s.max(seg.duration_s().ceil() as u32);
    }
}

/// One sealed segment file of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRow {
    pub seq: u32,
    /// File name inside the recording's folder (`00000001.ts`).
    pub file: String,
    pub duration_ticks: Ticks,
    pub bytes: u64,
    /// DTS of the first frame (media time, 90 kHz).
    pub media_start: Ticks,
    /// Wall clock (unix ms) of the first frame.
    pub wall_start_ms: i64,
    /// Starts with a keyframe (or has no video). Not a segment adopted by recovery whose
    /// start was lost, nor one cut because its publisher sent no keyframe for too long
    /// (`record::write_bounds`).
    pub keyframe: bool,
    /// Follows a discontinuity: `EXT-X-DISCONTINUITY` goes before it.
    pub discontinuity: bool,
    /// The file is missing: listed as `EXT-X-GAP` so players skip it.
    pub gap: bool,
    /// Adopted by startup recovery from a `.part` or unindexed file.
    pub recovered: bool,
    /// Starts after the codec parameters or the track set changed: MP4/FLV/AAC files
    /// start a new file here.
    #[serde(default)]
    pub codec_change: bool,
    /// Fingerprint of the track set and codec parameters it was muxed with
    /// ([`crate::media::Tracks::fingerprint`]); 0 = unknown (adopted by recovery, or
    /// written before schema 2). A change also starts a new file, which catches a resumed
    /// publisher that came back with other parameters.
    #[serde(default)]
    pub params: u64,
}

impl SegmentRow {
    /// Whether this segment must start a new MP4/FLV/AAC file after segments muxed with
    /// `previous` parameters (0 = unknown).
    pub fn changes_codec(&self, previous: u64) -> bool {
        self.codec_change || (self.params != 0 && previous != 0 && self.params != previous)
    }
}

impl SegmentRow {
    /// A segment that starts with a keyframe at media time 0 and carries no flags: what
    /// tests and benches commit to build an index.
    pub fn plain(seq: u32, duration_ticks: Ticks, bytes: u64, wall_start_ms: i64) -> SegmentRow {
        SegmentRow {
            seq,
            file: SegmentRow::file_name(seq),
            duration_ticks,
            bytes,
            media_start: 0,
            wall_start_ms,
            keyframe: true,
            discontinuity: false,
            gap: false,
            recovered: false,
            codec_change: false,
            params: 0,
        }
    }

    pub fn file_name(seq: u32) -> String {
        format!("{seq:08}.ts")
    }

    pub fn duration_s(&self) -> f64 {
        ticks_to_seconds(self.duration_ticks)
    }

    pub fn wall_end_ms(&self) -> i64 {
        self.wall_start_ms + self.duration_ticks / crate::media::TICKS_PER_MS
    }
}
