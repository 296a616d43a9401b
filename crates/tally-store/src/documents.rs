//! Documents: their meta (kind, campaign, owner), their bytes, compaction, and sync states.
//!
//! A document's bytes are kept as rows of `chunks`, numbered by a per-document `seq`: at most
//! one compacted `snapshot` (always the lowest seq) followed by `incremental` chunks. To rebuild
//! it, the caller runs `Automerge::load(snapshot)` and then `load_incremental(chunk)` for each
//! chunk in order ([`StoredDoc`]). Appending never rewrites old rows; compaction replaces the
//! snapshot and every chunk up to a seq with one new snapshot, in one transaction, so a reader
//! always sees either the old rows or the new ones.
//!
//! The campaign registry is simply the documents of kind [`CAMPAIGN_KIND`].

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Result, StoreError};
use crate::{ReadTx, Store, WriteTx};

/// The document kind whose documents form the campaign registry.
pub const CAMPAIGN_KIND: &str = "campaign";

/// What the store knows about a document besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocMeta {
    /// The document id as the sync protocol names it.
    pub doc_id: String,
    /// What the document is for (e.g. "campaign", "collection", "review", "totals"); decides
    /// who may write it. Opaque to the store except [`CAMPAIGN_KIND`].
    pub kind: String,
    /// The campaign the document belongs to.
    pub campaign: String,
    /// The device that alone may write it (a canvasser's collection doc), if any.
    pub owner: Option<String>,
    /// When the server first stored it, ms since the Unix epoch.
    pub created_at: i64,
}

/// A document's stored bytes, ready to load into automerge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDoc {
    /// The document's meta.
    pub meta: DocMeta,
    /// The compacted snapshot (`Automerge::save`), if the document was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// The incremental chunks after the snapshot, in the order they were appended.
    pub incremental: Vec<Vec<u8>>,
    /// The seq of the last row loaded (0 if none): pass it to [`Store::compact`] with a
    /// snapshot made from exactly these bytes.
    pub last_seq: i64,
}

/// How much a document has grown since its last compaction, so the server decides when to
/// compact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Incremental chunks after the snapshot.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// The snapshot's size in bytes (0 if none).
    pub snapshot_bytes: u64,
    /// The last seq stored (0 if none).
    pub last_seq: i64,
}

/// Which documents [`Store::list_documents`] returns; `None` fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocFilter {
    /// Only documents of this campaign.
    pub campaign: Option<String>,
    /// Only documents of this kind.
    pub kind: Option<String>,
    /// Only documents owned by this device.
    pub owner: Option<String>,
}

const META_COLUMNS: &str = "doc_id, kind, campaign, owner, created_at";

fn meta_from_row(row: &Row<'_>) -> rusqlite::Result<DocMeta> {
    Ok(DocMeta {
        doc_id: row.get(0)?,
        kind: row.get(1)?,
        campaign: row.get(2)?,
        owner: row.get(3)?,
        created_at: row.get(4)?,
    })
}

