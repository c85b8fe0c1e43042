//! Unit tests of [`super::TsMuxer`]: hand-checked packet layouts (PAT/PMT byte for byte
//! as ffmpeg writes them, PES headers, adaptation fields, stuffing), audio grouping and
//! errors. Decoding by real players is covered by the golden tests. Shared frame builders
//! are used by the `ts_scan` tests too.
use super::*;
use crate::media::avc::AvcConfig;

/// x264 640x360 parameter sets in an avcC record.
pub(crate) fn h264_tracks(with_audio: bool) -> Tracks {
    let sps = [
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2d, 0x96,
    ];
    let pps = [0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut rec = vec![1, 0x64, 0, 0x1e, 0xff, 0xe1, 0, sps.len() as u8];
    rec.extend_from_slice(&sps);
    rec.extend_from_slice(&[1, 0, pps.len() as u8]);
    rec.extend_from_slice(&pps);
    Tracks {
        video: Some(CodecParams::H264(AvcConfig::parse(&rec).unwrap())),
        audio: with_audio.then(|| CodecParams::Aac(AacConfig::parse(&[0x11, 0x90]).unwrap())),
    }
}

pub(crate) fn video(dts: Ticks, pts: Ticks, keyframe: bool, size: usize) -> Frame {
    let mut data = (size as u32 + 1).to_be_bytes().to_vec();
    data.push(if keyframe { 0x65 } else { 0x41 });
    data.resize(4 + 1 + size, 0xab);
    Frame {
        kind: TrackKind::Video,
        dts,
        pts,
        keyframe,
        data: data.into(),
    }
}

pub(crate) fn audio(dts: Ticks, size: usize) -> Frame {
    Frame {
        kind: TrackKind::Audio,
        dts,
        pts: dts,
        keyframe: true,
        data: vec![0x21; size].into(),
    }
}

fn packets(buf: &[u8]) -> Vec<&[u8]> {
    assert_eq!(buf.len() % PACKET_SIZE, 0);
    buf.chunks(PACKET_SIZE).collect()
}

fn pid(p: &[u8]) -> u16 {
    u16::from(p[1] & 0x1f) << 8 | u16::from(p[2])
}

fn read_ts(b: &[u8]) -> u64 {
    (u64::from(b[0] & 0x0e) << 29)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] & 0xfe) << 14)
        | (u64::from(b[3]) << 7)
        | (u64::from(b[4]) >> 1)
}

#[test]
fn tables_match_ffmpeg_layout() {
    let mut m = TsMuxer::new(&h264_tracks(true)).unwrap();
    let mut out = Vec::new();
    m.write_tables(&mut out);
    let p = packets(&out);
    assert_eq!(p.len(), 2);
    // Byte for byte what ffmpeg's mpegts muxer writes for the same PAT.
    assert_eq!(
        &p[0][..21],
        &[
            0x47, 0x40, 0x00, 0x10, 0x00, 0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00,
            0x01, 0xf0, 0x00, 0x2a, 0xb1, 0x04, 0xb2
        ]
    );
    assert!(p[0][21..].iter().all(|&b| b == 0xff));
    // PMT: PCR PID 0x100, H.264 on 0x100, AAC on 0x101.
    assert_eq!(
        &p[1][..27],
        &[
            0x47, 0x50, 0x00, 0x10, 0x00, 0x02, 0xb0, 0x17, 0x00, 0x01, 0xc1, 0x00, 0x00, 0xe1,
            0x00, 0xf0, 0x00, 0x1b, 0xe1, 0x00, 0xf0, 0x00, 0x0f, 0xe1, 0x01, 0xf0, 0x00
        ]
    );
    let crc = crc32_mpeg2(&p[1][5..27]).to_be_bytes();
    assert_eq!(&p[1][27..31], &crc);
    // The CRC of a section including its CRC is zero.
    assert_eq!(crc32_mpeg2(&p[1][5..31]), 0);
    m.write_tables(&mut out);
    assert_eq!(out[PACKET_SIZE * 2 + 3] & 0x0f, 1, "PAT counter advances");
}

