//! The phone's storage: one SQLite file in the device's home directory, in WAL mode with
//! `synchronous=FULL`, so that a write this module commits survives the phone dying right after.
//!
//! Tables (schema version 2, `PRAGMA user_version`):
//! - `settings(key, value)`: the enrollment (JSON, with the token and the duplicate key), the
//!   plaintext-dropping setting, the last sync;
//! - `documents(doc_id, role, server_heads, sync_state, updated_at)`: one row per document this
//!   phone keeps (its collection, the campaign, the team totals), the heads the server last sent,
//!   and the persisted sync state with it;
//! - `snapshots(doc_id, data, upto_seq)`: a document's compacted automerge save, and the last
//!   chunk it folds in. Kept apart from `documents` so that writing a row there never rewrites
//!   a snapshot of megabytes;
//! - `chunks(seq, doc_id, data, added_at)`: incremental automerge saves appended per commit,
//!   folded into the snapshot by compaction;
//! - `receipts(change_hash, record_id, kind, collected_at, acknowledged_at, details)`: one row per
//!   local change the canvasser made (a signature, a check-in, a withdrawal), pending until the
//!   server's heads include it; `details` is the plaintext kept for display until then;
//! - `receipt_counts(kind, acknowledged, n)`: the receipts counted by kind and state, kept by
//!   triggers in the transaction that changes `receipts`, so counting costs the same at 10 and
//!   at 10,000 receipts.
//!
//! `secure_delete` is on, so dropped plaintext is overwritten in the file, not just unlinked.
//! This module is plain SQL over a connection; it knows nothing of automerge beyond change
//! hashes as hex.

use std::path::Path;
use std::time::Duration;

use automerge::ChangeHash;
use rusqlite::{Connection, OptionalExtension, params};
use tally_proto::DocumentId;

use crate::error::{ClientError, Result};
use crate::receipts::{AckCounts, Counts, Receipt, ReceiptDetails, ReceiptKind};

/// The database file inside the home directory.
pub const DB_FILE: &str = "tally-device.sqlite3";
/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

/// Kept current by triggers; shared by a new file and the migration from version 1.
const RECEIPT_COUNTS: &str = "
CREATE TABLE receipt_counts (
    kind TEXT NOT NULL,
    acknowledged INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (kind, acknowledged)
) STRICT, WITHOUT ROWID;
INSERT INTO receipt_counts (kind, acknowledged, n)
    SELECT k.kind, a.acknowledged, 0
    FROM (SELECT 'signature' AS kind UNION ALL SELECT 'checkin'
          UNION ALL SELECT 'signature_withdrawal' UNION ALL SELECT 'checkin_withdrawal') AS k,
         (SELECT 0 AS acknowledged UNION ALL SELECT 1) AS a;
CREATE TRIGGER receipts_counted_insert AFTER INSERT ON receipts BEGIN
    UPDATE receipt_counts SET n = n + 1
    WHERE kind = new.kind AND acknowledged = (new.acknowledged_at IS NOT NULL);
END;
CREATE TRIGGER receipts_counted_delete AFTER DELETE ON receipts BEGIN
    UPDATE receipt_counts SET n = n - 1
    WHERE kind = old.kind AND acknowledged = (old.acknowledged_at IS NOT NULL);
END;
CREATE TRIGGER receipts_counted_update AFTER UPDATE OF kind, acknowledged_at ON receipts
WHEN old.kind IS NOT new.kind
    OR (old.acknowledged_at IS NULL) IS NOT (new.acknowledged_at IS NULL)
BEGIN
    UPDATE receipt_counts SET n = n - 1
    WHERE kind = old.kind AND acknowledged = (old.acknowledged_at IS NOT NULL);
    UPDATE receipt_counts SET n = n + 1
    WHERE kind = new.kind AND acknowledged = (new.acknowledged_at IS NOT NULL);
END;
";

