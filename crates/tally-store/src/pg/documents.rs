//! Documents on PostgreSQL: meta, chunks, compaction and sync states, as in
//! `crate::documents` (SQLite), whose doc comments say what each call promises.
//!
//! Writes to one document are serialized by a row lock on its `documents` row (`SELECT ... FOR
//! UPDATE`, held until the transaction ends): appending and compacting read the last seq under
//! it, so two servers appending to one document at once number their chunks one after the
//! other, and neither is lost or stored twice. A row lock rather than an advisory lock because
//! it is the document's own row, released by COMMIT or ROLLBACK whatever happens; rather than
//! a version check with retry because a sync message's changes are already validated when they
//! are stored, and waiting a few milliseconds is cheaper than validating them again.

use postgres::GenericClient;
use postgres::Row;

use crate::documents::{CAMPAIGN_KIND, ChunkStats, DocFilter, DocMeta, StoredDoc};
use crate::error::{Result, StoreError};

use super::PgStore;

const META_COLUMNS: &str = "doc_id, kind, campaign, owner, created_at";

fn meta_from_row(row: &Row) -> DocMeta {
    DocMeta {
        doc_id: row.get(0),
        kind: row.get(1),
        campaign: row.get(2),
        owner: row.get(3),
        created_at: row.get(4),
    }
}

