//! The totals projection's tables: rows of signatures, check-ins, strikes and paper sheets, and
//! aggregate cells beside them, kept current by the projector's writes, each of which counts a
//! batch of queued acknowledged changes (`crate::queue`) and takes them out of the queue
//! ([`Batch`], from [`WriteTx::projection_batch`]). The cells a record counts in
//! are `tally_core::cells`' pure mapping, which equals the reference `tally_core::totals`.
//!
//! Two ways to answer totals: [`ReadTx::totals`] reads the aggregate cells (a few hundred rows
//! whatever the number of signatures), [`ReadTx::scan_totals`] scans the rows matching a
//! [`Filter`] (event, time, city, FSA). Both must equal the reference; the tests below and the
//! end-to-end tests hold them to it. [`WriteTx::rebuild_aggregates`] recomputes the cells from
//! the rows by one SQL pass (an independent computation); `tally reindex` rewrites the rows from
//! the documents ([`WriteTx::clear_projection_rows`], [`WriteTx::project_collection`],
//! [`WriteTx::project_review`]) and then rebuilds the cells.
//!
//! No personal field is ever written here: only what totals need, and the duplicate and attendee
//! tokens (HMACs under a key the server never has).

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};
use tally_core::cells::{
    CheckinRow, Contribution, Dim, SignatureRow, checkin_cells, signature_cells, totals_of_cells,
};
use tally_core::city::{Spellings, city_key, labelled};
use tally_core::collection::{Checkin, Collection};
use tally_core::review::{Review, Sheet, Strike};
use tally_core::totals::{Cell, CellAcc, CheckinCell, PaperCell, Totals, cells};

use crate::{ReadTx, Result, StoreError, WriteTx};

/// What a campaign's totals can be narrowed to. Signatures match on all the given fields
/// (`from` inclusive, `to` exclusive, on `collected_at`); check-ins on `event` and the time range
/// (on `at`) only, as they have no city, FSA or riding (and a canvasser filter narrows the
/// signatures collected, not who checked people in); paper sheets are never filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event id.
    pub event: Option<String>,
    /// Earliest time, ms since the epoch, inclusive.
    pub from: Option<i64>,
    /// Latest time, ms since the epoch, exclusive.
    pub to: Option<i64>,
    /// The signer's city: matches every spelling of it (the same
    /// `tally_core::city::city_key`: case, spacing and accents folded).
    pub city: Option<String>,
    /// The signer's FSA, upper case.
    pub fsa: Option<String>,
    /// The signer's riding.
    pub riding: Option<String>,
    /// The canvasser: the collecting device's id (`collected_by`).
    pub canvasser: Option<String>,
}

impl Filter {
    /// No filter at all: the whole campaign.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// What `tally reindex` rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    /// Documents read.
    pub documents: u64,
    /// Signature rows written.
    pub signatures: u64,
    /// Check-in rows written.
    pub checkins: u64,
    /// Strike rows written.
    pub strikes: u64,
    /// Sheet rows written.
    pub sheets: u64,
    /// Aggregate cells computed.
    pub cells: u64,
}

// ---------------------------------------------------------------------------------------------
// Row statements.

fn is_struck(conn: &Connection, campaign: &str, sig_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM strikes WHERE campaign = ?1 AND sig_id = ?2 AND revoked = 0)",
        )?
        .query_row(params![campaign, sig_id], |r| r.get(0))?)
}

fn lineage_of(conn: &Connection, device_id: &str) -> Result<String> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE((SELECT NULLIF(lineage, '') FROM devices WHERE device_id = ?1), ?1)",
        )?
        .query_row([device_id], |r| r.get(0))?)
}

/// Every row of one signature id in a campaign (its copies in a phone's collections), with
/// their documents.
fn sig_copies(
    conn: &Connection,
    campaign: &str,
    sig_id: &str,
) -> Result<Vec<(String, SignatureRow)>> {
    Ok(conn
        .prepare_cached(
            "SELECT event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn, doc_id
             FROM signatures WHERE campaign = ?1 AND sig_id = ?2",
        )?
        .query_map(params![campaign, sig_id], |r| Ok((r.get(10)?, sig_row(r)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

fn upsert_signature_row(
    conn: &Connection,
    doc_id: &str,
    campaign: &str,
    sig_id: &str,
    row: &SignatureRow,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO signatures (doc_id, sig_id, campaign, event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn, city_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (doc_id, sig_id) DO UPDATE SET event = excluded.event, day = excluded.day, city = excluded.city,
           city_key = excluded.city_key, fsa = excluded.fsa, riding = excluded.riding, consent = excluded.consent, dup = excluded.dup, withdrawn = excluded.withdrawn",
    )?
    .execute(params![
        doc_id,
        sig_id,
        campaign,
        row.event,
        row.collected_at,
        row.day,
        row.collected_by,
        row.city,
        row.fsa,
        row.riding,
        row.consent,
        row.dup,
        row.withdrawn,
        city_key(&row.city)
    ])?;
    Ok(())
}

/// A `signatures` row, selected as `event, collected_at, day, collected_by, city, fsa, riding,
/// consent, dup, withdrawn`.
fn sig_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SignatureRow> {
    Ok(SignatureRow {
        event: r.get(0)?,
        collected_at: r.get(1)?,
        day: r.get(2)?,
        collected_by: r.get(3)?,
        city: r.get(4)?,
        fsa: r.get(5)?,
        riding: r.get(6)?,
        consent: r.get(7)?,
        dup: r.get(8)?,
        withdrawn: r.get(9)?,
    })
}

/// A `checkins` row, selected as `event, attendee, at, by_id, walk_in, withdrawn`.
fn checkin_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckinRow> {
    Ok(CheckinRow {
        event: r.get(0)?,
        attendee: r.get(1)?,
        at: r.get(2)?,
        by: r.get(3)?,
        walk_in: r.get(4)?,
        withdrawn: r.get(5)?,
    })
}

/// Every row of one check-in id in a campaign, with their documents.
fn checkin_copies(
    conn: &Connection,
    campaign: &str,
    ci_id: &str,
) -> Result<Vec<(String, CheckinRow)>> {
    Ok(conn
        .prepare_cached(
            "SELECT event, attendee, at, by_id, walk_in, withdrawn, doc_id
             FROM checkins WHERE campaign = ?1 AND ci_id = ?2",
        )?
        .query_map(params![campaign, ci_id], |r| {
            Ok((r.get(6)?, checkin_row(r)?))
        })?
        .collect::<rusqlite::Result<_>>()?)
}

fn upsert_checkin_row(conn: &Connection, doc_id: &str, campaign: &str, c: &Checkin) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO checkins (doc_id, ci_id, campaign, event, attendee, at, by_id, walk_in, withdrawn)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (doc_id, ci_id) DO UPDATE SET attendee = excluded.attendee, walk_in = excluded.walk_in, withdrawn = excluded.withdrawn",
    )?
    .execute(params![doc_id, c.id, campaign, c.event, c.attendee, c.at, c.by, c.walk_in, c.withdrawn])?;
    Ok(())
}

fn upsert_strike_row(conn: &Connection, campaign: &str, s: &Strike) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO strikes (campaign, sig_id, reason, by_id, at, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (campaign, sig_id) DO UPDATE SET reason = excluded.reason, by_id = excluded.by_id, at = excluded.at, revoked = excluded.revoked",
    )?
    .execute(params![campaign, s.signature, s.reason.as_str(), s.by, s.at, s.revoked])?;
    Ok(())
}

fn upsert_sheet_row(conn: &Connection, campaign: &str, s: &Sheet) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sheets (campaign, serial, count, riding, status) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (campaign, serial) DO UPDATE SET count = excluded.count, riding = excluded.riding, status = excluded.status",
    )?
    .execute(params![campaign, s.serial, s.count, s.riding, s.status.as_str()])?;
    Ok(())
}

