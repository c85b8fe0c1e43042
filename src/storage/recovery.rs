//! Startup recovery (crash-safety invariant 2): brings the index and the media files back
//! into agreement after a crash or power cut, idempotently.
//!
//! For every recording that was open (`recording` or `resumable`) when the process died:
//! - a `.part` file is cut to its last whole PES of every track (so it ends on complete
//!   access units), renamed to its final name and adopted as a short segment;
//! - a sealed file no row names (a crash between rename and index commit) is adopted;
//! - a row whose file is missing becomes an `EXT-X-GAP` segment, never silently dropped;
//! - a recording that was `recording` becomes `resumable` for the rest of its window
//!   (measured from its last durable media), or `finished` when the window has passed.
//!
//! Failed recordings get their files reconciled (a write error may leave a `.part`).
//! A recording that never got a durable segment is removed (nothing to play or resume).
//! Recordings marked `deleting` finish their two-phase delete (invariant 3). Finished
//! recordings are not rescanned here (that is `fsck`'s job), which keeps start-up fast.
//! Files are scanned in 1 MiB chunks: memory does not grow with a segment's size.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{parse_segment_file_name, sync_dir, Storage};
use crate::index::{Index, IndexError, RecordingRow, RecordingState, SegmentRow, Update};
use crate::mux::ts_scan;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What recovery did, for the log and for `fsck --repair`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    pub recordings_checked: usize,
    pub segments_adopted: usize,
    pub bytes_truncated: u64,
    pub parts_discarded: usize,
    pub gaps_marked: usize,
    pub deletions_completed: usize,
    pub made_resumable: usize,
    pub finished: usize,
    pub empty_removed: usize,
}

impl RecoveryReport {
    pub fn changed_anything(&self) -> bool {
        let checked_only = RecoveryReport {
            recordings_checked: self.recordings_checked,
            ..Default::default()
        };
        *self != checked_only
    }
}

/// Runs recovery over the open recordings, interrupted deletes and failed recordings not
/// yet reconciled (the index keeps their ids: start-up reads these rows only, however
/// many recordings the box holds). `now_ms` is wall time.
pub fn recover(
    index: &Index,
    storage: &Storage,
    resume_window: Duration,
    now_ms: i64,
) -> Result<RecoveryReport, RecoveryError> {
    let mut report = RecoveryReport::default();
    let mut rows = Vec::new();
    for id in index.recovery_ids()? {
        rows.extend(index.get_recording(&id)?);
    }
    for row in rows {
        if row.deleting {
            finish_delete(index, storage, &row)?;
            report.deletions_completed += 1;
            continue;
        }
        if row.evicted_ms.is_some() {
            // Uploaded, local files removed on purpose.
            continue;
        }
        if row.state == RecordingState::Failed {
            // A recording that failed on a write error may have left a `.part` behind.
            report.recordings_checked += 1;
            reconcile_files(index, storage, &row, &mut report)?;
            index.settled(&row.id)?;
            continue;
        }
        if !row.state.is_open() {
            continue;
        }
        report.recordings_checked += 1;
        let row = reconcile_files(index, storage, &row, &mut report)?;
        if row.segments == 0 && row.sessions <= 1 {
            // Created just before the crash, before any media became durable: there is
            // nothing to resume or play (the live path removes these too).
            finish_delete(index, storage, &row)?;
            report.empty_removed += 1;
            continue;
        }
        close_or_resume(index, &row, resume_window, now_ms, &mut report)?;
    }
    Ok(report)
}

/// Phases 2 and 3 of a two-phase delete.
pub fn finish_delete(
    index: &Index,
    storage: &Storage,
    row: &RecordingRow,
) -> Result<(), RecoveryError> {
    let dir = storage.recording_dir(&row.app, &row.stream, &row.id);
    storage
        .remove_recording_dir(&row.app, &row.stream, &row.id)
        .map_err(io_err(&dir))?;
    index.remove_recording(&row.id)?;
    Ok(())
}

