//! H.264 (RFC 6184) and H.265 (RFC 7798) RTP depacketizing: single NAL unit packets,
//! aggregation packets (STAP-A / AP) and fragmentation units (FU-A / FU), reassembled into
//! access units (an access unit ends at the marker bit or at a timestamp change), written
//! as length-prefixed ("AVCC", 4-byte lengths) [`Frame`]s.
//!
//! Parameter sets come from the SDP (`sprop-parameter-sets`; `sprop-vps`/`sprop-sps`/
//! `sprop-pps`) or in-band; they are stripped from the frames and turned into
//! [`CodecParams`], and a change mid-stream emits a new config before the frame that uses
//! it. Interleaved modes (STAP-B, MTAP, FU-B, DONL) are refused at the packet. A sequence
//! gap drops the access unit it may have hit. Pure; never panics on a peer's bytes.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use super::rtp::{MediaEvent, RtpError, MAX_ACCESS_UNIT};
use super::sdp::MediaDesc;
use crate::media::avc::{self, AvcConfig};
use crate::media::hevc::{self, HevcConfig};
use crate::media::{CodecParams, Frame, Ticks, TrackKind};

/// The parameter-set slots: VPS (H.265 only), SPS, PPS.
type ParamSets = [Vec<Bytes>; 3];

/// Most parameter sets of one kind kept (H.264 allows 32 SPS, 256 PPS; cameras send one).
const MAX_SETS: usize = 16;

#[derive(Debug)]
pub struct H26xDepacketizer {
    hevc: bool,
    /// The parameter sets the current config was built from.
    sets: ParamSets,
    config: Option<CodecParams>,
    /// The config has been emitted (the SDP's is emitted before the first frame).
    config_sent: bool,
    /// Presentation time of the access unit being collected.
    au_pts: Option<Ticks>,
    /// NAL units of that access unit (no parameter sets).
    nals: Vec<Bytes>,
    /// Parameter sets seen in that access unit.
    au_sets: ParamSets,
    au_bytes: usize,
    keyframe: bool,
    /// Loss hit this access unit: drop it.
    broken: bool,
    /// A fragmented NAL unit being reassembled.
    fragment: Option<BytesMut>,
    dropped: u64,
}

impl H26xDepacketizer {
    pub fn h264(media: &MediaDesc) -> Result<H26xDepacketizer, String> {
        if let Some(mode) = media.fmtp("packetization-mode") {
            if mode.trim() == "2" {
                return Err("interleaved packetization-mode 2 is not supported".into());
            }
        }
        let mut d = H26xDepacketizer::empty(false);
        if let Some(sprop) = media.fmtp("sprop-parameter-sets") {
            for nal in decode_sprop(sprop)? {
                d.note_param_set(nal);
            }
            d.sets = std::mem::take(&mut d.au_sets);
            d.rebuild();
        }
        Ok(d)
    }

    pub fn h265(media: &MediaDesc) -> Result<H26xDepacketizer, String> {
        if media
            .fmtp("sprop-max-don-diff")
            .is_some_and(|v| v.trim() != "0")
        {
            return Err("decoding order numbers (sprop-max-don-diff) are not supported".into());
        }
        let mut d = H26xDepacketizer::empty(true);
        for key in ["sprop-vps", "sprop-sps", "sprop-pps"] {
            if let Some(sprop) = media.fmtp(key) {
                for nal in decode_sprop(sprop)? {
                    d.note_param_set(nal);
                }
            }
        }
        d.sets = std::mem::take(&mut d.au_sets);
        d.rebuild();
        Ok(d)
    }

    fn empty(hevc: bool) -> H26xDepacketizer {
        H26xDepacketizer {
            hevc,
            sets: Default::default(),
            config: None,
            config_sent: false,
            au_pts: None,
            nals: Vec::new(),
            au_sets: Default::default(),
            au_bytes: 0,
            keyframe: false,
            broken: false,
            fragment: None,
            dropped: 0,
        }
    }

