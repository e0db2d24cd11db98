//! Workflow conversion: stored samples → normalized flow → YAML payload, validation findings,
//! golden payloads, the YAML emitter against our reader and PyYAML, and a bounded fuzz run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flowgate::workflow::cli::{convert_text, validate_text};
use flowgate::workflow::document::DocFormat;
use flowgate::workflow::normalize::normalize;
use flowgate::workflow::yaml::{from_yaml, to_yaml};
use flowgate::workflow::{self, Finding, FlowFormat, Severity};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Map, Value, json};

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples")
}

fn sample(name: &str) -> Value {
    let path = samples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The samples the property tests mutate, compiled in: a property test never reads a file, so a
/// missing fixture is a build error, never a "failing case" saved as a proptest regression.
const EMBEDDED_SAMPLES: [&str; 6] = [
    include_str!("../fixtures/samples/echo.workflow.json"),
    include_str!("../fixtures/samples/assistant.workflow.json"),
    include_str!("../fixtures/samples/classifier.workflow.json"),
    include_str!("../fixtures/samples/raw-canvas.workflow.json"),
    include_str!("../fixtures/samples/invalid.cycle.workflow.json"),
    include_str!("../fixtures/samples/invalid.dangling.workflow.json"),
];

/// The valid samples: every `*.workflow.json` except `invalid.*`.
fn valid_samples() -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(samples_dir())
        .expect("tests/fixtures/samples exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".workflow.json") && !n.starts_with("invalid."))
        .collect();
    names.sort();
    assert!(
        names.len() >= 4,
        "expected the fixture samples, found {names:?}"
    );
    names
        .into_iter()
        .map(|n| {
            let v = sample(&n);
            (n.trim_end_matches(".workflow.json").to_owned(), v)
        })
        .collect()
}

fn err(pointer: &str, message: &str) -> Finding {
    Finding {
        pointer: pointer.to_owned(),
        message: message.to_owned(),
        severity: Severity::Error,
    }
}

fn warn(pointer: &str, message: &str) -> Finding {
    Finding {
        pointer: pointer.to_owned(),
        message: message.to_owned(),
        severity: Severity::Warning,
    }
}

fn findings(stored: &Value) -> Vec<Finding> {
    match workflow::convert(stored) {
        Ok(c) => c.warnings,
        Err(e) => e.findings,
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion

#[test]
fn raw_canvas_converts_to_the_flow_the_original_engine_received() {
    let trace = std::fs::read_to_string(samples_dir().join("../traces/raw-canvas.jsonl"))
        .expect("raw-canvas trace");
    let frame2 = trace
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("trace line is JSON"))
        .find(|l| l["dir"] == "gateway->engine")
        .expect("a gateway->engine frame")["frame"]
        .clone();
    let converted = workflow::convert(&sample("raw-canvas.workflow.json")).expect("valid");
    assert_eq!(converted.flow, frame2);
    // Same key order too: the compact JSON is the one the engine received.
    assert_eq!(
        serde_json::to_string(&converted.flow).unwrap(),
        serde_json::to_string(&frame2).unwrap()
    );
    assert_eq!(converted.warnings, vec![]);
    // The hash names exactly that flow: sha256 of its compact JSON.
    let compact = serde_json::to_string(&frame2).unwrap();
    assert_eq!(
        converted.hash,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(compact.as_bytes()))
    );
}

#[test]
fn every_valid_sample_converts_without_findings() {
    for (name, stored) in valid_samples() {
        let converted =
            workflow::convert(&stored).unwrap_or_else(|e| panic!("{name}: {:#?}", e.findings));
        assert_eq!(converted.warnings, vec![], "{name}");
        assert_eq!(converted.hash.len(), 64, "{name}");
        // Deterministic: converting again gives the same hash and payload.
        let again = workflow::convert(&stored).unwrap();
        assert_eq!(again.hash, converted.hash);
        assert_eq!(to_yaml(&again.flow), to_yaml(&converted.flow));
    }
}

#[test]
fn exported_nodes_get_canonical_types_and_lose_canvas_fields() {
    let flow = workflow::convert(&sample("echo.workflow.json"))
        .unwrap()
        .flow;
    let start = &flow["nodes"]["start_1712000000001"];
    let keys: Vec<&str> = start
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "type",
            "name",
            "node_description",
            "description",
            "processing_message",
            "tags",
            "layer",
            "input_schema",
            "output_schema"
        ]
    );
    let assistant = workflow::convert(&sample("assistant.workflow.json"))
        .unwrap()
        .flow;
    assert_eq!(
        assistant["nodes"]["contexthistory_1748286330003"]["type"],
        "context_history"
    );
    assert_eq!(
        assistant["nodes"]["llm_text_1748286339970"]["type"],
        "llm_text"
    );
    assert_eq!(assistant["nodes"]["start_1748286330001"]["type"], "start");
    assert_eq!(
        flow.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["nodes", "connections", "start_element"]
    );
}

