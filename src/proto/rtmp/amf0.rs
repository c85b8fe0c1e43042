//! AMF0 values (Adobe "Action Message Format -- AMF 0", 2007): decoding what RTMP peers
//! send in command and data messages, and encoding our replies.
//!
//! Owns: the [`Value`] type and its wire format. Never does IO. Decoding is bounded: the
//! nesting depth is capped (so hostile input cannot overflow the stack), counts announced
//! by the peer are never used to preallocate, and references, AMF3 switches and other
//! markers RTMP encoders do not send are errors.

use thiserror::Error;

/// One AMF0 value. Objects keep their key order (peers and tools care about it).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Value)>),
    StrictArray(Vec<Value>),
    /// Milliseconds since the Unix epoch and the (reserved, usually 0) time zone offset.
    Date {
        millis: f64,
        timezone: i16,
    },
    LongString(String),
}

/// Malformed AMF0, with the byte offset inside the message payload.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmfError {
    #[error("amf0: truncated at offset {offset} (need {need} bytes)")]
    Truncated { offset: usize, need: usize },
    #[error("amf0: unsupported marker {marker:#04x} at offset {offset}")]
    UnsupportedMarker { marker: u8, offset: usize },
    #[error("amf0: nesting deeper than {max} at offset {offset}")]
    TooDeep { max: usize, offset: usize },
}

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;
const TYPED_OBJECT: u8 = 0x10;

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::LongString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The properties of an object or ECMA array.
    pub fn properties(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(p) | Value::EcmaArray(p) => Some(p),
            _ => None,
        }
    }

    /// The first property named `key` of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Appends the AMF0 encoding. Strings longer than 65535 bytes become long strings;
    /// property names longer than 65535 bytes are truncated.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Number(n) => {
                out.push(NUMBER);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Value::Boolean(b) => out.extend_from_slice(&[BOOLEAN, u8::from(*b)]),
            Value::String(s) | Value::LongString(s) => {
                if let (Value::String(_), Ok(len)) = (self, u16::try_from(s.len())) {
                    out.push(STRING);
                    out.extend_from_slice(&len.to_be_bytes());
                } else {
                    out.push(LONG_STRING);
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                }
                out.extend_from_slice(s.as_bytes());
            }
            Value::Object(props) => {
                out.push(OBJECT);
                encode_properties(props, out);
            }
            Value::Null => out.push(NULL),
            Value::Undefined => out.push(UNDEFINED),
            Value::EcmaArray(props) => {
                out.push(ECMA_ARRAY);
                let n = u32::try_from(props.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&n.to_be_bytes());
                encode_properties(props, out);
            }
            Value::StrictArray(items) => {
                out.push(STRICT_ARRAY);
                let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&n.to_be_bytes());
                for v in items {
                    v.encode(out);
                }
            }
            Value::Date { millis, timezone } => {
                out.push(DATE);
                out.extend_from_slice(&millis.to_be_bytes());
                out.extend_from_slice(&timezone.to_be_bytes());
            }
        }
    }
}

fn encode_key(key: &str, out: &mut Vec<u8>) {
    let bytes = key.as_bytes();
    let bytes = bytes.get(..bytes.len().min(0xFFFF)).unwrap_or_default();
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn encode_properties(props: &[(String, Value)], out: &mut Vec<u8>) {
    for (k, v) in props {
        encode_key(k, out);
        v.encode(out);
    }
    out.extend_from_slice(&[0, 0, OBJECT_END]);
}

/// Encodes a sequence of values (a command or data message body).
pub fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        v.encode(&mut out);
    }
    out
}

