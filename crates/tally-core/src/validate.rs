//! Validation of incoming changes, before they are merged: the server applies a device's changes
//! to a fork of the stored document, calls [`validate`] with the document before and the fork
//! after, and merges only if it accepts. The decision is taken from what the changes did (the
//! patches between the two heads), so it costs in proportion to the change, not the document.
//!
//! It refuses: a document kind the writer's role may not write; a writer outside the document's
//! campaign; a canvasser writing someone else's collection or a record as someone else; any
//! deletion; a container or record replaced instead of edited; a header changed; unknown,
//! missing, mistyped, malformed or oversized fields; unknown events; an unknown kind or schema
//! version. A brand-new document must set its whole header and create its containers in its
//! first changes, and a collection's owner must be its writer.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc, ScalarValue, Value};

use crate::campaign::{self, Campaign};
use crate::collection::{self, CHECKINS, SIGNATURES};
use crate::doc::{self, DocHeader, DocKind, Fields, Slot};
use crate::review::{self, SHEETS, STRIKES};

/// A device's role, and so what it may write: the one device-role type (the server's checks and
/// the phone's enrollment use it; stored and sent as its lowercase name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the server; writes campaigns and reviews anywhere.
    Admin,
    /// Writes a campaign's campaign and review documents.
    Organizer,
    /// Writes their own collection documents.
    Canvasser,
    /// The server itself: writes totals documents.
    Server,
}

impl Role {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Organizer => "organizer",
            Role::Canvasser => "canvasser",
            Role::Server => "server",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "organizer" => Role::Organizer,
            "canvasser" => Role::Canvasser,
            "server" => Role::Server,
            _ => return None,
        })
    }

    /// May this role write documents of `kind` (ownership aside)?
    pub fn may_write(self, kind: DocKind) -> bool {
        match kind {
            DocKind::Campaign | DocKind::Review => matches!(self, Role::Admin | Role::Organizer),
            DocKind::Collection => matches!(self, Role::Admin | Role::Organizer | Role::Canvasser),
            DocKind::Totals => self == Role::Server,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is writing: the authenticated device's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// The writer's id (a canvasser id owns collections).
    pub id: String,
    /// Their role.
    pub role: Role,
    /// The campaign their token is for; `None` for admins and the server.
    pub campaign: Option<String>,
}

impl Writer {
    /// May this device read a document of `kind` (its stored marker) in `campaign`, owned by
    /// `owner`? Admins read everything; organizers their campaign; canvassers their campaign's
    /// campaign and totals documents and their own collections; the server's identity is never
    /// a device's. A device that may not read a document is answered as if it did not exist.
    pub fn may_read(&self, kind: &str, campaign: &str, owner: Option<&str>) -> bool {
        let in_campaign = self.campaign.as_deref().is_none_or(|c| c == campaign);
        match self.role {
            Role::Admin => true,
            Role::Organizer => in_campaign,
            Role::Canvasser => {
                in_campaign
                    && match DocKind::parse(kind) {
                        Some(DocKind::Campaign | DocKind::Totals) => true,
                        Some(DocKind::Collection) => owner == Some(self.id.as_str()),
                        Some(DocKind::Review) | None => false,
                    }
            }
            Role::Server => false,
        }
    }
}

/// The rule a rejected change broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The writer's role may not write this kind of document.
    RoleMayNotWrite,
    /// The document belongs to a campaign the writer's token is not for.
    OutsideCampaign,
    /// A collection written by someone other than its owner.
    NotOwner,
    /// A record written in someone else's name.
    ActingAsOther,
    /// Something was deleted; nothing ever is.
    Deletion,
    /// A container or record was replaced by a new object instead of edited.
    Replaced,
    /// A field that never changes was changed.
    Immutable,
    /// A required field is missing.
    Missing,
    /// A field has the wrong type.
    WrongType,
    /// A field's value is malformed.
    Malformed,
    /// A field is too large.
    TooLarge,
    /// A record refers to an event the campaign does not have.
    UnknownEvent,
    /// A field this schema does not have.
    UnknownField,
    /// A document kind tally does not know.
    UnknownKind,
    /// A schema version this build does not speak.
    UnsupportedSchema,
    /// A document of another kind was expected.
    WrongKind,
    /// An automerge operation tally documents never use (counters, text, marks).
    UnsupportedOperation,
    /// Two concurrent objects at one key (two record maps created under one id).
    Conflict,
}

