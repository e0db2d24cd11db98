//! The `rest_api` element: one `http://` or `https://` request to an allowed host.
//!
//! Calls are an SSRF risk, so they are off unless `--rest-allow-hosts` lists the URL's
//! `host:port` (a bare `host` is the scheme's default port only: 80 for `http://`, 443 for
//! `https://`); anything else, and a URL with spaces or control characters (request injection),
//! is an element error. The host and port checked are those of the parsed URL that is requested
//! ([`super::target`]). Redirects are never followed: a 3xx is the element's response
//! (`status_code` 302 and its body), so a redirect cannot lead to a host outside the list
//! (following one only after checking its target would be as safe today, but one check in one
//! place is easier to keep right). No proxy variable is read.
//!
//! The request goes through the engine's shared reqwest client
//! ([`super::outbound::Outbound::rest`]); `https://` certificates are checked against the
//! system's roots and `--ca-file`. The whole call is bounded by `--rest-timeout` (the element's
//! `timeout` parameter, in seconds, can only shorten it) and `--rest-max-response-bytes`
//! (header and body). Parameters: `url`, `method` (GET), `headers` (object; `Host`,
//! `Content-Length` and `Transfer-Encoding` are the client's own and refused, as is a name or
//! value that is not a valid header), `body` (or the `body` input); inputs named in `query` are
//! not supported. Events: `api_request`, `api_response` or `api_error`. Outputs: `response`
//! (JSON when it parses, else text), `status_code`.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::flow::Node;
use super::llm::text_of;
use super::outbound::{head_bytes, root_cause};
use super::run::{Emitter, Failure, Outcome, RunEnv};
use super::target::{Target, parse_url};

/// Headers the client sets itself; an element may not (routing and body framing).
const RESERVED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding"];

/// Is the target in `--rest-allow-hosts`? Entries are `host:port`; an entry without a port
/// allows the URL scheme's default port only (80 or 443, never every port of the host).
fn allowed(allow: &[String], t: &Target) -> bool {
    let with_port = t.authority();
    allow
        .iter()
        .map(|a| a.trim().to_ascii_lowercase())
        .any(|a| a == with_port || (t.port == t.default_port() && a == t.host))
}

/// Why sending the request failed, as the element error's tail.
fn send_error(t: &Target, e: &reqwest::Error) -> String {
    let addr = t.authority();
    match crate::tls::problem(e) {
        Some(tls) => tls.sentence(&addr, "--ca-file"),
        None if e.is_connect() => format!("cannot connect to {addr}: {}", root_cause(e)),
        None => format!("the request to {addr} failed: {}", root_cause(e)),
    }
}

/// Send the request and read the response, at most `limit` bytes of header and body.
async fn exchange(
    request: reqwest::RequestBuilder,
    t: &Target,
    limit: usize,
) -> Result<(u16, Vec<u8>), String> {
    let too_large = || format!("the response is larger than {limit} bytes");
    let mut response = request.send().await.map_err(|e| send_error(t, &e))?;
    let status = response.status().as_u16();
    let room = limit
        .checked_sub(head_bytes(&response))
        .ok_or_else(too_large)?;
    if response.content_length().is_some_and(|n| n > room as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(piece) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {}", root_cause(&e)))?
    {
        if body.len() + piece.len() > room {
            return Err(too_large());
        }
        body.extend_from_slice(&piece);
    }
    Ok((status, body))
}

/// The element's `headers` parameter as request headers.
fn headers(node: &Node) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    let Some(Value::Object(headers)) = node.parameters.get("headers") else {
        return Ok(map);
    };
    for (name, value) in headers {
        let value = text_of(value);
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("header '{name}' is set by the engine"));
        }
        let invalid = || format!("header '{name}' is not valid");
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(invalid());
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_str(&value).map_err(|_| invalid())?;
        map.append(name, value);
    }
    Ok(map)
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
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("'{method}' is not an HTTP method"))?;
    let body = inputs
        .get("body")
        .or_else(|| node.parameters.get("body"))
        .filter(|v| !v.is_null())
        .map(text_of);
    let mut request = env
        .http
        .rest
        .request(method, target.url.clone())
        .headers(headers(node)?);
    if let Some(body) = body {
        request = request.body(body);
    }
    let mut limit = env.config.rest_timeout;
    if let Some(secs) = node.parameters.get("timeout").and_then(Value::as_f64)
        && secs > 0.0
    {
        limit = limit.min(Duration::from_secs_f64(secs));
    }
    let max = env.config.rest_max_response_bytes;
    tokio::time::timeout(limit, exchange(request, &target, max))
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
            (t.host.as_str(), t.port, t.url.path(), t.url.query()),
            ("example.com", 8080, "/a", Some("b=1"))
        );
        // An entry without a port is the scheme's default port only, never every port.
        assert!(!allowed(&["example.com".into()], &t));
        assert!(allowed(&["example.com:8080".into()], &t));
        assert!(!allowed(&["example.com:80".into()], &t));
        assert!(!allowed(&[], &t));
        let t80 = parse_url("http://example.com/a").unwrap();
        assert!(allowed(&["example.com".into()], &t80));
        assert!(parse_url("http://user@host/").is_err());
        assert!(parse_url("ftp://example.com/").is_err());
    }

    #[test]
    fn a_bare_host_is_port_443_for_https_and_80_for_http() {
        let tls = parse_url("https://example.com/a").unwrap();
        assert_eq!(tls.port, 443);
        assert!(allowed(&["example.com".into()], &tls));
        assert!(allowed(&["example.com:443".into()], &tls));
        assert!(!allowed(&["example.com:80".into()], &tls));
        // Port 443 over plain http is not the bare entry's port, nor 80 over https.
        let plain_443 = parse_url("http://example.com:443/").unwrap();
        assert!(!allowed(&["example.com".into()], &plain_443));
        let tls_80 = parse_url("https://example.com:80/").unwrap();
        assert!(!allowed(&["example.com".into()], &tls_80));
    }

    #[test]
    fn header_injection_and_framing_headers_are_refused() {
        let node = |headers: Value| Node {
            id: "api".into(),
            type_name: "rest_api".into(),
            kind: Some("rest_api"),
            name: "API".into(),
            processing_message: None,
            parameters: json!({"headers": headers}).as_object().unwrap().clone(),
            input_schema: Map::new(),
            output_schema: Map::new(),
        };
        assert!(headers(&node(json!({"X-Ok": "1"}))).is_ok());
        for bad in [
            json!({"X-A": "1\r\nX-Injected: 2"}),
            json!({"X-A\r\nX-B": "1"}),
            json!({"X A": "1"}),
            json!({"Host": "internal"}),
            json!({"content-length": "0"}),
            json!({"Transfer-Encoding": "chunked"}),
        ] {
            assert!(headers(&node(bad.clone())).is_err(), "{bad} accepted");
        }
    }
}