fn not_found(doc_id: &str) -> StoreError {
    StoreError::NotFound(format!("document {doc_id:?}"))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn doc_meta(conn: &Connection, doc_id: &str) -> Result<Option<DocMeta>> {
    Ok(conn
        .query_row(
            &format!("SELECT {META_COLUMNS} FROM documents WHERE doc_id = ?1"),
            [doc_id],
            meta_from_row,
        )
        .optional()?)
}

fn put_meta(conn: &Connection, meta: &DocMeta) -> Result<bool> {
    if meta.doc_id.is_empty() || meta.kind.is_empty() || meta.campaign.is_empty() {
        return Err(StoreError::Invalid(format!(
            "document meta needs a doc_id, a kind and a campaign (got {meta:?})"
        )));
    }
    if let Some(existing) = doc_meta(conn, &meta.doc_id)? {
        if existing.kind == meta.kind
            && existing.campaign == meta.campaign
            && existing.owner == meta.owner
        {
            return Ok(false);
        }
        return Err(StoreError::Conflict(format!(
            "document {:?} is stored as kind {:?}, campaign {:?}, owner {:?}; it cannot become \
             kind {:?}, campaign {:?}, owner {:?}: create a new document instead",
            meta.doc_id,
            existing.kind,
            existing.campaign,
            existing.owner,
            meta.kind,
            meta.campaign,
            meta.owner
        )));
    }
    conn.execute(
        &format!("INSERT INTO documents ({META_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![
            meta.doc_id,
            meta.kind,
            meta.campaign,
            meta.owner,
            meta.created_at
        ],
    )?;
    Ok(true)
}

/// The last seq of a document's chunks (0 if none), or `NotFound` if the document is unknown.
fn last_seq(conn: &Connection, doc_id: &str) -> Result<i64> {
    let (exists, last): (bool, i64) = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM documents WHERE doc_id = ?1),
                COALESCE((SELECT MAX(seq) FROM chunks WHERE doc_id = ?1), 0)",
        [doc_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if !exists {
        return Err(not_found(doc_id));
    }
    Ok(last)
}

fn append_chunk(conn: &Connection, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
    let seq = last_seq(conn, doc_id)? + 1;
    conn.execute(
        "INSERT INTO chunks (doc_id, seq, kind, bytes, created_at)
         VALUES (?1, ?2, 'incremental', ?3, ?4)",
        params![doc_id, seq, bytes, now],
    )?;
    Ok(seq)
}

fn compact(
    conn: &Connection,
    doc_id: &str,
    snapshot: &[u8],
    through_seq: i64,
    now: i64,
) -> Result<bool> {
    let last = last_seq(conn, doc_id)?;
    if through_seq < 1 || through_seq > last {
        return Err(StoreError::Invalid(format!(
            "cannot compact document {doc_id:?} through seq {through_seq}: its chunks run \
             from 1 to {last}; pass the last_seq of the bytes the snapshot was made from"
        )));
    }
    let current: Option<i64> = conn
        .query_row(
            "SELECT seq FROM chunks WHERE doc_id = ?1 AND kind = 'snapshot'",
            [doc_id],
            |row| row.get(0),
        )
        .optional()?;
    if current.is_some_and(|seq| seq > through_seq) {
        // A newer compaction already covers more: this snapshot is older, keep the newer one.
        return Ok(false);
    }
    conn.execute(
        "DELETE FROM chunks WHERE doc_id = ?1 AND seq <= ?2",
        params![doc_id, through_seq],
    )?;
    conn.execute(
        "INSERT INTO chunks (doc_id, seq, kind, bytes, created_at)
         VALUES (?1, ?2, 'snapshot', ?3, ?4)",
        params![doc_id, through_seq, snapshot, now],
    )?;
    Ok(true)
}

fn load_document(conn: &Connection, doc_id: &str) -> Result<Option<StoredDoc>> {
    let Some(meta) = doc_meta(conn, doc_id)? else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare("SELECT seq, kind, bytes FROM chunks WHERE doc_id = ?1 ORDER BY seq")?;
    let mut rows = stmt.query([doc_id])?;
    let mut doc = StoredDoc {
        meta,
        snapshot: None,
        incremental: Vec::new(),
        last_seq: 0,
    };
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let kind: String = row.get(1)?;
        let bytes: Vec<u8> = row.get(2)?;
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

fn chunks_since_snapshot(conn: &Connection, doc_id: &str) -> Result<ChunkStats> {
    let last = last_seq(conn, doc_id)?;
    let (count, bytes, snapshot_bytes): (i64, i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(kind = 'incremental'), 0),
                COALESCE(SUM(CASE WHEN kind = 'incremental' THEN length(bytes) END), 0),
                COALESCE(SUM(CASE WHEN kind = 'snapshot' THEN length(bytes) END), 0)
         FROM chunks WHERE doc_id = ?1",
        [doc_id],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    Ok(ChunkStats {
        count: to_u64(count),
        bytes: to_u64(bytes),
        snapshot_bytes: to_u64(snapshot_bytes),
        last_seq: last,
    })
}

fn list_documents(conn: &Connection, filter: &DocFilter) -> Result<Vec<DocMeta>> {
    let mut sql = format!("SELECT {META_COLUMNS} FROM documents WHERE 1");
    let mut args: Vec<&str> = Vec::new();
    for (column, value) in [
        ("campaign", &filter.campaign),
        ("kind", &filter.kind),
        ("owner", &filter.owner),
    ] {
        if let Some(value) = value {
            args.push(value);
            sql.push_str(&format!(" AND {column} = ?{}", args.len()));
        }
    }
    sql.push_str(" ORDER BY created_at, doc_id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), meta_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn save_sync_state(
    conn: &Connection,
    peer_key: &str,
    doc_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<()> {
    if doc_meta(conn, doc_id)?.is_none() {
        return Err(not_found(doc_id));
    }
    conn.execute(
        "INSERT INTO sync_states (peer_key, doc_id, bytes, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (peer_key, doc_id) DO UPDATE SET bytes = excluded.bytes,
                                                      updated_at = excluded.updated_at",
        params![peer_key, doc_id, bytes, now],
    )?;
    Ok(())
}

impl WriteTx<'_> {
    /// Declares a document: inserts its meta, or confirms it if identical meta is stored.
    /// Returns `true` if it was new. Different stored meta is a [`StoreError::Conflict`]: a
    /// document never changes kind, campaign or owner.
    pub fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        put_meta(self.conn(), meta)
    }

    /// Appends an incremental chunk (`Automerge::save_incremental` / accepted changes) to a
    /// declared document; returns its seq. [`StoreError::NotFound`] if the document has no meta.
    pub fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        append_chunk(self.conn(), doc_id, bytes, now)
    }

    /// Saves (replaces) the encoded sync state of `peer_key` for `doc_id`.
    pub fn save_sync_state(
        &self,
        peer_key: &str,
        doc_id: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<()> {
        save_sync_state(self.conn(), peer_key, doc_id, bytes, now)
    }
}

impl ReadTx<'_> {
    /// The meta of a document, read inside this transaction.
    pub fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        doc_meta(self.conn, doc_id)
    }

    /// A document's stored bytes, read inside this transaction (e.g. to rebuild tables derived
    /// from every document atomically).
    pub fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        load_document(self.conn, doc_id)
    }

    /// The documents matching `filter`, read inside this transaction.
    pub fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        list_documents(self.conn, filter)
    }
}

