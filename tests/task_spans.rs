//! Recording tasks on streams a rule already records (issue 19) with real peers: the
//! task's recordings are spans of the rule's capture (one copy of every media byte), cut
//! at the window's edges, uploaded to a real s3s-fs store under their own names with
//! their own callbacks; deleting the rule's recording or the task's leaves the other
//! playable, and the capture's segments go with the last recording over them. A clip
//! with pre-roll on such a stream reaches back into the capture, and cancelling a task
//! ends its span but not the rule's recording or the publisher.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::callback::CallbackReceiver;
use support::http;
use support::media::{self, Clip};
use support::s3::{S3sFs, Store};
use support::tasks::{self, now_s, publisher_succeeded, wait_task_state, wall_s};
use support::{wait_for, Daemon};

fn create_task(d: &Daemon, body: Value) -> String {
    let t = tasks::create_task(d, body);
    t["task_id"].as_str().expect("task_id").to_owned()
}

/// The task's recordings once `n` of them are finished, by format.
fn task_recordings(d: &Daemon, id: &str, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} recordings of {id} finished"),
        Duration::from_secs(30),
        || {
            let mut recs = d
                .json(&format!("/api/v1/recordings?task_id={id}"))
                .as_array()
                .cloned()
                .unwrap_or_default();
            recs.sort_by_key(|r| r["format"].as_str().unwrap_or("").to_owned());
            (recs.len() == n && recs.iter().all(|r| r["state"] == "finished")).then_some(recs)
        },
    )
}

/// The first `#EXT-X-PROGRAM-DATE-TIME` of an HLS recording's playlist, unix seconds,
/// and its segment URIs.
fn playlist(d: &Daemon, id: &str) -> (f64, Vec<String>) {
    let text = d.get(&format!("/hls/recordings/{id}/index.m3u8")).text();
    let pdt = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .unwrap_or_else(|| panic!("no program date time in\n{text}"));
    let uris = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    (wall_s(&json!(pdt)), uris)
}

fn delete(d: &Daemon, id: &str) -> Value {
    let r = http::request(
        "DELETE",
        &d.http,
        &format!("/api/v1/recordings/{id}"),
        &[],
        b"",
    )
    .expect("DELETE");
    assert_eq!(r.status, 200, "DELETE {id}: {}", r.text());
    serde_json::from_slice(&r.body).expect("json")
}

/// The object key of a store URL (`.../venue/...`).
fn key_of(url: &Value) -> String {
    let url = url.as_str().expect("store_url");
    url[url.find("/venue/").expect("prefix") + 1..].to_owned()
}

