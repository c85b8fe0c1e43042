//! The one home of time helpers every layer uses: wall clock in unix milliseconds, a
//! monotonic clock immune to NTP steps, and the RFC 3339 text the API and callbacks write.
//!
//! Pure apart from reading the system clocks; no tokio. Media time is not here: it is
//! [`crate::media::Ticks`].

/// Wall clock now, unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Milliseconds on a monotonic clock since the process started (immune to NTP steps).
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// RFC 3339 UTC with milliseconds, as the API writes every wall time.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
