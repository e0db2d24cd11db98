//! Deterministic, YAML 1.1-safe emitter for JSON values, and the YAML reader.
//!
//! Owns the engine's YAML payload format. The emitter is hand-written so that the output is
//! byte-identical for the same input (map order kept), readable (block maps and lists, literal
//! block scalars for multi-line text, Unicode kept as it is) and read back as the same JSON
//! value by YAML 1.1 readers (PyYAML `safe_load`) as well as YAML 1.2 ones. The rule for strings
//! is a whitelist: a string is written plain only when it starts with a letter, `_` or `/`, is
//! none of the YAML 1.1 special words and holds nothing a reader could take as syntax;
//! everything else is double-quoted with JSON-compatible escapes.
//!
//! Recursion depth follows the nesting of the value (serde_json's parser caps it at 128).

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// Keys longer than this (in bytes) are written as explicit `? key` entries: YAML readers only
/// accept implicit keys up to 1024 characters.
const MAX_IMPLICIT_KEY: usize = 1000;

/// Emit `value` as YAML text. Key order is the map's order; strings that a YAML 1.1 reader
/// (PyYAML `safe_load`) would read as another type are quoted.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        scalar => {
            match scalar_text(scalar) {
                Scalar::Inline(s) => out.push_str(&s),
                Scalar::Block(header, body) => {
                    out.push_str(&header);
                    write_block_body(&mut out, &body, 2);
                    return out;
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Deepest nesting [`from_yaml`] reads (flow collections `[`/`{`, and block levels: a line's
/// indentation plus its compact `- ` entries). YAML parsing is quadratic in nesting depth (a
/// 140 KB `a: [[[[…]]]]` took seconds of CPU); no workflow comes near this.
pub const MAX_YAML_DEPTH: usize = 128;

/// Parse YAML (or JSON, a YAML 1.2 subset) into a JSON value. Documents nested deeper than
/// [`MAX_YAML_DEPTH`] are refused before parsing (a linear scan).
pub fn from_yaml(text: &str) -> Result<Value, String> {
    check_depth(text)?;
    yaml_serde::from_str(text).map_err(|e| e.to_string())
}

/// A linear, conservative estimate of a document's nesting: brackets are counted wherever they
/// are (inside quotes too, which can only overestimate), block levels by indentation.
fn check_depth(text: &str) -> Result<(), String> {
    let too_deep = |line: usize| {
        Err(format!(
            "the document is nested more than {MAX_YAML_DEPTH} levels deep (line {line})"
        ))
    };
    let mut flow: usize = 0;
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        let mut dashes = 0;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            dashes += 1;
            rest = r.trim_start_matches(' ');
        }
        if indent / 2 + dashes > MAX_YAML_DEPTH {
            return too_deep(index + 1);
        }
        for b in rest.bytes() {
            match b {
                b'[' | b'{' => {
                    flow += 1;
                    if flow > MAX_YAML_DEPTH {
                        return too_deep(index + 1);
                    }
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

enum Scalar {
    /// Written on the same line as its key or dash.
    Inline(String),
    /// A literal block scalar: the header (`|`, `|-`, `|2+`, ...) and the body lines.
    Block(String, String),
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize) {
    for (key, value) in map {
        pad(out, indent);
        let key = key_text(key);
        if key.len() > MAX_IMPLICIT_KEY {
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            pad(out, indent);
            out.push(':');
        } else {
            out.push_str(&key);
            out.push(':');
        }
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                write_map(out, m, indent + 2);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                write_seq(out, a, indent + 2);
            }
            scalar => write_scalar_after(out, scalar, indent),
        }
    }
}

fn write_seq(out: &mut String, seq: &[Value], indent: usize) {
    for item in seq {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                let mut nested = String::new();
                write_map(&mut nested, m, indent + 2);
                out.push(' ');
                out.push_str(&nested[indent + 2..]);
            }
            Value::Array(a) if !a.is_empty() => {
                let mut nested = String::new();
                write_seq(&mut nested, a, indent + 2);
                out.push(' ');
                out.push_str(&nested[indent + 2..]);
            }
            scalar => write_scalar_after(out, scalar, indent),
        }
    }
}

/// A scalar after `key:` or `-` of a collection at column `indent`.
fn write_scalar_after(out: &mut String, value: &Value, indent: usize) {
    match scalar_text(value) {
        Scalar::Inline(s) => {
            out.push(' ');
            out.push_str(&s);
            out.push('\n');
        }
        Scalar::Block(header, body) => {
            out.push(' ');
            out.push_str(&header);
            write_block_body(out, &body, indent + 2);
        }
    }
}

/// Header line end plus the body lines at `indent` (empty lines stay empty).
fn write_block_body(out: &mut String, body: &str, indent: usize) {
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
}

fn scalar_text(value: &Value) -> Scalar {
    match value {
        Value::Null => Scalar::Inline("null".to_owned()),
        Value::Bool(b) => Scalar::Inline(b.to_string()),
        Value::Number(n) => Scalar::Inline(number_text(n)),
        Value::String(s) => string_scalar(s),
        Value::Array(_) => Scalar::Inline("[]".to_owned()),
        Value::Object(_) => Scalar::Inline("{}".to_owned()),
    }
}

/// Integers as they are; floats always with a dot and a signed exponent (`1.0`, `1.5e+300`),
/// the only float syntax YAML 1.1 readers accept.
fn number_text(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let Some(f) = n.as_f64() else {
        return n.to_string();
    };
    float_text(f)
}

fn float_text(f: f64) -> String {
    if !f.is_finite() {
        // A JSON value never holds these; written as YAML's spellings all the same.
        return if f.is_nan() {
            ".nan".to_owned()
        } else if f > 0.0 {
            ".inf".to_owned()
        } else {
            "-.inf".to_owned()
        };
    }
    let text = format!("{f:?}");
    let (mantissa, exponent) = match text.split_once('e') {
        Some((m, e)) => (m.to_owned(), Some(e.to_owned())),
        None => (text, None),
    };
    let mut out = mantissa;
    if !out.contains('.') {
        out.push_str(".0");
    }
    if let Some(e) = exponent {
        out.push('e');
        if !e.starts_with('-') {
            out.push('+');
        }
        out.push_str(&e);
    }
    out
}

fn key_text(key: &str) -> String {
    if is_plain_safe(key) {
        key.to_owned()
    } else {
        quoted(key)
    }
}

fn string_scalar(s: &str) -> Scalar {
    if is_plain_safe(s) {
        return Scalar::Inline(s.to_owned());
    }
    if let Some((header, body)) = block(s) {
        return Scalar::Block(header, body);
    }
    Scalar::Inline(quoted(s))
}

/// Words a YAML 1.1 (or 1.2) reader resolves to a bool, null or special float when plain.
const SPECIAL_WORDS: [&str; 13] = [
    "yes", "no", "on", "off", "y", "n", "true", "false", "null", "inf", "infinity", "nan", "none",
];

/// Characters a YAML reader accepts literally in a document (the c-printable set of YAML 1.1
/// as PyYAML and libyaml check it), minus the BOM and the non-ASCII line breaks.
fn printable(c: char) -> bool {
    matches!(c,
        '\n' | ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
        && !matches!(c, '\u{FEFF}' | '\u{2028}' | '\u{2029}')
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_alphabetic() || first == '_' || first == '/') {
        return false;
    }
    if SPECIAL_WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return false;
    }
    if s.ends_with(' ') || s.ends_with(':') || s.contains(": ") || s.contains(" #") {
        return false;
    }
    s.chars()
        .all(|c| c != '\n' && printable(c) && (c == ' ' || !c.is_whitespace()))
}

/// A literal block scalar for multi-line text that one can carry exactly: no tabs, no `\r`,
/// nothing outside the printable set, no trailing spaces on a line, and at least one
/// non-empty line. The indentation indicator is added when the first non-empty line starts
/// with a space (a reader would otherwise take that space as indentation).
fn block(s: &str) -> Option<(String, String)> {
    if !s.contains('\n') || s.chars().all(|c| c == '\n') {
        return None;
    }
    if !s
        .chars()
        .all(|c| printable(c) && (c == ' ' || c == '\n' || !c.is_whitespace()))
    {
        return None;
    }
    if s.split('\n').any(|line| line.ends_with(' ')) {
        return None;
    }
    let (body, chomp) = match s.strip_suffix('\n') {
        None => (s, "-"),
        Some(rest) if rest.ends_with('\n') => (rest, "+"),
        Some(rest) => (rest, ""),
    };
    let first = body.split('\n').find(|l| !l.is_empty()).unwrap_or("");
    let indicator = if first.starts_with(' ') { "2" } else { "" };
    Some((format!("|{indicator}{chomp}"), body.to_owned()))
}

/// A double-quoted scalar with JSON-compatible escapes; other characters kept as they are.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if printable(c) => out.push(c),
            c => {
                // Only BMP characters fail `printable`, so four hex digits always suffice.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn documents_nested_too_deep_are_refused_before_parsing() {
        let deep_flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = from_yaml(&deep_flow).unwrap_err();
        assert!(err.contains("nested more than 128"), "{err}");
        let deep_block = format!("{}x\n", "- ".repeat(MAX_YAML_DEPTH + 1));
        assert!(from_yaml(&deep_block).unwrap_err().contains("line 1"));
        // As deep as JSON can be (serde_json stops at 128) still reads back.
        let mut value = serde_json::json!("leaf");
        for i in 0..100 {
            value = if i % 2 == 0 {
                serde_json::json!([value])
            } else {
                serde_json::json!({ "k": value })
            };
        }
        assert_eq!(from_yaml(&to_yaml(&value)).unwrap(), value);
        assert_eq!(from_yaml(&value.to_string()).unwrap(), value);
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_scalars_that_would_change_type_are_quoted() {
        for s in [
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "N",
            "true",
            "False",
            "~",
            "null",
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
            "",
            " a",
            "a ",
            "a: b",
            "a #b",
            "- a",
            "? a",
            ": a",
            ",a",
            "[a",
            "]a",
            "{a",
            "}a",
            "#a",
            "&a",
            "*a",
            "!a",
            "|a",
            ">a",
            "'a",
            "\"a",
            "%a",
            "@a",
            "`a",
            "<<",
            "=",
            "2001-12-14",
            "a:",
        ] {
            let text = to_yaml(&json!(s));
            assert!(text.starts_with('"'), "{s:?} was written as {text}");
        }
        assert_eq!(to_yaml(&json!("hello world")), "hello world\n");
        assert_eq!(to_yaml(&json!("héllo ✓")), "héllo ✓\n");
    }

    #[test]
    fn floats_keep_a_dot_and_a_signed_exponent() {
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(0.7), "0.7");
        assert_eq!(float_text(1e20), "1.0e+20");
        assert_eq!(float_text(-2.5e-7), "-2.5e-7");
        assert_eq!(to_yaml(&json!({"a": 1, "b": 1.0})), "a: 1\nb: 1.0\n");
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let v = json!({"p": "Context:\n{context}\n\nUser: {prompt}", "q": " indented\nnext\n"});
        assert_eq!(
            to_yaml(&v),
            "p: |-\n  Context:\n  {context}\n\n  User: {prompt}\nq: |2\n   indented\n  next\n"
        );
        assert_eq!(to_yaml(&json!(["a\n\n"])), "- |+\n  a\n\n");
        // Characters a block cannot carry fall back to double quotes.
        assert_eq!(to_yaml(&json!("a\r\nb")), "\"a\\r\\nb\"\n");
        assert_eq!(to_yaml(&json!("a \nb")), "\"a \\nb\"\n");
    }

    #[test]
    fn collections_are_block_style() {
        let v = json!({"m": {}, "l": [], "x": [{"a": 1, "b": [1, [2, 3]]}, []]});
        assert_eq!(
            to_yaml(&v),
            "m: {}\nl: []\nx:\n  - a: 1\n    b:\n      - 1\n      - - 2\n        - 3\n  - []\n"
        );
    }
}
