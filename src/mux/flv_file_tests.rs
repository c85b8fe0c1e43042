//! Unit tests of [`super::FlvLayout`]: tag layout and `onMetaData`, round trips of H.264
//! and Enhanced-RTMP H.265 through the ingest FLV demuxer, extended timestamps, audio-only
//! files, errors, and (when ffprobe is on `PATH`) how ffprobe reads the files.
use bytes::Bytes;

use super::*;
use crate::media::aac::AacConfig;
use crate::media::avc::tests::{hex, AVCC_1080};
use crate::media::avc::AvcConfig;
use crate::media::hevc::HevcConfig;
use crate::proto::rtmp::amf0;
use crate::proto::rtmp::flv::{DemuxEvent, FlvDemuxer};

/// x265 `testsrc=size=1920x1080` `hvcC` (as in `media::hevc`'s tests).
const HVCC_1080: &str = "01016000000090000000000078f000fcfdf8f800000f03a00001001840010c01\
    ffff016000000300900000030000030078959809a10001002a42010101600000030090000003000003\
    0078a003c08010e596566924caf0168080000003008000000c84a2000100074401c172b46240";
/// AAC-LC, 44.1 kHz, stereo.
const ASC: [u8; 2] = [0x12, 0x10];
/// An arbitrary non-zero start: the file is rebased to it.
const BASE: Ticks = 900_000;

fn aac() -> CodecParams {
    CodecParams::Aac(AacConfig::parse(&ASC).unwrap())
}

fn tracks(hevc: bool) -> Tracks {
    let video = if hevc {
        CodecParams::H265(HevcConfig::parse(&hex(HVCC_1080)).unwrap())
    } else {
        CodecParams::H264(AvcConfig::parse(&hex(AVCC_1080)).unwrap())
    };
    Tracks {
        video: Some(video),
        audio: Some(aac()),
    }
}

/// Six video frames at 30 fps starting 5 ms after eight AAC frames (2090 ticks each at
/// 44.1 kHz), with B-frame-like composition offsets, interleaved by DTS.
fn samples() -> Vec<SampleMeta> {
    let ctss = [3000, 9000, 0, 0, 3000, 0];
    let mut v: Vec<SampleMeta> = (0..6)
        .map(|i| SampleMeta {
            kind: TrackKind::Video,
            dts: BASE + 450 + i as i64 * 3000,
            cts: ctss[i],
            keyframe: i == 0 || i == 3,
            size: 20 + 7 * i as u32,
        })
        .collect();
    v.extend((0..8).map(|j| SampleMeta {
        kind: TrackKind::Audio,
        dts: BASE + j * 2090,
        cts: 0,
        keyframe: true,
        size: 9 + j as u32,
    }));
    v.sort_by_key(|s| s.dts);
    v
}

/// Video: one length-prefixed NAL (IDR/non-IDR header for the codec), filled with the
/// sample index; audio: the index repeated.
fn payload(index: usize, s: &SampleMeta, hevc: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(s.size as usize);
    if s.kind == TrackKind::Video {
        p.extend_from_slice(&(s.size - 4).to_be_bytes());
        match (hevc, s.keyframe) {
            (false, true) => p.push(0x65),
            (false, false) => p.push(0x41),
            (true, true) => p.extend_from_slice(&[0x26, 0x01]),
            (true, false) => p.extend_from_slice(&[0x02, 0x01]),
        }
    }
    p.resize(s.size as usize, index as u8);
    p
}

fn assemble(layout: &FlvLayout, samples: &[SampleMeta], hevc: bool) -> Vec<u8> {
    let mut file = layout.header().to_vec();
    for (i, s) in samples.iter().enumerate() {
        layout.tag_prefix(i, &mut file);
        file.extend_from_slice(&payload(i, s, hevc));
        layout.tag_suffix(i, &mut file);
    }
    file
}

struct Tag<'a> {
    offset: usize,
    tag_type: u8,
    timestamp: u32,
    body: &'a [u8],
}