impl Store {
    /// See [`WriteTx::put_meta`]; commits on its own.
    pub fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        self.write(|tx| tx.put_meta(meta))
    }

    /// See [`WriteTx::append_chunk`]; commits on its own.
    pub fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        self.write(|tx| tx.append_chunk(doc_id, bytes, now))
    }

    /// A document's meta, or `None` if it is not stored.
    pub fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        self.with_conn(|conn| doc_meta(conn, doc_id))
    }

    /// A document's snapshot and incremental chunks in order, or `None` if it is not stored.
    /// Read in one transaction, so a concurrent compaction is seen entirely or not at all.
    pub fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        self.read_conn(|conn| load_document(conn, doc_id))
    }

    /// Replaces the snapshot and every chunk with seq `<= through_seq` by `snapshot`, which
    /// must have been made from exactly those bytes (e.g. from a [`StoredDoc`] whose
    /// `last_seq` was `through_seq`). Chunks appended after `through_seq` stay. Atomic.
    /// Returns `false`, changing nothing, if a snapshot through a later seq is already stored.
    pub fn compact(
        &self,
        doc_id: &str,
        snapshot: &[u8],
        through_seq: i64,
        now: i64,
    ) -> Result<bool> {
        self.write(|tx| compact(tx.conn(), doc_id, snapshot, through_seq, now))
    }

    /// How many incremental chunks (and bytes) a document has gathered since its snapshot.
    pub fn chunks_since_snapshot(&self, doc_id: &str) -> Result<ChunkStats> {
        self.read_conn(|conn| chunks_since_snapshot(conn, doc_id))
    }

    /// The documents matching `filter`, oldest first.
    pub fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        self.with_conn(|conn| list_documents(conn, filter))
    }

    /// The campaign registry: every document of kind [`CAMPAIGN_KIND`], oldest first.
    pub fn list_campaigns(&self) -> Result<Vec<DocMeta>> {
        self.list_documents(&DocFilter {
            kind: Some(CAMPAIGN_KIND.to_owned()),
            ..DocFilter::default()
        })
    }

    /// How many documents `owner` owns (e.g. to bound the collection docs one device creates).
    pub fn count_documents_by_owner(&self, owner: &str) -> Result<u64> {
        self.with_conn(|conn| {
            let count: i64 = conn.query_row(
                "SELECT COUNT(*) FROM documents WHERE owner = ?1",
                [owner],
                |row| row.get(0),
            )?;
            Ok(to_u64(count))
        })
    }

    /// How many collection documents `owner` has in `campaign`: the length of a phone's chain
    /// of collections there (bounded by the server's `max_documents_per_device`).
    pub fn count_collections(&self, owner: &str, campaign: &str) -> Result<u64> {
        self.with_conn(|conn| {
            let count: i64 = conn.query_row(
                "SELECT COUNT(*) FROM documents WHERE owner = ?1 AND campaign = ?2 AND kind = 'collection'",
                [owner, campaign],
                |row| row.get(0),
            )?;
            Ok(to_u64(count))
        })
    }

    /// See [`WriteTx::save_sync_state`]; commits on its own.
    pub fn save_sync_state(
        &self,
        peer_key: &str,
        doc_id: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<()> {
        self.write(|tx| tx.save_sync_state(peer_key, doc_id, bytes, now))
    }

    /// The encoded sync state saved for `peer_key` and `doc_id`, if any.
    pub fn load_sync_state(&self, peer_key: &str, doc_id: &str) -> Result<Option<Vec<u8>>> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT bytes FROM sync_states WHERE peer_key = ?1 AND doc_id = ?2",
                    [peer_key, doc_id],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }
}
