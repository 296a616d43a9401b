//! Abuse limits per client address, as pure bookkeeping with the time passed in (no IO, no
//! clock of its own), so that every rule is testable in isolation:
//!
//! - **token guessing**: after `max_auth_failures` wrong tokens from one address within
//!   `auth_window`, that address is refused (429) until the window has passed since its last
//!   failure; every refusal is logged by the caller, never with the token itself;
//! - **unfinished connections** (slowloris): at most `max_connections_per_address` connections
//!   from one address, and `max_pending_connections` in all, that have not yet had the answer to
//!   their first request (TLS handshake, request head and body, the token check). Authenticated
//!   connections are not counted per address: phones behind one carrier NAT share it, and
//!   [`Devices`] caps connections per device instead;
//! - **enrollment floods**: at most `max_enrollments_per_address` attempts per `enroll_window`
//!   from one address (a burst of that many, then one per `enroll_window / max` on average).
//!
//! [`Devices`] is the same kind of bookkeeping per device: a few sync connections each (a new one
//! replaces the oldest), and a few live totals streams each and a bounded number in all.
//!
//! The state is bounded: entries older than the window are dropped on every check, and at most
//! [`MAX_TRACKED`] addresses are tracked (the oldest are forgotten first).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

/// Most addresses whose failures are remembered at once.
pub const MAX_TRACKED: usize = 100_000;

/// The limits, from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wrong tokens tolerated from one address within `auth_window`.
    pub max_auth_failures: u32,
    /// How long failures are remembered, and how long a blocked address waits.
    pub auth_window: Duration,
    /// Connections from one address that have not yet been answered their first request.
    pub max_connections_per_address: usize,
    /// Such connections in all.
    pub max_pending_connections: usize,
    /// Enrollment attempts tolerated from one address within `enroll_window`.
    pub max_enrollments_per_address: u32,
    /// The window of `max_enrollments_per_address`.
    pub enroll_window: Duration,
}

/// Why a request from an address is refused before its token is even looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too many wrong tokens.
    #[error(
        "too many wrong tokens from this address; wait {retry_after_secs} s, then use a valid token (enroll again if yours was revoked)"
    )]
    TooManyFailures {
        /// Seconds until the address may try again.
        retry_after_secs: u64,
    },
    /// Too many connections from this address that have not finished their request.
    #[error(
        "too many connections from this address that have not finished their request (limit {limit}); finish or close them and retry (the server's operator can raise max_connections_per_address)"
    )]
    TooManyConnections {
        /// The limit in force.
        limit: usize,
    },
    /// Too many connections in all that have not finished their request.
    #[error(
        "the server has {limit} connections that have not finished their request, its limit; retry in a few seconds"
    )]
    ServerBusy {
        /// The limit in force.
        limit: usize,
    },
    /// Too many enrollment attempts.
    #[error(
        "too many enrollment attempts from this address; wait {retry_after_secs} s, then enroll with the code of your invite"
    )]
    TooManyEnrollments {
        /// Seconds until the address may try again.
        retry_after_secs: u64,
    },
    /// Too many live totals streams of one device.
    #[error(
        "too many live totals streams for this device (limit {limit}); close another screen or tab showing totals, or read them once with GET /api/v1/campaigns/ID/totals"
    )]
    TooManyStreams {
        /// The limit in force.
        limit: usize,
    },
    /// Too many live totals streams in all.
    #[error(
        "the server has {limit} live totals streams open, its limit; retry later, or read the totals once with GET /api/v1/campaigns/ID/totals"
    )]
    StreamsFull {
        /// The limit in force.
        limit: usize,
    },
}

impl Refusal {
    /// True when the server as a whole is at a limit (503), not the caller (429).
    pub fn server_wide(&self) -> bool {
        matches!(
            self,
            Refusal::ServerBusy { .. } | Refusal::StreamsFull { .. }
        )
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Failures within the window.
    failures: u32,
    /// When the last failure happened, in ms.
    last_failure_ms: u64,
    /// Connections that have not finished their first request.
    open: usize,
    /// Enrollments: the time (ms) at which the address's allowance is full again (the
    /// "theoretical arrival time" of a generic cell rate algorithm); 0 when never used.
    enroll_full_at_ms: u64,
}

impl Entry {
    fn idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.open == 0
            && (self.failures == 0 || now_ms.saturating_sub(self.last_failure_ms) >= window_ms)
            && self.enroll_full_at_ms <= now_ms
    }
}

/// The bookkeeping of every address.
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    by_addr: HashMap<IpAddr, Entry>,
    /// Connections that have not finished their first request, in all.
    pending: usize,
}