/// Walks every tag, checking the file header, stream ids and every PreviousTagSize.
fn walk(file: &[u8]) -> Vec<Tag<'_>> {
    assert_eq!(&file[..4], b"FLV\x01");
    assert_eq!(&file[5..13], &[0, 0, 0, 9, 0, 0, 0, 0]);
    let mut tags = Vec::new();
    let mut pos = 13;
    while pos < file.len() {
        let h = &file[pos..pos + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        assert_eq!(&h[8..11], &[0, 0, 0], "stream id at {pos}");
        let body = &file[pos + 11..pos + 11 + size];
        let prev = &file[pos + 11 + size..pos + 15 + size];
        assert_eq!(
            u32::from_be_bytes(prev.try_into().unwrap()) as usize,
            11 + size,
            "PreviousTagSize after the tag at {pos}"
        );
        tags.push(Tag {
            offset: pos,
            tag_type: h[0],
            timestamp,
            body,
        });
        pos += 15 + size;
    }
    assert_eq!(pos, file.len());
    tags
}

fn ms(t: Ticks) -> i64 {
    (t - BASE).div_euclid(90)
}

#[test]
fn h264_aac_file_layout_and_metadata() {
    let samples = samples();
    let layout = FlvLayout::plan(&tracks(false), &samples).unwrap();
    let file = assemble(&layout, &samples, false);
    assert_eq!(layout.total_len(), file.len() as u64);
    assert_eq!(layout.sample_count(), samples.len());
    assert_eq!(file[4], 0x05, "audio and video flags");
    // Video ends at the latest pts (BASE + 15450) plus one 3000-tick step.
    assert_eq!(layout.duration(), 18_450);

    let tags = walk(&file);
    assert_eq!(tags.len(), 3 + samples.len());
    assert_eq!(
        tags[..3].iter().map(|t| t.tag_type).collect::<Vec<_>>(),
        [TAG_SCRIPT, TAG_VIDEO, TAG_AUDIO]
    );
    assert_eq!(
        tags[3].offset,
        layout.header().len(),
        "header ends at the first sample"
    );
    assert_eq!(&tags[1].body[..5], &[0x17, 0, 0, 0, 0]);
    assert_eq!(&tags[1].body[5..], &hex(AVCC_1080)[..]);
    assert_eq!(tags[2].body, &[0xAF, 0, 0x12, 0x10]);
    for (t, s) in tags[3..].iter().zip(&samples) {
        assert_eq!(i64::from(t.timestamp), ms(s.dts));
    }

    let values = amf0::decode_all(tags[0].body, 8).unwrap();
    assert_eq!(values[0].as_str(), Some("onMetaData"));
    let meta = &values[1];
    let n = |k: &str| meta.get(k).and_then(Value::as_f64).unwrap();
    assert_eq!(n("filesize"), file.len() as f64);
    assert_eq!(n("duration"), 18_450.0 / 90_000.0);
    assert_eq!((n("width"), n("height")), (1920.0, 1080.0));
    assert_eq!(n("framerate"), 30.0);
    assert_eq!(n("videocodecid"), 7.0);
    assert_eq!(n("audiocodecid"), 10.0);
    assert_eq!(n("audiosamplerate"), 44_100.0);
    assert_eq!(meta.get("stereo"), Some(&Value::Boolean(true)));

    let keyframes = meta.get("keyframes").unwrap();
    let numbers = |k: &str| match keyframes.get(k) {
        Some(Value::StrictArray(v)) => v.iter().map(|x| x.as_f64().unwrap()).collect(),
        other => panic!("{k}: {other:?}"),
    };
    let positions: Vec<f64> = numbers("filepositions");
    let times: Vec<f64> = numbers("times");
    let key_samples: Vec<&SampleMeta> = samples
        .iter()
        .filter(|s| s.kind == TrackKind::Video && s.keyframe)
        .collect();
    assert_eq!(positions.len(), 2);
    assert_eq!(times.len(), 2);
    for ((&pos, &time), s) in positions.iter().zip(&times).zip(&key_samples) {
        let pos = pos as usize;
        assert_eq!(file[pos], TAG_VIDEO, "tag type at {pos}");
        assert_eq!(file[pos + 11] >> 4, 1, "key frame type at {pos}");
        assert!(tags.iter().any(|t| t.offset == pos));
        assert_eq!(time, ms(s.dts) as f64 / 1000.0);
    }
    assert!(positions[0] < positions[1]);
}

