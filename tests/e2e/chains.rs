//! One phone, many collections (issue 12), the server's half, over real WebSockets and real
//! HTTP against a server on 127.0.0.1:
//!
//! - refusal frames name the document and the record at fault (`documentId`, `tallyRecord`),
//!   whether validation refused the record or the operator listed it in `refuse_records`, and
//!   the phone's other records still sync in a later message;
//! - a record id claimed by two unrelated devices is refused (signatures, check-ins, a withdrawn
//!   copy, a copy among honest records, a `continues` link to a victim's collection);
//! - re-enrollment links a phone's new device to its old one (`replaces`), so that its records
//!   re-homed with the same ids count once; wrong proofs are refused without using the invite;
//! - the per-device limit on a phone's chain of collections says what it is.

use std::collections::HashMap;
use std::time::Duration;

use automerge::Automerge;
use automerge::transaction::Transactable;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tally_core::collection::{self, Checkin, Signature};
use tally_proto::{DocumentId, Event, PeerId, PeerMetadata, Session, StorageId};
use tally_server::api::types::Enrolled;
use tally_server::config::Config;
use tally_tests::new_id;
use tally_tests::server::{Campaign, Server, http};
use tally_tests::{Peer, TestServer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const QUIET: Duration = Duration::from_millis(300);

/// An `error` frame as the phone hears it.
#[derive(Debug, Clone)]
struct Heard {
    message: String,
    document: Option<DocumentId>,
    record: Option<String>,
}

/// A phone on one connection that keeps every field of the server's error frames (the shared
/// `Peer` keeps only their text).
struct Phone {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: Session,
    docs: HashMap<DocumentId, Automerge>,
    errors: Vec<Heard>,
    closed: bool,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Phone {
    async fn connect(server: &TestServer, token: &str) -> Phone {
        let ws = Peer::open(&server.ws(), Some(token))
            .await
            .expect("connect");
        let me = PeerId::new(format!("phone-{}", rand::random::<u64>()));
        let meta = PeerMetadata {
            storage_id: Some(StorageId(format!("storage-{}", rand::random::<u64>()))),
            is_ephemeral: false,
        };
        let (session, join) = Session::client(me, meta);
        let mut phone = Phone {
            ws,
            session,
            docs: HashMap::new(),
            errors: Vec::new(),
            closed: false,
        };
        phone.send(join).await;
        while !phone.session.is_established() {
            match tokio::time::timeout(Duration::from_secs(10), phone.ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => phone.handle(&b).await,
                other => panic!("handshake failed: {other:?}"),
            }
        }
        phone
    }

    async fn send(&mut self, frame: Vec<u8>) {
        self.ws
            .send(WsMessage::Binary(frame.into()))
            .await
            .expect("send");
    }

    async fn handle(&mut self, frame: &[u8]) {
        let events = self.session.receive(frame, now()).expect("a valid frame");
        for ev in events {
            match ev {
                Event::Send(b) => self.send(b).await,
                Event::SyncReceived { doc, message } | Event::DocRequested { doc, message } => {
                    let am = self.docs.entry(doc).or_default();
                    self.session
                        .apply_sync_message(doc, am, message)
                        .expect("apply");
                    if let Some(f) = self.session.sync_frame(doc, &self.docs[&doc]) {
                        self.send(f).await;
                    }
                }
                Event::RemoteError {
                    message,
                    document_id,
                    record,
                } => self.errors.push(Heard {
                    message,
                    document: document_id,
                    record,
                }),
                _ => {}
            }
        }
    }

    /// Handles frames until none arrives for [`QUIET`].
    async fn settle(&mut self) {
        loop {
            match tokio::time::timeout(QUIET, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(WsMessage::Binary(b)))) => self.handle(&b).await,
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    self.closed = true;
                    return;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Offers `doc` (a copy of it) as document `id` and waits until the server is quiet; returns
    /// the error frames heard meanwhile.
    async fn push(&mut self, id: DocumentId, doc: &Automerge) -> Vec<Heard> {
        let before = self.errors.len();
        // The server's copy (what it acknowledged) stays: only what it lacks is offered.
        let mine = self.docs.entry(id).or_default();
        mine.merge(&mut doc.fork()).expect("merge");
        if let Some(f) = self.session.sync_frame(id, &self.docs[&id]) {
            self.send(f).await;
        }
        self.settle().await;
        self.errors[before..].to_vec()
    }

    /// Has the server acknowledged every change of `doc` as document `id`?
    fn acknowledged(&self, id: &DocumentId, doc: &Automerge) -> bool {
        match self
            .session
            .sync_state(id)
            .and_then(|s| s.their_heads.clone())
        {
            Some(heads) => doc.get_changes(&heads).is_empty(),
            None => false,
        }
    }
}

/// A signature of `device` with id `id`, signed by person `n`.
fn sig(c: &Campaign, device: &str, id: &str, n: usize) -> Signature {
    c.world.signature(
        device,
        id,
        &format!("Signer Number{n}"),
        "M5V 2T6",
        "Toronto",
    )
}

fn checkin(c: &Campaign, device: &str, id: &str, n: usize) -> Checkin {
    c.world.checkin(
        device,
        id,
        &format!("Attendee Number{n}"),
        n.is_multiple_of(2),
    )
}

/// A collection of `device` (continuing `previous`, if given) with these signatures.
fn collection_of(
    c: &Campaign,
    device: &str,
    previous: Option<&DocumentId>,
    sigs: &[&str],
) -> Automerge {
    let mut doc = match previous {
        Some(p) => collection::create_continuing(&c.id, device, &p.to_string()),
        None => collection::create(&c.id, device),
    }
    .expect("collection");
    for (i, id) in sigs.iter().enumerate() {
        collection::add_signature(&mut doc, &sig(c, device, id, i), &c.world.campaign)
            .expect("add");
    }
    doc
}

/// The map of record `id` in `container`.
fn record_obj(doc: &Automerge, container: &str, id: &str) -> automerge::ObjId {
    use automerge::ReadDoc;
    let (_, map) = doc
        .get(automerge::ROOT, container)
        .unwrap()
        .expect("container");
    let (_, obj) = doc.get(&map, id).unwrap().expect("record");
    obj
}

fn totals(server: &TestServer, c: &Campaign) -> Value {
    server.totals(&c.id)
}

fn counted(server: &TestServer, c: &Campaign) -> (u64, u64) {
    let t = totals(server, c);
    (
        t["signatures"].as_u64().expect("signatures"),
        t["withdrawn"].as_u64().expect("withdrawn"),
    )
}

fn sealed_ids(server: &TestServer, c: &Campaign) -> Vec<String> {
    let (st, v) = http(
        &server.base(),
        "GET",
        &format!("/api/v1/campaigns/{}/sealed", c.id),
        Some(&server.admin()),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .expect("records")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

fn quarantined(server: &TestServer) -> Vec<tally_store::QuarantineEntry> {
    let store = tally_store::Store::open(&server.db()).expect("store");
    store
        .list_quarantine(&Default::default())
        .expect("quarantine")
}

/// The operator lists records to refuse: a change that writes one is refused, the frame names
/// the document and the record, nothing of the change is stored, and the phone's other records
/// (in a later message, in its next collection) still count. A record refused by validation is
/// named the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_named_and_the_others_still_count() {
    let server = TestServer::start_with(|cfg: &mut Config| {
        cfg.refuse_records = vec!["bad-sig".into(), "bad-ci".into()];
    })
    .await;
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let mut phone = Phone::connect(&server, &token).await;

    // A first collection with two good signatures: acknowledged and counted.
    let first = new_id();
    let mut doc = collection_of(&c, &device, None, &["ok-1", "ok-2"]);
    assert!(phone.push(first, &doc).await.is_empty());
    assert!(phone.acknowledged(&first, &doc));
    assert_eq!(counted(&server, &c), (2, 0));

    // A listed signature, beside a good one in the same message: all refused, named.
    collection::add_signature(&mut doc, &sig(&c, &device, "ok-3", 3), &c.world.campaign).unwrap();
    collection::add_signature(&mut doc, &sig(&c, &device, "bad-sig", 4), &c.world.campaign)
        .unwrap();
    let heard = phone.push(first, &doc).await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].document, Some(first), "{heard:?}");
    assert_eq!(heard[0].record.as_deref(), Some("bad-sig"), "{heard:?}");
    assert!(
        heard[0].message.contains("bad-sig") && heard[0].message.contains("refuse_records"),
        "{heard:?}"
    );
    assert!(!phone.acknowledged(&first, &doc));
    assert_eq!(
        counted(&server, &c),
        (2, 0),
        "nothing of the refused change"
    );
    assert!(!phone.closed, "a refusal keeps the connection");

    // The phone sets it aside: its next collection continues the first, with the good record
    // it had not had acknowledged and a new one. Accepted, counted once each.
    let second = new_id();
    let mut next = collection_of(&c, &device, Some(&first), &["ok-3", "ok-4"]);
    assert!(phone.push(second, &next).await.is_empty());
    assert!(phone.acknowledged(&second, &next));
    assert_eq!(counted(&server, &c), (4, 0));

    // A listed check-in is refused the same way.
    collection::add_checkin(
        &mut next,
        &checkin(&c, &device, "bad-ci", 1),
        &c.world.campaign,
    )
    .unwrap();
    let heard = phone.push(second, &next).await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(
        (heard[0].document, heard[0].record.as_deref()),
        (Some(second), Some("bad-ci")),
        "{heard:?}"
    );

    // A record refused by validation (a plaintext field) is named too, in a third collection.
    let third = new_id();
    let mut bad = collection_of(&c, &device, Some(&second), &["ok-5", "leaky"]);
    let obj = record_obj(&bad, collection::SIGNATURES, "leaky");
    bad.transact::<_, _, automerge::AutomergeError>(|tx| {
        tx.put(&obj, "name", "Amara Okafor")?;
        Ok(())
    })
    .unwrap();
    let heard = phone.push(third, &bad).await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(
        (heard[0].document, heard[0].record.as_deref()),
        (Some(third), Some("leaky")),
        "{heard:?}"
    );
    assert!(
        heard[0].message.contains("signatures/leaky/name"),
        "{heard:?}"
    );
    assert_eq!(counted(&server, &c), (4, 0));
    let q = quarantined(&server);
    assert!(
        q.iter().any(|e| e.reason.contains("bad-sig"))
            && q.iter().any(|e| e.reason.contains("bad-ci")),
        "the refusals are quarantined: {q:?}"
    );
    server.stop().await;
}

/// `POST /api/v1/enroll` with `replaces`: (status, body).
fn enroll_replacing(server: &TestServer, code: &str, device_id: &str, token: &str) -> (u16, Value) {
    http(
        &server.base(),
        "POST",
        "/api/v1/enroll",
        None,
        Some(json!({
            "code": code,
            "name": "phone, enrolled again",
            "replaces": { "device_id": device_id, "token": token },
        })),
    )
}

/// A phone revoked with records the server had not acknowledged enrolls again, proving the
/// device it was with that device's token: the new device replaces the old one, and its
/// records re-homed with the same ids count once. Wrong proofs are refused and leave the
/// invite unused; the replaced device stays refused at sync; replacing a device that was not
/// revoked revokes it and closes its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reenrolled_phone_replaces_its_old_device() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let other = server.campaign();
    let (old, old_token) = server.enroll(&c.id, "canvasser");
    let (stranger, stranger_token) = server.enroll(&other.id, "canvasser");

    // The old device syncs two signatures; a third stays on the phone, unacknowledged.
    let mut phone = Phone::connect(&server, &old_token).await;
    let first = new_id();
    let doc = collection_of(&c, &old, None, &["s1", "s2"]);
    assert!(phone.push(first, &doc).await.is_empty());
    assert_eq!(counted(&server, &c), (2, 0));
    let (st, v) = http(
        &server.base(),
        "POST",
        &format!("/api/v1/devices/{old}/revoke"),
        Some(&server.admin()),
        None,
    );
    assert_eq!(st, 200, "{v}");

    // Wrong proofs: refused with what to do, and the invite stays unused.
    let code = server.invite(&c.id, "canvasser");
    let (st, v) = enroll_replacing(&server, &code, &old, &stranger_token);
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("does not belong"),
        "{v}"
    );
    let (st, v) = enroll_replacing(&server, &code, "0123456789abcdef", &old_token);
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not known"), "{v}");
    let (st, v) = enroll_replacing(&server, &code, &stranger, &stranger_token);
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("another campaign"),
        "{v}"
    );

    // The right proof, with the same invite.
    let (st, v) = enroll_replacing(&server, &code, &old, &old_token);
    assert_eq!(st, 200, "{v}");
    let new: Enrolled = serde_json::from_value(v).unwrap();
    assert_eq!(new.replaces.as_deref(), Some(old.as_str()));
    let (_, devices) = http(
        &server.base(),
        "GET",
        "/api/v1/devices",
        Some(&server.admin()),
        None,
    );
    let row = |id: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&new.device_id)["lineage"], json!(old));
    assert_eq!(row(&new.device_id)["replaces"], json!(old));
    assert!(row(&old)["revoked_at"].is_i64());
    // The invite is used now.
    let (st, v) = enroll_replacing(&server, &code, &old, &old_token);
    assert_eq!(st, 410, "{v}");

    // The replaced device is still refused at sync.
    let err = Peer::open(&server.ws(), Some(&old_token))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // The new device's next collection continues the old device's, with the records the
    // server had not acknowledged and one it had (the phone never heard): same ids, counted
    // once; the export lists each once.
    let mut phone = Phone::connect(&server, &new.token).await;
    let second = new_id();
    let doc = collection_of(&c, &new.device_id, Some(&first), &["s2", "s3", "s4"]);
    let heard = phone.push(second, &doc).await;
    assert!(heard.is_empty(), "{heard:?}");
    assert!(phone.acknowledged(&second, &doc));
    assert_eq!(counted(&server, &c), (4, 0));
    let mut ids = sealed_ids(&server, &c);
    ids.sort();
    assert_eq!(ids, ["s1", "s2", "s3", "s4"]);

    // Replacing a device that was not revoked revokes it and closes its connections.
    let (live, live_token) = server.enroll(&c.id, "canvasser");
    let mut live_phone = Phone::connect(&server, &live_token).await;
    let (st, v) = enroll_replacing(
        &server,
        &server.invite(&c.id, "canvasser"),
        &live,
        &live_token,
    );
    assert_eq!(st, 200, "{v}");
    live_phone.settle().await;
    assert!(
        live_phone.closed,
        "the replaced device's connection is closed"
    );
    let err = Peer::open(&server.ws(), Some(&live_token))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    server.stop().await;
}

