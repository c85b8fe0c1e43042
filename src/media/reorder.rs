//! Decode times for video that arrives with presentation times only (RTP).
//!
//! Owns: [`DtsSynth`], which turns video frames in decode order whose only timestamp is
//! the presentation time into frames with a decode time that is monotonic, never after
//! the presentation time, and free of "repairs" to legitimate B-frame reordering.
//!
//! The method: with a reorder depth `N` (from the SPS, see `avc::reorder_depth` and
//! `hevc::reorder_depth`), the `i`-th frame in decode order gets the `i`-th smallest
//! presentation time of the stream, less `N` frame durations. Knowing the `i`-th
//! smallest needs the next `N` frames, so `N` frames are held back (a few hundred
//! milliseconds of latency, which a recorder does not mind). A stream without B-frames
//! (`N = 0`) passes straight through with `dts = pts`. The frame duration is the
//! smallest positive step between presentation times seen so far (30 fps until one is
//! seen). A camera whose real reordering exceeds what its SPS declared still gets
//! `dts <= pts` and monotonic decode times (clamped), never a frame dropped here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::{Frame, Ticks};

/// A frame duration to assume until two presentation times have been seen (30 fps).
const DEFAULT_FRAME_TICKS: Ticks = 3000;

/// See the module doc.
#[derive(Debug)]
pub struct DtsSynth {
    depth: usize,
    pending: VecDeque<Frame>,
    /// Presentation times of the frames pushed and not yet assigned as a decode time.
    order: BinaryHeap<Reverse<Ticks>>,
    frame_ticks: Option<Ticks>,
    last_pts: Option<Ticks>,
    last_dts: Option<Ticks>,
}

impl DtsSynth {
    /// A synthesiser for a stream that reorders up to `depth` frames (capped at 16).
    pub fn new(depth: usize) -> DtsSynth {
        DtsSynth {
            depth: depth.min(16),
            pending: VecDeque::new(),
            order: BinaryHeap::new(),
            frame_ticks: None,
            last_pts: None,
            last_dts: None,
        }
    }

    /// The reorder depth in use.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Takes a new depth (new parameter sets). Frames held under the old one must be
    /// taken with [`DtsSynth::flush`] first; decode times stay monotonic across.
    pub fn set_depth(&mut self, depth: usize) {
        debug_assert!(self.pending.is_empty(), "flush before changing the depth");
        self.depth = depth.min(16);
    }

    /// Adds the next frame in decode order; its `pts` is its presentation time (its
    /// `dts` is ignored).
    pub fn push(&mut self, frame: Frame) {
        if let Some(last) = self.last_pts {
            let step = (frame.pts - last).abs();
            if step > 0 && self.frame_ticks.is_none_or(|t| step < t) {
                self.frame_ticks = Some(step);
            }
        }
        self.last_pts = Some(frame.pts);
        self.order.push(Reverse(frame.pts));
        self.pending.push_back(frame);
    }

    /// The next frame with its decode time, once enough later frames have been pushed.
    pub fn pop(&mut self) -> Option<Frame> {
        if self.pending.len() <= self.depth {
            return None;
        }
        self.release()
    }

    /// Every frame still held (end of stream, or before new parameters).
    pub fn flush(&mut self) -> Vec<Frame> {
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(frame) = self.release() {
            out.push(frame);
        }
        out
    }

