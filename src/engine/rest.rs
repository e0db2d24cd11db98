//! The `rest_api` element: one plain `http://` HTTP/1.1 request to an allowed host.
//!
//! Calls are an SSRF risk, so they are off unless `--rest-allow-hosts` lists the URL's
//! `host:port` (a bare `host` is port 80 only); anything else, a URL with spaces or control
//! characters (request injection), and every `https://` URL, is an element error. The request is
//! written by hand over a `TcpStream` (`Connection: close`), bounded by `--rest-timeout` (the
//! element's `timeout` parameter, in seconds, can only shorten it) and
//! `--rest-max-response-bytes`. Parameters: `url`, `method` (GET), `headers` (object), `body`
//! (or the `body` input); inputs named in `query` are not supported. Events: `api_request`,
//! `api_response` or `api_error`. Outputs: `response` (JSON when it parses, else text),
//! `status_code`.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::flow::Node;
use super::llm::text_of;
use super::run::{Emitter, Failure, Outcome, RunEnv};
use super::target::{Target, parse_url};

/// Is the target in `--rest-allow-hosts`? Entries are `host:port`; an entry without a port
/// allows port 80 only (never every port of the host).
fn allowed(allow: &[String], t: &Target) -> bool {
    let with_port = format!("{}:{}", t.host, t.port);
    allow
        .iter()
        .map(|a| a.trim().to_ascii_lowercase())
        .any(|a| a == with_port || (t.port == 80 && a == t.host))
}

fn decode_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

async fn exchange(t: &Target, request: Vec<u8>, limit: usize) -> Result<(u16, Vec<u8>), String> {
    let mut stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("sending the request failed: {e}"))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?;
    if raw.len() > limit {
        return Err(format!("the response is larger than {limit} bytes"));
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no complete header")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the response has no status code")?;
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = decode_chunked(&body).ok_or("the chunked response body is malformed")?;
    }
    Ok((status, body))
}

/// Run a `rest_api` element.
pub async fn call(
    node: &Node,
    inputs: Map<String, Value>,
    env: &RunEnv,
    emitter: &Emitter,
) -> Result<Outcome, Failure> {
    let url = node
        .parameters
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let method = node
        .parameters
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let request_event = json!({"element_id": node.id, "method": method, "url": url});
    emitter.emit("api_request", request_event).await?;
    let result = prepare_and_send(node, &inputs, env, &url, &method).await;
    match result {
        Ok((status, body)) => {
            let text = String::from_utf8_lossy(&body).to_string();
            let response = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let event = json!({"element_id": node.id, "status_code": status});
            emitter.emit("api_response", event).await?;
            let mut outputs = Map::new();
            outputs.insert("response".into(), response);
            outputs.insert("status_code".into(), status.into());
            Ok(Outcome {
                outputs,
                route: None,
            })
        }
        Err(error) => {
            emitter
                .emit("api_error", json!({"element_id": node.id, "error": error}))
                .await?;
            Err(Failure::Element(format!("REST API call failed: {error}")))
        }
    }
}

async fn prepare_and_send(
    node: &Node,
    inputs: &Map<String, Value>,
    env: &RunEnv,
    url: &str,
    method: &str,
) -> Result<(u16, Vec<u8>), String> {
    let target = parse_url(url)?;
    if !allowed(&env.config.rest_allow_hosts, &target) {
        return Err(format!(
            "calls to host '{}' are blocked on this engine (not in --rest-allow-hosts)",
            target.host
        ));
    }
    if !method.chars().all(|c| c.is_ascii_uppercase()) || method.is_empty() {
        return Err(format!("'{method}' is not an HTTP method"));
    }
    let body = inputs
        .get("body")
        .or_else(|| node.parameters.get("body"))
        .filter(|v| !v.is_null())
        .map(text_of);
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: flowgate-engine\r\n",
        target.path, target.host, target.port
    );
    if let Some(Value::Object(headers)) = node.parameters.get("headers") {
        for (name, value) in headers {
            let value = text_of(value);
            if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                return Err(format!("header '{name}' is not valid"));
            }
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some(body) = &body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    let mut limit = env.config.rest_timeout;
    if let Some(secs) = node.parameters.get("timeout").and_then(Value::as_f64)
        && secs > 0.0
    {
        limit = limit.min(Duration::from_secs_f64(secs));
    }
    let max = env.config.rest_max_response_bytes;
    tokio::time::timeout(limit, exchange(&target, bytes, max))
        .await
        .map_err(|_| format!("no response within {limit:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_only_listed_hosts_are_allowed() {
        let t = parse_url("http://Example.com:8080/a?b=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("example.com", 8080, "/a?b=1")
        );
        // An entry without a port is port 80 only, never every port of the host.
        assert!(!allowed(&["example.com".into()], &t));
        assert!(allowed(&["example.com:8080".into()], &t));
        assert!(!allowed(&["example.com:80".into()], &t));
        assert!(!allowed(&[], &t));
        let t80 = parse_url("http://example.com/a").unwrap();
        assert!(allowed(&["example.com".into()], &t80));
        assert!(parse_url("https://example.com/").is_err());
        assert!(parse_url("http://user@host/").is_err());
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }
}
