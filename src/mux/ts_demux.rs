//! MPEG-TS demuxer for the segments [`super::ts::TsMuxer`] wrote: turns stored segments
//! back into [`Frame`]s and [`Tracks`] so that MP4, M4A and FLV files can be derived
//! from them.
//!
//! Implements ISO/IEC 13818-1: transport packets (section 2.4.3.2), adaptation field
//! (2.4.3.4, only the random_access_indicator is used), PES packets (2.4.3.6: start code,
//! PES_packet_length, PTS/DTS), PAT/PMT sections (2.4.4.3, 2.4.4.8, CRC-checked, one
//! section per packet as every muxer we read writes them) and AVC/HEVC carriage in
//! Annex B (2.14, 2.17); AAC in ADTS per ISO/IEC 13818-7 section 6.2. From the in-band
//! parameter sets it builds the AVCDecoderConfigurationRecord (ISO/IEC 14496-15 section
//! 5.3.3.1) and the HEVCDecoderConfigurationRecord (section 8.3.3.1), and from the ADTS
//! header the 2-byte AudioSpecificConfig (ISO/IEC 14496-3 section 1.6.2.1).
//!
//! Owns: [`TsDemuxer`], a sans-IO state machine fed with bytes ([`TsDemuxer::feed`]),
//! told where an input ends ([`TsDemuxer::finish`]) and drained of [`DemuxEvent`]s
//! ([`TsDemuxer::poll`]). Never does IO, never panics on arbitrary bytes, and never
//! allocates without bound: one PES is capped ([`MAX_PES_SIZE`]), frames held back while
//! waiting for every track's configuration are capped ([`MAX_HELD_FRAMES`]).
//!
//! Output follows the conventions of [`crate::media`]: video frames are one access unit
//! with 4-byte NAL lengths, without AUD and without parameter sets (those go into the
//! track's [`CodecParams`]); audio frames are raw AAC (ADTS header removed).
//!
//! Ordering: the first [`DemuxEvent::Tracks`] comes before the first frame and holds
//! every track the PMT lists once each has been configured (frames are held back until
//! then, at most [`MAX_HELD_FRAMES`], or until [`TsDemuxer::finish`]). A later change of
//! parameter sets emits another [`DemuxEvent::Tracks`] right before the first frame that
//! uses them. Frames of one track come out in stream order; a video PES without a
//! declared length completes only at the next video PES, so audio frames may come out
//! ahead of the video frame they were muxed after.

use std::collections::VecDeque;

use bytes::Bytes;

use super::ts::{
    crc32_mpeg2, read_timestamp, timestamp_delta, PACKET_SIZE, PAT_PID, STREAM_TYPE_AAC_ADTS,
    STREAM_TYPE_H264, STREAM_TYPE_H265, TS_TIMESTAMP_OFFSET,
};
use crate::media::aac::AacConfig;
use crate::media::avc::{self, AvcConfig};
use crate::media::hevc::{self, HevcConfig};
use crate::media::{nal, CodecParams, Frame, MediaError, Ticks, TrackKind, Tracks};

/// Largest PES (header included) the demuxer buffers; a larger one is dropped.
pub const MAX_PES_SIZE: usize = 16 << 20;
/// Most frames held back while waiting for the configuration of every track the PMT
/// lists; past it the frames are released with the tracks known so far.
pub const MAX_HELD_FRAMES: usize = 1024;
/// Bytes of frames held back at most (same purpose as [`MAX_HELD_FRAMES`]).
const MAX_HELD_BYTES: usize = 32 << 20;

const SYNC_BYTE: u8 = 0x47;

/// What the demuxer produces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemuxEvent {
    /// The track set changed (first parameter sets seen, or SPS/PPS/VPS/ASC differ from before).
    Tracks(Tracks),
    Frame(Frame),
}

