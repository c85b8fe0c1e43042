//! Signed publish URLs (SPECS.md): `rtmp://box/App/Stream?txSecret=S&txTime=T`, where `T`
//! is the expiry in hex unix seconds and `S = md5(key + Stream + T)` over the `T` string
//! as received (so its hex case matters), compared case-insensitively; the primary or the
//! backup key; and the publisher's address checked against the app's allowlist first.
//!
//! [`Refusal`]'s text is what the publisher's `onStatus` and the log say: it names the
//! reason, never a key or the expected signature.

use std::net::IpAddr;

use crate::config::PublishAuth;

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("publisher address {0} is not in the allowlist")]
    AddressNotAllowed(IpAddr),
    #[error("the stream key has no txSecret and txTime (this app needs a signed URL)")]
    Unsigned,
    #[error("txTime {0:?} is not a hex unix time")]
    BadTime(String),
    #[error("the signed URL expired {0} s ago")]
    Expired(u64),
    #[error("txSecret does not match this stream name and txTime")]
    WrongSecret,
}

impl Refusal {
    /// A short label for metrics and log fields.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::AddressNotAllowed(_) => "address",
            Refusal::Unsigned => "unsigned",
            Refusal::BadTime(_) => "bad_time",
            Refusal::Expired(_) => "expired",
            Refusal::WrongSecret => "wrong_secret",
        }
    }
}

/// The `txSecret` for `stream` expiring at `tx_time` (hex, as it will be sent).
pub fn tx_secret(key: &str, stream: &str, tx_time: &str) -> String {
    super::hex_md5(format!("{key}{stream}{tx_time}").as_bytes())
}

/// `?txSecret=..&txTime=..` for `stream` under `key`, valid until `expires_unix_s`.
pub fn signed_query(key: &str, stream: &str, expires_unix_s: u64) -> String {
    let tx_time = format!("{expires_unix_s:X}");
    format!(
        "txSecret={}&txTime={tx_time}",
        tx_secret(key, stream, &tx_time)
    )
}

/// Checks one publish of `stream` (its name without the query) with the stream key's
/// `query`, from `peer`, at `now_unix_s`.
pub fn check(
    auth: &PublishAuth,
    stream: &str,
    query: &str,
    peer: IpAddr,
    now_unix_s: u64,
) -> Result<(), Refusal> {
    let networks = auth.networks();
    let peer = canonical(peer);
    if !networks.is_empty() && !networks.iter().any(|n| n.contains(&peer)) {
        return Err(Refusal::AddressNotAllowed(peer));
    }
    let (secret, time) = (param(query, "txSecret"), param(query, "txTime"));
    let (Some(secret), Some(time)) = (secret, time) else {
        return Err(Refusal::Unsigned);
    };
    let expires = (!time.is_empty() && time.len() <= 16)
        .then(|| u64::from_str_radix(time, 16).ok())
        .flatten()
        .ok_or_else(|| Refusal::BadTime(time.chars().take(24).collect()))?;
    if now_unix_s > expires {
        return Err(Refusal::Expired(now_unix_s - expires));
    }
    let received = secret.to_ascii_lowercase();
    let keys = std::iter::once(&auth.key).chain(auth.backup_key.as_ref());
    for key in keys {
        let expected = tx_secret(&key.0, stream, time);
        if super::constant_time_eq(expected.as_bytes(), received.as_bytes()) {
            return Ok(());
        }
    }
    Err(Refusal::WrongSecret)
}

