//! `citizen`: Citizen Interface "Leoma" (DIALECTS.md 2.3): `POST /api/agent/session` mints a
//! registered session (served by `http::citizen`), and the socket on `--citizen-path` with
//! `?sessionId=` speaks the design note's enveloped frames and the shipped client's flat ones.
//! The reply follows the request's form; the flat form gets one frame per turn (the shipped
//! chat renders only the newest frame of a burst). Attachments are checked against the
//! original's rules and never silently dropped. The user's guide is docs/dialects.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::Dialect;
use super::answer::{Answer, Piece};
use crate::auth::Identity;
use crate::relay::protocol::{BadFrame, ClientFrame, ErrorCode, RunRequest, TurnTag};

/// Most live sessions at once.
pub const MAX_SESSIONS: usize = 100_000;

/// A minted session: who it is for, and when it was last used.
#[derive(Debug, Clone)]
struct Entry {
    identity: Identity,
    used: Instant,
}

/// The registered sessions (`POST /api/agent/session`), with an idle lifetime.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    inner: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mint a session for `caller` (a verified user), or for a principal of its own. `None`
    /// when the registry is full of live sessions.
    pub fn mint(&self, caller: Option<Identity>) -> Option<(String, Identity)> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let identity = caller.unwrap_or_else(|| Identity {
            // Under the reserved `anonymous:` prefix: no token can name it.
            user_id: format!("anonymous:citizen-{id}"),
            expires_at: u64::MAX,
            anonymous: true,
        });
        let mut all = self.lock();
        if all.len() >= MAX_SESSIONS {
            let ttl = self.ttl;
            all.retain(|_, e| e.used.elapsed() < ttl);
            if all.len() >= MAX_SESSIONS {
                return None;
            }
        }
        all.insert(
            id.clone(),
            Entry {
                identity: identity.clone(),
                used: Instant::now(),
            },
        );
        Some((id, identity))
    }

    /// The identity of a live session (and mark it used); `None` if unknown or expired.
    pub fn open(&self, id: &str) -> Option<Identity> {
        let mut all = self.lock();
        let entry = all.get_mut(id)?;
        if entry.used.elapsed() >= self.ttl {
            all.remove(id);
            return None;
        }
        entry.used = Instant::now();
        Some(entry.identity.clone())
    }
}

/// The two request forms; the reply follows the request's.
const FLAT: &str = "flat";
const ENVELOPED: &str = "enveloped";

/// An attachment rule of the original: the types of a kind and its size limit.
const KINDS: &[(&str, &[&str], usize)] = &[
    (
        "image",
        &["image/jpeg", "image/png", "image/gif", "image/webp"],
        8 << 20,
    ),
    (
        "document",
        &[
            "application/pdf",
            "application/msword",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/plain",
        ],
        16 << 20,
    ),
    ("video", &[], 32 << 20),
    ("audio", &[], 32 << 20),
];

/// Check one attachment (`name`, MIME type, base64 data) against the original's rules; the
/// error names the file and the rule.
fn check_attachment(name: &str, mime: &str, data: &str) -> Result<(), String> {
    let name = if name.is_empty() { "(unnamed)" } else { name };
    let kind = KINDS.iter().find(|(k, types, _)| {
        types.contains(&mime) || (types.is_empty() && mime.starts_with(&format!("{k}/")))
    });
    let Some((kind, _, limit)) = kind else {
        return Err(format!(
            "attachment {name}: type `{mime}` is not accepted (images: jpeg, png, gif, webp; documents: pdf, doc, docx, txt; video; audio)"
        ));
    };
    // A data URL's header is not part of the file.
    let data = data.split_once(";base64,").map_or(data, |(_, d)| d);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| format!("attachment {name}: `data` is not base64"))?;
    if bytes.is_empty() {
        return Err(format!("attachment {name}: the file is empty"));
    }
    if bytes.len() > *limit {
        return Err(format!(
            "attachment {name}: {} bytes, at most {} MB for a {kind}",
            bytes.len(),
            limit >> 20
        ));
    }
    Ok(())
}

