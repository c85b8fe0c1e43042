//! Recording tasks (issue 19) with real peers: ffmpeg publishes to a stream that no rule
//! records, and a task records it only inside its window (set seconds ahead on the wall
//! clock, nothing sleeps for it): a window inside a publish, a publish that starts inside
//! an open window (`waiting` -> `recording`), a daemon restart inside a window, a cancel
//! that keeps what was recorded while the publisher goes on, and the bad inputs.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::http;
use support::media::{self, Clip};
use support::metrics::Scrape;
use support::tasks::{
    create_task, now_s, post_task, publisher_succeeded, task, wait_task_state, wall_s,
};
use support::{wait_for, Daemon};

/// A template `clip` and an app `tasks` that no rule records (tasks only).
const SECTIONS: &str = r#"
[[template]]
name = "clip"
hls = { enabled = true, flow_continue_duration_s = 30 }

[[rule]]
app = "tasks"
enabled = false
"#;

/// The recordings of task `id`, oldest first, once every one is closed.
fn task_recordings(d: &Daemon, id: &str, limit: Duration) -> Vec<Value> {
    wait_for(&format!("the recordings of {id} closed"), limit, || {
        let mut recs = d
            .json(&format!("/api/v1/recordings?task_id={id}"))
            .as_array()
            .cloned()
            .unwrap_or_default();
        recs.reverse();
        (!recs.is_empty() && recs.iter().all(|r| r["state"] == "finished")).then_some(recs)
    })
}

/// The first `#EXT-X-PROGRAM-DATE-TIME` of a recording's playlist, unix seconds.
fn first_program_date_time(d: &Daemon, id: &str) -> f64 {
    let playlist = d.get(&format!("/hls/recordings/{id}/index.m3u8")).text();
    let line = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .unwrap_or_else(|| panic!("no program date time in\n{playlist}"));
    wall_s(&json!(line))
}

