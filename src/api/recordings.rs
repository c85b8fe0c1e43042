//! `GET /api/v1/recordings` (filtered list) and `GET /api/v1/recordings/{id}` (with its
//! segments): the JSON shapes tools and tests rely on. A recording is either the HLS
//! recording of a capture (id = the capture's id) or one MP4/FLV/AAC file over it (id =
//! `<capture id>_<format><n>`); both have the same shape, told apart by `format`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Path, Query};
#[cfg(test)]
use super::ErrorBody;
use super::{rfc3339, ApiError, ApiState};
use crate::config::Format;
use crate::index::{FileRow, FileState, RecordingRow, RecordingState, SegmentRow};

/// Filters of `GET /api/v1/recordings`; absent or empty = any.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct ListQuery {
    app: Option<String>,
    stream: Option<String>,
    /// `recording`, `resumable`, `finished`, `failed` (HLS) or `skipped` (files).
    state: Option<String>,
    /// `hls`, `mp4`, `flv` or `aac`.
    format: Option<String>,
}

/// One recording as the API shows it.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct RecordingView {
    pub id: String,
    /// `hls`, `mp4`, `flv` or `aac`.
    pub format: Format,
    /// The template it was made with.
    pub template: String,
    /// The publisher's `record_id=`, if it gave one.
    pub record_id: Option<String>,
    /// MP4/FLV/AAC: the file's name (extension included) once it is closed.
    pub file_name: Option<String>,
    /// The capture it is made from (its own id for HLS).
    pub capture_id: String,
    pub app: String,
    pub stream: String,
    /// HLS: `recording`, `resumable`, `finished`, `failed`. Files: `recording`,
    /// `finished`, `skipped`.
    pub state: &'static str,
    pub start_time: String,
    pub end_time: String,
    pub duration_s: f64,
    pub segments: u32,
    pub bytes: u64,
    pub discontinuities: u32,
    /// HLS: the playlist's URL here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playlist: Option<String>,
    /// MP4/FLV/AAC: where to download the file from this box.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<String>,
    /// Why a file was skipped, or what it had to leave out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub sessions: u32,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub resolution: Option<String>,
    pub resumable_until: Option<String>,
    pub failure: Option<String>,
    /// `local_only` (uploads off), `waiting` (open), `queued`, `uploading`, `failed`,
    /// `uploaded`.
    pub upload_state: &'static str,
    /// The playlist's URL in the store, once its location is fixed.
    pub store_url: Option<String>,
    pub uploaded_at: Option<String>,
    /// `pending`, `delivered` or `failed` once the completion callback is queued.
    pub callback_state: Option<&'static str>,
    /// False once the local files were evicted after upload.
    pub local_files: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_list: Option<Vec<SegmentView>>,
}

/// One segment of a recording.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct SegmentView {
    pub seq: u32,
    pub uri: String,
    pub duration_s: f64,
    pub bytes: u64,
    pub start_time: String,
    pub discontinuity: bool,
    pub gap: bool,
    pub recovered: bool,
    /// Starts with a video keyframe (or has no video). False after recovery lost its start,
    /// or when its publisher sent no keyframe for four segment durations (or 256 MiB)
    /// and it was cut anyway: such a segment plays only after the one before it.
    pub keyframe: bool,
}

impl RecordingView {
    pub fn new(row: &RecordingRow) -> RecordingView {
        RecordingView {
            id: row.id.clone(),
            format: Format::Hls,
            template: row.template_name().to_owned(),
            record_id: row.record_id.clone(),
            file_name: None,
            capture_id: row.id.clone(),
            app: row.app.clone(),
            stream: row.stream.clone(),
            state: row.state.as_str(),
            start_time: rfc3339(row.start_ms),
            end_time: rfc3339(row.end_ms),
            duration_s: (row.duration_s() * 1000.0).round() / 1000.0,
            segments: row.segments,
            bytes: row.bytes,
            discontinuities: row.discontinuities,
            playlist: Some(format!("/hls/recordings/{}/index.m3u8", row.id)),
            download: None,
            note: None,
            sessions: row.sessions,
            video_codec: row.video_codec.clone(),
            audio_codec: row.audio_codec.clone(),
            resolution: row.resolution.map(|(w, h)| format!("{w}x{h}")),
            resumable_until: row.resumable_until_ms.map(rfc3339),
            failure: row.failure.clone(),
            upload_state: "local_only",
            store_url: None,
            uploaded_at: row.uploaded_ms.map(rfc3339),
            callback_state: None,
            local_files: row.evicted_ms.is_none(),
            segment_list: None,
        }
    }
}

