//! Small-cell suppression: breakdown cells that count fewer than `threshold` distinct people are
//! hidden, so that a total cannot single out a signer ("2 signatures from FSA X0A on Tuesday").
//! It is on for every token but the admin's (the admin may ask for it), and always for the
//! campaign's totals document, which canvassers' phones read.
//!
//! Hiding one cell is not enough when the others and the total are shown: the hidden one is the
//! difference. What a reader can work out about a breakdown's hidden cells is their number `k`
//! (reported) and their signatures together (the headline minus the shown cells; reported as the
//! breakdown's `other` line), each hidden cell counting at least one. So one hidden cell could
//! count anything from 1 to "the hidden people minus `k - 1`". The rule ([`protects`]): the
//! hidden cells of a breakdown must count together at least `threshold - 1` more people than
//! there are hidden cells, so that each of them could, for all a reader can tell, count
//! `threshold` people or more, and none is determined. When the small cells alone do not, the
//! smallest cell that is not small is hidden with them (secondary suppression; one always
//! suffices, as it counts `threshold` people alone), and nothing else is hidden
//! ([`plan_breakdown`]). When even hiding every cell would not (all the breakdown's cells are
//! small and few people signed), every cell is hidden and their number is not said either
//! ([`Suppression::withheld`]).
//!
//! Breakdowns are different partitions of the same signatures with no cross-tabulation shown, so
//! any set of cells consistent with one breakdown's shown numbers is consistent with every other
//! breakdown's: moving signatures between two hidden cities changes no FSA, day, canvasser or
//! headline number. The property test below checks this with records: for every hidden cell it
//! builds other records that show exactly the same answer (every breakdown, the headline, the
//! counts and `other` lines) in which that cell counts at least `threshold` signatures, and
//! others in which it counts one.
//!
//! With a filter (event, time, city, FSA) the headline numbers are themselves a cell, and are
//! hidden (`null`) when fewer than `threshold` people match, none included (so that a filter
//! cannot probe whether anyone signed in a city). A filter cannot drill into a cell the answer
//! without it hides ([`answer`]): `?city=Toronto` when the campaign's answer hides Toronto would
//! give its number back, and with it the small cell hidden beside it. The whole campaign's
//! headline is never hidden. Which keys were hidden is never said (a city's name alone tells that
//! someone there signed); only how many cells were, per breakdown. docs/security.md, "Small-cell
//! suppression and its threat model", says what this does not cover.

use std::collections::{BTreeMap, BTreeSet};

use tally_core::city::city_key;
use tally_core::totals::{Cell, Totals};

use crate::projection::Filter;

/// What suppression did to one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppression {
    /// Whether suppression was applied to this answer.
    pub applied: bool,
    /// Cells counting fewer distinct people than this are hidden.
    pub threshold: u64,
    /// How many cells were hidden, in all (not counting those of `withheld` breakdowns).
    pub hidden_cells: u64,
    /// How many cells were hidden, per breakdown (`by_city`, `checkins`, ...); breakdowns with
    /// none hidden are left out.
    pub hidden: BTreeMap<String, u64>,
    /// Per breakdown with hidden cells: the signatures in its hidden cells together (an "other"
    /// line; what the headline minus the shown cells gives anyway). Never one cell's number:
    /// there are always two or more hidden cells, counting `threshold` people or more together.
    #[serde(default)]
    pub other: BTreeMap<String, u64>,
    /// Breakdowns whose every cell is hidden and whose number of hidden cells is not said: too
    /// few people signed for any cell to be shown without singling one out.
    #[serde(default)]
    pub withheld: BTreeSet<String>,
    /// Whether the headline numbers (signatures, unique signers, struck, withdrawn) were
    /// hidden: only for a filtered query that matches too few people, or that names a cell the
    /// answer without that filter hides.
    pub headline_hidden: bool,
    /// A sentence for people: what was hidden and why, or `None` when nothing was.
    pub note: Option<String>,
}

/// Whether hiding `hidden` (one breakdown's cells) protects each of them: together they count
/// at least `threshold - 1` more people than there are cells, so that, given their number and
/// their total, any one of them could count `threshold` people or more. No cells hidden
/// protects vacuously; one small cell alone never does.
pub fn protects<'a>(hidden: impl IntoIterator<Item = &'a Cell>, threshold: u64) -> bool {
    let mut any = false;
    let mut slack = 0u64;
    for c in hidden {
        any = true;
        slack += c.unique.saturating_sub(1);
    }
    !any || slack + 1 >= threshold
}

