//! A deterministic in-memory network for protocol tests: one [`Hub`] (the server) and several
//! client [`Repo`]s, joined by frame queues, driven by [`Net`].
//!
//! Everything is seeded: documents get actor ids and ids from the net's RNG, commits carry
//! time 0, maps are ordered, and [`Net::run_until_quiet`] picks which pending frame to deliver
//! next with the same RNG, across all connections (each direction of one connection stays in
//! order, as a WebSocket does). Faults can drop or duplicate deliveries.
//!
//! The hub runs the server's own decisions ([`crate::host::decide`]): each incoming sync
//! message is applied to a fork of the document with a copy of the sync state, its
//! [`Policy`] judges the result, and the fork is kept only if the policy accepts; otherwise it
//! answers with an `error` frame and keeps the old document and sync state.
//! Both ends persist sync states at disconnect and seed them at the next connection, as the
//! design brief asks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ReadDoc, ScalarValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::docid::DocumentId;
use crate::host;
use crate::session::{Event, Session};
use crate::wire::{PeerId, PeerMetadata, StorageId};

/// Decides whether the hub may merge a change: `before` is the stored document, `after` the
/// same document with the incoming sync message applied. `Err` carries the reason sent back.
pub type Policy = fn(&Automerge, &Automerge) -> Result<(), String>;

/// A policy that accepts everything.
pub fn allow_all(_before: &Automerge, _after: &Automerge) -> Result<(), String> {
    Ok(())
}

/// A client's index in the [`Net`]; also its connection id at the hub.
pub type ClientId = usize;

/// A change the hub refused, kept like the server's quarantine keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub client: ClientId,
    pub doc: DocumentId,
    pub reason: String,
}

/// The server side: documents, one session per connected client, the validation policy.
pub struct Hub {
    peer_id: PeerId,
    policy: Policy,
    docs: BTreeMap<DocumentId, Automerge>,
    sessions: BTreeMap<ClientId, Session>,
    /// Connections that touched each document: who to send a merged change to.
    subscribers: BTreeMap<DocumentId, BTreeSet<ClientId>>,
    /// Sync states persisted at disconnect, by client peer id and document.
    persisted: BTreeMap<(PeerId, DocumentId), Vec<u8>>,
    rejections: Vec<Rejection>,
    /// Protocol errors the hub's sessions reported, as text.
    protocol_errors: Vec<String>,
}

