//! The benchmark report: the JSON shape printed by `flowgate bench --json`, the markdown table
//! printed by default, and the targets each run is judged against (met / MISSED).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{Summary, Tally, summarize};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `streaming` or `idle`.
    pub mode: &'static str,
    pub config: ConfigEcho,
    /// Numbers through the gateway.
    pub gateway: PathReport,
    /// Numbers directly against the engine (absent in `--idle` mode, with `--no-direct`, or
    /// when a `--gateway-url` is given without an `--engine-url`).
    pub direct: Option<PathReport>,
    /// gateway − direct.
    pub added: Option<Added>,
    /// The gateway process's CPU over the measurement window (when its pid is known).
    pub gateway_cpu: Option<CpuReport>,
    /// The gateway process's memory (when its pid is known).
    pub rss: Option<RssReport>,
    /// With `--nginx`: the direct phase's clients through nginx proxying the engine (the
    /// reference relay: the same frames as opaque bytes). Never judged against the targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx: Option<PathReport>,
    /// nginx − direct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_added: Option<Added>,
    /// The nginx process's CPU over its measurement window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_cpu: Option<CpuReport>,
    /// The nginx process's memory at the end of its window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_rss: Option<RssReport>,
    /// With `--cluster`: the multi-gateway phase (issue 16), after the single-gateway ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
    /// Errors of every kind in all paths (must be 0).
    pub errors: u64,
    /// Runs with lost events in all paths (must be 0).
    pub lost_runs: u64,
    /// The gateway's `flowgate_runs_log_incomplete_total` after its phase: runs whose run log
    /// lost records (must be 0). `None` when its `/metrics` could not be read.
    pub runs_log_incomplete: Option<u64>,
    pub targets: Vec<Target>,
    /// Anything the reader should know about this run (limits hit, parts skipped).
    pub notes: Vec<String>,
}

/// The configuration the numbers belong to.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigEcho {
    pub sessions: usize,
    pub events: usize,
    pub interval_ms: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub keep_connection: bool,
    pub gateway_url: String,
    pub engine_url: Option<String>,
    /// Local addresses the client sockets were bound to.
    pub local_addrs: Vec<String>,
    /// The open-files limit in force (children inherit it).
    pub nofile_limit: Option<u64>,
    pub clock_ticks_per_second: u64,
    /// The started gateway's store and run log: `files` (`--flows-dir`, in-memory run log),
    /// `postgres` (`--database-url`: store and batched run log in the database), `unknown`
    /// (`--gateway-url`).
    pub store: &'static str,
    /// With `--database-url`: `postgres://user@host:port/dbname` (never the password).
    pub database: Option<String>,
}

/// One path's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub runs: u64,
    pub runs_ok: u64,
    pub lost_runs: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub error_examples: Vec<String>,
    /// connect → `flow_started`, microseconds.
    pub setup_us: Option<Summary>,
    /// Client receive time − engine envelope `timestamp`, microseconds.
    pub event_latency_us: Option<Summary>,
    /// `flow_started` → terminal event, microseconds (the engine is scripted for
    /// `(events − 1) × interval`).
    pub run_us: Option<Summary>,
    /// Closing a run's socket (close frame → end of stream), microseconds.
    pub close_us: Option<Summary>,
    /// Frames received in the window.
    pub frames: u64,
    pub events_per_second: f64,
    /// `llm_chunk` frames the gateway merged for a lagging client.
    pub merged_frames: u64,
    /// The engine process's CPU seconds during this path's window (own engine only).
    pub engine_cpu_seconds: Option<f64>,
    /// The bench process's own CPU seconds during this path's window (the clients share the
    /// machine with the engine and the gateway).
    pub client_cpu_seconds: Option<f64>,
}

impl PathReport {
    /// `cpu`: the engine's and the bench's CPU seconds in the window.
    pub fn from_tally(mut t: Tally, window_s: f64, cpu: (Option<f64>, Option<f64>)) -> PathReport {
        PathReport {
            runs: t.runs,
            runs_ok: t.runs_ok,
            lost_runs: t.lost_runs,
            errors: t.error_count(),
            setup_us: summarize(&mut t.setup_us),
            event_latency_us: summarize(&mut t.event_us),
            run_us: summarize(&mut t.run_us),
            close_us: summarize(&mut t.close_us),
            frames: t.frames_in_window,
            events_per_second: if window_s > 0.0 {
                t.frames_in_window as f64 / window_s
            } else {
                0.0
            },
            merged_frames: t.merged_frames,
            engine_cpu_seconds: cpu.0,
            client_cpu_seconds: cpu.1,
            error_kinds: t.errors,
            error_examples: t.error_examples,
        }
    }
}

