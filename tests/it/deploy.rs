//! The container packaging: `docker-compose.yml` wires the real subcommands with env names they
//! actually read (checked against the clap definitions), and the Dockerfile's runtime stage is
//! small and unprivileged. No Docker engine is needed.

use std::collections::BTreeSet;

use clap::CommandFactory;
use serde_json::Value;

fn repo_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    yaml_serde::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("service `{name}` is missing"))
}

/// `environment` as (name, value), in either compose spelling (map or `NAME=value` list).
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|s| {
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_value(service: &Value, name: &str) -> String {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} is not set"))
        .1
}

fn command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => panic!("no command: {other}"),
    }
}

/// The env names a subcommand reads, from its clap definition (`path` = `["agents", "import"]`).
fn env_names(path: &[&str]) -> BTreeSet<String> {
    let mut cmd = flowgate::cli::Cli::command();
    cmd.build();
    let mut sub = &cmd;
    for name in path {
        sub = sub
            .find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand `{name}`"));
    }
    let names: BTreeSet<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(!names.is_empty(), "{path:?} reads no env at all?");
    names
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn compose_has_its_services_running_the_right_subcommands() {
    let compose = compose();
    let names: BTreeSet<&str> = compose["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "postgres",
            "nats",
            "engine",
            "import",
            "gateway",
            "gateway-2",
            "lb"
        ])
    );

    let postgres = service(&compose, "postgres");
    assert_eq!(postgres["image"], "postgres:15");
    assert!(
        postgres["healthcheck"]["test"]
            .to_string()
            .contains("pg_isready")
    );

    assert_eq!(command(service(&compose, "engine")), ["engine"]);
    assert_eq!(
        command(service(&compose, "import")),
        ["agents", "import", "/app/flows"]
    );
    assert_eq!(command(service(&compose, "gateway")), ["serve"]);
    assert_eq!(command(service(&compose, "gateway-2")), ["serve"]);
    // JetStream on, with its store on a volume.
    let nats = command(service(&compose, "nats"));
    assert!(nats.contains(&"-js".to_owned()), "{nats:?}");
    for name in ["engine", "import", "gateway", "gateway-2"] {
        assert_eq!(
            service(&compose, name)["image"],
            "flowgate:local",
            "{name} runs the flowgate image"
        );
    }
}

#[test]
fn every_flowgate_env_var_in_compose_is_read_by_its_subcommand() {
    let compose = compose();
    for (name, path) in [
        ("gateway", &["serve"][..]),
        ("gateway-2", &["serve"][..]),
        ("engine", &["engine"][..]),
        ("import", &["agents", "import"][..]),
    ] {
        let known = env_names(path);
        let used: Vec<String> = environment(service(&compose, name))
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("FLOWGATE_") || k == "DATABASE_URL")
            .collect();
        assert!(!used.is_empty(), "{name} sets no flowgate env");
        for var in used {
            assert!(
                known.contains(&var),
                "service {name}: `flowgate {}` does not read {var}; it reads {known:?}",
                path.join(" ")
            );
        }
    }
}

