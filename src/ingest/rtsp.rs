//! The RTSP publish listener (ANNOUNCE/RECORD, e.g. `ffmpeg -f rtsp`): accepts
//! connections, drives a `proto::rtsp::ServerSession` per connection, admits publishes
//! (the path `/app/stream`, name checks, signed URLs, one publisher per stream), binds UDP
//! port pairs for `RTP/AVP` transports, and forwards depacketized frames to the stream's
//! recorder, as `ingest::rtmp` does for RTMP.
//!
//! A bad peer costs only its own connection: protocol errors (answered 400/413 first),
//! no RECORD within `handshake_timeout_s`, no RTP for `idle_timeout_s` while recording and
//! refused names close that socket with a log line; every other stream keeps recording.
//! UDP packets are accepted only from the publisher's address and the ports are freed
//! when the connection ends. Never blocks on flash (see `record::PublishHandle`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtsp_types::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::PublishGate;
use super::rate::RateMeter;
use super::slots::ConnectionSlots;
use crate::config::RtspConfig;
use crate::media::{Frame, TrackKind, TICKS_PER_SECOND};
use crate::metrics::{self, RefusalReason};
use crate::proto::rtsp::{
    Limits, MediaEvent, RtpTrack, ServerSession, SessionEvent, TrackTransport, WallClock,
};
use crate::record::{PublishHandle, PublishRefused, Recorders};
use crate::storage::validate_name;
use crate::stream_key::StreamKey;

