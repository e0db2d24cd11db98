//! The gateway's outbound TLS (issue 17): a `wss://` engine and a `wss://` hop upstream, behind a
//! TLS terminator whose certificate comes from a CA made in the test. Trusted through
//! `--outbound-ca-file` the runs stream; from an unknown CA, or for another name, they are
//! refused with a sentence that says why, and `/readyz` says the same.

use std::net::SocketAddr;
use std::path::PathBuf;

use flowgate::config::{DialectId, GatewayConfig, Hop};
use flowgate::engine::EngineConfig;
use flowgate::http::Gateway;
use flowgate::store::Store;
use flowgate::store::files::FilesStore;
use serde_json::{Value, json};

use crate::common::*;
use crate::testca::{TestCa, tls_proxy};

/// A folder of its own for a test's CA file.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flowgate-outbound-tls-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An engine behind a TLS terminator with a certificate for `names`, signed by `ca`.
async fn tls_engine(ca: &TestCa, names: &[&str]) -> (TestEngine, SocketAddr) {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let addr = tls_proxy(ca.server_config(names), engine.addr).await;
    (engine, addr)
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = http_client()
        .get(app.http_url("/readyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn one_run(app: &TestApp) -> Vec<Value> {
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "over TLS"})).await;
    let frames = c.collect_run().await;
    assert_run_stamps(&frames);
    frames
}

