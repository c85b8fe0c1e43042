//! The TOML configuration: every key, its default, and validation with messages that name
//! the key and the allowed range.
//!
//! Owns: parsing (`deny_unknown_fields`, so a typo is an error, not a silent default),
//! defaults (the embedded default records to `./edgerec-data` with no file at all), and
//! [`Config::validate`], which reports *every* problem at once so `edgerec check-config`
//! can list them. Never touches the disk beyond reading the file it is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod access;
pub mod naming;
mod rtsp;
pub mod sources;
pub mod templates;
mod upload;

pub use access::{parse_cidr, ApiToken, PublishAuth, PublishAuthSection, Scope};
pub use rtsp::RtspConfig;
pub use sources::{RtspTransport, SourceSpec};
pub use templates::{Decision, FileOutput, Format, HlsOutput, Rule, Template};
pub use upload::{
    CallbackConfig, OnFull, S3Config, S3Credentials, Secret, StorageConfig, UploadConfig,
};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the index and the media live. Default `./edgerec-data`.
    pub data_dir: PathBuf,
    pub rtmp: RtmpConfig,
    /// `[rtmps]`: RTMP over TLS. Absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtmps: Option<RtmpsConfig>,
    /// `[rtsp]`: the RTSP publish listener (off unless `listen` is set).
    pub rtsp: RtspConfig,
    pub http: HttpConfig,
    pub record: RecordConfig,
    pub upload: UploadConfig,
    pub callback: CallbackConfig,
    pub storage: StorageConfig,
    /// `[publish_auth]` or `[[publish_auth]]`: signed publish URLs. Absent: open.
    #[serde(skip_serializing_if = "PublishAuthSection::is_off")]
    pub publish_auth: PublishAuthSection,
    /// `[[template]]`: recording templates (see `templates`). None: the built-in
    /// `default` (HLS only) records every stream.
    #[serde(rename = "template", skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<Template>,
    /// `[[rule]]`: which streams record with which template.
    #[serde(rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// `[[source]]`: RTSP cameras to pull and record (see `sources`).
    #[serde(rename = "source", skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceSpec>,
}

/// `[rtmp]`: the RTMP publish listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// Listen address. Default `0.0.0.0:1935`.
    pub listen: SocketAddr,
    /// Most simultaneous RTMP connections; more are closed at accept. Default 64 (1-4096).
    pub max_connections: usize,
    /// Most simultaneous connections from one address (IPv6: one /64), so one host cannot
    /// take every slot. Default 16 (1-4096).
    pub max_connections_per_ip: usize,
    /// A peer that has not completed the handshake and `publish` within this many seconds
    /// is disconnected. Default 10 (1-300).
    pub handshake_timeout_s: u64,
    /// A connection that sends nothing for this many seconds is closed. Default 30 (1-3600).
    pub idle_timeout_s: u64,
    /// A peer that does not read our replies for this many seconds is closed. Default 10 (1-300).
    pub write_timeout_s: u64,
    /// Largest RTMP message accepted, in KiB (a big keyframe must fit). Default 8192 (64-65536).
    pub max_message_kb: u32,
}

