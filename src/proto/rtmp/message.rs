//! RTMP message types (Adobe RTMP specification 1.0, sections 5.4 and 7.1): turns a
//! reassembled [`RawMessage`] into a typed [`Message`] and encodes the messages we send.
//!
//! Owns: the payload layout of protocol control messages (1-6), user control events,
//! audio/video (8/9, passed through untouched), data (18, and 15 = AMF3 envelope) and
//! command messages (20, and 17 = AMF3 envelope). The AMF3 variants as sent by RTMP
//! encoders are one format byte (0) followed by plain AMF0, which is all we accept.
//! Never does IO and never decides what a message means for the session.

use bytes::Bytes;
use thiserror::Error;

use super::amf0::{self, AmfError, Value};
use super::chunk::RawMessage;

pub const SET_CHUNK_SIZE: u8 = 1;
pub const ABORT: u8 = 2;
pub const ACKNOWLEDGEMENT: u8 = 3;
pub const USER_CONTROL: u8 = 4;
pub const WINDOW_ACK_SIZE: u8 = 5;
pub const SET_PEER_BANDWIDTH: u8 = 6;
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const DATA_AMF3: u8 = 15;
pub const COMMAND_AMF3: u8 = 17;
pub const DATA_AMF0: u8 = 18;
pub const COMMAND_AMF0: u8 = 20;

/// A message whose payload does not match its type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    #[error("message type {type_id} on chunk stream {csid}: {len} bytes, need {need}")]
    Truncated {
        type_id: u8,
        csid: u32,
        len: usize,
        need: usize,
    },
    #[error("message type {type_id} on chunk stream {csid}: {source}")]
    Amf {
        type_id: u8,
        csid: u32,
        source: AmfError,
    },
    #[error("command on chunk stream {csid}: does not start with a name string")]
    NoCommandName { csid: u32 },
}

/// User control events (section 7.1.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength { stream_id: u32, millis: u32 },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    Other { event_type: u16 },
}

/// A command message: name, transaction id, command object and further arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    /// 0 when the peer sent none or a non-number.
    pub transaction_id: f64,
    /// `Value::Null` when absent.
    pub object: Value,
    pub args: Vec<Value>,
}

