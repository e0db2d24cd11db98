//! Reading a stored workflow document from text: the one reader of `flowgate validate`,
//! `flowgate convert`, the files store behind `serve` and `agents import`, so that a file one
//! of them accepts, all of them accept.
//!
//! The format is what the file says, never a guess: a `.yaml`/`.yml` name is YAML (the export
//! shape `flow_definition:` + `metadata:`), anything else (`.json`, standard input) is strict
//! JSON. A JSON error names its line and column; a trailing comma, single quotes or an unquoted
//! key is an error, not YAML read by accident.

use std::path::Path;

use serde_json::Value;

use super::finding::Finding;

/// How a workflow document is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DocFormat {
    Json,
    Yaml,
}

impl DocFormat {
    /// The format a file name says: `.yaml` and `.yml` are YAML, every other name JSON.
    pub fn of_path(path: &Path) -> DocFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                DocFormat::Yaml
            }
            _ => DocFormat::Json,
        }
    }
}

/// Parse a document in `format`. Returns the value and the findings only the text shows (keys
/// given twice in JSON), or a sentence saying what is wrong and where.
pub fn parse(text: &str, format: DocFormat) -> Result<(Value, Vec<Finding>), String> {
    match format {
        DocFormat::Json => match serde_json::from_str::<Value>(text) {
            Ok(value) => Ok((value, super::text_findings(text))),
            Err(e) => Err(format!(
                "not valid JSON: {e} (a YAML document needs a .yaml or .yml name, or --from yaml)"
            )),
        },
        DocFormat::Yaml => match super::yaml::from_yaml(text) {
            Ok(value @ Value::Object(_)) => Ok((value, Vec::new())),
            Ok(_) => Err(
                "not a workflow: the YAML document must be a mapping (`flow_definition:` and \
                 `metadata:`)"
                    .to_owned(),
            ),
            Err(e) => Err(format!("not valid YAML: {e}")),
        },
    }
}
