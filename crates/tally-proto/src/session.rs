//! The state machine of ONE WebSocket connection speaking automerge-repo's protocol.
//!
//! A [`Session`] is sans-IO: the host feeds it the frames it received ([`Session::receive`],
//! with the current time) and gets back [`Event`]s; frames to send come back as bytes, either
//! inside [`Event::Send`] (the handshake answer) or from the `*_frame` methods. The session
//! never touches a document: the host owns the documents, so that the server can apply an
//! incoming sync message to a copy, validate the result, and only then merge it and store the
//! updated sync state.
//!
//! Per document the session keeps one `automerge::sync::State` and what the remote said about
//! the document, in a `HashMap` keyed by document id: every call is a keyed lookup, and nothing
//! here iterates over the documents of a connection, let alone over connections.
//!
//! The handshake (from the JS `network-websocket` adapters):
//! - client → server: `join { senderId, supportedProtocolVersions: ["1"], peerMetadata }`;
//! - server → client: `peer { senderId, targetId, selectedProtocolVersion: "1", peerMetadata }`,
//!   or `error { message: "unsupported protocol version" }` and a close.
//!
//! After it, both sides send `request` / `sync` / `doc-unavailable` / `ephemeral` addressed
//! with `senderId` and `targetId`.

use std::collections::{BTreeMap, HashMap};

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};

use crate::bounds::{FrameBudget, SyncBounds};
use crate::docid::DocumentId;
use crate::wire::{
    self, HeadsInfo, Message, PROTOCOL_V1, PeerId, PeerMetadata, StorageId, WireError,
};

/// Bounds on what one connection may make this side hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Frames longer than this are refused before decoding.
    pub max_frame_bytes: usize,
    /// Most documents the remote may make this session track (each costs a sync state).
    pub max_documents: usize,
    /// What one `sync` or `request` message may ask for ([`SyncBounds`]).
    pub sync: SyncBounds,
    /// Frames per second the remote may send on average (a token bucket; 0: no budget).
    pub frames_per_second: u32,
    /// Frames the remote may send at once before the rate applies.
    pub frame_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 32 * 1024 * 1024,
            max_documents: 100_000,
            sync: SyncBounds::default(),
            frames_per_second: 0,
            frame_burst: 0,
        }
    }
}

/// Which end of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Accepted the WebSocket; waits for `join`.
    Server,
    /// Opened the WebSocket; sent `join`, waits for `peer`.
    Client,
}

/// Where the handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitingJoin,
    AwaitingPeer,
    Established,
    Closed,
}

/// Something that happened on the connection, in the order the host should handle it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Send these bytes to the remote as one binary frame (e.g. the `peer` answer to a `join`).
    Send(Vec<u8>),
    /// Server side: the remote joined. Emitted before the [`Event::Send`] carrying `peer`, so a
    /// host that refuses this peer can close instead of sending it.
    Joined {
        peer_id: PeerId,
        metadata: Option<PeerMetadata>,
    },
    /// Client side: the server accepted our `join`.
    PeerAccepted {
        peer_id: PeerId,
        metadata: Option<PeerMetadata>,
        protocol_version: String,
    },
    /// The remote sent `request`: it does not have the document and asks for it. The message
    /// is a sync message like any other (it may even carry changes): handle it as
    /// [`Event::SyncReceived`], then answer with [`Session::sync_frame`] if the document
    /// exists here or [`Session::unavailable_frame`] if not.
    DocRequested {
        doc: DocumentId,
        message: sync::Message,
    },
    /// The remote sent `sync`. Apply it to a copy of the document with a clone of
    /// [`Session::sync_state`], validate, then merge and [`Session::set_sync_state`].
    /// On accepting, keep the copy even when its heads did not move: automerge queues
    /// changes whose dependencies have not arrived, and the stored sync state records them
    /// as received, so the remote will not send them again (dropping the copy there
    /// deadlocks the sync: the testkit's duplicate-delivery proptest found this).
    SyncReceived {
        doc: DocumentId,
        message: sync::Message,
    },
    /// The remote does not have the document we asked for.
    Unavailable { doc: DocumentId },
    /// Application data to relay or show, never stored.
    Ephemeral {
        doc: DocumentId,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    },
    /// Gossip about the heads other storage ids have.
    RemoteHeadsChanged {
        doc: DocumentId,
        new_heads: BTreeMap<StorageId, HeadsInfo>,
    },
    /// The remote changed its `remote-heads-changed` subscriptions.
    RemoteSubscriptionChange {
        add: Option<Vec<StorageId>>,
        remove: Option<Vec<StorageId>>,
    },
    /// The remote reported an error (e.g. it rejected our change). tally's server names the
    /// document of a refused change, and the record at fault when there is one.
    RemoteError {
        message: String,
        document_id: Option<DocumentId>,
        record: Option<String>,
    },
    /// The remote said `leave`; the session is closed.
    Left,
}