impl Command {
    /// The AMF0 values of this command, in wire order.
    pub fn to_values(&self) -> Vec<Value> {
        let mut v = vec![
            Value::String(self.name.clone()),
            Value::Number(self.transaction_id),
            self.object.clone(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    /// Argument `i` (after the command object) as a string.
    pub fn arg_str(&self, i: usize) -> Option<&str> {
        self.args.get(i).and_then(Value::as_str)
    }
}

/// A typed RTMP message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    SetChunkSize(u32),
    Abort {
        csid: u32,
    },
    Acknowledgement(u32),
    UserControl(UserControl),
    WindowAckSize(u32),
    SetPeerBandwidth {
        size: u32,
        limit_type: u8,
    },
    /// FLV audio tag body.
    Audio(Bytes),
    /// FLV video tag body.
    Video(Bytes),
    Data(Vec<Value>),
    Command(Command),
    /// Any other type (aggregate, shared object, ...), ignored by the session.
    Other {
        type_id: u8,
    },
}

fn be32(p: &[u8], at: usize) -> Option<u32> {
    let s = p.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl Message {
    /// Parses the payload of `raw` according to its type.
    pub fn parse(raw: &RawMessage, max_amf_depth: usize) -> Result<Message, MessageError> {
        let p = &raw.payload[..];
        let truncated = |need| MessageError::Truncated {
            type_id: raw.type_id,
            csid: raw.csid,
            len: p.len(),
            need,
        };
        let amf = |body: &[u8]| {
            amf0::decode_all(body, max_amf_depth).map_err(|source| MessageError::Amf {
                type_id: raw.type_id,
                csid: raw.csid,
                source,
            })
        };
        Ok(match raw.type_id {
            SET_CHUNK_SIZE => Message::SetChunkSize(be32(p, 0).ok_or(truncated(4))?),
            ABORT => Message::Abort {
                csid: be32(p, 0).ok_or(truncated(4))?,
            },
            ACKNOWLEDGEMENT => Message::Acknowledgement(be32(p, 0).ok_or(truncated(4))?),
            WINDOW_ACK_SIZE => Message::WindowAckSize(be32(p, 0).ok_or(truncated(4))?),
            SET_PEER_BANDWIDTH => Message::SetPeerBandwidth {
                size: be32(p, 0).ok_or(truncated(5))?,
                limit_type: p.get(4).copied().ok_or(truncated(5))?,
            },
            USER_CONTROL => {
                let event_type = p
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .ok_or(truncated(2))?;
                let arg = be32(p, 2);
                let need = |a: Option<u32>| a.ok_or(truncated(6));
                Message::UserControl(match event_type {
                    0 => UserControl::StreamBegin(need(arg)?),
                    1 => UserControl::StreamEof(need(arg)?),
                    2 => UserControl::StreamDry(need(arg)?),
                    3 => UserControl::SetBufferLength {
                        stream_id: need(arg)?,
                        millis: be32(p, 6).ok_or(truncated(10))?,
                    },
                    4 => UserControl::StreamIsRecorded(need(arg)?),
                    6 => UserControl::PingRequest(need(arg)?),
                    7 => UserControl::PingResponse(need(arg)?),
                    event_type => UserControl::Other { event_type },
                })
            }
            AUDIO => Message::Audio(raw.payload.clone()),
            VIDEO => Message::Video(raw.payload.clone()),
            DATA_AMF0 => Message::Data(amf(p)?),
            DATA_AMF3 => Message::Data(amf(strip_amf3_envelope(p))?),
            COMMAND_AMF0 | COMMAND_AMF3 => {
                let body = if raw.type_id == COMMAND_AMF3 {
                    strip_amf3_envelope(p)
                } else {
                    p
                };
                let mut values = amf(body)?.into_iter();
                let Some(Value::String(name)) = values.next() else {
                    return Err(MessageError::NoCommandName { csid: raw.csid });
                };
                let transaction_id = values.next().and_then(|v| v.as_f64()).unwrap_or(0.0);
                let object = values.next().unwrap_or(Value::Null);
                Message::Command(Command {
                    name,
                    transaction_id,
                    object,
                    args: values.collect(),
                })
            }
            type_id => Message::Other { type_id },
        })
    }

    /// The type id and payload of this message as sent on the wire.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Message::SetChunkSize(n) => (SET_CHUNK_SIZE, n.to_be_bytes().to_vec()),
            Message::Abort { csid } => (ABORT, csid.to_be_bytes().to_vec()),
            Message::Acknowledgement(n) => (ACKNOWLEDGEMENT, n.to_be_bytes().to_vec()),
            Message::WindowAckSize(n) => (WINDOW_ACK_SIZE, n.to_be_bytes().to_vec()),
            Message::SetPeerBandwidth { size, limit_type } => {
                let mut v = size.to_be_bytes().to_vec();
                v.push(*limit_type);
                (SET_PEER_BANDWIDTH, v)
            }
            Message::UserControl(uc) => {
                let (event, a, b) = match *uc {
                    UserControl::StreamBegin(s) => (0u16, s, None),
                    UserControl::StreamEof(s) => (1, s, None),
                    UserControl::StreamDry(s) => (2, s, None),
                    UserControl::SetBufferLength { stream_id, millis } => {
                        (3, stream_id, Some(millis))
                    }
                    UserControl::StreamIsRecorded(s) => (4, s, None),
                    UserControl::PingRequest(t) => (6, t, None),
                    UserControl::PingResponse(t) => (7, t, None),
                    UserControl::Other { event_type } => (event_type, 0, None),
                };
                let mut v = event.to_be_bytes().to_vec();
                v.extend_from_slice(&a.to_be_bytes());
                if let Some(b) = b {
                    v.extend_from_slice(&b.to_be_bytes());
                }
                (USER_CONTROL, v)
            }
            Message::Audio(b) => (AUDIO, b.to_vec()),
            Message::Video(b) => (VIDEO, b.to_vec()),
            Message::Data(values) => (DATA_AMF0, amf0::encode_all(values)),
            Message::Command(c) => (COMMAND_AMF0, amf0::encode_all(&c.to_values())),
            Message::Other { type_id } => (*type_id, Vec::new()),
        }
    }
}

/// Drops the leading AMF3 format byte (0) of a type 15/17 message, if present.
fn strip_amf3_envelope(p: &[u8]) -> &[u8] {
    match p.split_first() {
        Some((0, rest)) => rest,
        _ => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(type_id: u8, payload: Vec<u8>) -> RawMessage {
        RawMessage {
            csid: 3,
            timestamp: 0,
            type_id,
            stream_id: 0,
            payload: payload.into(),
        }
    }

    #[test]
    fn control_round_trip() {
        for m in [
            Message::SetChunkSize(4096),
            Message::Abort { csid: 4 },
            Message::Acknowledgement(123),
            Message::WindowAckSize(2_500_000),
            Message::SetPeerBandwidth {
                size: 2_500_000,
                limit_type: 2,
            },
            Message::UserControl(UserControl::StreamBegin(1)),
            Message::UserControl(UserControl::PingRequest(99)),
            Message::UserControl(UserControl::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            }),
        ] {
            let (t, p) = m.encode();
            assert_eq!(Message::parse(&raw(t, p), 32).unwrap(), m);
        }
    }

    #[test]
    fn command_amf0_and_amf3_envelope() {
        let c = Command {
            name: "publish".into(),
            transaction_id: 5.0,
            object: Value::Null,
            args: vec![Value::String("key".into()), Value::String("live".into())],
        };
        let body = amf0::encode_all(&c.to_values());
        let m = Message::parse(&raw(COMMAND_AMF0, body.clone()), 32).unwrap();
        assert_eq!(m, Message::Command(c.clone()));
        let mut amf3 = vec![0];
        amf3.extend(body);
        assert_eq!(
            Message::parse(&raw(COMMAND_AMF3, amf3), 32).unwrap(),
            Message::Command(c)
        );
    }

    #[test]
    fn malformed() {
        assert!(matches!(
            Message::parse(&raw(SET_CHUNK_SIZE, vec![0, 0]), 32),
            Err(MessageError::Truncated {
                type_id: 1,
                need: 4,
                ..
            })
        ));
        assert!(matches!(
            Message::parse(&raw(COMMAND_AMF0, vec![0, 0, 0, 0, 0, 0, 0, 0, 0]), 32),
            Err(MessageError::NoCommandName { csid: 3 })
        ));
        assert!(matches!(
            Message::parse(&raw(COMMAND_AMF0, vec![2, 0, 9]), 32),
            Err(MessageError::Amf { type_id: 20, .. })
        ));
        assert_eq!(
            Message::parse(&raw(22, vec![1, 2]), 32).unwrap(),
            Message::Other { type_id: 22 }
        );
    }
}
