//! The Postgres store (sqlx, embedded migrations).

use super::{AgentRecord, StoreError, StoredWorkflow, Version};

/// Agents served from Postgres. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgStore {}

impl PgStore {
    /// Connect (pool of `max_connections`, `timeout` per acquire/query) and run the migrations.
    pub async fn connect(
        url: &crate::config::Secret,
        max_connections: u32,
        timeout: std::time::Duration,
    ) -> Result<PgStore, StoreError> {
        let _ = (url, max_connections, timeout);
        todo!()
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let _ = agent_id;
        todo!()
    }
    pub async fn workflow(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        let _ = (agent_id, version);
        todo!()
    }
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        todo!()
    }
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
