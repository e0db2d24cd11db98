//! Normalization: a stored document (any shape) → the engine's `{nodes, connections,
//! start_element}` object, plus a source map from every element and connection back to the
//! stored document (JSON pointers), which `validate` uses for its findings.
//!
//! Owns: the canonical element type names and their aliases, the canvas conversion (element ids
//! `<type>_<digits>`, `parameters` lists, `inputs`/`outputs` → schemas, edge `mappings` → data
//! connections), dropping canvas-only fields, and the structural findings (wrong JSON kinds,
//! unknown types, duplicate ids). Never panics on any input; linear in the document size.
//!
//! Canvas choices: a node's `parameters` (a `[{name, value}]` list or an object) wins over its
//! `parametersObject`; an `inputs`/`outputs` entry without `type` is typed `json`; a canvas id
//! without digits takes the node's 1-based position; an edge without `connectionType` is
//! `both`, and its mappings become data connections whatever its type.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::finding::{Finding, Severity};
use super::stored::{self, Shape, describe, push, push_index};

/// The element types the engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    Start,
    End,
    ChatInput,
    ContextHistory,
    Constants,
    Datablock,
    Metadata,
    RestApi,
    Selector,
    Merger,
    RandomGenerator,
    Time,
    LlmText,
    LlmStructured,
    Case,
    FlowSelect,
    Custom,
    ReadBlockchainData,
    BuildTransactionJson,
    ChatApi,
}

impl ElementType {
    /// Every type, in the order docs/neuralabs.md lists them.
    pub const ALL: [ElementType; 20] = [
        Self::Start,
        Self::End,
        Self::ChatInput,
        Self::ContextHistory,
        Self::Constants,
        Self::Datablock,
        Self::Metadata,
        Self::RestApi,
        Self::Selector,
        Self::Merger,
        Self::RandomGenerator,
        Self::Time,
        Self::LlmText,
        Self::LlmStructured,
        Self::Case,
        Self::FlowSelect,
        Self::Custom,
        Self::ReadBlockchainData,
        Self::BuildTransactionJson,
        Self::ChatApi,
    ];

    /// The engine's name of the type.
    pub fn canonical(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::End => "end",
            Self::ChatInput => "chat_input",
            Self::ContextHistory => "context_history",
            Self::Constants => "constants",
            Self::Datablock => "datablock",
            Self::Metadata => "metadata",
            Self::RestApi => "rest_api",
            Self::Selector => "selector",
            Self::Merger => "merger",
            Self::RandomGenerator => "random_generator",
            Self::Time => "time",
            Self::LlmText => "llm_text",
            Self::LlmStructured => "llm_structured",
            Self::Case => "case",
            Self::FlowSelect => "flow_select",
            Self::Custom => "custom",
            Self::ReadBlockchainData => "read_blockchain_data",
            Self::BuildTransactionJson => "build_transaction_json",
            Self::ChatApi => "chat_api",
        }
    }

    /// Recognise a type name as the frontend writes it: case-insensitive, `_` ignored, plus the
    /// `BuildTransaction` alias. Anything else is unknown (`None`).
    pub fn parse(name: &str) -> Option<Self> {
        let key: String = name
            .chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        if key == "buildtransaction" {
            return Some(Self::BuildTransactionJson);
        }
        Self::ALL
            .into_iter()
            .find(|t| t.canonical().replace('_', "") == key)
    }
}

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Control,
    Data,
    Both,
}

impl ConnKind {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "control" => Some(Self::Control),
            "data" => Some(Self::Data),
            "both" => Some(Self::Both),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Data => "data",
            Self::Both => "both",
        }
    }

    /// Whether the connection makes its target run after its source.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Control | Self::Both)
    }

    /// Whether the connection carries a value.
    pub fn is_data(self) -> bool {
        matches!(self, Self::Data | Self::Both)
    }
}

