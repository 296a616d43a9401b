//! The catalogue of changes `validate` must refuse, each with its specific rule and field, and
//! the changes it must accept.

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use tally_core::collection::{self, CHECKINS, SIGNATURES};
use tally_core::fixtures::{CAMPAIGN, EVENT, NOW, World, writer};
use tally_core::review::{self, Sheet, SheetStatus, Strike, StrikeReason};
use tally_core::{Role, Rule, campaign, totals_doc, validate};

const ALICE: &str = "alice";

fn edit(before: &Automerge, f: impl FnOnce(&mut Transaction<'_>)) -> Automerge {
    let mut after = before.fork();
    let mut tx = after.transaction();
    f(&mut tx);
    tx.commit();
    after
}

fn obj(doc: &Transaction<'_>, path: &[&str]) -> automerge::ObjId {
    let mut o = ROOT;
    for p in path {
        o = match doc.get(&o, *p).unwrap() {
            Some((Value::Object(_), id)) => id,
            other => panic!("no object at {p}: {other:?}"),
        };
    }
    o
}

/// Alice's collection with one signature `s1` and one check-in `c1`.
fn alice_collection(w: &World) -> Automerge {
    let mut doc = collection::create(CAMPAIGN, ALICE).unwrap();
    collection::add_signature(
        &mut doc,
        &w.signature(ALICE, "s1", "Amara Okafor", "M5V 2T6", "Toronto"),
        &w.campaign,
    )
    .unwrap();
    collection::add_checkin(
        &mut doc,
        &w.checkin(ALICE, "c1", "Amara Okafor", false),
        &w.campaign,
    )
    .unwrap();
    doc
}

#[track_caller]
fn refused(
    before: &Automerge,
    after: &Automerge,
    who: &tally_core::Writer,
    w: &World,
    rule: Rule,
    path: &str,
) {
    let r = validate(before, after, who, Some(&w.campaign))
        .expect_err("change accepted, should be refused");
    assert_eq!(
        (r.rule, r.path.as_str()),
        (rule, path),
        "wrong rejection: {r}"
    );
    assert!(!r.to_string().is_empty());
}

fn put_field(
    before: &Automerge,
    container: &str,
    id: &str,
    field: &str,
    v: impl Into<ScalarValue>,
) -> Automerge {
    let v = v.into();
    edit(before, |tx| {
        let o = obj(tx, &[container, id]);
        tx.put(&o, field, v).unwrap();
    })
}

fn alice() -> tally_core::Writer {
    writer(ALICE, Role::Canvasser)
}

#[test]
fn accepts_a_canvassers_own_work() {
    let w = World::new();
    let empty = Automerge::new();
    let doc = alice_collection(&w);
    let acc = validate(&empty, &doc, &alice(), Some(&w.campaign)).unwrap();
    assert!(acc.created);
    assert_eq!(acc.in_container(SIGNATURES).collect::<Vec<_>>(), vec!["s1"]);
    assert_eq!(acc.in_container(CHECKINS).collect::<Vec<_>>(), vec!["c1"]);

    // Withdraw and correct her own records.
    let mut after = doc.fork();
    collection::withdraw_signature(&mut after, "s1").unwrap();
    collection::withdraw_checkin(&mut after, "c1").unwrap();
    let acc = validate(&doc, &after, &alice(), Some(&w.campaign)).unwrap();
    assert!(!acc.created);
    assert_eq!(acc.records.len(), 2);

    let mut corrected = w.signature(ALICE, "s1", "Amara Okafor", "M5V 2T6", "Mississauga");
    corrected.event = Some(EVENT.into());
    let mut after = doc.fork();
    collection::correct_signature(&mut after, &corrected, &w.campaign).unwrap();
    validate(&doc, &after, &alice(), Some(&w.campaign)).unwrap();
    assert_eq!(
        collection::read(&after).unwrap().signatures["s1"].city,
        "Mississauga"
    );

    // Nothing new: accepted, touches nothing.
    assert_eq!(
        validate(&doc, &doc.fork(), &alice(), None)
            .unwrap()
            .records
            .len(),
        0
    );
}

#[test]
fn accepts_organizers_and_the_server() {
    let w = World::new();
    let org = writer("olu", Role::Organizer);
    validate(&Automerge::new(), &w.campaign_doc, &org, None).unwrap();

    let rev = review::create(CAMPAIGN).unwrap();
    let mut after = rev.fork();
    review::put_strike(
        &mut after,
        &Strike {
            signature: "s1".into(),
            reason: StrikeReason::Duplicate,
            by: "olu".into(),
            at: NOW,
            revoked: false,
        },
    )
    .unwrap();
    review::put_sheet(
        &mut after,
        &Sheet {
            serial: "P-001".into(),
            count: 25,
            riding: Some("Spadina—Harbourfront".into()),
            status: SheetStatus::Counted,
        },
    )
    .unwrap();
    validate(&Automerge::new(), &rev, &org, None).unwrap();
    let acc = validate(&rev, &after, &org, None).unwrap();
    assert_eq!(acc.records.len(), 2);

    let t = totals_doc::create(CAMPAIGN).unwrap();
    let mut t2 = t.fork();
    totals_doc::write(&mut t2, &Default::default(), NOW).unwrap();
    let server = writer("server", Role::Server);
    validate(&Automerge::new(), &t, &server, None).unwrap();
    validate(&t, &t2, &server, None).unwrap();
    assert!(totals_doc::read(&t2).unwrap().is_some());
}

#[test]
fn refuses_roles_campaigns_and_owners() {
    let w = World::new();
    let empty = Automerge::new();
    // A canvasser may not write a campaign document.
    refused(
        &empty,
        &w.campaign_doc,
        &alice(),
        &w,
        Rule::RoleMayNotWrite,
        "kind",
    );
    // An organizer may not write totals.
    let t = totals_doc::create(CAMPAIGN).unwrap();
    refused(
        &empty,
        &t,
        &writer("olu", Role::Organizer),
        &w,
        Rule::RoleMayNotWrite,
        "kind",
    );
    // A canvasser may not write a review.
    refused(
        &empty,
        &review::create(CAMPAIGN).unwrap(),
        &alice(),
        &w,
        Rule::RoleMayNotWrite,
        "kind",
    );
    // A canvasser enrolled elsewhere.
    let doc = alice_collection(&w);
    let mut elsewhere = alice();
    elsewhere.campaign = Some("other".into());
    refused(
        &empty,
        &doc,
        &elsewhere,
        &w,
        Rule::OutsideCampaign,
        "campaign",
    );
    // Bob writing into Alice's collection.
    let after = put_field(&doc, SIGNATURES, "s1", "city", "Hamilton");
    refused(
        &doc,
        &after,
        &writer("bob", Role::Canvasser),
        &w,
        Rule::NotOwner,
        "owner",
    );
    // A brand-new collection must be owned by its writer.
    refused(
        &empty,
        &doc,
        &writer("bob", Role::Canvasser),
        &w,
        Rule::NotOwner,
        "owner",
    );
}

#[test]
fn refuses_acting_as_someone_else() {
    let w = World::new();
    let doc = alice_collection(&w);
    let mut after = doc.fork();
    // Built by hand: the typed API refuses it already.
    let forged = w.signature("bob", "s2", "Someone Else", "K1A 0B1", "Ottawa");
    assert!(collection::add_signature(&mut after, &forged, &w.campaign).is_err());
    let after = edit(&doc, |tx| {
        let sigs = obj(tx, &[SIGNATURES]);
        let s = tx.put_object(&sigs, "s2", ObjType::Map).unwrap();
        for (k, v) in [
            ("id", ScalarValue::from("s2")),
            ("campaign", CAMPAIGN.into()),
            ("event", ScalarValue::Null),
            ("collected_at", ScalarValue::Int(NOW)),
            ("collected_by", "bob".into()),
            ("city", "Ottawa".into()),
            ("fsa", "K1A".into()),
            ("riding", ScalarValue::Null),
            ("consent_contact", false.into()),
            ("dup", forged.dup.as_str().into()),
            ("sealed", ScalarValue::Bytes(forged.sealed.clone())),
        ] {
            tx.put(&s, k, v).unwrap();
        }
    });
    refused(
        &doc,
        &after,
        &alice(),
        &w,
        Rule::ActingAsOther,
        "signatures/s2/collected_by",
    );
    let after = put_field(&doc, CHECKINS, "c1", "by", "bob");
    refused(
        &doc,
        &after,
        &alice(),
        &w,
        Rule::ActingAsOther,
        "checkins/c1/by",
    );
}

#[test]
fn refuses_every_deletion_and_replacement() {
    let w = World::new();
    let doc = alice_collection(&w);
    let a = alice();
    let after = edit(&doc, |tx| {
        let sigs = obj(tx, &[SIGNATURES]);
        tx.delete(&sigs, "s1").unwrap();
    });
    refused(&doc, &after, &a, &w, Rule::Deletion, "signatures/s1");
    let after = edit(&doc, |tx| {
        let s = obj(tx, &[SIGNATURES, "s1"]);
        tx.delete(&s, "riding").unwrap();
    });
    refused(&doc, &after, &a, &w, Rule::Deletion, "signatures/s1/riding");
    let after = edit(&doc, |tx| {
        tx.put_object(ROOT, SIGNATURES, ObjType::Map).unwrap();
    });
    refused(&doc, &after, &a, &w, Rule::Replaced, "signatures");
    let after = edit(&doc, |tx| {
        let sigs = obj(tx, &[SIGNATURES]);
        let s = tx.put_object(&sigs, "s1", ObjType::Map).unwrap();
        tx.put(&s, "id", "s1").unwrap();
    });
    refused(&doc, &after, &a, &w, Rule::Replaced, "signatures/s1");
    // An organizer removing a sealing recipient.
    let org = writer("olu", Role::Organizer);
    let after = edit(&w.campaign_doc, |tx| {
        let r = obj(tx, &["recipients"]);
        tx.delete(&r, 0).unwrap();
    });
    refused(
        &w.campaign_doc,
        &after,
        &org,
        &w,
        Rule::Deletion,
        "recipients/0",
    );
}

#[test]
fn refuses_header_and_immutable_changes() {
    let w = World::new();
    let doc = alice_collection(&w);
    let a = alice();
    refused(
        &doc,
        &edit(&doc, |tx| tx.put(ROOT, "owner", "bob").unwrap()),
        &writer("bob", Role::Canvasser),
        &w,
        Rule::Immutable,
        "owner",
    );
    refused(
        &doc,
        &edit(&doc, |tx| tx.put(ROOT, "campaign", "camp2").unwrap()),
        &a,
        &w,
        Rule::Immutable,
        "campaign",
    );
    refused(
        &doc,
        &edit(&doc, |tx| tx.put(ROOT, "kind", "review").unwrap()),
        &a,
        &w,
        Rule::Immutable,
        "kind",
    );
    refused(
        &doc,
        &put_field(
            &doc,
            SIGNATURES,
            "s1",
            "collected_at",
            ScalarValue::Int(NOW + 1),
        ),
        &a,
        &w,
        Rule::Immutable,
        "signatures/s1/collected_at",
    );
    refused(
        &doc,
        &put_field(&doc, CHECKINS, "c1", "event", "rally2"),
        &a,
        &w,
        Rule::UnknownEvent,
        "checkins/c1/event",
    );
}

/// A chain of collections: a collection may name the one it continues in its first change, and
/// never afterwards; the link is an id.
#[test]
fn a_collection_names_what_it_continues_once() {
    let w = World::new();
    let a = alice();
    let next = collection::create_continuing(CAMPAIGN, ALICE, "prevDoc1").unwrap();
    let accepted = validate(&Automerge::new(), &next, &a, Some(&w.campaign)).expect("accepted");
    let header = accepted.header.expect("a header");
    assert_eq!(header.continues.as_deref(), Some("prevDoc1"));
    assert_eq!(
        tally_core::DocHeader::read(&alice_collection(&w))
            .unwrap()
            .continues,
        None,
        "a first collection continues nothing"
    );
    refused(
        &next,
        &edit(&next, |tx| tx.put(ROOT, "continues", "otherDoc").unwrap()),
        &a,
        &w,
        Rule::Immutable,
        "continues",
    );
    let first = alice_collection(&w);
    refused(
        &first,
        &edit(&first, |tx| tx.put(ROOT, "continues", "prevDoc1").unwrap()),
        &a,
        &w,
        Rule::Immutable,
        "continues",
    );
    assert!(collection::create_continuing(CAMPAIGN, ALICE, "not an id!").is_err());
}

#[test]
fn refuses_bad_fields() {
    let w = World::new();
    let doc = alice_collection(&w);
    let a = alice();
    let cases: Vec<(Automerge, Rule, &str)> = vec![
        (
            put_field(&doc, SIGNATURES, "s1", "fsa", "123"),
            Rule::Malformed,
            "signatures/s1/fsa",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "fsa", "m5v"),
            Rule::Malformed,
            "signatures/s1/fsa",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "fsa", ScalarValue::Int(5)),
            Rule::WrongType,
            "signatures/s1/fsa",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "event", "no-such-rally"),
            Rule::UnknownEvent,
            "signatures/s1/event",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "city", "x".repeat(201)),
            Rule::TooLarge,
            "signatures/s1/city",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "city", "  "),
            Rule::Missing,
            "signatures/s1/city",
        ),
        (
            put_field(
                &doc,
                SIGNATURES,
                "s1",
                "sealed",
                ScalarValue::Bytes(b"Amara Okafor, M5V 2T6".to_vec()),
            ),
            Rule::Malformed,
            "signatures/s1/sealed",
        ),
        (
            put_field(
                &doc,
                SIGNATURES,
                "s1",
                "sealed",
                ScalarValue::Bytes(
                    [b"age-encryption.org/v1\n".as_slice(), &[0u8; 65 * 1024]].concat(),
                ),
            ),
            Rule::TooLarge,
            "signatures/s1/sealed",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "dup", "amara-okafor"),
            Rule::Malformed,
            "signatures/s1/dup",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "consent_contact", "yes"),
            Rule::WrongType,
            "signatures/s1/consent_contact",
        ),
        (
            put_field(&doc, SIGNATURES, "s1", "name", "Amara Okafor"),
            Rule::UnknownField,
            "signatures/s1/name",
        ),
        (
            put_field(&doc, CHECKINS, "c1", "attendee", "Amara"),
            Rule::Malformed,
            "checkins/c1/attendee",
        ),
        (
            put_field(&doc, CHECKINS, "c1", "walk_in", ScalarValue::Null),
            Rule::WrongType,
            "checkins/c1/walk_in",
        ),
        (
            edit(&doc, |tx| tx.put(ROOT, "notes", "hello").unwrap()),
            Rule::UnknownField,
            "notes",
        ),
        (
            edit(&doc, |tx| {
                let s = obj(tx, &[SIGNATURES, "s1"]);
                tx.put_object(&s, "city", ObjType::Text).unwrap();
            }),
            Rule::WrongType,
            "signatures/s1/city",
        ),
        (
            edit(&doc, |tx| {
                let s = obj(tx, &[SIGNATURES, "s1"]);
                tx.put(&s, "withdrawn", ScalarValue::counter(0)).unwrap();
                tx.increment(&s, "withdrawn", 1).unwrap();
            }),
            Rule::WrongType,
            "signatures/s1/withdrawn",
        ),
        (
            edit(&doc, |tx| {
                let sigs = obj(tx, &[SIGNATURES]);
                let s = tx.put_object(&sigs, "s9", ObjType::Map).unwrap();
                tx.put(&s, "id", "s8").unwrap();
            }),
            Rule::Missing,
            "signatures/s9/campaign",
        ),
        (
            edit(&doc, |tx| {
                let sigs = obj(tx, &[SIGNATURES]);
                tx.put(&sigs, "s9", "a signature").unwrap();
            }),
            Rule::WrongType,
            "signatures/s9",
        ),
    ];
    for (i, (after, rule, path)) in cases.iter().enumerate() {
        let r =
            validate(&doc, after, &a, Some(&w.campaign)).expect_err(&format!("case {i} accepted"));
        assert_eq!((r.rule, r.path.as_str()), (*rule, *path), "case {i}: {r}");
    }
    // A time outside 2020..2100, written on a fresh signature.
    let mut late = w.signature(ALICE, "s3", "Late Person", "H2X 1Y4", "Montréal");
    late.collected_at = 5_000_000_000_000;
    let mut after = doc.fork();
    assert!(
        collection::add_signature(&mut after, &late, &w.campaign).is_err(),
        "the typed API refuses a bad time"
    );
}

