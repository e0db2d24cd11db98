//! `copilot`: the OmniTrack AI copilot hook (DIALECTS.md 2.2) at `/copilot`; the user's guide is
//! docs/dialects.md.
//!
//! Client frames are `{"action":"message","message":"…","conversationId":…,"streaming":…}` (also
//! without `action`), `{"action":"ping"}` and flowgate's control frames with `action` or `type`.
//! A streaming turn is `typing`, `stream_start` just before the first text, `stream_token`s and
//! `stream_complete` (after a pause: the hook loses frames that arrive in one burst); a turn
//! cut after text is `stream_interrupted` with the partial response. A non-streaming turn is
//! `acknowledgment`, `message`, `complete`. Every frame has `timestamp` in epoch milliseconds.
//! Conversation ids are global and owned by the user who first used them.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value, json};

use super::Dialect;
use super::answer::{Answer, Piece};
use crate::relay::protocol::{BadFrame, ClientFrame, ErrorCode, RunRequest, TurnTag};
use crate::relay::registry::Frame;

/// Messages remembered for a turn's history (the original's window).
pub const HISTORY_WINDOW: usize = 5;

/// Messages queued behind a running turn: the hook queues messages while offline and sends them
/// all at once on reconnect; none may be lost.
pub const QUEUE_DEPTH: usize = 16;

/// The pause before `stream_complete` (DIALECTS.md rule 14).
pub const TURN_END_GAP: Duration = Duration::from_millis(20);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One `/copilot` socket.
#[derive(Debug, Default)]
pub struct Copilot {
    /// The current turn's conversation and form.
    conversation: String,
    streaming: bool,
    answer: Answer,
    started: bool,
    tokens: u64,
    finished: Option<String>,
    /// While merging (a lagging client, a replay): text chunks per `stream_token`, and the
    /// token being gathered (its text, the frame of its last chunk, chunks so far).
    merge: Option<usize>,
    pending: Option<(String, Value, usize)>,
}

impl Copilot {
    pub fn new() -> Copilot {
        Copilot {
            streaming: true,
            ..Copilot::default()
        }
    }

    /// A frame of the current turn: `type`, then its fields, `timestamp`, `run_id`, `seq`.
    fn frame(
        &self,
        kind: &str,
        fields: &[(&str, Value)],
        with_conversation: bool,
        v: &Value,
    ) -> Utf8Bytes {
        let mut m = Map::new();
        m.insert("type".into(), kind.into());
        for (k, val) in fields {
            m.insert((*k).into(), val.clone());
        }
        // Unknown only after a resume on a new socket that did not name it.
        if with_conversation && !self.conversation.is_empty() {
            m.insert("conversationId".into(), self.conversation.clone().into());
        }
        m.insert("timestamp".into(), now_ms().into());
        m.insert("run_id".into(), v["run_id"].clone());
        m.insert("seq".into(), v["seq"].clone());
        Value::Object(m).to_string().into()
    }

    fn text(&mut self, piece: Option<Piece>, v: &Value, out: &mut Vec<Utf8Bytes>) {
        let text = match piece {
            Some(Piece::Delta(d)) => d,
            Some(Piece::Block(b)) => format!("\n\n{b}"),
            None => return,
        };
        if !self.streaming {
            return;
        }
        if !self.started {
            self.started = true;
            out.push(self.frame("stream_start", &[("metadata", json!({}))], true, v));
        }
        if let Some(group) = self.merge {
            // Merged chunks carry the last `seq` they cover (DIALECTS.md rule 6).
            let (merged, last, count) = self
                .pending
                .get_or_insert_with(|| (String::new(), Value::Null, 0));
            merged.push_str(&text);
            *last = v.clone();
            *count += 1;
            if *count >= group {
                self.flush(out);
            }
            return;
        }
        self.tokens += 1;
        out.push(self.frame("stream_token", &[("token", text.into())], true, v));
    }

    /// Write the token being gathered, if any.
    fn flush(&mut self, out: &mut Vec<Utf8Bytes>) {
        if let Some((text, v, _)) = self.pending.take() {
            self.tokens += 1;
            out.push(self.frame("stream_token", &[("token", text.into())], true, &v));
        }
    }

    /// Encode `texts` with consecutive chunks merged, `group` per `stream_token`.
    fn merged<'a>(&mut self, texts: impl Iterator<Item = &'a str>, group: usize) -> Vec<Utf8Bytes> {
        self.merge = Some(group.max(1));
        let mut out = Vec::new();
        for t in texts {
            self.encode_text(t, &mut out);
        }
        self.flush(&mut out);
        self.merge = None;
        out
    }

    fn end(&mut self) {
        let answer = std::mem::take(&mut self.answer);
        self.finished = Some(answer.full().to_owned());
        self.started = false;
        self.tokens = 0;
    }
}

