//! MPEG-TS writer for HLS segments (ISO/IEC 13818-1: PAT/PMT section 2.4.4, PES section
//! 2.4.3.6, adaptation field and PCR section 2.4.3.4; AVC/HEVC carriage per sections
//! 2.14/2.17 with access unit delimiters; AAC in ADTS per ISO/IEC 13818-7).
//!
//! Owns: [`TsMuxer`], turning [`Frame`]s into 188-byte packets handed to a [`TsOut`] (a
//! `Vec<u8>`, or the segment writer, which passes whole pages to its file as they fill).
//! An access unit is packetized straight from the frame's NAL units and the start codes
//! between them, never copied whole first: with one camera per few hundred kB of RAM, a
//! 100 kB keyframe held twice (an Annex B copy and the output) was a fifth of it.
//! One program (number 1, PMT on [`PMT_PID`]) with video on [`VIDEO_PID`] and audio on
//! [`AUDIO_PID`], only for the tracks present. Never does IO and never decides where a
//! segment ends: the caller calls [`TsMuxer::write_tables`] to start one and
//! [`TsMuxer::flush`] before closing it.
//!
//! Timing: PES timestamps are the frame's plus [`TS_TIMESTAMP_OFFSET`], modulo 2^33. The
//! PCR (on the video PID, else audio) is the frame's DTS without the offset, so every
//! access unit arrives that long before it is decoded. Video PES carry a PCR on every
//! frame; a lone PCR packet is added when audio advances more than [`PCR_MAX_GAP`] past
//! the last one; audio-only streams get one per audio PES (at most [`AUDIO_GROUP_TICKS`]).
//!
//! Audio frames are grouped into one PES until [`AUDIO_PES_PAYLOAD`] bytes, as ffmpeg's
//! muxer does, and video PES do not interrupt a group. Every PES ends in a padded packet
//! (92 bytes on average), so at 2 Mb/s with 128 kb/s AAC one audio PES per video frame
//! would write 0.8 % more than groups of ~170 ms.

use bytes::Bytes;

use super::MuxError;
use crate::media::aac::AacConfig;
use crate::media::{avc, hevc, nal, CodecParams, Frame, Ticks, TrackKind, Tracks};

pub const PACKET_SIZE: usize = 188;
pub const PAT_PID: u16 = 0x0000;
pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;
pub const STREAM_TYPE_H264: u8 = 0x1b;
pub const STREAM_TYPE_H265: u8 = 0x24;
pub const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;

/// Added to every PTS/DTS so the PCR (the DTS without it) precedes decode times by 1.4 s.
pub const TS_TIMESTAMP_OFFSET: Ticks = 126_000;
/// Largest gap between PCRs the muxer lets happen while audio keeps flowing (100 ms).
pub const PCR_MAX_GAP: Ticks = 9_000;
/// Longest run of audio grouped into one PES when audio carries the PCR (90 ms, so PCRs
/// of audio-only streams stay under 100 ms apart).
pub const AUDIO_GROUP_TICKS: Ticks = 8_100;
/// Longest run of audio grouped into one PES beside video (300 ms, nginx-rtmp's
/// `hls_max_audio_delay`); reached only by low-bitrate audio.
pub const AUDIO_GROUP_TICKS_WITH_VIDEO: Ticks = 27_000;
/// Audio PES payload at which a group is written (ffmpeg's default `pes_payload_size`).
pub const AUDIO_PES_PAYLOAD: usize = 2_930;

const TIMESTAMP_MODULUS: i64 = 1 << 33;
const STREAM_ID_VIDEO: u8 = 0xe0;
const STREAM_ID_AUDIO: u8 = 0xc0;
const H264_AUD: [u8; 2] = [0x09, 0xf0];
const H265_AUD: [u8; 3] = [0x46, 0x01, 0x50];

#[derive(Debug)]
enum VideoCodec {
    H264 {
        nal_length_size: u8,
        parameter_sets: Vec<Bytes>,
    },
    H265 {
        nal_length_size: u8,
        parameter_sets: Vec<Bytes>,
    },
}

/// Where the muxer's packets go. The muxer never does IO: a sink that writes to a file
/// keeps its own error for the caller to collect after the frame.
pub trait TsOut {
    fn put(&mut self, packet: &[u8; PACKET_SIZE]);
}

impl TsOut for Vec<u8> {
    fn put(&mut self, packet: &[u8; PACKET_SIZE]) {
        self.extend_from_slice(packet);
    }
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// A PES (header and payload) as the slices it is made of, read in order into packets.
struct Gather<'a> {
    parts: Vec<&'a [u8]>,
    part: usize,
    offset: usize,
    remaining: usize,
}

