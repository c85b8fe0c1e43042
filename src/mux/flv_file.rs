//! FLV files (Adobe FLV specification 10.1, annex E: header, tags and `onMetaData`; Enhanced
//! RTMP v1 for H.265 as `hvc1`) planned in one pass from [`SampleMeta`]s, as the derived-file
//! design of [`crate::mux`] asks: [`FlvLayout::plan`] computes every byte but the payloads,
//! so [`FlvLayout::header`] already carries an exact `onMetaData` (`filesize`, `duration`,
//! and a `keyframes` index of tag offsets for seeking, the yamdi/flvtool2 convention).
//!
//! Owns: the FLV byte layout (tag headers, codec headers, previous-tag sizes, metadata).
//! Never does IO, never sees a payload, never panics on the samples it is given.
//!
//! Layout: header (9 bytes), PreviousTagSize0, the `onMetaData` script tag, the sequence
//! header tags (video, then audio; timestamp 0), then one tag per sample in the order given.
//! Timestamps are milliseconds rebased so the earliest sample DTS is 0, rounded down; the
//! composition offset is the difference of the rounded PTS and DTS. Timestamps past 2^24 ms
//! use the extended byte (bits 24..31), and wrap at 2^32 ms as the format does.
//!
//! H.264 uses legacy codec id 7 (AVCPacketType, SI24 composition time); H.265 uses the
//! Enhanced RTMP header (`0x80 | FrameType << 4 | PacketType`, FourCC `hvc1`, CodedFrames
//! with an SI24 offset or CodedFramesX when it is 0), which ffmpeg reads from 6.1 on.
//! AAC tags start with `0xAF` (AAC, 44 kHz, 16-bit, stereo: the fixed values of the spec).
//!
//! Only tracks with at least one sample are written (flags, sequence header, metadata);
//! every track of [`Tracks`] must still be a codec FLV can carry.

use crate::media::{ticks_to_seconds, CodecParams, MediaError, Ticks, TrackKind, Tracks};
use crate::proto::rtmp::amf0::Value;

use super::{MuxError, SampleMeta};

const CONTAINER: &str = "flv";

/// FLV file header length (the `DataOffset` field).
pub const FILE_HEADER_LEN: usize = 9;
/// Tag header length (type, data size, timestamp, extended timestamp, stream id).
pub const TAG_HEADER_LEN: usize = 11;
/// PreviousTagSize field length.
pub const PREVIOUS_TAG_SIZE_LEN: usize = 4;

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// Legacy FLV CodecID of H.264.
pub const CODEC_ID_AVC: u8 = 7;
/// SoundFormat of AAC.
pub const SOUND_FORMAT_AAC: u8 = 10;
/// `hvc1` as the number Enhanced RTMP puts in `videocodecid`.
pub const FOURCC_HVC1: u32 = u32::from_be_bytes(*b"hvc1");

/// AAC, 44 kHz, 16-bit, stereo (the flags are fixed for AAC).
const AAC_BYTE0: u8 = 0xAF;
const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_INTER: u8 = 2;
const EX_HEADER: u8 = 0x80;
const PACKET_SEQUENCE_START: u8 = 0;
const PACKET_CODED_FRAMES: u8 = 1;
const PACKET_CODED_FRAMES_X: u8 = 3;
/// Largest tag body (24-bit DataSize).
const MAX_TAG_DATA: u64 = 0xFF_FFFF;
/// Largest SI24 composition time offset.
const MAX_CTS_MS: i64 = 0x7F_FFFF;
const TICKS_PER_MS: Ticks = crate::media::TICKS_PER_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    H264,
    H265,
}

/// What a sample's tag needs besides its payload.
#[derive(Debug, Clone, Copy)]
struct TagMeta {
    /// Rebased DTS in ms, modulo 2^32 (the tag timestamp with its extended byte).
    timestamp: u32,
    /// PTS - DTS in ms, 0..=2^23-1.
    cts_ms: i32,
    size: u32,
    kind: TrackKind,
    keyframe: bool,
}

/// The planned byte layout of one FLV file; see the module doc.
#[derive(Debug, Clone)]
pub struct FlvLayout {
    header: Vec<u8>,
    tags: Vec<TagMeta>,
    video: Option<VideoCodec>,
    total_len: u64,
    duration: Ticks,
}

/// The `onMetaData` inputs that do not depend on the final layout.
struct MetaInfo {
    duration_s: f64,
    video: Option<VideoMeta>,
    audio: Option<AudioMeta>,
    keyframe_times: Vec<f64>,
}

struct VideoMeta {
    codec_id: f64,
    resolution: Option<(u32, u32)>,
    framerate: Option<f64>,
}

struct AudioMeta {
    sample_rate: u32,
    stereo: bool,
}

