//! Completion callbacks: the `event_type` 100 body (SPECS.md), its signatures
//! (`sign` = MD5(key + t) in the body, and `X-Edgerec-Signature: t=T, v1=HMAC-SHA256(key,
//! T + "." + body)`, which covers the body, where `T` is the body's `t`), and the sender that delivers the durable outbox at least once,
//! with the recording id as a stable `Idempotency-Key`, retrying every
//! `retry_interval_s` until a 200 or `max_attempts`, after which the callback is kept as
//! failed and shown in the API.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::CallbackConfig;
use crate::index::{CallbackRow, CallbackState, Index, IndexError};

/// How long a signature stays valid (SPECS: `t` defaults to now + 600).
const SIGN_VALID_S: i64 = 600;
/// A receiver that does not answer within this is retried (SPECS: 20 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// Lower-case hex MD5 of `key` followed by the decimal `t`.
pub fn sign(key: &str, t: i64) -> String {
    crate::auth::hex_md5(format!("{key}{t}").as_bytes())
}

/// Delivers due callbacks until `cancel`.
pub async fn run(
    index: Index,
    config: CallbackConfig,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(ANSWER_WITHIN)
        .user_agent(concat!("edgerec/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the callback HTTP client; callbacks stay queued");
            return;
        }
    };
    loop {
        let idx = index.clone();
        let due = tokio::task::spawn_blocking(move || due_callbacks(&idx, now_ms())).await;
        match due {
            Ok(Ok(rows)) => {
                for row in rows {
                    if cancel.is_cancelled() {
                        return;
                    }
                    deliver(&index, &config, &http, row).await;
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "callback outbox"),
            Err(_) => return,
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = wake.notified() => {}
        }
    }
}

fn due_callbacks(index: &Index, now: i64) -> Result<Vec<CallbackRow>, IndexError> {
    Ok(index
        .pending_callbacks()?
        .into_iter()
        .filter(|c| c.state == CallbackState::Pending && c.next_attempt_ms <= now)
        .collect())
}

async fn deliver(
    index: &Index,
    config: &CallbackConfig,
    http: &reqwest::Client,
    mut row: CallbackRow,
) {
    let t = now_ms() / 1000 + SIGN_VALID_S;
    let mut body = row.body.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("t".into(), json!(t));
        obj.insert("sign".into(), json!(sign(&config.key.0, t)));
    }
    row.attempts += 1;
    let body = body.to_string();
    let result = http
        .post(&row.url)
        .header("Idempotency-Key", &row.id)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            "X-Edgerec-Signature",
            crate::auth::body_signature(&config.key.0, t, body.as_bytes()),
        )
        .body(body)
        .send()
        .await;
    let now = now_ms();
    match result {
        Ok(r) if r.status() == reqwest::StatusCode::OK => {
            row.state = CallbackState::Delivered;
            row.delivered_ms = Some(now);
            row.last_error = None;
            tracing::info!(recording = %row.id, attempts = row.attempts, "callback delivered");
        }
        other => {
            let error = match other {
                Ok(r) => format!("receiver answered {}", r.status()),
                Err(e) if e.is_timeout() => {
                    format!("no answer within {}s", ANSWER_WITHIN.as_secs())
                }
                Err(e) => format!(
                    "cannot reach the receiver: {}",
                    crate::upload::s3::deepest_source(&e).unwrap_or_else(|| e.to_string())
                ),
            };
            if row.attempts >= config.max_attempts {
                row.state = CallbackState::Failed;
                tracing::error!(recording = %row.id, attempts = row.attempts, %error, "callback failed for good; retry it from the API");
            } else {
                row.next_attempt_ms = now + config.retry_interval_s as i64 * 1000;
                tracing::warn!(recording = %row.id, attempts = row.attempts, %error, retry_in_s = config.retry_interval_s, "callback not delivered");
            }
            row.last_error = Some(error);
        }
    }
    let idx = index.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = idx.put_callback(&row) {
            tracing::error!(error = %e, "cannot store the callback state");
        }
    })
    .await;
}

/// One callback as `GET /api/v1/callbacks` shows it.
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct CallbackView {
    pub id: String,
    pub recording_id: String,
    pub url: String,
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub body: Value,
}

impl CallbackView {
    pub fn new(row: &CallbackRow) -> CallbackView {
        CallbackView {
            id: row.id.clone(),
            recording_id: row.id.clone(),
            url: row.url.clone(),
            state: row.state.as_str(),
            attempts: row.attempts,
            last_error: row.last_error.clone(),
            next_attempt: (row.state == CallbackState::Pending)
                .then(|| crate::clock::rfc3339(row.next_attempt_ms)),
            created_at: crate::clock::rfc3339(row.created_ms),
            delivered_at: row.delivered_ms.map(crate::clock::rfc3339),
            body: row.body.clone(),
        }
    }
}

/// Puts a callback back in line now (`POST /api/v1/callbacks/{id}/retry`).
pub fn retry(index: &Index, id: &str) -> Result<Option<CallbackRow>, IndexError> {
    let Some(mut row) = index.get_callback(id)? else {
        return Ok(None);
    };
    if row.state != CallbackState::Delivered {
        row.state = CallbackState::Pending;
        row.attempts = 0;
        row.next_attempt_ms = 0;
        index.put_callback(&row)?;
    }
    Ok(Some(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_published_vector() {
        assert_eq!(
            sign("abc123", 1_506_309_357),
            "39a8c16852c3733c9d0402a8257aba35"
        );
    }
}
