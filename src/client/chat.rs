//! `flowgate chat <agent_id> [message]`: the terminal chat client.
//!
//! Owns one run over `GET /api/chat/execute/{agent_id}` (docs/neuralabs.md sections 2 and 5): it sends
//! the run request, streams `llm_chunk` text to stdout as it arrives (flushed per chunk), shows
//! element progress and errors on stderr, and ends on the run's one terminal event
//! (`flow_completed`, `flow_error`, `flow_cancelled`) or an `error` frame. Ctrl-C sends
//! `{"type":"cancel"}` and waits (bounded) for the terminal event; a second Ctrl-C quits at once.
//!
//! [`chat`] is the testable core (writers and the interrupt are parameters); [`run`] wires it to
//! the process: stdin, stdout/stderr, the Ctrl-C signal and the exit code.
//!
//! Exit codes: 0 `flow_completed`; 1 the run failed (`flow_error`, `error`, `flow_cancelled` by the
//! gateway); 2 the gateway could not be reached, went silent or closed early, or bad usage;
//! 130 cancelled by Ctrl-C.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// Terminal chat client settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// The agent to run.
    pub agent_id: String,
    /// The message; read from stdin when omitted.
    pub message: Option<String>,
    /// Base URL of the gateway (`http://`, `https://`, `ws://` or `wss://`).
    #[arg(long, env = "FLOWGATE_URL", default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// JWT sent as `Authorization: Bearer` (e.g. from `flowgate token`).
    #[arg(long, env = "FLOWGATE_TOKEN", hide_env_values = true)]
    pub token: Option<crate::secret::Secret>,
    /// Time allowed to open the connection, and for each frame the client sends.
    #[arg(long, env = "FLOWGATE_CHAT_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Give up when the gateway sends nothing for this long (the gateway pings idle clients).
    #[arg(long, env = "FLOWGATE_CHAT_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// After Ctrl-C, time allowed for the gateway to confirm the cancellation.
    #[arg(long, env = "FLOWGATE_CHAT_CANCEL_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cancel_timeout: Duration,
    /// Largest message read from stdin (bytes).
    #[arg(long, env = "FLOWGATE_CHAT_MAX_INPUT_BYTES", default_value_t = 64 * 1024)]
    pub max_input_bytes: usize,
    /// Do not show status and element progress on stderr (errors are still shown).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl ChatArgs {
    /// Settings for `agent_id` against `url` with the flag defaults (tests, embedding).
    pub fn new(agent_id: impl Into<String>, url: impl Into<String>) -> ChatArgs {
        ChatArgs {
            agent_id: agent_id.into(),
            message: None,
            url: url.into(),
            token: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            cancel_timeout: Duration::from_secs(5),
            max_input_bytes: 64 * 1024,
            quiet: false,
        }
    }
}

/// How a run ended, as told by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `flow_completed`; `text` is the answer (streamed chunks, else the final output).
    Completed { text: String },
    /// `flow_error` or `error`.
    Failed { error: String, code: Option<String> },
    /// `flow_cancelled`; `by_user` when the client asked for it (Ctrl-C).
    Cancelled { by_user: bool },
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::Completed { .. } => ExitCode::SUCCESS,
            Outcome::Failed { .. } | Outcome::Cancelled { by_user: false } => ExitCode::from(1),
            Outcome::Cancelled { by_user: true } => ExitCode::from(130),
        }
    }
}

/// Why the client could not see the run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("invalid gateway URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the token is not usable in an HTTP header")]
    InvalidToken,
    #[error("no connection to {url} within {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("the gateway refused the connection: HTTP {status}{}", body_suffix(.body))]
    Refused { status: u16, body: String },
    #[error(
        "cannot connect to {url}: this build has no TLS support; use an http:// or ws:// URL \
         (e.g. through a TLS-terminating proxy on this machine)"
    )]
    NoTls { url: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tungstenite::Error,
    },
    #[error("the gateway sent nothing for {0:?}")]
    Silent(Duration),
    #[error("the gateway did not confirm the cancellation within {0:?}")]
    CancelTimeout(Duration),
    #[error("the connection closed before the run ended{}", close_suffix(*.code, .reason))]
    Closed { code: Option<u16>, reason: String },
    #[error("cannot send to the gateway: {0}")]
    Send(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot read the message from stdin: {0}")]
    Input(String),
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

fn close_suffix(code: Option<u16>, reason: &str) -> String {
    match code {
        None => " (without a close frame)".to_owned(),
        Some(c) => {
            let meaning = close_code_meaning(c);
            let reason = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            format!(" (close code {c}, {meaning}){reason}")
        }
    }
}

/// The meaning of a close code (docs/protocol.md, "Close codes").
pub fn close_code_meaning(code: u16) -> &'static str {
    crate::close::CloseCode::from_code(code)
        .map_or("unexpected code", crate::close::CloseCode::meaning)
}

