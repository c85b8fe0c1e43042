//! `/metrics` against real publishes: the exposition passes `promtool check metrics`
//! (Debian's `prometheus` package), the recording-health series show the seconds a live
//! stream should have (wall clock) against what it sent, and a stall and a forward
//! timestamp jump show as the gap they are; per-stream series go when the stream ends
//! while the lifetime counters keep what it counted.

mod support;

use std::time::{Duration, Instant};

use support::flv::{read_tags, Tag};
use support::media::{self, Clip};
use support::metrics::Scrape;
use support::rtmp_client::RawClient;
use support::{wait_for, Daemon};

/// Sends `tags` paced to their timestamps from `start` (plus `delay`), each timestamp
/// moved by `shift` ms.
fn send_paced(
    c: &mut RawClient,
    id: u32,
    tags: &[Tag],
    start: Instant,
    delay: Duration,
    shift: u32,
) {
    for tag in tags {
        let due = start + delay + Duration::from_millis(u64::from(tag.timestamp));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            c.flush().expect("send media");
            std::thread::sleep(wait);
        }
        let ts = tag.timestamp + shift;
        match tag.kind {
            8 => c.session.audio(id, ts, &tag.body),
            9 => c.session.video(id, ts, &tag.body),
            _ => {}
        }
    }
    c.flush().expect("send media");
}

/// Audio and video tags that carry a coded frame (not a sequence header or metadata).
fn coded_frames(tags: &[Tag]) -> f64 {
    tags.iter()
        .filter(|t| matches!(t.kind, 8 | 9) && t.body.get(1) == Some(&1))
        .count() as f64
}

const HEALTH: &str = "{app=\"live\",stream=\"health\"}";

#[test]
fn recording_health_shows_expected_seconds_a_stall_and_a_jump_and_promtool_accepts_it() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let idle = Scrape::get(&d);
    idle.assert_promtool_clean();
    assert_eq!(idle.value("edgerec_live_streams{protocol=\"rtmp\"}"), 0.0);
    assert!(idle
        .value("edgerec_disk_recording_time_left_seconds")
        .is_infinite());

    let clip = media::clip(Clip::AudioVideo, 12);
    let tags = read_tags(&clip);
    let at = |ms: u32| tags.iter().position(|t| t.timestamp >= ms).unwrap();
    let (first, second, third) = (
        &tags[..at(4000)],
        &tags[at(4000)..at(8000)],
        &tags[at(8000)..],
    );
    let mut c = RawClient::connect(&d.rtmp);
    let (id, codes) = c.publish("live", "health", false);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    let start = Instant::now();

    // 4 s of media in 4 s: the recording keeps up with the wall clock.
    send_paced(&mut c, id, first, start, Duration::ZERO, 0);
    let healthy = Scrape::get(&d);
    let expected = healthy.value(&format!("edgerec_recording_expected_media_seconds{HEALTH}"));
    let received = healthy.value(&format!("edgerec_recording_received_media_seconds{HEALTH}"));
    assert!((3.5..6.0).contains(&expected), "expected {expected}");
    assert!(
        expected - received < 1.5,
        "healthy, yet {received} of {expected} s"
    );
    assert_eq!(
        healthy.value("edgerec_live_streams{protocol=\"rtmp\"}"),
        1.0
    );
    assert!(healthy.value(&format!("edgerec_stream_received_bytes_total{HEALTH}")) > 100_000.0);
    let sent = coded_frames(first);
    wait_for("every frame sent counted", Duration::from_secs(5), || {
        let s = Scrape::get(&d);
        let frames = s.value(&format!("edgerec_stream_received_frames_total{HEALTH}"));
        (frames == sent).then_some(())
    });
    assert!(healthy
        .value("edgerec_disk_recording_time_left_seconds")
        .is_finite());
    healthy.assert_promtool_clean();

    // The publisher stalls for 4 s, then goes on where it stopped: 4 s of wall clock
    // that the recording will never have.
    send_paced(&mut c, id, second, start, Duration::from_secs(4), 0);
    let stalled = Scrape::get(&d);
    let expected = stalled.value(&format!("edgerec_recording_expected_media_seconds{HEALTH}"));
    let received = stalled.value(&format!("edgerec_recording_received_media_seconds{HEALTH}"));
    let missing = expected - received;
    assert!(
        (3.0..6.0).contains(&missing),
        "{missing} s missing after a 4 s stall"
    );

    // Then its timestamps jump 15 s ahead: a hole of 15 s in the media.
    send_paced(&mut c, id, third, start, Duration::from_secs(4), 15_000);
    let jumped = wait_for("the jump counted", Duration::from_secs(10), || {
        let s = Scrape::get(&d);
        (s.value(&format!("edgerec_recording_gaps_total{HEALTH}")) >= 1.0).then_some(s)
    });
    assert_eq!(
        jumped.value(&format!("edgerec_recording_gaps_total{HEALTH}")),
        1.0
    );
    let gap = jumped.value(&format!("edgerec_recording_gap_seconds_total{HEALTH}"));
    assert!((14.9..15.5).contains(&gap), "gap of {gap} s");
    jumped.assert_promtool_clean();

    c.session.delete_stream(id);
    c.flush().unwrap();
    drop(c);
    d.wait_recordings(1, "finished", Duration::from_secs(30));
    let ended = wait_for("the stream's series gone", Duration::from_secs(10), || {
        let s = Scrape::get(&d);
        (!s.has_stream("health")).then_some(s)
    });
    ended.assert_promtool_clean();
    assert_eq!(ended.value("edgerec_live_streams{protocol=\"rtmp\"}"), 0.0);
    // The lifetime counters keep what the stream counted.
    assert!(ended.value("edgerec_received_bytes_total{protocol=\"rtmp\"}") > 300_000.0);
    assert_eq!(
        ended.value("edgerec_received_frames_total{protocol=\"rtmp\"}"),
        coded_frames(&tags)
    );
    assert_eq!(ended.value("edgerec_gaps_total"), 1.0);
    assert!(ended.value("edgerec_gap_seconds_total") >= 14.9);
    assert!(ended.value("edgerec_discontinuities_total") >= 1.0);
    let segments = ended.value("edgerec_segments_total");
    assert!(segments >= 3.0, "{segments} segments");
    assert!(ended.value("edgerec_segment_write_seconds_count") >= segments);
    assert!(ended.value("edgerec_fsync_seconds_count") >= segments);
    assert!(ended.value("edgerec_written_bytes_total") > 300_000.0);
    assert_eq!(
        ended.value("edgerec_build_info{target=\"x86_64\",version=\"0.1.0\"}"),
        1.0
    );
}

