//! Access-control keys: `[publish_auth]` (signed publish URLs, per app or for every app,
//! with an optional address allowlist) and the API's `[http]` tokens and playback key.
//! Parsing and validation only; the checks themselves are in `crate::auth`.

use serde::{Deserialize, Serialize};

use super::{ConfigProblem, Secret};

/// `[publish_auth]` (one table) or `[[publish_auth]]` (one per group of apps).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PublishAuthSection {
    /// Absent: publishing is open.
    #[default]
    Off,
    One(PublishAuth),
    Many(Vec<PublishAuth>),
}

/// By hand rather than `untagged`, so a typo inside the table is reported by name
/// instead of as "did not match any variant".
impl<'de> Deserialize<'de> for PublishAuthSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = PublishAuthSection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [publish_auth] table or [[publish_auth]] tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                PublishAuth::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(PublishAuthSection::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::<PublishAuth>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(PublishAuthSection::Many)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl PublishAuthSection {
    pub fn entries(&self) -> &[PublishAuth] {
        match self {
            PublishAuthSection::Off => &[],
            PublishAuthSection::One(one) => std::slice::from_ref(one),
            PublishAuthSection::Many(many) => many,
        }
    }

    pub fn is_off(&self) -> bool {
        self.entries().is_empty()
    }

    /// The entry that governs `app`: one naming it, else one for every app. None: `app`
    /// publishes without a signature.
    pub fn for_app(&self, app: &str) -> Option<&PublishAuth> {
        let entries = self.entries();
        entries
            .iter()
            .find(|e| e.apps.iter().any(|a| a == app))
            .or_else(|| entries.iter().find(|e| e.apps.is_empty()))
    }
}

/// One set of publish keys: `txSecret = md5(key + StreamName + txTime)` (SPECS.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishAuth {
    /// The primary key: what `edgerec sign-url` signs with.
    pub key: Secret,
    /// Also accepted, so keys rotate without downtime (encoders still holding URLs
    /// signed with the old key keep publishing until their `txTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_key: Option<Secret>,
    /// The apps this entry covers; empty: every app no other entry names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// Publishers must come from one of these networks (e.g. `10.0.0.0/8`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<String>,
}

impl PublishAuth {
    /// The parsed allowlist (entries that do not parse are reported by validation).
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.allow_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect()
    }
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare address (a network of one).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR network like 10.0.0.0/8"))
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// GET and HEAD only.
    Read,
    /// Everything.
    Admin,
}

/// One API bearer token: given in clear (`token`) or as the hex SHA-256 of it
/// (`token_sha256`), so the config file need not hold a usable secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it: named in logs, never the token itself.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    pub scope: Scope,
}

impl ApiToken {
    /// The token's SHA-256, whichever way it was given (None if neither parses).
    pub fn digest(&self) -> Option<[u8; 32]> {
        match (&self.token, &self.token_sha256) {
            (Some(t), None) => Some(crate::auth::sha256(t.0.as_bytes())),
            (None, Some(h)) => crate::auth::parse_hex32(h),
            _ => None,
        }
    }
}

