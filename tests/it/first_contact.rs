//! What a newcomer meets on the command line: startup failures in one line with the address or
//! URL (password hidden) and the fix, what to do after `serve` starts, the demo's key, tokens for
//! testing expiry, help that lists what each command uses, logs without colour codes or Rust
//! debug forms when written to a pipe.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_flowgate");

fn flows_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows")
}

/// Run `flowgate args…` with only `env` in its environment (text logs, as a user gets them).
async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_clear().kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the command ends")
        .expect("the binary starts")
}

/// Standard error's non-empty lines.
fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// One line, no colour codes, exit 1.
fn assert_one_plain_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = error_lines(out);
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    assert!(
        !lines[0].contains('\u{1b}'),
        "no ANSI codes in a pipe: {lines:?}"
    );
    lines[0].clone()
}

#[tokio::test]
async fn an_unreachable_database_is_one_line_naming_the_url_without_its_password() {
    let url = format!("postgres://flow:hunter2@{}/app", dead_addr().await);
    let out = run_bin(
        &["serve"],
        &[("DATABASE_URL", &url), ("FLOWGATE_JWT_SECRET", SECRET)],
    )
    .await;
    let line = assert_one_plain_line(&out);
    assert!(!line.contains("hunter2"), "{line}");
    assert!(line.contains("postgres://flow:***@127.0.0.1:"), "{line}");
    assert!(line.contains("connection refused"), "{line}");
    assert!(line.contains("DATABASE_URL"), "{line}");
    assert_eq!(line.matches("connection refused").count(), 1, "{line}");
}

#[tokio::test]
async fn a_database_url_that_is_not_postgres_is_refused_as_such() {
    let out = run_bin(
        &["serve"],
        &[
            ("DATABASE_URL", "mysql://root:hunter2@db/app"),
            ("FLOWGATE_JWT_SECRET", SECRET),
        ],
    )
    .await;
    let line = assert_one_plain_line(&out);
    assert!(line.contains("not a PostgreSQL URL"), "{line}");
    assert!(
        !line.contains("hunter2") && !line.contains("lookup"),
        "{line}"
    );
}

#[tokio::test]
async fn a_missing_database_says_to_create_it_without_server_source_lines() {
    let base = std::env::var("DATABASE_URL").expect("set by tests/it/main.rs");
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|s| base[s..].find('/').map(|j| s + j))
        .unwrap_or(base.len());
    let url = format!("{}/flowgate_no_such_database", &base[..authority_end]);
    let out = run_bin(
        &["serve"],
        &[("DATABASE_URL", &url), ("FLOWGATE_JWT_SECRET", SECRET)],
    )
    .await;
    let line = assert_one_plain_line(&out);
    assert!(
        line.contains("does not exist") && line.contains("create it"),
        "{line}"
    );
    assert!(!line.contains("at line"), "{line}");
}

#[tokio::test]
async fn a_busy_port_names_the_address_and_the_flag_for_gateway_and_engine() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let flows = flows_dir();
    let out = run_bin(
        &[
            "serve",
            "--listen",
            &addr,
            "--flows-dir",
            flows.to_str().unwrap(),
        ],
        &[("FLOWGATE_JWT_SECRET", SECRET)],
    )
    .await;
    let line = assert_one_plain_line(&out);
    assert!(line.contains(&addr) && line.contains("--listen"), "{line}");
    assert_eq!(line.matches("in use").count(), 1, "{line}");

    let out = run_bin(&["engine", "--listen", &addr], &[]).await;
    let line = assert_one_plain_line(&out);
    assert!(line.contains(&addr), "{line}");
    assert!(line.contains("FLOWGATE_ENGINE_LISTEN"), "{line}");
}

#[tokio::test]
async fn an_unusable_ca_file_stops_the_engine_in_one_line_naming_the_flag() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("first-contact-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let out = run_bin(
        &["engine", "--listen", "127.0.0.1:0", "--ca-file", ca_file],
        &[],
    )
    .await;
    let line = assert_one_plain_line(&out);
    assert!(
        line.contains("--ca-file") && line.contains(ca_file),
        "{line}"
    );
    assert!(line.contains("holds no certificate"), "{line}");
}

