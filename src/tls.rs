//! TLS for outbound connections (the engine hop's `wss://`, a hop's `wss://` upstream, the
//! reference engine's `https://` model endpoint and `rest_api` calls): one rustls
//! [`ClientConfig`] on aws-lc-rs, trusting the system's roots (Debian's `ca-certificates`, read
//! by `rustls-native-certs`) plus, optionally, the certificates of one PEM file (a private CA).
//!
//! [`server_config`] and [`TlsListener`] are the other side: the reference engine serving
//! `wss://` itself (`flowgate engine --tls-cert --tls-key`).
//!
//! The insecure mode accepts any certificate; it exists for tests against a throwaway
//! certificate and is named so in every flag that turns it on, and the caller logs a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why the TLS settings cannot be used. The text names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} is not PEM: {reason}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} {path} holds no certificate (expected `-----BEGIN CERTIFICATE-----`)")]
    Empty { what: &'static str, path: PathBuf },
    #[error("a certificate in the CA file {path} is not usable as a root: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error(
        "the key file {path} holds no private key (expected `-----BEGIN PRIVATE KEY-----`, \
         `RSA PRIVATE KEY` or `EC PRIVATE KEY`): {reason}"
    )]
    Key { path: PathBuf, reason: String },
    #[error("the certificate {cert} and the key {key} cannot serve TLS together: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error(
        "no trusted root certificates: the system has none (install ca-certificates) and no CA \
         file was given"
    )]
    NoRoots,
}

/// Where trust comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsTrust {
    /// Extra trusted certificates (PEM), added to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (tests only).
    pub insecure_skip_verify: bool,
}

/// The client configuration for `trust`. Reads the system's roots and the CA file once: build it
/// at startup and share it.
pub fn client_config(trust: &TlsTrust) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions");
    let config = if trust.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(trust.ca_file.as_deref())?)
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    // Unreadable system certificates are skipped (as every rustls user does); none at all is an
    // error below unless a CA file is given.
    let native = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for cert in read_pem("CA file", path)? {
            store.add(cert).map_err(|e| TlsError::BadCert {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    if store.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(store)
}

/// What went wrong in a TLS handshake, when that is why a connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server's certificate was refused (unknown issuer, expired, wrong name, ...): why, in
    /// words.
    Certificate(String),
    /// Any other TLS failure (no common protocol, a plain-text server, ...).
    Other(String),
}

impl TlsProblem {
    /// The sentence for a failed connection to `who` (`the engine`, `127.0.0.1:8443`), naming
    /// the flag that takes a private CA.
    pub fn sentence(&self, who: &str, ca_flag: &str) -> String {
        match self {
            TlsProblem::Certificate(reason) => format!(
                "the TLS certificate of {who} is not trusted ({reason}); give its CA with {ca_flag}"
            ),
            TlsProblem::Other(reason) => format!("TLS with {who} failed: {reason}"),
        }
    }
}

/// The TLS failure behind `error`, found by walking its source chain down to rustls.
pub fn problem(error: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    chain(error).find_map(|e| {
        let e = e.downcast_ref::<rustls::Error>()?;
        Some(match e {
            rustls::Error::InvalidCertificate(c) => TlsProblem::Certificate(certificate_text(c)),
            other => TlsProblem::Other(other.to_string()),
        })
    })
}

/// Why a certificate was refused, in words (rustls prints some reasons as bare names).
fn certificate_text(error: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match error {
        C::UnknownIssuer => "it is signed by an unknown certificate authority".into(),
        C::BadSignature => "its signature does not verify".into(),
        C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not valid for the host name".into()
        }
        C::Revoked => "it has been revoked".into(),
        other => other.to_string(),
    }
}

/// `error` and its sources. `std::io::Error::source` skips the error it wraps (that is how
/// tokio-rustls reports a refused certificate); this steps into it.
pub fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}

/// The certificates of a PEM file (other sections, such as keys, are ignored).
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A server configuration from a certificate chain file and its private key file (PEM), for
/// HTTP/1.1 (the WebSocket upgrade).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain = read_pem("certificate file", cert)?;
    let bytes = std::fs::read(key).map_err(|source| TlsError::Read {
        what: "key file",
        path: key.to_owned(),
        source,
    })?;
    let private = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Most TLS handshakes a [`TlsListener`] runs at once; more connections wait in the kernel's
/// accept queue.
const MAX_HANDSHAKES: usize = 256;

/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// A listener for `axum::serve` that ends TLS: TCP connections are accepted and their
/// handshakes run in their own tasks (at most [`MAX_HANDSHAKES`] at once, each bounded by a
/// timeout), so a slow or silent client never holds up the others. Failed handshakes are
/// logged at debug level and dropped.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        mut tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        handshake_timeout: std::time::Duration,
    ) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(READY_QUEUE);
        let tls = tokio_rustls::TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                // axum's accept: retries (and logs) what a busy system refuses.
                let (stream, peer) = axum::serve::Listener::accept(&mut tcp).await;
                // Events are small and latency-bound: no Nagle delay.
                let _ = stream.set_nodelay(true);
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "no TLS handshake in time"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            addr,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task ended (it does not, short of a panic): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The verifier of the insecure mode: every certificate is accepted, signatures are still
/// checked (so the handshake is a real one).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let missing = TlsTrust {
            ca_file: Some("/nonexistent/ca.pem".into()),
            insecure_skip_verify: false,
        };
        let err = client_config(&missing).unwrap_err().to_string();
        assert!(
            err.contains("cannot read the CA file /nonexistent/ca.pem"),
            "{err}"
        );

        let dir = std::env::temp_dir().join(format!("flowgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&TlsTrust {
            ca_file: Some(empty.clone()),
            insecure_skip_verify: false,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_chain_steps_into_io_errors_down_to_rustls() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        let outer: Box<dyn std::error::Error + Send + Sync> = Box::new(io);
        assert_eq!(chain(outer.as_ref()).count(), 2);
        assert_eq!(
            problem(outer.as_ref()),
            Some(TlsProblem::Certificate(
                "it is signed by an unknown certificate authority".into()
            ))
        );
        let plain = std::io::Error::other("connection refused");
        assert_eq!(problem(&plain), None);
    }

    #[test]
    fn the_system_roots_load() {
        // The machines have Debian's ca-certificates; without a CA file these are the roots.
        client_config(&TlsTrust::default()).unwrap();
        client_config(&TlsTrust {
            ca_file: None,
            insecure_skip_verify: true,
        })
        .unwrap();
    }
}
