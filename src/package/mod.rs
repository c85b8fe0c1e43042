//! Derived files: the bytes of an MP4, FLV or AAC (M4A) recording, made from its
//! capture's stored TS segments when someone reads them (a download, an upload), never
//! written to flash (DESIGN.md "Recording model": reads do not wear the card, writes do).
//!
//! Owns [`DerivedFile`]: [`DerivedFile::plan`] demuxes the file's segments once to learn
//! every sample's size and time (no payload is kept), and asks the container writer for
//! the exact header and length; [`DerivedFile::read_range`] then demuxes only the segments
//! that overlap the asked range and emits their bytes. The bytes are a pure function of
//! (segment files, format, [`MUXER_VERSION`]), so regenerating after a reboot gives the
//! same bytes and a multipart upload resumes part by part.
//!
//! Frames are chosen the same way in both passes, segment by segment: a fresh demuxer per
//! segment (so any segment can be regenerated alone), frames of tracks the file does not
//! carry dropped, and a frame whose decode time does not advance past its track's
//! previous one dropped (the start state of each segment is kept from the plan). Segments
//! lost to recovery (gap rows) are skipped: the file jumps over them and says so in its
//! row's note. Blocking file IO: call from the blocking pool.

use std::path::PathBuf;

use crate::config::Format;
use crate::index::{FileRow, Index, IndexError, RecordingRow, SegmentRow};
use crate::media::{Frame, Ticks, TrackKind, Tracks};
use crate::mux::flv_file::FlvLayout;
use crate::mux::mp4::{Mp4Brand, Mp4Layout};
use crate::mux::ts_demux::{DemuxEvent, TsDemuxer};
use crate::mux::{MuxError, SampleMeta};
use crate::storage::Storage;

/// Bumped whenever any derived file's bytes change for the same segments: a multipart
/// upload begun by another version is started over rather than resumed.
pub const MUXER_VERSION: u32 = 1;

/// How much of a segment file is read at a time.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("recording {0} does not exist")]
    Gone(String),
    #[error("the local files of {0} were removed after upload; fetch it from the store")]
    Evicted(String),
    #[error("cannot read segment {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("segment {path}: {detail}")]
    Demux { path: String, detail: String },
    #[error("{0} has no media to package (every segment of its span was lost)")]
    Empty(String),
    #[error("cannot package {id}: {source}")]
    Mux { id: String, source: MuxError },
    #[error("the segments of {0} changed while it was being read; read it again")]
    Changed(String),
}

enum Layout {
    Mp4(Mp4Layout),
    Flv(FlvLayout),
}

/// One segment's place in the derived file.
#[derive(Debug, Clone)]
struct Part {
    path: PathBuf,
    media_start: Ticks,
    /// Index of its first sample in the file, and how many it has.
    first_sample: usize,
    samples: usize,
    /// Byte range of its samples in the file.
    start: u64,
    end: u64,
    /// Last decode time per track (video, audio) before this segment.
    last_dts: [Option<Ticks>; 2],
}

/// A planned derived file: its exact length and header, and where each segment's samples
/// go. Holds no payload.
pub struct DerivedFile {
    pub id: String,
    pub format: Format,
    layout: Layout,
    parts: Vec<Part>,
    tracks: Tracks,
    total_len: u64,
    /// Frames the demuxer could not use (before parameter sets, not advancing).
    pub dropped_frames: u64,
    /// A clip starting at a keyframe inside its first segment: frames before it are left
    /// out ([`FileRow::start`]).
    from_dts: Option<Ticks>,
}

impl DerivedFile {
    /// Plans the file of `row` (one pass over its segments).
    pub fn plan(
        index: &Index,
        storage: &Storage,
        row: &FileRow,
    ) -> Result<DerivedFile, PackageError> {
        let capture = index
            .get_recording(&row.capture_id)?
            .ok_or_else(|| PackageError::Gone(row.capture_id.clone()))?;
        if capture.evicted_ms.is_some() {
            return Err(PackageError::Evicted(row.id.clone()));
        }
        let segments: Vec<SegmentRow> = index
            .segments_after(&row.capture_id, row.first_seq.saturating_sub(1))?
            .into_iter()
            .take_while(|s| s.seq <= row.last_seq)
            .filter(|s| !s.gap)
            .collect();
        plan_segments(row, &capture, storage, &segments)
    }

