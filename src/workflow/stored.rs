//! The two stored shapes of PROTOCOL.md section 1 and JSON pointers into them.
//!
//! Owns: recognising which shape a stored document has (exported `{flow_definition, metadata}`,
//! the bare `{nodes{}, connections, start_element}` object, or the raw canvas
//! `{nodes[], edges[]}`) and building RFC 6901 pointers, which every finding uses to point into
//! the *stored* document. Called by `normalize`.

use serde_json::{Map, Value};

/// Which stored shape a document has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"flow_definition": {nodes{}, connections[], start_element}, "metadata"?}`.
    Exported,
    /// `{nodes{}, connections[], start_element}` without the `flow_definition` wrapper.
    Bare,
    /// `{"nodes": [...], "edges": [...]}` as the canvas saves it.
    Canvas,
}

/// A recognised stored document: its shape, the object holding the flow and the pointer to it.
#[derive(Debug)]
pub struct Located<'a> {
    pub shape: Shape,
    /// The object holding `nodes` (the `flow_definition` object, or the document itself).
    pub flow: &'a Map<String, Value>,
    /// Pointer to `flow` (`/flow_definition` or the empty root pointer).
    pub base: String,
}

/// Why a document is not a stored workflow at all (pointer, sentence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAWorkflow {
    pub pointer: String,
    pub message: String,
}

/// Recognise the shape of a stored document.
pub fn locate(stored: &Value) -> Result<Located<'_>, NotAWorkflow> {
    let Some(root) = stored.as_object() else {
        return Err(NotAWorkflow {
            pointer: String::new(),
            message: format!(
                "the workflow must be a JSON object, not {}",
                describe(stored)
            ),
        });
    };
    if let Some(fd) = root.get("flow_definition") {
        return match fd.as_object() {
            Some(flow) => Ok(Located {
                shape: Shape::Exported,
                flow,
                base: "/flow_definition".to_owned(),
            }),
            None => Err(NotAWorkflow {
                pointer: "/flow_definition".to_owned(),
                message: format!("flow_definition must be an object, not {}", describe(fd)),
            }),
        };
    }
    match root.get("nodes") {
        Some(Value::Array(_)) => Ok(Located {
            shape: Shape::Canvas,
            flow: root,
            base: String::new(),
        }),
        Some(Value::Object(_)) => Ok(Located {
            shape: Shape::Bare,
            flow: root,
            base: String::new(),
        }),
        Some(other) => Err(NotAWorkflow {
            pointer: "/nodes".to_owned(),
            message: format!(
                "nodes must be an object of elements (or a list of canvas nodes), not {}",
                describe(other)
            ),
        }),
        None => Err(NotAWorkflow {
            pointer: String::new(),
            message: "this is not a stored workflow: expected {\"flow_definition\": {...}}, \
                      a flow definition {nodes, connections, start_element} or a canvas \
                      {nodes: [...], edges: [...]}"
                .to_owned(),
        }),
    }
}

/// Append one reference token to a JSON pointer, escaping `~` and `/` (RFC 6901).
pub fn push(base: &str, token: &str) -> String {
    let mut out = String::with_capacity(base.len() + token.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// Append a list index to a JSON pointer.
pub fn push_index(base: &str, index: usize) -> String {
    format!("{base}/{index}")
}

/// A short description of a JSON value's kind, for messages ("a string", "a list", ...).
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(push("/nodes", "a/b~c"), "/nodes/a~1b~0c");
        assert_eq!(push_index("/edges", 3), "/edges/3");
    }

    #[test]
    fn shapes_are_recognised() {
        let exported = json!({"flow_definition": {"nodes": {}}});
        assert_eq!(
            locate(&exported).map(|l| l.shape).ok(),
            Some(Shape::Exported)
        );
        let bare = json!({"nodes": {}, "connections": []});
        assert_eq!(locate(&bare).map(|l| l.shape).ok(), Some(Shape::Bare));
        let canvas = json!({"nodes": [], "edges": []});
        assert_eq!(locate(&canvas).map(|l| l.shape).ok(), Some(Shape::Canvas));
        assert!(locate(&json!([1])).is_err());
        assert!(locate(&json!({"flow_definition": 3})).is_err());
    }
}