/// One element of the normalized flow and where it came from.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Element id in the normalized flow.
    pub id: String,
    /// Pointer to the node object in the stored document.
    pub ptr: String,
    /// The recognised type (`None` when missing or unknown, which is an error already).
    pub kind: Option<ElementType>,
    /// The display name, if any.
    pub name: Option<String>,
    /// The normalized parameters (empty when absent).
    pub params: Map<String, Value>,
    /// Pointer to where the parameters live (for "missing parameter" findings).
    pub params_ptr: String,
    /// Parameter name → pointer to its value.
    pub param_ptrs: HashMap<String, String>,
    /// The normalized input schema (empty when absent).
    pub inputs: Map<String, Value>,
    /// Input name → pointer to its declaration.
    pub input_ptrs: HashMap<String, String>,
    /// The normalized output schema (empty when absent).
    pub outputs: Map<String, Value>,
}

impl NodeInfo {
    /// How messages name the element: `'llm_text_5' (Urgent reply)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) if !name.is_empty() && name != &self.id => {
                format!("'{}' ({name})", self.id)
            }
            _ => format!("'{}'", self.id),
        }
    }
}

/// One normalized connection and where its parts came from.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub from: String,
    pub to: String,
    pub kind: ConnKind,
    pub from_output: Option<String>,
    pub to_input: Option<String>,
    /// Pointer to the stored connection (or edge).
    pub ptr: String,
    pub from_ptr: String,
    pub to_ptr: String,
    pub from_output_ptr: String,
    pub to_input_ptr: String,
}

/// The normalized flow with its source map and the structural findings.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub shape: Option<Shape>,
    /// `{nodes, connections, start_element}`.
    pub flow: Value,
    pub nodes: Vec<NodeInfo>,
    pub conns: Vec<ConnInfo>,
    pub start: Option<String>,
    /// Pointer to the start element's declaration (`start_element`, or the canvas start node).
    pub start_ptr: String,
    /// Structural findings (errors), in document order.
    pub findings: Vec<Finding>,
}

/// Fields of a node the canvas keeps for itself; the engine never sees them.
const CANVAS_ONLY: [&str; 8] = [
    "position",
    "original_id",
    "code",
    "fieldAccess",
    "processingMessage",
    "parametersObject",
    "hyperparameters",
    "templateId",
];

/// Engine fields copied from a canvas node, in output order (`type` comes first, then these,
/// then `parameters`, `input_schema`, `output_schema`).
const CANVAS_COPIED: [&str; 6] = [
    "name",
    "node_description",
    "description",
    "processing_message",
    "tags",
    "layer",
];

fn error(findings: &mut Vec<Finding>, pointer: String, message: String) {
    findings.push(Finding {
        pointer,
        message,
        severity: Severity::Error,
    });
}

/// Normalize a stored document. Structural problems become findings; the flow is still built
/// as far as possible so that validation can report everything at once.
pub fn normalize(stored_doc: &Value) -> Normalized {
    let mut out = Normalized {
        shape: None,
        flow: Value::Object(Map::new()),
        nodes: Vec::new(),
        conns: Vec::new(),
        start: None,
        start_ptr: String::new(),
        findings: Vec::new(),
    };
    let located = match stored::locate(stored_doc) {
        Ok(located) => located,
        Err(e) => {
            error(&mut out.findings, e.pointer, e.message);
            return out;
        }
    };
    out.shape = Some(located.shape);
    let nodes = match located.shape {
        Shape::Canvas => canvas(located.flow, &mut out),
        Shape::Exported | Shape::Bare => exported(located.flow, &located.base, &mut out),
    };
    let mut flow = Map::new();
    flow.insert("nodes".to_owned(), Value::Object(nodes));
    flow.insert(
        "connections".to_owned(),
        Value::Array(out.conns.iter().map(connection_value).collect()),
    );
    flow.insert(
        "start_element".to_owned(),
        out.start.clone().map_or(Value::Null, Value::String),
    );
    out.flow = Value::Object(flow);
    out
}

