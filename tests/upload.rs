//! Upload to real S3-compatible stores (s3s-fs; a 3-node Garage cluster) and completion
//! callbacks to a real HTTP receiver, under the faults the issue names: the store killed
//! mid-multipart, the daemon SIGKILLed mid-part, a 60 s outage while recording, the
//! callback receiver down for 3 minutes, a full disk with `stop_new` and with
//! `delete_oldest`, wrong credentials, Garage nodes down, and a store behind TLS with a
//! private CA.
//!
//! Every test checks the final objects byte for byte against the local files and decodes
//! the uploaded playlist with ffmpeg from a copy of the store's objects.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::callback::CallbackReceiver;
use support::media::{self, Clip};
use support::metrics::Scrape;
use support::relay::Relay;
use support::s3::{GarageCluster, S3sFs, Store};
use support::tls::TlsFront;
use support::tmpfs::Tmpfs;
use support::{wait_for, Daemon};

const PREFIX: &str = "venue-a";

/// Config sections for uploads to `store` (endpoint replaced by `endpoint` if given).
fn sections(store: &dyn Store, endpoint: Option<&str>, upload: &str, rest: &str) -> String {
    let client = store.client();
    let mut s3 = store.toml_section(PREFIX);
    if let Some(e) = endpoint {
        s3 = s3.replace(&format!("{:?}", client.endpoint), &format!("{e:?}"));
    }
    format!("[upload]\nenabled = true\n{upload}\n{s3}\n{rest}\n")
}

fn callback_section(receiver: &CallbackReceiver, retry_s: u32) -> String {
    format!(
        "[callback]\nurl = {:?}\nkey = \"abc123\"\nallow_insecure = true\nretry_interval_s = {retry_s}\nmax_attempts = 1000\n",
        receiver.url()
    )
}

/// A counting relay in front of `store`.
fn relay_to(store: &dyn Store) -> Relay {
    let endpoint = store.client().endpoint;
    Relay::start(endpoint.trim_start_matches("http://").parse().unwrap())
}

/// Waits until the recording is uploaded; returns its API object.
fn wait_uploaded(d: &Daemon, id: &str, limit: Duration) -> Value {
    wait_for(&format!("recording {id} uploaded"), limit, || {
        let r = d.recording(id);
        (r["upload_state"] == "uploaded").then_some(r)
    })
}

/// Starts a daemon uploading to `store` with `callback`, publishes `seconds` of media to
/// live/`stream` and waits for its recording to be in the store; returns the daemon and
/// the recording's id.
fn record_and_upload(
    store: &dyn Store,
    callback: &str,
    stream: &str,
    seconds: u32,
) -> (Daemon, String) {
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(store, None, "", callback),
    );
    d.spawn();
    media::publish_and_wait(
        &d.rtmp_url("live", stream),
        &media::clip(Clip::AudioVideo, seconds),
        true,
    );
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let id = rec["id"].as_str().unwrap().to_owned();
    wait_uploaded(&d, &id, Duration::from_secs(60));
    (d, id)
}

fn one_recording(d: &Daemon, state: &str, limit: Duration) -> Value {
    d.wait_recordings(1, state, limit).remove(0)
}

/// The store prefix of a recording (from its store URL).
fn store_prefix(rec: &Value) -> String {
    let url = rec["store_url"].as_str().expect("store_url");
    let start = url.find(&format!("/{PREFIX}/")).expect("prefix in url") + 1;
    url[start..].trim_end_matches("/index.m3u8").to_owned()
}

