//! Field rules shared by every document kind: limits, identifiers, times, Canadian postal codes
//! and FSAs. A record read from a document and a record built from a form pass the same checks,
//! so a phone refuses exactly what the server would refuse.

use crate::validate::{Rejection, Rule};

/// Longest identifier (record ids, event ids, canvasser ids, campaign ids).
pub const MAX_ID: usize = 64;
/// Longest short text: names of events, cities, ridings, places, titles.
pub const MAX_SHORT_TEXT: usize = 200;
/// Longest long text: petition text.
pub const MAX_LONG_TEXT: usize = 64 * 1024;
/// Largest sealed blob of personal fields.
pub const MAX_SEALED: usize = 64 * 1024;
/// Most age recipients on a campaign.
pub const MAX_RECIPIENTS: usize = 32;
/// Earliest accepted time: 2020-01-01T00:00:00Z, in ms.
pub const MIN_TIME_MS: i64 = 1_577_836_800_000;
/// Latest accepted time: 2100-01-01T00:00:00Z, in ms.
pub const MAX_TIME_MS: i64 = 4_102_444_800_000;

/// An identifier: 1 to 64 characters of ASCII letters, digits, `-` and `_`.
pub fn check_id(path: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > MAX_ID {
        return Err(Rejection::new(
            path,
            Rule::Malformed,
            format!("an id is 1 to {MAX_ID} characters, got {}", value.len()),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Rejection::new(
            path,
            Rule::Malformed,
            "an id may hold only ASCII letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

/// A text of at most `max` bytes; `required` texts must not be blank.
pub fn check_text(path: &str, value: &str, max: usize, required: bool) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(Rejection::new(
            path,
            Rule::TooLarge,
            format!("at most {max} bytes, got {}", value.len()),
        ));
    }
    if required && value.trim().is_empty() {
        return Err(Rejection::new(path, Rule::Missing, "must not be empty"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Rejection::new(
            path,
            Rule::Malformed,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A short text kept in the clear or typed on a form (a city, a riding, a name): at most
/// [`MAX_SHORT_TEXT`] bytes and no control character at all, not even a line break or a tab
/// (they would split a CSV row or a log line). `required` ones must not be blank. The form's
/// rules ([`crate::form`]) and the server's judgement of a record's clear fields both use it.
pub fn check_clear_text(path: &str, value: &str, required: bool) -> Result<(), Rejection> {
    check_text(path, value, MAX_SHORT_TEXT, required)?;
    if value.chars().any(char::is_control) {
        return Err(Rejection::new(
            path,
            Rule::Malformed,
            "must not contain control characters (line breaks, tabs)",
        ));
    }
    Ok(())
}

/// A time in ms since the epoch between 2020 and 2100.
pub fn check_time(path: &str, ms: i64) -> Result<(), Rejection> {
    if !(MIN_TIME_MS..MAX_TIME_MS).contains(&ms) {
        return Err(Rejection::new(
            path,
            Rule::Malformed,
            format!("a time between 2020 and 2100 in ms since the epoch, got {ms}"),
        ));
    }
    Ok(())
}

const FIRST_LETTERS: &[u8] = b"ABCEGHJKLMNPRSTVXY";
const LATER_LETTERS: &[u8] = b"ABCEGHJKLMNPRSTVWXYZ";

/// Is `fsa` a Canadian forward sortation area: letter, digit, letter, upper case ("M5V")?
pub fn is_fsa(fsa: &str) -> bool {
    let b = fsa.as_bytes();
    b.len() == 3
        && FIRST_LETTERS.contains(&b[0])
        && b[1].is_ascii_digit()
        && LATER_LETTERS.contains(&b[2])
}

/// Checks an FSA field.
pub fn check_fsa(path: &str, fsa: &str) -> Result<(), Rejection> {
    if is_fsa(fsa) {
        Ok(())
    } else {
        Err(Rejection::new(
            path,
            Rule::Malformed,
            format!(
                "an FSA is the first three characters of a Canadian postal code, upper case, like \"M5V\"; got {fsa:?}"
            ),
        ))
    }
}

/// Normalizes a Canadian postal code ("m5v 2t6" -> "M5V2T6"), or says why it is not one.
pub fn normalize_postal_code(input: &str) -> Result<String, String> {
    let code: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect();
    let b = code.as_bytes();
    let ok = b.len() == 6
        && code.get(..3).is_some_and(is_fsa)
        && b[3].is_ascii_digit()
        && LATER_LETTERS.contains(&b[4])
        && b[5].is_ascii_digit();
    if ok {
        return Ok(code);
    }
    let shape = b.len() == 6
        && [0, 2, 4].iter().all(|&i| b[i].is_ascii_uppercase())
        && [1, 3, 5].iter().all(|&i| b[i].is_ascii_digit());
    if shape {
        // The right shape with a letter Canada Post does not use there: say which and why.
        if !FIRST_LETTERS.contains(&b[0]) {
            return Err(format!(
                "{input:?} is not a Canadian postal code: it starts with {}, and no postal code \
                 starts with D, F, I, O, Q, U, W or Z (Canada Post does not use them as the first \
                 letter); check the first letter",
                b[0] as char
            ));
        }
        if let Some(&l) = [b[2], b[4]].iter().find(|l| !LATER_LETTERS.contains(l)) {
            return Err(format!(
                "{input:?} is not a Canadian postal code: it has the letter {}, and Canada Post \
                 never uses D, F, I, O, Q or U in a postal code (O is often a mistyped 0)",
                l as char
            ));
        }
    }
    Err(format!(
        "{input:?} is not a Canadian postal code: expected letter-digit-letter digit-letter-digit, like \"M5V 2T6\""
    ))
}

/// The FSA of a normalized postal code.
pub fn fsa_of(postal_code: &str) -> String {
    postal_code.chars().take(3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postal_codes() {
        assert_eq!(normalize_postal_code(" m5v 2t6 ").unwrap(), "M5V2T6");
        assert_eq!(normalize_postal_code("K1A-0B1").unwrap(), "K1A0B1");
        for bad in [
            "", "12345", "M5V", "D5V2T6", "M5V2T", "M5V2T66", "MMV2T6", "M5V2O6", "ÉÉÉ",
        ] {
            assert!(normalize_postal_code(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(fsa_of("M5V2T6"), "M5V");
    }

    #[test]
    fn a_refused_postal_code_names_the_rule() {
        for (code, letter) in [("Z5V 2T6", "Z"), ("D1A 1A1", "D"), ("w1a1a1", "W")] {
            let e = normalize_postal_code(code).unwrap_err();
            assert!(e.contains(&format!("it starts with {letter}")), "{e}");
            assert!(e.contains("D, F, I, O, Q, U, W or Z"), "{e}");
        }
        let e = normalize_postal_code("M5V 2O6").unwrap_err();
        assert!(e.contains("the letter O"), "{e}");
        assert!(e.contains("never uses D, F, I, O, Q or U"), "{e}");
        let e = normalize_postal_code("M5V 2T").unwrap_err();
        assert!(e.contains("letter-digit-letter digit-letter-digit"), "{e}");
    }

    #[test]
    fn fsas_and_ids() {
        assert!(is_fsa("M5V"));
        assert!(!is_fsa("m5v"));
        assert!(!is_fsa("Z5V"));
        assert!(check_id("x", "sig_01-a").is_ok());
        assert_eq!(check_id("x", "a b").unwrap_err().rule, Rule::Malformed);
        assert_eq!(
            check_id("x", &"a".repeat(65)).unwrap_err().rule,
            Rule::Malformed
        );
        assert_eq!(
            check_text("x", "  ", 10, true).unwrap_err().rule,
            Rule::Missing
        );
        assert_eq!(
            check_text("x", "abcdef", 3, false).unwrap_err().rule,
            Rule::TooLarge
        );
        assert!(check_time("x", MIN_TIME_MS - 1).is_err());
        assert!(check_time("x", 1_750_000_000_000).is_ok());
    }
}
