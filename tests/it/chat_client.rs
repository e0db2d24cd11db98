//! `flowgate chat` against a scripted fake gateway: what the user sees on stdout/stderr and the
//! outcome (exit code) for streamed answers, failures, auth errors, Ctrl-C and early closes.

use std::time::Duration;

use flowgate::client::chat::{ChatArgs, ChatError, Outcome, chat};
use flowgate::config::Secret;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "good-token";
const LIMIT: Duration = Duration::from_secs(10);

/// One step of the fake gateway's script.
#[derive(Clone)]
enum Step {
    /// Send this frame (the fake adds `run_id`/`seq`).
    Send(Value),
    /// Wait for a client frame of this `type` (`"run"` for a run request).
    Expect(&'static str),
    /// Close with this code.
    Close(u16),
    /// Send nothing more but keep the socket open.
    Hang,
    /// Tell the test that the script got here.
    Reached(std::sync::Arc<tokio::sync::Notify>),
}

/// What the fake gateway saw.
#[derive(Debug, Default)]
struct Seen {
    authorization: Option<String>,
    path: String,
    frames: Vec<Value>,
}

fn event(kind: &str, data: Value) -> Step {
    Step::Send(json!({"type": kind, "timestamp": 1.0, "data": data}))
}

fn status_frames() -> Vec<Step> {
    [
        "Retrieving workflow...",
        "Preparing workflow for execution...",
        "Starting execution...",
    ]
    .into_iter()
    .map(|m| event("status", json!({"message": m})))
    .collect()
}

fn started(name: &str, kind: &str) -> Step {
    event(
        "element_started",
        json!({"element_id": format!("{kind}_1"), "element_name": name, "element_type": kind, "backtracking": false}),
    )
}

fn chunk(text: &str) -> Step {
    event(
        "llm_chunk",
        json!({"element_id": "llm_text_1", "content": text}),
    )
}

/// Start a fake gateway on port 0 that refuses upgrades without `Authorization: Bearer <TOKEN>`
/// unless `check_auth` is false, and replays `script` to the first client.
async fn fake_gateway(
    script: Vec<Step>,
    check_auth: bool,
) -> (String, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = Seen::default();
        let mut head = (None, String::new());
        // The callback's type is tungstenite's; its error is a whole HTTP response.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            head = (auth.clone(), req.uri().path().to_owned());
            if check_auth && auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                let mut refuse = ErrorResponse::new(Some("missing token".into()));
                *refuse.status_mut() = http::StatusCode::UNAUTHORIZED;
                return Err(refuse);
            }
            Ok(resp)
        };
        let accepted = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
        (seen.authorization, seen.path) = head;
        let Ok(mut ws) = accepted else { return seen };
        let run_id = "00000000-0000-4000-8000-000000000001";
        let mut seq = 0;
        for step in script {
            match step {
                Step::Send(mut frame) => {
                    seq += 1;
                    frame["run_id"] = json!(run_id);
                    frame["seq"] = json!(seq);
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
                        return seen;
                    }
                }
                Step::Expect(kind) => loop {
                    let msg = tokio::time::timeout(LIMIT, ws.next()).await;
                    let Ok(Some(Ok(Message::Text(text)))) = msg else {
                        return seen;
                    };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let got = frame
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("run")
                        .to_owned();
                    seen.frames.push(frame);
                    if got == kind {
                        break;
                    }
                },
                Step::Close(code) => {
                    let close = CloseFrame {
                        code: CloseCode::from(code),
                        reason: "".into(),
                    };
                    let _ = ws.close(Some(close)).await;
                    return seen;
                }
                Step::Hang => {
                    let _ = tokio::time::timeout(LIMIT, ws.next()).await;
                    return seen;
                }
                Step::Reached(reached) => reached.notify_one(),
            }
        }
        // Drain until the client closes.
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(LIMIT, ws.next()).await {
            if msg.is_close() {
                break;
            }
        }
        seen
    });
    (url, handle)
}

fn args(url: &str, agent: &str) -> ChatArgs {
    let mut args = ChatArgs::new(agent, url);
    args.token = Some(Secret::new(TOKEN));
    args.connect_timeout = Duration::from_secs(5);
    args.idle_timeout = Duration::from_secs(5);
    args.cancel_timeout = Duration::from_secs(2);
    args
}

struct Run {
    result: Result<Outcome, ChatError>,
    stdout: String,
    stderr: String,
}

