//! The CBOR messages of automerge-repo's WebSocket protocol (protocol version "1").
//!
//! Every WebSocket binary frame carries one CBOR map with a `type` field. The field names are
//! the ones the JS client (`@automerge/automerge-repo` 2.x with `network-websocket`) and samod
//! send: `senderId`, `targetId`, `documentId` (base58check text), `data` (a CBOR byte string
//! holding an automerge sync message), `peerMetadata` (`storageId`, `isEphemeral`),
//! `supportedProtocolVersions` / `selectedProtocolVersion`, `sessionId`, `count`, `message`,
//! `newHeads`, `add` / `remove`.
//!
//! [`decode`] is tolerant where real clients need it: cbor-x writes any whole number above
//! `u32::MAX` (timestamps) as a float, JS `undefined` arrives as CBOR `undefined`, unknown
//! fields are ignored and a document id may come as text or as 16 raw bytes. It is strict
//! where leniency would hide bugs: one message per frame, known types only (an unknown type
//! is [`WireError::UnknownType`], which a host may choose to ignore). Decoding never panics
//! and allocates in proportion to the frame, never to a length the frame claims.
//!
//! [`encode`] writes what the JS client accepts (see `cbor_out` for the number rules).

mod cbor_out;

use std::collections::BTreeMap;
use std::fmt;

use ciborium::Value;

use crate::docid::{DocIdError, DocumentId};
use cbor_out::CborOut;

/// The only protocol version automerge-repo has defined so far.
pub const PROTOCOL_V1: &str = "1";

/// Longest peer id, storage id or ephemeral session id accepted from the wire, in bytes.
/// Real ids are tens of bytes; anything longer is a broken or hostile peer.
pub const MAX_ID_BYTES: usize = 1024;

/// A peer's id: an arbitrary string chosen by the peer (the JS client uses a random one).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({:?})", self.0)
    }
}

impl From<&str> for PeerId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The id of a peer's storage (a UUID string in the JS client). A peer that keeps the same
/// storage id across connections lets the other side persist sync states for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageId(pub String);

/// What a peer tells about itself in `join` and `peer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// Present when the peer persists documents; absent (or `undefined`) when it does not.
    pub storage_id: Option<StorageId>,
    /// True when the peer will not come back with the same storage id, so its sync states
    /// are not worth persisting.
    pub is_ephemeral: bool,
}

/// One entry of `remote-heads-changed`: the heads some storage id has for a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadsInfo {
    /// Change hashes as the JS client encodes them (text).
    pub heads: Vec<String>,
    /// Milliseconds since the Unix epoch when the heads were observed.
    pub timestamp: u64,
}

/// One wire message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server, first message on a connection.
    Join {
        sender_id: PeerId,
        /// `None` when the field is absent; the JS server then assumes version "1".
        supported_protocol_versions: Option<Vec<String>>,
        peer_metadata: Option<PeerMetadata>,
    },
    /// Server → client, the answer to an accepted `join`.
    Peer {
        sender_id: PeerId,
        target_id: PeerId,
        selected_protocol_version: String,
        peer_metadata: Option<PeerMetadata>,
    },
    /// "I do not have this document, please send it": `data` is an automerge sync message
    /// generated from an empty document.
    Request {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    /// An automerge sync message for one document.
    Sync {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    /// "I do not have this document either" (answer to `request`).
    DocUnavailable {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
    },
    /// Application data that is relayed, never stored (presence, cursors).
    Ephemeral {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        /// Random per sender process; with `count` it lets receivers drop duplicates.
        session_id: String,
        count: u64,
        data: Vec<u8>,
    },
    /// The heads other storage ids have for a document (gossip about third parties).
    RemoteHeadsChanged {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        new_heads: BTreeMap<StorageId, HeadsInfo>,
    },
    /// Subscribe to / unsubscribe from `remote-heads-changed` for some storage ids.
    RemoteSubscriptionChange {
        sender_id: PeerId,
        target_id: PeerId,
        add: Option<Vec<StorageId>>,
        remove: Option<Vec<StorageId>>,
    },
    /// A protocol error; the JS server sends it (with sender and target) before closing. tally's
    /// server also sends it for a refused change, naming the document (`documentId`) and, when
    /// one record is at fault, that record's id (`tallyRecord`, a tally extension that other
    /// automerge-repo peers ignore), so that a phone can set that record aside and carry on
    /// (docs/protocol.md, "Refusals").
    Error {
        sender_id: Option<PeerId>,
        target_id: Option<PeerId>,
        message: String,
        document_id: Option<DocumentId>,
        record: Option<String>,
    },
    /// The sender is going away.
    Leave { sender_id: PeerId },
}

impl Message {
    /// The wire `type` of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Request { .. } => "request",
            Message::Sync { .. } => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::RemoteHeadsChanged { .. } => "remote-heads-changed",
            Message::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Message::Error { .. } => "error",
            Message::Leave { .. } => "leave",
        }
    }
}

