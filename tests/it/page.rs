//! The chat page over real HTTP: `/` and its assets with the right types and a strict CSP,
//! revalidation by ETag, and `/api/agents` refusing callers without a valid token.

use std::time::Duration;

use flowgate::config::GatewayConfig;
use flowgate::store::Store;
use flowgate::store::files::FilesStore;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestApp, spawn_gateway, token};

/// A plain HTTP/1.1 answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// The gateway only (no engine: the page does not need one), on the embedded sample agents.
async fn app() -> TestApp {
    let config = GatewayConfig::for_tests("ws://127.0.0.1:9");
    spawn_gateway(config, Store::Files(FilesStore::embedded()), None).await
}

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        app.addr
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn assert_strict_csp(answer: &Answer) {
    let csp = answer
        .header("content-security-policy")
        .expect("a CSP header");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn index_is_html_with_a_strict_csp_and_no_inline_script() {
    let app = app().await;
    let page = get(&app, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_strict_csp(&page);
    assert!(page.header("cache-control").is_some());
    assert!(
        page.body
            .contains(r#"<script type="module" src="/static/app.js"></script>"#)
    );
    // Every <script> has a src: the CSP would block inline code anyway, so none may exist.
    assert_eq!(
        page.body.matches("<script").count(),
        page.body.matches("<script type=\"module\" src=").count()
    );
    assert!(!page.body.contains("style="), "no inline styles either");
}

#[tokio::test]
async fn assets_are_served_with_their_content_types() {
    let app = app().await;
    for (file, content_type, marker) in [
        (
            "app.js",
            "text/javascript; charset=utf-8",
            "import { FlowgateClient",
        ),
        (
            "flowgate-client.js",
            "text/javascript; charset=utf-8",
            "export class FlowgateClient",
        ),
        ("style.css", "text/css; charset=utf-8", ".connection"),
    ] {
        let asset = get(&app, &format!("/static/{file}"), &[]).await;
        assert_eq!(asset.status, 200, "{file}");
        assert_eq!(asset.header("content-type"), Some(content_type), "{file}");
        assert!(asset.body.contains(marker), "{file} is the real file");
        assert_strict_csp(&asset);
        assert_eq!(asset.header("cache-control"), Some("no-cache"), "{file}");
        assert!(asset.header("etag").is_some(), "{file}");
    }
    assert_eq!(get(&app, "/static/missing.js", &[]).await.status, 404);
    assert_eq!(get(&app, "/static/..%2FCargo.toml", &[]).await.status, 404);
}

#[tokio::test]
async fn an_unchanged_asset_revalidates_with_304() {
    let app = app().await;
    let first = get(&app, "/static/app.js", &[]).await;
    let etag = first.header("etag").unwrap().to_owned();
    let again = get(&app, "/static/app.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert_eq!(again.body, "");
    let stale = get(&app, "/static/app.js", &[("If-None-Match", "\"old\"")]).await;
    assert_eq!(stale.status, 200);
}

#[tokio::test]
async fn agent_list_refuses_a_missing_or_bad_token() {
    let app = app().await;
    let missing = get(&app, "/api/agents", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["code"], "unauthenticated");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));

    let forged = flowgate::auth::mint_hs256(
        &flowgate::config::Secret::new("another-secret"),
        "alice",
        Duration::from_secs(60),
    );
    let bad = get(
        &app,
        "/api/agents",
        &[("Authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["code"], "unauthenticated");
    assert!(
        bad.json()["error"].as_str().unwrap().contains("signature"),
        "{}",
        bad.body
    );
}

#[tokio::test]
async fn agent_list_shows_active_agents_and_only_the_callers_drafts() {
    let app = app().await;
    let ids = |answer: &Answer| -> Vec<String> {
        answer
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let alice = get(
        &app,
        "/api/agents",
        &[("Authorization", &format!("Bearer {}", token("alice")))],
    )
    .await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    assert_eq!(alice.header("content-type"), Some("application/json"));
    let listed = alice.json();
    let assistant = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "assistant")
        .unwrap();
    assert_eq!(assistant["name"], "Assistant");
    assert_eq!(assistant["status"], "Active");
    assert!(assistant.get("description").is_some());
    assert!(
        !ids(&alice).contains(&"router".to_owned()),
        "bob's draft is hidden from alice"
    );

    let bob = get(
        &app,
        "/api/agents",
        &[("Authorization", &format!("Bearer {}", token("bob")))],
    )
    .await;
    assert!(
        ids(&bob).contains(&"router".to_owned()),
        "bob sees his own draft"
    );
    assert!(ids(&bob).contains(&"assistant".to_owned()));
}
