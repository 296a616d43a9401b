//! The quarantine: sync messages the server rejected, kept with who sent them, when, and why,
//! instead of being dropped, so an organizer can inspect them and nothing a canvasser collected
//! is silently lost.
//!
//! Entries are written inside the same transaction as whatever else the server records about
//! the rejection ([`WriteTx::quarantine`]), or on their own ([`Store::quarantine`]).

use rusqlite::{Connection, Row, params};

use crate::error::{Result, StoreError};
use crate::{Store, WriteTx};

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
    /// The rejected message or changes, byte for byte.
    pub bytes: Vec<u8>,
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
    device_id: &str,
    doc_id: &str,
    reason: &str,
    bytes: &[u8],
    now: i64,
) -> Result<i64> {
    if reason.trim().is_empty() {
        return Err(StoreError::Invalid(
            "a quarantine entry needs a reason an organizer can act on".to_owned(),
        ));
    }
    conn.execute(
        "INSERT INTO quarantine (device_id, doc_id, at, reason, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device_id, doc_id, now, reason, bytes],
    )?;
    Ok(conn.last_insert_rowid())
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        id: row.get(0)?,
        device_id: row.get(1)?,
        doc_id: row.get(2)?,
        at: row.get(3)?,
        reason: row.get(4)?,
        bytes: row.get(5)?,
    })
}

fn list_quarantine(conn: &Connection, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
    let mut sql =
        String::from("SELECT id, device_id, doc_id, at, reason, bytes FROM quarantine WHERE 1");
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

impl WriteTx<'_> {
    /// Records a rejected message inside this transaction; returns the entry's id.
    pub fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        quarantine(self.conn(), device_id, doc_id, reason, bytes, now)
    }
}

impl Store {
    /// Records a rejected message and commits; returns the entry's id.
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

    /// The quarantined messages matching `filter`, oldest first.
    pub fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
        self.with_conn(|conn| list_quarantine(conn, filter))
    }
}
