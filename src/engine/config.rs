//! Configuration of the reference engine (`flowgate engine`).

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use super::fault::Fault;
use crate::config::Secret;

fn rfc3339(s: &str) -> Result<DateTime<FixedOffset>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s)
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

    /// Model name reported in `llm_prompt` when an LLM element sets no `model` parameter.
    #[arg(
        long,
        env = "FLOWGATE_ENGINE_LLM_MODEL",
        default_value = "flowgate-scripted"
    )]
    pub llm_model: String,

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
    /// A flow's start element can set the same spec in its `fault` parameter.
    #[arg(long, env = "FLOWGATE_ENGINE_FAULT")]
    pub fault: Option<Fault>,

    /// Size in bytes of the frame sent by the `oversize-after=N` fault.
    #[arg(long, env = "FLOWGATE_ENGINE_FAULT_OVERSIZE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub fault_oversize_bytes: usize,

    /// Seed for `random_generator` elements that set no `seed` parameter; unset means random.
    #[arg(long, env = "FLOWGATE_ENGINE_SEED")]
    pub seed: Option<u64>,

    /// A fixed clock (RFC 3339) for `time` elements, for tests; unset means the real clock.
    #[arg(long, env = "FLOWGATE_ENGINE_FIXED_TIME", value_parser = rfc3339)]
    pub fixed_time: Option<DateTime<FixedOffset>>,

    /// Hosts (`host` or `host:port`, comma separated) that `rest_api` elements may call over
    /// plain `http://`. Empty (the default) blocks every call.
    #[arg(long, env = "FLOWGATE_ENGINE_REST_ALLOW_HOSTS", value_delimiter = ',')]
    pub rest_allow_hosts: Vec<String>,

    /// Upper bound of a `rest_api` call (its `timeout` parameter can only shorten it).
    #[arg(long, env = "FLOWGATE_ENGINE_REST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rest_timeout: Duration,

    /// Largest `rest_api` response read (bytes, headers included); a larger one is an element
    /// error.
    #[arg(long, env = "FLOWGATE_ENGINE_REST_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub rest_max_response_bytes: usize,
}

impl EngineConfig {
    /// A configuration for tests: port 0, fast scripted model, no key, no fault.
    pub fn for_tests() -> EngineConfig {
        EngineConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            engine_key: None,
            llm_tokens: 5,
            llm_token_delay: Duration::from_millis(5),
            llm_model: "flowgate-scripted".into(),
            max_frame_bytes: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            event_buffer: 64,
            max_elements: 500,
            shutdown_grace: Duration::from_secs(5),
            fault: None,
            fault_oversize_bytes: 8 * 1024 * 1024,
            seed: None,
            fixed_time: None,
            rest_allow_hosts: Vec::new(),
            rest_timeout: Duration::from_secs(10),
            rest_max_response_bytes: 1024 * 1024,
        }
    }
}
