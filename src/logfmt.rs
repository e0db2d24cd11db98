//! How errors reach log lines: with their causes. A leaf module, so every layer can use it.
//!
//! Errors carry their cause as `source()` (a database, socket or OS error) and their own
//! sentence as `Display`; what a client sees is decided in `relay::failure`. The log gets the
//! whole chain.

use std::error::Error as StdError;

/// An error and its causes, `a: b: c`, for a log line.
pub fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chain_lists_every_cause_in_order() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::chain(&e), "outer: inner");
    }
}
