//! Bad input and faults against the real daemon: each hostile peer or fault costs only its
//! own connection or recording, is logged with a reason, and everything else keeps
//! recording.

mod support;

use std::io::Write;
use std::time::Duration;

use support::flv::{read_tags, Tag};
use support::media::{self, Clip};
use support::rtmp_client::RawClient;
use support::tmpfs::Tmpfs;
use support::{wait_for, Daemon};

/// The daemon still accepts and records a normal ffmpeg publish.
fn assert_still_records(d: &Daemon, stream: &str) {
    let clip = media::clip(Clip::AudioVideo, 4);
    media::publish_and_wait(&d.rtmp_url("live", stream), &clip, false);
    let rec = wait_for(
        "the healthy stream's recording",
        Duration::from_secs(20),
        || {
            d.recordings()
                .into_iter()
                .find(|r| r["stream"] == stream && r["segments"].as_u64() >= Some(1))
        },
    );
    assert_eq!(d.get("/healthz").status, 200);
    let errors = media::decode_errors(&d.http_url(&format!(
        "/hls/recordings/{}/00000001.ts",
        rec["id"].as_str().unwrap()
    )));
    assert!(errors.trim().is_empty(), "{errors}");
}

/// The server keeps `c` open for at least `open_for`, then closes it within `then_within`.
fn assert_closed_between(c: &mut RawClient, open_for: Duration, then_within: Duration) {
    assert!(
        !c.closed_by_server(open_for),
        "closed within {open_for:?}, too early"
    );
    assert!(
        c.closed_by_server(then_within),
        "still open {then_within:?} later"
    );
}

/// Sends the tags of an FLV file as RTMP messages on `stream_id`, rewriting each tag's
/// timestamp with `retime`.
fn send_tags(c: &mut RawClient, stream_id: u32, tags: &[Tag], retime: impl Fn(usize, u32) -> u32) {
    for (i, tag) in tags.iter().enumerate() {
        let ts = retime(i, tag.timestamp);
        match tag.kind {
            8 => c.session.audio(stream_id, ts, &tag.body),
            9 => c.session.video(stream_id, ts, &tag.body),
            _ => continue,
        }
        if i % 32 == 0 {
            c.flush().expect("send media");
        }
    }
    c.session.delete_stream(stream_id);
    c.flush().expect("send media");
}

#[test]
fn random_bytes_instead_of_a_handshake_cost_only_that_connection() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut noise = vec![0u8; 8192];
    for b in noise.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    // A wrong version byte, and a valid one followed by garbage chunks.
    for first in [0x16u8, 0x03] {
        noise[0] = first;
        let mut c = RawClient::connect(&d.rtmp);
        let _ = c.sock.write_all(&noise);
        assert!(
            c.closed_by_server(Duration::from_secs(10)),
            "server kept a garbage connection (first byte {first:#x})"
        );
    }
    assert!(d.log().contains("protocol error"), "the reason is logged");
    assert_still_records(&d, "after-garbage");
}

#[test]
fn hostile_chunk_sizes_are_refused() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    for size in [0u32, 1 << 31] {
        let mut c = RawClient::connect(&d.rtmp);
        c.handshake();
        c.session.set_chunk_size(size);
        c.session.connect("live", "rtmp://127.0.0.1/live", false);
        let _ = c.flush();
        assert!(
            c.closed_by_server(Duration::from_secs(10)),
            "chunk size {size} accepted"
        );
    }
    assert_still_records(&d, "after-chunk-size");
}

#[test]
fn absurd_amf_nesting_and_publish_before_connect_are_refused() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    // `connect` whose command object nests 100,000 objects deep.
    let mut payload = vec![0x02, 0x00, 0x07];
    payload.extend_from_slice(b"connect");
    payload.push(0x00);
    payload.extend_from_slice(&1f64.to_be_bytes());
    for _ in 0..100_000 {
        payload.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
    }
    let mut c = RawClient::connect(&d.rtmp);
    c.handshake();
    c.session.raw_message(20, 0, 0, &payload);
    let _ = c.flush();
    assert!(
        c.closed_by_server(Duration::from_secs(10)),
        "deep AMF accepted"
    );

    let mut c = RawClient::connect(&d.rtmp);
    c.handshake();
    c.session.create_stream();
    c.session.publish(1, "sneaky");
    let _ = c.flush();
    assert!(
        c.closed_by_server(Duration::from_secs(10)),
        "publish before connect accepted"
    );
    assert!(d.recordings().is_empty());
    assert_still_records(&d, "after-amf");
}

