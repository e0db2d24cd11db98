//! The gateway's HTTP surface: router, bind-then-serve (the accept loop in `server`), the
//! admin listener. It builds the relay's context ([`AppState`]) and hands sockets to the relay;
//! data flows one way (http → relay), never back.
//!
//! Routes: `GET /api/chat/execute/{agent_id}` (WebSocket, `ws`), `GET /healthz`, `GET /readyz`
//! (`health`), `GET /` and `/static/*` (the chat page, `page`), `GET /api/agents` (agent list for
//! the page). Upgraded sockets are tracked by the [`TaskTracker`] of [`AppState`]: the accept
//! loop's drain on shutdown covers HTTP requests only.

pub mod address;
pub mod adk;
pub mod agui;
pub mod bearer;
pub mod citizen;
pub mod health;
pub mod omni2;
pub mod openai;
pub mod page;
pub mod server;
pub mod sse;
pub mod vercel;
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

/// The gateway's state lives with the relay (it is the relay's context); re-exported here.
pub use crate::relay::context::AppState;

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A client protocol's settings do not fit together: the sentence names the flag and the fix.
    #[error("{0}")]
    Dialect(String),
    #[error("{}", crate::startup::listen_failed("the gateway", *.addr, .source, "--listen (FLOWGATE_LISTEN)"))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}", crate::startup::listen_failed("the admin listener", *.addr, .source, "--admin-listen (FLOWGATE_ADMIN_LISTEN)"))]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The database could not be opened: the whole sentence (URL without password, cause, fix).
    #[error("{0}")]
    Database(String),
    #[error("cannot open the agent store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(
        "--engine-url must be a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:8001 (got `{0}`)"
    )]
    EngineUrl(String),
    #[error("cannot set up outbound TLS (--outbound-ca-file): {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("invalid client authentication settings: {0}")]
    Auth(String),
    #[error("cannot start the run log: {0}")]
    RunLog(String),
    #[error("cannot set up the outbound HTTP client (TLS roots): {0}")]
    Http(String),
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    #[error(
        "no agent store configured: pass --database-url (DATABASE_URL) or --flows-dir (FLOWGATE_FLOWS_DIR)"
    )]
    NoStore,
}

