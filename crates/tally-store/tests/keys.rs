//! Record keys and erasure on a real SQLite file (issue 15): keys per uploading device (a
//! squatter neither blocks nor replaces the real one), idempotent uploads, refusals (erased,
//! another campaign's record, a device's quota), pages of a campaign's keys, and an erasure
//! that leaves none of the key's bytes in the database file or its WAL.

use std::path::Path;

use tally_core::cells::SignatureRow;
use tally_core::fixtures::World;
use tally_store::{DocMeta, KeyOutcome, Store};

const T0: i64 = 1_700_000_000_000;

/// Every byte of every file in `dir` (the database, its WAL and shm).
fn raw_bytes_in(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A wrapped key's stand-in: distinct, recognisable bytes (the store keeps them opaque).
fn wrapped(tag: u8) -> Vec<u8> {
    let mut v = b"age-encryption.org/v1\n".to_vec();
    v.extend((0..400u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag)));
    v
}

/// Two campaigns, and a projected signature `sig_b` of campaign B.
fn store_with_campaigns(path: &Path) -> Store {
    let store = Store::open(path).unwrap();
    store
        .write(|tx| {
            for c in ["A", "B"] {
                tx.put_meta(&DocMeta {
                    doc_id: format!("doc{c}"),
                    kind: "campaign".into(),
                    campaign: c.into(),
                    owner: None,
                    created_at: T0,
                })?;
            }
            let world = World::new();
            for (campaign, doc, id, dup) in [
                ("B", "colB", "sig_b", "a"),
                ("A", "colA", "sig_a1", "a"),
                ("A", "colA", "sig_a2", "b"),
            ] {
                let mut s = world.signature("dev", id, "Li Wei", "M5V 2T6", "Toronto");
                s.dup = dup.repeat(64);
                let mut batch = tx.projection_batch(campaign);
                batch.signature(doc, &s.id, &SignatureRow::of(&s, "UTC"))?;
                batch.flush()?;
            }
            Ok(())
        })
        .unwrap();
    store
}

#[test]
fn keys_are_per_device_idempotent_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_campaigns(&dir.path().join("tally.db"));
    // A squatter uploads under the real phone's record id first.
    let out = store
        .put_keys("A", "squatter", &[("r1".into(), wrapped(9))], 10, T0)
        .unwrap();
    assert_eq!(out, [KeyOutcome::Stored]);
    // The real phone's key is stored beside it, not refused and not replacing it.
    let keys = [
        ("r1".to_string(), wrapped(1)),
        ("r2".to_string(), wrapped(2)),
    ];
    let out = store.put_keys("A", "phone", &keys, 10, T0).unwrap();
    assert_eq!(out, [KeyOutcome::Stored, KeyOutcome::Stored]);
    // A retry after a crash: the same bytes are fine, other bytes are a conflict.
    let out = store
        .put_keys(
            "A",
            "phone",
            &[("r1".into(), wrapped(1)), ("r2".into(), wrapped(7))],
            10,
            T0,
        )
        .unwrap();
    assert_eq!(out, [KeyOutcome::AlreadyStored, KeyOutcome::Conflict]);
    // Another campaign's signature id.
    let out = store
        .put_keys("A", "phone", &[("sig_b".into(), wrapped(3))], 10, T0)
        .unwrap();
    assert_eq!(out, [KeyOutcome::OtherCampaign]);
    // The quota counts what the device holds.
    let many: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("q{i}"), wrapped(40 + i))).collect();
    let out = store.put_keys("A", "phone", &many, 4, T0).unwrap();
    assert_eq!(
        out,
        [
            KeyOutcome::Stored,
            KeyOutcome::Stored,
            KeyOutcome::TooMany,
            KeyOutcome::TooMany
        ]
    );
    // Both candidates of r1 are listed; pages by record.
    let page = store.list_keys("A", None, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].record, "q0");
    let page = store.list_keys("A", Some("q9"), 1).unwrap();
    assert_eq!(page.len(), 2, "a page holds every key of its records");
    assert!(page.iter().all(|k| k.record == "r1"));
    let all = store.list_keys("A", None, 1000).unwrap();
    let r1: Vec<_> = all.iter().filter(|k| k.record == "r1").collect();
    assert_eq!(r1.len(), 2);
    assert!(
        r1.iter()
            .any(|k| k.device == "phone" && k.wrapped == wrapped(1))
    );
    assert!(
        r1.iter()
            .any(|k| k.device == "squatter" && k.wrapped == wrapped(9))
    );
    let next = store.list_keys("A", Some("r1"), 1000).unwrap();
    assert!(next.iter().all(|k| k.record.as_str() > "r1"));
    assert!(store.list_keys("B", None, 1000).unwrap().is_empty());
}

#[test]
fn an_erasure_deletes_every_copy_and_leaves_no_byte_in_the_file_or_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_campaigns(&dir.path().join("tally.db"));
    let (k1, k2, keep) = (wrapped(11), wrapped(12), wrapped(13));
    store
        .put_keys("A", "phone", &[("sig_a1".into(), k1.clone())], 10, T0)
        .unwrap();
    store
        .put_keys("A", "squatter", &[("sig_a1".into(), k2.clone())], 10, T0)
        .unwrap();
    store
        .put_keys("A", "phone", &[("sig_a2".into(), keep.clone())], 10, T0)
        .unwrap();
    store.checkpoint_truncate().unwrap();
    let before = raw_bytes_in(dir.path());
    assert!(contains(&before, &k1) && contains(&before, &k2));

    assert_eq!(
        store.records_with_token("A", &"a".repeat(64)).unwrap(),
        ["sig_a1"]
    );
    assert_eq!(
        store
            .unknown_signatures("A", &["sig_a1".into(), "sig_b".into()])
            .unwrap(),
        ["sig_b"]
    );
    let e = store
        .erase_records("A", &["sig_a1".into()], "org", T0)
        .unwrap();
    assert_eq!((e.keys_deleted, e.newly_erased), (2, 1));
    // Before the checkpoint, the WAL still holds the page as it was: that is why it runs.
    store.checkpoint_truncate().unwrap();
    let after = raw_bytes_in(dir.path());
    assert!(
        !contains(&after, &k1),
        "the phone's wrapped key is still in the files"
    );
    assert!(
        !contains(&after, &k2),
        "the squatter's wrapped key is still in the files"
    );
    assert!(contains(&after, &keep), "another record's key went too");
    assert_eq!(store.erased_records("A").unwrap(), ["sig_a1"]);
    // A later upload of its key, from any device, is refused.
    for device in ["phone", "other"] {
        let out = store
            .put_keys("A", device, &[("sig_a1".into(), k1.clone())], 10, T0)
            .unwrap();
        assert_eq!(out, [KeyOutcome::Erased]);
    }
    // Erasing again is harmless.
    let e = store
        .erase_records("A", &["sig_a1".into()], "org", T0)
        .unwrap();
    assert_eq!((e.keys_deleted, e.newly_erased), (0, 0));
    assert!(
        store
            .list_keys("A", None, 1000)
            .unwrap()
            .iter()
            .all(|k| k.record != "sig_a1")
    );
    // And the bytes stay gone after the store is closed and opened again.
    drop(store);
    let store = Store::open(&dir.path().join("tally.db")).unwrap();
    assert_eq!(store.erased_records("A").unwrap(), ["sig_a1"]);
    assert!(!contains(&raw_bytes_in(dir.path()), &k1));
}