impl Rule {
    /// A short description of the rule.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::RoleMayNotWrite => "this role may not write this kind of document",
            Rule::OutsideCampaign => "the writer's token is for another campaign",
            Rule::NotOwner => "only the owner writes a collection",
            Rule::ActingAsOther => "records are written in the writer's own name",
            Rule::Deletion => "nothing is ever deleted",
            Rule::Replaced => "containers and records are edited, never replaced",
            Rule::Immutable => "this field never changes",
            Rule::Missing => "required",
            Rule::WrongType => "wrong type",
            Rule::Malformed => "malformed",
            Rule::TooLarge => "too large",
            Rule::UnknownEvent => "unknown event",
            Rule::UnknownField => "unknown field",
            Rule::UnknownKind => "unknown document kind",
            Rule::UnsupportedSchema => "unsupported schema version",
            Rule::WrongKind => "wrong document kind",
            Rule::UnsupportedOperation => "operation not used by tally documents",
            Rule::Conflict => "a record is created once",
        }
    }
}

/// Why a change was refused: the field (a path like `signatures/abc/fsa`), the rule, and details
/// that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{path}: {} ({detail})", rule.describe())]
pub struct Rejection {
    /// The field, as a path from the document root.
    pub path: String,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong, and what to do.
    pub detail: String,
}

impl Rejection {
    /// A rejection of `path` under `rule`.
    pub fn new(path: impl Into<String>, rule: Rule, detail: impl Into<String>) -> Self {
        Rejection {
            path: path.into(),
            rule,
            detail: detail.into(),
        }
    }
}

/// What an accepted change touched: the server's projection updates only these records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The document's header (after the change).
    pub header: Option<DocHeader>,
    /// The change created the document.
    pub created: bool,
    /// Root fields changed (campaign text, totals).
    pub root: bool,
    /// Records touched, as (container, record id).
    pub records: BTreeSet<(String, String)>,
    /// The touched records of collections and reviews as checked (after the change), by id: the
    /// server projects them without reading them from the document again.
    pub checked: Checked,
}

/// Records read and checked by [`validate`], by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Signatures.
    pub signatures: BTreeMap<String, collection::Signature>,
    /// Check-ins.
    pub checkins: BTreeMap<String, collection::Checkin>,
    /// Strikes, by struck signature id.
    pub strikes: BTreeMap<String, review::Strike>,
    /// Paper sheets, by serial.
    pub sheets: BTreeMap<String, review::Sheet>,
}

impl Accepted {
    /// Ids of touched records in one container.
    pub fn in_container<'a>(&'a self, container: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.records
            .iter()
            .filter(move |(c, _)| c == container)
            .map(|(_, id)| id.as_str())
    }
}

fn prop_key(p: &Prop) -> String {
    match p {
        Prop::Map(k) => k.to_string(),
        Prop::Seq(i) => i.to_string(),
    }
}