#[test]
fn a_task_window_inside_a_publish_records_just_the_window() {
    let d = Daemon::start_with_sections(SECTIONS);
    let clip = media::clip(Clip::AudioVideo, 40);
    let ffmpeg = media::publish(&d.rtmp_url("tasks", "pitch"), &clip, true);
    let start = now_s() + 10.0;
    let end = start + 20.0;
    let t = create_task(
        &d,
        json!({"app": "tasks", "stream": "pitch", "template": "clip",
               "start_time": start, "end_time": end.to_string()}),
    );
    let id = t["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(t["state"], "scheduled", "{t}");
    // Before the window nothing records the live stream.
    assert!(d.recordings().is_empty(), "{:?}", d.recordings());
    let running = wait_task_state(&d, &id, "recording", Duration::from_secs(20));
    assert!(running["recording_id"].is_string(), "{running}");
    wait_task_state(&d, &id, "finished", Duration::from_secs(30));
    publisher_succeeded(ffmpeg);

    let recs = task_recordings(&d, &id, Duration::from_secs(20));
    assert_eq!(recs.len(), 1, "one recording for the window: {recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["task_id"], id.as_str());
    assert_eq!(rec["template"], "clip");
    // 20 s, +- one GOP (1 s) at each edge and the hand-over batching.
    let duration = rec["duration_s"].as_f64().unwrap();
    assert!(
        (18.5..=21.5).contains(&duration),
        "window of 20 s recorded as {duration} s"
    );
    let rec_id = rec["id"].as_str().unwrap();
    let pdt = first_program_date_time(&d, rec_id);
    assert!(
        (pdt - start).abs() <= 1.6,
        "the recording starts at {pdt}, the window at {start}"
    );
    assert!((wall_s(&rec["end_time"]) - end).abs() <= 1.6, "{rec}");
    let probe = media::probe(&d.http_url(&format!("/hls/recordings/{rec_id}/index.m3u8")));
    assert!(
        (probe.duration_s - duration).abs() <= 0.6,
        "{probe:?} vs {duration}"
    );
    assert!(probe.video_frames >= 18 * 25, "{probe:?}");
    // Nothing else recorded the stream; the task lists its recording.
    assert_eq!(d.recordings().len(), 1);
    let done = task(&d, &id);
    assert_eq!(done["recordings"], json!([rec_id]), "{done}");
    assert!(done["ended_time"].is_string(), "{done}");
}

#[test]
fn a_publish_inside_an_open_window_records_and_a_restart_inside_it_goes_on() {
    let mut d = Daemon::start_with_sections(SECTIONS);
    let t = create_task(
        &d,
        json!({"app": "tasks", "stream": "hall", "template": "clip",
               "end_time": now_s() + 40.0}),
    );
    let id = t["task_id"].as_str().unwrap().to_owned();
    // Open, but nothing publishes yet.
    wait_task_state(&d, &id, "waiting", Duration::from_secs(10));
    let clip = media::clip(Clip::AudioVideo, 6);
    media::publish_and_wait(&d.rtmp_url("tasks", "hall"), &clip, true);
    // The daemon restarts inside the window; the task is still open after it.
    d.stop();
    d.spawn();
    let waiting = task(&d, &id);
    assert!(
        waiting["state"] == "waiting" || waiting["state"] == "recording",
        "{waiting}"
    );
    media::publish_and_wait(&d.rtmp_url("tasks", "hall"), &clip, true);
    // Cancel now rather than wait out the window: what was recorded stays.
    let r = http::request("DELETE", &d.http, &format!("/api/v1/tasks/{id}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = task_recordings(&d, &id, Duration::from_secs(20));
    // One recording, continued across the restart inside the template's resume window.
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = &recs[0];
    let duration = rec["duration_s"].as_f64().unwrap();
    assert!(
        (10.0..=12.5).contains(&duration),
        "two 6 s publishes recorded as {duration} s: {rec}"
    );
    assert!(rec["discontinuities"].as_u64().unwrap() >= 1, "{rec}");
    let probe = media::probe(&d.http_url(&format!(
        "/hls/recordings/{}/index.m3u8",
        rec["id"].as_str().unwrap()
    )));
    assert!(probe.video_frames >= 10 * 25, "{probe:?}");
    assert_eq!(task(&d, &id)["state"], "cancelled");
}

#[test]
fn cancelling_a_running_task_keeps_its_recording_and_the_publisher() {
    let d = Daemon::start_with_sections(SECTIONS);
    let clip = media::clip(Clip::AudioVideo, 20);
    let mut ffmpeg = media::publish(&d.rtmp_url("tasks", "aisle"), &clip, true);
    let t = create_task(
        &d,
        json!({"app": "tasks", "stream": "aisle", "template": "clip",
               "start_time": "", "end_time": now_s() + 600.0}),
    );
    let id = t["task_id"].as_str().unwrap().to_owned();
    wait_task_state(&d, &id, "recording", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(5));
    let r = http::request("DELETE", &d.http, &format!("/api/v1/tasks/{id}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = task_recordings(&d, &id, Duration::from_secs(10));
    assert_eq!(recs.len(), 1, "{recs:?}");
    let duration = recs[0]["duration_s"].as_f64().unwrap();
    assert!(
        (2.0..=8.0).contains(&duration),
        "about 5 s recorded before the cancel: {duration}"
    );
    // The publisher was not disconnected: it publishes to the end of its clip.
    assert!(
        ffmpeg.try_wait().unwrap().is_none(),
        "ffmpeg still publishing"
    );
    publisher_succeeded(ffmpeg);
    assert_eq!(d.recordings().len(), 1, "nothing recorded after the cancel");
    // Cancelling twice: the task has ended.
    let again = http::request("DELETE", &d.http, &format!("/api/v1/tasks/{id}"), &[], b"").unwrap();
    assert_eq!(again.status, 409, "{}", again.text());
}

#[test]
fn bad_task_requests_are_refused_with_the_reason() {
    let sections = format!("{SECTIONS}\n[[rule]]\napp = \"live\"\ntemplate = \"clip\"\n");
    let d = Daemon::start_with_sections(&sections);
    let now = now_s();
    let task = |stream: &str, extra: Value| {
        let mut body = json!({"app": "tasks", "stream": stream, "template": "clip"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let refused = |body: Value, status: u16, says: &str| {
        let r = post_task(&d, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(
            r.text().contains(says),
            "{body}: {} should say {says:?}",
            r.text()
        );
    };
    refused(
        task(
            "a",
            json!({"start_time": now + 60.0, "end_time": now + 30.0}),
        ),
        400,
        "after start_time",
    );
    refused(
        task(
            "a",
            json!({"start_time": now + 7.0 * 86400.0, "end_time": now + 7.0 * 86400.0 + 60.0}),
        ),
        400,
        "6 days",
    );
    refused(
        task(
            "a",
            json!({"start_time": now + 60.0, "end_time": now + 60.0 + 25.0 * 3600.0}),
        ),
        400,
        "24 hours",
    );
    refused(task("a", json!({"end_time": now - 10.0})), 400, "passed");
    refused(
        task("a", json!({"end_time": "next tuesday"})),
        400,
        "end_time",
    );
    refused(task("a", json!({})), 400, "end_time");
    refused(
        task("a", json!({"end_time": now + 60.0, "template": "nope"})),
        400,
        "no template",
    );
    refused(
        task("../../etc", json!({"end_time": now + 60.0})),
        400,
        "stream",
    );
    refused(
        task("a", json!({"end_time": now + 60.0, "app": ".."})),
        400,
        "app",
    );
    refused(
        task("a", json!({"end_time": now + 60.0, "pre_roll_s": 61})),
        400,
        "pre_roll_s",
    );
    refused(
        task(
            "a",
            json!({"start_time": now + 5.0, "end_time": now + 60.0, "pre_roll_s": 5}),
        ),
        400,
        "pre_roll_s",
    );
    refused(
        task("a", json!({"end_time": now + 60.0, "colour": "red"})),
        400,
        "colour",
    );
    // Overlapping windows on one stream; touching ones are fine.
    create_task(
        &d,
        task(
            "b",
            json!({"start_time": now + 100.0, "end_time": now + 200.0}),
        ),
    );
    refused(
        task(
            "b",
            json!({"start_time": now + 150.0, "end_time": now + 250.0}),
        ),
        409,
        "overlap",
    );
    create_task(
        &d,
        task(
            "b",
            json!({"start_time": now + 200.0, "end_time": now + 300.0}),
        ),
    );
    // On a stream a rule records, windows are spans of its capture and may overlap, up
    // to eight at a time.
    let ruled = |n: f64| {
        json!({"app": "live", "stream": "a", "template": "clip",
               "start_time": now + 100.0 + n, "end_time": now + 200.0 + n})
    };
    for n in 0..8 {
        create_task(&d, ruled(f64::from(n)));
    }
    refused(ruled(8.0), 409, "at most 8");
    // A finished task cannot be cancelled; an unknown one is not found.
    let short = create_task(&d, task("c", json!({"end_time": now_s() + 1.0})));
    let id = short["task_id"].as_str().unwrap();
    wait_task_state(&d, id, "finished", Duration::from_secs(10));
    let r = http::request("DELETE", &d.http, &format!("/api/v1/tasks/{id}"), &[], b"").unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("finished"), "{}", r.text());
    let r = http::request("DELETE", &d.http, "/api/v1/tasks/task-nope", &[], b"").unwrap();
    assert_eq!(r.status, 404);
    // A template a task will use cannot be deleted from under it.
    let made = http::send_json(
        "POST",
        &d.http,
        "/api/v1/templates",
        r#"{"name": "tmp", "hls": {"enabled": true}}"#,
    )
    .unwrap();
    assert_eq!(made.status, 201, "{}", made.text());
    let uses = create_task(
        &d,
        task(
            "d",
            json!({"template": "tmp", "start_time": now + 400.0, "end_time": now + 500.0}),
        ),
    );
    let r = http::request("DELETE", &d.http, "/api/v1/templates/tmp", &[], b"").unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains(uses["task_id"].as_str().unwrap()),
        "{}",
        r.text()
    );
    // Listing by state.
    let scheduled = d.json("/api/v1/tasks?state=scheduled");
    assert_eq!(scheduled.as_array().unwrap().len(), 11, "{scheduled}");
    assert_eq!(d.json("/api/v1/tasks").as_array().unwrap().len(), 12);
    assert_eq!(d.get("/api/v1/tasks?state=sleeping").status, 400);
}

/// Asks for a clip of `stream` with `pre_roll_s` that runs `after_s` past the request, and
/// returns (when it was asked, its one recording once finished).
fn clip_of(d: &Daemon, stream: &str, pre_roll_s: u32, after_s: f64) -> (f64, Value) {
    let asked = now_s();
    let t = create_task(
        d,
        json!({"app": "tasks", "stream": stream, "template": "clip",
               "start_time": "", "end_time": asked + after_s, "pre_roll_s": pre_roll_s}),
    );
    let id = t["task_id"].as_str().unwrap().to_owned();
    let window_start = wall_s(&t["start_time"]);
    assert!(
        (window_start - (asked - f64::from(pre_roll_s))).abs() < 0.5,
        "the window reaches back {pre_roll_s} s: {t}"
    );
    wait_task_state(d, &id, "finished", Duration::from_secs(30));
    let recs = task_recordings(d, &id, Duration::from_secs(20));
    assert_eq!(recs.len(), 1, "{recs:?}");
    (asked, recs[0].clone())
}

#[test]
fn a_clip_with_pre_roll_begins_before_it_was_asked_for() {
    let d = Daemon::start_with_sections(SECTIONS);
    let clip = media::clip(Clip::AudioVideo, 45);
    let published = now_s();
    let ffmpeg = media::publish(&d.rtmp_url("tasks", "goal"), &clip, true);
    // 30 s into the publish (nothing records the stream; only its look-back holds it).
    std::thread::sleep(Duration::from_secs_f64(
        (published + 30.0 - now_s()).max(0.0),
    ));
    assert!(d.recordings().is_empty());
    // About 30 s of a ~1.1 Mb/s stream are held for clips, within the 8 MiB bound.
    let held = Scrape::get(&d).value("edgerec_lookback_bytes");
    assert!(
        (1.5e6..=8.0 * 1024.0 * 1024.0).contains(&held),
        "look-back holds {held} bytes"
    );
    let (asked, rec) = clip_of(&d, "goal", 10, 5.0);
    let id = rec["id"].as_str().unwrap();
    // 10 s before the request (the keyframe at or before it: GOP 1 s) to 5 s after.
    let pdt = first_program_date_time(&d, id);
    assert!(
        (asked - 11.6..=asked - 9.4).contains(&pdt),
        "the clip starts {} s before the request",
        asked - pdt
    );
    let duration = rec["duration_s"].as_f64().unwrap();
    assert!(
        (13.5..=16.6).contains(&duration),
        "10 s + 5 s recorded as {duration} s: {rec}"
    );
    let probe = media::probe(&d.http_url(&format!("/hls/recordings/{id}/index.m3u8")));
    assert!((probe.duration_s - duration).abs() <= 0.6, "{probe:?}");
    assert!(
        (13 * 25..=17 * 25).contains(&probe.video_frames),
        "the replayed and live frames all decode: {probe:?}"
    );
    assert!(probe.audio_frames > 0, "{probe:?}");
    publisher_succeeded(ffmpeg);
}

#[test]
fn a_clip_reaching_back_past_the_start_of_its_stream_begins_at_its_first_keyframe() {
    let d = Daemon::start_with_sections(SECTIONS);
    let clip = media::clip(Clip::AudioVideo, 12);
    let published = now_s();
    let ffmpeg = media::publish(&d.rtmp_url("tasks", "kickoff"), &clip, true);
    std::thread::sleep(Duration::from_secs(3));
    let (asked, rec) = clip_of(&d, "kickoff", 10, 4.0);
    let pdt = first_program_date_time(&d, rec["id"].as_str().unwrap());
    assert!(
        (pdt - published).abs() <= 1.5,
        "starts where the stream did ({published}), not at the pre-roll: {pdt}"
    );
    let duration = rec["duration_s"].as_f64().unwrap();
    let live_for = asked + 4.0 - published;
    assert!(
        (duration - live_for).abs() <= 1.6,
        "{duration} s of {live_for} s live"
    );
    publisher_succeeded(ffmpeg);
}

#[test]
fn a_tasks_recordings_and_callbacks_carry_its_id_through_the_store() {
    use support::callback::CallbackReceiver;
    use support::s3::{S3sFs, Store};
    let store = S3sFs::start();
    let receiver = CallbackReceiver::start("task-key");
    let sections = format!(
        "[upload]\nenabled = true\n{}\n[callback]\nurl = {:?}\nkey = \"task-key\"\nallow_insecure = true\nretry_interval_s = 1\nstatus_events = true\n\
         [[template]]\nname = \"both\"\nhls = {{ enabled = true, flow_continue_duration_s = 1 }}\nmp4 = {{ file_name = \"{{StreamID}}-task\" }}\n\
         [[rule]]\napp = \"tasks\"\nenabled = false\n",
        store.toml_section("venue"),
        receiver.url()
    );
    let d = Daemon::start_with_sections(&sections);
    let t = create_task(
        &d,
        json!({"app": "tasks", "stream": "nave", "template": "both", "end_time": now_s() + 300.0}),
    );
    let id = t["task_id"].as_str().unwrap().to_owned();
    media::publish_and_wait(
        &d.rtmp_url("tasks", "nave"),
        &media::clip(Clip::AudioVideo, 4),
        false,
    );
    let r = http::request("DELETE", &d.http, &format!("/api/v1/tasks/{id}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // An HLS recording and an MP4 file, both of the task, both in the store.
    let recs = wait_for("both uploaded", Duration::from_secs(60), || {
        let recs = d
            .json(&format!("/api/v1/recordings?task_id={id}"))
            .as_array()
            .cloned()
            .unwrap_or_default();
        (recs.len() == 2 && recs.iter().all(|r| r["upload_state"] == "uploaded")).then_some(recs)
    });
    let formats: Vec<&str> = recs.iter().map(|r| r["format"].as_str().unwrap()).collect();
    assert!(
        formats.contains(&"hls") && formats.contains(&"mp4"),
        "{formats:?}"
    );
    assert!(recs.iter().all(|r| r["task_id"] == id.as_str()), "{recs:?}");
    assert!(
        store
            .objects()
            .iter()
            .any(|(k, _)| k.ends_with("nave-task.mp4")),
        "{:?}",
        store.objects()
    );
    // Completion callbacks (one per recording) and status callbacks name the task.
    let bodies = wait_for("two completion callbacks", Duration::from_secs(30), || {
        let bodies: Vec<Value> = receiver
            .deliveries()
            .into_iter()
            .filter(|d| d.sign_ok)
            .map(|d| d.body)
            .collect();
        (bodies.iter().filter(|b| b["event_type"] == 100).count() >= 2).then_some(bodies)
    });
    for body in &bodies {
        assert_eq!(body["task_id"], id.as_str(), "{body}");
    }
    assert!(
        bodies.iter().any(|b| b["event_type"] == 332),
        "status events too: {bodies:?}"
    );
}
