//! The element library: what each element type does with its inputs and parameters, and the
//! element-specific events it sends (docs/neuralabs.md section 4).
//!
//! Implemented: `start`, `end`, `chat_input`, `context_history`, `constants`, `datablock`,
//! `metadata`, `selector`, `merger`, `random_generator`, `time`, `llm_text`, `llm_structured`,
//! `case`, `flow_select`, `rest_api`. `custom` is refused ("custom code is disabled on this
//! engine"); `read_blockchain_data`, `build_transaction_json`, `chat_api` and unknown types are
//! element errors naming the type.
//!
//! `llm_text` streams from the scripted model ([`super::llm`]) or, when `--llm-base-url` is set,
//! from an OpenAI-compatible endpoint ([`super::openai`]); both send the same `llm_prompt` and
//! `llm_chunk` events and output the concatenated chunks as `llm_output`. `llm_structured`
//! always uses the scripted model.
//!
//! Branch rule of `case` and `flow_select`: the branch keys are the case ids (in `cases` order) or
//! the names in `flows_to_switch`. If any control child's element id or name equals a key, a
//! child runs when its id or name equals the chosen key (or `default` when no case matched).
//! Otherwise children are taken in connection order, one per key: the i-th child belongs to the
//! i-th key and an extra child after the last key is the default branch. Unchosen children never
//! run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value, json};

use super::flow::{Node, preview, py_repr, py_str};
use super::run::{Emitter, Failure, Outcome, Route, RunEnv};
use super::{llm, openai, rest};

type ElementResult = Result<Outcome, Failure>;

fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Element(message.into()))
}

/// Length of the `*_preview` fields of element events (display only).
const PREVIEW_CHARS: usize = 200;

/// Longest string a `random_generator` makes (its `length` parameter is capped here).
const MAX_RANDOM_STRING: u64 = 4096;

/// The `processing` message of an element, or `None` for types that send their own event
/// instead (`merger`, `selector`) unless the flow sets a message.
pub fn processing_message(node: &Node) -> Option<String> {
    if let Some(m) = &node.processing_message {
        return Some(m.clone());
    }
    let default = match node.kind? {
        "start" => "Starting flow execution...",
        "end" => "Finalizing flow execution...",
        "chat_input" => "Capturing user input...",
        "context_history" => "Loading conversation history...",
        "constants" => "Loading constants...",
        "datablock" => "Loading data block...",
        "metadata" => "Collecting metadata...",
        "rest_api" => "Calling REST API...",
        "random_generator" => "Generating random value...",
        "time" => "Getting current time...",
        "llm_text" => "Generating text...",
        "llm_structured" => "Generating structured output...",
        "case" => "Evaluating cases...",
        "flow_select" => "Selecting flow...",
        _ => return None,
    };
    Some(default.to_owned())
}

fn param<'a>(node: &'a Node, key: &str) -> Option<&'a Value> {
    node.parameters.get(key).filter(|v| !v.is_null())
}

fn param_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    param(node, key).and_then(Value::as_str)
}

fn param_u64(node: &Node, key: &str, default: u64) -> u64 {
    param(node, key).and_then(Value::as_u64).unwrap_or(default)
}

fn param_f64(node: &Node, key: &str, default: f64) -> f64 {
    param(node, key).and_then(Value::as_f64).unwrap_or(default)
}

fn param_bool(node: &Node, key: &str, default: bool) -> bool {
    param(node, key).and_then(Value::as_bool).unwrap_or(default)
}

/// JSON text inside a string input is read as JSON (`structured_output` is JSON text).
fn as_json(value: Value) -> Value {
    match &value {
        Value::String(s) => serde_json::from_str(s).unwrap_or(value),
        _ => value,
    }
}

