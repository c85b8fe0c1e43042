//! MPEG-TS targets: the muxer (every packet 188 bytes behind 0x47, continuity counters
//! continuous, and our demuxer and scanner read back what was written), the recovery
//! scanner (fed in any pieces it says the same as fed whole) and the demuxer.

use bytes::Bytes;
use edgerec::media::aac::AacConfig;
use edgerec::media::avc::AvcConfig;
use edgerec::media::{nal, CodecParams, Frame, Ticks, TrackKind, Tracks};
use edgerec::mux::ts::{TsMuxer, PACKET_SIZE};
use edgerec::mux::ts_demux::{DemuxEvent, TsDemuxer};
use edgerec::mux::ts_scan::{self, Scanner};

use super::Ops;

/// x264 640x360 parameter sets in an avcC record.
pub const AVC_RECORD: [u8; 43] = [
    1, 0x64, 0, 0x1e, 0xff, 0xe1, 0, 26, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f,
    0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2d,
    0x96, 1, 0, 6, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0,
];
/// AAC LC, 48 kHz, stereo.
pub const AAC_ASC: [u8; 2] = [0x11, 0x90];
/// Ticks of one 1024-sample AAC frame at 48 kHz.
const AAC_FRAME_TICKS: Ticks = 1920;

fn tracks(which: u8) -> Tracks {
    let video = CodecParams::H264(AvcConfig::parse(&AVC_RECORD).expect("valid avcC"));
    let audio = CodecParams::Aac(AacConfig::parse(&AAC_ASC).expect("valid ASC"));
    match which % 3 {
        0 => Tracks {
            video: Some(video),
            audio: Some(audio),
        },
        1 => Tracks {
            video: Some(video),
            audio: None,
        },
        _ => Tracks {
            video: None,
            audio: Some(audio),
        },
    }
}

/// Frames described by the fuzzer: each a header byte (track, keyframe, composition
/// offset), a decode-time step and a size. Payload bytes never hold a zero, as an encoder's
/// emulation prevention guarantees (Annex B start codes cannot appear inside a NAL).
fn frames(ops: &mut Ops, tracks: &Tracks) -> Vec<Frame> {
    let mut frames = Vec::new();
    let (mut video_dts, mut audio_dts) = (Ticks::from(ops.u16()) * 10, 0);
    let mut seen_video = false;
    while let Some(header) = ops.byte() {
        let step = Ticks::from(ops.byte().unwrap_or(0)) * 100;
        let size = usize::from(ops.u16() % 4000) + 1;
        let payload: Vec<u8> = (0..size)
            .map(|_| ops.byte().unwrap_or(0xab).max(1))
            .collect();
        let video = tracks.video.is_some() && (tracks.audio.is_none() || header & 1 == 0);
        if video {
            // The first picture is a keyframe, as every segment's is.
            let keyframe = header & 2 != 0 || !seen_video;
            seen_video = true;
            video_dts += step;
            let mut data = (size as u32 + 1).to_be_bytes().to_vec();
            data.push(if keyframe { 0x65 } else { 0x41 });
            data.extend_from_slice(&payload);
            frames.push(Frame {
                kind: TrackKind::Video,
                dts: video_dts,
                pts: video_dts + Ticks::from(header >> 2 & 7) * 3000,
                keyframe,
                data: data.into(),
            });
        } else {
            frames.push(Frame {
                kind: TrackKind::Audio,
                dts: audio_dts,
                pts: audio_dts,
                keyframe: true,
                data: Bytes::from(payload),
            });
            audio_dts += AAC_FRAME_TICKS;
        }
    }
    frames
}

/// A frame as compared after a round trip: NAL payloads instead of length prefixes.
type Comparable = (TrackKind, Ticks, Ticks, bool, Vec<Vec<u8>>);

fn comparable(f: &Frame) -> Comparable {
    let data = match f.kind {
        TrackKind::Video => nal::iter_length_prefixed(&f.data, 4)
            .map(|u| u.expect("well-formed access unit").to_vec())
            .collect(),
        TrackKind::Audio => vec![f.data.to_vec()],
    };
    (f.kind, f.dts, f.pts, f.keyframe, data)
}

