//! H.265 codec configuration: the HEVCDecoderConfigurationRecord (ISO/IEC 14496-15
//! section 8.3.3.1) and the picture size from a sequence parameter set (ITU-T H.265
//! section 7.3.2.2.1, profile_tier_level per 7.3.3, conformance window per 7.4.3.2.1).
//!
//! Owns: [`HevcConfig`] and SPS parsing up to the conformance window. Never parses slice
//! data and never panics on malformed input: errors carry the byte offset in the record
//! (or in the SPS RBSP, i.e. after emulation prevention removal).

use bytes::Bytes;

use super::avc::{chroma_and_depths, finish_size, u16_len, ByteCursor};
use super::bits::{remove_emulation_prevention, BitReader};
use super::MediaError;

const RECORD: &str = "hevc decoder configuration record";
const SPS: &str = "h265 sps";
const BUILT_RECORD: &str = "rebuilt hevc decoder configuration record";

/// H.265 NAL unit types the muxers care about.
pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;
pub const NAL_AUD: u8 = 35;

/// A parsed HEVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcConfig {
    /// HEVCDecoderConfigurationRecord as received.
    pub record: Bytes,
    /// NAL units without start codes, in record order.
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// 1, 2 or 4 (3 is rejected).
    pub nal_length_size: u8,
    /// From the first SPS, conformance window applied; `None` if it could not be parsed.
    pub resolution: Option<(u32, u32)>,
}

impl HevcConfig {
    /// Parses an HEVCDecoderConfigurationRecord. Requires at least one SPS; arrays of other
    /// NAL types (SEI) are skipped.
    pub fn parse(record: &[u8]) -> Result<HevcConfig, MediaError> {
        super::check_config_size(RECORD, record)?;
        let mut r = ByteCursor::new(record, RECORD);
        let version = r.u8()?;
        if version != 1 {
            return Err(r.invalid_at(0, format!("configurationVersion {version}")));
        }
        // Profile, tier, level, compatibility and constraint flags, segmentation,
        // parallelism, chroma format, bit depths, frame rate: 20 bytes.
        r.take(20)?;
        let nal_length_size = (r.u8()? & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(r.invalid_at(21, "NAL length size 3"));
        }
        let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
        let num_arrays = r.u8()?;
        for _ in 0..num_arrays {
            let nal_type = r.u8()? & 0x3f;
            let count = r.u16()?;
            for _ in 0..count {
                let nal = r.nal()?;
                match nal_type {
                    NAL_VPS => vps.push(nal),
                    NAL_SPS => sps.push(nal),
                    NAL_PPS => pps.push(nal),
                    _ => {}
                }
            }
        }
        if sps.is_empty() {
            return Err(r.invalid_at(22, "no SPS"));
        }
        let resolution = sps.first().and_then(|s| parse_sps_resolution(s).ok());
        Ok(HevcConfig {
            record: Bytes::copy_from_slice(record),
            vps,
            sps,
            pps,
            nal_length_size,
            resolution,
        })
    }
}

impl HevcConfig {
    /// Builds (and parses) the HEVCDecoderConfigurationRecord for parameter sets received
    /// out of band or in-band (MPEG-TS, RTP): NAL units without start codes, 4-byte NAL
    /// lengths. `Ok(None)` while any kind is missing.
    pub fn from_parameter_sets(
        vps: &[Bytes],
        sps: &[Bytes],
        pps: &[Bytes],
    ) -> Result<Option<HevcConfig>, MediaError> {
        let Some(first) = sps.first() else {
            return Ok(None);
        };
        if vps.is_empty() || pps.is_empty() {
            return Ok(None);
        }
        let info = sps_info(first)?;
        let (chroma, luma, chroma_depth) = info.chroma_and_depth;
        let mut rec = vec![1];
        rec.extend_from_slice(&info.general_ptl);
        rec.extend_from_slice(&[
            0xf0, // reserved, min_spatial_segmentation_idc 0
            0x00,
            0xfc, // reserved, parallelismType 0
            0xfc | chroma,
            0xf8 | luma,
            0xf8 | chroma_depth,
            0x00, // avgFrameRate 0
            0x00,
            // constantFrameRate 0, numTemporalLayers, temporalIdNested, lengthSizeMinusOne 3
            (((info.max_sub_layers_minus1 + 1) & 0x07) << 3)
                | (u8::from(info.temporal_id_nesting) << 2)
                | 0x03,
            3, // numOfArrays
        ]);
        for (nal_type, list) in [(NAL_VPS, vps), (NAL_SPS, sps), (NAL_PPS, pps)] {
            rec.push(0x80 | nal_type); // array_completeness 1
            rec.extend_from_slice(&u16_len(list.len(), BUILT_RECORD)?);
            for unit in list {
                rec.extend_from_slice(&u16_len(unit.len(), BUILT_RECORD)?);
                rec.extend_from_slice(unit);
            }
        }
        HevcConfig::parse(&rec).map(Some)
    }
}

