//! Plain `http://` URLs, the only kind the engine's hand-written HTTP clients speak: where a URL
//! points ([`Target`], [`parse_url`]) for `rest_api` ([`super::rest`]) and the LLM endpoint
//! ([`super::openai`]), and the value parser of `--llm-base-url` ([`base_url`], used by
//! [`super::config`]). A leaf: it depends on nothing else in the engine.

/// Where a plain `http://` URL points.
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    /// Path and query, at least `/`.
    pub(super) path: String,
}

/// Parse a plain `http://` URL; `https://` and URLs with user info are refused.
pub(super) fn parse_url(url: &str) -> Result<Target, String> {
    // A space or a control character (CR LF) would end the request line and inject headers or
    // a second request into the allowed host.
    if let Some(bad) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "the URL contains {bad:?}: spaces and control characters must be percent-encoded"
        ));
    }
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err("https URLs are not supported by the reference engine's rest_api".into());
        }
        None => return Err(format!("'{url}' is not an http:// URL")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') || authority.is_empty() {
        return Err(format!("'{url}' has no usable host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| format!("'{url}' has an invalid port"))?,
        ),
        None => (authority, 80),
    };
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
        path,
    })
}

/// A usable `--llm-base-url`: a plain `http://host[:port][/path]` URL without a query. The error
/// is the reason, without the URL.
pub(super) fn parse_base(url: &str) -> Result<Target, String> {
    if url.starts_with("https://") {
        return Err(
            "https:// is not supported: this engine build has no TLS; use an http:// endpoint \
             (for example a local proxy in front of the TLS one)"
                .into(),
        );
    }
    let target = parse_url(url)?;
    if target.path.contains('?') {
        return Err("the base URL must not have a query".into());
    }
    Ok(target)
}

/// Value parser of `--llm-base-url`: a plain `http://host[:port][/path]` URL.
pub fn base_url(url: &str) -> Result<String, String> {
    parse_base(url).map(|_| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_must_be_plain_http() {
        assert!(base_url("http://127.0.0.1:8080/v1").is_ok());
        let err = base_url("https://api.openai.com/v1").unwrap_err();
        assert!(err.contains("no TLS"), "{err}");
        assert!(base_url("ftp://x/").is_err());
        assert!(base_url("http://h/v1?x=1").is_err());
    }

    #[test]
    fn urls_that_would_inject_into_the_request_are_refused() {
        for url in [
            "http://example.com/a\r\nX-Injected: 1",
            "http://example.com/a HTTP/1.1\r\n\r\nGET /admin",
            "http://example.com/a b",
            "http://example.com/\u{0}",
        ] {
            let err = parse_url(url)
                .err()
                .unwrap_or_else(|| panic!("{url:?} accepted"));
            assert!(err.contains("percent-encoded"), "{err}");
        }
    }
}
