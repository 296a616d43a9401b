//! Phones end to end, over the real programs only: `tally serve` in a child process, organizers'
//! `tally` commands, and phones as `tally-device` processes, each with its own SQLite file,
//! talking WebSocket on 127.0.0.1 (directly, or through [`CutProxy`] to break the network).
//!
//! - `two_phones_offline_then_sync`: enrollment from `tally invite` payloads, collection while
//!   the server is down, a duplicate signer spelled differently, totals and the export.
//! - `phone_killed_between_commit_and_ack`: SIGKILL of a syncing phone after a signature is
//!   committed but before the server's acknowledgement reaches it (and one the server never
//!   saw); after restart both are pending, then synced and counted once.
//! - `sync_cut_mid_exchange_many_times`: the phone's link cut after N bytes, N varying, over
//!   and over while it keeps collecting; then a clean sync: the totals are exact.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use tally_tests::server::Server as _;
use tally_tests::{CutProxy, Organizer, Phone, ServerProcess};

/// A server, an organizer with an identity, a campaign with one event.
struct Setup {
    server: ServerProcess,
    org: Organizer,
    campaign: String,
}

const EVENT: &str = "rally";
const IDENTITY: &str = "organizer.age";

fn setup(root: &Path) -> Setup {
    let server = ServerProcess::start(&root.join("server"));
    let org = Organizer::new(&root.join("organizer"), &server.base(), &server.data);
    let recipient = org.keygen(IDENTITY);
    let campaign = org.create_campaign("Status for All", &recipient);
    org.add_event(&campaign, EVENT, "Rally at Queen's Park", "Toronto");
    Setup {
        server,
        org,
        campaign,
    }
}

/// The invite payload with its server URL pointed at `base` (a proxy in front of the server).
fn via(mut payload: Value, base: &str) -> Value {
    payload["server"] = Value::String(base.to_string());
    payload
}

