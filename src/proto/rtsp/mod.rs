//! RTSP publish (ANNOUNCE/RECORD) protocol, sans-IO: the server session (RFC 2326 over
//! `rtsp-types`), the ANNOUNCE's SDP, RTP headers and timestamps, and the H.264 / H.265 /
//! AAC (RFC 3640 and RFC 6416 LATM) depacketizers that turn RTP payloads into [`crate::media`] frames.
//!
//! Owns: every byte of the RTSP/RTP wire format on the publish path. Never does IO and
//! never depends on tokio; the daemon's `ingest::rtsp` moves bytes between sockets and a
//! [`ServerSession`] and feeds RTP packets to [`RtpTrack`]s. The depacketizers are our
//! own (see [`rtp`] for why retina's are not used).

pub mod aac;
pub mod h26x;
pub mod latm;
pub mod rtp;
pub mod sdp;
pub mod session;

pub use rtp::{MediaEvent, RtpError, RtpTrack, WallClock};
pub use sdp::{MediaDesc, Sdp, SdpError};
pub use session::{Limits, RtspError, ServerSession, SessionEvent, TrackTransport};