#[test]
fn a_task_on_a_rule_recorded_stream_spans_the_rules_capture_and_deletes_keep_the_other() {
    let store = S3sFs::start();
    let receiver = CallbackReceiver::start("span-key");
    let sections = format!(
        "[upload]\nenabled = true\n{}\n[callback]\nurl = {:?}\nkey = \"span-key\"\nallow_insecure = true\nretry_interval_s = 1\nstatus_events = true\n\
         [[template]]\nname = \"vod\"\nhls = {{ enabled = true, flow_continue_duration_s = 1 }}\n\
         [[template]]\nname = \"match\"\nhls = {{ enabled = true, file_name = \"{{StreamID}}-match\" }}\nmp4 = {{ file_name = \"{{StreamID}}-match\" }}\n\
         [[rule]]\napp = \"live\"\ntemplate = \"vod\"\n",
        store.toml_section("venue"),
        receiver.url()
    );
    let d = Daemon::start_with_sections(&sections);
    let clip = media::clip(Clip::AudioVideo, 40);
    let ffmpeg = media::publish(&d.rtmp_url("live", "pitch"), &clip, true);
    let start = now_s() + 10.0;
    let end = start + 20.0;
    let id = create_task(
        &d,
        json!({"app": "live", "stream": "pitch", "template": "match",
               "start_time": start, "end_time": end}),
    );
    let running = wait_task_state(&d, &id, "recording", Duration::from_secs(20));
    let rule_capture = running["recording_id"]
        .as_str()
        .expect("the rule's recording")
        .to_owned();
    wait_task_state(&d, &id, "finished", Duration::from_secs(30));
    publisher_succeeded(ffmpeg);

    // An HLS recording and an MP4 file for the task: the window, 20 s +- one GOP (1 s).
    let recs = task_recordings(&d, &id, 2);
    let (hls, mp4) = (&recs[0], &recs[1]);
    assert_eq!(
        (hls["format"].as_str(), mp4["format"].as_str()),
        (Some("hls"), Some("mp4"))
    );
    for rec in &recs {
        assert_eq!(rec["task_id"], id.as_str(), "{rec}");
        assert_eq!(rec["template"], "match", "{rec}");
        assert_eq!(
            rec["capture_id"],
            rule_capture.as_str(),
            "a span of the rule's capture: {rec}"
        );
        let duration = rec["duration_s"].as_f64().unwrap();
        assert!(
            (18.5..=21.5).contains(&duration),
            "window of 20 s recorded as {duration} s: {rec}"
        );
        assert!((wall_s(&rec["end_time"]) - end).abs() <= 1.6, "{rec}");
    }
    let hls_id = hls["id"].as_str().unwrap().to_owned();
    let mp4_id = mp4["id"].as_str().unwrap().to_owned();
    let (pdt, segments) = playlist(&d, &hls_id);
    assert!(
        (pdt - start).abs() <= 1.6,
        "the task's HLS starts at {pdt}, the window at {start}"
    );
    let probe = media::probe(&d.http_url(&format!("/hls/recordings/{hls_id}/index.m3u8")));
    assert!(
        (18 * 25..=22 * 25).contains(&probe.video_frames),
        "{probe:?}"
    );
    assert!(probe.audio_frames > 0, "{probe:?}");
    let mp4_url = d.http_url(mp4["download"].as_str().expect("download"));
    let probe = media::probe(&mp4_url);
    assert!(
        (18 * 25..=22 * 25).contains(&probe.video_frames),
        "{probe:?}"
    );

    // The rule's recording is whole, and the only one on flash: one copy of every byte.
    let all = wait_for("three recordings uploaded", Duration::from_secs(90), || {
        let recs = d.recordings();
        (recs.len() == 3 && recs.iter().all(|r| r["upload_state"] == "uploaded")).then_some(recs)
    });
    let rule = all
        .iter()
        .find(|r| r["id"] == rule_capture.as_str())
        .expect("the rule's");
    assert!(rule["task_id"].is_null(), "{rule}");
    assert!(rule["duration_s"].as_f64().unwrap() >= 37.0, "{rule}");
    let stream_dir = d.data_dir().join("media/live/pitch");
    let folders = std::fs::read_dir(&stream_dir).unwrap().count();
    assert_eq!(folders, 1, "one capture folder in {}", stream_dir.display());

    // In the store: the task's HLS under its own folder, playlist naming only its span.
    let task_playlist_key = key_of(&hls["store_url"]);
    assert!(
        task_playlist_key.ends_with("pitch-match/index.m3u8"),
        "{task_playlist_key}"
    );
    let folder = task_playlist_key.trim_end_matches("index.m3u8").to_owned();
    let task_objects: Vec<String> = store
        .objects()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&folder))
        .collect();
    assert_eq!(
        task_objects.len(),
        segments.len() + 1,
        "{task_objects:?} vs {segments:?}"
    );
    let stored_playlist =
        String::from_utf8(store.get_object(&task_playlist_key).expect("playlist")).unwrap();
    assert_eq!(
        stored_playlist.matches(".ts").count(),
        segments.len(),
        "{stored_playlist}"
    );
    assert!(stored_playlist.contains("#EXT-X-ENDLIST"));
    let mp4_key = key_of(&mp4["store_url"]);
    assert!(mp4_key.ends_with("pitch-match.mp4"), "{mp4_key}");

    // Completion callbacks: the task's two carry its id, the rule's none.
    let bodies = wait_for(
        "three completion callbacks",
        Duration::from_secs(30),
        || {
            let bodies: Vec<Value> = receiver
                .deliveries()
                .into_iter()
                .filter(|d| d.sign_ok && d.body["event_type"] == 100)
                .map(|d| d.body)
                .collect();
            (bodies.len() >= 3).then_some(bodies)
        },
    );
    let with_task = bodies
        .iter()
        .filter(|b| b["task_id"] == id.as_str())
        .count();
    assert_eq!(with_task, 2, "{bodies:?}");
    // Status callbacks: the task's window is a session of its own over the capture.
    let session = format!("{rule_capture}_{id}");
    let events = wait_for("the task's status events", Duration::from_secs(30), || {
        let events: Vec<String> = receiver
            .deliveries()
            .into_iter()
            .filter(|d| d.sign_ok && d.body["event_type"] == 332)
            .filter(|d| d.body["session_id"] == session.as_str())
            .map(|d| {
                assert_eq!(d.body["task_id"], id.as_str(), "{}", d.body);
                d.body["record_event"].as_str().unwrap_or("").to_owned()
            })
            .collect();
        (events.len() >= 2).then_some(events)
    });
    assert_eq!(events, ["record_start_succeeded", "record_ended"]);

    // Delete the rule's recording: the task's still plays, from the same segments.
    let gone = delete(&d, &rule_capture);
    assert_eq!(gone["local_files_removed"], false, "{gone}");
    let probe = media::probe(&d.http_url(&format!("/hls/recordings/{hls_id}/index.m3u8")));
    assert!(probe.video_frames >= 18 * 25, "{probe:?}");
    // Then the task's HLS recording: its store folder goes, the MP4 stays and decodes.
    let gone = delete(&d, &hls_id);
    assert_eq!(gone["local_files_removed"], false, "{gone}");
    wait_for(
        "the task's HLS objects removed",
        Duration::from_secs(30),
        || {
            let left = store.objects();
            (!left.iter().any(|(k, _)| k.starts_with(&folder))).then_some(())
        },
    );
    assert!(store.objects().iter().any(|(k, _)| *k == mp4_key));
    assert!(media::decode_errors(&mp4_url).trim().is_empty());
    assert!(media::probe(&mp4_url).video_frames >= 18 * 25);
    // The last recording over the capture: the segments go.
    let gone = delete(&d, &mp4_id);
    assert_eq!(gone["local_files_removed"], true, "{gone}");
    assert_eq!(std::fs::read_dir(&stream_dir).map_or(0, |r| r.count()), 0);
    wait_for("the store emptied", Duration::from_secs(30), || {
        store.objects().is_empty().then_some(())
    });
}