async fn run_chat(args: &ChatArgs, message: &str, interrupt: &CancellationToken) -> Run {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = tokio::time::timeout(LIMIT, chat(args, message, interrupt, &mut out, &mut err))
        .await
        .expect("the client finishes");
    Run {
        result,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

fn completed_answer(mut steps: Vec<Step>, body: Vec<Step>) -> Vec<Step> {
    steps.insert(0, Step::Expect("run"));
    steps.push(event("flow_started", json!({"flow_id": "f"})));
    steps.extend(body);
    steps.push(event(
        "flow_completed",
        json!({"flow_id": "f", "execution_order": []}),
    ));
    steps
}

#[tokio::test]
async fn streamed_chunks_appear_on_stdout_and_the_run_exits_zero() {
    let script = completed_answer(
        status_frames(),
        vec![
            started("Chat Input", "chat_input"),
            started("Assistant", "llm_text"),
            chunk("Hello"),
            chunk(", "),
            chunk("world"),
            started("End", "end"),
            event("final_output", json!({"text_output": "Hello, world"})),
        ],
    );
    let (url, gateway) = fake_gateway(script, true).await;
    let run = run_chat(
        &args(&url, "assistant"),
        "hi there",
        &CancellationToken::new(),
    )
    .await;
    let seen = gateway.await.unwrap();

    let outcome = run.result.unwrap();
    assert_eq!(
        outcome,
        Outcome::Completed {
            text: "Hello, world".into()
        }
    );
    assert_eq!(outcome.exit_code(), std::process::ExitCode::SUCCESS);
    assert_eq!(
        run.stdout, "Hello, world\n",
        "streamed text once, no duplicate final output"
    );
    assert!(
        run.stderr.contains("▶ Assistant (llm_text)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Retrieving workflow..."),
        "{}",
        run.stderr
    );
    assert_eq!(seen.path, "/api/chat/execute/assistant");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer good-token"));
    assert_eq!(seen.frames[0]["message"], "hi there");
    assert_eq!(seen.frames[0]["conversation_history"], json!([]));
}

#[tokio::test]
async fn final_output_is_printed_when_nothing_was_streamed() {
    let script = completed_answer(
        vec![],
        vec![
            started("End", "end"),
            event("final_output", json!({"text_output": "hello"})),
        ],
    );
    let (url, _gateway) = fake_gateway(script, true).await;
    let mut a = args(&url, "echo");
    a.quiet = true;
    let run = run_chat(&a, "hello", &CancellationToken::new()).await;
    assert_eq!(
        run.result.unwrap(),
        Outcome::Completed {
            text: "hello".into()
        }
    );
    assert_eq!(run.stdout, "hello\n");
    assert_eq!(run.stderr, "", "quiet hides progress");
}

#[tokio::test]
async fn flow_error_exits_non_zero_with_the_error_and_code_on_stderr() {
    let mut script = vec![Step::Expect("run")];
    script.extend(status_frames());
    script.push(started("Chat Input", "chat_input"));
    script.push(event(
        "element_error",
        json!({"element_name": "Chat Input", "error": "Input is required"}),
    ));
    script.push(event(
        "flow_error",
        json!({"error": "Element 'Chat Input' failed: Input is required", "code": "invalid_request"}),
    ));
    let (url, _gateway) = fake_gateway(script, true).await;
    let run = run_chat(&args(&url, "echo"), "", &CancellationToken::new()).await;

    let outcome = run.result.unwrap();
    assert_ne!(outcome.exit_code(), std::process::ExitCode::SUCCESS);
    assert!(matches!(&outcome, Outcome::Failed { code: Some(c), .. } if c == "invalid_request"));
    assert!(
        run.stderr.contains("✗ Chat Input: Input is required"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("Element 'Chat Input' failed: Input is required [invalid_request]"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn unauthenticated_error_exits_non_zero_with_the_message() {
    let script = vec![
        Step::Expect("run"),
        Step::Send(
            json!({"type": "error", "data": {"error": "the token has expired", "code": "unauthenticated"}}),
        ),
        Step::Close(4401),
    ];
    let (url, gateway) = fake_gateway(script, false).await;
    let mut a = args(&url, "echo");
    a.token = None;
    let run = run_chat(&a, "hello", &CancellationToken::new()).await;

    let outcome = run.result.unwrap();
    assert_eq!(
        outcome,
        Outcome::Failed {
            error: "the token has expired".into(),
            code: Some("unauthenticated".into())
        }
    );
    assert_ne!(outcome.exit_code(), std::process::ExitCode::SUCCESS);
    assert!(
        run.stderr
            .contains("the token has expired [unauthenticated]"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--token"),
        "hints at the missing token: {}",
        run.stderr
    );
    assert_eq!(
        gateway.await.unwrap().authorization,
        None,
        "no token, no header"
    );
}

#[tokio::test]
async fn refused_upgrade_reports_the_http_status() {
    let (url, _gateway) = fake_gateway(vec![], true).await;
    let mut a = args(&url, "echo");
    a.token = Some(Secret::new("wrong"));
    let run = run_chat(&a, "hello", &CancellationToken::new()).await;
    let err = run.result.unwrap_err();
    assert!(
        matches!(err, ChatError::Refused { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP 401"), "{err}");
}

#[tokio::test]
async fn interrupt_sends_cancel_and_waits_for_flow_cancelled() {
    let answering = std::sync::Arc::new(tokio::sync::Notify::new());
    let script = vec![
        Step::Expect("run"),
        event("flow_started", json!({"flow_id": "f"})),
        started("Assistant", "llm_text"),
        chunk("partial"),
        Step::Reached(answering.clone()),
        Step::Expect("cancel"),
        event("flow_cancelled", json!({"flow_id": "f"})),
    ];
    let (url, gateway) = fake_gateway(script, true).await;
    let interrupt = CancellationToken::new();
    let trigger = interrupt.clone();
    let a = args(&url, "assistant");
    let (run, ()) = tokio::join!(run_chat(&a, "go", &interrupt), async move {
        // Ctrl-C once the answer has started (its first chunk is sent).
        answering.notified().await;
        trigger.cancel();
    });
    let seen = gateway.await.unwrap();

    let outcome = run.result.unwrap();
    assert_eq!(outcome, Outcome::Cancelled { by_user: true });
    assert_eq!(outcome.exit_code(), std::process::ExitCode::from(130));
    assert_eq!(seen.frames.last().unwrap(), &json!({"type": "cancel"}));
    assert_eq!(run.stdout, "partial\n");
    assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
}

#[tokio::test]
async fn close_before_the_terminal_event_is_an_error_naming_the_code() {
    let script = vec![
        Step::Expect("run"),
        event("flow_started", json!({"flow_id": "f"})),
        chunk("half an ans"),
        Step::Close(1011),
    ];
    let (url, _gateway) = fake_gateway(script, true).await;
    let run = run_chat(&args(&url, "assistant"), "go", &CancellationToken::new()).await;
    let err = run.result.unwrap_err();
    assert!(
        matches!(
            err,
            ChatError::Closed {
                code: Some(1011),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("internal error"), "{err}");
    assert_eq!(run.stdout, "half an ans\n");
}

#[tokio::test]
async fn a_silent_gateway_times_out() {
    let script = vec![Step::Expect("run"), Step::Hang];
    let (url, _gateway) = fake_gateway(script, true).await;
    let mut a = args(&url, "echo");
    a.idle_timeout = Duration::from_millis(300);
    let run = run_chat(&a, "hello", &CancellationToken::new()).await;
    assert!(
        matches!(run.result, Err(ChatError::Silent(_))),
        "{:?}",
        run.result
    );
}

// ---- against the real gateway and reference engine ------------------------------------------

fn real_args(app: &crate::common::TestApp, agent: &str) -> ChatArgs {
    let mut a = args(&format!("http://{}", app.addr), agent);
    a.token = Some(Secret::new(crate::common::token("alice")));
    a
}

#[tokio::test]
async fn real_gateway_echo_prints_the_message_back() {
    let app = crate::common::spawn_app().await;
    let run = run_chat(
        &real_args(&app, "echo"),
        "hello from the terminal",
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(
        run.result.unwrap(),
        Outcome::Completed {
            text: "hello from the terminal".into()
        }
    );
    assert_eq!(run.stdout, "hello from the terminal\n");
    assert!(
        run.stderr.contains("▶ Chat Input (chat_input)"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn real_gateway_assistant_streams_its_answer() {
    let app = crate::common::spawn_app().await;
    let run = run_chat(
        &real_args(&app, "assistant"),
        "Hello there",
        &CancellationToken::new(),
    )
    .await;
    let Ok(Outcome::Completed { text }) = run.result else {
        panic!("{:?}\n{}", run.result, run.stderr)
    };
    assert!(text.contains("Hello there"), "{text}");
    assert_eq!(run.stdout, format!("{text}\n"), "the streamed text, once");
    assert!(
        run.stderr.contains("▶ Assistant (llm_text)"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn real_gateway_unknown_agent_fails_with_agent_not_found() {
    let app = crate::common::spawn_app().await;
    let run = run_chat(
        &real_args(&app, "no-such-agent"),
        "hi",
        &CancellationToken::new(),
    )
    .await;
    let outcome = run.result.unwrap();
    assert!(
        matches!(&outcome, Outcome::Failed { code: Some(c), .. } if c == "agent_not_found"),
        "{outcome:?}"
    );
    assert_ne!(outcome.exit_code(), std::process::ExitCode::SUCCESS);
    assert!(run.stderr.contains("[agent_not_found]"), "{}", run.stderr);
}
