//! The review document, written by organizers: strikes of signatures that must not count
//! (duplicates, invalid entries, withdrawn consent, test entries) and the ledger of paper petition
//! sheets, which count beside the digital signatures. A strike can be revoked, never removed.

use std::collections::BTreeMap;

use automerge::{Automerge, ObjId, ScalarValue};

use crate::doc::{self, DocHeader, DocKind, Fields, WriteError};
use crate::fields::{MAX_SHORT_TEXT, check_id, check_text, check_time};
use crate::validate::{Rejection, Rule};

/// Container of strikes, keyed by signature id.
pub const STRIKES: &str = "strikes";
/// Container of paper sheets, keyed by serial.
pub const SHEETS: &str = "sheets";

pub(crate) const STRIKE_FIELDS: &[&str] = &["signature", "reason", "by", "at", "revoked"];
pub(crate) const SHEET_FIELDS: &[&str] = &["serial", "count", "riding", "status"];

/// Why a signature is struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrikeReason {
    /// The same person signed twice.
    Duplicate,
    /// Not a valid signature.
    Invalid,
    /// The signer withdrew consent.
    WithdrawnConsent,
    /// A test entry.
    TestEntry,
    /// Erased at the signer's request: the record's key was deleted from the server's key
    /// table (docs/security.md, "Erasure"); it never counts again. Final: an erased strike is
    /// never revoked or changed.
    Erased,
}

impl StrikeReason {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            StrikeReason::Duplicate => "duplicate",
            StrikeReason::Invalid => "invalid",
            StrikeReason::WithdrawnConsent => "withdrawn_consent",
            StrikeReason::TestEntry => "test_entry",
            StrikeReason::Erased => "erased",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "duplicate" => StrikeReason::Duplicate,
            "invalid" => StrikeReason::Invalid,
            "withdrawn_consent" => StrikeReason::WithdrawnConsent,
            "test_entry" => StrikeReason::TestEntry,
            "erased" => StrikeReason::Erased,
            _ => return None,
        })
    }
}

/// Where a paper sheet is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SheetStatus {
    /// Collected from the field.
    Collected,
    /// Signatures counted.
    Counted,
    /// Delivered to the addressee.
    Delivered,
}

impl SheetStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            SheetStatus::Collected => "collected",
            SheetStatus::Counted => "counted",
            SheetStatus::Delivered => "delivered",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "collected" => SheetStatus::Collected,
            "counted" => SheetStatus::Counted,
            "delivered" => SheetStatus::Delivered,
            _ => return None,
        })
    }
}

/// A strike of one signature.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Strike {
    /// The struck signature's id.
    pub signature: String,
    /// Why.
    pub reason: StrikeReason,
    /// The organizer who struck it.
    pub by: String,
    /// When, ms since the epoch.
    pub at: i64,
    /// Revoked: the signature counts again.
    pub revoked: bool,
}

/// A paper petition sheet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sheet {
    /// Serial number written on the sheet.
    pub serial: String,
    /// Signatures on it.
    pub count: i64,
    /// Riding, if known.
    pub riding: Option<String>,
    /// Where it is.
    pub status: SheetStatus,
}

/// A review as read from its document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Review {
    /// Strikes by signature id.
    pub strikes: BTreeMap<String, Strike>,
    /// Sheets by serial.
    pub sheets: BTreeMap<String, Sheet>,
}

impl Strike {
    /// Checks every field.
    pub fn check(&self) -> Result<(), Rejection> {
        let p = format!("{STRIKES}/{}", self.signature);
        check_id(&format!("{p}/signature"), &self.signature)?;
        check_id(&format!("{p}/by"), &self.by)?;
        if self.reason == StrikeReason::Erased && self.revoked {
            return Err(Rejection::new(
                format!("{p}/revoked"),
                Rule::Immutable,
                "an erasure is final: its record's key is gone, it cannot count again",
            ));
        }
        check_time(&format!("{p}/at"), self.at)
    }
}

impl Sheet {
    /// Checks every field.
    pub fn check(&self) -> Result<(), Rejection> {
        let p = format!("{SHEETS}/{}", self.serial);
        check_id(&format!("{p}/serial"), &self.serial)?;
        if !(0..=10_000).contains(&self.count) {
            return Err(Rejection::new(
                format!("{p}/count"),
                Rule::Malformed,
                format!("a sheet holds 0 to 10,000 signatures, got {}", self.count),
            ));
        }
        if let Some(r) = &self.riding {
            check_text(&format!("{p}/riding"), r, MAX_SHORT_TEXT, true)?;
        }
        Ok(())
    }
}

/// Creates a review document with both containers.
pub fn create(campaign: &str) -> Result<Automerge, WriteError> {
    check_id("campaign", campaign)?;
    Ok(doc::create(DocKind::Review, campaign, None, &[]))
}

