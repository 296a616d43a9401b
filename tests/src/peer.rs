//! A bare automerge-repo peer over a real WebSocket, for tests: it speaks the protocol through
//! `tally_proto::Session` and keeps its documents in memory. Tests push and request documents,
//! send raw frames (hostile ones too), and [`Peer::settle`] until the server goes quiet.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use automerge::Automerge;
use futures_util::{SinkExt, StreamExt};
use tally_proto::{DocumentId, Event, PeerId, PeerMetadata, Session, StorageId};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One test peer on one connection.
pub struct Peer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The protocol state.
    pub session: Session,
    /// Documents this peer holds.
    pub docs: HashMap<DocumentId, Automerge>,
    /// `error` messages the server sent.
    pub errors: Vec<String>,
    /// Documents the server said are unavailable.
    pub unavailable: HashSet<DocumentId>,
    /// Whether the server closed the connection.
    pub closed: bool,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Peer {
    /// Opens a WebSocket to `url` with `token` (if any), without the protocol handshake.
    pub async fn open(
        url: &str,
        token: Option<&str>,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(t) = token {
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {t}").parse().expect("header value"),
            );
        }
        let connector = crate::tls::client_config()
            .filter(|_| url.starts_with("wss://"))
            .map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector).await?;
        Ok(ws)
    }

    /// Connects and completes the handshake (join / peer).
    pub async fn connect(url: &str, token: &str) -> Result<Peer, tungstenite::Error> {
        let ws = Self::open(url, Some(token)).await?;
        let me = PeerId::new(format!("test-{}", rand::random::<u64>()));
        let meta = PeerMetadata {
            storage_id: Some(StorageId(format!("storage-{}", rand::random::<u64>()))),
            is_ephemeral: false,
        };
        let (session, join) = Session::client(me, meta);
        let mut peer = Peer {
            ws,
            session,
            docs: HashMap::new(),
            errors: Vec::new(),
            unavailable: HashSet::new(),
            closed: false,
        };
        peer.send_raw(join).await?;
        while !peer.session.is_established() {
            match tokio::time::timeout(Duration::from_secs(10), peer.ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => peer.handle(&b).await?,
                other => panic!("handshake failed: {other:?}"),
            }
        }
        Ok(peer)
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
            self.ws.send(WsMessage::Binary(f.into())).await?;
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

    /// Handles frames until the server has acknowledged every document of `ids` (a condition,
    /// not a quiet spell: a loaded machine may take seconds), the connection closes, the server
    /// sends an error, or `limit` passes. Returns whether all were acknowledged.
    pub async fn until_acknowledged(
        &mut self,
        ids: &[DocumentId],
        limit: Duration,
    ) -> Result<bool, tungstenite::Error> {
        let deadline = tokio::time::Instant::now() + limit;
        let errors = self.errors.len();
        loop {
            if ids.iter().all(|id| self.acknowledged(id)) {
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

    async fn handle(&mut self, frame: &[u8]) -> Result<(), tungstenite::Error> {
        let events = match self.session.receive(frame, now()) {
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
}