/// The multi-gateway phase of `--cluster`: every run started on the owner gateway and followed
/// live from its first frame by a second client on the follower gateway, through NATS.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// The NATS server the gateways used.
    pub nats_url: String,
    /// `nats-server --version` of the server the bench started; `None` for `--nats-url`.
    pub nats_server: Option<String>,
    pub owner_url: String,
    pub follower_url: String,
    /// The clients that started the runs on the owner.
    pub owner: PathReport,
    /// The clients that followed them on the follower (`resume`, `after_seq` 0); their
    /// `setup_us` is resume → `flow_started`.
    pub follower: PathReport,
    /// The added latency of the cross-gateway follow: the follower's receive time − the
    /// owner-client's receive time of the same `seq`, both in the bench process (one
    /// monotonic clock), microseconds.
    pub follow_added_us: Option<Summary>,
    /// The owner-client's first frame → the follower's first frame, microseconds: reading the
    /// run id, the resume, finding the owner, starting the mirror.
    pub follow_start_us: Option<Summary>,
    /// Events of `follow_added_us` the follower received before the owner's client (counted
    /// as 0).
    pub follower_first_events: u64,
    /// Events the owner's client received before the follower's first frame: the follower
    /// got them from the stream's history, not live; left out of `follow_added_us`.
    pub catch_up_events: u64,
    /// Resumes answered "unknown run" (the owner writes the run's row in the background) and
    /// sent again.
    pub resume_retries: u64,
    /// Runs both clients read to their end, compared `seq` by `seq`.
    pub runs_compared: u64,
    /// Of those, runs whose `seq` sequences differ (also errors and lost runs).
    pub runs_mismatched: u64,
    /// The owner gateway's CPU per event relayed to its clients.
    pub owner_cpu: Option<CpuReport>,
    /// The follower gateway's CPU per event relayed to its clients.
    pub follower_cpu: Option<CpuReport>,
    /// The nats-server's CPU per event delivered through it to the followers (started server
    /// only).
    pub nats_cpu: Option<CpuReport>,
    /// `flowgate_runs_log_incomplete_total` of both gateways, summed (`None` when unread).
    pub runs_log_incomplete: Option<u64>,
    pub errors: u64,
    pub lost_runs: u64,
}

/// gateway − direct (or nginx − direct), microseconds (may be negative: noise).
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub setup_p50_us: Option<i64>,
    pub setup_p99_us: Option<i64>,
    pub event_p50_us: Option<i64>,
    pub event_p99_us: Option<i64>,
    pub event_max_us: Option<i64>,
}

