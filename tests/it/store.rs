//! The store: Postgres (migrations on an existing NeuraLabs database, selection of the published
//! or draft row, failure classification, bound parameters), the files store (validation, path
//! safety) and the import command, plus md5 parity with the original Python backend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowgate::config::Secret;
use flowgate::store::files::FilesStore;
use flowgate::store::import::{ImportError, RowChange, import_dir};
use flowgate::store::md5::md5_of;
use flowgate::store::postgres::{PgStore, migrate};
use flowgate::store::{Store, StoreError, Version};
use serde_json::{Value, json};
use sqlx::PgPool;

const TIMEOUT: Duration = Duration::from_secs(5);

fn flows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("flows")
}

/// `md5(json.dumps(workflow, sort_keys=True).encode()).hexdigest()` of each `flows/` file, from
/// `cd flows && for f in *.workflow.json; do python3 -c 'import json,hashlib,sys;
/// print(hashlib.md5(json.dumps(json.load(open(sys.argv[1])), sort_keys=True).encode())
/// .hexdigest())' $f; done`
const FLOW_MD5: &[(&str, &str)] = &[
    (
        "assistant.workflow.json",
        "20684fc097d51b6c2fb6a548260368b6",
    ),
    (
        "classifier.workflow.json",
        "96365ff0884c701a2b8104c083b31e7b",
    ),
    ("echo.workflow.json", "8a4804f198800f598f2c4cad65a110f7"),
    (
        "raw-canvas.workflow.json",
        "947a3db70bd0f46baf55cc7bea5b8f13",
    ),
];

fn read_flow(file: &str) -> Value {
    let text = std::fs::read_to_string(flows_dir().join(file)).expect("flow file");
    serde_json::from_str(&text).expect("flow JSON")
}

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("flowgate-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write scratch file");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    let sql = match table {
        "agent" => "SELECT count(*) FROM agent",
        "published_agent" => "SELECT count(*) FROM published_agent",
        "unpublished_agent" => "SELECT count(*) FROM unpublished_agent",
        other => panic!("unknown table {other}"),
    };
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[test]
fn md5_matches_python_for_every_flow_file() {
    for (file, expected) in FLOW_MD5 {
        assert_eq!(md5_of(&read_flow(file)), *expected, "md5 of {file}");
    }
}

#[test]
fn md5_matches_python_for_escapes_floats_and_key_order() {
    // python3 -c 'import json,hashlib; v={"b":[1,2.5,1e-05,1e+20,100.0,True,None],
    //   "a":{"z":"é😀\n\"","y":-0.0,"x":0.7},"ü":"tab\there","A":12345678901234,"k":-3};
    //   print(hashlib.md5(json.dumps(v, sort_keys=True).encode()).hexdigest())'
    let value = json!({
        "b": [1, 2.5, 1e-05, 1e20, 100.0, true, null],
        "a": {"z": "é😀\n\"", "y": -0.0, "x": 0.7},
        "ü": "tab\there",
        "A": 12345678901234_i64,
        "k": -3,
    });
    assert_eq!(
        flowgate::store::md5::python_json(&value),
        r#"{"A": 12345678901234, "a": {"x": 0.7, "y": -0.0, "z": "\u00e9\ud83d\ude00\n\""}, "b": [1, 2.5, 1e-05, 1e+20, 100.0, true, null], "k": -3, "\u00fc": "tab\there"}"#
    );
    assert_eq!(md5_of(&value), "3656fc0d7148c9b10c44e4b182a9df52");
}

