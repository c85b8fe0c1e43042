//! The OpenAPI description against the running daemon: `schemathesis` (PyPI, installed by
//! `scripts/install-test-deps.sh`) reads `/api/v1/openapi.json` from it and calls every
//! operation with generated (and deliberately malformed) inputs; no response may be a
//! 5xx, have a status the description does not list, or a body or content type that does
//! not match it. A second run calls the operations that take an id with the ids of real
//! recordings, segments and files (a recording made here, uploaded to a real store with
//! its callback delivered, and a live publish), so their full views and the media routes
//! (with fuzzed `Range` headers) are checked on real data, not only their 404s.
//!
//! Left out: `POST /api/v1/sources`, whose generated URLs would make the daemon dial
//! arbitrary addresses (tests/rtsp_pull.rs covers it with a real camera).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::callback::CallbackReceiver;
use support::media::{self, Clip};
use support::s3::{S3sFs, Store};
use support::{http, wait_for, Daemon};

const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The `st` command: `$EDGEREC_SCHEMATHESIS`, else the venv install-test-deps.sh makes.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGEREC_SCHEMATHESIS") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".cache"));
    let st = cache
        .join("edgerec")
        .join(format!("schemathesis-{SCHEMATHESIS_VERSION}"))
        .join("bin/st");
    assert!(
        st.is_file(),
        "{} missing: scripts/install-test-deps.sh installs it",
        st.display()
    );
    st
}

/// One request schemathesis made: its URL (path and query) and the response's status.
struct Exchange {
    url: String,
    status: u16,
}

/// Runs `st run` against the daemon; panics with its report unless every check passed.
/// Returns the requests it made (from its HAR report).
/// Runs schemathesis; at least `min_requests` must have been made.
fn run_schemathesis(
    d: &Daemon,
    config: Option<&str>,
    extra: &[&str],
    min_requests: usize,
) -> Vec<Exchange> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(schemathesis());
    cmd.current_dir(dir.path()).env("NO_COLOR", "1");
    if let Some(config) = config {
        let file = dir.path().join("schemathesis.toml");
        std::fs::write(&file, config).unwrap();
        cmd.arg("--config-file").arg(&file);
    }
    let out = cmd
        .arg("run")
        .arg(d.http_url("/api/v1/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--generation-deterministic",
            "--exclude-operation-id",
            "create_source",
            "--report",
            "har",
            "--report-har-path",
            "requests.har",
        ])
        .args(extra)
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    let har: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("requests.har")).unwrap()).unwrap();
    let exchanges: Vec<Exchange> = har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Exchange {
            url: e["request"]["url"].as_str().unwrap().to_owned(),
            status: e["response"]["status"].as_u64().unwrap() as u16,
        })
        .collect();
    assert!(
        exchanges.len() >= min_requests,
        "{} requests\n{report}",
        exchanges.len()
    );
    exchanges
}

/// Whether a request to a URL containing `part` was answered with `status`.
fn answered(exchanges: &[Exchange], part: &str, status: u16) -> bool {
    exchanges
        .iter()
        .any(|e| e.url.contains(part) && e.status == status)
}

