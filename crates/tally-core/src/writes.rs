//! Every value a change set writes, not only the ones left visible: the part of validation that
//! reads the incoming changes' operations themselves.
//!
//! [`crate::validate`] judges what the changes did by the patches between the heads before and
//! after, and patches show only each key's final, winning value. Two kinds of value never appear
//! in them and would otherwise be stored and synced unjudged (a plaintext name, a text object of a
//! million characters):
//!
//! - the **loser of a conflict**: two concurrent changes in one message putting two values (or two
//!   record maps) at the same key;
//! - a value **overwritten** later in the same message (a field put twice, a record map created
//!   and then replaced, a field put and then deleted).
//!
//! So [`scan`] walks every operation of the changes the message adds and:
//! - refuses outright what tally documents never do: deletions, counters, text objects, tables,
//!   marks, nested objects in lists;
//! - refuses a conflict in which any value is an object (two record maps, or two containers, at
//!   one key): records are created once, under a random id, by one writer, so such a conflict
//!   is never honest, and the losing map's fields would never be read;
//! - refuses an object that does not survive (created, then replaced in the same message);
//! - returns each plain value that is not the one left visible, a loser of a conflict of plain
//!   values (a canvasser's two phones withdrawing one record at once) or a value overwritten
//!   later in the message, which the validator then judges as if it had stayed (the record read
//!   with that value in place of the final one), so such a value must pass exactly the rules a
//!   visible one does.
//!
//! The cost is one lookup per operation, in proportion to the message, like the rest of
//! validation.

use std::collections::{HashMap, HashSet};

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue};

use crate::validate::{Rejection, Rule};

/// A plain value that is not its field's visible value (overwritten later in the message, or the
/// loser of a conflict): it is judged in place of the visible one.
#[derive(Debug, Clone)]
pub(crate) struct Overwritten {
    /// The object it was written in.
    pub obj: ObjId,
    /// Its key in that object.
    pub key: String,
    /// The value.
    pub value: ScalarValue,
}