impl Added {
    pub fn between(gw: &PathReport, direct: &PathReport) -> Added {
        let diff = |a: Option<Summary>, b: Option<Summary>, f: fn(&Summary) -> u64| {
            Some(f(&a?) as i64 - f(&b?) as i64)
        };
        Added {
            setup_p50_us: diff(gw.setup_us, direct.setup_us, |s| s.p50),
            setup_p99_us: diff(gw.setup_us, direct.setup_us, |s| s.p99),
            event_p50_us: diff(gw.event_latency_us, direct.event_latency_us, |s| s.p50),
            event_p99_us: diff(gw.event_latency_us, direct.event_latency_us, |s| s.p99),
            event_max_us: diff(gw.event_latency_us, direct.event_latency_us, |s| s.max),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub pid: u32,
    /// utime + stime over the measurement window.
    pub cpu_seconds: f64,
    /// `cpu_seconds` over the window (100 = one core busy).
    pub cpu_percent: f64,
    /// Frames relayed to the bench's clients in the window.
    pub events: u64,
    pub cpu_seconds_per_million_events: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RssReport {
    pub pid: u32,
    /// VmRSS at the end of the window, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS over the process's life), KiB.
    pub peak_rss_kib: u64,
    /// VmRSS before the first session connected, KiB.
    pub baseline_rss_kib: u64,
    /// Client sessions open when `rss_kib` was read.
    pub open_sessions: usize,
    /// `rss_kib / open_sessions`.
    pub rss_per_session_kib: Option<f64>,
    /// `(rss_kib − baseline_rss_kib) / open_sessions`: what one more session costs.
    pub added_rss_per_session_kib: Option<f64>,
}

/// One target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: Option<String>,
    /// `met`, `MISSED` or `not measured`.
    pub status: &'static str,
}

impl Target {
    fn new(name: &str, target: &str, measured: Option<(String, bool)>) -> Target {
        let (measured, status) = match measured {
            Some((m, true)) => (Some(m), "met"),
            Some((m, false)) => (Some(m), "MISSED"),
            None => (None, "not measured"),
        };
        Target {
            name: name.into(),
            target: target.into(),
            measured,
            status,
        }
    }
}

/// A microsecond figure for people: `87 µs`, `1.42 ms`, `2.10 s`.
pub fn us(v: i64) -> String {
    let a = v.unsigned_abs();
    let sign = if v < 0 { "-" } else { "" };
    if a < 1_000 {
        format!("{sign}{a} µs")
    } else if a < 1_000_000 {
        format!("{sign}{:.2} ms", a as f64 / 1e3)
    } else {
        format!("{sign}{:.2} s", a as f64 / 1e6)
    }
}

/// The targets of the issue (2-core machine): see `docs/benchmarks.md`.
pub fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let clean = r.errors == 0 && r.lost_runs == 0;
    out.push(Target::new(
        "errors and lost events",
        "0",
        Some((
            format!("{} errors, {} lost runs", r.errors, r.lost_runs),
            clean,
        )),
    ));
    out.push(Target::new(
        "runs with an incomplete run log",
        "0",
        r.runs_log_incomplete.map(|n| (n.to_string(), n == 0)),
    ));
    if r.mode == "idle" {
        out.push(Target::new(
            "gateway RSS with all sessions open",
            "≤ 360 MiB at 9,000 sessions",
            r.rss.as_ref().map(|m| {
                (
                    format!(
                        "{:.1} MiB at {} sessions",
                        m.rss_kib as f64 / 1024.0,
                        m.open_sessions
                    ),
                    m.rss_kib <= 360 * 1024,
                )
            }),
        ));
        out.push(Target::new(
            "gateway RSS per open session",
            "≤ 40 KiB",
            r.rss.as_ref().and_then(|m| {
                let per = m.rss_per_session_kib?;
                Some((
                    format!(
                        "{per:.1} KiB ({:.1} KiB above the idle gateway)",
                        m.added_rss_per_session_kib.unwrap_or(0.0)
                    ),
                    per <= 40.0,
                ))
            }),
        ));
        return out;
    }
    let added = r.added.as_ref();
    out.push(Target::new(
        "added latency per event, p50",
        "≤ 100 µs",
        added
            .and_then(|a| a.event_p50_us)
            .map(|v| (us(v), v <= 100)),
    ));
    out.push(Target::new(
        "added latency per event, p99",
        "≤ 1 ms",
        added
            .and_then(|a| a.event_p99_us)
            .map(|v| (us(v), v <= 1_000)),
    ));
    out.push(Target::new(
        "gateway CPU per million relayed events",
        "≤ 2 s",
        r.gateway_cpu
            .as_ref()
            .and_then(|c| c.cpu_seconds_per_million_events)
            .map(|v| (format!("{v:.2} s"), v <= 2.0)),
    ));
    out.push(Target::new(
        "setup connect → flow_started above direct, p50",
        "≤ 2 ms",
        added
            .and_then(|a| a.setup_p50_us)
            .map(|v| (us(v), v <= 2_000)),
    ));
    out
}

/// The five latency rows both tables print: label, which summary of a path, which statistic,
/// the "added" figure, and the target the row is judged against (main table only).
type LatencyRow = (
    &'static str,
    fn(&PathReport) -> Option<Summary>,
    fn(&Summary) -> u64,
    Option<i64>,
    Option<&'static str>,
);

fn latency_rows(a: Option<&Added>) -> [LatencyRow; 5] {
    [
        (
            "connect → flow_started p50",
            |p| p.setup_us,
            |s| s.p50,
            a.and_then(|a| a.setup_p50_us),
            Some("setup connect → flow_started above direct, p50"),
        ),
        (
            "connect → flow_started p99",
            |p| p.setup_us,
            |s| s.p99,
            a.and_then(|a| a.setup_p99_us),
            None,
        ),
        (
            "event latency p50",
            |p| p.event_latency_us,
            |s| s.p50,
            a.and_then(|a| a.event_p50_us),
            Some("added latency per event, p50"),
        ),
        (
            "event latency p99",
            |p| p.event_latency_us,
            |s| s.p99,
            a.and_then(|a| a.event_p99_us),
            Some("added latency per event, p99"),
        ),
        (
            "event latency max",
            |p| p.event_latency_us,
            |s| s.max,
            a.and_then(|a| a.event_max_us),
            None,
        ),
    ]
}

/// One statistic of a [`Summary`].
type Stat = fn(&Summary) -> u64;

fn opt_us(s: Option<Summary>, f: Stat) -> String {
    s.map(|s| us(f(&s) as i64)).unwrap_or_else(|| "—".into())
}

impl Report {
    /// The default output: a short markdown table.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## flowgate bench: {} mode, {} sessions × {} events every {} ms (warm-up {} s, measured {} s)\n",
            self.mode, c.sessions, c.events, c.interval_ms, c.warmup_s, c.duration_s
        );
        let target_of = |name: &str| {
            self.targets
                .iter()
                .find(|t| t.name == name)
                .map(|t| format!("{} | {}", t.target, t.status))
                .unwrap_or_else(|| " | ".into())
        };
        let g = &self.gateway;
        let d = self.direct.as_ref();
        let a = self.added.as_ref();
        let added = |v: Option<i64>| v.map(us).unwrap_or_else(|| "—".into());
        s.push_str("| metric | gateway | direct | added | target | status |\n");
        s.push_str("|---|---|---|---|---|---|\n");
        let mut row = |metric: &str, gw: String, direct: String, add: String, target: String| {
            let _ = writeln!(s, "| {metric} | {gw} | {direct} | {add} | {target} |");
        };
        for (metric, of, pick, add, target) in latency_rows(a) {
            row(
                metric,
                opt_us(of(g), pick),
                opt_us(d.and_then(of), pick),
                added(add),
                target.map(target_of).unwrap_or_else(|| " | ".into()),
            );
        }
        let streaming = self.mode == "streaming";
        if streaming {
            row(
                "run length p50 (flow_started → end)",
                opt_us(g.run_us, |s| s.p50),
                opt_us(d.and_then(|d| d.run_us), |s| s.p50),
                String::new(),
                " | ".into(),
            );
            row(
                "events / s",
                format!("{:.0}", g.events_per_second),
                d.map(|d| format!("{:.0}", d.events_per_second))
                    .unwrap_or_else(|| "—".into()),
                String::new(),
                " | ".into(),
            );
            row(
                "gateway CPU per 1M events",
                cpu_per_million(self.gateway_cpu.as_ref()),
                String::new(),
                String::new(),
                target_of("gateway CPU per million relayed events"),
            );
        }
        if streaming {
            row(
                "engine / bench CPU (of a core)",
                busy(g, c.duration_s),
                d.map(|d| busy(d, c.duration_s))
                    .unwrap_or_else(|| "—".into()),
                String::new(),
                " | ".into(),
            );
        }
        if let Some(m) = &self.rss {
            row(
                "gateway RSS (peak)",
                format!(
                    "{:.1} MiB ({:.1} MiB)",
                    m.rss_kib as f64 / 1024.0,
                    m.peak_rss_kib as f64 / 1024.0
                ),
                String::new(),
                String::new(),
                target_of("gateway RSS with all sessions open"),
            );
            row(
                "RSS per open session",
                m.rss_per_session_kib
                    .map(|v| format!("{v:.1} KiB at {} sessions", m.open_sessions))
                    .unwrap_or_else(|| "—".into()),
                String::new(),
                m.added_rss_per_session_kib
                    .map(|v| format!("{v:.1} KiB above idle"))
                    .unwrap_or_default(),
                target_of("gateway RSS per open session"),
            );
        }
        row(
            "runs ok / errors / lost runs",
            format!("{} / {} / {}", g.runs_ok, g.errors, g.lost_runs),
            d.map(|d| format!("{} / {} / {}", d.runs_ok, d.errors, d.lost_runs))
                .unwrap_or_else(|| "—".into()),
            String::new(),
            target_of("errors and lost events"),
        );
        row(
            "runs with an incomplete run log",
            self.runs_log_incomplete
                .map_or_else(|| "—".into(), |n| n.to_string()),
            String::new(),
            String::new(),
            target_of("runs with an incomplete run log"),
        );
        if let Some(n) = &self.nginx {
            self.nginx_table(&mut s, n);
        }
        if let Some(c) = &self.cluster {
            self.cluster_table(&mut s, c);
        }
        for (path, p) in [
            ("gateway", Some(g)),
            ("direct", d),
            ("nginx", self.nginx.as_ref()),
            ("cluster owner", self.cluster.as_ref().map(|c| &c.owner)),
            (
                "cluster follower",
                self.cluster.as_ref().map(|c| &c.follower),
            ),
        ] {
            let Some(p) = p else { continue };
            if !p.error_kinds.is_empty() {
                let kinds: Vec<String> = p
                    .error_kinds
                    .iter()
                    .map(|(k, v)| format!("{k} × {v}"))
                    .collect();
                let _ = writeln!(s, "\n{path} errors: {}", kinds.join(", "));
                for e in &p.error_examples {
                    let _ = writeln!(s, "  - {e}");
                }
            }
        }
        let missed: Vec<&str> = self
            .targets
            .iter()
            .filter(|t| t.status == "MISSED")
            .map(|t| t.name.as_str())
            .collect();
        if !missed.is_empty() {
            let _ = writeln!(s, "\nMISSED targets: {}", missed.join("; "));
        }
        for n in &self.notes {
            let _ = writeln!(s, "\nnote: {n}");
        }
        s
    }
}

