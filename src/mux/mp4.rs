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
//! - Time: the file's zero is the earliest presentation time of any track. Each track's
//!   media time starts at its own first dts; its media edit starts at its earliest
//!   presentation time (`media_time` = the first composition offset, for video with
//!   B-frames), after an empty edit of the time from the file's zero to that presentation
//!   time. Audio and video are therefore presented exactly as the source timed them
//!   relative to each other, and ffprobe's `start_time` of each stream is its first
//!   presentation time.
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
        // The file's time zero: the earliest presentation time of any track.
        let start = built
            .iter()
            .map(|t| t.min_pts_ticks)
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
    /// Earliest presentation time of the track (90 kHz, absolute).
    min_pts_ticks: Ticks,
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
            min_pts_ticks: Ticks::MAX,
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
        self.min_pts_ticks = self.min_pts_ticks.min(sample.dts + i64::from(sample.cts));
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

    /// Ends the tables; `start` is the earliest presentation time of the file (90 kHz).
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

        let empty_ticks = (self.min_pts_ticks - start).max(0);
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
#[path = "mp4_tests.rs"]
mod tests;
