//! The recording model end to end with real peers: templates and rules in the config,
//! ffmpeg publishing over RTMP, and MP4/FLV/AAC files derived from the capture, downloaded
//! over HTTP and decoded by ffmpeg/ffprobe.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::media::{self, Clip};
use support::{http, wait_for, Daemon};

/// One frame at 25 fps.
const FRAME_S: f64 = 0.04;

fn template_config(formats: &str, interval_s: u32) -> String {
    let file = |f: &str| {
        format!("{f} = {{ enabled = true, record_interval_s = {interval_s}, file_name = \"{{StreamID}}_{{RecordId}}_{f}\" }}\n")
    };
    let mut t = String::from(
        "[[template]]\nname = \"all\"\nhls = { enabled = true, flow_continue_duration_s = 3 }\n",
    );
    for f in formats.split(',') {
        t.push_str(&file(f));
    }
    t.push_str("\n[[rule]]\napp = \"live\"\ntemplate = \"all\"\n");
    t
}

/// Waits until the stream's recordings are all closed: `n_files` files and its HLS one.
fn wait_closed(d: &Daemon, stream: &str, n_files: usize) -> (Value, Vec<Value>) {
    wait_for(
        &format!("{stream}: HLS finished and {n_files} files"),
        Duration::from_secs(60),
        || {
            let recs = d.json(&format!("/api/v1/recordings?stream={stream}"));
            let recs = support::oldest_first(recs.as_array()?.clone());
            let hls = recs
                .iter()
                .find(|r| r["format"] == "hls" && r["state"] == "finished")?
                .clone();
            let files: Vec<Value> = recs.into_iter().filter(|r| r["format"] != "hls").collect();
            (files.len() == n_files
                && files
                    .iter()
                    .all(|f| f["state"] == "finished" || f["state"] == "skipped"))
            .then_some((hls, files))
        },
    )
}

/// Downloads a file recording into the test's temp dir.
fn download(d: &Daemon, file: &Value, dir: &Path) -> PathBuf {
    let url = file["download"].as_str().expect("download link");
    let r = d.get(url);
    assert_eq!(r.status, 200, "GET {url}: {}", r.text());
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, r.body.len(), "Content-Length is exact");
    let path = dir.join(file["file_name"].as_str().expect("file name"));
    std::fs::write(&path, &r.body).unwrap();
    path
}

/// Per-stream facts ffprobe reports (decoding every frame).
#[derive(Debug, Default)]
struct Streams {
    codecs: Vec<String>,
    video_frames: u64,
    audio_frames: u64,
    video_start: Option<f64>,
    audio_start: Option<f64>,
    duration: f64,
}

fn streams(path: &Path) -> Streams {
    let out = media::tool("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=codec_type,codec_name,codec_tag_string,nb_read_frames,start_time:format=duration")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut s = Streams::default();
    for st in v["streams"].as_array().unwrap() {
        let n: u64 = st["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let start: Option<f64> = st["start_time"].as_str().and_then(|t| t.parse().ok());
        s.codecs.push(format!(
            "{}/{}",
            st["codec_name"].as_str().unwrap_or("?"),
            st["codec_tag_string"].as_str().unwrap_or("?")
        ));
        match st["codec_type"].as_str() {
            Some("video") => (s.video_frames, s.video_start) = (n, start),
            Some("audio") => (s.audio_frames, s.audio_start) = (n, start),
            _ => {}
        }
    }
    s.duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    s
}

/// Presentation span of a file's packets: latest (pts + duration) minus earliest pts.
fn span(path: &Path) -> f64 {
    let out = media::tool("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=pts_time,duration_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.split(',').map(|v| v.trim().parse::<f64>());
        if let (Some(Ok(pts)), Some(Ok(d))) = (it.next(), it.next()) {
            lo = lo.min(pts);
            hi = hi.max(pts + d);
        }
    }
    hi - lo
}

/// Top-level MP4 box types in order.
fn top_boxes(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as u64;
        let kind = String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned();
        if size == 1 {
            size = u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap());
        }
        out.push(kind);
        if size < 8 {
            break;
        }
        at += size as usize;
    }
    out
}

fn assert_clean(path: &Path) {
    let errors = media::decode_errors(path.to_str().unwrap());
    assert!(
        errors.trim().is_empty(),
        "decode errors in {}:\n{errors}",
        path.display()
    );
}

