//! AAC configuration: the AudioSpecificConfig (ISO/IEC 14496-3 section 1.6.2.1) and the
//! 7-byte ADTS header (ISO/IEC 14496-3 section 1.A.2.2 / ISO/IEC 13818-7 section 6.2)
//! that MPEG-TS carries AAC in.
//!
//! Owns: [`AacConfig`] and the ADTS header writer. Never touches the raw AAC payload and
//! never panics on malformed input.
//!
//! Explicitly signalled SBR/PS (object types 5 and 29) is reduced to its core: the
//! reported object type and sample rate are those of the underlying AAC stream, which is
//! what ADTS carries and what timestamps advance by (1024 samples at the core rate).

use bytes::Bytes;

use super::bits::BitReader;
use super::{MediaError, Ticks, TICKS_PER_SECOND};

const ASC: &str = "audio specific config";
const ADTS: &str = "adts header";

/// Sampling frequencies by `samplingFrequencyIndex` (0..=12).
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Largest ADTS `frame_length` (13 bits), header included.
const MAX_ADTS_FRAME: usize = (1 << 13) - 1;

/// Samples per AAC frame (the 960-sample variant is not supported).
pub const SAMPLES_PER_FRAME: i64 = 1024;

/// A parsed AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// AudioSpecificConfig as received.
    pub asc: Bytes,
    /// 2 = AAC-LC.
    pub object_type: u8,
    /// Hz.
    pub sample_rate: u32,
    /// 0..=12, or 15 when the rate was given explicitly.
    pub sample_rate_index: u8,
    /// channel_configuration (0 = defined by a program config element).
    pub channels: u8,
}

impl AacConfig {
    /// Parses an AudioSpecificConfig; bytes after the fields used here are ignored.
    pub fn parse(asc: &[u8]) -> Result<AacConfig, MediaError> {
        let mut r = BitReader::new(asc, ASC);
        let mut object_type = read_object_type(&mut r)?;
        let (sample_rate_index, sample_rate) = read_frequency(&mut r)?;
        let channels = r.read_bits(4)? as u8;
        if object_type == 5 || object_type == 29 {
            // Explicit hierarchical SBR/PS: the extension rate, then the core type.
            let _extension_rate = read_frequency(&mut r)?;
            object_type = read_object_type(&mut r)?;
            if object_type == 22 {
                r.skip(4)?; // extensionChannelConfiguration (ER BSAC)
            }
        }
        if object_type == 0 {
            return Err(MediaError::Invalid {
                what: ASC,
                offset: 0,
                detail: "audio object type 0".into(),
            });
        }
        Ok(AacConfig {
            asc: Bytes::copy_from_slice(asc),
            object_type,
            sample_rate,
            sample_rate_index,
            channels,
        })
    }

    /// Frame duration in 90 kHz ticks (1024 samples), rounded to the nearest tick.
    pub fn frame_ticks(&self) -> Ticks {
        let rate = i64::from(self.sample_rate.max(1));
        (SAMPLES_PER_FRAME * TICKS_PER_SECOND + rate / 2) / rate
    }

    /// Appends the 7-byte ADTS header (no CRC) for a raw frame of `payload_len` bytes.
    ///
    /// Errors when the frame does not fit the 13-bit length, or the configuration cannot
    /// be expressed in ADTS (object type above 4, a rate outside the index table, a
    /// channel configuration above 7 or 0).
    pub fn write_adts_header(
        &self,
        payload_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        let frame_len = payload_len + 7;
        if frame_len > MAX_ADTS_FRAME {
            return Err(MediaError::Invalid {
                what: ADTS,
                offset: 3,
                detail: format!(
                    "frame of {payload_len} bytes exceeds the 13-bit ADTS length ({} max)",
                    MAX_ADTS_FRAME - 7
                ),
            });
        }
        if !(1..=4).contains(&self.object_type) {
            return Err(unsupported(format!("object type {}", self.object_type)));
        }
        let index = if usize::from(self.sample_rate_index) < SAMPLE_RATES.len() {
            self.sample_rate_index
        } else {
            SAMPLE_RATES
                .iter()
                .position(|&r| r == self.sample_rate)
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| unsupported(format!("sample rate {} Hz", self.sample_rate)))?
        };
        if !(1..=7).contains(&self.channels) {
            return Err(unsupported(format!(
                "channel configuration {}",
                self.channels
            )));
        }
        let profile = self.object_type - 1;
        let len = frame_len as u32;
        out.extend_from_slice(&[
            0xff,
            0xf1, // MPEG-4, layer 0, no CRC
            (profile << 6) | (index << 2) | (self.channels >> 2),
            ((self.channels & 0x3) << 6) | ((len >> 11) as u8 & 0x03),
            (len >> 3) as u8,
            (((len & 0x7) as u8) << 5) | 0x1f, // buffer fullness 0x7ff (VBR)
            0xfc,                              // ...and one raw data block
        ]);
        Ok(())
    }
}