#[test]
fn refused_publishes_are_counted_by_reason() {
    let d = Daemon::start("", "");
    let clip = media::clip(Clip::AudioVideo, 6);
    let first = media::publish(&d.rtmp_url("live", "busy"), &clip, true);
    wait_for("the first publisher live", Duration::from_secs(10), || {
        let s = Scrape::get(&d);
        (s.value("edgerec_live_streams{protocol=\"rtmp\"}") == 1.0).then_some(())
    });
    // A second publisher of the same stream, and a name that cannot be a folder.
    let mut c = RawClient::connect(&d.rtmp);
    let (_, codes) = c.publish("live", "busy", false);
    assert!(
        !codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    let mut c = RawClient::connect(&d.rtmp);
    let (_, codes) = c.publish("live", "..", false);
    assert!(
        !codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    let s = Scrape::get(&d);
    assert_eq!(
        s.value("edgerec_publish_refusals_total{reason=\"already_publishing\"}"),
        1.0
    );
    assert_eq!(
        s.value("edgerec_publish_refusals_total{reason=\"bad_name\"}"),
        1.0
    );
    assert!(s.value("edgerec_connections_total{listener=\"rtmp\"}") >= 3.0);
    s.assert_promtool_clean();
    let out = first.wait_with_output().expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A board without a real-time clock: the daemon starts in 1970 (the test's skew, debug
/// builds only) and the clock then gets its real time, as when NTP first syncs.
#[test]
fn a_clock_that_jumps_is_counted_and_shown_and_durations_stay_media_based() {
    let mut d = Daemon::configure("flow_continue_duration_s = 0", "");
    let skew_file = d.data_dir().join("clock-skew-ms");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // 2 January 1970.
    let in_1970 = -now_ms + 86_400_000;
    std::fs::write(&skew_file, in_1970.to_string()).unwrap();
    d.spawn_with_env(&[("EDGEREC_TEST_CLOCK_SKEW_FILE", skew_file.to_str().unwrap())]);
    let before = d.json("/healthz");
    assert_eq!(before["clock"]["jumps"], 0, "{before}");

    let clip = media::clip(Clip::AudioVideo, 8);
    let publisher = media::publish(&d.rtmp_url("live", "rtcless"), &clip, true);
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&skew_file, "0").unwrap();
    let health = wait_for("the jump seen", Duration::from_secs(10), || {
        let h = d.json("/healthz");
        (h["clock"]["jumps"] == 1).then_some(h)
    });
    let step = health["clock"]["last_jump_ms"].as_i64().unwrap();
    assert!(
        (step + in_1970).abs() < 3_000,
        "jumped {step} ms, skew was {in_1970}"
    );
    let m = Scrape::get(&d);
    assert_eq!(m.value("edgerec_clock_jumps_total"), 1.0);
    m.assert_promtool_clean();
    assert!(d.log().contains("the wall clock jumped"));

    let out = publisher.wait_with_output().expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(30));
    // 53 years of wall clock passed during it; its duration is its media.
    let duration = recs[0]["duration_s"].as_f64().unwrap();
    assert!((7.0..9.5).contains(&duration), "duration {duration} s");
}