#[test]
fn the_load_balancer_is_published_and_the_gateways_are_one_cluster() {
    let compose = compose();
    let gateway = service(&compose, "gateway");
    let engine = service(&compose, "engine");
    let listen = env_value(gateway, "FLOWGATE_LISTEN");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "listens on all interfaces: {listen}"
    );
    // Only the load balancer is published; it spreads clients over both gateways.
    let lb = service(&compose, "lb");
    let ports: Vec<String> = lb["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ports, ["8000:8000"]);
    for name in ["gateway", "gateway-2", "engine", "nats", "postgres"] {
        assert!(
            service(&compose, name).get("ports").is_none(),
            "{name} is not published"
        );
    }
    let conf = repo_file("deploy/nginx-lb.conf");
    let mounted = lb["volumes"].to_string();
    assert!(mounted.contains("./deploy/nginx-lb.conf:"), "{mounted}");
    for line in [
        format!("server gateway:{};", port_of(&listen)),
        format!("server gateway-2:{};", port_of(&listen)),
        "listen 8000;".to_owned(),
        "proxy_set_header Upgrade $http_upgrade;".to_owned(),
        "proxy_buffering off;".to_owned(),
    ] {
        assert!(conf.contains(&line), "deploy/nginx-lb.conf lacks `{line}`");
    }
    let directives: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(
        !directives
            .iter()
            .any(|l| l.starts_with("ip_hash") || l.starts_with("hash ") || l.starts_with("sticky")),
        "no sticky sessions"
    );
    // The two gateways are configured alike, on the same NATS, database and engine.
    assert_eq!(
        environment(gateway),
        environment(service(&compose, "gateway-2"))
    );
    assert_eq!(env_value(gateway, "FLOWGATE_NATS_URL"), "nats://nats:4222");

    let engine_listen = env_value(engine, "FLOWGATE_ENGINE_LISTEN");
    assert!(engine_listen.starts_with("0.0.0.0:"), "{engine_listen}");
    assert_eq!(
        env_value(gateway, "FLOWGATE_ENGINE_URL"),
        format!("ws://engine:{}", port_of(&engine_listen))
    );
    assert_eq!(
        env_value(gateway, "FLOWGATE_ENGINE_KEY"),
        env_value(engine, "FLOWGATE_ENGINE_KEY"),
        "gateway and engine share the engine key"
    );
    let db = env_value(gateway, "DATABASE_URL");
    assert!(db.contains("@postgres:5432/"), "{db}");
    assert_eq!(
        db,
        env_value(service(&compose, "import"), "DATABASE_URL"),
        "import fills the gateway's database"
    );

    let deps = &gateway["depends_on"];
    assert_eq!(
        deps["import"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(deps["engine"]["condition"], "service_started");
    assert_eq!(
        service(&compose, "import")["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
}

#[test]
fn dockerfile_runtime_stage_is_slim_unprivileged_and_ships_flows() {
    let dockerfile = repo_file("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage");
    assert!(instructions[stages[0]].starts_with("FROM rust:1.95-slim-bookworm"));
    let last = &instructions[*stages.last().unwrap()..];
    assert!(
        last[0].starts_with("FROM debian:bookworm-slim"),
        "{}",
        last[0]
    );
    // Outbound TLS (wss:// engines, https:// model providers) trusts the system's roots.
    assert!(
        last.iter()
            .any(|l| l.contains("apt-get install") && l.contains("ca-certificates")),
        "the runtime stage installs ca-certificates: {last:?}"
    );

    let user = last
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("the runtime stage sets USER");
    let who = user["USER ".len()..].split(':').next().unwrap().trim();
    assert!(who != "root" && who != "0", "runs as non-root: {user}");

    let copies: Vec<&&str> = last.iter().filter(|l| l.starts_with("COPY ")).collect();
    assert!(
        copies
            .iter()
            .any(|c| c.contains("flows/") && c.contains("/app/flows")),
        "{copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c.contains("--from=") && c.contains("flowgate")),
        "{copies:?}"
    );
    assert_eq!(copies.len(), 2, "only the binary and flows/: {copies:?}");
    assert!(
        last.iter()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("flowgate"))
    );

    let ignore = repo_file(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        "target/ stays out of the context"
    );
}

/// Top-level repository entries that the crate compiles in (`include_str!`, `sqlx::migrate!`).
fn compiled_in_paths() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = BTreeSet::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("sqlx::migrate!()") {
                found.insert("migrations".to_owned());
            }
            for (at, _) in text
                .match_indices("include_str!(")
                .chain(text.match_indices("include_bytes!("))
            {
                let rest = &text[at..];
                let Some(start) = rest.find('"') else {
                    continue;
                };
                let literal = rest[start + 1..].split('"').next().unwrap();
                let resolved = path.parent().unwrap().join(literal);
                let mut normal = std::path::PathBuf::new();
                for part in resolved.components() {
                    match part {
                        std::path::Component::ParentDir => {
                            normal.pop();
                        }
                        other => normal.push(other),
                    }
                }
                let relative = normal
                    .strip_prefix(root)
                    .unwrap_or_else(|_| panic!("{literal} leaves the repo"));
                let top = relative
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                found.insert(top);
            }
        }
    }
    found
}

#[test]
fn dockerfile_builder_copies_everything_the_crate_compiles_in() {
    let dockerfile = repo_file("Dockerfile");
    let builder: Vec<&str> = dockerfile
        .split("\nFROM ")
        .nth(1)
        .expect("a builder stage")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .collect();
    let needed = compiled_in_paths();
    assert!(
        needed.contains("static") && needed.contains("flows"),
        "{needed:?}"
    );
    for top in ["src", "Cargo.toml", "Cargo.lock"]
        .into_iter()
        .map(str::to_owned)
        .chain(needed)
    {
        assert!(
            builder.iter().any(|c| c
                .split_whitespace()
                .skip(1)
                .any(|w| w.trim_end_matches('/') == top)),
            "the builder stage does not COPY {top}: {builder:?}"
        );
    }
}
