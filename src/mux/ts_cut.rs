//! Starting a stored MPEG-TS segment at one of its keyframes: where the video random
//! access points are ([`keyframes`]) and the segment's bytes from one of them on, after
//! its program tables ([`cut_at`]).
//!
//! A highlight clip over a capture a rule records begins inside a segment (segments hold
//! several GOPs, and a clip reaches back to a moment no cut was made at). Its first
//! segment is derived when read: the PAT and PMT the segment begins with, then every
//! packet from the keyframe's first on. That is a pure function of the file, so an upload
//! resumed after a reboot sends identical bytes, and nothing is rewritten on flash.
//! Hand-written: no crate cuts TS at packet granularity without remuxing it.
//!
//! Only the layout [`super::ts::TsMuxer`] writes is read: fixed PIDs, a random access
//! flag in the adaptation field of a keyframe PES's first packet (ISO/IEC 13818-1
//! section 2.4.3.5), PES timestamps per section 2.4.3.7.

use super::ts::{read_timestamp, PACKET_SIZE, PAT_PID, PMT_PID, TS_TIMESTAMP_OFFSET, VIDEO_PID};
use crate::media::Ticks;

/// Where one video keyframe's PES starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyframe {
    /// Byte offset of its first packet (a multiple of 188).
    pub offset: u64,
    /// Its DTS, [`TS_TIMESTAMP_OFFSET`] removed, not unwrapped (33 bits).
    pub dts: Ticks,
}

/// The video keyframes of segment bytes `buf`, in order.
pub fn keyframes(buf: &[u8]) -> Vec<Keyframe> {
    buf.chunks_exact(PACKET_SIZE)
        .enumerate()
        .filter_map(|(i, p)| {
            keyframe_dts(p).map(|dts| Keyframe {
                offset: (i * PACKET_SIZE) as u64,
                dts,
            })
        })
        .collect()
}

/// The DTS of the PES a packet starts, if it is the first packet of a video keyframe.
fn keyframe_dts(p: &[u8]) -> Option<Ticks> {
    let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
    let pusi = p[1] & 0x40 != 0;
    if p[0] != 0x47 || pid != VIDEO_PID || !pusi {
        return None;
    }
    let afc = p[3] & 0x30;
    let mut at = 4;
    if afc & 0x20 != 0 {
        let af_len = usize::from(*p.get(4)?);
        let flags = if af_len > 0 { *p.get(5)? } else { 0 };
        if flags & 0x40 == 0 {
            return None; // not a random access point
        }
        at += 1 + af_len;
    } else {
        return None;
    }
    if afc & 0x10 == 0 {
        return None;
    }
    let pes = p.get(at..)?;
    if pes.len() < 14 || pes[..3] != [0, 0, 1] {
        return None;
    }
    let flags = pes[7] >> 6;
    let raw = match flags {
        0b11 => read_timestamp(pes.get(14..19)?)?,
        0b10 => read_timestamp(pes.get(9..14)?)?,
        _ => return None,
    };
    Some(raw - TS_TIMESTAMP_OFFSET)
}

/// The segment `buf` started at the packet at `offset`: the program tables it begins
/// with (every PAT/PMT packet before its first media packet), then `buf[offset..]`.
pub fn cut_at(buf: &[u8], offset: u64) -> Vec<u8> {
    let offset = (offset as usize).min(buf.len()) / PACKET_SIZE * PACKET_SIZE;
    let tables: Vec<&[u8]> = buf[..offset]
        .chunks_exact(PACKET_SIZE)
        .take_while(|p| {
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            pid == PAT_PID || pid == PMT_PID
        })
        .collect();
    let mut out = Vec::with_capacity(tables.len() * PACKET_SIZE + buf.len() - offset);
    for p in tables {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&buf[offset..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{TrackKind, TICKS_PER_SECOND};
    use crate::mux::ts::tests::{audio, h264_tracks, video};
    use crate::mux::ts::TsMuxer;
    use crate::mux::ts_demux::{DemuxEvent, TsDemuxer};

    /// Two GOPs of 1 s at 25 fps with audio, as the muxer writes a segment.
    fn segment() -> Vec<u8> {
        let tracks = h264_tracks(true);
        let mut muxer = TsMuxer::new(&tracks).unwrap();
        let mut out = Vec::new();
        muxer.write_tables(&mut out);
        let frame_ticks = TICKS_PER_SECOND / 25;
        for n in 0..50i64 {
            let dts = n * frame_ticks;
            muxer
                .write_frame(&video(dts, dts, n % 25 == 0, 3000), &mut out)
                .unwrap();
            if n % 2 == 0 {
                muxer.write_frame(&audio(dts, 200), &mut out).unwrap();
            }
        }
        muxer.flush(&mut out);
        out
    }

    fn frames(buf: &[u8]) -> Vec<(TrackKind, Ticks, bool)> {
        let mut d = TsDemuxer::new();
        d.feed(buf).unwrap();
        d.finish();
        let mut out = Vec::new();
        while let Some(e) = d.poll() {
            if let DemuxEvent::Frame(f) = e {
                out.push((f.kind, f.dts, f.keyframe));
            }
        }
        out
    }

    #[test]
    fn a_segment_cut_at_its_second_keyframe_starts_there_and_decodes() {
        let buf = segment();
        let kfs = keyframes(&buf);
        assert_eq!(kfs.len(), 2, "{kfs:?}");
        assert_eq!(kfs[0].dts, 0);
        assert_eq!(kfs[1].dts, TICKS_PER_SECOND);
        assert_eq!(kfs[1].offset % PACKET_SIZE as u64, 0);
        let cut = cut_at(&buf, kfs[1].offset);
        assert!(cut.len() < buf.len());
        let out = frames(&cut);
        let video: Vec<_> = out.iter().filter(|f| f.0 == TrackKind::Video).collect();
        assert_eq!(video.len(), 25, "the second GOP whole");
        assert_eq!((video[0].1, video[0].2), (TICKS_PER_SECOND, true));
        assert!(out.iter().any(|f| f.0 == TrackKind::Audio));
        // Deterministic, and a cut at 0 is the segment itself.
        assert_eq!(cut, cut_at(&buf, kfs[1].offset));
        assert_eq!(cut_at(&buf, 0), buf);
        // Not a keyframe, not video, garbage: none found.
        assert!(keyframes(&[0u8; 188 * 3]).is_empty());
        assert!(keyframes(&buf[..100]).is_empty());
    }
}
