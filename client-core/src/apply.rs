//! Applying what the server sends to the phone's mirror ([`State`]): a sync message's changes,
//! the server's heads, the sync state, and the receipts those heads acknowledge, committed in one
//! transaction. The [`Session`] stays with the [`crate::SyncEngine`] that owns the connection.

use std::collections::HashSet;

use automerge::sync;
use automerge::{Automerge, ChangeHash};
use tally_proto::{DocumentId, Session};

use crate::device::now_ms;
use crate::error::{ClientError, Result};
use crate::mirror::State;
use crate::receipts::AckCounts;
use crate::store::{self, DocRole, DocState};

/// The result of applying one message from the server.
pub(crate) struct Applied {
    pub changed: bool,
    pub acked: AckCounts,
}

impl State {
    /// The receipts of collection `id` whose change the server's heads include.
    pub(crate) fn acked_hashes(
        &self,
        id: &DocumentId,
        doc: &Automerge,
        server_heads: &[ChangeHash],
    ) -> Result<Vec<String>> {
        let pending = store::pending_hashes(&self.conn, id)?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let known: Vec<ChangeHash> = server_heads
            .iter()
            .filter(|h| doc.get_change_meta_by_hash(h).is_some())
            .copied()
            .collect();
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let missing: HashSet<ChangeHash> = doc
            .get_changes_meta(&known)
            .iter()
            .map(|m| m.hash)
            .collect();
        Ok(pending
            .into_iter()
            .filter(|h| {
                store::parse_hash(h).is_some_and(|hash| {
                    doc.get_change_meta_by_hash(&hash).is_some() && !missing.contains(&hash)
                })
            })
            .collect())
    }

    /// Marks acknowledged what the stored server heads of the collections to sync already
    /// cover (after another process added changes, or at the start of a sync).
    pub fn recheck_acks(&mut self) -> Result<AckCounts> {
        let mut total = AckCounts::default();
        for id in self.collections_to_sync()? {
            let Some(idx) = self.index_of(&id) else {
                continue;
            };
            self.ensure(idx)?;
            let local = &self.docs[idx];
            let hashes = self.acked_hashes(&id, local.doc()?, &local.server_heads)?;
            if hashes.is_empty() {
                continue;
            }
            let drop_plaintext = self.drop_plaintext;
            total.add(
                self.commit(|tx, _| store::acknowledge(tx, &hashes, now_ms(), drop_plaintext))?,
            );
        }
        Ok(total)
    }

    /// Applies a sync message from the server to one of our documents, then commits, in one
    /// transaction: the new changes as a chunk, the server's heads, the sync state, and the
    /// receipts those heads acknowledge. Nothing is persisted before the message applied.
    pub fn apply_server_message(
        &mut self,
        session: &mut Session,
        doc_id: DocumentId,
        message: sync::Message,
        now: i64,
    ) -> Result<Applied> {
        let idx = self
            .docs
            .iter()
            .position(|d| d.id == doc_id)
            .ok_or_else(|| {
                ClientError::Protocol(format!("a sync message for unknown document {doc_id}"))
            })?;
        let server_heads = message.heads.clone();
        self.ensure(idx)?;
        let local = &mut self.docs[idx];
        let role = local.role;
        let doc = local.doc_mut()?;
        let before = doc.get_heads();
        if let Err(e) = session.apply_sync_message(doc_id, doc, message) {
            self.restore();
            return Err(ClientError::Protocol(format!(
                "the server's changes to the {role} document do not apply ({e})"
            )));
        }
        let changed = doc.get_heads() != before;
        let chunk = changed.then(|| doc.save_after(&before));
        let sync_state = session.encoded_sync_state(&doc_id);
        let acked_hashes = if role == DocRole::Collection {
            match self.acked_hashes(&doc_id, self.docs[idx].doc()?, &server_heads) {
                Ok(hashes) => hashes,
                Err(e) => {
                    // The message already applied in memory.
                    self.restore();
                    return Err(e);
                }
            }
        } else {
            Vec::new()
        };
        let seen = self.docs[idx].seen_seq;
        let drop_plaintext = self.drop_plaintext;
        let (acked, seen) = self.commit(|tx, quiet| {
            let seen = match &chunk {
                Some(chunk) => {
                    let seq = store::append_chunk(tx, &doc_id, chunk, now)?;
                    if quiet { seq } else { seen }
                }
                None => seen,
            };
            store::set_sync(tx, &doc_id, &server_heads, sync_state.as_deref(), now)?;
            let acked = store::acknowledge(tx, &acked_hashes, now, drop_plaintext)?;
            Ok((acked, seen))
        })?;
        if chunk.is_some() {
            self.appended(idx, seen);
            if role == DocRole::Collection && self.docs[idx].state == DocState::Current {
                self.records = None;
            }
        }
        let local = &mut self.docs[idx];
        local.server_heads = server_heads;
        if sync_state.is_some() {
            local.sync_state = sync_state;
        }
        Ok(Applied { changed, acked })
    }
}