#[test]
fn names_that_could_escape_the_data_dir_are_refused() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    for key in ["..", "../../etc", "a\u{1}b", ".hidden"] {
        let mut c = RawClient::connect(&d.rtmp);
        let (_, codes) = c.publish("live", key, false);
        assert!(
            codes.iter().any(|c| c == "NetStream.Publish.BadName"),
            "{key:?}: {codes:?}"
        );
        assert!(
            !codes.iter().any(|c| c == "NetStream.Publish.Start"),
            "{key:?}: {codes:?}"
        );
    }
    let mut c = RawClient::connect(&d.rtmp);
    let (_, codes) = c.publish("..", "cam", false);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.BadName"),
        "{codes:?}"
    );
    assert!(d.recordings().is_empty());
    let entries: Vec<_> = std::fs::read_dir(d.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "only index/ and media/ in the data dir: {entries:?}"
    );
    assert_still_records(&d, "after-names");
}

#[test]
fn video_before_its_sequence_header_is_dropped_and_the_rest_recorded() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let clip = media::clip(Clip::AudioVideo, 8);
    let sent = media::probe(clip.to_str().unwrap());
    let mut tags = read_tags(&clip);
    // Move the first coded video frame ahead of the sequence headers (a copy of it).
    let frame = tags
        .iter()
        .find(|t| t.kind == 9 && t.body.get(1) == Some(&1))
        .unwrap()
        .clone();
    tags.insert(0, frame);
    let mut c = RawClient::connect(&d.rtmp);
    let (id, codes) = c.publish("live", "early", false);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    send_tags(&mut c, id, &tags, |_, ts| ts);
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(20));
    let url = d.http_url(recs[0]["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(errors.trim().is_empty(), "{errors}");
    let got = media::probe(&url);
    assert_eq!(
        got.video_frames, sent.video_frames,
        "every real frame recorded"
    );
    assert!(
        d.log().contains("dropping a malformed media message"),
        "the early frame is logged"
    );
}

#[test]
fn timestamps_going_backwards_are_repaired_or_become_a_discontinuity() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let clip = media::clip(Clip::AudioVideo, 12);
    let sent = media::probe(clip.to_str().unwrap());
    let tags = read_tags(&clip);
    let half = tags.len() / 2;
    let mut c = RawClient::connect(&d.rtmp);
    let (id, _) = c.publish("live", "backwards", false);
    // Every 10th tag steps back 30 ms; from the middle on, the clock restarts 5 s earlier.
    send_tags(&mut c, id, &tags, |i, ts| {
        let ts = if i % 10 == 5 {
            ts.saturating_sub(30)
        } else {
            ts
        };
        if i >= half {
            ts.saturating_sub(5000)
        } else {
            ts
        }
    });
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(20));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    assert_eq!(
        rec["discontinuities"], 1,
        "the 5 s jump is one discontinuity: {rec}"
    );
    let url = d.http_url(rec["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(errors.trim().is_empty(), "{errors}");
    // Repaired, not reordered: each track's decode times increase across the recording.
    let packets = media::packets(std::path::Path::new(&url));
    for video in [true, false] {
        let dts: Vec<f64> = packets
            .iter()
            .filter(|p| p.video == video)
            .map(|p| p.dts)
            .collect();
        assert!(dts.len() > 100, "{} packets", dts.len());
        assert!(
            dts.windows(2).all(|w| w[1] > w[0]),
            "DTS not increasing (video: {video})"
        );
    }
    let got = media::probe(&url);
    // At most one GOP lost at the jump (the new segment waits for a keyframe).
    assert!(
        got.video_frames + 25 >= sent.video_frames,
        "{} of {}",
        got.video_frames,
        sent.video_frames
    );
    let playlist = d.get(rec["playlist"].as_str().unwrap()).text();
    assert_eq!(
        playlist.matches("#EXT-X-DISCONTINUITY\n").count(),
        1,
        "{playlist}"
    );
}

#[test]
fn after_an_unpublish_the_connection_gets_a_fresh_handshake_timeout() {
    let d = Daemon::start("flow_continue_duration_s = 0", "handshake_timeout_s = 2");
    let clip = media::clip(Clip::AudioVideo, 2);
    let mut c = RawClient::connect(&d.rtmp);
    let (id, codes) = c.publish("live", "again", false);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    // Publishing for longer than the handshake timeout, then unpublishing (deleteStream).
    std::thread::sleep(Duration::from_secs(3));
    send_tags(&mut c, id, &read_tags(&clip), |_, ts| ts);
    // An idle connection that does not publish again is closed, but not at once.
    assert_closed_between(&mut c, Duration::from_millis(1200), Duration::from_secs(5));
    d.wait_recordings(1, "finished", Duration::from_secs(20));
    assert!(
        d.log().contains("no publish within the handshake timeout"),
        "the close is logged with its reason"
    );
}

#[test]
fn a_publisher_that_goes_silent_is_dropped_after_the_idle_timeout_and_keeps_its_media() {
    let d = Daemon::start("flow_continue_duration_s = 0", "idle_timeout_s = 2");
    let clip = media::clip(Clip::AudioVideo, 4);
    let tags = read_tags(&clip);
    let sent: Vec<&Tag> = tags[..tags.len() / 2].iter().collect();
    let mut c = RawClient::connect(&d.rtmp);
    let (id, _) = c.publish("live", "silent", false);
    // Half the clip, far less than the publish socket's low-water mark at the end, then
    // nothing: the encoder hangs with its TCP connection open.
    for tag in &sent {
        match tag.kind {
            8 => c.session.audio(id, tag.timestamp, &tag.body),
            9 => c.session.video(id, tag.timestamp, &tag.body),
            _ => continue,
        }
        c.flush().expect("send media");
    }
    // Dropped after idle_timeout_s, not before.
    assert_closed_between(&mut c, Duration::from_millis(1200), Duration::from_secs(6));
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(20));
    assert!(d.log().contains("no data for 2 s"), "the close is logged");
    let url = d.http_url(recs[0]["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(errors.trim().is_empty(), "{errors}");
    // Every coded video frame sent before the silence is in the recording.
    let frames_sent = sent
        .iter()
        .filter(|t| t.kind == 9 && t.body.get(1) == Some(&1))
        .count() as u64;
    assert_eq!(media::probe(&url).video_frames, frames_sent);
    assert_still_records(&d, "after-silence");
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_others_keep_recording() {
    let d = Daemon::start("flow_continue_duration_s = 0", "write_timeout_s = 1");
    let mut c = RawClient::connect(&d.rtmp);
    c.handshake();
    c.session.connect("live", "rtmp://127.0.0.1/live", false);
    let _ = c.flush();
    // Every releaseStream earns a `_result`; never read them.
    let sock = c.sock.try_clone().unwrap();
    let flooder = std::thread::spawn(move || {
        let mut sock = sock;
        let mut session = edgerec::proto::rtmp::ClientSession::new();
        for _ in 0..2000 {
            for _ in 0..256 {
                session.release_stream("x");
            }
            if sock.write_all(&session.take_output()).is_err() {
                return true;
            }
        }
        false
    });
    wait_for(
        "the daemon to drop the non-reading client",
        Duration::from_secs(60),
        || d.log().contains("did not read").then_some(()),
    );
    assert!(
        flooder.join().unwrap(),
        "the flood ended because the server closed the socket"
    );
    assert_still_records(&d, "while-flooded");
}

#[test]
fn a_full_disk_fails_the_recording_cleanly_and_the_daemon_keeps_serving() {
    let mut d = Daemon::configure("flow_continue_duration_s = 0", "");
    let Some(unmount) = Tmpfs::mount(&d.data_dir().join("media"), "700k") else {
        return;
    };
    d.spawn();
    // Real time, so the publisher is still sending when the disk fills (~5 s in).
    let clip = media::clip(Clip::AudioVideo, 20);
    let out = media::publish(&d.rtmp_url("live", "full"), &clip, true)
        .wait_with_output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the publisher is disconnected when its recording fails"
    );
    let rec = wait_for("the recording to fail", Duration::from_secs(20), || {
        d.recordings().into_iter().find(|r| r["state"] == "failed")
    });
    let failure = rec["failure"].as_str().unwrap();
    assert!(failure.contains("No space left"), "{failure}");
    assert!(d.log().contains("recording failed"), "logged loudly");
    // What was durable before the disk filled is indexed, exists and decodes.
    let rec = d.recording(rec["id"].as_str().unwrap());
    let segments = rec["segment_list"].as_array().unwrap();
    assert!(!segments.is_empty(), "{rec}");
    for seg in segments {
        let errors = media::decode_errors(&d.http_url(seg["uri"].as_str().unwrap()));
        assert!(errors.trim().is_empty(), "{}: {errors}", seg["uri"]);
    }
    assert_eq!(d.get("/healthz").status, 200);
    // Space comes back (the operator frees the disk): recording works again.
    drop(unmount);
    assert_still_records(&d, "after-full");
}

/// Enhanced RTMP HEVC (ffmpeg 5.1 cannot send it): x265 output wrapped in `hvc1` tags.
#[test]
fn enhanced_rtmp_hevc_is_recorded() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let (aus, hvcc) = support::hevc::encode_clip(6);
    support::hevc::publish(&d.rtmp, "hevc", &aus, &hvcc);
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(20));
    assert_eq!(recs[0]["video_codec"], "h265");
    assert_eq!(recs[0]["resolution"], "640x360");
    let url = d.http_url(recs[0]["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(errors.trim().is_empty(), "{errors}");
    let got = media::probe(&url);
    assert_eq!(got.video_frames, aus.len() as u64);
    assert!(recs[0]["segments"].as_u64().unwrap() >= 2);
}

/// The daemon's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[test]
fn huge_commands_and_media_before_a_publish_are_refused_at_their_header() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let before = peak_rss_mib(&d);
    // A legitimate encoder publishes all along.
    let clip = media::clip(Clip::AudioVideo, 8);
    let sent = media::probe(clip.to_str().unwrap());
    let legit = media::publish(&d.rtmp_url("live", "beside-the-flood"), &clip, true);
    // 16 peers, each announcing an 8 MiB AMF0 command (type 20) and streaming AMF nulls:
    // parsed whole, each would cost the daemon hundreds of MiB.
    const LEN: usize = 8 * 1024 * 1024;
    // Half of them send an 8 MiB video message instead, before any publish.
    let mut peers: Vec<RawClient> = (0..16)
        .map(|i| {
            let mut c = RawClient::connect(&d.rtmp);
            c.handshake();
            let len = (LEN as u32).to_be_bytes();
            let type_id = if i % 2 == 0 { 20 } else { 9 };
            c.sock
                .write_all(&[3, 0, 0, 0, len[1], len[2], len[3], type_id, 1, 0, 0, 0])
                .unwrap();
            c
        })
        .collect();
    let chunk: Vec<u8> = std::iter::once(0xC3).chain([0x05; 128]).collect();
    for c in peers.iter_mut() {
        // The server closes on the header; writes after that fail, which is the point.
        for _ in 0..(LEN / 128).min(8192) {
            if c.sock.write_all(&chunk).is_err() {
                break;
            }
        }
    }
    for c in peers.iter_mut() {
        assert!(c.closed_by_server(Duration::from_secs(10)), "not closed");
    }
    let log = d.log();
    assert!(
        log.matches("exceeds the limit of 65536").count() >= 16,
        "{log}"
    );
    let out = legit.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = peak_rss_mib(&d);
    assert!(
        peak <= before + 16 && peak <= 64,
        "peak RSS grew from {before} to {peak} MiB"
    );
    // Every frame of the encoder beside the flood is recorded.
    let rec = wait_for("the encoder's recording", Duration::from_secs(20), || {
        d.recordings()
            .into_iter()
            .find(|r| r["stream"] == "beside-the-flood" && r["state"] == "finished")
    });
    let url = d.http_url(rec["playlist"].as_str().unwrap());
    let got = media::probe(&url);
    assert_eq!(
        (got.video_frames, got.audio_frames),
        (sent.video_frames, sent.audio_frames)
    );
    assert_still_records(&d, "after-amf-flood");
}

#[test]
fn an_oversized_decoder_configuration_is_dropped_and_the_stream_goes_on() {
    let d = Daemon::start("", "");
    let mut c = RawClient::connect(&d.rtmp);
    let (id, codes) = c.publish("live", "bigcfg", false);
    assert!(
        codes.iter().any(|s| s == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    // An AVC sequence header whose record is 1 MiB: refused by the demuxer with a
    // reason instead of being copied in front of every keyframe.
    let mut body = vec![0x17, 0, 0, 0, 0];
    body.extend_from_slice(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1]);
    body.resize(1024 * 1024, 0);
    c.session.video(id, 0, &body);
    c.flush().unwrap();
    d.wait_log("over the 8192-byte cap", 1, Duration::from_secs(10));
    assert!(
        !c.closed_by_server(Duration::from_millis(500)),
        "the publisher stays"
    );
}

#[test]
fn a_name_with_a_newline_cannot_forge_a_log_line() {
    let d = Daemon::start("", "");
    let mut c = RawClient::connect(&d.rtmp);
    let (_, codes) = c.publish("live", "cam\n2026-01-01T00:00:00Z ERROR forged", false);
    assert!(
        codes.iter().any(|s| s == "NetStream.Publish.BadName"),
        "{codes:?}"
    );
    d.wait_log(
        "publish refused: bad stream name",
        1,
        Duration::from_secs(10),
    );
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "{log}"
    );
    assert!(log.contains(r"cam\n2026"), "escaped in the line: {log}");
}

#[test]
fn a_panicking_writer_fails_its_recording_only() {
    let mut d = Daemon::configure("flow_continue_duration_s = 2", "");
    d.spawn_with_env(&[("EDGEREC_TEST_WRITER_PANIC", "doomed")]);
    let clip = media::clip(Clip::AudioVideo, 16);
    let mut doomed = media::publish(&d.rtmp_url("live", "doomed"), &clip, true);
    let healthy = media::publish(&d.rtmp_url("live", "healthy"), &clip, true);

    // The hook panics as the third segment opens: two are durable and stay playable.
    let failed = wait_for(
        "the doomed recording failed",
        Duration::from_secs(40),
        || {
            d.recordings()
                .into_iter()
                .find(|r| r["stream"] == "doomed" && r["state"] == "failed")
        },
    );
    assert!(
        failed["failure"]
            .as_str()
            .is_some_and(|f| f.contains("panicked") && f.contains("test fault hook")),
        "{failed}"
    );
    assert!(failed["segments"].as_u64() >= Some(2), "{failed}");
    let errors = media::decode_errors(&d.http_url(failed["playlist"].as_str().unwrap()));
    assert!(errors.trim().is_empty(), "{errors}");
    // Its publisher is dropped with the reason; the other stream records to the end.
    wait_for(
        "the doomed publisher dropped",
        Duration::from_secs(20),
        || doomed.try_wait().ok().flatten(),
    );
    let out = healthy.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = wait_for(
        "the healthy recording finished",
        Duration::from_secs(30),
        || {
            d.recordings()
                .into_iter()
                .find(|r| r["stream"] == "healthy" && r["state"] == "finished")
        },
    );
    let sent = media::probe(clip.to_str().unwrap());
    let got = media::probe(&d.http_url(rec["playlist"].as_str().unwrap()));
    assert!(
        got.video_frames + 25 >= sent.video_frames && got.video_frames <= sent.video_frames,
        "{got:?} vs {sent:?}"
    );
    // The stream name is free again at once (a short publish stays under the hook's third
    // segment), and shutdown does not wait on the dead writer.
    media::publish_and_wait(
        &d.rtmp_url("live", "doomed"),
        &media::clip(Clip::AudioVideo, 4),
        false,
    );
    wait_for(
        "the doomed stream recorded again",
        Duration::from_secs(30),
        || {
            d.recordings()
                .into_iter()
                .find(|r| r["stream"] == "doomed" && r["state"] == "finished")
        },
    );
    assert_eq!(d.stop(), Some(0));
    let log = d.log();
    assert!(log.contains("the recorder thread panicked"), "{log}");
    assert!(!log.contains("did not finish in 20 s"), "{log}");
}

#[test]
fn an_unfinished_index_snapshot_from_a_power_cut_does_not_stop_the_start() {
    let mut d = Daemon::start("flow_continue_duration_s = 0", "");
    media::publish_and_wait(
        &d.rtmp_url("live", "before"),
        &media::clip(Clip::AudioVideo, 4),
        false,
    );
    let rec = wait_for("recorded", Duration::from_secs(30), || {
        d.recordings()
            .into_iter()
            .find(|r| r["state"] == "finished")
    });
    d.kill9();
    // What a second power cut during sled's snapshot leaves behind: a partial file with a
    // bad checksum, which sled refuses to open past ("Read corrupted data").
    let index = d.data_dir().join("index");
    std::fs::write(
        index.join("snap.00000000000FFFFF.generating"),
        [0xA5u8; 700],
    )
    .unwrap();
    d.spawn();
    d.wait_log(
        "removed an unfinished index snapshot",
        1,
        Duration::from_secs(10),
    );
    assert!(!index.join("snap.00000000000FFFFF.generating").exists());
    let again = d.recording(rec["id"].as_str().unwrap());
    assert_eq!(again["segments"], rec["segments"]);
    let errors = media::decode_errors(&d.http_url(again["playlist"].as_str().unwrap()));
    assert!(errors.trim().is_empty(), "{errors}");
    assert_still_records(&d, "after");
}

#[test]
fn one_host_holding_idle_sockets_cannot_lock_other_publishers_out() {
    let mut d = Daemon::configure_with(
        "flow_continue_duration_s = 0",
        "handshake_timeout_s = 60",
        "[rtsp]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout_s = 60\nmax_connections_per_ip = 4",
    );
    d.spawn();
    // As many idle sockets as the RTMP listener has slots (64), from a second address:
    // that host keeps its share (16), the rest are closed at accept.
    let hog = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let mut idle: Vec<RawClient> = (0..64)
        .map(|_| RawClient::connect_from(&d.rtmp, hog))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = |clients: &mut Vec<RawClient>| {
        clients
            .iter_mut()
            .map(|c| c.closed_by_server(Duration::from_millis(1)))
            .filter(|&closed| closed)
            .count()
    };
    assert_eq!(closed(&mut idle), 48, "{}", d.log());
    assert!(
        d.log()
            .contains("rtmp connection refused: too many connections from this address (limit 16)"),
        "{}",
        d.log()
    );
    // Every other encoder still gets in, while the hog's sockets stay open.
    assert_still_records(&d, "beside-the-hog");
    idle.retain_mut(|c| !c.closed_by_server(Duration::from_millis(1)));
    assert_eq!(idle.len(), 16, "the hog's share was closed early");
    // The RTSP listener counts its own slots the same way.
    let mut rtsp: Vec<RawClient> = (0..6)
        .map(|_| RawClient::connect_from(&d.rtsp, hog))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(closed(&mut rtsp), 2, "{}", d.log());
    let other = RawClient::connect_from(&d.rtsp, std::net::Ipv4Addr::new(127, 0, 0, 3));
    let mut other = vec![other];
    assert_eq!(closed(&mut other), 0, "another host was refused");
}

#[test]
fn a_one_gigabyte_part_file_is_recovered_in_bounded_memory() {
    let mut d = Daemon::start("flow_continue_duration_s = 60", "");
    let clip = media::clip(Clip::AudioVideo, 20);
    let mut ffmpeg = media::publish(&d.rtmp_url("live", "huge"), &clip, true);
    // Killed mid-way through the first segment (4 s), after a flush (1 s) made part of it
    // durable.
    let rec = wait_for(
        "media in the first segment",
        Duration::from_secs(20),
        || {
            let streams = d.json("/api/v1/streams");
            let received = streams[0]["media_received_ms"].as_u64().unwrap_or(0);
            (received >= 2500)
                .then(|| d.recordings().into_iter().next())
                .flatten()
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    // The .part a publisher that never sends a keyframe again would leave: 1 GiB. Its
    // whole packets are repeated; a scan that reads it whole holds 1 GiB.
    let part = d.recording_dir(&rec).join("00000001.ts.part");
    let mut data = std::fs::read(&part).expect("the open segment's .part");
    // Its packets (the file may end in preallocated zeros).
    data.truncate(edgerec::mux::ts_scan::scan(&data, true).keep_len);
    std::fs::write(&part, &data).unwrap();
    assert!(data.len() > 50_000, "only {} bytes durable", data.len());
    let mut file = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .unwrap(),
    );
    let mut size = data.len() as u64;
    while size < 1 << 30 {
        file.write_all(&data).unwrap();
        size += data.len() as u64;
    }
    file.flush().unwrap();
    drop(file);
    d.spawn();
    let recs = d.wait_recordings(1, "resumable", Duration::from_secs(60));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    let adopted = &rec["segment_list"][0];
    assert!(adopted["recovered"].as_bool().unwrap(), "{rec}");
    assert!(
        adopted["bytes"].as_u64().unwrap() > (1 << 30) - (1 << 20),
        "{adopted}"
    );
    let peak = peak_rss_mib(&d);
    assert!(peak <= 64, "recovery peaked at {peak} MiB");
}

/// Bytes of every media file under the data dir.
fn media_bytes(d: &Daemon) -> u64 {
    fn walk(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    }
    walk(&d.data_dir().join("media"))
}

/// The AVC sequence header of an ffmpeg clip.
fn avc_config() -> Vec<u8> {
    let tags = read_tags(&media::clip(Clip::VideoOnly, 1));
    tags.into_iter()
        .find(|t| t.kind == 9 && t.body.get(1) == Some(&0))
        .expect("a sequence header")
        .body
}

#[test]
fn tiny_frames_cannot_make_the_box_write_more_than_twice_what_they_send() {
    let d = Daemon::start("flow_continue_duration_s = 0", "");
    let mut c = RawClient::connect(&d.rtmp);
    let (id, _) = c.publish("live", "tiny", false);
    let config = avc_config();
    c.session.video(id, 0, &config);
    let mut sent = config.len() as u64;
    // 10,000 keyframes of one 4-byte NAL, 1 ms apart: each is a TS packet and the
    // parameter sets on flash, 10-30 times what it is on the wire.
    let tiny = [0x17, 1, 0, 0, 0, 0, 0, 0, 4, 0x65, 0x88, 0x84, 0x00];
    for ts in 0..10_000u32 {
        c.session.video(id, ts, &tiny);
        sent += tiny.len() as u64;
        if ts % 256 == 255 && c.flush().is_err() {
            break;
        }
    }
    let _ = c.flush();
    assert!(c.closed_by_server(Duration::from_secs(10)), "not dropped");
    d.wait_recordings(1, "finished", Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("publisher dropped: the publisher's frames cost"),
        "{log}"
    );
    // Twice what was sent, plus the allowance of the first seconds (256 KiB, and a TS
    // packet per frame at 60 frames a second).
    let written = media_bytes(&d);
    assert!(
        written <= 2 * sent + 512 * 1024,
        "{written} bytes on flash for {sent} sent"
    );
    assert_still_records(&d, "after-tiny");
}

#[test]
fn a_publisher_that_keeps_jumping_its_clock_is_dropped_after_ten_cuts_a_minute() {
    let d = Daemon::start("flow_continue_duration_s = 30", "");
    let tags = read_tags(&media::clip(Clip::VideoOnly, 2));
    let reason = "more than 10 times within a minute";
    // The 2 s clip again and again, each copy 100 s later than the one before: each copy
    // starts with a jump, and each jump closes a segment.
    let mut c = RawClient::connect(&d.rtmp);
    let (id, _) = c.publish("live", "jumpy", false);
    'copies: for copy in 0..20u32 {
        for tag in &tags {
            let ts = tag.timestamp + copy * 100_000;
            match tag.kind {
                9 => c.session.video(id, ts, &tag.body),
                _ => continue,
            }
            if c.flush().is_err() {
                break 'copies;
            }
        }
    }
    assert!(c.closed_by_server(Duration::from_secs(10)), "not dropped");
    let recs = d.wait_recordings(1, "resumable", Duration::from_secs(20));
    let id_of = recs[0]["id"].as_str().unwrap().to_owned();
    // The first copy's segment and one for each of the ten jumps allowed.
    let segments = d.recording(&id_of)["segments"].as_u64().unwrap();
    assert_eq!(segments, 11, "{}", d.log());
    // Reconnecting (a resume is a cut too) does not reset the count.
    let mut c = RawClient::connect(&d.rtmp);
    let (id, _) = c.publish("live", "jumpy", false);
    for tag in tags.iter().filter(|t| t.kind == 9) {
        c.session.video(id, tag.timestamp, &tag.body);
        if c.flush().is_err() {
            break;
        }
    }
    assert!(c.closed_by_server(Duration::from_secs(10)), "not dropped");
    d.wait_log(reason, 2, Duration::from_secs(10));
    assert_eq!(d.recording(&id_of)["segments"], 11, "{}", d.log());
    assert_still_records(&d, "after-jumps");
}

#[test]
fn a_segment_without_keyframes_is_cut_after_four_target_durations() {
    let d = Daemon::start("segment_duration_s = 1\nflow_continue_duration_s = 0", "");
    let clip = media::clip(Clip::AudioVideo, 12);
    let sent = media::probe(clip.to_str().unwrap());
    // An encoder that flags only its first picture as a keyframe (the pictures are the
    // clip's, so its IDRs still decode): no cut point after the first.
    let mut tags = read_tags(&clip);
    let mut first = true;
    for t in tags.iter_mut().filter(|t| t.kind == 9 && t.body[1] == 1) {
        if t.body[0] >> 4 == 1 && !std::mem::take(&mut first) {
            t.body[0] = 0x27;
        }
    }
    let mut c = RawClient::connect(&d.rtmp);
    let (id, _) = c.publish("live", "long-gop", false);
    send_tags(&mut c, id, &tags, |_, ts| ts);
    let recs = d.wait_recordings(1, "finished", Duration::from_secs(20));
    let rec = d.recording(recs[0]["id"].as_str().unwrap());
    let segments = rec["segment_list"].as_array().unwrap();
    // 4 s, 4 s, 4 s and what is left of the 12 s.
    assert!((3..=4).contains(&segments.len()), "{rec}");
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["keyframe"], i == 0, "{s}");
        let duration = s["duration_s"].as_f64().unwrap();
        assert!(duration <= 4.05, "{s}");
    }
    assert!(d.log().contains("no keyframe to cut the segment at"));
    let url = d.http_url(rec["playlist"].as_str().unwrap());
    let errors = media::decode_errors(&url);
    assert!(errors.trim().is_empty(), "{errors}");
    assert_eq!(media::probe(&url).video_frames, sent.video_frames);
}

