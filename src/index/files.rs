//! MP4/FLV/AAC recordings ([`FileRow`]) and their sled trees.
//!
//! A file is a view over a span of one capture's segments (`first_seq..=last_seq`); its
//! bytes are derived from those segments when read (`package`), never stored. Trees:
//! - `files`: file id (`<capture id>_<format><n:08>`, so a capture's files sort together
//!   by format and number; `_` because upload and callback rows of a capture are keyed
//!   `<capture id>.`, which a file's must never match) -> JSON [`FileRow`].
//! - `files_pending`: capture id -> empty: captures whose files are not all closed yet, so
//!   the file planner scans only those.
//! - `names`: object key -> file id: names taken in the store, so a second file that
//!   would get the same name gets a unique suffix instead.

use serde::{Deserialize, Serialize};

use sled::Transactional;

use super::{decode, encode, Index, IndexError, SearchEntry};
use crate::config::Format;
use crate::media::{ticks_to_seconds, Ticks};

/// Where a file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Its capture is still adding segments to it.
    Recording,
    /// Closed: its span is final and its name rendered.
    Finished,
    /// Nothing to make (an AAC file of a stream without audio): `note` says why.
    Skipped,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Recording => "recording",
            FileState::Finished => "finished",
            FileState::Skipped => "skipped",
        }
    }
}

/// One MP4, FLV or AAC (M4A) file over a span of a capture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRow {
    pub id: String,
    pub capture_id: String,
    pub app: String,
    pub stream: String,
    pub format: Format,
    pub template: String,
    /// 1-based number of this file within its capture and format.
    pub number: u32,
    pub first_seq: u32,
    pub last_seq: u32,
    pub state: FileState,
    /// Wall clock (unix ms) of the first segment's start and the last one's end.
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_ticks: Ticks,
    pub segments: u32,
    /// Bytes of the TS segments it is made from (the derived file is a little smaller).
    pub ts_bytes: u64,
    /// Segments of the span lost to recovery, skipped in the file.
    pub gaps: u32,
    /// File name without extension, rendered from the template when the file closes.
    pub file_name: Option<String>,
    /// Object key in the store, fixed when the file is queued for upload.
    pub store_key: Option<String>,
    /// From the template: how long the store keeps the object (0 = forever).
    pub storage_time_s: u64,
    pub record_id: Option<String>,
    /// Why the file was skipped, or what it had to leave out.
    pub note: Option<String>,
    #[serde(default)]
    pub uploaded_ms: Option<i64>,
    /// While `recording`: the capture's totals just before this file's first segment.
    /// The open row is written once; its live span is the capture's totals minus these
    /// ([`FileRow::live`]), so a growing file costs no index write per segment.
    #[serde(default)]
    pub before: Option<CaptureTotals>,
    /// When its object leaves the store (`storage_time_s`).
    #[serde(default)]
    pub store_expiry: Option<super::StoreExpiry>,
    /// The recording task its capture records for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// A task's recording over a capture another recording makes (a rule's): the task's
    /// template, which names it and says where it goes (`record::task_files`). Such a row
    /// may be `hls`: a playlist over its span of the capture's segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_template: Option<Box<crate::config::Template>>,
    /// A clip that starts at a keyframe inside its first segment (`first_seq`): readers
    /// skip what comes before it ([`FileRow::span_view`], `mux::ts_cut`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<SpanStart>,
}

/// Where a recording starts inside its first segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanStart {
    /// The keyframe's decode time on the capture's timeline (as `SegmentRow::media_start`).
    pub dts: Ticks,
    /// Byte offset of the keyframe's first TS packet in the segment file.
    pub offset: u64,
}

impl SpanStart {
    /// Segment `seg` as a recording starting here has it: later, shorter, smaller.
    pub fn trim(&self, seg: &super::SegmentRow) -> super::SegmentRow {
        let mut seg = seg.clone();
        let skip = (self.dts - seg.media_start).clamp(0, seg.duration_ticks);
        seg.media_start += skip;
        seg.duration_ticks -= skip;
        seg.wall_start_ms += skip / crate::media::TICKS_PER_MS;
        seg.bytes = seg.bytes.saturating_sub(self.offset);
        seg.keyframe = true;
        seg
    }
}

/// A capture's running totals at some segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureTotals {
    pub duration_ticks: Ticks,
    pub bytes: u64,
    pub segments: u32,
    pub codec_changes: u32,
}

impl CaptureTotals {
    pub fn of(capture: &super::RecordingRow) -> CaptureTotals {
        CaptureTotals {
            duration_ticks: capture.duration_ticks,
            bytes: capture.bytes,
            segments: capture.segments,
            codec_changes: capture.codec_changes,
        }
    }
}

impl FileRow {
    pub fn make_id(capture_id: &str, format: Format, number: u32) -> String {
        format!("{capture_id}_{}{number:08}", format.as_str())
    }

    /// A task's recording over another recording's capture:
    /// `<capture id>_<format>-<task id>-<n:04>` (task ids have no `_`).
    pub fn make_overlay_id(capture_id: &str, format: Format, task_id: &str, number: u32) -> String {
        format!("{capture_id}_{}-{task_id}-{number:04}", format.as_str())
    }

