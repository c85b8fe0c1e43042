//! The look-back of a live stream: its last seconds of media in RAM, whole GOPs only, so
//! that a highlight clip asked for now can begin at the keyframe at or before `now - N s`
//! (issue 19's pre-roll) even when nothing records the stream.
//!
//! Pure logic, no IO, no clock: the ingest pushes what it sends the recorder (frames and
//! codec configurations, in its input ticks) and a clip reads a copy. Frames share their
//! `Bytes` with the recorder, so a recorded stream pays for the look-back only in what the
//! recorder has already let go of.
//!
//! Bounds: at most `max_ticks` of media measured from the second-oldest keyframe (so a
//! read always finds a keyframe at least `max_ticks` back once the stream is that old) and
//! at most `max_bytes` of frame data; the oldest whole GOP leaves first. A single GOP over
//! the byte bound is dropped as it overflows: the look-back is empty until the next
//! keyframe rather than over its budget. Audio-only streams have a keyframe in every
//! frame (as in the segmenter), so they are bounded frame by frame.
//!
//! The configurations in force where a read begins travel with it: a camera that changed
//! resolution ten seconds ago gives a clip that starts with the old SPS and switches.

use std::collections::VecDeque;

use crate::media::{CodecParams, Frame, Ticks, TrackKind, TICKS_PER_SECOND};

/// What a stream said, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Config(CodecParams),
    Frame(Frame),
}

/// A copy of the look-back from a keyframe on.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// The configurations in force at the first frame (video first).
    pub configs: Vec<CodecParams>,
    /// Every event from the starting keyframe to the newest.
    pub events: Vec<Event>,
}

/// Frame bytes and bookkeeping counted per frame (its `Frame` and queue slot).
const PER_FRAME_BYTES: usize = std::mem::size_of::<Event>() + 32;

/// The last seconds of one live stream.
#[derive(Debug)]
pub struct LookBack {
    max_ticks: Ticks,
    max_bytes: usize,
    has_video: bool,
    events: VecDeque<Event>,
    /// Indexes into `events` of the keyframes that begin each retained GOP, oldest first.
    /// Shifted down as events leave the front.
    gops: VecDeque<usize>,
    /// Events that left the front, to turn absolute positions into `events` indexes.
    dropped: usize,
    /// Configurations in force before the first retained event.
    base: [Option<CodecParams>; 2],
    bytes: usize,
}

impl LookBack {
    /// A look-back of `seconds` and `max_bytes` (either 0: off, nothing is kept).
    pub fn new(seconds: u32, max_bytes: usize) -> LookBack {
        LookBack {
            max_ticks: Ticks::from(seconds) * TICKS_PER_SECOND,
            max_bytes,
            has_video: false,
            events: VecDeque::new(),
            gops: VecDeque::new(),
            dropped: 0,
            base: [None, None],
            bytes: 0,
        }
    }

    fn is_off(&self) -> bool {
        self.max_ticks == 0 || self.max_bytes == 0
    }

    /// Whether it keeps anything (its bounds are not 0).
    pub fn is_on(&self) -> bool {
        !self.is_off()
    }

    /// Bytes held (frame data plus a fixed cost per frame).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Media held, from the oldest keyframe to the newest frame.
    pub fn span(&self) -> Ticks {
        match (self.gop_start_dts(0), self.newest_dts()) {
            (Some(first), Some(last)) => last - first,
            _ => 0,
        }
    }

    /// The newest frame's decode time.
    pub fn newest_dts(&self) -> Option<Ticks> {
        self.events.iter().rev().find_map(|e| match e {
            Event::Frame(f) => Some(f.dts),
            Event::Config(_) => None,
        })
    }

    pub fn push_config(&mut self, params: CodecParams) {
        if params.kind() == TrackKind::Video {
            self.has_video = true;
        }
        if self.is_off() || self.events.is_empty() {
            let k = slot(params.kind());
            self.base[k] = Some(params);
            return;
        }
        self.events.push_back(Event::Config(params));
    }

    pub fn push_frame(&mut self, frame: Frame) {
        if self.is_off() {
            return;
        }
        let starts_gop = frame.keyframe && (frame.kind == TrackKind::Video || !self.has_video);
        if starts_gop {
            self.gops.push_back(self.dropped + self.events.len());
        } else if self.gops.is_empty() {
            // Nothing to start a clip from before the first keyframe.
            return;
        }
        self.bytes += frame.data.len() + PER_FRAME_BYTES;
        self.events.push_back(Event::Frame(frame));
        self.evict();
    }