/// Polls the server's totals until `signatures` reaches `n` (or the timeout).
fn wait_for_signatures(org: &Organizer, campaign: &str, n: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let t = org.totals(campaign);
        if t["signatures"].as_u64() == Some(n) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rows of the exported CSV as maps from column name to value (no quoted commas in this data).
fn csv_rows(csv: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("CSV header").split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

#[test]
fn two_phones_offline_then_sync() {
    let root = tempfile::tempdir().unwrap();
    let Setup {
        mut server,
        org,
        campaign,
    } = setup(root.path());

    // Two phones enrolled from the payloads `tally invite` printed: one given on the command
    // line, one on stdin.
    let amina = Phone::new(&root.path().join("amina"));
    let bo = Phone::new(&root.path().join("bo"));
    amina.enroll(&org.invite(&campaign), "Amina's phone");
    let r = bo
        .run_with_stdin(
            &["--json", "enroll", "--payload", "-", "--name", "Bo's phone"],
            &org.invite(&campaign).to_string(),
        )
        .ok();
    assert_eq!(r.json()["campaign_received"], true, "{r}");

    // The server goes away; the phones keep collecting.
    assert!(server.terminate(), "shutdown:\n{}", server.log_text());
    amina.sign(
        "Amara Okafor",
        "M5V 2T6",
        "Toronto",
        &["--event", EVENT, "--consent"],
    );
    amina.sign("Jean Tremblay", "H2X 1Y4", "Montréal", &[]);
    // The same person as Amina's first signer, typed differently on the other phone.
    bo.sign("  amara   OKAFOR ", "m5v2t6", "Toronto", &[]);
    bo.sign(
        "Li Wei",
        "v6b-1a1",
        "Vancouver",
        &[
            "--email",
            "li.wei@example.org",
            "--phone",
            "604 555 0100",
            "--street",
            "123 Main St",
        ],
    );
    for (phone, n) in [(&amina, 2), (&bo, 2)] {
        let s = phone.status();
        assert_eq!(s["counts"]["signatures_pending"], n, "{s}");
        assert_eq!(
            s["summary"],
            format!("{n} signatures not yet safe: sync when you have signal")
        );
    }
    // Syncing with the server down fails and says so; nothing becomes safe.
    let r = amina.sync(5).code(1);
    assert!(r.stdout.contains("cannot reach the server"), "{r}");
    assert_eq!(amina.status()["counts"]["signatures_pending"], 2);

    // The server is back: both phones sync.
    server.restart();
    for phone in [&amina, &bo] {
        let r = phone.sync(30).ok();
        let v = r.json();
        assert_eq!(v["ok"], true, "{r}");
        assert_eq!(v["report"]["acknowledged"]["signatures"], 2, "{r}");
        let s = phone.status();
        assert_eq!(s["counts"]["signatures_pending"], 0, "{s}");
        assert_eq!(s["counts"]["signatures_acknowledged"], 2, "{s}");
        assert_eq!(s["pending"], Value::Array(vec![]), "{s}");
    }

    // Every signature counted; the duplicate signer once among the unique ones.
    let t = org.totals(&campaign);
    assert_eq!(t["signatures"], 4, "{t}");
    assert_eq!(t["unique_signers"], 3, "{t}");
    assert_eq!(t["by_fsa"]["M5V"]["signatures"], 2, "{t}");
    assert_eq!(t["by_fsa"]["M5V"]["unique"], 1, "{t}");
    assert_eq!(t["by_event"][EVENT]["signatures"], 1, "{t}");
    assert_eq!(t["by_city"]["Montréal"]["signatures"], 1, "{t}");

    // The organizer's identity opens every name; the delivery export lists the duplicate
    // signer once, as the earliest of the two signatures.
    let csv = org.export(&campaign, IDENTITY, "signers.csv");
    let rows = csv_rows(&csv);
    assert_eq!(rows.len(), 3, "{csv}");
    let mut people: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["name"].clone(), r["postal_code"].clone()))
        .collect();
    people.sort();
    assert_eq!(
        people,
        [
            ("Amara Okafor", "M5V2T6"),
            ("Jean Tremblay", "H2X1Y4"),
            ("Li Wei", "V6B1A1"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let li = rows.iter().find(|r| r["name"] == "Li Wei").unwrap();
    assert_eq!(li["email"], "li.wei@example.org");
    assert_eq!(li["street"], "123 Main St");
    assert_eq!(li["city"], "Vancouver");

    // The server never held a name in the clear: not in its database, not in its log.
    assert!(server.terminate(), "shutdown:\n{}", server.log_text());
    let log = server.log_path();
    assert!(log.exists() && server.data.join("tally.db").exists());
    for file in [
        server.data.join("tally.db"),
        server.data.join("tally.db-wal"),
        log,
    ] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let file = file.display();
        let text = String::from_utf8_lossy(&bytes);
        for name in ["Okafor", "OKAFOR", "Tremblay", "Li Wei", "li.wei@"] {
            assert!(!text.contains(name), "{name} in the clear in {file}");
        }
    }
}

/// Reads a `sync --watch --json` process's events into a channel, one JSON value per line.
fn watch_events(child: &mut std::process::Child) -> mpsc::Receiver<Value> {
    let stdout = child.stdout.take().expect("watch stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}

fn next_event(rx: &mpsc::Receiver<Value>, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == kind => return v,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no {kind:?} event from sync --watch");
}

/// How to kill a phone "between committing a signature and syncing it", honestly: the phone is
/// the `tally-device sync --watch` process, connected and synced through a proxy. Signatures
/// are committed by `tally-device sign` (a separate process on the same SQLite file, as the
/// CLI's `sign` beside a running `sync --watch`); the watch process picks them up and pushes
/// them. The proxy decides how far that gets:
///
/// 1. server-to-phone bytes stalled: the server receives the signature and commits it (its
///    totals count it), but its acknowledgement never reaches the phone;
/// 2. both directions stalled: the second signature never reaches the server.
///
/// Then the watch process is SIGKILLed (no chance to flush or to mark anything), and the
/// links it had die with it. Nothing here is mocked: the kill lands while the real phone has
/// committed and is syncing, which is the moment the brief says must lose nothing.
#[test]
fn phone_killed_between_commit_and_ack() {
    let root = tempfile::tempdir().unwrap();
    let Setup {
        mut server,
        org,
        campaign,
    } = setup(root.path());
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = CutProxy::start(upstream);
    let phone = Phone::new(&root.path().join("phone"));
    phone.enroll(&via(org.invite(&campaign), &proxy.base()), "phone");

    let mut watch = phone.spawn(&["--json", "sync", "--watch"]);
    let events = watch_events(&mut watch);
    next_event(&events, "connected");
    next_event(&events, "synced");

    // 1. The server gets the signature, the phone never hears back.
    proxy.stall(false, true);
    let acked_late = phone.sign("Amara Okafor", "M5V 2T6", "Toronto", &[]);
    let t = wait_for_signatures(&org, &campaign, 1, Duration::from_secs(15));
    assert_eq!(
        t["signatures"], 1,
        "the watch never pushed the signature: {t}"
    );
    // 2. Nothing gets through any more.
    proxy.stall(true, true);
    let never_sent = phone.sign("Jean Tremblay", "H2X 1Y4", "Montréal", &[]);
    // Give the watch process time to notice the write and try to push it (it looks every
    // second), so the kill lands while it is syncing.
    std::thread::sleep(Duration::from_millis(1500));

    watch.kill().expect("SIGKILL the phone");
    let status = watch.wait().expect("reap the phone");
    assert!(!status.success(), "the watch process was not killed");
    // The server has the first signature only.
    assert_eq!(org.totals(&campaign)["signatures"], 1);
    // The dead phone's links go with it, bytes in flight included; the network is back.
    proxy.cut_all();
    proxy.stall(false, false);

    // After the restart, both are on the phone and still pending: the phone cannot know the
    // server has the first one.
    assert_eq!(
        phone.pending(),
        vec![acked_late.clone(), never_sent.clone()]
    );
    let s = phone.status();
    assert_eq!(s["counts"]["signatures_pending"], 2, "{s}");
    assert_eq!(
        s["summary"],
        "2 signatures not yet safe: sync when you have signal"
    );

    // A sync settles both, and the server counts each once.
    let r = phone.sync(30).ok();
    assert_eq!(r.json()["report"]["acknowledged"]["signatures"], 2, "{r}");
    assert!(phone.pending().is_empty());
    let t = org.totals(&campaign);
    assert_eq!(t["signatures"], 2, "{t}");
    assert_eq!(t["unique_signers"], 2, "{t}");
    // Counted once even after the server restarts (the projection is persistent, not replayed
    // twice).
    server.restart();
    assert_eq!(org.totals(&campaign)["signatures"], 2);
    let csv = org.export(&campaign, IDENTITY, "signers.csv");
    assert_eq!(csv.matches("Amara Okafor").count(), 1, "{csv}");
    assert_eq!(csv.matches("Jean Tremblay").count(), 1, "{csv}");
}

/// One phone's record of what it signed.
struct Collector {
    phone: Phone,
    signed: usize,
    /// Signatures not yet acknowledged, as of its last sync report.
    pending: u64,
}

/// Bytes a sync through the proxy takes, about (measured): 2.2 KB for the upgrade and the
/// handshake over the three documents, about 1.1 KB per signature pushed (most of it the
/// sealed fields), and the acknowledgement and new team totals after that.
fn sync_size(pending: u64) -> u64 {
    2_600 + 1_200 * pending
}

#[test]
fn sync_cut_mid_exchange_many_times() {
    let _heavy = crate::heavy_blocking();
    const ROUNDS: usize = 36;
    let root = tempfile::tempdir().unwrap();
    let Setup {
        server,
        org,
        campaign,
    } = setup(root.path());
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = CutProxy::start(upstream);
    let mut phones: Vec<Collector> = ["a", "b"]
        .iter()
        .map(|name| {
            let phone = Phone::new(&root.path().join(name));
            phone.enroll(&via(org.invite(&campaign), &proxy.base()), name);
            Collector {
                phone,
                signed: 0,
                pending: 0,
            }
        })
        .collect();

    // Each round one phone takes a signature (every fifth one a person the other phone already
    // signed up), then syncs through a link cut after N bytes. N is drawn from a fixed seed,
    // uniformly over about the whole life of that connection (the HTTP upgrade, the handshake,
    // the pushes, the acknowledgements, the team totals), so the cuts land everywhere in it
    // and now and then a sync gets through.
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_260_701);
    let mut duplicates = 0;
    let mut incomplete = 0;
    let mut acked_then_cut = 0;
    let mut server_ahead = 0;
    for round in 0..ROUNDS {
        let i = round % 2;
        let (name, postal) = if round % 5 == 4 {
            duplicates += 1;
            // The person the other phone signed up in the previous round, typed in capitals.
            (format!("SIGNER {}", round - 1), "m5v 2t6".to_string())
        } else {
            (format!("Signer {round}"), "M5V 2T6".to_string())
        };
        let p = &mut phones[i];
        p.phone.sign(&name, &postal, "Toronto", &[]);
        p.signed += 1;
        p.pending += 1;
        let limit = rng.gen_range(40..sync_size(p.pending));
        proxy.set_limit(Some(limit));
        let r = p.phone.sync(10);
        match r.code {
            // 1: cut before the WebSocket was up.
            1 => {
                assert!(r.stdout.contains("cannot reach the server"), "{r}");
                incomplete += 1;
            }
            // 0: it got through; 3: cut mid-sync.
            0 | 3 => {
                let report = &r.json()["report"];
                p.pending = report["counts"]["signatures_pending"].as_u64().unwrap();
                if r.code == 3 {
                    incomplete += 1;
                    if report["acknowledged"]["signatures"].as_u64() > Some(0) {
                        acked_then_cut += 1;
                    }
                }
            }
            _ => panic!("round {round}, limit {limit}: unexpected exit:\n{r}"),
        }
        // The server may hold more than the phones know is safe (an acknowledgement cut off),
        // never less.
        let acked: u64 = phones.iter().map(|p| p.signed as u64 - p.pending).sum();
        let on_server = org.totals(&campaign)["signatures"].as_u64().unwrap();
        assert!(
            on_server >= acked,
            "round {round}: the phones count {acked} signatures safe, the server has {on_server}"
        );
        if on_server > acked {
            server_ahead += 1;
        }
    }
    let stats = proxy.stats();
    println!(
        "{ROUNDS} rounds: {} links, {} cut; {incomplete} syncs incomplete, {acked_then_cut} cut after \
         acknowledgements arrived, {server_ahead} with the server ahead of the phones",
        stats.connections, stats.cuts
    );
    assert!(
        stats.cuts >= ROUNDS * 2 / 3,
        "too few cuts to test anything: {stats:?}"
    );
    assert!(incomplete >= ROUNDS / 2, "{incomplete} incomplete syncs");
    assert!(
        incomplete < ROUNDS,
        "no sync got through a cut link: the cuts come too early to test anything"
    );
    assert!(
        acked_then_cut + server_ahead > 0,
        "no link was cut after the server had taken a signature: nothing was tested there"
    );

    // A clean link: everything arrives, exactly once.
    proxy.set_limit(None);
    let signed: usize = phones.iter().map(|p| p.signed).sum();
    for p in &phones {
        let r = p.phone.sync(30).ok();
        assert_eq!(r.json()["ok"], true, "{r}");
        let s = p.phone.status();
        assert_eq!(s["counts"]["signatures_pending"], 0, "{s}");
        assert_eq!(s["counts"]["signatures_acknowledged"], p.signed, "{s}");
    }
    let t = org.totals(&campaign);
    assert_eq!(t["signatures"], signed, "{t}");
    assert_eq!(t["unique_signers"], signed - duplicates, "{t}");
    assert_eq!(
        t["by_canvasser"].as_object().map(|m| m.len()),
        Some(2),
        "{t}"
    );
    assert!(
        !server.log_text().contains("quarantined"),
        "the server refused a change:\n{}",
        server.log_text()
    );
}

/// A commit that waits on the database longer than the idle timeout (another process holds the
/// SQLite file's write lock for 4 s, within the store's 5 s busy timeout; the server's idle
/// timeout is 3 s) is the server's time, not the phone's silence: nothing is read from the
/// phone meanwhile, so the phone is acknowledged instead of closed as silent.
#[test]
fn a_commit_waiting_on_the_database_is_not_the_phones_silence() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        &dir.path().join("server"),
        &[("TALLY_IDLE_TIMEOUT_SECS", "3")],
    );
    let org = Organizer::new(&dir.path().join("organizer"), &server.base(), &server.data);
    let recipient = org.keygen(IDENTITY);
    let campaign = org.create_campaign("Status for All", &recipient);
    for n in 0..2 {
        let phone = Phone::new(&dir.path().join(format!("phone{n}")));
        phone.enroll(&org.invite(&campaign), &format!("phone {n}"));
        phone.sign(&format!("Signer {n}"), "M5V 2T6", "Toronto", &[]);
        let (held_tx, held) = mpsc::channel();
        let db = server.data.join(tally_server::DB_FILE);
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(4));
            conn.execute_batch("ROLLBACK").unwrap();
        });
        held.recv().unwrap();
        let run = phone.sync(60);
        holder.join().unwrap();
        assert!(
            phone.pending().is_empty(),
            "phone {n} not acknowledged behind a slow commit:\n{run}\nserver log:\n{}",
            server.log_text()
        );
    }
    let log = server.log_text();
    assert!(
        !log.contains("silent for"),
        "a phone was taken for silent:\n{log}"
    );
    assert_eq!(org.totals(&campaign)["signatures"], 2);
}
