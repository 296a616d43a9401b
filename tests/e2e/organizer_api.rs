//! The organizers' side over real sockets on 127.0.0.1 and a real SQLite file: totals from the
//! SQL projection held equal to the document core's reference `totals` over random histories
//! (phones signing, checking in, withdrawing, correcting and syncing, rolling over to the next
//! collection of their chain and re-writing records there with the same ids; organizers
//! striking, revoking strikes and recording paper sheets through the API); `tally reindex` reproducing the
//! incremental tables row for row; every organizer endpoint's refusals (401, 403, 404, 400) with
//! a message; small-cell suppression; the live totals stream; the OpenAPI document matching the
//! router; and no signer's name or email anywhere in the database files.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use automerge::Automerge;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, FileFailurePersistence, TestRunner};
use serde_json::{Value, json};
use tally_core::city::{city_key, same_city};
use tally_core::collection::{self, Checkin, Collection, SignatureForm, TakenBy};
use tally_core::fixtures::{EVENT, NOW};
use tally_core::review::{self, Review};
use tally_core::totals::Totals;
use tally_proto::DocumentId;
use tally_server::api::types::TotalsResponse;
use tally_store::{DocFilter, Store};
use tally_tests::new_id;
use tally_tests::server::{Server, binary, http};
use tally_tests::{Campaign, Peer, TestServer};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// Test signers: name, postal code, email. None of these may ever reach the server's files.
const PEOPLE: &[(&str, &str, &str)] = &[
    ("Amara Okafor", "M5V 2T6", "amara.okafor@example.org"),
    ("Li Wei", "V5K 0A1", "li.wei@example.org"),
    ("Sofía Ramírez", "H2X 1Y4", "sofia.ramirez@example.org"),
    ("Tenzin Dolma", "M6H 3C2", "tenzin.dolma@example.org"),
    ("Kwame Mensah", "K1P 5G3", "kwame.mensah@example.org"),
    ("Nguyễn Văn An", "T2P 1J9", "nguyen.van.an@example.org"),
];
/// Three cities, each typed several ways (issue 13): one cell per city, whatever the spelling.
const CITIES: &[&str] = &[
    "Toronto",
    "Montréal",
    "Smallville",
    "TORONTO",
    " toronto ",
    "Montreal",
    "MONTRE\u{301}AL",
    "smallville",
];
const RIDINGS: &[Option<&str>] = &[None, Some("Spadina"), Some("Outremont")];

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339()
}

/// A stored document of `kind` for `campaign`, read straight from the server's database file.
fn stored_doc(db: &Path, campaign: &str, kind: &str) -> Option<Automerge> {
    let store = Store::open_read_only(db).expect("open the database read-only");
    let meta = store
        .list_documents(&DocFilter {
            campaign: Some(campaign.into()),
            kind: Some(kind.into()),
            owner: None,
        })
        .expect("list documents")
        .into_iter()
        .next()?;
    let stored = store.load_document(&meta.doc_id).expect("load")?;
    let mut doc = match &stored.snapshot {
        Some(s) => Automerge::load(s).expect("snapshot"),
        None => Automerge::new(),
    };
    for c in &stored.incremental {
        doc.load_incremental(c).expect("chunk");
    }
    Some(doc)
}

/// One canvasser's phone: its current collection as written locally and as last acknowledged,
/// and the collections before it in its chain.
struct Phone {
    /// Earlier collections of the chain: (as written locally, as the server has it).
    earlier: Vec<(Automerge, Option<Automerge>)>,
    device: String,
    token: String,
    peer: Peer,
    col: DocumentId,
    doc: Automerge,
    synced: Option<Automerge>,
    signatures: Vec<String>,
    checkins: Vec<String>,
}

/// A campaign on a running server with an organizer and phones, and the bookkeeping to compute
/// the reference totals of what the server has.
struct Scenario<'a> {
    server: &'a TestServer,
    c: Campaign,
    organizer: String,
    phones: Vec<Phone>,
    next: u64,
    struck: BTreeSet<String>,
}