#[sqlx::test]
async fn imported_flows_folder_is_served_back_agent_by_agent(pool: PgPool) {
    let report = import_dir(&pool, &flows_dir()).await.expect("import");
    let ids: Vec<&str> = report.agents.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, ["assistant", "echo", "legacy", "router"]);

    let store = Store::Postgres(PgStore::from_pool(pool, TIMEOUT));
    let files = FilesStore::open(&flows_dir()).expect("flows folder");
    for agent in files.folder_agents() {
        let id = &agent.record.agent_id;
        assert_eq!(
            store.agent(id).await.expect("agent"),
            Some(agent.record.clone())
        );
        for (version, expected) in [
            (Version::Published, &agent.published),
            (Version::Draft, &agent.unpublished),
        ] {
            let got = store.workflow(id, version).await.expect("workflow");
            match (got, expected) {
                (Some(got), Some(expected)) => {
                    assert_eq!(got.workflow, expected.workflow, "{id} {version:?}");
                    assert_eq!(got.md5, expected.md5, "{id} {version:?}");
                    let edited = got.last_edited.expect("last_edited_time");
                    assert!(
                        chrono::DateTime::parse_from_rfc3339(&edited).is_ok(),
                        "{edited} is not RFC 3339"
                    );
                }
                (None, None) => {}
                (got, expected) => panic!("{id} {version:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
    let echo = store
        .workflow("echo", Version::Published)
        .await
        .expect("workflow")
        .expect("echo is published");
    assert_eq!(echo.md5, "8a4804f198800f598f2c4cad65a110f7");
    let listed: Vec<String> = store
        .list_agents()
        .await
        .expect("list")
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(listed, ["assistant", "echo", "legacy", "router"]);
    store.ping().await.expect("ping");
}

#[sqlx::test]
async fn importing_twice_changes_no_row(pool: PgPool) {
    import_dir(&pool, &flows_dir()).await.expect("first import");
    let snapshot = async || -> Vec<(String, String, String)> {
        sqlx::query_as(
            "SELECT 'p:' || agent_id, md5, last_edited_time::text FROM published_agent \
             UNION ALL SELECT 'u:' || agent_id, md5, last_edited_time::text FROM unpublished_agent \
             UNION ALL SELECT 'a:' || agent_id, owner || status || name, creation_date::text \
               FROM agent ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .expect("snapshot")
    };
    let before = snapshot().await;
    assert_eq!(before.len(), 4 + 3 + 3, "4 agents, 3 published, 3 drafts");
    let again = import_dir(&pool, &flows_dir())
        .await
        .expect("second import");
    for agent in &again.agents {
        assert_eq!(agent.agent, RowChange::Unchanged, "{agent}");
        assert_ne!(agent.published, RowChange::Created, "{agent}");
        assert_ne!(agent.published, RowChange::Updated, "{agent}");
        assert_ne!(agent.unpublished, RowChange::Created, "{agent}");
        assert_ne!(agent.unpublished, RowChange::Updated, "{agent}");
    }
    assert_eq!(snapshot().await, before);
}

#[sqlx::test]
async fn import_naming_a_missing_workflow_file_writes_nothing(pool: PgPool) {
    let dir = Scratch::new();
    std::fs::copy(
        flows_dir().join("echo.workflow.json"),
        dir.0.join("echo.workflow.json"),
    )
    .expect("copy");
    dir.write(
        "agents.json",
        r#"[{"agent_id": "echo", "owner": "alice", "status": "Active", "name": "Echo",
             "published": "echo.workflow.json"},
            {"agent_id": "ghost", "owner": "bob", "status": "Active", "name": "Ghost",
             "published": "missing.workflow.json"}]"#,
    );
    let err = import_dir(&pool, &dir.0).await.expect_err("must fail");
    assert!(matches!(err, ImportError::Folder(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("agents.json"), "{text}");
    assert!(text.contains("ghost"), "{text}");
    assert!(text.contains("missing.workflow.json"), "{text}");
    assert_eq!(count(&pool, "agent").await, 0);
    assert_eq!(count(&pool, "published_agent").await, 0);
}

#[sqlx::test]
async fn active_agent_reads_published_row_and_draft_reads_unpublished_row(pool: PgPool) {
    sqlx::query(
        "INSERT INTO agent (agent_id, owner, status, name) VALUES ('a1', 'alice', 'Active', 'A1')",
    )
    .execute(&pool)
    .await
    .expect("agent");
    sqlx::query(
        "INSERT INTO published_agent (agent_id, workflow, md5) VALUES ('a1', '{\"v\": \"pub\"}', 'p')",
    )
    .execute(&pool)
    .await
    .expect("published");
    sqlx::query(
        "INSERT INTO unpublished_agent (agent_id, workflow, md5) VALUES ('a1', '{\"v\": \"draft\"}', 'd')",
    )
    .execute(&pool)
    .await
    .expect("unpublished");
    let store = PgStore::from_pool(pool, TIMEOUT);
    let agent = store.agent("a1").await.expect("agent").expect("a1 exists");
    assert_eq!(agent.default_version(), Version::Published);
    let published = store.workflow("a1", Version::Published).await.expect("pub");
    assert_eq!(
        published.map(|w| (w.workflow, w.md5)),
        Some((json!({"v": "pub"}), "p".into()))
    );
    let draft = store.workflow("a1", Version::Draft).await.expect("draft");
    assert_eq!(
        draft.map(|w| (w.workflow, w.md5)),
        Some((json!({"v": "draft"}), "d".into()))
    );
}

#[sqlx::test]
async fn unknown_agent_and_missing_rows_are_none(pool: PgPool) {
    import_dir(&pool, &flows_dir()).await.expect("import");
    let store = PgStore::from_pool(pool, TIMEOUT);
    assert_eq!(store.agent("nobody").await.expect("agent"), None);
    assert_eq!(
        store
            .workflow("nobody", Version::Published)
            .await
            .expect("wf"),
        None
    );
    // `router` has only a draft, `legacy` only a published row.
    let router = store.agent("router").await.expect("agent").expect("router");
    assert_eq!(router.default_version(), Version::Draft);
    assert_eq!(
        store
            .workflow("router", Version::Published)
            .await
            .expect("wf"),
        None
    );
    assert!(
        store
            .workflow("router", Version::Draft)
            .await
            .expect("wf")
            .is_some()
    );
    assert_eq!(
        store.workflow("legacy", Version::Draft).await.expect("wf"),
        None
    );
}

#[sqlx::test]
async fn sql_metacharacters_in_an_agent_id_find_nothing_and_drop_nothing(pool: PgPool) {
    import_dir(&pool, &flows_dir()).await.expect("import");
    let store = PgStore::from_pool(pool.clone(), TIMEOUT);
    for id in ["x'; DROP TABLE agent; --", "echo' OR '1'='1", "%", "echo%"] {
        assert_eq!(store.agent(id).await.expect("agent"), None, "{id}");
        for version in [Version::Published, Version::Draft] {
            assert_eq!(store.workflow(id, version).await.expect("wf"), None, "{id}");
        }
    }
    assert_eq!(count(&pool, "agent").await, 4);
    assert_eq!(store.list_agents().await.expect("list").len(), 4);
}

#[tokio::test]
async fn unreachable_database_is_unavailable_quickly() {
    let url = Secret::new("postgres://postgres@127.0.0.1:1/x");
    let started = Instant::now();
    let err = PgStore::connect(&url, 1, Duration::from_millis(300))
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // A pool that loses its database answers Unavailable, never "not found".
    let lazy = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(url.expose())
        .expect("lazy pool");
    let store = PgStore::from_pool(lazy, Duration::from_millis(300));
    let started = Instant::now();
    assert!(matches!(
        store.agent("echo").await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.workflow("echo", Version::Published).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// The original schema as an existing NeuraLabs database has it, with `user_auth` and its FK.
const NEURALABS_SCHEMA: &[&str] = &[
    "CREATE TABLE user_auth (user_id VARCHAR(255) PRIMARY KEY, public_key TEXT)",
    "CREATE TABLE agent (agent_id VARCHAR(64) PRIMARY KEY, creation_date TIMESTAMP, \
       owner VARCHAR(255) REFERENCES user_auth (user_id), \
       status VARCHAR(20) CHECK (status IN ('Active', 'Not Published')), name VARCHAR(255), \
       description TEXT, tags JSONB, license VARCHAR(100), fork VARCHAR(64), socials JSONB, \
       chain_id INTEGER)",
    "CREATE TABLE unpublished_agent (agent_id VARCHAR(64) PRIMARY KEY REFERENCES agent (agent_id), \
       last_edited_time TIMESTAMP, workflow JSONB, md5 VARCHAR(32))",
    "CREATE TABLE published_agent (agent_id VARCHAR(64) PRIMARY KEY REFERENCES agent (agent_id), \
       last_edited_time TIMESTAMP, workflow JSONB, md5 VARCHAR(32))",
    "INSERT INTO user_auth VALUES ('carol', NULL)",
    "INSERT INTO agent (agent_id, creation_date, owner, status, name, tags) \
       VALUES ('old', '2025-05-26 10:00:00', 'carol', 'Active', 'Old agent', '[\"x\"]')",
    "INSERT INTO published_agent VALUES ('old', '2025-05-27 11:12:13.5', '{\"nodes\": [], \"edges\": []}', NULL)",
];

#[sqlx::test(migrations = false)]
async fn migrations_keep_an_existing_neuralabs_database_and_its_rows(pool: PgPool) {
    for sql in NEURALABS_SCHEMA {
        sqlx::query(*sql).execute(&pool).await.expect(sql);
    }
    migrate(&pool, TIMEOUT)
        .await
        .expect("migrate existing database");
    migrate(&pool, TIMEOUT)
        .await
        .expect("migrating again is a no-op");

    let store = PgStore::from_pool(pool.clone(), TIMEOUT);
    let agent = store.agent("old").await.expect("agent").expect("row kept");
    assert_eq!(
        (agent.owner.as_str(), agent.name.as_str()),
        ("carol", "Old agent")
    );
    let wf = store
        .workflow("old", Version::Published)
        .await
        .expect("workflow")
        .expect("row kept");
    assert_eq!(wf.workflow, json!({"nodes": [], "edges": []}));
    // A NULL md5 is computed like the original would have.
    assert_eq!(wf.md5, md5_of(&json!({"nodes": [], "edges": []})));
    assert_eq!(
        wf.last_edited.as_deref(),
        Some("2025-05-27T11:12:13.500+00:00")
    );
    // The original FK to user_auth is still enforced: flowgate did not replace the table.
    let orphan = sqlx::query(
        "INSERT INTO agent (agent_id, owner, status, name) VALUES ('o', 'nobody', 'Active', 'O')",
    )
    .execute(&pool)
    .await;
    assert!(orphan.is_err(), "the original agent table was replaced");
}

#[tokio::test]
async fn files_store_refuses_ids_that_leave_the_folder() {
    let store = FilesStore::open(&flows_dir()).expect("flows folder");
    for id in [
        "..",
        "../flows/echo",
        "echo/../echo",
        "/etc/passwd",
        "a\\b",
        "echo\0",
        "",
    ] {
        assert!(
            matches!(store.agent(id).await, Err(StoreError::InvalidAgentId(_))),
            "{id:?} accepted"
        );
        assert!(
            matches!(
                store.workflow(id, Version::Published).await,
                Err(StoreError::InvalidAgentId(_))
            ),
            "{id:?} accepted"
        );
    }
    assert!(store.agent("echo").await.expect("agent").is_some());
}

#[test]
fn files_store_rejects_bad_entries_naming_the_file_and_entry() {
    let cases = [
        (
            r#"[{"agent_id": "a", "owner": "o", "status": "Active", "name": "A", "published": "../etc/passwd"}]"#,
            "../etc/passwd",
        ),
        (
            r#"[{"agent_id": "../up", "owner": "o", "status": "Active", "name": "A"}]"#,
            "../up",
        ),
        (
            r#"[{"agent_id": "a", "owner": "o", "status": "Live", "name": "A"}]"#,
            "Live",
        ),
        (
            r#"[{"agent_id": "a", "owner": "o", "status": "Active", "name": "A", "publish": "x"}]"#,
            "publish",
        ),
        (
            r#"[{"agent_id": "a", "owner": "o", "status": "Active", "name": "A"},
                {"agent_id": "a", "owner": "o", "status": "Active", "name": "B"}]"#,
            "entry 2",
        ),
        (
            r#"[{"agent_id": "a", "owner": "o", "status": "Active", "name": "A", "published": "bad.json"}]"#,
            "bad.json",
        ),
    ];
    for (index, needle) in cases {
        let dir = Scratch::new();
        dir.write("agents.json", index);
        dir.write("bad.json", "{not json");
        let err = FilesStore::open(&dir.0).expect_err(index);
        let text = err.to_string();
        assert!(text.contains("agents.json"), "{text}");
        assert!(text.contains(needle), "{text} should mention {needle}");
    }
}

#[tokio::test]
async fn files_store_reads_workflow_files_as_validate_does() {
    let index = |file: &str| {
        format!(
            r#"[{{"agent_id": "a", "owner": "o", "status": "Active", "name": "A", "published": "{file}"}}]"#
        )
    };
    let echo = include_str!("../fixtures/samples/echo.workflow.json");
    let value: serde_json::Value = serde_json::from_str(echo).unwrap();
    // A `.json` file with a trailing comma is refused with its line and column, as `validate` does.
    let dir = Scratch::new();
    dir.write("agents.json", &index("a.workflow.json"));
    dir.write("a.workflow.json", "{\"flow_definition\": {},\n}");
    let text = FilesStore::open(&dir.0)
        .expect_err("trailing comma")
        .to_string();
    assert!(
        text.contains("a.workflow.json") && text.contains("not valid JSON"),
        "{text}"
    );
    assert!(text.contains("line 2 column 1"), "{text}");
    // A `.yaml` file is the YAML export shape, accepted by both.
    let dir = Scratch::new();
    dir.write("agents.json", &index("a.workflow.yaml"));
    let yaml = flowgate::workflow::yaml::to_yaml(&value);
    dir.write("a.workflow.yaml", &yaml);
    let store = FilesStore::open(&dir.0).expect("a YAML workflow file");
    let wf = store
        .workflow("a", Version::Published)
        .await
        .expect("workflow")
        .expect("published");
    assert_eq!(wf.workflow, value);
}

#[tokio::test]
async fn files_store_serves_the_selection_rule_rows() {
    let store = Store::Files(FilesStore::open(&flows_dir()).expect("flows"));
    let router = store.agent("router").await.expect("agent").expect("router");
    assert_eq!(
        (router.owner.as_str(), router.status.as_str()),
        ("bob", "Not Published")
    );
    assert_eq!(
        store
            .workflow("router", Version::Published)
            .await
            .expect("wf"),
        None
    );
    let draft = store
        .workflow("router", Version::Draft)
        .await
        .expect("wf")
        .expect("draft");
    assert_eq!(draft.md5, "96365ff0884c701a2b8104c083b31e7b");
    assert_eq!(store.agent("nobody").await.expect("agent"), None);
    let embedded = FilesStore::embedded();
    assert_eq!(
        embedded.list_agents().await.expect("list"),
        store.list_agents().await.expect("list")
    );
}

#[tokio::test]
async fn files_store_picks_up_a_changed_folder() {
    let dir = Scratch::new();
    dir.write("w.json", r#"{"v": 1}"#);
    dir.write(
        "agents.json",
        r#"[{"agent_id": "a", "owner": "o", "status": "Active", "name": "A", "published": "w.json"}]"#,
    );
    let store = FilesStore::open(&dir.0)
        .expect("open")
        .with_recheck_interval(Duration::ZERO);
    let first = store
        .workflow("a", Version::Published)
        .await
        .expect("wf")
        .expect("row");
    assert_eq!(first.workflow, json!({"v": 1}));
    dir.write("w.json", r#"{"v": 2}"#);
    // Move the modification time explicitly (file systems with coarse timestamps).
    let file = std::fs::File::options()
        .write(true)
        .open(dir.0.join("w.json"))
        .expect("open");
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .expect("touch");
    let second = store
        .workflow("a", Version::Published)
        .await
        .expect("wf")
        .expect("row");
    assert_eq!(second.workflow, json!({"v": 2}));
    assert_ne!(second.md5, first.md5);
    // A broken edit keeps serving the last good folder.
    dir.write("agents.json", "[{");
    let file = std::fs::File::options()
        .write(true)
        .open(dir.0.join("agents.json"))
        .expect("open");
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
        .expect("touch");
    let kept = store
        .workflow("a", Version::Published)
        .await
        .expect("wf")
        .expect("row");
    assert_eq!(kept.workflow, json!({"v": 2}));
}

#[sqlx::test]
async fn reimport_updates_only_the_rows_that_changed(pool: PgPool) {
    let dir = Scratch::new();
    dir.write("a.json", r#"{"v": 1}"#);
    dir.write("b.json", r#"{"v": "b"}"#);
    let index = |name: &str| {
        format!(
            r#"[{{"agent_id": "a", "owner": "o", "status": "Active", "name": "{name}",
                 "published": "a.json", "unpublished": "b.json"}}]"#
        )
    };
    dir.write("agents.json", &index("A"));
    import_dir(&pool, &dir.0).await.expect("first import");
    let edited = async || -> (String, String) {
        sqlx::query_as(
            "SELECT p.last_edited_time::text, u.last_edited_time::text \
             FROM published_agent p JOIN unpublished_agent u USING (agent_id)",
        )
        .fetch_one(&pool)
        .await
        .expect("times")
    };
    let before = edited().await;

    dir.write("a.json", r#"{"v": 2}"#);
    dir.write("agents.json", &index("A renamed"));
    let report = import_dir(&pool, &dir.0).await.expect("second import");
    let a = &report.agents[0];
    assert_eq!(
        (a.agent, a.published, a.unpublished),
        (RowChange::Updated, RowChange::Updated, RowChange::Unchanged)
    );
    let after = edited().await;
    assert_ne!(
        after.0, before.0,
        "the changed published row keeps its old time"
    );
    assert_eq!(after.1, before.1, "the unchanged draft row got a new time");
    let store = PgStore::from_pool(pool, TIMEOUT);
    let published = store
        .workflow("a", Version::Published)
        .await
        .expect("wf")
        .expect("row");
    assert_eq!(published.workflow, json!({"v": 2}));
    assert_eq!(published.md5, md5_of(&json!({"v": 2})));
    let agent = store.agent("a").await.expect("agent").expect("row");
    assert_eq!(agent.name, "A renamed");
}

#[sqlx::test]
async fn postgres_lookups_are_reused_for_the_cache_ttl_and_seen_anew_after_it(pool: PgPool) {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(&pool, &flows)
        .await
        .expect("flows/ imports");
    let cached =
        flowgate::store::postgres::PgStore::from_pool(pool.clone(), Duration::from_secs(3))
            .with_cache_ttl(Duration::from_secs(3600));
    let before = cached.agent_cached("echo").await.unwrap().unwrap();
    let first = cached
        .workflow_cached("echo", Version::Published)
        .await
        .unwrap()
        .unwrap();
    sqlx::query("UPDATE agent SET name = 'Renamed' WHERE agent_id = 'echo'")
        .execute(&pool)
        .await
        .unwrap();
    // Within the TTL: no database round trip, the same shared document.
    assert_eq!(cached.agent_cached("echo").await.unwrap().unwrap(), before);
    let again = cached
        .workflow_cached("echo", Version::Published)
        .await
        .unwrap()
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // Without a TTL (and after it) the change is seen.
    let fresh = flowgate::store::postgres::PgStore::from_pool(pool.clone(), Duration::from_secs(3));
    assert_eq!(
        fresh.agent_cached("echo").await.unwrap().unwrap().name,
        "Renamed"
    );
    let short = fresh.with_cache_ttl(Duration::from_millis(50));
    assert_eq!(
        short.agent_cached("echo").await.unwrap().unwrap().name,
        "Renamed"
    );
    sqlx::query("UPDATE agent SET name = 'Again' WHERE agent_id = 'echo'")
        .execute(&pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while short.agent_cached("echo").await.unwrap().unwrap().name != "Again" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was never seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test]
async fn an_answer_past_its_ttl_is_used_once_more_while_it_is_renewed_in_the_background(
    pool: PgPool,
) {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(&pool, &flows)
        .await
        .expect("flows/ imports");
    let ttl = Duration::from_secs(1);
    let store = flowgate::store::postgres::PgStore::from_pool(pool.clone(), Duration::from_secs(3))
        .with_cache_ttl(ttl);
    let read_at = tokio::time::Instant::now();
    let before = store.agent_cached("echo").await.unwrap().unwrap();
    sqlx::query("UPDATE agent SET name = 'Renewed' WHERE agent_id = 'echo'")
        .execute(&pool)
        .await
        .unwrap();
    // Past one TTL (and well before two): the run is answered from the cache at once...
    tokio::time::sleep_until(read_at + ttl + Duration::from_millis(50)).await;
    let stale = store.agent_cached("echo").await.unwrap().unwrap();
    assert!(
        read_at.elapsed() < ttl * 2,
        "the machine was too slow to check"
    );
    assert_eq!(stale, before, "answered from the cache, without waiting");
    // ...and the background renewal brings the change in without another run waiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = store.agent_cached("echo").await.unwrap().unwrap();
        if now.name == "Renewed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewal never landed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        read_at.elapsed() < ttl * 2,
        "seen within two TTLs (it took {:?})",
        read_at.elapsed()
    );
}
