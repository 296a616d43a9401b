//! The audit chain on PostgreSQL, as in `crate::audit` (SQLite): the same entries, the same
//! hashes ([`crate::audit::entry_hash`]), the same check. Appending takes an advisory lock, so
//! that several servers appending at once chain their entries one after the other.

use postgres::{GenericClient, Row};

use crate::audit::{
    AuditBroken, AuditEntry, AuditFilter, COLUMNS, GENESIS, NewAudit, entry_hash, verify_chain,
};
use crate::error::Result;

use super::PgStore;

fn entry_from_row(r: &Row) -> AuditEntry {
    AuditEntry {
        seq: r.get(0),
        at: r.get(1),
        actor_id: r.get(2),
        actor_name: r.get(3),
        action: r.get(4),
        campaign: r.get(5),
        target: r.get(6),
        result: r.get(7),
        prev_hash: r.get(8),
        hash: r.get(9),
    }
}

pub(crate) fn append(conn: &mut impl GenericClient, e: &NewAudit<'_>) -> Result<AuditEntry> {
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tally audit ' || current_schema()))",
        &[],
    )?;
    let last = conn.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
    let (seq, prev) = match last {
        Some(r) => (r.get::<_, i64>(0) + 1, r.get::<_, String>(1)),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(&prev, seq, e);
    conn.execute(
        &format!("INSERT INTO audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
        &[
            &seq,
            &e.at,
            &e.actor_id,
            &e.actor_name,
            &e.action,
            &e.campaign,
            &e.target,
            &e.result,
            &prev,
            &hash,
        ],
    )?;
    Ok(AuditEntry {
        seq,
        at: e.at,
        actor_id: e.actor_id.to_string(),
        actor_name: e.actor_name.to_string(),
        action: e.action.to_string(),
        campaign: e.campaign.map(str::to_string),
        target: e.target.to_string(),
        result: e.result.to_string(),
        prev_hash: prev,
        hash,
    })
}

impl PgStore {
    /// Appends an entry to the audit chain; commits on its own.
    pub fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        self.write(|tx| append(tx, e))
    }

    /// The latest entries matching `filter` (at most its limit, 1,000 by default), oldest
    /// first.
    pub fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let limit = i64::from(filter.limit.unwrap_or(1_000));
        self.read(|tx| {
            Ok(tx
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM (
                             SELECT {COLUMNS} FROM audit
                             WHERE ($1::BIGINT IS NULL OR at >= $1) AND ($2::BIGINT IS NULL OR at < $2)
                               AND ($3::TEXT IS NULL OR actor_id = $3)
                               AND ($4::TEXT IS NULL OR action = $4)
                               AND ($5::TEXT IS NULL OR campaign = $5)
                             ORDER BY seq DESC LIMIT $6) AS latest
                         ORDER BY seq"
                    ),
                    &[
                        &filter.from,
                        &filter.to,
                        &filter.actor,
                        &filter.action,
                        &filter.campaign,
                        &limit,
                    ],
                )?
                .iter()
                .map(entry_from_row)
                .collect())
        })
    }

    /// Checks the whole chain: how many entries it holds, or the first broken one.
    pub fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBroken>> {
        self.read(|tx| {
            let rows = tx.query(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"), &[])?;
            Ok(verify_chain(rows.iter().map(entry_from_row)))
        })
    }
}
