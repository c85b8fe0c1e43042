//! The sled index: every tree, key encoding, the schema version, and the only code that
//! touches sled.
//!
//! Trees:
//! - `meta`: `schema_version` -> u32 BE.
//! - `recordings`: recording id -> JSON [`RecordingRow`].
//! - `segments`: `<recording id>/` + seq (u32 BE) -> JSON [`SegmentRow`]; a prefix scan
//!   yields a recording's segments in order.
//! - `open`: `app/stream` -> recording id, for recordings that are `recording` or
//!   `resumable` (at most one per stream), so a publish finds what to resume without a scan.
//!
//! - `upload_pending`, `uploads`, `outbox`, `callbacks_done`, `callbacks_failed`: the upload queue and the
//!   callbacks to deliver and delivered (see `uploads.rs`).
//! - `files`, `files_pending`, `names`: MP4/FLV/AAC recordings over a capture, and the
//!   object names taken in the store (see `files.rs`).
//! - `catalog`: templates and rules made over the API (see `catalog.rs`).
//! - `search`: what the recordings listing looks up by (see `search.rs`), written in the
//!   transaction of the row it describes.
//! - `store_deletes`: objects to remove from the store for deleted recordings (see
//!   `deletes.rs`).
//! - `store_expiry`: objects to remove from the store when their template's
//!   `storage_time_s` runs out (see `expiry.rs`).
//! - `resident`: recording id -> empty, for closed captures whose files are still on
//!   flash (finished or failed, not being deleted, not evicted): all the disk policy
//!   reads, so its pass does not grow with the recordings the index keeps (`sets.rs`).
//! - `overlays`: task windows over a capture another recording makes (see
//!   `overlays.rs`).
//! - `attention`: recording id -> empty, for closed rows start-up recovery must still
//!   visit (being deleted, or failed and not yet reconciled with their files); with
//!   `open`, all it reads, so start-up does not grow with the number of recordings.
//!
//! Schema history: 1 = one HLS recording per publish; 2 = captures with a template
//! snapshot, file rows and claimed names; 3 = the `search` and `attention` trees. Opening a version 1
//! index migrates it in place (its rows read as captures of the built-in `default`
//! template; their store folders are claimed so new recordings never reuse them); a
//! version 1 or 2 index gets both built from its rows; 4 = the `resident` tree, built
//! from the rows of an older index, and `callbacks_done`, where an older index's
//! delivered callbacks move; then the current
//! version is written. Failed callbacks moved to `callbacks_failed` without a new schema
//! (every open moves settled callbacks out of the outbox; an older build only misses the
//! failed ones in its API). An older build refuses a newer index (it would not keep `search`
//! in step).
//!
//! Every mutation is one sled transaction over the trees it touches, followed by a flush
//! before it returns: callers act on a change only once it is durable (crash-safety
//! invariant 1). Never does media file IO.
//!
//! A sled flush alone is not durable across a power cut. sled 0.34 makes its log writes
//! stable with `sync_file_range` (`pagecache/iobuf.rs`), which neither commits the log
//! file's size and block map nor flushes the device's write cache; only its background
//! flusher calls fsync, and that thread is off here (it wakes every 500 ms whether or not
//! anything changed). So [`Index::flush`] fdatasyncs sled's log file after sled's flush:
//! a board that lost power right after a segment was committed came back without that
//! row until it did.

pub mod callback_body;
mod catalog;
mod deletes;
mod expiry;
mod files;
mod overlays;
mod rows;
pub mod search;
mod sets;
use sets::{needs_attention, sync_resident};
mod status;
mod tasks;
mod uploads;

pub use deletes::{DeleteError, Deleted, StoreDeleteRow};
pub use expiry::StoreExpiry;
pub use files::{CaptureTotals, FileRow, FileState, SpanStart};
pub use overlays::OverlayRow;
pub use rows::{RecordingRow, RecordingState, SegmentRow};
pub use search::{SearchEntry, SearchPage, SearchQuery};
pub use tasks::{TaskRow, TaskState};
pub use uploads::{
    CallbackRow, CallbackState, DonePart, Multipart, ObjectKind, PendingRow, UploadRow, UploadState,
};

