//! The phone's storage: one SQLite file in the device's home directory, in WAL mode with
//! `synchronous=FULL`, so that a write this module commits survives the phone dying right after.
//!
//! Tables (schema version 1, `PRAGMA user_version`):
//! - `settings(key, value)`: the enrollment (JSON, with the token and the duplicate key), the
//!   plaintext-dropping setting, the last sync;
//! - `documents(doc_id, role, snapshot, server_heads, sync_state, updated_at)`: one row per
//!   document this phone keeps (its collection, the campaign, the team totals), the compacted
//!   automerge save, the heads the server last sent, and the persisted sync state with it;
//! - `chunks(seq, doc_id, data, added_at)`: incremental automerge saves appended per commit,
//!   folded into `documents.snapshot` by compaction;
//! - `receipts(change_hash, record_id, kind, collected_at, acknowledged_at, details)`: one row per
//!   local change the canvasser made (a signature, a check-in, a withdrawal), pending until the
//!   server's heads include it; `details` is the plaintext kept for display until then.
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
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY,
    role TEXT NOT NULL UNIQUE CHECK (role IN ('collection', 'campaign', 'totals')),
    snapshot BLOB,
    server_heads TEXT NOT NULL DEFAULT '[]',
    sync_state BLOB,
    updated_at INTEGER NOT NULL
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
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .or_else(|e| {
                // Another process may have created the schema between our check and our write.
                let _ = conn.execute_batch("ROLLBACK");
                let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                if now == SCHEMA_VERSION {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        }
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

/// A document's stored bytes: its snapshot, its chunks in order, the highest chunk number.
pub type DocBytes = (Option<Vec<u8>>, Vec<Vec<u8>>, i64);

/// The stored bytes of a document: its snapshot, then its chunks in order, with the highest
/// chunk sequence number read.
pub fn doc_bytes(conn: &Connection, id: &DocumentId) -> Result<DocBytes> {
    let key = id.to_string();
    let snapshot: Option<Vec<u8>> = conn
        .query_row(
            "SELECT snapshot FROM documents WHERE doc_id = ?1",
            [&key],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let mut stmt = conn.prepare("SELECT seq, data FROM chunks WHERE doc_id = ?1 ORDER BY seq")?;
    let mut chunks = Vec::new();
    let mut max_seq = 0;
    for row in stmt.query_map([&key], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })? {
        let (seq, data) = row?;
        max_seq = seq;
        chunks.push(data);
    }
    Ok((snapshot, chunks, max_seq))
}

pub fn insert_doc(
    conn: &Connection,
    id: &DocumentId,
    role: DocRole,
    snapshot: Option<&[u8]>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO documents (doc_id, role, snapshot, updated_at) VALUES (?1, ?2, ?3, ?4)",
        params![id.to_string(), role.as_str(), snapshot, now],
    )?;
    Ok(())
}

pub fn append_chunk(conn: &Connection, id: &DocumentId, data: &[u8], now: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO chunks (doc_id, data, added_at) VALUES (?1, ?2, ?3)",
        params![id.to_string(), data, now],
    )?;
    conn.execute(
        "UPDATE documents SET updated_at = ?2 WHERE doc_id = ?1",
        params![id.to_string(), now],
    )?;
    Ok(())
}

/// Replaces a document's snapshot and drops the chunks it folds in (those up to `upto_seq`).
pub fn replace_snapshot(
    conn: &Connection,
    id: &DocumentId,
    snapshot: &[u8],
    upto_seq: i64,
    now: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE documents SET snapshot = ?2, updated_at = ?3 WHERE doc_id = ?1",
        params![id.to_string(), snapshot, now],
    )?;
    conn.execute(
        "DELETE FROM chunks WHERE doc_id = ?1 AND seq <= ?2",
        params![id.to_string(), upto_seq],
    )?;
    Ok(())
}

pub fn chunk_count(conn: &Connection, id: &DocumentId) -> Result<usize> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM chunks WHERE doc_id = ?1",
        [id.to_string()],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
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
    conn.execute(
        "INSERT INTO receipts (change_hash, record_id, kind, collected_at, acknowledged_at, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![r.change_hash, r.record_id, r.kind.as_str(), r.collected_at, r.acknowledged_at, details],
    )?;
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

pub fn counts(conn: &Connection) -> Result<Counts> {
    let mut stmt = conn.prepare(
        "SELECT kind, acknowledged_at IS NOT NULL, count(*) FROM receipts GROUP BY 1, 2",
    )?;
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
