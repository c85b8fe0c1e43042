//! Unit tests of the MPEG-TS demuxer: round trips of segments written by
//! [`crate::mux::ts::TsMuxer`], records rebuilt from other encoders' streams, 33-bit
//! timestamp unwrapping, parameter-set changes, single-track streams and damaged input.
use super::*;
use crate::media::avc::tests::{hex, AVCC_1080};
use crate::mux::ts::tests::h264_tracks;
use crate::mux::ts::{TsMuxer, AUDIO_PID, VIDEO_PID};

/// x265 1080p `hvcC` (the record of the `hevc.rs` tests).
const HVCC_1080: &str = "01016000000090000000000078f000fcfdf8f800000f03a00001001840010c01\
    ffff016000000300900000030000030078959809a10001002a42010101600000030090000003000003\
    0078a003c08010e596566924caf0168080000003008000000c84a2000100074401c172b46240";

fn aac() -> AacConfig {
    AacConfig::parse(&[0x12, 0x10]).unwrap() // AAC-LC 44.1 kHz stereo
}

fn avc_tracks(video: bool, audio: bool) -> Tracks {
    Tracks {
        video: video.then(|| CodecParams::H264(AvcConfig::parse(&hex(AVCC_1080)).unwrap())),
        audio: audio.then(|| CodecParams::Aac(aac())),
    }
}

fn hevc_tracks(audio: bool) -> Tracks {
    Tracks {
        video: Some(CodecParams::H265(
            HevcConfig::parse(&hex(HVCC_1080)).unwrap(),
        )),
        audio: audio.then(|| CodecParams::Aac(aac())),
    }
}

/// A NAL unit: `header` then deterministic bytes that are never zero.
fn unit(header: &[u8], seed: usize, len: usize) -> Vec<u8> {
    let body = (0..len).map(|j| ((seed * 31 + j * 7) % 251 + 1) as u8);
    header.iter().copied().chain(body).collect()
}

fn length_prefixed(units: &[Vec<u8>]) -> Bytes {
    let mut out = Vec::new();
    for u in units {
        out.extend_from_slice(&(u.len() as u32).to_be_bytes());
        out.extend_from_slice(u);
    }
    out.into()
}

fn audio_frame(dts: Ticks, seed: usize, size: usize) -> Frame {
    Frame {
        kind: TrackKind::Audio,
        dts,
        pts: dts,
        keyframe: true,
        data: unit(&[], seed, size).into(),
    }
}

/// `n` frame periods from `start`: video at 25 fps with B-frame style pts, a keyframe
/// every 12 (with an SEI first), frame 5 of 70 000 bytes (an unbounded PES); AAC
/// every 1024 samples. In dts order.
fn frames(hevc: bool, start: Ticks, n: i64, video: bool, audio: bool) -> Vec<Frame> {
    let ticks = aac().frame_ticks();
    let mut out = Vec::new();
    let mut next_audio = start;
    let mut k = 0;
    for i in 0..n {
        let dts = start + i * 3600;
        while audio && next_audio <= dts {
            out.push(audio_frame(next_audio, k, 100 + (k * 37) % 300));
            next_audio += ticks;
            k += 1;
        }
        if !video {
            continue;
        }
        let key = i % 12 == 0;
        let seed = i as usize;
        let size = if i == 5 {
            70_000
        } else {
            50 + (seed * 997) % 6000
        };
        let (sei, idr, slice): (&[u8], &[u8], &[u8]) = if hevc {
            (&[0x4e, 0x01], &[0x26, 0x01], &[0x02, 0x01])
        } else {
            (&[0x06], &[0x65], &[0x41])
        };
        let units = if key {
            vec![unit(sei, seed, 20), unit(idr, seed, size)]
        } else {
            vec![unit(slice, seed, size), unit(slice, seed + 1, 30)]
        };
        out.push(Frame {
            kind: TrackKind::Video,
            dts,
            pts: dts + [7200, 0, 3600][(i % 3) as usize],
            keyframe: key,
            data: length_prefixed(&units),
        });
    }
    out
}

fn mux_into(m: &mut TsMuxer, frames: &[Frame], out: &mut Vec<u8>) {
    m.write_tables(out);
    for f in frames {
        m.write_frame(f, out).unwrap();
    }
    m.flush(out);
}

