//! Validation judges every value a change set writes, not only the ones its patches show: the
//! losers of conflicts, values overwritten later in the same message, values put and deleted.
//! Each case is an attack that was accepted before (a plaintext name stored in a losing record
//! map, a megabyte of text in an overwritten field), and the honest shapes of the same operations
//! (two phones withdrawing one record, a correction made twice before a sync) stay accepted.
//! The property test draws random concurrent change sets, any one of them invalid, and holds that
//! they are always refused, while the same sets without the invalid one are accepted.

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjType, ReadDoc, ScalarValue, Value};
use proptest::prelude::*;
use tally_core::collection::{self, SIGNATURES};
use tally_core::fixtures::{World, writer};
use tally_core::{Role, Rule, validate};

const ALICE: &str = "alice";

fn alice() -> tally_core::Writer {
    writer(ALICE, Role::Canvasser)
}

/// Alice's collection with one signature `s1`.
fn base(w: &World) -> Automerge {
    let mut doc = collection::create(tally_core::fixtures::CAMPAIGN, ALICE).unwrap();
    collection::add_signature(
        &mut doc,
        &w.signature(ALICE, "s1", "Amara Okafor", "M5V 2T6", "Toronto"),
        &w.campaign,
    )
    .unwrap();
    doc
}

fn obj(doc: &Transaction<'_>, path: &[&str]) -> automerge::ObjId {
    let mut o = automerge::ROOT;
    for p in path {
        o = match doc.get(&o, *p).unwrap() {
            Some((Value::Object(_), id)) => id,
            other => panic!("no object at {p}: {other:?}"),
        };
    }
    o
}