impl<'a> Scenario<'a> {
    async fn new(server: &'a TestServer, phones: usize) -> Scenario<'a> {
        let c = server.campaign();
        let (_, organizer) = server.enroll(&c.id, "organizer");
        let mut s = Scenario {
            server,
            c,
            organizer,
            phones: Vec::new(),
            next: 0,
            struck: BTreeSet::new(),
        };
        for _ in 0..phones {
            s.add_phone().await;
        }
        s
    }

    async fn add_phone(&mut self) -> usize {
        let (device, token) = self.server.enroll(&self.c.id, "canvasser");
        let peer = Peer::connect(&self.server.ws(), &token)
            .await
            .expect("connect");
        self.phones.push(Phone {
            earlier: Vec::new(),
            doc: collection::create(&self.c.id, &device).expect("collection"),
            device,
            token,
            peer,
            col: new_id(),
            synced: None,
            signatures: Vec::new(),
            checkins: Vec::new(),
        });
        self.phones.len() - 1
    }

    fn at(day: u8, late: bool) -> i64 {
        // 16:00Z, or 00:30Z the next day (still the day before in Toronto).
        NOW + i64::from(day % 4) * DAY + if late { 8 * HOUR + HOUR / 2 } else { 0 }
    }

    #[allow(clippy::too_many_arguments)]
    fn signature(
        &self,
        phone: usize,
        id: &str,
        person: usize,
        city: usize,
        event: bool,
        riding: usize,
        at: i64,
    ) -> collection::Signature {
        let (name, postal, email) = PEOPLE[person % PEOPLE.len()];
        let form = SignatureForm {
            name: name.into(),
            postal_code: postal.into(),
            city: CITIES[city % CITIES.len()].into(),
            email: Some(email.into()),
            phone: Some("+1 416 555 0100".into()),
            street: Some("12 Rue des Pins".into()),
            consent_contact: true,
            event: event.then(|| EVENT.to_string()),
            riding: RIDINGS[riding % RIDINGS.len()].map(str::to_string),
        };
        let mut sig = form
            .prepare(&TakenBy {
                campaign: &self.c.world.campaign,
                key: &self.c.world.key,
                canvasser: &self.phones[phone].device,
                now: at,
                id: id.into(),
            })
            .expect("signature form");
        // As typed: `tally-device` trims, a web or third-party client may not.
        sig.city = CITIES[city % CITIES.len()].into();
        sig
    }

    #[allow(clippy::too_many_arguments)]
    fn sign(
        &mut self,
        phone: usize,
        person: usize,
        city: usize,
        event: bool,
        riding: usize,
        at: i64,
        id: Option<String>,
    ) -> String {
        let id = id.unwrap_or_else(|| {
            self.next += 1;
            format!("sig{}", self.next)
        });
        let sig = self.signature(phone, &id, person, city, event, riding, at);
        collection::add_signature(&mut self.phones[phone].doc, &sig, &self.c.world.campaign)
            .expect("add signature");
        self.phones[phone].signatures.push(id.clone());
        id
    }

    fn checkin(&mut self, phone: usize, person: usize, walk_in: bool, at: i64) {
        self.next += 1;
        let ci = Checkin {
            id: format!("ci{}", self.next),
            event: EVENT.into(),
            attendee: self
                .c
                .world
                .key
                .attendee_token(PEOPLE[person % PEOPLE.len()].0),
            at,
            by: self.phones[phone].device.clone(),
            walk_in,
            withdrawn: false,
        };
        collection::add_checkin(&mut self.phones[phone].doc, &ci, &self.c.world.campaign)
            .expect("add check-in");
        self.phones[phone].checkins.push(ci.id);
    }

    fn withdraw(&mut self, phone: usize, pick: usize) {
        let p = &mut self.phones[phone];
        if let Some(id) = p.signatures.get(pick % p.signatures.len().max(1)).cloned() {
            collection::withdraw_signature(&mut p.doc, &id).expect("withdraw");
        }
    }

    fn withdraw_checkin(&mut self, phone: usize, pick: usize) {
        let p = &mut self.phones[phone];
        if let Some(id) = p.checkins.get(pick % p.checkins.len().max(1)).cloned() {
            collection::withdraw_checkin(&mut p.doc, &id).expect("withdraw check-in");
        }
    }

    fn correct(&mut self, phone: usize, pick: usize, person: usize, city: usize, riding: usize) {
        let p = &self.phones[phone];
        let Some(id) = p.signatures.get(pick % p.signatures.len().max(1)).cloned() else {
            return;
        };
        let old = collection::signature(&p.doc, &id)
            .expect("read")
            .expect("signature");
        let mut new = self.signature(
            phone,
            &id,
            person,
            city,
            old.event.is_none(),
            riding,
            old.collected_at,
        );
        new.withdrawn = old.withdrawn;
        collection::correct_signature(&mut self.phones[phone].doc, &new, &self.c.world.campaign)
            .expect("correct");
    }

    /// Pushes a phone's collection and waits for the server's acknowledgement.
    async fn sync(&mut self, phone: usize) {
        let p = &mut self.phones[phone];
        p.peer.docs.insert(p.col, p.doc.fork());
        p.peer.sync(p.col).await.expect("sync");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.peer.acknowledged(&p.col) {
            assert!(Instant::now() < deadline, "sync not acknowledged");
            p.peer
                .settle(Duration::from_millis(20))
                .await
                .expect("settle");
        }
        assert!(p.peer.errors.is_empty(), "refused: {:?}", p.peer.errors);
        p.synced = Some(p.doc.fork());
    }

    /// Ids of signatures the server has.
    fn synced_ids(&self) -> Vec<String> {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for c in self.collections() {
            ids.extend(c.signatures.into_keys());
        }
        ids.into_iter().collect()
    }

    /// The phone starts the next collection of its chain (after a roll-over or a refusal): it
    /// re-writes there, with the same ids, every record the server has not acknowledged as it
    /// stands and, with `again`, the acknowledged ones too (an acknowledgement the phone never
    /// heard).
    fn roll(&mut self, phone: usize, again: bool) {
        let campaign = self.c.world.campaign.clone();
        let p = &mut self.phones[phone];
        let mut next = collection::create_continuing(&self.c.id, &p.device, &p.col.to_string())
            .expect("next collection");
        let local = collection::read(&p.doc).expect("read");
        let acked = p
            .synced
            .as_ref()
            .map(|d| collection::read(d).expect("read"));
        let (mut sigs, mut cis) = (Vec::new(), Vec::new());
        for (id, sig) in &local.signatures {
            let known = acked.as_ref().and_then(|a| a.signatures.get(id)) == Some(sig);
            if again || !known {
                collection::add_signature(&mut next, sig, &campaign).expect("re-write");
                sigs.push(id.clone());
            }
        }
        for (id, ci) in &local.checkins {
            let known = acked.as_ref().and_then(|a| a.checkins.get(id)) == Some(ci);
            if again || !known {
                collection::add_checkin(&mut next, ci, &campaign).expect("re-write");
                cis.push(id.clone());
            }
        }
        let prev = std::mem::replace(&mut p.doc, next);
        p.earlier.push((prev, p.synced.take()));
        p.col = new_id();
        p.signatures = sigs;
        p.checkins = cis;
    }

    /// Signature ids of the phone's earlier collections that its current one lacks.
    fn earlier_ids(&self, phone: usize) -> Vec<String> {
        let p = &self.phones[phone];
        let here = collection::read(&p.doc).expect("read");
        let mut ids = BTreeSet::new();
        for (d, _) in &p.earlier {
            ids.extend(collection::read(d).expect("read").signatures.into_keys());
        }
        ids.retain(|id| !here.signatures.contains_key(id));
        ids.into_iter().collect()
    }

    /// The phone re-writes a record of an earlier collection into its current one, same id (as
    /// it does for a record it never heard acknowledged); with `city`, a client that changed
    /// the city on the way.
    fn rewrite(&mut self, phone: usize, pick: usize, city: Option<usize>) {
        let ids = self.earlier_ids(phone);
        let Some(id) = ids.get(pick % ids.len().max(1)).cloned() else {
            return;
        };
        let p = &mut self.phones[phone];
        let mut sig = p
            .earlier
            .iter()
            .rev()
            .find_map(|(d, _)| collection::signature(d, &id).expect("read"))
            .expect("an earlier copy");
        if let Some(c) = city {
            sig.city = CITIES[c % CITIES.len()].into();
        }
        collection::add_signature(&mut p.doc, &sig, &self.c.world.campaign).expect("re-write");
        p.signatures.push(id);
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        http(
            &self.server.base(),
            "POST",
            &format!("/api/v1/campaigns/{}/{path}", self.c.id),
            Some(&self.organizer),
            Some(body),
        )
    }

    fn strike(&mut self, pick: usize, reason: usize, revoke: bool) {
        let ids: Vec<String> = if revoke {
            self.struck.iter().cloned().collect()
        } else {
            self.synced_ids()
        };
        let Some(id) = ids.get(pick % ids.len().max(1)).cloned() else {
            return;
        };
        let reason = ["duplicate", "invalid", "withdrawn_consent", "test_entry"][reason % 4];
        let (s, v) = self.post(
            "strikes",
            json!({ "signature": id, "reason": reason, "revoked": revoke }),
        );
        assert_eq!(s, 200, "strike: {v}");
        if revoke {
            self.struck.remove(&id);
        } else {
            self.struck.insert(id);
        }
    }

    fn sheet(&self, serial: usize, count: u16, status: usize) {
        let status = ["collected", "counted", "delivered"][status % 3];
        let (s, v) = self.post(
            "sheets",
            json!({ "serial": format!("S-{serial}"), "count": count, "riding": "Spadina", "status": status }),
        );
        assert_eq!(s, 200, "sheet: {v}");
    }

    /// The collections as the server has them, every phone's whole chain.
    fn collections(&self) -> Vec<Collection> {
        self.phones
            .iter()
            .flat_map(|p| {
                p.earlier
                    .iter()
                    .map(|(_, s)| s.as_ref())
                    .chain([p.synced.as_ref()])
            })
            .flatten()
            .map(|d| collection::read(d).expect("read collection"))
            .collect()
    }

    fn review(&self) -> Review {
        let doc = stored_doc(&self.server.db(), &self.c.id, "review").expect("review doc");
        review::read(&doc).expect("read review")
    }

    /// The API's totals (admin, no suppression) for a query string.
    fn api_totals(&self, query: &str) -> Totals {
        let (s, v) = http(
            &self.server.base(),
            "GET",
            &format!("/api/v1/campaigns/{}/totals{query}", self.c.id),
            Some(&self.server.admin()),
            None,
        );
        assert_eq!(s, 200, "totals: {v}");
        let r: TotalsResponse = serde_json::from_value(v).expect("totals response");
        assert!(
            !r.suppression.applied,
            "the admin's totals are not suppressed"
        );
        Totals {
            signatures: r.signatures.expect("signatures"),
            unique_signers: r.unique_signers.expect("unique_signers"),
            struck: r.struck.expect("struck"),
            withdrawn: r.withdrawn.expect("withdrawn"),
            by_event: r.by_event,
            by_city: r.by_city,
            by_fsa: r.by_fsa,
            by_riding: r.by_riding,
            by_day: r.by_day,
            by_canvasser: r.by_canvasser,
            checkins: r.checkins,
            paper: r.paper,
        }
    }
}

/// A filter of the property test, applied to the API's query and to the reference's input.
#[derive(Debug, Clone)]
enum Filt {
    None,
    City(usize),
    Event,
    Fsa(usize),
    Range(u8, u8),
}

impl Filt {
    fn query(&self) -> String {
        match self {
            Filt::None => String::new(),
            Filt::City(i) => format!("?city={}", enc(CITIES[i % CITIES.len()])),
            Filt::Event => format!("?event={EVENT}"),
            Filt::Fsa(i) => format!(
                "?fsa={}",
                PEOPLE[i % PEOPLE.len()].1[..3].to_ascii_lowercase()
            ),
            Filt::Range(a, b) => {
                let (from, to) = self.range(*a, *b);
                format!("?from={}&to={}", enc(&rfc3339(from)), enc(&rfc3339(to)))
            }
        }
    }