/// What the HEVCDecoderConfigurationRecord copies from an SPS.
pub(crate) struct SpsInfo {
    /// general_profile_space .. general_level_idc (12 bytes, as in the record).
    pub(crate) general_ptl: [u8; 12],
    pub(crate) max_sub_layers_minus1: u8,
    pub(crate) temporal_id_nesting: bool,
    /// chroma_format_idc, bit_depth_luma_minus8, bit_depth_chroma_minus8 (1, 0, 0 if the
    /// SPS could not be read that far).
    pub(crate) chroma_and_depth: (u8, u8, u8),
}

pub(crate) fn sps_info(sps: &[u8]) -> Result<SpsInfo, MediaError> {
    let rbsp = remove_emulation_prevention(sps);
    let mut r = BitReader::new(&rbsp, SPS);
    r.skip(16)?; // NAL header
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.read_bits(3)? as u8;
    let temporal_id_nesting = r.read_bit()?;
    let mut general_ptl = [0u8; 12];
    for b in general_ptl.iter_mut() {
        *b = r.read_bits(8)? as u8;
    }
    let chroma_and_depth = chroma_and_depth(&mut r, max_sub_layers_minus1).unwrap_or((1, 0, 0));
    Ok(SpsInfo {
        general_ptl,
        max_sub_layers_minus1,
        temporal_id_nesting,
        chroma_and_depth,
    })
}

/// Continues an SPS read just after the general profile_tier_level fields (H.265
/// section 7.3.2.2.1 / 7.3.3) up to the bit depths.
fn chroma_and_depth(
    r: &mut BitReader<'_>,
    max_sub_layers_minus1: u8,
) -> Result<(u8, u8, u8), MediaError> {
    let sub_layers = usize::from(max_sub_layers_minus1.min(7));
    let mut present = [(false, false); 7];
    for p in present.iter_mut().take(sub_layers) {
        *p = (r.read_bit()?, r.read_bit()?);
    }
    if sub_layers > 0 {
        r.skip(2 * (8 - sub_layers))?; // reserved_zero_2bits
    }
    for &(profile, level) in present.iter().take(sub_layers) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma = r.ue()?;
    if chroma == 3 {
        r.skip(1)?; // separate_colour_plane_flag
    }
    r.ue()?; // pic_width_in_luma_samples
    r.ue()?; // pic_height_in_luma_samples
    if r.read_bit()? {
        for _ in 0..4 {
            r.ue()?; // conf_win offsets
        }
    }
    chroma_and_depths(r, chroma)
}

/// Returns true for an intra random access point picture (NAL types 16..=23).
pub fn is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// The NAL unit type from the first byte of an H.265 NAL header.
pub fn nal_type(first_header_byte: u8) -> u8 {
    (first_header_byte >> 1) & 0x3f
}

/// Picture size (width, height) in pixels from an SPS NAL unit (with its 2-byte header),
/// conformance window applied. Handles emulation prevention.
pub fn parse_sps_resolution(sps_nal: &[u8]) -> Result<(u32, u32), MediaError> {
    read_sps(sps_nal, false).map(|(size, _)| size)
}

/// How many pictures may precede a picture in decode order but follow it in output
/// order (`sps_max_num_reorder_pics` of the highest sub-layer): the B-frame reorder
/// depth RTP's presentation-only timestamps need to synthesise decode times.
pub fn reorder_depth(sps_nal: &[u8]) -> Result<usize, MediaError> {
    read_sps(sps_nal, true).map(|(_, depth)| depth)
}

