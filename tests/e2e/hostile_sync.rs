//! Attacks on the cost of syncing (issue 11, items 2 and 4): one canvasser token, a real
//! `tally serve` process, real sockets on 127.0.0.1. Each class has several input shapes:
//!
//! 1. sync messages that ask for more than a real peer does (haves, heads, needs, blooms);
//! 2. change bytes that expand before they are judged (document chunks, change chunks and
//!    compressed chunks claiming many operations, chunk types a sync message never carries);
//! 3. changes that wait for dependencies that never come;
//! 4. a flood of frames;
//! 5. the quarantine as a weapon (its quotas, and what it must never keep).
//!
//! After every case a witness phone, connected throughout, syncs a new signature and the
//! totals count every signature stored before: no attack stalls the others.

use std::time::{Duration, Instant};

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use tally_core::collection;
use tally_proto::DocumentId;
use tally_proto::wire::{self, Message, PeerId, PeerMetadata};
use tally_tests::new_id;
use tally_tests::server::{Campaign, Server};
use tally_tests::{Peer, ServerProcess};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const QUIET: Duration = Duration::from_millis(300);
/// How long an acknowledgment that must come may take, on a loaded machine.
const ACK_LIMIT: Duration = Duration::from_secs(30);
const MAX_OPS: u64 = 5_000;
const PENDING_PER_DOC: usize = 64 * 1024;
const PENDING_PER_DEVICE: usize = 96 * 1024;
const FRAMES_PER_SECOND: u32 = 200;
const FRAME_BURST: u32 = 400;
const Q_ENTRIES_PER_DEVICE: usize = 12;
const Q_RAW_PER_DEVICE: usize = 8 * 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

struct Rig {
    server: ServerProcess,
    c: Campaign,
    witness_device: String,
    witness: Peer,
    witness_doc: DocumentId,
    stored: u64,
}

impl Rig {
    /// The witness syncs a new signature, acknowledged within `limit`, and the totals count
    /// everything stored so far.
    async fn still_healthy(&mut self, case: &str) {
        let n = self.stored;
        let mut doc = self.witness.docs[&self.witness_doc].fork();
        let sig = self.c.world.signature(
            &self.witness_device,
            &format!("w{n}"),
            &format!("Witness Signer {n}"),
            "M5V 2T6",
            "Toronto",
        );
        collection::add_signature(&mut doc, &sig, &self.c.world.campaign).unwrap();
        self.witness.docs.insert(self.witness_doc, doc);
        let t0 = Instant::now();
        self.witness.sync(self.witness_doc).await.unwrap();
        self.witness
            .until_acknowledged(&[self.witness_doc], ACK_LIMIT)
            .await
            .unwrap();
        assert!(!self.witness.closed, "{case}: the witness was disconnected");
        assert!(
            self.witness.acknowledged(&self.witness_doc),
            "{case}: the witness's signature was not acknowledged: {:?}",
            self.witness.errors
        );
        assert!(
            self.witness.errors.is_empty(),
            "{case}: {:?}",
            self.witness.errors
        );
        self.stored += 1;
        let t = self.server.totals(&self.c.id);
        assert_eq!(t["signatures"].as_u64(), Some(self.stored), "{case}: {t}");
        println!("ok: {case} (witness synced in {:?})", t0.elapsed());
    }

    fn quarantine(&self) -> Vec<tally_store::QuarantineEntry> {
        let store = tally_store::Store::open(&self.server.data.join("tally.db")).unwrap();
        store.list_quarantine(&Default::default()).unwrap()
    }
}

/// What the server said within `wait`: its error messages, other messages, whether it closed.
async fn hear(ws: &mut Ws, wait: Duration) -> (Vec<String>, Vec<Message>, bool) {
    let mut errors = Vec::new();
    let mut other = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return (errors, other, false),
            Ok(Some(Ok(WsMessage::Binary(b)))) => match wire::decode(&b) {
                Ok(Message::Error { message, .. }) => errors.push(message),
                Ok(m) => other.push(m),
                Err(e) => panic!("the server sent an undecodable frame: {e}"),
            },
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                return (errors, other, true);
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Waits until the server answers (an error or a message), up to `max`; returns what it said.
async fn hear_answer(ws: &mut Ws, max: Duration) -> (Vec<String>, Vec<Message>, bool) {
    let deadline = Instant::now() + max;
    let (mut errors, mut other) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        let (e, o, closed) = hear(ws, QUIET).await;
        let done = !e.is_empty() || !o.is_empty() || closed;
        errors.extend(e);
        other.extend(o);
        if done {
            let (e, o, closed) = hear(ws, QUIET).await;
            errors.extend(e);
            other.extend(o);
            return (errors, other, closed);
        }
    }
    (errors, other, false)
}