/// Decides whether the changes that took `before` to `after` may be merged. `after` must contain
/// `before` (a fork of it with the incoming changes applied). `campaign` is the campaign the
/// document belongs to, read from its campaign document, for collections (events are checked
/// against it); it may be `None` for the other kinds.
pub fn validate(
    before: &Automerge,
    after: &Automerge,
    writer: &Writer,
    campaign: Option<&Campaign>,
) -> Result<Accepted, Rejection> {
    let before_heads = before.get_heads();
    let after_heads = after.get_heads();
    if before_heads == after_heads {
        return Ok(Accepted::default());
    }
    let created = before_heads.is_empty();
    let header = DocHeader::read(after)?;
    if !created {
        let old = DocHeader::read(before)?;
        for (field, same) in [
            ("kind", old.kind == header.kind),
            ("schema", old.schema == header.schema),
            ("campaign", old.campaign == header.campaign),
            ("owner", old.owner == header.owner),
            ("continues", old.continues == header.continues),
        ] {
            if !same {
                return Err(Rejection::new(
                    field,
                    Rule::Immutable,
                    "a document's header is set when it is created",
                ));
            }
        }
    }
    authorize(&header, writer)?;
    let kind = header.kind;
    if kind == DocKind::Collection
        && let Some(c) = campaign
        && c.id != header.campaign
    {
        return Err(Rejection::new(
            "campaign",
            Rule::Malformed,
            format!(
                "the collection names campaign {:?} but was checked against {:?}",
                header.campaign, c.id
            ),
        ));
    }
    // Every operation, including the values that the patches below do not show (conflict
    // losers, values overwritten in the same message): see `crate::writes`.
    let overwritten = crate::writes::scan(after, &before_heads)?;
    if created {
        for (key, slot) in kind.root_keys() {
            if matches!(slot, Slot::List | Slot::Records) {
                let expected = if *slot == Slot::List {
                    ObjType::List
                } else {
                    ObjType::Map
                };
                match after.get(ROOT, *key) {
                    Ok(Some((Value::Object(t), _))) if t == expected => {}
                    _ => {
                        return Err(Rejection::new(
                            *key,
                            Rule::Missing,
                            format!(
                                "a new {kind} document creates its {key} ({expected:?}) in its first change"
                            ),
                        ));
                    }
                }
            }
        }
    }

    let mut acc = Accepted {
        header: Some(header.clone()),
        created,
        root: created,
        records: BTreeSet::new(),
        checked: Checked::default(),
    };
    for patch in after.diff(&before_heads, &after_heads) {
        let mut segs: Vec<String> = patch.path.iter().map(|(_, p)| prop_key(p)).collect();
        let (leaf, value_is_obj) = match &patch.action {
            PatchAction::PutMap { key, value, .. } => (Some(key.clone()), value.0.is_object()),
            PatchAction::PutSeq { index, value, .. } => {
                (Some(index.to_string()), value.0.is_object())
            }
            PatchAction::Insert { index, .. } => (Some(index.to_string()), false),
            PatchAction::DeleteMap { key } => {
                segs.push(key.clone());
                return Err(Rejection::new(
                    segs.join("/"),
                    Rule::Deletion,
                    "records and fields are withdrawn or corrected, never deleted",
                ));
            }
            PatchAction::DeleteSeq { index, .. } => {
                segs.push(index.to_string());
                return Err(Rejection::new(
                    segs.join("/"),
                    Rule::Deletion,
                    "list entries are never deleted",
                ));
            }
            // Every value of a conflict is judged by `writes::scan` (losers as overwritten
            // values; a conflict involving an object is refused there).
            PatchAction::Conflict { .. } => continue,
            PatchAction::Increment { .. }
            | PatchAction::SpliceText { .. }
            | PatchAction::Mark { .. } => {
                return Err(Rejection::new(
                    segs.join("/"),
                    Rule::UnsupportedOperation,
                    "tally fields hold plain values: no counters, text objects or marks",
                ));
            }
        };
        if let Some(l) = leaf {
            segs.push(l);
        }
        let root_key = segs.first().cloned().unwrap_or_default();
        let slot = kind
            .root_keys()
            .iter()
            .find(|(k, _)| *k == root_key)
            .map(|(_, s)| *s);
        let is_header =
            [doc::KEY_KIND, doc::KEY_SCHEMA, doc::KEY_CAMPAIGN].contains(&root_key.as_str());
        match (segs.len(), slot) {
            (1, _) if is_header => {}
            (_, None) if !is_header => {
                return Err(Rejection::new(
                    segs.join("/"),
                    Rule::UnknownField,
                    format!("a {kind} document has no field {root_key:?}"),
                ));
            }
            (1, Some(Slot::Header)) => {}
            (1, Some(Slot::Scalar)) => {
                if value_is_obj {
                    return Err(Rejection::new(
                        root_key,
                        Rule::WrongType,
                        "expected a plain value",
                    ));
                }
                acc.root = true;
            }
            (1, Some(Slot::List | Slot::Records)) => {
                if !created {
                    return Err(Rejection::new(
                        root_key,
                        Rule::Replaced,
                        "containers are created with the document and never replaced",
                    ));
                }
            }
            (_, Some(Slot::List)) => {
                if value_is_obj || segs.len() > 2 {
                    return Err(Rejection::new(
                        segs.join("/"),
                        Rule::WrongType,
                        "list entries are plain strings",
                    ));
                }
                acc.root = true;
            }
            (n, Some(Slot::Records)) => {
                let id = segs[1].clone();
                if n == 2 && !created && doc::record(before, &root_key, &id)?.is_some() {
                    return Err(Rejection::new(
                        segs.join("/"),
                        Rule::Replaced,
                        "records are corrected field by field, never replaced",
                    ));
                }
                if n == 2 && !value_is_obj {
                    return Err(Rejection::new(
                        segs.join("/"),
                        Rule::WrongType,
                        "a record is a map",
                    ));
                }
                acc.records.insert((root_key, id));
            }
            _ => {
                return Err(Rejection::new(
                    segs.join("/"),
                    Rule::WrongType,
                    "tally documents hold no nested objects here",
                ));
            }
        }
    }

    if acc.root {
        match kind {
            DocKind::Campaign => campaign::check_root(after)?,
            DocKind::Totals => crate::totals_doc::check_root(after)?,
            _ => {}
        }
    }
    for (container, id) in &acc.records {
        check_record(
            before,
            after,
            &header,
            container,
            id,
            campaign,
            &mut acc.checked,
            None,
        )?;
    }
    for o in &overwritten {
        judge_overwritten(before, after, &header, campaign, o)?;
    }
    Ok(acc)
}

