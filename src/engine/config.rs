//! Configuration of the reference engine (`flowgate engine`).
//!
//! LLM endpoint: by default `llm_text` uses the offline scripted model (`--llm-tokens`,
//! `--llm-token-delay`). With `--llm-base-url https://host/v1` (or `http://`) it streams from an
//! OpenAI-compatible `POST {base}/chat/completions` instead (see [`super::openai`]). The API key
//! is never a flag: `--llm-api-key-env` names the environment variable that holds it, read once
//! when the flags are parsed, and the key is kept in a [`Secret`] that never prints.
//!
//! Outbound `https://` (the endpoint, `rest_api`) trusts the system's roots plus `--ca-file`;
//! the file is read when the engine starts ([`super::outbound`]), and an unusable one stops it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use super::fault::Fault;
use crate::secret::Secret;

fn rfc3339(s: &str) -> Result<DateTime<FixedOffset>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s)
}

/// The environment variable that holds the LLM API key, and the key read from it at startup.
/// `Debug` shows the name and whether a key was found, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyEnv {
    name: String,
    key: Option<Secret>,
}

impl ApiKeyEnv {
    /// The variable `name`, not read (tests and `for_tests` never touch the environment).
    pub fn unread(name: impl Into<String>) -> ApiKeyEnv {
        ApiKeyEnv {
            name: name.into(),
            key: None,
        }
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key read from the variable, when it was set and not empty.
    pub fn key(&self) -> Option<&Secret> {
        self.key.as_ref()
    }
}

impl fmt::Debug for ApiKeyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyEnv")
            .field("name", &self.name)
            .field("key_set", &self.key.is_some())
            .finish()
    }
}

/// Parse `--llm-api-key-env`: validate the name and read the variable (this runs at startup).
fn api_key_env(name: &str) -> Result<ApiKeyEnv, String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!("'{name}' is not an environment variable name"));
    }
    let key = std::env::var(name)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .map(|k| Secret::new(k.trim()));
    Ok(ApiKeyEnv {
        name: name.to_owned(),
        key,
    })
}

/// The OpenAI-compatible endpoint behind `llm_text` (see [`super::openai`]); flattened into
/// [`EngineConfig`]. The default (no `base_url`) keeps the scripted model.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmEndpointConfig {
    /// OpenAI-compatible endpoint for `llm_text` (e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8080/v1`; the engine posts to `{base}/chat/completions` with
    /// `stream: true`). `https://` certificates are checked against the system's roots and
    /// `--ca-file`. Unset: the scripted model is used.
    #[arg(long = "llm-base-url", value_name = "URL", env = "FLOWGATE_ENGINE_LLM_BASE_URL", value_parser = super::target::base_url)]
    pub base_url: Option<String>,

    /// Name of the environment variable holding the endpoint's API key (sent as
    /// `Authorization: Bearer`), read at startup; the key itself is never a flag and never
    /// logged. When the variable is unset or empty no `Authorization` header is sent.
    #[arg(
        long = "llm-api-key-env",
        value_name = "VAR",
        env = "FLOWGATE_ENGINE_LLM_API_KEY_ENV",
        default_value = "OPENAI_API_KEY",
        value_parser = api_key_env
    )]
    pub api_key_env: ApiKeyEnv,

    /// The API key itself, for in-process use (tests); not a flag. When set it wins over the
    /// variable named by `--llm-api-key-env`.
    #[arg(skip)]
    pub api_key: Option<Secret>,

    /// Bound of each wait on the LLM endpoint: connecting (TCP and TLS), the response header
    /// (at most twice this from the start of the request), and the gap between two pieces of
    /// the stream. Exceeding it is an element error.
    #[arg(long = "llm-timeout", env = "FLOWGATE_ENGINE_LLM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Largest `llm_output` (bytes) an endpoint may stream; more is an element error.
    #[arg(long = "llm-max-output-bytes", env = "FLOWGATE_ENGINE_LLM_MAX_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub max_output_bytes: usize,

    /// Longest line (bytes) read from the endpoint: the response header (all of it), each
    /// stream line and an error body; longer is an element error.
    #[arg(long = "llm-max-line-bytes", env = "FLOWGATE_ENGINE_LLM_MAX_LINE_BYTES", default_value_t = 64 * 1024)]
    pub max_line_bytes: usize,
}

