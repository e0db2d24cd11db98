//! `flowgate bench --cluster` (issue 16, docs/scaling.md): the multi-gateway phase.
//!
//! Starts a nats-server with JetStream (or uses `--nats-url`) and two gateways on the
//! `--database-url` database and the bench's engine, each with `FLOWGATE_NATS_URL` (each has its
//! own run log instance id, so its own node id), waits until both report
//! `flowgate_cluster_ready 1`, then runs the sessions of [`session::cluster_streaming`]: every
//! run is started on the owner and followed from its first frame by a second client of the same
//! user on the follower. The follower's receive time of each `seq` minus the owner-client's (one
//! monotonic clock, this process) is the added latency of the cross-gateway follow; the two
//! `seq` sequences must be identical. CPU is read from `/proc` for the owner, the follower and
//! the nats-server over the measured window, per event relayed to the bench's clients.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::procs::{self, ProcSample};
use super::report::{ClusterReport, PathReport};
use super::session::{self, ClusterTarget, Counters};
use super::stats::summarize;
use super::{BenchArgs, BenchError, Children, Database, env_pair, progress};
use crate::secret::Secret;

/// What the phase needs from the single-gateway setup.
pub(super) struct Setup<'a> {
    pub args: &'a BenchArgs,
    pub exe: &'a Path,
    pub logs: Option<&'a Path>,
    /// The nats-server to start (`None` with `--nats-url`).
    pub nats_bin: Option<&'a Path>,
    pub engine_url: &'a str,
    pub engine_key: Option<&'a Secret>,
    pub engine_pid: Option<u32>,
    pub jwt_secret: &'a Secret,
    pub database: &'a Database,
    pub local_ips: Vec<IpAddr>,
    pub tck: u64,
}

/// Start NATS and the two gateways, run the sessions, report.
pub(super) async fn run(
    s: &Setup<'_>,
    children: &mut Children,
) -> Result<ClusterReport, BenchError> {
    let args = s.args;
    let (nats_url, nats_server, nats_pid) = match (&args.nats_url, s.nats_bin) {
        (Some(url), _) => (url.clone(), None, None),
        (None, Some(bin)) => {
            let version = procs::nats_version(bin, args.startup_timeout)
                .await
                .unwrap_or_else(|| bin.display().to_string());
            let dir = procs::TempDir::new("flowgate-bench-nats")?;
            let addr = procs::free_port()?;
            progress(&format!("starting {version} on {addr} (JetStream)"));
            let child = procs::spawn(procs::Spawn {
                name: "nats-server",
                exe: bin,
                args: procs::nats_args(addr, dir.path()),
                env: Vec::new(),
                addr,
                logs: s.logs,
                startup_timeout: args.startup_timeout,
            })
            .await;
            // The store goes when the server has stopped (or did not start).
            children.nats_dir = Some(dir);
            let child = child?;
            let pid = child.pid;
            children.nats = Some(child);
            (format!("nats://{addr}"), Some(version), Some(pid))
        }
        (None, None) => return Err(BenchError::Args("--cluster: no nats-server".into())),
    };

    let mut gateways: Vec<(SocketAddr, u32)> = Vec::new();
    for name in ["gateway-owner", "gateway-follower"] {
        let addr = procs::free_port()?;
        let mut env = super::gateway_env(args, addr, s.engine_url, s.jwt_secret, s.engine_key);
        env.push(env_pair("DATABASE_URL", s.database.url.expose()));
        env.push(env_pair("FLOWGATE_NATS_URL", &nats_url));
        env.extend(args.gateway_env.iter().cloned());
        progress(&format!(
            "starting the {name} on {addr} (NATS {nats_url}, run log: {})",
            s.database.place
        ));
        let child = procs::spawn(procs::Spawn {
            name,
            exe: s.exe,
            args: vec!["serve".into()],
            env,
            addr,
            logs: s.logs,
            startup_timeout: args.startup_timeout,
        })
        .await?;
        gateways.push((addr, child.pid));
        children.cluster.push(child);
    }
    for &(addr, _) in &gateways {
        cluster_ready(addr, args, &nats_url).await?;
    }
    let [(owner_addr, owner_pid), (follower_addr, follower_pid)] = gateways[..] else {
        unreachable!("two gateways were started");
    };
    let target = |addr: SocketAddr| {
        super::gateway_target(
            args,
            addr,
            &format!("ws://{addr}"),
            s.local_ips.clone(),
            s.jwt_secret.clone(),
        )
    };
    let target = Arc::new(ClusterTarget {
        owner: target(owner_addr),
        follower: target(follower_addr),
    });

    progress(&format!(
        "cluster: {} sessions (owner {owner_addr}, follower {follower_addr}), {:?} warm-up + {:?}",
        args.sessions, args.warmup, args.duration
    ));
    let pids = [
        Some(owner_pid),
        Some(follower_pid),
        nats_pid,
        s.engine_pid,
        Some(std::process::id()),
    ];
    let phase = phase(args, target, pids).await;

    let mut incomplete = Some(0);
    for addr in [owner_addr, follower_addr] {
        let n = super::scrape::counter(
            addr,
            "flowgate_runs_log_incomplete_total",
            args.connect_timeout,
        )
        .await
        .ok();
        incomplete = incomplete.zip(n).map(|(a, b)| a + b);
    }

    let tck = s.tck;
    let secs = |i: usize| super::cpu_seconds(phase.start[i], phase.end[i], tck);
    let window_s = phase.window_s;
    let cpu =
        |i: usize, events: u64| Some(super::cpu_per_event(pids[i]?, secs(i)?, window_s, events));
    let mut t = phase.tally;
    let (owner_events, follower_events) = (t.owner.frames_in_window, t.follower.frames_in_window);
    let others = (secs(3), secs(4));
    let follow_added_us = summarize(&mut t.follow_us);
    let follow_start_us = summarize(&mut t.attach_us);
    let owner = PathReport::from_tally(std::mem::take(&mut t.owner), window_s, others);
    let follower = PathReport::from_tally(std::mem::take(&mut t.follower), window_s, others);
    Ok(ClusterReport {
        nats_url,
        nats_server,
        owner_url: format!("ws://{owner_addr}"),
        follower_url: format!("ws://{follower_addr}"),
        errors: owner.errors + follower.errors,
        lost_runs: owner.lost_runs + follower.lost_runs,
        owner,
        follower,
        follow_added_us,
        follow_start_us,
        follower_first_events: t.follower_first,
        catch_up_events: t.catch_up,
        resume_retries: t.resume_retries,
        runs_compared: t.compared,
        runs_mismatched: t.mismatched,
        owner_cpu: cpu(0, owner_events),
        follower_cpu: cpu(1, follower_events),
        nats_cpu: cpu(2, follower_events),
        runs_log_incomplete: incomplete,
    })
}

