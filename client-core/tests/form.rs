//! Bad input from the canvasser's form, at the library and at the command line: every refusal
//! names the field, says what to do, and leaves the phone's SQLite file exactly as it was.

mod common;

use std::process::Command;

use common::{dump, form, ready};
use tally_client::{ClientError, Device, SignatureForm};
use tally_core::fixtures::{EVENT, World};

fn long(n: usize) -> String {
    "a".repeat(n)
}

/// Asserts `result` is a refusal naming `field`, and that the store did not change.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    device: &Device,
    before: &str,
    result: Result<T, ClientError>,
    kind: &str,
    field: &str,
) -> String {
    let err = result.expect_err("refused");
    let message = err.to_string();
    assert_eq!(err.kind(), kind, "{message}");
    assert_eq!(err.field(), Some(field), "{message}");
    assert!(
        message.contains(field) || message.contains(&field.replace('_', " ")),
        "the message does not name {field}: {message}"
    );
    assert_eq!(
        dump(device),
        before,
        "a refused input changed the store: {message}"
    );
    message
}

#[test]
fn bad_signatures_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    // One good signature first, so there is something in the store to keep unchanged.
    let empty = dump(&device);
    device
        .sign(&form("Amara Okafor", "M5V 2T6", "Toronto"))
        .unwrap();
    let before = dump(&device);
    assert_ne!(before, empty, "the dump does not see a signature");

    let base = || form("Jean Tremblay", "H2X 1Y4", "Montréal");
    let with = |f: &dyn Fn(&mut SignatureForm)| {
        let mut s = base();
        f(&mut s);
        s
    };
    let cases: Vec<(&str, SignatureForm, &str)> = vec![
        ("empty name", with(&|s| s.name = String::new()), "name"),
        ("blank name", with(&|s| s.name = "   ".into()), "name"),
        (
            "name with a line break",
            with(&|s| s.name = "Jean\nTremblay".into()),
            "name",
        ),
        ("oversize name", with(&|s| s.name = long(201)), "name"),
        (
            "US zip code",
            with(&|s| s.postal_code = "90210".into()),
            "postal_code",
        ),
        (
            "UK postcode",
            with(&|s| s.postal_code = "SW1A 1AA".into()),
            "postal_code",
        ),
        (
            "no such first letter",
            with(&|s| s.postal_code = "D5V 2T6".into()),
            "postal_code",
        ),
        (
            "empty postal code",
            with(&|s| s.postal_code = " ".into()),
            "postal_code",
        ),
        (
            "oversize postal code",
            with(&|s| s.postal_code = format!("M5V 2T6{}", "1".repeat(10_000))),
            "postal_code",
        ),
        ("empty city", with(&|s| s.city = String::new()), "city"),
        ("oversize city", with(&|s| s.city = long(201)), "city"),
        (
            "unknown event",
            with(&|s| s.event = Some("no-such-rally".into())),
            "event",
        ),
        (
            "oversize event",
            with(&|s| s.event = Some(long(300))),
            "event",
        ),
        (
            "bad email",
            with(&|s| s.email = Some("jean at example".into())),
            "email",
        ),
        (
            "oversize email",
            with(&|s| s.email = Some(format!("{}@example.org", long(300)))),
            "email",
        ),
        ("bad phone", with(&|s| s.phone = Some("12".into())), "phone"),
        (
            "oversize phone",
            with(&|s| s.phone = Some("5".repeat(250))),
            "phone",
        ),
        (
            "oversize street",
            with(&|s| s.street = Some(long(201))),
            "street",
        ),
        (
            "oversize riding",
            with(&|s| s.riding = Some(long(201))),
            "riding",
        ),
    ];
    for (what, bad, field) in cases {
        let message = refused(&device, &before, device.sign(&bad), "form", field);
        assert!(
            message.len() < 400,
            "{what}: the message echoes too much input ({} bytes)",
            message.len()
        );
        println!("{what}: {message}");
    }

    // The unknown event's message lists the events there are.
    let message = device
        .sign(&with(&|s| s.event = Some("no-such-rally".into())))
        .unwrap_err()
        .to_string();
    assert!(message.contains(EVENT), "{message}");
    // A non-Canadian code says what a Canadian one looks like.
    let message = device
        .sign(&with(&|s| s.postal_code = "90210".into()))
        .unwrap_err()
        .to_string();
    assert!(message.contains("M5V 2T6"), "{message}");

    // Still nothing pending but the one good signature, and a good form still goes through.
    assert_eq!(device.counts().unwrap().signatures_pending, 1);
    device.sign(&base()).unwrap();
    assert_ne!(dump(&device), before);
    assert_eq!(device.counts().unwrap().signatures_pending, 2);
}

