//! Recovery scan of an MPEG-TS segment written by [`super::ts::TsMuxer`] that may have
//! been cut anywhere (power loss): how many bytes to keep and what media they hold
//! (ISO/IEC 13818-1 sections 2.4.3.2-2.4.3.7: packet header, adaptation field, PES
//! header timestamps; ADTS frame headers per ISO/IEC 13818-7 section 6.2).
//!
//! Owns: [`Scanner`] (fed in chunks of any size, in bounded memory), [`scan`] and their
//! [`TsScan`] summary. Never modifies or writes the file (the caller truncates to
//! [`TsScan::keep_len`]), never panics on arbitrary bytes. Only the fixed PIDs
//! the muxer uses ([`VIDEO_PID`], [`AUDIO_PID`]) are read; the PMT is not consulted.

use super::ts::{
    read_timestamp, timestamp_delta, AUDIO_PID, PACKET_SIZE, TS_TIMESTAMP_OFFSET, VIDEO_PID,
};
use std::collections::{BTreeMap, VecDeque};

use crate::media::Ticks;

const SYNC_BYTE: u8 = 0x47;
/// ADTS sampling frequencies by index.
const ADTS_RATES: [i64; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// What one elementary stream's kept PES hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidSummary {
    /// Video: access units (PES). Audio: AAC frames (ADTS headers).
    pub frames: u64,
    /// DTS of the first frame, [`TS_TIMESTAMP_OFFSET`] removed.
    pub first_dts: Ticks,
    /// DTS of the last frame, unwrapped across the 33-bit wrap relative to the first.
    pub last_dts: Ticks,
    /// Video: the median DTS step (0 for a single frame). Audio: 1024 samples.
    pub typical_frame_ticks: Ticks,
}

/// Result of [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsScan {
    /// Bytes of the file to keep: a multiple of 188.
    pub keep_len: usize,
    pub video: Option<PidSummary>,
    pub audio: Option<PidSummary>,
    /// The first kept video PES is a random access point (true when there is no video).
    pub starts_with_keyframe: bool,
}

impl TsScan {
    /// Media duration of the kept bytes: max over PIDs of (last - first + typical frame).
    pub fn duration(&self) -> Ticks {
        [self.video, self.audio]
            .iter()
            .flatten()
            .map(|s| s.last_dts - s.first_dts + s.typical_frame_ticks)
            .max()
            .unwrap_or(0)
    }
}

/// The PES of one PID being read: its packets so far.
#[derive(Debug)]
struct OpenPes {
    /// Offset of its first (PUSI) packet.
    start: usize,
    /// Offset just past its last packet.
    end: usize,
    /// Raw 33-bit DTS (or PTS when there is no DTS); `None` if the header was unreadable.
    dts: Option<i64>,
    random_access: bool,
    /// Audio: payload bytes, for counting ADTS frames (at most one PES's worth is held).
    payload: Vec<u8>,
}

/// A whole PES, reduced to what the summary needs.
#[derive(Debug, Clone, Copy)]
struct Pes {
    end: usize,
    dts: Option<i64>,
    random_access: bool,
    /// Audio: ADTS frames at the start of its payload and the ticks of one.
    adts: (u64, Ticks),
}

/// One PID's state: the PES being read, whole ones not yet known to be kept, and the
/// running summary of the kept ones.
#[derive(Debug, Default)]
struct PidState {
    open: Option<OpenPes>,
    /// Whole PES that end past where a `.part` file might be cut (see [`Scanner::fold`]).
    waiting: VecDeque<Pes>,
    kept: Summary,
}

/// Running summary of a PID's kept PES, in file order.
#[derive(Debug, Default)]
struct Summary {
    /// A kept PES had a readable timestamp.
    any: bool,
    first_raw: Option<i64>,
    first_random_access: Option<bool>,
    frames: u64,
    last_dts: Ticks,
    frame_ticks: Ticks,
    /// Video: how often each DTS step occurs (for the median), at most [`MAX_STEP_KINDS`]
    /// distinct steps.
    steps: BTreeMap<Ticks, u64>,
}

