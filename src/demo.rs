//! `flowgate demo`: the reference engine and a gateway in one process, on the embedded sample
//! agents (or `--flows-dir`), with a fresh random JWT secret. Prints the page URL (the token in
//! the URL fragment, which browsers never send to the server) and a ready `flowgate chat` line.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::config::{GatewayConfig, Secret};
use crate::engine::{Engine, EngineConfig};
use crate::http::Gateway;
use crate::store::Store;
use crate::store::files::FilesStore;

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
    let jwt_secret = random_secret();

    let mut engine_config = EngineConfig::for_tests();
    engine_config.listen = args.engine_listen;
    engine_config.engine_key = Some(engine_key.clone());
    engine_config.llm_tokens = 24;
    engine_config.llm_token_delay = args.llm_token_delay;
    let engine = match Engine::build(engine_config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "flowgate demo: cannot bind the engine on {}: {e}",
                args.engine_listen
            );
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
    println!("  Agents: echo, assistant, router (draft of bob: forbidden for alice), legacy.");
    println!(
        "  The token is for user `{DEMO_USER}` and valid for 12 hours. Ctrl-C stops the demo."
    );

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::http::shutdown_signal().await;
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
