//! The phone's storage: one SQLite file in the device's home directory, in WAL mode with
//! `synchronous=FULL`, so that a write this module commits survives the phone dying right after.
//!
//! Tables (schema version 4, `PRAGMA user_version`):
//! - `settings(key, value)`: the enrollment (JSON, with the token and the duplicate key), the
//!   plaintext-dropping setting, the roll-over bound, the last sync;
//! - `documents(doc_id, role, state, chain, refusal, server_heads, sync_state, updated_at)`: one
//!   row per document this phone keeps (its chain of collections, the campaign, the team
//!   totals), the heads the server last sent, and the persisted sync state with it. Exactly one
//!   row per role is `current`; a collection is `closed` once the phone rolled over to the next
//!   one (synced until everything in it is acknowledged), `retired` when it belonged to the device
//!   this phone was before a re-enrollment, `refused` when the server refused a change in it
//!   (`refusal` says why). `chain` numbers a phone's collections from 0;
//! - `snapshots(doc_id, data, upto_seq)`: a document's compacted automerge save, and the last
//!   chunk it folds in. Kept apart from `documents` so that writing a row there never rewrites
//!   a snapshot of megabytes;
//! - `chunks(seq, doc_id, data, added_at)`: incremental automerge saves appended per commit,
//!   folded into the snapshot by compaction;
//! - `receipts(change_hash, record_id, kind, collected_at, acknowledged_at, details, doc_id,
//!   refused_at, refusal)`: one row per local change the canvasser made (a signature, a check-in,
//!   a withdrawal), pending until the server's heads include it; `details` is the plaintext kept
//!   for display until then; `doc_id` is the collection the change is in (a record moved to the
//!   next collection gets the new change's hash and document); a record the server refused is
//!   set aside with `refused_at` and the server's reason, never deleted;
//! - `receipt_counts(kind, acknowledged, n)`: the receipts counted by kind and state (0 pending,
//!   1 acknowledged, 2 refused), kept by triggers in the transaction that changes `receipts`, so
//!   counting costs the same at 10 and at 10,000 receipts;
//! - `record_keys(record_id, wrapped, stored, refusal)` (schema 4): each v2 signature's record key
//!   wrapped to the organizers, written with the signature, until the server has stored it
//!   (`stored`) and acknowledged the record's change; then it is deleted ([`drop_safe_keys`]).
//!   `refusal` is the server's reason when it refused the key (docs/clients.md 5a); a record an
//!   organizer erased keeps only its mark (`erased`, no key bytes).
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
pub const SCHEMA_VERSION: i64 = 4;

/// A receipt's state as `receipt_counts` counts it: 0 pending, 1 acknowledged, 2 refused.
const RECEIPT_STATE_NEW: &str = "CASE WHEN new.acknowledged_at IS NOT NULL THEN 1 WHEN new.refused_at IS NOT NULL THEN 2 ELSE 0 END";
const RECEIPT_STATE_OLD: &str = "CASE WHEN old.acknowledged_at IS NOT NULL THEN 1 WHEN old.refused_at IS NOT NULL THEN 2 ELSE 0 END";

/// Kept current by triggers; shared by a new file and the migrations.
fn receipt_counts() -> String {
    format!(
        "
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
         (SELECT 0 AS acknowledged UNION ALL SELECT 1 UNION ALL SELECT 2) AS a;
CREATE TRIGGER receipts_counted_insert AFTER INSERT ON receipts BEGIN
    UPDATE receipt_counts SET n = n + 1 WHERE kind = new.kind AND acknowledged = {new};
END;
CREATE TRIGGER receipts_counted_delete AFTER DELETE ON receipts BEGIN
    UPDATE receipt_counts SET n = n - 1 WHERE kind = old.kind AND acknowledged = {old};
END;
CREATE TRIGGER receipts_counted_update AFTER UPDATE OF kind, acknowledged_at, refused_at ON receipts
WHEN old.kind IS NOT new.kind OR {old} IS NOT {new}
BEGIN
    UPDATE receipt_counts SET n = n - 1 WHERE kind = old.kind AND acknowledged = {old};
    UPDATE receipt_counts SET n = n + 1 WHERE kind = new.kind AND acknowledged = {new};
END;
UPDATE receipt_counts SET n = (SELECT count(*) FROM receipts r
    WHERE r.kind = receipt_counts.kind
      AND (CASE WHEN r.acknowledged_at IS NOT NULL THEN 1 WHEN r.refused_at IS NOT NULL THEN 2 ELSE 0 END)
          = receipt_counts.acknowledged);
",
        new = RECEIPT_STATE_NEW,
        old = RECEIPT_STATE_OLD
    )
}

