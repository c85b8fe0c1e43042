//! AAC over RTP, RFC 3640 `mpeg4-generic` in the AAC-hbr (and AAC-lbr) modes: the
//! AU-headers section (section 3.2.1: `sizelength`/`indexlength`/`indexdeltalength` bits
//! per header), several access units per packet, and one access unit fragmented over
//! several packets (section 3.2.3). The AudioSpecificConfig comes from the SDP's `config`.
//!
//! Owns: turning payloads into raw AAC [`Frame`]s; access unit `i` of a packet is stamped
//! `timestamp + i * 1024` samples. LATM (RFC 6416) is `latm.rs`.
//! Pure; never panics on a peer's bytes.

use bytes::{Bytes, BytesMut};

use super::rtp::{MediaEvent, RtpError};
use super::sdp::MediaDesc;
use crate::media::aac::AacConfig;
use crate::media::bits::BitReader;
use crate::media::{self, CodecParams, Frame, Ticks, TrackKind};

/// Samples per AAC access unit (AAC-LC; HE-AAC's core frame is also 1024).
const SAMPLES_PER_AU: i64 = 1024;
/// Largest AAC access unit accepted (6144 bits per channel, 8 channels, with room).
const MAX_AU: usize = 64 * 1024;

/// What both AAC payload formats produce: the config before the first frame, then raw
/// access units, and a count of those lost.
#[derive(Debug)]
pub(super) struct AacUnits {
    /// For errors: `aac` or `aac-latm`.
    codec: &'static str,
    config: AacConfig,
    config_sent: bool,
    pub(super) dropped: u64,
}

impl AacUnits {
    pub(super) fn new(config: AacConfig, codec: &'static str) -> AacUnits {
        AacUnits {
            codec,
            config,
            config_sent: false,
            dropped: 0,
        }
    }

    pub(super) fn config(&self) -> CodecParams {
        CodecParams::Aac(self.config.clone())
    }

    pub(super) fn err(&self, detail: impl Into<String>) -> RtpError {
        RtpError::Payload {
            codec: self.codec,
            detail: detail.into(),
        }
    }

    /// Appends access unit `au` presented at `pts` (the config first, once).
    pub(super) fn emit(&mut self, pts: Ticks, au: Bytes, out: &mut Vec<MediaEvent>) {
        if !self.config_sent {
            out.push(MediaEvent::Config(self.config()));
            self.config_sent = true;
        }
        out.push(MediaEvent::Frame(Frame {
            kind: TrackKind::Audio,
            dts: pts,
            pts,
            keyframe: true,
            data: au,
        }));
    }
}

#[derive(Debug)]
pub struct AacDepacketizer {
    units: AacUnits,
    size_length: u32,
    index_length: u32,
    index_delta_length: u32,
    /// A fragmented access unit: its size, its pts and the bytes so far.
    fragment: Option<(usize, Ticks, BytesMut)>,
}

impl AacDepacketizer {
    pub fn new(media: &MediaDesc) -> Result<AacDepacketizer, String> {
        if let Some(mode) = media.fmtp("mode") {
            if !mode.eq_ignore_ascii_case("aac-hbr") && !mode.eq_ignore_ascii_case("aac-lbr") {
                return Err(format!("mode {mode} is not AAC-hbr or AAC-lbr"));
            }
        }
        let config = media
            .fmtp("config")
            .ok_or("no config (AudioSpecificConfig) in the SDP")?;
        let asc = hex(config).ok_or_else(|| format!("config {config:?} is not hex"))?;
        let config = AacConfig::parse(&asc).map_err(|e| e.to_string())?;
        let num = |key: &str, default: u32| -> Result<u32, String> {
            match media.fmtp(key) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 32)
                    .ok_or_else(|| format!("{key}={v} is not 0-32")),
            }
        };
        let size_length = num("sizelength", 0)?;
        if size_length == 0 {
            return Err("sizelength missing or 0 (constant-size AUs are not supported)".into());
        }
        Ok(AacDepacketizer {
            units: AacUnits::new(config, "aac"),
            size_length,
            index_length: num("indexlength", 0)?,
            index_delta_length: num("indexdeltalength", 0)?,
            fragment: None,
        })
    }

    pub fn config(&self) -> CodecParams {
        self.units.config()
    }

    /// Access units dropped so far.
    pub fn dropped(&self) -> u64 {
        self.units.dropped
    }

    /// Feeds one packet's payload, stamped `pts` (its RTP timestamp in ticks) on a clock
    /// of `clock_rate` Hz.
    pub fn push(
        &mut self,
        pts: Ticks,
        clock_rate: i64,
        payload: Bytes,
        lost: bool,
        out: &mut Vec<MediaEvent>,
    ) -> Result<(), RtpError> {
        if lost && self.fragment.take().is_some() {
            self.units.dropped += 1;
        }
        let Some(&[h0, h1]) = payload.get(..2) else {
            return Err(self.units.err("no AU-headers-length"));
        };
        let header_bits = usize::from(u16::from_be_bytes([h0, h1]));
        let header_bytes = header_bits.div_ceil(8);
        let Some(headers) = payload.get(2..2 + header_bytes) else {
            return Err(self
                .units
                .err(format!("AU-headers of {header_bits} bits truncated")));
        };
        let mut r = BitReader::new(headers, "aac au-header");
        let mut sizes = Vec::new();
        let mut first = true;
        while r.bit_position() < header_bits {
            let size = r
                .read_bits(self.size_length)
                .map_err(|e| self.units.err(e.to_string()))?;
            let index_bits = if first {
                self.index_length
            } else {
                self.index_delta_length
            };
            r.read_bits(index_bits)
                .map_err(|e| self.units.err(e.to_string()))?;
            first = false;
            sizes.push(size as usize);
            if sizes.len() > 64 {
                return Err(self.units.err("more than 64 AU-headers in one packet"));
            }
        }
        let mut data = payload.slice(2 + header_bytes..);
        // A fragment continues: one header, its size the whole AU's.
        if let Some((size, frag_pts, mut buf)) = self.fragment.take() {
            if sizes.len() != 1 || sizes[0] != size || frag_pts != pts {
                self.units.dropped += 1;
                return Err(self
                    .units
                    .err("access unit fragment does not continue the previous one"));
            }
            buf.extend_from_slice(&data);
            if buf.len() < size {
                self.fragment = Some((size, pts, buf));
            } else {
                buf.truncate(size);
                self.units.emit(pts, buf.freeze(), out);
            }
            return Ok(());
        }
        for (i, &size) in sizes.iter().enumerate() {
            if size > MAX_AU {
                return Err(self.units.err(format!("access unit of {size} bytes")));
            }
            let au_pts = pts
                + media::rescale(
                    SAMPLES_PER_AU * i as i64,
                    clock_rate,
                    media::TICKS_PER_SECOND,
                );
            if data.len() < size {
                if sizes.len() == 1 {
                    let mut buf = BytesMut::with_capacity(size);
                    buf.extend_from_slice(&data);
                    self.fragment = Some((size, pts, buf));
                    return Ok(());
                }
                self.units.dropped += (sizes.len() - i) as u64;
                return Err(self.units.err(format!(
                    "access unit {i} of {size} bytes, {} left in the packet",
                    data.len()
                )));
            }
            self.units.emit(au_pts, data.slice(..size), out);
            data = data.slice(size..);
        }
        Ok(())
    }
}

