//! The totals projection: SQL rows of signatures, check-ins, strikes and paper sheets, and
//! aggregate cells beside them, kept current from each document's accepted changes inside the
//! same SQLite transaction that stores them. Only the records the change touched are read (the
//! validator finds them in automerge's diff between the old and new heads); nothing re-reads a
//! whole document, and a restart needs no rebuild.
//!
//! Two ways to answer totals: [`totals`] reads the aggregate cells (a few hundred rows whatever
//! the number of signatures), [`query`] scans the rows matching a [`Filter`] (event, time, city,
//! FSA). Both must equal the document core's reference `tally_core::totals::totals`; the
//! end-to-end tests hold them to it. [`reindex`] rebuilds every table from the stored documents
//! (rows through the same code as the incremental path, aggregates by one SQL pass over the rows,
//! an independent computation), for `tally reindex`.
//!
//! No personal field is ever written here: only what totals need, and the duplicate and attendee
//! tokens (HMACs under a key the server never has).

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::Automerge;
use tally_core::collection::{self, CHECKINS, Checkin, SIGNATURES, Signature};
use tally_core::review::{self, SHEETS, STRIKES, Sheet, Strike};
use tally_core::totals::{Cell, CellAcc, CheckinCell, PaperCell, Totals, cells, day_of};
use tally_core::validate::Accepted;
use tally_core::{DocHeader, DocKind};
use tally_store::rusqlite::{self, Connection, OptionalExtension, params};
use tally_store::{DocFilter, Store, StoreError, WriteTx};

/// Projection failures: a stored record that does not read back (a bug), aggregates that do not
/// match the rows, or storage.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A record could not be read from the document.
    #[error("record {0} could not be projected: {1}")]
    Record(String, String),
    /// A stored document could not be loaded (reindex).
    #[error("document {0} could not be loaded: {1}")]
    Load(String, String),
    /// An aggregate would go below zero: the aggregate tables no longer match the rows.
    #[error(
        "the totals aggregates are out of step with the rows ({0}); stop the server and run `tally reindex`"
    )]
    Drift(String),
    /// SQLite refused.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a campaign's totals can be narrowed to. Signatures match on all the given fields
/// (`from` inclusive, `to` exclusive, on `collected_at`); check-ins on `event` and the time range
/// (on `at`) only, as they have no city or FSA; paper sheets are never filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event id.
    pub event: Option<String>,
    /// Earliest time, ms since the epoch, inclusive.
    pub from: Option<i64>,
    /// Latest time, ms since the epoch, exclusive.
    pub to: Option<i64>,
    /// The signer's city, exactly as stored.
    pub city: Option<String>,
    /// The signer's FSA, upper case.
    pub fsa: Option<String>,
}

impl Filter {
    /// No filter at all: the whole campaign.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Rows and the incremental path.

/// A signature row: the clear fields of a signature, as the `signatures` table holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SigRow {
    event: Option<String>,
    collected_at: i64,
    day: String,
    collected_by: String,
    city: String,
    fsa: String,
    riding: Option<String>,
    consent: bool,
    dup: String,
    withdrawn: bool,
}

impl SigRow {
    fn of(s: &Signature, timezone: &str) -> SigRow {
        SigRow {
            event: s.event.clone(),
            collected_at: s.collected_at,
            day: day_of(s.collected_at, timezone),
            collected_by: s.collected_by.clone(),
            city: s.city.clone(),
            fsa: s.fsa.clone(),
            riding: s.riding.clone(),
            consent: s.consent_contact,
            dup: s.dup.clone(),
            withdrawn: s.withdrawn,
        }
    }
}

/// A check-in row's fields that totals use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckinRow {
    event: String,
    attendee: String,
    walk_in: bool,
    withdrawn: bool,
}

