//! The bodies of tally's fuzz targets, as plain functions over bytes. `fuzz/` (cargo-fuzz,
//! outside the workspace) wraps each in `fuzz_target!`; `tests/regressions.rs` replays every
//! file kept under `fuzz/regressions/<target>/` through the same function in `cargo test`, so a
//! crash found once stays fixed.
//!
//! Each function must return normally for any input: a panic, an abort or a hang is the bug.

use std::sync::OnceLock;

use automerge::ReadDoc as _;
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ScalarValue};
use tally_core::collection;
use tally_core::fixtures::{self, World};
use tally_core::validate::{Role, validate, validate_bytes};
use tally_proto::session::{Event, Session};
use tally_proto::wire::{self, PeerId, PeerMetadata};

/// The names of the fuzz targets, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/regressions/<name>/`.
pub const TARGETS: &[&str] = &[
    "wire_decode",
    "session_frames",
    "validate_changes",
    "qr_payload",
];

/// Runs the target called `name` on `data`. Panics on an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "wire_decode" => wire_decode(data),
        "session_frames" => session_frames(data),
        "validate_changes" => validate_changes(data),
        "qr_payload" => qr_payload(data),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}

/// The CBOR wire decoder: any bytes decode or are refused; what decodes re-encodes and decodes
/// to the same message.
pub fn wire_decode(data: &[u8]) {
    if let Ok(msg) = wire::decode(data) {
        let again = wire::decode(&wire::encode(&msg)).expect("an encoded message decodes");
        assert_eq!(again, msg, "encode/decode round trip changed the message");
    }
}

/// The sync protocol state machine fed an arbitrary frame sequence, on the server side and on
/// the client side. Frames are cut from the input by a one-byte length prefix (a prefix of 255
/// takes the rest). Every `sync` and `request` is applied to a document the way a host does.
pub fn session_frames(data: &[u8]) {
    let mut server = Session::server(PeerId::new("server"), PeerMetadata::default());
    let (mut client, _join) = Session::client(PeerId::new("phone"), PeerMetadata::default());
    let mut docs = std::collections::HashMap::new();
    let mut rest = data;
    let mut now = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = if len == 255 {
            tail.len()
        } else {
            usize::from(len).min(tail.len())
        };
        let (frame, tail) = tail.split_at(n);
        rest = tail;
        now += 17;
        for session in [&mut server, &mut client] {
            let Ok(events) = session.receive(frame, now) else {
                continue;
            };
            for event in events {
                if let Event::SyncReceived { doc, message } | Event::DocRequested { doc, message } =
                    event
                {
                    let am: &mut Automerge = docs.entry(doc).or_default();
                    let _ = session.apply_sync_message(doc, am, message);
                    let _ = session.sync_frame(doc, am);
                }
            }
        }
    }
}

/// The fixture campaign and a collection with one signature: the document `validate` judges
/// changes against.
fn before() -> &'static (World, Automerge) {
    static BEFORE: OnceLock<(World, Automerge)> = OnceLock::new();
    BEFORE.get_or_init(|| {
        let world = World::new();
        let mut doc = collection::create(fixtures::CAMPAIGN, "dev1").expect("fixture collection");
        let sig = world.signature("dev1", "s1", "Amara Okafor", "M5V 2T6", "Toronto");
        collection::add_signature(&mut doc, &sig, &world.campaign).expect("fixture signature");
        (world, doc)
    })
}

/// Names the structured mode writes besides the records' own fields (header keys, and one no
/// schema knows).
const OTHER_KEYS: &[&str] = &["kind", "schema", "owner", "x"];

/// The key the structured mode writes for `field`: a signature or check-in field, or another.
fn key_of(field: u8) -> &'static str {
    let all = collection::SIGNATURE_FIELDS
        .iter()
        .chain(collection::CHECKIN_FIELDS)
        .chain(OTHER_KEYS);
    let n =
        collection::SIGNATURE_FIELDS.len() + collection::CHECKIN_FIELDS.len() + OTHER_KEYS.len();
    all.copied().nth(usize::from(field) % n).unwrap_or("x")
}

