//! WebSocket sync at `/sync`: authentication before the upgrade, then one [`Conn`] per socket
//! driving a sans-IO `tally_proto::Session`. Every frame is handled on a sync worker thread
//! ([`crate::workers`]: automerge and SQLite work), one at a time per connection, so a connection's frames keep their order and
//! the async runtime stays free for the other sockets.
//!
//! A sync message that carries changes goes through [`Hub::commit`]: validated on a fork, stored,
//! then acknowledged by the sync answer. A refused message gets an `error` frame that says why,
//! names the document (`documentId`) and, when one record is at fault, that record
//! (`tallyRecord`), so that a phone sets it aside and carries on (docs/protocol.md,
//! "Refusals"); the connection stays open for the device's other documents. Documents this device may not
//! read answer `doc-unavailable`, whether they exist or not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use automerge::sync::SyncDoc;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tally_core::validate::Writer;
use tally_proto::host::{self, Access, Admission};
use tally_proto::{DocumentId, Event, Limits, PeerId, PeerMetadata, Session};
use tally_store::Device;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, HubError, Refusal, now_ms, writer_of};
use crate::metrics::Direction;
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
    /// Per document, changes of this peer that wait for dependencies not yet received (never
    /// kept in the shared document): offered again with the peer's next message, reserved in
    /// the hub's per-document and per-device bounds, dropped when the connection closes.
    pending: HashMap<DocumentId, Pending>,
}