/// The engine's and the bench's CPU in a path's window, `e% / b%` of a core.
fn busy(p: &PathReport, window_s: f64) -> String {
    let w = window_s.max(1e-9);
    match (p.engine_cpu_seconds, p.client_cpu_seconds) {
        (Some(e), Some(b)) => format!("{:.0}% / {:.0}%", e / w * 100.0, b / w * 100.0),
        (None, Some(b)) => format!("— / {:.0}%", b / w * 100.0),
        _ => "—".into(),
    }
}

/// `x.xx s (y% of a core)` of a CPU report.
fn cpu_per_million(c: Option<&CpuReport>) -> String {
    c.and_then(|c| {
        let v = c.cpu_seconds_per_million_events?;
        Some(format!("{v:.2} s ({:.0}% of a core)", c.cpu_percent))
    })
    .unwrap_or_else(|| "—".into())
}

impl Report {
    /// The table of a `--cluster` run: the owner's and the follower's clients next to the
    /// single gateway of the same invocation, and what the follow adds.
    fn cluster_table(&self, s: &mut String, c: &ClusterReport) {
        let g = &self.gateway;
        let _ = writeln!(
            s,
            "\n| multi-gateway: run on the owner, followed on a second gateway through NATS | \
             single gateway | owner | follower | the follow adds |"
        );
        s.push_str("|---|---|---|---|---|\n");
        let mut row =
            |metric: &str, single: String, owner: String, follower: String, add: String| {
                let _ = writeln!(s, "| {metric} | {single} | {owner} | {follower} | {add} |");
            };
        let lat = |p: &PathReport, f: fn(&Summary) -> u64| opt_us(p.event_latency_us, f);
        let stats: [(&str, Stat); 3] = [("p50", |s| s.p50), ("p99", |s| s.p99), ("max", |s| s.max)];
        for (name, f) in stats {
            row(
                &format!("event latency {name}"),
                lat(g, f),
                lat(&c.owner, f),
                lat(&c.follower, f),
                opt_us(c.follow_added_us, f),
            );
        }
        row(
            "follow start (owner's first frame → follower's) p50 / p99",
            String::new(),
            String::new(),
            format!(
                "{} / {}",
                opt_us(c.follow_start_us, |s| s.p50),
                opt_us(c.follow_start_us, |s| s.p99)
            ),
            String::new(),
        );
        row(
            "resumes sent again (run not yet logged) / events before the follow started / \
             events the follower got first",
            String::new(),
            String::new(),
            format!(
                "{} / {} / {}",
                c.resume_retries, c.catch_up_events, c.follower_first_events
            ),
            String::new(),
        );
        row(
            "events / s",
            format!("{:.0}", g.events_per_second),
            format!("{:.0}", c.owner.events_per_second),
            format!("{:.0}", c.follower.events_per_second),
            String::new(),
        );
        row(
            "gateway CPU per 1M events",
            cpu_per_million(self.gateway_cpu.as_ref()),
            cpu_per_million(c.owner_cpu.as_ref()),
            cpu_per_million(c.follower_cpu.as_ref()),
            String::new(),
        );
        row(
            "nats-server CPU per 1M events",
            String::new(),
            String::new(),
            String::new(),
            cpu_per_million(c.nats_cpu.as_ref()),
        );
        row(
            "engine / bench CPU (of a core)",
            busy(g, self.config.duration_s),
            busy(&c.owner, self.config.duration_s),
            String::new(),
            String::new(),
        );
        row(
            "runs ok / errors / lost runs",
            format!("{} / {} / {}", g.runs_ok, g.errors, g.lost_runs),
            format!(
                "{} / {} / {}",
                c.owner.runs_ok, c.owner.errors, c.owner.lost_runs
            ),
            format!(
                "{} / {} / {}",
                c.follower.runs_ok, c.follower.errors, c.follower.lost_runs
            ),
            String::new(),
        );
        row(
            "runs compared seq by seq / differing",
            String::new(),
            String::new(),
            format!("{} / {}", c.runs_compared, c.runs_mismatched),
            String::new(),
        );
    }

