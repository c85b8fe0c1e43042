//! `GET /metrics`: the Prometheus text exposition (format 0.0.4).
//!
//! Owns: the series read off the live state at scrape time, gathered beside the
//! process-lifetime ones of [`crate::metrics`]: live streams and, per live stream only
//! (the series go when the stream ends), what it received and the recording health the
//! cloud services lack (media seconds expected from the wall clock against received and
//! recorded, gaps); the upload queue (objects, bytes, age of the oldest, store state,
//! callbacks); the disk (free, watermarks, time left to record at the current write
//! rate); build, start time and index size. Runs the index scans off the API's event loop.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, Gauge, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::{ApiError, ApiState};
use crate::index::CallbackState;

/// Protocols a live stream can come in by: each gets a series, 0 when none is live.
const PROTOCOLS: [&str; 4] = ["rtmp", "rtmps", "rtsp", "camera"];

/// Builds scrape-time series into one registry; a name clash is a bug, so it panics.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn new() -> Scrape {
        Scrape {
            registry: Registry::new_custom(Some("edgerec".into()), None).expect("a valid prefix"),
        }
    }

    fn gauge(&self, name: &str, help: &str, value: f64) {
        let g = Gauge::new(name, help).expect("a valid gauge");
        g.set(value);
        self.registry.register(Box::new(g)).expect("a unique name");
    }

    fn int_gauge(&self, name: &str, help: &str, value: i64) {
        let g = IntGauge::new(name, help).expect("a valid gauge");
        g.set(value);
        self.registry.register(Box::new(g)).expect("a unique name");
    }

    /// A family registered now and filled by the caller (counters read off live state are
    /// exposed with counter semantics through a gauge's setter: their TYPE says counter).
    fn family(&self, name: &str, help: &str, labels: &[&str], counter: bool) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("a valid family");
        let boxed: Box<dyn prometheus::core::Collector> = if counter {
            Box::new(AsCounter(g.clone()))
        } else {
            Box::new(g.clone())
        };
        self.registry.register(boxed).expect("a unique name");
        g
    }

    fn int_family(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid family");
        self.registry
            .register(Box::new(g.clone()))
            .expect("a unique name");
        g
    }
}

/// A gauge family exposed as a counter: values read at scrape time from counters kept
/// elsewhere (a live stream's bytes received), which only grow while the series lives.
#[derive(Clone)]
struct AsCounter(GaugeVec);

impl prometheus::core::Collector for AsCounter {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        for family in &mut families {
            family.set_field_type(prometheus::proto::MetricType::COUNTER);
            for metric in family.mut_metric() {
                let value = metric.get_gauge().get_value();
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
        }
        families
    }
}

#[cfg_attr(test, utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "status",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        body = String, content_type = "text/plain"))))]
pub async fn scrape(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let text = tokio::task::spawn_blocking(move || render(&s))
        .await
        .map_err(|e| ApiError::internal(format!("metrics task: {e}")))??;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn render(s: &ApiState) -> Result<String, ApiError> {
    let scrape = Scrape::new();
    let now_ms = crate::clock::now_ms();
    process(&scrape, s);
    let write_rate = live(&scrape, s, now_ms);
    disk(&scrape, s, write_rate);
    uploads(&scrape, s, now_ms)?;
    let mut families = crate::metrics::global().gather();
    families.extend(scrape.registry.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| ApiError::internal(format!("metrics encoding: {e}")))?;
    String::from_utf8(out).map_err(|e| ApiError::internal(format!("metrics encoding: {e}")))
}

fn process(scrape: &Scrape, s: &ApiState) {
    let build = scrape.int_family(
        "build_info",
        "The running build: version and target",
        &["version", "target"],
    );
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), std::env::consts::ARCH])
        .set(1);
    scrape.gauge(
        "start_time_seconds",
        "When the process started, unix seconds",
        crate::metrics::global().started_unix_s,
    );
    if let Some(synced) = crate::clock_watch::status().synchronized {
        scrape.int_gauge(
            "clock_synchronized",
            "1 when the kernel says the wall clock is synchronized (NTP), else 0",
            i64::from(synced),
        );
    }
    scrape.int_gauge(
        "lookback_bytes",
        "Media held in RAM by the look-backs of live streams nothing records (for clips)",
        s.recorders.lookback_bytes() as i64,
    );
    scrape.int_gauge(
        "index_size_bytes",
        "Bytes the index takes on disk",
        s.index.size_on_disk() as i64,
    );
}

