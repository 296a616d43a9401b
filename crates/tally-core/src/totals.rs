//! The reference totals of a campaign, computed straight from its documents: signatures counted
//! (neither withdrawn nor struck), unique signers (distinct duplicate tokens), each broken down by
//! event, city, FSA, riding, day (in the campaign's time zone) and canvasser; unique check-ins per
//! event; paper sheets beside the digital count. The server answers from a SQL projection; tests
//! hold that projection equal to this function.
//!
//! A city is counted under its [`city_key`] and shown with its most common spelling
//! ([`crate::city`]): `toronto`, `TORONTO` and ` Toronto ` are one cell, `Toronto`.
//!
//! A record counts once per campaign, whichever of a phone's collections hold copies of it (a
//! phone re-writes a record, with the same id, into the next collection of its chain after a
//! refusal or a re-enrollment): [`records`] merges the copies of each id into one effective
//! record, withdrawn if any copy is, its other fields those of one copy chosen by
//! [`SignatureKey`] / [`CheckinKey`] whatever the order the copies arrived in
//! (docs/documents.md, "Counting once"). The server's projection merges its rows with the same
//! keys and [`least_copy`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::TimeZone;

use crate::campaign::Campaign;
use crate::city::{Spellings, city_key, labelled};
use crate::collection::{Checkin, Collection, Signature};
use crate::review::Review;

/// One breakdown cell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// Signatures counted.
    pub signatures: u64,
    /// Distinct signers among them.
    pub unique: u64,
}

/// Check-ins at one event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckinCell {
    /// Distinct attendees.
    pub unique: u64,
    /// Distinct attendees checked in as pre-registered.
    pub pre_registered: u64,
    /// Distinct attendees checked in as walk-ins.
    pub walk_in: u64,
}

/// Paper sheets of one status, or all.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaperCell {
    /// Sheets.
    pub sheets: u64,
    /// Signatures on them.
    pub signatures: u64,
}

/// Paper sheets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaperTotals {
    /// Sheets.
    pub sheets: u64,
    /// Signatures on them.
    pub signatures: u64,
    /// By status: collected, counted, delivered.
    pub by_status: BTreeMap<String, PaperCell>,
}

/// A campaign's totals. Signatures without an event or riding appear in no `by_event` or
/// `by_riding` cell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Signatures counted: not withdrawn, not struck.
    pub signatures: u64,
    /// Distinct duplicate tokens among the counted signatures.
    pub unique_signers: u64,
    /// Struck signatures (not withdrawn, with a strike that is not revoked).
    pub struck: u64,
    /// Withdrawn signatures.
    pub withdrawn: u64,
    /// By event id.
    pub by_event: BTreeMap<String, Cell>,
    /// By city: one cell per [`city_key`] (case, spacing and accents folded), keyed by the
    /// group's most common spelling ([`Spellings::label`]).
    pub by_city: BTreeMap<String, Cell>,
    /// By FSA.
    pub by_fsa: BTreeMap<String, Cell>,
    /// By riding.
    pub by_riding: BTreeMap<String, Cell>,
    /// By day, YYYY-MM-DD in the campaign's time zone.
    pub by_day: BTreeMap<String, Cell>,
    /// By canvasser id.
    pub by_canvasser: BTreeMap<String, Cell>,
    /// Check-ins by event id.
    pub checkins: BTreeMap<String, CheckinCell>,
    /// Paper sheets.
    pub paper: PaperTotals,
}

/// The day of `ms` in the time zone `tz` (UTC if `tz` is not a zone name).
pub fn day_of(ms: i64, tz: &str) -> String {
    let tz: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::UTC);
    match tz.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "invalid".to_string(),
    }
}

/// The start of the day of `ms` in the time zone `tz` (UTC if `tz` is not a zone name), and,
/// with `up`, the start of the next day unless `ms` is already a day's start: a time filter
/// snapped outward to whole days, so that a window cannot be drawn around one signature.
pub fn snap_to_day(ms: i64, tz: &str, up: bool) -> i64 {
    let tz: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::UTC);
    let Some(t) = tz.timestamp_millis_opt(ms).single() else {
        return ms;
    };
    let start = |d: chrono::NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .and_then(|n| tz.from_local_datetime(&n).earliest())
            .map(|t| t.timestamp_millis())
    };
    let day = t.date_naive();
    match start(day) {
        Some(s) if !up || s == ms => s,
        Some(_) => day.succ_opt().and_then(start).unwrap_or(ms),
        None => ms,
    }
}