/// Why a received frame was refused. The session is unchanged by a refused frame unless
/// [`SessionError::is_fatal`] says so; the host decides whether to answer with
/// [`Session::error_frame`] and whether to close.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error(
        "frame of {len} bytes is larger than the {max} bytes this side accepts; split the document or raise Limits::max_frame_bytes"
    )]
    FrameTooLarge { len: usize, max: usize },
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error(
        "received {got} before join; a client must send join first and wait for the peer answer"
    )]
    NotJoined { got: &'static str },
    #[error("received {got} before the server's peer answer; wait for peer before syncing")]
    NotAccepted { got: &'static str },
    #[error(
        "received a second join from {peer_id} on the same connection; open a new connection to join again"
    )]
    DuplicateJoin { peer_id: PeerId },
    #[error("a {side:?} does not expect a {got} message; {hint}")]
    UnexpectedMessage {
        got: &'static str,
        side: Side,
        hint: &'static str,
    },
    #[error(
        "unsupported protocol version (offered {offered:?}); this peer speaks automerge-repo protocol version \"1\""
    )]
    UnsupportedProtocolVersion { offered: Vec<String> },
    #[error(
        "message claims to come from {got} but this connection joined as {expected}; use the senderId sent in join"
    )]
    WrongSender { expected: PeerId, got: PeerId },
    #[error(
        "message is addressed to {got} but this peer is {expected}; use the senderId from the handshake as targetId"
    )]
    WrongTarget { expected: PeerId, got: PeerId },
    #[error(
        "the data of a {kind} message for {doc} is not a valid automerge sync message: {reason}"
    )]
    BadSyncMessage {
        kind: &'static str,
        doc: DocumentId,
        reason: String,
    },
    #[error(
        "this connection already tracks {max} documents; close idle documents or raise Limits::max_documents"
    )]
    TooManyDocuments { max: usize },
    #[error(
        "more than {burst} frames at once or {per_second} frames per second on average; the connection is closed: send fewer, larger messages and reconnect later"
    )]
    FrameBudgetExceeded { per_second: u32, burst: u32 },
    #[error("the session is closed; open a new connection")]
    Closed,
}

impl SessionError {
    /// True when the session cannot continue (it is now closed): answer with an error frame
    /// if you like, then close the connection.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::UnsupportedProtocolVersion { .. }
                | SessionError::FrameBudgetExceeded { .. }
                | SessionError::Closed
        )
    }
}

/// What this session knows about one document on this connection.
#[derive(Debug, Default)]
struct DocState {
    /// automerge's record of what the remote has and what is in flight.
    sync: sync::State,
    /// False until the sync state is first used (generate, set or apply): until then a
    /// persisted state may replace it ([`Session::load_sync_state`]).
    sync_used: bool,
    /// The remote sent non-empty heads: it has the document, so we `sync`, never `request`.
    remote_has: bool,
    /// The remote sent `request`: it wants the document.
    remote_requested: bool,
    /// The remote said `doc-unavailable`.
    remote_unavailable: bool,
}

