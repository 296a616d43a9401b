//! Erasure by crypto-shredding (issue 15), with the real `tally serve`, `tally-device` and
//! `tally` binaries: a phone signs (sealed v2), syncs and uploads the record's key; the export
//! opens the name; `tally erase` deletes the key, and then the same organizer identity with
//! the full database cannot open the record, the key's bytes are in neither the database file
//! nor its WAL, the totals stop counting it and a later upload of its key is refused. A copy of
//! the database taken before the erasure still opens it (docs/security.md, "Erasure"). Erasure
//! by name and postal code takes every record with that duplicate token and no other. The
//! hostile shapes: a device squatting another's record id, oversized and too many keys,
//! another campaign's record, and tokens without the right calling the erase or key-read
//! endpoints.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde_json::{Value, json};
use tally_core::seal::{self, RecordKey};
use tally_server::organizer_cli::{ROW_ERASED, ROW_KEY_MISSING};
use tally_tests::server::Server as _;
use tally_tests::{Organizer, Phone, ServerProcess};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A CSV's rows as maps from column to value (no quoted commas in these tests' values).
fn csv_rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("CSV header").split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

/// `tally export --all` to `out`: the rows by record id.
fn export_all(
    org: &Organizer,
    campaign: &str,
    out: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    org.run(&[
        "export",
        "--campaign",
        campaign,
        "--identity",
        "organizer.age",
        "--out",
        out,
        "--all",
    ])
    .ok();
    let csv = std::fs::read_to_string(org.dir.join(out)).unwrap();
    csv_rows(&csv)
        .into_iter()
        .map(|r| (r["id"].clone(), r))
        .collect()
}