/// Every packet 188 bytes behind 0x47; each PID's continuity counter steps by one on each
/// packet that carries payload.
fn assert_packets(ts: &[u8]) {
    assert_eq!(ts.len() % PACKET_SIZE, 0, "not whole packets");
    let mut counters = std::collections::HashMap::new();
    for (i, p) in ts.chunks(PACKET_SIZE).enumerate() {
        assert_eq!(p[0], 0x47, "packet {i} has no sync byte");
        let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
        if p[3] & 0x10 == 0 {
            continue;
        }
        let cc = p[3] & 0x0f;
        if let Some(last) = counters.insert(pid, cc) {
            assert_eq!(
                cc,
                (last + 1) & 0x0f,
                "pid {pid:#x}: continuity broken at packet {i}"
            );
        }
    }
}

pub fn mux(data: &[u8]) {
    let mut ops = Ops::new(data);
    let tracks = tracks(ops.byte().unwrap_or(0));
    let chunk = usize::from(ops.u16()) + 1;
    let frames = frames(&mut ops, &tracks);
    let mut muxer = TsMuxer::new(&tracks).expect("H.264/AAC tracks mux");
    let mut out = Vec::new();
    muxer.write_tables(&mut out);
    let mut written = Vec::new();
    for frame in &frames {
        let before = out.len();
        match muxer.write_frame(frame, &mut out) {
            Ok(()) => written.push(frame),
            Err(_) => assert_eq!(out.len(), before, "a refused frame left bytes behind"),
        }
    }
    muxer.flush(&mut out);
    assert_packets(&out);

    let mut demuxer = TsDemuxer::new();
    for piece in out.chunks(chunk) {
        demuxer.feed(piece).expect("our own TS demuxes");
    }
    demuxer.finish();
    let read: Vec<Comparable> = std::iter::from_fn(|| demuxer.poll())
        .filter_map(|e| match e {
            DemuxEvent::Frame(f) => Some(comparable(&f)),
            DemuxEvent::Tracks(_) => None,
        })
        .collect();
    for kind in [TrackKind::Video, TrackKind::Audio] {
        let want: Vec<_> = written
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| comparable(f))
            .collect();
        let got: Vec<_> = read.iter().filter(|f| f.0 == kind).cloned().collect();
        assert_eq!(got, want, "{kind:?} frames read back differ");
    }

    let whole = ts_scan::scan(&out, true);
    assert_eq!(whole.keep_len, out.len(), "the scanner cut our own segment");
    let count = |kind| written.iter().filter(|f| f.kind == kind).count() as u64;
    assert_eq!(whole.video.map_or(0, |s| s.frames), count(TrackKind::Video));
    assert_eq!(whole.audio.map_or(0, |s| s.frames), count(TrackKind::Audio));
}

/// The scanner says the same of bytes fed in any pieces as of the bytes fed whole.
pub fn scan(data: &[u8]) {
    let mut ops = Ops::new(data);
    let complete = ops.byte().unwrap_or(0) & 1 == 1;
    let mut pieces = Vec::new();
    let mut bytes = Vec::new();
    while !ops.is_empty() {
        let piece = ops.piece();
        pieces.push(piece);
        bytes.extend_from_slice(piece);
    }
    let whole = ts_scan::scan(&bytes, complete);
    assert!(whole.keep_len <= bytes.len() && whole.keep_len.is_multiple_of(PACKET_SIZE));
    let mut scanner = Scanner::new(complete);
    for piece in pieces {
        scanner.feed(piece);
    }
    assert_eq!(scanner.finish(), whole, "fed in pieces, the scan differs");
}

/// The demuxer over arbitrary bytes in arbitrary pieces.
pub fn demux(data: &[u8]) {
    let mut ops = Ops::new(data);
    let mut demuxer = TsDemuxer::with_max_pes_size(1 << 20);
    while !ops.is_empty() {
        let _ = demuxer.feed(ops.piece());
        while demuxer.poll().is_some() {}
    }
    demuxer.finish();
    while let Some(event) = demuxer.poll() {
        if let DemuxEvent::Frame(f) = event {
            assert!(f.kind == TrackKind::Video || f.pts == f.dts);
        }
    }
}