impl<'a> Gather<'a> {
    fn new(parts: Vec<&'a [u8]>) -> Gather<'a> {
        let remaining = parts.iter().map(|p| p.len()).sum();
        Gather {
            parts,
            part: 0,
            offset: 0,
            remaining,
        }
    }

    /// Fills `dst` (at most [`Self::remaining`] bytes long) with the next bytes.
    fn read_into(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let Some(part) = self.parts.get(self.part) else {
                return;
            };
            let src = part.get(self.offset..).unwrap_or_default();
            let n = src.len().min(dst.len());
            let (head, tail) = dst.split_at_mut(n);
            head.copy_from_slice(&src[..n]);
            dst = tail;
            self.offset += n;
            self.remaining -= n;
            if self.offset == part.len() {
                self.part += 1;
                self.offset = 0;
            }
        }
    }
}

/// Consecutive ADTS frames waiting to become one PES.
#[derive(Debug, Default)]
struct AudioGroup {
    data: Vec<u8>,
    first_dts: Ticks,
    next_dts: Ticks,
    frames: usize,
}

/// Writes the frames of one publish session as MPEG-TS, segment after segment.
#[derive(Debug)]
pub struct TsMuxer {
    video: Option<VideoCodec>,
    audio: Option<AacConfig>,
    pcr_pid: u16,
    last_pcr: Option<Ticks>,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
    group: AudioGroup,
}

impl TsMuxer {
    /// A muxer for `tracks`; errors if there are none or a codec cannot go in MPEG-TS.
    pub fn new(tracks: &Tracks) -> Result<TsMuxer, MuxError> {
        if tracks.is_empty() {
            return Err(MuxError::NoTracks);
        }
        let unsupported = |kind, codec: &CodecParams| MuxError::UnsupportedCodec {
            container: "mpeg-ts",
            kind,
            codec: codec.codec_name(),
        };
        let video = match &tracks.video {
            None => None,
            Some(CodecParams::H264(c)) => Some(VideoCodec::H264 {
                nal_length_size: c.nal_length_size,
                parameter_sets: c.sps.iter().chain(&c.pps).cloned().collect(),
            }),
            Some(CodecParams::H265(c)) => Some(VideoCodec::H265 {
                nal_length_size: c.nal_length_size,
                parameter_sets: c.vps.iter().chain(&c.sps).chain(&c.pps).cloned().collect(),
            }),
            Some(other) => return Err(unsupported(TrackKind::Video, other)),
        };
        let audio = match &tracks.audio {
            None => None,
            Some(CodecParams::Aac(c)) => {
                c.write_adts_header(0, &mut Vec::new())
                    .map_err(|source| MuxError::BadConfig {
                        kind: TrackKind::Audio,
                        source,
                    })?;
                Some(c.clone())
            }
            Some(other) => return Err(unsupported(TrackKind::Audio, other)),
        };
        Ok(TsMuxer {
            pcr_pid: if video.is_some() {
                VIDEO_PID
            } else {
                AUDIO_PID
            },
            video,
            audio,
            last_pcr: None,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            cc_audio: 0,
            group: AudioGroup::default(),
        })
    }

    /// Starts a segment: writes PAT + PMT.
    pub fn write_tables(&mut self, out: &mut impl TsOut) {
        let mut pat = vec![0x00, 0xb0, 0x00, 0x00, 0x01, 0xc1, 0x00, 0x00];
        pat.extend_from_slice(&[0x00, 0x01]);
        pat.extend_from_slice(&(0xe000 | PMT_PID).to_be_bytes());
        write_section(PAT_PID, &mut self.cc_pat, pat, out);

        let mut pmt = vec![0x02, 0xb0, 0x00, 0x00, 0x01, 0xc1, 0x00, 0x00];
        pmt.extend_from_slice(&(0xe000 | self.pcr_pid).to_be_bytes());
        pmt.extend_from_slice(&[0xf0, 0x00]); // program_info_length 0
        if let Some(video) = &self.video {
            let stream_type = match video {
                VideoCodec::H264 { .. } => STREAM_TYPE_H264,
                VideoCodec::H265 { .. } => STREAM_TYPE_H265,
            };
            pmt.push(stream_type);
            pmt.extend_from_slice(&(0xe000 | VIDEO_PID).to_be_bytes());
            pmt.extend_from_slice(&[0xf0, 0x00]);
        }
        if self.audio.is_some() {
            pmt.push(STREAM_TYPE_AAC_ADTS);
            pmt.extend_from_slice(&(0xe000 | AUDIO_PID).to_be_bytes());
            pmt.extend_from_slice(&[0xf0, 0x00]);
        }
        write_section(PMT_PID, &mut self.cc_pmt, pmt, out);
    }

