//! Interoperability with automerge-repo clients nobody here wrote, as one suite of scenarios
//! played by two peers: the JavaScript client (npm `@automerge/automerge-repo` 2.5.x, run by node
//! from `tests/js/client.mjs`, [`js`]) and samod (crates.io `samod` 0.16, the Rust automerge-repo,
//! in-process, [`samod`]). Each scenario is a function generic over [`Client`]; [`suite!`] makes
//! one named test per (peer, scenario), so `interop::js::bad_change_is_refused_...` names both.
//!
//! A peer connects with a canvasser's token, reads the campaign by URL, pushes a valid
//! collection that the server stores and counts, follows the chain rules, and pushes bad changes
//! that the server refuses, quarantines and stores nothing of. Documents cross between
//! tally_core's automerge and a peer by bytes (`save` / `load` / `save_after`), never by types.
//!
//! node and the packages are required, not optional: CI installs them (`scripts/test` runs
//! `npm ci` in tests/js), so a missing install fails the JS tests with instructions.

use automerge::{Automerge, ReadDoc};
use serde_json::Value;
use tally_core::collection;
use tally_tests::server::Server;
use tally_tests::{Campaign, TestServer, new_id};

/// Makes one test per scenario for the peer `$client` in the module that calls it.
macro_rules! suite {
    ($client:ty) => {
        suite!($client;
            reads_the_campaign_and_totals_by_url,
            a_wrong_token_never_gets_to_sync,
            pushes_a_collection_and_the_server_counts_it,
            follows_the_chain_rules_and_each_record_counts_once,
            bad_change_is_refused_and_nothing_of_it_is_stored,
            cannot_create_a_collection_for_another_canvasser,
        );
    };
    ($client:ty; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario::<$client>().await
            }
        )*
    };
}

mod js;
mod samod;

/// Why a client's step did not succeed.
#[derive(Debug)]
pub enum Refusal {
    /// The server sent an `error` message: its text, as the client reported it.
    Error(String),
    /// The server does not have the document (or will not say it has).
    Unavailable,
    /// Anything else, e.g. a connection refused before sync: what the client said.
    Failed(String),
}

impl Refusal {
    /// The text of the server's `error` message; panics on any other outcome.
    fn error(self) -> String {
        match self {
            Refusal::Error(message) => message,
            other => panic!("expected the server's `error` message, got {other:?}"),
        }
    }
}

/// A document as a peer read it.
pub struct Read {
    /// The document as the peer shows it to its application, as JSON.
    pub json: Value,
    /// The document's bytes as the peer saved them, loaded into tally_core's automerge.
    pub doc: Automerge,
}

/// An automerge-repo client connected to the server as one device.
pub trait Client: Sized {
    /// Connects as the device holding `token`. A refused connection is an `Err` here or at the
    /// client's first step (the JS client runs each step as its own process).
    async fn connect(server: &TestServer, token: &str) -> Result<Self, Refusal>;
    /// Finds the document at `url` (`automerge:ID`) on the server and reads it.
    async fn read(&mut self, url: &str) -> Result<Read, Refusal>;
    /// Creates `doc` as a new document and waits until the server acknowledges every change of
    /// it. Returns the new document's id in either case.
    async fn create(&mut self, doc: &Automerge) -> (String, Result<(), Refusal>);
    /// Applies `change` (`save_after` bytes) to the document `doc_id`, which the server holds, and
    /// waits until the server acknowledges it.
    async fn change(&mut self, doc_id: &str, change: &[u8]) -> Result<(), Refusal>;
    /// Whether the client's connection to the server is still open after its steps, where the
    /// client has one connection that lasts (`None` for the JS client: each step is its own run,
    /// which fails if the server closes its connection).
    fn connected(&self) -> Option<bool>;
    /// Disconnects and stops the client.
    async fn stop(self);
}

/// Connects, panicking if the server refuses.
async fn connect<C: Client>(server: &TestServer, token: &str) -> C {
    match C::connect(server, token).await {
        Ok(c) => c,
        Err(e) => panic!("the client could not connect: {e:?}"),
    }
}

