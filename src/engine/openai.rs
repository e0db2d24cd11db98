//! The OpenAI-compatible streaming client behind `llm_text` when `--llm-base-url` is set.
//!
//! One request per element: `POST {base}/chat/completions` over plain `http://` HTTP/1.1
//! (written by hand over a `TcpStream`, like [`super::rest`]; `Connection: close`), with
//! `Authorization: Bearer <key>` when a key is configured and the JSON body
//! `{model, messages: [{role: "user", content: <rendered prompt>}], temperature, max_tokens,
//! stream: true}`. There is no TLS in this build: an `https://` base URL is refused when the
//! flags are parsed ([`super::target::base_url`]) and again here.
//!
//! The response is a `text/event-stream` (content-length, chunked or close-delimited body):
//! every `data: {json}` line with a non-empty `choices[0].delta.content` is one chunk, in order;
//! `data: [DONE]` ends the stream, and a body that ends before it is an error. Each `data:` line
//! is one JSON object (the OpenAI convention; multi-line SSE `data` fields are not joined);
//! comments, `event:`/`id:`/`retry:` lines and chunks without content are skipped, and a
//! `data: {"error": {...}}` line is an error. A missing `Content-Type` is read as a stream, any
//! other than these two is an error. A 2xx `application/json` answer (a server that
//! ignored `stream`) is read whole and its `choices[0].message.content` is one chunk.
//!
//! Failures are [`LlmError`]s whose text is the user's element error: a non-2xx status gives
//! `LLM request failed: <status> <reason>: <error.message of the JSON body>`; connecting, the
//! first response byte and every later read are each bounded by `--llm-timeout`; the header,
//! each stream line and an error body by `--llm-max-line-bytes`; the streamed text by
//! `--llm-max-output-bytes`. Dropping a [`ChatStream`] closes the connection at once, which is
//! how a cancelled run stops the endpoint's generation. The key is never logged.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::LlmEndpointConfig;
use super::target::{Target, parse_base};

/// Longest piece of a body quoted in an error message (characters).
const QUOTE_CHARS: usize = 200;

/// Size of one socket read.
const READ_CHUNK: usize = 8 * 1024;

/// Why a request to the LLM endpoint failed. The `Display` text is the element error.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("LLM endpoint '{url}' is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("LLM request failed: cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("LLM request failed: no connection to {addr} within {timeout:?} (--llm-timeout)")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("LLM request failed: the API key contains a line break")]
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

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    /// `Content-Length`: bytes still to come.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkState),
    /// Until the server closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last (zero) chunk was read.
    Done,
}

/// An open streaming response; [`ChatStream::next_chunk`] yields the deltas in order.
pub struct ChatStream {
    stream: TcpStream,
    /// Raw bytes read from the socket, not yet decoded from the body framing.
    raw: Vec<u8>,
    framing: Framing,
    /// Decoded body bytes not yet split into lines.
    lines: Vec<u8>,
    /// A non-streaming `application/json` answer.
    whole_json: bool,
    done: bool,
    output_bytes: usize,
    timeout: Duration,
    max_line: usize,
    max_output: usize,
}

fn io_error(what: &str, e: std::io::Error) -> LlmError {
    LlmError::Io(format!("{what}: {e}"))
}

fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Send the request and read the response header. A non-2xx status is an error carrying the
/// API's message.
pub async fn open(
    config: &LlmEndpointConfig,
    request: &ChatRequest<'_>,
) -> Result<ChatStream, LlmError> {
    let base = config.base_url.as_deref().unwrap_or_default();
    let target = check_base(base)?;
    let addr = format!("{}:{}", target.host, target.port);
    let timeout = config.timeout;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr.as_str()))
        .await
        .map_err(|_| LlmError::ConnectTimeout {
            addr: addr.clone(),
            timeout,
        })?
        .map_err(|source| LlmError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let body = json!({
        "model": request.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "stream": true,
    })
    .to_string();
    let path = format!("{}/chat/completions", target.path.trim_end_matches('/'));
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         User-Agent: flowgate-engine\r\nAccept: text/event-stream\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = config.key() {
        if key.expose().contains(['\r', '\n']) {
            return Err(LlmError::BadKey);
        }
        head.push_str("Authorization: Bearer ");
        head.push_str(key.expose());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    tracing::debug!(%addr, path, model = request.model, "LLM request");
    let mut chat = ChatStream {
        stream,
        raw: Vec::new(),
        framing: Framing::Close,
        lines: Vec::new(),
        whole_json: false,
        done: false,
        output_bytes: 0,
        timeout,
        max_line: config.max_line_bytes.max(1),
        max_output: config.max_output_bytes,
    };
    tokio::time::timeout(timeout, chat.stream.write_all(&bytes))
        .await
        .map_err(|_| LlmError::Io(format!("sending the request took longer than {timeout:?}")))?
        .map_err(|e| io_error("sending the request failed", e))?;
    chat.read_head().await?;
    Ok(chat)
}

impl ChatStream {
    /// Read more raw bytes; `Ok(0)` at end of stream. `first` picks the time-to-first-byte error.
    async fn fill(&mut self, first: bool) -> Result<usize, LlmError> {
        let mut buf = [0u8; READ_CHUNK];
        let n = tokio::time::timeout(self.timeout, self.stream.read(&mut buf))
            .await
            .map_err(|_| {
                if first {
                    LlmError::FirstByteTimeout(self.timeout)
                } else {
                    LlmError::GapTimeout(self.timeout)
                }
            })?
            .map_err(|e| io_error("reading the response failed", e))?;
        self.raw.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    async fn read_head(&mut self) -> Result<(), LlmError> {
        let end = loop {
            if let Some(i) = find(&self.raw, b"\r\n\r\n") {
                break i;
            }
            if self.raw.len() > self.max_line {
                return Err(LlmError::LineTooLong(self.max_line));
            }
            let first = self.raw.is_empty();
            if self.fill(first).await? == 0 {
                return Err(LlmError::Io(
                    "the endpoint closed the connection without a response".into(),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let code: u16 = match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
            (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
            _ => {
                return Err(LlmError::Malformed(format!(
                    "'{}' is not an HTTP status line",
                    quote(status_line)
                )));
            }
        };
        let reason = parts.next().unwrap_or_default().trim();
        let mut length = None;
        let mut chunked = false;
        let mut content_type = String::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(value.parse::<usize>().map_err(|_| {
                        LlmError::Malformed(format!("bad Content-Length '{}'", quote(value)))
                    })?);
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "content-type" => content_type = value.to_ascii_lowercase(),
                _ => {}
            }
        }
        self.framing = match (chunked, length) {
            (true, _) => Framing::Chunked(ChunkState::Size),
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        };
        let status = if reason.is_empty() {
            code.to_string()
        } else {
            format!("{code} {reason}")
        };
        if !(200..300).contains(&code) {
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

    /// The next piece of the decoded body, `None` at its end.
    async fn body_bytes(&mut self) -> Result<Option<Vec<u8>>, LlmError> {
        loop {
            match self.framing {
                Framing::Length(0) | Framing::Chunked(ChunkState::Done) => return Ok(None),
                Framing::Length(left) => {
                    if self.raw.is_empty() && self.fill(false).await? == 0 {
                        return Err(LlmError::Malformed(
                            "the body ended before its Content-Length".into(),
                        ));
                    }
                    let n = left.min(self.raw.len());
                    self.framing = Framing::Length(left - n);
                    return Ok(Some(self.raw.drain(..n).collect()));
                }
                Framing::Close => {
                    if self.raw.is_empty() && self.fill(false).await? == 0 {
                        return Ok(None);
                    }
                    return Ok(Some(std::mem::take(&mut self.raw)));
                }
                Framing::Chunked(ChunkState::Size) => {
                    let Some(end) = find(&self.raw, b"\r\n") else {
                        if self.raw.len() > self.max_line {
                            return Err(LlmError::LineTooLong(self.max_line));
                        }
                        self.fill_or_truncated().await?;
                        continue;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                    let size_text = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                        LlmError::Malformed(format!("bad chunk size '{}'", quote(&line)))
                    })?;
                    self.raw.drain(..end + 2);
                    self.framing = Framing::Chunked(if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    });
                }
                Framing::Chunked(ChunkState::Data(left)) => {
                    if self.raw.is_empty() {
                        self.fill_or_truncated().await?;
                    }
                    let n = left.min(self.raw.len());
                    self.framing = Framing::Chunked(if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    });
                    return Ok(Some(self.raw.drain(..n).collect()));
                }
                Framing::Chunked(ChunkState::DataEnd) => {
                    if self.raw.len() < 2 {
                        self.fill_or_truncated().await?;
                        continue;
                    }
                    if &self.raw[..2] != b"\r\n" {
                        return Err(LlmError::Malformed(
                            "a chunk is longer than its size".into(),
                        ));
                    }
                    self.raw.drain(..2);
                    self.framing = Framing::Chunked(ChunkState::Size);
                }
            }
        }
    }

    async fn fill_or_truncated(&mut self) -> Result<(), LlmError> {
        if self.fill(false).await? == 0 {
            return Err(LlmError::Malformed(
                "the connection closed inside a chunk".into(),
            ));
        }
        Ok(())
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
