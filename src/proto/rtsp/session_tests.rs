use super::*;

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
    m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n\
    m=audio 0 RTP/AVP 8\r\na=control:streamid=1\r\n";

fn session() -> ServerSession {
    ServerSession::new(Limits::default(), "abc123".into())
}

fn request(method: &str, uri: &str, cseq: u32, headers: &str, body: &str) -> Vec<u8> {
    let mut r = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n{headers}");
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn output(s: &mut ServerSession) -> String {
    String::from_utf8(s.take_output()).unwrap()
}

fn events(s: &mut ServerSession) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn announce(s: &mut ServerSession) {
    let ann = request(
        "ANNOUNCE",
        "rtsp://127.0.0.1:8554/live/cam?sign=x",
        2,
        "Content-Type: application/sdp\r\n",
        SDP,
    );
    s.feed(&ann).unwrap();
    let ev = events(s);
    let [SessionEvent::Announce { path, query, sdp }] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(path, &["live", "cam"]);
    assert_eq!(query, "sign=x");
    assert_eq!(sdp.media.len(), 2);
    assert!(output(s).is_empty(), "no reply before the decision");
    s.accept_announce().unwrap();
    let out = output(s);
    assert!(out.starts_with("RTSP/1.0 200 "), "{out}");
    assert!(out.contains("CSeq: 2\r\n"), "{out}");
}

#[test]
fn tcp_publish_flow_and_interleaved_demux() {
    let mut s = session();
    s.feed(&request(
        "OPTIONS",
        "rtsp://127.0.0.1:8554/live/cam",
        1,
        "",
        "",
    ))
    .unwrap();
    let out = output(&mut s);
    assert!(
        out.starts_with("RTSP/1.0 200 ") && out.contains("Public: OPTIONS, ANNOUNCE"),
        "{out}"
    );
    announce(&mut s);
    s.feed(&request(
        "SETUP",
        "rtsp://127.0.0.1:8554/live/cam?sign=x/streamid=1",
        3,
        "Transport: RTP/AVP/TCP;unicast;interleaved=2-3;mode=record\r\n",
        "",
    ))
    .unwrap();
    let out = output(&mut s);
    assert!(
        out.contains("Transport: RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"),
        "{out}"
    );
    assert!(out.contains("Session: abc123;timeout=60"), "{out}");
    assert_eq!(
        events(&mut s),
        vec![SessionEvent::TrackSetUp {
            track: 1,
            transport: TrackTransport::Interleaved { rtp: 2, rtcp: 3 }
        }]
    );
    s.feed(&request(
        "SETUP",
        "rtsp://127.0.0.1:8554/live/cam/streamid=0",
        4,
        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\nSession: abc123\r\n",
        "",
    ))
    .unwrap();
    assert!(output(&mut s).starts_with("RTSP/1.0 200 "));
    events(&mut s);
    // RECORD, then an RTP frame split over two feeds, an RTCP one, one on a dead channel
    // and a keep-alive between them.
    let mut bytes = request(
        "RECORD",
        "rtsp://127.0.0.1:8554/live/cam",
        5,
        "Session: abc123\r\n",
        "",
    );
    bytes.extend_from_slice(&[b'$', 0, 0, 3, 1, 2, 3]);
    bytes.extend_from_slice(&[b'$', 3, 0, 1, 9]);
    bytes.extend_from_slice(&[b'$', 7, 0, 1, 9]);
    bytes.extend_from_slice(&request(
        "GET_PARAMETER",
        "rtsp://127.0.0.1:8554/live/cam",
        6,
        "Session: abc123\r\n",
        "",
    ));
    bytes.extend_from_slice(&[b'$', 2, 0, 2, 4, 5]);
    let (a, b) = bytes.split_at(bytes.len() - 1);
    s.feed(a).unwrap();
    s.feed(b).unwrap();
    assert!(s.is_recording());
    let out = output(&mut s);
    assert!(out.contains("CSeq: 5") && out.contains("CSeq: 6"), "{out}");
    assert_eq!(
        events(&mut s),
        vec![
            SessionEvent::Record,
            SessionEvent::Rtp {
                track: 0,
                packet: Bytes::from_static(&[1, 2, 3])
            },
            SessionEvent::Rtcp {
                track: 1,
                packet: Bytes::from_static(&[9])
            },
            SessionEvent::Rtp {
                track: 1,
                packet: Bytes::from_static(&[4, 5])
            },
        ]
    );
    s.feed(&request(
        "TEARDOWN",
        "rtsp://127.0.0.1:8554/live/cam",
        7,
        "Session: abc123\r\n",
        "",
    ))
    .unwrap();
    assert!(output(&mut s).contains("CSeq: 7"));
    assert_eq!(events(&mut s), vec![SessionEvent::Teardown]);
}

#[test]
fn udp_setup_asks_for_ports() {
    let mut s = session();
    announce(&mut s);
    s.feed(&request(
        "SETUP",
        "rtsp://127.0.0.1:8554/live/cam/streamid=0",
        3,
        "Transport: RTP/AVP/UDP;unicast;client_port=5000-5001;mode=record\r\n",
        "",
    ))
    .unwrap();
    assert_eq!(
        events(&mut s),
        vec![SessionEvent::SetupUdp {
            track: 0,
            client_rtp: 5000,
            client_rtcp: 5001
        }]
    );
    // The next request waits for the decision.
    s.feed(&request(
        "RECORD",
        "rtsp://127.0.0.1:8554/live/cam",
        4,
        "Session: abc123\r\n",
        "",
    ))
    .unwrap();
    assert!(output(&mut s).is_empty());
    s.accept_udp(30000).unwrap();
    let out = output(&mut s);
    assert!(
        out.contains("client_port=5000-5001;server_port=30000-30001"),
        "{out}"
    );
    assert!(
        out.contains("CSeq: 4"),
        "RECORD answered after the decision: {out}"
    );
    let ev = events(&mut s);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1], SessionEvent::Record);
}