fn round_trip(hevc: bool) {
    let tracks = tracks(hevc);
    let samples = samples();
    let layout = FlvLayout::plan(&tracks, &samples).unwrap();
    let file = assemble(&layout, &samples, hevc);
    let tags = walk(&file);
    let mut demux = FlvDemuxer::new();
    let mut configs = Vec::new();
    let mut frames = Vec::new();
    for t in &tags[1..] {
        let body = Bytes::copy_from_slice(t.body);
        let ev = match t.tag_type {
            TAG_VIDEO => demux.push_video(t.timestamp, body),
            TAG_AUDIO => demux.push_audio(t.timestamp, body),
            other => panic!("tag type {other}"),
        };
        match ev.unwrap() {
            Some(DemuxEvent::Config(c)) => configs.push(c),
            Some(DemuxEvent::Frame(f)) => frames.push(f),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(configs, vec![tracks.video.clone().unwrap(), aac()]);
    assert_eq!(frames.len(), samples.len());
    let mut saw_codec_frames_x = false;
    for (i, (f, s)) in frames.iter().zip(&samples).enumerate() {
        assert_eq!(f.kind, s.kind, "sample {i}");
        assert_eq!(f.dts, ms(s.dts) * 90, "dts of sample {i}");
        assert_eq!(
            f.pts,
            ms(s.dts + i64::from(s.cts)) * 90,
            "pts of sample {i}"
        );
        assert_eq!(f.keyframe, s.keyframe, "sample {i}");
        assert_eq!(&f.data[..], &payload(i, s, hevc)[..], "sample {i}");
        saw_codec_frames_x |= s.kind == TrackKind::Video && s.cts == 0;
    }
    assert!(saw_codec_frames_x);
    if hevc {
        assert_eq!(file[4], 0x05);
        let mut seq = vec![0x90];
        seq.extend_from_slice(b"hvc1");
        seq.extend(hex(HVCC_1080));
        assert_eq!(tags[1].body, &seq[..]);
        let video: Vec<&Tag> = tags[3..]
            .iter()
            .filter(|t| t.tag_type == TAG_VIDEO)
            .collect();
        // Key with an offset: CodedFrames; inter with none: CodedFramesX.
        assert_eq!(&video[0].body[..8], b"\x91hvc1\x00\x00\x21");
        assert_eq!(&video[2].body[..5], b"\xA3hvc1");
    }
}

#[test]
fn h264_round_trips_through_the_ingest_demuxer() {
    round_trip(false);
}

#[test]
fn h265_enhanced_round_trips_through_the_ingest_demuxer() {
    round_trip(true);
}

#[test]
fn h265_metadata_uses_the_fourcc() {
    let layout = FlvLayout::plan(&tracks(true), &samples()).unwrap();
    let tags = walk(layout.header());
    let values = amf0::decode_all(tags[0].body, 8).unwrap();
    assert_eq!(
        values[1].get("videocodecid").and_then(Value::as_f64),
        Some(f64::from(u32::from_be_bytes(*b"hvc1")))
    );
}

#[test]
fn ffprobe_reads_h264_aac() {
    if std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("ffprobe not on PATH: skipping the ffprobe check");
        return;
    }
    let samples = samples();
    let layout = FlvLayout::plan(&tracks(false), &samples).unwrap();
    let file = assemble(&layout, &samples, false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.flv");
    std::fs::write(&path, &file).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_packets",
            "-show_format",
        ])
        .args(["-of", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let streams = json["streams"].as_array().unwrap();
    let mut codecs: Vec<(&str, &str)> = streams
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap(),
                s["codec_name"].as_str().unwrap(),
            )
        })
        .collect();
    codecs.sort();
    assert_eq!(codecs, [("audio", "aac"), ("video", "h264")]);

    let packets = json["packets"].as_array().unwrap();
    let got = |kind: &str| -> Vec<(i64, i64, u64, bool)> {
        packets
            .iter()
            .filter(|p| p["codec_type"] == kind)
            .map(|p| {
                (
                    p["dts"].as_i64().unwrap(),
                    p["pts"].as_i64().unwrap(),
                    p["size"].as_str().unwrap().parse().unwrap(),
                    p["flags"].as_str().unwrap().starts_with('K'),
                )
            })
            .collect()
    };
    let want = |kind: TrackKind| -> Vec<(i64, i64, u64, bool)> {
        samples
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| {
                let pts = ms(s.dts + i64::from(s.cts));
                (ms(s.dts), pts, u64::from(s.size), s.keyframe)
            })
            .collect()
    };
    assert_eq!(got("video"), want(TrackKind::Video));
    assert_eq!(got("audio"), want(TrackKind::Audio));
    assert_eq!(got("video").len(), 6);
    assert_eq!(got("audio").len(), 8);

    let duration: f64 = json["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - 0.205).abs() < 0.0005,
        "format duration {duration}"
    );
}