fn token_id(conn: &Connection, campaign: &str, token: &str) -> Result<i64> {
    let found = conn
        .prepare_cached("SELECT token_id FROM agg_tokens WHERE campaign = ?1 AND token = ?2")?
        .query_row(params![campaign, token], |r| r.get(0))
        .optional()?;
    match found {
        Some(id) => Ok(id),
        None => {
            conn.prepare_cached("INSERT INTO agg_tokens (campaign, token) VALUES (?1, ?2)")?
                .execute(params![campaign, token])?;
            Ok(conn.last_insert_rowid())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The incremental path.

/// The aggregate changes of one campaign's records, gathered while their rows are written and
/// netted before they touch the aggregate tables: each cell is written once per batch, and a
/// record whose correction leaves a cell unchanged costs that cell nothing. The projector makes
/// one batch per campaign of each of its writes (many acknowledged changes); nothing is written
/// to the cells before [`Batch::flush`], and everything (rows and cells) commits or rolls back
/// with the write it belongs to.
pub struct Batch<'a> {
    conn: &'a Connection,
    campaign: String,
    net: Netted,
}

impl<'a> WriteTx<'a> {
    /// An empty projection batch for `campaign`, in this write.
    pub fn projection_batch(&self, campaign: &str) -> Batch<'a> {
        Batch {
            conn: self.tx,
            campaign: campaign.to_string(),
            net: Netted::default(),
        }
    }

    /// Deletes every projection row (signatures, check-ins, strikes, sheets), for a reindex:
    /// the caller writes them again from the documents, then [`WriteTx::rebuild_aggregates`].
    pub fn clear_projection_rows(&self) -> Result<()> {
        self.tx.execute_batch(
            "DELETE FROM signatures; DELETE FROM checkins; DELETE FROM strikes; DELETE FROM sheets;
             DELETE FROM record_claims; DELETE FROM projection_queue;",
        )?;
        Ok(())
    }

    /// Writes the rows of every record of collection `doc_id` (no aggregates: rebuild them
    /// after); returns (signatures, check-ins) written.
    pub fn project_collection(
        &self,
        doc_id: &str,
        campaign: &str,
        collection: &Collection,
        timezone: &str,
    ) -> Result<(u64, u64)> {
        for s in collection.signatures.values() {
            upsert_signature_row(
                self.tx,
                doc_id,
                campaign,
                &s.id,
                &SignatureRow::of(s, timezone),
            )?;
        }
        for c in collection.checkins.values() {
            upsert_checkin_row(self.tx, doc_id, campaign, c)?;
        }
        Ok((
            collection.signatures.len() as u64,
            collection.checkins.len() as u64,
        ))
    }

    /// Writes the rows of every strike and sheet of a campaign's review (no aggregates);
    /// returns (strikes, sheets) written.
    pub fn project_review(&self, campaign: &str, review: &Review) -> Result<(u64, u64)> {
        for s in review.strikes.values() {
            upsert_strike_row(self.tx, campaign, s)?;
        }
        for s in review.sheets.values() {
            upsert_sheet_row(self.tx, campaign, s)?;
        }
        Ok((review.strikes.len() as u64, review.sheets.len() as u64))
    }

    /// Recomputes every aggregate table from the projection rows, in one SQL pass; clears the
    /// "stale" mark a schema upgrade leaves. Rows without a `city_key` (written before schema 6)
    /// get theirs first: the folding is Unicode's, which SQLite does not have. Returns the
    /// number of cells.
    pub fn rebuild_aggregates(&self) -> Result<u64> {
        let conn: &Connection = self.tx;
        let missing: Vec<(i64, String)> = conn
            .prepare("SELECT rowid, city FROM signatures WHERE city_key IS NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (rowid, city) in missing {
            conn.prepare_cached("UPDATE signatures SET city_key = ?2 WHERE rowid = ?1")?
                .execute(params![rowid, city_key(&city)])?;
        }
        conn.execute_batch(
            "DELETE FROM agg_members; DELETE FROM agg_cells; DELETE FROM agg_tokens;
             DELETE FROM projection_state WHERE name = 'aggregates';",
        )?;
        conn.execute_batch(&format!(
            "{SOURCE} INSERT INTO agg_tokens (campaign, token)
                 SELECT DISTINCT campaign, token FROM src WHERE token IS NOT NULL;
             {SOURCE} INSERT INTO agg_cells (campaign, dim, key, key_id, n, uniq)
                 SELECT campaign, dim, key, ROW_NUMBER() OVER (ORDER BY campaign, dim, key),
                        COUNT(*), COUNT(DISTINCT token)
                 FROM src GROUP BY campaign, dim, key;
             {SOURCE} INSERT INTO agg_members (key_id, token_id, n)
                 SELECT c.key_id, t.token_id, COUNT(*) FROM src
                 JOIN agg_cells c ON c.campaign = src.campaign AND c.dim = src.dim AND c.key = src.key
                 JOIN agg_tokens t ON t.campaign = src.campaign AND t.token = src.token
                 GROUP BY c.key_id, t.token_id;"
        ))?;
        rebuild_facts(conn)?;
        let cells: i64 = conn.query_row("SELECT COUNT(*) FROM agg_cells", [], |r| r.get(0))?;
        Ok(u64::try_from(cells).unwrap_or(0))
    }

    /// Rebuilds the aggregates if a schema upgrade left them stale; returns whether it did.
    pub fn rebuild_aggregates_if_stale(&self) -> Result<bool> {
        let stale: bool = self.tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM projection_state WHERE name = 'aggregates' AND value = 'stale')",
            [],
            |r| r.get(0),
        )?;
        if stale {
            self.rebuild_aggregates()?;
        }
        Ok(stale)
    }
}

impl Batch<'_> {
    /// Projects one signature of collection `doc_id`: writes its row now, its aggregates at
    /// [`Batch::flush`]. The aggregates count the record its copies make (docs/documents.md,
    /// "Counting once"): what that record adds before the row is written is taken away, what it
    /// adds after is added.
    pub fn signature(&mut self, doc_id: &str, id: &str, row: &SignatureRow) -> Result<()> {
        let conn = self.conn;
        let mut copies = sig_copies(conn, &self.campaign, id)?;
        let Some((before, after)) = write_copy(&mut copies, doc_id, row) else {
            return Ok(());
        };
        upsert_signature_row(conn, doc_id, &self.campaign, id, row)?;
        if before != after {
            let struck = is_struck(conn, &self.campaign, id)?;
            self.net.signature(id, before, after, struck);
        }
        Ok(())
    }

    /// Projects one check-in of collection `doc_id`, counted once per id like signatures.
    pub fn checkin(&mut self, doc_id: &str, c: &Checkin) -> Result<()> {
        let conn = self.conn;
        let mut copies = checkin_copies(conn, &self.campaign, &c.id)?;
        let Some((before, after)) = write_copy(&mut copies, doc_id, &CheckinRow::of(c)) else {
            return Ok(());
        };
        upsert_checkin_row(conn, doc_id, &self.campaign, c)?;
        if before != after {
            self.net.checkin(before, after);
        }
        Ok(())
    }

    /// Projects a strike (or its revocation): the record its signature's copies make moves
    /// between counted and struck.
    pub fn strike(&mut self, s: &Strike) -> Result<()> {
        let conn = self.conn;
        let was = is_struck(conn, &self.campaign, &s.signature)?;
        upsert_strike_row(conn, &self.campaign, s)?;
        let now = !s.revoked;
        if was != now {
            let copies = sig_copies(conn, &self.campaign, &s.signature)?;
            if let Some(row) = SignatureRow::merged(copies.iter().map(|(_, r)| r)) {
                self.net.strike(&s.signature, row, was, now);
            }
        }
        Ok(())
    }

    /// Projects a paper sheet (no aggregates: sheets are summed when read).
    pub fn sheet(&mut self, s: &Sheet) -> Result<()> {
        upsert_sheet_row(self.conn, &self.campaign, s)
    }

    /// Writes the netted changes to the aggregate tables. An aggregate that would go below zero
    /// means the tables no longer match the rows: [`StoreError::Drift`], and the write rolls
    /// back.
    pub fn flush(self) -> Result<()> {
        let conn = self.conn;
        let campaign = self.campaign.as_str();
        let drift = |dim: Dim, key: &str, what: &str| {
            StoreError::Drift(format!("{campaign}/{}/{key}: {what}", dim.as_str()))
        };
        let mut token_ids: HashMap<String, i64> = HashMap::new();
        for CellChange {
            dim,
            key,
            n: dn,
            tokens,
        } in self.net.changed_cells()
        {
            let (key_id, n): (i64, i64) = conn
                .prepare_cached(
                    "INSERT INTO agg_cells (campaign, dim, key, key_id, n, uniq)
                     VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(key_id), 0) + 1 FROM agg_cells), ?4, 0)
                     ON CONFLICT (campaign, dim, key) DO UPDATE SET n = n + excluded.n
                     RETURNING key_id, n",
                )?
                .query_row(params![campaign, dim.as_str(), key, dn], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            if n < 0 {
                return Err(drift(dim, &key, "records below zero"));
            }
            let mut du = 0i64;
            for (token, dm) in tokens {
                let tid = match token_ids.get(&token) {
                    Some(id) => *id,
                    None => {
                        let id = token_id(conn, campaign, &token)?;
                        token_ids.insert(token, id);
                        id
                    }
                };
                let m: i64 = conn
                    .prepare_cached(
                        "INSERT INTO agg_members (key_id, token_id, n) VALUES (?1, ?2, ?3)
                         ON CONFLICT (key_id, token_id) DO UPDATE SET n = n + excluded.n
                         RETURNING n",
                    )?
                    .query_row(params![key_id, tid, dm], |r| r.get(0))?;
                let (d, gone) = member_change(m, dm)
                    .ok_or_else(|| drift(dim, &key, "a token's records below zero"))?;
                du += d;
                if gone {
                    conn.prepare_cached(
                        "DELETE FROM agg_members WHERE key_id = ?1 AND token_id = ?2",
                    )?
                    .execute(params![key_id, tid])?;
                }
            }
            if n == 0 {
                conn.prepare_cached(
                    "DELETE FROM agg_cells WHERE campaign = ?1 AND dim = ?2 AND key = ?3",
                )?
                .execute(params![campaign, dim.as_str(), key])?;
            } else if du != 0 {
                conn.prepare_cached(
                    "UPDATE agg_cells SET uniq = uniq + ?4 WHERE campaign = ?1 AND dim = ?2 AND key = ?3",
                )?
                .execute(params![campaign, dim.as_str(), key, du])?;
            }
        }
        let mut key_ids = HashMap::new();
        for (sig_id, record) in self.net.facts {
            write_fact(
                conn,
                campaign,
                &sig_id,
                record.as_ref(),
                &mut key_ids,
                &mut token_ids,
            )?;
        }
        Ok(())
    }
}