/// Changes waiting for their dependencies.
#[derive(Default)]
struct Pending {
    chunks: Vec<Vec<u8>>,
    bytes: usize,
    ops: u64,
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
        let limits = hub.sync_limits();
        let session = Session::server(me, metadata).with_limits(Limits {
            max_frame_bytes,
            sync: limits.bounds.clone(),
            frames_per_second: limits.frames_per_second,
            frame_burst: limits.frame_burst,
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
            pending: HashMap::new(),
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
                Event::RemoteError { message, .. } => {
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
        if let Ok(Some(bytes)) = self.hub.load_sync_state(key, doc)
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
        let access = match &meta {
            None => Access::Missing,
            Some(m)
                if self
                    .writer
                    .may_read(&m.kind, &m.campaign, m.owner.as_deref()) =>
            {
                Access::Readable
            }
            Some(_) => Access::Hidden,
        };
        let readable = access == Access::Readable;
        match host::admit(access, requested, !message.changes.is_empty()) {
            Admission::Apply => {
                if readable {
                    self.seed_sync_state(&doc);
                }
            }
            Admission::Unavailable { refuse } => {
                if refuse {
                    // A write to a document this device may not read: refused, kept, and
                    // answered exactly like a document that does not exist.
                    let refusal =
                        Refusal::server("write to a document this device may not read", false);
                    let _ = self.hub.refuse(
                        &self.device.device_id,
                        &doc.to_string(),
                        &refusal,
                        raw,
                        &[],
                    );
                    tracing::warn!(device = %self.device.device_id, doc = %doc, "write to an unreadable document refused");
                }
                out.extend(self.session.unavailable_frame(doc).map(Out::Send));
                return;
            }
            Admission::OfferEmpty => {
                // The peer offers a document the server does not have yet: answer as an empty
                // document, so that it sends its changes (which then create it, if valid).
                let mut state = self.session.sync_state(&doc).cloned().unwrap_or_default();
                let mut empty = automerge::Automerge::new();
                let _ = empty.receive_sync_message(&mut state, message);
                self.session.set_sync_state(doc, state);
                out.extend(self.session.sync_frame(doc, &empty).map(Out::Send));
                return;
            }
        }
        // What the message's chunks would cost, read from their headers before any is loaded.
        let limits = self.hub.sync_limits();
        let pending_ops = self.pending.get(&doc).map_or(0, |p| p.ops);
        let summary = tally_proto::bounds::inspect_changes(message.changes.iter(), &limits.bounds)
            .and_then(|s| {
                if s.ops.saturating_add(pending_ops) > limits.bounds.max_ops {
                    Err(format!(
                        "the changes claim {} operations with the {pending_ops} already waiting for their dependencies, more than the {} one sync message may carry; the waiting ones were dropped: sync again on a new connection",
                        s.ops, limits.bounds.max_ops
                    ))
                } else {
                    Ok(s)
                }
            });
        let summary = match summary {
            Ok(s) => s,
            Err(reason) => {
                self.drop_pending(&doc);
                // Bytes that do not even parse are kept like those automerge cannot apply
                // (small ones, for the app's developers); bytes over the bounds are not.
                let unparsable = reason.starts_with("the changes could not be applied");
                let refusal = Refusal::server(reason, unparsable);
                if let Err(e) =
                    self.hub
                        .refuse(&self.device.device_id, &doc.to_string(), &refusal, raw, &[])
                {
                    return self.storage_error(&doc, &e.to_string(), out);
                }
                out.push(Out::Send(self.refusal_frame(doc, &refusal)));
                if readable {
                    self.answer(doc, out);
                }
                return;
            }
        };
        let change_hashes: Vec<String> = summary
            .change_hashes
            .iter()
            .map(|h| h.to_string())
            .collect();
        let incoming: Vec<Vec<u8>> = message.changes.iter().map(<[u8]>::to_vec).collect();
        let waiting_before: Vec<u8> = self
            .pending
            .get(&doc)
            .map(|p| p.chunks.concat())
            .unwrap_or_default();
        let mut state = self.session.sync_state(&doc).cloned().unwrap_or_default();
        let arrived = std::time::Instant::now();
        let result = self.hub.commit_sync(
            &doc,
            &self.writer,
            Some(self.id),
            raw,
            &change_hashes,
            |after| {
                if !waiting_before.is_empty() {
                    // Offered again: they apply (and are judged) with this message if their
                    // dependencies are here now.
                    let _ = after.load_incremental(&waiting_before);
                }
                after
                    .receive_sync_message(&mut state, message)
                    .map_err(|e| e.to_string())
            },
        );
        let accepted = matches!(&result, Ok(c) if !c.waiting && c.accepted.header.is_some());
        match result {
            Ok(committed) => {
                self.session.set_sync_state(doc, state);
                if committed.waiting {
                    if let Err(why) = self.keep_pending(doc, incoming, summary.ops) {
                        let refusal = Refusal::server(
                            format!(
                                "{why}; they were dropped and nothing of them was stored: sync again on a new connection, sending the changes they depend on first"
                            ),
                            false,
                        );
                        let _ = self.hub.refuse(
                            &self.device.device_id,
                            &doc.to_string(),
                            &refusal,
                            raw,
                            &change_hashes,
                        );
                        out.push(Out::Send(self.refusal_frame(doc, &refusal)));
                    }
                } else {
                    self.drop_pending(&doc);
                }
            }
            Err(HubError::Rejected(refusal)) => {
                self.drop_pending(&doc);
                out.push(Out::Send(self.session.refusal_frame(
                    doc,
                    &format!("document {doc}: {}", refusal.reason),
                    refusal.record.as_deref(),
                )));
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
        if accepted {
            self.hub.metrics().accepted(arrived.elapsed());
        }
    }

    /// Keeps `chunks` (whose changes wait for dependencies) for `doc`, within the hub's
    /// per-document and per-device bounds; over them, drops everything waiting for `doc`.
    fn keep_pending(
        &mut self,
        doc: DocumentId,
        chunks: Vec<Vec<u8>>,
        ops: u64,
    ) -> Result<(), String> {
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        if let Err(why) = self
            .hub
            .reserve_pending(&doc, &self.device.device_id, bytes)
        {
            self.drop_pending(&doc);
            return Err(why);
        }
        let p = self.pending.entry(doc).or_default();
        p.chunks.extend(chunks);
        p.bytes += bytes;
        p.ops = p.ops.saturating_add(ops);
        Ok(())
    }

    /// Forgets the changes waiting for `doc` on this connection.
    fn drop_pending(&mut self, doc: &DocumentId) {
        if let Some(p) = self.pending.remove(doc) {
            self.hub
                .release_pending(doc, &self.device.device_id, p.bytes);
        }
    }

    /// The `error` frame of a refusal by the connection itself (the message's cost, changes
    /// waiting too long): names the document, and the record if one is at fault.
    fn refusal_frame(&self, doc: DocumentId, refusal: &Refusal) -> Vec<u8> {
        self.session.refusal_frame(
            doc,
            &format!("document {doc}: change refused: {}", refusal.reason),
            refusal.record.as_deref(),
        )
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
        for doc in self.pending.keys().copied().collect::<Vec<_>>() {
            self.drop_pending(&doc);
        }
        let Some(key) = &self.peer_key else { return };
        let now = now_ms();
        for doc in self.session.documents().copied().collect::<Vec<_>>() {
            if let Some(bytes) = self.session.encoded_sync_state(&doc)
                && let Err(e) = self.hub.save_sync_state(key, &doc, &bytes, now)
            {
                tracing::debug!(doc = %doc, error = %e, "sync state not saved");
            }
        }
    }
}

/// Runs `f` on one of the sync [`Workers`] (lower priority than the API, a bounded number at
/// once), so the API (totals, authentication) never queues behind a reconnect wave.
async fn on_sync_workers<R: Send + 'static>(
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

/// How a sync connection's socket is run (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// A frame the peer does not take within this long closes the connection.
    pub send_timeout: Duration,
    /// Between the pings the server sends (`None`: no pings).
    pub ping_interval: Option<Duration>,
    /// A peer from which nothing arrived for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// The largest message the peer may send.
    pub max_frame_bytes: usize,
}

impl RunOptions {
    /// The options set in `config`.
    pub fn from_config(config: &crate::config::Config) -> RunOptions {
        let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
        RunOptions {
            send_timeout: Duration::from_secs(config.send_timeout_secs),
            ping_interval: secs(config.ping_interval_secs),
            idle_timeout: secs(config.idle_timeout_secs),
            max_frame_bytes: config.max_frame_bytes,
        }
    }
}

/// What ends a connection from the server's side.
pub struct Stops {
    /// Shutdown or a revoked device.
    pub cancel: CancellationToken,
    /// A newer connection of the same device took this one's place.
    pub replaced: CancellationToken,
    /// The device's cap, for the reason given.
    pub per_device: usize,
}

/// The limit given to tungstenite for a `max_frame_bytes` limit: a quarter more (at least
/// 64 KiB), so that messages a little over the limit arrive whole and are refused by [`run`]
/// with their exact size. Larger ones fail inside tungstenite as soon as their header or their
/// fragments say so, and are answered the same way.
pub fn transport_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_add((max_frame_bytes / 4).max(64 * 1024))
}

/// WebSocket close codes the server sends.
mod close_code {
    /// The server is shutting down, or the device was revoked.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol's rules (a fatal protocol error, silence, replaced).
    pub const POLICY: u16 = 1008;
    /// A message over `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
}

/// A close frame's reason is at most 123 bytes: cut at a character boundary.
fn close_frame(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

fn too_big(size: usize, max: usize) -> String {
    format!("frame of {size} bytes exceeds max_frame_bytes = {max}; split it, or ask the operator")
}

/// The close code and reason for a socket error: a message over the limit is 1009 with its
/// size, anything else ends the connection without a code (the socket is gone).
fn socket_error(e: axum::Error, max: usize) -> (Option<u16>, String) {
    let inner = e.into_inner();
    if let Some(tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
        size,
        ..
    })) = inner.downcast_ref::<tungstenite::Error>()
    {
        return (Some(close_code::TOO_BIG), too_big(*size, max));
    }
    (None, format!("socket error: {inner}"))
}

/// Runs one sync connection until the peer leaves, the device is revoked, a newer connection
/// of the device replaces it or the server stops. A frame the peer does not take within
/// `send_timeout` closes the connection: a client that never reads stalls only itself, and
/// nothing is buffered for it without bound. The server pings every `ping_interval`; a peer
/// from which nothing (a frame, a pong) arrived for `idle_timeout` is closed, so a peer that
/// went silent (a phone gone out of range, a socket held open on purpose) does not hold its
/// connection forever. A message over `max_frame_bytes` closes with 1009 and the sizes.
pub async fn run(
    socket: WebSocket,
    conn: Conn,
    mut notify: mpsc::UnboundedReceiver<DocumentId>,
    stops: Stops,
    opts: RunOptions,
    workers: Arc<Workers>,
) {
    let device_id = conn.device().device_id.clone();
    let metrics = conn.hub.metrics().clone();
    let _open = metrics.connection();
    let (mut sink, mut stream) = socket.split();
    let mut conn = Some(conn);
    let send_timeout = opts.send_timeout;
    let mut ping = opts.ping_interval.map(|every| {
        let mut t = tokio::time::interval_at(Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut heard = Instant::now();
    // The peer closed or its socket failed: nothing more to read before letting go.
    let mut peer_gone = false;
    tracing::info!(device = %device_id, "sync connection opened");
    let (code, reason) = loop {
        let silent_at = opts.idle_timeout.map(|d| heard + d);
        let outs = tokio::select! {
            _ = stops.cancel.cancelled() => break (Some(close_code::GOING_AWAY), "closed by the server (shutdown or revoked device)".to_string()),
            _ = stops.replaced.cancelled() => break (Some(close_code::POLICY), format!(
                "replaced by a newer connection of this device (at most {} at once)",
                stops.per_device
            )),
            _ = async { tokio::time::sleep_until(silent_at.expect("guarded")).await }, if silent_at.is_some() => {
                break (Some(close_code::POLICY), format!(
                    "silent for {} s (no frame, no pong); reconnect",
                    opts.idle_timeout.unwrap_or_default().as_secs()
                ));
            }
            _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                vec![Step::Ping]
            }
            msg = stream.next() => {
                if matches!(msg, Some(Ok(_))) {
                    heard = Instant::now();
                }
                match msg {
                    Some(Ok(WsMessage::Binary(bytes))) if bytes.len() > opts.max_frame_bytes => {
                        break (Some(close_code::TOO_BIG), too_big(bytes.len(), opts.max_frame_bytes));
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        metrics.frame(Direction::In);
                        let outs = on_sync_workers(&mut conn, &workers, move |c| c.on_frame(&bytes)).await;
                        // The time the server took (a commit waiting on the database) is not
                        // the peer's silence: nothing is read from it meanwhile.
                        heard = Instant::now();
                        outs.into_iter().map(Step::from).collect()
                    }
                    Some(Ok(WsMessage::Text(_))) => {
                        let frame = conn.as_ref().map(|c| c.session.error_frame("text frames are not part of the protocol: send CBOR messages as binary frames")).unwrap_or_default();
                        vec![Step::Frame(frame)]
                    }
                    Some(Ok(WsMessage::Close(_))) | None => {
                        peer_gone = true;
                        break (None, "peer closed".to_string());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        peer_gone = true;
                        break socket_error(e, opts.max_frame_bytes);
                    }
                }
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
                let working = Instant::now();
                let outs = on_sync_workers(&mut conn, &workers, move |c| {
                    docs.into_iter().flat_map(|d| c.on_doc_changed(d)).collect::<Vec<_>>()
                })
                .await;
                // Nothing is read from the peer while the server works: that time is not its
                // silence either.
                heard += working.elapsed();
                outs.into_iter().map(Step::from).collect()
            }
        };
        let mut close = None;
        for out in outs {
            let msg = match out {
                Step::Frame(bytes) => {
                    metrics.frame(Direction::Out);
                    WsMessage::Binary(bytes.into())
                }
                Step::Ping => WsMessage::Ping(Default::default()),
                Step::Close(why) => {
                    close = Some((Some(close_code::POLICY), why));
                    continue;
                }
            };
            match tokio::time::timeout(send_timeout, sink.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    close = Some((None, format!("send failed: {e}")));
                    break;
                }
                Err(_) => {
                    close = Some((
                        None,
                        format!(
                            "the peer is not reading: a frame waited {} s to be sent",
                            send_timeout.as_secs()
                        ),
                    ));
                    break;
                }
            }
        }
        if let Some(c) = close {
            break c;
        }
    };
    let farewell = match code {
        Some(code) => close_frame(code, &reason),
        None => WsMessage::Close(None),
    };
    let _ = tokio::time::timeout(send_timeout, sink.send(farewell)).await;
    on_sync_workers(&mut conn, &workers, |c| c.close()).await;
    tracing::info!(device = %device_id, %reason, "sync connection closed");
    if !peer_gone {
        // Read (and drop) what the peer still sends until it answers the close, for a short
        // while: a socket let go with unread bytes in it is reset by the kernel, and a reset can
        // destroy the error frame and the close on their way, so the peer (a phone flooding
        // past its budget, one refused mid-stream) would never hear why.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// How long a connection the server closes waits for the peer's answering close before letting
/// go of the socket (see the end of [`run`]).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What `run` does next with the socket.
enum Step {
    /// Send a binary frame.
    Frame(Vec<u8>),
    /// Send a ping.
    Ping,
    /// Close, saying why.
    Close(String),
}

impl From<Out> for Step {
    fn from(o: Out) -> Self {
        match o {
            Out::Send(b) => Step::Frame(b),
            Out::Close(why) => Step::Close(why),
        }
    }
}