#[test]
fn keyframe_pes_layout() {
    let mut m = TsMuxer::new(&h264_tracks(false)).unwrap();
    let mut out = Vec::new();
    m.write_frame(&video(0, 7200, true, 400), &mut out).unwrap();
    let p = packets(&out);
    // AUD 6 + SPS 30 + PPS 10 + slice 405 = 451 bytes, PES header 19: 470 bytes.
    assert_eq!(p.len(), 3);
    let first = p[0];
    assert_eq!(pid(first), VIDEO_PID);
    assert_eq!(first[1] & 0x40, 0x40, "PUSI");
    assert_eq!(first[3], 0x30, "adaptation + payload, cc 0");
    assert_eq!(first[4], 7, "adaptation field length");
    assert_eq!(first[5], 0x50, "random access + PCR");
    assert_eq!(&first[6..12], &[0, 0, 0, 0, 0x7e, 0]);
    let pes = &first[12..];
    assert_eq!(&pes[..9], &[0, 0, 1, 0xe0, 0x01, 0xd0, 0x84, 0xc0, 10]);
    assert_eq!(pes[9] >> 4, 3);
    assert_eq!(read_ts(&pes[9..14]), 126_000 + 7200);
    assert_eq!(pes[14] >> 4, 1);
    assert_eq!(read_ts(&pes[14..19]), 126_000);
    assert_eq!(&pes[19..25], &[0, 0, 0, 1, 0x09, 0xf0]);
    assert_eq!(&pes[25..30], &[0, 0, 0, 1, 0x67]);
    // Continuation, then the last packet with stuffing: 470 - 176 - 184 = 110 bytes.
    assert_eq!((p[1][1] & 0x40, p[1][3]), (0, 0x11));
    assert_eq!(p[2][3], 0x32);
    assert_eq!(p[2][4] as usize, 184 - 110 - 1);
    assert_eq!(p[2][5], 0);
    assert_eq!(*p[2].last().unwrap(), 0xab);

    // A non-keyframe with pts == dts: PTS only, no parameter sets, no RAI.
    let mut out = Vec::new();
    m.write_frame(&video(3600, 3600, false, 10), &mut out)
        .unwrap();
    let p = packets(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0][3], 0x33);
    let af_len = p[0][4] as usize;
    assert_eq!(p[0][5], 0x10, "PCR without RAI");
    let pes = &p[0][5 + af_len..];
    assert_eq!(&pes[6..9], &[0x84, 0x80, 5]);
    assert_eq!(&pes[14..20], &[0, 0, 0, 1, 0x09, 0xf0]);
    assert_eq!(pes[24], 0x41);
}

#[test]
fn single_stuffing_byte_and_timestamp_wrap() {
    let mut m = TsMuxer::new(&h264_tracks(false)).unwrap();
    // One packet with PCR (8 AF bytes) holds 176 payload bytes; PES header 14, AUD 6,
    // slice NAL with start code: 4 + 1 + n. n = 150 leaves exactly one spare byte.
    let mut out = Vec::new();
    m.write_frame(&video(-200_000, -200_000, false, 150), &mut out)
        .unwrap();
    let p = packets(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0][4], 8, "7 AF bytes + 1 stuffing");
    let pes = &p[0][13..];
    assert_eq!(read_ts(&pes[9..14]), (1 << 33) - 200_000 + 126_000);
}

