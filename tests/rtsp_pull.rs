//! RTSP pull with a real camera: GStreamer's RTSP server (`support::camera`) serves live
//! test media, the real daemon pulls and records it, and ffmpeg/ffprobe decode what it
//! serves back. Camera faults are real too: the camera process is killed and restarted,
//! never started, serves media we cannot record, or holds a session without RTP.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::camera::Camera;
use support::media;
use support::{http, wait_for, Daemon};

/// The camera's frame rate and GOP (`rtsp_camera.py`).
const FPS: f64 = 25.0;
const GOP_FRAMES: f64 = 25.0;
/// One AAC frame of the test camera's 48 kHz audio.
const AAC_FRAME_S: f64 = 1024.0 / 48_000.0;

fn sources(d: &Daemon) -> Vec<Value> {
    d.json("/api/v1/sources").as_array().cloned().unwrap()
}

fn source(d: &Daemon, name: &str) -> Value {
    d.json(&format!("/api/v1/sources/{name}"))
}

fn add_source(d: &Daemon, body: &str) -> Value {
    let r = http::send_json("POST", &d.http, "/api/v1/sources", body).unwrap();
    assert_eq!(r.status, 201, "POST /api/v1/sources: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn delete_source(d: &Daemon, name: &str) -> u16 {
    http::request(
        "DELETE",
        &d.http,
        &format!("/api/v1/sources/{name}"),
        &[],
        b"",
    )
    .unwrap()
    .status
}

/// Waits until source `name` is in backoff; returns its `last_error`.
fn wait_backoff(d: &Daemon, name: &str) -> String {
    let src = wait_for(
        &format!("source {name} in backoff"),
        Duration::from_secs(20),
        || {
            let s = source(d, name);
            (s["state"] == "backoff").then_some(s)
        },
    );
    src["last_error"].as_str().unwrap_or_default().to_owned()
}

/// Waits until `name` is recording and has handed at least `media_s` of media to the
/// writer; returns the live stream's entry.
fn wait_recorded(d: &Daemon, name: &str, media_s: u64, limit: Duration) -> Value {
    let src = wait_for(&format!("source {name} recording"), limit, || {
        let s = source(d, name);
        (s["state"] == "recording").then_some(s)
    });
    let key = format!(
        "{}/{}",
        src["app"].as_str().unwrap(),
        src["stream"].as_str().unwrap()
    );
    wait_for(&format!("{media_s} s of {key}"), limit, || {
        d.json("/api/v1/streams")
            .as_array()?
            .iter()
            .find(|s| {
                format!(
                    "{}/{}",
                    s["app"].as_str().unwrap_or(""),
                    s["stream"].as_str().unwrap_or("")
                ) == key
            })
            .filter(|s| s["media_received_ms"].as_u64().unwrap_or(0) >= media_s * 1000)
            .cloned()
    })
}

/// Decodes the finished recording: no decoder errors, video frames within one GOP per
/// session of its duration at the camera's frame rate, and (with audio) as much audio as
/// video within a GOP. Returns the recording's detail.
fn assert_decodes(d: &Daemon, rec: &Value, audio: bool, sessions: f64) -> media::Probe {
    let url = d.http_url(rec["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(
        errors.trim().is_empty(),
        "decode errors in {url}:\n{errors}"
    );
    let got = media::probe(&url);
    let duration = rec["duration_s"].as_f64().unwrap();
    assert!(duration > 2.0, "recorded only {duration} s");
    let expected = duration * FPS;
    assert!(
        (got.video_frames as f64 - expected).abs() <= GOP_FRAMES * sessions,
        "{} video frames in {duration} s at {FPS} fps",
        got.video_frames
    );
    if audio {
        let audio_s = got.audio_frames as f64 * 1024.0 / 48_000.0;
        assert!(
            (audio_s - duration).abs() <= sessions,
            "{audio_s} s of audio in {duration} s"
        );
    } else {
        assert_eq!(got.audio_frames, 0, "audio recorded");
    }
    got
}

/// Every segment's video decode times increase, and no frame is presented before it
/// is decoded; the first segment's audio starts within an AAC frame of its first picture.
fn assert_timestamps(d: &Daemon, rec: &Value, audio: bool) {
    for (i, file) in segment_files(d, rec).iter().enumerate() {
        let mut last_dts = f64::MIN;
        let (mut first_video, mut first_audio) = (None, None);
        for (kind, pts, dts) in packets(file) {
            if kind == "video" {
                assert!(
                    dts > last_dts,
                    "video DTS not increasing in {file:?}: {dts} after {last_dts}"
                );
                assert!(pts >= dts, "video PTS {pts} before DTS {dts} in {file:?}");
                last_dts = dts;
                first_video.get_or_insert(pts);
            } else {
                first_audio.get_or_insert(pts);
            }
        }
        if i == 0 && audio {
            let (v, a) = (
                first_video.unwrap(),
                first_audio.expect("audio in the first segment"),
            );
            // Audio held or received for the keyframe's instant is recorded from it on:
            // the first audio frame is the one playing when the first picture shows (or,
            // when the camera's audio starts after its video, its first).
            assert!(
                (a - v).abs() < AAC_FRAME_S + 0.002,
                "A/V start apart: video {v}, audio {a}"
            );
        }
    }
}

/// The files of a recording's segments, in order.
fn segment_files(d: &Daemon, rec: &Value) -> Vec<std::path::PathBuf> {
    let dir = d.recording_dir(rec);
    rec["segment_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seg| dir.join(seg["uri"].as_str().unwrap().rsplit('/').next().unwrap()))
        .collect()
}

/// (codec type, PTS, DTS) of every packet of a segment file, in file order.
fn packets(file: &std::path::Path) -> Vec<(String, f64, f64)> {
    let out = media::tool("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type,pts_time,dts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 3 {
                return None;
            }
            let (Ok(pts), Ok(dts)) = (f[1].parse::<f64>(), f[2].parse::<f64>()) else {
                // Every PES the muxer writes carries a PTS, but one audio PES holds several
                // ADTS frames and ffprobe derives the later frames' times itself; once, on a
                // loaded CI machine, it gave one of them none. Audio times are checked only
                // at a segment's start; a video frame without times is always an error.
                assert_ne!(
                    f[0], "video",
                    "packet without timestamps in {file:?}: {line}"
                );
                eprintln!("note: ffprobe gave an audio frame no timestamps in {file:?}");
                return None;
            };
            Some((f[0].to_owned(), pts, dts))
        })
        .collect()
}

/// A daemon with `record` lines in `[record]` and whole `sections` (`[[source]]`).
fn daemon(record: &str, sections: &str) -> Daemon {
    let mut d = Daemon::configure_with(record, "", sections);
    d.spawn();
    d
}

fn config_source(app: &str, stream: &str, url: &str, extra: &str) -> String {
    format!("[[source]]\napp = \"{app}\"\nstream = \"{stream}\"\nurl = \"{url}\"\n{extra}\n")
}

/// The one recording of the daemon once it is finished (the camera gone).
fn finished_recording(d: &Daemon) -> Value {
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(60));
    d.recording(recs[0]["id"].as_str().unwrap())
}

