//! The gateway's one typed configuration ([`GatewayConfig`]) and the [`Secret`] type.
//!
//! Every field is a clap flag with an environment fallback; its doc comment is the user's
//! documentation (the tables of `docs/configuration.md` are generated from these definitions and
//! checked by `tests/it/readme.rs`). Tests build values with [`GatewayConfig::for_tests`] and
//! never touch the environment. The engine's settings live in [`crate::engine::EngineConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::workflow::FlowFormat;

pub use crate::secret::Secret;

/// The async runtime of the commands that serve (`serve`, `engine`, `demo`, `bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Async runtime threads: `0` = one per CPU core, `1` = a single-threaded runtime (no
    /// cross-thread wake-ups: the cheapest per event when one core is enough).
    #[arg(long, env = "FLOWGATE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (development).
    #[default]
    Text,
    /// One JSON object per line (production).
    Json,
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Gateway settings (`flowgate serve`; `flowgate demo` uses the same set).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Address the gateway listens on (HTTP and WebSocket).
    #[arg(long, env = "FLOWGATE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// A second address for `/metrics` and `/readyz` (with `/healthz`), e.g. on a private
    /// network; when set, the public listener no longer serves `/metrics` and `/readyz`.
    #[arg(long, env = "FLOWGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Postgres connection URL of the agent database (tables `agent`, `published_agent`,
    /// `unpublished_agent`; created by the embedded migrations if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "flows_dir"
    )]
    pub database_url: Option<Secret>,

    /// A folder with `agents.json` and workflow files, used instead of Postgres.
    #[arg(long, env = "FLOWGATE_FLOWS_DIR")]
    pub flows_dir: Option<PathBuf>,

    /// Base URL of the execution engine; the gateway appends `/ws/execute/<flow_id>`.
    /// `ws://`, or `wss://` for an engine on another host: its certificate is verified against
    /// the system's roots and `--outbound-ca-file`.
    #[arg(
        long,
        env = "FLOWGATE_ENGINE_URL",
        default_value = "ws://127.0.0.1:8001"
    )]
    pub engine_url: String,

    /// Extra trusted CA certificates (PEM) for the gateway's outbound TLS: a `wss://`
    /// `--engine-url`, `wss://` hop upstreams, an `https://` `--hop-auth-url`. They are added to
    /// the system's roots, which are always trusted.
    #[arg(long, env = "FLOWGATE_OUTBOUND_CA_FILE", value_name = "PATH")]
    pub outbound_ca_file: Option<PathBuf>,

    /// FOR TESTS ONLY: accept any certificate on the gateway's outbound TLS (the engine, hop
    /// upstreams, the auth service), which lets anyone on the path read and change the traffic.
    /// A warning is logged at startup.
    #[arg(long, env = "FLOWGATE_INSECURE_OUTBOUND_TLS_FOR_TESTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure_outbound_tls_for_tests: bool,

    /// Encoding of the flow definition sent to the engine (handshake frame 2): `yaml` for
    /// flowgate's engine, `json` for the original Python engine.
    #[arg(long, env = "FLOWGATE_ENGINE_FLOW_FORMAT", value_enum, default_value_t = FlowFormat::Yaml)]
    pub engine_flow_format: FlowFormat,

    /// Client token verification (`--jwt-*`).
    #[command(flatten)]
    pub auth: crate::auth::AuthConfig,

    /// Accept the token in the `?token=` query parameter (compat with existing frontends).
    #[arg(long, env = "FLOWGATE_ALLOW_QUERY_TOKEN", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_query_token: bool,

    /// Shared key the gateway signs its short-lived engine-hop token with (the engine's
    /// `FLOWGATE_ENGINE_KEY`). Without it the gateway connects to the engine unauthenticated.
    #[arg(long, env = "FLOWGATE_ENGINE_KEY", hide_env_values = true)]
    pub engine_key: Option<Secret>,

    /// Time allowed to open the engine connection.
    #[arg(long, env = "FLOWGATE_ENGINE_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub engine_connect_timeout: Duration,

    /// Time allowed for each step of the engine handshake.
    #[arg(long, env = "FLOWGATE_ENGINE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub engine_handshake_timeout: Duration,

    /// Time given to the engine to take the close frame when a run ends or is cancelled; then
    /// its connection is dropped.
    #[arg(long, env = "FLOWGATE_ENGINE_CLOSE_TIMEOUT", default_value = "200ms", value_parser = duration)]
    pub engine_close_timeout: Duration,

    /// A run fails with `engine_timeout` when the engine sends nothing for this long.
    #[arg(long, env = "FLOWGATE_ENGINE_IDLE_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub engine_idle_timeout: Duration,

    /// Largest frame accepted from the engine (bytes); larger is `engine_protocol_error`.
    #[arg(long, env = "FLOWGATE_MAX_ENGINE_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_engine_frame_bytes: usize,

    /// Largest message accepted from a client (bytes); larger closes the socket with 1009.
    #[arg(long, env = "FLOWGATE_MAX_CLIENT_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_client_message_bytes: usize,

    /// Time allowed for one store query (and for acquiring a pooled connection). It is also
    /// the run log connections' `idle_in_transaction_session_timeout`: Postgres ends a
    /// transaction left open longer (a frozen or cut-off gateway's), so its row locks never
    /// hold up the gateway that takes its runs over.
    #[arg(long, env = "FLOWGATE_STORE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub store_timeout: Duration,

    /// How long an agent row or stored workflow read from Postgres is reused as it is (0 =
    /// every run asks the database); during the next period it is still used while one
    /// background query renews it. A run of an unchanged agent then never waits for the
    /// database, and a change (publish, edit, owner) is seen within twice this time.
    #[arg(long, env = "FLOWGATE_STORE_CACHE_TTL", default_value = "1s", value_parser = duration)]
    pub store_cache_ttl: Duration,

    /// Maximum pooled Postgres connections of the agent store (the run log has its own pool,
    /// `--runlog-db-connections`).
    #[arg(long, env = "FLOWGATE_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Postgres connections of the run log (its writer, heartbeat and replays), a pool of its
    /// own: a slow run-log write never makes an agent lookup wait, nor the reverse.
    #[arg(long, env = "FLOWGATE_RUNLOG_DB_CONNECTIONS", default_value_t = 3)]
    pub runlog_db_connections: u32,

    /// WebSocket read buffer per socket (client and engine), in bytes. tungstenite zero-fills
    /// the whole buffer before every read attempt (also the ones that find nothing) and keeps it
    /// resident per socket; 2 KiB holds chat-sized frames (larger ones are read in several
    /// steps) and costs ~25 % fewer instructions per relayed event than 4 KiB.
    #[arg(long, env = "FLOWGATE_WS_READ_BUFFER_BYTES", default_value_t = 2048)]
    pub ws_read_buffer_bytes: usize,

    /// WebSocket write buffer per socket, in bytes: small frames are collected up to this size
    /// before a write (a flush always writes everything). The buffer keeps the largest size it
    /// ever grew to for the socket's life, so a small value is what keeps idle sessions small
    /// (16 KiB cost 3.7 KiB more per idle session than 512 B).
    #[arg(long, env = "FLOWGATE_WS_WRITE_BUFFER_BYTES", default_value_t = 512)]
    pub ws_write_buffer_bytes: usize,

    /// Most frames written to a client in one batch (one flush).
    #[arg(long, env = "FLOWGATE_CLIENT_BATCH", default_value_t = 64)]
    pub client_batch: usize,

    /// When a client is this many frames behind its run, consecutive `llm_chunk`s of one
    /// element are merged into one frame (`merged_seqs` says which it covers).
    #[arg(long, env = "FLOWGATE_MERGE_LAG", default_value_t = 32)]
    pub merge_lag: usize,

    /// A client that falls this many frames further behind its run than it was when it
    /// attached is closed with 4408 (it can resume from the log).
    #[arg(long, env = "FLOWGATE_MAX_CLIENT_LAG", default_value_t = 20_000)]
    pub max_client_lag: usize,

    /// Most frames one run may produce (its replay buffer); a longer run fails with `internal`.
    #[arg(long, env = "FLOWGATE_MAX_RUN_FRAMES", default_value_t = 100_000)]
    pub max_run_frames: usize,

    /// A run whose client disconnected keeps going this long so a `resume` can pick it up;
    /// then it is cancelled. Finished runs stay resumable from memory this long too.
    #[arg(long, env = "FLOWGATE_DETACH_GRACE", default_value = "30s", value_parser = duration)]
    pub detach_grace: Duration,

    /// Cancel a run as soon as its client disconnects (no detach grace).
    #[arg(long, env = "FLOWGATE_CANCEL_ON_DISCONNECT", default_value_t = false, action = clap::ArgAction::Set)]
    pub cancel_on_disconnect: bool,

    /// Most runs in progress per user (`too_many_runs` beyond).
    #[arg(long, env = "FLOWGATE_MAX_RUNS_PER_USER", default_value_t = 8)]
    pub max_runs_per_user: usize,

    /// Runs in progress at once from all anonymous callers together (`--allow-anonymous`);
    /// each anonymous socket is its own principal, so this is their shared limit.
    #[arg(long, env = "FLOWGATE_MAX_ANONYMOUS_RUNS", default_value_t = 32)]
    pub max_anonymous_runs: usize,

    /// Run-log records buffered for the Postgres writer. When it is full, a run waits for room
    /// (at most `--runlog-wait`) and reads nothing from its engine meanwhile.
    #[arg(long, env = "FLOWGATE_RUNLOG_BUFFER", default_value_t = DEFAULT_RUNLOG_BUFFER)]
    pub runlog_buffer: usize,

    /// How long a run waits for room when the run log's buffer is full (the database is slower
    /// than the runs): meanwhile it reads nothing from the engine; past it, the run ends with
    /// `store_unavailable` and the records that did not fit are counted as lost.
    #[arg(long, env = "FLOWGATE_RUNLOG_WAIT", default_value = "10s", value_parser = duration)]
    pub runlog_wait: Duration,

    /// Finished runs (with their frames) older than this are deleted from the Postgres run log,
    /// a few hundred per heartbeat; resuming them then says the run is unknown.
    #[arg(long, env = "FLOWGATE_RUNLOG_RETENTION", default_value = "7days", value_parser = duration)]
    pub runlog_retention: Duration,

    /// How long the Postgres run-log writer collects records before it writes them in one
    /// transaction (sooner when a batch is full or a resume waits for the log); `0` writes at
    /// once. One transaction per few frames costs far more gateway CPU than one per batch.
    #[arg(long, env = "FLOWGATE_RUNLOG_LINGER", default_value = "10ms", value_parser = duration)]
    pub runlog_linger: Duration,

    /// Most run-log records the Postgres writer puts in one transaction.
    #[arg(long, env = "FLOWGATE_RUNLOG_BATCH", default_value_t = crate::runlog::DEFAULT_BATCH_MAX)]
    pub runlog_batch: usize,

    /// Attempts of a run-log batch the database fails before its records are given up (counted
    /// in `flowgate_runlog_events_dropped`); a batch the database refuses is retried run by run.
    #[arg(long, env = "FLOWGATE_RUNLOG_WRITE_ATTEMPTS", default_value_t = crate::runlog::DEFAULT_WRITE_ATTEMPTS)]
    pub runlog_write_attempts: u32,

    /// Pause between two attempts of a failed run-log batch.
    #[arg(long, env = "FLOWGATE_RUNLOG_RETRY_DELAY", default_value = "200ms", value_parser = duration)]
    pub runlog_retry_delay: Duration,

    /// Most expired runs deleted per heartbeat (`--runlog-retention`; keeps each delete short).
    #[arg(long, env = "FLOWGATE_RUNLOG_PRUNE_BATCH", default_value_t = crate::runlog::DEFAULT_PRUNE_BATCH)]
    pub runlog_prune_batch: usize,

    /// Runs kept by the in-memory run log (files store); oldest finished runs are evicted.
    #[arg(long, env = "FLOWGATE_RUNLOG_MEMORY_RUNS", default_value_t = 1000)]
    pub runlog_memory_runs: usize,

    /// Interval of this gateway's heartbeat in the run log; runs of a gateway silent for 6
    /// intervals are marked `failed` (`gateway_lost`) by the others.
    #[arg(long, env = "FLOWGATE_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// Time allowed for one write to a client socket before the client is dropped as too slow.
    #[arg(long, env = "FLOWGATE_CLIENT_WRITE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub client_write_timeout: Duration,

    /// Time a too-slow client is given to take the frames already queued for it and the 4408
    /// close frame; after it the connection is dropped.
    #[arg(long, env = "FLOWGATE_CLIENT_CLOSE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub client_close_timeout: Duration,

    /// Interval of WebSocket pings to clients.
    #[arg(long, env = "FLOWGATE_PING_INTERVAL", default_value = "20s", value_parser = duration)]
    pub ping_interval: Duration,

    /// On shutdown, time given to running runs to finish before clients are closed with 1012.
    #[arg(long, env = "FLOWGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Browser origins allowed to open a WebSocket (comma list, e.g.
    /// `https://chat.example.com`). Requests without `Origin` (non-browser clients) are always
    /// allowed; with the list empty, only same-origin pages (Origin host = Host header) are.
    /// A disallowed Origin gets 403 before the upgrade. The listed origins may also call the
    /// HTTP dialects (`openai`, `vercel`, `agui`) from the browser (CORS).
    #[arg(long, env = "FLOWGATE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// WebSocket upgrades allowed per second per client address (burst: twice as many);
    /// beyond, 429 before the upgrade. 0 = unlimited.
    #[arg(long, env = "FLOWGATE_UPGRADES_PER_SECOND", default_value_t = 20)]
    pub upgrades_per_second: u32,

    /// Messages a client may send per second on one socket (burst: twice as many); beyond,
    /// the socket is closed with 4429. 0 = unlimited.
    #[arg(
        long,
        env = "FLOWGATE_CLIENT_MESSAGES_PER_SECOND",
        default_value_t = 20
    )]
    pub client_messages_per_second: u32,

    /// Time a client has to send a complete HTTP request header (also the idle time allowed
    /// between requests on a kept-alive connection); slower connections are closed. The
    /// defence against clients that open connections and never finish a request (slowloris).
    #[arg(long, env = "FLOWGATE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// Most TCP connections open at once (HTTP requests and WebSockets); beyond, a new
    /// connection is closed at once. Lowered at startup to fit the process's open-file limit.
    #[arg(long, env = "FLOWGATE_MAX_CONNECTIONS", default_value_t = 12_000)]
    pub max_connections: usize,

    /// Most TCP connections open at once from one client address; beyond, a new connection from
    /// it is closed at once. 0 = unlimited (behind a proxy every client has the proxy's address).
    #[arg(
        long,
        env = "FLOWGATE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_connections_per_address: usize,

    /// A socket opened without a token must authenticate (`{"type":"auth"}` with a valid token)
    /// within this time, else it gets `unauthenticated` and is closed with 4401.
    #[arg(long, env = "FLOWGATE_AUTH_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub auth_timeout: Duration,

    /// Most client sockets open at once; beyond, new sockets are closed with 1013.
    #[arg(long, env = "FLOWGATE_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Engine event types never forwarded to clients (comma list). `llm_prompt` may contain
    /// hidden prompts, so it is dropped by default; pass an empty value to forward everything.
    /// Terminal events are always forwarded.
    #[arg(
        long,
        env = "FLOWGATE_DROP_EVENTS",
        value_delimiter = ',',
        default_value = "llm_prompt"
    )]
    pub drop_events: Vec<String>,

    /// Most agents with their own `agent` label in `/metrics`; runs of further agents are
    /// counted under `(other)`, runs of agents that do not exist under `(unknown)`.
    #[arg(long, env = "FLOWGATE_METRICS_MAX_AGENTS", default_value_t = DEFAULT_METRICS_MAX_AGENTS)]
    pub metrics_max_agents: usize,

    /// Client protocols served (comma list, docs/dialects.md): `neuralabs` (the native
    /// protocol, always on), `adk` (barka/ovara: `/ws/{client_id}` and ADK's HTTP routes; needs
    /// `--adk-agent-id`), `omni2` (the OMNI2 widget: `/ws/chat` and its SSE twin; needs
    /// `--omni2-agent-id`), `copilot` (the OmniTrack copilot: `/copilot`; needs
    /// `--copilot-agent-id`), `citizen` (Leoma: session minting and its socket; needs
    /// `--citizen-agent-id`).
    #[arg(
        long,
        env = "FLOWGATE_DIALECTS",
        value_delimiter = ',',
        value_enum,
        default_value = "neuralabs"
    )]
    pub dialects: Vec<DialectId>,

    /// The agent the `omni2` routes run (`/ws/chat` and `POST /api/v1/chat/stream`; the
    /// widget names none).
    #[arg(long, env = "FLOWGATE_OMNI2_AGENT_ID")]
    pub omni2_agent_id: Option<String>,

    /// Text sent once when an `omni2` socket opens (empty: no welcome).
    #[arg(long, env = "FLOWGATE_OMNI2_WELCOME_TEXT", default_value = "")]
    pub omni2_welcome_text: String,

    /// How the `omni2` welcome is sent: `welcome` (`{"type":"welcome","text"}`, the design
    /// note) or `token` (a `token` frame wrapped in blank lines: the shipped widget renders
    /// only tokens).
    #[arg(long, env = "FLOWGATE_OMNI2_WELCOME_AS", value_enum, default_value_t = WelcomeAs::Welcome)]
    pub omni2_welcome_as: WelcomeAs,

    /// The agent the `copilot` route (`/copilot`) runs (the hook names none).
    #[arg(long, env = "FLOWGATE_COPILOT_AGENT_ID")]
    pub copilot_agent_id: Option<String>,

    /// The agent the `citizen` routes run (`POST /api/agent/session` and the socket on
    /// `--citizen-path`).
    #[arg(long, env = "FLOWGATE_CITIZEN_AGENT_ID")]
    pub citizen_agent_id: Option<String>,

    /// The agent `POST /api/chat` (`vercel`) runs when the body names no `agentId` (without
    /// it, the body must name one).
    #[arg(long, env = "FLOWGATE_VERCEL_AGENT_ID")]
    pub vercel_agent_id: Option<String>,

    /// Path of the `citizen` socket (`?sessionId=`); on `/` a plain `GET /` still gets the
    /// chat page.
    #[arg(long, env = "FLOWGATE_CITIZEN_PATH", default_value = "/")]
    pub citizen_path: String,

    /// Idle lifetime of a citizen session (minted by `POST /api/agent/session`).
    #[arg(long, env = "FLOWGATE_CITIZEN_SESSION_TTL", default_value = "2h", value_parser = duration)]
    pub citizen_session_ttl: Duration,

    /// Largest citizen frame (they carry base64 attachments: an 8 MB image is ~10.7 MB).
    #[arg(long, env = "FLOWGATE_CITIZEN_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_CITIZEN_MAX_MESSAGE_BYTES)]
    pub citizen_max_message_bytes: usize,

    /// Flat citizen frames: stream `{"delta"}` frames then `{"done":true}` instead of one frame
    /// per turn (the shipped chat renders only the newest frame of a burst).
    #[arg(long, env = "FLOWGATE_CITIZEN_STREAM_DELTAS")]
    pub citizen_stream_deltas: bool,

    /// Citizen sessions need a JWT too: minting requires a valid token (the session is its
    /// user's) and the socket must present a token of the same user. Only for frontends that add
    /// one (the design note's sends none).
    #[arg(long, env = "FLOWGATE_CITIZEN_REQUIRE_TOKEN")]
    pub citizen_require_token: bool,

    /// The `websocketUrl` a minted citizen session names (default: built from the request's
    /// `Host` and `--citizen-path`).
    #[arg(long, env = "FLOWGATE_CITIZEN_WEBSOCKET_URL")]
    pub citizen_websocket_url: Option<String>,

    /// The agent the `adk` route runs (its clients name none).
    #[arg(long, env = "FLOWGATE_ADK_AGENT_ID")]
    pub adk_agent_id: Option<String>,

    /// The token claim holding the user id on the `adk` route (barka's tokens carry `id`,
    /// `email`, `role` and no `sub`); a numeric claim is read as its decimal string.
    #[arg(long, env = "FLOWGATE_ADK_JWT_USER_CLAIM", default_value = DEFAULT_ADK_USER_CLAIM)]
    pub adk_jwt_user_claim: String,

    /// Messages (user and answer texts) remembered per conversation for the dialects whose
    /// clients send only the new message; 0 remembers nothing.
    #[arg(long, env = "FLOWGATE_HISTORY_MESSAGES", default_value_t = DEFAULT_HISTORY_MESSAGES)]
    pub history_messages: usize,

    /// Most conversations remembered at once (the oldest is forgotten first); each text is kept
    /// up to 32 KiB.
    #[arg(long, env = "FLOWGATE_HISTORY_CONVERSATIONS", default_value_t = DEFAULT_HISTORY_CONVERSATIONS)]
    pub history_conversations: usize,

    /// A verified proxy hop, `PATH=UPSTREAM` (repeatable, or comma-separated), e.g.
    /// `/ws/chat=ws://traefik:8090/ws/chat`: clients connecting to PATH are verified (JWT) and
    /// relayed unparsed to the upstream WebSocket server, with the token as
    /// `Authorization: Bearer` and `X-User-Id` from its claims (docs/dialects.md).
    #[arg(long = "hop", env = "FLOWGATE_HOPS", value_delimiter = ',', value_parser = parse_hop)]
    pub hops: Vec<Hop>,

    /// Time allowed for a hop's upstream connect and upgrade (and for the auth service's
    /// answer, `--hop-auth-url`).
    #[arg(long, env = "FLOWGATE_HOP_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub hop_connect_timeout: Duration,

    /// An auth service's validate endpoint the hops also ask before connecting upstream (the
    /// OMNI2 chain's `GET http://mcp-auth-service:8700/api/v1/auth/validate`), so revoked
    /// tokens count: it gets the token as `Authorization: Bearer`; 200 admits the client and its
    /// `X-User-Id`, `X-User-Username` and `X-User-Role` go upstream; 401 and 403 refuse it
    /// (4401, 4403); anything else, or no answer in time, refuses it too (fails closed, 1011).
    #[arg(long, env = "FLOWGATE_HOP_AUTH_URL", value_parser = parse_http_url)]
    pub hop_auth_url: Option<String>,

    /// NATS server(s) for running several gateways as one (docs/scaling.md): any gateway then
    /// resumes or cancels any run. Needs --database-url (the shared run log). Unset: one
    /// gateway, as always.
    #[arg(long, env = "FLOWGATE_NATS_URL")]
    pub nats_url: Option<String>,

    /// The JetStream stream that carries the runs' frames between gateways.
    #[arg(long, env = "FLOWGATE_NATS_STREAM", default_value = "FLOWGATE_RUNS")]
    pub nats_stream: String,

    /// Frames older than this leave the stream (finished runs replay from the run log).
    #[arg(long, env = "FLOWGATE_NATS_MAX_AGE", default_value = "1h", value_parser = duration)]
    pub nats_max_age: Duration,

    /// Most bytes the stream keeps (the oldest frames are dropped first).
    #[arg(long, env = "FLOWGATE_NATS_MAX_BYTES", default_value_t = 1 << 30)]
    pub nats_max_bytes: i64,

    /// Time allowed for a NATS call: the connect, a stream call, a request to another gateway
    /// (a cancel that gets no answer in time treats the owner as lost).
    #[arg(long, env = "FLOWGATE_NATS_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub nats_timeout: Duration,

    /// Frames waiting to be published to NATS; beyond, they are counted as lost.
    #[arg(long, env = "FLOWGATE_NATS_QUEUE", default_value_t = 65_536)]
    pub nats_queue: usize,

    /// Refused tokens an address may present on the dialect and hop routes per minute (0: no
    /// limit); past that, their upgrades get HTTP 401 before any socket (DIALECTS.md rule 11:
    /// clients that reconnect on every close count failed connects and give up).
    #[arg(long, env = "FLOWGATE_REFUSED_TOKENS_PER_MINUTE", default_value_t = 10)]
    pub refused_tokens_per_minute: u32,

    /// Proxies (comma list of IP addresses) whose `X-Forwarded-For` names the client for the
    /// per-address limits (upgrades, citizen session minting); any other peer's header is
    /// ignored.
    #[arg(long, env = "FLOWGATE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Largest request body of the HTTP dialects (`adk`'s `/run_sse`, `/run` and session
    /// routes); larger ones get 413.
    #[arg(long, env = "FLOWGATE_MAX_REQUEST_BODY_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BODY_BYTES)]
    pub max_request_body_bytes: usize,

    /// Interval of the comment lines (`: keep-alive`) an SSE stream sends while a run is quiet,
    /// so proxies and clients do not time it out.
    #[arg(long, env = "FLOWGATE_SSE_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub sse_heartbeat: Duration,

    /// Log output format.
    #[arg(long, env = "FLOWGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Default of `--citizen-max-message-bytes` (12 MiB).
