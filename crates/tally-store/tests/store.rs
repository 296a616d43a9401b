//! Behaviour of the store on real SQLite files in a temporary folder: documents, transactions,
//! durability across reopen, migrations, devices and tokens, invites, quarantine, and the
//! failures a server meets (full disk, read-only file, damaged file).

use std::path::{Path, PathBuf};

use tally_core::Role;
use tally_core::fixtures::World;
use tally_store::{
    DocFilter, DocMeta, QuarantineFilter, Replaces, SCHEMA_VERSION, Storage, Store, StoreError,
    TokenRefusal,
};
use tempfile::TempDir;

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

fn temp_store() -> (TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tally.db");
    let store = Store::open(&path).expect("open store");
    (dir, path, store)
}

fn meta(doc_id: &str, kind: &str, campaign: &str, owner: Option<&str>) -> DocMeta {
    DocMeta {
        doc_id: doc_id.to_owned(),
        kind: kind.to_owned(),
        campaign: campaign.to_owned(),
        owner: owner.map(str::to_owned),
        created_at: T0,
    }
}

/// Every byte of every file in `dir` (the database, its WAL and shm).
fn raw_bytes_in(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            all.extend(std::fs::read(&path).expect("read file"));
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn documents_append_load_compact_round_trip() {
    let (_dir, _path, store) = temp_store();
    assert!(store.load_document("d1").unwrap().is_none());
    assert!(
        store
            .put_meta(&meta("d1", "collection", "c1", Some("dev1")))
            .unwrap()
    );

    let chunks: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 10 + usize::from(i)]).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let seq = store.append_chunk("d1", chunk, T0 + i as i64).unwrap();
        assert_eq!(seq, i as i64 + 1);
    }
    let doc = store.load_document("d1").unwrap().unwrap();
    assert_eq!(doc.meta, meta("d1", "collection", "c1", Some("dev1")));
    assert_eq!(doc.snapshot, None);
    assert_eq!(doc.incremental, chunks);
    assert_eq!(doc.last_seq, 5);
    let stats = store.chunks_since_snapshot("d1").unwrap();
    assert_eq!((stats.count, stats.bytes, stats.snapshot_bytes), (5, 60, 0));

    // Compact through seq 3 while chunks 4 and 5 exist: they must stay, in order.
    let snapshot = b"snapshot-through-3".to_vec();
    assert!(store.compact("d1", &snapshot, 3, T0 + 10).unwrap());
    let doc = store.load_document("d1").unwrap().unwrap();
    assert_eq!(doc.snapshot.as_deref(), Some(snapshot.as_slice()));
    assert_eq!(doc.incremental, chunks[3..].to_vec());
    assert_eq!(doc.last_seq, 5);
    let stats = store.chunks_since_snapshot("d1").unwrap();
    assert_eq!((stats.count, stats.bytes), (2, 13 + 14));
    assert_eq!(stats.snapshot_bytes, snapshot.len() as u64);

    // Appending continues after the highest seq, never reusing a compacted one.
    assert_eq!(store.append_chunk("d1", b"six", T0 + 11).unwrap(), 6);

    // A stale compaction (through an older seq than the stored snapshot) changes nothing.
    assert!(!store.compact("d1", b"older", 2, T0 + 12).unwrap());
    // Compacting everything leaves only the snapshot.
    assert!(store.compact("d1", b"all", 6, T0 + 13).unwrap());
    let doc = store.load_document("d1").unwrap().unwrap();
    assert_eq!(doc.snapshot.as_deref(), Some(&b"all"[..]));
    assert!(doc.incremental.is_empty());
    assert_eq!(doc.last_seq, 6);

    // Misuse is reported, not guessed at.
    assert!(matches!(
        store.compact("d1", b"x", 7, T0),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.compact("nope", b"x", 1, T0),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.append_chunk("nope", b"x", T0),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn a_failing_write_rolls_back_everything() {
    let (_dir, _path, store) = temp_store();
    let world = World::new();
    let camp = world.campaign.id.clone();
    let err = store
        .write(|tx| {
            tx.put_meta(&meta("d1", "collection", &camp, Some("dev1")))?;
            tx.append_chunk("d1", b"changes", T0)?;
            tx.save_sync_state("peer", "d1", b"state", T0)?;
            tx.quarantine("dev1", "d1", "bad change", b"msg", T0)?;
            let mut batch = tx.projection_batch(&camp);
            let s = world.signature("dev1", "s1", "Li Wei", "L8P 4R5", "Montreal");
            batch.signature("d1", &s, "UTC")?;
            batch.flush()?;
            assert_eq!(tx.totals(&camp)?.signatures, 1, "seen inside the write");
            Err::<(), _>(StoreError::Invalid("the projection refused".into()))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));

    assert!(store.doc_meta("d1").unwrap().is_none());
    assert!(store.load_document("d1").unwrap().is_none());
    assert!(store.load_sync_state("peer", "d1").unwrap().is_none());
    assert!(
        store
            .list_quarantine(&QuarantineFilter::default())
            .unwrap()
            .is_empty()
    );
    let (rows, totals) = store
        .read(|r| Ok((r.signature_rows()?, r.totals(&camp)?)))
        .unwrap();
    assert_eq!((rows, totals.signatures), (0, 0));

    // The same work without the error commits all of it.
    store
        .write(|tx| {
            tx.put_meta(&meta("d1", "collection", "c1", Some("dev1")))?;
            tx.append_chunk("d1", b"changes", T0)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store.load_document("d1").unwrap().unwrap().incremental,
        vec![b"changes".to_vec()]
    );
}

#[test]
fn a_closure_with_its_own_error_type_rolls_back_too() {
    #[derive(Debug)]
    enum ServerError {
        Rejected,
        Store(StoreError),
    }
    impl From<StoreError> for ServerError {
        fn from(err: StoreError) -> Self {
            ServerError::Store(err)
        }
    }
    let (_dir, _path, store) = temp_store();
    let result = store.write_with_error(|tx| {
        tx.put_meta(&meta("d1", "collection", "c1", None))?;
        Err::<(), _>(ServerError::Rejected)
    });
    assert!(matches!(result, Err(ServerError::Rejected)));
    assert!(store.doc_meta("d1").unwrap().is_none());
    let result = store.write_with_error(|tx| -> Result<i64, ServerError> {
        Ok(tx.append_chunk("missing", b"x", T0)?)
    });
    assert!(matches!(
        result,
        Err(ServerError::Store(StoreError::NotFound(_)))
    ));
}

#[test]
fn a_panicking_closure_leaves_the_store_usable() {
    let (_dir, _path, store) = temp_store();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Result<(), StoreError> = store.write(|tx| {
            tx.put_meta(&meta("d1", "collection", "c1", None))?;
            panic!("bug in the caller");
        });
    }));
    assert!(outcome.is_err());
    assert!(store.doc_meta("d1").unwrap().is_none());
    assert!(
        store
            .put_meta(&meta("d1", "collection", "c1", None))
            .unwrap()
    );
}