impl Hub {
    fn new(policy: Policy) -> Self {
        Self {
            peer_id: PeerId::new("hub"),
            policy,
            docs: BTreeMap::new(),
            sessions: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            persisted: BTreeMap::new(),
            rejections: Vec::new(),
            protocol_errors: Vec::new(),
        }
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    pub fn doc(&self, doc: &DocumentId) -> Option<&Automerge> {
        self.docs.get(doc)
    }

    pub fn doc_ids(&self) -> impl Iterator<Item = &DocumentId> {
        self.docs.keys()
    }

    pub fn rejections(&self) -> &[Rejection] {
        &self.rejections
    }

    pub fn protocol_errors(&self) -> &[String] {
        &self.protocol_errors
    }

    pub fn session(&self, client: ClientId) -> Option<&Session> {
        self.sessions.get(&client)
    }

    fn connect(&mut self, client: ClientId) {
        let session = Session::server(self.peer_id.clone(), PeerMetadata::default());
        self.sessions.insert(client, session);
    }

    fn disconnect(&mut self, client: ClientId) {
        let Some(session) = self.sessions.remove(&client) else {
            return;
        };
        let mut docs: Vec<DocumentId> = session.documents().copied().collect();
        docs.sort();
        for doc in docs {
            if let Some(subs) = self.subscribers.get_mut(&doc) {
                subs.remove(&client);
            }
            if let (Some(peer), Some(state)) =
                (session.remote_peer_id(), session.encoded_sync_state(&doc))
            {
                self.persisted.insert((peer.clone(), doc), state);
            }
        }
    }

    fn forget_persisted(&mut self, peer: &PeerId) {
        self.persisted.retain(|(p, _), _| p != peer);
    }

    /// Handles one frame from `client`; returns frames to send (to which client) and
    /// whether to close this connection.
    fn receive(&mut self, client: ClientId, frame: &[u8], now_ms: u64) -> HubOutput {
        let mut out = HubOutput::default();
        let Some(session) = self.sessions.get_mut(&client) else {
            return out;
        };
        let events = match session.receive(frame, now_ms) {
            Ok(events) => events,
            Err(e) => {
                self.protocol_errors.push(e.to_string());
                out.send.push((client, session.error_frame(&e.to_string())));
                out.close = e.is_fatal();
                return out;
            }
        };
        for event in events {
            match event {
                Event::Send(frame) => out.send.push((client, frame)),
                Event::DocRequested { doc, message } => {
                    self.subscribe(client, doc);
                    self.apply(client, doc, message, true, &mut out);
                }
                Event::SyncReceived { doc, message } => {
                    self.subscribe(client, doc);
                    self.apply(client, doc, message, false, &mut out);
                }
                Event::Ephemeral {
                    doc,
                    session_id,
                    count,
                    data,
                } => {
                    for other in self.subscribers_except(doc, client) {
                        if let Some(frame) = self
                            .sessions
                            .get(&other)
                            .and_then(|s| s.ephemeral_frame(doc, &session_id, count, &data))
                        {
                            out.send.push((other, frame));
                        }
                    }
                }
                Event::Left => out.close = true,
                Event::RemoteError { message, .. } => self.protocol_errors.push(message),
                Event::Joined { .. }
                | Event::PeerAccepted { .. }
                | Event::Unavailable { .. }
                | Event::RemoteHeadsChanged { .. }
                | Event::RemoteSubscriptionChange { .. } => {}
            }
        }
        out
    }

    fn session_mut(&mut self, client: ClientId) -> &mut Session {
        self.sessions
            .get_mut(&client)
            .unwrap_or_else(|| unreachable!("events only come from live sessions"))
    }

    fn subscribe(&mut self, client: ClientId, doc: DocumentId) {
        self.subscribers.entry(doc).or_default().insert(client);
        let session = self.session_mut(client);
        if session.sync_state_is_fresh(&doc)
            && let Some(peer) = session.remote_peer_id().cloned()
            && let Some(bytes) = self.persisted.get(&(peer, doc))
            && let Ok(state) = sync::State::decode(bytes)
        {
            self.session_mut(client).load_sync_state(doc, state);
        }
    }

    fn subscribers_except(&self, doc: DocumentId, client: ClientId) -> Vec<ClientId> {
        self.subscribers
            .get(&doc)
            .map(|s| s.iter().copied().filter(|c| *c != client).collect())
            .unwrap_or_default()
    }

    /// Validate-then-merge, decided by [`host`]: admit (every document the hub holds is
    /// readable here), apply to a fork, ask the policy, and run what it decided over memory.
    /// `requested`: the message came as a `request`.
    fn apply(
        &mut self,
        client: ClientId,
        doc: DocumentId,
        message: sync::Message,
        requested: bool,
        out: &mut HubOutput,
    ) {
        let empty = Automerge::new();
        let stored = self.docs.get(&doc);
        let access = match stored {
            Some(_) => host::Access::Readable,
            None => host::Access::Missing,
        };
        let before = stored.unwrap_or(&empty);
        let mut state = self
            .sessions
            .get(&client)
            .and_then(|s| s.sync_state(&doc))
            .cloned()
            .unwrap_or_default();
        match host::admit(access, requested, !message.changes.is_empty()) {
            host::Admission::Apply => {}
            host::Admission::Unavailable { .. } => {
                if let Some(frame) = self.session_mut(client).unavailable_frame(doc) {
                    out.send.push((client, frame));
                }
                return;
            }
            host::Admission::OfferEmpty => {
                // Nothing stored yet (the first message only carries heads): answer from the
                // empty document so the phone sends its changes, store nothing.
                let mut empty = Automerge::new();
                if let Err(e) = empty.receive_sync_message(&mut state, message) {
                    let reason = format!("changes do not apply: {e}");
                    let text = format!("change to {doc} rejected: {reason}");
                    out.send
                        .push((client, self.session_mut(client).error_frame(&text)));
                    self.rejections.push(Rejection {
                        client,
                        doc,
                        reason,
                    });
                    return;
                }
                let session = self.session_mut(client);
                session.set_sync_state(doc, state);
                if let Some(frame) = session.sync_frame(doc, &empty) {
                    out.send.push((client, frame));
                }
                return;
            }
        }
        let decision = host::decide(
            before,
            |after| {
                after
                    .receive_sync_message(&mut state, message)
                    .map_err(|e| format!("changes do not apply: {e}"))
            },
            host::Waiting::Queued,
            self.policy,
        );
        let decision = match decision {
            Ok(d) => d,
            Err(e) => host::Decision::Unapplicable(format!("changes do not apply: {e}")),
        };
        match decision {
            host::Decision::Store { after, .. } => {
                self.session_mut(client).set_sync_state(doc, state);
                self.docs.insert(doc, after);
                self.sync_to(client, doc, out);
                for other in self.subscribers_except(doc, client) {
                    self.sync_to(other, doc, out);
                }
            }
            host::Decision::Unchanged { keep, .. } => {
                self.session_mut(client).set_sync_state(doc, state);
                if let Some(after) = keep {
                    // Changes whose dependencies have not arrived yet wait in the fork's
                    // queue, and the sync state just stored says they were received, so the
                    // phone will not send them again. (They are validated when they apply
                    // and the heads move.)
                    self.docs.insert(doc, after);
                } else if access == host::Access::Missing {
                    // Changes that added nothing (an empty document's bytes) still create it.
                    self.docs.insert(doc, Automerge::new());
                }
                self.sync_to(client, doc, out);
            }
            host::Decision::Unapplicable(reason) | host::Decision::Refused(reason) => {
                let text = format!("change to {doc} rejected: {reason}");
                out.send
                    .push((client, self.session_mut(client).error_frame(&text)));
                self.rejections.push(Rejection {
                    client,
                    doc,
                    reason,
                });
            }
        }
    }

    fn sync_to(&mut self, client: ClientId, doc: DocumentId, out: &mut HubOutput) {
        let Some(am) = self.docs.get(&doc) else {
            return;
        };
        if let Some(frame) = self
            .sessions
            .get_mut(&client)
            .and_then(|s| s.sync_frame(doc, am))
        {
            out.send.push((client, frame));
        }
    }
}

#[derive(Default)]
struct HubOutput {
    send: Vec<(ClientId, Vec<u8>)>,
    close: bool,
}

/// A client: its own documents, its session when connected, persisted sync states.
pub struct Repo {
    peer_id: PeerId,
    /// This device's automerge actor, used for every document it writes (seeded, so that
    /// change hashes, and with them bloom filter collisions, are the same in every run).
    actor: ActorId,
    docs: BTreeMap<DocumentId, Automerge>,
    /// Documents asked for but not received yet.
    wanted: BTreeSet<DocumentId>,
    session: Option<Session>,
    persisted: BTreeMap<DocumentId, Vec<u8>>,
    /// `error` messages received from the hub.
    errors: Vec<String>,
    unavailable: BTreeSet<DocumentId>,
    /// Protocol errors this client's sessions reported.
    protocol_errors: Vec<String>,
}

impl Repo {
    fn new(peer_id: PeerId, actor: ActorId) -> Self {
        Self {
            peer_id,
            actor,
            docs: BTreeMap::new(),
            wanted: BTreeSet::new(),
            session: None,
            persisted: BTreeMap::new(),
            errors: Vec::new(),
            unavailable: BTreeSet::new(),
            protocol_errors: Vec::new(),
        }
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    pub fn doc(&self, doc: &DocumentId) -> Option<&Automerge> {
        self.docs.get(doc)
    }

    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    pub fn protocol_errors(&self) -> &[String] {
        &self.protocol_errors
    }

    pub fn unavailable(&self) -> &BTreeSet<DocumentId> {
        &self.unavailable
    }

    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    pub fn is_connected(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_established)
    }

