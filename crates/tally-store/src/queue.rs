//! What the acknowledging write keeps of the projection (issue 18): the claims that make a
//! record id one phone's, and the queue of acknowledged changes the projector has yet to apply
//! (`record_claims`, `projection_queue`). The acknowledging write stores the chunk, claims its
//! records and queues what it does to the projection; the projector takes the oldest queued
//! changes and projects them in one write of its own ([`crate::Writes::take_projection`]), so
//! that a change is projected exactly once whatever stops in between.
//!
//! The pure parts, shared by both backends, are here too: which queued changes one projector
//! write takes ([`cut`]).

use rusqlite::{OptionalExtension, params};

use crate::backend::{ProjectionStatus, Queued};
use crate::{ReadTx, Result, StoreError, WriteTx};

/// Claims, for every collection record the rows hold, its document's owner's lineage: what
/// schema 10 does to an existing file, and [`WriteTx::rebuild_claims`] after a reindex.
macro_rules! claim_rows {
    () => {
        "INSERT OR IGNORE INTO record_claims (campaign, container, id, lineage)
             SELECT s.campaign, 'signatures', s.sig_id, COALESCE(NULLIF(v.lineage, ''), d.owner)
             FROM signatures s JOIN documents d ON d.doc_id = s.doc_id
             LEFT JOIN devices v ON v.device_id = d.owner
             WHERE d.owner IS NOT NULL;
         INSERT OR IGNORE INTO record_claims (campaign, container, id, lineage)
             SELECT c.campaign, 'checkins', c.ci_id, COALESCE(NULLIF(v.lineage, ''), d.owner)
             FROM checkins c JOIN documents d ON d.doc_id = c.doc_id
             LEFT JOIN devices v ON v.device_id = d.owner
             WHERE d.owner IS NOT NULL;"
    };
}
pub(crate) use claim_rows;

/// At most this many queued changes are read by one projector write.
pub(crate) const TAKE_AT_MOST: i64 = 512;

/// The queued changes one projector write takes out of `oldest` (their ids and records, in
/// queue order): as many as fit in `max_records` records, and always the first, however many
/// records it has. Their ids.
pub(crate) fn cut(oldest: &[(i64, u64)], max_records: u64) -> Vec<i64> {
    let mut taken = 0u64;
    let mut out = Vec::new();
    for &(id, records) in oldest {
        if !out.is_empty() && taken + records > max_records {
            break;
        }
        taken += records;
        out.push(id);
    }
    out
}

/// The claim check of one record: `Ok` when the record's id is unclaimed (`held` is `None`)
/// or claimed by `mine`.
pub(crate) fn check_claim(
    held: Option<&str>,
    mine: &str,
    container: &'static str,
    id: &str,
) -> Result<()> {
    match held {
        Some(lineage) if lineage != mine => Err(StoreError::Claimed {
            container,
            id: id.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `rows` in queue order.
pub(crate) fn in_order(mut rows: Vec<Queued>) -> Vec<Queued> {
    rows.sort_by_key(|q| q.id);
    rows
}

/// A queue row (id, campaign, doc_id, records, at, payload).
fn queued(r: &rusqlite::Row<'_>) -> rusqlite::Result<Queued> {
    Ok(Queued {
        id: r.get(0)?,
        campaign: r.get(1)?,
        doc_id: r.get(2)?,
        records: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        at: r.get(4)?,
        payload: r.get(5)?,
    })
}

impl WriteTx<'_> {
    /// Claims collection records `ids` of `container` for the lineage of `owner`; a record
    /// another lineage claimed is [`StoreError::Claimed`].
    pub fn claim_records(
        &self,
        campaign: &str,
        owner: &str,
        container: &'static str,
        ids: &[&str],
    ) -> Result<()> {
        let mine = self.lineage_of(owner)?;
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO record_claims (campaign, container, id, lineage) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?;
        let mut held = self.tx.prepare_cached(
            "SELECT lineage FROM record_claims WHERE campaign = ?1 AND container = ?2 AND id = ?3",
        )?;
        for id in ids {
            if insert.execute(params![campaign, container, id, mine])? == 0 {
                let lineage: Option<String> = held
                    .query_row(params![campaign, container, id], |r| r.get(0))
                    .optional()?;
                check_claim(lineage.as_deref(), &mine, container, id)?;
            }
        }
        Ok(())
    }

    /// Queues an acknowledged change's projection; its place in the queue.
    pub fn enqueue_projection(
        &self,
        campaign: &str,
        doc_id: &str,
        records: u64,
        payload: &[u8],
        now: i64,
    ) -> Result<i64> {
        self.tx
            .prepare_cached(
                "INSERT INTO projection_queue (campaign, doc_id, records, at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                campaign,
                doc_id,
                i64::try_from(records).unwrap_or(i64::MAX),
                now,
                payload
            ])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Takes the oldest queued changes out of the queue ([`cut`]); the caller projects them in
    /// this write.
    pub fn take_projection(&self, max_records: u64) -> Result<Vec<Queued>> {
        // The sizes first: only the payloads taken are read.
        let oldest: Vec<(i64, u64)> = self
            .tx
            .prepare_cached("SELECT id, records FROM projection_queue ORDER BY id LIMIT ?1")?
            .query_map([TAKE_AT_MOST], |r| {
                Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let ids = cut(&oldest, max_records);
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(Vec::new());
        };
        // The write holds the file's one writer: the ids in between are exactly these.
        let taken = self
            .tx
            .prepare_cached(
                "DELETE FROM projection_queue WHERE id BETWEEN ?1 AND ?2
                 RETURNING id, campaign, doc_id, records, at, payload",
            )?
            .query_map([first, last], queued)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(in_order(taken))
    }

    /// Claims every collection record the rows hold, for its document's lineage (reindex).
    pub fn rebuild_claims(&self) -> Result<()> {
        Ok(self.tx.execute_batch(claim_rows!())?)
    }
}

impl ReadTx<'_> {
    /// How far the projection is behind what was acknowledged: of `campaign`, or of every
    /// campaign (`None`).
    pub fn projection_status(&self, campaign: Option<&str>) -> Result<ProjectionStatus> {
        Ok(self.conn.prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(records), 0), MIN(at), MIN(id), MAX(id) FROM projection_queue
             WHERE ?1 IS NULL OR campaign = ?1",
        )?
        .query_row([campaign], |r| {
            Ok(ProjectionStatus {
                changes: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                records: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                oldest_at: r.get(2)?,
                first: r.get(3)?,
                last: r.get(4)?,
            })
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_takes_what_fits_and_always_the_first() {
        let q = [(1, 60), (2, 30), (3, 20), (4, 1)];
        assert_eq!(cut(&q, 100), [1, 2]);
        assert_eq!(cut(&q, 110), [1, 2, 3]);
        assert_eq!(cut(&q, 10), [1], "the first even when larger than the cut");
        assert_eq!(cut(&[], 10), Vec::<i64>::new());
    }

    #[test]
    fn a_claim_is_one_lineages() {
        assert!(check_claim(None, "a", "signatures", "s1").is_ok());
        assert!(check_claim(Some("a"), "a", "signatures", "s1").is_ok());
        let e = check_claim(Some("b"), "a", "signatures", "s1").unwrap_err();
        assert!(matches!(e, StoreError::Claimed { id, .. } if id == "s1"));
    }
}
