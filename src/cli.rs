//! Command-line interface: one binary, subcommands. Parsed in `main.rs`, dispatched to the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{GatewayConfig, LogFormat};
use crate::engine::EngineConfig;
use crate::workflow::FlowFormat;

/// flowgate: a streaming-chain orchestrator between chat frontends and execution engines.
#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about, long_about = None)]
pub struct Cli {
    /// Async runtime threads: `0` = one per CPU core, `1` = a single-threaded runtime (no
    /// cross-thread wake-ups: the cheapest per event when one core is enough).
    #[arg(
        long,
        global = true,
        env = "FLOWGATE_WORKER_THREADS",
        default_value_t = 0
    )]
    pub worker_threads: usize,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP + WebSocket server.
    Serve(Box<GatewayConfig>),
    /// Run the reference execution engine.
    Engine(EngineArgs),
    /// Gateway + engine in one process on the embedded sample agents (no database needed).
    Demo(DemoArgs),
    /// Mint a development JWT with the configured secret.
    Token(crate::auth::TokenArgs),
    /// Terminal chat client: streams an agent's answer.
    Chat(crate::client::chat::ChatArgs),
    /// Manage agents in Postgres.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Benchmark the gateway against a direct engine connection (latency, CPU, memory).
    Bench(Box<crate::bench::BenchArgs>),
    /// Print the engine payload of a stored workflow file (or `-` for stdin).
    Convert {
        /// Workflow file (JSON in either stored shape, or the YAML export shape), `-` for stdin.
        file: PathBuf,
        /// Output encoding.
        #[arg(long, value_enum, default_value_t = FlowFormat::Yaml)]
        to: FlowFormat,
    },
    /// Validate a stored workflow file: prints every finding; exit 0 clean, 1 errors, 2 unreadable.
    Validate {
        /// Workflow file (JSON in either stored shape, or the YAML export shape), `-` for stdin.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    #[command(flatten)]
    pub engine: EngineConfig,
    /// Log output format.
    #[arg(long, env = "FLOWGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Load agents from a folder in the `agents.json` format into Postgres (upsert).
    Import {
        /// Folder holding `agents.json` and the workflow files it names.
        dir: PathBuf,
        /// Postgres connection URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: crate::config::Secret,
    },
}

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
    /// Delay between two scripted `llm_chunk` events.
    #[arg(long, default_value = "60ms", value_parser = humantime::parse_duration)]
    pub llm_token_delay: std::time::Duration,
    /// Log output format.
    #[arg(long, env = "FLOWGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Run one subcommand to completion and return the process exit code.
pub async fn run(command: Command) -> std::process::ExitCode {
    use std::process::ExitCode;
    match command {
        Command::Serve(config) => {
            crate::telemetry::init(config.log_format);
            match crate::http::serve(*config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "gateway failed");
                    ExitCode::from(1)
                }
            }
        }
        Command::Engine(args) => {
            crate::telemetry::init(args.log_format);
            match crate::engine::serve(args.engine).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "engine failed");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo(args) => {
            crate::telemetry::init(args.log_format);
            crate::demo::run(args).await
        }
        Command::Token(args) => crate::auth::run_token(args),
        Command::Chat(args) => crate::client::chat::run(args).await,
        Command::Agents {
            command: AgentsCommand::Import { dir, database_url },
        } => crate::store::import::run(&dir, &database_url).await,
        Command::Bench(args) => crate::bench::run(*args).await,
        Command::Convert { file, to } => crate::workflow::cli::convert(&file, to),
        Command::Validate { file } => crate::workflow::cli::validate(&file),
    }
}
