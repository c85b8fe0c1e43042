//! A task's recordings over a capture another recording makes (a rule's): which of the
//! capture's segments fall in the task's window, and the [`FileRow`]s (HLS, MP4, FLV,
//! AAC, as the task's template asks) over them.
//!
//! The task writes no segment of its own (one copy of every media byte, DESIGN.md).
//! When its window opens on a live capture the writer is asked to cut at the next
//! keyframe (`LiveStats::request_cut`), and again when it closes, so a window's edges
//! are segment edges: its span is the segments that *start* inside the window, 20 s +-
//! one GOP for a 20 s window whatever the segment length. A clip reaches into the past,
//! where no cut can be made: its span starts with the segment holding its start.
//!
//! Like [`super::files::sync_capture`], the spans are a pure function of the segment rows
//! and the window ([`in_window`], [`super::files::split`]), so a crash recomputes the same
//! rows; while a window is open only its open rows are written (once; their live span
//! follows the capture, [`FileRow::live`]).

use crate::config::naming::{render, NameValues};
use crate::config::Format;
use crate::index::{
    FileRow, FileState, Index, IndexError, OverlayRow, RecordingRow, RecordingState, SegmentRow,
    SpanStart,
};
use crate::media::{Ticks, TICKS_PER_MS, TICKS_PER_SECOND};
use crate::mux::ts::timestamp_delta;
use crate::mux::ts_cut;
use crate::storage::Storage;

use super::files::{fill, open_row_written, save, split, totals_before, Span};

/// A cut asked for at a window's start lands on a keyframe that arrived after the ask;
/// a segment dated by a publisher's sender reports may still read a little earlier.
const EDGE_SLACK_MS: i64 = 500;

/// Whether segment `s` belongs to `overlay`'s window.
pub fn in_window(s: &SegmentRow, overlay: &OverlayRow) -> bool {
    let starts_in = if overlay.pre_roll {
        s.wall_end_ms() > overlay.from_ms
    } else {
        s.wall_start_ms >= overlay.from_ms - EDGE_SLACK_MS
    };
    // The cut asked for at the end may read a little early too.
    starts_in && s.wall_start_ms < overlay.to_ms - EDGE_SLACK_MS
}

/// Brings every task window over `capture` up to date; true when all of them are final
/// (their rows closed; the windows are forgotten).
pub fn sync_overlays(
    index: &Index,
    storage: Option<&Storage>,
    capture: &RecordingRow,
    now_ms: i64,
) -> Result<bool, IndexError> {
    let mut all_final = true;
    let overlays = index.overlays_of(&capture.id)?;
    if overlays.is_empty() {
        return Ok(true);
    }
    let rows: Vec<FileRow> = index
        .files_of(&capture.id)?
        .into_iter()
        .filter(|f| f.is_overlay())
        .collect();
    for mut overlay in overlays {
        // A task cancelled (or closed) before its window's end was moved: a crash between
        // the two, or a publish starting as it closed.
        let ended = index.get_task(&overlay.task_id)?.and_then(|t| t.ended_ms);
        if let Some(end) = ended.filter(|end| *end < overlay.to_ms) {
            index.end_overlays(&overlay.task_id, end)?;
            overlay.to_ms = end.max(overlay.from_ms);
        }
        let existing: Vec<FileRow> = rows
            .iter()
            .filter(|f| f.task_id.as_deref() == Some(overlay.task_id.as_str()))
            .cloned()
            .collect();
        let (done, made) = sync_overlay(index, storage, capture, &overlay, existing, now_ms)?;
        if !overlay.started && made {
            index.queue_overlay_status(
                &overlay,
                &as_session(capture, &overlay),
                "record_start_succeeded",
            )?;
        }
        if done {
            if overlay.started || made {
                index.queue_overlay_status(
                    &overlay,
                    &as_session(capture, &overlay),
                    "record_ended",
                )?;
            }
            index.remove_overlay(&capture.id, &overlay.task_id)?;
            tracing::info!(capture = %capture.id, task = %overlay.task_id, "the task's recordings over this capture are final");
        } else {
            all_final = false;
        }
    }
    Ok(all_final)
}

/// The capture as the task's recording session, for its status callbacks.
fn as_session(capture: &RecordingRow, overlay: &OverlayRow) -> RecordingRow {
    let mut row = capture.clone();
    row.id = overlay.session_id();
    row.task_id = Some(overlay.task_id.clone());
    row
}