impl LlmEndpointConfig {
    /// The API key: `api_key` if set, else the one read from the variable named by
    /// `--llm-api-key-env`.
    pub fn key(&self) -> Option<&Secret> {
        self.api_key.as_ref().or(self.api_key_env.key())
    }
}

impl Default for LlmEndpointConfig {
    /// The flags' defaults, without reading the environment: no endpoint, no key.
    fn default() -> LlmEndpointConfig {
        LlmEndpointConfig {
            base_url: None,
            api_key_env: ApiKeyEnv::unread("OPENAI_API_KEY"),
            api_key: None,
            timeout: Duration::from_secs(60),
            max_output_bytes: 1024 * 1024,
            max_line_bytes: 64 * 1024,
        }
    }
}

/// Reference engine settings. Every field is a flag with an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineConfig {
    /// Address the engine listens on.
    #[arg(
        long = "listen",
        env = "FLOWGATE_ENGINE_LISTEN",
        default_value = "127.0.0.1:8001"
    )]
    pub listen: SocketAddr,

    /// Serve `wss://` with this certificate chain (PEM; the server's certificate first), so
    /// gateways on other hosts reach the engine over TLS. Needs --tls-key.
    #[arg(
        long,
        env = "FLOWGATE_ENGINE_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, RSA or EC) of --tls-cert.
    #[arg(
        long,
        env = "FLOWGATE_ENGINE_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Shared key (HS256) that gateways sign their engine-hop token with. When set, connections
    /// without a valid `Authorization: Bearer` token are refused with 401.
    #[arg(long, env = "FLOWGATE_ENGINE_KEY", hide_env_values = true)]
    pub engine_key: Option<Secret>,

    /// Number of `llm_chunk` events the scripted model streams per `llm_text` element.
    #[arg(long, env = "FLOWGATE_ENGINE_LLM_TOKENS", default_value_t = 12)]
    pub llm_tokens: usize,

    /// Delay between two scripted `llm_chunk` events.
    #[arg(long, env = "FLOWGATE_ENGINE_LLM_TOKEN_DELAY", default_value = "40ms", value_parser = humantime::parse_duration)]
    pub llm_token_delay: Duration,

    /// Model used when an LLM element sets no `model` parameter: reported in `llm_prompt` and,
    /// with `--llm-base-url`, sent to the endpoint.
    #[arg(
        long,
        env = "FLOWGATE_ENGINE_LLM_MODEL",
        default_value = "flowgate-scripted"
    )]
    pub llm_model: String,

    // The OpenAI-compatible endpoint (`--llm-base-url` and friends), boxed: it is large and
    // rarely read.
    #[command(flatten)]
    pub llm_endpoint: Box<LlmEndpointConfig>,

    /// WebSocket read buffer per gateway connection, in bytes (tungstenite's 128 KiB default is
    /// zero-filled before every read; larger frames are still read, in several steps).
    #[arg(
        long,
        env = "FLOWGATE_ENGINE_WS_READ_BUFFER_BYTES",
        default_value_t = 2048
    )]
    pub ws_read_buffer_bytes: usize,

    /// Largest frame the engine accepts from a gateway (bytes).
    #[arg(long, env = "FLOWGATE_ENGINE_MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Time allowed for each handshake step from the gateway.
    #[arg(long, env = "FLOWGATE_ENGINE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Time allowed for writing one frame to the gateway; a slower gateway loses the run.
    #[arg(long, env = "FLOWGATE_ENGINE_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// After sending its close frame, how long the engine waits for the gateway's close reply.
    #[arg(long, env = "FLOWGATE_ENGINE_CLOSE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,

    /// Events buffered between the executor and the socket writer of one run.
    #[arg(long, env = "FLOWGATE_ENGINE_EVENT_BUFFER", default_value_t = 64)]
    pub event_buffer: usize,

    /// Largest number of elements a flow definition may have.
    #[arg(long, env = "FLOWGATE_ENGINE_MAX_ELEMENTS", default_value_t = 500)]
    pub max_elements: usize,

    /// On shutdown, how long running flows get before their sockets are dropped.
    #[arg(long, env = "FLOWGATE_ENGINE_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Inject a failure into every run (gateway fault tests): `crash-after=N`, `stall-after=N`,
    /// `non-json-after=N`, `oversize-after=N`, `no-close`, `refuse-handshake`, `bad-handshake`.
    /// A flow's start element can set the same spec in its `fault` parameter when
    /// `--allow-flow-faults` is on.
    #[arg(long, env = "FLOWGATE_ENGINE_FAULT")]
    pub fault: Option<Fault>,

    /// Honour a flow's `fault` parameter on its start element (tests only: otherwise any stored
    /// workflow could make the engine crash or stall its runs on purpose).
    #[arg(long, env = "FLOWGATE_ENGINE_ALLOW_FLOW_FAULTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_flow_faults: bool,

    /// Size in bytes of the frame sent by the `oversize-after=N` fault.
    #[arg(long, env = "FLOWGATE_ENGINE_FAULT_OVERSIZE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub fault_oversize_bytes: usize,

    /// Seed for `random_generator` elements that set no `seed` parameter; unset means random.
    #[arg(long, env = "FLOWGATE_ENGINE_SEED")]
    pub seed: Option<u64>,

    /// A fixed clock (RFC 3339) for `time` elements, for tests; unset means the real clock.
    #[arg(long, env = "FLOWGATE_ENGINE_FIXED_TIME", value_parser = rfc3339)]
    pub fixed_time: Option<DateTime<FixedOffset>>,

    /// Hosts (`host:port`, comma separated) that `rest_api` elements may call over `http://` or
    /// `https://`; a bare `host` means the URL's default port only (80 for `http://`, 443 for
    /// `https://`). Redirects are never followed. Empty (the default) blocks every call.
    #[arg(long, env = "FLOWGATE_ENGINE_REST_ALLOW_HOSTS", value_delimiter = ',')]
    pub rest_allow_hosts: Vec<String>,

    /// Upper bound of a `rest_api` call (its `timeout` parameter can only shorten it).
    #[arg(long, env = "FLOWGATE_ENGINE_REST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rest_timeout: Duration,

    /// Largest `rest_api` response read (bytes, headers included); a larger one is an element
    /// error.
    #[arg(long, env = "FLOWGATE_ENGINE_REST_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub rest_max_response_bytes: usize,

    /// Extra trusted CA certificates (PEM) for outbound https:// (the model endpoint, rest_api).
    #[arg(long = "ca-file", value_name = "PATH", env = "FLOWGATE_ENGINE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl EngineConfig {
    /// A configuration for tests: port 0, fast scripted model, no key, no fault.
    pub fn for_tests() -> EngineConfig {
        EngineConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            tls_cert: None,
            tls_key: None,
            engine_key: None,
            llm_tokens: 5,
            llm_token_delay: Duration::from_millis(5),
            llm_model: "flowgate-scripted".into(),
            llm_endpoint: Box::default(),
            ws_read_buffer_bytes: 2048,
            max_frame_bytes: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            event_buffer: 64,
            max_elements: 500,
            shutdown_grace: Duration::from_secs(5),
            fault: None,
            fault_oversize_bytes: 8 * 1024 * 1024,
            allow_flow_faults: true,
            seed: None,
            fixed_time: None,
            rest_allow_hosts: Vec::new(),
            rest_timeout: Duration::from_secs(10),
            rest_max_response_bytes: 1024 * 1024,
            ca_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        llm: LlmEndpointConfig,
    }

    #[test]
    fn endpoint_defaults_match_the_flag_defaults_and_https_is_accepted() {
        let parsed = Cli::try_parse_from(["engine"]).unwrap().llm;
        let default = LlmEndpointConfig::default();
        assert_eq!(parsed.api_key_env.name(), default.api_key_env.name());
        assert_eq!(parsed.timeout, default.timeout);
        assert_eq!(parsed.max_output_bytes, default.max_output_bytes);
        assert_eq!(parsed.max_line_bytes, default.max_line_bytes);
        let https = Cli::try_parse_from(["engine", "--llm-base-url", "https://api.example.com/v1"])
            .expect("https is accepted")
            .llm;
        assert_eq!(
            https.base_url.as_deref(),
            Some("https://api.example.com/v1")
        );
        let err = Cli::try_parse_from(["engine", "--llm-base-url", "https://u:p@h/v1"])
            .err()
            .expect("user info is refused")
            .to_string();
        assert!(err.contains("no usable host"), "{err}");
        let with_key = ApiKeyEnv {
            name: "K".into(),
            key: Some(Secret::new("sk-live-123")),
        };
        assert!(!format!("{with_key:?}").contains("sk-live-123"));
    }
}
