//! The reference totals on a hand-checked campaign: strikes, withdrawals, duplicates across
//! canvassers, events, ridings, days in the campaign's time zone, check-ins and paper sheets.

use tally_core::collection::{self, Collection};
use tally_core::fixtures::{CAMPAIGN, EVENT, NOW, World};
use tally_core::review::{self, Sheet, SheetStatus, Strike, StrikeReason};
use tally_core::totals::{Cell, CheckinCell, totals};

fn cell(signatures: u64, unique: u64) -> Cell {
    Cell { signatures, unique }
}

#[test]
fn totals_count_what_they_should() {
    let w = World::new();
    let mut alice = collection::create(CAMPAIGN, "alice").unwrap();
    let mut bob = collection::create(CAMPAIGN, "bob").unwrap();
    let mut a1 = w.signature("alice", "a1", "Amara Okafor", "M5V 2T6", "Toronto");
    a1.event = Some(EVENT.into());
    a1.riding = Some("Spadina—Harbourfront".into());
    collection::add_signature(&mut alice, &a1, &w.campaign).unwrap();
    collection::add_signature(
        &mut alice,
        &w.signature("alice", "a2", "José Ramírez", "H2X 1Y4", "Montréal"),
        &w.campaign,
    )
    .unwrap();
    collection::add_signature(
        &mut alice,
        &w.signature("alice", "a3", "Test Person", "K1A 0B1", "Ottawa"),
        &w.campaign,
    )
    .unwrap();
    // Bob signs Amara up again (same person, other spelling), and someone who then withdraws.
    let mut b1 = w.signature("bob", "b1", " amara  OKAFOR", "m5v2t6", "Toronto");
    b1.collected_at = NOW + 12 * 3_600_000; // the next day in Toronto
    collection::add_signature(&mut bob, &b1, &w.campaign).unwrap();
    collection::add_signature(
        &mut bob,
        &w.signature("bob", "b2", "Li Wei", "V5K 0A1", "Vancouver"),
        &w.campaign,
    )
    .unwrap();
    collection::withdraw_signature(&mut bob, "b2").unwrap();
    collection::add_checkin(
        &mut alice,
        &w.checkin("alice", "ci1", "Amara Okafor", false),
        &w.campaign,
    )
    .unwrap();
    collection::add_checkin(
        &mut bob,
        &w.checkin("bob", "ci2", "amara okafor", true),
        &w.campaign,
    )
    .unwrap();
    collection::add_checkin(
        &mut bob,
        &w.checkin("bob", "ci3", "Li Wei", true),
        &w.campaign,
    )
    .unwrap();

    let mut rev = review::create(CAMPAIGN).unwrap();
    review::put_strike(
        &mut rev,
        &Strike {
            signature: "a3".into(),
            reason: StrikeReason::TestEntry,
            by: "olu".into(),
            at: NOW,
            revoked: false,
        },
    )
    .unwrap();
    review::put_strike(
        &mut rev,
        &Strike {
            signature: "a2".into(),
            reason: StrikeReason::Invalid,
            by: "olu".into(),
            at: NOW,
            revoked: true,
        },
    )
    .unwrap();
    review::put_sheet(
        &mut rev,
        &Sheet {
            serial: "P-1".into(),
            count: 25,
            riding: None,
            status: SheetStatus::Counted,
        },
    )
    .unwrap();
    review::put_sheet(
        &mut rev,
        &Sheet {
            serial: "P-2".into(),
            count: 17,
            riding: None,
            status: SheetStatus::Delivered,
        },
    )
    .unwrap();

    let cols: Vec<Collection> = [&alice, &bob]
        .iter()
        .map(|d| collection::read(d).unwrap())
        .collect();
    let review = review::read(&rev).unwrap();
    let t = totals(&w.campaign, &cols, &review);
    assert_eq!(
        (t.signatures, t.unique_signers, t.struck, t.withdrawn),
        (3, 2, 1, 1)
    );
    assert_eq!(t.by_city["Toronto"], cell(2, 1));
    assert_eq!(t.by_city["Montréal"], cell(1, 1));
    assert!(
        !t.by_city.contains_key("Ottawa"),
        "struck signatures are not counted"
    );
    assert_eq!(t.by_fsa["M5V"], cell(2, 1));
    assert_eq!(t.by_event[EVENT], cell(1, 1));
    assert_eq!(t.by_riding.len(), 1);
    assert_eq!(t.by_day["2025-06-15"], cell(2, 2));
    assert_eq!(t.by_day["2025-06-16"], cell(1, 1));
    assert_eq!(t.by_canvasser["alice"], cell(2, 2));
    assert_eq!(t.by_canvasser["bob"], cell(1, 1));
    assert_eq!(
        t.checkins[EVENT],
        CheckinCell {
            unique: 2,
            pre_registered: 1,
            walk_in: 2
        }
    );
    assert_eq!((t.paper.sheets, t.paper.signatures), (2, 42));
    assert_eq!(t.paper.by_status["delivered"].signatures, 17);

    // Collections of another campaign are ignored.
    let mut other = cols[0].clone();
    other.campaign = "camp2".into();
    assert_eq!(totals(&w.campaign, &[other], &review).signatures, 0);
}