/// The document as the server stored it, from the SQLite file.
fn stored(server: &TestServer, doc_id: &str) -> Option<Automerge> {
    let store = tally_store::Store::open(&server.db()).expect("open db");
    let d = store.load_document(doc_id).expect("load document")?;
    let mut doc = match &d.snapshot {
        Some(s) => Automerge::load(s).expect("snapshot loads"),
        None => Automerge::new(),
    };
    for chunk in &d.incremental {
        doc.load_incremental(chunk).expect("chunk loads");
    }
    Some(doc)
}

/// A new collection owned by `owner` with one signature per (id, name, postal, city).
fn collection_doc(c: &Campaign, owner: &str, sigs: &[(&str, &str, &str, &str)]) -> Automerge {
    let mut doc = collection::create(&c.id, owner).unwrap();
    for (id, name, postal, city) in sigs {
        let sig = c.world.signature(owner, id, name, postal, city);
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    }
    doc
}

/// The two signatures every scenario's first collection holds.
const TWO: &[(&str, &str, &str, &str)] = &[
    ("s1", "Amara Okafor", "M5V 2T6", "Toronto"),
    ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
];

fn signatures(t: &Value) -> Option<u64> {
    t["signatures"].as_u64()
}

fn quarantine(server: &TestServer, doc_id: Option<&str>) -> Vec<tally_store::QuarantineEntry> {
    tally_store::Store::open(&server.db())
        .unwrap()
        .list_quarantine(&tally_store::QuarantineFilter {
            doc_id: doc_id.map(str::to_string),
            ..Default::default()
        })
        .unwrap()
}

/// Creates `doc` through the client, panicking if the server refuses it.
async fn create_ok<C: Client>(client: &mut C, doc: &Automerge) -> String {
    let (doc_id, result) = client.create(doc).await;
    if let Err(e) = result {
        panic!("the server refused the new document {doc_id}: {e:?}");
    }
    doc_id
}

async fn reads_the_campaign_and_totals_by_url<C: Client>() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (_, token) = server.enroll(&c.id, "canvasser");
    let mut client: C = connect(&server, &token).await;

    let read = client
        .read(&format!("automerge:{}", c.id))
        .await
        .expect("the campaign reads");
    // As the client shows it to its application...
    let json = &read.json;
    assert_eq!(json["kind"], "campaign", "{json}");
    assert_eq!(json["campaign"], c.id.as_str(), "{json}");
    assert_eq!(json["title"], c.world.campaign.title.as_str(), "{json}");
    assert_eq!(
        json["petition"],
        c.world.campaign.petition.as_str(),
        "{json}"
    );
    let ev = &c.world.campaign.events[tally_core::fixtures::EVENT];
    let events = json["events"].as_object().expect("an events map");
    assert_eq!(events.len(), 1, "{json}");
    let js_ev = &events[&ev.id];
    assert_eq!(
        (&js_ev["name"], &js_ev["city"], js_ev["starts_at"].as_i64()),
        (
            &Value::from(ev.name.as_str()),
            &Value::from(ev.city.as_str()),
            Some(ev.starts_at)
        ),
        "{json}"
    );
    // ...and as tally reads the bytes the client saved.
    let campaign = tally_core::campaign::read(&read.doc).expect("a valid campaign");
    assert_eq!(campaign.id, c.id);
    assert_eq!(campaign.title, c.world.campaign.title);
    assert_eq!(campaign.petition, c.world.campaign.petition);
    assert_eq!(campaign.events.len(), 1, "{:?}", campaign.events);
    assert_eq!(&campaign.events[&ev.id], ev);

    // The totals document, by the URL the API gave.
    let totals = client.read(&c.totals_url).await.expect("the totals read");
    assert_eq!(totals.json["kind"], "totals", "{}", totals.json);
    assert!(tally_core::totals_doc::read(&totals.doc).is_ok());

    // A document nobody has: the client is told it is unavailable.
    let nowhere = new_id();
    match client.read(&format!("automerge:{nowhere}")).await {
        Err(Refusal::Unavailable) => {}
        Err(other) => panic!("expected `unavailable`, got {other:?}"),
        Ok(read) => panic!("a document nobody has was read: {}", read.json),
    }

    client.stop().await;
    server.stop().await;
}

