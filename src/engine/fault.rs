//! Fault injection for the gateway's failure tests.
//!
//! A [`Fault`] comes from `--fault <spec>` (every run of the engine) or from the `fault` parameter
//! of a flow's start element (that run only; it wins over the flag). "Events" below are the
//! frames of docs/neuralabs.md section 4 sent after the `starting` handshake frame; `N = 0` means
//! "before the first event". When a flow has fewer than `N` events the run ends normally.
//!
//! | spec | behaviour |
//! |---|---|
//! | `crash-after=N` | after `N` events, drop the TCP connection without a close frame |
//! | `stall-after=N` | after `N` events, send nothing more; keep the socket open until the peer closes |
//! | `non-json-after=N` | after `N` events, send one text frame that is not JSON, then carry on |
//! | `oversize-after=N` | after `N` events, send one valid JSON event frame of `--fault-oversize-bytes` bytes (default 8 MiB), then carry on |
//! | `no-close` | end the run without a close frame, like the original engine |
//! | `refuse-handshake` | close (1011) right after the upgrade, before `ready` |
//! | `bad-handshake` | send a wrong first handshake frame, then close |
//!
//! Given per flow (the flow arrives after `ready`), `refuse-handshake` closes right after the flow
//! frame and `bad-handshake` replaces the `received_flow` frame.

use std::fmt;
use std::str::FromStr;

/// One injected failure. See the module docs for the behaviour of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Drop the connection without a close frame after `N` events.
    CrashAfter(usize),
    /// Stop sending after `N` events, keep the socket open.
    StallAfter(usize),
    /// Send a non-JSON text frame after `N` events.
    NonJsonAfter(usize),
    /// Send an oversized frame after `N` events.
    OversizeAfter(usize),
    /// End without a close frame.
    NoClose,
    /// Close right after the upgrade.
    RefuseHandshake,
    /// Send a wrong first handshake frame.
    BadHandshake,
}

/// A fault spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid fault spec `{0}`: expected crash-after=N, stall-after=N, non-json-after=N, \
     oversize-after=N, no-close, refuse-handshake or bad-handshake"
)]
pub struct FaultParseError(String);

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Fault, FaultParseError> {
        let bad = || FaultParseError(s.to_owned());
        let spec = s.trim();
        match spec {
            "no-close" => return Ok(Fault::NoClose),
            "refuse-handshake" => return Ok(Fault::RefuseHandshake),
            "bad-handshake" => return Ok(Fault::BadHandshake),
            _ => {}
        }
        let (name, n) = spec.split_once('=').ok_or_else(bad)?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        match name.trim() {
            "crash-after" => Ok(Fault::CrashAfter(n)),
            "stall-after" => Ok(Fault::StallAfter(n)),
            "non-json-after" => Ok(Fault::NonJsonAfter(n)),
            "oversize-after" => Ok(Fault::OversizeAfter(n)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CrashAfter(n) => write!(f, "crash-after={n}"),
            Fault::StallAfter(n) => write!(f, "stall-after={n}"),
            Fault::NonJsonAfter(n) => write!(f, "non-json-after={n}"),
            Fault::OversizeAfter(n) => write!(f, "oversize-after={n}"),
            Fault::NoClose => f.write_str("no-close"),
            Fault::RefuseHandshake => f.write_str("refuse-handshake"),
            Fault::BadHandshake => f.write_str("bad-handshake"),
        }
    }
}

impl Fault {
    /// The event count after which this fault fires, for the `*-after=N` kinds.
    pub fn after(&self) -> Option<usize> {
        match *self {
            Fault::CrashAfter(n)
            | Fault::StallAfter(n)
            | Fault::NonJsonAfter(n)
            | Fault::OversizeAfter(n) => Some(n),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_round_trips_through_display() {
        for spec in [
            "crash-after=3",
            "stall-after=0",
            "non-json-after=2",
            "oversize-after=1",
            "no-close",
            "refuse-handshake",
            "bad-handshake",
        ] {
            assert_eq!(spec.parse::<Fault>().unwrap().to_string(), spec);
        }
    }

    #[test]
    fn unknown_or_malformed_specs_are_refused() {
        for spec in ["crash", "crash-after=x", "explode=1", ""] {
            assert!(spec.parse::<Fault>().is_err(), "{spec}");
        }
    }
}
