//! Where each MP4/FLV/AAC file of a capture starts and ends, kept in the index as
//! [`FileRow`]s.
//!
//! A file is a span of the capture's segments: it closes after the first segment that
//! brings it to `record_interval_s` (segments start on keyframes, so the next file starts
//! on one), before a segment that follows a codec change, and when the capture finishes.
//! A resumed capture continues its open files (the resume window applies to every
//! format, and the capture's timeline is already continuous across a resume).
//!
//! The spans are a pure function of the segment rows ([`split`]), so the planner
//! ([`sync_capture`], run by [`run_file_planner`]) is idempotent: after a crash it
//! recomputes the same files. It reads only captures in the `files_pending` tree, and of
//! those only segments from the open file on while they record; a capture that has
//! ended (or whose segments recovery marked lost) is recomputed whole once.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::naming::{render, NameValues};
use crate::config::{FileOutput, Format};
use crate::index::{
    CaptureTotals, FileRow, FileState, Index, IndexError, RecordingRow, RecordingState, SegmentRow,
};
use crate::media::{Ticks, TICKS_PER_SECOND};
use crate::storage::Storage;

/// One file's span of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first_seq: u32,
    pub last_seq: u32,
    /// Final: the file will not grow.
    pub closed: bool,
}

/// Splits `segments` (in order, starting where the next file starts) into files of at most
/// `interval` of media (cut at the first segment boundary at or after it) and at codec
/// changes. The last span is open unless `terminal`.
pub fn split(segments: &[SegmentRow], interval: Ticks, terminal: bool) -> Vec<Span> {
    let mut spans = Vec::new();
    // (first seq, last seq, media so far, parameters fingerprint) of the open span.
    let mut current: Option<(u32, u32, Ticks, u64)> = None;
    for seg in segments {
        if let Some((first, last, _, params)) = current {
            if seg.changes_codec(params) {
                spans.push(Span {
                    first_seq: first,
                    last_seq: last,
                    closed: true,
                });
                current = None;
            }
        }
        let (first, _, acc, params) = current.unwrap_or((seg.seq, seg.seq, 0, 0));
        let acc = acc + seg.duration_ticks;
        let params = if params == 0 { seg.params } else { params };
        if acc >= interval {
            spans.push(Span {
                first_seq: first,
                last_seq: seg.seq,
                closed: true,
            });
            current = None;
        } else {
            current = Some((first, seg.seq, acc, params));
        }
    }
    if let Some((first, last, _, _)) = current {
        spans.push(Span {
            first_seq: first,
            last_seq: last,
            closed: terminal,
        });
    }
    spans
}

/// Brings the file rows of one capture up to date with its segments. Returns true when
/// every file of the capture is final (the capture can leave `files_pending`).
/// `storage`: where a clip's first segment is read to find its keyframe (None: clips
/// start at their first segment's start).
pub fn sync_capture(
    index: &Index,
    storage: Option<&Storage>,
    capture: &RecordingRow,
) -> Result<bool, IndexError> {
    let overlays_final =
        super::task_files::sync_overlays(index, storage, capture, crate::clock::now_ms())?;
    let Some(template) = capture.template.as_ref() else {
        return Ok(overlays_final);
    };
    let terminal = capture.is_terminal();
    // A task's recordings over this capture are planned by `task_files`.
    let existing: Vec<FileRow> = index
        .files_of(&capture.id)?
        .into_iter()
        .filter(|f| !f.is_overlay())
        .collect();
    let mut all_final = true;
    for (format, output) in template.file_outputs() {
        let mine: Vec<&FileRow> = existing.iter().filter(|f| f.format == format).collect();
        if mine.iter().any(|f| f.state == FileState::Skipped) {
            continue;
        }
        // Decided once, before any AAC file exists: a stream that starts without audio.
        if format == Format::Aac
            && mine.is_empty()
            && capture.segments > 0
            && capture.audio_codec.is_none()
        {
            let mut row = new_row(capture, format, template.name.as_str(), output, 1);
            row.state = FileState::Skipped;
            row.note = Some("the stream has no audio track: no AAC file is made".into());
            index.put_file(&row)?;
            continue;
        }
        let last = mine.last();
        let interval = i64::from(output.record_interval_s) * TICKS_PER_SECOND;
        if let Some(before) = last
            .filter(|f| f.state == FileState::Recording && !terminal)
            .and_then(|f| f.before)
        {
            // The open file closes only when it reaches the interval or a codec change
            // comes: both show in the capture's totals, so most passes read no segment.
            let grown = capture.duration_ticks - before.duration_ticks;
            if grown < interval && capture.codec_changes == before.codec_changes {
                all_final = false;
                continue;
            }
        }
        // While the capture grows, only the open file is looked at; once it is final, its
        // files are recomputed from the first segment (the same spans, since they are a
        // function of the segment rows), so gaps recovery marked later show in their rows.
        let (start_seq, number) = match last {
            _ if terminal => (1, 1),
            Some(f) if f.state == FileState::Recording => (f.first_seq, f.number),
            Some(f) => (f.last_seq + 1, f.number + 1),
            None => (1, 1),
        };
        // Only what the capture row counts, so the open file's totals agree with it.
        let segments: Vec<SegmentRow> = index
            .segments_after(&capture.id, start_seq.saturating_sub(1))?
            .into_iter()
            .filter(|s| s.seq < capture.next_seq)
            .collect();
        for (i, span) in split(&segments, interval, terminal).into_iter().enumerate() {
            let in_span: Vec<&SegmentRow> = segments
                .iter()
                .filter(|s| (span.first_seq..=span.last_seq).contains(&s.seq))
                .collect();
            let mut row = new_row(capture, format, &template.name, output, number + i as u32);
            if capture.deleted_files.contains(&row.id) {
                continue; // deleted over the API: not made again
            }
            fill(&mut row, &span, &in_span);
            let stored = index.get_file(&row.id)?;
            if span.closed {
                row.state = FileState::Finished;
                row.file_name = Some(render(
                    output.file_name(),
                    &NameValues {
                        app: &capture.app,
                        stream: &capture.stream,
                        record_id: capture.record_id.as_deref().unwrap_or(""),
                        recording_id: &capture.id,
                        template: &template.name,
                        start_ms: row.start_ms,
                        end_ms: Some(row.end_ms),
                    },
                ));
            } else {
                all_final = false;
                if open_row_written(stored.as_ref(), &span) {
                    continue; // written when it opened; its live span comes from the capture
                }
                row.before = Some(totals_before(capture, &row, &in_span));
            }
            save(index, &mut row, stored.as_ref())?;
        }
    }
    Ok(terminal && all_final && overlays_final)
}

