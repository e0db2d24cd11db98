//! Where agents and their workflows come from: Postgres (`postgres`) or a local folder (`files`).
//!
//! Owns the selection rule of docs/neuralabs.md section 1 (`status = 'Active'` → published, else draft),
//! the import of an `agents.json` folder into Postgres (`import`), and the original's `md5`; the
//! rows both stores return and their error live in `model`.
//! Called by the relay once per run (through the workflow cache) and by `/readyz`.
//! Every SQL value is a bound parameter; the files store never leaves its folder.

pub mod files;
pub mod import;
pub mod md5;
pub mod model;
pub mod postgres;

pub use model::{AgentRecord, StoreError, StoredWorkflow, Version};

/// Longest agent id (the `agent.agent_id VARCHAR(64)` of the NeuraLabs schema).
pub const MAX_AGENT_ID_CHARS: usize = 64;

/// Is `id` an acceptable agent id: 1 to [`MAX_AGENT_ID_CHARS`] letters, digits, `-`, `_`, `.`
/// or `~`, not starting with `.`? Checked at the edge, before a session or a log line exists:
/// anything else (control characters, path separators, over-long ids) can name no agent, and
/// would reach logs, metrics and the run log's columns.
pub fn check_agent_id(id: &str) -> Result<(), String> {
    let count = id.chars().count();
    if count == 0 {
        return Err("the agent id is empty".to_owned());
    }
    if count > MAX_AGENT_ID_CHARS {
        return Err(format!(
            "the agent id has {count} characters; at most {MAX_AGENT_ID_CHARS} are allowed"
        ));
    }
    if id.starts_with('.') {
        return Err("an agent id cannot start with `.`".to_owned());
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return Err(format!(
            "the agent id contains {bad:?}; it may hold letters, digits, `-`, `_`, `.` and `~`"
        ));
    }
    Ok(())
}

/// The configured store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(postgres::PgStore),
    Files(files::FilesStore),
}

impl Store {
    /// The agent row, or `None` when there is no such agent.
    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        match self {
            Store::Postgres(s) => s.agent_cached(agent_id).await,
            Store::Files(s) => s.agent(agent_id).await,
        }
    }

    /// The workflow row of `version`, or `None` when that row does not exist.
    pub async fn workflow(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        match self {
            Store::Postgres(s) => s.workflow(agent_id, version).await,
            Store::Files(s) => s.workflow(agent_id, version).await,
        }
    }

    /// [`Store::workflow`], shared where the store keeps the document (files) rather than copied.
    pub async fn workflow_shared(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<std::sync::Arc<StoredWorkflow>>, StoreError> {
        match self {
            Store::Postgres(s) => s.workflow_cached(agent_id, version).await,
            Store::Files(s) => s.workflow_shared(agent_id, version).await,
        }
    }

    /// Every agent (for the chat page's agent picker), ordered by id.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        match self {
            Store::Postgres(s) => s.list_agents().await,
            Store::Files(s) => s.list_agents().await,
        }
    }

    /// Is the store reachable right now? (`/readyz`)
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.ping().await,
            Store::Files(s) => s.ping().await,
        }
    }
}
