//! `adk`: the WebSocket `/ws/{client_id}` of the barka frontend → ovara agent pair (a Google ADK
//! derivative), DIALECTS.md section 2.4.1; the user's guide is docs/dialects.md.
//!
//! Client frames are `{"mime_type":"text/plain","data":"…","role":"user"}` (`role` optional);
//! flowgate's control frames (`cancel`, `resume`, `auth`) are understood too. Server frames are
//! `{mime_type, data, role:"model", partial, turn_complete}` plus top-level `run_id`, `seq` and,
//! on errors, `error_code`: a partial text frame per delta, and a turn that ends with one full
//! text frame (`data:""`, `turn_complete:true`, `interrupted` false or true). The dialect has no
//! error frame: an error is model text followed by an interrupted terminal. Refusals close with
//! 1000, the code barka treats as final (on 4401 it reconnected every 2 s forever).

use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value, json};

use super::Dialect;
use super::answer::{Answer, Piece};
use crate::close::CloseCode;
use crate::relay::protocol::{BadFrame, ClientFrame, ErrorCode, RunRequest};

/// Where an `adk` socket belongs: the path's client id and the query's conversation id.
#[derive(Debug, Clone)]
pub struct AdkSocket {
    pub client_id: String,
    pub conversation_id: String,
}

/// One `adk` socket's encoder and decoder.
#[derive(Debug)]
pub struct Adk {
    socket: AdkSocket,
    /// The memory key: client and conversation (the user is added by the memory).
    conversation: String,
    answer: Answer,
    /// The turn's answer, set when its terminal was encoded.
    finished: Option<String>,
}

impl Adk {
    pub fn new(socket: AdkSocket) -> Adk {
        let conversation = format!("adk:{}:{}", socket.client_id, socket.conversation_id);
        Adk {
            socket,
            conversation,
            answer: Answer::default(),
            finished: None,
        }
    }

    fn text(data: &str, partial: bool, stamp: Option<(&Value, &Value)>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mime_type".into(), "text/plain".into());
        m.insert("data".into(), data.into());
        m.insert("role".into(), "model".into());
        m.insert("partial".into(), partial.into());
        m.insert("turn_complete".into(), false.into());
        if let Some((run_id, seq)) = stamp {
            m.insert("run_id".into(), run_id.clone());
            m.insert("seq".into(), seq.clone());
        }
        m
    }

    fn terminal(
        interrupted: bool,
        error_code: Option<&str>,
        stamp: Option<(&Value, &Value)>,
    ) -> Utf8Bytes {
        let mut m = Adk::text("", false, stamp);
        m.insert("turn_complete".into(), true.into());
        m.insert("interrupted".into(), interrupted.into());
        if let Some(code) = error_code {
            m.insert("error_code".into(), code.into());
        }
        Value::Object(m).to_string().into()
    }

    /// The error pair: the sentence as model text, then the interrupted terminal.
    fn error_pair(
        &self,
        code: &str,
        sentence: &str,
        stamp: Option<(&Value, &Value)>,
    ) -> [Utf8Bytes; 2] {
        let data = if self.answer.has_text() {
            format!("\n\n{sentence}")
        } else {
            sentence.to_owned()
        };
        let mut m = Adk::text(&data, false, stamp);
        m.insert("error_code".into(), code.into());
        [
            Value::Object(m).to_string().into(),
            Adk::terminal(true, Some(code), stamp),
        ]
    }

    fn end_turn(&mut self) {
        let answer = std::mem::take(&mut self.answer);
        self.finished = Some(answer.full().to_owned());
    }
}