impl FlvLayout {
    /// Plans an FLV file for `samples` (order = payload order).
    ///
    /// Errors: [`MuxError::NoTracks`] when `tracks` is empty or there are no samples;
    /// [`MuxError::NoSuchTrack`] for a sample of a track `tracks` lacks;
    /// [`MuxError::UnsupportedCodec`] for a track FLV cannot carry (video other than
    /// H.264/H.265, audio other than AAC); [`MuxError::BadFrame`] for a sample too large
    /// for a tag's 24-bit size.
    pub fn plan(tracks: &Tracks, samples: &[SampleMeta]) -> Result<FlvLayout, MuxError> {
        if tracks.is_empty() {
            return Err(MuxError::NoTracks);
        }
        let unsupported = |kind, codec: &CodecParams| MuxError::UnsupportedCodec {
            container: CONTAINER,
            kind,
            codec: codec.codec_name(),
        };
        let video_codec = match &tracks.video {
            None => None,
            Some(CodecParams::H264(_)) => Some(VideoCodec::H264),
            Some(CodecParams::H265(_)) => Some(VideoCodec::H265),
            Some(other) => return Err(unsupported(TrackKind::Video, other)),
        };
        let audio_config = match &tracks.audio {
            None => None,
            Some(CodecParams::Aac(c)) => Some(c),
            Some(other) => return Err(unsupported(TrackKind::Audio, other)),
        };
        let Some(base) = samples.iter().map(|s| s.dts).min() else {
            return Err(MuxError::NoTracks);
        };

        // Per-sample tags, per-track statistics.
        let mut tags = Vec::with_capacity(samples.len());
        let mut has_audio = false;
        let mut keyframe_times = Vec::new();
        let mut video_dts: Option<(Ticks, Ticks, u64)> = None; // min, max, count
        let mut video_end_pts: Ticks = base;
        let mut audio_end_dts: Ticks = base;
        for s in samples {
            if tracks.get(s.kind).is_none() {
                return Err(MuxError::NoSuchTrack { kind: s.kind });
            }
            let dts_ms = (s.dts - base).div_euclid(TICKS_PER_MS);
            let (cts_ms, keyframe) = match s.kind {
                TrackKind::Video => {
                    if s.keyframe {
                        keyframe_times.push(dts_ms as f64 / 1000.0);
                    }
                    let pts = s.dts.saturating_add(i64::from(s.cts.max(0)));
                    video_end_pts = video_end_pts.max(pts);
                    video_dts = Some(match video_dts {
                        None => (s.dts, s.dts, 1),
                        Some((min, max, n)) => (min.min(s.dts), max.max(s.dts), n + 1),
                    });
                    let pts_ms = (pts - base).div_euclid(TICKS_PER_MS);
                    ((pts_ms - dts_ms).clamp(0, MAX_CTS_MS) as i32, s.keyframe)
                }
                TrackKind::Audio => {
                    has_audio = true;
                    audio_end_dts = audio_end_dts.max(s.dts);
                    (0, true)
                }
            };
            let tag = TagMeta {
                timestamp: dts_ms as u32, // modulo 2^32: the format's wrap
                cts_ms,
                size: s.size,
                kind: s.kind,
                keyframe,
            };
            if u64::from(s.size) + codec_header_len(video_codec, &tag) as u64 > MAX_TAG_DATA {
                return Err(MuxError::BadFrame {
                    kind: s.kind,
                    dts: s.dts,
                    source: MediaError::Unsupported {
                        what: "flv tag",
                        detail: format!("{} byte frame exceeds the 24-bit tag size", s.size),
                    },
                });
            }
            tags.push(tag);
        }
        let video = video_codec.filter(|_| video_dts.is_some());
        let audio = audio_config.filter(|_| has_audio);

        // Duration: the end of the last frame of either track. A video frame lasts the
        // mean DTS step, an AAC frame its 1024 samples.
        let mut end = base;
        if let Some((first, last, n)) = video_dts {
            let step = if n > 1 {
                (last - first) / (n as i64 - 1)
            } else {
                0
            };
            end = end.max(video_end_pts + step);
        }
        if let Some(a) = audio {
            end = end.max(audio_end_dts + a.frame_ticks());
        }
        let duration = end - base;

        // Sequence header bodies.
        let mut sequence_headers: Vec<(TrackKind, Vec<u8>)> = Vec::new();
        match (video, &tracks.video) {
            (Some(VideoCodec::H264), Some(CodecParams::H264(c))) => {
                let mut body = vec![FRAME_TYPE_KEY << 4 | CODEC_ID_AVC, 0, 0, 0, 0];
                body.extend_from_slice(&c.record);
                sequence_headers.push((TrackKind::Video, body));
            }
            (Some(VideoCodec::H265), Some(CodecParams::H265(c))) => {
                let mut body = vec![EX_HEADER | FRAME_TYPE_KEY << 4 | PACKET_SEQUENCE_START];
                body.extend_from_slice(b"hvc1");
                body.extend_from_slice(&c.record);
                sequence_headers.push((TrackKind::Video, body));
            }
            _ => {}
        }
        if let Some(a) = audio {
            let mut body = vec![AAC_BYTE0, 0];
            body.extend_from_slice(&a.asc);
            sequence_headers.push((TrackKind::Audio, body));
        }
        for (kind, body) in &sequence_headers {
            if body.len() as u64 > MAX_TAG_DATA {
                return Err(MuxError::BadConfig {
                    kind: *kind,
                    source: MediaError::Unsupported {
                        what: "flv sequence header",
                        detail: format!("{} bytes exceed the 24-bit tag size", body.len()),
                    },
                });
            }
        }

        let info = MetaInfo {
            duration_s: ticks_to_seconds(duration),
            video: video.map(|codec| VideoMeta {
                codec_id: match codec {
                    VideoCodec::H264 => f64::from(CODEC_ID_AVC),
                    VideoCodec::H265 => f64::from(FOURCC_HVC1),
                },
                resolution: tracks.video.as_ref().and_then(CodecParams::resolution),
                framerate: video_dts.and_then(|(first, last, n)| {
                    (n > 1 && last > first).then(|| {
                        (n - 1) as f64 * crate::media::TICKS_PER_SECOND as f64
                            / (last - first) as f64
                    })
                }),
            }),
            audio: audio.map(|a| AudioMeta {
                sample_rate: a.sample_rate,
                stereo: a.channels == 2,
            }),
            keyframe_times,
        };

        // Pass 1: sizes with placeholder numbers (AMF0 numbers are always 9 bytes).
        let placeholder = metadata_body(&info, 0.0, &vec![0.0; info.keyframe_times.len()]);
        let header_len = FILE_HEADER_LEN
            + PREVIOUS_TAG_SIZE_LEN
            + TAG_HEADER_LEN
            + placeholder.len()
            + PREVIOUS_TAG_SIZE_LEN
            + sequence_headers
                .iter()
                .map(|(_, b)| TAG_HEADER_LEN + b.len() + PREVIOUS_TAG_SIZE_LEN)
                .sum::<usize>();
        let mut offset = header_len as u64;
        let mut positions = Vec::with_capacity(info.keyframe_times.len());
        for tag in &tags {
            if video.is_some() && tag.kind == TrackKind::Video && tag.keyframe {
                positions.push(offset as f64);
            }
            offset += (TAG_HEADER_LEN + codec_header_len(video, tag) + PREVIOUS_TAG_SIZE_LEN)
                as u64
                + u64::from(tag.size);
        }
        let total_len = offset;

        // Pass 2: the real metadata, same length.
        let meta = metadata_body(&info, total_len as f64, &positions);
        debug_assert_eq!(meta.len(), placeholder.len());

        let mut header = Vec::with_capacity(header_len);
        header.extend_from_slice(b"FLV");
        header.push(1);
        header
            .push(if audio.is_some() { 0x04 } else { 0 } | if video.is_some() { 0x01 } else { 0 });
        header.extend_from_slice(&(FILE_HEADER_LEN as u32).to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes());
        write_tag(&mut header, TAG_SCRIPT, 0, &meta);
        for (kind, body) in &sequence_headers {
            write_tag(&mut header, tag_type(*kind), 0, body);
        }
        debug_assert_eq!(header.len(), header_len);

        Ok(FlvLayout {
            header,
            tags,
            video,
            total_len,
            duration,
        })
    }