fn mux(tracks: &Tracks, frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    mux_into(&mut TsMuxer::new(tracks).unwrap(), frames, &mut out);
    out
}

fn drain(d: &mut TsDemuxer) -> Vec<DemuxEvent> {
    std::iter::from_fn(|| d.poll()).collect()
}

/// Feeds `buf` in `chunk`-byte pieces, then finishes; returns events and errors.
fn demux(d: &mut TsDemuxer, buf: &[u8], chunk: usize) -> (Vec<DemuxEvent>, Vec<DemuxError>) {
    let errors = buf.chunks(chunk).filter_map(|c| d.feed(c).err()).collect();
    d.finish();
    (drain(d), errors)
}

fn split(events: &[DemuxEvent]) -> (Vec<Tracks>, Vec<Frame>, Vec<Frame>) {
    let (mut tracks, mut video, mut audio) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        match e {
            DemuxEvent::Tracks(t) => tracks.push(t.clone()),
            DemuxEvent::Frame(f) if f.kind == TrackKind::Video => video.push(f.clone()),
            DemuxEvent::Frame(f) => audio.push(f.clone()),
        }
    }
    (tracks, video, audio)
}

type Comparable = (TrackKind, Ticks, Ticks, bool, Vec<Vec<u8>>);

/// A frame as compared: NAL payloads instead of the length-prefixed bytes.
fn comparable(f: &Frame) -> Comparable {
    let data = match f.kind {
        TrackKind::Video => nal::iter_length_prefixed(&f.data, 4)
            .map(|u| u.unwrap().to_vec())
            .collect(),
        TrackKind::Audio => vec![f.data.to_vec()],
    };
    (f.kind, f.dts, f.pts, f.keyframe, data)
}

fn comparables<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<Comparable> {
    frames.into_iter().map(comparable).collect()
}

fn of_kind(frames: &[Frame], kind: TrackKind) -> Vec<Comparable> {
    comparables(frames.iter().filter(|f| f.kind == kind))
}

/// Asserts the demuxed frames of each kind are the first ones of `sent`.
fn assert_prefix(sent: &[Frame], video: &[Frame], audio: &[Frame]) {
    for (kind, got) in [(TrackKind::Video, video), (TrackKind::Audio, audio)] {
        let want = of_kind(sent, kind);
        assert!(got.len() <= want.len());
        assert_eq!(comparables(got), want[..got.len()], "{kind:?}");
    }
}

fn round_trip(tracks: &Tracks, sent: &[Frame]) -> Tracks {
    let buf = mux(tracks, sent);
    let mut d = TsDemuxer::new();
    let (events, errors) = demux(&mut d, &buf, 1000);
    assert_eq!(errors, []);
    assert!(matches!(events.first(), Some(DemuxEvent::Tracks(_))));
    let (got_tracks, video, audio) = split(&events);
    assert_eq!(got_tracks.len(), 1, "one Tracks event");
    let got = got_tracks.into_iter().next().unwrap();
    assert_eq!(got.video.is_some(), tracks.video.is_some());
    assert_eq!(got.audio.is_some(), tracks.audio.is_some());
    assert_eq!(comparables(&video), of_kind(sent, TrackKind::Video));
    assert_eq!(comparables(&audio), of_kind(sent, TrackKind::Audio));
    assert_eq!(d.stats(), DemuxStats::default());
    assert_eq!(&got, d.tracks());
    got
}

#[test]
fn h264_aac_round_trip() {
    let sent = frames(false, 0, 60, true, true);
    let got = round_trip(&avc_tracks(true, true), &sent);
    let Some(CodecParams::H264(v)) = got.video else {
        panic!("not h264")
    };
    let original = AvcConfig::parse(&hex(AVCC_1080)).unwrap();
    assert_eq!((&v.sps, &v.pps), (&original.sps, &original.pps));
    assert_eq!(v.nal_length_size, 4);
    assert_eq!(v.resolution, Some((1920, 1080)));
    // Same bytes x264 wrote, high-profile extension (4:2:0, 8 bit) included.
    assert_eq!(&v.record[..], &hex(AVCC_1080)[..]);
    assert_eq!(got.audio, Some(CodecParams::Aac(aac())));
}