/// Wait until the gateway at `addr` says `flowgate_cluster_ready 1` (NATS connected, the
/// stream made, its probe back), within `--startup-timeout`.
async fn cluster_ready(
    addr: SocketAddr,
    args: &BenchArgs,
    nats_url: &str,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + args.startup_timeout;
    loop {
        let last = match super::scrape::counter(
            addr,
            "flowgate_cluster_ready",
            args.connect_timeout,
        )
        .await
        {
            Ok(1) => return Ok(()),
            Ok(n) => format!("flowgate_cluster_ready {n}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "the gateway on {addr} did not join the cluster within {:?} ({last}); is \
                 JetStream on at {nats_url}? (--child-logs DIR keeps the gateways' logs)",
                args.startup_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the cluster phase measured; readings in the order of the pids: owner, follower,
/// nats-server, engine, this process.
struct Phase {
    tally: session::ClusterTally,
    window_s: f64,
    start: [Option<ProcSample>; 5],
    end: [Option<ProcSample>; 5],
}

fn read(pids: &[Option<u32>; 5]) -> (Instant, [Option<ProcSample>; 5]) {
    (Instant::now(), pids.map(|p| p.and_then(procs::sample)))
}

/// The sessions start staggered over one interval and run back to back; the window is
/// [start + warm-up, start + warm-up + duration], as in the single-gateway phase.
async fn phase(args: &BenchArgs, target: Arc<ClusterTarget>, pids: [Option<u32>; 5]) -> Phase {
    let start = Instant::now() + Duration::from_millis(100);
    let warm_end = start + args.warmup;
    let end = warm_end + args.duration;
    let plan = Arc::new(super::plan(args, warm_end, end));
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    let n = args.sessions;
    for i in 0..n {
        let start_at = start + args.interval.mul_f64(i as f64 / n as f64);
        set.spawn(session::cluster_streaming(
            i,
            target.clone(),
            plan.clone(),
            start_at,
            gate.clone(),
            counters.clone(),
        ));
    }
    tokio::time::sleep_until(warm_end).await;
    let (t0, first) = read(&pids);
    tokio::time::sleep_until(end).await;
    let (t1, last) = read(&pids);
    // A run in flight at the end finishes on both sides (the follower may wait for the run id
    // and resume again for up to a frame timeout).
    let run_len = args.interval * args.events as u32;
    let deadline = Instant::now()
        + run_len
        + args.frame_timeout * 2
        + args.connect_timeout * 2
        + args.close_timeout;
    let tally = super::collect(set, deadline).await;
    Phase {
        tally,
        window_s: (t1 - t0).as_secs_f64(),
        start: first,
        end: last,
    }
}