#[test]
fn refuses_bad_new_documents() {
    let w = World::new();
    let empty = Automerge::new();
    let a = alice();
    let new_doc = |f: &dyn Fn(&mut Transaction<'_>)| {
        let mut d = Automerge::new();
        let mut tx = d.transaction();
        f(&mut tx);
        tx.commit();
        d
    };
    let header = |tx: &mut Transaction<'_>, kind: &str, schema: i64| {
        tx.put(ROOT, "kind", kind).unwrap();
        tx.put(ROOT, "schema", schema).unwrap();
        tx.put(ROOT, "campaign", CAMPAIGN).unwrap();
    };
    let cases: Vec<(Automerge, Rule, &str)> = vec![
        (
            new_doc(&|tx| tx.put(ROOT, "title", "x").unwrap()),
            Rule::Missing,
            "kind",
        ),
        (
            new_doc(&|tx| header(tx, "spreadsheet", 1)),
            Rule::UnknownKind,
            "kind",
        ),
        (
            new_doc(&|tx| header(tx, "collection", 2)),
            Rule::UnsupportedSchema,
            "schema",
        ),
        (
            new_doc(&|tx| header(tx, "collection", 1)),
            Rule::Missing,
            "owner",
        ),
        (
            new_doc(&|tx| {
                header(tx, "collection", 1);
                tx.put(ROOT, "owner", ALICE).unwrap();
                tx.put_object(ROOT, "signatures", ObjType::Map).unwrap();
            }),
            Rule::Missing,
            "checkins",
        ),
        (
            new_doc(&|tx| {
                tx.put(ROOT, "kind", "collection").unwrap();
                tx.put(ROOT, "schema", 1).unwrap();
                tx.put(ROOT, "owner", ALICE).unwrap();
            }),
            Rule::Missing,
            "campaign",
        ),
        (
            new_doc(&|tx| {
                header(tx, "collection", 1);
                tx.put(ROOT, "owner", "bad owner!").unwrap();
            }),
            Rule::Malformed,
            "owner",
        ),
    ];
    for (i, (after, rule, path)) in cases.iter().enumerate() {
        let r = validate(&empty, after, &a, Some(&w.campaign))
            .expect_err(&format!("case {i} accepted"));
        assert_eq!((r.rule, r.path.as_str()), (*rule, *path), "case {i}: {r}");
    }
}

