//! The server side of an RTSP 1.0 publishing connection (RFC 2326; ANNOUNCE section 10.3,
//! SETUP 10.4, RECORD 10.11, interleaved binary data 10.12): requests parsed and replies
//! written with `rtsp-types`, interleaved `$` frames demuxed from the same byte stream.
//!
//! Owns: the per-connection state machine ([`ServerSession`]) and the sizes a peer must
//! stay within ([`Limits`]). The caller feeds received bytes, drains [`SessionEvent`]s
//! and sends [`ServerSession::take_output`]. Decisions that need the daemon are events
//! the caller answers: a publish (`Announce` -> [`ServerSession::accept_announce`] or
//! [`ServerSession::refuse`]) and a UDP port pair (`SetupUdp` ->
//! [`ServerSession::accept_udp`] or [`ServerSession::refuse`]); until then later input
//! waits in the buffer. Never does IO, never looks inside RTP payloads ([`super::rtp`]),
//! never plays streams out (DESCRIBE/PLAY are 405): this is a recorder.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use rtsp_types::headers::{self, Transport, Transports};
use rtsp_types::{Message, Method, Request, Response, StatusCode, Version};
use thiserror::Error;

use super::sdp::{self, Sdp};

/// What a peer may make us hold in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request line plus headers. Default 16 KiB.
    pub max_header: usize,
    /// Largest request body (the ANNOUNCE's SDP). Default 64 KiB.
    pub max_body: usize,
    /// Largest interleaved frame (one RTP/RTCP packet). Default 64 KiB (the format's own
    /// limit is 65535).
    pub max_frame: usize,
    /// Seconds announced in `Session: ID;timeout=N`.
    pub session_timeout_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: 16 * 1024,
            max_body: 64 * 1024,
            max_frame: 64 * 1024,
            session_timeout_s: 60,
        }
    }
}

/// A protocol violation; the caller sends what is in the output (a 4xx) and closes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtspError {
    #[error("request headers over {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("request body of {size} bytes is over the {limit}-byte limit")]
    BodyTooLarge { size: usize, limit: usize },
    #[error(
        "interleaved frame of {size} bytes on channel {channel} is over the {limit}-byte limit"
    )]
    FrameTooLarge {
        channel: u8,
        size: usize,
        limit: usize,
    },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the peer sent {buffered} bytes while a reply was pending")]
    Flooded { buffered: usize },
}

/// How a track's packets arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackTransport {
    /// Interleaved on this connection: RTP on the first channel, RTCP on the second.
    Interleaved { rtp: u8, rtcp: u8 },
    /// UDP from the peer's `client_port`s to our `server_port`s.
    Udp {
        client_rtp: u16,
        client_rtcp: u16,
        server_rtp: u16,
    },
}

/// What happened on the connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A publish of `path` (the request URI's path segments) with the URI's `query`.
    /// Answer with `accept_announce` or `refuse`.
    Announce {
        path: Vec<String>,
        query: String,
        sdp: Sdp,
    },
    /// Track `track` wants UDP from the peer's ports. Answer with `accept_udp` (our RTP
    /// port; RTCP is the next one) or `refuse`.
    SetupUdp {
        track: usize,
        client_rtp: u16,
        client_rtcp: u16,
    },
    /// A track was set up (answered 200).
    TrackSetUp {
        track: usize,
        transport: TrackTransport,
    },
    /// RECORD answered 200: media follows.
    Record,
    /// TEARDOWN answered 200: the caller sends the output and closes.
    Teardown,
    /// One interleaved RTP packet of `track`.
    Rtp { track: usize, packet: Bytes },
    /// One interleaved RTCP packet of `track`.
    Rtcp { track: usize, packet: Bytes },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Nothing announced.
    Init,
    /// Announced and accepted; tracks being set up.
    Announced,
    Recording,
}

/// A request the caller has to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Announce { cseq: String },
    SetupUdp { cseq: String, track: usize },
}

