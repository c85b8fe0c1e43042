//! Who may call the API: the bearer-token guard in front of every route, and the signed
//! playback URLs that let players (which cannot send headers) fetch playlists, segments
//! and files. `/healthz` stays open: it names no stream or recording; so do the status
//! page and its script, which hold no data (the page asks for a token), and the OpenAPI
//! description, which says what the source code says.
//!
//! With no tokens configured the API is open (the config allows that only on loopback or
//! with `http.allow_unauthenticated`). A valid playback signature admits only a GET or
//! HEAD of a playback path, and a signed playlist signs the segment URIs it lists.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ApiState;
use crate::auth::playback;
use crate::auth::tokens::{Denied, TokenSet};
use crate::config::HttpConfig;

/// The API's access settings, built once from `[http]`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    tokens: TokenSet,
    playback_key: Option<String>,
    playback_ttl_s: u64,
}

/// A request admitted by a playback signature valid until `exp`: playlists it fetches
/// sign their segment URIs with the same expiry.
#[derive(Debug, Clone, Copy)]
pub struct PlaybackGrant {
    pub exp: u64,
}

impl Access {
    pub fn new(http: &HttpConfig) -> Access {
        Access {
            tokens: TokenSet::new(&http.tokens),
            playback_key: http.playback_key.as_ref().map(|k| k.0.clone()),
            playback_ttl_s: http.playback_url_ttl_s,
        }
    }

    /// `path` as the API hands it out: signed for `playback_url_ttl_s` when a playback key
    /// is configured, so a token holder can give it to a player as is.
    pub fn playback_url(&self, path: &str) -> String {
        match &self.playback_key {
            Some(key) => playback::sign_path(key, path, now_s() + self.playback_ttl_s),
            None => path.to_owned(),
        }
    }

    /// The query (`?exp=..&sig=..`, or empty) for URIs under `scope` in a playlist fetched
    /// under `grant`.
    pub fn segment_query(&self, grant: Option<PlaybackGrant>, scope: &str) -> String {
        match (&self.playback_key, grant) {
            (Some(key), Some(g)) => format!("?{}", playback::query(key, scope, g.exp)),
            _ => String::new(),
        }
    }
}

fn now_s() -> u64 {
    u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0)
}

/// Paths a signed URL may open: HLS playlists and segments, and file downloads.
pub(super) fn is_playback_path(path: &str) -> bool {
    path.starts_with("/hls/")
        || (path.starts_with("/api/v1/recordings/") && path.ends_with("/file"))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = super::ErrorBody {
        error: message.to_owned(),
    };
    let mut r = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"edgerec\""),
        );
    }
    r
}

/// The guard in front of every route.
pub async fn guard(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/healthz" || path == super::openapi::PATH || super::page::is_public(&path) {
        return next.run(req).await;
    }
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    if read_only && is_playback_path(&path) {
        if let Some(key) = &s.access.playback_key {
            let query = req.uri().query().unwrap_or("");
            match playback::verify(key, &path, query, now_s()) {
                Ok(exp) => {
                    req.extensions_mut().insert(PlaybackGrant { exp });
                    return next.run(req).await;
                }
                Err(playback::Denied::Unsigned) => {}
                Err(denied) => {
                    tracing::info!(%path, reason = denied.message(), "playback refused");
                    return refuse(StatusCode::FORBIDDEN, denied.message());
                }
            }
        }
    }
    if s.access.tokens.is_empty() {
        return next.run(req).await;
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.access.tokens.authorize(authorization, read_only) {
        Ok(_) => next.run(req).await,
        Err(denied) => {
            let status = match denied {
                Denied::Scope => StatusCode::FORBIDDEN,
                Denied::Missing | Denied::Unknown => StatusCode::UNAUTHORIZED,
            };
            if denied != Denied::Missing {
                tracing::info!(method = %req.method(), %path, "api request refused: {}", denied.message());
            }
            refuse(status, denied.message())
        }
    }
}