/// The id of key `key` of dimension `dim` in `agg_keys`, interned if new.
fn key_id(
    conn: &Connection,
    campaign: &str,
    dim: Dim,
    key: String,
    cache: &mut HashMap<(Dim, String), i64>,
) -> Result<i64> {
    if let Some(id) = cache.get(&(dim, key.clone())) {
        return Ok(*id);
    }
    let found = conn
        .prepare_cached(
            "SELECT key_id FROM agg_keys WHERE campaign = ?1 AND dim = ?2 AND key = ?3",
        )?
        .query_row(params![campaign, dim.as_str(), key], |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            conn.prepare_cached("INSERT INTO agg_keys (campaign, dim, key) VALUES (?1, ?2, ?3)")?
                .execute(params![campaign, dim.as_str(), key])?;
            conn.last_insert_rowid()
        }
    };
    cache.insert((dim, key), id);
    Ok(id)
}

/// Writes the fact of record `sig_id` (its merged row and whether it is struck), or deletes it
/// for `None`.
fn write_fact(
    conn: &Connection,
    campaign: &str,
    sig_id: &str,
    record: Option<&(SignatureRow, bool)>,
    key_ids: &mut HashMap<(Dim, String), i64>,
    token_ids: &mut HashMap<String, i64>,
) -> Result<()> {
    let Some((row, struck)) = record else {
        conn.prepare_cached("DELETE FROM agg_records WHERE campaign = ?1 AND sig_id = ?2")?
            .execute(params![campaign, sig_id])?;
        return Ok(());
    };
    let fact = Fact::of(
        row,
        fact_status(row, *struck),
        fact_keys(row),
        |dim, k| key_id(conn, campaign, dim, k, key_ids),
        |dup| match token_ids.get(dup) {
            Some(id) => Ok(*id),
            None => {
                let id = token_id(conn, campaign, dup)?;
                token_ids.insert(dup.to_string(), id);
                Ok(id)
            }
        },
    )?;
    let [event, city, fsa, riding, canvasser] = fact.columns();
    conn.prepare_cached(
        "INSERT INTO agg_records (campaign, sig_id, at, event, city, fsa, riding, canvasser, fact)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (campaign, sig_id) DO UPDATE SET at = excluded.at, event = excluded.event,
           city = excluded.city, fsa = excluded.fsa, riding = excluded.riding,
           canvasser = excluded.canvasser, fact = excluded.fact",
    )?
    .execute(params![
        campaign,
        sig_id,
        fact.at,
        event,
        city,
        fsa,
        riding,
        canvasser,
        fact.encode()
    ])?;
    Ok(())
}

/// Rebuilds `agg_records` (and `agg_keys`) from the signature rows, page by page: each
/// record's copies merged, as the incremental path does.
fn rebuild_facts(conn: &Connection) -> Result<()> {
    conn.execute_batch("DELETE FROM agg_records; DELETE FROM agg_keys;")?;
    let struck: HashSet<(String, String)> = conn
        .prepare("SELECT campaign, sig_id FROM strikes WHERE revoked = 0")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    const PAGE: usize = 20_000;
    let mut after = (String::new(), String::new());
    let (mut key_ids, mut token_ids) = (HashMap::new(), HashMap::new());
    loop {
        let mut page: Vec<(String, String, SignatureRow)> = conn
            .prepare_cached(
                "SELECT event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn, campaign, sig_id
                 FROM signatures WHERE (campaign, sig_id) > (?1, ?2) ORDER BY campaign, sig_id LIMIT ?3",
            )?
            .query_map(params![after.0, after.1, PAGE as i64], |r| {
                Ok((r.get(10)?, r.get(11)?, sig_row(r)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let full = page.len() == PAGE;
        if full {
            complete_groups(&mut page)?;
        }
        if let Some((c, id, _)) = page.last() {
            after = (c.clone(), id.clone());
        }
        for (campaign, sig_id, row, is_struck) in merged_records(&page, &struck) {
            write_fact(
                conn,
                campaign,
                sig_id,
                Some(&(row, is_struck)),
                &mut key_ids,
                &mut token_ids,
            )?;
        }
        if !full {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queries.

fn paper(conn: &Connection, campaign: &str, t: &mut Totals) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, COUNT(*), SUM(count) FROM sheets WHERE campaign = ?1 GROUP BY status",
    )?;
    for row in stmt.query_map([campaign], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)?.max(0) as u64,
        ))
    })? {
        let (status, sheets, signatures) = row?;
        t.paper.sheets += sheets;
        t.paper.signatures += signatures;
        t.paper
            .by_status
            .insert(status, PaperCell { sheets, signatures });
    }
    Ok(())
}

impl ReadTx<'_> {
    /// A campaign's totals, read from the aggregate cells.
    pub fn totals(&self, campaign: &str) -> Result<Totals> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT dim, key, n, uniq FROM agg_cells WHERE campaign = ?1")?;
        let cells = stmt
            .query_map([campaign], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut t = totals_of_cells(
            cells
                .into_iter()
                .filter_map(|(d, k, n, u)| Some((Dim::parse(&d)?, k, n, u))),
        );
        paper(self.conn, campaign, &mut t)?;
        Ok(t)
    }

    /// A campaign's totals narrowed by `filter`: from the aggregate cells when the filter is
    /// empty, otherwise from the facts of the records one filter's index range selects (the
    /// other filters checked on each fact; see "Filtered totals from the record facts").
    pub fn query_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        if filter.is_empty() {
            self.totals(campaign)
        } else {
            facts_totals(self.conn, campaign, filter)
        }
    }

    /// Whether campaign `campaign` has a signature `sig_id` (in any collection).
    pub fn has_signature(&self, campaign: &str, sig_id: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM signatures WHERE campaign = ?1 AND sig_id = ?2)
                 OR EXISTS (SELECT 1 FROM record_claims
                            WHERE campaign = ?1 AND container = 'signatures' AND id = ?2)",
            [campaign, sig_id],
            |r| r.get(0),
        )?)
    }

    /// How many signature rows (copies) the projection holds, all campaigns together.
    pub fn signature_rows(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM signatures", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The lineage of a device: the first device of its phone's chain of devices, its own id if
    /// it is unknown or has none.
    pub fn lineage_of(&self, device_id: &str) -> Result<String> {
        lineage_of(self.conn, device_id)
    }

    /// A campaign's totals computed by scanning the projection rows that match `filter` (no
    /// aggregates). Used for filtered queries, and as the baseline the aggregates are measured
    /// against.
    pub fn scan_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        scan(self.conn, campaign, filter)
    }

    /// Every projection table as sorted text lines, with aggregate members named by their cell
    /// and token instead of row ids: what `tally reindex` must reproduce exactly. (The token
    /// interning table itself is left out: it may keep tokens no record uses any more.)
    pub fn projection_dump(&self) -> Result<BTreeMap<&'static str, Vec<String>>> {
        dump(self.conn)
    }
}

fn scan(conn: &Connection, campaign: &str, filter: &Filter) -> Result<Totals> {
    let to_sql = |args: Vec<FilterArg>| -> Vec<rusqlite::types::Value> {
        args.into_iter()
            .map(|a| match a {
                FilterArg::Text(t) => t.into(),
                FilterArg::Int(i) => i.into(),
            })
            .collect()
    };
    let (where_sig, sig_args) = signature_conditions(filter, |i| format!("?{i}"));
    let mut sig_args = to_sql(sig_args);
    sig_args.insert(0, campaign.to_string().into());
    // Strikes are few: one lookup here instead of one per row.
    let struck: HashSet<String> = conn
        .prepare_cached("SELECT sig_id FROM strikes WHERE campaign = ?1 AND revoked = 0")?
        .query_map([campaign], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // Each record once (docs/documents.md, "Counting once"): every copy of the ids that have
    // a copy matching the filter; `scanned_totals` merges them and filters the merged record.
    let sql = format!(
        "SELECT o.event, o.collected_at, o.day, o.collected_by, o.city, o.fsa, o.riding, o.consent, o.dup, o.withdrawn, o.sig_id
         FROM signatures o WHERE o.campaign = ?1 AND o.sig_id IN (SELECT s.sig_id FROM signatures s WHERE s.campaign = ?1{where_sig})"
    );
    let mut copies: HashMap<String, Vec<SignatureRow>> = HashMap::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(sig_args))?;
    while let Some(r) = rows.next()? {
        copies.entry(r.get(10)?).or_default().push(sig_row(r)?);
    }
    let checkins = checkin_copies_matching(conn, campaign, filter)?;
    let mut t = scanned_totals(filter, &copies, &struck, checkins.as_ref());
    if checkins.is_none() {
        t.checkins = campaign_checkins(conn, campaign)?;
    }
    paper(conn, campaign, &mut t)?;
    Ok(t)
}

/// The copies of the check-ins `filter` narrows to, by id (`None` when it does not narrow
/// check-ins: then they are the campaign's, [`campaign_checkins`]).
#[allow(clippy::type_complexity)]
fn checkin_copies_matching(
    conn: &Connection,
    campaign: &str,
    filter: &Filter,
) -> Result<Option<HashMap<String, Vec<CheckinRow>>>> {
    let Some((where_ci, ci_args)) = checkin_conditions(filter, |i| format!("?{i}")) else {
        return Ok(None);
    };
    let mut args: Vec<rusqlite::types::Value> = vec![campaign.to_string().into()];
    args.extend(ci_args.into_iter().map(|a| match a {
        FilterArg::Text(t) => rusqlite::types::Value::from(t),
        FilterArg::Int(i) => i.into(),
    }));
    let sql = format!(
        "SELECT o.event, o.attendee, o.at, o.by_id, o.walk_in, o.withdrawn, o.ci_id FROM checkins o
         WHERE o.campaign = ?1 AND o.ci_id IN (SELECT ci_id FROM checkins WHERE campaign = ?1{where_ci})"
    );
    let mut copies: HashMap<String, Vec<CheckinRow>> = HashMap::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        copies.entry(r.get(6)?).or_default().push(checkin_row(r)?);
    }
    Ok(Some(copies))
}