    fn range(&self, a: u8, b: u8) -> (i64, i64) {
        let (a, b) = (i64::from(a % 4), i64::from(b % 4));
        let (a, b) = (a.min(b), a.max(b));
        (NOW - HOUR + a * DAY, NOW + HOUR + b * DAY)
    }

    /// The reference's input: the campaign's records, each once (merged across a phone's
    /// collections), narrowed like the API narrows them.
    fn apply(&self, campaign: &str, cols: &[Collection]) -> Vec<Collection> {
        let r = tally_core::totals::records(campaign, cols);
        let mut c = Collection {
            campaign: campaign.to_string(),
            owner: String::new(),
            signatures: r.signatures,
            checkins: r.checkins,
        };
        match self {
            Filt::None => {}
            Filt::City(i) => c
                .signatures
                .retain(|_, s| same_city(&s.city, CITIES[i % CITIES.len()])),
            Filt::Event => {
                c.signatures
                    .retain(|_, s| s.event.as_deref() == Some(EVENT));
                c.checkins.retain(|_, ci| ci.event == EVENT);
            }
            Filt::Fsa(i) => c
                .signatures
                .retain(|_, s| s.fsa == PEOPLE[i % PEOPLE.len()].1[..3]),
            Filt::Range(a, b) => {
                let (from, to) = self.range(*a, *b);
                c.signatures
                    .retain(|_, s| (from..to).contains(&s.collected_at));
                c.checkins.retain(|_, ci| (from..to).contains(&ci.at));
            }
        }
        vec![c]
    }
}

/// One step of a random history. Indices are taken modulo what exists, so every history runs.
#[derive(Debug, Clone)]
enum Op {
    Sign {
        phone: u8,
        person: u8,
        city: u8,
        event: bool,
        riding: u8,
        day: u8,
        late: bool,
    },
    Checkin {
        phone: u8,
        person: u8,
        walk_in: bool,
        day: u8,
    },
    Withdraw {
        phone: u8,
        pick: u8,
    },
    WithdrawCheckin {
        phone: u8,
        pick: u8,
    },
    Correct {
        phone: u8,
        pick: u8,
        person: u8,
        city: u8,
        riding: u8,
    },
    /// A phone signs, in its current collection, with the id of a struck signature of one of
    /// its earlier collections (another person this time): the strike is in the projection
    /// before the new row is.
    ReuseStruckId {
        phone: u8,
        pick: u8,
        person: u8,
    },
    /// The phone starts the next collection of its chain, re-writing its unacknowledged
    /// records there (with `again`, the acknowledged ones too).
    Roll {
        phone: u8,
        again: bool,
    },
    /// The phone re-writes a record of an earlier collection into its current one.
    Rewrite {
        phone: u8,
        pick: u8,
        city: Option<u8>,
    },
    Sync {
        phone: u8,
    },
    Strike {
        pick: u8,
        reason: u8,
    },
    Unstrike {
        pick: u8,
    },
    Sheet {
        serial: u8,
        count: u16,
        status: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>(), any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(phone, person, city, event, riding, day, late)| Op::Sign { phone, person, city, event, riding, day, late }),
        2 => (any::<u8>(), any::<u8>(), any::<bool>(), any::<u8>())
            .prop_map(|(phone, person, walk_in, day)| Op::Checkin { phone, person, walk_in, day }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(phone, pick)| Op::Withdraw { phone, pick }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(phone, pick)| Op::WithdrawCheckin { phone, pick }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(phone, pick, person, city, riding)| Op::Correct { phone, pick, person, city, riding }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(phone, pick, person)| Op::ReuseStruckId { phone, pick, person }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(phone, again)| Op::Roll { phone, again }),
        3 => (any::<u8>(), any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(phone, pick, city)| Op::Rewrite { phone, pick, city }),
        4 => any::<u8>().prop_map(|phone| Op::Sync { phone }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(pick, reason)| Op::Strike { pick, reason }),
        1 => any::<u8>().prop_map(|pick| Op::Unstrike { pick }),
        1 => (any::<u8>(), 0u16..=30, any::<u8>()).prop_map(|(serial, count, status)| Op::Sheet { serial, count, status }),
    ]
}

fn filt() -> impl Strategy<Value = Filt> {
    prop_oneof![
        Just(Filt::None),
        any::<u8>().prop_map(|i| Filt::City(i as usize)),
        Just(Filt::Event),
        any::<u8>().prop_map(|i| Filt::Fsa(i as usize)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Filt::Range(a, b)),
    ]
}

