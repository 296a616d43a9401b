//! No secret and no signer's detail in any log line at any level: a full run (organizer
//! commands, a phone enrolling, signing with every personal field, syncing, the totals, the
//! sealed export, a guessed token) against `tally serve` logging at `trace`, the most verbose
//! level, which includes every other. Then the server's log, and what the phone and the
//! organizer's commands printed to standard error, are searched for each planted value.

use serde_json::Value;
use tally_tests::server::{Server as _, http};
use tally_tests::{Organizer, Phone, ServerProcess};

const NAME: &str = "Zanele Plantmbeki";
const EMAIL: &str = "zanele.plant@example.org";
const PHONE: &str = "416 555 0199";
const STREET: &str = "77 Plantation Road";

/// Every string value in `v` found under a key named `key`.
fn strings_under(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(x, key, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| strings_under(x, key, out)),
        _ => {}
    }
}

#[test]
fn no_token_or_personal_field_in_any_log_at_trace() {
    let root = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_env(&root.path().join("server"), &[("RUST_LOG", "trace")]);
    let org = Organizer::new(&root.path().join("organizer"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    org.add_event(&campaign, "rally", "Rally at Queen's Park", "Toronto");
    let payload = org.invite(&campaign);
    let mut secrets: Vec<(String, String)> = vec![("admin token".into(), server.admin())];
    let mut codes = Vec::new();
    strings_under(&payload, "code", &mut codes);
    assert_eq!(codes.len(), 1, "{payload}");
    secrets.push(("invite code".into(), codes[0].clone()));
    let mut keys = Vec::new();
    strings_under(&payload, "key", &mut keys);
    assert_eq!(keys.len(), 1, "{payload}");
    secrets.push(("campaign duplicate key".into(), keys[0].clone()));

    let phone = Phone::new(&root.path().join("phone"));
    phone.enroll(&payload, "Zanele's canvassing phone");
    let mut stderr = String::new();
    let sign = phone
        .run(&[
            "--json",
            "sign",
            "--name",
            NAME,
            "--postal-code",
            "M4C 1B5",
            "--city",
            "Toronto",
            "--email",
            EMAIL,
            "--phone",
            PHONE,
            "--street",
            STREET,
            "--event",
            "rally",
        ])
        .ok();
    stderr.push_str(&sign.stderr);
    let sync = phone.sync(30).ok();
    stderr.push_str(&sync.stderr);
    assert_eq!(
        sync.json()["report"]["acknowledged"]["signatures"],
        1,
        "{sync}"
    );
    assert_eq!(org.totals(&campaign)["signatures"], 1);
    let csv = org.export(&campaign, "organizer.age", "signers.csv");
    assert!(
        csv.contains(NAME) && csv.contains(EMAIL),
        "the export does not open: {csv}"
    );

    // The phone's own token, from its store.
    let db = phone.home.join("tally-device.sqlite3");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let enrollment: String = conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'enrollment'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut tokens = Vec::new();
    strings_under(
        &serde_json::from_str(&enrollment).unwrap(),
        "token",
        &mut tokens,
    );
    assert_eq!(tokens.len(), 1, "no token in the phone's enrollment");
    secrets.push(("device token".into(), tokens[0].clone()));

    // A guessed token, refused.
    let guess = format!("tly_{}", "ab".repeat(32));
    let (s, _) = http(&server.base(), "GET", "/api/v1/devices", Some(&guess), None);
    assert_eq!(s, 401);
    secrets.push(("guessed token".into(), guess));
    for (what, v) in [
        ("name", NAME),
        ("email", EMAIL),
        ("phone", PHONE),
        ("street", STREET),
    ] {
        secrets.push((what.into(), v.into()));
    }
    secrets.push(("phone digits".into(), "5550199".into()));
    secrets.push(("postal code".into(), "M4C1B5".into()));

    let log = server.log_text();
    let lines = log.lines().count();
    assert!(
        log.contains("TRACE")
            && log.contains("DEBUG")
            && log.contains("INFO")
            && log.contains("WARN"),
        "the run did not log at every level"
    );
    println!(
        "server log: {lines} lines at trace; phone stderr: {} bytes; {} planted values",
        stderr.len(),
        secrets.len()
    );
    // The search works on this log: the campaign id (not a secret) is in it.
    assert!(log.contains(&campaign), "the campaign id is not in the log");
    for (what, value) in &secrets {
        for (source, text) in [
            ("server log", log.as_str()),
            ("phone stderr", stderr.as_str()),
        ] {
            if let Some(line) = text.lines().find(|l| l.contains(value.as_str())) {
                panic!("{what} found in the {source}: {line}");
            }
        }
    }
}
