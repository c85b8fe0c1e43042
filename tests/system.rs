//! The systemd protocol as the unit (`Type=notify`, `WatchdogSec=`) relies on it, checked
//! against a real notify socket: `READY=1` once the daemon listens, `STATUS=` lines with
//! stream counts, `WATCHDOG=1` pings at half the watchdog period while healthy, and
//! `STOPPING=1` on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::media::{self, Clip};
use support::Daemon;

/// Reads notify datagrams for `limit`, returning each as a string.
fn collect(
    socket: &UnixDatagram,
    limit: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !done(&seen) {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

#[test]
fn notifies_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut d = Daemon::configure("", "");
    // A 2 s watchdog: pings are due every second.
    d.spawn_with_env(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "2000000"),
    ]);
    let start = collect(&socket, Duration::from_secs(10), |s| {
        s.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3
    });
    assert!(start[0].contains("READY=1"), "READY first: {start:?}");
    assert!(start[0].contains("STATUS=listening"), "{start:?}");
    let pings = start.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "watchdog pinged while healthy: {start:?}");
    assert!(
        start
            .iter()
            .any(|m| m.contains("STATUS=recording 0 stream(s), uploads off")),
        "{start:?}"
    );

    let mut publisher = media::publish(
        &d.rtmp_url("live", "sd"),
        &media::clip(Clip::AudioVideo, 8),
        true,
    );
    let live = collect(&socket, Duration::from_secs(10), |s| {
        s.iter().any(|m| m.contains("recording 1 stream(s)"))
    });
    assert!(
        live.iter().any(|m| m.contains("recording 1 stream(s)")),
        "{live:?}"
    );
    let _ = publisher.kill();
    let _ = publisher.wait();

    d.stop();
    let end = collect(&socket, Duration::from_secs(2), |s| {
        s.iter().any(|m| m.contains("STOPPING=1"))
    });
    assert!(end.iter().any(|m| m.contains("STOPPING=1")), "{end:?}");
}