#[test]
fn extended_timestamps_and_audio_only() {
    let far_ms: i64 = 0x8123_4567;
    let samples = [
        SampleMeta {
            kind: TrackKind::Audio,
            dts: BASE,
            cts: 0,
            keyframe: true,
            size: 4,
        },
        SampleMeta {
            kind: TrackKind::Audio,
            dts: BASE + far_ms * 90,
            cts: 0,
            keyframe: true,
            size: 4,
        },
    ];
    // A video track without samples is left out of the file.
    let layout = FlvLayout::plan(&tracks(false), &samples).unwrap();
    let mut file = layout.header().to_vec();
    for i in 0..2 {
        layout.tag_prefix(i, &mut file);
        file.extend_from_slice(&[1, 2, 3, 4]);
        layout.tag_suffix(i, &mut file);
    }
    assert_eq!(file.len() as u64, layout.total_len());
    assert_eq!(file[4], 0x04, "audio only");
    let tags = walk(&file);
    assert_eq!(
        tags.iter().map(|t| t.tag_type).collect::<Vec<_>>(),
        [TAG_SCRIPT, TAG_AUDIO, TAG_AUDIO, TAG_AUDIO]
    );
    let last = tags[3].offset;
    assert_eq!(&file[last + 4..last + 8], &[0x23, 0x45, 0x67, 0x81]);
    assert_eq!(i64::from(tags[3].timestamp), far_ms);
    assert_eq!(layout.duration(), far_ms * 90 + 2090);
    let values = amf0::decode_all(tags[0].body, 8).unwrap();
    assert!(values[1].get("keyframes").is_none());
    assert!(values[1].get("videocodecid").is_none());

    // Out-of-range indexes append nothing.
    let mut out = Vec::new();
    layout.tag_prefix(2, &mut out);
    layout.tag_suffix(2, &mut out);
    assert!(out.is_empty());
}

#[test]
fn errors() {
    let video = SampleMeta {
        kind: TrackKind::Video,
        dts: 0,
        cts: 0,
        keyframe: true,
        size: 10,
    };
    assert_eq!(
        FlvLayout::plan(&tracks(false), &[]).unwrap_err(),
        MuxError::NoTracks
    );
    assert_eq!(
        FlvLayout::plan(&Tracks::default(), &[video]).unwrap_err(),
        MuxError::NoTracks
    );
    let audio_only = Tracks {
        video: None,
        audio: Some(aac()),
    };
    assert_eq!(
        FlvLayout::plan(&audio_only, &[video]).unwrap_err(),
        MuxError::NoSuchTrack {
            kind: TrackKind::Video
        }
    );
    let wrong = Tracks {
        video: Some(aac()),
        audio: None,
    };
    assert_eq!(
        FlvLayout::plan(&wrong, &[video]).unwrap_err(),
        MuxError::UnsupportedCodec {
            container: "flv",
            kind: TrackKind::Video,
            codec: "aac"
        }
    );
    let huge = SampleMeta {
        size: 0xFF_FFFF - 4,
        ..video
    };
    assert!(matches!(
        FlvLayout::plan(&tracks(false), &[huge]).unwrap_err(),
        MuxError::BadFrame {
            kind: TrackKind::Video,
            ..
        }
    ));
    let fits = SampleMeta {
        size: 0xFF_FFFF - 5,
        ..video
    };
    assert!(FlvLayout::plan(&tracks(false), &[fits]).is_ok());
}