/// `[rtmps]`: the RTMPS (RTMP over TLS) publish listener. It shares `[rtmp]`'s limits and
/// timeouts (`max_connections` and `max_connections_per_ip` count both listeners; the TLS handshake counts against
/// `handshake_timeout_s`). Certificates are read again on SIGHUP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpsConfig {
    /// Listen address. Default `0.0.0.0:1936`.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first. Default none: with `key_file` also unset, a
    /// self-signed certificate is generated once in `DATA_DIR/tls/` and reused (its SHA-256
    /// fingerprint is logged at start, for pinning in the encoder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[http]`: the local control API and HLS playback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Most simultaneous API connections; more are closed at accept. Default 256 (1-4096).
    pub max_connections: usize,
    /// Most simultaneous API connections from one address (IPv6: one /64), so one host
    /// cannot lock the rest out. Default 64 (1-4096).
    pub max_connections_per_ip: usize,
    /// Bearer tokens (`Authorization: Bearer ...`). None: the API is open, which is only
    /// allowed on loopback unless `allow_unauthenticated` says otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<ApiToken>,
    /// Signs playback URLs (`?exp=...&sig=...`), so players that cannot send headers play
    /// recordings. None: playback needs a token like the rest of the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playback_key: Option<Secret>,
    /// How long the playback URLs the API hands out stay valid. Default 86400 (60-2592000).
    pub playback_url_ttl_s: u64,
    /// Listen beyond loopback with no tokens, on purpose (a trusted, private network).
    pub allow_unauthenticated: bool,
    /// PEM certificate chain for HTTPS, leaf first. Default none (plain HTTP). Set with
    /// `key_file`; reloaded on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[record]`: how streams become recordings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Target segment length in seconds; segments are cut at the first keyframe at or
    /// after it. Default 4 (1-60).
    pub segment_duration_s: u32,
    /// HLS resume window: a publish of the same stream within this many seconds of the
    /// last one ending continues the same recording. 0 disables. Default 30 (0-1800).
    pub flow_continue_duration_s: u32,
    /// How often buffered media is made durable (fdatasync): the recovery point objective.
    /// Default 1000 (100-60000).
    pub flush_interval_ms: u64,
    /// Segments in the live sliding-window playlist. Default 6 (2-100).
    pub live_window_segments: usize,
    /// Per-stream budget, in KiB, of media waiting for the flash writer. Past it the
    /// current segment is closed with a gap instead of stalling the encoder. Default 16384
    /// (256-1048576).
    pub writer_budget_kb: usize,
    /// The same for all streams together, so a card that stalls for every stream cannot
    /// make the daemon hold streams x `writer_budget_kb`. Default 262144 (1024-16777216).
    pub writer_budget_total_kb: usize,
    /// The look-back every live stream that nothing records keeps in RAM, so a highlight
    /// clip (a task with `pre_roll_s`) can begin before it was asked for: seconds
    /// (0-60, default 30) and MiB per stream (0-256, default 8); either 0 turns it off.
    pub lookback_s: u32,
    pub lookback_mib: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./edgerec-data"),
            rtmp: RtmpConfig::default(),
            rtmps: None,
            rtsp: RtspConfig::default(),
            http: HttpConfig::default(),
            record: RecordConfig::default(),
            upload: UploadConfig::default(),
            callback: CallbackConfig::default(),
            storage: StorageConfig::default(),
            publish_auth: PublishAuthSection::Off,
            templates: Vec::new(),
            rules: Vec::new(),
            sources: Vec::new(),
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            max_connections: 64,
            max_connections_per_ip: 16,
            handshake_timeout_s: 10,
            idle_timeout_s: 30,
            write_timeout_s: 10,
            max_message_kb: 8192,
        }
    }
}

impl Default for RtmpsConfig {
    fn default() -> Self {
        RtmpsConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 1936)),
            cert_file: None,
            key_file: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 256,
            max_connections_per_ip: 64,
            tokens: Vec::new(),
            playback_key: None,
            playback_url_ttl_s: 86_400,
            allow_unauthenticated: false,
            cert_file: None,
            key_file: None,
        }
    }
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            segment_duration_s: 4,
            flow_continue_duration_s: 30,
            flush_interval_ms: 1000,
            live_window_segments: 6,
            writer_budget_kb: 16384,
            writer_budget_total_kb: 262_144,
            lookback_s: 30,
            lookback_mib: 8,
        }
    }
}

impl RecordConfig {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn resume_window(&self) -> Duration {
        Duration::from_secs(u64::from(self.flow_continue_duration_s))
    }
}

