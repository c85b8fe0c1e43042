//! Deleting one recording (an HLS recording or one MP4/FLV/AAC file) and the queue of
//! store objects to remove after it (tree `store_deletes`).
//!
//! Recordings share their capture's segments, so a delete hides the recording (its row,
//! search entry and upload work go in one transaction) and frees the capture only when no
//! recording over it is left: then the capture is marked `deleting` and the caller runs
//! the rest of invariant 3 (unlink, remove the rows), as retention does.
//!
//! What the recording has (or may have) in the store goes into a [`StoreDeleteRow`] in
//! the same transaction: every object key and every multipart upload to abort. The
//! uploader's deleter removes them, retrying through outages and restarts like uploads;
//! an object whose upload was in flight when its row went is added by the worker that
//! finishes it (`queue_store_delete`), so none is left behind.
//!
//! Trees: `store_deletes`: recording id -> JSON [`StoreDeleteRow`].

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{
    abort, decode, encode, expiry, flatten, needs_attention, search, FileRow, FileState, Index,
    IndexError, RecordingRow, SearchEntry, UploadRow,
};

/// Store objects still to remove for a deleted recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreDeleteRow {
    pub id: String,
    /// Object keys to delete (one already gone counts as deleted).
    pub keys: Vec<String>,
    /// Multipart uploads to abort: (object key, upload id).
    pub aborts: Vec<(String, String)>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Not tried before this wall time (unix ms).
    pub next_attempt_ms: i64,
    pub created_ms: i64,
}

/// Why a recording was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("no recording {0}")]
    NotFound(String),
    #[error("recording {0} is {1}")]
    Open(String, &'static str),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    /// Store objects (and multipart uploads) queued for removal.
    pub store_objects: usize,
    /// No recording is left over the capture: it is marked `deleting`, and the caller
    /// must remove its folder and rows (invariant 3, phases 2 and 3).
    pub capture: Option<RecordingRow>,
}

impl Index {
    /// Deletes a recording from the index: see the module doc. Refuses one that is still
    /// being recorded (or, for a file, whose capture is still making files).
    pub fn delete_recording(&self, id: &str) -> Result<Deleted, DeleteError> {
        let not_found = || DeleteError::NotFound(id.to_owned());
        let (capture_id, file) = match FileRow::capture_of(id) {
            Some(capture_id) => {
                let file = self.get_file(id)?.ok_or_else(not_found)?;
                (capture_id.to_owned(), Some(file))
            }
            None => (id.to_owned(), None),
        };
        let capture = self
            .get_recording(&capture_id)?
            .filter(|c| !c.deleting)
            .ok_or_else(not_found)?;
        if file.is_none() && !capture.has_hls() {
            return Err(not_found());
        }
        // A task's recording over a rule's capture is final once its window closed: it
        // can go while the rule's capture records on (which it never frees).
        let overlay = file.as_ref().filter(|f| f.is_overlay());
        if let Some(f) = overlay {
            let window_open = self
                .overlays_of(&capture_id)?
                .iter()
                .any(|o| f.task_id.as_deref() == Some(o.task_id.as_str()));
            if f.state == FileState::Recording || window_open {
                return Err(DeleteError::Open(
                    id.to_owned(),
                    "still being made (its task window is open)",
                ));
            }
        } else if capture.state.is_open() {
            return Err(DeleteError::Open(id.to_owned(), capture.state.as_str()));
        }
        if let Some(f) = file.as_ref().filter(|f| !f.is_overlay()) {
            let planning = self
                .files_pending
                .contains_key(capture_id.as_bytes())
                .map_err(IndexError::from)?;
            if f.state == FileState::Recording || planning {
                return Err(DeleteError::Open(id.to_owned(), "still being made"));
            }
        }
        // What is (or may be) in the store.
        let objects = match &file {
            Some(f) if f.format == crate::config::Format::Hls => self.uploads_of(id)?,
            Some(_) => self
                .get_upload(&UploadRow::file_id(id))?
                .into_iter()
                .collect(),
            None => self.uploads_of(id)?,
        };
        let mut keys: Vec<String> = Vec::new();
        let mut aborts = Vec::new();
        for object in &objects {
            keys.push(object.key.clone());
            if let Some(m) = &object.multipart {
                aborts.push((object.key.clone(), m.upload_id.clone()));
            }
        }
        match &file {
            Some(f) if f.format == crate::config::Format::Hls => {
                // A task's HLS recording: its folder's segments and playlist.
                if let Some(base) = &f.store_key {
                    for seg in self.segment_span(&capture_id, f.first_seq, f.last_seq)? {
                        if !seg.gap {
                            keys.push(format!("{base}/{}", seg.file));
                        }
                    }
                    keys.push(format!("{base}/index.m3u8"));
                }
            }
            Some(f) => keys.extend(f.store_key.clone()),
            None => {
                if let Some(base) = &capture.store_path {
                    for seg in self.segments(id)? {
                        if !seg.gap {
                            keys.push(format!("{base}/{}", seg.file));
                        }
                    }
                    keys.push(format!("{base}/index.m3u8"));
                }
            }
        }
        keys.sort();
        keys.dedup();
        let other_files: Vec<FileRow> = self
            .files_of(&capture_id)?
            .into_iter()
            .filter(|f| f.id != id)
            .collect();
        // A task window over the capture may still add recordings: it cannot go yet.
        let would_free = other_files.is_empty() && (file.is_none() || !capture.has_hls());
        if would_free && !self.overlays_of(&capture_id)?.is_empty() {
            return Err(DeleteError::Open(
                id.to_owned(),
                "still needed by a task window over its capture (try again in a few seconds)",
            ));
        }
        let now = crate::clock::now_ms();
        let queued = StoreDeleteRow {
            id: id.to_owned(),
            keys,
            aborts,
            attempts: 0,
            last_error: None,
            next_attempt_ms: now,
            created_ms: now,
        };
        let store_objects = queued.keys.len() + queued.aborts.len();
        let object_ids: Vec<String> = objects.iter().map(|o| o.id.clone()).collect();
        let capture = (
            &self.recordings,
            &self.files,
            &self.uploads,
            &self.upload_pending,
            &self.search,
            &self.store_deletes,
            &self.attention,
            &self.store_expiry,
            &self.resident,
        )
            .transaction(
                |(
                    recordings,
                    files,
                    uploads,
                    pending,
                    search_tree,
                    deletes,
                    attention,
                    expiry,
                    resident,
                )| {
                    let bytes = recordings
                        .get(capture_id.as_bytes())?
                        .ok_or_else(|| abort(IndexError::NoSuchRecording(capture_id.clone())))?;
                    let mut row: RecordingRow =
                        decode(capture_id.as_bytes(), &bytes).map_err(abort)?;
                    let before = SearchEntry::of_capture(&row);
                    match &file {
                        Some(f) => {
                            files.remove(f.id.as_bytes())?;
                            search::sync(search_tree, Some(&SearchEntry::of_file(f)), None)?;
                            expiry::cancel(expiry, id, f.store_expiry)?;
                            row.deleted_files.push(f.id.clone());
                        }
                        None => {
                            row.hls_deleted = true;
                            expiry::cancel(expiry, id, row.store_expiry)?;
                        }
                    }
                    for object in &object_ids {
                        uploads.remove(object.as_bytes())?;
                    }
                    pending.remove(id.as_bytes())?;
                    if store_objects > 0 {
                        deletes.insert(id.as_bytes(), encode(&queued))?;
                    }
                    // The capture goes when nothing over it is left.
                    let freed = other_files.is_empty() && !row.has_hls() && !row.state.is_open();
                    if freed {
                        row.deleting = true;
                        pending.remove(capture_id.as_bytes())?;
                    }
                    if needs_attention(&row) {
                        attention.insert(capture_id.as_bytes(), &[])?;
                    }
                    super::sync_resident(resident, &row)?;
                    search::sync(
                        search_tree,
                        before.as_ref(),
                        SearchEntry::of_capture(&row).as_ref(),
                    )?;
                    recordings.insert(capture_id.as_bytes(), encode(&row))?;
                    Ok(freed.then_some(row))
                },
            )
            .map_err(flatten)?;
        self.flush()?;
        Ok(Deleted {
            store_objects,
            capture,
        })
    }

