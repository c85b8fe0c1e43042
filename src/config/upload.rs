//! The upload side of the configuration: `[upload]`, `[upload.s3]`, `[callback]` and
//! `[storage]` (disk watermarks), their defaults, validation and credential lookup.
//!
//! Secrets are held in [`Secret`], whose `Debug` prints `***`, so a logged config never
//! shows a key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// A credential: serialised as is, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// `[upload]`: shipping finished recordings to the VOD store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Off by default: the embedded config records locally only.
    pub enabled: bool,
    /// Objects sent at once. Default 2 (1-16).
    pub concurrency: usize,
    /// Multipart part size in MiB; objects at least this big use multipart. Default 8 (5-512).
    pub part_size_mb: u64,
    /// Upload rate cap over all workers, kbit/s; 0 = none. Default 0.
    pub bandwidth_limit_kbps: u64,
    /// Local files of an uploaded recording are evicted this long after its upload.
    /// Default 86400 (0 = at once).
    pub keep_local_after_upload_s: u64,
    /// Failures of one object (a rejected request, an unreadable file) before it is parked
    /// as failed until retried from the API. Outages and credential errors never park an
    /// object. Default 10 (1-1000).
    pub max_attempts: u32,
    /// Object folder name for a recording, under `<prefix>/<app>/<stream>/`. Placeholders
    /// `{StreamID}`, `{StartYear}` ... `{StartMillisecond}`, `{RecordingID}`. End-time
    /// placeholders are not allowed: segments are uploaded while the recording goes on.
    pub file_name: String,
    /// Base of the public playlist URL in callbacks (`<base>/<key>`). Default: the
    /// endpoint's bucket URL.
    pub public_base_url: Option<String>,
    pub s3: S3Config,
}

/// `[upload.s3]`: an S3-compatible store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http(s)://host[:port]` of the S3 API.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Path-style URLs (`endpoint/bucket/key`) instead of virtual-host style. Default true.
    pub path_style: bool,
    /// Credentials: these keys, else `EDGEREC_S3_ACCESS_KEY`/`EDGEREC_S3_SECRET_KEY`/
    /// `EDGEREC_S3_SESSION_TOKEN` (or the `AWS_*` names), else `credentials_file`.
    pub access_key: Secret,
    pub secret_key: Secret,
    pub session_token: Secret,
    /// An AWS-style credentials file (`[default]` with `aws_access_key_id`, ...).
    pub credentials_file: Option<PathBuf>,
    /// Key prefix (no leading or trailing `/`).
    pub prefix: String,
    /// Extra PEM CA bundle trusted besides the built-in roots (private stores).
    pub ca_file: Option<PathBuf>,
}

/// `[callback]`: the completion callback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    /// Where to POST; empty = no callbacks.
    pub url: String,
    /// Signing key: `sign` = MD5(key + t).
    pub key: Secret,
    /// Seconds between delivery attempts. Default 60 (1-86400).
    pub retry_interval_s: u64,
    /// Attempts before the callback is kept as failed. Default 12 (1-10000).
    pub max_attempts: u32,
    /// Body field `appid`. Default 0.
    pub appid: u64,
    /// Body field `app` (the push domain). Default "".
    pub domain: String,
    /// Allow an `http://` URL (the body and its signature then cross the network in
    /// clear). Default false: only `https://`.
    pub allow_insecure: bool,
    /// Also send `event_type` 332 status callbacks (`record_start_succeeded`,
    /// `record_paused`, `record_resumed`, `record_ended`, `record_error`) through the same
    /// outbox. Default false.
    pub status_events: bool,
}

/// What to do when the disk stays above the high watermark with nothing evictable.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Refuse new recordings; keep everything not yet uploaded.
    StopNew,
    /// Delete the oldest closed recordings even if not uploaded (explicit opt-in).
    DeleteOldest,
}