#[test]
fn camera_from_the_config_is_recorded_with_credentials_never_shown() {
    let mut camera = Camera::start("h264-aac");
    let url = camera.url("admin:s3cret@");
    let d = daemon(
        "flow_continue_duration_s = 2",
        &config_source("cam", "stage-left", &url, ""),
    );
    let live = wait_recorded(&d, "cam-stage-left", 6, Duration::from_secs(30));
    assert_eq!(live["video_codec"], "h264");
    assert_eq!(live["audio_codec"], "aac");
    assert_eq!(live["resolution"], "320x240");
    let src = source(&d, "cam-stage-left");
    assert_eq!(src["source"], "config");
    assert_eq!(
        src["url"],
        format!("rtsp://***@127.0.0.1:{}/stream1", camera.port)
    );
    assert_eq!(
        (src["video"].as_str(), src["audio"].as_str()),
        (Some("h264"), Some("aac"))
    );
    assert!(src["bitrate_bps"].as_u64().unwrap() > 50_000, "{src}");
    assert_eq!(src["recording_id"], live["recording_id"]);
    // Config sources are read-only over the API.
    assert_eq!(delete_source(&d, "cam-stage-left"), 409);
    let shown = [
        d.get("/api/v1/sources").text(),
        d.get("/api/v1/streams").text(),
    ];
    camera.kill();
    let rec = finished_recording(&d);
    assert_decodes(&d, &rec, true, 1.0);
    assert_timestamps(&d, &rec, true);
    let src = source(&d, "cam-stage-left");
    assert_eq!(src["state"], "backoff", "{src}");
    assert!(src["last_error"].is_string(), "{src}");
    for text in shown.iter().chain([
        &d.log(),
        &d.get(&format!(
            "/api/v1/recordings/{}",
            rec["id"].as_str().unwrap()
        ))
        .text(),
    ]) {
        assert!(!text.contains("s3cret"), "the password leaked:\n{text}");
    }
}