/// A peer that does not read our replies for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts RTSP connections until `cancel`, then waits for them to close.
pub async fn run(
    listener: TcpListener,
    config: RtspConfig,
    gate: PublishGate,
    recorders: Recorders,
    cancel: CancellationToken,
) {
    let slots = ConnectionSlots::new(config.max_connections, config.max_connections_per_ip);
    let tracker = TaskTracker::new();
    let bind_ip = listener
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let ports = Arc::new(UdpPorts::new(
        config.udp_ports().unwrap_or((30000, 30100)),
        bind_ip,
    ));
    let config = Arc::new(config);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "rtsp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.try_take(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                tracing::warn!(%peer, "rtsp connection refused: {refused}");
                continue;
            }
        };
        metrics::global()
            .connections
            .with_label_values(&["rtsp"])
            .inc();
        let _ = socket.set_nodelay(true);
        let mut conn = Connection::new(
            peer,
            config.clone(),
            gate.clone(),
            recorders.clone(),
            ports.clone(),
        );
        let cancel = cancel.clone();
        tracker.spawn(async move {
            match conn.serve(socket, cancel).await {
                Ok(()) => tracing::debug!(%peer, "rtsp connection closed"),
                Err(reason) => {
                    tracing::warn!(%peer, stream = conn.stream_label(), %reason, "rtsp connection dropped")
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The configured UDP port range and the pairs in use.
struct UdpPorts {
    range: (u16, u16),
    bind_ip: IpAddr,
    used: Mutex<HashSet<u16>>,
}

/// A bound RTP/RTCP socket pair; the port returns to the pool when dropped.
struct UdpPair {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The RTCP socket again, non-blocking, read directly (not through the runtime's
    /// readiness, which may not have seen a datagram that is already queued).
    rtcp_now: std::net::UdpSocket,
    port: u16,
    pool: Arc<UdpPorts>,
}

impl Drop for UdpPair {
    fn drop(&mut self) {
        self.pool
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.port);
    }
}

impl UdpPorts {
    fn new(range: (u16, u16), bind_ip: IpAddr) -> UdpPorts {
        UdpPorts {
            range,
            bind_ip,
            used: Mutex::new(HashSet::new()),
        }
    }

    /// Binds the first free even port (and the next) in the range.
    fn allocate(self: &Arc<Self>) -> Option<UdpPair> {
        let (lo, hi) = self.range;
        let first = lo + lo % 2;
        let mut port = first;
        while port < hi {
            let claimed = self
                .used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(port);
            if claimed {
                let bind = |p: u16| -> std::io::Result<std::net::UdpSocket> {
                    let s = std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, p))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                };
                let pair = (|| {
                    let (rtp, rtcp) = (bind(port)?, bind(port + 1)?);
                    let rtcp_now = rtcp.try_clone()?;
                    Ok::<_, std::io::Error>((
                        UdpSocket::from_std(rtp)?,
                        UdpSocket::from_std(rtcp)?,
                        rtcp_now,
                    ))
                })();
                match pair {
                    Ok((rtp, rtcp, rtcp_now)) => {
                        return Some(UdpPair {
                            rtp,
                            rtcp,
                            rtcp_now,
                            port,
                            pool: self.clone(),
                        })
                    }
                    Err(_) => {
                        self.used
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&port);
                    }
                }
            }
            port += 2;
        }
        None
    }
}

/// A UDP packet for the connection: (track, is RTCP, bytes).
type UdpPacket = (usize, bool, Bytes);

/// One publisher's connection.
struct Connection {
    peer: SocketAddr,
    config: Arc<RtspConfig>,
    gate: PublishGate,
    recorders: Recorders,
    ports: Arc<UdpPorts>,
    session: ServerSession,
    /// Per announced media section: the depacketizer, or `None` for a skipped track.
    tracks: Vec<Option<RtpTrack>>,
    publishing: Option<PublishHandle>,
    /// Audio held until the first video frame (see [`forward`]).
    audio_wait: Option<Vec<Frame>>,
    wall_clock: WallClock,
    recording: bool,
    started: Instant,
    last_rtp: Instant,
    udp_tx: mpsc::Sender<UdpPacket>,
    udp_rx: mpsc::Receiver<UdpPacket>,
    /// UDP readers; aborted (freeing their ports) when the connection ends.
    udp_tasks: JoinSet<()>,
    udp_bytes: u64,
    media_errors: u64,
    events: Vec<MediaEvent>,
}

impl Connection {
    fn new(
        peer: SocketAddr,
        config: Arc<RtspConfig>,
        gate: PublishGate,
        recorders: Recorders,
        ports: Arc<UdpPorts>,
    ) -> Connection {
        let limits = Limits {
            max_frame: config.max_packet_kb as usize * 1024,
            session_timeout_s: config.idle_timeout_s.max(10),
            ..Limits::default()
        };
        let id = format!("{:016x}", rand::random::<u64>());
        let (udp_tx, udp_rx) = mpsc::channel(256);
        Connection {
            peer,
            config,
            gate,
            recorders,
            ports,
            session: ServerSession::new(limits, id),
            tracks: Vec::new(),
            publishing: None,
            audio_wait: None,
            wall_clock: WallClock::default(),
            recording: false,
            started: Instant::now(),
            last_rtp: Instant::now(),
            udp_tx,
            udp_rx,
            udp_tasks: JoinSet::new(),
            udp_bytes: 0,
            media_errors: 0,
            events: Vec::new(),
        }
    }

    fn stream_label(&self) -> String {
        match &self.publishing {
            Some(h) => h.stats().stream_key().to_string(),
            None => "-".into(),
        }
    }

    async fn serve(
        &mut self,
        mut socket: TcpStream,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        let handshake = Duration::from_secs(self.config.handshake_timeout_s);
        let idle = Duration::from_secs(self.config.idle_timeout_s);
        let mut buf = vec![0u8; 64 * 1024];
        let mut rate = RateMeter::new();
        let result = loop {
            let deadline = if self.recording {
                self.last_rtp + idle
            } else {
                self.started + handshake
            };
            let fed = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                r = tokio::time::timeout_at(deadline, socket.read(&mut buf)) => match r {
                    Err(_) if self.recording => break Err(format!("no RTP for {} s", idle.as_secs())),
                    Err(_) => break Err("no RECORD within the handshake timeout".into()),
                    Ok(Err(e)) => break Err(format!("read: {e}")),
                    Ok(Ok(0)) => break Ok(()),
                    Ok(Ok(n)) => self.session.feed(&buf[..n]).map_err(|e| format!("protocol error: {e}")),
                },
                Some((track, rtcp, packet)) = self.udp_rx.recv() => {
                    self.udp_bytes += packet.len() as u64;
                    if rtcp { self.on_rtcp(track, &packet); Ok(()) } else { self.on_rtp(track, packet) }
                }
            };
            let mut teardown = false;
            let mut outcome = fed;
            while outcome.is_ok() {
                let Some(event) = self.session.poll_event() else {
                    break;
                };
                match self.on_event(event).await {
                    Ok(done) => teardown |= done,
                    Err(e) => outcome = Err(e),
                }
            }
            if let Some(handle) = self.publishing.as_mut() {
                if handle.hand_over().is_err() {
                    outcome = outcome.and(Err(recorder_failure(handle)));
                }
            }
            let out = self.session.take_output();
            if !out.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(format!("write: {e}")),
                    Err(_) => break Err("peer did not read our replies".into()),
                }
            }
            if let Some(handle) = &self.publishing {
                let received = self.session.bytes_received() + self.udp_bytes;
                let stats = handle.stats();
                stats.set_bytes_received(received);
                if let Some(bps) = rate.sample(received) {
                    stats.bitrate_bps.store(bps, Ordering::Relaxed);
                }
            }
            if let Err(e) = outcome {
                break Err(e);
            }
            if teardown {
                break Ok(());
            }
        };
        self.finish();
        result
    }

    /// Hands over what the depacketizers still hold; the recording becomes resumable
    /// when the handle drops.
    fn finish(&mut self) {
        let mut events = Vec::new();
        for track in self.tracks.iter_mut().flatten() {
            track.finish(&mut events);
        }
        if let Some(mut handle) = self.publishing.take() {
            for event in events {
                let _ = forward(&mut handle, &mut self.audio_wait, event);
            }
            // Video never came: the held audio is all there is.
            for audio in self.audio_wait.take().into_iter().flatten() {
                let _ = handle.send_frame(audio);
            }
            let _ = handle.hand_over();
            tracing::info!(peer = %self.peer, stream = %handle.stats().stream_key(), "rtsp publish ended");
        }
        self.udp_tasks.abort_all();
    }

    /// Ok(true): TEARDOWN; close after sending the reply.
    async fn on_event(&mut self, event: SessionEvent) -> Result<bool, String> {
        match event {
            SessionEvent::Announce { path, query, sdp } => {
                self.on_announce(&path, &query, &sdp.media).await?;
            }
            SessionEvent::SetupUdp { track, .. } => match self.ports.allocate() {
                Some(pair) => {
                    let port = pair.port;
                    self.spawn_udp(track, pair);
                    self.session
                        .accept_udp(port)
                        .map_err(|e| format!("protocol error: {e}"))?;
                }
                None => {
                    tracing::warn!(peer = %self.peer, range = %self.config.udp_port_range, "rtsp UDP setup refused: no free port pair");
                    self.session
                        .refuse(
                            StatusCode::NotEnoughBandwidth,
                            "no free UDP port pair; use TCP",
                        )
                        .map_err(|e| format!("protocol error: {e}"))?;
                }
            },
            SessionEvent::TrackSetUp { track, transport } => {
                let udp = matches!(transport, TrackTransport::Udp { .. });
                tracing::debug!(peer = %self.peer, track, udp, "rtsp track set up");
            }
            SessionEvent::Record => {
                self.recording = true;
                self.last_rtp = Instant::now();
                if let Some(h) = &self.publishing {
                    tracing::info!(peer = %self.peer, stream = %h.stats().stream_key(), recording = h.recording_id(), "rtsp publish started");
                }
            }
            SessionEvent::Teardown => return Ok(true),
            SessionEvent::Rtp { track, packet } => self.on_rtp(track, packet)?,
            SessionEvent::Rtcp { track, packet } => self.on_rtcp(track, &packet),
        }
        Ok(false)
    }

    async fn on_announce(
        &mut self,
        path: &[String],
        query: &str,
        media: &[crate::proto::rtsp::MediaDesc],
    ) -> Result<(), String> {
        let refuse = |s: &mut ServerSession, status, reason: &str| {
            s.refuse(status, reason)
                .map_err(|e| format!("protocol error: {e}"))
        };
        let [app, stream] = path else {
            tracing::warn!(peer = %self.peer, ?path, "rtsp publish refused: the path is not /app/stream");
            metrics::global().refused(RefusalReason::BadName);
            return refuse(
                &mut self.session,
                StatusCode::NotFound,
                "the path must be /app/stream",
            );
        };
        for (what, name) in [("app", app), ("stream", stream)] {
            if let Err(e) = validate_name(name) {
                tracing::warn!(peer = %self.peer, ?app, ?stream, "rtsp publish refused: bad {what} name: {e}");
                metrics::global().refused(RefusalReason::BadName);
                return refuse(
                    &mut self.session,
                    StatusCode::BadRequest,
                    &format!("bad {what} name: {e}"),
                );
            }
        }
        let key = StreamKey::new(app, stream);
        if let Err(refusal) = self.gate.admit(app, stream, query, self.peer.ip()) {
            tracing::warn!(peer = %self.peer, stream = %key, reason = %refusal, "rtsp publish refused: not authorized");
            metrics::global().refused(RefusalReason::Unauthorized);
            return refuse(
                &mut self.session,
                StatusCode::Forbidden,
                &format!("publish refused: {refusal}"),
            );
        }
        let mut tracks = Vec::new();
        let mut skipped = Vec::new();
        for m in media {
            match RtpTrack::for_media(m) {
                Ok(t) => tracks.push(Some(t)),
                Err(reason) => {
                    skipped.push((m.kind.clone(), reason));
                    tracks.push(None);
                }
            }
        }
        let has = |kind| tracks.iter().flatten().any(|t| t.kind() == kind);
        let (has_video, has_audio) = (has(TrackKind::Video), has(TrackKind::Audio));
        if !has_video && !has_audio {
            let reasons: Vec<_> = skipped.iter().map(|(_, r)| r.as_str()).collect();
            tracing::warn!(peer = %self.peer, stream = %key, ?reasons, "rtsp publish refused: nothing recordable");
            metrics::global().refused(RefusalReason::NothingRecordable);
            return refuse(
                &mut self.session,
                StatusCode::UnsupportedMediaType,
                &format!("nothing recordable: {}", reasons.join("; ")),
            );
        }
        match self
            .recorders
            .start_publish(app, stream, query, self.peer.to_string(), "rtsp")
            .await
        {
            Ok(mut handle) => {
                for (kind, reason) in &skipped {
                    tracing::warn!(peer = %self.peer, stream = %key, media = %kind, %reason, "rtsp track not recorded");
                }
                if !has_audio {
                    if let Some((_, reason)) = skipped.iter().find(|(k, _)| k == "audio") {
                        handle.stats().set_audio_dropped(Some(reason.clone()));
                    }
                }
                if has_video && handle.expect_video().is_err() {
                    return Err(recorder_failure(&handle));
                }
                // Every config the SDP gives, before any frame (as RTMP's sequence headers
                // come first): a track configured after the first segment opened would
                // restart the recording at the next keyframe.
                for config in tracks.iter().flatten().filter_map(RtpTrack::initial_config) {
                    if handle.send_config(config).is_err() {
                        return Err(recorder_failure(&handle));
                    }
                }
                self.tracks = tracks;
                self.audio_wait = (has_video && has_audio).then(Vec::new);
                self.publishing = Some(handle);
                self.session
                    .accept_announce()
                    .map_err(|e| format!("protocol error: {e}"))
            }
            Err(e) => {
                let status = match e {
                    PublishRefused::AlreadyPublishing(_) | PublishRefused::StillClosing(_) => {
                        StatusCode::MethodNotValidInThisState
                    }
                    PublishRefused::DiskFull => StatusCode::ServiceUnavailable,
                    _ => StatusCode::InternalServerError,
                };
                tracing::warn!(peer = %self.peer, stream = %key, reason = %e, "rtsp publish refused");
                metrics::global().refused(e.reason());
                refuse(&mut self.session, status, &e.to_string())
            }
        }
    }

    /// Starts the reader of a UDP pair for `track`: packets from the publisher's address
    /// only, at most `max_packet_kb`. RTCP queued when an RTP packet is read goes first, so
    /// a sender report sent just before a track's first packet is seen before it (as over
    /// TCP), whichever socket the runtime happens to wake first.
    fn spawn_udp(&mut self, track: usize, pair: UdpPair) {
        let peer_ip = self.peer.ip();
        let max = self.config.max_packet_kb as usize * 1024;
        let tx = self.udp_tx.clone();
        self.udp_tasks.spawn(async move {
            let (mut buf, mut rtcp_buf) = (vec![0u8; max + 1], vec![0u8; max + 1]);
            let mut oversize = 0u64;
            // A packet accepted from the publisher, or None (dropped and counted).
            let mut accept = |n: usize, from: SocketAddr, buf: &[u8]| -> Option<Bytes> {
                if from.ip() != peer_ip {
                    return None;
                }
                if n > max {
                    oversize += 1;
                    if oversize <= 3 {
                        tracing::warn!(%from, limit = max, "rtsp UDP packet over max_packet_kb dropped");
                    }
                    return None;
                }
                Some(Bytes::copy_from_slice(&buf[..n]))
            };
            loop {
                let (rtcp, received) = tokio::select! {
                    biased;
                    r = pair.rtcp.recv_from(&mut rtcp_buf) => (true, r),
                    r = pair.rtp.recv_from(&mut buf) => (false, r),
                };
                let (n, from) = match received {
                    Ok(v) => v,
                    Err(e) => {
                        // E.g. an ICMP error queued on the socket: never spin on it.
                        tracing::debug!(error = %e, "rtsp UDP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Some(packet) = accept(n, from, if rtcp { &rtcp_buf } else { &buf }) else {
                    continue;
                };
                if !rtcp {
                    while let Ok((m, from)) = pair.rtcp_now.recv_from(&mut rtcp_buf) {
                        if let Some(r) = accept(m, from, &rtcp_buf) {
                            if tx.send((track, true, r)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if tx.send((track, rtcp, packet)).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Ticks since the connection started.
    fn arrival(&self) -> i64 {
        (self.started.elapsed().as_micros() as i64) * TICKS_PER_SECOND / 1_000_000
    }

    fn on_rtcp(&mut self, track: usize, packet: &[u8]) {
        let arrival = self.arrival();
        let has_video = self
            .tracks
            .iter()
            .flatten()
            .any(|t| t.kind() == TrackKind::Video);
        let (true, Some(Some(t))) = (self.recording, self.tracks.get_mut(track)) else {
            return;
        };
        let Some((at, ntp)) = t.push_rtcp(packet, arrival, &mut self.wall_clock) else {
            return;
        };
        // Segments are dated by the video track's reports (the audio's without video).
        let lead = t.kind() == TrackKind::Video || !has_video;
        if let (true, Some(handle)) = (lead, self.publishing.as_mut()) {
            // A stopped recorder is reported by the next frame's send.
            let _ = handle.send_wall_clock(at, crate::clock::ntp_to_unix_ms(ntp));
        }
    }

    fn on_rtp(&mut self, track: usize, packet: Bytes) -> Result<(), String> {
        if !self.recording {
            return Ok(());
        }
        self.last_rtp = Instant::now();
        let arrival = self.arrival();
        let Some(Some(t)) = self.tracks.get_mut(track) else {
            return Ok(()); // a skipped track (e.g. PCMA audio)
        };
        self.events.clear();
        let dropped_before = t.stats().dropped;
        let result = t.push(packet, arrival, &mut self.events);
        let lost = t.stats().dropped - dropped_before;
        let Some(handle) = self.publishing.as_mut() else {
            return Ok(());
        };
        if lost > 0 {
            // Access units cut by packet loss (or not decodable yet): counted with the
            // malformed ones; the depacketizer logs each at debug.
            handle
                .stats()
                .frames_rejected
                .fetch_add(lost, Ordering::Relaxed);
        }
        if let Err(e) = result {
            self.media_errors += 1;
            handle
                .stats()
                .frames_rejected
                .fetch_add(1, Ordering::Relaxed);
            if self.media_errors <= 3 || self.media_errors.is_multiple_of(1000) {
                tracing::warn!(peer = %self.peer, count = self.media_errors, error = %e, "dropping a malformed RTP packet");
            }
        }
        for event in self.events.drain(..) {
            if forward(handle, &mut self.audio_wait, event).is_err() {
                return Err(recorder_failure(handle));
            }
        }
        Ok(())
    }
}

/// Most audio held for the first video frame (about 3 s of 48 kHz AAC); past it the
/// audio goes on, and the recorder decides (it records audio only if video never comes).
const MAX_AUDIO_WAIT: usize = 150;

/// Hands `event` to the recorder. Until the first video frame of a publish with video,
/// audio is held in `audio_wait` (the recorder starts a recording at a video keyframe and
/// skips what comes before it, and video frames leave `DtsSynth` a few frames late).
fn forward(
    handle: &mut PublishHandle,
    audio_wait: &mut Option<Vec<Frame>>,
    event: MediaEvent,
) -> Result<(), crate::record::RecorderStopped> {
    match event {
        MediaEvent::Config(params) => handle.send_config(params),
        MediaEvent::Frame(frame) => {
            let Some(waiting) = audio_wait.as_mut() else {
                return handle.send_frame(frame);
            };
            if frame.kind == TrackKind::Audio && waiting.len() < MAX_AUDIO_WAIT {
                waiting.push(frame);
                return Ok(());
            }
            let held = audio_wait.take().unwrap_or_default();
            if frame.kind == TrackKind::Video {
                handle.send_frame(frame)?;
                held.into_iter().try_for_each(|a| handle.send_frame(a))
            } else {
                held.into_iter().try_for_each(|a| handle.send_frame(a))?;
                handle.send_frame(frame)
            }
        }
    }
}

fn recorder_failure(handle: &PublishHandle) -> String {
    handle.stats().stop_reason()
}
