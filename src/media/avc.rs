//! H.264 codec configuration: the AVCDecoderConfigurationRecord (ISO/IEC 14496-15
//! section 5.3.3.1) and the picture size from a sequence parameter set (ITU-T H.264
//! section 7.3.2.1.1, frame cropping per section 7.4.2.1.1).
//!
//! Owns: [`AvcConfig`] and SPS parsing up to the cropping window. Never parses slice data
//! and never panics on malformed input: errors carry the byte offset in the record (or in
//! the SPS RBSP, i.e. after emulation prevention removal).

use bytes::Bytes;

use super::bits::{remove_emulation_prevention, BitReader};
use super::MediaError;

const RECORD: &str = "avc decoder configuration record";
const SPS: &str = "h264 sps";
const BUILT_RECORD: &str = "rebuilt avc decoder configuration record";

/// H.264 NAL unit types the muxers care about.
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// A parsed AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// The AVCDecoderConfigurationRecord exactly as received (what MP4/FLV muxers need).
    pub record: Bytes,
    /// NAL units without start codes.
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// 1, 2 or 4 (3 is rejected).
    pub nal_length_size: u8,
    pub profile_idc: u8,
    pub level_idc: u8,
    /// From the first SPS, cropping applied; `None` if it could not be parsed.
    pub resolution: Option<(u32, u32)>,
}

impl AvcConfig {
    /// Parses an AVCDecoderConfigurationRecord. Requires at least one SPS; trailing
    /// bytes (the high-profile extension) are kept in `record` but not interpreted.
    pub fn parse(record: &[u8]) -> Result<AvcConfig, MediaError> {
        super::check_config_size(RECORD, record)?;
        let mut r = ByteCursor::new(record, RECORD);
        let version = r.u8()?;
        if version != 1 {
            return Err(r.invalid_at(0, format!("configurationVersion {version}")));
        }
        let profile_idc = r.u8()?;
        let _compatibility = r.u8()?;
        let level_idc = r.u8()?;
        let nal_length_size = (r.u8()? & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(r.invalid_at(4, "NAL length size 3"));
        }
        let num_sps = r.u8()? & 0x1f;
        if num_sps == 0 {
            return Err(r.invalid_at(5, "no SPS"));
        }
        let sps = (0..num_sps)
            .map(|_| r.nal())
            .collect::<Result<Vec<_>, _>>()?;
        let num_pps = r.u8()?;
        let pps = (0..num_pps)
            .map(|_| r.nal())
            .collect::<Result<Vec<_>, _>>()?;
        let resolution = sps.first().and_then(|s| parse_sps_resolution(s).ok());
        Ok(AvcConfig {
            record: Bytes::copy_from_slice(record),
            sps,
            pps,
            nal_length_size,
            profile_idc,
            level_idc,
            resolution,
        })
    }

    /// Builds (and parses) the AVCDecoderConfigurationRecord for parameter sets received
    /// out of band or in-band (MPEG-TS, RTP): NAL units without start codes, 4-byte NAL
    /// lengths. `Ok(None)` while either kind is missing.
    pub fn from_parameter_sets(
        sps: &[Bytes],
        pps: &[Bytes],
    ) -> Result<Option<AvcConfig>, MediaError> {
        let (Some(first), false) = (sps.first(), pps.is_empty()) else {
            return Ok(None);
        };
        let invalid = |detail: String| MediaError::Invalid {
            what: BUILT_RECORD,
            offset: 0,
            detail,
        };
        let Some(&[_, profile, compatibility, level]) = first.get(..4) else {
            return Err(invalid(format!("SPS of {} bytes", first.len())));
        };
        let (Ok(num_sps), Ok(num_pps)) = (u8::try_from(sps.len()), u8::try_from(pps.len())) else {
            return Err(invalid("too many parameter sets".into()));
        };
        if num_sps > 31 {
            return Err(invalid(format!("{num_sps} SPS (31 max)")));
        }
        let mut rec = vec![1, profile, compatibility, level, 0xff, 0xe0 | num_sps];
        for s in sps {
            rec.extend_from_slice(&u16_len(s.len(), BUILT_RECORD)?);
            rec.extend_from_slice(s);
        }
        rec.push(num_pps);
        for p in pps {
            rec.extend_from_slice(&u16_len(p.len(), BUILT_RECORD)?);
            rec.extend_from_slice(p);
        }
        if matches!(profile, 100 | 110 | 122 | 144) {
            if let Ok((chroma, luma, chroma_depth)) = chroma_and_depth(first) {
                rec.extend_from_slice(&[0xfc | chroma, 0xf8 | luma, 0xf8 | chroma_depth, 0]);
            }
        }
        AvcConfig::parse(&rec).map(Some)
    }
}

