//! The server side of an RTMP publishing connection: handshake, chunk stream, the
//! `connect` / `createStream` / `publish` command flow and the replies OBS and ffmpeg wait
//! for (Adobe RTMP specification 1.0 sections 5-7; Enhanced RTMP v1 `fourCcList`).
//!
//! Owns: the per-connection state machine ([`ServerSession`]) and the limits a peer must
//! stay within ([`Limits`]). The caller feeds received bytes, drains [`SessionEvent`]s and
//! sends [`ServerSession::take_output`]; it decides whether a publish is allowed
//! ([`ServerSession::accept_publish`] / [`ServerSession::reject_publish`]). Never does IO,
//! never looks inside audio/video payloads (that is [`super::flv`]) and never plays
//! streams out: this is a recorder.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::amf0::Value;
use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, RawMessage};
use super::handshake::{HandshakeError, ServerHandshake};
use super::message::{Command, Message, MessageError, UserControl};

/// What a peer is allowed to make us hold in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest chunk size the peer may set. Default 16 MiB (the top bit must be 0 anyway).
    pub max_chunk_size: u32,
    /// Largest message (e.g. one video frame). Default 8 MiB.
    pub max_message_size: u32,
    /// Largest message that is not audio or video (commands, metadata, control): they
    /// are parsed into AMF values, tens of bytes of memory per input byte. Default 64 KiB.
    pub max_command_size: u32,
    /// Deepest AMF0 nesting accepted in commands and metadata. Default 32.
    pub max_amf_depth: usize,
    /// Distinct chunk stream ids the peer may use on one connection. Default 64.
    pub max_chunk_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chunk_size: 16 * 1024 * 1024,
            max_message_size: 8 * 1024 * 1024,
            max_command_size: 64 * 1024,
            max_amf_depth: 32,
            max_chunk_streams: 64,
        }
    }
}

/// A protocol violation; the caller closes the connection.
#[derive(Debug, Error)]
pub enum RtmpError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("command {command:?} before connect")]
    NotConnected { command: String },
    #[error("second connect on the same connection")]
    AlreadyConnected,
    #[error("{command:?} on message stream {stream_id}, which was not created")]
    UnknownStream { command: String, stream_id: u32 },
    #[error("publish on message stream {stream_id}, which is already publishing")]
    AlreadyPublishing { stream_id: u32 },
    #[error(
        "message type {type_id} (media) on message stream {stream_id}, which is not publishing"
    )]
    MediaOnIdleStream { type_id: u8, stream_id: u32 },
    #[error("more than {limit} message streams created")]
    TooManyStreams { limit: usize },
}

/// What happened on the connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    Connected {
        app: String,
        tc_url: Option<String>,
    },
    /// Answer with `accept_publish` or `reject_publish`.
    PublishRequested {
        stream_id: u32,
        /// As sent, possibly with a `?query`.
        stream_key: String,
        publish_type: String,
    },
    /// From `@setDataFrame("onMetaData", {...})` or a plain `onMetaData`.
    Metadata {
        stream_id: u32,
        values: Vec<(String, Value)>,
    },
    /// Raw RTMP timestamp (ms, 32-bit) and FLV audio tag body.
    Audio {
        stream_id: u32,
        timestamp: u32,
        data: Bytes,
    },
    /// Raw RTMP timestamp (ms, 32-bit) and FLV video tag body.
    Video {
        stream_id: u32,
        timestamp: u32,
        data: Bytes,
    },
    /// `FCUnpublish`, `closeStream` or `deleteStream` of a stream with a publish that was
    /// requested (and not rejected); emitted once per publish.
    Unpublished {
        stream_id: u32,
    },
}

/// Window Acknowledgement Size and Set Peer Bandwidth we announce.
const WINDOW_SIZE: u32 = 2_500_000;
/// Our outgoing chunk size after `connect`.
const OUT_CHUNK_SIZE: u32 = 4096;
/// Message streams one connection may have at once.
const MAX_MESSAGE_STREAMS: usize = 16;
/// Enhanced RTMP codecs we record.
const SUPPORTED_FOURCC: [&str; 2] = ["avc1", "hvc1"];

const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STREAM_STATUS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamState {
    /// Created, no publish yet (or the last one was rejected).
    Idle,
    /// `publish` received; waiting for the application's decision.
    PublishRequested {
        key: String,
    },
    Publishing {
        key: String,
    },
    /// Unpublished; late media is dropped.
    Ended,
}