/// Run one element.
pub async fn run(
    node: &Node,
    inputs: Map<String, Value>,
    env: &RunEnv,
    emitter: &Emitter,
) -> ElementResult {
    let Some(kind) = node.kind else {
        return fail(format!(
            "Unknown element type '{}' (element '{}'): this engine cannot run it",
            node.type_name, node.name
        ));
    };
    match kind {
        "start" => Ok(Outcome::outputs(inputs)),
        "end" => end(node, inputs, emitter).await,
        "chat_input" => chat_input(node, inputs, emitter).await,
        "context_history" => context_history(node, inputs, emitter).await,
        "constants" => constants(node, emitter).await,
        "datablock" => datablock(node, emitter).await,
        "metadata" => metadata(env, emitter),
        "selector" => selector(node, inputs, emitter).await,
        "merger" => merger(inputs, node, emitter).await,
        "random_generator" => random_generator(node, env, emitter).await,
        "time" => time(node, env, emitter).await,
        "llm_text" => llm_text(node, inputs, env, emitter).await,
        "llm_structured" => llm_structured(node, inputs, env, emitter).await,
        "case" => case(node, inputs),
        "flow_select" => flow_select(node, inputs),
        "rest_api" => rest::call(node, inputs, env, emitter).await,
        "custom" => fail("custom code is disabled on this engine"),
        other => fail(format!(
            "Element type '{other}' is not implemented by this engine"
        )),
    }
}

async fn end(node: &Node, inputs: Map<String, Value>, emitter: &Emitter) -> ElementResult {
    let text = inputs.get("text_input").cloned().unwrap_or(Value::Null);
    let tx = inputs
        .get("proposed_transaction")
        .cloned()
        .unwrap_or(Value::Null);
    let data = json!({
        "flow_id": emitter.flow_id(),
        "element_id": node.id,
        "text_output": text,
        "proposed_transaction": tx,
    });
    emitter.emit("final_output", data).await?;
    let mut outputs = Map::new();
    outputs.insert("text_output".into(), text);
    outputs.insert("proposed_transaction".into(), tx);
    Ok(Outcome::outputs(outputs))
}

