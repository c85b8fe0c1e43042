//! The planner: turns committed segments and finished recordings into object rows, and
//! a recording whose objects are all in the store into "uploaded" plus a queued callback.
//!
//! It scans only the `upload_pending` tree (recordings with work left), so its cost does
//! not grow with the archive. Blocking (sled); runs on the blocking pool.

use crate::config::naming::{render, NameValues};
use crate::config::UploadConfig;
use crate::index::{
    CallbackRow, FileRow, FileState, Index, IndexError, ObjectKind, PendingRow, RecordingRow,
    SegmentRow, Update, UploadRow, UploadState,
};

/// Builds a recording's completion callback from its row and objects (None: callbacks off).
pub type CallbackBuilder<'a> = dyn Fn(&RecordingRow, &[UploadRow], i64) -> Option<CallbackRow> + 'a;

/// Builds a file recording's completion callback from its row, its capture and its object.
pub type FileCallbackBuilder<'a> =
    dyn Fn(&FileRow, &RecordingRow, &UploadRow, i64) -> Option<CallbackRow> + 'a;

/// What the planner needs besides the index.
pub struct PlanContext<'a> {
    pub config: &'a UploadConfig,
    /// Builds the completion callback of a recording (None: callbacks are off).
    pub callback: &'a CallbackBuilder<'a>,
    /// The same for an MP4/FLV/AAC file.
    pub file_callback: &'a FileCallbackBuilder<'a>,
}

/// What one planning pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PlanReport {
    pub queued: usize,
    pub completed: Vec<String>,
}

/// One pass over the pending recordings.
pub fn plan_once(index: &Index, ctx: &PlanContext, now_ms: i64) -> Result<PlanReport, IndexError> {
    let mut report = PlanReport::default();
    for (id, progress) in index.upload_pending()? {
        if FileRow::capture_of(&id).is_some() {
            report.queued += plan_file(index, ctx, &id, now_ms, &mut report)?;
            continue;
        }
        let Some(rec) = index.get_recording(&id)? else {
            index.drop_uploads(&id)?;
            continue;
        };
        if rec.deleting {
            continue;
        }
        if rec.uploaded_ms.is_some() || (rec.segments == 0 && rec.is_terminal()) {
            // Nothing (left) to send.
            index.drop_uploads(&id)?;
            continue;
        }
        if rec.segments == 0 {
            continue;
        }
        if !rec.has_hls() {
            // Its template makes files only: they are uploaded on their own.
            index.drop_uploads(&id)?;
            continue;
        }
        let rec = match rec.store_path {
            Some(_) => rec,
            None => {
                let path = index.claim_folder(&store_path(ctx.config, &rec), &rec.id)?;
                index.update_recording(&id, |r| {
                    if r.store_path.is_some() {
                        return Update::Skip;
                    }
                    r.store_path = Some(path.clone());
                    Update::Write
                })?
            }
        };
        report.queued += plan_recording(index, ctx, &rec, progress, now_ms, &mut report)?;
    }
    Ok(report)
}

fn plan_recording(
    index: &Index,
    ctx: &PlanContext,
    rec: &RecordingRow,
    mut progress: PendingRow,
    now_ms: i64,
    report: &mut PlanReport,
) -> Result<usize, IndexError> {
    let base = rec.store_path.clone().unwrap_or_default();
    let before = progress.clone();
    let mut rows = Vec::new();
    if rec.next_seq.saturating_sub(1) > progress.queued_through {
        for seg in index.segments_after(&rec.id, progress.queued_through)? {
            if !seg.gap {
                rows.push(segment_object(&rec.id, &base, &seg, now_ms));
            }
            progress.queued_through = seg.seq;
        }
    }
    if rec.is_terminal() && !progress.playlist_queued && rows.is_empty() {
        let objects = index.uploads_of(&rec.id)?;
        if objects.iter().all(|o| o.state == UploadState::Uploaded) {
            rows.push(new_row(
                UploadRow::playlist_id(&rec.id),
                &rec.id,
                ObjectKind::Playlist,
                format!("{base}/index.m3u8"),
                0,
                now_ms,
            ));
            progress.playlist_queued = true;
        }
    }
    let queued = rows.len();
    if queued > 0 || progress != before {
        index.queue_uploads(&rec.id, &rows, &progress)?;
    }
    if progress.playlist_queued {
        let objects = index.uploads_of(&rec.id)?;
        let playlist_done = objects
            .iter()
            .any(|o| o.kind == ObjectKind::Playlist && o.state == UploadState::Uploaded);
        if playlist_done && objects.iter().all(|o| o.state == UploadState::Uploaded) {
            let callback = (ctx.callback)(rec, &objects, now_ms);
            index.complete_upload(&rec.id, now_ms, callback.as_ref())?;
            tracing::info!(
                recording = %rec.id,
                objects = objects.len(),
                bytes = objects.iter().map(|o| o.size).sum::<u64>(),
                "recording is complete in the store"
            );
            report.completed.push(rec.id.clone());
        }
    }
    Ok(queued)
}

