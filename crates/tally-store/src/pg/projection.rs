//! The totals projection on PostgreSQL, as in `crate::projection` (SQLite), whose doc comments
//! say what each call promises: the same rows, the same aggregate cells from the same pure
//! mapping (`tally_core::cells`), the same independent rebuild in one SQL pass.
//!
//! Several servers on one database: a batch takes an advisory lock on its campaign before it
//! reads a record's copies, so that two servers projecting records of one campaign at once do
//! not both count a record from the same "before"; cells get their ids from an identity column.
//! Texts are ordered `COLLATE "C"` (by their bytes, as Rust orders `str`) with NULLs first (as
//! Rust orders `Option`), whatever the database's collation.

use std::collections::{BTreeMap, HashMap, HashSet};

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use tally_core::cells::{
    CheckinRow, Contribution, Dim, SignatureRow, checkin_cells, signature_cells, totals_of_cells,
};
use tally_core::city::city_key;
use tally_core::collection::{CHECKINS, Checkin, Collection, SIGNATURES, Signature};
use tally_core::review::{Review, Sheet, Strike};
use tally_core::totals::{PaperCell, Totals};

use crate::error::{Result, StoreError};
use crate::projection::{
    Filter, FilterArg, checkin_conditions, scanned_totals, signature_conditions,
};

fn is_struck(conn: &mut impl GenericClient, campaign: &str, sig_id: &str) -> Result<bool> {
    Ok(conn
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM strikes WHERE campaign = $1 AND sig_id = $2 AND NOT revoked)",
            &[&campaign, &sig_id],
        )?
        .get(0))
}

pub(crate) fn lineage_of(conn: &mut impl GenericClient, device_id: &str) -> Result<String> {
    Ok(conn
        .query_one(
            "SELECT COALESCE((SELECT NULLIF(lineage, '') FROM devices WHERE device_id = $1), $1)",
            &[&device_id],
        )?
        .get(0))
}

fn lineage_of_doc(conn: &mut impl GenericClient, doc_id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_opt(
            "SELECT COALESCE(NULLIF(v.lineage, ''), d.owner) FROM documents d
             LEFT JOIN devices v ON v.device_id = d.owner WHERE d.doc_id = $1",
            &[&doc_id],
        )?
        .and_then(|r| r.get(0)))
}

const SIG_COLUMNS: &str =
    "event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn";

fn sig_row(r: &Row) -> SignatureRow {
    SignatureRow {
        event: r.get(0),
        collected_at: r.get(1),
        day: r.get(2),
        collected_by: r.get(3),
        city: r.get(4),
        fsa: r.get(5),
        riding: r.get(6),
        consent: r.get(7),
        dup: r.get(8),
        withdrawn: r.get(9),
    }
}

fn checkin_row(r: &Row) -> CheckinRow {
    CheckinRow {
        event: r.get(0),
        attendee: r.get(1),
        at: r.get(2),
        by: r.get(3),
        walk_in: r.get(4),
        withdrawn: r.get(5),
    }
}

fn sig_copies(
    conn: &mut impl GenericClient,
    campaign: &str,
    sig_id: &str,
) -> Result<Vec<(String, SignatureRow)>> {
    Ok(conn
        .query(
            &format!(
                "SELECT {SIG_COLUMNS}, doc_id FROM signatures WHERE campaign = $1 AND sig_id = $2"
            ),
            &[&campaign, &sig_id],
        )?
        .iter()
        .map(|r| (r.get(10), sig_row(r)))
        .collect())
}

fn upsert_signature_row(
    conn: &mut impl GenericClient,
    doc_id: &str,
    campaign: &str,
    sig_id: &str,
    row: &SignatureRow,
) -> Result<()> {
    conn.execute(
        "INSERT INTO signatures (doc_id, sig_id, campaign, event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn, city_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (doc_id, sig_id) DO UPDATE SET event = excluded.event, day = excluded.day, city = excluded.city,
           city_key = excluded.city_key, fsa = excluded.fsa, riding = excluded.riding, consent = excluded.consent, dup = excluded.dup, withdrawn = excluded.withdrawn",
        &[
            &doc_id,
            &sig_id,
            &campaign,
            &row.event,
            &row.collected_at,
            &row.day,
            &row.collected_by,
            &row.city,
            &row.fsa,
            &row.riding,
            &row.consent,
            &row.dup,
            &row.withdrawn,
            &city_key(&row.city),
        ],
    )?;
    Ok(())
}