#[test]
fn reopening_the_file_keeps_everything() {
    let (_dir, path, store) = temp_store();
    store
        .put_meta(&meta("d1", "collection", "c1", Some("dev1")))
        .unwrap();
    store.append_chunk("d1", b"one", T0).unwrap();
    store.append_chunk("d1", b"two", T0).unwrap();
    store.compact("d1", b"snap", 1, T0).unwrap();
    store.save_sync_state("peer", "d1", b"state", T0).unwrap();
    store
        .quarantine("dev1", "d1", "too big", b"blob", T0)
        .unwrap();
    let (admin, token) = store.create_admin("laptop", T0).unwrap();
    let before = store.load_document("d1").unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(store.load_document("d1").unwrap(), before);
    assert_eq!(
        store.load_sync_state("peer", "d1").unwrap().as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(
        store
            .list_quarantine(&QuarantineFilter::default())
            .unwrap()
            .len(),
        1
    );
    let found = store.authenticate(token.as_str(), T0 + 1).unwrap().unwrap();
    assert_eq!(found.device_id, admin.device_id);
    assert!(store.has_admin().unwrap());
}

#[test]
fn two_stores_on_one_file_see_each_others_commits() {
    let (_dir, path, writer) = temp_store();
    let reader = Store::open(&path).unwrap();
    writer
        .put_meta(&meta("d1", "collection", "c1", None))
        .unwrap();
    writer.append_chunk("d1", b"one", T0).unwrap();
    assert_eq!(
        reader.load_document("d1").unwrap().unwrap().incremental,
        vec![b"one".to_vec()]
    );
}

#[test]
fn migrations_are_idempotent_and_versioned() {
    let (_dir, path, store) = temp_store();
    store.put_meta(&meta("d1", "campaign", "d1", None)).unwrap();
    drop(store);
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_campaigns().unwrap().len(), 1);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);

    // A file from a newer tally is refused, not downgraded.
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1));
    assert!(err.to_string().contains("newer tally"), "{err}");
}

