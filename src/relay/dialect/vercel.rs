//! `vercel`: the AI SDK's UI message stream, protocol v1 (DIALECTS.md 4.3), so `useChat` /
//! `DefaultChatTransport` runs an agent at `POST /api/chat`.
//!
//! Every part is a strict object for the client (one unlisted key kills the stream), so
//! flowgate's own fields travel only in `messageMetadata` and `data-flowgate-*` parts. An LLM
//! element is a step (`start-step`/`finish-step`) with a text block `txt-<element_id>`; other
//! elements are transient `data-flowgate-element` parts. A chat (its `id`, per user) has at most
//! one run in progress: [`Chats`] knows it, so the resume route can replay the whole message and
//! follow it, and the stop route can cancel it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use uuid::Uuid;

use super::answer::{Answer, Piece};
use super::messages::{self, Role};
use super::{Payload, StreamEncoder};
use crate::relay::registry::Frame;

/// A checked `POST /api/chat` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub chat_id: String,
    /// `agentId` from the body (the transport's `body` option), if any.
    pub agent_id: Option<String>,
    pub message: String,
    pub history: Vec<Value>,
}

/// Chat ids: what a client may choose (the AI SDK makes 16-character ids).
fn check_chat_id(id: &str) -> Result<(), String> {
    if (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        Ok(())
    } else {
        Err("`id` (the chat id) must be 1 to 128 letters, digits, `-`, `_` or `.`".into())
    }
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<ChatRequest, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            format!("the body is not JSON ({e}): send {{\"id\":\"<chat id>\",\"messages\":[…]}}")
        })?;
        let Value::Object(obj) = v else {
            return Err("the body must be a JSON object".into());
        };
        let chat_id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or("`id` (the chat id) is missing")?
            .to_owned();
        check_chat_id(&chat_id)?;
        let agent_id = match obj.get("agentId") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => Some(a.clone()),
            Some(_) => return Err("`agentId` must be the id of the agent to run".into()),
        };
        match obj.get("trigger").and_then(Value::as_str) {
            None | Some("submit-message" | "regenerate-message") => {}
            Some(other) => {
                return Err(format!(
                    "`trigger` `{}` is not supported: send `submit-message` or `regenerate-message`",
                    other.chars().take(32).collect::<String>()
                ));
            }
        }
        let Some(Value::Array(list)) = obj.get("messages") else {
            return Err("`messages` must be a list of UI messages".into());
        };
        let mut parsed = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let role = Role::of(
                m["role"]
                    .as_str()
                    .ok_or_else(|| format!("messages[{i}].role is missing"))?,
            );
            let Some(parts) = m["parts"].as_array() else {
                return Err(format!("messages[{i}].parts must be a list of parts"));
            };
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p["type"].as_str() {
                    Some("text") => texts.push(p["text"].as_str().unwrap_or_default()),
                    Some("file") if role == Role::User => {
                        return Err(format!(
                            "messages[{i}].parts[{j}]: file parts are not supported: flowgate agents take text"
                        ));
                    }
                    // Reasoning, steps, sources, data and tool parts of earlier answers.
                    _ => {}
                }
            }
            parsed.push((role, texts.join("")));
        }
        // `regenerate-message` sends the history up to the user message to answer again: the
        // same split.
        let (message, history) = messages::split(parsed).ok_or_else(|| {
            "`messages` has no user message with text: the last one is what the agent answers"
                .to_owned()
        })?;
        Ok(ChatRequest {
            chat_id,
            agent_id,
            message,
            history,
        })
    }
}

/// Longest chat registry: the oldest entries are forgotten first.
pub const MAX_CHATS: usize = 100_000;

/// The run in progress of each chat (per user), for resume and stop.
#[derive(Debug, Default)]
pub struct Chats {
    inner: Mutex<ChatsInner>,
}

#[derive(Debug, Default)]
struct ChatsInner {
    runs: HashMap<(String, String), Uuid>,
    order: std::collections::VecDeque<(String, String)>,
}

