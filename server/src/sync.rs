//! WebSocket sync at `/sync`: authentication before the upgrade, then one [`Conn`] per socket
//! driving a sans-IO `tally_proto::Session`. Every frame is handled on a sync worker thread
//! ([`crate::workers`]: automerge and SQLite work), one at a time per connection, so a connection's frames keep their order and
//! the async runtime stays free for the other sockets.
//!
//! A sync message that carries changes goes through [`Hub::commit`]: validated on a fork, stored,
//! then acknowledged by the sync answer. A refused message gets an `error` frame that says why;
//! the connection stays open for the device's other documents. Documents this device may not
//! read answer `doc-unavailable`, whether they exist or not.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use automerge::sync::SyncDoc;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tally_core::validate::Writer;
use tally_proto::{DocumentId, Event, Limits, PeerId, PeerMetadata, Session};
use tally_store::Device;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, HubError, can_read, now_ms, writer_of};
use crate::workers::Workers;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// What handling an event asks the socket to do.
#[derive(Debug)]
pub enum Out {
    /// Send one binary frame.
    Send(Vec<u8>),
    /// Close the connection, saying why.
    Close(String),
}

/// One authenticated sync connection.
pub struct Conn {
    /// Connection id (for followers).
    pub id: u64,
    device: Device,
    writer: Writer,
    session: Session,
    hub: Arc<Hub>,
    followed: HashSet<DocumentId>,
    notify: mpsc::UnboundedSender<DocumentId>,
    /// Key under which sync states persist: device and storage id, once the peer joined with one.
    peer_key: Option<String>,
}

impl Conn {
    /// A connection for `device`; changed documents it follows arrive on the returned receiver.
    pub fn new(
        hub: Arc<Hub>,
        device: Device,
        max_frame_bytes: usize,
    ) -> (Conn, mpsc::UnboundedReceiver<DocumentId>) {
        let (notify, rx) = mpsc::unbounded_channel();
        let me = PeerId::new(format!("tally-server-{}", rand::random::<u64>()));
        let metadata = PeerMetadata {
            storage_id: None,
            is_ephemeral: false,
        };
        let session = Session::server(me, metadata).with_limits(Limits {
            max_frame_bytes,
            ..Limits::default()
        });
        let writer = writer_of(&device);
        let conn = Conn {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            device,
            writer,
            session,
            hub,
            followed: HashSet::new(),
            notify,
            peer_key: None,
        };
        (conn, rx)
    }

    /// The device this connection is for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Handles one binary frame from the peer.
    pub fn on_frame(&mut self, frame: &[u8]) -> Vec<Out> {
        let mut out = Vec::new();
        let events = match self.session.receive(frame, now_ms().max(0) as u64) {
            Ok(events) => events,
            Err(e) => {
                tracing::info!(device = %self.device.device_id, error = %e, "protocol error");
                out.push(Out::Send(self.session.error_frame(&e.to_string())));
                if e.is_fatal() {
                    out.push(Out::Close(e.to_string()));
                }
                return out;
            }
        };
        for event in events {
            match event {
                Event::Send(bytes) => out.push(Out::Send(bytes)),
                Event::Joined { peer_id, metadata } => {
                    tracing::debug!(device = %self.device.device_id, peer = %peer_id.as_str(), "peer joined");
                    if let Some(m) = metadata
                        && let Some(sid) = m.storage_id
                        && !m.is_ephemeral
                    {
                        self.peer_key = Some(format!("{}/{}", self.device.device_id, sid.0));
                    }
                }
                Event::DocRequested { doc, message } => {
                    self.on_sync(doc, message, true, frame, &mut out)
                }
                Event::SyncReceived { doc, message } => {
                    self.on_sync(doc, message, false, frame, &mut out)
                }
                Event::RemoteError { message } => {
                    tracing::info!(device = %self.device.device_id, %message, "peer reported an error")
                }
                Event::Left => out.push(Out::Close("peer left".into())),
                Event::PeerAccepted { .. }
                | Event::Unavailable { .. }
                | Event::Ephemeral { .. }
                | Event::RemoteHeadsChanged { .. }
                | Event::RemoteSubscriptionChange { .. } => {}
            }
        }
        out
    }

