//! `flowgate agents import <dir>`: agents.json folder → Postgres.
//!
//! Reads and validates the whole folder first (the same rules as the files store), then upserts
//! the `agent`, `published_agent` and `unpublished_agent` rows in one transaction, so an invalid
//! folder writes nothing. Idempotent: a row whose content is already there is left untouched
//! (its `last_edited_time` too); changed rows get `last_edited_time = now()` and the original's
//! `md5`. Rows of the database that the folder does not mention are kept.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::files::{FilesStore, FolderAgent};
use super::model::{StoreError, StoredWorkflow};
use super::postgres::{bounded, connect_pool, migrate};
use crate::secret::Secret;

/// Time allowed for connecting and for each statement of the import.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pooled connections used by the import (it runs one transaction).
const IMPORT_CONNECTIONS: u32 = 2;

/// What happened to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowChange {
    Created,
    Updated,
    Unchanged,
    /// The folder has no file for this row; the database row (if any) is kept.
    Absent,
}

impl fmt::Display for RowChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RowChange::Created => "created",
            RowChange::Updated => "updated",
            RowChange::Unchanged => "unchanged",
            RowChange::Absent => "none in folder",
        })
    }
}

/// One imported agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedAgent {
    pub agent_id: String,
    pub status: String,
    pub agent: RowChange,
    pub published: RowChange,
    pub unpublished: RowChange,
}

impl fmt::Display for ImportedAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): agent {}, published {}, draft {}",
            self.agent_id, self.status, self.agent, self.published, self.unpublished
        )
    }
}

/// The result of an import, one entry per agent in id order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    pub agents: Vec<ImportedAgent>,
}

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The folder is unreadable or invalid (names the file and entry).
    #[error("invalid flows folder: {0}")]
    Folder(StoreError),
    /// The database could not be opened (the whole sentence: URL without password, cause, fix).
    #[error("{0}")]
    Open(String),
    /// The database failed or timed out; the transaction was rolled back.
    #[error("database error: {0}")]
    Database(StoreError),
}

/// Run the import command.
pub async fn run(dir: &Path, database_url: &Secret) -> ExitCode {
    let result = async {
        let unusable = |e: StoreError| {
            ImportError::Open(crate::startup::database_failed(
                database_url.expose(),
                e.detail(),
            ))
        };
        let pool = connect_pool(database_url, IMPORT_CONNECTIONS, IMPORT_TIMEOUT)
            .await
            .map_err(unusable)?;
        migrate(&pool, IMPORT_TIMEOUT).await.map_err(unusable)?;
        import_dir(&pool, dir).await
    }
    .await;
    match result {
        Ok(report) => {
            for agent in &report.agents {
                println!("{agent}");
            }
            println!(
                "imported {} agents from {}",
                report.agents.len(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowgate agents import: {e}");
            ExitCode::from(1)
        }
    }
}

/// Import the folder `dir` into the database of `pool` (one transaction).
pub async fn import_dir(pool: &PgPool, dir: &Path) -> Result<ImportReport, ImportError> {
    let folder = FilesStore::open(dir).map_err(ImportError::Folder)?;
    import_agents(pool, &folder.folder_agents(), IMPORT_TIMEOUT)
        .await
        .map_err(ImportError::Database)
}

async fn import_agents(
    pool: &PgPool,
    agents: &[FolderAgent],
    timeout: Duration,
) -> Result<ImportReport, StoreError> {
    let mut tx = bounded(timeout, pool.begin()).await?;
    let mut report = ImportReport::default();
    for agent in agents {
        let r = &agent.record;
        // `xmax = 0` is true for a freshly inserted row; no row back means nothing changed.
        let query = sqlx::query_scalar::<_, bool>(
            "INSERT INTO agent (agent_id, creation_date, owner, status, name, description) \
             VALUES ($1, now(), $2, $3, $4, $5) \
             ON CONFLICT (agent_id) DO UPDATE SET owner = EXCLUDED.owner, \
               status = EXCLUDED.status, name = EXCLUDED.name, description = EXCLUDED.description \
             WHERE (agent.owner, agent.status, agent.name, agent.description) \
               IS DISTINCT FROM (EXCLUDED.owner, EXCLUDED.status, EXCLUDED.name, EXCLUDED.description) \
             RETURNING (xmax = 0)",
        )
        .bind(&r.agent_id)
        .bind(&r.owner)
        .bind(&r.status)
        .bind(&r.name)
        .bind(&r.description)
        .fetch_optional(&mut *tx);
        let agent_change = change(bounded(timeout, query).await?);
        let mut row = async |table: Table, workflow: Option<&StoredWorkflow>| {
            let Some(w) = workflow else {
                return Ok(RowChange::Absent);
            };
            let query = sqlx::query_scalar::<_, bool>(table.upsert_sql())
                .bind(&r.agent_id)
                .bind(&w.workflow as &Value)
                .bind(&w.md5)
                .fetch_optional(&mut *tx);
            bounded(timeout, query).await.map(change)
        };
        let published = row(Table::Published, agent.published.as_ref()).await?;
        let unpublished = row(Table::Unpublished, agent.unpublished.as_ref()).await?;
        report.agents.push(ImportedAgent {
            agent_id: r.agent_id.clone(),
            status: r.status.clone(),
            agent: agent_change,
            published,
            unpublished,
        });
    }
    bounded(timeout, tx.commit()).await?;
    Ok(report)
}

#[derive(Clone, Copy)]
enum Table {
    Published,
    Unpublished,
}

impl Table {
    fn upsert_sql(self) -> &'static str {
        match self {
            Table::Published => {
                "INSERT INTO published_agent (agent_id, last_edited_time, workflow, md5) \
                 VALUES ($1, now(), $2, $3) \
                 ON CONFLICT (agent_id) DO UPDATE SET last_edited_time = now(), \
                   workflow = EXCLUDED.workflow, md5 = EXCLUDED.md5 \
                 WHERE (published_agent.workflow, published_agent.md5) \
                   IS DISTINCT FROM (EXCLUDED.workflow, EXCLUDED.md5) \
                 RETURNING (xmax = 0)"
            }
            Table::Unpublished => {
                "INSERT INTO unpublished_agent (agent_id, last_edited_time, workflow, md5) \
                 VALUES ($1, now(), $2, $3) \
                 ON CONFLICT (agent_id) DO UPDATE SET last_edited_time = now(), \
                   workflow = EXCLUDED.workflow, md5 = EXCLUDED.md5 \
                 WHERE (unpublished_agent.workflow, unpublished_agent.md5) \
                   IS DISTINCT FROM (EXCLUDED.workflow, EXCLUDED.md5) \
                 RETURNING (xmax = 0)"
            }
        }
    }
}

fn change(inserted: Option<bool>) -> RowChange {
    match inserted {
        Some(true) => RowChange::Created,
        Some(false) => RowChange::Updated,
        None => RowChange::Unchanged,
    }
}
