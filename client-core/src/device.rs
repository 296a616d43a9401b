//! [`Device`]: the phone's state (its SQLite store and its three documents) and everything a
//! canvasser does with it offline: enroll, sign, check in, withdraw, read receipts and totals.
//!
//! Every write is committed to SQLite (the automerge chunk and the receipt in one transaction)
//! before the call returns. The documents in memory never run ahead of the file: when a write to
//! the file fails, the documents are reloaded from it, so what the phone shows and syncs is
//! always what it has stored.
//!
//! A `Device` is a cheap handle (`Clone`, `Send`, `Sync`) over shared state behind a mutex, so an
//! app can sign on one thread while the sync loop runs on another. Several processes may open the
//! same home directory (the CLI's `sign` beside `sync --watch`): SQLite serializes their writes,
//! compaction ([`crate::compact`], in the background) checks the file before it swaps a snapshot
//! in, and long-running processes catch up when another connection wrote (`PRAGMA
//! data_version`): they read only the chunks they have not seen, and reload a document only when
//! someone else folded chunks they never saw into its snapshot.
//!
//! Signing does only work that does not grow with the phone's history: the receipt counts come
//! from a table triggers keep, the record count and the campaign are cached, and nothing
//! rewrites or re-reads a whole document.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::sync;
use automerge::{Automerge, ChangeHash};
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tally_core::campaign::{self, Campaign};
use tally_core::collection::{self, Checkin, SignatureForm, TakenBy};
use tally_core::doc::WriteError;
use tally_core::fields::{MAX_ID, MAX_SHORT_TEXT, normalize_postal_code};
use tally_core::seal::DuplicateKey;
use tally_core::totals::Totals;
use tally_proto::{DocumentId, Session};

use crate::compact::{self, Compactor, NUDGE_EVERY};
use crate::enroll::{self, EnrollResponse};
use crate::error::{ClientError, Result};
use crate::payload::EnrollPayload;
use crate::receipts::{AckCounts, Counts, Receipt, ReceiptDetails, ReceiptKind, SignatureReceipt};
use crate::store::{self, DocRole};

/// Records (signatures and check-ins) one collection document holds at most. The design brief
/// measured automerge's memory at about 2.2 KB per record; past this bound a phone should roll
/// over to a new collection document. This build does not roll over: it refuses new records.
pub const MAX_RECORDS: usize = 10_000;

pub use crate::compact::COMPACT_AFTER_CHUNKS;

const KEY_ENROLLMENT: &str = "enrollment";
const KEY_DROP_PLAINTEXT: &str = "drop_plaintext_on_ack";
const KEY_LAST_SYNC: &str = "last_sync";
const KEY_LAST_COMPLETE_SYNC: &str = "last_complete_sync_at";

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What enrollment stored, secrets included (kept in `settings`). Debug hides the secrets.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Enrollment {
    pub server: String,
    pub token: String,
    pub device_id: String,
    pub name: String,
    pub role: String,
    pub campaign: String,
    pub campaign_doc: DocumentId,
    pub totals_doc: DocumentId,
    pub collection_doc: DocumentId,
    /// The campaign duplicate key, hex.
    pub key: String,
    /// Stable id of this phone's storage, sent in `join` so the server can keep sync states.
    pub storage_id: String,
    pub enrolled_at: i64,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("server", &self.server)
            .field("device_id", &self.device_id)
            .field("campaign", &self.campaign)
            .finish_non_exhaustive()
    }
}

impl Enrollment {
    fn key(&self) -> Result<DuplicateKey> {
        DuplicateKey::from_hex(&self.key).map_err(ClientError::Corrupt)
    }

    fn info(&self) -> EnrollmentInfo {
        EnrollmentInfo {
            server: self.server.clone(),
            device_id: self.device_id.clone(),
            name: self.name.clone(),
            role: self.role.clone(),
            campaign: self.campaign.clone(),
            campaign_url: self.campaign_doc.to_url(),
            totals_url: self.totals_doc.to_url(),
            collection_url: self.collection_doc.to_url(),
            enrolled_at: self.enrolled_at,
        }
    }
}

/// What the phone is enrolled as (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentInfo {
    /// The server's base URL.
    pub server: String,
    /// This phone's device id (the owner of its collection).
    pub device_id: String,
    /// The name given at enrollment.
    pub name: String,
    /// "canvasser" or "organizer".
    pub role: String,
    /// The campaign id.
    pub campaign: String,
    /// The campaign document.
    pub campaign_url: String,
    /// The team totals document.
    pub totals_url: String,
    /// This phone's collection document.
    pub collection_url: String,
    /// When, ms since the epoch.
    pub enrolled_at: i64,
}