/// A problem in the input. Offsets count bytes from the first byte fed since
/// [`TsDemuxer::new`] or the last [`TsDemuxer::finish`]; PES offsets are those of the
/// PES's first packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemuxError {
    /// Fatal for this input: the rest of it is ignored until [`TsDemuxer::finish`].
    #[error("lost sync at byte {offset}: found {found:#04x} instead of 0x47 (input not 188-byte aligned, or garbage); ignoring the rest of this input")]
    LostSync { offset: u64, found: u8 },
    #[error("pid {pid:#06x}: malformed packet at byte {offset}: {detail}")]
    BadPacket {
        offset: u64,
        pid: u16,
        detail: &'static str,
    },
    #[error("pid {pid:#06x}: PES starting at byte {offset} exceeds {max} bytes; dropped")]
    PesTooLarge { offset: u64, pid: u16, max: usize },
    #[error("pid {pid:#06x}: malformed PES starting at byte {offset}: {detail}")]
    BadPes {
        offset: u64,
        pid: u16,
        detail: String,
    },
    #[error("pid {pid:#06x}: PES starting at byte {offset}: {source}")]
    BadCodecData {
        offset: u64,
        pid: u16,
        #[source]
        source: MediaError,
    },
}

/// Counters of what the demuxer skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxStats {
    /// Frames not emitted: video access units before the first usable parameter sets,
    /// incomplete video PES, incomplete or malformed ADTS frames.
    pub dropped_frames: u64,
    /// PES dropped whole: oversized, or a malformed PES header.
    pub dropped_pes: u64,
    /// Packets whose continuity_counter did not follow the previous one (still used).
    pub continuity_errors: u64,
    /// Packets on PIDs that are neither PAT, PMT nor a supported elementary stream.
    pub unknown_pid_packets: u64,
    /// Bytes of an incomplete final packet discarded by [`TsDemuxer::finish`].
    pub discarded_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    H264,
    H265,
    Aac,
}

impl Codec {
    fn kind(self) -> TrackKind {
        match self {
            Codec::H264 | Codec::H265 => TrackKind::Video,
            Codec::Aac => TrackKind::Audio,
        }
    }
}

/// A PES being collected.
#[derive(Debug)]
struct PesBuf {
    /// Offset of its first packet.
    start: u64,
    random_access: bool,
    /// From the packet start code on.
    data: Vec<u8>,
}

/// One elementary stream listed in the PMT.
#[derive(Debug)]
struct Stream {
    pid: u16,
    codec: Codec,
    pes: Option<PesBuf>,
    cc: Option<u8>,
    /// Last (raw 33-bit, unwrapped) DTS of this PID.
    last_ts: Option<(i64, Ticks)>,
    /// Video: the latest VPS, SPS and PPS seen in band.
    param_sets: [Vec<Bytes>; 3],
    /// The configuration frames of this stream are emitted with; `None` until known.
    params: Option<CodecParams>,
}

/// Parsed fields of a PES header.
#[derive(Debug)]
struct PesHeader {
    /// Total PES bytes (6 + PES_packet_length), `None` when unbounded.
    end: Option<usize>,
    payload_start: usize,
    pts: i64,
    dts: i64,
}

/// Sans-IO MPEG-TS demuxer (see the module doc).
#[derive(Debug)]
pub struct TsDemuxer {
    /// Bytes of a packet not yet complete (< 188).
    partial: Vec<u8>,
    /// Offset of the next packet's first byte.
    offset: u64,
    lost_sync: Option<DemuxError>,
    /// First error of the current [`TsDemuxer::feed`] call.
    first_error: Option<DemuxError>,
    pmt_pid: Option<u16>,
    streams: Vec<Stream>,
    /// Last (raw, unwrapped) DTS of any PID: the reference for a PID's first timestamp.
    last_ts: Option<(i64, Ticks)>,
    tracks: Tracks,
    /// False while frames are held back waiting for every listed track's configuration.
    ready: bool,
    held: VecDeque<Frame>,
    held_bytes: usize,
    events: VecDeque<DemuxEvent>,
    max_pes: usize,
    stats: DemuxStats,
}

impl Default for TsDemuxer {
    fn default() -> Self {
        TsDemuxer::new()
    }
}