impl Chats {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChatsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run last started in `chat` by `user`.
    pub fn run_of(&self, user: &str, chat: &str) -> Option<Uuid> {
        self.lock()
            .runs
            .get(&(user.to_owned(), chat.to_owned()))
            .copied()
    }

    /// Start the chat's next run with `start` (which gives the run and its id), unless its
    /// last run is still `busy`: then `Err` with that run's id. The check and the start are one
    /// step, so two requests for one chat never both start.
    pub fn start_if_idle<T>(
        &self,
        user: &str,
        chat: &str,
        busy: impl FnOnce(&Uuid) -> bool,
        start: impl FnOnce() -> (T, Uuid),
    ) -> Result<T, Uuid> {
        let key = (user.to_owned(), chat.to_owned());
        let mut inner = self.lock();
        if let Some(run) = inner.runs.get(&key)
            && busy(run)
        {
            return Err(*run);
        }
        let (started, run) = start();
        Self::insert(&mut inner, key, run);
        Ok(started)
    }

    fn insert(inner: &mut ChatsInner, key: (String, String), run: Uuid) {
        if inner.runs.insert(key.clone(), run).is_none() {
            inner.order.push_back(key);
            while inner.order.len() > MAX_CHATS {
                if let Some(old) = inner.order.pop_front() {
                    inner.runs.remove(&old);
                }
            }
        }
    }
}

/// A run's frames as UI message stream parts.
#[derive(Debug)]
pub struct UiParts {
    run_id: Uuid,
    agent_id: String,
    answer: Answer,
    /// The element whose step is open (an LLM element).
    step: Option<String>,
    /// The open text block's id.
    block: Option<String>,
    /// The element that ran last (owner of a `final_output`).
    element: String,
    blocks: usize,
    pub finished: Option<String>,
}

fn is_llm(element_type: &str) -> bool {
    element_type.starts_with("llm")
}

impl UiParts {
    pub fn new(run_id: Uuid, agent_id: String) -> UiParts {
        UiParts {
            run_id,
            agent_id,
            answer: Answer::default(),
            step: None,
            block: None,
            element: String::new(),
            blocks: 0,
            finished: None,
        }
    }

    fn metadata(&self) -> Value {
        json!({"run_id": self.run_id.to_string(), "agent_id": self.agent_id})
    }

    fn end_block(&mut self, out: &mut Vec<Value>) {
        if let Some(id) = self.block.take() {
            out.push(json!({"type": "text-end", "id": id}));
        }
    }

    fn delta(&mut self, id: String, text: &str, out: &mut Vec<Value>) {
        if self.block.as_deref() != Some(id.as_str()) {
            self.end_block(out);
            out.push(json!({"type": "text-start", "id": id}));
            self.block = Some(id.clone());
        }
        out.push(json!({"type": "text-delta", "id": id, "delta": text}));
    }

    /// Close the text block and the step.
    fn close(&mut self, out: &mut Vec<Value>) {
        self.end_block(out);
        if self.step.take().is_some() {
            out.push(json!({"type": "finish-step"}));
        }
    }

    fn element_part(data: &Value, state: &str, seq: u64) -> Value {
        json!({
            "type": "data-flowgate-element",
            "id": data["element_id"],
            "data": {
                "element_id": data["element_id"],
                "element_type": data["element_type"],
                "element_name": data["element_name"],
                "state": state,
                "seq": seq,
            },
            "transient": true,
        })
    }
}