/// One connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Session {
    /// Server or client end; decides which handshake messages are expected.
    side: Side,
    /// Our peer id: `senderId` of what we send, required `targetId` of what we receive.
    me: PeerId,
    /// Sent in `join` / `peer`.
    my_metadata: PeerMetadata,
    phase: Phase,
    /// The remote's id and metadata, from `join` or `peer`.
    remote: Option<(PeerId, Option<PeerMetadata>)>,
    /// The version agreed in the handshake.
    protocol_version: Option<String>,
    /// Per-document state, keyed lookups only.
    docs: HashMap<DocumentId, DocState>,
    limits: Limits,
    /// Time of the last frame received (host's clock, milliseconds), for idle timeouts.
    last_heard_ms: Option<u64>,
    /// Keyed hash and length of the last frame received, to recognise a replay of it.
    last_frame: Option<(u64, usize)>,
    hasher: std::collections::hash_map::RandomState,
    /// The remote's frame budget ([`Limits::frames_per_second`]).
    budget: FrameBudget,
}

impl Session {
    /// The server end of a freshly accepted connection: waits for `join`.
    pub fn server(me: PeerId, my_metadata: PeerMetadata) -> Self {
        Self::new(Side::Server, Phase::AwaitingJoin, me, my_metadata)
    }

    /// The client end of a freshly opened connection, and the `join` frame to send first.
    pub fn client(me: PeerId, my_metadata: PeerMetadata) -> (Self, Vec<u8>) {
        let session = Self::new(Side::Client, Phase::AwaitingPeer, me, my_metadata);
        let join = wire::encode(&Message::Join {
            sender_id: session.me.clone(),
            supported_protocol_versions: Some(vec![PROTOCOL_V1.to_owned()]),
            peer_metadata: Some(session.my_metadata.clone()),
        });
        (session, join)
    }

    fn new(side: Side, phase: Phase, me: PeerId, my_metadata: PeerMetadata) -> Self {
        Self {
            side,
            me,
            my_metadata,
            phase,
            remote: None,
            protocol_version: None,
            docs: HashMap::new(),
            limits: Limits::default(),
            last_heard_ms: None,
            last_frame: None,
            hasher: std::collections::hash_map::RandomState::new(),
            budget: FrameBudget::new(0, 0),
        }
    }

    /// Replaces the default [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.budget = FrameBudget::new(limits.frames_per_second, limits.frame_burst);
        self.limits = limits;
        self
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn my_peer_id(&self) -> &PeerId {
        &self.me
    }

    /// True once the handshake is done and until the session closes.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The remote's peer id, once it has told us.
    pub fn remote_peer_id(&self) -> Option<&PeerId> {
        self.remote.as_ref().map(|(id, _)| id)
    }

    /// The remote's metadata (storage id, ephemeral flag), once it has told us.
    pub fn remote_metadata(&self) -> Option<&PeerMetadata> {
        self.remote.as_ref().and_then(|(_, meta)| meta.as_ref())
    }

    /// The protocol version agreed in the handshake.
    pub fn protocol_version(&self) -> Option<&str> {
        self.protocol_version.as_deref()
    }

    /// When the last frame arrived, as passed to [`Session::receive`].
    pub fn last_heard_ms(&self) -> Option<u64> {
        self.last_heard_ms
    }

