//! The upload and callback rows and their sled trees (crash-safety invariant 4).
//!
//! Trees:
//! - `upload_pending`: recording id -> JSON [`PendingRow`]: recordings whose objects are
//!   not all in the store yet. A row is added in the same transaction that creates the
//!   recording, so the uploader only ever scans recordings that still need work.
//! - `uploads`: object id (`<recording id>.<seq:08>` or `<recording id>.playlist`, so a
//!   recording's playlist sorts after its segments) -> JSON [`UploadRow`].
//! - `outbox`: recording id -> JSON [`CallbackRow`]: callbacks to deliver (pending). The
//!   sender reads it every second, so a settled callback moves to
//! - `callbacks_done`: recording id -> JSON [`CallbackRow`]: delivered callbacks, kept
//!   for the API, or
//! - `callbacks_failed`: recording id -> JSON [`CallbackRow`]: callbacks that failed for
//!   good, until retried from the API. Out of the outbox, a receiver that is misconfigured
//!   for months does not make the sender decode every failed callback every second.
//!
//! A callback is in exactly one of the three; counting them reads keys only.
//!
//! A recording's object rows are removed in the transaction that marks it uploaded and
//! queues its callback; the recording row then carries the outcome (`uploaded_ms`).

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionError;
use sled::Transactional;

use super::{abort, decode, encode, flatten, Index, IndexError, RecordingRow, SearchEntry};

/// Per-recording progress of the planner.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingRow {
    /// Segments up to this sequence number have an object row.
    pub queued_through: u32,
    /// The playlist object has been queued (all segments were in the store).
    pub playlist_queued: bool,
}

/// What an object is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum ObjectKind {
    /// A sealed segment file of the recording.
    Segment { seq: u32, file: String },
    /// The finished VOD playlist, rendered from the index when it is sent.
    Playlist,
    /// An MP4/FLV/AAC file, derived from the capture's segments as it is sent. Its bytes
    /// depend on the muxer version: a multipart upload begun by another version starts
    /// over.
    File {
        format: crate::config::Format,
        muxer_version: u32,
        /// Fingerprint of the derived bytes the upload began with (header and length);
        /// 0 until the first part is sent.
        #[serde(default)]
        fingerprint: u64,
    },
}

/// Where an object is in its upload (DESIGN.md "Upload").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// Waiting for a worker.
    Queued,
    /// A multipart upload exists in the store (`multipart` says which parts are done).
    Uploading,
    /// The object is complete in the store.
    Uploaded,
    /// Parked after `max_attempts` failures of this object; kept until retried from the
    /// API. Store-wide faults (outage, credentials) never park an object.
    Failed,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Queued => "queued",
            UploadState::Uploading => "uploading",
            UploadState::Uploaded => "uploaded",
            UploadState::Failed => "failed",
        }
    }
}

/// One completed part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DonePart {
    pub number: u32,
    pub size: u64,
    pub etag: String,
}

/// A multipart upload as persisted before its first part is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multipart {
    pub upload_id: String,
    pub part_size: u64,
    /// Completed parts, ascending by number.
    pub parts: Vec<DonePart>,
}

/// One object to put in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRow {
    pub id: String,
    pub recording_id: String,
    pub kind: ObjectKind,
    /// The object key in the bucket (prefix included).
    pub key: String,
    /// Bytes of the object (the playlist's is known once rendered).
    pub size: u64,
    pub state: UploadState,
    pub multipart: Option<Multipart>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Not retried before this wall time (unix ms).
    pub next_attempt_ms: i64,
    pub created_ms: i64,
    pub uploaded_ms: Option<i64>,
    /// The segment file was missing and its row is a gap: nothing to send.
    #[serde(default)]
    pub skipped: bool,
    /// Failures of this object itself (not outages); `max_attempts` of them park it.
    #[serde(default)]
    pub failures: u32,
}

impl UploadRow {
    pub fn segment_id(recording_id: &str, seq: u32) -> String {
        format!("{recording_id}.{seq:08}")
    }

    pub fn playlist_id(recording_id: &str) -> String {
        format!("{recording_id}.playlist")
    }