/// One totals cell being counted: signatures, and the distinct duplicate tokens among them.
/// Shared with the server's row-scanning totals, so both count a cell the same way.
#[derive(Default)]
pub struct CellAcc {
    signatures: u64,
    tokens: BTreeSet<String>,
}

impl CellAcc {
    /// Counts one signature with duplicate token `token`.
    pub fn add(&mut self, token: &str) {
        self.signatures += 1;
        if !self.tokens.contains(token) {
            self.tokens.insert(token.to_string());
        }
    }

    /// The cell counted so far.
    pub fn cell(&self) -> Cell {
        Cell {
            signatures: self.signatures,
            unique: self.tokens.len() as u64,
        }
    }
}

/// A breakdown's finished cells, by key.
pub fn cells(map: impl IntoIterator<Item = (String, CellAcc)>) -> BTreeMap<String, Cell> {
    map.into_iter().map(|(k, a)| (k, a.cell())).collect()
}

/// Is this signature counted, given the review?
pub fn counts(sig: &Signature, review: &Review) -> bool {
    !sig.withdrawn && !is_struck(sig, review)
}

fn is_struck(sig: &Signature, review: &Review) -> bool {
    review.strikes.get(&sig.id).is_some_and(|s| !s.revoked)
}

/// Which copy of a signature speaks for it when several collections hold one with the same id:
/// the least under this order, the fields compared in the order they are declared (`None`
/// before any value, texts byte by byte, `false` before `true`). It holds every field the
/// totals read, so copies that tie count alike; the SQL projection orders its rows by the same
/// columns, in the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignatureKey<'a> {
    /// When it was collected.
    pub collected_at: i64,
    /// By which device.
    pub collected_by: &'a str,
    /// At which event.
    pub event: Option<&'a str>,
    /// The signer's city.
    pub city: &'a str,
    /// The signer's FSA.
    pub fsa: &'a str,
    /// The signer's riding.
    pub riding: Option<&'a str>,
    /// Consent to contact.
    pub consent_contact: bool,
    /// The duplicate token.
    pub dup: &'a str,
}

impl<'a> SignatureKey<'a> {
    /// The key of a signature.
    pub fn of(s: &'a Signature) -> SignatureKey<'a> {
        SignatureKey {
            collected_at: s.collected_at,
            collected_by: &s.collected_by,
            event: s.event.as_deref(),
            city: &s.city,
            fsa: &s.fsa,
            riding: s.riding.as_deref(),
            consent_contact: s.consent_contact,
            dup: &s.dup,
        }
    }
}

/// Which copy of a check-in speaks for it: the least under this order (as [`SignatureKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CheckinKey<'a> {
    /// When.
    pub at: i64,
    /// By which device.
    pub by: &'a str,
    /// At which event.
    pub event: &'a str,
    /// The attendee token.
    pub attendee: &'a str,
    /// A walk-in.
    pub walk_in: bool,
}

impl<'a> CheckinKey<'a> {
    /// The key of a check-in.
    pub fn of(c: &'a Checkin) -> CheckinKey<'a> {
        CheckinKey {
            at: c.at,
            by: &c.by,
            event: &c.event,
            attendee: &c.attendee,
            walk_in: c.walk_in,
        }
    }
}

/// The copies of one record merged: the copy that speaks for it (the least by `key`; among
/// copies that tie, the first) and whether any copy is withdrawn (withdrawal is one-way, so a
/// record withdrawn in one collection stays withdrawn whatever the others say). `None` for no
/// copies.
pub fn least_copy<'a, T, K: Ord>(
    copies: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&'a T) -> K,
    withdrawn: impl Fn(&T) -> bool,
) -> Option<(&'a T, bool)> {
    let mut best: Option<(&'a T, K, bool)> = None;
    for copy in copies {
        let k = key(copy);
        let w = withdrawn(copy);
        best = Some(match best {
            Some((b, bk, bw)) if bk <= k => (b, bk, bw || w),
            Some((_, _, bw)) => (copy, k, bw || w),
            None => (copy, k, w),
        });
    }
    best.map(|(b, _, w)| (b, w))
}

/// A campaign's records, each once: what the totals and the export count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Signatures by id.
    pub signatures: BTreeMap<String, Signature>,
    /// Check-ins by id.
    pub checkins: BTreeMap<String, Checkin>,
}