    /// Appends `frame`. Audio may be held back to share a PES with the next frames; it is
    /// written when the group is full, before any video frame, and by [`TsMuxer::flush`].
    /// On error nothing is appended for this frame.
    pub fn write_frame(&mut self, frame: &Frame, out: &mut impl TsOut) -> Result<(), MuxError> {
        match frame.kind {
            TrackKind::Video => self.write_video(frame, out),
            TrackKind::Audio => self.write_audio(frame, out),
        }
    }

    /// Writes buffered audio; call before closing a segment.
    pub fn flush(&mut self, out: &mut impl TsOut) {
        if self.group.frames == 0 {
            return;
        }
        let group = std::mem::take(&mut self.group);
        let dts = group.first_dts;
        let pcr = (self.pcr_pid == AUDIO_PID).then(|| self.next_pcr(dts));
        if pcr.is_none() {
            self.pcr_if_stale(dts, out);
        }
        let mut header = Vec::with_capacity(19);
        pes_header(STREAM_ID_AUDIO, dts, dts, group.data.len(), &mut header);
        let mut pes = Gather::new(vec![&header, &group.data]);
        write_pes(AUDIO_PID, &mut self.cc_audio, &mut pes, pcr, true, out);
        // Keep the allocation for the next group.
        self.group.data = group.data;
        self.group.data.clear();
    }

    fn write_video(&mut self, frame: &Frame, out: &mut impl TsOut) -> Result<(), MuxError> {
        let Some(video) = &self.video else {
            return Err(MuxError::NoSuchTrack {
                kind: TrackKind::Video,
            });
        };
        let bad = |source| MuxError::BadFrame {
            kind: TrackKind::Video,
            dts: frame.dts,
            source,
        };
        let (length_size, parameter_sets, hevc) = match video {
            VideoCodec::H264 {
                nal_length_size,
                parameter_sets,
            } => (*nal_length_size, parameter_sets, false),
            VideoCodec::H265 {
                nal_length_size,
                parameter_sets,
            } => (*nal_length_size, parameter_sets, true),
        };
        let nal_kind = |first: u8| match hevc {
            false => (
                avc::nal_type(first) == avc::NAL_AUD,
                avc::nal_type(first) == avc::NAL_SPS,
            ),
            true => (
                hevc::nal_type(first) == hevc::NAL_AUD,
                hevc::nal_type(first) == hevc::NAL_SPS,
            ),
        };
        let is_aud = |first: u8| nal_kind(first).0;
        let is_sps = |first: u8| nal_kind(first).1;
        let mut carries_sps = false;
        for unit in nal::iter_length_prefixed(&frame.data, length_size) {
            let first = unit.map_err(bad)?.first().copied().unwrap_or_default();
            carries_sps |= is_sps(first);
        }
        let aud: &[u8] = match video {
            VideoCodec::H264 { .. } => &H264_AUD,
            VideoCodec::H265 { .. } => &H265_AUD,
        };
        let mut parts: Vec<&[u8]> = vec![&[], &START_CODE, aud];
        if frame.keyframe && !carries_sps {
            for ps in parameter_sets {
                parts.extend([&START_CODE[..], ps]);
            }
        }
        // Already validated above; AUDs in the frame are dropped (ours comes first).
        for unit in nal::iter_length_prefixed(&frame.data, length_size).flatten() {
            if unit.first().is_some_and(|&b| !is_aud(b)) {
                parts.extend([&START_CODE[..], unit]);
            }
        }
        let au_len = parts.iter().map(|p| p.len()).sum();
        let mut header = Vec::with_capacity(19);
        pes_header(STREAM_ID_VIDEO, frame.pts, frame.dts, au_len, &mut header);
        parts[0] = &header;

        // `next_pcr`, inline: `parts` borrows the parameter sets from `self.video`.
        let pcr = self.last_pcr.map_or(frame.dts, |last| last.max(frame.dts));
        self.last_pcr = Some(pcr);
        write_pes(
            VIDEO_PID,
            &mut self.cc_video,
            &mut Gather::new(parts),
            Some(pcr),
            frame.keyframe,
            out,
        );
        Ok(())
    }