async fn chat_input(node: &Node, inputs: Map<String, Value>, emitter: &Emitter) -> ElementResult {
    let text = match inputs.get("chat_input") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let required = param_bool(node, "required", true);
    let min = param_u64(node, "min_length", 1) as usize;
    let max = param_u64(node, "max_length", 1000) as usize;
    let len = text.chars().count();
    let problem = if text.trim().is_empty() {
        required.then(|| "Chat input is required but was empty".to_owned())
    } else if len < min {
        Some(format!(
            "Chat input is shorter than the minimum of {min} characters"
        ))
    } else if len > max {
        Some(format!(
            "Chat input is longer than the maximum of {max} characters ({len})"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        return fail(format!("Chat input validation failed: {problem}"));
    }
    let data = json!({"element_id": node.id, "chat_input": text, "validation_passed": true});
    emitter.emit("chat_input", data).await?;
    let mut outputs = Map::new();
    outputs.insert("chat_input".into(), text.into());
    Ok(Outcome::outputs(outputs))
}

async fn context_history(
    node: &Node,
    inputs: Map<String, Value>,
    emitter: &Emitter,
) -> ElementResult {
    let history = match inputs.get("context_history").cloned().map(as_json) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return fail("context_history must be a list of messages"),
    };
    let max = param_u64(node, "max_messages", 10) as usize;
    let format = param_str(node, "format").unwrap_or("full");
    let recent = &history[history.len().saturating_sub(max)..];
    let field = |m: &Value, k: &str| m.get(k).cloned().unwrap_or(Value::Null);
    let shaped: Vec<Value> = match format {
        "full" => recent.to_vec(),
        "text_only" => recent
            .iter()
            .map(|m| match m {
                Value::String(s) => Value::String(s.clone()),
                m => {
                    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                    let content = m.get("content").map(llm::text_of).unwrap_or_default();
                    Value::String(format!("{role}: {content}"))
                }
            })
            .collect(),
        "structured" => recent
            .iter()
            .map(|m| json!({"role": field(m, "role"), "content": field(m, "content")}))
            .collect(),
        other => {
            return fail(format!(
                "Unknown history format '{other}' (expected full, text_only or structured)"
            ));
        }
    };
    let data = json!({"element_id": node.id, "message_count": shaped.len(), "format": format});
    emitter.emit("context_history", data).await?;
    let mut outputs = Map::new();
    outputs.insert("history".into(), Value::Array(shaped));
    Ok(Outcome::outputs(outputs))
}

async fn constants(node: &Node, emitter: &Emitter) -> ElementResult {
    let keys: Vec<&String> = node.parameters.keys().collect();
    let data = json!({
        "element_id": node.id,
        "constants": node.parameters,
        "count": keys.len(),
        "keys": keys,
    });
    emitter.emit("constants", data).await?;
    Ok(Outcome::outputs(node.parameters.clone()))
}

async fn datablock(node: &Node, emitter: &Emitter) -> ElementResult {
    let raw = param(node, "data").cloned().unwrap_or(Value::Null);
    let format = param_str(node, "format").unwrap_or("json");
    let data = match (format, raw) {
        ("json", Value::String(s)) => match serde_json::from_str(&s) {
            Ok(v) => v,
            Err(e) => return fail(format!("Data block is not valid JSON: {e}")),
        },
        ("text" | "string", v) => Value::String(llm::text_of(&v)),
        (_, v) => v,
    };
    let event = json!({
        "element_id": node.id,
        "format": format,
        "data_preview": preview(py_str(&data), PREVIEW_CHARS),
    });
    emitter.emit("datablock", event).await?;
    let mut outputs = Map::new();
    outputs.insert("data".into(), data);
    Ok(Outcome::outputs(outputs))
}

fn metadata(env: &RunEnv, emitter: &Emitter) -> ElementResult {
    let mut outputs = Map::new();
    for key in ["user_id", "agent_id", "run_id", "version"] {
        outputs.insert(key.into(), env.run.get(key).cloned().unwrap_or(Value::Null));
    }
    outputs.insert("flow_id".into(), emitter.flow_id().into());
    Ok(Outcome::outputs(outputs))
}

/// Follow a dot path with `[i]` indexes (`a.b[0].c`).
fn select_path(data: &Value, path: &str) -> Option<Value> {
    let mut current = data;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, mut rest) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            current = match current {
                Value::Object(m) => m.get(name)?,
                Value::Array(a) => a.get(name.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let close = stripped.find(']')?;
            let index: usize = stripped[..close].trim().parse().ok()?;
            current = current.as_array()?.get(index)?;
            rest = &stripped[close + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(current.clone())
}

async fn selector(node: &Node, inputs: Map<String, Value>, emitter: &Emitter) -> ElementResult {
    let data = inputs
        .get("data")
        .cloned()
        .map(as_json)
        .unwrap_or(Value::Null);
    let key = param_str(node, "key").unwrap_or("");
    let found_value = select_path(&data, key);
    let found = found_value.is_some();
    let value =
        found_value.unwrap_or_else(|| param(node, "default_value").cloned().unwrap_or(Value::Null));
    let path_used = if found { Value::from(key) } else { Value::Null };
    let event = json!({
        "element_id": node.id,
        "paths_tried": [key],
        "path_used": path_used,
        "found": found,
        "selected_value_preview": preview(py_str(&value), PREVIEW_CHARS),
    });
    emitter.emit("selector", event).await?;
    let mut outputs = Map::new();
    outputs.insert("selected_value".into(), value);
    outputs.insert("found".into(), found.into());
    outputs.insert("path_used".into(), path_used);
    Ok(Outcome::outputs(outputs))
}

fn deep_merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                let merged = match a.remove(&k) {
                    Some(old @ Value::Object(_)) if v.is_object() => deep_merge(old, v),
                    _ => v,
                };
                a.insert(k, merged);
            }
            Value::Object(a)
        }
        (Value::Array(mut a), Value::Array(b)) => {
            a.extend(b);
            Value::Array(a)
        }
        (a, b) => json!({"data1": a, "data2": b}),
    }
}

