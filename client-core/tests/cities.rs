//! The phone offers the campaign's known cities (issue 13): the events' cities and the cities
//! its own signatures used, each city once whatever its spellings; `tally-device sign` warns,
//! and signs all the same, when a city is a known one spelled otherwise.

mod common;

use std::process::Command;

use common::{form, ready};
use tally_core::fixtures::World;

#[test]
fn known_cities_are_the_events_then_the_phones_own_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    // The fixture campaign's event is in Toronto.
    assert_eq!(device.known_cities().unwrap(), ["Toronto"]);
    assert_eq!(
        device.known_spelling(" TORONTO ").unwrap().as_deref(),
        Some("Toronto")
    );
    assert_eq!(device.known_spelling("Toronto").unwrap(), None);
    assert_eq!(device.known_spelling(" Toronto  ").unwrap(), None);
    assert_eq!(device.known_spelling("Hamilton").unwrap(), None);

    for (name, city) in [
        ("Amara Okafor", "toronto"),
        ("Jean Tremblay", "Montréal"),
        ("Li Wei", "MONTREAL"),
        ("Sofía Ramírez", "  Hamilton "),
    ] {
        device.sign(&form(name, "M5V 2T6", city)).unwrap();
    }
    assert_eq!(
        device.known_cities().unwrap(),
        ["Toronto", "Montréal", "Hamilton"]
    );
    assert_eq!(
        device.known_spelling("Montreal").unwrap().as_deref(),
        Some("Montréal")
    );
    // The documents keep what was typed (trimmed by the form, as before).
    let receipt = device
        .sign(&form("Kwame Mensah", "M5V 2T6", "hamilton"))
        .unwrap();
    assert_eq!(receipt.city, "hamilton");
    // Kept across reopening.
    drop(device);
    let device = tally_client::Device::open(dir.path()).unwrap();
    assert_eq!(
        device.known_cities().unwrap(),
        ["Toronto", "Montréal", "Hamilton"]
    );
}

#[test]
fn tally_device_lists_cities_and_warns_on_another_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    drop(ready(dir.path(), &world));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally-device"))
            .arg("--home")
            .arg(dir.path())
            .args(args)
            .env_remove("TALLY_HOME")
            .output()
            .expect("run tally-device")
    };
    let sign = |city: &str| {
        run(&[
            "sign",
            "--name",
            "Amara Okafor",
            "--postal-code",
            "M5V 2T6",
            "--city",
            city,
        ])
    };
    let out = sign("TORONTO");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"warning: "TORONTO" is spelled "Toronto""#),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Saved signature"));
    let out = sign("Toronto");
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sign("Montréal");

    let out = run(&["cities"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Toronto\nMontréal\n");
    let out = run(&["--json", "cities"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cities"], serde_json::json!(["Toronto", "Montréal"]));
    let out = run(&[
        "--json",
        "sign",
        "--name",
        "Li Wei",
        "--postal-code",
        "M5V 2T6",
        "--city",
        "montreal",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["warning"].as_str().unwrap().contains("Montréal"), "{v}");
}
