//! Counting once (docs/documents.md): a phone writes a chain of collections, re-writing records
//! with the same ids into the next collection (after a refusal, or under a new device after a
//! re-enrollment), sometimes with other fields, sometimes withdrawing one copy. Whatever order
//! the collections' changes arrive in, repeated or not, every record counts once: the totals
//! equal a model that merges each id's copies (withdrawn if any copy is, the other fields from
//! the least copy), and equal the totals of the phones' own documents.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, Change};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use tally_core::collection::{self, Checkin, Collection, Signature};
use tally_core::fixtures::{CAMPAIGN, NOW, World, writer};
use tally_core::review::{self, Review, Strike, StrikeReason};
use tally_core::totals::{day_of, records, totals};
use tally_core::{Role, validate};

const PEOPLE: &[(&str, &str)] = &[
    ("Amara Okafor", "M5V 2T6"),
    ("José Ramírez", "H2X 1Y4"),
    ("Li Wei", "V5K 0A1"),
    ("amara  OKAFOR", "m5v2t6"),
];
const CITIES: &[&str] = &["Toronto", "Montréal", "Hamilton"];

/// One step of a phone's life.
#[derive(Debug, Clone)]
enum Op {
    /// A new signature in the phone's current collection.
    Sign { phone: u8, person: u8, city: u8 },
    /// A record of an earlier collection re-written, same id, into the current one (as a phone
    /// does after a refusal); with another city when `city` is set (a client that changed it).
    Rewrite {
        phone: u8,
        pick: u8,
        city: Option<u8>,
    },
    /// A record of the current collection withdrawn.
    Withdraw { phone: u8, pick: u8 },
    /// A new check-in, or one re-written from an earlier collection.
    Checkin {
        phone: u8,
        person: u8,
        rewrite: Option<u8>,
    },
    /// The next collection of the chain; with `reenroll`, under a new device of the phone.
    Roll { phone: u8, reenroll: bool },
    /// An organizer strikes a record.
    Strike { pick: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, any::<u8>(), any::<u8>()).prop_map(|(phone, person, city)| Op::Sign { phone, person, city }),
        4 => (0u8..2, any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(phone, pick, city)| Op::Rewrite { phone, pick, city }),
        2 => (0u8..2, any::<u8>()).prop_map(|(phone, pick)| Op::Withdraw { phone, pick }),
        2 => (0u8..2, any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(phone, person, rewrite)| Op::Checkin { phone, person, rewrite }),
        2 => (0u8..2, any::<bool>()).prop_map(|(phone, reenroll)| Op::Roll { phone, reenroll }),
        1 => any::<u8>().prop_map(|pick| Op::Strike { pick }),
    ]
}

/// A phone: its collections in chain order (owner, document), and every record it wrote.
struct Phone {
    devices: usize,
    chain: Vec<(String, Automerge)>,
    sigs: Vec<Signature>,
    checkins: Vec<Checkin>,
}

impl Phone {
    fn owner(&self, p: usize) -> String {
        format!("p{p}d{}", self.devices)
    }
}

fn pick<T: Clone>(all: &[T], i: u8) -> Option<T> {
    (!all.is_empty()).then(|| all[usize::from(i) % all.len()].clone())
}

