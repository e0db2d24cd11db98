//! The published contract (`schemas/*.schema.json`, `docs/protocol.md`) checked against real
//! frames: the original engine's traces, the reference engine through the real gateway, and the
//! examples of the protocol document.
//!
//! [`assert_server_frame`] and [`assert_client_frame`] compile the schemas once and panic with
//! every validation error and the frame; the shared test client calls `assert_server_frame` on
//! every frame it receives, so the whole suite checks that the gateway keeps its contract.

#![allow(dead_code)]

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::{Value, json};

use crate::common::*;

const SERVER_SCHEMA: &str = include_str!("../../schemas/server-frame.schema.json");
const CLIENT_SCHEMA: &str = include_str!("../../schemas/client-frame.schema.json");
const HANDSHAKE_SCHEMA: &str = include_str!("../../schemas/engine-handshake.schema.json");
const STORED_SCHEMA: &str = include_str!("../../schemas/stored-workflow.schema.json");
const ADK_SCHEMA: &str = include_str!("../../schemas/adk-server-frame.schema.json");
const OMNI2_SCHEMA: &str = include_str!("../../schemas/omni2-server-frame.schema.json");
const COPILOT_SCHEMA: &str = include_str!("../../schemas/copilot-server-frame.schema.json");
const CITIZEN_SCHEMA: &str = include_str!("../../schemas/citizen-server-frame.schema.json");
const OPENAI_SCHEMA: &str = include_str!("../../schemas/openai.schema.json");
const VERCEL_SCHEMA: &str = include_str!("../../schemas/vercel.schema.json");
const AGUI_SCHEMA: &str = include_str!("../../schemas/agui.schema.json");
const PROTOCOL_DOC: &str = include_str!("../../docs/protocol.md");

/// A compiled schema, plus one validator per top-level `oneOf` branch (`$defs/<name>`): a
/// failed `oneOf` only says "no branch matched", the branch says which field is wrong.
struct Contract {
    name: &'static str,
    whole: Validator,
    branches: Vec<(String, Validator)>,
}

impl Contract {
    fn new(name: &'static str, text: &str) -> Contract {
        let schema: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("schemas/{name}.schema.json is not JSON: {e}"));
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("schemas/{name}.schema.json is not a valid JSON Schema: {e}");
        }
        let whole = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("schemas/{name}.schema.json does not compile: {e}"));
        let branches = schema["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["$ref"].as_str()?.strip_prefix("#/$defs/"))
            .map(|def| {
                let mut one = schema.clone();
                let root = one.as_object_mut().expect("a schema object");
                root.remove("oneOf");
                root.insert("$ref".into(), Value::from(format!("#/$defs/{def}")));
                let v = jsonschema::draft202012::new(&one).expect("a branch compiles");
                (def.to_owned(), v)
            })
            .collect();
        Contract {
            name,
            whole,
            branches,
        }
    }

    /// `Ok` when `frame` validates; else every error, from `branch` when it is given.
    fn check(&self, frame: &Value, branch: Option<&str>) -> Result<(), String> {
        if self.whole.is_valid(frame) {
            return Ok(());
        }
        let errors = |v: &Validator| -> Vec<String> {
            v.iter_errors(frame)
                .map(|e| format!("  at `{}`: {e}", e.instance_path()))
                .collect()
        };
        let mut lines = errors(&self.whole);
        if let Some((def, v)) = branch.and_then(|b| self.branches.iter().find(|(d, _)| d == b)) {
            lines.push(format!("  as `$defs/{def}`:"));
            lines.extend(errors(v).into_iter().map(|l| format!("  {l}")));
        }
        Err(format!(
            "frame does not validate against schemas/{}.schema.json:\n{}\nframe: {}",
            self.name,
            lines.join("\n"),
            preview(frame)
        ))
    }
}

fn preview(frame: &Value) -> String {
    let text = frame.to_string();
    match text.char_indices().nth(2000) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], text.len()),
        None => text,
    }
}

static SERVER: LazyLock<Contract> = LazyLock::new(|| Contract::new("server-frame", SERVER_SCHEMA));
static CLIENT: LazyLock<Contract> = LazyLock::new(|| Contract::new("client-frame", CLIENT_SCHEMA));
static HANDSHAKE: LazyLock<Contract> =
    LazyLock::new(|| Contract::new("engine-handshake", HANDSHAKE_SCHEMA));
