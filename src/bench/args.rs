//! `flowgate bench`'s settings ([`BenchArgs`]): every flag with its default, and the parsers of
//! its durations and `KEY=VALUE` pairs.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::workflow::FlowFormat;

/// A duration in milliseconds (`20`, `0.5`) or humantime (`20ms`, `1h`).
fn parse_millis(s: &str) -> Result<Duration, String> {
    parse_with_unit(s, 1e-3)
}

/// A duration in seconds (`5`, `0.5`) or humantime (`500ms`, `2m`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    parse_with_unit(s, 1.0)
}

fn parse_with_unit(s: &str, unit_secs: f64) -> Result<Duration, String> {
    if let Ok(n) = s.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(n * unit_secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// `flowgate bench` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,

    /// `llm_chunk` events each run streams (the engine's `--llm-tokens`).
    #[arg(long, default_value_t = 50)]
    pub events: usize,

    /// Interval between two `llm_chunk` events of a run (the engine's `--llm-token-delay`):
    /// milliseconds or a humantime duration (`20ms`).
    #[arg(long, default_value = "20ms", value_parser = parse_millis)]
    pub interval: Duration,

    /// Warm-up before each measured window (its numbers are discarded): seconds or humantime.
    /// In `--idle` mode, the settling time between the last session connecting and the reading.
    #[arg(long, default_value = "3s", value_parser = parse_secs)]
    pub warmup: Duration,

    /// Measured window of each path; sessions start runs back to back until it ends (seconds or
    /// humantime). In `--idle` mode, how long the sessions are held open.
    #[arg(long, default_value = "15s", value_parser = parse_secs)]
    pub duration: Duration,

    /// Memory mode: every session opens one run that waits on a slow engine (`--idle-delay`
    /// between chunks) and holds it; reports the gateway's RSS per open session.
    #[arg(long)]
    pub idle: bool,

    /// The engine's delay between chunks in `--idle` mode.
    #[arg(long, default_value = "1h", value_parser = parse_secs)]
    pub idle_delay: Duration,

    /// Reuse each session's WebSocket for its next run (default: one connection per run, as
    /// the existing frontend does; setup is then measured from the run request).
    #[arg(long)]
    pub keep_connection: bool,

    /// Skip the direct-to-engine phase.
    #[arg(long)]
    pub no_direct: bool,

    /// Add a reference phase after the direct one: the direct phase's clients through an nginx
    /// child process proxying the engine (one worker, unbuffered), which relays the same frames
    /// as opaque bytes. `--nginx` alone looks up `nginx` on PATH, then /usr/sbin/nginx.
    /// Streaming mode only.
    #[arg(long, value_name = "PATH", conflicts_with = "idle")]
    pub nginx: Option<Option<PathBuf>>,

    /// Multi-gateway mode (issue 16, docs/scaling.md): after the single-gateway phases, start a
    /// nats-server (JetStream) and two gateways on `--database-url` (required) and the same
    /// engine, and run `--sessions` sessions whose runs start on the first gateway (the owner)
    /// and are followed live, from their first frame, by a second client on the other one
    /// (`resume`); reports the added latency of that follow per event and each process's CPU
    /// per event. Streaming mode only.
    #[arg(long, conflicts_with_all = ["idle", "gateway_url"])]
    pub cluster: bool,

    /// The nats-server executable `--cluster` starts (default: `FLOWGATE_TEST_NATS_SERVER`,
    /// else `nats-server` on PATH, else /usr/sbin/nats-server).
    #[arg(
        long,
        value_name = "PATH",
        requires = "cluster",
        conflicts_with = "nats_url"
    )]
    pub nats_server: Option<PathBuf>,

    /// With `--cluster`: use this running NATS server (JetStream on) instead of starting one.
    #[arg(long, value_name = "URL", requires = "cluster")]
    pub nats_url: Option<String>,

    /// Benchmark this running gateway (`ws://host:port`) instead of starting one.
    #[arg(long)]
    pub gateway_url: Option<String>,

    /// The pid of the `--gateway-url` gateway, for its CPU and memory numbers.
    #[arg(long, requires = "gateway_url")]
    pub gateway_pid: Option<u32>,

    /// Use this running engine (`ws://host:port`) instead of starting one: for the direct
    /// phase, and as the engine of a gateway the bench starts. It must stream `--events` chunks
    /// every `--interval` itself.
    #[arg(long)]
    pub engine_url: Option<String>,

    /// HS256 secret client tokens are signed with (required with `--gateway-url`; a random one
    /// is used for a gateway the bench starts).
    #[arg(long, env = "FLOWGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Engine-hop key (`FLOWGATE_ENGINE_KEY`) for the direct phase; a random one is shared by
    /// the engine and gateway the bench starts.
    #[arg(long, env = "FLOWGATE_ENGINE_KEY", hide_env_values = true)]
    pub engine_key: Option<Secret>,

    /// Folder of agents the started gateway serves (`serve --flows-dir`), and where the direct
    /// phase reads the agent's workflow. With `--database-url` it is imported into that
    /// database instead, and the gateway serves it from there.
    #[arg(long, default_value = "flows")]
    pub flows_dir: PathBuf,

    /// Run the started gateway on this Postgres database (store and batched run log, as in
    /// production) instead of `--flows-dir` files and the in-memory run log. The database must
    /// exist; the bench runs the migrations and imports `--flows-dir` into it first. Never read
    /// from `DATABASE_URL`: the bench uses a database only when told to.
    #[arg(long, value_name = "URL", conflicts_with = "gateway_url")]
    pub database_url: Option<Secret>,

    /// The agent every run uses (its scripted LLM streams the chunks).
    #[arg(long, default_value = "assistant")]
    pub agent: String,

    /// The run request's `message`.
    #[arg(long, default_value = "Say something about benchmarks.")]
    pub message: String,

    /// Encoding of the flow definition in the direct phase's handshake (the gateway's
    /// `--engine-flow-format`).
    #[arg(long, value_enum, default_value_t = FlowFormat::Yaml)]
    pub flow_format: FlowFormat,

    /// The flowgate executable started for the engine and the gateway (default: this one).
    #[arg(long)]
    pub flowgate_bin: Option<PathBuf>,

    /// Write the children's logs to this folder (`engine.log`, `gateway.log`) instead of
    /// discarding them.
    #[arg(long)]
    pub child_logs: Option<PathBuf>,

    /// Extra setting for the started gateway, `KEY=VALUE` (repeatable), e.g.
    /// `--gateway-env FLOWGATE_WORKER_THREADS=1`; applied after the bench's own settings.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub gateway_env: Vec<(String, String)>,

    /// Extra setting for the started engine, `KEY=VALUE` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub engine_env: Vec<(String, String)>,

    /// Open-files limit to raise this process to (at most the hard limit); the children
    /// inherit it.
    #[arg(long, default_value_t = 65_536)]
    pub nofile: u64,

    /// Loopback addresses (127.0.0.1, 127.0.0.2, …) the client sockets are bound to; 0 picks
    /// enough for the ephemeral ports the run needs.
    #[arg(long, default_value_t = 0)]
    pub local_addrs: usize,

    /// Most connection attempts in flight at once (ramp-up).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Time allowed for a TCP connect and for a WebSocket upgrade.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// A run fails (`timeout`) when no frame arrives for this long.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub frame_timeout: Duration,

    /// Time allowed for closing a socket.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    pub close_timeout: Duration,

    /// Pause of a session after a failed run.
    #[arg(long, default_value = "100ms", value_parser = parse_secs)]
    pub retry_pause: Duration,

    /// Time allowed for a started child to listen.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub startup_timeout: Duration,

    /// In `--idle` mode, time allowed for every session to reach its first chunk.
    #[arg(long, default_value = "90s", value_parser = parse_secs)]
    pub ramp_timeout: Duration,

    /// Largest frame accepted by the bench's clients (bytes).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Read buffer of each of the bench's client WebSockets (bytes): small, so that thousands
    /// of idle sessions do not cost the bench gigabytes, and the load generator's own CPU
    /// (tungstenite zero-fills it before every read) stays low.
    #[arg(long, default_value_t = 2048)]
    pub client_read_buffer_bytes: usize,

    /// Print the report as JSON on stdout (default: a markdown table).
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// Parse `flowgate bench` arguments (without the program and subcommand names).
    pub fn parse_from<I, T>(args: I) -> Result<BenchArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: BenchArgs,
        }
        use clap::Parser;
        let argv = std::iter::once(std::ffi::OsString::from("bench"))
            .chain(args.into_iter().map(Into::into));
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }
}

/// `KEY=VALUE` of `--gateway-env` / `--engine-env`.
pub(super) fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not KEY=VALUE (e.g. FLOWGATE_WORKER_THREADS=1)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_plain_numbers_in_their_unit_or_humantime() {
        assert_eq!(parse_millis("20").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_millis("0.5").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_millis("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_secs("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_secs("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_secs("soon").is_err());
    }
}
