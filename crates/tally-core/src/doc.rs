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
/// Root key of the collection a collection continues (the phone's previous collection in the
/// chain; docs/documents.md, "A chain of collections"). Optional; written once, at creation.
pub const KEY_CONTINUES: &str = "continues";

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
                ("continues", Header),
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
    /// The collection this collection continues (its document id), if it is not the first of
    /// its phone's chain; `None` for the other kinds.
    pub continues: Option<String>,
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
        let continues = if kind == DocKind::Collection {
            let continues = get_str(doc, &ROOT, KEY_CONTINUES, KEY_CONTINUES)?;
            if let Some(c) = &continues {
                crate::fields::check_id(KEY_CONTINUES, c)?;
            }
            continues
        } else {
            None
        };
        Ok(DocHeader {
            kind,
            schema,
            campaign,
            owner,
            continues,
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
        Ok(Some((value, _))) => plain(value, &|| path.to_string()),
        Err(e) => Err(Rejection::new(path, Rule::Malformed, e.to_string())),
    }
}

/// A field's value as a plain (scalar) value; a rejection for an object.
fn plain(value: Value<'_>, path: &dyn Fn() -> String) -> Result<Option<ScalarValue>, Rejection> {
    match value {
        Value::Scalar(s) => Ok(Some(s.into_owned())),
        Value::Object(t) => Err(Rejection::new(
            path(),
            Rule::WrongType,
            format!("expected a plain value, found a {t:?} object"),
        )),
    }
}

// The typed reads of a field's value (absent: `None`), shared by the root getters below and by
// [`Fields`]. `path` names the field in a rejection; it is only built for one.

fn want_str(
    v: Option<ScalarValue>,
    path: &dyn Fn() -> String,
) -> Result<Option<String>, Rejection> {
    match v {
        None => Ok(None),
        Some(ScalarValue::Str(s)) => Ok(Some(s.to_string())),
        Some(other) => Err(Rejection::new(
            path(),
            Rule::WrongType,
            format!("expected a string, found {other}"),
        )),
    }
}

fn want_opt_str(
    v: Option<ScalarValue>,
    path: &dyn Fn() -> String,
) -> Result<Option<String>, Rejection> {
    match v {
        None | Some(ScalarValue::Null) => Ok(None),
        Some(ScalarValue::Str(s)) => Ok(Some(s.to_string())),
        Some(other) => Err(Rejection::new(
            path(),
            Rule::WrongType,
            format!("expected a string or null, found {other}"),
        )),
    }
}

