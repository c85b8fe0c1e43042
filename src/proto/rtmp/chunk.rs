//! RTMP chunk stream layer (Adobe RTMP specification 1.0, section 5.3): reassembles
//! messages from interleaved chunks ([`ChunkDecoder`]) and splits outgoing messages into
//! chunks ([`ChunkEncoder`]).
//!
//! Owns: basic headers (1/2/3-byte chunk stream ids), message headers of fmt 0-3, extended
//! timestamps, timestamp deltas (32-bit wrapping), the per-direction chunk size, and the
//! limits that keep a hostile peer from making us buffer without bound (message size,
//! number of chunk streams, bytes held in partial messages). Never does IO and never
//! interprets message payloads; protocol control messages (Set Chunk Size, Abort) are
//! applied by the session through [`ChunkDecoder::set_chunk_size`] / [`ChunkDecoder::abort`].
//!
//! Interpretation choices where encoders disagree (same as nginx-rtmp):
//! - After a fmt 0 header the stored timestamp delta is 0, so a following fmt 3 header that
//!   starts a new message repeats the timestamp.
//! - A fmt 3 chunk after a header with an extended timestamp *should* repeat the 4-byte
//!   extended field; some encoders omit it. We peek: the 4 bytes are taken as the field only
//!   if they equal the last extended value on that chunk stream.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use super::session::Limits;

/// The chunk size both directions start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// A 24-bit timestamp field with this value means "see the extended timestamp".
const EXTENDED_TIMESTAMP: u32 = 0x00FF_FFFF;

/// A protocol violation in the chunk stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("chunk stream {csid}: fmt {fmt} header without a previous fmt 0 header")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("chunk stream {csid}: message of {length} bytes (type {type_id}) exceeds the limit of {limit}")]
    MessageTooLarge {
        csid: u32,
        type_id: u8,
        length: u32,
        limit: u32,
    },
    #[error("chunk stream {csid}: more than {limit} chunk streams open")]
    TooManyChunkStreams { csid: u32, limit: usize },
    #[error("chunk stream {csid}: {buffered} bytes held in partial messages exceed the limit of {limit}")]
    TooMuchBuffered {
        csid: u32,
        buffered: usize,
        limit: usize,
    },
    #[error("invalid chunk size {size} (allowed 1..={max}, top bit clear)")]
    InvalidChunkSize { size: u32, max: u32 },
}

/// One reassembled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub csid: u32,
    /// Absolute timestamp in ms, 32-bit wrapping.
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

/// Receive state of one chunk stream: the last header seen and the message in progress.
#[derive(Debug)]
struct InStream {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The value of the last extended timestamp field, when the last header had one.
    last_ext: Option<u32>,
    /// Payload received so far of the message in progress.
    partial: Option<BytesMut>,
}

/// A header read from the input but not yet applied.
struct PeekedHeader {
    csid: u32,
    /// Bytes of basic + message header + extended timestamp.
    len: usize,
    /// `None` for a fmt 3 chunk continuing the message in progress.
    new_message: Option<NewMessage>,
    last_ext: Option<u32>,
}

struct NewMessage {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Reassembles messages from the peer's chunk stream.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    max_chunk_size: u32,
    max_message_size: u32,
    max_command_size: u32,
    /// Whether audio/video messages may use `max_message_size`: only once the peer has
    /// asked to publish. Before that every message gets the command limit, so a peer that
    /// never publishes holds at most a few hundred KiB however it frames its bytes.
    media_allowed: bool,
    max_chunk_streams: usize,
    streams: HashMap<u32, InStream>,
    /// Bytes held across all partial messages.
    buffered: usize,
}