/// The SPS up to the conformance window, and with `want_reorder` on to the
/// sub-layer ordering info: (picture size, reorder depth or 0).
fn read_sps(sps_nal: &[u8], want_reorder: bool) -> Result<((u32, u32), usize), MediaError> {
    let rbsp = remove_emulation_prevention(sps_nal);
    let mut r = BitReader::new(&rbsp, SPS);
    let header = r.read_bits(16)?;
    let ty = ((header >> 9) & 0x3f) as u8;
    if ty != NAL_SPS {
        return Err(r.invalid(format!("NAL type {ty} is not an SPS")));
    }
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.read_bits(3)? as usize;
    r.skip(1)?; // sps_temporal_id_nesting_flag
    skip_profile_tier_level(&mut r, max_sub_layers_minus1)?;
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc > 3 {
        return Err(r.invalid(format!("chroma_format_idc {chroma_format_idc}")));
    }
    let separate_colour_plane = chroma_format_idc == 3 && r.read_bit()?;
    let width = u64::from(r.ue()?);
    let height = u64::from(r.ue()?);
    let (mut crop_x, mut crop_y) = (0u64, 0u64);
    if r.read_bit()? {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (sub_w, sub_h) = match (separate_colour_plane, chroma_format_idc) {
            (false, 1) => (2, 2),
            (false, 2) => (2, 1),
            _ => (1, 1),
        };
        crop_x = sub_w * (u64::from(left) + u64::from(right));
        crop_y = sub_h * (u64::from(top) + u64::from(bottom));
    }
    let size = finish_size(&r, width, height, crop_x, crop_y)?;
    if !want_reorder {
        return Ok((size, 0));
    }
    r.ue()?; // bit_depth_luma_minus8
    r.ue()?; // bit_depth_chroma_minus8
    r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
    let all_sub_layers = r.read_bit()?; // sps_sub_layer_ordering_info_present_flag
    let first = if all_sub_layers {
        0
    } else {
        max_sub_layers_minus1
    };
    let mut depth = 0;
    for _ in first..=max_sub_layers_minus1 {
        r.ue()?; // sps_max_dec_pic_buffering_minus1
        depth = r.ue()?; // sps_max_num_reorder_pics
        r.ue()?; // sps_max_latency_increase_plus1
    }
    if depth > 16 {
        return Err(r.invalid(format!("sps_max_num_reorder_pics {depth}")));
    }
    Ok((size, depth as usize))
}

/// profile_tier_level(1, max_sub_layers_minus1) of H.265 section 7.3.3, values discarded.
fn skip_profile_tier_level(
    r: &mut BitReader<'_>,
    max_sub_layers_minus1: usize,
) -> Result<(), MediaError> {
    // general_profile_space .. general_level_idc: 2+1+5+32+4+43+1+8 bits.
    r.skip(96)?;
    let mut present = [(false, false); 7];
    for p in present.iter_mut().take(max_sub_layers_minus1) {
        *p = (r.read_bit()?, r.read_bit()?);
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1))?; // reserved_zero_2bits
    }
    for &(profile, level) in present.iter().take(max_sub_layers_minus1) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::avc::tests::hex;
    use super::*;

    /// x265 `testsrc=size=1920x1080` as an MP4 `hvcC`, cut after the PPS array (the
    /// original has a fourth array with x265's SEI, dropped and numOfArrays set to 3).
    const HVCC_1080: &str = "01016000000090000000000078f000fcfdf8f800000f03a00001001840010c01\
        ffff016000000300900000030000030078959809a10001002a42010101600000030090000003000003\
        0078a003c08010e596566924caf0168080000003008000000c84a2000100074401c172b46240";

    #[test]
    fn parses_x265_record() {
        let rec = hex(HVCC_1080);
        let c = HevcConfig::parse(&rec).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!((c.vps.len(), c.sps.len(), c.pps.len()), (1, 1, 1));
        assert_eq!(nal_type(c.vps[0][0]), NAL_VPS);
        assert_eq!(&c.pps[0][..], &hex("4401c172b46240")[..]);
        assert_eq!(c.resolution, Some((1920, 1080)));
        assert_eq!(&c.record[..], &rec[..]);
    }

    #[test]
    fn sps_sizes_from_real_encoders() {
        let cases = [
            (
                "42010101600000030090000003000003003fa00502016965959a4932bc05a0200000030020\
                 0000030321",
                (640, 360),
            ),
            // 322x242 with two temporal sub-layers (sub-layer flags in profile_tier_level)
            // and a conformance window (coded 328x248).
            (
                "42010201600000030090000003000003003c0000a00a480f9c92659598acd24995e02d01000\
                 0030001000003001908",
                (322, 242),
            ),
        ];
        for (sps, size) in cases {
            let sps: String = sps.split_whitespace().collect();
            assert_eq!(parse_sps_resolution(&hex(&sps)), Ok(size), "{sps}");
        }
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let rec = hex(HVCC_1080);
        for len in 0..rec.len() {
            let _ = HevcConfig::parse(&rec[..len]);
        }
        assert!(HevcConfig::parse(&rec[..30]).is_err());
        let mut three = rec.clone();
        three[21] = 0xfe;
        assert!(matches!(
            HevcConfig::parse(&three),
            Err(MediaError::Invalid { offset: 21, .. })
        ));
        let sps = hex("42010101600000030090000003000003003fa00502016965959a4932bc05a020");
        for len in 0..sps.len() {
            let _ = parse_sps_resolution(&sps[..len]);
        }
        assert!(parse_sps_resolution(&hex("4401c172b46240")).is_err());
        assert!(is_irap(19) && is_irap(21) && !is_irap(1) && !is_irap(32));
    }
}