    /// FLV header + PreviousTagSize0 + onMetaData tag + sequence-header tags (video then
    /// audio): everything before the first sample's tag.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Exact file length.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Media duration in 90 kHz ticks: from the earliest DTS to the end of the last frame
    /// (the latest PTS plus the mean video frame step, or the last AAC frame's end).
    pub fn duration(&self) -> Ticks {
        self.duration
    }

    /// Number of samples planned.
    pub fn sample_count(&self) -> usize {
        self.tags.len()
    }

    /// Appends the bytes of sample `index`'s tag that come before its payload: the tag
    /// header and the codec header. Appends nothing for an index out of range.
    pub fn tag_prefix(&self, index: usize, out: &mut Vec<u8>) {
        let Some(tag) = self.tags.get(index) else {
            return;
        };
        let codec_len = codec_header_len(self.video, tag);
        write_tag_header(
            out,
            tag_type(tag.kind),
            codec_len as u32 + tag.size,
            tag.timestamp,
        );
        match tag.kind {
            TrackKind::Audio => out.extend_from_slice(&[AAC_BYTE0, 1]),
            TrackKind::Video => {
                let frame_type = if tag.keyframe {
                    FRAME_TYPE_KEY
                } else {
                    FRAME_TYPE_INTER
                };
                let cts = si24(tag.cts_ms);
                match self.video {
                    Some(VideoCodec::H265) => {
                        if tag.cts_ms == 0 {
                            out.push(EX_HEADER | frame_type << 4 | PACKET_CODED_FRAMES_X);
                            out.extend_from_slice(b"hvc1");
                        } else {
                            out.push(EX_HEADER | frame_type << 4 | PACKET_CODED_FRAMES);
                            out.extend_from_slice(b"hvc1");
                            out.extend_from_slice(&cts);
                        }
                    }
                    _ => {
                        out.extend_from_slice(&[frame_type << 4 | CODEC_ID_AVC, 1]);
                        out.extend_from_slice(&cts);
                    }
                }
            }
        }
    }