    fn write_audio(&mut self, frame: &Frame, out: &mut impl TsOut) -> Result<(), MuxError> {
        let Some(config) = &self.audio else {
            return Err(MuxError::NoSuchTrack {
                kind: TrackKind::Audio,
            });
        };
        let frame_ticks = config.frame_ticks();
        let mut adts = Vec::with_capacity(7);
        config
            .write_adts_header(frame.data.len(), &mut adts)
            .map_err(|source| MuxError::BadFrame {
                kind: TrackKind::Audio,
                dts: frame.dts,
                source,
            })?;
        let max_ticks = match self.pcr_pid {
            AUDIO_PID => AUDIO_GROUP_TICKS,
            _ => AUDIO_GROUP_TICKS_WITH_VIDEO,
        };
        let g = &self.group;
        let contiguous = (frame.dts - g.next_dts).abs() <= frame_ticks / 2;
        let fits = frame.dts + frame_ticks - g.first_dts <= max_ticks
            && g.data.len() + adts.len() + frame.data.len() <= AUDIO_PES_PAYLOAD;
        if g.frames > 0 && !(contiguous && fits) {
            self.flush(out);
        }
        if self.group.frames == 0 {
            self.group.first_dts = frame.dts;
        }
        self.group.data.extend_from_slice(&adts);
        self.group.data.extend_from_slice(&frame.data);
        self.group.frames += 1;
        self.group.next_dts = frame.dts + frame_ticks;
        if self.group.next_dts + frame_ticks - self.group.first_dts > max_ticks
            || self.group.data.len() >= AUDIO_PES_PAYLOAD
        {
            self.flush(out);
        }
        Ok(())
    }

    /// The PCR for a PES decoded at `dts`, never going backwards.
    fn next_pcr(&mut self, dts: Ticks) -> Ticks {
        let pcr = self.last_pcr.map_or(dts, |last| last.max(dts));
        self.last_pcr = Some(pcr);
        pcr
    }

    /// Writes a PCR-only packet on the (video) PCR PID if media at `dts` is more than
    /// [`PCR_MAX_GAP`] past the last PCR.
    fn pcr_if_stale(&mut self, dts: Ticks, out: &mut impl TsOut) {
        if let Some(last) = self.last_pcr {
            if dts - last > PCR_MAX_GAP {
                let pcr = self.next_pcr(dts);
                let next_cc = match self.pcr_pid {
                    VIDEO_PID => self.cc_video,
                    _ => self.cc_audio,
                };
                // No payload: repeats the last counter instead of advancing it.
                let cc = next_cc.wrapping_add(15) & 0x0f;
                write_packet(
                    self.pcr_pid,
                    false,
                    cc,
                    Some(pcr),
                    false,
                    &mut Gather::new(Vec::new()),
                    out,
                );
            }
        }
    }
}

/// Appends a PES header with PTS (and DTS when it differs) for `payload_len` bytes.
fn pes_header(stream_id: u8, pts: Ticks, dts: Ticks, payload_len: usize, out: &mut Vec<u8>) {
    let with_dts = pts != dts;
    let header_data_len: usize = if with_dts { 10 } else { 5 };
    let packet_len = payload_len + 3 + header_data_len;
    let length_field = u16::try_from(packet_len).unwrap_or(0); // 0: unbounded (video only)
    out.extend_from_slice(&[0, 0, 1, stream_id]);
    out.extend_from_slice(&length_field.to_be_bytes());
    out.push(0x84); // marker bits, data_alignment_indicator
    out.push(if with_dts { 0xc0 } else { 0x80 });
    out.push(header_data_len as u8);
    write_timestamp(if with_dts { 0x3 } else { 0x2 }, pts, out);
    if with_dts {
        write_timestamp(0x1, dts, out);
    }
}

/// Reads a 33-bit PTS/DTS from its 5-byte PES header field (marker bits ignored).
pub fn read_timestamp(b: &[u8]) -> Option<i64> {
    let &[b0, b1, b2, b3, b4] = b else {
        return None;
    };
    Some(
        (i64::from(b0 & 0x0e) << 29)
            | (i64::from(b1) << 22)
            | (i64::from(b2 & 0xfe) << 14)
            | (i64::from(b3) << 7)
            | (i64::from(b4) >> 1),
    )
}

/// `a - b` for two 33-bit timestamps, taking the short way around the wrap.
pub fn timestamp_delta(a: i64, b: i64) -> i64 {
    let d = (a - b).rem_euclid(TIMESTAMP_MODULUS);
    if d >= TIMESTAMP_MODULUS / 2 {
        d - TIMESTAMP_MODULUS
    } else {
        d
    }
}