/// A bound gateway that is not serving yet.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    /// `--admin-listen`: `/metrics` and `/readyz` away from the public listener.
    admin: Option<tokio::net::TcpListener>,
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
        let engine_scheme_ends = ["ws://", "wss://"]
            .iter()
            .find_map(|p| config.engine_url.strip_prefix(p));
        if engine_scheme_ends.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
            return Err(StartError::EngineUrl(config.engine_url.clone()));
        }
        let outbound_tls = outbound_tls(&config)?;
        check_dialects(&config)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin = match config.admin_listen {
            None => None,
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::AdminBind { addr, source })?,
            ),
        };
        let verifier =
            Verifier::from_config(&config.auth).map_err(|e| StartError::Auth(e.to_string()))?;
        let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics_max_agents));
        let runlog = match &store {
            Store::Postgres(pg) => {
                let log_config = PgRunLogConfig {
                    buffer: config.runlog_buffer,
                    linger: config.runlog_linger,
                    heartbeat_interval: config.heartbeat_interval,
                    stale_after: config.heartbeat_interval * 6,
                    write_timeout: config.store_timeout,
                    max_events_per_run: config.max_run_frames as u64,
                    retention: config.runlog_retention,
                    batch_max: config.runlog_batch.max(1),
                    write_attempts: config.runlog_write_attempts.max(1),
                    retry_delay: config.runlog_retry_delay,
                    prune_batch: config.runlog_prune_batch.max(1),
                    // With NATS, the relay takes lost gateways' runs over (and ends them with a
                    // terminal frame) instead.
                    sweep: config.nats_url.is_none(),
                };
                // A pool of its own, to the same database: the run log's writes and the
                // store's lookups never queue behind each other. A transaction left open (its
                // gateway frozen mid-write) is ended by Postgres after the store timeout, so
                // its locks never block the gateway taking its runs over.
                let idle_in_transaction = format!("{}ms", config.store_timeout.as_millis().max(1));
                let runlog_options = (*pg.pool().connect_options())
                    .clone()
                    .options([("idle_in_transaction_session_timeout", idle_in_transaction)]);
                let runlog_pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(config.runlog_db_connections.max(1))
                    .acquire_timeout(config.store_timeout)
                    .connect_lazy_with(runlog_options);
                RunLog::Postgres(
                    PgRunLog::spawn_with_metrics(
                        runlog_pool,
                        log_config,
                        Some(metrics.runlog_batch_write_seconds.clone()),
                    )
                    .await
                    .map_err(|e| StartError::RunLog(e.to_string()))?,
                )
            }
            Store::Files(_) => RunLog::Memory(MemoryRunLog::new(MemoryRunLogConfig {
                max_runs: config.runlog_memory_runs,
                max_events_per_run: config.max_run_frames,
            })),
        };
        let cluster = match (&config.nats_url, &runlog) {
            (None, _) => None,
            (Some(url), RunLog::Postgres(log)) => Some(
                crate::cluster::Cluster::connect(crate::cluster::ClusterConfig {
                    url: url.clone(),
                    node: log.instance_id(),
                    stream: config.nats_stream.clone(),
                    max_age: config.nats_max_age,
                    max_bytes: config.nats_max_bytes,
                    timeout: config.nats_timeout,
                    queue: config.nats_queue,
                })
                .await
                .map_err(|e| StartError::Cluster(e.to_string()))?,
            ),
            (Some(_), RunLog::Memory(_)) => {
                return Err(StartError::Cluster(
                    "--nats-url needs --database-url: the gateways share the run log (who owns each run, finished runs' frames) in Postgres".into(),
                ));
            }
        };
        let upgrade_limits = crate::relay::limits::PerAddress::new(
            config.upgrades_per_second,
            config.upgrades_per_second.saturating_mul(2),
        );
        let config_history = (config.history_messages, config.history_conversations);
        let citizen_ttl = config.citizen_session_ttl;
        let refused_per_minute = config.refused_tokens_per_minute;
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
            refusals: crate::relay::limits::PerAddress::per_minute(refused_per_minute),
            open_sessions: Arc::default(),
            metrics,
            conversations: Arc::new(crate::relay::memory::Conversations::new(
                config_history.0,
                config_history.1,
            )),
            adk_sessions: Arc::default(),
            citizen_sessions: Arc::new(crate::relay::dialect::citizen::Sessions::new(citizen_ttl)),
            vercel_chats: Arc::default(),
            cluster,
            http: http_client(outbound_tls.as_deref())?,
            outbound_tls,
        };
        Ok(Gateway {
            listener,
            admin,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's address (`--admin-listen`), when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The state (tests use it to reach the store or trigger shutdown).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` is cancelled, then drain sessions within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let state = self.state.clone();
        if let Some(cluster) = &state.cluster {
            // Other gateways' cancels and attach counts for the runs this one owns.
            let answering = state.clone();
            let served = cluster
                .serve(
                    move |ask, run_id| crate::relay::remote::answer(&answering, ask, run_id),
                    state.shutdown.clone(),
                )
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "cannot answer other gateways' requests yet");
            }
            // Lost gateways' runs: taken over and ended here (the run log's sweep is off).
            tokio::spawn(crate::relay::remote::take_over_lost_runs(state.clone()));
        }
        let app = router(state.clone());
        let admin_task = self.admin.map(|listener| {
            let settings = server::ServeSettings {
                header_read_timeout: state.config.header_read_timeout,
                drain: state.config.shutdown_grace,
            };
            tokio::spawn(server::serve(
                listener,
                admin_router(state.clone()),
                server::ConnectionLimits::new(64, 0),
                state.metrics.clone(),
                settings,
                shutdown.clone(),
            ))
        });
        let limits = server::ConnectionLimits::new(
            connection_cap(state.config.max_connections),
            state.config.max_connections_per_address,
        );
        let settings = server::ServeSettings {
            header_read_timeout: state.config.header_read_timeout,
            drain: state.config.shutdown_grace,
        };
        server::serve(
            self.listener,
            app,
            limits,
            state.metrics.clone(),
            settings,
            shutdown,
        )
        .await;
        if let Some(task) = admin_task {
            let _ = task.await;
        }
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

