//! Store retention: a template's `storage_time_s` (0 = keep forever).
//!
//! When a recording is complete in the store and its format has a storage time, the
//! object keys it put there are filed under the instant they expire, in the transaction
//! that marks it uploaded, and the row says when ([`StoreExpiry`]). The uploader's deleter
//! calls [`Index::expire_store_objects`] on each pass: what is due moves into the
//! `store_deletes` queue (see `deletes.rs`), so it is removed, and retried through outages
//! and restarts, exactly as a delete is. Only the store's copy goes; the box's own files
//! follow local retention and the disk policy.
//!
//! The keys are kept with the expiry rather than read from the row when it is due, because
//! local retention may have removed the row by then and the store's copy must still go.
//! Deleting the recording drops its expiry (the delete queues the same objects now).
//!
//! Tree `store_expiry`: expiry (unix ms, i64 BE, so a range scan yields what is due, in
//! order) + recording id -> JSON list of object keys.

use serde::{Deserialize, Serialize};
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::Transactional;

use super::{abort, decode, encode, flatten, FileRow, Index, IndexError, RecordingRow};

/// When a recording's objects leave the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreExpiry {
    /// Uploaded time + the format's `storage_time_s` (unix ms).
    pub expires_ms: i64,
    /// When the objects were queued for removal (unix ms); None until then.
    pub expired_ms: Option<i64>,
}

