//! The workflow cache: converted payloads per (agent, version), reused while the stored row is equal.

/// Cheap to clone.
#[derive(Clone, Default)]
pub struct WorkflowCache {}