/// A campaign's check-ins, from the aggregate cells.
fn campaign_checkins(conn: &Connection, campaign: &str) -> Result<BTreeMap<String, CheckinCell>> {
    let mut stmt = conn.prepare_cached(
        "SELECT dim, key, n, uniq FROM agg_cells
         WHERE campaign = ?1 AND dim IN ('checkin', 'checkin_pre', 'checkin_walk')",
    )?;
    let cells = stmt
        .query_map([campaign], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(totals_of_cells(
        cells
            .into_iter()
            .filter_map(|(d, k, n, u)| Some((Dim::parse(&d)?, k, n, u))),
    )
    .checkins)
}

/// The key ids of a campaign, named.
fn campaign_keys(conn: &Connection, campaign: &str) -> Result<HashMap<u32, (Dim, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT key_id, dim, key FROM agg_keys WHERE campaign = ?1")?;
    let rows = stmt
        .query_map([campaign], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut keys = HashMap::new();
    for (id, dim, key) in rows {
        if let Some(dim) = Dim::parse(&dim) {
            keys.insert(fact_id(id)?, (dim, key));
        }
    }
    Ok(keys)
}

/// Filtered totals from the record facts (see "Filtered totals from the record facts").
fn facts_totals(conn: &Connection, campaign: &str, filter: &Filter) -> Result<Totals> {
    let mut ff = FactFilter {
        from: filter.from,
        to: filter.to,
        ..FactFilter::default()
    };
    for (slot, named) in ff.keys.iter_mut().zip(filter_keys(filter)) {
        if let Some((dim, key)) = named {
            let id: Option<i64> = conn
                .prepare_cached(
                    "SELECT key_id FROM agg_keys WHERE campaign = ?1 AND dim = ?2 AND key = ?3",
                )?
                .query_row(params![campaign, dim.as_str(), key], |r| r.get(0))
                .optional()?;
            *slot = Some(id.unwrap_or(NO_SUCH_KEY));
        }
    }
    let mut facts = Vec::new();
    {
        let (sql, args): (String, Vec<i64>) = match ff.range() {
            FactRange::Key(column, id) => (
                format!("SELECT fact FROM agg_records WHERE campaign = ?1 AND {column} = ?2"),
                vec![id],
            ),
            FactRange::Time(from, to) => (
                "SELECT fact FROM agg_records WHERE campaign = ?1 AND at >= ?2 AND at < ?3"
                    .to_string(),
                vec![from, to],
            ),
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut values: Vec<rusqlite::types::Value> = vec![campaign.to_string().into()];
        values.extend(args.into_iter().map(rusqlite::types::Value::from));
        let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
        while let Some(r) = rows.next()? {
            let rusqlite::types::ValueRef::Blob(bytes) = r.get_ref(0)? else {
                return Err(StoreError::Drift(format!(
                    "{campaign}: a record fact that is not bytes: run `tally reindex`"
                )));
            };
            facts.push(Fact::decode(bytes).ok_or_else(|| {
                StoreError::Drift(format!(
                    "{campaign}: a record fact of {} bytes: run `tally reindex`",
                    bytes.len()
                ))
            })?);
        }
    }
    let keys = campaign_keys(conn, campaign)?;
    let mut t = totals_of_facts(&ff, facts, &keys);
    t.checkins = match checkin_copies_matching(conn, campaign, filter)? {
        Some(copies) => {
            scanned_totals(filter, &HashMap::new(), &HashSet::new(), Some(&copies)).checkins
        }
        None => campaign_checkins(conn, campaign)?,
    };
    paper(conn, campaign, &mut t)?;
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// The scan's pure part, shared by both backends (`crate::pg::projection` too): which rows a
// filter selects, as SQL conditions, and what the selected rows count as.

/// A value a filter condition binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterArg {
    /// A text.
    Text(String),
    /// An integer.
    Int(i64),
}

/// The conditions `filter` puts on signature rows (alias `s`), each starting ` AND `, with
/// their values; the placeholders are numbered from 2 (`placeholder(2)`, ...: the caller binds
/// the campaign as 1). They select a superset of the records `scanned_totals` counts: every
/// copy matching, whose record is then merged and checked again.
pub(crate) fn signature_conditions(
    filter: &Filter,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<FilterArg>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    let mut add = |cond: &str, arg: FilterArg| {
        args.push(arg);
        sql.push_str(&format!(" AND s.{cond} {}", placeholder(args.len() + 1)));
    };
    if let Some(e) = &filter.event {
        add("event =", FilterArg::Text(e.clone()));
    }
    if let Some(from) = filter.from {
        add("collected_at >=", FilterArg::Int(from));
    }
    if let Some(to) = filter.to {
        add("collected_at <", FilterArg::Int(to));
    }
    if let Some(c) = &filter.city {
        add("city_key =", FilterArg::Text(city_key(c)));
    }
    if let Some(f) = &filter.fsa {
        add("fsa =", FilterArg::Text(f.clone()));
    }
    if let Some(r) = &filter.riding {
        add("riding =", FilterArg::Text(r.clone()));
    }
    if let Some(c) = &filter.canvasser {
        add("collected_by =", FilterArg::Text(c.clone()));
    }
    (sql, args)
}

/// The conditions `filter` puts on check-in rows (event and time only), as
/// [`signature_conditions`]; `None` when it does not narrow check-ins (then a campaign's
/// check-ins are its aggregate cells').
pub(crate) fn checkin_conditions(
    filter: &Filter,
    placeholder: impl Fn(usize) -> String,
) -> Option<(String, Vec<FilterArg>)> {
    if filter.event.is_none() && filter.from.is_none() && filter.to.is_none() {
        return None;
    }
    let mut sql = String::new();
    let mut args = Vec::new();
    let mut add = |cond: &str, arg: FilterArg| {
        args.push(arg);
        sql.push_str(&format!(" AND {cond} {}", placeholder(args.len() + 1)));
    };
    if let Some(e) = &filter.event {
        add("event =", FilterArg::Text(e.clone()));
    }
    if let Some(from) = filter.from {
        add("at >=", FilterArg::Int(from));
    }
    if let Some(to) = filter.to {
        add("at <", FilterArg::Int(to));
    }
    Some((sql, args))
}

/// Whether a (merged) signature is one `filter` selects; `city` is the filter's city folded
/// (`city_key`).
fn signature_matches(filter: &Filter, city: Option<&str>, row: &SignatureRow) -> bool {
    filter
        .event
        .as_ref()
        .is_none_or(|e| row.event.as_ref() == Some(e))
        && filter.from.is_none_or(|f| row.collected_at >= f)
        && filter.to.is_none_or(|to| row.collected_at < to)
        && city.is_none_or(|c| city_key(&row.city) == c)
        && filter.fsa.as_ref().is_none_or(|f| row.fsa == *f)
        && filter
            .riding
            .as_ref()
            .is_none_or(|r| row.riding.as_ref() == Some(r))
        && filter
            .canvasser
            .as_ref()
            .is_none_or(|c| row.collected_by == *c)
}

/// The totals of the records whose copies are `sig_copies` (by record id) and, when the filter
/// narrows check-ins, `checkin_copies` (by check-in id): each record merged from its copies,
/// counted if `filter` selects it, as struck if its id is in `struck`. Check-ins are left empty
/// when `checkin_copies` is `None`, and paper sheets always: the caller adds them.
pub(crate) fn scanned_totals(
    filter: &Filter,
    sig_copies: &HashMap<String, Vec<SignatureRow>>,
    struck: &HashSet<String>,
    checkin_copies: Option<&HashMap<String, Vec<CheckinRow>>>,
) -> Totals {
    let mut t = Totals::default();
    let mut all = CellAcc::default();
    let mut dims: [HashMap<String, CellAcc>; 6] = Default::default();
    let mut spellings: BTreeMap<String, Spellings> = BTreeMap::new();
    let city_filter = filter.city.as_deref().map(city_key);
    for (id, rows) in sig_copies {
        let Some(row) = SignatureRow::merged(rows)
            .filter(|r| signature_matches(filter, city_filter.as_deref(), r))
        else {
            continue;
        };
        if row.withdrawn {
            t.withdrawn += 1;
            continue;
        }
        if struck.contains(id) {
            t.struck += 1;
            continue;
        }
        all.add(&row.dup);
        let city = city_key(&row.city);
        spellings.entry(city.clone()).or_default().add(&row.city, 1);
        let keys: [Option<&String>; 6] = [
            row.event.as_ref(),
            Some(&city),
            Some(&row.fsa),
            row.riding.as_ref(),
            Some(&row.day),
            Some(&row.collected_by),
        ];
        for (dim, key) in dims.iter_mut().zip(keys) {
            if let Some(k) = key {
                dim.entry(k.clone()).or_default().add(&row.dup);
            }
        }
    }
    let all = all.cell();
    (t.signatures, t.unique_signers) = (all.signatures, all.unique);
    let [ev, city, fsa, riding, day, canvasser] = dims;
    t.by_event = cells(ev);
    t.by_city = labelled(cells(city), &spellings);
    t.by_fsa = cells(fsa);
    t.by_riding = cells(riding);
    t.by_day = cells(day);
    t.by_canvasser = cells(canvasser);

    if let Some(copies) = checkin_copies {
        t.checkins = checkin_totals(filter, copies);
    }
    t
}

/// The check-ins of `copies` (by check-in id) that `filter` selects, each merged from its
/// copies, by event.
pub(crate) fn checkin_totals(
    filter: &Filter,
    copies: &HashMap<String, Vec<CheckinRow>>,
) -> BTreeMap<String, CheckinCell> {
    let mut sets: HashMap<String, [HashSet<String>; 3]> = HashMap::new();
    for rows in copies.values() {
        let Some(ci) = CheckinRow::merged(rows) else {
            continue;
        };
        let matches = !ci.withdrawn
            && filter.event.as_ref().is_none_or(|e| ci.event == *e)
            && filter.from.is_none_or(|f| ci.at >= f)
            && filter.to.is_none_or(|to| ci.at < to);
        if matches {
            let s = sets.entry(ci.event.clone()).or_default();
            s[0].insert(ci.attendee.clone());
            s[if ci.walk_in { 2 } else { 1 }].insert(ci.attendee);
        }
    }
    sets.into_iter()
        .map(|(k, [u, p, w])| {
            (
                k,
                CheckinCell {
                    unique: u.len() as u64,
                    pre_registered: p.len() as u64,
                    walk_in: w.len() as u64,
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Netting a batch (pure, shared by both backends).
//
// A batch applies its records one after the other: each record's row is written over its copy
// in one collection, and the record its copies make (merged) counts once; what the record counted
// before the write is taken away from its cells, what it counts after is added. The changes are
// netted per cell and per token before they touch the aggregate tables.

/// A record kept as copies, one per collection (a signature or a check-in row).
pub(crate) trait Copies: Clone + PartialEq + Sized {
    /// The record the copies make (`SignatureRow::merged`, `CheckinRow::merged`).
    fn merged_of<'a>(copies: impl IntoIterator<Item = &'a Self>) -> Option<Self>
    where
        Self: 'a;
    /// The row that the row's upsert leaves over an existing `old` one: its `ON CONFLICT`
    /// clause does not update every column (a signature keeps its `collected_at` and
    /// `collected_by`, a check-in its `event`, `at` and `by_id`).
    fn upserted(old: &Self, new: &Self) -> Self;
}

impl Copies for SignatureRow {
    fn merged_of<'a>(copies: impl IntoIterator<Item = &'a Self>) -> Option<Self> {
        SignatureRow::merged(copies)
    }
    fn upserted(old: &Self, new: &Self) -> Self {
        SignatureRow {
            collected_at: old.collected_at,
            collected_by: old.collected_by.clone(),
            ..new.clone()
        }
    }
}

impl Copies for CheckinRow {
    fn merged_of<'a>(copies: impl IntoIterator<Item = &'a Self>) -> Option<Self> {
        CheckinRow::merged(copies)
    }
    fn upserted(old: &Self, new: &Self) -> Self {
        CheckinRow {
            event: old.event.clone(),
            at: old.at,
            by: old.by.clone(),
            ..new.clone()
        }
    }
}

/// Writes `row` as collection `doc_id`'s copy among a record's `copies` (updated to the rows
/// stored after the upsert): `None` when that copy is already `row` (nothing to write), else
/// the record before and after. As the incremental path always has, "after" merges `row` as
/// given, whatever columns the upsert keeps.
pub(crate) fn write_copy<R: Copies>(
    copies: &mut Vec<(String, R)>,
    doc_id: &str,
    row: &R,
) -> Option<(Option<R>, Option<R>)> {
    let mine = copies.iter().position(|(d, _)| d == doc_id);
    if let Some(i) = mine
        && copies[i].1 == *row
    {
        return None;
    }
    let before = R::merged_of(copies.iter().map(|(_, r)| r));
    let after = R::merged_of(
        copies
            .iter()
            .map(|(d, r)| if d == doc_id { row } else { r })
            .chain(mine.is_none().then_some(row)),
    );
    match mine {
        Some(i) => copies[i].1 = R::upserted(&copies[i].1, row),
        None => copies.push((doc_id.to_string(), row.clone())),
    }
    Some((before, after))
}

/// One cell whose count or tokens a batch changed: its net change of records and its tokens'
/// (none zero).
pub(crate) struct CellChange {
    pub dim: Dim,
    pub key: String,
    pub n: i64,
    pub tokens: Vec<(String, i64)>,
}

/// The aggregate changes of one batch, netted.
#[derive(Default)]
pub(crate) struct Netted {
    /// Net change of each cell's record count.
    cells: HashMap<(Dim, String), i64>,
    /// Net change of each token's record count in a cell.
    members: HashMap<(Dim, String, String), i64>,
    /// The records whose fact changed: the merged record and whether it is struck, or `None`
    /// for a record gone.
    pub facts: HashMap<String, Option<(SignatureRow, bool)>>,
}

impl Netted {
    fn add(&mut self, contributions: Vec<Contribution>, sign: i64) {
        for Contribution { dim, key, token } in contributions {
            if let Some(t) = token {
                *self.members.entry((dim, key.clone(), t)).or_default() += sign;
            }
            *self.cells.entry((dim, key)).or_default() += sign;
        }
    }

    /// Signature record `id` went from `before` to `after` (different), struck or not all
    /// along.
    pub(crate) fn signature(
        &mut self,
        id: &str,
        before: Option<SignatureRow>,
        after: Option<SignatureRow>,
        struck: bool,
    ) {
        self.facts
            .insert(id.to_string(), after.clone().map(|a| (a, struck)));
        if let Some(b) = before {
            self.add(signature_cells(&b, struck), -1);
        }
        if let Some(a) = after {
            self.add(signature_cells(&a, struck), 1);
        }
    }

    /// A check-in record went from `before` to `after` (different).
    pub(crate) fn checkin(&mut self, before: Option<CheckinRow>, after: Option<CheckinRow>) {
        if let Some(b) = before {
            self.add(checkin_cells(&b), -1);
        }
        if let Some(a) = after {
            self.add(checkin_cells(&a), 1);
        }
    }

    /// Signature record `id` (its copies merged: `row`) went from struck `was` to `now`.
    pub(crate) fn strike(&mut self, id: &str, row: SignatureRow, was: bool, now: bool) {
        if was != now {
            self.add(signature_cells(&row, was), -1);
            self.add(signature_cells(&row, now), 1);
            self.facts.insert(id.to_string(), Some((row, now)));
        }
    }

    /// The cells whose count or tokens changed.
    pub(crate) fn changed_cells(&self) -> Vec<CellChange> {
        let mut by_cell: HashMap<(Dim, &str), Vec<(String, i64)>> = HashMap::new();
        for ((dim, key, token), d) in &self.members {
            if *d != 0 {
                by_cell
                    .entry((*dim, key.as_str()))
                    .or_default()
                    .push((token.clone(), *d));
            }
        }
        for ((dim, key), d) in &self.cells {
            if *d != 0 {
                by_cell.entry((*dim, key.as_str())).or_default();
            }
        }
        by_cell
            .into_iter()
            .map(|((dim, key), tokens)| CellChange {
                dim,
                key: key.to_string(),
                n: self
                    .cells
                    .get(&(dim, key.to_string()))
                    .copied()
                    .unwrap_or(0),
                tokens,
            })
            .collect()
    }
}

/// A token's record count in a cell now `m`, changed by `dm`: what the cell's distinct tokens
/// change by (1 for a token new to it, -1 for one gone) and whether its row goes (no record
/// left); `None` if either count is below zero (the tables no longer match the rows).
pub(crate) fn member_change(m: i64, dm: i64) -> Option<(i64, bool)> {
    let m0 = m - dm;
    if m < 0 || m0 < 0 {
        return None;
    }
    let du = match (m0, m) {
        (0, m) if m > 0 => 1,
        (m0, 0) if m0 > 0 => -1,
        _ => 0,
    };
    Some((du, m == 0))
}

// ---------------------------------------------------------------------------------------------
// Filtered totals from the record facts (issue 18), shared by both backends.
//
// `agg_records` holds one row per record (the merged copies of one signature id: counted, struck
// or withdrawn), its keys interned in `agg_keys` and its duplicate token in `agg_tokens`, the
// whole record packed into one small `fact` (a [`Fact`]). Its indexes are keyed by each filter
// dimension (event, city, FSA, riding, canvasser, time) and cover the fact, so a filtered query
// reads the facts of the records one filter selects from one index range, checks the other
// filters on each fact, and counts them here ([`totals_of_facts`]): integers only, no text and
// no merging of copies at query time.

/// The dimensions of a fact's keys, in the order of [`Fact::keys`].
pub(crate) const FACT_DIMS: [Dim; 7] = [
    Dim::Event,
    Dim::City,
    Dim::CitySpelling,
    Dim::Fsa,
    Dim::Riding,
    Dim::Day,
    Dim::Canvasser,
];
const EVENT: usize = 0;
const CITY: usize = 1;
const SPELLING: usize = 2;
const FSA: usize = 3;
const RIDING: usize = 4;
const CANVASSER: usize = 6;

/// A fact's status.
pub(crate) const COUNTED: u8 = 0;
/// Struck (and not withdrawn).
pub(crate) const STRUCK: u8 = 1;
/// Withdrawn.
pub(crate) const WITHDRAWN: u8 = 2;

/// A key id that no key has: a filter on a value no record has selects nothing.
pub(crate) const NO_SUCH_KEY: i64 = -1;

/// One record as the filtered queries read it: its status, time, token id (0 unless counted)
/// and the ids of its keys in [`FACT_DIMS`] (0: none, for a record without event or riding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fact {
    pub status: u8,
    pub at: i64,
    pub token: u32,
    pub keys: [u32; 7],
}

const FACT_LEN: usize = 1 + 8 + 4 + 7 * 4;

impl Fact {
    /// The packed bytes (little-endian), as stored.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FACT_LEN);
        b.push(self.status);
        b.extend_from_slice(&self.at.to_le_bytes());
        b.extend_from_slice(&self.token.to_le_bytes());
        for k in self.keys {
            b.extend_from_slice(&k.to_le_bytes());
        }
        b
    }

    /// Reads packed bytes back; `None` if they are not a fact.
    pub(crate) fn decode(b: &[u8]) -> Option<Fact> {
        if b.len() != FACT_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let mut keys = [0u32; 7];
        for (j, k) in keys.iter_mut().enumerate() {
            *k = u32_at(13 + 4 * j);
        }
        Some(Fact {
            status: b[0],
            at: i64::from_le_bytes(b[1..9].try_into().ok()?),
            token: u32_at(9),
            keys,
        })
    }

    /// The fact of a merged record of `status` with `keys` ([`fact_keys`]), its keys' and
    /// token's ids found by the caller (looked up, or interned on the way); the token counts
    /// only for a counted record.
    pub(crate) fn of(
        row: &SignatureRow,
        status: u8,
        keys: [Option<String>; 7],
        mut key_id: impl FnMut(Dim, String) -> Result<i64>,
        token_id: impl FnOnce(&str) -> Result<i64>,
    ) -> Result<Fact> {
        let mut ids = [0u32; 7];
        for ((slot, dim), key) in ids.iter_mut().zip(FACT_DIMS).zip(keys) {
            if let Some(k) = key {
                *slot = fact_id(key_id(dim, k)?)?;
            }
        }
        let token = if status == COUNTED {
            fact_id(token_id(&row.dup)?)?
        } else {
            0
        };
        Ok(Fact {
            status,
            at: row.collected_at,
            token,
            keys: ids,
        })
    }

    /// The id columns the indexes are keyed by: (event, city, fsa, riding, canvasser).
    pub(crate) fn columns(&self) -> [i64; 5] {
        [EVENT, CITY, FSA, RIDING, CANVASSER].map(|i| i64::from(self.keys[i]))
    }
}

/// The keys a merged record has in [`FACT_DIMS`] (`None`: no event, no riding).
pub(crate) fn fact_keys(row: &SignatureRow) -> [Option<String>; 7] {
    [
        row.event.clone(),
        Some(city_key(&row.city)),
        Some(row.city.clone()),
        Some(row.fsa.clone()),
        row.riding.clone(),
        Some(row.day.clone()),
        Some(row.collected_by.clone()),
    ]
}

/// The status of a merged record, struck or not.
pub(crate) fn fact_status(row: &SignatureRow, struck: bool) -> u8 {
    if row.withdrawn {
        WITHDRAWN
    } else if struck {
        STRUCK
    } else {
        COUNTED
    }
}

/// Converts an id from the database to a fact's; ids past `u32` are refused (drift: tally
/// never makes that many keys or tokens).
pub(crate) fn fact_id(id: i64) -> Result<u32> {
    u32::try_from(id).map_err(|_| {
        StoreError::Drift(format!(
            "key or token id {id} does not fit a fact: run `tally reindex`"
        ))
    })
}

/// The index a filtered query reads, and the value(s) it reads it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FactRange {
    /// `agg_records_by_<column>` at one key id; the column is one of event, city, fsa,
    /// riding, canvasser.
    Key(&'static str, i64),
    /// `agg_records_by_time` from `from` (inclusive) to `to` (exclusive).
    Time(i64, i64),
}

/// A [`Filter`] with its values resolved to key ids ([`NO_SUCH_KEY`] for a value no record
/// has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FactFilter {
    /// Key ids by dimension: event, city, fsa, riding, canvasser.
    pub keys: [Option<i64>; 5],
    /// The time range.
    pub from: Option<i64>,
    /// The time range's end (exclusive).
    pub to: Option<i64>,
}

/// The dimension and key of each key a filter names, in the order of [`FactFilter::keys`].
pub(crate) fn filter_keys(filter: &Filter) -> [Option<(Dim, String)>; 5] {
    [
        filter.event.clone().map(|e| (Dim::Event, e)),
        filter.city.as_deref().map(|c| (Dim::City, city_key(c))),
        filter.fsa.clone().map(|f| (Dim::Fsa, f)),
        filter.riding.clone().map(|r| (Dim::Riding, r)),
        filter.canvasser.clone().map(|c| (Dim::Canvasser, c)),
    ]
}

const FACT_COLUMNS: [&str; 5] = ["event", "city", "fsa", "riding", "canvasser"];

impl FactFilter {
    /// The index range to read: the narrowest a filter's kinds usually give (an FSA, a riding
    /// or a canvasser hold few records; then an event; then a time range; a city last).
    pub(crate) fn range(&self) -> FactRange {
        for i in [2, 3, 4, 0] {
            if let Some(id) = self.keys[i] {
                return FactRange::Key(FACT_COLUMNS[i], id);
            }
        }
        if self.from.is_some() || self.to.is_some() {
            return FactRange::Time(self.from.unwrap_or(i64::MIN), self.to.unwrap_or(i64::MAX));
        }
        match self.keys[1] {
            Some(id) => FactRange::Key("city", id),
            None => FactRange::Time(i64::MIN, i64::MAX),
        }
    }

    fn matches(&self, f: &Fact) -> bool {
        let cols = f.columns();
        self.keys
            .iter()
            .zip(cols)
            .all(|(want, have)| want.is_none_or(|w| w == have))
            && self.from.is_none_or(|from| f.at >= from)
            && self.to.is_none_or(|to| f.at < to)
    }
}

/// The totals of the facts a filter selects (`facts` may hold more: each is checked): struck
/// and withdrawn counted, and for the counted records every cell with its distinct tokens.
/// `keys` names the key ids (dimension and text). Check-ins and paper are the caller's.
///
/// Distinct tokens: a token held by one selected record adds one to each of its cells; only
/// the records whose token another selected record holds too go through a set.
pub(crate) fn totals_of_facts(
    filter: &FactFilter,
    facts: impl IntoIterator<Item = Fact>,
    keys: &HashMap<u32, (Dim, String)>,
) -> Totals {
    let mut t = Totals::default();
    let mut counted = Vec::new();
    let mut max_token = 0;
    for f in facts {
        if !filter.matches(&f) {
            continue;
        }
        match f.status {
            WITHDRAWN => t.withdrawn += 1,
            STRUCK => t.struck += 1,
            _ => {
                max_token = max_token.max(f.token);
                counted.push(f);
            }
        }
    }
    // Ids are small and dense (interned per database): counters are arrays indexed by them.
    let mut records_of_token = vec![0u8; max_token as usize + 1];
    for f in &counted {
        let n = &mut records_of_token[f.token as usize];
        *n = n.saturating_add(1);
    }
    let max_key = keys.keys().copied().max().unwrap_or(0) as usize;
    let mut all = (0u64, 0u64);
    let mut cells: Vec<(u64, u64)> = vec![(0, 0); max_key + 1];
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    for f in &counted {
        let shared = records_of_token[f.token as usize] > 1;
        all.0 += 1;
        if !shared || seen.insert((0, f.token)) {
            all.1 += 1;
        }
        for (i, k) in f.keys.iter().enumerate() {
            let Some(c) = cells.get_mut(*k as usize).filter(|_| *k != 0) else {
                continue;
            };
            c.0 += 1;
            if i != SPELLING && (!shared || seen.insert((*k, f.token))) {
                c.1 += 1;
            }
        }
    }
    (t.signatures, t.unique_signers) = all;
    let mut spellings: BTreeMap<String, Spellings> = BTreeMap::new();
    let mut by_city = BTreeMap::new();
    for (id, (dim, key)) in keys {
        let Some(&(n, u)) = cells.get(*id as usize).filter(|c| c.0 > 0) else {
            continue;
        };
        let cell = Cell {
            signatures: n,
            unique: u,
        };
        let key = key.clone();
        match dim {
            Dim::Event => _ = t.by_event.insert(key, cell),
            Dim::City => _ = by_city.insert(key, cell),
            Dim::CitySpelling => spellings.entry(city_key(&key)).or_default().add(&key, n),
            Dim::Fsa => _ = t.by_fsa.insert(key, cell),
            Dim::Riding => _ = t.by_riding.insert(key, cell),
            Dim::Day => _ = t.by_day.insert(key, cell),
            Dim::Canvasser => _ = t.by_canvasser.insert(key, cell),
            _ => {}
        }
    }
    t.by_city = labelled(by_city, &spellings);
    t
}

/// The facts of the merged records of `rows` (every signature row of some records, sorted by
/// campaign and record id), with whether each is struck: what a rebuild writes.
pub(crate) fn merged_records<'a>(
    rows: &'a [(String, String, SignatureRow)],
    struck: &'a HashSet<(String, String)>,
) -> impl Iterator<Item = (&'a str, &'a str, SignatureRow, bool)> + 'a {
    rows.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1)
        .filter_map(move |group| {
            let (campaign, id, _) = &group[0];
            let merged = SignatureRow::merged(group.iter().map(|(_, _, r)| r))?;
            let is_struck = struck.contains(&(campaign.clone(), id.clone()));
            Some((campaign.as_str(), id.as_str(), merged, is_struck))
        })
}