    /// The capture id part of a file id, or None for an id that is not a file's.
    pub fn capture_of(id: &str) -> Option<&str> {
        let (capture, rest) = id.rsplit_once('_')?;
        Format::ALL
            .iter()
            .any(|f| match f {
                Format::Hls => rest.starts_with("hls-"),
                _ => rest.starts_with(f.as_str()),
            })
            .then_some(capture)
    }

    /// Whether `id` names a task's recording over another recording's capture.
    pub fn is_overlay_id(id: &str) -> bool {
        Self::capture_of(id).is_some() && id.rsplit_once('_').is_some_and(|(_, r)| r.contains('-'))
    }

    /// A task's recording over a capture another recording makes.
    pub fn is_overlay(&self) -> bool {
        self.task_template.is_some()
    }

    pub fn duration_s(&self) -> f64 {
        ticks_to_seconds(self.duration_ticks)
    }

    /// The row with its span brought up to `capture`'s latest segment, for an open file
    /// (a closed one is returned as it is).
    pub fn live(&self, capture: &super::RecordingRow) -> FileRow {
        let mut row = self.clone();
        if let (FileState::Recording, Some(before)) = (self.state, self.before) {
            row.duration_ticks = (capture.duration_ticks - before.duration_ticks).max(0);
            row.ts_bytes = capture.bytes.saturating_sub(before.bytes);
            row.segments = capture.segments.saturating_sub(before.segments);
            row.last_seq = capture.next_seq.saturating_sub(1).max(self.first_seq);
            row.end_ms = self.end_ms.max(capture.end_ms);
        }
        row
    }

    /// Its span's segments (`first_seq..=last_seq`, in order) as it has them: the first
    /// trimmed to [`FileRow::start`] for a clip that starts inside it.
    pub fn span_view(&self, mut segments: Vec<super::SegmentRow>) -> Vec<super::SegmentRow> {
        if let (Some(start), Some(first)) = (self.start, segments.first_mut()) {
            if first.seq == self.first_seq {
                *first = start.trim(first);
            }
        }
        segments
    }

    /// A task's HLS recording as a recording of its own (for its playlist and store
    /// folder name): the capture, with the task's template, id, span times, finished.
    pub fn as_recording(&self, capture: &super::RecordingRow) -> super::RecordingRow {
        let mut row = capture.clone();
        row.id = self.id.clone();
        row.start_ms = self.start_ms;
        row.end_ms = self.end_ms;
        row.task_id = self.task_id.clone();
        if let Some(t) = &self.task_template {
            row.template = Some((**t).clone());
        }
        row.state = super::RecordingState::Finished;
        row
    }

    /// The file name with its extension (what a download is saved as).
    pub fn download_name(&self) -> String {
        let stem = self.file_name.clone().unwrap_or_else(|| self.id.clone());
        format!("{stem}.{}", self.format.extension())
    }
}