async fn merger(inputs: Map<String, Value>, node: &Node, emitter: &Emitter) -> ElementResult {
    let d1 = inputs.get("data1").cloned().unwrap_or(Value::Null);
    let d2 = inputs.get("data2").cloned().unwrap_or(Value::Null);
    let merged = match (d1, d2) {
        (Value::Null, Value::Null) => Value::Null,
        (d, Value::Null) | (Value::Null, d) => d,
        (a, b) => deep_merge(a, b),
    };
    let event = json!({
        "element_id": node.id,
        "merged_data_preview": preview(py_repr(&merged), PREVIEW_CHARS),
    });
    emitter.emit("merger", event).await?;
    let mut outputs = Map::new();
    outputs.insert("merged_data".into(), merged);
    Ok(Outcome::outputs(outputs))
}

/// splitmix64: a small deterministic generator (not for secrets).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

static ENTROPY_COUNTER: AtomicU64 = AtomicU64::new(0);

async fn random_generator(node: &Node, env: &RunEnv, emitter: &Emitter) -> ElementResult {
    let seed = match param(node, "seed")
        .and_then(Value::as_u64)
        .or(env.config.seed)
    {
        Some(seed) => seed ^ fnv1a(&node.id),
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (nanos.as_nanos() as u64)
                ^ ENTROPY_COUNTER
                    .fetch_add(1, Ordering::Relaxed)
                    .rotate_left(32)
        }
    };
    let mut rng = SplitMix(seed);
    let kind = param_str(node, "type").unwrap_or("int");
    let value = match kind {
        "int" | "integer" => {
            let min = param(node, "min").and_then(Value::as_i64).unwrap_or(0);
            let max = param(node, "max").and_then(Value::as_i64).unwrap_or(100);
            if max < min {
                return fail(format!("Random range is empty: min {min} > max {max}"));
            }
            let span = max.abs_diff(min).saturating_add(1);
            Value::from(min.wrapping_add(rng.below(span) as i64))
        }
        "float" | "number" => {
            let min = param_f64(node, "min", 0.0);
            let max = param_f64(node, "max", 1.0);
            Value::from(min + rng.unit() * (max - min))
        }
        "bool" | "boolean" => Value::Bool(rng.next() & 1 == 1),
        "string" => {
            const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            let len = param_u64(node, "length", 8).min(MAX_RANDOM_STRING);
            let s: String = (0..len)
                .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize] as char)
                .collect();
            Value::String(s)
        }
        "uuid" => {
            let bytes = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            Value::String(
                uuid::Builder::from_random_bytes(bytes.to_be_bytes())
                    .into_uuid()
                    .to_string(),
            )
        }
        "choice" => match param(node, "choices").and_then(Value::as_array) {
            Some(choices) if !choices.is_empty() => {
                choices[rng.below(choices.len() as u64) as usize].clone()
            }
            _ => return fail("Random choice needs a non-empty `choices` list"),
        },
        other => {
            return fail(format!(
                "Unknown random type '{other}' (expected int, float, bool, string, uuid or choice)"
            ));
        }
    };
    let event = json!({"element_id": node.id, "type": kind, "value": value});
    emitter.emit("random_generator", event).await?;
    let mut outputs = Map::new();
    outputs.insert("random_data".into(), value);
    Ok(Outcome::outputs(outputs))
}