impl Guard {
    /// An empty guard with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            by_addr: HashMap::new(),
            pending: 0,
        }
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.limits.auth_window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `addr` may present a token now.
    pub fn check_auth(&mut self, addr: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let window = self.window_ms();
        let Some(e) = self.by_addr.get_mut(&addr) else {
            return Ok(());
        };
        let since = now_ms.saturating_sub(e.last_failure_ms);
        if since >= window {
            e.failures = 0;
            return Ok(());
        }
        if e.failures >= self.limits.max_auth_failures {
            return Err(Refusal::TooManyFailures {
                retry_after_secs: (window - since).div_ceil(1000),
            });
        }
        Ok(())
    }

    /// Records a wrong token from `addr`; returns how many failures it has in the window.
    pub fn auth_failed(&mut self, addr: IpAddr, now_ms: u64) -> u32 {
        let window = self.window_ms();
        self.prune(now_ms);
        let e = self.by_addr.entry(addr).or_default();
        if now_ms.saturating_sub(e.last_failure_ms) >= window {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure_ms = now_ms;
        e.failures
    }

    /// Counts a new connection from `addr` that has not finished its first request, if under
    /// both limits (the server's first: a refused address is not counted).
    pub fn open_connection(&mut self, addr: IpAddr) -> Result<(), Refusal> {
        if self.pending >= self.limits.max_pending_connections {
            return Err(Refusal::ServerBusy {
                limit: self.limits.max_pending_connections,
            });
        }
        let limit = self.limits.max_connections_per_address;
        let e = self.by_addr.entry(addr).or_default();
        if e.open >= limit {
            return Err(Refusal::TooManyConnections { limit });
        }
        e.open += 1;
        self.pending += 1;
        Ok(())
    }

    /// A connection from `addr` had its first answer, or closed before.
    pub fn close_connection(&mut self, addr: IpAddr) {
        if let Some(e) = self.by_addr.get_mut(&addr)
            && e.open > 0
        {
            e.open -= 1;
            self.pending = self.pending.saturating_sub(1);
            if e.open == 0 && e.failures == 0 && e.enroll_full_at_ms == 0 {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Connections that have not finished their first request, in all.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Counts an enrollment attempt from `addr` at `now_ms`, if the address has any left: a
    /// burst of `max_enrollments_per_address`, refilled evenly over `enroll_window`.
    pub fn enroll_attempt(&mut self, addr: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let max = u64::from(self.limits.max_enrollments_per_address.max(1));
        let window = u64::try_from(self.limits.enroll_window.as_millis()).unwrap_or(u64::MAX);
        let interval = (window / max).max(1);
        self.prune(now_ms);
        let e = self.by_addr.entry(addr).or_default();
        let full_at = e.enroll_full_at_ms.max(now_ms);
        // Each attempt moves the time of a full allowance one interval on; past a whole window
        // ahead, the allowance is spent.
        let next = full_at.saturating_add(interval);
        if next.saturating_sub(now_ms) > window {
            return Err(Refusal::TooManyEnrollments {
                retry_after_secs: (next - now_ms - window).div_ceil(1000).max(1),
            });
        }
        e.enroll_full_at_ms = next;
        Ok(())
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.by_addr.len()
    }

    /// Forgets failures older than the window, and the oldest entries past [`MAX_TRACKED`].
    fn prune(&mut self, now_ms: u64) {
        if self.by_addr.len() < MAX_TRACKED {
            return;
        }
        self.prune_all(now_ms);
    }

    /// Forgets every address with nothing left to remember.
    fn prune_all(&mut self, now_ms: u64) {
        let window = self.window_ms();
        self.by_addr.retain(|_, e| !e.idle(now_ms, window));
        if self.by_addr.len() >= MAX_TRACKED {
            let mut idle: Vec<(IpAddr, u64)> = self
                .by_addr
                .iter()
                .filter(|(_, e)| e.open == 0)
                .map(|(a, e)| (*a, e.last_failure_ms))
                .collect();
            idle.sort_by_key(|(_, t)| *t);
            for (a, _) in idle.into_iter().take(MAX_TRACKED / 10) {
                self.by_addr.remove(&a);
            }
        }
    }
}

/// Per-device limits, from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits {
    /// Sync connections one device may hold; a new one beyond replaces the oldest.
    pub max_connections_per_device: usize,
    /// Live totals streams one device may hold; a new one beyond is refused.
    pub max_streams_per_device: usize,
    /// Live totals streams in all.
    pub max_streams: usize,
}

/// Sync connections and live streams per device. `H` is what the caller needs to close a
/// replaced connection (a cancellation token in the server, anything in tests).
#[derive(Debug)]
pub struct Devices<H> {
    limits: DeviceLimits,
    /// Open sync connections per device, oldest first.
    sync: HashMap<String, VecDeque<(u64, H)>>,
    streams: HashMap<String, usize>,
    total_streams: usize,
}

impl<H> Devices<H> {
    /// No connections yet.
    pub fn new(limits: DeviceLimits) -> Self {
        Self {
            limits,
            sync: HashMap::new(),
            streams: HashMap::new(),
            total_streams: 0,
        }
    }

    /// The device's per-device connection cap.
    pub fn max_connections_per_device(&self) -> usize {
        self.limits.max_connections_per_device
    }

    /// Counts sync connection `id` of `device`; returns the connections it replaces (the
    /// oldest, past the cap), for the caller to close. A phone whose old connections died
    /// without a word (a lost network) is never locked out by them, and one token cannot
    /// hold more than the cap.
    pub fn open_sync(&mut self, device: &str, id: u64, handle: H) -> Vec<H> {
        let cap = self.limits.max_connections_per_device.max(1);
        let conns = self.sync.entry(device.to_string()).or_default();
        conns.push_back((id, handle));
        let mut replaced = Vec::new();
        while conns.len() > cap {
            if let Some((_, h)) = conns.pop_front() {
                replaced.push(h);
            }
        }
        replaced
    }

    /// Sync connection `id` of `device` ended (replaced or not).
    pub fn close_sync(&mut self, device: &str, id: u64) {
        if let Some(conns) = self.sync.get_mut(device) {
            conns.retain(|(i, _)| *i != id);
            if conns.is_empty() {
                self.sync.remove(device);
            }
        }
    }

    /// Sync connections of `device` counted now.
    pub fn sync_connections(&self, device: &str) -> usize {
        self.sync.get(device).map_or(0, VecDeque::len)
    }

    /// Counts a new live stream of `device`, if under both limits.
    pub fn open_stream(&mut self, device: &str) -> Result<(), Refusal> {
        let mine = self.streams.get(device).copied().unwrap_or(0);
        if mine >= self.limits.max_streams_per_device {
            return Err(Refusal::TooManyStreams {
                limit: self.limits.max_streams_per_device,
            });
        }
        if self.total_streams >= self.limits.max_streams {
            return Err(Refusal::StreamsFull {
                limit: self.limits.max_streams,
            });
        }
        *self.streams.entry(device.to_string()).or_default() += 1;
        self.total_streams += 1;
        Ok(())
    }

    /// A live stream of `device` ended.
    pub fn close_stream(&mut self, device: &str) {
        if let Some(n) = self.streams.get_mut(device) {
            *n -= 1;
            self.total_streams = self.total_streams.saturating_sub(1);
            if *n == 0 {
                self.streams.remove(device);
            }
        }
    }

    /// Live streams open in all.
    pub fn streams(&self) -> usize {
        self.total_streams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Limits {
            max_auth_failures: 3,
            auth_window: Duration::from_secs(60),
            max_connections_per_address: 2,
            max_pending_connections: 3,
            max_enrollments_per_address: 4,
            enroll_window: Duration::from_secs(60),
        })
    }

    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn wrong_tokens_block_an_address_until_the_window_passes() {
        let mut g = guard();
        for i in 1..=3 {
            assert_eq!(g.check_auth(A, 1000), Ok(()));
            assert_eq!(g.auth_failed(A, 1000), i);
        }
        assert_eq!(
            g.check_auth(A, 2000),
            Err(Refusal::TooManyFailures {
                retry_after_secs: 59
            })
        );
        assert_eq!(
            g.check_auth(B, 2000),
            Ok(()),
            "other addresses are not affected"
        );
        assert_eq!(g.check_auth(A, 61_000), Ok(()), "the window has passed");
        assert_eq!(g.auth_failed(A, 61_000), 1, "the count starts again");
    }

    #[test]
    fn connections_are_limited_per_address_and_released() {
        let mut g = guard();
        g.open_connection(A).unwrap();
        g.open_connection(A).unwrap();
        assert_eq!(
            g.open_connection(A),
            Err(Refusal::TooManyConnections { limit: 2 })
        );
        g.open_connection(B).unwrap();
        g.close_connection(A);
        g.open_connection(A).unwrap();
        g.close_connection(A);
        g.close_connection(A);
        g.close_connection(B);
        assert_eq!(g.tracked(), 0, "closed connections leave nothing behind");
        assert_eq!(g.pending(), 0);
        g.close_connection(A);
        assert_eq!(g.pending(), 0, "a connection closed twice is released once");
    }

    #[test]
    fn unfinished_connections_are_capped_in_all() {
        let mut g = guard();
        g.open_connection(A).unwrap();
        g.open_connection(A).unwrap();
        g.open_connection(B).unwrap();
        assert_eq!(
            g.open_connection(C),
            Err(Refusal::ServerBusy { limit: 3 }),
            "a fresh address is refused when the server is full"
        );
        assert!(Refusal::ServerBusy { limit: 3 }.server_wide());
        assert!(!Refusal::TooManyConnections { limit: 2 }.server_wide());
        assert_eq!(g.pending(), 3, "a refused connection is not counted");
        g.close_connection(B);
        assert_eq!(
            g.open_connection(A),
            Err(Refusal::TooManyConnections { limit: 2 }),
            "room in all, none for A"
        );
        g.open_connection(C).unwrap();
        for a in [A, A, C] {
            g.close_connection(a);
        }
        assert_eq!((g.pending(), g.tracked()), (0, 0));
    }

    #[test]
    fn enrollments_are_a_burst_then_evenly_spread() {
        let mut g = guard();
        // 4 per 60 s: a burst of 4, then one every 15 s.
        for _ in 0..4 {
            g.enroll_attempt(A, 1_000).unwrap();
        }
        assert_eq!(
            g.enroll_attempt(A, 1_000),
            Err(Refusal::TooManyEnrollments {
                retry_after_secs: 15
            })
        );
        assert_eq!(
            g.enroll_attempt(A, 10_000),
            Err(Refusal::TooManyEnrollments {
                retry_after_secs: 6
            }),
            "a refused attempt does not count"
        );
        g.enroll_attempt(B, 10_000).unwrap();
        g.enroll_attempt(A, 16_000).unwrap();
        assert!(g.enroll_attempt(A, 16_000).is_err());
        // After a whole window of quiet the burst is back.
        for _ in 0..4 {
            g.enroll_attempt(A, 200_000).unwrap();
        }
        assert!(g.enroll_attempt(A, 200_000).is_err());
    }

    #[test]
    fn enrollment_entries_are_forgotten_once_refilled() {
        let mut g = guard();
        g.enroll_attempt(A, 0).unwrap();
        g.open_connection(B).unwrap();
        g.close_connection(B);
        assert_eq!(g.tracked(), 1, "A's allowance is still being refilled");
        g.prune_all(15_000);
        assert_eq!(g.tracked(), 0);
    }

    fn devices() -> Devices<&'static str> {
        Devices::new(DeviceLimits {
            max_connections_per_device: 2,
            max_streams_per_device: 2,
            max_streams: 3,
        })
    }

    #[test]
    fn a_new_sync_connection_past_the_cap_replaces_the_oldest() {
        let mut d = devices();
        assert!(d.open_sync("mallory", 1, "m1").is_empty());
        assert!(d.open_sync("mallory", 2, "m2").is_empty());
        assert!(d.open_sync("bob", 3, "b3").is_empty());
        assert_eq!(d.open_sync("mallory", 4, "m4"), vec!["m1"]);
        assert_eq!(d.open_sync("mallory", 5, "m5"), vec!["m2"]);
        assert_eq!(d.sync_connections("mallory"), 2);
        assert_eq!(d.sync_connections("bob"), 1, "other devices are untouched");
        // A replaced connection ending later changes nothing; the others are released.
        d.close_sync("mallory", 1);
        assert_eq!(d.sync_connections("mallory"), 2);
        d.close_sync("mallory", 4);
        assert!(d.open_sync("mallory", 6, "m6").is_empty());
        for (dev, id) in [("mallory", 5), ("mallory", 6), ("bob", 3)] {
            d.close_sync(dev, id);
        }
        assert!(d.sync.is_empty());
    }

    #[test]
    fn live_streams_are_capped_per_device_and_in_all() {
        let mut d = devices();
        d.open_stream("org-a").unwrap();
        d.open_stream("org-a").unwrap();
        assert_eq!(
            d.open_stream("org-a"),
            Err(Refusal::TooManyStreams { limit: 2 })
        );
        d.open_stream("org-b").unwrap();
        assert_eq!(
            d.open_stream("org-c"),
            Err(Refusal::StreamsFull { limit: 3 })
        );
        assert_eq!(d.streams(), 3, "refused streams are not counted");
        d.close_stream("org-a");
        d.open_stream("org-c").unwrap();
        for dev in ["org-a", "org-b", "org-c"] {
            d.close_stream(dev);
        }
        d.close_stream("org-b");
        assert_eq!(d.streams(), 0);
        assert!(d.streams.is_empty());
    }

    #[test]
    fn tracking_is_bounded() {
        let mut g = guard();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(i));
            g.auth_failed(addr, u64::from(i));
        }
        assert!(g.tracked() <= MAX_TRACKED, "{} tracked", g.tracked());
    }
}
