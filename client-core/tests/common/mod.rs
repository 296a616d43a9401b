//! Shared test helpers: an enrolled phone in a temp dir (no server needed), a dump of the
//! phone's SQLite file, and an in-process sync server built on tally-proto's server session
//! that validates nothing but can refuse changes, hide documents and be cut off mid-exchange;
//! it decides as the server does, through `tally_proto::host` (admit, fork, judge, keep).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use automerge::Automerge;
use automerge::sync::SyncDoc as _;
use rand::SeedableRng as _;
use tally_client::{Device, DocRole, EnrollPayload, EnrollResponse, SignatureForm, SyncEngine};
use tally_core::collection;
use tally_core::fixtures::{CAMPAIGN, World};
use tally_core::totals::Totals;
use tally_proto::host;
use tally_proto::{DocumentId, Event, PeerId, PeerMetadata, Session};

pub const KEY_HEX: &str = "2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";

/// Fixed document ids for the fixture campaign and its totals.
pub fn campaign_doc_id() -> DocumentId {
    DocumentId::from_bytes([1; 16])
}

pub fn totals_doc_id() -> DocumentId {
    DocumentId::from_bytes([2; 16])
}

pub fn payload_json(server: &str) -> String {
    format!(
        r#"{{"v":1,"server":"{server}","code":"ABCD-EFGH-JKMN","campaign":"{}","key":"{KEY_HEX}"}}"#,
        campaign_doc_id().to_url()
    )
}

pub fn response(device_id: &str) -> EnrollResponse {
    EnrollResponse {
        device_id: device_id.into(),
        token: "tly_test_token".into(),
        role: tally_core::validate::Role::Canvasser,
        campaign: CAMPAIGN.into(),
        campaign_url: campaign_doc_id().to_url(),
        totals_url: totals_doc_id().to_url(),
        replaces: None,
    }
}

/// A phone enrolled (without a server) as `dev1` against `server`.
pub fn enrolled_at(home: &Path, server: &str) -> Device {
    let device = Device::open(home).unwrap();
    let payload = EnrollPayload::parse(&payload_json(server)).unwrap();
    device
        .complete_enrollment(&payload, &response("dev1"), "test phone")
        .unwrap();
    device
}

pub fn enrolled(home: &Path) -> Device {
    enrolled_at(home, "http://127.0.0.1:9")
}

/// An enrolled phone that has the fixture campaign document, as after a first sync.
pub fn ready(home: &Path, world: &World) -> Device {
    let device = enrolled(home);
    device
        .import_document(&campaign_doc_id().to_url(), &world.campaign_doc.save())
        .unwrap();
    device
}

pub fn form(name: &str, postal: &str, city: &str) -> SignatureForm {
    SignatureForm {
        name: name.into(),
        postal_code: postal.into(),
        city: city.into(),
        consent_contact: true,
        ..SignatureForm::default()
    }
}

/// Every row of every table of the phone's database, as text: equal dumps mean an unchanged
/// store.
pub fn dump(device: &Device) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        device.database_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut out = String::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for table in tables {
        out.push_str(&format!("# {table}\n"));
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(" | "))
            })
            .unwrap();
        for row in rows {
            out.push_str(&row.unwrap());
            out.push('\n');
        }
    }
    out
}

/// The totals document the server would hold, with some totals in it.
pub fn totals_doc(signatures: u64, at: i64) -> Automerge {
    let mut doc = tally_core::totals_doc::create(CAMPAIGN).unwrap();
    let totals = Totals {
        signatures,
        unique_signers: signatures,
        ..Totals::default()
    };
    tally_core::totals_doc::write(&mut doc, &totals, at).unwrap();
    doc
}

/// An in-process server: one server session at a time over a set of documents.
pub struct TestServer {
    session: Session,
    pub docs: BTreeMap<DocumentId, Automerge>,
    /// Changes to these documents are refused with an `error` frame (nothing merged).
    pub frozen: BTreeSet<DocumentId>,
    /// These documents are answered with `doc-unavailable`.
    pub hidden: BTreeSet<DocumentId>,
    /// A change that writes one of these signature ids is refused, naming the document and the
    /// record (as tally's server refuses a record breaking one of its rules).
    pub refused_records: BTreeSet<String>,
    /// Changes to a collection created after this many are refused naming no record.
    pub refuse_unnamed_after: Option<usize>,
    /// Frames received, for inspection.
    pub received: usize,
}

impl TestServer {
    pub fn new() -> Self {
        TestServer {
            session: Session::server(PeerId::new("test-server"), PeerMetadata::default()),
            docs: BTreeMap::new(),
            frozen: BTreeSet::new(),
            hidden: BTreeSet::new(),
            refused_records: BTreeSet::new(),
            refuse_unnamed_after: None,
            received: 0,
        }
    }