#[test]
fn h265_aac_round_trip() {
    let sent = frames(true, 90_000, 60, true, true);
    let got = round_trip(&hevc_tracks(true), &sent);
    let Some(CodecParams::H265(v)) = got.video else {
        panic!("not h265")
    };
    let original = HevcConfig::parse(&hex(HVCC_1080)).unwrap();
    assert_eq!(
        (&v.vps, &v.sps, &v.pps),
        (&original.vps, &original.sps, &original.pps)
    );
    assert_eq!(v.resolution, original.resolution);
    assert_eq!(v.resolution, Some((1920, 1080)));
    // Profile/tier/level, chroma, depths and temporal fields as x265 wrote them.
    assert_eq!(&v.record[..], &hex(HVCC_1080)[..]);
    assert_eq!(got.audio, Some(CodecParams::Aac(aac())));
}

#[test]
fn rebuilt_records_from_other_encoders() {
    // x264 baseline: no high-profile extension.
    let sps = Bytes::from(hex("6742c00dd90150878888c044000003000400000300c83c50a920"));
    let pps = Bytes::from(hex("68ce3c80"));
    let Ok(Some(c)) =
        AvcConfig::from_parameter_sets(std::slice::from_ref(&sps), std::slice::from_ref(&pps))
    else {
        panic!("baseline record")
    };
    assert_eq!(c.resolution, Some((322, 242)));
    assert_eq!(c.record.len(), 6 + 2 + sps.len() + 1 + 2 + pps.len());
    // x264 High 4:4:4: extension with chroma_format_idc 3.
    let sps = Bytes::from(hex(
        "67f4001e919b281405ff1380880000030008000003019078b16cb0",
    ));
    let Ok(Some(c)) = AvcConfig::from_parameter_sets(&[sps], std::slice::from_ref(&pps)) else {
        panic!("4:4:4 record")
    };
    assert_eq!(c.profile_idc, 244);
    assert!(AvcConfig::from_parameter_sets(&[], &[pps])
        .unwrap()
        .is_none());
    // x265 with two temporal sub-layers: sub-layer flags skipped to reach the depths.
    let sps: String = "42010201600000030090000003000003003c0000a00a480f9c92659598acd24995e0\
        2d010000030001000003001908"
        .split_whitespace()
        .collect();
    let info = crate::media::hevc::sps_info(&hex(&sps)).unwrap();
    assert_eq!(
        (info.max_sub_layers_minus1, info.chroma_and_depth),
        (1, (1, 0, 0))
    );
    assert_eq!(info.general_ptl[0], 0x01); // Main profile
    assert!(crate::media::hevc::sps_info(&hex("420101")).is_err());
}

#[test]
fn timestamps_unwrap_across_33_bits_and_segments() {
    let start = (1 << 33) - TS_TIMESTAMP_OFFSET - 20 * 3600;
    let sent = frames(false, start, 60, true, true);
    let (a, b) = sent.split_at(sent.len() / 2);
    let mut m = TsMuxer::new(&avc_tracks(true, true)).unwrap();
    let (mut seg_a, mut seg_b) = (Vec::new(), Vec::new());
    mux_into(&mut m, a, &mut seg_a);
    mux_into(&mut m, b, &mut seg_b);
    let mut d = TsDemuxer::new();
    let (mut events, errors) = demux(&mut d, &seg_a, 4096);
    assert_eq!(errors, []);
    let (more, errors) = demux(&mut d, &seg_b, 777);
    assert_eq!(errors, []);
    events.extend(more);
    let (tracks, video, audio) = split(&events);
    assert_eq!(tracks.len(), 1);
    assert_eq!(comparables(&video), of_kind(&sent, TrackKind::Video));
    assert_eq!(comparables(&audio), of_kind(&sent, TrackKind::Audio));
    assert!(
        video.last().unwrap().dts + TS_TIMESTAMP_OFFSET > 1 << 33,
        "wrapped"
    );
    for list in [&video, &audio] {
        assert!(list.windows(2).all(|w| w[0].dts < w[1].dts));
    }
    // Media times before the offset come back negative.
    let sent = frames(false, -7200, 3, true, false);
    let (events, _) = demux(
        &mut TsDemuxer::new(),
        &mux(&avc_tracks(true, false), &sent),
        188,
    );
    let (_, video, _) = split(&events);
    assert_eq!(video.first().map(|f| f.dts), Some(-7200));
}

