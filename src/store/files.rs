//! The local-files store: `agents.json` + workflow files in one folder (or the embedded samples).
//!
//! `agents.json` is a list of `{agent_id, owner, status, name, description?, published?,
//! unpublished?}` where `published`/`unpublished` are workflow file names in the same folder.
//! Everything is read and validated at open time (a bad entry is an error naming the file and
//! the entry). When the folder changes on disk (modification times of `agents.json` or of a
//! workflow file), a lookup reloads it; the times are checked at most once per
//! [`RECHECK_INTERVAL`] (one blocking-pool job for all files), so a change is seen within that
//! interval and a busy gateway does not stat the folder on every run. A reload that fails keeps
//! the previous agents and logs why. Ids are checked before any lookup so nothing outside the folder is ever read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::model::{AgentRecord, StoreError, StoredWorkflow, Version};
use crate::workflow::document::{self, DocFormat};

/// The index file of a flows folder.
pub const INDEX_FILE: &str = "agents.json";

/// How often a lookup checks the folder's modification times (at most).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The repository's `flows/` folder, compiled in.
const EMBEDDED_INDEX: &str = include_str!("../../flows/agents.json");
const EMBEDDED_FILES: &[(&str, &str)] = &[
    (
        "echo.workflow.json",
        include_str!("../../flows/echo.workflow.json"),
    ),
    (
        "assistant.workflow.json",
        include_str!("../../flows/assistant.workflow.json"),
    ),
    (
        "classifier.workflow.json",
        include_str!("../../flows/classifier.workflow.json"),
    ),
    (
        "raw-canvas.workflow.json",
        include_str!("../../flows/raw-canvas.workflow.json"),
    ),
];

/// Agents served from a folder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FilesStore {
    source: Source,
    catalog: Arc<RwLock<Arc<Catalog>>>,
    /// When the modification times were last checked (`None`: never), and the interval.
    checked: Arc<Mutex<Option<Instant>>>,
    recheck: Duration,
}

#[derive(Clone, Debug)]
enum Source {
    Dir(PathBuf),
    Embedded,
}

/// One loaded folder.
#[derive(Debug, Default)]
struct Catalog {
    agents: BTreeMap<String, FileAgent>,
    /// Modification times of every file read, to notice changes.
    stamp: Vec<(PathBuf, Option<SystemTime>)>,
}

#[derive(Debug, Clone)]
struct FileAgent {
    record: AgentRecord,
    /// Shared: a run's lookup takes a reference, not a copy of the document.
    published: Option<Arc<StoredWorkflow>>,
    unpublished: Option<Arc<StoredWorkflow>>,
}

/// One entry of `agents.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    agent_id: String,
    owner: String,
    status: String,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    published: Option<String>,
    #[serde(default)]
    unpublished: Option<String>,
}

/// An agent of a folder as the import command needs it.
#[derive(Debug, Clone)]
pub struct FolderAgent {
    pub record: AgentRecord,
    pub published: Option<StoredWorkflow>,
    pub unpublished: Option<StoredWorkflow>,
}

impl FilesStore {
    /// Serve the agents of `dir` (`agents.json` + the workflow files it names).
    pub fn open(dir: &Path) -> Result<FilesStore, StoreError> {
        let catalog = load_dir(dir)?;
        Ok(FilesStore {
            source: Source::Dir(dir.to_path_buf()),
            catalog: Arc::new(RwLock::new(Arc::new(catalog))),
            checked: Arc::new(Mutex::new(Some(Instant::now()))),
            recheck: RECHECK_INTERVAL,
        })
    }

