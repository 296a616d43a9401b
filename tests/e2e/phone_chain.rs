//! A phone's chain of collections end to end (issue 12), over the real programs: `tally serve`
//! in a child process, the organizer's `tally`, and `tally-device` processes syncing a phone's
//! home folder (directly, or through [`CutProxy`] to break the link at random).
//!
//! - `a_phone_rolls_over_and_every_signature_counts_once`: 25,000 signatures across
//!   roll-overs (at the default bound), synced through links cut at random; each counted once.
//!   The signatures are taken with the phone's library in this process, on the same home folder
//!   the `tally-device` processes sync (25,000 process starts would take most of an hour).
//! - `a_refused_record_is_set_aside_and_the_rest_counted`: the server refuses one record of 50
//!   waiting (`TALLY_REFUSE_RECORDS`); after one sync 49 are counted, the refused one is shown
//!   with its reason, and the phone's next 10 are counted too.
//! - `a_revoked_phone_enrolls_again_in_the_same_home`: 5 signatures waiting on a revoked phone
//!   reach the server once after it enrolls again in the same home; the old token stays refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use tally_client::{Device, SignatureForm};
use tally_tests::server::Server as _;
use tally_tests::{CutProxy, Organizer, Phone, ServerProcess};

const IDENTITY: &str = "organizer.age";

struct Setup {
    server: ServerProcess,
    org: Organizer,
    campaign: String,
}

fn setup(root: &Path) -> Setup {
    let server = ServerProcess::start(&root.join("server"));
    let org = Organizer::new(&root.join("organizer"), &server.base(), &server.data);
    let recipient = org.keygen(IDENTITY);
    let campaign = org.create_campaign("Status for All", &recipient);
    Setup {
        server,
        org,
        campaign,
    }
}

fn via(mut payload: Value, base: &str) -> Value {
    payload["server"] = Value::String(base.to_string());
    payload
}

fn form(i: usize) -> SignatureForm {
    SignatureForm {
        name: format!("Signer {i}"),
        postal_code: "M5V 2T6".into(),
        city: if i.is_multiple_of(3) {
            "Montréal"
        } else {
            "Toronto"
        }
        .into(),
        ..SignatureForm::default()
    }
}

#[test]
fn a_phone_rolls_over_and_every_signature_counts_once() {
    let _heavy = crate::heavy_blocking();
    const SIGNATURES: usize = 25_000;
    const BATCH: usize = 2_500;
    let root = tempfile::tempdir().unwrap();
    let Setup {
        server,
        org,
        campaign,
    } = setup(root.path());
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = CutProxy::start(upstream);
    let phone = Phone::new(&root.path().join("phone"));
    phone.enroll(&via(org.invite(&campaign), &proxy.base()), "phone");
    let device = Device::open(&phone.home).unwrap();
    assert_eq!(
        device.roll_over_at().unwrap(),
        tally_client::DEFAULT_ROLL_OVER_AT
    );

    // Batches of signatures, each followed by a sync through a link cut after a random number
    // of bytes (somewhere between the handshake and well past the batch's pushes).
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (mut cut, mut through) = (0, 0);
    for batch in 0..SIGNATURES / BATCH {
        for i in batch * BATCH..(batch + 1) * BATCH {
            device.sign(&form(i)).unwrap();
        }
        proxy.set_limit(Some(rng.gen_range(2_000..3_000_000)));
        let r = phone.sync(20);
        match r.code {
            0 => through += 1,
            1 | 3 => cut += 1,
            _ => panic!("batch {batch}: unexpected exit:\n{r}"),
        }
        // The server never holds less than the phone counts as safe.
        let safe = device.counts().unwrap().signatures_acknowledged;
        let on_server = org.totals(&campaign)["signatures"].as_u64().unwrap();
        assert!(
            on_server >= safe,
            "batch {batch}: phone {safe}, server {on_server}"
        );
    }
    assert!(cut > 0, "no link was cut: nothing was tested there");
    proxy.set_limit(None);
    for _ in 0..3 {
        if phone.sync(120).code == 0 && device.counts().unwrap().pending_total() == 0 {
            break;
        }
    }
    let status = phone.status();
    assert_eq!(status["counts"]["signatures_pending"], 0, "{status}");
    assert_eq!(
        status["counts"]["signatures_acknowledged"], SIGNATURES,
        "{status}"
    );
    let collections = status["collections"].as_array().unwrap();
    assert_eq!(
        collections.len(),
        SIGNATURES / tally_client::DEFAULT_ROLL_OVER_AT,
        "{collections:?}"
    );
    let t = org.totals(&campaign);
    assert_eq!(t["signatures"], SIGNATURES, "{t}");
    assert_eq!(t["unique_signers"], SIGNATURES, "{t}");
    println!(
        "{SIGNATURES} signatures in {} collections; {cut} syncs cut, {through} through",
        collections.len()
    );
}