#[test]
fn a_clip_on_a_rule_recorded_stream_reaches_back_into_the_capture() {
    // Segments of 4 s (GOP 1 s): a clip starts at a keyframe inside its first segment.
    let sections = "[[template]]\nname = \"clip\"\nhls = { enabled = true }\nmp4 = {}\n";
    let d = Daemon::start_with_sections(sections);
    let clip = media::clip(Clip::AudioVideo, 30);
    let published = now_s();
    let ffmpeg = media::publish(&d.rtmp_url("live", "goal"), &clip, true);
    std::thread::sleep(Duration::from_secs_f64(
        (published + 20.0 - now_s()).max(0.0),
    ));
    let asked = now_s();
    let id = create_task(
        &d,
        json!({"app": "live", "stream": "goal", "template": "clip",
               "end_time": asked + 5.0, "pre_roll_s": 10}),
    );
    // A second clip over the first (a stream a rule records takes overlapping windows).
    let second = create_task(
        &d,
        json!({"app": "live", "stream": "goal", "template": "clip",
               "end_time": asked + 3.0, "pre_roll_s": 4}),
    );
    wait_task_state(&d, &id, "finished", Duration::from_secs(30));
    let recs = task_recordings(&d, &id, 2);
    let (hls, mp4) = (&recs[0], &recs[1]);
    let hls_id = hls["id"].as_str().unwrap();
    // 10 s before the request (the keyframe at or before it: GOP 1 s) to the first
    // keyframe after its end: by program date time, media and decoded frames.
    let (pdt, _) = playlist(&d, hls_id);
    assert!(
        (asked - 11.6..=asked - 9.4).contains(&pdt),
        "the clip starts {} s before the request",
        asked - pdt
    );
    for rec in [hls, mp4] {
        let duration = rec["duration_s"].as_f64().unwrap();
        assert!(
            (13.5..=16.6).contains(&duration),
            "10 s + 5 s recorded as {duration} s: {rec}"
        );
        assert!(
            (wall_s(&rec["start_time"]) - (asked - 10.0)).abs() <= 1.6,
            "{rec}"
        );
    }
    let hls_url = d.http_url(&format!("/hls/recordings/{hls_id}/index.m3u8"));
    assert!(media::decode_errors(&hls_url).trim().is_empty());
    let probe = media::probe(&hls_url);
    let duration = hls["duration_s"].as_f64().unwrap();
    assert!((probe.duration_s - duration).abs() <= 0.6, "{probe:?}");
    assert!(
        (13 * 25..=17 * 25).contains(&probe.video_frames),
        "{probe:?}"
    );
    let mp4_url = d.http_url(mp4["download"].as_str().unwrap());
    assert!(media::decode_errors(&mp4_url).trim().is_empty());
    let probe = media::probe(&mp4_url);
    assert!(
        (13 * 25..=17 * 25).contains(&probe.video_frames),
        "{probe:?}"
    );
    assert!(probe.audio_frames > 0, "{probe:?}");

    let other = &task_recordings(&d, &second, 2)[0];
    let (pdt, _) = playlist(&d, other["id"].as_str().unwrap());
    assert!(
        (asked - 5.6..=asked - 3.4).contains(&pdt),
        "the second clip starts {} s before the request",
        asked - pdt
    );
    let duration = other["duration_s"].as_f64().unwrap();
    assert!(
        (6.0..=8.8).contains(&duration),
        "4 s + 3 s recorded as {duration} s: {other}"
    );
    publisher_succeeded(ffmpeg);
    // The rule's recording is untouched: the whole publish.
    let rule = d
        .recordings()
        .into_iter()
        .find(|r| r["task_id"].is_null())
        .expect("the rule's recording");
    assert!(rule["duration_s"].as_f64().unwrap() >= 28.0, "{rule}");
}