/// Judges a plain value that a later operation of the same changes overwrote, as if it had
/// stayed: a record's field with the record's other (final) fields, a root field by its slot.
fn judge_overwritten(
    before: &Automerge,
    after: &Automerge,
    header: &DocHeader,
    campaign: Option<&Campaign>,
    o: &crate::writes::Overwritten,
) -> Result<(), Rejection> {
    let segs = crate::writes::path_of(after, &o.obj);
    let path = || {
        let mut p = segs.clone();
        p.push(o.key.clone());
        p.join("/")
    };
    match segs.as_slice() {
        [] => {
            let header_key = [
                doc::KEY_KIND,
                doc::KEY_SCHEMA,
                doc::KEY_CAMPAIGN,
                doc::KEY_OWNER,
                doc::KEY_CONTINUES,
            ]
            .contains(&o.key.as_str());
            let slot = header
                .kind
                .root_keys()
                .iter()
                .find(|(k, _)| *k == o.key)
                .map(|(_, s)| *s);
            match slot {
                _ if header_key => Err(Rejection::new(
                    path(),
                    Rule::Immutable,
                    "a document's header is written once, in its first change",
                )),
                Some(Slot::Scalar) => match &o.value {
                    ScalarValue::Str(s) => {
                        let max = if header.kind == DocKind::Totals {
                            4 * 1024 * 1024
                        } else {
                            crate::fields::MAX_LONG_TEXT
                        };
                        crate::fields::check_text(&path(), s, max, false)
                    }
                    ScalarValue::Bytes(_) | ScalarValue::Unknown { .. } => Err(Rejection::new(
                        path(),
                        Rule::WrongType,
                        "expected a plain text, number or boolean",
                    )),
                    _ => Ok(()),
                },
                Some(_) => Err(Rejection::new(
                    path(),
                    Rule::Replaced,
                    "containers are created with the document and never replaced",
                )),
                None => Err(Rejection::new(
                    path(),
                    Rule::UnknownField,
                    format!("a {} document has no field {:?}", header.kind, o.key),
                )),
            }
        }
        [container, id] => check_record(
            before,
            after,
            header,
            container,
            id,
            campaign,
            &mut Checked::default(),
            Some((&o.key, &o.value)),
        ),
        [_] => Err(Rejection::new(path(), Rule::WrongType, "a record is a map")),
        _ => Err(Rejection::new(
            path(),
            Rule::WrongType,
            "tally documents hold no nested objects here",
        )),
    }
}

fn authorize(header: &DocHeader, writer: &Writer) -> Result<(), Rejection> {
    if !writer.role.may_write(header.kind) {
        return Err(Rejection::new(
            "kind",
            Rule::RoleMayNotWrite,
            format!(
                "a {} may not write {} documents",
                writer.role.as_str(),
                header.kind
            ),
        ));
    }
    if let Some(c) = &writer.campaign
        && *c != header.campaign
        && !matches!(writer.role, Role::Admin | Role::Server)
    {
        return Err(Rejection::new(
            "campaign",
            Rule::OutsideCampaign,
            format!(
                "this device is enrolled in campaign {c:?}, the document belongs to {:?}: enroll for that campaign",
                header.campaign
            ),
        ));
    }
    if header.kind == DocKind::Collection && header.owner.as_deref() != Some(writer.id.as_str()) {
        return Err(Rejection::new(
            "owner",
            Rule::NotOwner,
            format!(
                "this collection belongs to {:?}; {:?} writes only their own",
                header.owner.as_deref().unwrap_or(""),
                writer.id
            ),
        ));
    }
    Ok(())
}