use std::path::Path;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(#[from] sled::Error),
    #[error("index row {key} is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("index schema version {found} is not understood by this build (expects {SCHEMA_VERSION}); restore a matching build or run `edgerec fsck --repair`")]
    Schema { found: u32 },
    #[error(
        "the index in {dir} is locked by another process (is another edgerec using this data dir?)"
    )]
    Locked { dir: String },
    #[error("recording {0} does not exist")]
    NoSuchRecording(String),
    #[error("cannot make the index durable ({path}): {source}")]
    Sync {
        path: String,
        source: std::io::Error,
    },
    #[error("stream {0} already has an open recording {1}")]
    AlreadyOpen(String, String),
}

/// An `update_recording` closure's verdict.
pub enum Update {
    /// Store the modified row.
    Write,
    /// Leave the row as it was (the precondition did not hold).
    Skip,
}

/// How long `Index::open` waits for sled's file lock. A process that just dropped its
/// index (a test, or `fsck` before `run` in one process) releases the lock only when
/// sled's IO threads have let go of the file, which can lag the drop on a slow core.
const LOCK_WAIT: Duration = Duration::from_secs(5);

impl IndexError {
    fn sync(path: &Path, source: std::io::Error) -> IndexError {
        IndexError::Sync {
            path: path.display().to_string(),
            source,
        }
    }
}
/// Removes `snap.*.generating` files: a snapshot sled was still writing when the power
/// went. Left in place, sled reads it, finds a bad checksum and refuses to open ("Read
/// corrupted data") on every start, so `Restart=always` would loop forever. The finished
/// snapshot and the log are untouched; sled rebuilds its state from them. Synced, so the
/// removal itself survives the next power cut.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), IndexError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // No index yet.
    };
    let mut removed = 0;
    for entry in entries.map_while(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(|e| IndexError::sync(&entry.path(), e))?;
            tracing::warn!(file = %entry.path().display(), "removed an unfinished index snapshot left by a power cut");
            removed += 1;
        }
    }
    if removed > 0 {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| IndexError::sync(dir, e))?;
    }
    Ok(())
}

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// The open index. Cheap to clone (sled trees are reference counted).
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    /// sled's log file (`<dir>/db`), fdatasynced after every flush (see the module doc).
    log: std::sync::Arc<std::fs::File>,
    log_path: std::sync::Arc<Path>,
    recordings: sled::Tree,
    segments: sled::Tree,
    open: sled::Tree,
    upload_pending: sled::Tree,
    uploads: sled::Tree,
    outbox: sled::Tree,
    callbacks_done: sled::Tree,
    callbacks_failed: sled::Tree,
    files: sled::Tree,
    files_pending: sled::Tree,
    names: sled::Tree,
    catalog: sled::Tree,
    search: sled::Tree,
    attention: sled::Tree,
    resident: sled::Tree,
    store_deletes: sled::Tree,
    store_expiry: sled::Tree,
    overlays: sled::Tree,
    /// Set when status callbacks (`event_type` 332) are on: queued by `status.rs`.
    status_events: std::sync::Arc<std::sync::OnceLock<crate::config::CallbackConfig>>,
}

