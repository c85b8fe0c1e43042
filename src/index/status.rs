//! Status callbacks (`event_type` 332, SPECS.md): which state change of a recording is
//! which event, and queueing it in the callback outbox inside the transaction that makes
//! the change, so an event is queued exactly when its change is durable (a crash loses
//! neither, and never sends one without the other). The notifier delivers them like
//! completion callbacks: signed, retried, at least once, `Idempotency-Key` = the row id
//! (`<recording id>.status<seq>`).
//!
//! Events: `record_start_succeeded` at the first durable segment (a publisher that leaves
//! before one is written leaves no recording and so no event); `record_paused` when the
//! publisher leaves and the recording waits in its resume window; `record_resumed` when a
//! publish continues it; `record_ended` when it closes; `record_error` when it fails.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{callback_body, encode, CallbackRow, IndexError, RecordingRow, RecordingState};
use crate::config::CallbackConfig;

/// The event a change from `before` to `after` makes, if any.
pub(super) fn event_for(before: &RecordingRow, after: &RecordingRow) -> Option<&'static str> {
    use RecordingState::*;
    let started = before.events > 0;
    match (before.state, after.state) {
        _ if before.segments == 0 && after.segments > 0 && !started => {
            Some("record_start_succeeded")
        }
        (Recording, Resumable) if started => Some("record_paused"),
        (Resumable, Recording) if started => Some("record_resumed"),
        (Recording | Resumable, Finished) if started => Some("record_ended"),
        (from, Failed) if from != Failed => Some("record_error"),
        _ => None,
    }
}

/// Queues the event `before` -> `row` makes (if any) and counts it in `row`, which the
/// caller then writes in the same transaction.
pub(super) fn queue(
    outbox: &TransactionalTree,
    config: Option<&CallbackConfig>,
    before: &RecordingRow,
    row: &mut RecordingRow,
) -> Result<(), ConflictableTransactionError<IndexError>> {
    let Some(config) = config else {
        return Ok(());
    };
    let Some(event) = event_for(before, row) else {
        return Ok(());
    };
    row.events += 1;
    let now = crate::clock::now_ms();
    let body =
        callback_body::status_body(row, config, event, row.events, now, row.failure.as_deref());
    let id = format!("{}.status{:04}", row.id, row.events);
    let callback = CallbackRow::pending(&id, &config.url, body, now);
    outbox.insert(id.as_bytes(), encode(&callback))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_map_to_events_once_started() {
        let mut a = RecordingRow::new("r".into(), "live".into(), "cam".into(), 0);
        let mut b = a.clone();
        b.segments = 1;
        assert_eq!(event_for(&a, &b), Some("record_start_succeeded"));
        a.segments = 1;
        a.events = 1;
        b.events = 1;
        let with = |state| {
            let mut r = a.clone();
            r.state = state;
            r
        };
        use RecordingState::*;
        assert_eq!(
            event_for(&with(Recording), &with(Resumable)),
            Some("record_paused")
        );
        assert_eq!(
            event_for(&with(Resumable), &with(Recording)),
            Some("record_resumed")
        );
        assert_eq!(
            event_for(&with(Resumable), &with(Finished)),
            Some("record_ended")
        );
        assert_eq!(
            event_for(&with(Recording), &with(Finished)),
            Some("record_ended")
        );
        assert_eq!(
            event_for(&with(Recording), &with(Failed)),
            Some("record_error")
        );
        assert_eq!(event_for(&with(Recording), &with(Recording)), None);
        assert_eq!(event_for(&with(Failed), &with(Failed)), None);
        // Never started (no segment): no pause or end, but a failure is told.
        let mut fresh = RecordingRow::new("r".into(), "live".into(), "cam".into(), 0);
        let mut gone = fresh.clone();
        gone.state = Finished;
        assert_eq!(event_for(&fresh, &gone), None);
        gone.state = Failed;
        fresh.state = Recording;
        assert_eq!(event_for(&fresh, &gone), Some("record_error"));
    }
}
