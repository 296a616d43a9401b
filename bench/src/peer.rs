//! A phone on the wire: its three documents (its own collection, the campaign, the team totals)
//! and persisted sync states, synced over a real WebSocket by the rig's wire peer
//! ([`tally_rig::Peer`], automerge-repo's protocol through `tally_proto::Session`) as
//! `tally_client`'s `SyncEngine` does it: `join` with the phone's stable storage id, seed the
//! persisted sync states, then on `peer` a `sync` (a `request`, for a document it has nothing
//! of) for each document, and answer every message the server sends. A phone is *acknowledged*
//! when the server's heads for its collection cover every change of the phone's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use automerge::Automerge;
use automerge::sync::State as SyncState;
use tally_proto::{DocumentId, PeerId, StorageId};
use tally_rig::Peer;
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

/// Connects `phone` to `ws_url` and syncs until its collection is acknowledged (and, with
/// `fetch`, until the campaign and totals documents have arrived), then saves the sync states
/// and closes. Fails on a connection error, an `error` from the server, a document the server
/// says is unavailable, or at `deadline`.
pub async fn sync(
    ws_url: &str,
    phone: &mut Phone,
    fetch: bool,
    deadline: Instant,
) -> Result<Synced> {
    let mut out = Synced::default();
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(64 << 20);
    config.max_frame_size = Some(64 << 20);
    let connecting = Peer::open(ws_url, Some(&phone.token), Some(config));
    let ws = tokio::time::timeout_at(deadline.into(), connecting)
        .await
        .map_err(|_| anyhow!("no WebSocket before the deadline"))?
        .context("WebSocket upgrade")?;
    out.connected_at = Some(Instant::now());
    let me = PeerId::new(format!(
        "{}-{}",
        phone.device_id,
        hex::encode(rand::random::<[u8; 4]>())
    ));
    let states: Vec<(DocumentId, SyncState)> = phone
        .states
        .iter()
        .filter_map(|(id, bytes)| Some((*id, SyncState::decode(bytes).ok()?)))
        .collect();
    let limit = deadline.saturating_duration_since(Instant::now());
    let storage = StorageId(phone.storage_id.clone());
    let mut peer = Peer::join(ws, me, storage, states, limit).await?;
    peer.docs = std::mem::take(&mut phone.docs);
    let order = [phone.collection, phone.campaign, phone.totals];
    let (collection, campaign, totals) = (phone.collection, phone.campaign, phone.totals);
    let result: Result<()> = async {
        for id in order {
            peer.sync(id).await?;
        }
        let mut acknowledged_at = None;
        let done = peer
            .until(deadline.into(), |p| {
                if acknowledged_at.is_none() && p.acknowledged(&collection) {
                    acknowledged_at = Some(Instant::now());
                }
                let fetched = !fetch
                    || (p.heard(&campaign)
                        && p.heard(&totals)
                        && !p.docs[&campaign].get_heads().is_empty());
                (acknowledged_at.is_some() && fetched) || !p.unavailable.is_empty()
            })
            .await?;
        out.acknowledged_at = acknowledged_at;
        if let Some(message) = peer.errors.first() {
            out.errors = peer.errors.clone();
            bail!("the server refused: {message}");
        }
        if let Some(doc) = peer.unavailable.iter().next() {
            bail!("the server says document {doc} is unavailable");
        }
        if peer.closed {
            bail!("the server closed the connection");
        }
        if !done {
            bail!("not acknowledged before the deadline");
        }
        Ok(())
    }
    .await;
    for id in order {
        if let Some(bytes) = peer.session.encoded_sync_state(&id) {
            phone.states.insert(id, bytes);
        }
    }
    phone.docs = std::mem::take(&mut peer.docs);
    peer.close(Duration::from_secs(5)).await;
    result.map(|()| out)
}