fn want_int(v: Option<ScalarValue>, path: &dyn Fn() -> String) -> Result<Option<i64>, Rejection> {
    match v {
        None => Ok(None),
        Some(ScalarValue::Int(i)) | Some(ScalarValue::Timestamp(i)) => Ok(Some(i)),
        Some(ScalarValue::Uint(u)) => i64::try_from(u)
            .map(Some)
            .map_err(|_| Rejection::new(path(), Rule::Malformed, "integer out of range")),
        Some(ScalarValue::F64(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        Some(other) => Err(Rejection::new(
            path(),
            Rule::WrongType,
            format!("expected an integer, found {other}"),
        )),
    }
}

fn want_bool(v: Option<ScalarValue>, path: &dyn Fn() -> String) -> Result<Option<bool>, Rejection> {
    match v {
        None => Ok(None),
        Some(ScalarValue::Boolean(b)) => Ok(Some(b)),
        Some(other) => Err(Rejection::new(
            path(),
            Rule::WrongType,
            format!("expected true or false, found {other}"),
        )),
    }
}

fn want_bytes(
    v: Option<ScalarValue>,
    path: &dyn Fn() -> String,
) -> Result<Option<Vec<u8>>, Rejection> {
    match v {
        None => Ok(None),
        Some(ScalarValue::Bytes(b)) => Ok(Some(b)),
        Some(other) => Err(Rejection::new(
            path(),
            Rule::WrongType,
            format!("expected bytes, found {other}"),
        )),
    }
}

/// A string field; `None` when absent; a rejection when it is another type.
pub(crate) fn get_str(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<String>, Rejection> {
    want_str(scalar(doc, obj, key, path)?, &|| path.to_string())
}

/// An integer field. Integers written by JavaScript may arrive as whole floats; those are accepted.
pub(crate) fn get_int(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<i64>, Rejection> {
    want_int(scalar(doc, obj, key, path)?, &|| path.to_string())
}

/// Requires a field to be present.
pub(crate) fn required<T>(value: Option<T>, path: &str) -> Result<T, Rejection> {
    value.ok_or_else(|| Rejection::new(path, Rule::Missing, "this field is required"))
}

/// A record map read in one pass (`map_range`: each key's winning value, as `get` gives it),
/// then looked up field by field in memory. Reading a record with one automerge lookup per field
/// cost most of the server's projection of a signature; the record's path is only formatted
/// for a rejection.
pub(crate) struct Fields {
    path: String,
    values: Vec<(String, Value<'static>)>,
}

impl Fields {
    /// Reads every field of the map `obj`; `path` names the record in rejections
    /// (`signatures/ID`).
    pub(crate) fn read(doc: &Automerge, obj: &ObjId, path: String) -> Fields {
        let values = doc
            .map_range(obj, ..)
            .map(|item| (item.key.into_owned(), Value::from(item.value)))
            .collect();
        Fields { path, values }
    }

    /// The same fields with `key` holding `value` instead: the validator judges a value that a
    /// later change overwrote as if it had stayed.
    pub(crate) fn with(mut self, key: &str, value: Value<'static>) -> Fields {
        match self.values.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.values.push((key.to_string(), value)),
        }
        self
    }

    /// The path of field `key`, for a rejection.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}/{key}", self.path)
    }

    /// Refuses any field other than `allowed`.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), Rejection> {
        match self
            .values
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(Rejection::new(
                self.path(key),
                Rule::UnknownField,
                format!(
                    "not a field of this record; known fields: {}",
                    allowed.join(", ")
                ),
            )),
        }
    }

    fn scalar(&self, key: &str) -> Result<Option<ScalarValue>, Rejection> {
        match self.values.iter().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, v)) => plain(v.clone(), &|| self.path(key)),
        }
    }

    /// A string field (as [`get_str`]).
    pub(crate) fn str(&self, key: &str) -> Result<Option<String>, Rejection> {
        want_str(self.scalar(key)?, &|| self.path(key))
    }

    /// An optional string field, `null` meaning absent.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<String>, Rejection> {
        want_opt_str(self.scalar(key)?, &|| self.path(key))
    }

    /// An integer field (as [`get_int`]).
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, Rejection> {
        want_int(self.scalar(key)?, &|| self.path(key))
    }

    /// A boolean field.
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, Rejection> {
        want_bool(self.scalar(key)?, &|| self.path(key))
    }

    /// A bytes field.
    pub(crate) fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, Rejection> {
        want_bytes(self.scalar(key)?, &|| self.path(key))
    }

    /// Requires field `key` (as [`required`]).
    pub(crate) fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, Rejection> {
        value.ok_or_else(|| Rejection::new(self.path(key), Rule::Missing, "this field is required"))
    }
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

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ScalarValue};

    use super::*;

    /// A record map `r` with a conflict on `city` (two actors wrote it concurrently) and a
    /// nested object under `odd`.
    fn record_with_conflict() -> (Automerge, ObjId) {
        let mut a = AutoCommit::new().with_actor(ActorId::from(b"aaaa".as_slice()));
        let r = a.put_object(automerge::ROOT, "r", ObjType::Map).unwrap();
        a.put(&r, "id", "r").unwrap();
        a.put(&r, "at", 5i64).unwrap();
        let mut b = a.fork().with_actor(ActorId::from(b"bbbb".as_slice()));
        a.put(&r, "city", "Montréal").unwrap();
        b.put(&r, "city", "Toronto").unwrap();
        b.put_object(&r, "odd", ObjType::List).unwrap();
        a.merge(&mut b).unwrap();
        (a.document().clone(), r)
    }

    #[test]
    fn fields_read_in_one_pass_give_what_get_gives() {
        let (doc, r) = record_with_conflict();
        let f = Fields::read(&doc, &r, "things/r".into());
        let winner = match doc.get(&r, "city").unwrap() {
            Some((Value::Scalar(s), _)) => s.into_owned(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(f.str("city").unwrap().map(ScalarValue::from), Some(winner));
        assert_eq!(f.int("at").unwrap(), Some(5));
        assert_eq!(f.str("id").unwrap().as_deref(), Some("r"));
        assert_eq!(f.str("missing").unwrap(), None);
        assert!(f.only(&["id", "at", "city", "odd"]).is_ok());
    }

    #[test]
    fn fields_name_the_field_in_each_rejection() {
        let (doc, r) = record_with_conflict();
        let f = Fields::read(&doc, &r, "things/r".into());
        let e = f.only(&["id", "at", "city"]).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.rule),
            ("things/r/odd", Rule::UnknownField)
        );
        let e = f.str("odd").unwrap_err();
        assert_eq!((e.path.as_str(), e.rule), ("things/r/odd", Rule::WrongType));
        let e = f.str("at").unwrap_err();
        assert_eq!((e.path.as_str(), e.rule), ("things/r/at", Rule::WrongType));
        let e = f.required("gone", f.int("gone").unwrap()).unwrap_err();
        assert_eq!((e.path.as_str(), e.rule), ("things/r/gone", Rule::Missing));
    }
}
