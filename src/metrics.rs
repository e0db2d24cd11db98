//! Prometheus metrics of a gateway (`GET /metrics`, text exposition format).
//!
//! Owned by the gateway's state; the relay, the accept loop and the run log's writer record into
//! it (the run log's counters are read at `/metrics` time). Labels are bounded: `agent` is the
//! id of an agent the store knows, at most `--metrics-max-agents` distinct ids (the rest are
//! counted under [`OTHER_AGENTS`]); runs of agents that do not exist (or whose lookup failed) are
//! counted under [`UNKNOWN_AGENT`], so no client can create series. `status` and `code` come
//! from fixed sets.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The `agent` label of runs whose agent the store does not know (or could not be asked about).
/// Agent ids cannot contain parentheses, so it never collides with one.
pub const UNKNOWN_AGENT: &str = "(unknown)";
/// The `agent` label once `--metrics-max-agents` distinct agents have their own.
pub const OTHER_AGENTS: &str = "(other)";

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    pub sessions_open: Gauge<i64, AtomicI64>,
    pub runs_started: Family<Labels, Counter>,
    pub runs_finished: Family<Labels, Counter>,
    pub events_relayed: Counter,
    pub event_added_latency: Histogram,
    pub connect_to_flow_started: Histogram,
    pub engine_connect_failures: Counter,
    pub resumes: Counter,
    /// Runs of lost gateways this gateway took over and ended (`gateway_lost`).
    pub runs_taken_over: Counter,
    pub coalesced_chunks: Counter,
    pub runlog_events_written: Gauge<u64, AtomicU64>,
    /// Frames published to the cluster stream (`--nats-url`).
    pub cluster_frames_published: Gauge<u64, AtomicU64>,
    /// Frames not published to the cluster stream (queue full, NATS down).
    pub cluster_publish_failures: Gauge<u64, AtomicU64>,
    /// 1 when cross-gateway resume and cancel work (NATS connected, stream there, probe back).
    pub cluster_ready: Gauge,
    pub runlog_events_dropped: Gauge<u64, AtomicU64>,
    pub runlog_write_lag_ms_max: Gauge<u64, AtomicU64>,
    /// Frames the run log has accepted and not yet committed (read from its counters at
    /// `/metrics` time; always 0 with the in-memory log, which stores on acceptance).
    pub runlog_events_pending: Gauge<u64, AtomicU64>,
    /// Duration of each run-log batch write to Postgres (observed by the writer).
    pub runlog_batch_write_seconds: Histogram,
    pub workflow_cache_hits: Gauge<u64, AtomicU64>,
    pub connections_refused: Family<Labels, Counter>,
    pub runlog_waits: Counter,
    pub runs_log_incomplete: Counter,
    pub runs_log_incomplete_replays: Counter,
    /// Agent ids that have their own label, at most `max_agent_labels`.
    agent_labels: std::sync::Mutex<std::collections::HashSet<std::sync::Arc<str>>>,
    max_agent_labels: usize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(crate::config::DEFAULT_METRICS_MAX_AGENTS)
    }
}