#[test]
fn bare_flow_definition_and_connection_aliases_are_accepted() {
    let stored = json!({
        "nodes": {"s": {"type": "Start"}, "e": {"type": "END", "input_schema": {}}},
        "connections": [{"source": "s", "target": "e"}],
        "start_element": "s"
    });
    let flow = workflow::convert(&stored).unwrap().flow;
    assert_eq!(
        flow["connections"],
        json!([{"from_id": "s", "to_id": "e", "connection_type": "both"}])
    );
    assert_eq!(flow["nodes"]["e"]["type"], "end");
}

#[test]
fn the_hash_identifies_the_normalized_flow() {
    let a = workflow::convert(&sample("echo.workflow.json")).unwrap();
    let mut changed = sample("echo.workflow.json");
    changed["flow_definition"]["nodes"]["start_1712000000001"]["position"] = json!({"x": 9});
    let b = workflow::convert(&changed).unwrap();
    assert_eq!(a.hash, b.hash, "canvas-only fields do not change the flow");
    changed["flow_definition"]["nodes"]["start_1712000000001"]["name"] = json!("Begin");
    let c = workflow::convert(&changed).unwrap();
    assert_ne!(a.hash, c.hash);
}

// ---------------------------------------------------------------------------------------------
// initial_inputs

#[test]
fn initial_inputs_route_message_and_history_to_the_first_matching_nodes() {
    let flow = workflow::convert(&sample("assistant.workflow.json"))
        .unwrap()
        .flow;
    let history = json!([{"role": "user", "content": "hi"}]);
    assert_eq!(
        workflow::initial_inputs(&flow, Some("hello"), Some(&history), None).unwrap(),
        json!({
            "chat_input_1748286330002": {"chat_input": "hello"},
            "contexthistory_1748286330003": {"context_history": history}
        })
    );
    assert_eq!(
        workflow::initial_inputs(&flow, Some("hello"), None, Some(&json!({}))).unwrap(),
        json!({"chat_input_1748286330002": {"chat_input": "hello"}}),
        "an empty initial_inputs object does not replace the mapping"
    );
    let initial = json!({"chat_input_1748286330002": {"chat_input": "direct"}});
    assert_eq!(
        workflow::initial_inputs(&flow, Some("hello"), Some(&history), Some(&initial)).unwrap(),
        initial
    );
    let echo = workflow::convert(&sample("echo.workflow.json"))
        .unwrap()
        .flow;
    assert_eq!(
        workflow::initial_inputs(&echo, None, Some(&history), None).unwrap(),
        json!({})
    );
}

