//! AAC over RTP as RFC 6416 `MP4A-LATM`, with the StreamMuxConfig out of band
//! (`cpresent=0`, `config=` in the SDP's fmtp, section 6.1), as ffmpeg (`-rtpflags latm`)
//! and some cameras send it.
//!
//! Owns: reading the StreamMuxConfig (ISO/IEC 14496-3 section 1.7.3: `audioMuxVersion`
//! 0, one program, one layer, `frameLengthType` 0, so each subframe is
//! `PayloadLengthInfo` (bytes of 255 summed, then the last byte) and that many bytes of
//! one raw access unit), and turning payloads into raw AAC [`Frame`]s: subframe `i` of an
//! audioMuxElement is stamped `timestamp + i * 1024` samples. An element spread over
//! several packets of one timestamp is reassembled by length, not by the marker bit
//! (ffmpeg sets it on every fragment). In-band configs (`cpresent=1`), other mux versions
//! and multi-program streams are refused with the reason. Pure; never panics on a peer's
//! bytes.

use bytes::{Bytes, BytesMut};

use super::aac::{hex, AacUnits};
use super::rtp::{MediaEvent, RtpError};
use super::sdp::MediaDesc;
use crate::media::aac::AacConfig;
use crate::media::bits::BitReader;
use crate::media::{self, CodecParams, Ticks};

/// Samples per AAC access unit.
const SAMPLES_PER_AU: i64 = 1024;
/// Largest audioMuxElement reassembled (64 subframes of a large AU would not fit; real
/// streams send one or a few).
const MAX_ELEMENT: usize = 64 * 1024;

#[derive(Debug)]
pub struct LatmDepacketizer {
    units: AacUnits,
    /// Subframes per audioMuxElement (`numSubFrames + 1`).
    subframes: usize,
    /// An element arriving in pieces: its timestamp and the bytes so far.
    pending: Option<(Ticks, BytesMut)>,
}

/// What parsing the buffered bytes found.
enum Parsed {
    /// Every element complete: their access units, in order.
    Complete(Vec<Bytes>),
    /// The last element needs more bytes.
    Incomplete,
}

