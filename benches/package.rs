//! Benchmark of derived-file packaging (`edgerec::package::DerivedFile`): the CPU and
//! memory it takes to turn one capture's TS segments into an MP4, FLV or AAC (M4A) file.
//!
//! Builds a synthetic capture (default 1 hour at ~2 Mb/s: 25 fps H.264 with a keyframe
//! every second, 48 kHz AAC-LC, 4 s segments), then, for each format, in a fresh child
//! process (so `ru_maxrss` is that format's own high-water mark): plans the file and
//! reads all of it with `read_range` in 8 MiB steps, like a multipart upload.
//!
//! Run: `cargo bench --bench package [-- --minutes N] [--keep]`.
//! Internal: `package --child FORMAT DATA_DIR` measures one format and prints one line
//! of `key=value` figures.
//!
//! Units: MB = 10^6 bytes, MiB = 2^20 bytes; CPU = user + system time of the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use edgerec::config::Format;
use edgerec::index::{FileRow, FileState, Index, RecordingRow, RecordingState, SegmentRow, Update};
use edgerec::media::aac::AacConfig;
use edgerec::media::avc::AvcConfig;
use edgerec::media::{CodecParams, Frame, Ticks, TrackKind, Tracks};
use edgerec::mux::ts::TsMuxer;
use edgerec::package::DerivedFile;
use edgerec::storage::Storage;

/// A real x264 1080p avcC (copied from `src/media/avc.rs` tests).
const AVCC_1080: &str = "01640028ffe1001b67640028acd940780227e5c044000003000400\
000300c83c60c65801000668ebe3cb22c0fdf8f800";
/// AAC-LC, 48 kHz, stereo.
const ASC: [u8; 2] = [0x11, 0x90];

const FPS: i64 = 25;
const VIDEO_TICKS: Ticks = 90_000 / FPS;
const AUDIO_TICKS: Ticks = 1024 * 90_000 / 48_000;
const GOP: u64 = 25;
const SEGMENT_GOPS: u64 = 4;
const KEYFRAME_BYTES: usize = 40_000;
const FRAME_BYTES: usize = 8_000;
const AUDIO_BYTES: usize = 370;
const READ_STEP: u64 = 8 << 20;

const APP: &str = "bench";
const STREAM: &str = "cam";
const CAPTURE_ID: &str = "20260101T000000000Z-bench";
const START_MS: i64 = 1_767_225_600_000;

/// Targets the team tracks.
const TARGET_MB_PER_CPU_S: f64 = 100.0;
const RSS_BASE_BYTES: f64 = 16e6;
const RSS_PER_SAMPLE_BYTES: f64 = 16.0;

const FORMATS: [Format; 3] = [Format::Mp4, Format::Flv, Format::Aac];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let format = args.get(i + 1).and_then(|f| Format::parse(f));
        let dir = args.get(i + 2).map(PathBuf::from);
        match (format, dir) {
            (Some(format), Some(dir)) => child(format, &dir),
            _ => {
                eprintln!("usage: package --child mp4|flv|aac DATA_DIR");
                std::process::exit(2);
            }
        }
        return;
    }
    let mut minutes = 60u64;
    let mut keep = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--minutes" => match it.next().and_then(|v| v.parse().ok()) {
                Some(m) if m > 0 => minutes = m,
                _ => {
                    eprintln!("--minutes needs a positive whole number");
                    std::process::exit(2);
                }
            },
            "--keep" => keep = true,
            _ => {} // `--bench` from cargo, and anything else
        }
    }
    parent(minutes, keep);
}

// ---------------------------------------------------------------------------------------
// Parent: build the capture, run one child per format, print the table.