/// Drops the rows of the last record of a full page of signature rows (sorted by campaign and
/// id): its copies may go on in the next page. A page of one record's copies only is drift.
pub(crate) fn complete_groups(page: &mut Vec<(String, String, SignatureRow)>) -> Result<()> {
    let Some((c, id, _)) = page.last() else {
        return Ok(());
    };
    let keep = page
        .iter()
        .rposition(|(a, b, _)| a != c || b != id)
        .map_or(0, |i| i + 1);
    if keep == 0 {
        return Err(StoreError::Drift(format!(
            "{c}/{id}: more copies of one record than a page holds"
        )));
    }
    page.truncate(keep);
    Ok(())
}

/// A fact as a line of the projection dump, keys and token named.
pub(crate) fn fact_line(
    campaign: &str,
    sig_id: &str,
    fact: &Fact,
    keys: &HashMap<u32, (Dim, String)>,
    tokens: &HashMap<u32, String>,
) -> String {
    let named: Vec<String> = fact
        .keys
        .iter()
        .map(|k| keys.get(k).map_or(String::new(), |(_, key)| key.clone()))
        .collect();
    format!(
        "{campaign}|{sig_id}|{}|{}|{}|{}",
        fact.status,
        fact.at,
        tokens.get(&fact.token).map_or("", String::as_str),
        named.join("|")
    )
}

