//! A phone on the wire: its three documents (its own collection, the campaign, the team totals)
//! and persisted sync states, synced over a real WebSocket with automerge-repo's protocol through
//! `tally_proto::Session`, exactly as `tally_client`'s `SyncEngine` does it: `join` with the
//! phone's stable storage id, seed the persisted sync states, then on `peer` a `sync` (or a
//! `request`, for a document it has nothing of) for each document, and answer every message the
//! server sends. A phone is *acknowledged* when the server's heads for its collection include
//! every change of the phone's.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use automerge::Automerge;
use automerge::sync::State as SyncState;
use futures_util::{SinkExt, StreamExt};
use tally_proto::{DocumentId, Event, PeerId, PeerMetadata, Session, StorageId};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// One simulated phone.
pub struct Phone {
    /// Its device id (owner of its collection).
    pub device_id: String,
    /// Its bearer token.
    pub token: String,
    /// Its stable storage id, sent in `join` so the server keeps sync states for it.
    pub storage_id: String,
    /// Its collection document.
    pub collection: DocumentId,
    /// The campaign document.
    pub campaign: DocumentId,
    /// The team totals document.
    pub totals: DocumentId,
    /// The documents, by id.
    pub docs: HashMap<DocumentId, Automerge>,
    /// Persisted sync states (`State::encode`), by document.
    pub states: HashMap<DocumentId, Vec<u8>>,
}

impl Phone {
    /// A freshly enrolled phone: the server's answer to `POST /api/v1/enroll` and a new
    /// collection document (`collection::create`, as `Device::complete_enrollment` makes it).
    pub fn enrolled(answer: &tally_server::api::types::Enrolled) -> Result<Phone> {
        let s = |k: &str, v: &Option<String>| {
            v.clone()
                .with_context(|| format!("{k} in the enrollment answer"))
        };
        let device_id = answer.device_id.clone();
        let campaign_id = s("campaign", &answer.campaign)?;
        let campaign = DocumentId::from_url(&s("campaign_url", &answer.campaign_url)?)?;
        let totals = DocumentId::from_url(&s("totals_url", &answer.totals_url)?)?;
        let collection = tally_rig::new_id();
        let doc = tally_core::collection::create(&campaign_id, &device_id)
            .map_err(|e| anyhow!("creating the collection: {e}"))?;
        let mut docs = HashMap::new();
        docs.insert(collection, doc);
        docs.insert(campaign, Automerge::new());
        docs.insert(totals, Automerge::new());
        Ok(Phone {
            device_id,
            token: answer.token.clone(),
            storage_id: hex::encode(rand::random::<[u8; 16]>()),
            collection,
            campaign,
            totals,
            docs,
            states: HashMap::new(),
        })
    }

    /// The phone's collection document.
    pub fn collection_doc(&self) -> &Automerge {
        &self.docs[&self.collection]
    }

    /// The phone's collection document, to write signatures into.
    pub fn collection_doc_mut(&mut self) -> &mut Automerge {
        self.docs
            .get_mut(&self.collection)
            .expect("the collection is always there")
    }