/// Runs `ops` on two phones; returns their collections (owner, document) and the strikes.
fn run(world: &World, ops: &[Op]) -> (Vec<(String, Automerge)>, Review) {
    let mut phones: Vec<Phone> = (0..2)
        .map(|p| {
            let owner = format!("p{p}d0");
            Phone {
                devices: 0,
                chain: vec![(owner.clone(), collection::create(CAMPAIGN, &owner).unwrap())],
                sigs: Vec::new(),
                checkins: Vec::new(),
            }
        })
        .collect();
    let mut review = review::create(CAMPAIGN).unwrap();
    let mut n = 0i64;
    for op in ops {
        n += 1;
        match *op {
            Op::Sign {
                phone,
                person,
                city,
            } => {
                let p = &mut phones[usize::from(phone)];
                let owner = p.owner(usize::from(phone));
                let (name, postal) = PEOPLE[usize::from(person) % PEOPLE.len()];
                let city = CITIES[usize::from(city) % CITIES.len()];
                let mut s = world.signature(&owner, &format!("s{phone}-{n}"), name, postal, city);
                s.collected_at = NOW + n * 3_600_000;
                let doc = &mut p.chain.last_mut().unwrap().1;
                collection::add_signature(doc, &s, &world.campaign).unwrap();
                p.sigs.push(s);
            }
            Op::Rewrite {
                phone,
                pick: i,
                city,
            } => {
                let p = &mut phones[usize::from(phone)];
                let owner = p.owner(usize::from(phone));
                let Some(mut s) = pick(&p.sigs, i) else {
                    continue;
                };
                let doc = &mut p.chain.last_mut().unwrap().1;
                if collection::signature(doc, &s.id).unwrap().is_some() {
                    continue;
                }
                // A re-homed record is collected in its new device's name.
                s.collected_by = owner;
                s.withdrawn = false;
                if let Some(c) = city {
                    s.city = CITIES[usize::from(c) % CITIES.len()].into();
                }
                collection::add_signature(doc, &s, &world.campaign).unwrap();
                p.sigs.push(s);
            }
            Op::Withdraw { phone, pick: i } => {
                let p = &mut phones[usize::from(phone)];
                let doc = &mut p.chain.last_mut().unwrap().1;
                let here: Vec<String> = collection::read(doc)
                    .unwrap()
                    .signatures
                    .into_keys()
                    .collect();
                if let Some(id) = pick(&here, i) {
                    collection::withdraw_signature(doc, &id).unwrap();
                }
            }
            Op::Checkin {
                phone,
                person,
                rewrite,
            } => {
                let p = &mut phones[usize::from(phone)];
                let owner = p.owner(usize::from(phone));
                let mut ci = match rewrite.and_then(|i| pick(&p.checkins, i)) {
                    Some(ci) => ci,
                    None => {
                        let name = PEOPLE[usize::from(person) % PEOPLE.len()].0;
                        let mut ci =
                            world.checkin(&owner, &format!("c{phone}-{n}"), name, n % 2 == 0);
                        ci.at = NOW + n * 60_000;
                        ci
                    }
                };
                ci.by = owner;
                let doc = &mut p.chain.last_mut().unwrap().1;
                if collection::checkin(doc, &ci.id).unwrap().is_some() {
                    continue;
                }
                collection::add_checkin(doc, &ci, &world.campaign).unwrap();
                p.checkins.push(ci);
            }
            Op::Roll { phone, reenroll } => {
                let p = &mut phones[usize::from(phone)];
                if reenroll {
                    p.devices += 1;
                }
                let owner = p.owner(usize::from(phone));
                let previous = format!("collection-{phone}-{}", p.chain.len() - 1);
                let doc = collection::create_continuing(CAMPAIGN, &owner, &previous).unwrap();
                p.chain.push((owner, doc));
            }
            Op::Strike { pick: i } => {
                let all: Vec<String> = phones
                    .iter()
                    .flat_map(|p| p.sigs.iter().map(|s| s.id.clone()))
                    .collect();
                if let Some(id) = pick(&all, i) {
                    let strike = Strike {
                        signature: id,
                        reason: StrikeReason::Duplicate,
                        by: "org".into(),
                        at: NOW,
                        revoked: false,
                    };
                    review::put_strike(&mut review, &strike).unwrap();
                }
            }
        }
    }
    let cols = phones.into_iter().flat_map(|p| p.chain).collect();
    (cols, review::read(&review).unwrap())
}

/// Delivers every collection's changes in a random order, about a third of them twice, each
/// judged by the validator as the server would; returns the documents as they stand after each
/// delivery (read where their first change has arrived).
fn deliver(world: &World, cols: &[(String, Automerge)], seed: u64) -> Vec<Vec<Collection>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<(usize, Change)> = cols
        .iter()
        .enumerate()
        .flat_map(|(i, (_, d))| d.get_changes(&[]).into_iter().map(move |c| (i, c.clone())))
        .collect();
    let dups: Vec<_> = order
        .iter()
        .filter(|_| rng.gen_bool(0.33))
        .cloned()
        .collect();
    order.extend(dups);
    order.shuffle(&mut rng);
    let mut docs: Vec<Automerge> = vec![Automerge::new(); cols.len()];
    let mut seen = Vec::new();
    for (i, change) in order {
        let mut after = docs[i].fork();
        after.apply_changes([change]).expect("apply");
        validate(
            &docs[i],
            &after,
            &writer(&cols[i].0, Role::Canvasser),
            Some(&world.campaign),
        )
        .unwrap_or_else(|r| panic!("valid change refused: {r}"));
        docs[i] = after;
        seen.push(
            docs.iter()
                .filter_map(|d| collection::read(d).ok())
                .collect(),
        );
    }
    seen
}

