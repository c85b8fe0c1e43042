//! The status page in a real browser: Debian's Chromium, driven by puppeteer-core
//! (`tests/browser/page_check.mjs`), opens `GET /` at a phone's size, finds a recording
//! made here and plays it, plays a live stream, and sees no console error. The screenshot
//! is kept as `target/status-page.png`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::media::{self, Clip};
use support::Daemon;

#[test]
fn the_page_lists_and_plays_a_recording_and_a_live_stream_in_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/puppeteer-core").is_dir(),
        "puppeteer-core missing: scripts/install-test-deps.sh installs it"
    );
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let clip = media::clip(Clip::AudioVideo, 10);
    media::publish_and_wait(&d.rtmp_url("live", "stage"), &clip, false);
    d.wait_recordings(1, "finished", Duration::from_secs(30));
    let long = media::clip(Clip::AudioVideo, 60);
    let mut live = media::publish(&d.rtmp_url("live", "lectern"), &long, true);

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(browser_dir.join("page_check.mjs"))
        .arg(format!("http://{}", d.http))
        .args(["stage", "lectern"])
        .arg(&screenshot)
        .output()
        .expect("node");
    let _ = live.kill();
    let _ = live.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "page check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: serde_json::Value = serde_json::from_str(stdout.trim()).expect("findings");
    assert!(findings["recorded"].as_f64().unwrap() > 3.0, "{findings}");
    assert!(findings["live"].as_f64().unwrap() > 3.0, "{findings}");
    assert_eq!(findings["console_errors"], serde_json::json!([]));
    assert!(
        findings["health"]
            .as_str()
            .unwrap()
            .contains("recording OK"),
        "{findings}"
    );
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
}