/// Problems with `[publish_auth]` and the access keys of `[http]`.
pub fn validate(
    publish: &PublishAuthSection,
    tokens: &[ApiToken],
    playback_key: &Option<Secret>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut push = |key: String, message: String| problems.push(ConfigProblem { key, message });
    let entries = publish.entries();
    let mut seen_apps: Vec<&str> = Vec::new();
    let mut every_app = 0;
    for (i, e) in entries.iter().enumerate() {
        let at = |field: &str| {
            if entries.len() == 1 {
                format!("publish_auth.{field}")
            } else {
                format!("publish_auth[{i}].{field}")
            }
        };
        if e.key.0.is_empty() {
            push(at("key"), "must not be empty".into());
        }
        if e.backup_key.as_ref().is_some_and(|k| k.0.is_empty()) {
            push(at("backup_key"), "must not be empty when given".into());
        }
        if e.apps.is_empty() {
            every_app += 1;
        }
        for app in &e.apps {
            if seen_apps.contains(&app.as_str()) {
                push(at("apps"), format!("{app:?} is covered by two entries"));
            }
            seen_apps.push(app);
        }
        for cidr in &e.allow_cidrs {
            if let Err(m) = parse_cidr(cidr) {
                push(at("allow_cidrs"), m);
            }
        }
    }
    if every_app > 1 {
        push(
            "publish_auth.apps".into(),
            "only one entry may cover every app (leave apps out on one entry only)".into(),
        );
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = format!("http.tokens[{i}]");
        if t.name.trim().is_empty() {
            push(format!("{key}.name"), "must not be empty".into());
        } else if names.contains(&t.name.as_str()) {
            push(format!("{key}.name"), format!("{:?} is used twice", t.name));
        }
        names.push(&t.name);
        match (&t.token, &t.token_sha256) {
            (Some(_), Some(_)) | (None, None) => {
                push(key, "give exactly one of token and token_sha256".into())
            }
            (Some(s), None) if s.0.len() < 16 => push(
                format!("{key}.token"),
                "must be at least 16 characters (e.g. openssl rand -hex 24)".into(),
            ),
            (None, Some(h)) if crate::auth::parse_hex32(h).is_none() => push(
                format!("{key}.token_sha256"),
                "must be 64 hex digits (sha256sum of the token)".into(),
            ),
            _ => {}
        }
    }
    if playback_key.as_ref().is_some_and(|k| k.0.len() < 16) {
        push(
            "http.playback_key".into(),
            "must be at least 16 characters (e.g. openssl rand -hex 24)".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn one_table_or_many_and_the_app_lookup() {
        let one = Config::parse("[publish_auth]\nkey = \"k1\"\n").unwrap();
        assert_eq!(one.publish_auth.for_app("any").unwrap().key.0, "k1");
        let many = Config::parse(
            "[[publish_auth]]\nkey = \"k1\"\napps = [\"live\"]\nallow_cidrs = [\"10.0.0.0/8\", \"192.168.1.7\"]\n\
             [[publish_auth]]\nkey = \"k2\"\n",
        )
        .unwrap();
        assert!(many.validate().is_empty(), "{:?}", many.validate());
        assert_eq!(many.publish_auth.for_app("live").unwrap().key.0, "k1");
        assert_eq!(many.publish_auth.for_app("other").unwrap().key.0, "k2");
        assert_eq!(
            many.publish_auth.for_app("live").unwrap().networks().len(),
            2
        );
        let none = Config::parse("").unwrap();
        assert!(none.publish_auth.for_app("live").is_none());
        let only_live = Config::parse("[publish_auth]\nkey = \"k\"\napps = [\"live\"]\n").unwrap();
        assert!(only_live.publish_auth.for_app("open").is_none());
    }

    #[test]
    fn bad_entries_are_named() {
        let c = Config::parse(
            "[[publish_auth]]\nkey = \"\"\nallow_cidrs = [\"10.0.0.0/33\"]\n\
             [[publish_auth]]\nkey = \"k\"\n\
             [http]\nplayback_key = \"short\"\n\
             tokens = [{ name = \"a\", token = \"tiny\", scope = \"read\" },\
                       { name = \"a\", token_sha256 = \"xyz\", scope = \"admin\" },\
                       { name = \"b\", scope = \"admin\" }]\n",
        )
        .unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "publish_auth[0].key",
                "publish_auth[0].allow_cidrs",
                "publish_auth.apps",
                "http.tokens[0].token",
                "http.tokens[1].name",
                "http.tokens[1].token_sha256",
                "http.tokens[2]",
                "http.playback_key",
            ]
        );
    }

    #[test]
    fn a_typo_in_the_table_is_named() {
        let err = Config::parse("[publish_auth]\nkey = \"k\"\nbackupkey = \"x\"\n").unwrap_err();
        assert!(err.contains("backupkey"), "{err}");
    }

    #[test]
    fn an_unknown_scope_is_a_parse_error() {
        let err = Config::parse(
            "[http]\ntokens = [{ name = \"a\", token = \"0123456789abcdef\", scope = \"root\" }]\n",
        )
        .unwrap_err();
        assert!(err.contains("root") || err.contains("scope"), "{err}");
    }
}