fn encode<T: serde::Serialize>(row: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(row).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|source| IndexError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn segment_key(recording_id: &str, seq: u32) -> Vec<u8> {
    let mut key = segment_prefix(recording_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn segment_prefix(recording_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(recording_id.len() + 5);
    key.extend_from_slice(recording_id.as_bytes());
    key.push(b'/');
    key
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

fn flatten(e: TransactionError<IndexError>) -> IndexError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => IndexError::Db(e),
    }
}

impl Index {
    /// Opens (creating if needed) the index in `dir` and checks its schema version.
    /// Waits up to [`LOCK_WAIT`] for another holder of the index to let go, then fails
    /// with [`IndexError::Locked`].
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    fn open_waiting(dir: &Path, lock_wait: Duration) -> Result<Index, IndexError> {
        remove_unfinished_snapshots(dir)?;
        let deadline = Instant::now() + lock_wait;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                // The index is small; a modest cache keeps RSS low on 512 MB boards.
                .cache_capacity(8 * 1024 * 1024)
                // We flush explicitly after every commit; no background timer writes.
                .flush_every_ms(None)
                .open();
            match opened {
                Err(e) if is_lock_error(&e) => {
                    if Instant::now() >= deadline {
                        return Err(IndexError::Locked {
                            dir: dir.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let log_path = dir.join("db");
        let log = std::fs::File::open(&log_path).map_err(|e| IndexError::sync(&log_path, e))?;
        // sled writes `conf` once, without a sync: make it durable, or a power cut soon
        // after the first start leaves an index that does not open.
        let conf_path = dir.join("conf");
        std::fs::File::open(&conf_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| IndexError::sync(&conf_path, e))?;
        // A new index's files must be reachable after a power cut too.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| IndexError::sync(dir, e))?;
        let meta = db.open_tree("meta")?;
        let index = Index {
            recordings: db.open_tree("recordings")?,
            segments: db.open_tree("segments")?,
            open: db.open_tree("open")?,
            upload_pending: db.open_tree("upload_pending")?,
            uploads: db.open_tree("uploads")?,
            outbox: db.open_tree("outbox")?,
            callbacks_done: db.open_tree("callbacks_done")?,
            callbacks_failed: db.open_tree("callbacks_failed")?,
            files: db.open_tree("files")?,
            files_pending: db.open_tree("files_pending")?,
            names: db.open_tree("names")?,
            catalog: db.open_tree("catalog")?,
            search: db.open_tree("search")?,
            attention: db.open_tree("attention")?,
            resident: db.open_tree("resident")?,
            store_deletes: db.open_tree("store_deletes")?,
            store_expiry: db.open_tree("store_expiry")?,
            overlays: db.open_tree("overlays")?,
            status_events: Default::default(),
            db,
            log: std::sync::Arc::new(log),
            log_path: log_path.into(),
        };
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                index.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                if (1..SCHEMA_VERSION).contains(&found) {
                    if found == 1 {
                        index.migrate_from_v1()?;
                    }
                    let entries = if found < 3 {
                        index.rebuild_attention()?;
                        index.rebuild_search()?
                    } else {
                        0
                    };
                    index.rebuild_resident()?;
                    meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                    index.flush()?;
                    tracing::info!(
                        entries,
                        "index migrated from schema {found} to {SCHEMA_VERSION}"
                    );
                } else if found != SCHEMA_VERSION {
                    return Err(IndexError::Schema { found });
                }
            }
        }
        let settled = index.settle_outbox()?;
        if settled > 0 {
            index.flush()?;
            tracing::info!(
                settled,
                "settled callbacks moved out of the outbox the sender reads"
            );
        }
        Ok(index)
    }

    /// Schema 1 -> 2: every row is re-read with the new defaults (and fails here, not
    /// later, if it cannot be), and the store folders of uploaded recordings are claimed.
    fn migrate_from_v1(&self) -> Result<(), IndexError> {
        for row in self.recordings() {
            let row = row?;
            if let Some(path) = &row.store_path {
                self.claim_folder(path, &row.id)?;
            }
            self.recordings.insert(row.id.as_bytes(), encode(&row))?;
        }
        Ok(())
    }

    /// sled's flush, then an fdatasync of its log: returns once the changes survive a
    /// power cut.
    pub(crate) fn flush(&self) -> Result<(), IndexError> {
        self.db.flush()?;
        self.log
            .sync_data()
            .map_err(|e| IndexError::sync(&self.log_path, e))
    }

    /// Bytes the index takes on disk (sled's estimate), for `/metrics`.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Whether the database takes a write (for `/healthz` and the health loop). sled
    /// latches the first failed log write (a full disk, an IO error) and refuses every
    /// later write until it is opened again, while reads from its cache go on working, so
    /// only a write tells. One small key, not flushed: no fsync, a few bytes of log.
    pub fn probe_write(&self) -> Result<(), IndexError> {
        self.db
            .insert("__probe", &crate::clock::now_ms().to_be_bytes()[..])?;
        Ok(())
    }

    /// Creates an open recording; fails if its stream already has one. A capture whose
    /// template makes files is marked for the file planner in the same transaction.
    pub fn create_recording(&self, row: &RecordingRow) -> Result<(), IndexError> {
        let stream_key = row.stream_key();
        let has_files = row.has_files();
        (
            &self.recordings,
            &self.open,
            &self.upload_pending,
            &self.files_pending,
            &self.search,
            &self.resident,
        )
            .transaction(
                |(recordings, open, pending, files_pending, search, resident)| {
                    if let Some(existing) = open.get(stream_key.as_bytes())? {
                        let existing = String::from_utf8_lossy(&existing).into_owned();
                        return Err(abort(IndexError::AlreadyOpen(stream_key.clone(), existing)));
                    }
                    recordings.insert(row.id.as_bytes(), encode(row))?;
                    search::sync(search, None, SearchEntry::of_capture(row).as_ref())?;
                    sync_resident(resident, row)?;
                    pending.insert(row.id.as_bytes(), encode(&PendingRow::default()))?;
                    if has_files {
                        files_pending.insert(row.id.as_bytes(), &[])?;
                    }
                    if row.state.is_open() {
                        open.insert(stream_key.as_bytes(), row.id.as_bytes())?;
                    }
                    Ok(())
                },
            )
            .map_err(flatten)?;
        self.flush()
    }

    pub fn get_recording(&self, id: &str) -> Result<Option<RecordingRow>, IndexError> {
        match self.recordings.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// The open (recording or resumable) recording of `app/stream`, if any.
    pub fn open_recording(&self, stream_key: &str) -> Result<Option<RecordingRow>, IndexError> {
        match self.open.get(stream_key.as_bytes())? {
            Some(id) => self.get_recording(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Every recording, oldest id first. Rows that fail to decode are returned as errors
    /// so `fsck` can report them; callers that only list may skip them.
    pub fn recordings(&self) -> impl Iterator<Item = Result<RecordingRow, IndexError>> + '_ {
        self.recordings.iter().map(|item| {
            let (key, value) = item?;
            decode(&key, &value)
        })
    }

    /// Atomically reads, modifies and writes a recording row, keeping the `open` tree in
    /// step with its state. `f` may run more than once (transaction retries).
    pub fn update_recording<F>(&self, id: &str, f: F) -> Result<RecordingRow, IndexError>
    where
        F: Fn(&mut RecordingRow) -> Update,
    {
        let status = self.status_events.get();
        let row = (
            &self.recordings,
            &self.open,
            &self.search,
            &self.attention,
            &self.outbox,
            &self.resident,
        )
            .transaction(|(recordings, open, search, attention, outbox, resident)| {
                let bytes = recordings
                    .get(id.as_bytes())?
                    .ok_or_else(|| abort(IndexError::NoSuchRecording(id.to_owned())))?;
                let mut row: RecordingRow = decode(id.as_bytes(), &bytes).map_err(abort)?;
                let old = row.clone();
                let before = SearchEntry::of_capture(&row);
                if let Update::Skip = f(&mut row) {
                    return Ok(row);
                }
                status::queue(outbox, status, &old, &mut row)?;
                recordings.insert(id.as_bytes(), encode(&row))?;
                search::sync(
                    search,
                    before.as_ref(),
                    SearchEntry::of_capture(&row).as_ref(),
                )?;
                if needs_attention(&row) {
                    attention.insert(id.as_bytes(), &[])?;
                }
                sync_resident(resident, &row)?;
                let key = row.stream_key();
                if row.state.is_open() {
                    open.insert(key.as_bytes(), id.as_bytes())?;
                } else if open.get(key.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                    open.remove(key.as_bytes())?;
                }
                Ok(row)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(row)
    }

    /// Moves an open recording's wall times by `delta_ms`, in one transaction: the wall
    /// clock jumped while it was recorded (see `record::clock_anchor`). Its span and resume
    /// deadline, every segment's start, and its open files' spans (closed files keep
    /// theirs: their names and objects are fixed). Returns the row as it is now.
    pub fn shift_wall_clock(&self, id: &str, delta_ms: i64) -> Result<RecordingRow, IndexError> {
        let segments = self.segments(id)?;
        let open_files: Vec<FileRow> = self
            .files_of(id)?
            .into_iter()
            .filter(|f| f.state == FileState::Recording)
            .collect();
        let row = (&self.recordings, &self.segments, &self.files, &self.search)
            .transaction(|(recordings, segment_tree, files, search)| {
                let bytes = recordings
                    .get(id.as_bytes())?
                    .ok_or_else(|| abort(IndexError::NoSuchRecording(id.to_owned())))?;
                let mut row: RecordingRow = decode(id.as_bytes(), &bytes).map_err(abort)?;
                let before = SearchEntry::of_capture(&row);
                row.start_ms += delta_ms;
                row.end_ms += delta_ms;
                row.resumable_until_ms = row.resumable_until_ms.map(|t| t + delta_ms);
                recordings.insert(id.as_bytes(), encode(&row))?;
                search::sync(
                    search,
                    before.as_ref(),
                    SearchEntry::of_capture(&row).as_ref(),
                )?;
                for seg in &segments {
                    let mut seg = seg.clone();
                    seg.wall_start_ms += delta_ms;
                    segment_tree.insert(segment_key(id, seg.seq), encode(&seg))?;
                }
                for old in &open_files {
                    let mut file = old.clone();
                    file.start_ms += delta_ms;
                    file.end_ms += delta_ms;
                    files.insert(file.id.as_bytes(), encode(&file))?;
                    search::sync(
                        search,
                        Some(&SearchEntry::of_file(old)),
                        Some(&SearchEntry::of_file(&file)),
                    )?;
                }
                Ok(row)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(row)
    }

    /// Commits a sealed segment and folds it into its recording, in one transaction.
    /// Call only after the segment file is durable under its final name.
    pub fn commit_segment(
        &self,
        recording_id: &str,
        segment: &SegmentRow,
    ) -> Result<RecordingRow, IndexError> {
        let seg_key = segment_key(recording_id, segment.seq);
        let status = self.status_events.get();
        let row = (&self.recordings, &self.segments, &self.search, &self.outbox)
            .transaction(|(recordings, segments, search, outbox)| {
                let bytes = recordings
                    .get(recording_id.as_bytes())?
                    .ok_or_else(|| abort(IndexError::NoSuchRecording(recording_id.to_owned())))?;
                let mut row: RecordingRow =
                    decode(recording_id.as_bytes(), &bytes).map_err(abort)?;
                let before = SearchEntry::of_capture(&row);
                segments.insert(seg_key.as_slice(), encode(segment))?;
                let was_empty = row.segments == 0;
                row.add_segment(segment);
                if was_empty {
                    let mut old = row.clone();
                    old.segments = 0;
                    status::queue(outbox, status, &old, &mut row)?;
                }
                recordings.insert(recording_id.as_bytes(), encode(&row))?;
                search::sync(
                    search,
                    before.as_ref(),
                    SearchEntry::of_capture(&row).as_ref(),
                )?;
                Ok(row)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(row)
    }

    /// Rewrites one segment row in place (recovery marks missing files as gaps).
    pub fn put_segment(&self, recording_id: &str, segment: &SegmentRow) -> Result<(), IndexError> {
        self.segments
            .insert(segment_key(recording_id, segment.seq), encode(segment))?;
        self.flush()
    }

    /// A recording's segments in sequence order.
    pub fn segments(&self, recording_id: &str) -> Result<Vec<SegmentRow>, IndexError> {
        self.segments
            .scan_prefix(segment_prefix(recording_id))
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// A capture's segments `first..=last`, in order (a file's or a task's span).
    pub fn segment_span(
        &self,
        recording_id: &str,
        first: u32,
        last: u32,
    ) -> Result<Vec<SegmentRow>, IndexError> {
        let Some(end) = last.checked_add(1) else {
            return self.segments_after(recording_id, first.saturating_sub(1));
        };
        self.segments
            .range(segment_key(recording_id, first)..segment_key(recording_id, end))
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// A recording's segments with a sequence number above `after`, in order.
    pub fn segments_after(
        &self,
        recording_id: &str,
        after: u32,
    ) -> Result<Vec<SegmentRow>, IndexError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix = segment_prefix(recording_id);
        self.segments
            .range(segment_key(recording_id, first)..)
            .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// The last `n` segments of a recording, in order.
    pub fn last_segments(
        &self,
        recording_id: &str,
        n: usize,
    ) -> Result<Vec<SegmentRow>, IndexError> {
        let mut out = Vec::with_capacity(n);
        for item in self
            .segments
            .scan_prefix(segment_prefix(recording_id))
            .rev()
        {
            if out.len() == n {
                break;
            }
            let (key, value) = item?;
            out.push(decode(&key, &value)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Phase 3 of a two-phase delete: removes the row and its segment rows once the files
    /// are gone. Phase 1 is `update_recording` setting `deleting`.
    pub fn remove_recording(&self, id: &str) -> Result<(), IndexError> {
        let keys: Vec<_> = self
            .segments
            .scan_prefix(segment_prefix(id))
            .keys()
            .collect::<Result<_, _>>()?;
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        self.segments.apply_batch(batch)?;
        self.drop_uploads(id)?;
        for file in self.files_of(id)? {
            self.drop_uploads(&file.id)?;
        }
        self.remove_files_of(id)?;
        if let Some(row) = self.get_recording(id)? {
            let key = row.stream_key();
            if self.open.get(key.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                self.open.remove(key.as_bytes())?;
            }
            self.remove_search_entry(SearchEntry::of_capture(&row))?;
        }
        self.recordings.remove(id.as_bytes())?;
        self.attention.remove(id.as_bytes())?;
        self.resident.remove(id.as_bytes())?;
        self.flush()
    }

    /// Every `(app/stream, recording id)` in the `open` tree.
    pub fn open_entries(&self) -> Result<Vec<(String, String)>, IndexError> {
        self.open
            .iter()
            .map(|item| {
                let (key, id) = item?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    String::from_utf8_lossy(&id).into_owned(),
                ))
            })
            .collect()
    }

    /// `open` entries whose recording is missing or no longer open (fsck).
    pub fn stale_open_entries(&self) -> Result<Vec<(String, String)>, IndexError> {
        let mut stale = Vec::new();
        for (key, id) in self.open_entries()? {
            match self.get_recording(&id)? {
                Some(row) if row.state.is_open() && row.stream_key() == key => {}
                _ => stale.push((key, id)),
            }
        }
        Ok(stale)
    }

    /// Queues status callbacks (`event_type` 332) to `config`'s receiver from now on, for
    /// every clone of this index. Call once, before recording starts.
    pub fn send_status_events(&self, config: crate::config::CallbackConfig) {
        let _ = self.status_events.set(config);
    }

    /// Drops an entry from the `search` tree (its row is going).
    fn remove_search_entry(&self, entry: Option<SearchEntry>) -> Result<(), IndexError> {
        if entry.is_some() {
            self.search
                .transaction(|search| search::sync(search, entry.as_ref(), None))
                .map_err(flatten)?;
        }
        Ok(())
    }

    pub fn remove_open_entry(&self, stream_key: &str) -> Result<(), IndexError> {
        self.open.remove(stream_key.as_bytes())?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, ms: i64) -> SegmentRow {
        SegmentRow {
            seq,
            file: SegmentRow::file_name(seq),
            duration_ticks: 4 * 90_000,
            bytes: 1000,
            media_start: 0,
            wall_start_ms: ms,
            keyframe: true,
            discontinuity: seq == 3,
            gap: false,
            recovered: false,
            codec_change: false,
            params: 0,
        }
    }

    #[test]
    fn segments_commit_in_order_and_fold_into_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let row = RecordingRow::new("r1".into(), "live".into(), "cam".into(), 1000);
        index.create_recording(&row).unwrap();
        // Seq 256 sorts after 2 only with big-endian keys.
        for seq in [1, 2, 3, 256] {
            index
                .commit_segment("r1", &seg(seq, 1000 + seq as i64 * 4000))
                .unwrap();
        }
        let segs = index.segments("r1").unwrap();
        assert_eq!(
            segs.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [1, 2, 3, 256]
        );
        let after: Vec<_> = index
            .segments_after("r1", 2)
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect();
        assert_eq!(after, [3, 256]);
        let last = index.last_segments("r1", 2).unwrap();
        assert_eq!(last.iter().map(|s| s.seq).collect::<Vec<_>>(), [3, 256]);
        let row = index.get_recording("r1").unwrap().unwrap();
        assert_eq!(
            (row.segments, row.bytes, row.discontinuities, row.next_seq),
            (4, 4000, 1, 257)
        );
        assert_eq!(row.start_ms, 5000);
        assert_eq!(row.duration_ticks, 16 * 90_000);
    }

    #[test]
    fn one_open_recording_per_stream_and_open_tree_follows_state() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index
            .create_recording(&RecordingRow::new("a".into(), "live".into(), "s".into(), 0))
            .unwrap();
        let second = RecordingRow::new("b".into(), "live".into(), "s".into(), 0);
        assert!(matches!(
            index.create_recording(&second),
            Err(IndexError::AlreadyOpen(..))
        ));
        assert_eq!(index.open_recording("live/s").unwrap().unwrap().id, "a");
        index
            .update_recording("a", |r| {
                r.state = RecordingState::Finished;
                Update::Write
            })
            .unwrap();
        assert!(index.open_recording("live/s").unwrap().is_none());
        index.create_recording(&second).unwrap();
        assert_eq!(index.open_recording("live/s").unwrap().unwrap().id, "b");
        index.remove_recording("b").unwrap();
        assert!(index.get_recording("b").unwrap().is_none());
        assert!(index.open_recording("live/s").unwrap().is_none());
        assert!(index.stale_open_entries().unwrap().is_empty());
    }

    #[test]
    fn survives_reopen_and_rejects_other_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            index
                .create_recording(&RecordingRow::new("a".into(), "l".into(), "s".into(), 0))
                .unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert!(index.get_recording("a").unwrap().is_some());
        index
            .db
            .open_tree("meta")
            .unwrap()
            .insert("schema_version", &7u32.to_be_bytes())
            .unwrap();
        index.db.flush().unwrap();
        drop(index);
        let err = Index::open(dir.path())
            .err()
            .expect("an index of another schema must be refused");
        assert!(matches!(err, IndexError::Schema { found: 7 }), "{err}");
    }

    #[test]
    fn a_schema_1_index_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A data dir as schema 1 left it: its row JSON has none of the new fields.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &1u32.to_be_bytes())
                .unwrap();
            let v1 = r#"{"id":"r1","app":"live","stream":"cam","state":"finished","created_ms":1,"start_ms":1,"end_ms":9,"resumable_until_ms":null,"duration_ticks":720000,"segments":2,"bytes":2000,"discontinuities":0,"next_seq":3,"sessions":1,"video_codec":"h264","audio_codec":"aac","resolution":[640,360],"failure":null,"max_segment_s":4,"store_path":"live/cam/cam_x"}"#;
            db.open_tree("recordings")
                .unwrap()
                .insert("r1", v1)
                .unwrap();
            let seg = r#"{"seq":1,"file":"00000001.ts","duration_ticks":360000,"bytes":1000,"media_start":0,"wall_start_ms":1,"keyframe":true,"discontinuity":false,"gap":false,"recovered":false}"#;
            db.open_tree("segments")
                .unwrap()
                .insert(segment_key("r1", 1), seg)
                .unwrap();
            db.flush().unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        let row = index.get_recording("r1").unwrap().unwrap();
        assert_eq!(row.template_name(), "default");
        assert!(row.has_hls() && !row.has_files());
        assert!(!index.segments("r1").unwrap()[0].codec_change);
        assert_eq!(
            index.claim_folder("live/cam/cam_x", "new").unwrap(),
            "live/cam/cam_x_2",
            "an uploaded recording's folder stays taken"
        );
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        let version = index
            .db
            .open_tree("meta")
            .unwrap()
            .get("schema_version")
            .unwrap();
        assert_eq!(version.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
        let resident: Vec<String> = index
            .resident_recordings()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(resident, ["r1"], "a finished capture's files are on flash");
    }

    #[test]
    fn resident_follows_a_capture_from_close_to_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let resident = |index: &Index| -> Vec<String> {
            let rows = index.resident_recordings().unwrap();
            rows.into_iter().map(|r| r.id).collect()
        };
        for id in ["a", "b", "c"] {
            let row = RecordingRow::new(id.into(), "live".into(), id.into(), 0);
            index.create_recording(&row).unwrap();
        }
        assert!(
            resident(&index).is_empty(),
            "open captures are not the policy's"
        );
        for id in ["a", "b", "c"] {
            index
                .update_recording(id, |r| {
                    r.state = RecordingState::Finished;
                    Update::Write
                })
                .unwrap();
        }
        assert_eq!(resident(&index), ["a", "b", "c"]);
        index
            .update_recording("a", |r| {
                r.evicted_ms = Some(5);
                Update::Write
            })
            .unwrap();
        index
            .update_recording("b", |r| {
                r.deleting = true;
                Update::Write
            })
            .unwrap();
        assert_eq!(resident(&index), ["c"]);
        index.remove_recording("c").unwrap();
        assert!(resident(&index).is_empty());
        // A version 3 index (no `resident` tree, delivered callbacks in the outbox) gets
        // the tree built and the callbacks moved on open.
        let mut delivered = CallbackRow::pending("a", "http://x", serde_json::json!({}), 1);
        delivered.state = CallbackState::Delivered;
        index.outbox.insert("a", encode(&delivered)).unwrap();
        let pending = CallbackRow::pending("b", "http://x", serde_json::json!({}), 1);
        index.outbox.insert("b", encode(&pending)).unwrap();
        index
            .update_recording("a", |r| {
                r.evicted_ms = None;
                Update::Write
            })
            .unwrap();
        index.resident.clear().unwrap();
        index
            .db
            .open_tree("meta")
            .unwrap()
            .insert("schema_version", &3u32.to_be_bytes())
            .unwrap();
        index.flush().unwrap();
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(resident(&index), ["a"]);
        assert_eq!(index.pending_callbacks().unwrap(), vec![pending]);
        assert_eq!(index.count_callbacks(CallbackState::Delivered), 1);
    }

    #[test]
    fn a_held_index_is_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Index::open(dir.path()).unwrap();
        let err = Index::open_waiting(dir.path(), Duration::from_millis(200))
            .err()
            .expect("a second open must fail while the first holds the lock");
        assert!(matches!(err, IndexError::Locked { .. }), "{err}");
    }
}
