//! The scripted model behind `llm_text` and `llm_structured`: deterministic, offline, streaming.
//! (With `--llm-base-url`, `llm_text` streams from a real endpoint instead: [`super::openai`];
//! [`render_prompt`] builds the prompt for both.)
//!
//! - [`render_prompt`] fills a `wrapper_prompt` template: `{prompt}`, `{context}` and `{<input>}`
//!   for every input name; other braces stay as written. Without a template the prompt is the
//!   `prompt` input. Hidden instructions (`llm_hidden_prompt`) are never rendered or sent.
//! - [`reply`] derives the answer from the rendered prompt: `You said: <prompt>` plus a fixed
//!   tail; [`chunks`] splits it at word boundaries into exactly `n` pieces whose concatenation is
//!   the reply (filler words are added when the reply has fewer than `n` words).
//! - [`structured`] returns one value per `output_schema` key, of the declared type: strings are
//!   derived from the prompt (`urgency` is `high` when the prompt mentions urgency, else `low`;
//!   `primary_intent` is `question` when the prompt has a `?`, else `statement`), ints are the
//!   prompt's word count, floats `0.9`, bools `true`, lists `[]`, json `{}`.

use serde_json::{Map, Value};

/// The text of an input value: strings as-is, anything else as compact JSON.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The text an input contributes to a template: lists (a conversation history) one item a line.
fn template_text(value: &Value) -> String {
    match value {
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join("\n"),
        other => text_of(other),
    }
}

/// Fill the `wrapper_prompt` template (see the module docs).
pub fn render_prompt(template: Option<&str>, inputs: &Map<String, Value>) -> String {
    let prompt = inputs.get("prompt").map(text_of).unwrap_or_default();
    let Some(template) = template.filter(|t| !t.is_empty()) else {
        return prompt;
    };
    let lookup = |name: &str| -> Option<String> {
        match inputs.get(name) {
            Some(v) => Some(template_text(v)),
            None if name == "prompt" || name == "context" => Some(String::new()),
            None => None,
        }
    };
    let mut out = String::with_capacity(template.len() + prompt.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if after[..close]
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_')
                    && !after[..close].is_empty() =>
            {
                match lookup(&after[..close]) {
                    Some(text) => out.push_str(&text),
                    None => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// How many words of the prompt the scripted reply repeats.
const REPLY_ECHO_WORDS: usize = 60;
const TAIL: &str = "This answer comes from the flowgate scripted model.";
const FILLER: &[&str] = &["and", "that", "is", "all", "for", "now"];

/// The scripted answer to a rendered prompt.
pub fn reply(prompt: &str) -> String {
    let said = prompt
        .split_whitespace()
        .take(REPLY_ECHO_WORDS)
        .collect::<Vec<_>>()
        .join(" ");
    let stop = if said.ends_with(['.', '!', '?']) {
        ""
    } else {
        "."
    };
    format!("You said: {said}{stop} {TAIL}")
}

/// Split `text` into exactly `n` (at least 1) chunks at word boundaries; their concatenation is
/// `text` with filler words appended when it has fewer than `n` words.
pub fn chunks(text: &str, n: usize) -> Vec<String> {
    let n = n.max(1);
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    while words.len() < n {
        words.push(FILLER[i % FILLER.len()]);
        i += 1;
    }
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let (from, to) = (k * words.len() / n, (k + 1) * words.len() / n);
        let mut piece = words[from..to].join(" ");
        if k > 0 {
            piece.insert(0, ' ');
        }
        out.push(piece);
    }
    out
}

/// Scripted structured output for `output_schema` (the `structured_output` key is skipped: the
/// element adds it as the JSON text of the others).
pub fn structured(schema: &Map<String, Value>, prompt: &str) -> Map<String, Value> {
    let lower = prompt.to_lowercase();
    let mut out = Map::new();
    for (name, spec) in schema {
        if name == "structured_output" {
            continue;
        }
        let ty = spec.get("type").and_then(Value::as_str).unwrap_or("string");
        let first = ty.split('|').next().unwrap_or("string").trim();
        let value = match first {
            "int" | "integer" => Value::from(prompt.split_whitespace().count()),
            "float" | "number" => Value::from(0.9),
            "bool" | "boolean" => Value::Bool(true),
            "list" | "array" => Value::Array(Vec::new()),
            "json" | "dict" | "object" => Value::Object(Map::new()),
            _ => Value::String(match name.as_str() {
                "urgency" => {
                    let urgent = ["urgent", "asap", "emergency", "immediately"]
                        .iter()
                        .any(|w| lower.contains(w));
                    if urgent { "high" } else { "low" }.to_owned()
                }
                "primary_intent" | "intent" => if prompt.contains('?') {
                    "question"
                } else {
                    "statement"
                }
                .to_owned(),
                _ => {
                    let words: Vec<&str> = prompt.split_whitespace().take(8).collect();
                    format!("{name}: {}", words.join(" "))
                }
            }),
        };
        out.insert(name.clone(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_fills_known_names_and_keeps_unknown_braces() {
        let inputs = json!({"prompt": "hi", "primary_intent": "question"});
        let t = "Reply ({primary_intent}): {prompt} {context}{unknown} {not json}";
        assert_eq!(
            render_prompt(Some(t), inputs.as_object().unwrap()),
            "Reply (question): hi {unknown} {not json}"
        );
        assert_eq!(render_prompt(None, inputs.as_object().unwrap()), "hi");
        let history = json!({"prompt": "q", "context": ["user: a", "assistant: b"]});
        assert_eq!(
            render_prompt(Some("{context}\n{prompt}"), history.as_object().unwrap()),
            "user: a\nassistant: b\nq"
        );
    }

    #[test]
    fn chunks_are_exactly_n_and_concatenate_to_the_text() {
        let text = reply("hello there");
        for n in [1, 3, 5, 40] {
            let c = chunks(&text, n);
            assert_eq!(c.len(), n);
            assert!(c.concat().starts_with(&text), "{n}: {}", c.concat());
        }
        assert_eq!(chunks(&text, 3).concat(), text);
    }

    #[test]
    fn structured_values_have_the_declared_types() {
        let schema = json!({"urgency": {"type": "string"}, "confidence": {"type": "float"},
                            "n": {"type": "int"}, "structured_output": {"type": "string"}});
        let out = structured(schema.as_object().unwrap(), "urgent: server down");
        assert_eq!(out["urgency"], "high");
        assert_eq!(out["confidence"], 0.9);
        assert_eq!(out["n"], 3);
        assert!(!out.contains_key("structured_output"));
    }
}
