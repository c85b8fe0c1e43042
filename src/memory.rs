//! The allocator's share of "bounded memory per stream", on glibc (the boards' libc).
//!
//! Owns two settings, measured with `scripts/bench_cameras.py` (32 pulled cameras at
//! 2 Mb/s: RSS per extra camera 0.66 MB with glibc's defaults; 0.54 MB with a 128 KiB
//! threshold and a trim every 30 s; 0.46-0.50 MB with 32 KiB and 10 s):
//! - a fixed mmap threshold ([`tune`], at start). glibc raises its threshold each time a
//!   mapped block is freed, after which every stream's segment write buffer (~160 KiB,
//!   replaced at each cut), retina's read ring and each keyframe's PES copy come from the
//!   per-thread malloc arenas (one recorder thread per stream), where freed pages stay
//!   resident until a trim. Fixed at 32 KiB, those blocks are mapped and unmapped with
//!   their owner (a few per second per stream) and RSS counts only pages in use.
//! - a periodic `malloc_trim` ([`run_trim`]), which hands the free pages inside the arenas
//!   back to the kernel: the churn of small frames between trims, and a burst (a reconnect
//!   storm, an API export), do not stay in RSS. A trim takes well under a millisecond.
//!
//! Elsewhere (musl, other systems) both are no-ops.
//!
//! Hand-written `unsafe` because no crate wraps glibc's `mallopt`/`malloc_trim` (nix does
//! not): two calls that take plain integers and touch no memory of ours.

#![allow(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Blocks at least this large are mapped on their own and returned when freed.
const MMAP_THRESHOLD: i32 = 32 * 1024;
/// How often free arena pages go back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Sets the allocator up for many long-lived streams; call once, early in `main`.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; M_MMAP_THRESHOLD takes a size.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused");
        }
    }
}

/// Returns free arena pages to the kernel every [`TRIM_EVERY`] until `cancel`.
pub async fn run_trim(cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        // It takes each arena's lock in turn: off the event loop.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; 0 keeps no padding at the top.
    unsafe {
        libc::malloc_trim(0);
    }
}