fn parent(minutes: u64, keep: bool) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("edgerec derived-file packaging benchmark");
    println!(
        "  measures: DerivedFile::plan + read_range of the whole file in {} MiB steps,",
        READ_STEP >> 20
    );
    println!(
        "            per format, each in its own child process (CPU = user+sys, RSS = ru_maxrss)"
    );
    println!(
        "  capture:  {minutes} min synthetic, 25 fps H.264 (IDR ~40 KB every 25 frames, ~8 KB others)"
    );
    println!("            + AAC-LC 48 kHz (~370 B/frame), 4 s TS segments (~2 Mb/s)");
    println!(
        "  machine:  {cores} cores (nproc), {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!(
        "  targets:  >= {TARGET_MB_PER_CPU_S} MB of TS per CPU second; peak RSS <= 16 MB + 16 B/sample (MB = 10^6 B)"
    );

    let base = bench_tmp_dir().join(format!("package-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("create bench data dir");

    let started = Instant::now();
    let capture = build_capture(&base, minutes);
    println!(
        "  data:     {} segments, {:.1} MB of TS, {} video + {} audio frames, built in {:.1} s at {}",
        capture.segments,
        capture.ts_bytes as f64 / 1e6,
        capture.video_frames,
        capture.audio_frames,
        started.elapsed().as_secs_f64(),
        base.display()
    );
    println!();

    let exe = std::env::current_exe().expect("current_exe");
    let mut results = Vec::new();
    for format in FORMATS {
        let out = Command::new(&exe)
            .arg("--child")
            .arg(format.as_str())
            .arg(&base)
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with("format="));
        match (out.status.success(), line) {
            (true, Some(line)) => results.push(parse_figures(line)),
            _ => {
                println!(
                    "{}: child failed ({}):\n{}{}",
                    format.as_str(),
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    print_table(&results);

    if keep {
        println!("\nkept the data at {}", base.display());
    } else if let Err(e) = std::fs::remove_dir_all(&base) {
        println!("\ncould not remove {}: {e}", base.display());
    }
}

fn bench_tmp_dir() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

struct Capture {
    segments: u32,
    ts_bytes: u64,
    video_frames: u64,
    audio_frames: u64,
}

/// xorshift64*: cheap pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `n` bytes in 1..=255, so no `00 00 0x` start code (or emulation) pattern appears.
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        while out.len() < n {
            for b in self.next().to_le_bytes() {
                if b != 0 && out.len() < n {
                    out.push(b);
                }
            }
        }
    }

    /// `base` +- 10 %.
    fn around(&mut self, base: usize) -> usize {
        let spread = base / 5;
        base - base / 10 + (self.next() % spread as u64) as usize
    }
}

fn video_frame(rng: &mut Rng, n: u64) -> Frame {
    let keyframe = n.is_multiple_of(GOP);
    let size = rng.around(if keyframe {
        KEYFRAME_BYTES
    } else {
        FRAME_BYTES
    });
    let mut data = Vec::with_capacity(size + 4);
    data.extend_from_slice(&(size as u32).to_be_bytes());
    data.push(if keyframe { 0x65 } else { 0x41 });
    rng.fill(&mut data, size + 4);
    let dts = n as i64 * VIDEO_TICKS;
    Frame {
        kind: TrackKind::Video,
        dts,
        pts: dts,
        keyframe,
        data: Bytes::from(data),
    }
}

fn audio_frame(rng: &mut Rng, n: u64) -> Frame {
    let size = rng.around(AUDIO_BYTES);
    let mut data = Vec::with_capacity(size);
    rng.fill(&mut data, size);
    let dts = n as i64 * AUDIO_TICKS;
    Frame {
        kind: TrackKind::Audio,
        dts,
        pts: dts,
        keyframe: true,
        data: Bytes::from(data),
    }
}

fn build_capture(base: &Path, minutes: u64) -> Capture {
    let avcc = hex(AVCC_1080);
    let tracks = Tracks {
        video: Some(CodecParams::H264(AvcConfig::parse(&avcc).expect("avcC"))),
        audio: Some(CodecParams::Aac(AacConfig::parse(&ASC).expect("ASC"))),
    };
    let index = Index::open(&base.join("index")).expect("open index");
    let storage = Storage::new(base.join("media"));
    let mut row = RecordingRow::new(CAPTURE_ID.into(), APP.into(), STREAM.into(), START_MS);
    row.video_codec = Some("h264".into());
    row.audio_codec = Some("aac".into());
    row.resolution = Some((1920, 1080));
    index.create_recording(&row).expect("create recording");
    let dir = storage
        .create_recording_dir(APP, STREAM, CAPTURE_ID)
        .expect("recording dir");

    let total_video = minutes * 60 * FPS as u64;
    let end: Ticks = total_video as i64 * VIDEO_TICKS;
    let mut muxer = TsMuxer::new(&tracks).expect("ts muxer");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut v, mut a) = (0u64, 0u64);
    let mut seq = 0u32;
    let mut ts_bytes = 0u64;
    let mut out = Vec::with_capacity(4 << 20);
    let mut seg_start: Option<Ticks> = None;

    let close = |out: &mut Vec<u8>, muxer: &mut TsMuxer, seq: u32, start: Ticks, next: Ticks| {
        muxer.flush(out);
        let file = SegmentRow::file_name(seq);
        std::fs::write(dir.join(&file), &out[..]).expect("write segment");
        let seg = SegmentRow {
            seq,
            file,
            duration_ticks: next - start,
            bytes: out.len() as u64,
            media_start: start,
            wall_start_ms: START_MS + start / 90,
            keyframe: true,
            discontinuity: false,
            gap: false,
            recovered: false,
            codec_change: false,
            params: 0,
        };
        index
            .commit_segment(CAPTURE_ID, &seg)
            .expect("commit segment");
        let n = out.len() as u64;
        out.clear();
        n
    };

    // Frames in dts order; at equal dts video first, so a segment opens on its keyframe.
    loop {
        let vdts = (v < total_video).then(|| v as i64 * VIDEO_TICKS);
        let adts = a as i64 * AUDIO_TICKS;
        let take_video = match vdts {
            Some(vd) => vd <= adts,
            None if adts < end => false,
            None => break,
        };
        let frame = if take_video {
            if v.is_multiple_of(GOP * SEGMENT_GOPS) {
                let dts = v as i64 * VIDEO_TICKS;
                if let Some(start) = seg_start {
                    ts_bytes += close(&mut out, &mut muxer, seq, start, dts);
                }
                seq += 1;
                seg_start = Some(dts);
                muxer.write_tables(&mut out);
            }
            v += 1;
            video_frame(&mut rng, v - 1)
        } else {
            a += 1;
            audio_frame(&mut rng, a - 1)
        };
        muxer.write_frame(&frame, &mut out).expect("mux frame");
    }
    if let Some(start) = seg_start {
        ts_bytes += close(&mut out, &mut muxer, seq, start, end);
    }

    let finished = index
        .update_recording(CAPTURE_ID, |r| {
            r.state = RecordingState::Finished;
            Update::Write
        })
        .expect("finish recording");
    for format in FORMATS {
        index
            .put_file(&FileRow {
                id: FileRow::make_id(CAPTURE_ID, format, 1),
                capture_id: CAPTURE_ID.into(),
                app: APP.into(),
                stream: STREAM.into(),
                format,
                template: "default".into(),
                number: 1,
                first_seq: 1,
                last_seq: seq,
                state: FileState::Finished,
                start_ms: finished.start_ms,
                end_ms: finished.end_ms,
                duration_ticks: finished.duration_ticks,
                segments: finished.segments,
                ts_bytes: finished.bytes,
                gaps: 0,
                file_name: None,
                store_key: None,
                storage_time_s: 0,
                record_id: None,
                note: None,
                uploaded_ms: None,
                before: None,
                store_expiry: None,
                task_id: None,
                task_template: None,
                start: None,
            })
            .expect("put file");
    }
    // What the children need to count samples.
    std::fs::write(base.join("frames"), format!("{v} {a} {ts_bytes} {seq}\n"))
        .expect("write frame counts");
    Capture {
        segments: seq,
        ts_bytes,
        video_frames: v,
        audio_frames: a,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn parse_figures(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn print_table(results: &[HashMap<String, String>]) {
    let num = |r: &HashMap<String, String>, k: &str| -> f64 {
        r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    println!(
        "{:<6} {:>9} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "format",
        "TS MB",
        "file MB",
        "samples",
        "plan s",
        "read s",
        "CPU s",
        "wall s",
        "MB/CPU-s",
        "RSS MiB",
        "limit MiB",
        "TS rd MB"
    );
    for r in results {
        let samples = num(r, "samples");
        let limit = RSS_BASE_BYTES + RSS_PER_SAMPLE_BYTES * samples;
        println!(
            "{:<6} {:>9.1} {:>10.1} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>8.1} {:>9.1} {:>9.1}",
            r.get("format").map_or("?", |s| s.as_str()),
            num(r, "ts_bytes") / 1e6,
            num(r, "file_bytes") / 1e6,
            samples,
            num(r, "plan_cpu_s"),
            num(r, "read_cpu_s"),
            num(r, "plan_cpu_s") + num(r, "read_cpu_s"),
            num(r, "plan_wall_s") + num(r, "read_wall_s"),
            num(r, "mb_per_cpu_s"),
            num(r, "maxrss_kib") / 1024.0,
            limit / (1 << 20) as f64,
            (num(r, "plan_rchar") + num(r, "read_rchar")) / 1e6,
        );
    }
    println!();
    println!("  (TS rd MB: bytes the process read from files during plan + read, from /proc/self/io rchar)");
    println!(
        "  (samples: demuxed frames minus the plan's dropped_frames; dropped: {}; MP4/M4A stsz: {})",
        results
            .iter()
            .map(|r| format!(
                "{} {}",
                r.get("format").map_or("?", |s| s.as_str()),
                r.get("dropped").map_or("?", |s| s.as_str())
            ))
            .collect::<Vec<_>>()
            .join(", "),
        results
            .iter()
            .filter_map(|r| Some(format!("{} {}", r.get("format")?, r.get("stsz")?)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  (RSS at start, before plan: {})",
        results
            .iter()
            .map(|r| format!(
                "{} {:.1} MiB",
                r.get("format").map_or("?", |s| s.as_str()),
                num(r, "start_rss_kib") / 1024.0
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("targets:");
    for r in results {
        let format = r.get("format").map_or("?", |s| s.as_str());
        let rate = num(r, "mb_per_cpu_s");
        let rss = num(r, "maxrss_kib") * 1024.0;
        let limit = RSS_BASE_BYTES + RSS_PER_SAMPLE_BYTES * num(r, "samples");
        let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
        println!(
            "  {format:<4} throughput {rate:>7.1} MB/CPU-s vs >= {TARGET_MB_PER_CPU_S:.0}: {}",
            verdict(rate >= TARGET_MB_PER_CPU_S)
        );
        println!(
            "  {format:<4} peak RSS   {:>7.1} MB      vs <= {:.1} MB: {}",
            rss / 1e6,
            limit / 1e6,
            verdict(rss <= limit)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Child: one format, measured in its own process.

#[derive(Clone, Copy)]
struct Usage {
    cpu_s: f64,
    maxrss_kib: i64,
    rchar: u64,
    at: Instant,
}

fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss,
        rchar: rchar(),
        at: Instant::now(),
    }
}

/// Bytes read by this process so far (Linux `/proc/self/io`), 0 where unavailable.
fn rchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The samples the `stsz` boxes of an MP4 header list (the header must be in `bytes`).
fn mp4_sample_count(bytes: &[u8]) -> Option<u64> {
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    // Top-level boxes up to `mdat`: the header.
    let mut at = 0usize;
    let mut header_end = None;
    while let Some(size) = u32_at(at) {
        if bytes.get(at + 4..at + 8)? == b"mdat" {
            header_end = Some(at);
            break;
        }
        at += size.max(8) as usize;
    }
    let header = &bytes[..header_end?];
    let mut total = 0u64;
    for i in 0..header.len().saturating_sub(16) {
        if &header[i..i + 4] == b"stsz" {
            total += u64::from(u32_at(i + 12)?);
        }
    }
    Some(total)
}

fn child(format: Format, base: &Path) {
    let counts = std::fs::read_to_string(base.join("frames")).expect("read frame counts");
    let counts: Vec<u64> = counts
        .split_whitespace()
        .map(|n| n.parse().expect("count"))
        .collect();
    let (video_frames, audio_frames, ts_bytes) = (counts[0], counts[1], counts[2]);

    let index = Index::open(&base.join("index")).expect("open index");
    let storage = Storage::new(base.join("media"));
    let row = index
        .get_file(&FileRow::make_id(CAPTURE_ID, format, 1))
        .expect("get file")
        .expect("file row");

    let start = usage();
    let file = DerivedFile::plan(&index, &storage, &row).expect("plan");
    let planned = usage();
    let len = file.len();
    let mut read = 0u64;
    let mut offset = 0u64;
    let mut stsz_samples = None;
    while offset < len {
        let end = (offset + READ_STEP).min(len);
        let bytes = file.read_range(offset, end).expect("read_range");
        assert_eq!(bytes.len() as u64, end - offset, "short read at {offset}");
        if offset == 0 && format != Format::Flv {
            stsz_samples = mp4_sample_count(&bytes);
        }
        read += bytes.len() as u64;
        // Keep the optimiser from eliding the copy.
        std::hint::black_box(&bytes);
        offset = end;
    }
    let done = usage();
    assert_eq!(read, len, "bytes read != file length");

    // The plan counts every demuxed frame it does not take as dropped, including the
    // video frames of an AAC file.
    let samples = (video_frames + audio_frames).saturating_sub(file.dropped_frames);
    if let Some(n) = stsz_samples {
        assert_eq!(n, samples, "stsz sample count != frames - dropped");
    }
    let plan_cpu = planned.cpu_s - start.cpu_s;
    let read_cpu = done.cpu_s - planned.cpu_s;
    let total_cpu = plan_cpu + read_cpu;
    println!(
        "format={} ts_bytes={ts_bytes} file_bytes={read} samples={samples} dropped={} stsz={} \
         plan_cpu_s={plan_cpu:.3} read_cpu_s={read_cpu:.3} \
         plan_wall_s={:.3} read_wall_s={:.3} mb_per_cpu_s={:.1} \
         plan_rchar={} read_rchar={} start_rss_kib={} maxrss_kib={}",
        format.as_str(),
        file.dropped_frames,
        stsz_samples.map_or("-".to_owned(), |n| n.to_string()),
        (planned.at - start.at).as_secs_f64(),
        (done.at - planned.at).as_secs_f64(),
        ts_bytes as f64 / 1e6 / total_cpu,
        planned.rchar - start.rchar,
        done.rchar - planned.rchar,
        start.maxrss_kib,
        done.maxrss_kib,
    );
}
