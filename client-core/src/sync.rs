//! The phone's side of one sync connection, sans-IO: [`SyncEngine`] takes the frames the server
//! sent and returns the frames to send back, applying the server's changes to the phone's
//! documents and committing them (with the server's heads, the sync state and the receipts
//! they acknowledge) through [`Device`]. No sockets here, and the protocol's time comes in with each
//! frame (the clock is read only to stamp reports and commits): [`crate::net`] drives it
//! over a WebSocket, tests drive it against an in-process server, and an app may drive it over
//! its platform's own WebSocket.
//!
//! On a connection the phone pushes its collection document (`sync`) and asks for the campaign
//! and totals documents (`request` until it has them, then `sync`). It is *settled* when the
//! server has answered for every document on this connection and the server's heads equal the
//! phone's for each (so every local change is acknowledged and nothing newer is on the server),
//! or the server said `doc-unavailable` for it.

use std::collections::BTreeSet;

use automerge::Automerge;
use automerge::sync::State as SyncState;
use serde::{Deserialize, Serialize};
use tally_proto::{DocumentId, Event, PeerId, PeerMetadata, Session, StorageId};

use crate::device::{Device, now_ms};
use crate::error::{ClientError, Result};
use crate::receipts::{AckCounts, Counts};
use crate::store::DocRole;

/// What one sync did. Returned by [`Device::sync_once`] and emitted by the watch loop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The sync settled: the server acknowledged every local change, sent what it had, and
    /// refused nothing.
    pub complete: bool,
    /// When it started and ended, ms since the epoch.
    pub started_at: i64,
    pub finished_at: i64,
    /// Records the server acknowledged during this sync.
    pub acknowledged: AckCounts,
    /// The campaign document changed (new events, new recipients, ...).
    pub campaign_updated: bool,
    /// New team totals arrived.
    pub totals_updated: bool,
    /// Documents the server would not send this phone (`doc-unavailable`).
    pub unavailable: Vec<DocRole>,
    /// `error` messages from the server the phone could not act on (nothing of the refused
    /// changes was merged).
    pub server_errors: Vec<String>,
    /// Refusals of a change in one of the phone's collections, each followed by a move along
    /// the chain ([`crate::chain`]): the record the server named set aside, the others written
    /// again into the current collection, with the same ids, and synced on.
    #[serde(default)]
    pub refusals: Vec<String>,
    /// Records (receipts) set aside during this sync because the server refused them.
    #[serde(default)]
    pub set_aside: u64,
    /// Records (receipts) moved to the current collection during this sync.
    #[serde(default)]
    pub moved: u64,
    /// Frames from the server this phone could not use (ignored), and other oddities.
    pub warnings: Vec<String>,
    /// Why the sync stopped before settling (a timeout, a dropped connection), if it did.
    pub problem: Option<String>,
    /// Pending and acknowledged counts at the end.
    pub counts: Counts,
    /// The record keys uploaded after the sync ([`Device::upload_keys`], docs/clients.md 5a).
    #[serde(default)]
    pub keys: crate::keys::KeyUploadReport,
}

impl SyncReport {
    /// A short line for people, e.g. "synced: 3 signatures acknowledged; all safe ...".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        parts.push(if self.complete {
            "synced".to_string()
        } else {
            "sync incomplete".to_string()
        });
        if self.acknowledged.total() > 0 {
            parts.push(format!("{} newly safe", self.acknowledged.summary()));
        }
        if self.campaign_updated {
            parts.push("campaign updated".into());
        }
        if self.totals_updated {
            parts.push("team totals updated".into());
        }
        for role in &self.unavailable {
            parts.push(format!(
                "the server does not share the {role} document with this phone"
            ));
        }
        for e in &self.server_errors {
            parts.push(format!("server refused: {e}"));
        }
        for e in &self.refusals {
            parts.push(format!("server refused: {e}"));
        }
        if self.set_aside > 0 || self.moved > 0 {
            parts.push(format!(
                "{} set aside (tally-device status shows why), {} moved to a new collection and sent again",
                self.set_aside, self.moved
            ));
        }
        if self.keys.erased > 0 {
            parts.push(format!(
                "{} erased by an organizer (their keys dropped)",
                self.keys.erased
            ));
        }
        if self.keys.refused > 0 {
            parts.push(format!(
                "{} record keys refused by the server (tally-device status shows why)",
                self.keys.refused
            ));
        }
        if let Some(p) = &self.problem {
            parts.push(p.clone());
        }
        parts.push(self.counts.summary());
        parts.join("; ")
    }
}

