//! The reference execution engine (`flowgate engine`).
//!
//! Owns `GET /ws/execute/{flow_id}`: the 4-step handshake of docs/neuralabs.md section 3 (flow frame
//! as YAML or JSON) and the socket loop (`server`), the flow model (`flow`), the depth-first
//! executor of section 4 (`executor`), what an element sees of its run (`run`), the element
//! library (`elements`, `rest`), the scripted streaming LLM (`llm`), the OpenAI-compatible
//! streaming client used with `--llm-base-url` (`openai`), the shared reqwest clients both use
//! and how their errors read (`outbound`), the `http://`/`https://` URLs they and the flags
//! accept (`target`), the engine's counters (`stats`) and the fault modes tests use (`fault`).
//! This file is the entry point ([`Engine`], [`serve`]) and re-exports, nothing else. Used by
//! tests, benchmarks, the demo and the compose stack.
//!
//! Dependencies point one way, from the entry point down to the leaves (tests/it/layout.rs
//! checks that the files form no cycle):
//!
//! ```text
//! mod      -> server, outbound, config, fault, stats
//! server   -> executor, run, flow, outbound, config, fault, stats
//! executor -> elements, run, flow, stats
//! elements -> rest, openai, llm, run, flow
//! rest     -> target, outbound, run, llm, flow
//! openai   -> target, outbound, config
//! run      -> outbound, config
//! outbound -> config (and crate::tls)
//! config   -> target, fault
//! leaves: flow, llm, target, fault, stats
//! ```
//!
//! Invariants: exactly one terminal event per run (`flow_completed` or `flow_error`); a run
//! stops before its next element or LLM chunk once its socket is gone; the config frame is
//! only read for run identity (its `run` object), it never switches anything on.

pub mod config;
pub mod elements;
pub mod executor;
pub mod fault;
pub mod flow;
pub mod llm;
pub mod openai;
pub mod outbound;
pub mod rest;
pub mod run;
pub mod server;
pub mod stats;
pub mod target;

pub use config::EngineConfig;
pub use fault::Fault;
pub use outbound::{Outbound, OutboundError};
pub use stats::EngineStats;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The outbound clients (`--ca-file`).
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// Binding `--listen`.
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    /// `--tls-cert` and `--tls-key`.
    #[error("cannot serve TLS (--tls-cert, --tls-key): {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A bound, not yet serving engine. `build` binds; `run` serves until `shutdown` is cancelled.
pub struct Engine {
    listener: tokio::net::TcpListener,
    config: EngineConfig,
    http: Outbound,
    stats: Arc<EngineStats>,
    /// `wss://` (`--tls-cert`, `--tls-key`).
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Engine {
    /// Build the outbound clients (reading `--ca-file`) and bind the listener (use port 0 in
    /// tests) without serving yet.
    pub async fn build(config: EngineConfig) -> Result<Engine, BuildError> {
        let http = Outbound::new(&config)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(BuildError::Listen)?;
        Ok(Engine {
            listener,
            config,
            http,
            stats: Arc::default(),
            tls,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// `wss` when the engine serves TLS (`--tls-cert`), else `ws`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }

    /// The engine's counters (shared with the running engine).
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Serve until `shutdown` is cancelled; running flows are stopped and their sockets closed
    /// (1012), waiting at most `shutdown_grace` for them.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let grace = self.config.shutdown_grace;
        let handshake_timeout = self.config.handshake_timeout;
        let tracker = TaskTracker::new();
        let state = server::AppState {
            config: Arc::new(self.config),
            http: self.http,
            stats: self.stats,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            flows: Default::default(),
        };
        let app = server::router(state);
        let stop = shutdown.clone().cancelled_owned();
        let result = match self.tls {
            Some(tls) => {
                let listener = crate::tls::TlsListener::new(self.listener, tls, handshake_timeout)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            None => {
                use axum::serve::ListenerExt;
                // Events are small and latency-bound: no Nagle delay.
                let listener = self.listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        };
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "engine sessions still running after the shutdown grace"
            );
        }
        result
    }
}

/// `flowgate engine`: bind, serve until SIGINT/SIGTERM.
pub async fn serve(config: EngineConfig) -> Result<(), String> {
    let addr = config.listen;
    if !addr.ip().is_loopback() && config.engine_key.is_none() {
        return Err(format!(
            "the engine would listen on {addr} without --engine-key: anyone who reaches it could \
             run flows (and their rest_api calls). Set FLOWGATE_ENGINE_KEY (the same key on the \
             gateway), or listen on 127.0.0.1 with --listen (FLOWGATE_ENGINE_LISTEN)"
        ));
    }
    let engine = Engine::build(config).await.map_err(|e| match e {
        BuildError::Listen(e) => crate::startup::listen_failed(
            "the engine",
            addr,
            &e,
            "--listen (FLOWGATE_ENGINE_LISTEN)",
        ),
        other => other.to_string(),
    })?;
    let url = format!("{}://{}", engine.scheme(), engine.local_addr());
    tracing::info!(%url, "engine listening");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        signal.cancel();
    });
    engine
        .run(shutdown)
        .await
        .map_err(|e| format!("the engine stopped: {}", crate::startup::plain_io(&e)))
}
