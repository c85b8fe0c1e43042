//! Byte-level tests of [`super::ServerSession`], driven by the test client.

use super::*;
use crate::media::CodecParams;
use crate::proto::rtmp::client::ClientSession;
use crate::proto::rtmp::flv::{DemuxEvent, FlvDemuxer};
use crate::proto::rtmp::handshake::HANDSHAKE_BLOCK;

const AVC_RECORD: &str =
    "0142c00bffe100186742c00bd90141fb011000000300100000030140f142a48001000568cb83cb20";
const KEY: &str = "venue1?token=abc";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Client bytes up to and including `publish` (part A) and everything after (part B), as
/// OBS sends them.
fn obs_sequence() -> (Bytes, Bytes) {
    let mut c = ClientSession::new();
    c.handshake_c0c1();
    c.handshake_c2(&[0u8; HANDSHAKE_BLOCK]);
    c.connect("live", "rtmp://127.0.0.1:1935/live", false);
    c.set_chunk_size(4096);
    c.release_stream(KEY);
    c.fc_publish(KEY);
    c.create_stream();
    c.publish(1, KEY);
    let a = c.take_output();
    c.metadata(
        1,
        vec![
            ("width".into(), Value::Number(320.0)),
            ("encoder".into(), Value::String("obs-output module".into())),
        ],
    );
    let mut seq = vec![0x17, 0, 0, 0, 0];
    seq.extend(hex(AVC_RECORD));
    c.video(1, 0, &seq);
    c.audio(1, 0, &[0xAF, 0, 0x12, 0x10]);
    for i in 0..20u32 {
        let key = i % 10 == 0;
        let mut body = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 66];
        let size = if key { 10_000 } else { 300 + i as usize };
        body.extend((size as u32).to_be_bytes());
        body.push(if key { 0x65 } else { 0x41 });
        body.extend(std::iter::repeat_n(i as u8, size - 1));
        c.video(1, i * 33, &body);
        c.audio(1, i * 23, &[0xAF, 1, 0x21, i as u8]);
    }
    c.fc_unpublish(KEY);
    c.delete_stream(1);
    (a, c.take_output())
}

/// Feeds `a`, accepts any publish request, then feeds `b`, in pieces of `split` sizes.
fn run(a: &[u8], b: &[u8], mut split: impl FnMut() -> usize) -> (Vec<SessionEvent>, Bytes) {
    let mut s = ServerSession::new(Limits::default());
    let mut events = Vec::new();
    let mut output = BytesMut::new();
    for part in [a, b] {
        let mut rest = part;
        while !rest.is_empty() {
            let n = split().clamp(1, rest.len());
            let (piece, tail) = rest.split_at(n);
            s.feed(piece).unwrap();
            rest = tail;
            while let Some(e) = s.poll_event() {
                if let SessionEvent::PublishRequested { stream_id, .. } = e {
                    s.accept_publish(stream_id);
                }
                events.push(e);
            }
            output.extend_from_slice(&s.take_output());
        }
    }
    assert_eq!(s.bytes_received(), (a.len() + b.len()) as u64);
    (events, output.freeze())
}