static ADK: LazyLock<Contract> = LazyLock::new(|| Contract::new("adk-server-frame", ADK_SCHEMA));
static OMNI2: LazyLock<Contract> =
    LazyLock::new(|| Contract::new("omni2-server-frame", OMNI2_SCHEMA));
static COPILOT: LazyLock<Contract> =
    LazyLock::new(|| Contract::new("copilot-server-frame", COPILOT_SCHEMA));
static CITIZEN: LazyLock<Contract> =
    LazyLock::new(|| Contract::new("citizen-server-frame", CITIZEN_SCHEMA));
static OPENAI: LazyLock<Contract> = LazyLock::new(|| Contract::new("openai", OPENAI_SCHEMA));
static VERCEL: LazyLock<Contract> = LazyLock::new(|| Contract::new("vercel", VERCEL_SCHEMA));
static AGUI: LazyLock<Contract> = LazyLock::new(|| Contract::new("agui", AGUI_SCHEMA));
static STORED: LazyLock<Contract> =
    LazyLock::new(|| Contract::new("stored-workflow", STORED_SCHEMA));

/// Validate a frame the gateway sent to a client.
pub fn check_server_frame(frame: &Value) -> Result<(), String> {
    let in_run = frame.get("run_id").is_some() || frame.get("seq").is_some();
    let branch = if !in_run && frame["type"] == "error" {
        "error_frame"
    } else {
        "run_frame"
    };
    SERVER.check(frame, Some(branch))
}

/// Validate a frame a client may send.
pub fn check_client_frame(frame: &Value) -> Result<(), String> {
    let branch = match frame["type"].as_str() {
        None | Some("run") => "run_request",
        Some(other) => other,
    };
    CLIENT.check(frame, Some(branch))
}

/// Panic (with the validation errors and the frame) unless `frame` is a valid server frame.
pub fn assert_server_frame(frame: &Value) {
    if let Err(why) = check_server_frame(frame) {
        panic!("{why}");
    }
}

/// Panic (with the validation errors and the frame) unless `frame` is a valid `adk` frame.
pub fn assert_adk_frame(frame: &Value) {
    // Text frames have no `type`; the other two name their branch.
    let branch = frame["type"].as_str().unwrap_or("text");
    if let Err(why) = ADK.check(frame, Some(branch)) {
        panic!("{why}");
    }
}

/// Panic (with the validation errors and the frame) unless `frame` is a valid `omni2` frame.
pub fn assert_omni2_frame(frame: &Value) {
    let branch = frame["type"].as_str().unwrap_or("token");
    if let Err(why) = OMNI2.check(frame, Some(branch)) {
        panic!("{why}");
    }
}

/// Panic (with the validation errors and the frame) unless `frame` is a valid `copilot` frame.
pub fn assert_copilot_frame(frame: &Value) {
    let branch = frame["type"].as_str().unwrap_or("error");
    if let Err(why) = COPILOT.check(frame, Some(branch)) {
        panic!("{why}");
    }
}

/// Panic (with the validation errors and the frame) unless `frame` is a valid `citizen` frame.
pub fn assert_citizen_frame(frame: &Value) {
    let branch = frame["type"].as_str().unwrap_or("flat");
    if let Err(why) = CITIZEN.check(frame, Some(branch)) {
        panic!("{why}");
    }
}

/// Panic (with the validation errors and the event) unless `event` is a valid `openai` event
/// or response body.
pub fn assert_openai_event(event: &Value) {
    let branch = match event["object"].as_str() {
        Some("chat.completion.chunk") if event["choices"] == json!([]) => "usage_chunk",
        Some("chat.completion.chunk") => "chunk",
        Some("chat.completion") => "completion",
        Some("list") => "model_list",
        _ => "error",
    };
    if let Err(why) = OPENAI.check(event, Some(branch)) {
        panic!("{why}");
    }
}

/// Panic unless `part` is a valid `vercel` UI message stream part.
pub fn assert_vercel_part(part: &Value) {
    let branch = match part["type"].as_str().unwrap_or_default() {
        "start-step" => "start_step",
        "finish-step" => "finish_step",
        "text-start" => "text_start",
        "text-delta" => "text_delta",
        "text-end" => "text_end",
        "data-flowgate-element" => "element",
        other => other,
    }
    .to_owned();
    if let Err(why) = VERCEL.check(part, Some(&branch)) {
        panic!("{why}");
    }
}

