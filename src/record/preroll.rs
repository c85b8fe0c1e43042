//! Audio/video alignment where a run of segments begins: audio that arrives before the
//! first video keyframe is held back, and on that keyframe the held audio still playing
//! when the picture shows, and all after it, is released into the segment; earlier audio
//! is dropped.
//!
//! Pure logic, no IO. Encoders and cameras do not deliver the tracks in presentation
//! order: a video encoder with lookahead or B-frames hands out a picture later than the
//! audio captured with it, so audio for the keyframe's instant is often already in hand
//! when the keyframe comes. Skipping everything before the keyframe started the audio up
//! to that latency (tens of milliseconds) after the picture; writing audio that arrives
//! after the keyframe but ended before it started a segment early. The kept audio frame
//! that spans the keyframe's instant also keeps what an encoder sends at its start (ffmpeg
//! begins audio one AAC frame before its first picture). Both rules are bounded by
//! [`SPAN`]: a publisher whose audio runs a second or more away from its video is recorded
//! as it sends, not silenced.

use std::collections::VecDeque;

use crate::media::{Frame, Ticks, TICKS_PER_SECOND};

/// How far before the keyframe held or late audio is considered for alignment.
pub const SPAN: Ticks = TICKS_PER_SECOND;
/// At most this many audio bytes are held (a second of AAC is a few kilobytes).
const MAX_BYTES: usize = 256 * 1024;

/// Audio held while a segment run waits for its keyframe, and the presentation time
/// (input ticks) below which late audio is dropped after it.
#[derive(Debug, Default)]
pub struct AudioPreroll {
    held: VecDeque<Frame>,
    bytes: usize,
    floor: Option<Ticks>,
}

impl AudioPreroll {
    /// Holds an audio frame that came before the run's keyframe. Returns how many frames
    /// fell out (older than [`SPAN`] before this one, or over the byte bound).
    pub fn hold(&mut self, frame: Frame) -> u64 {
        self.bytes += frame.data.len();
        let newest = frame.pts;
        self.held.push_back(frame);
        let mut evicted = 0;
        while let Some(front) = self.held.front() {
            if newest - front.pts <= SPAN && self.bytes <= MAX_BYTES {
                break;
            }
            self.bytes -= front.data.len();
            self.held.pop_front();
            evicted += 1;
        }
        evicted
    }

    /// The run's keyframe, presented at `keyframe_pts`, was written: returns the held audio
    /// still playing then or later (in arrival order; a frame lasts `audio_frame`) and how
    /// many held frames were dropped. Later audio is then checked by [`AudioPreroll::admits`].
    pub fn release(&mut self, keyframe_pts: Ticks, audio_frame: Ticks) -> (Vec<Frame>, u64) {
        let floor = keyframe_pts - audio_frame;
        self.bytes = 0;
        let held = std::mem::take(&mut self.held);
        let total = held.len() as u64;
        let kept: Vec<Frame> = held.into_iter().filter(|f| f.pts > floor).collect();
        // Once audio for the keyframe's instant is written, the order is settled.
        self.floor = kept.is_empty().then_some(floor);
        let dropped = total - kept.len() as u64;
        (kept, dropped)
    }

    /// Whether an audio frame that arrived after the run's keyframe belongs in it: not if
    /// it ended before the keyframe (by less than [`SPAN`]). The first admitted frame ends
    /// the check.
    pub fn admits(&mut self, audio: &Frame) -> bool {
        let Some(floor) = self.floor else {
            return true;
        };
        if audio.pts <= floor && floor - audio.pts <= SPAN {
            return false;
        }
        self.floor = None;
        true
    }

    /// Forgets everything (the timeline jumped, the tracks changed, frames were lost).
    /// Returns how many held frames were dropped.
    pub fn clear(&mut self) -> u64 {
        let dropped = self.held.len() as u64;
        *self = AudioPreroll::default();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::TrackKind;
    use bytes::Bytes;

    const MS: Ticks = TICKS_PER_SECOND / 1000;

    fn audio(ms: Ticks) -> Frame {
        Frame {
            kind: TrackKind::Audio,
            dts: ms * MS,
            pts: ms * MS,
            keyframe: true,
            data: Bytes::from_static(&[0u8; 200]),
        }
    }

    fn times(frames: &[Frame]) -> Vec<Ticks> {
        frames.iter().map(|f| f.pts / MS).collect()
    }

    #[test]
    fn held_audio_from_the_keyframe_on_is_released_and_earlier_audio_dropped() {
        let mut p = AudioPreroll::default();
        for ms in [0, 21, 43, 64, 85] {
            assert_eq!(p.hold(audio(ms)), 0);
        }
        let (kept, dropped) = p.release(40 * MS, 21 * MS);
        assert_eq!(
            times(&kept),
            [21, 43, 64, 85],
            "21 ms plays when the picture shows"
        );
        assert_eq!(dropped, 1);
        // Audio is settled: a late frame from before the keyframe is the publisher's
        // business now (it is recorded as sent).
        assert!(p.admits(&audio(30)));
    }

    #[test]
    fn late_audio_before_the_keyframe_is_dropped_until_it_catches_up() {
        let mut p = AudioPreroll::default();
        let (kept, dropped) = p.release(100 * MS, 21 * MS);
        assert!(kept.is_empty());
        assert_eq!(dropped, 0);
        assert!(!p.admits(&audio(60)));
        assert!(!p.admits(&audio(79)), "ends at 100 ms, before the picture");
        assert!(p.admits(&audio(81)), "plays when the picture shows");
        assert!(p.admits(&audio(90)), "only until the first admitted frame");
    }

    #[test]
    fn audio_far_from_the_video_is_recorded_as_sent() {
        let mut p = AudioPreroll::default();
        p.release(5_000 * MS, 21 * MS);
        assert!(
            p.admits(&audio(1_000)),
            "4 s behind: not an alignment matter"
        );
    }

    #[test]
    fn holding_is_bounded_by_time_and_bytes() {
        let mut p = AudioPreroll::default();
        let mut evicted = 0;
        for i in 0..200 {
            evicted += p.hold(audio(i * 21));
        }
        assert!(p.held.len() <= 49, "{}", p.held.len());
        assert_eq!(evicted as usize + p.held.len(), 200);
        let mut big = audio(5_000);
        big.data = Bytes::from(vec![0u8; MAX_BYTES]);
        p.hold(big);
        assert_eq!(
            p.held.len(),
            1,
            "one frame over the bound keeps only itself"
        );
        assert_eq!(p.clear(), 1);
        assert!(p.held.is_empty() && p.floor.is_none());
    }
}
