//! Starting inputs for each target, built from what real peers send (the test RTMP client,
//! the RTSP messages ffmpeg writes, our own TS): the fuzzer mutates from valid sessions
//! instead of having to discover a handshake byte by byte. `scripts/fuzz.sh` writes them
//! into the corpus before a run; the corpus replay runs them too.

use edgerec::media::aac::AacConfig;
use edgerec::media::avc::AvcConfig;
use edgerec::media::{CodecParams, Frame, TrackKind, Tracks};
use edgerec::mux::ts::TsMuxer;
use edgerec::proto::rtmp::amf0::{self, Value};
use edgerec::proto::rtmp::client::ClientSession;
use edgerec::proto::rtmp::handshake::HANDSHAKE_BLOCK;

use super::rtsp::SDPS;
use super::ts::{AAC_ASC, AVC_RECORD};

/// A u16-length-prefixed piece, as [`super::Ops::piece`] reads it.
fn piece(out: &mut Vec<u8>, bytes: &[u8]) {
    for part in bytes.chunks(usize::from(u16::MAX)) {
        out.push(0);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
}

/// `piece` without the leading operation byte, for targets that read pieces only.
fn pieces(bytes: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in bytes.chunks(size) {
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

const KEY: &str = "venue1?token=abc";
const HVCC: &str = "01016000000090000000000078f000fcfdf8f800000f03a00001001840010c01\
ffff016000000300900000030000030078959809a10001002a42010101600000030090000003000003\
0078a003c08010e596566924caf0168080000003008000000c84a2000100074401c172b46240";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// FLV video and audio tag bodies as an encoder publishes them: sequence headers, two
/// GOPs of small pictures, AAC frames.
fn flv_tags(hevc: bool) -> Vec<(bool, u32, Vec<u8>)> {
    let mut tags = Vec::new();
    if hevc {
        // Enhanced RTMP: IsExHeader | keyframe, PacketTypeSequenceStart, "hvc1".
        let mut seq = vec![0x90, b'h', b'v', b'c', b'1'];
        seq.extend(hex(HVCC));
        tags.push((true, 0, seq));
    } else {
        let mut seq = vec![0x17, 0, 0, 0, 0];
        seq.extend_from_slice(&AVC_RECORD);
        tags.push((true, 0, seq));
    }
    tags.push((false, 0, vec![0xaf, 0, AAC_ASC[0], AAC_ASC[1]]));
    for i in 0..12u32 {
        let key = i % 6 == 0;
        let body = if hevc {
            let mut b = vec![
                if key { 0x91 } else { 0xa1 },
                b'h',
                b'v',
                b'c',
                b'1',
                0,
                0,
                0,
            ];
            b.extend(12u32.to_be_bytes());
            b.extend([if key { 0x26 } else { 0x02 }, 1]);
            b.extend([i as u8 + 1; 10]);
            b
        } else {
            let mut b = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 66];
            b.extend(11u32.to_be_bytes());
            b.push(if key { 0x65 } else { 0x41 });
            b.extend([i as u8 + 1; 10]);
            b
        };
        tags.push((true, i * 33, body));
        tags.push((false, i * 21, vec![0xaf, 1, 0x21, i as u8, 0x40]));
    }
    tags
}

/// The client's bytes from `connect` to `publish`, and the media after it.
fn rtmp_publish(hevc: bool) -> (Vec<u8>, Vec<u8>) {
    let mut c = ClientSession::new();
    c.connect("live", "rtmp://127.0.0.1:1935/live", hevc);
    c.set_chunk_size(4096);
    c.release_stream(KEY);
    c.fc_publish(KEY);
    c.create_stream();
    c.publish(1, KEY);
    let publish = c.take_output().to_vec();
    c.metadata(
        1,
        vec![
            ("width".into(), Value::Number(320.0)),
            ("encoder".into(), Value::String("obs-output module".into())),
        ],
    );
    for (video, ts, body) in flv_tags(hevc) {
        if video {
            c.video(1, ts, &body);
        } else {
            c.audio(1, ts, &body);
        }
    }
    c.fc_unpublish(KEY);
    c.delete_stream(1);
    (publish, c.take_output().to_vec())
}

fn rtmp_handshake() -> Vec<Vec<u8>> {
    let mut c = ClientSession::new();
    c.handshake_c0c1();
    let c0c1 = c.take_output();
    c.handshake_c2(&[0u8; HANDSHAKE_BLOCK]);
    let c2 = c.take_output();
    let mut seed = pieces(&c0c1, 700);
    seed.extend(pieces(&c2, 1536));
    vec![seed]
}

fn rtmp_session() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (hevc, answer) in [(false, b'A'), (true, b'A'), (false, b'R')] {
        let (publish, media) = rtmp_publish(hevc);
        let mut seed = Vec::new();
        piece(&mut seed, &publish);
        seed.push(answer);
        seed.push(b'O');
        piece(&mut seed, &media);
        seeds.push(seed);
    }
    seeds
}

fn rtmp_chunk() -> Vec<Vec<u8>> {
    let (publish, media) = rtmp_publish(false);
    let mut seed = vec![1];
    seed.extend(pieces(&publish, 300));
    seed.extend(pieces(&media, 1000));
    vec![seed]
}

fn amf0_seeds() -> Vec<Vec<u8>> {
    let connect = [
        Value::String("connect".into()),
        Value::Number(1.0),
        Value::Object(vec![
            ("app".into(), Value::String("live".into())),
            ("tcUrl".into(), Value::String("rtmp://h/live".into())),
            ("fpad".into(), Value::Boolean(false)),
            (
                "fourCcList".into(),
                Value::StrictArray(vec![Value::String("hvc1".into())]),
            ),
        ]),
        Value::Null,
        Value::Undefined,
        Value::EcmaArray(vec![("duration".into(), Value::Number(0.0))]),
        Value::Date {
            millis: 1.7e12,
            timezone: 0,
        },
        Value::LongString("x".repeat(70_000)),
    ];
    vec![amf0::encode_all(&connect)]
}

fn flv_demux() -> Vec<Vec<u8>> {
    [false, true]
        .into_iter()
        .map(|hevc| {
            let mut seed = Vec::new();
            for (video, ts, body) in flv_tags(hevc) {
                seed.push(u8::from(!video));
                seed.extend(((ts / 10) as u16).to_be_bytes());
                seed.extend((body.len() as u16).to_be_bytes());
                seed.extend(body);
            }
            seed
        })
        .collect()
}

fn codec_config() -> Vec<Vec<u8>> {
    let hvcc = hex(HVCC);
    let avc_sps = &AVC_RECORD[8..34];
    // The hvcC record's SPS: after the 23-byte header, the array count, the VPS array
    // (3-byte array header, 2-byte length, 24 bytes) and the SPS array's 5 header bytes.
    let hevc_sps = &hvcc[58..100];
    let tagged = |tag: u8, body: &[u8]| [&[tag][..], body].concat();
    vec![
        tagged(0, &AVC_RECORD),
        tagged(1, &hvcc),
        tagged(2, &AAC_ASC),
        tagged(3, avc_sps),
        tagged(4, avc_sps),
        tagged(5, hevc_sps),
        tagged(6, hevc_sps),
    ]
}

fn nal() -> Vec<Vec<u8>> {
    let mut seed = vec![4];
    for nal in [
        &AVC_RECORD[8..34],
        &AVC_RECORD[37..43],
        &[0x65, 1, 2, 3][..],
    ] {
        seed.extend((nal.len() as u32).to_be_bytes());
        seed.extend_from_slice(nal);
    }
    vec![seed]
}

/// Ops for `ts::mux`: all three track sets, two GOPs each.
fn ts_mux() -> Vec<Vec<u8>> {
    (0..3u8)
        .map(|tracks| {
            let mut seed = vec![tracks, 0x03, 0xe8, 0, 0];
            for i in 0..24u8 {
                let header = (i & 1) | if i % 12 == 0 { 2 } else { 0 } | (i % 3) << 2;
                seed.extend([header, 30, 0, 40]);
                seed.extend((0..40).map(|b| b + i + 1));
            }
            seed
        })
        .collect()
}

/// Two seconds of our own TS: H.264 + AAC.
fn ts_bytes() -> Vec<u8> {
    let tracks = Tracks {
        video: Some(CodecParams::H264(
            AvcConfig::parse(&AVC_RECORD).expect("avcC"),
        )),
        audio: Some(CodecParams::Aac(AacConfig::parse(&AAC_ASC).expect("ASC"))),
    };
    let mut muxer = TsMuxer::new(&tracks).expect("tracks");
    let mut out = Vec::new();
    muxer.write_tables(&mut out);
    for i in 0..100i64 {
        let key = i % 25 == 0;
        let mut data = 301u32.to_be_bytes().to_vec();
        data.push(if key { 0x65 } else { 0x41 });
        data.extend([0x5a; 300]);
        let video = Frame {
            kind: TrackKind::Video,
            dts: i * 1800,
            pts: i * 1800 + 3600,
            keyframe: key,
            data: data.into(),
        };
        muxer.write_frame(&video, &mut out).expect("video");
        let audio = Frame {
            kind: TrackKind::Audio,
            dts: i * 1920,
            pts: i * 1920,
            keyframe: true,
            data: vec![0x21; 20].into(),
        };
        muxer.write_frame(&audio, &mut out).expect("audio");
    }
    muxer.flush(&mut out);
    out
}

fn rtsp_request(method: &str, uri: &str, cseq: u32, headers: &str, body: &str) -> Vec<u8> {
    let mut r = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n{headers}");
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// An RTP packet: version 2, the marker bit, payload type, sequence, timestamp, SSRC.
fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend(seq.to_be_bytes());
    p.extend(ts.to_be_bytes());
    p.extend(0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// H.264 RTP payloads: SPS, PPS, an IDR in two FU-A fragments, a single-NAL P frame.
fn h264_payloads() -> Vec<(bool, u32, Vec<u8>)> {
    let mut out = vec![
        (false, 0, AVC_RECORD[8..34].to_vec()),
        (false, 0, AVC_RECORD[37..43].to_vec()),
    ];
    out.push((false, 0, [&[0x7c, 0x85][..], &[7; 30]].concat()));
    out.push((true, 0, [&[0x7c, 0x45][..], &[8; 30]].concat()));
    for i in 1..6u32 {
        out.push((true, i * 3000, [&[0x41][..], &[i as u8; 20]].concat()));
    }
    out
}

/// A sender report: NTP and RTP timestamps.
fn sender_report(rtp_ts: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend(0x1234_5678u32.to_be_bytes());
    p.extend(0xe9a0_0000_0000_0000u64.to_be_bytes());
    p.extend(rtp_ts.to_be_bytes());
    p.extend([0; 8]);
    p
}

fn rtsp_session() -> Vec<Vec<u8>> {
    let uri = "rtsp://127.0.0.1:8554/live/cam";
    let mut seed = Vec::new();
    piece(&mut seed, &rtsp_request("OPTIONS", uri, 1, "", ""));
    let sdp = format!("{}a=control:streamid=0\r\n", SDPS[0]);
    let announce = rtsp_request(
        "ANNOUNCE",
        uri,
        2,
        "Content-Type: application/sdp\r\n",
        &sdp,
    );
    piece(&mut seed, &announce);
    seed.push(b'A');
    let setup = rtsp_request(
        "SETUP",
        &format!("{uri}/streamid=0"),
        3,
        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n",
        "",
    );
    piece(&mut seed, &setup);
    piece(
        &mut seed,
        &rtsp_request("RECORD", uri, 4, "Session: fuzz\r\n", ""),
    );
    seed.push(b'O');
    let mut media = Vec::new();
    let mut interleave = |channel: u8, packet: &[u8]| {
        media.extend([b'$', channel]);
        media.extend((packet.len() as u16).to_be_bytes());
        media.extend_from_slice(packet);
    };
    interleave(1, &sender_report(0));
    for (seq, (marker, ts, payload)) in h264_payloads().into_iter().enumerate() {
        interleave(0, &rtp_packet(96, marker, seq as u16, ts, &payload));
    }
    piece(&mut seed, &media);
    piece(
        &mut seed,
        &rtsp_request("TEARDOWN", uri, 5, "Session: fuzz\r\n", ""),
    );
    vec![seed]
}

fn rtp() -> Vec<Vec<u8>> {
    let mut h264 = vec![0];
    let push = |seed: &mut Vec<u8>, rtcp: bool, packet: &[u8]| {
        seed.push(u8::from(rtcp));
        seed.extend((packet.len() as u16).to_be_bytes());
        seed.extend_from_slice(packet);
    };
    push(&mut h264, true, &sender_report(0));
    for (seq, (marker, ts, payload)) in h264_payloads().into_iter().enumerate() {
        push(
            &mut h264,
            false,
            &rtp_packet(96, marker, seq as u16, ts, &payload),
        );
    }
    let mut aac = vec![3];
    for i in 0..5u16 {
        // AU-headers-length 16 bits, one AU-header: size 13 bits, index 3 bits.
        let au = [0x21u8; 12];
        let header = (au.len() as u16) << 3;
        let payload = [&16u16.to_be_bytes()[..], &header.to_be_bytes(), &au].concat();
        push(
            &mut aac,
            false,
            &rtp_packet(97, true, i, u32::from(i) * 1024, &payload),
        );
    }
    vec![h264, aac]
}

/// Writes the seeds of target `name` into the folder `EDGEREC_FUZZ_SEEDS` names, if set
/// (`scripts/fuzz.sh` sets it for a first run of each target).
pub fn write_seeds_if_asked(name: &str) {
    let Some(dir) = std::env::var_os("EDGEREC_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create the seed folder");
    for (i, seed) in seeds(name).iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write a seed");
    }
}

/// Every seed of target `name`.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "rtmp_handshake" => rtmp_handshake(),
        "rtmp_chunk" => rtmp_chunk(),
        "rtmp_session" => rtmp_session(),
        "amf0" => amf0_seeds(),
        "flv_demux" => flv_demux(),
        "codec_config" => codec_config(),
        "nal" => nal(),
        "ts_mux" => ts_mux(),
        "ts_scan" => vec![[&[1][..], &pieces(&ts_bytes(), 1000)].concat()],
        "ts_demux" => vec![pieces(&ts_bytes(), 777)],
        "rtsp_session" => rtsp_session(),
        "rtp" => rtp(),
        "sdp" => SDPS.iter().map(|s| s.as_bytes().to_vec()).collect(),
        other => panic!("no fuzz target {other:?}"),
    }
}