/// An HTTP call with a bearer token: (status, JSON answer).
fn call(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let req = ureq::request(method, url).set("Authorization", &format!("Bearer {token}"));
    let res = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    let (status, r) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(s, r)) => (s, r),
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let text = r.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Every byte of the server's database file, its WAL and its shared-memory index.
fn database_bytes(data: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["tally.db", "tally.db-wal", "tally.db-shm"] {
        if let Ok(b) = std::fs::read(data.join(name)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The wrapped keys the server holds for a record, read from (a copy of) its database.
fn keys_in(db: &Path, record: &str) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT wrapped FROM record_keys WHERE record = ?1")
        .unwrap();
    stmt.query_map([record], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Record keys a phone still holds, from its SQLite file.
fn phone_keys(phone: &Phone) -> i64 {
    let conn = rusqlite::Connection::open(phone.home.join("tally-device.sqlite3")).unwrap();
    conn.query_row(
        "SELECT count(*) FROM record_keys WHERE length(wrapped) > 0",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn identity(org: &Organizer) -> age::x25519::Identity {
    seal::parse_identity(&std::fs::read_to_string(org.dir.join("organizer.age")).unwrap()).unwrap()
}

struct World {
    dir: tempfile::TempDir,
    server: ServerProcess,
    org: Organizer,
    campaign: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    World {
        dir,
        server,
        org,
        campaign,
    }
}

impl World {
    fn phone(&self, name: &str) -> Phone {
        let phone = Phone::new(&self.dir.path().join(name));
        phone.enroll(&self.org.invite(&self.campaign), name);
        phone
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base())
    }
}

#[test]
fn an_erased_record_cannot_be_opened_again_and_its_key_is_gone_from_the_file_and_the_wal() {
    let w = world();
    let c = &w.campaign;
    let phone = w.phone("amina");
    // Offline first: the key waits on the phone, counted not yet safe.
    let amara = phone.sign("Amara Okafor", "M5V 2T6", "Toronto", &[]);
    let bo = phone.sign("Bo Chen", "M4C 1B5", "Toronto", &[]);
    assert_eq!(
        phone_keys(&phone),
        2,
        "the phone keeps both keys until they are safe"
    );
    phone.sync(30).ok();
    assert_eq!(
        phone_keys(&phone),
        0,
        "safe: change acknowledged and key stored, so dropped"
    );
    let status = phone.status();
    assert_eq!(status["counts"]["keys_not_on_server"], 0, "{status}");
    assert_eq!(status["counts"]["signatures_pending"], 0, "{status}");

    let sealing = |w: &World| {
        w.org
            .run(&["campaign", "sealing", "--campaign", &w.campaign, "--json"])
            .ok()
            .json()
    };
    assert_eq!(
        sealing(&w),
        json!({"signatures": 2, "v2": 2, "key_missing": 0, "v1": 0, "erased": 0})
    );
    // The export opens both names (the sealed bytes are v2, opened with the uploaded keys).
    let rows = export_all(&w.org, c, "before.csv");
    assert_eq!(rows[&amara]["name"], "Amara Okafor");
    assert_eq!(rows[&bo]["name"], "Bo Chen");
    let sealed: Vec<Value> = serde_json::from_value(
        call(
            "GET",
            &w.url(&format!("/api/v1/campaigns/{c}/sealed")),
            &w.server.admin(),
            None,
        )
        .1,
    )
    .unwrap();
    let amara_sealed = hex_of(&sealed, &amara);
    assert_eq!(seal::version(&amara_sealed), Some(2));
    let db = w.server.data.join("tally.db");
    let wrapped = keys_in(&db, &amara);
    assert_eq!(wrapped.len(), 1);
    assert!(contains(&database_bytes(&w.server.data), &wrapped[0]));

    // A copy of the database taken after the sync, before the erasure (as a backup would be).
    let copy = w.dir.path().join("backup.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();

    let run = w
        .org
        .run(&["erase", "--campaign", c, "--record", &amara])
        .ok();
    assert!(run.stdout.contains("erased 1 signature"), "{run}");
    assert!(run.stdout.contains("1 wrapped key deleted"), "{run}");

    // The full database: no key for the record, and none of its bytes in the file or the WAL.
    assert!(keys_in(&db, &amara).is_empty());
    let bytes = database_bytes(&w.server.data);
    assert!(
        !contains(&bytes, &wrapped[0]),
        "the wrapped key's bytes are still in the database or its WAL"
    );
    // So the same organizer identity cannot open it: no candidate key is left anywhere.
    let id = identity(&w.org);
    let opened_from_db = keys_in(&db, &amara)
        .iter()
        .filter_map(|k| RecordKey::unwrap(&id, k).ok())
        .any(|k| seal::open_v2(&k, &amara, &amara_sealed).is_ok());
    assert!(!opened_from_db);
    // The export shows it erased (no name), never fails; Bo still opens.
    let rows = export_all(&w.org, c, "after.csv");
    assert_eq!(rows[&amara]["name"], ROW_ERASED);
    assert_eq!(rows[&amara]["postal_code"], "");
    assert_eq!(rows[&amara]["counted"], "false");
    assert_eq!(rows[&bo]["name"], "Bo Chen");
    let sealed: Vec<Value> = serde_json::from_value(
        call(
            "GET",
            &w.url(&format!("/api/v1/campaigns/{c}/sealed")),
            &w.server.admin(),
            None,
        )
        .1,
    )
    .unwrap();
    let after = sealed.iter().find(|r| r["id"] == amara.as_str()).unwrap();
    assert_eq!(
        (after["erased"].clone(), after["sealed"].clone()),
        (json!(true), json!(""))
    );
    // Totals stop counting it.
    let t = w.org.totals(c);
    assert_eq!(t["signatures"], 1, "{t}");
    assert_eq!(
        sealing(&w),
        json!({"signatures": 2, "v2": 1, "key_missing": 0, "v1": 0, "erased": 1})
    );
    let human = w.org.run(&["campaign", "sealing", "--campaign", c]).ok();
    assert!(human.stdout.contains("0 sealed v1"), "{human}");

    // The copy taken before: it still holds the wrapped key, so it opens (docs/security.md).
    let old = keys_in(&copy, &amara);
    assert_eq!(old.len(), 1);
    let key = RecordKey::unwrap(&id, &old[0]).unwrap();
    assert_eq!(
        seal::open_v2(&key, &amara, &amara_sealed).unwrap().name,
        "Amara Okafor"
    );

    // The phone's later syncs do not bring the key back: a phone that still held it (a crash
    // before dropping it, put back here in its file) has it refused as erased, and drops it.
    {
        let conn = rusqlite::Connection::open(phone.home.join("tally-device.sqlite3")).unwrap();
        conn.execute(
            "INSERT INTO record_keys (record_id, wrapped, stored) VALUES (?1, ?2, 0)",
            rusqlite::params![amara, wrapped[0]],
        )
        .unwrap();
    }
    let run = phone.sync(30).ok();
    assert!(run.stdout.contains("1 erased by an organizer"), "{run}");
    // The phone keeps only the mark (no key bytes) and says so.
    let conn = rusqlite::Connection::open(phone.home.join("tally-device.sqlite3")).unwrap();
    let left: Vec<u8> = conn
        .query_row(
            "SELECT wrapped FROM record_keys WHERE record_id = ?1",
            [&amara],
            |r| r.get(0),
        )
        .unwrap();
    assert!(left.is_empty());
    drop(conn);
    assert_eq!(phone.status()["erased"], json!([amara]));
    let human = phone.run(&["status"]).ok();
    assert!(human.stdout.contains("Erased by an organizer"), "{human}");
    assert_eq!(phone.status()["counts"]["keys_not_on_server"], 0);
    assert!(
        keys_in(&db, &amara).is_empty(),
        "the sync brought the key back"
    );
    // And straight from the phone's token: refused, erased.
    let (s, v) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &phone.token(),
        Some(&json!({"keys": [{"record": amara, "wrapped": B64.encode(&wrapped[0])}]})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["reason"], "erased", "{v}");
    assert!(keys_in(&db, &amara).is_empty());

    // One audit entry, record ids only.
    let (_, audit) = call(
        "GET",
        &w.url("/api/v1/audit?action=record.erase"),
        &w.server.admin(),
        None,
    );
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"], amara.as_str());
    assert_eq!(entries[0]["result"], "ok");
    // Erasing again is harmless and leaves it erased.
    w.org
        .run(&["erase", "--campaign", c, "--record", &amara])
        .ok();
    assert_eq!(w.org.totals(c)["signatures"], 1);
}

fn hex_of(sealed: &[Value], id: &str) -> Vec<u8> {
    let r = sealed
        .iter()
        .find(|r| r["id"] == id)
        .expect("the record in the export");
    hex::decode(r["sealed"].as_str().unwrap()).unwrap()
}

#[test]
fn erasing_by_name_and_postal_code_takes_every_record_of_that_person_and_no_other() {
    let w = world();
    let c = &w.campaign;
    let amina = w.phone("amina");
    let bo = w.phone("bo");
    let a1 = amina.sign("Amara Okafor", "M5V 2T6", "Toronto", &[]);
    let a2 = bo.sign("amara  OKAFOR", "m5v2t6", "Toronto", &[]);
    let other_code = amina.sign("Amara Okafor", "M5V 2T7", "Toronto", &[]);
    let other_name = bo.sign("Amara Okafor-Lindqvist", "M5V 2T6", "Toronto", &[]);
    amina.sync(30).ok();
    bo.sync(30).ok();
    let run = w
        .org
        .run(&[
            "erase",
            "--campaign",
            c,
            "--name",
            "AMARA okafor",
            "--postal-code",
            "M5V2T6",
            "--json",
        ])
        .ok();
    let v = run.json();
    let mut erased: Vec<String> = serde_json::from_value(v["erased"].clone()).unwrap();
    erased.sort();
    let mut want = vec![a1.clone(), a2.clone()];
    want.sort();
    assert_eq!(erased, want, "{run}");
    assert_eq!(v["keys_deleted"], 2);
    assert_eq!(v["v1"], json!([]));
    let rows = export_all(&w.org, c, "after.csv");
    assert_eq!(rows[&a1]["name"], ROW_ERASED);
    assert_eq!(rows[&a2]["name"], ROW_ERASED);
    assert_eq!(rows[&other_code]["name"], "Amara Okafor");
    assert_eq!(rows[&other_name]["name"], "Amara Okafor-Lindqvist");
    let t = w.org.totals(c);
    assert_eq!(t["signatures"], 2, "{t}");
    // A person with no signature: nothing erased, said so.
    let run = w.org.run(&[
        "erase",
        "--campaign",
        c,
        "--name",
        "Nobody Here",
        "--postal-code",
        "M5V2T6",
    ]);
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stderr.contains("no signature"), "{run}");
    // The server never saw the name: not in its log, not in the audit.
    let (_, audit) = call(
        "GET",
        &w.url("/api/v1/audit?action=record.erase"),
        &w.server.admin(),
        None,
    );
    assert!(
        !audit.to_string().to_lowercase().contains("amara"),
        "{audit}"
    );
    let log = w.server.log_text().to_lowercase();
    assert!(log.contains("records erased"), "the erasure is logged");
    assert!(!log.contains("amara") && !log.contains("m5v2t6"), "{log}");
}

#[test]
fn the_key_endpoints_refuse_hostile_shapes() {
    let w = world();
    let c = &w.campaign;
    let id = identity(&w.org);
    let recipient = id.to_public().to_string();
    let phone = w.phone("amina");
    let hostile = w.phone("mallory");
    let hostile_token = hostile.token();
    // Squatting: the hostile device learns (or guesses) the phone's record id before the phone
    // syncs and uploads a key under it first: one that unwraps with the organizer's identity
    // (it is wrapped to the campaign's recipient) but is another key.
    let amara = phone.sign("Amara Okafor", "M5V 2T6", "Toronto", &[]);
    let squat = RecordKey::generate()
        .wrap(std::slice::from_ref(&recipient))
        .unwrap();
    let (s, v) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &hostile_token,
        Some(&json!({"keys": [{"record": amara, "wrapped": B64.encode(&squat)}]})),
    );
    assert_eq!(
        (s, v["results"][0]["status"].clone()),
        (200, json!("stored")),
        "{v}"
    );
    // The real phone's key is neither blocked nor replaced: the export opens the record.
    phone.sync(30).ok();
    assert_eq!(
        phone_keys(&phone),
        0,
        "the phone's key was stored beside the squatter's"
    );
    let rows = export_all(&w.org, c, "squat.csv");
    assert_eq!(rows[&amara]["name"], "Amara Okafor");
    // The hostile device cannot replace its own upload either (other bytes: conflict).
    let (_, v) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &hostile_token,
        Some(
            &json!({"keys": [{"record": amara, "wrapped": B64.encode(RecordKey::generate().wrap(std::slice::from_ref(&recipient)).unwrap())}]}),
        ),
    );
    assert_eq!(v["results"][0]["reason"], "conflict", "{v}");
    // With only the squatter's key, the record is "key missing", never a wrong name.
    let lone = phone.sign("Lone Signer", "M4C 1B5", "Toronto", &[]);
    call(
        "PUT",
        &w.url("/api/v1/keys"),
        &hostile_token,
        Some(&json!({"keys": [{"record": lone, "wrapped": B64.encode(&squat)}]})),
    );
    {
        // The phone's copy of its key is held back, as if its upload had failed.
        let conn = rusqlite::Connection::open(phone.home.join("tally-device.sqlite3")).unwrap();
        conn.execute(
            "UPDATE record_keys SET refusal = 'held back by the test'",
            [],
        )
        .unwrap();
    }
    phone.sync(30).ok();
    let status = phone.status();
    assert!(
        status["summary"]
            .as_str()
            .unwrap()
            .contains("key not yet on the server"),
        "{status}"
    );
    let rows = export_all(&w.org, c, "lone.csv");
    assert_eq!(rows[&lone]["name"], ROW_KEY_MISSING);
    // The squatter's key is a key on the server all the same: `campaign sealing` counts by
    // the keys' list, so only an export tells the two apart.
    let s = w
        .org
        .run(&["campaign", "sealing", "--campaign", c, "--json"])
        .ok()
        .json();
    assert_eq!(
        (s["v2"].clone(), s["v1"].clone()),
        (json!(2), json!(0)),
        "{s}"
    );

    // Too many keys in one request, an oversized key, a bad record id, not an age file.
    let many: Vec<Value> = (0..257)
        .map(|i| json!({"record": format!("r{i}"), "wrapped": B64.encode(&squat)}))
        .collect();
    let (s, v) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &hostile_token,
        Some(&json!({"keys": many})),
    );
    assert_eq!(s, 400, "{v}");
    let mut big = squat.clone();
    big.resize(20_000, b'x');
    let (s, v) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &hostile_token,
        Some(&json!({"keys": [
            {"record": "r-big", "wrapped": B64.encode(&big)},
            {"record": "not an id!", "wrapped": B64.encode(&squat)},
            {"record": "r-junk", "wrapped": B64.encode([7u8; 100])},
            {"record": "r-b64", "wrapped": "%%%"},
        ]})),
    );
    assert_eq!(s, 200, "{v}");
    let reasons: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["bad_size", "bad_record", "bad_size", "bad_size"],
        "{v}"
    );
    // A body over the API's 2 MiB.
    let huge = json!({"keys": [{"record": "r-huge", "wrapped": "A".repeat(3 * 1024 * 1024)}]});
    let (s, _) = call("PUT", &w.url("/api/v1/keys"), &hostile_token, Some(&huge));
    assert_eq!(s, 413);

    // Another campaign's record: refused, and nothing stored under it.
    let recipient2 = w.org.keygen("other.age");
    let c2 = w.org.create_campaign("Another", &recipient2);
    let other = Phone::new(&w.dir.path().join("other"));
    other.enroll(&w.org.invite(&c2), "other");
    let theirs = other.sign("Chen Li", "H2X 1Y4", "Montréal", &[]);
    other.sync(30).ok();
    let (_, v) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &hostile_token,
        Some(&json!({"keys": [{"record": theirs, "wrapped": B64.encode(&squat)}]})),
    );
    assert_eq!(v["results"][0]["reason"], "other_campaign", "{v}");

    // A canvasser calling the erase or the key-read endpoints; an organizer of another
    // campaign; the admin (no campaign) uploading keys.
    let erase = json!({"records": [amara]});
    for token in [hostile_token.clone(), other.token()] {
        let (s, _) = call(
            "POST",
            &w.url(&format!("/api/v1/campaigns/{c}/erase")),
            &token,
            Some(&erase),
        );
        assert_eq!(s, 403);
        let (s, _) = call(
            "GET",
            &w.url(&format!("/api/v1/campaigns/{c}/keys")),
            &token,
            None,
        );
        assert_eq!(s, 403);
    }
    let organizer2 = Phone::new(&w.dir.path().join("organizer2"));
    let invite = w
        .org
        .run(&["invite", "--campaign", &c2, "--role", "organizer"])
        .ok();
    let payload: Value = serde_json::from_str(invite.stdout.lines().last().unwrap()).unwrap();
    organizer2.enroll(&payload, "organizer of another campaign");
    let (s, _) = call(
        "POST",
        &w.url(&format!("/api/v1/campaigns/{c}/erase")),
        &organizer2.token(),
        Some(&erase),
    );
    assert_eq!(s, 403);
    let (s, _) = call(
        "GET",
        &w.url(&format!("/api/v1/campaigns/{c}/keys")),
        &organizer2.token(),
        None,
    );
    assert_eq!(s, 403);
    let (s, _) = call(
        "PUT",
        &w.url("/api/v1/keys"),
        &w.server.admin(),
        Some(&json!({"keys": []})),
    );
    assert_eq!(s, 403);
    // A strike may not pose as an erasure (it would leave the keys).
    let (s, v) = call(
        "POST",
        &w.url(&format!("/api/v1/campaigns/{c}/strikes")),
        &w.server.admin(),
        Some(&json!({"signature": amara, "reason": "erased"})),
    );
    assert_eq!(s, 400, "{v}");
    // An erase naming an unknown record erases nothing.
    let (s, _) = call(
        "POST",
        &w.url(&format!("/api/v1/campaigns/{c}/erase")),
        &w.server.admin(),
        Some(&json!({"records": [amara, "no-such-record"]})),
    );
    assert_eq!(s, 404);
    assert_eq!(
        export_all(&w.org, c, "still.csv")[&amara]["name"],
        "Amara Okafor"
    );
}

