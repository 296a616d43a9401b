//! The phone's file mirrored in memory: [`State`] holds the SQLite connection, the enrollment
//! and the documents ([`LocalDoc`]) as last read from the file, and keeps them equal to it.
//!
//! The documents in memory never run ahead of the file: every write goes through
//! [`State::commit`], one IMMEDIATE transaction after which memory is reloaded from the file if
//! anything failed. Several processes may open the same home directory (the CLI's `sign` beside
//! `sync --watch`): SQLite serializes their writes, compaction ([`crate::compact`], in the
//! background) checks the file before it swaps a snapshot in, and long-running processes catch up
//! when another connection wrote (`PRAGMA data_version`, [`State::refresh`]): they read only the
//! chunks they have not seen, and reload a document only when someone else folded chunks they
//! never saw into its snapshot.

use std::path::Path;

use automerge::{Automerge, ChangeHash};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tally_core::campaign::{self, Campaign};
use tally_core::collection;
use tally_core::doc::WriteError;
use tally_proto::DocumentId;

use crate::compact::{self, Compactor, NUDGE_EVERY};
use crate::device::{TeamTotals, write_error};
use crate::enroll::Enrollment;
use crate::error::{ClientError, Result};
use crate::receipts::{Receipt, ReceiptDetails, ReceiptKind};
use crate::store::{self, DocRole, DocState};

pub(crate) const KEY_ENROLLMENT: &str = "enrollment";
pub(crate) const KEY_DROP_PLAINTEXT: &str = "drop_plaintext_on_ack";
pub(crate) const KEY_ROLL_OVER_AT: &str = "roll_over_at";

/// One document the phone keeps, in memory.
pub(crate) struct LocalDoc {
    pub id: DocumentId,
    pub role: DocRole,
    /// Current, or (a collection) closed, retired or refused: see [`crate::chain`].
    pub state: DocState,
    /// A collection's place in the phone's chain, from 0.
    pub chain: i64,
    /// The document, once loaded ([`State::ensure`]): a collection, the big one, waits for its
    /// first use (the status needs only SQL), and only the current one stays loaded (an older
    /// one is loaded to sync what is pending in it, and dropped again once it is all
    /// acknowledged); the campaign and the totals load with the state.
    pub(crate) doc: Option<Automerge>,
    /// The last chunk (`chunks.seq`) `doc` holds, with every earlier one of this document.
    pub seen_seq: i64,
    /// Chunks appended since the compactor was last nudged about this document.
    pub unnudged: usize,
    /// The heads the server last sent for it.
    pub server_heads: Vec<ChangeHash>,
    /// The persisted sync state (`sync::State::encode`) with the server.
    pub sync_state: Option<Vec<u8>>,
}

impl LocalDoc {
    pub(crate) fn not_loaded(&self) -> ClientError {
        ClientError::Storage(format!(
            "the {} document was used before it was loaded (a bug in tally-client)",
            self.role
        ))
    }

    /// The document; an error if it was not loaded first ([`State::ensure`]).
    pub fn doc(&self) -> Result<&Automerge> {
        self.doc.as_ref().ok_or_else(|| self.not_loaded())
    }

    pub fn doc_mut(&mut self) -> Result<&mut Automerge> {
        if self.doc.is_none() {
            return Err(self.not_loaded());
        }
        Ok(self.doc.as_mut().expect("checked just above"))
    }
}

/// The state behind a [`Device`]'s mutex.
pub(crate) struct State {
    pub conn: Connection,
    pub enrollment: Option<Enrollment>,
    pub docs: Vec<LocalDoc>,
    pub drop_plaintext: bool,
    /// Records the current collection takes before the phone starts the next one.
    pub roll_over_at: usize,
    pub(crate) data_version: i64,
    /// The campaign as last read, with the campaign document's heads it was read at.
    pub(crate) campaign: Option<(Vec<ChangeHash>, Campaign)>,
    /// Records in the current collection, once counted (`None` after it changed otherwise than
    /// by a local write).
    pub(crate) records: Option<usize>,
    /// Whether the collection has been used: from then on a reload loads it at once.
    pub(crate) collection_wanted: bool,
    pub(crate) compactor: Compactor,
}