/// Which cells of one breakdown to hide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The keys hidden: the small cells and the complement.
    pub hidden: BTreeSet<String>,
    /// The cell hidden only to protect the small ones (secondary suppression), if one was
    /// needed.
    pub complement: Option<String>,
    /// Every cell is hidden and still no cell is protected: the number of hidden cells is not
    /// said.
    pub withheld: bool,
}

/// Plans one breakdown: the cells counting fewer than `threshold` people, and, if they do not
/// [`protects`] one another, the smallest other cell (fewest people, then signatures, then key).
pub fn plan_breakdown(cells: &BTreeMap<String, Cell>, threshold: u64) -> Plan {
    let small: BTreeSet<String> = cells
        .iter()
        .filter(|(_, c)| c.unique < threshold)
        .map(|(k, _)| k.clone())
        .collect();
    if small.is_empty() {
        return Plan::default();
    }
    let mut plan = Plan {
        hidden: small,
        ..Plan::default()
    };
    if protects(plan.hidden.iter().map(|k| &cells[k]), threshold) {
        return plan;
    }
    let smallest = cells
        .iter()
        .filter(|(k, _)| !plan.hidden.contains(*k))
        .min_by_key(|(k, c)| (c.unique, c.signatures, *k));
    match smallest {
        Some((k, _)) => {
            plan.hidden.insert(k.clone());
            plan.complement = Some(k.clone());
        }
        None => plan.withheld = true,
    }
    plan
}

