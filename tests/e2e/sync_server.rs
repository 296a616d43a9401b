//! The sync server over real sockets on 127.0.0.1 and a real SQLite file: authentication before
//! the upgrade, pushing and reading documents, read access, refusing bad changes into the
//! quarantine while the connection keeps working, and revocation.

use std::time::{Duration, Instant};

use automerge::Automerge;
use tally_core::collection;
use tally_proto::DocumentId;
use tally_tests::new_id;
use tally_tests::server::{Server, http};
use tally_tests::{Peer, TestServer};

const QUIET: Duration = Duration::from_millis(400);

fn quarantine_count(server: &TestServer) -> i64 {
    let store = tally_store::Store::open(&server.db()).unwrap();
    store.list_quarantine(&Default::default()).unwrap().len() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_needs_a_valid_token() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    for token in [None, Some("tly_0000"), Some("not-a-token")] {
        match Peer::open(&server.ws(), token).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    // The query parameter works for browsers.
    let url = format!("{}?token={token}", server.ws());
    assert!(Peer::open(&url, None).await.is_ok());
    // A revoked token is refused, and its open connection is closed within a second.
    let mut live = Peer::connect(&server.ws(), &token).await.unwrap();
    let (s, v) = http(
        &server.base(),
        "POST",
        &format!("/api/v1/devices/{device}/revoke"),
        Some(&server.admin()),
        Some(serde_json::json!({})),
    );
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    live.settle(Duration::from_millis(1500)).await.ok();
    assert!(live.closed, "revoked device still connected");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        t0.elapsed()
    );
    match Peer::open(&server.ws(), Some(&token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401 for a revoked token, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pushes_its_collection_and_reads_the_campaign() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let mut phone = Peer::connect(&server.ws(), &token).await.unwrap();

    // Read the campaign and the totals documents.
    let campaign_id: DocumentId = c.id.parse().unwrap();
    let totals_id = DocumentId::from_url(&c.totals_url).unwrap();
    phone.request(campaign_id).await.unwrap();
    phone.request(totals_id).await.unwrap();
    phone.settle(QUIET).await.unwrap();
    let campaign = tally_core::campaign::read(&phone.docs[&campaign_id]).expect("campaign synced");
    assert_eq!(campaign.events.len(), 1);
    assert!(phone.unavailable.is_empty(), "{:?}", phone.unavailable);

    // Push a collection with two signatures.
    let mut doc = collection::create(&c.id, &alice).unwrap();
    for (i, (name, postal, city)) in [
        ("Amara Okafor", "M5V 2T6", "Toronto"),
        ("Li Wei", "V5K 0A1", "Vancouver"),
    ]
    .iter()
    .enumerate()
    {
        let sig = c
            .world
            .signature(&alice, &format!("s{i}"), name, postal, city);
        collection::add_signature(&mut doc, &sig, &campaign).unwrap();
    }
    let col_id = new_id();
    phone.push(col_id, doc.fork()).await.unwrap();
    phone.settle(QUIET).await.unwrap();
    assert!(phone.errors.is_empty(), "{:?}", phone.errors);
    assert!(
        phone.acknowledged(&col_id),
        "server did not acknowledge the collection"
    );

    // Totals count them (the projection), and the totals document catches up.
    let t = server.totals(&c.id);
    assert_eq!(
        (t["signatures"].as_u64(), t["unique_signers"].as_u64()),
        (Some(2), Some(2)),
        "{t}"
    );
    // The totals document is rewritten every `totals_document_secs` (2 s): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let totals = loop {
        phone.settle(QUIET).await.unwrap();
        let current = phone
            .docs
            .get(&totals_id)
            .and_then(|d| tally_core::totals_doc::read(d).ok().flatten());
        match current {
            Some((t, _)) if t.signatures == 2 => break t,
            _ if std::time::Instant::now() > deadline => panic!("totals document not updated"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(totals.signatures, 2);

    // A second connection of the same device reads its own collection back.
    let mut again = Peer::connect(&server.ws(), &token).await.unwrap();
    again.request(col_id).await.unwrap();
    again.settle(QUIET).await.unwrap();
    assert_eq!(
        collection::read(&again.docs[&col_id])
            .unwrap()
            .signatures
            .len(),
        2
    );

    // Another canvasser cannot read it, nor the review document; unknown documents look the same.
    let (_, bob_token) = server.enroll(&c.id, "canvasser");
    let mut bob = Peer::connect(&server.ws(), &bob_token).await.unwrap();
    let nowhere = new_id();
    bob.request(col_id).await.unwrap();
    bob.request(nowhere).await.unwrap();
    bob.settle(QUIET).await.unwrap();
    assert!(
        bob.unavailable.contains(&col_id) && bob.unavailable.contains(&nowhere),
        "{:?}",
        bob.unavailable
    );
    assert!(
        bob.docs[&col_id].get_heads().is_empty(),
        "bob received alice's collection"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_change_is_refused_quarantined_and_the_connection_keeps_working() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let (bob, _) = server.enroll(&c.id, "canvasser");
    let mut phone = Peer::connect(&server.ws(), &token).await.unwrap();

    // A collection claiming to be Bob's, pushed by Alice.
    let forged = collection::create(&c.id, &bob).unwrap();
    let forged_id = new_id();
    phone.push(forged_id, forged).await.unwrap();
    // A collection of her own with a signature collected "by Bob".
    let mut doc = collection::create(&c.id, &alice).unwrap();
    let mut sig = c
        .world
        .signature(&alice, "s1", "Amara Okafor", "M5V 2T6", "Toronto");
    collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    let good_id = new_id();
    phone.push(good_id, doc.fork()).await.unwrap();
    phone.settle(QUIET).await.unwrap();
    assert_eq!(phone.errors.len(), 1, "{:?}", phone.errors);
    assert!(phone.errors[0].contains("owner"), "{}", phone.errors[0]);
    assert!(phone.acknowledged(&good_id));

    // Now a bad edit to her own collection: deleting a record.
    let mut bad = phone.docs[&good_id].fork();
    {
        use automerge::transaction::Transactable;
        use automerge::{ROOT, ReadDoc};
        let mut tx = bad.transaction();
        let (_, sigs) = tx.get(ROOT, "signatures").unwrap().unwrap();
        tx.delete(&sigs, "s1").unwrap();
        tx.commit();
    }
    phone.docs.insert(good_id, bad);
    phone.sync(good_id).await.unwrap();
    phone.settle(QUIET).await.unwrap();
    assert_eq!(phone.errors.len(), 2, "{:?}", phone.errors);
    assert!(phone.errors[1].contains("deleted"), "{}", phone.errors[1]);
    assert!(!phone.closed);

    // The connection still syncs her other documents.
    let mut second = collection::create(&c.id, &alice).unwrap();
    sig.id = "s2".into();
    collection::add_signature(&mut second, &sig, &c.world.campaign).unwrap();
    let second_id = new_id();
    phone.push(second_id, second).await.unwrap();
    phone
        .until_acknowledged(&[second_id], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(phone.acknowledged(&second_id));
    assert_eq!(phone.errors.len(), 2);

    // Stored: both good collections with one signature each; nothing of the forged one.
    let t = server.totals(&c.id);
    assert_eq!(t["signatures"].as_u64(), Some(2), "{t}");
    let store = tally_store::Store::open(&server.db()).unwrap();
    assert!(store.doc_meta(&forged_id.to_string()).unwrap().is_none());
    assert_eq!(quarantine_count(&server), 2);
    let fresh = Peer::connect(&server.ws(), &token).await;
    let mut fresh = fresh.unwrap();
    fresh.request(good_id).await.unwrap();
    fresh.settle(QUIET).await.unwrap();
    assert_eq!(
        collection::read(&fresh.docs[&good_id])
            .unwrap()
            .signatures
            .len(),
        1,
        "the deletion leaked into the stored document"
    );
    drop(doc);
    let _ = Automerge::new();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_compacted_in_the_background() {
    let server = TestServer::start_with(|cfg| cfg.compact_after_chunks = 4).await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let mut phone = Peer::connect(&server.ws(), &token).await.unwrap();
    let id = new_id();
    let mut doc = collection::create(&c.id, &alice).unwrap();
    phone.push(id, doc.fork()).await.unwrap();
    phone.settle(QUIET).await.unwrap();
    // Ten writes, each its own chunk, each acknowledged.
    for i in 0..10 {
        let sig = c.world.signature(
            &alice,
            &format!("s{i}"),
            &format!("Signer {i}"),
            "M5V 2T6",
            "Toronto",
        );
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
        phone.docs.insert(id, doc.fork());
        phone.sync(id).await.unwrap();
        phone
            .until_acknowledged(&[id], Duration::from_secs(30))
            .await
            .unwrap();
        assert!(phone.acknowledged(&id), "write {i} not acknowledged");
    }
    // The background task folds the chunks into a snapshot within a couple of seconds.
    let store = tally_store::Store::open(&server.db()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = store.chunks_since_snapshot(&id.to_string()).unwrap();
    while stats.count >= 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stats = store.chunks_since_snapshot(&id.to_string()).unwrap();
    }
    assert!(stats.count < 4, "not compacted: {stats:?}");
    assert!(stats.snapshot_bytes > 0, "no snapshot written: {stats:?}");
    // The compacted document holds everything.
    let bytes = store
        .load_document(&id.to_string())
        .unwrap()
        .expect("stored");
    let mut stored = Automerge::new();
    for chunk in bytes.snapshot.into_iter().chain(bytes.incremental) {
        stored.load_incremental(&chunk).unwrap();
    }
    assert_eq!(collection::read(&stored).unwrap().signatures.len(), 10);
    server.stop().await;
}