/// One unit a record adds to the aggregates: (dim, key, token).
type Contribution = (&'static str, String, Option<String>);

/// What a signature adds to the aggregates, given whether it is struck.
fn sig_contributions(row: &SigRow, struck: bool) -> Vec<Contribution> {
    if row.withdrawn {
        return vec![("withdrawn", String::new(), None)];
    }
    if struck {
        return vec![("struck", String::new(), None)];
    }
    let t = || Some(row.dup.clone());
    let mut out = vec![
        ("all", String::new(), t()),
        ("city", row.city.clone(), t()),
        ("fsa", row.fsa.clone(), t()),
        ("day", row.day.clone(), t()),
        ("canvasser", row.collected_by.clone(), t()),
    ];
    if let Some(e) = &row.event {
        out.push(("event", e.clone(), t()));
    }
    if let Some(r) = &row.riding {
        out.push(("riding", r.clone(), t()));
    }
    out
}

/// What a check-in adds to the aggregates.
fn checkin_contributions(row: &CheckinRow) -> Vec<Contribution> {
    if row.withdrawn {
        return Vec::new();
    }
    let kind = if row.walk_in {
        "checkin_walk"
    } else {
        "checkin_pre"
    };
    vec![
        ("checkin", row.event.clone(), Some(row.attendee.clone())),
        (kind, row.event.clone(), Some(row.attendee.clone())),
    ]
}

/// The records a change touched, as validation read them: made by [`Changes::read`] before the
/// store's writer is taken, so that only SQL runs under it ([`Changes::write`]).
#[derive(Debug, Default)]
pub struct Changes {
    signatures: Vec<Signature>,
    checkins: Vec<Checkin>,
    strikes: Vec<Strike>,
    sheets: Vec<Sheet>,
}

impl Changes {
    /// Every record `acc` touched: as `validate` checked it ([`Accepted::checked`]), else read
    /// from `after`.
    pub fn read(
        header: &DocHeader,
        acc: &Accepted,
        after: &Automerge,
    ) -> Result<Changes, ProjectionError> {
        fn each<T: Clone>(
            ids: impl Iterator<Item = impl AsRef<str>>,
            checked: &BTreeMap<String, T>,
            read: impl Fn(&str) -> Result<Option<T>, tally_core::validate::Rejection>,
            out: &mut Vec<T>,
        ) -> Result<(), ProjectionError> {
            for id in ids {
                let id = id.as_ref();
                match checked.get(id) {
                    Some(r) => out.push(r.clone()),
                    None => out.extend(
                        read(id).map_err(|e| ProjectionError::Record(id.into(), e.to_string()))?,
                    ),
                }
            }
            Ok(())
        }
        let (k, mut c) = (&acc.checked, Changes::default());
        match header.kind {
            DocKind::Collection => {
                let ids = acc.in_container(SIGNATURES);
                each(
                    ids,
                    &k.signatures,
                    |id| collection::signature(after, id),
                    &mut c.signatures,
                )?;
                let ids = acc.in_container(CHECKINS);
                each(
                    ids,
                    &k.checkins,
                    |id| collection::checkin(after, id),
                    &mut c.checkins,
                )?;
            }
            DocKind::Review => {
                let ids = acc.in_container(STRIKES);
                each(
                    ids,
                    &k.strikes,
                    |id| review::strike(after, id),
                    &mut c.strikes,
                )?;
                let ids = acc.in_container(SHEETS);
                each(ids, &k.sheets, |id| review::sheet(after, id), &mut c.sheets)?;
            }
            DocKind::Campaign | DocKind::Totals => {}
        }
        Ok(c)
    }

    /// Updates the rows (and aggregates) of the records. `timezone` is the campaign's, for the
    /// day column.
    pub fn write(
        &self,
        conn: &Connection,
        doc_id: &str,
        header: &DocHeader,
        timezone: &str,
    ) -> Result<(), ProjectionError> {
        let mut batch = Batch::new(&header.campaign);
        for s in &self.signatures {
            batch.signature(conn, doc_id, s, timezone)?;
        }
        for c in &self.checkins {
            batch.checkin(conn, doc_id, c)?;
        }
        for s in &self.strikes {
            batch.strike(conn, s)?;
        }
        for s in &self.sheets {
            upsert_sheet_row(conn, &header.campaign, s)?;
        }
        batch.flush(conn)
    }
}

/// Updates the rows (and aggregates) of every record `acc` touched, reading them from `after`.
/// `timezone` is the campaign's, for the day column.
pub fn apply(
    conn: &Connection,
    doc_id: &str,
    header: &DocHeader,
    acc: &Accepted,
    after: &Automerge,
    timezone: &str,
) -> Result<(), ProjectionError> {
    Changes::read(header, acc, after)?.write(conn, doc_id, header, timezone)
}

fn is_struck(conn: &Connection, campaign: &str, sig_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM strikes WHERE campaign = ?1 AND sig_id = ?2 AND revoked = 0)",
    )?
    .query_row(params![campaign, sig_id], |r| r.get(0))
}