/// A parameter set's length as the 16-bit field of a decoder configuration record.
pub(crate) fn u16_len(len: usize, what: &'static str) -> Result<[u8; 2], MediaError> {
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| MediaError::Invalid {
            what,
            offset: 0,
            detail: format!("parameter set of {len} bytes does not fit a 16-bit length"),
        })
}

/// chroma_format_idc, bit_depth_luma_minus8, bit_depth_chroma_minus8 of a high-profile
/// SPS (ITU-T H.264 section 7.3.2.1.1).
fn chroma_and_depth(sps: &[u8]) -> Result<(u8, u8, u8), MediaError> {
    let rbsp = remove_emulation_prevention(sps);
    let mut r = BitReader::new(&rbsp, SPS);
    r.skip(32)?; // header, profile_idc, constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let chroma = r.ue()?;
    if chroma == 3 {
        r.skip(1)?; // separate_colour_plane_flag
    }
    chroma_and_depths(&mut r, chroma)
}

/// `bit_depth_luma_minus8` and `bit_depth_chroma_minus8` (read next from `r`, the same
/// Exp-Golomb pair in H.264 and H.265 SPSs) with `chroma_format_idc`, range-checked.
pub(crate) fn chroma_and_depths(
    r: &mut BitReader,
    chroma: u32,
) -> Result<(u8, u8, u8), MediaError> {
    let (luma, chroma_depth) = (r.ue()?, r.ue()?);
    match (
        u8::try_from(chroma),
        u8::try_from(luma),
        u8::try_from(chroma_depth),
    ) {
        (Ok(c @ 0..=3), Ok(l @ 0..=7), Ok(d @ 0..=7)) => Ok((c, l, d)),
        _ => Err(r.invalid("chroma format or bit depth out of range")),
    }
}

/// Returns true for an IDR slice (NAL unit type 5).
pub fn is_idr(nal_header_byte: u8) -> bool {
    nal_header_byte & 0x1f == NAL_IDR
}

/// The NAL unit type of an H.264 NAL header byte.
pub fn nal_type(nal_header_byte: u8) -> u8 {
    nal_header_byte & 0x1f
}

/// How many frames may precede a frame in decode order but follow it in output order:
/// the VUI's `max_num_reorder_frames` when the SPS has bitstream restrictions; 0 when
/// picture order follows decode order (`pic_order_cnt_type` 2, or the Baseline
/// profile, which has no B slices); otherwise `max_num_ref_frames`, the most a decoder
/// may hold (an over-estimate only delays decode times, never breaks them). Uses
/// `h264-reader` for the full SPS (VUI included) rather than a second hand parser.
pub fn reorder_depth(sps_nal: &[u8]) -> Result<usize, MediaError> {
    use h264_reader::nal::sps::{PicOrderCntType, SeqParameterSet};
    let invalid = |detail: String| MediaError::Invalid {
        what: SPS,
        offset: 0,
        detail,
    };
    // h264-reader panics (capacity overflow) on an empty NAL: found by fuzzing.
    if sps_nal.is_empty() {
        return Err(invalid("empty NAL unit".into()));
    }
    let rbsp = h264_reader::rbsp::decode_nal(sps_nal).map_err(|e| invalid(e.to_string()))?;
    let sps = SeqParameterSet::from_bits(h264_reader::rbsp::BitReader::new(&rbsp[..]))
        .map_err(|e| invalid(format!("{e:?}")))?;
    let restricted = sps
        .vui_parameters
        .as_ref()
        .and_then(|v| v.bitstream_restrictions.as_ref());
    let depth = match (restricted, &sps.pic_order_cnt) {
        (Some(r), _) => r.max_num_reorder_frames,
        (None, PicOrderCntType::TypeTwo) => 0,
        (None, _) if sps_nal.get(1) == Some(&66) => 0,
        (None, _) => sps.max_num_ref_frames,
    };
    Ok(depth.min(16) as usize)
}