impl RecordingView {
    /// A file recording: its own span, name and state, with its capture's stream, codecs
    /// and sessions.
    pub fn file(row: &FileRow, capture: &RecordingRow) -> RecordingView {
        let audio_only = row.format == Format::Aac;
        let base = RecordingView::new(capture);
        RecordingView {
            id: row.id.clone(),
            format: row.format,
            template: row.template.clone(),
            record_id: row.record_id.clone(),
            file_name: (row.state == FileState::Finished).then(|| row.download_name()),
            state: row.state.as_str(),
            start_time: rfc3339(row.start_ms),
            end_time: rfc3339(row.end_ms),
            duration_s: (row.duration_s() * 1000.0).round() / 1000.0,
            segments: row.segments,
            bytes: row.ts_bytes,
            discontinuities: 0,
            playlist: None,
            download: (row.state != FileState::Skipped)
                .then(|| format!("/api/v1/recordings/{}/file", row.id)),
            note: row.note.clone(),
            video_codec: base.video_codec.filter(|_| !audio_only),
            resolution: base.resolution.filter(|_| !audio_only),
            resumable_until: None,
            failure: None,
            upload_state: if row.uploaded_ms.is_some() {
                "uploaded"
            } else {
                "local_only"
            },
            uploaded_at: row.uploaded_ms.map(rfc3339),
            ..base
        }
    }
}

/// Fills the upload fields of a view.
fn with_upload(
    s: &ApiState,
    row: &RecordingRow,
    mut view: RecordingView,
) -> Result<RecordingView, ApiError> {
    if let Some(uploader) = &s.uploader {
        view.upload_state = if row.uploaded_ms.is_some() {
            "uploaded"
        } else if row.state.is_open() && row.segments == 0 {
            "waiting"
        } else {
            uploader.recording_state(&row.id)?
        };
        view.store_url = row
            .store_path
            .as_ref()
            .map(|p| uploader.public_url(&format!("{p}/index.m3u8")));
    } else if row.uploaded_ms.is_some() {
        view.upload_state = "uploaded";
    }
    view.callback_state = s.index.get_callback(&row.id)?.map(|c| c.state.as_str());
    Ok(view)
}

/// Fills the upload fields of a file's view.
fn with_file_upload(
    s: &ApiState,
    row: &FileRow,
    mut view: RecordingView,
) -> Result<RecordingView, ApiError> {
    if let Some(uploader) = &s.uploader {
        view.upload_state = match row.state {
            _ if row.uploaded_ms.is_some() => "uploaded",
            FileState::Skipped => "skipped",
            FileState::Recording => "waiting",
            FileState::Finished => uploader.recording_state(&row.id)?,
        };
        view.store_url = row.store_key.as_ref().map(|k| uploader.public_url(k));
    }
    view.callback_state = s.index.get_callback(&row.id)?.map(|c| c.state.as_str());
    Ok(view)
}

impl SegmentView {
    fn new(recording_id: &str, seg: &SegmentRow) -> SegmentView {
        SegmentView {
            seq: seg.seq,
            uri: format!("/hls/recordings/{recording_id}/{}", seg.file),
            duration_s: (seg.duration_s() * 1000.0).round() / 1000.0,
            bytes: seg.bytes,
            start_time: rfc3339(seg.wall_start_ms),
            discontinuity: seg.discontinuity,
            gap: seg.gap,
            recovered: seg.recovered,
            keyframe: seg.keyframe,
        }
    }
}

