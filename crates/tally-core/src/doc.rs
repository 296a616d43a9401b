//! The parts every tally document shares: the header (kind marker, schema version, campaign) at
//! the root, and typed readers over automerge values that turn a wrong or missing value into a
//! [`Rejection`] naming the field. Containers (maps of records) are created once, with the
//! document's first change, never lazily: two writers creating the same map independently would
//! conflict and one side's records would vanish from view.

use automerge::{
    Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, transaction::Transactable,
};

use crate::validate::{Rejection, Rule};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Root key of the kind marker.
pub const KEY_KIND: &str = "kind";
/// Root key of the schema version.
pub const KEY_SCHEMA: &str = "schema";
/// Root key of the campaign id.
pub const KEY_CAMPAIGN: &str = "campaign";
/// Root key of a collection's owner (the canvasser who writes it).
pub const KEY_OWNER: &str = "owner";

/// The four kinds of tally document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// Organizers write: petition, addressee, goal, recipients, events.
    Campaign,
    /// One canvasser writes: signatures and check-ins.
    Collection,
    /// Organizers write: strikes and paper sheets.
    Review,
    /// The server writes, devices read: last computed totals.
    Totals,
}

impl DocKind {
    /// The marker stored in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Campaign => "campaign",
            DocKind::Collection => "collection",
            DocKind::Review => "review",
            DocKind::Totals => "totals",
        }
    }

    /// Parses a stored marker.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "campaign" => DocKind::Campaign,
            "collection" => DocKind::Collection,
            "review" => DocKind::Review,
            "totals" => DocKind::Totals,
            _ => return None,
        })
    }

    /// The root keys a document of this kind may hold, and which of them are containers.
    pub(crate) fn root_keys(self) -> &'static [(&'static str, Slot)] {
        use Slot::*;
        match self {
            DocKind::Campaign => &[
                ("title", Scalar),
                ("petition", Scalar),
                ("addressee", Scalar),
                ("goal", Scalar),
                ("timezone", Scalar),
                ("recipients", List),
                ("events", Records),
            ],
            DocKind::Collection => &[
                ("owner", Header),
                ("signatures", Records),
                ("checkins", Records),
            ],
            DocKind::Review => &[("strikes", Records), ("sheets", Records)],
            DocKind::Totals => &[("computed_at", Scalar), ("json", Scalar)],
        }
    }
}

impl std::fmt::Display for DocKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a root key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Set when the document is created, never changed.
    Header,
    /// A scalar the kind's writer may change.
    Scalar,
    /// A list created with the document.
    List,
    /// A map of records, created with the document; records are added and changed, never removed.
    Records,
}

/// The header of any tally document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocHeader {
    /// The kind marker.
    pub kind: DocKind,
    /// The schema version.
    pub schema: i64,
    /// The campaign the document belongs to (for a campaign document, its own id).
    pub campaign: String,
    /// A collection's owner; `None` for the other kinds.
    pub owner: Option<String>,
}

impl DocHeader {
    /// Reads and checks the header of a document.
    pub fn read(doc: &Automerge) -> Result<DocHeader, Rejection> {
        let kind_s = get_str(doc, &ROOT, KEY_KIND, KEY_KIND)?.ok_or_else(|| {
            Rejection::new(
                KEY_KIND,
                Rule::Missing,
                "every tally document starts by setting its kind",
            )
        })?;
        let kind = DocKind::parse(&kind_s).ok_or_else(|| {
            Rejection::new(
                KEY_KIND,
                Rule::UnknownKind,
                format!("unknown document kind {kind_s:?}: expected campaign, collection, review or totals"),
            )
        })?;
        let schema = get_int(doc, &ROOT, KEY_SCHEMA, KEY_SCHEMA)?.ok_or_else(|| {
            Rejection::new(
                KEY_SCHEMA,
                Rule::Missing,
                "every tally document sets its schema version",
            )
        })?;
        if schema != SCHEMA_VERSION {
            return Err(Rejection::new(
                KEY_SCHEMA,
                Rule::UnsupportedSchema,
                format!(
                    "schema version {schema} is not supported by this server (it speaks {SCHEMA_VERSION}): update the app or the server"
                ),
            ));
        }
        let campaign = get_str(doc, &ROOT, KEY_CAMPAIGN, KEY_CAMPAIGN)?.ok_or_else(|| {
            Rejection::new(
                KEY_CAMPAIGN,
                Rule::Missing,
                "every tally document names its campaign",
            )
        })?;
        crate::fields::check_id(KEY_CAMPAIGN, &campaign)?;
        let owner = if kind == DocKind::Collection {
            let owner = get_str(doc, &ROOT, KEY_OWNER, KEY_OWNER)?.ok_or_else(|| {
                Rejection::new(
                    KEY_OWNER,
                    Rule::Missing,
                    "a collection names the canvasser who owns it",
                )
            })?;
            crate::fields::check_id(KEY_OWNER, &owner)?;
            Some(owner)
        } else {
            None
        };
        Ok(DocHeader {
            kind,
            schema,
            campaign,
            owner,
        })
    }
}