/// One more change on `doc` (a fork of it has a new actor, so two branches are concurrent).
fn change(doc: &mut Automerge, f: impl FnOnce(&mut Transaction<'_>)) {
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
}

/// A branch of `doc` with changes of its own.
fn branch(doc: &Automerge, f: impl FnOnce(&mut Automerge)) -> Automerge {
    let mut b = doc.fork();
    f(&mut b);
    b
}

/// `doc` with every branch merged into it: what one sync message carrying them all leaves.
fn merged(doc: &Automerge, branches: &mut [Automerge]) -> Automerge {
    let mut after = doc.fork();
    for b in branches {
        after.merge(b).unwrap();
    }
    after
}

/// A signature record written by hand, with the valid fields of `sig` plus `extra` ones.
fn put_record(
    tx: &mut Transaction<'_>,
    id: &str,
    sig: &collection::Signature,
    extra: &[(&str, ScalarValue)],
) -> automerge::ObjId {
    let sigs = obj(tx, &[SIGNATURES]);
    let r = tx.put_object(&sigs, id, ObjType::Map).unwrap();
    let fields: Vec<(&str, ScalarValue)> = vec![
        ("id", id.into()),
        ("campaign", sig.campaign.as_str().into()),
        ("event", ScalarValue::Null),
        ("collected_at", ScalarValue::Int(sig.collected_at)),
        ("collected_by", sig.collected_by.as_str().into()),
        ("city", sig.city.as_str().into()),
        ("fsa", sig.fsa.as_str().into()),
        ("riding", ScalarValue::Null),
        ("consent_contact", ScalarValue::Boolean(sig.consent_contact)),
        ("dup", sig.dup.as_str().into()),
        ("sealed", ScalarValue::Bytes(sig.sealed.clone())),
        ("withdrawn", ScalarValue::Boolean(false)),
    ];
    for (k, v) in fields.into_iter().chain(extra.iter().cloned()) {
        tx.put(&r, k, v).unwrap();
    }
    r
}

#[track_caller]
fn refused(before: &Automerge, after: &Automerge, w: &World, rule: Rule, path: &str) {
    let r = validate(before, after, &alice(), Some(&w.campaign))
        .expect_err("accepted; every value must be judged");
    assert_eq!(
        (r.rule, r.path.as_str()),
        (rule, path),
        "wrong rejection: {r}"
    );
}

#[track_caller]
fn accepted(before: &Automerge, after: &Automerge, w: &World) {
    validate(before, after, &alice(), Some(&w.campaign)).expect("an honest change was refused");
}

fn plaintext() -> Vec<(&'static str, ScalarValue)> {
    vec![
        ("name", "Amara Okafor".into()),
        ("email", "amara@example.org".into()),
        ("phone", "+1 416 555 0100".into()),
        ("street", "1 Queen St W".into()),
    ]
}

#[test]
fn a_losing_record_map_with_plaintext_is_refused() {
    let w = World::new();
    let doc = base(&w);
    let sig = w.signature(ALICE, "s2", "Jean Tremblay", "H2X 1Y4", "Montréal");
    // Two concurrent changes create `signatures/s2`: one valid, one with the plaintext fields.
    // Whichever wins the conflict, the message is refused.
    for hostile_first in [false, true] {
        let good = branch(&doc, |b| {
            change(b, |tx| {
                put_record(tx, "s2", &sig, &[]);
            })
        });
        let bad = branch(&doc, |b| {
            change(b, |tx| {
                put_record(tx, "s2", &sig, &plaintext());
            })
        });
        let mut branches = if hostile_first {
            vec![bad, good]
        } else {
            vec![good, bad]
        };
        let after = merged(&doc, &mut branches);
        refused(&doc, &after, &w, Rule::Conflict, "signatures/s2");
    }
}

#[test]
fn a_losing_container_or_nested_object_is_refused() {
    let w = World::new();
    let doc = base(&w);
    // A second `signatures` container, created concurrently, holding a record.
    let sig = w.signature(ALICE, "s3", "Li Wei", "V5K 0A1", "Vancouver");
    let mut branches = vec![
        branch(&doc, |b| {
            change(b, |tx| {
                put_record(tx, "s4", &sig, &[]);
            })
        }),
        branch(&doc, |b| {
            change(b, |tx| {
                let c = tx
                    .put_object(automerge::ROOT, SIGNATURES, ObjType::Map)
                    .unwrap();
                let r = tx.put_object(&c, "s3", ObjType::Map).unwrap();
                tx.put(&r, "name", "Li Wei").unwrap();
            })
        }),
    ];
    let after = merged(&doc, &mut branches);
    let r = validate(&doc, &after, &alice(), Some(&w.campaign)).expect_err("accepted");
    assert!(
        matches!(r.rule, Rule::Conflict | Rule::Replaced),
        "wrong rejection: {r}"
    );
    // A text object of a million characters at a field of `s1`, losing to a plain value.
    let mut branches = vec![
        branch(&doc, |b| {
            change(b, |tx| {
                let s = obj(tx, &[SIGNATURES, "s1"]);
                tx.put(&s, "city", "Mississauga").unwrap();
            })
        }),
        branch(&doc, |b| {
            change(b, |tx| {
                let s = obj(tx, &[SIGNATURES, "s1"]);
                let t = tx.put_object(&s, "city", ObjType::Text).unwrap();
                tx.splice_text(&t, 0, 0, &"x".repeat(1_000_000)).unwrap();
            })
        }),
    ];
    let after = merged(&doc, &mut branches);
    let r = validate(&doc, &after, &alice(), Some(&w.campaign)).expect_err("accepted");
    assert_eq!(r.path, "signatures/s1/city", "{r}");
    assert!(
        matches!(r.rule, Rule::Conflict | Rule::WrongType),
        "wrong rejection: {r}"
    );
}

#[test]
fn a_losing_plain_value_is_judged_like_a_visible_one() {
    let w = World::new();
    let doc = base(&w);
    // Two branches correct `s1`'s city: one with a megabyte, one with a good value.
    for (value, rule) in [
        ("x".repeat(1_000_000), Rule::TooLarge),
        ("Toronto\u{0}".to_string(), Rule::Malformed),
    ] {
        let mut branches = vec![
            branch(&doc, |b| {
                change(b, |tx| {
                    let s = obj(tx, &[SIGNATURES, "s1"]);
                    tx.put(&s, "city", "Mississauga").unwrap();
                })
            }),
            branch(&doc, |b| {
                change(b, |tx| {
                    let s = obj(tx, &[SIGNATURES, "s1"]);
                    tx.put(&s, "city", value.as_str()).unwrap();
                })
            }),
        ];
        let after = merged(&doc, &mut branches);
        let r = validate(&doc, &after, &alice(), Some(&w.campaign)).expect_err("accepted");
        assert_eq!(r.path, "signatures/s1/city", "{r}");
        assert!(
            r.rule == rule || r.rule == Rule::Malformed,
            "wrong rejection: {r}"
        );
    }
    // A losing `collected_by` naming another canvasser.
    let mut branches = vec![
        branch(&doc, |b| {
            change(b, |tx| {
                let s = obj(tx, &[SIGNATURES, "s1"]);
                tx.put(&s, "withdrawn", true).unwrap();
            })
        }),
        branch(&doc, |b| {
            change(b, |tx| {
                let s = obj(tx, &[SIGNATURES, "s1"]);
                tx.put(&s, "collected_by", "bob").unwrap();
            })
        }),
    ];
    let after = merged(&doc, &mut branches);
    assert!(validate(&doc, &after, &alice(), Some(&w.campaign)).is_err());
}

#[test]
fn values_overwritten_in_the_same_message_are_judged() {
    let w = World::new();
    let doc = base(&w);
    let sig = w.signature(ALICE, "s5", "Fatima Haidari", "K1A 0B1", "Ottawa");
    // A record created with plaintext, then replaced by a valid one (two changes).
    let mut after = doc.fork();
    change(&mut after, |tx| {
        put_record(tx, "s5", &sig, &plaintext());
    });
    change(&mut after, |tx| {
        put_record(tx, "s5", &sig, &[]);
    });
    refused(&doc, &after, &w, Rule::Replaced, "signatures/s5");
    // The same within one change.
    let mut after = doc.fork();
    change(&mut after, |tx| {
        put_record(tx, "s5", &sig, &plaintext());
        put_record(tx, "s5", &sig, &[]);
    });
    refused(&doc, &after, &w, Rule::Replaced, "signatures/s5");
    // A sealed field first written as the plaintext bytes, then as the real seal.
    let mut after = doc.fork();
    change(&mut after, |tx| {
        let s = obj(tx, &[SIGNATURES, "s1"]);
        tx.put(
            &s,
            "sealed",
            ScalarValue::Bytes(b"Amara Okafor, 1 Queen St W".to_vec()),
        )
        .unwrap();
        tx.put(&s, "sealed", ScalarValue::Bytes(sig.sealed.clone()))
            .unwrap();
    });
    let r = validate(&doc, &after, &alice(), Some(&w.campaign)).expect_err("accepted");
    assert_eq!(r.path, "signatures/s1/sealed", "{r}");
    // A field that does not exist, put and then deleted: nothing in the result shows it.
    let mut after = doc.fork();
    change(&mut after, |tx| {
        let s = obj(tx, &[SIGNATURES, "s1"]);
        tx.put(&s, "name", "Amara Okafor").unwrap();
        tx.delete(&s, "name").unwrap();
    });
    refused(&doc, &after, &w, Rule::Deletion, "signatures/s1/name");
    // A million characters overwritten by a short city, in two changes.
    let mut after = doc.fork();
    change(&mut after, |tx| {
        let s = obj(tx, &[SIGNATURES, "s1"]);
        tx.put(&s, "city", "x".repeat(1_000_000)).unwrap();
    });
    change(&mut after, |tx| {
        let s = obj(tx, &[SIGNATURES, "s1"]);
        tx.put(&s, "city", "Toronto").unwrap();
    });
    refused(&doc, &after, &w, Rule::TooLarge, "signatures/s1/city");
    // A header field put twice.
    let mut after = doc.fork();
    change(&mut after, |tx| {
        tx.put(automerge::ROOT, "owner", "bob").unwrap();
        tx.put(automerge::ROOT, "owner", ALICE).unwrap();
    });
    refused(&doc, &after, &w, Rule::Immutable, "owner");
}

#[test]
fn honest_overwrites_and_concurrent_edits_are_accepted() {
    let w = World::new();
    let doc = base(&w);
    // Signed, then withdrawn, before the phone synced: one message carries both.
    let mut after = doc.fork();
    let s6 = w.signature(ALICE, "s6", "Ngozi Adeyemi", "T2P 1J9", "Calgary");
    collection::add_signature(&mut after, &s6, &w.campaign).unwrap();
    collection::withdraw_signature(&mut after, "s6").unwrap();
    accepted(&doc, &after, &w);
    // A city corrected twice.
    let mut after = doc.fork();
    for city in ["Mississauga", "Brampton"] {
        change(&mut after, |tx| {
            let s = obj(tx, &[SIGNATURES, "s1"]);
            tx.put(&s, "city", city).unwrap();
        });
    }
    accepted(&doc, &after, &w);
    // One canvasser's two phones withdraw the same record at once.
    let mut branches = vec![
        branch(&doc, |b| collection::withdraw_signature(b, "s1").unwrap()),
        branch(&doc, |b| collection::withdraw_signature(b, "s1").unwrap()),
    ];
    let after = merged(&doc, &mut branches);
    accepted(&doc, &after, &w);
    // Two phones add different records concurrently.
    let s7 = w.signature(ALICE, "s7", "Li Wei", "V5K 0A1", "Vancouver");
    let s8 = w.signature(ALICE, "s8", "Jean Tremblay", "H2X 1Y4", "Montréal");
    let mut branches = vec![
        branch(&doc, |b| {
            collection::add_signature(b, &s7, &w.campaign).unwrap();
        }),
        branch(&doc, |b| {
            collection::add_signature(b, &s8, &w.campaign).unwrap();
        }),
    ];
    let after = merged(&doc, &mut branches);
    accepted(&doc, &after, &w);
}

/// An edit a branch makes: valid ones, and ones that must be refused.
#[derive(Debug, Clone)]
enum Edit {
    /// A new valid signature (with a random id).
    Sign(u32),
    /// Withdraw `s1`.
    Withdraw,
    /// Correct `s1`'s city.
    City(u8),
    /// A new record with a plaintext field.
    Plaintext(u32, usize),
    /// `s1`'s city set to an oversized value.
    HugeCity,
    /// `s1`'s city set to a text object.
    TextCity,
    /// A record created twice under one id in this branch.
    Recreate(u32),
    /// A value put on an unknown field, then deleted.
    PutDelete,
    /// `s1`'s sealed field set to plaintext bytes.
    PlainSeal,
}

impl Edit {
    fn is_valid(&self) -> bool {
        matches!(self, Edit::Sign(_) | Edit::Withdraw | Edit::City(_))
    }
}

fn apply(doc: &mut Automerge, w: &World, e: &Edit, branch: usize) {
    const CITIES: &[&str] = &["Toronto", "Montréal", "Ottawa", "Calgary"];
    match e {
        Edit::Sign(n) => {
            let id = format!("b{branch}n{n}");
            let s = w.signature(ALICE, &id, "Amara Okafor", "M5V 2T6", "Toronto");
            collection::add_signature(doc, &s, &w.campaign).unwrap();
        }
        Edit::Withdraw => collection::withdraw_signature(doc, "s1").unwrap(),
        Edit::City(c) => change(doc, |tx| {
            let s = obj(tx, &[SIGNATURES, "s1"]);
            tx.put(&s, "city", CITIES[*c as usize % CITIES.len()])
                .unwrap();
        }),
        Edit::Plaintext(n, field) => {
            let id = format!("p{n}");
            let s = w.signature(ALICE, &id, "Amara Okafor", "M5V 2T6", "Toronto");
            let extra = plaintext();
            let extra = &extra[*field % extra.len()..][..1];
            change(doc, |tx| {
                put_record(tx, &id, &s, extra);
            });
        }
        Edit::HugeCity => change(doc, |tx| {
            let s = obj(tx, &[SIGNATURES, "s1"]);
            tx.put(&s, "city", "y".repeat(300)).unwrap();
        }),
        Edit::TextCity => change(doc, |tx| {
            let s = obj(tx, &[SIGNATURES, "s1"]);
            let t = tx.put_object(&s, "city", ObjType::Text).unwrap();
            tx.splice_text(&t, 0, 0, "Toronto").unwrap();
        }),
        Edit::Recreate(n) => {
            let id = format!("r{n}");
            let s = w.signature(ALICE, &id, "Amara Okafor", "M5V 2T6", "Toronto");
            change(doc, |tx| {
                put_record(tx, &id, &s, &[("name", "Amara Okafor".into())]);
            });
            change(doc, |tx| {
                put_record(tx, &id, &s, &[]);
            });
        }
        Edit::PutDelete => change(doc, |tx| {
            let s = obj(tx, &[SIGNATURES, "s1"]);
            tx.put(&s, "email", "amara@example.org").unwrap();
            tx.delete(&s, "email").unwrap();
        }),
        Edit::PlainSeal => change(doc, |tx| {
            let s = obj(tx, &[SIGNATURES, "s1"]);
            tx.put(&s, "sealed", ScalarValue::Bytes(b"Amara Okafor".to_vec()))
                .unwrap();
        }),
    }
}

fn valid_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<u32>().prop_map(Edit::Sign),
        Just(Edit::Withdraw),
        any::<u8>().prop_map(Edit::City),
    ]
}