/// Why a frame is not a valid message. Each message names the field and what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("frame is not valid CBOR ({0}); each WebSocket binary frame must hold one CBOR map")]
    Cbor(String),
    #[error("frame has {extra} bytes after its CBOR message; send exactly one message per frame")]
    TrailingBytes { extra: usize },
    #[error("frame is a CBOR {found}, expected a map with a \"type\" field")]
    NotAMap { found: &'static str },
    #[error("frame holds more than {max} CBOR items; automerge-repo messages hold a few dozen")]
    TooManyItems { max: usize },
    #[error("message has no \"type\" text field")]
    MissingType,
    #[error(
        "unknown message type {0:?}; this peer speaks automerge-repo protocol version 1 (join, peer, request, sync, doc-unavailable, ephemeral, remote-heads-changed, remote-subscription-change, error, leave)"
    )]
    UnknownType(String),
    #[error("{message_type} message is missing its {field:?} field")]
    MissingField {
        message_type: &'static str,
        field: &'static str,
    },
    #[error("{message_type} message field {field:?} is a CBOR {found}, expected {expected}")]
    WrongFieldType {
        message_type: &'static str,
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{message_type} message field {field:?} is not a document id: {source}")]
    BadDocumentId {
        message_type: &'static str,
        field: &'static str,
        source: DocIdError,
    },
    #[error(
        "{message_type} message field {field:?} is {value}, expected a whole number from 0 to 2^64-1"
    )]
    BadNumber {
        message_type: &'static str,
        field: &'static str,
        value: String,
    },
    #[error(
        "{message_type} message field {field:?} is {len} bytes long; ids may be at most {max} bytes"
    )]
    IdTooLong {
        message_type: &'static str,
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Most CBOR items (headers) a frame may hold. Real messages hold a few dozen; the bound
/// keeps the decoded value tree small even for a frame of tiny items (a 32 MiB frame of
/// one-byte items would otherwise become a gigabyte of `ciborium::Value`s).
pub const MAX_ITEMS: usize = 10_000;

/// Decodes one frame. Never panics; see the module docs for what is tolerated.
pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    check_item_count(frame)?;
    let mut rest = frame;
    // ciborium reads byte and text strings through a fixed scratch buffer and grows arrays and
    // maps element by element, so a claimed length larger than the frame fails at end of input
    // instead of allocating; nesting is limited to 256 levels.
    let value: Value =
        ciborium::from_reader(&mut rest).map_err(|e| WireError::Cbor(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { extra: rest.len() });
    }
    let entries = match untag(value) {
        Value::Map(entries) => entries,
        other => {
            return Err(WireError::NotAMap {
                found: kind(&other),
            });
        }
    };
    let mut fields = Fields {
        message_type: "?",
        entries,
    };
    let type_name = match fields.get("type") {
        Some(Value::Text(t)) => t.clone(),
        _ => return Err(WireError::MissingType),
    };
    fields.message_type = match type_name.as_str() {
        "join" => "join",
        "peer" => "peer",
        "request" => "request",
        "sync" => "sync",
        "doc-unavailable" => "doc-unavailable",
        "ephemeral" => "ephemeral",
        "remote-heads-changed" => "remote-heads-changed",
        "remote-subscription-change" => "remote-subscription-change",
        "error" => "error",
        "leave" => "leave",
        _ => {
            let shown: String = type_name.chars().take(64).collect();
            return Err(WireError::UnknownType(shown));
        }
    };
    let f = &fields;
    Ok(match f.message_type {
        "join" => Message::Join {
            sender_id: f.peer("senderId")?,
            supported_protocol_versions: f.opt_text_list("supportedProtocolVersions")?,
            peer_metadata: f.metadata("peerMetadata")?,
        },
        "peer" => Message::Peer {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            selected_protocol_version: f.text("selectedProtocolVersion")?.to_owned(),
            peer_metadata: f.metadata("peerMetadata")?,
        },
        "request" => Message::Request {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            document_id: f.doc("documentId")?,
            data: f.bytes("data")?,
        },
        "sync" => Message::Sync {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            document_id: f.doc("documentId")?,
            data: f.bytes("data")?,
        },
        "doc-unavailable" => Message::DocUnavailable {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            document_id: f.doc("documentId")?,
        },
        "ephemeral" => Message::Ephemeral {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            document_id: f.doc("documentId")?,
            session_id: f.id("sessionId")?.to_owned(),
            count: f.number("count")?,
            data: f.bytes("data")?,
        },
        "remote-heads-changed" => Message::RemoteHeadsChanged {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            document_id: f.doc("documentId")?,
            new_heads: f.new_heads("newHeads")?,
        },
        "remote-subscription-change" => Message::RemoteSubscriptionChange {
            sender_id: f.peer("senderId")?,
            target_id: f.peer("targetId")?,
            add: f.opt_storage_list("add")?,
            remove: f.opt_storage_list("remove")?,
        },
        "error" => Message::Error {
            sender_id: f.opt_peer("senderId")?,
            target_id: f.opt_peer("targetId")?,
            message: f.text("message")?.to_owned(),
            document_id: f.opt_doc("documentId")?,
            record: f
                .opt_text("tallyRecord")?
                .map(|r| f.check_id_len("tallyRecord", r).map(str::to_owned))
                .transpose()?,
        },
        // Only "leave" is left: the match above admitted nothing else.
        _ => Message::Leave {
            sender_id: f.peer("senderId")?,
        },
    })
}