fn new_row(
    capture: &RecordingRow,
    format: Format,
    template: &str,
    output: &FileOutput,
    number: u32,
) -> FileRow {
    FileRow {
        id: FileRow::make_id(&capture.id, format, number),
        capture_id: capture.id.clone(),
        app: capture.app.clone(),
        stream: capture.stream.clone(),
        format,
        template: template.to_owned(),
        number,
        first_seq: 0,
        last_seq: 0,
        state: FileState::Recording,
        start_ms: capture.start_ms,
        end_ms: capture.start_ms,
        duration_ticks: 0,
        segments: 0,
        ts_bytes: 0,
        gaps: 0,
        file_name: None,
        store_key: None,
        storage_time_s: output.storage_time_s,
        record_id: capture.record_id.clone(),
        note: None,
        uploaded_ms: None,
        before: None,
        store_expiry: None,
        task_id: capture.task_id.clone(),
        task_template: None,
        start: None,
    }
}

/// Whether the stored open row already covers `span`: it was written when it opened, and
/// its live span follows the capture ([`FileRow::live`]).
pub(super) fn open_row_written(stored: Option<&FileRow>, span: &Span) -> bool {
    stored.is_some_and(|s| s.state == FileState::Recording && s.first_seq == span.first_seq)
}

/// The capture's totals just before an open row's span (`in_span`, up to its newest
/// segment), so the row's live span is the capture's totals minus these.
pub(super) fn totals_before(
    capture: &RecordingRow,
    row: &FileRow,
    in_span: &[&SegmentRow],
) -> CaptureTotals {
    let mut before = CaptureTotals::of(capture);
    before.duration_ticks -= in_span.iter().map(|s| s.duration_ticks).sum::<Ticks>();
    before.bytes = before.bytes.saturating_sub(row.ts_bytes);
    before.segments = before.segments.saturating_sub(row.segments);
    before
}

/// Writes a planned row if it changed, keeping what the uploader fixed in the stored one
/// (object key, upload time, store expiry), and makes sure a finished one is queued for
/// upload. True when it wrote the row.
pub(super) fn save(
    index: &Index,
    row: &mut FileRow,
    stored: Option<&FileRow>,
) -> Result<bool, IndexError> {
    if let Some(old) = stored {
        row.store_key = old.store_key.clone();
        row.uploaded_ms = old.uploaded_ms;
        row.store_expiry = old.store_expiry;
    }
    let changed = stored != Some(&*row);
    if changed {
        index.put_file(row)?;
    }
    // Every pass (not only when the row changed): a crash between the row and its queue
    // entry must not leave a finished file that is never uploaded. Cheap: a
    // compare-and-swap that writes only when the entry is missing.
    if row.state == FileState::Finished && row.uploaded_ms.is_none() {
        index.ensure_upload_pending(&row.id)?;
    }
    Ok(changed)
}

