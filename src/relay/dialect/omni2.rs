//! `omni2`: the OMNI2 dashboard chat widget (DIALECTS.md 2.1) at `/ws/chat`, and its SSE twin
//! `POST /api/v1/chat/stream` (served by `http::omni2`); the user's guide is docs/dialects.md.
//!
//! Client frames are `{"type":"message","text":"…"}` (plus flowgate's control frames). A turn
//! streams `{"type":"token","text":…}` frames and ends with `{"type":"done","result":{…}}` or
//! `{"type":"error","error":…,"code":…}`; a cancel ends in `done` with `cancelled: true`.
//! `forbidden` reads "Access blocked: …" and closes 1008 with an empty reason (the widget shows
//! both an error frame and a close reason). The conversation is the socket.

use std::collections::HashMap;

use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value, json};

use super::answer::{Answer, Piece};
use super::{Dialect, Payload, StreamEncoder};
use crate::close::CloseCode;
pub use crate::config::WelcomeAs;
use crate::relay::protocol::{BadFrame, ClientFrame, ErrorCode, RunRequest};
use crate::relay::registry::Frame;

/// Elements that count as tool calls in `done.result`.
const TOOLS: &[&str] = &[
    "rest_api",
    "chat_api",
    "read_blockchain_data",
    "build_transaction_json",
];

/// Elements that count as model iterations.
const MODELS: &[&str] = &["llm_text", "llm_structured"];

/// Codes whose error frame carries the text streamed so far.
const WITH_PARTIAL: &[&str] = &["engine_lost", "engine_timeout", "engine_protocol_error"];

/// What a run event means for the widget.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Token(String),
    Done(Value),
    Error {
        error: String,
        code: String,
        partial_output: Option<String>,
    },
}

/// One turn's state: the answer and the counters of `done.result`.
#[derive(Debug, Default)]
pub struct Turn {
    answer: Answer,
    element_types: HashMap<String, String>,
    tools_used: Vec<String>,
    iterations: u64,
    tokens_input: u64,
    tokens_output: u64,
    tokens_cached: u64,
    /// The answer once the turn ended (for the conversation memory).
    pub finished: Option<String>,
}

impl Turn {
    /// One stamped run event (parsed) → what the widget gets.
    pub fn feed(&mut self, v: &Value) -> Vec<Out> {
        let data = &v["data"];
        match v["type"].as_str().unwrap_or_default() {
            "llm_chunk" => match self
                .answer
                .chunk(data["content"].as_str().unwrap_or_default())
            {
                Some(Piece::Delta(d)) => vec![Out::Token(d)],
                _ => Vec::new(),
            },
            "final_output" => {
                let Some(full) = super::answer::text_output(data) else {
                    return Vec::new();
                };
                match self.answer.final_output(&full) {
                    Some(Piece::Delta(d)) => vec![Out::Token(d)],
                    Some(Piece::Block(b)) => vec![Out::Token(format!("\n\n{b}"))],
                    None => Vec::new(),
                }
            }
            "element_started" => {
                if let (Some(id), Some(kind)) =
                    (data["element_id"].as_str(), data["element_type"].as_str())
                    && self.element_types.len() < 10_000
                {
                    self.element_types.insert(id.to_owned(), kind.to_owned());
                }
                Vec::new()
            }
            "element_completed" => {
                let kind = data["element_type"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| {
                        let id = data["element_id"].as_str()?;
                        self.element_types.get(id).cloned()
                    });
                if let Some(kind) = kind {
                    if TOOLS.contains(&kind.as_str()) && self.tools_used.len() < 1_000 {
                        self.tools_used.push(format!("flowgate.{kind}"));
                    }
                    if MODELS.contains(&kind.as_str()) {
                        self.iterations += 1;
                    }
                }
                let usage = &data["usage"];
                let n = |keys: &[&str]| keys.iter().find_map(|k| usage[*k].as_u64()).unwrap_or(0);
                self.tokens_input += n(&["input_tokens", "prompt_tokens"]);
                self.tokens_output += n(&["output_tokens", "completion_tokens"]);
                self.tokens_cached += n(&["cached_tokens"]);
                Vec::new()
            }
            "flow_completed" => {
                let result = self.result(data["execution_time"].as_f64(), false);
                self.end();
                vec![Out::Done(result)]
            }
            "flow_cancelled" => {
                let result = self.result(data["execution_time"].as_f64(), true);
                self.end();
                vec![Out::Done(result)]
            }
            "flow_error" | "error" => {
                let code = data["code"].as_str().unwrap_or("flow_error").to_owned();
                let error = data["error"]
                    .as_str()
                    .unwrap_or("the run failed")
                    .to_owned();
                let partial_output = WITH_PARTIAL
                    .contains(&code.as_str())
                    .then(|| self.answer.full().to_owned());
                self.end();
                vec![Out::Error {
                    error,
                    code,
                    partial_output,
                }]
            }
            _ => Vec::new(),
        }
    }

