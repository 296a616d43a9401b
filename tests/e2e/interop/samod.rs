//! The suite's samod peer: crates.io `samod` 0.16 (the Rust automerge-repo), in-process, with
//! in-memory storage, driven over our own tokio-tungstenite stream (its `tokio` feature and a
//! [`Dialer`]), so its `tungstenite` feature (native-tls) is not needed. It sends the device's
//! token as a bearer token on the upgrade.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::samod::{
    BackoffConfig, DialError, Dialer, DialerEvent, DialerHandle, DocHandle, DocumentId, Repo,
    Transport,
};
use automerge::{AutoSerde, Automerge};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, Stream, StreamExt};
use tally_tests::server::Server;
use tally_tests::{Peer, TestServer};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::{Client, Read, Refusal};

suite!(SamodClient);

/// Longest wait for any one step.
const STEP: Duration = Duration::from_secs(10);

/// A samod repo connected to the server as one device, and the documents it created.
pub struct SamodClient {
    repo: Repo,
    dialer: DialerHandle<tungstenite::Error>,
    handles: HashMap<String, DocHandle>,
}

/// Dials the tally server with a bearer token on the upgrade, over tokio-tungstenite. A refused
/// upgrade (an HTTP status instead of a WebSocket) is a permanent failure, anything else may be
/// retried.
struct TallyDialer {
    url: String,
    token: String,
}

impl Dialer for TallyDialer {
    type Error = tungstenite::Error;

    fn url(&self) -> ::samod::Url {
        ::samod::Url::parse(&self.url).expect("ws url")
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<tungstenite::Error>>> {
        let (url, token) = (self.url.clone(), self.token.clone());
        Box::pin(async move {
            let ws = Peer::open(&url, Some(&token)).await.map_err(|e| match e {
                tungstenite::Error::Http(_) => DialError::PermanentFailure(e),
                e => DialError::transient(e),
            })?;
            let (sink, stream) = ws.split();
            let stream = stream.filter_map(|m| {
                futures_util::future::ready(match m {
                    Ok(WsMessage::Binary(b)) => Some(Ok(b.to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
            });
            let sink = sink.with(|b: Vec<u8>| {
                futures_util::future::ready(Ok::<_, tungstenite::Error>(WsMessage::Binary(
                    b.into(),
                )))
            });
            Ok(Transport::new(Box::pin(stream), Box::pin(sink)))
        })
    }
}

/// A samod document's bytes, loaded into tally_core's automerge.
fn snapshot(handle: &DocHandle) -> Automerge {
    let bytes = handle.with_document(|d| d.save());
    Automerge::load(&bytes).expect("samod's bytes load")
}

/// The reason samod gives when the connection closes: the server answers a refused change with
/// an `error`, and samod surfaces it as the reason it closed.
async fn disconnected(events: &mut (impl Stream<Item = DialerEvent> + Unpin)) -> String {
    while let Some(ev) = events.next().await {
        if let DialerEvent::Disconnected { reason } = ev {
            return reason;
        }
    }
    panic!("dialer events ended");
}

impl SamodClient {
    /// Waits until the server has acknowledged every change of `handle`, or refused one. The
    /// caller subscribes to `events` before it hands samod the change, so no refusal slips by.
    async fn acknowledged(
        &self,
        handle: &DocHandle,
        mut events: impl Stream<Item = DialerEvent> + Unpin,
    ) -> Result<(), Refusal> {
        let conn = self.dialer.connection_id().expect("connected");
        let outcome = timeout(STEP, async {
            tokio::select! {
                biased;
                reason = disconnected(&mut events) => Err(Refusal::Error(reason)),
                () = handle.they_have_our_changes(conn) => Ok(()),
            }
        })
        .await
        .expect("the server neither acknowledged nor refused the document");
        if outcome.is_err() {
            // A reconnect would offer the refused change again: close before the retry is due.
            self.dialer.close();
        }
        outcome
    }
}

impl Client for SamodClient {
    /// The dialer may retry once, after a second or more. samod 0.16's `Repo::dial` hands the
    /// dial to its IO loop before it registers the dialer there; when the IO loop wins that race
    /// (about one run in two on 2 cores) the first attempt fails with "no dialer registered"
    /// before any socket is opened, and a dialer with no retries gives up at once. The retry
    /// comes after the dialer is registered, so it connects. It must not come soon after an
    /// `error`: samod closes a connection on which it receives one, and a reconnect would offer
    /// the refused change again; [`SamodClient::acknowledged`] closes the dialer as soon as samod
    /// reports the disconnect, long before the retry is due.
    async fn connect(server: &TestServer, token: &str) -> Result<Self, Refusal> {
        let repo = Repo::build_tokio().load().await;
        let dialer = repo
            .dial(
                BackoffConfig {
                    initial_delay: Duration::from_secs(2),
                    max_delay: Duration::from_secs(2),
                    max_retries: Some(1),
                },
                Arc::new(TallyDialer {
                    url: server.ws(),
                    token: token.to_string(),
                }),
            )
            .expect("dial");
        let established = timeout(STEP, dialer.established())
            .await
            .expect("handshake timed out");
        let info = match established {
            Ok(info) => info,
            Err(e) => {
                repo.stop().await;
                return Err(Refusal::Failed(e.to_string()));
            }
        };
        assert!(
            info.peer_id.to_string().starts_with("tally-server-"),
            "unexpected server peer id {}",
            info.peer_id
        );
        Ok(SamodClient {
            repo,
            dialer,
            handles: HashMap::new(),
        })
    }

    async fn read(&mut self, url: &str) -> Result<Read, Refusal> {
        let url: ::samod::AutomergeUrl = url.parse().expect("an automerge URL samod reads");
        let found = timeout(STEP, self.repo.find(url.document_id().clone()))
            .await
            .expect("find timed out")
            .expect("repo running");
        let Some(handle) = found else {
            return Err(Refusal::Unavailable);
        };
        let doc = snapshot(&handle);
        let json = serde_json::to_value(AutoSerde::from(&doc)).expect("the document as JSON");
        Ok(Read { json, doc })
    }

    async fn create(&mut self, doc: &Automerge) -> (String, Result<(), Refusal>) {
        let events = self.dialer.events();
        // Handed to samod as bytes; samod announces it to the server.
        let handle = self
            .repo
            .create(Automerge::load(&doc.save()).expect("the document loads"))
            .await
            .expect("samod creates the document");
        let doc_id = handle.document_id().to_string();
        let outcome = self.acknowledged(&handle, events).await;
        self.handles.insert(doc_id.clone(), handle);
        (doc_id, outcome)
    }

    async fn change(&mut self, doc_id: &str, change: &[u8]) -> Result<(), Refusal> {
        let handle = match self.handles.get(doc_id) {
            Some(handle) => handle.clone(),
            None => {
                let id: DocumentId = doc_id.parse().expect("a document id samod reads");
                timeout(STEP, self.repo.find(id))
                    .await
                    .expect("find timed out")
                    .expect("repo running")
                    .expect("the server has the document")
            }
        };
        let events = self.dialer.events();
        // Written through samod's own document, which sends it on.
        handle.with_document(|d| d.load_incremental(change).expect("samod takes the change"));
        self.acknowledged(&handle, events).await
    }

    fn connected(&self) -> Option<bool> {
        Some(self.dialer.is_connected())
    }

    async fn stop(self) {
        self.dialer.close();
        self.repo.stop().await;
    }
}