/// The team totals the server last sent, readable offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamTotals {
    /// When the server computed them, ms since the epoch.
    pub computed_at: i64,
    /// The totals.
    pub totals: Totals,
}

/// The outcome of the last sync, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// When it ended, ms since the epoch.
    pub at: i64,
    /// Whether it reached a settled state (everything local acknowledged, nothing refused).
    pub complete: bool,
    /// Errors the server sent.
    pub server_errors: Vec<String>,
    /// Why it stopped early, if it did.
    pub problem: Option<String>,
}

/// Everything `tally-device status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The enrollment, if any.
    pub enrollment: Option<EnrollmentInfo>,
    /// Pending and acknowledged counts.
    pub counts: Counts,
    /// The canvasser's line, e.g. "12 signatures not yet safe: sync when you have signal".
    pub summary: String,
    /// The pending receipts, oldest first.
    pub pending: Vec<Receipt>,
    /// Records in the collection document (against [`MAX_RECORDS`]).
    pub collection_records: usize,
    /// The campaign's title, once the campaign document has been received.
    pub campaign_title: Option<String>,
    /// When the last complete sync ended.
    pub last_complete_sync_at: Option<i64>,
    /// The last sync attempt.
    pub last_sync: Option<LastSync>,
    /// The last team totals received.
    pub totals: Option<TeamTotals>,
    /// Things the canvasser should know (e.g. a document that cannot be read).
    pub problems: Vec<String>,
}

/// One document the phone keeps, in memory.
pub(crate) struct LocalDoc {
    pub id: DocumentId,
    pub role: DocRole,
    /// The document, once loaded ([`State::ensure`]): the collection, the big one, waits for
    /// its first use (the status needs only SQL); the others load with the state.
    doc: Option<Automerge>,
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
    fn not_loaded(&self) -> ClientError {
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

/// The result of applying one message from the server.
pub(crate) struct Applied {
    pub changed: bool,
    pub acked: AckCounts,
}

/// The state behind a [`Device`]'s mutex.
pub(crate) struct State {
    pub conn: Connection,
    pub enrollment: Option<Enrollment>,
    pub docs: Vec<LocalDoc>,
    pub drop_plaintext: bool,
    data_version: i64,
    /// The campaign as last read, with the campaign document's heads it was read at.
    campaign: Option<(Vec<ChangeHash>, Campaign)>,
    /// Records in the collection, once counted (`None` after the collection changed otherwise
    /// than by a local write).
    records: Option<usize>,
    /// Whether the collection has been used: from then on a reload loads it at once.
    collection_wanted: bool,
    compactor: Compactor,
}

/// Maps a write refused by the document core to the form field at fault.
fn write_error(e: WriteError) -> ClientError {
    match e {
        WriteError::Invalid(r) => {
            const FIELDS: &[&str] = &[
                "name",
                "postal_code",
                "city",
                "email",
                "phone",
                "street",
                "riding",
                "event",
                "fsa",
                "collected_at",
                "at",
            ];
            let last = r.path.rsplit('/').next().unwrap_or_default();
            let field = FIELDS
                .iter()
                .find(|f| **f == last)
                .copied()
                .unwrap_or("record");
            ClientError::form(field, r.to_string())
        }
        WriteError::NotFound(id) => ClientError::NotFound(id),
        WriteError::Automerge(e) => {
            ClientError::Corrupt(format!("the collection document refused a write: {e}"))
        }
    }
}

fn check_plain_text(field: &'static str, value: &str, required: bool) -> Result<()> {
    let v = value.trim();
    if required && v.is_empty() {
        return Err(ClientError::form(field, "this field is required"));
    }
    if v.len() > MAX_SHORT_TEXT {
        return Err(ClientError::form(
            field,
            format!(
                "at most {MAX_SHORT_TEXT} bytes, got {}: shorten it",
                v.len()
            ),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ClientError::form(
            field,
            "must not contain control characters (line breaks, tabs)",
        ));
    }
    Ok(())
}

/// The longest postal code the form takes before normalizing ("M5V 2T6" with stray spaces or a
/// dash); longer input is refused without echoing it back.
const MAX_POSTAL_CODE_INPUT: usize = 16;

fn check_postal_code(value: &str) -> Result<()> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ClientError::form(
            "postal_code",
            "this field is required: a Canadian postal code like \"M5V 2T6\"",
        ));
    }
    if v.len() > MAX_POSTAL_CODE_INPUT {
        return Err(ClientError::form(
            "postal_code",
            format!(
                "a Canadian postal code is 6 letters and digits like \"M5V 2T6\", got {} bytes",
                v.len()
            ),
        ));
    }
    Ok(())
}

