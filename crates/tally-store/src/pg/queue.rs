//! PostgreSQL's claims and projection queue ([`crate::queue`] says what they are).
//!
//! Several servers share the queue: the projector's write takes a transaction-level advisory
//! lock, tried without waiting, so that one server projects at a time and the others find the
//! work taken; a reindex waits for that lock. Queue ids come from a sequence, and a change
//! whose id is lower than one already projected may commit after it: the projector deletes
//! exactly the ids it took, so such a change is taken by the next write.

use postgres::GenericClient;

use crate::backend::{ProjectionStatus, Queued};
use crate::queue::{TAKE_AT_MOST, check_claim, cut, in_order};
use crate::{Result, StoreError};

use super::projection::lineage_of;

/// SQLite's `claim_rows` in PostgreSQL's dialect (migration v3, and a reindex): a record
/// several documents hold is claimed for the least of their lineages.
macro_rules! claim_rows {
    () => {
        "INSERT INTO record_claims (campaign, container, id, lineage)
             SELECT s.campaign, 'signatures', s.sig_id, MIN(COALESCE(NULLIF(v.lineage, ''), d.owner))
             FROM signatures s JOIN documents d ON d.doc_id = s.doc_id
             LEFT JOIN devices v ON v.device_id = d.owner
             WHERE d.owner IS NOT NULL GROUP BY s.campaign, s.sig_id
             ON CONFLICT DO NOTHING;
         INSERT INTO record_claims (campaign, container, id, lineage)
             SELECT c.campaign, 'checkins', c.ci_id, MIN(COALESCE(NULLIF(v.lineage, ''), d.owner))
             FROM checkins c JOIN documents d ON d.doc_id = c.doc_id
             LEFT JOIN devices v ON v.device_id = d.owner
             WHERE d.owner IS NOT NULL GROUP BY c.campaign, c.ci_id
             ON CONFLICT DO NOTHING;"
    };
}
pub(crate) use claim_rows;

/// The projector's lock (per schema, so that databases sharing a cluster do not share it).
const PROJECTOR_LOCK: &str = "hashtext('tally projector ' || current_schema())";

pub(crate) fn claim_records(
    conn: &mut impl GenericClient,
    campaign: &str,
    owner: &str,
    container: &'static str,
    ids: &[&str],
) -> Result<()> {
    let mine = lineage_of(conn, owner)?;
    let insert = conn.prepare(
        "INSERT INTO record_claims (campaign, container, id, lineage) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )?;
    let held = conn.prepare(
        "SELECT lineage FROM record_claims WHERE campaign = $1 AND container = $2 AND id = $3",
    )?;
    for id in ids {
        if conn.execute(&insert, &[&campaign, &container, id, &mine])? == 0 {
            let lineage: Option<String> = conn
                .query_opt(&held, &[&campaign, &container, id])?
                .map(|r| r.get(0));
            check_claim(lineage.as_deref(), &mine, container, id)?;
        }
    }
    Ok(())
}

pub(crate) fn enqueue_projection(
    conn: &mut impl GenericClient,
    campaign: &str,
    doc_id: &str,
    records: u64,
    payload: &[u8],
    now: i64,
) -> Result<i64> {
    let records = i64::try_from(records).unwrap_or(i64::MAX);
    Ok(conn
        .query_one(
            "INSERT INTO projection_queue (campaign, doc_id, records, at, payload)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&campaign, &doc_id, &records, &now, &payload],
        )?
        .get(0))
}

pub(crate) fn take_projection(
    conn: &mut impl GenericClient,
    max_records: u64,
) -> Result<Option<Vec<Queued>>> {
    let got: bool = conn
        .query_one(
            &format!("SELECT pg_try_advisory_xact_lock({PROJECTOR_LOCK})"),
            &[],
        )?
        .get(0);
    if !got {
        return Ok(None);
    }
    // The sizes first: only the payloads taken are read.
    let oldest: Vec<(i64, u64)> = conn
        .query(
            "SELECT id, records FROM projection_queue ORDER BY id LIMIT $1",
            &[&TAKE_AT_MOST],
        )?
        .iter()
        .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        .collect();
    let ids = cut(&oldest, max_records);
    let taken: Vec<Queued> = conn
        .query(
            "DELETE FROM projection_queue WHERE id = ANY($1)
             RETURNING id, campaign, doc_id, records, at, payload",
            &[&ids],
        )?
        .iter()
        .map(|r| Queued {
            id: r.get(0),
            campaign: r.get(1),
            doc_id: r.get(2),
            records: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            at: r.get(4),
            payload: r.get(5),
        })
        .collect();
    if taken.len() != ids.len() {
        // Only a reindex deletes queued changes, and it holds the projector's lock.
        return Err(StoreError::Conflict(format!(
            "{} of the {} queued changes taken were gone; projecting them again",
            ids.len() - taken.len(),
            ids.len()
        )));
    }
    let taken = in_order(taken);
    Ok(Some(taken))
}

/// Waits for the projector's lock until the write ends (a reindex).
pub(crate) fn hold_projector(conn: &mut impl GenericClient) -> Result<()> {
    conn.execute(
        &format!("SELECT pg_advisory_xact_lock({PROJECTOR_LOCK})"),
        &[],
    )?;
    Ok(())
}

pub(crate) fn rebuild_claims(conn: &mut impl GenericClient) -> Result<()> {
    Ok(conn.batch_execute(claim_rows!())?)
}

pub(crate) fn projection_status(
    conn: &mut impl GenericClient,
    campaign: Option<&str>,
) -> Result<ProjectionStatus> {
    let r = conn.query_one(
        "SELECT COUNT(*), COALESCE(SUM(records), 0)::BIGINT, MIN(at), MIN(id), MAX(id)
         FROM projection_queue WHERE $1::TEXT IS NULL OR campaign = $1",
        &[&campaign],
    )?;
    Ok(ProjectionStatus {
        changes: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
        records: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        oldest_at: r.get(2),
        first: r.get(3),
        last: r.get(4),
    })
}
