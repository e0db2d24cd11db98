//! `openai`: OpenAI Chat Completions (DIALECTS.md 4.2), so the OpenAI SDKs (and anything built on
//! them) run an agent: `model` is the agent id, the JWT is the API key.
//!
//! A streamed answer is `chat.completion.chunk`s with one `id` (`chatcmpl-<run_id>`) and
//! `created`: the role chunk at `flow_started`, a content chunk per piece of text (rule 4), the
//! `finish_reason: "stop"` chunk at `flow_completed`, the usage chunk when asked, then
//! `data: [DONE]`. A failure after the stream started is one `{"error": {…}}` event and no
//! `[DONE]` (the SDKs raise `APIError`); a cancel is such an error with code `cancelled`, never
//! a `stop` that passes a cut answer off as whole. Unasked, a whole answer is one
//! `chat.completion`.

use serde_json::{Map, Value, json};

use super::answer::{Answer, Piece};
use super::messages::{self, Role};
use super::{Payload, StreamEncoder};
use crate::relay::registry::Frame;

/// A `POST /v1/chat/completions` body, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The agent id.
    pub model: String,
    pub message: String,
    pub history: Vec<Value>,
    pub stream: bool,
    pub include_usage: bool,
}

/// A request OpenAI's API would refuse with 400: the offending field and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub param: String,
    pub message: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadRequest {
    BadRequest {
        param: param.into(),
        message: message.into(),
    }
}

impl Completion {
    pub fn parse(body: &[u8]) -> Result<Completion, BadRequest> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            bad(
                "",
                format!(
                    "the body is not JSON ({e}): send {{\"model\":\"<agent id>\",\"messages\":[…]}}"
                ),
            )
        })?;
        let Value::Object(obj) = v else {
            return Err(bad("", "the body must be a JSON object"));
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(bad("model", "`model` must be the id of the agent to run")),
        };
        if let Some(tools) = obj.get("tools")
            && tools.as_array().is_some_and(|t| !t.is_empty())
        {
            return Err(bad(
                "tools",
                "flowgate agents cannot call client tools: send no `tools`",
            ));
        }
        // `auto` and `none` with no tools ask for nothing (some frameworks always send one);
        // `required` or a named function cannot be honoured.
        if let Some(choice) = obj.get("tool_choice")
            && !(choice.is_null() || choice == "none" || choice == "auto")
        {
            return Err(bad(
                "tool_choice",
                "flowgate agents cannot call client tools: send no `tool_choice`",
            ));
        }
        let Some(Value::Array(list)) = obj.get("messages") else {
            return Err(bad("messages", "`messages` must be a list of messages"));
        };
        let mut parsed = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let role = m["role"].as_str().ok_or_else(|| {
                bad(
                    format!("messages[{i}].role"),
                    "every message needs a `role`",
                )
            })?;
            let role = match role {
                "user" | "assistant" => Role::of(role),
                "system" | "developer" => Role::Other,
                other => {
                    return Err(bad(
                        format!("messages[{i}].role"),
                        format!(
                            "role `{}` is not supported: flowgate agents take `user`, `assistant`, `system` and `developer` messages",
                            other.chars().take(32).collect::<String>()
                        ),
                    ));
                }
            };
            parsed.push((role, content_text(&m["content"], i)?));
        }
        let (message, history) = messages::split(parsed).ok_or_else(|| {
            bad(
                "messages",
                "`messages` has no `user` message with text: the last one is what the agent answers",
            )
        })?;
        let stream = match obj.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("stream", "`stream` must be true or false")),
        };
        let include_usage = match obj.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(bad(
                        "stream_options.include_usage",
                        "`include_usage` must be true or false",
                    ));
                }
            },
            Some(_) => return Err(bad("stream_options", "`stream_options` must be an object")),
        };
        Ok(Completion {
            model,
            message,
            history,
            stream,
            include_usage,
        })
    }
}

/// A message's `content`: a string, or a list of parts of which only `text` parts are taken.
fn content_text(content: &Value, i: usize) -> Result<String, BadRequest> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (kind, _) => {
                        return Err(bad(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "only text parts are supported (got `{}`): flowgate agents take text",
                                kind.unwrap_or("a part without a type")
                                    .chars()
                                    .take(32)
                                    .collect::<String>()
                            ),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(bad(
            format!("messages[{i}].content"),
            "`content` must be a string or a list of text parts",
        )),
    }
}

/// The HTTP status, OpenAI error `type` and `code` of a flowgate error code (DIALECTS.md 4.2).
pub fn error_kind(code: &str) -> (u16, &'static str, String) {
    match code {
        "unauthenticated" => (401, "authentication_error", code.into()),
        "forbidden" => (403, "permission_error", code.into()),
        "agent_not_found" | "workflow_not_found" => {
            (404, "invalid_request_error", "model_not_found".into())
        }
        "invalid_request" => (400, "invalid_request_error", code.into()),
        "too_many_runs" => (429, "rate_limit_error", code.into()),
        "store_unavailable" | "engine_unavailable" | "engine_timeout" => {
            (503, "server_error", code.into())
        }
        _ => (500, "server_error", code.into()),
    }
}