    fn seed_sync_state(&mut self, doc: &DocumentId) {
        if !self.session.sync_state_is_fresh(doc) {
            return;
        }
        let Some(key) = &self.peer_key else { return };
        if let Ok(Some(bytes)) = self.hub.store.load_sync_state(key, &doc.to_string())
            && let Ok(state) = automerge::sync::State::decode(&bytes)
        {
            self.session.load_sync_state(*doc, state);
        }
    }

    fn on_sync(
        &mut self,
        doc: DocumentId,
        message: automerge::sync::Message,
        requested: bool,
        raw: &[u8],
        out: &mut Vec<Out>,
    ) {
        let meta = match self.hub.meta(&doc) {
            Ok(m) => m,
            Err(e) => return self.storage_error(&doc, &e.to_string(), out),
        };
        let readable = meta.as_ref().is_some_and(|m| can_read(&self.device, m));
        if !readable {
            if meta.is_some() && !message.changes.is_empty() {
                // A write to a document this device may not read: refused, kept, and answered
                // exactly like a document that does not exist.
                let _ = self.hub.store.quarantine(
                    &self.device.device_id,
                    &doc.to_string(),
                    "write to a document this device may not read",
                    raw,
                    now_ms(),
                );
                tracing::warn!(device = %self.device.device_id, doc = %doc, "write to an unreadable document refused");
                out.extend(self.session.unavailable_frame(doc).map(Out::Send));
                return;
            }
            if requested || meta.is_some() {
                out.extend(self.session.unavailable_frame(doc).map(Out::Send));
                return;
            }
            if message.changes.is_empty() {
                // The peer offers a document the server does not have yet: answer as an empty
                // document, so that it sends its changes (which then create it, if valid).
                let mut state = self.session.sync_state(&doc).cloned().unwrap_or_default();
                let mut empty = automerge::Automerge::new();
                let _ = empty.receive_sync_message(&mut state, message);
                self.session.set_sync_state(doc, state);
                out.extend(self.session.sync_frame(doc, &empty).map(Out::Send));
                return;
            }
        } else {
            self.seed_sync_state(&doc);
        }
        let mut state = self.session.sync_state(&doc).cloned().unwrap_or_default();
        let result = self
            .hub
            .commit(&doc, &self.writer, Some(self.id), raw, |after| {
                after
                    .receive_sync_message(&mut state, message)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(_) => self.session.set_sync_state(doc, state),
            Err(HubError::Rejected(reason)) => {
                out.push(Out::Send(
                    self.session
                        .error_frame(&format!("document {doc}: {reason}")),
                ));
                if !readable {
                    return;
                }
            }
            Err(e) => return self.storage_error(&doc, &e.to_string(), out),
        }
        if self.hub.meta(&doc).ok().flatten().is_none() {
            // Nothing was stored (e.g. the changes wait for missing dependencies).
            return;
        }
        if self.followed.insert(doc) {
            self.hub.follow(doc, self.id, self.notify.clone());
        }
        self.answer(doc, out);
    }

    fn storage_error(&mut self, doc: &DocumentId, error: &str, out: &mut Vec<Out>) {
        tracing::error!(device = %self.device.device_id, doc = %doc, %error, "sync failed");
        out.push(Out::Send(self.session.error_frame(&format!("document {doc}: the server could not save or load it ({error}); nothing was acknowledged, retry later"))));
    }

    fn answer(&mut self, doc: DocumentId, out: &mut Vec<Out>) {
        match self.hub.slot(&doc) {
            Ok(slot) => {
                let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
                out.extend(self.session.sync_frame(doc, &guard.doc).map(Out::Send));
            }
            Err(e) => self.storage_error(&doc, &e.to_string(), out),
        }
    }

    /// Someone else changed a document this connection follows: send what the peer lacks.
    pub fn on_doc_changed(&mut self, doc: DocumentId) -> Vec<Out> {
        let mut out = Vec::new();
        if self.session.is_established() {
            self.answer(doc, &mut out);
        }
        out
    }

    /// The connection ends: persist sync states and stop following.
    pub fn close(&mut self) {
        self.hub.unfollow(self.followed.drain(), self.id);
        let Some(key) = &self.peer_key else { return };
        let now = now_ms();
        for doc in self.session.documents().copied().collect::<Vec<_>>() {
            if let Some(bytes) = self.session.encoded_sync_state(&doc)
                && let Err(e) = self
                    .hub
                    .store
                    .save_sync_state(key, &doc.to_string(), &bytes, now)
            {
                tracing::debug!(doc = %doc, error = %e, "sync state not saved");
            }
        }
    }
}

/// Runs `f` on one of the sync [`Workers`] (lower priority than the API, a bounded number at
/// once), so the API (totals, authentication) never queues behind a reconnect wave.
async fn blocking<R: Send + 'static>(
    conn: &mut Option<Conn>,
    workers: &Workers,
    f: impl FnOnce(&mut Conn) -> R + Send + 'static,
) -> R {
    let mut c = conn.take().expect("connection present between events");
    let (c, r) = workers
        .run(move || {
            let r = f(&mut c);
            (c, r)
        })
        .await;
    *conn = Some(c);
    r
}