/// Checks every local segment against the store byte for byte, that the store holds
/// exactly the segments plus the playlist, and that the playlist decodes from a copy of
/// the store. Returns the decoded probe.
fn check_store_matches(d: &Daemon, store: &dyn Store, rec: &Value) -> media::Probe {
    let prefix = store_prefix(rec);
    let full = d.recording(rec["id"].as_str().unwrap());
    let dir = d.recording_dir(rec);
    let segments = full["segment_list"].as_array().unwrap();
    let listed = store.list_objects(&format!("{prefix}/"));
    assert_eq!(
        listed.len(),
        segments.iter().filter(|s| s["gap"] != true).count() + 1,
        "store holds the segments and the playlist: {listed:?}"
    );
    let copy = tempfile::tempdir().unwrap();
    for seg in segments {
        let file = seg["uri"].as_str().unwrap().rsplit('/').next().unwrap();
        let local = std::fs::read(dir.join(file)).expect("local segment");
        let remote = store
            .get_object(&format!("{prefix}/{file}"))
            .unwrap_or_else(|| panic!("{prefix}/{file} missing in the store"));
        assert!(
            local == remote,
            "{file}: store copy differs ({} vs {} bytes)",
            remote.len(),
            local.len()
        );
        std::fs::write(copy.path().join(file), remote).unwrap();
    }
    let playlist = store
        .get_object(&format!("{prefix}/index.m3u8"))
        .expect("playlist");
    let text = String::from_utf8(playlist).unwrap();
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    assert!(!text.contains("/hls/"), "segment URIs are relative: {text}");
    let path = copy.path().join("index.m3u8");
    std::fs::write(&path, text).unwrap();
    let input = path.to_str().unwrap();
    assert_eq!(
        media::decode_errors(input),
        "",
        "uploaded playlist decodes cleanly"
    );
    let probe = media::probe(input);
    let duration = full["duration_s"].as_f64().unwrap();
    assert!(
        (probe.duration_s - duration).abs() < 0.5,
        "store copy lasts {} s, recording {duration} s",
        probe.duration_s
    );
    probe
}

#[test]
fn uploads_a_recording_and_delivers_a_signed_callback() {
    let store = S3sFs::start();
    let receiver = CallbackReceiver::start("abc123");
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 2",
        "",
        &sections(&store, None, "", &callback_section(&receiver, 5)),
    );
    d.spawn();
    let clip = media::clip(Clip::AudioVideo, 12);
    media::publish_and_wait(&d.rtmp_url("live", "cam1"), &clip, true);
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let id = rec["id"].as_str().unwrap().to_owned();
    let rec = wait_uploaded(&d, &id, Duration::from_secs(60));
    let probe = check_store_matches(&d, &store, &rec);
    assert!(probe.video_frames >= 12 * 25 - 25, "{probe:?}");

    let delivery = wait_for("callback delivered", Duration::from_secs(30), || {
        receiver.deliveries().into_iter().next()
    });
    assert!(
        delivery.sign_ok,
        "signature checks out: {:?}",
        delivery.body
    );
    assert_eq!(delivery.idempotency_key.as_deref(), Some(id.as_str()));
    assert!(
        support::callback::body_signature_ok("abc123", &delivery),
        "X-Edgerec-Signature covers the body: {:?}",
        delivery.signature
    );
    let body = &delivery.body;
    assert_eq!(body["event_type"], 100);
    assert_eq!(body["file_format"], "hls");
    assert_eq!(body["file_id"], id.as_str());
    assert_eq!(body["stream_id"], "cam1");
    assert_eq!(body["appname"], "live");
    assert_eq!(body["video_url"], rec["store_url"]);
    assert!(body["video_url"].as_str().unwrap().ends_with("/index.m3u8"));
    let sizes: u64 = store
        .list_objects(&format!("{}/", store_prefix(&rec)))
        .iter()
        .map(|(_, s)| s)
        .sum();
    assert_eq!(
        body["file_size"].as_u64(),
        Some(sizes),
        "file_size = bytes in the store"
    );
    assert_eq!(
        body["duration"].as_f64().unwrap().round(),
        rec["duration_s"].as_f64().unwrap().round()
    );
    let ext: Value = serde_json::from_str(body["callback_ext"].as_str().unwrap()).unwrap();
    assert_eq!(ext["video_codec"], "h264");
    let callbacks = d.json("/api/v1/callbacks");
    assert_eq!(callbacks[0]["state"], "delivered");
    assert_eq!(d.recording(&id)["callback_state"], "delivered");
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "one delivery when the receiver answers 200"
    );

    // What /metrics says of it: every object sent, nothing waiting, the store fine.
    let objects = store
        .list_objects(&format!("{}/", store_prefix(&rec)))
        .len() as f64;
    let m = Scrape::get(&d);
    m.assert_promtool_clean();
    assert_eq!(m.value("edgerec_uploaded_objects_total"), objects);
    assert_eq!(m.value("edgerec_uploaded_bytes_total"), sizes as f64);
    assert_eq!(m.value("edgerec_upload_delay_seconds_count"), objects);
    for state in ["queued", "uploading", "failed"] {
        assert_eq!(
            m.value(&format!("edgerec_upload_objects{{state=\"{state}\"}}")),
            0.0
        );
    }
    assert_eq!(m.value("edgerec_upload_backlog_bytes"), 0.0);
    assert_eq!(m.value("edgerec_upload_oldest_pending_age_seconds"), 0.0);
    assert_eq!(m.value("edgerec_upload_store_state{state=\"ok\"}"), 1.0);
    assert_eq!(m.value("edgerec_callbacks{state=\"delivered\"}"), 1.0);
}

