//! The RTMP and RTMPS publish listeners: accepts connections, drives a
//! `proto::rtmp::ServerSession` per connection, admits publishes (name checks, one publisher
//! per stream) and forwards demuxed frames to the stream's recorder.
//!
//! RTMPS is the same code over a rustls stream (see [`Transport`]): the TLS handshake is
//! bounded by `handshake_timeout_s`, both listeners share `max_connections` and `max_connections_per_ip`
//! (see `slots`), and each
//! connection takes the certificate current when it was accepted (`tls::ServerTls`), so a
//! SIGHUP reload never touches a live publish. A failed TLS handshake is a warning and a
//! closed socket. The receive low-water mark (`lowat`) applies to plain TCP only: under TLS
//! every byte must go through rustls.
//!
//! A bad peer costs only its own connection: protocol errors, timeouts (handshake and
//! publish, idle, a peer that stops reading our replies) and refused names close that
//! socket with a log line; every other stream keeps recording. Never blocks on flash: the
//! recorder hand-off is non-blocking (see `record::PublishHandle`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::PublishGate;
use super::lowat::{self, PUBLISH_DRAIN, PUBLISH_LOW_WATER};
use super::rate::RateMeter;
use super::slots::ConnectionSlots;
use crate::config::RtmpConfig;
use crate::metrics::{self, RefusalReason};
use crate::proto::rtmp::amf0;
use crate::proto::rtmp::{DemuxEvent, FlvDemuxer, Limits, ServerSession, SessionEvent};
use crate::record::{PublishHandle, PublishRefused, Recorders};
use crate::storage::validate_name;
use crate::stream_key::StreamKey;
use crate::tls::ServerTls;

/// The RTMPS listener and the certificate it serves.
pub struct RtmpsListener {
    pub listener: TcpListener,
    pub tls: Arc<ServerTls>,
}