fn connection_value(c: &ConnInfo) -> Value {
    let mut m = Map::new();
    m.insert("from_id".to_owned(), Value::String(c.from.clone()));
    m.insert("to_id".to_owned(), Value::String(c.to.clone()));
    m.insert(
        "connection_type".to_owned(),
        Value::String(c.kind.as_str().to_owned()),
    );
    if let Some(fo) = &c.from_output {
        m.insert("from_output".to_owned(), Value::String(fo.clone()));
    }
    if let Some(ti) = &c.to_input {
        m.insert("to_input".to_owned(), Value::String(ti.clone()));
    }
    Value::Object(m)
}

/// Check a type field and return the canonical type.
fn element_type(
    node: &Map<String, Value>,
    node_ptr: &str,
    id: &str,
    findings: &mut Vec<Finding>,
) -> Option<ElementType> {
    let ptr = push(node_ptr, "type");
    match node.get("type") {
        None => {
            error(findings, ptr, format!("element '{id}' has no type"));
            None
        }
        Some(Value::String(t)) => {
            let parsed = ElementType::parse(t);
            if parsed.is_none() {
                let known: Vec<&str> = ElementType::ALL.iter().map(|t| t.canonical()).collect();
                error(
                    findings,
                    ptr,
                    format!(
                        "element '{id}' has the unknown type '{t}' (known types: {})",
                        known.join(", ")
                    ),
                );
            }
            parsed
        }
        Some(other) => {
            error(
                findings,
                ptr,
                format!(
                    "the type of element '{id}' must be a string, not {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// Read an object-valued field that may be absent; a wrong kind is an error.
fn object_field(
    node: &Map<String, Value>,
    key: &str,
    ptr: &str,
    what: &str,
    findings: &mut Vec<Finding>,
) -> Map<String, Value> {
    match node.get(key) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            error(
                findings,
                ptr.to_owned(),
                format!("{what} must be an object, not {}", describe(other)),
            );
            Map::new()
        }
    }
}

/// Check each declaration of a schema object is an object; return name → pointer.
fn schema_ptrs(
    schema: &Map<String, Value>,
    ptr: &str,
    what: &str,
    findings: &mut Vec<Finding>,
) -> HashMap<String, String> {
    let mut ptrs = HashMap::with_capacity(schema.len());
    for (name, decl) in schema {
        let p = push(ptr, name);
        if !decl.is_object() {
            error(
                findings,
                p.clone(),
                format!(
                    "{what} '{name}' must be an object like {{\"type\": \"string\", \"required\": true}}, not {}",
                    describe(decl)
                ),
            );
        }
        ptrs.insert(name.clone(), p);
    }
    ptrs
}

fn exported(flow: &Map<String, Value>, base: &str, out: &mut Normalized) -> Map<String, Value> {
    let mut nodes_out = Map::new();
    let nodes_ptr = push(base, "nodes");
    match flow.get("nodes") {
        Some(Value::Object(nodes)) => {
            for (id, node) in nodes {
                let ptr = push(&nodes_ptr, id);
                let Some(node) = node.as_object() else {
                    error(
                        &mut out.findings,
                        ptr.clone(),
                        format!("element '{id}' must be an object, not {}", describe(node)),
                    );
                    out.nodes.push(bare_info(id, ptr));
                    continue;
                };
                let (value, info) = exported_node(id, node, ptr, &mut out.findings);
                nodes_out.insert(id.clone(), value);
                out.nodes.push(info);
            }
        }
        None => error(
            &mut out.findings,
            nodes_ptr,
            "the flow definition has no nodes".to_owned(),
        ),
        Some(other) => error(
            &mut out.findings,
            nodes_ptr,
            format!(
                "nodes must be an object of elements by id, not {}",
                describe(other)
            ),
        ),
    }

    let conns_ptr = push(base, "connections");
    match flow.get("connections") {
        None | Some(Value::Null) => {}
        Some(Value::Array(conns)) => {
            for (i, conn) in conns.iter().enumerate() {
                exported_connection(conn, push_index(&conns_ptr, i), out);
            }
        }
        Some(other) => error(
            &mut out.findings,
            conns_ptr,
            format!("connections must be a list, not {}", describe(other)),
        ),
    }

    out.start_ptr = push(base, "start_element");
    match flow.get("start_element") {
        None | Some(Value::Null) => error(
            &mut out.findings,
            out.start_ptr.clone(),
            "the workflow has no start_element".to_owned(),
        ),
        Some(Value::String(s)) => out.start = Some(s.clone()),
        Some(other) => error(
            &mut out.findings,
            out.start_ptr.clone(),
            format!(
                "start_element must be an element id (a string), not {}",
                describe(other)
            ),
        ),
    }
    nodes_out
}

fn bare_info(id: &str, ptr: String) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        params_ptr: push(&ptr, "parameters"),
        ptr,
        kind: None,
        name: None,
        params: Map::new(),
        param_ptrs: HashMap::new(),
        inputs: Map::new(),
        input_ptrs: HashMap::new(),
        outputs: Map::new(),
    }
}

fn exported_node(
    id: &str,
    node: &Map<String, Value>,
    ptr: String,
    findings: &mut Vec<Finding>,
) -> (Value, NodeInfo) {
    let kind = element_type(node, &ptr, id, findings);
    let mut value = Map::new();
    for (key, field) in node {
        if CANVAS_ONLY.contains(&key.as_str()) {
            continue;
        }
        let field = match (key.as_str(), kind) {
            ("type", Some(kind)) => Value::String(kind.canonical().to_owned()),
            _ => field.clone(),
        };
        value.insert(key.clone(), field);
    }
    let params_ptr = push(&ptr, "parameters");
    let params = object_field(
        node,
        "parameters",
        &params_ptr,
        &format!("the parameters of element '{id}'"),
        findings,
    );
    let param_ptrs = params
        .keys()
        .map(|k| (k.clone(), push(&params_ptr, k)))
        .collect();
    let in_ptr = push(&ptr, "input_schema");
    let inputs = object_field(
        node,
        "input_schema",
        &in_ptr,
        &format!("the input_schema of element '{id}'"),
        findings,
    );
    let input_ptrs = schema_ptrs(&inputs, &in_ptr, "input", findings);
    let out_ptr = push(&ptr, "output_schema");
    let outputs = object_field(
        node,
        "output_schema",
        &out_ptr,
        &format!("the output_schema of element '{id}'"),
        findings,
    );
    schema_ptrs(&outputs, &out_ptr, "output", findings);
    let info = NodeInfo {
        id: id.to_owned(),
        ptr,
        kind,
        name: node.get("name").and_then(Value::as_str).map(str::to_owned),
        params,
        params_ptr,
        param_ptrs,
        inputs,
        input_ptrs,
        outputs,
    };
    (Value::Object(value), info)
}

/// Read an optional string field of a connection; a wrong kind is an error.
fn opt_string(
    conn: &Map<String, Value>,
    keys: &[&str],
    conn_ptr: &str,
    findings: &mut Vec<Finding>,
) -> (Option<String>, String) {
    for key in keys {
        if let Some(v) = conn.get(*key) {
            let ptr = push(conn_ptr, key);
            return match v {
                Value::String(s) => (Some(s.clone()), ptr),
                Value::Null => (None, ptr),
                other => {
                    error(
                        findings,
                        ptr.clone(),
                        format!("{key} must be a string, not {}", describe(other)),
                    );
                    (None, ptr)
                }
            };
        }
    }
    (None, push(conn_ptr, keys[0]))
}

fn exported_connection(conn: &Value, ptr: String, out: &mut Normalized) {
    let Some(conn) = conn.as_object() else {
        error(
            &mut out.findings,
            ptr,
            format!("a connection must be an object, not {}", describe(conn)),
        );
        return;
    };
    let findings = &mut out.findings;
    let (from, from_ptr) = opt_string(conn, &["from_id", "source"], &ptr, findings);
    let (to, to_ptr) = opt_string(conn, &["to_id", "target"], &ptr, findings);
    let (kind_text, kind_ptr) = opt_string(conn, &["connection_type"], &ptr, findings);
    let (from_output, from_output_ptr) = opt_string(conn, &["from_output"], &ptr, findings);
    let (to_input, to_input_ptr) = opt_string(conn, &["to_input"], &ptr, findings);
    let kind = match kind_text {
        None => Some(ConnKind::Both),
        Some(t) => {
            let k = ConnKind::parse(&t);
            if k.is_none() {
                error(
                    findings,
                    kind_ptr,
                    format!("connection_type '{t}' is not one of control, data, both"),
                );
            }
            k
        }
    };
    if from.is_none() && !conn.contains_key("from_id") && !conn.contains_key("source") {
        error(
            findings,
            from_ptr.clone(),
            "this connection has no from_id".to_owned(),
        );
    }
    if to.is_none() && !conn.contains_key("to_id") && !conn.contains_key("target") {
        error(
            findings,
            to_ptr.clone(),
            "this connection has no to_id".to_owned(),
        );
    }
    if let (Some(from), Some(to), Some(kind)) = (from, to, kind) {
        out.conns.push(ConnInfo {
            from,
            to,
            kind,
            from_output,
            to_input,
            ptr,
            from_ptr,
            to_ptr,
            from_output_ptr,
            to_input_ptr,
        });
    }
}

/// The digits of a canvas id, in order (`node-1700000000001` → `1700000000001`).
fn digits(id: &str) -> String {
    id.chars().filter(char::is_ascii_digit).collect()
}

fn canvas(root: &Map<String, Value>, out: &mut Normalized) -> Map<String, Value> {
    let mut nodes_out = Map::new();
    // canvas id → element id; element id → index of the node that has it.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut taken: HashMap<String, usize> = HashMap::new();
    let empty = Vec::new();
    let nodes = root
        .get("nodes")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, node) in nodes.iter().enumerate() {
        let ptr = push_index("/nodes", i);
        let Some(node) = node.as_object() else {
            error(
                &mut out.findings,
                ptr,
                format!("a canvas node must be an object, not {}", describe(node)),
            );
            continue;
        };
        let canvas_id = match node.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            other => {
                error(
                    &mut out.findings,
                    push(&ptr, "id"),
                    format!(
                        "canvas node {i} needs an id (a string), not {}",
                        other.map_or("nothing", describe)
                    ),
                );
                continue;
            }
        };
        let kind = element_type(node, &ptr, &canvas_id, &mut out.findings);
        let type_name = match (kind, node.get("type")) {
            (Some(k), _) => k.canonical().to_owned(),
            (None, Some(Value::String(t))) => t.clone(),
            (None, _) => "element".to_owned(),
        };
        let mut d = digits(&canvas_id);
        if d.is_empty() {
            d = (i + 1).to_string();
        }
        let id = format!("{type_name}_{d}");
        if let Some(&first) = taken.get(&id) {
            error(
                &mut out.findings,
                push(&ptr, "id"),
                format!(
                    "canvas node '{canvas_id}' becomes element id '{id}', which canvas node {first} already has"
                ),
            );
            ids.entry(canvas_id).or_insert(id);
            continue;
        }
        taken.insert(id.clone(), i);
        if ids.insert(canvas_id.clone(), id.clone()).is_some() {
            error(
                &mut out.findings,
                push(&ptr, "id"),
                format!("two canvas nodes have the id '{canvas_id}'"),
            );
        }
        let (value, info) = canvas_node(&id, node, kind, ptr, &mut out.findings);
        if kind == Some(ElementType::Start) && out.start.is_none() {
            out.start = Some(id.clone());
            out.start_ptr = info.ptr.clone();
        }
        nodes_out.insert(id, value);
        out.nodes.push(info);
    }
    if out.start.is_none() {
        out.start_ptr = "/nodes".to_owned();
        error(
            &mut out.findings,
            "/nodes".to_owned(),
            "the canvas has no node of type start".to_owned(),
        );
    }

    match root.get("edges") {
        None | Some(Value::Null) => {}
        Some(Value::Array(edges)) => {
            for (j, edge) in edges.iter().enumerate() {
                canvas_edge(edge, j, &ids, &taken, out);
            }
        }
        Some(other) => error(
            &mut out.findings,
            "/edges".to_owned(),
            format!("edges must be a list, not {}", describe(other)),
        ),
    }
    nodes_out
}

