//! Keeps open recordings' wall times right when the wall clock jumps: a board without a
//! real-time clock boots in 1970 (or at its last shutdown time) and jumps when NTP first
//! syncs, and an NTP step later is a jump too. Without this, a recording that spans the
//! jump would start in 1970 and last 56 years, its program date times would leap, its
//! resume window would end at once (or not for days), and its files' names would be wrong.
//!
//! Owns each open recording's clock epoch: the `clock_watch` epoch (sum of the jumps seen)
//! its stored wall times were stamped at. [`ClockAnchors::on_current_clock`] moves a
//! recording's stored times onto the current epoch (its span, resume deadline, segments
//! and open files: `Index::shift_wall_clock`) before running what needs them, under that
//! recording's own lock, so a move and a segment commit of one recording never
//! interleave and recordings never wait on each other. Stamps come from
//! `clock_watch::recording_now`, which says which epoch they belong to.
//!
//! Callers: the session, before each segment commit and whenever it sees the epoch change;
//! the resume reaper, for recordings waiting in their window; `begin_recording`, before
//! it decides whether a window has passed. A recording carried over from before a
//! restart is adopted on the epoch current when it is first seen (its stamps came from
//! another process's clock, which this one cannot judge). Closed recordings are never
//! moved: their names, objects and callbacks are out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::index::{Index, IndexError, RecordingRow};

/// The epochs of the recordings this process stamps.
#[derive(Default)]
pub struct ClockAnchors {
    epochs: Mutex<HashMap<String, Arc<Mutex<i64>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClockAnchors {
    /// A recording whose stored wall times were stamped at `epoch` (a new one, or one
    /// resumed whose times this process did not stamp yet).
    pub fn track(&self, id: &str, epoch: i64) {
        lock(&self.epochs)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(epoch)));
    }

    fn entry(&self, id: &str) -> Arc<Mutex<i64>> {
        lock(&self.epochs)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(crate::clock_watch::epoch())))
            .clone()
    }

    /// Runs `f` with recording `id`'s stored times on the current epoch (moved there
    /// first if the clock jumped since they were stamped), passing that epoch, and holding
    /// the recording's lock until `f` returns. With `shift` false the stored times are
    /// adopted as they are (a recording dated by its publisher's clock, which did not
    /// jump).
    pub fn on_current_clock<T, E: From<IndexError>>(
        &self,
        index: &Index,
        id: &str,
        shift: bool,
        f: impl FnOnce(i64) -> Result<T, E>,
    ) -> Result<T, E> {
        let entry = self.entry(id);
        let mut stamped_at = lock(&entry);
        let now = crate::clock_watch::epoch();
        if *stamped_at != now {
            if shift {
                let row = index.shift_wall_clock(id, now - *stamped_at)?;
                log_moved(&row, now - *stamped_at);
            }
            *stamped_at = now;
        }
        f(now)
    }

    /// Forgets the recordings `is_open` says have closed.
    pub fn retain(&self, is_open: impl Fn(&str) -> bool) {
        lock(&self.epochs).retain(|id, _| is_open(id));
    }
}

fn log_moved(row: &RecordingRow, delta_ms: i64) {
    tracing::info!(recording = %row.id, stream = %row.stream_key(), moved_s = delta_ms as f64 / 1000.0,
        start = %crate::clock::rfc3339(row.start_ms),
        "the wall clock jumped during this recording: its times moved with it");
}
