//! Unit tests of [`super::Mp4Layout`]: box layout, sample tables, chunk offsets and edit
//! lists checked against the input samples, `co64`/`largesize` and version-1 boxes, M4A,
//! errors, and (when ffprobe/ffmpeg are on `PATH`) how ffmpeg reads and decodes the files.
use super::*;
use crate::media::aac::AacConfig;
use crate::media::avc::tests::{hex, AVCC_1080};
use crate::media::avc::AvcConfig;
use crate::media::hevc::HevcConfig;

const ASC_LC_44100_STEREO: [u8; 2] = [0x12, 0x10];
const FRAME: Ticks = 3600; // 25 fps

/// x265 `testsrc=size=1920x1080` as an MP4 `hvcC` (from `media::hevc`'s tests).
const HVCC_1080: &str = "01016000000090000000000078f000fcfdf8f800000f03a00001001840010c01\
    ffff016000000300900000030000030078959809a10001002a42010101600000030090000003000003\
    0078a003c08010e596566924caf0168080000003008000000c84a2000100074401c172b46240";

fn avc() -> CodecParams {
    CodecParams::H264(AvcConfig::parse(&hex(AVCC_1080)).unwrap())
}

fn aac() -> CodecParams {
    CodecParams::Aac(AacConfig::parse(&ASC_LC_44100_STEREO).unwrap())
}

fn av_tracks() -> Tracks {
    Tracks {
        video: Some(avc()),
        audio: Some(aac()),
    }
}

fn audio_only() -> Tracks {
    Tracks {
        video: None,
        audio: Some(aac()),
    }
}

/// Composition offset (in frames) of the `k`-th picture in decode order of an
/// I P B B P B B ... stream whose pts are (display index + 1) frames: 1 for the
/// I frame, 3 for each P, 0 for each B.
fn cts_frames(k: i64, gop: i64) -> i64 {
    let k = k % gop;
    if k == 0 {
        1
    } else if k % 3 == 1 {
        3
    } else {
        0
    }
}

/// Video at 25 fps with B-frames starting at `video_start`, AAC 44.1 kHz frames
/// starting at `audio_start`, interleaved by dts (audio first on ties), for `seconds`.
fn av_samples(video_start: Ticks, audio_start: Ticks, seconds: i64) -> Vec<SampleMeta> {
    av_samples_sized(
        video_start,
        audio_start,
        seconds,
        |k| 1000 + (k % 7) as u32,
        300,
    )
}

fn av_samples_sized(
    video_start: Ticks,
    audio_start: Ticks,
    seconds: i64,
    video_size: impl Fn(i64) -> u32,
    audio_size: u32,
) -> Vec<SampleMeta> {
    let gop = 25;
    let n_video = seconds * 25;
    let n_audio = seconds * 44_100 / 1024;
    let video = (0..n_video).map(|k| SampleMeta {
        kind: TrackKind::Video,
        dts: video_start + k * FRAME,
        cts: (cts_frames(k, gop) * FRAME) as i32,
        keyframe: k % gop == 0,
        size: video_size(k),
    });
    let audio = (0..n_audio).map(|k| SampleMeta {
        kind: TrackKind::Audio,
        dts: audio_start + k * 1024 * 90_000 / 44_100,
        cts: 0,
        keyframe: true,
        size: audio_size,
    });
    let mut all: Vec<SampleMeta> = video.chain(audio).collect();
    all.sort_by_key(|s| (s.dts, s.kind == TrackKind::Video));
    all
}

// ---- a small box walker ----

/// (type, offset of the box, header length, total size) of the boxes in `buf`;
/// the last box may extend past `buf` (the `mdat` of a header).
fn boxes(buf: &[u8]) -> Vec<([u8; 4], usize, usize, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= buf.len() {
        let size = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as u64;
        let fourcc: [u8; 4] = buf[at + 4..at + 8].try_into().unwrap();
        let (size, header) = if size == 1 {
            (
                u64::from_be_bytes(buf[at + 8..at + 16].try_into().unwrap()),
                16,
            )
        } else {
            (size, 8)
        };
        assert!(size >= header as u64, "box {:?} of size {size}", fourcc);
        out.push((fourcc, at, header, size));
        at += size as usize;
    }
    out
}