/// The attachments of a frame in all three spellings: `data.media[]`, `media[]` (`{name, type,
/// size, data}`) and `mediaContext` (`{hasMedia, filename, mimeType, size, data}`). Returns
/// the names of the valid ones, or the first broken rule.
fn attachments(obj: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut seen = |name: &str, mime: &str, data: &str| -> Result<(), String> {
        check_attachment(name, mime, data)?;
        names.push(if name.is_empty() {
            "(unnamed)".to_owned()
        } else {
            name.to_owned()
        });
        Ok(())
    };
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let lists = [
        obj.get("media"),
        obj.get("data").and_then(|d| d.get("media")),
    ];
    for list in lists.into_iter().flatten() {
        let Value::Array(items) = list else {
            return Err("`media` must be a list of {name, type, size, data}".into());
        };
        for m in items {
            seen(&s(m, "name"), &s(m, "type"), &s(m, "data"))?;
        }
    }
    for ctx in [
        obj.get("mediaContext"),
        obj.get("data").and_then(|d| d.get("mediaContext")),
    ]
    .into_iter()
    .flatten()
    {
        if ctx.get("hasMedia") == Some(&Value::Bool(false)) {
            continue;
        }
        seen(&s(ctx, "filename"), &s(ctx, "mimeType"), &s(ctx, "data"))?;
    }
    Ok(names)
}

/// One citizen socket, bound to its session.
#[derive(Debug)]
pub struct Citizen {
    session_id: String,
    sessions: Arc<Sessions>,
    stream_deltas: bool,
    conversation: String,
    /// The form of the last frame read (errors answer in it) and of the running turn.
    last_form: &'static str,
    /// The code of the last refusal (a frame for another session is `forbidden`).
    last_refusal: ErrorCode,
    form: &'static str,
    notice: String,
    /// `final_output` fields passed on with the answer (tracking number, state).
    tracking: Vec<(&'static str, Value)>,
    answer: Answer,
    finished: Option<String>,
}

impl Citizen {
    pub fn new(session_id: String, sessions: Arc<Sessions>, stream_deltas: bool) -> Citizen {
        Citizen {
            conversation: format!("citizen:{session_id}"),
            session_id,
            sessions,
            stream_deltas,
            last_form: FLAT,
            last_refusal: ErrorCode::InvalidRequest,
            form: FLAT,
            notice: String::new(),
            tracking: Vec::new(),
            answer: Answer::default(),
            finished: None,
        }
    }

    fn stamp(mut m: Map<String, Value>, v: &Value) -> Utf8Bytes {
        m.insert("run_id".into(), v["run_id"].clone());
        m.insert("seq".into(), v["seq"].clone());
        Value::Object(m).to_string().into()
    }

    fn end(&mut self) {
        let answer = std::mem::take(&mut self.answer);
        self.finished = Some(answer.full().to_owned());
    }

    /// `final_output` fields the design note's UI shows.
    fn tracking_of(data: &Value) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let outputs = [&data["outputs"], data];
        for src in outputs {
            if let Some(t) = src
                .get("tracking_number")
                .or_else(|| src.get("trackingNumber"))
            {
                out.push(("trackingNumber", t.clone()));
                break;
            }
        }
        if let Some(s) = data.get("state") {
            out.push(("state", s.clone()));
        }
        out
    }
}

