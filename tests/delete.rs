//! `DELETE /api/v1/recordings/{id}` (issue 19) with real peers: ffmpeg publishes, the
//! daemon uploads to a real s3s-fs store, and deletes remove the recording here and there:
//! one of two recordings over a capture (the other still decodes), the last one (the
//! segments go), a live one (409, then `?stop=true`; a camera's, which the camera does not
//! resume when it reconnects), with the store down and the daemon
//! SIGKILLed before it is back (the restart finishes), and one whose upload is in flight
//! (no object or multipart upload is left behind). And store retention: a format's
//! `storage_time_s` removes the store's copy when it runs out, through a restart, and
//! keeps the box's.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::camera::Camera;
use support::http;
use support::media::{self, Clip};
use support::s3::{S3sFs, Store};
use support::{wait_for, Daemon};

fn sections(store: &dyn Store, upload: &str, formats: &str) -> String {
    let s3 = store.toml_section("venue");
    let mut t = String::from(
        "[[template]]\nname = \"vod\"\nhls = { enabled = true, flow_continue_duration_s = 1 }\n",
    );
    for f in formats.split(',').filter(|f| !f.is_empty()) {
        t.push_str(&format!("{f} = {{ file_name = \"{{StreamID}}-{f}\" }}\n"));
    }
    format!("[upload]\nenabled = true\n{upload}\n{s3}\n{t}[[rule]]\napp = \"live\"\ntemplate = \"vod\"\n")
}

fn delete(d: &Daemon, path: &str) -> http::Response {
    http::request("DELETE", &d.http, path, &[], b"").expect("DELETE")
}

fn json(r: &http::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn wait_all_uploaded(d: &Daemon, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} recordings uploaded"),
        Duration::from_secs(120),
        || {
            let recs = d.recordings();
            (recs.len() == n && recs.iter().all(|r| r["upload_state"] == "uploaded"))
                .then_some(recs)
        },
    )
}

/// Publishes `seconds` of audio and video to `live/stream` and waits for its HLS and MP4
/// recordings to be in the store.
fn publish_hls_and_mp4(d: &Daemon, stream: &str, seconds: u32) -> (Value, Value) {
    media::publish_and_wait(
        &d.rtmp_url("live", stream),
        &media::clip(Clip::AudioVideo, seconds),
        false,
    );
    let recs = wait_all_uploaded(d, 2);
    let of = |format: &str| recs.iter().find(|r| r["format"] == format).unwrap().clone();
    (of("hls"), of("mp4"))
}

/// Files under the s3s-fs root that are not objects: multipart uploads in progress.
fn multipart_leftovers(store: &S3sFs) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else if name.contains("upload") {
                out.push(e.path().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&store.root(), &mut out);
    out
}

fn wait_store_empty(d: &Daemon, store: &S3sFs, limit: Duration) {
    wait_for("the store emptied", limit, || {
        (store.objects().is_empty() && d.json("/api/v1/deletes").as_array()?.is_empty())
            .then_some(())
    });
}