impl Dialect for Adk {
    fn decode(&mut self, text: &str) -> Result<ClientFrame, BadFrame> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            BadFrame(format!(
                "not JSON ({e}): send {{\"mime_type\":\"text/plain\",\"data\":\"<your message>\"}}"
            ))
        })?;
        let Value::Object(obj) = &value else {
            return Err(BadFrame(
                "expected a JSON object: {\"mime_type\":\"text/plain\",\"data\":\"<your message>\"}"
                    .into(),
            ));
        };
        // flowgate's control frames (cancel, resume, auth) next to the ADK ones.
        if obj.contains_key("type") && !obj.contains_key("mime_type") {
            if obj.get("type").and_then(Value::as_str) == Some("ping") {
                return Ok(ClientFrame::Ping);
            }
            return ClientFrame::parse(text);
        }
        let mime = match obj.get("mime_type") {
            Some(Value::String(m)) => m.as_str(),
            Some(_) => return Err(BadFrame("`mime_type` must be a string".into())),
            None => {
                return Err(BadFrame(
                    "`mime_type` is missing: send {\"mime_type\":\"text/plain\",\"data\":\"<your message>\"}"
                        .into(),
                ));
            }
        };
        if mime != "text/plain" {
            return Err(BadFrame(format!(
                "only text/plain is supported (this frame is `{}`)",
                mime.chars().take(64).collect::<String>()
            )));
        }
        let Some(Value::String(data)) = obj.get("data") else {
            return Err(BadFrame(
                "`data` must be the message text (a string)".into(),
            ));
        };
        if data.trim().is_empty() {
            return Err(BadFrame("`data` is empty: send the message text".into()));
        }
        Ok(ClientFrame::Run(Box::new(RunRequest {
            message: Some(data.clone()),
            ..RunRequest::default()
        })))
    }

    /// One stamped run frame → the frames the client gets.
    fn encode_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let stamp = Some((&v["run_id"], &v["seq"]));
        let data = &v["data"];
        match v["type"].as_str().unwrap_or_default() {
            "llm_chunk" => {
                let content = data["content"].as_str().unwrap_or_default();
                if let Some(Piece::Delta(d)) = self.answer.chunk(content) {
                    out.push(Value::Object(Adk::text(&d, true, stamp)).to_string().into());
                }
            }
            "final_output" => {
                let streamed = self.answer.has_text();
                let Some(full) = super::answer::text_output(data) else {
                    return;
                };
                let frame = match self.answer.final_output(&full) {
                    None => return,
                    // Nothing streamed: the whole answer as one non-partial frame.
                    Some(Piece::Delta(d)) if !streamed => Adk::text(&d, false, stamp),
                    Some(Piece::Delta(d)) => Adk::text(&d, true, stamp),
                    Some(Piece::Block(b)) => Adk::text(&format!("\n\n{b}"), true, stamp),
                };
                out.push(Value::Object(frame).to_string().into());
            }
            "flow_completed" => {
                out.push(Adk::terminal(false, None, stamp));
                self.end_turn();
            }
            "flow_cancelled" => {
                out.push(Adk::terminal(true, None, stamp));
                self.end_turn();
            }
            "flow_error" | "error" => {
                let code = data["code"].as_str().unwrap_or("flow_error");
                let sentence = data["error"].as_str().unwrap_or("the run failed");
                out.extend(self.error_pair(code, sentence, stamp));
                self.end_turn();
            }
            // Status, element events, prompts: not shown in this dialect (they stay in the log).
            _ => {}
        }
    }

    fn error(&mut self, code: ErrorCode, message: &str) -> Vec<Utf8Bytes> {
        self.error_pair(code.as_str(), message, None).to_vec()
    }

    fn opening(&mut self) -> Vec<Utf8Bytes> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let s = &self.socket;
        let frame = json!({
            "type": "connection_established",
            "client_id": s.client_id,
            "conversation_id": s.conversation_id,
            "session_id": format!("{}_{}_{}", s.client_id, s.conversation_id, now.as_secs()),
            "connection_id": format!("{}_{}_{}", s.client_id, now.as_millis(), uuid::Uuid::new_v4().simple()),
        });
        vec![frame.to_string().into()]
    }

    fn close(&self, code: CloseCode, reason: &'static str) -> (CloseCode, &'static str) {
        match code {
            // barka reconnects on every code but 1000 and resets its retry counter on open:
            // a refused token must end its reconnects.
            CloseCode::Unauthenticated | CloseCode::Forbidden => (CloseCode::Normal, reason),
            other => (other, reason),
        }
    }

    fn conversation(&self) -> Option<&str> {
        Some(&self.conversation)
    }

    fn take_answer(&mut self) -> Option<String> {
        self.finished.take()
    }

    /// barka sends the next message without waiting for `turn_complete`: one waits its turn.
    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }
}