fn checkin_copies(
    conn: &mut impl GenericClient,
    campaign: &str,
    ci_id: &str,
) -> Result<Vec<(String, CheckinRow)>> {
    Ok(conn
        .query(
            "SELECT event, attendee, at, by_id, walk_in, withdrawn, doc_id
             FROM checkins WHERE campaign = $1 AND ci_id = $2",
            &[&campaign, &ci_id],
        )?
        .iter()
        .map(|r| (r.get(6), checkin_row(r)))
        .collect())
}

fn upsert_checkin_row(
    conn: &mut impl GenericClient,
    doc_id: &str,
    campaign: &str,
    c: &Checkin,
) -> Result<()> {
    conn.execute(
        "INSERT INTO checkins (doc_id, ci_id, campaign, event, attendee, at, by_id, walk_in, withdrawn)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (doc_id, ci_id) DO UPDATE SET attendee = excluded.attendee, walk_in = excluded.walk_in, withdrawn = excluded.withdrawn",
        &[&doc_id, &c.id, &campaign, &c.event, &c.attendee, &c.at, &c.by, &c.walk_in, &c.withdrawn],
    )?;
    Ok(())
}

fn upsert_strike_row(conn: &mut impl GenericClient, campaign: &str, s: &Strike) -> Result<()> {
    conn.execute(
        "INSERT INTO strikes (campaign, sig_id, reason, by_id, at, revoked) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (campaign, sig_id) DO UPDATE SET reason = excluded.reason, by_id = excluded.by_id, at = excluded.at, revoked = excluded.revoked",
        &[&campaign, &s.signature, &s.reason.as_str(), &s.by, &s.at, &s.revoked],
    )?;
    Ok(())
}

fn upsert_sheet_row(conn: &mut impl GenericClient, campaign: &str, s: &Sheet) -> Result<()> {
    conn.execute(
        "INSERT INTO sheets (campaign, serial, count, riding, status) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (campaign, serial) DO UPDATE SET count = excluded.count, riding = excluded.riding, status = excluded.status",
        &[&campaign, &s.serial, &s.count, &s.riding, &s.status.as_str()],
    )?;
    Ok(())
}

fn token_id(conn: &mut impl GenericClient, campaign: &str, token: &str) -> Result<i64> {
    if let Some(row) = conn.query_opt(
        "SELECT token_id FROM agg_tokens WHERE campaign = $1 AND token = $2",
        &[&campaign, &token],
    )? {
        return Ok(row.get(0));
    }
    Ok(conn
        .query_one(
            "INSERT INTO agg_tokens (campaign, token) VALUES ($1, $2) RETURNING token_id",
            &[&campaign, &token],
        )?
        .get(0))
}

// ---------------------------------------------------------------------------------------------
// The incremental path.

/// A projection batch of one campaign in one write (see `crate::projection::Batch`).
pub(crate) struct PgBatch {
    campaign: String,
    locked: bool,
    lineage: Option<String>,
    cells: HashMap<(Dim, String), i64>,
    members: HashMap<(Dim, String, String), i64>,
}

impl PgBatch {
    pub(crate) fn new(campaign: &str) -> PgBatch {
        PgBatch {
            campaign: campaign.to_string(),
            locked: false,
            lineage: None,
            cells: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// Takes the campaign's projection lock (once per batch, until the write ends).
    fn lock(&mut self, conn: &mut impl GenericClient) -> Result<()> {
        if !self.locked {
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('tally projection ' || current_schema() || ' ' || $1))",
                &[&self.campaign],
            )?;
            self.locked = true;
        }
        Ok(())
    }

    pub(crate) fn claim_for(&mut self, conn: &mut impl GenericClient, owner: &str) -> Result<()> {
        self.lineage = Some(lineage_of(conn, owner)?);
        Ok(())
    }