/// The bodies of every box at `path` (e.g. `["moov", "trak", "tkhd"]`) in `buf`.
fn find<'a>(buf: &'a [u8], path: &[&str]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    for (fourcc, at, header, size) in boxes(buf) {
        if &fourcc[..] != path[0].as_bytes() {
            continue;
        }
        let end = (at as u64 + size).min(buf.len() as u64) as usize;
        let body = &buf[at + header..end];
        if path.len() == 1 {
            out.push(body);
        } else {
            out.extend(find(body, &path[1..]));
        }
    }
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Entries of a full box table whose entry count follows the version/flags.
fn table(body: &[u8], words: usize) -> Vec<Vec<u32>> {
    let n = be32(body, 4) as usize;
    assert_eq!(body.len(), 8 + n * words * 4, "table length");
    (0..n)
        .map(|i| {
            (0..words)
                .map(|w| be32(body, 8 + (i * words + w) * 4))
                .collect()
        })
        .collect()
}

/// The `stbl` of each track, in `moov` order.
fn stbls(header: &[u8]) -> Vec<&[u8]> {
    find(header, &["moov", "trak", "mdia", "minf", "stbl"])
}

fn sizes_of(stbl: &[u8]) -> Vec<u32> {
    let stsz = find(stbl, &["stsz"])[0];
    assert_eq!(be32(stsz, 4), 0, "stsz sample_size");
    let n = be32(stsz, 8) as usize;
    (0..n).map(|i| be32(stsz, 12 + 4 * i)).collect()
}

fn chunk_offsets(stbl: &[u8]) -> Vec<u64> {
    if let Some(stco) = find(stbl, &["stco"]).first() {
        table(stco, 1).iter().map(|e| u64::from(e[0])).collect()
    } else {
        let co64 = find(stbl, &["co64"])[0];
        let n = be32(co64, 4) as usize;
        (0..n).map(|i| be64(co64, 8 + 8 * i)).collect()
    }
}

/// Expands `stsc` to the number of samples in each of `chunks` chunks.
fn samples_per_chunk(stbl: &[u8], chunks: usize) -> Vec<u32> {
    let stsc = table(find(stbl, &["stsc"])[0], 3);
    (1..=chunks as u32)
        .map(|c| stsc.iter().rfind(|e| e[0] <= c).map(|e| e[1]).unwrap())
        .collect()
}

fn expand(runs: &[Vec<u32>]) -> Vec<u32> {
    runs.iter()
        .flat_map(|e| std::iter::repeat_n(e[1], e[0] as usize))
        .collect()
}

fn elst(trak: &[u8]) -> Option<Vec<(i64, i64)>> {
    let body = *find(trak, &["edts", "elst"]).first()?;
    let v1 = body[0] == 1;
    let n = be32(body, 4) as usize;
    Some(
        (0..n)
            .map(|i| {
                if v1 {
                    let at = 8 + i * 20;
                    (be64(body, at) as i64, be64(body, at + 8) as i64)
                } else {
                    let at = 8 + i * 12;
                    (be32(body, at) as i64, be32(body, at + 4) as i32 as i64)
                }
            })
            .collect(),
    )
}

/// Reference check of one track's tables against its samples and the file layout.
fn check_track(layout: &Mp4Layout, stbl: &[u8], samples: &[SampleMeta], kind: TrackKind) {
    let header = layout.header();
    let own: Vec<&SampleMeta> = samples.iter().filter(|s| s.kind == kind).collect();
    // stsz
    let sizes = sizes_of(stbl);
    assert_eq!(sizes, own.iter().map(|s| s.size).collect::<Vec<_>>());
    // chunks: every run of this track starts a chunk at its payload offset
    let mut expected_offsets = Vec::new();
    let mut expected_counts = Vec::new();
    let mut offset = header.len() as u64;
    let mut previous = None;
    for s in samples {
        if s.kind == kind {
            if previous != Some(kind) {
                expected_offsets.push(offset);
                expected_counts.push(0);
            }
            *expected_counts.last_mut().unwrap() += 1;
        }
        offset += u64::from(s.size);
        previous = Some(s.kind);
    }
    assert_eq!(offset, layout.total_len());
    let offsets = chunk_offsets(stbl);
    assert_eq!(offsets, expected_offsets);
    assert_eq!(samples_per_chunk(stbl, offsets.len()), expected_counts);
    // stss
    let keyframes: Vec<u32> = own
        .iter()
        .enumerate()
        .filter(|(_, s)| s.keyframe)
        .map(|(i, _)| i as u32 + 1)
        .collect();
    match find(stbl, &["stss"]).first() {
        Some(stss) => {
            let listed: Vec<u32> = table(stss, 1).iter().map(|e| e[0]).collect();
            assert_eq!(listed, keyframes);
        }
        None => assert_eq!(keyframes.len(), own.len(), "no stss but not all sync"),
    }
    // ctts iff some cts != 0, and then equal to them
    let ctts = find(stbl, &["ctts"]);
    if own.iter().any(|s| s.cts != 0) {
        let offsets = expand(&table(ctts[0], 2));
        assert_eq!(
            offsets,
            own.iter().map(|s| s.cts as u32).collect::<Vec<_>>()
        );
    } else {
        assert!(ctts.is_empty(), "ctts without composition offsets");
    }
}