async fn a_wrong_token_never_gets_to_sync<C: Client>() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let refusal = match C::connect(&server, "not-a-token").await {
        Err(refusal) => refusal,
        Ok(mut client) => {
            let refusal = match client.read(&format!("automerge:{}", c.id)).await {
                Err(refusal) => refusal,
                Ok(read) => panic!("a wrong token read the campaign: {}", read.json),
            };
            client.stop().await;
            refusal
        }
    };
    match refusal {
        Refusal::Failed(said) => assert!(said.contains("401"), "{said}"),
        other => panic!("expected the upgrade refused with 401, got {other:?}"),
    }
    server.stop().await;
}

async fn pushes_a_collection_and_the_server_counts_it<C: Client>() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let mut client: C = connect(&server, &token).await;

    let doc = collection_doc(&c, &alice, TWO);
    let doc_id = create_ok(&mut client, &doc).await;

    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["unique_signers"].as_u64()),
        (Some(2), Some(2)),
        "{t}"
    );
    let meta = tally_store::Store::open(&server.db())
        .unwrap()
        .doc_meta(&doc_id)
        .unwrap()
        .expect("the server stored the client's document");
    assert_eq!(
        (meta.kind.as_str(), meta.owner.as_deref()),
        ("collection", Some(alice.as_str()))
    );
    let on_server = stored(&server, &doc_id).expect("stored");
    assert_eq!(on_server.get_heads(), doc.get_heads());

    // A further signature, applied by the client to the document the server holds.
    let mut more = on_server.clone();
    let heads = more.get_heads();
    let sig = c
        .world
        .signature(&alice, "s3", "Sam Tesfaye", "H2X 1Y4", "Montréal");
    collection::add_signature(&mut more, &sig, &c.world.campaign).unwrap();
    let change = more.save_after(&heads);
    client
        .change(&doc_id, &change)
        .await
        .expect("the server takes the change");
    let t = server.totals(&c.id);
    assert_eq!(signatures(&t), Some(3), "{t}");
    assert_eq!(
        stored(&server, &doc_id).expect("stored").get_heads(),
        more.get_heads()
    );
    assert_ne!(
        client.connected(),
        Some(false),
        "the server dropped the client"
    );

    client.stop().await;
    server.stop().await;
}

/// A client following the chain rules of docs/documents.md ("A chain of collections"): its
/// second collection names the first in `continues` and carries again, with the same id, a
/// record whose acknowledgement it never heard, beside a new one, and that record's withdrawal
/// rides in a third. Each record id counts once; the withdrawn one does not count.
async fn follows_the_chain_rules_and_each_record_counts_once<C: Client>() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let mut client: C = connect(&server, &token).await;

    let first_id = create_ok(&mut client, &collection_doc(&c, &alice, TWO)).await;

    // The next collection of the chain: s2 again (same id, same fields), and s3.
    let mut second = collection::create_continuing(&c.id, &alice, &first_id).unwrap();
    for (id, name, postal, city) in [
        ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ("s3", "Sam Tesfaye", "H2X 1Y4", "Montréal"),
    ] {
        let sig = c.world.signature(&alice, id, name, postal, city);
        collection::add_signature(&mut second, &sig, &c.world.campaign).unwrap();
    }
    let second_id = create_ok(&mut client, &second).await;
    let header = tally_core::DocHeader::read(&stored(&server, &second_id).unwrap()).unwrap();
    assert_eq!(header.continues.as_deref(), Some(first_id.as_str()));
    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["unique_signers"].as_u64()),
        (Some(3), Some(3)),
        "s2 counts once: {t}"
    );

    // A third collection withdraws s1 by a withdrawn copy (a record is withdrawn if any copy
    // is).
    let mut third = collection::create_continuing(&c.id, &alice, &second_id).unwrap();
    let mut s1 = c
        .world
        .signature(&alice, "s1", "Amara Okafor", "M5V 2T6", "Toronto");
    s1.withdrawn = true;
    collection::add_signature(&mut third, &s1, &c.world.campaign).unwrap();
    create_ok(&mut client, &third).await;
    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["withdrawn"].as_u64()),
        (Some(2), Some(1)),
        "{t}"
    );
    client.stop().await;

    // Another canvasser cannot reuse those ids, not even to withdraw them.
    let (bob, bob_token) = server.enroll(&c.id, "canvasser");
    let mut bobs: C = connect(&server, &bob_token).await;
    let mut theirs = collection::create(&c.id, &bob).unwrap();
    let mut stolen = c
        .world
        .signature(&bob, "s3", "Sam Tesfaye", "H2X 1Y4", "Montréal");
    stolen.withdrawn = true;
    collection::add_signature(&mut theirs, &stolen, &c.world.campaign).unwrap();
    let (stolen_id, result) = bobs.create(&theirs).await;
    let message = result.expect_err("the server took a reused id").error();
    assert!(message.contains(&stolen_id), "{message}");
    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["withdrawn"].as_u64()),
        (Some(2), Some(1)),
        "{t}"
    );

    bobs.stop().await;
    server.stop().await;
}