// ---------------------------------------------------------------------------------------------
// Rebuilding.

/// Counted signatures and live check-ins as (campaign, dim, key, token), and struck and
/// withdrawn signatures (no token): the aggregates' definition in one SQL expression, the
/// independent counterpart of `tally_core::cells`. Each record counts once (docs/documents.md,
/// "Counting once"): its copies are ranked by the columns of `tally_core::totals::SignatureKey`
/// (`CheckinKey`), in their order (NULL first, texts by their bytes, as Rust orders `Option`
/// and `str`), the first speaks for the record, which is withdrawn if any copy is.
const SOURCE: &str = "WITH merged AS (
    SELECT * FROM (
        SELECT campaign, sig_id, event, day, collected_by, city, city_key, fsa, riding, dup,
            ROW_NUMBER() OVER (PARTITION BY campaign, sig_id
                ORDER BY collected_at, collected_by, event, city, fsa, riding, consent, dup) AS rank,
            MAX(withdrawn) OVER (PARTITION BY campaign, sig_id) AS any_withdrawn
        FROM signatures)
    WHERE rank = 1
), counted AS (
    SELECT m.* FROM merged m WHERE m.any_withdrawn = 0 AND NOT EXISTS
        (SELECT 1 FROM strikes k WHERE k.campaign = m.campaign AND k.sig_id = m.sig_id AND k.revoked = 0)
), live_checkins AS (
    SELECT * FROM (
        SELECT campaign, event, attendee, walk_in,
            ROW_NUMBER() OVER (PARTITION BY campaign, ci_id
                ORDER BY at, by_id, event, attendee, walk_in) AS rank,
            MAX(withdrawn) OVER (PARTITION BY campaign, ci_id) AS any_withdrawn
        FROM checkins)
    WHERE rank = 1 AND any_withdrawn = 0
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
    UNION ALL SELECT campaign, 'checkin_pre', event, attendee FROM live_checkins WHERE walk_in = 0
    UNION ALL SELECT campaign, 'checkin_walk', event, attendee FROM live_checkins WHERE walk_in = 1
    UNION ALL SELECT campaign, 'withdrawn', '', NULL FROM merged WHERE any_withdrawn = 1
    UNION ALL SELECT m.campaign, 'struck', '', NULL FROM merged m WHERE m.any_withdrawn = 0 AND EXISTS
        (SELECT 1 FROM strikes k WHERE k.campaign = m.campaign AND k.sig_id = m.sig_id AND k.revoked = 0)
)";

