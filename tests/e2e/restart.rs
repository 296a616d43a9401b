//! The server killed with SIGKILL in the middle of a stream of syncs: after the restart every
//! change it had acknowledged is there, and the phones finish syncing what was not.

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::{Automerge, ChangeHash};
use tally_core::collection;
use tally_proto::DocumentId;
use tally_tests::new_id;
use tally_tests::server::Server;
use tally_tests::{Peer, ServerProcess};

struct Phone {
    device: String,
    token: String,
    id: DocumentId,
    doc: Automerge,
    /// Signature id -> the change that wrote it.
    written: BTreeMap<String, ChangeHash>,
}

fn acked(peer: &Peer, phone: &Phone) -> Vec<String> {
    let Some(heads) = peer
        .session
        .sync_state(&phone.id)
        .and_then(|s| s.their_heads.clone())
    else {
        return vec![];
    };
    let missing: std::collections::HashSet<ChangeHash> = peer.docs[&phone.id]
        .get_changes(&heads)
        .iter()
        .map(|c| c.hash())
        .collect();
    phone
        .written
        .iter()
        .filter(|(_, h)| !missing.contains(h))
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let c = server.campaign();
    let mut phones: Vec<Phone> = (0..3)
        .map(|_| {
            let (device, token) = server.enroll(&c.id, "canvasser");
            let doc = collection::create(&c.id, &device).unwrap();
            Phone {
                device,
                token,
                id: new_id(),
                doc,
                written: BTreeMap::new(),
            }
        })
        .collect();
    let mut peers = Vec::new();
    for p in &phones {
        let mut peer = Peer::connect(&server.ws(), &p.token).await.unwrap();
        peer.push(p.id, p.doc.fork()).await.unwrap();
        peer.until_acknowledged(&[p.id], Duration::from_secs(30))
            .await
            .unwrap();
        assert!(peer.acknowledged(&p.id));
        peers.push(peer);
    }

    // Stream signatures; a killer thread SIGKILLs the server at a random moment.
    let pid = server.pid();
    let delay = Duration::from_millis(300 + rand::random::<u64>() % 700);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let mut acknowledged: Vec<String> = Vec::new();
    let mut n = 0;
    'stream: for round in 0..400 {
        for (p, peer) in phones.iter_mut().zip(peers.iter_mut()) {
            n += 1;
            let id = format!("r{round}-{}", &p.device[..6]);
            let sig =
                c.world
                    .signature(&p.device, &id, &format!("Signer {n}"), "M5V 2T6", "Toronto");
            collection::add_signature(&mut p.doc, &sig, &c.world.campaign).unwrap();
            p.written.insert(id, p.doc.get_heads()[0]);
            peer.docs.insert(p.id, p.doc.fork());
            if peer.sync(p.id).await.is_err() {
                break 'stream;
            }
            if peer.settle(Duration::from_millis(15)).await.is_err() || peer.closed {
                break 'stream;
            }
        }
    }
    killer.join().unwrap();
    for (p, peer) in phones.iter().zip(peers.iter()) {
        acknowledged.extend(acked(peer, p));
    }
    let written: usize = phones.iter().map(|p| p.written.len()).sum();
    println!(
        "before the kill: {written} signatures written, {} acknowledged",
        acknowledged.len()
    );
    assert!(
        !acknowledged.is_empty(),
        "the kill came before anything was acknowledged; nothing was tested"
    );
    server.kill();

    // Restart: everything acknowledged is there.
    server.restart();
    let mut admin = Peer::connect(&server.ws(), &server.admin()).await.unwrap();
    for p in &phones {
        admin.request(p.id).await.unwrap();
    }
    admin.settle(Duration::from_millis(500)).await.unwrap();
    let mut stored = std::collections::HashSet::new();
    for p in &phones {
        stored.extend(
            collection::read(&admin.docs[&p.id])
                .unwrap()
                .signatures
                .into_keys(),
        );
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after SIGKILL: {lost:?}"
    );

    // The phones reconnect and finish: every signature counted exactly once.
    for p in &phones {
        let mut peer = Peer::connect(&server.ws(), &p.token).await.unwrap();
        peer.push(p.id, p.doc.fork()).await.unwrap();
        peer.settle(Duration::from_millis(300)).await.unwrap();
        assert!(
            peer.acknowledged(&p.id),
            "phone {} did not finish syncing",
            p.device
        );
    }
    let t = server.totals(&c.id);
    assert_eq!(t["signatures"].as_u64(), Some(written as u64), "{t}");
    assert!(
        server.terminate(),
        "graceful shutdown failed:\n{}",
        server.log_text()
    );
}

