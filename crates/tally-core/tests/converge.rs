//! Property tests: random signatures, check-ins and withdrawals on 2 to 6 devices (some sharing a
//! canvasser's collection, as one canvasser's two phones do), delivered to two servers in random
//! orders with repeated deliveries. Every delivery passes validation, both servers converge to
//! identical documents and identical totals, and no signature any device committed is missing.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, Change};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use tally_core::collection::{self, Collection};
use tally_core::fixtures::{CAMPAIGN, World, writer};
use tally_core::review::Review;
use tally_core::totals::totals;
use tally_core::{Role, validate};

const PEOPLE: &[(&str, &str, &str)] = &[
    ("Amara Okafor", "M5V 2T6", "Toronto"),
    ("José Ramírez", "H2X 1Y4", "Montréal"),
    ("Li Wei", "V5K 0A1", "Vancouver"),
    ("Fatima Haidari", "K1A 0B1", "Ottawa"),
    ("amara  OKAFOR", "m5v2t6", "Toronto"),
    ("Ngozi Adeyemi", "T2P 1J9", "Calgary"),
];

struct Outcome {
    docs: BTreeMap<String, Automerge>,
}

fn deliver(world: &World, changes: &[(String, Change)], seed: u64) -> Outcome {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<&(String, Change)> = changes.iter().collect();
    // Repeated deliveries: about a third of the changes arrive twice.
    let dups: Vec<_> = order
        .iter()
        .filter(|_| rng.gen_bool(0.33))
        .copied()
        .collect();
    order.extend(dups);
    order.shuffle(&mut rng);
    let mut docs: BTreeMap<String, Automerge> = BTreeMap::new();
    for (owner, change) in order {
        let before = docs.entry(owner.clone()).or_default();
        let mut after = before.fork();
        after.apply_changes([change.clone()]).expect("apply");
        validate(
            before,
            &after,
            &writer(owner, Role::Canvasser),
            Some(&world.campaign),
        )
        .unwrap_or_else(|r| panic!("valid change refused: {r}"));
        *before = after;
    }
    Outcome { docs }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn devices_converge_and_lose_nothing(
        n_devices in 2usize..=6,
        ops in prop::collection::vec((0usize..6, 0u8..4, 0usize..PEOPLE.len()), 1..30),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
    ) {
        let world = World::new();
        // Devices 0 and 1 share canvasser c0's collection when there are 3 or more devices.
        let canvassers = if n_devices >= 3 { n_devices - 1 } else { n_devices };
        let owner_of = |d: usize| format!("c{}", if d == 0 { 0 } else { d % canvassers });
        let mut bases: BTreeMap<String, Automerge> = BTreeMap::new();
        let mut devices: Vec<Automerge> = (0..n_devices)
            .map(|d| bases.entry(owner_of(d)).or_insert_with(|| collection::create(CAMPAIGN, &owner_of(d)).unwrap()).fork())
            .collect();
        let mut committed: BTreeSet<String> = BTreeSet::new();
        let mut withdrawn: BTreeSet<String> = BTreeSet::new();
        let mut own: Vec<Vec<String>> = vec![Vec::new(); n_devices];
        for (i, (dev, action, person)) in ops.iter().enumerate() {
            let d = dev % n_devices;
            let owner = owner_of(d);
            let (name, postal, city) = PEOPLE[*person];
            let id = format!("d{d}-{i}");
            match action {
                0 | 1 => {
                    let sig = world.signature(&owner, &id, name, postal, city);
                    collection::add_signature(&mut devices[d], &sig, &world.campaign).unwrap();
                    committed.insert(id.clone());
                    own[d].push(id);
                }
                2 => {
                    let ci = world.checkin(&owner, &id, name, person % 2 == 0);
                    collection::add_checkin(&mut devices[d], &ci, &world.campaign).unwrap();
                }
                _ => {
                    if !own[d].is_empty() {
                        let target = own[d][person % own[d].len()].clone();
                        collection::withdraw_signature(&mut devices[d], &target).unwrap();
                        withdrawn.insert(target);
                    }
                }
            }
        }
        let mut changes = Vec::new();
        for (d, doc) in devices.iter().enumerate() {
            for c in doc.get_changes(&[]) {
                changes.push((owner_of(d), c.clone()));
            }
        }
        let a = deliver(&world, &changes, seed_a);
        let b = deliver(&world, &changes, seed_b);
        prop_assert_eq!(a.docs.keys().collect::<Vec<_>>(), b.docs.keys().collect::<Vec<_>>());
        let mut cols_a: Vec<Collection> = Vec::new();
        let mut cols_b: Vec<Collection> = Vec::new();
        for (owner, da) in &a.docs {
            let db = &b.docs[owner];
            let mut ha = da.get_heads();
            let mut hb = db.get_heads();
            ha.sort();
            hb.sort();
            prop_assert_eq!(ha, hb);
            let ca = collection::read(da).unwrap();
            prop_assert_eq!(&ca, &collection::read(db).unwrap());
            cols_a.push(ca);
            cols_b.push(collection::read(db).unwrap());
        }
        let seen: BTreeSet<String> = cols_a.iter().flat_map(|c| c.signatures.keys().cloned()).collect();
        prop_assert_eq!(&seen, &committed, "a committed signature is missing");
        let ta = totals(&world.campaign, &cols_a, &Review::default());
        let tb = totals(&world.campaign, &cols_b, &Review::default());
        prop_assert_eq!(&ta, &tb);
        prop_assert_eq!(ta.withdrawn as usize, withdrawn.len());
        prop_assert_eq!(ta.signatures as usize, committed.len() - withdrawn.len());
        let live_tokens: BTreeSet<&str> = cols_a.iter().flat_map(|c| c.signatures.values()).filter(|s| !s.withdrawn).map(|s| s.dup.as_str()).collect();
        prop_assert_eq!(ta.unique_signers as usize, live_tokens.len());
    }
}