/// The model: each id's copies merged by hand (not through `records`).
fn model(
    cols: &[Collection],
    review: &Review,
    tz: &str,
) -> (u64, u64, u64, BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut copies: BTreeMap<&str, Vec<&Signature>> = BTreeMap::new();
    for c in cols {
        for s in c.signatures.values() {
            copies.entry(&s.id).or_default().push(s);
        }
    }
    let (mut counted, mut withdrawn, mut struck) = (0, 0, 0);
    let (mut by_city, mut by_day) = (BTreeMap::new(), BTreeMap::new());
    for (id, cs) in copies {
        if cs.iter().any(|s| s.withdrawn) {
            withdrawn += 1;
        } else if review.strikes.get(id).is_some_and(|s| !s.revoked) {
            struck += 1;
        } else {
            counted += 1;
            let best = cs
                .iter()
                .min_by_key(|s| {
                    (
                        s.collected_at,
                        &s.collected_by,
                        &s.event,
                        &s.city,
                        &s.fsa,
                        &s.riding,
                        s.consent_contact,
                        &s.dup,
                    )
                })
                .unwrap();
            *by_city.entry(best.city.clone()).or_default() += 1;
            *by_day.entry(day_of(best.collected_at, tz)).or_default() += 1;
        }
    }
    (counted, withdrawn, struck, by_city, by_day)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn a_chain_counts_each_record_once_whatever_the_order(
        ops in prop::collection::vec(op(), 1..40),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
    ) {
        let world = World::new();
        let (cols, review) = run(&world, &ops);
        let phones: Vec<Collection> = cols.iter().map(|(_, d)| collection::read(d).unwrap()).collect();
        let expected = totals(&world.campaign, &phones, &review);
        let (counted, withdrawn, struck, by_city, by_day) = model(&phones, &review, &world.campaign.timezone);
        prop_assert_eq!((expected.signatures, expected.withdrawn, expected.struck), (counted, withdrawn, struck));
        let cells = |m: &BTreeMap<String, tally_core::totals::Cell>| m.iter().map(|(k, c)| (k.clone(), c.signatures)).collect::<BTreeMap<_, _>>();
        prop_assert_eq!(cells(&expected.by_city), by_city);
        prop_assert_eq!(cells(&expected.by_day), by_day);
        let ids: BTreeSet<&str> = phones.iter().flat_map(|c| c.signatures.keys().map(String::as_str)).collect();
        prop_assert_eq!(counted + withdrawn + struck, ids.len() as u64, "each record once");
        prop_assert_eq!(records(CAMPAIGN, &phones).signatures.len(), ids.len());

        for seed in [seed_a, seed_b] {
            let seen = deliver(&world, &cols, seed);
            // Along the way: every record the server holds counts once.
            for held in &seen {
                let t = totals(&world.campaign, held, &review);
                let ids: BTreeSet<&str> = held.iter().flat_map(|c| c.signatures.keys().map(String::as_str)).collect();
                prop_assert_eq!(t.signatures + t.withdrawn + t.struck, ids.len() as u64);
                prop_assert_eq!(t.by_city.values().map(|c| c.signatures).sum::<u64>(), t.signatures);
            }
            // At the end: the phones' totals, whatever the order of the collections, and with a
            // collection given twice.
            let mut last = seen.last().cloned().unwrap_or_default();
            prop_assert_eq!(&totals(&world.campaign, &last, &review), &expected);
            last.reverse();
            if let Some(c) = last.first().cloned() {
                last.push(c);
            }
            prop_assert_eq!(&totals(&world.campaign, &last, &review), &expected);
            prop_assert_eq!(records(CAMPAIGN, &last), records(CAMPAIGN, &phones));
        }
    }
}

/// The hand-checked case: a record in three collections of one phone (the second copy with
/// another city, the third under a new device after a re-enrollment) counts once, in the city
/// and for the canvasser of its least copy; withdrawing any one copy withdraws the record.
#[test]
fn copies_of_a_record_count_once_and_any_withdrawal_withdraws_it() {
    let w = World::new();
    let mut first = collection::create(CAMPAIGN, "d1").unwrap();
    let mut second = collection::create_continuing(CAMPAIGN, "d1", "first").unwrap();
    let mut third = collection::create_continuing(CAMPAIGN, "d2", "second").unwrap();
    let s = w.signature("d1", "r1", "Amara Okafor", "M5V 2T6", "Toronto");
    collection::add_signature(&mut first, &s, &w.campaign).unwrap();
    let mut moved = s.clone();
    moved.city = "Hamilton".into();
    collection::add_signature(&mut second, &moved, &w.campaign).unwrap();
    let mut rehomed = s.clone();
    rehomed.collected_by = "d2".into();
    collection::add_signature(&mut third, &rehomed, &w.campaign).unwrap();
    let read = |docs: &[&Automerge]| -> Vec<Collection> {
        docs.iter().map(|d| collection::read(d).unwrap()).collect()
    };
    let review = Review::default();
    for order in [
        [&first, &second, &third],
        [&third, &second, &first],
        [&second, &third, &first],
    ] {
        let t = totals(&w.campaign, &read(&order), &review);
        assert_eq!((t.signatures, t.unique_signers, t.withdrawn), (1, 1, 0));
        // The least copy: same time, "d1" < "d2", then "Hamilton" < "Toronto".
        assert_eq!(t.by_city.keys().collect::<Vec<_>>(), ["Hamilton"]);
        assert_eq!(t.by_canvasser.keys().collect::<Vec<_>>(), ["d1"]);
    }
    collection::withdraw_signature(&mut third, "r1").unwrap();
    let t = totals(&w.campaign, &read(&[&first, &second, &third]), &review);
    assert_eq!((t.signatures, t.withdrawn), (0, 1));
    assert!(t.by_city.is_empty());
    let r = records(CAMPAIGN, &read(&[&third, &first]));
    assert!(r.signatures["r1"].withdrawn);
    assert_eq!(r.signatures.len(), 1);
}
