//! Cities as canvassers type them, grouped as one city. A signature's `city` is free text typed
//! on a phone (`toronto`, `TORONTO`, ` Toronto `, `Montreal`, `Montréal`), and the collection
//! document keeps it exactly as typed. Totals group a city under one [`city_key`] (case, spacing
//! and accents folded) and show, for each key, its most common [`city_spelling`] as the label
//! ([`Spellings::label`]). The reference totals, the server's projection (the `city_key` column
//! and the `city_spelling` cells) and its `city` filter all fold with these functions
//! (docs/documents.md, "Cities").

use std::collections::BTreeMap;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The key a city is grouped under: lower case, compatibility-decomposed (NFKD) with every
/// combining mark dropped (so `é` is `e`, `ﬁ` is `fi`), whitespace runs made one space, trimmed.
/// `Montréal`, `MONTREAL` and ` montreal ` share the key `montreal`. Idempotent.
pub fn city_key(city: &str) -> String {
    let lower = city.to_lowercase();
    let stripped: String = lower.nfkd().filter(|c| !is_combining_mark(*c)).collect();
    // Lower case again: a decomposition may yield an upper-case letter (rare, but then the key
    // would not be a fixed point).
    let stripped = stripped.to_lowercase();
    join_words(&stripped)
}

/// The spelling a city is shown with: as typed, composed (NFC), whitespace runs made one space,
/// trimmed. `" Toronto "` is spelled `Toronto`; `Montréal` typed with a combining accent is
/// spelled as with a precomposed one. Its [`city_key`] is the typed text's.
pub fn city_spelling(city: &str) -> String {
    join_words(&city.nfc().collect::<String>())
}