/// `[storage]`: disk watermarks for the media filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Above this share of the filesystem in use, uploaded recordings are evicted oldest
    /// first. Default 90 (1-100).
    pub high_watermark_percent: u8,
    /// Eviction stops at this share. Default 80 (0-high).
    pub low_watermark_percent: u8,
    /// Alternatively, watermarks as bytes in use (override the percentages when set).
    pub high_watermark_bytes: Option<u64>,
    pub low_watermark_bytes: Option<u64>,
    pub on_full: OnFull,
    /// Seconds between disk checks. Default 5 (1-3600).
    pub check_interval_s: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: false,
            concurrency: 2,
            part_size_mb: 8,
            bandwidth_limit_kbps: 0,
            keep_local_after_upload_s: 86_400,
            max_attempts: 10,
            file_name: "{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}".into(),
            public_base_url: None,
            s3: S3Config::default(),
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            path_style: true,
            access_key: Secret::default(),
            secret_key: Secret::default(),
            session_token: Secret::default(),
            credentials_file: None,
            prefix: String::new(),
            ca_file: None,
        }
    }
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            url: String::new(),
            key: Secret::default(),
            retry_interval_s: 60,
            max_attempts: 12,
            appid: 0,
            domain: String::new(),
            allow_insecure: false,
            status_events: false,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            high_watermark_percent: 90,
            low_watermark_percent: 80,
            high_watermark_bytes: None,
            low_watermark_bytes: None,
            on_full: OnFull::StopNew,
            check_interval_s: 5,
        }
    }
}

impl UploadConfig {
    pub fn part_size(&self) -> u64 {
        self.part_size_mb * 1024 * 1024
    }

    /// The cap in bytes per second, if any.
    pub fn bandwidth_limit(&self) -> Option<u64> {
        (self.bandwidth_limit_kbps > 0).then(|| self.bandwidth_limit_kbps * 1000 / 8)
    }

    pub fn keep_local(&self) -> Duration {
        Duration::from_secs(self.keep_local_after_upload_s)
    }
}

impl CallbackConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// Resolved S3 credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3Credentials {{ access_key: {:?}, .. }}",
            self.access_key
        )
    }
}

impl S3Config {
    /// Credentials from the config, else the environment, else the credentials file.
    pub fn credentials(&self) -> Result<S3Credentials, String> {
        let token = |s: &Secret| (!s.0.is_empty()).then(|| s.0.clone());
        if !self.access_key.0.is_empty() || !self.secret_key.0.is_empty() {
            return Ok(S3Credentials {
                access_key: self.access_key.0.clone(),
                secret_key: self.secret_key.0.clone(),
                session_token: token(&self.session_token),
            });
        }
        let env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        if let (Some(access_key), Some(secret_key)) = (
            env(&["EDGEREC_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"]),
            env(&["EDGEREC_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"]),
        ) {
            return Ok(S3Credentials {
                access_key,
                secret_key,
                session_token: env(&["EDGEREC_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"]),
            });
        }
        if let Some(path) = &self.credentials_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            return parse_credentials_file(&text).ok_or_else(|| {
                format!(
                    "{} has no [default] aws_access_key_id and aws_secret_access_key",
                    path.display()
                )
            });
        }
        Err("no S3 credentials: set upload.s3.access_key and secret_key, EDGEREC_S3_ACCESS_KEY and EDGEREC_S3_SECRET_KEY, or upload.s3.credentials_file".into())
    }
}