/// Fills the filesystem of `path` to the last byte with a file at `path`.
fn fill_disk(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![0u8; chunk];
        while f.write_all(&block).is_ok() {}
    }
    let _ = f.sync_all();
}

#[test]
fn an_index_that_cannot_write_is_reported_and_reopened_once_the_disk_has_room() {
    let mut d = Daemon::configure("flow_continue_duration_s = 0", "");
    // The whole data dir, index and media, on one small card.
    let Some(_card) = Tmpfs::mount(&d.data_dir(), "48m") else {
        return;
    };
    d.spawn();
    assert_eq!(d.get("/healthz").status, 200);
    let filler = d.data_dir().join("filler");
    fill_disk(&filler);
    // The index takes writes into the log segment it has; once it needs another (sled
    // writes whole 512 KiB segments) a write fails, and sled refuses every write from
    // then on while reads still work. API writes get it there.
    let refused = (0..20_000)
        .map(|i| {
            let body = format!(r#"{{"name":"filler-{i}","hls":{{}}}}"#);
            support::http::send_json("POST", &d.http, "/api/v1/templates", &body).unwrap()
        })
        .find(|r| r.status != 201)
        .expect("the index never ran out of room");
    assert_eq!(refused.status, 500, "{}", refused.text());
    let health = wait_for("/healthz to say so", Duration::from_secs(30), || {
        let r = d.get("/healthz");
        (r.status == 503).then(|| r.text())
    });
    assert!(health.contains("the index cannot write"), "{health}");
    d.wait_log(
        "it is reopened by a restart once there is room",
        1,
        Duration::from_secs(30),
    );
    assert!(d.is_running(), "exited while the disk is full");
    // Room again: the daemon exits to be restarted with the index reopened (systemd's
    // Restart=always; here the test starts it again).
    std::fs::remove_file(&filler).unwrap();
    wait_for("the daemon to exit", Duration::from_secs(30), || {
        (!d.is_running()).then_some(())
    });
    assert!(d.log().contains("the disk has room again"), "{}", d.log());
    assert_eq!(d.stop(), Some(1), "a failure exit, for Restart=");
    d.spawn();
    assert_eq!(d.get("/healthz").status, 200);
    assert_still_records(&d, "after-reopen");
}
