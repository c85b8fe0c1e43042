//! Watches the wall clock of a board that may have no real-time clock: it boots in 1970
//! (or at its last shutdown time) and jumps when NTP first syncs, and any NTP step later
//! is a jump too.
//!
//! Owns: the clock's state as the API, `/metrics` and the status page show it
//! ([`status`]): whether the kernel says the clock is synchronized (what `timedatectl`
//! shows as "System clock synchronized": `adjtimex` reports no `STA_UNSYNC`), and the jumps
//! seen (a change of the wall clock against the boot clock beyond [`JUMP_THRESHOLD_MS`]),
//! counted in `edgerec_clock_jumps_total`; and the once-a-second check ([`run`]).
//!
//! Also the clock recordings are stamped with, [`recording_now`]: the boot clock plus the
//! wall-minus-boot offset as of the last check, with the sum of the jumps seen so far
//! (the clock's epoch). Between a jump and the check that sees it (up to a second),
//! stamps stay on the old clock, so every stamp belongs to a known epoch and
//! `record::clock_anchor` moves exactly the stamps a jump made wrong.
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

/// The recording clock's state: the offset it adds to the boot clock, and the jumps
/// seen since start (what a stamp taken at `jumped_ms` is corrected by, later).
#[derive(Debug, Clone, Copy)]
struct Anchor {
    wall_minus_boot_ms: i64,
    jumped_ms: i64,
}

static ANCHOR: Mutex<Option<Anchor>> = Mutex::new(None);

fn with_anchor<T>(f: impl FnOnce(&mut Anchor) -> T) -> T {
    let mut guard = ANCHOR.lock().unwrap_or_else(|e| e.into_inner());
    let anchor = guard.get_or_insert_with(|| Anchor {
        wall_minus_boot_ms: clock::wall_minus_boot_ms(),
        jumped_ms: 0,
    });
    f(anchor)
}

/// Wall time to stamp recordings with (unix ms), and the epoch it belongs to: the sum of
/// the jumps seen when it was taken. A stamp taken at epoch `e` is right at epoch `e'`
/// once moved by `e' - e`.
pub fn recording_now() -> (i64, i64) {
    let (offset, epoch) = with_anchor(|a| (a.wall_minus_boot_ms, a.jumped_ms));
    (clock::boot_ms() + offset, epoch)
}

/// [`recording_now`]'s time as a stamp of `epoch` (an older epoch: the time minus the
/// jumps seen since), for a value stored next to stamps of that epoch.
pub fn recording_now_at(epoch: i64) -> i64 {
    let (now, current) = recording_now();
    now - (current - epoch)
}

/// Notified at each jump (after [`epoch`] has moved), for work that must follow at once.
pub fn jumped() -> &'static tokio::sync::Notify {
    static JUMPED: tokio::sync::Notify = tokio::sync::Notify::const_new();
    &JUMPED
}

/// The recording clock's current epoch (see [`recording_now`]).
pub fn epoch() -> i64 {
    with_anchor(|a| a.jumped_ms)
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
        let offset = clock::wall_minus_boot_ms();
        let jump = detector.observe(offset);
        with_anchor(|a| {
            a.wall_minus_boot_ms = offset;
            a.jumped_ms += jump.unwrap_or(0);
        });
        if let Some(step) = jump {
            jumped().notify_waiters();
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
