//! `agui`: AG-UI over SSE (DIALECTS.md 4.4), so `@ag-ui/client`'s `HttpAgent` (CopilotKit and
//! others) runs an agent at `POST /agui/{agent_id}`.
//!
//! The client checks the event order and throws at the first breach, so the encoder keeps the
//! open step and message: `RUN_STARTED` first; a step per element (`stepName` is the unique
//! `element_id`); a text message per element that streams (`TEXT_MESSAGE_START` before its first
//! content, `END` when its element ends); everything open is closed before `RUN_FINISHED`;
//! nothing follows `RUN_FINISHED` or `RUN_ERROR`. flowgate's fields go only in `metadata`
//! (`{"flowgate": {run_id, seq, …}}`): the Python models forbid unknown keys.

use serde_json::{Map, Value, json};

use super::answer::{Answer, Piece};
use super::messages::{self, Role};
use super::{Payload, StreamEncoder};
use crate::relay::registry::Frame;

/// A checked `RunAgentInput`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInput {
    pub thread_id: String,
    pub run_id: String,
    pub message: String,
    pub history: Vec<Value>,
}

/// Longest `threadId`/`runId` echoed back.
const MAX_ID: usize = 256;

impl RunInput {
    /// Parse a `RunAgentInput` body; the error names the field and what to send.
    pub fn parse(body: &[u8]) -> Result<RunInput, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            format!(
                "the body is not JSON ({e}): send a RunAgentInput {{threadId, runId, messages, …}}"
            )
        })?;
        let Value::Object(obj) = v else {
            return Err("the body must be a RunAgentInput object".into());
        };
        let id = |key: &str| -> Result<String, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(uuid::Uuid::new_v4().to_string()),
                Some(Value::String(s)) if (1..=MAX_ID).contains(&s.len()) => Ok(s.clone()),
                Some(_) => Err(format!("`{key}` must be a string of 1 to {MAX_ID} bytes")),
            }
        };
        let thread_id = id("threadId")?;
        let run_id = id("runId")?;
        let Some(Value::Array(list)) = obj.get("messages") else {
            return Err("`messages` must be a list of messages".into());
        };
        let mut parsed = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let role = m["role"]
                .as_str()
                .ok_or_else(|| format!("messages[{i}].role is missing"))?;
            // Tool, activity and reasoning messages are accepted and not passed on (v1 runs no
            // client tools); only user and assistant text reaches the flow.
            let role = Role::of(role);
            let text = match &m["content"] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Array(parts) if role == Role::User => {
                    let mut texts = Vec::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p["type"].as_str(), p["text"].as_str()) {
                            (Some("text"), Some(t)) => texts.push(t),
                            (kind, _) => {
                                return Err(format!(
                                    "messages[{i}].content[{j}]: only text parts are supported (got `{}`)",
                                    kind.unwrap_or("a part without a type")
                                        .chars()
                                        .take(32)
                                        .collect::<String>()
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
                _ if role == Role::Other => String::new(),
                _ => {
                    return Err(format!(
                        "messages[{i}].content must be text or a list of text parts"
                    ));
                }
            };
            parsed.push((role, text));
        }
        let (message, history) = messages::split(parsed).ok_or_else(|| {
            "`messages` has no user message with text: the last one is what the agent answers"
                .to_owned()
        })?;
        Ok(RunInput {
            thread_id,
            run_id,
            message,
            history,
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A run's frames as AG-UI events.
#[derive(Debug)]
pub struct AguiEvents {
    thread_id: String,
    client_run_id: String,
    /// The first 8 characters of flowgate's run id (message ids are `msg-<it>-<element_id>`).
    short: String,
    answer: Answer,
    /// Open steps (element ids), in the order they started.
    steps: Vec<String>,
    /// The open text message: its id and the element it belongs to.
    message: Option<(String, String)>,
    /// Separate answer blocks so far (each its own message).
    blocks: usize,
    ended: bool,
    pub finished: Option<String>,
}

impl AguiEvents {
    pub fn new(input: &RunInput, run_id: uuid::Uuid) -> AguiEvents {
        AguiEvents {
            thread_id: input.thread_id.clone(),
            client_run_id: input.run_id.clone(),
            short: run_id.simple().to_string()[..8].to_owned(),
            answer: Answer::default(),
            steps: Vec::new(),
            message: None,
            blocks: 0,
            ended: false,
            finished: None,
        }
    }

    fn event(kind: &str, fields: Value, meta: Value) -> String {
        let mut m = Map::new();
        m.insert("type".into(), kind.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        m.insert("timestamp".into(), now_ms().into());
        m.insert("metadata".into(), json!({ "flowgate": meta }));
        Value::Object(m).to_string()
    }

    fn end_message(&mut self, seq: u64, out: &mut Vec<String>) {
        if let Some((id, _)) = self.message.take() {
            out.push(Self::event(
                "TEXT_MESSAGE_END",
                json!({"messageId": id}),
                json!({"seq": seq}),
            ));
        }
    }

    fn start_message(&mut self, id: String, element: &str, seq: u64, out: &mut Vec<String>) {
        self.end_message(seq, out);
        out.push(Self::event(
            "TEXT_MESSAGE_START",
            json!({"messageId": id, "role": "assistant"}),
            json!({"seq": seq}),
        ));
        self.message = Some((id, element.to_owned()));
    }

    fn content(&self, delta: &str, seq: u64, out: &mut Vec<String>) {
        if let Some((id, _)) = &self.message {
            out.push(Self::event(
                "TEXT_MESSAGE_CONTENT",
                json!({"messageId": id, "delta": delta}),
                json!({"seq": seq}),
            ));
        }
    }

    /// Text of `element`: into its open message, else a new one.
    fn text(&mut self, piece: Option<Piece>, element: &str, seq: u64, out: &mut Vec<String>) {
        match piece {
            Some(Piece::Delta(d)) => {
                if self.message.as_ref().is_none_or(|(_, e)| e != element) {
                    let id = format!("msg-{}-{element}", self.short);
                    self.start_message(id, element, seq, out);
                }
                self.content(&d, seq, out);
            }
            Some(Piece::Block(b)) => {
                self.blocks += 1;
                let id = format!("msg-{}-final-{}", self.short, self.blocks);
                self.start_message(id, element, seq, out);
                self.content(&b, seq, out);
                self.end_message(seq, out);
            }
            None => {}
        }
    }

    fn close_all(&mut self, seq: u64, out: &mut Vec<String>) {
        self.end_message(seq, out);
        while let Some(step) = self.steps.pop() {
            out.push(Self::event(
                "STEP_FINISHED",
                json!({"stepName": step}),
                json!({"seq": seq}),
            ));
        }
    }
}

impl StreamEncoder for AguiEvents {
    fn encode(&mut self, frame: &Frame) -> Vec<Payload> {
        if self.ended {
            return Vec::new();
        }
        let Ok(v) = serde_json::from_str::<Value>(frame.text.as_str()) else {
            return Vec::new();
        };
        let seq = frame.seq;
        let data = &v["data"];
        let element = data["element_id"].as_str().unwrap_or_default().to_owned();
        let mut out = Vec::new();
        match v["type"].as_str().unwrap_or_default() {
            "flow_started" => out.push(Self::event(
                "RUN_STARTED",
                json!({"threadId": self.thread_id, "runId": self.client_run_id}),
                json!({"run_id": v["run_id"], "seq": seq}),
            )),
            "element_started" if !element.is_empty() && !self.steps.contains(&element) => {
                out.push(Self::event(
                    "STEP_STARTED",
                    json!({"stepName": element}),
                    json!({"seq": seq, "element_name": data["element_name"], "element_type": data["element_type"]}),
                ));
                self.steps.push(element);
            }
            "element_completed" | "element_error" => {
                if self.message.as_ref().is_some_and(|(_, e)| *e == element) {
                    self.end_message(seq, &mut out);
                }
                if let Some(i) = self.steps.iter().position(|s| *s == element) {
                    // A step ends after the message it holds.
                    self.end_message(seq, &mut out);
                    self.steps.remove(i);
                    out.push(Self::event(
                        "STEP_FINISHED",
                        json!({"stepName": element}),
                        json!({"seq": seq}),
                    ));
                }
            }
            "llm_chunk" => {
                let piece = self
                    .answer
                    .chunk(data["content"].as_str().unwrap_or_default());
                self.text(piece, &element, seq, &mut out);
            }
            "final_output" => {
                if let Some(full) = super::answer::text_output(data) {
                    let piece = self.answer.final_output(&full);
                    // The answer belongs to the element that is running (the flow's end).
                    let owner = self.steps.last().cloned().unwrap_or_else(|| "final".into());
                    let owner = match (&piece, &self.message) {
                        (Some(Piece::Delta(_)), Some((_, e))) => e.clone(),
                        _ => owner,
                    };
                    self.text(piece, &owner, seq, &mut out);
                }
            }
            "flow_completed" => {
                self.close_all(seq, &mut out);
                let text = self.answer.full().to_owned();
                self.finished = Some(text.clone());
                out.push(Self::event(
                    "RUN_FINISHED",
                    json!({"threadId": self.thread_id, "runId": self.client_run_id, "result": {"text": text}}),
                    json!({"seq": seq}),
                ));
                self.ended = true;
            }
            kind @ ("flow_error" | "error" | "flow_cancelled") => {
                let (code, message) = if kind == "flow_cancelled" {
                    (
                        "cancelled".to_owned(),
                        data["reason"]
                            .as_str()
                            .unwrap_or("cancelled by the client")
                            .to_owned(),
                    )
                } else {
                    (
                        data["code"].as_str().unwrap_or("flow_error").to_owned(),
                        data["error"]
                            .as_str()
                            .unwrap_or("the run failed")
                            .to_owned(),
                    )
                };
                let mut meta = json!({"seq": seq});
                if self.answer.has_text() {
                    meta["partial_output"] = self.answer.full().into();
                }
                out.push(Self::event(
                    "RUN_ERROR",
                    json!({"message": message, "code": code}),
                    meta,
                ));
                self.ended = true;
            }
            _ => {}
        }
        out.into_iter()
            .map(|d| Payload::data(d).with_id(seq))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        super::super::frame_of(&v)
    }

    fn input() -> RunInput {
        RunInput::parse(
            br#"{"threadId":"t-91a0","runId":"r-5c2e","state":{},"messages":[{"id":"u0","role":"user","content":"Hi"},{"id":"a0","role":"assistant","content":"Hello!"},{"id":"t0","role":"tool","content":"42","toolCallId":"c1"},{"id":"u1","role":"user","content":"What is flowgate?"}],"tools":[{"name":"x","description":"","parameters":{}}],"context":[],"forwardedProps":{}}"#,
        )
        .unwrap()
    }

    fn run(events: &[Value]) -> Vec<Value> {
        let mut e = AguiEvents::new(&input(), uuid::Uuid::new_v4());
        events
            .iter()
            .flat_map(|v| e.encode(&frame(v.clone())))
            .map(|p| serde_json::from_str(&p.data).unwrap())
            .collect()
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn reference(last: Value) -> Vec<Value> {
        vec![
            json!({"type":"status","data":{"message":"Retrieving workflow..."},"run_id":"r","seq":1}),
            json!({"type":"flow_started","data":{},"run_id":"r","seq":4}),
            json!({"type":"element_started","data":{"element_id":"llm_1","element_type":"llm_text","element_name":"Assistant"},"run_id":"r","seq":12}),
            json!({"type":"llm_chunk","data":{"element_id":"llm_1","content":"Hello"},"run_id":"r","seq":14}),
            json!({"type":"llm_chunk","data":{"element_id":"llm_1","content":" from"},"run_id":"r","seq":15}),
            json!({"type":"element_completed","data":{"element_id":"llm_1"},"run_id":"r","seq":17}),
            json!({"type":"element_started","data":{"element_id":"end_1","element_type":"end","element_name":"End"},"run_id":"r","seq":18}),
            json!({"type":"final_output","data":{"text_output":"Hello from flowgate."},"run_id":"r","seq":19}),
            json!({"type":"element_completed","data":{"element_id":"end_1"},"run_id":"r","seq":20}),
            last,
        ]
    }

    #[test]
    fn the_input_gives_message_and_history_and_keeps_the_clients_ids() {
        let i = input();
        assert_eq!(i.thread_id, "t-91a0");
        assert_eq!(i.run_id, "r-5c2e");
        assert_eq!(i.message, "What is flowgate?");
        assert_eq!(i.history.len(), 2, "the tool message is not passed on");
        assert!(RunInput::parse(b"[]").is_err());
        assert!(
            RunInput::parse(br#"{"messages":[{"role":"user","content":[{"type":"binary","mimeType":"image/png"}]}]}"#)
                .unwrap_err()
                .contains("messages[0].content[0]")
        );
    }

    #[test]
    fn a_run_is_in_the_order_the_client_verifies() {
        let done = json!({"type":"flow_completed","data":{},"run_id":"r","seq":22});
        let out = run(&reference(done));
        assert_eq!(
            types(&out),
            [
                "RUN_STARTED",
                "STEP_STARTED",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "STEP_FINISHED",
                "STEP_STARTED",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "STEP_FINISHED",
                "RUN_FINISHED",
            ]
        );
        assert_eq!(out[0]["threadId"], "t-91a0");
        assert_eq!(out[0]["metadata"]["flowgate"]["run_id"], "r");
        assert_eq!(out[9]["delta"], " flowgate.");
        assert_eq!(out[12]["result"]["text"], "Hello from flowgate.");
        assert!(out.iter().all(|e| e["timestamp"].is_u64()));
    }

    #[test]
    fn failures_are_one_run_error_and_nothing_after() {
        let lost = json!({"type":"flow_error","data":{"error":"lost","code":"engine_lost"},"run_id":"r","seq":16});
        let mut events = reference(lost);
        events.truncate(5);
        events.push(json!({"type":"flow_error","data":{"error":"lost","code":"engine_lost"},"run_id":"r","seq":16}));
        events.push(json!({"type":"flow_completed","data":{},"run_id":"r","seq":17}));
        let out = run(&events);
        let last = out.last().unwrap();
        assert_eq!(last["type"], "RUN_ERROR");
        assert_eq!(last["code"], "engine_lost");
        assert_eq!(last["metadata"]["flowgate"]["partial_output"], "Hello from");
        assert_eq!(out.iter().filter(|e| e["type"] == "RUN_ERROR").count(), 1);
        let cancelled = json!({"type":"flow_cancelled","data":{"reason":"cancelled by the client"},"run_id":"r","seq":16});
        let out = run(&reference(cancelled));
        assert_eq!(out.last().unwrap()["code"], "cancelled");
    }
}
