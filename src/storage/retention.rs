//! Local retention and the disk policy (crash-safety invariant 5).
//!
//! - An uploaded recording's local files are evicted `keep_local_after_upload_s` after its
//!   upload; its rows stay, so it can still be found (and fetched from the store).
//! - Above the high watermark, uploaded recordings are evicted oldest first down to the
//!   low watermark, whatever their age.
//! - If that is not enough, `on_full` decides: `stop_new` refuses new publishes and keeps
//!   everything not yet uploaded; `delete_oldest` (opt-in) deletes the oldest closed
//!   recordings even if not uploaded. Both are logged as errors and shown in the API.
//!
//! Never touches an open recording.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::recovery::{finish_delete, RecoveryError};
use super::Storage;
use crate::config::{OnFull, StorageConfig};
use crate::index::{Index, RecordingRow, Update};

/// What the disk policy decided last; shared with the recorders and the API.
#[derive(Debug, Default)]
pub struct DiskState {
    refusing: AtomicBool,
    status: Mutex<DiskStatus>,
}

/// `GET /api/v1/storage`.
#[derive(Debug, Default, Clone, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct DiskStatus {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
    pub high_watermark_bytes: u64,
    pub low_watermark_bytes: u64,
    pub on_full: &'static str,
    pub accepting_new_recordings: bool,
    /// The last thing the policy did or could not do.
    pub last_action: Option<String>,
    pub evicted_recordings: u64,
    pub deleted_unuploaded_recordings: u64,
}

impl DiskState {
    /// Whether new publishes are accepted.
    pub fn accepting(&self) -> bool {
        !self.refusing.load(Ordering::Acquire)
    }

