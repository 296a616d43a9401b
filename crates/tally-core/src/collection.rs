//! The collection document: one canvasser's signatures and check-ins for one campaign. Only its
//! owner writes it. Records are added, corrected or withdrawn by their owner, never removed.
//!
//! A phone builds a signature from a [`SignatureForm`]: the form is checked field by field, the
//! personal fields are sealed to the campaign's recipients and the duplicate token is computed,
//! all before anything is written.

use std::collections::BTreeMap;

use automerge::{Automerge, ObjId, ReadDoc, ScalarValue};

use crate::campaign::Campaign;
use crate::doc::{self, DocHeader, DocKind, Fields, WriteError};
use crate::fields::{MAX_SEALED, check_clear_text, check_fsa, check_id, check_time, fsa_of};
pub use crate::form::CheckedForm;
use crate::seal::{self, DuplicateKey, PersonalFields, RecordKey, is_token};
use crate::validate::{Rejection, Rule};

/// Container of signatures.
pub const SIGNATURES: &str = "signatures";
/// Container of check-ins.
pub const CHECKINS: &str = "checkins";
/// The magic header every sealed blob starts with (an age file).
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// The fields of a signature record.
pub const SIGNATURE_FIELDS: &[&str] = &[
    "id",
    "campaign",
    "event",
    "collected_at",
    "collected_by",
    "city",
    "fsa",
    "riding",
    "consent_contact",
    "dup",
    "sealed",
    "withdrawn",
];
/// Fields fixed when a signature is taken; a correction may not change them.
pub(crate) const SIGNATURE_IMMUTABLE: &[&str] = &["id", "campaign", "collected_at", "collected_by"];
/// The fields of a check-in record.
pub const CHECKIN_FIELDS: &[&str] = &[
    "id",
    "event",
    "attendee",
    "at",
    "by",
    "walk_in",
    "withdrawn",
];
pub(crate) const CHECKIN_IMMUTABLE: &[&str] = &["id", "event", "at", "by"];

/// A signature as stored: what totals need in the clear, the rest sealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signature {
    /// Unique record id.
    pub id: String,
    /// The campaign signed.
    pub campaign: String,
    /// The event it was collected at, if any.
    pub event: Option<String>,
    /// When, ms since the epoch.
    pub collected_at: i64,
    /// The canvasser who collected it (the collection's owner).
    pub collected_by: String,
    /// City of the signer.
    pub city: String,
    /// FSA of the signer's postal code ("M5V").
    pub fsa: String,
    /// Federal riding, if known.
    pub riding: Option<String>,
    /// May the campaign contact them.
    pub consent_contact: bool,
    /// Duplicate token (HMAC of normalized name and postal code).
    pub dup: String,
    /// Sealed personal fields (an age file).
    #[serde(with = "hex_bytes")]
    pub sealed: Vec<u8>,
    /// Withdrawn by the canvasser (the signer asked, or it was a mistake).
    pub withdrawn: bool,
}

/// A check-in of a person to an event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkin {
    /// Unique record id.
    pub id: String,
    /// The event.
    pub event: String,
    /// Attendee token (HMAC of the normalized name).
    pub attendee: String,
    /// When, ms since the epoch.
    pub at: i64,
    /// The canvasser who checked them in.
    pub by: String,
    /// A walk-in (true) or pre-registered (false).
    pub walk_in: bool,
    /// Withdrawn by the canvasser.
    pub withdrawn: bool,
}

/// A collection as read from its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Campaign id.
    pub campaign: String,
    /// The canvasser who owns it.
    pub owner: String,
    /// Signatures by id.
    pub signatures: BTreeMap<String, Signature>,
    /// Check-ins by id.
    pub checkins: BTreeMap<String, Checkin>,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