/// Sans-IO server session for one RTMP connection.
#[derive(Debug)]
pub struct ServerSession {
    limits: Limits,
    handshake: ServerHandshake,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<SessionEvent>,
    connected: bool,
    streams: HashMap<u32, StreamState>,
    next_stream_id: u32,
    bytes_received: u64,
    last_ack: u64,
    peer_window: Option<u32>,
}

impl ServerSession {
    pub fn new(limits: Limits) -> Self {
        ServerSession {
            decoder: ChunkDecoder::new(&limits),
            limits,
            handshake: ServerHandshake::new(),
            encoder: ChunkEncoder::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            connected: false,
            streams: HashMap::new(),
            next_stream_id: 1,
            bytes_received: 0,
            last_ack: 0,
            peer_window: None,
        }
    }

    /// Consumes all of `data` (buffering partial input). Err = protocol violation; the
    /// caller closes the connection.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), RtmpError> {
        self.bytes_received += data.len() as u64;
        let mut rest = data;
        if !self.handshake.is_done() {
            let mut out = Vec::new();
            let used = self.handshake.feed(rest, &mut out)?;
            self.output.extend_from_slice(&out);
            rest = rest.get(used..).unwrap_or_default();
        }
        self.input.extend_from_slice(rest);
        if self.handshake.is_done() {
            while let Some(raw) = self.decoder.decode(&mut self.input)? {
                self.handle(raw)?;
            }
        }
        self.maybe_acknowledge();
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Bytes to send to the peer (handshake, control messages, command replies); empty when
    /// nothing is pending.
    pub fn take_output(&mut self) -> Bytes {
        self.output.split().freeze()
    }

    /// Replies onStatus NetStream.Publish.Start (after StreamBegin user control) for a
    /// PublishRequested. Does nothing if that stream has no pending publish.
    pub fn accept_publish(&mut self, stream_id: u32) {
        let Some(state) = self.streams.get_mut(&stream_id) else {
            return;
        };
        let StreamState::PublishRequested { key } = state else {
            return;
        };
        let description = format!("{key} is now published.");
        *state = StreamState::Publishing { key: key.clone() };
        self.send(
            CSID_CONTROL,
            0,
            Message::UserControl(UserControl::StreamBegin(stream_id)),
        );
        self.on_status(stream_id, "status", "NetStream.Publish.Start", &description);
    }

