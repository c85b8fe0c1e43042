//! Access control against the real daemon: signed publish URLs (ffmpeg publishes with a
//! good one, every bad one is refused with nothing recorded), `edgerec sign-url`, API
//! bearer tokens and their scopes, and signed playback URLs that ffprobe plays end to end.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::callback;
use support::media::{self, Clip};
use support::rtmp_client::RawClient;
use support::{edgerec, http, wait_for, Daemon};

const AUTH: &str =
    "[publish_auth]\nkey = \"primary-secret\"\nbackup_key = \"old-secret\"\napps = [\"live\"]\n";
const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";
const PLAYBACK_KEY: &str = "playback-key-0123456789";

fn unix_now() -> u64 {
    callback::unix_now()
}

/// `txSecret` over the received `tx_time` string, computed here (MD5 of key + stream + T).
fn tx_secret(key: &str, stream: &str, tx_time: &str) -> String {
    callback::sign(key, &format!("{stream}{tx_time}"))
}

/// Publishes with the crate's test client; the `onStatus` codes the server sent.
fn publish_codes(d: &Daemon, app: &str, key: &str) -> Vec<String> {
    let mut c = RawClient::connect(&d.rtmp);
    c.publish(app, key, false).1
}

fn refused(d: &Daemon, app: &str, key: &str, why: &str) {
    let codes = publish_codes(d, app, key);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.Unauthorized"),
        "{why}: {codes:?}"
    );
    assert!(
        !codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{why}: {codes:?}"
    );
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

fn finished(d: &Daemon, stream: &str) -> Value {
    wait_for("recording finished", Duration::from_secs(60), || {
        d.recordings()
            .into_iter()
            .find(|r| r["stream"] == stream && r["state"] == "finished")
    })
}

#[test]
fn every_bad_publish_signature_is_refused_and_nothing_is_written() {
    let d = Daemon::start_with_sections(AUTH);
    let later = format!("{:X}", unix_now() + 3600);
    let good = |stream: &str| {
        format!(
            "{stream}?txSecret={}&txTime={later}",
            tx_secret("primary-secret", stream, &later)
        )
    };
    let past = format!("{:X}", unix_now() - 10);
    let lower = later.to_lowercase();
    assert_ne!(lower, later, "the expiry has hex letters");
    let cases = [
        (
            format!(
                "stage?txSecret={}&txTime={later}",
                tx_secret("guess", "stage", &later)
            ),
            "wrong secret",
        ),
        (
            format!(
                "stage?txSecret={}&txTime={past}",
                tx_secret("primary-secret", "stage", &past)
            ),
            "expired txTime",
        ),
        (
            format!(
                "stage?txSecret={}&txTime=tomorrow",
                tx_secret("primary-secret", "stage", "tomorrow")
            ),
            "txTime not hex",
        ),
        (
            // Signed over the upper-case string, sent in lower case: the hash is over what
            // is received, so this is another signature.
            format!(
                "stage?txSecret={}&txTime={lower}",
                tx_secret("primary-secret", "stage", &later)
            ),
            "hex case changed",
        ),
        ("stage".to_owned(), "no query at all"),
        (
            good("backstage").replace("backstage", "stage"),
            "a valid URL for another stream name",
        ),
    ];
    for (key, why) in &cases {
        refused(&d, "live", key, why);
    }
    assert!(d.recordings().is_empty(), "{:?}", d.recordings());
    assert_eq!(
        files_under(&d.data_dir().join("media")),
        0,
        "nothing on disk"
    );
    let log = d.log();
    for reason in [
        "txSecret does not match",
        "expired",
        "is not a hex unix time",
        "has no txSecret and txTime",
    ] {
        assert!(log.contains(reason), "log names {reason:?}:\n{log}");
    }
    assert!(!log.contains("primary-secret") && !log.contains("old-secret"));
    assert!(
        !log.contains(&tx_secret("primary-secret", "stage", &later)),
        "the log never shows a valid secret"
    );

    // The right signatures: the hex case it was signed over, and the backup key; an app
    // the keys do not cover needs none.
    let clip = media::clip(Clip::AudioVideo, 6);
    let lower_signed = format!(
        "stage?txSecret={}&txTime={lower}",
        tx_secret("primary-secret", "stage", &lower)
    );
    let backup = format!(
        "side?txSecret={}&txTime={later}",
        tx_secret("old-secret", "side", &later)
    );
    for (app, key) in [
        ("live", lower_signed.as_str()),
        ("live", &backup),
        ("open", "free"),
    ] {
        media::publish_and_wait(&format!("rtmp://{}/{app}/{key}", d.rtmp), &clip, false);
    }
    for stream in ["stage", "side", "free"] {
        let rec = finished(&d, stream);
        let probe = media::probe(&d.http_url(rec["playlist"].as_str().unwrap()));
        assert!(probe.video_frames >= 6 * 25 - 2, "{stream}: {probe:?}");
    }
}