/// The `documents` table of schema 3: several collections (a chain), one current document per
/// role.
const DOCUMENTS_3: &str = "
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('collection', 'campaign', 'totals')),
    state TEXT NOT NULL DEFAULT 'current' CHECK (state IN ('current', 'closed', 'retired', 'refused')),
    chain INTEGER NOT NULL DEFAULT 0,
    refusal TEXT,
    server_heads TEXT NOT NULL DEFAULT '[]',
    sync_state BLOB,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX documents_one_current ON documents (role) WHERE state = 'current';
";

const SCHEMA: &str = "
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
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
    details TEXT,
    doc_id TEXT,
    refused_at INTEGER,
    refusal TEXT
) STRICT;
CREATE INDEX receipts_by_record ON receipts (record_id);
CREATE INDEX receipts_pending ON receipts (collected_at) WHERE acknowledged_at IS NULL;
CREATE INDEX receipts_by_doc ON receipts (doc_id) WHERE acknowledged_at IS NULL AND refused_at IS NULL;
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

/// From version 2: a chain of collections. `documents` is rebuilt without its one-row-per-role
/// constraint (SQLite cannot drop a constraint; foreign keys are off meanwhile, see
/// [`migrate`]); receipts learn their collection and whether the server refused them.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE documents_3 (
    doc_id TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('collection', 'campaign', 'totals')),
    state TEXT NOT NULL DEFAULT 'current' CHECK (state IN ('current', 'closed', 'retired', 'refused')),
    chain INTEGER NOT NULL DEFAULT 0,
    refusal TEXT,
    server_heads TEXT NOT NULL DEFAULT '[]',
    sync_state BLOB,
    updated_at INTEGER NOT NULL
) STRICT;
INSERT INTO documents_3 (doc_id, role, server_heads, sync_state, updated_at)
    SELECT doc_id, role, server_heads, sync_state, updated_at FROM documents;
DROP TABLE documents;
ALTER TABLE documents_3 RENAME TO documents;
CREATE UNIQUE INDEX documents_one_current ON documents (role) WHERE state = 'current';
ALTER TABLE receipts ADD COLUMN doc_id TEXT;
ALTER TABLE receipts ADD COLUMN refused_at INTEGER;
ALTER TABLE receipts ADD COLUMN refusal TEXT;
UPDATE receipts SET doc_id = (SELECT doc_id FROM documents WHERE role = 'collection');
CREATE INDEX receipts_by_doc ON receipts (doc_id) WHERE acknowledged_at IS NULL AND refused_at IS NULL;
DROP TRIGGER IF EXISTS receipts_counted_insert;
DROP TRIGGER IF EXISTS receipts_counted_delete;
DROP TRIGGER IF EXISTS receipts_counted_update;
DROP TABLE IF EXISTS receipt_counts;
";

/// From version 3: record keys (sealed v2, erasure by crypto-shredding).
const MIGRATE_3_TO_4: &str = "
CREATE TABLE IF NOT EXISTS record_keys (
    record_id TEXT PRIMARY KEY,
    wrapped BLOB NOT NULL,
    stored INTEGER NOT NULL DEFAULT 0,
    refusal TEXT
) STRICT;
";

/// Creates this build's schema on a new file, or migrates an older one step by step, in one
/// transaction. Another process may do the same at the same time: whoever comes second finds it
/// done. Foreign keys are off during the migration (a table they name is rebuilt) and checked
/// before it commits.
fn migrate(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let run = || -> rusqlite::Result<()> {
        let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version >= SCHEMA_VERSION {
            return conn.execute_batch("COMMIT");
        }
        if version == 0 {
            conn.execute_batch(&format!(
                "{DOCUMENTS_3} {SCHEMA} {} {MIGRATE_3_TO_4}",
                receipt_counts()
            ))?;
            version = SCHEMA_VERSION;
        }
        if version == 1 {
            conn.execute_batch(MIGRATE_1_TO_2)?;
            version = 2;
        }
        if version == 2 {
            conn.execute_batch(&format!("{MIGRATE_2_TO_3} {}", receipt_counts()))?;
            version = 3;
        }
        if version == 3 {
            conn.execute_batch(MIGRATE_3_TO_4)?;
        }
        let broken: Option<String> = conn
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                Some(format!(
                    "the migration left a dangling reference in {table}"
                )),
            ));
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}; COMMIT"))
    };
    let done = run().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        ClientError::from(e)
    });
    conn.pragma_update(None, "foreign_keys", "ON")?;
    done
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