/// A raw connection that joined as `me`, and the server's peer id.
async fn joined(rig: &Rig, token: &str, me: &str) -> (Ws, PeerId) {
    let mut ws = Peer::open(&rig.server.ws(), Some(token)).await.unwrap();
    let join = wire::encode(&Message::Join {
        sender_id: PeerId::new(me),
        supported_protocol_versions: Some(vec!["1".into()]),
        peer_metadata: Some(PeerMetadata::default()),
    });
    ws.send(WsMessage::Binary(join.into())).await.unwrap();
    let (errors, msgs, closed) = hear(&mut ws, QUIET).await;
    assert!(errors.is_empty() && !closed, "join refused: {errors:?}");
    let server = msgs
        .into_iter()
        .find_map(|m| match m {
            Message::Peer { sender_id, .. } => Some(sender_id),
            _ => None,
        })
        .expect("a peer answer");
    (ws, server)
}

async fn send(ws: &mut Ws, frame: Vec<u8>) {
    ws.send(WsMessage::Binary(frame.into())).await.unwrap();
}

fn sync_frame(me: &str, server: &PeerId, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
    wire::encode(&Message::Sync {
        sender_id: PeerId::new(me),
        target_id: server.clone(),
        document_id: doc,
        data,
    })
}

fn leb(out: &mut Vec<u8>, n: u64) {
    tally_proto::bounds::write_uleb(out, n);
}

/// A V1 sync message written byte by byte: heads, needs, haves (last sync, bloom bytes),
/// change chunks. automerge decodes it; what it asks for is the attack.
fn raw_sync(
    heads: &[[u8; 32]],
    need: &[[u8; 32]],
    haves: &[(Vec<[u8; 32]>, Vec<u8>)],
    changes: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = vec![0x42];
    for list in [heads, need] {
        leb(&mut out, list.len() as u64);
        for h in list {
            out.extend(h);
        }
    }
    leb(&mut out, haves.len() as u64);
    for (last_sync, bloom) in haves {
        leb(&mut out, last_sync.len() as u64);
        for h in last_sync {
            out.extend(h);
        }
        leb(&mut out, bloom.len() as u64);
        out.extend(bloom);
    }
    leb(&mut out, changes.len() as u64);
    for c in changes {
        leb(&mut out, c.len() as u64);
        out.extend(c);
    }
    assert!(automerge::sync::Message::decode(&out).is_ok());
    out
}

fn distinct_hashes(n: usize) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            let mut h = [7u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h
        })
        .collect()
}

/// A bloom filter header (entries, bits per entry, probes) with its bits.
fn bloom(entries: u64, bits_per_entry: u64, probes: u64) -> Vec<u8> {
    let mut v = Vec::new();
    leb(&mut v, entries);
    leb(&mut v, bits_per_entry);
    leb(&mut v, probes);
    v.extend(std::iter::repeat_n(
        0xa5,
        (entries * bits_per_entry).div_ceil(8) as usize,
    ));
    v
}

/// A collection of `owner`'s with `n` signatures, as a phone would write it.
fn collection_with(c: &Campaign, owner: &str, n: usize, prefix: &str) -> Automerge {
    let mut doc = collection::create(&c.id, owner).unwrap();
    for i in 0..n {
        let sig = c.world.signature(
            owner,
            &format!("{prefix}{i}"),
            &format!("Signer {prefix} {i}"),
            "M5V 2T6",
            "Toronto",
        );
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    }
    doc
}

/// A document of one list with `n` insertions: a few KB on the wire, `n` operations loaded.
fn list_of(n: usize) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let list = tx.put_object(ROOT, "l", automerge::ObjType::List).unwrap();
    tx.splice(
        &list,
        0,
        0,
        std::iter::repeat_n(automerge::ScalarValue::Int(1), n),
    )
    .unwrap();
    tx.commit();
    doc
}

fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut c = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, kind];
    leb(&mut c, body.len() as u64);
    c.extend(body);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_a_sync_is_bounded() {
    let _heavy = crate::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_MAX_OPS_PER_MESSAGE", &MAX_OPS.to_string()),
            (
                "TALLY_MAX_PENDING_BYTES_PER_DOCUMENT",
                &PENDING_PER_DOC.to_string(),
            ),
            (
                "TALLY_MAX_PENDING_BYTES_PER_DEVICE",
                &PENDING_PER_DEVICE.to_string(),
            ),
            (
                "TALLY_MAX_FRAMES_PER_SECOND",
                &FRAMES_PER_SECOND.to_string(),
            ),
            ("TALLY_FRAME_BURST", &FRAME_BURST.to_string()),
            (
                "TALLY_QUARANTINE_ENTRIES_PER_DEVICE",
                &Q_ENTRIES_PER_DEVICE.to_string(),
            ),
            (
                "TALLY_QUARANTINE_RAW_BYTES_PER_DEVICE",
                &Q_RAW_PER_DEVICE.to_string(),
            ),
            ("TALLY_QUARANTINE_MAX_RAW_BYTES", "4096"),
            // Raw test connections do not answer pings while the test builds its next attack.
            ("TALLY_IDLE_TIMEOUT_SECS", "0"),
        ],
    );
    let c = server.campaign();
    let (witness_device, witness_token) = server.enroll(&c.id, "canvasser");
    let mut witness = Peer::connect(&server.ws(), &witness_token).await.unwrap();
    let witness_doc = new_id();
    witness
        .push(
            witness_doc,
            collection::create(&c.id, &witness_device).unwrap(),
        )
        .await
        .unwrap();
    witness.settle(QUIET).await.unwrap();
    let mut rig = Rig {
        server,
        c,
        witness_device,
        witness,
        witness_doc,
        stored: 0,
    };
    rig.still_healthy("setup").await;

    // The attacker: a canvasser with a collection of 300 signatures (so that every have entry
    // costs the server 300 bloom tests). An honest first sync of 300 records at once is a
    // document chunk: it must pass the bounds.
    let (mallory, token) = rig.server.enroll(&rig.c.id, "canvasser");
    let mut phone = Peer::connect(&rig.server.ws(), &token).await.unwrap();
    let own = new_id();
    phone
        .push(own, collection_with(&rig.c, &mallory, 300, "m"))
        .await
        .unwrap();
    phone.until_acknowledged(&[own], ACK_LIMIT).await.unwrap();
    assert!(phone.acknowledged(&own), "{:?}", phone.errors);
    rig.stored += 300;
    rig.still_healthy("an honest first sync of 300 records")
        .await;

    // 1. Sync messages asking for more than a real peer does. The million empty haves is the
    //    attack that held every sync worker for minutes.
    let (mut ws, server_id) = joined(&rig, &token, "mallory-1").await;
    let empty_have = (vec![], vec![]);
    let shapes: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a million empty have entries",
            raw_sync(&[], &[], &vec![empty_have.clone(); 1_000_000], &[]),
            "have entries: 1000000",
        ),
        (
            "five have entries",
            raw_sync(&[], &[], &vec![empty_have.clone(); 5], &[]),
            "have entries: 5",
        ),
        (
            "2,000 heads",
            raw_sync(&distinct_hashes(2_000), &[], &[], &[]),
            "heads: 2000",
        ),
        (
            "2,000 needs",
            raw_sync(&[], &distinct_hashes(2_000), &[], &[]),
            "need hashes: 2000",
        ),
        (
            "2,000 last-sync hashes",
            raw_sync(&[], &[], &[(distinct_hashes(2_000), vec![])], &[]),
            "last-sync hashes",
        ),
        (
            "a bloom of 40 probes",
            raw_sync(&[], &[], &[(vec![], bloom(300, 10, 40))], &[]),
            "40 probes",
        ),
        (
            "a bloom of 64 bits per entry",
            raw_sync(&[], &[], &[(vec![], bloom(300, 64, 7))], &[]),
            "64 bits per entry",
        ),
        (
            "a bloom claiming 2M entries",
            raw_sync(&[], &[], &[(vec![], bloom(2_000_000, 1, 7))], &[]),
            "2000000 entries",
        ),
    ];
    for (case, data, expect) in shapes {
        let t0 = Instant::now();
        send(&mut ws, sync_frame("mallory-1", &server_id, own, data)).await;
        let (errors, _, closed) = hear_answer(&mut ws, Duration::from_secs(20)).await;
        assert!(
            errors.len() == 1 && errors[0].contains(expect),
            "{case}: {errors:?}"
        );
        assert!(
            errors[0].contains("not applied") || errors[0].contains("accepted"),
            "{case}: {errors:?}"
        );
        assert!(!closed, "{case}: a refused message closed the connection");
        println!("{case}: refused in {:?}", t0.elapsed());
        rig.still_healthy(case).await;
    }

    // 2. Change bytes that expand before they are judged.
    let big = list_of(MAX_OPS as usize * 3);
    let doc_chunk = big.save();
    let change_chunk = big.get_changes(&[])[0].raw_bytes().to_vec();
    let mut compressed_change = big.get_changes(&[])[0].clone();
    let compressed_change = compressed_change.bytes().to_vec();
    let zeros_deflated = {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![0u8; 2 * 1024 * 1024]).unwrap();
        enc.finish().unwrap()
    };
    let mut bundle = change_chunk.clone();
    bundle[8] = 3;
    let shapes: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a document chunk of 15,000 ops",
            doc_chunk.clone(),
            "operations",
        ),
        ("a change chunk of 15,000 ops", change_chunk, "operations"),
        (
            "a compressed change of 15,000 ops",
            compressed_change,
            "operations",
        ),
        (
            "a compressed chunk inflating to 2 MB",
            chunk(2, &zeros_deflated),
            "inflates past",
        ),
        ("a bundle chunk (type 3)", bundle, "type 3"),
        ("a chunk of type 9", chunk(9, b"xyz"), "type 9"),
    ];
    let q0 = rig.quarantine().len();
    for (i, (case, bytes, expect)) in shapes.into_iter().enumerate() {
        assert!(bytes.len() < 200_000, "{case}: {} bytes", bytes.len());
        // Into a new document (the creation path) and into the attacker's own collection.
        for target in [new_id(), own] {
            let t0 = Instant::now();
            let data = raw_sync(&[], &[], &[], std::slice::from_ref(&bytes));
            send(&mut ws, sync_frame("mallory-1", &server_id, target, data)).await;
            let (errors, _, closed) = hear_answer(&mut ws, Duration::from_secs(20)).await;
            assert!(
                errors.len() == 1 && errors[0].contains(expect),
                "{case}: {errors:?} closed {closed}; log: {}",
                tail(&rig.server.log_text())
            );
            assert!(!closed, "{case}");
            println!("{case}: refused in {:?}", t0.elapsed());
        }
        let _ = i;
        rig.still_healthy(case).await;
    }
    let q = rig.quarantine();
    assert!(q.len() > q0, "the refusals were not recorded");
    assert!(
        q[q0..]
            .iter()
            .all(|e| e.bytes.is_empty() && e.size > 0 && e.digest.len() == 64),
        "unjudged bytes are never kept whole"
    );

    // 3. Changes that wait for a dependency that never comes.
    //    a. An honest reordering still works: the later change first, then its dependency.
    let base = phone.docs[&own].clone();
    let mut next = base.fork();
    let extra = |doc: &mut Automerge, id: &str| {
        let sig = rig
            .c
            .world
            .signature(&mallory, id, "Late Signer", "M5V 2T6", "Toronto");
        collection::add_signature(doc, &sig, &rig.c.world.campaign).unwrap();
    };
    extra(&mut next, "late1");
    extra(&mut next, "late2");
    let added = base.get_changes_added(&next);
    assert_eq!(added.len(), 2);
    let heads: Vec<[u8; 32]> = next.get_heads().iter().map(|h| h.0).collect();
    let (mut ws2, sid2) = joined(&rig, &token, "mallory-2").await;
    let second = raw_sync(&heads, &[], &[], &[added[1].raw_bytes().to_vec()]);
    send(&mut ws2, sync_frame("mallory-2", &sid2, own, second)).await;
    let (errors, _, _) = hear(&mut ws2, QUIET).await;
    assert!(errors.is_empty(), "{errors:?}");
    let first = raw_sync(&heads, &[], &[], &[added[0].raw_bytes().to_vec()]);
    send(&mut ws2, sync_frame("mallory-2", &sid2, own, first)).await;
    let (errors, _, _) = hear(&mut ws2, QUIET).await;
    assert!(errors.is_empty(), "{errors:?}");
    rig.stored += 2;
    rig.still_healthy("a change before its dependency, then the dependency")
        .await;

    //    b. Orphans only, in 16 KB messages: past the per-document bound they are dropped and
    //       the peer is told.
    let orphan = |n: usize, tag: &str| -> Vec<Vec<u8>> {
        let mut doc = next.fork();
        let mut tx = doc.transaction();
        tx.put(ROOT, "withheld", tag).unwrap(); // the dependency that never comes
        tx.commit();
        let withheld = doc.get_heads();
        let mut chunks = Vec::new();
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("pad{i}"), "x".repeat(1000)).unwrap();
            tx.commit();
        }
        for ch in doc.get_changes(&withheld) {
            chunks.push(ch.raw_bytes().to_vec());
        }
        chunks
    };
    let mut refused = None;
    for round in 0..10 {
        let data = raw_sync(&heads, &[], &[], &orphan(16, &format!("a{round}")));
        send(&mut ws2, sync_frame("mallory-2", &sid2, own, data)).await;
        let (errors, _, closed) = hear(&mut ws2, QUIET).await;
        assert!(!closed);
        if !errors.is_empty() {
            refused = Some((round, errors));
            break;
        }
    }
    let (round, errors) = refused.expect("orphans beyond the per-document bound were kept");
    assert!(
        round >= 2,
        "refused too early, at round {round}: {errors:?}"
    );
    assert!(
        errors[0].contains("one document may hold") && errors[0].contains("dropped"),
        "{errors:?}"
    );
    rig.still_healthy("orphan changes beyond the per-document bound")
        .await;

    //    c. Orphans spread over documents: the per-device bound. A second collection of the
    //       same device, then orphans to both.
    let other = new_id();
    phone
        .push(other, collection_with(&rig.c, &mallory, 1, "o"))
        .await
        .unwrap();
    phone.settle(QUIET).await.unwrap();
    rig.stored += 1;
    let mut refused = None;
    for round in 0..12 {
        let target = if round % 2 == 0 { own } else { other };
        let data = raw_sync(&heads, &[], &[], &orphan(16, &format!("b{round}")));
        send(&mut ws2, sync_frame("mallory-2", &sid2, target, data)).await;
        let (errors, _, _) = hear(&mut ws2, QUIET).await;
        if errors.iter().any(|e| e.contains("one device may")) {
            refused = Some(round);
            break;
        }
    }
    assert!(
        refused.is_some(),
        "orphans beyond the per-device bound were kept"
    );
    //    d. Closing the connection gives everything back: a new connection may send orphans
    //       up to the bound again.
    drop(ws2);
    tokio::time::sleep(QUIET).await;
    let (mut ws3, sid3) = joined(&rig, &token, "mallory-3").await;
    let data = raw_sync(&heads, &[], &[], &orphan(16, "c"));
    send(&mut ws3, sync_frame("mallory-3", &sid3, own, data)).await;
    let (errors, _, _) = hear(&mut ws3, QUIET).await;
    assert!(
        errors.is_empty(),
        "the closed connection's orphans were not released: {errors:?}"
    );
    drop(ws3);
    rig.still_healthy("orphan changes beyond the per-device bound")
        .await;

    // 4. A flood of frames: one-byte frames, then valid but useless sync messages (two that
    //    alternate, so that none is a replay of the one before). Closed past the budget, with
    //    the reason.
    let empty_sync = {
        let mut st = automerge::sync::State::new();
        Automerge::new()
            .generate_sync_message(&mut st)
            .unwrap()
            .encode()
    };
    for case in ["one-byte frames", "valid sync messages"] {
        let (mut ws, sid) = joined(&rig, &token, "mallory-4").await;
        let frames: Vec<Vec<u8>> = match case {
            "one-byte frames" => vec![vec![0x01], vec![0x02]],
            _ => vec![
                sync_frame("mallory-4", &sid, own, empty_sync.clone()),
                sync_frame("mallory-4", &sid, other, empty_sync.clone()),
            ],
        };
        let t0 = Instant::now();
        let mut sent = 0;
        for i in 0..(FRAME_BURST as usize * 20) {
            if ws
                .send(WsMessage::Binary(frames[i % 2].clone().into()))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let mut budget_error = false;
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => {
                    if let Ok(Message::Error { message, .. }) = wire::decode(&b)
                        && message.contains("frames per second")
                    {
                        budget_error = true;
                    }
                }
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break true,
                Ok(Some(Ok(_))) => {}
                Err(_) => break false,
            }
        };
        assert!(closed, "{case}: a flood of {sent} frames was not closed");
        assert!(budget_error, "{case}: the closing error does not say why");
        println!("{case}: {sent} sent, closed after {:?}", t0.elapsed());
        rig.still_healthy(case).await;
    }

    // 5. The quarantine as a weapon. A device's refusals beyond its quota are only counted,
    //    raw bytes stay within their bounds, and a refused field's value is never kept.
    let (eve, eve_token) = rig.server.enroll(&rig.c.id, "canvasser");
    let mut eve_phone = Peer::connect(&rig.server.ws(), &eve_token).await.unwrap();
    let eve_doc = new_id();
    eve_phone
        .push(eve_doc, collection_with(&rig.c, &eve, 1, "e"))
        .await
        .unwrap();
    eve_phone.settle(QUIET).await.unwrap();
    rig.stored += 1;
    let before = eve_phone.docs[&eve_doc].clone();
    let secret_name = "Zanele Plaintext-Secret";
    type Edit = Box<dyn Fn(&mut Automerge)>;
    let refusals: Vec<(&str, Edit)> = vec![
        (
            "a plaintext name in an unknown field",
            Box::new(move |doc: &mut Automerge| {
                let mut tx = doc.transaction();
                let (_, sigs) = tx.get(ROOT, collection::SIGNATURES).unwrap().unwrap();
                let (_, rec) = tx.get(&sigs, "e0").unwrap().unwrap();
                tx.put(&rec, "name", secret_name).unwrap();
                tx.commit();
            }),
        ),
        (
            "a plaintext name in an oversized city",
            Box::new(move |doc: &mut Automerge| {
                let mut tx = doc.transaction();
                let (_, sigs) = tx.get(ROOT, collection::SIGNATURES).unwrap().unwrap();
                let (_, rec) = tx.get(&sigs, "e0").unwrap().unwrap();
                tx.put(&rec, "city", format!("{secret_name} {}", "x".repeat(300)))
                    .unwrap();
                tx.commit();
            }),
        ),
        (
            "a deletion (raw bytes may be kept)",
            Box::new(|doc: &mut Automerge| {
                let mut tx = doc.transaction();
                let (_, sigs) = tx.get(ROOT, collection::SIGNATURES).unwrap().unwrap();
                tx.delete(&sigs, "e0").unwrap();
                tx.commit();
            }),
        ),
    ];
    let q0 = rig.quarantine().len();
    for (case, edit) in &refusals {
        let mut doc = before.fork();
        edit(&mut doc);
        let (mut ws, sid) = joined(&rig, &eve_token, "eve-1").await;
        let changes: Vec<Vec<u8>> = before
            .get_changes_added(&doc)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
        send(
            &mut ws,
            sync_frame("eve-1", &sid, eve_doc, raw_sync(&heads, &[], &[], &changes)),
        )
        .await;
        let (errors, _, _) = hear(&mut ws, QUIET).await;
        assert_eq!(errors.len(), 1, "{case}: {errors:?}");
        println!("{case}: {}", errors[0]);
    }
    let q = rig.quarantine();
    let eve_rows: Vec<_> = q[q0..].iter().filter(|e| e.device_id == eve).collect();
    assert_eq!(eve_rows.len(), 3);
    for row in &eve_rows[..2] {
        assert!(
            row.bytes.is_empty(),
            "a refused field's value was kept: {row:?}"
        );
        assert!(row.size > 0 && row.digest.len() == 64 && !row.change_hashes.is_empty());
        assert!(row.rule.is_some(), "{row:?}");
    }
    assert!(
        !eve_rows[2].bytes.is_empty(),
        "a small deletion's bytes are kept as evidence"
    );
    // No trace of the name anywhere in the database files.
    let _ = std::process::Command::new("sync").status();
    for file in ["tally.db", "tally.db-wal"] {
        if let Ok(bytes) = std::fs::read(rig.server.data.join(file)) {
            assert!(
                !bytes
                    .windows(secret_name.len())
                    .any(|w| w == secret_name.as_bytes()),
                "{file} holds the refused plaintext name"
            );
        }
    }
    rig.still_healthy("refused fields are not kept").await;

    //    A flood of refused deletions, 3 KB each: at most the device's quota of entries and of
    //    raw bytes; the rest are counted.
    let mut doc = before.fork();
    {
        let mut tx = doc.transaction();
        let (_, sigs) = tx.get(ROOT, collection::SIGNATURES).unwrap().unwrap();
        tx.delete(&sigs, "e0").unwrap();
        tx.put(ROOT, "pad", "p".repeat(3000)).unwrap();
        tx.commit();
    }
    let changes: Vec<Vec<u8>> = before
        .get_changes_added(&doc)
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
    let data = raw_sync(&heads, &[], &[], &changes);
    let (mut ws, sid) = joined(&rig, &eve_token, "eve-2").await;
    let flood = 60;
    for i in 0..flood {
        // Alternate two documents so that no frame is a replay of the one before.
        let target = if i % 2 == 0 { eve_doc } else { new_id() };
        send(&mut ws, sync_frame("eve-2", &sid, target, data.clone())).await;
    }
    let (errors, _, _) = hear(&mut ws, Duration::from_secs(2)).await;
    assert!(errors.len() >= flood / 2, "{}", errors.len());
    let q = rig.quarantine();
    let eve_rows: Vec<_> = q.iter().filter(|e| e.device_id == eve).collect();
    assert_eq!(eve_rows.len(), Q_ENTRIES_PER_DEVICE, "entries per device");
    let raw: usize = eve_rows.iter().map(|e| e.bytes.len()).sum();
    assert!(raw <= Q_RAW_PER_DEVICE, "{raw} raw bytes kept");
    let counted: i64 = eve_rows.iter().map(|e| e.repeats).sum();
    assert!(counted > 0, "the refusals past the quota were not counted");
    println!(
        "quarantine after {flood} refused frames: {} entries, {raw} raw bytes, {counted} counted",
        eve_rows.len()
    );
    rig.still_healthy("a flood of refused frames").await;
}

