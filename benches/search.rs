//! Benchmark of the recordings search and of start-up with a large index (issue 19's
//! figures: a page of 100 out of 100,000 recordings in <= 50 ms; daemon start-up,
//! recovery included, under 1 s).
//!
//! Generates an index of N finished recordings (default 100,000: 50 streams over 5 apps,
//! one recording an hour each, every fourth with an MP4 file beside its HLS, each row with
//! its template snapshot as the daemon writes it, one segment row each) through the
//! `Index` API, on tmpfs when `/dev/shm` exists (generation only: sled's flush per
//! transaction is what it would cost on flash). Then, on that index:
//! - the median and worst time of each kind of page of 100 (newest; by stream; by prefix;
//!   by time window; by format; next page by cursor; a filter that matches little);
//! - what the disk policy reads each pass (`check_interval_s`, 5 s by default) with
//!   `keep_local_after_upload_s` set: the closed captures still on flash (all but the
//!   newest [`ON_FLASH`] recordings are generated uploaded and evicted, as on a box that
//!   keeps a few days locally), against reading every row as it did before;
//! - the time `edgerec run` takes from exec to its `ready` line on a copy of that data
//!   dir on disk (the index's pages are in the page cache, as after the copy) to its
//!   `listening` line.
//!
//! Run: `cargo bench --bench search [-- --recordings N] [--keep]`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgerec::config::templates::Template;
use edgerec::config::Format;
use edgerec::index::{
    FileRow, FileState, Index, RecordingRow, RecordingState, SearchQuery, SegmentRow, Update,
};

const HOUR_MS: i64 = 3_600_000;
const STREAMS: usize = 50;
/// The newest recordings, whose files are still on flash; older ones were uploaded and
/// evicted.
const ON_FLASH: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = arg("--recordings").map_or(100_000, |v| v.parse().expect("--recordings N"));
    let keep = args.iter().any(|a| a == "--keep");

    let shm = Path::new("/dev/shm");
    let gen_root = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let gen_dir = gen_root.path().join("data");
    let started = Instant::now();
    let newest = generate(&gen_dir.join("index"), n);
    println!(
        "generated {n} recordings in {:.1} s ({} on disk)",
        started.elapsed().as_secs_f64(),
        human(dir_bytes(&gen_dir.join("index")))
    );

    let index = Index::open(&gen_dir.join("index")).expect("open index");
    let query = |name: &str, q: SearchQuery| {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..21 {
            let t = Instant::now();
            let page = index.search(&q).expect("search");
            times.push(t.elapsed());
            found = page.entries.len();
        }
        times.sort();
        println!(
            "  {name:<44} {found:>4} found   median {:>6.2} ms   worst {:>6.2} ms",
            ms(times[times.len() / 2]),
            ms(*times.last().unwrap())
        );
    };
    let page = |q: SearchQuery| SearchQuery { limit: 100, ..q };
    println!("search, pages of 100 out of {n} (target <= 50 ms):");
    query("newest", page(SearchQuery::default()));
    let second = index
        .search(&page(SearchQuery::default()))
        .expect("search")
        .next;
    query(
        "second page (cursor)",
        page(SearchQuery {
            after: second,
            ..Default::default()
        }),
    );
    query(
        "app + stream",
        page(SearchQuery {
            app: Some("app3".into()),
            stream: Some("cam13".into()),
            ..Default::default()
        }),
    );
    query(
        "stream only",
        page(SearchQuery {
            stream: Some("cam13".into()),
            ..Default::default()
        }),
    );
    query(
        "prefix cam1 (11 streams)",
        page(SearchQuery {
            prefix: Some("cam1".into()),
            ..Default::default()
        }),
    );
    let mid = newest - (n / STREAMS) as i64 * HOUR_MS / 2;
    query(
        "time window: one day in the middle",
        page(SearchQuery {
            from_ms: Some(mid),
            to_ms: Some(mid + 24 * HOUR_MS),
            ..Default::default()
        }),
    );
    query(
        "format mp4",
        page(SearchQuery {
            format: Some(Format::Mp4),
            ..Default::default()
        }),
    );
    query(
        "app only",
        page(SearchQuery {
            app: Some("app2".into()),
            ..Default::default()
        }),
    );
    query(
        "app + time window (one day)",
        page(SearchQuery {
            app: Some("app2".into()),
            from_ms: Some(mid),
            to_ms: Some(mid + 24 * HOUR_MS),
            ..Default::default()
        }),
    );
    query(
        "template + format (a scan of every entry)",
        page(SearchQuery {
            template: Some("default".into()),
            format: Some(Format::Flv),
            ..Default::default()
        }),
    );
    query(
        "app only, state failed (matches none)",
        page(SearchQuery {
            app: Some("app1".into()),
            state: Some("failed".into()),
            ..Default::default()
        }),
    );

    let read = |f: &dyn Fn() -> usize| {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            rows = f();
            times.push(t.elapsed());
        }
        times.sort();
        (rows, ms(times[2]))
    };
    let (resident, resident_ms) = read(&|| index.resident_recordings().expect("resident").len());
    let (every, every_ms) = read(&|| index.recordings().filter_map(Result::ok).count());
    println!(
        "disk policy pass with keep_local_after_upload_s (every 5 s): reads {resident} rows \
         on flash in {resident_ms:.1} ms (median; reading all {every} rows, as before: \
         {every_ms:.0} ms)"
    );
    drop(index);

    // Start-up on a disk copy.
    let disk_root = tempfile::tempdir().expect("temp dir");
    let data = disk_root.path().join("data");
    copy_dir(&gen_dir, &data);
    let config = disk_root.path().join("edgerec.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            data.display()
        ),
    )
    .expect("write config");
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(start_up(&config));
    }
    times.sort();
    println!(
        "start-up with {n} recordings (exec to ready, recovery included; target < 1 s): \
         median {:.0} ms, worst {:.0} ms",
        ms(times[1]),
        ms(times[2])
    );
    if keep {
        println!("kept: {}", data.display());
        std::mem::forget(disk_root);
    }
}