/// Where a format's next look starts, and its next file number.
fn resume_point(mine: &[&FileRow], overlay: &OverlayRow) -> (u32, u32) {
    match mine.last() {
        Some(f) if f.state == FileState::Recording => (f.first_seq, f.number),
        Some(f) => (f.last_seq + 1, f.number + 1),
        None => (overlay.scan_from_seq, 1),
    }
}

/// One window's rows (`existing`: those it has). Returns (all final, any row exists).
fn sync_overlay(
    index: &Index,
    storage: Option<&Storage>,
    capture: &RecordingRow,
    overlay: &OverlayRow,
    existing: Vec<FileRow>,
    now_ms: i64,
) -> Result<(bool, bool), IndexError> {
    let template = &overlay.template;
    let mut made = !existing.is_empty();
    let formats: Vec<(Format, Ticks)> = template
        .formats()
        .into_iter()
        .map(|f| {
            let interval = template.file_output(f).map_or(Ticks::MAX, |o| {
                i64::from(o.record_interval_s) * TICKS_PER_SECOND
            });
            (f, interval)
        })
        .collect();
    // Nothing can join the window any more: the capture is over, or it waits for its
    // publisher past the window's end.
    let over_by_state = capture.is_terminal()
        || (capture.state != RecordingState::Recording && now_ms >= overlay.to_ms);
    if !over_by_state && now_ms < overlay.to_ms {
        // While the window is open, open rows follow the capture without a write; only a
        // file reaching its interval or a codec change needs a look.
        let quiet = formats.iter().all(|(format, interval)| {
            let mine: Vec<&FileRow> = existing.iter().filter(|f| f.format == *format).collect();
            match mine.last() {
                Some(f) if f.state == FileState::Skipped => true,
                Some(f) if f.state == FileState::Recording => f.before.is_some_and(|b| {
                    capture.duration_ticks - b.duration_ticks < *interval
                        && capture.codec_changes == b.codec_changes
                }),
                _ => false,
            }
        });
        if quiet {
            return Ok((false, made));
        }
    }
    let start = formats
        .iter()
        .filter_map(|(format, _)| {
            let mine: Vec<&FileRow> = existing.iter().filter(|f| f.format == *format).collect();
            let skipped = mine.iter().any(|f| f.state == FileState::Skipped);
            (!skipped).then(|| resume_point(&mine, overlay).0)
        })
        .min()
        .unwrap_or(overlay.scan_from_seq)
        .max(1);
    let segments: Vec<SegmentRow> = index
        .segments_after(&capture.id, start - 1)?
        .into_iter()
        .filter(|s| s.seq < capture.next_seq)
        .collect();
    let closed = over_by_state
        || segments
            .iter()
            .any(|s| s.wall_start_ms >= overlay.to_ms - EDGE_SLACK_MS);
    let mut window: Vec<SegmentRow> = segments
        .into_iter()
        .filter(|s| in_window(s, overlay))
        .collect();
    // A clip starts at the keyframe at or before its start, inside its first segment.
    let start = match window.first() {
        Some(first) if overlay.pre_roll && first.seq == first_in_window(&existing, first) => {
            let known = existing
                .iter()
                .find(|f| f.first_seq == first.seq && f.start.is_some())
                .and_then(|f| f.start);
            known.or_else(|| storage.and_then(|st| clip_start(st, capture, first, overlay.from_ms)))
        }
        _ => None,
    };
    if let (Some(start), Some(first)) = (start, window.first_mut()) {
        *first = start.trim(first);
    }
    let mut all_final = closed;
    for (format, interval) in formats {
        let mine: Vec<&FileRow> = existing.iter().filter(|f| f.format == format).collect();
        if mine.iter().any(|f| f.state == FileState::Skipped) {
            continue;
        }
        if format == Format::Aac
            && mine.is_empty()
            && !window.is_empty()
            && capture.audio_codec.is_none()
        {
            let mut row = new_row(capture, overlay, format, 1);
            row.state = FileState::Skipped;
            row.note = Some("the stream has no audio track: no AAC file is made".into());
            index.put_file(&row)?;
            made = true;
            continue;
        }
        let (from_seq, number) = resume_point(&mine, overlay);
        let mine_segments: Vec<SegmentRow> = window
            .iter()
            .filter(|s| s.seq >= from_seq)
            .cloned()
            .collect();
        let spans = match format {
            Format::Hls => whole(&mine_segments, closed),
            _ => split(&mine_segments, interval, closed),
        };
        for (i, span) in spans.into_iter().enumerate() {
            let in_span: Vec<&SegmentRow> = mine_segments
                .iter()
                .filter(|s| (span.first_seq..=span.last_seq).contains(&s.seq))
                .collect();
            let mut row = new_row(capture, overlay, format, number + i as u32);
            if capture.deleted_files.contains(&row.id) {
                continue; // deleted over the API: not made again
            }
            fill(&mut row, &span, &in_span);
            row.start = start.filter(|_| span.first_seq == window[0].seq);
            let stored = index.get_file(&row.id)?;
            if span.closed {
                row.state = FileState::Finished;
                row.file_name =
                    (format != Format::Hls).then(|| file_name(capture, overlay, format, &row));
            } else {
                all_final = false;
                if open_row_written(stored.as_ref(), &span) {
                    continue; // written when it opened; its live span comes from the capture
                }
                // The open row runs to the capture's newest segment.
                row.before = Some(totals_before(capture, &row, &in_span));
            }
            made |= save(index, &mut row, stored.as_ref())?;
        }
    }
    Ok((all_final, made))
}