    /// Exact length in bytes.
    pub fn len(&self) -> u64 {
        self.total_len
    }

    pub fn is_empty(&self) -> bool {
        self.total_len == 0
    }

    /// A fingerprint of the bytes: FNV-1a of the header (which holds every sample's size
    /// and time, or for FLV the keyframe positions) and the length. A multipart upload
    /// resumes only onto bytes with the same fingerprint.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.header().iter().chain(&self.total_len.to_be_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h.max(1)
    }

    /// Media duration (90 kHz).
    pub fn duration(&self) -> Ticks {
        match &self.layout {
            Layout::Mp4(l) => l.duration(),
            Layout::Flv(l) => l.duration(),
        }
    }

    /// The tracks the file carries.
    pub fn tracks(&self) -> &Tracks {
        &self.tracks
    }

    fn header(&self) -> &[u8] {
        match &self.layout {
            Layout::Mp4(l) => l.header(),
            Layout::Flv(l) => l.header(),
        }
    }

    /// The bytes `start..end` of the file (clamped to its length).
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<u8>, PackageError> {
        let end = end.min(self.total_len);
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        if start >= end {
            return Ok(out);
        }
        let header = self.header();
        let header_len = header.len() as u64;
        if start < header_len {
            out.extend_from_slice(&header[start as usize..end.min(header_len) as usize]);
        }
        for part in self.parts.iter().filter(|p| p.end > start && p.start < end) {
            let bytes = self.part_bytes(part)?;
            let from = start.saturating_sub(part.start) as usize;
            let to = (end.min(part.end) - part.start) as usize;
            out.extend_from_slice(&bytes[from..to]);
        }
        Ok(out)
    }

    /// Regenerates one segment's samples as file bytes.
    fn part_bytes(&self, part: &Part) -> Result<Vec<u8>, PackageError> {
        let mut chooser = Chooser::new(&self.tracks, self.format, part.last_dts, self.from_dts);
        let mut out = Vec::with_capacity((part.end - part.start) as usize);
        let mut index = part.first_sample;
        let mut scratch = Vec::new();
        demux_segment(&part.path, part.media_start, |frame| {
            if chooser.take(&frame) {
                if index >= part.first_sample + part.samples {
                    return;
                }
                match &self.layout {
                    Layout::Mp4(_) => out.extend_from_slice(&frame.data),
                    Layout::Flv(l) => {
                        scratch.clear();
                        l.tag_prefix(index, &mut scratch);
                        out.extend_from_slice(&scratch);
                        out.extend_from_slice(&frame.data);
                        scratch.clear();
                        l.tag_suffix(index, &mut scratch);
                        out.extend_from_slice(&scratch);
                    }
                }
                index += 1;
            }
        })?;
        if out.len() as u64 != part.end - part.start || index != part.first_sample + part.samples {
            return Err(PackageError::Changed(self.id.clone()));
        }
        Ok(out)
    }
}

