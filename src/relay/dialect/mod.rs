//! The seam between the run core and a client protocol.
//!
//! A session reads client frames through a [`Dialect`]'s decoder (frames → run request, cancel,
//! resume, auth) and writes every frame through its encoder (a run's stamped frames → the
//! protocol's frames). The run never knows which protocol its followers speak: it stamps
//! `run_id`/`seq` once, and each session encodes for its own socket.
//!
//! The native NeuraLabs protocol ([`NeuraLabs`]) is the identity encoding: the run's bytes are
//! written as they are (no re-serialising on the hot path); only a lagging client gets
//! consecutive `llm_chunk` frames merged. The other protocols ([`adk`], …) parse each stamped
//! frame and write their own shapes (DIALECTS.md, docs/dialects.md); [`answer`] assembles the
//! text those protocols show.

pub mod adk;
pub mod adk_http;
pub mod agui;
pub mod answer;
pub mod citizen;
pub mod copilot;
pub mod messages;
pub mod omni2;
pub mod openai;
pub mod vercel;

use axum::extract::ws::Utf8Bytes;
use serde_json::json;

use super::protocol::{self, BadFrame, ClientFrame, CloseCode, ErrorCode, TurnTag};
use super::registry::Frame;

/// A client protocol: how client frames are read and how frames are written.
pub trait Dialect: Send + 'static {
    /// Read one client text frame.
    fn decode(&mut self, text: &str) -> Result<ClientFrame, BadFrame>;

    /// The frames to write for one stamped run frame (its JSON text): what a dialect that
    /// re-encodes every frame implements; [`Dialect::encode`] and [`Dialect::encode_logged`]
    /// call it for each frame.
    fn encode_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) {
        out.push(Utf8Bytes::from(text.to_owned()));
    }

    /// The frames to write for a batch of a run's frames, in order. `lagging` is true when the
    /// client is more than `--merge-lag` frames behind (the dialect may merge frames then).
    fn encode(&mut self, batch: Vec<Frame>, _lagging: bool) -> Vec<Utf8Bytes> {
        let mut out = Vec::with_capacity(batch.len());
        for f in batch {
            self.encode_text(f.text.as_str(), &mut out);
        }
        out
    }

    /// The frames to write for frames replayed from the run log (a run's stamped frames, in
    /// `seq` order).
    fn encode_logged(&mut self, texts: Vec<Utf8Bytes>) -> Vec<Utf8Bytes> {
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            self.encode_text(t.as_str(), &mut out);
        }
        out
    }

    /// The message limit of a dialect whose clients must not lose the socket to one long
    /// message (DIALECTS.md rule 12): a longer text frame gets an `invalid_request` error and
    /// the socket stays open (the route's hard frame cap, a few times this, still closes with
    /// 1009). `None` (the native protocol): the frame cap alone, 1009.
    fn soft_message_limit(&self, config: &crate::config::GatewayConfig) -> Option<usize> {
        Some(config.max_client_message_bytes)
    }

    /// The dialect keeps state across a turn's frames (the answer so far, open blocks): on a
    /// resume after `seq` N it first reads frames 1…N without writing them (DIALECTS.md rule 6).
    /// The native protocol writes frames as they are and needs none.
    fn rebuilds_on_resume(&self) -> bool {
        true
    }

    /// The `code` of the error answering the frame [`Dialect::decode`] just refused
    /// (`invalid_request` unless the dialect says otherwise, e.g. `forbidden`).
    fn refusal_code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }

    /// The frames of an error the session answers itself (outside any run), e.g. a refused
    /// request.
    fn error(&mut self, code: ErrorCode, message: &str) -> Vec<Utf8Bytes>;

    /// Frames written once when the socket opens.
    fn opening(&mut self) -> Vec<Utf8Bytes> {
        Vec::new()
    }

    /// The close code and reason written in place of `code` and `reason` (for a client that
    /// would reconnect forever on some codes, or shows the reason next to the error frame).
    fn close(&self, code: CloseCode, reason: &'static str) -> (CloseCode, &'static str) {
        (code, reason)
    }

    /// A run request of this dialect is about to start (also one that waited in the queue):
    /// take the turn's settings from its tag (conversation, streaming or whole answer).
    fn begin_turn(&mut self, _tag: Option<&TurnTag>) {}

    /// The conversation the current turn belongs to, when the dialect's clients send only the
    /// new message and expect the server to remember the rest ([`crate::relay::memory`]).
    fn conversation(&self) -> Option<&str> {
        None
    }

    /// Conversation ids are global and owned by the user who first used them (a client-chosen
    /// id of another user is `forbidden`), rather than private to each user.
    fn owned_conversations(&self) -> bool {
        false
    }

    /// Most remembered messages a turn is given as its history.
    fn history_window(&self) -> usize {
        usize::MAX
    }

    /// A pause before a turn's terminal frame, for clients that lose frames arriving in one
    /// burst (DIALECTS.md rule 14).
    fn turn_end_gap(&self) -> Option<std::time::Duration> {
        None
    }

    /// Frames a lagging client gets merged, or a replay, are written with
    /// [`Dialect::turn_end_gap`] between them (the dialect merges them into a few).
    fn paces_bursts(&self) -> bool {
        false
    }

    /// The answer to flowgate's `{"type":"ping"}` control frame (DIALECTS.md rule 8).
    fn pong(&mut self) -> Option<Utf8Bytes> {
        Some(Utf8Bytes::from_static(r#"{"type":"pong"}"#))
    }

    /// The answer text of the turn whose terminal frame was just encoded (once).
    fn take_answer(&mut self) -> Option<String> {
        None
    }

    /// Run requests queued behind a running turn (DIALECTS.md rule 9); 0 refuses them.
    fn queue_depth(&self) -> usize {
        0
    }
}

/// A dialect's encoder for HTTP streams ([`crate::relay::stream`]): the payloads for one
/// stamped run frame.
pub trait StreamEncoder: Send + 'static {
    fn encode(&mut self, frame: &Frame) -> Vec<Payload>;
}