async fn time(node: &Node, env: &RunEnv, emitter: &Emitter) -> ElementResult {
    let now: DateTime<FixedOffset> = env
        .config
        .fixed_time
        .unwrap_or_else(|| Utc::now().fixed_offset());
    let tz = param_str(node, "timezone").unwrap_or("UTC");
    let offset = if tz.eq_ignore_ascii_case("utc") || tz == "Z" {
        FixedOffset::east_opt(0)
    } else {
        DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{tz}"))
            .ok()
            .map(|d| *d.offset())
    };
    let Some(offset) = offset else {
        return fail(format!(
            "Unknown timezone '{tz}' (use UTC or an offset like +02:00)"
        ));
    };
    let local = now.with_timezone(&offset);
    let pattern = param_str(node, "format").unwrap_or("%Y-%m-%d %H:%M:%S");
    let mut formatted = String::new();
    if std::fmt::Write::write_fmt(&mut formatted, format_args!("{}", local.format(pattern)))
        .is_err()
    {
        return fail(format!("Invalid time format '{pattern}'"));
    }
    let mut outputs = Map::new();
    outputs.insert("current_time".into(), local.to_rfc3339().into());
    outputs.insert("formatted_time".into(), formatted.into());
    outputs.insert("timestamp".into(), local.timestamp().into());
    outputs.insert("date".into(), local.format("%Y-%m-%d").to_string().into());
    outputs.insert("time".into(), local.format("%H:%M:%S").to_string().into());
    outputs.insert("day_of_week".into(), local.format("%A").to_string().into());
    outputs.insert("timezone".into(), tz.into());
    let mut event = Map::new();
    event.insert("element_id".into(), node.id.clone().into());
    event.extend(outputs.clone());
    emitter.emit("time_block", Value::Object(event)).await?;
    Ok(Outcome::outputs(outputs))
}

fn llm_params(node: &Node, env: &RunEnv) -> (String, f64, u64) {
    let model = param_str(node, "model")
        .unwrap_or(&env.config.llm_model)
        .to_owned();
    (
        model,
        param_f64(node, "temperature", 0.7),
        param_u64(node, "max_tokens", 1000),
    )
}

async fn llm_text(
    node: &Node,
    inputs: Map<String, Value>,
    env: &RunEnv,
    emitter: &Emitter,
) -> ElementResult {
    if inputs.get("prompt").is_none_or(Value::is_null) {
        return fail("LLM text needs a `prompt` input");
    }
    let prompt = llm::render_prompt(param_str(node, "wrapper_prompt"), &inputs);
    let (model, temperature, max_tokens) = llm_params(node, env);
    let data = json!({
        "element_id": node.id,
        "prompt": prompt,
        "model": model,
        "temperature": temperature,
        "max_tokens": max_tokens,
    });
    emitter.emit("llm_prompt", data).await?;
    let request = openai::ChatRequest {
        model: &model,
        prompt: &prompt,
        temperature,
        max_tokens,
    };
    let text = if env.config.llm_endpoint.base_url.is_some() {
        stream_endpoint(node, &request, env, emitter).await?
    } else {
        stream_scripted(node, &prompt, env, emitter).await?
    };
    let mut outputs = Map::new();
    outputs.insert("llm_output".into(), text.into());
    Ok(Outcome::outputs(outputs))
}

/// One `llm_chunk` event (the same shape for the scripted model and an endpoint).
async fn emit_chunk(node: &Node, chunk: &str, emitter: &Emitter) -> Result<(), Failure> {
    let data = json!({
        "element_id": node.id,
        "content": chunk,
        "metadata": {
            "element_id": node.id,
            "element_type": node.type_name,
            "element_name": node.name,
            "flow_id": emitter.flow_id(),
        },
    });
    emitter.emit("llm_chunk", data).await?;
    Ok(())
}

/// The scripted model: `llm_tokens` chunks, `llm_token_delay` apart.
async fn stream_scripted(
    node: &Node,
    prompt: &str,
    env: &RunEnv,
    emitter: &Emitter,
) -> Result<String, Failure> {
    let delay: Duration = env.config.llm_token_delay;
    let mut text = String::new();
    for (i, chunk) in llm::chunks(&llm::reply(prompt), env.config.llm_tokens)
        .into_iter()
        .enumerate()
    {
        if i > 0 && !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = emitter.wait_cancelled() => return Err(Failure::Cancelled),
            }
        }
        emit_chunk(node, &chunk, emitter).await?;
        text.push_str(&chunk);
    }
    Ok(text)
}

