//! HLS playback over HTTP: a recording's playlist (`EVENT` while open, `VOD` with
//! `EXT-X-ENDLIST` when finished), its segment files, and the live sliding window of a
//! stream's open recording. Playlists are rendered from the index on every request, so
//! nothing but media is ever rewritten on flash.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::extract::Path;
use super::{ranged, ApiError, ApiState, PlaybackGrant};
use crate::index::RecordingRow;
use crate::mux::hls::{render_media_playlist, PlaylistKind};
use crate::record::playlist::{self, playlist_segments};
use crate::storage::parse_segment_file_name;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

fn playlist_response(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, PLAYLIST_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

fn recording(s: &ApiState, id: &str) -> Result<RecordingRow, ApiError> {
    s.index
        .get_recording(id)?
        .filter(|r| !r.deleting && !r.hls_deleted)
        .ok_or_else(|| ApiError::not_found(format!("recording {id}")))
}

/// An HLS recording's row and segments: a capture's, or a task's span of a rule's capture
/// (shown as a recording of its own, open while the span grows). The row's id stays the
/// one asked for; `capture` is where its segment files are.
fn hls_recording(s: &ApiState, id: &str) -> Result<HlsRecording, ApiError> {
    if crate::index::FileRow::capture_of(id).is_none() {
        let row = recording(s, id)?;
        let segments = s.index.segments(id)?;
        return Ok(HlsRecording {
            row,
            capture_id: id.to_owned(),
            segments,
            start: None,
        });
    }
    let not_found = || ApiError::not_found(format!("recording {id}"));
    let file = s
        .index
        .get_file(id)?
        .filter(|f| f.format == crate::config::Format::Hls)
        .ok_or_else(not_found)?;
    let capture = s
        .index
        .get_recording(&file.capture_id)?
        .filter(|c| !c.deleting)
        .ok_or_else(not_found)?;
    let file = file.live(&capture);
    let mut row = file.as_recording(&capture);
    if file.state == crate::index::FileState::Recording {
        row.state = capture.state;
    }
    let segments = file.span_view(s.index.segment_span(
        &capture.id,
        file.first_seq,
        file.last_seq,
    )?);
    Ok(HlsRecording {
        row,
        capture_id: capture.id,
        segments,
        start: file.start.map(|st| (file.first_seq, st)),
    })
}

/// What [`hls_recording`] finds.
struct HlsRecording {
    row: RecordingRow,
    /// Whose folder the segment files are in.
    capture_id: String,
    segments: Vec<crate::index::SegmentRow>,
    /// A clip's first segment starts at a keyframe inside it: (its seq, where).
    start: Option<(u32, crate::index::SpanStart)>,
}

/// A recording's playlist. Fetched under a playback signature (`grant`), the segment
/// URIs carry it too.
#[cfg_attr(test, utoipa::path(get, path = "/hls/recordings/{id}/index.m3u8", tag = "playback",
    params(("id" = String, Path, description = "An HLS recording's id: its capture's, or a task's over a rule's capture (`<capture>_hls-<task>-<n>`)")),
    responses(
        (status = 200, description = "`EVENT` while open, `VOD` with `EXT-X-ENDLIST` when finished",
            body = String, content_type = "application/vnd.apple.mpegurl"),
        (status = 400, description = "A malformed path", body = super::ErrorBody),
        (status = 404, description = "No such recording", body = super::ErrorBody),
    )))]
pub async fn recording_playlist(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    grant: Option<Extension<PlaybackGrant>>,
) -> Result<Response, ApiError> {
    let HlsRecording { row, segments, .. } = hls_recording(&s, &id)?;
    let query = s
        .access
        .segment_query(grant.map(|g| g.0), &format!("/hls/recordings/{}/", row.id));
    let text =
        playlist::recording_playlist(&row, &segments, s.config.record.segment_duration_s, &query);
    Ok(playlist_response(text))
}

/// A sealed segment file, streamed in chunks with `Range` support (`ranged`).
#[cfg_attr(test, utoipa::path(get, path = "/hls/recordings/{id}/{file}", tag = "playback",
    params(
        ("id" = String, Path, description = "The recording's id"),
        ("file" = String, Path, description = "A segment's file name, `00000001.ts`"),
        ("Range" = Option<String>, Header, nullable = false, description = "One byte range; others are ignored"),
    ),
    responses(
        (status = 200, description = "The segment", body = Vec<u8>, content_type = "video/mp2t"),
        (status = 206, description = "The range asked for", body = Vec<u8>, content_type = "video/mp2t"),
        (status = 400, description = "A malformed path", body = super::ErrorBody),
        (status = 404, description = "No such recording or segment (or evicted)", body = super::ErrorBody),
        (status = 416, description = "The range is outside the segment"),
    )))]