fn not_found(doc_id: &str) -> StoreError {
    StoreError::NotFound(format!("document {doc_id:?}"))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn doc_meta(conn: &mut impl GenericClient, doc_id: &str) -> Result<Option<DocMeta>> {
    Ok(conn
        .query_opt(
            &format!("SELECT {META_COLUMNS} FROM documents WHERE doc_id = $1"),
            &[&doc_id],
        )?
        .as_ref()
        .map(meta_from_row))
}

pub(crate) fn put_meta(conn: &mut impl GenericClient, meta: &DocMeta) -> Result<bool> {
    if meta.doc_id.is_empty() || meta.kind.is_empty() || meta.campaign.is_empty() {
        return Err(StoreError::Invalid(format!(
            "document meta needs a doc_id, a kind and a campaign (got {meta:?})"
        )));
    }
    // Two servers declaring one document at once: one insert wins, the other compares.
    let inserted = conn.execute(
        &format!(
            "INSERT INTO documents ({META_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (doc_id) DO NOTHING"
        ),
        &[
            &meta.doc_id,
            &meta.kind,
            &meta.campaign,
            &meta.owner,
            &meta.created_at,
        ],
    )?;
    if inserted == 1 {
        return Ok(true);
    }
    let existing = doc_meta(conn, &meta.doc_id)?.ok_or_else(|| not_found(&meta.doc_id))?;
    if existing.kind == meta.kind
        && existing.campaign == meta.campaign
        && existing.owner == meta.owner
    {
        return Ok(false);
    }
    Err(StoreError::Conflict(format!(
        "document {:?} is stored as kind {:?}, campaign {:?}, owner {:?}; it cannot become \
         kind {:?}, campaign {:?}, owner {:?}: create a new document instead",
        meta.doc_id,
        existing.kind,
        existing.campaign,
        existing.owner,
        meta.kind,
        meta.campaign,
        meta.owner
    )))
}

/// Locks a document's row until the transaction ends (the lock every append takes), if the
/// document is declared.
pub(crate) fn lock_document(conn: &mut impl GenericClient, doc_id: &str) -> Result<()> {
    conn.query_opt(
        "SELECT 1 FROM documents WHERE doc_id = $1 FOR UPDATE",
        &[&doc_id],
    )?;
    Ok(())
}

/// The last seq of a document's chunks (0 if none), with the document's row locked until the
/// transaction ends; `NotFound` if the document is unknown.
fn lock_last_seq(conn: &mut impl GenericClient, doc_id: &str) -> Result<i64> {
    if conn
        .query_opt(
            "SELECT 1 FROM documents WHERE doc_id = $1 FOR UPDATE",
            &[&doc_id],
        )?
        .is_none()
    {
        return Err(not_found(doc_id));
    }
    let row = conn.query_one(
        "SELECT COALESCE(MAX(seq), 0) FROM chunks WHERE doc_id = $1",
        &[&doc_id],
    )?;
    Ok(row.get(0))
}

pub(crate) fn append_chunk(
    conn: &mut impl GenericClient,
    doc_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<i64> {
    let seq = lock_last_seq(conn, doc_id)? + 1;
    conn.execute(
        "INSERT INTO chunks (doc_id, seq, kind, bytes, created_at)
         VALUES ($1, $2, 'incremental', $3, $4)",
        &[&doc_id, &seq, &bytes, &now],
    )?;
    // The other servers hear of it when this transaction commits.
    super::listen::document_changed(conn, doc_id)?;
    Ok(seq)
}

pub(crate) fn compact(
    conn: &mut impl GenericClient,
    doc_id: &str,
    snapshot: &[u8],
    through_seq: i64,
    now: i64,
) -> Result<bool> {
    let last = lock_last_seq(conn, doc_id)?;
    if through_seq < 1 || through_seq > last {
        return Err(StoreError::Invalid(format!(
            "cannot compact document {doc_id:?} through seq {through_seq}: its chunks run \
             from 1 to {last}; pass the last_seq of the bytes the snapshot was made from"
        )));
    }
    let current: Option<i64> = conn
        .query_opt(
            "SELECT seq FROM chunks WHERE doc_id = $1 AND kind = 'snapshot'",
            &[&doc_id],
        )?
        .map(|row| row.get(0));
    if current.is_some_and(|seq| seq > through_seq) {
        // A newer compaction already covers more: this snapshot is older, keep the newer one.
        return Ok(false);
    }
    conn.execute(
        "DELETE FROM chunks WHERE doc_id = $1 AND seq <= $2",
        &[&doc_id, &through_seq],
    )?;
    conn.execute(
        "INSERT INTO chunks (doc_id, seq, kind, bytes, created_at)
         VALUES ($1, $2, 'snapshot', $3, $4)",
        &[&doc_id, &through_seq, &snapshot, &now],
    )?;
    Ok(true)
}

pub(crate) fn load_document(
    conn: &mut impl GenericClient,
    doc_id: &str,
) -> Result<Option<StoredDoc>> {
    let Some(meta) = doc_meta(conn, doc_id)? else {
        return Ok(None);
    };
    let rows = conn.query(
        "SELECT seq, kind, bytes FROM chunks WHERE doc_id = $1 ORDER BY seq",
        &[&doc_id],
    )?;
    let mut doc = StoredDoc {
        meta,
        snapshot: None,
        incremental: Vec::new(),
        last_seq: 0,
    };
    for row in rows {
        let seq: i64 = row.get(0);
        let kind: &str = row.get(1);
        let bytes: Vec<u8> = row.get(2);
        if kind == "snapshot" {
            if doc.snapshot.is_some() || !doc.incremental.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "document {doc_id:?} has a snapshot at seq {seq} after other chunks"
                )));
            }
            doc.snapshot = Some(bytes);
        } else {
            doc.incremental.push(bytes);
        }
        doc.last_seq = seq;
    }
    Ok(Some(doc))
}

pub(crate) fn chunks_since_snapshot(
    conn: &mut impl GenericClient,
    doc_id: &str,
) -> Result<ChunkStats> {
    if doc_meta(conn, doc_id)?.is_none() {
        return Err(not_found(doc_id));
    }
    let row = conn.query_one(
        "SELECT COALESCE(SUM(CASE WHEN kind = 'incremental' THEN 1 END), 0)::BIGINT,
                COALESCE(SUM(CASE WHEN kind = 'incremental' THEN length(bytes) END), 0)::BIGINT,
                COALESCE(SUM(CASE WHEN kind = 'snapshot' THEN length(bytes) END), 0)::BIGINT,
                COALESCE(MAX(seq), 0)
         FROM chunks WHERE doc_id = $1",
        &[&doc_id],
    )?;
    Ok(ChunkStats {
        count: to_u64(row.get(0)),
        bytes: to_u64(row.get(1)),
        snapshot_bytes: to_u64(row.get(2)),
        last_seq: row.get(3),
    })
}

