//! The verified proxy hop (DIALECTS.md section 3) against a mock upstream written here (it
//! records the headers it got, echoes frames, can close with any code, refuse the upgrade or drop
//! TCP), and the two-flowgate chain: client → flowgate hop → flowgate `omni2` → engine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate::config::{DialectId, GatewayConfig, Hop};
use flowgate::engine::EngineConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::common::*;

/// How the mock upstream behaves.
#[derive(Clone, Copy)]
enum Mode {
    /// Echo frames; a text `close:<code>:<reason>` makes it close with that code and reason.
    Echo,
    /// Refuse the upgrade with this HTTP status.
    Refuse(u16),
    /// Drop the TCP connection after the first frame.
    Drop,
    /// Send many large frames right after the upgrade (and record the close it gets).
    Flood,
    /// Upgrade (choosing `chat.v1` when offered), then neither read nor write: no pong, no
    /// frame taken.
    Silent,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    headers: Vec<(String, String)>,
    close: Option<(u16, String)>,
}

struct Upstream {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    // The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
    #[allow(clippy::result_large_err)]
    async fn start(mode: Mode) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws/chat", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = shared.clone();
                tokio::spawn(async move {
                    let record = seen.clone();
                    let callback =
                        move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                            let mut s = record.lock().unwrap();
                            s.connections += 1;
                            s.headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                                .collect();
                            if let Mode::Refuse(status) = mode {
                                let mut refused = ErrorResponse::new(None);
                                *refused.status_mut() = status.try_into().unwrap();
                                return Err(refused);
                            }
                            let mut resp = resp;
                            let offered = req
                                .headers()
                                .get("sec-websocket-protocol")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            if offered.split(',').any(|p| p.trim() == "chat.v1") {
                                resp.headers_mut()
                                    .insert("sec-websocket-protocol", "chat.v1".parse().unwrap());
                            }
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        return;
                    };
                    if let Mode::Silent = mode {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(ws);
                        return;
                    }
                    if let Mode::Flood = mode {
                        let (mut tx, mut rx) = ws.split();
                        let flood = tokio::spawn(async move {
                            let chunk = "x".repeat(32 * 1024);
                            for _ in 0..2000 {
                                if tx.send(Message::text(chunk.clone())).await.is_err() {
                                    return;
                                }
                            }
                        });
                        while let Some(Ok(m)) = rx.next().await {
                            if let Message::Close(f) = m {
                                seen.lock().unwrap().close =
                                    f.map(|f| (u16::from(f.code), f.reason.to_string()));
                                break;
                            }
                        }
                        flood.abort();
                        return;
                    }
                    while let Some(Ok(m)) = ws.next().await {
                        match m {
                            Message::Text(t) if t.starts_with("close:") => {
                                let mut parts = t.splitn(3, ':').skip(1);
                                let code: u16 = parts.next().unwrap().parse().unwrap();
                                let reason = parts.next().unwrap_or("").to_owned();
                                let frame = CloseFrame {
                                    code: code.into(),
                                    reason: reason.into(),
                                };
                                let _ = ws.send(Message::Close(Some(frame))).await;
                            }
                            Message::Text(_) | Message::Binary(_) => {
                                if let Mode::Drop = mode {
                                    return; // the TCP connection goes with the socket
                                }
                                let _ = ws.send(m).await;
                            }
                            Message::Close(f) => {
                                seen.lock().unwrap().close =
                                    f.map(|f| (u16::from(f.code), f.reason.to_string()));
                                let _ = ws.close(None).await;
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Upstream { url, seen }
    }

    /// Wait until the upstream got a close frame with `code`.
    async fn closed_with(&self, code: u16) {
        let what = format!("the upstream got {code}");
        wait_until(&what, FRAME_WAIT, || {
            let seen = self.seen.clone();
            async move { seen.lock().unwrap().close.as_ref().map(|c| c.0) == Some(code) }
        })
        .await;
    }

    fn header(&self, name: &str) -> Vec<String> {
        let s = self.seen.lock().unwrap();
        s.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn hop_to(url: &str) -> TestApp {
    let mut config = GatewayConfig::for_tests("ws://127.0.0.1:1");
    config.hops = vec![Hop {
        path: "/ws/chat".into(),
        upstream: url.into(),
    }];
    spawn_gateway_files(config).await
}

fn no_check(_: &Value) {}

/// A raw client of the hop (frames are the upstream's, not flowgate's).
async fn client(
    app: &TestApp,
    token: &str,
    extra: &[(&str, &str)],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws/chat?token={token}", app.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in extra {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    ws
}

async fn next(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    tokio::time::timeout(FRAME_WAIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("not ended")
        .expect("not an error")
}

/// The close frame that comes next; the close is answered (the hop waits for that).
async fn closed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> (u16, String) {
    let m = next(ws).await;
    let _ = ws.flush().await;
    match m {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn the_hop_forwards_the_verified_identity_and_relays_frames_both_ways_in_order() {
    let up = Upstream::start(Mode::Echo).await;
    let app = hop_to(&up.url).await;
    let t = token("42");
    let mut ws = client(
        &app,
        &t,
        &[
            ("x-user-id", "1"),
            ("x-user-role", "admin"),
            ("origin", &format!("http://{}", app.addr)),
        ],
    )
    .await;
    for i in 0..20 {
        ws.send(Message::text(format!("frame {i}"))).await.unwrap();
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    for i in 0..20 {
        assert_eq!(next(&mut ws).await, Message::text(format!("frame {i}")));
    }
    assert_eq!(next(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    assert_eq!(up.header("authorization"), [format!("Bearer {t}")]);
    assert_eq!(
        up.header("x-user-id"),
        ["42"],
        "from the verified token, not the client"
    );
    assert!(
        up.header("x-user-role").is_empty(),
        "client X-User-* headers are stripped"
    );
    assert_eq!(up.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(up.header("origin").len(), 1);
    // The client closes with its code: the upstream gets it.
    ws.send(Message::Close(Some(CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    wait_until("the upstream saw the close", FRAME_WAIT, || {
        let seen = up.seen.clone();
        async move { seen.lock().unwrap().close.clone() == Some((4000, "bye".into())) }
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn close_codes_pass_and_a_dropped_upstream_is_engine_lost_then_1011() {
    let up = Upstream::start(Mode::Echo).await;
    let app = hop_to(&up.url).await;
    let mut ws = client(&app, &token("42"), &[]).await;
    ws.send(Message::text("close:1008:Access blocked: by an admin"))
        .await
        .unwrap();
    assert_eq!(
        closed(&mut ws).await,
        (1008, "Access blocked: by an admin".into())
    );
    app.stop().await;

    let up = Upstream::start(Mode::Drop).await;
    let app = hop_to(&up.url).await;
    let mut ws = client(&app, &token("42"), &[]).await;
    ws.send(Message::text("hi")).await.unwrap();
    let Message::Text(t) = next(&mut ws).await else {
        panic!("an error frame")
    };
    let err: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(err["code"], "engine_lost");
    assert_eq!(closed(&mut ws).await.0, 1011, "never 1006");
    app.stop().await;
}

#[tokio::test]
async fn refusals_map_to_the_clients_codes_and_a_bad_token_never_reaches_the_upstream() {
    for (mode, code, close) in [
        (Mode::Refuse(401), "unauthenticated", 4401),
        (Mode::Refuse(403), "forbidden", 4403),
    ] {
        let up = Upstream::start(mode).await;
        let app = hop_to(&up.url).await;
        let mut ws = client(&app, &token("42"), &[]).await;
        let Message::Text(t) = next(&mut ws).await else {
            panic!("an error frame")
        };
        assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["code"], code);
        assert_eq!(closed(&mut ws).await.0, close);
        app.stop().await;
    }
    let dead = dead_addr().await;
    let app = hop_to(&format!("ws://{dead}/ws/chat")).await;
    let mut ws = client(&app, &token("42"), &[]).await;
    let Message::Text(t) = next(&mut ws).await else {
        panic!("an error frame")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["code"],
        "engine_unavailable"
    );
    assert_eq!(closed(&mut ws).await.0, 1011);
    app.stop().await;

    let up = Upstream::start(Mode::Echo).await;
    let app = hop_to(&up.url).await;
    let mut ws = client(&app, &forged_token("42"), &[]).await;
    let Message::Text(t) = next(&mut ws).await else {
        panic!("an error frame")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["code"],
        "unauthenticated"
    );
    assert_eq!(closed(&mut ws).await.0, 4401);
    assert_eq!(up.seen.lock().unwrap().connections, 0, "never forwarded");
    app.stop().await;
}

#[tokio::test]
async fn two_flowgates_in_a_chain_keep_order_cancel_and_close_codes() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 40;
    engine.llm_token_delay = Duration::from_millis(10);
    let backend = spawn_app_with(engine, |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Omni2];
        c.omni2_agent_id = Some("assistant".into());
    })
    .await;
    let hop = hop_to(&format!("ws://{}/ws/chat", backend.addr)).await;
    let url = format!("ws://{}/ws/chat?token={}", hop.addr, token("42"));
    let mut c = DialectSocket::connect(&url, no_check).await;
    c.send(json!({"type": "message", "text": "What is flowgate?"}))
        .await;
    let turn = c
        .until(|f| f["type"] == "done" || f["type"] == "error")
        .await;
    assert_eq!(turn.last().unwrap()["type"], "done");
    let seqs: Vec<u64> = turn.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let info = backend.ended_run(turn[0]["run_id"].as_str().unwrap()).await;
    assert_eq!(
        info.user_id, "42",
        "the backend verified the forwarded token"
    );

    // Cancel through the hop.
    c.send(json!({"type": "message", "text": "again"})).await;
    let first = c.until(|f| f["type"] == "token").await;
    c.send(json!({"type": "cancel"})).await;
    let rest = c
        .until(|f| f["type"] == "done" || f["type"] == "error")
        .await;
    assert_eq!(rest.last().unwrap()["result"]["cancelled"], true);
    let run_id = first.last().unwrap()["run_id"].as_str().unwrap();
    assert_eq!(
        backend.ended_run(run_id).await.status,
        flowgate::runlog::RunState::Cancelled
    );
    drop(c);
    hop.stop().await;
    backend.stop().await;

    // The backend's forbidden close (1008, empty reason) reaches the client unchanged.
    let backend = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Omni2];
        c.omni2_agent_id = Some("router".into());
    })
    .await;
    let hop = hop_to(&format!("ws://{}/ws/chat", backend.addr)).await;
    let url = format!("ws://{}/ws/chat?token={}", hop.addr, token("alice"));
    let mut c = DialectSocket::connect(&url, no_check).await;
    c.send(json!({"type": "message", "text": "hi"})).await;
    let err = c.until(|f| f["type"] == "error").await;
    assert_eq!(err.last().unwrap()["code"], "forbidden");
    assert!(c.next().await.is_none());
    assert_eq!(c.close, Some((1008, String::new())));
    hop.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn a_hop_on_a_path_flowgate_already_serves_is_refused_at_startup() {
    let mut config = GatewayConfig::for_tests("ws://127.0.0.1:1");
    config.dialects = vec![DialectId::Neuralabs, DialectId::Omni2];
    config.omni2_agent_id = Some("assistant".into());
    config.hops = vec![Hop {
        path: "/ws/chat".into(),
        upstream: "ws://127.0.0.1:1/ws/chat".into(),
    }];
    let store = flowgate::store::Store::Files(flowgate::store::files::FilesStore::embedded());
    let err = flowgate::http::Gateway::with_store(config, store)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--hop /ws/chat"), "{err}");
}

#[tokio::test]
async fn a_dropped_client_gives_the_upstream_1001_and_shutdown_closes_both_with_1012() {
    let up = Upstream::start(Mode::Echo).await;
    let app = hop_to(&up.url).await;
    let mut ws = client(&app, &token("42"), &[]).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    drop(ws); // TCP goes, no close frame
    up.closed_with(1001).await;

    let mut ws = client(&app, &token("42"), &[]).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    app.shutdown.cancel();
    assert_eq!(closed(&mut ws).await.0, 1012);
    up.closed_with(1012).await;
    app.stop().await;
}

#[tokio::test]
async fn an_expiring_token_closes_the_client_with_4401_and_the_upstream_with_1000() {
    let up = Upstream::start(Mode::Echo).await;
    let app = hop_to(&up.url).await;
    let short = flowgate::auth::mint_hs256(
        &flowgate::config::Secret::new(SECRET),
        "42",
        Duration::from_secs(1),
    );
    let mut ws = client(&app, &short, &[]).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    let Message::Text(t) = next(&mut ws).await else {
        panic!("an error frame")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap()["code"],
        "unauthenticated"
    );
    assert_eq!(closed(&mut ws).await.0, 4401);
    up.closed_with(1000).await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4408_and_the_upstream_with_1001() {
    let up = Upstream::start(Mode::Flood).await;
    let mut config = GatewayConfig::for_tests("ws://127.0.0.1:1");
    config.hops = vec![Hop {
        path: "/ws/chat".into(),
        upstream: up.url.clone(),
    }];
    config.client_write_timeout = Duration::from_millis(300);
    let app = spawn_gateway_files(config).await;
    // The client reads nothing while the upstream floods it.
    let mut ws = client(&app, &token("42"), &[]).await;
    up.closed_with(1001).await;
    // Reading now: the backlog, then the 4408 close.
    let close = tokio::time::timeout(FRAME_WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the close in time");
    assert_eq!(close, Some(4408));
    app.stop().await;
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn hop_config(url: &str) -> GatewayConfig {
    let mut config = GatewayConfig::for_tests("ws://127.0.0.1:1");
    config.hops = vec![Hop {
        path: "/ws/chat".into(),
        upstream: url.into(),
    }];
    // A side that does not answer a close (the silent upstream) holds the test no longer.
    config.client_close_timeout = Duration::from_millis(500);
    config
}

/// Connect to the hop with `query` (e.g. `?token=…`) and these headers; the upgrade's answer too.
async fn upgrade(
    app: &TestApp,
    query: &str,
    headers: &[(&str, &str)],
) -> (
    Socket,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws/chat{query}", app.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
}

/// The error frame's `code`, then the close code.
async fn refused_with(ws: &mut Socket) -> (String, u16) {
    let Message::Text(t) = next(ws).await else {
        panic!("an error frame")
    };
    let code = serde_json::from_str::<Value>(&t).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    (code, closed(ws).await.0)
}

#[tokio::test]
async fn the_clients_subprotocols_go_upstream_and_the_upstreams_choice_comes_back() {
    let up = Upstream::start(Mode::Echo).await;
    let app = hop_to(&up.url).await;
    let t = token("42");
    let protocol = |r: &tokio_tungstenite::tungstenite::handshake::client::Response| {
        r.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // Token in the query, an application subprotocol offered: the upstream chooses it.
    let query = format!("?token={t}");
    let (mut ws, answer) = upgrade(&app, &query, &[("sec-websocket-protocol", "chat.v1")]).await;
    assert_eq!(protocol(&answer).as_deref(), Some("chat.v1"));
    assert_eq!(up.header("sec-websocket-protocol"), ["chat.v1"]);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    drop(ws);

    // The token in the `bearer` subprotocol: only the application's protocols go upstream.
    let offered = format!("bearer, {t}, chat.v1");
    let (mut ws, answer) = upgrade(&app, "", &[("sec-websocket-protocol", &offered)]).await;
    assert_eq!(protocol(&answer).as_deref(), Some("chat.v1"));
    assert_eq!(up.header("sec-websocket-protocol"), ["chat.v1"]);
    assert_eq!(up.header("authorization"), [format!("Bearer {t}")]);
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("again"));
    drop(ws);

    // `bearer` alone: the client is answered `bearer`, the upstream is offered nothing.
    let offered = format!("bearer, {t}");
    let (ws, answer) = upgrade(&app, "", &[("sec-websocket-protocol", &offered)]).await;
    assert_eq!(protocol(&answer).as_deref(), Some("bearer"));
    assert!(up.header("sec-websocket-protocol").is_empty());
    drop(ws);
    app.stop().await;
}

#[tokio::test]
async fn the_hop_pings_each_leg_and_a_silent_side_is_gone() {
    // An upstream that stops answering (no pong, no frame): the client gets engine_lost, 1011.
    let up = Upstream::start(Mode::Silent).await;
    let mut config = hop_config(&up.url);
    config.ping_interval = Duration::from_millis(100);
    let app = spawn_gateway_files(config).await;
    let mut ws = client(&app, &token("42"), &[]).await;
    let started = std::time::Instant::now();
    // The client's own leg is pinged (and the client's pongs keep it alive meanwhile).
    let mut pinged = false;
    let (code, close) = loop {
        match next(&mut ws).await {
            Message::Ping(_) => pinged = true,
            Message::Text(t) => {
                let code = serde_json::from_str::<Value>(&t).unwrap()["code"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                break (code, closed(&mut ws).await.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pinged, "the hop pings the client");
    assert_eq!((code.as_str(), close), ("engine_lost", 1011));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;

    // A client that stops answering: the upstream gets 1001, the client 4408 when it reads.
    let up = Upstream::start(Mode::Echo).await;
    let mut config = hop_config(&up.url);
    config.ping_interval = Duration::from_millis(100);
    let app = spawn_gateway_files(config).await;
    let mut ws = client(&app, &token("42"), &[]).await;
    up.closed_with(1001).await;
    let close = tokio::time::timeout(FRAME_WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("the close in time");
    assert_eq!(close, Some((4408, "idle: no pong".into())));
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_that_takes_no_frames_is_engine_timeout_for_the_client() {
    let up = Upstream::start(Mode::Silent).await;
    let mut config = hop_config(&up.url);
    config.client_write_timeout = Duration::from_millis(300);
    let app = spawn_gateway_files(config).await;
    let ws = client(&app, &token("42"), &[]).await;
    let (mut tx, mut rx) = ws.split();
    // Frames until the upstream's buffers are full and the hop's write to it times out.
    let flood = tokio::spawn(async move {
        let chunk = "x".repeat(32 * 1024);
        for _ in 0..4000 {
            if tx.send(Message::text(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let frames = tokio::time::timeout(FRAME_WAIT, async {
        let mut got = Vec::new();
        while let Some(Ok(m)) = rx.next().await {
            let end = matches!(m, Message::Close(_));
            got.push(m);
            if end {
                break;
            }
        }
        got
    })
    .await
    .expect("the refusal in time");
    flood.abort();
    let Some(Message::Text(t)) = frames.first() else {
        panic!("an error frame first: {frames:?}")
    };
    let err: Value = serde_json::from_str(t).unwrap();
    assert_eq!(err["code"], "engine_timeout");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("did not take a frame"),
        "{err}"
    );
    let Some(Message::Close(Some(f))) = frames.last() else {
        panic!("a close last: {frames:?}")
    };
    assert_eq!(u16::from(f.code), 1011);
    app.stop().await;
}

/// A mock auth service (the OMNI2 chain's validate endpoint): answers `status` after `delay`,
/// with `X-User-Id: 42`, `X-User-Username: alice`, `X-User-Role: admin`; records the
/// `Authorization` headers it got.
async fn auth_service(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/api/v1/auth/validate",
        axum::routing::get(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                record.lock().unwrap().push(auth);
                tokio::time::sleep(delay).await;
                (
                    StatusCode::from_u16(status).unwrap(),
                    [
                        ("x-user-id", "42"),
                        ("x-user-username", "alice"),
                        ("x-user-role", "admin"),
                    ],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/auth/validate",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn the_auth_service_is_asked_and_its_answers_map_to_the_clients_codes() {
    let t = token("42");
    // 200: admitted; its identity headers go upstream.
    let up = Upstream::start(Mode::Echo).await;
    let (auth, asked) = auth_service(200, Duration::ZERO).await;
    let mut config = hop_config(&up.url);
    config.hop_auth_url = Some(auth);
    let app = spawn_gateway_files(config).await;
    let mut ws = client(&app, &t, &[("x-user-role", "root")]).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    assert_eq!(*asked.lock().unwrap(), [format!("Bearer {t}")]);
    assert_eq!(up.header("x-user-id"), ["42"]);
    assert_eq!(up.header("x-user-username"), ["alice"]);
    assert_eq!(
        up.header("x-user-role"),
        ["admin"],
        "the service's, not the client's"
    );
    drop(ws);
    app.stop().await;

    // Refusals, errors and silence all refuse the client; none reaches the upstream.
    let cases: [(u16, Duration, &str, &str, u16); 5] = [
        (401, Duration::ZERO, "42", "unauthenticated", 4401),
        (403, Duration::ZERO, "42", "forbidden", 4403),
        (500, Duration::ZERO, "42", "engine_unavailable", 1011),
        (
            200,
            Duration::from_secs(10),
            "42",
            "engine_unavailable",
            1011,
        ),
        // The service names another user than the verified token's.
        (200, Duration::ZERO, "7", "forbidden", 4403),
    ];
    for (status, delay, user, code, close) in cases {
        let up = Upstream::start(Mode::Echo).await;
        let (auth, asked) = auth_service(status, delay).await;
        let mut config = hop_config(&up.url);
        config.hop_auth_url = Some(auth);
        config.hop_connect_timeout = Duration::from_millis(300);
        let app = spawn_gateway_files(config).await;
        let mut ws = client(&app, &token(user), &[]).await;
        assert_eq!(
            refused_with(&mut ws).await,
            (code.to_owned(), close),
            "auth service {status} after {delay:?} for user {user}"
        );
        assert_eq!(asked.lock().unwrap().len(), 1);
        assert_eq!(up.seen.lock().unwrap().connections, 0);
        app.stop().await;
    }

    // A bad token is refused before the auth service is asked.
    let up = Upstream::start(Mode::Echo).await;
    let (auth, asked) = auth_service(200, Duration::ZERO).await;
    let mut config = hop_config(&up.url);
    config.hop_auth_url = Some(auth);
    let app = spawn_gateway_files(config).await;
    let mut ws = client(&app, &forged_token("42"), &[]).await;
    assert_eq!(
        refused_with(&mut ws).await,
        ("unauthenticated".to_owned(), 4401)
    );
    assert!(asked.lock().unwrap().is_empty());
    app.stop().await;
}