fn unchanged(path: String, fields: &[(&str, bool)], immutable: &[&str]) -> Result<(), Rejection> {
    for (name, same) in fields {
        if immutable.contains(name) && !same {
            return Err(Rejection::new(
                format!("{path}/{name}"),
                Rule::Immutable,
                "set when the record is created; withdraw the record and make a new one instead",
            ));
        }
    }
    Ok(())
}

/// Checks one touched record as it is after the changes; with `put`, as it would be with that
/// field holding that value instead (an overwritten value, judged as if it had stayed).
#[allow(clippy::too_many_arguments)]
fn check_record(
    before: &Automerge,
    after: &Automerge,
    header: &DocHeader,
    container: &str,
    id: &str,
    campaign: Option<&Campaign>,
    checked: &mut Checked,
    put: Option<(&str, &ScalarValue)>,
) -> Result<(), Rejection> {
    let path = format!("{container}/{id}");
    let obj: ObjId = doc::record(after, container, id)?
        .ok_or_else(|| Rejection::new(&path, Rule::Missing, "record vanished"))?;
    let fields = || {
        let f = Fields::read(after, &obj, path.clone());
        match put {
            Some((k, v)) => f.with(k, Value::Scalar(Cow::Owned(v.clone()))),
            None => f,
        }
    };
    let old_obj = if before.get_heads().is_empty() {
        None
    } else {
        doc::record(before, container, id)?
    };
    match (header.kind, container) {
        (DocKind::Collection, SIGNATURES) => {
            let sig = collection::signature_from(fields(), id)?;
            sig.check(
                header.owner.as_deref().unwrap_or(""),
                &header.campaign,
                campaign,
            )?;
            if let Some(o) = old_obj {
                let old = collection::read_signature(before, &o, id)?;
                unchanged(
                    path,
                    &[
                        ("campaign", old.campaign == sig.campaign),
                        ("collected_at", old.collected_at == sig.collected_at),
                        ("collected_by", old.collected_by == sig.collected_by),
                    ],
                    collection::SIGNATURE_IMMUTABLE,
                )?;
            }
            checked.signatures.insert(id.to_string(), sig);
        }
        (DocKind::Collection, CHECKINS) => {
            let ci = collection::checkin_from(fields(), id)?;
            ci.check(header.owner.as_deref().unwrap_or(""), campaign)?;
            if let Some(o) = old_obj {
                let old = collection::read_checkin(before, &o, id)?;
                unchanged(
                    path,
                    &[
                        ("event", old.event == ci.event),
                        ("at", old.at == ci.at),
                        ("by", old.by == ci.by),
                    ],
                    collection::CHECKIN_IMMUTABLE,
                )?;
            }
            checked.checkins.insert(id.to_string(), ci);
        }
        (DocKind::Campaign, "events") => {
            campaign::event_from(fields(), id)?;
        }
        (DocKind::Review, STRIKES) => {
            let strike = review::strike_from(fields(), id)?;
            if let Some(o) = old_obj {
                let old = review::read_strike(before, &o, id)?;
                if old.reason == review::StrikeReason::Erased && old != strike {
                    return Err(Rejection::new(
                        path,
                        Rule::Immutable,
                        "an erasure is final: its strike is never changed or revoked",
                    ));
                }
            }
            checked.strikes.insert(id.to_string(), strike);
        }
        (DocKind::Review, SHEETS) => {
            checked
                .sheets
                .insert(id.to_string(), review::sheet_from(fields(), id)?);
        }
        _ => {
            return Err(Rejection::new(
                path,
                Rule::UnknownField,
                format!("a {} document has no container {container:?}", header.kind),
            ));
        }
    }
    Ok(())
}

/// Applies raw change bytes (a saved document or incremental chunk) to a fork of `before` and
/// validates them; returns the fork and what was touched. For tests, fuzzing and tools; the
/// server applies sync messages to its own fork and calls [`validate`].
pub fn validate_bytes(
    before: &Automerge,
    changes: &[u8],
    writer: &Writer,
    campaign: Option<&Campaign>,
) -> Result<(Automerge, Accepted), Rejection> {
    let mut after = before.fork();
    after.load_incremental(changes).map_err(|e| {
        Rejection::new(
            "",
            Rule::Malformed,
            format!("the changes could not be decoded: {e}"),
        )
    })?;
    let acc = validate(before, &after, writer, campaign)?;
    Ok((after, acc))
}