/// An IPv4 peer seen through a dual-stack socket (`::ffff:10.0.0.5`) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The value of `name` in an `a=1&b=2` query (the first one; no percent-decoding: both
/// values are hex).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const NOW: u64 = 0x5C27_0000;

    fn auth() -> PublishAuth {
        PublishAuth {
            key: Secret("primary-secret".into()),
            backup_key: Some(Secret("old-secret".into())),
            apps: vec![],
            allow_cidrs: vec![],
        }
    }

    fn local() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[test]
    fn the_specs_vector() {
        assert_eq!(
            tx_secret("e12c46f2612d5106e2034781ab261ca3", "test", "5C271099"),
            "f85a2ab363fe4deaffef9754d79da6fe"
        );
    }

    #[test]
    fn a_signed_query_passes_with_either_key() {
        let a = auth();
        let q = signed_query("primary-secret", "stage", NOW + 60);
        assert_eq!(check(&a, "stage", &q, local(), NOW), Ok(()));
        let q = signed_query("old-secret", "stage", NOW + 60);
        assert_eq!(check(&a, "stage", &q, local(), NOW), Ok(()));
        // Other query parameters around it do not matter; the secret's case does not either.
        let q = signed_query("primary-secret", "stage", NOW + 60).to_uppercase();
        let q = q
            .replace("TXSECRET", "txSecret")
            .replace("TXTIME", "txTime");
        assert_eq!(
            check(&a, "stage", &format!("record_id=7&{q}"), local(), NOW),
            Ok(())
        );
    }

    #[test]
    fn every_bad_input_is_refused_with_its_reason() {
        let a = auth();
        let good = |stream: &str| signed_query("primary-secret", stream, NOW + 60);
        let wrong = signed_query("guess", "stage", NOW + 60);
        assert_eq!(
            check(&a, "stage", &wrong, local(), NOW),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(
            check(&a, "stage", &good("other"), local(), NOW),
            Err(Refusal::WrongSecret),
            "a valid URL for another stream name"
        );
        assert_eq!(
            check(&a, "stage", &good("stage"), local(), NOW + 61),
            Err(Refusal::Expired(1))
        );
        assert_eq!(check(&a, "stage", "", local(), NOW), Err(Refusal::Unsigned));
        assert_eq!(
            check(&a, "stage", "txSecret=abc", local(), NOW),
            Err(Refusal::Unsigned)
        );
        assert_eq!(
            check(&a, "stage", "txSecret=abc&txTime=soon", local(), NOW),
            Err(Refusal::BadTime("soon".into()))
        );
        assert_eq!(
            check(&a, "stage", "txSecret=abc&txTime=", local(), NOW),
            Err(Refusal::BadTime(String::new()))
        );
    }

    #[test]
    fn the_hex_case_of_tx_time_is_part_of_the_signature() {
        let a = auth();
        let upper = format!("{:X}", NOW + 0xABC);
        let lower = upper.to_lowercase();
        assert_ne!(upper, lower);
        let over_upper = tx_secret("primary-secret", "stage", &upper);
        let q = format!("txSecret={over_upper}&txTime={upper}");
        assert_eq!(check(&a, "stage", &q, local(), NOW), Ok(()));
        let q = format!("txSecret={over_upper}&txTime={lower}");
        assert_eq!(
            check(&a, "stage", &q, local(), NOW),
            Err(Refusal::WrongSecret)
        );
    }

    #[test]
    fn the_allowlist_comes_first() {
        let mut a = auth();
        a.allow_cidrs = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
        let q = signed_query("primary-secret", "stage", NOW + 60);
        assert_eq!(
            check(&a, "stage", &q, local(), NOW),
            Err(Refusal::AddressNotAllowed(local()))
        );
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(check(&a, "stage", &q, inside, NOW), Ok(()));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(check(&a, "stage", &q, mapped, NOW), Ok(()));
        let v6: IpAddr = "fd12::1".parse().unwrap();
        assert_eq!(check(&a, "stage", &q, v6, NOW), Ok(()));
    }

    #[test]
    fn refusals_never_name_a_key() {
        let a = auth();
        for r in [
            check(&a, "s", "", local(), NOW),
            check(&a, "s", "txSecret=0&txTime=1", local(), NOW),
            check(&a, "s", &signed_query("x", "s", NOW + 9), local(), NOW),
        ] {
            let text = r.unwrap_err().to_string();
            assert!(!text.contains("secret-"), "{text}");
            assert!(
                !text.contains(&tx_secret("primary-secret", "s", "1")),
                "{text}"
            );
        }
    }
}
