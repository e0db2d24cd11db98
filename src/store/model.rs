//! What both stores return: the agent row ([`AgentRecord`]), a stored workflow
//! ([`StoredWorkflow`]) and which one ([`Version`]), and the store's error ([`StoreError`]).
//! Shared by the stores (`files`, `postgres`), the import and the [`Store`](super::Store) facade;
//! depends on nothing else in `store`.

use serde_json::Value;

/// Which stored workflow row a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// `published_agent.workflow`.
    Published,
    /// `unpublished_agent.workflow` (owner only).
    Draft,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Published => "published",
            Version::Draft => "draft",
        }
    }
}

/// The `agent` row (the columns flowgate uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub owner: String,
    /// `Active` or `Not Published`.
    pub status: String,
    pub name: String,
    pub description: Option<String>,
}

impl AgentRecord {
    /// The version a run gets when it does not ask for one.
    pub fn default_version(&self) -> Version {
        if self.status == "Active" {
            Version::Published
        } else {
            Version::Draft
        }
    }
}

/// A stored workflow row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWorkflow {
    pub workflow: Value,
    pub md5: String,
    /// `last_edited_time` as RFC 3339 text when known (cache key together with `md5`).
    pub last_edited: Option<String>,
}

/// Failures of the store, classified for the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out (`store_unavailable`).
    #[error("the workflow store is unavailable: {0}")]
    Unavailable(String),
    /// The agent id is not acceptable (e.g. path traversal for the files store).
    #[error("invalid agent id: {0}")]
    InvalidAgentId(String),
    /// The stored data is unreadable (bad JSON file, …).
    #[error("the stored data is unreadable: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// What went wrong, without the category prefix of `Display`.
    pub fn detail(&self) -> &str {
        match self {
            StoreError::Unavailable(m) | StoreError::InvalidAgentId(m) | StoreError::Corrupt(m) => {
                m
            }
        }
    }
}
