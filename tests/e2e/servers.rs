//! Several `tally serve` on one PostgreSQL (issue 17, "Several servers"): three real servers
//! with `TALLY_DATABASE_URL` on one database of the throwaway PostgreSQL of
//! `scripts/with-postgres`, real `tally-device` phones spread over them and moving between
//! them between syncs (a phone's server is changed as a load balancer or a DNS change would:
//! its next sync goes elsewhere), signing offline, with duplicates: the totals from every
//! server are exact and equal; a change stored through A reaches a live totals stream on B
//! within 1 s; revoking a device on A ends its stream and its sync on C within 1 s; a phone's
//! second device, syncing only through C, sees the totals document A or B rewrote; B
//! SIGKILLed while phones sync through it loses nothing it acknowledged, and the phones finish
//! on A and C.
//!
//! Without `TALLY_TEST_DATABASE_URL` these tests say so and skip; with
//! `TALLY_POSTGRES_TESTS=required` (CI) they fail instead.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_tests::server::Server as _;
use tally_tests::{Organizer, Peer, Phone, ServerProcess};

use crate::postgres::database;

/// Three servers on the database at `url`, each with a data folder of its own under `dir`
/// (the first one made the admin, whose token is in its data folder).
fn three_servers(dir: &Path, url: &str) -> Vec<ServerProcess> {
    ["a", "b", "c"]
        .iter()
        .map(|name| ServerProcess::start_with_env(&dir.join(name), &[("TALLY_DATABASE_URL", url)]))
        .collect()
}

/// Points `phone` at `base` for its next sync (what a load balancer in front of the servers
/// does between two connections).
fn point(phone: &Phone, base: &str) {
    let conn = rusqlite::Connection::open(phone.home.join("tally-device.sqlite3")).unwrap();
    let json: String = conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'enrollment'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut enrollment: Value = serde_json::from_str(&json).unwrap();
    enrollment["server"] = Value::String(base.to_string());
    conn.execute(
        "UPDATE settings SET value = ?1 WHERE key = 'enrollment'",
        [enrollment.to_string()],
    )
    .unwrap();
}

/// A live totals stream (`GET .../totals/stream`) open on `base`.
pub(crate) struct Stream {
    socket: TcpStream,
    text: String,
}

impl Stream {
    pub(crate) fn open(base: &str, campaign: &str, token: &str) -> Stream {
        let addr = base.trim_start_matches("http://");
        let mut socket = TcpStream::connect(addr).unwrap();
        write!(
            socket,
            "GET /api/v1/campaigns/{campaign}/totals/stream HTTP/1.1\r\nHost: t\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut stream = Stream {
            socket,
            text: String::new(),
        };
        assert!(
            stream.wait(Duration::from_secs(10), |t| t.contains("event: totals")),
            "no first event: {}",
            stream.text
        );
        assert!(stream.text.starts_with("HTTP/1.1 200"), "{}", stream.text);
        stream
    }

    /// Reads until `done(text so far)` or the stream ends or `within` passes; whether `done`.
    fn wait(&mut self, within: Duration, done: impl Fn(&str) -> bool) -> bool {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < within {
            if done(&self.text) {
                return true;
            }
            match self.socket.read(&mut buf) {
                Ok(0) => return done(&self.text),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return done(&self.text),
            }
        }
        done(&self.text)
    }