const SCHEMA: &str = "
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY,
    role TEXT NOT NULL UNIQUE CHECK (role IN ('collection', 'campaign', 'totals')),
    server_heads TEXT NOT NULL DEFAULT '[]',
    sync_state BLOB,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE snapshots (
    doc_id TEXT PRIMARY KEY REFERENCES documents (doc_id),
    data BLOB NOT NULL,
    upto_seq INTEGER NOT NULL
) STRICT;
CREATE TABLE chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents (doc_id),
    data BLOB NOT NULL,
    added_at INTEGER NOT NULL
) STRICT;
CREATE INDEX chunks_by_doc ON chunks (doc_id, seq);
CREATE TABLE receipts (
    change_hash TEXT PRIMARY KEY,
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('signature', 'checkin', 'signature_withdrawal', 'checkin_withdrawal')),
    collected_at INTEGER NOT NULL,
    acknowledged_at INTEGER,
    details TEXT
) STRICT;
CREATE INDEX receipts_by_record ON receipts (record_id);
CREATE INDEX receipts_pending ON receipts (collected_at) WHERE acknowledged_at IS NULL;
";

/// From version 1: snapshots move out of `documents` (a chunk's commit used to rewrite the
/// snapshot's row), and receipts get their counts.
const MIGRATE_1_TO_2: &str = "
CREATE TABLE snapshots (
    doc_id TEXT PRIMARY KEY REFERENCES documents (doc_id),
    data BLOB NOT NULL,
    upto_seq INTEGER NOT NULL
) STRICT;
INSERT INTO snapshots (doc_id, data, upto_seq)
    SELECT doc_id, snapshot, 0 FROM documents WHERE snapshot IS NOT NULL;
ALTER TABLE documents DROP COLUMN snapshot;
";

/// Creates this build's schema on a new file, or migrates an older one, in one transaction.
/// Another process may do the same at the same time: whoever comes second finds it done.
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let run = || -> rusqlite::Result<()> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let steps = match version {
            0 => format!("{SCHEMA} {RECEIPT_COUNTS}"),
            1 => format!(
                "{MIGRATE_1_TO_2} {RECEIPT_COUNTS}
                 UPDATE receipt_counts SET n = (SELECT count(*) FROM receipts r
                     WHERE r.kind = receipt_counts.kind
                       AND (r.acknowledged_at IS NOT NULL) = receipt_counts.acknowledged);"
            ),
            _ => String::new(),
        };
        if !steps.is_empty() {
            conn.execute_batch(&format!("{steps} PRAGMA user_version = {SCHEMA_VERSION};"))?;
        }
        conn.execute_batch("COMMIT")
    };
    run().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        ClientError::from(e)
    })
}

/// Creates the phone's home folder if missing, readable by its owner only (0700), and makes its
/// database files (`DB_FILE` and SQLite's `-wal` and `-shm` beside it) 0600, creating the
/// database file so: they hold the device's token, the campaign's duplicate key and, until the
/// server acknowledges them, the signers' details. A home made group- or world-readable by an
/// older build or by hand is tightened at every open.
pub fn private_home(home: &Path) -> Result<()> {
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        ClientError::Storage(format!(
            "cannot {what} {}: {e}; check that the phone's home folder belongs to this user",
            p.display()
        ))
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| fail("create", home, e))?;
        let tighten = |p: &Path, mode: u32| -> Result<()> {
            let meta = std::fs::metadata(p).map_err(|e| fail("read", p, e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| fail("restrict the permissions of", p, e))?;
            }
            Ok(())
        };
        tighten(home, 0o700)?;
        let db = home.join(DB_FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&db)
            .map_err(|e| fail("create", &db, e))?;
        for suffix in ["", "-wal", "-shm"] {
            let p = home.join(format!("{DB_FILE}{suffix}"));
            if p.exists() {
                tighten(&p, 0o600)?;
            }
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(home).map_err(|e| fail("create", home, e))?;
    Ok(())
}