impl TsDemuxer {
    pub fn new() -> TsDemuxer {
        TsDemuxer::with_max_pes_size(MAX_PES_SIZE)
    }

    /// A demuxer dropping PES larger than `max_pes` bytes (header included).
    pub fn with_max_pes_size(max_pes: usize) -> TsDemuxer {
        TsDemuxer {
            partial: Vec::with_capacity(PACKET_SIZE),
            offset: 0,
            lost_sync: None,
            first_error: None,
            pmt_pid: None,
            streams: Vec::new(),
            last_ts: None,
            tracks: Tracks::default(),
            ready: false,
            held: VecDeque::new(),
            held_bytes: 0,
            events: VecDeque::new(),
            max_pes,
            stats: DemuxStats::default(),
        }
    }

    /// Feed bytes (any split, e.g. a whole segment file or 64 KiB chunks). Packets must be
    /// 188-byte aligned from the first byte fed; a lost sync byte is an error naming the
    /// offset.
    ///
    /// Returns the first problem met in `buf`. Everything else in `buf` is still used
    /// (a malformed or oversized PES is dropped, the rest continues), except after a
    /// [`DemuxError::LostSync`]: then this and every later call ignore their bytes and
    /// return that error again, until [`TsDemuxer::finish`].
    pub fn feed(&mut self, buf: &[u8]) -> Result<(), DemuxError> {
        if let Some(e) = &self.lost_sync {
            return Err(e.clone());
        }
        let mut rest = buf;
        if !self.partial.is_empty() {
            let need = PACKET_SIZE
                .saturating_sub(self.partial.len())
                .min(rest.len());
            let (head, tail) = rest.split_at(need);
            self.partial.extend_from_slice(head);
            rest = tail;
            if self.partial.len() >= PACKET_SIZE {
                let mut packet = std::mem::take(&mut self.partial);
                self.packet(&packet);
                packet.clear();
                self.partial = packet;
            }
        }
        if self.lost_sync.is_none() {
            let mut chunks = rest.chunks_exact(PACKET_SIZE);
            for packet in &mut chunks {
                self.packet(packet);
                if self.lost_sync.is_some() {
                    break;
                }
            }
            if self.lost_sync.is_none() {
                self.partial.extend_from_slice(chunks.remainder());
            }
        }
        match self.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Call at the end of a segment file / the input: completes the last PES of each pid
    /// (a PES cut short keeps its whole ADTS frames; a cut video access unit is kept only
    /// if its PES had no declared length), releases held frames, discards an incomplete
    /// final packet and resets the sync state, byte offsets and continuity counters, so
    /// the next segment can be fed to the same demuxer (timestamps and tracks carry on).
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.stats.discarded_bytes += self.partial.len() as u64;
            self.partial.clear();
        }
        for idx in 0..self.streams.len() {
            if let Some(st) = self.streams.get_mut(idx) {
                st.cc = None;
                if let Some(pes) = st.pes.take() {
                    self.complete(idx, pes);
                }
            }
        }
        self.release();
        self.offset = 0;
        self.lost_sync = None;
        self.first_error = None;
    }

    /// Drain produced events in order.
    pub fn poll(&mut self) -> Option<DemuxEvent> {
        self.events.pop_front()
    }

    /// Frames dropped so far (see [`DemuxStats::dropped_frames`]).
    pub fn dropped_frames(&self) -> u64 {
        self.stats.dropped_frames
    }

    /// Everything the demuxer skipped so far.
    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    /// The tracks as configured so far (also announced through [`DemuxEvent::Tracks`]).
    pub fn tracks(&self) -> &Tracks {
        &self.tracks
    }

    fn note(&mut self, e: DemuxError) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn packet(&mut self, packet: &[u8]) {
        let offset = self.offset;
        self.offset += PACKET_SIZE as u64;
        let Some(&[sync, b1, b2, b3]) = packet.get(..4) else {
            return;
        };
        if sync != SYNC_BYTE {
            let e = DemuxError::LostSync {
                offset,
                found: sync,
            };
            self.lost_sync = Some(e.clone());
            self.note(e);
            return;
        }
        let pid = (u16::from(b1 & 0x1f) << 8) | u16::from(b2);
        let bad = |detail| DemuxError::BadPacket {
            offset,
            pid,
            detail,
        };
        if b1 & 0x80 != 0 {
            self.note(bad("transport_error_indicator set; packet ignored"));
            return;
        }
        let pusi = b1 & 0x40 != 0;
        let afc = (b3 >> 4) & 0x03;
        if afc == 0 {
            self.note(bad("reserved adaptation_field_control 0"));
            return;
        }
        let (mut random_access, mut payload_start) = (false, 4usize);
        if afc & 0x02 != 0 {
            let af_len = usize::from(packet.get(4).copied().unwrap_or_default());
            let max = if afc == 0x03 { 182 } else { 183 };
            if af_len > max {
                self.note(bad("adaptation_field_length past the packet end"));
                return;
            }
            if af_len > 0 {
                random_access = packet.get(5).is_some_and(|f| f & 0x40 != 0);
            }
            payload_start = 5 + af_len;
        }
        let payload = match afc & 0x01 {
            0 => &[][..],
            _ => packet.get(payload_start..).unwrap_or_default(),
        };
        if pid == PAT_PID {
            if pusi {
                if let Err(detail) = self.pat(payload) {
                    self.note(bad(detail));
                }
            }
            return;
        }
        if Some(pid) == self.pmt_pid {
            if pusi {
                if let Err(detail) = self.pmt(payload) {
                    self.note(bad(detail));
                }
            }
            return;
        }
        let Some(idx) = self.streams.iter().position(|s| s.pid == pid) else {
            self.stats.unknown_pid_packets += 1;
            return;
        };
        self.es_packet(
            idx,
            offset,
            pusi,
            random_access,
            afc & 0x01 != 0,
            b3,
            payload,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn es_packet(
        &mut self,
        idx: usize,
        offset: u64,
        pusi: bool,
        random_access: bool,
        has_payload: bool,
        b3: u8,
        payload: &[u8],
    ) {
        let max_pes = self.max_pes;
        let Some(st) = self.streams.get_mut(idx) else {
            return;
        };
        let pid = st.pid;
        if has_payload {
            let cc = b3 & 0x0f;
            if st.cc.is_some_and(|last| (last + 1) & 0x0f != cc) {
                self.stats.continuity_errors += 1;
            }
            st.cc = Some(cc);
        }
        if pusi {
            if let Some(pes) = st.pes.take() {
                self.complete(idx, pes);
            }
            if payload.get(..3) != Some(&[0, 0, 1]) {
                self.stats.dropped_pes += 1;
                self.note(DemuxError::BadPes {
                    offset,
                    pid,
                    detail: "payload_unit_start without a PES start code".into(),
                });
                return;
            }
            let Some(st) = self.streams.get_mut(idx) else {
                return;
            };
            st.pes = Some(PesBuf {
                start: offset,
                random_access,
                data: Vec::new(),
            });
        }
        let Some(pes) = st_pes(&mut self.streams, idx) else {
            return; // continuation of a PES whose start we did not see
        };
        if pes.data.len() + payload.len() > max_pes {
            let start = pes.start;
            if let Some(st) = self.streams.get_mut(idx) {
                st.pes = None;
            }
            self.stats.dropped_pes += 1;
            self.note(DemuxError::PesTooLarge {
                offset: start,
                pid,
                max: max_pes,
            });
            return;
        }
        pes.data.extend_from_slice(payload);
        let declared = pes
            .data
            .get(4..6)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
            .filter(|&l| l > 0);
        if declared.is_some_and(|l| pes.data.len() >= 6 + l) {
            if let Some(pes) = self.streams.get_mut(idx).and_then(|s| s.pes.take()) {
                self.complete(idx, pes);
            }
        }
    }

    fn pat(&mut self, payload: &[u8]) -> Result<(), &'static str> {
        let section = psi_section(payload, 0x00)?;
        let programs = section.get(8..).unwrap_or_default();
        for entry in programs.chunks_exact(4) {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            if program != 0 {
                self.pmt_pid = Some((u16::from(entry[2] & 0x1f) << 8) | u16::from(entry[3]));
                return Ok(());
            }
        }
        Ok(())
    }

    fn pmt(&mut self, payload: &[u8]) -> Result<(), &'static str> {
        let section = psi_section(payload, 0x02)?;
        let info_len = section
            .get(10..12)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0] & 0x0f, b[1]])));
        let mut listed: Vec<(u16, Codec)> = Vec::new();
        let mut pos = 12 + info_len;
        while let Some(&[stream_type, p0, p1, l0, l1]) = section.get(pos..pos + 5) {
            pos += 5 + usize::from(u16::from_be_bytes([l0 & 0x0f, l1]));
            let pid = (u16::from(p0 & 0x1f) << 8) | u16::from(p1);
            let codec = match stream_type {
                STREAM_TYPE_H264 => Codec::H264,
                STREAM_TYPE_H265 => Codec::H265,
                STREAM_TYPE_AAC_ADTS => Codec::Aac,
                _ => continue,
            };
            // One track per kind, as Tracks holds; PAT/PMT PIDs cannot carry media.
            let taken = listed
                .iter()
                .any(|&(p, c)| p == pid || c.kind() == codec.kind());
            if !taken && pid != PAT_PID && Some(pid) != self.pmt_pid {
                listed.push((pid, codec));
            }
        }
        // Streams no longer listed (or listed with another codec) end here.
        let mut i = 0;
        while let Some(st) = self.streams.get_mut(i) {
            if listed.contains(&(st.pid, st.codec)) {
                i += 1;
                continue;
            }
            if let Some(pes) = st.pes.take() {
                self.complete(i, pes);
            }
            self.streams.remove(i);
        }
        for (pid, codec) in listed {
            if !self.streams.iter().any(|s| s.pid == pid) {
                self.streams.push(Stream {
                    pid,
                    codec,
                    pes: None,
                    cc: None,
                    last_ts: None,
                    param_sets: Default::default(),
                    params: None,
                });
            }
        }
        Ok(())
    }

    /// Turns a collected PES into frames (or drops it), noting any error.
    fn complete(&mut self, idx: usize, pes: PesBuf) {
        let Some(st) = self.streams.get_mut(idx) else {
            return;
        };
        let (pid, codec) = (st.pid, st.codec);
        let header = match parse_pes_header(&pes.data) {
            Ok(h) => h,
            Err(detail) => {
                self.stats.dropped_pes += 1;
                self.note(DemuxError::BadPes {
                    offset: pes.start,
                    pid,
                    detail: detail.into(),
                });
                return;
            }
        };
        let reference = st.last_ts.or(self.last_ts);
        let dts = unwrap_timestamp(header.dts, reference);
        st.last_ts = Some((header.dts, dts));
        self.last_ts = Some((header.dts, dts));
        let pts = dts
            .saturating_add(timestamp_delta(header.pts, header.dts))
            .max(dts);
        let end = header.end.unwrap_or(pes.data.len()).min(pes.data.len());
        let complete = header.end.is_none_or(|e| pes.data.len() >= e);
        let payload = pes.data.get(header.payload_start..end).unwrap_or_default();
        let result = match codec {
            Codec::H264 | Codec::H265 if !complete => {
                self.stats.dropped_frames += 1;
                Ok(())
            }
            Codec::H264 | Codec::H265 => {
                self.video_pes(idx, payload, dts, pts, pes.random_access, pes.start)
            }
            Codec::Aac => self.audio_pes(idx, payload, dts, complete, pes.start),
        };
        if let Err(e) = result {
            self.note(e);
        }
    }

    fn video_pes(
        &mut self,
        idx: usize,
        payload: &[u8],
        dts: Ticks,
        pts: Ticks,
        random_access: bool,
        start: u64,
    ) -> Result<(), DemuxError> {
        let Some(st) = self.streams.get_mut(idx) else {
            return Ok(());
        };
        let hevc = st.codec == Codec::H265;
        let mut au = Vec::with_capacity(payload.len() + 16);
        let mut sets: [Vec<Bytes>; 3] = Default::default(); // VPS, SPS, PPS
        let mut keyframe = random_access;
        for unit in nal::split_annex_b(payload) {
            let Some(&first) = unit.first() else {
                continue;
            };
            let slot = if hevc {
                match hevc::nal_type(first) {
                    hevc::NAL_AUD => continue,
                    hevc::NAL_VPS => Some(0),
                    hevc::NAL_SPS => Some(1),
                    hevc::NAL_PPS => Some(2),
                    ty => {
                        keyframe |= hevc::is_irap(ty);
                        None
                    }
                }
            } else {
                match avc::nal_type(first) {
                    avc::NAL_AUD => continue,
                    avc::NAL_SPS => Some(1),
                    avc::NAL_PPS => Some(2),
                    ty => {
                        keyframe |= ty == avc::NAL_IDR;
                        None
                    }
                }
            };
            match slot.and_then(|s| sets.get_mut(s)) {
                Some(list) => {
                    if !list.iter().any(|b| b[..] == *unit) {
                        list.push(Bytes::copy_from_slice(unit));
                    }
                }
                None => {
                    let Ok(len) = u32::try_from(unit.len()) else {
                        continue;
                    };
                    au.extend_from_slice(&len.to_be_bytes());
                    au.extend_from_slice(unit);
                }
            }
        }
        let carried = sets.iter().any(|s| !s.is_empty());
        let mut changed = false;
        for (have, new) in st.param_sets.iter_mut().zip(sets) {
            if !new.is_empty() && *have != new {
                *have = new;
                changed = true;
            }
        }
        let mut result = Ok(());
        let mut new_params = None;
        if carried && (changed || st.params.is_none()) {
            let [vps, sps, pps] = &st.param_sets;
            let built = if hevc {
                HevcConfig::from_parameter_sets(vps, sps, pps).map(|c| c.map(CodecParams::H265))
            } else {
                AvcConfig::from_parameter_sets(sps, pps).map(|c| c.map(CodecParams::H264))
            };
            match built {
                Ok(Some(params)) => {
                    st.params = Some(params.clone());
                    new_params = Some(params);
                }
                Ok(None) => {} // not all kinds seen yet
                Err(source) => {
                    st.params = None;
                    result = Err(DemuxError::BadCodecData {
                        offset: start,
                        pid: st.pid,
                        source,
                    });
                }
            }
        }
        let configured = st.params.is_some();
        if let Some(params) = new_params {
            self.set_track(params);
        }
        if au.is_empty() {
            return result;
        }
        if !configured {
            self.stats.dropped_frames += 1;
            return result;
        }
        self.emit_frame(Frame {
            kind: TrackKind::Video,
            dts,
            pts,
            keyframe,
            data: au.into(),
        });
        result
    }

    fn audio_pes(
        &mut self,
        idx: usize,
        payload: &[u8],
        dts: Ticks,
        complete: bool,
        start: u64,
    ) -> Result<(), DemuxError> {
        let Some(pid) = self.streams.get(idx).map(|s| s.pid) else {
            return Ok(());
        };
        let bad = |detail: String| DemuxError::BadPes {
            offset: start,
            pid,
            detail,
        };
        let mut result = Ok(());
        let mut pos = 0usize;
        let mut index: i64 = 0;
        while let Some(rest) = payload.get(pos..).filter(|r| !r.is_empty()) {
            let adts = match parse_adts(rest) {
                Ok(a) => a,
                Err(None) => {
                    // Cut short: fine at the end of a truncated PES, an error otherwise.
                    self.stats.dropped_frames += 1;
                    if complete {
                        return Err(bad(format!(
                            "ADTS frame at payload byte {pos} runs past the end of the PES"
                        )));
                    }
                    return result;
                }
                Err(Some(detail)) => {
                    self.stats.dropped_frames += 1;
                    return Err(bad(format!("{detail} at payload byte {pos}")));
                }
            };
            let body = rest
                .get(adts.header_len..adts.frame_len)
                .unwrap_or_default();
            pos += adts.frame_len;
            let asc = adts.audio_specific_config();
            let Some(st) = self.streams.get_mut(idx) else {
                return result;
            };
            let config = match &st.params {
                Some(CodecParams::Aac(c)) if c.asc[..] == asc => c.clone(),
                _ => match AacConfig::parse(&asc) {
                    Ok(c) => {
                        st.params = Some(CodecParams::Aac(c.clone()));
                        self.set_track(CodecParams::Aac(c.clone()));
                        c
                    }
                    Err(source) => {
                        self.stats.dropped_frames += 1;
                        return Err(DemuxError::BadCodecData {
                            offset: start,
                            pid,
                            source,
                        });
                    }
                },
            };
            let ticks = config.frame_ticks();
            let frame_dts = dts.saturating_add(index.saturating_mul(ticks));
            index += 1 + i64::from(adts.raw_blocks);
            if adts.raw_blocks > 0 {
                self.stats.dropped_frames += 1;
                if result.is_ok() {
                    result = Err(bad(format!(
                        "ADTS frame at payload byte {} holds {} raw data blocks (unsupported)",
                        pos - adts.frame_len,
                        adts.raw_blocks + 1
                    )));
                }
                continue;
            }
            self.emit_frame(Frame {
                kind: TrackKind::Audio,
                dts: frame_dts,
                pts: frame_dts,
                keyframe: true,
                data: Bytes::copy_from_slice(body),
            });
        }
        result
    }

    /// Records a track's configuration; announces it unless it is unchanged.
    fn set_track(&mut self, params: CodecParams) {
        let kind = params.kind();
        if self.tracks.get(kind) == Some(&params) {
            return;
        }
        if !self.ready && self.tracks.get(kind).is_some() {
            // A change before the first announcement: held frames use the old one.
            self.release();
        }
        self.tracks.set(params);
        if self.ready {
            self.events
                .push_back(DemuxEvent::Tracks(self.tracks.clone()));
        } else if self
            .streams
            .iter()
            .all(|s| self.tracks.get(s.codec.kind()).is_some())
        {
            self.release();
        }
    }

    /// Announces the tracks and releases the held frames.
    fn release(&mut self) {
        if self.ready {
            return;
        }
        if self.tracks.is_empty() && self.held.is_empty() {
            return; // nothing seen yet: keep waiting
        }
        self.ready = true;
        self.events
            .push_back(DemuxEvent::Tracks(self.tracks.clone()));
        self.events
            .extend(self.held.drain(..).map(DemuxEvent::Frame));
        self.held_bytes = 0;
    }

    fn emit_frame(&mut self, frame: Frame) {
        if self.ready {
            self.events.push_back(DemuxEvent::Frame(frame));
            return;
        }
        self.held_bytes += frame.data.len();
        self.held.push_back(frame);
        if self.held.len() >= MAX_HELD_FRAMES || self.held_bytes >= MAX_HELD_BYTES {
            self.release();
        }
    }
}

