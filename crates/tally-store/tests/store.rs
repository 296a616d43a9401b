//! Behaviour of the SQLite store that is SQLite's own, on real files in a temporary folder:
//! durability across reopen, two connections on one file, migrations, what reaches the disk,
//! a panicking closure, the failures a file meets (full disk, read-only file, damaged file,
//! missing folder). What every backend must do alike is in `tests/conformance.rs`.

use std::path::{Path, PathBuf};

use tally_core::Role;
use tally_store::{DocMeta, QuarantineFilter, Replaces, SCHEMA_VERSION, Store, StoreError};
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

/// Schema 10 claims, for each record the rows of a file of schema 9 hold, its document's
/// owner's lineage: an existing phone's records stay its own.
#[test]
fn schema_10_claims_the_records_of_existing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE record_claims; DROP TABLE projection_queue;
         INSERT INTO devices (device_id, name, role, campaign, token_hash, created_at, lineage)
           VALUES ('second', 'p', 'canvasser', 'c', X'01', 0, 'first');
         INSERT INTO documents (doc_id, kind, campaign, owner, created_at)
           VALUES ('docA', 'collection', 'c', 'second', 0), ('docB', 'collection', 'c', 'other', 0);
         INSERT INTO signatures (doc_id, sig_id, campaign, event, collected_at, day, collected_by,
             city, city_key, fsa, riding, consent, dup, withdrawn)
           VALUES ('docA', 's1', 'c', NULL, 0, '2026-01-01', 'second', 'Hamilton', 'hamilton',
                   'L8P', NULL, 0, 'tok', 0);
         INSERT INTO checkins (doc_id, ci_id, campaign, event, attendee, at, by_id, walk_in, withdrawn)
           VALUES ('docB', 'c1', 'c', 'rally', 'att', 0, 'other', 0, 0);
         PRAGMA user_version = 9;",
    )
    .unwrap();
    drop(conn);
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let claims: Vec<(String, String, String)> = conn
        .prepare("SELECT container, id, lineage FROM record_claims ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let want = |c: &str, i: &str, l: &str| (c.to_string(), i.to_string(), l.to_string());
    assert_eq!(
        claims,
        [
            want("checkins", "c1", "other"),
            want("signatures", "s1", "first")
        ]
    );
}

/// Takes a file of this build back to schema 5 (before signatures had a folded city key).
const UNDO_SCHEMA_6: &str = "DROP TABLE record_claims; DROP TABLE projection_queue;
     DROP TABLE agg_records; DROP TABLE agg_keys; DROP INDEX checkins_by_time;
     DROP TABLE record_keys; DROP TABLE erased_records;
     DROP TABLE audit;
     DROP INDEX signatures_by_city_key;
     ALTER TABLE signatures DROP COLUMN city_key;
     CREATE INDEX signatures_by_city ON signatures (campaign, city);
     PRAGMA user_version = 5;";

/// Takes a file of this build back to schema 4 (before devices had lineages).
const UNDO_SCHEMA_5: &str = "DROP TABLE record_claims; DROP TABLE projection_queue;
     DROP TABLE agg_records; DROP TABLE agg_keys; DROP INDEX checkins_by_time;
     DROP TABLE record_keys; DROP TABLE erased_records;
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

/// Runs a write of `doc_id` that, once inside the writer, waits until `others` more writes have
/// asked for it, so that the writes are sure to share one group.
fn write_waiting_for(store: &Store, doc_id: &str, others: usize) -> Result<(), StoreError> {
    store.write(|tx| {
        tx.put_meta(&meta(doc_id, "collection", "c1", None))?;
        tx.append_chunk(doc_id, doc_id.as_bytes(), T0)?;
        while store.writes_waiting() < 1 + others {
            std::thread::yield_now();
        }
        Ok(())
    })
}

#[test]
fn writes_ready_at_once_share_one_commit_and_each_returns_once_it_is_durable() {
    let (_dir, path, store) = temp_store();
    let before = store.group_commits();
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            write_waiting_for(&store, "d1", 1)?;
            // It returned: its group has committed, so another connection sees both writes.
            let other = Store::open(&path)?;
            Ok::<_, StoreError>((other.doc_meta("d1")?, other.doc_meta("d2")?))
        });
        while store.writes_waiting() < 1 {
            std::thread::yield_now();
        }
        let second = s.spawn(|| {
            store.write(|tx| {
                tx.put_meta(&meta("d2", "collection", "c1", None))?;
                tx.append_chunk("d2", b"two", T0)
            })
        });
        assert_eq!(second.join().unwrap().unwrap(), 1);
        let (d1, d2) = first.join().unwrap().unwrap();
        assert!(d1.is_some() && d2.is_some(), "{d1:?} {d2:?}");
    });
    let after = store.group_commits();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 2),
        "one commit for two writes"
    );
}

#[test]
fn a_write_that_fails_in_a_group_leaves_the_others_work() {
    let (_dir, path, store) = temp_store();
    std::thread::scope(|s| {
        let first = s.spawn(|| write_waiting_for(&store, "d1", 1));
        while store.writes_waiting() < 1 {
            std::thread::yield_now();
        }
        let failing = s.spawn(|| {
            store.write(|tx| {
                tx.put_meta(&meta("d2", "collection", "c1", None))?;
                tx.append_chunk("d2", b"two", T0)?;
                Err::<(), _>(StoreError::Invalid("refused by the caller".into()))
            })
        });
        let err = failing.join().unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        first.join().unwrap().unwrap();
    });
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.load_document("d1").unwrap().unwrap().incremental,
        vec![b"d1".to_vec()]
    );
    assert!(store.doc_meta("d2").unwrap().is_none());
    assert!(store.load_document("d2").unwrap().is_none());
}