/// A hostile canvasser writes copies of another phone's record ids (with "withdrawn if any
/// copy is withdrawn", a withdrawn copy would withdraw the victim's record): every shape is
/// refused, naming the record, quarantined, and nothing of it is stored; a `continues` link to
/// the victim's collection is refused too. The victim's records still count, and the attacker's
/// own honest records still sync in a collection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_phones_record_ids_are_refused() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (victim, victim_token) = server.enroll(&c.id, "canvasser");
    let (attacker, attacker_token) = server.enroll(&c.id, "canvasser");

    let mut v = Phone::connect(&server, &victim_token).await;
    let victim_doc = new_id();
    let mut doc = collection_of(&c, &victim, None, &["v1", "v2"]);
    collection::add_checkin(&mut doc, &checkin(&c, &victim, "vc1", 1), &c.world.campaign).unwrap();
    assert!(v.push(victim_doc, &doc).await.is_empty());
    let before = totals(&server, &c);
    assert_eq!(before["signatures"], json!(2));

    let mut a = Phone::connect(&server, &attacker_token).await;
    let refused = |heard: &[Heard], doc: DocumentId, record: &str| {
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert_eq!(heard[0].document, Some(doc), "{heard:?}");
        assert_eq!(heard[0].record.as_deref(), Some(record), "{heard:?}");
        assert!(heard[0].message.contains("another phone"), "{heard:?}");
    };

    // 1. A withdrawn copy of the victim's signature, in a new collection.
    let d1 = new_id();
    let mut hostile = collection_of(&c, &attacker, None, &["v1"]);
    collection::withdraw_signature(&mut hostile, "v1").unwrap();
    refused(&a.push(d1, &hostile).await, d1, "v1");
    // 2. A copy of the victim's check-in, withdrawn.
    let d2 = new_id();
    let mut hostile = collection_of(&c, &attacker, None, &[]);
    let mut ci = checkin(&c, &attacker, "vc1", 1);
    ci.withdrawn = true;
    collection::add_checkin(&mut hostile, &ci, &c.world.campaign).unwrap();
    refused(&a.push(d2, &hostile).await, d2, "vc1");
    // 3. The victim's id among honest records, in one message.
    let d3 = new_id();
    let hostile = collection_of(&c, &attacker, None, &["a1", "v2", "a2"]);
    refused(&a.push(d3, &hostile).await, d3, "v2");
    // 4. An accepted collection of the attacker's, then a later change to it that adds the
    //    victim's id.
    let d4 = new_id();
    let mut own = collection_of(&c, &attacker, None, &["a3"]);
    assert!(a.push(d4, &own).await.is_empty());
    let mut copy = sig(&c, &attacker, "v1", 9);
    copy.withdrawn = true;
    collection::add_signature(&mut own, &copy, &c.world.campaign).unwrap();
    refused(&a.push(d4, &own).await, d4, "v1");
    // 5. A collection that claims to continue the victim's.
    let d5 = new_id();
    let hostile = collection_of(&c, &attacker, Some(&victim_doc), &["a4"]);
    let heard = a.push(d5, &hostile).await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(
        (heard[0].document, heard[0].record.as_deref()),
        (Some(d5), None),
        "{heard:?}"
    );
    assert!(heard[0].message.contains("continues"), "{heard:?}");
    //    ... or the campaign document.
    let d6 = new_id();
    let campaign_doc: DocumentId = c.id.parse().unwrap();
    let hostile = collection_of(&c, &attacker, Some(&campaign_doc), &["a5"]);
    assert!(a.push(d6, &hostile).await[0].message.contains("continues"));

    // Nothing of it stored: the victim's totals are as they were, with the attacker's one
    // accepted signature; its refused ones are not there.
    let after = totals(&server, &c);
    assert_eq!(after["signatures"], json!(3), "{after}");
    assert_eq!(after["withdrawn"], json!(0), "{after}");
    assert_eq!(after["checkins"], before["checkins"], "{after}");
    let mut ids = sealed_ids(&server, &c);
    ids.sort();
    assert_eq!(ids, ["a3", "v1", "v2"]);
    let q = quarantined(&server);
    let claims = q
        .iter()
        .filter(|e| e.reason.contains("another phone"))
        .count();
    assert_eq!(claims, 4, "{q:?}");
    assert!(q.iter().any(|e| e.reason.contains("continues")), "{q:?}");

    // The attacker's honest records still sync, in a collection continuing its own, or one the
    // server never received.
    let d7 = new_id();
    let honest = collection_of(&c, &attacker, Some(&d4), &["a1", "a2"]);
    assert!(a.push(d7, &honest).await.is_empty());
    let d8 = new_id();
    let honest = collection_of(&c, &attacker, Some(&new_id()), &["a6"]);
    assert!(a.push(d8, &honest).await.is_empty());
    assert_eq!(counted(&server, &c), (6, 0));
    // And the victim goes on, in its own chain, with its own ids.
    let next = new_id();
    let doc = collection_of(&c, &victim, Some(&victim_doc), &["v2", "v3"]);
    assert!(v.push(next, &doc).await.is_empty());
    assert_eq!(counted(&server, &c), (7, 0));
    server.stop().await;
}

