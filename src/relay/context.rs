//! The relay's context: everything a session and a run need (config, store, conversion cache,
//! live runs, run log, token verifier, limits, metrics, shutdown token and task tracker). The
//! HTTP layer builds it and hands sockets to the relay; the relay never reaches back into `http`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::relay::cache::WorkflowCache;
use crate::relay::registry::Registry;
use crate::runlog::RunLog;
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
    pub upgrade_limits: super::limits::PerAddress,
    /// Refused tokens per client address on the dialect and hop routes (DIALECTS.md rule 11).
    pub refusals: super::limits::PerAddress,
    /// Client sockets open now.
    pub open_sessions: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the dialects whose clients send only the new message remember of a conversation.
    pub conversations: Arc<crate::relay::memory::Conversations>,
    /// The `adk` HTTP side's sessions.
    pub adk_sessions: Arc<crate::relay::dialect::adk_http::Sessions>,
    /// The `citizen` dialect's minted sessions.
    pub citizen_sessions: Arc<crate::relay::dialect::citizen::Sessions>,
    /// The `vercel` chats' runs in progress (resume and stop).
    pub vercel_chats: Arc<crate::relay::dialect::vercel::Chats>,
    /// The other gateways (NATS JetStream), when `--nats-url` is set.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Outbound HTTP (the hops' auth-service check): no proxy from the environment, no
    /// redirects, each call bounded by its caller, TLS as `outbound_tls`.
    pub http: reqwest::Client,
    /// TLS for `wss://` engine and hop upstream connections (system roots plus
    /// `--outbound-ca-file`); `None` when nothing outbound is configured with TLS.
    pub outbound_tls: Option<Arc<rustls::ClientConfig>>,
}