/// Reads the `[default]` profile of an AWS-style credentials file.
fn parse_credentials_file(text: &str) -> Option<S3Credentials> {
    let mut in_default = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_default = line == "[default]";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_default {
            continue;
        }
        let v = Some(v.trim().to_owned());
        match k.trim() {
            "aws_access_key_id" => key = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    Some(S3Credentials {
        access_key: key?,
        secret_key: secret?,
        session_token: token,
    })
}

/// Adds every problem of the upload-side sections to `problems`.
pub(super) fn validate(
    upload: &UploadConfig,
    callback: &CallbackConfig,
    storage: &StorageConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut bad = |key: &str, message: String| {
        problems.push(ConfigProblem {
            key: key.into(),
            message,
        })
    };
    let range = |key: &str, value: u64, lo: u64, hi: u64, bad: &mut dyn FnMut(&str, String)| {
        if value < lo || value > hi {
            bad(key, format!("{value} is out of range; allowed {lo}-{hi}"));
        }
    };
    range(
        "upload.concurrency",
        upload.concurrency as u64,
        1,
        16,
        &mut bad,
    );
    range("upload.part_size_mb", upload.part_size_mb, 5, 512, &mut bad);
    range(
        "upload.max_attempts",
        u64::from(upload.max_attempts),
        1,
        1000,
        &mut bad,
    );
    range(
        "callback.retry_interval_s",
        callback.retry_interval_s,
        1,
        86_400,
        &mut bad,
    );
    range(
        "callback.max_attempts",
        u64::from(callback.max_attempts),
        1,
        10_000,
        &mut bad,
    );
    range(
        "storage.high_watermark_percent",
        u64::from(storage.high_watermark_percent),
        1,
        100,
        &mut bad,
    );
    range(
        "storage.low_watermark_percent",
        u64::from(storage.low_watermark_percent),
        0,
        u64::from(storage.high_watermark_percent),
        &mut bad,
    );
    range(
        "storage.check_interval_s",
        storage.check_interval_s,
        1,
        3600,
        &mut bad,
    );
    if let (Some(high), Some(low)) = (storage.high_watermark_bytes, storage.low_watermark_bytes) {
        if low > high {
            bad(
                "storage.low_watermark_bytes",
                format!("{low} is above storage.high_watermark_bytes ({high})"),
            );
        }
    }
    if storage.high_watermark_bytes.is_some() != storage.low_watermark_bytes.is_some() {
        bad(
            "storage.high_watermark_bytes",
            "set both high_watermark_bytes and low_watermark_bytes, or neither".into(),
        );
    }
    check_file_name(&upload.file_name, &mut bad);
    if !callback.url.is_empty() && !is_http_url(&callback.url) {
        bad(
            "callback.url",
            format!("{:?} is not an http:// or https:// URL", callback.url),
        );
    }
    if callback.url.starts_with("http://") && !callback.allow_insecure {
        bad(
            "callback.url",
            format!(
                "{:?} is plain http: the body would cross the network in clear; use https:// \
                 or set callback.allow_insecure = true on purpose",
                callback.url
            ),
        );
    }
    if !callback.url.is_empty() && callback.key.0.is_empty() {
        bad(
            "callback.key",
            "must be set when callback.url is (it signs the body)".into(),
        );
    }
    if let Some(base) = &upload.public_base_url {
        if !is_http_url(base) {
            bad(
                "upload.public_base_url",
                format!("{base:?} is not an http:// or https:// URL"),
            );
        }
    }
    if !upload.enabled {
        return;
    }
    let s3 = &upload.s3;
    if !is_http_url(&s3.endpoint) {
        bad(
            "upload.s3.endpoint",
            format!("{:?} is not an http:// or https:// URL", s3.endpoint),
        );
    }
    if s3.bucket.is_empty() {
        bad("upload.s3.bucket", "must be set when upload.enabled".into());
    }
    if s3.region.is_empty() {
        bad("upload.s3.region", "must not be empty".into());
    }
    if s3.prefix.starts_with('/') || s3.prefix.ends_with('/') {
        bad(
            "upload.s3.prefix",
            format!("{:?} must not start or end with '/'", s3.prefix),
        );
    }
    if let Err(e) = s3.credentials() {
        bad("upload.s3.access_key", e);
    }
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len()
}

fn check_file_name(pattern: &str, bad: &mut dyn FnMut(&str, String)) {
    if let Err(message) = super::naming::check_pattern(pattern, false) {
        bad("upload.file_name", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_default_profile() {
        let creds = parse_credentials_file(
            "[other]\naws_access_key_id = X\n[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n",
        )
        .unwrap();
        assert_eq!(
            (creds.access_key.as_str(), creds.secret_key.as_str()),
            ("AK", "SK")
        );
        assert!(parse_credentials_file("[default]\naws_access_key_id = AK\n").is_none());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s3 = S3Config {
            secret_key: Secret("topsecret".into()),
            ..S3Config::default()
        };
        assert!(!format!("{s3:?}").contains("topsecret"));
        let creds = S3Credentials {
            access_key: "AK".into(),
            secret_key: "topsecret".into(),
            session_token: None,
        };
        assert!(!format!("{creds:?}").contains("topsecret"));
    }

    #[test]
    fn file_name_placeholders_are_checked() {
        let mut found = Vec::new();
        check_file_name("{StreamID}_{EndYear}", &mut |k, m| {
            found.push(format!("{k}: {m}"))
        });
        check_file_name("{Nope}", &mut |k, m| found.push(format!("{k}: {m}")));
        check_file_name("a/b", &mut |k, m| found.push(format!("{k}: {m}")));
        check_file_name(&UploadConfig::default().file_name, &mut |k, m| {
            found.push(format!("{k}: {m}"))
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("EndYear"));
    }
}
