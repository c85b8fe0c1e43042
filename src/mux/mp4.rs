//! Progressive ("faststart") MP4 and M4A files (ISO/IEC 14496-12 boxes, AVC/HEVC sample
//! entries per ISO/IEC 14496-15, AAC `esds` per ISO/IEC 14496-14 and 14496-1 section
//! 7.2.6): `ftyp`, then `moov` with the complete sample tables, then one `mdat` holding
//! the sample payloads back to back.
//!
//! Owns: [`Mp4Layout`], the planning pass of the two-pass design described in
//! [`crate::mux`]: [`Mp4Layout::plan`] takes one [`SampleMeta`] per frame and returns the
//! exact bytes that precede the first payload ([`Mp4Layout::header`]); the file's body is
//! then the frames' `data` concatenated in the same order, with no per-sample framing
//! (video access units are already length-prefixed NAL units, audio frames raw AAC).
//! Never does IO and never holds payloads: the plan keeps the final box bytes plus a few
//! bytes per sample while it is built (4 for `stsz`, 8 per chunk offset, the run-length
//! coded `stts`/`ctts`, 4 per keyframe).
//!
//! Why hand-written boxes: the `mp4` crate's `Mp4Writer` needs `Write + Seek`, writes
//! `mdat` first and the `moov` at the end (no faststart), and cannot stream a file whose
//! payloads are produced later; the boxes needed here are few and simple.
//!
//! Layout decisions:
//! - Track 1 is video (`avc1`+`avcC` or `hvc1`+`hvcC`, timescale 90 kHz), track 2 audio
//!   (`mp4a`+`esds`, timescale = sample rate); audio is track 1 when it is alone. A track
//!   that is configured but gets no sample is left out; [`Mp4Brand::M4a`] ignores video.
//! - One chunk per run of consecutive samples of one track, so `stco` (or `co64` for
//!   every track once an offset passes `u32::MAX`) has one entry per run.
//! - Time: all timestamps are rebased so that the earliest dts of the file is 0. Each
//!   track's media time starts at its own first dts; a track whose first dts is later
//!   than the file's gets an empty edit of the difference first. A track whose earliest
//!   presentation time is after its first dts (video with B-frames) gets an edit whose
//!   `media_time` is that presentation time (the first sample's composition offset), so
//!   the first picture is presented at the track's start and players (and ffprobe's
//!   `start_time`) line audio and video up within a frame. As in every dts-aligned MP4
//!   this presents the video earlier than the source by that composition offset.
//! - Audio dts are converted to the sample rate from each absolute timestamp (rounded to
//!   the nearest sample) and then differenced, so rounding never accumulates. The last
//!   sample of a track lasts as long as the one before it (1024 samples for a lone AAC
//!   frame, [`DEFAULT_VIDEO_FRAME`] for a lone picture).
//! - `mvhd` (timescale 1000), `tkhd`, `mdhd` and `elst` switch to version 1 on their own
//!   when a value no longer fits 32 bits; `mdat` uses the 64-bit `largesize` when its
//!   payload exceeds 4 GiB - 8. Creation and modification times are 0, so the same input
//!   always gives the same bytes.

use super::{MuxError, SampleMeta};
use crate::media::{CodecParams, MediaError, Ticks, TrackKind, Tracks, TICKS_PER_SECOND};

/// `mvhd` timescale (and that of `tkhd` and `elst` durations): milliseconds.
pub const MOVIE_TIMESCALE: u32 = 1000;

/// Duration given to the only picture of a one-sample video track (30 fps).
pub const DEFAULT_VIDEO_FRAME: Ticks = 3000;

/// Duration of the only frame of a one-sample AAC track, in samples.
const AAC_FRAME_SAMPLES: i64 = crate::media::aac::SAMPLES_PER_FRAME;

const SAMPLE_WHAT: &str = "mp4 sample";

/// Which family of file to write: the brands of `ftyp`, and whether video is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mp4Brand {
    /// `.mp4`: major brand `isom`, video and/or audio.
    Mp4,
    /// `.m4a`: major brand `M4A `, one AAC track; video samples are an error.
    M4a,
}

/// The planned file: header bytes and lengths. See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mp4Layout {
    header: Vec<u8>,
    total_len: u64,
    duration: Ticks,
}

impl Mp4Layout {
    /// Plans a progressive MP4 of `samples` (in the order their payloads will follow in
    /// `mdat`; interleaved audio/video in decode order as a demuxer produces them). For
    /// [`Mp4Brand::M4a`], `tracks.video` is ignored and video samples must not be passed.
    ///
    /// Errors: [`MuxError::NoTracks`] when no configured track gets a sample (this covers
    /// an empty `samples`), [`MuxError::NoSuchTrack`] for a sample of a track that is not
    /// configured (any video sample for M4A), [`MuxError::UnsupportedCodec`] for a track
    /// of a codec MP4 cannot hold here, [`MuxError::BadFrame`] for a dts that decreases
    /// within its track, a negative composition offset, or a gap too long for `stts`.
    pub fn plan(
        tracks: &Tracks,
        samples: &[SampleMeta],
        brand: Mp4Brand,
    ) -> Result<Mp4Layout, MuxError> {
        let container = match brand {
            Mp4Brand::Mp4 => "mp4",
            Mp4Brand::M4a => "m4a",
        };
        let mut video = match (brand, &tracks.video) {
            (Mp4Brand::Mp4, Some(params)) => Some(TrackBuild::new(
                TrackKind::Video,
                SampleEntry::of(container, TrackKind::Video, params)?,
            )),
            _ => None,
        };
        let mut audio = match &tracks.audio {
            Some(params) => Some(TrackBuild::new(
                TrackKind::Audio,
                SampleEntry::of(container, TrackKind::Audio, params)?,
            )),
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return Err(MuxError::NoTracks);
        }

        let mut offset: u64 = 0;
        let mut previous: Option<TrackKind> = None;
        for sample in samples {
            let track = match sample.kind {
                TrackKind::Video => video.as_mut(),
                TrackKind::Audio => audio.as_mut(),
            }
            .ok_or(MuxError::NoSuchTrack { kind: sample.kind })?;
            if previous != Some(sample.kind) {
                track.start_chunk(offset);
            }
            track.push(sample)?;
            offset += u64::from(sample.size);
            previous = Some(sample.kind);
        }
        let payload_len = offset;

        let built: Vec<TrackBuild> = [video, audio]
            .into_iter()
            .flatten()
            .filter(|t| t.samples > 0)
            .collect();
        let start = built
            .iter()
            .filter_map(|t| t.first_dts)
            .min()
            .ok_or(MuxError::NoTracks)?;
        let finished: Vec<Finished> = built
            .into_iter()
            .enumerate()
            .map(|(index, track)| track.finish(index as u32 + 1, start))
            .collect();

        let ftyp = ftyp(brand, &finished);
        let mdat_header_len: u64 = if payload_len > u64::from(u32::MAX) - 8 {
            16
        } else {
            8
        };
        // Sizes with 32-bit offsets first; switch to co64 if the last chunk would not fit.
        let last_chunk = finished
            .iter()
            .filter_map(|t| t.build.chunk_offsets.last())
            .max()
            .copied()
            .unwrap_or(0);
        let moov32_len = moov(&finished, 0, false).len() as u64;
        let header32 = ftyp.len() as u64 + moov32_len + mdat_header_len;
        let co64 = header32 + last_chunk > u64::from(u32::MAX);
        let chunk_count: u64 = finished
            .iter()
            .map(|t| t.build.chunk_offsets.len() as u64)
            .sum();
        let moov_len = if co64 {
            moov32_len + 4 * chunk_count
        } else {
            moov32_len
        };
        let header_len = ftyp.len() as u64 + moov_len + mdat_header_len;
        let moov = moov(&finished, header_len, co64);
        debug_assert_eq!(moov.len() as u64, moov_len);

        let mut header = Vec::with_capacity(header_len as usize);
        header.extend_from_slice(&ftyp);
        header.extend_from_slice(&moov);
        if mdat_header_len == 16 {
            header.extend_from_slice(&1u32.to_be_bytes());
            header.extend_from_slice(b"mdat");
            header.extend_from_slice(&(payload_len + 16).to_be_bytes());
        } else {
            header.extend_from_slice(&((payload_len + 8) as u32).to_be_bytes());
            header.extend_from_slice(b"mdat");
        }
        let duration = finished.iter().map(|t| t.end_ticks).max().unwrap_or(0);
        Ok(Mp4Layout {
            total_len: header.len() as u64 + payload_len,
            header,
            duration,
        })
    }

