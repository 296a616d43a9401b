//! The cells a record counts in: the pure mapping the server's totals projection keeps its
//! aggregates by, beside the reference [`crate::totals`] it must equal.
//!
//! A projection row ([`SignatureRow`], [`CheckinRow`]) holds what totals read of a record; the
//! copies of one record id (a phone re-writes a record into the next collection of its chain)
//! merge into one ([`SignatureRow::merged`]), ranked as the reference ranks them. A merged record
//! adds one [`Contribution`] to each cell it counts in ([`signature_cells`], [`checkin_cells`]):
//! a count, and for unique counts a token (the duplicate or attendee token). Adding the
//! contributions of every record up into cells and reading the cells back ([`totals_of_cells`])
//! gives [`crate::totals::totals_of`], less the paper sheets (which are not records); the tests
//! below hold it to that over random records.

use std::collections::BTreeMap;

use crate::city::{Spellings, city_key, labelled};
use crate::collection::{Checkin, Signature};
use crate::totals::{Cell, CheckinKey, SignatureKey, Totals, day_of, least_copy};

/// A dimension of the aggregates: what a cell's key means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// Every counted signature (key empty).
    All,
    /// Struck signatures (key empty, no token).
    Struck,
    /// Withdrawn signatures (key empty, no token).
    Withdrawn,
    /// By event id.
    Event,
    /// By city, under its [`city_key`].
    City,
    /// How many counted signatures spell a city this way (key: the spelling, no token): what
    /// chooses the city's label.
    CitySpelling,
    /// By FSA.
    Fsa,
    /// By riding.
    Riding,
    /// By day in the campaign's time zone.
    Day,
    /// By canvasser id.
    Canvasser,
    /// Live check-ins by event (token: the attendee).
    Checkin,
    /// Live pre-registered check-ins by event.
    CheckinPre,
    /// Live walk-in check-ins by event.
    CheckinWalk,
}

impl Dim {
    /// Every dimension.
    pub const ALL: [Dim; 13] = [
        Dim::All,
        Dim::Struck,
        Dim::Withdrawn,
        Dim::Event,
        Dim::City,
        Dim::CitySpelling,
        Dim::Fsa,
        Dim::Riding,
        Dim::Day,
        Dim::Canvasser,
        Dim::Checkin,
        Dim::CheckinPre,
        Dim::CheckinWalk,
    ];

    /// The stored name (the projection's `dim` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::All => "all",
            Dim::Struck => "struck",
            Dim::Withdrawn => "withdrawn",
            Dim::Event => "event",
            Dim::City => "city",
            Dim::CitySpelling => "city_spelling",
            Dim::Fsa => "fsa",
            Dim::Riding => "riding",
            Dim::Day => "day",
            Dim::Canvasser => "canvasser",
            Dim::Checkin => "checkin",
            Dim::CheckinPre => "checkin_pre",
            Dim::CheckinWalk => "checkin_walk",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One unit a record adds to a cell: the cell (`dim`, `key`) and, for a cell that counts
/// distinct tokens, the record's token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Contribution {
    /// The dimension.
    pub dim: Dim,
    /// The cell's key in it.
    pub key: String,
    /// The record's token, for a cell that counts distinct ones.
    pub token: Option<String>,
}

impl Contribution {
    fn new(dim: Dim, key: impl Into<String>, token: Option<String>) -> Contribution {
        Contribution {
            dim,
            key: key.into(),
            token,
        }
    }
}

/// A signature as the projection holds it: the clear fields totals read (no sealed bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignatureRow {
    /// Event id.
    pub event: Option<String>,
    /// When collected, ms since the epoch.
    pub collected_at: i64,
    /// The day of `collected_at` in the campaign's time zone.
    pub day: String,
    /// The collecting device.
    pub collected_by: String,
    /// The city as typed.
    pub city: String,
    /// The FSA.
    pub fsa: String,
    /// The riding.
    pub riding: Option<String>,
    /// Consent to contact.
    pub consent: bool,
    /// The duplicate token.
    pub dup: String,
    /// Withdrawn.
    pub withdrawn: bool,
}

