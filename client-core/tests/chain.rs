//! The phone's chain of collections against the in-process server of `common`: roll-over at a
//! bound, a refused record set aside while the others move on (same ids), a refusal naming no
//! record, a withdrawal of a record in an older collection, enrolling again in the same home,
//! and a version-2 file migrating. Every record reaches the server exactly once per id.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{TestServer, form, ready, response, sync};
use tally_client::{Device, DocState, EnrollPayload};
use tally_core::collection;
use tally_core::fixtures::World;
use tally_core::{DocHeader, DocKind};
use tally_proto::DocumentId;

/// Every signature on the server, by record id: (copies, withdrawn in any copy).
fn server_signatures(server: &TestServer) -> BTreeMap<String, (usize, bool)> {
    let mut out: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for doc in server.docs.values() {
        if !DocHeader::read(doc).is_ok_and(|h| h.kind == DocKind::Collection) {
            continue;
        }
        let c = collection::read(doc).unwrap();
        for (id, sig) in &c.signatures {
            let e = out.entry(id.clone()).or_default();
            e.0 += 1;
            e.1 |= sig.withdrawn;
        }
    }
    out
}

/// The server's collections, by document id: (header, signatures).
fn server_collections(server: &TestServer) -> BTreeMap<DocumentId, (DocHeader, usize)> {
    server
        .docs
        .iter()
        .filter_map(|(id, doc)| {
            let h = DocHeader::read(doc).ok()?;
            (h.kind == DocKind::Collection)
                .then(|| (*id, (h, collection::read(doc).unwrap().signatures.len())))
        })
        .collect()
}

fn sign_n(device: &Device, n: usize, from: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            device
                .sign(&form(&format!("Signer {i}"), "M5V 2T6", "Toronto"))
                .unwrap()
                .record_id
        })
        .collect()
}

#[test]
fn the_phone_rolls_over_at_its_bound_and_every_collection_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    device.set_roll_over_at(3).unwrap();
    let ids = sign_n(&device, 10, 0);
    let status = device.status().unwrap();
    assert_eq!(status.collections.len(), 4, "3 + 3 + 3 + 1");
    assert_eq!(status.collection_records, 1);
    let states: Vec<DocState> = status.collections.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            DocState::Closed,
            DocState::Closed,
            DocState::Closed,
            DocState::Current
        ]
    );
    assert_eq!(status.counts.signatures_pending, 10);

    let mut server = TestServer::with_campaign(&world);
    let engine = sync(&device, &mut server);
    let report = engine.report().unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(device.counts().unwrap().signatures_acknowledged, 10);
    let on_server = server_signatures(&server);
    assert_eq!(on_server.len(), 10);
    assert!(ids.iter().all(|id| on_server[id] == (1, false)));
    // Each collection after the first names the one before it.
    let collections = server_collections(&server);
    assert_eq!(collections.len(), 4);
    let chain: Vec<String> = status.collections.iter().map(|c| c.url.clone()).collect();
    for pair in chain.windows(2) {
        let next = DocumentId::from_url(&pair[1]).unwrap();
        let prev = DocumentId::from_url(&pair[0]).unwrap();
        assert_eq!(
            collections[&next].0.continues.as_deref(),
            Some(prev.to_string().as_str())
        );
    }
    // The next sync pushes only the current collection: the closed ones are all acknowledged.
    let again = sync(&device, &mut server);
    assert!(again.report().unwrap().complete);
    let more = sign_n(&device, 1, 10);
    sync(&device, &mut server);
    assert_eq!(server_signatures(&server)[&more[0]], (1, false));
}