    /// `ftyp` + `moov` + the `mdat` box header: the exact bytes that precede the first
    /// sample payload.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// `header().len()` + the sum of the sample sizes: the exact file length.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Duration of the movie in 90 kHz ticks: the latest end of presentation over the
    /// tracks, empty edits included (what `mvhd` holds, before rounding to milliseconds).
    pub fn duration(&self) -> Ticks {
        self.duration
    }
}

/// The codec-specific part of a track: its sample entry.
#[derive(Debug)]
enum SampleEntry<'a> {
    Video {
        fourcc: &'a [u8; 4],
        config_fourcc: &'a [u8; 4],
        record: &'a [u8],
        width: u32,
        height: u32,
    },
    Aac {
        asc: &'a [u8],
        sample_rate: u32,
        channels: u8,
    },
}

impl<'a> SampleEntry<'a> {
    fn of(
        container: &'static str,
        kind: TrackKind,
        params: &'a CodecParams,
    ) -> Result<SampleEntry<'a>, MuxError> {
        let (width, height) = params.resolution().unwrap_or((0, 0));
        match (kind, params) {
            (TrackKind::Video, CodecParams::H264(c)) => Ok(SampleEntry::Video {
                fourcc: b"avc1",
                config_fourcc: b"avcC",
                record: &c.record,
                width,
                height,
            }),
            (TrackKind::Video, CodecParams::H265(c)) => Ok(SampleEntry::Video {
                fourcc: b"hvc1",
                config_fourcc: b"hvcC",
                record: &c.record,
                width,
                height,
            }),
            (TrackKind::Audio, CodecParams::Aac(c)) if c.sample_rate > 0 => Ok(SampleEntry::Aac {
                asc: &c.asc,
                sample_rate: c.sample_rate,
                channels: c.channels,
            }),
            (TrackKind::Audio, CodecParams::Aac(_)) => Err(MuxError::BadConfig {
                kind,
                source: MediaError::Invalid {
                    what: "aac audio specific config",
                    offset: 0,
                    detail: "sample rate 0".into(),
                },
            }),
            _ => Err(MuxError::UnsupportedCodec {
                container,
                kind,
                codec: params.codec_name(),
            }),
        }
    }

    fn timescale(&self) -> u32 {
        match self {
            SampleEntry::Video { .. } => TICKS_PER_SECOND as u32,
            SampleEntry::Aac { sample_rate, .. } => *sample_rate,
        }
    }
}

/// Run-length coded (count, value) pairs as the big-endian bytes of `stts`/`ctts`
/// entries.
#[derive(Debug, Default)]
struct Runs {
    bytes: Vec<u8>,
    entries: u32,
    run: Option<(u32, u32)>,
}

impl Runs {
    fn push(&mut self, value: u32) {
        match &mut self.run {
            Some((count, v)) if *v == value && *count < u32::MAX => *count += 1,
            _ => {
                self.flush();
                self.run = Some((1, value));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((count, value)) = self.run.take() {
            self.bytes.extend_from_slice(&count.to_be_bytes());
            self.bytes.extend_from_slice(&value.to_be_bytes());
            self.entries += 1;
        }
    }
}

/// One track's sample tables, built sample by sample in the planning loop.
#[derive(Debug)]
struct TrackBuild<'a> {
    kind: TrackKind,
    entry: SampleEntry<'a>,
    timescale: u32,
    /// First and latest dts in 90 kHz.
    first_dts: Option<Ticks>,
    last_dts: Ticks,
    /// Media-time dts and pts of the latest sample, whose duration is not known yet.
    pending: Option<(i64, i64)>,
    last_delta: Option<u32>,
    samples: u32,
    stts: Runs,
    ctts: Runs,
    any_cts: bool,
    stss: Vec<u8>,
    stss_entries: u32,
    all_sync: bool,
    stsz: Vec<u8>,
    stsc: Vec<u8>,
    stsc_entries: u32,
    stsc_last: Option<u32>,
    /// Chunk offsets relative to the start of the `mdat` payload.
    chunk_offsets: Vec<u64>,
    chunk_samples: u32,
    /// Earliest presentation and latest end of presentation, media timescale.
    min_pts: i64,
    max_end: i64,
    bytes: u64,
    max_size: u32,
    second: i64,
    second_bytes: u64,
    max_second_bytes: u64,
}

/// A track once all samples are in: what `moov` needs.
#[derive(Debug)]
struct Finished<'a> {
    id: u32,
    build: TrackBuild<'a>,
    /// Sum of `stts`, media timescale.
    media_duration: u64,
    /// Empty edit, movie timescale (0: none).
    empty_edit: u64,
    /// `media_time` of the media edit and its duration (movie timescale).
    media_time: i64,
    edit_duration: u64,
    /// `tkhd` duration, movie timescale.
    track_duration: u64,
    /// End of presentation on the file's timeline, 90 kHz.
    end_ticks: Ticks,
    avg_bitrate: u32,
    max_bitrate: u32,
}