    /// Check the folder for changes at most once per `interval` (`ZERO`: on every lookup).
    pub fn with_recheck_interval(mut self, interval: Duration) -> FilesStore {
        self.recheck = interval;
        if interval.is_zero() {
            *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self
    }

    /// The sample agents embedded in the binary (the repository's `flows/` folder).
    pub fn embedded() -> FilesStore {
        let catalog = load(Path::new("flows/agents.json"), EMBEDDED_INDEX, |name| {
            EMBEDDED_FILES
                .iter()
                .find(|(file, _)| *file == name)
                .map(|(_, text)| ((*text).to_owned(), None))
                .ok_or_else(|| format!("{name} is not embedded"))
        })
        // The embedded folder is checked by the tests (`embedded_flows_are_valid`).
        .expect("the embedded flows/ folder is valid");
        FilesStore {
            source: Source::Embedded,
            catalog: Arc::new(RwLock::new(Arc::new(catalog))),
            checked: Arc::new(Mutex::new(None)),
            recheck: RECHECK_INTERVAL,
        }
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        check_name(agent_id).map_err(StoreError::InvalidAgentId)?;
        let catalog = self.current().await;
        Ok(catalog.agents.get(agent_id).map(|a| a.record.clone()))
    }

    pub async fn workflow(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        Ok(self
            .workflow_shared(agent_id, version)
            .await?
            .map(|w| (*w).clone()))
    }

    /// [`FilesStore::workflow`] without copying the document.
    pub async fn workflow_shared(
        &self,
        agent_id: &str,
        version: Version,
    ) -> Result<Option<Arc<StoredWorkflow>>, StoreError> {
        check_name(agent_id).map_err(StoreError::InvalidAgentId)?;
        let catalog = self.current().await;
        Ok(catalog.agents.get(agent_id).and_then(|a| match version {
            Version::Published => a.published.clone(),
            Version::Draft => a.unpublished.clone(),
        }))
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let catalog = self.current().await;
        Ok(catalog.agents.values().map(|a| a.record.clone()).collect())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every agent with its workflows, ordered by id (for the import command).
    pub fn folder_agents(&self) -> Vec<FolderAgent> {
        let catalog = self.snapshot();
        catalog
            .agents
            .values()
            .map(|a| FolderAgent {
                record: a.record.clone(),
                published: a.published.as_deref().cloned(),
                unpublished: a.unpublished.as_deref().cloned(),
            })
            .collect()
    }

    fn snapshot(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The catalog, reloaded first when a file of the folder changed on disk.
    async fn current(&self) -> Arc<Catalog> {
        let catalog = self.snapshot();
        let Source::Dir(dir) = &self.source else {
            return catalog;
        };
        {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if !self.recheck.is_zero()
                && checked.is_some_and(|at| now.duration_since(at) < self.recheck)
            {
                return catalog;
            }
            *checked = Some(now);
        }
        let paths: Vec<PathBuf> = catalog.stamp.iter().map(|(p, _)| p.clone()).collect();
        let Ok(now) = tokio::task::spawn_blocking(move || stamp_of(paths)).await else {
            return catalog;
        };
        let changed = now != catalog.stamp;
        if !changed {
            return catalog;
        }
        let dir = dir.clone();
        let paths: Vec<PathBuf> = catalog.stamp.iter().map(|(p, _)| p.clone()).collect();
        let reloaded = tokio::task::spawn_blocking(move || (load_dir(&dir), stamp_of(paths))).await;
        let fresh = match reloaded {
            Ok((Ok(fresh), _)) => {
                tracing::info!(agents = fresh.agents.len(), "flows folder reloaded");
                Arc::new(fresh)
            }
            Ok((Err(e), stamp)) => {
                tracing::warn!(error = %e, "flows folder changed but is invalid; keeping the previous agents");
                // Remember the new times so the broken state is reported once, not per lookup.
                Arc::new(Catalog {
                    agents: catalog.agents.clone(),
                    stamp,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "flows folder reload failed");
                return catalog;
            }
        };
        match self.catalog.write() {
            Ok(mut guard) => *guard = Arc::clone(&fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&fresh),
        }
        fresh
    }
}

/// Refuse names that could leave the folder: empty, `.`/`..` parts, separators, drive prefixes,
/// absolute paths, NUL and other control characters. Used for agent ids and file names alike.
pub fn check_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{name:?} {why}"));
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name.contains("..") {
        return bad("contains `..` or is `.`");
    }
    if name.contains(['/', '\\', ':']) {
        return bad("contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if Path::new(name).is_absolute() {
        return bad("is an absolute path");
    }
    Ok(())
}

fn load_dir(dir: &Path) -> Result<Catalog, StoreError> {
    let index = dir.join(INDEX_FILE);
    // Times are taken before reading, so a change during the read is noticed next time.
    let index_modified = std::fs::metadata(&index).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(&index)
        .map_err(|e| StoreError::corrupt(format!("{}: cannot read: {e}", index.display())))?;
    let mut catalog = load(&index, &text, |name| {
        let path = dir.join(name);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        std::fs::read_to_string(&path)
            .map(|text| (text, modified))
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
    })?;
    let mut stamp = vec![(index, index_modified)];
    stamp.extend(catalog.stamp.drain(..).map(|(p, m)| (dir.join(p), m)));
    catalog.stamp = stamp;
    Ok(catalog)
}

fn stamp_of(paths: impl IntoIterator<Item = PathBuf>) -> Vec<(PathBuf, Option<SystemTime>)> {
    paths
        .into_iter()
        .map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, modified)
        })
        .collect()
}

/// Parse and validate an index; `read(name)` gives a workflow file's text and modification time.
/// The returned catalog's `stamp` lists the workflow file names read (relative).
fn load(
    index: &Path,
    text: &str,
    read: impl Fn(&str) -> Result<(String, Option<SystemTime>), String>,
) -> Result<Catalog, StoreError> {
    let at = index.display();
    let entries: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| StoreError::corrupt(format!("{at}: not a JSON list of agents: {e}")))?;
    let mut catalog = Catalog::default();
    let mut cache: BTreeMap<String, StoredWorkflow> = BTreeMap::new();
    for (i, raw) in entries.into_iter().enumerate() {
        let label = match raw.get("agent_id").and_then(Value::as_str) {
            Some(id) => format!("{at}: entry {} (agent_id {id:?})", i + 1),
            None => format!("{at}: entry {}", i + 1),
        };
        let bad = |why: String| StoreError::corrupt(format!("{label}: {why}"));
        let entry: Entry = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
        check_name(&entry.agent_id).map_err(|e| bad(format!("agent_id {e}")))?;
        if entry.agent_id.chars().count() > MAX_AGENT_ID_CHARS {
            return Err(bad(format!(
                "agent_id is longer than {MAX_AGENT_ID_CHARS} characters"
            )));
        }
        if entry.status != "Active" && entry.status != "Not Published" {
            return Err(bad(format!(
                "status must be \"Active\" or \"Not Published\", not {:?}",
                entry.status
            )));
        }
        if entry.owner.is_empty() || entry.owner.chars().count() > MAX_TEXT_CHARS {
            return Err(bad(format!(
                "owner must be 1 to {MAX_TEXT_CHARS} characters"
            )));
        }
        if entry.name.chars().count() > MAX_TEXT_CHARS {
            return Err(bad(format!(
                "name is longer than {MAX_TEXT_CHARS} characters"
            )));
        }
        if catalog.agents.contains_key(&entry.agent_id) {
            return Err(bad("the agent_id appears twice".to_owned()));
        }
        let mut workflow = |field: &str, file: &Option<String>| -> Result<_, StoreError> {
            let Some(file) = file else {
                return Ok(None);
            };
            check_name(file).map_err(|e| bad(format!("{field} file {e}")))?;
            if let Some(done) = cache.get(file) {
                return Ok(Some(done.clone()));
            }
            let (text, modified) = read(file).map_err(|e| bad(format!("{field} file: {e}")))?;
            // The same reader as `flowgate validate`: what one accepts, the other does.
            let format = DocFormat::of_path(Path::new(file));
            let (value, _) = document::parse(&text, format)
                .map_err(|e| bad(format!("{field} file {file}: {e}")))?;
            let stored = StoredWorkflow {
                md5: super::md5::md5_of(&value),
                workflow: value,
                last_edited: modified
                    .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
            };
            cache.insert(file.clone(), stored.clone());
            catalog.stamp.push((PathBuf::from(file), modified));
            Ok(Some(stored))
        };
        let published = workflow("published", &entry.published)?;
        let unpublished = workflow("unpublished", &entry.unpublished)?;
        let record = AgentRecord {
            agent_id: entry.agent_id.clone(),
            owner: entry.owner,
            status: entry.status,
            name: entry.name,
            description: entry.description,
        };
        catalog.agents.insert(
            entry.agent_id,
            FileAgent {
                record,
                published: published.map(Arc::new),
                unpublished: unpublished.map(Arc::new),
            },
        );
    }
    Ok(catalog)
}

/// `agent.agent_id` is `VARCHAR(64)`.
const MAX_AGENT_ID_CHARS: usize = 64;
/// `agent.owner` and `agent.name` are `VARCHAR(255)`.
const MAX_TEXT_CHARS: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        for name in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "/etc/passwd",
            "a\0b",
            "C:x",
            "x\n",
        ] {
            assert!(check_name(name).is_err(), "{name:?} accepted");
        }
        for name in ["echo", "llm_text_1748286339970", "my-agent.v2", "x'; DROP"] {
            assert!(check_name(name).is_ok(), "{name:?} refused");
        }
    }

    #[test]
    fn embedded_flows_are_valid() {
        let store = FilesStore::embedded();
        let ids: Vec<String> = store
            .folder_agents()
            .into_iter()
            .map(|a| a.record.agent_id)
            .collect();
        assert_eq!(ids, ["assistant", "echo", "legacy", "router"]);
    }
}
