//! Access checks, pure and sans-IO: signed publish URLs (`publish`), API bearer tokens
//! (`tokens`), signed playback URLs (`playback`) and the body signature of callbacks
//! (`body_signature`). Nothing here reads the clock, a socket or a file: callers pass
//! `now` and the peer's address, so each rule is a unit test.
//!
//! Digests come from the RustCrypto crates (`md-5`, `sha2`, `hmac`); secrets are compared
//! in constant time over fixed-size digests, so a timing probe learns nothing.

pub mod playback;
pub mod publish;
pub mod tokens;

use hmac::{KeyInit, Mac};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex MD5 of `data`.
pub fn hex_md5(data: &[u8]) -> String {
    use md5::Digest as _;
    hex(&md5::Md5::digest(data))
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// 64 hex digits (either case) as 32 bytes.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    unhex(text.trim())?.try_into().ok()
}

/// Hex digits (either case, an even number of them) as bytes; None for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equal, in time that depends only on the length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `X-Edgerec-Signature` header of a callback: `t=<t>, v1=<hex HMAC-SHA256(key,
/// t + "." + body)>`. Unlike Tencent's `sign = md5(key + t)`, it covers the body.
pub fn body_signature(key: &str, t: i64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={t}, v1={}", hex(&hmac_sha256(key.as_bytes(), &message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_vectors() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hex32_round_trips_and_refuses_junk() {
        let d = sha256(b"x");
        assert_eq!(parse_hex32(&hex(&d)), Some(d));
        assert_eq!(parse_hex32(&hex(&d).to_uppercase()), Some(d));
        assert_eq!(parse_hex32("abc"), None);
        assert_eq!(parse_hex32(&"zz".repeat(32)), None);
        assert_eq!(parse_hex32(&"+f".repeat(32)), None);
        assert_eq!(unhex("00ff7A"), Some(vec![0, 255, 0x7a]));
        assert_eq!(unhex("0"), None);
    }

    #[test]
    fn body_signature_covers_t_and_body() {
        let s = body_signature("k", 1700000000, b"{}");
        assert!(s.starts_with("t=1700000000, v1="), "{s}");
        assert_ne!(s, body_signature("k", 1700000000, b"{ }"));
        assert_ne!(s, body_signature("k", 1700000001, b"{}"));
    }
}
