//! `GET /api/v1/recordings` as a search (issue 19): a few hundred recordings in the index
//! beside one recorded from a real ffmpeg publish, found by prefix, time window, stream,
//! format and page after page by cursor; and the bad inputs, each a 400 with a reason.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use edgerec::index::{Index, RecordingRow, RecordingState, SegmentRow, Update};
use serde_json::Value;
use support::media::{self, Clip};
use support::{unix_ms, Daemon};

/// Generated recordings: one a minute, 30 s long, over ten streams.
const GENERATED: usize = 300;
const FIRST_MS: i64 = 1_760_000_000_000;
const MINUTE_MS: i64 = 60_000;

fn generate(data_dir: &std::path::Path) {
    let index = Index::open(&data_dir.join("index")).expect("index");
    for i in 0..GENERATED {
        let at = FIRST_MS + i as i64 * MINUTE_MS;
        let id = format!("gen{i:04}");
        let row = RecordingRow::new(id.clone(), "venue".into(), format!("cam{}", i % 10), at);
        index.create_recording(&row).expect("create");
        let seg = SegmentRow::plain(1, 30 * 90_000, 1000, at);
        index.commit_segment(&id, &seg).expect("segment");
        index
            .update_recording(&id, |r| {
                r.end_ms = at + 30_000;
                r.state = RecordingState::Finished;
                Update::Write
            })
            .expect("finish");
    }
}

/// Every page of `query` (limit `page`), following `X-Next-Cursor`; the ids in order.
fn all_pages(d: &Daemon, query: &str, page: usize) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor = String::new();
    loop {
        let sep = if query.is_empty() { "" } else { "&" };
        let r = d.get(&format!(
            "/api/v1/recordings?{query}{sep}limit={page}{cursor}"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let recs: Vec<Value> = serde_json::from_slice(&r.body).expect("json");
        assert!(recs.len() <= page);
        pages += 1;
        ids.extend(recs.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match r.header("x-next-cursor") {
            Some(next) => {
                assert_eq!(recs.len(), page, "a short page with a next cursor");
                cursor = format!("&cursor={next}");
            }
            None => return (ids, pages),
        }
    }
}

fn ids(d: &Daemon, query: &str) -> Vec<String> {
    let recs = d.json(&format!("/api/v1/recordings?{query}"));
    recs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn gen_ids(range: impl Iterator<Item = usize>) -> Vec<String> {
    range.map(|i| format!("gen{i:04}")).collect()
}

#[test]
fn search_pages_prefix_time_window_and_bad_input() {
    let mut d = Daemon::configure("flow_continue_duration_s = 0", "");
    generate(&d.data_dir());
    d.spawn();
    media::publish_and_wait(
        &d.rtmp_url("venue", "stage-main"),
        &media::clip(Clip::AudioVideo, 4),
        false,
    );
    let live = support::wait_for("the published recording", Duration::from_secs(30), || {
        let recs = d.json("/api/v1/recordings?stream=stage-main&state=finished");
        recs.as_array()?.first().cloned()
    });
    let live_id = live["id"].as_str().unwrap().to_owned();
    assert!(live["duration_s"].as_f64().unwrap() > 3.0, "{live}");

    // Every recording once, newest first, 7 pages of 50 (the last one short).
    let (every, pages) = all_pages(&d, "", 50);
    assert_eq!(pages, 7);
    assert_eq!(every.len(), GENERATED + 1);
    assert_eq!(every.iter().collect::<HashSet<_>>().len(), every.len());
    assert_eq!(every[0], live_id, "the real recording is the newest");
    assert_eq!(every[1..], gen_ids((0..GENERATED).rev()));
    // The first page without a limit holds 100.
    assert_eq!(ids(&d, "").len(), 100);

    // By prefix of the stream name: cam1 is one stream of ten; "stage" the real one.
    let (cam1, _) = all_pages(&d, "prefix=cam1", 7);
    assert_eq!(cam1, gen_ids((0..GENERATED).rev().filter(|i| i % 10 == 1)));
    assert_eq!(ids(&d, "prefix=stage"), [live_id.as_str()]);
    assert!(ids(&d, "prefix=nothing-like-this").is_empty());

    // Time window: recordings 100..=109 start within it; 99 (ends 30 s after it starts)
    // does not reach it; 110 starts one minute after recording 109.
    let from = FIRST_MS + 100 * MINUTE_MS - 20_000;
    let to = FIRST_MS + 109 * MINUTE_MS + 10_000;
    let window = format!("from={}&to={}", from as f64 / 1000.0, to as f64 / 1000.0);
    assert_eq!(ids(&d, &window), gen_ids((100..=109).rev()));
    let rfc = format!(
        "from={}&to={}",
        "2025-10-09T08:53:20Z", // FIRST_MS
        "2025-10-09T08:54:20%2B00:00"
    );
    assert_eq!(ids(&d, &rfc), gen_ids((0..=1).rev()));
    // A window in the live recording's span finds it by its dated segments.
    let live_start = unix_ms(&live["start_time"]);
    assert_eq!(
        ids(&d, &format!("from={}", (live_start + 1000) as f64 / 1000.0)),
        [live_id.as_str()]
    );

    // Stream, app, format and state.
    assert_eq!(
        ids(&d, "app=venue&stream=cam3&limit=3"),
        gen_ids([293, 283, 273].into_iter())
    );
    assert!(ids(&d, "app=elsewhere").is_empty());
    assert!(ids(&d, "format=mp4").is_empty());
    assert_eq!(ids(&d, "format=hls&limit=1"), [live_id.as_str()]);
    assert!(ids(&d, "state=failed").is_empty());
    assert_eq!(
        ids(&d, "upload_state=local_only&limit=1"),
        [live_id.as_str()]
    );

    // Bad input: a 400 that names the parameter; the daemon goes on answering.
    for (query, says) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("cursor=zz", "cursor"),
        ("from=yesterday", "from"),
        ("from=1800000000&to=1700000000", "from is after to"),
        ("state=lost", "state"),
        ("format=avi", "format"),
        ("upload_state=sideways", "upload_state"),
    ] {
        let r = d.get(&format!("/api/v1/recordings?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert!(r.text().contains(says), "{query}: {}", r.text());
    }
    assert_eq!(ids(&d, "limit=1").len(), 1);
}