#[test]
fn document_meta_listing_and_conflicts() {
    let (_dir, _path, store) = temp_store();
    store
        .put_meta(&meta("camp1", "campaign", "camp1", None))
        .unwrap();
    store
        .put_meta(&meta("camp2", "campaign", "camp2", None))
        .unwrap();
    store
        .put_meta(&meta("col1", "collection", "camp1", Some("devA")))
        .unwrap();
    store
        .put_meta(&meta("col2", "collection", "camp1", Some("devA")))
        .unwrap();
    store
        .put_meta(&meta("col3", "collection", "camp2", Some("devB")))
        .unwrap();

    // Re-declaring identical meta is fine; changing kind, campaign or owner is not.
    assert!(
        !store
            .put_meta(&meta("col1", "collection", "camp1", Some("devA")))
            .unwrap()
    );
    assert!(matches!(
        store.put_meta(&meta("col1", "collection", "camp1", Some("devB"))),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.put_meta(&meta("", "collection", "camp1", None)),
        Err(StoreError::Invalid(_))
    ));

    let ids = |filter: DocFilter| -> Vec<String> {
        store
            .list_documents(&filter)
            .unwrap()
            .into_iter()
            .map(|m| m.doc_id)
            .collect()
    };
    assert_eq!(ids(DocFilter::default()).len(), 5);
    assert_eq!(
        ids(DocFilter {
            campaign: Some("camp1".into()),
            kind: Some("collection".into()),
            ..DocFilter::default()
        }),
        ["col1", "col2"]
    );
    assert_eq!(
        ids(DocFilter {
            owner: Some("devB".into()),
            ..DocFilter::default()
        }),
        ["col3"]
    );
    let campaigns: Vec<String> = store
        .list_campaigns()
        .unwrap()
        .into_iter()
        .map(|m| m.doc_id)
        .collect();
    assert_eq!(campaigns, ["camp1", "camp2"]);
    assert_eq!(store.count_documents_by_owner("devA").unwrap(), 2);
    assert_eq!(store.count_documents_by_owner("nobody").unwrap(), 0);
    assert_eq!(store.count_collections("devA", "camp1").unwrap(), 2);
    assert_eq!(store.count_collections("devA", "camp2").unwrap(), 0);
    assert_eq!(store.count_collections("devB", "camp2").unwrap(), 1);
    assert_eq!(
        store.doc_meta("col3").unwrap(),
        Some(meta("col3", "collection", "camp2", Some("devB")))
    );
}

