//! The API's HTTP/1.1 connection loop, in place of `axum::serve`: that one gives hyper no
//! timer, so hyper's header-read timeout never fires and a client that sends half a
//! request holds its connection forever. Here every connection takes a slot of
//! `[http] max_connections` (more are closed at accept, with a log line), must finish each
//! request head within [`HEADER_TIMEOUT`], and is shut down gracefully (the request in
//! progress finishes) when the server stops.

use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client must send a whole request head within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in progress get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `cancel`, at most `max_connections` at once.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    max_connections: usize,
    cancel: CancellationToken,
) where
    L: Listener<Addr = std::net::SocketAddr>,
{
    let slots = std::sync::Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = max_connections, "http connection refused: too many connections");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}