    /// The second table of a `--nginx` run: the reference relay next to the direct path.
    fn nginx_table(&self, s: &mut String, n: &PathReport) {
        let d = self.direct.as_ref();
        let a = self.nginx_added.as_ref();
        let added = |v: Option<i64>| v.map(us).unwrap_or_else(|| "—".into());
        s.push_str("\n| reference: nginx relaying opaque bytes | nginx | direct | added |\n");
        s.push_str("|---|---|---|---|\n");
        let mut row = |metric: &str, nginx: String, direct: String, add: String| {
            let _ = writeln!(s, "| {metric} | {nginx} | {direct} | {add} |");
        };
        for (metric, of, pick, add, _) in latency_rows(a) {
            row(
                metric,
                opt_us(of(n), pick),
                opt_us(d.and_then(of), pick),
                added(add),
            );
        }
        row(
            "events / s",
            format!("{:.0}", n.events_per_second),
            d.map(|d| format!("{:.0}", d.events_per_second))
                .unwrap_or_else(|| "—".into()),
            String::new(),
        );
        row(
            "nginx CPU per 1M events",
            cpu_per_million(self.nginx_cpu.as_ref()),
            String::new(),
            String::new(),
        );
        row(
            "engine / bench CPU (of a core)",
            busy(n, self.config.duration_s),
            d.map(|d| busy(d, self.config.duration_s))
                .unwrap_or_else(|| "—".into()),
            String::new(),
        );
        if let Some(m) = &self.nginx_rss {
            row(
                "nginx RSS (peak)",
                format!(
                    "{:.1} MiB ({:.1} MiB)",
                    m.rss_kib as f64 / 1024.0,
                    m.peak_rss_kib as f64 / 1024.0
                ),
                String::new(),
                String::new(),
            );
        }
        row(
            "runs ok / errors / lost runs",
            format!("{} / {} / {}", n.runs_ok, n.errors, n.lost_runs),
            d.map(|d| format!("{} / {} / {}", d.runs_ok, d.errors, d.lost_runs))
                .unwrap_or_else(|| "—".into()),
            String::new(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(event_us: Vec<u64>, setup_us: Vec<u64>) -> PathReport {
        let t = Tally {
            event_us,
            setup_us,
            ..Tally::default()
        };
        PathReport::from_tally(t, 1.0, (None, None))
    }

    fn report(gw: PathReport, direct: PathReport, cpu_per_million: f64) -> Report {
        let mut r = Report {
            mode: "streaming",
            config: ConfigEcho {
                sessions: 1,
                events: 1,
                interval_ms: 20.0,
                warmup_s: 0.0,
                duration_s: 1.0,
                keep_connection: false,
                gateway_url: "ws://127.0.0.1:1".into(),
                engine_url: None,
                local_addrs: Vec::new(),
                nofile_limit: None,
                clock_ticks_per_second: 100,
                store: "files",
                database: None,
            },
            added: Some(Added::between(&gw, &direct)),
            gateway: gw,
            direct: Some(direct),
            gateway_cpu: Some(CpuReport {
                pid: 1,
                cpu_seconds: 1.0,
                cpu_percent: 100.0,
                events: 1,
                cpu_seconds_per_million_events: Some(cpu_per_million),
            }),
            rss: None,
            nginx: None,
            nginx_added: None,
            nginx_cpu: None,
            nginx_rss: None,
            cluster: None,
            errors: 0,
            lost_runs: 0,
            runs_log_incomplete: Some(0),
            targets: Vec::new(),
            notes: Vec::new(),
        };
        r.targets = targets(&r);
        r
    }

    fn status<'a>(r: &'a Report, name: &str) -> &'a str {
        r.targets.iter().find(|t| t.name == name).unwrap().status
    }

    #[test]
    fn targets_are_judged_on_gateway_minus_direct() {
        // 150 µs above direct at p50 (missed), 500 µs at p99 (met), setup 1 ms above (met).
        let gw = path(vec![1_150; 100], vec![3_000]);
        let direct = path(vec![1_000; 100], vec![2_000]);
        let r = report(gw, direct, 2.5);
        assert_eq!(status(&r, "added latency per event, p50"), "MISSED");
        assert_eq!(status(&r, "added latency per event, p99"), "met");
        assert_eq!(
            status(&r, "setup connect → flow_started above direct, p50"),
            "met"
        );
        assert_eq!(
            status(&r, "gateway CPU per million relayed events"),
            "MISSED"
        );
        assert_eq!(status(&r, "errors and lost events"), "met");
        let table = r.markdown();
        assert!(
            table.contains("MISSED targets: added latency per event, p50"),
            "{table}"
        );
    }

    #[test]
    fn a_target_without_samples_is_not_measured() {
        let r = report(path(vec![], vec![]), path(vec![], vec![]), 1.0);
        assert_eq!(status(&r, "added latency per event, p50"), "not measured");
    }

    #[test]
    fn the_nginx_table_and_fields_appear_only_with_nginx() {
        let direct = path(vec![1_000; 100], vec![2_000]);
        let r = report(path(vec![1_150; 100], vec![3_000]), direct, 2.5);
        let plain = r.markdown();
        assert!(!plain.contains("nginx"), "{plain}");
        let json = serde_json::to_value(&r).unwrap();
        for key in ["nginx", "nginx_added", "nginx_cpu", "nginx_rss"] {
            assert!(json.get(key).is_none(), "{key} without --nginx: {json:#}");
        }

        let mut r = r;
        let nginx = path(vec![1_020; 100], vec![2_500]);
        r.nginx_added = Some(Added::between(&nginx, r.direct.as_ref().unwrap()));
        r.nginx = Some(nginx);
        r.nginx_cpu = Some(CpuReport {
            pid: 2,
            cpu_seconds: 0.5,
            cpu_percent: 50.0,
            events: 1,
            cpu_seconds_per_million_events: Some(2.3),
        });
        let table = r.markdown();
        let main_table = &plain[..plain.find("\nMISSED").unwrap()];
        assert!(table.starts_with(main_table), "{table}");
        for row in [
            "| reference: nginx relaying opaque bytes | nginx | direct | added |",
            "| connect → flow_started p50 | 2.50 ms | 2.00 ms | 500 µs |",
            "| event latency p50 | 1.02 ms | 1.00 ms | 20 µs |",
            "| event latency max | 1.02 ms | 1.00 ms | 20 µs |",
            "| nginx CPU per 1M events | 2.30 s (50% of a core) |  |  |",
            "| runs ok / errors / lost runs | 0 / 0 / 0 | 0 / 0 / 0 |  |",
        ] {
            assert!(table.contains(row), "missing {row:?} in\n{table}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["nginx_added"]["event_p50_us"], 20, "{json:#}");
        assert_eq!(json["nginx_cpu"]["cpu_seconds_per_million_events"], 2.3);
        assert!(
            json["nginx"]["event_latency_us"]["p99"].is_u64(),
            "{json:#}"
        );
        // Targets stay judged on the gateway.
        assert_eq!(status(&r, "added latency per event, p50"), "MISSED");
    }

    #[test]
    fn microseconds_print_in_the_unit_people_read() {
        assert_eq!(us(87), "87 µs");
        assert_eq!(us(1_420), "1.42 ms");
        assert_eq!(us(-250), "-250 µs");
        assert_eq!(us(2_100_000), "2.10 s");
    }
}
