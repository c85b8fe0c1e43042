//! The recording model's configuration: `[[template]]` (which deliverables to make of a
//! capture: HLS, MP4, FLV, AAC-only, each with its file length, name and store retention)
//! and `[[rule]]` (which streams record with which template), their defaults, validation,
//! and [`resolve`], the one place that decides what a publish records.
//!
//! Vocabulary and ranges follow cloud live recording (SPECS.md "Recording templates,
//! rules, tasks"). Pure: no IO. Templates and rules made over the API are checked with
//! the same [`Template::problems`] / [`Rule::problems`] as the file's.

use serde::{Deserialize, Serialize};

use super::naming::check_pattern;
use super::ConfigProblem;

/// The built-in template's name: HLS only, used for every stream no rule names.
pub const DEFAULT_TEMPLATE: &str = "default";

/// Default `record_interval_s` of MP4/FLV/AAC files (30 min).
pub const DEFAULT_RECORD_INTERVAL_S: u32 = 1800;

/// Default name of an MP4/FLV/AAC file (SPECS.md), before its extension.
pub const DEFAULT_FILE_NAME: &str = "{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}_{EndYear}-{EndMonth}-{EndDay}-{EndHour}-{EndMinute}-{EndSecond}";

/// The four deliverable formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub enum Format {
    Hls,
    Mp4,
    Flv,
    Aac,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Hls, Format::Mp4, Format::Flv, Format::Aac];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Hls => "hls",
            Format::Mp4 => "mp4",
            Format::Flv => "flv",
            Format::Aac => "aac",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// File extension of one file of this format (HLS: the playlist).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Hls => "m3u8",
            Format::Mp4 => "mp4",
            Format::Flv => "flv",
            Format::Aac => "m4a",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Hls => "application/vnd.apple.mpegurl",
            Format::Mp4 => "video/mp4",
            Format::Flv => "video/x-flv",
            Format::Aac => "audio/mp4",
        }
    }
}

/// `hls = { ... }` in a template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct HlsOutput {
    /// Default true once the table is given.
    pub enabled: bool,
    /// Resume window: a publish of the same stream within this many seconds continues the
    /// recording (all of its formats). Default `record.flow_continue_duration_s` (0-1800).
    pub flow_continue_duration_s: Option<u32>,
    /// How long the store keeps the objects, seconds; 0 = forever. Default 0.
    pub storage_time_s: u64,
    /// Object folder name. Default `upload.file_name`. No `{End...}` placeholders.
    pub file_name: Option<String>,
}

impl Default for HlsOutput {
    fn default() -> Self {
        HlsOutput {
            enabled: true,
            flow_continue_duration_s: None,
            storage_time_s: 0,
            file_name: None,
        }
    }
}

/// `mp4`, `flv` or `aac = { ... }` in a template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct FileOutput {
    /// Default true once the table is given.
    pub enabled: bool,
    /// Longest file, seconds; a new file starts at the first segment boundary (a
    /// keyframe) at or after it. Default 1800 (30-7200).
    pub record_interval_s: u32,
    /// How long the store keeps the object, seconds; 0 = forever. Default 0.
    pub storage_time_s: u64,
    /// File name without extension. Default SPECS.md's `{StreamID}_{Start...}_{End...}`.
    pub file_name: Option<String>,
}

impl Default for FileOutput {
    fn default() -> Self {
        FileOutput {
            enabled: true,
            record_interval_s: DEFAULT_RECORD_INTERVAL_S,
            storage_time_s: 0,
            file_name: None,
        }
    }
}

impl FileOutput {
    pub fn file_name(&self) -> &str {
        self.file_name.as_deref().unwrap_or(DEFAULT_FILE_NAME)
    }
}

/// `[[template]]`: which deliverables a capture gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct Template {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<HlsOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mp4: Option<FileOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flv: Option<FileOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aac: Option<FileOutput>,
    /// Object key prefix for this template's files, under `upload.s3.prefix` (keeps one
    /// business's recordings apart from another's). Default empty.
    #[serde(default)]
    pub store_prefix: String,
    /// Record only the audio track, in every format. Default false.
    #[serde(default)]
    pub record_audio_only: bool,
}

impl Template {
    /// The built-in `default`: HLS only, today's settings.
    pub fn builtin_default() -> Template {
        Template {
            name: DEFAULT_TEMPLATE.into(),
            hls: Some(HlsOutput::default()),
            mp4: None,
            flv: None,
            aac: None,
            store_prefix: String::new(),
            record_audio_only: false,
        }
    }

    /// The enabled file format (MP4/FLV/AAC) outputs.
    pub fn file_outputs(&self) -> impl Iterator<Item = (Format, &FileOutput)> {
        [
            (Format::Mp4, &self.mp4),
            (Format::Flv, &self.flv),
            (Format::Aac, &self.aac),
        ]
        .into_iter()
        .filter_map(|(f, o)| o.as_ref().filter(|o| o.enabled).map(|o| (f, o)))
    }

    pub fn hls_enabled(&self) -> bool {
        self.hls.as_ref().is_some_and(|h| h.enabled)
    }

