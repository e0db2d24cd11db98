//! Command-line interface: one binary, subcommands. Parsed in `main.rs`, dispatched to the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{GatewayConfig, LogFormat, RuntimeArgs};
use crate::demo::DemoArgs;
use crate::engine::EngineConfig;
use crate::workflow::FlowFormat;
use crate::workflow::document::DocFormat;

/// flowgate: a streaming-chain orchestrator between chat frontends and execution engines.
#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `flowgate serve`: the gateway's configuration and its runtime.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: GatewayConfig,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP + WebSocket server.
    Serve(Box<ServeArgs>),
    /// Run the reference execution engine.
    Engine(Box<EngineArgs>),
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
    Bench {
        #[command(flatten)]
        args: Box<crate::bench::BenchArgs>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Print the engine payload of a stored workflow file (or `-` for stdin).
    Convert {
        /// Workflow file, `-` for stdin: JSON in either stored shape, or (a `.yaml`/`.yml` name)
        /// the YAML export shape.
        file: PathBuf,
        /// Input format when the file name does not say it (stdin is JSON unless told).
        #[arg(long, value_enum)]
        from: Option<DocFormat>,
        /// Output encoding.
        #[arg(long, value_enum, default_value_t = FlowFormat::Yaml)]
        to: FlowFormat,
    },
    /// Validate a stored workflow file: prints every finding; exit 0 clean, 1 errors, 2 unreadable.
    Validate {
        /// Workflow file, `-` for stdin: JSON in either stored shape, or (a `.yaml`/`.yml` name)
        /// the YAML export shape.
        file: PathBuf,
        /// Input format when the file name does not say it (stdin is JSON unless told).
        #[arg(long, value_enum)]
        from: Option<DocFormat>,
    },
}

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    #[command(flatten)]
    pub engine: EngineConfig,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
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
        database_url: crate::secret::Secret,
    },
}

impl Command {
    /// Async runtime threads for this command (`--worker-threads` where it has one; the
    /// client commands use the default).
    pub fn worker_threads(&self) -> usize {
        match self {
            Command::Serve(a) => a.runtime.worker_threads,
            Command::Engine(a) => a.runtime.worker_threads,
            Command::Demo(a) => a.runtime.worker_threads,
            Command::Bench { runtime, .. } => runtime.worker_threads,
            _ => 0,
        }
    }
}

/// Run one subcommand to completion and return the process exit code.
pub async fn run(command: Command) -> std::process::ExitCode {
    use std::process::ExitCode;
    match command {
        Command::Serve(args) => {
            let config = args.config;
            crate::telemetry::init(config.log_format);
            match crate::http::serve(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // One sentence (what, where, the fix); the chain would repeat the cause.
                    tracing::error!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Engine(args) => {
            crate::telemetry::init(args.log_format);
            match crate::engine::serve(args.engine).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
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
        Command::Bench { args, .. } => crate::bench::run(*args).await,
        Command::Convert { file, from, to } => crate::workflow::cli::convert(&file, from, to),
        Command::Validate { file, from } => crate::workflow::cli::validate(&file, from),
    }
}
