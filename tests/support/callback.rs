//! A real HTTP/1.1 server (std threads, keep-alive aware) standing in for the VOD
//! platform's upload-callback endpoint: it records every POSTed JSON body with its
//! `Idempotency-Key` header and whether its `t`/`sign` fields are valid
//! (`sign == hex(md5(key + t))`, `t` not in the past), answers a settable status, and can
//! go down (connections refused, live ones closed) and come back on the same port.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use serde_json::Value;

pub const PATH: &str = "/edgerec/callback";

#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    /// The parsed JSON body (`Null` if it was not JSON).
    pub body: Value,
    pub idempotency_key: Option<String>,
    pub sign_ok: bool,
    /// The `X-Edgerec-Signature` header, and the body exactly as received (it signs it).
    pub signature: Option<String>,
    pub raw_body: Vec<u8>,
    /// The status this delivery was answered with.
    pub status: u16,
    pub at: Instant,
}

struct Shared {
    key: String,
    status: AtomicU16,
    deliveries: Mutex<Vec<Delivery>>,
    conns: Mutex<BTreeMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

pub struct CallbackReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// Whether `X-Edgerec-Signature: t=T, v1=HEX` is HMAC-SHA256(key, T + "." + body), checked
/// with the `openssl` CLI (an implementation other than the daemon's), and T is the body's
/// `t`.
pub fn body_signature_ok(key: &str, d: &Delivery) -> bool {
    let Some(header) = &d.signature else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if d.body["t"].as_i64().map(|n| n.to_string()).as_deref() != Some(t.as_str()) {
        return false;
    }
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&d.raw_body);
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&message)
        .expect("openssl stdin");
    let out = child.wait_with_output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next() == Some(v1.as_str())
}

/// Lowercase hex MD5 of `key` followed by decimal `t`.
pub fn sign(key: &str, t: &str) -> String {
    Md5::digest(format!("{key}{t}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `t` (number or decimal string) and `sign` match `key`, and `t` >= now.
pub fn sign_ok(key: &str, body: &Value) -> bool {
    let t = match &body["t"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let Some(t) = t else { return false };
    body["sign"].as_str() == Some(sign(key, &t.to_string()).as_str()) && t >= unix_now()
}

impl CallbackReceiver {
    /// Listens on an ephemeral loopback port; deliveries are checked against `key`.
    pub fn start(key: &str) -> CallbackReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind callback receiver");
        let mut r = CallbackReceiver {
            addr: listener.local_addr().expect("addr"),
            shared: Arc::new(Shared {
                key: key.to_owned(),
                status: AtomicU16::new(200),
                deliveries: Mutex::default(),
                conns: Mutex::default(),
                next_id: AtomicU64::new(0),
            }),
            running: None,
        };
        r.serve(listener);
        r
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The callback URL to configure (any path is accepted and recorded).
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// Answer future requests with `status` (e.g. 500 to provoke retries).
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Stops listening (connections refused) and closes every open connection.
    pub fn down(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        for s in std::mem::take(&mut *self.shared.conns.lock().unwrap()).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        assert!(self.running.is_none(), "callback receiver already up");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("rebind {}: {e}", self.addr),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, shared) = (stop.clone(), self.shared.clone());
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let Ok(clone) = conn.try_clone() else {
                    continue;
                };
                let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                shared.conns.lock().unwrap().insert(id, clone);
                let sh = shared.clone();
                std::thread::spawn(move || {
                    let _ = handle_conn(conn, &sh);
                    sh.conns.lock().unwrap().remove(&id);
                });
            }
        });
        self.running = Some((stop, handle));
    }
}

impl Drop for CallbackReceiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// Serves requests on one connection until the client closes or asks to.
fn handle_conn(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut first = line.split_whitespace();
        let method = first.next().unwrap_or("").to_owned();
        let path = first.next().unwrap_or("").to_owned();
        let http10 = first.next() == Some("HTTP/1.0");
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                return Ok(());
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunked(&mut r)?
        } else {
            let len = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut b = vec![0; len];
            r.read_exact(&mut b)?;
            b
        };
        let close = http10 || header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let status = if method == "POST" {
            shared.status.load(Ordering::SeqCst)
        } else {
            405
        };
        if method == "POST" {
            let raw_body = body;
            let body: Value = serde_json::from_slice(&raw_body).unwrap_or(Value::Null);
            shared.deliveries.lock().unwrap().push(Delivery {
                sign_ok: sign_ok(&shared.key, &body),
                signature: header("x-edgerec-signature").cloned(),
                raw_body,
                path,
                body,
                idempotency_key: header("idempotency-key").cloned(),
                status,
                at: Instant::now(),
            });
        }
        let reply = if status < 300 {
            "{\"code\":0,\"msg\":\"ok\"}"
        } else {
            "{\"code\":1}"
        };
        write!(
            out,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{reply}",
            if status < 300 { "OK" } else { "Error" },
            reply.len(),
            if close { "Connection: close\r\n" } else { "" },
        )?;
        out.flush()?;
        if close {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let mut chunk = vec![0; size + 2];
        if size == 0 {
            // trailers until an empty line
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        r.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk[..size]);
    }
}
