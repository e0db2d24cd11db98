//! Stored workflow → normalized flow definition → engine payload (YAML or JSON).
//!
//! Owns: parsing both stored shapes of docs/neuralabs.md section 1 (`stored`), normalization to
//! canonical type names and the engine's `{nodes, connections, start_element}` object
//! (`normalize`), validation with JSON pointers (`validate`) reported as findings (`finding`), the
//! YAML 1.1-safe emitter (`yaml`), and the flow hash. Called by the gateway's relay (per run,
//! through the workflow cache) and by the `convert` / `validate` subcommands.
//!
//! Invariant: `convert` never contacts anything and never panics; the same stored document always
//! gives byte-identical output.

pub mod cli;
pub mod document;
pub mod finding;
pub mod normalize;
pub mod stored;
pub mod validate;
pub mod yaml;

pub use finding::{Finding, Severity};

use serde::Serialize;
use serde_json::Value;

/// A successfully converted workflow.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The normalized flow definition the engine runs: `{nodes, connections, start_element}`.
    pub flow: Value,
    /// Warnings (never errors).
    pub warnings: Vec<Finding>,
    /// Stable hash of the normalized flow definition (hex sha256 of its canonical JSON).
    pub hash: String,
}

/// Conversion failed: every finding (errors and warnings), errors first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the workflow is invalid: {}", summary(.findings))]
pub struct InvalidWorkflow {
    pub findings: Vec<Finding>,
}

/// The first few error messages (a sentence, not a report: `details` and `flowgate validate`
/// list them all).
fn summary(findings: &[Finding]) -> String {
    const SHOWN: usize = 3;
    let errors: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.message.as_str())
        .collect();
    let mut text = errors[..errors.len().min(SHOWN)].join("; ");
    if errors.len() > SHOWN {
        text.push_str(&format!("; and {} more", errors.len() - SHOWN));
    }
    text
}

/// The encoding of handshake frame 2 (the flow definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowFormat {
    /// YAML (flowgate's own engine; YAML 1.2 readers also read JSON).
    #[default]
    Yaml,
    /// JSON (the original Python engine parses JSON only).
    Json,
}

/// Convert a stored workflow document (either shape) into the normalized flow definition.
///
/// Every problem is reported at once (structural findings first, then the semantic ones); any
/// error makes the whole conversion fail. Never panics, never contacts anything.
pub fn convert(stored: &Value) -> Result<Converted, InvalidWorkflow> {
    if let Some(too_big) = size_finding(stored) {
        return Err(InvalidWorkflow {
            findings: vec![too_big],
        });
    }
    let normalized = normalize::normalize(stored);
    let mut findings = normalized.findings.clone();
    findings.extend(validate::validate(&normalized));
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    if !errors.is_empty() {
        let mut findings = errors;
        findings.extend(warnings);
        return Err(InvalidWorkflow { findings });
    }
    let hash = flow_hash(&normalized.flow);
    Ok(Converted {
        flow: normalized.flow,
        warnings,
        hash,
    })
}

/// Most elements a workflow may have (the reference engine runs at most 500 by default, and
/// no chat agent comes near). Checked before any conversion work: a 100,000-node workflow took
/// 784 MB to validate and wrote 60 MB of warnings per run.
pub const MAX_ELEMENTS: usize = 500;
/// Most connections (canvas edges) a workflow may have.
pub const MAX_CONNECTIONS: usize = 5_000;

/// A workflow above [`MAX_ELEMENTS`] or [`MAX_CONNECTIONS`], as one finding (else `None`).
fn size_finding(stored: &Value) -> Option<Finding> {
    let located = stored::locate(stored).ok()?;
    let count = |key: &str| match located.flow.get(key) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    let elements = count("nodes");
    let connections = count("connections").max(count("edges"));
    let (what, n, max) = if elements > MAX_ELEMENTS {
        ("elements", elements, MAX_ELEMENTS)
    } else if connections > MAX_CONNECTIONS {
        ("connections", connections, MAX_CONNECTIONS)
    } else {
        return None;
    };
    Some(Finding {
        pointer: located.base.clone(),
        message: format!("the workflow has {n} {what}; flowgate converts at most {max}"),
        severity: Severity::Error,
    })
}