/// Panic unless `event` is a valid `agui` event.
pub fn assert_agui_event(event: &Value) {
    if let Err(why) = AGUI.check(event, event["type"].as_str()) {
        panic!("{why}");
    }
}

/// Panic (with the validation errors and the frame) unless `frame` is a valid client frame.
pub fn assert_client_frame(frame: &Value) {
    if let Err(why) = check_client_frame(frame) {
        panic!("{why}");
    }
}

/// Stamp an engine event the way the gateway relays it: `run_id`, `seq`, and for `flow_started`
/// `data.workflow`.
fn as_relayed(mut event: Value, run_id: &str, seq: u64) -> Value {
    if event["type"] == "flow_started" {
        event["data"]["workflow"] = json!({"agent_id": "echo", "version": "published",
            "hash": "3f1c0e3a7d1b4f5e9a2c6d8b0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b"});
    }
    event["run_id"] = Value::from(run_id);
    event["seq"] = Value::from(seq);
    event
}

const RUN_ID: &str = "0b8f3c2e-5d4a-4e1b-9f6c-7a8b9c0d1e2f";

#[test]
fn every_engine_frame_of_the_original_traces_validates_as_the_gateway_relays_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traces");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures/traces exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut handshake, mut events, mut after_terminal) = (0, 0, 0);
        let mut terminal_seen = false;
        for (n, line) in text.lines().enumerate() {
            let rec: Value = serde_json::from_str(line).unwrap();
            let Some(frame) = rec.get("frame").filter(|_| rec["dir"] == "engine->gateway") else {
                continue;
            };
            let at = format!("{}:{}", path.display(), n + 1);
            if frame.get("status").is_some() {
                HANDSHAKE
                    .check(frame, None)
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                handshake += 1;
            } else if terminal_seen {
                // The gateway ends the run at the first terminal event and relays nothing
                // after it (the original engine sends a second flow_error).
                after_terminal += 1;
            } else {
                events += 1;
                let relayed = as_relayed(frame.clone(), RUN_ID, 3 + events);
                check_server_frame(&relayed).unwrap_or_else(|e| panic!("{at}: {e}"));
                terminal_seen = is_terminal(frame);
            }
        }
        assert_eq!(
            handshake,
            4,
            "{}: the four handshake frames",
            path.display()
        );
        assert!(events >= 5, "{}: {events} events", path.display());
        assert!(terminal_seen, "{}: no terminal event", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected_after = if name.contains("error") { 1 } else { 0 };
        assert_eq!(after_terminal, expected_after, "{name}");
    }
    assert!(files >= 3, "found {files} trace files");
}

#[test]
fn engine_events_without_the_run_stamps_are_not_server_frames() {
    let event = json!({"type": "processing", "timestamp": 1.5,
        "data": {"element_id": "start_1", "message": "Starting flow..."}});
    assert!(check_server_frame(&event).is_err());
    assert!(check_server_frame(&as_relayed(event, RUN_ID, 4)).is_ok());
}