#[tokio::test]
async fn serve_says_what_to_do_next_and_logs_plain_values() {
    let engine = spawn_engine(flowgate::engine::EngineConfig::for_tests()).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--flows-dir"])
        .arg(flows_dir())
        .env_clear()
        .env("FLOWGATE_JWT_SECRET", SECRET)
        .env("FLOWGATE_ENGINE_URL", engine.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            said.push_str(&line);
            said.push('\n');
            if let Some(rest) = line.strip_prefix("flowgate is serving on ") {
                return rest.split(' ').next().unwrap().to_owned();
            }
        }
        panic!("serve exited: {said}");
    })
    .await
    .expect("serve says where it listens");
    while let Ok(Some(line)) = stdout.next_line().await {
        said.push_str(&line);
        said.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(said.contains(&format!("http://{addr}/")), "{said}");
    assert!(said.contains("flowgate token --sub"), "{said}");
    assert!(said.contains("flowgate chat"), "{said}");

    // A run through it, then read its text log as a file or pipe gets it.
    let url = format!("ws://{addr}/api/chat/execute/echo");
    let mut c = Client::connect_bearer(&url, Some(&token("alice"))).await;
    c.send_json(json!({"message": "hi"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
    drop(c);
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("run ended"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a pipe: {log}");
    assert!(!log.contains("Some("), "no Rust debug forms: {log}");
    assert!(
        log.contains("transport=header") || log.contains("transport=\"header\""),
        "{log}"
    );
    assert!(
        !log.contains("protocol"),
        "a client that goes away broke no protocol: {log}"
    );
    assert!(
        !log.contains("code=\"\""),
        "absent fields are left out: {log}"
    );
}

#[tokio::test]
async fn the_demo_prints_its_key_and_flowgate_token_mints_for_other_users_with_it() {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--engine-listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut secret, mut adk) = (None, None, None);
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(rest) = line.split("gateway on ").nth(1) {
                addr = Some(rest.trim_end_matches(").").to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("adk (barka/ovara): ") {
                adk = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(s) = line.trim().strip_prefix("export FLOWGATE_JWT_SECRET=") {
                secret = Some(s.to_owned());
                break;
            }
        }
    })
    .await
    .expect("the demo prints its key");
    let (addr, secret) = (addr.expect("gateway address"), secret.expect("key"));
    let out = run_bin(
        &["token", "--sub", "bob"],
        &[("FLOWGATE_JWT_SECRET", &secret)],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let bob = String::from_utf8(out.stdout).unwrap();
    let url = format!("ws://{addr}/api/chat/execute/echo");
    let mut c = Client::connect_bearer(&url, Some(bob.trim())).await;
    c.send_json(json!({"message": "hi from bob"})).await;
    let frames = c.collect_run().await;
    assert_completed(&frames);

    // The adk line works as printed (with a client id in place of `<client_id>`).
    let adk = adk
        .expect("the demo prints the adk line")
        .replace("<client_id>", "c1");
    let (mut ws, _) = tokio_tungstenite::connect_async(adk)
        .await
        .expect("adk upgrade");
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"mime_type": "text/plain", "data": "Hello"}).to_string(),
    ))
    .await
    .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(msg.to_text().unwrap_or(""))
                && v["turn_complete"] == true
            {
                return v;
            }
        }
        panic!("the adk socket closed before the turn ended");
    })
    .await
    .expect("an adk turn in time");
    assert_eq!(done["interrupted"], false, "{done}");
}

#[tokio::test]
async fn token_refuses_a_negative_ttl_and_mints_an_expired_token_on_request() {
    let env = [("FLOWGATE_JWT_SECRET", SECRET)];
    let out = run_bin(&["token", "--sub", "alice", "--ttl", "-5m"], &env).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--expired"), "{err}");

    let out = run_bin(
        &["token", "--sub", "alice", "--expired", "--ttl", "5m"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));
    let t = String::from_utf8(out.stdout).unwrap();
    let v =
        flowgate::auth::Verifier::from_config(&flowgate::auth::AuthConfig::hs256_for_tests(SECRET))
            .unwrap();
    assert_eq!(v.verify(t.trim()), Err(flowgate::auth::AuthError::Expired));
}

#[tokio::test]
async fn help_lists_only_what_each_command_uses() {
    for (command, runtime) in [
        ("serve", true),
        ("engine", true),
        ("demo", true),
        ("bench", true),
        ("token", false),
        ("convert", false),
        ("validate", false),
        ("chat", false),
    ] {
        let out = run_bin(&[command, "--help"], &[]).await;
        assert!(out.status.success(), "{command}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            help.contains("--worker-threads"),
            runtime,
            "{command} --help:\n{help}"
        );
    }
}

#[tokio::test]
async fn an_engine_beyond_loopback_without_a_key_refuses_to_start() {
    let out = run_bin(&["engine", "--listen", "0.0.0.0:0"], &[]).await;
    let line = assert_one_plain_line(&out);
    assert!(
        line.contains("--engine-key") && line.contains("FLOWGATE_ENGINE_KEY"),
        "{line}"
    );
}
