//! Test media made at test time with ffmpeg, publishing with ffmpeg, and checks with
//! ffprobe/ffmpeg decoding.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

/// What a generated clip contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clip {
    /// testsrc2 640x360 25 fps H.264 (1 s GOP, no B-frames... x264 veryfast default has
    /// B-frames, which we keep: composition times must survive) + 48 kHz AAC sine.
    AudioVideo,
    VideoOnly,
    AudioOnly,
}

pub fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.arg("-hide_banner");
    if name == "ffmpeg" {
        c.arg("-nostdin");
    }
    c
}

/// The file `ffmpeg ARGS OUTPUT` makes, generated once and then reused by every test
/// binary and run that shares this target dir. Its name carries a hash of `args`, so a
/// changed recipe makes a new file rather than reusing a stale one. `args` must name the
/// output format (`-f`), since the file is written under a temporary name and renamed.
pub fn generated(stem: &str, ext: &str, args: &[String]) -> PathBuf {
    static GENERATE: Mutex<()> = Mutex::new(());
    let _guard = GENERATE.lock().unwrap_or_else(|e| e.into_inner());
    let path = super::media_dir().join(format!("{stem}-{:016x}.{ext}", fnv1a(args)));
    if path.exists() {
        return path;
    }
    // Another test binary may be making the same file: each writes its own temporary file
    // and the rename is atomic, so a reader never sees half a clip.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let out = tool("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(&tmp)
        .output()
        .expect("ffmpeg must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "generating {stem} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &path).expect("rename generated media");
    path
}