impl SignatureRow {
    /// The row of a signature in a campaign whose time zone is `timezone`.
    pub fn of(s: &Signature, timezone: &str) -> SignatureRow {
        SignatureRow {
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

    /// The order in which copies of one signature are ranked (the reference's [`SignatureKey`]).
    pub fn key(&self) -> SignatureKey<'_> {
        SignatureKey {
            collected_at: self.collected_at,
            collected_by: &self.collected_by,
            event: self.event.as_deref(),
            city: &self.city,
            fsa: &self.fsa,
            riding: self.riding.as_deref(),
            consent_contact: self.consent,
            dup: &self.dup,
        }
    }

    /// The record the copies of one signature make (docs/documents.md, "Counting once"): the
    /// least copy, withdrawn if any copy is; `None` for no copies.
    pub fn merged<'a>(copies: impl IntoIterator<Item = &'a SignatureRow>) -> Option<SignatureRow> {
        least_copy(copies, SignatureRow::key, |r| r.withdrawn).map(|(r, withdrawn)| SignatureRow {
            withdrawn,
            ..r.clone()
        })
    }
}

/// A check-in as the projection holds it: the fields totals use and those that rank copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckinRow {
    /// Event id.
    pub event: String,
    /// The attendee token.
    pub attendee: String,
    /// When, ms since the epoch.
    pub at: i64,
    /// The checking-in device.
    pub by: String,
    /// A walk-in.
    pub walk_in: bool,
    /// Withdrawn.
    pub withdrawn: bool,
}

impl CheckinRow {
    /// The row of a check-in.
    pub fn of(c: &Checkin) -> CheckinRow {
        CheckinRow {
            event: c.event.clone(),
            attendee: c.attendee.clone(),
            at: c.at,
            by: c.by.clone(),
            walk_in: c.walk_in,
            withdrawn: c.withdrawn,
        }
    }

    /// As [`SignatureRow::key`] ([`CheckinKey`]).
    pub fn key(&self) -> CheckinKey<'_> {
        CheckinKey {
            at: self.at,
            by: &self.by,
            event: &self.event,
            attendee: &self.attendee,
            walk_in: self.walk_in,
        }
    }

    /// As [`SignatureRow::merged`].
    pub fn merged<'a>(copies: impl IntoIterator<Item = &'a CheckinRow>) -> Option<CheckinRow> {
        least_copy(copies, CheckinRow::key, |r| r.withdrawn).map(|(r, withdrawn)| CheckinRow {
            withdrawn,
            ..r.clone()
        })
    }
}

/// The cells a (merged) signature counts in, given whether it is struck.
pub fn signature_cells(row: &SignatureRow, struck: bool) -> Vec<Contribution> {
    if row.withdrawn {
        return vec![Contribution::new(Dim::Withdrawn, "", None)];
    }
    if struck {
        return vec![Contribution::new(Dim::Struck, "", None)];
    }
    let t = || Some(row.dup.clone());
    let mut out = vec![
        Contribution::new(Dim::All, "", t()),
        Contribution::new(Dim::City, city_key(&row.city), t()),
        Contribution::new(Dim::CitySpelling, row.city.clone(), None),
        Contribution::new(Dim::Fsa, row.fsa.clone(), t()),
        Contribution::new(Dim::Day, row.day.clone(), t()),
        Contribution::new(Dim::Canvasser, row.collected_by.clone(), t()),
    ];
    if let Some(e) = &row.event {
        out.push(Contribution::new(Dim::Event, e.clone(), t()));
    }
    if let Some(r) = &row.riding {
        out.push(Contribution::new(Dim::Riding, r.clone(), t()));
    }
    out
}

/// The cells a (merged) check-in counts in: none once withdrawn.
pub fn checkin_cells(row: &CheckinRow) -> Vec<Contribution> {
    if row.withdrawn {
        return Vec::new();
    }
    let kind = if row.walk_in {
        Dim::CheckinWalk
    } else {
        Dim::CheckinPre
    };
    vec![
        Contribution::new(Dim::Checkin, row.event.clone(), Some(row.attendee.clone())),
        Contribution::new(kind, row.event.clone(), Some(row.attendee.clone())),
    ]
}

