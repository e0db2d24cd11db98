//! The OpenAI-compatible streaming client behind `llm_text` when `--llm-base-url` is set.
//!
//! One request per element, made with the engine's shared reqwest client
//! ([`super::outbound::Outbound::llm`]): `POST {base}/chat/completions` over `https://` or
//! `http://` (HTTP/1.1), with `Authorization: Bearer <key>` (a sensitive header: never shown in
//! logs or debug output) when a key is configured and the JSON body `{model, messages: [{role:
//! "user", content: <rendered prompt>}], temperature, max_tokens, stream: true}`. The endpoint's
//! certificate must be trusted by the system's roots or `--ca-file`; an untrusted one is its own
//! error ([`LlmError::Certificate`]) naming the flag. Redirects are not followed (a 3xx is a
//! status error) and no proxy variable is read.
//!
//! The response is a `text/event-stream` (any body framing: reqwest decodes it): every
//! `data: {json}` line with a non-empty `choices[0].delta.content` is one chunk, in order;
//! `data: [DONE]` ends the stream, and a body that ends before it is an error. Each `data:` line
//! is one JSON object (the OpenAI convention; multi-line SSE `data` fields are not joined);
//! comments, `event:`/`id:`/`retry:` lines and chunks without content are skipped, and a
//! `data: {"error": {...}}` line is an error. A missing `Content-Type` is read as a stream, any
//! other than these two is an error. A 2xx `application/json` answer (a server that
//! ignored `stream`) is read whole and its `choices[0].message.content` is one chunk.
//!
//! Failures are [`LlmError`]s whose text is the user's element error: a non-2xx status gives
//! `LLM request failed: <status> <reason>: <error.message of the JSON body>`. Connecting (TCP and
//! TLS) is bounded by `--llm-timeout` (the client's connect timeout), the whole wait for the
//! response header by twice that, and every later read by `--llm-timeout`; the header, each
//! stream line and an error body by `--llm-max-line-bytes`; the streamed text by
//! `--llm-max-output-bytes`. Dropping a [`ChatStream`] drops the response, and with it the
//! connection (an unfinished body is never put back in the pool), which is how a cancelled run
//! stops the endpoint's generation. The key is never logged.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::config::LlmEndpointConfig;
use super::outbound::{head_bytes, root_cause};
use super::target::{Target, parse_base};
use crate::tls::TlsProblem;

/// Longest piece of a body quoted in an error message (characters).
const QUOTE_CHARS: usize = 200;

/// Why a request to the LLM endpoint failed. The `Display` text is the element error.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("LLM endpoint '{url}' is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("LLM request failed: cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("LLM request failed: no connection to {addr} within {timeout:?} (--llm-timeout)")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error(
        "LLM request failed: the endpoint's TLS certificate is not trusted ({reason}); give its \
         CA with --ca-file"
    )]
    Certificate { addr: String, reason: String },
    #[error("LLM request failed: TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("LLM request failed: the API key is not a valid header value (a line break?)")]
    BadKey,
    #[error("LLM request failed: {0}")]
    Io(String),
    #[error("LLM request failed: no response within {0:?} (--llm-timeout)")]
    FirstByteTimeout(Duration),
    #[error("LLM stream stalled: nothing received for {0:?} (--llm-timeout)")]
    GapTimeout(Duration),
    #[error("LLM request failed: {status}: {message}")]
    Status { status: String, message: String },
    #[error("LLM request failed: {0}")]
    StatusOnly(String),
    #[error("LLM stream is malformed: {0}")]
    Malformed(String),
    #[error("LLM stream error: {0}")]
    Api(String),
    #[error("LLM output is larger than {0} bytes (--llm-max-output-bytes)")]
    OutputTooLarge(usize),
    #[error("LLM response has a line longer than {0} bytes (--llm-max-line-bytes)")]
    LineTooLong(usize),
}

fn check_base(url: &str) -> Result<Target, LlmError> {
    parse_base(url).map_err(|reason| LlmError::BadUrl {
        url: url.to_owned(),
        reason,
    })
}

/// What one `llm_text` element asks for.
#[derive(Debug, Clone)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    pub temperature: f64,
    pub max_tokens: u64,
}

/// An open streaming response; [`ChatStream::next_chunk`] yields the deltas in order.
pub struct ChatStream {
    response: reqwest::Response,
    /// Body bytes not yet split into lines.
    lines: Vec<u8>,
    /// A non-streaming `application/json` answer.
    whole_json: bool,
    done: bool,
    output_bytes: usize,
    timeout: Duration,
    max_line: usize,
    max_output: usize,
}

fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Why sending the request (up to the response header) failed.
fn send_error(addr: &str, timeout: Duration, e: &reqwest::Error) -> LlmError {
    let addr = addr.to_owned();
    match crate::tls::problem(e) {
        Some(TlsProblem::Certificate(reason)) => return LlmError::Certificate { addr, reason },
        Some(TlsProblem::Other(reason)) => return LlmError::Tls { addr, reason },
        None => {}
    }
    if e.is_connect() && e.is_timeout() {
        LlmError::ConnectTimeout { addr, timeout }
    } else if e.is_connect() {
        LlmError::Connect {
            addr,
            reason: root_cause(e),
        }
    } else if e.is_timeout() {
        LlmError::FirstByteTimeout(timeout)
    } else {
        LlmError::Io(format!("the request to {addr} failed: {}", root_cause(e)))
    }
}

/// Send the request and read the response header. A non-2xx status is an error carrying the
/// API's message.
pub async fn open(
    client: &reqwest::Client,
    config: &LlmEndpointConfig,
    request: &ChatRequest<'_>,
) -> Result<ChatStream, LlmError> {
    let base = config.base_url.as_deref().unwrap_or_default();
    let target = check_base(base)?;
    let addr = target.authority();
    let mut url = target.url.clone();
    url.set_path(&format!(
        "{}/chat/completions",
        target.url.path().trim_end_matches('/')
    ));
    let timeout = config.timeout;
    let body = json!({
        "model": request.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "stream": true,
    })
    .to_string();
    let mut builder = client
        .post(url.clone())
        .header(ACCEPT, "text/event-stream")
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = config.key() {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| LlmError::BadKey)?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    tracing::debug!(%addr, path = url.path(), model = request.model, "LLM request");
    // Connecting is bounded by the client's connect timeout (`--llm-timeout`); this bounds the
    // whole wait for the response header.
    let response = tokio::time::timeout(timeout.saturating_mul(2), builder.send())
        .await
        .map_err(|_| LlmError::FirstByteTimeout(timeout))?
        .map_err(|e| send_error(&addr, timeout, &e))?;
    let mut chat = ChatStream {
        response,
        lines: Vec::new(),
        whole_json: false,
        done: false,
        output_bytes: 0,
        timeout,
        max_line: config.max_line_bytes.max(1),
        max_output: config.max_output_bytes,
    };
    chat.check_head().await?;
    Ok(chat)
}