impl State {
    fn open(path: &Path) -> Result<State> {
        let conn = store::open(path)?;
        // Checkpoints (copying the WAL into the file, with an fsync of the file) would otherwise
        // land in whichever signature's commit crosses 1,000 pages: the compactor runs them.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut st = State {
            conn,
            enrollment: None,
            docs: Vec::new(),
            drop_plaintext: true,
            data_version: 0,
            campaign: None,
            records: None,
            collection_wanted: false,
            compactor: Compactor::new(path),
        };
        st.reload()?;
        Ok(st)
    }

    /// The enrollment and the plaintext setting, as stored.
    fn read_settings(conn: &Connection) -> Result<(Option<Enrollment>, bool)> {
        let enrollment = store::setting(conn, KEY_ENROLLMENT)?
            .map(|json| {
                serde_json::from_str::<Enrollment>(&json)
                    .map_err(|e| ClientError::Corrupt(format!("the stored enrollment: {e}")))
            })
            .transpose()?;
        let drop_plaintext = store::setting(conn, KEY_DROP_PLAINTEXT)?.is_none_or(|v| v != "false");
        Ok((enrollment, drop_plaintext))
    }

    /// Re-reads settings and documents from the file (one read transaction: one consistent
    /// state of it).
    pub fn reload(&mut self) -> Result<()> {
        self.data_version = store::data_version(&self.conn)?;
        let tx = self.conn.unchecked_transaction()?;
        let (enrollment, drop_plaintext) = State::read_settings(&tx)?;
        let mut docs = Vec::new();
        for row in store::doc_rows(&tx)? {
            let (doc, seen_seq) = if row.role == DocRole::Collection && !self.collection_wanted {
                (None, 0)
            } else {
                let (doc, seen) = compact::load(&tx, &row.id, row.role)?;
                (Some(doc), seen)
            };
            docs.push(LocalDoc {
                id: row.id,
                role: row.role,
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
    fn catch_up(&mut self) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let rows = store::doc_rows(&tx)?;
        let same_docs = rows.len() == self.docs.len()
            && rows
                .iter()
                .all(|r| self.docs.iter().any(|d| d.id == r.id && d.role == r.role));
        if !same_docs {
            drop(tx);
            return self.reload();
        }
        (self.enrollment, self.drop_plaintext) = State::read_settings(&tx)?;
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
        if self.docs[idx].role == DocRole::Collection {
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

    /// Loads every document not loaded yet.
    pub fn ensure_all(&mut self) -> Result<()> {
        for idx in 0..self.docs.len() {
            self.ensure(idx)?;
        }
        Ok(())
    }

    /// Counts a chunk appended to a document, and nudges the background compaction now and
    /// then. `seen_seq` is the chunk's number when no other connection had committed since
    /// this state last caught up (checked inside the appending transaction, so the document in
    /// memory holds every chunk up to it), the previous value otherwise: the next refresh then
    /// reads what it missed.
    fn appended(&mut self, idx: usize, seen_seq: i64) {
        let local = &mut self.docs[idx];
        local.seen_seq = seen_seq;
        local.unnudged += 1;
        if local.unnudged >= NUDGE_EVERY {
            local.unnudged = 0;
            let (id, role) = (local.id, local.role);
            self.compactor.nudge(id, role);
        }
    }

    /// After a failed write: make memory equal to the file again. If even that fails, the
    /// original error is still the one to report; the next call reloads again.
    fn restore(&mut self) {
        if self.reload().is_err() {
            self.data_version = -1;
        }
    }

    pub fn enrollment(&self) -> Result<&Enrollment> {
        self.enrollment.as_ref().ok_or(ClientError::NotEnrolled)
    }

    pub fn index(&self, role: DocRole) -> Result<usize> {
        self.docs
            .iter()
            .position(|d| d.role == role)
            .ok_or(ClientError::NotEnrolled)
    }

    pub fn doc(&self, role: DocRole) -> Result<&LocalDoc> {
        Ok(&self.docs[self.index(role)?])
    }

    /// The campaign, read from its document; checked to be this phone's campaign. Read again
    /// only when the campaign document changed.
    fn campaign(&mut self) -> Result<Campaign> {
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

    fn totals(&mut self) -> Result<Option<TeamTotals>> {
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

    /// Records (signatures and check-ins) in the collection, counted once and then kept.
    fn collection_records(&mut self) -> Result<usize> {
        if let Some(n) = self.records {
            return Ok(n);
        }
        let idx = self.index(DocRole::Collection)?;
        self.ensure(idx)?;
        let n = collection::record_count(self.docs[idx].doc()?);
        self.records = Some(n);
        Ok(n)
    }

    /// Records in the collection, for the status: counted in the document when it is loaded,
    /// otherwise from the receipt counts, without loading it (only this phone writes its
    /// collection, and every record went in with its receipt, in one transaction).
    fn records_for_status(&mut self, counts: &Counts) -> Result<usize> {
        let idx = self.index(DocRole::Collection)?;
        if self.docs[idx].doc.is_some() {
            return self.collection_records();
        }
        let n = counts.signatures_pending
            + counts.signatures_acknowledged
            + counts.checkins_pending
            + counts.checkins_acknowledged;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn check_room(&mut self) -> Result<()> {
        if self.collection_records()? >= MAX_RECORDS {
            return Err(ClientError::CollectionFull { max: MAX_RECORDS });
        }
        Ok(())
    }

    /// Applies one local write to the collection and commits its chunk and its receipt in one
    /// transaction. On any failure nothing is kept, in memory or on disk.
    fn commit_local(
        &mut self,
        kind: ReceiptKind,
        record_id: &str,
        at: i64,
        details: Option<ReceiptDetails>,
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
        };
        let seen = local.seen_seq;
        let committed = (|| -> Result<i64> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let quiet = store::data_version(&tx)? == self.data_version;
            let seq = store::append_chunk(&tx, &doc_id, &chunk, at)?;
            store::insert_receipt(&tx, &receipt)?;
            tx.commit()?;
            Ok(if quiet { seq } else { seen })
        })();
        let seen = match committed {
            Ok(seen) => seen,
            Err(e) => {
                self.restore();
                return Err(e);
            }
        };
        // Durable from here on. Compaction, if due, happens in the background.
        self.appended(idx, seen);
        if let (Some(n), ReceiptKind::Signature | ReceiptKind::Checkin) = (&mut self.records, kind)
        {
            *n += 1;
        }
        Ok(receipt)
    }

    /// Folds every document's chunks into its snapshot now, on this connection. The documents
    /// in memory already hold everything, so they stay as they are.
    pub fn compact_all(&mut self) -> Result<()> {
        for idx in 0..self.docs.len() {
            let (id, role) = (self.docs[idx].id, self.docs[idx].role);
            compact::compact(&mut self.conn, &id, role, 1, false, || None)?;
        }
        Ok(())
    }

    /// The receipts whose change the server's heads include.
    fn acked_hashes(&self, doc: &Automerge, server_heads: &[ChangeHash]) -> Result<Vec<String>> {
        let pending = store::pending_hashes(&self.conn)?;
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

    /// Marks acknowledged what the stored server heads of the collection already cover (after
    /// another process added changes, or at the start of a sync).
    pub fn recheck_acks(&mut self) -> Result<AckCounts> {
        let idx = self.index(DocRole::Collection)?;
        self.ensure(idx)?;
        let hashes = self.acked_hashes(self.docs[idx].doc()?, &self.docs[idx].server_heads)?;
        if hashes.is_empty() {
            return Ok(AckCounts::default());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let acked = store::acknowledge(&tx, &hashes, now_ms(), self.drop_plaintext)?;
        tx.commit()?;
        Ok(acked)
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
            self.acked_hashes(self.docs[idx].doc()?, &server_heads)?
        } else {
            Vec::new()
        };
        let seen = self.docs[idx].seen_seq;
        let committed = (|| -> Result<(AckCounts, i64)> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let quiet = store::data_version(&tx)? == self.data_version;
            let seen = match &chunk {
                Some(chunk) => {
                    let seq = store::append_chunk(&tx, &doc_id, chunk, now)?;
                    if quiet { seq } else { seen }
                }
                None => seen,
            };
            store::set_sync(&tx, &doc_id, &server_heads, sync_state.as_deref(), now)?;
            let acked = store::acknowledge(&tx, &acked_hashes, now, self.drop_plaintext)?;
            tx.commit()?;
            Ok((acked, seen))
        })();
        let (acked, seen) = match committed {
            Ok(done) => done,
            Err(e) => {
                self.restore();
                return Err(e);
            }
        };
        if chunk.is_some() {
            self.appended(idx, seen);
            if role == DocRole::Collection {
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

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        store::set_setting(&self.conn, key, value)
    }
}

/// The phone: its store and documents. See the module docs.
#[derive(Clone)]
pub struct Device {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    home: PathBuf,
    state: Mutex<State>,
    /// Bumped after every local write, so a running sync pushes it at once.
    pub(crate) writes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("home", &self.shared.home)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the phone's store in `home` (created if missing), enrolled or not.
    pub fn open(home: impl AsRef<Path>) -> Result<Device> {
        let home = home.as_ref().to_path_buf();
        store::private_home(&home)?;
        let state = State::open(&home.join(store::DB_FILE))?;
        let (writes, _) = tokio::sync::watch::channel(0);
        let device = Device {
            shared: Arc::new(Shared {
                home,
                state: Mutex::new(state),
                writes,
            }),
        };
        // The background compaction saves a copy of a document this device holds rather than
        // loading it again (see `compact`). A weak handle: the thread must not keep the device
        // alive, and it ends when the device is dropped.
        let weak = Arc::downgrade(&device.shared);
        let source: compact::Source = Arc::new(move |id: &DocumentId| {
            let device = Device {
                shared: weak.upgrade()?,
            };
            // `lock` reloads from the file first if a failed write may have left memory ahead
            // of it; no write is half done while the lock is held.
            let st = device.lock().ok()?;
            let local = st.docs.iter().find(|d| d.id == *id)?;
            Some((local.doc.as_ref()?.clone(), local.seen_seq))
        });
        device.lock()?.compactor.set_source(source);
        Ok(device)
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.shared.home
    }

    /// The SQLite file.
    pub fn database_path(&self) -> PathBuf {
        self.shared.home.join(store::DB_FILE)
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, State>> {
        match self.shared.state.lock() {
            Ok(guard) => {
                let mut guard = guard;
                if guard.data_version == -1 {
                    guard.reload()?;
                }
                Ok(guard)
            }
            Err(poisoned) => {
                // A panic mid-call may have left memory ahead of the file: reload from it.
                let mut guard = poisoned.into_inner();
                guard.reload()?;
                self.shared.state.clear_poison();
                Ok(guard)
            }
        }
    }

    fn wrote(&self) {
        self.shared.writes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Enrolls this phone: parses the organizer's payload, exchanges its code for a token over
    /// HTTP, and creates and commits the phone's collection document. The campaign document
    /// arrives with the first sync. If this fails after the server accepted the code, the code
    /// is used up: ask the organizer for a new one.
    pub fn enroll(&self, payload_json: &str, name: &str) -> Result<EnrollmentInfo> {
        let payload = EnrollPayload::parse(payload_json)?;
        check_plain_text("name", name, true)?;
        if let Some(e) = &self.lock()?.enrollment {
            return Err(ClientError::AlreadyEnrolled {
                campaign: e.campaign.clone(),
                device_id: e.device_id.clone(),
            });
        }
        let response = enroll::exchange(&payload, name.trim())?;
        self.complete_enrollment(&payload, &response, name)
    }

    /// The second half of [`Device::enroll`], for an app that did the HTTP exchange itself (and
    /// for tests): checks the server's answer against the payload and stores the enrollment and
    /// a new collection document in one transaction.
    pub fn complete_enrollment(
        &self,
        payload: &EnrollPayload,
        response: &EnrollResponse,
        name: &str,
    ) -> Result<EnrollmentInfo> {
        check_plain_text("name", name, true)?;
        let checked = response.check(payload)?;
        let mut st = self.lock()?;
        st.refresh()?;
        if let Some(e) = &st.enrollment {
            return Err(ClientError::AlreadyEnrolled {
                campaign: e.campaign.clone(),
                device_id: e.device_id.clone(),
            });
        }
        let collection =
            collection::create(&response.campaign, &response.device_id).map_err(|e| {
                ClientError::Protocol(format!(
                    "the enrollment answer cannot start a collection: {e}"
                ))
            })?;
        let mut rng = rand::rngs::OsRng;
        let collection_doc = DocumentId::random(&mut rng);
        let now = now_ms();
        let enrollment = Enrollment {
            server: payload.server.clone(),
            token: response.token.clone(),
            device_id: response.device_id.clone(),
            name: name.trim().to_string(),
            role: response.role.clone(),
            campaign: response.campaign.clone(),
            campaign_doc: checked.campaign_doc,
            totals_doc: checked.totals_doc,
            collection_doc,
            key: payload.key.to_hex(),
            storage_id: hex::encode(rand::Rng::r#gen::<[u8; 16]>(&mut rng)),
            enrolled_at: now,
        };
        let json = serde_json::to_string(&enrollment).expect("enrollment serializes");
        let committed = (|| -> Result<()> {
            let tx = st
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            store::set_setting(&tx, KEY_ENROLLMENT, &json)?;
            store::insert_doc(
                &tx,
                &collection_doc,
                DocRole::Collection,
                Some(&collection.save()),
                now,
            )?;
            store::insert_doc(&tx, &checked.campaign_doc, DocRole::Campaign, None, now)?;
            store::insert_doc(&tx, &checked.totals_doc, DocRole::Totals, None, now)?;
            tx.commit()?;
            Ok(())
        })();
        let result = committed.and_then(|()| st.reload());
        if let Err(e) = result {
            st.restore();
            return Err(e);
        }
        Ok(enrollment.info())
    }

    /// What the phone is enrolled as, if it is.
    pub fn enrollment(&self) -> Result<Option<EnrollmentInfo>> {
        Ok(self.lock()?.enrollment.as_ref().map(Enrollment::info))
    }

    /// The campaign (petition, events), once its document has been received.
    pub fn campaign(&self) -> Result<Campaign> {
        self.lock()?.campaign()
    }

    /// Takes a signature: checks the form, seals the personal fields to the campaign's
    /// organizers, computes the duplicate token, writes the record into the collection and
    /// commits it (with its receipt) before returning. Works offline. A refused form writes
    /// nothing and names the field.
    pub fn sign(&self, form: &SignatureForm) -> Result<SignatureReceipt> {
        let mut st = self.lock()?;
        // Catch up first if another connection wrote (cheap when none did).
        st.refresh()?;
        let enrollment = st.enrollment()?.clone();
        let campaign = st.campaign()?;
        check_plain_text("name", &form.name, true)?;
        check_postal_code(&form.postal_code)?;
        check_plain_text("city", &form.city, true)?;
        for (field, value) in [
            ("email", &form.email),
            ("phone", &form.phone),
            ("street", &form.street),
            ("riding", &form.riding),
            ("event", &form.event),
        ] {
            if let Some(v) = value {
                check_plain_text(field, v, false)?;
            }
        }
        st.check_room()?;
        let now = now_ms();
        let key = enrollment.key()?;
        let signature = form.prepare(&TakenBy {
            campaign: &campaign,
            key: &key,
            canvasser: &enrollment.device_id,
            now,
            id: collection::random_id(),
        })?;
        let clean = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let details = ReceiptDetails {
            name: form.name.trim().to_string(),
            postal_code: normalize_postal_code(&form.postal_code).ok(),
            city: Some(form.city.trim().to_string()),
            email: clean(&form.email),
            phone: clean(&form.phone),
            street: clean(&form.street),
            riding: clean(&form.riding),
            event: signature.event.clone(),
            walk_in: None,
        };
        let receipt = st.commit_local(
            ReceiptKind::Signature,
            &signature.id,
            now,
            Some(details),
            |doc| collection::add_signature(doc, &signature, &campaign),
        )?;
        let counts = store::counts(&st.conn)?;
        drop(st);
        self.wrote();
        Ok(SignatureReceipt {
            record_id: receipt.record_id,
            change_hash: receipt.change_hash,
            collected_at: now,
            city: signature.city,
            fsa: signature.fsa,
            event: signature.event,
            signatures_not_yet_safe: counts.signatures_pending,
        })
    }

    /// Checks someone in to an event (a walk-in, or pre-registered). Only an attendee token (an
    /// HMAC of the normalized name) goes into the document. Committed before returning.
    pub fn checkin(&self, event: &str, name: &str, walk_in: bool) -> Result<Receipt> {
        let mut st = self.lock()?;
        // Catch up first if another connection wrote (cheap when none did).
        st.refresh()?;
        let enrollment = st.enrollment()?.clone();
        let campaign = st.campaign()?;
        check_plain_text("name", name, true)?;
        check_plain_text("event", event, true)?;
        let event = event.trim();
        if !campaign.events.contains_key(event) {
            let known: Vec<&str> = campaign.events.keys().map(String::as_str).collect();
            return Err(ClientError::form(
                "event",
                format!(
                    "no event {event:?} in this campaign; known events: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        st.check_room()?;
        let now = now_ms();
        let key = enrollment.key()?;
        let checkin = Checkin {
            id: collection::random_id(),
            event: event.to_string(),
            attendee: key.attendee_token(name),
            at: now,
            by: enrollment.device_id.clone(),
            walk_in,
            withdrawn: false,
        };
        let details = ReceiptDetails {
            name: name.trim().to_string(),
            event: Some(event.to_string()),
            walk_in: Some(walk_in),
            ..ReceiptDetails::default()
        };
        let receipt = st.commit_local(
            ReceiptKind::Checkin,
            &checkin.id,
            now,
            Some(details),
            |doc| collection::add_checkin(doc, &checkin, &campaign),
        )?;
        drop(st);
        self.wrote();
        Ok(receipt)
    }

    /// Withdraws a signature or a check-in of this phone (the record stays, marked withdrawn).
    /// Committed before returning; works offline.
    pub fn withdraw(&self, record_id: &str) -> Result<Receipt> {
        let record_id = record_id.trim();
        if record_id.is_empty() {
            return Err(ClientError::form(
                "record_id",
                "this field is required: the id `sign` or `checkin` printed",
            ));
        }
        if record_id.len() > MAX_ID || record_id.chars().any(char::is_control) {
            return Err(ClientError::form(
                "record_id",
                format!(
                    "a record id is at most {MAX_ID} letters and digits, got {} bytes: check the id",
                    record_id.len()
                ),
            ));
        }
        let mut st = self.lock()?;
        st.refresh()?;
        st.enrollment()?;
        let idx = st.index(DocRole::Collection)?;
        st.ensure(idx)?;
        let doc = st.docs[idx].doc()?;
        let found_sig = collection::signature(doc, record_id)
            .map_err(|r| ClientError::Corrupt(r.to_string()))?;
        let found_checkin = if found_sig.is_none() {
            collection::checkin(doc, record_id).map_err(|r| ClientError::Corrupt(r.to_string()))?
        } else {
            None
        };
        let (kind, withdrawn) = match (&found_sig, &found_checkin) {
            (Some(s), _) => (ReceiptKind::SignatureWithdrawal, s.withdrawn),
            (None, Some(c)) => (ReceiptKind::CheckinWithdrawal, c.withdrawn),
            (None, None) => return Err(ClientError::NotFound(record_id.to_string())),
        };
        if withdrawn {
            return Err(ClientError::AlreadyWithdrawn(record_id.to_string()));
        }
        let details = store::receipts_of(&st.conn, record_id)?
            .into_iter()
            .find_map(|r| r.details);
        let now = now_ms();
        let receipt = st.commit_local(kind, record_id, now, details, |doc| {
            if kind == ReceiptKind::SignatureWithdrawal {
                collection::withdraw_signature(doc, record_id)
            } else {
                collection::withdraw_checkin(doc, record_id)
            }
        })?;
        drop(st);
        self.wrote();
        Ok(receipt)
    }

    /// Receipts not yet acknowledged by the server, oldest first.
    pub fn pending(&self) -> Result<Vec<Receipt>> {
        let mut st = self.lock()?;
        st.refresh()?;
        store::receipts(&st.conn, true)
    }

    /// Every receipt, oldest first.
    pub fn receipts(&self) -> Result<Vec<Receipt>> {
        let mut st = self.lock()?;
        st.refresh()?;
        store::receipts(&st.conn, false)
    }

    /// Pending and acknowledged counts ([`Counts::summary`] gives the canvasser's line).
    pub fn counts(&self) -> Result<Counts> {
        let mut st = self.lock()?;
        st.refresh()?;
        store::counts(&st.conn)
    }

    /// The last team totals received, with when the server computed them; `None` before the
    /// first sync brought them.
    pub fn totals(&self) -> Result<Option<TeamTotals>> {
        let mut st = self.lock()?;
        st.refresh()?;
        st.totals()
    }

    /// Whether acknowledged records lose their display plaintext (on by default).
    pub fn drop_plaintext_on_ack(&self) -> Result<bool> {
        Ok(self.lock()?.drop_plaintext)
    }

    /// Sets [`Device::drop_plaintext_on_ack`]. Turning it on does not bring back plaintext
    /// already dropped; turning it on drops nothing retroactively either (the next
    /// acknowledgements follow the new setting).
    pub fn set_drop_plaintext_on_ack(&self, on: bool) -> Result<()> {
        let mut st = self.lock()?;
        st.set_setting(KEY_DROP_PLAINTEXT, if on { "true" } else { "false" })?;
        st.drop_plaintext = on;
        Ok(())
    }

    /// Merges a document received by other means (e.g. the campaign document handed over on a
    /// file, or a test fixture) into the stored campaign or totals document. `url` is its
    /// `automerge:` URL or bare id and must be one of this phone's campaign or totals
    /// documents; the phone's own collection is written only here and never imported.
    pub fn import_document(&self, url: &str, bytes: &[u8]) -> Result<()> {
        let id = DocumentId::from_url(url)
            .or_else(|_| url.parse::<DocumentId>())
            .map_err(|e| {
                ClientError::form("document", format!("{url:?} is not a document URL: {e}"))
            })?;
        let mut st = self.lock()?;
        st.enrollment()?;
        let idx = st.docs.iter().position(|d| d.id == id).ok_or_else(|| {
            ClientError::form(
                "document",
                format!("{url} is not a document of this phone's campaign"),
            )
        })?;
        if st.docs[idx].role == DocRole::Collection {
            return Err(ClientError::form(
                "document",
                "the phone's own collection is written only on the phone; it cannot be imported",
            ));
        }
        st.ensure(idx)?;
        let local = &mut st.docs[idx];
        let seen = local.seen_seq;
        let doc = local.doc_mut()?;
        let before = doc.get_heads();
        if let Err(e) = doc.load_incremental(bytes) {
            st.restore();
            return Err(ClientError::form(
                "document",
                format!("not an automerge document: {e}"),
            ));
        }
        if doc.get_heads() == before {
            return Ok(());
        }
        let chunk = doc.save_after(&before);
        let data_version = st.data_version;
        let appended = (|| -> Result<i64> {
            let tx = st
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let quiet = store::data_version(&tx)? == data_version;
            let seq = store::append_chunk(&tx, &id, &chunk, now_ms())?;
            tx.commit()?;
            Ok(if quiet { seq } else { seen })
        })();
        match appended {
            Ok(seen) => st.appended(idx, seen),
            Err(e) => {
                st.restore();
                return Err(e);
            }
        }
        Ok(())
    }

    /// A copy of one of the phone's documents (for inspection, export and tests).
    pub fn document(&self, role: DocRole) -> Result<Automerge> {
        let mut st = self.lock()?;
        let idx = st.index(role)?;
        st.ensure(idx)?;
        Ok(st.docs[idx].doc()?.clone())
    }

    /// Loads the collection document now. Reading the status does not need it; signing,
    /// checking in, withdrawing and syncing load it at their first use (at 10,000 records
    /// that takes about 0.3 s and most of the phone's memory), so an app can call this in the
    /// background once the status is on screen.
    pub fn preload(&self) -> Result<()> {
        self.lock()?.ensure_all()
    }

    /// The heads the server last sent for one of the phone's documents.
    pub fn server_heads(&self, role: DocRole) -> Result<Vec<ChangeHash>> {
        Ok(self.lock()?.doc(role)?.server_heads.clone())
    }

    /// Folds every document's incremental chunks into its snapshot now (the phone also does it
    /// in the background as chunks accumulate).
    pub fn compact(&self) -> Result<()> {
        self.lock()?.compact_all()
    }

    /// Everything `tally-device status` shows. Works before enrollment too.
    pub fn status(&self) -> Result<Status> {
        let mut st = self.lock()?;
        st.refresh()?;
        let counts = store::counts(&st.conn)?;
        let pending = store::receipts(&st.conn, true)?;
        let mut problems = Vec::new();
        let (campaign_title, totals, collection_records) = if st.enrollment.is_some() {
            let title = match st.campaign() {
                Ok(c) => Some(c.title),
                Err(ClientError::NoCampaign) => {
                    problems.push(ClientError::NoCampaign.to_string());
                    None
                }
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            };
            let totals = st.totals().unwrap_or_else(|e| {
                problems.push(e.to_string());
                None
            });
            (title, totals, st.records_for_status(&counts)?)
        } else {
            problems.push(ClientError::NotEnrolled.to_string());
            (None, None, 0)
        };
        let last_sync =
            store::setting(&st.conn, KEY_LAST_SYNC)?.and_then(|j| serde_json::from_str(&j).ok());
        let last_complete_sync_at =
            store::setting(&st.conn, KEY_LAST_COMPLETE_SYNC)?.and_then(|v| v.parse().ok());
        Ok(Status {
            enrollment: st.enrollment.as_ref().map(Enrollment::info),
            summary: counts.summary(),
            counts,
            pending,
            collection_records,
            campaign_title,
            last_complete_sync_at,
            last_sync,
            totals,
            problems,
        })
    }

    /// Records the outcome of a sync (and has the background compaction look at what the sync
    /// appended).
    pub(crate) fn record_sync(&self, last: &LastSync) -> Result<()> {
        let mut st = self.lock()?;
        let json = serde_json::to_string(last).expect("last sync serializes");
        st.set_setting(KEY_LAST_SYNC, &json)?;
        if last.complete {
            st.set_setting(KEY_LAST_COMPLETE_SYNC, &last.at.to_string())?;
        }
        for idx in 0..st.docs.len() {
            let (id, role) = (st.docs[idx].id, st.docs[idx].role);
            st.compactor.nudge(id, role);
        }
        // Push dropped plaintext out of the WAL file too.
        let _ = st.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        Ok(())
    }
}