/// Queues a closed file's one object, and completes it once the object is in the store.
fn plan_file(
    index: &Index,
    ctx: &PlanContext,
    id: &str,
    now_ms: i64,
    report: &mut PlanReport,
) -> Result<usize, IndexError> {
    let file = index.get_file(id)?;
    let capture = match &file {
        Some(f) => index.get_recording(&f.capture_id)?,
        None => None,
    };
    let (Some(mut file), Some(capture)) = (file, capture) else {
        index.drop_uploads(id)?;
        return Ok(0);
    };
    if capture.deleting {
        return Ok(0);
    }
    match file.state {
        FileState::Skipped => {
            index.drop_uploads(id)?;
            return Ok(0);
        }
        FileState::Recording => return Ok(0),
        FileState::Finished => {}
    }
    if file.uploaded_ms.is_some() {
        index.drop_uploads(id)?;
        return Ok(0);
    }
    if file.format == crate::config::Format::Hls {
        return plan_hls_span(index, ctx, file, &capture, now_ms, report);
    }
    if file.store_key.is_none() {
        let key = index.claim_name(&file_key(ctx.config, &capture, &file), &file.id)?;
        index.set_file_store_key(&file.id, &key)?;
        file.store_key = Some(key);
    }
    let object_id = UploadRow::file_id(&file.id);
    match index.get_upload(&object_id)? {
        None => {
            let kind = ObjectKind::File {
                format: file.format,
                muxer_version: crate::package::MUXER_VERSION,
                fingerprint: 0,
            };
            let key = file.store_key.clone().unwrap_or_default();
            let row = new_row(object_id, &file.id, kind, key, 0, now_ms);
            index.queue_uploads(&file.id, &[row], &PendingRow::default())?;
            Ok(1)
        }
        Some(object) if object.state == UploadState::Uploaded => {
            let callback = (ctx.file_callback)(&file, &capture, &object, now_ms);
            index.complete_file_upload(&file.id, now_ms, callback.as_ref())?;
            tracing::info!(file = %file.id, key = %object.key, bytes = object.size, "file is complete in the store");
            report.completed.push(file.id.clone());
            Ok(0)
        }
        Some(_) => Ok(0),
    }
}