#[tokio::test]
async fn a_wss_engine_trusted_through_the_ca_file_runs_flows_and_is_ready() {
    let ca = TestCa::new("flowgate test CA");
    let dir = temp_dir("trusted");
    let ca_file = ca.write_pem(&dir, "ca.pem");
    let (engine, tls) = tls_engine(&ca, &["localhost", "127.0.0.1"]).await;
    for host in ["localhost", "127.0.0.1"] {
        let mut config = GatewayConfig::for_tests(format!("wss://{host}:{}", tls.port()));
        config.outbound_ca_file = Some(ca_file.clone());
        let app = spawn_gateway_files(config).await;
        let frames = one_run(&app).await;
        assert_completed(&frames);
        let last = frames.last().unwrap();
        assert_eq!(
            last["data"]["final_output"]["text_output"], "over TLS",
            "the echo came back through TLS: {last}"
        );
        let (status, body) = readyz(&app).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["engine"]["ok"], true, "{body}");
        app.stop().await;
    }
    drop(engine);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_engine_certificate_from_an_unknown_ca_or_for_another_name_is_refused_clearly() {
    let ca = TestCa::new("flowgate test CA");
    let dir = temp_dir("refused");
    let ca_file = ca.write_pem(&dir, "ca.pem");

    // Unknown CA: the system's roots do not know the test CA.
    let (_engine, tls) = tls_engine(&ca, &["localhost"]).await;
    let app = spawn_gateway_files(GatewayConfig::for_tests(format!(
        "wss://localhost:{}",
        tls.port()
    )))
    .await;
    let frames = one_run(&app).await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "flow_error", "{last}");
    assert_eq!(last["data"]["code"], "engine_unavailable", "{last}");
    let message = last["data"]["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("the TLS certificate of the engine is not trusted")
            && message.contains("unknown certificate authority"),
        "{last}"
    );
    assert!(message.contains("--outbound-ca-file"), "{last}");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    let why = body["engine"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("unknown certificate authority"), "{body}");
    app.stop().await;

    // A trusted CA, but the certificate names another host.
    let (_engine, tls) = tls_engine(&ca, &["engine.example"]).await;
    let mut config = GatewayConfig::for_tests(format!("wss://localhost:{}", tls.port()));
    config.outbound_ca_file = Some(ca_file);
    let app = spawn_gateway_files(config).await;
    let frames = one_run(&app).await;
    let last = frames.last().unwrap();
    assert_eq!(last["data"]["code"], "engine_unavailable", "{last}");
    let message = last["data"]["error"].as_str().unwrap_or_default();
    assert!(message.contains("not valid for the host name"), "{last}");
    app.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_reference_engine_serves_wss_itself_with_its_certificate_and_key() {
    let ca = TestCa::new("flowgate test CA");
    let dir = temp_dir("engine-serves");
    let ca_file = ca.write_pem(&dir, "ca.pem");
    let (cert, key) = ca.write_server_files(&dir, &["localhost"]);
    let mut engine_config = EngineConfig::for_tests();
    engine_config.tls_cert = Some(cert.clone());
    engine_config.tls_key = Some(key.clone());
    let engine = spawn_engine(engine_config).await;
    // Connections that never start their TLS handshake hold nobody up.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(engine.addr).await.unwrap());
    }
    let mut config = GatewayConfig::for_tests(format!("wss://localhost:{}", engine.addr.port()));
    config.outbound_ca_file = Some(ca_file);
    let app = spawn_gateway_files(config).await;
    assert_completed(&one_run(&app).await);
    drop(silent);
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
    // A plain ws:// client gets no WebSocket from a TLS port.
    let plain = GatewayConfig::for_tests(format!("ws://localhost:{}", engine.addr.port()));
    let app = spawn_gateway_files(plain).await;
    let frames = one_run(&app).await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "engine_unavailable");
    app.stop().await;
    drop(engine);

    // A key that is not the certificate's, or no key at all, stops the engine at startup.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, other_key) = ca.write_server_files(&other, &["localhost"]);
    for (key, says) in [
        (other_key, "cannot serve TLS together"),
        (cert.clone(), "holds no private key"),
    ] {
        let mut engine_config = EngineConfig::for_tests();
        engine_config.tls_cert = Some(cert.clone());
        engine_config.tls_key = Some(key);
        let err = match flowgate::engine::Engine::build(engine_config).await {
            Ok(_) => panic!("the engine started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("--tls-cert") && err.contains(says), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_insecure_test_flag_accepts_a_certificate_nobody_trusts() {
    let ca = TestCa::new("nobody trusts this CA");
    let (_engine, tls) = tls_engine(&ca, &["localhost"]).await;
    let mut config = GatewayConfig::for_tests(format!("wss://localhost:{}", tls.port()));
    config.insecure_outbound_tls_for_tests = true;
    let app = spawn_gateway_files(config).await;
    assert_completed(&one_run(&app).await);
    app.stop().await;
}

#[tokio::test]
async fn bad_tls_settings_stop_the_gateway_at_startup_with_the_flag_named() {
    let start = |config: GatewayConfig| async move {
        match Gateway::with_store(config, Store::Files(FilesStore::embedded())).await {
            Ok(_) => panic!("the gateway started"),
            Err(e) => e.to_string(),
        }
    };
    let dir = temp_dir("bad");
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let mut config = GatewayConfig::for_tests("wss://localhost:1");
    config.outbound_ca_file = Some(not_pem.clone());
    let err = start(config).await;
    assert!(
        err.contains("--outbound-ca-file") && err.contains("holds no certificate"),
        "{err}"
    );
    assert!(err.contains(not_pem.to_str().unwrap()), "{err}");

    let mut config = GatewayConfig::for_tests("ws://127.0.0.1:1");
    config.outbound_ca_file = Some(dir.join("missing.pem"));
    let err = start(config).await;
    assert!(err.contains("cannot read the CA file"), "{err}");

    let err = start(GatewayConfig::for_tests("https://engine:8001")).await;
    assert!(err.contains("ws:// or wss://"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_hop_reaches_a_wss_upstream_through_the_ca_file_and_refuses_an_unknown_ca() {
    let ca = TestCa::new("flowgate test CA");
    let dir = temp_dir("hop");
    let ca_file = ca.write_pem(&dir, "ca.pem");
    let backend = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Omni2];
        c.omni2_agent_id = Some("echo".into());
    })
    .await;
    let tls = tls_proxy(ca.server_config(&["localhost"]), backend.addr).await;
    let hop_with = |ca_file: Option<PathBuf>| {
        let mut config = GatewayConfig::for_tests("ws://127.0.0.1:1");
        config.hops = vec![Hop {
            path: "/ws/chat".into(),
            upstream: format!("wss://localhost:{}/ws/chat", tls.port()),
        }];
        config.outbound_ca_file = ca_file;
        spawn_gateway_files(config)
    };

    let hop = hop_with(Some(ca_file)).await;
    let url = format!("ws://{}/ws/chat?token={}", hop.addr, token("42"));
    let mut c = DialectSocket::connect(&url, |_| {}).await;
    c.send(json!({"type": "message", "text": "through two hops"}))
        .await;
    let turn = c
        .until(|f| f["type"] == "done" || f["type"] == "error")
        .await;
    assert_eq!(turn.last().unwrap()["type"], "done", "{turn:?}");
    drop(c);
    hop.stop().await;

    // Without the CA the hop refuses the client with the reason.
    let hop = hop_with(None).await;
    let url = format!("ws://{}/ws/chat?token={}", hop.addr, token("42"));
    let mut c = DialectSocket::connect(&url, |_| {}).await;
    let refused = c.next().await.expect("a refusal frame");
    assert_eq!(refused["type"], "error", "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("unknown certificate authority") && message.contains("--outbound-ca-file"),
        "{refused}"
    );
    drop(c);
    hop.stop().await;
    backend.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