/// Writes the header and creates every container of a new document in its first change.
pub(crate) fn create(
    kind: DocKind,
    campaign: &str,
    owner: Option<&str>,
    scalars: &[(&str, ScalarValue)],
) -> Automerge {
    let mut doc = Automerge::new();
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        tx.put(ROOT, KEY_KIND, kind.as_str())?;
        tx.put(ROOT, KEY_SCHEMA, SCHEMA_VERSION)?;
        tx.put(ROOT, KEY_CAMPAIGN, campaign)?;
        if let Some(owner) = owner {
            tx.put(ROOT, KEY_OWNER, owner)?;
        }
        for (key, slot) in kind.root_keys() {
            match slot {
                Slot::List => {
                    tx.put_object(ROOT, *key, ObjType::List)?;
                }
                Slot::Records => {
                    tx.put_object(ROOT, *key, ObjType::Map)?;
                }
                Slot::Header | Slot::Scalar => {}
            }
        }
        for (key, value) in scalars {
            tx.put(ROOT, *key, value.clone())?;
        }
        Ok(())
    })
    .expect("writing to a fresh in-memory document cannot fail");
    doc
}

/// The object id of a container at the root.
pub(crate) fn container(doc: &Automerge, key: &str) -> Result<ObjId, Rejection> {
    match doc.get(ROOT, key) {
        Ok(Some((Value::Object(_), id))) => Ok(id),
        _ => Err(Rejection::new(
            key,
            Rule::Missing,
            "this container is created with the document",
        )),
    }
}