#[test]
fn every_response_matches_the_openapi_description() {
    let store = S3sFs::start();
    let receiver = CallbackReceiver::start("k3y");
    let sections = format!(
        "[upload]\nenabled = true\n{}\n\
         [callback]\nurl = {:?}\nkey = \"k3y\"\nallow_insecure = true\n\
         [[template]]\nname = \"vod\"\nhls = {{ enabled = true, flow_continue_duration_s = 1 }}\n\
         mp4 = {{ file_name = \"{{StreamID}}\" }}\n\
         [[rule]]\napp = \"live\"\ntemplate = \"vod\"\n",
        store.toml_section("openapi"),
        receiver.url()
    );
    let d = Daemon::start_with_sections(&sections);

    // The description served is the checked file, and only to a client that takes gzip.
    let plain = http::get(&d.http, "/api/v1/openapi.json").unwrap();
    assert_eq!(plain.status, 406, "{}", plain.text());
    assert!(
        plain.text().contains("Accept-Encoding: gzip"),
        "{}",
        plain.text()
    );
    let served = Command::new("curl")
        .args(["-sf", "--compressed"])
        .arg(d.http_url("/api/v1/openapi.json"))
        .output()
        .expect("curl");
    assert!(served.status.success());
    let checked = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json"));
    assert_eq!(
        served.stdout,
        checked.unwrap(),
        "served != src/api/openapi.json"
    );

    // Something real behind every id: a finished, uploaded recording with its MP4 and a
    // delivered callback, and a live publish.
    let clip = media::clip(Clip::AudioVideo, 6);
    media::publish_and_wait(&d.rtmp_url("live", "stage"), &clip, false);
    let recs = wait_for("both recordings uploaded", Duration::from_secs(60), || {
        let recs = d.recordings();
        (recs.len() == 2 && recs.iter().all(|r| r["upload_state"] == "uploaded")).then_some(recs)
    });
    wait_for("callbacks delivered", Duration::from_secs(30), || {
        (receiver.deliveries().len() >= 2).then_some(())
    });
    let hls = recs.iter().find(|r| r["format"] == "hls").unwrap();
    let mp4 = recs.iter().find(|r| r["format"] == "mp4").unwrap();
    let long = media::clip(Clip::AudioVideo, 120);
    let mut live = media::publish(&d.rtmp_url("live", "lectern"), &long, true);
    wait_for("the live stream", Duration::from_secs(20), || {
        let streams = d.json("/api/v1/streams");
        (streams.as_array()?.len() == 1 && streams[0]["segments_written"].as_u64()? > 0)
            .then_some(())
    });

    // Every operation, generated inputs (ids mostly unknown: their 404s and 400s). Not
    // the delete: schemathesis feeds it the ids the listing returns; it runs last.
    let all = run_schemathesis(
        &d,
        None,
        &[
            "--max-examples",
            "25",
            "--exclude-operation-id",
            "delete_recording",
        ],
        100,
    );
    for (part, status) in [("/api/v1/recordings/", 404), ("/api/v1/templates", 201)] {
        assert!(answered(&all, part, status), "no {status} from {part}");
    }

    // The operations that take an id, on the real ones.
    let hls_id = hls["id"].as_str().unwrap();
    let config = format!(
        "[[operations]]\ninclude-operation-id = \"get_recording\"\nparameters = {{ id = {hls_id:?} }}\n\
         [[operations]]\ninclude-operation-id = \"recording_playlist\"\nparameters = {{ id = {hls_id:?} }}\n\
         [[operations]]\ninclude-operation-id = \"recording_segment\"\nparameters = {{ id = {hls_id:?}, file = \"00000001.ts\" }}\n\
         [[operations]]\ninclude-operation-id = \"download_file\"\nparameters = {{ id = {:?} }}\n\
         [[operations]]\ninclude-operation-id = \"live_playlist\"\nparameters = {{ app = \"live\", stream = \"lectern\" }}\n\
         [[operations]]\ninclude-operation-id = \"retry_callback\"\nparameters = {{ id = {hls_id:?} }}\n",
        mp4["id"].as_str().unwrap()
    );
    let mut ids = vec!["--max-examples", "15"];
    for op in [
        "get_recording",
        "recording_playlist",
        "recording_segment",
        "download_file",
        "live_playlist",
        "retry_callback",
    ] {
        ids.extend(["--include-operation-id", op]);
    }
    let real = run_schemathesis(&d, Some(&config), &ids, 100);
    let mp4_id = mp4["id"].as_str().unwrap();
    for (part, status) in [
        (format!("/api/v1/recordings/{hls_id}"), 200),
        (format!("/hls/recordings/{hls_id}/index.m3u8"), 200),
        (format!("/hls/recordings/{hls_id}/00000001.ts"), 206),
        (format!("/api/v1/recordings/{mp4_id}/file"), 200),
        ("/hls/live/live/lectern/index.m3u8".to_owned(), 200),
        (format!("/api/v1/callbacks/{hls_id}/retry"), 200),
    ] {
        assert!(answered(&real, &part, status), "no {status} from {part}");
    }
    let _ = live.kill();
    let _ = live.wait();

    // The recordings made it through unharmed.
    let after = d.json(&format!("/api/v1/recordings/{hls_id}"));
    assert_eq!(after["state"], "finished");
    assert!(
        after["segment_list"].as_array().unwrap().len() >= 2,
        "{after}"
    );

    // The delete, on the real MP4: its 200 and then its 404s as described.
    let config = format!(
        "[[operations]]\ninclude-operation-id = \"delete_recording\"\nparameters = {{ id = {mp4_id:?} }}\n"
    );
    let deleted = run_schemathesis(
        &d,
        Some(&config),
        &[
            "--max-examples",
            "5",
            "--include-operation-id",
            "delete_recording",
        ],
        2,
    );
    let part = format!("/api/v1/recordings/{mp4_id}");
    assert!(answered(&deleted, &part, 200), "no 200 from DELETE {part}");
    assert!(
        answered(&deleted, &part, 404),
        "no 404 from DELETE {part} again"
    );
    assert_eq!(d.get(&part).status, 404);
}