/// One thing wrong with a configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Loading failed: the file could not be read or parsed, or it parsed but is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n  {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Parses TOML text (no validation). The error text names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Every problem with the values, each naming its key and the allowed range.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
            if value < lo || value > hi {
                problems.push(ConfigProblem {
                    key: key.to_owned(),
                    message: format!("{value} is out of range; allowed {lo}-{hi}"),
                });
            }
        };
        let r = &self.rtmp;
        range("rtmp.max_connections", r.max_connections as u64, 1, 4096);
        range(
            "rtmp.max_connections_per_ip",
            r.max_connections_per_ip as u64,
            1,
            4096,
        );
        range("rtmp.handshake_timeout_s", r.handshake_timeout_s, 1, 300);
        range("rtmp.idle_timeout_s", r.idle_timeout_s, 1, 3600);
        range("rtmp.write_timeout_s", r.write_timeout_s, 1, 300);
        range(
            "rtmp.max_message_kb",
            u64::from(r.max_message_kb),
            64,
            65536,
        );
        let c = &self.record;
        range(
            "record.segment_duration_s",
            u64::from(c.segment_duration_s),
            1,
            60,
        );
        range(
            "record.flow_continue_duration_s",
            u64::from(c.flow_continue_duration_s),
            0,
            1800,
        );
        range("record.flush_interval_ms", c.flush_interval_ms, 100, 60_000);
        range(
            "record.live_window_segments",
            c.live_window_segments as u64,
            2,
            100,
        );
        range(
            "record.writer_budget_kb",
            c.writer_budget_kb as u64,
            256,
            1_048_576,
        );
        range(
            "record.writer_budget_total_kb",
            c.writer_budget_total_kb as u64,
            1024,
            16_777_216,
        );
        range("record.lookback_s", u64::from(c.lookback_s), 0, 60);
        range("record.lookback_mib", u64::from(c.lookback_mib), 0, 256);
        range(
            "http.max_connections",
            self.http.max_connections as u64,
            1,
            4096,
        );
        range(
            "http.max_connections_per_ip",
            self.http.max_connections_per_ip as u64,
            1,
            4096,
        );
        range(
            "http.playback_url_ttl_s",
            self.http.playback_url_ttl_s,
            60,
            2_592_000,
        );
        rtsp::validate(&self.rtsp, &mut problems);
        upload::validate(&self.upload, &self.callback, &self.storage, &mut problems);
        access::validate(
            &self.publish_auth,
            &self.http.tokens,
            &self.http.playback_key,
            &mut problems,
        );
        if !self.http.listen.ip().is_loopback()
            && self.http.tokens.is_empty()
            && !self.http.allow_unauthenticated
        {
            problems.push(ConfigProblem {
                key: "http.listen".into(),
                message: format!(
                    "{} is reachable beyond this box and no http.tokens are configured; add \
                     tokens, listen on 127.0.0.1, or set http.allow_unauthenticated = true \
                     on purpose",
                    self.http.listen
                ),
            });
        }
        templates::validate(&self.templates, &self.rules, &mut problems);
        sources::validate(&self.sources, &mut problems);
        if self.data_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem {
                key: "data_dir".into(),
                message: "must not be empty".into(),
            });
        }
        if self.rtmp.listen == self.http.listen && self.rtmp.listen.port() != 0 {
            problems.push(ConfigProblem {
                key: "http.listen".into(),
                message: format!("{} is also rtmp.listen", self.http.listen),
            });
        }
        tls_problems(self, &mut problems);
        problems
    }

    /// Whether the file holds a usable secret (keys, clear-text tokens, store credentials),
    /// so that it must not be readable by every user of the box.
    pub fn holds_secrets(&self) -> bool {
        let set = |s: &Secret| !s.0.is_empty();
        let s3 = &self.upload.s3;
        self.publish_auth.entries().iter().any(|e| set(&e.key))
            || self
                .http
                .tokens
                .iter()
                .any(|t| t.token.as_ref().is_some_and(set))
            || self.http.playback_key.as_ref().is_some_and(set)
            || set(&self.callback.key)
            || set(&s3.access_key)
            || set(&s3.secret_key)
            || set(&s3.session_token)
    }

    /// What is allowed but probably a mistake: said by `check-config` and logged at start.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut warnings = Vec::new();
        if !self.rtmp.listen.ip().is_loopback() && self.publish_auth.is_off() {
            warnings.push(ConfigProblem {
                key: "publish_auth".into(),
                message: format!(
                    "RTMP listens on {} with publish authentication off: anyone who reaches \
                     it can publish to any stream name (see [publish_auth])",
                    self.rtmp.listen
                ),
            });
        }
        warnings.extend(rtsp::warning(&self.rtsp, self.publish_auth.is_off()));
        if self.http.listen.ip().is_loopback() || !self.http.allow_unauthenticated {
            return warnings;
        }
        if self.http.tokens.is_empty() {
            warnings.push(ConfigProblem {
                key: "http.allow_unauthenticated".into(),
                message: format!(
                    "the API on {} has no tokens: anyone who reaches it can delete and change \
                     recordings",
                    self.http.listen
                ),
            });
        }
        warnings
    }

    /// The media folder: `DATA_DIR/media`.
    pub fn media_dir(&self) -> PathBuf {
        self.data_dir.join("media")
    }

    /// The sled index folder: `DATA_DIR/index`.
    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }

    /// Where the self-signed RTMPS certificate lives: `DATA_DIR/tls`.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

