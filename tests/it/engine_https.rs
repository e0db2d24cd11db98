//! The reference engine's outbound `https://` (issue 17): the OpenAI-compatible endpoint and
//! `rest_api` behind a TLS terminator whose certificate is signed by a CA made in the test
//! (`testca`), trusted through `--ca-file` or not at all; redirects are not followed; a bad CA
//! file stops the engine at startup. The CA file is written under the build's scratch folder
//! (`CARGO_TARGET_TMPDIR`), nothing outside the repository is read.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowgate::engine::{Engine, EngineConfig};
use serde_json::{Value, json};

use crate::common::{spawn_engine, streamed_text};
use crate::fake_llm::*;
use crate::testca::{TestCa, tls_proxy};

/// A fresh folder for this test's files, inside the build's scratch folder.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("engine-https-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test CA, its PEM written to a scratch folder.
fn ca_with_file(name: &str) -> (TestCa, PathBuf) {
    let ca = TestCa::new(&format!("flowgate test CA ({name})"));
    let path = ca.write_pem(&scratch(name), "ca.pem");
    (ca, path)
}

/// The fake SSE endpoint behind a TLS terminator with a certificate of `ca`: its
/// `https://127.0.0.1:<port>/v1` base URL.
async fn https_llm(ca: &TestCa, pieces: Vec<(std::time::Duration, String)>) -> (FakeLlm, String) {
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let tls = tls_proxy(ca.server_config(&["127.0.0.1", "localhost"]), fake.addr).await;
    let base_url = format!("https://127.0.0.1:{}/v1", tls.port());
    (fake, base_url)
}

fn three_deltas() -> Vec<(std::time::Duration, String)> {
    vec![
        (ms(10), chunk(&delta("Secure "))),
        (ms(10), chunk(&delta("chains "))),
        (ms(10), chunk(&delta("stream."))),
        (ms(10), chunk("data: [DONE]\n\n")),
        (ms(0), "0\r\n\r\n".to_owned()),
    ]
}

#[tokio::test]
async fn an_https_endpoint_trusted_by_the_ca_file_streams_through_the_gateway() {
    let (ca, ca_file) = ca_with_file("llm");
    let (fake, base_url) = https_llm(&ca, three_deltas()).await;
    let mut engine = endpoint_config(&base_url);
    engine.ca_file = Some(ca_file);
    let frames = assistant_run_through_the_gateway(engine, "Is this encrypted?").await;
    assert_eq!(chunk_texts(&frames), ["Secure ", "chains ", "stream."]);
    assert_eq!(streamed_text(&frames), "Secure chains stream.");
    // The request crossed the TLS terminator intact, key included.
    let req = fake.request.await.unwrap();
    req.assert_chat_completion_with_the_test_key();
    let content = req.body["messages"][0]["content"].as_str().unwrap();
    assert!(content.contains("Is this encrypted?"), "{content}");
}