/// The 33-bit timestamp field written for media time `t`.
pub fn ts_timestamp(t: Ticks) -> u64 {
    (t + TS_TIMESTAMP_OFFSET).rem_euclid(TIMESTAMP_MODULUS) as u64
}

fn write_timestamp(prefix: u8, t: Ticks, out: &mut Vec<u8>) {
    let v = ts_timestamp(t);
    out.extend_from_slice(&[
        (prefix << 4) | (((v >> 29) as u8) & 0x0e) | 1,
        (v >> 22) as u8,
        (((v >> 14) as u8) & 0xfe) | 1,
        (v >> 7) as u8,
        (((v << 1) as u8) & 0xfe) | 1,
    ]);
}

/// Splits one PES into packets; the first carries PUSI, the PCR and the random access
/// flag, the last is padded with adaptation-field stuffing.
fn write_pes(
    pid: u16,
    cc: &mut u8,
    pes: &mut Gather,
    pcr: Option<Ticks>,
    random_access: bool,
    out: &mut impl TsOut,
) {
    let mut first = true;
    while first || pes.remaining > 0 {
        let (pcr, rai) = if first {
            (pcr, random_access)
        } else {
            (None, false)
        };
        write_packet(pid, first, *cc, pcr, rai, pes, out);
        *cc = (*cc + 1) & 0x0f;
        first = false;
    }
}

/// Writes one packet carrying as much of `payload` as fits (none: adaptation field
/// only), consuming it from `payload`.
fn write_packet(
    pid: u16,
    pusi: bool,
    cc: u8,
    pcr: Option<Ticks>,
    random_access: bool,
    payload: &mut Gather,
    out: &mut impl TsOut,
) {
    let mut packet = [0xff; PACKET_SIZE];
    // Adaptation field bytes after its length byte: flags (+ PCR).
    let fields = match (pcr.is_some(), random_access) {
        (true, _) => 7,
        (false, true) => 1,
        (false, false) => 0,
    };
    let af_min = if fields > 0 { 1 + fields } else { 0 };
    let take = payload.remaining.min(PACKET_SIZE - 4 - af_min);
    let stuffing = PACKET_SIZE - 4 - af_min - take;
    let has_af = af_min > 0 || stuffing > 0;
    let afc = match (has_af, take > 0) {
        (true, true) => 0x30,
        (true, false) => 0x20,
        _ => 0x10,
    };
    packet[..4].copy_from_slice(&[
        0x47,
        (u8::from(pusi) << 6) | ((pid >> 8) as u8 & 0x1f),
        pid as u8,
        afc | (cc & 0x0f),
    ]);
    if has_af {
        let af_len = af_min + stuffing - 1; // bytes after the length byte
        packet[4] = af_len as u8;
        if af_len > 0 {
            let mut flags = 0u8;
            if random_access {
                flags |= 0x40;
            }
            if pcr.is_some() {
                flags |= 0x10;
            }
            packet[5] = flags;
            if let Some(pcr) = pcr {
                let base = pcr.rem_euclid(TIMESTAMP_MODULUS) as u64;
                packet[6..12].copy_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    (((base & 1) as u8) << 7) | 0x7e, // reserved, extension 0
                    0x00,
                ]);
            }
            // The rest of the adaptation field is stuffing, already 0xff.
        }
    }
    payload.read_into(&mut packet[PACKET_SIZE - take..]);
    out.put(&packet);
}

/// Writes a PSI section (table header already in `section` with a zero length) in one
/// packet: fills in section_length, appends the CRC, pads with 0xff.
fn write_section(pid: u16, cc: &mut u8, mut section: Vec<u8>, out: &mut impl TsOut) {
    let section_length = (section.len() - 3 + 4) as u16; // after the length field, + CRC
    if let Some(b) = section.get_mut(1) {
        *b = 0xb0 | ((section_length >> 8) as u8 & 0x0f);
    }
    if let Some(b) = section.get_mut(2) {
        *b = section_length as u8;
    }
    let crc = crc32_mpeg2(&section);
    section.extend_from_slice(&crc.to_be_bytes());
    let mut packet = [0xff; PACKET_SIZE];
    packet[..5].copy_from_slice(&[
        0x47,
        0x40 | ((pid >> 8) as u8 & 0x1f),
        pid as u8,
        0x10 | (*cc & 0x0f),
        0, // pointer_field
    ]);
    *cc = (*cc + 1) & 0x0f;
    packet[5..5 + section.len()].copy_from_slice(&section);
    out.put(&packet);
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, no reflection, initial 0xFFFFFFFF).
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
#[path = "ts_tests.rs"]
pub(crate) mod tests;