#[test]
fn obs_sequence_whole_and_in_random_splits() {
    let (a, b) = obs_sequence();
    let (whole, out) = run(&a, &b, || usize::MAX);

    // The events: connect, publish, metadata, media, unpublish.
    assert_eq!(
        whole[0],
        SessionEvent::Connected {
            app: "live".into(),
            tc_url: Some("rtmp://127.0.0.1:1935/live".into())
        }
    );
    assert_eq!(
        whole[1],
        SessionEvent::PublishRequested {
            stream_id: 1,
            stream_key: KEY.into(),
            publish_type: "live".into()
        }
    );
    assert!(
        matches!(&whole[2], SessionEvent::Metadata { stream_id: 1, values } if values.len() == 2)
    );
    assert_eq!(
        whole.last(),
        Some(&SessionEvent::Unpublished { stream_id: 1 })
    );
    assert_eq!(whole.len(), 3 + 2 + 40 + 1);

    // The media demuxes.
    let mut demux = FlvDemuxer::new();
    let mut frames = 0;
    for e in &whole {
        let ev = match e {
            SessionEvent::Video {
                timestamp, data, ..
            } => demux.push_video(*timestamp, data.clone()),
            SessionEvent::Audio {
                timestamp, data, ..
            } => demux.push_audio(*timestamp, data.clone()),
            _ => continue,
        };
        match ev.unwrap() {
            Some(DemuxEvent::Frame(f)) => {
                frames += 1;
                if f.kind == crate::media::TrackKind::Video {
                    assert_eq!(f.pts - f.dts, 66 * 90);
                }
            }
            Some(DemuxEvent::Config(CodecParams::H264(c))) => {
                assert_eq!(c.resolution, Some((320, 240)))
            }
            Some(DemuxEvent::Config(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(frames, 40);

    // What OBS waits for.
    let mut client = ClientSession::new();
    client.feed(&out).unwrap();
    assert_eq!(client.s1().map(<[u8]>::len), Some(HANDSHAKE_BLOCK));
    assert_eq!(
        client.status_codes(),
        [
            "NetConnection.Connect.Success",
            "NetStream.Publish.Start", // onFCPublish
            "NetStream.Publish.Start",
        ]
    );
    assert_eq!(client.created_stream_id(), Some(1));

    // Random small splits give the same events.
    let mut seed = 42u32;
    for _ in 0..3 {
        let (split, split_out) = run(&a, &b, || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + (seed % 7) as usize
        });
        assert_eq!(split, whole);
        let mut client = ClientSession::new();
        client.feed(&split_out).unwrap();
        assert_eq!(client.status_codes().len(), 3);
        assert_eq!(client.created_stream_id(), Some(1));
    }
}

/// A session past the handshake and connect, with stream 1 created.
fn connected(limits: Limits) -> (ServerSession, ClientSession) {
    let mut s = ServerSession::new(limits);
    let mut c = ClientSession::new();
    c.handshake_c0c1();
    c.handshake_c2(&[0u8; HANDSHAKE_BLOCK]);
    c.connect("live", "rtmp://h/live", true);
    c.create_stream();
    s.feed(&c.take_output()).unwrap();
    c.feed(&s.take_output()).unwrap();
    while s.poll_event().is_some() {}
    (s, c)
}

fn publishing() -> (ServerSession, ClientSession) {
    let (mut s, mut c) = connected(Limits::default());
    c.publish(1, "k");
    s.feed(&c.take_output()).unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(SessionEvent::PublishRequested { stream_id: 1, .. })
    ));
    s.accept_publish(1);
    c.feed(&s.take_output()).unwrap();
    (s, c)
}

#[test]
fn fourcc_list_is_negotiated() {
    let (_, c) = connected(Limits::default());
    let result = &c.replies()[0];
    assert_eq!(result.name, "_result");
    let Value::StrictArray(list) = result.object.get("fourCcList").unwrap() else {
        panic!("no fourCcList");
    };
    assert_eq!(list, &[Value::String("hvc1".into())]);
    assert_eq!(
        result.object.get("capabilities"),
        Some(&Value::Number(31.0))
    );
}

#[test]
fn extended_timestamps_reach_events() {
    let (mut s, mut c) = publishing();
    let body = vec![0x27; 5000];
    c.video(1, 0x00FF_FFFF, &body);
    c.video(1, 0x0200_0000, &body);
    c.audio(1, 0xFFFF_FFFF, &[0xAF, 1, 0]);
    s.feed(&c.take_output()).unwrap();
    let ts: Vec<u32> = std::iter::from_fn(|| s.poll_event())
        .map(|e| match e {
            SessionEvent::Video {
                timestamp, data, ..
            } => {
                assert_eq!(data.len(), 5000);
                timestamp
            }
            SessionEvent::Audio { timestamp, .. } => timestamp,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ts, [0x00FF_FFFF, 0x0200_0000, 0xFFFF_FFFF]);
}

#[test]
fn hostile_chunk_sizes_are_rejected() {
    for n in [0, 1 << 31, 16 * 1024 * 1024 + 1] {
        let (mut s, mut c) = connected(Limits::default());
        c.set_chunk_size(n);
        assert!(
            matches!(s.feed(&c.take_output()), Err(RtmpError::Chunk(_))),
            "chunk size {n}"
        );
    }
}

#[test]
fn oversized_message_is_rejected() {
    let limits = Limits {
        max_message_size: 10_000,
        ..Limits::default()
    };
    let (mut s, mut c) = connected(limits);
    c.raw_message(9, 1, 0, &[0; 10_001]);
    let err = s.feed(&c.take_output()).unwrap_err();
    assert!(matches!(
        err,
        RtmpError::Chunk(ChunkError::MessageTooLarge { length: 10_001, .. })
    ));
}

#[test]
fn media_may_be_large_only_once_a_publish_was_requested() {
    // Before publish: a 1 MiB video message is refused at its header.
    let (mut s, mut c) = connected(Limits::default());
    c.raw_message(9, 1, 0, &vec![0x17; 1024 * 1024]);
    let err = s.feed(&c.take_output()).unwrap_err();
    assert!(
        matches!(
            err,
            RtmpError::Chunk(ChunkError::MessageTooLarge { limit: 65_536, .. })
        ),
        "{err}"
    );
    // After a refused publish, media is held to the small limit again.
    let (mut s, mut c) = connected(Limits::default());
    c.publish(1, "k");
    s.feed(&c.take_output()).unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(SessionEvent::PublishRequested { stream_id: 1, .. })
    ));
    s.reject_publish(1, "NetStream.Publish.Unauthorized", "no");
    c.video(1, 0, &vec![0x17; 1024 * 1024]);
    assert!(matches!(
        s.feed(&c.take_output()),
        Err(RtmpError::Chunk(ChunkError::MessageTooLarge { .. }))
    ));
    // An accepted publish takes frames up to the message limit.
    let (mut s, mut c) = publishing();
    c.video(1, 0, &vec![0x17; 1024 * 1024]);
    s.feed(&c.take_output()).unwrap();
}