    fn add(&mut self, contributions: Vec<Contribution>, sign: i64) {
        for Contribution { dim, key, token } in contributions {
            if let Some(t) = token {
                *self.members.entry((dim, key.clone(), t)).or_default() += sign;
            }
            *self.cells.entry((dim, key)).or_default() += sign;
        }
    }

    fn check_claim(
        &self,
        conn: &mut impl GenericClient,
        container: &'static str,
        id: &str,
        docs: &[String],
    ) -> Result<()> {
        let Some(mine) = &self.lineage else {
            return Ok(());
        };
        for doc in docs {
            if lineage_of_doc(conn, doc)?.as_ref() != Some(mine) {
                return Err(StoreError::Claimed {
                    container,
                    id: id.to_string(),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn signature(
        &mut self,
        conn: &mut impl GenericClient,
        doc_id: &str,
        s: &Signature,
        timezone: &str,
    ) -> Result<()> {
        self.lock(conn)?;
        let row = SignatureRow::of(s, timezone);
        let mut copies = sig_copies(conn, &self.campaign, &s.id)?;
        let mine = copies.iter().position(|(d, _)| d == doc_id);
        if let Some(i) = mine
            && copies[i].1 == row
        {
            return Ok(());
        }
        if mine.is_none() {
            let docs: Vec<String> = copies.iter().map(|(d, _)| d.clone()).collect();
            self.check_claim(conn, SIGNATURES, &s.id, &docs)?;
        }
        let before = SignatureRow::merged(copies.iter().map(|(_, r)| r));
        upsert_signature_row(conn, doc_id, &self.campaign, &s.id, &row)?;
        match mine {
            Some(i) => copies[i].1 = row,
            None => copies.push((doc_id.to_string(), row)),
        }
        let after = SignatureRow::merged(copies.iter().map(|(_, r)| r));
        if before == after {
            return Ok(());
        }
        let struck = is_struck(conn, &self.campaign, &s.id)?;
        if let Some(b) = before {
            self.add(signature_cells(&b, struck), -1);
        }
        if let Some(a) = after {
            self.add(signature_cells(&a, struck), 1);
        }
        Ok(())
    }

    pub(crate) fn checkin(
        &mut self,
        conn: &mut impl GenericClient,
        doc_id: &str,
        c: &Checkin,
    ) -> Result<()> {
        self.lock(conn)?;
        let row = CheckinRow::of(c);
        let mut copies = checkin_copies(conn, &self.campaign, &c.id)?;
        let mine = copies.iter().position(|(d, _)| d == doc_id);
        if let Some(i) = mine
            && copies[i].1 == row
        {
            return Ok(());
        }
        if mine.is_none() {
            let docs: Vec<String> = copies.iter().map(|(d, _)| d.clone()).collect();
            self.check_claim(conn, CHECKINS, &c.id, &docs)?;
        }
        let before = CheckinRow::merged(copies.iter().map(|(_, r)| r));
        upsert_checkin_row(conn, doc_id, &self.campaign, c)?;
        match mine {
            Some(i) => copies[i].1 = row,
            None => copies.push((doc_id.to_string(), row)),
        }
        let after = CheckinRow::merged(copies.iter().map(|(_, r)| r));
        if before == after {
            return Ok(());
        }
        if let Some(b) = before {
            self.add(checkin_cells(&b), -1);
        }
        if let Some(a) = after {
            self.add(checkin_cells(&a), 1);
        }
        Ok(())
    }

    pub(crate) fn strike(&mut self, conn: &mut impl GenericClient, s: &Strike) -> Result<()> {
        self.lock(conn)?;
        let was = is_struck(conn, &self.campaign, &s.signature)?;
        upsert_strike_row(conn, &self.campaign, s)?;
        let now = !s.revoked;
        if was != now {
            let copies = sig_copies(conn, &self.campaign, &s.signature)?;
            if let Some(row) = SignatureRow::merged(copies.iter().map(|(_, r)| r)) {
                self.add(signature_cells(&row, was), -1);
                self.add(signature_cells(&row, now), 1);
            }
        }
        Ok(())
    }

    pub(crate) fn sheet(&mut self, conn: &mut impl GenericClient, s: &Sheet) -> Result<()> {
        upsert_sheet_row(conn, &self.campaign, s)
    }

    pub(crate) fn flush(mut self, conn: &mut impl GenericClient) -> Result<()> {
        self.lock(conn)?;
        let campaign = self.campaign.as_str();
        let drift = |dim: Dim, key: &str, what: &str| {
            StoreError::Drift(format!("{campaign}/{}/{key}: {what}", dim.as_str()))
        };
        let mut by_cell: HashMap<(Dim, String), Vec<(String, i64)>> = HashMap::new();
        for ((dim, key, token), d) in self.members {
            if d != 0 {
                by_cell.entry((dim, key)).or_default().push((token, d));
            }
        }
        let mut keys: HashSet<(Dim, String)> = by_cell.keys().cloned().collect();
        keys.extend(
            self.cells
                .iter()
                .filter(|(_, d)| **d != 0)
                .map(|(k, _)| k.clone()),
        );
        let mut token_ids: HashMap<String, i64> = HashMap::new();
        for (dim, key) in keys {
            let dn = self.cells.get(&(dim, key.clone())).copied().unwrap_or(0);
            let row = conn.query_one(
                "INSERT INTO agg_cells (campaign, dim, key, n, uniq) VALUES ($1, $2, $3, $4, 0)
                 ON CONFLICT (campaign, dim, key) DO UPDATE SET n = agg_cells.n + excluded.n
                 RETURNING key_id, n",
                &[&campaign, &dim.as_str(), &key, &dn],
            )?;
            let (key_id, n): (i64, i64) = (row.get(0), row.get(1));
            if n < 0 {
                return Err(drift(dim, &key, "records below zero"));
            }
            let mut du = 0i64;
            for (token, dm) in by_cell.remove(&(dim, key.clone())).unwrap_or_default() {
                let tid = match token_ids.get(&token) {
                    Some(id) => *id,
                    None => {
                        let id = token_id(conn, campaign, &token)?;
                        token_ids.insert(token, id);
                        id
                    }
                };
                let m: i64 = conn
                    .query_one(
                        "INSERT INTO agg_members (key_id, token_id, n) VALUES ($1, $2, $3)
                         ON CONFLICT (key_id, token_id) DO UPDATE SET n = agg_members.n + excluded.n
                         RETURNING n",
                        &[&key_id, &tid, &dm],
                    )?
                    .get(0);
                let m0 = m - dm;
                if m < 0 || m0 < 0 {
                    return Err(drift(dim, &key, "a token's records below zero"));
                }
                if m0 == 0 && m > 0 {
                    du += 1;
                }
                if m == 0 {
                    conn.execute(
                        "DELETE FROM agg_members WHERE key_id = $1 AND token_id = $2",
                        &[&key_id, &tid],
                    )?;
                    if m0 > 0 {
                        du -= 1;
                    }
                }
            }
            if n == 0 {
                conn.execute(
                    "DELETE FROM agg_cells WHERE campaign = $1 AND dim = $2 AND key = $3",
                    &[&campaign, &dim.as_str(), &key],
                )?;
            } else if du != 0 {
                conn.execute(
                    "UPDATE agg_cells SET uniq = uniq + $4 WHERE campaign = $1 AND dim = $2 AND key = $3",
                    &[&campaign, &dim.as_str(), &key, &du],
                )?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reindex.

pub(crate) fn clear_projection_rows(conn: &mut impl GenericClient) -> Result<()> {
    conn.batch_execute(
        "DELETE FROM signatures; DELETE FROM checkins; DELETE FROM strikes; DELETE FROM sheets;",
    )?;
    Ok(())
}

pub(crate) fn project_collection(
    conn: &mut impl GenericClient,
    doc_id: &str,
    campaign: &str,
    collection: &Collection,
    timezone: &str,
) -> Result<(u64, u64)> {
    for s in collection.signatures.values() {
        upsert_signature_row(
            conn,
            doc_id,
            campaign,
            &s.id,
            &SignatureRow::of(s, timezone),
        )?;
    }
    for c in collection.checkins.values() {
        upsert_checkin_row(conn, doc_id, campaign, c)?;
    }
    Ok((
        collection.signatures.len() as u64,
        collection.checkins.len() as u64,
    ))
}

pub(crate) fn project_review(
    conn: &mut impl GenericClient,
    campaign: &str,
    review: &Review,
) -> Result<(u64, u64)> {
    for s in review.strikes.values() {
        upsert_strike_row(conn, campaign, s)?;
    }
    for s in review.sheets.values() {
        upsert_sheet_row(conn, campaign, s)?;
    }
    Ok((review.strikes.len() as u64, review.sheets.len() as u64))
}

/// See `crate::projection`'s `SOURCE`: the aggregates' definition in one SQL expression, in
/// PostgreSQL's dialect (booleans, `bool_or`, byte order and NULLs first for the ranking).
const SOURCE: &str = r#"WITH merged AS (
    SELECT * FROM (
        SELECT campaign, sig_id, event, day, collected_by, city, city_key, fsa, riding, dup,
            ROW_NUMBER() OVER (PARTITION BY campaign, sig_id
                ORDER BY collected_at, collected_by COLLATE "C", event COLLATE "C" NULLS FIRST,
                         city COLLATE "C", fsa COLLATE "C", riding COLLATE "C" NULLS FIRST,
                         consent, dup COLLATE "C") AS rank,
            bool_or(withdrawn) OVER (PARTITION BY campaign, sig_id) AS any_withdrawn
        FROM signatures) AS ranked
    WHERE rank = 1
), counted AS (
    SELECT m.* FROM merged m WHERE NOT m.any_withdrawn AND NOT EXISTS
        (SELECT 1 FROM strikes k WHERE k.campaign = m.campaign AND k.sig_id = m.sig_id AND NOT k.revoked)
), live_checkins AS (
    SELECT * FROM (
        SELECT campaign, event, attendee, walk_in,
            ROW_NUMBER() OVER (PARTITION BY campaign, ci_id
                ORDER BY at, by_id COLLATE "C", event COLLATE "C", attendee COLLATE "C", walk_in) AS rank,
            bool_or(withdrawn) OVER (PARTITION BY campaign, ci_id) AS any_withdrawn
        FROM checkins) AS ranked
    WHERE rank = 1 AND NOT any_withdrawn
), src (campaign, dim, key, token) AS (
    SELECT campaign, 'all', '', dup FROM counted
    UNION ALL SELECT campaign, 'event', event, dup FROM counted WHERE event IS NOT NULL
    UNION ALL SELECT campaign, 'city', city_key, dup FROM counted
    UNION ALL SELECT campaign, 'city_spelling', city, NULL FROM counted
    UNION ALL SELECT campaign, 'fsa', fsa, dup FROM counted
    UNION ALL SELECT campaign, 'riding', riding, dup FROM counted WHERE riding IS NOT NULL
    UNION ALL SELECT campaign, 'day', day, dup FROM counted
    UNION ALL SELECT campaign, 'canvasser', collected_by, dup FROM counted
    UNION ALL SELECT campaign, 'checkin', event, attendee FROM live_checkins
    UNION ALL SELECT campaign, 'checkin_pre', event, attendee FROM live_checkins WHERE NOT walk_in
    UNION ALL SELECT campaign, 'checkin_walk', event, attendee FROM live_checkins WHERE walk_in
    UNION ALL SELECT campaign, 'withdrawn', '', NULL FROM merged WHERE any_withdrawn
    UNION ALL SELECT m.campaign, 'struck', '', NULL FROM merged m WHERE NOT m.any_withdrawn AND EXISTS
        (SELECT 1 FROM strikes k WHERE k.campaign = m.campaign AND k.sig_id = m.sig_id AND NOT k.revoked)
)"#;

pub(crate) fn rebuild_aggregates(conn: &mut impl GenericClient) -> Result<u64> {
    let missing: Vec<(String, String, String)> = conn
        .query(
            "SELECT doc_id, sig_id, city FROM signatures WHERE city_key IS NULL",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (doc_id, sig_id, city) in missing {
        conn.execute(
            "UPDATE signatures SET city_key = $3 WHERE doc_id = $1 AND sig_id = $2",
            &[&doc_id, &sig_id, &city_key(&city)],
        )?;
    }
    conn.batch_execute(&format!(
        "DELETE FROM agg_members; DELETE FROM agg_cells; DELETE FROM agg_tokens;
         DELETE FROM projection_state WHERE name = 'aggregates';
         {SOURCE} INSERT INTO agg_tokens (campaign, token)
             SELECT DISTINCT campaign, token FROM src WHERE token IS NOT NULL;
         {SOURCE} INSERT INTO agg_cells (campaign, dim, key, n, uniq)
             SELECT campaign, dim, key, COUNT(*), COUNT(DISTINCT token)
             FROM src GROUP BY campaign, dim, key;
         {SOURCE} INSERT INTO agg_members (key_id, token_id, n)
             SELECT c.key_id, t.token_id, COUNT(*) FROM src
             JOIN agg_cells c ON c.campaign = src.campaign AND c.dim = src.dim AND c.key = src.key
             JOIN agg_tokens t ON t.campaign = src.campaign AND t.token = src.token
             GROUP BY c.key_id, t.token_id;"
    ))?;
    let cells: i64 = conn
        .query_one("SELECT COUNT(*) FROM agg_cells", &[])?
        .get(0);
    Ok(u64::try_from(cells).unwrap_or(0))
}

pub(crate) fn rebuild_aggregates_if_stale(conn: &mut impl GenericClient) -> Result<bool> {
    let stale: bool = conn
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM projection_state WHERE name = 'aggregates' AND value = 'stale')",
            &[],
        )?
        .get(0);
    if stale {
        rebuild_aggregates(conn)?;
    }
    Ok(stale)
}

// ---------------------------------------------------------------------------------------------
// Queries.

fn paper(conn: &mut impl GenericClient, campaign: &str, t: &mut Totals) -> Result<()> {
    for r in conn.query(
        "SELECT status, COUNT(*), COALESCE(SUM(count), 0)::BIGINT FROM sheets
         WHERE campaign = $1 GROUP BY status",
        &[&campaign],
    )? {
        let status: String = r.get(0);
        let sheets = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
        let signatures = u64::try_from(r.get::<_, i64>(2).max(0)).unwrap_or(0);
        t.paper.sheets += sheets;
        t.paper.signatures += signatures;
        t.paper
            .by_status
            .insert(status, PaperCell { sheets, signatures });
    }
    Ok(())
}

pub(crate) fn totals(conn: &mut impl GenericClient, campaign: &str) -> Result<Totals> {
    let cells: Vec<(String, String, u64, u64)> = conn
        .query(
            "SELECT dim, key, n, uniq FROM agg_cells WHERE campaign = $1",
            &[&campaign],
        )?
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            )
        })
        .collect();
    let mut t = totals_of_cells(
        cells
            .into_iter()
            .filter_map(|(d, k, n, u)| Some((Dim::parse(&d)?, k, n, u))),
    );
    paper(conn, campaign, &mut t)?;
    Ok(t)
}

pub(crate) fn query_totals(
    conn: &mut impl GenericClient,
    campaign: &str,
    filter: &Filter,
) -> Result<Totals> {
    if filter.is_empty() {
        totals(conn, campaign)
    } else {
        scan(conn, campaign, filter)
    }
}

pub(crate) fn has_signature(
    conn: &mut impl GenericClient,
    campaign: &str,
    sig_id: &str,
) -> Result<bool> {
    Ok(conn
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM signatures WHERE campaign = $1 AND sig_id = $2)",
            &[&campaign, &sig_id],
        )?
        .get(0))
}

pub(crate) fn signature_rows(conn: &mut impl GenericClient) -> Result<u64> {
    let n: i64 = conn
        .query_one("SELECT COUNT(*) FROM signatures", &[])?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(crate) fn scan(
    conn: &mut impl GenericClient,
    campaign: &str,
    filter: &Filter,
) -> Result<Totals> {
    let campaign_owned = campaign.to_string();
    let bind = |args: &[FilterArg]| -> Vec<Box<dyn ToSql + Sync>> {
        args.iter()
            .map(|a| -> Box<dyn ToSql + Sync> {
                match a {
                    FilterArg::Text(t) => Box::new(t.clone()),
                    FilterArg::Int(i) => Box::new(*i),
                }
            })
            .collect()
    };
    let (where_sig, sig_args) = signature_conditions(filter, |i| format!("${i}"));
    let sig_args = bind(&sig_args);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&campaign_owned];
    params.extend(sig_args.iter().map(|b| b.as_ref()));
    let struck: HashSet<String> = conn
        .query(
            "SELECT sig_id FROM strikes WHERE campaign = $1 AND NOT revoked",
            &[&campaign],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sql = format!(
        "SELECT o.event, o.collected_at, o.day, o.collected_by, o.city, o.fsa, o.riding, o.consent, o.dup, o.withdrawn, o.sig_id
         FROM signatures o WHERE o.campaign = $1 AND o.sig_id IN (SELECT s.sig_id FROM signatures s WHERE s.campaign = $1{where_sig})"
    );
    let mut copies: HashMap<String, Vec<SignatureRow>> = HashMap::new();
    for r in conn.query(&sql, &params)? {
        copies.entry(r.get(10)).or_default().push(sig_row(&r));
    }
    let checkins = match checkin_conditions(filter, |i| format!("${i}")) {
        None => None,
        Some((where_ci, ci_args)) => {
            let ci_args = bind(&ci_args);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&campaign_owned];
            params.extend(ci_args.iter().map(|b| b.as_ref()));
            let sql = format!(
                "SELECT o.event, o.attendee, o.at, o.by_id, o.walk_in, o.withdrawn, o.ci_id FROM checkins o
                 WHERE o.campaign = $1 AND o.ci_id IN (SELECT ci_id FROM checkins WHERE campaign = $1{where_ci})"
            );
            let mut copies: HashMap<String, Vec<CheckinRow>> = HashMap::new();
            for r in conn.query(&sql, &params)? {
                copies.entry(r.get(6)).or_default().push(checkin_row(&r));
            }
            Some(copies)
        }
    };
    let scanned_checkins = checkins.is_some();
    let mut t = scanned_totals(filter, &copies, &struck, checkins.as_ref());
    if !scanned_checkins {
        // City and FSA do not narrow check-ins: theirs are the whole campaign's, in the cells.
        let cells: Vec<(String, String, u64, u64)> = conn
            .query(
                "SELECT dim, key, n, uniq FROM agg_cells
                 WHERE campaign = $1 AND dim IN ('checkin', 'checkin_pre', 'checkin_walk')",
                &[&campaign],
            )?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                    u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                )
            })
            .collect();
        t.checkins = totals_of_cells(
            cells
                .into_iter()
                .filter_map(|(d, k, n, u)| Some((Dim::parse(&d)?, k, n, u))),
        )
        .checkins;
    }
    paper(conn, campaign, &mut t)?;
    Ok(t)
}

