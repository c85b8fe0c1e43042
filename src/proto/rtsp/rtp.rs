//! RTP (RFC 3550) for the RTSP publish path: the fixed header (section 5.1: version 2,
//! padding, extension, CSRCs), the 32-bit timestamp extended across its wrap, the media
//! clock rescaled to our 90 kHz [`Ticks`], sequence-gap detection, and [`RtpTrack`], which
//! turns one announced media section's packets into [`MediaEvent`]s through a codec
//! depacketizer ([`super::h26x`], [`super::aac`]).
//!
//! The depacketizers are written here rather than taken from retina: retina 0.4.21's
//! `Depacketizer::push` is `pub(crate)`, so its depacketizers cannot be fed packets that
//! arrive on a connection retina does not own (an ANNOUNCE/RECORD publisher).
//!
//! Timeline: a track whose RTCP sender report (RFC 3550 section 6.4.1) came before its
//! first RTP packet is placed by the report's wall clock, mapped to the connection's
//! ticks by the first report of the connection ([`WallClock`]), so tracks stay aligned
//! however the publisher interleaves them; otherwise its first packet is placed at its
//! arrival time (ticks since the connection started, from the caller). Later packets
//! follow their RTP timestamps. Every sender report is also handed back as (ticks, NTP)
//! so the recorder can date segments by the publisher's clock. Never does IO; never
//! panics on a peer's bytes.

use bytes::Bytes;
use thiserror::Error;

use super::aac::AacDepacketizer;
use super::h26x::H26xDepacketizer;
use super::latm::LatmDepacketizer;
use super::sdp::MediaDesc;
use crate::media::reorder::DtsSynth;
use crate::media::{self, avc, hevc, CodecParams, Frame, MediaError, Ticks, TrackKind};

/// A bad RTP packet or payload; the packet (and the access unit it belonged to) is
/// dropped and counted, the connection stays up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("rtp packet of {len} bytes is shorter than its header")]
    Truncated { len: usize },
    #[error("rtp version {0} (only 2 is RTP)")]
    Version(u8),
    #[error("rtp padding of {padding} bytes in a {len}-byte packet")]
    Padding { padding: usize, len: usize },
    #[error("payload type {got}, but the SDP announced {want}")]
    PayloadType { got: u8, want: u8 },
    #[error("{codec} payload: {detail}")]
    Payload { codec: &'static str, detail: String },
    #[error("{codec}: access unit of more than {limit} bytes")]
    TooLarge { codec: &'static str, limit: usize },
    #[error(transparent)]
    Codec(#[from] MediaError),
}

/// Largest access unit reassembled from RTP (a 4K keyframe fits).
pub const MAX_ACCESS_UNIT: usize = 16 << 20;

/// What a track's packets produce, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// New or changed codec parameters; comes before the first frame that uses them.
    Config(CodecParams),
    Frame(Frame),
}

/// The fixed RTP header and the payload (padding removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Bytes,
}

impl RtpPacket {
    /// Parses one RTP packet (RFC 3550 section 5.1, header extension per 5.3.1).
    pub fn parse(packet: Bytes) -> Result<RtpPacket, RtpError> {
        let len = packet.len();
        let truncated = RtpError::Truncated { len };
        let Some(&[b0, b1, s0, s1, t0, t1, t2, t3, c0, c1, c2, c3]) = packet.get(..12) else {
            return Err(truncated);
        };
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let csrc = usize::from(b0 & 0x0f);
        let mut start = 12 + 4 * csrc;
        if b0 & 0x10 != 0 {
            let Some(&[_, _, l0, l1]) = packet.get(start..start + 4) else {
                return Err(truncated);
            };
            start += 4 + 4 * usize::from(u16::from_be_bytes([l0, l1]));
        }
        let mut end = len;
        if b0 & 0x20 != 0 {
            let padding = usize::from(packet[len - 1]);
            if padding == 0 || padding > len.saturating_sub(start) {
                return Err(RtpError::Padding { padding, len });
            }
            end -= padding;
        }
        if start > end {
            return Err(truncated);
        }
        Ok(RtpPacket {
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7f,
            sequence: u16::from_be_bytes([s0, s1]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            ssrc: u32::from_be_bytes([c0, c1, c2, c3]),
            payload: packet.slice(start..end),
        })
    }
}

/// Extends 32-bit RTP timestamps to `i64` across the wrap (and back across it, for a
/// reordered packet from just before a wrap).
#[derive(Debug, Clone, Default)]
pub struct TimestampExtender {
    last: Option<i64>,
}

impl TimestampExtender {
    pub fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ts),
            Some(last) => last + i64::from(ts.wrapping_sub(last as u32) as i32),
        };
        if self.last.is_none_or(|last| ext > last) {
            self.last = Some(ext);
        }
        ext
    }

    /// Where `ts` falls on the extended timeline, without moving it (for a sender
    /// report's timestamp); `None` before the first packet.
    pub fn nearest(&self, ts: u32) -> Option<i64> {
        let last = self.last?;
        Some(last + i64::from(ts.wrapping_sub(last as u32) as i32))
    }
}