#[test]
fn absurd_amf_nesting_is_rejected() {
    let (mut s, mut c) = connected(Limits::default());
    let mut payload = vec![2, 0, 4];
    payload.extend(b"evil");
    // 10,000 levels in 40 KB: under the command size limit, so the depth limit speaks.
    for _ in 0..10_000 {
        payload.extend([3, 0, 1, b'a']);
    }
    c.raw_message(20, 0, 0, &payload);
    assert!(matches!(
        s.feed(&c.take_output()),
        Err(RtmpError::Message(_))
    ));
}

#[test]
fn protocol_order_violations() {
    // publish before connect.
    let mut s = ServerSession::new(Limits::default());
    let mut c = ClientSession::new();
    c.handshake_c0c1();
    c.handshake_c2(&[0; HANDSHAKE_BLOCK]);
    c.publish(1, "k");
    assert!(matches!(
        s.feed(&c.take_output()),
        Err(RtmpError::NotConnected { .. })
    ));

    // publish on a stream that was not created.
    let (mut s, mut c) = connected(Limits::default());
    c.publish(7, "k");
    assert!(matches!(
        s.feed(&c.take_output()),
        Err(RtmpError::UnknownStream { stream_id: 7, .. })
    ));

    // media on a created but idle stream.
    let (mut s, mut c) = connected(Limits::default());
    c.video(1, 0, &[0x17, 0, 0, 0, 0]);
    assert!(matches!(
        s.feed(&c.take_output()),
        Err(RtmpError::MediaOnIdleStream { stream_id: 1, .. })
    ));

    // random bytes instead of a handshake.
    let mut s = ServerSession::new(Limits::default());
    let junk: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    assert!(matches!(s.feed(&junk), Err(RtmpError::Handshake(_))));
}

#[test]
fn media_before_accept_is_dropped_and_reject_replies_error() {
    let (mut s, mut c) = connected(Limits::default());
    c.publish(1, "bad");
    c.video(1, 0, &[0x17, 0, 0, 0, 0]);
    c.metadata(1, vec![]);
    s.feed(&c.take_output()).unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(SessionEvent::PublishRequested { .. })
    ));
    assert!(s.poll_event().is_none());
    s.reject_publish(1, "NetStream.Publish.BadName", "unknown key");
    c.feed(&s.take_output()).unwrap();
    assert_eq!(
        c.status_codes().last().map(String::as_str),
        Some("NetStream.Publish.BadName")
    );
    let status = c.replies().last().unwrap();
    assert_eq!(
        status.args[0].get("level"),
        Some(&Value::String("error".into()))
    );
    // Accepting after rejecting does nothing.
    s.accept_publish(1);
    assert!(s.take_output().is_empty());
}

