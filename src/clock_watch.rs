//! Watches the wall clock of a board that may have no real-time clock: it boots in 1970
//! (or at its last shutdown time) and jumps when NTP first syncs, and any NTP step later
//! is a jump too.
//!
//! Owns: the clock's state as the API, `/metrics` and the status page show it
//! ([`status`]): whether the kernel says the clock is synchronized (what `timedatectl`
//! shows as "System clock synchronized": `adjtimex` reports no `STA_UNSYNC`), and the jumps
//! seen (a change of the wall clock against the boot clock beyond [`JUMP_THRESHOLD_MS`]),
//! counted in `edgerec_clock_jumps_total`; and the once-a-second check ([`run`]).
//! Recordings' times are not corrected here: segments keep the wall time they were given
//! when they opened (re-anchoring open recordings after a jump is still to come).
//!
//! Hand-written `unsafe` (one reviewed call): no crate wraps `adjtimex`, which with
//! `modes = 0` only reads the kernel's NTP state into a struct we own.

#![allow(unsafe_code)]

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock;

/// A change of wall-minus-boot time beyond this is a jump (NTP slews smaller errors).
pub const JUMP_THRESHOLD_MS: i64 = 1000;
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Detects jumps in a series of wall-minus-boot samples (pure; fed by [`run`]).
#[derive(Debug, Default)]
pub struct JumpDetector {
    last: Option<i64>,
}

impl JumpDetector {
    /// The jump since the last sample (ms, + forward), if beyond [`JUMP_THRESHOLD_MS`].
    pub fn observe(&mut self, wall_minus_boot_ms: i64) -> Option<i64> {
        let last = self.last.replace(wall_minus_boot_ms)?;
        let step = wall_minus_boot_ms - last;
        (step.abs() > JUMP_THRESHOLD_MS).then_some(step)
    }
}

/// The wall clock as the daemon sees it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ClockStatus {
    /// The kernel's NTP state; `None` where it cannot be read.
    pub synchronized: Option<bool>,
    /// Jumps seen since start.
    pub jumps: u64,
    /// The last jump's size in ms (+ forward) and when it happened (the new time).
    pub last_jump_ms: Option<i64>,
    pub last_jump_at: Option<String>,
}

static STATUS: Mutex<ClockStatus> = Mutex::new(ClockStatus {
    synchronized: None,
    jumps: 0,
    last_jump_ms: None,
    last_jump_at: None,
});

fn lock() -> std::sync::MutexGuard<'static, ClockStatus> {
    STATUS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The clock's state now.
pub fn status() -> ClockStatus {
    lock().clone()
}

/// Whether the kernel's clock is synchronized (`adjtimex`, read only).
fn kernel_synchronized() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed `timex` with `modes = 0` asks adjtimex to change nothing and
        // only fill the struct, which lives on this stack frame.
        let (state, status) = unsafe {
            let mut tx: libc::timex = std::mem::zeroed();
            let state = libc::adjtimex(&mut tx);
            (state, tx.status)
        };
        if state < 0 {
            return None;
        }
        Some(state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Debug builds only: the test's skew, from `$EDGEREC_TEST_CLOCK_SKEW_FILE` (ms).
fn read_test_skew() {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("EDGEREC_TEST_CLOCK_SKEW_FILE") {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(ms) = text.trim().parse::<i64>() {
                clock::TEST_SKEW_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Checks the clock every second until `cancel`.
pub async fn run(cancel: CancellationToken) {
    let mut detector = JumpDetector::default();
    loop {
        read_test_skew();
        if let Some(step) = detector.observe(clock::wall_minus_boot_ms()) {
            let now = clock::now_ms();
            tracing::warn!(
                jump_s = step as f64 / 1000.0,
                now = %clock::rfc3339(now),
                "the wall clock jumped (an NTP step, or a board without a real-time clock getting its first time)"
            );
            crate::metrics::global().clock_jumps.inc();
            let mut s = lock();
            s.jumps += 1;
            s.last_jump_ms = Some(step);
            s.last_jump_at = Some(clock::rfc3339(now));
        }
        let synchronized = kernel_synchronized();
        lock().synchronized = synchronized;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_offsets_and_slews_are_no_jump_a_step_is() {
        let mut d = JumpDetector::default();
        assert_eq!(d.observe(5_000), None, "the first sample sets the base");
        assert_eq!(d.observe(5_000), None);
        assert_eq!(d.observe(5_400), None, "a slew-sized change");
        // A board that booted in 1970 gets its first NTP time: 56 years forward.
        let synced = 1_796_428_800_000;
        assert_eq!(d.observe(synced), Some(synced - 5_400));
        assert_eq!(d.observe(synced), None);
        assert_eq!(
            d.observe(synced - 3_600_000),
            Some(-3_600_000),
            "a step back"
        );
    }

    #[test]
    fn the_kernel_state_reads_without_privileges() {
        // In a container or on a desktop alike: a readable answer, never a panic.
        let _ = kernel_synchronized();
    }
}