    fn metadata(&self) -> PeerMetadata {
        PeerMetadata {
            storage_id: Some(StorageId(format!("storage-{}", self.peer_id))),
            is_ephemeral: false,
        }
    }

    fn connect(&mut self) -> Vec<u8> {
        let (session, join) = Session::client(self.peer_id.clone(), self.metadata());
        self.session = Some(session);
        join
    }

    fn disconnect(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let mut docs: Vec<DocumentId> = session.documents().copied().collect();
        docs.sort();
        for doc in docs {
            if let Some(state) = session.encoded_sync_state(&doc) {
                self.persisted.insert(doc, state);
            }
        }
    }

    fn seed(&mut self, doc: DocumentId) {
        if let Some(session) = self.session.as_mut()
            && session.sync_state_is_fresh(&doc)
            && let Some(bytes) = self.persisted.get(&doc)
            && let Ok(state) = sync::State::decode(bytes)
        {
            session.load_sync_state(doc, state);
        }
    }

    /// The frames that start or continue syncing `doc`.
    fn sync_doc(&mut self, doc: DocumentId) -> Option<Vec<u8>> {
        self.seed(doc);
        let session = self.session.as_mut()?;
        match self.docs.get(&doc) {
            Some(am) => session.sync_frame(doc, am),
            None if self.wanted.contains(&doc) => session.request_frame(doc, &Automerge::new()),
            None => None,
        }
    }

