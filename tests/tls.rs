//! TLS end to end with real peers: ffmpeg publishing over RTMPS and trusting a throwaway
//! CA made with the `openssl` CLI, curl reaching the API over HTTPS, `openssl s_client`
//! reading which certificate each listener serves before and after SIGHUP, the wrong
//! protocol on each port, and certificates the daemon must refuse (garbage, expired) at
//! start and at reload.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::media::{self, Clip};
use support::tls::{
    fingerprint_of, fingerprint_served, make_ca, make_certificates, sign_server_certificate,
};
use support::{wait_for, Daemon};

const GOP_FRAMES: u64 = 25;

/// `[rtmps]` on an ephemeral loopback port with `cert`/`key` (None: self-signed).
fn rtmps_section(files: Option<(&Path, &Path)>) -> String {
    let mut s = String::from("[rtmps]\nlisten = \"127.0.0.1:0\"\n");
    if let Some((cert, key)) = files {
        s.push_str(&format!("cert_file = {cert:?}\nkey_file = {key:?}\n"));
    }
    s
}

/// A daemon with RTMPS (and a 1 s resume window, so recordings finish soon).
fn rtmps_daemon(files: Option<(&Path, &Path)>) -> Daemon {
    let mut d = Daemon::configure_with("flow_continue_duration_s = 1", "", &rtmps_section(files));
    d.spawn();
    assert!(!d.rtmps.is_empty(), "no rtmps= in the listening line");
    d
}

/// `ffmpeg -c copy` publishing `clip` to an `rtmps://` URL. The tls protocol's options
/// (`-tls_verify 1 -ca_file CA`) given as output options reach it through rtmpproto, which
/// opens `tls://` with the options it was given.
fn publish_rtmps(url: &str, clip: &Path, ca_file: &Path, realtime: bool) -> Child {
    let mut c = media::tool("ffmpeg");
    c.args(["-v", "error"]);
    if realtime {
        c.arg("-re");
    }
    c.arg("-i").arg(clip).args(["-c", "copy", "-f", "flv"]);
    c.args(["-tls_verify", "1", "-ca_file"])
        .arg(ca_file)
        .arg(url);
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg")
}

