//! Helpers of the recording-task tests (`tests/tasks.rs`, `tests/task_spans.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{http, wait_for, Daemon};

/// The wall clock, unix seconds.
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn post_task(d: &Daemon, body: Value) -> http::Response {
    http::send_json("POST", &d.http, "/api/v1/tasks", &body.to_string()).expect("POST task")
}

/// Makes a task (201), returning its view.
pub fn create_task(d: &Daemon, body: Value) -> Value {
    let r = post_task(d, body);
    assert_eq!(r.status, 201, "POST /api/v1/tasks: {}", r.text());
    serde_json::from_slice(&r.body).expect("json")
}

pub fn task(d: &Daemon, id: &str) -> Value {
    d.json(&format!("/api/v1/tasks/{id}"))
}

pub fn wait_task_state(d: &Daemon, id: &str, state: &str, limit: Duration) -> Value {
    wait_for(&format!("task {id} {state}"), limit, || {
        let t = task(d, id);
        (t["state"] == state).then_some(t)
    })
}

/// Waits for a publisher to finish its clip: it was never disconnected.
pub fn publisher_succeeded(ffmpeg: std::process::Child) {
    let out = ffmpeg.wait_with_output().expect("ffmpeg");
    assert!(
        out.status.success(),
        "the publisher was disturbed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An RFC 3339 time of the API as unix seconds.
pub fn wall_s(time: &Value) -> f64 {
    let text = time.as_str().expect("a time");
    let t: jiff::Timestamp = text.parse().expect("RFC 3339");
    t.as_millisecond() as f64 / 1000.0
}
