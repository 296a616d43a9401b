//! Interoperability with samod (crates.io `samod` 0.16, the Rust automerge-repo), a client nobody
//! here wrote: it connects with a canvasser's token, reads the campaign by URL, pushes a valid
//! collection that the server stores and counts, and pushes a bad change that the server refuses
//! and stores nothing of.
//!
//! samod is driven over our own tokio-tungstenite stream (its `tokio` feature and a [`Dialer`]),
//! so its `tungstenite` feature (native-tls) is not needed. Documents cross between tally_core's
//! automerge and samod's by bytes (`save` / `load` / `load_incremental`), never by Rust types.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use automerge::Automerge;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use samod::{
    AutomergeUrl, BackoffConfig, DialError, Dialer, DialerEvent, DialerHandle, DocHandle, Repo,
    Transport,
};
use tally_core::collection;
use tally_tests::new_id;
use tally_tests::server::Server;
use tally_tests::{Peer, TestServer};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

/// Longest wait for any one step.
const STEP: Duration = Duration::from_secs(10);

/// Dials the tally server with a bearer token on the upgrade, over tokio-tungstenite.
struct TallyDialer {
    url: String,
    token: String,
}

impl Dialer for TallyDialer {
    type Error = Infallible;

    fn url(&self) -> samod::Url {
        samod::Url::parse(&self.url).expect("ws url")
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let (url, token) = (self.url.clone(), self.token.clone());
        Box::pin(async move {
            let ws = Peer::open(&url, Some(&token))
                .await
                .map_err(DialError::transient)?;
            let (sink, stream) = ws.split();
            let stream = stream.filter_map(|m| {
                futures_util::future::ready(match m {
                    Ok(WsMessage::Binary(b)) => Some(Ok(b.to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
            });
            let sink = sink.with(|b: Vec<u8>| {
                futures_util::future::ready(Ok::<_, tungstenite::Error>(WsMessage::Binary(
                    b.into(),
                )))
            });
            Ok(Transport::new(Box::pin(stream), Box::pin(sink)))
        })
    }
}

/// A samod repo (in-memory storage) connected to the server as the device holding `token`.
///
/// The dialer may retry once, after a second or more. samod 0.16's `Repo::dial` hands the dial
/// to its IO loop before it registers the dialer there; when the IO loop wins that race (about
/// one run in two of this file on 2 cores) the first attempt fails with "no dialer registered"
/// before any socket is opened, and a dialer with no retries gives up at once. The retry comes
/// after the dialer is registered, so it connects. It must not come soon after an `error`:
/// samod closes a connection on which it receives one, and a reconnect would offer the refused
/// change again; the tests that provoke one close the dialer as soon as samod reports the
/// disconnect, long before the retry is due.
async fn samod_phone(server: &TestServer, token: &str) -> (Repo, DialerHandle<Infallible>) {
    let repo = Repo::build_tokio().load().await;
    let dialer = repo
        .dial(
            BackoffConfig {
                initial_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(2),
                max_retries: Some(1),
            },
            Arc::new(TallyDialer {
                url: server.ws(),
                token: token.to_string(),
            }),
        )
        .expect("dial");
    let info = timeout(STEP, dialer.established())
        .await
        .expect("handshake timed out")
        .expect("handshake failed");
    assert!(
        info.peer_id.to_string().starts_with("tally-server-"),
        "unexpected server peer id {}",
        info.peer_id
    );
    (repo, dialer)
}

/// A samod document's bytes, loaded into tally_core's automerge.
fn snapshot(handle: &DocHandle) -> Automerge {
    let bytes = handle.with_document(|d| d.save());
    Automerge::load(&bytes).expect("samod's bytes load")
}

/// Waits until the server has acknowledged every change of `handle` on the dialer's connection.
async fn acknowledged(handle: &DocHandle, dialer: &DialerHandle<Infallible>) {
    let conn = dialer.connection_id().expect("connected");
    timeout(STEP, handle.they_have_our_changes(conn))
        .await
        .expect("the server did not acknowledge the document");
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

/// A new collection owned by `owner` with one signature per (id, name, postal, city), as bytes.
fn collection_bytes(
    c: &tally_tests::Campaign,
    owner: &str,
    sigs: &[(&str, &str, &str, &str)],
) -> Vec<u8> {
    let mut doc = collection::create(&c.id, owner).unwrap();
    for (id, name, postal, city) in sigs {
        let sig = c.world.signature(owner, id, name, postal, city);
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    }
    doc.save()
}

fn signatures(t: &serde_json::Value) -> Option<u64> {
    t["signatures"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_reads_the_campaign_and_totals_by_url() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (_, token) = server.enroll(&c.id, "canvasser");
    let (repo, dialer) = samod_phone(&server, &token).await;

    let url: AutomergeUrl = format!("automerge:{}", c.id).parse().expect("campaign url");
    let handle = timeout(STEP, repo.find(url.document_id().clone()))
        .await
        .expect("find timed out")
        .expect("repo running")
        .expect("the server has the campaign");
    let campaign = tally_core::campaign::read(&snapshot(&handle)).expect("a valid campaign");
    assert_eq!(campaign.id, c.id);
    assert_eq!(campaign.title, c.world.campaign.title);
    assert_eq!(campaign.petition, c.world.campaign.petition);
    let ev = &c.world.campaign.events[tally_core::fixtures::EVENT];
    assert_eq!(campaign.events.len(), 1, "{:?}", campaign.events);
    assert_eq!(&campaign.events[&ev.id], ev);

    // The totals document, by the URL the API gave.
    let totals_url: AutomergeUrl = c.totals_url.parse().expect("totals url");
    let totals = timeout(STEP, repo.find(totals_url.document_id().clone()))
        .await
        .expect("find timed out")
        .expect("repo running")
        .expect("the server has the totals document");
    assert!(tally_core::totals_doc::read(&snapshot(&totals)).is_ok());

    // Another canvasser's or an unknown document: samod is told it is unavailable.
    let nowhere: samod::DocumentId = new_id()
        .to_string()
        .parse()
        .expect("a document id samod reads");
    let none = timeout(STEP, repo.find(nowhere))
        .await
        .expect("find timed out");
    assert!(none.expect("repo running").is_none());

    dialer.close();
    repo.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_pushes_a_collection_and_the_server_counts_it() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let (repo, dialer) = samod_phone(&server, &token).await;

    // Built with tally_core, handed to samod as bytes; samod announces it to the server.
    let bytes = collection_bytes(
        &c,
        &alice,
        &[
            ("s1", "Amara Okafor", "M5V 2T6", "Toronto"),
            ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ],
    );
    let handle = repo
        .create(Automerge::load(&bytes).unwrap())
        .await
        .expect("samod creates the document");
    acknowledged(&handle, &dialer).await;

    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["unique_signers"].as_u64()),
        (Some(2), Some(2)),
        "{t}"
    );
    let doc_id = handle.document_id().to_string();
    let meta = tally_store::Store::open(&server.db())
        .unwrap()
        .doc_meta(&doc_id)
        .unwrap()
        .expect("the server stored samod's document");
    assert_eq!(
        (meta.kind.as_str(), meta.owner.as_deref()),
        ("collection", Some(alice.as_str()))
    );
    let on_server = stored(&server, &doc_id).expect("stored");
    assert_eq!(on_server.get_heads(), snapshot(&handle).get_heads());

    // A further signature written through samod's own document reaches the server too.
    let more = {
        let mut doc = snapshot(&handle);
        let heads = doc.get_heads();
        let sig = c
            .world
            .signature(&alice, "s3", "Sam Tesfaye", "H2X 1Y4", "Montréal");
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
        doc.save_after(&heads)
    };
    handle.with_document(|d| d.load_incremental(&more).expect("samod takes the change"));
    acknowledged(&handle, &dialer).await;
    let t = server.totals(&c.id);
    assert_eq!(signatures(&t), Some(3), "{t}");
    assert!(dialer.is_connected(), "the server dropped samod");

    dialer.close();
    repo.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_bad_change_is_refused_and_nothing_of_it_is_stored() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let (repo, dialer) = samod_phone(&server, &token).await;
    let bytes = collection_bytes(
        &c,
        &alice,
        &[
            ("s1", "Amara Okafor", "M5V 2T6", "Toronto"),
            ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ],
    );
    let handle = repo.create(Automerge::load(&bytes).unwrap()).await.unwrap();
    acknowledged(&handle, &dialer).await;
    assert_eq!(signatures(&server.totals(&c.id)), Some(2));
    let doc_id = handle.document_id().to_string();

    // Delete signature s1 from her own collection (not allowed: withdraw instead).
    let mut events = dialer.events();
    let deletion = {
        let mut doc = snapshot(&handle);
        let heads = doc.get_heads();
        {
            use automerge::transaction::Transactable;
            use automerge::{ROOT, ReadDoc};
            let mut tx = doc.transaction();
            let (_, sigs) = tx.get(ROOT, "signatures").unwrap().unwrap();
            tx.delete(&sigs, "s1").unwrap();
            tx.commit();
        }
        doc.save_after(&heads)
    };
    handle.with_document(|d| {
        d.load_incremental(&deletion)
            .expect("samod takes the change")
    });

    // The server answers with an `error`; samod surfaces it as the reason it closed.
    let reason = timeout(STEP, async {
        while let Some(ev) = events.next().await {
            if let DialerEvent::Disconnected { reason } = ev {
                return reason;
            }
        }
        panic!("dialer events ended");
    })
    .await
    .expect("samod was not told of the refusal");
    assert!(
        reason.contains(&doc_id) && reason.contains("deleted"),
        "samod's disconnect reason: {reason}"
    );
    dialer.close();

    // Nothing of it is stored: totals, the stored document, and the quarantine row.
    assert_eq!(signatures(&server.totals(&c.id)), Some(2));
    let on_server = stored(&server, &doc_id).expect("stored");
    let col = collection::read(&on_server).expect("stored collection reads");
    assert!(
        col.signatures.contains_key("s1") && col.signatures.len() == 2,
        "the deletion leaked into the stored document: {:?}",
        col.signatures.keys().collect::<Vec<_>>()
    );
    let q = tally_store::Store::open(&server.db())
        .unwrap()
        .list_quarantine(&tally_store::QuarantineFilter {
            doc_id: Some(doc_id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        q.len(),
        1,
        "{:?}",
        q.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert_eq!(q[0].device_id, alice);
    assert!(q[0].reason.contains("deleted"), "{}", q[0].reason);

    repo.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_cannot_create_a_collection_for_another_canvasser() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (_alice, token) = server.enroll(&c.id, "canvasser");
    let (bob, _) = server.enroll(&c.id, "canvasser");
    let (repo, dialer) = samod_phone(&server, &token).await;
    let mut events = dialer.events();

    let forged = collection_bytes(&c, &bob, &[("s1", "Amara Okafor", "M5V 2T6", "Toronto")]);
    let handle = repo
        .create(Automerge::load(&forged).unwrap())
        .await
        .unwrap();
    let doc_id = handle.document_id().to_string();
    let reason = timeout(STEP, async {
        while let Some(ev) = events.next().await {
            if let DialerEvent::Disconnected { reason } = ev {
                return reason;
            }
        }
        panic!("dialer events ended");
    })
    .await
    .expect("samod was not told of the refusal");
    assert!(
        reason.contains(&doc_id) && reason.contains("owner"),
        "samod's disconnect reason: {reason}"
    );
    dialer.close();

    assert_eq!(signatures(&server.totals(&c.id)), Some(0));
    let store = tally_store::Store::open(&server.db()).unwrap();
    assert!(
        store.doc_meta(&doc_id).unwrap().is_none(),
        "the forged collection was stored"
    );
    let q = store.list_quarantine(&Default::default()).unwrap();
    assert_eq!(
        q.len(),
        1,
        "{:?}",
        q.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert_eq!(q[0].doc_id, doc_id);

    repo.stop().await;
    server.stop().await;
}