fn plan_segments(
    row: &FileRow,
    capture: &RecordingRow,
    storage: &Storage,
    segments: &[SegmentRow],
) -> Result<DerivedFile, PackageError> {
    let dir = storage.recording_dir(&capture.app, &capture.stream, &capture.id);
    let from_dts = row.start.map(|s| s.dts);
    // Pass one: every usable frame's metadata, segment by segment. The tracks are the
    // first set the demuxer reports (files split at codec changes, so there is one).
    let mut tracks: Option<Tracks> = None;
    let mut samples: Vec<SampleMeta> = Vec::new();
    let mut parts = Vec::with_capacity(segments.len());
    let mut last_dts = [None, None];
    let mut dropped = 0u64;
    for seg in segments {
        let path = dir.join(&seg.file);
        let first_sample = samples.len();
        let before = last_dts;
        let mut seen_tracks: Option<Tracks> = None;
        let mut frames: Vec<SampleMeta> = Vec::new();
        let mut demuxer_dropped = 0;
        demux_segment_with_tracks(
            &path,
            seg.media_start,
            &mut seen_tracks,
            &mut demuxer_dropped,
            |frame| {
                frames.push(meta(&frame));
            },
        )?;
        dropped += demuxer_dropped;
        let seen_tracks = seen_tracks.map(|t| file_tracks(t, row.format));
        if tracks.is_none() {
            tracks = seen_tracks.clone();
        }
        let Some(file_tracks) = tracks.as_ref() else {
            continue; // nothing usable yet
        };
        if seen_tracks.as_ref().is_some_and(|seen| seen != file_tracks) {
            // Files split where parameters change; a segment that still differs (adopted
            // by recovery without its parameters' fingerprint) cannot go under this file's
            // sample entries: leave it out rather than write an undecodable file.
            tracing::warn!(file = %row.id, segment = %seg.file, "segment has other codec parameters than the file; left out");
            dropped += frames.len() as u64;
            continue;
        }
        let mut chooser = Chooser::new(file_tracks, row.format, last_dts, from_dts);
        for m in frames {
            if chooser.take_meta(&m) {
                samples.push(m);
            } else {
                dropped += 1;
            }
        }
        last_dts = chooser.last_dts;
        if first_sample == 0 && !samples.is_empty() {
            // Size the list from the first segment (plus 10 %) instead of letting it
            // double: peak memory per sample is what bounds packaging a long file.
            samples.reserve_exact(samples.len() * segments.len() / 10 * 11);
        }
        parts.push(Part {
            path,
            media_start: seg.media_start,
            first_sample,
            samples: samples.len() - first_sample,
            start: 0,
            end: 0,
            last_dts: before,
        });
    }
    let tracks = tracks.ok_or_else(|| PackageError::Empty(row.id.clone()))?;
    if samples.is_empty() {
        return Err(PackageError::Empty(row.id.clone()));
    }
    let mux_err = |source| PackageError::Mux {
        id: row.id.clone(),
        source,
    };
    let layout = match row.format {
        Format::Mp4 => {
            Layout::Mp4(Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).map_err(mux_err)?)
        }
        Format::Aac => {
            Layout::Mp4(Mp4Layout::plan(&tracks, &samples, Mp4Brand::M4a).map_err(mux_err)?)
        }
        Format::Flv => Layout::Flv(FlvLayout::plan(&tracks, &samples).map_err(mux_err)?),
        Format::Hls => {
            return Err(PackageError::Demux {
                path: row.id.clone(),
                detail: "HLS recordings are served as playlists, not derived files".into(),
            })
        }
    };
    // Byte ranges of each segment's samples.
    let mut offset = match &layout {
        Layout::Mp4(l) => l.header().len() as u64,
        Layout::Flv(l) => l.header().len() as u64,
    };
    let mut scratch = Vec::new();
    for part in &mut parts {
        part.start = offset;
        for (i, s) in samples[part.first_sample..part.first_sample + part.samples]
            .iter()
            .enumerate()
        {
            offset += u64::from(s.size);
            if let Layout::Flv(l) = &layout {
                scratch.clear();
                l.tag_prefix(part.first_sample + i, &mut scratch);
                l.tag_suffix(part.first_sample + i, &mut scratch);
                offset += scratch.len() as u64;
            }
        }
        part.end = offset;
    }
    let total_len = match &layout {
        Layout::Mp4(l) => l.total_len(),
        Layout::Flv(l) => l.total_len(),
    };
    if offset != total_len {
        return Err(PackageError::Mux {
            id: row.id.clone(),
            source: MuxError::NoTracks,
        });
    }
    Ok(DerivedFile {
        id: row.id.clone(),
        format: row.format,
        layout,
        parts,
        tracks,
        total_len,
        dropped_frames: dropped,
        from_dts,
    })
}

/// The tracks a file of `format` carries.
fn file_tracks(mut tracks: Tracks, format: Format) -> Tracks {
    if format == Format::Aac {
        tracks.video = None;
    }
    tracks
}

fn meta(frame: &Frame) -> SampleMeta {
    SampleMeta {
        kind: frame.kind,
        dts: frame.dts,
        cts: i32::try_from((frame.pts - frame.dts).max(0)).unwrap_or(i32::MAX),
        keyframe: frame.keyframe,
        size: frame.data.len() as u32,
    }
}

