//! The shared upload rate cap: a token bucket all workers draw from, so the link keeps
//! headroom for whatever else the venue sends. Hand-written because it is a dozen lines
//! and must be shared across streams of chunks, which rate-limit crates do not model.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket in bytes. `None` rate = unlimited.
pub struct Throttle {
    rate: Option<u64>,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(bytes_per_s: Option<u64>) -> Throttle {
        Throttle {
            rate: bytes_per_s.filter(|r| *r > 0),
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// How long the caller must wait before sending `n` bytes (reserving them now).
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = b.last.max(now);
        // At most a quarter second of burst, so the cap holds over short windows.
        b.tokens = (b.tokens + elapsed * rate).min(rate / 4.0);
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Exponential backoff with jitter: attempt 1 waits about 1 s, doubling up to `cap`;
/// the delay is drawn from the upper half of the step so retries spread out.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let step = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(20)).min(cap);
    let half = step / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t = Throttle::new(None);
        assert_eq!(t.reserve(u64::MAX / 2, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn sustained_rate_matches_the_cap() {
        let t = Throttle::new(Some(1_000_000));
        let start = Instant::now();
        // 10 MB in 64 KiB chunks, each sent when allowed: takes ~10 s of virtual time.
        let mut now = start;
        let mut sent = 0u64;
        while sent < 10_000_000 {
            now += t.reserve(65_536, now);
            sent += 65_536;
        }
        let secs = (now - start).as_secs_f64();
        assert!((9.8..10.3).contains(&secs), "{secs}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        for attempt in 1..30 {
            let d = backoff(attempt, cap);
            let step = Duration::from_secs(1u64 << (attempt - 1).min(20)).min(cap);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
        assert!(backoff(40, cap) <= cap);
    }
}