/// Messages queued behind a running turn (DIALECTS.md rule 9); one more is refused with the
/// error pair.
pub const QUEUE_DEPTH: usize = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn adk() -> Adk {
        Adk::new(AdkSocket {
            client_id: "665f1c2b9a7e4d0012ab34cd".into(),
            conversation_id: "c-41d2".into(),
        })
    }

    fn frames(d: &mut Adk, events: &[Value]) -> Vec<Value> {
        super::super::encode_values(d, events)
    }

    #[test]
    fn text_frames_start_a_run_and_other_mime_types_are_refused() {
        let mut d = adk();
        match d.decode(r#"{"mime_type":"text/plain","data":"What is flowgate?","role":"user"}"#) {
            Ok(ClientFrame::Run(r)) => assert_eq!(r.message.as_deref(), Some("What is flowgate?")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.decode(r#"{"mime_type":"text/plain","data":"no role"}"#),
            Ok(ClientFrame::Run(_))
        ));
        let e = d
            .decode(r#"{"mime_type":"audio/pcm","data":"AAAA"}"#)
            .unwrap_err();
        assert!(e.0.contains("only text/plain"), "{e}");
        assert!(matches!(
            d.decode(r#"{"type":"cancel"}"#),
            Ok(ClientFrame::Cancel)
        ));
        assert!(d.decode("not json").unwrap_err().0.contains("not JSON"));
        assert!(
            d.decode(r#"{"data":"x"}"#)
                .unwrap_err()
                .0
                .contains("mime_type")
        );
    }

    #[test]
    fn a_turn_streams_partials_and_ends_with_one_full_text_frame() {
        let mut d = adk();
        let out = frames(
            &mut d,
            &[
                json!({"type":"status","data":{"message":"x"},"run_id":"r","seq":1}),
                json!({"type":"llm_chunk","data":{"content":"Hello"},"run_id":"r","seq":14}),
                json!({"type":"llm_chunk","data":{"content":" from"},"run_id":"r","seq":15}),
                json!({"type":"final_output","data":{"text_output":"Hello from flowgate."},"run_id":"r","seq":20}),
                json!({"type":"flow_completed","data":{},"run_id":"r","seq":22}),
            ],
        );
        assert_eq!(out.len(), 4, "{out:#?}");
        assert_eq!(out[0]["data"], "Hello");
        assert_eq!(out[0]["partial"], true);
        assert_eq!(out[2]["data"], " flowgate.");
        assert_eq!(out[3]["turn_complete"], true);
        assert_eq!(out[3]["interrupted"], false);
        assert_eq!(out[3]["data"], "");
        assert_eq!(out[3]["seq"], 22);
        assert_eq!(d.take_answer().as_deref(), Some("Hello from flowgate."));
    }

    #[test]
    fn an_error_is_model_text_then_an_interrupted_terminal() {
        let mut d = adk();
        let out = frames(
            &mut d,
            &[
                json!({"type":"llm_chunk","data":{"content":"Hello"},"run_id":"r","seq":14}),
                json!({"type":"flow_error","data":{"error":"the connection to the execution engine was lost","code":"engine_lost"},"run_id":"r","seq":16}),
            ],
        );
        assert_eq!(
            out[1]["data"],
            "\n\nthe connection to the execution engine was lost"
        );
        assert_eq!(out[1]["error_code"], "engine_lost");
        assert_eq!(out[1]["turn_complete"], false);
        assert_eq!(out[2]["turn_complete"], true);
        assert_eq!(out[2]["interrupted"], true);
        assert_eq!(out[2]["error_code"], "engine_lost");
        let outside = d.error(ErrorCode::Unauthenticated, "the token has expired");
        let v: Value = serde_json::from_str(outside[1].as_str()).unwrap();
        assert!(v.get("run_id").is_none());
        assert_eq!(
            d.close(CloseCode::Unauthenticated, "x").0,
            CloseCode::Normal
        );
    }
}