#[test]
fn av_layout_tables_offsets_and_edit_list() {
    let samples = av_samples(900_000, 900_000, 3);
    let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
    let header = layout.header();

    let top = boxes(header);
    let names: Vec<&[u8]> = top.iter().map(|b| &b.0[..]).collect();
    assert_eq!(names, [&b"ftyp"[..], b"moov", b"mdat"]);
    let ftyp = find(header, &["ftyp"])[0];
    assert_eq!(ftyp, b"isom\0\0\x02\0isomiso2avc1mp41");
    let payload: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
    let (_, mdat_at, mdat_header, mdat_size) = top[2];
    assert_eq!(mdat_header, 8);
    assert_eq!(mdat_at + 8, header.len());
    assert_eq!(mdat_size, payload + 8);
    assert_eq!(layout.total_len(), header.len() as u64 + payload);

    let traks = find(header, &["moov", "trak"]);
    assert_eq!(traks.len(), 2);
    let hdlrs: Vec<&[u8]> = find(header, &["moov", "trak", "mdia", "hdlr"])
        .iter()
        .map(|h| &h[8..12])
        .collect();
    assert_eq!(hdlrs, [&b"vide"[..], b"soun"]);
    let tkhds = find(header, &["moov", "trak", "tkhd"]);
    assert_eq!((be32(tkhds[0], 12), be32(tkhds[1], 12)), (1, 2));
    assert_eq!(be32(tkhds[0], 76), 1920 << 16);
    assert_eq!(be32(tkhds[0], 80), 1080 << 16);
    let mvhd = find(header, &["moov", "mvhd"])[0];
    assert_eq!(be32(mvhd, 12), 1000);
    assert_eq!(be32(mvhd, 96), 3, "next_track_ID");

    let stbl = stbls(header);
    check_track(&layout, stbl[0], &samples, TrackKind::Video);
    check_track(&layout, stbl[1], &samples, TrackKind::Audio);
    assert!(!find(stbl[0], &["ctts"]).is_empty());

    // Sample entries carry the configuration records as they are.
    let stsd = find(stbl[0], &["stsd"])[0];
    let avc1 = &stsd[8..];
    assert_eq!(&avc1[4..8], b"avc1");
    assert_eq!(&avc1[8 + 24..8 + 28], &[0x07, 0x80, 0x04, 0x38]);
    let avcc = find(&avc1[8 + 78..], &["avcC"])[0];
    assert_eq!(avcc, &hex(AVCC_1080)[..]);
    let stsd = find(stbl[1], &["stsd"])[0];
    let mp4a = &stsd[8..];
    assert_eq!(&mp4a[4..8], b"mp4a");
    assert_eq!(be32(mp4a, 8 + 24), 44_100 << 16);
    let esds = find(&mp4a[8 + 28..], &["esds"])[0];
    let asc_at = esds
        .windows(5)
        .position(|w| w == [0x05, 0x80, 0x80, 0x80, 0x02])
        .unwrap();
    assert_eq!(esds[asc_at + 5..asc_at + 7], ASC_LC_44100_STEREO);
    assert!(esds.windows(2).any(|w| w == [0x40, 0x15]));

    // Video stts: a frame each. Both tracks start at the same dts, but the video's
    // first picture is presented one frame (its cts) later than the first audio
    // frame, which is the file's zero. The video presents pts 1..=75 frames after
    // its first dts, i.e. 75 frames from its first picture, so the movie lasts
    // from the file's zero to 1 + 75 frames (the audio, 129 AAC frames, is shorter).
    let video_stts = expand(&table(find(stbl[0], &["stts"])[0], 2));
    assert_eq!(video_stts.len(), 75);
    assert!(video_stts.iter().all(|&d| d == FRAME as u32));
    let video_total: u64 = video_stts.iter().map(|&d| u64::from(d)).sum();
    assert_eq!(
        u64::from(be32(find(traks[0], &["mdia", "mdhd"])[0], 16)),
        video_total
    );
    let first_video_pts = samples[1].dts + i64::from(samples[1].cts);
    let video_empty = first_video_pts - samples[0].dts;
    assert_eq!(video_empty, FRAME);
    assert_eq!(layout.duration(), video_empty + video_total as i64);
    assert_eq!(be32(mvhd, 16) as i64, (layout.duration() + 45) / 90);
    assert_eq!(be32(mvhd, 16), 3040);
    // Audio stts: 44.1 kHz deltas around 1024 that never drift.
    let audio_stts = expand(&table(find(stbl[1], &["stts"])[0], 2));
    let n_audio = audio_stts.len() as u64;
    assert!(audio_stts.iter().all(|&d| (1023..=1025).contains(&d)));
    let audio_total: u64 = audio_stts.iter().map(|&d| u64::from(d)).sum();
    assert!(audio_total.abs_diff(n_audio * 1024) <= 1, "{audio_total}");
    let mdhd = find(traks[1], &["mdia", "mdhd"])[0];
    assert_eq!(be32(mdhd, 12), 44_100);
    assert_eq!(u64::from(be32(mdhd, 16)), audio_total);

    // The audio is presented first (file zero) and needs no edit. The video waits
    // for an empty edit of (first video pts - first audio pts) = 40 ms, then its
    // media edit starts at its first composition offset and lasts its 3 s.
    assert_eq!(samples[0].kind, TrackKind::Audio);
    assert_eq!(samples[1].kind, TrackKind::Video);
    assert_eq!(
        elst(traks[0]),
        Some(vec![(video_empty / 90, -1), (3000, samples[1].cts as i64)])
    );
    assert_eq!(elst(traks[1]), None);
    // tkhd durations (ms): empty edit + media edit; audio is 129 * 1024 / 44.1 kHz.
    assert_eq!((be32(tkhds[0], 20), be32(tkhds[1], 20)), (40 + 3000, 2995));
}

