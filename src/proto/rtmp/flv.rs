//! FLV audio/video tag bodies as carried in RTMP messages 8/9 (Adobe FLV specification
//! 10.1, annex E.4.2/E.4.3; Enhanced RTMP v1 for `hvc1`/`avc1` FourCC video) turned into
//! the shared media vocabulary ([`crate::media`]).
//!
//! Owns: the tag header bytes (codec ids, packet types, composition time), which codec
//! configuration is current per track, and the extension of 32-bit millisecond RTMP
//! timestamps to 64-bit 90 kHz [`Ticks`]. Never copies frame payloads (frames are slices of
//! the message), never does IO, and never parses the codec bitstream itself (that is
//! `media::avc` / `media::hevc` / `media::aac`).

use bytes::Bytes;
use thiserror::Error;

use crate::media::aac::AacConfig;
use crate::media::avc::AvcConfig;
use crate::media::hevc::HevcConfig;
use crate::media::{CodecParams, Frame, MediaError, Ticks, TrackKind, TICKS_PER_MS};

/// A codec as named in a tag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecId {
    /// Legacy FLV CodecID (video) or SoundFormat (audio).
    Legacy(u8),
    /// Enhanced RTMP FourCC.
    FourCc([u8; 4]),
}

impl std::fmt::Display for CodecId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecId::Legacy(id) => write!(f, "id {id}"),
            CodecId::FourCc(cc) => write!(f, "fourcc {:?}", String::from_utf8_lossy(cc)),
        }
    }
}

/// A tag body we cannot turn into media.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlvError {
    #[error("{kind:?} tag: {len} bytes, need {need}")]
    Truncated {
        kind: TrackKind,
        len: usize,
        need: usize,
    },
    #[error("{kind:?} tag: unsupported codec {codec}")]
    UnsupportedCodec { kind: TrackKind, codec: CodecId },
    #[error("{kind:?} tag: unsupported packet type {packet_type} for codec {codec}")]
    UnsupportedPacketType {
        kind: TrackKind,
        codec: CodecId,
        packet_type: u8,
    },
    #[error("{kind:?} frame before its sequence header")]
    FrameBeforeSequenceHeader { kind: TrackKind },
    #[error("{kind:?} sequence header: {source}")]
    BadSequenceHeader {
        kind: TrackKind,
        #[source]
        source: MediaError,
    },
}

/// What one tag body meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemuxEvent {
    Config(CodecParams),
    Frame(Frame),
    EndOfSequence(TrackKind),
}

/// Extends 32-bit millisecond timestamps to 64 bits: the first is taken as is, each later
/// one adds the wrapping `i32` difference to the previous (so both rollover at 2^32 and
/// small backwards steps work).
#[derive(Debug, Default, Clone, Copy)]
struct TimestampExtender {
    last: Option<(u32, i64)>,
}

impl TimestampExtender {
    fn extend(&mut self, raw: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(raw),
            Some((last_raw, last_ext)) => last_ext + i64::from(raw.wrapping_sub(last_raw) as i32),
        };
        self.last = Some((raw, ext));
        ext
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    Avc,
    Hevc,
}

/// Per-connection FLV demuxer state (one audio and one video track).
#[derive(Debug, Default)]
pub struct FlvDemuxer {
    /// The configured video codec.
    video: Option<VideoCodec>,
    audio_configured: bool,
    video_ts: TimestampExtender,
    audio_ts: TimestampExtender,
}

const LEGACY_AVC: u8 = 7;
/// Codec id 12: the non-standard HEVC-in-FLV used by some Chinese encoders and servers.
const LEGACY_HEVC: u8 = 12;
const SOUND_AAC: u8 = 10;
/// Video info/command frame: carries no picture.
const FRAME_TYPE_COMMAND: u8 = 5;

/// Signed 24-bit big-endian.
fn si24(b: &[u8]) -> i32 {
    match b {
        [a, b, c, ..] => (i32::from_be_bytes([*a, *b, *c, 0])) >> 8,
        _ => 0,
    }
}