/// Turn a gateway base URL into the run endpoint of `agent_id`.
///
/// `http` becomes `ws`, `https` becomes `wss`; a path prefix of the base is kept.
pub fn execute_url(base: &str, agent_id: &str) -> Result<String, ChatError> {
    let invalid = |reason: &str| ChatError::InvalidUrl {
        url: shown_url(base),
        reason: reason.into(),
    };
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| invalid("missing scheme"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(invalid("the scheme must be http, https, ws or wss")),
    };
    if rest.contains(['?', '#']) {
        return Err(invalid(
            "a query or fragment is not allowed in the base URL (pass a token with --token or \
             FLOWGATE_TOKEN, never in the URL)",
        ));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("missing host"));
    }
    if agent_id.is_empty() {
        return Err(invalid("the agent id is empty"));
    }
    Ok(format!(
        "{scheme}://{rest}/api/chat/execute/{}",
        encode_segment(agent_id)
    ))
}

/// A URL as error messages show it: no password, and a query or fragment (which may hold a
/// token) shown as `?…` / `#…`.
fn shown_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let (head, tail) = url.split_at(cut);
    let head = if head.contains("://") {
        crate::startup::redacted_url(head)
    } else {
        head.to_owned()
    };
    let mut shown = head;
    if tail.starts_with('?') {
        shown.push_str("?…");
    }
    if tail.contains('#') {
        shown.push_str("#…");
    }
    shown
}

/// Percent-encode one path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Tracks what has been written to stdout so progress lines on stderr do not land mid-line.
struct Screen<'a, O: Write, E: Write> {
    out: &'a mut O,
    err: &'a mut E,
    quiet: bool,
    /// stdout has text after its last newline.
    mid_line: bool,
    /// Everything streamed from `llm_chunk`s.
    streamed: String,
}

impl<O: Write, E: Write> Screen<'_, O, E> {
    fn text(&mut self, s: &str) -> std::io::Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        self.out.write_all(s.as_bytes())?;
        self.out.flush()?;
        self.mid_line = !s.ends_with('\n');
        Ok(())
    }

    fn end_text(&mut self) -> std::io::Result<()> {
        if self.mid_line {
            self.text("\n")?;
        }
        Ok(())
    }

    /// A line on stderr; progress lines are dropped when quiet, errors never are.
    fn note(&mut self, line: &str, is_error: bool) -> std::io::Result<()> {
        if self.quiet && !is_error {
            return Ok(());
        }
        let lead = if self.mid_line { "\n" } else { "" };
        writeln!(self.err, "{lead}{line}")?;
        self.err.flush()
    }
}

fn str_field<'v>(data: &'v Value, key: &str) -> Option<&'v str> {
    data.get(key).and_then(Value::as_str)
}

fn failure(data: &Value, fallback: &str) -> Outcome {
    Outcome::Failed {
        error: str_field(data, "error").unwrap_or(fallback).to_owned(),
        code: str_field(data, "code").map(str::to_owned),
    }
}

