//! MP4/FLV/AAC files uploaded to a real S3-compatible store (s3s-fs), one object and one
//! signed callback per file, and a multipart upload of a derived file resumed after a
//! SIGKILL without resending a part the store confirmed (its bytes are regenerated
//! identically from the segments).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::callback::CallbackReceiver;
use support::media::{self, Clip};
use support::relay::Relay;
use support::s3::{S3sFs, Store};
use support::{wait_for, Daemon};

const PREFIX: &str = "venue-b";

fn upload_sections(store: &dyn Store, endpoint: Option<&str>, upload: &str, rest: &str) -> String {
    let mut s3 = store.toml_section(PREFIX);
    if let Some(e) = endpoint {
        s3 = s3.replace(&format!("{:?}", store.client().endpoint), &format!("{e:?}"));
    }
    format!("[upload]\nenabled = true\n{upload}\n{s3}\n{rest}\n")
}

fn template(formats: &[&str], hls: bool) -> String {
    let mut t = String::from("[[template]]\nname = \"vod\"\nstore_prefix = \"biz-1\"\n");
    t.push_str(&format!(
        "hls = {{ enabled = {hls}, flow_continue_duration_s = 1 }}\n"
    ));
    for f in formats {
        t.push_str(&format!(
            "{f} = {{ file_name = \"{{StreamID}}-{{RecordId}}\" }}\n"
        ));
    }
    t + "[[rule]]\napp = \"live\"\ntemplate = \"vod\"\n"
}

/// Waits until every recording of the daemon is uploaded (or skipped), `n` of them.
fn wait_all_uploaded(d: &Daemon, n: usize, limit: Duration) -> Vec<Value> {
    wait_for(&format!("{n} recordings uploaded"), limit, || {
        let recs = d.recordings();
        (recs.len() == n && recs.iter().all(|r| r["upload_state"] == "uploaded")).then_some(recs)
    })
}

/// The object key of a recording, from its store URL.
fn key_of(rec: &Value) -> String {
    let url = rec["store_url"].as_str().expect("store_url");
    url[url.find(&format!("/{PREFIX}/")).unwrap() + 1..].to_owned()
}

#[test]
fn files_are_uploaded_as_objects_with_one_signed_callback_each() {
    let store = S3sFs::start();
    let receiver = CallbackReceiver::start("abc123");
    let callback = format!(
        "[callback]\nurl = {:?}\nkey = \"abc123\"\nallow_insecure = true\nretry_interval_s = 5\nmax_attempts = 1000\n",
        receiver.url()
    );
    let sections = upload_sections(
        &store,
        None,
        "",
        &(template(&["mp4", "flv", "aac"], true) + &callback),
    );
    let mut d = Daemon::configure_with("", "", &sections);
    d.spawn();
    let clip = media::clip(Clip::AudioVideo, 12);
    media::publish_and_wait(
        &format!("{}?record_id=final", d.rtmp_url("live", "cam9")),
        &clip,
        false,
    );
    let recs = wait_all_uploaded(&d, 4, Duration::from_secs(120));
    for rec in recs.iter().filter(|r| r["format"] != "hls") {
        let key = key_of(rec);
        let ext = match rec["format"].as_str().unwrap() {
            "aac" => "m4a",
            other => other,
        };
        assert_eq!(
            key,
            format!("{PREFIX}/biz-1/live/cam9/cam9-final.{ext}"),
            "template prefix and name"
        );
        let local = d.get(rec["download"].as_str().unwrap()).body;
        let remote = store.get_object(&key).expect("object in the store");
        assert!(
            local == remote,
            "{key}: store copy differs ({} vs {} bytes)",
            remote.len(),
            local.len()
        );
    }
    let hls = recs.iter().find(|r| r["format"] == "hls").unwrap();
    assert!(
        key_of(hls).starts_with(&format!("{PREFIX}/biz-1/live/cam9/")),
        "{}",
        key_of(hls)
    );

    let deliveries = wait_for("4 callbacks", Duration::from_secs(60), || {
        let d = receiver.deliveries();
        (d.len() >= 4).then_some(d)
    });
    let formats: BTreeSet<String> = deliveries
        .iter()
        .map(|x| x.body["file_format"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        formats,
        ["aac", "flv", "hls", "mp4"].map(String::from).into()
    );
    let ids: BTreeSet<String> = deliveries
        .iter()
        .map(|x| x.body["file_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "one callback per recording, each with its own id"
    );
    for x in &deliveries {
        assert!(x.sign_ok, "{:?}", x.body);
        assert_eq!(x.idempotency_key.as_deref(), x.body["file_id"].as_str());
        assert_eq!(x.body["task_id"], "");
        let ext: Value = serde_json::from_str(x.body["callback_ext"].as_str().unwrap()).unwrap();
        assert_eq!(ext["template"], "vod");
        assert_eq!(ext["record_id"], "final");
        let rec = recs.iter().find(|r| r["id"] == x.body["file_id"]).unwrap();
        assert_eq!(x.body["video_url"], rec["store_url"]);
        if rec["format"] != "hls" {
            let size = store.get_object(&key_of(rec)).unwrap().len() as u64;
            assert_eq!(x.body["file_size"].as_u64(), Some(size));
        }
    }
}

#[test]
fn sigkill_while_an_mp4_uploads_resumes_without_resending_confirmed_parts() {
    let store = S3sFs::start();
    let endpoint = store.client().endpoint;
    let relay = Relay::start(endpoint.trim_start_matches("http://").parse().unwrap());
    let multipart = "part_size_mb = 5\nconcurrency = 1\nbandwidth_limit_kbps = 40000";
    let sections = upload_sections(
        &store,
        Some(&relay.url()),
        multipart,
        &template(&["mp4"], false),
    );
    let mut d = Daemon::configure_with("", "", &sections);
    d.spawn();
    media::publish_and_wait(&d.rtmp_url("live", "big"), &media::noise_clip(6), true);
    d.wait_mid_multipart(2);
    d.kill9();
    d.spawn();
    let recs = wait_all_uploaded(&d, 1, Duration::from_secs(300));
    assert_eq!(recs[0]["format"], "mp4");
    let key = key_of(&recs[0]);
    let local = d.get(recs[0]["download"].as_str().unwrap()).body;
    let remote = store.get_object(&key).expect("object");
    assert!(
        local == remote,
        "regenerated bytes match the resumed object ({} vs {})",
        local.len(),
        remote.len()
    );
    let resent = relay.parts_sent_more_than_once();
    assert!(
        resent.len() <= 1 && resent.iter().all(|(_, _, n)| *n == 2),
        "only the part in flight at the kill may be sent twice: {resent:?}"
    );
    assert!(
        relay
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.query_param("uploadId").is_some()),
        "the resume asked the store (ListParts) first"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mp4");
    std::fs::write(&path, &remote).unwrap();
    assert_eq!(media::decode_errors(path.to_str().unwrap()), "");
}