/// FNV-1a over the arguments, NUL-separated: stable across runs and toolchains.
fn fnv1a(args: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in args.iter().flat_map(|a| a.bytes().chain([0])) {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// An FLV clip of `seconds` (video 640x360).
pub fn clip(kind: Clip, seconds: u32) -> PathBuf {
    clip_sized(kind, seconds, "640x360")
}

/// An FLV clip of `seconds` with video of `size` (`WxH`).
pub fn clip_sized(kind: Clip, seconds: u32, size: &str) -> PathBuf {
    let d = seconds.to_string();
    let mut args = Vec::new();
    if kind != Clip::AudioOnly {
        args.extend(strings(&["-f", "lavfi", "-i"]));
        args.push(format!("testsrc2=size={size}:rate=25:duration={d}"));
    }
    if kind != Clip::VideoOnly {
        args.extend(strings(&["-f", "lavfi", "-i"]));
        args.push(format!(
            "sine=frequency=1000:sample_rate=48000:duration={d}"
        ));
    }
    if kind != Clip::AudioOnly {
        args.extend(strings(&[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-b:v",
            "1M",
        ]));
    }
    if kind != Clip::VideoOnly {
        args.extend(strings(&["-c:a", "aac", "-b:a", "128k", "-ar", "48000"]));
    }
    args.extend(strings(&["-f", "flv"]));
    let stem = match size {
        "640x360" => format!("{kind:?}-{seconds}s"),
        _ => format!("{kind:?}-{seconds}s-{size}"),
    };
    generated(&stem, "flv", &args)
}

/// A clip of incompressible video (lossless noise, ~9 MB/s) with audio: makes segments
/// big enough for multipart uploads and fills disks fast.
pub fn noise_clip(seconds: u32) -> PathBuf {
    let d = seconds.to_string();
    let mut args = strings(&["-f", "lavfi", "-i"]);
    args.push(format!(
        "nullsrc=s=640x360:r=25:d={d},geq=lum='random(1)*255':cb=128:cr=128"
    ));
    args.extend(strings(&["-f", "lavfi", "-i"]));
    args.push(format!("sine=frequency=440:sample_rate=48000:duration={d}"));
    args.extend(strings(&[
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-qp",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "25",
        "-c:a",
        "aac",
        "-f",
        "flv",
    ]));
    generated(&format!("noise-{seconds}s"), "flv", &args)
}

/// Starts `ffmpeg -c copy` publishing `clip` to `url`; `realtime` adds `-re`.
pub fn publish(url: &str, clip: &Path, realtime: bool) -> Child {
    let mut c = tool("ffmpeg");
    c.args(["-v", "error"]);
    if realtime {
        c.arg("-re");
    }
    c.arg("-i").arg(clip).args(["-c", "copy", "-f", "flv", url]);
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg")
}

/// Publishes and waits; panics with ffmpeg's stderr if it fails.
pub fn publish_and_wait(url: &str, clip: &Path, realtime: bool) {
    let out = publish(url, clip, realtime)
        .wait_with_output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg publish to {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes at `speed` times real time (`-readrate`) and waits. A long clip pushed
/// unpaced outruns the flash writer's queue on a busy machine, and the recorder then
/// drops frames by design; a test that counts frames paces its publisher.
pub fn publish_paced_and_wait(url: &str, clip: &Path, speed: u32) {
    let out = tool("ffmpeg")
        .args(["-v", "error", "-readrate", &speed.to_string(), "-i"])
        .arg(clip)
        .args(["-c", "copy", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg publish to {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Frame counts and duration as ffprobe decodes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub video_frames: u64,
    pub audio_frames: u64,
    pub duration_s: f64,
}

pub fn probe(input: &str) -> Probe {
    try_probe_inner(input, true).expect("probe")
}

/// None when ffprobe cannot read `input` (refused, unplayable) or finds no frames.
pub fn try_probe(input: &str) -> Option<Probe> {
    try_probe_inner(input, false).filter(|p| p.video_frames + p.audio_frames > 0)
}

fn try_probe_inner(input: &str, must: bool) -> Option<Probe> {
    let out = tool("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,nb_read_frames:format=duration",
            "-of",
            "json",
            input,
        ])
        .output()
        .expect("ffprobe");
    if !must && !out.status.success() {
        return None;
    }
    assert!(
        out.status.success(),
        "ffprobe {input}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let mut p = Probe {
        video_frames: 0,
        audio_frames: 0,
        duration_s: 0.0,
    };
    for s in v["streams"].as_array().into_iter().flatten() {
        let n: u64 = s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        match s["codec_type"].as_str() {
            Some("video") => p.video_frames += n,
            Some("audio") => p.audio_frames += n,
            _ => {}
        }
    }
    p.duration_s = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    Some(p)
}

/// Decoder complaints (empty = clean) from `ffmpeg -v error -i INPUT -f null -`.
pub fn decode_errors(input: &str) -> String {
    let out = tool("ffmpeg")
        .args(["-v", "error", "-i", input, "-map", "0", "-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    // Not decoding errors: ffmpeg's null output complains when two decoded pictures fall
    // in one slot of the frame rate it guessed (a publisher's clock repaired by a few
    // milliseconds does that). The recording's own DTS order is checked from packets.
    let mut s: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("non monotonically increasing dts to muxer"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !out.status.success() {
        s.push_str(&format!("\n(exit {:?})", out.status.code()));
    }
    s
}

/// One demuxed packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub video: bool,
    pub dts: f64,
    pub key: bool,
}

/// Packets of a file, in file order.
pub fn packets(path: &Path) -> Vec<Packet> {
    let out = tool("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type,dts_time,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let kind = f.next()?;
            let dts = f.next()?.parse().ok()?;
            let flags = f.next().unwrap_or("");
            Some(Packet {
                video: kind == "video",
                dts,
                key: flags.contains('K'),
            })
        })
        .collect()
}

/// Checks a finished recording's segments on disk: each starts with a video keyframe (when
/// there is video), and the DTS step across every boundary that is not a declared
/// discontinuity is at most `max_step_s`. Returns the number of boundaries checked.
pub fn check_segment_continuity(
    dir: &Path,
    segments: &[Value],
    has_video: bool,
    max_step_s: f64,
) -> usize {
    let mut prev_last: Option<f64> = None;
    let mut checked = 0;
    for seg in segments {
        let file = seg["uri"].as_str().unwrap().rsplit('/').next().unwrap();
        let pkts = packets(&dir.join(file));
        let video: Vec<_> = pkts.iter().filter(|p| p.video == has_video).collect();
        assert!(!video.is_empty(), "segment {file} has no packets");
        if has_video && !seg["recovered"].as_bool().unwrap_or(false) {
            assert!(
                video[0].key,
                "segment {file} does not start with a keyframe"
            );
        }
        let first = video.iter().map(|p| p.dts).fold(f64::MAX, f64::min);
        let last = video.iter().map(|p| p.dts).fold(f64::MIN, f64::max);
        if let Some(prev) = prev_last {
            if !seg["discontinuity"].as_bool().unwrap() {
                let step = first - prev;
                assert!(
                    step > 0.0 && step <= max_step_s,
                    "gap of {step:.3} s before {file}"
                );
                checked += 1;
            }
        }
        prev_last = Some(last);
    }
    checked
}