#[test]
fn sync_states_round_trip_per_peer_and_document() {
    let (_dir, _path, store) = temp_store();
    store
        .put_meta(&meta("d1", "collection", "c1", None))
        .unwrap();
    store
        .put_meta(&meta("d2", "collection", "c1", None))
        .unwrap();
    assert!(store.load_sync_state("p1", "d1").unwrap().is_none());
    store.save_sync_state("p1", "d1", b"a", T0).unwrap();
    store.save_sync_state("p1", "d2", b"b", T0).unwrap();
    store.save_sync_state("p2", "d1", b"c", T0).unwrap();
    store.save_sync_state("p1", "d1", b"a2", T0 + 1).unwrap();
    assert_eq!(
        store.load_sync_state("p1", "d1").unwrap().as_deref(),
        Some(&b"a2"[..])
    );
    assert_eq!(
        store.load_sync_state("p1", "d2").unwrap().as_deref(),
        Some(&b"b"[..])
    );
    assert_eq!(
        store.load_sync_state("p2", "d1").unwrap().as_deref(),
        Some(&b"c"[..])
    );
    assert!(matches!(
        store.save_sync_state("p1", "unknown", b"x", T0),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn only_token_and_code_hashes_reach_the_disk() {
    let (dir, path, store) = temp_store();
    let (_admin, admin_token) = store.create_admin("server laptop", T0).unwrap();
    let (_invite, code) = store
        .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
        .unwrap();
    let (_unused, unused_code) = store
        .create_invite(Some("c1"), Role::Organizer, HOUR, T0)
        .unwrap();
    let (_device, device_token) = store.redeem_invite(code.as_str(), "phone", T0).unwrap();

    let secrets = [
        admin_token.as_str().to_owned(),
        device_token.as_str().to_owned(),
        // Without the "tly_" prefix too, and the codes as shown and as normalized.
        admin_token.as_str()[4..].to_owned(),
        device_token.as_str()[4..].to_owned(),
        code.as_str().to_owned(),
        code.as_str().replace('-', ""),
        unused_code.as_str().to_owned(),
        unused_code.as_str().replace('-', ""),
    ];
    let check = |when: &str| {
        let raw = raw_bytes_in(dir.path());
        assert!(!raw.is_empty());
        for secret in &secrets {
            assert!(
                !contains(&raw, secret.as_bytes()),
                "a secret is on disk {when}"
            );
        }
    };
    check("while open");
    drop(store);
    check("after close");
    // The tokens still work: the hashes are what was stored.
    let store = Store::open(&path).unwrap();
    assert!(
        store
            .authenticate(admin_token.as_str(), T0)
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .authenticate(device_token.as_str(), T0)
            .unwrap()
            .is_some()
    );
}

#[test]
fn idle_tokens_expire_except_the_admins() {
    let (_dir, _path, store) = temp_store();
    let (_admin, admin_token) = store.create_admin("laptop", T0).unwrap();
    let (_id, code) = store
        .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
        .unwrap();
    let (phone, token) = store.redeem_invite(code.as_str(), "phone", T0).unwrap();
    let day = 24 * HOUR;
    let ttl = Some(30 * day);
    // Used on day 20: the idle clock restarts there, so day 45 is still fine.
    let used = store
        .check_token(token.as_str(), T0 + 20 * day, ttl)
        .unwrap()
        .unwrap();
    assert!(store.record_seen(&used, T0 + 20 * day).unwrap());
    let used = store
        .check_token(token.as_str(), T0 + 45 * day, ttl)
        .unwrap()
        .unwrap();
    assert_eq!(used.device_id, phone.device_id);
    assert_eq!(used.last_seen, Some(T0 + 20 * day));
    assert!(store.record_seen(&used, T0 + 45 * day).unwrap());
    // Seen again within the minute: no write.
    let again = store
        .check_token(token.as_str(), T0 + 45 * day + 10, ttl)
        .unwrap()
        .unwrap();
    assert!(!store.record_seen(&again, T0 + 45 * day + 10).unwrap());
    // Then 31 idle days: expired, and it says since when.
    assert_eq!(
        store
            .check_token(token.as_str(), T0 + 76 * day + 1, ttl)
            .unwrap(),
        Err(TokenRefusal::Expired {
            last_active: T0 + 45 * day
        })
    );
    // Without an expiry the same token still works (the operator can lift it).
    assert!(
        store
            .check_token(token.as_str(), T0 + 76 * day + 1, None)
            .unwrap()
            .is_ok()
    );
    // The admin's token never expires; unknown and revoked tokens say so.
    assert!(
        store
            .check_token(admin_token.as_str(), T0 + 400 * day, ttl)
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        store.check_token("tly_00", T0, ttl).unwrap(),
        Err(TokenRefusal::Unknown)
    );
    store
        .revoke_device(&phone.device_id, T0 + 80 * day)
        .unwrap();
    assert_eq!(
        store
            .check_token(token.as_str(), T0 + 80 * day, None)
            .unwrap(),
        Err(TokenRefusal::Revoked { at: T0 + 80 * day })
    );
}

#[test]
fn authenticate_known_unknown_and_revoked() {
    let (_dir, _path, store) = temp_store();
    assert!(!store.has_admin().unwrap());
    let (admin, admin_token) = store.create_admin("laptop", T0).unwrap();
    assert_eq!(admin.role, Role::Admin);
    assert!(store.has_admin().unwrap());
    assert!(matches!(
        store.create_admin("second", T0),
        Err(StoreError::AdminExists)
    ));

    let (_id, code) = store
        .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
        .unwrap();
    let (phone, phone_token) = store
        .redeem_invite(code.as_str(), "  Amina's phone ", T0)
        .unwrap();
    assert_eq!(phone.name, "Amina's phone");
    assert_eq!(phone.role, Role::Canvasser);
    assert_eq!(phone.campaign.as_deref(), Some("c1"));

    let seen = store
        .authenticate(phone_token.as_str(), T0 + 5)
        .unwrap()
        .unwrap();
    assert_eq!(seen.device_id, phone.device_id);
    assert_eq!(seen.last_seen, Some(T0 + 5));
    // Within a minute last_seen is not rewritten; after it, it is.
    let seen = store
        .authenticate(phone_token.as_str(), T0 + 30_000)
        .unwrap()
        .unwrap();
    assert_eq!(seen.last_seen, Some(T0 + 5));
    let seen = store
        .authenticate(phone_token.as_str(), T0 + 70_000)
        .unwrap()
        .unwrap();
    assert_eq!(seen.last_seen, Some(T0 + 70_000));
    assert_eq!(
        store.device(&phone.device_id).unwrap().unwrap().last_seen,
        Some(T0 + 70_000)
    );

    assert!(store.authenticate("tly_0000", T0).unwrap().is_none());
    assert!(store.authenticate("", T0).unwrap().is_none());
    let mut forged = phone_token.as_str().to_owned();
    forged.pop();
    forged.push('x');
    assert!(store.authenticate(&forged, T0).unwrap().is_none());

    assert!(store.revoked_since(T0).unwrap().is_empty());
    assert!(store.revoke_device(&phone.device_id, T0 + HOUR).unwrap());
    assert!(
        !store
            .revoke_device(&phone.device_id, T0 + 2 * HOUR)
            .unwrap()
    );
    assert!(
        store
            .authenticate(phone_token.as_str(), T0 + HOUR)
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .authenticate(admin_token.as_str(), T0 + HOUR)
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.revoked_since(T0 + HOUR).unwrap(),
        std::slice::from_ref(&phone.device_id)
    );
    assert!(store.revoked_since(T0 + HOUR + 1).unwrap().is_empty());
    assert!(matches!(
        store.revoke_device("nobody", T0),
        Err(StoreError::NotFound(_))
    ));

    let devices = store.list_devices().unwrap();
    assert_eq!(devices.len(), 2);
    let revoked = devices
        .iter()
        .find(|d| d.device_id == phone.device_id)
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(T0 + HOUR));

    // With the admin revoked, a new admin may be created (lost-token recovery).
    store.revoke_device(&admin.device_id, T0 + HOUR).unwrap();
    assert!(!store.has_admin().unwrap());
    store.create_admin("new laptop", T0 + HOUR).unwrap();
}

#[test]
fn invites_are_single_use_expire_and_unknown_codes_fail() {
    let (_dir, _path, store) = temp_store();
    let (_id, code) = store
        .create_invite(Some("c1"), Role::Organizer, HOUR, T0)
        .unwrap();

    // Typed in lower case with spaces: still the same code.
    let typed = code.as_str().to_lowercase().replace('-', " ");
    let (device, _token) = store.redeem_invite(&typed, "tablet", T0 + 1).unwrap();
    assert_eq!(device.role, Role::Organizer);
    let err = store
        .redeem_invite(code.as_str(), "another", T0 + 2)
        .unwrap_err();
    assert!(matches!(err, StoreError::InviteUsed), "{err}");
    assert!(err.to_string().contains("already used"));

    let (_id, expiring) = store
        .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
        .unwrap();
    let err = store
        .redeem_invite(expiring.as_str(), "late", T0 + HOUR)
        .unwrap_err();
    assert!(matches!(err, StoreError::InviteExpired), "{err}");
    // A failed redemption enrolls nobody.
    assert_eq!(store.list_devices().unwrap().len(), 1);

    assert!(matches!(
        store.redeem_invite("ZZZZ-ZZZZ-ZZZZ", "x", T0),
        Err(StoreError::InviteUnknown)
    ));
    assert!(matches!(
        store.redeem_invite("not a code", "x", T0),
        Err(StoreError::InviteUnknown)
    ));
    let (_id, fresh) = store
        .create_invite(None, Role::Canvasser, HOUR, T0)
        .unwrap();
    assert!(matches!(
        store.redeem_invite(fresh.as_str(), "   ", T0),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.create_invite(None, Role::Canvasser, 0, T0),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn quarantine_round_trip_and_filters() {
    let (_dir, path, store) = temp_store();
    let a = store
        .quarantine(
            "devA",
            "d1",
            "removes another writer's record",
            b"\x00\x01",
            T0,
        )
        .unwrap();
    let b = store
        .write(|tx| tx.quarantine("devB", "d2", "field too large", b"\x02", T0 + 10))
        .unwrap();
    let c = store
        .quarantine("devA", "d2", "wrong kind", b"\x03", T0 + 20)
        .unwrap();
    assert!(a < b && b < c);
    assert!(matches!(
        store.quarantine("devA", "d2", " ", b"", T0),
        Err(StoreError::Invalid(_))
    ));
    drop(store);
    let store = Store::open(&path).unwrap();

    let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, a);
    assert_eq!(all[0].device_id, "devA");
    assert_eq!(all[0].doc_id, "d1");
    assert_eq!(all[0].at, T0);
    assert_eq!(all[0].reason, "removes another writer's record");
    assert_eq!(all[0].bytes, b"\x00\x01");

    let ids = |filter: QuarantineFilter| -> Vec<i64> {
        store
            .list_quarantine(&filter)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(
        ids(QuarantineFilter {
            device_id: Some("devA".into()),
            ..Default::default()
        }),
        [a, c]
    );
    assert_eq!(
        ids(QuarantineFilter {
            doc_id: Some("d2".into()),
            since: Some(T0 + 15),
            ..Default::default()
        }),
        [c]
    );
    assert_eq!(
        ids(QuarantineFilter {
            after_id: Some(a),
            limit: Some(1),
            ..Default::default()
        }),
        [b]
    );
}

#[test]
fn a_full_disk_is_reported_as_full_and_nothing_half_written() {
    let (_dir, path, store) = temp_store();
    store
        .put_meta(&meta("d1", "collection", "c1", None))
        .unwrap();
    store.append_chunk("d1", b"safe", T0).unwrap();

    let pages = store.page_count().unwrap();
    assert_eq!(store.set_max_pages(pages as u32).unwrap(), pages);
    let big = vec![7u8; 256 * 1024];
    let err = store
        .write(|tx| {
            tx.put_meta(&meta("d2", "collection", "c1", None))?;
            tx.append_chunk("d2", &big, T0)
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("the disk is full: free space on the server's data volume, then retry"),
        "{message}"
    );
    assert!(store.doc_meta("d2").unwrap().is_none());
    let err = store.append_chunk("d1", &big, T0).unwrap_err();
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");

    // Space freed (the cap lifted): the same write now succeeds, and the earlier data is intact.
    store.set_max_pages(u32::MAX).unwrap();
    assert_eq!(store.append_chunk("d1", &big, T0).unwrap(), 2);
    drop(store);
    let store = Store::open(&path).unwrap();
    let doc = store.load_document("d1").unwrap().unwrap();
    assert_eq!(doc.incremental, vec![b"safe".to_vec(), big]);
}

#[test]
fn a_read_only_database_is_reported_as_read_only() {
    let (_dir, path, store) = temp_store();
    store
        .put_meta(&meta("d1", "collection", "c1", None))
        .unwrap();
    store.append_chunk("d1", b"one", T0).unwrap();

    // Opened read-only: reads work, writes fail with ReadOnly.
    let read_only = Store::open_read_only(&path).unwrap();
    assert_eq!(read_only.load_document("d1").unwrap().unwrap().last_seq, 1);
    let err = read_only.append_chunk("d1", b"two", T0).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("the database is read-only"),
        "{err}"
    );
    drop(read_only);
    drop(store);

    // A file without write permission (only testable when not running as root, which ignores
    // permissions): opening it or writing to it reports ReadOnly.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let privileged = std::fs::OpenOptions::new().write(true).open(&path).is_ok();
    if !privileged {
        let result = Store::open(&path).and_then(|s| s.append_chunk("d1", b"two", T0));
        assert!(matches!(result, Err(StoreError::ReadOnly(_))), "{result:?}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn a_file_that_is_not_a_database_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string().contains("restore the latest backup"),
        "{err}"
    );
}

#[test]
fn a_missing_folder_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(&dir.path().join("no/such/folder/tally.db")).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("check that its folder exists"),
        "{err}"
    );
}

fn refusal<'a>(
    device: &'a str,
    raw: &'a [u8],
    keep_raw: bool,
    now: i64,
) -> tally_store::NewQuarantine<'a> {
    tally_store::NewQuarantine {
        device_id: device,
        doc_id: "d1",
        reason: "signatures/s1/name: unknown field",
        rule: Some("unknown field"),
        raw,
        keep_raw,
        change_hashes: &[],
        now,
    }
}

#[test]
fn the_quarantine_keeps_metadata_always_and_raw_bytes_within_bounds() {
    use tally_store::{QuarantineOutcome, QuarantineQuota};
    let (_dir, _path, store) = temp_store();
    let quota = QuarantineQuota {
        max_raw_bytes: 100,
        max_raw_bytes_per_device: 250,
        max_raw_bytes_total: 400,
        max_entries_per_device: 5,
        max_entries_total: 8,
        retention_ms: 1_000,
    };
    let hashes = vec!["ab".repeat(32), "cd".repeat(32)];
    // A refusal whose bytes may hold a refused field: only its metadata is kept.
    let secret = b"Amara Okafor, 12 Main St";
    let mut entry = refusal("devA", secret, false, T0);
    entry.change_hashes = &hashes;
    assert!(matches!(
        store.quarantine_entry(&entry, &quota).unwrap(),
        QuarantineOutcome::Kept {
            raw_kept: false,
            ..
        }
    ));
    // Small bytes that may be kept are; large ones are not.
    assert!(matches!(
        store
            .quarantine_entry(&refusal("devA", &[1; 100], true, T0), &quota)
            .unwrap(),
        QuarantineOutcome::Kept { raw_kept: true, .. }
    ));
    assert!(matches!(
        store
            .quarantine_entry(&refusal("devA", &[2; 101], true, T0), &quota)
            .unwrap(),
        QuarantineOutcome::Kept {
            raw_kept: false,
            ..
        }
    ));
    // The per-device raw quota: 100 + 100 fit, the third does not.
    store
        .quarantine_entry(&refusal("devA", &[3; 100], true, T0), &quota)
        .unwrap();
    assert!(matches!(
        store
            .quarantine_entry(&refusal("devA", &[4; 60], true, T0), &quota)
            .unwrap(),
        QuarantineOutcome::Kept {
            raw_kept: false,
            ..
        }
    ));
    // The device's entry quota (5) is reached: later refusals are counted in its last entry.
    for _ in 0..3 {
        assert!(matches!(
            store
                .quarantine_entry(&refusal("devA", &[5; 10], true, T0), &quota)
                .unwrap(),
            QuarantineOutcome::Counted { id: Some(_) }
        ));
    }
    let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(all.len(), 5);
    let first = &all[0];
    assert!(
        first.bytes.is_empty(),
        "a refused field's bytes are never kept"
    );
    assert_eq!(first.size, secret.len() as i64);
    assert_eq!(first.digest.len(), 64);
    assert_eq!(first.change_hashes, hashes);
    assert_eq!(first.rule.as_deref(), Some("unknown field"));
    assert_eq!(all[1].bytes, vec![1; 100]);
    assert_eq!(all[4].repeats, 3);
    let raw: usize = all.iter().map(|e| e.bytes.len()).sum();
    assert!(raw <= 250, "{raw}");
    // Another device still gets its own entries, up to the total (8).
    for i in 0..5 {
        let out = store
            .quarantine_entry(&refusal("devB", &[6; 10], true, T0), &quota)
            .unwrap();
        assert_eq!(
            matches!(out, QuarantineOutcome::Kept { .. }),
            i < 3,
            "{i}: {out:?}"
        );
    }
    // Retention: everything older than 1 s goes with the next refusal.
    store
        .quarantine_entry(&refusal("devC", b"x", true, T0 + 5_000), &quota)
        .unwrap();
    let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].device_id, "devC");
}

