//! `flowgate demo`: the reference engine and a gateway in one process, on the embedded sample
//! agents (or `--flows-dir`), with a fresh random JWT secret (printed, so `flowgate token` can
//! mint tokens for other users) or `--jwt-secret`. Prints the page URL (the token in the URL
//! fragment, which browsers never send to the server) and a ready `flowgate chat` line.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use std::path::PathBuf;

use crate::config::{GatewayConfig, LogFormat, RuntimeArgs};
use crate::engine::{Engine, EngineConfig};
use crate::http::Gateway;
use crate::secret::Secret;
use crate::store::Store;
use crate::store::files::FilesStore;

/// `flowgate demo` settings.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address of the demo's gateway (the chat page is served at `/`).
    #[arg(long, env = "FLOWGATE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    /// Address of the demo's engine.
    #[arg(long, env = "FLOWGATE_ENGINE_LISTEN", default_value = "127.0.0.1:8001")]
    pub engine_listen: std::net::SocketAddr,
    /// Serve agents from this folder instead of the embedded samples.
    #[arg(long, env = "FLOWGATE_FLOWS_DIR")]
    pub flows_dir: Option<PathBuf>,
    /// HS256 key the demo's tokens are signed with; without it a random one is made and
    /// printed, so that `flowgate token` can mint tokens for other users.
    #[arg(long, env = "FLOWGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Delay between two scripted `llm_chunk` events.
    #[arg(long, default_value = "60ms", value_parser = humantime::parse_duration)]
    pub llm_token_delay: std::time::Duration,
    /// Log output format.
    #[arg(long, env = "FLOWGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The user the demo's token is minted for (owner of the sample agents `echo`, `assistant`).
pub const DEMO_USER: &str = "alice";

fn random_secret() -> Secret {
    Secret::new(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ))
}