async fn bad_change_is_refused_and_nothing_of_it_is_stored<C: Client>() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let mut client: C = connect(&server, &token).await;
    let doc = collection_doc(&c, &alice, TWO);
    let doc_id = create_ok(&mut client, &doc).await;
    assert_eq!(signatures(&server.totals(&c.id)), Some(2));

    // Delete signature s1 from her own collection (not allowed: withdraw instead).
    let deletion = {
        use automerge::ROOT;
        use automerge::transaction::Transactable;
        let mut d = stored(&server, &doc_id).expect("stored");
        let heads = d.get_heads();
        let mut tx = d.transaction();
        let (_, sigs) = tx.get(ROOT, "signatures").unwrap().unwrap();
        tx.delete(&sigs, "s1").unwrap();
        tx.commit();
        d.save_after(&heads)
    };
    let message = client
        .change(&doc_id, &deletion)
        .await
        .expect_err("the server took a deletion")
        .error();
    assert!(
        message.contains(&doc_id) && message.contains("deleted"),
        "the server's error: {message}"
    );
    client.stop().await;

    // Nothing of it is stored: totals, the stored document, and the quarantine row.
    assert_eq!(signatures(&server.totals(&c.id)), Some(2));
    let on_server = stored(&server, &doc_id).expect("stored");
    assert_eq!(on_server.get_heads(), doc.get_heads());
    let col = collection::read(&on_server).expect("stored collection reads");
    assert!(
        col.signatures.contains_key("s1") && col.signatures.len() == 2,
        "the deletion leaked into the stored document: {:?}",
        col.signatures.keys().collect::<Vec<_>>()
    );
    let q = quarantine(&server, Some(&doc_id));
    assert_eq!(
        q.len(),
        1,
        "{:?}",
        q.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert_eq!(q[0].device_id, alice);
    assert!(q[0].reason.contains("deleted"), "{}", q[0].reason);

    server.stop().await;
}

async fn cannot_create_a_collection_for_another_canvasser<C: Client>() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (_alice, token) = server.enroll(&c.id, "canvasser");
    let (bob, _) = server.enroll(&c.id, "canvasser");
    let mut client: C = connect(&server, &token).await;

    let forged = collection_doc(&c, &bob, &[("s1", "Amara Okafor", "M5V 2T6", "Toronto")]);
    let (doc_id, result) = client.create(&forged).await;
    let message = result.expect_err("the server took a forged owner").error();
    assert!(
        message.contains(&doc_id) && message.contains("owner"),
        "the server's error: {message}"
    );
    client.stop().await;

    assert_eq!(signatures(&server.totals(&c.id)), Some(0));
    let store = tally_store::Store::open(&server.db()).unwrap();
    assert!(
        store.doc_meta(&doc_id).unwrap().is_none(),
        "the forged collection was stored"
    );
    let q = quarantine(&server, None);
    assert_eq!(
        q.len(),
        1,
        "{:?}",
        q.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert_eq!(q[0].doc_id, doc_id);

    server.stop().await;
}