impl State {
    pub(crate) fn open(path: &Path) -> Result<State> {
        let conn = store::open(path)?;
        // Checkpoints (copying the WAL into the file, with an fsync of the file) would otherwise
        // land in whichever signature's commit crosses 1,000 pages: the compactor runs them.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut st = State {
            conn,
            enrollment: None,
            docs: Vec::new(),
            drop_plaintext: true,
            roll_over_at: crate::chain::DEFAULT_ROLL_OVER_AT,
            data_version: 0,
            campaign: None,
            records: None,
            collection_wanted: false,
            compactor: Compactor::new(path),
        };
        st.reload()?;
        Ok(st)
    }

    /// The enrollment, the plaintext setting and the roll-over bound, as stored.
    pub(crate) fn read_settings(conn: &Connection) -> Result<(Option<Enrollment>, bool, usize)> {
        let enrollment = store::setting(conn, KEY_ENROLLMENT)?
            .map(|json| {
                serde_json::from_str::<Enrollment>(&json)
                    .map_err(|e| ClientError::Corrupt(format!("the stored enrollment: {e}")))
            })
            .transpose()?;
        let drop_plaintext = store::setting(conn, KEY_DROP_PLAINTEXT)?.is_none_or(|v| v != "false");
        let roll_over_at = store::setting(conn, KEY_ROLL_OVER_AT)?
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(crate::chain::DEFAULT_ROLL_OVER_AT);
        Ok((enrollment, drop_plaintext, roll_over_at))
    }

    /// Re-reads settings and documents from the file (one read transaction: one consistent
    /// state of it).
    pub fn reload(&mut self) -> Result<()> {
        self.data_version = store::data_version(&self.conn)?;
        let tx = self.conn.unchecked_transaction()?;
        let (enrollment, drop_plaintext, roll_over_at) = State::read_settings(&tx)?;
        let mut docs = Vec::new();
        for row in store::doc_rows(&tx)? {
            let wanted = match row.role {
                DocRole::Collection => self.collection_wanted && row.state == DocState::Current,
                DocRole::Campaign | DocRole::Totals => true,
            };
            let (doc, seen_seq) = if wanted {
                let (doc, seen) = compact::load(&tx, &row.id, row.role)?;
                (Some(doc), seen)
            } else {
                (None, 0)
            };
            docs.push(LocalDoc {
                id: row.id,
                role: row.role,
                state: row.state,
                chain: row.chain,
                doc,
                seen_seq,
                unnudged: 0,
                server_heads: row.server_heads,
                sync_state: row.sync_state,
            });
        }
        tx.commit()?;
        self.enrollment = enrollment;
        self.drop_plaintext = drop_plaintext;
        self.roll_over_at = roll_over_at;
        self.docs = docs;
        self.campaign = None;
        self.records = None;
        Ok(())
    }

    /// Catches up when another connection (another process, or this device's compactor)
    /// committed since we last looked. Returns whether it did.
    pub fn refresh(&mut self) -> Result<bool> {
        let version = store::data_version(&self.conn)?;
        if version == self.data_version {
            return Ok(false);
        }
        self.catch_up()?;
        self.data_version = version;
        Ok(true)
    }

    /// Brings memory up to the file, in one read transaction: the settings, the documents'
    /// rows, and for each document only the chunks it has not seen. A document is loaded again
    /// only when its snapshot folds chunks this copy never saw (another process appended and
    /// compacted); everything is, when the set of documents changed.
    pub(crate) fn catch_up(&mut self) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let rows = store::doc_rows(&tx)?;
        let same_docs = rows.len() == self.docs.len()
            && rows.iter().all(|r| {
                self.docs
                    .iter()
                    .any(|d| d.id == r.id && d.role == r.role && d.state == r.state)
            });
        if !same_docs {
            drop(tx);
            return self.reload();
        }
        (self.enrollment, self.drop_plaintext, self.roll_over_at) = State::read_settings(&tx)?;
        for row in rows {
            let Some(local) = self.docs.iter_mut().find(|d| d.id == row.id) else {
                continue;
            };
            if let Some(doc) = &mut local.doc {
                if store::snapshot_upto(&tx, &row.id)? > local.seen_seq {
                    let (doc, seen) = compact::load(&tx, &row.id, row.role)?;
                    (local.doc, local.seen_seq) = (Some(doc), seen);
                } else {
                    local.seen_seq =
                        compact::load_chunks(&tx, &row.id, row.role, doc, local.seen_seq)?;
                }
            }
            local.server_heads = row.server_heads;
            local.sync_state = row.sync_state;
        }
        tx.commit()?;
        self.records = None;
        Ok(())
    }

    /// Loads the document at `idx` if it is not yet.
    pub fn ensure(&mut self, idx: usize) -> Result<()> {
        if self.docs[idx].role == DocRole::Collection && self.docs[idx].state == DocState::Current {
            self.collection_wanted = true;
        }
        if self.docs[idx].doc.is_none() {
            let (id, role) = (self.docs[idx].id, self.docs[idx].role);
            // One read transaction: a compaction cannot fold chunks between the snapshot read
            // and the chunks read.
            let tx = self.conn.unchecked_transaction()?;
            let (doc, seen) = compact::load(&tx, &id, role)?;
            tx.commit()?;
            let local = &mut self.docs[idx];
            (local.doc, local.seen_seq) = (Some(doc), seen);
        }
        Ok(())
    }

    /// Loads the current documents (the campaign, the totals, the current collection) if they
    /// are not yet.
    pub fn ensure_current(&mut self) -> Result<()> {
        for idx in 0..self.docs.len() {
            if self.docs[idx].state == DocState::Current {
                self.ensure(idx)?;
            }
        }
        Ok(())
    }

    /// Counts a chunk appended to a document, and nudges the background compaction now and
    /// then. `seen_seq` is the chunk's number when no other connection had committed since
    /// this state last caught up (checked inside the appending transaction, so the document in
    /// memory holds every chunk up to it), the previous value otherwise: the next refresh then
    /// reads what it missed.
    pub(crate) fn appended(&mut self, idx: usize, seen_seq: i64) {
        let local = &mut self.docs[idx];
        local.seen_seq = seen_seq;
        local.unnudged += 1;
        if local.unnudged >= NUDGE_EVERY {
            local.unnudged = 0;
            let (id, role) = (local.id, local.role);
            self.compactor.nudge(id, role);
        }
    }

    /// Runs `write` in one IMMEDIATE transaction and commits it: the one way this phone writes
    /// its file. `write` is told whether the file is *quiet*: no other connection committed
    /// since this state last caught up, so the documents in memory hold every chunk of the file
    /// (an appended chunk's number may then become a document's `seen_seq`). On any failure
    /// nothing is kept: the transaction rolls back and memory is reloaded from the file.
    pub(crate) fn commit<T>(
        &mut self,
        write: impl FnOnce(&Transaction<'_>, bool) -> Result<T>,
    ) -> Result<T> {
        let data_version = self.data_version;
        let done = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let quiet = store::data_version(&tx)? == data_version;
            let out = write(&tx, quiet)?;
            tx.commit()?;
            Ok(out)
        })();
        if done.is_err() {
            self.restore();
        }
        done
    }

    /// After a failed write: make memory equal to the file again. If even that fails, the
    /// original error is still the one to report; the next call reloads again.
    pub(crate) fn restore(&mut self) {
        if self.reload().is_err() {
            self.data_version = -1;
        }
    }

    pub fn enrollment(&self) -> Result<&Enrollment> {
        self.enrollment.as_ref().ok_or(ClientError::NotEnrolled)
    }

    /// The current document of a role (for collections: the one new records go into).
    pub fn index(&self, role: DocRole) -> Result<usize> {
        self.docs
            .iter()
            .position(|d| d.role == role && d.state == DocState::Current)
            .ok_or(ClientError::NotEnrolled)
    }

    /// The document with this id, if the phone keeps it.
    pub fn index_of(&self, id: &DocumentId) -> Option<usize> {
        self.docs.iter().position(|d| d.id == *id)
    }

    pub fn doc(&self, role: DocRole) -> Result<&LocalDoc> {
        Ok(&self.docs[self.index(role)?])
    }

    /// The campaign, read from its document; checked to be this phone's campaign. Read again
    /// only when the campaign document changed.
    pub(crate) fn campaign(&mut self) -> Result<Campaign> {
        let idx = self.index(DocRole::Campaign)?;
        self.ensure(idx)?;
        let enrollment = self.enrollment()?;
        let doc = self.docs[idx].doc()?;
        let heads = doc.get_heads();
        if heads.is_empty() {
            return Err(ClientError::NoCampaign);
        }
        if let Some((at, campaign)) = &self.campaign
            && *at == heads
        {
            return Ok(campaign.clone());
        }
        let campaign = campaign::read(doc).map_err(|r| ClientError::BadCampaign(r.to_string()))?;
        if campaign.id != enrollment.campaign {
            return Err(ClientError::BadCampaign(format!(
                "it is campaign {:?} but this phone is enrolled in {:?}",
                campaign.id, enrollment.campaign
            )));
        }
        self.campaign = Some((heads, campaign.clone()));
        Ok(campaign)
    }

    pub(crate) fn totals(&mut self) -> Result<Option<TeamTotals>> {
        let idx = self.index(DocRole::Totals)?;
        self.ensure(idx)?;
        let doc = self.docs[idx].doc()?;
        if doc.get_heads().is_empty() {
            return Ok(None);
        }
        let read = tally_core::totals_doc::read(doc).map_err(|r| {
            ClientError::Protocol(format!(
                "the team totals from the server cannot be read ({r})"
            ))
        })?;
        Ok(read.map(|(totals, computed_at)| TeamTotals {
            computed_at,
            totals,
        }))
    }

    /// Records (signatures and check-ins) in the current collection, counted once and then kept.
    pub(crate) fn collection_records(&mut self) -> Result<usize> {
        if let Some(n) = self.records {
            return Ok(n);
        }
        let idx = self.index(DocRole::Collection)?;
        self.ensure(idx)?;
        let n = collection::record_count(self.docs[idx].doc()?);
        self.records = Some(n);
        Ok(n)
    }

    /// Records in the current collection, for the status: counted in the document when it is
    /// loaded, otherwise from its receipts, without loading it (only this phone writes its
    /// collections, and every record went in with its receipt, in one transaction).
    pub(crate) fn records_for_status(&mut self) -> Result<usize> {
        let idx = self.index(DocRole::Collection)?;
        if self.docs[idx].doc.is_some() {
            return self.collection_records();
        }
        let n = store::records_in(&self.conn, &self.docs[idx].id)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Applies one local write to the collection and commits its chunk and its receipt in one
    /// transaction. On any failure nothing is kept, in memory or on disk.
    pub(crate) fn commit_local(
        &mut self,
        kind: ReceiptKind,
        record_id: &str,
        at: i64,
        details: Option<ReceiptDetails>,
        write: impl FnOnce(&mut Automerge) -> std::result::Result<(), WriteError>,
    ) -> Result<Receipt> {
        self.commit_local_keyed(kind, record_id, at, details, None, write)
    }

    /// [`State::commit_local`], keeping the record's wrapped key (sealed v2) in the same
    /// transaction as its change and receipt, until the server has it.
    pub(crate) fn commit_local_keyed(
        &mut self,
        kind: ReceiptKind,
        record_id: &str,
        at: i64,
        details: Option<ReceiptDetails>,
        wrapped_key: Option<&[u8]>,
        write: impl FnOnce(&mut Automerge) -> std::result::Result<(), WriteError>,
    ) -> Result<Receipt> {
        let idx = self.index(DocRole::Collection)?;
        self.ensure(idx)?;
        let local = &mut self.docs[idx];
        let doc = local.doc_mut()?;
        let before = doc.get_heads();
        write(doc).map_err(write_error)?;
        let new: Vec<ChangeHash> = doc
            .get_changes_meta(&before)
            .iter()
            .map(|m| m.hash)
            .collect();
        let [hash] = new[..] else {
            self.restore();
            return Err(ClientError::Corrupt(format!(
                "a write made {} changes instead of one",
                new.len()
            )));
        };
        let chunk = doc.save_after(&before);
        let doc_id = local.id;
        let receipt = Receipt {
            record_id: record_id.to_string(),
            kind,
            collected_at: at,
            change_hash: store::hash_hex(&hash),
            acknowledged: false,
            acknowledged_at: None,
            details,
            doc_id: Some(doc_id.to_string()),
            refused_at: None,
            refusal: None,
        };
        let seen = local.seen_seq;
        let seen = self.commit(|tx, quiet| {
            let seq = store::append_chunk(tx, &doc_id, &chunk, at)?;
            store::insert_receipt(tx, &receipt)?;
            if let Some(k) = wrapped_key {
                store::insert_record_key(tx, record_id, k)?;
            }
            Ok(if quiet { seq } else { seen })
        })?;
        // Durable from here on. Compaction, if due, happens in the background.
        self.appended(idx, seen);
        if let (Some(n), ReceiptKind::Signature | ReceiptKind::Checkin) = (&mut self.records, kind)
        {
            *n += 1;
        }
        Ok(receipt)
    }

    /// Folds every live document's chunks into its snapshot now, on this connection. The
    /// documents in memory already hold everything, so they stay as they are.
    pub fn compact_all(&mut self) -> Result<()> {
        for idx in 0..self.docs.len() {
            if !self.docs[idx].state.is_live() {
                continue;
            }
            let (id, role) = (self.docs[idx].id, self.docs[idx].role);
            compact::compact(&mut self.conn, &id, role, 1, false, || None)?;
        }
        Ok(())
    }

    pub(crate) fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        store::set_setting(&self.conn, key, value)
    }
}