/// Decodes every value in `buf` (a command or data message body).
pub fn decode_all(buf: &[u8], max_depth: usize) -> Result<Vec<Value>, AmfError> {
    let mut r = Reader {
        buf,
        pos: 0,
        max_depth,
    };
    let mut values = Vec::new();
    while r.pos < buf.len() {
        values.push(r.value(0)?);
    }
    Ok(values)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AmfError> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(AmfError::Truncated {
                offset: self.pos,
                need: n,
            })?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, AmfError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self) -> Result<u16, AmfError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, AmfError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, AmfError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn utf8(&mut self, len: usize) -> Result<String, AmfError> {
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Value, AmfError> {
        let at = self.pos;
        let marker = self.u8()?;
        Ok(match marker {
            NUMBER => Value::Number(self.f64()?),
            BOOLEAN => Value::Boolean(self.u8()? != 0),
            STRING => {
                let n = self.u16()?;
                Value::String(self.utf8(usize::from(n))?)
            }
            LONG_STRING => {
                let n = self.u32()?;
                Value::LongString(self.utf8(n as usize)?)
            }
            NULL => Value::Null,
            UNDEFINED => Value::Undefined,
            OBJECT => Value::Object(self.properties(depth + 1, at)?),
            TYPED_OBJECT => {
                let n = self.u16()?;
                self.take(usize::from(n))?; // class name
                Value::Object(self.properties(depth + 1, at)?)
            }
            ECMA_ARRAY => {
                self.u32()?; // count hint, not trusted
                Value::EcmaArray(self.properties(depth + 1, at)?)
            }
            STRICT_ARRAY => {
                let n = self.u32()?;
                self.check_depth(depth + 1, at)?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::StrictArray(items)
            }
            DATE => Value::Date {
                millis: self.f64()?,
                timezone: self.u16()? as i16,
            },
            marker => return Err(AmfError::UnsupportedMarker { marker, offset: at }),
        })
    }

    fn check_depth(&self, depth: usize, offset: usize) -> Result<(), AmfError> {
        if depth > self.max_depth {
            return Err(AmfError::TooDeep {
                max: self.max_depth,
                offset,
            });
        }
        Ok(())
    }

    /// Properties up to the end marker. A payload ending right after the last property
    /// (without the end marker, as some encoders write ECMA arrays) is accepted.
    fn properties(&mut self, depth: usize, at: usize) -> Result<Vec<(String, Value)>, AmfError> {
        self.check_depth(depth, at)?;
        let mut props = Vec::new();
        loop {
            if self.pos >= self.buf.len() {
                return Ok(props);
            }
            let n = self.u16()?;
            if n == 0 && self.buf.get(self.pos) == Some(&OBJECT_END) {
                self.pos += 1;
                return Ok(props);
            }
            let key = self.utf8(usize::from(n))?;
            let value = self.value(depth)?;
            props.push((key, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        let values = vec![
            Value::String("connect".into()),
            Value::Number(1.0),
            Value::Object(vec![
                ("app".into(), Value::String("live".into())),
                ("flag".into(), Value::Boolean(true)),
                ("nothing".into(), Value::Null),
                ("undef".into(), Value::Undefined),
                (
                    "list".into(),
                    Value::StrictArray(vec![Value::String("hvc1".into()), Value::Number(2.5)]),
                ),
            ]),
            Value::EcmaArray(vec![("width".into(), Value::Number(1920.0))]),
            Value::Date {
                millis: 1.7e12,
                timezone: 0,
            },
            Value::LongString("long".into()),
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes, 32).unwrap(), values);
    }

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        Value::String("ab".into()).encode(&mut out);
        Value::Object(vec![("k".into(), Value::Boolean(false))]).encode(&mut out);
        assert_eq!(out, [2, 0, 2, b'a', b'b', 3, 0, 1, b'k', 1, 0, 0, 0, 9]);
        let s = "x".repeat(70_000);
        let mut out = Vec::new();
        Value::String(s.clone()).encode(&mut out);
        assert_eq!(out[0], LONG_STRING);
        assert_eq!(decode_all(&out, 32).unwrap(), vec![Value::LongString(s)]);
    }

    #[test]
    fn absurd_nesting_errors_without_overflow() {
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[OBJECT, 0, 1, b'a']);
        }
        assert!(matches!(
            decode_all(&bytes, 32),
            Err(AmfError::TooDeep { max: 32, .. })
        ));
        let arrays: Vec<u8> = (0..100_000)
            .flat_map(|_| [STRICT_ARRAY, 0, 0, 0, 1])
            .collect();
        assert!(matches!(
            decode_all(&arrays, 32),
            Err(AmfError::TooDeep { .. })
        ));
        // Exactly at the limit is fine.
        let mut ok = Value::Null;
        for _ in 0..32 {
            ok = Value::Object(vec![("a".into(), ok)]);
        }
        assert!(decode_all(&encode_all(&[ok]), 32).is_ok());
    }

    #[test]
    fn truncated_and_unsupported() {
        assert!(matches!(
            decode_all(&[NUMBER, 0, 0], 32),
            Err(AmfError::Truncated { offset: 1, need: 8 })
        ));
        assert!(matches!(
            decode_all(&[2, 0xFF, 0xFF, b'a'], 32),
            Err(AmfError::Truncated { .. })
        ));
        assert!(matches!(
            decode_all(&[0x07, 0, 0], 32),
            Err(AmfError::UnsupportedMarker {
                marker: 7,
                offset: 0
            })
        ));
        // A huge announced strict array count does not allocate up front.
        assert!(matches!(
            decode_all(&[STRICT_ARRAY, 0xFF, 0xFF, 0xFF, 0xFF], 32),
            Err(AmfError::Truncated { offset: 5, .. })
        ));
    }

    #[test]
    fn ecma_array_without_end_marker() {
        let bytes = [ECMA_ARRAY, 0, 0, 0, 1, 0, 1, b'w', 1, 1];
        assert_eq!(
            decode_all(&bytes, 32).unwrap(),
            vec![Value::EcmaArray(vec![("w".into(), Value::Boolean(true))])]
        );
    }
}