#[test]
fn deleting_one_of_two_recordings_keeps_the_other_then_the_last_frees_everything() {
    let store = S3sFs::start();
    let d = Daemon::start_with_sections(&sections(&store, "", "mp4"));
    let (hls, mp4) = publish_hls_and_mp4(&d, "gala", 6);
    let (hls_id, mp4_id) = (hls["id"].as_str().unwrap(), mp4["id"].as_str().unwrap());
    let mp4_key = {
        let url = mp4["store_url"].as_str().unwrap();
        url[url.find("/venue/").unwrap() + 1..].to_owned()
    };
    let before = store.objects();
    assert!(
        before.len() > 2,
        "segments, playlist and the MP4 are in the store: {before:?}"
    );
    let capture_dir = d.recording_dir(&hls);
    assert!(capture_dir.is_dir());

    // The HLS recording: its objects go, the capture's segments stay for the MP4.
    let r = delete(&d, &format!("/api/v1/recordings/{hls_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["local_files_removed"], false);
    assert!(json(&r)["store_objects_pending"].as_u64().unwrap() >= 2);
    wait_for(
        "only the MP4 left in the store",
        Duration::from_secs(30),
        || {
            let left = store.objects();
            (left.len() == 1 && left[0].0 == mp4_key).then_some(())
        },
    );
    assert_eq!(d.get(&format!("/api/v1/recordings/{hls_id}")).status, 404);
    assert_eq!(
        d.get(&format!("/hls/recordings/{hls_id}/index.m3u8"))
            .status,
        404
    );
    assert_eq!(
        delete(&d, &format!("/api/v1/recordings/{hls_id}")).status,
        404,
        "twice"
    );
    let listed = d.recordings();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], mp4_id);
    assert!(capture_dir.is_dir(), "segments kept for the MP4");
    // The MP4 still plays: from this box and from the store.
    let local = d.http_url(mp4["download"].as_str().unwrap());
    assert!(media::decode_errors(&local).trim().is_empty());
    let probe = media::probe(&local);
    assert!((probe.duration_s - 6.0).abs() < 0.6, "{probe:?}");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy.mp4");
    std::fs::write(&copy, store.object(&mp4_key).unwrap()).unwrap();
    assert!(media::decode_errors(copy.to_str().unwrap())
        .trim()
        .is_empty());

    // The last recording: the segments go from flash, its object from the store, and
    // nothing of the capture is left in the index.
    let r = delete(&d, &format!("/api/v1/recordings/{mp4_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["local_files_removed"], true);
    assert!(!capture_dir.exists());
    wait_store_empty(&d, &store, Duration::from_secs(30));
    assert!(d.recordings().is_empty());
    assert_eq!(d.get(&format!("/api/v1/recordings/{mp4_id}")).status, 404);
    assert_eq!(
        delete(&d, &format!("/api/v1/recordings/{mp4_id}")).status,
        404
    );
    assert_eq!(delete(&d, "/api/v1/recordings/no-such-thing").status, 404);
}

#[test]
fn a_live_recording_is_refused_unless_stopped_first() {
    let store = S3sFs::start();
    let d = Daemon::start_with_sections(&sections(&store, "", ""));
    let mut ffmpeg = media::publish(
        &d.rtmp_url("live", "stage"),
        &media::clip(Clip::AudioVideo, 60),
        true,
    );
    let rec = wait_for("a segment recorded", Duration::from_secs(30), || {
        d.recordings()
            .into_iter()
            .find(|r| r["segments"].as_u64() >= Some(1))
    });
    let id = rec["id"].as_str().unwrap();
    let r = delete(&d, &format!("/api/v1/recordings/{id}"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("stop=true"), "{}", r.text());
    let r = delete(&d, &format!("/api/v1/recordings/{id}?stop=true"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["local_files_removed"], true);
    // The publisher was disconnected, and nothing is left here or in the store.
    let status = wait_for("ffmpeg to be disconnected", Duration::from_secs(20), || {
        ffmpeg.try_wait().unwrap()
    });
    let _ = status;
    assert!(!d.recording_dir(&rec).exists());
    assert!(d.recordings().is_empty(), "{:?}", d.recordings());
    wait_store_empty(&d, &store, Duration::from_secs(30));
}

#[test]
fn a_live_camera_recording_stopped_and_deleted_is_not_resumed_when_the_camera_reconnects() {
    let camera = Camera::start("h264-aac");
    // A long resume window: a stop that left the recording resumable would let the
    // camera's reconnect (1 s later) continue the recording being deleted.
    let d = Daemon::start_with_sections(&format!(
        "[[template]]\nname = \"long\"\nhls = {{ enabled = true, flow_continue_duration_s = 600 }}\n\
         [[rule]]\napp = \"cam\"\ntemplate = \"long\"\n\
         [[source]]\napp = \"cam\"\nstream = \"door\"\nurl = {:?}\n",
        camera.url("")
    ));
    let recorded = |d: &Daemon| {
        d.recordings()
            .into_iter()
            .find(|r| r["segments"].as_u64() >= Some(1))
    };
    let first = wait_for("the camera recorded", Duration::from_secs(30), || {
        recorded(&d)
    });
    let id = first["id"].as_str().unwrap().to_owned();
    let r = delete(&d, &format!("/api/v1/recordings/{id}?stop=true"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["local_files_removed"], true);
    assert!(!d.recording_dir(&first).exists());
    let log = d.log();
    let ended = log
        .lines()
        .find(|l| l.contains("publish ended") && l.contains(id.as_str()))
        .unwrap_or_else(|| panic!("no end of {id} in the log:\n{log}"));
    assert!(
        ended.contains("finished") && !ended.contains("resumable"),
        "closed for good, not left for the camera to resume: {ended}"
    );
    let next = wait_for(
        "the camera reconnected and recording anew",
        Duration::from_secs(30),
        || recorded(&d),
    );
    assert_ne!(next["id"], first["id"]);
    assert_eq!(
        next["sessions"], 1,
        "a new recording, not a resumed one: {next}"
    );
    assert_eq!(d.get(&format!("/api/v1/recordings/{id}")).status, 404);
}

#[test]
fn a_delete_made_while_the_store_is_down_finishes_after_a_sigkill_and_restart() {
    let mut store = S3sFs::start();
    let mut d = Daemon::start_with_sections(&sections(&store, "", ""));
    media::publish_and_wait(
        &d.rtmp_url("live", "late"),
        &media::clip(Clip::AudioVideo, 4),
        false,
    );
    let rec = wait_all_uploaded(&d, 1).remove(0);
    assert!(!store.objects().is_empty());
    store.kill();
    let r = delete(
        &d,
        &format!("/api/v1/recordings/{}", rec["id"].as_str().unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Gone here at once; the store side waits, and says why.
    assert!(d.recordings().is_empty());
    let pending = wait_for(
        "a failed store delete attempt",
        Duration::from_secs(30),
        || {
            let deletes = d.json("/api/v1/deletes");
            let row = deletes.as_array()?.first()?.clone();
            (row["attempts"].as_u64()? >= 1).then_some(row)
        },
    );
    assert_eq!(pending["id"], rec["id"]);
    assert!(pending["objects_left"].as_u64().unwrap() >= 2, "{pending}");
    assert!(
        pending["last_error"].as_str().unwrap().contains("store"),
        "{pending}"
    );
    d.kill9();
    store.restart();
    d.spawn();
    wait_store_empty(&d, &store, Duration::from_secs(60));
    assert!(d.recordings().is_empty());
}

#[test]
fn deleting_while_an_upload_is_in_flight_leaves_no_orphan() {
    let store = S3sFs::start();
    let d = Daemon::start_with_sections(&sections(
        &store,
        "part_size_mb = 5\nconcurrency = 1\nbandwidth_limit_kbps = 8000",
        "",
    ));
    media::publish_and_wait(&d.rtmp_url("live", "big"), &media::noise_clip(6), true);
    let object = d.wait_mid_multipart(1);
    let rec = wait_for("the recording closed", Duration::from_secs(30), || {
        d.recordings()
            .into_iter()
            .find(|r| r["state"] == "finished")
    });
    assert!(object["id"]
        .as_str()
        .unwrap()
        .starts_with(rec["id"].as_str().unwrap()));
    let r = delete(
        &d,
        &format!("/api/v1/recordings/{}", rec["id"].as_str().unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_store_empty(&d, &store, Duration::from_secs(60));
    // The upload stopped: nothing more arrives, and no multipart upload is left open.
    std::thread::sleep(Duration::from_secs(3));
    assert!(store.objects().is_empty(), "{:?}", store.objects());
    assert!(
        multipart_leftovers(&store).is_empty(),
        "{:?}",
        multipart_leftovers(&store)
    );
    let uploads = d.json("/api/v1/uploads");
    assert!(
        uploads["objects"].as_array().unwrap().is_empty(),
        "{uploads}"
    );
}

#[test]
fn storage_time_removes_the_stores_copy_and_keeps_the_boxs() {
    // The HLS recording is kept 5 s in the store, the MP4 forever (storage_time_s = 0).
    let store = S3sFs::start();
    let s3 = store.toml_section("venue");
    let mut d = Daemon::start_with_sections(&format!(
        "[upload]\nenabled = true\n{s3}\n[[template]]\nname = \"vod\"\n\
         hls = {{ enabled = true, flow_continue_duration_s = 1, storage_time_s = 5 }}\n\
         mp4 = {{ file_name = \"{{StreamID}}-mp4\", storage_time_s = 0 }}\n\
         [[rule]]\napp = \"live\"\ntemplate = \"vod\"\n"
    ));
    let (hls, mp4) = publish_hls_and_mp4(&d, "brief", 4);
    let hls_id = hls["id"].as_str().unwrap().to_owned();
    assert_eq!(
        support::unix_ms(&hls["store_expires_at"]) - support::unix_ms(&hls["uploaded_at"]),
        5_000,
        "{hls}"
    );
    assert!(mp4["store_expires_at"].is_null(), "kept forever: {mp4}");
    let mp4_key = {
        let url = mp4["store_url"].as_str().unwrap();
        url[url.find("/venue/").unwrap() + 1..].to_owned()
    };
    let hls_objects: Vec<String> = store
        .objects()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| *key != mp4_key)
        .collect();
    assert!(
        hls_objects.iter().any(|k| k.ends_with("index.m3u8"))
            && hls_objects.iter().any(|k| k.ends_with(".ts")),
        "{hls_objects:?}"
    );

    // The expiry is in the index: a SIGKILL and restart keeps it.
    d.kill9();
    d.spawn();
    let expired = wait_for(
        "the HLS recording's storage time over",
        Duration::from_secs(60),
        || {
            let rec = d.recording(&hls_id);
            (!rec["store_expired_at"].is_null()).then_some(rec)
        },
    );
    assert!(
        support::unix_ms(&expired["store_expired_at"])
            >= support::unix_ms(&expired["store_expires_at"]),
        "{expired}"
    );
    assert!(expired["store_url"].is_null(), "{expired}");
    assert_eq!(expired["upload_state"], "uploaded");
    wait_for(
        "only the MP4 left in the store",
        Duration::from_secs(30),
        || {
            let left = store.objects();
            (left.len() == 1
                && left[0].0 == mp4_key
                && d.json("/api/v1/deletes").as_array()?.is_empty())
            .then_some(())
        },
    );
    // The box's copy is untouched: the recording is listed and plays from here.
    let playlist = d.http_url(&format!("/hls/recordings/{hls_id}/index.m3u8"));
    assert!(media::decode_errors(&playlist).trim().is_empty());
    let probe = media::probe(&playlist);
    assert!((probe.duration_s - 4.0).abs() < 0.6, "{probe:?}");
    assert_eq!(d.recordings().len(), 2);
    assert!(store.object(&mp4_key).is_some());
}
