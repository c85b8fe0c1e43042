//! Shared integration-test support: start/stop/SIGKILL the real `edgerec` binary on
//! loopback ephemeral ports and a temp data dir, a minimal HTTP client for its API, and
//! ffmpeg/ffprobe helpers that generate test media and decode what was recorded.
//!
//! Nothing here sleeps blindly: waits poll a condition with a deadline.

#![allow(dead_code)]

pub mod callback;
pub mod camera;
pub mod flv;
pub mod hevc;
pub mod http;
pub mod media;
pub mod metrics;
pub mod relay;
pub mod rtmp_client;
pub mod s3;
pub mod tasks;
pub mod tls;
pub mod tmpfs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `cond` every 100 ms until it returns `Some`, or panics after `limit` with `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running (or stopped) daemon with its own data dir and config.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    pub rtmp: String,
    pub http: String,
    /// The RTMPS listener's address; empty when `[rtmps]` is off.
    pub rtmps: String,
    /// The RTSP listener's address; empty when `[rtsp] listen` is unset.
    pub rtsp: String,
    log_path: PathBuf,
    runs: u32,
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.2, ...): another
/// host, as far as per-address limits go.
pub fn connect_from(addr: &str, from: std::net::Ipv4Addr) -> std::net::TcpStream {
    let to: std::net::SocketAddr = addr.parse().expect("an address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let sock = runtime.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind((from, 0).into()).expect("bind");
        sock.connect(to).await.expect("connect")
    });
    let sock = sock.into_std().expect("a std socket");
    sock.set_nonblocking(false).expect("blocking");
    sock
}

/// A command running the daemon binary; through `$EDGEREC_TEST_RUNNER` (e.g.
/// `qemu-aarch64`) when the tests run a cross-built binary under emulation.
pub fn edgerec() -> Command {
    match std::env::var("EDGEREC_TEST_RUNNER") {
        Ok(runner) if !runner.is_empty() => {
            let mut c = Command::new(runner);
            c.arg(binary());
            c
        }
        _ => Command::new(binary()),
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgerec"))
}

impl Daemon {
    /// Starts a daemon whose config is the contract keys plus `extra_record` lines in
    /// `[record]` (e.g. `flow_continue_duration_s = 2`) and `extra_rtmp` lines in `[rtmp]`.
    pub fn start(extra_record: &str, extra_rtmp: &str) -> Daemon {
        let mut d = Daemon::configure(extra_record, extra_rtmp);
        d.spawn();
        d
    }

    /// Starts a daemon with whole extra TOML sections (`[[template]]`, `[[rule]]`, ...).
    pub fn start_with_sections(sections: &str) -> Daemon {
        let mut d = Daemon::configure_with("", "", sections);
        d.spawn();
        d
    }

    /// Writes the config and data dir but does not start the process.
    pub fn configure(extra_record: &str, extra_rtmp: &str) -> Daemon {
        Daemon::configure_with(extra_record, extra_rtmp, "")
    }

    /// Like [`Daemon::configure`], with whole extra TOML sections (`[upload]`, ...)
    /// appended.
    pub fn configure_with(extra_record: &str, extra_rtmp: &str, sections: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("edgerec.toml");
        let d = Daemon {
            log_path: dir.path().join("daemon.log"),
            dir,
            config_path,
            child: None,
            rtmp: String::new(),
            http: String::new(),
            rtmps: String::new(),
            rtsp: String::new(),
            runs: 0,
        };
        d.write_config(extra_record, extra_rtmp, sections);
        std::fs::create_dir_all(d.data_dir()).expect("data dir");
        d
    }

    /// Starts a daemon with `extra_http` lines in `[http]` (tokens, keys) and whole extra
    /// sections.
    pub fn start_with_http(extra_http: &str, sections: &str) -> Daemon {
        let mut d = Daemon::configure_with("", "", sections);
        d.write_config_with_http("", "", extra_http, sections);
        d.spawn();
        d
    }

    /// Rewrites the config file (takes effect at the next [`Daemon::spawn`]).
    pub fn write_config(&self, extra_record: &str, extra_rtmp: &str, sections: &str) {
        self.write_config_with_http(extra_record, extra_rtmp, "", sections);
    }

    /// [`Daemon::write_config`] with `extra_http` lines in `[http]`.
    pub fn write_config_with_http(
        &self,
        extra_record: &str,
        extra_rtmp: &str,
        extra_http: &str,
        sections: &str,
    ) {
        let data = self.data_dir();
        // The default watermarks are shares of the disk the temp dir is on, which these
        // tests share with whatever else the machine holds: unless a test is about the
        // disk policy, only a disk that is really full may refuse its recordings.
        let storage = if sections.contains("[storage]") {
            ""
        } else {
            "[storage]\nhigh_watermark_percent = 100\nlow_watermark_percent = 99\n"
        };
        let segment = if extra_record.contains("segment_duration_s") {
            ""
        } else {
            "segment_duration_s = 4\n"
        };
        let text = format!(
            "data_dir = {data:?}\n[rtmp]\nlisten = \"127.0.0.1:0\"\n{extra_rtmp}\n[http]\nlisten = \"127.0.0.1:0\"\n{extra_http}\n[record]\n{segment}flush_interval_ms = 1000\n{extra_record}\n{sections}\n{storage}",
        );
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// Adds `lines` at the top of the config's `[section]` table (e.g. `cert_file` in
    /// `[http]`, which [`Daemon::configure_with`]'s arguments cannot reach).
    pub fn add_to_section(&self, section: &str, lines: &str) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let header = format!("[{section}]\n");
        assert!(text.contains(&header), "no {header:?} in the config");
        let text = text.replacen(&header, &format!("{header}{lines}\n"), 1);
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// Sends SIGHUP (the daemon reloads its TLS certificates).
    pub fn sighup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP failed");
    }

    /// Waits until the daemon's log holds `text` at least `n` times.
    pub fn wait_log(&self, text: &str, n: usize, limit: Duration) {
        wait_for(&format!("{n} x {text:?} in the log"), limit, || {
            (self.log().matches(text).count() >= n).then_some(())
        });
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)starts the process on fresh ephemeral ports and waits until it listens.
    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// [`Daemon::spawn`] with extra environment variables.
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut child = edgerec()
            .args(["run", "-c"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info,sled=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn edgerec");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("edgerec: listening ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => panic!("daemon did not start; log:\n{}", self.log()),
        };
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("rtmp=") {
                self.rtmp = a.to_owned();
            }
            if let Some(a) = part.strip_prefix("http=") {
                self.http = a.to_owned();
            }
            if let Some(a) = part.strip_prefix("rtmps=") {
                self.rtmps = a.to_owned();
            }
            if let Some(a) = part.strip_prefix("rtsp=") {
                self.rtsp = a.to_owned();
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn rtmp_url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://{}/{app}/{stream}", self.rtmp)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(&self.http, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nlog:\n{}", self.log()))
    }

    pub fn json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("json")
    }

    /// Every recording (up to 1000), oldest first: the order they were recorded in, which
    /// is what most tests index by (the API itself lists newest first).
    pub fn recordings(&self) -> Vec<Value> {
        oldest_first(
            self.json("/api/v1/recordings?limit=1000")
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// Waits until exactly `n` recordings exist and all are in `state`.
    pub fn wait_recordings(&self, n: usize, state: &str, limit: Duration) -> Vec<Value> {
        wait_for(&format!("{n} recording(s) in state {state}"), limit, || {
            let recs = self.recordings();
            (recs.len() == n && recs.iter().all(|r| r["state"] == state)).then_some(recs)
        })
    }

    /// Returns once an object is mid-multipart (5 MiB parts) with at least `parts` parts
    /// sent.
    pub fn wait_mid_multipart(&self, parts: u64) -> Value {
        wait_for("an object mid-multipart", Duration::from_secs(120), || {
            let uploads = self.json("/api/v1/uploads");
            uploads["objects"]
                .as_array()?
                .iter()
                .find(|o| {
                    o["multipart_upload_id"].is_string()
                        && o["bytes_sent"].as_u64().unwrap_or(0) >= parts * 5 * 1024 * 1024
                })
                .cloned()
        })
    }

    pub fn recording(&self, id: &str) -> Value {
        self.json(&format!("/api/v1/recordings/{id}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no cleanup at all, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "daemon did not stop within 30 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs `edgerec fsck` (daemon must be stopped) and returns (exit code, stdout).
    pub fn fsck(&self, repair: bool) -> (i32, String) {
        let mut cmd = edgerec();
        cmd.args(["fsck", "-c"]).arg(&self.config_path);
        if repair {
            cmd.arg("--repair");
        }
        let out = cmd.output().expect("fsck");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// The folder of a recording, from its API object.
    pub fn recording_dir(&self, rec: &Value) -> PathBuf {
        self.data_dir()
            .join("media")
            .join(rec["app"].as_str().unwrap())
            .join(rec["stream"].as_str().unwrap())
            .join(rec["id"].as_str().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log());
        }
    }
}

/// Where generated media is cached: in this target dir's scratch folder (cargo's
/// `CARGO_TARGET_TMPDIR`), shared by every test binary and run, and removed with the
/// target dir, so runs leave nothing behind in the system temp dir.
pub fn media_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("media");
        std::fs::create_dir_all(&dir).expect("media dir");
        dir
    })
}

/// A recording's or segment's `start_time` (RFC 3339) as unix milliseconds.
/// Recordings sorted by start time, then id (a capture's HLS recording before its files).
pub fn oldest_first(mut recs: Vec<Value>) -> Vec<Value> {
    recs.sort_by(|a, b| {
        (a["start_time"].as_str(), a["id"].as_str())
            .cmp(&(b["start_time"].as_str(), b["id"].as_str()))
    });
    recs
}

pub fn unix_ms(rfc3339: &Value) -> i64 {
    edgerec::clock::parse_time(rfc3339.as_str().unwrap()).unwrap()
}

/// The recording has two segments or more, each dated where the previous one ended
/// (within 300 ms): its dates come from one clock.
pub fn assert_dated_back_to_back(rec: &Value) {
    let segments = rec["segment_list"].as_array().unwrap();
    assert!(segments.len() >= 2, "{rec}");
    for pair in segments.windows(2) {
        let (a, b) = (
            unix_ms(&pair[0]["start_time"]),
            unix_ms(&pair[1]["start_time"]),
        );
        let duration_ms = (pair[0]["duration_s"].as_f64().unwrap() * 1000.0) as i64;
        assert!(
            (b - a - duration_ms).abs() <= 300,
            "{}: segment dated {b}, previous {a} + {duration_ms} ms",
            rec["stream"]
        );
    }
}