fn st_pes(streams: &mut [Stream], idx: usize) -> Option<&mut PesBuf> {
    streams.get_mut(idx)?.pes.as_mut()
}

/// The section of a PSI packet payload (pointer_field first) with table `table_id`,
/// CRC checked and removed.
fn psi_section(payload: &[u8], table_id: u8) -> Result<&[u8], &'static str> {
    let pointer = usize::from(*payload.first().ok_or("empty PSI payload")?);
    let section = payload
        .get(1 + pointer..)
        .ok_or("pointer_field past the packet end")?;
    let (&id, &l0, &l1) = match section {
        [id, l0, l1, ..] => (id, l0, l1),
        _ => return Err("PSI section header past the packet end"),
    };
    if id != table_id {
        return Err("unexpected table_id");
    }
    let total = 3 + usize::from(u16::from_be_bytes([l0 & 0x0f, l1]));
    let section = section
        .get(..total)
        .ok_or("PSI section spans packets (unsupported)")?;
    if total < 12 {
        return Err("PSI section too short");
    }
    if crc32_mpeg2(section) != 0 {
        return Err("PSI section CRC mismatch");
    }
    Ok(section.get(..total - 4).unwrap_or_default())
}

fn parse_pes_header(d: &[u8]) -> Result<PesHeader, &'static str> {
    let Some(&[0, 0, 1, stream_id, l0, l1, marker, flags, header_len]) = d.get(..9) else {
        return Err("PES header truncated or without start code");
    };
    if matches!(
        stream_id,
        0xbc | 0xbe | 0xbf | 0xf0 | 0xf1 | 0xf2 | 0xf8 | 0xff
    ) {
        return Err("stream_id without PTS (not audio or video)");
    }
    if marker & 0xc0 != 0x80 {
        return Err("bad PES header marker bits");
    }
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    let end = (length > 0).then_some(6 + length);
    let payload_start = 9 + usize::from(header_len);
    if end.is_some_and(|e| e < payload_start) {
        return Err("PES_packet_length shorter than its header");
    }
    let field = |at: usize| {
        d.get(at..at + 5)
            .filter(|_| at + 5 <= payload_start)
            .and_then(read_timestamp)
    };
    let (pts, dts) = match flags >> 6 {
        0b10 => {
            let pts = field(9).ok_or("PTS truncated or beyond the header")?;
            (pts, pts)
        }
        0b11 => (
            field(9).ok_or("PTS truncated or beyond the header")?,
            field(14).ok_or("DTS truncated or beyond the header")?,
        ),
        _ => return Err("PES without PTS"),
    };
    Ok(PesHeader {
        end,
        payload_start,
        pts,
        dts,
    })
}