/// Where a document stands in the phone's life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocState {
    /// The one document of its role in use: the collection new records go into.
    Current,
    /// A collection the phone rolled over from: synced until all of it is acknowledged.
    Closed,
    /// A collection of the device this phone was before it enrolled again: never synced again;
    /// what was pending in it moved to the new device's collection.
    Retired,
    /// A collection in which the server refused a change: never synced again; what was pending
    /// in it moved to the current collection, the refused record set aside.
    Refused,
}

impl DocState {
    pub fn as_str(self) -> &'static str {
        match self {
            DocState::Current => "current",
            DocState::Closed => "closed",
            DocState::Retired => "retired",
            DocState::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Option<DocState> {
        Some(match s {
            "current" => DocState::Current,
            "closed" => DocState::Closed,
            "retired" => DocState::Retired,
            "refused" => DocState::Refused,
            _ => return None,
        })
    }

    /// Whether the phone still syncs a document in this state.
    pub fn is_live(self) -> bool {
        matches!(self, DocState::Current | DocState::Closed)
    }
}

/// What `documents` holds about one document, besides its bytes.
pub struct DocRow {
    pub id: DocumentId,
    pub role: DocRole,
    pub state: DocState,
    /// A collection's place in the phone's chain, from 0.
    pub chain: i64,
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
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, role, state, chain, server_heads, sync_state FROM documents
         ORDER BY role, chain",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<Vec<u8>>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, role, state, chain, heads, sync_state) = row?;
        out.push(DocRow {
            id: id
                .parse()
                .map_err(|e| ClientError::Corrupt(format!("stored document id {id:?}: {e}")))?,
            role: DocRole::parse(&role)
                .ok_or_else(|| ClientError::Corrupt(format!("stored document role {role:?}")))?,
            state: DocState::parse(&state)
                .ok_or_else(|| ClientError::Corrupt(format!("stored document state {state:?}")))?,
            chain,
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

/// Adds a document, current in its role (`chain`: a collection's place in the phone's chain).
pub fn insert_doc(
    conn: &Connection,
    id: &DocumentId,
    role: DocRole,
    chain: i64,
    snapshot: Option<&[u8]>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO documents (doc_id, role, chain, updated_at) VALUES (?1, ?2, ?3, ?4)",
        params![id.to_string(), role.as_str(), chain, now],
    )?;
    if let Some(snapshot) = snapshot {
        replace_snapshot(conn, id, snapshot, 0)?;
    }
    Ok(())
}

/// Moves a document out of `current` (or between the other states), with the reason when the
/// server refused it.
pub fn set_doc_state(
    conn: &Connection,
    id: &DocumentId,
    state: DocState,
    refusal: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE documents SET state = ?2, refusal = coalesce(?3, refusal), updated_at = ?4
         WHERE doc_id = ?1",
        params![id.to_string(), state.as_str(), refusal, now],
    )?;
    Ok(())
}

/// Collections holding receipts neither acknowledged nor refused.
pub fn docs_with_pending(conn: &Connection) -> Result<Vec<DocumentId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT doc_id FROM receipts
         WHERE acknowledged_at IS NULL AND refused_at IS NULL AND doc_id IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for id in rows {
        let id = id?;
        out.push(
            id.parse()
                .map_err(|e| ClientError::Corrupt(format!("stored document id {id:?}: {e}")))?,
        );
    }
    Ok(out)
}

/// Records (signatures and check-ins) whose creation is in collection `doc`, by their receipts.
pub fn records_in(conn: &Connection, doc: &DocumentId) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM receipts WHERE doc_id = ?1 AND kind IN ('signature', 'checkin')",
        [doc.to_string()],
        |r| r.get(0),
    )?)
}

/// Whether the server acknowledged anything in collection `doc`.
pub fn any_acknowledged_in(conn: &Connection, doc: &DocumentId) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM receipts WHERE doc_id = ?1 AND acknowledged_at IS NOT NULL)",
        [doc.to_string()],
        |r| r.get(0),
    )?)
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
        "INSERT INTO receipts (change_hash, record_id, kind, collected_at, acknowledged_at, details, doc_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![r.change_hash, r.record_id, r.kind.as_str(), r.collected_at, r.acknowledged_at, details, r.doc_id])?;
    Ok(())
}