#[test]
fn parameter_set_change_emits_tracks_before_the_frame() {
    // Two keyframes (identical SPS/PPS repeated) per session, then a new encoder.
    let first = frames(false, 0, 24, true, false);
    let second = frames(false, 24 * 3600, 24, true, false);
    let mut buf = mux(&avc_tracks(true, false), &first);
    mux_into(
        &mut TsMuxer::new(&h264_tracks(false)).unwrap(),
        &second,
        &mut buf,
    );
    let mut d = TsDemuxer::new();
    let (events, errors) = demux(&mut d, &buf, 1000);
    assert_eq!(errors, []);
    let at: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, DemuxEvent::Tracks(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at, [0, 25]);
    let (tracks, video, _) = split(&events);
    assert_eq!(
        tracks[0].video.as_ref().unwrap().resolution(),
        Some((1920, 1080))
    );
    assert_eq!(
        tracks[1].video.as_ref().unwrap().resolution(),
        Some((640, 360))
    );
    let (Some(CodecParams::H264(new)), Some(CodecParams::H264(sent_config))) =
        (&tracks[1].video, &h264_tracks(false).video)
    else {
        panic!("h264 tracks")
    };
    assert_eq!((&new.sps, &new.pps), (&sent_config.sps, &sent_config.pps));
    assert!(tracks.iter().all(|t| t.audio.is_none()));
    let DemuxEvent::Frame(after) = &events[26] else {
        panic!("frame after tracks")
    };
    assert_eq!((after.dts, after.keyframe), (24 * 3600, true));
    let sent: Vec<Frame> = first.into_iter().chain(second).collect();
    assert_eq!(comparables(&video), of_kind(&sent, TrackKind::Video));
    // The same parameter sets again (a third session like the first): one event.
    let third = frames(false, 48 * 3600, 13, true, false);
    let mut d2 = TsDemuxer::new();
    let mut buf = mux(&avc_tracks(true, false), &third[..12]);
    mux_into(
        &mut TsMuxer::new(&avc_tracks(true, false)).unwrap(),
        &third[12..],
        &mut buf,
    );
    let (events, _) = demux(&mut d2, &buf, 1000);
    assert_eq!(split(&events).0.len(), 1);
}

#[test]
fn audio_only_and_video_only_streams() {
    let got = round_trip(&avc_tracks(false, true), &frames(false, 0, 40, false, true));
    assert_eq!(got.video, None);
    let got = round_trip(&avc_tracks(true, false), &frames(false, 0, 40, true, false));
    assert_eq!(got.audio, None);
    let got = round_trip(&hevc_tracks(false), &frames(true, 0, 14, true, false));
    assert!(matches!(got.video, Some(CodecParams::H265(_))));
}

/// Offsets of the PUSI packets on `pid`.
fn pes_starts(buf: &[u8], pid: u16) -> Vec<usize> {
    (0..buf.len() / PACKET_SIZE)
        .map(|i| i * PACKET_SIZE)
        .filter(|&o| {
            let p = &buf[o..o + PACKET_SIZE];
            p[1] & 0x40 != 0 && ((u16::from(p[1] & 0x1f) << 8) | u16::from(p[2])) == pid
        })
        .collect()
}