fn join_words(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Whether two typed cities are the same city (the same [`city_key`]).
pub fn same_city(a: &str, b: &str) -> bool {
    city_key(a) == city_key(b)
}

/// The spellings of one city key, with how many signatures use each: what chooses the key's
/// label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spellings(BTreeMap<String, u64>);

impl Spellings {
    /// Counts `n` signatures typed as `city` (counted as its [`city_spelling`]).
    pub fn add(&mut self, city: &str, n: u64) {
        *self.0.entry(city_spelling(city)).or_default() += n;
    }

    /// The label: the spelling the most signatures use. Among spellings used equally often,
    /// one in mixed case (`Toronto` before `TORONTO` and `toronto`), then the one with the most
    /// letters beyond ASCII (`Montréal` before `Montreal`: hurried typing drops accents, rarely
    /// adds them), then the least in byte order (UTF-8); so the label never depends on the
    /// order the signatures were counted in. `None` when nothing was counted.
    pub fn label(&self) -> Option<&str> {
        // `max_by_key` keeps the last of equal maxima: walk the spellings from the greatest
        // down, so that the last one is the least.
        self.0
            .iter()
            .rev()
            .filter(|(_, n)| **n > 0)
            .max_by_key(|(s, n)| {
                let mixed = s.chars().any(char::is_uppercase) && s.chars().any(char::is_lowercase);
                let beyond_ascii = s.chars().filter(|c| !c.is_ascii()).count();
                (**n, mixed, beyond_ascii)
            })
            .map(|(s, _)| s.as_str())
    }
}

/// Cells keyed by [`city_key`], re-keyed by their labels (the key itself when a key has no
/// spelling counted, which a consistent caller never has). Two keys never share a label: a
/// label's key is its own key.
pub fn labelled<C>(
    by_key: BTreeMap<String, C>,
    spellings: &BTreeMap<String, Spellings>,
) -> BTreeMap<String, C> {
    by_key
        .into_iter()
        .map(|(key, cell)| {
            let label = spellings
                .get(&key)
                .and_then(Spellings::label)
                .map_or(key, str::to_string);
            (label, cell)
        })
        .collect()
}

/// Typed cities, folded: each [`city_key`] once, under the spelling met first (give the
/// preferred spellings first, e.g. the campaign's event cities before a phone's own), in the
/// order met. What a phone offers the canvasser.
pub fn distinct<'a>(cities: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for c in cities {
        let key = city_key(c);
        if !key.is_empty() && seen.insert(key) {
            out.push(city_spelling(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn case_spacing_and_accents_fold_to_one_key() {
        for typed in [
            "toronto",
            "TORONTO",
            " Toronto ",
            "Toronto",
            "\u{a0}Toronto\u{2003}",
        ] {
            assert_eq!(city_key(typed), "toronto", "{typed:?}");
        }
        for typed in ["Montreal", "Montréal", "MONTRÉAL", "Montre\u{301}al"] {
            assert_eq!(city_key(typed), "montreal", "{typed:?}");
        }
        assert_eq!(city_key("  Trois-Rivières\t "), "trois-rivieres");
        assert_eq!(city_key("Saint\u{a0}\u{a0}Jean"), "saint jean");
        assert_eq!(city_key("Ｔｏｒｏｎｔｏ"), "toronto");
        assert_ne!(city_key("Toronto"), city_key("Ottawa"));
    }

    #[test]
    fn the_spelling_is_the_typed_text_tidied() {
        assert_eq!(city_spelling(" Toronto "), "Toronto");
        assert_eq!(city_spelling("Saint   Jean"), "Saint Jean");
        assert_eq!(city_spelling("Montre\u{301}al"), "Montréal");
        assert_eq!(city_spelling("TORONTO"), "TORONTO");
    }

    #[test]
    fn the_label_is_the_most_common_spelling() {
        let mut s = Spellings::default();
        for (c, n) in [
            ("toronto", 1),
            ("TORONTO", 1),
            (" Toronto ", 1),
            ("Toronto", 302),
        ] {
            s.add(c, n);
        }
        assert_eq!(s.label(), Some("Toronto"));
        let mut s = Spellings::default();
        s.add("Montreal", 1);
        s.add("MONTRÉAL", 1);
        s.add("Montre\u{301}al", 1);
        assert_eq!(
            s.label(),
            Some("Montréal"),
            "a tie: mixed case, then accents kept"
        );
        s.add("Montreal", 1);
        assert_eq!(s.label(), Some("Montreal"), "the most common first");
        let mut s = Spellings::default();
        for c in ["toronto", "TORONTO", "Toronto"] {
            s.add(c, 1);
        }
        assert_eq!(s.label(), Some("Toronto"));
        let mut s = Spellings::default();
        s.add("Saint-Jean", 1);
        s.add("Saint Jean", 1);
        assert_eq!(
            s.label(),
            Some("Saint Jean"),
            "then the least in byte order"
        );
        assert_eq!(Spellings::default().label(), None);
    }

    #[test]
    fn distinct_keeps_the_first_spelling_of_each_city() {
        let got = distinct([
            "Toronto",
            "Montréal",
            " toronto",
            "MONTREAL",
            "Ottawa",
            "  ",
        ]);
        assert_eq!(got, ["Toronto", "Montréal", "Ottawa"]);
    }

    proptest! {
        /// The key is a fixed point, and a spelling keeps its typed text's key.
        #[test]
        fn keys_are_stable(s in "\\PC{0,24}") {
            let k = city_key(&s);
            prop_assert_eq!(city_key(&k), k.clone());
            prop_assert_eq!(city_key(&city_spelling(&s)), k);
        }

        /// Any order of counting gives the same label.
        #[test]
        fn the_label_does_not_depend_on_order(
            mut typed in proptest::collection::vec(
                prop::sample::select(vec!["Montréal", "Montreal", "MONTREAL", " montréal", "Montre\u{301}al"]),
                1..12,
            ),
            seed in any::<u64>(),
        ) {
            let mut a = Spellings::default();
            for t in &typed {
                a.add(t, 1);
            }
            let n = typed.len();
            typed.rotate_left((seed as usize) % n);
            typed.reverse();
            let mut b = Spellings::default();
            for t in &typed {
                b.add(t, 1);
            }
            prop_assert_eq!(a.label(), b.label());
        }
    }
}
