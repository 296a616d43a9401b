//! Interoperability with the real JavaScript client: npm `@automerge/automerge-repo` and
//! `@automerge/automerge-repo-network-websocket` 2.5.x, run by node from `tests/js/client.mjs`.
//! It connects with a canvasser's token (as the `token` query parameter, the way a browser must),
//! reads the campaign by URL, pushes a valid collection that the server stores and counts, and
//! pushes bad changes that the server refuses, quarantines and stores nothing of.
//!
//! node and the packages are required, not optional: CI installs them (`scripts/test` runs
//! `npm ci` in tests/js), so a missing install fails these tests with instructions.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use automerge::Automerge;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use tally_core::collection;
use tally_tests::new_id;
use tally_tests::server::Server;
use tally_tests::{Campaign, TestServer};

/// Longest wait for one run of the node client (it gives up by itself after 15 s).
const RUN: Duration = Duration::from_secs(30);

/// How one run of the node client ended.
#[derive(Debug)]
struct Run {
    /// Exit status (`None` if killed by a signal).
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout of a successful run; panics with everything the client said otherwise.
    fn ok(&self) -> &str {
        assert_eq!(self.status, Some(0), "the JS client failed: {self:#?}");
        self.stdout.trim()
    }
}

/// `tests/js`, checked to hold an installed client.
fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    let installed = dir
        .join("node_modules/@automerge/automerge-repo-network-websocket/package.json")
        .exists()
        && dir
            .join("node_modules/@automerge/automerge-repo/package.json")
            .exists();
    assert!(
        installed,
        "the JavaScript interop client is not installed: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    dir
}

/// The server's sync URL with the device's token as the `token` query parameter.
fn ws_with_token(server: &impl Server, token: &str) -> String {
    let encoded: String = token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{}?token={encoded}", server.ws())
}

/// Runs `node client.mjs WS_URL ARGS...` to its end.
async fn js(ws_url: &str, args: &[&str]) -> Run {
    let dir = js_dir();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("client.mjs"))
        .arg(ws_url)
        .args(args)
        .current_dir(&dir)
        .env("TALLY_JS_TIMEOUT_MS", "15000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "could not run node ({e}): install node 20+ and run `npm ci` in {}",
            dir.display()
        ),
    };
    let out = tokio::time::timeout(RUN, child.wait_with_output())
        .await
        .expect("the JS client did not exit in time")
        .expect("waiting for the JS client");
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
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

fn signatures(t: &Value) -> Option<u64> {
    t["signatures"].as_u64()
}

/// The document id of an `automerge:` URL.
fn doc_id_of(url: &str) -> &str {
    url.strip_prefix("automerge:")
        .unwrap_or_else(|| panic!("not an automerge URL: {url}"))
}

