//! RTSP targets: a publishing session driven by operations, RTP depacketizing for each
//! codec we record, and SDP.

use bytes::Bytes;
use edgerec::proto::rtsp::rtp::{MediaEvent, RtpTrack, WallClock};
use edgerec::proto::rtsp::sdp;
use edgerec::proto::rtsp::session::{Limits, ServerSession, SessionEvent};
use rtsp_types::StatusCode;

use super::Ops;

/// A publishing session driven by operations: `A` accepts a pending ANNOUNCE, `U` accepts
/// a pending UDP SETUP, `X` refuses whatever is pending, `O` takes the output, anything
/// else feeds the next length-prefixed piece. RTP that arrives goes to its track.
pub fn session(data: &[u8]) {
    let mut session = ServerSession::new(Limits::default(), "fuzz".into());
    let mut ops = Ops::new(data);
    let mut tracks: Vec<Option<RtpTrack>> = Vec::new();
    let mut clock = WallClock::default();
    let mut out = Vec::new();
    while let Some(op) = ops.byte() {
        let result = match op {
            b'A' => session.accept_announce(),
            b'U' => session.accept_udp(5000),
            b'X' => session.refuse(StatusCode::Forbidden, "no"),
            b'O' => {
                session.take_output();
                Ok(())
            }
            _ => session.feed(ops.piece()),
        };
        if result.is_err() {
            return;
        }
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Announce { sdp, .. } => {
                    tracks = sdp
                        .media
                        .iter()
                        .map(|m| RtpTrack::for_media(m).ok())
                        .collect();
                }
                SessionEvent::Rtp { track, packet } => {
                    if let Some(Some(t)) = tracks.get_mut(track) {
                        let _ = t.push(packet, 0, &mut out);
                    }
                }
                SessionEvent::Rtcp { track, packet } => {
                    if let Some(Some(t)) = tracks.get_mut(track) {
                        let _ = t.push_rtcp(&packet, 0, &mut clock);
                    }
                }
                _ => {}
            }
            out.clear();
        }
    }
}

/// SDPs of the codecs we record, as cameras and encoders write them.
pub const SDPS: [&str; 4] = [
    "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAMg8WLZY=,aOvjyyLA\r\n",
    "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
    "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n",
    "v=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=1190\r\n",
];

/// RTP (and RTCP, by the header byte's low bit) packets into one track of a codec picked
/// by the first byte; each arrives 20 ms after the last.
pub fn rtp(data: &[u8]) {
    let mut ops = Ops::new(data);
    let which = usize::from(ops.byte().unwrap_or(0)) % SDPS.len();
    let sdp = sdp::parse(SDPS[which].as_bytes()).expect("a valid SDP");
    let mut track = RtpTrack::for_media(&sdp.media[0]).expect("a codec we record");
    let mut clock = WallClock::default();
    let mut out = Vec::new();
    let mut arrival = 0;
    while let Some(header) = ops.byte() {
        let packet = Bytes::copy_from_slice(ops.piece());
        arrival += 1800;
        if header & 1 == 1 {
            let _ = track.push_rtcp(&packet, arrival, &mut clock);
        } else {
            let _ = track.push(packet, arrival, &mut out);
        }
    }
    track.finish(&mut out);
    for event in out {
        if let MediaEvent::Frame(f) = event {
            assert!(!f.data.is_empty() || f.kind == edgerec::media::TrackKind::Audio);
        }
    }
}

/// SDP bodies; each media description that parses is tried as a track.
pub fn sdp(data: &[u8]) {
    if let Ok(sdp) = sdp::parse(data) {
        for media in &sdp.media {
            let _ = RtpTrack::for_media(media);
        }
    }
}