impl Metrics {
    /// Metrics with at most `max_agent_labels` distinct `agent` label values of real agents.
    pub fn new(max_agent_labels: usize) -> Metrics {
        let mut registry = Registry::with_prefix("flowgate");
        let sessions_open = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "sessions_open",
            "Client WebSocket sessions open now",
            sessions_open.clone(),
        );
        let runlog_waits = Counter::default();
        registry.register(
            "runlog_waits",
            "Times a run waited for room in the run log's buffer (it read nothing from the engine meanwhile)",
            runlog_waits.clone(),
        );
        let runs_log_incomplete = Counter::default();
        registry.register(
            "runs_log_incomplete",
            "Runs whose log lost records (the run log stayed full past --runlog-wait); should stay 0",
            runs_log_incomplete.clone(),
        );
        let runs_log_incomplete_replays = Counter::default();
        registry.register(
            "runs_log_incomplete_replays",
            "Resumes of ended runs whose log misses frames (answered with an error naming the gap)",
            runs_log_incomplete_replays.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "TCP connections closed at accept, by reason (max_connections, max_connections_per_address)",
            connections_refused.clone(),
        );
        let runs_started = Family::<Labels, Counter>::default();
        registry.register(
            "runs_started",
            "Runs started, by agent",
            runs_started.clone(),
        );
        let runs_finished = Family::<Labels, Counter>::default();
        registry.register(
            "runs_finished",
            "Runs finished, by agent, status (completed|failed|cancelled) and error code",
            runs_finished.clone(),
        );
        let events_relayed = Counter::default();
        registry.register(
            "events_relayed",
            "Frames written to clients",
            events_relayed.clone(),
        );
        let event_added_latency = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        registry.register(
            "event_added_latency_seconds",
            "Time from an engine frame arriving at the gateway to its write to the client completing",
            event_added_latency.clone(),
        );
        let connect_to_flow_started = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register(
            "connect_to_flow_started_seconds",
            "Time from a run request to its flow_started frame being relayed",
            connect_to_flow_started.clone(),
        );
        let engine_connect_failures = Counter::default();
        registry.register(
            "engine_connect_failures",
            "Engine connections or handshakes that failed",
            engine_connect_failures.clone(),
        );
        let resumes = Counter::default();
        registry.register("resumes", "Resume requests served", resumes.clone());
        let runs_taken_over = Counter::default();
        registry.register(
            "runs_taken_over",
            "Runs of lost gateways this gateway took over and ended with gateway_lost",
            runs_taken_over.clone(),
        );
        let coalesced_chunks = Counter::default();
        registry.register(
            "coalesced_chunks",
            "llm_chunk frames merged into others for lagging clients",
            coalesced_chunks.clone(),
        );
        let cluster_frames_published = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "cluster_frames_published",
            "Frames published to the cluster stream (--nats-url)",
            cluster_frames_published.clone(),
        );
        let cluster_publish_failures = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "cluster_publish_failures",
            "Frames not published to the cluster stream (queue full or NATS down): followers of those runs see a gap",
            cluster_publish_failures.clone(),
        );
        let cluster_ready = Gauge::default();
        registry.register(
            "cluster_ready",
            "1 when cross-gateway resume and cancel work (NATS connected, stream there, probe back)",
            cluster_ready.clone(),
        );
        let runlog_events_written = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "runlog_events_written",
            "Frames stored in the run log",
            runlog_events_written.clone(),
        );
        let runlog_events_dropped = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "runlog_events_dropped",
            "Frames the run log could not store (buffer full, cap, failed writes)",
            runlog_events_dropped.clone(),
        );
        let runlog_write_lag_ms_max = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "runlog_write_lag_ms_max",
            "Longest delay between a frame and its run-log commit, in milliseconds",
            runlog_write_lag_ms_max.clone(),
        );
        let runlog_events_pending = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "runlog_events_pending",
            "Frames the run log has accepted and not yet committed to Postgres: the writer's lag (0 with the in-memory log)",
            runlog_events_pending.clone(),
        );
        // 0.5 ms … 16 s: a local commit takes about a millisecond; a batch that exhausts its
        // attempts takes write_attempts × the store timeout.
        let runlog_batch_write_seconds = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        registry.register(
            "runlog_batch_write_seconds",
            "Time the run-log writer took to write one batch to Postgres (one transaction, begin to commit; retries included)",
            runlog_batch_write_seconds.clone(),
        );
        let workflow_cache_hits = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "workflow_cache_hits",
            "Runs served from the workflow cache",
            workflow_cache_hits.clone(),
        );
        Metrics {
            registry,
            sessions_open,
            runs_started,
            runs_finished,
            events_relayed,
            event_added_latency,
            connect_to_flow_started,
            engine_connect_failures,
            resumes,
            runs_taken_over,
            coalesced_chunks,
            runlog_events_written,
            cluster_frames_published,
            cluster_publish_failures,
            cluster_ready,
            runlog_events_dropped,
            runlog_write_lag_ms_max,
            runlog_events_pending,
            runlog_batch_write_seconds,
            workflow_cache_hits,
            connections_refused,
            runlog_waits,
            runs_log_incomplete,
            runs_log_incomplete_replays,
            agent_labels: Default::default(),
            max_agent_labels,
        }
    }

    /// The `agent` label of an agent the store knows: its id while fewer than
    /// `max_agent_labels` ids have one, else [`OTHER_AGENTS`].
    pub fn agent_label(&self, agent_id: &str) -> std::sync::Arc<str> {
        let mut labels = self
            .agent_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = labels.get(agent_id) {
            return known.clone();
        }
        if labels.len() >= self.max_agent_labels {
            return OTHER_AGENTS.into();
        }
        let label: std::sync::Arc<str> = agent_id.into();
        labels.insert(label.clone());
        label
    }

    /// A connection was closed at accept.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    pub fn run_started(&self, agent: &str) {
        self.runs_started
            .get_or_create(&vec![("agent".into(), agent.into())])
            .inc();
    }

    pub fn run_finished(&self, agent: &str, status: &str, code: Option<&str>) {
        let labels = vec![
            ("agent".into(), agent.into()),
            ("status".into(), status.into()),
            ("code".into(), code.unwrap_or("").into()),
        ];
        self.runs_finished.get_or_create(&labels).inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
