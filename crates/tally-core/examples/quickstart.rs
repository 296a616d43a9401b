//! A walk through the document core: a campaign, two canvassers' collections, a duplicate signer,
//! a strike, and the totals. Run with `cargo run -p tally-core --example quickstart --features testkit`.

use tally_core::collection;
use tally_core::fixtures::{CAMPAIGN, World};
use tally_core::review::{self, Strike, StrikeReason};
use tally_core::totals::totals;

fn main() {
    let w = World::new();
    let mut alice = collection::create(CAMPAIGN, "alice").expect("collection");
    let mut bob = collection::create(CAMPAIGN, "bob").expect("collection");
    for (who, id, name, postal, city) in [
        ("alice", "a1", "Amara Okafor", "M5V 2T6", "Toronto"),
        ("alice", "a2", "José Ramírez", "H2X 1Y4", "Montréal"),
        ("bob", "b1", "AMARA OKAFOR", "m5v2t6", "Toronto"),
        ("bob", "b2", "Test Entry", "K1A 0B1", "Ottawa"),
    ] {
        let doc = if who == "alice" { &mut alice } else { &mut bob };
        let sig = w.signature(who, id, name, postal, city);
        collection::add_signature(doc, &sig, &w.campaign).expect("signature");
    }
    let mut rev = review::create(CAMPAIGN).expect("review");
    let strike = Strike {
        signature: "b2".into(),
        reason: StrikeReason::TestEntry,
        by: "olu".into(),
        at: tally_core::fixtures::NOW,
        revoked: false,
    };
    review::put_strike(&mut rev, &strike).expect("strike");
    let cols = [
        collection::read(&alice).expect("read"),
        collection::read(&bob).expect("read"),
    ];
    let t = totals(&w.campaign, &cols, &review::read(&rev).expect("read"));
    println!("{}", serde_json::to_string_pretty(&t).expect("json"));
    println!(
        "{} signatures counted, {} unique signers, {} struck",
        t.signatures, t.unique_signers, t.struck
    );
}