#[test]
fn later_track_gets_an_empty_edit_and_no_cts_means_no_ctts_or_elst() {
    // Video without B-frames, starting 0.5 s after the audio.
    let mut samples = av_samples(450_000 + 45_000, 450_000, 2);
    for s in &mut samples {
        s.cts = 0;
    }
    // 35 pictures (1.4 s from 0.5 s) and 82 audio frames (1.904 s).
    samples.retain(|s| s.dts < 450_000 + 171_000);
    let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
    let header = layout.header();
    let stbl = stbls(header);
    check_track(&layout, stbl[0], &samples, TrackKind::Video);
    check_track(&layout, stbl[1], &samples, TrackKind::Audio);
    let traks = find(header, &["moov", "trak"]);
    assert_eq!(elst(traks[0]), Some(vec![(500, -1), (1400, 0)]));
    assert_eq!(elst(traks[1]), None);
    assert_eq!(
        layout.duration(),
        rescale_nearest(82 * 1024, 44_100, 90_000)
    );
    let tkhds = find(header, &["moov", "trak", "tkhd"]);
    assert_eq!((be32(tkhds[0], 20), be32(tkhds[1], 20)), (1900, 1904));
}

#[test]
fn hevc_uses_hvc1_and_hvcc() {
    let tracks = Tracks {
        video: Some(CodecParams::H265(
            HevcConfig::parse(&hex(HVCC_1080)).unwrap(),
        )),
        audio: None,
    };
    let samples: Vec<SampleMeta> = av_samples(0, 0, 1)
        .into_iter()
        .filter(|s| s.kind == TrackKind::Video)
        .collect();
    let layout = Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).unwrap();
    let header = layout.header();
    assert_eq!(find(header, &["ftyp"])[0], b"isom\0\0\x02\0isomiso2mp41");
    let stbl = stbls(header);
    assert_eq!(stbl.len(), 1);
    let stsd = find(stbl[0], &["stsd"])[0];
    assert_eq!(&stsd[12..16], b"hvc1");
    assert_eq!(find(&stsd[8 + 8 + 78..], &["hvcC"])[0], &hex(HVCC_1080)[..]);
    check_track(&layout, stbl[0], &samples, TrackKind::Video);
}