/// The OpenAI-compatible endpoint of `--llm-base-url`: one chunk per streamed delta. A cancelled
/// run drops the request at once (closing its connection).
async fn stream_endpoint(
    node: &Node,
    request: &openai::ChatRequest<'_>,
    env: &RunEnv,
    emitter: &Emitter,
) -> Result<String, Failure> {
    let element_error = |e: openai::LlmError| Failure::Element(e.to_string());
    let mut stream = tokio::select! {
        opened = openai::open(&env.http.llm, &env.config.llm_endpoint, request) => {
            opened.map_err(element_error)?
        }
        _ = emitter.wait_cancelled() => return Err(Failure::Cancelled),
    };
    let mut text = String::new();
    loop {
        let next = tokio::select! {
            next = stream.next_chunk() => next.map_err(element_error)?,
            _ = emitter.wait_cancelled() => return Err(Failure::Cancelled),
        };
        let Some(chunk) = next else { break };
        emit_chunk(node, &chunk, emitter).await?;
        text.push_str(&chunk);
    }
    Ok(text)
}

async fn llm_structured(
    node: &Node,
    inputs: Map<String, Value>,
    env: &RunEnv,
    emitter: &Emitter,
) -> ElementResult {
    if inputs.get("prompt").is_none_or(Value::is_null) {
        return fail("LLM structured needs a `prompt` input");
    }
    if node.output_schema.keys().all(|k| k == "structured_output") {
        return fail("LLM structured needs an `output_schema` with at least one field");
    }
    let prompt = llm::render_prompt(param_str(node, "wrapper_prompt"), &inputs);
    let (model, _, _) = llm_params(node, env);
    let values = llm::structured(&node.output_schema, &prompt);
    let text = Value::Object(values.clone()).to_string();
    let data = json!({"element_id": node.id, "model": model, "structured_output": values});
    emitter.emit("llm_structured_result", data).await?;
    let mut outputs = values;
    outputs.insert("structured_output".into(), text.into());
    Ok(Outcome::outputs(outputs))
}

fn compare(left: &Value, op: &str, right: &Value) -> Result<bool, String> {
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let loose_eq = |a: &Value, b: &Value| match (num(a), num(b)) {
        (Some(x), Some(y)) if !(a.is_string() && b.is_string()) => x == y,
        _ => a == b,
    };
    let ordered = |f: fn(f64, f64) -> bool| match (num(left), num(right)) {
        (Some(x), Some(y)) => Ok(f(x, y)),
        _ => match (left.as_str(), right.as_str()) {
            (Some(a), Some(b)) => Ok(f(a.cmp(b) as i8 as f64, 0.0)),
            _ => Err(format!(
                "Cannot compare {} with {} using '{op}'",
                py_repr(left),
                py_repr(right)
            )),
        },
    };
    match op {
        "==" => Ok(loose_eq(left, right)),
        "!=" => Ok(!loose_eq(left, right)),
        ">" => ordered(|a, b| a > b),
        "<" => ordered(|a, b| a < b),
        ">=" => ordered(|a, b| a >= b),
        "<=" => ordered(|a, b| a <= b),
        "in" => Ok(match right {
            Value::Array(items) => items.iter().any(|i| loose_eq(left, i)),
            Value::String(s) => s.contains(&llm::text_of(left)),
            Value::Object(m) => m.contains_key(&llm::text_of(left)),
            _ => false,
        }),
        other => Err(format!(
            "Unknown comparison '{other}' (expected == != > < >= <= in)"
        )),
    }
}