const MULTIPART: &str = "part_size_mb = 5\nconcurrency = 1\nbandwidth_limit_kbps = 40000";

#[test]
fn store_killed_mid_multipart_then_restarted() {
    let mut store = S3sFs::start();
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(&store, None, MULTIPART, ""),
    );
    d.spawn();
    media::publish_and_wait(&d.rtmp_url("live", "big"), &media::noise_clip(6), true);
    let object = d.wait_mid_multipart(1);
    store.kill();
    // The store's state changes in memory first and the object's row a moment later
    // (after its index write): wait for both.
    let same = wait_for(
        "the API to report the store down, on the object too",
        Duration::from_secs(60),
        || {
            let down = d.json("/api/v1/uploads");
            let same = down["objects"]
                .as_array()?
                .iter()
                .find(|o| o["id"] == object["id"])?
                .clone();
            (down["store"]["state"] == "unavailable" && same["last_error"].is_string())
                .then_some(same)
        },
    );
    assert!(
        same["last_error"].as_str().unwrap().contains("store"),
        "{same}"
    );
    assert!(same["next_attempt"].is_string(), "{same}");
    store.restart();
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let rec = wait_uploaded(&d, rec["id"].as_str().unwrap(), Duration::from_secs(400));
    check_store_matches(&d, &store, &rec);
}

#[test]
fn daemon_sigkilled_mid_part_resends_no_completed_part() {
    let store = S3sFs::start();
    let relay = relay_to(&store);
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(&store, Some(&relay.url()), MULTIPART, ""),
    );
    d.spawn();
    media::publish_and_wait(&d.rtmp_url("live", "big"), &media::noise_clip(6), true);
    d.wait_mid_multipart(2);
    d.kill9();
    d.spawn();
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let rec = wait_uploaded(&d, rec["id"].as_str().unwrap(), Duration::from_secs(300));
    check_store_matches(&d, &store, &rec);
    let resent = relay.parts_sent_more_than_once();
    assert!(
        resent.len() <= 1 && resent.iter().all(|(_, _, n)| *n == 2),
        "only the part in flight at the kill may be sent twice: {resent:?}"
    );
    let list_parts = relay
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.query_param("uploadId").is_some())
        .count();
    assert!(
        list_parts >= 1,
        "the resume asked the store (ListParts) first"
    );
}