fn canvas_node(
    id: &str,
    node: &Map<String, Value>,
    kind: Option<ElementType>,
    ptr: String,
    findings: &mut Vec<Finding>,
) -> (Value, NodeInfo) {
    let mut value = Map::new();
    let type_value = match (kind, node.get("type")) {
        (Some(k), _) => Value::String(k.canonical().to_owned()),
        (None, Some(t)) => t.clone(),
        (None, None) => Value::Null,
    };
    value.insert("type".to_owned(), type_value);
    for key in CANVAS_COPIED {
        if let Some(v) = node.get(key) {
            value.insert(key.to_owned(), v.clone());
        }
    }
    let (params, params_ptr, param_ptrs) = canvas_params(node, &ptr, id, findings);
    let (inputs, input_ptrs) = canvas_schema(node, "inputs", "input_schema", &ptr, id, findings);
    let (outputs, _) = canvas_schema(node, "outputs", "output_schema", &ptr, id, findings);
    value.insert("parameters".to_owned(), Value::Object(params.clone()));
    value.insert("input_schema".to_owned(), Value::Object(inputs.clone()));
    value.insert("output_schema".to_owned(), Value::Object(outputs.clone()));
    let info = NodeInfo {
        id: id.to_owned(),
        ptr,
        kind,
        name: node.get("name").and_then(Value::as_str).map(str::to_owned),
        params,
        params_ptr,
        param_ptrs,
        inputs,
        input_ptrs,
        outputs,
    };
    (Value::Object(value), info)
}