/// Distinct video DTS steps counted for the median: real streams have a handful.
const MAX_STEP_KINDS: usize = 4096;

impl Summary {
    fn add_video(&mut self, pes: &Pes) {
        let Some(raw) = pes.dts else { return };
        self.any = true;
        let first_raw = *self.first_raw.get_or_insert(raw);
        self.first_random_access.get_or_insert(pes.random_access);
        let dts = unwrap(raw, first_raw);
        if self.frames > 0 && dts > self.last_dts {
            let kinds = self.steps.len();
            match self.steps.get_mut(&(dts - self.last_dts)) {
                Some(n) => *n += 1,
                None if kinds < MAX_STEP_KINDS => {
                    self.steps.insert(dts - self.last_dts, 1);
                }
                None => {}
            }
        }
        self.frames += 1;
        self.last_dts = dts;
    }

    fn add_audio(&mut self, pes: &Pes) {
        let Some(raw) = pes.dts else { return };
        self.any = true;
        let first_raw = *self.first_raw.get_or_insert(raw);
        let (count, ticks) = pes.adts;
        if count == 0 {
            return;
        }
        self.frame_ticks = ticks;
        self.frames += count;
        self.last_dts = unwrap(raw, first_raw) + (count as i64 - 1) * ticks;
    }

    fn video(&self) -> Option<PidSummary> {
        let first_raw = self.first_raw?;
        let total: u64 = self.steps.values().sum();
        let mut seen = 0;
        let median = self.steps.iter().find_map(|(&step, &n)| {
            seen += n;
            (seen > total / 2).then_some(step)
        });
        Some(PidSummary {
            frames: self.frames,
            first_dts: first_raw - TS_TIMESTAMP_OFFSET,
            last_dts: self.last_dts,
            typical_frame_ticks: median.unwrap_or(0),
        })
    }

    fn audio(&self) -> Option<PidSummary> {
        (self.frames > 0).then(|| PidSummary {
            frames: self.frames,
            first_dts: self.first_raw.unwrap_or(0) - TS_TIMESTAMP_OFFSET,
            last_dts: self.last_dts,
            typical_frame_ticks: self.frame_ticks,
        })
    }
}

/// Scans `buf`: a [`Scanner`] over a buffer held whole.
pub fn scan(buf: &[u8], complete: bool) -> TsScan {
    let mut scanner = Scanner::new(complete);
    scanner.feed(buf);
    scanner.finish()
}

/// The scan, fed in pieces of any size, so a file of any length is scanned in bounded
/// memory (recovery reads a segment in chunks: a `.part` is as large as its publisher
/// kept the segment open).
///
/// `complete == true`: the file was closed normally, keep everything that parses.
/// `false`: a `.part` file — keep only whole 188-byte packets with sync bytes and drop
/// from the start of the last (possibly incomplete) PES of each PID, i.e. keep_len = min
/// over PIDs of the offset of that PID's last PUSI packet, so every kept PES is complete.
/// A `.part` file without any complete media PES keeps nothing.
///
/// Parsing stops at the first packet without a sync byte or with a malformed adaptation
/// field; what follows is garbage.
#[derive(Debug)]
pub struct Scanner {
    complete: bool,
    /// Offset of the next packet.
    offset: usize,
    valid_len: usize,
    stopped: bool,
    /// The start of a packet split across two [`Scanner::feed`] calls.
    carry: Vec<u8>,
    video: PidState,
    audio: PidState,
}

impl Scanner {
    pub fn new(complete: bool) -> Scanner {
        Scanner {
            complete,
            offset: 0,
            valid_len: 0,
            stopped: false,
            carry: Vec::with_capacity(PACKET_SIZE),
            video: PidState::default(),
            audio: PidState::default(),
        }
    }