#[test]
fn camera_reboot_inside_the_window_continues_one_recording() {
    let mut camera = Camera::start("h264-aac");
    let d = daemon(
        "flow_continue_duration_s = 20",
        &config_source("cam", "reboot", &camera.url(""), ""),
    );
    let first = wait_recorded(&d, "cam-reboot", 5, Duration::from_secs(30));
    camera.restart();
    // The supervisor reconnects (backoff from 1 s) and the same recording continues.
    wait_for("a second session", Duration::from_secs(30), || {
        let src = source(&d, "cam-reboot");
        (src["state"] == "recording" && src["attempts"].as_u64() >= Some(2)).then_some(())
    });
    let again = wait_recorded(&d, "cam-reboot", 5, Duration::from_secs(30));
    assert_eq!(
        again["recording_id"], first["recording_id"],
        "one recording"
    );
    camera.kill();
    let recs = wait_for("the recording resumable", Duration::from_secs(30), || {
        let recs = d.recordings();
        (recs.len() == 1 && recs[0]["state"] == "resumable").then_some(recs)
    });
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec["sessions"], 2, "{rec}");
    assert_eq!(rec["discontinuities"], 1, "{rec}");
    let playlist = d
        .get(&format!(
            "/hls/recordings/{}/index.m3u8",
            rec["id"].as_str().unwrap()
        ))
        .text();
    assert_eq!(
        playlist.matches("#EXT-X-DISCONTINUITY\n").count(),
        1,
        "{playlist}"
    );
    assert_timestamps(&d, &rec, true);
}

#[test]
fn unreachable_camera_backs_off_and_records_once_it_answers() {
    // A port nobody listens on (taken from a camera that then goes away).
    let port = {
        let c = Camera::start("h264-aac");
        c.port
    };
    let d = daemon(
        "flow_continue_duration_s = 2",
        &config_source(
            "cam",
            "late",
            &format!("rtsp://127.0.0.1:{port}/stream1"),
            "",
        ),
    );
    let src = wait_for("two failed attempts", Duration::from_secs(20), || {
        let s = source(&d, "cam-late");
        (s["attempts"].as_u64() >= Some(2) && s["state"] == "backoff").then_some(s)
    });
    let error = src["last_error"].as_str().unwrap();
    assert!(
        error.contains("DESCRIBE failed") && error.contains("refused"),
        "{error}"
    );
    assert!(src["next_attempt"].is_string(), "{src}");
    assert!(
        d.recordings().is_empty(),
        "nothing recorded while the camera is off"
    );
    let mut camera = Camera::start_on("h264-aac", port);
    wait_recorded(&d, "cam-late", 4, Duration::from_secs(40));
    camera.kill();
    let rec = finished_recording(&d);
    assert_decodes(&d, &rec, true, 1.0);
}