#[test]
fn schema_4_migrates_a_version_3_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let store = Store::open(&path).unwrap();
        drop(store);
    }
    // Roll the file back to version 3's quarantine, with a small and a large entry.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE quarantine;
         CREATE TABLE quarantine (id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, doc_id TEXT NOT NULL,
             at INTEGER NOT NULL, reason TEXT NOT NULL, bytes BLOB NOT NULL) STRICT;
         PRAGMA user_version = 3;",
    )
    .unwrap();
    conn.execute_batch(UNDO_SCHEMA_5).unwrap();
    conn.execute_batch("PRAGMA user_version = 3;").unwrap();
    conn.execute(
        "INSERT INTO quarantine (device_id, doc_id, at, reason, bytes) VALUES ('d', 'x', ?1, 'r', ?2), ('d', 'x', ?1, 'r', ?3)",
        rusqlite::params![T0, vec![1u8; 10], vec![2u8; 20_000]],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].size, all[0].bytes.len()), (10, 10));
    assert_eq!((all[1].size, all[1].bytes.len()), (20_000, 0));
}

/// Takes a file of this build back to schema 5 (before signatures had a folded city key).
const UNDO_SCHEMA_6: &str = "DROP TABLE record_keys; DROP TABLE erased_records;
     DROP TABLE audit;
     DROP INDEX signatures_by_city_key;
     ALTER TABLE signatures DROP COLUMN city_key;
     CREATE INDEX signatures_by_city ON signatures (campaign, city);
     PRAGMA user_version = 5;";