#[test]
fn a_refused_record_is_set_aside_and_the_others_move_on() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let ids = sign_n(&device, 50, 0);
    let bad = ids[19].clone();
    device.withdraw(&ids[30]).unwrap();
    let mut server = TestServer::with_campaign(&world);
    server.refused_records.insert(bad.clone());

    let engine = sync(&device, &mut server);
    let report = engine.report().unwrap();
    assert_eq!(report.refusals.len(), 1, "{report:?}");
    assert_eq!(report.set_aside, 1);
    assert_eq!(report.moved, 50, "49 signatures and 1 withdrawal");
    assert!(report.complete, "{report:?}");
    let counts = device.counts().unwrap();
    assert_eq!(counts.signatures_acknowledged, 49);
    assert_eq!(counts.withdrawals_acknowledged, 1);
    assert_eq!(counts.signatures_refused, 1);
    assert_eq!(counts.pending_total(), 0);

    let status = device.status().unwrap();
    assert_eq!(status.refused.len(), 1);
    assert_eq!(status.refused[0].record_id, bad);
    assert!(
        status.refused[0]
            .refusal
            .as_deref()
            .unwrap()
            .contains("a test rule")
    );
    assert!(
        status.summary.contains("refused by the server"),
        "{}",
        status.summary
    );
    let states: Vec<DocState> = status.collections.iter().map(|c| c.state).collect();
    assert_eq!(states, [DocState::Refused, DocState::Current]);

    let on_server = server_signatures(&server);
    assert!(!on_server.contains_key(&bad));
    assert_eq!(on_server.len(), 49);
    assert_eq!(on_server[&ids[30]], (1, true), "the withdrawal moved too");
    for id in ids.iter().filter(|id| **id != bad) {
        assert_eq!(on_server[id].0, 1, "{id} once");
    }

    // The phone goes on: its next ten signatures reach the server.
    let next = sign_n(&device, 10, 50);
    let engine = sync(&device, &mut server);
    assert!(engine.report().unwrap().complete);
    let on_server = server_signatures(&server);
    assert!(next.iter().all(|id| on_server.contains_key(id)));
    assert_eq!(device.counts().unwrap().signatures_acknowledged, 59);
    // Withdrawing the refused record is refused, saying why.
    let e = device.withdraw(&bad).unwrap_err();
    assert!(e.to_string().contains("refused by the server"), "{e}");
}

#[test]
fn a_refusal_naming_no_record_moves_everything_once_then_sets_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    sign_n(&device, 5, 0);
    let mut server = TestServer::with_campaign(&world);
    // The first collection is taken; every later one is refused, naming no record.
    server.refuse_unnamed_after = Some(1);
    sync(&device, &mut server);
    assert_eq!(device.counts().unwrap().signatures_acknowledged, 5);
    // The next signature rolls over to a collection the server refuses.
    device.set_roll_over_at(5).unwrap();
    let last = sign_n(&device, 1, 5);
    let engine = sync(&device, &mut server);
    let report = engine.report().unwrap();
    assert!(!report.refusals.is_empty(), "{report:?}");
    let counts = device.counts().unwrap();
    // The refused collection's record moved once, was refused again without a name, and is
    // now set aside rather than moved without end.
    assert_eq!(counts.signatures_refused, 1, "{counts:?}");
    assert_eq!(counts.signatures_pending, 0, "{counts:?}");
    let status = device.status().unwrap();
    assert!(status.collections.len() <= 4, "{:?}", status.collections);
    assert_eq!(status.refused[0].record_id, last[0]);
    assert!(
        status.collections.len() <= 4,
        "the chain stops growing: {:?}",
        status.collections
    );
}

#[test]
fn withdrawing_a_record_of_an_older_collection_writes_a_withdrawn_copy() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    device.set_roll_over_at(2).unwrap();
    let ids = sign_n(&device, 5, 0);
    let mut server = TestServer::with_campaign(&world);
    sync(&device, &mut server);
    device.withdraw(&ids[0]).unwrap();
    assert!(matches!(
        device.withdraw(&ids[0]),
        Err(tally_client::ClientError::AlreadyWithdrawn(_))
    ));
    sync(&device, &mut server);
    let on_server = server_signatures(&server);
    assert_eq!(
        on_server[&ids[0]],
        (2, true),
        "the original and a withdrawn copy"
    );
    assert_eq!(device.counts().unwrap().withdrawals_acknowledged, 1);
    // Counted once, as withdrawn (the reference totals).
    let collections: Vec<_> = server
        .docs
        .values()
        .filter(|d| DocHeader::read(d).is_ok_and(|h| h.kind == DocKind::Collection))
        .map(|d| collection::read(d).unwrap())
        .collect();
    let totals = tally_core::totals::totals(
        &world.campaign,
        &collections,
        &tally_core::review::Review::default(),
    );
    assert_eq!(totals.signatures, 4, "{totals:?}");
    assert_eq!(totals.withdrawn, 1, "{totals:?}");
}

