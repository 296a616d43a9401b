//! The totals document: the server writes the last computed totals of a campaign into it, and
//! devices sync it so that an offline phone still shows the team's last-known count.

use automerge::{Automerge, ROOT, ScalarValue};

use crate::doc::{self, DocHeader, DocKind, WriteError, get_int, get_str};
use crate::totals::Totals;
use crate::validate::{Rejection, Rule};

/// Creates an empty totals document.
pub fn create(campaign: &str) -> Result<Automerge, WriteError> {
    crate::fields::check_id("campaign", campaign)?;
    Ok(doc::create(DocKind::Totals, campaign, None, &[]))
}

/// Writes new totals, computed at `computed_at` (ms since the epoch).
pub fn write(doc: &mut Automerge, totals: &Totals, computed_at: i64) -> Result<(), WriteError> {
    let json = serde_json::to_string(totals).expect("totals serialize");
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        use automerge::transaction::Transactable;
        tx.put(ROOT, "computed_at", ScalarValue::Int(computed_at))?;
        tx.put(ROOT, "json", json.as_str())?;
        Ok(())
    })
    .map_err(|f| f.error)?;
    Ok(())
}

/// Reads the last totals and when they were computed; `None` before the server first wrote them.
pub fn read(doc: &Automerge) -> Result<Option<(Totals, i64)>, Rejection> {
    let h = DocHeader::read(doc)?;
    if h.kind != DocKind::Totals {
        return Err(Rejection::new(
            "kind",
            Rule::WrongKind,
            format!("expected a totals document, this is a {}", h.kind),
        ));
    }
    let (Some(json), Some(at)) = (
        get_str(doc, &ROOT, "json", "json")?,
        get_int(doc, &ROOT, "computed_at", "computed_at")?,
    ) else {
        return Ok(None);
    };
    let totals = serde_json::from_str(&json).map_err(|e| {
        Rejection::new("json", Rule::Malformed, format!("not a totals record: {e}"))
    })?;
    Ok(Some((totals, at)))
}

/// Checks the root of a totals document after a change.
pub(crate) fn check_root(doc: &Automerge) -> Result<(), Rejection> {
    if let Some(json) = get_str(doc, &ROOT, "json", "json")? {
        if json.len() > 4 * 1024 * 1024 {
            return Err(Rejection::new(
                "json",
                Rule::TooLarge,
                "totals are at most 4 MiB",
            ));
        }
        serde_json::from_str::<Totals>(&json).map_err(|e| {
            Rejection::new("json", Rule::Malformed, format!("not a totals record: {e}"))
        })?;
    }
    if let Some(at) = get_int(doc, &ROOT, "computed_at", "computed_at")? {
        crate::fields::check_time("computed_at", at)?;
    }
    Ok(())
}
