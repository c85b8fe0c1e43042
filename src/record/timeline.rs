//! Timestamp sanity for one publish session: keeps each track's DTS strictly increasing,
//! repairs small backward steps, and reports large jumps as discontinuities.
//!
//! Pure logic, no IO. Encoders send timestamps that go backwards by a few milliseconds
//! (rounding, audio/video drift, buggy muxers) and jump when they stall or restart a
//! timeline; a TS muxer fed either produces streams players choke on.

use crate::media::{Frame, Ticks, TrackKind, TICKS_PER_SECOND};

/// Backward steps up to this size are repaired in place; larger ones are a discontinuity.
pub const MAX_BACKWARD_STEP: Ticks = TICKS_PER_SECOND;
/// Forward steps larger than this are a discontinuity (the encoder stalled or restarted).
pub const MAX_FORWARD_STEP: Ticks = 10 * TICKS_PER_SECOND;

/// What [`TimelineGuard::check`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    /// DTS (and PTS by the same amount) was moved forward to stay increasing.
    Adjusted,
    /// The timeline jumped: close the segment and start a new one after a discontinuity.
    Jump {
        step: Ticks,
    },
}

#[derive(Debug, Clone, Copy)]
struct TrackClock {
    last_dts: Ticks,
    /// Most recent positive DTS step: the frame duration estimate.
    step: Ticks,
}

/// Per-track DTS guard.
#[derive(Debug, Default, Clone)]
pub struct TimelineGuard {
    tracks: [Option<TrackClock>; 2],
}

impl TimelineGuard {
    /// Checks (and possibly repairs) one frame's timestamps.
    pub fn check(&mut self, frame: &mut Frame) -> Verdict {
        let i = frame.kind.slot();
        let Some(clock) = self.tracks[i] else {
            self.tracks[i] = Some(TrackClock {
                last_dts: frame.dts,
                step: 0,
            });
            return Verdict::InOrder;
        };
        let step = frame.dts - clock.last_dts;
        if !(-MAX_BACKWARD_STEP..=MAX_FORWARD_STEP).contains(&step) {
            self.reset();
            self.tracks[i] = Some(TrackClock {
                last_dts: frame.dts,
                step: 0,
            });
            return Verdict::Jump { step };
        }
        if step <= 0 {
            // Video: the smallest step keeps decode order. Audio frames have a fixed
            // duration, so a squeezed frame would overlap its predecessor: place it one
            // frame after.
            let min_step = match frame.kind {
                TrackKind::Audio if clock.step > 0 => clock.step,
                _ => 1,
            };
            let fix = min_step - step;
            frame.dts += fix;
            frame.pts += fix;
            self.tracks[i] = Some(TrackClock {
                last_dts: frame.dts,
                step: clock.step,
            });
            return Verdict::Adjusted;
        }
        self.tracks[i] = Some(TrackClock {
            last_dts: frame.dts,
            step,
        });
        Verdict::InOrder
    }

    /// Forgets every track (after a discontinuity).
    pub fn reset(&mut self) {
        self.tracks = [None, None];
    }

    /// The last observed frame duration of a track, if any.
    pub fn frame_ticks(&self, kind: TrackKind) -> Option<Ticks> {
        self.tracks[kind.slot()].map(|c| c.step).filter(|&s| s > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(dts: Ticks, pts: Ticks) -> Frame {
        Frame {
            kind: TrackKind::Video,
            dts,
            pts,
            keyframe: false,
            data: Bytes::new(),
        }
    }

    #[test]
    fn small_backward_steps_are_repaired_keeping_pts_offset() {
        let mut g = TimelineGuard::default();
        let mut f = video(3600, 7200);
        assert_eq!(g.check(&mut f), Verdict::InOrder);
        let mut f = video(3000, 6600);
        assert_eq!(g.check(&mut f), Verdict::Adjusted);
        assert_eq!((f.dts, f.pts), (3601, 7201));
        let mut f = video(3601, 3601);
        assert_eq!(g.check(&mut f), Verdict::Adjusted);
        assert_eq!(f.dts, 3602);
        assert_eq!(g.frame_ticks(TrackKind::Video), None);
        let mut f = video(3602 + 3600, 3602 + 3600);
        assert_eq!(g.check(&mut f), Verdict::InOrder);
        assert_eq!(g.frame_ticks(TrackKind::Video), Some(3600));
    }

    #[test]
    fn audio_steps_back_are_placed_one_frame_later() {
        let mut g = TimelineGuard::default();
        let audio = |dts| Frame {
            kind: TrackKind::Audio,
            ..video(dts, dts)
        };
        g.check(&mut audio(0));
        g.check(&mut audio(1920));
        let mut back = audio(1920 - 2700);
        assert_eq!(g.check(&mut back), Verdict::Adjusted);
        assert_eq!(back.dts, 3840);
        let mut next = audio(5760);
        assert_eq!(g.check(&mut next), Verdict::InOrder);
    }

    #[test]
    fn large_steps_are_jumps_and_reset_all_tracks() {
        let mut g = TimelineGuard::default();
        g.check(&mut video(100 * TICKS_PER_SECOND, 100 * TICKS_PER_SECOND));
        let mut audio = Frame {
            kind: TrackKind::Audio,
            ..video(0, 0)
        };
        g.check(&mut audio);
        let mut back = video(0, 0);
        assert!(matches!(g.check(&mut back), Verdict::Jump { .. }));
        assert_eq!(back.dts, 0, "a jump is reported, not repaired");
        // Audio was reset too: its next frame starts a fresh clock.
        let mut audio = Frame {
            kind: TrackKind::Audio,
            ..video(50 * TICKS_PER_SECOND, 50 * TICKS_PER_SECOND)
        };
        assert_eq!(g.check(&mut audio), Verdict::InOrder);
        let mut fwd = video(12 * TICKS_PER_SECOND, 12 * TICKS_PER_SECOND);
        assert!(matches!(g.check(&mut fwd), Verdict::Jump { .. }));
    }

    #[test]
    fn output_dts_is_strictly_increasing_for_any_input() {
        // Property-style: pseudo-random steps within the repair range.
        let mut g = TimelineGuard::default();
        let mut seed: u64 = 0x9E3779B97F4A7C15;
        let mut input = 0i64;
        let mut last_out = i64::MIN;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input += (seed % 7200) as i64 - 2000;
            let mut f = video(input, input);
            if let Verdict::Jump { .. } = g.check(&mut f) {
                last_out = i64::MIN;
            }
            assert!(f.dts > last_out);
            assert!(f.pts >= f.dts);
            last_out = f.dts;
        }
    }
}