#[test]
fn the_allowlist_refuses_a_well_signed_publish_from_elsewhere() {
    let d = Daemon::start_with_sections(
        "[publish_auth]\nkey = \"primary-secret\"\nallow_cidrs = [\"10.0.0.0/8\"]\n",
    );
    let later = format!("{:X}", unix_now() + 3600);
    let key = format!(
        "stage?txSecret={}&txTime={later}",
        tx_secret("primary-secret", "stage", &later)
    );
    refused(&d, "live", &key, "127.0.0.1 is outside 10.0.0.0/8");
    assert!(d.log().contains("not in the allowlist"), "{}", d.log());
    assert!(d.recordings().is_empty());
}

#[test]
fn only_a_signed_publisher_resumes_a_recording() {
    let d = Daemon::start_with_sections(AUTH);
    let later = format!("{:X}", unix_now() + 3600);
    let url = format!(
        "rtmp://{}/live/stage?txSecret={}&txTime={later}",
        d.rtmp,
        tx_secret("primary-secret", "stage", &later)
    );
    let clip = media::clip(Clip::AudioVideo, 6);
    media::publish_and_wait(&url, &clip, false);
    let rec = wait_for("resumable", Duration::from_secs(30), || {
        d.recordings()
            .into_iter()
            .find(|r| r["state"] == "resumable")
    });
    let before = d.recording(rec["id"].as_str().unwrap());
    refused(
        &d,
        "live",
        "stage",
        "an unsigned publisher inside the window",
    );
    refused(
        &d,
        "live",
        &format!("stage?txSecret={}&txTime={later}", "0".repeat(32)),
        "a forged secret inside the window",
    );
    let after = d.recording(rec["id"].as_str().unwrap());
    assert_eq!(after["sessions"], 1);
    assert_eq!(after["segments"], before["segments"]);
    assert_eq!(after["bytes"], before["bytes"]);
    // The owner's signed URL continues it.
    media::publish_and_wait(&url, &clip, false);
    let rec = finished(&d, "stage");
    assert_eq!(rec["id"], before["id"]);
    assert_eq!(rec["sessions"], 2);
    assert_eq!(d.recordings().len(), 1);
}

