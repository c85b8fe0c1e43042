//! Recovery scan of an MPEG-TS segment written by [`super::ts::TsMuxer`] that may have
//! been cut anywhere (power loss): how many bytes to keep and what media they hold
//! (ISO/IEC 13818-1 sections 2.4.3.2-2.4.3.7: packet header, adaptation field, PES
//! header timestamps; ADTS frame headers per ISO/IEC 13818-7 section 6.2).
//!
//! Owns: [`scan`] and its [`TsScan`] summary. Never modifies or writes the file (the caller
//! truncates to [`TsScan::keep_len`]), never panics on arbitrary bytes. Only the fixed PIDs
//! the muxer uses ([`VIDEO_PID`], [`AUDIO_PID`]) are read; the PMT is not consulted.

use super::ts::{
    read_timestamp, timestamp_delta, AUDIO_PID, PACKET_SIZE, TS_TIMESTAMP_OFFSET, VIDEO_PID,
};
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

/// One PES as found in the file.
#[derive(Debug)]
struct Pes {
    /// Offset of its first (PUSI) packet.
    start: usize,
    /// Offset just past its last packet.
    end: usize,
    /// Raw 33-bit DTS (or PTS when there is no DTS); `None` if the header was unreadable.
    dts: Option<i64>,
    random_access: bool,
    /// Audio: payload bytes, for counting ADTS frames.
    payload: Vec<u8>,
}

/// Scans `buf`. `complete == true`: the file was closed normally, keep everything that
/// parses. `false`: a `.part` file — keep only whole 188-byte packets with sync bytes and
/// drop from the start of the last (possibly incomplete) PES of each PID, i.e.
/// keep_len = min over PIDs of the offset of that PID's last PUSI packet, so every kept
/// PES is complete. A `.part` file without any complete media PES keeps nothing.
///
/// Parsing stops at the first packet without a sync byte or with a malformed adaptation
/// field; what follows is garbage.
pub fn scan(buf: &[u8], complete: bool) -> TsScan {
    let mut video: Vec<Pes> = Vec::new();
    let mut audio: Vec<Pes> = Vec::new();
    let mut valid_len = 0;
    for (index, packet) in buf.chunks_exact(PACKET_SIZE).enumerate() {
        let offset = index * PACKET_SIZE;
        let Some(parsed) = parse_packet(packet) else {
            break;
        };
        valid_len = offset + PACKET_SIZE;
        let list = match parsed.pid {
            VIDEO_PID => &mut video,
            AUDIO_PID => &mut audio,
            _ => continue,
        };
        if parsed.pusi {
            list.push(Pes {
                start: offset,
                end: offset + PACKET_SIZE,
                dts: pes_dts(parsed.payload),
                random_access: parsed.random_access,
                payload: Vec::new(),
            });
        } else if parsed.payload.is_empty() {
            continue; // PCR-only packet
        }
        if let Some(pes) = list.last_mut() {
            pes.end = offset + PACKET_SIZE;
            if parsed.pid == AUDIO_PID {
                pes.payload.extend_from_slice(parsed.payload);
            }
        }
    }
    let keep_len = if complete {
        valid_len
    } else {
        [video.last(), audio.last()]
            .iter()
            .flatten()
            .map(|p| p.start)
            .min()
            .unwrap_or(0)
    };
    let kept = |list: Vec<Pes>| -> Vec<Pes> {
        list.into_iter()
            .filter(|p| p.end <= keep_len && p.dts.is_some())
            .collect()
    };
    let (video, audio) = (kept(video), kept(audio));
    let keep_len = if !complete && video.is_empty() && audio.is_empty() {
        0 // tables alone are not a segment
    } else {
        keep_len
    };
    TsScan {
        keep_len,
        starts_with_keyframe: video.first().is_none_or(|p| p.random_access),
        video: summarize_video(&video),
        audio: summarize_audio(&audio),
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

fn summarize_video(pes: &[Pes]) -> Option<PidSummary> {
    let first_raw = pes.first()?.dts?;
    let dts: Vec<Ticks> = pes
        .iter()
        .filter_map(|p| p.dts)
        .map(|raw| unwrap(raw, first_raw))
        .collect();
    let mut steps: Vec<Ticks> = dts
        .windows(2)
        .filter_map(|w| match w {
            [a, b] if b > a => Some(b - a),
            _ => None,
        })
        .collect();
    steps.sort_unstable();
    Some(PidSummary {
        frames: dts.len() as u64,
        first_dts: *dts.first()?,
        last_dts: *dts.last()?,
        typical_frame_ticks: steps.get(steps.len() / 2).copied().unwrap_or(0),
    })
}

fn summarize_audio(pes: &[Pes]) -> Option<PidSummary> {
    let first_raw = pes.first()?.dts?;
    let mut frames = 0u64;
    let mut last_dts = 0;
    let mut frame_ticks = 0;
    for p in pes {
        let Some(raw) = p.dts else { continue };
        let (count, ticks) = count_adts(p.payload_after_header());
        if count == 0 {
            continue;
        }
        frame_ticks = ticks;
        frames += count;
        last_dts = unwrap(raw, first_raw) + (count as i64 - 1) * ticks;
    }
    (frames > 0).then(|| PidSummary {
        frames,
        first_dts: first_raw - TS_TIMESTAMP_OFFSET,
        last_dts,
        typical_frame_ticks: frame_ticks,
    })
}

impl Pes {
    /// The PES payload without its header.
    fn payload_after_header(&self) -> &[u8] {
        let header_len = self.payload.get(8).map_or(0, |&n| 9 + usize::from(n));
        self.payload.get(header_len..).unwrap_or_default()
    }
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