fn u24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from_be_bytes([0, s[0], s[1], s[2]]))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl ChunkDecoder {
    pub fn new(limits: &Limits) -> Self {
        ChunkDecoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_chunk_size: limits.max_chunk_size,
            max_message_size: limits.max_message_size,
            max_command_size: limits.max_command_size,
            media_allowed: false,
            max_chunk_streams: limits.max_chunk_streams,
            streams: HashMap::new(),
            buffered: 0,
        }
    }

    /// Lets audio and video messages be as large as `max_message_size` (a publish was
    /// requested) or holds them to the command limit again (no publish is pending or on).
    pub fn allow_media(&mut self, allowed: bool) {
        self.media_allowed = allowed;
    }

    /// The largest message of `type_id` accepted now.
    fn message_limit(&self, type_id: u8) -> u32 {
        let command = self.max_command_size.min(self.max_message_size);
        match type_id {
            8 | 9 | 22 if self.media_allowed => self.max_message_size,
            _ => command,
        }
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Applies the peer's Set Chunk Size. 0, values with the top bit set and values above
    /// `Limits::max_chunk_size` are rejected.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size & 0x8000_0000 != 0 || size > self.max_chunk_size {
            return Err(ChunkError::InvalidChunkSize {
                size,
                max: self.max_chunk_size.min(0x7FFF_FFFF),
            });
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Applies the peer's Abort Message: drops the partial message on `csid`.
    pub fn abort(&mut self, csid: u32) {
        if let Some(s) = self.streams.get_mut(&csid) {
            if let Some(p) = s.partial.take() {
                self.buffered = self.buffered.saturating_sub(p.len());
            }
        }
    }

    /// Consumes whole chunks from the front of `input` until a message is complete
    /// (returned) or the next chunk is not entirely buffered yet (`Ok(None)`; nothing of
    /// that chunk is consumed).
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let Some(h) = self.peek_header(input)? else {
                return Ok(None);
            };
            let (length, received) = match (&h.new_message, self.streams.get(&h.csid)) {
                (Some(m), _) => (m.length, 0),
                (None, Some(s)) => (s.length, s.partial.as_ref().map_or(0, |p| p.len())),
                (None, None) => {
                    return Err(ChunkError::NoPreviousHeader {
                        csid: h.csid,
                        fmt: 3,
                    })
                }
            };
            let remaining = (length as usize).saturating_sub(received);
            let piece = remaining.min(self.chunk_size as usize);
            if input.len() < h.len + piece {
                return Ok(None);
            }
            // The whole chunk is here: apply it.
            if !self.streams.contains_key(&h.csid) && self.streams.len() >= self.max_chunk_streams {
                return Err(ChunkError::TooManyChunkStreams {
                    csid: h.csid,
                    limit: self.max_chunk_streams,
                });
            }
            let limit = (self.message_limit(9) as usize).saturating_mul(2);
            if self.buffered + piece > limit {
                return Err(ChunkError::TooMuchBuffered {
                    csid: h.csid,
                    buffered: self.buffered + piece,
                    limit,
                });
            }
            input.advance(h.len);
            let data = input.split_to(piece);
            let stream = self.streams.entry(h.csid).or_insert(InStream {
                timestamp: 0,
                delta: 0,
                length: 0,
                type_id: 0,
                stream_id: 0,
                last_ext: None,
                partial: None,
            });
            stream.last_ext = h.last_ext;
            if let Some(m) = h.new_message {
                if let Some(p) = stream.partial.take() {
                    // A new header in the middle of a message: the sender gave up on it.
                    self.buffered = self.buffered.saturating_sub(p.len());
                }
                stream.timestamp = m.timestamp;
                stream.delta = m.delta;
                stream.length = m.length;
                stream.type_id = m.type_id;
                stream.stream_id = m.stream_id;
                stream.partial = Some(BytesMut::with_capacity((m.length as usize).min(64 * 1024)));
            }
            let partial = stream.partial.get_or_insert_with(BytesMut::new);
            partial.extend_from_slice(&data);
            self.buffered += piece;
            if partial.len() >= stream.length as usize {
                let payload = stream.partial.take().unwrap_or_default().freeze();
                self.buffered = self.buffered.saturating_sub(payload.len());
                return Ok(Some(RawMessage {
                    csid: h.csid,
                    timestamp: stream.timestamp,
                    type_id: stream.type_id,
                    stream_id: stream.stream_id,
                    payload,
                }));
            }
        }
    }

    /// Parses the chunk header at the front of `input` without consuming it.
    fn peek_header(&self, input: &[u8]) -> Result<Option<PeekedHeader>, ChunkError> {
        let Some(&b0) = input.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut pos) = match b0 & 0x3F {
            0 => match input.get(1) {
                Some(&b1) => (64 + u32::from(b1), 2),
                None => return Ok(None),
            },
            1 => match (input.get(1), input.get(2)) {
                (Some(&b1), Some(&b2)) => (64 + u32::from(b1) + 256 * u32::from(b2), 3),
                _ => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let prev = self.streams.get(&csid);
        let header_len = match fmt {
            0 => 11,
            1 => 7,
            2 => 3,
            _ => 0,
        };
        if input.len() < pos + header_len {
            return Ok(None);
        }
        if fmt == 0 {
            return self.peek_fmt0(input, csid, pos);
        }
        let Some(prev) = prev else {
            return Err(ChunkError::NoPreviousHeader { csid, fmt });
        };
        let in_progress = prev.partial.is_some();
        let field = if fmt == 3 { None } else { u24(input, pos) };
        pos += header_len;
        let (length, type_id) = if fmt == 1 {
            let length = u24(input, pos - 4).unwrap_or(0);
            let type_id = input.get(pos - 1).copied().unwrap_or(0);
            (length, type_id)
        } else {
            (prev.length, prev.type_id)
        };
        let mut last_ext = None;
        let mut delta = prev.delta;
        match field {
            Some(EXTENDED_TIMESTAMP) => match u32_be(input, pos) {
                Some(ext) => {
                    pos += 4;
                    delta = ext;
                    last_ext = Some(ext);
                }
                None => return Ok(None),
            },
            Some(d) => delta = d,
            None => {
                // fmt 3: the extended field repeats if the last header had one.
                if let Some(expected) = prev.last_ext {
                    match u32_be(input, pos) {
                        Some(v) if v == expected => pos += 4,
                        Some(_) => {}
                        None => return Ok(None),
                    }
                    last_ext = Some(expected);
                }
            }
        }
        if fmt == 3 && in_progress {
            return Ok(Some(PeekedHeader {
                csid,
                len: pos,
                new_message: None,
                last_ext,
            }));
        }
        self.check_length(csid, type_id, length)?;
        Ok(Some(PeekedHeader {
            csid,
            len: pos,
            new_message: Some(NewMessage {
                timestamp: prev.timestamp.wrapping_add(delta),
                delta,
                length,
                type_id,
                stream_id: prev.stream_id,
            }),
            last_ext,
        }))
    }

    fn peek_fmt0(
        &self,
        input: &[u8],
        csid: u32,
        mut pos: usize,
    ) -> Result<Option<PeekedHeader>, ChunkError> {
        let (Some(field), Some(length), Some(&type_id), Some(sid)) = (
            u24(input, pos),
            u24(input, pos + 3),
            input.get(pos + 6),
            input.get(pos + 7..pos + 11),
        ) else {
            return Ok(None);
        };
        let stream_id = u32::from_le_bytes([sid[0], sid[1], sid[2], sid[3]]);
        pos += 11;
        let mut timestamp = field;
        let mut last_ext = None;
        if field == EXTENDED_TIMESTAMP {
            let Some(ext) = u32_be(input, pos) else {
                return Ok(None);
            };
            pos += 4;
            timestamp = ext;
            last_ext = Some(ext);
        }
        self.check_length(csid, type_id, length)?;
        Ok(Some(PeekedHeader {
            csid,
            len: pos,
            new_message: Some(NewMessage {
                timestamp,
                delta: 0,
                length,
                type_id,
                stream_id,
            }),
            last_ext,
        }))
    }

    /// Refused at the header, before any of the payload is buffered. Audio (8), video (9)
    /// and aggregate (22) messages carry media and may be large once a publish was
    /// requested; everything else is parsed into AMF values or control fields and gets the
    /// small command limit.
    fn check_length(&self, csid: u32, type_id: u8, length: u32) -> Result<(), ChunkError> {
        let limit = self.message_limit(type_id);
        if length > limit {
            return Err(ChunkError::MessageTooLarge {
                csid,
                type_id,
                length,
                limit,
            });
        }
        Ok(())
    }
}

