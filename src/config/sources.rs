//! `[[source]]`: RTSP cameras the box pulls from and records like a publish.
//!
//! Owns: the source entry (also the body of `POST /api/v1/sources`), its defaults, its
//! validation (names, URL, transport, duplicates), and the credential-free views of its
//! URL: [`SourceSpec::redacted_url`] for everything shown (API, logs, callbacks) and
//! [`SourceSpec::split_credentials`] for the client. Credentials never leave this type
//! except to the RTSP client. `rtsps://` needs a way to verify the camera: `ca_file` or
//! a pinned `tls_fingerprint`.

use serde::{Deserialize, Serialize};

use super::ConfigProblem;
use crate::stream_key::{validate_name, StreamKey};

/// How RTP reaches the box from a camera.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub enum RtspTransport {
    /// Interleaved on the RTSP TCP connection (works through NAT and firewalls).
    #[default]
    Tcp,
    /// RTP/RTCP over UDP (a LAN only: no reorder buffer).
    Udp,
}

impl RtspTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        }
    }
}

/// One camera to pull.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct SourceSpec {
    /// Names the source in the API. Default `<app>-<stream>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub app: String,
    pub stream: String,
    /// `rtsp://[user:pass@]host[:port]/path`.
    pub url: String,
    #[serde(default)]
    pub transport: RtspTransport,
    /// A camera that keeps its session but sends no media for this long is reconnected.
    /// Default 10 (2-300).
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// `rtsps://` only: a PEM bundle the camera's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, schema(value_type = Option<String>))]
    pub ca_file: Option<std::path::PathBuf>,
    /// `rtsps://` only: the SHA-256 fingerprint of the camera's (self-signed)
    /// certificate, `AA:BB:...` as `openssl x509 -fingerprint -sha256` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Move the camera's audio onto its video's timeline when its first RTCP sender
    /// reports disagree with its RTP-Info (default true). Turn off for a sender that
    /// dates its reports by send time (GStreamer's default), which skews them by each
    /// track's encoder latency.
    #[serde(default = "yes")]
    pub align_by_sender_reports: bool,
}

fn default_idle_timeout_s() -> u64 {
    10
}

fn yes() -> bool {
    true
}

impl SourceSpec {
    /// The source's name in the API.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.app, self.stream))
    }

    pub fn stream_key(&self) -> StreamKey {
        StreamKey::new(&self.app, &self.stream)
    }

    /// The URL with any user and password replaced by `***` (what is ever shown).
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) => {
                if !u.username().is_empty() || u.password().is_some() {
                    let _ = u.set_username("***");
                    let _ = u.set_password(None);
                }
                u.to_string()
            }
            Err(_) => "(unparseable url)".into(),
        }
    }

    /// The URL without credentials, and the (percent-decoded) user and password.
    pub fn split_credentials(&self) -> Result<(url::Url, Option<(String, String)>), String> {
        let mut u = url::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        let creds = if u.username().is_empty() && u.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let user = decode(u.username());
            let pass = decode(u.password().unwrap_or(""));
            let _ = u.set_username("");
            let _ = u.set_password(None);
            Some((user, pass))
        };
        Ok((u, creds))
    }

    /// Every problem with this entry, keys prefixed with `key` (e.g. `source[0]`).
    pub fn problems(&self, key: &str) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            })
        };
        for (field, value) in [("app", &self.app), ("stream", &self.stream)] {
            if let Err(e) = validate_name(value) {
                bad(field, e.to_string());
            }
        }
        if let Some(name) = &self.name {
            if let Err(e) = validate_name(name) {
                bad("name", e.to_string());
            }
        }
        match url::Url::parse(&self.url) {
            Err(e) => bad("url", format!("not a URL: {e}")),
            Ok(u) if u.scheme() == "rtsps" => {
                if self.transport == RtspTransport::Udp {
                    bad(
                        "transport",
                        "rtsps:// carries RTP on its TLS connection: use tcp".into(),
                    );
                }
                if self.ca_file.is_none() && self.tls_fingerprint.is_none() {
                    bad(
                        "url",
                        "rtsps:// needs ca_file (the camera's CA) or tls_fingerprint (its \
                         certificate's SHA-256)"
                            .into(),
                    );
                }
            }
            Ok(u) if u.scheme() != "rtsp" => bad(
                "url",
                format!("scheme {:?}: expected rtsp:// or rtsps://", u.scheme()),
            ),
            Ok(_) if self.ca_file.is_some() || self.tls_fingerprint.is_some() => bad(
                "url",
                "ca_file and tls_fingerprint apply to rtsps:// only".into(),
            ),
            Ok(u) if u.host_str().is_none_or(str::is_empty) => bad("url", "has no host".into()),
            Ok(_) => {}
        }
        if let Some(pin) = &self.tls_fingerprint {
            if pin.chars().filter(char::is_ascii_hexdigit).count() != 64 {
                bad(
                    "tls_fingerprint",
                    "expected a SHA-256 fingerprint: 32 bytes in hex (AA:BB:...)".into(),
                );
            }
        }
        if !(2..=300).contains(&self.idle_timeout_s) {
            bad(
                "idle_timeout_s",
                format!("{} is out of range; allowed 2-300", self.idle_timeout_s),
            );
        }
        out
    }
}

