//! A recording's HLS playlist text, rendered from its index rows. Shared by the API (local
//! playback) and the uploader (the finished VOD playlist put in the store). Segment URIs
//! are relative file names, so the same text plays next to the segments anywhere.

use crate::index::{RecordingRow, SegmentRow};
use crate::mux::hls::{render_media_playlist, PlaylistKind, PlaylistSegment};

/// Playlist entries for `segments`, URIs prefixed with `uri_prefix` and followed by
/// `uri_query` (empty, or a signed playback query `?exp=..&sig=..`).
pub fn playlist_segments(
    segments: &[SegmentRow],
    uri_prefix: &str,
    uri_query: &str,
) -> Vec<PlaylistSegment> {
    segments
        .iter()
        .enumerate()
        .map(|(i, seg)| PlaylistSegment {
            uri: format!("{uri_prefix}{}{uri_query}", seg.file),
            duration_s: seg.duration_s(),
            discontinuity: seg.discontinuity && i > 0,
            program_date_time_ms: (i == 0 || seg.discontinuity).then_some(seg.wall_start_ms),
            gap: seg.gap,
        })
        .collect()
}

/// The whole-recording playlist: `EVENT` while open, `VOD` with `EXT-X-ENDLIST` once closed.
/// Segment URIs are the bare file names followed by `uri_query`.
pub fn recording_playlist(
    row: &RecordingRow,
    segments: &[SegmentRow],
    target_s: u32,
    uri_query: &str,
) -> String {
    let open = row.state.is_open();
    let kind = if open {
        PlaylistKind::Event
    } else {
        PlaylistKind::Vod
    };
    render_media_playlist(
        kind,
        target_s,
        &playlist_segments(segments, "", uri_query),
        !open,
    )
}