    fn result(&self, execution_time: Option<f64>, cancelled: bool) -> Value {
        let mut r = Map::new();
        r.insert("answer".into(), self.answer.full().into());
        r.insert("tool_calls".into(), self.tools_used.len().into());
        r.insert("tools_used".into(), json!(self.tools_used));
        r.insert("iterations".into(), self.iterations.into());
        r.insert("tokens_input".into(), self.tokens_input.into());
        r.insert("tokens_output".into(), self.tokens_output.into());
        r.insert("tokens_cached".into(), self.tokens_cached.into());
        r.insert("tokens_used".into(), self.tokens_output.into());
        r.insert(
            "execution_time".into(),
            execution_time.map_or(Value::from(0.0), Value::from),
        );
        if cancelled {
            r.insert("cancelled".into(), true.into());
        }
        Value::Object(r)
    }

    fn end(&mut self) {
        let done = std::mem::take(self);
        self.finished = Some(done.answer.full().to_owned());
    }
}

/// The widget's error sentence: `forbidden` reads as the design note's "Access blocked".
fn sentence(code: &str, error: &str) -> String {
    if code == "forbidden" {
        format!("Access blocked: {error}")
    } else {
        error.to_owned()
    }
}

fn error_value(error: &str, code: &str, partial_output: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("error".into(), sentence(code, error).into());
    m.insert("code".into(), code.into());
    if let Some(p) = partial_output {
        m.insert("partial_output".into(), p.into());
    }
    m
}

/// One `/ws/chat` socket.
#[derive(Debug)]
pub struct Omni2 {
    welcome: Option<(String, WelcomeAs)>,
    conversation: String,
    turn: Turn,
}

impl Omni2 {
    pub fn new(welcome_text: &str, welcome_as: WelcomeAs) -> Omni2 {
        Omni2 {
            welcome: (!welcome_text.is_empty()).then(|| (welcome_text.to_owned(), welcome_as)),
            conversation: format!("omni2:{}", uuid::Uuid::new_v4().simple()),
            turn: Turn::default(),
        }
    }
}

impl Dialect for Omni2 {
    fn decode(&mut self, text: &str) -> Result<ClientFrame, BadFrame> {
        // The compat string of the shipped server.
        let v: Value =
            serde_json::from_str(text).map_err(|_| BadFrame("Invalid JSON".to_owned()))?;
        match v.get("type").and_then(Value::as_str) {
            Some("message") => match v.get("text") {
                Some(Value::String(t)) if !t.trim().is_empty() => {
                    Ok(ClientFrame::Run(Box::new(RunRequest {
                        message: Some(t.clone()),
                        ..RunRequest::default()
                    })))
                }
                Some(Value::String(_)) => Err(BadFrame(
                    "`text` is empty: send {\"type\":\"message\",\"text\":\"<your message>\"}"
                        .into(),
                )),
                _ => Err(BadFrame(
                    "`text` must be the message (a string): {\"type\":\"message\",\"text\":\"…\"}"
                        .into(),
                )),
            },
            Some("cancel" | "resume" | "auth") => ClientFrame::parse(text),
            Some("ping") => Ok(ClientFrame::Ping),
            Some(other) => Err(BadFrame(format!(
                "unknown frame type `{}`: send {{\"type\":\"message\",\"text\":\"…\"}}",
                other.chars().take(64).collect::<String>()
            ))),
            None => Err(BadFrame(
                "`type` is missing: send {\"type\":\"message\",\"text\":\"…\"}".into(),
            )),
        }
    }

    fn encode_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        for o in self.turn.feed(&v) {
            let mut m = match o {
                Out::Token(t) => {
                    let mut m = Map::new();
                    m.insert("type".into(), "token".into());
                    m.insert("text".into(), t.into());
                    m
                }
                Out::Done(result) => {
                    let mut m = Map::new();
                    m.insert("type".into(), "done".into());
                    m.insert("result".into(), result);
                    m
                }
                Out::Error {
                    error,
                    code,
                    partial_output,
                } => error_value(&error, &code, partial_output.as_deref()),
            };
            m.insert("run_id".into(), v["run_id"].clone());
            m.insert("seq".into(), v["seq"].clone());
            out.push(Value::Object(m).to_string().into());
        }
    }

    fn error(&mut self, code: ErrorCode, message: &str) -> Vec<Utf8Bytes> {
        vec![
            Value::Object(error_value(message, code.as_str(), None))
                .to_string()
                .into(),
        ]
    }

    fn opening(&mut self) -> Vec<Utf8Bytes> {
        match &self.welcome {
            None => Vec::new(),
            Some((text, WelcomeAs::Welcome)) => {
                vec![json!({"type": "welcome", "text": text}).to_string().into()]
            }
            Some((text, WelcomeAs::Token)) => {
                vec![
                    json!({"type": "token", "text": format!("\n\n{text}\n\n")})
                        .to_string()
                        .into(),
                ]
            }
        }
    }

    fn close(&self, code: CloseCode, reason: &'static str) -> (CloseCode, &'static str) {
        match code {
            // The widget shows the error frame and a close reason: an empty reason keeps the
            // refusal from showing twice.
            CloseCode::Forbidden => (CloseCode::Policy, ""),
            other => (other, reason),
        }
    }

    fn conversation(&self) -> Option<&str> {
        Some(&self.conversation)
    }

    fn take_answer(&mut self) -> Option<String> {
        self.turn.finished.take()
    }

    fn queue_depth(&self) -> usize {
        1
    }
}

