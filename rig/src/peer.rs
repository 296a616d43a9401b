//! A bare automerge-repo peer over a real WebSocket: it speaks the protocol through
//! `tally_proto::Session` and keeps its documents in memory. The end-to-end tests drive it frame
//! by frame (pushing and requesting documents, sending raw frames, hostile ones too, and
//! [`Peer::settle`] until the server goes quiet); the benchmark's simulated phones sync through
//! it ([`Peer::join`] with a phone's stable storage id and persisted sync states, then
//! [`Peer::until`] the server acknowledges).
//!
//! It answers every `sync` and `request` the server sends, for any document (one it does not
//! hold yet starts empty), and records the server's `error` and `unavailable` messages and a
//! closed connection for the caller to judge: nothing here decides that a refusal is a failure.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use automerge::Automerge;
use automerge::sync::State as SyncState;
use futures_util::{SinkExt, StreamExt};
use tally_proto::{DocumentId, Event, PeerId, PeerMetadata, Session, StorageId};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An open WebSocket to the server, before or without the protocol.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why [`Peer::join`] did not end with an established session.
#[derive(Debug)]
pub enum JoinError {
    /// The socket failed.
    Socket(tungstenite::Error),
    /// The server did not answer `join` with `peer`: what it did instead.
    Handshake(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Socket(e) => write!(f, "socket error during the handshake: {e}"),
            JoinError::Handshake(what) => write!(f, "the handshake failed: {what}"),
        }
    }
}

impl std::error::Error for JoinError {}

impl From<tungstenite::Error> for JoinError {
    fn from(e: tungstenite::Error) -> Self {
        JoinError::Socket(e)
    }
}

