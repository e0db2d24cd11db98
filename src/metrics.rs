//! Prometheus metrics of a gateway (`GET /metrics`, text exposition format).
//!
//! Owned by [`crate::http::AppState`]; the relay records into it. Labels are bounded: `agent`
//! comes from the store (only agents that exist get a run), `status` and `code` from fixed sets.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

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
    pub coalesced_chunks: Counter,
    pub runlog_events_written: Gauge<u64, AtomicU64>,
    pub runlog_events_dropped: Gauge<u64, AtomicU64>,
    pub runlog_write_lag_ms_max: Gauge<u64, AtomicU64>,
    pub workflow_cache_hits: Gauge<u64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flowgate");
        let sessions_open = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "sessions_open",
            "Client WebSocket sessions open now",
            sessions_open.clone(),
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
        let coalesced_chunks = Counter::default();
        registry.register(
            "coalesced_chunks",
            "llm_chunk frames merged into others for lagging clients",
            coalesced_chunks.clone(),
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
            coalesced_chunks,
            runlog_events_written,
            runlog_events_dropped,
            runlog_write_lag_ms_max,
            workflow_cache_hits,
        }
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