#[test]
fn unrecordable_and_stalled_cameras_get_clear_errors_and_others_keep_recording() {
    let mjpeg = Camera::start("mjpeg");
    let mut stalls = Camera::start("stalls");
    let mut good = Camera::start("h264-aac");
    let sections = [
        config_source("cam", "mjpeg", &mjpeg.url(""), ""),
        config_source("cam", "stalls", &stalls.url(""), "idle_timeout_s = 2"),
        config_source("cam", "good", &good.url(""), ""),
    ]
    .concat();
    let d = daemon("flow_continue_duration_s = 2", &sections);
    let error = wait_backoff(&d, "cam-mjpeg");
    assert!(
        error.contains("nothing recordable") && error.contains("video/jpeg"),
        "{error}"
    );
    // The stalling camera keeps its session after 3 s of video: reconnected after 2 s
    // without RTP (and again, as the reconnected session sends nothing either).
    let quiet = wait_for(
        "the stalled camera timed out",
        Duration::from_secs(30),
        || {
            let s = source(&d, "cam-stalls");
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no media for 2 s"))
                .then_some(s)
        },
    );
    assert!(quiet["recording_id"].is_null(), "{quiet}");
    wait_recorded(&d, "cam-good", 4, Duration::from_secs(30));
    good.kill();
    stalls.kill();
    let recs = d.wait_recordings(2, "finished", Duration::from_secs(60));
    let streams: Vec<&str> = recs.iter().map(|r| r["stream"].as_str().unwrap()).collect();
    assert!(
        streams.contains(&"good") && streams.contains(&"stalls"),
        "{streams:?}"
    );
    for r in &recs {
        let rec = d.recording(r["id"].as_str().unwrap());
        if rec["stream"] == "good" {
            assert_decodes(&d, &rec, true, 1.0);
        } else {
            // Each session the camera grants holds the 3 s before its stall.
            let url = d.http_url(rec["playlist"].as_str().unwrap());
            assert!(media::decode_errors(&url).trim().is_empty());
            let frames = media::probe(&url).video_frames;
            let sessions = rec["sessions"].as_u64().unwrap();
            // 3 s at 25 fps, plus what the encoder and the server still held at the stall.
            assert!(
                frames >= 50 && frames <= 110 * sessions,
                "{frames} frames in {sessions} session(s) of 3 s before a stall"
            );
        }
    }
    // A failing source is logged when its error changes, not at every attempt.
    let warned = d
        .log()
        .matches("camera source disconnected source=cam-mjpeg")
        .count();
    let attempts = source(&d, "cam-mjpeg")["attempts"].as_u64().unwrap() as usize;
    assert!(
        attempts >= 2 && warned < attempts + 1,
        "{warned} log lines for {attempts} attempts"
    );
}

#[test]
fn pcma_audio_is_left_out_with_a_reason_and_the_video_recorded() {
    let mut camera = Camera::start("h264-pcma");
    let d = daemon(
        "flow_continue_duration_s = 2",
        &config_source("cam", "pcma", &camera.url(""), ""),
    );
    let live = wait_recorded(&d, "cam-pcma", 5, Duration::from_secs(30));
    assert_eq!(
        live["audio_dropped"], "pcma: not storable in MPEG-TS",
        "{live}"
    );
    assert!(live["audio_codec"].is_null(), "{live}");
    assert_eq!(
        source(&d, "cam-pcma")["audio_dropped"],
        "pcma: not storable in MPEG-TS"
    );
    assert_eq!(d.log().matches("camera audio not recorded").count(), 1);
    camera.kill();
    let rec = finished_recording(&d);
    assert_decodes(&d, &rec, false, 1.0);
}