    fn codec(&self) -> &'static str {
        if self.hevc {
            "h265"
        } else {
            "h264"
        }
    }

    /// Access units dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The config built from the SDP's parameter sets, if they were complete.
    pub fn initial_config(&self) -> Option<CodecParams> {
        self.config.clone()
    }

    /// Rebuilds the config from `self.sets`; keeps the old one if the sets are
    /// incomplete or do not parse.
    fn rebuild(&mut self) -> bool {
        let [vps, sps, pps] = &self.sets;
        let built = if self.hevc {
            HevcConfig::from_parameter_sets(vps, sps, pps).map(|c| c.map(CodecParams::H265))
        } else {
            AvcConfig::from_parameter_sets(sps, pps).map(|c| c.map(CodecParams::H264))
        };
        match built {
            Ok(Some(c)) if self.config.as_ref() != Some(&c) => {
                self.config = Some(c);
                self.config_sent = false;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(codec = self.codec(), error = %e, "parameter sets do not parse");
                false
            }
        }
    }

    fn err(&self, detail: impl Into<String>) -> RtpError {
        RtpError::Payload {
            codec: self.codec(),
            detail: detail.into(),
        }
    }

    /// Feeds one packet's payload; `lost`: packets are missing before this one.
    pub fn push(
        &mut self,
        pts: Ticks,
        marker: bool,
        payload: Bytes,
        lost: bool,
        out: &mut Vec<MediaEvent>,
    ) -> Result<(), RtpError> {
        if self.au_pts.is_some_and(|t| t != pts) {
            self.finish(out);
        }
        if lost {
            // The missing packets belonged to the access unit in progress or to this
            // packet's: neither can be trusted.
            self.fragment = None;
            self.broken = true;
        }
        self.au_pts = Some(pts);
        let result = self.payload(payload);
        if result.is_err() {
            self.fragment = None;
            self.broken = true;
        }
        if marker {
            self.finish(out);
        }
        result
    }

    fn payload(&mut self, payload: Bytes) -> Result<(), RtpError> {
        let hdr_len = if self.hevc { 2 } else { 1 };
        if payload.len() < hdr_len {
            return Err(self.err("empty payload"));
        }
        let ty = if self.hevc {
            (payload[0] >> 1) & 0x3f
        } else {
            payload[0] & 0x1f
        };
        match (self.hevc, ty) {
            (false, 1..=23) | (true, 0..=47) => {
                self.fragment = None;
                self.add_nal(payload)
            }
            (false, 24) | (true, 48) => {
                // STAP-A / AP: [header][u16 size][NAL]...
                self.fragment = None;
                let mut rest = payload.slice(hdr_len..);
                while !rest.is_empty() {
                    let Some(&[a, b]) = rest.get(..2) else {
                        return Err(self.err("aggregation packet truncated in a size field"));
                    };
                    let size = usize::from(u16::from_be_bytes([a, b]));
                    if size < hdr_len || rest.len() < 2 + size {
                        return Err(self.err(format!(
                            "aggregation unit of {size} bytes in {} left",
                            rest.len() - 2
                        )));
                    }
                    self.add_nal(rest.slice(2..2 + size))?;
                    rest = rest.slice(2 + size..);
                }
                Ok(())
            }
            (false, 28) | (true, 49) => self.fragmentation_unit(payload),
            (false, t) => Err(self.err(format!(
                "NAL unit type {t} (STAP-B/MTAP/FU-B) not supported"
            ))),
            (true, t) => Err(self.err(format!("NAL unit type {t} (PACI) not supported"))),
        }
    }

    fn fragmentation_unit(&mut self, payload: Bytes) -> Result<(), RtpError> {
        let hdr_len = if self.hevc { 2 } else { 1 };
        let Some(&fu) = payload.get(hdr_len) else {
            return Err(self.err("fragmentation unit without its header"));
        };
        let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
        let data = payload.slice(hdr_len + 1..);
        if start {
            if self.fragment.is_some() {
                self.fragment = None;
                return Err(self.err("fragmentation unit start before the previous one ended"));
            }
            let mut nal = BytesMut::with_capacity(data.len() * 4 + 2);
            if self.hevc {
                nal.extend_from_slice(&[(payload[0] & 0x81) | ((fu & 0x3f) << 1), payload[1]]);
            } else {
                nal.extend_from_slice(&[(payload[0] & 0xe0) | (fu & 0x1f)]);
            }
            nal.extend_from_slice(&data);
            self.fragment = Some(nal);
        } else {
            let Some(nal) = self.fragment.as_mut() else {
                if self.broken {
                    return Ok(()); // the rest of a fragment whose start was lost
                }
                return Err(self.err("fragmentation unit continues a fragment never started"));
            };
            if nal.len() + data.len() > MAX_ACCESS_UNIT {
                self.fragment = None;
                return Err(RtpError::TooLarge {
                    codec: self.codec(),
                    limit: MAX_ACCESS_UNIT,
                });
            }
            nal.extend_from_slice(&data);
        }
        if end {
            if let Some(nal) = self.fragment.take() {
                self.add_nal(nal.freeze())?;
            }
        }
        Ok(())
    }

    /// Files one complete NAL unit into the access unit in progress.
    fn add_nal(&mut self, nal: Bytes) -> Result<(), RtpError> {
        if nal.is_empty() {
            return Ok(());
        }
        if self.note_param_set(nal.clone()) {
            return Ok(());
        }
        let ty = self.nal_type(nal[0]);
        if self.hevc {
            if ty == hevc::NAL_AUD {
                return Ok(());
            }
            self.keyframe |= hevc::is_irap(ty);
        } else {
            if ty == avc::NAL_AUD {
                return Ok(());
            }
            self.keyframe |= ty == avc::NAL_IDR;
        }
        if self.au_bytes + nal.len() + 4 > MAX_ACCESS_UNIT {
            return Err(RtpError::TooLarge {
                codec: self.codec(),
                limit: MAX_ACCESS_UNIT,
            });
        }
        self.au_bytes += nal.len() + 4;
        self.nals.push(nal);
        Ok(())
    }

    fn nal_type(&self, first: u8) -> u8 {
        if self.hevc {
            hevc::nal_type(first)
        } else {
            avc::nal_type(first)
        }
    }

    /// Files `nal` with the access unit's parameter sets if it is one.
    fn note_param_set(&mut self, nal: Bytes) -> bool {
        let Some(&first) = nal.first() else {
            return false;
        };
        let ty = self.nal_type(first);
        let slot = match (self.hevc, ty) {
            (true, hevc::NAL_VPS) => 0,
            (true, hevc::NAL_SPS) | (false, avc::NAL_SPS) => 1,
            (true, hevc::NAL_PPS) | (false, avc::NAL_PPS) => 2,
            _ => return false,
        };
        let list = &mut self.au_sets[slot];
        if !list.contains(&nal) && list.len() < MAX_SETS {
            list.push(nal);
        }
        true
    }

    /// Ends the access unit in progress: emits a config change and the frame.
    pub fn finish(&mut self, out: &mut Vec<MediaEvent>) {
        let Some(pts) = self.au_pts.take() else {
            return;
        };
        let nals = std::mem::take(&mut self.nals);
        let au_sets = std::mem::take(&mut self.au_sets);
        let keyframe = std::mem::take(&mut self.keyframe);
        self.au_bytes = 0;
        if std::mem::take(&mut self.broken) {
            self.dropped += 1;
            tracing::debug!(
                codec = self.codec(),
                pts,
                "access unit dropped after packet loss"
            );
            return;
        }
        let mut changed = false;
        for (have, new) in self.sets.iter_mut().zip(au_sets) {
            if !new.is_empty() && *have != new {
                *have = new;
                changed = true;
            }
        }
        if changed {
            self.rebuild();
        }
        if nals.is_empty() {
            return;
        }
        let Some(config) = &self.config else {
            self.dropped += 1;
            tracing::debug!(
                codec = self.codec(),
                "access unit dropped: no parameter sets yet"
            );
            return;
        };
        if !self.config_sent {
            out.push(MediaEvent::Config(config.clone()));
            self.config_sent = true;
        }
        let mut data = BytesMut::with_capacity(nals.iter().map(|n| n.len() + 4).sum());
        for nal in &nals {
            // add_nal capped the access unit far below 4 GiB.
            data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            data.extend_from_slice(nal);
        }
        out.push(MediaEvent::Frame(Frame {
            kind: TrackKind::Video,
            dts: pts,
            pts,
            keyframe,
            data: data.freeze(),
        }));
    }
}