type Params = (Map<String, Value>, String, HashMap<String, String>);

/// `parameters` as a `[{name, value}]` list (entries with an empty-string value dropped) or an
/// object; else `parametersObject`; else `{}`.
fn canvas_params(
    node: &Map<String, Value>,
    ptr: &str,
    id: &str,
    findings: &mut Vec<Finding>,
) -> Params {
    let list_ptr = push(ptr, "parameters");
    match node.get("parameters") {
        Some(Value::Array(entries)) => {
            let mut params = Map::new();
            let mut ptrs = HashMap::new();
            for (k, entry) in entries.iter().enumerate() {
                let entry_ptr = push_index(&list_ptr, k);
                let name = entry
                    .as_object()
                    .and_then(|e| e.get("name"))
                    .and_then(Value::as_str);
                let Some(name) = name else {
                    error(
                        findings,
                        entry_ptr,
                        format!(
                            "parameter {k} of element '{id}' must be an object {{\"name\": ..., \"value\": ...}}"
                        ),
                    );
                    continue;
                };
                match entry.get("value") {
                    None => {}
                    Some(Value::String(s)) if s.is_empty() => {}
                    Some(v) => {
                        params.insert(name.to_owned(), v.clone());
                        ptrs.insert(name.to_owned(), push(&entry_ptr, "value"));
                    }
                }
            }
            (params, list_ptr, ptrs)
        }
        Some(Value::Object(m)) => {
            let ptrs = m.keys().map(|k| (k.clone(), push(&list_ptr, k))).collect();
            (m.clone(), list_ptr, ptrs)
        }
        Some(Value::Null) | None => {
            let obj_ptr = push(ptr, "parametersObject");
            match node.get("parametersObject") {
                Some(Value::Object(m)) => {
                    let ptrs = m.keys().map(|k| (k.clone(), push(&obj_ptr, k))).collect();
                    (m.clone(), obj_ptr, ptrs)
                }
                None | Some(Value::Null) => (Map::new(), list_ptr, HashMap::new()),
                Some(other) => {
                    error(
                        findings,
                        obj_ptr.clone(),
                        format!(
                            "the parametersObject of element '{id}' must be an object, not {}",
                            describe(other)
                        ),
                    );
                    (Map::new(), obj_ptr, HashMap::new())
                }
            }
        }
        Some(other) => {
            error(
                findings,
                list_ptr.clone(),
                format!(
                    "the parameters of element '{id}' must be a list of {{name, value}} or an object, not {}",
                    describe(other)
                ),
            );
            (Map::new(), list_ptr, HashMap::new())
        }
    }
}