/// One event of an HTTP stream: an SSE event (`id:` when the dialect numbers events, `event:`
/// name when it uses one, and its `data:`), or one element of a JSON answer (the `data` alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub id: Option<u64>,
    pub event: Option<&'static str>,
    pub data: String,
}

impl Payload {
    pub fn data(data: String) -> Payload {
        Payload {
            id: None,
            event: None,
            data,
        }
    }

    pub fn named(event: &'static str, data: String) -> Payload {
        Payload {
            id: None,
            event: Some(event),
            data,
        }
    }

    /// The same event with an `id:` line (the `seq` of the frame it came from).
    pub fn with_id(mut self, seq: u64) -> Payload {
        self.id = Some(seq);
        self
    }
}

/// The native protocol of docs/protocol.md.
#[derive(Debug, Default, Clone, Copy)]
pub struct NeuraLabs;

impl Dialect for NeuraLabs {
    fn decode(&mut self, text: &str) -> Result<ClientFrame, BadFrame> {
        ClientFrame::parse(text)
    }

    fn encode(&mut self, batch: Vec<Frame>, lagging: bool) -> Vec<Utf8Bytes> {
        if lagging {
            merge_chunks(batch)
        } else {
            batch.into_iter().map(|f| f.text).collect()
        }
    }

    fn encode_logged(&mut self, texts: Vec<Utf8Bytes>) -> Vec<Utf8Bytes> {
        texts
    }

    fn error(&mut self, code: ErrorCode, message: &str) -> Vec<Utf8Bytes> {
        vec![protocol::error_frame(code, message).into()]
    }

    fn soft_message_limit(&self, _config: &crate::config::GatewayConfig) -> Option<usize> {
        None
    }

    fn rebuilds_on_resume(&self) -> bool {
        false
    }
}

