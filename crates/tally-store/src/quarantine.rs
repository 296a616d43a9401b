//! The quarantine: sync messages the server rejected, kept with who sent them, when, and why,
//! instead of being dropped, so an organizer can inspect them and nothing a canvasser collected
//! is silently lost.
//!
//! Entries are written inside the same transaction as whatever else the server records about
//! the rejection ([`WriteTx::quarantine`]), or on their own ([`Store::quarantine`]).

use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::{Store, WriteTx};

/// How much the quarantine keeps: what an organizer needs to act on every refusal (device,
/// time, document, reason, size, digest, change hashes), and raw bytes only within small bounds.
/// A hostile device can then neither fill the disk through it nor make the server keep what
/// it refused (a plaintext name in a refused field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineQuota {
    /// Raw bytes are kept only for entries at most this long (0: never).
    pub max_raw_bytes: usize,
    /// Raw bytes kept per device, in all.
    pub max_raw_bytes_per_device: u64,
    /// Raw bytes kept in all.
    pub max_raw_bytes_total: u64,
    /// Entries kept per device; past it the device's latest entry counts the rest (`repeats`).
    pub max_entries_per_device: u64,
    /// Entries kept in all; past it, likewise.
    pub max_entries_total: u64,
    /// Entries older than this are deleted (ms; 0: kept forever).
    pub retention_ms: i64,
}

impl Default for QuarantineQuota {
    fn default() -> Self {
        QuarantineQuota {
            max_raw_bytes: 16 * 1024,
            max_raw_bytes_per_device: 256 * 1024,
            max_raw_bytes_total: 16 * 1024 * 1024,
            max_entries_per_device: 1_000,
            max_entries_total: 100_000,
            retention_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// A refusal to record.
#[derive(Clone, Debug, Default)]
pub struct NewQuarantine<'a> {
    /// The authenticated device that sent it.
    pub device_id: &'a str,
    /// The document it was meant for.
    pub doc_id: &'a str,
    /// Why, in words an organizer can act on.
    pub reason: &'a str,
    /// The validation rule broken, when validation refused it (`Rule`'s name).
    pub rule: Option<&'a str>,
    /// The refused message as received (its size and digest are always kept).
    pub raw: &'a [u8],
    /// Whether the raw bytes may be kept at all (false when they may hold what the server must
    /// never store, e.g. a field refused as unknown or personal).
    pub keep_raw: bool,
    /// The hashes of the refused changes (hex).
    pub change_hashes: &'a [String],
    /// When, ms since the Unix epoch.
    pub now: i64,
}

/// What [`Store::quarantine_entry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantineOutcome {
    /// A new entry, and whether its raw bytes were kept.
    Kept { id: i64, raw_kept: bool },
    /// Over the entry quota: counted in the device's latest entry (`repeats`), if it has one.
    Counted { id: Option<i64> },
}

/// One rejected message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// Increasing id, usable as a paging cursor ([`QuarantineFilter::after_id`]).
    pub id: i64,
    /// The authenticated device that sent it.
    pub device_id: String,
    /// The document it was meant for (possibly one the server never stored).
    pub doc_id: String,
    /// When it was rejected, ms since the Unix epoch.
    pub at: i64,
    /// Why, in words an organizer can act on.
    pub reason: String,
    /// The rejected message byte for byte when it was small and held nothing the server must
    /// not keep; empty otherwise (see [`QuarantineQuota`]).
    pub bytes: Vec<u8>,
    /// The size of the rejected message, in bytes.
    pub size: i64,
    /// SHA-256 of the rejected message, hex (empty for entries from before schema 4).
    pub digest: String,
    /// The hashes of the refused changes, hex.
    pub change_hashes: Vec<String>,
    /// The validation rule broken, when validation refused it.
    pub rule: Option<String>,
    /// How many later refusals from this device were not kept (over the quota) and were
    /// counted here instead.
    pub repeats: i64,
}

/// Which entries [`Store::list_quarantine`] returns; `None` fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuarantineFilter {
    /// Only entries from this device.
    pub device_id: Option<String>,
    /// Only entries for this document.
    pub doc_id: Option<String>,
    /// Only entries rejected at or after this time.
    pub since: Option<i64>,
    /// Only entries with an id greater than this (the last id of the previous page).
    pub after_id: Option<i64>,
    /// At most this many entries (default: all).
    pub limit: Option<u32>,
}

