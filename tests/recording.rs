//! End-to-end recording with real peers: ffmpeg publishes generated streams over RTMP, the
//! real daemon records them, and ffmpeg/ffprobe decode what it serves back over HTTP.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::media::{self, Clip};
use support::{wait_for, Daemon};

const GOP_FRAMES: u64 = 25;

fn playlist_url(d: &Daemon, rec: &Value) -> String {
    d.http_url(rec["playlist"].as_str().unwrap())
}

/// Frames decoded from the recording are within one GOP of what the clip holds, the
/// playlist decodes cleanly, segments are continuous, and the API duration is within 1 %.
fn assert_recording_matches(d: &Daemon, rec: &Value, sent: media::Probe, sessions: u64) {
    let url = playlist_url(d, rec);
    let errors = media::decode_errors(&url);
    assert!(
        errors.trim().is_empty(),
        "decode errors in {url}:\n{errors}"
    );
    let got = media::probe(&url);
    let gop_slack = GOP_FRAMES * sessions;
    assert!(
        got.video_frames + gop_slack >= sent.video_frames * sessions
            && got.video_frames <= sent.video_frames * sessions,
        "video frames: got {}, sent {} x {sessions}",
        got.video_frames,
        sent.video_frames
    );
    let audio_slack = 48 * sessions; // one GOP (1 s) of 1024-sample frames at 48 kHz
    assert!(
        got.audio_frames + audio_slack >= sent.audio_frames * sessions
            && got.audio_frames <= sent.audio_frames * sessions + 2,
        "audio frames: got {}, sent {} x {sessions}",
        got.audio_frames,
        sent.audio_frames
    );
    let api_duration = rec["duration_s"].as_f64().unwrap();
    // What was sent, as ffprobe measures the clip (the extent of both tracks).
    let media_duration = sent.duration_s * sessions as f64;
    assert!(
        (api_duration - media_duration).abs() <= media_duration * 0.01,
        "API duration {api_duration} s vs media {media_duration} s"
    );
}

#[test]
fn plain_publish_is_recorded_as_decodable_hls() {
    let d = Daemon::start("flow_continue_duration_s = 1", "");
    let clip = media::clip(Clip::AudioVideo, 20);
    let sent = media::probe(clip.to_str().unwrap());
    media::publish_and_wait(&d.rtmp_url("live", "plain"), &clip, false);
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(30));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec["app"], "live");
    assert_eq!(rec["stream"], "plain");
    assert_eq!(rec["discontinuities"], 0);
    assert_eq!(rec["video_codec"], "h264");
    assert_eq!(rec["audio_codec"], "aac");
    assert_eq!(rec["resolution"], "640x360");
    let segments = rec["segment_list"].as_array().unwrap().clone();
    assert_eq!(segments.len() as u64, rec["segments"].as_u64().unwrap());
    assert!(
        (5..=6).contains(&segments.len()),
        "20 s at 4 s targets: {} segments",
        segments.len()
    );
    for seg in &segments[..segments.len() - 1] {
        let dur = seg["duration_s"].as_f64().unwrap();
        assert!((4.0..5.0).contains(&dur), "segment duration {dur}");
    }
    let total: u64 = segments.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, rec["bytes"].as_u64().unwrap());

    let playlist = d.get(rec["playlist"].as_str().unwrap()).text();
    assert!(playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{playlist}");
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert_eq!(
        playlist.matches("#EXT-X-PROGRAM-DATE-TIME").count(),
        1,
        "{playlist}"
    );
    assert!(!playlist.contains("#EXT-X-DISCONTINUITY\n"), "{playlist}");

    assert_recording_matches(&d, &rec, sent, 1);
    let checked = media::check_segment_continuity(&d.recording_dir(&rec), &segments, true, 0.1);
    assert_eq!(checked, segments.len() - 1);
    // Nothing of the recording is left as a .part file.
    let leftovers: Vec<_> = std::fs::read_dir(d.recording_dir(&rec))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reconnect_inside_the_window_continues_the_recording() {
    let d = Daemon::start("flow_continue_duration_s = 8", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    let sent = media::probe(clip.to_str().unwrap());
    media::publish_and_wait(&d.rtmp_url("live", "resume"), &clip, false);
    let first = d.wait_recordings(1, "resumable", Duration::from_secs(20));
    let live = d.get("/hls/live/live/resume/index.m3u8");
    assert_eq!(live.status, 200, "live playlist of a resumable recording");
    media::publish_and_wait(&d.rtmp_url("live", "resume?token=abc"), &clip, false);
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(30));
    assert_eq!(
        recs[0]["id"], first[0]["id"],
        "the same recording continued"
    );
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec["sessions"], 2);
    assert_eq!(rec["discontinuities"], 1);
    let playlist = d.get(rec["playlist"].as_str().unwrap()).text();
    assert_eq!(
        playlist.matches("#EXT-X-DISCONTINUITY\n").count(),
        1,
        "{playlist}"
    );
    assert_eq!(
        playlist.matches("#EXT-X-PROGRAM-DATE-TIME").count(),
        2,
        "{playlist}"
    );
    assert_recording_matches(&d, &rec, sent, 2);
    let segments = rec["segment_list"].as_array().unwrap().clone();
    let checked = media::check_segment_continuity(&d.recording_dir(&rec), &segments, true, 0.1);
    assert_eq!(
        checked,
        segments.len() - 2,
        "every boundary but the discontinuity is continuous"
    );
}

