//! RTSP publish (ANNOUNCE/RECORD) end to end: the real ffmpeg publishes over TCP
//! interleaved and UDP, the real daemon records, and ffmpeg/ffprobe decode what it serves
//! back. Hostile peers are hand-written TCP clients.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::media::{self, Clip};
use support::{callback, wait_for, Daemon};

const GOP_FRAMES: u64 = 25;

/// A daemon with the RTSP listener on a loopback port, `extra` lines in `[rtsp]`.
fn daemon(extra: &str, sections: &str) -> Daemon {
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &format!("[rtsp]\nlisten = \"127.0.0.1:0\"\n{extra}\n{sections}"),
    );
    d.spawn();
    assert!(!d.rtsp.is_empty(), "no rtsp= in the ready line");
    d
}

fn url(d: &Daemon, path: &str) -> String {
    format!("rtsp://{}/{path}", d.rtsp)
}

/// `ffmpeg -c copy -f rtsp` of `clip` at `speed` x real time over `transport`.
fn publish(url: &str, clip: &Path, transport: &str, speed: u32) -> Child {
    publish_with(url, clip, transport, speed, &[])
}

/// [`publish`] with `extra` output options (`-rtpflags latm`).
fn publish_with(url: &str, clip: &Path, transport: &str, speed: u32, extra: &[&str]) -> Child {
    media::tool("ffmpeg")
        .args(["-v", "error", "-readrate", &speed.to_string(), "-i"])
        .arg(clip)
        .args(["-c", "copy"])
        .args(extra)
        .args(["-f", "rtsp", "-rtsp_transport", transport, url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg")
}

fn publish_ok(url: &str, clip: &Path, transport: &str, speed: u32) {
    publish_ok_with(url, clip, transport, speed, &[]);
}

fn publish_ok_with(url: &str, clip: &Path, transport: &str, speed: u32, extra: &[&str]) {
    let out = publish_with(url, clip, transport, speed, extra)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg rtsp publish to {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (video start, audio start) in seconds as ffprobe reads `input`.
fn starts(input: &str) -> (f64, f64) {
    let out = media::tool("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,start_time",
            "-of",
            "json",
            input,
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut s = (f64::NAN, f64::NAN);
    for st in v["streams"].as_array().into_iter().flatten() {
        let t: f64 = st["start_time"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::NAN);
        match st["codec_type"].as_str() {
            Some("video") => s.0 = t,
            Some("audio") => s.1 = t,
            _ => {}
        }
    }
    s
}

/// The one finished recording of `stream` decodes cleanly, holds what was sent within a
/// GOP, has monotonic video decode times in every segment and across segments, and its
/// video starts within a frame of where it starts relative to the audio in the clip.
fn assert_recorded(d: &Daemon, stream: &str, clip: &Path, video_codec: &str) -> Value {
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(30));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec["stream"], stream);
    assert_eq!(rec["video_codec"], video_codec);
    assert_eq!(rec["audio_codec"], "aac");
    assert_eq!(rec["resolution"], "640x360");
    let playlist = d.http_url(rec["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&playlist);
    assert!(errors.trim().is_empty(), "decode errors:\n{errors}");
    let sent = media::probe(clip.to_str().unwrap());
    let got = media::probe(&playlist);
    assert!(
        got.video_frames + GOP_FRAMES >= sent.video_frames && got.video_frames <= sent.video_frames,
        "video frames: got {}, sent {}",
        got.video_frames,
        sent.video_frames
    );
    assert!(
        got.audio_frames + 48 >= sent.audio_frames && got.audio_frames <= sent.audio_frames + 2,
        "audio frames: got {}, sent {}",
        got.audio_frames,
        sent.audio_frames
    );
    let dir = d.recording_dir(&rec);
    let mut last = f64::MIN;
    let segments = rec["segment_list"].as_array().unwrap();
    for seg in segments {
        let file = seg["uri"].as_str().unwrap().rsplit('/').next().unwrap();
        for p in media::packets(&dir.join(file)).iter().filter(|p| p.video) {
            assert!(
                p.dts > last,
                "video DTS not monotonic in {file}: {} after {last}",
                p.dts
            );
            last = p.dts;
        }
    }
    let (sv, sa) = starts(clip.to_str().unwrap());
    let (gv, ga) = starts(&playlist);
    assert!(
        ((gv - ga) - (sv - sa)).abs() <= 0.041,
        "{stream}: A/V offset: recorded video-audio {:.3} s, clip {:.3} s",
        gv - ga,
        sv - sa
    );
    rec
}

#[test]
fn h264_aac_over_tcp_records_decodable_hls() {
    let d = daemon("", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    publish_ok(&url(&d, "live/cam"), &clip, "tcp", 4);
    assert_recorded(&d, "cam", &clip, "h264");
    assert!(d.log().contains("rtsp publish started"), "{}", d.log());
}

#[test]
fn h264_aac_over_udp_records_decodable_hls() {
    let d = daemon("udp_port_range = \"31000-31100\"", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    publish_ok(&url(&d, "live/udp"), &clip, "udp", 4);
    assert_recorded(&d, "udp", &clip, "h264");
}

#[test]
fn aac_as_mp4a_latm_records_like_mpeg4_generic() {
    let d = daemon("", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    publish_ok_with(
        &url(&d, "live/latm"),
        &clip,
        "tcp",
        4,
        &["-rtpflags", "latm"],
    );
    assert_recorded(&d, "latm", &clip, "h264");
}

/// An FLV clip whose H.264 has two B-frames between references.
fn bframe_clip() -> PathBuf {
    let args: Vec<String> = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25:duration=6",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=48000:duration=6",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-bf",
        "2",
        "-b_strategy",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "25",
        "-keyint_min",
        "25",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-ar",
        "48000",
        "-f",
        "flv",
    ]
    .map(String::from)
    .to_vec();
    media::generated("rtsp-bframes-6s", "flv", &args)
}

/// A Matroska clip of H.265 (x265, B-frames) and AAC.
fn hevc_clip() -> PathBuf {
    let args: Vec<String> = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25:duration=6",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:sample_rate=48000:duration=6",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-x265-params",
        "keyint=25:min-keyint=25:scenecut=0:bframes=2:log-level=error",
        "-c:a",
        "aac",
        "-ar",
        "48000",
        "-f",
        "matroska",
    ]
    .map(String::from)
    .to_vec();
    media::generated("rtsp-hevc-6s", "mkv", &args)
}

#[test]
fn h264_with_b_frames_keeps_monotonic_decode_times() {
    let d = daemon("", "");
    let clip = bframe_clip();
    let pkts = media::packets(&clip);
    assert!(
        pkts.iter().filter(|p| p.video).count() > 100,
        "the clip has video"
    );
    publish_ok(&url(&d, "live/bframes"), &clip, "tcp", 4);
    let rec = assert_recorded(&d, "bframes", &clip, "h264");
    // The recording keeps the reordering: some video packet has PTS > DTS.
    let dir = d.recording_dir(&rec);
    let first = rec["segment_list"][0]["uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let out = media::tool("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts,dts",
            "-of",
            "csv=p=0",
        ])
        .arg(dir.join(first))
        .output()
        .unwrap();
    let reordered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((
                f.next()?.parse::<i64>().ok()?,
                f.next()?.trim().parse::<i64>().ok()?,
            ))
        })
        .filter(|(p, d)| p > d)
        .count();
    assert!(
        reordered > 10,
        "B-frame reordering kept: {reordered} packets with PTS > DTS"
    );
}

#[test]
fn h265_aac_records() {
    let d = daemon("", "");
    let clip = hevc_clip();
    publish_ok(&url(&d, "live/hevc"), &clip, "tcp", 4);
    assert_recorded(&d, "hevc", &clip, "h265");
}

/// Sends `request` on a fresh connection and returns what the server answered before
/// closing (or within `limit`).
fn exchange(addr: &str, request: &[u8], limit: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn announce(path: &str, body: &str) -> Vec<u8> {
    format!(
        "ANNOUNCE {path} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
    m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n\
    a=control:streamid=0\r\n";

#[test]
fn second_publisher_bad_input_and_bad_paths_are_refused_while_a_publish_records() {
    let d = daemon("max_packet_kb = 4", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    let mut first = publish(&url(&d, "live/busy"), &clip, "tcp", 1);
    wait_for("the first publish live", Duration::from_secs(20), || {
        let streams = d.json("/api/v1/streams");
        (streams.as_array()?.first()?["video_codec"] == "h264").then_some(())
    });
    // A second publisher on the same path: refused with the reason, nothing recorded.
    let dup = publish(&url(&d, "live/busy"), &clip, "tcp", 4)
        .wait_with_output()
        .unwrap();
    assert!(
        !dup.status.success(),
        "the duplicate publisher was accepted"
    );
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(err.contains("455"), "{err}");
    // Garbage: 400 and closed.
    let (reply, closed) = exchange(&d.rtsp, b"HELLO THERE\r\n\r\n", Duration::from_secs(5));
    assert!(reply.starts_with("RTSP/1.0 400 "), "{reply}");
    assert!(closed);
    // A malformed SDP: 400 with the reason, the connection stays usable.
    let (reply, _) = exchange(
        &d.rtsp,
        &announce(&url(&d, "live/x"), "v=0\r\nm=video\r\n"),
        Duration::from_millis(500),
    );
    assert!(reply.starts_with("RTSP/1.0 400 sdp line 2"), "{reply}");
    // Paths that could escape the data dir, or are not /app/stream.
    for (path, status) in [
        (format!("rtsp://{}/live/%2e%2e", d.rtsp), "400"),
        (format!("rtsp://{}/../../etc/passwd", d.rtsp), "400"),
        (format!("rtsp://{}/live/.hidden", d.rtsp), "400"),
        (format!("rtsp://{}/live/a/b", d.rtsp), "404"),
        (format!("rtsp://{}/live", d.rtsp), "404"),
    ] {
        let (reply, _) = exchange(&d.rtsp, &announce(&path, SDP), Duration::from_millis(500));
        assert!(
            reply.starts_with(&format!("RTSP/1.0 {status} ")),
            "{path}: {reply}"
        );
    }
    // PCMA only: nothing recordable, said so.
    let pcma = "v=0\r\nm=audio 0 RTP/AVP 8\r\na=control:streamid=0\r\n";
    let (reply, _) = exchange(
        &d.rtsp,
        &announce(&url(&d, "live/pcma"), pcma),
        Duration::from_millis(500),
    );
    assert!(reply.contains("pcma: not storable in MPEG-TS"), "{reply}");
    // An interleaved frame over max_packet_kb closes that connection.
    let mut big = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n".to_vec();
    big.extend_from_slice(&[b'$', 0, 0x20, 0x00]);
    big.extend(std::iter::repeat_n(0u8, 0x2000));
    let (_, closed) = exchange(&d.rtsp, &big, Duration::from_secs(5));
    assert!(closed, "oversize frame did not close the connection");
    // The first publish was untouched.
    let out = first.wait().unwrap();
    assert!(out.success());
    assert_recorded(&d, "busy", &clip, "h264");
    assert_eq!(d.recordings().len(), 1, "nothing else was recorded");
    assert!(!d.data_dir().join("media").join("etc").exists());
}

#[test]
fn setup_without_record_is_closed_after_the_handshake_timeout() {
    let d = daemon("handshake_timeout_s = 1", "");
    let mut s = TcpStream::connect(&d.rtsp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(&announce(&url(&d, "live/stall"), SDP)).unwrap();
    let setup = format!(
        "SETUP {}/streamid=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n",
        url(&d, "live/stall")
    );
    s.write_all(setup.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("not closed: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("RTSP/1.0 200 ").count(), 2, "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    d.wait_log(
        "no RECORD within the handshake timeout",
        1,
        Duration::from_secs(5),
    );
}

#[test]
fn a_recording_publisher_that_sends_no_rtp_is_closed_after_the_idle_timeout() {
    let d = daemon("idle_timeout_s = 1", "");
    let mut s = TcpStream::connect(&d.rtsp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let base = url(&d, "live/idle");
    s.write_all(&announce(&base, SDP)).unwrap();
    let rest = format!(
        "SETUP {base}/streamid=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n\
         RECORD {base} RTSP/1.0\r\nCSeq: 3\r\n\r\n"
    );
    s.write_all(rest.as_bytes()).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("not closed: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("RTSP/1.0 200 ").count(), 3, "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    d.wait_log("no RTP for 1 s", 1, Duration::from_secs(5));
}

#[test]
fn publish_auth_is_enforced_on_rtsp() {
    let d = daemon(
        "",
        "[publish_auth]\nkey = \"rtsp-secret\"\napps = [\"live\"]\n",
    );
    let clip = media::clip(Clip::AudioVideo, 4);
    let denied = publish(&url(&d, "live/auth"), &clip, "tcp", 8)
        .wait_with_output()
        .unwrap();
    assert!(!denied.status.success(), "an unsigned publish was accepted");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));
    assert!(d.recordings().is_empty());
    let later = format!("{:X}", callback::unix_now() + 3600);
    let secret = callback::sign("rtsp-secret", &format!("auth{later}"));
    let signed = url(&d, &format!("live/auth?txSecret={secret}&txTime={later}"));
    let out: Output = publish(&signed, &clip, "tcp", 8)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(30));
    assert_eq!(recs[0]["stream"], "auth");
}

#[test]
fn pcma_audio_is_left_out_and_said_so_while_the_video_records() {
    let d = daemon("", "");
    let clip = media::clip(Clip::AudioVideo, 4);
    let child = media::tool("ffmpeg")
        .args(["-v", "error", "-readrate", "1", "-i"])
        .arg(&clip)
        .args([
            "-c:v", "copy", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1",
        ])
        .args([
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
            &url(&d, "live/pcma"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let live = wait_for("the stream live", Duration::from_secs(20), || {
        let streams = d.json("/api/v1/streams");
        streams.as_array()?.first().cloned()
    });
    assert_eq!(
        live["audio_dropped"], "pcma: not storable in MPEG-TS",
        "{live}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(30));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec["video_codec"], "h264");
    assert!(rec["audio_codec"].is_null(), "{rec}");
    let playlist = d.http_url(rec["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&playlist);
    assert!(errors.trim().is_empty(), "{errors}");
    let (sent, got) = (
        media::probe(clip.to_str().unwrap()),
        media::probe(&playlist),
    );
    assert!(
        got.video_frames + GOP_FRAMES >= sent.video_frames && got.audio_frames == 0,
        "got {got:?}, sent {sent:?}"
    );
    assert_eq!(d.log().matches("rtsp track not recorded").count(), 1);
}

#[test]
fn program_date_time_follows_the_publishers_sender_reports_when_its_clock_is_sane() {
    // ffmpeg's RTCP sender reports carry `start_time_realtime` as the wall clock of the
    // first frame: an encoder whose clock says the picture was taken 20 s ago (say, 20 s
    // of encoder latency) dates the recording 20 s back; one that says two hours ago is
    // an unset clock, and arrival time is used instead.
    let d = daemon("", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    let realtime_us =
        |ago_s: i64| ((edgerec::clock::now_ms() / 1000 - ago_s) * 1_000_000).to_string();
    for (stream, ago_s) in [("sane", 20), ("unset", 7200)] {
        let before = edgerec::clock::now_ms();
        let out = media::tool("ffmpeg")
            .args(["-v", "error", "-re", "-i"])
            .arg(&clip)
            .args(["-c", "copy", "-start_time_realtime", &realtime_us(ago_s)])
            .args([
                "-f",
                "rtsp",
                "-rtsp_transport",
                "tcp",
                &url(&d, &format!("live/{stream}")),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rec = wait_for("the recording", Duration::from_secs(30), || {
            d.recordings()
                .into_iter()
                .find(|r| r["stream"] == stream && r["state"] == "finished")
        });
        let rec = d.recording(rec["id"].as_str().unwrap());
        let start = support::unix_ms(&rec["start_time"]);
        let expected = if ago_s == 20 { before - 20_000 } else { before };
        assert!(
            (start - expected).abs() <= 3_000,
            "{stream}: start {} ms from the expected {}",
            start - expected,
            rec["start_time"]
        );
        if ago_s == 20 {
            support::assert_dated_back_to_back(&rec);
        }
    }
    assert!(d.log().contains("the publisher's clock"), "{}", d.log());
}