#[test]
fn b_frames_get_decode_times_before_presentation() {
    let mut camera = Camera::start("h264-bframes");
    let d = daemon(
        "flow_continue_duration_s = 2",
        &config_source("cam", "bframes", &camera.url(""), ""),
    );
    let live = wait_recorded(&d, "cam-bframes", 6, Duration::from_secs(30));
    assert_eq!(live["timestamps_repaired"], 0, "{live}");
    camera.kill();
    let rec = finished_recording(&d);
    assert_decodes(&d, &rec, true, 1.0);
    assert_timestamps(&d, &rec, true);
    // The reordering is real: some frame is presented after a later-decoded one.
    let seg = &rec["segment_list"][0];
    let file = d
        .recording_dir(&rec)
        .join(seg["uri"].as_str().unwrap().rsplit('/').next().unwrap());
    let out = media::tool("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let pts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_end_matches(',').parse().ok())
        .collect();
    assert!(
        pts.windows(2).any(|w| w[1] < w[0]),
        "no B-frame reordering in {pts:?}"
    );
}

#[test]
fn h265_camera_over_udp_is_recorded() {
    let mut camera = Camera::start("h265-aac");
    let d = daemon(
        "flow_continue_duration_s = 2",
        &config_source("cam", "hevc", &camera.url(""), "transport = \"udp\""),
    );
    let live = wait_recorded(&d, "cam-hevc", 5, Duration::from_secs(40));
    assert_eq!(live["video_codec"], "h265");
    assert_eq!(source(&d, "cam-hevc")["transport"], "udp");
    camera.kill();
    let rec = finished_recording(&d);
    assert_decodes(&d, &rec, true, 1.0);
    assert_timestamps(&d, &rec, true);
}

#[test]
fn api_sources_are_validated_persisted_and_removed() {
    let mut camera = Camera::start("h264-aac");
    let mut d = daemon("flow_continue_duration_s = 2", "");
    for (body, want) in [
        (
            r#"{"app":"cam","stream":"..","url":"rtsp://127.0.0.1/x"}"#,
            "stream",
        ),
        (
            r#"{"app":"cam","stream":"x","url":"http://127.0.0.1/x"}"#,
            "rtsp://",
        ),
        (
            r#"{"app":"cam","stream":"x","url":"rtsps://127.0.0.1/x"}"#,
            "rtsps",
        ),
        (r#"{"app":"cam","stream":"x"}"#, "url"),
    ] {
        let r = http::send_json("POST", &d.http, "/api/v1/sources", body).unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(want), "{body}: {}", r.text());
    }
    let body = format!(
        r#"{{"name":"door","app":"cam","stream":"door","url":"{}","transport":"tcp"}}"#,
        camera.url("u:topsecret@")
    );
    let made = add_source(&d, &body);
    assert_eq!(made["source"], "api");
    assert!(!made.to_string().contains("topsecret"), "{made}");
    let r = http::send_json("POST", &d.http, "/api/v1/sources", &body).unwrap();
    assert_eq!(r.status, 409, "a second source named door: {}", r.text());
    wait_recorded(&d, "door", 3, Duration::from_secs(30));
    // It survives a restart (and is still an API source there).
    d.stop();
    d.spawn();
    assert_eq!(sources(&d).len(), 1);
    let live = wait_recorded(&d, "door", 3, Duration::from_secs(30));
    assert_eq!(source(&d, "door")["source"], "api");
    assert_eq!(delete_source(&d, "door"), 204);
    assert_eq!(delete_source(&d, "door"), 404);
    assert!(sources(&d).is_empty());
    // Removing the source ends its recording, which becomes resumable, then finished.
    let rec = finished_recording(&d);
    assert_eq!(
        rec["id"], live["recording_id"],
        "the restart resumed the recording"
    );
    assert_decodes(&d, &rec, true, 2.0);
    d.stop();
    d.spawn();
    assert!(sources(&d).is_empty(), "a removed source stays removed");
    camera.kill();
    assert!(!d.log().contains("topsecret"));
}

#[test]
fn rtsps_camera_is_verified_by_its_ca_or_its_pinned_fingerprint() {
    // The camera behind a TLS front (socat with OpenSSL, a throwaway CA and a certificate
    // for 127.0.0.1), as an RTSPS camera on the venue LAN.
    let mut camera = Camera::start("h264-aac");
    let front =
        support::tls::TlsFront::start(format!("127.0.0.1:{}", camera.port).parse().unwrap());
    let port = front.url().rsplit(':').next().unwrap().to_owned();
    let url = format!("rtsps://admin:s3cret@127.0.0.1:{port}/stream1");
    let cert = front.ca_file().with_file_name("server.pem");
    let pin = support::tls::fingerprint_of(&cert);
    let wrong_pin = "00:".repeat(31) + "00";
    let sections = [
        config_source(
            "cam",
            "by-ca",
            &url,
            &format!("ca_file = {:?}", front.ca_file()),
        ),
        config_source("cam", "pinned", &url, &format!("tls_fingerprint = {pin:?}")),
        config_source(
            "cam",
            "wrong-pin",
            &url,
            &format!("tls_fingerprint = {wrong_pin:?}"),
        ),
    ]
    .concat();
    let d = daemon("flow_continue_duration_s = 2", &sections);
    wait_recorded(&d, "cam-by-ca", 4, Duration::from_secs(30));
    wait_recorded(&d, "cam-pinned", 4, Duration::from_secs(30));
    let error = wait_backoff(&d, "cam-wrong-pin");
    assert!(
        error.contains("TLS handshake") && error.contains("fingerprint"),
        "{error}"
    );
    camera.kill();
    let recs = d.wait_recordings(2, "finished", Duration::from_secs(60));
    for r in &recs {
        let rec = d.recording(r["id"].as_str().unwrap());
        assert_decodes(&d, &rec, true, 1.0);
    }
    assert!(!d.log().contains("s3cret"), "the password leaked");
}

#[test]
fn segments_are_dated_by_the_cameras_sender_reports_when_its_clock_is_sane() {
    // Two cameras whose clocks, and so their RTCP sender reports, run 20 s and 2 h behind
    // ours: the first is trusted (its pictures are dated when they were taken), the
    // second is a camera that never had NTP, and arrival time is used.
    let mut behind = Camera::start("h264-aac@-20");
    let mut unset = Camera::start("h264-aac@-7200");
    let before = edgerec::clock::now_ms();
    let sections = [
        config_source("cam", "behind", &behind.url(""), ""),
        config_source("cam", "unset", &unset.url(""), ""),
    ]
    .concat();
    // Long segments: the first report (RTCP's first interval is a few seconds) comes
    // while the first segment is still open, so the whole recording is dated by it.
    let d = daemon(
        "segment_duration_s = 6\nflow_continue_duration_s = 1",
        &sections,
    );
    wait_recorded(&d, "cam-behind", 14, Duration::from_secs(40));
    wait_recorded(&d, "cam-unset", 14, Duration::from_secs(40));
    behind.kill();
    unset.kill();
    let recs = d.wait_recordings(2, "finished", Duration::from_secs(60));
    for r in &recs {
        let rec = d.recording(r["id"].as_str().unwrap());
        let start = support::unix_ms(&rec["start_time"]);
        if rec["stream"] == "behind" {
            let late = start - (before - 20_000);
            assert!(
                (0..=8_000).contains(&late),
                "dated {late} ms after the camera's clock"
            );
            support::assert_dated_back_to_back(&rec);
        } else {
            let late = start - before;
            assert!(
                (0..=8_000).contains(&late),
                "dated {late} ms after the daemon started"
            );
        }
    }
    assert!(d.log().contains("the publisher's clock"), "{}", d.log());
}

#[test]
fn sender_reports_realign_audio_that_the_rtp_info_misplaced() {
    // Lip-sync probe cameras (rtsp_camera.py: each 1 s audio tick is also a bright frame).
    // The first one's PLAY response claims its audio's rtptime half a second late, so by
    // RTP-Info alone its sound would be recorded 0.5 s ahead of its pictures, all session
    // long; its sender reports tell the truth. The second (two sources, x264 lookahead
    // and B-frames) is honest and must be left alone.
    let mut liar = Camera::start("sync^0.5");
    let mut honest = Camera::start("h264-bframes");
    // A second liar, recorded with RTP-Info's placement kept. Not the first one shared:
    // GStreamer's shared media restarts its timeline when a client joins late (a 1 s
    // jump back in the other client's recording), which no camera does.
    let mut trusted = Camera::start("sync^0.5");
    let sections = [
        config_source("cam", "liar", &liar.url(""), ""),
        config_source("cam", "honest", &honest.url(""), ""),
        config_source(
            "cam",
            "trusting",
            &trusted.url(""),
            "align_by_sender_reports = false",
        ),
    ]
    .concat();
    let d = daemon("flow_continue_duration_s = 1", &sections);
    let moved = "audio moved onto the video's timeline";
    d.wait_log(moved, 1, Duration::from_secs(30));
    // Segments are 4 s: record two whole ones after the move.
    wait_recorded(&d, "cam-liar", 18, Duration::from_secs(40));
    wait_recorded(&d, "cam-honest", 18, Duration::from_secs(40));
    wait_recorded(&d, "cam-trusting", 18, Duration::from_secs(40));
    liar.kill();
    honest.kill();
    trusted.kill();
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(moved)).collect();
    assert_eq!(lines.len(), 1, "only the lying camera is moved:\n{log}");
    let shift_ms: i64 = lines[0]
        .split("shift_ms=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MIN);
    assert!(
        lines[0].contains("cam-liar") && (490..=510).contains(&shift_ms),
        "{}",
        lines[0]
    );
    for r in d.wait_recordings(3, "finished", Duration::from_secs(60)) {
        let rec = d.recording(r["id"].as_str().unwrap());
        let stream = rec["stream"].as_str().unwrap().to_owned();
        assert_decodes(&d, &rec, true, 1.0);
        assert_timestamps(&d, &rec, true);
        // Lip sync in the decoded content: the liar's from its third segment on (the
        // first reports come within a few seconds), the honest camera's throughout. The
        // camera's AAC encoder delays its sound by a frame or two: pictures lead by
        // 20-45 ms on the honest path.
        let files = segment_files(&d, &rec);
        assert!(files.len() >= 4, "{rec}");
        let from = if stream == "honest" { 0 } else { 2 };
        let offsets = picture_after_sound(&files[from..]);
        assert!(
            offsets.len() >= 6,
            "{stream}: too few ticks found: {offsets:?}"
        );
        // Kept where RTP-Info put it, the sound runs half a second ahead (half the ticks'
        // period: a flash is as near the next tick as the last, so either sign).
        let in_sync = |o: &f64| (-0.1..=0.06).contains(o);
        let half_off = |o: &f64| (0.4..=0.6).contains(&o.abs());
        assert!(
            offsets.iter().all(if stream == "trusting" {
                half_off
            } else {
                in_sync
            }),
            "{stream}: picture after sound (s): {offsets:?}"
        );
    }
}

/// Times of the `lavfi` metadata `key` of each decoded frame of `file` (`movie` for video,
/// `amovie` for audio) where it crosses above `threshold` (the start of a run).
fn rising_edges(
    file: &std::path::Path,
    source: &str,
    filter: &str,
    key: &str,
    threshold: f64,
) -> Vec<f64> {
    let graph = format!("{source}={},{filter}", file.display());
    let out = media::tool("ffprobe")
        .args(["-v", "error", "-f", "lavfi", &graph, "-show_entries"])
        .arg(format!("frame=pts_time:frame_tags={key}"))
        .args(["-of", "csv=p=0"])
        .output()
        .unwrap();
    let mut edges = Vec::new();
    let mut above = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split(',');
        let (Some(Ok(t)), Some(v)) = (f.next().map(str::parse::<f64>), f.next()) else {
            continue;
        };
        let v: f64 = v.parse().unwrap_or(f64::NEG_INFINITY);
        if v > threshold && !above {
            edges.push(t);
        }
        above = v > threshold;
    }
    edges
}