impl Dialect for Citizen {
    fn decode(&mut self, text: &str) -> Result<ClientFrame, BadFrame> {
        self.last_form = FLAT;
        self.last_refusal = ErrorCode::InvalidRequest;
        let v: Value =
            serde_json::from_str(text).map_err(|_| BadFrame("Invalid JSON format".to_owned()))?;
        let Value::Object(obj) = &v else {
            return Err(BadFrame("Invalid JSON format".to_owned()));
        };
        let kind = obj.get("type").and_then(Value::as_str);
        let (form, body) = match (kind, obj.get("data")) {
            (Some("message"), Some(Value::Object(data))) => (ENVELOPED, data),
            (Some("cancel" | "resume" | "auth"), _) => return ClientFrame::parse(text),
            (Some("ping"), _) => return Ok(ClientFrame::Ping),
            (Some(other), _) if other != "message" => {
                return Err(BadFrame(format!(
                    "unknown frame type `{}`: send {{\"sessionId\", \"message\"}}",
                    other.chars().take(64).collect::<String>()
                )));
            }
            _ => (FLAT, obj),
        };
        self.last_form = form;
        let session = body.get("sessionId").and_then(Value::as_str);
        match session {
            None => return Err(BadFrame("`sessionId` is missing".into())),
            Some(s) if s != self.session_id => {
                self.last_refusal = ErrorCode::Forbidden;
                return Err(BadFrame(
                    "`sessionId` is not this socket's session: connect with ?sessionId= of the session you use"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        let message = match body.get("message") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => return Err(BadFrame("`message` is missing or empty".into())),
        };
        let mut all = obj.clone();
        if form == ENVELOPED {
            all = body.clone();
        }
        let received = attachments(&all).map_err(BadFrame)?;
        let notice = received
            .iter()
            .map(|n| format!("(Attachment {n} was received but not processed.)\n\n"))
            .collect::<String>();
        // The session stays alive while it is used.
        let _ = self.sessions.open(&self.session_id);
        Ok(ClientFrame::Run(Box::new(RunRequest {
            message: Some(message),
            tag: Some(TurnTag {
                conversation: Some(self.conversation.clone()),
                streaming: self.stream_deltas && form == FLAT,
                form: Some(form),
                notice: (!notice.is_empty()).then_some(notice),
            }),
            ..RunRequest::default()
        })))
    }

    fn begin_turn(&mut self, tag: Option<&TurnTag>) {
        if let Some(tag) = tag {
            self.form = tag.form.unwrap_or(FLAT);
            self.notice = tag.notice.clone().unwrap_or_default();
        }
        self.answer = Answer::default();
    }

    fn encode_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let data = &v["data"];
        let flat = self.form == FLAT;
        let streaming = flat && self.stream_deltas;
        let delta = |this: &mut Citizen, piece: Option<Piece>, out: &mut Vec<Utf8Bytes>| {
            let text = match piece {
                Some(Piece::Delta(d)) => d,
                Some(Piece::Block(b)) => format!("\n\n{b}"),
                None => return,
            };
            if streaming {
                let text = format!("{}{text}", std::mem::take(&mut this.notice));
                out.push(Citizen::stamp(
                    json!({"delta": text})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    &v,
                ));
            }
        };
        match v["type"].as_str().unwrap_or_default() {
            "status" if v["seq"] == 1 && !flat => {
                let d = json!({"type": "typing", "data": {"isTyping": true, "sessionId": self.session_id}});
                out.push(Citizen::stamp(
                    d.as_object().cloned().unwrap_or_default(),
                    &v,
                ));
            }
            "llm_chunk" => {
                let piece = self
                    .answer
                    .chunk(data["content"].as_str().unwrap_or_default());
                delta(self, piece, out);
            }
            "final_output" => {
                if let Some(full) = super::answer::text_output(data) {
                    let piece = self.answer.final_output(&full);
                    delta(self, piece, out);
                }
                // Kept for the terminal frame.
                self.tracking = Citizen::tracking_of(data);
            }
            kind @ ("flow_completed" | "flow_cancelled") => {
                let cancelled = kind == "flow_cancelled";
                let answer = format!("{}{}", self.notice, self.answer.full());
                let mut m = Map::new();
                if flat {
                    if !streaming {
                        m.insert("delta".into(), answer.into());
                    }
                    m.insert("done".into(), true.into());
                    if cancelled {
                        m.insert("cancelled".into(), true.into());
                    }
                    for (k, val) in std::mem::take(&mut self.tracking) {
                        m.insert(k.into(), val);
                    }
                } else {
                    let mut d = Map::new();
                    d.insert("message".into(), answer.into());
                    d.insert("sessionId".into(), self.session_id.clone().into());
                    if cancelled {
                        d.insert("cancelled".into(), true.into());
                    }
                    for (k, val) in std::mem::take(&mut self.tracking) {
                        d.insert(k.into(), val);
                    }
                    m.insert("type".into(), "message".into());
                    m.insert("data".into(), Value::Object(d));
                }
                out.push(Citizen::stamp(m, &v));
                self.end();
            }
            "flow_error" | "error" => {
                let code = data["code"].as_str().unwrap_or("flow_error");
                let error = data["error"].as_str().unwrap_or("the run failed");
                let partial = matches!(
                    code,
                    "engine_lost" | "gateway_lost" | "engine_timeout" | "engine_protocol_error"
                )
                .then(|| self.answer.full().to_owned());
                let m = if flat {
                    let mut m = Map::new();
                    m.insert("error".into(), error.into());
                    m.insert("done".into(), true.into());
                    m.insert("code".into(), code.into());
                    if let Some(p) = partial {
                        m.insert("partial_output".into(), p.into());
                    }
                    m
                } else {
                    let mut d = Map::new();
                    d.insert("error".into(), error.into());
                    d.insert("sessionId".into(), self.session_id.clone().into());
                    d.insert("code".into(), code.into());
                    if let Some(p) = partial {
                        d.insert("partial_output".into(), p.into());
                    }
                    let mut m = Map::new();
                    m.insert("type".into(), "error".into());
                    m.insert("data".into(), Value::Object(d));
                    m
                };
                out.push(Citizen::stamp(m, &v));
                self.end();
            }
            _ => {}
        }
    }

    fn error(&mut self, code: ErrorCode, message: &str) -> Vec<Utf8Bytes> {
        let frame = if self.last_form == ENVELOPED {
            json!({"type": "error", "data": {"error": message, "code": code.as_str()}})
        } else {
            // Both shapes in one frame: the protocol-error keys, the keys the shipped hook
            // shows, and the design note's `data`.
            json!({
                "type": "error",
                "message": message,
                "error": message,
                "done": true,
                "code": code.as_str(),
                "data": {"error": message, "code": code.as_str()},
            })
        };
        vec![frame.to_string().into()]
    }

    fn refusal_code(&self) -> ErrorCode {
        self.last_refusal
    }

    fn opening(&mut self) -> Vec<Utf8Bytes> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let tail = &uuid::Uuid::new_v4().simple().to_string()[..4];
        vec![
            json!({
                "type": "connected",
                "clientId": format!("client_{ms}_{tail}"),
                "message": "connected to the flowgate assistant",
            })
            .to_string()
            .into(),
        ]
    }

    fn conversation(&self) -> Option<&str> {
        Some(&self.conversation)
    }

    fn soft_message_limit(&self, config: &crate::config::GatewayConfig) -> Option<usize> {
        Some(config.citizen_max_message_bytes)
    }

    fn take_answer(&mut self) -> Option<String> {
        self.finished.take()
    }

    fn queue_depth(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_session_expires_and_an_unknown_one_is_never_open() {
        let s = Sessions::new(Duration::from_millis(30));
        let (id, who) = s.mint(None).unwrap();
        assert_eq!(id.len(), 32);
        assert!(who.anonymous && who.user_id.starts_with("anonymous:citizen-"));
        assert!(s.open(&id).is_some());
        let idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_millis(40) {
            std::thread::yield_now();
        }
        assert!(s.open(&id).is_none(), "expired after its idle lifetime");
        assert!(s.open("9f2c4e1ab37d4c0e8a5b6d7e8f901234").is_none());
    }

    #[test]
    fn attachments_follow_the_originals_types_and_sizes() {
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        assert!(check_attachment("a.png", "image/png", &b64(10)).is_ok());
        assert!(
            check_attachment(
                "a.png",
                "image/png",
                &format!("data:image/png;base64,{}", b64(10))
            )
            .is_ok()
        );
        let big = check_attachment("a.png", "image/png", &b64((8 << 20) + 1)).unwrap_err();
        assert!(big.contains("at most 8 MB"), "{big}");
        assert!(check_attachment("d.pdf", "application/pdf", &b64((8 << 20) + 1)).is_ok());
        assert!(check_attachment("v.mp4", "video/mp4", &b64(100)).is_ok());
        assert!(
            check_attachment("x.exe", "application/x-msdownload", &b64(3))
                .unwrap_err()
                .contains("not accepted")
        );
        assert!(
            check_attachment("e.txt", "text/plain", "")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            check_attachment("b.txt", "text/plain", "%%%")
                .unwrap_err()
                .contains("base64")
        );
    }
}
