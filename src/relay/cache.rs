//! The workflow cache: the converted engine payload per (agent, version), reused only while the
//! stored document is *equal* to the one it was converted from. Every run still asks the store for
//! the stored document (the Postgres store reuses an answer for `--store-cache-ttl`, the files
//! store rechecks its folder once a second), so an update is visible within that time; what
//! this cache saves is the conversion, validation and rendering. Bounded: at most `capacity`
//! entries (an arbitrary entry is evicted when full). The lock is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::store::{StoredWorkflow, Version};
use crate::workflow::{self, Finding, FlowFormat, InvalidWorkflow};

/// A converted workflow, ready to send.
#[derive(Debug)]
pub struct CachedFlow {
    /// The stored document it was made from (shared with the store when it keeps one).
    source: Arc<StoredWorkflow>,
    format: FlowFormat,
    /// The normalized flow definition.
    pub flow: Value,
    /// Handshake frame 2 in the configured encoding.
    pub payload: String,
    pub hash: String,
    pub warnings: Vec<Finding>,
}

type Entries = HashMap<(String, Version), Arc<CachedFlow>>;

/// Cheap to clone; shared by all sessions of a gateway.
#[derive(Clone)]
pub struct WorkflowCache {
    inner: Arc<Mutex<Entries>>,
    capacity: usize,
    hits: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for WorkflowCache {
    fn default() -> Self {
        WorkflowCache::new(1024)
    }
}

/// Most findings of one workflow written to the log, or sent in an `invalid_workflow` frame.
pub const MAX_LOGGED_FINDINGS: usize = 20;

impl WorkflowCache {
    pub fn new(capacity: usize) -> WorkflowCache {
        WorkflowCache {
            inner: Arc::default(),
            capacity: capacity.max(1),
            hits: Arc::default(),
        }
    }

    /// Number of runs served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The converted flow of `stored`, from the cache when the stored document is unchanged.
    pub fn get_or_convert(
        &self,
        agent_id: &str,
        version: Version,
        stored: &Arc<StoredWorkflow>,
        format: FlowFormat,
    ) -> Result<Arc<CachedFlow>, InvalidWorkflow> {
        let key = (agent_id.to_owned(), version);
        // The same shared document (files store) is equal without a comparison; a document
        // read anew (Postgres) is compared in full.
        if let Some(hit) = self.lock().get(&key).cloned()
            && hit.format == format
            && (Arc::ptr_eq(&hit.source, stored) || hit.source.workflow == stored.workflow)
        {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(hit);
        }
        let converted = workflow::convert(&stored.workflow)?;
        // Once per conversion (not per run), and at most a few lines per workflow.
        for w in converted.warnings.iter().take(MAX_LOGGED_FINDINGS) {
            tracing::warn!(agent_id, pointer = %w.pointer, "workflow warning: {}", w.message);
        }
        if converted.warnings.len() > MAX_LOGGED_FINDINGS {
            tracing::warn!(
                agent_id,
                more = converted.warnings.len() - MAX_LOGGED_FINDINGS,
                "further workflow warnings not logged (`flowgate validate` lists them all)"
            );
        }
        let payload = workflow::render(&converted.flow, format);
        let entry = Arc::new(CachedFlow {
            source: stored.clone(),
            format,
            flow: converted.flow,
            payload,
            hash: converted.hash,
            warnings: converted.warnings,
        });
        let mut map = self.lock();
        if map.len() >= self.capacity
            && !map.contains_key(&key)
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        map.insert(key, entry.clone());
        Ok(entry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