    /// The one object of a file recording.
    pub fn file_id(file_id: &str) -> String {
        format!("{file_id}.file")
    }

    /// Bytes the store already holds for this object.
    pub fn bytes_done(&self) -> u64 {
        match (&self.state, &self.multipart) {
            (UploadState::Uploaded, _) => self.size,
            (_, Some(m)) => m.parts.iter().map(|p| p.size).sum(),
            _ => 0,
        }
    }
}

/// Delivery state of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackState {
    Pending,
    Delivered,
    /// Gave up after `max_attempts`; kept and shown, retried only from the API.
    Failed,
}

impl CallbackState {
    pub const ALL: [CallbackState; 3] = [
        CallbackState::Pending,
        CallbackState::Delivered,
        CallbackState::Failed,
    ];

    pub fn parse(s: &str) -> Option<CallbackState> {
        CallbackState::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallbackState::Pending => "pending",
            CallbackState::Delivered => "delivered",
            CallbackState::Failed => "failed",
        }
    }
}

/// One completion callback in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackRow {
    /// The recording id; also the `Idempotency-Key` and the body's `file_id`.
    pub id: String,
    pub url: String,
    /// The body without `t` and `sign`, which are added at each attempt.
    pub body: serde_json::Value,
    pub state: CallbackState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_ms: i64,
    pub created_ms: i64,
    pub delivered_ms: Option<i64>,
}

impl CallbackRow {
    /// A callback to deliver from `now_ms` on.
    pub fn pending(id: &str, url: &str, body: serde_json::Value, now_ms: i64) -> CallbackRow {
        CallbackRow {
            id: id.to_owned(),
            url: url.to_owned(),
            body,
            state: CallbackState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_ms: now_ms,
            created_ms: now_ms,
            delivered_ms: None,
        }
    }
}