    fn receive(&mut self, frame: &[u8], now_ms: u64) -> Vec<Vec<u8>> {
        let Some(session) = self.session.as_mut() else {
            return Vec::new();
        };
        let events = match session.receive(frame, now_ms) {
            Ok(events) => events,
            Err(e) => {
                self.protocol_errors.push(e.to_string());
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for event in events {
            match event {
                Event::Send(frame) => out.push(frame),
                Event::PeerAccepted { .. } => {
                    let docs: Vec<DocumentId> = self
                        .docs
                        .keys()
                        .chain(self.wanted.iter())
                        .copied()
                        .collect();
                    for doc in docs {
                        out.extend(self.sync_doc(doc));
                    }
                }
                Event::SyncReceived { doc, message } | Event::DocRequested { doc, message } => {
                    self.seed(doc);
                    let Some(session) = self.session.as_mut() else {
                        break;
                    };
                    let actor = &self.actor;
                    let am = self
                        .docs
                        .entry(doc)
                        .or_insert_with(|| Automerge::new().with_actor(actor.clone()));
                    match session.apply_sync_message(doc, am, message) {
                        Ok(()) => {
                            if !am.get_heads().is_empty() {
                                self.wanted.remove(&doc);
                                self.unavailable.remove(&doc);
                            }
                            out.extend(session.sync_frame(doc, am));
                        }
                        Err(e) => self.protocol_errors.push(e.to_string()),
                    }
                    if self
                        .docs
                        .get(&doc)
                        .is_some_and(|d| d.get_heads().is_empty())
                        && self.wanted.contains(&doc)
                    {
                        // Still nothing: keep waiting as "wanted", not as an empty document.
                        self.docs.remove(&doc);
                    }
                }
                Event::Unavailable { doc } => {
                    self.unavailable.insert(doc);
                }
                Event::RemoteError { message, .. } => self.errors.push(message),
                Event::Left => self.session = None,
                Event::Joined { .. }
                | Event::Ephemeral { .. }
                | Event::RemoteHeadsChanged { .. }
                | Event::RemoteSubscriptionChange { .. } => {}
            }
        }
        out
    }
}

/// Delivery faults, in thousandths of deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Deliver the frame and keep it queued, so it arrives twice in a row.
    pub duplicate_per_mille: u32,
    /// Throw the frame away instead of delivering it.
    pub drop_per_mille: u32,
}

/// Bytes sent on one connection, counted when a frame is queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub to_hub: u64,
    pub to_client: u64,
    pub frames: u64,
}

impl Traffic {
    pub fn total(&self) -> u64 {
        self.to_hub + self.to_client
    }
}

#[derive(Default)]
struct Link {
    connected: bool,
    to_hub: VecDeque<Vec<u8>>,
    to_client: VecDeque<Vec<u8>>,
    traffic: Traffic,
}

/// `run_until_quiet` hit its step bound with frames still pending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network not quiet after {steps} deliveries ({pending} frames still pending)")]
pub struct NotQuiet {
    pub steps: usize,
    pub pending: usize,
}

/// The hub, the clients and the queues between them.
pub struct Net {
    hub: Hub,
    repos: Vec<Repo>,
    links: Vec<Link>,
    rng: StdRng,
    faults: Faults,
    now_ms: u64,
}

impl Net {
    /// An empty network whose hub validates with `policy`.
    pub fn new(seed: u64, policy: Policy) -> Self {
        Self {
            hub: Hub::new(policy),
            repos: Vec::new(),
            links: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            faults: Faults::default(),
            now_ms: 0,
        }
    }

