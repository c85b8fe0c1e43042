//! Audio/video alignment of a pulled camera by its RTCP sender reports (RFC 3550 section
//! 6.4.1): each report ties a track's RTP time to the camera's wall clock, so the first
//! report of each track tells where the two tracks' timelines really sit against each
//! other.
//!
//! Pure logic, no IO. retina places both tracks on one timeline by the PLAY response's
//! RTP-Info; a camera that sends a wrong `rtptime` for one track (or none, when retina
//! then starts that track at its first packet) is recorded with its audio off by that
//! much, for the whole session. Once both tracks have reported, the audio is moved onto
//! the video's timeline: a move forward leaves a short gap in the audio, a move back
//! drops the audio that would repeat time already recorded. Decided once per session
//! (later reports only date segments), ignored below [`TOLERANCE`], and refused beyond
//! [`MAX_SHIFT`], where the reports are more likely wrong than the RTP-Info.
//!
//! Reports are only as good as the sender's: RFC 3550 means them for the capture instant,
//! but GStreamer (`rtpbin`'s default `rtcp-sync-send-time`) dates them by send time, and
//! under load its reports for a track behind x264's lookahead were measured 1.3 s off
//! both its RTP-Info and its content. Such a source turns this off
//! (`align_by_sender_reports = false`).

use crate::media::{Ticks, TrackKind, TICKS_PER_SECOND};

/// Tracks this close are left alone: well under what anyone sees as lip sync (and half
/// an AAC frame), so a correct RTP-Info is never second-guessed by report jitter.
pub const TOLERANCE: Ticks = TICKS_PER_SECOND / 100;
/// Reports that put the tracks further apart than this are not believed.
pub const MAX_SHIFT: Ticks = 10 * TICKS_PER_SECOND;

/// What the first pair of reports decided, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// The audio is moved by this many ticks (positive: later) from now on.
    Shifted(Ticks),
    /// The reports put the tracks this far apart: not believed, nothing moved.
    Implausible(Ticks),
}

/// One camera session's track alignment.
#[derive(Debug, Default)]
pub struct TrackSync {
    /// Per track (video, audio): the wall clock at the track's tick 0, in 90 kHz ticks
    /// since the NTP epoch, from its first sender report.
    origin: [Option<i64>; 2],
    decided: bool,
    /// Added to the audio's timestamps.
    shift: Ticks,
    last_audio: Option<Ticks>,
}

impl TrackSync {
    /// A sender report of `kind`'s track: its RTP timestamp falls at `at` (the track's
    /// ticks) and its NTP timestamp is `ntp` (32.32 fixed point). Returns the decision
    /// when this report completes the first pair.
    pub fn report(&mut self, kind: TrackKind, at: Ticks, ntp: u64) -> Option<Alignment> {
        if self.decided {
            return None;
        }
        let wall = ((u128::from(ntp) * TICKS_PER_SECOND as u128 + (1 << 31)) >> 32) as i64;
        self.origin[kind.slot()].get_or_insert(wall - at);
        let (Some(video), Some(audio)) = (self.origin[0], self.origin[1]) else {
            return None;
        };
        self.decided = true;
        // Audio tick u was taken at audio + u = video + (u + shift).
        let shift = audio - video;
        if shift.abs() <= TOLERANCE {
            return None;
        }
        if shift.abs() > MAX_SHIFT {
            return Some(Alignment::Implausible(shift));
        }
        self.shift = shift;
        Some(Alignment::Shifted(shift))
    }

    /// An audio frame's presentation time on the video's timeline, or `None` when it
    /// repeats time already recorded (right after the audio was moved back).
    pub fn audio(&mut self, pts: Ticks) -> Option<Ticks> {
        let pts = pts + self.shift;
        if self.last_audio.is_some_and(|last| pts <= last) {
            return None;
        }
        self.last_audio = Some(pts);
        Some(pts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Ticks = TICKS_PER_SECOND;
    /// NTP for `secs` seconds (plus `ticks`) past an arbitrary 2026 instant.
    fn ntp(secs: u64, ticks: Ticks) -> u64 {
        let base = 3_976_000_000u64 + secs;
        (base << 32) + ((ticks as u64) << 32) / TICKS_PER_SECOND as u64
    }

    #[test]
    fn tracks_that_agree_are_left_alone() {
        let mut s = TrackSync::default();
        assert_eq!(s.report(TrackKind::Video, 5 * S, ntp(5, 0)), None);
        // 3 ms apart: report jitter, not a fault.
        assert_eq!(s.report(TrackKind::Audio, 7 * S, ntp(7, 270)), None);
        assert_eq!(s.audio(100), Some(100));
    }

    #[test]
    fn audio_placed_late_by_a_wrong_rtptime_is_moved_back_once() {
        let mut s = TrackSync::default();
        assert_eq!(s.audio(10 * S), Some(10 * S));
        // The audio's tick 12 s was really taken when the video was at 11.5 s.
        assert_eq!(s.report(TrackKind::Audio, 12 * S, ntp(11, S / 2)), None);
        assert_eq!(
            s.report(TrackKind::Video, 11 * S, ntp(11, 0)),
            Some(Alignment::Shifted(-S / 2))
        );
        // Audio that would repeat recorded time is dropped, then it follows the video.
        assert_eq!(s.audio(10 * S + S / 4), None);
        assert_eq!(s.audio(10 * S + S / 2), None);
        assert_eq!(s.audio(10 * S + S / 2 + 1), Some(10 * S + 1));
        // Decided once: later reports change nothing.
        assert_eq!(s.report(TrackKind::Audio, 20 * S, ntp(30, 0)), None);
        assert_eq!(s.audio(11 * S), Some(11 * S - S / 2));
    }

    #[test]
    fn audio_placed_early_is_moved_forward() {
        let mut s = TrackSync::default();
        s.report(TrackKind::Video, 0, ntp(100, 0));
        assert_eq!(
            s.report(TrackKind::Audio, 0, ntp(100, S / 5)),
            Some(Alignment::Shifted(S / 5))
        );
        assert_eq!(s.audio(S), Some(S + S / 5));
    }

    #[test]
    fn reports_far_apart_are_not_believed() {
        let mut s = TrackSync::default();
        s.report(TrackKind::Video, 0, ntp(100, 0));
        assert_eq!(
            s.report(TrackKind::Audio, 0, ntp(3700, 0)),
            Some(Alignment::Implausible(3600 * S))
        );
        assert_eq!(s.audio(S), Some(S));
    }
}