impl<'a> TrackBuild<'a> {
    fn new(kind: TrackKind, entry: SampleEntry<'a>) -> TrackBuild<'a> {
        TrackBuild {
            kind,
            timescale: entry.timescale(),
            entry,
            first_dts: None,
            last_dts: 0,
            pending: None,
            last_delta: None,
            samples: 0,
            stts: Runs::default(),
            ctts: Runs::default(),
            any_cts: false,
            stss: Vec::new(),
            stss_entries: 0,
            all_sync: true,
            stsz: Vec::new(),
            stsc: Vec::new(),
            stsc_entries: 0,
            stsc_last: None,
            chunk_offsets: Vec::new(),
            chunk_samples: 0,
            min_pts: i64::MAX,
            max_end: 0,
            bytes: 0,
            max_size: 0,
            second: 0,
            second_bytes: 0,
            max_second_bytes: 0,
        }
    }

    /// Converts a 90 kHz time relative to the track's first dts to the media timescale.
    fn media_time(&self, ticks: Ticks) -> i64 {
        rescale_nearest(ticks, TICKS_PER_SECOND, i64::from(self.timescale))
    }

    fn start_chunk(&mut self, offset: u64) {
        self.close_chunk();
        self.chunk_offsets.push(offset);
    }

    fn close_chunk(&mut self) {
        if self.chunk_samples == 0 {
            return;
        }
        if self.stsc_last != Some(self.chunk_samples) {
            let chunk_number = self.chunk_offsets.len() as u32;
            self.stsc.extend_from_slice(&chunk_number.to_be_bytes());
            self.stsc
                .extend_from_slice(&self.chunk_samples.to_be_bytes());
            self.stsc.extend_from_slice(&1u32.to_be_bytes());
            self.stsc_entries += 1;
            self.stsc_last = Some(self.chunk_samples);
        }
        self.chunk_samples = 0;
    }

    fn bad(&self, dts: Ticks, detail: String) -> MuxError {
        MuxError::BadFrame {
            kind: self.kind,
            dts,
            source: MediaError::Invalid {
                what: SAMPLE_WHAT,
                offset: self.samples as usize,
                detail,
            },
        }
    }

    fn push(&mut self, sample: &SampleMeta) -> Result<(), MuxError> {
        if sample.cts < 0 {
            return Err(self.bad(
                sample.dts,
                format!("negative composition offset {}", sample.cts),
            ));
        }
        if self.samples == u32::MAX {
            return Err(self.bad(sample.dts, "more than 2^32-1 samples".into()));
        }
        let first = *self.first_dts.get_or_insert(sample.dts);
        if self.samples > 0 && sample.dts < self.last_dts {
            return Err(self.bad(sample.dts, format!("dts goes back from {}", self.last_dts)));
        }
        self.last_dts = sample.dts;
        let relative = sample.dts - first;
        let dts = self.media_time(relative);
        let pts = self.media_time(relative + i64::from(sample.cts));
        if let Some((previous_dts, previous_pts)) = self.pending {
            let delta = u32::try_from(dts - previous_dts).map_err(|_| {
                self.bad(
                    sample.dts,
                    format!(
                        "gap of {} ticks after the previous sample",
                        dts - previous_dts
                    ),
                )
            })?;
            self.stts.push(delta);
            self.last_delta = Some(delta);
            self.max_end = self.max_end.max(previous_pts + i64::from(delta));
        }
        self.pending = Some((dts, pts));
        let offset = (pts - dts) as u32;
        self.any_cts |= offset != 0;
        self.ctts.push(offset);
        self.min_pts = self.min_pts.min(pts);

        self.samples += 1;
        self.chunk_samples += 1;
        if sample.keyframe {
            self.stss.extend_from_slice(&self.samples.to_be_bytes());
            self.stss_entries += 1;
        } else {
            self.all_sync = false;
        }
        self.stsz.extend_from_slice(&sample.size.to_be_bytes());
        self.bytes += u64::from(sample.size);
        self.max_size = self.max_size.max(sample.size);
        let second = dts / i64::from(self.timescale);
        if second != self.second {
            self.second = second;
            self.second_bytes = 0;
        }
        self.second_bytes += u64::from(sample.size);
        self.max_second_bytes = self.max_second_bytes.max(self.second_bytes);
        Ok(())
    }

    /// Ends the tables; `start` is the earliest first dts of the file (90 kHz).
    fn finish(mut self, id: u32, start: Ticks) -> Finished<'a> {
        self.close_chunk();
        let timescale = i64::from(self.timescale);
        let (last_dts, last_pts) = self.pending.unwrap_or((0, 0));
        let delta = match (self.last_delta, &self.entry) {
            (Some(delta), _) => delta,
            (None, SampleEntry::Aac { .. }) => AAC_FRAME_SAMPLES as u32,
            (None, SampleEntry::Video { .. }) => self.media_time(DEFAULT_VIDEO_FRAME) as u32,
        };
        self.stts.push(delta);
        self.stts.flush();
        self.ctts.flush();
        self.max_end = self.max_end.max(last_pts + i64::from(delta));
        let media_duration = (last_dts + i64::from(delta)) as u64;

        let first = self.first_dts.unwrap_or(start);
        let empty_ticks = first - start;
        let empty_edit = rescale_nearest(empty_ticks, TICKS_PER_SECOND, 1000) as u64;
        let media_time = if self.min_pts == i64::MAX {
            0
        } else {
            self.min_pts
        };
        let presented = (self.max_end - media_time).max(0);
        let edit_duration =
            rescale_nearest(presented, timescale, i64::from(MOVIE_TIMESCALE)) as u64;
        let end_ticks = empty_ticks + rescale_nearest(presented, timescale, TICKS_PER_SECOND);

        let seconds = media_duration as f64 / timescale as f64;
        let avg_bitrate = if seconds > 0.0 {
            (self.bytes as f64 * 8.0 / seconds).min(f64::from(u32::MAX)) as u32
        } else {
            0
        };
        let max_bitrate = (self.max_second_bytes * 8).min(u64::from(u32::MAX)) as u32;
        Finished {
            id,
            build: self,
            media_duration,
            empty_edit,
            media_time,
            edit_duration,
            track_duration: empty_edit + edit_duration,
            end_ticks,
            avg_bitrate,
            max_bitrate: max_bitrate.max(avg_bitrate),
        }
    }
}

/// `value * to_hz / from_hz` rounded to the nearest integer (halves up).
fn rescale_nearest(value: i64, from_hz: i64, to_hz: i64) -> i64 {
    let wide = value as i128 * to_hz as i128 * 2 + from_hz as i128;
    wide.div_euclid(2 * from_hz as i128) as i64
}

// ---- box writing ----