    /// The next bytes of the file.
    pub fn feed(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            let take = (PACKET_SIZE - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < PACKET_SIZE {
                return;
            }
            let mut packet = std::mem::take(&mut self.carry);
            self.packet(&packet);
            packet.clear();
            self.carry = packet;
        }
        let mut packets = data.chunks_exact(PACKET_SIZE);
        for packet in &mut packets {
            self.packet(packet);
        }
        self.carry.extend_from_slice(packets.remainder());
    }

    fn packet(&mut self, packet: &[u8]) {
        if self.stopped {
            return;
        }
        let offset = self.offset;
        self.offset += PACKET_SIZE;
        let Some(parsed) = parse_packet(packet) else {
            self.stopped = true;
            return;
        };
        self.valid_len = offset + PACKET_SIZE;
        let is_audio = match parsed.pid {
            VIDEO_PID => false,
            AUDIO_PID => true,
            _ => return,
        };
        let state = if is_audio {
            &mut self.audio
        } else {
            &mut self.video
        };
        if parsed.pusi {
            if let Some(done) = state.open.take() {
                state.waiting.push_back(done.close(is_audio));
            }
            state.open = Some(OpenPes {
                start: offset,
                end: offset + PACKET_SIZE,
                dts: pes_dts(parsed.payload),
                random_access: parsed.random_access,
                payload: Vec::new(),
            });
        } else if parsed.payload.is_empty() {
            return; // PCR-only packet
        }
        if let Some(pes) = state.open.as_mut() {
            pes.end = offset + PACKET_SIZE;
            if is_audio {
                pes.payload.extend_from_slice(parsed.payload);
            }
        }
        if parsed.pusi {
            self.fold();
        }
    }

    /// Adds to the summaries the whole PES that are kept whatever follows: a `.part` is
    /// cut at the start of some PID's last PES, which is no earlier than the earliest
    /// start of a PES being read now (later PES of any PID start further on).
    fn fold(&mut self) {
        let Some(safe) = [&self.video, &self.audio]
            .iter()
            .filter_map(|s| s.open.as_ref().map(|p| p.start))
            .min()
        else {
            return;
        };
        fold_pid(&mut self.video, safe, false);
        fold_pid(&mut self.audio, safe, true);
    }

    /// The summary of everything fed.
    pub fn finish(mut self) -> TsScan {
        let keep_len = if self.complete {
            for (state, is_audio) in [(&mut self.video, false), (&mut self.audio, true)] {
                if let Some(done) = state.open.take() {
                    state.waiting.push_back(done.close(is_audio));
                }
            }
            self.valid_len
        } else {
            [&self.video, &self.audio]
                .iter()
                .filter_map(|s| s.open.as_ref().map(|p| p.start))
                .min()
                .unwrap_or(0)
        };
        fold_pid(&mut self.video, keep_len, false);
        fold_pid(&mut self.audio, keep_len, true);
        let (video, audio) = (&self.video.kept, &self.audio.kept);
        let keep_len = if !self.complete && !video.any && !audio.any {
            0 // tables alone are not a segment
        } else {
            keep_len
        };
        TsScan {
            keep_len,
            starts_with_keyframe: video.first_random_access.unwrap_or(true),
            video: video.video(),
            audio: audio.audio(),
        }
    }
}

/// Moves a PID's whole PES that end by `keep_len` into its summary, in file order.
fn fold_pid(state: &mut PidState, keep_len: usize, is_audio: bool) {
    while let Some(pes) = state.waiting.front().filter(|p| p.end <= keep_len) {
        if is_audio {
            state.kept.add_audio(pes);
        } else {
            state.kept.add_video(pes);
        }
        state.waiting.pop_front();
    }
}

impl OpenPes {
    fn close(self, is_audio: bool) -> Pes {
        Pes {
            end: self.end,
            dts: self.dts,
            random_access: self.random_access,
            adts: if is_audio {
                count_adts(self.payload_after_header())
            } else {
                (0, 0)
            },
        }
    }