/// Change hashes of the receipts not acknowledged yet (nor refused) in collection `doc`.
pub fn pending_hashes(conn: &Connection, doc: &DocumentId) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT change_hash FROM receipts
         WHERE doc_id = ?1 AND acknowledged_at IS NULL AND refused_at IS NULL",
    )?;
    let rows = stmt.query_map([doc.to_string()], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The receipts of collection `doc` neither acknowledged nor refused, in the order they were
/// made.
pub fn pending_in(conn: &Connection, doc: &DocumentId) -> Result<Vec<Receipt>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM receipts
         WHERE doc_id = ?1 AND acknowledged_at IS NULL AND refused_at IS NULL
         ORDER BY collected_at, rowid"
    ))?;
    let rows = stmt.query_map([doc.to_string()], receipt_from_row)?;
    rows.map(|r| to_receipt(r?)).collect()
}

/// A receipt's change was written again, as `new_hash`, into collection `doc` (its record moved
/// along the chain).
pub fn move_receipt(
    conn: &Connection,
    old_hash: &str,
    new_hash: &str,
    doc: &DocumentId,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE receipts SET change_hash = ?2, doc_id = ?3 WHERE change_hash = ?1",
    )?
    .execute(params![old_hash, new_hash, doc.to_string()])?;
    Ok(())
}

/// Sets a receipt aside: the server refused it (or it could not be moved), for `reason`.
pub fn refuse_receipt(conn: &Connection, hash: &str, reason: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE receipts SET refused_at = ?2, refusal = ?3
         WHERE change_hash = ?1 AND acknowledged_at IS NULL AND refused_at IS NULL",
    )?
    .execute(params![hash, now, reason])?;
    Ok(())
}

/// The receipts set aside because the server refused them, oldest first.
pub fn refused_receipts(conn: &Connection) -> Result<Vec<Receipt>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE refused_at IS NOT NULL
         ORDER BY collected_at, rowid"
    ))?;
    let rows = stmt.query_map([], receipt_from_row)?;
    rows.map(|r| to_receipt(r?)).collect()
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
         WHERE change_hash = ?1 AND acknowledged_at IS NULL AND refused_at IS NULL
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

/// A receipts row, selected as [`RECEIPT_COLUMNS`].
struct ReceiptRow {
    change_hash: String,
    record_id: String,
    kind: String,
    collected_at: i64,
    acknowledged_at: Option<i64>,
    details: Option<String>,
    doc_id: Option<String>,
    refused_at: Option<i64>,
    refusal: Option<String>,
}

fn receipt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReceiptRow> {
    Ok(ReceiptRow {
        change_hash: r.get(0)?,
        record_id: r.get(1)?,
        kind: r.get(2)?,
        collected_at: r.get(3)?,
        acknowledged_at: r.get(4)?,
        details: r.get(5)?,
        doc_id: r.get(6)?,
        refused_at: r.get(7)?,
        refusal: r.get(8)?,
    })
}

fn to_receipt(row: ReceiptRow) -> Result<Receipt> {
    let ReceiptRow {
        change_hash,
        record_id,
        kind,
        collected_at,
        acknowledged_at,
        details,
        doc_id,
        refused_at,
        refusal,
    } = row;
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
        doc_id,
        refused_at,
        refusal,
    })
}

const RECEIPT_COLUMNS: &str = "change_hash, record_id, kind, collected_at, acknowledged_at, details, doc_id, refused_at, refusal";

/// Receipts, oldest first: only pending ones, or all.
pub fn receipts(conn: &Connection, pending_only: bool) -> Result<Vec<Receipt>> {
    receipts_up_to(conn, pending_only, i64::MAX)
}

