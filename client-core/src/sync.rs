//! The phone's side of one sync connection, sans-IO: [`SyncEngine`] takes the frames the server
//! sent and returns the frames to send back, applying the server's changes to the phone's
//! documents and committing them (with the server's heads, the sync state and the receipts
//! they acknowledge) through [`Device`]. No sockets and no clock here: [`crate::net`] drives it
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
    /// `error` messages from the server (e.g. a refused change: nothing of it was merged).
    pub server_errors: Vec<String>,
    /// Frames from the server this phone could not use (ignored), and other oddities.
    pub warnings: Vec<String>,
    /// Why the sync stopped before settling (a timeout, a dropped connection), if it did.
    pub problem: Option<String>,
    /// Pending and acknowledged counts at the end.
    pub counts: Counts,
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
        if let Some(p) = &self.problem {
            parts.push(p.clone());
        }
        parts.push(self.counts.summary());
        parts.join("; ")
    }
}

/// One connection's sync, sans-IO. See the module docs.
pub struct SyncEngine {
    device: Device,
    session: Session,
    /// The phone's documents on this connection.
    docs: Vec<(DocumentId, DocRole)>,
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
        st.ensure_all()?;
        // Acknowledgements the stored heads already cover (e.g. changes another process made).
        st.recheck_acks()?;
        let suffix: [u8; 4] = rand::random();
        let peer = PeerId::new(format!("{}-{}", enrollment.device_id, hex::encode(suffix)));
        let metadata = PeerMetadata {
            storage_id: Some(StorageId(enrollment.storage_id.clone())),
            is_ephemeral: false,
        };
        let (mut session, join) = Session::client(peer, metadata);
        let mut docs = Vec::new();
        for local in &st.docs {
            if let Some(bytes) = &local.sync_state
                && let Ok(state) = SyncState::decode(bytes)
            {
                session.load_sync_state(local.id, state);
            }
            docs.push((local.id, local.role));
        }
        drop(st);
        let engine = SyncEngine {
            device: device.clone(),
            session,
            docs,
            heard: BTreeSet::new(),
            unavailable: BTreeSet::new(),
            report: SyncReport {
                started_at: now_ms(),
                ..SyncReport::default()
            },
        };
        Ok((engine, join))
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
                Event::RemoteError { message } => self.report.server_errors.push(message),
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
        let st = self.device.lock()?;
        let Some(local) = st.docs.iter().find(|d| d.id == doc) else {
            return Ok(None);
        };
        Ok(self.session.sync_frame(doc, local.doc()?))
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
            if !same_heads(local.doc()?, &local.server_heads) {
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
            server_errors: report.server_errors.clone(),
            problem: report.problem.clone(),
        })?;
        self.report = SyncReport {
            started_at: now_ms(),
            ..SyncReport::default()
        };
        Ok(report)
    }
}

fn same_heads(doc: &Automerge, server_heads: &[automerge::ChangeHash]) -> bool {
    let mut ours = doc.get_heads();
    let mut theirs = server_heads.to_vec();
    ours.sort();
    theirs.sort();
    theirs.dedup();
    ours == theirs
}
