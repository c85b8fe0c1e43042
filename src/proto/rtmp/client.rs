//! A minimal sans-IO RTMP *publishing* client, for tests: it crafts what real encoders send
//! (and what ffmpeg cannot: Enhanced RTMP HEVC, hostile chunk sizes, raw messages) and
//! reads back the server's replies well enough to find onStatus codes.
//!
//! Owns: nothing the daemon runs on; it exists so integration tests can drive the server
//! over a socket. Never does IO and never validates what it is asked to send (tests need
//! to send invalid input). Implements the client half of the same spec as
//! [`super::session`].

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::amf0::{self, Value};
use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError};
use super::handshake::{HANDSHAKE_BLOCK, RTMP_VERSION};
use super::message::{self, Command, Message, MessageError};
use super::session::Limits;

/// The server sent something the client cannot parse.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Message(#[from] MessageError),
}

const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
const CSID_OTHER: u32 = 7;
/// S0 + S1 + S2.
const SERVER_HANDSHAKE_LEN: usize = 1 + 2 * HANDSHAKE_BLOCK;

/// Test-support publishing client.
#[derive(Debug)]
pub struct ClientSession {
    encoder: ChunkEncoder,
    output: BytesMut,
    next_transaction: f64,
    handshake_in: Vec<u8>,
    decoder: ChunkDecoder,
    input: BytesMut,
    replies: Vec<Command>,
    control: Vec<Message>,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    pub fn new() -> Self {
        ClientSession {
            encoder: ChunkEncoder::new(),
            output: BytesMut::new(),
            next_transaction: 1.0,
            handshake_in: Vec::new(),
            decoder: ChunkDecoder::new(&Limits::default()),
            input: BytesMut::new(),
            replies: Vec::new(),
            control: Vec::new(),
        }
    }

    /// Bytes to send to the server.
    pub fn take_output(&mut self) -> Bytes {
        self.output.split().freeze()
    }

    /// C0 and C1 (time 0, zero, filler).
    pub fn handshake_c0c1(&mut self) {
        self.output.extend_from_slice(&[RTMP_VERSION]);
        self.output.extend_from_slice(&[0u8; 8]);
        let filler: Vec<u8> = (0..HANDSHAKE_BLOCK - 8).map(|i| (i % 251) as u8).collect();
        self.output.extend_from_slice(&filler);
    }

    /// C2: echoes `s1` (padded or cut to 1536 bytes).
    pub fn handshake_c2(&mut self, s1: &[u8]) {
        let mut c2 = s1
            .get(..s1.len().min(HANDSHAKE_BLOCK))
            .unwrap_or_default()
            .to_vec();
        c2.resize(HANDSHAKE_BLOCK, 0);
        self.output.extend_from_slice(&c2);
    }

    /// S1 as received through [`ClientSession::feed`], once complete.
    pub fn s1(&self) -> Option<&[u8]> {
        self.handshake_in.get(1..1 + HANDSHAKE_BLOCK)
    }

    fn command(&mut self, stream_id: u32, name: &str, object: Value, args: Vec<Value>) {
        let cmd = Command {
            name: name.to_owned(),
            transaction_id: self.next_transaction,
            object,
            args,
        };
        self.next_transaction += 1.0;
        let (type_id, payload) = Message::Command(cmd).encode();
        self.encoder.write(
            CSID_COMMAND,
            0,
            type_id,
            stream_id,
            &payload,
            &mut self.output,
        );
    }

    /// `connect` as OBS sends it; with `fourcc_list`, announces Enhanced RTMP codecs.
    pub fn connect(&mut self, app: &str, tc_url: &str, fourcc_list: bool) {
        let mut object = vec![
            ("app".to_owned(), Value::String(app.into())),
            ("type".to_owned(), Value::String("nonprivate".into())),
            (
                "flashVer".to_owned(),
                Value::String("FMLE/3.0 (compatible; FMSc/1.0)".into()),
            ),
            ("swfUrl".to_owned(), Value::String(tc_url.into())),
            ("tcUrl".to_owned(), Value::String(tc_url.into())),
        ];
        if fourcc_list {
            let list = ["av01", "vp09", "hvc1"]
                .iter()
                .map(|f| Value::String((*f).into()))
                .collect();
            object.push(("fourCcList".to_owned(), Value::StrictArray(list)));
        }
        self.command(0, "connect", Value::Object(object), Vec::new());
    }

    pub fn release_stream(&mut self, key: &str) {
        self.command(
            0,
            "releaseStream",
            Value::Null,
            vec![Value::String(key.into())],
        );
    }