    /// The PES payload without its header.
    fn payload_after_header(&self) -> &[u8] {
        let header_len = self.payload.get(8).map_or(0, |&n| 9 + usize::from(n));
        self.payload.get(header_len..).unwrap_or_default()
    }
}

struct Packet<'a> {
    pid: u16,
    pusi: bool,
    random_access: bool,
    payload: &'a [u8],
}

fn parse_packet(packet: &[u8]) -> Option<Packet<'_>> {
    let &[sync, b1, b2, b3] = packet.get(..4)? else {
        return None;
    };
    if sync != SYNC_BYTE {
        return None;
    }
    let pid = (u16::from(b1 & 0x1f) << 8) | u16::from(b2);
    let pusi = b1 & 0x40 != 0;
    let afc = (b3 >> 4) & 0x03;
    if afc == 0 {
        return None; // reserved: not something a muxer writes
    }
    let (mut random_access, mut payload_start) = (false, 4usize);
    if afc & 0x02 != 0 {
        let af_len = usize::from(*packet.get(4)?);
        let max = if afc == 0x03 { 182 } else { 183 };
        if af_len > max {
            return None;
        }
        if af_len > 0 {
            random_access = packet.get(5)? & 0x40 != 0;
        }
        payload_start = 5 + af_len;
    }
    let payload = if afc & 0x01 != 0 {
        packet.get(payload_start..)?
    } else {
        &[]
    };
    Some(Packet {
        pid,
        pusi,
        random_access,
        payload,
    })
}

/// The DTS (else PTS) of a PES starting in `payload`, as the raw 33-bit value.
fn pes_dts(payload: &[u8]) -> Option<i64> {
    if payload.get(..3)? != [0, 0, 1] {
        return None;
    }
    let flags = payload.get(7)? >> 6;
    match flags {
        0b10 => read_timestamp(payload.get(9..14)?),
        0b11 => read_timestamp(payload.get(14..19)?),
        _ => None,
    }
}

/// Media time of `raw` (a 33-bit DTS), unwrapped relative to `first_raw` (which maps to
/// `first_raw - TS_TIMESTAMP_OFFSET`).
fn unwrap(raw: i64, first_raw: i64) -> Ticks {
    first_raw - TS_TIMESTAMP_OFFSET + timestamp_delta(raw, first_raw)
}