/// Writes a signature's row; returns the row it replaced.
fn upsert_signature_row(
    conn: &Connection,
    doc_id: &str,
    campaign: &str,
    sig_id: &str,
    row: &SigRow,
) -> rusqlite::Result<Option<SigRow>> {
    let old = conn
        .prepare_cached(
            "SELECT event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn
             FROM signatures WHERE doc_id = ?1 AND sig_id = ?2",
        )?
        .query_row(params![doc_id, sig_id], sig_row)
        .optional()?;
    if old.as_ref() == Some(row) {
        return Ok(old);
    }
    conn.prepare_cached(
        "INSERT INTO signatures (doc_id, sig_id, campaign, event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (doc_id, sig_id) DO UPDATE SET event = excluded.event, day = excluded.day, city = excluded.city,
           fsa = excluded.fsa, riding = excluded.riding, consent = excluded.consent, dup = excluded.dup, withdrawn = excluded.withdrawn",
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
        row.withdrawn
    ])?;
    Ok(old)
}

/// A `signatures` row, selected as `event, collected_at, day, collected_by, city, fsa, riding,
/// consent, dup, withdrawn`.
fn sig_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SigRow> {
    Ok(SigRow {
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

fn read_sig_rows(conn: &Connection, campaign: &str, sig_id: &str) -> rusqlite::Result<Vec<SigRow>> {
    conn.prepare_cached(
        "SELECT event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn
         FROM signatures WHERE campaign = ?1 AND sig_id = ?2 AND withdrawn = 0",
    )?
    .query_map(params![campaign, sig_id], sig_row)?
    .collect()
}

fn upsert_checkin_row(
    conn: &Connection,
    doc_id: &str,
    campaign: &str,
    c: &Checkin,
) -> rusqlite::Result<Option<CheckinRow>> {
    let old = conn
        .prepare_cached(
            "SELECT event, attendee, walk_in, withdrawn FROM checkins WHERE doc_id = ?1 AND ci_id = ?2",
        )?
        .query_row(params![doc_id, c.id], |r| {
            Ok(CheckinRow {
                event: r.get(0)?,
                attendee: r.get(1)?,
                walk_in: r.get(2)?,
                withdrawn: r.get(3)?,
            })
        })
        .optional()?;
    conn.prepare_cached(
        "INSERT INTO checkins (doc_id, ci_id, campaign, event, attendee, at, by_id, walk_in, withdrawn)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (doc_id, ci_id) DO UPDATE SET attendee = excluded.attendee, walk_in = excluded.walk_in, withdrawn = excluded.withdrawn",
    )?
    .execute(params![doc_id, c.id, campaign, c.event, c.attendee, c.at, c.by, c.walk_in, c.withdrawn])?;
    Ok(old)
}

fn upsert_strike_row(conn: &Connection, campaign: &str, s: &Strike) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO strikes (campaign, sig_id, reason, by_id, at, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (campaign, sig_id) DO UPDATE SET reason = excluded.reason, by_id = excluded.by_id, at = excluded.at, revoked = excluded.revoked",
    )?
    .execute(params![campaign, s.signature, s.reason.as_str(), s.by, s.at, s.revoked])?;
    Ok(())
}

fn upsert_sheet_row(conn: &Connection, campaign: &str, s: &Sheet) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sheets (campaign, serial, count, riding, status) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (campaign, serial) DO UPDATE SET count = excluded.count, riding = excluded.riding, status = excluded.status",
    )?
    .execute(params![campaign, s.serial, s.count, s.riding, s.status.as_str()])?;
    Ok(())
}