    /// Adds a disconnected client.
    pub fn add_client(&mut self) -> ClientId {
        let id = self.repos.len();
        let actor = ActorId::from(self.rng.r#gen::<[u8; 16]>());
        self.repos
            .push(Repo::new(PeerId::new(format!("client-{id}")), actor));
        self.links.push(Link::default());
        id
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn repo(&self, client: ClientId) -> &Repo {
        &self.repos[client]
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn traffic(&self, client: ClientId) -> Traffic {
        self.links[client].traffic
    }

    pub fn reset_traffic(&mut self) {
        for link in &mut self.links {
            link.traffic = Traffic::default();
        }
    }

    /// Opens a connection: the client queues its `join`.
    pub fn connect(&mut self, client: ClientId) {
        if self.links[client].connected {
            return;
        }
        self.links[client].connected = true;
        self.hub.connect(client);
        let join = self.repos[client].connect();
        self.queue_to_hub(client, join);
    }

    /// Closes a connection: pending frames are lost, both ends persist their sync states.
    pub fn disconnect(&mut self, client: ClientId) {
        let link = &mut self.links[client];
        link.connected = false;
        link.to_hub.clear();
        link.to_client.clear();
        self.hub.disconnect(client);
        self.repos[client].disconnect();
    }

    pub fn reconnect(&mut self, client: ClientId) {
        self.disconnect(client);
        self.connect(client);
    }

    /// Forgets the sync states persisted for `client` on both ends (a fresh install).
    pub fn forget_sync_states(&mut self, client: ClientId) {
        self.repos[client].persisted.clear();
        let peer = self.repos[client].peer_id.clone();
        self.hub.forget_persisted(&peer);
    }

    /// Queues an arbitrary frame from `client` to the hub (for malformed-input tests).
    pub fn inject_to_hub(&mut self, client: ClientId, frame: Vec<u8>) {
        self.queue_to_hub(client, frame);
    }

    /// A new document on `client`, created with its containers, and pushed if connected.
    pub fn create_doc(&mut self, client: ClientId) -> DocumentId {
        let doc = DocumentId::random(&mut self.rng);
        let mut am = Automerge::new().with_actor(self.repos[client].actor.clone());
        commit(
            &mut am,
            &[("created-by", self.repos[client].peer_id.to_string())],
        );
        self.repos[client].docs.insert(doc, am);
        self.push(client, doc);
        doc
    }

    /// Sets root keys of `doc` on `client` in one change, and syncs if connected.
    pub fn edit(&mut self, client: ClientId, doc: DocumentId, entries: &[(&str, String)]) {
        let repo = &mut self.repos[client];
        let am = repo
            .docs
            .get_mut(&doc)
            .unwrap_or_else(|| panic!("client {client} does not hold {doc}"));
        commit(am, entries);
        self.push(client, doc);
    }

    /// Asks the hub for a document `client` does not have.
    pub fn request(&mut self, client: ClientId, doc: DocumentId) {
        self.repos[client].wanted.insert(doc);
        self.push(client, doc);
    }

    fn push(&mut self, client: ClientId, doc: DocumentId) {
        if let Some(frame) = self.repos[client].sync_doc(doc) {
            self.queue_to_hub(client, frame);
        }
    }

    fn queue_to_hub(&mut self, client: ClientId, frame: Vec<u8>) {
        let link = &mut self.links[client];
        if link.connected {
            link.traffic.to_hub += frame.len() as u64;
            link.traffic.frames += 1;
            link.to_hub.push_back(frame);
        }
    }

    fn queue_to_client(&mut self, client: ClientId, frame: Vec<u8>) {
        let link = &mut self.links[client];
        if link.connected {
            link.traffic.to_client += frame.len() as u64;
            link.traffic.frames += 1;
            link.to_client.push_back(frame);
        }
    }

    fn pending(&self) -> usize {
        self.links
            .iter()
            .map(|l| l.to_hub.len() + l.to_client.len())
            .sum()
    }

    /// Delivers frames, one at a time in a seeded random order across connections, until none
    /// are pending. Returns how many deliveries that took.
    pub fn run_until_quiet(&mut self, max_steps: usize) -> Result<usize, NotQuiet> {
        for steps in 0..max_steps {
            // Each non-empty queue (one per direction per connection) is a candidate.
            let candidates: Vec<(ClientId, bool)> = self
                .links
                .iter()
                .enumerate()
                .flat_map(|(i, l)| {
                    let up = (!l.to_hub.is_empty()).then_some((i, true));
                    let down = (!l.to_client.is_empty()).then_some((i, false));
                    up.into_iter().chain(down)
                })
                .collect();
            if candidates.is_empty() {
                return Ok(steps);
            }
            let (client, to_hub) = candidates[self.rng.gen_range(0..candidates.len())];
            let roll = self.rng.gen_range(0..1000);
            let queue = if to_hub {
                &mut self.links[client].to_hub
            } else {
                &mut self.links[client].to_client
            };
            let frame = if roll < self.faults.duplicate_per_mille {
                queue.front().cloned()
            } else {
                queue.pop_front()
            };
            let Some(frame) = frame else { continue };
            if roll >= 1000 - self.faults.drop_per_mille {
                continue;
            }
            self.now_ms += 1;
            self.deliver(client, to_hub, &frame);
        }
        let pending = self.pending();
        if pending == 0 {
            Ok(max_steps)
        } else {
            Err(NotQuiet {
                steps: max_steps,
                pending,
            })
        }
    }

    fn deliver(&mut self, client: ClientId, to_hub: bool, frame: &[u8]) {
        if to_hub {
            let out = self.hub.receive(client, frame, self.now_ms);
            for (target, frame) in out.send {
                self.queue_to_client(target, frame);
            }
            if out.close {
                self.disconnect(client);
            }
        } else {
            let out = self.repos[client].receive(frame, self.now_ms);
            for frame in out {
                self.queue_to_hub(client, frame);
            }
        }
    }
}

/// Commits one change setting root keys, with time 0 so runs are reproducible.
fn commit(am: &mut Automerge, entries: &[(&str, String)]) {
    let result = am.transact_with::<_, _, automerge::AutomergeError, _>(
        |_| CommitOptions::default().with_time(0),
        |tx| {
            for (key, value) in entries {
                tx.put(automerge::ROOT, *key, value.as_str())?;
            }
            Ok(())
        },
    );
    if let Err(failure) = result {
        panic!("testkit commit failed: {}", failure.error);
    }
}

/// The text at a root key, for assertions.
pub fn root_text(am: &Automerge, key: &str) -> Option<String> {
    match am.get(automerge::ROOT, key) {
        Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Sorted heads, for comparing documents across peers.
pub fn sorted_heads(am: &Automerge) -> Vec<automerge::ChangeHash> {
    let mut heads = am.get_heads();
    heads.sort();
    heads
}