/// Takes a file of this build back to schema 4 (before devices had lineages).
const UNDO_SCHEMA_5: &str = "DROP TABLE record_keys; DROP TABLE erased_records;
     DROP TABLE audit;
     DROP INDEX signatures_by_city_key;
     ALTER TABLE signatures DROP COLUMN city_key;
     CREATE INDEX signatures_by_city ON signatures (campaign, city);
     DROP INDEX devices_by_lineage; DROP INDEX checkins_by_id;
     ALTER TABLE devices DROP COLUMN lineage; ALTER TABLE devices DROP COLUMN replaces;
     PRAGMA user_version = 4;";

#[test]
fn schema_5_gives_every_existing_device_its_own_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let (phone, token) = {
        let store = Store::open(&path).unwrap();
        let (_, code) = store
            .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
            .unwrap();
        store.redeem_invite(code.as_str(), "phone", T0).unwrap()
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(UNDO_SCHEMA_5).unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    let d = store.device(&phone.device_id).unwrap().unwrap();
    assert_eq!(
        (d.lineage.as_str(), d.replaces),
        (phone.device_id.as_str(), None)
    );
    // The migrated device's token still proves it to a re-enrollment.
    let (_, code) = store
        .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
        .unwrap();
    let proof = Replaces {
        device_id: &phone.device_id,
        token: token.as_str(),
    };
    let (new, _) = store
        .redeem_invite_replacing(code.as_str(), "phone again", T0 + 1, Some(proof))
        .unwrap();
    assert_eq!(new.lineage, phone.device_id);
}

