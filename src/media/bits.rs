//! Bit-level reading of codec headers: an MSB-first [`BitReader`] with Exp-Golomb
//! `ue(v)`/`se(v)` (ITU-T H.264 section 9.1, H.265 section 9.2) and removal of emulation
//! prevention bytes (H.264 section 7.4.1, H.265 section 7.4.2).
//!
//! Owns: turning RBSP bytes into fields. Never allocates except in
//! [`remove_emulation_prevention`], never panics on short input: every read past the end is
//! a [`MediaError::Truncated`] with the byte offset.

use super::MediaError;

/// MSB-first bit reader over an RBSP (emulation prevention already removed), with
/// `ue(v)`/`se(v)`.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
    what: &'static str,
}

impl<'a> BitReader<'a> {
    /// A reader over `data`; `what` names the structure in errors (e.g. `"h264 sps"`).
    pub fn new(data: &'a [u8], what: &'static str) -> BitReader<'a> {
        BitReader { data, pos: 0, what }
    }

    /// Bits consumed so far.
    pub fn bit_position(&self) -> usize {
        self.pos
    }

    /// Bits left to read.
    pub fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    fn truncated(&self, need_bits: usize) -> MediaError {
        MediaError::Truncated {
            what: self.what,
            offset: self.pos / 8,
            need: need_bits.saturating_sub(self.bits_left()).div_ceil(8),
        }
    }

    /// An [`MediaError::Invalid`] at the current byte offset.
    pub fn invalid(&self, detail: impl Into<String>) -> MediaError {
        MediaError::Invalid {
            what: self.what,
            offset: self.pos / 8,
            detail: detail.into(),
        }
    }

    /// Reads one bit.
    pub fn read_bit(&mut self) -> Result<bool, MediaError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .copied()
            .ok_or_else(|| self.truncated(1))?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    /// Reads `n` bits (`n <= 64`) as an unsigned number, MSB first.
    pub fn read_bits(&mut self, n: u32) -> Result<u64, MediaError> {
        if n > 64 {
            return Err(self.invalid(format!("read of {n} bits (max 64)")));
        }
        if (n as usize) > self.bits_left() {
            return Err(self.truncated(n as usize));
        }
        let mut value: u64 = 0;
        for _ in 0..n {
            value = (value << 1) | u64::from(self.read_bit()?);
        }
        Ok(value)
    }

    /// Skips `n` bits.
    pub fn skip(&mut self, n: usize) -> Result<(), MediaError> {
        if n > self.bits_left() {
            return Err(self.truncated(n));
        }
        self.pos += n;
        Ok(())
    }

    /// Unsigned Exp-Golomb `ue(v)`; values above `u32::MAX` are rejected.
    pub fn ue(&mut self) -> Result<u32, MediaError> {
        let mut leading_zeros = 0u32;
        while !self.read_bit()? {
            leading_zeros += 1;
            if leading_zeros > 32 {
                return Err(self.invalid("exp-golomb code longer than 32 bits"));
            }
        }
        let suffix = self.read_bits(leading_zeros)?;
        let value = (1u64 << leading_zeros) - 1 + suffix;
        u32::try_from(value).map_err(|_| self.invalid("exp-golomb value above u32"))
    }

    /// Signed Exp-Golomb `se(v)`.
    pub fn se(&mut self) -> Result<i32, MediaError> {
        let k = i64::from(self.ue()?);
        let value = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        // |value| <= 2^31, so only +2^31 can overflow; clamp it.
        Ok(i32::try_from(value).unwrap_or(i32::MAX))
    }
}

/// Removes emulation prevention bytes: every `0x03` that follows two zero bytes.
pub fn remove_emulation_prevention(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        if b == 0 {
            zeros += 1;
        } else {
            zeros = 0;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bits_msb_first() {
        let mut r = BitReader::new(&[0b1010_0000, 0xff], "t");
        assert!(r.read_bit().unwrap());
        assert_eq!(r.read_bits(3).unwrap(), 0b010);
        r.skip(4).unwrap();
        assert_eq!(r.read_bits(8).unwrap(), 0xff);
        assert_eq!(r.bits_left(), 0);
        assert_eq!(
            r.read_bit(),
            Err(MediaError::Truncated {
                what: "t",
                offset: 2,
                need: 1
            })
        );
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0,1,2,3,4
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&data, "t");
        let v: Vec<u32> = (0..5).map(|_| r.ue().unwrap()).collect();
        assert_eq!(v, [0, 1, 2, 3, 4]);
        let mut r = BitReader::new(&data, "t");
        let v: Vec<i32> = (0..5).map(|_| r.se().unwrap()).collect();
        assert_eq!(v, [0, 1, -1, 2, -2]);
    }

    #[test]
    fn exp_golomb_errors_do_not_panic() {
        assert!(BitReader::new(&[0, 0, 0, 0, 0], "t").ue().is_err());
        assert!(BitReader::new(&[0x00, 0x01], "t").ue().is_err());
        assert!(BitReader::new(&[], "t").ue().is_err());
        assert!(BitReader::new(&[0xff], "t").read_bits(65).is_err());
        assert!(BitReader::new(&[0xff], "t").skip(9).is_err());
        // The largest representable ue: 2^32 - 1.
        let max = [0, 0, 0, 0, 0x80, 0, 0, 0, 0];
        let mut r = BitReader::new(&max, "t");
        assert_eq!(r.ue().unwrap(), u32::MAX);
        assert_eq!(BitReader::new(&max, "t").se().unwrap(), i32::MAX);
    }

    #[test]
    fn emulation_prevention() {
        assert_eq!(
            remove_emulation_prevention(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]),
            [0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(remove_emulation_prevention(&[0, 3, 0, 0, 3]), [0, 3, 0, 0]);
        assert_eq!(remove_emulation_prevention(&[0, 0, 3, 3]), [0, 0, 3]);
    }
}