/// `--max-connections`, checked against the open-file limit: the soft limit is raised (up to
/// the hard one) to fit two descriptors per connection (a client connection of a run also needs
/// an engine connection) plus a reserve for the store and `/healthz`; when it cannot be, the cap
/// is lowered to what fits, with a warning.
fn connection_cap(configured: usize) -> usize {
    const RESERVE: u64 = 128;
    let want = (configured as u64)
        .saturating_mul(2)
        .saturating_add(RESERVE);
    let Some(limit) = crate::startup::raise_open_file_limit(want) else {
        return configured;
    };
    let fits = usize::try_from(limit.saturating_sub(RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .max(16);
    if fits < configured {
        tracing::warn!(
            configured,
            open_file_limit = limit,
            using = fits,
            "--max-connections lowered to fit the open-file limit (raise the hard limit, e.g. LimitNOFILE or `ulimit -Hn`)"
        );
        return fits;
    }
    configured
}

async fn open_store(config: &GatewayConfig) -> Result<Store, StartError> {
    if let Some(url) = &config.database_url {
        let pg = crate::store::postgres::PgStore::connect(
            url,
            config.db_max_connections,
            config.store_timeout,
        )
        .await
        .map_err(|e| {
            StartError::Database(crate::startup::database_failed(url.expose(), e.detail()))
        })?
        .with_cache_ttl(config.store_cache_ttl);
        return Ok(Store::Postgres(pg));
    }
    if let Some(dir) = &config.flows_dir {
        return Ok(Store::Files(crate::store::files::FilesStore::open(dir)?));
    }
    Err(StartError::NoStore)
}

/// Each enabled client protocol has its agent, and no protocol's agent is given for one that
/// is off.
fn check_dialects(config: &GatewayConfig) -> Result<(), StartError> {
    use crate::config::DialectId;
    let routes = [
        (
            DialectId::Adk,
            "adk",
            "--adk-agent-id (FLOWGATE_ADK_AGENT_ID)",
            &config.adk_agent_id,
            "/ws/{client_id} and ADK's HTTP routes",
        ),
        (
            DialectId::Omni2,
            "omni2",
            "--omni2-agent-id (FLOWGATE_OMNI2_AGENT_ID)",
            &config.omni2_agent_id,
            "/ws/chat and POST /api/v1/chat/stream",
        ),
        (
            DialectId::Copilot,
            "copilot",
            "--copilot-agent-id (FLOWGATE_COPILOT_AGENT_ID)",
            &config.copilot_agent_id,
            "/copilot",
        ),
        (
            DialectId::Citizen,
            "citizen",
            "--citizen-agent-id (FLOWGATE_CITIZEN_AGENT_ID)",
            &config.citizen_agent_id,
            "POST /api/agent/session and the --citizen-path socket",
        ),
    ];
    for (id, name, flag, agent, paths) in routes {
        let on = config.dialects.contains(&id);
        match (agent, on) {
            (None, true) => {
                return Err(StartError::Dialect(format!(
                    "--dialects names `{name}` but no {flag} is set: name the agent {paths} run"
                )));
            }
            (Some(_), false) => {
                return Err(StartError::Dialect(format!(
                    "{flag} is set but `{name}` is not in --dialects (FLOWGATE_DIALECTS): add it, e.g. --dialects neuralabs,{name}, or drop the agent setting"
                )));
            }
            (Some(agent), true) => {
                crate::store::check_agent_id(agent).map_err(|why| {
                    StartError::Dialect(format!("{flag}: `{agent}` is not an agent id: {why}"))
                })?;
            }
            (None, false) => {}
        }
    }
    let path = &config.citizen_path;
    if !path.starts_with('/') || path.contains(['?', '#', '{', '}', ' ']) {
        return Err(StartError::Dialect(format!(
            "--citizen-path `{path}` is not a plain path: use e.g. / or /citizen"
        )));
    }
    if config.dialects.contains(&DialectId::Citizen)
        && path != "/"
        && [
            "/api/", "/ws/", "/static/", "/copilot", "/metrics", "/healthz", "/readyz", "/run",
        ]
        .iter()
        .any(|taken| path.starts_with(taken))
    {
        return Err(StartError::Dialect(format!(
            "--citizen-path `{path}` collides with another flowgate route: choose another path"
        )));
    }
    // Hop paths must not take a route that is already served (axum would refuse to start).
    let mut taken: Vec<&str> = vec!["/api/agents", "/healthz", "/readyz", "/metrics"];
    if !config.dialects.contains(&DialectId::Citizen) || config.citizen_path == "/" {
        taken.push("/");
    }
    let on = |d: DialectId| config.dialects.contains(&d);
    if on(DialectId::Omni2) {
        taken.extend(["/ws/chat", "/api/v1/chat/stream"]);
    }
    if on(DialectId::Copilot) {
        taken.push("/copilot");
    }
    if on(DialectId::Citizen) {
        taken.extend(["/api/agent/session", config.citizen_path.as_str()]);
    }
    if on(DialectId::Adk) {
        taken.extend(["/run_sse", "/run"]);
    }
    if on(DialectId::Openai) {
        taken.extend(["/v1/chat/completions", "/v1/models"]);
    }
    if on(DialectId::Vercel) {
        taken.push("/api/chat");
    }
    for (i, hop) in config.hops.iter().enumerate() {
        let path = hop.path.as_str();
        if taken.contains(&path)
            || config.hops[..i].iter().any(|h| h.path == path)
            || path.starts_with("/api/chat/execute/")
            || path.starts_with("/static/")
            || path.starts_with("/apps/")
            || (on(DialectId::Vercel) && path.starts_with("/api/chat/"))
            || (on(DialectId::Agui) && path.starts_with("/agui/"))
        {
            return Err(StartError::Dialect(format!(
                "--hop {path}: that path is already served (by flowgate or another --hop): choose another path"
            )));
        }
    }
    if config.dialects.contains(&DialectId::Adk) && config.adk_jwt_user_claim.trim().is_empty() {
        return Err(StartError::Dialect(
            "--adk-jwt-user-claim is empty: name the token claim that holds the user id (barka tokens: `id`)".into(),
        ));
    }
    Ok(())
}

/// The `adk` dialect's HTTP side (DIALECTS.md 2.4.2), with the request body limit.
fn adk_routes(max_body: usize) -> Router<AppState> {
    use axum::routing::post;
    Router::new()
        .route(
            "/apps/{app_name}/users/{user_id}/sessions",
            post(adk::create_session),
        )
        .route(
            "/apps/{app_name}/users/{user_id}/sessions/{session_id}",
            post(adk::create_session_with_id)
                .get(adk::get_session)
                .delete(adk::delete_session),
        )
        .route("/run_sse", post(adk::run_sse))
        .route("/run", post(adk::run))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
}

/// The router of one gateway. With `--admin-listen`, `/metrics` and `/readyz` are only on the
/// admin listener ([`admin_router`]).
pub fn router(state: AppState) -> Router {
    let citizen_on_root = state
        .config
        .dialects
        .contains(&crate::config::DialectId::Citizen)
        && state.config.citizen_path == "/";
    let public = Router::new()
        .route("/api/chat/execute/{agent_id}", get(ws::upgrade))
        .route("/api/agents", get(page::agents))
        .route("/healthz", get(health::healthz))
        .route("/static/{file}", get(page::asset));
    let public = if citizen_on_root {
        public
    } else {
        public.route("/", get(page::index))
    };
    let public = if state
        .config
        .dialects
        .contains(&crate::config::DialectId::Omni2)
    {
        public.route("/ws/chat", get(ws::upgrade_omni2)).route(
            "/api/v1/chat/stream",
            axum::routing::post(omni2::stream).layer(axum::extract::DefaultBodyLimit::max(
                state.config.max_request_body_bytes,
            )),
        )
    } else {
        public
    };
    let public = if state
        .config
        .dialects
        .contains(&crate::config::DialectId::Citizen)
    {
        let public = public.route(
            "/api/agent/session",
            axum::routing::post(citizen::mint).layer(axum::extract::DefaultBodyLimit::max(
                state.config.max_request_body_bytes,
            )),
        );
        if citizen_on_root {
            // The socket and the chat page share `/`: an upgrade is the socket.
            public.route("/", get(ws::root))
        } else {
            public.route(&state.config.citizen_path, get(ws::upgrade_citizen))
        }
    } else {
        public
    };
    let public = if state
        .config
        .dialects
        .contains(&crate::config::DialectId::Copilot)
    {
        public.route("/copilot", get(ws::upgrade_copilot))
    } else {
        public
    };
    let public = if state
        .config
        .dialects
        .contains(&crate::config::DialectId::Adk)
    {
        public
            .route("/ws/{client_id}", get(ws::upgrade_adk))
            .merge(adk_routes(state.config.max_request_body_bytes))
    } else {
        public
    };
    let on = |d: crate::config::DialectId| state.config.dialects.contains(&d);
    let limit = || axum::extract::DefaultBodyLimit::max(state.config.max_request_body_bytes);
    use axum::routing::post;
    // Browser pages on the listed origins may call the HTTP dialects (the SDKs send
    // `Authorization`, so each call is preflighted); none listed: same-origin pages only.
    let cors = cors(&state.config.allowed_origins);
    let with_cors = |r: axum::routing::MethodRouter<AppState>| match &cors {
        Some(c) => r.layer(c.clone()),
        None => r,
    };
    let public = if on(crate::config::DialectId::Openai) {
        public
            .route(
                "/v1/chat/completions",
                with_cors(post(openai::completions).layer(limit())),
            )
            .route("/v1/models", with_cors(get(openai::models)))
    } else {
        public
    };
    let public = if on(crate::config::DialectId::Vercel) {
        public
            .route("/api/chat", with_cors(post(vercel::chat).layer(limit())))
            .route("/api/chat/{chat_id}/stream", with_cors(get(vercel::resume)))
            .route("/api/chat/{chat_id}/stop", with_cors(post(vercel::stop)))
    } else {
        public
    };
    let public = if on(crate::config::DialectId::Agui) {
        public.route(
            "/agui/{agent_id}",
            with_cors(post(agui::run).layer(limit())),
        )
    } else {
        public
    };
    let mut public = public;
    for hop in &state.config.hops {
        public = public.route(&hop.path, get(ws::upgrade_hop));
    }
    let public = if state.config.admin_listen.is_none() {
        public
            .route("/readyz", get(health::readyz))
            .route("/metrics", get(health::metrics))
    } else {
        public
    };
    public.with_state(state)
}

/// CORS for the HTTP dialects: the `--allowed-origins` (none: no CORS headers at all).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(list)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
            .expose_headers([
                HeaderName::from_static("x-flowgate-run-id"),
                HeaderName::from_static("x-vercel-ai-ui-message-stream"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The admin listener's router: `/healthz`, `/readyz`, `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

/// `flowgate serve`.
pub async fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    let gateway = Gateway::build(config).await?;
    tracing::info!(addr = %gateway.local_addr(), "gateway listening");
    println!(
        "{}",
        next_steps(&gateway.state.config, gateway.local_addr())
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });
    gateway.run(shutdown).await?;
    Ok(())
}

/// What to do once `serve` is up: the page, how to get a token this gateway accepts, a `chat`
/// line. Printed on standard output (the logs go to standard error).
pub fn next_steps(config: &GatewayConfig, addr: SocketAddr) -> String {
    let store = match (&config.database_url, &config.flows_dir) {
        (Some(_), _) => "agents from the database".to_owned(),
        (None, Some(dir)) => format!("agents from {}", dir.display()),
        (None, None) => "agents from the embedded samples".to_owned(),
    };
    let mut out = format!(
        "flowgate is serving on {addr} ({store}; engine {}).\n\n  Chat page:  http://{addr}/  (it asks for a token)\n",
        config.engine_url
    );
    if config.auth.jwt_secret.is_some() {
        out.push_str(
            "  A token:    flowgate token --sub <user>   (signed with the same FLOWGATE_JWT_SECRET)\n",
        );
        out.push_str(&format!(
            "  Terminal:   export FLOWGATE_URL=ws://{addr} FLOWGATE_TOKEN=$(flowgate token --sub <user>)\n              flowgate chat <agent> \"Hello\"\n"
        ));
    } else {
        out.push_str(
            "  Tokens:     from your identity provider (this gateway verifies them with its public key)\n",
        );
        out.push_str(&format!(
            "  Terminal:   export FLOWGATE_URL=ws://{addr} FLOWGATE_TOKEN=<a token>\n              flowgate chat <agent> \"Hello\"\n"
        ));
    }
    let admin = config.admin_listen.unwrap_or(addr);
    out.push_str(&format!(
        "  Health:     http://{admin}/readyz   Metrics: http://{admin}/metrics   Ctrl-C stops it."
    ));
    out
}

/// The outbound TLS client configuration, built once when anything outbound may use TLS: a
/// `wss://` engine or hop upstream, an `https://` auth service, or a CA file to check.
fn outbound_tls(config: &GatewayConfig) -> Result<Option<Arc<rustls::ClientConfig>>, StartError> {
    let needed = config.engine_url.starts_with("wss://")
        || config.hops.iter().any(|h| h.upstream.starts_with("wss://"))
        || config
            .hop_auth_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
        || config.outbound_ca_file.is_some()
        || config.insecure_outbound_tls_for_tests;
    if !needed {
        return Ok(None);
    }
    if config.insecure_outbound_tls_for_tests {
        tracing::warn!(
            "--insecure-outbound-tls-for-tests is on: the certificates of the engine, hop \
             upstreams and the auth service are NOT checked; never use this outside a test"
        );
    }
    let trust = crate::tls::TlsTrust {
        ca_file: config.outbound_ca_file.clone(),
        insecure_skip_verify: config.insecure_outbound_tls_for_tests,
    };
    Ok(Some(crate::tls::client_config(&trust)?))
}

/// Outbound HTTP (the hops' auth-service check): no proxy from the environment, no redirects,
/// each call bounded by its caller; TLS with the outbound configuration when there is one.
fn http_client(tls: Option<&rustls::ClientConfig>) -> Result<reqwest::Client, StartError> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls.clone());
    }
    builder.build().map_err(|e| StartError::Http(e.to_string()))
}