#[test]
fn schema_6_leaves_existing_rows_for_the_server_to_fold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(UNDO_SCHEMA_6).unwrap();
    conn.execute_batch(
        "INSERT INTO signatures (doc_id, sig_id, campaign, collected_at, day, collected_by, city, fsa, consent, dup, withdrawn)
         VALUES ('d', 's1', 'c1', 0, '1970-01-01', 'p', 'TORONTO', 'M5V', 0, 't', 0);",
    )
    .unwrap();
    drop(conn);
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let key: Option<String> = conn
        .query_row("SELECT city_key FROM signatures", [], |r| r.get(0))
        .unwrap();
    assert_eq!(key, None, "SQLite cannot fold: the server fills it");
    let stale: String = conn
        .query_row(
            "SELECT value FROM projection_state WHERE name = 'aggregates'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale, "stale");
}

#[test]
fn a_reenrolled_phone_replaces_the_device_whose_token_it_holds() {
    let (_dir, _path, store) = temp_store();
    let invite = |campaign: &str| {
        store
            .create_invite(Some(campaign), Role::Canvasser, HOUR, T0)
            .unwrap()
            .1
    };
    let (old, old_token) = store
        .redeem_invite(invite("c1").as_str(), "phone", T0)
        .unwrap();
    assert_eq!(
        (old.lineage.as_str(), old.replaces.as_deref()),
        (old.device_id.as_str(), None)
    );
    let (other, other_token) = store
        .redeem_invite(invite("c2").as_str(), "other", T0)
        .unwrap();

    // Every wrong proof is refused, and leaves the invite unused.
    let code = invite("c1");
    let refusals = [
        (
            Replaces {
                device_id: "nobody",
                token: old_token.as_str(),
            },
            "not known",
        ),
        (
            Replaces {
                device_id: &old.device_id,
                token: other_token.as_str(),
            },
            "does not belong",
        ),
        (
            Replaces {
                device_id: &other.device_id,
                token: other_token.as_str(),
            },
            "another campaign",
        ),
    ];
    for (proof, words) in refusals {
        let err = store
            .redeem_invite_replacing(code.as_str(), "phone", T0 + 1, Some(proof.clone()))
            .unwrap_err();
        assert!(matches!(err, StoreError::ReplaceRefused(_)), "{err}");
        assert!(err.to_string().contains(words), "{proof:?}: {err}");
        assert!(
            !format!("{proof:?}").contains(&old_token.as_str()[4..]),
            "Debug hides the token"
        );
    }
    assert_eq!(store.list_devices().unwrap().len(), 2, "nobody enrolled");

    // The right proof, with the same (still unused) invite: linked, and the old one revoked.
    let proof = Replaces {
        device_id: &old.device_id,
        token: old_token.as_str(),
    };
    let (new, new_token) = store
        .redeem_invite_replacing(code.as_str(), "phone", T0 + 2, Some(proof))
        .unwrap();
    assert_eq!(new.replaces.as_deref(), Some(old.device_id.as_str()));
    assert_eq!(new.lineage, old.device_id);
    assert_eq!(
        store.device(&old.device_id).unwrap().unwrap().revoked_at,
        Some(T0 + 2)
    );
    assert!(matches!(
        store.check_token(old_token.as_str(), T0 + 3, None).unwrap(),
        Err(TokenRefusal::Revoked { .. })
    ));
    // A chain: the new device replaced in turn keeps the first device's lineage, and a
    // revoked device's token (the phone's only proof after a revocation) still proves it.
    let proof = Replaces {
        device_id: &new.device_id,
        token: new_token.as_str(),
    };
    let (third, _) = store
        .redeem_invite_replacing(invite("c1").as_str(), "phone", T0 + 3, Some(proof))
        .unwrap();
    assert_eq!(third.lineage, old.device_id);
    assert_eq!(third.replaces.as_deref(), Some(new.device_id.as_str()));
    let proof = Replaces {
        device_id: &old.device_id,
        token: old_token.as_str(),
    };
    let (fourth, _) = store
        .redeem_invite_replacing(invite("c1").as_str(), "phone", T0 + 4, Some(proof))
        .unwrap();
    assert_eq!(fourth.lineage, old.device_id);
}