#[test]
fn reconnect_after_the_window_starts_a_new_recording() {
    let d = Daemon::start("flow_continue_duration_s = 1", "");
    let clip = media::clip(Clip::AudioVideo, 4);
    media::publish_and_wait(&d.rtmp_url("live", "twice"), &clip, false);
    let first = d.wait_recordings(1, "finished", Duration::from_secs(20));
    media::publish_and_wait(&d.rtmp_url("live", "twice"), &clip, false);
    let recs = d.wait_recordings(2, "finished", Duration::from_secs(20));
    assert!(recs.iter().any(|r| r["id"] == first[0]["id"]));
    for rec in &recs {
        assert_eq!(rec["sessions"], 1);
        assert_eq!(rec["discontinuities"], 0);
        let errors = media::decode_errors(&playlist_url(&d, rec));
        assert!(errors.trim().is_empty(), "{errors}");
    }
}

#[test]
fn two_streams_at_once_and_a_second_publisher_is_refused() {
    let d = Daemon::start("flow_continue_duration_s = 1", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    let sent = media::probe(clip.to_str().unwrap());
    let a = media::publish(&d.rtmp_url("live", "a"), &clip, true);
    let b = media::publish(&d.rtmp_url("live", "b"), &clip, true);
    wait_for(
        "both streams live with their codecs",
        Duration::from_secs(20),
        || {
            let streams = d.json("/api/v1/streams");
            let list = streams.as_array().unwrap();
            (list.len() == 2 && list.iter().all(|s| s["video_codec"] == "h264")).then_some(())
        },
    );
    let streams = d.json("/api/v1/streams");
    for s in streams.as_array().unwrap() {
        assert_eq!(s["video_codec"], "h264");
        assert_eq!(s["resolution"], "640x360");
    }
    // A second publisher on a live name is refused; the first keeps recording.
    let dup = media::publish(&d.rtmp_url("live", "a"), &clip, false)
        .wait_with_output()
        .unwrap();
    assert!(!dup.status.success(), "duplicate publisher was accepted");
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let recs = d.wait_recordings(2, "finished", Duration::from_secs(20));
    for rec in &recs {
        let rec = d.recording(rec["id"].as_str().unwrap());
        assert_recording_matches(&d, &rec, sent, 1);
    }
    assert!(
        d.log().contains("already being published"),
        "refusal is logged"
    );
}

#[test]
fn audio_only_and_video_only_publishes_record() {
    let d = Daemon::start("flow_continue_duration_s = 1", "");
    for (kind, name) in [(Clip::AudioOnly, "radio"), (Clip::VideoOnly, "silent")] {
        let clip = media::clip(kind, 10);
        let sent = media::probe(clip.to_str().unwrap());
        media::publish_and_wait(&d.rtmp_url("live", name), &clip, false);
        let rec = wait_for("finished recording", Duration::from_secs(20), || {
            d.recordings()
                .into_iter()
                .find(|r| r["stream"] == name && r["state"] == "finished")
        });
        let rec = d.recording(rec["id"].as_str().unwrap());
        assert_recording_matches(&d, &rec, sent, 1);
        let segments = rec["segment_list"].as_array().unwrap();
        assert!(segments.len() >= 2, "{name}: {} segments", segments.len());
    }
}

#[test]
fn sigkill_mid_segment_recovers_with_bounded_loss() {
    // A long window: after the crash the recording must be resumable, and a new publish
    // must continue it.
    let mut d = Daemon::start("flow_continue_duration_s = 60", "");
    let clip = media::clip(Clip::AudioVideo, 30);
    let mut ffmpeg = media::publish(&d.rtmp_url("live", "crash"), &clip, true);
    let live_since = wait_for("stream live", Duration::from_secs(20), || {
        let s = d.json("/api/v1/streams");
        (s.as_array().unwrap().len() == 1).then(std::time::Instant::now)
    });
    // Two sealed segments (~8 s), then kill mid-way through the third.
    wait_for("two segments", Duration::from_secs(30), || {
        let recs = d.recordings();
        (recs.len() == 1 && recs[0]["segments"].as_u64() >= Some(2)).then_some(())
    });
    // The live sliding window lists the sealed segments, has no end, and they play.
    let live = d.get("/hls/live/live/crash/index.m3u8");
    assert_eq!(live.status, 200);
    let live = live.text();
    assert!(live.contains("#EXT-X-MEDIA-SEQUENCE:1"), "{live}");
    assert!(
        !live.contains("#EXT-X-ENDLIST") && !live.contains("PLAYLIST-TYPE"),
        "{live}"
    );
    let uris: Vec<_> = live
        .lines()
        .filter(|l| l.starts_with("/hls/recordings/"))
        .collect();
    assert!(uris.len() >= 2, "{live}");
    for uri in uris {
        let errors = media::decode_errors(&d.http_url(uri));
        assert!(errors.trim().is_empty(), "{uri}: {errors}");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let sent_s = live_since.elapsed().as_secs_f64();
    // What the recorder had taken from the publisher just before the crash.
    let acked_s = d.json("/api/v1/streams")[0]["media_received_ms"]
        .as_f64()
        .unwrap()
        / 1000.0;
    assert!(
        acked_s >= 8.0 && acked_s <= sent_s + 1.0,
        "media_received_ms {acked_s} s after ~{sent_s} s sent"
    );
    d.kill9();
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();

    // Offline, fsck sees the open recording and its .part file.
    let (code, out) = d.fsck(false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unfinished segment (.part)"), "{out}");

    d.spawn();
    let recs = d.wait_recordings(1, "resumable", Duration::from_secs(10));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    let segments = rec["segment_list"].as_array().unwrap().clone();
    assert!(
        segments.last().unwrap()["recovered"].as_bool().unwrap(),
        "the .part was adopted: {rec}"
    );
    let duration = rec["duration_s"].as_f64().unwrap();
    // At most flush_interval (1 s) + one GOP (1 s) of the acknowledged media is lost.
    assert!(
        duration >= acked_s - 2.0,
        "recovered {duration} s of {acked_s} s acknowledged"
    );
    assert!(
        duration <= sent_s + 1.0,
        "recovered {duration} s of ~{sent_s} s sent"
    );
    // The index points only at bytes that exist.
    for seg in &segments {
        let file = d
            .recording_dir(&rec)
            .join(seg["uri"].as_str().unwrap().rsplit('/').next().unwrap());
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            seg["bytes"].as_u64().unwrap()
        );
        let errors = media::decode_errors(file.to_str().unwrap());
        assert!(errors.trim().is_empty(), "{}: {errors}", file.display());
    }

    // Publish again inside the window: the same recording continues after a discontinuity.
    let short = media::clip(Clip::AudioVideo, 4);
    media::publish_and_wait(&d.rtmp_url("live", "crash"), &short, false);
    let recs = d.wait_recordings(1, "resumable", Duration::from_secs(10));
    let rec2 = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(rec2["id"], rec["id"]);
    assert_eq!(rec2["sessions"], 2);
    assert!(rec2["discontinuities"].as_u64().unwrap() >= 1);

    // A clean stop, then fsck finds nothing wrong.
    assert_eq!(d.stop(), Some(0));
    let (code, out) = d.fsck(false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 finding(s)"), "{out}");
}

#[test]
fn sigterm_seals_open_segments_and_leaves_recordings_resumable() {
    let mut d = Daemon::start("flow_continue_duration_s = 60", "");
    let clip = media::clip(Clip::AudioVideo, 30);
    let mut ffmpeg = media::publish(&d.rtmp_url("live", "term"), &clip, true);
    wait_for("a segment", Duration::from_secs(30), || {
        let recs = d.recordings();
        (recs.len() == 1 && recs[0]["segments"].as_u64() >= Some(1)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.stop(), Some(0), "clean exit on SIGTERM");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let (code, out) = d.fsck(false);
    assert!(!out.contains(".part"), "SIGTERM sealed everything: {out}");
    assert_eq!(code, 0, "a clean stop leaves a consistent index: {out}");
    d.spawn();
    let recs = d.wait_recordings(1, "resumable", Duration::from_secs(10));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert!(rec["segment_list"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| !s["recovered"].as_bool().unwrap()));
}