/// Counts the CBOR headers in `frame` without building anything, skipping the contents of
/// byte and text strings. Malformed input is left for the real decoder to report.
fn check_item_count(frame: &[u8]) -> Result<(), WireError> {
    let mut rest = frame;
    let mut items = 0usize;
    while let Some((&initial, tail)) = rest.split_first() {
        rest = tail;
        items += 1;
        if items > MAX_ITEMS {
            return Err(WireError::TooManyItems { max: MAX_ITEMS });
        }
        let major = initial >> 5;
        let width = match initial & 0x1f {
            0..=23 | 31 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return Ok(()),
        };
        let Some((arg_bytes, tail)) = rest.split_at_checked(width) else {
            return Ok(());
        };
        rest = tail;
        let arg = if width == 0 {
            u64::from(initial & 0x1f)
        } else {
            arg_bytes
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        };
        // Definite-length byte and text strings: skip the contents.
        if matches!(major, 2 | 3) && initial & 0x1f != 31 {
            match usize::try_from(arg).ok().and_then(|n| rest.get(n..)) {
                Some(tail) => rest = tail,
                None => return Ok(()),
            }
        }
    }
    Ok(())
}

/// Encodes one message as the JS client would.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = CborOut::new();
    match msg {
        Message::Join {
            sender_id,
            supported_protocol_versions,
            peer_metadata,
        } => {
            out.map(
                2 + usize::from(supported_protocol_versions.is_some())
                    + usize::from(peer_metadata.is_some()),
            );
            out.text("type").text("join");
            out.text("senderId").text(sender_id.as_str());
            if let Some(versions) = supported_protocol_versions {
                out.text("supportedProtocolVersions").array(versions.len());
                for v in versions {
                    out.text(v);
                }
            }
            if let Some(meta) = peer_metadata {
                out.text("peerMetadata");
                write_metadata(&mut out, meta);
            }
        }
        Message::Peer {
            sender_id,
            target_id,
            selected_protocol_version,
            peer_metadata,
        } => {
            out.map(4 + usize::from(peer_metadata.is_some()));
            out.text("type").text("peer");
            out.text("senderId").text(sender_id.as_str());
            out.text("targetId").text(target_id.as_str());
            out.text("selectedProtocolVersion")
                .text(selected_protocol_version);
            if let Some(meta) = peer_metadata {
                out.text("peerMetadata");
                write_metadata(&mut out, meta);
            }
        }
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        }
        | Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        } => {
            out.map(5);
            out.text("type").text(msg.type_name());
            out.text("senderId").text(sender_id.as_str());
            out.text("targetId").text(target_id.as_str());
            out.text("documentId").text(&document_id.to_string());
            out.text("data").bytes(data);
        }
        Message::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        } => {
            out.map(4);
            out.text("type").text("doc-unavailable");
            out.text("senderId").text(sender_id.as_str());
            out.text("targetId").text(target_id.as_str());
            out.text("documentId").text(&document_id.to_string());
        }
        Message::Ephemeral {
            sender_id,
            target_id,
            document_id,
            session_id,
            count,
            data,
        } => {
            out.map(7);
            out.text("type").text("ephemeral");
            out.text("senderId").text(sender_id.as_str());
            out.text("targetId").text(target_id.as_str());
            out.text("documentId").text(&document_id.to_string());
            out.text("sessionId").text(session_id);
            out.text("count").number(*count);
            out.text("data").bytes(data);
        }
        Message::RemoteHeadsChanged {
            sender_id,
            target_id,
            document_id,
            new_heads,
        } => {
            out.map(5);
            out.text("type").text("remote-heads-changed");
            out.text("senderId").text(sender_id.as_str());
            out.text("targetId").text(target_id.as_str());
            out.text("documentId").text(&document_id.to_string());
            out.text("newHeads").map(new_heads.len());
            for (storage, info) in new_heads {
                out.text(&storage.0).map(2);
                out.text("heads").array(info.heads.len());
                for h in &info.heads {
                    out.text(h);
                }
                out.text("timestamp").number(info.timestamp);
            }
        }
        Message::RemoteSubscriptionChange {
            sender_id,
            target_id,
            add,
            remove,
        } => {
            out.map(3 + usize::from(add.is_some()) + usize::from(remove.is_some()));
            out.text("type").text("remote-subscription-change");
            out.text("senderId").text(sender_id.as_str());
            out.text("targetId").text(target_id.as_str());
            for (key, list) in [("add", add), ("remove", remove)] {
                if let Some(list) = list {
                    out.text(key).array(list.len());
                    for s in list {
                        out.text(&s.0);
                    }
                }
            }
        }
        Message::Error {
            sender_id,
            target_id,
            message,
            document_id,
            record,
        } => {
            out.map(
                2 + usize::from(sender_id.is_some())
                    + usize::from(target_id.is_some())
                    + usize::from(document_id.is_some())
                    + usize::from(record.is_some()),
            );
            out.text("type").text("error");
            if let Some(s) = sender_id {
                out.text("senderId").text(s.as_str());
            }
            if let Some(t) = target_id {
                out.text("targetId").text(t.as_str());
            }
            out.text("message").text(message);
            if let Some(d) = document_id {
                out.text("documentId").text(&d.to_string());
            }
            if let Some(r) = record {
                out.text("tallyRecord").text(r);
            }
        }
        Message::Leave { sender_id } => {
            out.map(2);
            out.text("type").text("leave");
            out.text("senderId").text(sender_id.as_str());
        }
    }
    out.finish()
}