/// A signature sealed in format v1 (as phones wrote before erasure existed, pushed here by a
/// bare protocol peer as such a phone would): it still counts and opens; `tally campaign
/// sealing` counts it as v1; erasing it stops it counting and the server says it was v1 (its
/// details stay in the history: docs/security.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_record_still_opens_and_its_erasure_says_it_cannot_be_shredded() {
    use tally_core::collection::{self, SignatureForm, TakenBy};
    use tally_tests::{Peer, new_id};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let form = SignatureForm {
        name: "Old Phone Signer".into(),
        postal_code: "M5V 2T6".into(),
        city: "Toronto".into(),
        ..Default::default()
    };
    let id = collection::random_id();
    let sig = form
        .prepare(&TakenBy {
            campaign: &c.world.campaign,
            key: &c.world.key,
            canvasser: &device,
            now: tally_core::fixtures::NOW,
            id: id.clone(),
        })
        .unwrap();
    assert_eq!(seal::version(&sig.sealed), Some(1));
    let mut doc = collection::create(&c.id, &device).unwrap();
    collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    let mut peer = Peer::connect(&server.ws(), &token).await.unwrap();
    let col = new_id();
    peer.push(col, doc).await.unwrap();
    assert!(
        peer.until_acknowledged(&[col], std::time::Duration::from_secs(30))
            .await
            .unwrap(),
        "refused: {:?}",
        peer.errors
    );

    // The organizer's side, with the world's organizer identity and the admin token.
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    std::fs::write(org.dir.join("organizer.age"), &c.world.identities[0]).unwrap();
    let org_run = |args: &[&str]| tokio::task::block_in_place(|| org.run(args));
    let s = org_run(&["campaign", "sealing", "--campaign", &c.id, "--json"])
        .ok()
        .json();
    assert_eq!(
        s,
        json!({"signatures": 1, "v2": 0, "key_missing": 0, "v1": 1, "erased": 0})
    );
    let run = org_run(&[
        "export",
        "--campaign",
        &c.id,
        "--identity",
        "organizer.age",
        "--out",
        "v1.csv",
    ])
    .ok();
    assert!(
        run.stderr
            .contains("1 of the campaign's signatures are sealed in format v1"),
        "{run}"
    );
    let csv = std::fs::read_to_string(org.dir.join("v1.csv")).unwrap();
    assert!(csv.contains("Old Phone Signer"), "{csv}");

    let run = org_run(&["erase", "--campaign", &c.id, "--record", &id, "--json"]).ok();
    let v = run.json();
    assert_eq!(v["erased"], json!([id]));
    assert_eq!(v["v1"], json!([id]), "{run}");
    assert_eq!(v["keys_deleted"], 0);
    let human = org_run(&["erase", "--campaign", &c.id, "--record", &id]).ok();
    assert!(human.stdout.contains("sealed in format v1"), "{human}");
    let t = tokio::task::block_in_place(|| server.totals(&c.id));
    assert_eq!(t["signatures"], 0, "{t}");
    let s = org_run(&["campaign", "sealing", "--campaign", &c.id, "--json"])
        .ok()
        .json();
    assert_eq!(s["erased"], 1, "{s}");
    assert_eq!(s["v1"], 0, "{s}");
}