fn write(
    doc: &mut Automerge,
    container: &str,
    id: &str,
    fields: &[(&str, ScalarValue)],
) -> Result<(), WriteError> {
    let obj = doc::container(doc, container)?;
    doc.transact::<_, _, automerge::AutomergeError>(|tx| doc::put_record(tx, &obj, id, fields))
        .map_err(|f| f.error)?;
    Ok(())
}

/// Strikes a signature, or changes or revokes an existing strike.
pub fn put_strike(doc: &mut Automerge, strike: &Strike) -> Result<(), WriteError> {
    strike.check()?;
    write(
        doc,
        STRIKES,
        &strike.signature,
        &[
            ("signature", strike.signature.as_str().into()),
            ("reason", strike.reason.as_str().into()),
            ("by", strike.by.as_str().into()),
            ("at", ScalarValue::Int(strike.at)),
            ("revoked", ScalarValue::Boolean(strike.revoked)),
        ],
    )
}

/// Records a paper sheet, or updates its count, riding or status.
pub fn put_sheet(doc: &mut Automerge, sheet: &Sheet) -> Result<(), WriteError> {
    sheet.check()?;
    write(
        doc,
        SHEETS,
        &sheet.serial,
        &[
            ("serial", sheet.serial.as_str().into()),
            ("count", ScalarValue::Int(sheet.count)),
            ("riding", doc::opt(&sheet.riding)),
            ("status", sheet.status.as_str().into()),
        ],
    )
}

pub(crate) fn read_strike(doc: &Automerge, obj: &ObjId, key: &str) -> Result<Strike, Rejection> {
    strike_from(Fields::read(doc, obj, format!("{STRIKES}/{key}")), key)
}

/// Reads one strike from its fields.
pub(crate) fn strike_from(r: Fields, key: &str) -> Result<Strike, Rejection> {
    r.only(STRIKE_FIELDS)?;
    let reason_s = r.required("reason", r.str("reason")?)?;
    let reason = StrikeReason::parse(&reason_s).ok_or_else(|| {
        Rejection::new(r.path("reason"), Rule::Malformed, format!("{reason_s:?} is not a strike reason: duplicate, invalid, withdrawn_consent, test_entry or erased"))
    })?;
    let s = Strike {
        signature: r.required("signature", r.str("signature")?)?,
        reason,
        by: r.required("by", r.str("by")?)?,
        at: r.required("at", r.int("at")?)?,
        revoked: r.bool("revoked")?.unwrap_or(false),
    };
    if s.signature != key {
        return Err(Rejection::new(
            r.path("signature"),
            Rule::Malformed,
            "a strike's key is the struck signature's id",
        ));
    }
    s.check()?;
    Ok(s)
}

pub(crate) fn read_sheet(doc: &Automerge, obj: &ObjId, key: &str) -> Result<Sheet, Rejection> {
    sheet_from(Fields::read(doc, obj, format!("{SHEETS}/{key}")), key)
}

/// Reads one paper sheet from its fields.
pub(crate) fn sheet_from(r: Fields, key: &str) -> Result<Sheet, Rejection> {
    r.only(SHEET_FIELDS)?;
    let status_s = r.required("status", r.str("status")?)?;
    let status = SheetStatus::parse(&status_s).ok_or_else(|| {
        Rejection::new(
            r.path("status"),
            Rule::Malformed,
            format!("{status_s:?} is not a sheet status: collected, counted or delivered"),
        )
    })?;
    let s = Sheet {
        serial: r.required("serial", r.str("serial")?)?,
        count: r.required("count", r.int("count")?)?,
        riding: r.opt_str("riding")?,
        status,
    };
    if s.serial != key {
        return Err(Rejection::new(
            r.path("serial"),
            Rule::Malformed,
            "a sheet's key is its serial",
        ));
    }
    s.check()?;
    Ok(s)
}

/// Reads a whole review document.
pub fn read(doc: &Automerge) -> Result<Review, Rejection> {
    let h = DocHeader::read(doc)?;
    if h.kind != DocKind::Review {
        return Err(Rejection::new(
            "kind",
            Rule::WrongKind,
            format!("expected a review document, this is a {}", h.kind),
        ));
    }
    let mut review = Review::default();
    for (key, obj) in doc::records(doc, STRIKES)? {
        review
            .strikes
            .insert(key.clone(), read_strike(doc, &obj, &key)?);
    }
    for (key, obj) in doc::records(doc, SHEETS)? {
        review
            .sheets
            .insert(key.clone(), read_sheet(doc, &obj, &key)?);
    }
    Ok(review)
}

/// One strike by signature id, if present.
pub fn strike(doc: &Automerge, signature_id: &str) -> Result<Option<Strike>, Rejection> {
    doc::record(doc, STRIKES, signature_id)?
        .map(|obj| read_strike(doc, &obj, signature_id))
        .transpose()
}

/// One sheet by serial, if present.
pub fn sheet(doc: &Automerge, serial: &str) -> Result<Option<Sheet>, Rejection> {
    doc::record(doc, SHEETS, serial)?
        .map(|obj| read_sheet(doc, &obj, serial))
        .transpose()
}