async fn run_op(s: &mut Scenario<'_>, op: &Op) {
    let n = s.phones.len();
    match *op {
        Op::Sign {
            phone,
            person,
            city,
            event,
            riding,
            day,
            late,
        } => {
            s.sign(
                phone as usize % n,
                person as usize,
                city as usize,
                event,
                riding as usize,
                Scenario::at(day, late),
                None,
            );
        }
        Op::Checkin {
            phone,
            person,
            walk_in,
            day,
        } => s.checkin(
            phone as usize % n,
            person as usize,
            walk_in,
            Scenario::at(day, false),
        ),
        Op::Withdraw { phone, pick } => s.withdraw(phone as usize % n, pick as usize),
        Op::WithdrawCheckin { phone, pick } => {
            s.withdraw_checkin(phone as usize % n, pick as usize)
        }
        Op::Correct {
            phone,
            pick,
            person,
            city,
            riding,
        } => s.correct(
            phone as usize % n,
            pick as usize,
            person as usize,
            city as usize,
            riding as usize,
        ),
        Op::ReuseStruckId {
            phone,
            pick,
            person,
        } => {
            let phone = phone as usize % n;
            let earlier = s.earlier_ids(phone);
            let struck: Vec<String> = s
                .struck
                .iter()
                .filter(|id| earlier.contains(id))
                .cloned()
                .collect();
            if let Some(id) = struck.get(pick as usize % struck.len().max(1)).cloned() {
                s.sign(
                    phone,
                    person as usize,
                    0,
                    true,
                    1,
                    Scenario::at(1, false),
                    Some(id),
                );
            }
        }
        Op::Roll { phone, again } => s.roll(phone as usize % n, again),
        Op::Rewrite { phone, pick, city } => {
            s.rewrite(phone as usize % n, pick as usize, city.map(usize::from))
        }
        Op::Sync { phone } => s.sync(phone as usize % n).await,
        Op::Strike { pick, reason } => s.strike(pick as usize, reason as usize, false),
        Op::Unstrike { pick } => s.strike(pick as usize, 0, true),
        Op::Sheet {
            serial,
            count,
            status,
        } => s.sheet(serial as usize % 4, count, status as usize),
    }
}

/// Compares two totals field by field, naming the first field that differs.
fn same_totals(api: &Totals, reference: &Totals, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(api.signatures, reference.signatures, "{}: signatures", what);
    prop_assert_eq!(
        api.unique_signers,
        reference.unique_signers,
        "{}: unique_signers",
        what
    );
    prop_assert_eq!(api.struck, reference.struck, "{}: struck", what);
    prop_assert_eq!(api.withdrawn, reference.withdrawn, "{}: withdrawn", what);
    prop_assert_eq!(&api.by_event, &reference.by_event, "{}: by_event", what);
    prop_assert_eq!(&api.by_city, &reference.by_city, "{}: by_city", what);
    // One cell per city, whatever the spellings (issue 13).
    let keys: BTreeSet<String> = api.by_city.keys().map(|c| city_key(c)).collect();
    prop_assert_eq!(
        keys.len(),
        api.by_city.len(),
        "{}: by_city {:?}",
        what,
        api.by_city
    );
    prop_assert_eq!(&api.by_fsa, &reference.by_fsa, "{}: by_fsa", what);
    prop_assert_eq!(&api.by_riding, &reference.by_riding, "{}: by_riding", what);
    prop_assert_eq!(&api.by_day, &reference.by_day, "{}: by_day", what);
    prop_assert_eq!(
        &api.by_canvasser,
        &reference.by_canvasser,
        "{}: by_canvasser",
        what
    );
    prop_assert_eq!(&api.checkins, &reference.checkins, "{}: checkins", what);
    prop_assert_eq!(&api.paper, &reference.paper, "{}: paper", what);
    prop_assert_eq!(api, reference, "{}", what);
    Ok(())
}