/// Appends a box: size placeholder, type, the body written by `body`, then the size.
fn boxed(out: &mut Vec<u8>, fourcc: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(fourcc);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Appends a full box (version and 24-bit flags after the type).
fn full_box(
    out: &mut Vec<u8>,
    fourcc: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    boxed(out, fourcc, |out| {
        out.extend_from_slice(&((u32::from(version) << 24) | (flags & 0xff_ffff)).to_be_bytes());
        body(out);
    });
}

/// Appends an MPEG-4 descriptor (ISO/IEC 14496-1 section 8.3.3) with a 4-byte size.
fn descriptor(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    body(&mut inner);
    let len = inner.len() as u32;
    out.push(tag);
    out.extend_from_slice(&[
        0x80 | ((len >> 21) & 0x7f) as u8,
        0x80 | ((len >> 14) & 0x7f) as u8,
        0x80 | ((len >> 7) & 0x7f) as u8,
        (len & 0x7f) as u8,
    ]);
    out.extend_from_slice(&inner);
}

fn u16be(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u32be(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u64be(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn matrix(out: &mut Vec<u8>) {
    for v in MATRIX {
        u32be(out, v);
    }
}

fn ftyp(brand: Mp4Brand, tracks: &[Finished]) -> Vec<u8> {
    let hevc = tracks
        .iter()
        .any(|t| matches!(t.build.entry, SampleEntry::Video { fourcc, .. } if fourcc == b"hvc1"));
    let (major, compatible): (&[u8; 4], &[&[u8; 4]]) = match brand {
        Mp4Brand::M4a => (b"M4A ", &[b"M4A ", b"mp42", b"isom"]),
        Mp4Brand::Mp4 if hevc => (b"isom", &[b"isom", b"iso2", b"mp41"]),
        Mp4Brand::Mp4 => (b"isom", &[b"isom", b"iso2", b"avc1", b"mp41"]),
    };
    let mut out = Vec::new();
    boxed(&mut out, b"ftyp", |out| {
        out.extend_from_slice(major);
        u32be(out, 0x200);
        for c in compatible {
            out.extend_from_slice(*c);
        }
    });
    out
}

/// The `moov` box; chunk offsets are `base` + their offset in the `mdat` payload.
fn moov(tracks: &[Finished], base: u64, co64: bool) -> Vec<u8> {
    let bytes: usize = tracks
        .iter()
        .map(|t| {
            let b = &t.build;
            b.stts.bytes.len()
                + b.ctts.bytes.len()
                + b.stss.len()
                + b.stsz.len()
                + b.stsc.len()
                + b.chunk_offsets.len() * 8
                + 1024
        })
        .sum();
    let mut out = Vec::with_capacity(bytes + 256);
    let duration = tracks.iter().map(|t| t.track_duration).max().unwrap_or(0);
    boxed(&mut out, b"moov", |out| {
        let v1 = duration > u64::from(u32::MAX);
        full_box(out, b"mvhd", u8::from(v1), 0, |out| {
            if v1 {
                u64be(out, 0);
                u64be(out, 0);
                u32be(out, MOVIE_TIMESCALE);
                u64be(out, duration);
            } else {
                u32be(out, 0);
                u32be(out, 0);
                u32be(out, MOVIE_TIMESCALE);
                u32be(out, duration as u32);
            }
            u32be(out, 0x0001_0000); // rate 1.0
            u16be(out, 0x0100); // volume 1.0
            out.extend_from_slice(&[0; 10]);
            matrix(out);
            out.extend_from_slice(&[0; 24]);
            u32be(out, tracks.len() as u32 + 1);
        });
        for track in tracks {
            trak(out, track, base, co64);
        }
    });
    out
}

fn trak(out: &mut Vec<u8>, t: &Finished, base: u64, co64: bool) {
    let b = &t.build;
    let video = b.kind == TrackKind::Video;
    boxed(out, b"trak", |out| {
        let v1 = t.track_duration > u64::from(u32::MAX);
        full_box(out, b"tkhd", u8::from(v1), 3, |out| {
            if v1 {
                u64be(out, 0);
                u64be(out, 0);
                u32be(out, t.id);
                u32be(out, 0);
                u64be(out, t.track_duration);
            } else {
                u32be(out, 0);
                u32be(out, 0);
                u32be(out, t.id);
                u32be(out, 0);
                u32be(out, t.track_duration as u32);
            }
            out.extend_from_slice(&[0; 8]);
            u16be(out, 0); // layer
            u16be(out, 0); // alternate_group
            u16be(out, if video { 0 } else { 0x0100 });
            u16be(out, 0);
            matrix(out);
            let (w, h) = match b.entry {
                SampleEntry::Video { width, height, .. } => (width, height),
                SampleEntry::Aac { .. } => (0, 0),
            };
            u32be(out, w.min(0xffff) << 16);
            u32be(out, h.min(0xffff) << 16);
        });
        if t.empty_edit > 0 || t.media_time > 0 {
            edts(out, t);
        }
        boxed(out, b"mdia", |out| {
            let v1 = t.media_duration > u64::from(u32::MAX);
            full_box(out, b"mdhd", u8::from(v1), 0, |out| {
                if v1 {
                    u64be(out, 0);
                    u64be(out, 0);
                    u32be(out, b.timescale);
                    u64be(out, t.media_duration);
                } else {
                    u32be(out, 0);
                    u32be(out, 0);
                    u32be(out, b.timescale);
                    u32be(out, t.media_duration as u32);
                }
                u16be(out, 0x55c4); // "und"
                u16be(out, 0);
            });
            full_box(out, b"hdlr", 0, 0, |out| {
                u32be(out, 0);
                out.extend_from_slice(if video { b"vide" } else { b"soun" });
                out.extend_from_slice(&[0; 12]);
                out.extend_from_slice(if video {
                    b"VideoHandler\0"
                } else {
                    b"SoundHandler\0"
                });
            });
            boxed(out, b"minf", |out| {
                if video {
                    full_box(out, b"vmhd", 0, 1, |out| out.extend_from_slice(&[0; 8]));
                } else {
                    full_box(out, b"smhd", 0, 0, |out| out.extend_from_slice(&[0; 4]));
                }
                boxed(out, b"dinf", |out| {
                    full_box(out, b"dref", 0, 0, |out| {
                        u32be(out, 1);
                        full_box(out, b"url ", 0, 1, |_| {});
                    });
                });
                stbl(out, t, base, co64);
            });
        });
    });
}

fn edts(out: &mut Vec<u8>, t: &Finished) {
    let mut entries: Vec<(u64, i64)> = Vec::with_capacity(2);
    if t.empty_edit > 0 {
        entries.push((t.empty_edit, -1));
    }
    entries.push((t.edit_duration, t.media_time));
    let v1 = entries
        .iter()
        .any(|&(d, m)| d > u64::from(u32::MAX) || m > i64::from(i32::MAX));
    boxed(out, b"edts", |out| {
        full_box(out, b"elst", u8::from(v1), 0, |out| {
            u32be(out, entries.len() as u32);
            for (duration, media_time) in entries {
                if v1 {
                    u64be(out, duration);
                    out.extend_from_slice(&media_time.to_be_bytes());
                } else {
                    u32be(out, duration as u32);
                    out.extend_from_slice(&(media_time as i32).to_be_bytes());
                }
                u16be(out, 1); // media_rate_integer
                u16be(out, 0);
            }
        });
    });
}

fn stbl(out: &mut Vec<u8>, t: &Finished, base: u64, co64: bool) {
    let b = &t.build;
    boxed(out, b"stbl", |out| {
        full_box(out, b"stsd", 0, 0, |out| {
            u32be(out, 1);
            sample_entry(out, t);
        });
        full_box(out, b"stts", 0, 0, |out| {
            u32be(out, b.stts.entries);
            out.extend_from_slice(&b.stts.bytes);
        });
        if b.any_cts {
            full_box(out, b"ctts", 0, 0, |out| {
                u32be(out, b.ctts.entries);
                out.extend_from_slice(&b.ctts.bytes);
            });
        }
        if !b.all_sync {
            full_box(out, b"stss", 0, 0, |out| {
                u32be(out, b.stss_entries);
                out.extend_from_slice(&b.stss);
            });
        }
        full_box(out, b"stsc", 0, 0, |out| {
            u32be(out, b.stsc_entries);
            out.extend_from_slice(&b.stsc);
        });
        full_box(out, b"stsz", 0, 0, |out| {
            u32be(out, 0);
            u32be(out, b.samples);
            out.extend_from_slice(&b.stsz);
        });
        let fourcc = if co64 { b"co64" } else { b"stco" };
        full_box(out, fourcc, 0, 0, |out| {
            u32be(out, b.chunk_offsets.len() as u32);
            for &offset in &b.chunk_offsets {
                if co64 {
                    u64be(out, base + offset);
                } else {
                    u32be(out, (base + offset) as u32);
                }
            }
        });
    });
}

fn sample_entry(out: &mut Vec<u8>, t: &Finished) {
    match t.build.entry {
        SampleEntry::Video {
            fourcc,
            config_fourcc,
            record,
            width,
            height,
        } => boxed(out, fourcc, |out| {
            out.extend_from_slice(&[0; 6]);
            u16be(out, 1); // data_reference_index
            out.extend_from_slice(&[0; 16]);
            u16be(out, width.min(0xffff) as u16);
            u16be(out, height.min(0xffff) as u16);
            u32be(out, 0x0048_0000); // 72 dpi
            u32be(out, 0x0048_0000);
            u32be(out, 0);
            u16be(out, 1); // frame_count
            out.extend_from_slice(&[0; 32]); // compressorname
            u16be(out, 0x0018); // depth
            u16be(out, 0xffff); // pre_defined -1
            boxed(out, config_fourcc, |out| out.extend_from_slice(record));
        }),
        SampleEntry::Aac {
            asc,
            sample_rate,
            channels,
        } => boxed(out, b"mp4a", |out| {
            out.extend_from_slice(&[0; 6]);
            u16be(out, 1); // data_reference_index
            out.extend_from_slice(&[0; 8]);
            u16be(
                out,
                if channels == 0 {
                    2
                } else {
                    u16::from(channels)
                },
            );
            u16be(out, 16); // samplesize
            u16be(out, 0);
            u16be(out, 0);
            u32be(
                out,
                if sample_rate <= 0xffff {
                    sample_rate << 16
                } else {
                    0
                },
            );
            full_box(out, b"esds", 0, 0, |out| {
                descriptor(out, 0x03, |out| {
                    u16be(out, t.id as u16); // ES_ID
                    out.push(0); // no dependency, URL or OCR stream
                    descriptor(out, 0x04, |out| {
                        out.push(0x40); // objectTypeIndication: MPEG-4 audio
                        out.push((5 << 2) | 1); // streamType audio, reserved bit
                        let buffer = t.build.max_size.min(0xff_ffff);
                        out.extend_from_slice(&buffer.to_be_bytes()[1..]);
                        u32be(out, t.max_bitrate);
                        u32be(out, t.avg_bitrate);
                        descriptor(out, 0x05, |out| out.extend_from_slice(asc));
                    });
                    descriptor(out, 0x06, |out| out.push(0x02));
                });
            });
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::aac::AacConfig;
    use crate::media::avc::tests::{hex, AVCC_1080};
    use crate::media::avc::AvcConfig;
    use crate::media::hevc::HevcConfig;

    const ASC_LC_44100_STEREO: [u8; 2] = [0x12, 0x10];
    const FRAME: Ticks = 3600; // 25 fps

    /// x265 `testsrc=size=1920x1080` as an MP4 `hvcC` (from `media::hevc`'s tests).
    const HVCC_1080: &str = "01016000000090000000000078f000fcfdf8f800000f03a00001001840010c01\
        ffff016000000300900000030000030078959809a10001002a42010101600000030090000003000003\
        0078a003c08010e596566924caf0168080000003008000000c84a2000100074401c172b46240";

    fn avc() -> CodecParams {
        CodecParams::H264(AvcConfig::parse(&hex(AVCC_1080)).unwrap())
    }

    fn aac() -> CodecParams {
        CodecParams::Aac(AacConfig::parse(&ASC_LC_44100_STEREO).unwrap())
    }

    fn av_tracks() -> Tracks {
        Tracks {
            video: Some(avc()),
            audio: Some(aac()),
        }
    }

    fn audio_only() -> Tracks {
        Tracks {
            video: None,
            audio: Some(aac()),
        }
    }

    /// Composition offset (in frames) of the `k`-th picture in decode order of an
    /// I P B B P B B ... stream whose pts are (display index + 1) frames: 1 for the
    /// I frame, 3 for each P, 0 for each B.
    fn cts_frames(k: i64, gop: i64) -> i64 {
        let k = k % gop;
        if k == 0 {
            1
        } else if k % 3 == 1 {
            3
        } else {
            0
        }
    }

    /// Video at 25 fps with B-frames starting at `video_start`, AAC 44.1 kHz frames
    /// starting at `audio_start`, interleaved by dts (audio first on ties), for `seconds`.
    fn av_samples(video_start: Ticks, audio_start: Ticks, seconds: i64) -> Vec<SampleMeta> {
        av_samples_sized(
            video_start,
            audio_start,
            seconds,
            |k| 1000 + (k % 7) as u32,
            300,
        )
    }

    fn av_samples_sized(
        video_start: Ticks,
        audio_start: Ticks,
        seconds: i64,
        video_size: impl Fn(i64) -> u32,
        audio_size: u32,
    ) -> Vec<SampleMeta> {
        let gop = 25;
        let n_video = seconds * 25;
        let n_audio = seconds * 44_100 / 1024;
        let video = (0..n_video).map(|k| SampleMeta {
            kind: TrackKind::Video,
            dts: video_start + k * FRAME,
            cts: (cts_frames(k, gop) * FRAME) as i32,
            keyframe: k % gop == 0,
            size: video_size(k),
        });
        let audio = (0..n_audio).map(|k| SampleMeta {
            kind: TrackKind::Audio,
            dts: audio_start + k * 1024 * 90_000 / 44_100,
            cts: 0,
            keyframe: true,
            size: audio_size,
        });
        let mut all: Vec<SampleMeta> = video.chain(audio).collect();
        all.sort_by_key(|s| (s.dts, s.kind == TrackKind::Video));
        all
    }

    // ---- a small box walker ----

    /// (type, offset of the box, header length, total size) of the boxes in `buf`;
    /// the last box may extend past `buf` (the `mdat` of a header).
    fn boxes(buf: &[u8]) -> Vec<([u8; 4], usize, usize, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= buf.len() {
            let size = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as u64;
            let fourcc: [u8; 4] = buf[at + 4..at + 8].try_into().unwrap();
            let (size, header) = if size == 1 {
                (
                    u64::from_be_bytes(buf[at + 8..at + 16].try_into().unwrap()),
                    16,
                )
            } else {
                (size, 8)
            };
            assert!(size >= header as u64, "box {:?} of size {size}", fourcc);
            out.push((fourcc, at, header, size));
            at += size as usize;
        }
        out
    }

    /// The bodies of every box at `path` (e.g. `["moov", "trak", "tkhd"]`) in `buf`.
    fn find<'a>(buf: &'a [u8], path: &[&str]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        for (fourcc, at, header, size) in boxes(buf) {
            if &fourcc[..] != path[0].as_bytes() {
                continue;
            }
            let end = (at as u64 + size).min(buf.len() as u64) as usize;
            let body = &buf[at + header..end];
            if path.len() == 1 {
                out.push(body);
            } else {
                out.extend(find(body, &path[1..]));
            }
        }
        out
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn be64(b: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Entries of a full box table whose entry count follows the version/flags.
    fn table(body: &[u8], words: usize) -> Vec<Vec<u32>> {
        let n = be32(body, 4) as usize;
        assert_eq!(body.len(), 8 + n * words * 4, "table length");
        (0..n)
            .map(|i| {
                (0..words)
                    .map(|w| be32(body, 8 + (i * words + w) * 4))
                    .collect()
            })
            .collect()
    }

    /// The `stbl` of each track, in `moov` order.
    fn stbls(header: &[u8]) -> Vec<&[u8]> {
        find(header, &["moov", "trak", "mdia", "minf", "stbl"])
    }

    fn sizes_of(stbl: &[u8]) -> Vec<u32> {
        let stsz = find(stbl, &["stsz"])[0];
        assert_eq!(be32(stsz, 4), 0, "stsz sample_size");
        let n = be32(stsz, 8) as usize;
        (0..n).map(|i| be32(stsz, 12 + 4 * i)).collect()
    }

    fn chunk_offsets(stbl: &[u8]) -> Vec<u64> {
        if let Some(stco) = find(stbl, &["stco"]).first() {
            table(stco, 1).iter().map(|e| u64::from(e[0])).collect()
        } else {
            let co64 = find(stbl, &["co64"])[0];
            let n = be32(co64, 4) as usize;
            (0..n).map(|i| be64(co64, 8 + 8 * i)).collect()
        }
    }

    /// Expands `stsc` to the number of samples in each of `chunks` chunks.
    fn samples_per_chunk(stbl: &[u8], chunks: usize) -> Vec<u32> {
        let stsc = table(find(stbl, &["stsc"])[0], 3);
        (1..=chunks as u32)
            .map(|c| stsc.iter().rfind(|e| e[0] <= c).map(|e| e[1]).unwrap())
            .collect()
    }

    fn expand(runs: &[Vec<u32>]) -> Vec<u32> {
        runs.iter()
            .flat_map(|e| std::iter::repeat_n(e[1], e[0] as usize))
            .collect()
    }

    fn elst(trak: &[u8]) -> Option<Vec<(i64, i64)>> {
        let body = *find(trak, &["edts", "elst"]).first()?;
        let v1 = body[0] == 1;
        let n = be32(body, 4) as usize;
        Some(
            (0..n)
                .map(|i| {
                    if v1 {
                        let at = 8 + i * 20;
                        (be64(body, at) as i64, be64(body, at + 8) as i64)
                    } else {
                        let at = 8 + i * 12;
                        (be32(body, at) as i64, be32(body, at + 4) as i32 as i64)
                    }
                })
                .collect(),
        )
    }

    /// Reference check of one track's tables against its samples and the file layout.
    fn check_track(layout: &Mp4Layout, stbl: &[u8], samples: &[SampleMeta], kind: TrackKind) {
        let header = layout.header();
        let own: Vec<&SampleMeta> = samples.iter().filter(|s| s.kind == kind).collect();
        // stsz
        let sizes = sizes_of(stbl);
        assert_eq!(sizes, own.iter().map(|s| s.size).collect::<Vec<_>>());
        // chunks: every run of this track starts a chunk at its payload offset
        let mut expected_offsets = Vec::new();
        let mut expected_counts = Vec::new();
        let mut offset = header.len() as u64;
        let mut previous = None;
        for s in samples {
            if s.kind == kind {
                if previous != Some(kind) {
                    expected_offsets.push(offset);
                    expected_counts.push(0);
                }
                *expected_counts.last_mut().unwrap() += 1;
            }
            offset += u64::from(s.size);
            previous = Some(s.kind);
        }
        assert_eq!(offset, layout.total_len());
        let offsets = chunk_offsets(stbl);
        assert_eq!(offsets, expected_offsets);
        assert_eq!(samples_per_chunk(stbl, offsets.len()), expected_counts);
        // stss
        let keyframes: Vec<u32> = own
            .iter()
            .enumerate()
            .filter(|(_, s)| s.keyframe)
            .map(|(i, _)| i as u32 + 1)
            .collect();
        match find(stbl, &["stss"]).first() {
            Some(stss) => {
                let listed: Vec<u32> = table(stss, 1).iter().map(|e| e[0]).collect();
                assert_eq!(listed, keyframes);
            }
            None => assert_eq!(keyframes.len(), own.len(), "no stss but not all sync"),
        }
        // ctts iff some cts != 0, and then equal to them
        let ctts = find(stbl, &["ctts"]);
        if own.iter().any(|s| s.cts != 0) {
            let offsets = expand(&table(ctts[0], 2));
            assert_eq!(
                offsets,
                own.iter().map(|s| s.cts as u32).collect::<Vec<_>>()
            );
        } else {
            assert!(ctts.is_empty(), "ctts without composition offsets");
        }
    }

    #[test]
    fn av_layout_tables_offsets_and_edit_list() {
        let samples = av_samples(900_000, 900_000, 3);
        let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
        let header = layout.header();

        let top = boxes(header);
        let names: Vec<&[u8]> = top.iter().map(|b| &b.0[..]).collect();
        assert_eq!(names, [&b"ftyp"[..], b"moov", b"mdat"]);
        let ftyp = find(header, &["ftyp"])[0];
        assert_eq!(ftyp, b"isom\0\0\x02\0isomiso2avc1mp41");
        let payload: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
        let (_, mdat_at, mdat_header, mdat_size) = top[2];
        assert_eq!(mdat_header, 8);
        assert_eq!(mdat_at + 8, header.len());
        assert_eq!(mdat_size, payload + 8);
        assert_eq!(layout.total_len(), header.len() as u64 + payload);

        let traks = find(header, &["moov", "trak"]);
        assert_eq!(traks.len(), 2);
        let hdlrs: Vec<&[u8]> = find(header, &["moov", "trak", "mdia", "hdlr"])
            .iter()
            .map(|h| &h[8..12])
            .collect();
        assert_eq!(hdlrs, [&b"vide"[..], b"soun"]);
        let tkhds = find(header, &["moov", "trak", "tkhd"]);
        assert_eq!((be32(tkhds[0], 12), be32(tkhds[1], 12)), (1, 2));
        assert_eq!(be32(tkhds[0], 76), 1920 << 16);
        assert_eq!(be32(tkhds[0], 80), 1080 << 16);
        let mvhd = find(header, &["moov", "mvhd"])[0];
        assert_eq!(be32(mvhd, 12), 1000);
        assert_eq!(be32(mvhd, 96), 3, "next_track_ID");

        let stbl = stbls(header);
        check_track(&layout, stbl[0], &samples, TrackKind::Video);
        check_track(&layout, stbl[1], &samples, TrackKind::Audio);
        assert!(!find(stbl[0], &["ctts"]).is_empty());

        // Sample entries carry the configuration records as they are.
        let stsd = find(stbl[0], &["stsd"])[0];
        let avc1 = &stsd[8..];
        assert_eq!(&avc1[4..8], b"avc1");
        assert_eq!(&avc1[8 + 24..8 + 28], &[0x07, 0x80, 0x04, 0x38]);
        let avcc = find(&avc1[8 + 78..], &["avcC"])[0];
        assert_eq!(avcc, &hex(AVCC_1080)[..]);
        let stsd = find(stbl[1], &["stsd"])[0];
        let mp4a = &stsd[8..];
        assert_eq!(&mp4a[4..8], b"mp4a");
        assert_eq!(be32(mp4a, 8 + 24), 44_100 << 16);
        let esds = find(&mp4a[8 + 28..], &["esds"])[0];
        let asc_at = esds
            .windows(5)
            .position(|w| w == [0x05, 0x80, 0x80, 0x80, 0x02])
            .unwrap();
        assert_eq!(esds[asc_at + 5..asc_at + 7], ASC_LC_44100_STEREO);
        assert!(esds.windows(2).any(|w| w == [0x40, 0x15]));

        // Video stts: a frame each, summing to the duration (video is longest).
        let video_stts = expand(&table(find(stbl[0], &["stts"])[0], 2));
        assert_eq!(video_stts.len(), 75);
        assert!(video_stts.iter().all(|&d| d == FRAME as u32));
        let video_total: u64 = video_stts.iter().map(|&d| u64::from(d)).sum();
        assert_eq!(video_total as i64, layout.duration());
        assert_eq!(be32(mvhd, 16) as i64, (layout.duration() + 45) / 90);
        // Audio stts: 44.1 kHz deltas around 1024 that never drift.
        let audio_stts = expand(&table(find(stbl[1], &["stts"])[0], 2));
        let n_audio = audio_stts.len() as u64;
        assert!(audio_stts.iter().all(|&d| (1023..=1025).contains(&d)));
        let audio_total: u64 = audio_stts.iter().map(|&d| u64::from(d)).sum();
        assert!(audio_total.abs_diff(n_audio * 1024) <= 1, "{audio_total}");
        let mdhd = find(traks[1], &["mdia", "mdhd"])[0];
        assert_eq!(be32(mdhd, 12), 44_100);
        assert_eq!(u64::from(be32(mdhd, 16)), audio_total);

        // Video starts with a composition offset: edit list skips it; audio needs none.
        assert_eq!(samples[1].kind, TrackKind::Video);
        assert_eq!(elst(traks[0]), Some(vec![(3000, samples[1].cts as i64)]));
        assert_eq!(elst(traks[1]), None);
    }

    #[test]
    fn later_track_gets_an_empty_edit_and_no_cts_means_no_ctts_or_elst() {
        // Video without B-frames, starting 0.5 s after the audio.
        let mut samples = av_samples(450_000 + 45_000, 450_000, 2);
        for s in &mut samples {
            s.cts = 0;
        }
        // 35 pictures (1.4 s from 0.5 s) and 82 audio frames (1.904 s).
        samples.retain(|s| s.dts < 450_000 + 171_000);
        let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
        let header = layout.header();
        let stbl = stbls(header);
        check_track(&layout, stbl[0], &samples, TrackKind::Video);
        check_track(&layout, stbl[1], &samples, TrackKind::Audio);
        let traks = find(header, &["moov", "trak"]);
        assert_eq!(elst(traks[0]), Some(vec![(500, -1), (1400, 0)]));
        assert_eq!(elst(traks[1]), None);
        assert_eq!(
            layout.duration(),
            rescale_nearest(82 * 1024, 44_100, 90_000)
        );
        let tkhds = find(header, &["moov", "trak", "tkhd"]);
        assert_eq!((be32(tkhds[0], 20), be32(tkhds[1], 20)), (1900, 1904));
    }

    #[test]
    fn hevc_uses_hvc1_and_hvcc() {
        let tracks = Tracks {
            video: Some(CodecParams::H265(
                HevcConfig::parse(&hex(HVCC_1080)).unwrap(),
            )),
            audio: None,
        };
        let samples: Vec<SampleMeta> = av_samples(0, 0, 1)
            .into_iter()
            .filter(|s| s.kind == TrackKind::Video)
            .collect();
        let layout = Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).unwrap();
        let header = layout.header();
        assert_eq!(find(header, &["ftyp"])[0], b"isom\0\0\x02\0isomiso2mp41");
        let stbl = stbls(header);
        assert_eq!(stbl.len(), 1);
        let stsd = find(stbl[0], &["stsd"])[0];
        assert_eq!(&stsd[12..16], b"hvc1");
        assert_eq!(find(&stsd[8 + 8 + 78..], &["hvcC"])[0], &hex(HVCC_1080)[..]);
        check_track(&layout, stbl[0], &samples, TrackKind::Video);
    }

    #[test]
    fn two_hour_8_mbps_file_uses_co64_and_largesize() {
        // 25 fps pictures of ~40 KB and 44.1 kHz AAC frames of 372 bytes: ~7.2 GB.
        let samples = av_samples_sized(
            0,
            0,
            2 * 3600,
            |k| {
                if k % 25 == 0 {
                    120_000
                } else {
                    36_600 + (k % 5) as u32
                }
            },
            372,
        );
        let payload: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
        assert!(payload > 7_000_000_000, "{payload}");
        let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
        let header = layout.header();
        assert_eq!(layout.total_len(), header.len() as u64 + payload);

        let top = boxes(header);
        let (fourcc, at, mdat_header, size) = top[2];
        assert_eq!(&fourcc, b"mdat");
        assert_eq!(mdat_header, 16);
        assert_eq!(be32(header, at), 1, "size field 1 announces largesize");
        assert_eq!(size, payload + 16);
        assert_eq!(at + 16, header.len());

        let stbl = stbls(header);
        for (s, kind) in stbl.iter().zip([TrackKind::Video, TrackKind::Audio]) {
            assert!(find(s, &["stco"]).is_empty());
            assert_eq!(find(s, &["co64"]).len(), 1);
            check_track(&layout, s, &samples, kind);
        }
        // The file starts with an audio frame, then the first picture.
        assert_eq!(chunk_offsets(stbl[1])[0], header.len() as u64);
        let video = chunk_offsets(stbl[0]);
        assert_eq!(video[0], header.len() as u64 + 372);
        assert!(*video.last().unwrap() > u64::from(u32::MAX));
        // 2 h fits 32-bit durations everywhere: version 0 boxes.
        assert_eq!(find(header, &["moov", "mvhd"])[0][0], 0);
        assert_eq!(layout.duration(), 2 * 3600 * 90_000);
    }

    #[test]
    fn durations_past_32_bits_use_version_1() {
        // 14 h at 1 fps: the 90 kHz mdhd duration passes u32::MAX (13.25 h).
        let samples: Vec<SampleMeta> = (0..14 * 3600)
            .map(|k| SampleMeta {
                kind: TrackKind::Video,
                dts: k * 90_000,
                cts: 0,
                keyframe: true,
                size: 10,
            })
            .collect();
        let tracks = Tracks {
            video: Some(avc()),
            audio: None,
        };
        let layout = Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).unwrap();
        let header = layout.header();
        let mdhd = find(header, &["moov", "trak", "mdia", "mdhd"])[0];
        assert_eq!(mdhd[0], 1);
        assert_eq!(be32(mdhd, 20), 90_000);
        assert_eq!(be64(mdhd, 24), 14 * 3600 * 90_000);
        // In milliseconds 14 h still fits: mvhd and tkhd stay version 0.
        let mvhd = find(header, &["moov", "mvhd"])[0];
        assert_eq!((mvhd[0], be32(mvhd, 16)), (0, 14 * 3600 * 1000));
        assert_eq!(find(header, &["moov", "trak", "tkhd"])[0][0], 0);
        assert!(find(stbls(header)[0], &["stss"]).is_empty(), "all sync");
    }

    #[test]
    fn m4a_is_one_sound_track_with_its_brand() {
        let samples: Vec<SampleMeta> = av_samples(0, 123_456, 2)
            .into_iter()
            .filter(|s| s.kind == TrackKind::Audio)
            .collect();
        // tracks.video is ignored for M4A.
        let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::M4a).unwrap();
        let header = layout.header();
        assert_eq!(find(header, &["ftyp"])[0], b"M4A \0\0\x02\0M4A mp42isom");
        let traks = find(header, &["moov", "trak"]);
        assert_eq!(traks.len(), 1);
        assert_eq!(&find(traks[0], &["mdia", "hdlr"])[0][8..12], b"soun");
        assert_eq!(find(traks[0], &["mdia", "minf", "smhd"]).len(), 1);
        assert_eq!(be32(find(traks[0], &["tkhd"])[0], 12), 1);
        assert_eq!(be32(find(header, &["moov", "mvhd"])[0], 96), 2);
        assert_eq!(elst(traks[0]), None);
        let stbl = stbls(header);
        check_track(&layout, stbl[0], &samples, TrackKind::Audio);
        // One run of samples: one chunk.
        assert_eq!(chunk_offsets(stbl[0]), vec![header.len() as u64]);
        // 86 frames of 1024 samples at 44.1 kHz.
        assert_eq!(
            layout.duration(),
            rescale_nearest(86 * 1024, 44_100, 90_000)
        );
    }

    #[test]
    fn errors() {
        let samples = av_samples(0, 0, 1);
        // Video samples in an M4A.
        assert_eq!(
            Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::M4a),
            Err(MuxError::NoSuchTrack {
                kind: TrackKind::Video
            })
        );
        // Audio samples but no audio track.
        let video_only = Tracks {
            video: Some(avc()),
            audio: None,
        };
        assert_eq!(
            Mp4Layout::plan(&video_only, &samples, Mp4Brand::Mp4),
            Err(MuxError::NoSuchTrack {
                kind: TrackKind::Audio
            })
        );
        // No samples, no tracks.
        assert_eq!(
            Mp4Layout::plan(&av_tracks(), &[], Mp4Brand::Mp4),
            Err(MuxError::NoTracks)
        );
        assert_eq!(
            Mp4Layout::plan(&Tracks::default(), &samples, Mp4Brand::Mp4),
            Err(MuxError::NoTracks)
        );
        assert_eq!(
            Mp4Layout::plan(&audio_only(), &[], Mp4Brand::M4a),
            Err(MuxError::NoTracks)
        );
        // Codec in the wrong slot.
        let wrong = Tracks {
            video: Some(aac()),
            audio: Some(avc()),
        };
        assert!(matches!(
            Mp4Layout::plan(&wrong, &samples, Mp4Brand::Mp4),
            Err(MuxError::UnsupportedCodec {
                container: "mp4",
                kind: TrackKind::Video,
                codec: "aac"
            })
        ));
        // dts going back within a track (across tracks is fine).
        let mut back = samples.clone();
        let last_video = back
            .iter()
            .rposition(|s| s.kind == TrackKind::Video)
            .unwrap();
        back[last_video].dts = 0;
        assert!(matches!(
            Mp4Layout::plan(&av_tracks(), &back, Mp4Brand::Mp4),
            Err(MuxError::BadFrame {
                kind: TrackKind::Video,
                dts: 0,
                ..
            })
        ));
        let mut negative = samples.clone();
        negative[1].cts = -1;
        assert!(matches!(
            Mp4Layout::plan(&av_tracks(), &negative, Mp4Brand::Mp4),
            Err(MuxError::BadFrame { .. })
        ));
    }

    // ---- ffprobe ----

    fn ffprobe_available() -> bool {
        std::process::Command::new("ffprobe")
            .arg("-version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Writes header + payloads: video access units are one length-prefixed NAL unit of
    /// the right type (contents junk), audio frames junk bytes. Nothing here decodes;
    /// `-show_packets` only demuxes.
    fn write_file(path: &std::path::Path, layout: &Mp4Layout, samples: &[SampleMeta]) {
        let mut file = layout.header().to_vec();
        for s in samples {
            let start = file.len();
            file.resize(start + s.size as usize, 0x5a);
            if s.kind == TrackKind::Video {
                file[start..start + 4].copy_from_slice(&(s.size - 4).to_be_bytes());
                file[start + 4] = if s.keyframe { 0x65 } else { 0x41 };
            }
        }
        assert_eq!(file.len() as u64, layout.total_len());
        std::fs::write(path, file).unwrap();
    }

    fn probe(path: &std::path::Path) -> serde_json::Value {
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_format",
                "-show_streams",
                "-show_packets",
            ])
            .args(["-of", "json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn number(v: &serde_json::Value) -> f64 {
        match v {
            serde_json::Value::String(s) => s.parse().unwrap(),
            other => other.as_f64().unwrap(),
        }
    }

    #[test]
    fn ffprobe_reads_packets_timestamps_and_start_times() {
        if !ffprobe_available() {
            eprintln!("ffprobe not on PATH: skipping the ffprobe check of MP4 files");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Audio starts 20 ms after the video's first dts; video has B-frames.
        let base = 5 * 90_000;
        let samples = av_samples(base, base + 1800, 4);
        let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
        let path = dir.path().join("av.mp4");
        write_file(&path, &layout, &samples);
        let json = probe(&path);

        let streams = json["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0]["codec_name"], "h264");
        assert_eq!(streams[0]["width"], 1920);
        assert_eq!(streams[1]["codec_name"], "aac");
        assert_eq!(streams[1]["sample_rate"], "44100");
        assert_eq!(streams[1]["channels"], 2);
        let video: Vec<&SampleMeta> = samples
            .iter()
            .filter(|s| s.kind == TrackKind::Video)
            .collect();
        let audio: Vec<&SampleMeta> = samples
            .iter()
            .filter(|s| s.kind == TrackKind::Audio)
            .collect();
        assert_eq!(number(&streams[0]["nb_frames"]) as usize, video.len());
        assert_eq!(number(&streams[1]["nb_frames"]) as usize, audio.len());

        let packets = json["packets"].as_array().unwrap();
        let of = |index: i64| -> Vec<(i64, i64, u64)> {
            packets
                .iter()
                .filter(|p| p["stream_index"] == index)
                .map(|p| {
                    (
                        p["pts"].as_i64().unwrap(),
                        p["dts"].as_i64().unwrap(),
                        number(&p["size"]) as u64,
                    )
                })
                .collect()
        };
        // Video, time base 1/90000: the edit list moves the first pts (first cts) to 0.
        let first_cts = i64::from(video[0].cts);
        let expected: Vec<(i64, i64, u64)> = video
            .iter()
            .map(|s| {
                let dts = s.dts - base - first_cts;
                (dts + i64::from(s.cts), dts, u64::from(s.size))
            })
            .collect();
        assert_eq!(of(0), expected);
        // Audio, time base 1/44100: 20 ms of empty edit, then the rescaled dts.
        let empty = rescale_nearest(20, 1000, 44_100);
        let expected: Vec<(i64, i64, u64)> = audio
            .iter()
            .map(|s| {
                let t = empty + rescale_nearest(s.dts - base - 1800, 90_000, 44_100);
                (t, t, u64::from(s.size))
            })
            .collect();
        assert_eq!(of(1), expected);

        let video_start = number(&streams[0]["start_time"]);
        let audio_start = number(&streams[1]["start_time"]);
        assert!(video_start.abs() < 1e-9, "{video_start}");
        assert!((audio_start - video_start).abs() < 0.04, "{audio_start}");
        let duration = number(&json["format"]["duration"]);
        let expected = layout.duration() as f64 / 90_000.0;
        assert!(
            (duration - expected).abs() <= 0.001,
            "{duration} vs {expected}"
        );
        assert!((expected - 4.0).abs() < 0.05, "{expected}");

        // And the M4A of the same audio.
        let audio_samples: Vec<SampleMeta> = audio.iter().map(|s| **s).collect();
        let layout = Mp4Layout::plan(&audio_only(), &audio_samples, Mp4Brand::M4a).unwrap();
        let path = dir.path().join("a.m4a");
        write_file(&path, &layout, &audio_samples);
        let json = probe(&path);
        let streams = json["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0]["codec_name"], "aac");
        assert_eq!(json["format"]["tags"]["major_brand"], "M4A ");
        assert_eq!(number(&streams[0]["start_time"]), 0.0);
        assert_eq!(
            json["packets"].as_array().unwrap().len(),
            audio_samples.len()
        );
        let duration = number(&json["format"]["duration"]);
        let expected = layout.duration() as f64 / 90_000.0;
        assert!(
            (duration - expected).abs() <= 0.001,
            "{duration} vs {expected}"
        );
    }

    fn run(program: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap()
    }

    /// The video frames of `path` as decoded by ffmpeg: one MD5 per frame.
    fn decoded_video_md5s(path: &str) -> Vec<String> {
        let out = run(
            "ffmpeg",
            &[
                "-v", "error", "-i", path, "-map", "0:v", "-f", "framemd5", "-",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
            .collect()
    }

    #[test]
    fn ffmpeg_decodes_a_remux_of_a_real_encode() {
        if !ffprobe_available() || !run("ffmpeg", &["-version"]).status.success() {
            eprintln!("ffmpeg/ffprobe not on PATH: skipping the MP4 decode check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.mp4");
        let source = source.to_str().unwrap();
        let out = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-f",
                "lavfi",
                "-i",
                "sine=sample_rate=44100",
                "-t",
                "2",
                "-c:v",
                "libx264",
                "-bf",
                "2",
                "-g",
                "25",
                "-c:a",
                "aac",
                source,
            ],
        );
        if !out.status.success() {
            eprintln!(
                "ffmpeg cannot encode H.264/AAC here, skipping: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let src = std::fs::read(source).unwrap();
        // Configuration records from the source's sample entries.
        let stsds = find(&src, &["moov", "trak", "mdia", "minf", "stbl", "stsd"]);
        let avc1 = &stsds[0][8..];
        assert_eq!(&avc1[4..8], b"avc1");
        let record = find(&avc1[8 + 78..], &["avcC"])[0];
        let mp4a = &stsds[1][8..];
        assert_eq!(&mp4a[4..8], b"mp4a");
        let esds = find(&mp4a[8 + 28..], &["esds"])[0];
        let at = esds
            .windows(4)
            .position(|w| w == [0x05, 0x80, 0x80, 0x80])
            .unwrap();
        let asc = &esds[at + 5..at + 5 + esds[at + 4] as usize];
        let tracks = Tracks {
            video: Some(CodecParams::H264(AvcConfig::parse(record).unwrap())),
            audio: Some(CodecParams::Aac(AacConfig::parse(asc).unwrap())),
        };

        // Its packets, in file order, as SampleMeta with 90 kHz times.
        let json = probe(std::path::Path::new(source));
        let time_base: Vec<i64> = json["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let tb = s["time_base"].as_str().unwrap();
                tb.split('/').nth(1).unwrap().parse().unwrap()
            })
            .collect();
        let mut packets: Vec<(u64, SampleMeta)> = json["packets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let index = p["stream_index"].as_u64().unwrap() as usize;
                let hz = time_base[index];
                let dts = p["dts"].as_i64().unwrap();
                let pts = p["pts"].as_i64().unwrap();
                let meta = SampleMeta {
                    kind: if index == 0 {
                        TrackKind::Video
                    } else {
                        TrackKind::Audio
                    },
                    dts: crate::media::rescale(dts, hz, 90_000),
                    cts: (crate::media::rescale(pts, hz, 90_000)
                        - crate::media::rescale(dts, hz, 90_000)) as i32,
                    keyframe: p["flags"].as_str().unwrap().contains('K'),
                    size: number(&p["size"]) as u32,
                };
                (number(&p["pos"]) as u64, meta)
            })
            .collect();
        packets.sort_by_key(|p| p.0);
        let samples: Vec<SampleMeta> = packets.iter().map(|p| p.1).collect();
        assert!(samples.iter().any(|s| s.cts > 0), "the encode has B-frames");

        let layout = Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).unwrap();
        let mut file = layout.header().to_vec();
        for (pos, s) in &packets {
            file.extend_from_slice(&src[*pos as usize..*pos as usize + s.size as usize]);
        }
        assert_eq!(file.len() as u64, layout.total_len());
        let ours = dir.path().join("ours.mp4");
        std::fs::write(&ours, &file).unwrap();
        let ours = ours.to_str().unwrap();

        // Every picture decodes to the same image as from the source, without errors.
        let expected = decoded_video_md5s(source);
        assert_eq!(expected.len(), 50);
        assert_eq!(decoded_video_md5s(ours), expected);
        // And the audio decodes cleanly too.
        let out = run(
            "ffmpeg",
            &["-v", "error", "-i", ours, "-map", "0:a", "-f", "null", "-"],
        );
        assert!(out.status.success() && out.stderr.is_empty());
    }
}