impl StreamEncoder for UiParts {
    fn encode(&mut self, frame: &Frame) -> Vec<Payload> {
        let Ok(v) = serde_json::from_str::<Value>(frame.text.as_str()) else {
            return Vec::new();
        };
        let seq = frame.seq;
        let data = &v["data"];
        let element = data["element_id"].as_str().unwrap_or_default().to_owned();
        let mut out = Vec::new();
        let mut done = false;
        match v["type"].as_str().unwrap_or_default() {
            "flow_started" => out.push(json!({
                "type": "start",
                "messageId": format!("msg-{}", self.run_id),
                "messageMetadata": self.metadata(),
            })),
            "element_started" if !element.is_empty() => {
                self.element = element.clone();
                if is_llm(data["element_type"].as_str().unwrap_or_default()) {
                    self.close(&mut out);
                    out.push(json!({"type": "start-step"}));
                    self.step = Some(element);
                } else {
                    out.push(Self::element_part(data, "started", seq));
                }
            }
            kind @ ("element_completed" | "element_error") if !element.is_empty() => {
                if self.step.as_deref() == Some(element.as_str()) {
                    self.close(&mut out);
                } else {
                    let state = if kind == "element_error" {
                        "failed"
                    } else {
                        "completed"
                    };
                    out.push(Self::element_part(data, state, seq));
                }
            }
            "llm_chunk" => {
                if let Some(Piece::Delta(d)) = self
                    .answer
                    .chunk(data["content"].as_str().unwrap_or_default())
                {
                    self.delta(format!("txt-{element}"), &d, &mut out);
                }
            }
            "final_output" => {
                if let Some(full) = super::answer::text_output(data) {
                    match self.answer.final_output(&full) {
                        Some(Piece::Delta(d)) => {
                            let id = self
                                .block
                                .clone()
                                .unwrap_or_else(|| format!("txt-final-{}", self.element));
                            self.delta(id, &d, &mut out);
                        }
                        Some(Piece::Block(b)) => {
                            self.blocks += 1;
                            let id = format!("txt-final-{}-{}", self.element, self.blocks);
                            self.delta(id, &b, &mut out);
                            self.end_block(&mut out);
                        }
                        None => {}
                    }
                }
            }
            "flow_completed" => {
                self.close(&mut out);
                self.finished = Some(self.answer.full().to_owned());
                let mut meta = self.metadata();
                meta["last_seq"] = seq.into();
                out.push(
                    json!({"type": "finish", "finishReason": "stop", "messageMetadata": meta}),
                );
                done = true;
            }
            kind @ ("flow_error" | "error") => {
                let _ = kind;
                self.close(&mut out);
                let code = data["code"].as_str().unwrap_or("flow_error");
                let error = data["error"].as_str().unwrap_or("the run failed");
                out.push(json!({"type": "error", "errorText": format!("{code}: {error}")}));
                done = true;
            }
            "flow_cancelled" => {
                self.close(&mut out);
                let reason = data["reason"].as_str().unwrap_or("cancelled by the client");
                out.push(json!({"type": "abort", "reason": reason}));
                done = true;
            }
            _ => {}
        }
        let mut payloads: Vec<Payload> = out
            .into_iter()
            .map(|p| Payload::data(p.to_string()).with_id(seq))
            .collect();
        if done {
            payloads.push(Payload::data("[DONE]".into()));
        }
        payloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        super::super::frame_of(&v)
    }

    fn run(events: &[Value]) -> Vec<String> {
        let mut e = UiParts::new(Uuid::nil(), "assistant".into());
        events
            .iter()
            .flat_map(|v| e.encode(&frame(v.clone())))
            .map(|p| p.data)
            .collect()
    }

    fn reference(last: Value) -> Vec<Value> {
        vec![
            json!({"type":"flow_started","data":{},"seq":4}),
            json!({"type":"element_started","data":{"element_id":"start_1","element_type":"start","element_name":"Start"},"seq":5}),
            json!({"type":"element_completed","data":{"element_id":"start_1","element_type":"start","element_name":"Start"},"seq":7}),
            json!({"type":"element_started","data":{"element_id":"llm_1","element_type":"llm_text","element_name":"Assistant"},"seq":12}),
            json!({"type":"llm_chunk","data":{"element_id":"llm_1","content":"Hello"},"seq":14}),
            json!({"type":"llm_chunk","data":{"element_id":"llm_1","content":" from"},"seq":15}),
            json!({"type":"element_completed","data":{"element_id":"llm_1","element_type":"llm_text"},"seq":17}),
            json!({"type":"final_output","data":{"text_output":"Hello from"},"seq":19}),
            last,
        ]
    }