    /// Appends the bytes of sample `index`'s tag that come after its payload: the 4-byte
    /// PreviousTagSize. Appends nothing for an index out of range.
    pub fn tag_suffix(&self, index: usize, out: &mut Vec<u8>) {
        let Some(tag) = self.tags.get(index) else {
            return;
        };
        let size = (TAG_HEADER_LEN + codec_header_len(self.video, tag)) as u32 + tag.size;
        out.extend_from_slice(&size.to_be_bytes());
    }
}

/// Bytes between a sample tag's header and its payload.
fn codec_header_len(video: Option<VideoCodec>, tag: &TagMeta) -> usize {
    match (tag.kind, video) {
        (TrackKind::Audio, _) => 2,
        (TrackKind::Video, Some(VideoCodec::H265)) if tag.cts_ms == 0 => 5,
        (TrackKind::Video, Some(VideoCodec::H265)) => 8,
        (TrackKind::Video, _) => 5,
    }
}

fn tag_type(kind: TrackKind) -> u8 {
    match kind {
        TrackKind::Video => TAG_VIDEO,
        TrackKind::Audio => TAG_AUDIO,
    }
}

fn si24(v: i32) -> [u8; 3] {
    let b = v.to_be_bytes();
    [b[1], b[2], b[3]]
}

fn write_tag_header(out: &mut Vec<u8>, tag_type: u8, data_size: u32, timestamp: u32) {
    let size = data_size.to_be_bytes();
    let ts = timestamp.to_be_bytes();
    out.extend_from_slice(&[
        tag_type, size[1], size[2], size[3], ts[1], ts[2], ts[3], ts[0], 0, 0, 0,
    ]);
}

/// A whole tag: header, body, PreviousTagSize.
fn write_tag(out: &mut Vec<u8>, tag_type: u8, timestamp: u32, body: &[u8]) {
    write_tag_header(out, tag_type, body.len() as u32, timestamp);
    out.extend_from_slice(body);
    out.extend_from_slice(&((TAG_HEADER_LEN + body.len()) as u32).to_be_bytes());
}

/// The `onMetaData` script tag body. Its length depends only on `info` and the number of
/// `positions`, never on the numbers.
fn metadata_body(info: &MetaInfo, filesize: f64, positions: &[f64]) -> Vec<u8> {
    let num = |k: &str, v: f64| (k.to_string(), Value::Number(v));
    let mut props = vec![num("duration", info.duration_s)];
    if let Some(v) = &info.video {
        if let Some((w, h)) = v.resolution {
            props.push(num("width", f64::from(w)));
            props.push(num("height", f64::from(h)));
        }
        if let Some(fps) = v.framerate {
            props.push(num("framerate", fps));
        }
        props.push(num("videocodecid", v.codec_id));
    }
    if let Some(a) = &info.audio {
        props.push(num("audiocodecid", f64::from(SOUND_FORMAT_AAC)));
        props.push(num("audiosamplerate", f64::from(a.sample_rate)));
        props.push(("stereo".to_string(), Value::Boolean(a.stereo)));
    }
    props.push(num("filesize", filesize));
    if info.video.is_some() {
        let numbers = |v: &[f64]| Value::StrictArray(v.iter().map(|&n| Value::Number(n)).collect());
        props.push((
            "keyframes".to_string(),
            Value::Object(vec![
                ("filepositions".to_string(), numbers(positions)),
                ("times".to_string(), numbers(&info.keyframe_times)),
            ]),
        ));
    }
    let mut out = Vec::new();
    Value::String("onMetaData".to_string()).encode(&mut out);
    Value::EcmaArray(props).encode(&mut out);
    out
}

#[cfg(test)]
#[path = "flv_file_tests.rs"]
mod tests;