    pub fn fc_publish(&mut self, key: &str) {
        self.command(0, "FCPublish", Value::Null, vec![Value::String(key.into())]);
    }

    pub fn fc_unpublish(&mut self, key: &str) {
        self.command(
            0,
            "FCUnpublish",
            Value::Null,
            vec![Value::String(key.into())],
        );
    }

    pub fn create_stream(&mut self) {
        self.command(0, "createStream", Value::Null, Vec::new());
    }

    pub fn publish(&mut self, stream_id: u32, key: &str) {
        let args = vec![Value::String(key.into()), Value::String("live".into())];
        self.command(stream_id, "publish", Value::Null, args);
    }

    pub fn delete_stream(&mut self, stream_id: u32) {
        let args = vec![Value::Number(f64::from(stream_id))];
        self.command(0, "deleteStream", Value::Null, args);
    }

    /// Sends Set Chunk Size `n` and switches the encoder to it, without validation.
    pub fn set_chunk_size(&mut self, n: u32) {
        let (type_id, payload) = Message::SetChunkSize(n).encode();
        self.encoder
            .write(CSID_CONTROL, 0, type_id, 0, &payload, &mut self.output);
        self.encoder.set_chunk_size(n);
    }

    /// One FLV video tag body.
    pub fn video(&mut self, stream_id: u32, ts_ms: u32, body: &[u8]) {
        self.encoder.write(
            CSID_VIDEO,
            ts_ms,
            message::VIDEO,
            stream_id,
            body,
            &mut self.output,
        );
    }

    /// One FLV audio tag body.
    pub fn audio(&mut self, stream_id: u32, ts_ms: u32, body: &[u8]) {
        self.encoder.write(
            CSID_AUDIO,
            ts_ms,
            message::AUDIO,
            stream_id,
            body,
            &mut self.output,
        );
    }

    /// `@setDataFrame("onMetaData", {values})` as an ECMA array.
    pub fn metadata(&mut self, stream_id: u32, values: Vec<(String, Value)>) {
        let payload = amf0::encode_all(&[
            Value::String("@setDataFrame".into()),
            Value::String("onMetaData".into()),
            Value::EcmaArray(values),
        ]);
        self.encoder.write(
            CSID_DATA,
            0,
            message::DATA_AMF0,
            stream_id,
            &payload,
            &mut self.output,
        );
    }

    /// Any message; control types (1-6) go on chunk stream 2, commands on 3.
    pub fn raw_message(&mut self, type_id: u8, stream_id: u32, ts: u32, payload: &[u8]) {
        let csid = match type_id {
            1..=6 => CSID_CONTROL,
            message::COMMAND_AMF0 | message::COMMAND_AMF3 => CSID_COMMAND,
            _ => CSID_OTHER,
        };
        self.encoder
            .write(csid, ts, type_id, stream_id, payload, &mut self.output);
    }

    /// Arbitrary bytes, appended as is.
    pub fn raw_bytes(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Parses bytes from the server: the S0+S1+S2 block first, then messages. Commands are
    /// collected (see [`ClientSession::replies`]); Set Chunk Size is honoured.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let need = SERVER_HANDSHAKE_LEN.saturating_sub(self.handshake_in.len());
        let (hs, rest) = data.split_at(need.min(data.len()));
        self.handshake_in.extend_from_slice(hs);
        self.input.extend_from_slice(rest);
        while let Some(raw) = self.decoder.decode(&mut self.input)? {
            match Message::parse(&raw, 32)? {
                Message::SetChunkSize(n) => {
                    self.decoder.set_chunk_size(n)?;
                    self.control.push(Message::SetChunkSize(n));
                }
                Message::Command(c) => self.replies.push(c),
                other => self.control.push(other),
            }
        }
        Ok(())
    }

    /// Every command the server sent, in order.
    pub fn replies(&self) -> &[Command] {
        &self.replies
    }

    /// Every non-command message the server sent (control, user control, ...), in order.
    pub fn control_messages(&self) -> &[Message] {
        &self.control
    }

    /// The `code` of every status object the server sent (onStatus, `_result` of connect,
    /// onFCPublish), in order.
    pub fn status_codes(&self) -> Vec<String> {
        self.replies
            .iter()
            .flat_map(|c| std::iter::once(&c.object).chain(c.args.iter()))
            .filter_map(|v| v.get("code").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// The stream id of the last `createStream` `_result`.
    pub fn created_stream_id(&self) -> Option<u32> {
        self.replies
            .iter()
            .rev()
            .filter(|c| c.name == "_result")
            .find_map(|c| c.args.first().and_then(Value::as_f64))
            .map(|n| n as u32)
    }
}