#[test]
fn two_hour_8_mbps_file_uses_co64_and_largesize() {
    // 25 fps pictures of ~40 KB and 44.1 kHz AAC frames of 372 bytes: ~7.2 GB.
    let samples = av_samples_sized(
        0,
        0,
        2 * 3600,
        |k| {
            if k % 25 == 0 {
                120_000
            } else {
                36_600 + (k % 5) as u32
            }
        },
        372,
    );
    let payload: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
    assert!(payload > 7_000_000_000, "{payload}");
    let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
    let header = layout.header();
    assert_eq!(layout.total_len(), header.len() as u64 + payload);

    let top = boxes(header);
    let (fourcc, at, mdat_header, size) = top[2];
    assert_eq!(&fourcc, b"mdat");
    assert_eq!(mdat_header, 16);
    assert_eq!(be32(header, at), 1, "size field 1 announces largesize");
    assert_eq!(size, payload + 16);
    assert_eq!(at + 16, header.len());

    let stbl = stbls(header);
    for (s, kind) in stbl.iter().zip([TrackKind::Video, TrackKind::Audio]) {
        assert!(find(s, &["stco"]).is_empty());
        assert_eq!(find(s, &["co64"]).len(), 1);
        check_track(&layout, s, &samples, kind);
    }
    // The file starts with an audio frame, then the first picture.
    assert_eq!(chunk_offsets(stbl[1])[0], header.len() as u64);
    let video = chunk_offsets(stbl[0]);
    assert_eq!(video[0], header.len() as u64 + 372);
    assert!(*video.last().unwrap() > u64::from(u32::MAX));
    // 2 h fits 32-bit durations everywhere: version 0 boxes.
    assert_eq!(find(header, &["moov", "mvhd"])[0][0], 0);
    // Audio and video share the first dts, so the first audio frame is the file's
    // zero and the video (first cts: one frame) is presented one frame later, for
    // its 2 h; the audio (310078 AAC frames) ends before the video.
    let traks = find(header, &["moov", "trak"]);
    assert_eq!(
        elst(traks[0]),
        Some(vec![(40, -1), (2 * 3600 * 1000, FRAME)])
    );
    assert_eq!(elst(traks[1]), None);
    assert_eq!(layout.duration(), FRAME + 2 * 3600 * 90_000);
}

#[test]
fn durations_past_32_bits_use_version_1() {
    // 14 h at 1 fps: the 90 kHz mdhd duration passes u32::MAX (13.25 h).
    let samples: Vec<SampleMeta> = (0..14 * 3600)
        .map(|k| SampleMeta {
            kind: TrackKind::Video,
            dts: k * 90_000,
            cts: 0,
            keyframe: true,
            size: 10,
        })
        .collect();
    let tracks = Tracks {
        video: Some(avc()),
        audio: None,
    };
    let layout = Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).unwrap();
    let header = layout.header();
    let mdhd = find(header, &["moov", "trak", "mdia", "mdhd"])[0];
    assert_eq!(mdhd[0], 1);
    assert_eq!(be32(mdhd, 20), 90_000);
    assert_eq!(be64(mdhd, 24), 14 * 3600 * 90_000);
    // In milliseconds 14 h still fits: mvhd and tkhd stay version 0.
    let mvhd = find(header, &["moov", "mvhd"])[0];
    assert_eq!((mvhd[0], be32(mvhd, 16)), (0, 14 * 3600 * 1000));
    assert_eq!(find(header, &["moov", "trak", "tkhd"])[0][0], 0);
    assert!(find(stbls(header)[0], &["stss"]).is_empty(), "all sync");
}