/// Random histories: after every sync or organizer write, and at the end with a random filter,
/// the API's totals equal `tally_core::totals::totals` over the documents the server holds.
#[test]
fn api_totals_equal_the_reference_over_random_histories() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Every case enrolls its phones from 127.0.0.1 on this one server: past the default
    // per-address enrollment limit (20 a minute) they would be refused.
    let server = rt.block_on(TestServer::start_with(|c| {
        c.max_enrollments_per_address = 100_000;
    }));
    let config = PropConfig {
        cases: 40,
        max_shrink_iters: 200,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..PropConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (1usize..=3, proptest::collection::vec(op(), 4..28), filt());
    let t0 = Instant::now();
    runner
        .run(&strategy, |(phones, ops, filter)| {
            rt.block_on(async {
                let mut s = Scenario::new(&server, phones).await;
                for (i, op) in ops.iter().enumerate() {
                    run_op(&mut s, op).await;
                    let observable = matches!(
                        op,
                        Op::Sync { .. }
                            | Op::Strike { .. }
                            | Op::Unstrike { .. }
                            | Op::Sheet { .. }
                    );
                    if observable {
                        let reference = tally_core::totals::totals(
                            &s.c.world.campaign,
                            &s.collections(),
                            &s.review(),
                        );
                        same_totals(
                            &s.api_totals(""),
                            &reference,
                            &format!("after step {i} ({op:?})"),
                        )?;
                    }
                }
                // Everything pushed, then the whole campaign and one filtered view.
                for p in 0..s.phones.len() {
                    s.sync(p).await;
                }
                let review = s.review();
                let cols = s.collections();
                let reference = tally_core::totals::totals(&s.c.world.campaign, &cols, &review);
                same_totals(&s.api_totals(""), &reference, "at the end")?;
                let filtered = tally_core::totals::totals(
                    &s.c.world.campaign,
                    &filter.apply(&s.c.id, &cols),
                    &review,
                );
                same_totals(
                    &s.api_totals(&filter.query()),
                    &filtered,
                    &format!("filtered by {filter:?}"),
                )?;
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("40 random histories checked in {:?}", t0.elapsed());
    rt.block_on(server.stop());
}

/// A phone's chain: records re-written with the same ids into its next collections (one with
/// another city, one acknowledged already, one withdrawn in one copy only) count once, in the
/// totals, the filtered totals and the export, whichever copy arrived first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_collections_counts_each_record_once() {
    let server = TestServer::start().await;
    let mut s = Scenario::new(&server, 1).await;
    let a = s.sign(0, 0, 0, true, 1, Scenario::at(0, false), None); // Toronto
    let b = s.sign(0, 1, 0, false, 0, Scenario::at(1, false), None);
    let c = s.sign(0, 2, 1, false, 0, Scenario::at(1, false), None);
    s.sync(0).await;
    // The next collection re-writes all three (acknowledgements the phone never heard), `a`
    // in Montréal, which sorts before Toronto: that copy speaks for it once both are there.
    s.roll(0, true);
    let p = &mut s.phones[0];
    let mut moved = collection::signature(&p.doc, &a).unwrap().unwrap();
    moved.city = CITIES[1].into();
    collection::correct_signature(&mut p.doc, &moved, &s.c.world.campaign).unwrap();
    collection::withdraw_signature(&mut p.doc, &c).unwrap();
    s.sync(0).await;
    // A third collection, with `b` again and a new one.
    s.roll(0, false);
    s.rewrite(0, 0, None);
    s.sign(0, 3, 2, true, 2, Scenario::at(2, false), None);
    s.sync(0).await;
    let cols = s.collections();
    assert_eq!(cols.len(), 3);
    let review = s.review();
    let reference = tally_core::totals::totals(&s.c.world.campaign, &cols, &review);
    assert_eq!((reference.signatures, reference.withdrawn), (3, 1));
    // `b` alone in Toronto: `a` counts in Montréal, `c` is withdrawn.
    assert_eq!(reference.by_city["Toronto"].signatures, 1, "{reference:?}");
    assert_eq!(reference.by_city["Montréal"].signatures, 1, "{reference:?}");
    assert_eq!(s.api_totals(""), reference);
    for filter in [Filt::City(0), Filt::City(1), Filt::Event, Filt::Range(0, 1)] {
        let expected =
            tally_core::totals::totals(&s.c.world.campaign, &filter.apply(&s.c.id, &cols), &review);
        assert_eq!(s.api_totals(&filter.query()), expected, "{filter:?}");
    }
    let (_, sealed) = http(
        &server.base(),
        "GET",
        &format!("/api/v1/campaigns/{}/sealed", s.c.id),
        Some(&server.admin()),
        None,
    );
    let listed: Vec<(&str, &str, bool)> = sealed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["city"].as_str().unwrap(),
                r["withdrawn"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed.contains(&(a.as_str(), CITIES[1], false)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(b.as_str(), CITIES[0], false)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(c.as_str(), CITIES[1], true)),
        "{listed:?}"
    );
    drop(s);
    server.stop().await;
}

/// A history with every kind of change, including a strike that reaches the projection before
/// the signature it strikes, a revoked strike, corrections and withdrawals.
async fn rich_history(s: &mut Scenario<'_>) {
    let a = s.sign(0, 0, 0, true, 1, Scenario::at(0, false), None);
    s.sign(0, 1, 0, false, 0, Scenario::at(0, true), None);
    s.sign(0, 0, 1, true, 2, Scenario::at(1, false), None); // a duplicate signer
    let b = s.sign(1, 2, 2, false, 0, Scenario::at(2, false), None);
    s.sign(1, 3, 0, true, 1, Scenario::at(2, true), None);
    s.checkin(0, 0, false, Scenario::at(0, false));
    s.checkin(1, 0, true, Scenario::at(0, false));
    s.checkin(1, 4, true, Scenario::at(1, false));
    s.sync(0).await;
    s.sync(1).await;
    s.strike(
        s.synced_ids().iter().position(|i| *i == a).unwrap(),
        0,
        false,
    );
    // The same id in the next collection of its phone's chain (another person this time),
    // synced after the strike; and a record re-written there, with another city.
    s.roll(0, false);
    s.sign(0, 5, 1, false, 0, Scenario::at(3, false), Some(a.clone()));
    s.rewrite(0, 0, Some(2));
    s.sync(0).await;
    s.sync(2).await;
    s.withdraw(1, 0);
    s.withdraw_checkin(1, 1);
    s.correct(0, 1, 4, 2, 2);
    s.sync(1).await;
    s.sync(0).await;
    s.strike(
        s.synced_ids().iter().position(|i| *i == b).unwrap(),
        1,
        false,
    );
    s.strike(0, 0, true); // revokes the strike of `a`
    s.sheet(1, 25, 0);
    s.sheet(2, 12, 2);
    s.sheet(1, 20, 1);
}

/// `tally reindex` (the real binary, offline on the stopped server's data folder) produces the
/// same rows, row for row, as the incremental path did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_reproduces_the_incremental_tables() {
    let server = TestServer::start().await;
    let mut s = Scenario::new(&server, 3).await;
    rich_history(&mut s).await;
    // A second campaign, so the rebuild keeps campaigns apart.
    let mut other = Scenario::new(&server, 1).await;
    other.sign(0, 0, 0, true, 1, Scenario::at(0, false), None);
    other.sync(0).await;
    let expected = tally_core::totals::totals(&s.c.world.campaign, &s.collections(), &s.review());
    assert_eq!(s.api_totals(""), expected);
    drop(s);
    drop(other);
    let data = stop_keeping_data(server).await;
    let copy = data.path();
    let dump = |path: &Path| {
        let store = Store::open_read_only(&path.join(tally_server::DB_FILE)).expect("open");
        store.read(|r| r.projection_dump()).expect("dump")
    };
    let before = dump(copy);
    assert!(before["signatures"].len() >= 6, "{before:?}");
    assert!(!before["agg_members"].is_empty());
    let out = std::process::Command::new(binary("tally"))
        .args(["reindex", "--data"])
        .arg(copy)
        .output()
        .expect("run tally reindex");
    assert!(
        out.status.success(),
        "tally reindex failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("reindexed"), "{said}");
    let after = dump(copy);
    for (table, rows) in &before {
        assert_eq!(rows, &after[table], "table {table} differs after reindex");
    }
    // The help says it works offline, with the server stopped.
    let help = std::process::Command::new(binary("tally"))
        .args(["reindex", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("offline") && help.contains("stop the server"),
        "{help}"
    );
}

/// Stops the server gracefully and keeps its data folder (the server's own is removed with it).
async fn stop_keeping_data(mut server: TestServer) -> tempfile::TempDir {
    let data = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("tempdir"));
    server.stop().await;
    data
}

fn status_and_error(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let (s, v) = http(&server.base(), method, path, token, body);
    let msg = v["error"].as_str().unwrap_or_default().to_string();
    (s, msg)
}

/// Every organizer endpoint refuses a missing token (401), a canvasser's token (403), an
/// unknown campaign (404) and bad filters or bodies (400), each with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_with_the_right_status_and_a_message() {
    let server = TestServer::start().await;
    let mut s = Scenario::new(&server, 1).await;
    s.sign(0, 0, 0, true, 0, Scenario::at(0, false), None);
    s.sync(0).await;
    let id = s.c.id.clone();
    let canvasser = s.phones[0].token.clone();
    let admin = server.admin();
    let unknown = new_id().to_string();
    let strike = json!({ "signature": "sig1", "reason": "duplicate" });
    let sheet = json!({ "serial": "S-1", "count": 3 });
    let event =
        json!({ "name": "March", "city": "Toronto", "starts_at": "2026-07-01T18:00:00-04:00" });
    let endpoints: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "totals", None),
        ("GET", "totals/stream", None),
        ("GET", "sealed", None),
        ("POST", "strikes", Some(strike.clone())),
        ("POST", "sheets", Some(sheet.clone())),
        ("POST", "events", Some(event.clone())),
    ];
    for (method, tail, body) in &endpoints {
        let path = format!("/api/v1/campaigns/{id}/{tail}");
        let (st, msg) = status_and_error(&server, method, &path, None, body.clone());
        assert_eq!(st, 401, "{method} {tail} without a token: {msg}");
        assert!(msg.contains("Authorization"), "{msg}");
        let (st, msg) = status_and_error(&server, method, &path, Some("tly_nope"), body.clone());
        assert_eq!(st, 401, "{method} {tail} with an unknown token: {msg}");
        assert!(!msg.is_empty());
        let (st, msg) = status_and_error(&server, method, &path, Some(&canvasser), body.clone());
        assert_eq!(st, 403, "{method} {tail} as a canvasser: {msg}");
        assert!(msg.contains("organizer"), "{msg}");
        let other = format!("/api/v1/campaigns/{unknown}/{tail}");
        let (st, msg) = status_and_error(&server, method, &other, Some(&admin), body.clone());
        assert_eq!(st, 404, "{method} {tail} of an unknown campaign: {msg}");
        assert!(msg.contains("GET /api/v1/campaigns"), "{msg}");
        // An organizer of another campaign is refused before anything is said about it.
        let (st, _) = status_and_error(&server, method, &other, Some(&s.organizer), body.clone());
        assert_eq!(
            st, 403,
            "{method} {tail} of another campaign as an organizer"
        );
    }

    // Bad filters, on the totals and on the stream.
    let bad_filters: &[(&str, &str)] = &[
        ("event=nope", "event"),
        ("from=yesterday", "from"),
        ("to=2025-13-01T00:00:00Z", "to"),
        (
            "from=2025-06-02T00:00:00Z&to=2025-06-01T00:00:00Z",
            "from must be before to",
        ),
        ("fsa=123", "fsa"),
        ("fsa=M5", "fsa"),
        ("city=", "city"),
        ("city=%01", "city"),
        ("colour=red", "colour"),
        ("suppress=maybe", "suppress"),
        ("event=rally1&event=rally1", "twice"),
    ];
    for tail in ["totals", "totals/stream"] {
        for (q, needle) in bad_filters {
            let path = format!("/api/v1/campaigns/{id}/{tail}?{q}");
            for token in [&admin, &s.organizer] {
                let (st, msg) = status_and_error(&server, "GET", &path, Some(token), None);
                assert_eq!(st, 400, "{tail}?{q}: {msg}");
                assert!(
                    msg.contains(needle),
                    "{tail}?{q}: {msg:?} should mention {needle:?}"
                );
            }
        }
        // An organizer cannot turn suppression off; the admin can turn it on.
        let path = format!("/api/v1/campaigns/{id}/{tail}?suppress=false");
        let (st, msg) = status_and_error(&server, "GET", &path, Some(&s.organizer), None);
        assert_eq!(st, 403, "{msg}");
        assert!(msg.contains("suppression"), "{msg}");
    }
    let path = format!("/api/v1/campaigns/{id}/totals?suppress=true&fsa=m5v&city=Toronto");
    let (st, v) = http(&server.base(), "GET", &path, Some(&admin), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["suppression"]["applied"], true);
    assert_eq!(v["filters"]["fsa"], "M5V");

    // Bad bodies.
    let bad_bodies: &[(&str, Value, &str)] = &[
        ("strikes", json!({ "signature": "sig1" }), "reason"),
        (
            "strikes",
            json!({ "signature": "sig1", "reason": "bored" }),
            "reason",
        ),
        (
            "strikes",
            json!({ "signature": "no such/id", "reason": "invalid" }),
            "signature",
        ),
        (
            "sheets",
            json!({ "serial": "S-1", "count": 20000 }),
            "count",
        ),
        (
            "sheets",
            json!({ "serial": "S-1", "count": 2, "status": "lost" }),
            "status",
        ),
        ("sheets", json!({ "count": 2 }), "serial"),
        (
            "events",
            json!({ "name": "", "city": "Toronto", "starts_at": 1_750_000_000_000i64 }),
            "name",
        ),
        (
            "events",
            json!({ "name": "Old", "city": "Toronto", "starts_at": "2019-01-01T00:00:00Z" }),
            "starts_at",
        ),
        (
            "events",
            json!({ "name": "March", "city": "Toronto", "starts_at": "soon" }),
            "RFC 3339",
        ),
    ];
    for (tail, body, needle) in bad_bodies {
        let path = format!("/api/v1/campaigns/{id}/{tail}");
        let (st, msg) = status_and_error(
            &server,
            "POST",
            &path,
            Some(&s.organizer),
            Some(body.clone()),
        );
        assert_eq!(st, 400, "{tail} {body}: {msg}");
        assert!(
            msg.contains(needle),
            "{tail} {body}: {msg:?} should mention {needle:?}"
        );
    }
    // A well-formed strike of a signature the server does not have.
    let path = format!("/api/v1/campaigns/{id}/strikes");
    let (st, msg) = status_and_error(
        &server,
        "POST",
        &path,
        Some(&s.organizer),
        Some(json!({ "signature": "sig999", "reason": "invalid" })),
    );
    assert_eq!(st, 404, "{msg}");
    assert!(msg.contains("sealed"), "{msg}");
    // The good ones go through and show in the totals.
    let (st, v) = s.post("strikes", strike);
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post("sheets", sheet);
    assert_eq!(st, 200, "{v}");
    let t = s.api_totals("");
    assert_eq!((t.signatures, t.struck, t.paper.signatures), (0, 1, 3));
    server.stop().await;
}