/// Counts the ADTS frames at the start of `data` and the duration of one (1024 samples).
fn count_adts(data: &[u8]) -> (u64, Ticks) {
    let (mut count, mut ticks, mut pos) = (0u64, 0, 0usize);
    while let Some(&[h0, h1, h2, h3, h4, h5, _]) = data.get(pos..pos + 7) {
        if h0 != 0xff || h1 & 0xf0 != 0xf0 {
            break;
        }
        let len = (usize::from(h3 & 0x03) << 11) | (usize::from(h4) << 3) | usize::from(h5 >> 5);
        let rate = ADTS_RATES.get(usize::from((h2 >> 2) & 0x0f)).copied();
        let (Some(rate), true) = (rate, len >= 7 && pos + len <= data.len()) else {
            break;
        };
        ticks = (1024 * 90_000 + rate / 2) / rate;
        count += 1;
        pos += len;
    }
    (count, ticks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::ts::tests::{audio, h264_tracks, video};
    use crate::mux::ts::TsMuxer;

    /// A 2-second segment: 25 fps video with B-frame style pts, 48 kHz audio.
    fn segment(start: Ticks) -> (Vec<u8>, Vec<usize>) {
        let mut m = TsMuxer::new(&h264_tracks(true)).unwrap();
        let mut out = Vec::new();
        m.write_tables(&mut out);
        let mut frame_ends = Vec::new();
        let mut next_audio = start;
        for i in 0..50 {
            let dts = start + i * 3600;
            while next_audio <= dts {
                m.write_frame(&audio(next_audio, 200), &mut out).unwrap();
                next_audio += 1920;
            }
            m.write_frame(&video(dts, dts + 7200, i % 25 == 0, 3000), &mut out)
                .unwrap();
            frame_ends.push(out.len());
        }
        m.flush(&mut out);
        (out, frame_ends)
    }

    #[test]
    fn complete_file_keeps_everything() {
        let (buf, _) = segment(0);
        let s = scan(&buf, true);
        assert_eq!(s.keep_len, buf.len());
        let v = s.video.unwrap();
        assert_eq!((v.frames, v.first_dts, v.last_dts), (50, 0, 49 * 3600));
        assert_eq!(v.typical_frame_ticks, 3600);
        let a = s.audio.unwrap();
        assert_eq!(a.frames, 92); // 0 ..= 49 * 3600 in steps of 1920
        assert_eq!((a.first_dts, a.last_dts), (0, 91 * 1920));
        assert_eq!(a.typical_frame_ticks, 1920);
        assert!(s.starts_with_keyframe);
        assert_eq!(s.duration(), 50 * 3600);
        // Garbage after the valid prefix is not kept.
        let mut dirty = buf.clone();
        dirty.extend_from_slice(&[0x47; 100]);
        dirty.extend_from_slice(&[0u8; 400]);
        assert_eq!(scan(&dirty, true).keep_len, buf.len());
    }

    #[test]
    fn part_file_drops_the_last_pes_of_each_pid() {
        let (buf, frame_ends) = segment(0);
        for cut in (0..buf.len()).step_by(97).chain([buf.len()]) {
            let s = scan(&buf[..cut], false);
            assert_eq!(s.keep_len % PACKET_SIZE, 0);
            assert!(s.keep_len <= cut);
            // Everything kept scans the same as a complete file of that length.
            let again = scan(&buf[..s.keep_len], true);
            assert_eq!((again.video, again.audio), (s.video, s.audio), "cut {cut}");
            if let Some(v) = s.video {
                // Every kept video frame ended before the cut.
                assert!(frame_ends[v.frames as usize - 1] <= cut);
            }
        }
        // A clean end still loses the last PES of each PID, by definition.
        let s = scan(&buf, false);
        assert_eq!(s.video.unwrap().frames, 49);
        assert!(scan(&buf[..PACKET_SIZE * 2], false).keep_len == 0);
    }

    #[test]
    fn fed_in_pieces_it_scans_the_same_as_whole() {
        let (buf, _) = segment(0);
        for cut in [buf.len(), buf.len() - 1000, buf.len() / 3] {
            for complete in [true, false] {
                let whole = scan(&buf[..cut], complete);
                for piece in [1, 7, 188, 1000, 65536] {
                    let mut scanner = Scanner::new(complete);
                    buf[..cut].chunks(piece).for_each(|p| scanner.feed(p));
                    assert_eq!(scanner.finish(), whole, "cut {cut}, pieces of {piece}");
                }
            }
        }
    }

    #[test]
    fn timestamps_unwrap_across_33_bits() {
        let start = (1 << 33) - TS_TIMESTAMP_OFFSET - 3 * 3600;
        let (buf, _) = segment(start);
        let s = scan(&buf, true);
        let v = s.video.unwrap();
        assert_eq!(v.first_dts, start);
        assert_eq!(v.last_dts, start + 49 * 3600);
        assert_eq!(s.duration(), 50 * 3600);
        // Negative media times (before the offset) come back negative.
        let (buf, _) = segment(-7200);
        assert_eq!(scan(&buf, true).video.unwrap().first_dts, -7200);
    }

    #[test]
    fn arbitrary_bytes_do_not_panic() {
        let (buf, _) = segment(0);
        let mut x = 12345u32;
        for _ in 0..200 {
            let mut b = buf.clone();
            for _ in 0..20 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (x as usize >> 4) % b.len();
                b[i] = (x >> 24) as u8;
            }
            let _ = scan(&b, false);
            let _ = scan(&b, true);
        }
        assert_eq!(scan(&[], false).keep_len, 0);
        assert!(scan(&[0x47; 187], true).video.is_none());
    }
}