/// Refusals one connection recovers from at most; later ones end the sync as errors.
pub const MAX_RECOVERIES_PER_CONNECTION: usize = 16;

/// One connection's sync, sans-IO. See the module docs.
pub struct SyncEngine {
    device: Device,
    session: Session,
    /// The phone's documents on this connection: the campaign, the totals, and the collections
    /// to push ([`crate::chain`]); it changes when the chain does.
    docs: Vec<(DocumentId, DocRole)>,
    /// Collections of this phone that left the chain's live part during this connection (the
    /// server refused them): what the server still says of them is ignored.
    dead: BTreeSet<DocumentId>,
    /// Refusals this connection recovered from.
    recoveries: usize,
    /// Documents the server sent a sync message for on this connection.
    heard: BTreeSet<DocumentId>,
    /// Documents the server said it will not send.
    unavailable: BTreeSet<DocumentId>,
    report: SyncReport,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("established", &self.session.is_established())
            .field("heard", &self.heard)
            .finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// Starts a connection for `device`: returns the engine and the `join` frame to send first.
    /// Loads the persisted sync states, so the server does not summarise whole histories again.
    pub fn start(device: &Device) -> Result<(SyncEngine, Vec<u8>)> {
        let mut st = device.lock()?;
        st.refresh()?;
        let enrollment = st.enrollment()?.clone();
        let docs = docs_to_sync(&st)?;
        for (id, _) in &docs {
            if let Some(idx) = st.index_of(id) {
                st.ensure(idx)?;
            }
        }
        // Acknowledgements the stored heads already cover (e.g. changes another process made).
        st.recheck_acks()?;
        let suffix: [u8; 4] = rand::random();
        let peer = PeerId::new(format!("{}-{}", enrollment.device_id, hex::encode(suffix)));
        let metadata = PeerMetadata {
            storage_id: Some(StorageId(enrollment.storage_id.clone())),
            is_ephemeral: false,
        };
        let (mut session, join) = Session::client(peer, metadata);
        for local in &st.docs {
            if let Some(bytes) = &local.sync_state
                && docs.iter().any(|(id, _)| *id == local.id)
                && let Ok(state) = SyncState::decode(bytes)
            {
                session.load_sync_state(local.id, state);
            }
        }
        drop(st);
        let engine = SyncEngine {
            device: device.clone(),
            session,
            docs,
            dead: BTreeSet::new(),
            recoveries: 0,
            heard: BTreeSet::new(),
            unavailable: BTreeSet::new(),
            report: SyncReport {
                started_at: now_ms(),
                ..SyncReport::default()
            },
        };
        Ok((engine, join))
    }

    /// Reads the documents to sync again after the chain changed; returns the new ones.
    fn refresh_docs(&mut self) -> Result<Vec<DocumentId>> {
        let st = self.device.lock()?;
        let docs = docs_to_sync(&st)?;
        drop(st);
        for (id, _) in &self.docs {
            if !docs.iter().any(|(d, _)| d == id) {
                self.dead.insert(*id);
            }
        }
        let new = docs
            .iter()
            .filter(|(id, _)| !self.docs.iter().any(|(d, _)| d == id))
            .map(|(id, _)| *id)
            .collect();
        self.docs = docs;
        Ok(new)
    }