/// Picture size (width, height) in pixels from an SPS NAL unit (with its header byte),
/// frame cropping applied. Handles emulation prevention.
pub fn parse_sps_resolution(sps_nal: &[u8]) -> Result<(u32, u32), MediaError> {
    let rbsp = remove_emulation_prevention(sps_nal);
    let mut r = BitReader::new(&rbsp, SPS);
    let header = r.read_bits(8)? as u8;
    if nal_type(header) != NAL_SPS {
        return Err(r.invalid(format!("NAL type {} is not an SPS", nal_type(header))));
    }
    let profile_idc = r.read_bits(8)?;
    r.skip(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err(r.invalid(format!("chroma_format_idc {chroma_format_idc}")));
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.read_bit()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.skip(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.read_bit()? {
            // seq_scaling_matrix_present_flag
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.read_bit()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.skip(1)?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue()?;
            if cycle > 255 {
                return Err(r.invalid(format!("num_ref_frames_in_pic_order_cnt_cycle {cycle}")));
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        other => return Err(r.invalid(format!("pic_order_cnt_type {other}"))),
    }
    r.ue()?; // max_num_ref_frames
    r.skip(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.read_bit()?;
    if !frame_mbs_only {
        r.skip(1)?; // mb_adaptive_frame_field_flag
    }
    r.skip(1)?; // direct_8x8_inference_flag
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let width = width_mbs * 16;
    let height = height_map_units * 16 * field_factor;
    let (mut crop_x, mut crop_y) = (0u64, 0u64);
    if r.read_bit()? {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let chroma_array_type = if separate_colour_plane {
            0
        } else {
            chroma_format_idc
        };
        let (unit_x, unit_y) = match chroma_array_type {
            0 => (1, field_factor),
            1 => (2, 2 * field_factor),
            2 => (2, field_factor),
            _ => (1, field_factor),
        };
        crop_x = unit_x * (u64::from(left) + u64::from(right));
        crop_y = unit_y * (u64::from(top) + u64::from(bottom));
    }
    finish_size(&r, width, height, crop_x, crop_y)
}

/// Applies a crop to a coded size, rejecting crops that leave nothing or sizes past u32.
pub(crate) fn finish_size(
    r: &BitReader<'_>,
    width: u64,
    height: u64,
    crop_x: u64,
    crop_y: u64,
) -> Result<(u32, u32), MediaError> {
    if crop_x >= width || crop_y >= height {
        return Err(r.invalid(format!(
            "cropping {crop_x}x{crop_y} removes the whole {width}x{height} picture"
        )));
    }
    let w = u32::try_from(width - crop_x).map_err(|_| r.invalid("width too large"))?;
    let h = u32::try_from(height - crop_y).map_err(|_| r.invalid("height too large"))?;
    Ok((w, h))
}

/// scaling_list() of H.264 section 7.3.2.1.1.1, values discarded.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), MediaError> {
    let mut last_scale: i64 = 8;
    let mut next_scale: i64 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta = i64::from(r.se()?);
            next_scale = (last_scale + delta).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

/// Byte-oriented reader for configuration records, with offsets in errors.
pub(crate) struct ByteCursor<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> ByteCursor<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> ByteCursor<'a> {
        ByteCursor { data, pos: 0, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MediaError> {
        let slice = self
            .data
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or(MediaError::Truncated {
                what: self.what,
                offset: self.pos,
                need: n.saturating_sub(self.data.len().saturating_sub(self.pos)),
            })?;
        self.pos += n;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MediaError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MediaError> {
        let b = self.take(2)?;
        Ok(b.iter().fold(0u16, |acc, &x| (acc << 8) | u16::from(x)))
    }

    /// A NAL unit preceded by a 16-bit length.
    pub(crate) fn nal(&mut self) -> Result<Bytes, MediaError> {
        let at = self.pos;
        let len = usize::from(self.u16()?);
        if len == 0 {
            return Err(self.invalid_at(at, "empty parameter set"));
        }
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    pub(crate) fn invalid_at(&self, offset: usize, detail: impl Into<String>) -> MediaError {
        MediaError::Invalid {
            what: self.what,
            offset,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// x264, `testsrc=size=1920x1080 -pix_fmt yuv420p -profile:v high`, as an MP4 `avcC`.
    pub(crate) const AVCC_1080: &str = "01640028ffe1001b67640028acd940780227e5c044000003000400\
        000300c83c60c65801000668ebe3cb22c0fdf8f800";

    #[test]
    fn parses_x264_record_1080p_with_cropping() {
        let rec = hex(AVCC_1080);
        let c = AvcConfig::parse(&rec).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!((c.profile_idc, c.level_idc), (100, 40));
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.pps, vec![Bytes::from(hex("68ebe3cb22c0"))]);
        assert_eq!(c.resolution, Some((1920, 1080)));
        assert_eq!(&c.record[..], &rec[..]);
    }

    #[test]
    fn an_oversized_record_is_refused_before_it_is_read() {
        // A valid record padded to 8 MiB with an 8 MiB "PPS": what a hostile peer sends to
        // have it copied in front of every keyframe.
        let mut rec = hex(AVCC_1080);
        rec.resize(crate::media::MAX_DECODER_CONFIG + 1, 0);
        let err = AvcConfig::parse(&rec).unwrap_err();
        assert!(
            matches!(err, MediaError::TooLarge { size, .. } if size == rec.len()),
            "{err}"
        );
        rec.truncate(crate::media::MAX_DECODER_CONFIG);
        assert!(
            AvcConfig::parse(&rec).is_ok(),
            "trailing bytes at the cap are kept"
        );
    }

    #[test]
    fn sps_sizes_from_real_encoders() {
        let cases = [
            // x264 high, 640x360 (coded 640x368, cropped).
            (
                "6764001eacd940a02ff97011000003000100000300320f162d96",
                (640, 360),
            ),
            // x264 High 4:4:4 Predictive, 640x360 (chroma_format_idc 3).
            (
                "67f4001e919b281405ff1380880000030008000003019078b16cb0",
                (640, 360),
            ),
            // x264 baseline 322x242 (odd crop in both directions).
            (
                "6742c00dd90150878888c044000003000400000300c83c50a920",
                (322, 242),
            ),
            // x264 interlaced 1280x720 (frame_mbs_only_flag 0).
            (
                "67640020acd940500bbf2e0220000003002000000643e2c5b2c0",
                (1280, 720),
            ),
        ];
        for (sps, size) in cases {
            assert_eq!(parse_sps_resolution(&hex(sps)), Ok(size), "{sps}");
        }
    }

    #[test]
    fn sps_with_scaling_lists() {
        // Hand-built High profile SPS, 176x144, seq_scaling_matrix_present with list 0
        // explicit (delta -8 then stop: all-zero -> "use default") and list 6 flat deltas.
        let mut w = BitWriter::default();
        w.bits(0x67, 8);
        w.bits(100, 8);
        w.bits(0, 8);
        w.bits(30, 8);
        w.ue(0);
        w.ue(1); // chroma_format_idc
        w.ue(0);
        w.ue(0);
        w.bits(0, 1);
        w.bits(1, 1); // scaling matrix present
        for i in 0..8 {
            let present = i == 0 || i == 6;
            w.bits(u64::from(present), 1);
            if i == 0 {
                w.se(-8); // next_scale 0: stop
            }
            if i == 6 {
                for _ in 0..64 {
                    w.se(1);
                }
            }
        }
        w.ue(0); // log2_max_frame_num_minus4
        w.ue(0); // poc type 0
        w.ue(0); // log2_max_poc_lsb_minus4
        w.ue(1); // max_num_ref_frames
        w.bits(0, 1);
        w.ue(10); // width 11 mbs
        w.ue(8); // height 9 map units
        w.bits(1, 1); // frame_mbs_only
        w.bits(1, 1); // direct_8x8
        w.bits(0, 1); // no cropping
        w.bits(0, 1); // vui absent
        w.bits(1, 1); // rbsp stop bit
        assert_eq!(parse_sps_resolution(&w.finish()), Ok((176, 144)));
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let rec = hex(AVCC_1080);
        for len in 0..rec.len() - 4 {
            let _ = AvcConfig::parse(&rec[..len]);
        }
        assert!(AvcConfig::parse(&rec[..10]).is_err());
        let mut three = rec.clone();
        three[4] = 0xfe; // lengthSizeMinusOne 2
        assert_eq!(
            AvcConfig::parse(&three),
            Err(MediaError::Invalid {
                what: RECORD,
                offset: 4,
                detail: "NAL length size 3".into()
            })
        );
        let sps = hex("6764001eacd940a02ff97011000003000100000300320f162d96");
        for len in 0..sps.len() {
            let _ = parse_sps_resolution(&sps[..len]);
        }
        assert!(parse_sps_resolution(&sps[..6]).is_err());
        assert!(parse_sps_resolution(&hex("68ebe3cb22c0")).is_err());
        assert!(is_idr(0x65) && !is_idr(0x41));
    }

    /// Test-only MSB-first bit writer with Exp-Golomb.
    #[derive(Default)]
    pub(crate) struct BitWriter {
        out: Vec<u8>,
        n: usize,
    }

    impl BitWriter {
        pub(crate) fn bits(&mut self, v: u64, n: u32) {
            for i in (0..n).rev() {
                if self.n.is_multiple_of(8) {
                    self.out.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                *self.out.last_mut().unwrap() |= bit << (7 - self.n % 8);
                self.n += 1;
            }
        }
        pub(crate) fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }
        pub(crate) fn se(&mut self, v: i32) {
            let k = if v > 0 { 2 * v - 1 } else { -2 * v };
            self.ue(k as u32);
        }
        pub(crate) fn finish(self) -> Vec<u8> {
            self.out
        }
    }
}