fn unsupported(detail: String) -> MediaError {
    MediaError::Unsupported { what: ADTS, detail }
}

fn read_object_type(r: &mut BitReader<'_>) -> Result<u8, MediaError> {
    let ty = r.read_bits(5)? as u8;
    if ty == 31 {
        Ok(32 + r.read_bits(6)? as u8)
    } else {
        Ok(ty)
    }
}

fn read_frequency(r: &mut BitReader<'_>) -> Result<(u8, u32), MediaError> {
    let index = r.read_bits(4)? as u8;
    if index == 0x0f {
        let rate = r.read_bits(24)? as u32;
        if rate == 0 {
            return Err(r.invalid("explicit sampling frequency 0"));
        }
        return Ok((index, rate));
    }
    SAMPLE_RATES
        .get(usize::from(index))
        .map(|&rate| (index, rate))
        .ok_or_else(|| r.invalid(format!("reserved sampling frequency index {index}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_configs() {
        // ffmpeg's native AAC encoder, 44.1 kHz mono, with its SBR sync extension.
        let c = AacConfig::parse(&[0x12, 0x08, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!(
            (
                c.object_type,
                c.sample_rate,
                c.sample_rate_index,
                c.channels
            ),
            (2, 44100, 4, 1)
        );
        // AAC-LC 48 kHz stereo (what OBS sends).
        let c = AacConfig::parse(&[0x11, 0x90]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));
        assert_eq!(c.frame_ticks(), 1920);
        let c = AacConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!((c.sample_rate, c.frame_ticks()), (44100, 2090)); // 2089.80
    }

    #[test]
    fn escape_object_type_and_explicit_rate() {
        // object type 31 + 6 bits (= 32 + 10 = 42), index 0xF, 24-bit 48000, channels 2.
        // 11111 001010 1111 000000001011101110000000 0010
        let bits = "1111100101011110000000010111011100000000010";
        let c = AacConfig::parse(&pack(bits)).unwrap();
        assert_eq!(
            (
                c.object_type,
                c.sample_rate,
                c.sample_rate_index,
                c.channels
            ),
            (42, 48000, 15, 2)
        );
        // AAC-LC, explicit 44100 Hz: ADTS uses the matching table index.
        let bits = "0001011110000000010101100010001000010";
        let c = AacConfig::parse(&pack(bits)).unwrap();
        assert_eq!((c.sample_rate, c.sample_rate_index), (44100, 15));
        let mut out = Vec::new();
        c.write_adts_header(10, &mut out).unwrap();
        assert_eq!((out[2] >> 2) & 0xf, 4);
        // Explicit 12345 Hz is not expressible in ADTS.
        let bits = "0001011110000000000110000001110010010";
        let c = AacConfig::parse(&pack(bits)).unwrap();
        assert_eq!(c.sample_rate, 12345);
        assert!(c.write_adts_header(10, &mut Vec::new()).is_err());
        assert_eq!(c.frame_ticks(), 7465); // 7465.37
    }

    #[test]
    fn explicit_he_aac_reports_the_core() {
        // object type 5, 24 kHz core (index 6), stereo, extension 48 kHz (3), core type 2.
        let bits = "0010101100010001100010";
        let c = AacConfig::parse(&pack(bits)).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 24000, 2));
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(AacConfig::parse(&[]).is_err());
        assert!(AacConfig::parse(&[0x12]).is_err());
        assert!(AacConfig::parse(&[0x16, 0x90]).is_err()); // index 13
        assert!(AacConfig::parse(&[0x07, 0x90]).is_err()); // 0xF, truncated rate
        assert!(AacConfig::parse(&[0x00, 0x10]).is_err()); // object type 0
    }

    #[test]
    fn adts_header_layout() {
        let c = AacConfig::parse(&[0x11, 0x90]).unwrap();
        let mut out = vec![0xaa];
        c.write_adts_header(371, &mut out).unwrap();
        // ffmpeg's ADTS muxer writes the same for a 371-byte 48 kHz stereo LC frame.
        assert_eq!(out, [0xaa, 0xff, 0xf1, 0x4c, 0x80, 0x2f, 0x5f, 0xfc]);
        c.write_adts_header(MAX_ADTS_FRAME - 7, &mut Vec::new())
            .unwrap();
        let err = c
            .write_adts_header(MAX_ADTS_FRAME - 6, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, MediaError::Invalid { what: ADTS, .. }));
        let mut no_channels = c.clone();
        no_channels.channels = 0;
        assert!(no_channels.write_adts_header(1, &mut Vec::new()).is_err());
        let mut main_profile = c;
        main_profile.object_type = 5;
        assert!(main_profile.write_adts_header(1, &mut Vec::new()).is_err());
    }

    fn pack(bits: &str) -> Vec<u8> {
        let mut out = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.bytes().enumerate() {
            if b == b'1' {
                out[i / 8] |= 0x80 >> (i % 8);
            }
        }
        out
    }
}
