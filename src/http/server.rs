//! The accept loop: hyper's HTTP/1 server under the gateway's connection rules.
//!
//! Owns: admitting TCP connections (at most `--max-connections` in all and
//! `--max-connections-per-address` from one address; a refused connection is closed at once and
//! counted in `flowgate_connections_refused_total`), the header-read timeout (a client that does
//! not finish a request header within `--header-read-timeout` is disconnected: `axum::serve`
//! runs hyper without a timer, so no such timeout applied and half-sent requests held their
//! descriptors forever), and draining in-flight HTTP requests on shutdown.
//!
//! A WebSocket keeps its connection's admission until the session ends: the [`Admission`] rides
//! in the request's extensions into the upgrade handler, which moves it into the session.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why a connection was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` are open.
    MaxConnections,
    /// `--max-connections-per-address` are open from this address.
    MaxPerAddress,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPerAddress => "max_connections_per_address",
        }
    }
}

/// Counts of open connections, in all and per address. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_address: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admission {
    address: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

impl ConnectionLimits {
    /// `max_per_address` 0 = unlimited.
    pub fn new(max_total: usize, max_per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            max_per_address,
            open: Arc::default(),
        }
    }

    /// Admit a connection from `address`, or say why not. The per-address map holds only
    /// addresses with open connections, so it is bounded by `max_total`.
    pub fn admit(&self, address: IpAddr) -> Result<Admission, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::MaxConnections);
        }
        let from_here = open.by_address.get(&address).copied().unwrap_or(0);
        if self.max_per_address > 0 && from_here >= self.max_per_address {
            return Err(Refusal::MaxPerAddress);
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        Ok(Admission {
            address,
            open: self.open.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// The settings of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub header_read_timeout: Duration,
    /// How long in-flight HTTP requests may take to finish once shutdown begins.
    pub drain: Duration,
}

/// Accept and serve connections until `shutdown` is cancelled, then stop accepting and wait
/// (up to `settings.drain`) for HTTP requests in flight. Upgraded sockets are not waited for
/// here: the gateway's session tracker owns them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    settings: ServeSettings,
    shutdown: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors (or a connection reset before accept): back off briefly
                // instead of spinning; the connections in flight free descriptors.
                tracing::warn!(error = %crate::startup::plain_io(&e), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admission = match limits.admit(peer.ip()) {
            Ok(a) => Arc::new(a),
            Err(refusal) => {
                metrics.connection_refused(refusal.as_str());
                drop(tcp);
                continue;
            }
        };
        // Chat frames are small and latency-bound: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(admission.clone());
            let mut router = router.clone();
            async move {
                let response = tower_service::Service::call(&mut router, request).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            // Errors are the client's (a reset, a header too slow or too large): nothing to do.
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.cancelled() => {}
            }
            // Shutting down: finish the request in flight, then close (no keep-alive).
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(settings.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still in flight after the shutdown grace period");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admissions_are_capped_in_all_and_per_address_and_freed_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::MaxPerAddress);
        let _third = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::MaxConnections);
        drop(first);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(a).is_ok());
        let unlimited = ConnectionLimits::new(10, 0);
        let held: Vec<_> = (0..10).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 10);
        assert_eq!(unlimited.admit(a).unwrap_err(), Refusal::MaxConnections);
    }
}