/// Writes `n` finished recordings; returns the newest one's start.
fn generate(dir: &Path, n: usize) -> i64 {
    let index = Index::open(dir).expect("open index");
    let template = Template::builtin_default();
    let start = 1_700_000_000_000i64;
    let mut newest = 0;
    for i in 0..n {
        let stream = i % STREAMS;
        let at = start + (i / STREAMS) as i64 * HOUR_MS + stream as i64 * 1000;
        newest = newest.max(at);
        let id = format!("{}-{i:06}", at);
        let mut row = RecordingRow::new(
            id.clone(),
            format!("app{}", stream % 5),
            format!("cam{stream}"),
            at,
        );
        row.template = Some(template.clone());
        index.create_recording(&row).expect("create");
        for seq in 1..=1u32 {
            let seg = SegmentRow {
                media_start: (seq as i64 - 1) * 4 * 90_000,
                ..SegmentRow::plain(seq, 4 * 90_000, 1_000_000, at + (seq as i64 - 1) * 4000)
            };
            index.commit_segment(&id, &seg).expect("commit");
        }
        let evicted = i + ON_FLASH < n;
        index
            .update_recording(&id, |r| {
                r.state = RecordingState::Finished;
                if evicted {
                    r.uploaded_ms = Some(at + 60_000);
                    r.evicted_ms = Some(at + 86_400_000);
                }
                Update::Write
            })
            .expect("finish");
        if i % 4 == 0 {
            let file = FileRow {
                id: FileRow::make_id(&id, Format::Mp4, 1),
                capture_id: id.clone(),
                app: row.app.clone(),
                stream: row.stream.clone(),
                format: Format::Mp4,
                template: "default".into(),
                number: 1,
                first_seq: 1,
                last_seq: 3,
                state: FileState::Finished,
                start_ms: at,
                end_ms: at + 12_000,
                duration_ticks: 12 * 90_000,
                segments: 3,
                ts_bytes: 3_000_000,
                gaps: 0,
                file_name: Some(format!("{}_{i:06}", row.stream)),
                store_key: None,
                storage_time_s: 0,
                record_id: None,
                note: None,
                uploaded_ms: None,
                before: None,
                store_expiry: None,
                task_id: None,
                task_template: None,
                start: None,
            };
            index.put_file(&file).expect("file");
        }
    }
    newest
}

/// Runs `edgerec run` until it prints that it listens; returns how long that took.
fn start_up(config: &Path) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgerec"))
        .args(["run", "-c"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn edgerec");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ready line");
    let took = t.elapsed();
    assert!(
        line.contains("listening"),
        "edgerec did not start: {line:?}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    took
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let dest: PathBuf = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).expect("copy");
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map_while(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