/// A city with 3 signatures is hidden from an organizer (with the cell that would give it away
/// by subtraction) and shown to the admin; the answer says cells were suppressed. The totals
/// document, which canvassers read, is suppressed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cells_are_hidden_from_organizers_and_shown_to_the_admin() {
    let server = TestServer::start().await;
    let mut s = Scenario::new(&server, 1).await;
    // Toronto: 6 distinct people; Montréal: 5; Smallville: 3.
    let names = [
        "Ada Lovelace",
        "Grace Hopper",
        "Katherine Johnson",
        "Mary Jackson",
        "Dorothy Vaughan",
        "Annie Easley",
        "Hedy Lamarr",
        "Radia Perlman",
        "Frances Allen",
        "Barbara Liskov",
        "Shafi Goldwasser",
        "Margaret Hamilton",
        "Evelyn Berezin",
        "Jean Bartik",
    ];
    let mut k = 0;
    for (city, n) in [(0usize, 6usize), (1, 5), (2, 3)] {
        for _ in 0..n {
            let form = SignatureForm {
                name: names[k].into(),
                postal_code: "M5V 2T6".into(),
                city: CITIES[city].into(),
                consent_contact: false,
                ..Default::default()
            };
            k += 1;
            let sig = form
                .prepare(&TakenBy {
                    campaign: &s.c.world.campaign,
                    key: &s.c.world.key,
                    canvasser: &s.phones[0].device,
                    now: NOW,
                    id: format!("small{k}"),
                })
                .expect("form");
            collection::add_signature(&mut s.phones[0].doc, &sig, &s.c.world.campaign)
                .expect("add");
        }
    }
    s.sync(0).await;
    let get = |token: &str, query: &str| {
        let (st, v) = http(
            &server.base(),
            "GET",
            &format!("/api/v1/campaigns/{}/totals{query}", s.c.id),
            Some(token),
            None,
        );
        assert_eq!(st, 200, "{v}");
        v
    };
    let admin = get(&server.admin(), "");
    assert_eq!(admin["by_city"]["Smallville"]["signatures"], 3, "{admin}");
    assert_eq!(admin["suppression"]["applied"], false);
    let org = get(&s.organizer, "");
    assert!(org["by_city"].get("Smallville").is_none(), "{org}");
    // Smallville alone could be recovered as 14 - 6 - 5: Montréal (the next smallest) goes too.
    assert!(org["by_city"].get("Montréal").is_none(), "{org}");
    assert_eq!(org["by_city"]["Toronto"]["signatures"], 6, "{org}");
    assert_eq!(
        org["signatures"], 14,
        "the campaign's headline is never hidden"
    );
    assert_eq!(org["suppression"]["applied"], true);
    assert_eq!(org["suppression"]["threshold"], 5);
    assert_eq!(org["suppression"]["hidden"]["by_city"], 2, "{org}");
    // The hidden cells together, which the headline minus the shown cells gives anyway.
    assert_eq!(org["suppression"]["other"]["by_city"], 8, "{org}");
    assert!(
        org["suppression"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("fewer than 5")),
        "{org}"
    );
    // A filter that narrows to Smallville would single people out: its headline is hidden too.
    let small = get(&s.organizer, "?city=Smallville");
    assert!(small["signatures"].is_null(), "{small}");
    assert_eq!(small["suppression"]["headline_hidden"], true);
    let small_admin = get(&server.admin(), "?city=Smallville");
    assert_eq!(small_admin["signatures"], 3);
    // Nor can a filter drill into the complement: `?city=Montréal` answered 5, and
    // Smallville was 14 - 6 - 5 again. Any spelling of it is withheld; a shown city is not.
    for q in ["?city=Montr%C3%A9al", "?city=MONTREAL"] {
        let drilled = get(&s.organizer, q);
        assert!(drilled["signatures"].is_null(), "{q}: {drilled}");
        assert_eq!(drilled["suppression"]["headline_hidden"], true, "{q}");
        assert_eq!(drilled["by_fsa"], json!({}), "{q}: {drilled}");
    }
    let shown = get(&s.organizer, "?city=toronto");
    assert_eq!(shown["signatures"], 6, "{shown}");
    // A city where nobody signed looks like a small one: a filter cannot probe for signers.
    let nobody = get(&s.organizer, "?city=Vancouver");
    assert!(nobody["signatures"].is_null(), "{nobody}");
    // A window drawn around one signature's minute is widened to whole days for organizers
    // (in the campaign's time zone), so it cannot single that signature out by subtraction;
    // the answer says which window it counted. The admin's window is as asked.
    for (from, to) in [
        ("2025-06-15T13:37:00Z", "2025-06-15T13:38:00Z"),
        ("2025-06-15T00:00:01-04:00", "2025-06-16T23:59:59-04:00"),
        ("2025-06-14T23:59:59.999Z", "2025-06-15T00:00:00.001Z"),
    ] {
        let q = format!("?from={}&to={}", enc(from), enc(to));
        let ms = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        };
        let tz = &s.c.world.campaign.timezone;
        let want = |t: &str, up: bool| {
            chrono::DateTime::from_timestamp_millis(tally_core::totals::snap_to_day(ms(t), tz, up))
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let org = get(&s.organizer, &q);
        assert_eq!(org["filters"]["from"], want(from, false), "{org}");
        assert_eq!(org["filters"]["to"], want(to, true), "{org}");
        let span = ms(org["filters"]["to"].as_str().unwrap())
            - ms(org["filters"]["from"].as_str().unwrap());
        assert!(span >= 23 * 3_600_000, "{org}");
        let admin = get(&server.admin(), &q);
        assert_eq!(
            ms(admin["filters"]["from"].as_str().unwrap()),
            ms(from),
            "{admin}"
        );
    }
    // The admin may ask for suppression.
    let asked = get(&server.admin(), "?suppress=true");
    assert!(asked["by_city"].get("Smallville").is_none(), "{asked}");

    // The totals document canvassers read holds no area breakdown at all: a canvasser could pad
    // a victim's city past the threshold with invented signers (issue 11.5).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = stored_doc(&server.db(), &s.c.id, "totals").expect("totals doc");
        if let Ok(Some((t, _))) = tally_core::totals_doc::read(&doc)
            && t.signatures == 14
        {
            assert!(t.by_city.is_empty(), "{:?}", t.by_city);
            assert!(t.by_fsa.is_empty() && t.by_day.is_empty() && t.by_canvasser.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "totals document not written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// Reads a Server-Sent Events stream on a thread; sends (event, data) pairs, then `None` at the
/// end of the stream.
fn subscribe(url: &str) -> (u16, String, mpsc::Receiver<Option<(String, Value)>>) {
    let res = ureq::get(url).call().expect("stream");
    let status = res.status();
    let ctype = res.header("content-type").unwrap_or_default().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(res.into_reader());
        let mut event = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send(Some((event.clone(), v))).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(None);
    });
    (status, ctype, rx)
}

