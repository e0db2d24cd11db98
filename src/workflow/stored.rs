//! The two stored shapes of docs/neuralabs.md section 1 and JSON pointers into them.
//!
//! Owns: recognising which shape a stored document has (exported `{flow_definition, metadata}`,
//! the bare `{nodes{}, connections, start_element}` object, or the raw canvas
//! `{nodes[], edges[]}`) and building RFC 6901 pointers, which every finding uses to point into
//! the *stored* document, and finding keys given twice in the JSON text (which every JSON
//! parser collapses silently). Called by `normalize` and `workflow::text_findings`.

use std::cell::RefCell;
use std::collections::HashSet;

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

/// Keys that appear more than once in one object of the JSON `text`, as (pointer, key) pairs in
/// document order. JSON parsers (serde_json, Postgres JSONB) silently keep the last one, so a
/// duplicated element id loses an element; `convert` never sees it, the CLI reports it.
/// Text that is not JSON gives an empty list (the parse error is reported elsewhere).
pub fn duplicate_keys(text: &str) -> Vec<(String, String)> {
    let found = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let walk = Walk {
        ptr: String::new(),
        found: &found,
    };
    // A syntax error only ends the walk early; what was found before it stays found.
    let _ = serde::de::DeserializeSeed::deserialize(walk, &mut de);
    found.into_inner()
}

struct Walk<'a> {
    ptr: String,
    found: &'a RefCell<Vec<(String, String)>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Walk {
                ptr: push_index(&self.ptr, i),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let ptr = push(&self.ptr, &key);
            if !seen.insert(key.clone()) {
                self.found.borrow_mut().push((ptr.clone(), key));
            }
            map.next_value_seed(Walk {
                ptr,
                found: self.found,
            })?;
        }
        Ok(())
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

    #[test]
    fn duplicated_keys_are_found_with_their_pointers() {
        let text = r#"{"nodes": {"a": {"type": "start"}, "b": {}, "a": {"type": "end"}},
                       "edges": [{"x": 1, "x": 2}], "c": 1}"#;
        assert_eq!(
            duplicate_keys(text),
            vec![
                ("/nodes/a".to_owned(), "a".to_owned()),
                ("/edges/0/x".to_owned(), "x".to_owned())
            ]
        );
        assert_eq!(duplicate_keys("{\"a\": 1, \"b\": 2}"), vec![]);
        assert_eq!(duplicate_keys("not json"), vec![]);
    }
}