/// `cert_file` and `key_file` come in pairs, and `[rtmps]` needs a port of its own.
fn tls_problems(config: &Config, problems: &mut Vec<ConfigProblem>) {
    let mut pair = |section: &str, cert: &Option<PathBuf>, key: &Option<PathBuf>| {
        let missing = match (cert, key) {
            (Some(_), None) => "key_file",
            (None, Some(_)) => "cert_file",
            _ => return,
        };
        let set = if missing == "key_file" {
            "cert_file"
        } else {
            "key_file"
        };
        problems.push(ConfigProblem {
            key: format!("{section}.{missing}"),
            message: format!("must be set with {section}.{set} (both or neither)"),
        });
    };
    pair("http", &config.http.cert_file, &config.http.key_file);
    if let Some(r) = &config.rtmps {
        pair("rtmps", &r.cert_file, &r.key_file);
        for (other, addr) in [("rtmp", config.rtmp.listen), ("http", config.http.listen)] {
            if r.listen == addr && addr.port() != 0 {
                problems.push(ConfigProblem {
                    key: "rtmps.listen".into(),
                    message: format!("{} is also {other}.listen", r.listen),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_matches_the_contract() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.data_dir, PathBuf::from("./edgerec-data"));
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.record.segment_duration_s, 4);
        assert_eq!(c.record.flow_continue_duration_s, 30);
        assert_eq!(c.record.flush_interval_ms, 1000);
    }

    #[test]
    fn contract_keys_parse() {
        let c = Config::parse(
            r#"
            data_dir = "/var/lib/edgerec"
            [rtmp]
            listen = "127.0.0.1:19350"
            [http]
            listen = "127.0.0.1:18080"
            [record]
            segment_duration_s = 2
            flow_continue_duration_s = 0
            flush_interval_ms = 500
            "#,
        )
        .unwrap();
        assert_eq!(c.record.segment_duration_s, 2);
        assert_eq!(c.record.flow_continue_duration_s, 0);
        assert_eq!(c.rtmp.listen.port(), 19350);
        assert_eq!(c.rtmp.max_connections, 64, "unset keys keep defaults");
    }

    #[test]
    fn templates_and_rules_parse_from_the_contract() {
        let c = Config::parse(
            r#"
            [[template]]
            name = "lecture"
            hls = { enabled = true, flow_continue_duration_s = 300 }
            mp4 = { enabled = true, record_interval_s = 3600, file_name = "{StreamID}_{StartYear}{StartMonth}{StartDay}_{StartHour}{StartMinute}{StartSecond}" }
            aac = { enabled = true }

            [[rule]]
            app = "live"
            template = "lecture"

            [[rule]]
            app = "live"
            stream = "backstage"
            enabled = false
            "#,
        )
        .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let t = &c.templates[0];
        assert_eq!(t.formats(), [Format::Hls, Format::Mp4, Format::Aac]);
        assert_eq!(t.resume_window_s(30), 300);
        assert_eq!(t.file_output(Format::Mp4).unwrap().record_interval_s, 3600);
        assert_eq!(t.file_output(Format::Aac).unwrap().record_interval_s, 1800);
        assert!(!c.rules[1].enabled);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::parse("[record]\nsegment_duration = 4\n").unwrap_err();
        assert!(err.contains("segment_duration"), "{err}");
    }

    #[test]
    fn tls_contract_keys_parse() {
        let c = Config::parse(
            r#"
            [http]
            cert_file = "/etc/edgerec/tls/api.pem"
            key_file = "/etc/edgerec/tls/api.key"
            [rtmps]
            listen = "0.0.0.0:1936"
            cert_file = "/etc/edgerec/tls/rtmps.pem"
            key_file = "/etc/edgerec/tls/rtmps.key"
            "#,
        )
        .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let r = c.rtmps.as_ref().unwrap();
        assert_eq!(r.listen.port(), 1936);
        assert_eq!(
            r.key_file.as_deref(),
            Some(Path::new("/etc/edgerec/tls/rtmps.key"))
        );
        assert_eq!(
            c.http.cert_file.as_deref(),
            Some(Path::new("/etc/edgerec/tls/api.pem"))
        );
        assert!(Config::default().rtmps.is_none(), "RTMPS is off by default");
        let bare = Config::parse("[rtmps]\n").unwrap();
        assert_eq!(
            bare.rtmps.unwrap(),
            RtmpsConfig::default(),
            "self-signed on 1936"
        );
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let c = Config::parse(
            "[http]\ncert_file = \"a.pem\"\n[rtmps]\nlisten = \"0.0.0.0:1935\"\nkey_file = \"b.key\"\n",
        )
        .unwrap();
        let problems = c.validate();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["http.key_file", "rtmps.cert_file", "rtmps.listen"]);
        assert!(
            problems[0].message.contains("both or neither"),
            "{}",
            problems[0]
        );
        assert!(
            problems[2].message.contains("rtmp.listen"),
            "{}",
            problems[2]
        );
    }

    #[test]
    fn every_range_problem_is_reported() {
        let mut c = Config::default();
        c.record.segment_duration_s = 0;
        c.record.flow_continue_duration_s = 1801;
        c.record.flush_interval_ms = 50;
        let problems = c.validate();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "record.segment_duration_s",
                "record.flow_continue_duration_s",
                "record.flush_interval_ms"
            ]
        );
        assert!(problems[1].message.contains("0-1800"), "{}", problems[1]);
    }
}
