//! The phone's file: a signature is in it when `sign` returns, the receipt counts the triggers
//! keep stay equal to the receipts across every kind of write and a reopen, the background
//! compaction folds chunks without losing a change, and a version 1 file migrates.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, form, ready, sync};
use rusqlite::{Connection, OpenFlags};
use tally_client::{Counts, Device, DocRole};
use tally_core::collection;
use tally_core::fixtures::World;

fn read_only(device: &Device) -> Connection {
    Connection::open_with_flags(device.database_path(), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// The counts computed from scratch from the receipts table, as version 1 did.
fn counted(device: &Device) -> Counts {
    let conn = read_only(device);
    let mut c = Counts::default();
    let mut stmt = conn
        .prepare("SELECT kind, acknowledged_at IS NOT NULL, count(*) FROM receipts GROUP BY 1, 2")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (kind, acked, n) = row.unwrap();
        let slot = match (kind.as_str(), acked) {
            ("signature", false) => &mut c.signatures_pending,
            ("signature", true) => &mut c.signatures_acknowledged,
            ("checkin", false) => &mut c.checkins_pending,
            ("checkin", true) => &mut c.checkins_acknowledged,
            (_, false) => &mut c.withdrawals_pending,
            (_, true) => &mut c.withdrawals_acknowledged,
        };
        *slot += u64::try_from(n).unwrap();
    }
    // Keys the server has not stored, of records whose change it acknowledged (this in-memory
    // server takes no key uploads: they stay on the phone, not yet safe).
    let keys: i64 = conn
        .query_row(
            "SELECT count(*) FROM record_keys k WHERE stored = 0 AND NOT EXISTS (SELECT 1 FROM receipts r \
             WHERE r.record_id = k.record_id AND r.acknowledged_at IS NULL AND r.refused_at IS NULL)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.keys_not_on_server = u64::try_from(keys).unwrap();
    c
}

#[test]
fn a_signature_is_in_the_file_when_sign_returns() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let receipt = device
        .sign(&form("Amara Okafor", "M5V 2T6", "Toronto"))
        .unwrap();
    // Another connection sees the receipt and the chunk holding the change, committed.
    let conn = read_only(&device);
    let stored: String = conn
        .query_row(
            "SELECT record_id FROM receipts WHERE change_hash = ?1",
            [&receipt.change_hash],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, receipt.record_id);
    // A second process opening the file (the first one never closed it) has the signature.
    let other = Device::open(dir.path()).unwrap();
    let doc = other.document(DocRole::Collection).unwrap();
    assert!(
        collection::signature(&doc, &receipt.record_id)
            .unwrap()
            .is_some()
    );
    assert_eq!(other.counts().unwrap().signatures_pending, 1);
}

#[test]
fn counts_follow_sign_checkin_withdraw_ack_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let event = device
        .campaign()
        .unwrap()
        .events
        .keys()
        .next()
        .cloned()
        .unwrap();
    let mut ids = Vec::new();
    for (i, name) in ["Amara Okafor", "Jean Tremblay", "Li Wei"]
        .iter()
        .enumerate()
    {
        let r = device.sign(&form(name, "M5V 2T6", "Toronto")).unwrap();
        assert_eq!(r.signatures_not_yet_safe, i as u64 + 1);
        ids.push(r.record_id);
    }
    device.checkin(&event, "Amara Okafor", true).unwrap();
    device.withdraw(&ids[0]).unwrap();
    let c = device.counts().unwrap();
    assert_eq!(
        (
            c.signatures_pending,
            c.checkins_pending,
            c.withdrawals_pending
        ),
        (3, 1, 1)
    );
    assert_eq!(c, counted(&device));

    let mut server = TestServer::with_campaign(&world);
    let engine = sync(&device, &mut server);
    assert!(engine.is_settled().unwrap());
    let c = device.counts().unwrap();
    assert_eq!(c.pending_total(), 0);
    assert_eq!(
        (
            c.signatures_acknowledged,
            c.checkins_acknowledged,
            c.withdrawals_acknowledged
        ),
        (3, 1, 1)
    );
    assert_eq!(c, counted(&device));

    let r = device
        .sign(&form("Noor Haddad", "H2X 1Y4", "Montréal"))
        .unwrap();
    assert_eq!(r.signatures_not_yet_safe, 1);
    drop(device);
    let reopened = Device::open(dir.path()).unwrap();
    let c = reopened.counts().unwrap();
    assert_eq!((c.signatures_pending, c.signatures_acknowledged), (1, 3));
    assert_eq!(c, counted(&reopened));
    // The status of a phone just opened counts records without loading the collection; a sync
    // right after the open (nothing signed since) loads it and acknowledges the last one.
    assert_eq!(reopened.status().unwrap().collection_records, 5);
    let engine = sync(&reopened, &mut server);
    assert!(engine.is_settled().unwrap());
    let c = reopened.counts().unwrap();
    assert_eq!((c.signatures_pending, c.signatures_acknowledged), (0, 4));
    assert_eq!(c, counted(&reopened));
    assert_eq!(reopened.status().unwrap().collection_records, 5);
}