pub const DEFAULT_CITIZEN_MAX_MESSAGE_BYTES: usize = 12 * 1024 * 1024;

/// Default of `--max-request-body-bytes`.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// A client protocol (`--dialects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DialectId {
    /// The native protocol (docs/protocol.md) at `/api/chat/execute/{agent_id}`.
    Neuralabs,
    /// barka/ovara (Google ADK style) at `/ws/{client_id}` and ADK's HTTP routes.
    Adk,
    /// The OMNI2 dashboard widget at `/ws/chat` and `POST /api/v1/chat/stream`.
    Omni2,
    /// The OmniTrack AI copilot hook at `/copilot`.
    Copilot,
    /// Citizen Interface "Leoma": `POST /api/agent/session` and the socket on `--citizen-path`.
    Citizen,
    /// OpenAI Chat Completions: `POST /v1/chat/completions`, `GET /v1/models`.
    Openai,
    /// The Vercel AI SDK's UI message stream: `POST /api/chat` and its resume and stop routes.
    Vercel,
    /// AG-UI over SSE: `POST /agui/{agent_id}`.
    Agui,
}

/// How the welcome is sent (`--omni2-welcome-as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WelcomeAs {
    /// `{"type":"welcome","text":…}` (the design note).
    #[default]
    Welcome,
    /// `{"type":"token","text":"\n\n…\n\n"}` (the shipped widget renders only tokens).
    Token,
}

