//! Ingest: the tokio listeners that turn publishers' connections into frames for the
//! recorders. Protocol parsing lives in `proto` (sans-IO); this module only moves bytes
//! between sockets and those state machines, applies timeouts and connection limits, and
//! decides publish admission (signed URLs, stream names, one publisher per stream).

pub mod admission;
pub mod camera;
pub mod lowat;
pub mod rate;
pub mod rtmp;
pub mod rtsp;
pub mod slots;