/// A recording that was live when the process died becomes resumable for the rest of its
/// window; one whose window has passed is finished.
fn close_or_resume(
    index: &Index,
    row: &RecordingRow,
    resume_window: Duration,
    now_ms: i64,
    report: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    let until = row.end_ms + resume_window.as_millis() as i64;
    let resumable = !resume_window.is_zero() && until > now_ms;
    let updated = index.update_recording(&row.id, |r| {
        if resumable {
            if r.state == RecordingState::Recording {
                r.state = RecordingState::Resumable;
                r.resumable_until_ms = Some(until);
                return Update::Write;
            }
            Update::Skip
        } else {
            r.state = RecordingState::Finished;
            r.resumable_until_ms = None;
            Update::Write
        }
    })?;
    match updated.state {
        RecordingState::Resumable if row.state == RecordingState::Recording => {
            report.made_resumable += 1
        }
        RecordingState::Finished => report.finished += 1,
        _ => {}
    }
    Ok(())
}

/// Makes one recording's rows and files agree: adopts unindexed and `.part` files, marks
/// missing or truncated files as gaps. Returns the updated row.
pub fn reconcile_files(
    index: &Index,
    storage: &Storage,
    row: &RecordingRow,
    report: &mut RecoveryReport,
) -> Result<RecordingRow, RecoveryError> {
    let dir = storage.recording_dir(&row.app, &row.stream, &row.id);
    let mut known: BTreeMap<u32, SegmentRow> = index
        .segments(&row.id)?
        .into_iter()
        .map(|s| (s.seq, s))
        .collect();

    for seg in known.values_mut() {
        if seg.gap {
            continue;
        }
        let size = std::fs::metadata(dir.join(&seg.file)).map(|m| m.len()).ok();
        if size.is_none_or(|size| size < seg.bytes) {
            tracing::warn!(recording = %row.id, file = %seg.file, "segment file missing or truncated; marking it as a gap");
            seg.gap = true;
            index.put_segment(&row.id, seg)?;
            report.gaps_marked += 1;
            if row.has_files() {
                // Its MP4/FLV/AAC files now skip this segment: their rows say so.
                index.mark_files_pending(&row.id)?;
            }
        }
    }

    let mut files: Vec<(u32, bool, String)> = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some((seq, part)) = parse_segment_file_name(&name) {
                    files.push((seq, part, name));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dir)(e)),
    }
    files.sort();

    for (seq, part, name) in files {
        let path = dir.join(&name);
        if known.contains_key(&seq) {
            if part {
                // A committed row already owns this seq; the .part is a stale duplicate.
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                report.parts_discarded += 1;
            }
            continue;
        }
        let (scan, file_len) = scan_file(&path, !part).map_err(io_err(&path))?;
        let media_start = [scan.video.as_ref(), scan.audio.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| p.first_dts)
            .min();
        let Some(media_start) = media_start.filter(|_| scan.keep_len > 0) else {
            tracing::info!(file = %path.display(), "discarding a segment file with no complete frame");
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            sync_dir(&dir).map_err(io_err(&dir))?;
            report.parts_discarded += 1;
            continue;
        };
        let final_name = SegmentRow::file_name(seq);
        if part {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(scan.keep_len as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            report.bytes_truncated += file_len - scan.keep_len as u64;
            let final_path = dir.join(&final_name);
            std::fs::rename(&path, &final_path).map_err(io_err(&path))?;
            sync_dir(&dir).map_err(io_err(&dir))?;
        }
        let wall_start_ms = known
            .range(..seq)
            .next_back()
            .map(|(_, prev)| prev.wall_end_ms())
            .unwrap_or(row.start_ms);
        let seg = SegmentRow {
            seq,
            file: final_name,
            duration_ticks: scan.duration(),
            bytes: scan.keep_len as u64,
            media_start,
            wall_start_ms,
            keyframe: scan.starts_with_keyframe,
            discontinuity: false,
            gap: false,
            recovered: true,
            codec_change: false,
            params: 0,
        };
        tracing::info!(recording = %row.id, file = %seg.file, bytes = seg.bytes,
            duration_s = seg.duration_s(), from_part = part, "adopted segment after a crash");
        index.commit_segment(&row.id, &seg)?;
        known.insert(seq, seg);
        report.segments_adopted += 1;
    }
    index
        .get_recording(&row.id)?
        .ok_or_else(|| IndexError::NoSuchRecording(row.id.clone()).into())
}

/// Scans a segment file in chunks of [`SCAN_CHUNK`] (a `.part` is as large as its
/// publisher kept the segment open: never read it whole). Returns the scan and the
/// file's length.
fn scan_file(path: &Path, complete: bool) -> io::Result<(ts_scan::TsScan, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut scanner = ts_scan::Scanner::new(complete);
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        scanner.feed(&chunk[..n]);
        len += n as u64;
    }
    Ok((scanner.finish(), len))
}

