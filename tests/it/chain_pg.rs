//! The chain against a real Postgres database (a fresh one per test).

use std::time::Duration;

use flowgate::engine::EngineConfig;
use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

#[sqlx::test]
async fn echo_runs_from_postgres(pool: PgPool) {
    let app = spawn_app_pg(pool).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "from pg"})).await;
    let frames = c.collect_run().await;
    assert_run_stamps(&frames);
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(final_output["data"]["text_output"], "from pg");
}

#[sqlx::test]
async fn published_and_draft_rows_are_selected_by_status_and_owner(pool: PgPool) {
    let app = spawn_app_pg(pool.clone()).await;
    // Make echo's draft differ from its published workflow: the draft is the assistant.
    sqlx::query(
        "UPDATE unpublished_agent SET workflow = (SELECT workflow FROM published_agent WHERE agent_id = 'assistant') WHERE agent_id = 'echo'",
    )
    .execute(&pool)
    .await
    .unwrap();

    // Active agent, no version asked: published (echo, no LLM).
    let mut c = app.connect("echo", "bob").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames[3]["data"]["workflow"]["version"], "published");
    assert!(!frames.iter().any(|f| f["type"] == "llm_chunk"));

    // Draft asked by a non-owner: forbidden.
    let mut c = app.connect("echo", "bob").await;
    c.send_json(json!({"message": "hi", "version": "draft"}))
        .await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "forbidden");

    // Draft asked by the owner: the draft row (the assistant, which streams).
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi", "version": "draft"}))
        .await;
    let frames = c.collect_run().await;
    assert_eq!(frames[3]["data"]["workflow"]["version"], "draft");
    assert!(
        frames.iter().any(|f| f["type"] == "llm_chunk"),
        "{frames:#?}"
    );
}

#[sqlx::test]
async fn agent_without_the_wanted_row_is_workflow_not_found(pool: PgPool) {
    let app = spawn_app_pg(pool.clone()).await;
    // `legacy` is Active with only a published row; ask for its draft as the owner.
    let mut c = app.connect("legacy", "bob").await;
    c.send_json(json!({"message": "hi", "version": "draft"}))
        .await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "workflow_not_found");
}

#[sqlx::test]
async fn database_down_is_store_unavailable_not_not_found(pool: PgPool) {
    let app = spawn_app_pg(pool.clone()).await;
    pool.close().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "flow_error");
    assert_eq!(last["data"]["code"], "store_unavailable", "{last}");
}

#[sqlx::test]
async fn an_updated_workflow_is_used_by_the_next_run(pool: PgPool) {
    let app = spawn_app_pg_with(pool.clone(), EngineConfig::for_tests(), |_| {}).await;
    let run = |agent: &'static str| {
        let app = &app;
        async move {
            let mut c = app.connect(agent, "alice").await;
            c.send_json(json!({"message": "x"})).await;
            c.collect_run().await
        }
    };
    let before = run("echo").await;
    assert!(!before.iter().any(|f| f["type"] == "llm_chunk"));
    sqlx::query(
        "UPDATE published_agent SET workflow = (SELECT workflow FROM published_agent WHERE agent_id = 'assistant') WHERE agent_id = 'echo'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let after = run("echo").await;
    assert!(
        after.iter().any(|f| f["type"] == "llm_chunk"),
        "the cache served a stale workflow"
    );
    let _ = Duration::ZERO;
}
