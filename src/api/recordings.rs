//! `GET /api/v1/recordings` (search, a page at a time, from the index's `search` tree) and `GET /api/v1/recordings/{id}` (with its
//! segments): the JSON shapes tools and tests rely on. A recording is either the HLS
//! recording of a capture (id = the capture's id) or one MP4/FLV/AAC file over it (id =
//! `<capture id>_<format><n>`); both have the same shape, told apart by `format`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Path, Query};
#[cfg(test)]
use super::ErrorBody;
use super::{rfc3339, ApiError, ApiState};
use crate::config::Format;
use crate::index::{
    FileRow, FileState, RecordingRow, RecordingState, SearchEntry, SearchQuery, SegmentRow,
};

/// Filters of `GET /api/v1/recordings`; absent or empty = any.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct ListQuery {
    app: Option<String>,
    stream: Option<String>,
    /// The start of the stream name or of the file name.
    prefix: Option<String>,
    /// Recordings whose span reaches this time or later (RFC 3339 or unix seconds).
    from: Option<String>,
    /// Recordings that start at this time or earlier (RFC 3339 or unix seconds).
    to: Option<String>,
    /// `recording`, `resumable`, `finished`, `failed` (HLS) or `skipped` (files).
    state: Option<String>,
    /// `hls`, `mp4`, `flv` or `aac`.
    format: Option<String>,
    /// The template it was made with.
    template: Option<String>,
    /// The recording task it was made for (`POST /api/v1/tasks`).
    task_id: Option<String>,
    /// `local_only`, `waiting`, `queued`, `uploading`, `failed`, `skipped`, `uploaded`.
    upload_state: Option<String>,
    /// Recordings per page: 1 to 1000, 100 if absent.
    limit: Option<usize>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
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
    /// The recording task it was made for, if one made it.
    pub task_id: Option<String>,
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
    /// The playlist's (or file's) URL in the store, once its location is fixed; None once
    /// its storage time has run out.
    pub store_url: Option<String>,
    pub uploaded_at: Option<String>,
    /// When the store's copy goes (uploaded time + the template's `storage_time_s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_expires_at: Option<String>,
    /// When the store's copy was queued for removal, its storage time over (the removal
    /// itself is listed in `/api/v1/deletes` until done); the box's files stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_expired_at: Option<String>,
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
            task_id: row.task_id.clone(),
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
            store_expires_at: row.store_expiry.map(|e| rfc3339(e.expires_ms)),
            store_expired_at: row.store_expiry.and_then(|e| e.expired_ms).map(rfc3339),
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
            task_id: row.task_id.clone(),
            file_name: (row.state == FileState::Finished && row.format != Format::Hls)
                .then(|| row.download_name()),
            state: row.state.as_str(),
            start_time: rfc3339(row.start_ms),
            end_time: rfc3339(row.end_ms),
            duration_s: (row.duration_s() * 1000.0).round() / 1000.0,
            segments: row.segments,
            bytes: row.ts_bytes,
            discontinuities: 0,
            // A task's HLS recording over a rule's capture plays as HLS; files download.
            playlist: (row.format == Format::Hls)
                .then(|| format!("/hls/recordings/{}/index.m3u8", row.id)),
            download: (row.state != FileState::Skipped && row.format != Format::Hls)
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
            store_expires_at: row.store_expiry.map(|e| rfc3339(e.expires_ms)),
            store_expired_at: row.store_expiry.and_then(|e| e.expired_ms).map(rfc3339),
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
            .filter(|_| view.store_expired_at.is_none())
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
        view.store_url = row
            .store_key
            .as_ref()
            .filter(|_| view.store_expired_at.is_none())
            .map(|k| match row.format {
                Format::Hls => uploader.public_url(&format!("{k}/index.m3u8")),
                _ => uploader.public_url(k),
            });
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

/// How many recordings a page holds unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// The response header that carries the next page's cursor.
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// Recordings (HLS and files) matching the filters, newest first (by start), one page at a
/// time: `X-Next-Cursor` carries the `cursor` of the next page while there may be one.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/recordings", operation_id = "list_recordings", tag = "recordings",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of recordings, newest first", body = Vec<RecordingView>,
            headers(("x-next-cursor" = String, description = "The `cursor` of the next page, when there may be one"))),
        (status = 400, description = "An unknown state, format or upload state, a bad time, limit or cursor", body = ErrorBody),
    )))]
pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Vec<RecordingView>>), ApiError> {
    let search = q.to_search(s.uploader.is_some())?;
    let upload_state = q.upload_state.clone().filter(|u| !u.is_empty());
    let state = s.clone();
    let page = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let mut search = search;
        let queued_state = upload_state.filter(|u| u != "uploaded" && u != "local_only");
        if let Some(wanted) = queued_state.filter(|_| state.uploader.is_some()) {
            // Everything not yet in the store is in the upload queue: a small set.
            let mut ids = Vec::new();
            for (id, _) in state.index.upload_pending()? {
                if upload_state_of(&state, &id)?.is_some_and(|have| have == wanted) {
                    ids.push(id);
                }
            }
            search.ids = Some(ids);
        }
        let page = state.index.search(&search)?;
        let mut views = Vec::with_capacity(page.entries.len());
        for entry in &page.entries {
            views.extend(view_of(&state, entry)?);
        }
        Ok((views, page.next))
    })
    .await
    .map_err(|e| ApiError::internal(format!("search task: {e}")))??;
    let (views, next) = page;
    let mut headers = HeaderMap::new();
    if let Some(next) = next {
        if let Ok(value) = HeaderValue::from_str(&crate::auth::hex(&next)) {
            headers.insert(NEXT_CURSOR, value);
        }
    }
    Ok((headers, Json(views)))
}

