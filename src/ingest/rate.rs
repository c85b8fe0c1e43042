//! The bitrate shown for a live stream: bytes received over windows of about two
//! seconds. Shared by every ingest (RTMP, RTSP publish, RTSP pull).

use std::time::Duration;

use tokio::time::Instant;

/// Bitrate over windows of about two seconds.
pub struct RateMeter {
    since: Instant,
    bytes_at_since: u64,
}

impl RateMeter {
    pub fn new() -> RateMeter {
        RateMeter {
            since: Instant::now(),
            bytes_at_since: 0,
        }
    }

    /// The bitrate (bits/s) once a window has passed since the last one, given the
    /// stream's total bytes so far.
    pub fn sample(&mut self, total: u64) -> Option<u64> {
        let elapsed = self.since.elapsed();
        if elapsed < Duration::from_secs(2) {
            return None;
        }
        let bps =
            (total.saturating_sub(self.bytes_at_since) as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
        self.since = Instant::now();
        self.bytes_at_since = total;
        Some(bps)
    }
}

impl Default for RateMeter {
    fn default() -> RateMeter {
        RateMeter::new()
    }
}