/// `inputs`/`outputs` lists → `{name: {type, description, required[, default]}}`; an already
/// normalized `input_schema`/`output_schema` object is taken as it is.
fn canvas_schema(
    node: &Map<String, Value>,
    list_key: &str,
    schema_key: &str,
    ptr: &str,
    id: &str,
    findings: &mut Vec<Finding>,
) -> (Map<String, Value>, HashMap<String, String>) {
    let list_ptr = push(ptr, list_key);
    match node.get(list_key) {
        Some(Value::Array(entries)) => {
            let mut schema = Map::new();
            let mut ptrs = HashMap::new();
            for (k, entry) in entries.iter().enumerate() {
                let entry_ptr = push_index(&list_ptr, k);
                let Some(e) = entry.as_object() else {
                    error(
                        findings,
                        entry_ptr,
                        format!(
                            "{list_key} entry {k} of element '{id}' must be an object {{\"name\": ..., \"type\": ...}}"
                        ),
                    );
                    continue;
                };
                let Some(name) = e.get("name").and_then(Value::as_str) else {
                    error(
                        findings,
                        push(&entry_ptr, "name"),
                        format!("{list_key} entry {k} of element '{id}' has no name"),
                    );
                    continue;
                };
                let mut decl = Map::new();
                decl.insert(
                    "type".to_owned(),
                    e.get("type")
                        .cloned()
                        .unwrap_or_else(|| Value::String("json".to_owned())),
                );
                decl.insert(
                    "description".to_owned(),
                    e.get("description")
                        .filter(|d| d.is_string())
                        .cloned()
                        .unwrap_or_else(|| Value::String(String::new())),
                );
                decl.insert(
                    "required".to_owned(),
                    e.get("required")
                        .filter(|r| r.is_boolean())
                        .cloned()
                        .unwrap_or(Value::Bool(true)),
                );
                if let Some(default) = e.get("default") {
                    decl.insert("default".to_owned(), default.clone());
                }
                schema.insert(name.to_owned(), Value::Object(decl));
                ptrs.insert(name.to_owned(), entry_ptr);
            }
            (schema, ptrs)
        }
        None | Some(Value::Null) => {
            let schema_ptr = push(ptr, schema_key);
            let schema = object_field(
                node,
                schema_key,
                &schema_ptr,
                &format!("the {schema_key} of element '{id}'"),
                findings,
            );
            let ptrs = schema_ptrs(&schema, &schema_ptr, list_key, findings);
            (schema, ptrs)
        }
        Some(other) => {
            error(
                findings,
                list_ptr,
                format!(
                    "the {list_key} of element '{id}' must be a list, not {}",
                    describe(other)
                ),
            );
            (Map::new(), HashMap::new())
        }
    }
}