    /// Handles one received frame. `now_ms` is the host's clock in milliseconds.
    ///
    /// A frame byte for byte the same as the one received just before it is a replay (a
    /// middlebox or a buggy peer sending it twice) and is ignored: within one connection the
    /// transport delivers everything once, so no well-behaved peer needs to repeat itself, and
    /// answering every copy would make both ends answer each other's copies, doubling the
    /// traffic at every round (a replayed `join` would also end the handshake in an error).
    pub fn receive(&mut self, frame: &[u8], now_ms: u64) -> Result<Vec<Event>, SessionError> {
        if self.phase == Phase::Closed {
            return Err(SessionError::Closed);
        }
        self.last_heard_ms = Some(now_ms);
        if !self.budget.take(now_ms) {
            // Checked first, before any work: a flood of tiny frames costs one comparison each.
            self.phase = Phase::Closed;
            return Err(SessionError::FrameBudgetExceeded {
                per_second: self.budget.per_second(),
                burst: self.budget.burst(),
            });
        }
        if frame.len() > self.limits.max_frame_bytes {
            return Err(SessionError::FrameTooLarge {
                len: frame.len(),
                max: self.limits.max_frame_bytes,
            });
        }
        let fingerprint = (
            std::hash::BuildHasher::hash_one(&self.hasher, frame),
            frame.len(),
        );
        if self.last_frame.replace(fingerprint) == Some(fingerprint) {
            return Ok(Vec::new());
        }
        let msg = wire::decode(frame)?;
        match self.phase {
            Phase::AwaitingJoin => self.on_awaiting_join(msg),
            Phase::AwaitingPeer => self.on_awaiting_peer(msg),
            Phase::Established => self.on_established(msg),
            Phase::Closed => Err(SessionError::Closed),
        }
    }

    fn on_awaiting_join(&mut self, msg: Message) -> Result<Vec<Event>, SessionError> {
        let Message::Join {
            sender_id,
            supported_protocol_versions,
            peer_metadata,
        } = msg
        else {
            return Err(SessionError::NotJoined {
                got: msg.type_name(),
            });
        };
        self.remote = Some((sender_id.clone(), peer_metadata.clone()));
        // Like the JS server: no version list means version 1.
        let supported = supported_protocol_versions
            .as_ref()
            .is_none_or(|versions| versions.iter().any(|v| v == PROTOCOL_V1));
        if !supported {
            self.phase = Phase::Closed;
            return Err(SessionError::UnsupportedProtocolVersion {
                offered: supported_protocol_versions.unwrap_or_default(),
            });
        }
        self.phase = Phase::Established;
        self.protocol_version = Some(PROTOCOL_V1.to_owned());
        let peer = wire::encode(&Message::Peer {
            sender_id: self.me.clone(),
            target_id: sender_id.clone(),
            selected_protocol_version: PROTOCOL_V1.to_owned(),
            peer_metadata: Some(self.my_metadata.clone()),
        });
        Ok(vec![
            Event::Joined {
                peer_id: sender_id,
                metadata: peer_metadata,
            },
            Event::Send(peer),
        ])
    }

    fn on_awaiting_peer(&mut self, msg: Message) -> Result<Vec<Event>, SessionError> {
        match msg {
            Message::Peer {
                sender_id,
                target_id,
                selected_protocol_version,
                peer_metadata,
            } => {
                if target_id != self.me {
                    return Err(SessionError::WrongTarget {
                        expected: self.me.clone(),
                        got: target_id,
                    });
                }
                if selected_protocol_version != PROTOCOL_V1 {
                    self.phase = Phase::Closed;
                    return Err(SessionError::UnsupportedProtocolVersion {
                        offered: vec![selected_protocol_version],
                    });
                }
                self.remote = Some((sender_id.clone(), peer_metadata.clone()));
                self.protocol_version = Some(selected_protocol_version.clone());
                self.phase = Phase::Established;
                Ok(vec![Event::PeerAccepted {
                    peer_id: sender_id,
                    metadata: peer_metadata,
                    protocol_version: selected_protocol_version,
                }])
            }
            // The JS server answers a refused join with an error and closes.
            Message::Error {
                message,
                document_id,
                record,
                ..
            } => {
                self.phase = Phase::Closed;
                Ok(vec![Event::RemoteError {
                    message,
                    document_id,
                    record,
                }])
            }
            other => Err(SessionError::NotAccepted {
                got: other.type_name(),
            }),
        }
    }