/// One run: connect, send `message`, stream the answer to `stdout` and progress to `stderr`.
///
/// When `interrupt` is cancelled the client sends `{"type":"cancel"}` and waits at most
/// `args.cancel_timeout` for the terminal event.
pub async fn chat(
    args: &ChatArgs,
    message: &str,
    interrupt: &CancellationToken,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<Outcome, ChatError> {
    let url = execute_url(&args.url, &args.agent_id)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ChatError::InvalidUrl {
            url: shown_url(&args.url),
            reason: e.to_string(),
        })?;
    let token = args
        .token
        .as_ref()
        .filter(|t| !t.expose().trim().is_empty());
    if let Some(token) = token {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ChatError::InvalidToken)?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    let mut screen = Screen {
        out: stdout,
        err: stderr,
        quiet: args.quiet,
        mid_line: false,
        streamed: String::new(),
    };

    let connected = timeout(
        args.connect_timeout,
        tokio_tungstenite::connect_async(request),
    )
    .await;
    let (mut ws, _response) = match connected {
        Err(_) => {
            return Err(ChatError::ConnectTimeout {
                url,
                timeout: args.connect_timeout,
            });
        }
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            return Err(ChatError::Refused {
                status: response.status().as_u16(),
                body,
            });
        }
        Ok(Err(tungstenite::Error::Url(tungstenite::error::UrlError::TlsFeatureNotEnabled))) => {
            return Err(ChatError::NoTls { url });
        }
        Ok(Err(source)) => return Err(ChatError::Connect { url, source }),
        Ok(Ok(pair)) => pair,
    };

    let run_request = json!({"message": message, "conversation_history": []});
    send(&mut ws, run_request.to_string(), args.connect_timeout).await?;

    let mut final_text: Option<String> = None;
    let mut cancel_deadline: Option<Instant> = None;
    let outcome = loop {
        let wait = match cancel_deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(args.idle_timeout),
            None => args.idle_timeout,
        };
        let next = tokio::select! {
            _ = interrupt.cancelled(), if cancel_deadline.is_none() => {
                cancel_deadline = Some(Instant::now() + args.cancel_timeout);
                screen.note("■ cancelling… (Ctrl-C again to quit)", true)?;
                match send(&mut ws, json!({"type": "cancel"}).to_string(), args.connect_timeout).await {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                }
            }
            next = timeout(wait, ws.next()) => next,
        };
        let frame = match next {
            Err(_) if cancel_deadline.is_some_and(|d| Instant::now() >= d) => {
                break Err(ChatError::CancelTimeout(args.cancel_timeout));
            }
            Err(_) => break Err(ChatError::Silent(args.idle_timeout)),
            Ok(None) => {
                break Err(ChatError::Closed {
                    code: None,
                    reason: String::new(),
                });
            }
            Ok(Some(Err(e))) => {
                break Err(ChatError::Closed {
                    code: None,
                    reason: e.to_string(),
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(close) => {
                let (code, reason) = match close {
                    Some(CloseFrame { code, reason }) => {
                        (Some(u16::from(code)), reason.to_string())
                    }
                    None => (None, String::new()),
                };
                break Err(ChatError::Closed { code, reason });
            }
            _ => continue,
        };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            screen.note("flowgate: ignoring a frame that is not JSON", false)?;
            continue;
        };
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        match event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "status" => {
                if let Some(m) = str_field(&data, "message") {
                    screen.note(&format!("… {m}"), false)?;
                }
            }
            "element_started" => {
                let name = str_field(&data, "element_name").or(str_field(&data, "element_id"));
                let kind = str_field(&data, "element_type").unwrap_or("?");
                let back = if data.get("backtracking").and_then(Value::as_bool) == Some(true) {
                    " [backtracking]"
                } else {
                    ""
                };
                screen.note(&format!("▶ {} ({kind}){back}", name.unwrap_or("?")), false)?;
            }
            "element_error" => {
                let name = str_field(&data, "element_name").or(str_field(&data, "element_id"));
                let error = str_field(&data, "error").unwrap_or("failed");
                screen.note(&format!("✗ {}: {error}", name.unwrap_or("?")), true)?;
            }
            "llm_chunk" => {
                if let Some(content) = str_field(&data, "content") {
                    screen.streamed.push_str(content);
                    screen.text(content)?;
                }
            }
            "final_output" => {
                if let Some(t) = str_field(&data, "text_output") {
                    final_text = Some(t.to_owned());
                }
            }
            "flow_completed" => {
                if screen.streamed.is_empty() {
                    let from_event = data
                        .get("final_output")
                        .and_then(|f| str_field(f, "text_output"))
                        .map(str::to_owned);
                    if let Some(t) = final_text.take().or(from_event) {
                        screen.text(&t)?;
                        screen.streamed = t;
                    }
                }
                break Ok(Outcome::Completed {
                    text: std::mem::take(&mut screen.streamed),
                });
            }
            "flow_error" => break Ok(failure(&data, "the run failed")),
            "error" => break Ok(failure(&data, "the gateway reported an error")),
            "flow_cancelled" => {
                break Ok(Outcome::Cancelled {
                    by_user: cancel_deadline.is_some(),
                });
            }
            _ => {}
        }
    };
    screen.end_text()?;
    let outcome = outcome?;
    match &outcome {
        Outcome::Failed { error, code } => {
            let code = code
                .as_deref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            screen.note(&format!("flowgate: {error}{code}"), true)?;
            if code == " [unauthenticated]" && token.is_none() {
                screen.note(
                    "flowgate: pass a token with --token or FLOWGATE_TOKEN",
                    true,
                )?;
            }
        }
        Outcome::Cancelled { .. } => screen.note("flowgate: the run was cancelled", true)?,
        Outcome::Completed { .. } => {}
    }
    // Best effort: the run is over whatever happens to the close handshake.
    let _ = timeout(args.connect_timeout, ws.close(None)).await;
    Ok(outcome)
}