    fn types(parts: &[String]) -> Vec<String> {
        parts
            .iter()
            .map(|p| {
                if p == "[DONE]" {
                    return p.clone();
                }
                serde_json::from_str::<Value>(p).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn a_run_is_start_steps_text_blocks_finish_done() {
        let done = json!({"type":"flow_completed","data":{},"seq":22});
        let out = run(&reference(done));
        assert_eq!(
            types(&out),
            [
                "start",
                "data-flowgate-element",
                "data-flowgate-element",
                "start-step",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "finish-step",
                "finish",
                "[DONE]"
            ]
        );
        let start: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(start["messageId"], format!("msg-{}", Uuid::nil()));
        let delta: Value = serde_json::from_str(&out[5]).unwrap();
        assert_eq!(
            delta,
            json!({"type":"text-delta","id":"txt-llm_1","delta":"Hello"})
        );
        let finish: Value = serde_json::from_str(&out[9]).unwrap();
        assert_eq!(finish["messageMetadata"]["last_seq"], 22);
    }

    #[test]
    fn errors_and_cancels_close_the_blocks_first() {
        let mut events = reference(json!({}));
        events.truncate(6);
        events.push(
            json!({"type":"flow_error","data":{"error":"lost","code":"engine_lost"},"seq":16}),
        );
        let out = run(&events);
        let t = types(&out);
        assert_eq!(
            t[t.len() - 4..],
            ["text-end", "finish-step", "error", "[DONE]"]
        );
        let err: Value = serde_json::from_str(&out[out.len() - 2]).unwrap();
        assert_eq!(err, json!({"type":"error","errorText":"engine_lost: lost"}));
        events.pop();
        events.push(
            json!({"type":"flow_cancelled","data":{"reason":"cancelled by the client"},"seq":16}),
        );
        let out = run(&events);
        assert_eq!(types(&out)[out.len() - 2], "abort");
    }

    #[test]
    fn the_request_and_the_chats() {
        let r = ChatRequest::parse(
            br#"{"id":"chat-2b7f","messages":[{"id":"m0","role":"user","parts":[{"type":"text","text":"Hi"}]},{"id":"m1","role":"assistant","parts":[{"type":"step-start"},{"type":"text","text":"Hello!","state":"done"}]},{"id":"m2","role":"user","parts":[{"type":"text","text":"What is flowgate?"}]}],"trigger":"submit-message","agentId":"assistant"}"#,
        )
        .unwrap();
        assert_eq!(r.chat_id, "chat-2b7f");
        assert_eq!(r.agent_id.as_deref(), Some("assistant"));
        assert_eq!(r.message, "What is flowgate?");
        assert_eq!(r.history.len(), 2);
        assert!(
            ChatRequest::parse(br#"{"id":"c","messages":[{"role":"user","parts":[{"type":"file","url":"x","mediaType":"image/png"}]}]}"#)
                .unwrap_err()
                .contains("messages[0].parts[0]")
        );
        assert!(ChatRequest::parse(br#"{"id":"a b","messages":[]}"#).is_err());
        let chats = Chats::default();
        let run = Uuid::new_v4();
        assert_eq!(
            chats.start_if_idle("alice", "c1", |_| true, || ((), run)),
            Ok(())
        );
        assert_eq!(chats.run_of("alice", "c1"), Some(run));
        assert_eq!(chats.run_of("bob", "c1"), None, "chats are per user");
        // Busy: refused with the running run; idle: the next run takes its place.
        assert_eq!(
            chats.start_if_idle("alice", "c1", |_| true, || ((), Uuid::nil())),
            Err(run)
        );
        let next = Uuid::new_v4();
        assert_eq!(
            chats.start_if_idle("alice", "c1", |_| false, || ((), next)),
            Ok(())
        );
        assert_eq!(chats.run_of("alice", "c1"), Some(next));
    }
}
