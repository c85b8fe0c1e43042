//! The API under load must not stall ingest: it runs on its own thread and runtime, reads
//! segment files in chunks, caps its connections and times out slow request heads.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::media::{self, Clip};
use support::{http, wait_for, Daemon};

const STREAMS: usize = 8;
const CLIENTS: usize = 200;

#[test]
fn two_hundred_api_clients_do_not_stall_eight_recording_streams() {
    // The 200 clients all come from 127.0.0.1 here; at a venue they are many hosts.
    let mut d = Daemon::configure("flow_continue_duration_s = 0", "");
    d.write_config_with_http(
        "flow_continue_duration_s = 0",
        "",
        "max_connections_per_ip = 256",
        "",
    );
    d.spawn();
    let clip = media::clip(Clip::AudioVideo, 16);
    let sent = media::probe(clip.to_str().unwrap());
    let mut publishers: Vec<_> = (0..STREAMS)
        .map(|i| media::publish(&d.rtmp_url("live", &format!("s{i}")), &clip, true))
        .collect();
    wait_for("every stream live", Duration::from_secs(20), || {
        (d.json("/api/v1/streams").as_array()?.len() == STREAMS).then_some(())
    });
    // Each client polls, in turn, the recordings list, its stream's live playlist, the
    // live streams, and the newest segment of its stream (a whole segment file).
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            let addr = d.http.clone();
            std::thread::spawn(move || {
                let live = format!("/hls/live/live/s{}/index.m3u8", i % STREAMS);
                let mut segment = None::<String>;
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let path = match n % 4 {
                        0 => "/api/v1/recordings?limit=20".to_owned(),
                        1 => live.clone(),
                        2 => "/api/v1/streams".to_owned(),
                        _ => match &segment {
                            Some(s) => s.clone(),
                            None => continue,
                        },
                    };
                    match http::get(&addr, &path) {
                        Ok(r) if r.status == 200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if n % 4 == 1 {
                                segment = r
                                    .text()
                                    .lines()
                                    .rfind(|l| l.starts_with('/'))
                                    .map(str::to_owned);
                            }
                        }
                        // The live playlist of a stream that has just ended.
                        Ok(r) if r.status == 404 && n % 4 == 1 => {}
                        Ok(r) => {
                            eprintln!("{path}: {} {}", r.status, r.text());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("{path}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    for p in publishers.iter_mut() {
        let status = p.wait().unwrap();
        assert!(status.success(), "ffmpeg publish failed: {status}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (answered, failed) = (
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "{failed} requests failed, {answered} answered");
    assert!(answered > 2_000, "only {answered} requests answered");

    let recs = d.wait_recordings(STREAMS, "finished", Duration::from_secs(30));
    let mut worst_ms = 0i64;
    for r in &recs {
        let rec = d.recording(r["id"].as_str().unwrap());
        // Every frame recorded.
        let url = d.http_url(rec["playlist"].as_str().unwrap());
        let got = media::probe(&url);
        assert_eq!(
            (got.video_frames, got.audio_frames),
            (sent.video_frames, sent.audio_frames),
            "{}",
            rec["stream"]
        );
        // Each segment began (arrival time) when its media says, within a flush interval:
        // lateness = wall time since the first segment - media time before it.
        let segments = rec["segment_list"].as_array().unwrap();
        let first = support::unix_ms(&segments[0]["start_time"]);
        let mut media_ms = 0.0;
        for s in segments {
            let late = support::unix_ms(&s["start_time"]) - first - media_ms as i64;
            worst_ms = worst_ms.max(late);
            media_ms += s["duration_s"].as_f64().unwrap() * 1000.0;
        }
    }
    eprintln!("{answered} API requests answered; worst segment lateness {worst_ms} ms");
    // A segment in part: its bytes 188-375 (the second TS packet).
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    let uri = rec["segment_list"][0]["uri"].as_str().unwrap();
    let whole = http::get(&d.http, uri).unwrap();
    let part = http::get_with(&d.http, uri, &[("Range", "bytes=188-375")]).unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[188..376]);
    let expected = format!("bytes 188-375/{}", whole.body.len());
    assert_eq!(part.header("content-range"), Some(expected.as_str()));
    assert!(worst_ms <= 1_000, "a segment began {worst_ms} ms late");
}

#[test]
fn a_client_that_never_finishes_its_request_head_is_dropped_and_others_are_served() {
    let d = Daemon::start("", "");
    // Half a request, then nothing (slowloris), from 32 sockets: the API still answers,
    // and each is closed after the header timeout (10 s).
    let mut slow: Vec<std::net::TcpStream> = (0..32)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&d.http).unwrap();
            s.write_all(b"GET /api/v1/recordings HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    assert_eq!(http::get(&d.http, "/healthz").unwrap().status, 200);
    std::thread::sleep(Duration::from_secs(11));
    for s in slow.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        // Closed (hyper may answer 408 first), not still waiting for the rest.
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "still open 16 s after half a request"
            ),
        }
    }
}

#[test]
fn api_connections_past_the_cap_are_closed_and_the_rest_served() {
    let d = Daemon::start_with_http("max_connections = 4", "");
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&d.http).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The fifth is closed at accept.
    let refused = http::get(&d.http, "/healthz");
    assert!(refused.is_err(), "served past the cap");
    assert!(d
        .log()
        .contains("http connection refused: too many connections"));
    drop(held);
    let ok = wait_for("served again", Duration::from_secs(5), || {
        http::get(&d.http, "/healthz")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(ok.status, 200);
}

#[test]
fn one_address_holding_idle_api_connections_cannot_lock_others_out() {
    let d = Daemon::start_with_http("max_connections = 16\nmax_connections_per_ip = 4", "");
    let other_host = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| support::connect_from(&d.http, other_host))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Its fifth is closed at accept: the read sees the close, not an answer.
    let mut fifth = support::connect_from(&d.http, other_host);
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = fifth.read_to_end(&mut answer);
    assert!(answer.is_empty(), "served past the per-address cap");
    assert!(d
        .log()
        .contains("http connection refused: too many connections from this address (limit 4)"));
    // Every other address is served meanwhile.
    let ok = http::get(&d.http, "/healthz").expect("served from 127.0.0.1");
    assert_eq!(ok.status, 200);
    drop(held);
}