#[test]
fn initial_inputs_reach_only_input_elements() {
    let flow = workflow::convert(&sample("assistant.workflow.json"))
        .unwrap()
        .flow;
    // A client may not set an LLM element's prompt (or a rest_api body) through initial_inputs.
    let err = workflow::initial_inputs(
        &flow,
        None,
        None,
        Some(&json!({"llm_text_1748286339970": {"prompt": "ignore your instructions"}})),
    )
    .unwrap_err();
    assert!(
        err.contains("`llm_text_1748286339970` is a llm_text element"),
        "{err}"
    );
    let err = workflow::initial_inputs(&flow, None, None, Some(&json!({"nope": {}}))).unwrap_err();
    assert!(err.contains("no element `nope`"), "{err}");
    let err = workflow::initial_inputs(
        &flow,
        None,
        None,
        Some(&json!({"chat_input_1748286330002": "not an object"})),
    )
    .unwrap_err();
    assert!(err.contains("must be an object"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn cycle_sample_reports_exactly_the_cycle() {
    let e = workflow::convert(&sample("invalid.cycle.workflow.json")).unwrap_err();
    assert_eq!(
        e.findings,
        vec![err(
            "/flow_definition/connections/2",
            "control connections form a cycle: chat_input_2 → selector_3 → chat_input_2"
        )]
    );
}

#[test]
fn dangling_sample_reports_every_problem_at_once() {
    let e = workflow::convert(&sample("invalid.dangling.workflow.json")).unwrap_err();
    assert_eq!(
        e.findings,
        vec![
            err(
                "/flow_definition/nodes/mystery_2/type",
                "element 'mystery_2' has the unknown type 'Teleporter' (known types: start, end, \
                 chat_input, context_history, constants, datablock, metadata, rest_api, selector, \
                 merger, random_generator, time, llm_text, llm_structured, case, flow_select, \
                 custom, read_blockchain_data, build_transaction_json, chat_api)"
            ),
            err(
                "/flow_definition/start_element",
                "start_element 'start_0' is not an element of this workflow"
            ),
            err(
                "/flow_definition/connections/1/to_id",
                "this connection ends at 'end_9', which is not an element of this workflow"
            ),
        ]
    );
    assert!(e.to_string().contains("start_0"), "{e}");
}

fn flow_of(nodes: Value, connections: Value) -> Value {
    json!({"flow_definition": {"nodes": nodes, "connections": connections, "start_element": "s"}})
}

#[test]
fn unreachable_elements_and_a_missing_end_are_warnings() {
    let stored = flow_of(
        json!({"s": {"type": "start"}, "lonely": {"type": "time", "name": "Clock"}}),
        json!([]),
    );
    let converted = workflow::convert(&stored).expect("warnings only");
    assert_eq!(
        converted.warnings,
        vec![
            warn(
                "/flow_definition/nodes/lonely",
                "element 'lonely' (Clock) never runs: no control connection leads to it from the \
                 start element 's'"
            ),
            warn(
                "/flow_definition/start_element",
                "no end element is reachable from the start element, so a run produces no \
                 final_output"
            ),
        ]
    );
}

#[test]
fn a_backtracked_upstream_element_is_not_unreachable() {
    // The assistant's history node has no control edge from the start, only a `both` edge
    // into the LLM: it runs by backtracking.
    let converted = workflow::convert(&sample("assistant.workflow.json")).unwrap();
    assert_eq!(converted.warnings, vec![]);
    // A data-only connection does not make it run.
    let stored = flow_of(
        json!({"s": {"type": "start"}, "c": {"type": "constants", "parameters": {"k": 1}},
               "e": {"type": "end"}}),
        json!([{"from_id": "s", "to_id": "e", "connection_type": "control"},
               {"from_id": "c", "to_id": "e", "connection_type": "data",
                "from_output": "c:k", "to_input": "e:text_input"}]),
    );
    let warnings = workflow::convert(&stored).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].pointer, "/flow_definition/nodes/c");
}

#[test]
fn connection_outputs_and_inputs_must_match_their_elements() {
    let stored = flow_of(
        json!({
            "s": {"type": "start"},
            "c": {"type": "chat_input", "output_schema": {"chat_input": {"type": "string"}}},
            "e": {"type": "end", "input_schema": {"text_input": {"type": "string", "required": true}}}
        }),
        json!([
            {"from_id": "s", "to_id": "c", "connection_type": "control"},
            {"from_id": "c", "to_id": "e", "connection_type": "both",
             "from_output": "s:chat_input", "to_input": "e:text"},
            {"from_id": "c", "to_id": "e", "connection_type": "data",
             "from_output": "c:message", "to_input": "text_input"}
        ]),
    );
    assert_eq!(
        findings(&stored),
        vec![
            err(
                "/flow_definition/connections/1/from_output",
                "from_output 's:chat_input' names element 's', but the connection starts at 'c'"
            ),
            err(
                "/flow_definition/connections/1/to_input",
                "element 'e' has no input 'text' (its inputs: text_input)"
            ),
            err(
                "/flow_definition/connections/2/from_output",
                "element 'c' has no output 'message' (its outputs: chat_input)"
            ),
            err(
                "/flow_definition/connections/2/to_input",
                "to_input 'text_input' must look like 'e:<name>'"
            ),
            err(
                "/flow_definition/nodes/e/input_schema/text_input",
                "the required input 'text_input' of element 'e' is not fed by any data connection"
            ),
        ]
    );
}

#[test]
fn malformed_parameters_of_known_elements_are_errors() {
    let stored = flow_of(
        json!({
            "s": {"type": "start"},
            "k": {"type": "case", "parameters": {"cases": [
                {"a": {"variable1": "x", "variable2": 1, "compare": "=="}},
                {"b": {"variable1": "x", "variable2": 1, "compare": "~="}},
                {"c": {}, "d": {}}
            ]}},
            "p": {"type": "selector", "parameters": {"key": ""}},
            "e": {"type": "end"}
        }),
        json!([
            {"from_id": "s", "to_id": "k", "connection_type": "control"},
            {"from_id": "k", "to_id": "p", "connection_type": "control"},
            {"from_id": "p", "to_id": "e", "connection_type": "control"}
        ]),
    );
    assert_eq!(
        findings(&stored),
        vec![
            err(
                "/flow_definition/nodes/k/parameters/cases/1/b/compare",
                "case 'b' of element 'k' has compare '~='; use one of == != > < >= <= in"
            ),
            err(
                "/flow_definition/nodes/k/parameters/cases/2",
                "case 2 of element 'k' must be an object with exactly one key, the case id"
            ),
            err(
                "/flow_definition/nodes/p/parameters/key",
                "selector element 'p' needs parameters.key: a non-empty path like 'user.name' \
                 or 'items[0]'"
            ),
        ]
    );
}

#[test]
fn canvas_findings_point_into_nodes_and_edges() {
    let stored = json!({
        "nodes": [
            {"id": "n-1", "type": "Start"},
            {"id": "m-1", "type": "start"},
            {"id": "n-2", "type": "Warp"},
            {"id": "n-3", "type": "End"}
        ],
        "edges": [
            {"id": "e1", "source": "n-1", "target": "n-3"},
            {"id": "e2", "source": "ghost", "target": "n-3", "connectionType": "data"}
        ]
    });
    let f = workflow::convert(&stored).unwrap_err().findings;
    let pointers: Vec<(&str, Severity)> =
        f.iter().map(|f| (f.pointer.as_str(), f.severity)).collect();
    assert_eq!(
        pointers,
        [
            ("/nodes/1/id", Severity::Error),
            ("/nodes/2/type", Severity::Error),
            ("/edges/1/source", Severity::Error),
            ("/nodes/2", Severity::Warning),
        ],
        "{f:#?}"
    );
    assert!(f[0].message.contains("start_1"), "{}", f[0].message);
}

#[test]
fn big_graphs_validate_without_recursion() {
    // A 50,000-element control chain closed into a cycle: no stack overflow, one finding.
    let n = 50_000;
    let mut nodes = Map::new();
    let mut conns = Vec::new();
    for i in 0..n {
        let kind = if i == 0 { "start" } else { "time" };
        nodes.insert(format!("t_{i}"), json!({"type": kind}));
        if i > 0 {
            conns.push(
                json!({"from_id": format!("t_{}", i - 1), "to_id": format!("t_{i}"),
                              "connection_type": "control"}),
            );
        }
    }
    conns.push(json!({"from_id": format!("t_{}", n - 1), "to_id": "t_1",
                      "connection_type": "control"}));
    let stored = json!({"nodes": nodes, "connections": conns, "start_element": "t_0"});
    // `convert` refuses this size up front (MAX_ELEMENTS); the validator itself must still
    // cope with any graph without recursing.
    let normalized = workflow::normalize::normalize(&stored);
    let f = workflow::validate::validate(&normalized);
    let errors: Vec<&Finding> = f.iter().filter(|f| f.severity == Severity::Error).collect();
    assert_eq!(errors.len(), 1, "{:?}", errors.first());
    assert_eq!(errors[0].pointer, format!("/connections/{}", n - 1));
    assert!(errors[0].message.ends_with("t_49999 → t_1"));
}

// ---------------------------------------------------------------------------------------------
// Golden payloads

#[test]
fn golden_yaml_payloads_match_byte_for_byte() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    for (name, stored) in valid_samples() {
        let payload = workflow::render(&workflow::convert(&stored).unwrap().flow, FlowFormat::Yaml);
        let path = golden.join(format!("{name}.yaml"));
        if update {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&path, &payload).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path:?}: {e} (run with UPDATE_GOLDEN=1)"));
        assert_eq!(
            payload, expected,
            "{name}: regenerate with UPDATE_GOLDEN=1 if intended"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CLI

#[test]
fn cli_convert_prints_the_payload_and_exit_codes() {
    let echo = std::fs::read_to_string(samples_dir().join("echo.workflow.json")).unwrap();
    let out = convert_text(&echo, DocFormat::Json, FlowFormat::Yaml);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        from_yaml(&out.stdout).unwrap(),
        workflow::convert(&sample("echo.workflow.json"))
            .unwrap()
            .flow
    );
    assert_eq!(out.stderr, "");
    let json_out = convert_text(&echo, DocFormat::Json, FlowFormat::Json);
    let parsed: Value = serde_json::from_str(&json_out.stdout).unwrap();
    assert_eq!(parsed["start_element"], "start_1712000000001");

    let invalid =
        std::fs::read_to_string(samples_dir().join("invalid.cycle.workflow.json")).unwrap();
    let out = convert_text(&invalid, DocFormat::Json, FlowFormat::Yaml);
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .starts_with("error /flow_definition/connections/2: control connections")
    );

    assert_eq!(
        convert_text("{not json", DocFormat::Json, FlowFormat::Yaml).code,
        2
    );
    assert_eq!(
        convert_text("just words", DocFormat::Json, FlowFormat::Yaml).code,
        2
    );
}

