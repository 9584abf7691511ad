//! TLS for both listeners: the certificate chain and key named by the
//! `tls_cert` and `tls_key` config keys, and the HTTP router served over
//! TLS (HTTPS, so WebSocket clients use `wss://`).
//!
//! The protocol listener's TLS lives in the gateway (`Gateway::serve_tls`);
//! this module only builds its acceptor. HTTPS is served here because only
//! the server knows HTTP routes: each connection gets its own task, which
//! runs the TLS handshake (bounded by the handshake timeout, so a stalled or
//! failed handshake holds up no one else) and then hyper's HTTP/1 connection
//! with upgrades, the same as `axum::serve` does on the plain port.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Layer;

/// The acceptors of the two listeners, sharing one certificate and key.
#[derive(Clone)]
pub(crate) struct Acceptors {
    /// The protocol listener (length-prefixed frames inside TLS).
    pub(crate) protocol: TlsAcceptor,
    /// The HTTP listener; offers ALPN `http/1.1`.
    pub(crate) http: TlsAcceptor,
}

/// Loads the PEM certificate chain (leaf first) and private key, and checks
/// that they belong together.
pub(crate) fn load(cert: &Path, key: &Path) -> anyhow::Result<Acceptors> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "reading the TLS certificate chain (tls_cert) {}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "tls_cert {}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        );
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS private key (tls_key) {}", key.display()))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .with_context(|| {
            format!(
                "tls_cert {} and tls_key {} cannot be used together",
                cert.display(),
                key.display()
            )
        })?;
    let mut http = config.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Acceptors {
        protocol: TlsAcceptor::from(Arc::new(config)),
        http: TlsAcceptor::from(Arc::new(http)),
    })
}

/// Serves `app` over TLS until `stop` turns true, then stops accepting,
/// lets each connection finish its current request (as `axum::serve`'s
/// graceful shutdown does) and returns once all have closed. Upgraded
/// WebSocket connections are the gateway's to drain.
pub(crate) async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
) {
    // Every connection task holds a receiver; `closed()` resolves when the
    // last one is gone.
    let (all_closed_tx, all_closed_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            acceptor.clone(),
            app.clone(),
            stop.clone(),
            handshake_timeout,
            all_closed_rx.clone(),
        ));
    }
    drop(all_closed_rx);
    drop(listener);
    all_closed_tx.closed().await;
}

/// One HTTPS connection: the TLS handshake, then HTTP/1 until the peer
/// closes, the connection is upgraded, or shutdown.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
    _open: watch::Receiver<()>,
) {
    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
    let tls = tokio::select! {
        _ = stopped(&mut stop) => return,
        h = handshake => match h {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTPS: TLS handshake failed");
                pigeon_gateway::metrics::tls_handshake_failed("http", false);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTPS: TLS handshake timed out");
                pigeon_gateway::metrics::tls_handshake_failed("http", true);
                return;
            }
        },
    };
    // The same extension `into_make_service_with_connect_info` adds on the
    // plain port, so `/ws` sees the peer address either way.
    let service = TowerToHyperService::new(axum::Extension(ConnectInfo(peer)).layer(app));
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades()
    );
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Checks a matching certificate and key load, and that a missing file,
    /// a file without a certificate and a key of another certificate are
    /// refused with messages naming the config key.
    #[test]
    fn loads_matching_files_and_explains_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        std::fs::write(path("cert.pem"), &cert).unwrap();
        std::fs::write(path("key.pem"), &key).unwrap();
        std::fs::write(path("other-key.pem"), &other_key).unwrap();
        std::fs::write(path("empty.pem"), "").unwrap();

        load(&path("cert.pem"), &path("key.pem")).unwrap();
        let err = |cert: &str, key: &str| {
            let e = load(&path(cert), &path(key)).err().expect("refused");
            format!("{e:#}")
        };
        assert!(err("missing.pem", "key.pem").contains("tls_cert"));
        assert!(err("cert.pem", "missing.pem").contains("tls_key"));
        assert!(err("empty.pem", "key.pem").contains("no PEM certificate"));
        assert!(err("cert.pem", "cert.pem").contains("tls_key"));
        assert!(err("cert.pem", "other-key.pem").contains("cannot be used together"));
    }
}