/// The storage interface (`dyn Storage`) over SQLite: a closure's own error rolls the write
/// back and comes back as it was; a committed write is read back in one snapshot.
#[test]
fn the_storage_interface_commits_or_rolls_back_as_the_store_does() {
    let (_dir, _path, store) = temp_store();
    let storage: &dyn Storage = &store;
    #[derive(Debug, PartialEq)]
    enum Mine {
        No,
        Store(String),
    }
    impl From<StoreError> for Mine {
        fn from(e: StoreError) -> Mine {
            Mine::Store(e.to_string())
        }
    }
    let refused = storage.write_with_error(|w| {
        w.put_meta(&meta("d1", "collection", "c1", Some("dev1")))?;
        w.append_chunk("d1", b"one", T0)?;
        Err::<(), _>(Mine::No)
    });
    assert_eq!(refused, Err(Mine::No));
    assert!(storage.doc_meta("d1").unwrap().is_none());
    let seq = storage
        .write(|w| {
            w.put_meta(&meta("d1", "collection", "c1", Some("dev1")))?;
            w.append_chunk("d1", b"one", T0)
        })
        .unwrap();
    assert_eq!(seq, 1);
    let (meta_kind, chunks) = storage
        .read(|r| {
            let m = r.doc_meta("d1")?.expect("declared");
            let d = r.load_document("d1")?.expect("stored");
            Ok((m.kind, d.incremental.len()))
        })
        .unwrap();
    assert_eq!((meta_kind.as_str(), chunks), ("collection", 1));
    let err = storage.append_chunk("nope", b"x", T0).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}