/// The NAL units of a comma-separated base64 `sprop-*` value.
fn decode_sprop(sprop: &str) -> Result<Vec<Bytes>, String> {
    sprop
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|e| format!("sprop parameter set {s:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::avc::tests::hex;
    use crate::proto::rtsp::sdp;

    const SPS: &str = "6764001eacd940a02ff97011000003000100000300320f162d96";
    const PPS: &str = "68ebe3cb22c0";

    fn h264_media(sprop: bool) -> MediaDesc {
        let mut text = String::from("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
        if sprop {
            text.push_str(
                "a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAMg8WLZY=,aOvjyyLA\r\n",
            );
        }
        sdp::parse(text.as_bytes()).unwrap().media.remove(0)
    }

    fn frames(out: &[MediaEvent]) -> Vec<&Frame> {
        out.iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn fu_a_reassembles_an_idr_with_the_sdp_config() {
        let mut d = H26xDepacketizer::h264(&h264_media(true)).unwrap();
        let idr: Vec<u8> = [0x65].into_iter().chain(0..200u8).collect();
        let mut out = Vec::new();
        // FU indicator: NRI of the NAL (0x60) | 28; FU header S/E | type 5.
        let mut p1 = vec![0x7c, 0x85];
        p1.extend_from_slice(&idr[1..101]);
        let mut p2 = vec![0x7c, 0x45];
        p2.extend_from_slice(&idr[101..]);
        d.push(900, false, Bytes::from(p1), false, &mut out)
            .unwrap();
        assert!(out.is_empty());
        d.push(900, true, Bytes::from(p2), false, &mut out).unwrap();
        let Some(MediaEvent::Config(CodecParams::H264(c))) = out.first() else {
            panic!("config first: {out:?}")
        };
        assert_eq!(c.sps, vec![Bytes::from(hex(SPS))]);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert!(f[0].keyframe);
        assert_eq!((f[0].pts, f[0].dts), (900, 900));
        let mut want_nal = idr.clone();
        want_nal[0] = 0x65; // NRI 3 << 5 | 5
        assert_eq!(&f[0].data[..], &avcc(&[&want_nal])[..]);
    }

    #[test]
    fn stap_a_in_band_parameter_sets_become_the_config_and_leave_the_frame() {
        let mut d = H26xDepacketizer::h264(&h264_media(false)).unwrap();
        assert!(d.initial_config().is_none());
        let (sps, pps) = (hex(SPS), hex(PPS));
        let idr = [0x65u8, 1, 2, 3];
        let mut stap = vec![0x78];
        for n in [&sps[..], &pps[..], &idr[..]] {
            stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        let mut out = Vec::new();
        // A P-frame before any parameter set is dropped.
        d.push(0, true, Bytes::from_static(&[0x41, 9]), false, &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(d.dropped(), 1);
        d.push(3000, true, Bytes::from(stap), false, &mut out)
            .unwrap();
        assert!(matches!(out[0], MediaEvent::Config(CodecParams::H264(_))));
        let f = frames(&out);
        assert_eq!(&f[0].data[..], &avcc(&[&idr])[..]);
        // The same sets again: no new config. A new SPS: a config before the frame.
        out.clear();
        let mut stap2 = vec![0x78];
        for n in [&sps[..], &pps[..], &idr[..]] {
            stap2.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap2.extend_from_slice(n);
        }
        d.push(6000, true, Bytes::from(stap2), false, &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        let baseline = hex("6742c00dd90150878888c044000003000400000300c83c50a920");
        d.push(9000, false, Bytes::from(baseline), false, &mut out)
            .unwrap();
        d.push(9000, true, Bytes::from(idr.to_vec()), false, &mut out)
            .unwrap();
        let Some(MediaEvent::Config(CodecParams::H264(c))) = out.first() else {
            panic!("a changed SPS makes a new config: {out:?}")
        };
        assert_eq!(c.resolution, Some((322, 242)));
        assert_eq!(frames(&out).len(), 1);
    }

    #[test]
    fn access_unit_ends_at_timestamp_change_without_marker() {
        let mut d = H26xDepacketizer::h264(&h264_media(true)).unwrap();
        let mut out = Vec::new();
        d.push(0, false, Bytes::from_static(&[0x65, 1]), false, &mut out)
            .unwrap();
        d.push(0, false, Bytes::from_static(&[0x65, 2]), false, &mut out)
            .unwrap();
        assert!(out.is_empty());
        d.push(3600, false, Bytes::from_static(&[0x41, 3]), false, &mut out)
            .unwrap();
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(&f[0].data[..], &avcc(&[&[0x65, 1], &[0x65, 2]])[..]);
        d.finish(&mut out);
        let f = frames(&out);
        assert_eq!((f.len(), f[1].pts, f[1].keyframe), (2, 3600, false));
    }

    #[test]
    fn loss_mid_fu_drops_that_access_unit_only() {
        let mut d = H26xDepacketizer::h264(&h264_media(true)).unwrap();
        let mut out = Vec::new();
        d.push(
            0,
            false,
            Bytes::from_static(&[0x7c, 0x85, 1, 2]),
            false,
            &mut out,
        )
        .unwrap();
        // The middle fragment was lost; the end arrives with a gap flagged.
        d.push(
            0,
            true,
            Bytes::from_static(&[0x7c, 0x45, 5, 6]),
            true,
            &mut out,
        )
        .unwrap();
        assert!(frames(&out).is_empty());
        assert_eq!(d.dropped(), 1);
        // The next access unit is whole again.
        d.push(3600, true, Bytes::from_static(&[0x41, 7]), false, &mut out)
            .unwrap();
        assert_eq!(frames(&out).len(), 1);
        assert_eq!(frames(&out)[0].pts, 3600);
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut d = H26xDepacketizer::h264(&h264_media(true)).unwrap();
        let mut out = Vec::new();
        for bad in [
            &[][..],
            &[0x78, 0, 9, 1][..], // STAP-A unit longer than the packet
            &[0x78, 0][..],       // truncated size
            &[0x7c][..],          // FU-A without its header
            &[0x7c, 0x05, 1][..], // FU-A continuation without a start
            &[0x79, 0, 1, 2][..], // STAP-B
        ] {
            assert!(
                d.push(0, true, Bytes::copy_from_slice(bad), false, &mut out)
                    .is_err(),
                "{bad:?}"
            );
        }
        assert!(frames(&out).is_empty());
        let mut h265 = H26xDepacketizer::empty(true);
        for len in 0..8 {
            let p: Vec<u8> = [0x62u8, 1, 0x93, 0, 0, 0, 0, 0][..len].to_vec();
            let _ = h265.push(0, true, Bytes::from(p), false, &mut out);
        }
        assert!(H26xDepacketizer::h264(&sdp::parse(b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 sprop-parameter-sets=!!!\r\n").unwrap().media[0]).is_err());
    }

    #[test]
    fn h265_aggregation_and_fragmentation() {
        // x265 640x360 parameter sets.
        let vps = hex("40010c01ffff016000000300900000030000030078959809");
        let sps = hex(
            "42010101600000030090000003000003003fa00502016965959a4932bc05a02000000300200000030321",
        );
        let pps = hex("4401c172b46240");
        let mut d = H26xDepacketizer::empty(true);
        let mut ap = vec![0x60, 0x01]; // type 48
        for n in [&vps[..], &sps[..], &pps[..]] {
            ap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ap.extend_from_slice(n);
        }
        let mut out = Vec::new();
        d.push(0, false, Bytes::from(ap), false, &mut out).unwrap();
        // An IDR_W_RADL (19) slice in two FUs: payload header type 49, FU header S|19, E|19.
        d.push(
            0,
            false,
            Bytes::from_static(&[0x62, 0x01, 0x93, 0xaa, 0xbb]),
            false,
            &mut out,
        )
        .unwrap();
        d.push(
            0,
            true,
            Bytes::from_static(&[0x62, 0x01, 0x53, 0xcc]),
            false,
            &mut out,
        )
        .unwrap();
        let Some(MediaEvent::Config(CodecParams::H265(c))) = out.first() else {
            panic!("h265 config: {out:?}")
        };
        assert_eq!(c.resolution, Some((640, 360)));
        let f = frames(&out);
        assert!(f[0].keyframe);
        assert_eq!(
            &f[0].data[..],
            &avcc(&[&[0x26, 0x01, 0xaa, 0xbb, 0xcc]])[..]
        );
    }
}