/// OpenAI's error body `{"error": {message, type, param, code}}`.
pub fn error_body(code: &str, message: &str, param: Option<&str>) -> Value {
    let (_, kind, code) = error_kind(code);
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// A run's frames as Chat Completions chunks (streamed) or one `chat.completion` (whole).
#[derive(Debug)]
pub struct Chunks {
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    answer: Answer,
    /// The answer once the run completed (for the conversation memory of callers that keep one).
    pub finished: Option<String>,
}

impl Chunks {
    pub fn new(run_id: uuid::Uuid, model: String, stream: bool, include_usage: bool) -> Chunks {
        Chunks {
            id: format!("chatcmpl-{run_id}"),
            created: crate::auth::now_secs(),
            model,
            stream,
            include_usage,
            answer: Answer::default(),
            finished: None,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), "chat.completion.chunk".into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert(
            "choices".into(),
            json!([{"index": 0, "delta": delta, "finish_reason": finish}]),
        );
        if self.include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m).to_string()
    }

    fn usage(data: &Value) -> Value {
        let n = |k: &str| data["usage"][k].as_u64().unwrap_or(0);
        let (prompt, completion) = (n("prompt_tokens"), n("completion_tokens"));
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn text(&self, piece: Option<Piece>) -> Option<String> {
        match piece? {
            Piece::Delta(d) => Some(d),
            // Chat Completions has one message per answer: a separate block follows a blank line.
            Piece::Block(b) => Some(format!("\n\n{b}")),
        }
    }
}

impl StreamEncoder for Chunks {
    fn encode(&mut self, frame: &Frame) -> Vec<Payload> {
        let Ok(v) = serde_json::from_str::<Value>(frame.text.as_str()) else {
            return Vec::new();
        };
        let data = &v["data"];
        let mut out = Vec::new();
        match v["type"].as_str().unwrap_or_default() {
            "flow_started" if self.stream => {
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "llm_chunk" => {
                let piece = self
                    .answer
                    .chunk(data["content"].as_str().unwrap_or_default());
                if let Some(t) = self.text(piece).filter(|_| self.stream) {
                    out.push(self.chunk(json!({"content": t}), None));
                }
            }
            "final_output" => {
                if let Some(full) = super::answer::text_output(data) {
                    let piece = self.answer.final_output(&full);
                    if let Some(t) = self.text(piece).filter(|_| self.stream) {
                        out.push(self.chunk(json!({"content": t}), None));
                    }
                }
            }
            "flow_completed" => {
                let text = self.answer.full().to_owned();
                self.finished = Some(text.clone());
                if self.stream {
                    out.push(self.chunk(json!({}), Some("stop")));
                    if self.include_usage {
                        let mut m = Map::new();
                        m.insert("id".into(), self.id.clone().into());
                        m.insert("object".into(), "chat.completion.chunk".into());
                        m.insert("created".into(), self.created.into());
                        m.insert("model".into(), self.model.clone().into());
                        m.insert("choices".into(), json!([]));
                        m.insert("usage".into(), Chunks::usage(data));
                        out.push(Value::Object(m).to_string());
                    }
                    let mut payloads: Vec<Payload> = out
                        .into_iter()
                        .map(|d| Payload::data(d).with_id(frame.seq))
                        .collect();
                    payloads.push(Payload::data("[DONE]".into()));
                    return payloads;
                }
                out.push(
                    json!({
                        "id": self.id,
                        "object": "chat.completion",
                        "created": self.created,
                        "model": self.model,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }],
                        "usage": Chunks::usage(data),
                    })
                    .to_string(),
                );
            }
            kind @ ("flow_error" | "error" | "flow_cancelled") => {
                let (code, message) = if kind == "flow_cancelled" {
                    (
                        "cancelled",
                        data["reason"].as_str().unwrap_or("the run was cancelled"),
                    )
                } else {
                    (
                        data["code"].as_str().unwrap_or("flow_error"),
                        data["error"].as_str().unwrap_or("the run failed"),
                    )
                };
                out.push(error_body(code, message, None).to_string());
            }
            _ => {}
        }
        out.into_iter()
            .map(|d| Payload::data(d).with_id(frame.seq))
            .collect()
    }
}

