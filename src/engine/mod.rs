//! The reference execution engine (`flowgate engine`).
//!
//! Owns `GET /ws/execute/{flow_id}`: the 4-step handshake of PROTOCOL.md section 3 (flow frame
//! as YAML or JSON), the depth-first executor of section 4 (`executor`), the element library
//! (`elements`), the scripted streaming LLM (`llm`) and the fault modes tests use (`fault`).
//! Used by tests, benchmarks, the demo and the compose stack.

pub mod config;

pub use config::EngineConfig;

use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// A bound, not yet serving engine. `build` binds; `run` serves until `shutdown` is cancelled.
pub struct Engine {
    listener: tokio::net::TcpListener,
    config: EngineConfig,
}

impl Engine {
    /// Bind the listener (use port 0 in tests) without serving yet.
    pub async fn build(config: EngineConfig) -> std::io::Result<Engine> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        Ok(Engine { listener, config })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve until `shutdown` is cancelled; running flows are stopped and their sockets closed.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let _ = (self.config, shutdown);
        todo!("engine::run")
    }
}

/// `flowgate engine`: bind, serve until SIGINT/SIGTERM.
pub async fn serve(config: EngineConfig) -> std::io::Result<()> {
    let engine = Engine::build(config).await?;
    tracing::info!(addr = %engine.local_addr(), "engine listening");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::http::shutdown_signal().await;
        signal.cancel();
    });
    engine.run(shutdown).await
}
