//! The quarantine on PostgreSQL, as in `crate::quarantine` (SQLite), whose doc comments say
//! what each call promises. The quotas are counted under an advisory lock, so that several
//! servers refusing messages at once keep within them together.

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::quarantine::{
    NewQuarantine, QuarantineEntry, QuarantineFilter, QuarantineOutcome, QuarantineQuota, id_of,
    legacy,
};

use super::PgStore;

pub(crate) fn quarantine(
    conn: &mut impl GenericClient,
    entry: &NewQuarantine<'_>,
    quota: &QuarantineQuota,
) -> Result<QuarantineOutcome> {
    if entry.reason.trim().is_empty() {
        return Err(StoreError::Invalid(
            "a quarantine entry needs a reason an organizer can act on".to_owned(),
        ));
    }
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tally quarantine ' || current_schema()))",
        &[],
    )?;
    if quota.retention_ms > 0 {
        conn.execute(
            "DELETE FROM quarantine WHERE at < $1",
            &[&entry.now.saturating_sub(quota.retention_ms)],
        )?;
    }
    let device = conn.query_one(
        "SELECT count(*), coalesce(sum(length(bytes)), 0)::BIGINT FROM quarantine
         WHERE device_id = $1",
        &[&entry.device_id],
    )?;
    let (device_entries, device_raw): (i64, i64) = (device.get(0), device.get(1));
    let total = conn.query_one(
        "SELECT count(*), coalesce(sum(length(bytes)), 0)::BIGINT FROM quarantine",
        &[],
    )?;
    let (total_entries, total_raw): (i64, i64) = (total.get(0), total.get(1));
    if device_entries as u64 >= quota.max_entries_per_device
        || total_entries as u64 >= quota.max_entries_total
    {
        let id: Option<i64> = conn
            .query_one(
                "SELECT max(id) FROM quarantine WHERE device_id = $1",
                &[&entry.device_id],
            )?
            .get(0);
        if let Some(id) = id {
            conn.execute(
                "UPDATE quarantine SET repeats = repeats + 1 WHERE id = $1",
                &[&id],
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
    let row = conn.query_one(
        "INSERT INTO quarantine (device_id, doc_id, at, reason, bytes, size, digest, change_hashes, rule)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        &[
            &entry.device_id,
            &entry.doc_id,
            &entry.now,
            &entry.reason,
            &bytes,
            &(len as i64),
            &digest,
            &entry.change_hashes.join(" "),
            &entry.rule,
        ],
    )?;
    Ok(QuarantineOutcome::Kept {
        id: row.get(0),
        raw_kept,
    })
}

fn entry_from_row(row: &Row) -> QuarantineEntry {
    let hashes: &str = row.get(8);
    QuarantineEntry {
        id: row.get(0),
        device_id: row.get(1),
        doc_id: row.get(2),
        at: row.get(3),
        reason: row.get(4),
        bytes: row.get(5),
        size: row.get(6),
        digest: row.get(7),
        change_hashes: hashes.split_whitespace().map(str::to_owned).collect(),
        rule: row.get(9),
        repeats: row.get(10),
    }
}

fn list_quarantine(
    conn: &mut impl GenericClient,
    filter: &QuarantineFilter,
) -> Result<Vec<QuarantineEntry>> {
    let mut sql = String::from(
        "SELECT id, device_id, doc_id, at, reason, bytes, size, digest, change_hashes, rule, repeats
         FROM quarantine WHERE TRUE",
    );
    let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(device_id) = &filter.device_id {
        args.push(device_id);
        sql.push_str(&format!(" AND device_id = ${}", args.len()));
    }
    if let Some(doc_id) = &filter.doc_id {
        args.push(doc_id);
        sql.push_str(&format!(" AND doc_id = ${}", args.len()));
    }
    if let Some(since) = &filter.since {
        args.push(since);
        sql.push_str(&format!(" AND at >= ${}", args.len()));
    }
    if let Some(after_id) = &filter.after_id {
        args.push(after_id);
        sql.push_str(&format!(" AND id > ${}", args.len()));
    }
    sql.push_str(" ORDER BY id");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    Ok(conn
        .query(&sql, &args)?
        .iter()
        .map(entry_from_row)
        .collect())
}

impl PgStore {
    /// Quarantines a rejected message within the default quotas; its id.
    pub fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        let entry = legacy(device_id, doc_id, reason, bytes, now);
        self.write(|tx| quarantine(tx, &entry, &QuarantineQuota::default()).map(id_of))
    }

    /// Quarantines a refusal within the quotas.
    pub fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        self.write(|tx| quarantine(tx, entry, quota))
    }

    /// Quarantined messages matching `filter`, oldest first.
    pub fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
        self.read(|tx| list_quarantine(tx, filter))
    }

    /// How many messages are quarantined.
    pub fn quarantine_len(&self) -> Result<u64> {
        self.read(|tx| {
            let n: i64 = tx.query_one("SELECT count(*) FROM quarantine", &[])?.get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