/// The breakdowns of signatures, by name.
fn breakdowns(t: &mut Totals) -> [(&'static str, &mut BTreeMap<String, Cell>); 6] {
    [
        ("by_event", &mut t.by_event),
        ("by_city", &mut t.by_city),
        ("by_fsa", &mut t.by_fsa),
        ("by_riding", &mut t.by_riding),
        ("by_day", &mut t.by_day),
        ("by_canvasser", &mut t.by_canvasser),
    ]
}

/// Hides what `plans` (per breakdown name) say in `t`, and reports it in `s`.
fn hide(t: &mut Totals, plans: &BTreeMap<&'static str, Plan>, s: &mut Suppression) {
    for (name, cells) in breakdowns(t) {
        let Some(plan) = plans.get(name) else {
            continue;
        };
        let mut other = 0;
        for k in &plan.hidden {
            other += cells.remove(k).map_or(0, |c| c.signatures);
        }
        if plan.withheld {
            s.withheld.insert(name.into());
        } else if !plan.hidden.is_empty() {
            let n = plan.hidden.len() as u64;
            s.hidden.insert(name.into(), n);
            s.hidden_cells += n;
            s.other.insert(name.into(), other);
        }
    }
}

/// Applies suppression to `t` in place with `threshold`. `filtered` says whether the totals
/// were narrowed by a filter (then the headline is a cell too). Returns what was hidden; the
/// headline's hiding is reported in [`Suppression::headline_hidden`], for the caller to blank.
pub fn apply(t: &mut Totals, threshold: u64, filtered: bool) -> Suppression {
    let mut s = Suppression {
        applied: true,
        threshold,
        ..Suppression::default()
    };
    let mut plans = BTreeMap::new();
    for (name, cells) in breakdowns(t) {
        plans.insert(name, plan_breakdown(cells, threshold));
    }
    hide(t, &plans, &mut s);
    // Check-ins have no total beside them: a small cell alone is hidden.
    let before = t.checkins.len();
    t.checkins.retain(|_, c| c.unique >= threshold);
    let n = (before - t.checkins.len()) as u64;
    if n > 0 {
        s.hidden.insert("checkins".into(), n);
        s.hidden_cells += n;
    }
    let small = |v: u64| v > 0 && v < threshold;
    s.headline_hidden =
        filtered && (t.unique_signers < threshold || small(t.struck) || small(t.withdrawn));
    if s.headline_hidden {
        withhold(t, &mut s);
    }
    s.note = note(&s);
    s
}

fn note(s: &Suppression) -> Option<String> {
    let threshold = s.threshold;
    let mut parts = Vec::new();
    if s.hidden_cells > 0 {
        parts.push(format!(
            "{} breakdown cells counting fewer than {threshold} distinct people were hidden (and, where needed, the next smallest, so none can be recovered by subtraction; `other` gives each breakdown's hidden signatures together)",
            s.hidden_cells
        ));
    }
    if !s.withheld.is_empty() {
        let names: Vec<&str> = s.withheld.iter().map(String::as_str).collect();
        parts.push(format!(
            "every cell of {} is hidden: too few people for any to be shown",
            names.join(", ")
        ));
    }
    if s.headline_hidden {
        parts.push(
            "the filtered headline numbers are hidden too: the filter matches fewer people than that, or names a cell the answer without it hides: widen the filter"
                .into(),
        );
    }
    (!parts.is_empty()).then(|| format!("small-cell suppression: {}", parts.join("; ")))
}

/// The campaign's totals document, which every canvasser's phone reads: the headline, the
/// events and the paper sheets, with small event cells suppressed; no breakdown by city, FSA,
/// riding, day or canvasser at all. A canvasser writes some of the records counted, so a
/// threshold on distinct signers is one a canvasser can pad: four invented signers in a
/// victim's city and FSA made `Smallville 5` appear and revealed the one real signer there.
/// Organizers see those breakdowns through the API, where a canvasser's token cannot reach.
pub fn for_document(t: &mut Totals, threshold: u64) {
    for area in [
        &mut t.by_city,
        &mut t.by_fsa,
        &mut t.by_riding,
        &mut t.by_day,
        &mut t.by_canvasser,
    ] {
        area.clear();
    }
    apply(t, threshold, false);
}

/// Whether `filter`, narrowing an answer (`whole` before suppression, `shown` after) by `dim`,
/// selects a cell that answer hides: then the narrowed answer's headline would be that cell's
/// number. `narrowed` is the narrowed answer before suppression (its days are the days the
/// time window holds signatures of).
fn drills_into_hidden(
    whole: &Totals,
    shown: &Totals,
    dim: Dim,
    filter: &Filter,
    narrowed: &Totals,
) -> bool {
    let hidden = |all: &BTreeMap<String, Cell>, kept: &BTreeMap<String, Cell>| -> Vec<String> {
        all.keys()
            .filter(|k| !kept.contains_key(*k))
            .cloned()
            .collect()
    };
    match dim {
        Dim::Event => {
            let e = filter.event.as_deref().unwrap_or_default();
            hidden(&whole.by_event, &shown.by_event)
                .iter()
                .any(|k| k == e)
        }
        Dim::City => {
            let c = city_key(filter.city.as_deref().unwrap_or_default());
            hidden(&whole.by_city, &shown.by_city)
                .iter()
                .any(|k| city_key(k) == c)
        }
        Dim::Fsa => {
            let f = filter.fsa.as_deref().unwrap_or_default();
            hidden(&whole.by_fsa, &shown.by_fsa).iter().any(|k| k == f)
        }
        Dim::Riding => {
            let r = filter.riding.as_deref().unwrap_or_default();
            hidden(&whole.by_riding, &shown.by_riding)
                .iter()
                .any(|k| k == r)
        }
        Dim::Canvasser => {
            let c = filter.canvasser.as_deref().unwrap_or_default();
            hidden(&whole.by_canvasser, &shown.by_canvasser)
                .iter()
                .any(|k| k == c)
        }
        Dim::Time => {
            // A window holding signatures of some of the hidden days but not all would give
            // their part of the hidden total. (Organizers' windows are whole days; a day an
            // admin's window cuts counts as inside.)
            let days = hidden(&whole.by_day, &shown.by_day);
            let n = days
                .iter()
                .filter(|d| narrowed.by_day.contains_key(*d))
                .count();
            n > 0 && n < days.len()
        }
    }
}

/// A dimension a filter narrows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Event,
    Time,
    City,
    Fsa,
    Riding,
    Canvasser,
}

/// `filter` without dimension `dim`.
fn without(filter: &Filter, dim: Dim) -> Filter {
    let mut f = filter.clone();
    match dim {
        Dim::Event => f.event = None,
        Dim::Time => (f.from, f.to) = (None, None),
        Dim::City => f.city = None,
        Dim::Fsa => f.fsa = None,
        Dim::Riding => f.riding = None,
        Dim::Canvasser => f.canvasser = None,
    }
    f
}