    /// The server refused a change in `doc`: move along the chain ([`crate::chain`]) and push
    /// the collection that took the moved records. `false` when the refusal is not one the
    /// phone can act on (not a live collection of this phone, or past
    /// [`MAX_RECOVERIES_PER_CONNECTION`]: a server refusing everything ends the sync instead of
    /// growing the chain).
    fn recover(
        &mut self,
        doc: DocumentId,
        record: Option<&str>,
        message: &str,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<bool> {
        if self.recoveries >= MAX_RECOVERIES_PER_CONNECTION {
            return Ok(false);
        }
        self.recoveries += 1;
        let done = self.device.lock()?.recover_refusal(&doc, record, message)?;
        let Some(done) = done else {
            return Ok(false);
        };
        self.report.refusals.push(message.to_string());
        self.report.set_aside += done.set_aside as u64;
        self.report.moved += done.moved as u64;
        self.dead.insert(doc);
        self.refresh_docs()?;
        self.device.wrote();
        out.extend(self.frames_for_all()?);
        Ok(true)
    }

    fn role_of(&self, doc: &DocumentId) -> Option<DocRole> {
        self.docs.iter().find(|(id, _)| id == doc).map(|(_, r)| *r)
    }

    /// Handles one frame from the server; returns the frames to send, in order. An `Err` means
    /// the connection cannot go on (close it; everything applied so far is committed).
    pub fn receive(&mut self, frame: &[u8], now_ms: u64) -> Result<Vec<Vec<u8>>> {
        let events = match self.session.receive(frame, now_ms) {
            Ok(events) => events,
            Err(e) if e.is_fatal() => return Err(ClientError::Protocol(e.to_string())),
            Err(e) => {
                self.report
                    .warnings
                    .push(format!("ignored a frame from the server: {e}"));
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for event in events {
            match event {
                Event::Send(frame) => out.push(frame),
                Event::PeerAccepted { .. } => out.extend(self.frames_for_all()?),
                Event::SyncReceived { doc, message } | Event::DocRequested { doc, message } => {
                    if self.dead.contains(&doc) {
                        continue;
                    }
                    let Some(role) = self.role_of(&doc) else {
                        // Not one of ours: say so rather than keep it.
                        out.extend(self.session.unavailable_frame(doc));
                        continue;
                    };
                    let applied = {
                        let mut st = self.device.lock()?;
                        st.apply_server_message(&mut self.session, doc, message, crate::device::now_ms())?
                    };
                    self.heard.insert(doc);
                    self.unavailable.remove(&doc);
                    self.report.acknowledged.add(applied.acked);
                    if applied.changed {
                        match role {
                            DocRole::Campaign => self.report.campaign_updated = true,
                            DocRole::Totals => self.report.totals_updated = true,
                            DocRole::Collection => {}
                        }
                    }
                    out.extend(self.frame_for(doc)?);
                }
                Event::Unavailable { doc } => match self.role_of(&doc) {
                    Some(DocRole::Collection) => self.report.server_errors.push(
                        "the server will not take this phone's collection (doc-unavailable): ask an organizer to check this phone's enrollment"
                            .into(),
                    ),
                    Some(role) => {
                        self.unavailable.insert(doc);
                        if !self.report.unavailable.contains(&role) {
                            self.report.unavailable.push(role);
                        }
                    }
                    None => {}
                },
                Event::RemoteError {
                    message,
                    document_id: Some(doc),
                    record,
                } if self.dead.contains(&doc)
                    || self.role_of(&doc) == Some(DocRole::Collection) =>
                {
                    if self.dead.contains(&doc) {
                        // A later answer about a collection already left behind.
                        continue;
                    }
                    if !self.recover(doc, record.as_deref(), &message, &mut out)? {
                        self.report.server_errors.push(message);
                    }
                }
                Event::RemoteError { message, .. } => self.report.server_errors.push(message),
                Event::Left => {}
                Event::Joined { .. }
                | Event::Ephemeral { .. }
                | Event::RemoteHeadsChanged { .. }
                | Event::RemoteSubscriptionChange { .. } => {}
            }
        }
        Ok(out)
    }

    fn frame_for(&mut self, doc: DocumentId) -> Result<Option<Vec<u8>>> {
        let mut st = self.device.lock()?;
        let Some(idx) = st.index_of(&doc) else {
            return Ok(None);
        };
        // An older collection is loaded only while it is synced.
        st.ensure(idx)?;
        Ok(self.session.sync_frame(doc, st.docs[idx].doc()?))
    }

    fn frames_for_all(&mut self) -> Result<Vec<Vec<u8>>> {
        let ids: Vec<DocumentId> = self.docs.iter().map(|(id, _)| *id).collect();
        let mut out = Vec::new();
        for id in ids {
            if self.unavailable.contains(&id) {
                continue;
            }
            out.extend(self.frame_for(id)?);
        }
        Ok(out)
    }

    /// Frames carrying local changes made since the last frames (call after a local write, or
    /// now and then). Empty before the handshake or when nothing is new.
    pub fn poll_local(&mut self) -> Result<Vec<Vec<u8>>> {
        if !self.session.is_established() {
            return Ok(Vec::new());
        }
        {
            let mut st = self.device.lock()?;
            st.refresh()?;
        }
        // A write may have started the next collection of the chain (here, or in another
        // process on the same phone).
        self.refresh_docs()?;
        self.frames_for_all()
    }

    /// True once the handshake is done.
    pub fn is_established(&self) -> bool {
        self.session.is_established()
    }

    /// True when the session is over (the server left or refused the handshake).
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// True when the server has answered for every document and its heads equal the phone's
    /// (or it said the document is unavailable). See the module docs.
    pub fn is_settled(&self) -> Result<bool> {
        if !self.session.is_established() {
            return Ok(false);
        }
        let st = self.device.lock()?;
        for (id, _) in &self.docs {
            if self.unavailable.contains(id) {
                continue;
            }
            if !self.heard.contains(id) {
                return Ok(false);
            }
            let Some(local) = st.docs.iter().find(|d| d.id == *id) else {
                continue;
            };
            let Some(doc) = &local.doc else {
                // Not loaded: nothing was written to it since it was last pushed and
                // everything in it acknowledged.
                continue;
            };
            if !same_heads(doc, &local.server_heads) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// True when the server sent an `error` (a refused change never settles).
    pub fn has_server_errors(&self) -> bool {
        !self.report.server_errors.is_empty()
    }

    /// The report so far (counts as of now).
    pub fn report(&self) -> Result<SyncReport> {
        let mut report = self.report.clone();
        report.complete = self.is_settled()? && report.server_errors.is_empty();
        report.finished_at = now_ms();
        report.counts = self.device.counts()?;
        Ok(report)
    }

    /// Ends this round: records its outcome in the store and returns the report. `problem`
    /// says why it stopped early, if it did. The engine can go on (the watch loop reports a
    /// round each time it settles); the collected acknowledgements and errors start afresh.
    pub fn finish_round(&mut self, problem: Option<String>) -> Result<SyncReport> {
        let mut report = self.report()?;
        report.problem = problem;
        if report.problem.is_some() {
            report.complete = false;
        }
        self.device.record_sync(&crate::device::LastSync {
            at: report.finished_at,
            complete: report.complete,
            server_errors: report
                .server_errors
                .iter()
                .chain(&report.refusals)
                .cloned()
                .collect(),
            problem: report.problem.clone(),
        })?;
        // Collections rolled over from and now all acknowledged leave the connection, and
        // memory.
        if report.problem.is_none() {
            self.refresh_docs()?;
            let keep: Vec<DocumentId> = self.docs.iter().map(|(id, _)| *id).collect();
            self.device.lock()?.unload_old_collections(&keep);
        }
        self.report = SyncReport {
            started_at: now_ms(),
            ..SyncReport::default()
        };
        Ok(report)
    }
}

/// The documents a connection syncs: the campaign, the totals, and the collections to push.
fn docs_to_sync(st: &crate::mirror::State) -> Result<Vec<(DocumentId, DocRole)>> {
    let mut docs = Vec::new();
    for role in [DocRole::Campaign, DocRole::Totals] {
        docs.push((st.docs[st.index(role)?].id, role));
    }
    for id in st.collections_to_sync()? {
        docs.push((id, DocRole::Collection));
    }
    Ok(docs)
}

fn same_heads(doc: &Automerge, server_heads: &[automerge::ChangeHash]) -> bool {
    let mut ours = doc.get_heads();
    let mut theirs = server_heads.to_vec();
    ours.sort();
    theirs.sort();
    theirs.dedup();
    ours == theirs
}
