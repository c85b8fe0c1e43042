//! Containers the recorder writes, as pure byte producers: MPEG-TS segments ([`ts`]), the
//! recovery scanner for segments cut by a power loss ([`ts_scan`]) and HLS media playlist
//! text ([`hls`]); and the other way, the TS demuxer ([`ts_demux`]) that turns stored
//! segments back into [`crate::media::Frame`]s, plus the derived-file writers: progressive
//! MP4 and M4A ([`mp4`]) and FLV files ([`flv_file`]).
//!
//! Derived files are written in two passes so that memory stays bounded by the number of
//! samples, not their bytes: pass one hands the writer a [`SampleMeta`] per frame (no
//! payload) and gets back the exact header bytes and the offset of every sample; pass two
//! re-reads the frames and emits each one's bytes in the same order.
//!
//! Owns: the byte layout of what ends up in files. Never does IO (callers hand in a
//! `Vec<u8>` and write it themselves), never depends on tokio, never panics on frames or
//! files it is given.

pub mod flv_file;
pub mod hls;
pub mod mp4;
pub mod ts;
pub mod ts_cut;
pub mod ts_demux;
pub mod ts_scan;

use crate::media::{MediaError, Ticks, TrackKind};

/// What a derived-file writer needs to know of one frame in its planning pass: everything
/// but the payload. The order of a slice of these is the order the payloads follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleMeta {
    pub kind: TrackKind,
    /// Decode time, 90 kHz (may start anywhere; writers rebase to their own zero).
    pub dts: Ticks,
    /// Presentation time minus decode time (>= 0; 0 for audio).
    pub cts: i32,
    pub keyframe: bool,
    /// Payload bytes as in [`crate::media::Frame::data`].
    pub size: u32,
}

/// A frame or track set a muxer cannot write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("no tracks to mux")]
    NoTracks,
    #[error("{codec} cannot be the {kind:?} track of {container}")]
    UnsupportedCodec {
        container: &'static str,
        kind: TrackKind,
        codec: &'static str,
    },
    #[error("{kind:?} frame but the stream has no {kind:?} track")]
    NoSuchTrack { kind: TrackKind },
    #[error("{kind:?} frame at dts {dts}: {source}")]
    BadFrame {
        kind: TrackKind,
        dts: Ticks,
        #[source]
        source: MediaError,
    },
    #[error("{kind:?} track configuration: {source}")]
    BadConfig {
        kind: TrackKind,
        #[source]
        source: MediaError,
    },
}