fn write_metadata(out: &mut CborOut, meta: &PeerMetadata) {
    out.map(1 + usize::from(meta.storage_id.is_some()));
    if let Some(storage) = &meta.storage_id {
        out.text("storageId").text(&storage.0);
    }
    out.text("isEphemeral").bool(meta.is_ephemeral);
}

/// Strips CBOR tags (e.g. tag 64, which cbor-x puts on a `Uint8Array` unless told not to).
fn untag(mut v: Value) -> Value {
    while let Value::Tag(_, inner) = v {
        v = *inner;
    }
    v
}

fn untag_ref(mut v: &Value) -> &Value {
    while let Value::Tag(_, inner) = v {
        v = inner;
    }
    v
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "integer",
        Value::Bytes(_) => "byte string",
        Value::Float(_) => "float",
        Value::Text(_) => "text string",
        Value::Bool(_) => "bool",
        Value::Null => "null/undefined",
        Value::Tag(..) => "tag",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        _ => "unknown value",
    }
}

/// The fields of one message map, with the message type for error messages.
struct Fields {
    message_type: &'static str,
    entries: Vec<(Value, Value)>,
}

impl Fields {
    /// The value of a text key; the last one wins, as in a JS object. `null` and `undefined`
    /// count as absent, because that is what they mean to the JS sender.
    fn get(&self, key: &str) -> Option<&Value> {
        lookup(&self.entries, key)
    }

