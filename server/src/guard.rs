//! Abuse limits per client address, as pure bookkeeping with the time passed in (no IO, no
//! clock of its own), so that every rule is testable in isolation:
//!
//! - **token guessing**: after `max_auth_failures` wrong tokens from one address within
//!   `auth_window`, that address is refused (429) until the window has passed since its last
//!   failure; every refusal is logged by the caller, never with the token itself;
//! - **connection floods**: at most `max_connections_per_address` sync connections open from one
//!   address at once.
//!
//! The state is bounded: entries older than the window are dropped on every check, and at most
//! [`MAX_TRACKED`] addresses are tracked (the oldest are forgotten first).

use std::collections::HashMap;
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
    /// Simultaneous sync connections from one address.
    pub max_connections_per_address: usize,
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
    /// Too many connections open.
    #[error(
        "too many sync connections from this address (limit {limit}); close some, or raise max_connections_per_address"
    )]
    TooManyConnections {
        /// The limit in force.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct Entry {
    /// Failures within the window.
    failures: u32,
    /// When the last failure happened, in ms.
    last_failure_ms: u64,
    /// Open sync connections.
    open: usize,
}

/// The bookkeeping of every address.
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    by_addr: HashMap<IpAddr, Entry>,
}

impl Guard {
    /// An empty guard with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            by_addr: HashMap::new(),
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

    /// Counts a new sync connection from `addr`, if under the limit.
    pub fn open_connection(&mut self, addr: IpAddr) -> Result<(), Refusal> {
        let limit = self.limits.max_connections_per_address;
        let e = self.by_addr.entry(addr).or_default();
        if e.open >= limit {
            return Err(Refusal::TooManyConnections { limit });
        }
        e.open += 1;
        Ok(())
    }

    /// A sync connection from `addr` closed.
    pub fn close_connection(&mut self, addr: IpAddr) {
        if let Some(e) = self.by_addr.get_mut(&addr) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.failures == 0 {
                self.by_addr.remove(&addr);
            }
        }
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
        let window = self.window_ms();
        self.by_addr
            .retain(|_, e| e.open > 0 || now_ms.saturating_sub(e.last_failure_ms) < window);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Limits {
            max_auth_failures: 3,
            auth_window: Duration::from_secs(60),
            max_connections_per_address: 2,
        })
    }

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