    /// The server holding the fixture campaign and a totals document.
    pub fn with_campaign(world: &World) -> Self {
        let mut s = Self::new();
        s.docs.insert(campaign_doc_id(), world.campaign_doc.clone());
        s.docs
            .insert(totals_doc_id(), totals_doc(41, tally_core::fixtures::NOW));
        s
    }

    /// A new connection (the old one's sync states are forgotten).
    pub fn reconnect(&mut self) {
        self.session = Session::server(PeerId::new("test-server"), PeerMetadata::default());
    }

    /// This server's rules for a change that moved `doc`'s heads: `Err` is the frame that
    /// refuses it.
    fn judge(&self, doc: DocumentId, before: &Automerge, after: &Automerge) -> Result<(), Vec<u8>> {
        if self.frozen.contains(&doc) {
            return Err(self.session.error_frame(&format!(
                "change to {doc} rejected: signatures/x/fsa: test refusal"
            )));
        }
        if let Some(id) = self
            .refused_records
            .iter()
            .find(|id| collection::signature(after, id).ok().flatten().is_some())
        {
            return Err(self.session.refusal_frame(
                doc,
                &format!("document {doc}: change refused: signatures/{id}: a test rule"),
                Some(id),
            ));
        }
        let collections = self
            .docs
            .values()
            .filter(|d| {
                tally_core::DocHeader::read(d)
                    .is_ok_and(|h| h.kind == tally_core::DocKind::Collection)
            })
            .count();
        if before.get_heads().is_empty()
            && self.refuse_unnamed_after.is_some_and(|n| collections >= n)
        {
            return Err(self.session.refusal_frame(
                doc,
                &format!("document {doc}: change refused: limit: a test limit"),
                None,
            ));
        }
        Ok(())
    }

    pub fn receive(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
        self.received += 1;
        let mut out = Vec::new();
        for event in self
            .session
            .receive(frame, 0)
            .expect("the phone sends valid frames")
        {
            match event {
                Event::Send(f) => out.push(f),
                Event::DocRequested { doc, message } | Event::SyncReceived { doc, message } => {
                    // Every document not hidden is readable here, a missing one as empty.
                    let access = if self.hidden.contains(&doc) {
                        host::Access::Hidden
                    } else {
                        host::Access::Readable
                    };
                    if host::admit(access, false, !message.changes.is_empty())
                        != host::Admission::Apply
                    {
                        out.extend(self.session.unavailable_frame(doc));
                        continue;
                    }
                    let before = self.docs.get(&doc).cloned().unwrap_or_default();
                    let mut state = self.session.sync_state(&doc).cloned().unwrap_or_default();
                    let decision = host::decide(
                        &before,
                        |after| {
                            after
                                .receive_sync_message(&mut state, message)
                                .map_err(|e| e.to_string())
                        },
                        host::Waiting::Queued,
                        |before, after| self.judge(doc, before, after),
                    )
                    .expect("changes that applied apply again");
                    let after = match decision {
                        host::Decision::Unapplicable(e) => {
                            panic!("the phone sends changes that apply: {e}")
                        }
                        host::Decision::Refused(frame) => {
                            out.push(frame);
                            continue;
                        }
                        host::Decision::Unchanged { keep, .. } => keep.unwrap_or(before),
                        host::Decision::Store { after, .. } => after,
                    };
                    self.session.set_sync_state(doc, state);
                    self.docs.insert(doc, after);
                    out.extend(self.session.sync_frame(doc, &self.docs[&doc]));
                }
                _ => {}
            }
        }
        out
    }
}

/// Delivers frames both ways until none are left, or until `limit` frames have been
/// delivered (a connection cut off midway). Returns how many were delivered.
pub fn run(engine: &mut SyncEngine, server: &mut TestServer, join: Vec<u8>, limit: usize) -> usize {
    let mut to_server = VecDeque::from([join]);
    let mut to_phone: VecDeque<Vec<u8>> = VecDeque::new();
    let mut delivered = 0;
    while delivered < limit {
        if let Some(f) = to_server.pop_front() {
            to_phone.extend(server.receive(&f));
        } else if let Some(f) = to_phone.pop_front() {
            to_server.extend(engine.receive(&f, 0).unwrap());
        } else {
            break;
        }
        delivered += 1;
    }
    delivered
}

/// One complete sync of `device` with `server`.
pub fn sync(device: &Device, server: &mut TestServer) -> SyncEngine {
    server.reconnect();
    let (mut engine, join) = SyncEngine::start(device).unwrap();
    run(&mut engine, server, join, 10_000);
    engine
}

pub fn collection_id(device: &Device) -> DocumentId {
    DocumentId::from_url(&device.enrollment().unwrap().unwrap().collection_url).unwrap()
}

pub fn heads(device: &Device, role: DocRole) -> Vec<automerge::ChangeHash> {
    device.document(role).unwrap().get_heads()
}

pub fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(7)
}
