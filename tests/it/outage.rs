//! Postgres going away and coming back, through a proxy the test controls.

use std::time::Duration;

use flowgate::config::{GatewayConfig, Secret};
use flowgate::engine::EngineConfig;
use flowgate::store::Store;
use flowgate::store::postgres::PgStore;
use serde_json::json;

use crate::common::*;

#[sqlx::test]
async fn a_database_outage_is_reported_and_recovers_without_a_restart(pool: sqlx::PgPool) {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(&pool, &flows)
        .await
        .unwrap();
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = Secret::new(format!("postgres://postgres@{}/{db}", proxy.addr));
    let store = PgStore::connect(&url, 4, Duration::from_secs(1))
        .await
        .expect("connects through the proxy");

    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 80;
    engine.llm_token_delay = Duration::from_millis(20);
    let engine = spawn_engine(engine).await;
    let mut config = GatewayConfig::for_tests(engine.url());
    config.store_timeout = Duration::from_secs(1);
    let app = spawn_gateway(config, Store::Postgres(store), Some(engine)).await;

    let ready = crate::chain::http_get(&app.http_url("/readyz")).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // A run in progress when the database goes away.
    let mut running = app.connect("assistant", "alice").await;
    running
        .send_json(json!({"message": "keep streaming"}))
        .await;
    let mut frames = Vec::new();
    while frames.len() < 8 {
        frames.push(running.next().await.unwrap());
    }
    proxy.down();

    let ready = crate::chain::http_get(&app.http_url("/readyz")).await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("store"), "{ready}");

    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "during the outage"})).await;
    let outage = c.collect_run().await;
    assert_eq!(
        outage.last().unwrap()["data"]["code"],
        "store_unavailable",
        "{:?}",
        outage.last()
    );

    frames.extend(running.collect_run().await);
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "the running run finishes"
    );
    assert_run_stamps(&frames);

    proxy.up();
    let mut recovered = None;
    for _ in 0..20 {
        let mut c = app.connect("echo", "alice").await;
        c.send_json(json!({"message": "after"})).await;
        let f = c.collect_run().await;
        if f.last().unwrap()["type"] == "flow_completed" {
            recovered = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered.is_some(),
        "runs work again once the database is back"
    );
    let ready = crate::chain::http_get(&app.http_url("/readyz")).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}
