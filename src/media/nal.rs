//! NAL unit framing: length-prefixed access units ("AVCC"/"HVCC", ISO/IEC 14496-15
//! section 5.3.2 / 8.3.2) and Annex B byte streams (ITU-T H.264 / H.265 Annex B).
//!
//! Owns: splitting and re-framing NAL units, nothing about their contents. Never panics
//! on malformed input: a length that runs past the end is a [`MediaError::Truncated`]
//! with the offset of that length field.

use super::MediaError;

const WHAT: &str = "length-prefixed access unit";

/// Appends the access unit `avcc` (length-prefixed NALs of `length_size` bytes) to `out`
/// as Annex B (4-byte start codes). Errors on a length running past the end.
///
/// On error `out` may hold the NAL units converted before the bad one.
pub fn length_prefixed_to_annex_b(
    avcc: &[u8],
    length_size: u8,
    out: &mut Vec<u8>,
) -> Result<(), MediaError> {
    for nal in iter_length_prefixed(avcc, length_size) {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal?);
    }
    Ok(())
}

/// Iterates the NAL units of a length-prefixed access unit.
///
/// Yields one error and then stops on a length running past the end or an unsupported
/// `length_size` (valid: 1..=4).
pub fn iter_length_prefixed(
    avcc: &[u8],
    length_size: u8,
) -> impl Iterator<Item = Result<&[u8], MediaError>> {
    LengthPrefixed {
        data: avcc,
        offset: 0,
        length_size: usize::from(length_size),
        failed: false,
    }
}

struct LengthPrefixed<'a> {
    data: &'a [u8],
    offset: usize,
    length_size: usize,
    failed: bool,
}

impl<'a> Iterator for LengthPrefixed<'a> {
    type Item = Result<&'a [u8], MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.data.len() {
            return None;
        }
        if !(1..=4).contains(&self.length_size) {
            self.failed = true;
            return Some(Err(MediaError::Unsupported {
                what: WHAT,
                detail: format!("NAL length size {}", self.length_size),
            }));
        }
        let start = self.offset;
        let rest = self.data.get(start..).unwrap_or_default();
        let Some(len_bytes) = rest.get(..self.length_size) else {
            self.failed = true;
            return Some(Err(MediaError::Truncated {
                what: WHAT,
                offset: start,
                need: self.length_size - rest.len(),
            }));
        };
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let body = start + self.length_size;
        let Some(nal) = self.data.get(body..).and_then(|r| r.get(..len)) else {
            self.failed = true;
            return Some(Err(MediaError::Truncated {
                what: WHAT,
                offset: start,
                need: len.saturating_sub(self.data.len().saturating_sub(body)),
            }));
        };
        self.offset = body + len;
        Some(Ok(nal))
    }
}

/// Splits an Annex B byte stream into NAL units (without start codes).
///
/// Accepts 3- and 4-byte start codes; bytes before the first start code are ignored;
/// trailing zero bytes of a NAL unit (`trailing_zero_8bits`) are dropped; empty NAL units
/// are skipped.
pub fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut nals = Vec::new();
    // Start of the current NAL payload, once a start code has been seen.
    let mut current: Option<usize> = None;
    let mut i = 0;
    while i + 3 <= data.len() {
        if data.get(i..i + 3) == Some(&[0, 0, 1]) {
            if let Some(start) = current {
                push_trimmed(&mut nals, data.get(start..i).unwrap_or_default());
            }
            i += 3;
            current = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(start) = current {
        push_trimmed(&mut nals, data.get(start..).unwrap_or_default());
    }
    nals
}

fn push_trimmed<'a>(nals: &mut Vec<&'a [u8]>, nal: &'a [u8]) {
    let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if let Some(trimmed) = nal.get(..end).filter(|n| !n.is_empty()) {
        nals.push(trimmed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_round_trip() {
        let avcc = [0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 3, 0x65, 0x88, 0x84];
        let mut out = Vec::new();
        length_prefixed_to_annex_b(&avcc, 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x65, 0x88, 0x84]);
        assert_eq!(
            split_annex_b(&out),
            vec![&[0x09u8, 0xf0][..], &[0x65, 0x88, 0x84][..]]
        );
        let two: Vec<_> = iter_length_prefixed(&[0, 1, 7, 0, 2, 8, 9], 2)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(two, vec![&[7u8][..], &[8, 9][..]]);
    }

    #[test]
    fn length_past_end_is_an_error_with_offset() {
        let mut out = Vec::new();
        let err = length_prefixed_to_annex_b(&[0, 1, 7, 0, 5, 1], 2, &mut out).unwrap_err();
        assert_eq!(
            err,
            MediaError::Truncated {
                what: WHAT,
                offset: 3,
                need: 4
            }
        );
        let err = iter_length_prefixed(&[0, 0, 0], 4).next().unwrap();
        assert!(matches!(err, Err(MediaError::Truncated { offset: 0, .. })));
        assert!(iter_length_prefixed(&[1, 2], 0).next().unwrap().is_err());
        assert_eq!(iter_length_prefixed(&[], 4).count(), 0);
        // After an error the iterator ends.
        assert_eq!(iter_length_prefixed(&[9], 1).count(), 1);
    }

    #[test]
    fn annex_b_with_mixed_start_codes() {
        let s = [
            0xaa, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 0, 1, 0x65, 0, 0, 3, 1, 0,
        ];
        assert_eq!(
            split_annex_b(&s),
            vec![&[0x67u8, 1][..], &[0x68, 2][..], &[0x65, 0, 0, 3, 1][..]]
        );
        assert!(split_annex_b(&[0, 0, 1]).is_empty());
        assert!(split_annex_b(&[1, 2, 3]).is_empty());
    }
}