/// A task's HLS recording over another recording's capture: its span's segments (read
/// from the capture's folder) under a folder of its own, then its playlist, then the
/// completion callback, as [`plan_recording`] does for a capture.
fn plan_hls_span(
    index: &Index,
    ctx: &PlanContext,
    mut file: FileRow,
    capture: &RecordingRow,
    now_ms: i64,
    report: &mut PlanReport,
) -> Result<usize, IndexError> {
    if file.store_key.is_none() {
        let folder = index.claim_folder(
            &store_path(ctx.config, &file.as_recording(capture)),
            &file.id,
        )?;
        index.set_file_store_key(&file.id, &folder)?;
        file.store_key = Some(folder);
    }
    let base = file.store_key.clone().unwrap_or_default();
    let objects = index.uploads_of(&file.id)?;
    if objects.is_empty() {
        let rows: Vec<UploadRow> = index
            .segment_span(&capture.id, file.first_seq, file.last_seq)?
            .into_iter()
            .filter(|s| !s.gap)
            .map(|seg| segment_object(&file.id, &base, &seg, now_ms))
            .collect();
        let progress = PendingRow {
            queued_through: file.last_seq,
            playlist_queued: rows.is_empty(),
        };
        let mut rows = rows;
        if rows.is_empty() {
            rows.push(playlist_row(&file.id, &base, now_ms));
        }
        index.queue_uploads(&file.id, &rows, &progress)?;
        return Ok(rows.len());
    }
    if !objects.iter().all(|o| o.state == UploadState::Uploaded) {
        return Ok(0);
    }
    let Some(playlist) = objects.iter().find(|o| o.kind == ObjectKind::Playlist) else {
        let progress = PendingRow {
            queued_through: file.last_seq,
            playlist_queued: true,
        };
        index.queue_uploads(
            &file.id,
            &[playlist_row(&file.id, &base, now_ms)],
            &progress,
        )?;
        return Ok(1);
    };
    // The callback names the playlist and counts every object's bytes.
    let mut whole = playlist.clone();
    whole.size = objects.iter().map(|o| o.size).sum();
    let callback = (ctx.file_callback)(&file, capture, &whole, now_ms);
    index.complete_file_upload(&file.id, now_ms, callback.as_ref())?;
    tracing::info!(recording = %file.id, objects = objects.len(), bytes = whole.size, "task recording is complete in the store");
    report.completed.push(file.id.clone());
    Ok(0)
}

/// The object of segment `seg` of HLS recording `recording_id`, under folder `base`.
fn segment_object(recording_id: &str, base: &str, seg: &SegmentRow, now_ms: i64) -> UploadRow {
    new_row(
        UploadRow::segment_id(recording_id, seg.seq),
        recording_id,
        ObjectKind::Segment {
            seq: seg.seq,
            file: seg.file.clone(),
        },
        format!("{base}/{}", seg.file),
        seg.bytes,
        now_ms,
    )
}

fn playlist_row(recording_id: &str, base: &str, now_ms: i64) -> UploadRow {
    new_row(
        UploadRow::playlist_id(recording_id),
        recording_id,
        ObjectKind::Playlist,
        format!("{base}/index.m3u8"),
        0,
        now_ms,
    )
}

/// `<prefix>/<store_prefix>/<app>/<stream>/<file name>.<ext>`: where a file goes.
pub fn file_key(config: &UploadConfig, capture: &RecordingRow, file: &FileRow) -> String {
    let name = file.download_name();
    let mut parts = Vec::new();
    if !config.s3.prefix.is_empty() {
        parts.push(config.s3.prefix.clone());
    }
    let template = file.task_template.as_deref().or(capture.template.as_ref());
    if let Some(t) = template.filter(|t| !t.store_prefix.is_empty()) {
        parts.push(t.store_prefix.clone());
    }
    parts.extend([capture.app.clone(), capture.stream.clone(), name]);
    parts.join("/")
}

fn new_row(
    id: String,
    recording_id: &str,
    kind: ObjectKind,
    key: String,
    size: u64,
    now_ms: i64,
) -> UploadRow {
    UploadRow {
        id,
        recording_id: recording_id.to_owned(),
        kind,
        key,
        size,
        state: UploadState::Queued,
        multipart: None,
        attempts: 0,
        last_error: None,
        next_attempt_ms: 0,
        created_ms: now_ms,
        uploaded_ms: None,
        skipped: false,
        failures: 0,
    }
}

/// `<prefix>/<store_prefix>/<app>/<stream>/<name>`: where an HLS recording's objects go
/// (before [`Index::claim_folder`] makes it unique). The name is the template's HLS
/// `file_name`, else `upload.file_name`.
pub fn store_path(config: &UploadConfig, rec: &RecordingRow) -> String {
    let pattern = rec
        .template
        .as_ref()
        .and_then(|t| t.hls.as_ref())
        .and_then(|h| h.file_name.as_deref())
        .unwrap_or(&config.file_name);
    let name = render_name(pattern, rec);
    let mut parts = Vec::new();
    if !config.s3.prefix.is_empty() {
        parts.push(config.s3.prefix.clone());
    }
    if let Some(t) = rec.template.as_ref().filter(|t| !t.store_prefix.is_empty()) {
        parts.push(t.store_prefix.clone());
    }
    parts.extend([rec.app.clone(), rec.stream.clone(), name]);
    parts.join("/")
}