impl FlvDemuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// One RTMP video message body.
    pub fn push_video(
        &mut self,
        timestamp: u32,
        body: Bytes,
    ) -> Result<Option<DemuxEvent>, FlvError> {
        let kind = TrackKind::Video;
        let Some(&b0) = body.first() else {
            return Ok(None);
        };
        let truncated = |need| FlvError::Truncated {
            kind,
            len: body.len(),
            need,
        };
        if b0 & 0x80 != 0 {
            // Enhanced RTMP: isExHeader | FrameType:3 | PacketType:4, then FourCC.
            let frame_type = (b0 >> 4) & 7;
            let packet_type = b0 & 0x0F;
            if frame_type == FRAME_TYPE_COMMAND {
                return Ok(None);
            }
            let fourcc: [u8; 4] = body
                .get(1..5)
                .and_then(|s| s.try_into().ok())
                .ok_or(truncated(5))?;
            let codec_id = CodecId::FourCc(fourcc);
            let codec = match &fourcc {
                b"avc1" => VideoCodec::Avc,
                b"hvc1" => VideoCodec::Hevc,
                _ => {
                    return Err(FlvError::UnsupportedCodec {
                        kind,
                        codec: codec_id,
                    })
                }
            };
            return match packet_type {
                0 => self.video_config(codec, body.get(5..).unwrap_or_default()),
                1 => {
                    let cts = si24(body.get(5..8).ok_or(truncated(8))?);
                    self.video_frame(codec, timestamp, frame_type, cts, body.slice(8..))
                }
                3 => self.video_frame(codec, timestamp, frame_type, 0, body.slice(5..)),
                2 => Ok(Some(DemuxEvent::EndOfSequence(kind))),
                4 => Ok(None), // Metadata (HDR info): ignored.
                packet_type => Err(FlvError::UnsupportedPacketType {
                    kind,
                    codec: codec_id,
                    packet_type,
                }),
            };
        }
        let frame_type = b0 >> 4;
        if frame_type == FRAME_TYPE_COMMAND {
            return Ok(None);
        }
        let codec_id = CodecId::Legacy(b0 & 0x0F);
        let codec = match b0 & 0x0F {
            LEGACY_AVC => VideoCodec::Avc,
            LEGACY_HEVC => VideoCodec::Hevc,
            _ => {
                return Err(FlvError::UnsupportedCodec {
                    kind,
                    codec: codec_id,
                })
            }
        };
        let header = body.get(1..5).ok_or(truncated(5))?;
        let (packet_type, cts) = match header {
            [p, rest @ ..] => (*p, si24(rest)),
            [] => return Err(truncated(5)),
        };
        match packet_type {
            0 => self.video_config(codec, body.get(5..).unwrap_or_default()),
            1 => self.video_frame(codec, timestamp, frame_type, cts, body.slice(5..)),
            2 => Ok(Some(DemuxEvent::EndOfSequence(kind))),
            packet_type => Err(FlvError::UnsupportedPacketType {
                kind,
                codec: codec_id,
                packet_type,
            }),
        }
    }

    /// One RTMP audio message body.
    pub fn push_audio(
        &mut self,
        timestamp: u32,
        body: Bytes,
    ) -> Result<Option<DemuxEvent>, FlvError> {
        let kind = TrackKind::Audio;
        let Some(&b0) = body.first() else {
            return Ok(None);
        };
        let format = b0 >> 4;
        if format != SOUND_AAC {
            return Err(FlvError::UnsupportedCodec {
                kind,
                codec: CodecId::Legacy(format),
            });
        }
        let packet_type = *body.get(1).ok_or(FlvError::Truncated {
            kind,
            len: body.len(),
            need: 2,
        })?;
        match packet_type {
            0 => {
                let config = AacConfig::parse(body.get(2..).unwrap_or_default())
                    .map_err(|source| FlvError::BadSequenceHeader { kind, source })?;
                self.audio_configured = true;
                Ok(Some(DemuxEvent::Config(CodecParams::Aac(config))))
            }
            1 => {
                if !self.audio_configured {
                    return Err(FlvError::FrameBeforeSequenceHeader { kind });
                }
                let data = body.slice(2..);
                if data.is_empty() {
                    return Ok(None);
                }
                let dts = self.audio_ts.extend(timestamp) * TICKS_PER_MS;
                Ok(Some(DemuxEvent::Frame(Frame {
                    kind,
                    dts,
                    pts: dts,
                    keyframe: true,
                    data,
                })))
            }
            packet_type => Err(FlvError::UnsupportedPacketType {
                kind,
                codec: CodecId::Legacy(format),
                packet_type,
            }),
        }
    }

    fn video_config(
        &mut self,
        codec: VideoCodec,
        record: &[u8],
    ) -> Result<Option<DemuxEvent>, FlvError> {
        let kind = TrackKind::Video;
        let bad = |source| FlvError::BadSequenceHeader { kind, source };
        let params = match codec {
            VideoCodec::Avc => CodecParams::H264(AvcConfig::parse(record).map_err(bad)?),
            VideoCodec::Hevc => CodecParams::H265(HevcConfig::parse(record).map_err(bad)?),
        };
        self.video = Some(codec);
        Ok(Some(DemuxEvent::Config(params)))
    }

    fn video_frame(
        &mut self,
        codec: VideoCodec,
        timestamp: u32,
        frame_type: u8,
        composition_ms: i32,
        data: Bytes,
    ) -> Result<Option<DemuxEvent>, FlvError> {
        let kind = TrackKind::Video;
        if self.video != Some(codec) {
            return Err(FlvError::FrameBeforeSequenceHeader { kind });
        }
        if data.is_empty() {
            return Ok(None);
        }
        let dts: Ticks = self.video_ts.extend(timestamp) * TICKS_PER_MS;
        // pts >= dts is a media invariant; a negative offset is an encoder bug.
        let pts = dts + i64::from(composition_ms.max(0)) * TICKS_PER_MS;
        Ok(Some(DemuxEvent::Frame(Frame {
            kind,
            dts,
            pts,
            keyframe: frame_type == 1,
            data,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const AVC_RECORD: &str =
        "0142c00bffe100186742c00bd90141fb011000000300100000030140f142a48001000568cb83cb20";
    pub(crate) const HVC_RECORD: &str = "0101600000009000000000003cf000fcfdf8f800000f03a00001001840010c01ffff01600000030090000003000003003c959809a10001002a42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003001410a2000100074401c172b46240";

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn avc_seq() -> Bytes {
        let mut b = vec![0x17, 0, 0, 0, 0];
        b.extend(hex(AVC_RECORD));
        b.into()
    }

    fn frame(ev: Option<DemuxEvent>) -> Frame {
        match ev {
            Some(DemuxEvent::Frame(f)) => f,
            other => panic!("expected frame, got {other:?}"),
        }
    }

    #[test]
    fn avc_config_frames_and_composition_time() {
        let mut d = FlvDemuxer::new();
        let ev = d.push_video(0, avc_seq()).unwrap();
        assert!(
            matches!(ev, Some(DemuxEvent::Config(CodecParams::H264(ref c))) if c.nal_length_size == 4 && c.resolution == Some((320, 240)))
        );
        let body = Bytes::from_static(&[0x17, 1, 0, 0, 40, 0, 0, 0, 2, 0x65, 0x88]);
        let f = frame(d.push_video(1000, body.clone()).unwrap());
        assert_eq!((f.dts, f.pts, f.keyframe), (90_000, 90_000 + 40 * 90, true));
        assert_eq!(&f.data[..], &body[5..]);
        assert_eq!(f.data.as_ptr(), body[5..].as_ptr(), "no copy");
        let f = frame(
            d.push_video(
                1040,
                Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]),
            )
            .unwrap(),
        );
        assert!(!f.keyframe);
        assert_eq!(
            d.push_video(1080, Bytes::from_static(&[0x17, 2, 0, 0, 0]))
                .unwrap(),
            Some(DemuxEvent::EndOfSequence(TrackKind::Video))
        );
    }

    #[test]
    fn frame_before_sequence_header_then_fine() {
        let mut d = FlvDemuxer::new();
        let body = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        assert_eq!(
            d.push_video(0, body.clone()),
            Err(FlvError::FrameBeforeSequenceHeader {
                kind: TrackKind::Video
            })
        );
        d.push_video(0, avc_seq()).unwrap();
        assert!(frame(d.push_video(33, body).unwrap()).keyframe);
        assert!(matches!(
            d.push_audio(0, Bytes::from_static(&[0xAF, 1, 0x21])),
            Err(FlvError::FrameBeforeSequenceHeader {
                kind: TrackKind::Audio
            })
        ));
    }

    #[test]
    fn ignored_and_unsupported() {
        let mut d = FlvDemuxer::new();
        assert_eq!(d.push_video(0, Bytes::new()).unwrap(), None);
        assert_eq!(d.push_audio(0, Bytes::new()).unwrap(), None);
        assert_eq!(
            d.push_video(0, Bytes::from_static(&[0x57, 0])).unwrap(),
            None
        );
        assert_eq!(
            d.push_video(0, Bytes::from_static(&[0xD0, b'h', b'v', b'c', b'1']))
                .unwrap(),
            None
        );
        assert!(matches!(
            d.push_video(0, Bytes::from_static(&[0x14, 0])),
            Err(FlvError::UnsupportedCodec {
                codec: CodecId::Legacy(4),
                ..
            })
        ));
        assert!(matches!(
            d.push_video(0, Bytes::from_static(&[0x90, b'a', b'v', b'0', b'1'])),
            Err(FlvError::UnsupportedCodec {
                codec: CodecId::FourCc(_),
                ..
            })
        ));
        assert!(matches!(
            d.push_audio(0, Bytes::from_static(&[0x2F, 0])),
            Err(FlvError::UnsupportedCodec {
                codec: CodecId::Legacy(2),
                ..
            })
        ));
        assert!(matches!(
            d.push_audio(0, Bytes::from_static(&[0xBF, 0])),
            Err(FlvError::UnsupportedCodec {
                codec: CodecId::Legacy(11),
                ..
            })
        ));
        assert!(matches!(
            d.push_video(0, Bytes::from_static(&[0x17, 1])),
            Err(FlvError::Truncated { .. })
        ));
        assert!(matches!(
            d.push_video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 9])),
            Err(FlvError::BadSequenceHeader { .. })
        ));
    }

    #[test]
    fn aac() {
        let mut d = FlvDemuxer::new();
        let ev = d
            .push_audio(0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10]))
            .unwrap();
        assert!(matches!(ev, Some(DemuxEvent::Config(CodecParams::Aac(ref c))) if c.channels == 2));
        let f = frame(
            d.push_audio(23, Bytes::from_static(&[0xAF, 1, 0x21, 0x00]))
                .unwrap(),
        );
        assert_eq!(
            (f.dts, f.pts, f.keyframe, &f.data[..]),
            (23 * 90, 23 * 90, true, &[0x21, 0][..])
        );
    }

    #[test]
    fn timestamps_roll_over_32_bits_and_step_back() {
        let mut d = FlvDemuxer::new();
        d.push_audio(0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10]))
            .unwrap();
        let mut dts = |ts: u32| {
            frame(
                d.push_audio(ts, Bytes::from_static(&[0xAF, 1, 0x21]))
                    .unwrap(),
            )
            .dts
        };
        assert_eq!(dts(u32::MAX - 10), i64::from(u32::MAX - 10) * 90);
        assert_eq!(dts(12), ((1i64 << 32) + 12) * 90);
        assert_eq!(dts(2), ((1i64 << 32) + 2) * 90, "small backwards step");
        assert_eq!(
            dts(u32::MAX),
            i64::from(u32::MAX) * 90,
            "step back over the wrap"
        );
    }

    #[test]
    fn enhanced_hevc() {
        let mut d = FlvDemuxer::new();
        let mut seq = vec![0x90];
        seq.extend(b"hvc1");
        seq.extend(hex(HVC_RECORD));
        let ev = d.push_video(0, seq.into()).unwrap();
        assert!(
            matches!(ev, Some(DemuxEvent::Config(CodecParams::H265(ref c))) if c.nal_length_size == 4 && c.resolution == Some((320, 240)))
        );
        // CodedFrames, keyframe, composition offset +80 ms.
        let body = Bytes::from(vec![
            0x91, b'h', b'v', b'c', b'1', 0, 0, 80, 0, 0, 0, 2, 0x26, 0x01,
        ]);
        let f = frame(d.push_video(100, body.clone()).unwrap());
        assert_eq!((f.dts, f.pts, f.keyframe), (9000, 9000 + 80 * 90, true));
        assert_eq!(&f.data[..], &body[8..]);
        // CodedFramesX, inter frame.
        let body = Bytes::from(vec![0xA3, b'h', b'v', b'c', b'1', 0, 0, 0, 2, 0x02, 0x01]);
        let f = frame(d.push_video(133, body.clone()).unwrap());
        assert_eq!((f.dts, f.pts, f.keyframe), (133 * 90, 133 * 90, false));
        assert_eq!(&f.data[..], &body[5..]);
        // Negative composition offset is clamped.
        let body = Bytes::from(vec![
            0xA1, b'h', b'v', b'c', b'1', 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 0x02,
        ]);
        let f = frame(d.push_video(166, body).unwrap());
        assert_eq!(f.pts, f.dts);
        // avc1 frames are not hvc1 frames.
        let body = Bytes::from(vec![0x93, b'a', b'v', b'c', b'1', 0, 0, 0, 1, 0x65]);
        assert!(matches!(
            d.push_video(200, body),
            Err(FlvError::FrameBeforeSequenceHeader { .. })
        ));
        assert_eq!(
            d.push_video(300, Bytes::from_static(&[0x92, b'h', b'v', b'c', b'1']))
                .unwrap(),
            Some(DemuxEvent::EndOfSequence(TrackKind::Video))
        );
    }
}
