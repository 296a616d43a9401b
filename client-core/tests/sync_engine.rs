//! The phone's sans-IO sync engine against the in-process server of `common`: what is
//! acknowledged, what is refused or withheld, and an exchange cut off after every possible
//! number of frames. A receipt is acknowledged only when the server really holds its change.

mod common;

use std::collections::HashSet;

use automerge::ChangeHash;
use common::{TestServer, collection_id, form, ready, run, sync};
use tally_client::{Device, DocRole};
use tally_core::collection;
use tally_core::fixtures::World;

/// Change hashes of the receipts the phone counts as acknowledged.
fn acknowledged(device: &Device) -> Vec<ChangeHash> {
    device
        .receipts()
        .unwrap()
        .into_iter()
        .filter(|r| r.acknowledged)
        .map(|r| {
            let bytes: [u8; 32] = hex::decode(&r.change_hash).unwrap().try_into().unwrap();
            ChangeHash(bytes)
        })
        .collect()
}

/// Every acknowledged receipt's change is in the server's copy of the collection.
#[track_caller]
fn acks_are_true(device: &Device, server: &TestServer) {
    let acked = acknowledged(device);
    if acked.is_empty() {
        return;
    }
    let doc = server
        .docs
        .get(&collection_id(device))
        .expect("acknowledged before the server had the collection");
    for h in acked {
        assert!(
            doc.get_change_meta_by_hash(&h).is_some(),
            "receipt {h} acknowledged but the server does not have it"
        );
    }
}

#[test]
fn a_sync_acknowledges_what_the_server_holds() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    for (name, postal) in [("Amara Okafor", "M5V 2T6"), ("Jean Tremblay", "H2X 1Y4")] {
        device.sign(&form(name, postal, "Toronto")).unwrap();
    }
    assert_eq!(device.counts().unwrap().signatures_pending, 2);
    let mut server = TestServer::with_campaign(&world);
    let engine = sync(&device, &mut server);
    assert!(engine.is_settled().unwrap());
    let report = engine.report().unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.acknowledged.signatures, 2);
    assert!(report.totals_updated);
    assert_eq!(
        report.summary().matches("2 signatures newly safe").count(),
        1
    );
    let counts = device.counts().unwrap();
    assert_eq!(
        (counts.signatures_pending, counts.signatures_acknowledged),
        (0, 2)
    );
    acks_are_true(&device, &server);
    let on_server = collection::read(&server.docs[&collection_id(&device)]).unwrap();
    assert_eq!(on_server.signatures.len(), 2);
    // The acknowledged plaintext is gone from the phone; the team totals are there offline.
    assert!(
        device
            .receipts()
            .unwrap()
            .iter()
            .all(|r| r.details.is_none())
    );
    assert_eq!(device.totals().unwrap().unwrap().totals.signatures, 41);
}

#[test]
fn a_refused_change_stays_pending_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    device
        .sign(&form("Amara Okafor", "M5V 2T6", "Toronto"))
        .unwrap();
    let mut server = TestServer::with_campaign(&world);
    server.frozen.insert(collection_id(&device));
    server.hidden.insert(common::totals_doc_id());
    let engine = sync(&device, &mut server);
    let report = engine.report().unwrap();
    assert!(!report.complete, "{report:?}");
    assert_eq!(report.server_errors.len(), 1, "{report:?}");
    assert!(report.server_errors[0].contains("test refusal"));
    assert_eq!(report.unavailable, vec![DocRole::Totals]);
    assert!(report.summary().contains("server refused"));
    assert_eq!(device.counts().unwrap().signatures_pending, 1);
    assert!(acknowledged(&device).is_empty());
    // Once the server takes it, the same phone settles.
    server.frozen.clear();
    let engine = sync(&device, &mut server);
    assert!(engine.report().unwrap().complete);
    assert_eq!(device.counts().unwrap().signatures_pending, 0);
    acks_are_true(&device, &server);
}

/// The exchange cut off after 1, 2, 3, ... frames, each time on a new connection, while the
/// canvasser keeps signing: no receipt is ever acknowledged before the server holds its
/// change, and a full sync at the end leaves nothing pending and everything on the server.
#[test]
fn cut_after_every_number_of_frames() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let mut server = TestServer::with_campaign(&world);
    let mut signed = HashSet::new();
    let mut cut_short = 0;
    // A whole exchange takes about a dozen frames: cut after 1 to 12 of them, twice over.
    for round in 0..24 {
        let limit = round % 12 + 1;
        let r = device
            .sign(&form(&format!("Signer {round}"), "M5V 2T6", "Toronto"))
            .unwrap();
        signed.insert(r.record_id);
        server.reconnect();
        let (mut engine, join) = tally_client::SyncEngine::start(&device).unwrap();
        let delivered = run(&mut engine, &mut server, join, limit);
        if delivered == limit {
            cut_short += 1;
        }
        acks_are_true(&device, &server);
        // A phone reopened from its file after the cut sees the same.
        let reopened = Device::open(dir.path()).unwrap();
        assert_eq!(
            reopened.counts().unwrap(),
            device.counts().unwrap(),
            "the file and memory disagree after a cut at {limit} frames"
        );
    }
    assert!(cut_short >= 16, "only {cut_short} exchanges were cut short");
    let engine = sync(&device, &mut server);
    assert!(engine.report().unwrap().complete);
    let counts = device.counts().unwrap();
    assert_eq!(counts.signatures_pending, 0);
    assert_eq!(counts.signatures_acknowledged, signed.len() as u64);
    let on_server = collection::read(&server.docs[&collection_id(&device)]).unwrap();
    let ids: HashSet<String> = on_server.signatures.into_keys().collect();
    assert_eq!(ids, signed);
}