#[test]
fn m4a_is_one_sound_track_with_its_brand() {
    let samples: Vec<SampleMeta> = av_samples(0, 123_456, 2)
        .into_iter()
        .filter(|s| s.kind == TrackKind::Audio)
        .collect();
    // tracks.video is ignored for M4A.
    let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::M4a).unwrap();
    let header = layout.header();
    assert_eq!(find(header, &["ftyp"])[0], b"M4A \0\0\x02\0M4A mp42isom");
    let traks = find(header, &["moov", "trak"]);
    assert_eq!(traks.len(), 1);
    assert_eq!(&find(traks[0], &["mdia", "hdlr"])[0][8..12], b"soun");
    assert_eq!(find(traks[0], &["mdia", "minf", "smhd"]).len(), 1);
    assert_eq!(be32(find(traks[0], &["tkhd"])[0], 12), 1);
    assert_eq!(be32(find(header, &["moov", "mvhd"])[0], 96), 2);
    assert_eq!(elst(traks[0]), None);
    let stbl = stbls(header);
    check_track(&layout, stbl[0], &samples, TrackKind::Audio);
    // One run of samples: one chunk.
    assert_eq!(chunk_offsets(stbl[0]), vec![header.len() as u64]);
    // 86 frames of 1024 samples at 44.1 kHz.
    assert_eq!(
        layout.duration(),
        rescale_nearest(86 * 1024, 44_100, 90_000)
    );
}

#[test]
fn errors() {
    let samples = av_samples(0, 0, 1);
    // Video samples in an M4A.
    assert_eq!(
        Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::M4a),
        Err(MuxError::NoSuchTrack {
            kind: TrackKind::Video
        })
    );
    // Audio samples but no audio track.
    let video_only = Tracks {
        video: Some(avc()),
        audio: None,
    };
    assert_eq!(
        Mp4Layout::plan(&video_only, &samples, Mp4Brand::Mp4),
        Err(MuxError::NoSuchTrack {
            kind: TrackKind::Audio
        })
    );
    // No samples, no tracks.
    assert_eq!(
        Mp4Layout::plan(&av_tracks(), &[], Mp4Brand::Mp4),
        Err(MuxError::NoTracks)
    );
    assert_eq!(
        Mp4Layout::plan(&Tracks::default(), &samples, Mp4Brand::Mp4),
        Err(MuxError::NoTracks)
    );
    assert_eq!(
        Mp4Layout::plan(&audio_only(), &[], Mp4Brand::M4a),
        Err(MuxError::NoTracks)
    );
    // Codec in the wrong slot.
    let wrong = Tracks {
        video: Some(aac()),
        audio: Some(avc()),
    };
    assert!(matches!(
        Mp4Layout::plan(&wrong, &samples, Mp4Brand::Mp4),
        Err(MuxError::UnsupportedCodec {
            container: "mp4",
            kind: TrackKind::Video,
            codec: "aac"
        })
    ));
    // dts going back within a track (across tracks is fine).
    let mut back = samples.clone();
    let last_video = back
        .iter()
        .rposition(|s| s.kind == TrackKind::Video)
        .unwrap();
    back[last_video].dts = 0;
    assert!(matches!(
        Mp4Layout::plan(&av_tracks(), &back, Mp4Brand::Mp4),
        Err(MuxError::BadFrame {
            kind: TrackKind::Video,
            dts: 0,
            ..
        })
    ));
    let mut negative = samples.clone();
    negative[1].cts = -1;
    assert!(matches!(
        Mp4Layout::plan(&av_tracks(), &negative, Mp4Brand::Mp4),
        Err(MuxError::BadFrame { .. })
    ));
}

// ---- ffprobe ----

fn ffprobe_available() -> bool {
    std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Writes header + payloads: video access units are one length-prefixed NAL unit of
/// the right type (contents junk), audio frames junk bytes. Nothing here decodes;
/// `-show_packets` only demuxes.
fn write_file(path: &std::path::Path, layout: &Mp4Layout, samples: &[SampleMeta]) {
    let mut file = layout.header().to_vec();
    for s in samples {
        let start = file.len();
        file.resize(start + s.size as usize, 0x5a);
        if s.kind == TrackKind::Video {
            file[start..start + 4].copy_from_slice(&(s.size - 4).to_be_bytes());
            file[start + 4] = if s.keyframe { 0x65 } else { 0x41 };
        }
    }
    assert_eq!(file.len() as u64, layout.total_len());
    std::fs::write(path, file).unwrap();
}

fn probe(path: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-show_packets",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn number(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => other.as_f64().unwrap(),
    }
}