/// Decodes an SDP fmtp hex string (`config=`).
pub(super) fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtsp::sdp;

    fn media(fmtp: &str) -> MediaDesc {
        let text = format!(
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 {fmtp}\r\n"
        );
        sdp::parse(text.as_bytes()).unwrap().media.remove(0)
    }

    const HBR: &str = "profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=1190";

    /// An AAC-hbr payload carrying `aus`.
    fn payload(aus: &[&[u8]], sizes: Option<&[usize]>) -> Bytes {
        let n = aus.len();
        let mut p = vec![0, (16 * n) as u8];
        for (i, au) in aus.iter().enumerate() {
            let size = sizes.map_or(au.len(), |s| s[i]);
            p.extend_from_slice(&((size as u16) << 3).to_be_bytes());
        }
        for au in aus {
            p.extend_from_slice(au);
        }
        Bytes::from(p)
    }

    fn frames(out: &[MediaEvent]) -> Vec<(Ticks, Vec<u8>)> {
        out.iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some((f.pts, f.data.to_vec())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn several_access_units_per_packet_get_their_own_times() {
        let mut d = AacDepacketizer::new(&media(HBR)).unwrap();
        let mut out = Vec::new();
        d.push(
            9000,
            48000,
            payload(&[&[1, 2, 3], &[4], &[5, 6]], None),
            false,
            &mut out,
        )
        .unwrap();
        let Some(MediaEvent::Config(CodecParams::Aac(c))) = out.first() else {
            panic!("config first")
        };
        assert_eq!((c.sample_rate, c.channels), (48000, 2));
        // 1024 samples at 48 kHz = 1920 ticks.
        assert_eq!(
            frames(&out),
            vec![(9000, vec![1, 2, 3]), (10920, vec![4]), (12840, vec![5, 6])]
        );
    }

    #[test]
    fn a_fragmented_access_unit_is_reassembled_and_loss_drops_it() {
        let mut d = AacDepacketizer::new(&media(HBR)).unwrap();
        let mut out = Vec::new();
        d.push(0, 48000, payload(&[&[1, 2]], Some(&[4])), false, &mut out)
            .unwrap();
        assert!(frames(&out).is_empty());
        d.push(0, 48000, payload(&[&[3, 4]], Some(&[4])), false, &mut out)
            .unwrap();
        assert_eq!(frames(&out), vec![(0, vec![1, 2, 3, 4])]);
        out.clear();
        d.push(
            1920,
            48000,
            payload(&[&[1, 2]], Some(&[4])),
            false,
            &mut out,
        )
        .unwrap();
        // The second half is lost; the next packet is a new AU.
        d.push(5760, 48000, payload(&[&[9]], None), true, &mut out)
            .unwrap();
        assert_eq!(frames(&out), vec![(5760, vec![9])]);
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn bad_payloads_and_sdps_are_errors() {
        let mut d = AacDepacketizer::new(&media(HBR)).unwrap();
        let mut out = Vec::new();
        for bad in [&[][..], &[0][..], &[0, 16, 0][..], &[0, 32, 0, 8][..]] {
            assert!(
                d.push(0, 48000, Bytes::copy_from_slice(bad), false, &mut out)
                    .is_err(),
                "{bad:?}"
            );
        }
        // Two AUs announced, only the first present.
        assert!(d
            .push(
                0,
                48000,
                payload(&[&[1], &[2]], Some(&[1, 5])),
                false,
                &mut out
            )
            .is_err());
        assert!(AacDepacketizer::new(&media("mode=AAC-hbr;sizelength=13")).is_err());
        assert!(AacDepacketizer::new(&media("mode=CELP-cbr;sizelength=13;config=1190")).is_err());
        assert!(AacDepacketizer::new(&media("mode=AAC-hbr;sizelength=13;config=zz")).is_err());
        assert!(AacDepacketizer::new(&media("mode=AAC-hbr;config=1190")).is_err());
    }
}
