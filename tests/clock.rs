//! A board without a real-time clock: the daemon starts in 1970 (the test's injectable
//! skew, `EDGEREC_TEST_CLOCK_SKEW_FILE`, debug builds only) and the clock then gets its
//! real time, as when NTP first syncs. Recordings open across the jump are re-anchored:
//! their dates, program date times, file names and resume windows are on the synced clock.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::media::{self, Clip};
use support::{unix_ms, wait_for, Daemon};

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A daemon whose clock reads 2 January 1970 until [`sync`] is called.
fn daemon_in_1970(extra_record: &str, sections: &str) -> (Daemon, PathBuf) {
    let mut d = Daemon::configure_with(extra_record, "", sections);
    let skew_file = d.data_dir().join("clock-skew-ms");
    std::fs::write(&skew_file, (86_400_000 - unix_now_ms()).to_string()).unwrap();
    d.spawn_with_env(&[("EDGEREC_TEST_CLOCK_SKEW_FILE", skew_file.to_str().unwrap())]);
    let year = d.json("/healthz");
    assert_eq!(year["clock"]["jumps"], 0, "{year}");
    (d, skew_file)
}

/// The clock gets its real time; returns once the daemon has seen the jump.
fn sync(d: &Daemon, skew_file: &PathBuf) {
    std::fs::write(skew_file, "0").unwrap();
    wait_for("the jump seen", Duration::from_secs(10), || {
        (d.json("/healthz")["clock"]["jumps"] == 1).then_some(())
    });
}

/// `t` (RFC 3339) is between `from` and `to` (unix ms, with a second's slack).
fn assert_between(t: &Value, from: i64, to: i64, what: &str) {
    let ms = unix_ms(t);
    assert!(
        (from - 1000..=to + 1000).contains(&ms),
        "{what} {t} is not between {from} and {to}"
    );
}

#[test]
fn a_recording_across_the_first_ntp_sync_is_dated_on_the_synced_clock() {
    let sections =
        "[[template]]\nname = \"t\"\nhls = { enabled = true, flow_continue_duration_s = 0 }\n\
        mp4 = { file_name = \"{StreamID}_{StartYear}-{StartMonth}-{StartDay}\" }\n\
        [[rule]]\napp = \"live\"\ntemplate = \"t\"\n";
    let (d, skew_file) = daemon_in_1970("", sections);
    let began = unix_now_ms();
    let clip = media::clip(Clip::AudioVideo, 10);
    let publisher = media::publish(&d.rtmp_url("live", "rtcless"), &clip, true);
    let early = wait_for("two segments", Duration::from_secs(15), || {
        let rec = d.recordings().first()?.clone();
        (rec["segments"].as_u64()? >= 2).then_some(rec)
    });
    assert!(
        early["start_time"].as_str().unwrap().starts_with("1970"),
        "{early}"
    );
    sync(&d, &skew_file);
    // The writer follows the jump with its next frames.
    let live = wait_for("since on the synced clock", Duration::from_secs(5), || {
        let live = d.json("/api/v1/streams");
        (unix_ms(&live[0]["since"]) > began - 60_000).then_some(live)
    });
    assert_between(
        &live[0]["since"],
        began,
        unix_now_ms(),
        "the live stream's since",
    );

    let out = publisher.wait_with_output().expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = unix_now_ms();
    let recs = wait_for("HLS and MP4 finished", Duration::from_secs(30), || {
        let recs = d.recordings();
        (recs.len() == 2 && recs.iter().all(|r| r["state"] == "finished")).then_some(recs)
    });
    let hls = recs.iter().find(|r| r["format"] == "hls").unwrap();
    let rec = d.recording(hls["id"].as_str().unwrap());
    assert_between(&rec["start_time"], began, began + 5_000, "start_time");
    assert_between(&rec["end_time"], ended - 5_000, ended, "end_time");
    let span_s = (unix_ms(&rec["end_time"]) - unix_ms(&rec["start_time"])) as f64 / 1000.0;
    let duration = rec["duration_s"].as_f64().unwrap();
    assert!(
        (span_s - duration).abs() < 2.0,
        "span {span_s} s, media {duration} s"
    );
    assert!((8.0..11.0).contains(&duration), "duration {duration} s");
    // Every segment, those written in 1970 included, dated where the one before ended
    // (give or take RTMP's arrival jitter: the error this catches is 56 years).
    let segments = rec["segment_list"].as_array().unwrap();
    assert!(segments.len() >= 3, "{rec}");
    for pair in segments.windows(2) {
        let ended = unix_ms(&pair[0]["start_time"])
            + (pair[0]["duration_s"].as_f64().unwrap() * 1000.0) as i64;
        let next = unix_ms(&pair[1]["start_time"]);
        assert!(
            (next - ended).abs() < 1500,
            "segment dated {next}, previous ended {ended}"
        );
    }
    let playlist = d.get(rec["playlist"].as_str().unwrap()).text();
    let dates: Vec<&str> = playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .collect();
    assert!(!dates.is_empty(), "{playlist}");
    for date in dates {
        assert_between(&Value::from(date), began, ended, "a program date time");
    }
    let mp4 = recs.iter().find(|r| r["format"] == "mp4").unwrap();
    let year = edgerec::clock::utc(began, "%Y-%m-%d");
    assert_eq!(mp4["file_name"], format!("rtcless_{year}.mp4"), "{mp4}");
    assert_between(
        &mp4["start_time"],
        began,
        began + 5_000,
        "the file's start_time",
    );
}

#[test]
fn a_resume_window_open_when_the_clock_jumps_stays_open_for_its_length() {
    let (d, skew_file) = daemon_in_1970("flow_continue_duration_s = 20", "");
    let clip = media::clip(Clip::AudioVideo, 4);
    media::publish_and_wait(&d.rtmp_url("live", "desk"), &clip, false);
    let rec = d
        .wait_recordings(1, "resumable", Duration::from_secs(15))
        .remove(0);
    assert!(
        rec["start_time"].as_str().unwrap().starts_with("1970"),
        "{rec}"
    );
    sync(&d, &skew_file);
    let synced = unix_now_ms();
    let rec = d.recording(rec["id"].as_str().unwrap());
    assert_eq!(
        rec["state"], "resumable",
        "the window must not end with the jump: {rec}"
    );
    assert_between(
        &rec["resumable_until"],
        synced + 5_000,
        synced + 20_000,
        "resumable_until",
    );
    assert!(
        !rec["start_time"].as_str().unwrap().starts_with("1970"),
        "{rec}"
    );

    // The publisher comes back inside the window: the same recording goes on.
    media::publish_and_wait(&d.rtmp_url("live", "desk"), &clip, false);
    let after = d
        .wait_recordings(1, "resumable", Duration::from_secs(15))
        .remove(0);
    assert_eq!(after["id"], rec["id"]);
    let rec = d.recording(after["id"].as_str().unwrap());
    assert_eq!(rec["sessions"], 2, "{rec}");
    let starts: Vec<i64> = rec["segment_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| unix_ms(&s["start_time"]))
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(starts[0] > synced - 60_000, "{starts:?}");
    let span_s = (unix_ms(&rec["end_time"]) - unix_ms(&rec["start_time"])) as f64 / 1000.0;
    assert!(span_s < 60.0, "spans {span_s} s");
}