/// The one rule, used by both passes, for which demuxed frames go in the file.
struct Chooser {
    has: [bool; 2],
    last_dts: [Option<Ticks>; 2],
    /// Video must start on a keyframe.
    video_started: bool,
    /// Nothing decoded before this (a clip's keyframe).
    from_dts: Option<Ticks>,
}

impl Chooser {
    fn new(
        tracks: &Tracks,
        format: Format,
        last_dts: [Option<Ticks>; 2],
        from_dts: Option<Ticks>,
    ) -> Chooser {
        Chooser {
            has: [
                tracks.video.is_some() && format != Format::Aac,
                tracks.audio.is_some(),
            ],
            video_started: last_dts[0].is_some(),
            last_dts,
            from_dts,
        }
    }

    fn take_meta(&mut self, m: &SampleMeta) -> bool {
        let i = m.kind.slot();
        if !self.has[i] || self.from_dts.is_some_and(|from| m.dts < from) {
            return false;
        }
        if m.kind == TrackKind::Video && !self.video_started {
            if !m.keyframe {
                return false;
            }
            self.video_started = true;
        }
        if self.last_dts[i].is_some_and(|last| m.dts <= last) {
            return false;
        }
        self.last_dts[i] = Some(m.dts);
        true
    }

    fn take(&mut self, frame: &Frame) -> bool {
        self.take_meta(&meta(frame))
    }
}

/// Demuxes one segment file, calling `on_frame` with each frame, timestamps unwrapped to
/// the capture's timeline near `media_start`.
fn demux_segment(
    path: &std::path::Path,
    media_start: Ticks,
    on_frame: impl FnMut(Frame),
) -> Result<(), PackageError> {
    let mut tracks = None;
    let mut dropped = 0;
    demux_segment_with_tracks(path, media_start, &mut tracks, &mut dropped, on_frame)
}

fn demux_segment_with_tracks(
    path: &std::path::Path,
    media_start: Ticks,
    tracks: &mut Option<Tracks>,
    dropped: &mut u64,
    mut on_frame: impl FnMut(Frame),
) -> Result<(), PackageError> {
    use std::io::Read;
    let shown = || path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|source| PackageError::Read {
        path: shown(),
        source,
    })?;
    let mut demuxer = TsDemuxer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut drain = |demuxer: &mut TsDemuxer, tracks: &mut Option<Tracks>| {
        while let Some(event) = demuxer.poll() {
            match event {
                DemuxEvent::Tracks(t) => {
                    if tracks.is_none() {
                        *tracks = Some(t);
                    }
                }
                DemuxEvent::Frame(mut f) => {
                    f.dts = unwrap_near(f.dts, media_start);
                    f.pts = unwrap_near(f.pts, media_start);
                    on_frame(f);
                }
            }
        }
    };
    loop {
        let n = file.read(&mut buf).map_err(|source| PackageError::Read {
            path: shown(),
            source,
        })?;
        if n == 0 {
            break;
        }
        demuxer.feed(&buf[..n]).map_err(|e| PackageError::Demux {
            path: shown(),
            detail: e.to_string(),
        })?;
        drain(&mut demuxer, tracks);
    }
    demuxer.finish();
    drain(&mut demuxer, tracks);
    *dropped += demuxer.dropped_frames();
    Ok(())
}

/// MPEG-TS timestamps are 33 bits: the value congruent to `t` modulo 2^33 nearest to
/// `reference`.
pub fn unwrap_near(t: Ticks, reference: Ticks) -> Ticks {
    reference + crate::mux::ts::timestamp_delta(t, reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_unwrap_to_the_capture_timeline() {
        let two33 = 1i64 << 33;
        assert_eq!(unwrap_near(100, 0), 100);
        assert_eq!(unwrap_near(two33 - 10, 0), -10);
        assert_eq!(unwrap_near(5, two33 * 3 - 100), two33 * 3 + 5);
        assert_eq!(unwrap_near(two33 - 50, two33 * 2 + 10), two33 * 2 - 50);
    }
}