/// The document core's `validate` fed arbitrary changes to a canvasser's collection. The first
/// byte picks the mode: even, the rest is raw change bytes (`validate_bytes`); odd, the rest is
/// a program of edits (put, delete, nested objects, at the root, in `signatures` or
/// `checkins`). The program is cut into concurrent branches at every 4-byte edit whose first
/// byte is `0xFF`, and within a branch into successive changes at every edit whose first byte
/// is `0xFE`; the branches are merged into one message, so conflicts and overwritten values are
/// drawn as often as plain edits. An accepted change must leave a document that the typed
/// reader can read, and no operation of it, visible or not, may write a key no record has or a
/// string longer than any text field allows.
pub fn validate_changes(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (world, before) = before();
    let writer = fixtures::writer("dev1", Role::Canvasser);
    let after = if mode % 2 == 0 {
        match validate_bytes(before, rest, &writer, Some(&world.campaign)) {
            Ok((after, _)) => after,
            Err(_) => return,
        }
    } else {
        let mut after = before.fork();
        for branch_ops in split(rest, 0xFF) {
            let mut branch = before.fork();
            for change_ops in split(&branch_ops, 0xFE) {
                if edit(&mut branch, &change_ops).is_err() {
                    return;
                }
            }
            if after.merge(&mut branch).is_err() {
                return;
            }
        }
        if validate(before, &after, &writer, Some(&world.campaign)).is_err() {
            return;
        }
        after
    };
    collection::read(&after).expect("an accepted change leaves a readable collection");
    for change in after.get_changes(&before.get_heads()) {
        for op in change.decode().operations {
            if let automerge::legacy::Key::Map(key) = &op.key {
                assert_ne!(
                    key.as_str(),
                    "x",
                    "an accepted change wrote a key no record has"
                );
            }
            if let automerge::legacy::OpType::Put(ScalarValue::Str(s)) = &op.action {
                assert!(
                    s.len() <= tally_core::fields::MAX_SHORT_TEXT,
                    "an accepted change wrote a text of {} bytes",
                    s.len()
                );
            }
        }
    }
}

/// The 4-byte edits of `ops`, cut at every edit whose first byte is `mark` (the mark is dropped).
fn split(ops: &[u8], mark: u8) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    for op in ops.chunks(4) {
        if op.first() == Some(&mark) {
            parts.push(Vec::new());
        } else if let Some(last) = parts.last_mut() {
            last.extend_from_slice(op);
        }
    }
    parts
}

/// Applies the edit program in `ops` to `doc` as one change.
fn edit(doc: &mut Automerge, ops: &[u8]) -> Result<(), automerge::AutomergeError> {
    let mut tx = doc.transaction();
    for op in ops.chunks(4) {
        let [kind, place, field, value] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        let container = match place % 4 {
            0 => ROOT,
            1 | 2 => {
                let map = if place % 4 == 1 {
                    collection::SIGNATURES
                } else {
                    collection::CHECKINS
                };
                let Some((_, records)) = tx.get(ROOT, map)? else {
                    continue;
                };
                let record = if place & 0x10 == 0 { "s1" } else { "s2" };
                match tx.get(&records, record)? {
                    Some((_, obj)) => obj,
                    None => tx.put_object(&records, record, ObjType::Map)?,
                }
            }
            _ => match tx.get(ROOT, collection::SIGNATURES)? {
                Some((_, records)) => records,
                None => continue,
            },
        };
        let key = key_of(field);
        match kind % 6 {
            0 => tx.delete(&container, key)?,
            1 => tx.put(&container, key, "x".repeat(usize::from(value) * 4))?,
            2 => tx.put(&container, key, ScalarValue::Int(i64::from(value) << 36))?,
            3 => tx.put(&container, key, ScalarValue::Boolean(value % 2 == 0))?,
            4 => {
                tx.put_object(&container, key, ObjType::Map)?;
            }
            _ => tx.put(
                &container,
                key,
                ScalarValue::Bytes(vec![value; usize::from(value)]),
            )?,
        }
    }
    tx.commit();
    Ok(())
}

/// The phone's QR payload parser: any text parses or is refused with an error.
pub fn qr_payload(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(p) = tally_payload::EnrollPayload::parse(text)
    {
        let _ = p.enroll_url();
    }
}