/// The seq the window's first file starts at: the first in-window segment unless a file
/// of the window already starts earlier (a file planned before this look).
fn first_in_window(existing: &[FileRow], first: &SegmentRow) -> u32 {
    existing
        .iter()
        .filter(|f| f.state != FileState::Skipped)
        .map(|f| f.first_seq)
        .min()
        .unwrap_or(first.seq)
        .min(first.seq)
}

/// Where a clip starting at wall time `from_ms` begins inside segment `seg`: its last
/// keyframe at or before that moment. None when that is the segment's own start (or the
/// file cannot be read: the clip then starts with the segment).
fn clip_start(
    storage: &Storage,
    capture: &RecordingRow,
    seg: &SegmentRow,
    from_ms: i64,
) -> Option<SpanStart> {
    let target = seg.media_start + (from_ms - seg.wall_start_ms).max(0) * TICKS_PER_MS;
    let path = storage
        .recording_dir(&capture.app, &capture.stream, &capture.id)
        .join(&seg.file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read a clip's first segment; the clip starts with it");
            return None;
        }
    };
    let keyframes = ts_cut::keyframes(&bytes);
    let first_offset = keyframes.first()?.offset;
    keyframes
        .iter()
        .map(|k| SpanStart {
            dts: seg.media_start + timestamp_delta(k.dts, seg.media_start),
            offset: k.offset,
        })
        .take_while(|k| k.dts <= target)
        .last()
        .filter(|k| k.offset > first_offset)
}

/// An HLS recording of a task is its whole window: one span.
fn whole(segments: &[SegmentRow], closed: bool) -> Vec<Span> {
    match (segments.first(), segments.last()) {
        (Some(first), Some(last)) => vec![Span {
            first_seq: first.seq,
            last_seq: last.seq,
            closed,
        }],
        _ => Vec::new(),
    }
}

fn file_name(
    capture: &RecordingRow,
    overlay: &OverlayRow,
    format: Format,
    row: &FileRow,
) -> String {
    let pattern = overlay
        .template
        .file_output(format)
        .map_or(crate::config::templates::DEFAULT_FILE_NAME, |o| {
            o.file_name()
        });
    render(
        pattern,
        &NameValues {
            app: &capture.app,
            stream: &capture.stream,
            record_id: capture.record_id.as_deref().unwrap_or(""),
            recording_id: &row.id,
            template: &overlay.template.name,
            start_ms: row.start_ms,
            end_ms: Some(row.end_ms),
        },
    )
}

