//! The engine's outbound HTTP: the reqwest clients behind `llm_text`'s endpoint
//! ([`super::openai`]) and `rest_api` ([`super::rest`]), built once when the engine starts
//! ([`Outbound::new`]) and shared by every run; and the reading of reqwest's errors both use.
//!
//! A well-kept client instead of hand-written HTTP/1.1: TLS, chunked bodies, keep-alive and
//! redirects are reqwest's (hyper's) job. Both clients speak `http://` and `https://`; a
//! server's certificate is verified against the system's roots plus the certificates of
//! `--ca-file` ([`crate::tls::client_config`], rustls on aws-lc-rs). A CA file that cannot be
//! used is a startup error naming the flag. A machine without any root certificate (no
//! `ca-certificates`) and no `--ca-file` still starts, with a warning: plain `http://` works and
//! every `https://` call fails on its certificate.
//!
//! Both clients ignore proxy variables (`HTTP_PROXY`, ...: a call goes where its URL says, the
//! host the allow-list checked) and follow no redirect (`rest_api` returns the 3xx response
//! itself, so a redirect can never reach a host outside `--rest-allow-hosts`; an LLM endpoint
//! that redirects is a status error). There are two clients only because reqwest's connect
//! timeout is per client: the LLM endpoint's connection is bounded by `--llm-timeout`, a
//! `rest_api` call as a whole by `--rest-timeout`.

use std::sync::Arc;

use super::config::EngineConfig;
use crate::tls::{TlsError, TlsTrust};

/// Why the outbound clients cannot be built (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("--ca-file (FLOWGATE_ENGINE_CA_FILE) is not usable: {0}")]
    CaFile(#[source] TlsError),
    #[error("the engine's HTTP client cannot be built: {0}")]
    Client(#[source] reqwest::Error),
}

/// The shared outbound clients. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// For the OpenAI-compatible endpoint: connecting bounded by `--llm-timeout`.
    pub llm: reqwest::Client,
    /// For `rest_api`.
    pub rest: reqwest::Client,
}

impl Outbound {
    /// Read the trust (system roots, `--ca-file`) and build both clients.
    pub fn new(config: &EngineConfig) -> Result<Outbound, OutboundError> {
        let trust = TlsTrust {
            ca_file: config.ca_file.clone(),
            insecure_skip_verify: false,
        };
        let tls = match crate::tls::client_config(&trust) {
            Ok(tls) => Arc::unwrap_or_clone(tls),
            Err(TlsError::NoRoots) if config.ca_file.is_none() => {
                tracing::warn!(
                    "no trusted root certificates on this machine (install ca-certificates, or \
                     give --ca-file): every https:// call of the engine will fail"
                );
                trust_nothing()
            }
            Err(e) => return Err(OutboundError::CaFile(e)),
        };
        let llm = builder(tls.clone())
            .connect_timeout(config.llm_endpoint.timeout)
            .build()
            .map_err(OutboundError::Client)?;
        let rest = builder(tls).build().map_err(OutboundError::Client)?;
        Ok(Outbound { llm, rest })
    }
}

fn builder(tls: rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("flowgate-engine")
}

/// A TLS configuration that trusts no certificate (a machine without roots and no CA file).
fn trust_nothing() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The innermost cause of `error` (`Connection refused (os error 111)` rather than reqwest's
/// `error sending request for url (...)`).
pub(super) fn root_cause(error: &reqwest::Error) -> String {
    crate::tls::chain(error)
        .last()
        .map(|e| e.to_string())
        .unwrap_or_else(|| error.to_string())
}

/// Approximate size of a response's header on the wire: the status line and every
/// `name: value` line.
pub(super) fn head_bytes(response: &reqwest::Response) -> usize {
    let status_line = "HTTP/1.1 200 OK\r\n".len();
    status_line
        + response
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_names_the_flag() {
        let config = EngineConfig {
            ca_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/no-such-ca.pem").into()),
            ..EngineConfig::for_tests()
        };
        let err = Outbound::new(&config).unwrap_err().to_string();
        assert!(err.contains("--ca-file"), "{err}");
        assert!(err.contains("no-such-ca.pem"), "{err}");
    }
}