#[test]
fn garbage_is_an_error_or_dropped_and_earlier_frames_survive() {
    let sent = frames(false, 0, 40, true, true);
    let buf = mux(&avc_tracks(true, true), &sent);

    // Random bytes: lost sync at byte 0, sticky until finish, nothing emitted.
    let mut x = 12345u32;
    let mut random = || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    };
    let mut noise: Vec<u8> = (0..5000).map(|_| random()).collect();
    noise[0] = 0x12;
    let mut d = TsDemuxer::new();
    assert_eq!(
        d.feed(&noise),
        Err(DemuxError::LostSync {
            offset: 0,
            found: 0x12
        })
    );
    assert!(matches!(
        d.feed(&buf),
        Err(DemuxError::LostSync { offset: 0, .. })
    ));
    d.finish();
    assert_eq!(d.poll(), None);
    // After finish the same demuxer takes a clean input again.
    let (events, errors) = demux(&mut d, &buf, 5000);
    assert_eq!(errors, []);
    assert_eq!(split(&events).1.len(), 40);

    // Not aligned to 188.
    let mut shifted = vec![0u8; 5];
    shifted.extend_from_slice(&buf);
    let (events, errors) = demux(&mut TsDemuxer::new(), &shifted, 1000);
    assert!(matches!(
        errors[0],
        DemuxError::LostSync {
            offset: 0,
            found: 0
        }
    ));
    assert!(events.is_empty());

    // Garbage in the middle: error names its offset, frames before it come out.
    let cut = 600 * PACKET_SIZE;
    let mut dirty = buf[..cut].to_vec();
    dirty.extend_from_slice(&[0xaa; 100]);
    dirty.extend_from_slice(&buf[cut..]);
    let (events, errors) = demux(&mut TsDemuxer::new(), &dirty, 1000);
    assert_eq!(
        errors[0],
        DemuxError::LostSync {
            offset: cut as u64,
            found: 0xaa
        }
    );
    assert!(
        errors[0].to_string().contains("byte 112800"),
        "{}",
        errors[0]
    );
    let (tracks, video, audio) = split(&events);
    assert_eq!(tracks.len(), 1);
    assert!(
        video.len() > 5 && audio.len() > 5,
        "{} {}",
        video.len(),
        audio.len()
    );
    assert_prefix(&sent, &video, &audio);

    // Truncated last packet: discarded, everything before it comes out.
    let (events, errors) = demux(&mut TsDemuxer::new(), &buf[..buf.len() - 100], 1000);
    assert_eq!(errors, []);
    let (_, video, audio) = split(&events);
    assert_eq!(video.len(), 40);
    assert!(audio.len() >= of_kind(&sent, TrackKind::Audio).len() - 8);
    assert_prefix(&sent, &video, &audio);

    // Cut inside a bounded video PES: that access unit is dropped, counted.
    let starts = pes_starts(&buf, VIDEO_PID);
    let mut d = TsDemuxer::new();
    let (events, errors) = demux(&mut d, &buf[..starts[30] + 2 * PACKET_SIZE], 1000);
    assert_eq!(errors, []);
    let (_, video, audio) = split(&events);
    assert_eq!(video.len(), 30);
    assert_eq!(d.dropped_frames(), 1);
    assert_prefix(&sent, &video, &audio);
    // Cut inside the unbounded one (frame 5, 70 000 bytes): kept, as cut.
    let (events, _) = demux(&mut TsDemuxer::new(), &buf[..starts[6] - PACKET_SIZE], 1000);
    let (_, video, _) = split(&events);
    assert_eq!(video.len(), 6);
    assert!(
        video[5].data.len()
            < sent
                .iter()
                .filter(|f| f.kind == TrackKind::Video)
                .nth(5)
                .unwrap()
                .data
                .len()
    );

    // Oversized PES: error naming pid and offset, dropped, later frames still come.
    let mut d = TsDemuxer::with_max_pes_size(20_000);
    let (events, errors) = demux(&mut d, &buf, 1000);
    assert_eq!(
        errors,
        [DemuxError::PesTooLarge {
            offset: starts[5] as u64,
            pid: VIDEO_PID,
            max: 20_000
        }]
    );
    let (_, video, audio) = split(&events);
    let mut want = of_kind(&sent, TrackKind::Video);
    want.remove(5);
    assert_eq!(comparables(&video), want);
    assert_eq!(comparables(&audio), of_kind(&sent, TrackKind::Audio));
    assert_eq!(d.stats().dropped_pes, 1);
    assert_eq!(MAX_PES_SIZE, 16 * 1024 * 1024);

    // Random damage anywhere: never a panic.
    for round in 0..150 {
        let mut b = buf.clone();
        for _ in 0..(1 + round % 30) {
            let i = (usize::from(random()) << 8 | usize::from(random())) * 7 % b.len();
            b[i] = random();
        }
        let mut d = TsDemuxer::new();
        let _ = demux(&mut d, &b, 1 + round * 37);
    }
    // Packets with sync bytes but random content, on our PIDs, after valid tables.
    let mut b = buf[..2 * PACKET_SIZE].to_vec();
    for i in 0..400 {
        let mut p: Vec<u8> = (0..PACKET_SIZE).map(|_| random()).collect();
        p[0] = 0x47;
        p[1] = (p[1] & 0xe0) | 0x01;
        p[2] = if i % 2 == 0 { 0x00 } else { 0x01 };
        b.extend_from_slice(&p);
    }
    let _ = demux(&mut TsDemuxer::new(), &b, 188);
}