/// The first video packet ffmpeg reads after seeking to `at` seconds.
fn first_video_after_seek(path: &Path, at: f64) -> f64 {
    let out = media::tool("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-read_intervals"])
        .arg(format!("{at}%+#1"))
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn one_publish_makes_four_playable_formats() {
    let d = Daemon::start_with_sections(&template_config("mp4,flv,aac", 1800));
    let clip = media::clip(Clip::AudioVideo, 20);
    media::publish_and_wait(
        &format!("{}?record_id=match42", d.rtmp_url("live", "all4")),
        &clip,
        false,
    );
    let (hls, files) = wait_closed(&d, "all4", 3);
    assert_eq!(hls["template"], "all");
    assert_eq!(hls["record_id"], "match42");
    let hls_probe = media::probe(&d.http_url(hls["playlist"].as_str().unwrap()));
    let sent_span = span(&clip);
    let sent = streams(&clip);
    let sent_offset = sent.video_start.unwrap() - sent.audio_start.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut by_format = std::collections::HashMap::new();
    for f in &files {
        assert_eq!(f["template"], "all");
        assert_eq!(f["record_id"], "match42");
        let format = f["format"].as_str().unwrap().to_owned();
        let name = f["file_name"].as_str().unwrap();
        let ext = if format == "aac" {
            "m4a"
        } else {
            format.as_str()
        };
        assert_eq!(name, format!("all4_match42_{format}.{ext}"));
        let path = download(&d, f, dir.path());
        assert_clean(&path);
        by_format.insert(format, (path.clone(), streams(&path)));
    }

    let (mp4, s) = &by_format["mp4"];
    assert_eq!(top_boxes(mp4)[..3], ["ftyp", "moov", "mdat"], "faststart");
    assert_eq!(s.codecs, ["h264/avc1", "aac/mp4a"]);
    assert_eq!(
        s.video_frames, hls_probe.video_frames,
        "every frame of the HLS recording"
    );
    assert!(
        s.audio_frames.abs_diff(hls_probe.audio_frames) <= 1,
        "{s:?} vs {hls_probe:?}"
    );
    let (v0, a0) = (s.video_start.unwrap(), s.audio_start.unwrap());
    assert!((v0 - a0).abs() <= FRAME_S + 1e-6, "A/V start {v0} vs {a0}");
    assert!(
        (v0 - a0 - sent_offset).abs() <= 0.002,
        "A/V offset as sent: {v0} - {a0} vs {sent_offset}"
    );
    assert!(
        (s.duration - sent_span).abs() <= FRAME_S + 1e-6,
        "duration {} vs the clip's span {sent_span}",
        s.duration
    );

    let (flv, s) = &by_format["flv"];
    assert_eq!(s.video_frames, hls_probe.video_frames);
    assert!(
        (span(flv) - sent_span).abs() <= FRAME_S + 1e-6,
        "FLV span {} vs the clip's {sent_span}",
        span(flv)
    );
    let landed = first_video_after_seek(flv, 10.0);
    assert!(
        (9.0..=11.0).contains(&landed),
        "seek to 10 s landed at {landed}"
    );

    let (m4a, s) = &by_format["aac"];
    assert_eq!(s.codecs, ["aac/mp4a"], "audio only");
    assert_eq!(s.video_frames, 0);
    assert!(s.audio_frames.abs_diff(hls_probe.audio_frames) <= 1);
    assert_eq!(top_boxes(m4a)[..3], ["ftyp", "moov", "mdat"]);

    // A range of a file is exactly those bytes of the whole.
    let whole = std::fs::read(mp4).unwrap();
    let url = files.iter().find(|f| f["format"] == "mp4").unwrap()["download"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http::get_with(&d.http, &url, &[("Range", "bytes=1000-200999")]).unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-200999/{}", whole.len()).as_str())
    );
    assert_eq!(r.body, whole[1000..201000]);
    let r = http::get_with(
        &d.http,
        &url,
        &[("Range", &format!("bytes={}-", whole.len()))],
    )
    .unwrap();
    assert_eq!(r.status, 416);

    // Bytes are a pure function of the segments: a second download is identical.
    let again = d.get(&url);
    assert_eq!(again.body, whole);
}