/// Waits for a child with a deadline; returns (success, stderr).
fn finish(child: Child, what: &str, limit: Duration) -> (bool, String) {
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + limit;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = waiter.join().unwrap().expect(what);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The recording of `stream` is one finished session that decodes, with the clip's frames
/// (within one GOP).
fn assert_one_complete_recording(d: &Daemon, stream: &str, sent: media::Probe) {
    let recs = wait_for(
        &format!("{stream}: one finished recording"),
        Duration::from_secs(30),
        || {
            let recs = d.json(&format!("/api/v1/recordings?stream={stream}"));
            let recs = recs.as_array()?.clone();
            (recs.len() == 1 && recs[0]["state"] == "finished").then_some(recs)
        },
    );
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec["discontinuities"], 0, "{rec}");
    let url = d.http_url(rec["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(
        errors.trim().is_empty(),
        "decode errors in {url}:\n{errors}"
    );
    let got = media::probe(&url);
    assert!(
        got.video_frames + GOP_FRAMES >= sent.video_frames && got.video_frames <= sent.video_frames,
        "video frames: got {}, sent {}",
        got.video_frames,
        sent.video_frames
    );
    assert!(
        got.audio_frames + 48 >= sent.audio_frames && got.audio_frames <= sent.audio_frames + 2,
        "audio frames: got {}, sent {}",
        got.audio_frames,
        sent.audio_frames
    );
}

fn copy_pair(dir: &Path, from: &str, to: &str) {
    for ext in ["key", "pem"] {
        std::fs::copy(
            dir.join(format!("{from}.{ext}")),
            dir.join(format!("{to}.{ext}")),
        )
        .expect("copy certificate");
    }
}

fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

#[test]
fn ffmpeg_publishes_over_rtmps_trusting_a_throwaway_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let (cert, key) = pair(certs.path(), "server");
    let ca = certs.path().join("ca.pem");
    let d = rtmps_daemon(Some((&cert, &key)));
    assert_eq!(
        fingerprint_served(&d.rtmps, Some(&ca)),
        fingerprint_of(&cert)
    );

    // The options really reach ffmpeg's tls protocol: against another CA it refuses.
    let other = tempfile::tempdir().unwrap();
    make_ca(other.path());
    let clip = media::clip(Clip::AudioVideo, 6);
    let url = format!("rtmps://{}/live/untrusted", d.rtmps);
    let (ok, err) = finish(
        publish_rtmps(&url, &clip, &other.path().join("ca.pem"), false),
        "ffmpeg with the wrong CA",
        Duration::from_secs(30),
    );
    assert!(
        !ok,
        "ffmpeg published although it did not trust the certificate"
    );
    // GnuTLS (Debian's ffmpeg) finishes the handshake and then checks the peer, so the
    // server sees a completed handshake and a close: only ffmpeg can tell us why.
    assert!(err.contains("failed verification"), "{err}");

    let sent = media::probe(clip.to_str().unwrap());
    let url = format!("rtmps://{}/live/secure", d.rtmps);
    let (ok, err) = finish(
        publish_rtmps(&url, &clip, &ca, false),
        "ffmpeg over rtmps",
        Duration::from_secs(60),
    );
    assert!(ok, "ffmpeg publish over rtmps failed: {err}");
    assert_one_complete_recording(&d, "secure", sent);
    assert!(d
        .json("/api/v1/recordings?stream=untrusted")
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn the_wrong_protocol_on_either_port_is_closed_and_other_streams_keep_recording() {
    // No certificate configured: a self-signed one is made once, its fingerprint logged.
    let mut d = rtmps_daemon(None);
    let generated = d.data_dir().join("tls/rtmps.pem");
    let fp = fingerprint_of(&generated);
    assert!(
        d.log().contains(&fp),
        "fingerprint {fp} not logged:\n{}",
        d.log()
    );
    assert_eq!(fingerprint_served(&d.rtmps, None), fp);

    let clip = media::clip(Clip::AudioVideo, 8);
    let sent = media::probe(clip.to_str().unwrap());
    let good = media::publish(&d.rtmp_url("live", "good"), &clip, true);
    wait_for("the good stream live", Duration::from_secs(20), || {
        (!d.json("/api/v1/streams").as_array()?.is_empty()).then_some(())
    });

    // A TLS client on the plain RTMP port: its ClientHello is a bad RTMP version byte.
    let tls_to_plain = Command::new("openssl")
        .args(["s_client", "-connect", &d.rtmp])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, _) = finish(
        tls_to_plain,
        "s_client to the rtmp port",
        Duration::from_secs(20),
    );
    assert!(!ok, "a TLS handshake succeeded on the plain RTMP port");
    d.wait_log("only 3 is supported", 1, Duration::from_secs(10));

    // A plain RTMP publisher on the RTMPS port: a failed TLS handshake, nothing recorded.
    let plain_to_tls = media::publish(&format!("rtmp://{}/live/bad", d.rtmps), &clip, false);
    let (ok, _) = finish(
        plain_to_tls,
        "ffmpeg rtmp:// to the rtmps port",
        Duration::from_secs(30),
    );
    assert!(!ok, "plain RTMP was accepted on the RTMPS port");
    d.wait_log("rtmps TLS handshake failed", 1, Duration::from_secs(10));

    let (ok, err) = finish(good, "the good publisher", Duration::from_secs(60));
    assert!(ok, "the good publisher failed: {err}");
    assert_one_complete_recording(&d, "good", sent);
    assert!(d
        .json("/api/v1/recordings?stream=bad")
        .as_array()
        .unwrap()
        .is_empty());

    // The self-signed certificate is reused at the next start (a pinned fingerprint holds).
    assert_eq!(d.stop(), Some(0));
    d.spawn();
    assert_eq!(fingerprint_served(&d.rtmps, None), fp);
}

/// Runs the daemon on `d`'s config and expects it to refuse to start; returns its stderr.
fn refused_start(d: &Daemon) -> String {
    let child = support::edgerec()
        .args(["run", "-c"])
        .arg(&d.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgerec");
    let (ok, stderr) = finish(
        child,
        "edgerec with a bad certificate",
        Duration::from_secs(30),
    );
    assert!(!ok, "edgerec started with a bad certificate:\n{stderr}");
    stderr
}

#[test]
fn a_bad_or_expired_certificate_stops_the_start_naming_the_file() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let expired = sign_server_certificate(certs.path(), "expired", -1);
    let garbage = certs.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\nhello\n").unwrap();
    let missing = certs.path().join("missing.pem");
    let key = certs.path().join("server.key");
    let (_, expired_key) = pair(certs.path(), "expired");

    for (cert, key, problem) in [
        (&expired, &expired_key, "expired"),
        (&garbage, &key, "no PEM certificate"),
        (&missing, &key, "cannot read"),
        (
            &certs.path().join("server.pem"),
            &expired_key,
            "does not match",
        ),
    ] {
        let d = Daemon::configure_with("", "", &rtmps_section(Some((cert, key))));
        let stderr = refused_start(&d);
        assert!(
            stderr.contains("RTMPS certificate") && stderr.contains(problem),
            "{problem}: {stderr}"
        );
        assert!(stderr.contains(&cert.display().to_string()), "{stderr}");
        // check-config says the same before anything is started.
        let out = support::edgerec()
            .arg("check-config")
            .arg(&d.config_path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{problem}: {said}");
        assert!(said.contains(problem), "{problem}: {said}");
    }

    let d = Daemon::configure("", "");
    d.add_to_section(
        "http",
        &format!("cert_file = {expired:?}\nkey_file = {expired_key:?}"),
    );
    let stderr = refused_start(&d);
    assert!(
        stderr.contains("HTTPS certificate") && stderr.contains("expired"),
        "{stderr}"
    );
}

#[test]
fn sighup_swaps_the_rtmps_certificate_while_a_live_publish_keeps_recording() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_certificates(dir);
    let ca = dir.join("ca.pem");
    copy_pair(dir, "server", "live");
    let (live_cert, live_key) = pair(dir, "live");
    let d = rtmps_daemon(Some((&live_cert, &live_key)));
    let first = fingerprint_of(&dir.join("server.pem"));
    assert_eq!(fingerprint_served(&d.rtmps, Some(&ca)), first);

    let clip = media::clip(Clip::AudioVideo, 12);
    let sent = media::probe(clip.to_str().unwrap());
    let url = format!("rtmps://{}/live/through", d.rtmps);
    let publisher = publish_rtmps(&url, &clip, &ca, true);
    wait_for("the rtmps stream live", Duration::from_secs(20), || {
        (!d.json("/api/v1/streams").as_array()?.is_empty()).then_some(())
    });

    // A new certificate: new connections get it.
    let next = sign_server_certificate(dir, "next", 2);
    copy_pair(dir, "next", "live");
    d.sighup();
    d.wait_log("SIGHUP: certificate reloaded", 1, Duration::from_secs(10));
    let second = fingerprint_of(&next);
    assert_ne!(first, second);
    assert_eq!(fingerprint_served(&d.rtmps, Some(&ca)), second);
    assert!(d.log().contains(&second), "new fingerprint not logged");

    // A broken and then an expired file: logged, and the last good certificate stays.
    std::fs::write(&live_cert, "garbage").unwrap();
    d.sighup();
    d.wait_log(
        "SIGHUP: certificate not reloaded",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(fingerprint_served(&d.rtmps, Some(&ca)), second);
    sign_server_certificate(dir, "expired", -1);
    copy_pair(dir, "expired", "live");
    d.sighup();
    d.wait_log(
        "SIGHUP: certificate not reloaded",
        2,
        Duration::from_secs(10),
    );
    assert!(d.log().contains("expired on"), "{}", d.log());
    assert_eq!(fingerprint_served(&d.rtmps, Some(&ca)), second);

    // The publish that started with the first certificate never noticed.
    assert!(
        !d.json("/api/v1/streams").as_array().unwrap().is_empty(),
        "the live publish ended during the reloads"
    );
    let (ok, err) = finish(publisher, "the rtmps publisher", Duration::from_secs(60));
    assert!(ok, "the rtmps publish failed: {err}");
    assert_one_complete_recording(&d, "through", sent);
}

/// `curl --cacert CA https://ADDR/PATH`: (exit code, HTTP status, body).
fn curl(addr: &str, path: &str, ca_file: Option<&Path>) -> (i32, String, String) {
    curl_as(addr, path, ca_file, None)
}

/// [`curl`] with `Authorization: Bearer TOKEN` when a token is given.
fn curl_as(
    addr: &str,
    path: &str,
    ca_file: Option<&Path>,
    token: Option<&str>,
) -> (i32, String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(ca) = ca_file {
        c.arg("--cacert").arg(ca);
    }
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        status.to_owned(),
        body.to_owned(),
    )
}

#[test]
fn curl_reaches_the_api_over_https_and_sighup_swaps_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_certificates(dir);
    let ca = dir.join("ca.pem");
    copy_pair(dir, "server", "api");
    let (cert, key) = pair(dir, "api");
    let mut d = Daemon::configure("", "");
    d.add_to_section("http", &format!("cert_file = {cert:?}\nkey_file = {key:?}"));
    d.spawn();

    let (code, status, body) = curl(&d.http, "/healthz", Some(&ca));
    assert_eq!((code, status.as_str()), (0, "200"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (code, _, _) = curl(&d.http, "/healthz", None);
    assert_eq!(code, 60, "curl must not trust the throwaway CA by default");
    // Plain HTTP on the HTTPS port gets no API answer, and the server carries on.
    let plain = support::http::get(&d.http, "/healthz");
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "plain HTTP answered on the HTTPS port"
    );
    d.wait_log("https TLS handshake failed", 1, Duration::from_secs(10));
    assert_eq!(
        fingerprint_served(&d.http, Some(&ca)),
        fingerprint_of(&dir.join("server.pem"))
    );

    let next = sign_server_certificate(dir, "next", 2);
    copy_pair(dir, "next", "api");
    d.sighup();
    d.wait_log("SIGHUP: certificate reloaded", 1, Duration::from_secs(10));
    assert_eq!(
        fingerprint_served(&d.http, Some(&ca)),
        fingerprint_of(&next)
    );
    let (code, status, body) = curl(&d.http, "/api/v1/recordings", Some(&ca));
    assert_eq!((code, status.as_str()), (0, "200"), "{body}");
    assert_eq!(d.stop(), Some(0), "graceful shutdown with HTTPS on");
}

/// True once the server closes `socket` (EOF or reset) within `limit`.
fn closed_within(socket: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn a_silent_tls_client_holds_a_connection_slot_only_until_the_handshake_timeout() {
    let mut d = Daemon::configure_with(
        "",
        // Wide enough that a busy 2-core runner still sees the slot taken before the
        // silent client is dropped.
        "max_connections = 1\nhandshake_timeout_s = 8",
        &rtmps_section(None),
    );
    d.spawn();
    let mut silent = std::net::TcpStream::connect(&d.rtmps).unwrap();
    // Give the daemon a moment to accept it first: its two listeners are polled together,
    // so a second client connecting at once could be taken before it.
    std::thread::sleep(Duration::from_secs(1));
    // The one slot is shared by both ports: once the silent TLS client holds it, a plain
    // RTMP client is refused at accept (the daemon accepts asynchronously, hence the wait).
    let mut refused = wait_for("a second client refused", Duration::from_secs(6), || {
        let mut other = std::net::TcpStream::connect(&d.rtmp).ok()?;
        closed_within(&mut other, Duration::from_millis(500)).then_some(other)
    });
    assert!(closed_within(&mut refused, Duration::from_secs(1)));
    d.wait_log("too many connections", 1, Duration::from_secs(5));
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)),
        "a silent TLS client was not dropped"
    );
    d.wait_log(
        "no TLS handshake within the handshake timeout",
        1,
        Duration::from_secs(5),
    );
    assert!(d.is_running());
}