    /// Formats this template makes, in [`Format::ALL`] order.
    pub fn formats(&self) -> Vec<Format> {
        let mut v = Vec::new();
        if self.hls_enabled() {
            v.push(Format::Hls);
        }
        v.extend(self.file_outputs().map(|(f, _)| f));
        v
    }

    pub fn file_output(&self, format: Format) -> Option<&FileOutput> {
        self.file_outputs()
            .find(|(f, _)| *f == format)
            .map(|(_, o)| o)
    }

    /// The resume window in seconds, given the global default.
    pub fn resume_window_s(&self, global_default: u32) -> u32 {
        self.hls
            .as_ref()
            .and_then(|h| h.flow_continue_duration_s)
            .unwrap_or(global_default)
    }

    /// Every problem, keys prefixed with `prefix` (e.g. `template[2]` or `template`).
    pub fn problems(&self, prefix: &str) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |key: String, message: String| out.push(ConfigProblem { key, message });
        if !valid_name(&self.name) {
            bad(
                format!("{prefix}.name"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    self.name
                ),
            );
        }
        if let Some(h) = &self.hls {
            if let Some(w) = h.flow_continue_duration_s.filter(|w| *w > 1800) {
                bad(
                    format!("{prefix}.hls.flow_continue_duration_s"),
                    format!("{w} is out of range; allowed 0-1800"),
                );
            }
            if let Some(Err(m)) = h.file_name.as_deref().map(|p| check_pattern(p, false)) {
                bad(format!("{prefix}.hls.file_name"), m);
            }
        }
        for (format, out) in [
            (Format::Mp4, &self.mp4),
            (Format::Flv, &self.flv),
            (Format::Aac, &self.aac),
        ] {
            let Some(o) = out else { continue };
            let key = |k: &str| format!("{prefix}.{}.{k}", format.as_str());
            if !(30..=7200).contains(&o.record_interval_s) {
                bad(
                    key("record_interval_s"),
                    format!("{} is out of range; allowed 30-7200", o.record_interval_s),
                );
            }
            if let Some(Err(m)) = o.file_name.as_deref().map(|p| check_pattern(p, true)) {
                bad(key("file_name"), m);
            }
        }
        if !self.store_prefix.is_empty()
            && (self.store_prefix.starts_with('/')
                || self.store_prefix.ends_with('/')
                || self.store_prefix.contains("..")
                || self.store_prefix.contains("//"))
        {
            bad(
                format!("{prefix}.store_prefix"),
                format!(
                    "{:?} must not start or end with '/' nor contain '..' or '//'",
                    self.store_prefix
                ),
            );
        }
        if self.formats().is_empty() {
            bad(
                prefix.to_owned(),
                "enables no format; give at least one of hls, mp4, flv, aac".into(),
            );
        }
        out
    }
}

/// `[[rule]]`: `(app, stream?) -> template`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct Rule {
    pub app: String,
    /// Absent: every stream of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Required when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// false: never record this stream/app, whatever a wider rule says. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Rule {
    /// Problems with the rule itself, and with the template it names (`known` says which
    /// templates exist).
    pub fn problems(&self, prefix: &str, known: &dyn Fn(&str) -> bool) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if !valid_name(&self.app) {
            out.push(ConfigProblem {
                key: format!("{prefix}.app"),
                message: format!("{:?} is not a valid app name", self.app),
            });
        }
        if let Some(s) = self.stream.as_deref().filter(|s| !valid_name(s)) {
            out.push(ConfigProblem {
                key: format!("{prefix}.stream"),
                message: format!("{s:?} is not a valid stream name"),
            });
        }
        match (&self.template, self.enabled) {
            (None, true) => out.push(ConfigProblem {
                key: format!("{prefix}.template"),
                message: "an enabled rule must name a template".into(),
            }),
            (Some(t), _) if !known(t) => out.push(ConfigProblem {
                key: format!("{prefix}.template"),
                message: format!("no template is named {t:?}"),
            }),
            _ => {}
        }
        out
    }

    /// The identity rules are unique by: `app` or `app/stream`.
    pub fn target(&self) -> String {
        match &self.stream {
            Some(s) => format!("{}/{s}", self.app),
            None => self.app.clone(),
        }
    }
}

/// Names of apps, streams and templates: what the RTMP ingest accepts as names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What a publish of `app/stream` records.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    /// Record with this template.
    Record(&'a Template),
    /// A rule with `enabled = false` covers the stream.
    Off,
}

/// Decides what `app/stream` records: an exact stream rule beats an app rule; a stream no
/// rule covers records with the template named `default` (the built-in one unless a
/// template of that name is defined).
pub fn resolve<'a>(
    templates: &'a [Template],
    rules: &[Rule],
    builtin: &'a Template,
    app: &str,
    stream: &str,
) -> Result<Decision<'a>, String> {
    let exact = rules
        .iter()
        .find(|r| r.app == app && r.stream.as_deref() == Some(stream));
    let wide = || rules.iter().find(|r| r.app == app && r.stream.is_none());
    let name = match exact.or_else(wide) {
        Some(rule) if !rule.enabled => return Ok(Decision::Off),
        Some(rule) => rule.template.as_deref().unwrap_or(DEFAULT_TEMPLATE),
        None => DEFAULT_TEMPLATE,
    };
    match templates.iter().find(|t| t.name == name) {
        Some(t) => Ok(Decision::Record(t)),
        None if name == DEFAULT_TEMPLATE => Ok(Decision::Record(builtin)),
        None => Err(format!(
            "the rule for {app}/{stream} names template {name:?}, which does not exist"
        )),
    }
}