/// Validates the `[[source]]` list: each entry, and no two sources (or names) alike.
pub fn validate(sources: &[SourceSpec], problems: &mut Vec<ConfigProblem>) {
    let mut names = std::collections::HashSet::new();
    let mut streams = std::collections::HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        let key = format!("source[{i}]");
        problems.extend(s.problems(&key));
        if !names.insert(s.name()) {
            problems.push(ConfigProblem {
                key: format!("{key}.name"),
                message: format!("{:?} names another source too", s.name()),
            });
        }
        if !streams.insert(s.stream_key()) {
            problems.push(ConfigProblem {
                key: key.clone(),
                message: format!("{} is pulled by another source too", s.stream_key()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> SourceSpec {
        SourceSpec {
            name: None,
            app: "cam".into(),
            stream: "stage-left".into(),
            url: url.into(),
            transport: RtspTransport::Tcp,
            idle_timeout_s: 10,
            ca_file: None,
            tls_fingerprint: None,
            align_by_sender_reports: true,
        }
    }

    #[test]
    fn credentials_are_redacted_and_split() {
        let s = spec("rtsp://admin:p%40ss@192.168.1.20:554/stream1");
        assert_eq!(s.redacted_url(), "rtsp://***@192.168.1.20:554/stream1");
        let (u, creds) = s.split_credentials().unwrap();
        assert_eq!(u.as_str(), "rtsp://192.168.1.20:554/stream1");
        assert_eq!(creds, Some(("admin".into(), "p@ss".into())));
        let plain = spec("rtsp://10.0.0.1/live");
        assert_eq!(plain.redacted_url(), "rtsp://10.0.0.1/live");
        assert_eq!(plain.split_credentials().unwrap().1, None);
    }

    #[test]
    fn bad_entries_name_their_key() {
        let mut bad = spec("rtsps://cam/x");
        bad.stream = "../etc".into();
        bad.transport = RtspTransport::Udp;
        bad.idle_timeout_s = 1;
        let keys: Vec<String> = bad
            .problems("source[0]")
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "source[0].stream",
                "source[0].transport",
                "source[0].url",
                "source[0].idle_timeout_s"
            ]
        );
        assert_eq!(spec("http://x/").problems("s").len(), 1);
        let mut pinned = spec("rtsps://cam/x");
        pinned.tls_fingerprint = Some("AB:CD".into());
        assert_eq!(pinned.problems("s")[0].key, "s.tls_fingerprint");
        pinned.tls_fingerprint = Some("ab".repeat(32));
        assert!(pinned.problems("s").is_empty());
        let mut plain = spec("rtsp://cam/x");
        plain.ca_file = Some("/ca.pem".into());
        assert_eq!(plain.problems("s")[0].key, "s.url");
        let mut problems = Vec::new();
        validate(&[spec("rtsp://a/"), spec("rtsp://b/")], &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