#[test]
fn a_60_s_outage_while_recording_loses_nothing() {
    let store = S3sFs::start();
    let mut relay = relay_to(&store);
    let receiver = CallbackReceiver::start("abc123");
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 2",
        "",
        &sections(
            &store,
            Some(&relay.url()),
            "",
            &callback_section(&receiver, 2),
        ),
    );
    d.spawn();
    let clip = media::clip(Clip::AudioVideo, 80);
    let mut publisher = media::publish(&d.rtmp_url("live", "cam"), &clip, true);
    wait_for("first segment uploaded", Duration::from_secs(30), || {
        d.log().contains("uploaded object=").then_some(())
    });
    relay.stop();
    let outage = Instant::now();
    // What the daemon had acknowledged when the store went away: never to be sent again. A
    // PUT the relay saw whole but whose response the stop cut was not acknowledged, and
    // sending it again whole is right (on a slow runner, e.g. under qemu, this happens).
    let acknowledged: std::collections::HashSet<String> = d
        .log()
        .lines()
        .filter_map(|l| l.split("uploaded object=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|key| format!("/recordings/{key}"))
        .collect();
    assert!(!acknowledged.is_empty());
    std::thread::sleep(Duration::from_secs(60));
    let during = d.json("/api/v1/uploads");
    assert_eq!(during["store"]["state"], "unavailable", "{during}");
    assert!(
        d.recordings()[0]["state"] == "recording",
        "recording went on during the outage"
    );
    relay.start_again();
    eprintln!("outage lasted {:?}", outage.elapsed());
    assert!(publisher.wait().unwrap().success());
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let id = rec["id"].as_str().unwrap().to_owned();
    let rec = wait_uploaded(&d, &id, Duration::from_secs(400));
    let probe = check_store_matches(&d, &store, &rec);
    assert!(probe.video_frames >= 80 * 25 - 50, "{probe:?}");
    wait_for("callback after the outage", Duration::from_secs(30), || {
        receiver.deliveries().into_iter().find(|d| d.status == 200)
    });
    // Single PUTs: a segment cut by the outage is sent again whole (once); every
    // acknowledged one went through exactly once.
    let mut seen = std::collections::HashMap::new();
    for r in relay
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.complete())
    {
        *seen
            .entry(r.target.split('?').next().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    for (target, n) in &seen {
        let most = if acknowledged.contains(target) { 1 } else { 2 };
        assert!(
            *n <= most,
            "{target} was sent whole {n} times (acknowledged before the outage: {}): {seen:?}",
            acknowledged.contains(target)
        );
    }
}

#[test]
fn callback_receiver_down_for_3_minutes_then_delivered() {
    let store = S3sFs::start();
    let mut receiver = CallbackReceiver::start("abc123");
    receiver.down();
    let (d, id) = record_and_upload(&store, &callback_section(&receiver, 20), "cb", 5);
    let down_since = Instant::now();
    wait_for("failed attempts shown", Duration::from_secs(60), || {
        let cb = d.json("/api/v1/callbacks")[0].clone();
        (cb["attempts"].as_u64()? >= 1 && cb["state"] == "pending" && cb["last_error"].is_string())
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(180).saturating_sub(down_since.elapsed()));
    let before = d.json("/api/v1/callbacks")[0].clone();
    assert!(
        before["attempts"].as_u64().unwrap() >= 5,
        "retried every 20 s: {before}"
    );
    receiver.up();
    let delivery = wait_for(
        "delivery once the receiver is back",
        Duration::from_secs(60),
        || receiver.deliveries().into_iter().next(),
    );
    assert!(delivery.sign_ok);
    assert_eq!(delivery.idempotency_key.as_deref(), Some(id.as_str()));
    wait_for("delivered in the API", Duration::from_secs(10), || {
        (d.json("/api/v1/callbacks")[0]["state"] == "delivered").then_some(())
    });
    assert!(receiver
        .deliveries()
        .iter()
        .all(|x| x.idempotency_key.as_deref() == Some(id.as_str())));
}

#[test]
fn a_callback_that_fails_for_good_is_parked_then_delivered_when_retried() {
    let store = S3sFs::start();
    let receiver = CallbackReceiver::start("abc123");
    receiver.set_status(500);
    let callback =
        callback_section(&receiver, 1).replace("max_attempts = 1000", "max_attempts = 2");
    let (mut d, id) = record_and_upload(&store, &callback, "parked", 4);
    let failed = wait_for(
        "the callback failed for good",
        Duration::from_secs(30),
        || {
            let cb = d.json("/api/v1/callbacks")[0].clone();
            (cb["state"] == "failed").then_some(cb)
        },
    );
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert_eq!(
        failed["last_error"],
        "receiver answered 500 Internal Server Error"
    );
    assert_eq!(receiver.deliveries().len(), 2, "two attempts, then parked");
    assert_eq!(
        d.json("/api/v1/callbacks?state=pending,failed"),
        Value::Array(vec![failed.clone()])
    );
    assert_eq!(
        d.json("/api/v1/callbacks?state=delivered"),
        Value::Array(vec![])
    );
    let r = d.get("/api/v1/callbacks?state=sent");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("pending, delivered, failed"),
        "{}",
        r.text()
    );
    let m = Scrape::get(&d);
    assert_eq!(m.value("edgerec_callbacks{state=\"failed\"}"), 1.0);
    assert_eq!(m.value("edgerec_callbacks{state=\"pending\"}"), 0.0);
    // Parked: the sender leaves it alone, across a restart too.
    d.stop();
    d.spawn();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.deliveries().len(), 2, "no attempt while parked");
    assert_eq!(d.json("/api/v1/callbacks")[0]["state"], "failed");

    receiver.set_status(200);
    let answer = support::http::post(&d.http, &format!("/api/v1/callbacks/{id}/retry")).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_for("delivered after the retry", Duration::from_secs(30), || {
        (d.json("/api/v1/callbacks")[0]["state"] == "delivered").then_some(())
    });
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries
        .iter()
        .all(|x| x.sign_ok && x.idempotency_key.as_deref() == Some(id.as_str())));
    let m = Scrape::get(&d);
    assert_eq!(m.value("edgerec_callbacks{state=\"delivered\"}"), 1.0);
    assert_eq!(m.value("edgerec_callbacks{state=\"failed\"}"), 0.0);
}