/// Send state of one chunk stream (what the peer's decoder remembers).
#[derive(Debug, Clone, Copy)]
struct OutStream {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    last_ext: Option<u32>,
}

/// Splits outgoing messages into chunks of the current outgoing chunk size, compressing
/// headers (fmt 1/2/3) the way ffmpeg and librtmp do.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    streams: HashMap<u32, OutStream>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }

    /// Switches the outgoing chunk size (after writing a Set Chunk Size message). Not
    /// validated; 0 is treated as 1 so that tests can announce hostile sizes.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size;
    }

    /// Appends `payload` as one message on chunk stream `csid` (2..=65599) to `out`.
    pub fn write(
        &mut self,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) {
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX) & 0x00FF_FFFF;
        let prev = self.streams.get(&csid).copied();
        let fmt = match prev {
            Some(p) if p.stream_id == stream_id && timestamp >= p.timestamp => {
                let delta = timestamp - p.timestamp;
                if p.length != length || p.type_id != type_id {
                    1
                } else if delta != p.delta {
                    2
                } else {
                    3
                }
            }
            _ => 0,
        };
        let mut state = prev.unwrap_or(OutStream {
            timestamp: 0,
            delta: 0,
            length: 0,
            type_id: 0,
            stream_id: 0,
            last_ext: None,
        });
        let field = if fmt == 0 {
            timestamp
        } else {
            timestamp.wrapping_sub(state.timestamp)
        };
        write_basic_header(fmt, csid, out);
        if fmt < 3 {
            let ext = field >= EXTENDED_TIMESTAMP;
            out.extend_from_slice(&field.min(EXTENDED_TIMESTAMP).to_be_bytes()[1..]);
            if fmt < 2 {
                out.extend_from_slice(&length.to_be_bytes()[1..]);
                out.extend_from_slice(&[type_id]);
            }
            if fmt == 0 {
                out.extend_from_slice(&stream_id.to_le_bytes());
            }
            state.last_ext = ext.then_some(field);
            if let Some(e) = state.last_ext {
                out.extend_from_slice(&e.to_be_bytes());
            }
            state.delta = if fmt == 0 { 0 } else { field };
        } else if let Some(e) = state.last_ext {
            out.extend_from_slice(&e.to_be_bytes());
        }
        state.timestamp = timestamp;
        state.length = length;
        state.type_id = type_id;
        state.stream_id = stream_id;
        self.streams.insert(csid, state);

        let size = (self.chunk_size.max(1) as usize).min(payload.len().max(1));
        let mut chunks = payload.chunks(size);
        if let Some(first) = chunks.next() {
            out.extend_from_slice(first);
        }
        for piece in chunks {
            write_basic_header(3, csid, out);
            if let Some(e) = state.last_ext {
                out.extend_from_slice(&e.to_be_bytes());
            }
            out.extend_from_slice(piece);
        }
    }
}