impl LatmDepacketizer {
    pub fn new(media: &MediaDesc) -> Result<LatmDepacketizer, String> {
        if media.fmtp("cpresent").is_some_and(|c| c.trim() != "0") {
            return Err("cpresent=1 (StreamMuxConfig in band) is not supported".into());
        }
        let config = media
            .fmtp("config")
            .ok_or("no config (StreamMuxConfig) in the SDP")?;
        let smc = hex(config).ok_or_else(|| format!("config {config:?} is not hex"))?;
        let (config, subframes) = stream_mux_config(&smc)?;
        Ok(LatmDepacketizer {
            units: AacUnits::new(config, "aac-latm"),
            subframes,
            pending: None,
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
        // Bytes of an element begun in earlier packets of this timestamp.
        let mut buf = match self.pending.take() {
            Some((at, buf)) if at == pts && !lost => buf,
            Some(_) => {
                self.units.dropped += self.subframes as u64;
                BytesMut::new()
            }
            None => BytesMut::new(),
        };
        buf.extend_from_slice(&payload);
        if buf.len() > MAX_ELEMENT {
            self.units.dropped += self.subframes as u64;
            return Err(self
                .units
                .err(format!("audioMuxElement over {MAX_ELEMENT} bytes")));
        }
        let buf = buf.freeze();
        match self.split(&buf) {
            Ok(Parsed::Incomplete) => {
                // Nothing borrows it: back to a buffer without a copy.
                let buf = buf
                    .try_into_mut()
                    .unwrap_or_else(|b| BytesMut::from(&b[..]));
                self.pending = Some((pts, buf));
                Ok(())
            }
            Ok(Parsed::Complete(units)) => {
                for (i, au) in units.into_iter().enumerate() {
                    let at = pts
                        + media::rescale(
                            SAMPLES_PER_AU * i as i64,
                            clock_rate,
                            media::TICKS_PER_SECOND,
                        );
                    self.units.emit(at, au, out);
                }
                Ok(())
            }
            Err(detail) => {
                self.units.dropped += self.subframes as u64;
                Err(self.units.err(detail))
            }
        }
    }

    /// Splits `buf` into the access units of the audioMuxElements it holds.
    fn split(&self, buf: &Bytes) -> Result<Parsed, String> {
        let mut units = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            for _ in 0..self.subframes {
                let mut len = 0usize;
                loop {
                    let Some(&b) = buf.get(at) else {
                        return Ok(Parsed::Incomplete);
                    };
                    at += 1;
                    len += usize::from(b);
                    if b != 255 {
                        break;
                    }
                }
                if len == 0 {
                    return Err("an access unit of 0 bytes".into());
                }
                if buf.len() < at + len {
                    return Ok(Parsed::Incomplete);
                }
                units.push(buf.slice(at..at + len));
                at += len;
            }
        }
        Ok(Parsed::Complete(units))
    }
}

/// Reads a StreamMuxConfig: the AudioSpecificConfig of its one program and layer, and
/// how many subframes each audioMuxElement carries.
fn stream_mux_config(smc: &[u8]) -> Result<(AacConfig, usize), String> {
    let mut r = BitReader::new(smc, "latm StreamMuxConfig");
    let mut bits = |n: u32| r.read_bits(n).map_err(|e| e.to_string());
    if bits(1)? != 0 {
        return Err("audioMuxVersion 1 is not supported".into());
    }
    let _all_streams_same_time_framing = bits(1)?;
    let subframes = bits(6)? as usize + 1;
    if bits(4)? != 0 || bits(3)? != 0 {
        return Err("more than one program or layer is not supported".into());
    }
    // The AudioSpecificConfig follows unaligned: copy the rest out byte-aligned (the
    // fields after it are not needed; AacConfig::parse ignores what follows its own).
    let mut asc = Vec::with_capacity(smc.len());
    while r.bits_left() >= 8 {
        asc.push(r.read_bits(8).map_err(|e| e.to_string())? as u8);
    }
    let left = r.bits_left() as u32;
    if left > 0 {
        let tail = r.read_bits(left).map_err(|e| e.to_string())? as u8;
        asc.push(tail << (8 - left));
    }
    let config = AacConfig::parse(&asc).map_err(|e| e.to_string())?;
    Ok((config, subframes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(fmtp: &str) -> MediaDesc {
        let text = format!(
            "m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MP4A-LATM/44100/2\r\na=fmtp:96 {fmtp}\r\n"
        );
        crate::proto::rtsp::sdp::parse(text.as_bytes())
            .unwrap()
            .media
            .remove(0)
    }

    /// ffmpeg's SDP for 44.1 kHz stereo AAC-LC (`-rtpflags latm`).
    const FFMPEG: &str = "profile-level-id=1;cpresent=0;config=400024203fc0";

    fn frames(out: &[MediaEvent]) -> Vec<(Ticks, Vec<u8>)> {
        out.iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some((f.pts, f.data.to_vec())),
                MediaEvent::Config(_) => None,
            })
            .collect()
    }

    fn element(au: &[u8]) -> Vec<u8> {
        let mut e = vec![255; au.len() / 255];
        e.push((au.len() % 255) as u8);
        e.extend_from_slice(au);
        e
    }

    #[test]
    fn ffmpegs_stream_mux_config_gives_its_audio_specific_config() {
        let d = LatmDepacketizer::new(&media(FFMPEG)).unwrap();
        let CodecParams::Aac(c) = d.config() else {
            panic!()
        };
        assert_eq!((c.sample_rate_index, c.channels), (4, 2), "{c:?}");
        assert_eq!(d.subframes, 1);
    }

    #[test]
    fn elements_whole_split_and_several_per_packet() {
        let mut d = LatmDepacketizer::new(&media(FFMPEG)).unwrap();
        let mut out = Vec::new();
        let big: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        d.push(0, 44100, Bytes::from(element(&[1, 2, 3])), false, &mut out)
            .unwrap();
        // A 600-byte unit over two packets of one timestamp (length 255 + 255 + 90).
        let e = element(&big);
        d.push(
            2048,
            44100,
            Bytes::copy_from_slice(&e[..100]),
            false,
            &mut out,
        )
        .unwrap();
        d.push(
            2048,
            44100,
            Bytes::copy_from_slice(&e[100..]),
            false,
            &mut out,
        )
        .unwrap();
        // Two elements in one packet: the second is 1024 samples later.
        let mut two = element(&[7]);
        two.extend(element(&[8, 8]));
        d.push(4096, 44100, Bytes::from(two), false, &mut out)
            .unwrap();
        let tick = |samples: i64| media::rescale(samples, 44100, media::TICKS_PER_SECOND);
        assert_eq!(
            frames(&out),
            vec![
                (0, vec![1, 2, 3]),
                (2048, big),
                (4096, vec![7]),
                (4096 + tick(1024), vec![8, 8]),
            ]
        );
        assert!(matches!(out[0], MediaEvent::Config(_)));
        assert_eq!(d.dropped(), 0);
    }

    #[test]
    fn a_lost_fragment_drops_its_unit_only() {
        let mut d = LatmDepacketizer::new(&media(FFMPEG)).unwrap();
        let mut out = Vec::new();
        let e = element(&[5; 400]);
        d.push(0, 44100, Bytes::copy_from_slice(&e[..50]), false, &mut out)
            .unwrap();
        d.push(1024, 44100, Bytes::from(element(&[6])), true, &mut out)
            .unwrap();
        assert_eq!(frames(&out), vec![(1024, vec![6])]);
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn bad_payloads_and_sdps_are_errors() {
        let mut d = LatmDepacketizer::new(&media(FFMPEG)).unwrap();
        let mut out = Vec::new();
        assert!(d
            .push(0, 44100, Bytes::from_static(&[0, 1]), false, &mut out)
            .is_err());
        assert!(d
            .push(
                0,
                44100,
                Bytes::from(vec![255; MAX_ELEMENT + 1]),
                false,
                &mut out
            )
            .is_err());
        for bad in [
            "cpresent=1",
            "cpresent=0",
            "cpresent=0;config=zz",
            "cpresent=0;config=c00024203fc0", // audioMuxVersion 1
            "cpresent=0;config=400f24203fc0", // two programs
            "cpresent=0;config=4000",         // no AudioSpecificConfig
        ] {
            assert!(LatmDepacketizer::new(&media(bad)).is_err(), "{bad}");
        }
    }
}