#[test]
fn wrong_credentials_are_reported_then_fixed() {
    let store = S3sFs::start();
    let good = sections(&store, None, "", "");
    let bad = good.replace(
        &format!("secret_key = {:?}", store.client().secret_key),
        "secret_key = \"wrong-secret\"",
    );
    assert_ne!(good, bad);
    let mut d = Daemon::configure_with("flow_continue_duration_s = 1", "", &bad);
    d.spawn();
    media::publish_and_wait(
        &d.rtmp_url("live", "creds"),
        &media::clip(Clip::AudioVideo, 5),
        true,
    );
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let id = rec["id"].as_str().unwrap().to_owned();
    let uploads = wait_for(
        "credentials error in the API",
        Duration::from_secs(60),
        || {
            let u = d.json("/api/v1/uploads");
            (u["store"]["state"] == "credentials_rejected").then_some(u)
        },
    );
    let error = uploads["store"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("SignatureDoesNotMatch"),
        "{error}"
    );
    assert!(
        !d.log().contains("wrong-secret"),
        "the secret is never logged"
    );
    assert_ne!(d.recording(&id)["upload_state"], "uploaded");
    let m = Scrape::get(&d);
    m.assert_promtool_clean();
    assert_eq!(
        m.value("edgerec_upload_store_state{state=\"credentials_rejected\"}"),
        1.0
    );
    assert_eq!(m.value("edgerec_upload_store_state{state=\"ok\"}"), 0.0);
    assert!(m.value("edgerec_upload_backlog_bytes") > 100_000.0);
    assert!(m.value("edgerec_upload_oldest_pending_age_seconds") > 0.0);
    assert_eq!(m.value("edgerec_uploaded_objects_total"), 0.0);
    d.stop();
    d.write_config("flow_continue_duration_s = 1", "", &good);
    d.spawn();
    let rec = wait_uploaded(&d, &id, Duration::from_secs(60));
    check_store_matches(&d, &store, &rec);
}

/// A daemon recording onto a 64 MB tmpfs with the `[storage]` keys in `storage`, its
/// uploads going to a fresh store through a relay that starts stopped (the uplink is down).
/// None when tmpfs mounts are not allowed here.
fn on_small_disk_with_uplink_down(storage: &str) -> Option<(S3sFs, Relay, Daemon, Tmpfs)> {
    let store = S3sFs::start();
    let mut relay = relay_to(&store);
    relay.stop();
    let storage = format!("[storage]\n{storage}check_interval_s = 1\n");
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(&store, Some(&relay.url()), "", &storage),
    );
    let tmpfs = Tmpfs::mount(&d.data_dir().join("media"), "64m")?;
    d.spawn();
    Some((store, relay, d, tmpfs))
}

/// Every segment the index lists for `rec` is on disk with the bytes it lists.
fn assert_segments_on_disk(d: &Daemon, rec: &Value) {
    let full = d.recording(rec["id"].as_str().unwrap());
    let dir = d.recording_dir(rec);
    for seg in full["segment_list"].as_array().unwrap() {
        let file = seg["uri"].as_str().unwrap().rsplit('/').next().unwrap();
        assert_eq!(
            std::fs::metadata(dir.join(file)).unwrap().len(),
            seg["bytes"].as_u64().unwrap(),
            "{file}"
        );
    }
}