    fn on_established(&mut self, msg: Message) -> Result<Vec<Event>, SessionError> {
        match msg {
            Message::Join { sender_id, .. } => match self.side {
                Side::Server => Err(SessionError::DuplicateJoin { peer_id: sender_id }),
                Side::Client => Err(SessionError::UnexpectedMessage {
                    got: "join",
                    side: Side::Client,
                    hint: "only servers accept join",
                }),
            },
            Message::Peer { .. } => Err(SessionError::UnexpectedMessage {
                got: "peer",
                side: self.side,
                hint: "peer is sent once, by the server, in answer to join",
            }),
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            } => {
                self.check_addressing(sender_id, target_id)?;
                let message = decode_sync("request", document_id, &data, &self.limits.sync)?;
                let state = self.doc_entry(document_id)?;
                state.remote_requested = true;
                if !message.heads.is_empty() {
                    state.remote_has = true;
                }
                Ok(vec![Event::DocRequested {
                    doc: document_id,
                    message,
                }])
            }
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            } => {
                self.check_addressing(sender_id, target_id)?;
                let message = decode_sync("sync", document_id, &data, &self.limits.sync)?;
                let state = self.doc_entry(document_id)?;
                if !message.heads.is_empty() {
                    state.remote_has = true;
                }
                Ok(vec![Event::SyncReceived {
                    doc: document_id,
                    message,
                }])
            }
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            } => {
                self.check_addressing(sender_id, target_id)?;
                self.doc_entry(document_id)?.remote_unavailable = true;
                Ok(vec![Event::Unavailable { doc: document_id }])
            }
            Message::Ephemeral {
                sender_id,
                target_id,
                document_id,
                session_id,
                count,
                data,
            } => {
                self.check_addressing(sender_id, target_id)?;
                Ok(vec![Event::Ephemeral {
                    doc: document_id,
                    session_id,
                    count,
                    data,
                }])
            }
            Message::RemoteHeadsChanged {
                sender_id,
                target_id,
                document_id,
                new_heads,
            } => {
                self.check_addressing(sender_id, target_id)?;
                Ok(vec![Event::RemoteHeadsChanged {
                    doc: document_id,
                    new_heads,
                }])
            }
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            } => {
                self.check_addressing(sender_id, target_id)?;
                Ok(vec![Event::RemoteSubscriptionChange { add, remove }])
            }
            Message::Error {
                message,
                document_id,
                record,
                ..
            } => Ok(vec![Event::RemoteError {
                message,
                document_id,
                record,
            }]),
            Message::Leave { sender_id } => {
                if let Some((expected, _)) = &self.remote
                    && *expected != sender_id
                {
                    return Err(SessionError::WrongSender {
                        expected: expected.clone(),
                        got: sender_id,
                    });
                }
                self.phase = Phase::Closed;
                Ok(vec![Event::Left])
            }
        }
    }

    fn check_addressing(&self, sender: PeerId, target: PeerId) -> Result<(), SessionError> {
        if let Some((expected, _)) = &self.remote
            && *expected != sender
        {
            return Err(SessionError::WrongSender {
                expected: expected.clone(),
                got: sender,
            });
        }
        if target != self.me {
            return Err(SessionError::WrongTarget {
                expected: self.me.clone(),
                got: target,
            });
        }
        Ok(())
    }

    /// The state of a document the remote mentioned, created on first mention within limits.
    fn doc_entry(&mut self, doc: DocumentId) -> Result<&mut DocState, SessionError> {
        let len = self.docs.len();
        let max = self.limits.max_documents;
        match self.docs.entry(doc) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                if len >= max {
                    return Err(SessionError::TooManyDocuments { max });
                }
                Ok(e.insert(DocState::default()))
            }
        }
    }

    fn remote_id(&self) -> Option<PeerId> {
        if self.phase != Phase::Established {
            return None;
        }
        self.remote.as_ref().map(|(id, _)| id.clone())
    }

    /// The next sync message for `doc`, as a frame, or `None` when there is nothing new to
    /// send (the remote is up to date or a message is in flight) or the handshake is not done.
    ///
    /// The frame is a `request` when we have nothing of the document and the remote has
    /// neither shown that it has it nor asked for it (what the JS client does); otherwise
    /// it is a `sync`, in particular the answer to a `request`.
    pub fn sync_frame(&mut self, doc: DocumentId, am: &Automerge) -> Option<Vec<u8>> {
        let remote = self.remote_id()?;
        let state = self.docs.entry(doc).or_default();
        let message = am.generate_sync_message(&mut state.sync)?;
        state.sync_used = true;
        let as_request = am.get_heads().is_empty() && !state.remote_has && !state.remote_requested;
        let data = message.encode();
        Some(wire::encode(&if as_request {
            Message::Request {
                sender_id: self.me.clone(),
                target_id: remote,
                document_id: doc,
                data,
            }
        } else {
            Message::Sync {
                sender_id: self.me.clone(),
                target_id: remote,
                document_id: doc,
                data,
            }
        }))
    }

    /// A `request` for a document we do not have (`am` is usually an empty document). `None`
    /// when a message for it is already in flight or the handshake is not done.
    pub fn request_frame(&mut self, doc: DocumentId, am: &Automerge) -> Option<Vec<u8>> {
        let remote = self.remote_id()?;
        let state = self.docs.entry(doc).or_default();
        let message = am.generate_sync_message(&mut state.sync)?;
        state.sync_used = true;
        Some(wire::encode(&Message::Request {
            sender_id: self.me.clone(),
            target_id: remote,
            document_id: doc,
            data: message.encode(),
        }))
    }

    /// A `doc-unavailable` answer to a `request` for a document this side does not have.
    pub fn unavailable_frame(&mut self, doc: DocumentId) -> Option<Vec<u8>> {
        let remote = self.remote_id()?;
        Some(wire::encode(&Message::DocUnavailable {
            sender_id: self.me.clone(),
            target_id: remote,
            document_id: doc,
        }))
    }

    /// An `ephemeral` frame. `session_id` and `count` are the sender's (see
    /// [`Message::Ephemeral`]); a relaying server passes on the originals.
    pub fn ephemeral_frame(
        &self,
        doc: DocumentId,
        session_id: &str,
        count: u64,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let remote = self.remote_id()?;
        Some(wire::encode(&Message::Ephemeral {
            sender_id: self.me.clone(),
            target_id: remote,
            document_id: doc,
            session_id: session_id.to_owned(),
            count,
            data: data.to_vec(),
        }))
    }

    /// An `error` frame, addressed to the remote when it is known. Usable in any phase.
    pub fn error_frame(&self, text: &str) -> Vec<u8> {
        wire::encode(&Message::Error {
            sender_id: Some(self.me.clone()),
            target_id: self.remote.as_ref().map(|(id, _)| id.clone()),
            message: text.to_owned(),
            document_id: None,
            record: None,
        })
    }

    /// An `error` frame refusing changes to `doc`: names the document and, when one record is
    /// at fault, its id, so that the peer can set that record aside (docs/protocol.md,
    /// "Refusals").
    pub fn refusal_frame(&self, doc: DocumentId, text: &str, record: Option<&str>) -> Vec<u8> {
        wire::encode(&Message::Error {
            sender_id: Some(self.me.clone()),
            target_id: self.remote.as_ref().map(|(id, _)| id.clone()),
            message: text.to_owned(),
            document_id: Some(doc),
            record: record.map(str::to_owned),
        })
    }

    /// A `leave` frame; the session is closed afterwards.
    pub fn leave_frame(&mut self) -> Vec<u8> {
        self.phase = Phase::Closed;
        wire::encode(&Message::Leave {
            sender_id: self.me.clone(),
        })
    }

    /// The sync state of `doc` on this connection, if the document was touched.
    pub fn sync_state(&self, doc: &DocumentId) -> Option<&sync::State> {
        self.docs.get(doc).map(|d| &d.sync)
    }

    /// Stores the sync state after the host applied (and accepted) a received message.
    pub fn set_sync_state(&mut self, doc: DocumentId, state: sync::State) {
        let entry = self.docs.entry(doc).or_default();
        entry.sync = state;
        entry.sync_used = true;
    }

    /// Seeds a persisted sync state (`automerge::sync::State::decode`) for `doc`, if this
    /// connection has not used the document's sync state yet. Returns whether it was taken.
    /// Call it when a document is first touched on a connection: a fresh state makes the
    /// remote summarise the whole history of the document.
    pub fn load_sync_state(&mut self, doc: DocumentId, state: sync::State) -> bool {
        let entry = self.docs.entry(doc).or_default();
        if entry.sync_used {
            return false;
        }
        entry.sync = state;
        entry.sync_used = true;
        true
    }

    /// True when `doc`'s sync state on this connection has not been used yet, i.e. when
    /// [`Session::load_sync_state`] would take a persisted state.
    pub fn sync_state_is_fresh(&self, doc: &DocumentId) -> bool {
        self.docs.get(doc).is_none_or(|d| !d.sync_used)
    }

    /// The persistable part of `doc`'s sync state (`State::encode`), if it was touched.
    pub fn encoded_sync_state(&self, doc: &DocumentId) -> Option<Vec<u8>> {
        self.docs.get(doc).map(|d| d.sync.encode())
    }

    /// Drops everything this session holds for `doc` (e.g. when the server unloads an idle
    /// document) and returns its sync state for persisting.
    pub fn forget_doc(&mut self, doc: &DocumentId) -> Option<sync::State> {
        self.docs.remove(doc).map(|d| d.sync)
    }

    /// The documents this session holds state for (to persist sync states on disconnect).
    pub fn documents(&self) -> impl Iterator<Item = &DocumentId> {
        self.docs.keys()
    }

    /// How many documents this session holds state for.
    pub fn document_count(&self) -> usize {
        self.docs.len()
    }

    /// Whether the remote asked for `doc` with `request`.
    pub fn remote_requested(&self, doc: &DocumentId) -> bool {
        self.docs.get(doc).is_some_and(|d| d.remote_requested)
    }

    /// Whether the remote answered `doc-unavailable` for `doc`.
    pub fn remote_unavailable(&self, doc: &DocumentId) -> bool {
        self.docs.get(doc).is_some_and(|d| d.remote_unavailable)
    }

    /// Applies a received sync message straight to `am` with this session's state, without
    /// validation. For hosts that trust the remote (a phone trusting its server); a server
    /// validating changes uses the clone / validate / [`Session::set_sync_state`] path.
    pub fn apply_sync_message(
        &mut self,
        doc: DocumentId,
        am: &mut Automerge,
        message: sync::Message,
    ) -> Result<(), automerge::AutomergeError> {
        let entry = self.docs.entry(doc).or_default();
        entry.sync_used = true;
        am.receive_sync_message(&mut entry.sync, message)
    }
}

/// Decodes the `data` of a `request` / `sync` and refuses what would crash automerge later
/// or cost more than a real peer's message ([`SyncBounds::check`]).
fn decode_sync(
    kind: &'static str,
    doc: DocumentId,
    data: &[u8],
    bounds: &SyncBounds,
) -> Result<sync::Message, SessionError> {
    let bad = |reason: String| SessionError::BadSyncMessage { kind, doc, reason };
    bounds.precheck(data).map_err(bad)?;
    let message = sync::Message::decode(data).map_err(|e| bad(e.to_string()))?;
    bounds.check(&message).map_err(bad)?;
    Ok(message)
}