#[test]
fn files_split_at_the_interval_cover_every_frame_once() {
    let d = Daemon::start_with_sections(&template_config("mp4", 60));
    let clip = media::clip(Clip::AudioVideo, 150);
    media::publish_paced_and_wait(&d.rtmp_url("live", "long"), &clip, 10);
    let (hls, files) = wait_closed(&d, "long", 3);
    let hls_probe = media::probe(&d.http_url(hls["playlist"].as_str().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let mut frames = 0;
    let mut total = 0.0;
    let mut last_seq = 0;
    for f in &files {
        let detail = d.recording(f["id"].as_str().unwrap());
        let segs = detail["segment_list"].as_array().unwrap();
        assert_eq!(
            segs[0]["seq"].as_u64().unwrap(),
            last_seq + 1,
            "no gap, no overlap"
        );
        last_seq = segs.last().unwrap()["seq"].as_u64().unwrap();
        let path = download(&d, f, dir.path());
        assert_clean(&path);
        let s = streams(&path);
        frames += s.video_frames;
        total += s.duration;
        let first = media::packets(&path).into_iter().find(|p| p.video).unwrap();
        assert!(first.key, "{} starts on a keyframe", f["id"]);
    }
    let durations: Vec<f64> = files
        .iter()
        .map(|f| f["duration_s"].as_f64().unwrap())
        .collect();
    assert!(durations[0] >= 60.0 && durations[0] < 65.0, "{durations:?}");
    assert!(durations[1] >= 60.0 && durations[1] < 65.0, "{durations:?}");
    assert_eq!(frames, hls_probe.video_frames, "every frame exactly once");
    // Against the clip's own presentation span: ffprobe's duration estimate of an HLS
    // playlist varies from run to run (146 s for this clip once under qemu).
    let sent_span = span(&clip);
    assert!(
        (total - sent_span).abs() < 3.0 * FRAME_S + 0.1,
        "{total} vs the clip's {sent_span}"
    );
}

#[test]
fn a_reconnect_inside_the_window_continues_one_mp4() {
    let d = Daemon::start_with_sections(&template_config("mp4", 1800));
    let clip = media::clip(Clip::AudioVideo, 8);
    media::publish_and_wait(&d.rtmp_url("live", "flaky"), &clip, false);
    media::publish_and_wait(&d.rtmp_url("live", "flaky"), &clip, false);
    let (hls, files) = wait_closed(&d, "flaky", 1);
    assert_eq!(hls["sessions"], 2);
    let dir = tempfile::tempdir().unwrap();
    let path = download(&d, &files[0], dir.path());
    assert_clean(&path);
    let s = streams(&path);
    let hls_probe = media::probe(&d.http_url(hls["playlist"].as_str().unwrap()));
    assert_eq!(s.video_frames, hls_probe.video_frames);
    assert!(
        s.duration > 15.0 && s.duration < 16.5,
        "continuous, gap closed: {}",
        s.duration
    );
}

#[test]
fn audio_only_publish_makes_an_m4a_and_video_only_makes_none() {
    let d = Daemon::start_with_sections(&template_config("mp4,aac", 1800));
    media::publish_and_wait(
        &d.rtmp_url("live", "radio"),
        &media::clip(Clip::AudioOnly, 10),
        false,
    );
    media::publish_and_wait(
        &d.rtmp_url("live", "mute"),
        &media::clip(Clip::VideoOnly, 10),
        false,
    );
    let (_, files) = wait_closed(&d, "radio", 2);
    let dir = tempfile::tempdir().unwrap();
    for f in &files {
        let path = download(&d, f, dir.path());
        assert_clean(&path);
        let s = streams(&path);
        assert_eq!(s.codecs, ["aac/mp4a"], "{}", f["format"]);
        assert!((s.duration - 10.0).abs() < 0.1, "{}", s.duration);
    }
    let (_, files) = wait_closed(&d, "mute", 2);
    let aac = files.iter().find(|f| f["format"] == "aac").unwrap();
    assert_eq!(aac["state"], "skipped");
    assert!(aac["note"].as_str().unwrap().contains("no audio"), "{aac}");
    assert!(aac.get("download").is_none());
    let mp4 = files.iter().find(|f| f["format"] == "mp4").unwrap();
    let path = download(&d, mp4, dir.path());
    assert_eq!(streams(&path).codecs, ["h264/avc1"]);
}

#[test]
fn rules_choose_templates_and_can_turn_recording_off() {
    let sections = r#"
[[template]]
name = "stage"
hls = { flow_continue_duration_s = 0 }
mp4 = { }

[[template]]
name = "plain"
hls = { flow_continue_duration_s = 0 }

[[rule]]
app = "live"
template = "plain"

[[rule]]
app = "live"
stream = "main"
template = "stage"

[[rule]]
app = "live"
stream = "backstage"
enabled = false
"#;
    let mut d = Daemon::configure_with("flow_continue_duration_s = 0", "", sections);
    d.spawn();
    let clip = media::clip(Clip::AudioVideo, 6);
    for stream in ["main", "side", "backstage"] {
        media::publish_and_wait(&d.rtmp_url("live", stream), &clip, false);
    }
    media::publish_and_wait(&d.rtmp_url("other", "cam"), &clip, false);
    let recs = wait_for(
        "recordings of main, side and other/cam",
        Duration::from_secs(30),
        || {
            let recs = d.recordings();
            (recs.len() == 4 && recs.iter().all(|r| r["state"] == "finished")).then_some(recs)
        },
    );
    let of = |stream: &str, format: &str| {
        recs.iter()
            .filter(|r| r["stream"] == stream && r["format"] == format)
            .map(|r| r["template"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("main", "hls"), ["stage"], "exact stream beats app");
    assert_eq!(of("main", "mp4"), ["stage"]);
    assert_eq!(of("side", "hls"), ["plain"]);
    assert!(of("side", "mp4").is_empty());
    assert!(
        of("backstage", "hls").is_empty(),
        "enabled = false records nothing"
    );
    assert_eq!(
        of("cam", "hls"),
        ["default"],
        "no rule: the built-in default"
    );
    assert!(
        d.log().contains("not recorded"),
        "the log says why backstage is not recorded"
    );
    let media = d.data_dir().join("media/live/backstage");
    assert!(!media.exists(), "nothing written for backstage");
}

#[test]
fn hevc_over_enhanced_rtmp_gives_a_playable_hvc1_mp4() {
    let d = Daemon::start_with_sections(&template_config("mp4", 1800).replace(
        "flow_continue_duration_s = 3",
        "flow_continue_duration_s = 0",
    ));
    let (aus, hvcc) = support::hevc::encode_clip(6);
    support::hevc::publish(&d.rtmp, "hevc", &aus, &hvcc);
    let (_, files) = wait_closed(&d, "hevc", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = download(&d, &files[0], dir.path());
    assert_clean(&path);
    let s = streams(&path);
    assert_eq!(s.codecs, ["hevc/hvc1"]);
    assert_eq!(s.video_frames, aus.len() as u64);
}

#[test]
fn templates_and_rules_made_over_the_api_survive_a_restart() {
    let sections = "[[template]]\nname = \"fixed\"\nhls = { }\n";
    let mut d = Daemon::configure_with("flow_continue_duration_s = 0", "", sections);
    d.spawn();
    let send = |d: &Daemon, method: &str, path: &str, body: &str| {
        http::send_json(method, &d.http, path, body).unwrap()
    };
    let r = send(
        &d,
        "POST",
        "/api/v1/templates",
        r#"{"name":"api-t","hls":{"flow_continue_duration_s":0},"mp4":{"record_interval_s":60}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send(
        &d,
        "POST",
        "/api/v1/templates",
        r#"{"name":"x","mp4":{"record_interval_s":5}}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("mp4.record_interval_s: 5 is out of range; allowed 30-7200"),
        "{}",
        r.text()
    );
    let r = send(&d, "POST", "/api/v1/templates", r#"{"name":"x","mkv":{}}"#);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("mkv"), "{}", r.text());
    let r = send(&d, "PUT", "/api/v1/templates/fixed", r#"{"hls":{}}"#);
    assert_eq!(r.status, 409, "config-defined templates are read-only");
    assert!(r.text().contains("config file"), "{}", r.text());
    let r = send(
        &d,
        "POST",
        "/api/v1/rules",
        r#"{"app":"live","template":"missing"}"#,
    );
    assert_eq!(r.status, 400);
    let r = send(
        &d,
        "POST",
        "/api/v1/rules",
        r#"{"app":"live","stream":"api","template":"api-t"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let rule: Value = serde_json::from_slice(&r.body).unwrap();
    let r = send(&d, "DELETE", "/api/v1/templates/api-t", "");
    assert_eq!(r.status, 409, "a template a rule uses stays");

    d.stop();
    d.spawn();
    let templates = d.json("/api/v1/templates");
    let names: Vec<(&str, &str)> = templates
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("default", "config"), ("fixed", "config"), ("api-t", "api")]
    );
    let rules = d.json("/api/v1/rules");
    assert_eq!(rules[0]["id"], rule["id"]);
    assert_eq!(rules[0]["source"], "api");

    media::publish_and_wait(
        &d.rtmp_url("live", "api"),
        &media::clip(Clip::AudioVideo, 6),
        false,
    );
    let (hls, files) = wait_closed(&d, "api", 1);
    assert_eq!(hls["template"], "api-t");
    assert_eq!(files[0]["format"], "mp4");

    let r = send(
        &d,
        "DELETE",
        &format!("/api/v1/rules/{}", rule["id"].as_str().unwrap()),
        "",
    );
    assert_eq!(r.status, 204);
    let r = send(&d, "DELETE", "/api/v1/templates/api-t", "");
    assert_eq!(r.status, 204);
}

#[test]
fn a_codec_change_mid_file_starts_a_new_file_and_loses_nothing() {
    use support::rtmp_client::RawClient;
    let config = template_config("mp4", 1800).replace(
        "flow_continue_duration_s = 3",
        "flow_continue_duration_s = 0",
    );
    let d = Daemon::start_with_sections(&config);
    let (big, small) = (
        media::clip(Clip::AudioVideo, 6),
        media::clip_sized(Clip::AudioVideo, 6, "320x240"),
    );
    let mut c = RawClient::connect(&d.rtmp);
    let (id, codes) = c.publish("live", "switch", false);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    let mut sent_video = 0;
    let mut offset = 0;
    for clip in [&big, &small] {
        let tags = support::flv::read_tags(clip);
        let mut last = 0;
        for (i, tag) in tags.iter().enumerate() {
            let ts = offset + tag.timestamp;
            last = last.max(ts);
            match tag.kind {
                9 => {
                    c.session.video(id, ts, &tag.body);
                    sent_video += u64::from(tag.body.get(1) == Some(&1));
                }
                8 => c.session.audio(id, ts, &tag.body),
                _ => continue,
            }
            if i % 32 == 0 {
                c.flush().unwrap();
            }
        }
        offset = last + 40;
    }
    c.session.delete_stream(id);
    c.flush().unwrap();
    let (hls, files) = wait_closed(&d, "switch", 2);
    assert_eq!(hls["sessions"], 1);
    let dir = tempfile::tempdir().unwrap();
    let mut frames = 0;
    let mut sizes = Vec::new();
    for f in &files {
        let path = download(&d, f, dir.path());
        assert_clean(&path);
        frames += streams(&path).video_frames;
        let out = media::tool("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v",
                "-show_entries",
                "stream=width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
            .unwrap();
        sizes.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    assert_eq!(sizes, ["640,360", "320,240"], "one file per resolution");
    assert_eq!(
        frames, sent_video,
        "every frame sent is in one of the files"
    );
}

#[test]
fn a_segment_lost_to_recovery_is_skipped_and_said() {
    let config = template_config("mp4", 1800).replace(
        "flow_continue_duration_s = 3",
        "flow_continue_duration_s = 0",
    );
    let mut d = Daemon::start_with_sections(&config);
    media::publish_and_wait(
        &d.rtmp_url("live", "lossy"),
        &media::clip(Clip::AudioVideo, 20),
        false,
    );
    let (hls, files) = wait_closed(&d, "lossy", 1);
    let dir = tempfile::tempdir().unwrap();
    let before = streams(&download(&d, &files[0], dir.path())).video_frames;
    let lost = d.recording_dir(&hls).join("00000003.ts");
    let lost_frames = streams(&lost).video_frames;
    assert!(lost_frames >= 75, "a whole segment: {lost_frames}");
    d.stop();
    std::fs::remove_file(&lost).unwrap();
    // What start-up recovery does for an open capture, `fsck --repair` does for a closed
    // one: the missing file becomes a gap.
    let (code, out) = d.fsck(true);
    assert_eq!(code, 0, "{out}");
    d.spawn();
    let file = wait_for(
        "the file row to mention the lost segment",
        Duration::from_secs(30),
        || {
            let f = d.recording(files[0]["id"].as_str().unwrap());
            f["note"]
                .as_str()
                .is_some_and(|n| n.contains("lost"))
                .then_some(f)
        },
    );
    let path = download(&d, &file, dir.path());
    assert_clean(&path);
    assert_eq!(
        streams(&path).video_frames,
        before - lost_frames,
        "everything but the lost segment"
    );
}

#[test]
fn record_audio_only_keeps_only_the_audio_track_in_every_format() {
    let config = template_config("mp4", 1800)
        .replace(
            "flow_continue_duration_s = 3",
            "flow_continue_duration_s = 0",
        )
        .replace("[[rule]]", "record_audio_only = true\n\n[[rule]]");
    let d = Daemon::start_with_sections(&config);
    media::publish_and_wait(
        &d.rtmp_url("live", "podcast"),
        &media::clip(Clip::AudioVideo, 6),
        false,
    );
    let (hls, files) = wait_closed(&d, "podcast", 1);
    assert!(hls["video_codec"].is_null(), "{hls}");
    assert_eq!(hls["audio_codec"], "aac");
    let hls_probe = media::probe(&d.http_url(hls["playlist"].as_str().unwrap()));
    assert_eq!(hls_probe.video_frames, 0);
    assert!(hls_probe.audio_frames > 250, "{hls_probe:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = download(&d, &files[0], dir.path());
    assert_clean(&path);
    assert_eq!(streams(&path).codecs, ["aac/mp4a"]);
}
