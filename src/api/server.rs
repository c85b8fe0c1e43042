//! The API's HTTP/1.1 connection loop, in place of `axum::serve`: that one gives hyper no
//! timer, so hyper's header-read timeout never fires and a client that sends half a
//! request holds its connection forever. Here every connection holds a slot of the API's
//! [`ConnectionSlots`] from its TCP accept (before any TLS handshake) to its close:
//! `[http] max_connections` in all and `max_connections_per_ip` from one address (more are
//! closed at accept, with a log line), so one host cannot lock the page and the scraper
//! out. Each request head must arrive within [`HEADER_TIMEOUT`]; at shutdown the request
//! in progress finishes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ingest::slots::{ConnectionSlots, Slot};

/// A client must send a whole request head within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in progress get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connections ready for HTTP, each with the slot it took at its TCP accept.
pub trait Incoming: Send {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection; waits forever once there will be none.
    fn accept(&mut self) -> impl Future<Output = (Self::Io, SocketAddr, Slot)> + Send;
}

/// Plain HTTP: a TCP listener whose connections take their slot at accept.
pub struct PlainListener {
    listener: TcpListener,
    slots: ConnectionSlots,
}

impl PlainListener {
    pub fn new(listener: TcpListener, slots: ConnectionSlots) -> PlainListener {
        PlainListener { listener, slots }
    }
}

impl Incoming for PlainListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            let Some((socket, peer)) = accept_tcp(&self.listener, "http").await else {
                continue;
            };
            if let Some(slot) = take_slot(&self.slots, peer, "http") {
                return (socket, peer, slot);
            }
        }
    }
}

/// One TCP accept; `None` after a failed accept (EMFILE and friends), having backed off
/// instead of spinning.
pub async fn accept_tcp(listener: &TcpListener, what: &str) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            tracing::warn!(error = %e, "{what} accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// A slot for a connection from `peer`, or `None` (logged: the connection is closed).
pub fn take_slot(slots: &ConnectionSlots, peer: SocketAddr, what: &str) -> Option<Slot> {
    match slots.try_take(peer.ip()) {
        Ok(slot) => Some(slot),
        Err(why) => {
            tracing::warn!(%peer, "{what} connection refused: {why}");
            None
        }
    }
}

/// Serves `router` to what `incoming` accepts until `cancel`.
pub async fn serve<I: Incoming>(mut incoming: I, router: Router, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (io, peer, slot) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = incoming.accept() => accepted,
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
    drop(incoming);
    tracker.close();
    tracker.wait().await;
}