fn new_row(capture: &RecordingRow, overlay: &OverlayRow, format: Format, number: u32) -> FileRow {
    let template = &overlay.template;
    let storage_time_s = match format {
        Format::Hls => template.hls.as_ref().map_or(0, |h| h.storage_time_s),
        _ => template.file_output(format).map_or(0, |o| o.storage_time_s),
    };
    FileRow {
        id: FileRow::make_overlay_id(&capture.id, format, &overlay.task_id, number),
        capture_id: capture.id.clone(),
        app: capture.app.clone(),
        stream: capture.stream.clone(),
        format,
        template: template.name.clone(),
        number,
        first_seq: 0,
        last_seq: 0,
        state: FileState::Recording,
        start_ms: overlay.from_ms,
        end_ms: overlay.from_ms,
        duration_ticks: 0,
        segments: 0,
        ts_bytes: 0,
        gaps: 0,
        file_name: None,
        store_key: None,
        storage_time_s,
        record_id: capture.record_id.clone(),
        note: None,
        uploaded_ms: None,
        before: None,
        store_expiry: None,
        task_id: Some(overlay.task_id.clone()),
        task_template: Some(Box::new(template.clone())),
        start: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileOutput, Template};
    use crate::index::Update;

    const T0: i64 = 1_700_000_000_000;

    /// Segment `seq` of 2 s starting at T0 + 2 s * (seq - 1), or where `start_ms` says.
    fn seg(seq: u32, start_ms: i64, secs: i64) -> SegmentRow {
        SegmentRow {
            seq,
            file: SegmentRow::file_name(seq),
            duration_ticks: secs * TICKS_PER_SECOND,
            bytes: 1000,
            media_start: 0,
            wall_start_ms: start_ms,
            keyframe: true,
            discontinuity: false,
            gap: false,
            recovered: false,
            codec_change: false,
            params: 0,
        }
    }

    fn overlay(from_ms: i64, to_ms: i64, pre_roll: bool) -> OverlayRow {
        let mut template = Template::builtin_default();
        template.name = "clips".into();
        template.mp4 = Some(FileOutput {
            record_interval_s: 30,
            ..FileOutput::default()
        });
        OverlayRow {
            capture_id: "c1".into(),
            task_id: "task-1".into(),
            template,
            from_ms,
            to_ms,
            pre_roll,
            scan_from_seq: 1,
            started: false,
        }
    }

    #[test]
    fn a_window_spans_the_segments_starting_in_it_and_a_clip_the_one_holding_its_start() {
        let window = overlay(T0 + 10_000, T0 + 30_000, false);
        // The writer cut at the first keyframe after the window opened (10.2 s), and
        // again after it closed (30.4 s).
        assert!(!in_window(&seg(5, T0 + 8_000, 2), &window));
        assert!(in_window(&seg(6, T0 + 10_200, 4), &window));
        assert!(in_window(&seg(7, T0 + 26_400, 4), &window));
        assert!(!in_window(&seg(8, T0 + 30_400, 4), &window));
        // A sender-report date a little before the ask still counts.
        assert!(in_window(&seg(6, T0 + 9_700, 4), &window));
        let clip = overlay(T0 + 11_000, T0 + 30_000, true);
        assert!(
            !in_window(&seg(4, T0 + 6_000, 4), &clip),
            "ends before the clip"
        );
        assert!(
            in_window(&seg(5, T0 + 10_000, 4), &clip),
            "holds the clip's start"
        );
    }

    #[test]
    fn a_task_over_a_rule_capture_gets_its_own_hls_and_mp4_rows_and_the_rule_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut capture = RecordingRow::new("c1".into(), "live".into(), "cam".into(), T0);
        capture.template = Some(Template::builtin_default());
        index.create_recording(&capture).unwrap();
        // 4 s segments from T0; the window is +10..+50 s, the writer cut at 10.1 s.
        let starts = [
            0, 4_000, 8_000, 10_100, 14_100, 18_100, 22_100, 26_100, 30_100, 34_100,
        ];
        let mut seq = 0;
        let mut commit = |start: i64| {
            seq += 1;
            index
                .commit_segment("c1", &seg(seq, T0 + start, 4))
                .unwrap();
        };
        for s in starts {
            commit(s);
        }
        index
            .update_recording("c1", |r| {
                r.audio_codec = Some("aac".into());
                Update::Write
            })
            .unwrap();
        let window = overlay(T0 + 10_000, T0 + 50_000, false);
        assert!(index.add_overlay(&window).unwrap());
        let capture = index.get_recording("c1").unwrap().unwrap();
        assert!(
            !sync_overlays(&index, None, &capture, T0 + 38_000).unwrap(),
            "window open"
        );
        let rows = |index: &Index| -> Vec<FileRow> {
            index
                .files_of("c1")
                .unwrap()
                .into_iter()
                .filter(|f| f.is_overlay())
                .collect()
        };
        let open = rows(&index);
        let ids: Vec<&str> = open.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            ["c1_hls-task-1-0001", "c1_mp4-task-1-0001"],
            "one HLS recording, one MP4 file so far"
        );
        assert!(open.iter().all(|f| f.state == FileState::Recording));
        assert_eq!(open[0].first_seq, 4, "starts at the cut");
        assert_eq!(FileRow::capture_of(&open[0].id), Some("c1"));
        assert!(FileRow::is_overlay_id(&open[0].id));
        assert!(!FileRow::is_overlay_id("c1_mp400000001"));
        // The MP4 reached its 30 s at segment 11 (segments 4..=11 hold 32 s): cut there.
        for s in [38_100, 42_100, 46_100, 50_100, 54_100] {
            commit(s);
        }
        let capture = index.get_recording("c1").unwrap().unwrap();
        assert!(
            sync_overlays(&index, None, &capture, T0 + 56_000).unwrap(),
            "window closed"
        );
        let done = rows(&index);
        let spans: Vec<(&str, u32, u32, FileState)> = done
            .iter()
            .map(|f| (f.id.as_str(), f.first_seq, f.last_seq, f.state))
            .collect();
        assert_eq!(
            spans,
            [
                ("c1_hls-task-1-0001", 4, 13, FileState::Finished),
                ("c1_mp4-task-1-0001", 4, 11, FileState::Finished),
                ("c1_mp4-task-1-0002", 12, 13, FileState::Finished),
            ]
        );
        let hls = &done[0];
        assert_eq!(hls.duration_ticks, 40 * TICKS_PER_SECOND);
        assert_eq!(hls.start_ms, T0 + 10_100);
        assert_eq!(hls.task_id.as_deref(), Some("task-1"));
        assert_eq!(hls.template, "clips");
        assert!(
            hls.file_name.is_none(),
            "an HLS folder is named when it uploads"
        );
        assert!(done[1].file_name.as_deref().unwrap().starts_with("cam_"));
        assert!(
            index.overlays_of("c1").unwrap().is_empty(),
            "forgotten once final"
        );
        let pending: Vec<String> = index
            .upload_pending()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for f in &done {
            assert!(pending.contains(&f.id), "{} queued for upload", f.id);
        }
        // The rule's own capture planning never sees them.
        assert!(
            crate::record::files::sync_capture(&index, None, &capture).unwrap()
                || capture.state.is_open()
        );
        assert_eq!(index.files_of("c1").unwrap().len(), 3);
        // The rule's HLS in the store is not enough to evict the capture: the task's
        // recordings over it are not uploaded yet.
        let capture = index
            .update_recording("c1", |r| {
                r.state = RecordingState::Finished;
                r.uploaded_ms = Some(T0 + 60_000);
                Update::Write
            })
            .unwrap();
        index.clear_files_pending("c1").unwrap();
        assert_eq!(index.delivered_ms(&capture).unwrap(), None);
    }

    #[test]
    fn a_window_over_a_capture_waiting_for_its_publisher_closes_by_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let capture = RecordingRow::new("c1".into(), "live".into(), "cam".into(), T0);
        index.create_recording(&capture).unwrap();
        for n in 1..=5 {
            index
                .commit_segment("c1", &seg(n, T0 + i64::from(n) * 4_000, 4))
                .unwrap();
        }
        let capture = index
            .update_recording("c1", |r| {
                r.state = RecordingState::Resumable;
                Update::Write
            })
            .unwrap();
        let mut window = overlay(T0 + 7_000, T0 + 60_000, false);
        window.template.mp4 = None;
        index.add_overlay(&window).unwrap();
        assert!(
            !sync_overlays(&index, None, &capture, T0 + 30_000).unwrap(),
            "it may come back"
        );
        assert!(sync_overlays(&index, None, &capture, T0 + 60_000).unwrap());
        let rows: Vec<FileRow> = index.files_of("c1").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].first_seq, rows[0].last_seq), (2, 5));
        assert_eq!(rows[0].state, FileState::Finished);
    }

    #[test]
    fn a_task_cancelled_before_its_window_moved_ends_its_span_at_the_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let capture = RecordingRow::new("c1".into(), "live".into(), "cam".into(), T0);
        index.create_recording(&capture).unwrap();
        for n in 0..10 {
            index
                .commit_segment("c1", &seg(n + 1, T0 + i64::from(n) * 4_000, 4))
                .unwrap();
        }
        let mut window = overlay(T0, T0 + 600_000, false);
        window.template.mp4 = None;
        index.add_overlay(&window).unwrap();
        // Cancelled at +18 s, and the daemon stopped before the window heard of it.
        index
            .put_task(&crate::index::TaskRow {
                id: "task-1".into(),
                app: "live".into(),
                stream: "cam".into(),
                template: "clips".into(),
                start_ms: T0,
                end_ms: T0 + 600_000,
                pre_roll_s: 0,
                state: crate::index::TaskState::Cancelled,
                created_ms: T0,
                ended_ms: Some(T0 + 18_000),
                note: None,
            })
            .unwrap();
        let capture = index.get_recording("c1").unwrap().unwrap();
        assert!(sync_overlays(&index, None, &capture, T0 + 40_000).unwrap());
        let rows = index.files_of("c1").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].first_seq, rows[0].last_seq),
            (1, 5),
            "{:?}",
            rows[0]
        );
        assert_eq!(rows[0].state, FileState::Finished);
    }
}