/// The path of `obj` from the root, as the validator names fields (`signatures/ID`).
pub(crate) fn path_of(doc: &Automerge, obj: &ObjId) -> Vec<String> {
    match doc.parents(obj) {
        Ok(parents) => parents
            .path()
            .into_iter()
            .map(|(_, p)| match p {
                Prop::Map(k) => k,
                Prop::Seq(i) => i.to_string(),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn field_path(doc: &Automerge, obj: &ObjId, key: &str) -> String {
    let mut segs = path_of(doc, obj);
    segs.push(key.to_string());
    segs.join("/")
}

fn is_op(id: &ObjId, counter: u64, actor: &ActorId) -> bool {
    matches!(id, ObjId::Id(c, a, _) if *c == counter && a == actor)
}

/// Walks every operation that the changes after `before_heads` in `after` add; refuses what no
/// tally document may hold (see the module header) and returns the overwritten plain values.
pub(crate) fn scan(
    after: &Automerge,
    before_heads: &[ChangeHash],
) -> Result<Vec<Overwritten>, Rejection> {
    let mut overwritten = Vec::new();
    let mut objects: HashMap<ObjectId, ObjId> = HashMap::new();
    let changes: Vec<_> = after
        .get_changes(before_heads)
        .iter()
        .map(|c| c.decode())
        .collect();
    // Objects these changes create, and how many of their operations write each map key: a key
    // of a new object written once can hold nothing but that value (a second write, a delete or
    // a concurrent put would count twice), so it needs no lookup. That is nearly every field of
    // a new record, so the scan costs about one lookup per record, not one per field.
    let mut created: HashSet<OpId> = HashSet::new();
    let mut writes: HashMap<(&ObjectId, &str), u32> = HashMap::new();
    for change in &changes {
        let start = change.start_op.get();
        for (i, op) in change.operations.iter().enumerate() {
            if let OpType::Make(_) = op.action {
                created.insert(OpId::new(start + i as u64, &change.actor_id));
            }
            if let Key::Map(k) = &op.key {
                *writes.entry((&op.obj, k.as_str())).or_default() += 1;
            }
        }
    }
    for change in &changes {
        let start = change.start_op.get();
        for (i, op) in change.operations.iter().enumerate() {
            let counter = start + i as u64;
            if let (
                ObjectId::Id(parent),
                Key::Map(k),
                OpType::Make(ObjType::Map | ObjType::List) | OpType::Put(_),
            ) = (&op.obj, &op.key, &op.action)
                && created.contains(parent)
                && writes.get(&(&op.obj, k.as_str())) == Some(&1)
                && !matches!(op.action, OpType::Put(ScalarValue::Counter(_)))
            {
                continue;
            }
            let obj = match objects.get(&op.obj) {
                Some(o) => o.clone(),
                None => {
                    let o = match &op.obj {
                        ObjectId::Root => ROOT,
                        ObjectId::Id(id) => after
                            .import_obj(&format!("{}@{}", id.counter(), id.actor()))
                            .map_err(|e| {
                                Rejection::new(
                                    "",
                                    Rule::Malformed,
                                    format!(
                                        "an operation names an object that does not exist ({e})"
                                    ),
                                )
                            })?,
                    };
                    objects.insert(op.obj.clone(), o.clone());
                    o
                }
            };
            let key = match &op.key {
                Key::Map(k) => k.to_string(),
                Key::Seq(_) => {
                    judge_list_op(after, &obj, &op.action)?;
                    continue;
                }
            };
            let path = || field_path(after, &obj, &key);
            match &op.action {
                OpType::Delete => {
                    return Err(Rejection::new(
                        path(),
                        Rule::Deletion,
                        "records and fields are withdrawn or corrected, never deleted",
                    ));
                }
                OpType::Put(ScalarValue::Counter(_)) => {
                    return Err(Rejection::new(
                        path(),
                        Rule::WrongType,
                        "tally fields hold plain values, never counters",
                    ));
                }
                OpType::Increment(_) => {
                    return Err(Rejection::new(
                        path(),
                        Rule::UnsupportedOperation,
                        "tally fields hold plain values: no counters",
                    ));
                }
                OpType::MarkBegin(_) | OpType::MarkEnd(_) => {
                    return Err(Rejection::new(
                        path(),
                        Rule::UnsupportedOperation,
                        "tally fields hold plain values: no marks",
                    ));
                }
                OpType::Make(ObjType::Text | ObjType::Table) => {
                    return Err(Rejection::new(
                        path(),
                        Rule::WrongType,
                        "tally fields hold plain values: strings are scalar strings, never text objects",
                    ));
                }
                OpType::Make(_) | OpType::Put(_) => {}
            }
            let values = after.get_all(&obj, key.as_str()).unwrap_or_default();
            if values.len() > 1 && values.iter().any(|(v, _)| v.is_object()) {
                return Err(Rejection::new(
                    path(),
                    Rule::Conflict,
                    format!(
                        "{} concurrent values, one of them an object: records and containers are created once, by one writer; create the record under a new random id",
                        values.len()
                    ),
                ));
            }
            // The visible value is `get`'s (`get_all` lists a conflict's values in op order).
            let visible = match values.len() {
                0 => false,
                1 => is_op(&values[0].1, counter, &change.actor_id),
                _ => after
                    .get(&obj, key.as_str())
                    .ok()
                    .flatten()
                    .is_some_and(|(_, id)| is_op(&id, counter, &change.actor_id)),
            };
            if visible {
                continue;
            }
            match &op.action {
                OpType::Put(value) => overwritten.push(Overwritten {
                    obj: obj.clone(),
                    key,
                    value: value.clone(),
                }),
                _ => {
                    return Err(Rejection::new(
                        path(),
                        Rule::Replaced,
                        "an object created and replaced in the same changes: containers and records are created once",
                    ));
                }
            }
        }
    }
    Ok(overwritten)
}

/// Lists (a campaign's recipients) hold plain strings: every value put in one, surviving or not,
/// is a short plain string.
fn judge_list_op(after: &Automerge, obj: &ObjId, action: &OpType) -> Result<(), Rejection> {
    let path = || path_of(after, obj).join("/");
    match action {
        OpType::Put(ScalarValue::Str(s)) => {
            crate::fields::check_text(&path(), s, crate::fields::MAX_SHORT_TEXT, true)
        }
        // An entry of the document's own is reported, with its index, by the validator's
        // patches; one inserted by these same changes was judged above when it was put.
        OpType::Delete => Ok(()),
        _ => Err(Rejection::new(
            path(),
            Rule::WrongType,
            "list entries are plain strings",
        )),
    }
}
