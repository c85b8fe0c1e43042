//! File name patterns: the placeholders a template's `file_name` may use, checking a
//! pattern, and rendering one from a recording's times and names.
//!
//! Owns the one list of placeholders (cloud live recording's vocabulary: `{StreamID}`,
//! `{App}`, `{RecordId}`, `{TemplateName}`, `{StartYear}`...`{StartMillisecond}`,
//! `{EndYear}`...`{EndSecond}`; `{RecordingID}` is kept for configs written before
//! templates existed). Pure: no IO, no clock.

/// Placeholders that do not depend on when the recording ends.
pub const START_PLACEHOLDERS: &[&str] = &[
    "StreamID",
    "App",
    "RecordId",
    "RecordingID",
    "TemplateName",
    "StartYear",
    "StartMonth",
    "StartDay",
    "StartHour",
    "StartMinute",
    "StartSecond",
    "StartMillisecond",
];

/// Placeholders known only once a file is closed (MP4/FLV/AAC, not HLS).
pub const END_PLACEHOLDERS: &[&str] = &[
    "EndYear",
    "EndMonth",
    "EndDay",
    "EndHour",
    "EndMinute",
    "EndSecond",
];

/// Why a pattern is refused, to be prefixed with its key.
pub fn check_pattern(pattern: &str, allow_end: bool) -> Result<(), String> {
    if pattern.is_empty() || pattern.contains('/') || pattern.contains("..") {
        return Err(format!(
            "{pattern:?} must be a non-empty name without '/' or '..'"
        ));
    }
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("{pattern:?} has an unclosed '{{'"));
        };
        let name = &rest[open + 1..open + close];
        if END_PLACEHOLDERS.contains(&name) {
            if !allow_end {
                return Err(format!("{{{name}}} is not known while segments upload during the recording (HLS); use start-time placeholders"));
            }
        } else if !START_PLACEHOLDERS.contains(&name) {
            let mut allowed = START_PLACEHOLDERS.to_vec();
            if allow_end {
                allowed.extend_from_slice(END_PLACEHOLDERS);
            }
            return Err(format!(
                "unknown placeholder {{{name}}}; allowed: {}",
                allowed.join(", ")
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// What a pattern is rendered from.
#[derive(Debug, Clone, Default)]
pub struct NameValues<'a> {
    pub app: &'a str,
    pub stream: &'a str,
    /// The publisher's `record_id=` (empty: the recording's own id is used).
    pub record_id: &'a str,
    pub recording_id: &'a str,
    pub template: &'a str,
    /// Unix ms (UTC).
    pub start_ms: i64,
    /// Unix ms (UTC); `None` for HLS.
    pub end_ms: Option<i64>,
}

/// The time placeholders' fields and their `strftime` formats (`End` has no milliseconds).
const TIME_FIELDS: [(&str, &str); 7] = [
    ("Year", "%Y"),
    ("Month", "%m"),
    ("Day", "%d"),
    ("Hour", "%H"),
    ("Minute", "%M"),
    ("Second", "%S"),
    ("Millisecond", "%3f"),
];

/// Fills a pattern's placeholders (times in UTC). Characters that cannot be part of an
/// object name segment (`/`, control characters) are replaced by `_`.
pub fn render(pattern: &str, v: &NameValues) -> String {
    let record_id = if v.record_id.is_empty() {
        v.recording_id
    } else {
        v.record_id
    };
    let mut values: Vec<(String, String)> = [
        ("StreamID", v.stream),
        ("App", v.app),
        ("RecordId", record_id),
        ("RecordingID", v.recording_id),
        ("TemplateName", v.template),
    ]
    .into_iter()
    .map(|(name, value)| (format!("{{{name}}}"), value.to_owned()))
    .collect();
    // `{Start...}` and `{End...}` (files only): the wall time's fields.
    let mut times = vec![("Start", v.start_ms, &TIME_FIELDS[..])];
    times.extend(v.end_ms.map(|end_ms| ("End", end_ms, &TIME_FIELDS[..6])));
    for (side, ms, fields) in times {
        for (field, format) in fields {
            let value = crate::clock::utc(ms, format);
            values.push((format!("{{{side}{field}}}"), value));
        }
    }
    let mut out = pattern.to_owned();
    for (k, val) in values {
        out = out.replace(&k, &val);
    }
    out.chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("{StreamID}_{StartYear}", false).is_ok());
        let e = check_pattern("{StreamID}_{EndYear}", false).unwrap_err();
        assert!(e.contains("{EndYear}") && e.contains("HLS"), "{e}");
        assert!(check_pattern("{StreamID}_{EndYear}", true).is_ok());
        let e = check_pattern("{Nope}", true).unwrap_err();
        assert!(e.contains("unknown placeholder {Nope}"), "{e}");
        assert!(check_pattern("a/b", true).is_err());
        assert!(check_pattern("", true).is_err());
        assert!(check_pattern("x{", true).is_err());
    }

    #[test]
    fn renders_start_end_and_ids() {
        let v = NameValues {
            app: "live",
            stream: "cam1",
            record_id: "",
            recording_id: "r1",
            template: "lecture",
            start_ms: 1_700_000_000_123, // 2023-11-14T22:13:20.123Z
            end_ms: Some(1_700_003_600_000),
        };
        assert_eq!(
            render(
                "{App}-{StreamID}_{StartYear}{StartMonth}{StartDay}_{StartHour}{StartMinute}{StartSecond}.{StartMillisecond}_{EndHour}{EndMinute}",
                &v
            ),
            "live-cam1_20231114_221320.123_2313"
        );
        assert_eq!(render("{RecordId}/{TemplateName}", &v), "r1_lecture");
        let named = NameValues {
            record_id: "match42",
            ..v
        };
        assert_eq!(render("{RecordId}", &named), "match42");
    }
}
