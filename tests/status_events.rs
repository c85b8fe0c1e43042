//! Status callbacks (`event_type` 332, issue 19) with real peers: ffmpeg publishes,
//! leaves, comes back inside the resume window and leaves for good; the daemon tells a
//! real HTTP receiver each step, signed, in order, through the durable outbox.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::callback::{body_signature_ok, CallbackReceiver};
use support::media::{self, Clip};
use support::{unix_ms, wait_for, Daemon};

const KEY: &str = "status-key";

fn daemon(receiver: &CallbackReceiver, status_events: bool) -> Daemon {
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 4",
        "",
        &format!(
            "[callback]\nurl = {:?}\nkey = {KEY:?}\nallow_insecure = true\nretry_interval_s = 1\nstatus_events = {status_events}\n",
            receiver.url()
        ),
    );
    d.spawn();
    d
}

fn status_bodies(receiver: &CallbackReceiver, stream: &str) -> Vec<Value> {
    receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.body["event_type"] == 332 && d.body["stream_id"] == stream)
        .map(|d| {
            assert!(d.sign_ok, "bad sign: {}", d.body);
            assert!(body_signature_ok(KEY, &d), "bad body signature: {}", d.body);
            assert_eq!(
                d.idempotency_key.as_deref(),
                Some(
                    format!(
                        "{}.status{:04}",
                        d.body["session_id"].as_str().unwrap(),
                        d.body["seq"].as_u64().unwrap()
                    )
                    .as_str()
                )
            );
            d.body
        })
        .collect()
}

#[test]
fn publish_leave_resume_end_are_told_in_order() {
    let receiver = CallbackReceiver::start(KEY);
    let d = daemon(&receiver, true);
    let clip = media::clip(Clip::AudioVideo, 3);
    let before_ms = support::callback::unix_now() as i64 * 1000;
    media::publish_and_wait(&d.rtmp_url("live", "told"), &clip, false);
    // Paused: the recording waits in its window; publish again inside it.
    wait_for("record_paused", Duration::from_secs(20), || {
        status_bodies(&receiver, "told")
            .iter()
            .any(|b| b["record_event"] == "record_paused")
            .then_some(())
    });
    media::publish_and_wait(&d.rtmp_url("live", "told"), &clip, false);
    let mut events = wait_for("record_ended", Duration::from_secs(30), || {
        let events = status_bodies(&receiver, "told");
        events
            .iter()
            .any(|b| b["record_event"] == "record_ended")
            .then_some(events)
    });
    events.sort_by_key(|b| b["seq"].as_u64());
    events.dedup_by_key(|b| b["seq"].as_u64()); // at-least-once: a retry may repeat one
    let names: Vec<&str> = events
        .iter()
        .map(|b| b["record_event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "record_start_succeeded",
            "record_paused",
            "record_resumed",
            "record_paused",
            "record_ended"
        ]
    );
    let recs = d.recordings();
    assert_eq!(recs.len(), 1, "one recording, resumed: {recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["sessions"], 2);
    let mut last = 0;
    for (i, b) in events.iter().enumerate() {
        assert_eq!(b["seq"], i as u64 + 1);
        assert_eq!(b["session_id"], rec["id"]);
        assert_eq!(b["appname"], "live");
        assert_eq!(b["channel_id"], "told");
        let at = b["event_time"].as_i64().unwrap() * 1000;
        assert!(
            at >= before_ms / 1000 * 1000 && at >= last,
            "event times in order: {events:?}"
        );
        last = at;
    }
    // The end is told after the recording's last media.
    assert!(last + 1000 >= unix_ms(&rec["end_time"]), "{events:?} {rec}");
    // Every status callback is in the outbox and delivered.
    let callbacks = d.json("/api/v1/callbacks");
    let delivered = callbacks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"].as_str().unwrap().contains(".status") && c["state"] == "delivered")
        .count();
    assert_eq!(delivered, 5, "{callbacks}");
}

#[test]
fn no_status_callbacks_unless_switched_on() {
    let receiver = CallbackReceiver::start(KEY);
    let d = daemon(&receiver, false);
    media::publish_and_wait(
        &d.rtmp_url("live", "quiet"),
        &media::clip(Clip::AudioVideo, 2),
        false,
    );
    d.wait_recordings(1, "finished", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(status_bodies(&receiver, "quiet").is_empty());
}