/// Live streams and their recording health; returns the streams' summed receive rate in
/// bytes per second (what the card is being filled at).
fn live(scrape: &Scrape, s: &ApiState, now_ms: i64) -> f64 {
    let streams = s.recorders.live();
    let by_protocol = scrape.int_family(
        "live_streams",
        "Streams being received, by protocol",
        &["protocol"],
    );
    for p in PROTOCOLS {
        by_protocol.with_label_values(&[p]).set(0);
    }
    let labels = ["app", "stream"];
    let received = scrape.family(
        "stream_received_bytes_total",
        "Bytes received on a live stream's connection",
        &labels,
        true,
    );
    let frames = scrape.family(
        "stream_received_frames_total",
        "Frames received on a live stream's connection",
        &labels,
        true,
    );
    let dropped = scrape.family(
        "stream_dropped_frames_total",
        "Frames of a live stream dropped because its writer fell behind",
        &labels,
        true,
    );
    let rejected = scrape.family(
        "stream_rejected_frames_total",
        "Frames of a live stream rejected as malformed",
        &labels,
        true,
    );
    let expected = scrape.family(
        "recording_expected_media_seconds",
        "Wall-clock seconds since the live stream's publish started: the media a healthy recording holds",
        &labels,
        false,
    );
    let media = scrape.family(
        "recording_received_media_seconds",
        "Seconds of media the live stream handed to its recorder",
        &labels,
        false,
    );
    let gaps = scrape.family(
        "recording_gaps_total",
        "Holes in the live stream's recording (its writer fell behind, or its timestamps jumped forward)",
        &labels,
        true,
    );
    let gap_seconds = scrape.family(
        "recording_gap_seconds_total",
        "Media the live stream's forward timestamp jumps skipped",
        &labels,
        true,
    );
    let discontinuities = scrape.family(
        "recording_discontinuities_total",
        "Segments of the live stream's recording that began after a discontinuity",
        &labels,
        true,
    );
    let mut rate_bps = 0u64;
    let mut live_by_protocol: HashMap<&str, i64> = HashMap::new();
    for st in &streams {
        let v = st.view();
        *live_by_protocol.entry(v.protocol).or_default() += 1;
        rate_bps += v.bitrate_bps;
        let l = [v.app.as_str(), v.stream.as_str()];
        received.with_label_values(&l).set(v.bytes_received as f64);
        frames.with_label_values(&l).set(v.frames_received as f64);
        dropped.with_label_values(&l).set(v.frames_dropped as f64);
        rejected.with_label_values(&l).set(v.frames_rejected as f64);
        gaps.with_label_values(&l).set(v.gaps as f64);
        gap_seconds
            .with_label_values(&l)
            .set(v.gap_ms as f64 / 1000.0);
        discontinuities
            .with_label_values(&l)
            .set(v.discontinuities as f64);
        expected
            .with_label_values(&l)
            .set((now_ms - st.since_ms()).max(0) as f64 / 1000.0);
        media
            .with_label_values(&l)
            .set(v.media_received_ms as f64 / 1000.0);
    }
    for (p, n) in live_by_protocol {
        by_protocol.with_label_values(&[p]).set(n);
    }
    rate_bps as f64 / 8.0
}

fn disk(scrape: &Scrape, s: &ApiState, write_rate: f64) {
    let status = s.recorders.disk_state().status();
    if let Ok(space) = s.storage.disk_space() {
        scrape.int_gauge(
            "disk_free_bytes",
            "Bytes free for the recorder on the media filesystem",
            space.available_bytes as i64,
        );
        scrape.int_gauge(
            "disk_size_bytes",
            "Size of the media filesystem",
            space.total_bytes as i64,
        );
    }
    scrape.int_gauge(
        "disk_used_bytes",
        "Bytes used on the media filesystem (as the disk policy counts them)",
        status.used_bytes as i64,
    );
    scrape.int_gauge(
        "disk_high_watermark_bytes",
        "Usage at which the disk policy evicts or refuses new recordings",
        status.high_watermark_bytes as i64,
    );
    scrape.int_gauge(
        "disk_accepting_recordings",
        "1 while new recordings are accepted, 0 while the disk policy refuses them",
        i64::from(s.recorders.disk_state().accepting()),
    );
    let room = status
        .high_watermark_bytes
        .saturating_sub(status.used_bytes) as f64;
    let left = if write_rate > 0.0 {
        room / write_rate
    } else {
        f64::INFINITY
    };
    scrape.gauge(
        "disk_recording_time_left_seconds",
        "Recording time until the high watermark at the live streams' current rate (+Inf when none is live)",
        left,
    );
}

fn uploads(scrape: &Scrape, s: &ApiState, now_ms: i64) -> Result<(), ApiError> {
    // Counted by keys, nothing decoded: delivered ones are most of what a box ever sent.
    let by_state = scrape.int_family(
        "callbacks",
        "Completion callbacks in the outbox, by state",
        &["state"],
    );
    for state in [
        CallbackState::Pending,
        CallbackState::Delivered,
        CallbackState::Failed,
    ] {
        let n = s.index.count_callbacks(state);
        by_state.with_label_values(&[state.as_str()]).set(n as i64);
    }
    let Some(uploader) = &s.uploader else {
        return Ok(());
    };
    let summary = uploader.backlog_summary()?;
    let objects = scrape.int_family(
        "upload_objects",
        "Objects waiting in the upload queue, by state (sent ones leave it)",
        &["state"],
    );
    for state in ["queued", "uploading", "failed"] {
        let n = summary.objects.get(state).copied().unwrap_or(0);
        objects.with_label_values(&[state]).set(n as i64);
    }
    scrape.int_gauge(
        "upload_backlog_bytes",
        "Bytes of the objects not yet in the store",
        summary.bytes as i64,
    );
    scrape.gauge(
        "upload_oldest_pending_age_seconds",
        "Age of the oldest object not yet in the store (0 when none waits)",
        summary
            .oldest_created_ms
            .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0),
    );
    let store = scrape.int_family(
        "upload_store_state",
        "1 for the store's current state: ok, unavailable or credentials_rejected",
        &["state"],
    );
    for state in ["ok", "unavailable", "credentials_rejected"] {
        store
            .with_label_values(&[state])
            .set(i64::from(state == summary.store_state));
    }
    Ok(())
}
