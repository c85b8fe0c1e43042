//! Containers the recorder writes, as pure byte producers: MPEG-TS segments ([`ts`]), the
//! recovery scanner for segments cut by a power loss ([`ts_scan`]) and HLS media playlist
//! text ([`hls`]).
//!
//! Owns: the byte layout of what ends up in files. Never does IO (callers hand in a
//! `Vec<u8>` and write it themselves), never depends on tokio, never panics on frames or
//! files it is given.

pub mod hls;
pub mod ts;
pub mod ts_scan;

use crate::media::{MediaError, Ticks, TrackKind};

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
