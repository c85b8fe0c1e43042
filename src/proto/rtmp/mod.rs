//! RTMP ingest protocol, sans-IO: handshake, chunk stream, AMF0, messages, the server
//! publish session and FLV tag demux to [`crate::media`] frames. Adobe RTMP specification
//! 1.0, AMF0 specification, FLV specification 10.1 and Enhanced RTMP v1.
//!
//! Owns: every byte of the RTMP wire format. Never does IO and never depends on tokio; the
//! daemon's `ingest` layer moves bytes between a socket and a [`ServerSession`].

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod flv;
pub mod handshake;
pub mod message;
pub mod session;

pub use amf0::Value;
pub use client::{ClientError, ClientSession};
pub use flv::{CodecId, DemuxEvent, FlvDemuxer, FlvError};
pub use session::{Limits, RtmpError, ServerSession, SessionEvent};
