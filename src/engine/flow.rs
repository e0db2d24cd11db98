//! The flow definition as the engine runs it: parsed from handshake frame 2 (YAML or JSON) into
//! [`Flow`], plus the value helpers the executor and elements share (input type checks and the
//! Python-style previews the original engine puts into its events).
//!
//! Parsing is lenient about what the engine ignores (canvas extras) and strict about what it
//! needs: `nodes` (an object), `connections` (a list), `start_element` (a node id).

use serde_json::{Map, Value};

/// How a connection takes part in the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Control,
    Data,
    Both,
}

impl ConnKind {
    pub fn is_control(self) -> bool {
        matches!(self, ConnKind::Control | ConnKind::Both)
    }
    pub fn is_data(self) -> bool {
        matches!(self, ConnKind::Data | ConnKind::Both)
    }
}

/// One connection of the flow.
#[derive(Debug, Clone)]
pub struct Connection {
    pub from: String,
    pub to: String,
    pub kind: ConnKind,
    /// `(element id, output name)` of `from_output`.
    pub from_output: Option<(String, String)>,
    /// `(element id, input name)` of `to_input`.
    pub to_input: Option<(String, String)>,
}

/// One element of the flow.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// The type as written in the flow (reported in events).
    pub type_name: String,
    /// The canonical type (`None` for an unknown type).
    pub kind: Option<&'static str>,
    pub name: String,
    pub processing_message: Option<String>,
    pub parameters: Map<String, Value>,
    pub input_schema: Map<String, Value>,
    pub output_schema: Map<String, Value>,
}

/// A parsed flow definition.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Elements in definition order.
    pub nodes: Vec<Node>,
    pub connections: Vec<Connection>,
    pub start_element: String,
}

/// The canonical name of an element type, or `None` when the engine does not know it. The
/// spelling rules (case-insensitive, `_` ignored, aliases) are the workflow module's, so the
/// gateway and the engine can never disagree on them.
pub fn canonical_type(name: &str) -> Option<&'static str> {
    crate::workflow::normalize::ElementType::parse(name).map(|t| t.canonical())
}

fn split_ref(s: &str) -> Option<(String, String)> {
    let (id, name) = s.split_once(':')?;
    Some((id.to_owned(), name.to_owned()))
}

fn str_field<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))
}

impl Flow {
    /// Parse the flow definition object of handshake frame 2.
    pub fn parse(value: &Value, max_elements: usize) -> Result<Flow, String> {
        let obj = value
            .as_object()
            .ok_or("the flow definition is not an object")?;
        let raw_nodes = obj
            .get("nodes")
            .and_then(Value::as_object)
            .ok_or("the flow definition has no `nodes` object")?;
        if raw_nodes.len() > max_elements {
            return Err(format!(
                "the flow has {} elements, more than this engine's limit of {max_elements}",
                raw_nodes.len()
            ));
        }
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        for (id, raw) in raw_nodes {
            let n = raw
                .as_object()
                .ok_or_else(|| format!("element `{id}` is not an object"))?;
            let type_name = str_field(n, &["type"])
                .ok_or_else(|| format!("element `{id}` has no `type`"))?
                .to_owned();
            let obj_field = |k: &str| {
                n.get(k)
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default()
            };
            let parameters = match n.get("parameters").and_then(Value::as_object) {
                Some(p) => p.clone(),
                None => obj_field("parametersObject"),
            };
            nodes.push(Node {
                id: id.clone(),
                kind: canonical_type(&type_name),
                name: str_field(n, &["name"]).unwrap_or(id).to_owned(),
                processing_message: str_field(n, &["processing_message", "processingMessage"])
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned),
                type_name,
                parameters,
                input_schema: obj_field("input_schema"),
                output_schema: obj_field("output_schema"),
            });
        }
        let mut connections = Vec::new();
        let raw_conns = match obj.get("connections") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err("`connections` is not a list".into()),
        };
        for (i, raw) in raw_conns.iter().enumerate() {
            let c = raw
                .as_object()
                .ok_or_else(|| format!("connection {i} is not an object"))?;
            let from = str_field(c, &["from_id", "source"])
                .ok_or_else(|| format!("connection {i} has no `from_id`"))?;
            let to = str_field(c, &["to_id", "target"])
                .ok_or_else(|| format!("connection {i} has no `to_id`"))?;
            for end in [from, to] {
                if !raw_nodes.contains_key(end) {
                    return Err(format!("connection {i} refers to unknown element `{end}`"));
                }
            }
            let kind = match str_field(c, &["connection_type", "connectionType"]).unwrap_or("both")
            {
                "control" => ConnKind::Control,
                "data" => ConnKind::Data,
                "both" => ConnKind::Both,
                other => return Err(format!("connection {i} has unknown type `{other}`")),
            };
            connections.push(Connection {
                from: from.to_owned(),
                to: to.to_owned(),
                kind,
                from_output: str_field(c, &["from_output"]).and_then(split_ref),
                to_input: str_field(c, &["to_input"]).and_then(split_ref),
            });
        }
        let start_element = str_field(obj, &["start_element"])
            .ok_or("the flow definition has no `start_element`")?
            .to_owned();
        if !raw_nodes.contains_key(&start_element) {
            return Err(format!(
                "start_element `{start_element}` is not an element of the flow"
            ));
        }
        Ok(Flow {
            nodes,
            connections,
            start_element,
        })
    }

    /// The element with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Does `value` match a schema type such as `string`, `int|float` or `json`? Unknown type names