/// A campaign's totals narrowed by `filter`, with small-cell suppression at `threshold`. For
/// each dimension the filter narrows by, the answer without it is computed and suppressed too:
/// if that answer hides the cell the filter selects (the city, FSA, riding, canvasser, event,
/// or some of the hidden days), or is itself withheld (so that a pair of filters cannot reach a
/// cell that each of them alone is withheld for naming), this answer is withheld: headline
/// hidden, every breakdown withheld.
pub fn answer<E>(
    query: impl Fn(&Filter) -> Result<Totals, E>,
    filter: &Filter,
    threshold: u64,
) -> Result<(Totals, Suppression), E> {
    answer_dyn(&query, filter, threshold)
}

fn answer_dyn<E>(
    query: &dyn Fn(&Filter) -> Result<Totals, E>,
    filter: &Filter,
    threshold: u64,
) -> Result<(Totals, Suppression), E> {
    let raw = query(filter)?;
    let mut t = raw.clone();
    let mut s = apply(&mut t, threshold, !filter.is_empty());
    let mut dims = Vec::new();
    if filter.event.is_some() {
        dims.push(Dim::Event);
    }
    if filter.from.is_some() || filter.to.is_some() {
        dims.push(Dim::Time);
    }
    if filter.city.is_some() {
        dims.push(Dim::City);
    }
    if filter.fsa.is_some() {
        dims.push(Dim::Fsa);
    }
    if filter.riding.is_some() {
        dims.push(Dim::Riding);
    }
    if filter.canvasser.is_some() {
        dims.push(Dim::Canvasser);
    }
    if s.headline_hidden {
        return Ok((t, s));
    }
    for dim in dims {
        let parent = without(filter, dim);
        let parent_withheld =
            !parent.is_empty() && answer_dyn(query, &parent, threshold)?.1.headline_hidden;
        let whole = query(&parent)?;
        let mut shown = whole.clone();
        apply(&mut shown, threshold, !parent.is_empty());
        if parent_withheld || drills_into_hidden(&whole, &shown, dim, filter, &raw) {
            s.headline_hidden = true;
            withhold(&mut t, &mut s);
            break;
        }
    }
    Ok((t, s))
}

