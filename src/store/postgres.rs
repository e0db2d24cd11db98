//! The Postgres store (sqlx, embedded migrations).
//!
//! Owns the pool and the read queries of the `agent`, `published_agent` and `unpublished_agent`
//! tables. Every query is runtime-checked with bound parameters and runs under the configured
//! timeout; a timeout or a connection failure is [`StoreError::Unavailable`], never "not found".

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row};

use super::model::{AgentRecord, StoreError, StoredWorkflow, Version};

/// The embedded migrations of `migrations/` (agent tables, run log tables).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Agents served from Postgres. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    timeout: Duration,
    /// Recent answers, so that a run of an unchanged agent needs no database round trip.
    cache: Arc<Mutex<ReadCache>>,
    /// How long an answer is fresh (`--store-cache-ttl`; zero: every lookup asks the database).
    cache_ttl: Duration,
}

/// Answers of the database, at most [`ReadCache::MAX_ENTRIES`] of each kind (cleared when full:
/// a flood of agent ids cannot grow it).
///
/// Design note. An answer younger than the TTL is used as it is. One between one and two TTLs
/// old is still used, and a single background query renews it: with steady traffic no run ever
/// waits for the database, and a change is seen within two TTLs at most. Older answers (or a
/// renewal that failed) are fetched by the run itself, so an unreachable database is reported,
/// never hidden behind an old answer.
#[derive(Debug, Default)]
struct ReadCache {
    agents: HashMap<String, Cached<AgentRecord>>,
    workflows: HashMap<(String, Version), Cached<Arc<StoredWorkflow>>>,
}

/// An answer of the database (`None`: no such row), when it was read, and whether a background
/// renewal is in flight.
#[derive(Debug, Clone)]
struct Cached<T> {
    at: Instant,
    value: Option<T>,
    renewing: bool,
}

impl ReadCache {
    const MAX_ENTRIES: usize = 4096;
}

/// What the cache says about a key.
enum Hit<T> {
    /// Use this answer.
    Use(Option<T>),
    /// Use this answer and renew it in the background.
    Renew(Option<T>),
    /// Ask the database now.
    Miss,
}

