//! The identity of a live stream: its app and stream name, written `app/stream` wherever
//! a stream is keyed (the live registry, the index's `open` tree, logs, the API).
//!
//! Pure: no IO. Also owns the name rules ([`validate_name`]): what makes an app or stream
//! name safe as one folder under the data dir. Names are checked where they enter (the
//! ingest, the config, the API); [`StreamKey`] only carries them.

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

/// Why a name cannot be used as a path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than 128 bytes")]
    TooLong,
    #[error("name {0:?} is reserved")]
    Reserved(String),
    #[error("name contains {0:?}, which is not allowed (no '/', '\\\\', control characters or a leading '.')")]
    BadChar(char),
}

/// Checks that an app or stream name is safe as one folder name under the data dir:
/// no separators, no `.`/`..`, no control characters, no leading dot, at most 128 bytes.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 128 {
        return Err(NameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved(name.to_owned()));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(NameError::BadChar(c));
    }
    if name.starts_with('.') {
        return Err(NameError::BadChar('.'));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_app_slash_stream() {
        assert_eq!(StreamKey::new("live", "cam1").to_string(), "live/cam1");
    }
}