/// Bytes read at a time by [`scan_file`].
const SCAN_CHUNK: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PART_SUFFIX;

    fn segment_row(seq: u32, bytes: u64) -> SegmentRow {
        SegmentRow {
            seq,
            file: SegmentRow::file_name(seq),
            duration_ticks: 90_000,
            bytes,
            media_start: 0,
            wall_start_ms: 10_000,
            keyframe: true,
            discontinuity: false,
            gap: false,
            recovered: false,
            codec_change: false,
            params: 0,
        }
    }

    #[test]
    fn empty_part_files_are_discarded_and_empty_recordings_removed() {
        let data = tempfile::tempdir().unwrap();
        let index = Index::open(&data.path().join("index")).unwrap();
        let storage = Storage::new(data.path().join("media"));
        let row = RecordingRow::new("r".into(), "live".into(), "s".into(), 1_000);
        index.create_recording(&row).unwrap();
        let dir = storage.create_recording_dir("live", "s", "r").unwrap();
        std::fs::write(dir.join(format!("00000001.ts{PART_SUFFIX}")), b"").unwrap();
        let report = recover(&index, &storage, Duration::from_secs(30), 1_000_000).unwrap();
        assert_eq!(report.parts_discarded, 1);
        assert_eq!(report.empty_removed, 1);
        assert!(!dir.exists());
        assert!(index.get_recording("r").unwrap().is_none());
        // Idempotent.
        let again = recover(&index, &storage, Duration::from_secs(30), 1_000_000).unwrap();
        assert!(!again.changed_anything(), "{again:?}");
    }

    #[test]
    fn live_recording_becomes_resumable_for_the_rest_of_its_window() {
        let data = tempfile::tempdir().unwrap();
        let index = Index::open(&data.path().join("index")).unwrap();
        let storage = Storage::new(data.path().join("media"));
        let row = RecordingRow::new("r".into(), "live".into(), "s".into(), 10_000);
        index.create_recording(&row).unwrap();
        let dir = storage.create_recording_dir("live", "s", "r").unwrap();
        std::fs::write(dir.join(SegmentRow::file_name(1)), [0x47; 188]).unwrap();
        index.commit_segment("r", &segment_row(1, 188)).unwrap();
        // Media ended at 11 s wall time; the window is 30 s.
        let report = recover(&index, &storage, Duration::from_secs(30), 20_000).unwrap();
        assert_eq!(report.made_resumable, 1);
        let row = index.get_recording("r").unwrap().unwrap();
        assert_eq!(row.state, RecordingState::Resumable);
        assert_eq!(row.resumable_until_ms, Some(41_000));
        // Past the window it is finished instead.
        index
            .update_recording("r", |r| {
                r.state = RecordingState::Recording;
                Update::Write
            })
            .unwrap();
        let report = recover(&index, &storage, Duration::from_secs(30), 41_001).unwrap();
        assert_eq!(report.finished, 1);
        assert_eq!(
            index.get_recording("r").unwrap().unwrap().state,
            RecordingState::Finished
        );
    }

    #[test]
    fn missing_files_become_gaps_and_deletes_complete() {
        let data = tempfile::tempdir().unwrap();
        let index = Index::open(&data.path().join("index")).unwrap();
        let storage = Storage::new(data.path().join("media"));
        let row = RecordingRow::new("r".into(), "live".into(), "s".into(), 0);
        index.create_recording(&row).unwrap();
        storage.create_recording_dir("live", "s", "r").unwrap();
        index.commit_segment("r", &segment_row(1, 188)).unwrap();
        let report = recover(&index, &storage, Duration::ZERO, 5_000).unwrap();
        assert_eq!(report.gaps_marked, 1);
        assert!(index.segments("r").unwrap()[0].gap);

        index
            .update_recording("r", |r| {
                r.deleting = true;
                Update::Write
            })
            .unwrap();
        let report = recover(&index, &storage, Duration::ZERO, 5_000).unwrap();
        assert_eq!(report.deletions_completed, 1);
        assert!(index.get_recording("r").unwrap().is_none());
        assert!(!storage.recording_dir("live", "s", "r").exists());
    }
}