    /// Lets go of every frame (a recorder takes the stream over); the configurations in
    /// force stay for a later read.
    pub fn clear(&mut self) {
        while !self.gops.is_empty() {
            self.drop_oldest_gop();
        }
    }

    /// The decode time of the keyframe starting retained GOP `i`.
    fn gop_start_dts(&self, i: usize) -> Option<Ticks> {
        let at = self.gops.get(i)? - self.dropped;
        match self.events.get(at)? {
            Event::Frame(f) => Some(f.dts),
            Event::Config(_) => None,
        }
    }

    fn evict(&mut self) {
        let newest = self.newest_dts().unwrap_or_default();
        while !self.gops.is_empty() {
            let too_long = self
                .gop_start_dts(1)
                .is_some_and(|second| newest - second >= self.max_ticks);
            if !(too_long || self.bytes > self.max_bytes) {
                break;
            }
            self.drop_oldest_gop();
        }
    }

    /// Drops every event before the second GOP (all of them if there is one).
    fn drop_oldest_gop(&mut self) {
        self.gops.pop_front();
        let until = self
            .gops
            .front()
            .map_or(self.events.len(), |g| g - self.dropped);
        for event in self.events.drain(..until) {
            match event {
                Event::Config(params) => {
                    let k = slot(params.kind());
                    self.base[k] = Some(params);
                }
                Event::Frame(f) => self.bytes -= f.data.len() + PER_FRAME_BYTES,
            }
        }
        self.dropped += until;
    }

    /// Everything from the last keyframe at or before `at` (input ticks) to the newest
    /// frame; from the oldest keyframe held if `at` is older than that (a stream live for
    /// less than the pre-roll starts at its first keyframe). `None` when nothing is held.
    pub fn since(&self, at: Ticks) -> Option<Clip> {
        let mut start = *self.gops.front()? - self.dropped;
        for i in 1..self.gops.len() {
            match self.gop_start_dts(i) {
                Some(dts) if dts <= at => start = self.gops[i] - self.dropped,
                _ => break,
            }
        }
        let mut configs = self.base.clone();
        for event in self.events.range(..start) {
            if let Event::Config(params) = event {
                configs[slot(params.kind())] = Some(params.clone());
            }
        }
        Some(Clip {
            configs: configs.into_iter().flatten().collect(),
            events: self.events.range(start..).cloned().collect(),
        })
    }
}