/// The aggregate changes of one campaign's records, gathered while their rows are written and
/// netted before they touch the aggregate tables: each cell is written once per batch, and a
/// record whose correction leaves a cell unchanged costs that cell nothing. The hub makes one
/// batch per accepted change ([`apply`]); the latency example makes one per synthetic sync.
pub struct Batch {
    campaign: String,
    /// Net change of each cell's record count.
    cells: HashMap<(&'static str, String), i64>,
    /// Net change of each token's record count in a cell.
    members: HashMap<(&'static str, String, String), i64>,
}

impl Batch {
    /// An empty batch for `campaign`.
    pub fn new(campaign: &str) -> Batch {
        Batch {
            campaign: campaign.to_string(),
            cells: HashMap::new(),
            members: HashMap::new(),
        }
    }

    fn add(&mut self, contributions: Vec<Contribution>, sign: i64) {
        for (dim, key, token) in contributions {
            if let Some(t) = token {
                *self.members.entry((dim, key.clone(), t)).or_default() += sign;
            }
            *self.cells.entry((dim, key)).or_default() += sign;
        }
    }

    /// Projects one signature of collection `doc_id`: writes its row now, its aggregates at
    /// [`Batch::flush`].
    pub fn signature(
        &mut self,
        conn: &Connection,
        doc_id: &str,
        s: &Signature,
        timezone: &str,
    ) -> Result<(), ProjectionError> {
        let row = SigRow::of(s, timezone);
        let old = upsert_signature_row(conn, doc_id, &self.campaign, &s.id, &row)?;
        if old.as_ref() == Some(&row) {
            return Ok(());
        }
        let struck = is_struck(conn, &self.campaign, &s.id)?;
        if let Some(o) = old {
            self.add(sig_contributions(&o, struck), -1);
        }
        self.add(sig_contributions(&row, struck), 1);
        Ok(())
    }

    /// Projects one check-in of collection `doc_id`.
    pub fn checkin(
        &mut self,
        conn: &Connection,
        doc_id: &str,
        c: &Checkin,
    ) -> Result<(), ProjectionError> {
        let old = upsert_checkin_row(conn, doc_id, &self.campaign, c)?;
        let row = CheckinRow {
            event: c.event.clone(),
            attendee: c.attendee.clone(),
            walk_in: c.walk_in,
            withdrawn: c.withdrawn,
        };
        if let Some(o) = old {
            self.add(checkin_contributions(&o), -1);
        }
        self.add(checkin_contributions(&row), 1);
        Ok(())
    }

    /// Projects a strike (or its revocation): every signature of the campaign with that id
    /// moves between counted and struck.
    pub fn strike(&mut self, conn: &Connection, s: &Strike) -> Result<(), ProjectionError> {
        let was = is_struck(conn, &self.campaign, &s.signature)?;
        upsert_strike_row(conn, &self.campaign, s)?;
        let now = !s.revoked;
        if was != now {
            for row in read_sig_rows(conn, &self.campaign, &s.signature)? {
                self.add(sig_contributions(&row, was), -1);
                self.add(sig_contributions(&row, now), 1);
            }
        }
        Ok(())
    }

    /// Writes the netted changes to the aggregate tables.
    pub fn flush(self, conn: &Connection) -> Result<(), ProjectionError> {
        let campaign = self.campaign.as_str();
        let drift = |dim: &str, key: &str, what: &str| {
            ProjectionError::Drift(format!("{campaign}/{dim}/{key}: {what}"))
        };
        let mut by_cell: HashMap<(&'static str, String), Vec<(String, i64)>> = HashMap::new();
        for ((dim, key, token), d) in self.members {
            if d != 0 {
                by_cell.entry((dim, key)).or_default().push((token, d));
            }
        }
        let mut keys: HashSet<(&'static str, String)> = by_cell.keys().cloned().collect();
        keys.extend(
            self.cells
                .iter()
                .filter(|(_, d)| **d != 0)
                .map(|(k, _)| k.clone()),
        );
        let mut token_ids: HashMap<String, i64> = HashMap::new();
        for (dim, key) in keys {
            let dn = self.cells.get(&(dim, key.clone())).copied().unwrap_or(0);
            let (key_id, n): (i64, i64) = conn
                .prepare_cached(
                    "INSERT INTO agg_cells (campaign, dim, key, key_id, n, uniq)
                     VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(key_id), 0) + 1 FROM agg_cells), ?4, 0)
                     ON CONFLICT (campaign, dim, key) DO UPDATE SET n = n + excluded.n
                     RETURNING key_id, n",
                )?
                .query_row(params![campaign, dim, key, dn], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
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
                    .prepare_cached(
                        "INSERT INTO agg_members (key_id, token_id, n) VALUES (?1, ?2, ?3)
                         ON CONFLICT (key_id, token_id) DO UPDATE SET n = n + excluded.n
                         RETURNING n",
                    )?
                    .query_row(params![key_id, tid, dm], |r| r.get(0))?;
                let m0 = m - dm;
                if m < 0 || m0 < 0 {
                    return Err(drift(dim, &key, "a token's records below zero"));
                }
                if m0 == 0 && m > 0 {
                    du += 1;
                }
                if m == 0 {
                    conn.prepare_cached(
                        "DELETE FROM agg_members WHERE key_id = ?1 AND token_id = ?2",
                    )?
                    .execute(params![key_id, tid])?;
                    if m0 > 0 {
                        du -= 1;
                    }
                }
            }
            if n == 0 {
                conn.prepare_cached(
                    "DELETE FROM agg_cells WHERE campaign = ?1 AND dim = ?2 AND key = ?3",
                )?
                .execute(params![campaign, dim, key])?;
            } else if du != 0 {
                conn.prepare_cached(
                    "UPDATE agg_cells SET uniq = uniq + ?4 WHERE campaign = ?1 AND dim = ?2 AND key = ?3",
                )?
                .execute(params![campaign, dim, key, du])?;
            }
        }
        Ok(())
    }
}

fn token_id(conn: &Connection, campaign: &str, token: &str) -> rusqlite::Result<i64> {
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
// Queries.

fn paper(conn: &Connection, campaign: &str, t: &mut Totals) -> rusqlite::Result<()> {
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

/// A campaign's totals, read from the aggregate cells.
pub fn totals(conn: &Connection, campaign: &str) -> rusqlite::Result<Totals> {
    let mut t = Totals::default();
    let mut stmt =
        conn.prepare_cached("SELECT dim, key, n, uniq FROM agg_cells WHERE campaign = ?1")?;
    let mut rows = stmt.query([campaign])?;
    while let Some(r) = rows.next()? {
        let dim: String = r.get(0)?;
        let key: String = r.get(1)?;
        let n = r.get::<_, i64>(2)? as u64;
        let uniq = r.get::<_, i64>(3)? as u64;
        let cell = Cell {
            signatures: n,
            unique: uniq,
        };
        match dim.as_str() {
            "all" => (t.signatures, t.unique_signers) = (n, uniq),
            "struck" => t.struck = n,
            "withdrawn" => t.withdrawn = n,
            "event" => _ = t.by_event.insert(key, cell),
            "city" => _ = t.by_city.insert(key, cell),
            "fsa" => _ = t.by_fsa.insert(key, cell),
            "riding" => _ = t.by_riding.insert(key, cell),
            "day" => _ = t.by_day.insert(key, cell),
            "canvasser" => _ = t.by_canvasser.insert(key, cell),
            "checkin" => t.checkins.entry(key).or_default().unique = uniq,
            "checkin_pre" => t.checkins.entry(key).or_default().pre_registered = uniq,
            "checkin_walk" => t.checkins.entry(key).or_default().walk_in = uniq,
            _ => {}
        }
    }
    paper(conn, campaign, &mut t)?;
    Ok(t)
}

/// A campaign's totals narrowed by `filter`: from the aggregates when the filter is empty,
/// otherwise by scanning the matching rows (through the filter indexes).
pub fn query(conn: &Connection, campaign: &str, filter: &Filter) -> rusqlite::Result<Totals> {
    if filter.is_empty() {
        totals(conn, campaign)
    } else {
        scan(conn, campaign, filter)
    }
}

/// A campaign's totals computed by scanning the projection rows that match `filter` (no
/// aggregates). Used for filtered queries, and as the baseline the aggregates are measured
/// against.
pub fn scan(conn: &Connection, campaign: &str, filter: &Filter) -> rusqlite::Result<Totals> {
    let mut where_sig = String::from("s.campaign = ?1");
    let mut where_ci = String::from("campaign = ?1 AND withdrawn = 0");
    let mut sig_args: Vec<rusqlite::types::Value> = vec![campaign.to_string().into()];
    let mut ci_args: Vec<rusqlite::types::Value> = vec![campaign.to_string().into()];
    if let Some(e) = &filter.event {
        sig_args.push(e.clone().into());
        where_sig.push_str(&format!(" AND s.event = ?{}", sig_args.len()));
        ci_args.push(e.clone().into());
        where_ci.push_str(&format!(" AND event = ?{}", ci_args.len()));
    }
    if let Some(from) = filter.from {
        sig_args.push(from.into());
        where_sig.push_str(&format!(" AND s.collected_at >= ?{}", sig_args.len()));
        ci_args.push(from.into());
        where_ci.push_str(&format!(" AND at >= ?{}", ci_args.len()));
    }
    if let Some(to) = filter.to {
        sig_args.push(to.into());
        where_sig.push_str(&format!(" AND s.collected_at < ?{}", sig_args.len()));
        ci_args.push(to.into());
        where_ci.push_str(&format!(" AND at < ?{}", ci_args.len()));
    }
    if let Some(c) = &filter.city {
        sig_args.push(c.clone().into());
        where_sig.push_str(&format!(" AND s.city = ?{}", sig_args.len()));
    }
    if let Some(f) = &filter.fsa {
        sig_args.push(f.clone().into());
        where_sig.push_str(&format!(" AND s.fsa = ?{}", sig_args.len()));
    }

    let mut t = Totals::default();
    let mut all = CellAcc::default();
    let mut dims: [HashMap<String, CellAcc>; 6] = Default::default();
    // Strikes are few: one lookup here instead of one per row.
    let struck: HashSet<String> = conn
        .prepare_cached("SELECT sig_id FROM strikes WHERE campaign = ?1 AND revoked = 0")?
        .query_map([campaign], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let sql = format!(
        "SELECT s.event, s.day, s.collected_by, s.city, s.fsa, s.riding, s.dup, s.withdrawn, s.sig_id
         FROM signatures s WHERE {where_sig}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(sig_args))?;
    while let Some(r) = rows.next()? {
        if r.get::<_, bool>(7)? {
            t.withdrawn += 1;
            continue;
        }
        if struck.contains(r.get_ref(8)?.as_str()?) {
            t.struck += 1;
            continue;
        }
        let dup: String = r.get(6)?;
        all.add(&dup);
        let keys: [Option<String>; 6] = [
            r.get(0)?,
            Some(r.get(3)?),
            Some(r.get(4)?),
            r.get(5)?,
            Some(r.get(1)?),
            Some(r.get(2)?),
        ];
        for (dim, key) in dims.iter_mut().zip(keys) {
            if let Some(k) = key {
                dim.entry(k).or_default().add(&dup);
            }
        }
    }
    let all = all.cell();
    (t.signatures, t.unique_signers) = (all.signatures, all.unique);
    let [ev, city, fsa, riding, day, canvasser] = dims;
    t.by_event = cells(ev);
    t.by_city = cells(city);
    t.by_fsa = cells(fsa);
    t.by_riding = cells(riding);
    t.by_day = cells(day);
    t.by_canvasser = cells(canvasser);

    if filter.event.is_none() && filter.from.is_none() && filter.to.is_none() {
        // City and FSA do not narrow check-ins: theirs are the whole campaign's, in the cells.
        let mut stmt = conn.prepare_cached(
            "SELECT dim, key, uniq FROM agg_cells
             WHERE campaign = ?1 AND dim IN ('checkin', 'checkin_pre', 'checkin_walk')",
        )?;
        let mut rows = stmt.query([campaign])?;
        while let Some(r) = rows.next()? {
            let cell = t.checkins.entry(r.get(1)?).or_default();
            let uniq = r.get::<_, i64>(2)? as u64;
            match r.get_ref(0)?.as_str()? {
                "checkin" => cell.unique = uniq,
                "checkin_pre" => cell.pre_registered = uniq,
                _ => cell.walk_in = uniq,
            }
        }
        paper(conn, campaign, &mut t)?;
        return Ok(t);
    }
    let mut sets: HashMap<String, [HashSet<String>; 3]> = HashMap::new();
    let sql = format!("SELECT event, attendee, walk_in FROM checkins WHERE {where_ci}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(ci_args))?;
    while let Some(r) = rows.next()? {
        let event: String = r.get(0)?;
        let attendee: String = r.get(1)?;
        let walk_in: bool = r.get(2)?;
        let s = sets.entry(event).or_default();
        s[0].insert(attendee.clone());
        s[if walk_in { 2 } else { 1 }].insert(attendee);
    }
    t.checkins = sets
        .into_iter()
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
        .collect();
    paper(conn, campaign, &mut t)?;
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// Rebuilding.

/// Counted signatures and live check-ins as (campaign, dim, key, token), and struck and
/// withdrawn signatures (no token): the aggregates' definition in one SQL expression, the
/// independent counterpart of `sig_contributions` and `checkin_contributions`.
const SOURCE: &str = "WITH counted AS (
    SELECT s.* FROM signatures s WHERE s.withdrawn = 0 AND NOT EXISTS
        (SELECT 1 FROM strikes k WHERE k.campaign = s.campaign AND k.sig_id = s.sig_id AND k.revoked = 0)
), src (campaign, dim, key, token) AS (
    SELECT campaign, 'all', '', dup FROM counted
    UNION ALL SELECT campaign, 'event', event, dup FROM counted WHERE event IS NOT NULL
    UNION ALL SELECT campaign, 'city', city, dup FROM counted
    UNION ALL SELECT campaign, 'fsa', fsa, dup FROM counted
    UNION ALL SELECT campaign, 'riding', riding, dup FROM counted WHERE riding IS NOT NULL
    UNION ALL SELECT campaign, 'day', day, dup FROM counted
    UNION ALL SELECT campaign, 'canvasser', collected_by, dup FROM counted
    UNION ALL SELECT campaign, 'checkin', event, attendee FROM checkins WHERE withdrawn = 0
    UNION ALL SELECT campaign, 'checkin_pre', event, attendee FROM checkins WHERE withdrawn = 0 AND walk_in = 0
    UNION ALL SELECT campaign, 'checkin_walk', event, attendee FROM checkins WHERE withdrawn = 0 AND walk_in = 1
    UNION ALL SELECT campaign, 'withdrawn', '', NULL FROM signatures WHERE withdrawn = 1
    UNION ALL SELECT s.campaign, 'struck', '', NULL FROM signatures s WHERE s.withdrawn = 0 AND EXISTS
        (SELECT 1 FROM strikes k WHERE k.campaign = s.campaign AND k.sig_id = s.sig_id AND k.revoked = 0)
)";

/// Recomputes every aggregate table from the projection rows, in one SQL pass; clears the
/// "stale" mark a schema upgrade leaves.
pub fn rebuild_aggregates(conn: &Connection) -> rusqlite::Result<()> {
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
    ))
}

/// Whether a schema upgrade left the aggregates to be rebuilt from existing rows.
pub fn aggregates_stale(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM projection_state WHERE name = 'aggregates' AND value = 'stale')",
        [],
        |r| r.get(0),
    )
}

/// What [`reindex`] rebuilt.
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

fn load(tx: &WriteTx<'_>, doc_id: &str) -> Result<Automerge, ProjectionError> {
    let bad = |e: String| ProjectionError::Load(doc_id.to_string(), e);
    let stored = tx
        .load_document(doc_id)?
        .ok_or_else(|| bad("listed but not stored".into()))?;
    let mut doc = match &stored.snapshot {
        Some(snap) => Automerge::load(snap).map_err(|e| bad(e.to_string()))?,
        None => Automerge::new(),
    };
    for chunk in &stored.incremental {
        doc.load_incremental(chunk)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(doc)
}

/// Rebuilds every projection table from the stored documents, in one write transaction: the
/// rows through the same upserts as the incremental path, then the aggregates from the rows
/// ([`rebuild_aggregates`]). Loads one document at a time.
pub fn reindex(store: &Store) -> Result<ReindexReport, ProjectionError> {
    store.write_with_error(|tx| {
        let conn = tx.conn();
        conn.execute_batch(
            "DELETE FROM signatures; DELETE FROM checkins; DELETE FROM strikes; DELETE FROM sheets;",
        )?;
        let mut report = ReindexReport::default();
        let mut zones: HashMap<String, String> = HashMap::new();
        for meta in tx.list_documents(&DocFilter {
            kind: Some(tally_store::CAMPAIGN_KIND.into()),
            ..DocFilter::default()
        })? {
            let doc = load(tx, &meta.doc_id)?;
            let c = tally_core::campaign::read(&doc)
                .map_err(|e| ProjectionError::Load(meta.doc_id.clone(), e.to_string()))?;
            zones.insert(meta.campaign.clone(), c.timezone);
        }
        for meta in tx.list_documents(&DocFilter::default())? {
            report.documents += 1;
            let unreadable = |e: tally_core::Rejection| {
                ProjectionError::Load(meta.doc_id.clone(), e.to_string())
            };
            let campaign = meta.campaign.as_str();
            match meta.kind.as_str() {
                "collection" => {
                    let doc = load(tx, &meta.doc_id)?;
                    let tz = zones.get(campaign).map_or("UTC", String::as_str);
                    let c = collection::read(&doc).map_err(unreadable)?;
                    for s in c.signatures.values() {
                        upsert_signature_row(conn, &meta.doc_id, campaign, &s.id, &SigRow::of(s, tz))?;
                        report.signatures += 1;
                    }
                    for ci in c.checkins.values() {
                        upsert_checkin_row(conn, &meta.doc_id, campaign, ci)?;
                        report.checkins += 1;
                    }
                }
                "review" => {
                    let doc = load(tx, &meta.doc_id)?;
                    let r = review::read(&doc).map_err(unreadable)?;
                    for s in r.strikes.values() {
                        upsert_strike_row(conn, campaign, s)?;
                        report.strikes += 1;
                    }
                    for s in r.sheets.values() {
                        upsert_sheet_row(conn, campaign, s)?;
                        report.sheets += 1;
                    }
                }
                _ => {}
            }
        }
        rebuild_aggregates(conn)?;
        report.cells = conn.query_row("SELECT COUNT(*) FROM agg_cells", [], |r| r.get::<_, i64>(0))? as u64;
        Ok(report)
    })
}

/// Every projection table as sorted text lines, with aggregate members named by their cell and
/// token instead of row ids: what `tally reindex` must reproduce exactly. (The token interning
/// table itself is left out: it may keep tokens no record uses any more.)
pub fn dump(conn: &Connection) -> rusqlite::Result<BTreeMap<&'static str, Vec<String>>> {
    let queries: [(&'static str, &str); 6] = [
        (
            "signatures",
            "SELECT doc_id, sig_id, campaign, event, collected_at, day, collected_by, city, fsa, riding, consent, dup, withdrawn FROM signatures",
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tally_core::fixtures::{NOW, World};
    use tally_core::review::StrikeReason;

    use super::*;

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
            .write_with_error::<_, ProjectionError>(|tx| {
                let c = tx.conn();
                let mut b = Batch::new(&camp);
                b.strike(c, &strike("s3", false))?; // before its row exists
                b.signature(
                    c,
                    "docA",
                    &sig("s1", "Amara Okafor", "Toronto"),
                    "America/Toronto",
                )?;
                b.signature(
                    c,
                    "docA",
                    &sig("s2", "Amara Okafor", "Toronto"),
                    "America/Toronto",
                )?;
                b.signature(
                    c,
                    "docB",
                    &sig("s3", "Li Wei", "Hamilton"),
                    "America/Toronto",
                )?;
                b.checkin(c, "docA", &world.checkin("dev1", "c1", "Li Wei", true))?;
                b.flush(c)?;
                let mut b = Batch::new(&camp);
                let mut moved = sig("s2", "Li Wei", "Hamilton");
                b.signature(c, "docA", &moved, "America/Toronto")?; // a correction
                moved.withdrawn = true;
                b.signature(c, "docA", &moved, "America/Toronto")?; // then withdrawn
                b.strike(c, &strike("s3", true))?; // revoked: s3 counts again
                b.strike(c, &strike("s1", false))?;
                // The same person checked in twice (two phones), then one check-in withdrawn;
                // another corrected from one person to another.
                b.checkin(c, "docB", &world.checkin("dev2", "c2", "Li Wei", false))?;
                b.checkin(
                    c,
                    "docB",
                    &world.checkin("dev2", "c3", "Amara Okafor", false),
                )?;
                b.flush(c)?;
                let mut b = Batch::new(&camp);
                let mut gone = world.checkin("dev1", "c1", "Li Wei", true);
                gone.withdrawn = true;
                b.checkin(c, "docA", &gone)?;
                b.checkin(c, "docB", &world.checkin("dev2", "c3", "Li Wei", false))?;
                b.flush(c)?;
                Ok(())
            })
            .unwrap();
        let (incremental, t) = store.read(|c| Ok((dump(c)?, totals(c, &camp)?))).unwrap();
        assert_eq!((t.signatures, t.struck, t.withdrawn), (1, 1, 1));
        let rally = &t.checkins["rally1"];
        assert_eq!(
            (rally.unique, rally.walk_in, rally.pre_registered),
            (1, 0, 1),
            "{rally:?}"
        );
        store
            .write(|tx| Ok(rebuild_aggregates(tx.conn())?))
            .unwrap();
        let rebuilt = store.read(|c| Ok(dump(c)?)).unwrap();
        assert_eq!(incremental, rebuilt);
        let scanned = store
            .read(|c| Ok(scan(c, &camp, &Filter::default())?))
            .unwrap();
        assert_eq!(t, scanned);
    }
}