/// A subscriber of the live stream (a browser's EventSource: token in the query) sees the count
/// change after a phone syncs; a burst of syncs is coalesced; revoking the token ends the
/// stream; the server still shuts down promptly with a stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_follows_phones_as_they_sync() {
    let server = TestServer::start().await;
    let mut s = Scenario::new(&server, 1).await;
    let url = format!(
        "{}/api/v1/campaigns/{}/totals/stream?token={}",
        server.base(),
        s.c.id,
        s.organizer
    );
    let (status, ctype, rx) = subscribe(&url);
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let next = |rx: &mpsc::Receiver<Option<(String, Value)>>, secs: u64| {
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("an event in time")
            .expect("the stream is open")
    };
    let (ev, first) = next(&rx, 10);
    assert_eq!(ev, "totals");
    assert_eq!(first["signatures"], 0, "{first}");
    assert_eq!(first["suppression"]["applied"], true);

    s.sign(0, 0, 0, true, 0, Scenario::at(0, false), None);
    let t0 = Instant::now();
    s.sync(0).await;
    let (_, after) = next(&rx, 10);
    assert_eq!(after["signatures"], 1, "{after}");
    eprintln!("the stream showed the sync after {:?}", t0.elapsed());

    // Ten syncs in a burst: far fewer than ten events, and the last one has them all.
    let t0 = Instant::now();
    for i in 0..10 {
        s.sign(0, i % 6, 1, false, 0, Scenario::at(1, false), None);
        s.sync(0).await;
    }
    let mut events = 0;
    let mut last = Value::Null;
    while last["signatures"] != 11 {
        last = next(&rx, 10).1;
        events += 1;
    }
    let elapsed = t0.elapsed();
    let most = (elapsed.as_millis() / 250) as usize + 2;
    assert!(
        events <= most,
        "{events} events in {elapsed:?}: not coalesced to at most 4 a second"
    );

    // Revoking the organizer's device ends its stream.
    let (st, v) = http(
        &server.base(),
        "GET",
        "/api/v1/devices",
        Some(&server.admin()),
        None,
    );
    assert_eq!(st, 200);
    let org_id = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["role"] == "organizer" && d["campaign"] == s.c.id.as_str())
        .expect("organizer device")["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = http(
        &server.base(),
        "POST",
        &format!("/api/v1/devices/{org_id}/revoke"),
        Some(&server.admin()),
        Some(json!({})),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["connections_closed"].as_u64() >= Some(1), "{v}");
    let end = loop {
        match rx
            .recv_timeout(Duration::from_secs(3))
            .expect("the stream ends")
        {
            None => break true,
            Some(_) => continue,
        }
    };
    assert!(end);

    // An admin stream stays open through shutdown, which must not wait for it.
    let url = format!(
        "{}/api/v1/campaigns/{}/totals/stream?token={}",
        server.base(),
        s.c.id,
        server.admin()
    );
    let (_, _, rx) = subscribe(&url);
    let (_, v) = next(&rx, 10);
    assert_eq!(v["signatures"], 11);
    assert_eq!(v["suppression"]["applied"], false);
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown with a stream open");
    assert!(
        matches!(rx.recv_timeout(Duration::from_secs(5)), Ok(None)),
        "the stream ends at shutdown"
    );
}

