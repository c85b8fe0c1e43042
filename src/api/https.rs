//! HTTPS for the API: an [`Incoming`] whose `accept` yields finished TLS streams, each
//! with the connection slot it took at its TCP accept (so a peer's half-done handshakes
//! count against its share too). TCP accepts happen in one task; each TLS handshake runs in its own task,
//! bounded by [`HANDSHAKE_TIMEOUT`] and [`MAX_HANDSHAKES`], and finished streams reach axum
//! through a bounded channel, so a client that stalls mid-handshake cannot stall accept.
//!
//! Each handshake takes the certificate current at its accept (`tls::ServerTls`), so a
//! SIGHUP reload applies to new connections only. Never sees HTTP: axum does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::server::{accept_tcp, take_slot, Incoming};
use crate::ingest::slots::{ConnectionSlots, Slot};
use crate::tls::ServerTls;

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; connections past it are closed at accept.
pub const MAX_HANDSHAKES: usize = 64;
/// Finished handshakes waiting for axum to take them.
const READY_QUEUE: usize = 16;

/// The HTTPS listener handed to [`super::server::serve`].
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr, Slot)>,
}

impl TlsListener {
    /// Starts accepting on `listener` until `cancel` (or until the listener is dropped).
    pub fn new(
        listener: TcpListener,
        tls: Arc<ServerTls>,
        slots: ConnectionSlots,
        cancel: CancellationToken,
    ) -> TlsListener {
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(listener, tls, slots, tx, cancel));
        TlsListener { ready }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    slots: ConnectionSlots,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr, Slot)>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (socket, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ready.closed() => return,
            a = accept_tcp(&listener, "https") => match a {
                Some(v) => v,
                None => continue,
            },
        };
        let Some(slot) = take_slot(&slots, peer, "https") else {
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_HANDSHAKES, "https connection refused: too many TLS handshakes in progress");
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let (ready, cancel) = (ready.clone(), cancel.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket));
            let done = tokio::select! {
                _ = cancel.cancelled() => return,
                r = handshake => r,
            };
            drop(permit);
            match done {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer, slot)).await;
                }
                Ok(Err(e)) => tracing::warn!(%peer, reason = %e, "https TLS handshake failed"),
                Err(_) => {
                    tracing::warn!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "https TLS handshake timed out")
                }
            }
        });
    }
}

impl Incoming for TlsListener {
    type Io = TlsStream<TcpStream>;

    async fn accept(&mut self) -> (Self::Io, SocketAddr, Slot) {
        match self.ready.recv().await {
            Some(v) => v,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }
}