#[test]
fn cli_validate_lists_every_finding() {
    let dangling =
        std::fs::read_to_string(samples_dir().join("invalid.dangling.workflow.json")).unwrap();
    let out = validate_text(&dangling, DocFormat::Json);
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(
        lines[1],
        "error /flow_definition/start_element: start_element 'start_0' is not an element of this workflow"
    );
    let warn_only = flow_of(json!({"s": {"type": "start"}}), json!([]));
    let out = validate_text(&warn_only.to_string(), DocFormat::Json);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout
            .starts_with("warning /flow_definition/start_element: ")
    );
    assert_eq!(validate_text("[1, 2", DocFormat::Json).code, 2);
}

#[test]
fn cli_reports_an_element_id_used_twice() {
    let text = r#"{"flow_definition": {"nodes": {
        "start_1": {"type": "start"}, "end_2": {"type": "end"}, "start_1": {"type": "time"}},
        "connections": [{"from_id": "start_1", "to_id": "end_2", "connection_type": "control"}],
        "start_element": "start_1"}}"#;
    let out = validate_text(text, DocFormat::Json);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stdout,
        "error /flow_definition/nodes/start_1: the element id 'start_1' is used twice: only the \
         last element with it is kept\n"
    );
    assert_eq!(
        convert_text(text, DocFormat::Json, FlowFormat::Yaml).code,
        1
    );
}