fn canvas_edge(
    edge: &Value,
    j: usize,
    ids: &HashMap<String, String>,
    taken: &HashMap<String, usize>,
    out: &mut Normalized,
) {
    let ptr = push_index("/edges", j);
    let Some(edge) = edge.as_object() else {
        error(
            &mut out.findings,
            ptr,
            format!("an edge must be an object, not {}", describe(edge)),
        );
        return;
    };
    let findings = &mut out.findings;
    let (source, source_ptr) = opt_string(edge, &["source", "from_id"], &ptr, findings);
    let (target, target_ptr) = opt_string(edge, &["target", "to_id"], &ptr, findings);
    // An endpoint is a canvas id; an already mapped element id is accepted as well.
    let resolve = |end: Option<String>, end_ptr: &str, what: &str, f: &mut Vec<Finding>| {
        let Some(end) = end else {
            error(f, end_ptr.to_owned(), format!("edge {j} has no {what}"));
            return None;
        };
        if let Some(id) = ids.get(&end) {
            return Some(id.clone());
        }
        if taken.contains_key(&end) {
            return Some(end);
        }
        error(
            f,
            end_ptr.to_owned(),
            format!("edge {j} has {what} '{end}', which is not a node of this canvas"),
        );
        None
    };
    let from = resolve(source, &source_ptr, "source", findings);
    let to = resolve(target, &target_ptr, "target", findings);
    let (kind_text, kind_ptr) = opt_string(edge, &["connectionType"], &ptr, findings);
    let kind = match kind_text {
        None => Some(ConnKind::Both),
        Some(t) => {
            let k = ConnKind::parse(&t);
            if k.is_none() {
                error(
                    findings,
                    kind_ptr,
                    format!("connectionType '{t}' is not one of control, data, both"),
                );
            }
            k
        }
    };
    let mappings_ptr = push(&ptr, "mappings");
    let mut mappings = Vec::new();
    match edge.get("mappings") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (k, m) in list.iter().enumerate() {
                let m_ptr = push_index(&mappings_ptr, k);
                let fo = m.get("fromOutput").and_then(Value::as_str);
                let ti = m.get("toInput").and_then(Value::as_str);
                match (fo, ti) {
                    (Some(fo), Some(ti)) => mappings.push((fo.to_owned(), ti.to_owned(), m_ptr)),
                    _ => error(
                        findings,
                        m_ptr,
                        format!(
                            "mapping {k} of edge {j} must be {{\"fromOutput\": \"<output>\", \"toInput\": \"<input>\"}}"
                        ),
                    ),
                }
            }
        }
        Some(other) => error(
            findings,
            mappings_ptr.clone(),
            format!(
                "the mappings of edge {j} must be a list, not {}",
                describe(other)
            ),
        ),
    }
    let (Some(from), Some(to), Some(kind)) = (from, to, kind) else {
        return;
    };
    let conn = |kind, from_output, to_input, fo_ptr: String, ti_ptr: String| ConnInfo {
        from: from.clone(),
        to: to.clone(),
        kind,
        from_output,
        to_input,
        ptr: ptr.clone(),
        from_ptr: source_ptr.clone(),
        to_ptr: target_ptr.clone(),
        from_output_ptr: fo_ptr,
        to_input_ptr: ti_ptr,
    };
    if kind.is_control() {
        out.conns.push(conn(
            ConnKind::Control,
            None,
            None,
            mappings_ptr.clone(),
            mappings_ptr.clone(),
        ));
    }
    for (fo, ti, m_ptr) in mappings {
        out.conns.push(conn(
            ConnKind::Data,
            Some(format!("{from}:{fo}")),
            Some(format!("{to}:{ti}")),
            push(&m_ptr, "fromOutput"),
            push(&m_ptr, "toInput"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_types() {
        for (alias, canonical) in [
            ("ChatInput", "chat_input"),
            ("contexthistory", "context_history"),
            ("Context_History", "context_history"),
            ("RestAPI", "rest_api"),
            ("LLMText", "llm_text"),
            ("llmstructured", "llm_structured"),
            ("BuildTransaction", "build_transaction_json"),
            ("buildtransactionjson", "build_transaction_json"),
            ("ChatAPI", "chat_api"),
            ("End", "end"),
        ] {
            assert_eq!(
                ElementType::parse(alias).map(ElementType::canonical),
                Some(canonical),
                "{alias}"
            );
        }
        assert_eq!(ElementType::parse("Teleporter"), None);
        assert_eq!(ElementType::parse("llm text"), None);
    }
}
