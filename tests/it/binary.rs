//! The real `flowgate` binary: serve + SIGTERM, token, agents import, validate.

use std::process::Stdio;
use std::time::Duration;

use flowgate::engine::EngineConfig;
use serde_json::json;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_flowgate");

fn flows_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows")
}

/// Start `flowgate serve` on port 0 and return the child and the address it logged.
async fn start_serve(
    engine_url: &str,
    extra_env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("serve")
        .env_clear()
        .env("FLOWGATE_LISTEN", "127.0.0.1:0")
        .env("FLOWGATE_FLOWS_DIR", flows_dir())
        .env("FLOWGATE_JWT_SECRET", SECRET)
        .env("FLOWGATE_ENGINE_URL", engine_url)
        .env("FLOWGATE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the binary starts");
    let addr = listening_address(&mut child).await;
    (child, addr)
}

#[tokio::test]
async fn sigterm_lets_the_running_run_finish_closes_with_1012_and_exits_0() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 40;
    engine.llm_token_delay = Duration::from_millis(25);
    let engine = spawn_engine(engine).await;
    let (mut child, addr) = start_serve(&engine.url(), &[("FLOWGATE_SHUTDOWN_GRACE", "10s")]).await;

    let url = format!("ws://{addr}/api/chat/execute/assistant");
    let mut c = Client::connect_bearer(&url, Some(&token("alice"))).await;
    c.send_json(json!({"message": "finish before you go"}))
        .await;
    let mut frames = Vec::new();
    while frames.len() < 10 {
        frames.push(c.next().await.unwrap());
    }
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());

    // New connections are refused while draining: wait until the signal is handled (a socket
    // accepted before that is dropped at once), then the run still finishes below.
    let url = url.as_str();
    wait_until(
        "new sockets refused after SIGTERM",
        FRAME_WAIT,
        || async move { tokio_tungstenite::connect_async(url).await.is_err() },
    )
    .await;

    frames.extend(c.collect_run().await);
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
    assert_run_stamps(&frames);
    assert_eq!(c.close_code().await, Some(1012));
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn token_subcommand_mints_a_token_the_gateway_accepts() {
    let out = std::process::Command::new(BIN)
        .args(["token", "--sub", "alice", "--ttl", "5m"])
        .env("FLOWGATE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap();
    let v =
        flowgate::auth::Verifier::from_config(&flowgate::auth::AuthConfig::hs256_for_tests(SECRET))
            .unwrap();
    assert_eq!(v.verify(t.trim()).unwrap().user_id, "alice");
}

#[test]
fn serve_without_a_store_explains_what_to_pass() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--database-url") && err.contains("--flows-dir"),
        "{err}"
    );
}

#[sqlx::test]
async fn agents_import_loads_the_flows_folder_into_postgres(pool: sqlx::PgPool) {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    for _ in 0..2 {
        // Twice: the import is idempotent.
        let out = tokio::process::Command::new(BIN)
            .args(["agents", "import"])
            .arg(flows_dir())
            .env("DATABASE_URL", &url)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT agent_id, owner, status FROM agent ORDER BY agent_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["assistant", "echo", "legacy", "router"]);
    let (md5, matches): (String, bool) = sqlx::query_as(
        "SELECT md5, md5 ~ '^[0-9a-f]{32}$' FROM published_agent WHERE agent_id = 'echo'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(matches, "{md5}");
}