#[test]
fn refuses_bad_campaign_and_review_fields() {
    let w = World::new();
    let org = writer("olu", Role::Organizer);
    let c = &w.campaign_doc;
    refused(
        c,
        &edit(c, |tx| tx.put(ROOT, "timezone", "Mars/Base").unwrap()),
        &org,
        &w,
        Rule::Malformed,
        "timezone",
    );
    refused(
        c,
        &edit(c, |tx| tx.put(ROOT, "goal", -4).unwrap()),
        &org,
        &w,
        Rule::Malformed,
        "goal",
    );
    let bad_recipient = edit(c, |tx| {
        let r = obj(tx, &["recipients"]);
        tx.insert(&r, 2, "age1notarealkey").unwrap();
    });
    refused(c, &bad_recipient, &org, &w, Rule::Malformed, "recipients/2");
    refused(
        c,
        &put_field(c, "events", EVENT, "starts_at", "tomorrow"),
        &org,
        &w,
        Rule::WrongType,
        "events/rally1/starts_at",
    );
    let mut other = writer("olu", Role::Organizer);
    other.campaign = Some("camp2".into());
    refused(
        c,
        &edit(c, |tx| tx.put(ROOT, "goal", 5).unwrap()),
        &other,
        &w,
        Rule::OutsideCampaign,
        "campaign",
    );

    let rev = review::create(CAMPAIGN).unwrap();
    let mut with = rev.fork();
    review::put_strike(
        &mut with,
        &Strike {
            signature: "s1".into(),
            reason: StrikeReason::Invalid,
            by: "olu".into(),
            at: NOW,
            revoked: false,
        },
    )
    .unwrap();
    review::put_sheet(
        &mut with,
        &Sheet {
            serial: "P-1".into(),
            count: 10,
            riding: None,
            status: SheetStatus::Collected,
        },
    )
    .unwrap();
    refused(
        &with,
        &put_field(&with, "strikes", "s1", "reason", "dislike"),
        &org,
        &w,
        Rule::Malformed,
        "strikes/s1/reason",
    );
    refused(
        &with,
        &put_field(&with, "sheets", "P-1", "status", "lost"),
        &org,
        &w,
        Rule::Malformed,
        "sheets/P-1/status",
    );
    refused(
        &with,
        &put_field(&with, "sheets", "P-1", "count", ScalarValue::Int(100_000)),
        &org,
        &w,
        Rule::Malformed,
        "sheets/P-1/count",
    );
    // An erasure is final (docs/security.md, "Erasure"): its strike is never revoked, and
    // never changed into another reason that could be revoked later.
    let mut erased = with.fork();
    review::put_strike(
        &mut erased,
        &Strike {
            signature: "s2".into(),
            reason: StrikeReason::Erased,
            by: "olu".into(),
            at: NOW,
            revoked: false,
        },
    )
    .unwrap();
    refused(
        &erased,
        &put_field(&erased, "strikes", "s2", "revoked", true),
        &org,
        &w,
        Rule::Immutable,
        "strikes/s2/revoked",
    );
    refused(
        &erased,
        &put_field(&erased, "strikes", "s2", "reason", "duplicate"),
        &org,
        &w,
        Rule::Immutable,
        "strikes/s2",
    );
    let t = totals_doc::create(CAMPAIGN).unwrap();
    let server = writer("server", Role::Server);
    refused(
        &t,
        &edit(&t, |tx| tx.put(ROOT, "json", "{not json").unwrap()),
        &server,
        &w,
        Rule::Malformed,
        "json",
    );
}

