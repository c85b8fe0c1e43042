//! HLS media playlist text (RFC 8216 section 4.3: EXTM3U, EXT-X-VERSION, EXTINF,
//! EXT-X-TARGETDURATION, EXT-X-MEDIA-SEQUENCE, EXT-X-DISCONTINUITY-SEQUENCE,
//! EXT-X-PLAYLIST-TYPE, EXT-X-ENDLIST, EXT-X-DISCONTINUITY, EXT-X-PROGRAM-DATE-TIME,
//! EXT-X-INDEPENDENT-SEGMENTS; EXT-X-GAP from draft-pantos-hls-rfc8216bis section 4.4.4.7).
//!
//! Owns: rendering a list of segments as playlist text. Never decides which segments
//! exist, where they are cut or when to write the file.

use std::fmt::Write as _;

/// One media segment line group of a playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistSegment {
    pub uri: String,
    pub duration_s: f64,
    /// Writes EXT-X-DISCONTINUITY before this segment.
    pub discontinuity: bool,
    /// Wall time of the segment's first frame, unix milliseconds (EXT-X-PROGRAM-DATE-TIME).
    pub program_date_time_ms: Option<i64>,
    /// A lost span players must not fetch (EXT-X-GAP).
    pub gap: bool,
}

/// The playlist's type and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaylistKind {
    /// A recording in progress: append-only.
    Event,
    /// A finished recording.
    Vod,
    /// A sliding window: the first segment's sequence numbers.
    Live {
        media_sequence: u64,
        discontinuity_sequence: u64,
    },
}

/// Renders a media playlist. EXT-X-TARGETDURATION is the larger of `min_target_duration_s`
/// and every segment duration rounded to the nearest integer.
pub fn render_media_playlist(
    kind: PlaylistKind,
    min_target_duration_s: u32,
    segments: &[PlaylistSegment],
    ended: bool,
) -> String {
    let target = segments
        .iter()
        .map(|s| rounded_seconds(s.duration_s))
        .fold(u64::from(min_target_duration_s), u64::max);
    let (media_sequence, discontinuity_sequence) = match kind {
        PlaylistKind::Live {
            media_sequence,
            discontinuity_sequence,
        } => (media_sequence, discontinuity_sequence),
        PlaylistKind::Event | PlaylistKind::Vod => (0, 0),
    };
    let mut out = String::with_capacity(160 + segments.len() * 64);
    out.push_str("#EXTM3U\n#EXT-X-VERSION:3\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{media_sequence}");
    if discontinuity_sequence > 0 {
        let _ = writeln!(
            out,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}"
        );
    }
    match kind {
        PlaylistKind::Event => out.push_str("#EXT-X-PLAYLIST-TYPE:EVENT\n"),
        PlaylistKind::Vod => out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n"),
        PlaylistKind::Live { .. } => {}
    }
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    for s in segments {
        if s.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if let Some(pdt) = s.program_date_time_ms.and_then(format_program_date_time) {
            let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{pdt}");
        }
        let _ = writeln!(out, "#EXTINF:{:.3},", non_negative(s.duration_s));
        if s.gap {
            out.push_str("#EXT-X-GAP\n");
        }
        out.push_str(&s.uri);
        out.push('\n');
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// ISO 8601 UTC with milliseconds (`2026-11-21T03:54:04.123Z`); `None` out of range.
pub fn format_program_date_time(unix_ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(unix_ms)
        .ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

fn non_negative(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    }
}

fn rounded_seconds(seconds: f64) -> u64 {
    // `as` saturates; non-finite and negative durations count as 0.
    non_negative(seconds).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(uri: &str, duration_s: f64) -> PlaylistSegment {
        PlaylistSegment {
            uri: uri.into(),
            duration_s,
            discontinuity: false,
            program_date_time_ms: None,
            gap: false,
        }
    }

    #[test]
    fn event_playlist_in_progress() {
        let mut first = seg("seg-000000.ts", 6.006);
        first.program_date_time_ms = Some(1_794_973_244_123);
        let mut reconnect = seg("seg-000002.ts", 6.5);
        reconnect.discontinuity = true;
        reconnect.program_date_time_ms = Some(1_794_973_300_000);
        let segments = [first, seg("seg-000001.ts", 5.96), reconnect];
        let text = render_media_playlist(PlaylistKind::Event, 6, &segments, false);
        assert_eq!(
            text,
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:7\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:EVENT\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-18T03:40:44.123Z\n\
             #EXTINF:6.006,\n\
             seg-000000.ts\n\
             #EXTINF:5.960,\n\
             seg-000001.ts\n\
             #EXT-X-DISCONTINUITY\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-18T03:41:40.000Z\n\
             #EXTINF:6.500,\n\
             seg-000002.ts\n"
        );
    }

    #[test]
    fn vod_with_gap_and_endlist() {
        let mut gap = seg("gap-000001.ts", 4.0);
        gap.gap = true;
        let segments = [seg("a.ts", 2.0), gap];
        let text = render_media_playlist(PlaylistKind::Vod, 6, &segments, true);
        assert_eq!(
            text,
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:6\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXTINF:2.000,\n\
             a.ts\n\
             #EXTINF:4.000,\n\
             #EXT-X-GAP\n\
             gap-000001.ts\n\
             #EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn live_window() {
        let kind = PlaylistKind::Live {
            media_sequence: 42,
            discontinuity_sequence: 3,
        };
        let text = render_media_playlist(kind, 2, &[seg("s42.ts", 2.4999)], false);
        assert_eq!(
            text,
            "#EXTM3U\n\
             #EXT-X-VERSION:3\n\
             #EXT-X-TARGETDURATION:2\n\
             #EXT-X-MEDIA-SEQUENCE:42\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:3\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXTINF:2.500,\n\
             s42.ts\n"
        );
        let kind = PlaylistKind::Live {
            media_sequence: 0,
            discontinuity_sequence: 0,
        };
        let text = render_media_playlist(kind, 6, &[], false);
        assert!(!text.contains("DISCONTINUITY-SEQUENCE"));
        assert!(!text.contains("PLAYLIST-TYPE"));
    }

    #[test]
    fn odd_durations_and_dates() {
        let text = render_media_playlist(
            PlaylistKind::Event,
            1,
            &[seg("x.ts", f64::NAN), seg("y.ts", -1.0), seg("z.ts", 2.5)],
            false,
        );
        assert!(text.contains("#EXT-X-TARGETDURATION:3\n"));
        assert!(text.contains("#EXTINF:0.000,\nx.ts\n#EXTINF:0.000,\ny.ts\n"));
        assert_eq!(
            format_program_date_time(0).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            format_program_date_time(-1).as_deref(),
            Some("1969-12-31T23:59:59.999Z")
        );
        assert_eq!(format_program_date_time(i64::MAX), None);
    }
}