#[test]
fn time_filters_snap_outward_to_whole_local_days() {
    use tally_core::totals::snap_to_day;
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    let tz = "America/Toronto";
    // Down to the local midnight, up to the next one; a midnight stays where it is.
    assert_eq!(
        snap_to_day(ms("2026-07-01T13:37:00-04:00"), tz, false),
        ms("2026-07-01T00:00:00-04:00")
    );
    assert_eq!(
        snap_to_day(ms("2026-07-01T13:37:00-04:00"), tz, true),
        ms("2026-07-02T00:00:00-04:00")
    );
    assert_eq!(
        snap_to_day(ms("2026-07-01T00:00:00-04:00"), tz, true),
        ms("2026-07-01T00:00:00-04:00")
    );
    // The day clocks go back is 25 hours long; a zone that is not one is UTC.
    assert_eq!(
        snap_to_day(ms("2026-11-01T12:00:00-05:00"), tz, true)
            - snap_to_day(ms("2026-11-01T12:00:00-05:00"), tz, false),
        25 * 3_600_000
    );
    assert_eq!(
        snap_to_day(ms("2026-07-01T13:37:00Z"), "Mars/Olympus", false),
        ms("2026-07-01T00:00:00Z")
    );
}

/// Issue 13: `--city toronto`, `TORONTO`, `" Toronto "`, `Montreal` and `Montréal` were five
/// cells. A city is one cell under its folded key, shown with its most common spelling; the
/// documents keep what was typed; a record's copies are merged before its city is read.
#[test]
fn spellings_of_one_city_are_one_cell_shown_by_the_most_common() {
    let w = World::new();
    let mut alice = collection::create(CAMPAIGN, "alice").unwrap();
    let mut bob = collection::create(CAMPAIGN, "bob").unwrap();
    let typed = [
        ("toronto", 1),
        ("TORONTO", 1),
        (" Toronto ", 1),
        ("Toronto", 4),
        ("Montreal", 1),
        ("Montréal", 1),
    ];
    let mut n = 0;
    for (city, times) in typed {
        for _ in 0..times {
            n += 1;
            let mut s = w.signature("alice", &format!("a{n}"), &format!("P{n}"), "M5V 2T6", city);
            // As a client that does not trim (a web app, a third party) writes it.
            s.city = city.into();
            collection::add_signature(&mut alice, &s, &w.campaign).unwrap();
        }
    }
    // One record in two collections (a phone's chain), the least copy typed `MONTRÉAL`: the
    // merged record counts once, under Montréal's key, with the least copy's spelling.
    let mut a = w.signature("bob", "b1", "Q", "H2X 1Y4", "MONTRÉAL");
    let mut b = a.clone();
    b.city = "montreal".into();
    b.collected_at = a.collected_at + 1;
    a.collected_by = "bob".into();
    collection::add_signature(&mut bob, &a, &w.campaign).unwrap();
    let mut bob2 = collection::create(CAMPAIGN, "bob").unwrap();
    collection::add_signature(&mut bob2, &b, &w.campaign).unwrap();
    let cols = [alice, bob, bob2].map(|d| collection::read(&d).unwrap());
    let t = totals(&w.campaign, &cols, &review::Review::default());
    assert_eq!(t.signatures, 10);
    assert_eq!(
        t.by_city,
        [
            ("Toronto".to_string(), cell(7, 7)),
            // Montreal, Montréal, MONTRÉAL once each: a tie, mixed case with its accent wins.
            ("Montréal".to_string(), cell(3, 3)),
        ]
        .into(),
        "{:?}",
        t.by_city
    );
    // The documents keep what the canvasser typed.
    let typed: Vec<&str> = cols[0]
        .signatures
        .values()
        .map(|s| s.city.as_str())
        .collect();
    assert!(
        typed.contains(&" Toronto ") && typed.contains(&"TORONTO"),
        "{typed:?}"
    );
    let _: &[Collection] = &cols;
}