    /// Replies onStatus level "error" with `code` (e.g. "NetStream.Publish.BadName") and
    /// `description`. Does nothing if that stream has no pending publish.
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        let Some(state) = self.streams.get_mut(&stream_id) else {
            return;
        };
        if !matches!(state, StreamState::PublishRequested { .. }) {
            return;
        }
        *state = StreamState::Idle;
        let any_publish = self.streams.values().any(|s| {
            matches!(
                s,
                StreamState::PublishRequested { .. } | StreamState::Publishing { .. }
            )
        });
        self.decoder.allow_media(any_publish);
        self.on_status(stream_id, "error", code, description);
    }

    /// Every byte fed so far, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    fn maybe_acknowledge(&mut self) {
        let Some(window) = self.peer_window else {
            return;
        };
        if self.bytes_received - self.last_ack > u64::from(window) {
            self.last_ack = self.bytes_received;
            // The sequence number is the byte count modulo 2^32.
            let seq = self.bytes_received as u32;
            self.send(CSID_CONTROL, 0, Message::Acknowledgement(seq));
        }
    }

    fn send(&mut self, csid: u32, stream_id: u32, msg: Message) {
        let (type_id, payload) = msg.encode();
        self.encoder
            .write(csid, 0, type_id, stream_id, &payload, &mut self.output);
    }

    fn send_command(&mut self, csid: u32, stream_id: u32, name: &str, txn: f64, args: Vec<Value>) {
        let mut args = args.into_iter();
        let object = args.next().unwrap_or(Value::Null);
        let cmd = Command {
            name: name.to_owned(),
            transaction_id: txn,
            object,
            args: args.collect(),
        };
        self.send(csid, stream_id, Message::Command(cmd));
    }

    fn on_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        let info = Value::Object(vec![
            ("level".into(), Value::String(level.into())),
            ("code".into(), Value::String(code.into())),
            ("description".into(), Value::String(description.into())),
        ]);
        self.send_command(
            CSID_STREAM_STATUS,
            stream_id,
            "onStatus",
            0.0,
            vec![Value::Null, info],
        );
    }

    fn handle(&mut self, raw: RawMessage) -> Result<(), RtmpError> {
        match Message::parse(&raw, self.limits.max_amf_depth)? {
            Message::SetChunkSize(n) => self.decoder.set_chunk_size(n)?,
            Message::Abort { csid } => self.decoder.abort(csid),
            Message::WindowAckSize(n) => self.peer_window = (n > 0).then_some(n),
            Message::UserControl(UserControl::PingRequest(t)) => self.send(
                CSID_CONTROL,
                0,
                Message::UserControl(UserControl::PingResponse(t)),
            ),
            Message::Audio(data) => self.media(raw.type_id, raw.stream_id, raw.timestamp, data)?,
            Message::Video(data) => self.media(raw.type_id, raw.stream_id, raw.timestamp, data)?,
            Message::Data(values) => self.data(raw.stream_id, values),
            Message::Command(cmd) => self.command(raw.stream_id, cmd)?,
            Message::Acknowledgement(_)
            | Message::SetPeerBandwidth { .. }
            | Message::UserControl(_)
            | Message::Other { .. } => {}
        }
        Ok(())
    }

    fn media(
        &mut self,
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        data: Bytes,
    ) -> Result<(), RtmpError> {
        match self.streams.get(&stream_id) {
            Some(StreamState::Publishing { .. }) => {
                self.events.push_back(if type_id == super::message::AUDIO {
                    SessionEvent::Audio {
                        stream_id,
                        timestamp,
                        data,
                    }
                } else {
                    SessionEvent::Video {
                        stream_id,
                        timestamp,
                        data,
                    }
                });
                Ok(())
            }
            Some(StreamState::PublishRequested { .. } | StreamState::Ended) => Ok(()),
            Some(StreamState::Idle) | None => {
                Err(RtmpError::MediaOnIdleStream { type_id, stream_id })
            }
        }
    }

    fn data(&mut self, stream_id: u32, values: Vec<Value>) {
        if !matches!(
            self.streams.get(&stream_id),
            Some(StreamState::Publishing { .. })
        ) {
            return;
        }
        let mut it = values.into_iter().peekable();
        if it.peek().and_then(Value::as_str) == Some("@setDataFrame") {
            it.next();
        }
        if it.next().as_ref().and_then(Value::as_str) != Some("onMetaData") {
            return;
        }
        if let Some(Value::Object(values) | Value::EcmaArray(values)) = it.next() {
            self.events
                .push_back(SessionEvent::Metadata { stream_id, values });
        }
    }

    fn command(&mut self, stream_id: u32, cmd: Command) -> Result<(), RtmpError> {
        let txn = cmd.transaction_id;
        if cmd.name == "connect" {
            return self.connect(&cmd);
        }
        if !self.connected {
            return Err(RtmpError::NotConnected { command: cmd.name });
        }
        match cmd.name.as_str() {
            "releaseStream" | "FCPublish" => {
                if txn != 0.0 {
                    self.send_command(
                        CSID_COMMAND,
                        0,
                        "_result",
                        txn,
                        vec![Value::Null, Value::Undefined],
                    );
                }
                if cmd.name == "FCPublish" {
                    let key = cmd.arg_str(0).unwrap_or_default().to_owned();
                    let info = Value::Object(vec![
                        (
                            "code".into(),
                            Value::String("NetStream.Publish.Start".into()),
                        ),
                        ("description".into(), Value::String(key)),
                    ]);
                    self.send_command(CSID_COMMAND, 0, "onFCPublish", 0.0, vec![Value::Null, info]);
                }
            }
            "createStream" => {
                if self.streams.len() >= MAX_MESSAGE_STREAMS {
                    return Err(RtmpError::TooManyStreams {
                        limit: MAX_MESSAGE_STREAMS,
                    });
                }
                let id = self.next_stream_id;
                self.next_stream_id = self.next_stream_id.wrapping_add(1).max(1);
                self.streams.insert(id, StreamState::Idle);
                self.send_command(
                    CSID_COMMAND,
                    0,
                    "_result",
                    txn,
                    vec![Value::Null, Value::Number(f64::from(id))],
                );
            }
            "publish" => {
                let state =
                    self.streams
                        .get_mut(&stream_id)
                        .ok_or_else(|| RtmpError::UnknownStream {
                            command: cmd.name.clone(),
                            stream_id,
                        })?;
                if matches!(
                    state,
                    StreamState::PublishRequested { .. } | StreamState::Publishing { .. }
                ) {
                    return Err(RtmpError::AlreadyPublishing { stream_id });
                }
                let key = cmd.arg_str(0).unwrap_or_default().to_owned();
                let publish_type = cmd.arg_str(1).unwrap_or("live").to_owned();
                *state = StreamState::PublishRequested { key: key.clone() };
                self.decoder.allow_media(true);
                self.events.push_back(SessionEvent::PublishRequested {
                    stream_id,
                    stream_key: key,
                    publish_type,
                });
            }
            "FCUnpublish" => {
                let key = cmd.arg_str(0).unwrap_or_default();
                if let Some(id) = self.publishing_stream_for_key(key) {
                    self.unpublish(id);
                }
            }
            "closeStream" => self.unpublish(stream_id),
            "deleteStream" => {
                let id = cmd.args.first().and_then(Value::as_f64).unwrap_or(-1.0);
                if id >= 0.0 && id <= f64::from(u32::MAX) {
                    let id = id as u32;
                    self.unpublish(id);
                    self.streams.remove(&id);
                }
            }
            "play" => self.on_status(
                stream_id,
                "error",
                "NetStream.Play.Failed",
                "play is not supported",
            ),
            // getStreamLength, _checkbw, _result, onStatus, ... : nothing to do.
            _ => {}
        }
        Ok(())
    }

    fn connect(&mut self, cmd: &Command) -> Result<(), RtmpError> {
        if self.connected {
            return Err(RtmpError::AlreadyConnected);
        }
        self.connected = true;
        let app = cmd
            .object
            .get("app")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let tc_url = cmd
            .object
            .get("tcUrl")
            .and_then(Value::as_str)
            .map(str::to_owned);

        self.send(CSID_CONTROL, 0, Message::WindowAckSize(WINDOW_SIZE));
        self.send(
            CSID_CONTROL,
            0,
            Message::SetPeerBandwidth {
                size: WINDOW_SIZE,
                limit_type: 2,
            },
        );
        self.send(CSID_CONTROL, 0, Message::SetChunkSize(OUT_CHUNK_SIZE));
        self.encoder.set_chunk_size(OUT_CHUNK_SIZE);

        let mut properties = vec![
            ("fmsVer".into(), Value::String("FMS/3,0,1,123".into())),
            ("capabilities".into(), Value::Number(31.0)),
        ];
        if let Some(Value::StrictArray(list)) = cmd.object.get("fourCcList") {
            let wanted: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            let ours = SUPPORTED_FOURCC
                .iter()
                .filter(|f| wanted.contains(f) || wanted.contains(&"*"))
                .map(|f| Value::String((*f).into()))
                .collect();
            properties.push(("fourCcList".into(), Value::StrictArray(ours)));
        }
        let information = Value::Object(vec![
            ("level".into(), Value::String("status".into())),
            (
                "code".into(),
                Value::String("NetConnection.Connect.Success".into()),
            ),
            (
                "description".into(),
                Value::String("Connection succeeded.".into()),
            ),
            ("objectEncoding".into(), Value::Number(0.0)),
        ]);
        self.send_command(
            CSID_COMMAND,
            0,
            "_result",
            cmd.transaction_id,
            vec![Value::Object(properties), information],
        );
        self.events
            .push_back(SessionEvent::Connected { app, tc_url });
        Ok(())
    }

    /// The stream whose publish matches `key` exactly, then by the part before `?`, then
    /// the only publishing stream.
    fn publishing_stream_for_key(&self, key: &str) -> Option<u32> {
        let active: Vec<(u32, &str)> = self
            .streams
            .iter()
            .filter_map(|(id, s)| match s {
                StreamState::PublishRequested { key } | StreamState::Publishing { key } => {
                    Some((*id, key.as_str()))
                }
                _ => None,
            })
            .collect();
        let base = |k: &str| k.split('?').next().unwrap_or_default().to_owned();
        active
            .iter()
            .find(|(_, k)| *k == key)
            .or_else(|| active.iter().find(|(_, k)| base(k) == base(key)))
            .or(if active.len() == 1 {
                active.first()
            } else {
                None
            })
            .map(|(id, _)| *id)
    }

    fn unpublish(&mut self, stream_id: u32) {
        if let Some(state) = self.streams.get_mut(&stream_id) {
            if matches!(
                state,
                StreamState::PublishRequested { .. } | StreamState::Publishing { .. }
            ) {
                *state = StreamState::Ended;
                self.events
                    .push_back(SessionEvent::Unpublished { stream_id });
            }
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
