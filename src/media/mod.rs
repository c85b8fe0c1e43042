//! The codec vocabulary shared by every other module: [`Frame`], [`TrackKind`],
//! [`CodecParams`] and the one media timestamp type ([`Ticks`], 90 kHz) with its one
//! rescale function.
//!
//! Owns: what a frame and a track *are*, independent of where they came from (RTMP, RTSP)
//! or where they go (MPEG-TS, fMP4, FLV). Never does IO and never depends on tokio.
//!
//! Conventions every producer and consumer relies on:
//! - Timestamps are 90 kHz ticks in `i64` ([`Ticks`]), already extended past the 32-bit
//!   wrap of the source protocol. `pts >= dts` for video; `pts == dts` for audio.
//! - A video frame's `data` is one access unit in length-prefixed form ("AVCC"/"HVCC"),
//!   with the NAL length size given by its track's [`CodecParams`]. Parameter sets are
//!   carried in the [`CodecParams`], not repeated in-band (muxers insert them).
//! - An audio frame's `data` is one raw AAC access unit (no ADTS header).

pub mod aac;
pub mod avc;
pub mod bits;
pub mod hevc;
pub mod nal;
pub mod reorder;

use bytes::Bytes;

/// Media time in 90 kHz ticks (the MPEG-TS clock), extended to 64 bits.
pub type Ticks = i64;

/// Ticks per second of [`Ticks`].
pub const TICKS_PER_SECOND: i64 = 90_000;

/// Ticks per millisecond (RTMP timestamps are milliseconds).
pub const TICKS_PER_MS: i64 = 90;

/// Rescales `value` from a clock of `from_hz` to a clock of `to_hz`, rounding toward
/// negative infinity, without overflowing for any realistic media timestamp.
pub fn rescale(value: i64, from_hz: i64, to_hz: i64) -> i64 {
    debug_assert!(from_hz > 0 && to_hz > 0);
    let wide = value as i128 * to_hz as i128;
    wide.div_euclid(from_hz as i128) as i64
}

/// Seconds (as `f64`) in `ticks`.
pub fn ticks_to_seconds(ticks: Ticks) -> f64 {
    ticks as f64 / TICKS_PER_SECOND as f64
}

/// The two kinds of elementary stream a recording carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
}

impl TrackKind {
    /// Index of a track in per-track arrays: video 0, audio 1.
    pub fn slot(self) -> usize {
        match self {
            TrackKind::Video => 0,
            TrackKind::Audio => 1,
        }
    }
}

/// One access unit of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: TrackKind,
    /// Decode time.
    pub dts: Ticks,
    /// Presentation time (`>= dts` for video, `== dts` for audio).
    pub pts: Ticks,
    /// A random access point: an IDR/IRAP picture for video; every AAC frame is one.
    pub keyframe: bool,
    /// See the module doc for the layout per kind.
    pub data: Bytes,
}

/// What a decoder needs to know about a track before its first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecParams {
    H264(avc::AvcConfig),
    H265(hevc::HevcConfig),
    Aac(aac::AacConfig),
}

impl CodecParams {
    /// The track kind this codec belongs to.
    pub fn kind(&self) -> TrackKind {
        match self {
            CodecParams::H264(_) | CodecParams::H265(_) => TrackKind::Video,
            CodecParams::Aac(_) => TrackKind::Audio,
        }
    }

    /// Short codec name as shown in the API and logs (`h264`, `h265`, `aac`).
    pub fn codec_name(&self) -> &'static str {
        match self {
            CodecParams::H264(_) => "h264",
            CodecParams::H265(_) => "h265",
            CodecParams::Aac(_) => "aac",
        }
    }

    /// Picture size for video tracks, when the SPS could be parsed.
    pub fn resolution(&self) -> Option<(u32, u32)> {
        match self {
            CodecParams::H264(c) => c.resolution,
            CodecParams::H265(c) => c.resolution,
            CodecParams::Aac(_) => None,
        }
    }
}

/// The tracks of one publish session, as announced by its sequence headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracks {
    pub video: Option<CodecParams>,
    pub audio: Option<CodecParams>,
}

impl Tracks {
    pub fn get(&self, kind: TrackKind) -> Option<&CodecParams> {
        match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        }
    }

    pub fn set(&mut self, params: CodecParams) {
        match params.kind() {
            TrackKind::Video => self.video = Some(params),
            TrackKind::Audio => self.audio = Some(params),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.video.is_none() && self.audio.is_none()
    }

    /// A non-zero 64-bit FNV-1a fingerprint of the track set and its decoder
    /// configuration records: equal for streams a container can carry under one set of
    /// sample entries.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for params in [&self.video, &self.audio] {
            match params {
                None => eat(b"-"),
                Some(CodecParams::H264(c)) => {
                    eat(b"avc1");
                    c.sps.iter().chain(&c.pps).for_each(|n| eat(n));
                }
                Some(CodecParams::H265(c)) => {
                    eat(b"hvc1");
                    c.vps
                        .iter()
                        .chain(&c.sps)
                        .chain(&c.pps)
                        .for_each(|n| eat(n));
                }
                Some(CodecParams::Aac(c)) => {
                    eat(b"mp4a");
                    eat(&c.asc);
                }
            }
        }
        h.max(1)
    }
}

/// A malformed codec configuration or bitstream, with enough context to find the byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("{what}: {size} bytes is over the {limit}-byte cap for decoder configuration")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{what}: truncated at byte {offset} (need {need} more)")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
    },
    #[error("{what}: invalid value at byte {offset}: {detail}")]
    Invalid {
        what: &'static str,
        offset: usize,
        detail: String,
    },
    #[error("{what}: unsupported: {detail}")]
    Unsupported { what: &'static str, detail: String },
}

/// Largest decoder configuration record (avcC, hvcC) accepted. Real ones are a few hundred
/// bytes; the parameter sets are copied in front of every keyframe that lacks them, so an
/// uncapped record lets a peer turn one small message into megabytes on flash per keyframe.
pub const MAX_DECODER_CONFIG: usize = 8 * 1024;

/// [`MediaError::TooLarge`] when `record` is over [`MAX_DECODER_CONFIG`].
pub(crate) fn check_config_size(what: &'static str, record: &[u8]) -> Result<(), MediaError> {
    if record.len() > MAX_DECODER_CONFIG {
        return Err(MediaError::TooLarge {
            what,
            size: record.len(),
            limit: MAX_DECODER_CONFIG,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_ms_to_ticks_and_back() {
        assert_eq!(rescale(1000, 1000, TICKS_PER_SECOND), 90_000);
        assert_eq!(rescale(-1, 1000, TICKS_PER_SECOND), -90);
        assert_eq!(rescale(1, TICKS_PER_SECOND, 1000), 0);
        assert_eq!(rescale(-1, TICKS_PER_SECOND, 1000), -1);
        // 2^32 ms (RTMP wrap) does not overflow.
        assert_eq!(rescale(1 << 32, 1000, 90_000), (1i64 << 32) * 90);
    }
}