/// `max_documents_per_device` bounds a phone's chain of collections in a campaign, and its
/// refusal says so and what to do; the collections already there still sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_of_collections_has_a_length_limit() {
    let server = TestServer::start_with(|cfg: &mut Config| cfg.max_documents_per_device = 2).await;
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let mut phone = Phone::connect(&server, &token).await;
    let first = new_id();
    assert!(
        phone
            .push(first, &collection_of(&c, &device, None, &["l1"]))
            .await
            .is_empty()
    );
    let second = new_id();
    let mut doc = collection_of(&c, &device, Some(&first), &["l2"]);
    assert!(phone.push(second, &doc).await.is_empty());
    let third = new_id();
    let heard = phone
        .push(third, &collection_of(&c, &device, Some(&second), &["l3"]))
        .await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(
        (heard[0].document, heard[0].record.as_deref()),
        (Some(third), None)
    );
    assert!(
        heard[0]
            .message
            .contains("chain of collections has reached 2")
            && heard[0].message.contains("raise max_documents_per_device"),
        "{heard:?}"
    );
    collection::add_signature(&mut doc, &sig(&c, &device, "l3", 3), &c.world.campaign).unwrap();
    assert!(phone.push(second, &doc).await.is_empty());
    assert_eq!(counted(&server, &c), (3, 0));
    server.stop().await;
}