/// Fills the file name pattern's placeholders from the recording (start time in UTC).
pub fn render_name(pattern: &str, rec: &RecordingRow) -> String {
    render(
        pattern,
        &NameValues {
            app: &rec.app,
            stream: &rec.stream,
            record_id: rec.record_id.as_deref().unwrap_or(""),
            recording_id: &rec.id,
            template: rec.template_name(),
            start_ms: rec.start_ms,
            end_ms: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{RecordingState, SegmentRow};

    fn seg(seq: u32, gap: bool) -> SegmentRow {
        SegmentRow {
            seq,
            file: SegmentRow::file_name(seq),
            duration_ticks: 360_000,
            bytes: 1000 + u64::from(seq),
            media_start: 0,
            wall_start_ms: 1_700_000_000_000,
            keyframe: true,
            discontinuity: false,
            gap,
            recovered: false,
            codec_change: false,
            params: 0,
        }
    }

    fn no_callback(_: &RecordingRow, _: &[UploadRow], _: i64) -> Option<CallbackRow> {
        None
    }

    fn no_file_callback(
        _: &FileRow,
        _: &RecordingRow,
        _: &UploadRow,
        _: i64,
    ) -> Option<CallbackRow> {
        None
    }

    #[test]
    fn names_follow_the_pattern() {
        let mut rec = RecordingRow::new("r".into(), "live".into(), "cam1".into(), 0);
        rec.start_ms = 1_700_000_000_123; // 2023-11-14T22:13:20.123Z
        let mut config = UploadConfig::default();
        config.s3.prefix = "venue-a".into();
        assert_eq!(
            store_path(&config, &rec),
            "venue-a/live/cam1/cam1_2023-11-14-22-13-20"
        );
        assert_eq!(
            render_name("{RecordingID}.{StartMillisecond}", &rec),
            "r.123"
        );
    }

    #[test]
    fn segments_then_playlist_then_completion() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let rec = RecordingRow::new("r1".into(), "live".into(), "cam".into(), 0);
        index.create_recording(&rec).unwrap();
        let config = UploadConfig::default();
        let ctx = PlanContext {
            config: &config,
            callback: &no_callback,
            file_callback: &no_file_callback,
        };
        assert_eq!(
            plan_once(&index, &ctx, 1).unwrap().queued,
            0,
            "no segment yet"
        );
        index.commit_segment("r1", &seg(1, false)).unwrap();
        index.commit_segment("r1", &seg(2, true)).unwrap();
        assert_eq!(
            plan_once(&index, &ctx, 1).unwrap().queued,
            1,
            "gaps are not sent"
        );
        index.commit_segment("r1", &seg(3, false)).unwrap();
        assert_eq!(plan_once(&index, &ctx, 1).unwrap().queued, 1);
        assert_eq!(plan_once(&index, &ctx, 1).unwrap().queued, 0, "idempotent");
        let objects = index.uploads_of("r1").unwrap();
        assert_eq!(objects.len(), 2);
        assert!(
            objects[1].key.ends_with("/00000003.ts"),
            "{}",
            objects[1].key
        );

        // Finished, but segments are not uploaded yet: no playlist.
        index
            .update_recording("r1", |r| {
                r.state = RecordingState::Finished;
                Update::Write
            })
            .unwrap();
        assert_eq!(plan_once(&index, &ctx, 1).unwrap().queued, 0);
        for mut o in objects {
            o.state = UploadState::Uploaded;
            index.put_upload(&o).unwrap();
        }
        assert_eq!(
            plan_once(&index, &ctx, 1).unwrap().queued,
            1,
            "playlist last"
        );
        let mut playlist = index
            .get_upload(&UploadRow::playlist_id("r1"))
            .unwrap()
            .unwrap();
        assert!(playlist.key.ends_with("/index.m3u8"));
        playlist.state = UploadState::Uploaded;
        index.put_upload(&playlist).unwrap();
        let report = plan_once(&index, &ctx, 9).unwrap();
        assert_eq!(report.completed, vec!["r1".to_string()]);
        assert_eq!(
            index.get_recording("r1").unwrap().unwrap().uploaded_ms,
            Some(9)
        );
        assert!(index.upload_pending().unwrap().is_empty());
    }
}