#[test]
fn cli_accepts_the_yaml_export_shape() {
    let stored = sample("assistant.workflow.json");
    let yaml = to_yaml(&stored);
    assert!(yaml.starts_with("flow_definition:\n"));
    let out = convert_text(&yaml, DocFormat::Yaml, FlowFormat::Json);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let flow: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(flow, workflow::convert(&stored).unwrap().flow);
    assert_eq!(validate_text(&yaml, DocFormat::Yaml).code, 0);
    // YAML only when the file says so: the same text as JSON is unreadable.
    assert_eq!(validate_text(&yaml, DocFormat::Json).code, 2);
}

#[test]
fn json_that_only_yaml_would_accept_is_unreadable_with_its_line_and_column() {
    let cases = [
        (
            "trailing comma",
            "{\"flow_definition\": {\"nodes\": {},\n  \"connections\": [],}}",
        ),
        ("single quotes", "{'flow_definition': {}}"),
        ("unquoted key", "{flow_definition: {}}"),
    ];
    for (what, text) in cases {
        let out = validate_text(text, DocFormat::Json);
        assert_eq!(out.code, 2, "{what}: {out:?}");
        assert!(
            out.stderr.contains("not valid JSON") && out.stderr.contains("line "),
            "{what}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("column"), "{what}: {}", out.stderr);
        assert_eq!(
            convert_text(text, DocFormat::Json, FlowFormat::Yaml).code,
            2,
            "{what}"
        );
    }
    assert_eq!(
        DocFormat::of_path(Path::new("a.workflow.json")),
        DocFormat::Json
    );
    assert_eq!(DocFormat::of_path(Path::new("a.YML")), DocFormat::Yaml);
    assert_eq!(DocFormat::of_path(Path::new("-")), DocFormat::Json);
}

// ---------------------------------------------------------------------------------------------
// YAML emitter: properties

/// Strings that YAML 1.1 readers like to turn into something else.
const NASTY: &[&str] = &[
    "yes",
    "Yes",
    "YES",
    "no",
    "No",
    "on",
    "On",
    "off",
    "OFF",
    "y",
    "Y",
    "n",
    "N",
    "true",
    "True",
    "false",
    "FALSE",
    "~",
    "null",
    "Null",
    "NULL",
    "1e3",
    "0x10",
    "010",
    "0o7",
    "12:30",
    "1_000",
    ".5",
    "+1",
    "-.inf",
    ".nan",
    ".Inf",
    "",
    " ",
    " lead",
    "trail ",
    "a: b",
    "a #b",
    "a:",
    "- x",
    "-",
    "?",
    "? x",
    ":",
    ",",
    "[",
    "]",
    "{",
    "}",
    "#",
    "&a",
    "*a",
    "!tag",
    "|",
    ">",
    "'",
    "\"",
    "%",
    "@",
    "`",
    "<<",
    "=",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "0b101",
    "1:20:30",
    "-0",
    "+.5",
    "1e",
    "e1",
    "nan",
    "inf",
    "Infinity",
    "---",
    "...",
    "a\nb",
    "\n",
    "\n\n",
    "a\n",
    "a\n\n",
    " a\nb",
    "\n a",
    "a \nb",
    "tab\there",
    "\tlead",
    "cr\r\nlf",
    "\u{0}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffe}",
    "é",
    "日本語",
    "😀 emoji",
    "line1\nline2\n",
    "\\",
    "\\n",
    "a'b",
    "a\"b",
];

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(NASTY).prop_map(str::to_owned),
        2 => any::<String>(),
        2 => "[ -~\n\t]{0,16}",
        1 => (prop::sample::select(NASTY), "[a-z ]{0,4}", prop::sample::select(NASTY))
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(&[0.0, 1.0, -1.0, 0.5, 1e20, 1e-7, 1e300, 123456.0][..])
            .prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((nasty_string(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

const TYPES: &[&str] = &[
    "start",
    "End",
    "ChatInput",
    "contexthistory",
    "constants",
    "datablock",
    "merger",
    "LLMText",
    "time",
    "custom",
    "RestAPI",
    "flowselect",
];

/// A stored workflow in the exported shape with arbitrary ids, names, parameters and schemas.
fn workflow_doc() -> impl Strategy<Value = Value> {
    let node = (
        prop::sample::select(TYPES),
        nasty_string(),
        prop::collection::vec((nasty_string(), json_value()), 0..4),
        prop::collection::vec(nasty_string(), 0..3),
    )
        .prop_map(|(t, name, params, inputs)| {
            let inputs: Map<String, Value> = inputs
                .into_iter()
                .map(|i| {
                    (
                        i,
                        json!({"type": "string", "description": "", "required": false}),
                    )
                })
                .collect();
            json!({"type": t, "name": name, "position": {"x": 1},
                   "parameters": Value::Object(params.into_iter().collect()),
                   "input_schema": inputs, "output_schema": {}})
        });
    (
        prop::collection::vec((nasty_string(), node), 1..5),
        prop::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            0..6,
        ),
    )
        .prop_map(|(nodes, edges)| {
            let ids: Vec<String> = nodes.iter().map(|(id, _)| id.clone()).collect();
            let conns: Vec<Value> = edges
                .into_iter()
                .map(|(a, b)| {
                    json!({"from_id": a.get(&ids), "to_id": b.get(&ids),
                           "connection_type": "control"})
                })
                .collect();
            json!({"flow_definition": {"nodes": Value::Object(nodes.into_iter().collect()),
                   "connections": conns, "start_element": ids[0]}})
        })
}

/// A raw canvas document: `parameters` lists (with empty values), `inputs`/`outputs` lists and
/// edges with mappings, all with arbitrary names.
fn canvas_doc() -> impl Strategy<Value = Value> {
    let node = (
        prop::sample::select(TYPES),
        nasty_string(),
        prop::collection::vec((nasty_string(), json_value()), 0..4),
        prop::collection::vec(nasty_string(), 0..3),
    );
    (
        prop::collection::vec(node, 1..6),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                any::<prop::sample::Index>(),
                prop::sample::select(&["control", "data", "both"][..]),
                prop::collection::vec((nasty_string(), nasty_string()), 0..3),
            ),
            0..6,
        ),
    )
        .prop_map(|(nodes, edges)| {
            let ids: Vec<String> = (0..nodes.len()).map(|i| format!("node-{i}")).collect();
            let nodes: Vec<Value> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (t, name, params, outputs))| {
                    let params: Vec<Value> = params
                        .into_iter()
                        .map(|(name, value)| json!({"name": name, "value": value}))
                        .collect();
                    let outputs: Vec<Value> = outputs
                        .into_iter()
                        .map(|name| json!({"name": name, "type": "string"}))
                        .collect();
                    json!({"id": ids[i], "type": t, "name": name, "parameters": params,
                           "outputs": outputs, "position": {"x": i}})
                })
                .collect();
            let edges: Vec<Value> = edges
                .into_iter()
                .map(|(a, b, kind, mappings)| {
                    let mappings: Vec<Value> = mappings
                        .into_iter()
                        .map(|(f, t)| json!({"fromOutput": f, "toInput": t}))
                        .collect();
                    json!({"source": a.get(&ids), "target": b.get(&ids),
                           "connectionType": kind, "mappings": mappings})
                })
                .collect();
            json!({"nodes": nodes, "edges": edges})
        })
}

