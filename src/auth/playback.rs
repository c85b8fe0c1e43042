//! Signed playback URLs, for players that cannot send an `Authorization` header:
//! `PATH?exp=E&sig=S`, with `E` the expiry in unix seconds and
//! `S = hex HMAC-SHA256(playback_key, SCOPE + "\n" + E)`, where `SCOPE` is `PATH` up to
//! and including its last `/`. One signature so covers a playlist and every segment
//! beside it (`/hls/recordings/ID/`), and a signed playlist hands its segments the same
//! query: ffplay or hls.js play a recording from one URL.

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `exp` and `sig`: not a signed URL at all.
    Unsigned,
    Malformed,
    Expired,
    BadSignature,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::Unsigned => "not signed",
            Denied::Malformed => "the playback signature is malformed",
            Denied::Expired => "the playback URL has expired",
            Denied::BadSignature => "the playback signature does not match this path",
        }
    }
}

/// What one signature covers: `path` up to and including its last `/`.
pub fn scope_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..=i])
}

/// `exp=E&sig=S` for everything under `scope`.
pub fn query(key: &str, scope: &str, expires_unix_s: u64) -> String {
    let mac = super::hmac_sha256(
        key.as_bytes(),
        format!("{scope}\n{expires_unix_s}").as_bytes(),
    );
    format!("exp={expires_unix_s}&sig={}", super::hex(&mac))
}

/// `path?exp=..&sig=..`.
pub fn sign_path(key: &str, path: &str, expires_unix_s: u64) -> String {
    format!("{path}?{}", query(key, scope_of(path), expires_unix_s))
}

/// Checks the `exp` and `sig` of `query` for a request of `path`; the expiry when valid.
pub fn verify(key: &str, path: &str, query_text: &str, now_unix_s: u64) -> Result<u64, Denied> {
    let param = |name: &str| {
        query_text
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let (exp, sig) = match (param("exp"), param("sig")) {
        (None, None) => return Err(Denied::Unsigned),
        (Some(e), Some(s)) => (e, s),
        _ => return Err(Denied::Malformed),
    };
    let exp: u64 = exp.parse().map_err(|_| Denied::Malformed)?;
    let sig = super::parse_hex32(sig).ok_or(Denied::Malformed)?;
    let expected = super::hmac_sha256(
        key.as_bytes(),
        format!("{}\n{exp}", scope_of(path)).as_bytes(),
    );
    if !super::constant_time_eq(&expected, &sig) {
        return Err(Denied::BadSignature);
    }
    if now_unix_s > exp {
        return Err(Denied::Expired);
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "playback-key-0123456789";

    #[test]
    fn one_signature_covers_the_playlist_and_its_segments() {
        let url = sign_path(KEY, "/hls/recordings/r1/index.m3u8", 1000);
        let (path, q) = url.split_once('?').unwrap();
        assert_eq!(verify(KEY, path, q, 999), Ok(1000));
        assert_eq!(
            verify(KEY, "/hls/recordings/r1/00000007.ts", q, 999),
            Ok(1000)
        );
        assert_eq!(
            verify(KEY, "/hls/recordings/r2/00000007.ts", q, 999),
            Err(Denied::BadSignature),
            "another recording"
        );
    }

    #[test]
    fn tampered_expired_and_malformed() {
        let q = query(KEY, "/hls/recordings/r1/", 1000);
        let p = "/hls/recordings/r1/index.m3u8";
        assert_eq!(verify(KEY, p, &q, 1001), Err(Denied::Expired));
        let later = q.replace("exp=1000", "exp=2000");
        assert_eq!(verify(KEY, p, &later, 999), Err(Denied::BadSignature));
        let mut flipped = q.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verify(KEY, p, &flipped, 999), Err(Denied::BadSignature));
        assert_eq!(
            verify("other-key-0123456789", p, &q, 999),
            Err(Denied::BadSignature)
        );
        assert_eq!(verify(KEY, p, "", 999), Err(Denied::Unsigned));
        assert_eq!(verify(KEY, p, "exp=1000", 999), Err(Denied::Malformed));
        assert_eq!(verify(KEY, p, "exp=x&sig=00", 999), Err(Denied::Malformed));
    }
}