/// A device's quota of keys on the server (`max_keys_per_device`): past it a key is refused
/// `too_many`, the phone keeps it and counts its record not yet safe, and uploads it once the
/// quota allows (here, the server restarted with a larger one).
#[test]
fn past_its_quota_a_phone_keeps_its_keys_until_the_server_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        &[("TALLY_MAX_KEYS_PER_DEVICE", "2")],
    );
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    let phone = Phone::new(&dir.path().join("phone"));
    phone.enroll(&org.invite(&campaign), "amina");
    let ids: Vec<String> = ["Amara Okafor", "Bo Chen", "Chen Li"]
        .iter()
        .map(|n| phone.sign(n, "M5V 2T6", "Toronto", &[]))
        .collect();
    let run = phone.sync(30).ok();
    assert!(
        run.stdout.contains("1 record keys refused by the server"),
        "{run}"
    );
    assert_eq!(phone_keys(&phone), 1, "the refused key stays on the phone");
    let status = phone.status();
    assert_eq!(status["counts"]["keys_not_on_server"], 1, "{status}");
    assert!(
        status["summary"]
            .as_str()
            .unwrap()
            .contains("1 signature not yet safe: key not yet on the server"),
        "{status}"
    );
    assert!(
        status["problems"].to_string().contains("too_many"),
        "{status}"
    );
    let rows = export_all(&org, &campaign, "before.csv");
    assert_eq!(rows[&ids[2]]["name"], ROW_KEY_MISSING);

    // The organizer raises the quota; the phone's next sync uploads the key and drops it.
    server.set_env(&[("TALLY_MAX_KEYS_PER_DEVICE", "10")]);
    server.restart();
    phone.sync(30).ok();
    assert_eq!(phone_keys(&phone), 0);
    let status = phone.status();
    assert_eq!(status["counts"]["keys_not_on_server"], 0, "{status}");
    let rows = export_all(&org, &campaign, "after.csv");
    assert_eq!(rows[&ids[2]]["name"], "Chen Li");
}
