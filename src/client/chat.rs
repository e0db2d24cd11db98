//! `flowgate chat <agent_id> [message]`: streams the answer text as it arrives.

use std::process::ExitCode;

/// Terminal chat client settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// The agent to run.
    pub agent_id: String,
    /// The message; read from stdin when omitted.
    pub message: Option<String>,
    /// Base URL of the gateway (`http://`, `https://`, `ws://` or `wss://`).
    #[arg(long, env = "FLOWGATE_URL", default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// JWT sent as `Authorization: Bearer` (e.g. from `flowgate token`).
    #[arg(long, env = "FLOWGATE_TOKEN", hide_env_values = true)]
    pub token: Option<crate::config::Secret>,
}

/// Run the client; the exit code is non-zero on `flow_error`/`error`.
pub async fn run(args: ChatArgs) -> ExitCode {
    let _ = args;
    todo!("chat client")
}