fn dump(conn: &Connection) -> Result<BTreeMap<&'static str, Vec<String>>> {
    let queries: [(&'static str, &str); 6] = [
        (
            "signatures",
            "SELECT doc_id, sig_id, campaign, event, collected_at, day, collected_by, city, city_key, fsa, riding, consent, dup, withdrawn FROM signatures",
        ),
        (
            "checkins",
            "SELECT doc_id, ci_id, campaign, event, attendee, at, by_id, walk_in, withdrawn FROM checkins",
        ),
        (
            "strikes",
            "SELECT campaign, sig_id, reason, by_id, at, revoked FROM strikes",
        ),
        (
            "sheets",
            "SELECT campaign, serial, count, riding, status FROM sheets",
        ),
        (
            "agg_cells",
            "SELECT campaign, dim, key, n, uniq FROM agg_cells",
        ),
        (
            "agg_members",
            "SELECT c.campaign, c.dim, c.key, t.token, m.n FROM agg_members m
             JOIN agg_cells c ON c.key_id = m.key_id JOIN agg_tokens t ON t.token_id = m.token_id",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in queries {
        let mut stmt = conn.prepare(sql)?;
        let width = stmt.column_count();
        let mut lines: Vec<String> = stmt
            .query_map([], |r| {
                let mut cols = Vec::with_capacity(width);
                for i in 0..width {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cols.push(format!("{v:?}"));
                }
                Ok(cols.join("|"))
            })?
            .collect::<rusqlite::Result<_>>()?;
        lines.sort();
        out.insert(name, lines);
    }
    // The record facts, keys and tokens named (their ids differ between a rebuild and the
    // incremental path).
    let keys: HashMap<u32, (Dim, String)> = conn
        .prepare("SELECT key_id, dim, key FROM agg_keys")?
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter_map(|(id, d, k)| Some((u32::try_from(id).ok()?, (Dim::parse(&d)?, k))))
        .collect();
    let tokens: HashMap<u32, String> = conn
        .prepare("SELECT token_id, token FROM agg_tokens")?
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter_map(|(id, t)| Some((u32::try_from(id).ok()?, t)))
        .collect();
    let mut stmt = conn.prepare("SELECT campaign, sig_id, fact FROM agg_records")?;
    let mut rows = stmt.query([])?;
    let mut lines = Vec::new();
    while let Some(r) = rows.next()? {
        let (campaign, sig_id): (String, String) = (r.get(0)?, r.get(1)?);
        let bytes: Vec<u8> = r.get(2)?;
        lines.push(match Fact::decode(&bytes) {
            Some(f) => fact_line(&campaign, &sig_id, &f, &keys, &tokens),
            None => format!("{campaign}|{sig_id}|undecodable"),
        });
    }
    lines.sort();
    out.insert("agg_records", lines);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tally_core::collection::Signature;
    use tally_core::fixtures::{NOW, World};
    use tally_core::review::StrikeReason;

    use super::*;
    use crate::Store;

    /// Projects signature `s` as its row in a campaign of time zone `tz`.
    pub(super) fn sign(b: &mut Batch<'_>, doc: &str, s: &Signature, tz: &str) -> Result<()> {
        b.signature(doc, &s.id, &SignatureRow::of(s, tz))
    }

    /// A token's count in a cell: new to the cell, gone from it, or neither; below zero is
    /// drift.
    #[test]
    fn member_change_counts_distinct_tokens() {
        assert_eq!(member_change(1, 1), Some((1, false)));
        assert_eq!(member_change(3, 3), Some((1, false)));
        assert_eq!(member_change(0, -2), Some((-1, true)));
        assert_eq!(member_change(2, 1), Some((0, false)));
        assert_eq!(member_change(1, -1), Some((0, false)));
        assert_eq!(member_change(-1, -1), None);
        assert_eq!(member_change(1, 2), None);
    }

    /// A copy written over a record's copies: nothing for the same row; before and after for
    /// another; the copies then hold what the upsert stores (a signature keeps its time and
    /// collector), while "after" merges the row as given.
    #[test]
    fn write_copy_says_before_and_after() {
        let world = World::new();
        let row = |name: &str, at: i64| {
            let mut s = world.signature("dev1", "s1", name, "M5V 2T6", "Toronto");
            s.collected_at = at;
            SignatureRow::of(&s, "UTC")
        };
        let mut copies = Vec::new();
        let first = row("Li Wei", NOW);
        assert_eq!(
            write_copy(&mut copies, "docA", &first),
            Some((None, Some(first.clone())))
        );
        assert_eq!(write_copy(&mut copies, "docA", &first), None);
        // Another lineage's copy, later: the record is still the first copy.
        let other = row("Li Wei", NOW + 1);
        assert_eq!(
            write_copy(&mut copies, "docB", &other),
            Some((Some(first.clone()), Some(first.clone())))
        );
        assert_eq!(copies.len(), 2);
        // The first copy rewritten with another time: "after" is the row given, the copy
        // stored keeps its time (the upsert does not update collected_at).
        let moved = row("Amara Okafor", NOW + 2);
        assert_eq!(
            write_copy(&mut copies, "docA", &moved),
            Some((Some(first.clone()), Some(other.clone())))
        );
        assert_eq!(copies[0].1.collected_at, NOW);
        assert_eq!(copies[0].1.dup, moved.dup);
    }

    /// The incremental batches and the one-pass SQL rebuild agree, cell for cell, through
    /// corrections, withdrawals, a strike before its signature's row and a revoked strike.
    #[test]
    fn incremental_aggregates_equal_a_rebuild_from_the_rows() {
        let world = World::new();
        let store = Store::open_in_memory().unwrap();
        let camp = world.campaign.id.clone();
        let sig =
            |id: &str, name: &str, city: &str| world.signature("dev1", id, name, "M5V 2T6", city);
        let strike = |id: &str, revoked| Strike {
            signature: id.into(),
            reason: StrikeReason::Duplicate,
            by: "org1".into(),
            at: NOW,
            revoked,
        };
        store
            .write(|tx| {
                let mut b = tx.projection_batch(&camp);
                b.strike(&strike("s3", false))?; // before its row exists
                sign(
                    &mut b,
                    "docA",
                    &sig("s1", "Amara Okafor", "Toronto"),
                    "America/Toronto",
                )?;
                sign(
                    &mut b,
                    "docA",
                    &sig("s2", "Amara Okafor", "Toronto"),
                    "America/Toronto",
                )?;
                sign(
                    &mut b,
                    "docB",
                    &sig("s3", "Li Wei", "Hamilton"),
                    "America/Toronto",
                )?;
                b.checkin("docA", &world.checkin("dev1", "c1", "Li Wei", true))?;
                b.flush()?;
                let mut b = tx.projection_batch(&camp);
                let mut moved = sig("s2", "Li Wei", "Hamilton");
                sign(&mut b, "docA", &moved, "America/Toronto")?; // a correction
                moved.withdrawn = true;
                sign(&mut b, "docA", &moved, "America/Toronto")?; // then withdrawn
                b.strike(&strike("s3", true))?; // revoked: s3 counts again
                b.strike(&strike("s1", false))?;
                // The same person checked in twice (two phones), then one check-in withdrawn;
                // another corrected from one person to another.
                b.checkin("docB", &world.checkin("dev2", "c2", "Li Wei", false))?;
                b.checkin("docB", &world.checkin("dev2", "c3", "Amara Okafor", false))?;
                b.flush()?;
                let mut b = tx.projection_batch(&camp);
                let mut gone = world.checkin("dev1", "c1", "Li Wei", true);
                gone.withdrawn = true;
                b.checkin("docA", &gone)?;
                b.checkin("docB", &world.checkin("dev2", "c3", "Li Wei", false))?;
                b.flush()?;
                Ok(())
            })
            .unwrap();
        let (incremental, t) = store
            .read(|r| Ok((r.projection_dump()?, r.totals(&camp)?)))
            .unwrap();
        assert_eq!((t.signatures, t.struck, t.withdrawn), (1, 1, 1));
        let rally = &t.checkins["rally1"];
        assert_eq!(
            (rally.unique, rally.walk_in, rally.pre_registered),
            (1, 0, 1),
            "{rally:?}"
        );
        store.write(|tx| tx.rebuild_aggregates().map(drop)).unwrap();
        let rebuilt = store.read(|r| r.projection_dump()).unwrap();
        assert_eq!(incremental, rebuilt);
        let scanned = store
            .read(|r| r.scan_totals(&camp, &Filter::default()))
            .unwrap();
        assert_eq!(t, scanned);
    }
}

#[cfg(test)]
mod cities {
    use tally_core::fixtures::World;

    use super::tests::sign;
    use super::*;
    use crate::Store;

    const TZ: &str = "America/Toronto";

    /// Issue 13's spellings are one cell in the aggregates, the scan (a city filter in any
    /// spelling matches them all) and a rebuild; rows from before schema 6 (no `city_key`) get
    /// theirs when the aggregates are rebuilt.
    #[test]
    fn spellings_of_a_city_are_one_cell_everywhere() {
        let world = World::new();
        let camp = world.campaign.id.clone();
        let store = Store::open_in_memory().unwrap();
        let typed = [
            "toronto",
            "TORONTO",
            " Toronto ",
            "Toronto",
            "Toronto",
            "Montreal",
            "Montréal",
        ];
        store
            .write(|tx| {
                let mut b = tx.projection_batch(&camp);
                for (i, city) in typed.iter().enumerate() {
                    let mut s =
                        world.signature("dev1", &format!("s{i}"), &format!("P{i}"), "M5V 2T6", "x");
                    s.city = city.to_string();
                    sign(&mut b, "docA", &s, TZ)?;
                }
                b.flush()
            })
            .unwrap();
        let (t, dumped) = store
            .read(|r| Ok((r.totals(&camp)?, r.projection_dump()?)))
            .unwrap();
        let cities: Vec<(&str, u64)> = t
            .by_city
            .iter()
            .map(|(k, c)| (k.as_str(), c.signatures))
            .collect();
        assert_eq!(cities, [("Montréal", 2), ("Toronto", 5)]);
        assert_eq!(
            t,
            store
                .read(|r| r.scan_totals(&camp, &Filter::default()))
                .unwrap()
        );
        let only = |city: &str| Filter {
            city: Some(city.into()),
            ..Filter::default()
        };
        let t = store
            .read(|r| r.scan_totals(&camp, &only(" MONTRÉAL")))
            .unwrap();
        assert_eq!(t.signatures, 2);
        assert_eq!(t.by_city.keys().collect::<Vec<_>>(), ["Montréal"]);
        // A file from before schema 6: keys unset, aggregates stale.
        store
            .write(|tx| {
                tx.conn().execute_batch(
                    "UPDATE signatures SET city_key = NULL; DELETE FROM agg_cells;
                     DELETE FROM agg_members;",
                )?;
                tx.rebuild_aggregates().map(drop)
            })
            .unwrap();
        assert_eq!(store.read(|r| r.projection_dump()).unwrap(), dumped);
    }
}

#[cfg(test)]
mod counting_once {
    use tally_core::collection::{CHECKINS, SIGNATURES};
    use tally_core::fixtures::World;

    use super::tests::sign;
    use super::*;
    use crate::Store;

    const TZ: &str = "America/Toronto";

    /// A record new to a collection whose id a collection of another lineage holds is refused;
    /// the same lineage (a re-enrolled phone's new device) may hold copies.
    #[test]
    fn a_record_id_belongs_to_one_lineage() {
        let world = World::new();
        let camp = world.campaign.id.clone();
        let store = Store::open_in_memory().unwrap();
        store
            .write(|tx| {
                let c = tx.conn();
                c.execute_batch(
                    "INSERT INTO devices (device_id, name, role, campaign, token_hash, created_at, lineage)
                       VALUES ('old', 'p', 'canvasser', 'x', X'01', 0, 'old'),
                              ('new', 'p', 'canvasser', 'x', X'02', 0, 'old'),
                              ('other', 'p', 'canvasser', 'x', X'03', 0, 'other');
                     INSERT INTO documents (doc_id, kind, campaign, owner, created_at)
                       VALUES ('docOld', 'collection', 'x', 'old', 0), ('docNew', 'collection', 'x', 'new', 0),
                              ('docOther', 'collection', 'x', 'other', 0);",
                )?;
                Ok(())
            })
            .unwrap();
        let write = |doc: &str, owner: &str, id: &str| {
            store.write(|tx| {
                let cid = format!("c-{id}");
                tx.claim_records(&camp, owner, SIGNATURES, &[id])?;
                tx.claim_records(&camp, owner, CHECKINS, &[&cid])?;
                let mut b = tx.projection_batch(&camp);
                sign(
                    &mut b,
                    doc,
                    &world.signature(owner, id, "Li Wei", "L8P 4R5", "Hamilton"),
                    TZ,
                )?;
                b.checkin(doc, &world.checkin(owner, &cid, "Li Wei", false))?;
                b.flush()
            })
        };
        write("docOld", "old", "r1").unwrap();
        write("docNew", "new", "r1").unwrap();
        write("docNew", "new", "r1").unwrap();
        let err = write("docOther", "other", "r1").unwrap_err();
        assert!(
            matches!(&err, StoreError::Claimed { container: "signatures", id } if id == "r1"),
            "{err}"
        );
        assert!(err.to_string().contains("another phone"), "{err}");
        // A check-in id alone.
        let err = store
            .write(|tx| tx.claim_records(&camp, "other", CHECKINS, &["c-r1"]))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Claimed {
                    container: "checkins",
                    ..
                }
            ),
            "{err}"
        );
        // The claims of a file from before them are its rows': a reindex rebuilds the same.
        let claims = |store: &Store| {
            store
                .write(|r| {
                    Ok(r.conn()
                        .prepare("SELECT campaign, container, id, lineage FROM record_claims ORDER BY 1, 2, 3")?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                        .collect::<rusqlite::Result<Vec<(String, String, String, String)>>>()?)
                })
                .unwrap()
        };
        let before = claims(&store);
        assert_eq!(before.len(), 2, "{before:?}");
        assert!(before.iter().all(|c| c.3 == "old"), "{before:?}");
        store
            .write(|tx| {
                tx.conn().execute_batch("DELETE FROM record_claims")?;
                tx.rebuild_claims().map(|_| ())
            })
            .unwrap();
        assert_eq!(claims(&store), before);
        let t = store.read(|r| r.totals(&camp)).unwrap();
        assert_eq!(t.signatures, 1);
        assert_eq!(t.checkins["rally1"].unique, 1);
    }
}