fn write_basic_header(fmt: u8, csid: u32, out: &mut BytesMut) {
    let f = fmt << 6;
    match csid {
        0..=63 => out.extend_from_slice(&[f | csid as u8]),
        64..=319 => out.extend_from_slice(&[f, (csid - 64) as u8]),
        _ => {
            let v = csid.saturating_sub(64).min(0xFFFF);
            out.extend_from_slice(&[f | 1, (v & 0xFF) as u8, (v >> 8) as u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8]) -> Vec<RawMessage> {
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = dec.decode(&mut input).unwrap() {
            out.push(m);
        }
        assert!(input.is_empty(), "left over: {input:?}");
        out
    }

    #[test]
    fn round_trip_all_header_forms_and_csid_sizes() {
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let cases: Vec<(u32, u32, u8, u32, &[u8])> = vec![
            (3, 0, 20, 0, b"hello"),
            (3, 0, 20, 0, b"world"),  // fmt 3 (same len/type, delta 0)
            (3, 10, 20, 0, b"again"), // fmt 2
            (3, 20, 20, 0, b"third"), // fmt 3 (same delta 10)
            (3, 25, 9, 0, &big),      // fmt 1, multi-chunk
            (100, 7, 8, 1, b"two-byte csid"),
            (1000, 7, 8, 1, b"three-byte csid"),
            (3, 5, 9, 0, b"backwards -> fmt 0"),
        ];
        for (csid, ts, ty, sid, p) in &cases {
            enc.write(*csid, *ts, *ty, *sid, p, &mut out);
        }
        let mut dec = ChunkDecoder::new(&Limits::default());
        let msgs = decode_all(&mut dec, &out);
        assert_eq!(msgs.len(), cases.len());
        for (m, (csid, ts, ty, sid, p)) in msgs.iter().zip(&cases) {
            assert_eq!(
                (m.csid, m.timestamp, m.type_id, m.stream_id),
                (*csid, *ts, *ty, *sid)
            );
            assert_eq!(&m.payload[..], *p);
        }
    }

    #[test]
    fn extended_timestamps_with_fmt3_continuation() {
        let payload = vec![7u8; 300]; // three chunks at 128
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        enc.write(4, 0x0100_0000, 9, 1, &payload, &mut out);
        enc.write(4, 0x0100_0000 + 0x0100_0000, 9, 1, &payload, &mut out); // fmt 2, ext delta
        enc.write(4, 0x0300_0000, 9, 1, &payload, &mut out); // fmt 3 new message, ext repeated
        enc.write(4, 0xFFFF_FFFF, 8, 1, b"x", &mut out);
        // fmt 0 header + ext, then two fmt 3 chunks each carrying the ext field.
        assert_eq!(
            &out[..16],
            &[4, 0xFF, 0xFF, 0xFF, 0, 1, 44, 9, 1, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(&out[16 + 128..16 + 128 + 5], &[0xC4, 1, 0, 0, 0]);
        let mut dec = ChunkDecoder::new(&Limits::default());
        let msgs = decode_all(&mut dec, &out);
        let ts: Vec<u32> = msgs.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![0x0100_0000, 0x0200_0000, 0x0300_0000, 0xFFFF_FFFF]);
        assert!(msgs[..3].iter().all(|m| m.payload[..] == payload[..]));
    }

    #[test]
    fn fmt3_without_repeated_extended_field_is_tolerated() {
        // fmt 0 with extended timestamp, 200-byte payload, continuation without ext field.
        let mut bytes = vec![
            4, 0xFF, 0xFF, 0xFF, 0, 0, 200, 9, 1, 0, 0, 0, 0x12, 0x34, 0x56, 0x78,
        ];
        bytes.extend([1u8; 128]);
        bytes.push(0xC4);
        bytes.extend([2u8; 72]);
        let mut dec = ChunkDecoder::new(&Limits::default());
        let msgs = decode_all(&mut dec, &bytes);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].timestamp, 0x1234_5678);
        assert_eq!(msgs[0].payload.len(), 200);
        assert_eq!(msgs[0].payload[199], 2);
    }

    #[test]
    fn delta_wraps_at_32_bits() {
        // fmt 0 at 0xFFFFFFF0 (extended), then fmt 2 delta 0x20 -> 0x10.
        let mut bytes = vec![
            5, 0xFF, 0xFF, 0xFF, 0, 0, 1, 8, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xF0, 0xAA,
        ];
        bytes.extend([0x85, 0, 0, 0x20, 0xBB]);
        let mut dec = ChunkDecoder::new(&Limits::default());
        let msgs = decode_all(&mut dec, &bytes);
        assert_eq!(msgs[1].timestamp, 0x10);
    }

    #[test]
    fn chunk_size_limits() {
        let mut dec = ChunkDecoder::new(&Limits::default());
        assert!(dec.set_chunk_size(0).is_err());
        assert!(dec.set_chunk_size(1 << 31).is_err());
        assert!(dec.set_chunk_size(16 * 1024 * 1024 + 1).is_err());
        dec.set_chunk_size(1).unwrap();
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(1);
        let mut out = BytesMut::new();
        enc.write(3, 1, 20, 0, b"tiny chunks", &mut out);
        assert_eq!(&decode_all(&mut dec, &out)[0].payload[..], b"tiny chunks");
    }

    #[test]
    fn commands_get_the_small_limit_and_media_the_large_one() {
        let limits = Limits::default();
        // An 8 MiB AMF0 command (type 20) is refused at its header, nothing buffered.
        let mut dec = ChunkDecoder::new(&limits);
        let mut input = BytesMut::from(&[3, 0, 0, 0, 0x80, 0, 0, 20, 0, 0, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut input),
            Err(ChunkError::MessageTooLarge {
                type_id: 20,
                length: 0x80_0000,
                limit: 65_536,
                ..
            })
        ));
        // So is a data message (18) just over 64 KiB; one at the limit is fine.
        let mut dec = ChunkDecoder::new(&limits);
        let mut input = BytesMut::from(&[3, 0, 0, 0, 0x01, 0, 1, 18, 1, 0, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut input),
            Err(ChunkError::MessageTooLarge { type_id: 18, .. })
        ));
        let mut dec = ChunkDecoder::new(&limits);
        let mut input = BytesMut::from(&[3, 0, 0, 0, 0x01, 0, 0, 18, 1, 0, 0, 0][..]);
        assert!(dec.decode(&mut input).is_ok());
        // A 4 MiB video frame: refused before a publish was requested, fine after.
        let mut dec = ChunkDecoder::new(&limits);
        let mut input = BytesMut::from(&[4, 0, 0, 0, 0x40, 0, 0, 9, 1, 0, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut input),
            Err(ChunkError::MessageTooLarge {
                type_id: 9,
                limit: 65_536,
                ..
            })
        ));
        let mut dec = ChunkDecoder::new(&limits);
        dec.allow_media(true);
        let mut input = BytesMut::from(&[4, 0, 0, 0, 0x40, 0, 0, 9, 1, 0, 0, 0][..]);
        assert!(dec.decode(&mut input).is_ok());
    }

    #[test]
    fn limits_enforced() {
        let limits = Limits {
            max_message_size: 1000,
            max_chunk_streams: 2,
            ..Limits::default()
        };
        let mut dec = ChunkDecoder::new(&limits);
        dec.allow_media(true);
        let mut input = BytesMut::from(&[3, 0, 0, 0, 0, 0x03, 0xE9, 9, 1, 0, 0, 0][..]);
        assert!(matches!(
            dec.decode(&mut input),
            Err(ChunkError::MessageTooLarge {
                csid: 3,
                length: 1001,
                ..
            })
        ));
        let mut dec = ChunkDecoder::new(&limits);
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        for csid in 3..6 {
            enc.write(csid, 0, 8, 1, b"a", &mut out);
        }
        let mut input = out;
        assert!(dec.decode(&mut input).unwrap().is_some());
        assert!(dec.decode(&mut input).unwrap().is_some());
        assert!(matches!(
            dec.decode(&mut input),
            Err(ChunkError::TooManyChunkStreams { csid: 5, .. })
        ));
    }

    #[test]
    fn header_without_previous_is_error() {
        let mut dec = ChunkDecoder::new(&Limits::default());
        let mut input = BytesMut::from(&[0x43, 0, 0, 0, 0, 0, 1, 8, 0][..]);
        assert!(matches!(
            dec.decode(&mut input),
            Err(ChunkError::NoPreviousHeader { csid: 3, fmt: 1 })
        ));
        let mut input = BytesMut::from(&[0xC3, 0][..]);
        assert!(dec.decode(&mut input).is_err());
    }

    #[test]
    fn abort_drops_partial() {
        let mut dec = ChunkDecoder::new(&Limits::default());
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        enc.write(3, 0, 9, 1, &[1u8; 200], &mut out);
        out.truncate(12 + 128);
        assert!(dec.decode(&mut out).unwrap().is_none());
        dec.abort(3);
        assert_eq!(dec.buffered, 0);
    }
}
