//! The access layer: sockets in, `Service` calls, frames out.
//!
//! Layout:
//! - [`config`]: [`GatewayConfig`], every connection limit.
//! - [`admission`]: overload control by priority, per-user and per-IP rate
//!   limits.
//! - [`metrics`]: what the access layer counts and times (Prometheus
//!   names), recorded once at dispatch rather than in each handler.
//! - [`registry`]: [`Registry`], the online devices by user; it implements
//!   `pigeon_core::Notifier`, turning committed events into pushes.
//! - [`connection`]: one connection's life: handshake, auth, dispatch,
//!   heartbeats and idle timeout, pushes, bounded outbound queue, drain.
//! - [`transport`]: framing over byte streams (TCP or TLS, length-prefixed)
//!   and WebSocket (one binary message per frame), polled by the
//!   connection's one task.
//! - [`websocket`]: the WebSocket upgrade handshake and framing (RFC 6455,
//!   server side).
//! - [`Gateway`] (here): accept loops (plain TCP and TLS), the connection
//!   cap and shutdown.
//!
//! Boundary: the gateway knows framing and sockets and nothing about
//! storage; it reaches state only through `pigeon_core::Service`.

pub mod admission;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod registry;
pub mod transport;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pigeon_core::Service;
use pigeon_proto::{ErrorCode, Frame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

pub use config::GatewayConfig;
pub use registry::{Registry, RegistryObserver};

/// Gives the URLs a draining node's clients are sent to, when none are
/// configured (in a cluster: the other live nodes, least loaded first).
pub type RedirectSource = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Shared by every connection of one server.
pub struct Gateway {
    service: Arc<Service>,
    registry: Arc<Registry>,
    config: GatewayConfig,
    connections: Arc<Semaphore>,
    admission: admission::Admission,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    /// Wakes every connection when shutdown begins (smaller to wait on in
    /// each connection than a watch receiver).
    stopping: tokio::sync::Notify,
    redirects: std::sync::OnceLock<RedirectSource>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over `service`, pushing through `registry` (which must be
    /// the notifier the service was built with).
    pub fn new(
        service: Arc<Service>,
        registry: Arc<Registry>,
        config: GatewayConfig,
    ) -> Arc<Gateway> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        Arc::new(Gateway {
            connections: Arc::new(Semaphore::new(config.connections_max)),
            admission: admission::Admission::new(config.admission.clone()),
            service,
            registry,
            config,
            shutdown_tx,
            shutdown_rx,
            stopping: tokio::sync::Notify::new(),
            redirects: std::sync::OnceLock::new(),
        })
    }

    /// Sets where draining clients are redirected when `redirect_to` is not
    /// configured (once; later calls are ignored).
    pub fn set_redirect_source(&self, source: RedirectSource) {
        let _ = self.redirects.set(source);
    }

    /// Where a draining node's clients are told to go.
    pub(crate) fn redirect_to(&self) -> Vec<String> {
        if !self.config.redirect_to.is_empty() {
            return self.config.redirect_to.clone();
        }
        self.redirects.get().map(|f| f()).unwrap_or_default()
    }

    /// The limits in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.config.connections_max - self.connections.available_permits()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_rx.borrow()
    }

    /// Accepts TCP connections until shutdown.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, None).await
    }

    /// Accepts TLS connections until shutdown; inside TLS the framing is
    /// the same as on plain TCP. Each TLS handshake runs in its
    /// connection's own task, so a slow or failed one holds up no one else,
    /// and it counts against `handshake_timeout` together with the Hello.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, tls: TlsAcceptor) {
        self.accept_loop(listener, Some(tls)).await
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        let mut shutdown = self.shutdown_rx.clone();
        loop {
            let accepted = tokio::select! {
                _ = stopped(&mut shutdown) => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            self.clone().open(stream, peer, tls.as_ref());
        }
    }

    /// Starts one accepted connection in a task of its own: the TLS
    /// handshake if any, then the protocol, or a `BUSY` goodbye.
    fn open(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, tls: Option<&TlsAcceptor>) {
        let accepted = Instant::now();
        let max = self.config.frame_bytes_max;
        // Past its address's connection rate: refused before any handshake
        // work (on TLS without a word, as nothing can be said yet).
        if let Err(wait) = self.admission.ip_connection(peer.ip()) {
            if tls.is_none() {
                let mut bye = Frame::goodbye(
                    ErrorCode::Busy,
                    "too many new connections from your address",
                );
                if let Some(pigeon_proto::Body::Goodbye(g)) = &mut bye.body {
                    g.retry_after_ms = wait;
                }
                tokio::spawn(connection::refuse(transport::tcp(stream, max), bye));
            }
            return;
        }
        // Taken before the TLS handshake, so handshakes in progress count
        // under the connection cap too.
        let permit = self.connections.clone().try_acquire_owned().ok();
        match tls {
            None => self.start(transport::tcp(stream, max), peer, permit, accepted),
            Some(acceptor) => {
                tokio::spawn(self.tls_handshake(acceptor.clone(), stream, peer, permit, accepted));
            }
        }
    }

    /// Runs a TLS handshake, then starts the connection inside it. A task
    /// of its own, which ends with the handshake: the connection's task
    /// then holds none of the handshake's state.
    async fn tls_handshake(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Option<OwnedSemaphorePermit>,
        accepted: Instant,
    ) {
        let deadline = accepted + self.config.handshake_timeout;
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(session)) => {
                let transport = transport::stream(session, self.config.frame_bytes_max);
                self.start(transport, peer, permit, accepted);
            }
            Ok(Err(e)) => {
                // Scanners and plain-TCP clients end here: not worth a warning.
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                crate::metrics::tls_handshake_failed("tcp", false);
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                crate::metrics::tls_handshake_failed("tcp", true);
            }
        }
    }

    /// Spawns the connection's task, or, with no place under the connection
    /// cap, one that says `BUSY` and closes.
    fn start(
        self: Arc<Self>,
        transport: Box<dyn transport::Transport>,
        peer: SocketAddr,
        permit: Option<OwnedSemaphorePermit>,
        accepted: Instant,
    ) {
        match permit {
            Some(permit) => {
                tokio::spawn(connection::run(
                    self,
                    transport,
                    peer.to_string(),
                    permit,
                    accepted,
                ));
            }
            None => {
                tokio::spawn(connection::refuse(
                    transport,
                    Frame::goodbye(ErrorCode::Busy, "server is at its connection limit"),
                ));
            }
        }
    }

    /// Runs one connection over a byte stream accepted elsewhere, with the
    /// TCP framing (length-prefixed frames), under the same connection cap,
    /// handshake timeout and per-address limit as [`Gateway::serve_tcp`].
    /// For transports this crate does not accept itself, such as the
    /// simulated network of `pigeon-sim`.
    pub async fn serve_stream<S>(self: Arc<Self>, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let accepted = Instant::now();
        let transport = transport::stream(stream, self.config.frame_bytes_max);
        if self.admission.ip_connection(peer.ip()).is_err() {
            let bye = Frame::goodbye(
                ErrorCode::Busy,
                "too many new connections from your address",
            );
            return connection::refuse(transport, bye).await;
        }
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                connection::run(self, transport, peer.to_string(), permit, accepted).await
            }
            Err(_) => {
                let bye = Frame::goodbye(ErrorCode::Busy, "server is at its connection limit");
                connection::refuse(transport, bye).await
            }
        }
    }

    /// Upgrades an HTTP request on `/ws` to a protocol connection: answers
    /// `101 Switching Protocols` (or why not) and, once the HTTP connection
    /// is handed over, runs the protocol over it in a task of its own.
    pub fn upgrade_websocket(self: Arc<Self>, mut request: Request, peer: String) -> Response {
        let key =
            match websocket::upgrade_key(request.method(), request.version(), request.headers()) {
                Ok(key) => websocket::accept_key(key.as_bytes()),
                Err(refusal) => return refusal.into_response(),
            };
        if self.is_shutting_down() {
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
        }
        if let Some(ip) = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
            && let Err(wait) = self.admission.ip_connection(ip)
        {
            let retry = [(header::RETRY_AFTER, wait.div_ceil(1000).max(1).to_string())];
            return (
                StatusCode::TOO_MANY_REQUESTS,
                retry,
                "too many new connections from your address",
            )
                .into_response();
        }
        let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
            return (
                StatusCode::UPGRADE_REQUIRED,
                "this HTTP connection cannot be upgraded",
            )
                .into_response();
        };
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
        };
        // Waits for the HTTP connection to be handed over (after the answer
        // below is written), then starts the connection in a task that holds
        // nothing of the upgrade's state.
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let max = self.config.frame_bytes_max;
                    let transport = transport::websocket(TokioIo::new(upgraded), max);
                    tokio::spawn(connection::run(
                        self,
                        transport,
                        peer,
                        permit,
                        Instant::now(),
                    ));
                }
                Err(e) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, "upgrade".to_string()),
                (header::UPGRADE, "websocket".to_string()),
                (header::SEC_WEBSOCKET_ACCEPT, key),
            ],
        )
            .into_response()
    }

    /// Begins shutdown: stop accepting, tell every connection to finish its
    /// in-flight requests and say goodbye. Resolves when all connections
    /// have closed or `grace` has passed.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown_tx.send(true);
        self.stopping.notify_waiters();
        let all = self.config.connections_max as u32;
        let _ = tokio::time::timeout(grace, self.connections.acquire_many(all)).await;
    }
}

/// Resolves once shutdown has begun.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