pub(crate) fn list_documents(
    conn: &mut impl GenericClient,
    filter: &DocFilter,
) -> Result<Vec<DocMeta>> {
    let mut sql = format!("SELECT {META_COLUMNS} FROM documents WHERE TRUE");
    let mut args: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::new();
    for (column, value) in [
        ("campaign", &filter.campaign),
        ("kind", &filter.kind),
        ("owner", &filter.owner),
    ] {
        if let Some(value) = value {
            args.push(value);
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    sql.push_str(" ORDER BY created_at, doc_id");
    Ok(conn.query(&sql, &args)?.iter().map(meta_from_row).collect())
}

pub(crate) fn save_sync_state(
    conn: &mut impl GenericClient,
    peer_key: &str,
    doc_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<()> {
    if doc_meta(conn, doc_id)?.is_none() {
        return Err(not_found(doc_id));
    }
    conn.execute(
        "INSERT INTO sync_states (peer_key, doc_id, bytes, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (peer_key, doc_id) DO UPDATE SET bytes = excluded.bytes,
                                                      updated_at = excluded.updated_at",
        &[&peer_key, &doc_id, &bytes, &now],
    )?;
    Ok(())
}

impl PgStore {
    /// Declares a document (see `Store::put_meta`); commits on its own.
    pub fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        self.write(|tx| put_meta(tx, meta))
    }

    /// Appends an incremental chunk to a declared document; returns its seq. Commits (and
    /// PostgreSQL flushes its WAL) before returning `Ok`.
    pub fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        self.write(|tx| append_chunk(tx, doc_id, bytes, now))
    }

    /// A document's meta, or `None` if it is not stored.
    pub fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        self.read(|tx| doc_meta(tx, doc_id))
    }

    /// A document's snapshot and chunks in order, read in one snapshot.
    pub fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        self.read(|tx| load_document(tx, doc_id))
    }

    /// Replaces the snapshot and the chunks up to `through_seq` by `snapshot` (see
    /// `Store::compact`); `false` if a later snapshot is already stored.
    pub fn compact(
        &self,
        doc_id: &str,
        snapshot: &[u8],
        through_seq: i64,
        now: i64,
    ) -> Result<bool> {
        self.write(|tx| compact(tx, doc_id, snapshot, through_seq, now))
    }

    /// How many incremental chunks (and bytes) a document has since its snapshot.
    pub fn chunks_since_snapshot(&self, doc_id: &str) -> Result<ChunkStats> {
        self.read(|tx| chunks_since_snapshot(tx, doc_id))
    }

    /// The documents matching `filter`, oldest first.
    pub fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        self.read(|tx| list_documents(tx, filter))
    }

    /// Every campaign document, oldest first.
    pub fn list_campaigns(&self) -> Result<Vec<DocMeta>> {
        self.list_documents(&DocFilter {
            kind: Some(CAMPAIGN_KIND.to_owned()),
            ..DocFilter::default()
        })
    }

    /// Saves (replaces) a peer's sync state of a document; commits on its own.
    pub fn save_sync_state(
        &self,
        peer_key: &str,
        doc_id: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<()> {
        self.write(|tx| save_sync_state(tx, peer_key, doc_id, bytes, now))
    }

    /// A peer's saved sync state of a document, if any.
    pub fn load_sync_state(&self, peer_key: &str, doc_id: &str) -> Result<Option<Vec<u8>>> {
        self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT bytes FROM sync_states WHERE peer_key = $1 AND doc_id = $2",
                    &[&peer_key, &doc_id],
                )?
                .map(|row| row.get(0)))
        })
    }
}
