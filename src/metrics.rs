//! The process-lifetime metrics: counters and histograms that outlive any one publish,
//! recorded where things happen (ingest, record, storage, upload) and read by `/metrics`.
//!
//! Owns: the [`Metrics`] registry of those series ([`global`]); every name starts with
//! `edgerec_` and ends in its base unit (`_bytes`, `_seconds`, `_total`). What can be read
//! off the live state at scrape time (live streams, the upload queue, the disk) is not
//! kept here but gathered by `api::metrics` when scraped, so it can never drift from what
//! the API shows. Label values come from small fixed sets (protocols, reasons), never
//! from the network, so cardinality stays bounded. No IO; at the bottom of the layers so
//! every layer may count.

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts,
    Registry,
};

/// The process's lifetime series.
pub struct Metrics {
    registry: Registry,
    /// When the process started counting (unix seconds): `edgerec_start_time_seconds`.
    pub started_unix_s: f64,
    /// Bytes received from publishers and cameras, by protocol.
    pub received_bytes: IntCounterVec,
    /// Frames handed to recorders, by protocol.
    pub received_frames: IntCounterVec,
    /// Frames dropped because a writer fell behind its byte budget.
    pub dropped_frames: IntCounter,
    /// Publishes refused, by reason (see [`RefusalReason`]).
    pub publish_refusals: IntCounterVec,
    /// Connections accepted, by listener.
    pub connections: IntCounterVec,
    /// Segment writes (a flush of buffered media to the file) and their fsyncs.
    pub segment_write_seconds: Histogram,
    pub fsync_seconds: Histogram,
    /// Bytes written to the media files (what wears the card).
    pub written_bytes: IntCounter,
    /// Segments sealed, and those cut short by a gap or discontinuity.
    pub segments: IntCounter,
    pub discontinuities: IntCounter,
    /// Holes in recordings: a writer fell behind and dropped frames, or a publisher's
    /// timestamps jumped forward; and the media the jumps skipped.
    pub gaps: IntCounter,
    pub gap_seconds: Counter,
    /// Bytes sent to the store (completed parts and objects).
    pub uploaded_bytes: IntCounter,
    /// Objects completed in the store.
    pub uploaded_objects: IntCounter,
    /// From a recording's end (its file sealed) to its object complete in the store.
    pub upload_delay_seconds: Histogram,
    /// Recordings removed by the disk policy.
    pub evictions: IntCounter,
    /// Jumps of the wall clock (see `clock_watch`).
    pub clock_jumps: IntCounter,
}

/// Why a publish was refused: the `reason` label of `edgerec_publish_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    BadName,
    Unauthorized,
    AlreadyPublishing,
    DiskFull,
    NoTemplate,
    Failed,
    NothingRecordable,
}

impl RefusalReason {
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::BadName => "bad_name",
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::AlreadyPublishing => "already_publishing",
            RefusalReason::DiskFull => "disk_full",
            RefusalReason::NoTemplate => "no_template",
            RefusalReason::Failed => "failed",
            RefusalReason::NothingRecordable => "nothing_recordable",
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("a unique name");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("a unique name");
    c
}

/// Seconds from 1 ms to ~65 s, doubling: flash latencies (a stalled card takes seconds).
fn latency(registry: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = exponential_buckets(0.001, 2.0, 17).expect("valid buckets");
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("a valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("a unique name");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new_custom(Some("edgerec".into()), None).expect("a valid prefix");
        let upload_delay = {
            // 1 s to ~3 days: an offline venue uploads days later.
            let buckets = exponential_buckets(1.0, 4.0, 10).expect("valid buckets");
            let opts = HistogramOpts::new(
                "upload_delay_seconds",
                "From a recording file's seal to its object complete in the store",
            )
            .buckets(buckets);
            let h = Histogram::with_opts(opts).expect("a valid histogram");
            r.register(Box::new(h.clone())).expect("a unique name");
            h
        };
        Metrics {
            received_bytes: counter_vec(
                &r,
                "received_bytes_total",
                "Bytes received from publishers and cameras",
                "protocol",
            ),
            received_frames: counter_vec(
                &r,
                "received_frames_total",
                "Frames handed to recorders",
                "protocol",
            ),
            dropped_frames: counter(
                &r,
                "dropped_frames_total",
                "Frames dropped because a writer fell behind its byte budget",
            ),
            publish_refusals: counter_vec(
                &r,
                "publish_refusals_total",
                "Publishes refused, by reason",
                "reason",
            ),
            connections: counter_vec(
                &r,
                "connections_total",
                "Connections accepted, by listener",
                "listener",
            ),
            segment_write_seconds: latency(
                &r,
                "segment_write_seconds",
                "Time to write buffered media to a segment file",
            ),
            fsync_seconds: latency(&r, "fsync_seconds", "Time of one fsync of a media file"),
            written_bytes: counter(
                &r,
                "written_bytes_total",
                "Bytes written to media files since start (flash wear)",
            ),
            segments: counter(&r, "segments_total", "Segments sealed"),
            discontinuities: counter(
                &r,
                "discontinuities_total",
                "Segments that begin a discontinuity (timestamp jump, codec change, resume, gap)",
            ),
            gaps: counter(
                &r,
                "gaps_total",
                "Holes in recordings: a writer fell behind and dropped frames, or a publisher's timestamps jumped forward",
            ),
            gap_seconds: {
                let c = Counter::new(
                    "gap_seconds_total",
                    "Media skipped by publishers' forward timestamp jumps",
                )
                .expect("a valid counter");
                r.register(Box::new(c.clone())).expect("a unique name");
                c
            },
            uploaded_bytes: counter(&r, "uploaded_bytes_total", "Bytes sent to the store"),
            uploaded_objects: counter(
                &r,
                "uploaded_objects_total",
                "Objects completed in the store",
            ),
            upload_delay_seconds: upload_delay,
            evictions: counter(
                &r,
                "evictions_total",
                "Recordings removed by the disk policy",
            ),
            clock_jumps: counter(
                &r,
                "clock_jumps_total",
                "Jumps of the wall clock beyond 1 s (NTP steps, a first time on a board without an RTC)",
            ),
            registry: r,
            started_unix_s: crate::clock::now_ms() as f64 / 1000.0,
        }
    }

    /// Counts a refused publish.
    pub fn refused(&self, reason: RefusalReason) {
        self.publish_refusals
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// The lifetime series, for the exposition.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_prefixed_and_in_base_units() {
        let m = global();
        m.refused(RefusalReason::BadName);
        m.received_bytes.with_label_values(&["rtmp"]).inc_by(10);
        for family in m.gather() {
            let name = family.name();
            assert!(name.starts_with("edgerec_"), "{name}");
            assert!(
                ["_total", "_seconds", "_bytes"]
                    .iter()
                    .any(|unit| name.ends_with(unit)),
                "{name} has no base unit"
            );
        }
    }
}