#[test]
fn javascript_style_numbers_are_accepted() {
    // automerge-js writes whole numbers as floats in some paths: a collected_at as F64 is fine.
    let w = World::new();
    let doc = alice_collection(&w);
    let after = put_field(&doc, SIGNATURES, "s1", "riding", "Toronto Centre");
    validate(&doc, &after, &alice(), Some(&w.campaign)).unwrap();
    let c = campaign::read(&w.campaign_doc).unwrap();
    assert_eq!(c.events.len(), 1);
    let f = edit(&w.campaign_doc, |tx| {
        tx.put(ROOT, "goal", ScalarValue::F64(2000.0)).unwrap()
    });
    validate(&w.campaign_doc, &f, &writer("olu", Role::Organizer), None).unwrap();
    assert_eq!(campaign::read(&f).unwrap().goal, 2000);
}

#[test]
fn validate_bytes_judges_raw_changes() {
    let w = World::new();
    let doc = alice_collection(&w);
    let (after, acc) = tally_core::validate::validate_bytes(
        &Automerge::new(),
        &doc.save(),
        &alice(),
        Some(&w.campaign),
    )
    .unwrap();
    assert!(acc.created);
    assert_eq!(after.get_heads(), doc.get_heads());
    let r = tally_core::validate::validate_bytes(
        &Automerge::new(),
        b"\x85\x6f\x4a\x83garbage",
        &alice(),
        None,
    )
    .unwrap_err();
    assert_eq!(r.rule, Rule::Malformed);
}