impl Index {
    /// Writes (creates or replaces) a file row as the file planner computed it, keeping
    /// what the uploader fixed in the stored row (object key, upload time, store expiry), in one
    /// transaction so neither side's change is lost.
    pub fn put_file(&self, row: &FileRow) -> Result<(), IndexError> {
        let id = row.id.as_bytes();
        (&self.files, &self.search)
            .transaction(|(files, search)| {
                let mut row = row.clone();
                let mut before = None;
                if let Some(bytes) = files.get(id)? {
                    let stored: FileRow = decode(id, &bytes).map_err(super::abort)?;
                    row.store_key = row.store_key.or(stored.store_key.clone());
                    row.uploaded_ms = row.uploaded_ms.or(stored.uploaded_ms);
                    row.store_expiry = stored.store_expiry.or(row.store_expiry);
                    before = Some(SearchEntry::of_file(&stored));
                }
                files.insert(id, encode(&row))?;
                super::search::sync(search, before.as_ref(), Some(&SearchEntry::of_file(&row)))?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<IndexError>| super::flatten(e))?;
        self.flush()
    }

    /// Sets a file's object key (the uploader fixed where it goes), in one transaction.
    pub fn set_file_store_key(&self, id: &str, key: &str) -> Result<(), IndexError> {
        let kb = id.as_bytes();
        self.files
            .transaction(|files| {
                let Some(bytes) = files.get(kb)? else {
                    return Ok(());
                };
                let mut row: FileRow = decode(kb, &bytes).map_err(super::abort)?;
                row.store_key = Some(key.to_owned());
                files.insert(kb, encode(&row))?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<IndexError>| super::flatten(e))?;
        self.flush()
    }

    pub fn get_file(&self, id: &str) -> Result<Option<FileRow>, IndexError> {
        match self.files.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// A capture's files, ordered by format then number.
    pub fn files_of(&self, capture_id: &str) -> Result<Vec<FileRow>, IndexError> {
        let mut prefix = capture_id.as_bytes().to_vec();
        prefix.push(b'_');
        self.files
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every file row, in id order (the API's listing).
    pub fn files(&self) -> impl Iterator<Item = Result<FileRow, IndexError>> + '_ {
        self.files.iter().map(|item| {
            let (k, v) = item?;
            decode(&k, &v)
        })
    }

    /// Removes a capture's file rows and its pending mark (the capture is being deleted).
    /// Their names stay claimed: the objects may still be in the store, and a new file
    /// must never overwrite one.
    pub fn remove_files_of(&self, capture_id: &str) -> Result<(), IndexError> {
        for row in self.files_of(capture_id)? {
            self.remove_search_entry(Some(SearchEntry::of_file(&row)))?;
            self.files.remove(row.id.as_bytes())?;
        }
        self.files_pending.remove(capture_id.as_bytes())?;
        self.flush()
    }

    /// When every deliverable of a capture was in the store (its HLS recording, if its
    /// template makes one, each of its files, and each task recording over it), or None
    /// while any is not: only then may
    /// retention evict the capture's segments.
    pub fn delivered_ms(&self, capture: &super::RecordingRow) -> Result<Option<i64>, IndexError> {
        let mut at = match (capture.has_hls(), capture.uploaded_ms) {
            (true, None) => return Ok(None),
            (true, Some(t)) => t,
            (false, _) => i64::MIN,
        };
        // Also for a template without files: tasks' recordings over the capture are rows
        // of it too (`record::task_files`).
        if self.files_pending.contains_key(capture.id.as_bytes())? {
            return Ok(None);
        }
        for file in self.files_of(&capture.id)? {
            match (file.state, file.uploaded_ms) {
                (FileState::Skipped, _) => {}
                (_, Some(t)) => at = at.max(t),
                (_, None) => return Ok(None),
            }
        }
        Ok((at != i64::MIN).then_some(at))
    }

    /// Marks a capture as having files to plan.
    pub fn mark_files_pending(&self, capture_id: &str) -> Result<(), IndexError> {
        self.files_pending.insert(capture_id.as_bytes(), &[])?;
        self.flush()
    }

    pub fn files_pending(&self) -> Result<Vec<String>, IndexError> {
        self.files_pending
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub fn clear_files_pending(&self, capture_id: &str) -> Result<(), IndexError> {
        self.files_pending.remove(capture_id.as_bytes())?;
        self.flush()
    }

    /// Claims `key` in the store for `owner`, or the first free `key_2`, `key_3`, ...
    /// (the part after the last `.` stays the extension). Idempotent for the same owner.
    pub fn claim_name(&self, key: &str, owner: &str) -> Result<String, IndexError> {
        let (stem, ext) = match key.rsplit_once('.') {
            Some((s, e)) if !e.contains('/') => (s, format!(".{e}")),
            _ => (key, String::new()),
        };
        self.claim(owner, |n| match n {
            1 => key.to_owned(),
            n => format!("{stem}_{n}{ext}"),
        })
    }

    /// Claims a whole folder name (HLS: its playlist and segments live under it): the same
    /// rule as [`Index::claim_name`], without an extension.
    pub fn claim_folder(&self, folder: &str, owner: &str) -> Result<String, IndexError> {
        let claimed = self.claim(owner, |n| match n {
            1 => format!("{folder}/"),
            n => format!("{folder}_{n}/"),
        })?;
        Ok(claimed.trim_end_matches('/').to_owned())
    }

    fn claim(&self, owner: &str, candidate: impl Fn(u32) -> String) -> Result<String, IndexError> {
        let mut n = 1u32;
        loop {
            let name = candidate(n);
            let won = self.names.compare_and_swap(
                name.as_bytes(),
                None as Option<&[u8]>,
                Some(owner.as_bytes()),
            )?;
            match won {
                Ok(()) => {
                    self.flush()?;
                    return Ok(name);
                }
                Err(cas) if cas.current.as_deref() == Some(owner.as_bytes()) => return Ok(name),
                Err(_) => n += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_capture_and_names_never_collide() {
        let id = FileRow::make_id("20261204T210000000Z-ab12", Format::Mp4, 3);
        assert_eq!(id, "20261204T210000000Z-ab12_mp400000003");
        assert_eq!(FileRow::capture_of(&id), Some("20261204T210000000Z-ab12"));
        assert_eq!(FileRow::capture_of("20261204T210000000Z-ab12"), None);
        assert_eq!(FileRow::capture_of("x_hls0001"), None);

        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.claim_name("a/cam.mp4", "f1").unwrap(), "a/cam.mp4");
        assert_eq!(
            index.claim_name("a/cam.mp4", "f1").unwrap(),
            "a/cam.mp4",
            "idempotent"
        );
        assert_eq!(index.claim_name("a/cam.mp4", "f2").unwrap(), "a/cam_2.mp4");
        assert_eq!(index.claim_name("a/cam.mp4", "f3").unwrap(), "a/cam_3.mp4");
        assert_eq!(index.claim_folder("a/cam", "r1").unwrap(), "a/cam");
        assert_eq!(index.claim_folder("a/cam", "r2").unwrap(), "a/cam_2");
        assert_eq!(index.claim_folder("a.b/cam", "r3").unwrap(), "a.b/cam");
        assert_eq!(index.claim_folder("a.b/cam", "r4").unwrap(), "a.b/cam_2");
    }
}
