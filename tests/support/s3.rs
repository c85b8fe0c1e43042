//! Real S3-compatible stores for upload tests: an `s3s-fs` process on a temp dir
//! ([`S3sFs`]) and a 3-node loopback Garage cluster with replication 3 ([`GarageCluster`],
//! in `s3/garage.rs`). Each owns its child processes (SIGKILLed on drop), ephemeral ports
//! and temp dirs, and has the bucket `recordings`. [`S3Client`] signs requests with
//! rusty-s3 (presigned URLs) and sends them with the blocking raw HTTP/1.1 client of
//! `s3/wire.rs`; [`Store`] lets tests treat both stores alike. Binaries:
//! `$EDGEREC_S3S_FS` / `$EDGEREC_GARAGE`, else `$CARGO_HOME/bin/<name>` (default
//! `~/.cargo/bin`), else PATH; `scripts/install-test-deps.sh` installs them.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

use super::http::Response;
use super::wait_for;

pub const BUCKET: &str = "recordings";
const SIGN_FOR: Duration = Duration::from_secs(600);

/// What tests need from either store.
pub trait Store {
    fn client(&self) -> S3Client;
    fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        self.client().get_object(key)
    }
    fn list_objects(&self, prefix: &str) -> Vec<(String, u64)> {
        self.client().list_objects(prefix)
    }
    fn toml_section(&self, prefix: &str) -> String {
        self.client().toml_section(prefix)
    }
}

/// Endpoint, bucket and credentials of one store, path-style.
#[derive(Clone, Debug)]
pub struct S3Client {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Client {
    /// The rusty-s3 bucket, for actions not wrapped here (multipart, HEAD...).
    pub fn bucket_handle(&self) -> Bucket {
        let url = Url::parse(&self.endpoint).expect("endpoint url");
        Bucket::new(
            url,
            UrlStyle::Path,
            self.bucket.clone(),
            self.region.clone(),
        )
        .expect("bucket")
    }

    pub fn creds(&self) -> Credentials {
        Credentials::new(self.access_key.clone(), self.secret_key.clone())
    }

    pub fn presigned_get(&self, key: &str) -> Url {
        self.bucket_handle()
            .get_object(Some(&self.creds()), key)
            .sign(SIGN_FOR)
    }

    pub fn presigned_put(&self, key: &str) -> Url {
        self.bucket_handle()
            .put_object(Some(&self.creds()), key)
            .sign(SIGN_FOR)
    }

    /// GET an object: `None` on 404, panics on any other non-200 answer.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let r = send("GET", &self.presigned_get(key), &[], &[])
            .unwrap_or_else(|e| panic!("GET {key} from {}: {e}", self.endpoint));
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("GET {key} from {}: {s} {}", self.endpoint, r.text()),
        }
    }

    /// PUT an object; returns the raw answer (tests check the status).
    pub fn put_object(&self, key: &str, body: &[u8]) -> std::io::Result<Response> {
        send("PUT", &self.presigned_put(key), &[], body)
    }

    pub fn delete_object(&self, key: &str) -> std::io::Result<Response> {
        let url = self
            .bucket_handle()
            .delete_object(Some(&self.creds()), key)
            .sign(SIGN_FOR);
        send("DELETE", &url, &[], &[])
    }

    pub fn create_bucket(&self) -> std::io::Result<Response> {
        let b = self.bucket_handle();
        let creds = self.creds();
        send("PUT", &b.create_bucket(&creds).sign(SIGN_FOR), &[], &[])
    }

    /// ListObjectsV2 under `prefix`, following continuation tokens; (key, size) sorted.
    pub fn list_objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let (b, creds) = (self.bucket_handle(), self.creds());
        let (mut out, mut token) = (Vec::new(), None::<String>);
        loop {
            let mut action = b.list_objects_v2(Some(&creds));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let r = send("GET", &action.sign(SIGN_FOR), &[], &[])
                .unwrap_or_else(|e| panic!("list {prefix:?} on {}: {e}", self.endpoint));
            assert_eq!(r.status, 200, "list {prefix:?}: {}", r.text());
            let (items, next) = wire::parse_list(&r.text());
            out.extend(items);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort();
        out
    }

    /// The `[upload.s3]` section of an edgerec config pointing at this store.
    pub fn toml_section(&self, prefix: &str) -> String {
        format!(
            "[upload.s3]\nendpoint = {:?}\nregion = {:?}\nbucket = {:?}\naccess_key = {:?}\nsecret_key = {:?}\npath_style = true\nprefix = {prefix:?}\n",
            self.endpoint, self.region, self.bucket, self.access_key, self.secret_key
        )
    }
}

