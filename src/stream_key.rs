//! The identity of a live stream: its app and stream name, written `app/stream` wherever
//! a stream is keyed (the live registry, the index's `open` tree, logs, the API).
//!
//! Pure: no IO. Names are validated where they enter (the ingest); this type only
//! carries them.

use std::fmt;

/// `app/stream`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub app: String,
    pub stream: String,
}

impl StreamKey {
    pub fn new(app: &str, stream: &str) -> StreamKey {
        StreamKey {
            app: app.to_owned(),
            stream: stream.to_owned(),
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_app_slash_stream() {
        assert_eq!(StreamKey::new("live", "cam1").to_string(), "live/cam1");
    }
}