pub async fn run(args: DemoArgs) -> ExitCode {
    let store = match &args.flows_dir {
        Some(dir) => match FilesStore::open(dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("flowgate demo: {e}");
                return ExitCode::from(2);
            }
        },
        None => FilesStore::embedded(),
    };
    let engine_key = random_secret();
    let chosen_secret = args.jwt_secret.is_some();
    let jwt_secret = args.jwt_secret.clone().unwrap_or_else(random_secret);

    let mut engine_config = EngineConfig::for_tests();
    engine_config.allow_flow_faults = false;
    engine_config.listen = args.engine_listen;
    engine_config.engine_key = Some(engine_key.clone());
    engine_config.llm_tokens = 24;
    engine_config.llm_token_delay = args.llm_token_delay;
    let engine = match Engine::build(engine_config).await {
        Ok(e) => e,
        Err(e) => {
            let why = match e {
                crate::engine::BuildError::Listen(e) => crate::startup::listen_failed(
                    "the demo's engine",
                    args.engine_listen,
                    &e,
                    "--engine-listen (FLOWGATE_ENGINE_LISTEN)",
                ),
                other => other.to_string(),
            };
            eprintln!("flowgate demo: {why}");
            return ExitCode::from(1);
        }
    };
    let engine_addr = engine.local_addr();

    let mut config = GatewayConfig::for_tests(format!("ws://{engine_addr}"));
    config.listen = args.listen;
    config.auth.jwt_secret = Some(jwt_secret.clone());
    config.engine_key = Some(engine_key);
    config.log_format = args.log_format;
    config.engine_idle_timeout = std::time::Duration::from_secs(120);
    // A local demo: caps that fit any open-file limit (no warning about lowering them).
    config.max_connections = 1_000;
    config.max_sessions = 900;
    // Every client protocol, on the sample agent that streams. The demo's tokens name the user
    // in `sub` (barka's carry `id`, the default of --adk-jwt-user-claim).
    config.dialects = vec![
        crate::config::DialectId::Neuralabs,
        crate::config::DialectId::Adk,
        crate::config::DialectId::Omni2,
        crate::config::DialectId::Copilot,
        crate::config::DialectId::Citizen,
        crate::config::DialectId::Openai,
        crate::config::DialectId::Vercel,
        crate::config::DialectId::Agui,
    ];
    config.vercel_agent_id = Some("assistant".into());
    config.adk_agent_id = Some("assistant".into());
    config.omni2_agent_id = Some("assistant".into());
    config.copilot_agent_id = Some("assistant".into());
    config.citizen_agent_id = Some("assistant".into());
    config.adk_jwt_user_claim = "sub".into();
    let gateway = match Gateway::with_store(config, Store::Files(store)).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("flowgate demo: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = gateway.local_addr();
    let token = crate::auth::mint_hs256(
        &jwt_secret,
        DEMO_USER,
        std::time::Duration::from_secs(12 * 3600),
    );

    println!("flowgate demo is running (engine on {engine_addr}, gateway on {addr}).");
    println!();
    println!("  Chat page:  http://{addr}/#token={token}");
    println!();
    println!("  Terminal:   export FLOWGATE_URL=ws://{addr} FLOWGATE_TOKEN={token}");
    println!("              cargo run --release -- chat assistant \"Hello there\"");
    println!();
    println!("  Other client protocols (docs/dialects.md), each on its own path:");
    println!("    adk (barka/ovara): ws://{addr}/ws/<client_id>?token={token}  runs `assistant`");
    println!("                       send {{\"mime_type\":\"text/plain\",\"data\":\"Hello\"}}");
    println!(
        "    citizen (Leoma):      POST http://{addr}/api/agent/session, then ws://{addr}/?sessionId=<its sessionId>"
    );
    println!("                       send {{\"sessionId\":\"<it>\",\"message\":\"Hello\"}}");
    println!("    copilot (OmniTrack):  ws://{addr}/copilot?token={token}  runs `assistant`");
    println!(
        "                       send {{\"action\":\"message\",\"message\":\"Hello\",\"conversationId\":null,\"streaming\":true}}"
    );
    println!("    omni2 (OMNI2 widget): ws://{addr}/ws/chat?token={token}  runs `assistant`");
    println!(
        "                       send {{\"type\":\"message\",\"text\":\"Hello\"}}; SSE twin: POST http://{addr}/api/v1/chat/stream"
    );
    println!(
        "    adk over HTTP:     http://{addr}/run_sse, /run and /apps/assistant/users/{DEMO_USER}/sessions (Authorization: Bearer <the token>)"
    );
    println!(
        "    openai (OpenAI SDK):  base_url http://{addr}/v1, api_key <the token>, model \"assistant\""
    );
    println!(
        "    vercel (AI SDK):      DefaultChatTransport api http://{addr}/api/chat, headers Authorization: Bearer <the token>"
    );
    println!(
        "    agui (AG-UI):         HttpAgent url http://{addr}/agui/assistant, headers Authorization: Bearer <the token>"
    );
    println!();
    println!("  Agents: echo, assistant, router (draft of bob: forbidden for alice), legacy.");
    println!(
        "  The token is for user `{DEMO_USER}` and valid for 12 hours. Ctrl-C stops the demo."
    );
    println!();
    if chosen_secret {
        println!("  Other users: tokens signed with your FLOWGATE_JWT_SECRET (--jwt-secret), e.g.");
    } else {
        println!("  Other users: this demo signs with a random key; mint tokens with it:");
        println!(
            "              export FLOWGATE_JWT_SECRET={}",
            jwt_secret.expose()
        );
    }
    println!("              cargo run --release -- token --sub bob");
    println!("              (paste the token into the page, or set FLOWGATE_TOKEN for `chat`)");

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        signal.cancel();
    });
    let engine_task = tokio::spawn(engine.run(shutdown.clone()));
    let result = gateway.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = engine_task.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgate demo: {e}");
            ExitCode::from(1)
        }
    }
}
