//! Why a benchmark could not run; shared by the harness (`bench`) and its child processes
//! (`procs`).

/// Why a benchmark could not run (its numbers are never an error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("the benchmark workflow cannot be used: {0}")]
    Workflow(String),
    /// `--database-url` problems (the message names the flag and the password-free URL).
    #[error("{0}")]
    Database(String),
}
