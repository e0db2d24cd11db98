//! `flowgate convert` and `flowgate validate`.

use std::path::Path;
use std::process::ExitCode;

use super::FlowFormat;

/// `flowgate convert <file|-> [--to yaml|json]`.
pub fn convert(file: &Path, to: FlowFormat) -> ExitCode {
    let _ = (file, to);
    todo!()
}

/// `flowgate validate <file|->`: exit 0 clean, 1 errors, 2 unreadable input.
pub fn validate(file: &Path) -> ExitCode {
    let _ = file;
    todo!()
}