fn scalar(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<ScalarValue>, Rejection> {
    match doc.get(obj, key) {
        Ok(None) => Ok(None),
        Ok(Some((Value::Scalar(s), _))) => Ok(Some(s.into_owned())),
        Ok(Some((Value::Object(t), _))) => Err(Rejection::new(
            path,
            Rule::WrongType,
            format!("expected a plain value, found a {t:?} object"),
        )),
        Err(e) => Err(Rejection::new(path, Rule::Malformed, e.to_string())),
    }
}

/// A string field; `None` when absent; a rejection when it is another type.
pub(crate) fn get_str(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<String>, Rejection> {
    match scalar(doc, obj, key, path)? {
        None => Ok(None),
        Some(ScalarValue::Str(s)) => Ok(Some(s.to_string())),
        Some(other) => Err(Rejection::new(
            path,
            Rule::WrongType,
            format!("expected a string, found {other}"),
        )),
    }
}

/// An optional string field, where `null` also means absent.
pub(crate) fn get_opt_str(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<String>, Rejection> {
    match scalar(doc, obj, key, path)? {
        None | Some(ScalarValue::Null) => Ok(None),
        Some(ScalarValue::Str(s)) => Ok(Some(s.to_string())),
        Some(other) => Err(Rejection::new(
            path,
            Rule::WrongType,
            format!("expected a string or null, found {other}"),
        )),
    }
}

/// An integer field. Integers written by JavaScript may arrive as whole floats; those are accepted.
pub(crate) fn get_int(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<i64>, Rejection> {
    match scalar(doc, obj, key, path)? {
        None => Ok(None),
        Some(ScalarValue::Int(i)) | Some(ScalarValue::Timestamp(i)) => Ok(Some(i)),
        Some(ScalarValue::Uint(u)) => i64::try_from(u)
            .map(Some)
            .map_err(|_| Rejection::new(path, Rule::Malformed, "integer out of range")),
        Some(ScalarValue::F64(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        Some(other) => Err(Rejection::new(
            path,
            Rule::WrongType,
            format!("expected an integer, found {other}"),
        )),
    }
}

/// A boolean field.
pub(crate) fn get_bool(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<bool>, Rejection> {
    match scalar(doc, obj, key, path)? {
        None => Ok(None),
        Some(ScalarValue::Boolean(b)) => Ok(Some(b)),
        Some(other) => Err(Rejection::new(
            path,
            Rule::WrongType,
            format!("expected true or false, found {other}"),
        )),
    }
}

/// A bytes field.
pub(crate) fn get_bytes(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, Rejection> {
    match scalar(doc, obj, key, path)? {
        None => Ok(None),
        Some(ScalarValue::Bytes(b)) => Ok(Some(b)),
        Some(other) => Err(Rejection::new(
            path,
            Rule::WrongType,
            format!("expected bytes, found {other}"),
        )),
    }
}

/// Requires a field to be present.
pub(crate) fn required<T>(value: Option<T>, path: &str) -> Result<T, Rejection> {
    value.ok_or_else(|| Rejection::new(path, Rule::Missing, "this field is required"))
}

/// Refuses any key of a record map other than `allowed`.
pub(crate) fn only_keys(
    doc: &Automerge,
    obj: &ObjId,
    allowed: &[&str],
    path: &str,
) -> Result<(), Rejection> {
    for key in doc.keys(obj) {
        if !allowed.contains(&key.as_str()) {
            return Err(Rejection::new(
                format!("{path}/{key}"),
                Rule::UnknownField,
                format!(
                    "not a field of this record; known fields: {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The record maps of a container, as (key, object id), in key order.
pub(crate) fn records(
    doc: &Automerge,
    container_key: &str,
) -> Result<Vec<(String, ObjId)>, Rejection> {
    let obj = container(doc, container_key)?;
    let mut out = Vec::new();
    for item in doc.map_range(&obj, ..) {
        let key = item.key.to_string();
        match doc.get(&obj, key.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), id))) => out.push((key, id)),
            _ => {
                return Err(Rejection::new(
                    format!("{container_key}/{key}"),
                    Rule::WrongType,
                    "a record is a map",
                ));
            }
        }
    }
    Ok(out)
}

/// The object id of one record, if present.
pub(crate) fn record(
    doc: &Automerge,
    container_key: &str,
    id: &str,
) -> Result<Option<ObjId>, Rejection> {
    let obj = container(doc, container_key)?;
    match doc.get(&obj, id) {
        Ok(None) => Ok(None),
        Ok(Some((Value::Object(ObjType::Map), rid))) => Ok(Some(rid)),
        _ => Err(Rejection::new(
            format!("{container_key}/{id}"),
            Rule::WrongType,
            "a record is a map",
        )),
    }
}

/// Writes a record map with its fields in one transaction step.
pub(crate) fn put_record<T: Transactable>(
    tx: &mut T,
    container: &ObjId,
    id: &str,
    fields: &[(&str, ScalarValue)],
) -> Result<(), automerge::AutomergeError> {
    let obj = match tx.get(container, id)? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => tx.put_object(container, id, ObjType::Map)?,
    };
    for (k, v) in fields {
        tx.put(&obj, *k, v.clone())?;
    }
    Ok(())
}

/// Turns an optional string into a stored scalar (`null` when absent).
pub(crate) fn opt(value: &Option<String>) -> ScalarValue {
    match value {
        Some(s) => ScalarValue::Str(s.as_str().into()),
        None => ScalarValue::Null,
    }
}

/// Errors of the typed write API.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The record breaks a schema rule; nothing was written.
    #[error("refused, nothing written: {0}")]
    Invalid(#[from] Rejection),
    /// The record to change does not exist.
    #[error("no record {0:?} in this document: check the id (list the records to see them)")]
    NotFound(String),
    /// automerge refused the write.
    #[error("the document could not be written: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}