/// Every projection table as sorted text lines (each column as text, `None` for NULL).
pub(crate) fn dump(conn: &mut impl GenericClient) -> Result<BTreeMap<&'static str, Vec<String>>> {
    let queries: [(&'static str, &str); 6] = [
        (
            "signatures",
            "SELECT doc_id, sig_id, campaign, event, collected_at::text, day, collected_by, city, city_key, fsa, riding, consent::text, dup, withdrawn::text FROM signatures",
        ),
        (
            "checkins",
            "SELECT doc_id, ci_id, campaign, event, attendee, at::text, by_id, walk_in::text, withdrawn::text FROM checkins",
        ),
        (
            "strikes",
            "SELECT campaign, sig_id, reason, by_id, at::text, revoked::text FROM strikes",
        ),
        (
            "sheets",
            "SELECT campaign, serial, count::text, riding, status FROM sheets",
        ),
        (
            "agg_cells",
            "SELECT campaign, dim, key, n::text, uniq::text FROM agg_cells",
        ),
        (
            "agg_members",
            "SELECT c.campaign, c.dim, c.key, t.token, m.n::text FROM agg_members m
             JOIN agg_cells c ON c.key_id = m.key_id JOIN agg_tokens t ON t.token_id = m.token_id",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in queries {
        let mut lines: Vec<String> = conn
            .query(sql, &[])?
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| format!("{:?}", r.get::<_, Option<String>>(i)))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        lines.sort();
        out.insert(name, lines);
    }
    Ok(out)
}