/// Issue 18: the server is SIGKILLed between the commit of a phone's changes and their
/// projection (`projection_delay_ms` holds the projector back a minute). The phone heard
/// "acknowledged"; the totals say what they do not count yet (`wait=false` at once, the
/// default `wait` after its 5 s); after the restart every signature is counted exactly once.
/// A graceful stop, on the other hand, counts what is queued before it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_the_commit_and_the_projection_counts_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let held = [("TALLY_PROJECTION_DELAY_MS", "60000")];
    let mut server = ServerProcess::start_with_env(dir.path(), &held);
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let id = new_id();
    let mut doc = collection::create(&c.id, &device).unwrap();
    let people = ["Amara Okafor", "Li Wei", "Sam Tesfaye", "Amara Okafor"];
    for (n, name) in people.iter().enumerate() {
        let sig = c
            .world
            .signature(&device, &format!("q{n}"), name, "M5V 2T6", "Toronto");
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    }
    let mut peer = Peer::connect(&server.ws(), &token).await.unwrap();
    peer.push(id, doc.fork()).await.unwrap();
    peer.until_acknowledged(&[id], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(peer.acknowledged(&id));
    drop(peer);

    let api = tally_tests::server::api(&server.base(), Some(&server.admin()));
    let (s, now, _) = api.totals_with(&c.id, "wait=false").unwrap();
    assert_eq!(s, 200, "{now}");
    assert_eq!(
        now["signatures"], 0,
        "counted before the projector ran: {now}"
    );
    assert_eq!(now["projection"]["pending_records"], 4, "{now}");
    // Another campaign's answer is not behind: nothing of its own waits, so it does not wait.
    let other = server.campaign();
    let (s, theirs, took) = api.totals(&other.id).unwrap();
    assert_eq!(s, 200, "{theirs}");
    assert_eq!(theirs["projection"]["pending_records"], 0, "{theirs}");
    assert_eq!(theirs["projection"]["lag_ms"], 0, "{theirs}");
    assert!(
        took < Duration::from_secs(4),
        "waited {took:?} for another campaign's count"
    );
    let (s, waited, took) = api.totals(&c.id).unwrap();
    assert_eq!(s, 200, "{waited}");
    assert!(
        took >= Duration::from_secs(4),
        "the default answer waits for the count (at most 5 s), took {took:?}"
    );
    assert_eq!(waited["projection"]["pending_records"], 4, "{waited}");
    let queued = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM projection_queue", [], |r| r.get(0))
            .unwrap()
    };
    let db = dir.path().join(tally_server::DB_FILE);
    assert_eq!(queued(&db), 1, "one change queued");

    server.kill();
    assert_eq!(queued(&db), 1, "still queued after the kill");
    server.set_env(&[]);
    server.restart();
    let t = server.totals(&c.id);
    assert_eq!(t["signatures"], 4, "{t}");
    assert_eq!(t["unique_signers"], 3, "{t}");
    assert_eq!(t["projection"]["pending_records"], 0, "{t}");
    assert_eq!(queued(&db), 0);

    // Queued, then a graceful stop: counted before the server ends.
    server.set_env(&held);
    server.restart();
    let mut peer = Peer::connect(&server.ws(), &token).await.unwrap();
    let sig = c
        .world
        .signature(&device, "q9", "Noor Haddad", "M5V 2T6", "Toronto");
    collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    peer.push(id, doc.fork()).await.unwrap();
    peer.until_acknowledged(&[id], Duration::from_secs(30))
        .await
        .unwrap();
    drop(peer);
    assert_eq!(queued(&db), 1);
    assert!(
        server.terminate(),
        "graceful shutdown failed:\n{}",
        server.log_text()
    );
    assert_eq!(queued(&db), 0, "a graceful stop counts what is queued");
    server.set_env(&[]);
    server.restart();
    let (_, t, _) = api.totals_with(&c.id, "wait=false").unwrap();
    assert_eq!(t["signatures"], 5, "{t}");
    assert_eq!(t["projection"]["pending_records"], 0, "{t}");
}