    /// Adds store objects to remove for `id` (merged into its row if one is queued).
    pub fn queue_store_delete(
        &self,
        id: &str,
        keys: &[String],
        aborts: &[(String, String)],
    ) -> Result<(), IndexError> {
        let now = crate::clock::now_ms();
        self.store_deletes
            .transaction(|deletes| merge_store_delete(deletes, id, keys, aborts, now))
            .map_err(flatten)?;
        self.flush()
    }

    /// Every queued store delete, oldest recording id first.
    pub fn store_deletes(&self) -> Result<Vec<StoreDeleteRow>, IndexError> {
        self.store_deletes
            .iter()
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn get_store_delete(&self, id: &str) -> Result<Option<StoreDeleteRow>, IndexError> {
        match self.store_deletes.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Stores a store delete's progress (what is left, attempts); `None` when all is done.
    /// Keys queued meanwhile by [`Index::queue_store_delete`] are kept.
    pub fn settle_store_delete(
        &self,
        id: &str,
        done_keys: &[String],
        done_aborts: &[(String, String)],
        failure: Option<(String, i64)>,
    ) -> Result<(), IndexError> {
        self.store_deletes
            .transaction(|deletes| {
                let Some(bytes) = deletes.get(id.as_bytes())? else {
                    return Ok(());
                };
                let mut row: StoreDeleteRow = decode(id.as_bytes(), &bytes).map_err(abort)?;
                row.keys.retain(|k| !done_keys.contains(k));
                row.aborts.retain(|a| !done_aborts.contains(a));
                if row.keys.is_empty() && row.aborts.is_empty() {
                    deletes.remove(id.as_bytes())?;
                    return Ok(());
                }
                if let Some((error, next_ms)) = &failure {
                    row.attempts += 1;
                    row.last_error = Some(error.clone());
                    row.next_attempt_ms = *next_ms;
                }
                deletes.insert(id.as_bytes(), encode(&row))?;
                Ok(())
            })
            .map_err(flatten)?;
        self.flush()
    }
}

/// Adds `keys` and `aborts` to `id`'s queued store delete (made if there is none), due
/// now; inside the caller's transaction.
pub(super) fn merge_store_delete(
    deletes: &TransactionalTree,
    id: &str,
    keys: &[String],
    aborts: &[(String, String)],
    now: i64,
) -> Result<(), ConflictableTransactionError<IndexError>> {
    let mut row = match deletes.get(id.as_bytes())? {
        Some(bytes) => decode::<StoreDeleteRow>(id.as_bytes(), &bytes).map_err(abort)?,
        None => StoreDeleteRow {
            id: id.to_owned(),
            keys: Vec::new(),
            aborts: Vec::new(),
            attempts: 0,
            last_error: None,
            next_attempt_ms: now,
            created_ms: now,
        },
    };
    for key in keys {
        if !row.keys.contains(key) {
            row.keys.push(key.clone());
        }
    }
    for a in aborts {
        if !row.aborts.contains(a) {
            row.aborts.push(a.clone());
        }
    }
    row.next_attempt_ms = now;
    deletes.insert(id.as_bytes(), encode(&row))?;
    Ok(())
}