/// A replayed turn's text is sent as at most this many `stream_token`s (paced), never a whole
/// turn at once nor one frame per chunk (DIALECTS.md 2.2, pacing).
pub const REPLAY_TOKENS: usize = 4;

impl Dialect for Copilot {
    /// A lagging client gets each batch's chunks as one `stream_token` (the session paces the
    /// batches, [`Dialect::paces_bursts`]).
    fn encode(&mut self, batch: Vec<Frame>, lagging: bool) -> Vec<Utf8Bytes> {
        if lagging {
            return self.merged(batch.iter().map(|f| f.text.as_str()), usize::MAX);
        }
        let mut out = Vec::with_capacity(batch.len());
        for f in batch {
            self.encode_text(f.text.as_str(), &mut out);
        }
        out
    }

    fn encode_logged(&mut self, texts: Vec<Utf8Bytes>) -> Vec<Utf8Bytes> {
        let chunks = texts
            .iter()
            .filter(|t| t.as_str().contains("llm_chunk"))
            .count();
        self.merged(
            texts.iter().map(|t| t.as_str()),
            chunks.div_ceil(REPLAY_TOKENS),
        )
    }

    fn paces_bursts(&self) -> bool {
        true
    }

    fn decode(&mut self, text: &str) -> Result<ClientFrame, BadFrame> {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            BadFrame(format!(
                "not JSON ({e}): send {{\"action\":\"message\",\"message\":\"…\"}}"
            ))
        })?;
        let Value::Object(obj) = &v else {
            return Err(BadFrame("expected a JSON object".into()));
        };
        let action = obj
            .get("action")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str);
        match action {
            Some("message") => {}
            None if obj.contains_key("message") => {}
            Some("ping") => return Ok(ClientFrame::Ping),
            Some(op @ ("cancel" | "resume" | "auth")) => {
                // A resume on a new socket may name its conversation (for the reply frames).
                if op == "resume"
                    && let Some(Value::String(c)) = obj.get("conversationId")
                    && (1..=128).contains(&c.len())
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    self.conversation = c.clone();
                }
                // flowgate's control frames, with `action` in place of `type`.
                let mut native = obj.clone();
                native.remove("action");
                native.insert("type".into(), op.into());
                return ClientFrame::parse(&Value::Object(native).to_string());
            }
            Some(other) => {
                return Err(BadFrame(format!(
                    "unknown action `{}`: send {{\"action\":\"message\",\"message\":\"…\"}}",
                    other.chars().take(64).collect::<String>()
                )));
            }
            None => {
                return Err(BadFrame(
                    "`action` is missing: send {\"action\":\"message\",\"message\":\"…\"}".into(),
                ));
            }
        }
        let message = match obj.get("message") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => return Err(BadFrame("`message` must be the message text".into())),
        };
        let conversation = match obj.get("conversationId") {
            None | Some(Value::Null) => format!("conv_{}", uuid::Uuid::new_v4().simple()),
            Some(Value::String(c))
                if (1..=128).contains(&c.len())
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                c.clone()
            }
            Some(_) => {
                return Err(BadFrame(
                    "`conversationId` must be null or 1 to 128 letters, digits, `-`, `_`, `.`"
                        .into(),
                ));
            }
        };
        let streaming = match obj.get("streaming") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(BadFrame("`streaming` must be true or false".into())),
        };
        Ok(ClientFrame::Run(Box::new(RunRequest {
            message: Some(message),
            tag: Some(TurnTag {
                conversation: Some(conversation),
                streaming,
                ..TurnTag::default()
            }),
            ..RunRequest::default()
        })))
    }

    fn encode_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let data = &v["data"];
        let kind = v["type"].as_str().unwrap_or_default();
        if !matches!(kind, "llm_chunk" | "final_output") {
            // Anything but text ends the token being gathered first (order is kept).
            self.flush(out);
        }
        match kind {
            "status" if v["seq"] == 1 => {
                if self.streaming {
                    out.push(self.frame("typing", &[], false, &v));
                } else {
                    let message = data["message"].clone();
                    out.push(self.frame("acknowledgment", &[("message", message)], false, &v));
                }
            }
            "llm_chunk" => {
                let piece = self
                    .answer
                    .chunk(data["content"].as_str().unwrap_or_default());
                self.text(piece, &v, out);
            }
            "final_output" => {
                let Some(full) = super::answer::text_output(data) else {
                    return;
                };
                let piece = self.answer.final_output(&full);
                self.text(piece, &v, out);
            }
            "flow_completed" => {
                if self.streaming {
                    if !self.started {
                        out.push(self.frame("stream_start", &[("metadata", json!({}))], true, &v));
                    }
                    let meta = json!({"tokenCount": self.tokens, "actionSuccess": true});
                    out.push(self.frame("stream_complete", &[("metadata", meta)], true, &v));
                } else {
                    let ms =
                        (data["execution_time"].as_f64().unwrap_or(0.0) * 1000.0).round() as u64;
                    let meta = json!({"actionSuccess": true, "executionTime": ms});
                    let content = Value::from(self.answer.full());
                    out.push(self.frame(
                        "message",
                        &[("content", content), ("metadata", meta)],
                        true,
                        &v,
                    ));
                    out.push(self.frame("complete", &[], true, &v));
                }
                self.end();
            }
            kind @ ("flow_error" | "error" | "flow_cancelled") => {
                let (code, error) = if kind == "flow_cancelled" {
                    (
                        "cancelled".to_owned(),
                        data["reason"].as_str().unwrap_or("cancelled").to_owned(),
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
                let partial = self.answer.full().to_owned();
                if self.streaming && self.started {
                    out.push(self.frame(
                        "stream_interrupted",
                        &[
                            ("error", error.into()),
                            ("partialResponse", partial.into()),
                            ("code", code.into()),
                        ],
                        true,
                        &v,
                    ));
                } else {
                    let mut fields = vec![("error", Value::from(error)), ("code", code.into())];
                    if !partial.is_empty() {
                        fields.push(("partial_output", partial.into()));
                    }
                    out.push(self.frame("error", &fields, false, &v));
                }
                self.end();
            }
            _ => {}
        }
    }

    fn error(&mut self, code: ErrorCode, message: &str) -> Vec<Utf8Bytes> {
        vec![
            json!({"type": "error", "error": message, "timestamp": now_ms(), "code": code.as_str()})
                .to_string()
                .into(),
        ]
    }

    fn begin_turn(&mut self, tag: Option<&TurnTag>) {
        if let Some(tag) = tag {
            self.conversation = tag.conversation.clone().unwrap_or_default();
            self.streaming = tag.streaming;
        }
        self.answer = Answer::default();
        self.started = false;
        self.tokens = 0;
    }

    fn conversation(&self) -> Option<&str> {
        (!self.conversation.is_empty()).then_some(self.conversation.as_str())
    }

    fn owned_conversations(&self) -> bool {
        true
    }

    fn history_window(&self) -> usize {
        HISTORY_WINDOW
    }

    fn turn_end_gap(&self) -> Option<Duration> {
        Some(TURN_END_GAP)
    }

    fn pong(&mut self) -> Option<Utf8Bytes> {
        Some(
            json!({"type": "pong", "timestamp": now_ms()})
                .to_string()
                .into(),
        )
    }

    fn take_answer(&mut self) -> Option<String> {
        self.finished.take()
    }

    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(streaming: bool, events: &[Value]) -> Vec<Value> {
        let mut d = Copilot::new();
        d.begin_turn(Some(&TurnTag {
            conversation: Some("conv_1".into()),
            streaming,
            ..TurnTag::default()
        }));
        super::super::encode_values(&mut d, events)
    }

    fn reference(last: Value) -> Vec<Value> {
        vec![
            json!({"type":"status","data":{"message":"Retrieving workflow..."},"run_id":"r","seq":1}),
            json!({"type":"flow_started","data":{},"run_id":"r","seq":4}),
            json!({"type":"llm_chunk","data":{"content":"Hello"},"run_id":"r","seq":14}),
            json!({"type":"llm_chunk","data":{"content":" from"},"run_id":"r","seq":15}),
            last,
        ]
    }

    #[test]
    fn a_streaming_turn_and_a_whole_one() {
        let done =
            json!({"type":"flow_completed","data":{"execution_time":0.031},"run_id":"r","seq":22});
        let out = turn(true, &reference(done.clone()));
        let types: Vec<&str> = out.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "typing",
                "stream_start",
                "stream_token",
                "stream_token",
                "stream_complete"
            ]
        );
        assert_eq!(
            out[4]["metadata"],
            json!({"tokenCount": 2, "actionSuccess": true})
        );
        assert_eq!(out[2]["conversationId"], "conv_1");
        assert!(
            out[0]["timestamp"].as_u64().unwrap() > 1_700_000_000_000,
            "milliseconds"
        );
        let out = turn(false, &reference(done));
        let types: Vec<&str> = out.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["acknowledgment", "message", "complete"]);
        assert_eq!(out[0]["message"], "Retrieving workflow...");
        assert_eq!(out[1]["content"], "Hello from");
        assert_eq!(out[1]["metadata"]["executionTime"], 31);
    }

    #[test]
    fn a_lagging_batch_is_one_token_and_a_replay_a_few() {
        let done = json!({"type":"flow_completed","data":{},"run_id":"r","seq":40});
        let mut events = reference(done);
        let last = events.pop().unwrap();
        for i in 0..10 {
            events.push(json!({"type":"llm_chunk","data":{"content":format!(" {i}")},"run_id":"r","seq":20 + i}));
        }
        events.push(last);
        let texts: Vec<Utf8Bytes> = events.iter().map(|e| e.to_string().into()).collect();
        let tagged = || {
            let mut d = Copilot::new();
            d.begin_turn(Some(&TurnTag {
                conversation: Some("conv_1".into()),
                streaming: true,
                ..TurnTag::default()
            }));
            d
        };
        let frames = |out: Vec<Utf8Bytes>| -> Vec<Value> {
            out.iter()
                .map(|t| serde_json::from_str(t.as_str()).unwrap())
                .collect()
        };
        let batch: Vec<Frame> = texts
            .iter()
            .map(|t| Frame {
                seq: 0,
                text: t.clone(),
                chunk: false,
                received: std::time::Instant::now(),
                end: None,
            })
            .collect();
        let out = frames(tagged().encode(batch, true));
        let types: Vec<&str> = out.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["typing", "stream_start", "stream_token", "stream_complete"]
        );
        assert_eq!(out[2]["token"], "Hello from 0 1 2 3 4 5 6 7 8 9");
        assert_eq!(out[2]["seq"], 29, "a merged token carries its last seq");
        assert_eq!(out[3]["metadata"]["tokenCount"], 1);

        let out = frames(tagged().encode_logged(texts));
        let tokens: Vec<&str> = out
            .iter()
            .filter(|f| f["type"] == "stream_token")
            .map(|f| f["token"].as_str().unwrap())
            .collect();
        assert_eq!(tokens.len(), REPLAY_TOKENS);
        assert_eq!(tokens.concat(), "Hello from 0 1 2 3 4 5 6 7 8 9");
        assert_eq!(out.last().unwrap()["type"], "stream_complete");
    }

    #[test]
    fn interruptions_keep_the_partial_response() {
        let lost = json!({"type":"flow_error","data":{"error":"lost","code":"engine_lost"},"run_id":"r","seq":16});
        let out = turn(true, &reference(lost.clone()));
        let last = out.last().unwrap();
        assert_eq!(last["type"], "stream_interrupted");
        assert_eq!(last["partialResponse"], "Hello from");
        assert_eq!(last["code"], "engine_lost");
        let out = turn(false, &reference(lost));
        assert_eq!(out.last().unwrap()["type"], "error");
        assert_eq!(out.last().unwrap()["partial_output"], "Hello from");
        let early = json!({"type":"flow_error","data":{"error":"down","code":"engine_unavailable"},"run_id":"r","seq":4});
        let out = turn(true, &[early]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["type"], "error");
        assert!(out[0].get("conversationId").is_none());
        let cancelled = json!({"type":"flow_cancelled","data":{"reason":"cancelled by the client"},"run_id":"r","seq":16});
        let out = turn(true, &reference(cancelled));
        assert_eq!(out.last().unwrap()["code"], "cancelled");
        assert_eq!(out.last().unwrap()["type"], "stream_interrupted");
    }

    #[test]
    fn frames_with_or_without_action_and_the_control_frames() {
        let mut d = Copilot::new();
        let ClientFrame::Run(r) = d
            .decode(
                r#"{"action":"message","message":"hi","conversationId":null,"streaming":false}"#,
            )
            .unwrap()
        else {
            panic!()
        };
        let tag = r.tag.unwrap();
        assert!(tag.conversation.unwrap().starts_with("conv_"));
        assert!(!tag.streaming);
        assert!(matches!(
            d.decode(r#"{"message":"no action"}"#),
            Ok(ClientFrame::Run(_))
        ));
        assert!(matches!(
            d.decode(r#"{"action":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        assert!(matches!(
            d.decode(r#"{"action":"cancel"}"#),
            Ok(ClientFrame::Cancel)
        ));
        assert!(matches!(
            d.decode(r#"{"type":"cancel"}"#),
            Ok(ClientFrame::Cancel)
        ));
        assert!(
            d.decode(r#"{"action":"subscribe","topic":"x"}"#)
                .unwrap_err()
                .0
                .contains("subscribe")
        );
        assert!(
            d.decode(r#"{"action":"message","message":"x","conversationId":"../etc"}"#)
                .is_err()
        );
    }
}