impl ChatStream {
    async fn check_head(&mut self) -> Result<(), LlmError> {
        if head_bytes(&self.response) > self.max_line {
            return Err(LlmError::LineTooLong(self.max_line));
        }
        let code = self.response.status();
        let status = match code.canonical_reason() {
            Some(reason) => format!("{} {reason}", code.as_u16()),
            None => code.as_u16().to_string(),
        };
        if !code.is_success() {
            let body = self.read_all(self.max_line, true).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| api_message(&v).or_else(|| plain_message(&v)))
                .unwrap_or_else(|| quote(&text));
            return Err(if message.is_empty() {
                LlmError::StatusOnly(status)
            } else {
                LlmError::Status { status, message }
            });
        }
        let content_type = self
            .response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
            .unwrap_or_default();
        self.whole_json = content_type.starts_with("application/json");
        let sse = content_type.is_empty() || content_type.starts_with("text/event-stream");
        if !self.whole_json && !sse {
            return Err(LlmError::Malformed(format!(
                "expected text/event-stream, got Content-Type '{}'",
                quote(&content_type)
            )));
        }
        Ok(())
    }

    /// The next piece of the body, `None` at its end; each wait bounded by `--llm-timeout`.
    async fn body_bytes(&mut self) -> Result<Option<bytes::Bytes>, LlmError> {
        tokio::time::timeout(self.timeout, self.response.chunk())
            .await
            .map_err(|_| LlmError::GapTimeout(self.timeout))?
            .map_err(|e| {
                if e.is_timeout() {
                    LlmError::GapTimeout(self.timeout)
                } else {
                    LlmError::Io(format!("reading the response failed: {}", root_cause(&e)))
                }
            })
    }

    /// The rest of the body, at most `limit` bytes: more is an error, or with `truncate` the
    /// first `limit` bytes.
    async fn read_all(&mut self, limit: usize, truncate: bool) -> Result<Vec<u8>, LlmError> {
        let mut out = std::mem::take(&mut self.lines);
        while let Some(piece) = self.body_bytes().await? {
            out.extend_from_slice(&piece);
            if out.len() > limit {
                if truncate {
                    out.truncate(limit);
                    break;
                }
                return Err(LlmError::OutputTooLarge(limit));
            }
        }
        Ok(out)
    }

    fn add_output(&mut self, content: &str) -> Result<(), LlmError> {
        self.output_bytes += content.len();
        if self.output_bytes > self.max_output {
            return Err(LlmError::OutputTooLarge(self.max_output));
        }
        Ok(())
    }

    /// The next non-empty delta, `None` after `data: [DONE]`.
    pub async fn next_chunk(&mut self) -> Result<Option<String>, LlmError> {
        if self.done {
            return Ok(None);
        }
        if self.whole_json {
            self.done = true;
            let limit = self.max_output.saturating_add(self.max_line);
            let body = self.read_all(limit, false).await?;
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| LlmError::Malformed(format!("the JSON answer does not parse: {e}")))?;
            if let Some(message) = api_message(&value) {
                return Err(LlmError::Api(message));
            }
            let content = value
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    LlmError::Malformed("the JSON answer has no choices[0].message.content".into())
                })?
                .to_owned();
            self.add_output(&content)?;
            return Ok((!content.is_empty()).then_some(content));
        }
        loop {
            while let Some(end) = self.lines.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.lines.drain(..=end).collect();
                if raw.len() > self.max_line {
                    return Err(LlmError::LineTooLong(self.max_line));
                }
                let line = std::str::from_utf8(&raw)
                    .map_err(|_| LlmError::Malformed("a stream line is not UTF-8".into()))?
                    .trim_end_matches(['\n', '\r']);
                match self.line(line)? {
                    Line::Skip => {}
                    Line::Content(content) => return Ok(Some(content)),
                    Line::Done => {
                        self.done = true;
                        return Ok(None);
                    }
                }
            }
            if self.lines.len() > self.max_line {
                return Err(LlmError::LineTooLong(self.max_line));
            }
            match self.body_bytes().await? {
                Some(piece) => self.lines.extend_from_slice(&piece),
                None => {
                    return Err(LlmError::Malformed(
                        "the stream ended before `data: [DONE]`".into(),
                    ));
                }
            }
        }
    }

    fn line(&mut self, line: &str) -> Result<Line, LlmError> {
        let Some(data) = line.strip_prefix("data:") else {
            // Blank lines end SSE events; comments and other fields carry nothing we use.
            return Ok(Line::Skip);
        };
        let data = data.strip_prefix(' ').unwrap_or(data);
        if data.trim() == "[DONE]" {
            return Ok(Line::Done);
        }
        let value: Value = serde_json::from_str(data).map_err(|_| {
            LlmError::Malformed(format!("a data line is not JSON: '{}'", quote(data)))
        })?;
        if let Some(message) = api_message(&value) {
            return Err(LlmError::Api(message));
        }
        match value
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            Some(content) if !content.is_empty() => {
                self.add_output(content)?;
                Ok(Line::Content(content.to_owned()))
            }
            _ => Ok(Line::Skip),
        }
    }
}

enum Line {
    Skip,
    Content(String),
    Done,
}

/// A top-level `message` or `detail` string (servers that do not use OpenAI's error shape).
fn plain_message(value: &Value) -> Option<String> {
    ["message", "detail"]
        .iter()
        .find_map(|k| value.get(*k).and_then(Value::as_str))
        .map(quote)
}

/// `error.message` (or a string `error`) of an API error body.
fn api_message(value: &Value) -> Option<String> {
    match value.get("error")? {
        Value::String(s) => Some(quote(s)),
        Value::Null => None,
        e => Some(quote(
            e.get("message").and_then(Value::as_str).unwrap_or_default(),
        ))
        .filter(|m| !m.is_empty())
        .or_else(|| Some(quote(&e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages_come_from_the_error_object() {
        let v = json!({"error": {"message": "Invalid API key", "type": "auth"}});
        assert_eq!(api_message(&v).as_deref(), Some("Invalid API key"));
        assert_eq!(
            api_message(&json!({"error": "nope"})).as_deref(),
            Some("nope")
        );
        assert_eq!(api_message(&json!({"choices": []})), None);
    }
}
