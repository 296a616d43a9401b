//! The totals projection: SQL rows of signatures, check-ins, strikes and paper sheets, kept
//! current from each document's accepted changes inside the same SQLite transaction that stores
//! them (only the records the change touched are re-read), and the queries that answer totals
//! from those rows. No personal field is ever written here. Tests hold these totals equal to
//! the document core's reference `totals` function.

use std::collections::BTreeMap;

use automerge::Automerge;
use tally_core::collection::{self, CHECKINS, SIGNATURES};
use tally_core::review::{self, SHEETS, STRIKES};
use tally_core::totals::{Cell, CheckinCell, PaperCell, Totals, day_of};
use tally_core::validate::Accepted;
use tally_core::{DocHeader, DocKind};
use tally_store::rusqlite::{self, Connection, params};

/// Projection failures: a stored record that does not read back (a bug) or SQLite.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A record could not be read from the document.
    #[error("record {0} could not be projected: {1}")]
    Record(String, String),
    /// SQLite refused.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Updates the rows of every record `acc` touched, reading them from `after`. `timezone` is the
/// campaign's, for the day column.
pub fn apply(
    conn: &Connection,
    doc_id: &str,
    header: &DocHeader,
    acc: &Accepted,
    after: &Automerge,
    timezone: &str,
) -> Result<(), ProjectionError> {
    let bad = |id: &str, e: String| ProjectionError::Record(id.to_string(), e);
    match header.kind {
        DocKind::Collection => {
            for id in acc.in_container(SIGNATURES) {
                let Some(s) =
                    collection::signature(after, id).map_err(|e| bad(id, e.to_string()))?
                else {
                    continue;
                };
                conn.prepare_cached(
                    "INSERT INTO signatures (doc_id, sig_id, campaign, event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (doc_id, sig_id) DO UPDATE SET event = excluded.event, day = excluded.day, city = excluded.city,
                       fsa = excluded.fsa, riding = excluded.riding, consent = excluded.consent, dup = excluded.dup, withdrawn = excluded.withdrawn",
                )?
                .execute(params![
                    doc_id,
                    s.id,
                    header.campaign,
                    s.event,
                    s.collected_at,
                    day_of(s.collected_at, timezone),
                    s.collected_by,
                    s.city,
                    s.fsa,
                    s.riding,
                    s.consent_contact,
                    s.dup,
                    s.withdrawn
                ])?;
            }
            for id in acc.in_container(CHECKINS) {
                let Some(c) = collection::checkin(after, id).map_err(|e| bad(id, e.to_string()))?
                else {
                    continue;
                };
                conn.prepare_cached(
                    "INSERT INTO checkins (doc_id, ci_id, campaign, event, attendee, at, by_id, walk_in, withdrawn)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (doc_id, ci_id) DO UPDATE SET attendee = excluded.attendee, walk_in = excluded.walk_in, withdrawn = excluded.withdrawn",
                )?
                .execute(params![doc_id, c.id, header.campaign, c.event, c.attendee, c.at, c.by, c.walk_in, c.withdrawn])?;
            }
        }
        DocKind::Review => {
            for id in acc.in_container(STRIKES) {
                let Some(s) = review::strike(after, id).map_err(|e| bad(id, e.to_string()))? else {
                    continue;
                };
                conn.prepare_cached(
                    "INSERT INTO strikes (campaign, sig_id, reason, by_id, at, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (campaign, sig_id) DO UPDATE SET reason = excluded.reason, by_id = excluded.by_id, at = excluded.at, revoked = excluded.revoked",
                )?
                .execute(params![header.campaign, s.signature, s.reason.as_str(), s.by, s.at, s.revoked])?;
            }
            for id in acc.in_container(SHEETS) {
                let Some(s) = review::sheet(after, id).map_err(|e| bad(id, e.to_string()))? else {
                    continue;
                };
                conn.prepare_cached(
                    "INSERT INTO sheets (campaign, serial, count, riding, status) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (campaign, serial) DO UPDATE SET count = excluded.count, riding = excluded.riding, status = excluded.status",
                )?
                .execute(params![header.campaign, s.serial, s.count, s.riding, s.status.as_str()])?;
            }
        }
        DocKind::Campaign | DocKind::Totals => {}
    }
    Ok(())
}

const COUNTED: &str = "FROM signatures s WHERE s.campaign = ?1 AND s.withdrawn = 0
    AND NOT EXISTS (SELECT 1 FROM strikes k WHERE k.campaign = s.campaign AND k.sig_id = s.sig_id AND k.revoked = 0)";

fn breakdown(
    conn: &Connection,
    campaign: &str,
    column: &str,
) -> rusqlite::Result<BTreeMap<String, Cell>> {
    let sql = format!(
        "SELECT s.{column}, COUNT(*), COUNT(DISTINCT s.dup) {COUNTED} AND s.{column} IS NOT NULL GROUP BY s.{column}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([campaign], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Cell {
                signatures: r.get::<_, i64>(1)? as u64,
                unique: r.get::<_, i64>(2)? as u64,
            },
        ))
    })?;
    rows.collect()
}

/// A campaign's totals, from the projection.
pub fn totals(conn: &Connection, campaign: &str) -> rusqlite::Result<Totals> {
    let mut t = Totals::default();
    let (n, u): (i64, i64) = conn
        .prepare_cached(&format!("SELECT COUNT(*), COUNT(DISTINCT s.dup) {COUNTED}"))?
        .query_row([campaign], |r| Ok((r.get(0)?, r.get(1)?)))?;
    t.signatures = n as u64;
    t.unique_signers = u as u64;
    let (w, k): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(s.withdrawn), 0),
                    COALESCE(SUM(s.withdrawn = 0 AND EXISTS (SELECT 1 FROM strikes k WHERE k.campaign = s.campaign AND k.sig_id = s.sig_id AND k.revoked = 0)), 0)
             FROM signatures s WHERE s.campaign = ?1",
        )?
        .query_row([campaign], |r| Ok((r.get(0)?, r.get(1)?)))?;
    t.withdrawn = w as u64;
    t.struck = k as u64;
    t.by_event = breakdown(conn, campaign, "event")?;
    t.by_city = breakdown(conn, campaign, "city")?;
    t.by_fsa = breakdown(conn, campaign, "fsa")?;
    t.by_riding = breakdown(conn, campaign, "riding")?;
    t.by_day = breakdown(conn, campaign, "day")?;
    t.by_canvasser = breakdown(conn, campaign, "collected_by")?;
    let mut stmt = conn.prepare_cached(
        "SELECT event, COUNT(DISTINCT attendee), COUNT(DISTINCT CASE WHEN walk_in = 0 THEN attendee END),
                COUNT(DISTINCT CASE WHEN walk_in = 1 THEN attendee END)
         FROM checkins WHERE campaign = ?1 AND withdrawn = 0 GROUP BY event",
    )?;
    t.checkins = stmt
        .query_map([campaign], |r| {
            Ok((
                r.get::<_, String>(0)?,
                CheckinCell {
                    unique: r.get::<_, i64>(1)? as u64,
                    pre_registered: r.get::<_, i64>(2)? as u64,
                    walk_in: r.get::<_, i64>(3)? as u64,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT status, COUNT(*), SUM(count) FROM sheets WHERE campaign = ?1 GROUP BY status",
    )?;
    for row in stmt.query_map([campaign], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })? {
        let (status, sheets, signatures) = row?;
        t.paper.sheets += sheets;
        t.paper.signatures += signatures;
        t.paper
            .by_status
            .insert(status, PaperCell { sheets, signatures });
    }
    Ok(t)
}
