//! Server side of the RTMP "simple" handshake (Adobe RTMP specification 1.0, section 5.2):
//! C0+C1 in, S0+S1+S2 out, then C2 in.
//!
//! Owns: the three handshake states and the 1536-byte blocks. Never does IO and never
//! validates C2's content (many clients echo the wrong block); it only counts its bytes.
//! The "complex" (digest) handshake is not implemented: OBS and ffmpeg publishing clients
//! accept a plain S1.

use thiserror::Error;

/// RTMP version byte of C0/S0 (plain RTMP; 6 would be RTMPE, which we do not speak).
pub const RTMP_VERSION: u8 = 3;
/// Size of C1/C2/S1/S2.
pub const HANDSHAKE_BLOCK: usize = 1536;

/// A handshake the peer got wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("handshake: C0 version byte {0} at offset 0 (only 3 is supported)")]
    UnsupportedVersion(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for C0 (1 byte) and C1 (1536 bytes).
    AwaitC0C1,
    /// S0+S1+S2 sent; waiting for C2.
    AwaitC2,
    Done,
}

/// Sans-IO server handshake: feed it the first bytes of a connection.
#[derive(Debug)]
pub struct ServerHandshake {
    state: State,
    /// Bytes of the current block received so far (C0+C1 or C2).
    buf: Vec<u8>,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    pub fn new() -> Self {
        ServerHandshake {
            state: State::AwaitC0C1,
            buf: Vec::with_capacity(1 + HANDSHAKE_BLOCK),
        }
    }

    /// True once C2 has been received; every later byte is chunk stream data.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes handshake bytes from the front of `input` and returns how many it used
    /// (the rest, if any, belongs to the chunk stream). S0+S1+S2 are appended to `out`
    /// once C1 is complete.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HandshakeError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match self.state {
                State::Done => return Ok(used),
                State::AwaitC0C1 => {
                    if self.buf.is_empty() {
                        match rest.first() {
                            None => return Ok(used),
                            Some(&RTMP_VERSION) => {}
                            Some(&v) => return Err(HandshakeError::UnsupportedVersion(v)),
                        }
                    }
                    used += self.take(rest, 1 + HANDSHAKE_BLOCK);
                    if self.buf.len() < 1 + HANDSHAKE_BLOCK {
                        return Ok(used);
                    }
                    let c1 = self.buf.get(1..).unwrap_or_default();
                    write_s0_s1_s2(c1, out);
                    self.buf.clear();
                    self.state = State::AwaitC2;
                }
                State::AwaitC2 => {
                    used += self.take(rest, HANDSHAKE_BLOCK);
                    if self.buf.len() < HANDSHAKE_BLOCK {
                        return Ok(used);
                    }
                    self.buf = Vec::new();
                    self.state = State::Done;
                }
            }
        }
    }

    /// Moves up to `block - buf.len()` bytes of `rest` into `buf`; returns the count.
    fn take(&mut self, rest: &[u8], block: usize) -> usize {
        let n = block.saturating_sub(self.buf.len()).min(rest.len());
        self.buf
            .extend_from_slice(rest.get(..n).unwrap_or_default());
        n
    }
}

/// S0 (version), S1 (time, zero, pseudo-random filler) and S2 (echo of C1).
fn write_s0_s1_s2(c1: &[u8], out: &mut Vec<u8>) {
    out.push(RTMP_VERSION);
    // S1: our epoch (0) and four zero bytes, then filler. The filler need not be
    // cryptographically random for the simple handshake; derive it from C1 so it differs
    // per connection without needing an RNG here.
    out.extend_from_slice(&[0u8; 8]);
    let mut seed: u32 = c1
        .iter()
        .fold(0x9e37_79b9u32, |acc, &b| acc.rotate_left(5) ^ u32::from(b));
    for _ in 0..(HANDSHAKE_BLOCK - 8) {
        // xorshift32
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        out.push((seed >> 24) as u8);
    }
    // S2: echo of C1.
    out.extend_from_slice(c1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c0c1() -> Vec<u8> {
        let mut v = vec![RTMP_VERSION];
        v.extend((0..HANDSHAKE_BLOCK).map(|i| (i * 7) as u8));
        v
    }

    #[test]
    fn full_handshake_and_leftover() {
        let mut hs = ServerHandshake::new();
        let mut out = Vec::new();
        let mut input = c0c1();
        input.extend(vec![0xAA; HANDSHAKE_BLOCK]); // C2, content ignored
        input.extend([1, 2, 3]); // first chunk stream bytes
        let used = hs.feed(&input, &mut out).unwrap();
        assert_eq!(used, 1 + 2 * HANDSHAKE_BLOCK);
        assert!(hs.is_done());
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_BLOCK);
        assert_eq!(out[0], 3);
        assert_eq!(&out[1 + HANDSHAKE_BLOCK..], &c0c1()[1..]);
    }

    #[test]
    fn byte_by_byte() {
        let mut hs = ServerHandshake::new();
        let mut out = Vec::new();
        let mut input = c0c1();
        input.extend(vec![0; HANDSHAKE_BLOCK]);
        for b in &input {
            assert_eq!(hs.feed(std::slice::from_ref(b), &mut out).unwrap(), 1);
        }
        assert!(hs.is_done());
        assert_eq!(hs.feed(&[9], &mut out).unwrap(), 0);
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_BLOCK);
    }

    #[test]
    fn random_bytes_rejected() {
        let mut seed = 0x1234_5678u32;
        let junk: Vec<u8> = (0..4000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        assert_ne!(junk[0], RTMP_VERSION);
        let mut hs = ServerHandshake::new();
        let err = hs.feed(&junk, &mut Vec::new()).unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion(junk[0]));
        // RTMPE and HTTP are rejected too.
        let mut hs = ServerHandshake::new();
        assert!(hs.feed(&[6], &mut Vec::new()).is_err());
        let mut hs = ServerHandshake::new();
        assert!(hs.feed(b"GET / HTTP/1.1\r\n", &mut Vec::new()).is_err());
    }
}