#[tokio::test]
async fn an_https_endpoint_of_an_unknown_ca_fails_the_element_on_its_certificate() {
    let ca = TestCa::new("a CA nobody trusts");
    let (mut fake, base_url) = https_llm(&ca, three_deltas()).await;
    // No --ca-file: only the system's roots, which never signed the test CA.
    let engine = spawn_engine(endpoint_config(&base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.starts_with("LLM request failed: the endpoint's TLS certificate is not trusted"),
        "{error}"
    );
    assert!(error.contains("unknown certificate authority"), "{error}");
    assert!(error.contains("--ca-file"), "{error}");
    assert!(of_type(&events, "llm_chunk").is_empty());
    assert_eq!(events.last().unwrap()["type"], "flow_error");
    // The handshake failed: nothing reached the endpoint behind the terminator.
    assert!(fake.request.try_recv().is_err());
}

/// `start -> api` with the `rest_api` element's `parameters`.
fn rest_flow(parameters: Value) -> Value {
    json!({
        "nodes": {
            "start": {"type": "start", "name": "Start"},
            "api": {"type": "rest_api", "name": "API", "parameters": parameters}
        },
        "connections": [{"from_id": "start", "to_id": "api", "connection_type": "control"}],
        "start_element": "start"
    })
}

/// The `api` element's outputs, or its error.
fn api_result(events: &[Value]) -> Result<Value, String> {
    if let Some(e) = events
        .iter()
        .find(|e| e["type"] == "element_error" && e["data"]["element_id"] == "api")
    {
        return Err(e["data"]["error"].as_str().unwrap().to_owned());
    }
    events
        .iter()
        .find(|e| e["type"] == "element_completed" && e["data"]["element_id"] == "api")
        .map(|e| e["data"]["outputs"].clone())
        .ok_or_else(|| format!("the api element neither completed nor failed: {events:#?}"))
}

/// A plain HTTP server on port 0 counting its requests (the redirect's target).
async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "stolen"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

#[tokio::test]
async fn rest_api_calls_an_allowed_https_host_and_never_follows_a_redirect() {
    let (elsewhere, elsewhere_hits) = counting_server().await;
    let location = format!("http://{elsewhere}/secrets");
    let app = axum::Router::new()
        .route(
            "/v1/info",
            axum::routing::get(|| async { axum::Json(json!({"ok": true, "over": "tls"})) }),
        )
        .route(
            "/go",
            axum::routing::get(move || {
                let location = location.clone();
                async move {
                    (
                        axum::http::StatusCode::FOUND,
                        [("location", location)],
                        "moved",
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (ca, ca_file) = ca_with_file("rest");
    let tls = tls_proxy(ca.server_config(&["127.0.0.1", "localhost"]), backend).await;
    let allowed = format!("127.0.0.1:{}", tls.port());
    let engine = spawn_engine(EngineConfig {
        rest_allow_hosts: vec![allowed.clone()],
        ca_file: Some(ca_file),
        ..EngineConfig::for_tests()
    })
    .await;

    let info = rest_flow(json!({"url": format!("https://{allowed}/v1/info")}));
    let events = run_to_end(&engine, &info, &json!({})).await;
    assert_eq!(
        api_result(&events).unwrap(),
        json!({"response": {"ok": true, "over": "tls"}, "status_code": 200})
    );

    // The redirect is the element's answer; its target (not in the allow-list) is never asked.
    let go = rest_flow(json!({"url": format!("https://{allowed}/go")}));
    let events = run_to_end(&engine, &go, &json!({})).await;
    assert_eq!(
        api_result(&events).unwrap(),
        json!({"response": "moved", "status_code": 302})
    );
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);

    // The same host without the CA file: a certificate error naming the flag.
    let untrusting = spawn_engine(EngineConfig {
        rest_allow_hosts: vec![allowed.clone()],
        ..EngineConfig::for_tests()
    })
    .await;
    let events = run_to_end(&untrusting, &info, &json!({})).await;
    let error = api_result(&events).unwrap_err();
    assert!(
        error.starts_with("REST API call failed: the TLS certificate of"),
        "{error}"
    );
    assert!(error.contains("unknown certificate authority"), "{error}");
    assert!(error.contains("--ca-file"), "{error}");
}

#[tokio::test]
async fn a_bad_ca_file_stops_the_engine_at_startup_naming_the_flag() {
    let dir = scratch("bad");
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    for (path, why) in [
        (not_pem, "holds no certificate"),
        (dir.join("missing.pem"), "cannot read the CA file"),
    ] {
        let built = Engine::build(EngineConfig {
            ca_file: Some(path.clone()),
            ..EngineConfig::for_tests()
        })
        .await;
        let err = built.err().expect("a bad CA file is refused").to_string();
        assert!(err.contains("--ca-file"), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(err.contains(path.to_str().unwrap()), "{err}");
    }
}

#[tokio::test]
async fn a_rest_api_response_over_the_size_cap_is_an_element_error() {
    let big = "x".repeat(4096);
    let app = axum::Router::new().route(
        "/big",
        axum::routing::get(move || {
            let big = big.clone();
            async move { big }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (ca, ca_file) = ca_with_file("cap");
    let tls = tls_proxy(ca.server_config(&["127.0.0.1", "localhost"]), backend).await;
    let allowed = format!("127.0.0.1:{}", tls.port());
    let engine = spawn_engine(EngineConfig {
        rest_allow_hosts: vec![allowed.clone()],
        rest_max_response_bytes: 1024,
        ca_file: Some(ca_file),
        ..EngineConfig::for_tests()
    })
    .await;
    let flow = rest_flow(json!({"url": format!("https://{allowed}/big")}));
    let events = run_to_end(&engine, &flow, &json!({})).await;
    let error = api_result(&events).unwrap_err();
    assert_eq!(
        error,
        "REST API call failed: the response is larger than 1024 bytes"
    );
}