/// Hides every signature breakdown of a filtered answer whose headline is hidden: with the
/// headline gone, its cells would add up to it. (Check-ins are not narrowed by city or FSA,
/// and have no headline: they keep their own suppression.)
fn withhold(t: &mut Totals, s: &mut Suppression) {
    for (name, cells) in breakdowns(t) {
        let mut had = !cells.is_empty();
        if let Some(n) = s.hidden.remove(name) {
            s.hidden_cells -= n;
            had = true;
        }
        s.other.remove(name);
        if had {
            s.withheld.insert(name.into());
        }
        cells.clear();
    }
    s.note = note(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(signatures: u64, unique: u64) -> Cell {
        Cell { signatures, unique }
    }

    fn cities(cells: &[(&str, u64)]) -> Totals {
        let by_city: BTreeMap<String, Cell> = cells
            .iter()
            .map(|(k, n)| (k.to_string(), cell(*n, *n)))
            .collect();
        let n = by_city.values().map(|c| c.signatures).sum();
        Totals {
            signatures: n,
            unique_signers: n,
            by_city,
            ..Totals::default()
        }
    }

    fn shown(t: &Totals) -> Vec<&str> {
        t.by_city.keys().map(String::as_str).collect()
    }

    #[test]
    fn one_small_cell_takes_the_next_smallest_with_it() {
        let mut t = cities(&[("Toronto", 20), ("Hamilton", 10), ("Smallville", 3)]);
        let s = apply(&mut t, 5, false);
        // Smallville alone could be recovered as 33 - 20 - 10; Hamilton goes with it.
        assert_eq!(shown(&t), ["Toronto"]);
        assert_eq!(s.hidden.get("by_city"), Some(&2));
        assert_eq!(s.other.get("by_city"), Some(&13));
        assert!(!s.headline_hidden);
        assert!(s.note.is_some());
    }

    /// Issue 13: Toronto (302) and Montréal (1). With the headline shown, Montréal is the
    /// headline minus Toronto: Toronto is hidden, and nothing can change that short of hiding
    /// the headline. Every other breakdown is planned on its own: one small canvasser does not
    /// hide the others, and a breakdown with no small cell loses nothing.
    #[test]
    fn only_what_subtraction_would_reveal_is_hidden() {
        let mut t = cities(&[("Toronto", 302), ("Montréal", 1)]);
        t.by_canvasser = [
            ("alice".to_string(), cell(150, 150)),
            ("bob".to_string(), cell(150, 150)),
            ("carol".to_string(), cell(3, 3)),
        ]
        .into();
        t.by_fsa = [
            ("M5V".to_string(), cell(200, 200)),
            ("M6H".to_string(), cell(102, 102)),
            ("H2X".to_string(), cell(1, 1)),
        ]
        .into();
        t.by_day = [("2026-07-01".to_string(), cell(303, 303))].into();
        let s = apply(&mut t, 5, false);
        assert!(t.by_city.is_empty());
        assert_eq!(s.other["by_city"], 303);
        // alice and bob tie: the complement is the least key.
        assert_eq!(t.by_canvasser.keys().collect::<Vec<_>>(), ["bob"]);
        assert_eq!(t.by_fsa.keys().collect::<Vec<_>>(), ["M5V"]);
        assert_eq!(t.by_day.len(), 1);
        assert_eq!(s.hidden_cells, 6);

        // Several small cells that protect one another need no complement.
        let mut t = cities(&[
            ("Toronto", 302),
            ("Laval", 4),
            ("Montréal", 1),
            ("Gatineau", 2),
        ]);
        let s = apply(&mut t, 5, false);
        assert_eq!(shown(&t), ["Toronto"]);
        assert_eq!((s.hidden["by_city"], s.other["by_city"]), (3, 7));

        // Five cities of one signer each: each is known to be 1 unless a bigger cell hides
        // with them (the rule before hid them alone, as they make 5 together).
        let mut t = cities(&[
            ("Toronto", 302),
            ("Ottawa", 40),
            ("A", 1),
            ("B", 1),
            ("C", 1),
            ("D", 1),
            ("E", 1),
        ]);
        apply(&mut t, 5, false);
        assert_eq!(shown(&t), ["Toronto"]);
    }

    #[test]
    fn a_breakdown_of_only_small_cells_is_withheld_when_it_cannot_be_protected() {
        let mut t = cities(&[("A", 1), ("B", 1)]);
        let s = apply(&mut t, 5, false);
        assert!(t.by_city.is_empty());
        assert!(s.withheld.contains("by_city"));
        assert!(!s.hidden.contains_key("by_city") && !s.other.contains_key("by_city"));
        // Small cells that protect one another are counted as usual.
        let mut t = cities(&[("A", 4), ("B", 3)]);
        let s = apply(&mut t, 5, false);
        assert_eq!((s.hidden["by_city"], s.other["by_city"]), (2, 7));
    }

    #[test]
    fn padding_a_victims_area_reveals_nothing_to_phones() {
        // One real signer in Smallville / X0A, four invented by a canvasser to pass the threshold.
        let mut t = Totals {
            signatures: 25,
            unique_signers: 25,
            by_city: [
                ("Toronto".to_string(), cell(20, 20)),
                ("Smallville".to_string(), cell(5, 5)),
            ]
            .into(),
            by_fsa: [
                ("M5V".to_string(), cell(20, 20)),
                ("X0A".to_string(), cell(5, 5)),
            ]
            .into(),
            by_day: [("2026-07-01".to_string(), cell(25, 25))].into(),
            by_canvasser: [("mallory".to_string(), cell(4, 4))].into(),
            by_event: [("rally".to_string(), cell(25, 25))].into(),
            ..Totals::default()
        };
        for_document(&mut t, 5);
        assert!(t.by_city.is_empty() && t.by_fsa.is_empty() && t.by_riding.is_empty());
        assert!(t.by_day.is_empty() && t.by_canvasser.is_empty());
        assert_eq!(t.by_event["rally"].signatures, 25);
        assert_eq!(t.signatures, 25);
    }

    #[test]
    fn nothing_small_nothing_hidden() {
        let mut t = Totals {
            unique_signers: 5,
            by_city: [("Toronto".to_string(), cell(5, 5))].into(),
            ..Totals::default()
        };
        let s = apply(&mut t, 5, true);
        assert_eq!(t.by_city.len(), 1);
        assert_eq!(s.hidden_cells, 0);
        assert!(s.note.is_none());
    }

    #[test]
    fn a_filtered_headline_of_few_people_is_hidden_none_included() {
        let mut t = Totals {
            signatures: 2,
            unique_signers: 2,
            ..Totals::default()
        };
        assert!(apply(&mut t.clone(), 5, true).headline_hidden);
        assert!(!apply(&mut t, 5, false).headline_hidden);
        // Nobody: hidden too, or `?city=X` would tell "nobody" from "a few" in X.
        assert!(apply(&mut Totals::default(), 5, true).headline_hidden);
        // With the headline gone, the breakdowns go too, even cells that would protect each
        // other (three people on two days each: 2 + 2 >= 4), as they would add up to it.
        let mut t = Totals {
            signatures: 6,
            unique_signers: 3,
            by_day: [
                ("2026-07-01".to_string(), cell(3, 3)),
                ("2026-07-02".to_string(), cell(3, 3)),
            ]
            .into(),
            ..Totals::default()
        };
        let s = apply(&mut t, 5, true);
        assert!(s.headline_hidden && t.by_day.is_empty());
        assert!(s.withheld.contains("by_day") && s.other.is_empty(), "{s:?}");
    }
}

/// Filters cannot drill into a hidden cell.
#[cfg(test)]
mod drilling {
    use tally_core::fixtures::{NOW, World};
    use tally_store::Store;

    use super::*;

    const DAY: i64 = 86_400_000;

    /// Toronto 10 (M5V, day 1), Ottawa 8 (K1P, day 2), Montréal 1 (H2X, day 3): the campaign's
    /// answer hides Montréal, and Ottawa with it (the smallest other city), in every
    /// breakdown alike.
    fn store() -> (Store, String) {
        let world = World::new();
        let camp = world.campaign.id.clone();
        let store = Store::open_in_memory().unwrap();
        store
            .write(|tx| {
                let mut b = tx.projection_batch(&camp);
                let mut n = 0;
                for (city, postal, day, people) in [
                    ("Toronto", "M5V 2T6", 0, 10),
                    ("Ottawa", "K1P 5G3", 1, 8),
                    ("Montréal", "H2X 1Y4", 2, 1),
                ] {
                    for _ in 0..people {
                        n += 1;
                        let mut s = world.signature(
                            "dev1",
                            &format!("s{n}"),
                            &format!("P{n}"),
                            postal,
                            city,
                        );
                        s.collected_at = NOW + day * DAY;
                        // One riding and one canvasser per city.
                        s.riding = Some(format!("riding {city}"));
                        s.collected_by = format!("dev-{city}");
                        b.signature(
                            "docA",
                            &s.id,
                            &tally_core::cells::SignatureRow::of(&s, "UTC"),
                        )?;
                    }
                }
                b.flush()
            })
            .unwrap();
        (store, camp)
    }

    fn ask(store: &Store, camp: &str, filter: Filter) -> (Totals, Suppression) {
        store
            .read(|r| answer(|f| r.query_totals(camp, f), &filter, 5))
            .unwrap()
    }

    #[test]
    fn a_filter_naming_a_hidden_cell_is_withheld() {
        let (store, camp) = store();
        let (t, s) = ask(&store, &camp, Filter::default());
        assert_eq!(t.by_city.keys().collect::<Vec<_>>(), ["Toronto"]);
        assert_eq!((t.signatures, s.other["by_city"]), (19, 9));
        let city = |c: &str| Filter {
            city: Some(c.into()),
            ..Filter::default()
        };
        // Ottawa's 8 would give Montréal's 1 as 19 - 10 - 8: withheld, in any spelling.
        for f in [
            city("Ottawa"),
            city(" OTTAWA"),
            Filter {
                fsa: Some("K1P".into()),
                ..Filter::default()
            },
            Filter {
                from: Some(NOW + DAY),
                to: Some(NOW + 2 * DAY),
                ..Filter::default()
            },
            Filter {
                riding: Some("riding Ottawa".into()),
                ..Filter::default()
            },
            Filter {
                canvasser: Some("dev-Ottawa".into()),
                ..Filter::default()
            },
            // A pair naming a shown cell and a hidden one.
            Filter {
                fsa: Some("K1P".into()),
                canvasser: Some("dev-Ottawa".into()),
                ..Filter::default()
            },
        ] {
            let (t, s) = ask(&store, &camp, f.clone());
            assert!(s.headline_hidden, "{f:?}: {t:?}");
            assert!(t.by_city.is_empty() && t.by_day.is_empty(), "{f:?}");
            assert!(s.note.unwrap().contains("names a cell"), "{f:?}");
        }
        // Montréal itself: too few people; a city nobody signed in looks the same.
        for c in ["Montreal", "Vancouver"] {
            let (_, s) = ask(&store, &camp, city(c));
            assert!(s.headline_hidden, "{c}");
        }
        // A shown cell, and a window holding every hidden day, are answered.
        let (t, s) = ask(&store, &camp, city("toronto"));
        assert!(!s.headline_hidden);
        assert_eq!(t.signatures, 10);
        for f in [
            Filter {
                riding: Some("riding Toronto".into()),
                ..Filter::default()
            },
            Filter {
                canvasser: Some("dev-Toronto".into()),
                city: Some("TORONTO".into()),
                ..Filter::default()
            },
        ] {
            let (t, s) = ask(&store, &camp, f.clone());
            assert!(!s.headline_hidden, "{f:?}");
            assert_eq!(t.signatures, 10, "{f:?}");
        }
        let (t, s) = ask(
            &store,
            &camp,
            Filter {
                from: Some(NOW + DAY),
                ..Filter::default()
            },
        );
        assert!(!s.headline_hidden, "{s:?}");
        assert_eq!(t.signatures, 9);
        assert!(
            t.by_city.is_empty(),
            "Ottawa 8 + Montréal 1 in the window: {t:?}"
        );
    }
}

/// The property test of the rule, over random records: nothing hidden can be recovered from
/// the answer (the headline, every breakdown, the counts and `other` lines), and nothing is
/// hidden that the rule does not need.
#[cfg(test)]
mod property {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tally_core::totals::{CellAcc, cells};

    use super::*;

    const DIMS: usize = 6;

    /// A counted signature: its key in each breakdown, and its signer.
    #[derive(Debug, Clone)]
    struct Rec {
        keys: [String; DIMS],
        dup: String,
    }

    fn totals(recs: &[Rec]) -> Totals {
        let mut all = CellAcc::default();
        let mut dims: [BTreeMap<String, CellAcc>; DIMS] = Default::default();
        for r in recs {
            all.add(&r.dup);
            for (d, k) in dims.iter_mut().zip(&r.keys) {
                d.entry(k.clone()).or_default().add(&r.dup);
            }
        }
        let all = all.cell();
        let [ev, city, fsa, riding, day, canvasser] = dims;
        Totals {
            signatures: all.signatures,
            unique_signers: all.unique,
            by_event: cells(ev),
            by_city: cells(city),
            by_fsa: cells(fsa),
            by_riding: cells(riding),
            by_day: cells(day),
            by_canvasser: cells(canvasser),
            ..Totals::default()
        }
    }

    fn plans(t: &Totals, threshold: u64) -> BTreeMap<&'static str, Plan> {
        let mut t = t.clone();
        breakdowns(&mut t)
            .into_iter()
            .map(|(name, cells)| (name, plan_breakdown(cells, threshold)))
            .collect()
    }

    /// What a reader sees when `plans` are applied to `t`.
    fn view(t: &Totals, plans: &BTreeMap<&'static str, Plan>) -> (Totals, Suppression) {
        let mut t = t.clone();
        let mut s = Suppression::default();
        hide(&mut t, plans, &mut s);
        (t, s)
    }

    fn cell_of(recs: &[Rec], dim: usize, key: &str) -> Cell {
        let mut acc = CellAcc::default();
        for r in recs.iter().filter(|r| r.keys[dim] == key) {
            acc.add(&r.dup);
        }
        acc.cell()
    }

    fn random_records(rng: &mut StdRng) -> Vec<Rec> {
        let people = rng.gen_range(1..60);
        let sizes: [usize; DIMS] = std::array::from_fn(|_| rng.gen_range(1..8));
        let mut recs = Vec::new();
        for p in 0..people {
            // A few people sign twice (the duplicate the tokens catch), maybe elsewhere.
            let times = if rng.gen_bool(0.1) { 2 } else { 1 };
            for _ in 0..times {
                // Skewed: low keys are big cells, high keys small ones.
                let keys = std::array::from_fn(|d| {
                    let k = rng.gen_range(0..sizes[d]);
                    format!("k{}", rng.gen_range(0..=k))
                });
                recs.push(Rec {
                    keys,
                    dup: format!("p{p}"),
                });
            }
        }
        recs
    }

    /// `recs` with the records of `from` in breakdown `dim` moved to `to`, but one (one whose
    /// signer has another record among the moved ones, if any, so that no person is lost).
    fn move_all_but_one(recs: &mut [Rec], dim: usize, from: &str, to: &str) {
        let idx: Vec<usize> = (0..recs.len())
            .filter(|i| recs[*i].keys[dim] == from)
            .collect();
        let keep = idx
            .iter()
            .copied()
            .find(|i| idx.iter().any(|j| j != i && recs[*j].dup == recs[*i].dup))
            .unwrap_or(idx[0]);
        for i in idx {
            if i != keep {
                recs[i].keys[dim] = to.to_string();
            }
        }
    }

    #[test]
    fn no_hidden_cell_is_recoverable_and_none_is_hidden_needlessly() {
        let names = [
            "by_event",
            "by_city",
            "by_fsa",
            "by_riding",
            "by_day",
            "by_canvasser",
        ];
        let mut checked = (0, 0, 0);
        for seed in 0..400u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let threshold = rng.gen_range(2..7u64);
            let recs = random_records(&mut rng);
            let t = totals(&recs);
            let plans = plans(&t, threshold);
            let seen = view(&t, &plans);
            // `apply` is these plans.
            let mut applied = t.clone();
            let s = apply(&mut applied, threshold, false);
            assert_eq!(
                (&applied, &s.hidden, &s.other),
                (&seen.0, &seen.1.hidden, &seen.1.other)
            );

            for (dim, name) in names.iter().enumerate() {
                let all = &{
                    let mut t = t.clone();
                    std::mem::take(breakdowns(&mut t)[dim].1)
                };
                let plan = &plans[name];
                let small: BTreeSet<&String> = all
                    .iter()
                    .filter(|(_, c)| c.unique < threshold)
                    .map(|(k, _)| k)
                    .collect();
                // Every small cell is hidden.
                assert!(
                    small.iter().all(|k| plan.hidden.contains(*k)),
                    "seed {seed}"
                );
                // Minimality: a complement only when the small cells do not protect one
                // another, and then the smallest other cell, one only.
                let small_cells = small.iter().map(|k| &all[*k]);
                match &plan.complement {
                    None => assert!(
                        plan.withheld || protects(small_cells, threshold),
                        "seed {seed} {name}"
                    ),
                    Some(c) => {
                        checked.1 += 1;
                        assert!(!protects(small_cells, threshold), "seed {seed} {name}");
                        assert_eq!(plan.hidden.len(), small.len() + 1);
                        let smallest = all
                            .iter()
                            .filter(|(k, _)| !small.contains(k))
                            .min_by_key(|(k, c)| (c.unique, c.signatures, *k))
                            .map(|(k, _)| k);
                        assert_eq!(Some(c), smallest, "seed {seed} {name}");
                    }
                }
                if plan.withheld {
                    assert_eq!(plan.hidden.len(), all.len(), "withheld: everything hidden");
                    assert!(!protects(all.values(), threshold));
                    continue;
                }
                if !plan.hidden.is_empty() {
                    assert!(
                        plan.hidden.len() >= 2,
                        "seed {seed} {name}: a lone hidden cell"
                    );
                }
                // No hidden cell is recoverable: for each, other records show exactly the
                // same answer (all breakdowns, headline, counts, `other`) while that cell
                // counts at least `threshold` signatures (and people, unless a signer is in two
                // of the hidden cells), and others show it while it counts one signature.
                for c in &plan.hidden {
                    checked.0 += 1;
                    let mut big = recs.clone();
                    for h in plan.hidden.iter().filter(|h| *h != c) {
                        move_all_but_one(&mut big, dim, h, c);
                    }
                    assert_eq!(view(&totals(&big), &plans), seen, "seed {seed} {name} {c}");
                    let got = cell_of(&big, dim, c);
                    assert!(
                        got.signatures >= threshold,
                        "seed {seed} {name} {c}: {got:?}"
                    );
                    let shared = {
                        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
                        recs.iter()
                            .filter(|r| plan.hidden.contains(&r.keys[dim]))
                            .any(|r| {
                                *owner.entry(&r.dup).or_insert(&r.keys[dim]) != r.keys[dim].as_str()
                            })
                    };
                    if !shared {
                        assert!(got.unique >= threshold, "seed {seed} {name} {c}: {got:?}");
                    } else {
                        checked.2 += 1;
                    }
                    let other = plan.hidden.iter().find(|h| *h != c).unwrap();
                    let mut one = recs.clone();
                    move_all_but_one(&mut one, dim, c, other);
                    assert_eq!(view(&totals(&one), &plans), seen, "seed {seed} {name} {c}");
                    assert_eq!(cell_of(&one, dim, c).signatures, 1);
                }
            }
        }
        // The generator reaches the interesting cases.
        assert!(checked.0 > 1000 && checked.1 > 100, "{checked:?}");
    }
}