/// Accepts RTMP (and, with `rtmps`, RTMPS) connections until `cancel`, then waits for the
/// connections to close.
pub async fn run(
    listener: TcpListener,
    rtmps: Option<RtmpsListener>,
    config: RtmpConfig,
    gate: PublishGate,
    recorders: Recorders,
    cancel: CancellationToken,
) {
    let slots = ConnectionSlots::new(config.max_connections, config.max_connections_per_ip);
    let tracker = TaskTracker::new();
    let config = Arc::new(config);
    loop {
        let (accepted, tls) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => (a, None),
            a = accept_rtmps(rtmps.as_ref()) => (a, rtmps.as_ref().map(|r| r.tls.clone())),
        };
        let scheme = if tls.is_some() { "rtmps" } else { "rtmp" };
        let (socket, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "{scheme} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.try_take(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                tracing::warn!(%peer, "{scheme} connection refused: {refused}");
                continue;
            }
        };
        metrics::global()
            .connections
            .with_label_values(&[scheme])
            .inc();
        let _ = socket.set_nodelay(true);
        let (config, recorders, cancel) = (config.clone(), recorders.clone(), cancel.clone());
        let gate = gate.clone();
        tracker.spawn(async move {
            let started = Instant::now();
            let mut conn = Connection::new(peer, scheme, &config, gate, recorders);
            let served = match tls {
                None => conn.serve(socket, started, cancel).await,
                Some(tls) => {
                    let deadline = started + Duration::from_secs(config.handshake_timeout_s);
                    match tls_handshake(socket, &tls, deadline, &cancel).await {
                        Ok(Some(stream)) => conn.serve(stream, started, cancel).await,
                        Ok(None) => Ok(()),
                        Err(reason) => {
                            tracing::warn!(%peer, %reason, "rtmps TLS handshake failed");
                            return;
                        }
                    }
                }
            };
            match served {
                Ok(()) => tracing::debug!(%peer, "{scheme} connection closed"),
                Err(reason) => tracing::warn!(%peer, stream = conn.stream_label(), %reason, "{scheme} connection dropped"),
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The next RTMPS connection; never ready when RTMPS is off.
async fn accept_rtmps(rtmps: Option<&RtmpsListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match rtmps {
        Some(r) => r.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The server side of a TLS handshake with the certificate current now, by `deadline`.
/// `Ok(None)`: the daemon is stopping.
async fn tls_handshake(
    socket: TcpStream,
    tls: &ServerTls,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Option<TlsStream<TcpStream>>, String> {
    let accept = tokio_rustls::TlsAcceptor::from(tls.current()).accept(socket);
    tokio::select! {
        _ = cancel.cancelled() => Ok(None),
        r = tokio::time::timeout_at(deadline, accept) => match r {
            Ok(Ok(stream)) => Ok(Some(stream)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no TLS handshake within the handshake timeout".into()),
        },
    }
}

/// A publisher's byte stream: plain TCP, or TLS over TCP.
trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// The socket `lowat` may tune and read directly: None under TLS, whose records
    /// must all go through rustls.
    fn raw_tcp(&self) -> Option<&TcpStream>;
}

impl Transport for TcpStream {
    fn raw_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Transport for TlsStream<TcpStream> {
    fn raw_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// One publisher's connection.
struct Connection<'a> {
    peer: SocketAddr,
    /// `rtmp` or `rtmps`.
    scheme: &'static str,
    config: &'a RtmpConfig,
    gate: PublishGate,
    recorders: Recorders,
    session: ServerSession,
    demux: FlvDemuxer,
    app: Option<String>,
    publishing: Option<(u32, PublishHandle)>,
    demux_errors: u64,
}

impl<'a> Connection<'a> {
    fn new(
        peer: SocketAddr,
        scheme: &'static str,
        config: &'a RtmpConfig,
        gate: PublishGate,
        recorders: Recorders,
    ) -> Connection<'a> {
        let limits = Limits {
            max_message_size: config.max_message_kb.saturating_mul(1024),
            ..Limits::default()
        };
        Connection {
            peer,
            scheme,
            config,
            gate,
            recorders,
            session: ServerSession::new(limits),
            demux: FlvDemuxer::default(),
            app: None,
            publishing: None,
            demux_errors: 0,
        }
    }

    fn stream_label(&self) -> String {
        match &self.publishing {
            Some((_, h)) => h.stats().stream_key().to_string(),
            None => "-".into(),
        }
    }

    /// Runs the connection accepted at `started` (the handshake timeout counts from then,
    /// TLS handshake included).
    async fn serve(
        &mut self,
        mut socket: impl Transport,
        started: Instant,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        let handshake_timeout = Duration::from_secs(self.config.handshake_timeout_s);
        let mut publish_deadline = started + handshake_timeout;
        let idle = Duration::from_secs(self.config.idle_timeout_s);
        let write_timeout = Duration::from_secs(self.config.write_timeout_s);
        let mut buf = vec![0u8; 16 * 1024];
        let mut rate = RateMeter::new();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut last_data = Instant::now();
        // While publishing over plain TCP, media is read in ~64 KB gulps (see `lowat`);
        // commands before and between publishes are answered at once.
        let mut low_water = 1;
        loop {
            let want = match socket.raw_tcp() {
                Some(_) if self.publishing.is_some() => PUBLISH_LOW_WATER,
                _ => 1,
            };
            if want != low_water {
                if let Some(tcp) = socket.raw_tcp() {
                    if let Err(e) = lowat::set_recv_low_water(tcp, want) {
                        tracing::debug!(peer = %self.peer, error = %e, "SO_RCVLOWAT not set");
                    }
                }
                low_water = want;
            }
            let deadline = match self.publishing {
                None => publish_deadline,
                Some(_) => {
                    // After an unpublish the client gets a whole handshake timeout to
                    // publish again (or close), counted from then.
                    publish_deadline = Instant::now() + handshake_timeout;
                    last_data + idle
                }
            };
            let wake = if low_water > 1 {
                deadline.min(Instant::now() + PUBLISH_DRAIN)
            } else {
                deadline
            };
            let read = tokio::select! {
                _ = &mut cancelled => return Ok(()),
                r = tokio::time::timeout_at(wake, socket.read(&mut buf)) => r,
            };
            let n = match read {
                // The drain timer (or the idle deadline) while publishing: read what sits
                // below the low-water mark before calling the publisher idle.
                Err(_) if low_water > 1 => match socket
                    .raw_tcp()
                    .map_or(Err(std::io::ErrorKind::WouldBlock.into()), |tcp| {
                        lowat::recv_queued(tcp, &mut buf)
                    }) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // A recorder that ended the publish (a limit crossed, a failed
                        // write) is said at once, not at the next frame or the idle timeout.
                        if self
                            .publishing
                            .as_ref()
                            .is_some_and(|(_, h)| h.recorder_stopped())
                        {
                            return Err(self.recorder_failure());
                        }
                        if Instant::now() >= deadline {
                            return Err(format!("no data for {} s", idle.as_secs()));
                        }
                        continue;
                    }
                    Err(e) => return Err(format!("read: {e}")),
                },
                Err(_) if self.publishing.is_none() => {
                    return Err("no publish within the handshake timeout".into())
                }
                Err(_) => return Err(format!("no data for {} s", idle.as_secs())),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
            };
            last_data = Instant::now();
            self.session
                .feed(&buf[..n])
                .map_err(|e| format!("protocol error: {e}"))?;
            while let Some(event) = self.session.poll_event() {
                self.on_event(event).await?;
            }
            // A short read drained the socket: the writer gets this wakeup's frames now
            // (one writer wakeup per socket wakeup; see `record::BATCH_TICKS`, which also
            // bounds a batch if reads keep filling the buffer exactly).
            if n < buf.len() {
                if let Some((_, handle)) = self.publishing.as_mut() {
                    if handle.hand_over().is_err() {
                        return Err(self.recorder_failure());
                    }
                }
            }
            let out = self.session.take_output();
            if !out.is_empty() {
                // Flushed: under TLS, `write_all` may leave records buffered in rustls.
                let write = async {
                    socket.write_all(&out).await?;
                    socket.flush().await
                };
                match tokio::time::timeout(write_timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("write: {e}")),
                    Err(_) => {
                        return Err(format!(
                            "peer did not read for {} s",
                            write_timeout.as_secs()
                        ))
                    }
                }
            }
            if let Some((_, handle)) = &self.publishing {
                let received = self.session.bytes_received();
                let stats = handle.stats();
                stats.set_bytes_received(received);
                if let Some(bps) = rate.sample(received) {
                    stats.bitrate_bps.store(bps, Ordering::Relaxed);
                }
            }
        }
    }

    async fn on_event(&mut self, event: SessionEvent) -> Result<(), String> {
        match event {
            SessionEvent::Connected { app, .. } => {
                self.app = Some(strip_query(&app).to_owned());
            }
            SessionEvent::PublishRequested {
                stream_id,
                stream_key,
                ..
            } => {
                self.on_publish(stream_id, &stream_key).await;
            }
            SessionEvent::Metadata { stream_id, values } => {
                if let Some((id, handle)) = self.publishing.as_mut() {
                    if *id == stream_id && announces_video(&values) {
                        handle.expect_video().map_err(|_| self.recorder_failure())?;
                    }
                }
            }
            SessionEvent::Video {
                stream_id,
                timestamp,
                data,
            } => {
                let demuxed = self.demux.push_video(timestamp, data);
                self.forward(stream_id, demuxed.map_err(|e| e.to_string()))?;
            }
            SessionEvent::Audio {
                stream_id,
                timestamp,
                data,
            } => {
                let demuxed = self.demux.push_audio(timestamp, data);
                self.forward(stream_id, demuxed.map_err(|e| e.to_string()))?;
            }
            SessionEvent::Unpublished { stream_id } => {
                if self
                    .publishing
                    .as_ref()
                    .is_some_and(|(id, _)| *id == stream_id)
                {
                    if let Some((_, handle)) = self.publishing.take() {
                        tracing::info!(peer = %self.peer, stream = %handle.stats().stream_key(), "unpublished");
                    }
                    self.demux = FlvDemuxer::default();
                }
            }
        }
        Ok(())
    }

    async fn on_publish(&mut self, stream_id: u32, stream_key: &str) {
        if self.publishing.is_some() {
            self.session.reject_publish(
                stream_id,
                "NetStream.Publish.BadName",
                "this connection is already publishing",
            );
            return;
        }
        let app = self.app.clone().unwrap_or_default();
        let stream = strip_query(stream_key).to_owned();
        for (what, name) in [("app", &app), ("stream", &stream)] {
            if let Err(e) = validate_name(name) {
                // Debug-escaped: a name from the network must not forge a journal line.
                tracing::warn!(peer = %self.peer, ?app, ?stream, "publish refused: bad {what} name: {e}");
                metrics::global().refused(RefusalReason::BadName);
                self.session.reject_publish(
                    stream_id,
                    "NetStream.Publish.BadName",
                    &format!("bad {what} name: {e}"),
                );
                return;
            }
        }
        let query = stream_key.split_once('?').map_or("", |(_, q)| q);
        // Before any recording is looked up: a refused publisher neither starts nor
        // resumes one. The log names the reason, never a key or the received secret.
        if let Err(refusal) = self.gate.admit(&app, &stream, query, self.peer.ip()) {
            tracing::warn!(peer = %self.peer, stream = %StreamKey::new(&app, &stream), reason = %refusal, "publish refused: not authorized");
            metrics::global().refused(RefusalReason::Unauthorized);
            self.session.reject_publish(
                stream_id,
                "NetStream.Publish.Unauthorized",
                &format!("publish refused: {refusal}"),
            );
            return;
        }
        match self
            .recorders
            .start_publish(&app, &stream, query, self.peer.to_string(), self.scheme)
            .await
        {
            Ok(handle) => {
                tracing::info!(peer = %self.peer, stream = %StreamKey::new(&app, &stream), recording = handle.recording_id(), "publish started");
                self.session.accept_publish(stream_id);
                self.publishing = Some((stream_id, handle));
            }
            Err(e) => {
                let code = match e {
                    PublishRefused::AlreadyPublishing(_) => "NetStream.Publish.BadName",
                    _ => "NetStream.Publish.Failed",
                };
                tracing::warn!(peer = %self.peer, stream = %StreamKey::new(&app, &stream), reason = %e, "publish refused");
                metrics::global().refused(e.reason());
                self.session.reject_publish(stream_id, code, &e.to_string());
            }
        }
    }

    fn forward(
        &mut self,
        stream_id: u32,
        demuxed: Result<Option<DemuxEvent>, String>,
    ) -> Result<(), String> {
        let Some((id, handle)) = self.publishing.as_mut() else {
            return Ok(());
        };
        if *id != stream_id {
            return Ok(());
        }
        let sent = match demuxed {
            Ok(Some(DemuxEvent::Config(params))) => handle.send_config(params),
            Ok(Some(DemuxEvent::Frame(frame))) => handle.send_frame(frame),
            Ok(Some(DemuxEvent::EndOfSequence(_))) | Ok(None) => Ok(()),
            Err(e) => {
                self.demux_errors += 1;
                handle
                    .stats()
                    .frames_rejected
                    .fetch_add(1, Ordering::Relaxed);
                // Log the first few, then one in a thousand: a broken encoder must not
                // flood the journal.
                if self.demux_errors <= 3 || self.demux_errors.is_multiple_of(1000) {
                    tracing::warn!(peer = %self.peer, count = self.demux_errors, error = %e, "dropping a malformed media message");
                }
                Ok(())
            }
        };
        sent.map_err(|_| self.recorder_failure())
    }

    fn recorder_failure(&self) -> String {
        self.publishing.as_ref().map_or_else(
            || "the recorder stopped".into(),
            |(_, h)| h.stats().stop_reason(),
        )
    }
}

/// The name part of an RTMP app or stream key (`name?query` -> `name`).
pub fn strip_query(s: &str) -> &str {
    s.split('?').next().unwrap_or("")
}

/// Whether `onMetaData` announces a video track.
fn announces_video(values: &[(String, amf0::Value)]) -> bool {
    values.iter().any(|(k, v)| {
        k == "videocodecid"
            && match v {
                amf0::Value::Number(n) => *n != 0.0,
                amf0::Value::String(s) => !s.is_empty(),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_stripped_from_names() {
        assert_eq!(strip_query("cam1?txSecret=abc&txTime=5C271099"), "cam1");
        assert_eq!(strip_query("live"), "live");
        assert_eq!(strip_query("?x"), "");
    }
}