fn check_event(path: &str, event: &str, campaign: Option<&Campaign>) -> Result<(), Rejection> {
    check_id(path, event)?;
    match campaign {
        Some(c) if c.events.contains_key(event) => Ok(()),
        Some(c) => Err(Rejection::new(
            path,
            Rule::UnknownEvent,
            format!(
                "no event {event:?} in campaign {:?}; known events: {}",
                c.id,
                c.events.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
        None => Err(Rejection::new(
            path,
            Rule::UnknownEvent,
            format!("event {event:?} cannot be checked: the campaign document is not known"),
        )),
    }
}

impl Signature {
    /// Checks every field; `owner` is the collection's owner, `campaign` the campaign read from its
    /// document (events are checked against it).
    pub fn check(
        &self,
        owner: &str,
        campaign_id: &str,
        campaign: Option<&Campaign>,
    ) -> Result<(), Rejection> {
        let p = format!("{SIGNATURES}/{}", self.id);
        let f = |k: &str| format!("{p}/{k}");
        check_id(&f("id"), &self.id)?;
        if self.campaign != campaign_id {
            return Err(Rejection::new(
                f("campaign"),
                Rule::Malformed,
                format!(
                    "this collection belongs to campaign {campaign_id:?}, not {:?}",
                    self.campaign
                ),
            ));
        }
        if let Some(e) = &self.event {
            check_event(&f("event"), e, campaign)?;
        }
        check_time(&f("collected_at"), self.collected_at)?;
        if self.collected_by != owner {
            return Err(Rejection::new(
                f("collected_by"),
                Rule::ActingAsOther,
                format!(
                    "records in {owner:?}'s collection are collected by {owner:?}, not {:?}",
                    self.collected_by
                ),
            ));
        }
        check_clear_text(&f("city"), &self.city, true)?;
        check_fsa(&f("fsa"), &self.fsa)?;
        if let Some(r) = &self.riding {
            check_clear_text(&f("riding"), r, true)?;
        }
        if !is_token(&self.dup) {
            return Err(Rejection::new(
                f("dup"),
                Rule::Malformed,
                "a duplicate token is 64 lower-case hex digits (HMAC-SHA256)",
            ));
        }
        if self.sealed.len() > MAX_SEALED {
            return Err(Rejection::new(
                f("sealed"),
                Rule::TooLarge,
                format!("at most {MAX_SEALED} bytes, got {}", self.sealed.len()),
            ));
        }
        if seal::version(&self.sealed).is_none() {
            return Err(Rejection::new(
                f("sealed"),
                Rule::Malformed,
                "personal fields must be sealed: tally-seal-2 (AES-256-GCM under the record's own key) or an age file",
            ));
        }
        Ok(())
    }

    fn scalars(&self) -> Vec<(&'static str, ScalarValue)> {
        vec![
            ("id", self.id.as_str().into()),
            ("campaign", self.campaign.as_str().into()),
            ("event", doc::opt(&self.event)),
            ("collected_at", ScalarValue::Int(self.collected_at)),
            ("collected_by", self.collected_by.as_str().into()),
            ("city", self.city.as_str().into()),
            ("fsa", self.fsa.as_str().into()),
            ("riding", doc::opt(&self.riding)),
            (
                "consent_contact",
                ScalarValue::Boolean(self.consent_contact),
            ),
            ("dup", self.dup.as_str().into()),
            ("sealed", ScalarValue::Bytes(self.sealed.clone())),
            ("withdrawn", ScalarValue::Boolean(self.withdrawn)),
        ]
    }
}

impl Checkin {
    /// Checks every field.
    pub fn check(&self, owner: &str, campaign: Option<&Campaign>) -> Result<(), Rejection> {
        let p = format!("{CHECKINS}/{}", self.id);
        let f = |k: &str| format!("{p}/{k}");
        check_id(&f("id"), &self.id)?;
        check_event(&f("event"), &self.event, campaign)?;
        if !is_token(&self.attendee) {
            return Err(Rejection::new(
                f("attendee"),
                Rule::Malformed,
                "an attendee token is 64 lower-case hex digits (HMAC-SHA256)",
            ));
        }
        check_time(&f("at"), self.at)?;
        if self.by != owner {
            return Err(Rejection::new(
                f("by"),
                Rule::ActingAsOther,
                format!(
                    "check-ins in {owner:?}'s collection are made by {owner:?}, not {:?}",
                    self.by
                ),
            ));
        }
        Ok(())
    }

    fn scalars(&self) -> Vec<(&'static str, ScalarValue)> {
        vec![
            ("id", self.id.as_str().into()),
            ("event", self.event.as_str().into()),
            ("attendee", self.attendee.as_str().into()),
            ("at", ScalarValue::Int(self.at)),
            ("by", self.by.as_str().into()),
            ("walk_in", ScalarValue::Boolean(self.walk_in)),
            ("withdrawn", ScalarValue::Boolean(self.withdrawn)),
        ]
    }
}

/// What a canvasser types in for one signature.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignatureForm {
    /// Full name.
    pub name: String,
    /// Postal code, any spacing or case.
    pub postal_code: String,
    /// City.
    pub city: String,
    /// Email, optional.
    pub email: Option<String>,
    /// Phone, optional.
    pub phone: Option<String>,
    /// Street address, optional.
    pub street: Option<String>,
    /// Consent to be contacted.
    pub consent_contact: bool,
    /// Event it is collected at, optional.
    pub event: Option<String>,
    /// Riding, optional.
    pub riding: Option<String>,
}

impl std::fmt::Debug for SignatureForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureForm")
            .field("city", &self.city)
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

/// A form field the canvasser must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FormError {
    /// The form field, e.g. "postal_code".
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn form_err(field: &'static str, message: impl Into<String>) -> FormError {
    FormError {
        field,
        message: message.into(),
    }
}

/// Who, where and when a signature is taken, for [`SignatureForm::prepare`].
pub struct TakenBy<'a> {
    /// The campaign, read from its document.
    pub campaign: &'a Campaign,
    /// The campaign's duplicate key.
    pub key: &'a DuplicateKey,
    /// The canvasser.
    pub canvasser: &'a str,
    /// Now, ms since the epoch.
    pub now: i64,
    /// The new record's id.
    pub id: String,
}

impl SignatureForm {
    /// Checks the form ([`SignatureForm::check`], the form's rules in [`crate::form`]) and
    /// builds the signature record: seals the personal fields and computes the duplicate token.
    /// Nothing is written anywhere.
    pub fn prepare(&self, by: &TakenBy<'_>) -> Result<Signature, FormError> {
        self.check(by.campaign)?.seal(by)
    }
}

impl CheckedForm {
    /// Builds the signature record of a checked form: seals the personal fields to the
    /// campaign's recipients and computes the duplicate token; the record is checked with the
    /// rules the server runs.
    ///
    /// This writes format v1 (age straight to the recipients), which cannot be erased: phones
    /// use [`CheckedForm::seal_shreddable`]. Kept for fixtures and for reading old documents'
    /// rules.
    pub fn seal(&self, by: &TakenBy<'_>) -> Result<Signature, FormError> {
        let sealed = seal::seal(&by.campaign.recipients, &self.personal())
            .map_err(|e| form_err("recipients", e.to_string()))?;
        self.record(by, sealed)
    }

    /// Builds the signature record of a checked form in format v2: the personal fields are
    /// encrypted under a new [`RecordKey`] of their own, and that key is wrapped to the
    /// campaign's recipients. The record goes into the collection document; the wrapped key
    /// never does (the phone uploads it to the server's key table, docs/clients.md).
    pub fn seal_shreddable(&self, by: &TakenBy<'_>) -> Result<Shreddable, FormError> {
        let key = RecordKey::generate();
        let wrapped_key = key
            .wrap(&by.campaign.recipients)
            .map_err(|e| form_err("recipients", e.to_string()))?;
        let sealed = seal::seal_v2(&key, &by.id, &self.personal())
            .map_err(|e| form_err("record", e.to_string()))?;
        Ok(Shreddable {
            signature: self.record(by, sealed)?,
            wrapped_key,
        })
    }

    fn personal(&self) -> PersonalFields {
        PersonalFields {
            name: self.name.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            street: self.street.clone(),
            postal_code: self.postal_code.clone(),
        }
    }

    fn record(&self, by: &TakenBy<'_>, sealed: Vec<u8>) -> Result<Signature, FormError> {
        let sig = Signature {
            id: by.id.clone(),
            campaign: by.campaign.id.clone(),
            event: self.event.clone(),
            collected_at: by.now,
            collected_by: by.canvasser.to_string(),
            city: self.city.clone(),
            fsa: fsa_of(&self.postal_code),
            riding: self.riding.clone(),
            consent_contact: self.consent_contact,
            dup: by.key.duplicate_token(&self.name, &self.postal_code),
            sealed,
            withdrawn: false,
        };
        sig.check(by.canvasser, &by.campaign.id, Some(by.campaign))
            .map_err(|r| form_err("record", r.to_string()))?;
        Ok(sig)
    }
}

/// A v2 signature and its record key wrapped to the campaign's recipients
/// ([`CheckedForm::seal_shreddable`]).
#[derive(Debug, Clone)]
pub struct Shreddable {
    /// The record, its personal fields sealed v2.
    pub signature: Signature,
    /// Its record key sealed with age to every recipient: kept outside every document.
    pub wrapped_key: Vec<u8>,
}

/// A new random record id (24 hex digits).
pub fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Creates a canvasser's collection document: header, owner and both containers in one change.
pub fn create(campaign: &str, owner: &str) -> Result<Automerge, WriteError> {
    check_id("campaign", campaign)?;
    check_id("owner", owner)?;
    Ok(doc::create(DocKind::Collection, campaign, Some(owner), &[]))
}

/// A new collection that continues `previous` (the document id of the phone's collection before
/// it in its chain: after a roll-over, a refusal or a re-enrollment). The link is part of the
/// header: written in the first change, never changed.
pub fn create_continuing(
    campaign: &str,
    owner: &str,
    previous: &str,
) -> Result<Automerge, WriteError> {
    check_id("campaign", campaign)?;
    check_id("owner", owner)?;
    check_id(doc::KEY_CONTINUES, previous)?;
    Ok(doc::create(
        DocKind::Collection,
        campaign,
        Some(owner),
        &[(doc::KEY_CONTINUES, ScalarValue::Str(previous.into()))],
    ))
}

fn owner_of(doc: &Automerge) -> Result<(String, String), WriteError> {
    let h = DocHeader::read(doc)?;
    if h.kind != DocKind::Collection {
        return Err(Rejection::new(
            "kind",
            Rule::WrongKind,
            format!("expected a collection document, this is a {}", h.kind),
        )
        .into());
    }
    Ok((h.campaign, h.owner.unwrap_or_default()))
}

fn write_record(
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

/// Adds a new signature. Refuses a bad record or an id already used, writing nothing.
pub fn add_signature(
    doc: &mut Automerge,
    sig: &Signature,
    campaign: &Campaign,
) -> Result<(), WriteError> {
    let (campaign_id, owner) = owner_of(doc)?;
    sig.check(&owner, &campaign_id, Some(campaign))?;
    if doc::record(doc, SIGNATURES, &sig.id)?.is_some() {
        return Err(Rejection::new(
            format!("{SIGNATURES}/{}", sig.id),
            Rule::Malformed,
            "a signature with this id already exists",
        )
        .into());
    }
    write_record(doc, SIGNATURES, &sig.id, &sig.scalars())
}

/// Marks one of the owner's signatures withdrawn. It stays in the document.
pub fn withdraw_signature(doc: &mut Automerge, id: &str) -> Result<(), WriteError> {
    if doc::record(doc, SIGNATURES, id)?.is_none() {
        return Err(WriteError::NotFound(id.to_string()));
    }
    write_record(
        doc,
        SIGNATURES,
        id,
        &[("withdrawn", ScalarValue::Boolean(true))],
    )
}

/// Corrects one of the owner's signatures: every field but the id, campaign, time and collector
/// may be replaced by the values in `corrected`.
pub fn correct_signature(
    doc: &mut Automerge,
    corrected: &Signature,
    campaign: &Campaign,
) -> Result<(), WriteError> {
    let (campaign_id, owner) = owner_of(doc)?;
    let Some(obj) = doc::record(doc, SIGNATURES, &corrected.id)? else {
        return Err(WriteError::NotFound(corrected.id.clone()));
    };
    let current = read_signature(doc, &obj, &corrected.id)?;
    corrected.check(&owner, &campaign_id, Some(campaign))?;
    if (
        current.campaign.as_str(),
        current.collected_at,
        current.collected_by.as_str(),
    ) != (
        corrected.campaign.as_str(),
        corrected.collected_at,
        corrected.collected_by.as_str(),
    ) {
        return Err(Rejection::new(
            format!("{SIGNATURES}/{}", corrected.id),
            Rule::Immutable,
            "a correction keeps the id, campaign, time and collector",
        )
        .into());
    }
    let changed: Vec<_> = corrected
        .scalars()
        .into_iter()
        .filter(|(k, _)| !SIGNATURE_IMMUTABLE.contains(k))
        .collect();
    write_record(doc, SIGNATURES, &corrected.id, &changed)
}

/// Adds a check-in.
pub fn add_checkin(
    doc: &mut Automerge,
    checkin: &Checkin,
    campaign: &Campaign,
) -> Result<(), WriteError> {
    let (_, owner) = owner_of(doc)?;
    checkin.check(&owner, Some(campaign))?;
    if doc::record(doc, CHECKINS, &checkin.id)?.is_some() {
        return Err(Rejection::new(
            format!("{CHECKINS}/{}", checkin.id),
            Rule::Malformed,
            "a check-in with this id already exists",
        )
        .into());
    }
    write_record(doc, CHECKINS, &checkin.id, &checkin.scalars())
}

/// Marks one of the owner's check-ins withdrawn.
pub fn withdraw_checkin(doc: &mut Automerge, id: &str) -> Result<(), WriteError> {
    if doc::record(doc, CHECKINS, id)?.is_none() {
        return Err(WriteError::NotFound(id.to_string()));
    }
    write_record(
        doc,
        CHECKINS,
        id,
        &[("withdrawn", ScalarValue::Boolean(true))],
    )
}

/// Reads one signature record (structure and types; campaign rules are checked by `check`).
pub fn read_signature(doc: &Automerge, obj: &ObjId, key: &str) -> Result<Signature, Rejection> {
    signature_from(Fields::read(doc, obj, format!("{SIGNATURES}/{key}")), key)
}

/// Reads one signature record from its fields (read in one pass, or with one value put in by
/// the validator to judge a value that did not survive).
pub(crate) fn signature_from(r: Fields, key: &str) -> Result<Signature, Rejection> {
    r.only(SIGNATURE_FIELDS)?;
    let sig = Signature {
        id: r.required("id", r.str("id")?)?,
        campaign: r.required("campaign", r.str("campaign")?)?,
        event: r.opt_str("event")?,
        collected_at: r.required("collected_at", r.int("collected_at")?)?,
        collected_by: r.required("collected_by", r.str("collected_by")?)?,
        city: r.required("city", r.str("city")?)?,
        fsa: r.required("fsa", r.str("fsa")?)?,
        riding: r.opt_str("riding")?,
        consent_contact: r.required("consent_contact", r.bool("consent_contact")?)?,
        dup: r.required("dup", r.str("dup")?)?,
        sealed: r.required("sealed", r.bytes("sealed")?)?,
        withdrawn: r.bool("withdrawn")?.unwrap_or(false),
    };
    if sig.id != key {
        return Err(Rejection::new(
            r.path("id"),
            Rule::Malformed,
            "a record's id must equal its key",
        ));
    }
    Ok(sig)
}

/// Reads one check-in record.
pub fn read_checkin(doc: &Automerge, obj: &ObjId, key: &str) -> Result<Checkin, Rejection> {
    checkin_from(Fields::read(doc, obj, format!("{CHECKINS}/{key}")), key)
}

/// Reads one check-in record from its fields.
pub(crate) fn checkin_from(r: Fields, key: &str) -> Result<Checkin, Rejection> {
    r.only(CHECKIN_FIELDS)?;
    let c = Checkin {
        id: r.required("id", r.str("id")?)?,
        event: r.required("event", r.str("event")?)?,
        attendee: r.required("attendee", r.str("attendee")?)?,
        at: r.required("at", r.int("at")?)?,
        by: r.required("by", r.str("by")?)?,
        walk_in: r.required("walk_in", r.bool("walk_in")?)?,
        withdrawn: r.bool("withdrawn")?.unwrap_or(false),
    };
    if c.id != key {
        return Err(Rejection::new(
            r.path("id"),
            Rule::Malformed,
            "a record's id must equal its key",
        ));
    }
    Ok(c)
}

/// Reads a whole collection document.
pub fn read(doc: &Automerge) -> Result<Collection, Rejection> {
    let h = DocHeader::read(doc)?;
    if h.kind != DocKind::Collection {
        return Err(Rejection::new(
            "kind",
            Rule::WrongKind,
            format!("expected a collection document, this is a {}", h.kind),
        ));
    }
    let mut signatures = BTreeMap::new();
    for (key, obj) in doc::records(doc, SIGNATURES)? {
        signatures.insert(key.clone(), read_signature(doc, &obj, &key)?);
    }
    let mut checkins = BTreeMap::new();
    for (key, obj) in doc::records(doc, CHECKINS)? {
        checkins.insert(key.clone(), read_checkin(doc, &obj, &key)?);
    }
    Ok(Collection {
        campaign: h.campaign,
        owner: h.owner.unwrap_or_default(),
        signatures,
        checkins,
    })
}

/// Number of records (signatures and check-ins) in a collection, without reading them.
pub fn record_count(doc: &Automerge) -> usize {
    [SIGNATURES, CHECKINS]
        .iter()
        .filter_map(|c| doc::container(doc, c).ok())
        .map(|obj| doc.length(&obj))
        .sum()
}

/// One signature of a collection by id, if present.
pub fn signature(doc: &Automerge, id: &str) -> Result<Option<Signature>, Rejection> {
    doc::record(doc, SIGNATURES, id)?
        .map(|obj| read_signature(doc, &obj, id))
        .transpose()
}

/// One check-in of a collection by id, if present.
pub fn checkin(doc: &Automerge, id: &str) -> Result<Option<Checkin>, Rejection> {
    doc::record(doc, CHECKINS, id)?
        .map(|obj| read_checkin(doc, &obj, id))
        .transpose()
}