/// Checks the file's templates and rules together (names unique, rules name templates).
pub fn validate(templates: &[Template], rules: &[Rule], problems: &mut Vec<ConfigProblem>) {
    for (i, t) in templates.iter().enumerate() {
        let prefix = format!("template[{i}] ({})", t.name);
        problems.extend(t.problems(&prefix));
        if templates[..i].iter().any(|o| o.name == t.name) {
            problems.push(ConfigProblem {
                key: format!("{prefix}.name"),
                message: format!("{:?} is defined twice", t.name),
            });
        }
    }
    let known = |name: &str| name == DEFAULT_TEMPLATE || templates.iter().any(|t| t.name == name);
    for (i, r) in rules.iter().enumerate() {
        let prefix = format!("rule[{i}] ({})", r.target());
        problems.extend(r.problems(&prefix, &known));
        if rules[..i].iter().any(|o| o.target() == r.target()) {
            problems.push(ConfigProblem {
                key: prefix,
                message: format!("a rule for {} is defined twice", r.target()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Template {
        Template {
            name: name.into(),
            ..Template::builtin_default()
        }
    }

    fn rule(app: &str, stream: Option<&str>, template: Option<&str>, enabled: bool) -> Rule {
        Rule {
            app: app.into(),
            stream: stream.map(Into::into),
            template: template.map(Into::into),
            enabled,
        }
    }

    #[test]
    fn exact_stream_beats_app_and_disabled_records_nothing() {
        let templates = vec![t("lecture"), t("stage")];
        let builtin = Template::builtin_default();
        let rules = vec![
            rule("live", None, Some("lecture"), true),
            rule("live", Some("main"), Some("stage"), true),
            rule("live", Some("backstage"), None, false),
        ];
        let name =
            |app: &str, stream: &str| match resolve(&templates, &rules, &builtin, app, stream) {
                Ok(Decision::Record(t)) => t.name.clone(),
                Ok(Decision::Off) => "off".into(),
                Err(e) => e,
            };
        assert_eq!(name("live", "cam1"), "lecture");
        assert_eq!(name("live", "main"), "stage");
        assert_eq!(name("live", "backstage"), "off");
        assert_eq!(
            name("other", "x"),
            "default",
            "no rule: the built-in default"
        );
    }

    #[test]
    fn a_defined_default_replaces_the_builtin() {
        let mut mine = t("default");
        mine.mp4 = Some(FileOutput::default());
        let templates = vec![mine];
        let builtin = Template::builtin_default();
        match resolve(&templates, &[], &builtin, "a", "b").unwrap() {
            Decision::Record(t) => assert_eq!(t.formats(), [Format::Hls, Format::Mp4]),
            Decision::Off => panic!("off"),
        }
    }

    #[test]
    fn problems_name_the_key_and_range() {
        let mut bad = t("x y");
        bad.mp4 = Some(FileOutput {
            record_interval_s: 10,
            ..FileOutput::default()
        });
        bad.hls = Some(HlsOutput {
            flow_continue_duration_s: Some(1801),
            file_name: Some("{StreamID}_{EndYear}".into()),
            ..HlsOutput::default()
        });
        let keys: Vec<String> = bad
            .problems("template[0]")
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(keys[0].starts_with("template[0].name"));
        assert!(
            keys[1].contains("hls.flow_continue_duration_s: 1801 is out of range; allowed 0-1800"),
            "{keys:?}"
        );
        assert!(keys[2].contains("hls.file_name") && keys[2].contains("EndYear"));
        assert!(keys[3].contains("mp4.record_interval_s: 10 is out of range; allowed 30-7200"));

        let mut none = t("none");
        none.hls = None;
        assert!(none
            .problems("t")
            .iter()
            .any(|p| p.message.contains("enables no format")));
    }

    #[test]
    fn rules_must_name_existing_templates_once() {
        let mut problems = Vec::new();
        validate(
            &[t("lecture")],
            &[
                rule("live", None, Some("missing"), true),
                rule("live", None, Some("lecture"), true),
                rule("live", Some("s"), None, true),
                rule("live", Some("t"), None, false),
            ],
            &mut problems,
        );
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains("no template is named \"missing\""));
        assert!(text[1].contains("defined twice"));
        assert!(text[2].contains("must name a template"));
    }

    #[test]
    fn unknown_format_key_is_an_error_naming_it() {
        let err =
            toml::from_str::<Template>("name = \"x\"\nmkv = { enabled = true }\n").unwrap_err();
        assert!(err.to_string().contains("mkv"), "{err}");
    }
}