#[test]
fn ffprobe_reads_packets_timestamps_and_start_times() {
    if !ffprobe_available() {
        eprintln!("ffprobe not on PATH: skipping the ffprobe check of MP4 files");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Audio starts 20 ms after the video's first dts; video has B-frames.
    let base = 5 * 90_000;
    let samples = av_samples(base, base + 1800, 4);
    let layout = Mp4Layout::plan(&av_tracks(), &samples, Mp4Brand::Mp4).unwrap();
    let path = dir.path().join("av.mp4");
    write_file(&path, &layout, &samples);
    let json = probe(&path);

    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["width"], 1920);
    assert_eq!(streams[1]["codec_name"], "aac");
    assert_eq!(streams[1]["sample_rate"], "44100");
    assert_eq!(streams[1]["channels"], 2);
    let video: Vec<&SampleMeta> = samples
        .iter()
        .filter(|s| s.kind == TrackKind::Video)
        .collect();
    let audio: Vec<&SampleMeta> = samples
        .iter()
        .filter(|s| s.kind == TrackKind::Audio)
        .collect();
    assert_eq!(number(&streams[0]["nb_frames"]) as usize, video.len());
    assert_eq!(number(&streams[1]["nb_frames"]) as usize, audio.len());

    let packets = json["packets"].as_array().unwrap();
    let of = |index: i64| -> Vec<(i64, i64, u64)> {
        packets
            .iter()
            .filter(|p| p["stream_index"] == index)
            .map(|p| {
                (
                    p["pts"].as_i64().unwrap(),
                    p["dts"].as_i64().unwrap(),
                    number(&p["size"]) as u64,
                )
            })
            .collect()
    };
    // The file's zero is the earliest presentation time: the first audio frame
    // (pts = dts), 20 ms after the video's first dts but 20 ms before its first
    // picture (dts + one frame of cts). So the video gets an empty edit of 20 ms and
    // the audio none: both are presented exactly as the source timed them.
    let zero = audio[0].dts;
    let first_video_pts = video[0].dts + i64::from(video[0].cts);
    assert_eq!(first_video_pts - zero, 1800);
    // Video, time base 1/90000: source timestamps relative to the file's zero.
    let expected: Vec<(i64, i64, u64)> = video
        .iter()
        .map(|s| {
            let dts = s.dts - zero;
            (dts + i64::from(s.cts), dts, u64::from(s.size))
        })
        .collect();
    assert_eq!(of(0), expected);
    // Audio, time base 1/44100: no edit, the rescaled dts from the file's zero.
    let expected: Vec<(i64, i64, u64)> = audio
        .iter()
        .map(|s| {
            let t = rescale_nearest(s.dts - zero, 90_000, 44_100);
            (t, t, u64::from(s.size))
        })
        .collect();
    assert_eq!(of(1), expected);

    // start_time of each stream: its first presentation time from the file's zero.
    let video_start = number(&streams[0]["start_time"]);
    let audio_start = number(&streams[1]["start_time"]);
    assert!((video_start - 0.02).abs() < 1e-9, "{video_start}");
    assert!(audio_start.abs() < 1e-9, "{audio_start}");
    // The movie: 20 ms of waiting, then the video's 100 frames (4 s); the audio
    // (172 AAC frames, 3.994 s) ends first.
    assert_eq!(layout.duration(), (first_video_pts - zero) + 100 * FRAME);
    let duration = number(&json["format"]["duration"]);
    let expected = layout.duration() as f64 / 90_000.0;
    assert!(
        (duration - expected).abs() <= 0.001,
        "{duration} vs {expected}"
    );

    // And the M4A of the same audio.
    let audio_samples: Vec<SampleMeta> = audio.iter().map(|s| **s).collect();
    let layout = Mp4Layout::plan(&audio_only(), &audio_samples, Mp4Brand::M4a).unwrap();
    let path = dir.path().join("a.m4a");
    write_file(&path, &layout, &audio_samples);
    let json = probe(&path);
    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["codec_name"], "aac");
    assert_eq!(json["format"]["tags"]["major_brand"], "M4A ");
    assert_eq!(number(&streams[0]["start_time"]), 0.0);
    assert_eq!(
        json["packets"].as_array().unwrap().len(),
        audio_samples.len()
    );
    let duration = number(&json["format"]["duration"]);
    let expected = layout.duration() as f64 / 90_000.0;
    assert!(
        (duration - expected).abs() <= 0.001,
        "{duration} vs {expected}"
    );
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap()
}

