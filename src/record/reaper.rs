//! The resume window's end: [`run_resume_reaper`] finishes resumable recordings whose
//! window passed while their stream stayed away.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{now_ms, Recorders};
use crate::index::{IndexError, RecordingRow, RecordingState, Update};

/// Finishes resumable recordings whose window has passed (and whose stream is not live
/// again). Runs until cancelled. Sleeps until the earliest window ends, a writer thread
/// ends, or [`REAPER_MAX_SLEEP`] passes, so an idle box is not woken twice a second.
pub async fn run_resume_reaper(recorders: Recorders, cancel: CancellationToken) {
    loop {
        let r = recorders.clone();
        let result = tokio::task::spawn_blocking(move || finish_expired(&r)).await;
        let next_due_ms = match result {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "resume window check failed");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "resume window task failed");
                None
            }
        };
        let wait = next_due_ms.map_or(REAPER_MAX_SLEEP, |due| {
            // A little past the deadline, so the row is due when we look again.
            let ms = u64::try_from(due - now_ms()).unwrap_or(0) + 50;
            Duration::from_millis(ms).min(REAPER_MAX_SLEEP)
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = recorders.inner.ended.notified() => {}
            // Move waiting recordings' times (and deadlines) with the clock at once.
            _ = crate::clock_watch::jumped().notified() => {}
        }
    }
}

/// Longest the resume reaper sleeps without a reason to look.
const REAPER_MAX_SLEEP: Duration = Duration::from_secs(5);

/// Finishes the expired windows; returns when the next live window ends (ms since the
/// epoch), if any recording is waiting for one.
fn finish_expired(recorders: &Recorders) -> Result<Option<i64>, IndexError> {
    let index = recorders.index();
    let clock = &recorders.inner.clock;
    let open = index.open_entries()?;
    clock.retain(|id| open.iter().any(|(_, open_id)| open_id == id));
    let mut next_due: Option<i64> = None;
    for (stream_key, id) in open {
        if recorders.is_live(&stream_key) {
            continue;
        }
        // Its deadline on the clock it was stamped with (moved if the clock jumped since).
        // Written only when the window has passed: a pass every few seconds must not sync
        // the index for recordings still waiting.
        let row = clock.on_current_clock(index, &id, true, |epoch| {
            let now = crate::clock_watch::recording_now_at(epoch);
            let Some(row) = index.get_recording(&id)? else {
                return Ok(None);
            };
            let expired = |r: &RecordingRow| {
                r.state == RecordingState::Resumable
                    && r.resumable_until_ms.is_none_or(|u| u <= now)
            };
            if !expired(&row) {
                return Ok(Some((row, now)));
            }
            let row = index.update_recording(&id, |r| {
                if expired(r) {
                    r.state = RecordingState::Finished;
                    r.resumable_until_ms = None;
                    Update::Write
                } else {
                    Update::Skip
                }
            });
            match row {
                Err(IndexError::NoSuchRecording(_)) => Ok(None),
                other => other.map(|row| Some((row, now))),
            }
        })?;
        let Some((row, now)) = row else {
            continue;
        };
        match row.state {
            RecordingState::Finished => {
                tracing::info!(recording = %id, segments = row.segments, duration_s = row.duration_s(), "resume window passed; recording finished");
            }
            RecordingState::Resumable => {
                if let Some(until) = row.resumable_until_ms {
                    // As a deadline on the wall clock the sleep is measured against.
                    let until = until + (crate::clock::now_ms() - now);
                    next_due = Some(next_due.map_or(until, |n| n.min(until)));
                }
            }
            _ => {}
        }
    }
    Ok(next_due)
}