    /// Waits for the stream to end (its last chunk, or the socket closed); how long that took,
    /// or `None`.
    pub(crate) fn wait_closed(&mut self, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < within {
            match self.socket.read(&mut buf) {
                Ok(0) => return Some(t0.elapsed()),
                Ok(n) => {
                    self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // The body's last chunk: the server ended the stream (the socket may stay
                    // open for the next request).
                    if self.text.ends_with("\r\n0\r\n\r\n") {
                        return Some(t0.elapsed());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(t0.elapsed()),
            }
        }
        None
    }
}

/// The last totals event in `text`.
fn last_event(text: &str) -> Option<Value> {
    text.rsplit("data: ")
        .next()
        .and_then(|data| data.lines().next())
        .and_then(|line| serde_json::from_str::<Value>(line).ok())
}

/// One organizer per server (their keys in one folder), a campaign, and `n` phones enrolled
/// through the servers in turn (each enrollment through the server it starts on).
fn campaign_with_phones(
    dir: &Path,
    servers: &[ServerProcess],
    n: usize,
) -> (Vec<Organizer>, String, Vec<Phone>) {
    let orgs: Vec<Organizer> = servers
        .iter()
        .map(|s| Organizer::new(&dir.join("org"), &s.base(), &servers[0].data))
        .collect();
    let recipient = orgs[0].keygen("organizer.age");
    let campaign = orgs[0].create_campaign("Status for All", &recipient);
    let invites: Vec<Value> = (0..n)
        .map(|i| orgs[i % orgs.len()].invite(&campaign))
        .collect();
    let phones: Vec<Phone> = std::thread::scope(|scope| {
        let enrolling: Vec<_> = invites
            .iter()
            .enumerate()
            .map(|(i, invite)| {
                scope.spawn(move || {
                    let phone = Phone::new(&dir.join(format!("phone{i}")));
                    phone.enroll(invite, &format!("phone {i}"));
                    phone
                })
            })
            .collect();
        enrolling.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (orgs, campaign, phones)
}

/// `phone`'s next sync through `base`; panics unless every signature was acknowledged.
fn sync_through(phone: &Phone, base: &str) {
    point(phone, base);
    let run = phone.sync(60);
    assert!(
        phone.pending().is_empty(),
        "a signature not acknowledged through {base}:\n{run}"
    );
}

/// The team totals a phone last received (from the campaign's totals document).
fn team_signatures(phone: &Phone) -> Option<u64> {
    phone.status()["totals"]["totals"]["signatures"].as_u64()
}

#[test]
fn thirty_phones_moving_between_three_servers_give_the_same_exact_totals_everywhere() {
    let Some(url) = database("servers", "totals") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(dir.path(), &url);
    let (orgs, campaign, phones) = campaign_with_phones(dir.path(), &servers, 30);
    // A canvasser's second phone, which only ever reaches C.
    let second = Phone::new(&dir.path().join("second"));
    second.enroll(&orgs[2].invite(&campaign), "phone 0, second");
    point(&second, &servers[2].base());
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        std::thread::scope(|scope| {
            for (i, phone) in phones.iter().enumerate() {
                let servers = &servers;
                scope.spawn(move || {
                    // Offline: two signatures, one of them the same person as another
                    // phone's.
                    phone.sign(&format!("Signer {i}-{round}"), "M5V 2T6", "Toronto", &[]);
                    phone.sign(&format!("Shared Signer {round}"), "M4C 1B5", "Toronto", &[]);
                    // Then to the server of this round: each phone moves between syncs, all
                    // at once. The last round goes through A and B only.
                    let to = if round == ROUNDS - 1 {
                        i % 2
                    } else {
                        (i + round) % 3
                    };
                    sync_through(phone, &servers[to].base());
                });
            }
        });
    }
    let signed = (phones.len() * ROUNDS * 2) as u64;
    let totals: Vec<Value> = orgs.iter().map(|o| o.totals(&campaign)).collect();
    for (i, t) in totals.iter().enumerate() {
        assert_eq!(t["signatures"], signed, "server {i}: {t}");
        // The phones' own signers, and the people every phone signed up again.
        assert_eq!(
            t["unique_signers"],
            (phones.len() * ROUNDS + ROUNDS) as u64,
            "server {i}: {t}"
        );
        assert_eq!(t, &totals[0], "server {i} answers as server 0");
    }
    // The second phone sees the totals document as A or B rewrote it (C stored none of the
    // last round's changes, so it had nothing to rewrite).
    let deadline = Instant::now() + Duration::from_secs(30);
    while team_signatures(&second) != Some(signed) {
        assert!(
            Instant::now() < deadline,
            "the second phone never saw the totals document count {signed} through C: {}",
            second.status()["totals"]
        );
        second.sync(30).ok();
    }
    // Written once per change of the totals, whichever server did it: no server failed a
    // rewrite on another's (a conflict would be logged as 'totals not refreshed').
    for (server, name) in servers.iter().zip(["A", "B", "C"]) {
        let log = server.log_text();
        assert!(
            !log.contains("totals not refreshed"),
            "{name} failed a totals rewrite:\n{log}"
        );
    }
}

#[test]
fn a_change_through_one_server_reaches_a_live_stream_on_another_within_a_second() {
    let Some(url) = database("servers", "live") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(dir.path(), &url);
    let (orgs, campaign, _) = campaign_with_phones(dir.path(), &servers, 0);
    let org = &orgs[0];
    let (_, organizer) = servers[0].enroll(&campaign, "organizer");
    let phone = Phone::new(&dir.path().join("phone"));
    phone.enroll(&org.invite(&campaign), "phone");
    point(&phone, &servers[0].base());
    let records: Vec<String> = (1..=5)
        .map(|n| phone.sign(&format!("Signer {n}"), "M5V 2T6", "Toronto", &[]))
        .collect();
    let mut on_b = Stream::open(&servers[1].base(), &campaign, &organizer);
    phone.sync(30).ok();
    assert!(phone.pending().is_empty());
    assert!(
        on_b.wait(Duration::from_secs(5), |t| last_event(t)
            .is_some_and(|v| v["signatures"] == 5)),
        "B's stream never counted the 5 signatures synced through A: {}",
        on_b.text
    );
    // Each strike is written through A's API, which answers once it is stored: the time from
    // asking A to B's event bounds the delay from A's commit to B's live stream.
    let mut worst = Duration::ZERO;
    for (n, record) in records.iter().enumerate() {
        let t0 = Instant::now();
        let (status, body) = tally_tests::server::http(
            &servers[0].base(),
            "POST",
            &format!("/api/v1/campaigns/{campaign}/strikes"),
            Some(&organizer),
            Some(serde_json::json!({"signature": record, "reason": "duplicate"})),
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            on_b.wait(Duration::from_secs(5), |t| last_event(t)
                .is_some_and(|v| v["struck"] == n as u64 + 1)),
            "B's stream never counted {} struck: {}",
            n + 1,
            on_b.text
        );
        worst = worst.max(t0.elapsed());
    }
    eprintln!("a change stored through A reached B's live stream in at most {worst:?}");
    assert!(worst < Duration::from_secs(1), "took {worst:?}");
}

#[test]
fn revoking_a_device_on_one_server_ends_its_stream_on_another_within_a_second() {
    let Some(url) = database("servers", "revoke") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(dir.path(), &url);
    let (_, campaign, _) = campaign_with_phones(dir.path(), &servers, 0);
    let (device, token) = servers[0].enroll(&campaign, "organizer");
    let (_, bystander) = servers[0].enroll(&campaign, "organizer");
    let mut on_c = Stream::open(&servers[2].base(), &campaign, &token);
    let mut other_on_c = Stream::open(&servers[2].base(), &campaign, &bystander);
    // The same device's sync connection on C, and another device's.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut syncing, mut other_syncing) = runtime.block_on(async {
        (
            Peer::connect(&servers[2].ws(), &token).await.unwrap(),
            Peer::connect(&servers[2].ws(), &bystander).await.unwrap(),
        )
    });
    let t0 = Instant::now();
    let (status, body) = tally_tests::server::http(
        &servers[0].base(),
        "POST",
        &format!("/api/v1/devices/{device}/revoke"),
        Some(&servers[0].admin()),
        None,
    );
    assert_eq!(status, 200, "{body}");
    if on_c.wait_closed(Duration::from_secs(5)).is_none() {
        panic!(
            "the revoked device's stream on C never ended; C's log:\n{}",
            servers[2].log_text()
        );
    }
    // From before the revocation was asked of A, to the end of C's stream.
    let took = t0.elapsed();
    eprintln!("revocation on A ended the device's stream on C {took:?} after it was asked");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let closed = runtime.block_on(
        syncing.until(tokio::time::Instant::now() + Duration::from_secs(5), |p| {
            p.closed
        }),
    );
    let took = t0.elapsed();
    assert!(
        matches!(closed, Ok(true) | Err(_)),
        "the revoked device's sync connection on C stayed open; C's log:\n{}",
        servers[2].log_text()
    );
    eprintln!("revocation on A closed the device's sync on C {took:?} after it was asked");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        other_on_c.wait_closed(Duration::from_millis(300)).is_none(),
        "another device's stream stays open"
    );
    runtime.block_on(async {
        other_syncing
            .settle(Duration::from_millis(300))
            .await
            .unwrap();
    });
    assert!(!other_syncing.closed, "another device's sync stays open");
    // And the token is refused everywhere.
    for server in &servers {
        let (status, _) = tally_tests::server::http(
            &server.base(),
            "GET",
            &format!("/api/v1/campaigns/{campaign}/totals"),
            Some(&token),
            None,
        );
        assert_eq!(status, 401, "the revoked token on {}", server.base());
    }
}