impl PgStore {
    /// Connect (pool of `max_connections`, `timeout` per acquire/query) and run the migrations.
    pub async fn connect(
        url: &crate::secret::Secret,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<PgStore, StoreError> {
        let pool = connect_pool(url, max_connections, timeout).await?;
        migrate(&pool, timeout).await?;
        Ok(PgStore::from_pool(pool, timeout))
    }

    /// A store over an existing (already migrated) pool; `timeout` bounds each query.
    pub fn from_pool(pool: PgPool, timeout: Duration) -> PgStore {
        PgStore {
            pool,
            timeout,
            cache: Arc::default(),
            cache_ttl: Duration::ZERO,
        }
    }

    /// Reuse each answer for `ttl`, and renew it in the background during the next `ttl`: a
    /// changed agent or workflow is seen within `2 × ttl`.
    pub fn with_cache_ttl(mut self, ttl: Duration) -> PgStore {
        self.cache_ttl = ttl;
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent row, from the cache when it is recent (see [`ReadCache`]).
    pub async fn agent_cached(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let key = agent_id.to_owned();
        self.cached(
            |c| &mut c.agents,
            key,
            |store, key| async move { store.agent(&key).await },
        )
        .await
    }

    /// The stored workflow, shared, from the cache when it is recent (the same `Arc` until it
    /// is renewed, so the relay's conversion cache recognises it without comparing documents).
    pub async fn workflow_cached(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<Arc<StoredWorkflow>>, StoreError> {
        let key = (agent_id.to_owned(), version);
        self.cached(
            |c| &mut c.workflows,
            key,
            |store, (agent_id, version)| async move {
                Ok(store.workflow(&agent_id, version).await?.map(Arc::new))
            },
        )
        .await
    }

    /// One lookup through the cache: `entries` picks the map, `fetch` asks the database.
    async fn cached<K, T, F, Fut>(
        &self,
        entries: fn(&mut ReadCache) -> &mut HashMap<K, Cached<T>>,
        key: K,
        fetch: F,
    ) -> Result<Option<T>, StoreError>
    where
        K: std::hash::Hash + Eq + Clone + Send + 'static,
        T: Clone + Send + 'static,
        F: Fn(PgStore, K) -> Fut,
        Fut: Future<Output = Result<Option<T>, StoreError>> + Send + 'static,
    {
        if self.cache_ttl.is_zero() {
            return fetch(self.clone(), key).await;
        }
        let hit = {
            let mut cache = self.cache();
            match entries(&mut cache).get_mut(&key) {
                Some(e) if e.at.elapsed() < self.cache_ttl => Hit::Use(e.value.clone()),
                Some(e) if e.at.elapsed() < self.cache_ttl * 2 && e.renewing => {
                    Hit::Use(e.value.clone())
                }
                Some(e) if e.at.elapsed() < self.cache_ttl * 2 => {
                    e.renewing = true;
                    Hit::Renew(e.value.clone())
                }
                _ => Hit::Miss,
            }
        };
        match hit {
            Hit::Use(value) => Ok(value),
            Hit::Renew(value) => {
                // Bounded by the store's query timeout; the answer lands in the cache.
                let renewal = fetch(self.clone(), key.clone());
                let store = self.clone();
                tokio::spawn(async move {
                    let answer = renewal.await;
                    let mut cache = store.cache();
                    let map = entries(&mut cache);
                    match answer {
                        Ok(value) => store.insert(map, key, value),
                        // The next lookup past two TTLs asks the database itself.
                        Err(_) => {
                            if let Some(e) = map.get_mut(&key) {
                                e.renewing = false;
                            }
                        }
                    }
                });
                Ok(value)
            }
            Hit::Miss => {
                let value = fetch(self.clone(), key.clone()).await?;
                let mut cache = self.cache();
                self.insert(entries(&mut cache), key, value.clone());
                Ok(value)
            }
        }
    }

    fn insert<K: std::hash::Hash + Eq, T>(
        &self,
        map: &mut HashMap<K, Cached<T>>,
        key: K,
        value: Option<T>,
    ) {
        if map.len() >= ReadCache::MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            key,
            Cached {
                at: Instant::now(),
                value,
                renewing: false,
            },
        );
    }

    /// The underlying pool (shared with the run log).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        check_id(agent_id)?;
        let query = sqlx::query(
            "SELECT agent_id, owner, status, name, description FROM agent WHERE agent_id = $1",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool);
        let row = bounded(self.timeout, query).await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    pub async fn workflow(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        check_id(agent_id)?;
        // The table name is one of two constants, never client input.
        let sql = match version {
            Version::Published => {
                "SELECT workflow, md5, last_edited_time FROM published_agent WHERE agent_id = $1"
            }
            Version::Draft => {
                "SELECT workflow, md5, last_edited_time FROM unpublished_agent WHERE agent_id = $1"
            }
        };
        let query = sqlx::query(sql).bind(agent_id).fetch_optional(&self.pool);
        let Some(row) = bounded(self.timeout, query).await? else {
            return Ok(None);
        };
        let workflow: Option<Value> = row.try_get("workflow").map_err(corrupt)?;
        let Some(workflow) = workflow else {
            return Ok(None);
        };
        let md5: Option<String> = row.try_get("md5").map_err(corrupt)?;
        let edited: Option<chrono::NaiveDateTime> =
            row.try_get("last_edited_time").map_err(corrupt)?;
        let md5 = match md5 {
            Some(m) if !m.trim().is_empty() => m.trim().to_owned(),
            _ => super::md5::md5_of(&workflow),
        };
        Ok(Some(StoredWorkflow {
            workflow,
            md5,
            last_edited: edited.map(|t| t.and_utc().to_rfc3339()),
        }))
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let query = sqlx::query(
            "SELECT agent_id, owner, status, name, description FROM agent ORDER BY agent_id",
        )
        .fetch_all(&self.pool);
        let rows = bounded(self.timeout, query).await?;
        rows.iter().map(agent_from_row).collect()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        bounded(self.timeout, query).await.map(|_| ())
    }
}

/// Open a pool without running migrations; an unreachable database is `Unavailable`.
pub async fn connect_pool(
    url: &crate::secret::Secret,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, StoreError> {
    let scheme = url.expose().split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(StoreError::unavailable(
            "not a PostgreSQL URL: it must start with postgres:// or postgresql://",
        ));
    }
    let options: PgConnectOptions = url.expose().parse().map_err(|_| {
        // The parse error may quote the URL (and its password): keep it out of messages.
        StoreError::unavailable("the database URL is not valid")
    })?;
    // One direct connection first: an unreachable database fails fast with its real cause
    // (e.g. "connection refused") instead of a pool timeout.
    let probe = bounded(timeout, PgConnection::connect_with(&options)).await?;
    let _ = tokio::time::timeout(timeout, probe.close()).await;
    let connect = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_with(options);
    bounded(timeout, connect).await
}

/// Apply the embedded migrations (idempotent; existing agent tables are kept as they are).
pub async fn migrate(pool: &PgPool, timeout: Duration) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, MIGRATOR.run(pool)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(sqlx::migrate::MigrateError::Execute(e))) => Err(classify(e)),
        Ok(Err(e)) => Err(StoreError::unavailable(format!("migrations failed: {e}"))),
        Err(_) => Err(StoreError::unavailable("migrations timed out")),
    }
}

/// Run a sqlx future under `timeout`, classifying failures.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::unavailable(format!(
            "the database did not answer within {timeout:?}"
        ))),
    }
}

/// Decoding problems are corrupt data; everything else (I/O, pool timeout, server errors) means
/// the store cannot serve right now.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => corrupt(e),
        // The server's own sentence (sqlx's text adds "error returned from database:" and the
        // line of the server's source file).
        sqlx::Error::Database(ref db) => StoreError::Unavailable {
            what: db.message().to_owned(),
            cause: Some(e),
        },
        sqlx::Error::Io(ref io) => StoreError::Unavailable {
            what: crate::startup::plain_io(io),
            cause: Some(e),
        },
        other => StoreError::Unavailable {
            what: other.to_string(),
            cause: Some(other),
        },
    }
}

fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        what: e.to_string(),
        cause: Some(e),
    }
}

/// Postgres text cannot hold NUL: such an id can name no agent, and binding it would be a server
/// error rather than "not found".
fn check_id(agent_id: &str) -> Result<(), StoreError> {
    if agent_id.contains('\0') {
        return Err(StoreError::InvalidAgentId(
            "agent ids cannot contain NUL".to_owned(),
        ));
    }
    Ok(())
}

fn agent_from_row(row: &<Postgres as sqlx::Database>::Row) -> Result<AgentRecord, StoreError> {
    let text = |column: &str| -> Result<String, StoreError> {
        let value: Option<String> = row.try_get(column).map_err(corrupt)?;
        Ok(value.unwrap_or_default())
    };
    Ok(AgentRecord {
        agent_id: text("agent_id")?,
        owner: text("owner")?,
        status: text("status")?,
        name: text("name")?,
        description: row.try_get("description").map_err(corrupt)?,
    })
}
