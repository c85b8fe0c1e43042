//! API bearer tokens: `Authorization: Bearer <token>`, matched by SHA-256 (so a config
//! may hold only the hash) in constant time, each with a scope: `read` may GET and HEAD,
//! `admin` may do everything.

use crate::config::{ApiToken, Scope};

/// The configured tokens, by digest.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    tokens: Vec<(String, [u8; 32], Scope)>,
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that matches none configured (401).
    Unknown,
    /// A `read` token on a request that changes something (403).
    Scope,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "this API needs a token: send Authorization: Bearer <token>",
            Denied::Unknown => "the token is not valid here",
            Denied::Scope => "this token may only read (GET); changes need an admin token",
        }
    }
}

impl TokenSet {
    pub fn new(tokens: &[ApiToken]) -> TokenSet {
        TokenSet {
            tokens: tokens
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.digest()?, t.scope)))
                .collect(),
        }
    }

    /// No tokens: the API is open (the config allows that only on loopback or on purpose).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The holder's name and scope for an `Authorization` header value.
    pub fn identify(&self, authorization: Option<&str>) -> Result<(&str, Scope), Denied> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        let digest = super::sha256(token.as_bytes());
        // Every entry is compared, so the time taken does not say which one matched.
        let mut found = None;
        for (name, d, scope) in &self.tokens {
            if super::constant_time_eq(d, &digest) && found.is_none() {
                found = Some((name.as_str(), *scope));
            }
        }
        found.ok_or(Denied::Unknown)
    }

    /// Whether the header lets a request through; `read_only` for GET and HEAD.
    pub fn authorize(&self, authorization: Option<&str>, read_only: bool) -> Result<&str, Denied> {
        let (name, scope) = self.identify(authorization)?;
        match (scope, read_only) {
            (Scope::Admin, _) | (Scope::Read, true) => Ok(name),
            (Scope::Read, false) => Err(Denied::Scope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn set() -> TokenSet {
        TokenSet::new(&[
            ApiToken {
                name: "ops".into(),
                token: Some(Secret("admin-token-0123456789".into())),
                token_sha256: None,
                scope: Scope::Admin,
            },
            ApiToken {
                name: "wall".into(),
                token: None,
                token_sha256: Some(crate::auth::hex(&crate::auth::sha256(
                    b"read-token-0123456789",
                ))),
                scope: Scope::Read,
            },
        ])
    }

    #[test]
    fn scopes() {
        let s = set();
        assert_eq!(
            s.authorize(Some("Bearer admin-token-0123456789"), false),
            Ok("ops")
        );
        assert_eq!(
            s.authorize(Some("bearer read-token-0123456789"), true),
            Ok("wall")
        );
        assert_eq!(
            s.authorize(Some("Bearer read-token-0123456789"), false),
            Err(Denied::Scope)
        );
    }

    #[test]
    fn missing_and_wrong_tokens() {
        let s = set();
        assert_eq!(s.authorize(None, true), Err(Denied::Missing));
        assert_eq!(s.authorize(Some("Basic abc"), true), Err(Denied::Missing));
        assert_eq!(s.authorize(Some("Bearer "), true), Err(Denied::Missing));
        assert_eq!(
            s.authorize(Some("Bearer admin-token-012345678"), true),
            Err(Denied::Unknown)
        );
    }
}