    fn wrong(&self, field: &'static str, expected: &'static str, found: &Value) -> WireError {
        WireError::WrongFieldType {
            message_type: self.message_type,
            field,
            expected,
            found: kind(found),
        }
    }

    fn missing(&self, field: &'static str) -> WireError {
        WireError::MissingField {
            message_type: self.message_type,
            field,
        }
    }

    fn opt_text(&self, field: &'static str) -> Result<Option<&str>, WireError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t)),
            Some(other) => Err(self.wrong(field, "a text string", other)),
        }
    }

    fn text(&self, field: &'static str) -> Result<&str, WireError> {
        self.opt_text(field)?.ok_or_else(|| self.missing(field))
    }

    fn check_id_len<'a>(&self, field: &'static str, s: &'a str) -> Result<&'a str, WireError> {
        if s.len() > MAX_ID_BYTES {
            return Err(WireError::IdTooLong {
                message_type: self.message_type,
                field,
                len: s.len(),
                max: MAX_ID_BYTES,
            });
        }
        Ok(s)
    }

    fn id(&self, field: &'static str) -> Result<&str, WireError> {
        let s = self.text(field)?;
        self.check_id_len(field, s)
    }

    fn peer(&self, field: &'static str) -> Result<PeerId, WireError> {
        Ok(PeerId::new(self.id(field)?))
    }

    fn opt_peer(&self, field: &'static str) -> Result<Option<PeerId>, WireError> {
        match self.opt_text(field)? {
            None => Ok(None),
            Some(s) => Ok(Some(PeerId::new(self.check_id_len(field, s)?))),
        }
    }

    fn doc(&self, field: &'static str) -> Result<DocumentId, WireError> {
        let bad = |source| WireError::BadDocumentId {
            message_type: self.message_type,
            field,
            source,
        };
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::Text(t)) => t.parse().map_err(bad),
            // samod accepts the 16 raw bytes too.
            Some(Value::Bytes(b)) => DocumentId::try_from_slice(b).map_err(bad),
            Some(other) => Err(self.wrong(field, "a base58check text string", other)),
        }
    }

    fn opt_doc(&self, field: &'static str) -> Result<Option<DocumentId>, WireError> {
        match self.get(field) {
            None => Ok(None),
            Some(_) => self.doc(field).map(Some),
        }
    }

    fn bytes(&self, field: &'static str) -> Result<Vec<u8>, WireError> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::Bytes(b)) => Ok(b.clone()),
            Some(other) => Err(self.wrong(field, "a byte string", other)),
        }
    }

    fn number(&self, field: &'static str) -> Result<u64, WireError> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(v) => whole_number(v).map_err(|value| match value {
                Some(value) => WireError::BadNumber {
                    message_type: self.message_type,
                    field,
                    value,
                },
                None => self.wrong(field, "a number", v),
            }),
        }
    }

    fn opt_text_list(&self, field: &'static str) -> Result<Option<Vec<String>>, WireError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match untag_ref(item) {
                    Value::Text(t) => Ok(t.clone()),
                    other => Err(self.wrong(field, "an array of text strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.wrong(field, "an array of text strings", other)),
        }
    }

    fn opt_storage_list(&self, field: &'static str) -> Result<Option<Vec<StorageId>>, WireError> {
        let Some(list) = self.opt_text_list(field)? else {
            return Ok(None);
        };
        list.into_iter()
            .map(|s| {
                self.check_id_len(field, &s)?;
                Ok(StorageId(s))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn metadata(&self, field: &'static str) -> Result<Option<PeerMetadata>, WireError> {
        let entries = match self.get(field) {
            None => return Ok(None),
            Some(Value::Map(entries)) => entries,
            Some(other) => return Err(self.wrong(field, "a map", other)),
        };
        let storage_id = match lookup(entries, "storageId") {
            None => None,
            Some(Value::Text(t)) => Some(StorageId(
                self.check_id_len("peerMetadata.storageId", t)?.to_owned(),
            )),
            Some(other) => {
                return Err(self.wrong("peerMetadata.storageId", "a text string", other));
            }
        };
        let is_ephemeral = match lookup(entries, "isEphemeral") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(self.wrong("peerMetadata.isEphemeral", "a bool", other)),
        };
        Ok(Some(PeerMetadata {
            storage_id,
            is_ephemeral,
        }))
    }

    fn new_heads(&self, field: &'static str) -> Result<BTreeMap<StorageId, HeadsInfo>, WireError> {
        let entries = match self.get(field) {
            None => return Err(self.missing(field)),
            Some(Value::Map(entries)) => entries,
            Some(other) => return Err(self.wrong(field, "a map", other)),
        };
        let mut out = BTreeMap::new();
        for (key, value) in entries {
            let Value::Text(storage) = untag_ref(key) else {
                return Err(self.wrong("newHeads key", "a text string", key));
            };
            self.check_id_len("newHeads key", storage)?;
            let Value::Map(info) = untag_ref(value) else {
                return Err(self.wrong("newHeads entry", "a map", value));
            };
            let heads = match lookup(info, "heads") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|h| match untag_ref(h) {
                        Value::Text(t) => Ok(t.clone()),
                        other => Err(self.wrong("newHeads.heads", "text strings", other)),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => return Err(self.missing("newHeads.heads")),
                Some(other) => return Err(self.wrong("newHeads.heads", "an array", other)),
            };
            let timestamp = match lookup(info, "timestamp") {
                None => return Err(self.missing("newHeads.timestamp")),
                Some(v) => whole_number(v).map_err(|value| match value {
                    Some(value) => WireError::BadNumber {
                        message_type: self.message_type,
                        field: "newHeads.timestamp",
                        value,
                    },
                    None => self.wrong("newHeads.timestamp", "a number", v),
                })?,
            };
            out.insert(StorageId(storage.clone()), HeadsInfo { heads, timestamp });
        }
        Ok(out)
    }
}

/// Looks up a text key in a CBOR map, last one wins, `null`/`undefined` meaning absent.
fn lookup<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .rev()
        .find(|(k, _)| matches!(untag_ref(k), Value::Text(t) if t == key))
        .map(|(_, v)| untag_ref(v))
        .filter(|v| !matches!(v, Value::Null))
}

/// A whole number from a CBOR integer or an integral float (cbor-x writes any number above
/// `u32::MAX` as a float64). `Err(Some(text))` for a number out of range, `Err(None)` for a
/// value that is not a number at all.
fn whole_number(v: &Value) -> Result<u64, Option<String>> {
    match v {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| Some(i128::from(*i).to_string())),
        Value::Float(f) => {
            // 2^64 as f64 is exactly representable; anything at or above it does not fit.
            if f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 18_446_744_073_709_551_616.0 {
                Ok(*f as u64)
            } else {
                Err(Some(f.to_string()))
            }
        }
        _ => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers() {
        assert_eq!(whole_number(&Value::Float(1.0)), Ok(1));
        assert_eq!(
            whole_number(&Value::Float(1_700_000_000_123.0)),
            Ok(1_700_000_000_123)
        );
        assert!(whole_number(&Value::Float(1.5)).is_err());
        assert!(whole_number(&Value::Float(-1.0)).is_err());
        assert!(whole_number(&Value::Float(f64::NAN)).is_err());
        assert!(whole_number(&Value::Float(1e30)).is_err());
        assert!(whole_number(&Value::Integer((-3).into())).is_err());
        assert_eq!(whole_number(&Value::Text("1".into())), Err(None));
    }

    #[test]
    fn unknown_type_is_its_own_error() {
        let mut out = CborOut::new();
        out.map(2)
            .text("type")
            .text("gossip")
            .text("senderId")
            .text("a");
        assert_eq!(
            decode(&out.finish()),
            Err(WireError::UnknownType("gossip".into()))
        );
    }
}
