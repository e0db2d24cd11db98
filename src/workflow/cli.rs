//! `flowgate convert` and `flowgate validate`.
//!
//! The work is done by pure functions (`convert_text`, `validate_text`: document text in,
//! [`Outcome`] out) so that tests never spawn the binary; the two entry points only read the
//! file (or stdin for `-`) and print.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::{Finding, FlowFormat, Severity};

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

/// `flowgate convert <file|-> [--to yaml|json]`.
pub fn convert(file: &Path, to: FlowFormat) -> ExitCode {
    run(file, |text| convert_text(text, to))
}

/// `flowgate validate <file|->`: exit 0 clean, 1 errors, 2 unreadable input.
pub fn validate(file: &Path) -> ExitCode {
    run(file, validate_text)
}

fn run(file: &Path, work: impl FnOnce(&str) -> Outcome) -> ExitCode {
    let outcome = match read(file) {
        Ok(text) => work(&text),
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

/// Parse a stored workflow document: JSON (either stored shape), else YAML whose top level is a
/// mapping (the YAML export shape `flow_definition:` + `metadata:`). Also returns the findings
/// only the text shows (keys given twice in JSON).
pub fn parse_document(text: &str) -> Result<(Value, Vec<Finding>), String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Ok((value, super::text_findings(text))),
        Err(json_error) => match super::yaml::from_yaml(text) {
            Ok(value @ Value::Object(_)) => Ok((value, Vec::new())),
            Ok(_) => Err(format!(
                "the input is neither JSON ({json_error}) nor a YAML mapping"
            )),
            Err(yaml_error) => Err(format!(
                "the input is neither JSON ({json_error}) nor YAML ({yaml_error})"
            )),
        },
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
pub fn convert_text(text: &str, to: FlowFormat) -> Outcome {
    let (doc, text_findings) = match parse_document(text) {
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
pub fn validate_text(text: &str) -> Outcome {
    let (doc, text_findings) = match parse_document(text) {
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