async fn send<S>(ws: &mut S, text: String, limit: Duration) -> Result<(), ChatError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    match timeout(limit, ws.send(Message::text(text))).await {
        Err(_) => Err(ChatError::Send(format!("timed out after {limit:?}"))),
        Ok(Err(e)) => Err(ChatError::Send(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

/// Read the message from stdin (at most `max` bytes), without its trailing newline.
fn read_stdin(max: usize) -> Result<String, ChatError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("flowgate: type the message, then Ctrl-D");
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ChatError::Input(e.to_string()))?;
    if buf.len() > max {
        return Err(ChatError::Input(format!(
            "the message is longer than {max} bytes"
        )));
    }
    let text =
        String::from_utf8(buf).map_err(|_| ChatError::Input("the message is not UTF-8".into()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Run the client; the exit code is non-zero on `flow_error`/`error` (see the module docs).
pub async fn run(args: ChatArgs) -> ExitCode {
    let message = match &args.message {
        Some(m) => m.clone(),
        None => match read_stdin(args.max_input_bytes) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("flowgate: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    let signals = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!();
            std::process::exit(130);
        }
    });
    let result = chat(
        &args,
        &message,
        &interrupt,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
    .await;
    signals.abort();
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("flowgate: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_the_url_never_reaches_the_error() {
        for url in [
            "ws://127.0.0.1:1/?token=SECRETJWT",
            "wx://u:SECRETJWT@h/?token=SECRETJWT",
            "ws://h/api#token=SECRETJWT",
        ] {
            let err = execute_url(url, "echo").unwrap_err().to_string();
            assert!(!err.contains("SECRETJWT"), "{err}");
            assert!(err.contains("invalid gateway URL"), "{err}");
        }
        let err = execute_url("ws://h/?token=SECRETJWT", "echo")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`ws://h/?…`") && err.contains("--token"),
            "{err}"
        );
    }

    #[test]
    fn http_base_urls_become_websocket_urls() {
        assert_eq!(
            execute_url("http://localhost:8000", "echo").unwrap(),
            "ws://localhost:8000/api/chat/execute/echo"
        );
        assert_eq!(
            execute_url("HTTPS://chat.example/flowgate/", "my agent").unwrap(),
            "wss://chat.example/flowgate/api/chat/execute/my%20agent"
        );
        assert_eq!(
            execute_url("ws://127.0.0.1:1/", "a/b").unwrap(),
            "ws://127.0.0.1:1/api/chat/execute/a%2Fb"
        );
    }

    #[test]
    fn unusable_base_urls_are_refused_with_a_reason() {
        for (bad, shown) in [
            ("localhost:8000", "localhost:8000"),
            ("ftp://x", "ftp://x"),
            ("http://", "http://"),
            ("http://h/?token=x", "http://h/?…"),
        ] {
            let err = execute_url(bad, "echo").unwrap_err().to_string();
            assert!(err.contains(&format!("`{shown}`")), "{err}");
        }
    }

    #[test]
    fn close_errors_explain_the_code() {
        let e = ChatError::Closed {
            code: Some(4404),
            reason: "no such agent".into(),
        };
        assert_eq!(
            e.to_string(),
            "the connection closed before the run ended (close code 4404, agent not found): no such agent"
        );
    }
}
