//! What validation reports: a [`Finding`] (where in the stored document, what, how serious).
//! Shared by normalization, validation, document reading and the CLI; depends on nothing else in
//! `workflow`.

use serde::Serialize;

/// How serious a validation finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks the run (`invalid_workflow`).
    Error,
    /// Logged and shown by the CLI; the run goes ahead.
    Warning,
}

/// One validation finding: where (JSON pointer into the *stored* document) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub pointer: String,
    pub message: String,
    pub severity: Severity,
}