/// Lip sync measured in the content of a lip-sync probe camera's recording
/// (`rtsp_camera.py`): for each of the audio's 1 s ticks, how much later (s) its picture
/// (the waveform's flash) is presented.
fn picture_after_sound(files: &[std::path::PathBuf]) -> Vec<f64> {
    let mut offsets = Vec::new();
    for file in files {
        let flashes = rising_edges(file, "movie", "signalstats", "lavfi.signalstats.YAVG", 25.0);
        let ticks = rising_edges(
            file,
            "amovie",
            "astats=metadata=1:reset=1",
            "lavfi.astats.Overall.Peak_level",
            -30.0,
        );
        for tick in ticks {
            let nearest = flashes
                .iter()
                .min_by(|a, b| (*a - tick).abs().total_cmp(&(*b - tick).abs()));
            if let Some(flash) = nearest.filter(|f| (*f - tick).abs() < 0.5) {
                offsets.push(flash - tick);
            }
        }
    }
    offsets
}

/// Decoded (width, height) of each video frame of a segment file, in order.
fn frame_sizes(file: &std::path::Path) -> Vec<(u32, u32)> {
    let out = media::tool("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=width,height",
        ])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',').map(|v| v.trim().parse::<u32>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .collect()
}

#[test]
fn a_resolution_change_mid_session_starts_a_new_segment_and_loses_nothing() {
    // The camera switches from 320x240 to 640x360 after 4 s, with new parameter sets
    // in-band on the same RTSP session.
    let mut camera = Camera::start("resizes");
    let d = daemon(
        "flow_continue_duration_s = 1",
        &config_source("cam", "resized", &camera.url(""), ""),
    );
    wait_for("the new resolution", Duration::from_secs(40), || {
        d.json("/api/v1/streams")
            .as_array()?
            .iter()
            .find(|s| {
                s["resolution"] == "640x360" && s["media_received_ms"].as_u64() >= Some(9_000)
            })
            .cloned()
    });
    camera.kill();
    let rec = finished_recording(&d);
    assert_eq!(rec["sessions"], 1, "{rec}");
    // One session, one recording; the change is a segment boundary with a discontinuity.
    let dir = d.recording_dir(&rec);
    let segments = rec["segment_list"].as_array().unwrap();
    let mut sizes_by_segment = Vec::new();
    for seg in segments {
        let file = dir.join(seg["uri"].as_str().unwrap().rsplit('/').next().unwrap());
        let sizes = frame_sizes(&file);
        assert!(!sizes.is_empty(), "no video decoded in {file:?}");
        assert!(
            sizes.iter().all(|s| *s == sizes[0]),
            "a segment mixes resolutions: {sizes:?}"
        );
        sizes_by_segment.push((sizes[0], seg["discontinuity"] == true));
    }
    let change = sizes_by_segment
        .iter()
        .position(|(size, _)| *size == (640, 360))
        .expect("no segment at 640x360");
    assert!(change > 0, "{sizes_by_segment:?}");
    assert_eq!(sizes_by_segment[0].0, (320, 240));
    assert!(
        sizes_by_segment[change].1,
        "no discontinuity at the change: {sizes_by_segment:?}"
    );
    // Nothing lost across the change: frames within one GOP of duration x rate.
    assert_decodes(&d, &rec, true, 2.0);
    assert_timestamps(&d, &rec, true);
}