#[test]
fn sign_url_prints_a_url_an_encoder_publishes_with() {
    let d = Daemon::start_with_sections(AUTH);
    let sign = |args: &[&str]| {
        let out = edgerec()
            .arg("sign-url")
            .arg("-c")
            .arg(d.dir.path().join("edgerec.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, url, err) = sign(&[
        "--app",
        "live",
        "--stream",
        "stage",
        "--expires",
        "2h",
        "--host",
        &d.rtmp,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        url.starts_with(&format!("rtmp://{}/live/stage?txSecret=", d.rtmp)),
        "{url}"
    );
    assert!(err.contains("valid until"), "{err}");
    let tx_time = url.split("txTime=").nth(1).unwrap();
    let expires = u64::from_str_radix(tx_time, 16).unwrap();
    let now = unix_now();
    assert!(
        (now + 7190..=now + 7210).contains(&expires),
        "{expires} vs {now}"
    );
    let clip = media::clip(Clip::AudioVideo, 6);
    media::publish_and_wait(&url, &clip, false);
    let rec = finished(&d, "stage");
    let probe = media::probe(&d.http_url(rec["playlist"].as_str().unwrap()));
    assert!(probe.video_frames >= 6 * 25 - 2, "{probe:?}");

    let (code, _, err) = sign(&["--app", "open", "--stream", "x"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no [publish_auth] covering app \"open\""),
        "{err}"
    );
    let (code, _, err) = sign(&["--app", "live", "--stream", "x", "--expires", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--expires"), "{err}");
}

fn request(d: &Daemon, method: &str, path: &str, token: Option<&str>) -> http::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http::request(method, &d.http, path, &headers, b"").unwrap()
}

fn tokens_section() -> String {
    let reader_sha = {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(READER.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    format!(
        "tokens = [ {{ name = \"ops\", token = \"{ADMIN}\", scope = \"admin\" }}, \
                    {{ name = \"wall\", token_sha256 = \"{reader_sha}\", scope = \"read\" }} ]\n\
         playback_key = \"{PLAYBACK_KEY}\"\n"
    )
}

#[test]
fn api_tokens_have_scopes_and_healthz_stays_open() {
    let d = Daemon::start_with_http(&tokens_section(), "");
    let r = request(&d, "GET", "/api/v1/recordings", None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let r = request(&d, "GET", "/api/v1/recordings", Some("not-a-token-at-all"));
    assert_eq!(r.status, 401);
    assert_eq!(
        request(&d, "GET", "/api/v1/recordings", Some(READER)).status,
        200
    );
    assert_eq!(
        request(&d, "GET", "/api/v1/templates", Some(ADMIN)).status,
        200
    );
    // A read token may not change anything; an admin token passes the guard (and the
    // handler then answers for itself: there is no such rule).
    let r = request(&d, "DELETE", "/api/v1/rules/nope", Some(READER));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        request(&d, "DELETE", "/api/v1/rules/nope", Some(ADMIN)).status,
        404
    );
    let r = request(&d, "POST", "/api/v1/uploads/x/retry", Some(READER));
    assert_eq!(r.status, 403);
    // Health names nothing and stays open for probes.
    assert_eq!(request(&d, "GET", "/healthz", None).status, 200);
    // HLS without a token or a signature is refused too.
    assert_eq!(
        request(&d, "GET", "/hls/recordings/x/index.m3u8", None).status,
        401
    );
    let log = d.log();
    assert!(!log.contains(ADMIN) && !log.contains(READER), "{log}");
}

#[test]
fn a_signed_playlist_url_plays_and_a_tampered_or_expired_one_does_not() {
    let d = Daemon::start_with_http(&tokens_section(), "");
    let clip = media::clip(Clip::AudioVideo, 8);
    media::publish_and_wait(&d.rtmp_url("live", "hall"), &clip, false);
    let rec = wait_for("finished", Duration::from_secs(60), || {
        let r = request(&d, "GET", "/api/v1/recordings", Some(READER));
        let list: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        list.into_iter().find(|r| r["state"] == "finished")
    });
    let signed = rec["playlist"].as_str().unwrap().to_owned();
    assert!(
        signed.contains("?exp=") && signed.contains("&sig="),
        "{signed}"
    );

    // One URL plays the whole recording: the segments inherit the signature.
    let probe = media::probe(&d.http_url(&signed));
    assert!(probe.video_frames >= 8 * 25 - 2, "{probe:?}");
    let playlist = http::get(&d.http, &signed).unwrap();
    assert_eq!(playlist.status, 200);
    assert!(playlist.text().contains(".ts?exp="), "{}", playlist.text());

    // Tampered: the signature, the expiry, or the path of another recording.
    let (path, query) = signed.split_once('?').unwrap();
    let sig = query.split("sig=").nth(1).unwrap();
    let flipped = format!(
        "{path}?{}",
        query.replace(
            sig,
            &format!(
                "{}{}",
                if sig.starts_with('0') { "1" } else { "0" },
                &sig[1..]
            )
        )
    );
    let exp: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .unwrap()
        .parse()
        .unwrap();
    let longer = signed.replace(&format!("exp={exp}"), &format!("exp={}", exp + 86_400));
    for bad in [&flipped, &longer] {
        assert_eq!(http::get(&d.http, bad).unwrap().status, 403, "{bad}");
        assert!(
            media::try_probe(&d.http_url(bad)).is_none(),
            "ffprobe fails on {bad}"
        );
    }
    // Expired: signed correctly (here, with the crate's signer) but in the past.
    let expired = edgerec::auth::playback::sign_path(PLAYBACK_KEY, path, unix_now() - 5);
    let r = http::get(&d.http, &expired).unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text().contains("expired"), "{}", r.text());
    // A signature opens playback paths only, never the rest of the API.
    let api = format!("/api/v1/recordings?{query}");
    assert_eq!(http::get(&d.http, &api).unwrap().status, 401);

    // A live stream's signed playlist hands out segments signed for the recording's path.
    let mut publisher = media::publish(&d.rtmp_url("live", "stage"), &clip, true);
    let live = wait_for("live with segments", Duration::from_secs(30), || {
        let r = request(&d, "GET", "/api/v1/streams", Some(READER));
        let list: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        list.into_iter()
            .find(|s| s["stream"] == "stage" && s["segments_written"].as_u64() >= Some(1))
    });
    let live_url = live["playlist"].as_str().unwrap();
    assert!(
        live_url.starts_with("/hls/live/live/stage/index.m3u8?exp="),
        "{live_url}"
    );
    let text = http::get(&d.http, live_url).unwrap().text();
    let segment = text
        .lines()
        .find(|l| l.starts_with("/hls/recordings/"))
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();
    assert!(segment.contains(".ts?exp="), "{segment}");
    let r = http::get(&d.http, &segment).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0], 0x47, "an MPEG-TS segment");
    let bare = segment.split('?').next().unwrap();
    assert_eq!(http::get(&d.http, bare).unwrap().status, 401);
    let _ = publisher.kill();
    let _ = publisher.wait();
}

#[test]
fn the_config_refuses_an_open_api_beyond_loopback_and_plain_http_callbacks() {
    let check = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgerec.toml");
        std::fs::write(&path, text).unwrap();
        // As a default umask leaves it (set here: the runner's umask may differ).
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let out = edgerec().arg("check-config").arg(&path).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check("[http]\nlisten = \"0.0.0.0:8080\"\n");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("http.listen") && text.contains("no http.tokens"),
        "{text}"
    );
    let (code, text) = check("[http]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: http.allow_unauthenticated"),
        "{text}"
    );
    // The embedded default's RTMP listens on every interface with auth off: a warning.
    let (code, text) = check("");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning: publish_auth"), "{text}");
    // Keys in a file every user can read: a warning; readable by its owner only: none.
    let (code, text) = check(AUTH);
    assert_eq!(code, Some(0));
    assert!(text.contains("readable by every user (mode 644)"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("edgerec.toml");
    std::fs::write(&private, AUTH).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let out = edgerec()
        .arg("check-config")
        .arg(&private)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(!text.contains("warning"), "{text}");
    let (code, text) = check("[callback]\nurl = \"http://10.0.0.9/cb\"\nkey = \"k\"\n");
    assert_eq!(code, Some(2));
    assert!(
        text.contains("callback.url") && text.contains("plain http"),
        "{text}"
    );
    let (code, text) =
        check("[callback]\nurl = \"http://10.0.0.9/cb\"\nkey = \"k\"\nallow_insecure = true\n");
    assert_eq!(code, Some(0), "{text}");

    // `run` refuses to start the same way, before binding anything.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgerec.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"0.0.0.0:0\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let out = edgerec().args(["run", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.listen"), "{err}");
}
