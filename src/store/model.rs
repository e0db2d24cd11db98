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
    /// The database cannot be reached or timed out (`store_unavailable`). `what` is a plain
    /// sentence (no password, no server source lines); the database's own error, when there is
    /// one, is the `source()`, for the log.
    #[error("the workflow store is unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        cause: Option<sqlx::Error>,
    },
    /// The agent id is not acceptable (e.g. path traversal for the files store).
    #[error("invalid agent id: {0}")]
    InvalidAgentId(String),
    /// The stored data is unreadable (bad JSON file, a row that does not decode, …).
    #[error("the stored data is unreadable: {what}")]
    Corrupt {
        what: String,
        #[source]
        cause: Option<sqlx::Error>,
    },
}

impl StoreError {
    pub fn unavailable(what: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            what: what.into(),
            cause: None,
        }
    }

    pub fn corrupt(what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            cause: None,
        }
    }

    /// What went wrong, without the category prefix of `Display` (and without the cause).
    pub fn detail(&self) -> &str {
        match self {
            StoreError::Unavailable { what, .. }
            | StoreError::InvalidAgentId(what)
            | StoreError::Corrupt { what, .. } => what,
        }
    }
}