/// accept anything (the schema is the flow author's documentation, not the engine's).
pub fn matches_type(value: &Value, ty: &str) -> bool {
    ty.split('|').map(str::trim).any(|t| match t {
        "string" | "str" => value.is_string(),
        "int" | "integer" => value.is_i64() || value.is_u64(),
        "float" | "number" => value.is_number(),
        "bool" | "boolean" => value.is_boolean(),
        "list" | "array" => value.is_array(),
        "json" | "dict" | "object" | "any" => true,
        _ => true,
    })
}

/// Python's `str()` of a JSON value (strings bare), as the original engine's previews show it.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr()` of a JSON value: `{'a': 1, 'b': [True, None]}`.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\'' => out.push_str("\\'"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('\'');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(&Value::String(k.clone()), out);
                out.push_str(": ");
                write_repr(v, out);
            }
            out.push('}');
        }
    }
}

/// Cut a preview to `max` characters (adding `...`).
pub fn preview(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        text
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push_str("...");
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aliases_map_to_canonical_types_and_unknown_types_stay_unknown() {
        assert_eq!(canonical_type("ChatInput"), Some("chat_input"));
        assert_eq!(canonical_type("LLMText"), Some("llm_text"));
        assert_eq!(
            canonical_type("BuildTransaction"),
            Some("build_transaction_json")
        );
        assert_eq!(canonical_type("rest_api"), Some("rest_api"));
        assert_eq!(canonical_type("teleport"), None);
    }

    #[test]
    fn structural_problems_are_reported_with_the_element_or_connection() {
        let ok =
            json!({"nodes": {"s": {"type": "start"}}, "connections": [], "start_element": "s"});
        let flow = Flow::parse(&ok, 10).unwrap();
        assert_eq!(flow.nodes[0].name, "s");
        let no_start = json!({"nodes": {"s": {"type": "start"}}, "start_element": "x"});
        assert!(Flow::parse(&no_start, 10).unwrap_err().contains("`x`"));
        let dangling = json!({"nodes": {"s": {"type": "start"}},
                              "connections": [{"from_id": "s", "to_id": "end_9"}], "start_element": "s"});
        assert!(Flow::parse(&dangling, 10).unwrap_err().contains("end_9"));
        assert!(Flow::parse(&ok, 0).unwrap_err().contains("limit"));
        let untyped = json!({"nodes": {"s": {}}, "start_element": "s"});
        assert!(Flow::parse(&untyped, 10).unwrap_err().contains("no `type`"));
    }

    #[test]
    fn repr_matches_python() {
        let v = json!({"data1": "You asked: ", "data2": "canvas q", "x": [true, null, 1]});
        assert_eq!(
            py_repr(&v),
            "{'data1': 'You asked: ', 'data2': 'canvas q', 'x': [True, None, 1]}"
        );
        assert_eq!(py_str(&json!("canvas q")), "canvas q");
    }

    #[test]
    fn union_types_accept_each_member() {
        assert!(matches_type(&json!(3), "string|int"));
        assert!(matches_type(&json!("a"), "string|int"));
        assert!(!matches_type(&json!({"a": 1}), "string"));
        assert!(matches_type(&json!(1), "float"));
        assert!(!matches_type(&json!(1.5), "int"));
    }

    #[test]
    fn an_alias_bomb_in_the_flow_frame_is_refused_quickly() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let parsed = crate::workflow::yaml::from_yaml(&doc);
        assert!(parsed.is_err(), "10^10 nodes were expanded");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
