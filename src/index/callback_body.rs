//! The `event_type` 100 completion body (SPECS.md) of a finished HLS recording or of one
//! MP4/FLV/AAC file, without `t` and `sign`: what the uploader puts in the callback outbox
//! when an object is complete; and the `event_type` 332 status body, which the index
//! queues itself as a recording changes state (see `status.rs`). Here, beside the outbox rows, so the uploader (which fills
//! the outbox) and the notifier (which delivers it) both sit above it.

use serde_json::{json, Value};

use super::{FileRow, RecordingRow};
use crate::config::CallbackConfig;

/// The `event_type` 100 body of a finished HLS recording, without `t` and `sign`.
pub fn completion_body(
    rec: &RecordingRow,
    config: &CallbackConfig,
    video_url: &str,
    file_size: u64,
) -> Value {
    let ext = json!({
        "video_codec": rec.video_codec.clone().unwrap_or_default(),
        "resolution": rec.resolution.map(|(w, h)| format!("{w}x{h}")).unwrap_or_default(),
        "session_id": rec.id,
        "template": rec.template_name(),
        "record_id": rec.record_id.clone().unwrap_or_default(),
    });
    json!({
        "event_type": 100,
        "appid": config.appid,
        "app": config.domain,
        "appname": rec.app,
        "stream_id": rec.stream,
        "channel_id": rec.stream,
        "file_id": rec.id,
        "record_file_id": rec.id,
        "file_format": "hls",
        "start_time": rec.start_ms.div_euclid(1000),
        "end_time": rec.end_ms.div_euclid(1000),
        "start_time_usec": rec.start_ms.rem_euclid(1000) * 1000,
        "end_time_usec": rec.end_ms.rem_euclid(1000) * 1000,
        "duration": rec.duration_s().round() as i64,
        "file_size": file_size,
        "stream_param": rec.stream_param.clone().unwrap_or_default(),
        "task_id": rec.task_id.clone().unwrap_or_default(),
        "video_url": video_url,
        "video_id": "",
        "media_start_time": 0,
        "record_bps": 0,
        "callback_ext": ext.to_string(),
    })
}

/// The `event_type` 100 body of one MP4/FLV/AAC file (one per file), without `t` and
/// `sign`. `file_id` is the file's own id, so each file is delivered and deduplicated
/// on its own.
pub fn file_completion_body(
    file: &FileRow,
    capture: &RecordingRow,
    config: &CallbackConfig,
    video_url: &str,
    file_size: u64,
) -> Value {
    let audio_only = file.format == crate::config::Format::Aac;
    let ext = json!({
        "video_codec": if audio_only { String::new() } else { capture.video_codec.clone().unwrap_or_default() },
        "resolution": if audio_only { String::new() } else { capture.resolution.map(|(w, h)| format!("{w}x{h}")).unwrap_or_default() },
        "session_id": capture.id,
        "template": file.template,
        "record_id": file.record_id.clone().unwrap_or_default(),
    });
    let duration_s = file.duration_s();
    json!({
        "event_type": 100,
        "appid": config.appid,
        "app": config.domain,
        "appname": file.app,
        "stream_id": file.stream,
        "channel_id": file.stream,
        "file_id": file.id,
        "record_file_id": file.id,
        "file_format": file.format.as_str(),
        "start_time": file.start_ms.div_euclid(1000),
        "end_time": file.end_ms.div_euclid(1000),
        "start_time_usec": file.start_ms.rem_euclid(1000) * 1000,
        "end_time_usec": file.end_ms.rem_euclid(1000) * 1000,
        "duration": duration_s.round() as i64,
        "file_size": file_size,
        "stream_param": capture.stream_param.clone().unwrap_or_default(),
        "task_id": file.task_id.clone().unwrap_or_default(),
        "video_url": video_url,
        "video_id": "",
        "media_start_time": 0,
        "record_bps": if duration_s > 0.0 { (file_size as f64 * 8.0 / duration_s) as u64 } else { 0 },
        "callback_ext": ext.to_string(),
    })
}

/// The `event_type` 332 body of a recording's status change, without `t` and `sign`.
/// `seq` counts the recording's status events from 1; `error` is set for `record_error`.
pub fn status_body(
    rec: &RecordingRow,
    config: &CallbackConfig,
    event: &str,
    seq: u32,
    event_ms: i64,
    error: Option<&str>,
) -> Value {
    let mut body = json!({
        "event_type": 332,
        "appid": config.appid,
        "app": config.domain,
        "appname": rec.app,
        "stream_id": rec.stream,
        "channel_id": rec.stream,
        "record_event": event,
        "session_id": rec.id,
        "seq": seq,
        "event_time": event_ms.div_euclid(1000),
        "event_time_usec": event_ms.rem_euclid(1000) * 1000,
        "task_id": rec.task_id.clone().unwrap_or_default(),
        "stream_param": rec.stream_param.clone().unwrap_or_default(),
    });
    if let Some(error) = error {
        body["errmsg"] = json!(error);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_reference_fields() {
        let mut rec = RecordingRow::new("20261121T1-ab".into(), "live".into(), "cam".into(), 0);
        rec.start_ms = 1_700_000_000_250;
        rec.end_ms = 1_700_000_012_750;
        rec.duration_ticks = 12 * 90_000 + 45_000;
        rec.video_codec = Some("h264".into());
        rec.resolution = Some((1280, 720));
        let config = CallbackConfig {
            appid: 7,
            domain: "push.example".into(),
            ..CallbackConfig::default()
        };
        let body = completion_body(&rec, &config, "https://cdn/x/index.m3u8", 4242);
        assert_eq!(body["event_type"], 100);
        assert_eq!(body["file_format"], "hls");
        assert_eq!(body["start_time"], 1_700_000_000);
        assert_eq!(body["start_time_usec"], 250_000);
        assert_eq!(body["end_time"], 1_700_000_012);
        assert_eq!(body["duration"], 13);
        assert_eq!(body["file_size"], 4242);
        assert_eq!(body["file_id"], "20261121T1-ab");
        assert_eq!(body["stream_id"], "cam");
        assert_eq!(body["channel_id"], "cam");
        assert_eq!(body["appname"], "live");
        assert_eq!(body["app"], "push.example");
        let ext: Value = serde_json::from_str(body["callback_ext"].as_str().unwrap()).unwrap();
        assert_eq!(ext["resolution"], "1280x720");
        assert_eq!(ext["session_id"], "20261121T1-ab");
    }
}
