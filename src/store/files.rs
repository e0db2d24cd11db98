//! The local-files store: `agents.json` + workflow files in one folder (or the embedded samples).

use super::{AgentRecord, StoreError, StoredWorkflow, Version};

/// Agents served from a folder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FilesStore {}

impl FilesStore {
    /// Serve the agents of `dir` (`agents.json` + the workflow files it names).
    pub fn open(dir: &std::path::Path) -> Result<FilesStore, StoreError> {
        let _ = dir;
        todo!()
    }

    /// The sample agents embedded in the binary (the repository's `flows/` folder).
    pub fn embedded() -> FilesStore {
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