#[test]
fn a_write_that_panics_in_a_group_does_not_strand_the_others() {
    let (_dir, path, store) = temp_store();
    std::thread::scope(|s| {
        let first = s.spawn(|| write_waiting_for(&store, "d1", 1));
        while store.writes_waiting() < 1 {
            std::thread::yield_now();
        }
        let panicking = s.spawn(|| {
            let _: Result<(), StoreError> = store.write(|tx| {
                tx.put_meta(&meta("d2", "collection", "c1", None))?;
                panic!("bug in the caller");
            });
        });
        assert!(panicking.join().is_err());
        // No write is left to commit the group: the waiting one commits it itself.
        first.join().unwrap().unwrap();
    });
    let other = Store::open(&path).unwrap();
    assert!(other.doc_meta("d1").unwrap().is_some());
    assert!(other.doc_meta("d2").unwrap().is_none());
}

#[test]
fn a_group_that_meets_a_full_disk_fails_every_write_in_it_and_keeps_none() {
    let (_dir, path, store) = temp_store();
    store
        .put_meta(&meta("d0", "collection", "c1", None))
        .unwrap();
    let pages = store.page_count().unwrap();
    store.set_max_pages(pages as u32 + 2).unwrap();
    let big = vec![7u8; 256 * 1024];
    std::thread::scope(|s| {
        let first = s.spawn(|| write_waiting_for(&store, "d1", 1));
        while store.writes_waiting() < 1 {
            std::thread::yield_now();
        }
        let filling = s.spawn(|| {
            store.write(|tx| {
                tx.put_meta(&meta("d2", "collection", "c1", None))?;
                tx.append_chunk("d2", &big, T0)
            })
        });
        let err = filling.join().unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Full(_)), "{err:?}");
        // SQLite rolls the whole transaction back on a full disk: the small write that
        // shared it is not kept either, and is told so (not acknowledged, so its sender
        // retries).
        let err = first.join().unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("same group transaction failed"),
            "{message}"
        );
        assert!(message.contains("retry"), "{message}");
    });
    let other = Store::open(&path).unwrap();
    assert!(other.doc_meta("d1").unwrap().is_none());
    store.set_max_pages(u32::MAX).unwrap();
    assert!(store.doc_meta("d2").unwrap().is_none());
    assert_eq!(store.append_chunk("d0", b"after", T0).unwrap(), 1);
}

#[test]
fn the_space_by_table_counts_each_tables_pages_with_its_indexes() {
    let (_dir, _path, store) = temp_store();
    store
        .put_meta(&meta("d1", "collection", "c1", None))
        .unwrap();
    let big = vec![7u8; 200 * 1024];
    store.append_chunk("d1", &big, T0).unwrap();
    let space = store.space_by_table().unwrap();
    let bytes = |name: &str| space.iter().find(|(n, _)| n == name).map(|(_, b)| *b);
    let page = store.page_size().unwrap();
    // The chunk's 200 KiB are in the chunks table's pages, the largest.
    assert_eq!(space[0].0, "chunks", "{space:?}");
    assert!(bytes("chunks").unwrap() >= 200 * 1024, "{space:?}");
    assert!(bytes("documents").unwrap() >= page, "{space:?}");
    let total: u64 = space.iter().map(|(_, b)| b).sum();
    assert_eq!(
        total,
        store.page_count().unwrap() * page,
        "every page counted once"
    );
    assert_eq!(bytes("(free pages)"), Some(0));
}

#[test]
fn a_write_alone_is_never_grouped_and_rolls_back_alone() {
    let (_dir, path, store) = temp_store();
    let before = store.group_commits();
    store
        .write_alone_with_error(|tx| {
            tx.put_meta(&meta("d1", "collection", "c1", None))?;
            tx.append_chunk("d1", b"one", T0)
        })
        .unwrap();
    let err = store
        .write_alone_with_error(|tx| {
            tx.put_meta(&meta("d2", "collection", "c1", None))?;
            Err::<(), _>(StoreError::Invalid("refused by the caller".into()))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(store.group_commits(), before, "not counted as a group");
    // A grouped write that panicked leaves its group transaction open (nothing in it): a
    // write alone ends it first, then runs in a transaction of its own.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Result<(), StoreError> = store.write(|tx| {
            tx.put_meta(&meta("d3", "collection", "c1", None))?;
            panic!("bug in the caller");
        });
    }));
    assert!(panicked.is_err());
    store
        .write_alone_with_error(|tx| {
            tx.put_meta(&meta("d3", "collection", "c1", None))?;
            tx.append_chunk("d3", b"three", T0)
        })
        .unwrap();
    let other = Store::open(&path).unwrap();
    assert!(other.doc_meta("d1").unwrap().is_some());
    assert!(other.doc_meta("d2").unwrap().is_none());
    assert_eq!(
        other.load_document("d3").unwrap().unwrap().incremental,
        vec![b"three".to_vec()]
    );
}
