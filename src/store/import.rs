//! `flowgate agents import <dir>`: agents.json folder → Postgres.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Secret;

/// Run the import command.
pub async fn run(dir: &Path, database_url: &Secret) -> ExitCode {
    let _ = (dir, database_url);
    todo!()
}