/// Packetizes one PES on `pid`, padding the last packet with stuffing.
fn packetize(pid: u16, pes: &[u8], out: &mut Vec<u8>) {
    for (i, chunk) in pes.chunks(184).enumerate() {
        let pusi = if i == 0 { 0x40 } else { 0 };
        out.extend_from_slice(&[0x47, pusi | (pid >> 8) as u8, pid as u8]);
        if chunk.len() == 184 {
            out.push(0x10 | (i as u8 & 0x0f));
        } else {
            out.push(0x30 | (i as u8 & 0x0f));
            let af_len = 183 - chunk.len();
            out.push(af_len as u8);
            if af_len > 0 {
                out.push(0);
                out.resize(out.len() + af_len - 1, 0xff);
            }
        }
        out.extend_from_slice(chunk);
    }
}

#[test]
fn adts_with_crc_and_truncated_audio_pes() {
    let mut buf = Vec::new();
    TsMuxer::new(&avc_tracks(false, true))
        .unwrap()
        .write_tables(&mut buf);
    // Two ADTS frames with CRC (protection_absent 0), one without, 44.1 kHz stereo.
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| unit(&[], i, 60 + i * 10)).collect();
    let mut payload = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let mut h = Vec::new();
        aac()
            .write_adts_header(body.len() + if i < 2 { 2 } else { 0 }, &mut h)
            .unwrap();
        if i < 2 {
            h[1] &= 0xfe; // CRC present
            h.extend_from_slice(&[0x12, 0x34]);
        }
        payload.extend_from_slice(&h);
        payload.extend_from_slice(body);
    }
    let dts: i64 = 1000;
    let raw = (dts + TS_TIMESTAMP_OFFSET) as u64;
    let mut pes = vec![0, 0, 1, 0xc0];
    pes.extend_from_slice(&((payload.len() + 8) as u16).to_be_bytes());
    pes.extend_from_slice(&[0x84, 0x80, 5]);
    pes.extend_from_slice(&[
        0x21 | (((raw >> 29) as u8) & 0x0e),
        (raw >> 22) as u8,
        (((raw >> 14) as u8) & 0xfe) | 1,
        (raw >> 7) as u8,
        (((raw << 1) as u8) & 0xfe) | 1,
    ]);
    pes.extend_from_slice(&payload);
    packetize(AUDIO_PID, &pes, &mut buf);
    let (events, errors) = demux(&mut TsDemuxer::new(), &buf, 100);
    assert_eq!(errors, []);
    let (tracks, _, audio) = split(&events);
    assert_eq!(tracks[0].audio, Some(CodecParams::Aac(aac())));
    let ticks = aac().frame_ticks();
    let got: Vec<(Ticks, Vec<u8>)> = audio.iter().map(|f| (f.dts, f.data.to_vec())).collect();
    let want: Vec<(Ticks, Vec<u8>)> = (0..3)
        .map(|i| (dts + i as i64 * ticks, bodies[i].clone()))
        .collect();
    assert_eq!(got, want);

    // The same PES cut after its first packet: the whole frames in it come out.
    let first_packet_end = 3 * PACKET_SIZE;
    let mut d = TsDemuxer::new();
    let (events, errors) = demux(&mut d, &buf[..first_packet_end], 100);
    assert_eq!(errors, []);
    let (_, _, audio) = split(&events);
    assert_eq!(audio.len(), 2);
    assert_eq!(d.dropped_frames(), 1);
}
