//! Configuration of the reference engine (`flowgate engine`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Secret;

/// Reference engine settings. Every field is a flag with an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineConfig {
    /// Address the engine listens on.
    #[arg(long = "listen", env = "FLOWGATE_ENGINE_LISTEN", default_value = "127.0.0.1:8001")]
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

    /// Largest frame the engine accepts from a gateway (bytes).
    #[arg(long, env = "FLOWGATE_ENGINE_MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Time allowed for each handshake step from the gateway.
    #[arg(long, env = "FLOWGATE_ENGINE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
}

impl EngineConfig {
    /// A configuration for tests: port 0, fast scripted model, no key.
    pub fn for_tests() -> EngineConfig {
        EngineConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            engine_key: None,
            llm_tokens: 5,
            llm_token_delay: Duration::from_millis(5),
            max_frame_bytes: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}