impl Index {
    /// Recordings that still have objects to upload, with their planner progress.
    pub fn upload_pending(&self) -> Result<Vec<(String, PendingRow)>, IndexError> {
        self.upload_pending
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    decode(&key, &value)?,
                ))
            })
            .collect()
    }

    /// Adds (or re-adds) a recording to the planner's set, keeping existing progress.
    pub fn ensure_upload_pending(&self, recording_id: &str) -> Result<(), IndexError> {
        let inserted = self.upload_pending.compare_and_swap(
            recording_id.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(&PendingRow::default())),
        )?;
        if inserted.is_ok() {
            self.flush()?;
        }
        Ok(())
    }

    /// Inserts new object rows (existing ids are left alone) and the planner's progress,
    /// in one transaction.
    pub fn queue_uploads(
        &self,
        recording_id: &str,
        rows: &[UploadRow],
        progress: &PendingRow,
    ) -> Result<(), IndexError> {
        (&self.uploads, &self.upload_pending)
            .transaction(|(uploads, pending)| {
                for row in rows {
                    if uploads.get(row.id.as_bytes())?.is_none() {
                        uploads.insert(row.id.as_bytes(), encode(row))?;
                    }
                }
                pending.insert(recording_id.as_bytes(), encode(progress))?;
                Ok(())
            })
            .map_err(flatten)?;
        self.flush()
    }

    pub fn get_upload(&self, id: &str) -> Result<Option<UploadRow>, IndexError> {
        match self.uploads.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores an object row's new state; durable when this returns (invariant 4).
    /// Returns false (and writes nothing) if the row was removed meanwhile (its
    /// recording was deleted).
    pub fn put_upload(&self, row: &UploadRow) -> Result<bool, IndexError> {
        let key = row.id.as_bytes();
        let stored = self
            .uploads
            .transaction(|uploads| {
                if uploads.get(key)?.is_none() {
                    return Ok(false);
                }
                uploads.insert(key, encode(row))?;
                Ok(true)
            })
            .map_err(|e: TransactionError<IndexError>| flatten(e))?;
        self.flush()?;
        Ok(stored)
    }

    /// Every object row in key order (oldest recording first, playlist last).
    pub fn uploads(&self) -> impl Iterator<Item = Result<UploadRow, IndexError>> + '_ {
        self.uploads.iter().map(|item| {
            let (key, value) = item?;
            decode(&key, &value)
        })
    }

    /// A recording's object rows.
    pub fn uploads_of(&self, recording_id: &str) -> Result<Vec<UploadRow>, IndexError> {
        self.uploads
            .scan_prefix(format!("{recording_id}."))
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// Marks a recording uploaded at `uploaded_ms`: drops its object rows and planner
    /// entry, queues its callback and files its objects' expiry (`expiry.rs`), all in one
    /// transaction.
    pub fn complete_upload(
        &self,
        recording_id: &str,
        uploaded_ms: i64,
        callback: Option<&CallbackRow>,
    ) -> Result<RecordingRow, IndexError> {
        let mut keys = Vec::new();
        let mut objects = Vec::new();
        for item in self.uploads.scan_prefix(format!("{recording_id}.")) {
            let (key, value) = item?;
            let object: UploadRow = decode(&key, &value)?;
            keys.push(key);
            objects.push(object.key);
        }
        let id = recording_id.as_bytes();
        let row = (
            &self.recordings,
            &self.uploads,
            &self.upload_pending,
            &self.outbox,
            &self.search,
            &self.store_expiry,
        )
            .transaction(|(recordings, uploads, pending, outbox, search, expiry)| {
                let bytes = recordings
                    .get(id)?
                    .ok_or_else(|| abort(IndexError::NoSuchRecording(recording_id.to_owned())))?;
                let mut row: RecordingRow = decode(id, &bytes).map_err(abort)?;
                let before = SearchEntry::of_capture(&row);
                row.uploaded_ms = Some(uploaded_ms);
                let storage_time_s = row
                    .template
                    .as_ref()
                    .and_then(|t| t.hls.as_ref())
                    .map_or(0, |h| h.storage_time_s);
                row.store_expiry = super::expiry::schedule(
                    expiry,
                    recording_id,
                    uploaded_ms,
                    storage_time_s,
                    &objects,
                )?;
                recordings.insert(id, encode(&row))?;
                super::search::sync(
                    search,
                    before.as_ref(),
                    SearchEntry::of_capture(&row).as_ref(),
                )?;
                for key in &keys {
                    uploads.remove(key.as_ref())?;
                }
                pending.remove(id)?;
                if let Some(cb) = callback {
                    outbox.insert(cb.id.as_bytes(), encode(cb))?;
                }
                Ok(row)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(row)
    }

    /// Marks a file recording uploaded: drops its object row and planner entry, queues its
    /// callback and files its object's expiry, in one transaction.
    pub fn complete_file_upload(
        &self,
        file_id: &str,
        uploaded_ms: i64,
        callback: Option<&CallbackRow>,
    ) -> Result<(), IndexError> {
        let id = file_id.as_bytes();
        // One object for a file; a task's HLS recording has its segments and playlist.
        let objects = self.uploads_of(file_id)?;
        (
            &self.files,
            &self.uploads,
            &self.upload_pending,
            &self.outbox,
            &self.search,
            &self.store_expiry,
        )
            .transaction(|(files, uploads, pending, outbox, search, expiry)| {
                let bytes = files
                    .get(id)?
                    .ok_or_else(|| abort(IndexError::NoSuchRecording(file_id.to_owned())))?;
                let mut row: super::FileRow = decode(id, &bytes).map_err(abort)?;
                let before = SearchEntry::of_file(&row);
                row.uploaded_ms = Some(uploaded_ms);
                let keys: Vec<String> = match row.format {
                    crate::config::Format::Hls => objects
                        .iter()
                        .filter(|o| !o.skipped)
                        .map(|o| o.key.clone())
                        .collect(),
                    _ => row.store_key.iter().cloned().collect(),
                };
                row.store_expiry = super::expiry::schedule(
                    expiry,
                    file_id,
                    uploaded_ms,
                    row.storage_time_s,
                    &keys,
                )?;
                files.insert(id, encode(&row))?;
                super::search::sync(search, Some(&before), Some(&SearchEntry::of_file(&row)))?;
                for object in &objects {
                    uploads.remove(object.id.as_bytes())?;
                }
                pending.remove(id)?;
                if let Some(cb) = callback {
                    outbox.insert(cb.id.as_bytes(), encode(cb))?;
                }
                Ok(())
            })
            .map_err(flatten)?;
        self.flush()
    }

    /// Forgets a recording's upload work (the recording was deleted).
    pub fn drop_uploads(&self, recording_id: &str) -> Result<(), IndexError> {
        let keys: Vec<_> = self
            .uploads
            .scan_prefix(format!("{recording_id}."))
            .keys()
            .collect::<Result<_, _>>()?;
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        self.uploads.apply_batch(batch)?;
        self.upload_pending.remove(recording_id.as_bytes())?;
        self.flush()
    }

    /// Every callback, pending, delivered or failed, by id.
    pub fn callbacks(&self) -> Result<Vec<CallbackRow>, IndexError> {
        self.callbacks_in(&CallbackState::ALL)
    }

    /// The callbacks in `states`, by id; reads only their trees.
    pub fn callbacks_in(&self, states: &[CallbackState]) -> Result<Vec<CallbackRow>, IndexError> {
        let mut rows: Vec<CallbackRow> = Vec::new();
        for tree in states.iter().map(|&state| self.callback_tree(state)) {
            for item in tree.iter() {
                let (key, value) = item?;
                rows.push(decode(&key, &value)?);
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }

    /// The callbacks in the outbox: pending (what the sender reads).
    pub fn pending_callbacks(&self) -> Result<Vec<CallbackRow>, IndexError> {
        self.callbacks_in(&[CallbackState::Pending])
    }

    /// How many callbacks are in `state` (a scan of keys, nothing decoded).
    pub fn count_callbacks(&self, state: CallbackState) -> usize {
        self.callback_tree(state).len()
    }

    fn callback_tree(&self, state: CallbackState) -> &sled::Tree {
        match state {
            CallbackState::Pending => &self.outbox,
            CallbackState::Delivered => &self.callbacks_done,
            CallbackState::Failed => &self.callbacks_failed,
        }
    }

    pub fn get_callback(&self, id: &str) -> Result<Option<CallbackRow>, IndexError> {
        let key = id.as_bytes();
        for state in CallbackState::ALL {
            if let Some(bytes) = self.callback_tree(state).get(key)? {
                return Ok(Some(decode(key, &bytes)?));
            }
        }
        Ok(None)
    }

    /// Stores a callback's state in the tree of that state, removing it from the others.
    pub fn put_callback(&self, row: &CallbackRow) -> Result<(), IndexError> {
        let (key, value) = (row.id.as_bytes(), encode(row));
        (&self.outbox, &self.callbacks_done, &self.callbacks_failed)
            .transaction(|(pending, delivered, failed)| {
                for (state, tree) in [
                    (CallbackState::Pending, pending),
                    (CallbackState::Delivered, delivered),
                    (CallbackState::Failed, failed),
                ] {
                    if state == row.state {
                        tree.insert(key, value.as_slice())?;
                    } else {
                        tree.remove(key)?;
                    }
                }
                Ok(())
            })
            .map_err(flatten)?;
        self.flush()
    }

    /// Moves settled (delivered or failed) callbacks out of the outbox: an index made
    /// before `callbacks_done` or `callbacks_failed` existed kept them there. Reads only
    /// the outbox, which holds pending callbacks once this has run.
    pub(super) fn settle_outbox(&self) -> Result<usize, IndexError> {
        let mut moved = 0;
        for row in self.pending_callbacks()? {
            if row.state != CallbackState::Pending {
                self.callback_tree(row.state)
                    .insert(row.id.as_bytes(), encode(&row))?;
                self.outbox.remove(row.id.as_bytes())?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(rec: &str, seq: u32) -> UploadRow {
        UploadRow {
            id: UploadRow::segment_id(rec, seq),
            recording_id: rec.into(),
            kind: ObjectKind::Segment {
                seq,
                file: format!("{seq:08}.ts"),
            },
            key: format!("p/{seq:08}.ts"),
            size: 100,
            state: UploadState::Queued,
            multipart: None,
            attempts: 0,
            last_error: None,
            next_attempt_ms: 0,
            created_ms: 0,
            uploaded_ms: None,
            skipped: false,
            failures: 0,
        }
    }

    #[test]
    fn created_recordings_are_pending_and_completion_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let row = RecordingRow::new("r1".into(), "live".into(), "cam".into(), 0);
        index.create_recording(&row).unwrap();
        assert_eq!(index.upload_pending().unwrap()[0].0, "r1");

        let progress = PendingRow {
            queued_through: 2,
            playlist_queued: false,
        };
        let mut first = object("r1", 1);
        index
            .queue_uploads("r1", &[first.clone(), object("r1", 2)], &progress)
            .unwrap();
        // Re-queueing keeps the existing row's state.
        first.state = UploadState::Uploaded;
        index.put_upload(&first).unwrap();
        index
            .queue_uploads("r1", &[object("r1", 1)], &progress)
            .unwrap();
        let rows = index.uploads_of("r1").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, UploadState::Uploaded);
        assert_eq!(index.upload_pending().unwrap()[0].1, progress);
        // The playlist sorts after the segments.
        assert!(UploadRow::playlist_id("r1") > UploadRow::segment_id("r1", 99_999_999));

        let cb = CallbackRow {
            id: "r1".into(),
            url: "http://x".into(),
            body: serde_json::json!({"event_type": 100}),
            state: CallbackState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_ms: 0,
            created_ms: 5,
            delivered_ms: None,
        };
        index.complete_upload("r1", 5, Some(&cb)).unwrap();
        assert!(index.uploads_of("r1").unwrap().is_empty());
        assert!(index.upload_pending().unwrap().is_empty());
        assert_eq!(index.callbacks().unwrap(), vec![cb.clone()]);
        // Delivered, it leaves the outbox the sender reads, and stays listed.
        let delivered = CallbackRow {
            state: CallbackState::Delivered,
            delivered_ms: Some(9),
            ..cb
        };
        index.put_callback(&delivered).unwrap();
        assert!(index.pending_callbacks().unwrap().is_empty());
        assert_eq!(index.count_callbacks(CallbackState::Delivered), 1);
        assert_eq!(index.callbacks().unwrap(), vec![delivered.clone()]);
        assert_eq!(index.get_callback("r1").unwrap(), Some(delivered.clone()));
        // Retried from the API: back in the outbox.
        let again = CallbackRow {
            state: CallbackState::Pending,
            ..delivered
        };
        index.put_callback(&again).unwrap();
        assert_eq!(index.pending_callbacks().unwrap(), vec![again.clone()]);
        assert_eq!(index.count_callbacks(CallbackState::Delivered), 0);
        assert_eq!(
            index.get_recording("r1").unwrap().unwrap().uploaded_ms,
            Some(5)
        );
        // Failed for good: out of the outbox too, still listed, retried back into it.
        let failed = CallbackRow {
            state: CallbackState::Failed,
            attempts: 5,
            ..again.clone()
        };
        index.put_callback(&failed).unwrap();
        assert!(index.pending_callbacks().unwrap().is_empty());
        assert_eq!(index.count_callbacks(CallbackState::Failed), 1);
        assert_eq!(index.count_callbacks(CallbackState::Pending), 0);
        assert_eq!(index.callbacks().unwrap(), vec![failed.clone()]);
        assert_eq!(index.get_callback("r1").unwrap(), Some(failed));
        index.put_callback(&again).unwrap();
        assert_eq!(index.count_callbacks(CallbackState::Failed), 0);
        assert_eq!(index.pending_callbacks().unwrap(), vec![again]);
    }

    #[test]
    fn failed_callbacks_an_older_index_kept_in_the_outbox_leave_it_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let pending = CallbackRow::pending("p", "http://x", serde_json::json!({}), 1);
        let failed = CallbackRow {
            state: CallbackState::Failed,
            ..CallbackRow::pending("f", "http://x", serde_json::json!({}), 1)
        };
        // As a build before `callbacks_failed` stored them.
        index.outbox.insert("p", encode(&pending)).unwrap();
        index.outbox.insert("f", encode(&failed)).unwrap();
        index.flush().unwrap();
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.pending_callbacks().unwrap(), vec![pending.clone()]);
        assert_eq!(index.count_callbacks(CallbackState::Failed), 1);
        assert_eq!(index.callbacks().unwrap(), vec![failed, pending]);
    }
}