    pub fn status(&self) -> DiskStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.accepting_new_recordings = self.accepting();
        s
    }

    fn update(&self, f: impl FnOnce(&mut DiskStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The policy's inputs besides the index and files.
#[derive(Debug, Clone)]
pub struct Policy {
    pub storage: StorageConfig,
    /// How long uploaded files stay; None when uploads are off (nothing is evictable).
    pub keep_local: Option<Duration>,
}

/// Runs the policy every `check_interval_s` until `cancel`.
pub async fn run(
    index: Index,
    storage: Storage,
    policy: Policy,
    state: std::sync::Arc<DiskState>,
    cancel: CancellationToken,
) {
    let interval = Duration::from_secs(policy.storage.check_interval_s);
    loop {
        let (i, s, p, st) = (
            index.clone(),
            storage.clone(),
            policy.clone(),
            state.clone(),
        );
        match tokio::task::spawn_blocking(move || {
            check_once(&i, &s, &p, &st, crate::clock::now_ms())
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "disk policy"),
            Err(e) => tracing::error!(error = %e, "disk policy task"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

struct Usage {
    total: u64,
    used: u64,
}

fn usage(storage: &Storage) -> Result<Usage, RecoveryError> {
    let space = storage.disk_space().map_err(|source| RecoveryError::Io {
        path: storage.media_dir().display().to_string(),
        source,
    })?;
    Ok(Usage {
        total: space.total_bytes,
        used: space.total_bytes.saturating_sub(space.available_bytes),
    })
}

/// `(high, low)` watermarks in bytes in use.
fn watermarks(config: &StorageConfig, total: u64) -> (u64, u64) {
    match (config.high_watermark_bytes, config.low_watermark_bytes) {
        (Some(high), Some(low)) => (high, low),
        _ => (
            total / 100 * u64::from(config.high_watermark_percent),
            total / 100 * u64::from(config.low_watermark_percent),
        ),
    }
}

/// One pass of the policy.
pub fn check_once(
    index: &Index,
    storage: &Storage,
    policy: &Policy,
    state: &DiskState,
    now_ms: i64,
) -> Result<(), RecoveryError> {
    let mut u = usage(storage)?;
    let (high, low) = watermarks(&policy.storage, u.total);
    // Only closed captures with files on flash (the index's `resident` set, not every
    // row it keeps), and only when something may be evicted or deleted.
    let rows: Vec<RecordingRow> = if policy.keep_local.is_some() || u.used >= high {
        index.resident_recordings()?
    } else {
        Vec::new()
    };
    // When each capture had all its deliverables (HLS, MP4/FLV/AAC files) in the store.
    let mut delivered = std::collections::HashMap::new();
    for row in rows.iter().filter(|r| is_evictable(r)) {
        if let Some(t) = index.delivered_ms(row)? {
            delivered.insert(row.id.clone(), t);
        }
    }
    let mut evicted = 0;
    if let Some(keep) = policy.keep_local {
        let keep_ms = keep.as_millis() as i64;
        for row in rows
            .iter()
            .filter(|r| delivered.get(&r.id).is_some_and(|t| t + keep_ms <= now_ms))
        {
            evicted += u64::from(evict(index, storage, row, now_ms)?);
        }
        u = usage(storage)?;
    }
    let mut action = None;
    if u.used >= high {
        // Oldest first: recording ids start with their creation time.
        let mut candidates: Vec<&RecordingRow> = rows
            .iter()
            .filter(|r| policy.keep_local.is_some() && delivered.contains_key(&r.id))
            .collect();
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        for row in candidates {
            if u.used <= low {
                break;
            }
            evicted += u64::from(evict(index, storage, row, now_ms)?);
            u = usage(storage)?;
        }
        if evicted > 0 {
            action = Some(format!(
                "above the high watermark: evicted {evicted} uploaded recording(s)"
            ));
        }
    }
    let mut deleted = 0;
    if u.used >= high && policy.storage.on_full == OnFull::DeleteOldest {
        let mut victims: Vec<&RecordingRow> = rows
            .iter()
            .filter(|r| {
                r.is_terminal()
                    && !r.deleting
                    && r.evicted_ms.is_none()
                    && !delivered.contains_key(&r.id)
            })
            .collect();
        victims.sort_by(|a, b| a.id.cmp(&b.id));
        for row in victims {
            if u.used <= low {
                break;
            }
            tracing::error!(recording = %row.id, stream = %row.stream_key(), bytes = row.bytes, "disk full and on_full = delete_oldest: deleting a recording that was NOT uploaded");
            index.update_recording(&row.id, |r| {
                r.deleting = true;
                Update::Write
            })?;
            finish_delete(index, storage, row)?;
            deleted += 1;
            u = usage(storage)?;
        }
        if deleted > 0 {
            action = Some(format!("disk full: deleted {deleted} recording(s) that were not uploaded (on_full = delete_oldest)"));
        }
    }
    let refuse = u.used >= high;
    let was_refusing = state.refusing.swap(refuse, Ordering::AcqRel);
    if refuse && !was_refusing {
        tracing::error!(used = u.used, total = u.total, high_watermark = high, "disk above the high watermark and nothing left to evict: refusing new recordings (on_full = stop_new keeps every recording not yet uploaded)");
        action = Some(
            "disk above the high watermark with nothing evictable: refusing new recordings".into(),
        );
    } else if !refuse && was_refusing {
        tracing::warn!(
            used = u.used,
            high_watermark = high,
            "disk below the high watermark again: accepting new recordings"
        );
        action = Some("below the high watermark again: accepting new recordings".into());
    }
    if evicted > 0 {
        tracing::info!(
            evicted,
            used = u.used,
            "evicted local files of uploaded recordings"
        );
    }
    state.update(|s| {
        s.total_bytes = u.total;
        s.used_bytes = u.used;
        s.used_percent = if u.total == 0 {
            0.0
        } else {
            (u.used as f64 * 1000.0 / u.total as f64).round() / 10.0
        };
        s.high_watermark_bytes = high;
        s.low_watermark_bytes = low;
        s.on_full = match policy.storage.on_full {
            OnFull::StopNew => "stop_new",
            OnFull::DeleteOldest => "delete_oldest",
        };
        s.evicted_recordings += evicted;
        crate::metrics::global().evictions.inc_by(evicted);
        s.deleted_unuploaded_recordings += deleted;
        if action.is_some() {
            s.last_action = action;
        }
    });
    Ok(())
}

fn is_evictable(row: &RecordingRow) -> bool {
    row.is_terminal() && !row.deleting && row.evicted_ms.is_none()
}

/// Marks the recording evicted, then removes its folder (a crash in between leaves files
/// behind; evicted rows are skipped by recovery and fsck, and `fsck --repair` does not
/// remove a folder a row owns). Returns whether this call evicted it.
fn evict(
    index: &Index,
    storage: &Storage,
    row: &RecordingRow,
    now_ms: i64,
) -> Result<bool, RecoveryError> {
    let marked = std::cell::Cell::new(false);
    // The caller checked that every deliverable is in the store.
    index.update_recording(&row.id, |r| {
        marked.set(false);
        if r.evicted_ms.is_some() {
            return Update::Skip;
        }
        r.evicted_ms = Some(now_ms);
        marked.set(true);
        Update::Write
    })?;
    if !marked.get() {
        // Already evicted (earlier in this pass) or not uploaded: nothing to do.
        return Ok(false);
    }
    let dir = storage.recording_dir(&row.app, &row.stream, &row.id);
    storage
        .remove_recording_dir(&row.app, &row.stream, &row.id)
        .map_err(|source| RecoveryError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    tracing::info!(recording = %row.id, bytes = row.bytes, "evicted local files (uploaded)");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::RecordingState;

    #[test]
    fn watermarks_from_percent_or_bytes() {
        let mut c = StorageConfig::default();
        assert_eq!(watermarks(&c, 1000), (900, 800));
        c.high_watermark_bytes = Some(50);
        c.low_watermark_bytes = Some(10);
        assert_eq!(watermarks(&c, 1000), (50, 10));
    }

    fn finished(index: &Index, storage: &Storage, id: &str, uploaded: Option<i64>) {
        let mut row = RecordingRow::new(id.into(), "live".into(), "s".into(), 0);
        row.state = RecordingState::Finished;
        row.uploaded_ms = uploaded;
        index.create_recording(&row).unwrap();
        let dir = storage.create_recording_dir("live", "s", id).unwrap();
        std::fs::write(dir.join("00000001.ts"), vec![0u8; 4096]).unwrap();
    }

    #[test]
    fn only_uploaded_recordings_are_evicted_and_stop_new_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let storage = Storage::new(dir.path().join("media"));
        std::fs::create_dir_all(storage.media_dir()).unwrap();
        finished(&index, &storage, "a-old", Some(1_000));
        finished(&index, &storage, "b-new", None);
        let state = DiskState::default();
        // Watermarks of 1 byte: always "full".
        let policy = Policy {
            storage: StorageConfig {
                high_watermark_bytes: Some(1),
                low_watermark_bytes: Some(0),
                ..StorageConfig::default()
            },
            keep_local: Some(Duration::from_secs(3600)),
        };
        check_once(&index, &storage, &policy, &state, 2_000).unwrap();
        let a = index.get_recording("a-old").unwrap().unwrap();
        assert_eq!(a.evicted_ms, Some(2_000));
        assert!(!storage.recording_dir("live", "s", "a-old").exists());
        assert!(
            storage
                .recording_dir("live", "s", "b-new")
                .join("00000001.ts")
                .exists(),
            "not uploaded: kept"
        );
        assert!(!state.accepting());
        assert!(state.status().last_action.unwrap().contains("refusing"));

        // With a roomy disk, the policy accepts again and evicts only expired uploads. The
        // watermarks are bytes no disk reaches: the default percentages would make this
        // depend on how full the machine running the test is.
        let roomy = Policy {
            storage: StorageConfig {
                high_watermark_bytes: Some(u64::MAX),
                low_watermark_bytes: Some(u64::MAX - 1),
                ..StorageConfig::default()
            },
            keep_local: Some(Duration::from_secs(3600)),
        };
        check_once(&index, &storage, &roomy, &state, 3_000).unwrap();
        assert!(state.accepting());
    }

    #[test]
    fn delete_oldest_deletes_unuploaded_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let storage = Storage::new(dir.path().join("media"));
        std::fs::create_dir_all(storage.media_dir()).unwrap();
        finished(&index, &storage, "a", None);
        let policy = Policy {
            storage: StorageConfig {
                high_watermark_bytes: Some(1),
                low_watermark_bytes: Some(0),
                on_full: OnFull::DeleteOldest,
                ..StorageConfig::default()
            },
            keep_local: None,
        };
        let state = DiskState::default();
        check_once(&index, &storage, &policy, &state, 0).unwrap();
        assert!(index.get_recording("a").unwrap().is_none());
        assert_eq!(state.status().deleted_unuploaded_recordings, 1);
    }
}