/// The oldest `limit` receipts: only pending ones, or all.
pub fn receipts_up_to(conn: &Connection, pending_only: bool, limit: i64) -> Result<Vec<Receipt>> {
    let sql = if pending_only {
        format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE acknowledged_at IS NULL AND refused_at IS NULL ORDER BY collected_at, rowid LIMIT ?1"
        )
    } else {
        format!("SELECT {RECEIPT_COLUMNS} FROM receipts ORDER BY collected_at, rowid LIMIT ?1")
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([limit], receipt_from_row)?;
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
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (kind, acked, n) = row?;
        let slot = match (ReceiptKind::parse(&kind), acked) {
            (Some(ReceiptKind::Signature), 0) => &mut c.signatures_pending,
            (Some(ReceiptKind::Signature), 1) => &mut c.signatures_acknowledged,
            (Some(ReceiptKind::Checkin), 0) => &mut c.checkins_pending,
            (Some(ReceiptKind::Checkin), 1) => &mut c.checkins_acknowledged,
            (Some(_), 0) => &mut c.withdrawals_pending,
            (Some(_), 1) => &mut c.withdrawals_acknowledged,
            (Some(ReceiptKind::Signature), _) => &mut c.signatures_refused,
            (Some(ReceiptKind::Checkin), _) => &mut c.checkins_refused,
            (Some(_), _) => &mut c.withdrawals_refused,
            (None, _) => continue,
        };
        *slot += u64::try_from(n).unwrap_or(0);
    }
    // Records whose change is acknowledged but whose key is not on the server (the others are
    // counted pending already).
    c.keys_not_on_server = conn
        .prepare_cached(
            "SELECT count(*) FROM record_keys k WHERE k.stored = 0 AND NOT EXISTS \
             (SELECT 1 FROM receipts r WHERE r.record_id = k.record_id \
              AND r.acknowledged_at IS NULL AND r.refused_at IS NULL)",
        )?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))?;
    Ok(c)
}

/// Keeps a signature's wrapped record key until the server has it (in the caller's
/// transaction: the one that commits the signature).
pub fn insert_record_key(conn: &Connection, record_id: &str, wrapped: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO record_keys (record_id, wrapped, stored) VALUES (?1, ?2, 0) \
         ON CONFLICT (record_id) DO NOTHING",
    )?
    .execute(params![record_id, wrapped])?;
    Ok(())
}

/// Keys refused for a reason that passes (`too_many`: the device's quota on the server) are
/// offered again: called once before each upload.
pub fn retry_passing_refusals(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "UPDATE record_keys SET refusal = NULL WHERE stored = 0 AND refusal LIKE 'too_many%'",
    )?
    .execute([])?;
    Ok(())
}

/// Up to `limit` keys the server has not stored yet, oldest first.
pub fn keys_to_upload(conn: &Connection, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_id, wrapped FROM record_keys WHERE stored = 0 AND refusal IS NULL \
         ORDER BY rowid LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The server stored this key (or already had these bytes).
pub fn mark_key_stored(conn: &Connection, record_id: &str) -> Result<()> {
    conn.prepare_cached("UPDATE record_keys SET stored = 1, refusal = NULL WHERE record_id = ?1")?
        .execute([record_id])?;
    Ok(())
}

/// The server refused this key for good (`erased`: the record is done, the key's bytes are
/// overwritten and only the mark stays, for `tally-device status`; any other reason: kept with
/// the reason, shown by `tally-device status`).
pub fn refuse_key(conn: &Connection, record_id: &str, reason: &str) -> Result<()> {
    if reason.starts_with("erased") {
        conn.prepare_cached(
            "UPDATE record_keys SET wrapped = x'', stored = 1, refusal = 'erased' WHERE record_id = ?1",
        )?
        .execute([record_id])?;
    } else {
        conn.prepare_cached("UPDATE record_keys SET refusal = ?2 WHERE record_id = ?1")?
            .execute(params![record_id, reason])?;
    }
    Ok(())
}

/// Deletes the keys the server has stored whose record's change it has acknowledged too: the
/// record is safe, the phone keeps no copy of its key. Returns how many went.
pub fn drop_safe_keys(conn: &Connection) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM record_keys WHERE stored = 1 AND refusal IS NULL AND NOT EXISTS \
             (SELECT 1 FROM receipts r WHERE r.record_id = record_keys.record_id \
              AND r.acknowledged_at IS NULL AND r.refused_at IS NULL)",
        )?
        .execute([])?)
}

/// Records an organizer erased, as the server said when their key was offered (newest last,
/// at most 100).
pub fn erased_records(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record_id FROM record_keys WHERE refusal = 'erased' ORDER BY rowid LIMIT 100",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Keys the server does not hold yet: (waiting to upload, refused with a reason).
pub fn keys_not_on_server(conn: &Connection) -> Result<(u64, Vec<(String, String)>)> {
    let waiting: i64 = conn
        .prepare_cached("SELECT count(*) FROM record_keys WHERE stored = 0 AND refusal IS NULL")?
        .query_row([], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT record_id, refusal FROM record_keys WHERE stored = 0 AND refusal IS NOT NULL \
         ORDER BY rowid LIMIT 100",
    )?;
    let refused = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((u64::try_from(waiting).unwrap_or(0), refused))
}