    /// The campaign document.
    pub fn campaign_doc(&self) -> &Automerge {
        &self.docs[&self.campaign]
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct Synced {
    /// When the server's heads first included all of the collection's changes.
    pub acknowledged_at: Option<Instant>,
    /// When the WebSocket was open (after the HTTP upgrade).
    pub connected_at: Option<Instant>,
    /// `error` messages the server sent.
    pub errors: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Connects `phone` to `ws_url` and syncs until its collection is acknowledged (and, with
/// `fetch`, until the campaign and totals documents have arrived), then saves the sync states
/// and closes. Fails on a connection error, an `error` from the server, or at `deadline`.
pub async fn sync(
    ws_url: &str,
    phone: &mut Phone,
    fetch: bool,
    deadline: Instant,
) -> Result<Synced> {
    let mut out = Synced::default();
    let mut req = ws_url.into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {}", phone.token).parse()?);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(64 << 20);
    config.max_frame_size = Some(64 << 20);
    let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
    let (mut ws, _) = tokio::time::timeout_at(deadline.into(), connecting)
        .await
        .map_err(|_| anyhow!("no WebSocket before the deadline"))?
        .context("WebSocket upgrade")?;
    out.connected_at = Some(Instant::now());
    let me = PeerId::new(format!(
        "{}-{}",
        phone.device_id,
        hex::encode(rand::random::<[u8; 4]>())
    ));
    let (mut session, join) = Session::client(
        me,
        PeerMetadata {
            storage_id: Some(StorageId(phone.storage_id.clone())),
            is_ephemeral: false,
        },
    );
    for (id, bytes) in &phone.states {
        if let Ok(state) = SyncState::decode(bytes) {
            session.load_sync_state(*id, state);
        }
    }
    ws.send(WsMessage::Binary(join.into())).await?;
    let order = [phone.collection, phone.campaign, phone.totals];
    let mut heard: HashSet<DocumentId> = HashSet::new();
    let result: Result<()> = async {
        loop {
            let msg = tokio::time::timeout_at(deadline.into(), ws.next())
                .await
                .map_err(|_| anyhow!("not acknowledged before the deadline"))?;
            let frame = match msg {
                Some(Ok(WsMessage::Binary(b))) => b,
                Some(Ok(WsMessage::Close(f))) => bail!("the server closed the connection: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("the server closed the connection"),
            };
            let events = session
                .receive(&frame, now_ms())
                .map_err(|e| anyhow!("protocol: {e}"))?;
            let mut sends: Vec<Vec<u8>> = Vec::new();
            for ev in events {
                match ev {
                    Event::Send(b) => sends.push(b),
                    Event::PeerAccepted { .. } => {
                        for id in order {
                            let doc = &phone.docs[&id];
                            if let Some(f) = session.sync_frame(id, doc) {
                                sends.push(f);
                            }
                        }
                    }
                    Event::SyncReceived { doc, message } | Event::DocRequested { doc, message } => {
                        let Some(am) = phone.docs.get_mut(&doc) else {
                            sends.extend(session.unavailable_frame(doc));
                            continue;
                        };
                        session
                            .apply_sync_message(doc, am, message)
                            .map_err(|e| anyhow!("applying the server's changes: {e}"))?;
                        heard.insert(doc);
                        if let Some(f) = session.sync_frame(doc, &phone.docs[&doc]) {
                            sends.push(f);
                        }
                    }
                    Event::Unavailable { doc } => {
                        bail!("the server says document {doc} is unavailable")
                    }
                    Event::RemoteError { message, .. } => {
                        out.errors.push(message.clone());
                        bail!("the server refused: {message}");
                    }
                    _ => {}
                }
            }
            for f in sends {
                ws.send(WsMessage::Binary(f.into())).await?;
            }
            if out.acknowledged_at.is_none() && acknowledged(&session, phone) {
                out.acknowledged_at = Some(Instant::now());
            }
            let fetched = !fetch
                || (heard.contains(&phone.campaign)
                    && heard.contains(&phone.totals)
                    && !phone.campaign_doc().get_heads().is_empty());
            if out.acknowledged_at.is_some() && fetched {
                return Ok(());
            }
        }
    }
    .await;
    for id in order {
        if let Some(bytes) = session.encoded_sync_state(&id) {
            phone.states.insert(id, bytes);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    result.map(|()| out)
}

/// Do the server's heads for the collection include all of the phone's changes?
fn acknowledged(session: &Session, phone: &Phone) -> bool {
    let Some(theirs) = session
        .sync_state(&phone.collection)
        .and_then(|s| s.their_heads.as_ref())
    else {
        return false;
    };
    phone
        .collection_doc()
        .get_heads()
        .iter()
        .all(|h| theirs.contains(h))
}