/// Runs one sync connection until the peer leaves, the device is revoked or the server stops.
/// A frame the peer does not take within `send_timeout` closes the connection: a client that
/// never reads stalls only itself, and nothing is buffered for it without bound.
pub async fn run(
    socket: WebSocket,
    conn: Conn,
    mut notify: mpsc::UnboundedReceiver<DocumentId>,
    cancel: CancellationToken,
    send_timeout: std::time::Duration,
    workers: Arc<Workers>,
) {
    let device_id = conn.device().device_id.clone();
    let (mut sink, mut stream) = socket.split();
    let mut conn = Some(conn);
    tracing::info!(device = %device_id, "sync connection opened");
    let reason = loop {
        let outs = tokio::select! {
            _ = cancel.cancelled() => break "closed by the server (shutdown or revoked device)".to_string(),
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Binary(bytes))) => blocking(&mut conn, &workers, move |c| c.on_frame(&bytes)).await,
                Some(Ok(WsMessage::Text(_))) => {
                    let frame = conn.as_ref().map(|c| c.session.error_frame("text frames are not part of the protocol: send CBOR messages as binary frames")).unwrap_or_default();
                    vec![Out::Send(frame)]
                }
                Some(Ok(WsMessage::Close(_))) | None => break "peer closed".to_string(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break format!("socket error: {e}"),
            },
            Some(doc) = notify.recv() => {
                // Every change waiting is handled in one go, each document once: a phone that
                // is slow to read does not make the server generate the same answer many times.
                let mut docs = vec![doc];
                while let Ok(d) = notify.try_recv() {
                    if !docs.contains(&d) {
                        docs.push(d);
                    }
                }
                blocking(&mut conn, &workers, move |c| {
                    docs.into_iter().flat_map(|d| c.on_doc_changed(d)).collect()
                })
                .await
            }
        };
        let mut close = None;
        for out in outs {
            match out {
                Out::Send(bytes) => {
                    match tokio::time::timeout(
                        send_timeout,
                        sink.send(WsMessage::Binary(bytes.into())),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            close = Some(format!("send failed: {e}"));
                            break;
                        }
                        Err(_) => {
                            close = Some(format!(
                                "the peer is not reading: a frame waited {} s to be sent",
                                send_timeout.as_secs()
                            ));
                            break;
                        }
                    }
                }
                Out::Close(why) => close = Some(why),
            }
        }
        if let Some(why) = close {
            break why;
        }
    };
    let _ = tokio::time::timeout(send_timeout, sink.send(WsMessage::Close(None))).await;
    blocking(&mut conn, &workers, |c| c.close()).await;
    tracing::info!(device = %device_id, %reason, "sync connection closed");
}