pub async fn recording_segment(
    State(s): State<ApiState>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !matches!(parse_segment_file_name(&file), Some((_, false))) {
        return Err(ApiError::not_found(format!("segment {file}")));
    }
    let Some((seq, _)) = parse_segment_file_name(&file) else {
        return Err(ApiError::not_found(format!("segment {file}")));
    };
    let (row, capture_id, start) = if crate::index::FileRow::capture_of(&id).is_none() {
        // A capture's own: one row read, whatever its length.
        (recording(&s, &id)?, id.clone(), None)
    } else {
        // A task's span: only its segments.
        let span = hls_recording(&s, &id)?;
        if !span.segments.iter().any(|seg| seg.seq == seq) {
            return Err(ApiError::not_found(format!("segment {file}")));
        }
        (span.row, span.capture_id, span.start)
    };
    let path = s
        .storage
        .recording_dir(&row.app, &row.stream, &capture_id)
        .join(&file);
    if let Some((_, at)) = start.filter(|(first, _)| *first == seq) {
        // A clip's first segment, from its keyframe on (derived, a few MB at most).
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(&path))
            .await
            .map_err(|e| ApiError::internal(format!("segment task: {e}")))?
            .map_err(|_| ApiError::not_found(format!("segment {file}")))?;
        let cut = bytes::Bytes::from(crate::mux::ts_cut::cut_at(&bytes, at.offset));
        return ranged::response(
            &headers,
            cut.len() as u64,
            &[(header::CONTENT_TYPE, "video/mp2t".to_owned())],
            move |from, to| Ok(cut.slice(from as usize..to as usize)),
        );
    }
    let opened = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        Ok::<_, std::io::Error>((Arc::new(f), len))
    })
    .await;
    let Ok(Ok((f, len))) = opened else {
        return Err(ApiError::not_found(format!("segment {file}")));
    };
    ranged::response(
        &headers,
        len,
        &[(header::CONTENT_TYPE, "video/mp2t".to_owned())],
        move |from, to| {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; (to - from) as usize];
            f.read_exact_at(&mut buf, from)?;
            Ok(buf.into())
        },
    )
}

/// The live playlist of a stream. Its segments live under the open recording's path,
/// which a signed live URL does not cover: under a grant they are signed for that path
/// with the same expiry.
#[cfg_attr(test, utoipa::path(get, path = "/hls/live/{app}/{stream}/index.m3u8", tag = "playback",
    params(
        ("app" = String, Path, description = "The publisher's app"),
        ("stream" = String, Path, description = "The publisher's stream"),
    ),
    responses(
        (status = 200, description = "The sliding window of the stream's open recording",
            body = String, content_type = "application/vnd.apple.mpegurl"),
        (status = 400, description = "A malformed path", body = super::ErrorBody),
        (status = 404, description = "No live recording of that stream", body = super::ErrorBody),
    )))]
pub async fn live_playlist(
    State(s): State<ApiState>,
    Path((app, stream)): Path<(String, String)>,
    grant: Option<Extension<PlaybackGrant>>,
) -> Result<Response, ApiError> {
    let key = crate::stream_key::StreamKey::new(&app, &stream).to_string();
    let row = s
        .index
        .open_recording(&key)?
        .ok_or_else(|| ApiError::not_found(format!("live stream {key}")))?;
    let window = s
        .index
        .last_segments(&row.id, s.config.record.live_window_segments)?;
    let (media_sequence, in_window_discontinuities) = match window.first() {
        Some(first) => (
            u64::from(first.seq),
            window
                .iter()
                .skip(1)
                .filter(|seg| seg.discontinuity)
                .count() as u64,
        ),
        None => (1, 0),
    };
    // Tags that left the window; the first segment's own tag is not rendered, so it counts
    // as gone.
    let discontinuity_sequence =
        u64::from(row.discontinuities).saturating_sub(in_window_discontinuities);
    let segment_dir = format!("/hls/recordings/{}/", row.id);
    let text = render_media_playlist(
        PlaylistKind::Live {
            media_sequence,
            discontinuity_sequence,
        },
        s.config.record.segment_duration_s,
        &playlist_segments(
            &window,
            &segment_dir,
            &s.access.segment_query(grant.map(|g| g.0), &segment_dir),
        ),
        false,
    );
    Ok(playlist_response(text))
}