    fn release(&mut self) -> Option<Frame> {
        let mut frame = self.pending.pop_front()?;
        let Reverse(smallest) = self.order.pop()?;
        let delay = self.depth as Ticks * self.frame_ticks.unwrap_or(DEFAULT_FRAME_TICKS);
        let mut dts = (smallest - delay).min(frame.pts);
        if let Some(last) = self.last_dts {
            // Monotonic even when a camera reorders deeper than it declared; `dts <= pts`
            // then wins over strictly increasing (the muxers' timeline guard decides).
            dts = dts.max(last + 1).min(frame.pts);
        }
        self.last_dts = Some(dts);
        frame.dts = dts;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::TrackKind;
    use bytes::Bytes;

    fn frame(pts: Ticks) -> Frame {
        Frame {
            kind: TrackKind::Video,
            dts: pts,
            pts,
            keyframe: false,
            data: Bytes::new(),
        }
    }

    fn run(depth: usize, pts: &[Ticks]) -> Vec<(Ticks, Ticks)> {
        let mut s = DtsSynth::new(depth);
        let mut out = Vec::new();
        for &p in pts {
            s.push(frame(p));
            while let Some(f) = s.pop() {
                out.push((f.dts, f.pts));
            }
        }
        out.extend(s.flush().into_iter().map(|f| (f.dts, f.pts)));
        out
    }

    fn assert_valid(out: &[(Ticks, Ticks)]) {
        for w in out.windows(2) {
            assert!(w[1].0 > w[0].0, "dts not increasing: {out:?}");
        }
        for &(dts, pts) in out {
            assert!(dts <= pts, "dts after pts: {out:?}");
        }
    }

    #[test]
    fn without_reordering_dts_is_pts() {
        let pts: Vec<Ticks> = (0..10).map(|i| i * 3000).collect();
        let out = run(0, &pts);
        assert_eq!(out, pts.iter().map(|&p| (p, p)).collect::<Vec<_>>());
    }

    #[test]
    fn one_b_frame_gop_gets_evenly_spaced_decode_times() {
        // I0 P2 B1 P4 B3 P6 B5 (frame units of 3000 ticks), decode order.
        let pts: Vec<Ticks> = [0, 2, 1, 4, 3, 6, 5].iter().map(|p| p * 3000).collect();
        let out = run(1, &pts);
        assert_valid(&out);
        let dts: Vec<Ticks> = out.iter().map(|o| o.0 / 3000).collect();
        // The first frame is released before the frame duration is known (the only step
        // seen is two frames): an earlier decode time, then even spacing.
        assert_eq!(dts, vec![-2, 0, 1, 2, 3, 4, 5]);
        // Output keeps decode order and every frame.
        assert_eq!(out.iter().map(|o| o.1).collect::<Vec<_>>(), pts);
    }

    #[test]
    fn pyramid_b_frames_with_depth_two() {
        // I0 P4 B2 b1 b3 P8 B6 b5 b7: x264's b-pyramid, decode order.
        let pts: Vec<Ticks> = [0, 4, 2, 1, 3, 8, 6, 5, 7]
            .iter()
            .map(|p| 1000 + p * 3600)
            .collect();
        let out = run(2, &pts);
        assert_valid(&out);
        assert_eq!(out.len(), pts.len());
        assert!(out[0].0 <= 1000 - 2 * 3600, "{out:?}");
        // Once the frame duration is known, decode times are one frame apart.
        for w in out[3..].windows(2) {
            assert_eq!(w[1].0 - w[0].0, 3600, "{out:?}");
        }
    }

    #[test]
    fn deeper_reordering_than_declared_stays_monotonic_and_not_after_pts() {
        let pts: Vec<Ticks> = [0, 3, 1, 2, 6, 4, 5].iter().map(|p| p * 3000).collect();
        let out = run(0, &pts);
        for &(dts, pts) in &out {
            assert!(dts <= pts);
        }
        assert_eq!(out.len(), pts.len());
    }

    #[test]
    fn flush_releases_everything_and_depth_can_change_after() {
        let mut s = DtsSynth::new(2);
        for p in [0, 6000, 3000] {
            s.push(frame(p));
        }
        assert!(s.pop().is_some());
        assert_eq!(s.flush().len(), 2);
        s.set_depth(0);
        s.push(frame(9000));
        let f = s.pop().unwrap();
        assert_eq!((f.dts, f.pts), (9000, 9000));
    }
}