#[test]
fn audio_is_grouped_by_size_and_video_does_not_cut_a_group() {
    let mut m = TsMuxer::new(&h264_tracks(true)).unwrap();
    let mut out = Vec::new();
    // 307-byte ADTS frames: 9 fit in AUDIO_PES_PAYLOAD (2,930 bytes), a 10th does not.
    for i in 0..9 {
        m.write_frame(&audio(i * 1920, 300), &mut out).unwrap();
        m.write_frame(&video(i * 1920, i * 1920, i == 0, 10), &mut out)
            .unwrap();
    }
    assert!(
        packets(&out).iter().all(|p| pid(p) == VIDEO_PID),
        "the audio group is still open"
    );
    out.clear();
    m.write_frame(&audio(9 * 1920, 300), &mut out).unwrap();
    let p = packets(&out);
    assert!(p.iter().all(|p| pid(p) == AUDIO_PID));
    let pes_starts: Vec<_> = p.iter().filter(|p| p[1] & 0x40 != 0).collect();
    assert_eq!(pes_starts.len(), 1);
    let first = pes_starts[0];
    assert_eq!(&first[3..6], &[0x30, 1, 0x40], "random access, no PCR");
    let pes = &first[6..];
    // PES_packet_length 0x0ad3 = 9 * 307 + 8.
    assert_eq!(&pes[..9], &[0, 0, 1, 0xc0, 0x0a, 0xd3, 0x84, 0x80, 5]);
    assert_eq!(read_ts(&pes[9..14]), 126_000);
    assert_eq!(&pes[14..16], &[0xff, 0xf1]);
    // The 10th frame waits for the segment's flush.
    out.clear();
    m.flush(&mut out);
    let p = packets(&out);
    assert_eq!(read_ts(&p[0][6 + 9..6 + 14]), 126_000 + 9 * 1920);
    out.clear();
    m.flush(&mut out);
    assert!(out.is_empty());
    // A gap in audio timestamps starts a new group.
    m.write_frame(&audio(100_000, 10), &mut out).unwrap();
    m.write_frame(&audio(120_000, 10), &mut out).unwrap();
    m.flush(&mut out);
    let starts = packets(&out)
        .iter()
        .filter(|p| pid(p) == AUDIO_PID && p[1] & 0x40 != 0)
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn small_audio_frames_group_for_at_most_300_ms_beside_video_and_90_ms_alone() {
    let audio_starts = |out: &[u8]| {
        packets(out)
            .iter()
            .filter(|p| pid(p) == AUDIO_PID && p[1] & 0x40 != 0)
            .count()
    };
    let mut m = TsMuxer::new(&h264_tracks(true)).unwrap();
    let mut out = Vec::new();
    for i in 0..13 {
        m.write_frame(&audio(i * 1920, 50), &mut out).unwrap();
    }
    assert_eq!(audio_starts(&out), 0, "13 frames span 250 ms");
    m.write_frame(&audio(13 * 1920, 50), &mut out).unwrap();
    assert_eq!(audio_starts(&out), 1, "a 15th frame would pass 300 ms");

    let tracks = Tracks {
        video: None,
        audio: Some(CodecParams::Aac(AacConfig::parse(&[0x11, 0x90]).unwrap())),
    };
    let mut m = TsMuxer::new(&tracks).unwrap();
    out.clear();
    for i in 0..3 {
        m.write_frame(&audio(i * 1920, 50), &mut out).unwrap();
    }
    assert_eq!(audio_starts(&out), 0);
    m.write_frame(&audio(3 * 1920, 50), &mut out).unwrap();
    assert_eq!(audio_starts(&out), 1, "a 5th frame would pass 90 ms");
}

#[test]
fn audio_only_carries_pcr_on_audio() {
    let tracks = Tracks {
        video: None,
        audio: Some(CodecParams::Aac(AacConfig::parse(&[0x11, 0x90]).unwrap())),
    };
    let mut m = TsMuxer::new(&tracks).unwrap();
    let mut out = Vec::new();
    m.write_tables(&mut out);
    let pmt = &out[PACKET_SIZE..];
    assert_eq!(&pmt[13..15], &[0xe1, 0x01], "PCR PID is audio");
    assert_eq!(&pmt[17..22], &[0x0f, 0xe1, 0x01, 0xf0, 0x00]);
    out.clear();
    m.write_frame(&audio(0, 100), &mut out).unwrap();
    m.flush(&mut out);
    assert_eq!(out[5], 0x50, "PCR + random access on the audio PES");
    assert!(matches!(
        m.write_frame(&video(0, 0, true, 1), &mut out),
        Err(MuxError::NoSuchTrack { .. })
    ));
}

#[test]
fn stale_pcr_gets_a_pcr_only_packet() {
    let mut m = TsMuxer::new(&h264_tracks(true)).unwrap();
    let mut out = Vec::new();
    m.write_frame(&video(0, 0, true, 10), &mut out).unwrap();
    out.clear();
    // 1 fps video: audio 200 ms later forces a PCR on the video PID.
    m.write_frame(&audio(18_000, 10), &mut out).unwrap();
    m.flush(&mut out);
    let p = packets(&out);
    assert_eq!(pid(p[0]), VIDEO_PID);
    assert_eq!(
        p[0][3], 0x20,
        "adaptation only, counter repeats the last (0)"
    );
    assert_eq!((p[0][4], p[0][5]), (183, 0x10));
    assert_eq!(pid(p[1]), AUDIO_PID);
}

#[test]
fn errors() {
    assert_eq!(
        TsMuxer::new(&Tracks::default()).unwrap_err(),
        MuxError::NoTracks
    );
    let mut m = TsMuxer::new(&h264_tracks(false)).unwrap();
    let mut out = Vec::new();
    let mut bad = video(0, 0, true, 10);
    bad.data = vec![0, 0, 0, 50, 0x65].into();
    assert!(matches!(
        m.write_frame(&bad, &mut out),
        Err(MuxError::BadFrame { dts: 0, .. })
    ));
    assert!(out.is_empty());
    assert!(matches!(
        m.write_frame(&audio(0, 1), &mut out),
        Err(MuxError::NoSuchTrack { .. })
    ));
    let mut m = TsMuxer::new(&h264_tracks(true)).unwrap();
    assert!(matches!(
        m.write_frame(&audio(0, 9000), &mut out),
        Err(MuxError::BadFrame { .. })
    ));
    let wrong = Tracks {
        video: h264_tracks(true).audio,
        audio: None,
    };
    assert!(matches!(
        TsMuxer::new(&wrong),
        Err(MuxError::UnsupportedCodec { .. })
    ));
}
