//! `adk` over HTTP: the ADK web server's session routes, `POST /run_sse` and `POST /run`
//! (DIALECTS.md 2.4.2), what ovara serves and barka's backend calls. This module holds the
//! dialect's parts that know nothing of HTTP: the request, the sessions and the event encoder;
//! `http::adk` serves them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::answer::{Answer, Piece};
use super::{Payload, StreamEncoder};
use crate::relay::registry::Frame;

/// Most sessions per user, and in all (the oldest of a user is refused past that: ADK sessions
/// are created explicitly, so a client that never deletes its sessions is told so).
pub const MAX_SESSIONS_PER_USER: usize = 100;
pub const MAX_SESSIONS: usize = 100_000;

/// An ADK `Session` as the routes answer it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub app_name: String,
    pub user_id: String,
    pub state: Value,
    pub last_update_time: f64,
}

impl Session {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "appName": self.app_name,
            "userId": self.user_id,
            "state": self.state,
            "events": [],
            "lastUpdateTime": self.last_update_time,
        })
    }

    /// The conversation-memory key of the session.
    pub fn conversation(&self) -> String {
        format!("adk-session:{}:{}", self.app_name, self.id)
    }
}

/// Why a session route refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    Exists,
    TooMany(usize),
}

/// The sessions of this gateway, by (app, user, id); in memory like the conversation memory.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<(String, String, String), Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a session (a new random id when `id` is `None`).
    pub fn create(
        &self,
        app: &str,
        user: &str,
        id: Option<&str>,
        state: Value,
    ) -> Result<Session, SessionError> {
        let id = id.map_or_else(
            || format!("s-{}", uuid::Uuid::new_v4().simple()),
            str::to_owned,
        );
        let key = (app.to_owned(), user.to_owned(), id.clone());
        let mut all = self.lock();
        if all.contains_key(&key) {
            return Err(SessionError::Exists);
        }
        let mine = all.keys().filter(|(_, u, _)| u == user).count();
        if mine >= MAX_SESSIONS_PER_USER {
            return Err(SessionError::TooMany(MAX_SESSIONS_PER_USER));
        }
        if all.len() >= MAX_SESSIONS {
            return Err(SessionError::TooMany(MAX_SESSIONS));
        }
        let session = Session {
            id,
            app_name: app.to_owned(),
            user_id: user.to_owned(),
            state,
            last_update_time: now_secs(),
        };
        all.insert(key, session.clone());
        Ok(session)
    }

    pub fn get(&self, app: &str, user: &str, id: &str) -> Result<Session, SessionError> {
        self.lock()
            .get(&(app.to_owned(), user.to_owned(), id.to_owned()))
            .cloned()
            .ok_or(SessionError::NotFound)
    }

    pub fn delete(&self, app: &str, user: &str, id: &str) -> Result<(), SessionError> {
        self.lock()
            .remove(&(app.to_owned(), user.to_owned(), id.to_owned()))
            .map(|_| ())
            .ok_or(SessionError::NotFound)
    }

    /// Mark a session used now.
    pub fn touch(&self, app: &str, user: &str, id: &str) {
        if let Some(s) = self
            .lock()
            .get_mut(&(app.to_owned(), user.to_owned(), id.to_owned()))
        {
            s.last_update_time = now_secs();
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// ADK's `RunAgentRequest`, camelCase or snake_case.
#[derive(Debug, Deserialize)]
pub struct RunAgentRequest {
    #[serde(alias = "app_name", rename = "appName")]
    pub app_name: String,
    #[serde(alias = "user_id", rename = "userId")]
    pub user_id: String,
    #[serde(alias = "session_id", rename = "sessionId")]
    pub session_id: String,
    #[serde(alias = "new_message", rename = "newMessage")]
    pub new_message: Content,
    #[serde(default)]
    pub streaming: bool,
    /// Accepted and ignored.
    #[serde(default, alias = "state_delta", rename = "stateDelta")]
    pub state_delta: Option<Value>,
    #[serde(default, alias = "invocation_id", rename = "invocationId")]
    pub invocation_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<Map<String, Value>>,
}

impl RunAgentRequest {
    /// Read a request body; the error names the field and what to send.
    pub fn parse(body: &[u8]) -> Result<RunAgentRequest, String> {
        serde_json::from_slice(body).map_err(|e| {
            format!(
                "invalid RunAgentRequest ({e}): send {{\"appName\", \"userId\", \"sessionId\", \"newMessage\": {{\"role\": \"user\", \"parts\": [{{\"text\": \"…\"}}]}}, \"streaming\"}}"
            )
        })
    }

    /// The message: the text parts joined; any other part is refused.
    pub fn text(&self) -> Result<String, String> {
        let mut text = String::new();
        for (i, part) in self.new_message.parts.iter().enumerate() {
            match part.get("text") {
                Some(Value::String(t)) if part.len() == 1 || only_text_keys(part) => {
                    text.push_str(t)
                }
                _ => {
                    let kind = part.keys().next().map(String::as_str).unwrap_or("empty");
                    return Err(format!(
                        "newMessage.parts[{i}] is `{kind}`: only text parts are supported"
                    ));
                }
            }
        }
        if text.trim().is_empty() {
            return Err("newMessage has no text: send parts [{\"text\": \"…\"}]".into());
        }
        Ok(text)
    }
}

/// A text part may carry ADK's own null-valued keys (`thought`, …) next to `text`.
fn only_text_keys(part: &Map<String, Value>) -> bool {
    part.iter().all(|(k, v)| k == "text" || v.is_null())
}

/// Run events → ADK `Event` JSON: a partial event per text delta (when streaming), then one
/// final event with the whole answer; an error after `flow_started` is `{"error": "code:
/// sentence"}`. flowgate's fields live only in `customMetadata` (ADK's `Event` rejects unknown
/// keys).
#[derive(Debug)]
pub struct AdkEvents {
    author: String,
    streaming: bool,
    answer: Answer,
    /// The answer once the run completed or was cancelled (for the conversation memory).
    pub finished: Option<String>,
}

impl AdkEvents {
    pub fn new(author: String, streaming: bool) -> AdkEvents {
        AdkEvents {
            author,
            streaming,
            answer: Answer::default(),
            finished: None,
        }
    }

    fn event(&self, v: &Value, text: &str, extra: &[(&str, Value)]) -> String {
        let run_id = v["run_id"].as_str().unwrap_or_default();
        let seq = v["seq"].as_u64().unwrap_or_default();
        let mut e = Map::new();
        e.insert(
            "content".into(),
            json!({"parts": [{"text": text}], "role": "model"}),
        );
        for (k, val) in extra {
            e.insert((*k).into(), val.clone());
        }
        e.insert("invocationId".into(), format!("e-{run_id}").into());
        e.insert("author".into(), self.author.clone().into());
        e.insert(
            "id".into(),
            format!("ev-{seq}-{}", run_id.get(..8).unwrap_or(run_id)).into(),
        );
        e.insert("timestamp".into(), now_secs().into());
        e.insert(
            "customMetadata".into(),
            json!({"flowgate_run_id": run_id, "flowgate_seq": seq}),
        );
        Value::Object(e).to_string()
    }
}

impl StreamEncoder for AdkEvents {
    fn encode(&mut self, frame: &Frame) -> Vec<Payload> {
        self.encode_text(frame)
            .into_iter()
            .map(Payload::data)
            .collect()
    }
}

impl AdkEvents {
    fn encode_text(&mut self, frame: &Frame) -> Vec<String> {
        let Ok(v) = serde_json::from_str::<Value>(frame.text.as_str()) else {
            return Vec::new();
        };
        let data = &v["data"];
        let partial = |this: &AdkEvents, text: &str| {
            if this.streaming {
                vec![this.event(&v, text, &[("partial", true.into())])]
            } else {
                Vec::new()
            }
        };
        match v["type"].as_str().unwrap_or_default() {
            "llm_chunk" => match self
                .answer
                .chunk(data["content"].as_str().unwrap_or_default())
            {
                Some(Piece::Delta(d)) => partial(self, &d),
                _ => Vec::new(),
            },
            "final_output" => {
                let Some(full) = super::answer::text_output(data) else {
                    return Vec::new();
                };
                match self.answer.final_output(&full) {
                    Some(Piece::Delta(d)) => partial(self, &d),
                    Some(Piece::Block(b)) => partial(self, &format!("\n\n{b}")),
                    None => Vec::new(),
                }
            }
            "flow_completed" => {
                let full = self.answer.full().to_owned();
                self.finished = Some(full.clone());
                vec![self.event(&v, &full, &[("turnComplete", true.into())])]
            }
            "flow_cancelled" => {
                let full = self.answer.full().to_owned();
                self.finished = Some(full.clone());
                vec![self.event(
                    &v,
                    &full,
                    &[("turnComplete", true.into()), ("interrupted", true.into())],
                )]
            }
            "flow_error" | "error" => {
                let code = data["code"].as_str().unwrap_or("flow_error");
                let sentence = data["error"].as_str().unwrap_or("the run failed");
                vec![json!({"error": format!("{code}: {sentence}")}).to_string()]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    fn frame(v: Value) -> Frame {
        Frame {
            seq: v["seq"].as_u64().unwrap(),
            text: Utf8Bytes::from(v.to_string()),
            chunk: v["type"] == "llm_chunk",
            received: std::time::Instant::now(),
            end: None,
        }
    }

    #[test]
    fn both_key_styles_parse_and_only_text_parts_are_accepted() {
        let camel = br#"{"appName":"assistant","userId":"u","sessionId":"s","newMessage":{"role":"user","parts":[{"text":"What is "},{"text":"flowgate?"}]},"streaming":true}"#;
        let r = RunAgentRequest::parse(camel).unwrap();
        assert_eq!(r.text().unwrap(), "What is flowgate?");
        assert!(r.streaming);
        let snake = br#"{"app_name":"assistant","user_id":"u","session_id":"s","new_message":{"parts":[{"text":"hi"}]}}"#;
        assert_eq!(RunAgentRequest::parse(snake).unwrap().text().unwrap(), "hi");
        let image = br#"{"appName":"a","userId":"u","sessionId":"s","newMessage":{"parts":[{"inlineData":{"data":"AAAA"}}]}}"#;
        let e = RunAgentRequest::parse(image).unwrap().text().unwrap_err();
        assert!(e.contains("inlineData"), "{e}");
        assert!(
            RunAgentRequest::parse(b"{}")
                .unwrap_err()
                .contains("appName")
        );
    }

    #[test]
    fn partials_then_one_final_event_with_the_whole_answer() {
        let mut e = AdkEvents::new("assistant".into(), true);
        let run = "7d1c0a52-3f4e-4b8a-9c2d-1e5f6a7b8c9d";
        let mut out = Vec::new();
        for v in [
            json!({"type":"llm_chunk","data":{"content":"Hello"},"run_id":run,"seq":14}),
            json!({"type":"final_output","data":{"text_output":"Hello from flowgate."},"run_id":run,"seq":20}),
            json!({"type":"flow_completed","data":{},"run_id":run,"seq":22}),
        ] {
            out.extend(e.encode(&frame(v)).into_iter().map(|p| p.data));
        }
        let events: Vec<Value> = out
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["partial"], true);
        assert_eq!(events[1]["content"]["parts"][0]["text"], " from flowgate.");
        assert_eq!(
            events[2]["content"]["parts"][0]["text"],
            "Hello from flowgate."
        );
        assert_eq!(events[2]["turnComplete"], true);
        assert!(events[2].get("partial").is_none());
        assert_eq!(events[2]["invocationId"], format!("e-{run}"));
        assert_eq!(events[2]["id"], "ev-22-7d1c0a52");
        assert_eq!(events[2]["customMetadata"]["flowgate_seq"], 22);
        let mut quiet = AdkEvents::new("assistant".into(), false);
        let chunk = json!({"type":"llm_chunk","data":{"content":"Hi"},"run_id":run,"seq":3});
        assert!(
            quiet.encode(&frame(chunk)).is_empty(),
            "no partials unless streaming"
        );
    }
}
