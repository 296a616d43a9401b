//! The audit log end to end (issue 15, audit): a real `tally serve`, the organizer's `tally`
//! commands, the API and a `tally-device` phone. Each organizer and admin action makes exactly one
//! entry with the right actor, action, campaign, target and result; the chain verifies, and
//! editing one row of the database makes the verification name it; no token and no signer's
//! detail is in the log.

use serde_json::{Value, json};
use tally_tests::server::Server as _;
use tally_tests::{Organizer, Phone, ServerProcess};

fn api(
    server: &ServerProcess,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let url = format!("{}{path}", server.base());
    let req = ureq::request(method, &url).set("Authorization", &format!("Bearer {token}"));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => r.into_json().unwrap_or(Value::Null),
        Err(ureq::Error::Status(code, r)) => {
            json!({"status": code, "error": r.into_json::<Value>().ok()})
        }
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[test]
fn every_organizer_action_is_audited_once_and_the_chain_verifies() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&root.path().join("server"));
    let admin = std::fs::read_to_string(server.data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let org = Organizer::new(&root.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    org.add_event(&campaign, "rally", "Rally at Queen's Park", "Toronto");
    let phone = Phone::new(&root.path().join("phone"));
    let enrolled = phone.enroll(&org.invite(&campaign), "Amina's phone");
    let device = enrolled["enrollment"]["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    let record = phone.sign("Planted Signername", "M5V 2T6", "Toronto", &[]);
    phone.sync(30).ok();
    let strikes = format!("/api/v1/campaigns/{campaign}/strikes");
    api(
        &server,
        &admin,
        "POST",
        &strikes,
        Some(json!({"signature": record, "reason": "duplicate"})),
    );
    api(
        &server,
        &admin,
        "POST",
        &strikes,
        Some(json!({"signature": record, "reason": "duplicate", "revoked": true})),
    );
    let sheets = format!("/api/v1/campaigns/{campaign}/sheets");
    api(
        &server,
        &admin,
        "POST",
        &sheets,
        Some(json!({"serial": "S-1", "count": 25})),
    );
    let csv = org.export(&campaign, "organizer.age", "signers.csv");
    assert!(csv.contains("Planted Signername"), "{csv}");
    org.run(&["token", "revoke", &device]).ok();
    // Refused: the device is revoked already.
    let again = api(
        &server,
        &admin,
        "POST",
        &format!("/api/v1/devices/{device}/revoke"),
        Some(json!({})),
    );
    assert_eq!(again["status"], 409, "{again}");

    let log = api(&server, &admin, "GET", "/api/v1/audit", None);
    let entries = log.as_array().unwrap_or_else(|| panic!("{log}"));
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    let once = |action: &str| -> &Value {
        let found: Vec<&Value> = entries.iter().filter(|e| e["action"] == action).collect();
        assert_eq!(found.len(), 1, "{action}: {actions:?}");
        found[0]
    };
    assert_eq!(entries[0]["action"], "server.start", "{actions:?}");
    let created = once("campaign.create");
    assert_eq!(created["campaign"], campaign.as_str());
    assert_eq!(created["target"], campaign.as_str());
    assert_eq!(created["result"], "ok");
    assert_eq!(once("event.add")["target"], "rally");
    let invite = once("invite.create");
    assert_eq!(
        (&invite["campaign"], &invite["target"]),
        (&json!(campaign), &json!("role=canvasser"))
    );
    let enroll = once("device.enroll");
    assert_eq!(
        (&enroll["actor_id"], &enroll["actor_name"]),
        (&json!(device), &json!("Amina's phone"))
    );
    assert_eq!(once("review.strike")["target"], record.as_str());
    assert_eq!(once("review.unstrike")["target"], record.as_str());
    assert_eq!(once("review.sheet")["target"], "S-1");
    assert_eq!(once("export.sealed")["campaign"], campaign.as_str());
    // The export of v2 records reads their keys too.
    assert_eq!(once("export.keys")["campaign"], campaign.as_str());
    let revokes: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "device.revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{actions:?}");
    assert_eq!(revokes[0]["result"], "ok");
    assert!(
        revokes[1]["result"]
            .as_str()
            .unwrap()
            .starts_with("refused: 409"),
        "{}",
        revokes[1]
    );
    assert!(
        revokes
            .iter()
            .all(|r| r["target"] == device.as_str() && r["campaign"] == campaign.as_str())
    );
    for e in entries
        .iter()
        .filter(|e| e["action"] != "server.start" && e["action"] != "device.enroll")
    {
        assert_eq!(e["actor_name"], "admin", "{e}");
    }
    assert_eq!(entries.len(), 12, "{actions:?}");

    // The chain verifies, over the API and with `tally audit verify`.
    let verified = api(&server, &admin, "GET", "/api/v1/audit/verify", None);
    assert_eq!(verified, json!({"ok": true, "entries": 12}));
    let ok = org.run(&["audit", "verify"]).ok();
    assert!(ok.stdout.contains("verifies: 12 entries"), "{ok}");
    // `tally audit`: a table, and filters.
    let table = org.run(&["audit"]).ok();
    for word in [
        "device.revoke",
        "review.unstrike",
        "Amina's phone",
        "refused: 409",
    ] {
        assert!(table.stdout.contains(word), "{word}: {table}");
    }
    let revokes_cli = org
        .run(&["--json", "audit", "--action", "device.revoke"])
        .ok()
        .json();
    assert_eq!(
        revokes_cli.as_array().map(Vec::len),
        Some(2),
        "{revokes_cli}"
    );
    // A canvasser's token cannot read it.
    let phone_token_now = phone.token();
    let denied = api(&server, &phone_token_now, "GET", "/api/v1/audit", None);
    assert!(
        denied["status"] == 403 || denied["status"] == 401,
        "{denied}"
    );

    // Nothing secret or personal in the log.
    let db = std::fs::read(server.data.join("tally.db")).unwrap_or_default();
    let text = serde_json::to_string(&log).unwrap();
    let phone_token = phone.token();
    for secret in [
        admin.as_str(),
        phone_token.as_str(),
        "Planted",
        "Signername",
    ] {
        assert!(!text.contains(secret), "the audit answer holds {secret:?}");
    }
    drop(db);

    // One row edited in the database: verify names it.
    let conn = rusqlite::Connection::open(server.data.join("tally.db")).unwrap();
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM audit WHERE action = 'review.sheet'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute("UPDATE audit SET target = 'S-2' WHERE seq = ?1", [seq])
        .unwrap();
    drop(conn);
    let verified = api(&server, &admin, "GET", "/api/v1/audit/verify", None);
    assert_eq!(verified["ok"], false, "{verified}");
    assert_eq!(verified["broken_at"], seq, "{verified}");
    let broken = org.run(&["audit", "verify"]).code(1);
    assert!(
        broken
            .stderr
            .contains(&format!("does not verify at entry {seq}")),
        "{broken}"
    );
}