#[test]
fn full_disk_with_stop_new_keeps_everything_not_uploaded() {
    let Some((store, mut relay, d, _tmpfs)) =
        on_small_disk_with_uplink_down("high_watermark_percent = 40\nlow_watermark_percent = 20\n")
    else {
        return;
    };
    // ~36 MB of media: past the 40 % (25.6 MB) high watermark, with the store unreachable.
    media::publish_and_wait(&d.rtmp_url("live", "fill"), &media::noise_clip(4), true);
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let storage_view = wait_for("new recordings refused", Duration::from_secs(30), || {
        let s = d.json("/api/v1/storage");
        (s["accepting_new_recordings"] == false).then_some(s)
    });
    assert!(
        storage_view["last_action"]
            .as_str()
            .unwrap()
            .contains("refusing"),
        "{storage_view}"
    );
    let refused = media::publish(
        &d.rtmp_url("live", "second"),
        &media::clip(Clip::AudioVideo, 2),
        true,
    )
    .wait_with_output()
    .unwrap();
    assert!(
        !refused.status.success(),
        "a new publish is refused while the disk is above the high watermark"
    );
    assert_eq!(d.recordings().len(), 1, "no recording was created");
    // Nothing un-uploaded was deleted.
    assert_segments_on_disk(&d, &rec);
    let full = d.recording(rec["id"].as_str().unwrap());
    assert!(d.log().contains("refusing new recordings"));
    // The store comes back: the recording uploads, is evicted for space, and publishing works.
    relay.start_again();
    let id = rec["id"].as_str().unwrap().to_owned();
    wait_for("evicted after upload", Duration::from_secs(120), || {
        let r = d.recording(&id);
        (r["upload_state"] == "uploaded" && r["local_files"] == false).then_some(())
    });
    wait_for("accepting again", Duration::from_secs(30), || {
        (d.json("/api/v1/storage")["accepting_new_recordings"] == true).then_some(())
    });
    media::publish_and_wait(
        &d.rtmp_url("live", "after"),
        &media::clip(Clip::AudioVideo, 3),
        true,
    );
    assert_eq!(d.recordings().len(), 2);
    let listed = store.list_objects(&format!("{PREFIX}/live/fill/"));
    assert_eq!(
        listed.len() as u64,
        full["segments"].as_u64().unwrap() + 1,
        "{listed:?}"
    );
}

/// `on_full = "delete_oldest"` with the uplink down: when the disk passes the high
/// watermark, the oldest closed recording is deleted although it was never uploaded (the
/// operator opted in), only down to the low watermark, never the one being recorded; the
/// daemon keeps accepting, and when the store comes back only what is left is uploaded.
#[test]
fn full_disk_with_delete_oldest_deletes_only_the_oldest_closed_recording() {
    let Some((store, mut relay, d, _tmpfs)) = on_small_disk_with_uplink_down(
        "high_watermark_percent = 50\nlow_watermark_percent = 40\non_full = \"delete_oldest\"\n",
    ) else {
        return;
    };
    // ~18 MB each: the first fits under the 50 % (32 MB) high watermark, both do not, and
    // deleting the first alone gets below the 40 % (25.6 MB) low watermark.
    media::publish_and_wait(&d.rtmp_url("live", "older"), &media::noise_clip(2), true);
    let older = one_recording(&d, "finished", Duration::from_secs(30));
    let older_id = older["id"].as_str().unwrap().to_owned();
    let older_dir = d.recording_dir(&older);
    assert!(older_dir.exists());
    media::publish_and_wait(&d.rtmp_url("live", "newer"), &media::noise_clip(2), true);
    let newer = wait_for(
        "the older recording deleted, the newer finished",
        Duration::from_secs(60),
        || match d.recordings().as_slice() {
            [only] if only["stream"] == "newer" && only["state"] == "finished" => {
                Some(only.clone())
            }
            _ => None,
        },
    );
    assert!(
        !older_dir.exists(),
        "the deleted recording's files are gone"
    );
    assert_eq!(d.get(&format!("/api/v1/recordings/{older_id}")).status, 404);
    let view = d.json("/api/v1/storage");
    assert_eq!(view["deleted_unuploaded_recordings"], 1, "{view}");
    assert_eq!(view["accepting_new_recordings"], true, "{view}");
    assert!(
        view["last_action"]
            .as_str()
            .unwrap()
            .contains("delete_oldest"),
        "{view}"
    );
    assert!(
        d.log().contains("NOT uploaded") && d.log().contains(&older_id),
        "the deletion is logged as an error naming the recording"
    );
    // The newer recording is whole.
    assert_segments_on_disk(&d, &newer);
    // The store comes back: the newer recording uploads whole; nothing of the deleted one is
    // uploaded and no upload of it is left failing.
    relay.start_again();
    let newer = wait_uploaded(&d, newer["id"].as_str().unwrap(), Duration::from_secs(120));
    check_store_matches(&d, &store, &newer);
    assert_eq!(
        store.list_objects(&format!("{PREFIX}/live/older/")),
        vec![],
        "nothing of the deleted recording reaches the store"
    );
    let failed = d.json("/api/v1/uploads?state=failed");
    assert_eq!(
        failed["objects"].as_array().map_or(0, Vec::len),
        0,
        "{failed}"
    );
}