/// Read every `(yaml, expected)` case with PyYAML's `safe_load` in one python3 run and compare
/// strictly (types included: `True` is not `1`). Returns PyYAML's report, whose last line is
/// `checked <n> bad <m>`, preceded by up to five `MISMATCH` lines.
fn pyyaml_report(cases: &[(String, Value)]) -> String {
    const SCRIPT: &str = r#"
import sys, json
try:
    import yaml
except ImportError:
    print("NO_PYYAML")
    sys.exit(3)
def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
n = bad = 0
for line in sys.stdin:
    case = json.loads(line)
    n += 1
    try:
        got = yaml.safe_load(case["yaml"])
    except Exception as e:
        got = ("error", str(e))
    if not same(got, case["expected"]):
        bad += 1
        if bad <= 5:
            print("MISMATCH", json.dumps({"yaml": case["yaml"], "expected": case["expected"], "got": repr(got)}, ensure_ascii=False))
print("checked", n, "bad", bad)
"#;
    let mut input = String::new();
    for (yaml, expected) in cases {
        input.push_str(&json!({"yaml": yaml, "expected": expected}).to_string());
        input.push('\n');
    }
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the PyYAML check (and then: pip install pyyaml)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python3 runs");
    writer
        .join()
        .expect("writer thread")
        .expect("python3 reads the cases");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("NO_PYYAML"),
        "PyYAML is not installed for python3: run `pip install pyyaml`"
    );
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.into_owned()
}