/// The totals that aggregate cells read as: each cell is (dim, key, records, distinct tokens).
/// Paper sheets are not cells: the caller adds them.
pub fn totals_of_cells(cells: impl IntoIterator<Item = (Dim, String, u64, u64)>) -> Totals {
    let mut t = Totals::default();
    let mut spellings: BTreeMap<String, Spellings> = BTreeMap::new();
    for (dim, key, n, uniq) in cells {
        let cell = Cell {
            signatures: n,
            unique: uniq,
        };
        match dim {
            Dim::All => (t.signatures, t.unique_signers) = (n, uniq),
            Dim::Struck => t.struck = n,
            Dim::Withdrawn => t.withdrawn = n,
            Dim::Event => _ = t.by_event.insert(key, cell),
            Dim::City => _ = t.by_city.insert(key, cell),
            Dim::CitySpelling => spellings.entry(city_key(&key)).or_default().add(&key, n),
            Dim::Fsa => _ = t.by_fsa.insert(key, cell),
            Dim::Riding => _ = t.by_riding.insert(key, cell),
            Dim::Day => _ = t.by_day.insert(key, cell),
            Dim::Canvasser => _ = t.by_canvasser.insert(key, cell),
            Dim::Checkin => t.checkins.entry(key).or_default().unique = uniq,
            Dim::CheckinPre => t.checkins.entry(key).or_default().pre_registered = uniq,
            Dim::CheckinWalk => t.checkins.entry(key).or_default().walk_in = uniq,
        }
    }
    t.by_city = labelled(std::mem::take(&mut t.by_city), &spellings);
    t
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::collection::Collection;
    use crate::fixtures::{EVENT, NOW, World};
    use crate::review::{Review, Strike, StrikeReason};
    use crate::totals::{records, totals_of};

    #[test]
    fn every_dim_reads_back_from_its_name() {
        for d in Dim::ALL {
            assert_eq!(Dim::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dim::parse("nope"), None);
    }

    proptest! {
        /// Adding up every record's contributions into cells and reading the cells gives the
        /// reference totals (paper aside), whatever the records: the mapping is the
        /// reference's equal.
        #[test]
        fn the_cells_of_the_records_read_as_the_reference_totals(
            sigs in prop::collection::vec(
                (0..3usize, 0..4usize, 0..5usize, any::<bool>(), any::<bool>(), 0..3i64, any::<bool>()),
                0..24,
            ),
            checkins in prop::collection::vec((0..3usize, any::<bool>(), any::<bool>()), 0..8),
        ) {
            const PEOPLE: [(&str, &str); 3] =
                [("Amara Okafor", "M5V 2T6"), ("Li Wei", "L8P 4R5"), ("José Ramírez", "H2X 1Y4")];
            const CITIES: [&str; 5] = ["Toronto", "TORONTO", " toronto ", "Montréal", "Montreal"];
            let world = World::new();
            let tz = &world.campaign.timezone;
            let mut col = Collection {
                campaign: world.campaign.id.clone(),
                owner: "dev1".into(),
                signatures: BTreeMap::new(),
                checkins: BTreeMap::new(),
            };
            let mut review = Review::default();
            for (i, (p, c, day, event, riding, _, struck)) in sigs.iter().enumerate() {
                let id = format!("s{i}");
                let (name, postal) = PEOPLE[*p];
                let mut s = world.signature("dev1", &id, name, postal, "Toronto");
                s.city = CITIES[*c].into();
                s.collected_at = NOW + *day as i64 * 86_400_000;
                s.event = event.then(|| EVENT.to_string());
                s.riding = riding.then(|| "Spadina".to_string());
                s.withdrawn = sigs[i].5 == 0;
                if *struck {
                    review.strikes.insert(id.clone(), Strike {
                        signature: id.clone(),
                        reason: StrikeReason::Duplicate,
                        by: "org1".into(),
                        at: NOW,
                        revoked: i % 3 == 0,
                    });
                }
                col.signatures.insert(id, s);
            }
            for (i, (p, walk_in, withdrawn)) in checkins.iter().enumerate() {
                let mut c = world.checkin("dev1", &format!("c{i}"), PEOPLE[*p].0, *walk_in);
                c.withdrawn = *withdrawn;
                col.checkins.insert(c.id.clone(), c);
            }
            let mut cells: BTreeMap<(Dim, String), (u64, BTreeSet<String>)> = BTreeMap::new();
            let mut add = |cs: Vec<Contribution>| {
                for c in cs {
                    let cell = cells.entry((c.dim, c.key)).or_default();
                    cell.0 += 1;
                    cell.1.extend(c.token);
                }
            };
            for s in col.signatures.values() {
                let struck = review.strikes.get(&s.id).is_some_and(|k| !k.revoked);
                add(signature_cells(&SignatureRow::of(s, tz), struck));
            }
            for c in col.checkins.values() {
                add(checkin_cells(&CheckinRow::of(c)));
            }
            let read = totals_of_cells(
                cells.into_iter().map(|((d, k), (n, u))| (d, k, n, u.len() as u64)),
            );
            let reference = totals_of(&world.campaign, &records(&world.campaign.id, &[col]), &review);
            prop_assert_eq!(read, reference);
        }
    }
}