/// One entry of `GET /v1/models`.
pub fn model(agent_id: &str) -> Value {
    json!({"id": agent_id, "object": "model", "created": 0, "owned_by": "flowgate"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        super::super::frame_of(&v)
    }

    fn run(chunks: &mut Chunks, events: &[Value]) -> Vec<Payload> {
        events
            .iter()
            .flat_map(|e| chunks.encode(&frame(e.clone())))
            .collect()
    }

    fn reference(last: Value) -> Vec<Value> {
        vec![
            json!({"type":"status","data":{"message":"Retrieving workflow..."},"seq":1}),
            json!({"type":"flow_started","data":{},"seq":4}),
            json!({"type":"llm_chunk","data":{"content":"Hello"},"seq":14}),
            json!({"type":"llm_chunk","data":{"content":" from"},"seq":15}),
            json!({"type":"final_output","data":{"text_output":"Hello from flowgate."},"seq":18}),
            last,
        ]
    }

    #[test]
    fn parse_takes_the_last_user_message_and_refuses_what_flowgate_cannot_do() {
        let c = Completion::parse(
            br#"{"model":"assistant","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":[{"type":"text","text":"What is"},{"type":"text","text":"flowgate?"}]}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.2,"user":"someone"}"#,
        )
        .unwrap();
        assert_eq!(c.model, "assistant");
        assert_eq!(c.message, "What is\nflowgate?");
        assert_eq!(c.history.len(), 2);
        assert!(c.stream && c.include_usage);
        let refused = |body: &str| Completion::parse(body.as_bytes()).unwrap_err();
        assert_eq!(refused("{").param, "");
        assert_eq!(refused(r#"{"messages":[]}"#).param, "model");
        assert_eq!(refused(r#"{"model":"a"}"#).param, "messages");
        assert_eq!(
            refused(r#"{"model":"a","messages":[{"role":"assistant","content":"x"}]}"#).param,
            "messages"
        );
        let image = refused(
            r#"{"model":"a","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert_eq!(image.param, "messages[0].content[0]");
        assert!(image.message.contains("image_url"), "{}", image.message);
        assert_eq!(
            refused(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#).param,
            "tools"
        );
        assert_eq!(
            refused(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"tool_choice":"required"}"#).param,
            "tool_choice"
        );
        assert!(
            Completion::parse(
                br#"{"model":"a","messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#
            )
            .is_ok()
        );
        assert_eq!(
            refused(r#"{"model":"a","messages":[{"role":"tool","content":"x"}]}"#).param,
            "messages[0].role"
        );
        assert_eq!(
            refused(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#)
                .param,
            "stream"
        );
    }

    #[test]
    fn a_stream_is_role_content_stop_usage_done_with_one_id() {
        let run_id = uuid::Uuid::new_v4();
        let mut c = Chunks::new(run_id, "assistant".into(), true, true);
        let done = json!({"type":"flow_completed","data":{"execution_time":0.03},"seq":22});
        let out = run(&mut c, &reference(done));
        assert_eq!(out.last().unwrap().data, "[DONE]");
        let chunks: Vec<Value> = out[..out.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(&p.data).unwrap())
            .collect();
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello from flowgate.");
        for c in &chunks {
            assert_eq!(c["id"], format!("chatcmpl-{run_id}"));
            assert_eq!(c["created"], chunks[0]["created"]);
            assert!(c.as_object().unwrap().contains_key("usage"));
        }
        let stop = &chunks[chunks.len() - 2];
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks.last().unwrap()["choices"], json!([]));
        assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 0);
        assert_eq!(out[1].id, Some(14), "the seq on the id: line");
        assert_eq!(c.finished.as_deref(), Some("Hello from flowgate."));
    }

    #[test]
    fn failures_and_cancels_are_error_events_without_done() {
        let mut c = Chunks::new(uuid::Uuid::new_v4(), "assistant".into(), true, false);
        let lost = json!({"type":"flow_error","data":{"error":"the connection to the execution engine was lost","code":"engine_lost"},"seq":16});
        let out = run(&mut c, &reference(lost));
        let last: Value = serde_json::from_str(&out.last().unwrap().data).unwrap();
        assert_eq!(last["error"]["code"], "engine_lost");
        assert_eq!(last["error"]["type"], "server_error");
        assert!(out.iter().all(|p| p.data != "[DONE]"));
        assert!(
            out.iter().all(|p| !p.data.contains("\"usage\"")),
            "no usage key unless asked"
        );
        let mut c = Chunks::new(uuid::Uuid::new_v4(), "assistant".into(), true, false);
        let cancelled =
            json!({"type":"flow_cancelled","data":{"reason":"cancelled by the client"},"seq":16});
        let out = run(&mut c, &reference(cancelled));
        let last: Value = serde_json::from_str(&out.last().unwrap().data).unwrap();
        assert_eq!(last["error"]["code"], "cancelled");
        assert!(out.iter().all(|p| !p.data.contains("\"stop\"")));
    }

    #[test]
    fn a_whole_answer_is_one_completion() {
        let mut c = Chunks::new(uuid::Uuid::new_v4(), "assistant".into(), false, false);
        let done = json!({"type":"flow_completed","data":{},"seq":22});
        let out = run(&mut c, &reference(done));
        assert_eq!(out.len(), 1);
        let v: Value = serde_json::from_str(&out[0].data).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hello from flowgate."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn error_kinds_follow_the_table() {
        assert_eq!(error_kind("unauthenticated").0, 401);
        assert_eq!(
            error_kind("agent_not_found"),
            (404, "invalid_request_error", "model_not_found".into())
        );
        assert_eq!(error_kind("too_many_runs").1, "rate_limit_error");
        assert_eq!(error_kind("engine_timeout").0, 503);
        assert_eq!(error_kind("engine_lost").0, 500);
    }
}