/// A proxy hop (`--hop PATH=UPSTREAM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub path: String,
    pub upstream: String,
}

fn parse_hop(text: &str) -> Result<Hop, String> {
    let (path, upstream) = text.split_once('=').ok_or_else(|| {
        format!("`{text}` is not PATH=UPSTREAM, e.g. /ws/chat=ws://traefik:8090/ws/chat")
    })?;
    let path = path.trim();
    let upstream = upstream.trim();
    if !path.starts_with('/') || path.contains(['?', '#', '{', '}', ' ', '*']) {
        return Err(format!(
            "hop path `{path}` must be a plain path starting with /"
        ));
    }
    let scheme_end = if upstream.starts_with("ws://") {
        "ws://".len()
    } else if upstream.starts_with("wss://") {
        "wss://".len()
    } else {
        0
    };
    if scheme_end == 0 || upstream.len() <= scheme_end {
        return Err(format!(
            "hop upstream `{upstream}` must be a ws:// or wss:// URL"
        ));
    }
    Ok(Hop {
        path: path.to_owned(),
        upstream: upstream.to_owned(),
    })
}

fn parse_http_url(text: &str) -> Result<String, String> {
    let url = text.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` must be an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || url.contains(char::is_whitespace) {
        return Err(format!(
            "`{url}` has no host: e.g. http://auth:8700/api/v1/auth/validate"
        ));
    }
    Ok(url.to_owned())
}

/// Default of `--adk-jwt-user-claim`.
pub const DEFAULT_ADK_USER_CLAIM: &str = "id";

/// Default of `--history-messages`.
pub const DEFAULT_HISTORY_MESSAGES: usize = 10;

/// Default of `--history-conversations`.
pub const DEFAULT_HISTORY_CONVERSATIONS: usize = 10_000;

/// Default of `--runlog-buffer`: the run log's own default.
pub const DEFAULT_RUNLOG_BUFFER: usize = crate::runlog::DEFAULT_BUFFER;

/// Default of `--runlog-retention`: the run log's own default.
pub const DEFAULT_RUNLOG_RETENTION: Duration = crate::runlog::DEFAULT_RETENTION;

/// Default of `--metrics-max-agents`.
pub const DEFAULT_METRICS_MAX_AGENTS: usize = 200;

impl GatewayConfig {
    /// A configuration for tests: port 0, the given engine, a known JWT secret, short timeouts.
    pub fn for_tests(engine_url: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            admin_listen: None,
            database_url: None,
            flows_dir: None,
            engine_url: engine_url.into(),
            outbound_ca_file: None,
            insecure_outbound_tls_for_tests: false,
            engine_flow_format: FlowFormat::Yaml,
            auth: crate::auth::AuthConfig::hs256_for_tests("test-secret"),
            allow_query_token: true,
            engine_key: None,
            engine_connect_timeout: Duration::from_secs(2),
            engine_handshake_timeout: Duration::from_secs(5),
            engine_close_timeout: Duration::from_millis(200),
            engine_idle_timeout: Duration::from_secs(10),
            max_engine_frame_bytes: 4 * 1024 * 1024,
            max_client_message_bytes: 64 * 1024,
            store_timeout: Duration::from_secs(3),
            db_max_connections: 5,
            store_cache_ttl: Duration::from_secs(1),
            runlog_db_connections: 3,
            ws_read_buffer_bytes: 2048,
            ws_write_buffer_bytes: 512,
            client_batch: 64,
            merge_lag: 32,
            max_client_lag: 20_000,
            max_run_frames: 100_000,
            detach_grace: Duration::from_secs(30),
            cancel_on_disconnect: false,
            max_runs_per_user: 8,
            max_anonymous_runs: 32,
            runlog_buffer: DEFAULT_RUNLOG_BUFFER,
            runlog_retention: DEFAULT_RUNLOG_RETENTION,
            runlog_wait: Duration::from_secs(10),
            runlog_linger: Duration::from_millis(10),
            runlog_memory_runs: 1000,
            runlog_batch: crate::runlog::DEFAULT_BATCH_MAX,
            runlog_write_attempts: crate::runlog::DEFAULT_WRITE_ATTEMPTS,
            runlog_retry_delay: Duration::from_millis(200),
            runlog_prune_batch: crate::runlog::DEFAULT_PRUNE_BATCH,
            heartbeat_interval: Duration::from_secs(10),
            client_write_timeout: Duration::from_secs(5),
            client_close_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(2),
            allowed_origins: Vec::new(),
            upgrades_per_second: 0,
            client_messages_per_second: 0,
            max_sessions: 10_000,
            drop_events: vec!["llm_prompt".into()],
            header_read_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            max_connections: 12_000,
            max_connections_per_address: 256,
            metrics_max_agents: DEFAULT_METRICS_MAX_AGENTS,
            dialects: vec![DialectId::Neuralabs],
            adk_agent_id: None,
            omni2_agent_id: None,
            copilot_agent_id: None,
            vercel_agent_id: None,
            citizen_agent_id: None,
            citizen_path: "/".into(),
            citizen_session_ttl: Duration::from_secs(2 * 3600),
            citizen_max_message_bytes: DEFAULT_CITIZEN_MAX_MESSAGE_BYTES,
            citizen_stream_deltas: false,
            citizen_require_token: false,
            citizen_websocket_url: None,
            omni2_welcome_text: String::new(),
            omni2_welcome_as: WelcomeAs::Welcome,
            adk_jwt_user_claim: DEFAULT_ADK_USER_CLAIM.into(),
            history_messages: DEFAULT_HISTORY_MESSAGES,
            history_conversations: DEFAULT_HISTORY_CONVERSATIONS,
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            hops: Vec::new(),
            trusted_proxies: Vec::new(),
            refused_tokens_per_minute: 10,
            hop_connect_timeout: Duration::from_secs(5),
            hop_auth_url: None,
            nats_url: None,
            nats_stream: "FLOWGATE_RUNS".into(),
            nats_max_age: Duration::from_secs(3600),
            nats_max_bytes: 1 << 30,
            nats_timeout: Duration::from_secs(2),
            nats_queue: 65_536,
            sse_heartbeat: Duration::from_secs(15),
            log_format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: GatewayConfig,
    }

    #[test]
    fn a_hop_is_a_plain_path_and_a_ws_or_wss_upstream() {
        let hop = parse_hop("/ws/chat=ws://traefik:8090/ws/chat").unwrap();
        assert_eq!(hop.path, "/ws/chat");
        assert_eq!(hop.upstream, "ws://traefik:8090/ws/chat");
        assert!(parse_hop("/ws/chat").unwrap_err().contains("PATH=UPSTREAM"));
        assert!(
            parse_hop("ws/chat=ws://x")
                .unwrap_err()
                .contains("starting with /")
        );
        assert_eq!(parse_hop("/a=wss://x").unwrap().upstream, "wss://x");
        assert!(
            parse_hop("/a=wss://")
                .unwrap_err()
                .contains("ws:// or wss://")
        );
        assert!(
            parse_hop("/a=https://x")
                .unwrap_err()
                .contains("ws:// or wss://")
        );
        assert!(
            parse_hop("/a=http://x")
                .unwrap_err()
                .contains("ws:// or wss:// URL")
        );
        assert_eq!(
            parse_http_url("http://auth:8700/api/v1/auth/validate").unwrap(),
            "http://auth:8700/api/v1/auth/validate"
        );
        assert!(parse_http_url("auth:8700").unwrap_err().contains("http://"));
        assert!(
            parse_http_url("https:///x")
                .unwrap_err()
                .contains("no host")
        );
    }

    /// The limits tests do not shorten must be the production defaults, written once.
    #[test]
    fn test_configs_share_the_production_limits() {
        let parsed = Cli::try_parse_from(["flowgate"])
            .expect("defaults parse")
            .config;
        let tests = GatewayConfig::for_tests("ws://127.0.0.1:1");
        assert_eq!(parsed.runlog_buffer, tests.runlog_buffer);
        assert_eq!(
            parsed.runlog_buffer,
            crate::runlog::PgRunLogConfig::default().buffer
        );
        assert_eq!(parsed.runlog_retention, tests.runlog_retention);
        assert_eq!(
            parsed.runlog_retention,
            crate::runlog::PgRunLogConfig::default().retention
        );
        assert_eq!(parsed.runlog_linger, tests.runlog_linger);
        let log = crate::runlog::PgRunLogConfig::default();
        assert_eq!(parsed.runlog_linger, log.linger);
        assert_eq!(parsed.runlog_batch, log.batch_max);
        assert_eq!(parsed.runlog_batch, tests.runlog_batch);
        assert_eq!(parsed.runlog_write_attempts, log.write_attempts);
        assert_eq!(parsed.runlog_write_attempts, tests.runlog_write_attempts);
        assert_eq!(parsed.runlog_retry_delay, log.retry_delay);
        assert_eq!(parsed.runlog_retry_delay, tests.runlog_retry_delay);
        assert_eq!(parsed.runlog_prune_batch, log.prune_batch);
        assert_eq!(parsed.runlog_prune_batch, tests.runlog_prune_batch);
        assert_eq!(parsed.runlog_wait, tests.runlog_wait);
        assert_eq!(parsed.runlog_db_connections, tests.runlog_db_connections);
        assert_eq!(parsed.store_cache_ttl, tests.store_cache_ttl);
        assert_eq!(parsed.dialects, tests.dialects);
        assert_eq!(parsed.omni2_welcome_text, tests.omni2_welcome_text);
        assert_eq!(parsed.omni2_welcome_as, tests.omni2_welcome_as);
        assert_eq!(parsed.citizen_path, tests.citizen_path);
        assert_eq!(parsed.citizen_session_ttl, tests.citizen_session_ttl);
        assert_eq!(
            parsed.citizen_max_message_bytes,
            tests.citizen_max_message_bytes
        );
        assert_eq!(parsed.adk_jwt_user_claim, tests.adk_jwt_user_claim);
        assert_eq!(parsed.history_messages, tests.history_messages);
        assert_eq!(parsed.history_conversations, tests.history_conversations);
        assert_eq!(parsed.max_request_body_bytes, tests.max_request_body_bytes);
        assert_eq!(parsed.sse_heartbeat, tests.sse_heartbeat);
        assert_eq!(parsed.hop_connect_timeout, tests.hop_connect_timeout);
        assert_eq!(parsed.nats_stream, tests.nats_stream);
        assert_eq!(parsed.nats_max_age, tests.nats_max_age);
        assert_eq!(parsed.nats_max_bytes, tests.nats_max_bytes);
        assert_eq!(parsed.nats_timeout, tests.nats_timeout);
        assert_eq!(parsed.nats_queue, tests.nats_queue);
        assert_eq!(
            parsed.refused_tokens_per_minute,
            tests.refused_tokens_per_minute
        );
        assert_eq!(parsed.max_connections, tests.max_connections);
        assert_eq!(
            parsed.max_connections_per_address,
            tests.max_connections_per_address
        );
        assert_eq!(parsed.header_read_timeout, tests.header_read_timeout);
        assert_eq!(parsed.auth_timeout, tests.auth_timeout);
        assert_eq!(parsed.max_sessions, tests.max_sessions);
        assert_eq!(parsed.max_runs_per_user, tests.max_runs_per_user);
        assert_eq!(parsed.max_anonymous_runs, tests.max_anonymous_runs);
        assert_eq!(parsed.metrics_max_agents, tests.metrics_max_agents);
        assert_eq!(parsed.max_run_frames, tests.max_run_frames);
        assert_eq!(
            parsed.max_client_message_bytes,
            tests.max_client_message_bytes
        );
        assert_eq!(parsed.max_engine_frame_bytes, tests.max_engine_frame_bytes);
        assert_eq!(parsed.engine_close_timeout, tests.engine_close_timeout);
    }
}