pub(super) fn fill(row: &mut FileRow, span: &Span, segments: &[&SegmentRow]) {
    row.first_seq = span.first_seq;
    row.last_seq = span.last_seq;
    if let Some(first) = segments.first() {
        row.start_ms = first.wall_start_ms;
    }
    row.end_ms = segments
        .iter()
        .map(|s| s.wall_end_ms())
        .max()
        .unwrap_or(row.start_ms);
    row.duration_ticks = segments
        .iter()
        .filter(|s| !s.gap)
        .map(|s| s.duration_ticks)
        .sum();
    row.segments = segments.len() as u32;
    row.ts_bytes = segments.iter().map(|s| s.bytes).sum();
    row.gaps = segments.iter().filter(|s| s.gap).count() as u32;
    row.note = (row.gaps > 0).then(|| {
        format!(
            "{} segment(s) of the capture were lost to recovery; the file skips them",
            row.gaps
        )
    });
}

/// One pass over the captures with files to plan. `seen` remembers what each capture
/// looked like at its last pass, so unchanged captures cost one row read.
pub fn plan_pending(
    index: &Index,
    storage: Option<&Storage>,
    seen: &mut HashMap<String, (u32, RecordingState, u64)>,
) -> Result<(), IndexError> {
    let pending = index.files_pending()?;
    seen.retain(|id, _| pending.contains(id));
    for id in pending {
        let Some(capture) = index.get_recording(&id)? else {
            for o in index.overlays_of(&id)? {
                index.remove_overlay(&id, &o.task_id)?;
            }
            index.clear_files_pending(&id)?;
            continue;
        };
        let look = (capture.next_seq, capture.state, overlays_look(index, &id)?);
        if seen.get(&id) == Some(&look) {
            continue;
        }
        if sync_capture(index, storage, &capture)? {
            index.clear_files_pending(&id)?;
            seen.remove(&id);
        } else {
            seen.insert(id, look);
        }
    }
    Ok(())
}