#[test]
fn cancelling_a_task_on_a_rule_recorded_stream_ends_its_span_not_the_rules_recording() {
    let sections = "[[template]]\nname = \"clip\"\nhls = { enabled = true }\n";
    let d = Daemon::start_with_sections(sections);
    let clip = media::clip(Clip::AudioVideo, 20);
    let ffmpeg = media::publish(&d.rtmp_url("live", "aisle"), &clip, true);
    std::thread::sleep(Duration::from_secs(3));
    let id = create_task(
        &d,
        json!({"app": "live", "stream": "aisle", "template": "clip", "end_time": now_s() + 600.0}),
    );
    wait_task_state(&d, &id, "recording", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(6));
    let r = http::request("DELETE", &d.http, &format!("/api/v1/tasks/{id}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = task_recordings(&d, &id, 1);
    let duration = recs[0]["duration_s"].as_f64().unwrap();
    assert!(
        (4.0..=9.0).contains(&duration),
        "about 6 s until the cancel: {duration}"
    );
    // The publisher went on, and the rule recorded all of it.
    publisher_succeeded(ffmpeg);
    let rule = wait_for(
        "the rule's recording closed",
        Duration::from_secs(20),
        || {
            d.recordings()
                .into_iter()
                .find(|r| r["task_id"].is_null() && r["state"] != "recording")
        },
    );
    assert!(rule["duration_s"].as_f64().unwrap() >= 18.0, "{rule}");
    // The span plays on its own.
    let probe = media::probe(&d.http_url(&format!(
        "/hls/recordings/{}/index.m3u8",
        recs[0]["id"].as_str().unwrap()
    )));
    assert!(
        probe.video_frames as f64 >= (duration - 1.0) * 25.0,
        "{probe:?}"
    );
}