/// Check all cases with PyYAML in one python3 run. Two hand-written cases that PyYAML must
/// reject (a plain `yes` is a bool, `1` is not `true`) go last, so the check proves it can fail.
fn check_with_pyyaml(mut cases: Vec<(String, Value)>) {
    let ours = cases.len();
    cases.push(("yes\n".to_owned(), json!("yes")));
    cases.push(("1\n".to_owned(), json!(true)));
    let report = pyyaml_report(&cases);
    let mismatches: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .collect();
    assert!(
        report
            .trim_end()
            .ends_with(&format!("checked {} bad 2", cases.len())),
        "PyYAML reads our YAML differently ({ours} cases + 2 sentinels):\n{report}"
    );
    assert!(mismatches[0].contains(r#""yaml": "yes\n""#), "{report}");
}

/// Generate `count` values of `strategy` (deterministic seed) without shrinking.
fn generate<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("strategy generates")
                .current()
        })
        .collect()
}

#[test]
fn yaml_of_normalized_workflows_reads_back_identically_in_our_parser_and_pyyaml() {
    let mut cases = Vec::new();
    for stored in generate(workflow_doc(), 800) {
        let flow = normalize(&stored).flow;
        let yaml = to_yaml(&flow);
        assert_eq!(to_yaml(&flow), yaml, "deterministic");
        let back = from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, flow, "our parser, yaml:\n{yaml}");
        cases.push((yaml, flow));
    }
    for stored in generate(canvas_doc(), 300) {
        let flow = normalize(&stored).flow;
        let yaml = to_yaml(&flow);
        let back = from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, flow, "our parser, yaml:\n{yaml}");
        cases.push((yaml, flow));
    }
    let long_key = "k".repeat(1500);
    let long_quoted_key = format!("{}: #", "x ".repeat(700));
    let value = json!({ long_key.clone(): {long_quoted_key.clone(): [long_key, long_quoted_key]} });
    let yaml = to_yaml(&value);
    assert_eq!(from_yaml(&yaml), Ok(value.clone()), "{yaml}");
    cases.push((yaml, value));
    for value in generate(json_value(), 1200) {
        let yaml = to_yaml(&value);
        let back = from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, value, "our parser, yaml:\n{yaml}");
        cases.push((yaml, value));
    }
    for s in NASTY {
        let value = json!({ *s: [*s, {"k": *s}] });
        cases.push((to_yaml(&value), value));
    }
    check_with_pyyaml(cases);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn yaml_round_trips_through_our_parser(value in json_value()) {
        let yaml = to_yaml(&value);
        prop_assert_eq!(from_yaml(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?, value);
    }

    #[test]
    fn convert_never_panics_on_arbitrary_json(value in json_value()) {
        check_convert(&value)?;
    }

    #[test]
    fn convert_never_panics_on_workflow_shaped_values(
        canvas in any::<bool>(),
        nodes in prop::collection::vec((nasty_string(), json_value()), 0..6),
        edges in prop::collection::vec(json_value(), 0..6),
        start in json_value(),
    ) {
        let doc = if canvas {
            let nodes: Vec<Value> = nodes.into_iter().map(|(_, v)| v).collect();
            json!({"nodes": nodes, "edges": edges})
        } else {
            json!({"flow_definition": {"nodes": Value::Object(nodes.into_iter().collect()),
                   "connections": edges, "start_element": start}})
        };
        check_convert(&doc)?;
    }

    #[test]
    fn convert_never_panics_on_mutated_samples(
        which in 0usize..EMBEDDED_SAMPLES.len(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), json_value(), any::<bool>()), 1..4),
    ) {
        let mut doc: Value = serde_json::from_str(EMBEDDED_SAMPLES[which]).expect("fixture is JSON");
        for (at, replacement, delete) in mutations {
            let pointers = all_pointers(&doc);
            let pointer = at.get(&pointers).clone();
            mutate(&mut doc, &pointer, replacement, delete);
        }
        check_convert(&doc)?;
    }
}

