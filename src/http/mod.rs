//! The gateway's HTTP surface: router, shared state, bind-then-serve, shutdown.
//!
//! Routes: `GET /api/chat/execute/{agent_id}` (WebSocket, `ws`), `GET /healthz`, `GET /readyz`
//! (`health`), `GET /` and `/static/*` (the chat page, `page`), `GET /api/agents` (agent list for
//! the page). Upgraded sockets are tracked by the [`TaskTracker`] of [`AppState`] because axum's
//! graceful shutdown does not wait for them.

pub mod health;
pub mod limits;
pub mod page;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::relay::cache::WorkflowCache;
use crate::relay::registry::Registry;
use crate::runlog::{MemoryRunLog, MemoryRunLogConfig, PgRunLog, PgRunLogConfig, RunLog};
use crate::store::Store;

/// Shared, cheap-to-clone state of one gateway.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<GatewayConfig>,
    pub store: Store,
    pub verifier: Verifier,
    pub cache: WorkflowCache,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
    /// Every client session and every run.
    pub sessions: TaskTracker,
    /// Live runs of this gateway.
    pub runs: Registry,
    /// Where runs and their frames are recorded.
    pub runlog: RunLog,
    /// Upgrade rate per client address.
    pub upgrade_limits: limits::PerAddress,
    /// Client sockets open now.
    pub open_sessions: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the agent store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(
        "--engine-url must be a ws:// URL (got `{0}`); TLS to the engine is not supported: keep the engine hop on a private network"
    )]
    EngineUrl(String),
    #[error("invalid client authentication settings: {0}")]
    Auth(String),
    #[error("cannot start the run log: {0}")]
    RunLog(String),
    #[error(
        "no agent store configured: pass --database-url (DATABASE_URL) or --flows-dir (FLOWGATE_FLOWS_DIR)"
    )]
    NoStore,
}

/// A bound gateway that is not serving yet.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl Gateway {
    /// Open the store and bind the listener (port 0 in tests).
    pub async fn build(config: GatewayConfig) -> Result<Gateway, StartError> {
        let store = open_store(&config).await?;
        Gateway::with_store(config, store).await
    }

    /// Bind with an already opened store (tests, demo).
    pub async fn with_store(config: GatewayConfig, store: Store) -> Result<Gateway, StartError> {
        if !config.engine_url.starts_with("ws://") {
            return Err(StartError::EngineUrl(config.engine_url.clone()));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let verifier =
            Verifier::from_config(&config.auth).map_err(|e| StartError::Auth(e.to_string()))?;
        let runlog = match &store {
            Store::Postgres(pg) => {
                let log_config = PgRunLogConfig {
                    buffer: config.runlog_buffer,
                    linger: config.runlog_linger,
                    heartbeat_interval: config.heartbeat_interval,
                    stale_after: config.heartbeat_interval * 6,
                    write_timeout: config.store_timeout,
                    max_events_per_run: config.max_run_frames as u64,
                    ..PgRunLogConfig::default()
                };
                RunLog::Postgres(
                    PgRunLog::spawn(pg.pool().clone(), log_config)
                        .await
                        .map_err(|e| StartError::RunLog(e.to_string()))?,
                )
            }
            Store::Files(_) => RunLog::Memory(MemoryRunLog::new(MemoryRunLogConfig {
                max_runs: config.runlog_memory_runs,
                max_events_per_run: config.max_run_frames,
            })),
        };
        let upgrade_limits = limits::PerAddress::new(
            config.upgrades_per_second,
            config.upgrades_per_second.saturating_mul(2),
        );
        let state = AppState {
            config: Arc::new(config),
            store,
            verifier,
            cache: WorkflowCache::default(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            runs: Registry::default(),
            runlog,
            upgrade_limits,
            open_sessions: Arc::default(),
            metrics: Arc::default(),
        };
        Ok(Gateway { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The state (tests use it to reach the store or trigger shutdown).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` is cancelled, then drain sessions within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let state = self.state.clone();
        let app = router(state.clone());
        let stop = shutdown.clone();
        use axum::serve::ListenerExt;
        // Chat frames are small and latency-bound: no Nagle delay.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await });
        server.await?;
        // Stop accepting happened; now let sessions finish, then force them closed.
        state.shutdown.cancel();
        state.sessions.close();
        // Sessions close their clients when the grace ends; each close write is bounded by the
        // client write timeout.
        let grace = state.config.shutdown_grace + state.config.client_write_timeout;
        if tokio::time::timeout(grace, state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the shutdown grace period");
        }
        state.runlog.flush(state.config.store_timeout).await;
        Ok(())
    }
}

async fn open_store(config: &GatewayConfig) -> Result<Store, StartError> {
    if let Some(url) = &config.database_url {
        let pg = crate::store::postgres::PgStore::connect(
            url,
            config.db_max_connections,
            config.store_timeout,
        )
        .await?;
        return Ok(Store::Postgres(pg));
    }
    if let Some(dir) = &config.flows_dir {
        return Ok(Store::Files(crate::store::files::FilesStore::open(dir)?));
    }
    Err(StartError::NoStore)
}

/// The router of one gateway.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/chat/execute/{agent_id}", get(ws::upgrade))
        .route("/api/agents", get(page::agents))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/", get(page::index))
        .route("/static/{file}", get(page::asset))
        .with_state(state)
}

/// `flowgate serve`.
pub async fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    let gateway = Gateway::build(config).await?;
    tracing::info!(addr = %gateway.local_addr(), "gateway listening");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });
    gateway.run(shutdown).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