#[test]
fn background_compaction_folds_chunks_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new();
    let device = ready(dir.path(), &world);
    let n = tally_client::compact::COMPACT_AFTER_CHUNKS as usize + 60;
    let mut ids = Vec::new();
    for i in 0..n {
        let name = format!("Signer {i}");
        ids.push(
            device
                .sign(&form(&name, "M5V 2T6", "Toronto"))
                .unwrap()
                .record_id,
        );
    }
    // The signing path never waits for compaction; the background thread catches up.
    let chunks = |device: &Device| -> i64 {
        read_only(device)
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap()
    };
    let start = Instant::now();
    while chunks(&device) >= n as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no background compaction after {n} signatures"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same device keeps signing on top of the new snapshot, and sees the compactor's commit
    // as nothing new.
    let last = device
        .sign(&form("Last One", "M5V 2T6", "Toronto"))
        .unwrap();
    ids.push(last.record_id);
    assert_eq!(device.status().unwrap().collection_records, n + 1);
    // A fresh open (snapshot plus the chunks after it) has every signature.
    let other = Device::open(dir.path()).unwrap();
    let doc = other.document(DocRole::Collection).unwrap();
    for id in &ids {
        assert!(
            collection::signature(&doc, id).unwrap().is_some(),
            "{id} lost"
        );
    }
    assert_eq!(other.counts().unwrap().signatures_pending, n as u64 + 1);
    // An explicit compaction folds the rest.
    other.compact().unwrap();
    assert_eq!(chunks(&other), 0);
    let doc = Device::open(dir.path())
        .unwrap()
        .document(DocRole::Collection)
        .unwrap();
    assert_eq!(collection::record_count(&doc), n + 1);
}

#[test]
fn a_version_1_file_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(tally_client::store::DB_FILE);
    let doc = collection::create(tally_core::fixtures::CAMPAIGN, "dev1").unwrap();
    let id = tally_proto::DocumentId::from_bytes([7; 16]).to_string();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
             CREATE TABLE documents (doc_id TEXT PRIMARY KEY, role TEXT NOT NULL UNIQUE,
                 snapshot BLOB, server_heads TEXT NOT NULL DEFAULT '[]', sync_state BLOB,
                 updated_at INTEGER NOT NULL) STRICT;
             CREATE TABLE chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 doc_id TEXT NOT NULL REFERENCES documents (doc_id), data BLOB NOT NULL,
                 added_at INTEGER NOT NULL) STRICT;
             CREATE INDEX chunks_by_doc ON chunks (doc_id, seq);
             CREATE TABLE receipts (change_hash TEXT PRIMARY KEY, record_id TEXT NOT NULL,
                 kind TEXT NOT NULL, collected_at INTEGER NOT NULL, acknowledged_at INTEGER,
                 details TEXT) STRICT;
             INSERT INTO receipts VALUES ('a', 'r1', 'signature', 1, NULL, NULL),
                 ('b', 'r2', 'signature', 2, 5, NULL), ('c', 'r1', 'signature_withdrawal', 3, NULL, NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO documents (doc_id, role, snapshot, updated_at) VALUES (?1, 'collection', ?2, 1)",
            rusqlite::params![id, doc.save()],
        )
        .unwrap();
    }
    let device = Device::open(dir.path()).unwrap();
    let c = device.counts().unwrap();
    assert_eq!(
        (
            c.signatures_pending,
            c.signatures_acknowledged,
            c.withdrawals_pending
        ),
        (1, 1, 1)
    );
    let conn = read_only(&device);
    let (version, moved): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), data FROM snapshots WHERE doc_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(version, tally_client::store::SCHEMA_VERSION);
    assert_eq!(moved, doc.save());
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('documents')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!columns.contains(&"snapshot".to_string()), "{columns:?}");
}

/// The phone's folder and files hold its token, the duplicate key and unacknowledged signers'
/// details: only their owner may read them, for a new home and for one an older build (or a
/// careless copy) left open to everyone.
#[cfg(unix)]
#[test]
fn the_phones_folder_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("new").join("phone");
    let device = Device::open(&fresh).unwrap();
    device.status().unwrap();
    assert_eq!(mode(&fresh), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let p = fresh.join(format!("{}{suffix}", tally_client::store::DB_FILE));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    drop(device);

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = open.join(tally_client::store::DB_FILE);
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let device = Device::open(&open).unwrap();
    device.status().unwrap();
    assert_eq!(mode(&open), 0o700);
    assert_eq!(mode(&db), 0o600);
    let wal = open.join(format!("{}-wal", tally_client::store::DB_FILE));
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
}