/// Sans-IO server session for one RTSP publishing connection.
#[derive(Debug)]
pub struct ServerSession {
    limits: Limits,
    session_id: String,
    input: BytesMut,
    output: Vec<u8>,
    events: VecDeque<SessionEvent>,
    state: State,
    pending: Option<Pending>,
    /// The announced media sections' control attributes, by track.
    controls: Vec<Option<String>>,
    tracks: Vec<Option<TrackTransport>>,
    /// Interleaved channel -> (track, is RTCP).
    channels: [Option<(usize, bool)>; 256],
    /// The pending UDP setup's client ports.
    udp_client: Option<(u16, u16)>,
    bytes_received: u64,
    /// A fatal error was answered; nothing more is read.
    closed: bool,
}

impl ServerSession {
    /// `session_id`: the `Session` identifier to issue (random, from the caller).
    pub fn new(limits: Limits, session_id: String) -> ServerSession {
        ServerSession {
            limits,
            session_id,
            input: BytesMut::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            state: State::Init,
            pending: None,
            controls: Vec::new(),
            tracks: Vec::new(),
            channels: [None; 256],
            udp_client: None,
            bytes_received: 0,
            closed: false,
        }
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    pub fn is_recording(&self) -> bool {
        self.state == State::Recording
    }

    /// Consumes all of `data` (buffering partial input). Err = protocol violation: the
    /// output holds the error reply; send it and close.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), RtspError> {
        if self.closed {
            return Ok(());
        }
        self.bytes_received += data.len() as u64;
        self.input.extend_from_slice(data);
        let cap = self.limits.max_header + self.limits.max_body + self.limits.max_frame + 4;
        if self.pending.is_some() && self.input.len() > cap {
            self.closed = true;
            return Err(RtspError::Flooded {
                buffered: self.input.len(),
            });
        }
        let result = self.process();
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Bytes to send to the peer.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Accepts the pending ANNOUNCE (200) and goes on with buffered input.
    pub fn accept_announce(&mut self) -> Result<(), RtspError> {
        if let Some(Pending::Announce { cseq }) = self.pending.take() {
            self.state = State::Announced;
            self.reply(&cseq, StatusCode::Ok, None, &[]);
        }
        self.resume()
    }

    /// Accepts the pending UDP SETUP with our RTP port `server_rtp` (RTCP on the next).
    pub fn accept_udp(&mut self, server_rtp: u16) -> Result<(), RtspError> {
        if let (Some(Pending::SetupUdp { cseq, track }), Some((client_rtp, client_rtcp))) =
            (self.pending.take(), self.udp_client.take())
        {
            let transport = TrackTransport::Udp {
                client_rtp,
                client_rtcp,
                server_rtp,
            };
            self.set_up(&cseq, track, transport);
        }
        self.resume()
    }

    /// Answers the pending request with `status` and `reason` (shown by ffmpeg as the
    /// status line's text). A refused ANNOUNCE leaves the session where it was.
    pub fn refuse(&mut self, status: StatusCode, reason: &str) -> Result<(), RtspError> {
        if let Some(Pending::Announce { cseq } | Pending::SetupUdp { cseq, .. }) =
            self.pending.take()
        {
            self.udp_client = None;
            self.reply(&cseq, status, Some(reason), &[]);
        }
        self.resume()
    }

    fn resume(&mut self) -> Result<(), RtspError> {
        if self.closed {
            return Ok(());
        }
        let result = self.process();
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    /// Handles every complete message in the buffer, stopping at a pending decision.
    fn process(&mut self) -> Result<(), RtspError> {
        while self.pending.is_none() {
            let Some(&first) = self.input.first() else {
                return Ok(());
            };
            if first == b'$' {
                let Some(&[_, channel, a, b]) = self.input.get(..4) else {
                    return Ok(());
                };
                let size = usize::from(u16::from_be_bytes([a, b]));
                if size > self.limits.max_frame {
                    return Err(RtspError::FrameTooLarge {
                        channel,
                        size,
                        limit: self.limits.max_frame,
                    });
                }
                if self.input.len() < 4 + size {
                    return Ok(());
                }
                self.input.advance(4);
                let packet = self.input.split_to(size).freeze();
                match self.channels[usize::from(channel)] {
                    Some((track, false)) => {
                        self.events.push_back(SessionEvent::Rtp { track, packet })
                    }
                    Some((track, true)) => {
                        self.events.push_back(SessionEvent::Rtcp { track, packet })
                    }
                    None => {} // a channel nobody set up: ignored, as RFC 2326 10.12 allows
                }
                continue;
            }
            let Some(header_end) = find_header_end(&self.input, self.limits.max_header) else {
                if self.input.len() > self.limits.max_header {
                    let limit = self.limits.max_header;
                    self.reply(
                        "0",
                        StatusCode::BadRequest,
                        Some("request headers too large"),
                        &[],
                    );
                    return Err(RtspError::HeaderTooLarge { limit });
                }
                return Ok(());
            };
            let body_len = match content_length(&self.input[..header_end]) {
                Ok(n) => n,
                Err(detail) => return Err(self.malformed("0", detail)),
            };
            if body_len > self.limits.max_body {
                let limit = self.limits.max_body;
                let cseq = cseq_of(&self.input[..header_end]).unwrap_or_else(|| "0".into());
                self.reply(
                    &cseq,
                    StatusCode::RequestMessageBodyTooLarge,
                    Some("request body too large"),
                    &[],
                );
                return Err(RtspError::BodyTooLarge {
                    size: body_len,
                    limit,
                });
            }
            if self.input.len() < header_end + body_len {
                return Ok(());
            }
            let raw = self.input.split_to(header_end + body_len).freeze();
            let cseq = cseq_of(&raw[..header_end]).unwrap_or_else(|| "0".into());
            let request = match Message::<Vec<u8>>::parse(&raw[..]) {
                Ok((Message::Request(r), _)) => r,
                Ok(_) => return Err(self.malformed(&cseq, "not a request")),
                Err(e) => return Err(self.malformed(&cseq, &format!("unparseable ({e})"))),
            };
            let raw_uri = raw
                .split(|&b| b == b'\r' || b == b'\n')
                .next()
                .and_then(|line| line.split(|&b| b == b' ').nth(1))
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .unwrap_or_default();
            self.request(request, &raw_uri)?;
        }
        Ok(())
    }

    fn malformed(&mut self, cseq: &str, detail: &str) -> RtspError {
        self.reply(cseq, StatusCode::BadRequest, Some(detail), &[]);
        RtspError::Malformed(detail.to_owned())
    }

    fn request(&mut self, req: Request<Vec<u8>>, raw_uri: &str) -> Result<(), RtspError> {
        let Some(cseq) = req
            .header(&headers::CSEQ)
            .map(|v| v.as_str().trim().to_owned())
            .filter(|c| !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_digit()))
        else {
            return Err(self.malformed("0", "missing or bad CSeq"));
        };
        if req.version() != Version::V1_0 {
            self.reply(&cseq, StatusCode::RTSPVersionNotSupported, None, &[]);
            return Ok(());
        }
        if let Some(sent) = req.header(&headers::SESSION) {
            let id = sent.as_str().split(';').next().unwrap_or("").trim();
            if self.state == State::Init || id != self.session_id {
                self.reply(&cseq, StatusCode::SessionNotFound, None, &[]);
                return Ok(());
            }
        }
        match req.method() {
            Method::Options => {
                let public =
                    "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";
                self.reply(
                    &cseq,
                    StatusCode::Ok,
                    None,
                    &[(headers::PUBLIC, public.into())],
                );
            }
            Method::Announce => self.announce(&cseq, &req, raw_uri)?,
            Method::Setup => self.setup(&cseq, &req, raw_uri),
            Method::Record => {
                if self.state != State::Announced || self.tracks.iter().all(Option::is_none) {
                    self.reply(
                        &cseq,
                        StatusCode::MethodNotValidInThisState,
                        Some("RECORD before SETUP"),
                        &[],
                    );
                } else {
                    self.state = State::Recording;
                    let session = self.session_header();
                    self.reply(&cseq, StatusCode::Ok, None, &[(headers::SESSION, session)]);
                    self.events.push_back(SessionEvent::Record);
                }
            }
            Method::Teardown => {
                self.reply(&cseq, StatusCode::Ok, None, &[]);
                self.events.push_back(SessionEvent::Teardown);
                self.closed = true;
                self.input.clear();
            }
            Method::GetParameter | Method::SetParameter => {
                self.reply(&cseq, StatusCode::Ok, None, &[]);
            }
            Method::Describe | Method::Play | Method::Pause => {
                let allow =
                    "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";
                self.reply(
                    &cseq,
                    StatusCode::MethodNotAllowed,
                    Some("this server records; it does not play streams out"),
                    &[(headers::ALLOW, allow.into())],
                );
            }
            _ => self.reply(&cseq, StatusCode::NotImplemented, None, &[]),
        }
        Ok(())
    }

    fn announce(
        &mut self,
        cseq: &str,
        req: &Request<Vec<u8>>,
        raw_uri: &str,
    ) -> Result<(), RtspError> {
        if self.state != State::Init {
            self.reply(
                cseq,
                StatusCode::MethodNotValidInThisState,
                Some("already announced"),
                &[],
            );
            return Ok(());
        }
        let content_type = req
            .header(&headers::CONTENT_TYPE)
            .map(|v| v.as_str().to_ascii_lowercase())
            .unwrap_or_default();
        if !content_type.trim().starts_with("application/sdp") {
            self.reply(
                cseq,
                StatusCode::UnsupportedMediaType,
                Some("the body must be application/sdp"),
                &[],
            );
            return Ok(());
        }
        let Some(uri) = req.request_uri() else {
            return Err(self.malformed(cseq, "ANNOUNCE without a URI"));
        };
        if has_dot_segment(raw_uri) {
            self.reply(
                cseq,
                StatusCode::BadRequest,
                Some("the path has a . or .. segment"),
                &[],
            );
            return Ok(());
        }
        let sdp = match sdp::parse(req.body()) {
            Ok(s) => s,
            Err(e) => {
                self.reply(cseq, StatusCode::BadRequest, Some(&e.to_string()), &[]);
                return Ok(());
            }
        };
        let path = uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        self.controls = sdp.media.iter().map(|m| m.control.clone()).collect();
        self.tracks = vec![None; sdp.media.len()];
        self.pending = Some(Pending::Announce {
            cseq: cseq.to_owned(),
        });
        self.events.push_back(SessionEvent::Announce {
            path,
            query: uri.query().unwrap_or("").to_owned(),
            sdp,
        });
        Ok(())
    }

    /// The track a SETUP URI names: by its SDP control attribute, else the next one not
    /// set up yet.
    fn track_for(&self, raw_uri: &str) -> Option<usize> {
        let uri = raw_uri.trim_end_matches('/');
        let by_control = self.controls.iter().position(|c| {
            c.as_deref()
                .map(|c| c.trim_end_matches('/'))
                .is_some_and(|c| {
                    !c.is_empty() && c != "*" && (uri == c || uri.ends_with(&format!("/{c}")))
                })
        });
        by_control.or_else(|| self.tracks.iter().position(Option::is_none))
    }

    fn setup(&mut self, cseq: &str, req: &Request<Vec<u8>>, raw_uri: &str) {
        if self.state != State::Announced {
            self.reply(
                cseq,
                StatusCode::MethodNotValidInThisState,
                Some("SETUP before ANNOUNCE"),
                &[],
            );
            return;
        }
        let Some(track) = self.track_for(raw_uri) else {
            self.reply(cseq, StatusCode::NotFound, Some("no such track"), &[]);
            return;
        };
        if self.tracks[track].is_some() {
            self.reply(
                cseq,
                StatusCode::MethodNotValidInThisState,
                Some("track already set up"),
                &[],
            );
            return;
        }
        let transports = match req.typed_header::<Transports>() {
            Ok(Some(t)) => t,
            _ => {
                self.reply(
                    cseq,
                    StatusCode::UnsupportedTransport,
                    Some("missing or bad Transport"),
                    &[],
                );
                return;
            }
        };
        for t in transports.iter() {
            let Transport::Rtp(rtp) = t else { continue };
            let tcp = matches!(rtp.lower_transport, Some(headers::RtpLowerTransport::Tcp));
            if tcp {
                let (rtp_ch, rtcp_ch) = match rtp.params.interleaved {
                    Some((a, b)) => (a, b.unwrap_or(a.wrapping_add(1))),
                    None => {
                        let used = self.channels.iter().filter(|c| c.is_some()).count() as u8;
                        (used, used.wrapping_add(1))
                    }
                };
                if rtp_ch == rtcp_ch
                    || self.channels[usize::from(rtp_ch)].is_some()
                    || self.channels[usize::from(rtcp_ch)].is_some()
                {
                    self.reply(
                        cseq,
                        StatusCode::UnsupportedTransport,
                        Some("interleaved channel already in use"),
                        &[],
                    );
                    return;
                }
                let transport = TrackTransport::Interleaved {
                    rtp: rtp_ch,
                    rtcp: rtcp_ch,
                };
                self.set_up(cseq, track, transport);
                return;
            }
            if rtp.params.multicast {
                continue;
            }
            if let Some((a, b)) = rtp.params.client_port {
                let rtcp = b.unwrap_or(a.wrapping_add(1));
                self.udp_client = Some((a, rtcp));
                self.pending = Some(Pending::SetupUdp {
                    cseq: cseq.to_owned(),
                    track,
                });
                self.events.push_back(SessionEvent::SetupUdp {
                    track,
                    client_rtp: a,
                    client_rtcp: rtcp,
                });
                return;
            }
        }
        self.reply(
            cseq,
            StatusCode::UnsupportedTransport,
            Some("only RTP/AVP/TCP interleaved and RTP/AVP unicast UDP with client_port"),
            &[],
        );
    }

    fn set_up(&mut self, cseq: &str, track: usize, transport: TrackTransport) {
        let value = match transport {
            TrackTransport::Interleaved { rtp, rtcp } => {
                self.channels[usize::from(rtp)] = Some((track, false));
                self.channels[usize::from(rtcp)] = Some((track, true));
                format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp};mode=record")
            }
            TrackTransport::Udp {
                client_rtp,
                client_rtcp,
                server_rtp,
            } => format!(
                "RTP/AVP;unicast;client_port={client_rtp}-{client_rtcp};server_port={server_rtp}-{};mode=record",
                server_rtp.wrapping_add(1)
            ),
        };
        if let Some(slot) = self.tracks.get_mut(track) {
            *slot = Some(transport);
        }
        let session = self.session_header();
        self.reply(
            cseq,
            StatusCode::Ok,
            None,
            &[(headers::TRANSPORT, value), (headers::SESSION, session)],
        );
        self.events
            .push_back(SessionEvent::TrackSetUp { track, transport });
    }

