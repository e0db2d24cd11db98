//! The `http://` and `https://` URLs the engine calls out to: where a URL points ([`Target`],
//! [`parse_url`]) for `rest_api` ([`super::rest`]) and the LLM endpoint ([`super::openai`]), and
//! the value parser of `--llm-base-url` ([`base_url`], used by [`super::config`]). A leaf: it
//! depends on nothing else in the engine.
//!
//! The URL is parsed once, by the same parser (`url`, through reqwest) whose result is then
//! requested: the host and port checked against `--rest-allow-hosts` are the ones connected to
//! (no second, hand-written reading of the URL that could disagree). Refused: other schemes,
//! user info (`http://user@host/`), and spaces or control characters anywhere (the parser would
//! silently drop a CR LF; a caller who means them must percent-encode them).

use reqwest::Url;

/// Where an `http://` or `https://` URL points.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The parsed URL, as it is requested.
    pub(super) url: Url,
    /// The host, lower case (an IPv6 address in brackets), as `--rest-allow-hosts` names it.
    pub(super) host: String,
    /// The port, the scheme's default when the URL has none.
    pub(super) port: u16,
}

impl Target {
    /// Is this an `https://` URL?
    pub(super) fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// The scheme's default port: 443 for `https://`, 80 for `http://`.
    pub(super) fn default_port(&self) -> u16 {
        if self.is_https() { 443 } else { 80 }
    }

    /// `host:port`, for messages and the allow-list.
    pub(super) fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parse an `http://` or `https://` URL; other schemes and URLs with user info are refused.
pub(super) fn parse_url(url: &str) -> Result<Target, String> {
    // A space or a control character would end the request line and inject headers or a second
    // request into the allowed host; the URL parser would drop some of them without a word.
    if let Some(bad) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "the URL contains {bad:?}: spaces and control characters must be percent-encoded"
        ));
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!("'{url}' is not an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    if authority.contains('@') || authority.is_empty() {
        return Err(format!("'{url}' has no usable host"));
    }
    let parsed = Url::parse(url).map_err(|e| format!("'{url}' is not a valid URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("'{url}' has no usable host"));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("'{url}' has no usable host"))?
        .to_ascii_lowercase();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("'{url}' has an invalid port"))?;
    Ok(Target {
        url: parsed,
        host,
        port,
    })
}

/// A usable `--llm-base-url`: an `http://` or `https://` `host[:port][/path]` URL without a
/// query or fragment. The error is the reason, without the URL.
pub(super) fn parse_base(url: &str) -> Result<Target, String> {
    let target = parse_url(url)?;
    if target.url.query().is_some() {
        return Err("the base URL must not have a query".into());
    }
    if target.url.fragment().is_some() {
        return Err("the base URL must not have a fragment".into());
    }
    Ok(target)
}

/// Value parser of `--llm-base-url`: an `http://` or `https://` `host[:port][/path]` URL.
pub fn base_url(url: &str) -> Result<String, String> {
    parse_base(url).map(|_| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_or_https_without_query_or_user_info() {
        assert!(base_url("http://127.0.0.1:8080/v1").is_ok());
        assert!(base_url("https://api.openai.com/v1").is_ok());
        let t = parse_base("https://API.example.com/v1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("api.example.com", 443));
        assert!(t.is_https());
        assert!(base_url("ftp://x/").is_err());
        assert!(base_url("http://h/v1?x=1").is_err());
        assert!(base_url("http://h/v1#x").is_err());
        assert!(base_url("https://user:pw@h/v1").is_err());
    }

    #[test]
    fn the_checked_host_is_the_one_requested() {
        // Percent-encoding and backslashes are read the way the request is made.
        let t = parse_url("http://127.0.0.%31:8080/a").unwrap();
        assert_eq!(t.authority(), "127.0.0.1:8080");
        assert_eq!(t.url.host_str(), Some("127.0.0.1"));
        let t = parse_url("http://evil.example\\.allowed.example/").unwrap();
        assert_eq!(t.host, "evil.example");
        for url in ["http://@h/", "http://a@evil/", "https://a:b@h/"] {
            assert!(parse_url(url).is_err(), "{url} accepted");
        }
        let v6 = parse_url("https://[::1]:8443/x").unwrap();
        assert_eq!(v6.authority(), "[::1]:8443");
    }

    #[test]
    fn urls_that_would_inject_into_the_request_are_refused() {
        for url in [
            "http://example.com/a\r\nX-Injected: 1",
            "http://example.com/a HTTP/1.1\r\n\r\nGET /admin",
            "http://example.com/a b",
            "http://example.com/\u{0}",
            "https://example.com/a\tb",
        ] {
            let err = parse_url(url)
                .err()
                .unwrap_or_else(|| panic!("{url:?} accepted"));
            assert!(err.contains("percent-encoded"), "{err}");
        }
    }
}