/// Frames the contract allows, including its open ends (unknown event types, extra fields).
fn valid_server_frames() -> Vec<Value> {
    let run = |ty: &str, seq: u64, data: Value| json!({"type": ty, "timestamp": 1795326732.25, "data": data, "run_id": RUN_ID, "seq": seq});
    vec![
        json!({"type": "error", "timestamp": 1.0,
               "data": {"error": "a run is already in progress", "code": "invalid_request"}}),
        json!({"type": "error", "timestamp": 1.0,
               "data": {"error": "user `alice` already has 8 runs in progress", "code": "too_many_runs"}}),
        run("status", 1, json!({"message": "Retrieving workflow..."})),
        run(
            "flow_started",
            4,
            json!({"flow_id": RUN_ID, "start_time": 1.0,
                   "workflow": {"agent_id": "a", "version": "draft", "hash": "ab12"}}),
        ),
        run(
            "llm_chunk",
            9,
            json!({"element_id": "llm_text_1", "content": "Hel",
                   "metadata": {"element_id": "llm_text_1", "element_type": "llm_text",
                                "element_name": "LLM", "flow_id": RUN_ID}}),
        ),
        {
            let mut merged = run(
                "llm_chunk",
                14,
                json!({"element_id": "llm_text_1", "content": "Hello there"}),
            );
            merged["merged_seqs"] = json!([10, 14]);
            merged
        },
        run(
            "final_output",
            20,
            json!({"flow_id": RUN_ID, "element_id": "end_1", "text_output": "hi",
                   "proposed_transaction": null}),
        ),
        run(
            "flow_error",
            6,
            json!({"error": "the workflow is invalid", "code": "invalid_workflow",
                   "details": [{"pointer": "/flow_definition/nodes/x/type", "message": "unknown type",
                                "severity": "error"}]}),
        ),
        run(
            "flow_error",
            30,
            json!({"error": "lost", "code": "engine_lost", "partial_output": "Hel",
                   "element_id": "llm_text_1"}),
        ),
        run(
            "flow_error",
            12,
            json!({"flow_id": RUN_ID, "error": "Chat input validation failed",
                   "partial_execution_order": ["start_1"], "partial_outputs": {"start_1": {}},
                   "execution_time": 0.01}),
        ),
        run(
            "flow_cancelled",
            8,
            json!({"element_id": null, "partial_output": "", "reason": "cancelled by the client"}),
        ),
        // An event type the contract does not know: relayed untouched, still valid.
        run(
            "vendor_progress",
            7,
            json!({"percent": 40, "nested": {"any": ["thing"]}}),
        ),
    ]
}

#[test]
fn the_contract_accepts_every_kind_of_frame_it_documents() {
    for frame in valid_server_frames() {
        assert_server_frame(&frame);
    }
}

#[test]
fn frames_that_break_the_contract_are_rejected() {
    let good = json!({"type": "status", "timestamp": 1.0, "data": {"message": "Starting execution..."},
                      "run_id": RUN_ID, "seq": 3});
    assert_server_frame(&good);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let bad: Vec<(&str, Value)> = vec![
        (
            "a run frame without seq",
            with(&|v| {
                v.as_object_mut().unwrap().remove("seq");
            }),
        ),
        ("seq 0", with(&|v| v["seq"] = json!(0))),
        ("seq as a string", with(&|v| v["seq"] = json!("3"))),
        ("run_id not a UUID", with(&|v| v["run_id"] = json!("run-1"))),
        (
            "no timestamp",
            with(&|v| {
                v.as_object_mut().unwrap().remove("timestamp");
            }),
        ),
        ("data not an object", with(&|v| v["data"] = json!("x"))),
        (
            "a status message of no contract",
            with(&|v| v["data"]["message"] = json!("Working...")),
        ),
        (
            "an error without code",
            json!({"type": "error", "timestamp": 1.0, "data": {"error": "bad frame"}}),
        ),
        (
            "an error with an unknown code",
            json!({"type": "error", "timestamp": 1.0, "data": {"error": "x", "code": "oops"}}),
        ),
        (
            "a flow_error with an unknown code",
            with(&|v| {
                v["type"] = json!("flow_error");
                v["data"] = json!({"error": "boom", "code": "exploded"});
            }),
        ),
        (
            "an invalid_workflow flow_error without details",
            with(&|v| {
                v["type"] = json!("flow_error");
                v["data"] = json!({"error": "invalid", "code": "invalid_workflow"});
            }),
        ),
        (
            "an engine_lost flow_error without partial_output",
            with(&|v| {
                v["type"] = json!("flow_error");
                v["data"] = json!({"error": "lost", "code": "engine_lost"});
            }),
        ),
        (
            "a flow_started without data.workflow",
            with(&|v| {
                v["type"] = json!("flow_started");
                v["data"] = json!({"flow_id": "f", "start_time": 1.0});
            }),
        ),
        (
            "a flow_cancelled without partial_output",
            with(&|v| {
                v["type"] = json!("flow_cancelled");
                v["data"] = json!({"element_id": null, "reason": "cancelled by the client"});
            }),
        ),
        (
            "an llm_chunk without content",
            with(&|v| {
                v["type"] = json!("llm_chunk");
                v["data"] =
                    json!({"element_id": "llm_text_1", "metadata": {"element_id": "llm_text_1"}});
            }),
        ),
        (
            "merged_seqs on a frame that is not a chunk",
            with(&|v| v["merged_seqs"] = json!([1, 3])),
        ),
    ];
    for (what, frame) in bad {
        assert!(
            check_server_frame(&frame).is_err(),
            "{what}: accepted {frame}"
        );
    }
    let bad_client = [
        json!({"type": "resume", "after_seq": 3}),
        json!({"type": "resume", "run_id": RUN_ID, "after_seq": -1}),
        json!({"type": "resume", "run_id": "x"}),
        json!({"type": "auth"}),
        json!({"type": "dance"}),
        json!({"message": 5}),
        json!({"message": "hi", "version": "old"}),
        json!({"message": "hi", "conversation_history": [{"content": "no role"}]}),
        json!(["not", "an", "object"]),
    ];
    for frame in bad_client {
        assert!(check_client_frame(&frame).is_err(), "accepted {frame}");
    }
}