fn case(node: &Node, inputs: Map<String, Value>) -> ElementResult {
    let variables = inputs
        .get("variables")
        .cloned()
        .map(as_json)
        .unwrap_or(Value::Null);
    let Some(cases) = param(node, "cases").and_then(Value::as_array) else {
        return fail("Case needs a `cases` list");
    };
    let mut keys = Vec::new();
    let mut chosen = None;
    for entry in cases {
        let Some((id, rule)) = entry.as_object().and_then(|m| m.iter().next()) else {
            return fail(
                "Each case must be an object `{<case_id>: {variable1, variable2, compare}}`",
            );
        };
        keys.push(id.clone());
        if chosen.is_some() {
            continue;
        }
        let var = rule.get("variable1").and_then(Value::as_str).unwrap_or("");
        let left = variables.get(var).cloned().unwrap_or(Value::Null);
        let right = rule.get("variable2").cloned().unwrap_or(Value::Null);
        let op = rule.get("compare").and_then(Value::as_str).unwrap_or("==");
        if compare(&left, op, &right).map_err(Failure::Element)? {
            chosen = Some(id.clone());
        }
    }
    let mut outputs = Map::new();
    outputs.insert(
        "result".into(),
        chosen.clone().map_or(Value::Null, Value::String),
    );
    Ok(Outcome {
        outputs,
        route: Some(Route { keys, chosen }),
    })
}

fn flow_select(node: &Node, inputs: Map<String, Value>) -> ElementResult {
    let keys: Vec<String> = match param(node, "flows_to_switch").and_then(Value::as_array) {
        Some(list) => list.iter().map(llm::text_of).collect(),
        None => return fail("Flow select needs a `flows_to_switch` list"),
    };
    let wanted = inputs
        .get("selected_flow")
        .or_else(|| inputs.get("flow"))
        .filter(|v| !v.is_null())
        .map(llm::text_of)
        .or_else(|| param_str(node, "default_flow").map(str::to_owned))
        .or_else(|| keys.first().cloned());
    let Some(wanted) = wanted else {
        return fail("Flow select has no flow to choose");
    };
    if !keys.contains(&wanted) {
        return fail(format!(
            "Flow '{wanted}' is not one of flows_to_switch {}",
            py_repr(&json!(keys))
        ));
    }
    let mut outputs = Map::new();
    outputs.insert("selected_flow".into(), wanted.clone().into());
    Ok(Outcome {
        outputs,
        route: Some(Route {
            keys,
            chosen: Some(wanted),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_paths_with_indexes_select_nested_values() {
        let data = json!({"a": {"b": [{"c": 1}, {"c": 2}]}, "l": [[5, 6]]});
        assert_eq!(select_path(&data, "a.b[1].c"), Some(json!(2)));
        assert_eq!(select_path(&data, "l[0][1]"), Some(json!(6)));
        assert_eq!(select_path(&data, "a.x"), None);
        assert_eq!(select_path(&data, "a.b[9]"), None);
    }

    #[test]
    fn merge_deep_merges_objects_and_concatenates_lists() {
        let m = deep_merge(
            json!({"a": {"x": 1}, "b": 1}),
            json!({"a": {"y": 2}, "b": 3}),
        );
        assert_eq!(m, json!({"a": {"x": 1, "y": 2}, "b": 3}));
        assert_eq!(deep_merge(json!([1]), json!([2, 3])), json!([1, 2, 3]));
        assert_eq!(
            deep_merge(json!("a"), json!(1)),
            json!({"data1": "a", "data2": 1})
        );
    }

    #[test]
    fn comparisons_cover_every_operator() {
        assert!(compare(&json!("high"), "==", &json!("high")).unwrap());
        assert!(compare(&json!(3), "==", &json!("3")).unwrap());
        assert!(compare(&json!(5), ">", &json!(3)).unwrap());
        assert!(compare(&json!(2), "<=", &json!(2)).unwrap());
        assert!(compare(&json!("b"), "in", &json!(["a", "b"])).unwrap());
        assert!(compare(&json!("x"), "~", &json!(1)).is_err());
    }
}