#[test]
fn refusals_carry_the_status_and_reason() {
    let mut s = session();
    let ann = request(
        "ANNOUNCE",
        "rtsp://h/live/cam",
        2,
        "Content-Type: application/sdp\r\n",
        SDP,
    );
    s.feed(&ann).unwrap();
    events(&mut s);
    s.refuse(
        StatusCode::MethodNotValidInThisState,
        "stream live/cam is already\r\nbeing published",
    )
    .unwrap();
    let out = output(&mut s);
    assert!(
        out.starts_with("RTSP/1.0 455 stream live/cam is already  being published\r\n"),
        "{out}"
    );
    // RECORD or SETUP without an accepted ANNOUNCE.
    s.feed(&request("RECORD", "rtsp://h/live/cam", 3, "", ""))
        .unwrap();
    assert!(output(&mut s).starts_with("RTSP/1.0 455 "));
    s.feed(&request(
        "SETUP",
        "rtsp://h/live/cam",
        4,
        "Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
        "",
    ))
    .unwrap();
    assert!(output(&mut s).starts_with("RTSP/1.0 455 "));
    s.feed(&request("DESCRIBE", "rtsp://h/live/cam", 5, "", ""))
        .unwrap();
    assert!(output(&mut s).starts_with("RTSP/1.0 405 "));
    s.feed(&request(
        "ANNOUNCE",
        "rtsp://h/live/cam",
        6,
        "Content-Type: text/plain\r\n",
        "x",
    ))
    .unwrap();
    assert!(output(&mut s).starts_with("RTSP/1.0 415 "));
    s.feed(&request(
        "ANNOUNCE",
        "rtsp://h/live/%2E%2e/x",
        7,
        "Content-Type: application/sdp\r\n",
        SDP,
    ))
    .unwrap();
    assert!(output(&mut s).starts_with("RTSP/1.0 400 "));
    s.feed(&request(
        "ANNOUNCE",
        "rtsp://h/live/cam",
        8,
        "Content-Type: application/sdp\r\n",
        "v=0\r\n",
    ))
    .unwrap();
    let out = output(&mut s);
    assert!(
        out.starts_with("RTSP/1.0 400 sdp has no media section"),
        "{out}"
    );
    assert!(events(&mut s).is_empty());
}

#[test]
fn malformed_request_is_answered_400_and_closes() {
    for bad in [
        &b"HELLO\r\n\r\n"[..],
        &b"OPTIONS rtsp://h/a RTSP/1.0\r\n\r\n"[..], // no CSeq
        &b"OPTIONS rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\nContent-Length: x\r\n\r\n"[..],
    ] {
        let mut s = session();
        let err = s.feed(bad).unwrap_err();
        assert!(matches!(err, RtspError::Malformed(_)), "{err:?}");
        assert!(output(&mut s).starts_with("RTSP/1.0 400 "), "{bad:?}");
        // Nothing more is read.
        s.feed(&request("OPTIONS", "rtsp://h/a", 2, "", ""))
            .unwrap();
        assert!(output(&mut s).is_empty());
    }
}

#[test]
fn limits_close_the_connection() {
    let limits = Limits {
        max_frame: 2048,
        ..Limits::default()
    };
    let mut s = ServerSession::new(limits, "x".into());
    assert_eq!(
        s.feed(&[b'$', 0, 0x10, 0x00]),
        Err(RtspError::FrameTooLarge {
            channel: 0,
            size: 4096,
            limit: 2048
        })
    );
    let mut s = session();
    let huge = vec![b'A'; 20 * 1024];
    assert_eq!(
        s.feed(&huge),
        Err(RtspError::HeaderTooLarge { limit: 16 * 1024 })
    );
    let mut s = session();
    let big = b"ANNOUNCE rtsp://h/a/b RTSP/1.0\r\nCSeq: 3\r\nContent-Length: 1000000\r\n\r\n";
    assert!(matches!(s.feed(big), Err(RtspError::BodyTooLarge { .. })));
    assert!(output(&mut s).starts_with("RTSP/1.0 413 "));
}

#[test]
fn a_peer_that_floods_while_a_decision_is_pending_is_closed() {
    let mut s = session();
    let ann = request(
        "ANNOUNCE",
        "rtsp://h/live/cam",
        2,
        "Content-Type: application/sdp\r\n",
        SDP,
    );
    s.feed(&ann).unwrap();
    assert_eq!(events(&mut s).len(), 1);
    let junk = vec![b'$'; 200 * 1024];
    assert!(matches!(s.feed(&junk), Err(RtspError::Flooded { .. })));
}

#[test]
fn any_prefix_of_a_session_never_panics() {
    let mut all = request("OPTIONS", "rtsp://h/a", 1, "", "");
    all.extend(request(
        "ANNOUNCE",
        "rtsp://h/live/cam",
        2,
        "Content-Type: application/sdp\r\n",
        SDP,
    ));
    for len in 0..all.len() {
        let mut s = session();
        let _ = s.feed(&all[..len]);
        let mut s = session();
        for chunk in all[..len].chunks(7) {
            let _ = s.feed(chunk);
        }
    }
}
