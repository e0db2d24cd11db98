//! The processes a benchmark measures: the reference engine and the gateway started as child
//! processes of a flowgate executable (so `/proc` numbers are per process), their readiness,
//! `/proc/<pid>` sampling (CPU ticks, RSS, peak RSS) and the file-descriptor limit, which
//! children inherit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::{Child, Command};

use super::BenchError;

/// One started child process; killed when dropped.
pub struct ChildProc {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl ChildProc {
    /// Stop the process (SIGKILL: a bench child holds nothing worth a graceful shutdown) and
    /// reap it.
    pub async fn stop(mut self, wait: Duration) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(wait, self.child.wait()).await;
    }
}

/// What to start.
pub struct Spawn<'a> {
    pub name: &'static str,
    pub exe: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub logs: Option<&'a Path>,
    pub startup_timeout: Duration,
}

/// A free loopback port (bound, read, released: the child binds it right after).
pub fn free_port() -> Result<SocketAddr, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))?;
    l.local_addr()
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))
}

/// Start a child with a clean flowgate environment (no inherited `FLOWGATE_*` or
/// `DATABASE_URL`: only what `spec.env` says) and wait until it accepts TCP connections.
pub async fn spawn(spec: Spawn<'_>) -> Result<ChildProc, BenchError> {
    let mut cmd = Command::new(spec.exe);
    cmd.args(&spec.args);
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("FLOWGATE_") || k == "DATABASE_URL")
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    match spec.logs {
        Some(dir) => {
            let path = dir.join(format!("{}.log", spec.name));
            let file = std::fs::File::create(&path)
                .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", path.display())))?;
            let err = file
                .try_clone()
                .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
            cmd.stdout(file).stderr(err);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        BenchError::Setup(format!(
            "cannot start the {} ({}): {e}",
            spec.name,
            spec.exe.display()
        ))
    })?;
    let pid = child.id().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + spec.startup_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Setup(format!(
                "the {} exited at startup ({status}); run with --child-logs DIR to see why",
                spec.name
            )));
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(spec.addr),
        )
        .await;
        if matches!(probe, Ok(Ok(_))) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "the {} did not listen on {} within {:?}",
                spec.name, spec.addr, spec.startup_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(ChildProc {
        name: spec.name,
        addr: spec.addr,
        pid,
        child,
    })
}

/// One reading of `/proc/<pid>`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
}

/// Read `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the process is gone or this is
/// not Linux.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

fn parse(stat: &str, status: &str) -> Option<ProcSample> {
    // Fields after the command name (which may hold spaces and parentheses): state is field 3,
    // utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu_ticks: utime + stime,
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Raise this process's soft `RLIMIT_NOFILE` to `want` (at most the hard limit); children
/// started afterwards inherit it. Returns the limit now in force.
pub fn raise_nofile(want: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let target = want.min(hard);
    match now.current {
        Some(cur) if cur < target => {
            let new = Rlimit {
                current: Some(target),
                maximum: now.maximum,
            };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => Some(target),
                Err(_) => Some(cur),
            }
        }
        cur => cur,
    }
}

/// The number of ephemeral ports (`/proc/sys/net/ipv4/ip_local_port_range`), or 28,232 (the
/// Linux default range) when unreadable.
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            hi.checked_sub(lo).map(|d| d + 1)
        })
        .unwrap_or(28_232)
}

/// A directory for child logs, created if missing.
pub fn log_dir(dir: &Path) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_with_spaces_in_the_command_name() {
        let stat = "4242 (flow gate) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        let status = "Name:\tflowgate\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        let s = parse(stat, status).unwrap();
        assert_eq!(s.cpu_ticks, 325);
        assert_eq!(s.rss_kib, 10240);
        assert_eq!(s.hwm_kib, 20480);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