fn quarantine(
    conn: &Connection,
    entry: &NewQuarantine<'_>,
    quota: &QuarantineQuota,
) -> Result<QuarantineOutcome> {
    if entry.reason.trim().is_empty() {
        return Err(StoreError::Invalid(
            "a quarantine entry needs a reason an organizer can act on".to_owned(),
        ));
    }
    if quota.retention_ms > 0 {
        conn.execute(
            "DELETE FROM quarantine WHERE at < ?1",
            params![entry.now.saturating_sub(quota.retention_ms)],
        )?;
    }
    let (device_entries, device_raw): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM quarantine WHERE device_id = ?1",
        params![entry.device_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (total_entries, total_raw): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM quarantine",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if device_entries as u64 >= quota.max_entries_per_device
        || total_entries as u64 >= quota.max_entries_total
    {
        let id: Option<i64> = conn
            .query_row(
                "SELECT max(id) FROM quarantine WHERE device_id = ?1",
                params![entry.device_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if let Some(id) = id {
            conn.execute(
                "UPDATE quarantine SET repeats = repeats + 1 WHERE id = ?1",
                params![id],
            )?;
        }
        return Ok(QuarantineOutcome::Counted { id });
    }
    let len = entry.raw.len();
    let raw_kept = entry.keep_raw
        && len > 0
        && len <= quota.max_raw_bytes
        && device_raw as u64 + len as u64 <= quota.max_raw_bytes_per_device
        && total_raw as u64 + len as u64 <= quota.max_raw_bytes_total;
    let bytes: &[u8] = if raw_kept { entry.raw } else { &[] };
    let digest = hex::encode(Sha256::digest(entry.raw));
    conn.execute(
        "INSERT INTO quarantine (device_id, doc_id, at, reason, bytes, size, digest, change_hashes, rule)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            entry.device_id,
            entry.doc_id,
            entry.now,
            entry.reason,
            bytes,
            len as i64,
            digest,
            entry.change_hashes.join(" "),
            entry.rule
        ],
    )?;
    Ok(QuarantineOutcome::Kept {
        id: conn.last_insert_rowid(),
        raw_kept,
    })
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<QuarantineEntry> {
    let hashes: String = row.get(8)?;
    Ok(QuarantineEntry {
        id: row.get(0)?,
        device_id: row.get(1)?,
        doc_id: row.get(2)?,
        at: row.get(3)?,
        reason: row.get(4)?,
        bytes: row.get(5)?,
        size: row.get(6)?,
        digest: row.get(7)?,
        change_hashes: hashes.split_whitespace().map(str::to_owned).collect(),
        rule: row.get(9)?,
        repeats: row.get(10)?,
    })
}

fn list_quarantine(conn: &Connection, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
    let mut sql =
        String::from(
        "SELECT id, device_id, doc_id, at, reason, bytes, size, digest, change_hashes, rule, repeats
         FROM quarantine WHERE 1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |clause: &str, value: rusqlite::types::Value| {
        args.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(device_id) = &filter.device_id {
        push("device_id =", device_id.clone().into());
    }
    if let Some(doc_id) = &filter.doc_id {
        push("doc_id =", doc_id.clone().into());
    }
    if let Some(since) = filter.since {
        push("at >=", since.into());
    }
    if let Some(after_id) = filter.after_id {
        push("id >", after_id.into());
    }
    sql.push_str(" ORDER BY id");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), entry_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn legacy<'a>(
    device_id: &'a str,
    doc_id: &'a str,
    reason: &'a str,
    bytes: &'a [u8],
    now: i64,
) -> NewQuarantine<'a> {
    NewQuarantine {
        device_id,
        doc_id,
        reason,
        raw: bytes,
        keep_raw: true,
        now,
        ..Default::default()
    }
}

pub(crate) fn id_of(outcome: QuarantineOutcome) -> i64 {
    match outcome {
        QuarantineOutcome::Kept { id, .. } => id,
        QuarantineOutcome::Counted { id } => id.unwrap_or(0),
    }
}

impl WriteTx<'_> {
    /// Records a rejected message inside this transaction under the default quota; returns the
    /// entry's id (or the id of the entry that counted it, 0 if none).
    pub fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        let entry = legacy(device_id, doc_id, reason, bytes, now);
        quarantine(self.conn(), &entry, &QuarantineQuota::default()).map(id_of)
    }

    /// Records a refusal inside this transaction, within `quota`.
    pub fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        quarantine(self.conn(), entry, quota)
    }
}

impl Store {
    /// Records a rejected message under the default quota and commits; returns the entry's id
    /// (or the id of the entry that counted it, 0 if none).
    pub fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        self.write(|tx| tx.quarantine(device_id, doc_id, reason, bytes, now))
    }

    /// Records a refusal within `quota` and commits.
    pub fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        self.write(|tx| tx.quarantine_entry(entry, quota))
    }

    /// The quarantined messages matching `filter`, oldest first.
    pub fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
        self.with_conn(|conn| list_quarantine(conn, filter))
    }

    /// How many entries the quarantine holds (for the server's metrics).
    pub fn quarantine_len(&self) -> Result<u64> {
        self.with_conn(|conn| {
            let n: i64 = conn.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