#[test]
fn bad_checkins_and_withdrawals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let sig = device
        .sign(&form("Amara Okafor", "M5V 2T6", "Toronto"))
        .unwrap();
    let before = dump(&device);

    refused(
        &device,
        &before,
        device.checkin("no-such-rally", "Amara Okafor", true),
        "form",
        "event",
    );
    refused(
        &device,
        &before,
        device.checkin("", "Amara Okafor", true),
        "form",
        "event",
    );
    refused(
        &device,
        &before,
        device.checkin(EVENT, " ", true),
        "form",
        "name",
    );
    refused(
        &device,
        &before,
        device.checkin(EVENT, &long(201), true),
        "form",
        "name",
    );

    let m = refused(
        &device,
        &before,
        device.withdraw("0123456789abcdef01234567"),
        "not_found",
        "record_id",
    );
    assert!(m.contains("0123456789abcdef01234567"), "{m}");
    refused(&device, &before, device.withdraw(""), "form", "record_id");
    refused(
        &device,
        &before,
        device.withdraw(&long(10_000)),
        "form",
        "record_id",
    );

    // Withdrawing the real one works once; the second time is refused and writes nothing.
    device.withdraw(&sig.record_id).unwrap();
    let withdrawn = dump(&device);
    assert_ne!(withdrawn, before);
    refused(
        &device,
        &withdrawn,
        device.withdraw(&sig.record_id),
        "already_withdrawn",
        "record_id",
    );
}

#[test]
fn cli_bad_sign_exits_1_with_the_message_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let before = dump(&device);
    drop(device);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally-device"))
            .arg("--home")
            .arg(dir.path())
            .args(args)
            .env_remove("TALLY_HOME")
            .output()
            .expect("run tally-device")
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "sign",
                "--name",
                "Jean Tremblay",
                "--postal-code",
                "90210",
                "--city",
                "Montréal",
            ],
            "postal_code",
        ),
        (
            &[
                "sign",
                "--name",
                " ",
                "--postal-code",
                "H2X 1Y4",
                "--city",
                "Montréal",
            ],
            "name",
        ),
        (
            &[
                "sign",
                "--name",
                "Jean",
                "--postal-code",
                "H2X 1Y4",
                "--city",
                "Montréal",
                "--event",
                "nope",
            ],
            "event",
        ),
        (&["withdraw", "0123456789abcdef01234567"], "record id"),
    ];
    for (args, field) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(field),
            "{args:?}: stderr does not name {field}: {stderr}"
        );
    }
    // With --json the refusal is one JSON object on stdout, with the field.
    let out = run(&[
        "--json",
        "sign",
        "--name",
        "Jean Tremblay",
        "--postal-code",
        "90210",
        "--city",
        "Montréal",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "form");
    assert_eq!(v["error"]["field"], "postal_code");
    // A missing required flag is bad usage (2), not a refusal.
    let out = run(&["sign", "--name", "Jean Tremblay", "--city", "Montréal"]);
    assert_eq!(out.status.code(), Some(2));

    let device = Device::open(dir.path()).unwrap();
    assert_eq!(dump(&device), before, "a refused command changed the store");
}