/// The OpenAPI document lists exactly the routes the router serves: every (method, path) of
/// one is in the other, each documented path answers its documented methods and refuses the
/// others with 405, and the totals and sealed answers have the documented fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_router() {
    let server = TestServer::start().await;
    let (st, doc) = http(&server.base(), "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let methods = ["get", "post", "put", "delete", "patch"];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (m, _) in item.as_object().expect("path item") {
            assert!(methods.contains(&m.as_str()), "{m} {path}");
            documented.insert((m.clone(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = tally_server::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "the OpenAPI document and the router disagree"
    );
    // The router answers every documented method (not with its no-route 404 or a 405) and
    // refuses every other method with 405.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{id}", "x");
        for m in methods {
            let (st, v) = http(&server.base(), &m.to_uppercase(), &concrete, None, None);
            let msg = v["error"].as_str().unwrap_or_default();
            if documented.contains(&(m.to_string(), path.clone())) {
                assert!(
                    st != 405 && !msg.starts_with("no route"),
                    "{m} {path} is documented but not served ({st} {msg})"
                );
            } else {
                assert_eq!(st, 405, "{m} {path} is served but not documented: {msg}");
            }
        }
    }
    let (st, v) = http(&server.base(), "GET", "/api/v1/nothing", None, None);
    assert_eq!(st, 404);
    assert!(v["error"].as_str().unwrap().contains("openapi.json"));

    // The answers carry exactly the documented fields.
    let s = Scenario::new(&server, 0).await;
    let props = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .expect(name)
            .keys()
            .cloned()
            .collect()
    };
    let (_, totals) = http(
        &server.base(),
        "GET",
        &format!("/api/v1/campaigns/{}/totals", s.c.id),
        Some(&server.admin()),
        None,
    );
    let keys: BTreeSet<String> = totals.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, props("Totals"));
    let keys: BTreeSet<String> = totals["suppression"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, props("Suppression"));
    let keys: BTreeSet<String> = totals["filters"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, props("Filters"));
    let mut s = s;
    s.add_phone().await;
    s.sign(0, 0, 0, true, 0, Scenario::at(0, false), None);
    s.sync(0).await;
    let (_, sealed) = http(
        &server.base(),
        "GET",
        &format!("/api/v1/campaigns/{}/sealed", s.c.id),
        Some(&server.admin()),
        None,
    );
    let keys: BTreeSet<String> = sealed[0].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, props("SealedRecord"));
    let (_, strike) = s.post(
        "strikes",
        json!({ "signature": "sig1", "reason": "invalid" }),
    );
    let keys: BTreeSet<String> = strike.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, props("Strike"));
    server.stop().await;
}

/// After a run that exercises sync, strikes, sheets, totals, the stream and the export, the
/// database file and its WAL hold none of the signers' names, emails, phones or streets, in any
/// case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_never_holds_a_signers_name_or_email() {
    let server = TestServer::start().await;
    let mut s = Scenario::new(&server, 3).await;
    rich_history(&mut s).await;
    for p in 0..3 {
        s.sync(p).await;
    }
    let _ = s.api_totals("");
    let _ = http(
        &server.base(),
        "GET",
        &format!("/api/v1/campaigns/{}/sealed", s.c.id),
        Some(&s.organizer),
        None,
    );
    let (_, _, rx) = subscribe(&format!(
        "{}/api/v1/campaigns/{}/totals/stream?token={}",
        server.base(),
        s.c.id,
        s.organizer
    ));
    rx.recv_timeout(Duration::from_secs(10)).expect("event");
    tokio::time::sleep(Duration::from_millis(2500)).await; // totals documents written (2 s)
    let mut needles: Vec<String> = Vec::new();
    for (name, _, email) in PEOPLE {
        for v in [name.to_string(), email.to_string()] {
            needles.push(v.clone());
            needles.push(v.to_lowercase());
            needles.push(v.to_uppercase());
        }
    }
    needles.push("Rue des Pins".into());
    needles.push("416 555 0100".into());
    let search = |when: &str| {
        let mut searched = 0;
        for file in ["tally.db", "tally.db-wal"] {
            let Ok(bytes) = std::fs::read(server_dir(&s).join(file)) else {
                continue;
            };
            searched += bytes.len();
            for n in &needles {
                assert!(
                    !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                    "{when}: {file} contains {n:?}"
                );
            }
        }
        assert!(searched > 0, "{when}: no database file found");
        searched
    };
    let live = search("while running");
    drop(s);
    let data = stop_keeping_data(server).await;
    let copy = data.path();
    let mut stopped = 0;
    for file in ["tally.db", "tally.db-wal"] {
        if let Ok(bytes) = std::fs::read(copy.join(file)) {
            stopped += bytes.len();
            for n in &needles {
                assert!(
                    !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                    "after stopping: {file} contains {n:?}"
                );
            }
        }
    }
    assert!(live > 0 && stopped > 0);
}

fn server_dir(s: &Scenario<'_>) -> std::path::PathBuf {
    s.server.dir.path().to_path_buf()
}