/// The SSE twin's encoder: `event: token` / `event: done` / `event: error`, each with its JSON.
#[derive(Debug, Default)]
pub struct Omni2Events {
    pub turn: Turn,
}

impl StreamEncoder for Omni2Events {
    fn encode(&mut self, frame: &Frame) -> Vec<Payload> {
        let Ok(v) = serde_json::from_str::<Value>(frame.text.as_str()) else {
            return Vec::new();
        };
        self.turn
            .feed(&v)
            .into_iter()
            .map(|o| match o {
                Out::Token(t) => Payload::named("token", json!({"text": t}).to_string()),
                Out::Done(result) => Payload::named("done", result.to_string()),
                Out::Error {
                    error,
                    code,
                    partial_output,
                } => {
                    let mut m = error_value(&error, &code, partial_output.as_deref());
                    m.remove("type");
                    Payload::named("error", Value::Object(m).to_string())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: &mut Omni2, events: &[Value]) -> Vec<Value> {
        super::super::encode_values(d, events)
    }

    #[test]
    fn a_turn_is_tokens_then_done_with_the_counters() {
        let mut d = Omni2::new("", WelcomeAs::Welcome);
        assert!(d.opening().is_empty());
        let out = run(
            &mut d,
            &[
                json!({"type":"element_started","data":{"element_id":"l","element_type":"llm_text"},"run_id":"r","seq":12}),
                json!({"type":"llm_chunk","data":{"content":"Hello"},"run_id":"r","seq":14}),
                json!({"type":"element_completed","data":{"element_id":"l"},"run_id":"r","seq":17}),
                json!({"type":"element_completed","data":{"element_id":"x","element_type":"rest_api"},"run_id":"r","seq":18}),
                json!({"type":"final_output","data":{"text_output":"Hello from flowgate."},"run_id":"r","seq":20}),
                json!({"type":"flow_completed","data":{"execution_time":0.031},"run_id":"r","seq":22}),
            ],
        );
        assert_eq!(
            out[0],
            json!({"type":"token","text":"Hello","run_id":"r","seq":14})
        );
        assert_eq!(out[1]["text"], " from flowgate.");
        let r = &out[2]["result"];
        assert_eq!(out[2]["type"], "done");
        assert_eq!(r["answer"], "Hello from flowgate.");
        assert_eq!(r["iterations"], 1);
        assert_eq!(r["tool_calls"], 1);
        assert_eq!(r["tools_used"], json!(["flowgate.rest_api"]));
        assert_eq!(r["tokens_used"], 0);
        assert_eq!(r["execution_time"], 0.031);
        assert!(r.get("cancelled").is_none());
        assert_eq!(d.take_answer().as_deref(), Some("Hello from flowgate."));
    }

    #[test]
    fn errors_cancels_and_refusals_take_the_widgets_shapes() {
        let mut d = Omni2::new("Welcome!", WelcomeAs::Token);
        let hello: Value = serde_json::from_str(d.opening()[0].as_str()).unwrap();
        assert_eq!(hello, json!({"type":"token","text":"\n\nWelcome!\n\n"}));
        let out = run(
            &mut d,
            &[
                json!({"type":"llm_chunk","data":{"content":"Hello from"},"run_id":"r","seq":14}),
                json!({"type":"flow_error","data":{"error":"lost","code":"engine_lost"},"run_id":"r","seq":16}),
            ],
        );
        assert_eq!(
            out[1],
            json!({"type":"error","error":"lost","code":"engine_lost","partial_output":"Hello from","run_id":"r","seq":16})
        );
        let out = run(
            &mut d,
            &[json!({"type":"flow_cancelled","data":{},"run_id":"r","seq":3})],
        );
        assert_eq!(out[0]["result"]["cancelled"], true);
        let refused: Value =
            serde_json::from_str(d.error(ErrorCode::Forbidden, "not yours")[0].as_str()).unwrap();
        assert_eq!(
            refused,
            json!({"type":"error","error":"Access blocked: not yours","code":"forbidden"})
        );
        assert_eq!(
            d.close(CloseCode::Forbidden, "forbidden"),
            (CloseCode::Policy, "")
        );
        assert_eq!(d.decode("nope").unwrap_err().0, "Invalid JSON");
        assert!(d.decode(r#"{"type":"message","text":"  "}"#).is_err());
        assert!(
            d.decode(r#"{"type":"subscribe"}"#)
                .unwrap_err()
                .0
                .contains("subscribe")
        );
        assert!(matches!(
            d.decode(r#"{"type":"cancel"}"#),
            Ok(ClientFrame::Cancel)
        ));
    }
}
