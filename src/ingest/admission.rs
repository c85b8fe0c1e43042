//! Publish admission that every ingest protocol shares: the signed-URL check of
//! `[publish_auth]` (see `auth::publish`) for the app being published to. RTMP calls it
//! before a recording is looked up or created, so a refused publisher neither creates
//! nor resumes a recording and writes nothing.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::publish::{self, Refusal};
use crate::config::PublishAuthSection;

/// The configured publish keys, shared by the listeners.
#[derive(Debug, Clone, Default)]
pub struct PublishGate {
    auth: Arc<PublishAuthSection>,
}

impl PublishGate {
    pub fn new(auth: PublishAuthSection) -> PublishGate {
        PublishGate {
            auth: Arc::new(auth),
        }
    }

    /// Whether a publish of `app`/`stream` (names without the query) with the stream
    /// key's `query` from `peer` may start now.
    pub fn admit(&self, app: &str, stream: &str, query: &str, peer: IpAddr) -> Result<(), Refusal> {
        match self.auth.for_app(app) {
            None => Ok(()),
            Some(keys) => {
                let now = u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0);
                publish::check(keys, stream, query, peer, now)
            }
        }
    }
}