/// Findings only the JSON *text* of a stored workflow shows: a key given twice in one object
/// (JSON parsers and Postgres JSONB keep only the last one, so a duplicated element id silently
/// loses an element). Errors, with pointers like `/flow_definition/nodes/llm_1`. Used by the
/// CLI; stores that read JSON files can call it too.
pub fn text_findings(json_text: &str) -> Vec<Finding> {
    stored::duplicate_keys(json_text)
        .into_iter()
        .map(|(pointer, key)| {
            let in_nodes = pointer.rsplit_once('/').is_some_and(|(parent, _)| {
                parent == "/flow_definition/nodes" || parent == "/nodes"
            });
            let message = if in_nodes {
                format!(
                    "the element id '{key}' is used twice: only the last element with it is kept"
                )
            } else {
                format!("the key '{key}' appears twice in this object: only the last value is kept")
            };
            Finding {
                pointer,
                message,
                severity: Severity::Error,
            }
        })
        .collect()
}

/// Hex sha256 of the compact JSON of a normalized flow (key order as in the flow).
pub fn flow_hash(flow: &Value) -> String {
    use sha2::Digest;
    let json = serde_json::to_string(flow).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(json.as_bytes()))
}

/// Render the engine payload for frame 2.
pub fn render(flow: &Value, format: FlowFormat) -> String {
    match format {
        FlowFormat::Yaml => yaml::to_yaml(flow),
        FlowFormat::Json => serde_json::to_string(flow).expect("a Value always serializes"),
    }
}

/// Build handshake frame 4 from a run request, as docs/neuralabs.md section 2 describes:
/// `initial_inputs` (if present and non-empty) as they are, but only for the flow's input
/// elements (`chat_input`, `context_history`): a client may not set another element's inputs
/// (a `rest_api` body, an LLM prompt), so any other key is an error naming it. Otherwise
/// `message` goes to the first `chat_input` node and `conversation_history` to the first
/// `context_history` node.
pub fn initial_inputs(
    flow: &Value,
    message: Option<&str>,
    history: Option<&Value>,
    initial: Option<&Value>,
) -> Result<Value, String> {
    if let Some(initial) = initial.and_then(Value::as_object).filter(|m| !m.is_empty()) {
        let nodes = flow.get("nodes").and_then(Value::as_object);
        for (id, inputs) in initial {
            let kind = nodes
                .and_then(|n| n.get(id))
                .and_then(|node| node.get("type"))
                .and_then(Value::as_str);
            let is_input = kind
                .and_then(normalize::ElementType::parse)
                .is_some_and(|k| {
                    matches!(
                        k,
                        normalize::ElementType::ChatInput | normalize::ElementType::ContextHistory
                    )
                });
            if !is_input {
                let what = match kind {
                    Some(kind) => format!("`{id}` is a {kind} element"),
                    None => format!("the flow has no element `{id}`"),
                };
                return Err(format!(
                    "initial_inputs may only set the inputs of chat_input and context_history \
                     elements: {what}"
                ));
            }
            if !inputs.is_object() {
                return Err(format!(
                    "initial_inputs.{id} must be an object of input name to value"
                ));
            }
        }
        return Ok(Value::Object(initial.clone()));
    }
    // Types are canonical in a converted flow; aliases are recognised all the same.
    let first_of = |kind: normalize::ElementType| {
        flow.get("nodes")
            .and_then(Value::as_object)
            .and_then(|nodes| {
                nodes.iter().find(|(_, node)| {
                    node.get("type")
                        .and_then(Value::as_str)
                        .and_then(normalize::ElementType::parse)
                        == Some(kind)
                })
            })
            .map(|(id, _)| id.clone())
    };
    let mut inputs = serde_json::Map::new();
    if let Some(message) = message
        && let Some(id) = first_of(normalize::ElementType::ChatInput)
    {
        inputs.insert(id, serde_json::json!({ "chat_input": message }));
    }
    if let Some(history) = history
        && let Some(id) = first_of(normalize::ElementType::ContextHistory)
    {
        inputs.insert(id, serde_json::json!({ "context_history": history }));
    }
    Ok(Value::Object(inputs))
}