fn slot(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::aac::AacConfig;

    const FRAME: Ticks = 3_600; // 25 fps

    fn video(dts: Ticks, keyframe: bool, size: usize) -> Frame {
        Frame {
            kind: TrackKind::Video,
            dts,
            pts: dts,
            keyframe,
            data: Bytes::from(vec![0; size]),
        }
    }

    fn audio(dts: Ticks) -> Frame {
        Frame {
            kind: TrackKind::Audio,
            dts,
            pts: dts,
            keyframe: true,
            data: Bytes::from_static(&[1; 10]),
        }
    }

    fn aac(rate_index: u8) -> CodecParams {
        // AAC LC, stereo, at sampling frequency index `rate_index`.
        let asc = [0x10 | (rate_index >> 1), ((rate_index & 1) << 7) | 0x10];
        CodecParams::Aac(AacConfig::parse(&asc).unwrap())
    }

    /// `seconds` of 25 fps video with a keyframe every `gop` frames, and audio beside it.
    fn feed(lb: &mut LookBack, from: Ticks, seconds: i64, gop: i64) {
        for i in 0..seconds * 25 {
            let dts = from + i * FRAME;
            lb.push_frame(audio(dts));
            lb.push_frame(video(dts, i % gop == 0, 1_000));
        }
    }

    fn first_frame(clip: &Clip) -> &Frame {
        clip.events
            .iter()
            .find_map(|e| match e {
                Event::Frame(f) => Some(f),
                Event::Config(_) => None,
            })
            .unwrap()
    }

    fn with_video() -> LookBack {
        let mut lb = LookBack::new(30, 8 << 20);
        lb.push_config(aac(4));
        lb.has_video = true;
        lb
    }

    #[test]
    fn a_read_starts_at_the_keyframe_at_or_before_the_instant() {
        let mut lb = with_video();
        feed(&mut lb, 0, 20, 50); // keyframes every 2 s
        let clip = lb.since(11 * TICKS_PER_SECOND - 1).unwrap();
        let first = first_frame(&clip);
        assert_eq!(first.kind, TrackKind::Video);
        assert!(first.keyframe);
        assert_eq!(first.dts, 10 * TICKS_PER_SECOND);
        assert_eq!(
            clip.events.last(),
            Some(&Event::Frame(video(499 * FRAME, false, 1_000)))
        );
        assert_eq!(clip.configs, vec![aac(4)]);
    }

    #[test]
    fn a_stream_younger_than_the_pre_roll_starts_at_its_first_keyframe() {
        let mut lb = with_video();
        lb.push_frame(audio(0));
        lb.push_frame(video(0, false, 500)); // joined mid-GOP: useless
        feed(&mut lb, FRAME, 5, 50);
        let clip = lb.since(-60 * TICKS_PER_SECOND).unwrap();
        assert_eq!(first_frame(&clip).dts, FRAME);
        assert!(first_frame(&clip).keyframe);
    }

    #[test]
    fn whole_gops_leave_past_the_time_bound() {
        let mut lb = with_video();
        feed(&mut lb, 0, 100, 50);
        let span = lb.span();
        assert!(
            (30 * TICKS_PER_SECOND..32 * TICKS_PER_SECOND).contains(&span),
            "30 s and under one GOP more: {span}"
        );
        let clip = lb.since(0).unwrap();
        assert!(first_frame(&clip).keyframe);
        assert_eq!(
            first_frame(&clip).dts % (2 * TICKS_PER_SECOND),
            0,
            "starts on a GOP boundary"
        );
    }

    #[test]
    fn the_byte_bound_holds_and_a_giant_gop_empties_it_until_the_next_keyframe() {
        let mut lb = LookBack::new(30, 200_000);
        lb.has_video = true;
        feed(&mut lb, 0, 30, 50);
        assert!(lb.bytes() <= 200_000, "{}", lb.bytes());
        assert!(lb.span() > 0);
        // One GOP bigger than the whole budget.
        lb.push_frame(video(30 * TICKS_PER_SECOND, true, 150_000));
        lb.push_frame(video(30 * TICKS_PER_SECOND + FRAME, false, 150_000));
        assert_eq!(lb.bytes(), 0);
        assert!(lb.since(0).is_none());
        lb.push_frame(video(31 * TICKS_PER_SECOND, true, 1_000));
        assert_eq!(
            first_frame(&lb.since(0).unwrap()).dts,
            31 * TICKS_PER_SECOND
        );
    }

    /// `seconds` of audio only, switching from 48 kHz to 44.1 kHz at `change_s`.
    fn audio_with_a_change(window_s: u32, seconds: i64, change_s: i64) -> LookBack {
        let mut lb = LookBack::new(window_s, 8 << 20);
        lb.push_config(aac(3));
        for i in 0..25 * seconds {
            if i == 25 * change_s {
                lb.push_config(aac(4));
            }
            lb.push_frame(audio(i * FRAME));
        }
        lb
    }

    #[test]
    fn a_read_carries_the_configs_in_force_where_it_starts() {
        // Audio only: a clip may start on any frame, and the change has left the front.
        let lb = audio_with_a_change(10, 30, 15);
        assert_eq!(
            lb.since(29 * TICKS_PER_SECOND).unwrap().configs,
            vec![aac(4)]
        );
        let lb = audio_with_a_change(30, 10, 5);
        let clip = lb.since(TICKS_PER_SECOND).unwrap();
        assert_eq!(
            clip.configs,
            vec![aac(3)],
            "the old config where the clip starts"
        );
        assert!(
            clip.events.contains(&Event::Config(aac(4))),
            "then the change"
        );
        assert_eq!(first_frame(&clip).dts, TICKS_PER_SECOND);
    }

    #[test]
    fn off_keeps_nothing() {
        let mut lb = LookBack::new(0, 8 << 20);
        feed(&mut lb, 0, 5, 50);
        assert_eq!(lb.bytes(), 0);
        assert!(lb.since(0).is_none());
    }
}