/// Media time of the raw 33-bit timestamp `raw`: relative to the previous (raw,
/// unwrapped) pair when there is one, else `raw - TS_TIMESTAMP_OFFSET`.
fn unwrap_timestamp(raw: i64, reference: Option<(i64, Ticks)>) -> Ticks {
    match reference {
        Some((prev_raw, prev)) => prev.saturating_add(timestamp_delta(raw, prev_raw)),
        None => raw - TS_TIMESTAMP_OFFSET,
    }
}

/// Fields of one ADTS header.
#[derive(Debug)]
struct Adts {
    profile: u8,
    sampling_index: u8,
    channels: u8,
    header_len: usize,
    frame_len: usize,
    raw_blocks: u8,
}

impl Adts {
    /// The 2-byte AudioSpecificConfig: object type (profile + 1), index, channels.
    fn audio_specific_config(&self) -> [u8; 2] {
        let object_type = self.profile + 1;
        [
            (object_type << 3) | (self.sampling_index >> 1),
            ((self.sampling_index & 1) << 7) | (self.channels << 3),
        ]
    }
}

/// Parses the ADTS frame at the start of `d`: `Err(None)` when it is cut short,
/// `Err(Some(why))` when it is not an ADTS frame.
fn parse_adts(d: &[u8]) -> Result<Adts, Option<&'static str>> {
    if d.first().is_some_and(|&b| b != 0xff) {
        return Err(Some("no ADTS sync word"));
    }
    let Some(&[_, h1, h2, h3, h4, h5, h6]) = d.get(..7) else {
        return Err(None);
    };
    if h1 & 0xf6 != 0xf0 {
        return Err(Some("no ADTS sync word"));
    }
    let header_len = if h1 & 0x01 != 0 { 7 } else { 9 }; // protection_absent, else CRC
    let frame_len = (usize::from(h3 & 0x03) << 11) | (usize::from(h4) << 3) | usize::from(h5 >> 5);
    if frame_len < header_len {
        return Err(Some("ADTS frame_length shorter than its header"));
    }
    if d.len() < frame_len {
        return Err(None);
    }
    Ok(Adts {
        profile: h2 >> 6,
        sampling_index: (h2 >> 2) & 0x0f,
        channels: ((h2 & 0x01) << 2) | (h3 >> 6),
        header_len,
        frame_len,
        raw_blocks: h6 & 0x03,
    })
}

#[cfg(test)]
#[path = "ts_demux_tests.rs"]
mod tests;