impl ListQuery {
    /// The index search these filters make; a 400 for any that cannot be understood.
    fn to_search(&self, uploads_on: bool) -> Result<SearchQuery, ApiError> {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let state = given(&self.state);
        if let Some(name) = &state {
            if RecordingState::parse(name).is_none() && name != "skipped" {
                return Err(ApiError::bad_request(format!(
                    "state must be one of recording, resumable, finished, failed, skipped (got {name:?})"
                )));
            }
        }
        let format = match given(&self.format) {
            None => None,
            Some(name) => Some(Format::parse(&name).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "format must be one of hls, mp4, flv, aac (got {name:?})"
                ))
            })?),
        };
        let time = |name: &str, v: &Option<String>| match given(v) {
            None => Ok(None),
            Some(t) => crate::clock::parse_time(&t).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be an RFC 3339 time or unix seconds (got {t:?})"
                ))
            }),
        };
        let (from_ms, to_ms) = (time("from", &self.from)?, time("to", &self.to)?);
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            if from > to {
                return Err(ApiError::bad_request("from is after to"));
            }
        }
        // Ids to look among: an empty set for an upload state nothing can be in.
        let mut ids = None;
        let uploaded = match given(&self.upload_state).as_deref() {
            None => None,
            Some("uploaded") => Some(true),
            Some("local_only") if !uploads_on => Some(false),
            Some("local_only") => {
                ids = Some(Vec::new());
                None
            }
            Some("waiting" | "queued" | "uploading" | "failed" | "skipped") => {
                if !uploads_on {
                    ids = Some(Vec::new());
                }
                None
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "upload_state must be one of local_only, waiting, queued, uploading, failed, skipped, uploaded (got {other:?})"
                )))
            }
        };
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "limit must be 1 to {MAX_LIMIT} (got {n})"
                )))
            }
        };
        let after = match given(&self.cursor) {
            None => None,
            Some(c) => Some(
                Some(c)
                    .filter(|c| c.len() <= 512)
                    .and_then(|c| crate::auth::unhex(&c))
                    .ok_or_else(|| ApiError::bad_request("cursor is not one this API gave out"))?,
            ),
        };
        Ok(SearchQuery {
            app: given(&self.app),
            stream: given(&self.stream),
            prefix: given(&self.prefix),
            from_ms,
            to_ms,
            format,
            template: given(&self.template),
            task_id: given(&self.task_id),
            state,
            uploaded,
            ids,
            after,
            limit,
        })
    }
}

/// A search entry's recording as the API shows it; None when its row is gone or being
/// deleted (the entry is dropped with it an instant later).
fn view_of(s: &ApiState, entry: &SearchEntry) -> Result<Option<RecordingView>, ApiError> {
    // A task's HLS recording over a rule's capture is a file row too.
    let file_id = (entry.id != entry.capture_id).then_some(entry.id.as_str());
    view_by_ids(s, &entry.capture_id, file_id)
}

/// The view of a capture's HLS recording, or of one of its files, if it still exists.
fn view_by_ids(
    s: &ApiState,
    capture_id: &str,
    file_id: Option<&str>,
) -> Result<Option<RecordingView>, ApiError> {
    let Some(capture) = s.index.get_recording(capture_id)?.filter(|r| !r.deleting) else {
        return Ok(None);
    };
    let view = match file_id {
        None => with_upload(s, &capture, RecordingView::new(&capture))?,
        Some(id) => {
            let Some(file) = s.index.get_file(id)? else {
                return Ok(None);
            };
            let file = file.live(&capture);
            with_file_upload(s, &file, RecordingView::file(&file, &capture))?
        }
    };
    Ok(Some(signed(s, view)))
}

/// The upload state the API shows for a recording or file id, if it still exists.
fn upload_state_of(s: &ApiState, id: &str) -> Result<Option<&'static str>, ApiError> {
    let capture_id = FileRow::capture_of(id);
    let view = view_by_ids(s, capture_id.unwrap_or(id), capture_id.map(|_| id))?;
    Ok(view.map(|v| v.upload_state))
}

/// One recording with its segments.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/recordings/{id}", operation_id = "get_recording", tag = "recordings",
    params(("id" = String, Path, description = "A recording id: a capture's, or a file's (`<capture>_<format><n>`), or a task's over a rule's capture (`<capture>_<format>-<task>-<n>`)")),
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
        let segments = file.span_view(s.index.segment_span(
            &file.capture_id,
            file.first_seq,
            file.last_seq,
        )?);
        view.segment_list = Some(
            segments
                .iter()
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