/// One peer on one connection.
pub struct Peer {
    ws: Ws,
    /// The protocol state.
    pub session: Session,
    /// Documents this peer holds.
    pub docs: HashMap<DocumentId, Automerge>,
    /// `error` messages the server sent, and local protocol or apply errors (prefixed `local`).
    pub errors: Vec<String>,
    /// Documents the server said are unavailable.
    pub unavailable: HashSet<DocumentId>,
    /// Whether the server closed the connection.
    pub closed: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Peer {
    /// The upgrade request for `url`, with `token` (if any) as a bearer token.
    pub fn upgrade_request(url: &str, token: Option<&str>) -> Result<Request, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(t) = token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|e| tungstenite::Error::HttpFormat(tungstenite::http::Error::from(e)))?;
            req.headers_mut().insert("Authorization", value);
        }
        Ok(req)
    }

    /// Opens a WebSocket to `url` with `token` (if any), with `TCP_NODELAY` and the frame and
    /// message limits of `config` (`None`: tungstenite's defaults), without the protocol
    /// handshake. A `wss://` URL gets tokio-tungstenite's default TLS client, if it was built
    /// with one (the tests open their own, trusting their throwaway certificate, and [`join`]
    /// on it).
    ///
    /// [`join`]: Peer::join
    pub async fn open(
        url: &str,
        token: Option<&str>,
        config: Option<WebSocketConfig>,
    ) -> Result<Ws, tungstenite::Error> {
        let req = Self::upgrade_request(url, token)?;
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, config, true).await?;
        Ok(ws)
    }

    /// Sends `join` on `ws` as `me`, with `storage_id` (a stable one makes the server keep sync
    /// states for this peer) and the persisted sync `states` seeded first, and handles frames
    /// until the server's `peer` or `limit` passes.
    pub async fn join(
        ws: Ws,
        me: PeerId,
        storage_id: StorageId,
        states: impl IntoIterator<Item = (DocumentId, SyncState)>,
        limit: Duration,
    ) -> Result<Peer, JoinError> {
        let meta = PeerMetadata {
            storage_id: Some(storage_id),
            is_ephemeral: false,
        };
        let (mut session, join) = Session::client(me, meta);
        for (id, state) in states {
            session.load_sync_state(id, state);
        }
        let mut peer = Peer {
            ws,
            session,
            docs: HashMap::new(),
            errors: Vec::new(),
            unavailable: HashSet::new(),
            closed: false,
        };
        peer.send_raw(join).await?;
        let deadline = Instant::now() + limit;
        while !peer.session.is_established() {
            match tokio::time::timeout_at(deadline, peer.ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => peer.handle(&b).await?,
                Ok(Some(Err(e))) => return Err(JoinError::Socket(e)),
                Err(_) => {
                    return Err(JoinError::Handshake(format!(
                        "no `peer` within {limit:?}{}",
                        peer.said()
                    )));
                }
                other => {
                    return Err(JoinError::Handshake(format!("{other:?}{}", peer.said())));
                }
            }
        }
        Ok(peer)
    }

    /// The errors heard so far, for a failure's message.
    fn said(&self) -> String {
        if self.errors.is_empty() {
            String::new()
        } else {
            format!(" (errors: {:?})", self.errors)
        }
    }

    /// Sends one binary frame as is.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), tungstenite::Error> {
        self.ws.send(WsMessage::Binary(bytes.into())).await
    }

    /// Sends a text frame (not part of the protocol).
    pub async fn send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(WsMessage::Text(text.to_string().into())).await
    }

    /// Takes a document and offers it to the server.
    pub async fn push(&mut self, id: DocumentId, doc: Automerge) -> Result<(), tungstenite::Error> {
        self.docs.insert(id, doc);
        self.sync(id).await
    }

    /// Sends what the server lacks of a document this peer holds.
    pub async fn sync(&mut self, id: DocumentId) -> Result<(), tungstenite::Error> {
        let frame = self.session.sync_frame(id, &self.docs[&id]);
        if let Some(f) = frame {
            self.send_raw(f).await?;
        }
        Ok(())
    }

    /// Asks the server for a document this peer does not have.
    pub async fn request(&mut self, id: DocumentId) -> Result<(), tungstenite::Error> {
        let doc = self.docs.entry(id).or_default();
        if let Some(f) = self.session.request_frame(id, doc) {
            self.send_raw(f).await?;
        }
        Ok(())
    }

    /// Handles frames until none arrives for `quiet`.
    pub async fn settle(&mut self, quiet: Duration) -> Result<(), tungstenite::Error> {
        loop {
            match tokio::time::timeout(quiet, self.ws.next()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(WsMessage::Binary(b)))) => self.handle(&b).await?,
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    self.closed = true;
                    return Err(e);
                }
            }
        }
    }

    /// Handles frames until `done` holds (asked before the first frame and after each), the
    /// connection closes, an error is heard, or `deadline` passes: a condition, not a quiet
    /// spell, as a loaded machine may take seconds. Returns whether `done` held.
    pub async fn until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Peer) -> bool,
    ) -> Result<bool, tungstenite::Error> {
        let errors = self.errors.len();
        loop {
            if done(self) {
                return Ok(true);
            }
            if self.closed || self.errors.len() > errors {
                return Ok(false);
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(false),
                Ok(Some(Ok(WsMessage::Binary(b)))) => self.handle(&b).await?,
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) => self.closed = true,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    self.closed = true;
                    return Err(e);
                }
            }
        }
    }

    /// Handles frames until the server has acknowledged every document of `ids`, the
    /// connection closes, an error is heard, or `limit` passes (see [`Peer::until`]). Returns
    /// whether all were acknowledged.
    pub async fn until_acknowledged(
        &mut self,
        ids: &[DocumentId],
        limit: Duration,
    ) -> Result<bool, tungstenite::Error> {
        self.until(Instant::now() + limit, |p| {
            ids.iter().all(|id| p.acknowledged(id))
        })
        .await
    }

    /// Closes the connection, waiting at most `limit` for the server's close.
    pub async fn close(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.ws.close(None)).await;
        self.closed = true;
    }

    async fn handle(&mut self, frame: &[u8]) -> Result<(), tungstenite::Error> {
        let events = match self.session.receive(frame, now_ms()) {
            Ok(e) => e,
            Err(e) => {
                self.errors.push(format!("local protocol error: {e}"));
                return Ok(());
            }
        };
        for ev in events {
            match ev {
                Event::Send(b) => self.send_raw(b).await?,
                Event::SyncReceived { doc, message } | Event::DocRequested { doc, message } => {
                    let am = self.docs.entry(doc).or_default();
                    if let Err(e) = self.session.apply_sync_message(doc, am, message) {
                        self.errors.push(format!("local apply error: {e}"));
                    }
                    let reply = self.session.sync_frame(doc, &self.docs[&doc]);
                    if let Some(f) = reply {
                        self.send_raw(f).await?;
                    }
                }
                Event::Unavailable { doc } => {
                    self.unavailable.insert(doc);
                }
                Event::RemoteError { message, .. } => self.errors.push(message),
                _ => {}
            }
        }
        Ok(())
    }

    /// Has the server acknowledged every change of this document (its heads cover ours)?
    pub fn acknowledged(&self, id: &DocumentId) -> bool {
        let Some(doc) = self.docs.get(id) else {
            return false;
        };
        match self
            .session
            .sync_state(id)
            .and_then(|s| s.their_heads.clone())
        {
            Some(heads) => doc.get_changes(&heads).is_empty(),
            None => false,
        }
    }

    /// Has the server sent a sync message for this document on this connection (its heads are
    /// known, even if there are none)? A persisted sync state does not count: it keeps only the
    /// heads both sides shared.
    pub fn heard(&self, id: &DocumentId) -> bool {
        self.session
            .sync_state(id)
            .is_some_and(|s| s.their_heads.is_some())
    }
}