/// A store behind TLS with a private CA (`socat` with OpenSSL in front of s3s-fs): not
/// trusted without `ca_file`, and the API says why; trusted with it, and the backlog uploads.
#[test]
fn a_store_behind_a_private_ca_is_trusted_only_with_ca_file() {
    let store = S3sFs::start();
    let endpoint = store.client().endpoint;
    let tls = TlsFront::start(endpoint.trim_start_matches("http://").parse().unwrap());
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(&store, Some(&tls.url()), "", ""),
    );
    d.spawn();
    media::publish_and_wait(
        &d.rtmp_url("live", "tls"),
        &media::clip(Clip::AudioVideo, 4),
        true,
    );
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let view = wait_for(
        "the untrusted store reported",
        Duration::from_secs(60),
        || {
            let u = d.json("/api/v1/uploads");
            (u["store"]["state"] == "unavailable").then_some(u)
        },
    );
    let error = view["store"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate"), "{view}");
    assert!(store.list_objects(&format!("{PREFIX}/")).is_empty());

    d.stop();
    let ca = format!("ca_file = {:?}\n", tls.ca_file());
    d.write_config(
        "flow_continue_duration_s = 1",
        "",
        &sections(&store, Some(&tls.url()), "", &ca),
    );
    d.spawn();
    let rec = wait_uploaded(&d, rec["id"].as_str().unwrap(), Duration::from_secs(60));
    check_store_matches(&d, &store, &rec);
}

#[test]
fn garage_cluster_keeps_uploading_with_a_node_down_and_resumes_after_two() {
    let mut garage = GarageCluster::start();
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(&garage, None, "", ""),
    );
    d.spawn();
    garage.stop_node(2);
    media::publish_and_wait(
        &d.rtmp_url("live", "one-down"),
        &media::clip(Clip::AudioVideo, 8),
        true,
    );
    let first = one_recording(&d, "finished", Duration::from_secs(30));
    let first = wait_uploaded(&d, first["id"].as_str().unwrap(), Duration::from_secs(120));
    check_store_matches(&d, &garage, &first);

    garage.stop_node(1);
    media::publish_and_wait(
        &d.rtmp_url("live", "two-down"),
        &media::clip(Clip::AudioVideo, 8),
        true,
    );
    let second = wait_for("second recording finished", Duration::from_secs(30), || {
        d.recordings()
            .into_iter()
            .find(|r| r["stream"] == "two-down" && r["state"] == "finished")
    });
    let id = second["id"].as_str().unwrap().to_owned();
    wait_for(
        "store reported unavailable (no quorum)",
        Duration::from_secs(120),
        || (d.json("/api/v1/uploads")["store"]["state"] == "unavailable").then_some(()),
    );
    assert_ne!(d.recording(&id)["upload_state"], "uploaded");
    garage.start_node(1);
    garage.start_node(2);
    let second = wait_uploaded(&d, &id, Duration::from_secs(400));
    check_store_matches(&d, &garage, &second);
}