#[test]
fn a_server_killed_mid_sync_loses_nothing_acknowledged_and_the_phones_finish_elsewhere() {
    let Some(url) = database("servers", "killed") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_servers(dir.path(), &url);
    let (orgs, campaign, phones) = campaign_with_phones(dir.path(), &servers, 12);
    std::thread::scope(|scope| {
        for (i, phone) in phones.iter().enumerate() {
            scope.spawn(move || {
                for n in 0..4 {
                    phone.sign(&format!("Signer {i}-{n}"), "M5V 2T6", "Toronto", &[]);
                }
            });
        }
    });
    let signed = (phones.len() * 4) as u64;
    // Every phone syncs through B at once; B is SIGKILLed as soon as A counts its first
    // signature, while the others are still at it.
    let b = servers[1].base();
    let killed_at = std::thread::scope(|scope| {
        for phone in &phones {
            let b = &b;
            scope.spawn(move || {
                point(phone, b);
                phone.sync(60);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while orgs[0].totals(&campaign)["signatures"] == 0 {
            assert!(Instant::now() < deadline, "B never stored a signature");
        }
        servers[1].kill();
        Instant::now()
    });
    let acknowledged: u64 = phones.iter().map(|p| 4 - p.pending().len() as u64).sum();
    eprintln!(
        "B killed {:?} ago with {acknowledged} of {signed} signatures acknowledged",
        killed_at.elapsed()
    );
    // Every signature a phone heard acknowledged is in the database the others share.
    for org in [&orgs[0], &orgs[2]] {
        let stored = org.totals(&campaign)["signatures"].as_u64().unwrap();
        assert!(
            stored >= acknowledged,
            "{acknowledged} acknowledged, {stored} counted after B died"
        );
    }
    // The phones finish on A and C.
    for (i, phone) in phones.iter().enumerate() {
        let to = if i % 2 == 0 { 0 } else { 2 };
        sync_through(phone, &servers[to].base());
    }
    for org in [&orgs[0], &orgs[2]] {
        let t = org.totals(&campaign);
        assert_eq!(t["signatures"], signed, "{t}");
        assert_eq!(t["unique_signers"], signed, "{t}");
    }
}

#[test]
fn organizers_writing_one_campaign_through_two_servers_at_once_lose_nothing() {
    let Some(url) = database("servers", "review") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(dir.path(), &url);
    let (orgs, campaign, phones) = campaign_with_phones(dir.path(), &servers, 1);
    let records: Vec<String> = (0..16)
        .map(|n| phones[0].sign(&format!("Signer {n}"), "M5V 2T6", "Toronto", &[]))
        .collect();
    sync_through(&phones[0], &servers[0].base());
    let (_, organizer) = servers[0].enroll(&campaign, "organizer");
    // Two organizers strike records of the same campaign at the same moment, one through A
    // and one through B: both write the campaign's review document.
    std::thread::scope(|scope| {
        for (half, server) in records.chunks(8).zip([&servers[0], &servers[1]]) {
            let organizer = &organizer;
            let campaign = &campaign;
            scope.spawn(move || {
                for record in half {
                    let (status, body) = tally_tests::server::http(
                        &server.base(),
                        "POST",
                        &format!("/api/v1/campaigns/{campaign}/strikes"),
                        Some(organizer),
                        Some(serde_json::json!({"signature": record, "reason": "duplicate"})),
                    );
                    assert_eq!(status, 200, "a strike through {}: {body}", server.base());
                }
            });
        }
    });
    let again: usize = servers
        .iter()
        .map(|s| s.log_text().matches("made again").count())
        .sum();
    eprintln!("16 strikes through A and B at once: {again} made again after a conflict");
    for org in &orgs {
        let t = org.totals(&campaign);
        assert_eq!(t["struck"], 16, "every strike kept: {t}");
        assert_eq!(t["signatures"], 0, "a struck signature does not count: {t}");
    }
}