/// Maps sender-report wall clocks (64-bit NTP) to connection ticks; the first report of
/// the connection fixes the mapping.
#[derive(Debug, Clone, Default)]
pub struct WallClock {
    origin: Option<(u64, Ticks)>,
}

impl WallClock {
    fn ticks(&mut self, ntp: u64, arrival: Ticks) -> Ticks {
        let (origin, at) = *self.origin.get_or_insert((ntp, arrival));
        let delta = i128::from(ntp) - i128::from(origin);
        at + ((delta * i128::from(media::TICKS_PER_SECOND)) >> 32) as i64
    }
}

/// (NTP timestamp, RTP timestamp) of an RTCP sender report: the first packet of a
/// compound RTCP packet (RFC 3550 section 6.4.1). `None` for anything else.
pub fn sender_report(packet: &[u8]) -> Option<(u64, u32)> {
    let header = packet.get(..20)?;
    if header[0] >> 6 != 2 || header[1] != 200 {
        return None;
    }
    let ntp = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let rtp = u32::from_be_bytes(header[16..20].try_into().ok()?);
    Some((ntp, rtp))
}

/// The codec-specific half of a track.
#[derive(Debug)]
enum Depacketizer {
    Video(Box<H26xDepacketizer>),
    Aac(AacDepacketizer),
    Latm(LatmDepacketizer),
}

/// Counters of one track, for logs and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackStats {
    pub packets: u64,
    /// Sequence-number gaps seen.
    pub gaps: u64,
    /// Access units dropped (loss inside them, malformed payloads, no parameter sets).
    pub dropped: u64,
}

/// One announced, recordable media section: RTP packets in, [`MediaEvent`]s out.
#[derive(Debug)]
pub struct RtpTrack {
    kind: TrackKind,
    codec: &'static str,
    payload_type: u8,
    clock_rate: u32,
    ext: TimestampExtender,
    /// First extended timestamp and the ticks it was placed at.
    origin: Option<(i64, Ticks)>,
    next_seq: Option<u16>,
    /// The first sender report's RTP timestamp and where its wall clock falls, if it came
    /// before the first RTP packet.
    report: Option<(u32, Ticks)>,
    depack: Depacketizer,
    /// Video: decode times from presentation times (RTP carries only the latter).
    dts: Option<DtsSynth>,
    scratch: Vec<MediaEvent>,
    stats: TrackStats,
}

impl RtpTrack {
    /// The track for `media`, or why it cannot be recorded (`"pcma: not storable in
    /// MPEG-TS"`), for the API and the log.
    pub fn for_media(media: &MediaDesc) -> Result<RtpTrack, String> {
        let name = if media.encoding.is_empty() {
            format!("payload type {}", media.payload_type)
        } else {
            media.encoding.clone()
        };
        let (kind, codec, depack) = match (media.kind.as_str(), media.encoding.as_str()) {
            ("video", "h264") => (
                TrackKind::Video,
                "h264",
                Depacketizer::Video(Box::new(
                    H26xDepacketizer::h264(media).map_err(|e| format!("h264: {e}"))?,
                )),
            ),
            ("video", "h265") => (
                TrackKind::Video,
                "h265",
                Depacketizer::Video(Box::new(
                    H26xDepacketizer::h265(media).map_err(|e| format!("h265: {e}"))?,
                )),
            ),
            ("audio", "mpeg4-generic") => (
                TrackKind::Audio,
                "aac",
                Depacketizer::Aac(AacDepacketizer::new(media).map_err(|e| format!("aac: {e}"))?),
            ),
            ("audio", "mp4a-latm") => (
                TrackKind::Audio,
                "aac",
                Depacketizer::Latm(
                    LatmDepacketizer::new(media).map_err(|e| format!("aac (latm): {e}"))?,
                ),
            ),
            ("audio", _) => return Err(format!("{name}: not storable in MPEG-TS")),
            ("video", _) => return Err(format!("{name}: video codec not supported")),
            (other, _) => return Err(format!("{other} media is not recorded")),
        };
        if media.clock_rate == 0 {
            return Err(format!("{name}: no clock rate in the SDP"));
        }
        Ok(RtpTrack {
            kind,
            codec,
            payload_type: media.payload_type,
            clock_rate: media.clock_rate,
            ext: TimestampExtender::default(),
            origin: None,
            next_seq: None,
            report: None,
            dts: (kind == TrackKind::Video).then(|| DtsSynth::new(0)),
            depack,
            scratch: Vec::new(),
            stats: TrackStats::default(),
        })
    }