#[test]
fn signed_publishes_over_rtmps_and_tokens_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_certificates(dir);
    let ca = dir.join("ca.pem");
    let (cert, key) = pair(dir, "server");
    let token = "ops-token-0123456789abcdef";
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 1",
        "",
        &format!(
            "{}[publish_auth]\nkey = \"venue-key\"\n",
            rtmps_section(Some((&cert, &key)))
        ),
    );
    d.add_to_section(
        "http",
        &format!(
            "cert_file = {cert:?}\nkey_file = {key:?}\n\
             tokens = [ {{ name = \"ops\", token = \"{token}\", scope = \"admin\" }} ]"
        ),
    );
    d.spawn();

    // curl without a token, with a wrong one, and with the right one, all over HTTPS.
    let recordings = |token| curl_as(&d.http, "/api/v1/recordings", Some(&ca), token);
    assert_eq!(recordings(None).1, "401");
    assert_eq!(recordings(Some("wrong-token-0123456789")).1, "401");
    let (_, status, body) = recordings(Some(token));
    assert_eq!((status.as_str(), body.as_str()), ("200", "[]"));

    // An unsigned RTMPS publish is refused; the URL `edgerec sign-url` prints works.
    let clip = media::clip(Clip::AudioVideo, 6);
    let (ok, _) = finish(
        publish_rtmps(
            &format!("rtmps://{}/live/stage", d.rtmps),
            &clip,
            &ca,
            false,
        ),
        "unsigned ffmpeg over rtmps",
        Duration::from_secs(30),
    );
    assert!(!ok, "an unsigned publish over RTMPS was accepted");
    let out = support::edgerec()
        .args([
            "sign-url", "--app", "live", "--stream", "stage", "--rtmps", "-c",
        ])
        .arg(&d.config_path)
        .args(["--host", &d.rtmps])
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        url.starts_with("rtmps://"),
        "{url} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, err) = finish(
        publish_rtmps(&url, &clip, &ca, false),
        "signed ffmpeg over rtmps",
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    let rec = wait_for("finished over https", Duration::from_secs(30), || {
        let (_, _, body) = curl_as(
            &d.http,
            "/api/v1/recordings?state=finished",
            Some(&ca),
            Some(token),
        );
        let list: serde_json::Value = serde_json::from_str(&body).ok()?;
        list.as_array()?.first().cloned()
    });
    assert_eq!(rec["stream"], "stage");
    assert_eq!(rec["sessions"], 1, "{rec}");
    assert!(rec["segments"].as_u64().unwrap() >= 1, "{rec}");
    assert!(d.log().contains("publish refused: not authorized"));
}
