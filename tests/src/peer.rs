//! The tests' wire peer: the rig's [`tally_rig::Peer`] (a bare automerge-repo peer built on
//! `tally_proto::Session` that tests drive frame by frame), opened with the throwaway
//! certificate's TLS client for `wss://` URLs once [`crate::tls::trust`] was called. Everything
//! else (push, request, settle, until_acknowledged, the recorded errors) is the rig's, reached
//! through `Deref`.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use tally_proto::{PeerId, StorageId};
use tally_rig::peer::{JoinError, Ws};
use tokio_tungstenite::tungstenite;

/// One test peer on one connection.
pub struct Peer(tally_rig::Peer);

impl Peer {
    /// Opens a WebSocket to `url` with `token` (if any), without the protocol handshake.
    pub async fn open(url: &str, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let req = tally_rig::Peer::upgrade_request(url, token)?;
        let connector = crate::tls::client_config()
            .filter(|_| url.starts_with("wss://"))
            .map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector).await?;
        Ok(ws)
    }

    /// Connects and completes the handshake (join / peer), as a new peer with a new storage id.
    /// A socket error is an `Err`; a server that answers `join` with anything but `peer` panics.
    pub async fn connect(url: &str, token: &str) -> Result<Peer, tungstenite::Error> {
        let ws = Self::open(url, Some(token)).await?;
        let me = PeerId::new(format!("test-{}", rand::random::<u64>()));
        let storage = StorageId(format!("storage-{}", rand::random::<u64>()));
        match tally_rig::Peer::join(ws, me, storage, [], Duration::from_secs(10)).await {
            Ok(peer) => Ok(Peer(peer)),
            Err(JoinError::Socket(e)) => Err(e),
            Err(e) => panic!("{e}"),
        }
    }
}

impl Deref for Peer {
    type Target = tally_rig::Peer;

    fn deref(&self) -> &tally_rig::Peer {
        &self.0
    }
}

impl DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut tally_rig::Peer {
        &mut self.0
    }
}