#[test]
fn ping_ack_play_and_unpublish_once() {
    let (mut s, mut c) = publishing();
    // Ping.
    c.raw_message(4, 0, 0, &[0, 6, 0, 0, 0, 9]);
    // Window ack size 1000, then 2000 bytes of media.
    c.raw_message(5, 0, 0, &1000u32.to_be_bytes());
    s.feed(&c.take_output()).unwrap();
    c.video(1, 0, &[0x27; 2000]);
    s.feed(&c.take_output()).unwrap();
    c.feed(&s.take_output()).unwrap();
    let total = s.bytes_received() as u32;
    assert!(c
        .control_messages()
        .contains(&Message::UserControl(UserControl::PingResponse(9))));
    assert!(c
        .control_messages()
        .contains(&Message::Acknowledgement(total)));
    // play is refused.
    c.raw_message(
        20,
        1,
        0,
        &crate::proto::rtmp::amf0::encode_all(&[
            Value::String("play".into()),
            Value::Number(0.0),
            Value::Null,
            Value::String("k".into()),
        ]),
    );
    s.feed(&c.take_output()).unwrap();
    c.feed(&s.take_output()).unwrap();
    assert_eq!(
        c.status_codes().last().map(String::as_str),
        Some("NetStream.Play.Failed")
    );
    // FCUnpublish then deleteStream: one Unpublished; late media dropped.
    c.fc_unpublish("k");
    c.video(1, 40, &[0x27, 1, 0, 0, 0]);
    c.delete_stream(1);
    s.feed(&c.take_output()).unwrap();
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Unpublished { .. }))
            .count(),
        1
    );
    assert!(events
        .iter()
        .all(|e| !matches!(e, SessionEvent::Video { timestamp: 40, .. })));
}

#[test]
fn amf3_command_envelope_connects() {
    let mut s = ServerSession::new(Limits::default());
    let mut c = ClientSession::new();
    c.handshake_c0c1();
    c.handshake_c2(&[0; HANDSHAKE_BLOCK]);
    let mut payload = vec![0];
    payload.extend(crate::proto::rtmp::amf0::encode_all(&[
        Value::String("connect".into()),
        Value::Number(1.0),
        Value::Object(vec![("app".into(), Value::String("a".into()))]),
    ]));
    c.raw_message(17, 0, 0, &payload);
    s.feed(&c.take_output()).unwrap();
    assert_eq!(
        s.poll_event(),
        Some(SessionEvent::Connected {
            app: "a".into(),
            tc_url: None
        })
    );
}

#[test]
fn mutated_streams_never_panic() {
    let (a, b) = obs_sequence();
    let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let mut seed = 7u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..300 {
        let mut bytes = whole.clone();
        // Keep the handshake intact so the chunk layer is what gets exercised.
        let start = 1 + 2 * HANDSHAKE_BLOCK;
        for _ in 0..1 + next() % 8 {
            let at = start + next() as usize % (bytes.len() - start);
            bytes[at] = next() as u8;
        }
        let mut s = ServerSession::new(Limits::default());
        let mut demux = FlvDemuxer::new();
        for piece in bytes.chunks(1 + next() as usize % 512) {
            if s.feed(piece).is_err() {
                break;
            }
            while let Some(e) = s.poll_event() {
                match e {
                    SessionEvent::PublishRequested { stream_id, .. } => s.accept_publish(stream_id),
                    SessionEvent::Video {
                        timestamp, data, ..
                    } => {
                        let _ = demux.push_video(timestamp, data);
                    }
                    SessionEvent::Audio {
                        timestamp, data, ..
                    } => {
                        let _ = demux.push_audio(timestamp, data);
                    }
                    _ => {}
                }
            }
        }
    }
}