fn expiry_key(expires_ms: i64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&expires_ms.max(0).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Files `keys` of recording `id`, uploaded at `uploaded_ms`, to expire after
/// `storage_time_s` (inside the caller's transaction). None when they are kept forever.
pub(super) fn schedule(
    tree: &TransactionalTree,
    id: &str,
    uploaded_ms: i64,
    storage_time_s: u64,
    keys: &[String],
) -> Result<Option<StoreExpiry>, UnabortableTransactionError> {
    if storage_time_s == 0 || keys.is_empty() {
        return Ok(None);
    }
    let storage_ms = i64::try_from(storage_time_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let expires_ms = uploaded_ms.saturating_add(storage_ms);
    tree.insert(expiry_key(expires_ms, id), encode(&keys))?;
    Ok(Some(StoreExpiry {
        expires_ms,
        expired_ms: None,
    }))
}

/// Forgets a pending expiry (the recording is deleted; inside the caller's transaction).
pub(super) fn cancel(
    tree: &TransactionalTree,
    id: &str,
    expiry: Option<StoreExpiry>,
) -> Result<(), UnabortableTransactionError> {
    if let Some(e) = expiry.filter(|e| e.expired_ms.is_none()) {
        tree.remove(expiry_key(e.expires_ms, id))?;
    }
    Ok(())
}

impl Index {
    /// Queues the store objects whose storage time has run out by `now_ms` for removal
    /// (see the module doc) and marks their rows; returns the recording ids.
    pub fn expire_store_objects(&self, now_ms: i64) -> Result<Vec<String>, IndexError> {
        let end = (now_ms.max(0) as u64 + 1).to_be_bytes();
        let due: Vec<_> = self
            .store_expiry
            .range(..end.as_slice())
            .collect::<Result<_, _>>()?;
        let mut expired = Vec::with_capacity(due.len());
        for (key, value) in due {
            let id = String::from_utf8_lossy(&key[8.min(key.len())..]).into_owned();
            let keys: Vec<String> = decode(&key, &value)?;
            (
                &self.store_expiry,
                &self.store_deletes,
                &self.recordings,
                &self.files,
            )
                .transaction(|(expiry, deletes, recordings, files)| {
                    expiry.remove(&key)?;
                    super::deletes::merge_store_delete(deletes, &id, &keys, &[], now_ms)?;
                    match FileRow::capture_of(&id) {
                        Some(_) => {
                            if let Some(bytes) = files.get(id.as_bytes())? {
                                let mut row: FileRow =
                                    decode(id.as_bytes(), &bytes).map_err(abort)?;
                                mark_expired(&mut row.store_expiry, now_ms);
                                files.insert(id.as_bytes(), encode(&row))?;
                            }
                        }
                        None => {
                            if let Some(bytes) = recordings.get(id.as_bytes())? {
                                let mut row: RecordingRow =
                                    decode(id.as_bytes(), &bytes).map_err(abort)?;
                                mark_expired(&mut row.store_expiry, now_ms);
                                recordings.insert(id.as_bytes(), encode(&row))?;
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(flatten)?;
            expired.push(id);
        }
        if !expired.is_empty() {
            self.flush()?;
        }
        Ok(expired)
    }
}

fn mark_expired(expiry: &mut Option<StoreExpiry>, now_ms: i64) {
    if let Some(e) = expiry {
        e.expired_ms.get_or_insert(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Template;
    use crate::index::{ObjectKind, PendingRow, UploadRow, UploadState};

    fn object(id: String, key: &str) -> UploadRow {
        UploadRow {
            id,
            recording_id: "r1".into(),
            kind: ObjectKind::Playlist,
            key: key.into(),
            size: 1,
            state: UploadState::Uploaded,
            multipart: None,
            attempts: 0,
            last_error: None,
            next_attempt_ms: 0,
            created_ms: 0,
            uploaded_ms: Some(1),
            skipped: false,
            failures: 0,
        }
    }

    /// A recording with `storage_time_s` on its HLS output, uploaded at 1,000 ms.
    fn uploaded(index: &Index, id: &str, storage_time_s: u64) {
        let mut row = RecordingRow::new(id.into(), "live".into(), id.into(), 0);
        let mut template = Template::builtin_default();
        template.hls.as_mut().unwrap().storage_time_s = storage_time_s;
        row.template = Some(template);
        index.create_recording(&row).unwrap();
        let mut objects = vec![object(UploadRow::segment_id(id, 1), "p/1.ts")];
        objects.push(object(UploadRow::playlist_id(id), "p/index.m3u8"));
        for o in &mut objects {
            o.recording_id = id.into();
        }
        index
            .queue_uploads(id, &objects, &PendingRow::default())
            .unwrap();
        index.complete_upload(id, 1_000, None).unwrap();
    }

    #[test]
    fn objects_are_queued_for_removal_once_their_storage_time_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        uploaded(&index, "r1", 10);
        uploaded(&index, "forever", 0);
        let row = index.get_recording("r1").unwrap().unwrap();
        assert_eq!(
            row.store_expiry,
            Some(StoreExpiry {
                expires_ms: 11_000,
                expired_ms: None
            })
        );
        assert_eq!(
            index
                .get_recording("forever")
                .unwrap()
                .unwrap()
                .store_expiry,
            None
        );

        assert!(index.expire_store_objects(10_999).unwrap().is_empty());
        assert!(index.store_deletes().unwrap().is_empty());
        assert_eq!(index.expire_store_objects(11_000).unwrap(), ["r1"]);
        let queued = index.store_deletes().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].keys, ["p/1.ts", "p/index.m3u8"]);
        let row = index.get_recording("r1").unwrap().unwrap();
        assert_eq!(row.store_expiry.unwrap().expired_ms, Some(11_000));
        assert!(
            row.uploaded_ms.is_some(),
            "still uploaded: the box's copy stays"
        );
        // Once only.
        assert!(index.expire_store_objects(99_000).unwrap().is_empty());
    }

    #[test]
    fn the_store_copy_expires_after_local_retention_removed_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        uploaded(&index, "r1", 10);
        index.remove_recording("r1").unwrap();
        assert_eq!(index.expire_store_objects(11_000).unwrap(), ["r1"]);
        assert_eq!(index.store_deletes().unwrap()[0].keys.len(), 2);
    }

    #[test]
    fn keys_order_by_expiry_then_id() {
        assert!(expiry_key(999, "z") < expiry_key(1000, "a"));
        assert!(expiry_key(1000, "a") < expiry_key(1000, "b"));
        assert!(expiry_key(1 << 40, "a") > expiry_key(255, "a"));
        // A time before 1970 sorts first rather than after every positive one.
        assert_eq!(expiry_key(-5, "a"), expiry_key(0, "a"));
    }
}