/// `$env`, else `$CARGO_HOME/bin/<name>` (default `~/.cargo/bin`), else `<name>` from PATH.
pub fn find_binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    match cargo_home.map(|c| c.join("bin").join(name)) {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(name),
    }
}

/// A port that was free a moment ago (bind 127.0.0.1:0 and release it).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind ephemeral"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

pub fn accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls until `port` accepts TCP; panics early if `child` exits.
fn wait_listening(child: &mut Child, port: u16, limit: Duration, what: &str) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if accepts(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port} within {limit:?}");
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// One `s3s-fs` process serving DIR; the bucket is the folder DIR/recordings.
pub struct S3sFs {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3sFs {
    pub const ACCESS_KEY: &'static str = "edgerec-test-ak";
    pub const SECRET_KEY: &'static str = "edgerec-test-secret-key";

    pub fn start() -> S3sFs {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("root").join(BUCKET)).expect("bucket dir");
        let mut s = S3sFs {
            dir,
            port: 0,
            child: None,
        };
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn() {
                return s;
            }
        }
        panic!("s3s-fs did not start; log:\n{}", s.log());
    }

    /// Spawns on `self.port`; false if the process exited (e.g. the port was taken).
    fn spawn(&mut self) -> bool {
        let bin = find_binary("EDGEREC_S3S_FS", "s3s-fs");
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ])
            .arg(self.root())
            .env("RUST_LOG", "s3s_fs=info,s3s=info")
            .stdin(Stdio::null())
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.log_path()))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {}: {e} (run scripts/install-test-deps.sh)",
                    bin.display()
                )
            });
        let up = wait_listening(&mut child, self.port, Duration::from_secs(20), "s3s-fs");
        self.child = Some(child);
        if !up {
            kill_child(&mut self.child);
        }
        up
    }

    /// The served directory; buckets are its subfolders, s3s-fs keeps internal files
    /// (`.upload-*.json`, `.upload_id-*.part-N`, `.tmp.*`, metadata) at its top level.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn access_key(&self) -> &str {
        Self::ACCESS_KEY
    }
    pub fn secret_key(&self) -> &str {
        Self::SECRET_KEY
    }
    pub fn bucket(&self) -> &str {
        BUCKET
    }
    pub fn region(&self) -> &str {
        "us-east-1"
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL the process (no-op if already dead).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kill (if running) and start again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let ok = (0..3).any(|_| self.spawn());
        assert!(ok, "s3s-fs did not restart on {port}; log:\n{}", self.log());
    }

    /// An object's bytes read straight from the backing file.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root().join(BUCKET).join(key)).ok()
    }

    /// Every object file under the bucket folder as (key, size), sorted.
    pub fn objects(&self) -> Vec<(String, u64)> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path(), &format!("{name}/"), out),
                    Ok(m) => out.push((name, m.len())),
                    Err(_) => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root().join(BUCKET), "", &mut out);
        out.sort();
        out
    }

    /// Names of s3s-fs's in-progress multipart files (`.upload_id-*.part-N`) in the root.
    pub fn pending_part_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload_id-"))
            .collect();
        v.sort();
        v
    }
}

impl Store for S3sFs {
    fn client(&self) -> S3Client {
        S3Client {
            endpoint: self.endpoint(),
            region: self.region().to_owned(),
            bucket: BUCKET.to_owned(),
            access_key: Self::ACCESS_KEY.to_owned(),
            secret_key: Self::SECRET_KEY.to_owned(),
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- s3s-fs log ----\n{}", self.log());
        }
    }
}

mod garage;
mod wire;
#[allow(unused_imports)]
pub use garage::GarageCluster;
pub use wire::send;
