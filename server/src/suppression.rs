//! Small-cell suppression: breakdown cells that count fewer than `threshold` distinct people are
//! hidden, so that a total cannot single out a signer ("2 signatures from FSA X0A on Tuesday").
//! It is on for every token but the admin's (the admin may ask for it), and always for the
//! campaign's totals document, which canvassers' phones read.
//!
//! Hiding one cell is not enough when the others and the total are shown: the hidden one is the
//! difference. So within each breakdown the hidden cells, if any, are made at least two and at
//! least `threshold` signatures together, hiding the next smallest cells as needed (secondary
//! suppression). With a filter (event, time, city, FSA) the headline numbers are themselves a
//! small cell, and are hidden (`null`) the same way; the whole campaign's headline never is.
//! Which keys were hidden is never said (a city's name alone tells that someone there signed);
//! only how many cells were, per breakdown.

use std::collections::BTreeMap;

use tally_core::totals::{Cell, Totals};

/// What suppression did to one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppression {
    /// Whether suppression was applied to this answer.
    pub applied: bool,
    /// Cells counting fewer distinct people than this are hidden.
    pub threshold: u64,
    /// How many cells were hidden, in all.
    pub hidden_cells: u64,
    /// How many cells were hidden, per breakdown (`by_city`, `checkins`, ...); breakdowns with
    /// none hidden are left out.
    pub hidden: BTreeMap<String, u64>,
    /// Whether the headline numbers (signatures, unique signers, struck, withdrawn) were
    /// hidden: only for a filtered query that matches too few people.
    pub headline_hidden: bool,
    /// A sentence for people: what was hidden and why, or `None` when nothing was.
    pub note: Option<String>,
}

/// Hides small cells of one breakdown; returns how many were hidden.
fn breakdown(cells: &mut BTreeMap<String, Cell>, threshold: u64) -> u64 {
    let mut hidden: Vec<String> = cells
        .iter()
        .filter(|(_, c)| c.unique < threshold)
        .map(|(k, _)| k.clone())
        .collect();
    if hidden.is_empty() {
        return 0;
    }
    let mut sum: u64 = hidden.iter().map(|k| cells[k].signatures).sum();
    // Secondary suppression: the hidden cells must not be recoverable by subtraction.
    let mut rest: Vec<(u64, String)> = cells
        .iter()
        .filter(|(k, _)| !hidden.contains(k))
        .map(|(k, c)| (c.signatures, k.clone()))
        .collect();
    rest.sort();
    let mut rest = rest.into_iter();
    while hidden.len() < 2 || sum < threshold {
        let Some((n, k)) = rest.next() else { break };
        sum += n;
        hidden.push(k);
    }
    for k in &hidden {
        cells.remove(k);
    }
    hidden.len() as u64
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
    for (name, cells) in [
        ("by_event", &mut t.by_event),
        ("by_city", &mut t.by_city),
        ("by_fsa", &mut t.by_fsa),
        ("by_riding", &mut t.by_riding),
        ("by_day", &mut t.by_day),
        ("by_canvasser", &mut t.by_canvasser),
    ] {
        let n = breakdown(cells, threshold);
        if n > 0 {
            s.hidden.insert(name.into(), n);
            s.hidden_cells += n;
        }
    }
    let before = t.checkins.len();
    t.checkins.retain(|_, c| c.unique >= threshold);
    let n = (before - t.checkins.len()) as u64;
    if n > 0 {
        s.hidden.insert("checkins".into(), n);
        s.hidden_cells += n;
    }
    let small = |v: u64| v > 0 && v < threshold;
    s.headline_hidden =
        filtered && (small(t.unique_signers) || small(t.struck) || small(t.withdrawn));
    if s.hidden_cells > 0 || s.headline_hidden {
        let mut note = format!(
            "small-cell suppression: {} breakdown cells counting fewer than {threshold} distinct people were hidden (and, where needed, the next smallest, so none can be recovered by subtraction)",
            s.hidden_cells
        );
        if s.headline_hidden {
            note.push_str(
                "; the filtered headline numbers match fewer people than that and are hidden too: widen the filter",
            );
        }
        s.note = Some(note);
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(signatures: u64, unique: u64) -> Cell {
        Cell { signatures, unique }
    }

    #[test]
    fn one_small_cell_takes_the_next_smallest_with_it() {
        let mut t = Totals {
            signatures: 33,
            unique_signers: 33,
            by_city: [
                ("Toronto".to_string(), cell(20, 20)),
                ("Hamilton".to_string(), cell(10, 10)),
                ("Smallville".to_string(), cell(3, 3)),
            ]
            .into(),
            ..Totals::default()
        };
        let s = apply(&mut t, 5, false);
        // Smallville alone could be recovered as 33 - 20 - 10; Hamilton goes with it.
        assert_eq!(t.by_city.keys().collect::<Vec<_>>(), ["Toronto"]);
        assert_eq!(s.hidden.get("by_city"), Some(&2));
        assert!(!s.headline_hidden);
        assert!(s.note.is_some());
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
            by_city: [("Toronto".to_string(), cell(5, 5))].into(),
            ..Totals::default()
        };
        let s = apply(&mut t, 5, true);
        assert_eq!(t.by_city.len(), 1);
        assert_eq!(s.hidden_cells, 0);
        assert!(s.note.is_none());
    }

    #[test]
    fn a_filtered_headline_of_few_people_is_hidden() {
        let mut t = Totals {
            signatures: 2,
            unique_signers: 2,
            ..Totals::default()
        };
        assert!(apply(&mut t.clone(), 5, true).headline_hidden);
        assert!(!apply(&mut t, 5, false).headline_hidden);
    }
}
