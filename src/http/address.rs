//! The client's address for per-address limits (DIALECTS.md rule 13): the peer, or, when the
//! peer is one of `--trusted-proxies`, the address that proxy saw (the rightmost
//! `X-Forwarded-For` entry that is not itself a trusted proxy). A client can never choose its
//! address by sending the header itself: an untrusted peer's `X-Forwarded-For` is ignored.

use std::net::IpAddr;

use axum::http::HeaderMap;

pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.3".parse().unwrap());
        let trusted = ["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()];
        assert_eq!(
            client_addr(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_addr(stranger, &h, &trusted),
            stranger,
            "an untrusted peer's header is ignored"
        );
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
