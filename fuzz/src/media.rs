//! Codec targets: AVC/HEVC/AAC configuration records and SPS parsing, and NAL framing.

use edgerec::media::aac::AacConfig;
use edgerec::media::avc::{self, AvcConfig};
use edgerec::media::hevc::{self, HevcConfig};
use edgerec::media::nal;

/// The first byte picks the parser; the rest is its input. A record that parses must
/// describe itself consistently.
pub fn codec_config(data: &[u8]) {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(config) = AvcConfig::parse(input) {
                assert!((1..=4).contains(&config.nal_length_size));
            }
        }
        1 => {
            if let Ok(config) = HevcConfig::parse(input) {
                assert!((1..=4).contains(&config.nal_length_size));
            }
        }
        2 => {
            if let Ok(config) = AacConfig::parse(input) {
                assert!(config.frame_ticks() > 0);
            }
        }
        3 => drop(avc::parse_sps_resolution(input)),
        4 => drop(avc::reorder_depth(input)),
        5 => drop(hevc::parse_sps_resolution(input)),
        _ => drop(hevc::reorder_depth(input)),
    }
}

/// Length-prefixed access units with every length size: the Annex B conversion yields the
/// same NAL units as the iterator, each behind a 4-byte start code.
pub fn nal(data: &[u8]) {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let length_size = which % 5;
    let units: Vec<_> = nal::iter_length_prefixed(input, length_size).collect();
    let mut annex_b = Vec::new();
    let converted = nal::length_prefixed_to_annex_b(input, length_size, &mut annex_b);
    assert_eq!(converted.is_ok(), units.iter().all(|u| u.is_ok()));
    if converted.is_ok() {
        let total: usize = units.iter().flatten().map(|u| 4 + u.len()).sum();
        assert_eq!(annex_b.len(), total);
    }
    let _ = nal::split_annex_b(input);
}