    fn session_header(&self) -> String {
        format!(
            "{};timeout={}",
            self.session_id, self.limits.session_timeout_s
        )
    }

    /// Queues a reply. `reason` replaces the status line's standard text (sanitised).
    fn reply(
        &mut self,
        cseq: &str,
        status: StatusCode,
        reason: Option<&str>,
        extra: &[(headers::HeaderName, String)],
    ) {
        let mut b = Response::builder(Version::V1_0, status)
            .header(headers::CSEQ, cseq)
            .header(
                headers::SERVER,
                concat!("edgerec/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(reason) = reason {
            let clean: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect();
            b = b.reason_phrase(clean);
        }
        for (name, value) in extra {
            b = b.header(name.clone(), value.as_str());
        }
        let response: Response<rtsp_types::Empty> = b.empty();
        // Writing into a Vec cannot fail.
        let _ = response.write(&mut self.output);
    }
}

/// Offset just past the blank line ending the headers, looking at most `limit` bytes.
fn find_header_end(buf: &[u8], limit: usize) -> Option<usize> {
    let window = &buf[..buf.len().min(limit + 4)];
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| window.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// The value of header `name` (case-insensitive) in a raw header block.
fn raw_header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head)
        .ok()?
        .lines()
        .skip(1)
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
}

fn content_length(head: &[u8]) -> Result<usize, &'static str> {
    match raw_header(head, "content-length") {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| "bad Content-Length"),
    }
}

fn cseq_of(head: &[u8]) -> Option<String> {
    raw_header(head, "cseq")
        .filter(|c| !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
}

/// Whether a raw request URI's path has a `.` or `..` segment (also percent-encoded),
/// which the URL parser would silently resolve.
fn has_dot_segment(raw_uri: &str) -> bool {
    let after_scheme = raw_uri.split_once("://").map_or(raw_uri, |(_, r)| r);
    let path = after_scheme.split_once('/').map_or("", |(_, p)| p);
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