/// Every record of `campaign` in `collections`, each id once (docs/documents.md, "Counting
/// once"): the copy that speaks for it ([`SignatureKey`], then the sealed bytes, so that even
/// the export does not depend on the order of `collections`; [`CheckinKey`]), withdrawn if any
/// copy is. Collections of other campaigns are ignored; the same collection given twice counts
/// once.
pub fn records(campaign: &str, collections: &[Collection]) -> Records {
    let mut sigs: BTreeMap<&str, Vec<&Signature>> = BTreeMap::new();
    let mut cis: BTreeMap<&str, Vec<&Checkin>> = BTreeMap::new();
    for c in collections.iter().filter(|c| c.campaign == campaign) {
        for s in c.signatures.values() {
            sigs.entry(&s.id).or_default().push(s);
        }
        for ci in c.checkins.values() {
            cis.entry(&ci.id).or_default().push(ci);
        }
    }
    let mut out = Records::default();
    for (id, copies) in sigs {
        fn key(s: &Signature) -> (SignatureKey<'_>, &[u8]) {
            (SignatureKey::of(s), &s.sealed)
        }
        if let Some((s, withdrawn)) = least_copy(copies, key, |s| s.withdrawn) {
            let mut s = s.clone();
            s.withdrawn = withdrawn;
            out.signatures.insert(id.to_string(), s);
        }
    }
    for (id, copies) in cis {
        if let Some((c, withdrawn)) = least_copy(copies, CheckinKey::of, |c| c.withdrawn) {
            let mut c = c.clone();
            c.withdrawn = withdrawn;
            out.checkins.insert(id.to_string(), c);
        }
    }
    out
}

/// Computes a campaign's totals from its documents, each record once ([`records`]).
/// Collections of other campaigns are ignored.
pub fn totals(campaign: &Campaign, collections: &[Collection], review: &Review) -> Totals {
    totals_of(campaign, &records(&campaign.id, collections), review)
}

/// The totals of a campaign's records (each once, as [`records`] gives them).
pub fn totals_of(campaign: &Campaign, records: &Records, review: &Review) -> Totals {
    let mut t = Totals::default();
    let mut all = CellAcc::default();
    let mut dims: [BTreeMap<String, CellAcc>; 6] = Default::default();
    let mut spellings: BTreeMap<String, Spellings> = BTreeMap::new();
    let mut checkins: BTreeMap<String, [BTreeSet<&str>; 3]> = BTreeMap::new();
    for sig in records.signatures.values() {
        if sig.withdrawn {
            t.withdrawn += 1;
            continue;
        }
        if is_struck(sig, review) {
            t.struck += 1;
            continue;
        }
        all.add(&sig.dup);
        let city = city_key(&sig.city);
        spellings.entry(city.clone()).or_default().add(&sig.city, 1);
        let keys = [
            sig.event.clone(),
            Some(city),
            Some(sig.fsa.clone()),
            sig.riding.clone(),
            Some(day_of(sig.collected_at, &campaign.timezone)),
            Some(sig.collected_by.clone()),
        ];
        for (dim, key) in dims.iter_mut().zip(keys) {
            if let Some(k) = key {
                dim.entry(k).or_default().add(&sig.dup);
            }
        }
    }
    for ci in records.checkins.values().filter(|ci| !ci.withdrawn) {
        let sets = checkins.entry(ci.event.clone()).or_default();
        sets[0].insert(&ci.attendee);
        sets[if ci.walk_in { 2 } else { 1 }].insert(&ci.attendee);
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
    t.checkins = checkins
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
    for sheet in review.sheets.values() {
        let n = sheet.count.max(0) as u64;
        t.paper.sheets += 1;
        t.paper.signatures += n;
        let cell = t
            .paper
            .by_status
            .entry(sheet.status.as_str().to_string())
            .or_default();
        cell.sheets += 1;
        cell.signatures += n;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_follow_the_campaign_time_zone() {
        // 2025-06-15T03:00:00Z is still June 14 in Toronto.
        let ms = 1_749_956_400_000;
        assert_eq!(day_of(ms, "America/Toronto"), "2025-06-14");
        assert_eq!(day_of(ms, "UTC"), "2025-06-15");
    }
}