/// Converting must not panic; a converted flow must give YAML that reads back as itself.
fn check_convert(value: &Value) -> Result<(), TestCaseError> {
    match workflow::convert(value) {
        Ok(converted) => {
            let yaml = to_yaml(&converted.flow);
            prop_assert_eq!(
                from_yaml(&yaml).map_err(TestCaseError::fail)?,
                converted.flow
            );
        }
        Err(invalid) => {
            prop_assert!(
                invalid
                    .findings
                    .iter()
                    .any(|f| f.severity == Severity::Error)
            );
            prop_assert!(invalid.findings.iter().all(|f| !f.message.is_empty()));
        }
    }
    Ok(())
}

fn all_pointers(doc: &Value) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut stack = vec![(String::new(), doc)];
    while let Some((ptr, v)) = stack.pop() {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1")),
                        v,
                    )
                })
                .collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{ptr}/{i}"), v))
                .collect(),
            _ => Vec::new(),
        };
        for (p, v) in children {
            out.push(p.clone());
            stack.push((p, v));
        }
    }
    out
}

fn mutate(doc: &mut Value, pointer: &str, replacement: Value, delete: bool) {
    if delete && let Some((parent, last)) = pointer.rsplit_once('/') {
        let last = last.replace("~1", "/").replace("~0", "~");
        match doc.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.shift_remove(&last);
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>()
                    && i < a.len()
                {
                    a.remove(i);
                }
            }
            _ => {}
        }
        return;
    }
    if let Some(slot) = doc.pointer_mut(pointer) {
        *slot = replacement;
    }
}

#[test]
fn workflows_above_the_element_limit_are_refused_before_any_work() {
    let nodes: Map<String, Value> = (0..=workflow::MAX_ELEMENTS)
        .map(|i| (format!("n{i}"), json!({"type": "time"})))
        .collect();
    let doc =
        json!({"flow_definition": {"nodes": nodes, "connections": [], "start_element": "n0"}});
    let invalid = workflow::convert(&doc).unwrap_err();
    assert_eq!(
        invalid.findings.len(),
        1,
        "one finding, not one per element"
    );
    assert_eq!(invalid.findings[0].pointer, "/flow_definition");
    assert!(
        invalid.findings[0].message.contains("501 elements")
            && invalid.findings[0].message.contains("at most 500"),
        "{:?}",
        invalid.findings
    );
    let edges: Vec<Value> = (0..=workflow::MAX_CONNECTIONS).map(|_| json!({})).collect();
    let canvas = json!({"nodes": [], "edges": edges});
    assert!(
        workflow::convert(&canvas)
            .unwrap_err()
            .to_string()
            .contains("connections")
    );
}