/// A field of `/proc/PID/status`, in kB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) the process used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// The figures of docs in /work/notes/issue11-sync.md: each attack against a fresh server
/// (the binary in TALLY_TEST_BIN_DIR when set, to measure an older build), with the time it
/// held the server, its memory, its CPU, and an honest phone's sync time while it ran.
/// `cargo test -p tally-tests --test e2e hostile_sync::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, minutes long"]
async fn measure_attacks() {
    let _heavy = crate::heavy().await;
    let only = std::env::var("TALLY_ATTACK").ok();
    for attack in ["haves", "document", "orphans", "flood", "quarantine"] {
        if only.as_deref().is_some_and(|o| o != attack) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_with_env(dir.path(), &[("TALLY_IDLE_TIMEOUT_SECS", "0")]);
        let c = server.campaign();
        let pid = server.pid();
        let (wdev, wtok) = server.enroll(&c.id, "canvasser");
        let mut witness = Peer::connect(&server.ws(), &wtok).await.unwrap();
        let wdoc = new_id();
        witness
            .push(wdoc, collection::create(&c.id, &wdev).unwrap())
            .await
            .unwrap();
        witness.settle(QUIET).await.unwrap();
        let (mdev, mtok) = server.enroll(&c.id, "canvasser");
        let mut phone = Peer::connect(&server.ws(), &mtok).await.unwrap();
        let own = new_id();
        phone
            .push(own, collection_with(&c, &mdev, 300, "m"))
            .await
            .unwrap();
        phone.settle(QUIET).await.unwrap();
        let base = phone.docs[&own].clone();
        drop(phone);
        // The frames of the attack, per connection.
        let frames: Vec<Vec<Vec<u8>>> = match attack {
            "haves" => (0..4)
                .map(|_| vec![raw_sync(&[], &[], &vec![(vec![], vec![]); 4_000_000], &[])])
                .collect(),
            "document" => {
                let chunk = list_of(5_000_000).save();
                println!("document chunk: {} bytes", chunk.len());
                (0..4)
                    .map(|_| vec![raw_sync(&[], &[], &[], std::slice::from_ref(&chunk))])
                    .collect()
            }
            "orphans" => {
                // Four connections, three 12 MB frames each, every frame different orphans
                // (1 MB values that automerge does not compress away), all for one document.
                let frame = |tag: usize| {
                    let mut doc = base.fork();
                    let mut tx = doc.transaction();
                    tx.put(ROOT, "withheld", tag as i64).unwrap();
                    tx.commit();
                    let withheld = doc.get_heads();
                    for i in 0..12 {
                        let mut tx = doc.transaction();
                        let noise: String = (0..(1usize << 20))
                            .map(|j| char::from(b'a' + ((j * 7 + i * 13 + tag * 31) % 26) as u8))
                            .collect();
                        tx.put(ROOT, format!("pad{i}"), noise).unwrap();
                        tx.commit();
                    }
                    let chunks: Vec<Vec<u8>> = doc
                        .get_changes(&withheld)
                        .iter()
                        .map(|c| c.raw_bytes().to_vec())
                        .collect();
                    let heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
                    raw_sync(&heads, &[], &[], &chunks)
                };
                (0..4)
                    .map(|n| (0..3).map(|k| frame(n * 3 + k)).collect())
                    .collect()
            }
            "quarantine" => {
                let mut doc = base.fork();
                let mut tx = doc.transaction();
                let (_, sigs) = tx.get(ROOT, collection::SIGNATURES).unwrap().unwrap();
                let (_, rec) = tx.get(&sigs, "m0").unwrap().unwrap();
                tx.put(&rec, "name", "x".repeat(1 << 20)).unwrap();
                tx.commit();
                let chunks: Vec<Vec<u8>> = base
                    .get_changes_added(&doc)
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect();
                let heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
                let data = raw_sync(&heads, &[], &[], &chunks);
                vec![vec![data; 300]]
            }
            _ => vec![vec![]],
        };
        let db_before = std::fs::metadata(dir.path().join("tally.db")).map_or(0, |m| m.len())
            + std::fs::metadata(dir.path().join("tally.db-wal")).map_or(0, |m| m.len());
        let (rss0, cpu0) = (proc_kib(pid, "VmRSS:"), cpu_secs(pid));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (n, conn_frames) in frames.into_iter().enumerate() {
            let url = server.ws();
            let tok = mtok.clone();
            let is_flood = attack == "flood";
            let is_orphans = attack == "orphans";
            tasks.push(tokio::spawn(async move {
                let mut ws = Peer::open(&url, Some(&tok)).await.unwrap();
                let me = format!("attacker-{n}");
                let join = wire::encode(&Message::Join {
                    sender_id: PeerId::new(&me),
                    supported_protocol_versions: Some(vec!["1".into()]),
                    peer_metadata: Some(PeerMetadata::default()),
                });
                ws.send(WsMessage::Binary(join.into())).await.unwrap();
                let sid = loop {
                    if let Some(Ok(WsMessage::Binary(b))) = ws.next().await
                        && let Ok(Message::Peer { sender_id, .. }) = wire::decode(&b)
                    {
                        break sender_id;
                    }
                };
                let mut sent = 0u64;
                if is_flood {
                    let end = Instant::now() + Duration::from_secs(20);
                    let (mut tx, mut rx) = ws.split();
                    let drain = tokio::spawn(async move { while rx.next().await.is_some() {} });
                    while Instant::now() < end {
                        let b = if sent.is_multiple_of(2) {
                            vec![0x01]
                        } else {
                            vec![0x02]
                        };
                        if tx.send(WsMessage::Binary(b.into())).await.is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    drain.abort();
                    return sent;
                }
                let count = conn_frames.len();
                for (i, data) in conn_frames.into_iter().enumerate() {
                    let target = if i % 2 == 0 || is_orphans {
                        own
                    } else {
                        new_id()
                    };
                    let _ = ws
                        .send(WsMessage::Binary(
                            sync_frame(&me, &sid, target, data).into(),
                        ))
                        .await;
                    sent += 1;
                }
                // Wait for the answers (or 120 s).
                let mut answers = 0;
                let end = Instant::now() + Duration::from_secs(120);
                while answers < count && Instant::now() < end {
                    match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                        Ok(Some(Ok(WsMessage::Binary(_)))) => answers += 1,
                        Ok(None) | Ok(Some(Err(_))) => break,
                        _ => {}
                    }
                }
                sent
            }));
        }
        if attack == "flood" {
            tasks.push(tokio::spawn(async { 0 }));
        }
        // The honest phone, one second into the attack.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut doc = witness.docs[&wdoc].fork();
        let sig = c
            .world
            .signature(&wdev, "h1", "Honest Signer", "M5V 2T6", "Toronto");
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
        witness.docs.insert(wdoc, doc);
        let tw = Instant::now();
        witness.sync(wdoc).await.unwrap();
        let mut honest = None;
        while tw.elapsed() < Duration::from_secs(120) {
            witness.settle(Duration::from_millis(100)).await.unwrap();
            if witness.acknowledged(&wdoc) {
                honest = Some(tw.elapsed());
                break;
            }
        }
        let mut sent = 0;
        for t in tasks {
            sent += t.await.unwrap();
        }
        let held = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let db_after = std::fs::metadata(dir.path().join("tally.db")).map_or(0, |m| m.len())
            + std::fs::metadata(dir.path().join("tally.db-wal")).map_or(0, |m| m.len());
        println!(
            "MEASURE {attack}: frames {sent}, attack over after {:.1} s, server CPU {:.1} s, RSS {} -> peak {} -> {} MB after, database +{} MB, honest phone acknowledged after {}",
            held.as_secs_f64(),
            cpu_secs(pid) - cpu0,
            rss0 / 1024,
            proc_kib(pid, "VmHWM:") / 1024,
            proc_kib(pid, "VmRSS:") / 1024,
            db_after.saturating_sub(db_before) / (1024 * 1024),
            honest.map_or("never (120 s)".into(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            )),
        );
    }
}