/// Recordings (HLS and files), filtered; each file recording follows its capture's HLS one.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/recordings", operation_id = "list_recordings", tag = "recordings",
    params(ListQuery),
    responses(
        (status = 200, description = "The recordings", body = Vec<RecordingView>),
        (status = 400, description = "An unknown state or format", body = ErrorBody),
    )))]
pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<RecordingView>>, ApiError> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(name) => Some(RecordingState::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be one of recording, resumable, finished, failed (got {name:?})"
            ))
        })?),
    };
    let format = match q.format.as_deref() {
        None | Some("") => None,
        Some(name) => Some(Format::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "format must be one of hls, mp4, flv, aac (got {name:?})"
            ))
        })?),
    };
    let mut out = Vec::new();
    for row in s.index.recordings() {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable recording row");
                continue;
            }
        };
        if row.deleting
            || q.app.as_deref().is_some_and(|a| a != row.app)
            || q.stream.as_deref().is_some_and(|st| st != row.stream)
        {
            continue;
        }
        if row.has_hls()
            && state.is_none_or(|st| st == row.state)
            && format.is_none_or(|f| f == Format::Hls)
        {
            out.push(signed(&s, with_upload(&s, &row, RecordingView::new(&row))?));
        }
        if row.has_files() && format != Some(Format::Hls) {
            for file in s.index.files_of(&row.id)? {
                if format.is_some_and(|f| f != file.format)
                    || q.state
                        .as_deref()
                        .is_some_and(|st| st != file.state.as_str())
                {
                    continue;
                }
                let view = RecordingView::file(&file.live(&row), &row);
                out.push(signed(&s, with_file_upload(&s, &file, view)?));
            }
        }
    }
    Ok(Json(out))
}

/// One recording with its segments.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/recordings/{id}", operation_id = "get_recording", tag = "recordings",
    params(("id" = String, Path, description = "A recording id: a capture's, or a file's (`<capture>_<format><n>`)")),
    responses(
        (status = 200, description = "The recording, with `segment_list`", body = RecordingView),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such recording", body = ErrorBody),
    )))]
pub async fn get_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RecordingView>, ApiError> {
    if FileRow::capture_of(&id).is_some() {
        let file = s
            .index
            .get_file(&id)?
            .ok_or_else(|| ApiError::not_found(format!("recording {id}")))?;
        let capture = s
            .index
            .get_recording(&file.capture_id)?
            .filter(|r| !r.deleting);
        let Some(capture) = capture else {
            return Err(ApiError::not_found(format!("recording {id}")));
        };
        let file = file.live(&capture);
        let mut view = with_file_upload(&s, &file, RecordingView::file(&file, &capture))?;
        let segments = s.index.segments(&file.capture_id)?;
        view.segment_list = Some(
            segments
                .iter()
                .filter(|seg| (file.first_seq..=file.last_seq).contains(&seg.seq))
                .map(|seg| SegmentView::new(&file.capture_id, seg))
                .collect(),
        );
        return Ok(Json(signed(&s, view)));
    }
    let row = s
        .index
        .get_recording(&id)?
        .filter(|r| !r.deleting && r.has_hls())
        .ok_or_else(|| ApiError::not_found(format!("recording {id}")))?;
    let segments = s.index.segments(&id)?;
    let mut view = with_upload(&s, &row, RecordingView::new(&row))?;
    view.segment_list = Some(
        segments
            .iter()
            .map(|seg| SegmentView::new(&id, seg))
            .collect(),
    );
    Ok(Json(signed(&s, view)))
}

/// The view with its playlist, download and segment URLs signed for players when a
/// playback key is configured (see `access::Access::playback_url`).
fn signed(s: &ApiState, mut view: RecordingView) -> RecordingView {
    for url in [&mut view.playlist, &mut view.download]
        .into_iter()
        .flatten()
    {
        *url = s.access.playback_url(url);
    }
    for seg in view.segment_list.iter_mut().flatten() {
        seg.uri = s.access.playback_url(&seg.uri);
    }
    view
}
