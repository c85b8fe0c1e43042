//! A loopback TCP relay (std threads) in front of a real peer, for outage and retry
//! tests: it records every HTTP/1.1 request passing client -> server (request line,
//! Content-Length; the body is counted, not kept), copies server -> client raw, and can
//! be stopped (listener closed and every live connection shut down, so an in-flight
//! upload fails) and started again on the same port.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub content_length: u64,
    /// Body bytes that went through before the request ended or the connection broke.
    pub body_relayed: u64,
    /// When the request head had been read.
    pub at: Instant,
    /// Answered 403 by the relay, not relayed.
    pub denied: bool,
}

impl RequestRecord {
    /// The value of query parameter `name` (raw, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if kv == name => Some(""),
            _ => None,
        })
    }

    pub fn complete(&self) -> bool {
        self.body_relayed == self.content_length
    }
}

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<RequestRecord>>,
    /// Both sockets of every live connection by id, to shut them down on `stop()`.
    conns: Mutex<BTreeMap<u64, [TcpStream; 2]>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Requests whose target contains this are answered 403 AccessDenied by the relay.
    deny: Mutex<Option<String>>,
}

pub struct Relay {
    target: SocketAddr,
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Relay {
    /// Listens on 127.0.0.1 (ephemeral port) and relays to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let mut r = Relay {
            target,
            addr: listener.local_addr().expect("relay addr"),
            shared: Arc::default(),
            running: None,
        };
        r.serve(listener);
        r
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Answers every request whose path contains `part` with S3's 403 AccessDenied (as a
    /// bucket policy on a prefix would) instead of relaying it; None relays all again.
    pub fn deny(&self, part: Option<&str>) {
        *self.shared.deny.lock().unwrap() = part.map(str::to_owned);
    }

    /// Requests answered with 403 by [`Relay::deny`].
    pub fn denied(&self) -> usize {
        self.requests().iter().filter(|r| r.denied).count()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.records.lock().unwrap().clone()
    }

    /// Closes the listener (new connections are refused) and shuts down every live
    /// connection on both sides at once.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        for s in std::mem::take(&mut *self.shared.conns.lock().unwrap()).values() {
            let _ = s[0].shutdown(Shutdown::Both);
            let _ = s[1].shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port (after `stop()`).
    pub fn start_again(&mut self) {
        assert!(self.running.is_none(), "relay already running");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("rebind relay {}: {e}", self.addr),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, shared, target) = (stop.clone(), self.shared.clone(), self.target);
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        relay_connection(client, target, &shared);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.running = Some((stop, handle));
    }

    /// Part uploads (PUT with `partNumber` and `uploadId`) sent more than once:
    /// (upload id, part number, times sent), sorted.
    pub fn parts_sent_more_than_once(&self) -> Vec<(String, u32, usize)> {
        let mut counts: BTreeMap<(String, u32), usize> = BTreeMap::new();
        for r in self.requests().iter().filter(|r| r.method == "PUT") {
            if let (Some(id), Some(n)) = (r.query_param("uploadId"), r.query_param("partNumber")) {
                if let Ok(n) = n.parse() {
                    *counts.entry((id.to_owned(), n)).or_default() += 1;
                }
            }
        }
        counts
            .into_iter()
            .filter(|(_, c)| *c > 1)
            .map(|((id, n), c)| (id, n, c))
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn relay_connection(client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        return; // dropping `client` closes it: the peer is unreachable
    };
    let clones = [client.try_clone(), server.try_clone()];
    let clones2 = [client.try_clone(), server.try_clone()];
    let ([Ok(client_w), Ok(server_r)], [Ok(c2), Ok(s2)], Ok(answer)) =
        (clones, clones2, client.try_clone())
    else {
        return;
    };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    shared.conns.lock().unwrap().insert(id, [c2, s2]);
    let sh = shared.clone();
    std::thread::spawn(move || upstream(client, answer, server, &sh));
    let sh = shared.clone();
    std::thread::spawn(move || downstream(server_r, client_w, id, &sh));
}

/// server -> client, raw; ends when either side closes (`upstream` shuts both down).
fn downstream(mut server: TcpStream, mut client: TcpStream, id: u64, shared: &Shared) {
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    shared.conns.lock().unwrap().remove(&id);
}

/// client -> server, parsing requests on the way. A request is recorded before its head
/// is forwarded (so it is listed before any answer can arrive); body bytes are credited
/// once forwarded. A denied request (see [`Relay::deny`]) is read whole and answered on
/// `answer` (clients do not pipeline, so no answer of the server is under way).
fn upstream(mut client: TcpStream, mut answer: TcpStream, mut server: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut head, mut body_left, mut current) = (Vec::new(), 0u64, None::<usize>);
    let mut denying = false;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) => {
                let _ = server.shutdown(Shutdown::Write); // half-close: the answer may follow
                return;
            }
            Err(_) => break,
            Ok(n) => n,
        };
        let mut credits = Vec::new();
        let mut forward = Vec::with_capacity(n);
        let mut data = &buf[..n];
        while !data.is_empty() || (denying && body_left == 0) {
            if denying && body_left == 0 {
                denying = false;
                if answer.write_all(ACCESS_DENIED.as_bytes()).is_err() {
                    break;
                }
                continue;
            }
            if body_left > 0 {
                let take = body_left.min(data.len() as u64);
                body_left -= take;
                if !denying {
                    forward.extend_from_slice(&data[..take as usize]);
                    credits.extend(current.map(|i| (i, take)));
                }
                data = &data[take as usize..];
                continue;
            }
            // Inside a request head: look for its end, carrying over partial heads.
            let old = head.len();
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            data = &data[end + 4 - old..];
            let mut rec = parse_head(&head[..end]);
            body_left = rec.content_length;
            rec.denied = shared
                .deny
                .lock()
                .unwrap()
                .as_deref()
                .is_some_and(|part| rec.target.contains(part));
            if rec.denied {
                denying = true;
            } else {
                forward.extend_from_slice(&head[..end + 4]);
            }
            head.clear();
            let mut records = shared.records.lock().unwrap();
            records.push(rec);
            current = Some(records.len() - 1);
        }
        if server.write_all(&forward).is_err() {
            break;
        }
        let mut records = shared.records.lock().unwrap();
        for (i, take) in credits {
            records[i].body_relayed += take;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// What S3 answers a request a bucket policy denies.
const ACCESS_DENIED: &str = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
    Content-Length: 110\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
    <Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";

fn parse_head(head: &[u8]) -> RequestRecord {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    RequestRecord {
        method,
        target,
        content_length,
        body_relayed: 0,
        at: Instant::now(),
        denied: false,
    }
}
