//! Startup failures as one line each: what failed, where (the address, or the database URL with
//! its password hidden), and the fix (the flag or variable to change). Used by `serve`, `engine`,
//! `demo` and `agents import`; the sentence is printed once, never with a repeated cause chain.

use std::io;
use std::net::SocketAddr;

/// `url` with its password (and any query string, which may carry one) left out.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let path = path.split('?').next().unwrap_or_default();
    format!("{scheme}://{authority}{path}")
}

/// An I/O error without the `(os error N)` suffix, starting lower-case.
pub fn plain_io(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// `what` (e.g. "the gateway") could not listen on `addr`; `flag` is how to choose another.
pub fn listen_failed(what: &str, addr: SocketAddr, e: &io::Error, flag: &str) -> String {
    let fix = match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!(
                "another process is listening there: stop it, or choose another address with {flag}"
            )
        }
        io::ErrorKind::AddrNotAvailable => {
            format!("this machine has no such address: choose one of its own with {flag}")
        }
        io::ErrorKind::PermissionDenied => {
            format!("ports below 1024 need privileges: choose a higher port with {flag}")
        }
        _ => format!("check {flag}"),
    };
    format!("{what} cannot listen on {addr}: {} ({fix})", plain_io(e))
}

/// The database at `url` could not be used because of `cause` (a sentence without the URL).
pub fn database_failed(url: &str, cause: &str) -> String {
    let fix = if cause.contains("does not exist") {
        "create it, or name an existing database in --database-url (DATABASE_URL)"
    } else if cause.contains("postgres://") {
        "set --database-url (DATABASE_URL) to a PostgreSQL URL"
    } else {
        "check that PostgreSQL runs there and that --database-url (DATABASE_URL) is right"
    };
    format!(
        "cannot open the database at {}: {cause} ({fix})",
        redacted_url(url)
    )
}

/// Raise this process's soft `RLIMIT_NOFILE` to `want` (at most the hard limit); children
/// started afterwards inherit it. Returns the limit now in force.
pub fn raise_open_file_limit(want: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let target = want.min(hard);
    match now.current {
        Some(cur) if cur < target => {
            let new = Rlimit {
                current: Some(target),
                maximum: now.maximum,
            };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => Some(target),
                Err(_) => Some(cur),
            }
        }
        cur => cur,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_message() {
        assert_eq!(
            redacted_url("postgres://u:hunter2@db:5432/app?password=hunter2"),
            "postgres://u:***@db:5432/app"
        );
        assert_eq!(redacted_url("postgres://u@db/app"), "postgres://u@db/app");
        assert_eq!(redacted_url("postgres://db"), "postgres://db");
        assert_eq!(redacted_url("hunter2"), "(not a URL)");
        let m = database_failed("mysql://root:hunter2@h/d", "not a postgres:// URL");
        assert!(
            !m.contains("hunter2") && m.contains("mysql://root:***@h/d"),
            "{m}"
        );
    }

    #[test]
    fn a_busy_port_names_the_address_and_the_flag() {
        let e = io::Error::from(io::ErrorKind::AddrInUse);
        let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let m = listen_failed("the gateway", addr, &e, "--listen (FLOWGATE_LISTEN)");
        assert!(
            m.starts_with("the gateway cannot listen on 127.0.0.1:8000: "),
            "{m}"
        );
        assert!(m.contains("--listen (FLOWGATE_LISTEN)"), "{m}");
    }
}