fn invalid_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u32>(), 0usize..4).prop_map(|(n, f)| Edit::Plaintext(n, f)),
        Just(Edit::HugeCity),
        Just(Edit::TextCity),
        any::<u32>().prop_map(Edit::Recreate),
        Just(Edit::PutDelete),
        Just(Edit::PlainSeal),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// 2 to 4 concurrent branches of valid edits, one edit somewhere replaced by an invalid one
    /// (before or after the valid ones, in any branch): the merged message is always refused,
    /// and the same branches without it are accepted.
    #[test]
    fn any_invalid_value_in_concurrent_changes_is_refused(
        branches in prop::collection::vec(prop::collection::vec(valid_edit(), 0..4), 2..5),
        bad in invalid_edit(),
        at_branch in any::<prop::sample::Index>(),
        at_edit in any::<prop::sample::Index>(),
    ) {
        let w = World::new();
        let doc = base(&w);
        let target = at_branch.index(branches.len());
        let build = |with_bad: bool| {
            let mut made: Vec<Automerge> = branches
                .iter()
                .enumerate()
                .map(|(i, edits)| {
                    let mut b = doc.fork();
                    let pos = at_edit.index(edits.len() + 1);
                    for (j, e) in edits.iter().enumerate() {
                        if with_bad && i == target && j == pos {
                            apply(&mut b, &w, &bad, i);
                        }
                        apply(&mut b, &w, e, i);
                    }
                    if with_bad && i == target && pos == edits.len() {
                        apply(&mut b, &w, &bad, i);
                    }
                    b
                })
                .collect();
            merged(&doc, &mut made)
        };
        prop_assert!(!bad.is_valid());
        let honest = build(false);
        prop_assert!(
            validate(&doc, &honest, &alice(), Some(&w.campaign)).is_ok(),
            "honest concurrent edits refused"
        );
        let hostile = build(true);
        let verdict = validate(&doc, &hostile, &alice(), Some(&w.campaign));
        prop_assert!(verdict.is_err(), "accepted an invalid value: {bad:?} in branch {target}");
    }
}
