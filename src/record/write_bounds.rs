//! Bounds on what a publisher can make the recorder write to flash, whatever it sends.
//! Sans-IO: callers pass the time.
//!
//! - **Unplanned cuts.** A timestamp jump, a codec change and a resumed session each close
//!   a segment (a file, three fsyncs and an index commit). A stream gets at most
//!   [`MAX_UNPLANNED_CUTS`] in any minute ([`CutHistory`], kept per stream across its
//!   sessions, so reconnecting does not reset it); the next one ends the publish with the
//!   reason, and the recording stays resumable.
//! - **Amplification.** Muxing adds headers per frame (a TS packet, parameter sets before
//!   each keyframe), so tiny frames could cost far more on flash than on the wire. A
//!   session writes at most twice the payload it received, plus one TS packet per frame
//!   at up to [`ALLOWED_FRAME_RATE`] frames a second (a near-static camera's tiny
//!   P-frames cost more than twice their size, legitimately) and [`SLACK_BYTES`]
//!   ([`Amplification`]); beyond that the publish ends with the reason.
//! - **Long segments.** A segment is cut at a keyframe; one that sees none is cut anyway
//!   once it holds [`MAX_SEGMENT_BYTES`] or runs [`LONG_SEGMENT_FACTOR`] times the target
//!   duration, in media or in wall time ([`must_cut`]), so `.part` files, recovery scans
//!   and upload parts stay bounded.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::mux::ts::PACKET_SIZE;

/// Unplanned segment cuts a stream may cause in any minute.
pub const MAX_UNPLANNED_CUTS: usize = 10;
const CUT_WINDOW: Duration = Duration::from_secs(60);

/// Frames a second that are allowed a whole TS packet each beyond the 2x rule.
pub const ALLOWED_FRAME_RATE: u64 = 60;
/// Bytes allowed beyond the rules at the start of a session (tables, first keyframe).
pub const SLACK_BYTES: u64 = 256 * 1024;

/// A segment without a keyframe is cut at this size.
pub const MAX_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// ... or after this many times the target segment duration.
pub const LONG_SEGMENT_FACTOR: u32 = 4;

/// When a stream's recent unplanned cuts happened.
#[derive(Debug, Default)]
pub struct CutHistory {
    cuts: VecDeque<Instant>,
}

impl CutHistory {
    /// Counts an unplanned cut at `now`. `Err` (the reason): the stream had its
    /// [`MAX_UNPLANNED_CUTS`] in the last minute already; the cut is not counted.
    pub fn record(&mut self, now: Instant) -> Result<(), String> {
        self.forget_before(now);
        if self.cuts.len() >= MAX_UNPLANNED_CUTS {
            return Err(format!(
                "the publisher jumped its timestamps, changed codecs or reconnected more than \
                 {MAX_UNPLANNED_CUTS} times within a minute (each closes a segment)"
            ));
        }
        self.cuts.push_back(now);
        Ok(())
    }

    /// Whether nothing is remembered any more (the entry can be dropped).
    pub fn is_stale(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        self.cuts.is_empty()
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .cuts
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= CUT_WINDOW)
        {
            self.cuts.pop_front();
        }
    }
}

/// One session's bytes received against bytes muxed.
#[derive(Debug)]
pub struct Amplification {
    started: Instant,
    received: u64,
    written: u64,
}

impl Amplification {
    pub fn new(now: Instant) -> Amplification {
        Amplification {
            started: now,
            received: 0,
            written: 0,
        }
    }

    /// Payload bytes of a frame the publisher sent.
    pub fn received(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }

    /// Bytes muxed for the session's frames. `Err` (the reason) once more is written than
    /// the rules allow by `now`.
    pub fn written(&mut self, bytes: usize, now: Instant) -> Result<(), String> {
        self.written += bytes as u64;
        let allowed = self.allowed(now);
        if self.written <= allowed {
            return Ok(());
        }
        Err(format!(
            "the publisher's frames cost {} bytes on flash for {} bytes sent (more than twice, \
             beyond one TS packet per frame at {ALLOWED_FRAME_RATE} frames a second)",
            self.written, self.received
        ))
    }

    fn allowed(&self, now: Instant) -> u64 {
        let seconds = now.saturating_duration_since(self.started).as_secs() + 1;
        2 * self.received + seconds * ALLOWED_FRAME_RATE * PACKET_SIZE as u64 + SLACK_BYTES
    }
}

/// Whether a segment without a cut point yet must be cut anyway: it holds `bytes`, spans
/// `media` of media time and has been open `open_for`; its target duration is `target`.
pub fn must_cut(bytes: u64, media: Duration, open_for: Duration, target: Duration) -> bool {
    let long = target * LONG_SEGMENT_FACTOR;
    bytes >= MAX_SEGMENT_BYTES || media >= long || open_for >= long
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_unplanned_cut_in_a_minute_is_refused_and_old_ones_expire() {
        let t0 = Instant::now();
        let mut h = CutHistory::default();
        for i in 0..MAX_UNPLANNED_CUTS as u64 {
            h.record(t0 + Duration::from_secs(i)).unwrap();
        }
        let refused = h.record(t0 + Duration::from_secs(30)).unwrap_err();
        assert!(refused.contains("within a minute"), "{refused}");
        // The first cut is a minute old at t0 + 60 s: room for one more.
        h.record(t0 + Duration::from_secs(60)).unwrap();
        assert!(h.record(t0 + Duration::from_secs(60)).is_err());
        assert!(!h.is_stale(t0 + Duration::from_secs(119)));
        assert!(h.is_stale(t0 + Duration::from_secs(121)));
    }

    #[test]
    fn tiny_frames_hit_the_bound_and_ordinary_ones_never_do() {
        let t0 = Instant::now();
        // 10-byte frames at 1000 a second, each costing a TS packet.
        let mut tiny = Amplification::new(t0);
        let hit = (0..10_000u64).find(|i| {
            tiny.received(10);
            tiny.written(PACKET_SIZE, t0 + Duration::from_millis(*i))
                .is_err()
        });
        assert!(hit.is_some_and(|i| i < 2_000), "{hit:?}");
        // A near-static camera: 25 fps of 20-byte P-frames and a 3 KB keyframe a second,
        // for an hour.
        let mut still = Amplification::new(t0);
        for s in 0..3600u64 {
            for f in 0..25u64 {
                let (sent, muxed) = if f == 0 { (3000, 3384) } else { (20, 188) };
                still.received(sent);
                let now = t0 + Duration::from_millis(s * 1000 + f * 40);
                still.written(muxed, now).unwrap();
            }
        }
        // 2 Mb/s of ordinary frames.
        let mut ordinary = Amplification::new(t0);
        for i in 0..25 * 600u64 {
            ordinary.received(10_000);
            let now = t0 + Duration::from_millis(i * 40);
            ordinary.written(10_400, now).unwrap();
        }
    }

    #[test]
    fn segments_without_keyframes_are_cut_by_size_or_time() {
        let target = Duration::from_secs(4);
        let s = Duration::from_secs;
        assert!(!must_cut(1 << 20, s(15), s(15), target));
        assert!(must_cut(1 << 20, s(16), s(1), target));
        assert!(must_cut(1 << 20, s(1), s(16), target));
        assert!(must_cut(MAX_SEGMENT_BYTES, s(1), s(1), target));
    }
}
