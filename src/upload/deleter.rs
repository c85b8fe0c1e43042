//! Removes deleted recordings' objects from the store: the index's `store_deletes`
//! queue (see `index/deletes.rs`), into which each pass first moves the objects whose
//! template's `storage_time_s` has run out (`index/expiry.rs`). Each row's multipart uploads are aborted and its
//! objects deleted (one already gone counts as deleted); what fails waits and is tried
//! again (5 s doubling to 5 min), through outages and restarts, and the API shows it
//! meanwhile. What succeeded is dropped from the row as it goes, so a retry sends only
//! what is left.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::clock::now_ms;
use crate::index::StoreDeleteRow;

/// How often the queue is looked at when nothing wakes the deleter.
const POLL: Duration = Duration::from_secs(5);

/// The wait before the next attempt after `attempts` failed ones.
fn backoff_ms(attempts: u32) -> i64 {
    (5_000i64 << attempts.min(6)).min(300_000)
}

pub(super) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let index = shared.index.clone();
        let now = now_ms();
        let due = tokio::task::spawn_blocking(move || {
            for id in index.expire_store_objects(now)? {
                tracing::info!(recording = %id, "storage time over; removing its objects from the store");
            }
            index.store_deletes()
        })
        .await;
        match due {
            Ok(Ok(rows)) => {
                for row in rows.into_iter().filter(|r| r.next_attempt_ms <= now) {
                    if cancel.is_cancelled() {
                        return;
                    }
                    remove(&shared, row).await;
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "store delete queue"),
            Err(_) => return,
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
            _ = shared.deletes_due.notified() => {}
        }
    }
}

async fn remove(shared: &Shared, row: StoreDeleteRow) {
    let mut done_aborts = Vec::new();
    let mut done_keys = Vec::new();
    let mut failure = None;
    for (key, upload_id) in &row.aborts {
        match shared.store.abort_multipart(key, upload_id).await {
            Ok(()) => done_aborts.push((key.clone(), upload_id.clone())),
            Err(e) => {
                failure = Some(e.message);
                break;
            }
        }
    }
    if failure.is_none() {
        for key in &row.keys {
            match shared.store.delete_object(key).await {
                Ok(()) => done_keys.push(key.clone()),
                Err(e) => {
                    failure = Some(e.message);
                    break;
                }
            }
        }
    }
    match &failure {
        None => {
            tracing::info!(recording = %row.id, objects = done_keys.len(), aborted = done_aborts.len(), "deleted from the store")
        }
        Some(error) => {
            tracing::warn!(recording = %row.id, %error, left = row.keys.len() - done_keys.len(),
            retry_in_s = backoff_ms(row.attempts) / 1000, "store delete not finished; retrying")
        }
    }
    let failure = failure.map(|e| (e, now_ms() + backoff_ms(row.attempts)));
    let index = shared.index.clone();
    let id = row.id.clone();
    let settled = tokio::task::spawn_blocking(move || {
        index.settle_store_delete(&id, &done_keys, &done_aborts, failure)
    })
    .await;
    if let Ok(Err(e)) = settled {
        tracing::error!(recording = %row.id, error = %e, "cannot store the store delete's progress");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_to_five_minutes() {
        let waits: Vec<i64> = (0..9).map(super::backoff_ms).collect();
        assert_eq!(
            waits,
            [5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000]
        );
    }
}