/// What a capture's task windows look like to the planner: their ends, and which of them
/// have passed (a window over a capture waiting for its publisher closes by the clock).
fn overlays_look(index: &Index, capture_id: &str) -> Result<u64, IndexError> {
    use std::hash::{Hash, Hasher};
    let now = crate::clock::now_ms();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for o in index.overlays_of(capture_id)? {
        (o.task_id, o.to_ms, now >= o.to_ms).hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// How often the file planner looks for new segments and finished captures.
const PLAN_EVERY: Duration = Duration::from_secs(1);

/// Keeps file rows up to date until cancelled.
pub async fn run_file_planner(index: Index, storage: Storage, cancel: CancellationToken) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    loop {
        let (i, s, st) = (index.clone(), seen.clone(), storage.clone());
        let pass = tokio::task::spawn_blocking(move || {
            let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
            plan_pending(&i, Some(&st), &mut seen)
        })
        .await;
        match pass {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "file planning failed; retrying"),
            Err(e) => tracing::warn!(error = %e, "file planning task failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PLAN_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Template;
    use crate::index::Update;

    fn seg(seq: u32, secs: i64, codec_change: bool) -> SegmentRow {
        SegmentRow {
            seq,
            file: SegmentRow::file_name(seq),
            duration_ticks: secs * TICKS_PER_SECOND,
            bytes: 100,
            media_start: 0,
            wall_start_ms: 1_700_000_000_000 + i64::from(seq) * 4000,
            keyframe: true,
            discontinuity: codec_change,
            gap: false,
            recovered: false,
            codec_change,
            params: 0,
        }
    }

    #[test]
    fn spans_cut_at_the_interval_and_at_codec_changes() {
        let segs: Vec<_> = (1..=10).map(|n| seg(n, 4, n == 9)).collect();
        let spans = split(&segs, 12 * TICKS_PER_SECOND, false);
        let pairs: Vec<_> = spans
            .iter()
            .map(|s| (s.first_seq, s.last_seq, s.closed))
            .collect();
        assert_eq!(
            pairs,
            [(1, 3, true), (4, 6, true), (7, 8, true), (9, 10, false)]
        );
        let spans = split(&segs, 12 * TICKS_PER_SECOND, true);
        assert!(spans.last().unwrap().closed);
        // A 150 s capture of 4 s segments at 60 s: 60, 60 and 30 s files.
        let segs: Vec<_> = (1..=38).map(|n| seg(n, 4, false)).collect();
        let spans = split(&segs, 60 * TICKS_PER_SECOND, true);
        let pairs: Vec<_> = spans.iter().map(|s| (s.first_seq, s.last_seq)).collect();
        assert_eq!(pairs, [(1, 15), (16, 30), (31, 38)]);
    }

    #[test]
    fn a_resume_with_other_parameters_starts_a_new_file() {
        let mut segs: Vec<_> = (1..=5).map(|n| seg(n, 4, false)).collect();
        for s in &mut segs[..3] {
            s.params = 0xa;
        }
        segs[3].params = 0xb; // the publisher came back with another SPS
        segs[4].params = 0; // adopted by recovery: unknown, stays with its span
        let spans = split(&segs, 600 * TICKS_PER_SECOND, true);
        let pairs: Vec<_> = spans.iter().map(|s| (s.first_seq, s.last_seq)).collect();
        assert_eq!(pairs, [(1, 3), (4, 5)]);
        let mut capture = RecordingRow::new("c".into(), "a".into(), "s".into(), 0);
        for s in &segs {
            capture.add_segment(s);
        }
        assert_eq!(
            capture.codec_changes, 1,
            "the planner's trigger counts it too"
        );
    }

    #[test]
    fn the_planner_grows_closes_and_names_files() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut template = Template::builtin_default();
        template.name = "t".into();
        template.mp4 = Some(FileOutput {
            record_interval_s: 30,
            file_name: Some("{StreamID}_{RecordId}_{EndSecond}".into()),
            ..FileOutput::default()
        });
        template.aac = Some(FileOutput::default());
        let mut row = RecordingRow::new("c1".into(), "live".into(), "cam".into(), 0);
        row.template = Some(template);
        row.record_id = Some("m42".into());
        index.create_recording(&row).unwrap();
        index.mark_files_pending("c1").unwrap();
        let mut seen = HashMap::new();
        for n in 1..=5 {
            index.commit_segment("c1", &seg(n, 10, false)).unwrap();
        }
        index
            .update_recording("c1", |r| {
                r.video_codec = Some("h264".into());
                Update::Write
            })
            .unwrap();
        plan_pending(&index, None, &mut seen).unwrap();
        let files = index.files_of("c1").unwrap();
        let mp4: Vec<_> = files.iter().filter(|f| f.format == Format::Mp4).collect();
        assert_eq!(mp4.len(), 2);
        assert_eq!(
            (mp4[0].first_seq, mp4[0].last_seq, mp4[0].state),
            (1, 3, FileState::Finished)
        );
        assert_eq!(mp4[0].file_name.as_deref(), Some("cam_m42_42"));
        assert_eq!(
            (mp4[1].first_seq, mp4[1].last_seq, mp4[1].state),
            (4, 5, FileState::Recording)
        );
        let aac: Vec<_> = files.iter().filter(|f| f.format == Format::Aac).collect();
        assert_eq!(aac[0].state, FileState::Skipped, "no audio track");

        index.commit_segment("c1", &seg(6, 5, false)).unwrap();
        // Growing below the interval writes nothing: the open row keeps its first span,
        // and its live view follows the capture.
        plan_pending(&index, None, &mut seen).unwrap();
        let open = index.get_file(&mp4[1].id).unwrap().unwrap();
        assert_eq!(
            (open.last_seq, open.segments),
            (5, 2),
            "not rewritten per segment"
        );
        let capture = index.get_recording("c1").unwrap().unwrap();
        let live = open.live(&capture);
        assert_eq!((live.first_seq, live.last_seq, live.segments), (4, 6, 3));
        assert_eq!(live.duration_ticks, 25 * TICKS_PER_SECOND);
        index
            .update_recording("c1", |r| {
                r.state = RecordingState::Finished;
                Update::Write
            })
            .unwrap();
        plan_pending(&index, None, &mut seen).unwrap();
        let mp4: Vec<_> = index
            .files_of("c1")
            .unwrap()
            .into_iter()
            .filter(|f| f.format == Format::Mp4)
            .collect();
        assert_eq!(mp4.len(), 2);
        assert_eq!(
            (mp4[1].first_seq, mp4[1].last_seq, mp4[1].state),
            (4, 6, FileState::Finished)
        );
        assert!(index.files_pending().unwrap().is_empty(), "all final");
        // Idempotent: a second pass (after a crash) changes nothing.
        sync_capture(&index, None, &index.get_recording("c1").unwrap().unwrap()).unwrap();
        assert_eq!(index.files_of("c1").unwrap().len(), 3);

        // A deleted file stays deleted when recovery has the files recomputed.
        index.delete_recording(&mp4[0].id).unwrap();
        index.mark_files_pending("c1").unwrap();
        plan_pending(&index, None, &mut seen).unwrap();
        let ids: Vec<String> = index
            .files_of("c1")
            .unwrap()
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(!ids.contains(&mp4[0].id), "{ids:?}");
        assert!(ids.contains(&mp4[1].id), "{ids:?}");
    }
}
