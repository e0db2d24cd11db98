//! `flowgate convert` and `flowgate validate`.
//!
//! The work is done by pure functions (`convert_text`, `validate_text`: document text in,
//! [`Outcome`] out) so that tests never spawn the binary; the two entry points only read the
//! file (or stdin for `-`) and print.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::FlowFormat;
use super::document::{self, DocFormat};
use super::finding::{Finding, Severity};

/// What a subcommand prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// 0 success, 1 invalid workflow, 2 unreadable input.
    pub code: u8,
}

/// Exit code: the workflow is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: the input could not be read or parsed.
pub const EXIT_UNREADABLE: u8 = 2;

/// `flowgate convert <file|-> [--to yaml|json] [--from json|yaml]`.
pub fn convert(file: &Path, from: Option<DocFormat>, to: FlowFormat) -> ExitCode {
    let from = from.unwrap_or_else(|| DocFormat::of_path(file));
    run(file, |text| convert_text(text, from, to))
}

/// `flowgate validate <file|-> [--from json|yaml]`: exit 0 clean, 1 errors, 2 unreadable input.
pub fn validate(file: &Path, from: Option<DocFormat>) -> ExitCode {
    let from = from.unwrap_or_else(|| DocFormat::of_path(file));
    run(file, |text| validate_text(text, from))
}

fn run(file: &Path, work: impl FnOnce(&str) -> Outcome) -> ExitCode {
    let outcome = match read(file) {
        Ok(text) => {
            let mut outcome = work(&text);
            if outcome.code == EXIT_UNREADABLE {
                let name = if file.as_os_str() == "-" {
                    "stdin".into()
                } else {
                    file.display().to_string()
                };
                outcome.stderr = format!("{name}: {}", outcome.stderr);
            }
            outcome
        }
        Err(message) => Outcome {
            stdout: String::new(),
            stderr: format!("{message}\n"),
            code: EXIT_UNREADABLE,
        },
    };
    // A closed stdout/stderr (e.g. `| head`) is not worth a panic.
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.code)
}

fn read(file: &Path) -> Result<String, String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
    }
}

/// One finding as the CLI prints it: `error|warning <pointer>: <message>`.
pub fn finding_line(f: &Finding) -> String {
    let severity = match f.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let pointer = if f.pointer.is_empty() {
        "(document)"
    } else {
        &f.pointer
    };
    format!("{severity} {pointer}: {}\n", f.message)
}

/// Convert a parsed document; findings of the text itself make it invalid as well.
fn convert_doc(
    doc: &Value,
    text_findings: Vec<Finding>,
) -> Result<super::Converted, super::InvalidWorkflow> {
    if text_findings.is_empty() {
        return super::convert(doc);
    }
    let mut findings = text_findings;
    let rest = match super::convert(doc) {
        Ok(converted) => converted.warnings,
        Err(invalid) => invalid.findings,
    };
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) = rest
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    findings.extend(errors);
    findings.extend(warnings);
    Err(super::InvalidWorkflow { findings })
}

/// `convert` on document text: the payload on stdout, warnings (or findings) on stderr.
pub fn convert_text(text: &str, from: DocFormat, to: FlowFormat) -> Outcome {
    let (doc, text_findings) = match document::parse(text, from) {
        Ok(parsed) => parsed,
        Err(message) => return unreadable(message),
    };
    match convert_doc(&doc, text_findings) {
        Ok(converted) => {
            let mut stdout = super::render(&converted.flow, to);
            if !stdout.ends_with('\n') {
                stdout.push('\n');
            }
            Outcome {
                stdout,
                stderr: converted.warnings.iter().map(finding_line).collect(),
                code: 0,
            }
        }
        Err(invalid) => Outcome {
            stdout: String::new(),
            stderr: invalid.findings.iter().map(finding_line).collect(),
            code: EXIT_INVALID,
        },
    }
}

/// `validate` on document text: every finding on stdout, a one-line summary on stderr.
pub fn validate_text(text: &str, from: DocFormat) -> Outcome {
    let (doc, text_findings) = match document::parse(text, from) {
        Ok(parsed) => parsed,
        Err(message) => return unreadable(message),
    };
    let (findings, code) = match convert_doc(&doc, text_findings) {
        Ok(converted) => (converted.warnings, 0),
        Err(invalid) => (invalid.findings, EXIT_INVALID),
    };
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let verdict = if code == 0 { "valid" } else { "invalid" };
    Outcome {
        stdout: findings.iter().map(finding_line).collect(),
        stderr: format!("{verdict}: {errors} error(s), {warnings} warning(s)\n"),
        code,
    }
}

fn unreadable(message: String) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr: format!("{message}\n"),
        code: EXIT_UNREADABLE,
    }
}
