//! Rate limits: a token bucket, and per-client-address buckets for upgrades.
//!
//! The per-address map is bounded (`MAX_TRACKED` addresses; when full, idle buckets are dropped,
//! and if none is idle the oldest is), so a flood of addresses cannot grow memory without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate_per_second: u32, burst: u32) -> Bucket {
        Bucket::with_rate(f64::from(rate_per_second), burst)
    }

    /// A bucket refilled at `rate` tokens per second (fractions allowed).
    pub fn with_rate(rate: f64, burst: u32) -> Bucket {
        Bucket {
            rate,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Take one token; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Addresses tracked at most by [`PerAddress`].
pub const MAX_TRACKED: usize = 65_536;

/// One bucket per client address. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PerAddress {
    /// Tokens per second (0: unlimited).
    rate: f64,
    burst: u32,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl PerAddress {
    pub fn new(rate_per_second: u32, burst: u32) -> PerAddress {
        PerAddress::per_second(f64::from(rate_per_second), burst)
    }

    /// `n` per minute for each address, up to `n` at once (0: unlimited).
    pub fn per_minute(n: u32) -> PerAddress {
        PerAddress::per_second(f64::from(n) / 60.0, n)
    }

    fn per_second(rate: f64, burst: u32) -> PerAddress {
        PerAddress {
            rate,
            burst,
            buckets: Arc::default(),
        }
    }

    /// Take one token for `addr`.
    pub fn allow(&self, addr: IpAddr) -> bool {
        if self.rate <= 0.0 {
            return true; // 0 = unlimited
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&addr) {
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map.iter().min_by_key(|(_, b)| b.last).map(|(a, _)| *a)
            {
                map.remove(&oldest);
            }
        }
        map.entry(addr)
            .or_insert_with(|| Bucket::with_rate(self.rate, self.burst))
            .take(now)
    }

    /// Whether `addr` has a token left, without taking it.
    pub fn has_left(&self, addr: IpAddr) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).is_none_or(|b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * b.rate >= 1.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(110)));
        assert!(!b.take(t0 + Duration::from_millis(110)));
    }

    #[test]
    fn a_per_minute_budget_is_spent_then_refused_and_peeking_takes_nothing() {
        let p = PerAddress::per_minute(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.has_left(a));
        assert!(p.allow(a) && p.allow(a));
        assert!(!p.has_left(a));
        assert!(!p.allow(a));
        assert!(PerAddress::per_minute(0).has_left(a), "0 = unlimited");
    }

    #[test]
    fn per_address_buckets_are_independent() {
        let p = PerAddress::new(1, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(p.allow(a));
        assert!(!p.allow(a));
        assert!(p.allow(b));
    }
}