#[test]
fn enrolling_again_in_the_same_home_keeps_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let acked = sign_n(&device, 2, 0);
    let mut server = TestServer::with_campaign(&world);
    sync(&device, &mut server);
    // Revoked: five more taken offline, then a new code for the same campaign.
    let waiting = sign_n(&device, 5, 2);
    device.withdraw(&waiting[4]).unwrap();
    let payload = EnrollPayload::parse(&common::payload_json("http://127.0.0.1:9")).unwrap();
    let mut answer = response("dev2");
    answer.replaces = Some("dev1".into());
    let info = device
        .complete_enrollment(&payload, &answer, "test phone")
        .unwrap();
    assert_eq!(info.device_id, "dev2");
    let status = device.status().unwrap();
    let states: Vec<DocState> = status.collections.iter().map(|c| c.state).collect();
    assert_eq!(states, [DocState::Retired, DocState::Current]);
    assert_eq!(status.counts.signatures_pending, 5);
    assert_eq!(status.counts.withdrawals_pending, 1);
    assert_eq!(status.collection_records, 5);

    sync(&device, &mut server);
    let on_server = server_signatures(&server);
    assert_eq!(on_server.len(), 7);
    for id in &acked {
        assert_eq!(on_server[id], (1, false));
    }
    for id in &waiting {
        assert_eq!(on_server[id].0, 1, "{id} is only in the new collection");
    }
    assert!(on_server[&waiting[4]].1);
    // The new collection is dev2's and continues dev1's.
    let collections = server_collections(&server);
    let new = collections
        .values()
        .find(|(h, _)| h.owner.as_deref() == Some("dev2"))
        .expect("dev2's collection");
    assert!(new.0.continues.is_some());
    let c = device.counts().unwrap();
    assert_eq!((c.signatures_acknowledged, c.pending_total()), (7, 0));
    // Another campaign's code is refused: that needs another home.
    let other = common::payload_json("http://127.0.0.1:9").replace(
        &common::campaign_doc_id().to_url(),
        &DocumentId::from_bytes([9; 16]).to_url(),
    );
    let mut elsewhere = response("dev3");
    elsewhere.campaign_url = DocumentId::from_bytes([9; 16]).to_url();
    let e = device
        .complete_enrollment(&EnrollPayload::parse(&other).unwrap(), &elsewhere, "x")
        .unwrap_err();
    assert!(e.to_string().contains("another home"), "{e}");
}

/// A phone's file from the previous build (schema 2: one collection, no chain) opens, keeps
/// its records and receipts, and goes on to roll over.
#[test]
fn a_version_2_file_migrates_to_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let ids = sign_n(&device, 3, 0);
    let path = device.database_path();
    drop(device);
    // Turn the file back into schema 2 by hand: documents with one row per role, receipts
    // without their collection or refusal.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         BEGIN;
         CREATE TABLE documents_2 (
             doc_id TEXT PRIMARY KEY,
             role TEXT NOT NULL UNIQUE CHECK (role IN ('collection', 'campaign', 'totals')),
             server_heads TEXT NOT NULL DEFAULT '[]',
             sync_state BLOB,
             updated_at INTEGER NOT NULL
         ) STRICT;
         INSERT INTO documents_2 SELECT doc_id, role, server_heads, sync_state, updated_at FROM documents;
         DROP TABLE documents;
         ALTER TABLE documents_2 RENAME TO documents;
         DROP TRIGGER receipts_counted_insert;
         DROP TRIGGER receipts_counted_delete;
         DROP TRIGGER receipts_counted_update;
         DROP TABLE receipt_counts;
         DROP INDEX receipts_by_doc;
         ALTER TABLE receipts DROP COLUMN doc_id;
         ALTER TABLE receipts DROP COLUMN refused_at;
         ALTER TABLE receipts DROP COLUMN refusal;
         CREATE TABLE receipt_counts (kind TEXT NOT NULL, acknowledged INTEGER NOT NULL, n INTEGER NOT NULL,
             PRIMARY KEY (kind, acknowledged)) STRICT, WITHOUT ROWID;
         INSERT INTO receipt_counts VALUES ('signature', 0, 3);
         PRAGMA user_version = 2;
         COMMIT;",
    )
    .unwrap();
    drop(conn);
    let device = Device::open(dir.path()).unwrap();
    let status = device.status().unwrap();
    assert_eq!(status.counts.signatures_pending, 3);
    assert_eq!(status.collections.len(), 1);
    assert_eq!(status.collections[0].state, DocState::Current);
    assert!(status.pending.iter().all(|r| r.doc_id.is_some()));
    device.set_roll_over_at(3).unwrap();
    let more = sign_n(&device, 1, 3);
    assert_eq!(device.status().unwrap().collections.len(), 2);
    let mut server = TestServer::with_campaign(&world);
    sync(&device, &mut server);
    let on_server: BTreeSet<String> = server_signatures(&server).into_keys().collect();
    assert!(ids.iter().chain(&more).all(|id| on_server.contains(id)));
    assert_eq!(device.counts().unwrap().signatures_acknowledged, 4);
}
