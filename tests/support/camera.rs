//! An IP camera for the tests: GStreamer's RTSP server (`rtsp_camera.py`, run by the
//! system python, which has `gi`) serving live test media at `rtsp://127.0.0.1:PORT/stream1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running camera; killed on drop.
pub struct Camera {
    child: Child,
    pub port: u16,
    profile: String,
}

impl Camera {
    /// Starts `profile` (see `rtsp_camera.py`) on a free port.
    pub fn start(profile: &str) -> Camera {
        Camera::start_on(profile, 0)
    }

    /// Starts `profile` on `port` (0: any free port); waits until it listens.
    pub fn start_on(profile: &str, port: u16) -> Camera {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/rtsp_camera.py");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new("/usr/bin/python3")
                .arg(script)
                .arg(profile)
                .arg(port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the RTSP camera (install-test-deps.sh installs GStreamer)");
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if let Some(bound) = line.trim().strip_prefix("ready ") {
                return Camera {
                    child,
                    port: bound.parse().expect("port"),
                    profile: profile.to_owned(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            // The port of a camera just killed may linger briefly: try again.
            assert!(
                Instant::now() < deadline,
                "the RTSP camera ({profile}) did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `rtsp://[userinfo@]127.0.0.1:PORT/stream1`.
    pub fn url(&self, userinfo: &str) -> String {
        format!("rtsp://{userinfo}127.0.0.1:{}/stream1", self.port)
    }

    /// Kills the camera (a power cut, a reboot).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same profile again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        *self = Camera::start_on(&self.profile.clone(), self.port);
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.kill();
    }
}