/// Opens (creating if needed) the database at `path` with the durability settings, and
/// migrates it to this build's schema.
pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| ClientError::Storage(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ClientError::Storage(format!(
            "SQLite refused WAL mode for {} (got {mode}): keep the home directory on the phone's own storage",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    if conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? < SCHEMA_VERSION {
        migrate(&conn)?;
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        SCHEMA_VERSION => {}
        newer if newer > SCHEMA_VERSION => {
            return Err(ClientError::Storage(format!(
                "{} was written by a newer app (schema {newer}, this app reads {SCHEMA_VERSION}): update the app",
                path.display()
            )));
        }
        older => {
            return Err(ClientError::Corrupt(format!(
                "{} has unknown schema version {older}",
                path.display()
            )));
        }
    }
    Ok(conn)
}

/// A counter SQLite bumps when another connection commits: tells a long-running process that
/// another one (e.g. the CLI's `sign` beside `sync --watch`) wrote.
pub fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

pub fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn set_setting(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Which document of the phone a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocRole {
    /// This phone's own collection: it writes it, the server acknowledges it.
    Collection,
    /// The campaign document (petition, events, sealing recipients), received from the server.
    Campaign,
    /// The team totals, received from the server.
    Totals,
}

impl DocRole {
    pub fn as_str(self) -> &'static str {
        match self {
            DocRole::Collection => "collection",
            DocRole::Campaign => "campaign",
            DocRole::Totals => "totals",
        }
    }

    fn parse(s: &str) -> Option<DocRole> {
        Some(match s {
            "collection" => DocRole::Collection,
            "campaign" => DocRole::Campaign,
            "totals" => DocRole::Totals,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DocRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `documents` holds about one document, besides its bytes.
pub struct DocRow {
    pub id: DocumentId,
    pub role: DocRole,
    pub server_heads: Vec<ChangeHash>,
    pub sync_state: Option<Vec<u8>>,
}

pub fn hash_hex(h: &ChangeHash) -> String {
    hex::encode(h.0)
}

pub fn parse_hash(s: &str) -> Option<ChangeHash> {
    let bytes: [u8; 32] = hex::decode(s).ok()?.try_into().ok()?;
    Some(ChangeHash(bytes))
}

fn heads_json(heads: &[ChangeHash]) -> String {
    serde_json::to_string(&heads.iter().map(hash_hex).collect::<Vec<_>>())
        .expect("a list of strings serializes")
}

fn parse_heads(json: &str) -> Result<Vec<ChangeHash>> {
    let list: Vec<String> = serde_json::from_str(json)
        .map_err(|e| ClientError::Corrupt(format!("stored server heads are not a list: {e}")))?;
    list.iter()
        .map(|s| {
            parse_hash(s).ok_or_else(|| {
                ClientError::Corrupt(format!("stored head {s:?} is not a change hash"))
            })
        })
        .collect()
}

pub fn doc_rows(conn: &Connection) -> Result<Vec<DocRow>> {
    let mut stmt = conn.prepare("SELECT doc_id, role, server_heads, sync_state FROM documents")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<Vec<u8>>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, role, heads, sync_state) = row?;
        out.push(DocRow {
            id: id
                .parse()
                .map_err(|e| ClientError::Corrupt(format!("stored document id {id:?}: {e}")))?,
            role: DocRole::parse(&role)
                .ok_or_else(|| ClientError::Corrupt(format!("stored document role {role:?}")))?,
            server_heads: parse_heads(&heads)?,
            sync_state,
        });
    }
    Ok(out)
}

/// A document's snapshot: its compacted save and the last chunk it folds in (0 when it has
/// none, e.g. a document received from the server that was never compacted).
pub fn snapshot(conn: &Connection, id: &DocumentId) -> Result<(Option<Vec<u8>>, i64)> {
    Ok(conn
        .query_row(
            "SELECT data, upto_seq FROM snapshots WHERE doc_id = ?1",
            [id.to_string()],
            |r| Ok((Some(r.get(0)?), r.get(1)?)),
        )
        .optional()?
        .unwrap_or((None, 0)))
}

/// The last chunk the snapshot folds in (0 when none): cheap, the snapshot is not read.
pub fn snapshot_upto(conn: &Connection, id: &DocumentId) -> Result<i64> {
    Ok(conn
        .query_row(
            "SELECT upto_seq FROM snapshots WHERE doc_id = ?1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Hands each chunk of a document numbered above `after` to `f`, in order, one at a time,
/// without a copy per chunk. Returns the highest chunk number seen, or `after` when none.
pub fn each_chunk(
    conn: &Connection,
    id: &DocumentId,
    after: i64,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<i64> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, data FROM chunks WHERE doc_id = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![id.to_string(), after])?;
    let mut max_seq = after;
    while let Some(row) = rows.next()? {
        max_seq = row.get(0)?;
        f(row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?)?;
    }
    Ok(max_seq)
}

/// How much a document has waiting to be compacted, without reading any bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Chunks not folded into the snapshot.
    pub chunks: u64,
    /// Their total size.
    pub chunk_bytes: u64,
    /// The snapshot's size (0 when none).
    pub snapshot_bytes: u64,
}

pub fn chunk_stats(conn: &Connection, id: &DocumentId) -> Result<ChunkStats> {
    let key = id.to_string();
    let (chunks, chunk_bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(data)), 0) FROM chunks WHERE doc_id = ?1",
        [&key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let snapshot_bytes: i64 = conn
        .query_row(
            "SELECT length(data) FROM snapshots WHERE doc_id = ?1",
            [&key],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(ChunkStats {
        chunks: n(chunks),
        chunk_bytes: n(chunk_bytes),
        snapshot_bytes: n(snapshot_bytes),
    })
}

pub fn insert_doc(
    conn: &Connection,
    id: &DocumentId,
    role: DocRole,
    snapshot: Option<&[u8]>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO documents (doc_id, role, updated_at) VALUES (?1, ?2, ?3)",
        params![id.to_string(), role.as_str(), now],
    )?;
    if let Some(snapshot) = snapshot {
        replace_snapshot(conn, id, snapshot, 0)?;
    }
    Ok(())
}

/// Appends a chunk to a document; returns its number (`chunks.seq`).
pub fn append_chunk(conn: &Connection, id: &DocumentId, data: &[u8], now: i64) -> Result<i64> {
    conn.prepare_cached("INSERT INTO chunks (doc_id, data, added_at) VALUES (?1, ?2, ?3)")?
        .execute(params![id.to_string(), data, now])?;
    Ok(conn.last_insert_rowid())
}

/// Replaces a document's snapshot and drops the chunks it folds in (those up to `upto_seq`).
pub fn replace_snapshot(
    conn: &Connection,
    id: &DocumentId,
    snapshot: &[u8],
    upto_seq: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO snapshots (doc_id, data, upto_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (doc_id) DO UPDATE SET data = excluded.data, upto_seq = excluded.upto_seq",
        params![id.to_string(), snapshot, upto_seq],
    )?;
    conn.execute(
        "DELETE FROM chunks WHERE doc_id = ?1 AND seq <= ?2",
        params![id.to_string(), upto_seq],
    )?;
    Ok(())
}

/// Stores what the server said about a document: its heads and our sync state with it.
pub fn set_sync(
    conn: &Connection,
    id: &DocumentId,
    server_heads: &[ChangeHash],
    sync_state: Option<&[u8]>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE documents SET server_heads = ?2, sync_state = coalesce(?3, sync_state), updated_at = ?4
         WHERE doc_id = ?1",
        params![id.to_string(), heads_json(server_heads), sync_state, now],
    )?;
    Ok(())
}

pub fn insert_receipt(conn: &Connection, r: &Receipt) -> Result<()> {
    let details = r
        .details
        .as_ref()
        .map(|d| serde_json::to_string(d).expect("receipt details serialize"));
    conn.prepare_cached(
        "INSERT INTO receipts (change_hash, record_id, kind, collected_at, acknowledged_at, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![r.change_hash, r.record_id, r.kind.as_str(), r.collected_at, r.acknowledged_at, details])?;
    Ok(())
}

/// Change hashes of the receipts not acknowledged yet.
pub fn pending_hashes(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT change_hash FROM receipts WHERE acknowledged_at IS NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Marks receipts acknowledged at `now`, dropping their plaintext when `drop_details`.
pub fn acknowledge(
    conn: &Connection,
    hashes: &[String],
    now: i64,
    drop_details: bool,
) -> Result<AckCounts> {
    let mut counts = AckCounts::default();
    let mut stmt = conn.prepare(
        "UPDATE receipts SET acknowledged_at = ?2,
             details = CASE WHEN ?3 THEN NULL ELSE details END
         WHERE change_hash = ?1 AND acknowledged_at IS NULL
         RETURNING kind",
    )?;
    for h in hashes {
        let kind: Option<String> = stmt
            .query_row(params![h, now, drop_details], |r| r.get(0))
            .optional()?;
        match kind.as_deref().and_then(ReceiptKind::parse) {
            Some(ReceiptKind::Signature) => counts.signatures += 1,
            Some(ReceiptKind::Checkin) => counts.checkins += 1,
            Some(ReceiptKind::SignatureWithdrawal | ReceiptKind::CheckinWithdrawal) => {
                counts.withdrawals += 1
            }
            None => {}
        }
    }
    Ok(counts)
}

/// A receipts row: change hash, record id, kind, collected at, acknowledged at, details.
type ReceiptRow = (String, String, String, i64, Option<i64>, Option<String>);

fn receipt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReceiptRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_receipt(row: ReceiptRow) -> Result<Receipt> {
    let (change_hash, record_id, kind, collected_at, acknowledged_at, details) = row;
    let kind = ReceiptKind::parse(&kind)
        .ok_or_else(|| ClientError::Corrupt(format!("receipt kind {kind:?}")))?;
    let details: Option<ReceiptDetails> = details
        .map(|d| serde_json::from_str(&d))
        .transpose()
        .map_err(|e| ClientError::Corrupt(format!("receipt details: {e}")))?;
    Ok(Receipt {
        record_id,
        kind,
        collected_at,
        change_hash,
        acknowledged: acknowledged_at.is_some(),
        acknowledged_at,
        details,
    })
}

const RECEIPT_COLUMNS: &str =
    "change_hash, record_id, kind, collected_at, acknowledged_at, details";

/// Receipts, oldest first: only pending ones, or all.
pub fn receipts(conn: &Connection, pending_only: bool) -> Result<Vec<Receipt>> {
    let sql = if pending_only {
        format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE acknowledged_at IS NULL ORDER BY collected_at, rowid"
        )
    } else {
        format!("SELECT {RECEIPT_COLUMNS} FROM receipts ORDER BY collected_at, rowid")
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([], receipt_from_row)?;
    rows.map(|r| to_receipt(r?)).collect()
}

/// The receipts of one record (its creation, and its withdrawal if any).
pub fn receipts_of(conn: &Connection, record_id: &str) -> Result<Vec<Receipt>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE record_id = ?1 ORDER BY collected_at, rowid"
    ))?;
    let rows = stmt.query_map([record_id], receipt_from_row)?;
    rows.map(|r| to_receipt(r?)).collect()
}

/// Pending and acknowledged receipts by kind, from the counts the triggers keep.
pub fn counts(conn: &Connection) -> Result<Counts> {
    let mut stmt = conn.prepare_cached("SELECT kind, acknowledged, n FROM receipt_counts")?;
    let mut c = Counts::default();
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (kind, acked, n) = row?;
        let slot = match (ReceiptKind::parse(&kind), acked) {
            (Some(ReceiptKind::Signature), false) => &mut c.signatures_pending,
            (Some(ReceiptKind::Signature), true) => &mut c.signatures_acknowledged,
            (Some(ReceiptKind::Checkin), false) => &mut c.checkins_pending,
            (Some(ReceiptKind::Checkin), true) => &mut c.checkins_acknowledged,
            (Some(_), false) => &mut c.withdrawals_pending,
            (Some(_), true) => &mut c.withdrawals_acknowledged,
            (None, _) => continue,
        };
        *slot += u64::try_from(n).unwrap_or(0);
    }
    Ok(c)
}
