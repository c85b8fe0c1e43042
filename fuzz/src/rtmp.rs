//! RTMP targets: the handshake, the chunk stream, a whole publish session driven by
//! operations, AMF0 round trips and FLV / Enhanced RTMP tag bodies.

use bytes::{Bytes, BytesMut};
use edgerec::media::TrackKind;
use edgerec::proto::rtmp::amf0;
use edgerec::proto::rtmp::chunk::ChunkDecoder;
use edgerec::proto::rtmp::client::ClientSession;
use edgerec::proto::rtmp::flv::{DemuxEvent, FlvDemuxer};
use edgerec::proto::rtmp::handshake::{ServerHandshake, HANDSHAKE_BLOCK};
use edgerec::proto::rtmp::message::Message;
use edgerec::proto::rtmp::session::{Limits, ServerSession, SessionEvent};

use super::Ops;

/// The handshake fed in pieces; what it answers is S0+S1+S2 at most.
pub fn handshake(data: &[u8]) {
    let mut ops = Ops::new(data);
    let mut hs = ServerHandshake::new();
    let mut out = Vec::new();
    while !ops.is_empty() && !hs.is_done() {
        let piece = ops.piece();
        match hs.feed(piece, &mut out) {
            Ok(used) => assert!(used <= piece.len()),
            Err(_) => return,
        }
    }
    assert!(
        out.len() <= 1 + 2 * HANDSHAKE_BLOCK,
        "handshake answered {} bytes",
        out.len()
    );
}

/// The chunk decoder over arbitrary bytes (media allowed or not, by the first byte), each
/// message parsed as the session would.
pub fn chunk(data: &[u8]) {
    let mut ops = Ops::new(data);
    let limits = Limits::default();
    let mut decoder = ChunkDecoder::new(&limits);
    decoder.allow_media(ops.byte().unwrap_or(0) & 1 == 1);
    let mut input = BytesMut::new();
    while !ops.is_empty() {
        input.extend_from_slice(ops.piece());
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(raw)) => {
                    if let Ok(Message::SetChunkSize(size)) =
                        Message::parse(&raw, limits.max_amf_depth)
                    {
                        if decoder.set_chunk_size(size).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The client half of a valid handshake, so session inputs start at the chunk stream.
fn client_handshake() -> Bytes {
    let mut client = ClientSession::new();
    client.handshake_c0c1();
    client.handshake_c2(&[0u8; HANDSHAKE_BLOCK]);
    client.take_output()
}

/// A whole server session after a valid handshake, driven by operations: `A` accepts and
/// `R` rejects every pending publish, `O` takes the output, anything else feeds the next
/// length-prefixed piece. Media goes through the FLV demuxer as the daemon's would.
pub fn session(data: &[u8]) {
    let mut session = ServerSession::new(Limits::default());
    if session.feed(&client_handshake()).is_err() {
        panic!("the test client's handshake was refused");
    }
    let mut ops = Ops::new(data);
    let mut demuxer = FlvDemuxer::new();
    let mut pending = Vec::new();
    while let Some(op) = ops.byte() {
        match op {
            b'A' => pending.drain(..).for_each(|id| session.accept_publish(id)),
            b'R' => pending
                .drain(..)
                .for_each(|id| session.reject_publish(id, "NetStream.Publish.BadName", "no")),
            b'O' => drop(session.take_output()),
            _ => {
                if session.feed(ops.piece()).is_err() {
                    return;
                }
            }
        }
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::PublishRequested { stream_id, .. } => pending.push(stream_id),
                SessionEvent::Video {
                    timestamp, data, ..
                } => {
                    let _ = demuxer.push_video(timestamp, data);
                }
                SessionEvent::Audio {
                    timestamp, data, ..
                } => {
                    let _ = demuxer.push_audio(timestamp, data);
                }
                _ => {}
            }
        }
    }
}

/// Decode -> encode -> decode: what we read back from our own encoding is what we read
/// first (compared as encodings, since NaN != NaN).
pub fn amf0(data: &[u8]) {
    let Ok(values) = amf0::decode_all(data, 32) else {
        return;
    };
    let encoded = amf0::encode_all(&values);
    let again = amf0::decode_all(&encoded, 64).expect("our own encoding decodes");
    assert_eq!(
        amf0::encode_all(&again),
        encoded,
        "AMF0 round trip changed the values"
    );
}

/// FLV audio/video tag bodies (legacy and Enhanced RTMP), each with a timestamp.
pub fn flv_demux(data: &[u8]) {
    let mut ops = Ops::new(data);
    let mut demuxer = FlvDemuxer::new();
    while let Some(op) = ops.byte() {
        let timestamp = u32::from(ops.u16()) * 10;
        let body = Bytes::copy_from_slice(ops.piece());
        let event = if op & 1 == 0 {
            demuxer.push_video(timestamp, body)
        } else {
            demuxer.push_audio(timestamp, body)
        };
        if let Ok(Some(DemuxEvent::Frame(frame))) = event {
            if frame.kind == TrackKind::Audio {
                assert_eq!(
                    frame.pts, frame.dts,
                    "an audio frame with a composition offset"
                );
            }
        }
    }
}