/// Who may read what (the server answers every other document as missing).
#[test]
fn a_device_reads_only_what_its_role_and_campaign_allow() {
    let who = |role, campaign: Option<&str>| tally_core::Writer {
        id: "alice".into(),
        role,
        campaign: campaign.map(String::from),
    };
    let canvasser = who(Role::Canvasser, Some("c1"));
    assert!(canvasser.may_read("campaign", "c1", None));
    assert!(canvasser.may_read("totals", "c1", None));
    assert!(canvasser.may_read("collection", "c1", Some("alice")));
    assert!(!canvasser.may_read("collection", "c1", Some("bob")));
    assert!(!canvasser.may_read("collection", "c1", None));
    assert!(!canvasser.may_read("review", "c1", None));
    assert!(!canvasser.may_read("unknown", "c1", None));
    assert!(!canvasser.may_read("campaign", "c2", None));
    assert!(!canvasser.may_read("collection", "c2", Some("alice")));
    let organizer = who(Role::Organizer, Some("c1"));
    for kind in ["campaign", "totals", "collection", "review"] {
        assert!(organizer.may_read(kind, "c1", Some("bob")), "{kind}");
        assert!(!organizer.may_read(kind, "c2", Some("bob")), "{kind}");
    }
    let admin = who(Role::Admin, None);
    assert!(admin.may_read("review", "c2", Some("bob")));
    assert!(!who(Role::Server, None).may_read("totals", "c1", None));
}