/// Merge consecutive `llm_chunk` frames of the same element into one (for a lagging client).
/// The merged frame has the `seq` of the last one and `merged_seqs: [first, last]`.
fn merge_chunks(batch: Vec<Frame>) -> Vec<Utf8Bytes> {
    let parts: Vec<Option<(String, String)>> = batch.iter().map(Frame::chunk_parts).collect();
    let mut out = Vec::with_capacity(batch.len());
    let mut i = 0;
    while i < batch.len() {
        let Some((element, first)) = &parts[i] else {
            out.push(batch[i].text.clone());
            i += 1;
            continue;
        };
        let mut j = i + 1;
        let mut content = first.clone();
        while let Some(Some((e, c))) = parts.get(j)
            && e == element
        {
            content.push_str(c);
            j += 1;
        }
        if j == i + 1 {
            out.push(batch[i].text.clone());
        } else {
            let run_id = serde_json::from_str::<serde_json::Value>(batch[i].text.as_str())
                .ok()
                .and_then(|v| v.get("run_id").cloned())
                .unwrap_or_default();
            let merged = json!({
                "type": "llm_chunk",
                "timestamp": protocol::now_ts(),
                "data": {"element_id": element, "content": content},
                "run_id": run_id,
                "seq": batch[j - 1].seq,
                "merged_seqs": [batch[i].seq, batch[j - 1].seq],
            });
            out.push(Utf8Bytes::from(merged.to_string()));
        }
        i = j;
    }
    out
}

/// Test helper: a run event (JSON value) as a live frame with its `seq`.
#[cfg(test)]
pub fn frame_of(v: &serde_json::Value) -> Frame {
    Frame {
        seq: v["seq"].as_u64().unwrap_or(0),
        text: Utf8Bytes::from(v.to_string()),
        chunk: v["type"] == "llm_chunk",
        received: std::time::Instant::now(),
        end: None,
    }
}

/// Test helper: encode run events (JSON values) as logged frames and read the frames back.
#[cfg(test)]
pub fn encode_values(d: &mut impl Dialect, events: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let texts = events
        .iter()
        .map(|e| Utf8Bytes::from(e.to_string()))
        .collect();
    d.encode_logged(texts)
        .iter()
        .map(|t| serde_json::from_str(t.as_str()).expect("frames are JSON"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, text: &str, chunk: bool) -> Frame {
        Frame {
            seq,
            text: Utf8Bytes::from(text.to_owned()),
            chunk,
            received: std::time::Instant::now(),
            end: None,
        }
    }

    fn chunk(seq: u64, element: &str, content: &str) -> Frame {
        let text = json!({"type": "llm_chunk", "data": {"element_id": element, "content": content}, "run_id": "r", "seq": seq});
        frame(seq, &text.to_string(), true)
    }

    #[test]
    fn the_native_encoding_is_the_identity_unless_the_client_lags() {
        let batch = vec![chunk(1, "a", "x"), chunk(2, "a", "y")];
        let texts: Vec<Utf8Bytes> = batch.iter().map(|f| f.text.clone()).collect();
        assert_eq!(NeuraLabs.encode(batch.clone(), false), texts);
        let merged = NeuraLabs.encode(batch, true);
        assert_eq!(merged.len(), 1);
        let v: serde_json::Value = serde_json::from_str(merged[0].as_str()).unwrap();
        assert_eq!(v["data"]["content"], "xy");
        assert_eq!(v["seq"], 2);
        assert_eq!(v["merged_seqs"], json!([1, 2]));
    }

    #[test]
    fn merging_keeps_other_frames_and_other_elements_apart() {
        let batch = vec![
            chunk(1, "a", "x"),
            frame(2, r#"{"type":"element_completed","seq":2}"#, false),
            chunk(3, "a", "y"),
            chunk(4, "b", "z"),
        ];
        let out = NeuraLabs.encode(batch.clone(), true);
        let expected: Vec<Utf8Bytes> = batch.iter().map(|f| f.text.clone()).collect();
        assert_eq!(out, expected);
    }
}
