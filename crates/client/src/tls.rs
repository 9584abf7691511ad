//! TLS for `tls://` and `wss://`: which certificates are trusted, and TLS
//! errors turned into messages a person can act on.
//!
//! Server certificates are checked against the Mozilla roots compiled in by
//! `webpki-roots` (the same on every machine, and present in containers
//! without a system CA store), plus any CA the application passes as PEM
//! (`ConnectOptions::with_ca_pem`), for servers with a private CA. The name
//! checked is the URL's host.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ClientError;

/// What an application can do about an untrusted certificate.
const TRUST_HINT: &str =
    "if the server uses a private CA, trust it with ConnectOptions::with_ca_pem (pigeon --ca FILE)";

/// The client configuration: webpki roots plus the CAs in `extra_ca_pem`;
/// `alpn` is offered to the server (`http/1.1` for `wss://`).
pub(crate) fn client_config(
    extra_ca_pem: Option<&[u8]>,
    alpn: Option<&[u8]>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_ca_pem {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| ClientError::Tls(format!("the extra CA is not valid PEM: {e}")))?;
            roots.add(cert).map_err(|e| {
                ClientError::Tls(format!("the extra CA certificate cannot be used: {e}"))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(ClientError::Tls(
                "the extra CA holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
                    .into(),
            ));
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("no usable TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(protocol) = alpn {
        config.alpn_protocols = vec![protocol.to_vec()];
    }
    Ok(Arc::new(config))
}

/// The process's crypto provider if the application installed one, else
/// ring (the one this crate is built with). A library does not install a
/// process-wide default itself.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Runs the TLS handshake on `tcp`, checking the certificate against `name`.
pub(crate) async fn connect(
    tcp: TcpStream,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|_| ClientError::InvalidUrl(format!("{name:?} is not a valid TLS server name")))?;
    TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| handshake_error(e, name))
}

/// A TLS failure as a [`ClientError::Tls`] that says what went wrong;
/// socket errors stay [`ClientError::Io`].
fn handshake_error(e: std::io::Error, name: &str) -> ClientError {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
        return ClientError::Io(e);
    };
    let message = match tls {
        E::InvalidCertificate(C::UnknownIssuer) => {
            format!("the certificate of {name} is not signed by a trusted CA; {TRUST_HINT}")
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the certificate of {name} is not valid for that name ({tls})")
        }
        E::InvalidCertificate(_) => format!("the certificate of {name} was refused: {tls}"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
            "{name} did not answer with TLS ({tls}); is TLS on at that port, or did you mean tcp:// or ws://?"
        ),
        other => format!("TLS handshake with {name} failed: {other}"),
    };
    ClientError::Tls(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks an extra CA that is not a PEM certificate is refused with a
    /// TLS error, and that the default configuration builds.
    #[test]
    fn extra_ca_must_be_pem() {
        client_config(None, None).unwrap();
        for bad in [
            &b""[..],
            b"not pem",
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        ] {
            let err = client_config(Some(bad), None).unwrap_err();
            assert!(matches!(err, ClientError::Tls(_)), "{err}");
        }
    }
}