fn quarantine_reasons(server: &TestServer, doc_id: &str) -> Vec<tally_store::QuarantineEntry> {
    tally_store::Store::open(&server.db())
        .unwrap()
        .list_quarantine(&tally_store::QuarantineFilter {
            doc_id: Some(doc_id.to_string()),
            ..Default::default()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_reads_the_campaign_and_totals_by_url() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (_, token) = server.enroll(&c.id, "canvasser");
    let ws = ws_with_token(&server, &token);

    let out = js(&ws, &["read", &format!("automerge:{}", c.id)]).await;
    let campaign: Value = serde_json::from_str(out.ok()).expect("the client prints JSON");
    assert_eq!(campaign["kind"], "campaign", "{campaign}");
    assert_eq!(campaign["campaign"], c.id.as_str(), "{campaign}");
    assert_eq!(
        campaign["title"],
        c.world.campaign.title.as_str(),
        "{campaign}"
    );
    assert_eq!(
        campaign["petition"],
        c.world.campaign.petition.as_str(),
        "{campaign}"
    );
    let ev = &c.world.campaign.events[tally_core::fixtures::EVENT];
    let events = campaign["events"].as_object().expect("an events map");
    assert_eq!(events.len(), 1, "{campaign}");
    let js_ev = &events[&ev.id];
    assert_eq!(
        (&js_ev["name"], &js_ev["city"], js_ev["starts_at"].as_i64()),
        (
            &Value::from(ev.name.as_str()),
            &Value::from(ev.city.as_str()),
            Some(ev.starts_at)
        ),
        "{campaign}"
    );

    // The totals document, by the URL the API gave.
    let out = js(&ws, &["read", &c.totals_url]).await;
    let totals: Value = serde_json::from_str(out.ok()).expect("the client prints JSON");
    assert_eq!(totals["kind"], "totals", "{totals}");

    // A document nobody has: the client is told it is unavailable.
    let nowhere = new_id();
    let out = js(&ws, &["read", &format!("automerge:{nowhere}")]).await;
    assert_eq!(out.status, Some(3), "expected `unavailable`: {out:#?}");
    assert!(out.stderr.contains("unavailable"), "{out:#?}");

    // A wrong token never gets to sync.
    let out = js(
        &ws_with_token(&server, "not-a-token"),
        &["read", &format!("automerge:{}", c.id)],
    )
    .await;
    assert_ne!(
        out.status,
        Some(0),
        "a wrong token read the campaign: {out:#?}"
    );
    assert!(
        out.stdout.trim().is_empty() && out.stderr.contains("401"),
        "{out:#?}"
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_pushes_a_collection_and_the_server_counts_it() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let ws = ws_with_token(&server, &token);

    let doc = collection_doc(
        &c,
        &alice,
        &[
            ("s1", "Amara Okafor", "M5V 2T6", "Toronto"),
            ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ],
    );
    let out = js(&ws, &["push-collection", &BASE64.encode(doc.save())]).await;
    let url = out.ok().to_string();
    let doc_id = doc_id_of(&url);

    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["unique_signers"].as_u64()),
        (Some(2), Some(2)),
        "{t}"
    );
    let meta = tally_store::Store::open(&server.db())
        .unwrap()
        .doc_meta(doc_id)
        .unwrap()
        .expect("the server stored the JS client's document");
    assert_eq!(
        (meta.kind.as_str(), meta.owner.as_deref()),
        ("collection", Some(alice.as_str()))
    );
    let on_server = stored(&server, doc_id).expect("stored");
    assert_eq!(on_server.get_heads(), doc.get_heads());

    // A further signature, applied by a new JS run to the document it finds on the server.
    let mut more = on_server.clone();
    let heads = more.get_heads();
    let sig = c
        .world
        .signature(&alice, "s3", "Sam Tesfaye", "H2X 1Y4", "Montréal");
    collection::add_signature(&mut more, &sig, &c.world.campaign).unwrap();
    let change = more.save_after(&heads);
    let out = js(&ws, &["push-change", &url, &BASE64.encode(change)]).await;
    out.ok();
    assert_eq!(signatures(&server.totals(&c.id)), Some(3));
    assert_eq!(
        stored(&server, doc_id).expect("stored").get_heads(),
        more.get_heads()
    );

    server.stop().await;
}

/// A JS client following the chain rules of docs/documents.md ("A chain of collections"): its
/// second collection names the first in `continues` and carries again, with the same id, a
/// record whose acknowledgement it never heard, beside a new one, and that record's withdrawal
/// rides in a third. Each record id counts once; the withdrawn one does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_follows_the_chain_rules_and_each_record_counts_once() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let ws = ws_with_token(&server, &token);

    let first = collection_doc(
        &c,
        &alice,
        &[
            ("s1", "Amara Okafor", "M5V 2T6", "Toronto"),
            ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ],
    );
    let out = js(&ws, &["push-collection", &BASE64.encode(first.save())]).await;
    let first_url = out.ok().to_string();

    // The next collection of the chain: s2 again (same id, same fields), and s3.
    let mut second = collection::create_continuing(&c.id, &alice, doc_id_of(&first_url)).unwrap();
    for (id, name, postal, city) in [
        ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ("s3", "Sam Tesfaye", "H2X 1Y4", "Montréal"),
    ] {
        let sig = c.world.signature(&alice, id, name, postal, city);
        collection::add_signature(&mut second, &sig, &c.world.campaign).unwrap();
    }
    let out = js(&ws, &["push-collection", &BASE64.encode(second.save())]).await;
    let second_url = out.ok().to_string();
    let header =
        tally_core::DocHeader::read(&stored(&server, doc_id_of(&second_url)).unwrap()).unwrap();
    assert_eq!(header.continues.as_deref(), Some(doc_id_of(&first_url)));
    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["unique_signers"].as_u64()),
        (Some(3), Some(3)),
        "s2 counts once: {t}"
    );

    // A third collection withdraws s1 by a withdrawn copy (a record is withdrawn if any copy
    // is).
    let mut third = collection::create_continuing(&c.id, &alice, doc_id_of(&second_url)).unwrap();
    let mut s1 = c
        .world
        .signature(&alice, "s1", "Amara Okafor", "M5V 2T6", "Toronto");
    s1.withdrawn = true;
    collection::add_signature(&mut third, &s1, &c.world.campaign).unwrap();
    js(&ws, &["push-collection", &BASE64.encode(third.save())])
        .await
        .ok();
    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["withdrawn"].as_u64()),
        (Some(2), Some(1)),
        "{t}"
    );

    // Another canvasser cannot reuse those ids, not even to withdraw them.
    let (bob, bob_token) = server.enroll(&c.id, "canvasser");
    let mut theirs = collection::create(&c.id, &bob).unwrap();
    let mut stolen = c
        .world
        .signature(&bob, "s3", "Sam Tesfaye", "H2X 1Y4", "Montréal");
    stolen.withdrawn = true;
    collection::add_signature(&mut theirs, &stolen, &c.world.campaign).unwrap();
    let out = js(
        &ws_with_token(&server, &bob_token),
        &["push-collection", &BASE64.encode(theirs.save())],
    )
    .await;
    assert_eq!(out.status, Some(2), "expected a refusal: {out:#?}");
    let t = server.totals(&c.id);
    assert_eq!(
        (signatures(&t), t["withdrawn"].as_u64()),
        (Some(2), Some(1)),
        "{t}"
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_bad_change_is_refused_and_nothing_of_it_is_stored() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (alice, token) = server.enroll(&c.id, "canvasser");
    let ws = ws_with_token(&server, &token);
    let doc = collection_doc(
        &c,
        &alice,
        &[
            ("s1", "Amara Okafor", "M5V 2T6", "Toronto"),
            ("s2", "Li Wei", "V5K 0A1", "Vancouver"),
        ],
    );
    let out = js(&ws, &["push-collection", &BASE64.encode(doc.save())]).await;
    let url = out.ok().to_string();
    let doc_id = doc_id_of(&url);
    assert_eq!(signatures(&server.totals(&c.id)), Some(2));

    // Delete signature s1 from her own collection (not allowed: withdraw instead).
    let deletion = {
        use automerge::transaction::Transactable;
        use automerge::{ROOT, ReadDoc};
        let mut d = stored(&server, doc_id).expect("stored");
        let heads = d.get_heads();
        let mut tx = d.transaction();
        let (_, sigs) = tx.get(ROOT, "signatures").unwrap().unwrap();
        tx.delete(&sigs, "s1").unwrap();
        tx.commit();
        d.save_after(&heads)
    };
    let out = js(&ws, &["push-change", &url, &BASE64.encode(deletion)]).await;
    assert_eq!(out.status, Some(2), "expected the server's error: {out:#?}");
    assert!(
        out.stderr.contains("server error:")
            && out.stderr.contains(doc_id)
            && out.stderr.contains("deleted"),
        "the JS client's stderr: {}",
        out.stderr
    );

    // Nothing of it is stored: totals, the stored document, and the quarantine row.
    assert_eq!(signatures(&server.totals(&c.id)), Some(2));
    let on_server = stored(&server, doc_id).expect("stored");
    assert_eq!(on_server.get_heads(), doc.get_heads());
    let col = collection::read(&on_server).expect("stored collection reads");
    assert!(
        col.signatures.contains_key("s1") && col.signatures.len() == 2,
        "the deletion leaked into the stored document: {:?}",
        col.signatures.keys().collect::<Vec<_>>()
    );
    let q = quarantine_reasons(&server, doc_id);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_cannot_create_a_collection_for_another_canvasser() {
    let server = TestServer::start().await;
    let c = server.campaign();
    let (_alice, token) = server.enroll(&c.id, "canvasser");
    let (bob, _) = server.enroll(&c.id, "canvasser");
    let ws = ws_with_token(&server, &token);

    let forged = collection_doc(&c, &bob, &[("s1", "Amara Okafor", "M5V 2T6", "Toronto")]);
    let out = js(&ws, &["push-collection", &BASE64.encode(forged.save())]).await;
    assert_eq!(out.status, Some(2), "expected the server's error: {out:#?}");
    assert!(
        out.stderr.contains("server error:") && out.stderr.contains("owner"),
        "the JS client's stderr: {}",
        out.stderr
    );

    assert_eq!(signatures(&server.totals(&c.id)), Some(0));
    let store = tally_store::Store::open(&server.db()).unwrap();
    let q = store.list_quarantine(&Default::default()).unwrap();
    assert_eq!(
        q.len(),
        1,
        "{:?}",
        q.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert!(
        out.stderr.contains(&q[0].doc_id),
        "the error names another document than the quarantined one: {}",
        out.stderr
    );
    assert!(
        store.doc_meta(&q[0].doc_id).unwrap().is_none(),
        "the forged collection was stored"
    );

    server.stop().await;
}