/// The fenced blocks of `docs/protocol.md` whose info string is `json <kind>`, one frame per line.
fn doc_frames(kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut inside = false;
    for line in PROTOCOL_DOC.lines() {
        let trimmed = line.trim();
        if !inside && trimmed.strip_prefix("```json").map(str::trim) == Some(kind) {
            inside = true;
        } else if inside && trimmed.starts_with("```") {
            inside = false;
        } else if inside && !trimmed.is_empty() {
            let v = serde_json::from_str(trimmed)
                .unwrap_or_else(|e| panic!("docs/protocol.md: not JSON ({e}): {trimmed}"));
            frames.push(v);
        }
    }
    frames
}

#[test]
fn each_client_frame_example_of_the_protocol_doc_validates() {
    let frames = doc_frames("client");
    for f in &frames {
        assert_client_frame(f);
    }
    for kind in [None, Some("cancel"), Some("resume"), Some("auth")] {
        assert!(
            frames.iter().any(|f| f["type"].as_str() == kind),
            "docs/protocol.md has no client example of type {kind:?}"
        );
    }
}

#[test]
fn each_server_frame_example_of_the_protocol_doc_validates() {
    let frames = doc_frames("server");
    assert!(frames.len() >= 20, "only {} examples", frames.len());
    for f in &frames {
        assert_server_frame(f);
    }
}

#[test]
fn the_stored_workflow_samples_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in [root.join("flows"), root.join("tests/fixtures/samples")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.to_string_lossy().ends_with(".workflow.json") {
                continue;
            }
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            STORED
                .check(&v, None)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} samples");
    assert!(
        STORED
            .check(&json!({"flow_definition": {"nodes": {}}}), None)
            .is_err()
    );
}

/// The codes the schema allows are the codes the documents list.
#[test]
fn the_error_code_enum_matches_the_documented_tables() {
    let schema: Value = serde_json::from_str(SERVER_SCHEMA).unwrap();
    let mut codes: Vec<&str> = schema["$defs"]["error_code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    codes.sort_unstable();
    let doc = PROTOCOL_DOC;
    let section = &doc[doc.find("## Error codes").expect("an error-code section")..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    documented.sort_unstable();
    assert_eq!(codes, documented);
}

#[tokio::test]
async fn a_real_assistant_run_and_the_gateways_own_frames_validate() {
    let app = spawn_app().await;
    let mut c = app.connect("assistant", "alice").await;
    let request = json!({"message": "What is flowgate?",
        "conversation_history": [{"role": "user", "content": "hi"}]});
    assert_client_frame(&request);
    c.send_json(request).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
    for f in &frames {
        assert_server_frame(f);
    }
    // Not part of a run: a malformed frame.
    c.send_text("{\"type\":\"dance\"}").await;
    let error = c.next().await.expect("an error frame");
    assert_eq!(error["data"]["code"], "invalid_request");
    assert_server_frame(&error);
    // A cancelled run.
    c.send_json(json!({"message": "again"})).await;
    c.send_json(json!({"type": "cancel"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["type"], "flow_cancelled");
    for f in &frames {
        assert_server_frame(f);
    }
    // A gateway-made flow_error.
    let mut c = app.connect("no-such-agent", "alice").await;
    c.send_json(json!({"message": "x"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "agent_not_found");
    for f in &frames {
        assert_server_frame(f);
    }
}