#[test]
fn an_object_that_keeps_failing_is_parked_then_retried_from_the_api() {
    let store = S3sFs::start();
    // The store is unreachable while recording, so nothing is uploaded yet.
    let mut relay = relay_to(&store);
    relay.stop();
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(&store, Some(&relay.url()), "max_attempts = 2", ""),
    );
    d.spawn();
    media::publish_and_wait(
        &d.rtmp_url("live", "parked"),
        &media::clip(Clip::AudioVideo, 6),
        true,
    );
    let rec = one_recording(&d, "finished", Duration::from_secs(30));
    let id = rec["id"].as_str().unwrap().to_owned();
    // Hide one segment file (a local fault of that object, not a gap in the index) and
    // let the store answer: that object fails twice and is parked; the others upload.
    d.stop();
    let dir = d.recording_dir(&rec);
    let (hidden, aside) = (dir.join("00000001.ts"), dir.join("aside.bin"));
    std::fs::rename(&hidden, &aside).unwrap();
    relay.start_again();
    d.spawn();
    let parked = wait_for(
        "the object parked as failed",
        Duration::from_secs(60),
        || {
            let u = d.json("/api/v1/uploads?state=failed");
            u["objects"].as_array()?.first().cloned()
        },
    );
    assert_eq!(parked["failures"], 2, "{parked}");
    assert!(
        parked["last_error"]
            .as_str()
            .unwrap()
            .contains("00000001.ts"),
        "{parked}"
    );
    assert_eq!(d.recording(&id)["upload_state"], "failed");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        d.json("/api/v1/uploads?state=failed")["objects"][0]["id"],
        parked["id"],
        "parked objects stay parked"
    );
    std::fs::rename(&aside, &hidden).unwrap();
    let path = format!("/api/v1/uploads/{}/retry", parked["id"].as_str().unwrap());
    let answer = support::http::post(&d.http, &path).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let rec = wait_uploaded(&d, &id, Duration::from_secs(60));
    check_store_matches(&d, &store, &rec);
}

#[test]
fn an_object_the_store_denies_is_parked_alone_and_the_queue_goes_on() {
    let store = S3sFs::start();
    let relay = relay_to(&store);
    // A policy that denies one stream's prefix: every request for it gets 403 AccessDenied.
    relay.deny(Some("/denied/"));
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &sections(
            &store,
            Some(&relay.url()),
            "max_attempts = 2\nconcurrency = 1",
            "",
        ),
    );
    d.spawn();
    // The denied recording is older, so it is first in the queue.
    let clip = media::clip(Clip::AudioVideo, 5);
    media::publish_and_wait(&d.rtmp_url("live", "denied"), &clip, false);
    media::publish_and_wait(&d.rtmp_url("live", "allowed"), &clip, false);
    let recs = d.wait_recordings(2, "finished", Duration::from_secs(30));
    let id_of = |stream: &str| {
        recs.iter()
            .find(|r| r["stream"] == stream)
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (denied, allowed) = (id_of("denied"), id_of("allowed"));
    // The other recording uploads whole while the denied one's objects are refused...
    let rec = wait_uploaded(&d, &allowed, Duration::from_secs(90));
    check_store_matches(&d, &store, &rec);
    // ... and those are parked after max_attempts, with the store's answer, the store ok.
    let parked = wait_for("the denied objects parked", Duration::from_secs(60), || {
        let u = d.json("/api/v1/uploads?state=failed");
        let objects = u["objects"].as_array()?.clone();
        (objects.len() >= 2).then_some(objects)
    });
    for o in &parked {
        assert_eq!(o["recording_id"], denied.as_str(), "{o}");
        assert_eq!(o["failures"], 2, "{o}");
        assert!(
            o["last_error"].as_str().unwrap().contains("AccessDenied"),
            "{o}"
        );
    }
    assert_eq!(d.json("/api/v1/uploads")["store"]["state"], "ok");
    assert!(relay.denied() >= 4, "{} requests denied", relay.denied());
    // The policy is lifted; retried from the API, they go up.
    relay.deny(None);
    for o in &parked {
        let path = format!("/api/v1/uploads/{}/retry", o["id"].as_str().unwrap());
        let answer = support::http::post(&d.http, &path).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let rec = wait_uploaded(&d, &denied, Duration::from_secs(60));
    check_store_matches(&d, &store, &rec);
}