#[test]
fn a_refused_record_is_set_aside_and_the_rest_counted() {
    let root = tempfile::tempdir().unwrap();
    let Setup {
        mut server,
        org,
        campaign,
    } = setup(root.path());
    let phone = Phone::new(&root.path().join("phone"));
    phone.enroll(&org.invite(&campaign), "phone");
    let ids: Vec<String> = (0..50)
        .map(|i| phone.sign(&format!("Signer {i}"), "M5V 2T6", "Toronto", &[]))
        .collect();
    let bad = &ids[19];
    // The server comes back with a rule that refuses that one record.
    server.set_env(&[("TALLY_REFUSE_RECORDS", bad)]);
    server.restart();

    let r = phone.sync(30);
    let report = &r.json()["report"];
    assert_eq!(report["set_aside"], 1, "{r}");
    assert_eq!(report["counts"]["signatures_acknowledged"], 49, "{r}");
    assert_eq!(report["counts"]["signatures_pending"], 0, "{r}");
    assert_eq!(org.totals(&campaign)["signatures"], 49);
    let status = phone.status();
    let refused = status["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{status}");
    assert_eq!(refused[0]["record_id"], bad.as_str());
    assert!(
        refused[0]["refusal"]
            .as_str()
            .unwrap()
            .contains("refuse_records"),
        "{status}"
    );
    let text = phone.run(&["status"]).ok();
    assert!(text.stdout.contains("Refused by the server"), "{text}");
    assert!(text.stdout.contains(bad.as_str()), "{text}");

    for i in 50..60 {
        phone.sign(&format!("Signer {i}"), "M5V 2T6", "Toronto", &[]);
    }
    let r = phone.sync(30).ok();
    assert_eq!(r.json()["ok"], true, "{r}");
    assert_eq!(org.totals(&campaign)["signatures"], 59);
}

#[test]
fn a_revoked_phone_enrolls_again_in_the_same_home() {
    let root = tempfile::tempdir().unwrap();
    let Setup {
        server,
        org,
        campaign,
    } = setup(root.path());
    let phone = Phone::new(&root.path().join("phone"));
    let enrolled = phone.enroll(&org.invite(&campaign), "phone");
    let old_device = enrolled["enrollment"]["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..2 {
        phone.sign(&format!("Signer {i}"), "M5V 2T6", "Toronto", &[]);
    }
    phone.sync(30).ok();
    org.run(&["token", "revoke", &old_device]).ok();
    let old_token = phone.token();

    // Offline after the revocation, the canvasser keeps signing.
    for i in 2..7 {
        phone.sign(&format!("Signer {i}"), "M5V 2T6", "Toronto", &[]);
    }
    let r = phone.sync(30);
    assert_ne!(r.code, 0, "{r}");
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("5 records are waiting"), "{r}");
    assert!(said.contains("enroll again"), "{r}");

    // A new code for the same campaign, in the same home.
    let again = phone
        .run(&[
            "enroll",
            "--payload",
            &org.invite(&campaign).to_string(),
            "--name",
            "phone",
        ])
        .ok();
    assert!(again.stdout.contains("Enrolled again"), "{again}");
    let r = phone.sync(30).ok();
    assert_eq!(r.json()["ok"], true, "{r}");
    let t = org.totals(&campaign);
    assert_eq!(t["signatures"], 7, "{t}");
    assert_eq!(t["unique_signers"], 7, "{t}");
    let status = phone.status();
    assert_eq!(status["counts"]["signatures_acknowledged"], 7, "{status}");
    assert_ne!(status["enrollment"]["device_id"], old_device.as_str());

    // The old device stays revoked.
    let url = format!("{}/api/v1/campaigns", server.base());
    let refused = ureq::get(&url)
        .set("Authorization", &format!("Bearer {old_token}"))
        .timeout(Duration::from_secs(5))
        .call();
    match refused {
        Err(ureq::Error::Status(401, body)) => {
            let body = body.into_string().unwrap_or_default();
            assert!(body.contains("revoked"), "{body}");
        }
        other => panic!("the old token is not refused as revoked: {other:?}"),
    }
}