    pub fn kind(&self) -> TrackKind {
        self.kind
    }

    pub fn codec(&self) -> &'static str {
        self.codec
    }

    pub fn stats(&self) -> TrackStats {
        self.stats
    }

    /// Feeds one RTCP packet of this track that arrived at `arrival`: a sender report
    /// before the first RTP packet anchors the track on `clock`.
    ///
    /// Returns, for a sender report, the ticks its RTP timestamp falls at and its NTP wall
    /// clock: what the recorder dates segments by.
    pub fn push_rtcp(
        &mut self,
        packet: &[u8],
        arrival: Ticks,
        clock: &mut WallClock,
    ) -> Option<(Ticks, u64)> {
        let (ntp, rtp) = sender_report(packet)?;
        let rate = i64::from(self.clock_rate);
        let at = match (self.origin, self.report) {
            (Some((first, base)), _) => {
                let ext = self.ext.nearest(rtp)?;
                base + media::rescale(ext - first, rate, media::TICKS_PER_SECOND)
            }
            (None, Some((first_rtp, at))) => {
                let since = i64::from(rtp.wrapping_sub(first_rtp) as i32);
                at + media::rescale(since, rate, media::TICKS_PER_SECOND)
            }
            (None, None) => {
                let at = clock.ticks(ntp, arrival);
                self.report = Some((rtp, at));
                at
            }
        };
        Some((at, ntp))
    }

    /// Feeds one RTP packet that arrived at `arrival` (ticks since the connection
    /// started); appends what it completes to `out`. An error drops the packet's access
    /// unit and is counted; the track keeps going.
    pub fn push(
        &mut self,
        packet: Bytes,
        arrival: Ticks,
        out: &mut Vec<MediaEvent>,
    ) -> Result<(), RtpError> {
        let pkt = RtpPacket::parse(packet)?;
        if pkt.payload_type != self.payload_type {
            return Err(RtpError::PayloadType {
                got: pkt.payload_type,
                want: self.payload_type,
            });
        }
        self.stats.packets += 1;
        let lost = match self.next_seq {
            Some(want) if want != pkt.sequence => {
                // Older than expected (reordered or duplicated): drop it.
                if pkt.sequence.wrapping_sub(want) > 0x8000 {
                    return Ok(());
                }
                self.stats.gaps += 1;
                tracing::debug!(
                    codec = self.codec,
                    expected = want,
                    got = pkt.sequence,
                    "rtp sequence gap"
                );
                true
            }
            _ => false,
        };
        self.next_seq = Some(pkt.sequence.wrapping_add(1));
        let ext = self.ext.extend(pkt.timestamp);
        let rate = i64::from(self.clock_rate);
        let (first, base) = match self.origin {
            Some(o) => o,
            None => {
                let placed = match self.report {
                    Some((rtp, at)) => {
                        let since_report = i64::from(pkt.timestamp.wrapping_sub(rtp) as i32);
                        at + media::rescale(since_report, rate, media::TICKS_PER_SECOND)
                    }
                    None => arrival,
                };
                tracing::debug!(
                    codec = self.codec,
                    placed,
                    arrival,
                    by_sender_report = self.report.is_some(),
                    "rtp track anchored"
                );
                *self.origin.insert((ext, placed))
            }
        };
        let pts = base + media::rescale(ext - first, rate, media::TICKS_PER_SECOND);
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = match &mut self.depack {
            Depacketizer::Video(d) => d.push(pts, pkt.marker, pkt.payload, lost, &mut scratch),
            Depacketizer::Aac(d) => d.push(pts, rate, pkt.payload, lost, &mut scratch),
            Depacketizer::Latm(d) => d.push(pts, rate, pkt.payload, lost, &mut scratch),
        };
        self.stats.dropped = match &self.depack {
            Depacketizer::Video(d) => d.dropped(),
            Depacketizer::Aac(d) => d.dropped(),
            Depacketizer::Latm(d) => d.dropped(),
        };
        self.decode_times(&mut scratch, out);
        self.scratch = scratch;
        result
    }

    /// Moves `events` to `out`, video frames through the decode-time synthesiser: a new
    /// config first releases the frames held under the old one, then sets the reorder
    /// depth its SPS declares.
    fn decode_times(&mut self, events: &mut Vec<MediaEvent>, out: &mut Vec<MediaEvent>) {
        let Some(synth) = self.dts.as_mut() else {
            out.append(events);
            return;
        };
        for event in events.drain(..) {
            match event {
                MediaEvent::Config(params) => {
                    out.extend(synth.flush().into_iter().map(MediaEvent::Frame));
                    let depth = match &params {
                        CodecParams::H264(c) => c.sps.first().map(|s| avc::reorder_depth(s)),
                        CodecParams::H265(c) => c.sps.first().map(|s| hevc::reorder_depth(s)),
                        CodecParams::Aac(_) => None,
                    };
                    match depth {
                        Some(Ok(depth)) => synth.set_depth(depth),
                        Some(Err(e)) => {
                            tracing::debug!(codec = self.codec, error = %e, "no reorder depth in the SPS; assuming 2");
                            synth.set_depth(2);
                        }
                        None => {}
                    }
                    out.push(MediaEvent::Config(params));
                }
                MediaEvent::Frame(frame) => {
                    synth.push(frame);
                    while let Some(f) = synth.pop() {
                        out.push(MediaEvent::Frame(f));
                    }
                }
            }
        }
    }

    /// Whatever is complete or held at the end of the stream (an access unit whose
    /// marker bit never came, frames held for decode times).
    pub fn finish(&mut self, out: &mut Vec<MediaEvent>) {
        let mut events = Vec::new();
        if let Depacketizer::Video(d) = &mut self.depack {
            d.finish(&mut events);
        }
        self.decode_times(&mut events, out);
        if let Some(synth) = self.dts.as_mut() {
            out.extend(synth.flush().into_iter().map(MediaEvent::Frame));
        }
    }

    /// The codec parameters known before any packet (from the SDP), if complete.
    pub fn initial_config(&self) -> Option<CodecParams> {
        match &self.depack {
            Depacketizer::Video(d) => d.initial_config(),
            Depacketizer::Aac(d) => Some(d.config()),
            Depacketizer::Latm(d) => Some(d.config()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An RTP packet with `payload`.
    pub(crate) fn packet(pt: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Bytes {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        Bytes::from(p)
    }

    #[test]
    fn header_with_csrc_extension_and_padding() {
        let mut p = vec![0xb1, 0xe0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 1];
        p.extend_from_slice(&[0, 0, 0, 2]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, one word
        p.extend_from_slice(&[0xaa, 0xbb]); // payload
        p.extend_from_slice(&[0, 0, 3]); // padding 3
        let pkt = RtpPacket::parse(Bytes::from(p)).unwrap();
        assert!(pkt.marker);
        assert_eq!((pkt.payload_type, pkt.sequence, pkt.timestamp), (96, 7, 9));
        assert_eq!(&pkt.payload[..], &[0xaa, 0xbb]);
    }

    #[test]
    fn bad_headers_are_errors() {
        assert!(matches!(
            RtpPacket::parse(Bytes::from_static(&[0x80, 0x60, 0])),
            Err(RtpError::Truncated { .. })
        ));
        let mut v1 = packet(96, 1, 1, false, b"x").to_vec();
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(Bytes::from(v1)), Err(RtpError::Version(1)));
        let mut pad = packet(96, 1, 1, false, &[1, 2, 200]).to_vec();
        pad[0] |= 0x20;
        assert!(matches!(
            RtpPacket::parse(Bytes::from(pad)),
            Err(RtpError::Padding { padding: 200, .. })
        ));
        let mut ext = packet(96, 1, 1, false, &[0, 0, 0xff, 0xff]).to_vec();
        ext[0] |= 0x10;
        assert!(RtpPacket::parse(Bytes::from(ext)).is_err());
    }

    #[test]
    fn sender_reports_align_tracks_that_arrive_apart() {
        let media = |text: &str| {
            super::super::sdp::parse(text.as_bytes())
                .unwrap()
                .media
                .remove(0)
        };
        let aac = "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n\
            a=fmtp:97 mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190\r\n";
        let mut a = RtpTrack::for_media(&media(aac)).unwrap();
        let mut b = RtpTrack::for_media(&media(aac)).unwrap();
        let mut clock = WallClock::default();
        let sr = |ntp_s: u64, rtp: u32| {
            let mut p = vec![0x80, 200, 0, 6, 0, 0, 0, 1];
            p.extend_from_slice(&(ntp_s << 32).to_be_bytes());
            p.extend_from_slice(&rtp.to_be_bytes());
            p.extend_from_slice(&[0; 8]);
            p
        };
        // Track a: report "RTP 1000 is wall second 100", received at tick 0.
        a.push_rtcp(&sr(100, 1000), 0, &mut clock);
        // Track b: report "RTP 5000 is wall second 101", received late (tick 9000).
        b.push_rtcp(&sr(101, 5000), 9000, &mut clock);
        let au = [0u8, 16, 0, 8, 0xaa];
        let mut out = Vec::new();
        // Both first packets arrive long after their reports: the reports place them.
        a.push(packet(97, 1, 1000 + 48000, false, &au), 500_000, &mut out)
            .unwrap();
        b.push(packet(97, 9, 5000, false, &au), 600_000, &mut out)
            .unwrap();
        let pts: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some(f.pts),
                _ => None,
            })
            .collect();
        assert_eq!(pts, vec![90_000, 90_000]);
        assert_eq!(sender_report(&[0x80, 201, 0, 1]), None);
        // A later report of track a (9 s after its first packet): handed back at the ticks
        // its RTP timestamp falls at, with its wall clock.
        let later = sr(110, 1000 + 48000 * 10);
        assert_eq!(
            a.push_rtcp(&later, 900_000, &mut clock),
            Some((90_000 + 9 * 90_000, 110u64 << 32))
        );
        assert_eq!(a.push_rtcp(&[0x80, 201, 0, 1], 900_000, &mut clock), None);
    }

    fn media(text: &str) -> MediaDesc {
        super::super::sdp::parse(text.as_bytes())
            .unwrap()
            .media
            .remove(0)
    }

    #[test]
    fn tracks_ts_cannot_carry_are_refused_with_a_reason() {
        let reason = |text: &str| RtpTrack::for_media(&media(text)).unwrap_err();
        assert_eq!(
            reason("m=audio 0 RTP/AVP 8\r\n"),
            "pcma: not storable in MPEG-TS"
        );
        assert_eq!(
            reason("m=audio 0 RTP/AVP 0\r\n"),
            "pcmu: not storable in MPEG-TS"
        );
        assert_eq!(
            reason("m=audio 0 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"),
            "opus: not storable in MPEG-TS"
        );
        assert!(reason("m=video 0 RTP/AVP 26\r\n").contains("jpeg"));
        assert!(reason("m=application 0 RTP/AVP 107\r\n").contains("application"));
        // AAC without its AudioSpecificConfig cannot be muxed either.
        assert!(
            reason("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n")
                .starts_with("aac: ")
        );
    }

    #[test]
    fn a_sequence_gap_inside_a_fragmented_unit_drops_that_unit() {
        let mut t = RtpTrack::for_media(&media(
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAMg8WLZY=,aOvjyyLA\r\n",
        ))
        .unwrap();
        let mut out = Vec::new();
        // FU-A start (seq 10), seq 11 lost, FU-A end (seq 12), then a whole frame.
        t.push(packet(96, 10, 1000, false, &[0x7c, 0x85, 1]), 0, &mut out)
            .unwrap();
        t.push(packet(96, 12, 1000, true, &[0x7c, 0x45, 3]), 0, &mut out)
            .unwrap();
        t.push(packet(96, 13, 4600, true, &[0x65, 4]), 0, &mut out)
            .unwrap();
        t.finish(&mut out);
        let frames: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some(f.pts),
                _ => None,
            })
            .collect();
        assert_eq!(frames, vec![3600]);
        assert_eq!((t.stats().gaps, t.stats().dropped), (1, 1));
        // A wrong payload type is an error, not a frame.
        assert!(t
            .push(packet(97, 14, 8200, true, &[0x65]), 0, &mut out)
            .is_err());
    }

    #[test]
    fn timestamps_extend_across_the_wrap() {
        let mut e = TimestampExtender::default();
        assert_eq!(e.extend(u32::MAX - 10), i64::from(u32::MAX - 10));
        assert_eq!(e.extend(5), (1i64 << 32) + 5);
        // A reordered packet from before the wrap stays before it.
        assert_eq!(e.extend(u32::MAX - 1), i64::from(u32::MAX - 1));
        assert_eq!(e.extend(3000), (1i64 << 32) + 3000);
        // A second wrap, in steps under half the range.
        assert_eq!(e.extend(0x8000_0000), (1i64 << 32) + 0x8000_0000);
        assert_eq!(e.extend(u32::MAX), (1i64 << 32) + i64::from(u32::MAX));
        assert_eq!(e.extend(100), (2i64 << 32) + 100);
    }
}