/// The video frames of `path` as decoded by ffmpeg: one MD5 per frame.
fn decoded_video_md5s(path: &str) -> Vec<String> {
    let out = run(
        "ffmpeg",
        &[
            "-v", "error", "-i", path, "-map", "0:v", "-f", "framemd5", "-",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn ffmpeg_decodes_a_remux_of_a_real_encode() {
    if !ffprobe_available() || !run("ffmpeg", &["-version"]).status.success() {
        eprintln!("ffmpeg/ffprobe not on PATH: skipping the MP4 decode check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.mp4");
    let source = source.to_str().unwrap();
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=sample_rate=44100",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-bf",
            "2",
            "-g",
            "25",
            "-c:a",
            "aac",
            source,
        ],
    );
    if !out.status.success() {
        eprintln!(
            "ffmpeg cannot encode H.264/AAC here, skipping: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let src = std::fs::read(source).unwrap();
    // Configuration records from the source's sample entries.
    let stsds = find(&src, &["moov", "trak", "mdia", "minf", "stbl", "stsd"]);
    let avc1 = &stsds[0][8..];
    assert_eq!(&avc1[4..8], b"avc1");
    let record = find(&avc1[8 + 78..], &["avcC"])[0];
    let mp4a = &stsds[1][8..];
    assert_eq!(&mp4a[4..8], b"mp4a");
    let esds = find(&mp4a[8 + 28..], &["esds"])[0];
    let at = esds
        .windows(4)
        .position(|w| w == [0x05, 0x80, 0x80, 0x80])
        .unwrap();
    let asc = &esds[at + 5..at + 5 + esds[at + 4] as usize];
    let tracks = Tracks {
        video: Some(CodecParams::H264(AvcConfig::parse(record).unwrap())),
        audio: Some(CodecParams::Aac(AacConfig::parse(asc).unwrap())),
    };

    // Its packets, in file order, as SampleMeta with 90 kHz times.
    let json = probe(std::path::Path::new(source));
    let time_base: Vec<i64> = json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tb = s["time_base"].as_str().unwrap();
            tb.split('/').nth(1).unwrap().parse().unwrap()
        })
        .collect();
    let mut packets: Vec<(u64, SampleMeta)> = json["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let index = p["stream_index"].as_u64().unwrap() as usize;
            let hz = time_base[index];
            let dts = p["dts"].as_i64().unwrap();
            let pts = p["pts"].as_i64().unwrap();
            let meta = SampleMeta {
                kind: if index == 0 {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                },
                dts: crate::media::rescale(dts, hz, 90_000),
                cts: (crate::media::rescale(pts, hz, 90_000)
                    - crate::media::rescale(dts, hz, 90_000)) as i32,
                keyframe: p["flags"].as_str().unwrap().contains('K'),
                size: number(&p["size"]) as u32,
            };
            (number(&p["pos"]) as u64, meta)
        })
        .collect();
    packets.sort_by_key(|p| p.0);
    let samples: Vec<SampleMeta> = packets.iter().map(|p| p.1).collect();
    assert!(samples.iter().any(|s| s.cts > 0), "the encode has B-frames");

    let layout = Mp4Layout::plan(&tracks, &samples, Mp4Brand::Mp4).unwrap();
    let mut file = layout.header().to_vec();
    for (pos, s) in &packets {
        file.extend_from_slice(&src[*pos as usize..*pos as usize + s.size as usize]);
    }
    assert_eq!(file.len() as u64, layout.total_len());
    let ours = dir.path().join("ours.mp4");
    std::fs::write(&ours, &file).unwrap();
    let ours = ours.to_str().unwrap();

    // Every picture decodes to the same image as from the source, without errors.
    let expected = decoded_video_md5s(source);
    assert_eq!(expected.len(), 50);
    assert_eq!(decoded_video_md5s(ours), expected);
    // And the audio decodes cleanly too.
    let out = run(
        "ffmpeg",
        &["-v", "error", "-i", ours, "-map", "0:a", "-f", "null", "-"],
    );
    assert!(out.status.success() && out.stderr.is_empty());
}
