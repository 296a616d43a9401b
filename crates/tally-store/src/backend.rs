//! The storage interface a database backend implements, so that the server (and the
//! conformance tests) can hold any of them as a `dyn Storage`.
//!
//! Four traits, one per scope of work:
//! - [`Storage`]: the store itself. Each call is its own transaction (devices and tokens,
//!   invites, quarantine, the audit chain, record keys, compaction, sync states), and
//!   [`Storage::read_with`] / [`Storage::write_with`] run a caller's closure inside one snapshot
//!   or one write transaction, committed before the call returns `Ok`: that commit is the
//!   durability point the server acknowledges after, whatever the backend.
//! - [`Reads`]: what a closure may read inside one snapshot (documents, totals).
//! - [`Writes`]: what a closure may write inside one transaction (documents, chunks, sync
//!   states, quarantine, audit, the projection), and read back before it commits.
//! - [`Projecting`]: a projection batch inside a write (rows now, netted aggregate cells at
//!   [`Projecting::flush`]).
//!
//! Every failure is a [`StoreError`], which names no backend. SQLite ([`crate::Store`])
//! implements them; the typed helpers on `dyn Storage` (`read`, `write`, `write_with_error`)
//! give callers the closure API with their own result and error types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tally_core::cells::SignatureRow;
use tally_core::collection::{Checkin, Collection};
use tally_core::review::{Review, Sheet, Strike};
use tally_core::totals::Totals;
use tally_core::validate::Role;

use crate::{
    AuditBroken, AuditEntry, AuditFilter, Batch, ChunkStats, Device, DocFilter, DocMeta, Erasure,
    Filter, InviteCode, KeyOutcome, NewAudit, NewQuarantine, QuarantineEntry, QuarantineFilter,
    QuarantineOutcome, QuarantineQuota, ReadTx, Replaces, Result, Store, StoreError, StoredDoc,
    StoredKey, Token, TokenRefusal, WriteTx,
};

/// A change stored in the database, as [`Storage::subscribe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A document got new chunks (its id).
    Document(String),
    /// A device was revoked (its id): its connections are to close.
    Revoked(String),
    /// A campaign's projection changed (its id): its totals are to be sent again.
    Projected(String),
    /// The subscription was cut and is back: changes stored since `since_ms` (ms since the
    /// epoch) may have gone unheard; reload what is held, close the devices revoked since.
    Resync {
        /// When the subscription was cut.
        since_ms: i64,
    },
    /// The subscription is cut (the message says why); it retries by itself.
    Lost(String),
}

/// A running subscription ([`Storage::subscribe`]); dropping it stops it.
#[derive(Debug)]
pub struct Subscription {
    stop: Arc<AtomicBool>,
}

impl Subscription {
    /// A subscription whose worker stops once `stop` is set.
    pub fn new(stop: Arc<AtomicBool>) -> Subscription {
        Subscription { stop }
    }
}

/// Held while this server does background work that one server at a time must do
/// ([`Storage::try_exclusive`]); dropping it lets another server do it.
pub struct Exclusive<'a>(Option<Box<dyn Send + 'a>>);

impl<'a> Exclusive<'a> {
    /// Nothing to let go of: one process owns the database.
    pub fn alone() -> Exclusive<'static> {
        Exclusive(None)
    }

    /// Held as long as `holder` is; `holder` lets go when dropped.
    pub fn held_by(holder: impl Send + 'a) -> Exclusive<'a> {
        Exclusive(Some(Box::new(holder)))
    }
}

impl std::fmt::Debug for Exclusive<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Exclusive(held)"
        } else {
            "Exclusive(alone)"
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An acknowledged change waiting for the projector ([`Writes::take_projection`]): what it
/// does to the projection, as the server encoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its place in the queue: the projector applies changes in this order.
    pub id: i64,
    /// The campaign whose projection it changes.
    pub campaign: String,
    /// The document the change was made to.
    pub doc_id: String,
    /// How many records it touches.
    pub records: u64,
    /// When it was stored (ms since the epoch).
    pub at: i64,
    /// The server's encoding of the records.
    pub payload: Vec<u8>,
}

/// How far the projection is behind what was acknowledged ([`Reads::projection_status`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Changes acknowledged and not yet projected.
    pub changes: u64,
    /// The records they touch.
    pub records: u64,
    /// When the oldest of them was stored (ms since the epoch).
    pub oldest_at: Option<i64>,
    /// The queue place of the newest of them: a reader that waits until no change at or
    /// before it is left sees everything acknowledged before it asked.
    pub last: Option<i64>,
    /// The queue place of the oldest of them.
    pub first: Option<i64>,
}

impl ProjectionStatus {
    /// Whether every change up to queue place `last` is projected.
    pub fn covers(&self, last: i64) -> bool {
        self.first.is_none_or(|first| first > last)
    }

    /// How long the oldest change has waited at `now_ms`; 0 when none waits.
    pub fn lag_ms(&self, now_ms: i64) -> u64 {
        self.oldest_at
            .map_or(0, |at| u64::try_from(now_ms - at).unwrap_or(0))
    }
}

/// What may be read inside one snapshot.
pub trait Reads {
    /// The meta of a document.
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>>;
    /// A document's stored bytes (snapshot and incremental chunks).
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>>;
    /// The documents matching `filter`.
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>>;
    /// A campaign's totals, from the aggregate cells.
    fn totals(&self, campaign: &str) -> Result<Totals>;
    /// A campaign's totals narrowed by `filter` (the cells when it is empty, else a scan).
    fn query_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals>;
    /// A campaign's totals by scanning the rows matching `filter` (no aggregates).
    fn scan_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals>;
    /// Whether the campaign has a signature with this id.
    fn has_signature(&self, campaign: &str, sig_id: &str) -> Result<bool>;
    /// Signature rows (copies) in the projection, all campaigns.
    fn signature_rows(&self) -> Result<u64>;
    /// The first device of a device's phone's chain (its own id if unknown).
    fn lineage_of(&self, device_id: &str) -> Result<String>;
    /// Every projection table as sorted text lines (what a reindex must reproduce).
    fn projection_dump(&self) -> Result<BTreeMap<&'static str, Vec<String>>>;
    /// How far the projection is behind what was acknowledged: of one campaign, or of every
    /// campaign (`None`).
    fn projection_status(&self, campaign: Option<&str>) -> Result<ProjectionStatus>;
}

/// What may be written inside one transaction (and read back before it commits).
pub trait Writes: Reads {
    /// Declares a document; `true` if new; other stored meta is [`StoreError::Conflict`].
    fn put_meta(&self, meta: &DocMeta) -> Result<bool>;
    /// Appends an incremental chunk to a declared document; returns its seq.
    fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64>;
    /// Holds the document's lock until the transaction ends, so that no one else (another
    /// server sharing the database) stores a change to it meanwhile: what is read of it after
    /// this is what the write follows. A document not declared yet has nothing to lock.
    /// (SQLite: the transaction already holds the file's one writer.)
    fn lock_document(&self, doc_id: &str) -> Result<()>;
    /// Saves (replaces) a peer's sync state of a document.
    fn save_sync_state(&self, peer_key: &str, doc_id: &str, bytes: &[u8], now: i64) -> Result<()>;
    /// Quarantines a rejected message (no quota).
    fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64>;
    /// Quarantines a refusal within the quotas.
    fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome>;
    /// Appends an entry to the audit chain.
    fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry>;
    /// Claims collection records for the lineage of `owner` (a phone's chain of devices):
    /// a record id another lineage claimed is [`StoreError::Claimed`], and the caller rolls
    /// the write back. `container` is `signatures` or `checkins`.
    fn claim_records(
        &self,
        campaign: &str,
        owner: &str,
        container: &'static str,
        ids: &[&str],
    ) -> Result<()>;
    /// Queues what an acknowledged change does to `campaign`'s projection (`records` records,
    /// encoded in `payload`), for the projector; returns its place in the queue.
    fn enqueue_projection(
        &self,
        campaign: &str,
        doc_id: &str,
        records: u64,
        payload: &[u8],
        now: i64,
    ) -> Result<i64>;
    /// Takes the oldest queued changes (in queue order, about `max_records` records, at
    /// least one change) out of the queue: the caller projects them in this same write, so
    /// that they are projected exactly once or stay queued. `None` when another server is
    /// projecting (PostgreSQL); empty when nothing waits.
    fn take_projection(&self, max_records: u64) -> Result<Option<Vec<Queued>>>;
    /// A projection batch for `campaign` in this write.
    fn projection_batch(&self, campaign: &str) -> Box<dyn Projecting + '_>;
    /// Deletes every projection row, the claims and the queue (reindex: the documents hold
    /// everything that was queued).
    fn clear_projection_rows(&self) -> Result<()>;
    /// Claims every collection record the rows hold for its document's lineage (reindex,
    /// after the rows).
    fn rebuild_claims(&self) -> Result<()>;
    /// Writes the rows of a collection's records (no aggregates); (signatures, check-ins).
    fn project_collection(
        &self,
        doc_id: &str,
        campaign: &str,
        collection: &Collection,
        timezone: &str,
    ) -> Result<(u64, u64)>;
    /// Writes the rows of a review's strikes and sheets (no aggregates); (strikes, sheets).
    fn project_review(&self, campaign: &str, review: &Review) -> Result<(u64, u64)>;
    /// Recomputes the aggregate cells from the rows; returns the number of cells.
    fn rebuild_aggregates(&self) -> Result<u64>;
    /// Rebuilds the aggregates if a schema upgrade left them stale; whether it did.
    fn rebuild_aggregates_if_stale(&self) -> Result<bool>;
}

/// A projection batch: records applied in the order given, as if one after the other,
/// aggregate cells netted and written once at [`Projecting::flush`]. SQLite writes each record's
/// row as it comes; PostgreSQL collects the records and writes everything at the flush, in a
/// few statements per table (a batch sees the rows of the batches flushed before it).
pub trait Projecting {
    /// Projects signature `id` of collection `doc_id`, as its row.
    fn signature(&mut self, doc_id: &str, id: &str, row: &SignatureRow) -> Result<()>;
    /// Projects a check-in of collection `doc_id`.
    fn checkin(&mut self, doc_id: &str, c: &Checkin) -> Result<()>;
    /// Projects a strike (or its revocation).
    fn strike(&mut self, s: &Strike) -> Result<()>;
    /// Projects a paper sheet.
    fn sheet(&mut self, s: &Sheet) -> Result<()>;
    /// Writes the netted aggregate changes.
    fn flush(self: Box<Self>) -> Result<()>;
}

/// A storage backend: one database that one or more servers write through.
pub trait Storage: Send + Sync {
    /// Runs `f` inside one snapshot.
    fn read_with(&self, f: &mut dyn FnMut(&dyn Reads) -> Result<()>) -> Result<()>;
    /// Runs `f` inside one write transaction and commits it before returning `Ok`; if `f`
    /// fails, or the commit does, nothing `f` wrote is kept.
    fn write_with(&self, f: &mut dyn FnMut(&dyn Writes) -> Result<()>) -> Result<()>;

    /// Like `write_with`, for a long write that short ones should not wait for: never grouped
    /// with other writes (SQLite's group commit, [`crate::Store::write_alone_with_error`]).
    fn write_alone_with(&self, f: &mut dyn FnMut(&dyn Writes) -> Result<()>) -> Result<()> {
        self.write_with(f)
    }

    /// See [`Writes::put_meta`]; commits on its own.
    fn put_meta(&self, meta: &DocMeta) -> Result<bool>;
    /// See [`Writes::append_chunk`]; commits on its own.
    fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64>;
    /// See [`Reads::doc_meta`].
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>>;
    /// See [`Reads::load_document`].
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>>;
    /// Replaces a document's chunks up to `through_seq` by `snapshot`; `false` if they moved.
    fn compact(&self, doc_id: &str, snapshot: &[u8], through_seq: i64, now: i64) -> Result<bool>;
    /// How many chunks (and bytes) a document has since its snapshot.
    fn chunks_since_snapshot(&self, doc_id: &str) -> Result<ChunkStats>;
    /// See [`Reads::list_documents`].
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>>;
    /// Every campaign document.
    fn list_campaigns(&self) -> Result<Vec<DocMeta>>;
    /// Documents owned by a device.
    fn count_documents_by_owner(&self, owner: &str) -> Result<u64>;
    /// Collections of a device in a campaign.
    fn count_collections(&self, owner: &str, campaign: &str) -> Result<u64>;
    /// See [`Writes::save_sync_state`]; commits on its own.
    fn save_sync_state(&self, peer_key: &str, doc_id: &str, bytes: &[u8], now: i64) -> Result<()>;
    /// A peer's saved sync state of a document.
    fn load_sync_state(&self, peer_key: &str, doc_id: &str) -> Result<Option<Vec<u8>>>;

    /// Hears the changes stored in the database by anyone, until the returned subscription
    /// is dropped: `on_change` is called from a thread of the backend's own. `None` when no
    /// one else can write the database (SQLite: one server holds the data folder's lock, so
    /// every change is its own).
    fn subscribe(
        &self,
        on_change: Arc<dyn Fn(Change) + Send + Sync>,
    ) -> Result<Option<Subscription>>;

    /// Background work that must run once however many servers share the database (a
    /// campaign's totals document rewrite, a document's compaction), named by `what`: `Some`
    /// while no other server does the same work, `None` if one does (it is then theirs to do;
    /// try again later). Held until the [`Exclusive`] is dropped, or the server dies.
    fn try_exclusive(&self, what: &str) -> Result<Option<Exclusive<'_>>>;

    /// Whether a working admin device exists.
    fn has_admin(&self) -> Result<bool>;
    /// Creates the first admin device and its token.
    fn create_admin(&self, name: &str, now: i64) -> Result<(Device, Token)>;
    /// Creates a one-time invite.
    fn create_invite(
        &self,
        campaign: Option<&str>,
        role: Role,
        ttl_ms: i64,
        now: i64,
    ) -> Result<(String, InviteCode)>;
    /// Redeems an invite, optionally replacing a device the phone proves it was.
    fn redeem_invite_replacing(
        &self,
        code: &str,
        device_name: &str,
        now: i64,
        replaces: Option<Replaces<'_>>,
    ) -> Result<(Device, Token)>;
    /// [`Storage::redeem_invite_replacing`] for a new phone.
    fn redeem_invite(&self, code: &str, device_name: &str, now: i64) -> Result<(Device, Token)> {
        self.redeem_invite_replacing(code, device_name, now, None)
    }
    /// The device a token belongs to (never expiring here), recording that it was seen; `None`
    /// if the token is unknown or its device revoked.
    fn authenticate(&self, token: &str, now: i64) -> Result<Option<Device>> {
        let Ok(mut device) = self.check_token(token, now, None)? else {
            return Ok(None);
        };
        if self.record_seen(&device, now)? {
            device.last_seen = Some(now);
        }
        Ok(Some(device))
    }
    /// The device a token belongs to, if it may act now.
    fn check_token(
        &self,
        token: &str,
        now: i64,
        idle_expiry_ms: Option<i64>,
    ) -> Result<std::result::Result<Device, TokenRefusal>>;
    /// Records that a device was seen; whether it was written.
    fn record_seen(&self, device: &Device, now: i64) -> Result<bool>;
    /// Revokes a device; whether it was working.
    fn revoke_device(&self, device_id: &str, now: i64) -> Result<bool>;
    /// A device by id.
    fn device(&self, device_id: &str) -> Result<Option<Device>>;
    /// Every device.
    fn list_devices(&self) -> Result<Vec<Device>>;
    /// Devices revoked since a time.
    fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>>;

    /// See [`Writes::quarantine`]; commits on its own.
    fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64>;
    /// See [`Writes::quarantine_entry`]; commits on its own.
    fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome>;
    /// Quarantined messages matching `filter`.
    fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>>;
    /// How many messages are quarantined.
    fn quarantine_len(&self) -> Result<u64>;

    /// See [`Writes::audit`]; commits on its own.
    fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry>;
    /// Audit entries matching `filter`.
    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;
    /// Checks the audit chain: entries checked, or the first broken one.
    fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBroken>>;

    /// Stores record keys uploaded by a device.
    fn put_keys(
        &self,
        campaign: &str,
        device: &str,
        keys: &[(String, Vec<u8>)],
        max_per_device: u64,
        now: i64,
    ) -> Result<Vec<KeyOutcome>>;
    /// A page of a campaign's keys.
    fn list_keys(&self, campaign: &str, after: Option<&str>, limit: u32) -> Result<Vec<StoredKey>>;
    /// Signature ids of a campaign with this duplicate token.
    fn records_with_token(&self, campaign: &str, token: &str) -> Result<Vec<String>>;
    /// Which of these signature ids the campaign does not have.
    fn unknown_signatures(&self, campaign: &str, records: &[String]) -> Result<Vec<String>>;
    /// The erased record ids of a campaign.
    fn erased_records(&self, campaign: &str) -> Result<Vec<String>>;
    /// Erases records' keys for good.
    fn erase_records(
        &self,
        campaign: &str,
        records: &[String],
        by: &str,
        now: i64,
    ) -> Result<Erasure>;
    /// After an erasure: makes sure no earlier version of an erased row stays in the
    /// database's files (SQLite: the WAL checkpointed and truncated).
    fn scrub_erased(&self) -> Result<()>;

    /// The space the database takes, in bytes (SQLite: the file and its WAL), for metrics.
    fn database_bytes(&self) -> Result<u64>;

    /// Group commits so far and the writes they held, where the backend groups writes itself
    /// (SQLite; PostgreSQL groups the flushes of concurrent commits on its own).
    fn group_commits(&self) -> Option<(u64, u64)> {
        None
    }
}

impl dyn Storage + '_ {
    /// Runs `f` inside one snapshot and returns what it returns.
    pub fn read<T>(&self, f: impl FnOnce(&dyn Reads) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.read_with(&mut |r| {
            let f = f.take().ok_or_else(called_twice)?;
            out = Some(f(r)?);
            Ok(())
        })?;
        out.ok_or_else(called_twice)
    }

    /// Runs `f` inside one write transaction, committed before this returns `Ok`.
    pub fn write<T>(&self, f: impl FnOnce(&dyn Writes) -> Result<T>) -> Result<T> {
        self.write_with_error(f)
    }

    /// Like `write`, for a closure with its own error type: when it fails, the transaction
    /// rolls back and its error is returned as it was.
    pub fn write_with_error<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn Writes) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        with_own_error(f, |g| self.write_with(g))
    }

    /// Like `write_with_error`, in a transaction never grouped with other writes (see
    /// [`Storage::write_alone_with`]).
    pub fn write_alone_with_error<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn Writes) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        with_own_error(f, |g| self.write_alone_with(g))
    }
}

/// Runs `f`, with its own error type, through `write` (a backend's write call): when `f`
/// fails, the transaction rolls back and `f`'s error is returned as it was.
fn with_own_error<T, E: From<StoreError>>(
    f: impl FnOnce(&dyn Writes) -> std::result::Result<T, E>,
    write: impl FnOnce(&mut dyn FnMut(&dyn Writes) -> Result<()>) -> Result<()>,
) -> std::result::Result<T, E> {
    let mut f = Some(f);
    let mut out: Option<std::result::Result<T, E>> = None;
    let done = write(&mut |w| {
        let f = f.take().ok_or_else(called_twice)?;
        match f(w) {
            Ok(v) => {
                out = Some(Ok(v));
                Ok(())
            }
            Err(e) => {
                out = Some(Err(e));
                // Any error rolls the transaction back; the caller's own is returned below.
                Err(StoreError::Invalid("rolled back by the caller".into()))
            }
        }
    });
    match (done, out) {
        (_, Some(Err(e))) => Err(e),
        (Ok(()), Some(Ok(v))) => Ok(v),
        (Err(e), _) => Err(e.into()),
        (Ok(()), None) => Err(called_twice().into()),
    }
}

fn called_twice() -> StoreError {
    StoreError::Invalid(
        "a storage backend ran a transaction's closure other than once: a bug in the backend"
            .into(),
    )
}

// ---------------------------------------------------------------------------------------------
// SQLite.

impl Reads for ReadTx<'_> {
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        ReadTx::doc_meta(self, doc_id)
    }
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        ReadTx::load_document(self, doc_id)
    }
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        ReadTx::list_documents(self, filter)
    }
    fn totals(&self, campaign: &str) -> Result<Totals> {
        ReadTx::totals(self, campaign)
    }
    fn query_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        ReadTx::query_totals(self, campaign, filter)
    }
    fn scan_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        ReadTx::scan_totals(self, campaign, filter)
    }
    fn has_signature(&self, campaign: &str, sig_id: &str) -> Result<bool> {
        ReadTx::has_signature(self, campaign, sig_id)
    }
    fn signature_rows(&self) -> Result<u64> {
        ReadTx::signature_rows(self)
    }
    fn lineage_of(&self, device_id: &str) -> Result<String> {
        ReadTx::lineage_of(self, device_id)
    }
    fn projection_dump(&self) -> Result<BTreeMap<&'static str, Vec<String>>> {
        ReadTx::projection_dump(self)
    }
    fn projection_status(&self, campaign: Option<&str>) -> Result<ProjectionStatus> {
        ReadTx::projection_status(self, campaign)
    }
}

impl Reads for WriteTx<'_> {
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        ReadTx::doc_meta(self, doc_id)
    }
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        ReadTx::load_document(self, doc_id)
    }
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        ReadTx::list_documents(self, filter)
    }
    fn totals(&self, campaign: &str) -> Result<Totals> {
        ReadTx::totals(self, campaign)
    }
    fn query_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        ReadTx::query_totals(self, campaign, filter)
    }
    fn scan_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        ReadTx::scan_totals(self, campaign, filter)
    }
    fn has_signature(&self, campaign: &str, sig_id: &str) -> Result<bool> {
        ReadTx::has_signature(self, campaign, sig_id)
    }
    fn signature_rows(&self) -> Result<u64> {
        ReadTx::signature_rows(self)
    }
    fn lineage_of(&self, device_id: &str) -> Result<String> {
        ReadTx::lineage_of(self, device_id)
    }
    fn projection_dump(&self) -> Result<BTreeMap<&'static str, Vec<String>>> {
        ReadTx::projection_dump(self)
    }
    fn projection_status(&self, campaign: Option<&str>) -> Result<ProjectionStatus> {
        ReadTx::projection_status(self, campaign)
    }
}

impl Writes for WriteTx<'_> {
    fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        WriteTx::put_meta(self, meta)
    }
    fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        WriteTx::append_chunk(self, doc_id, bytes, now)
    }
    fn lock_document(&self, _doc_id: &str) -> Result<()> {
        // A write transaction holds the file's one writer (BEGIN IMMEDIATE).
        Ok(())
    }
    fn save_sync_state(&self, peer_key: &str, doc_id: &str, bytes: &[u8], now: i64) -> Result<()> {
        WriteTx::save_sync_state(self, peer_key, doc_id, bytes, now)
    }
    fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        WriteTx::quarantine(self, device_id, doc_id, reason, bytes, now)
    }
    fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        WriteTx::quarantine_entry(self, entry, quota)
    }
    fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        WriteTx::audit(self, e)
    }
    fn claim_records(
        &self,
        campaign: &str,
        owner: &str,
        container: &'static str,
        ids: &[&str],
    ) -> Result<()> {
        WriteTx::claim_records(self, campaign, owner, container, ids)
    }
    fn enqueue_projection(
        &self,
        campaign: &str,
        doc_id: &str,
        records: u64,
        payload: &[u8],
        now: i64,
    ) -> Result<i64> {
        WriteTx::enqueue_projection(self, campaign, doc_id, records, payload, now)
    }
    fn take_projection(&self, max_records: u64) -> Result<Option<Vec<Queued>>> {
        // The write holds the file's one writer: no one else projects meanwhile.
        WriteTx::take_projection(self, max_records).map(Some)
    }
    fn projection_batch(&self, campaign: &str) -> Box<dyn Projecting + '_> {
        Box::new(WriteTx::projection_batch(self, campaign))
    }
    fn clear_projection_rows(&self) -> Result<()> {
        WriteTx::clear_projection_rows(self)
    }
    fn rebuild_claims(&self) -> Result<()> {
        WriteTx::rebuild_claims(self)
    }
    fn project_collection(
        &self,
        doc_id: &str,
        campaign: &str,
        collection: &Collection,
        timezone: &str,
    ) -> Result<(u64, u64)> {
        WriteTx::project_collection(self, doc_id, campaign, collection, timezone)
    }
    fn project_review(&self, campaign: &str, review: &Review) -> Result<(u64, u64)> {
        WriteTx::project_review(self, campaign, review)
    }
    fn rebuild_aggregates(&self) -> Result<u64> {
        WriteTx::rebuild_aggregates(self)
    }
    fn rebuild_aggregates_if_stale(&self) -> Result<bool> {
        WriteTx::rebuild_aggregates_if_stale(self)
    }
}

impl Projecting for Batch<'_> {
    fn signature(&mut self, doc_id: &str, id: &str, row: &SignatureRow) -> Result<()> {
        Batch::signature(self, doc_id, id, row)
    }
    fn checkin(&mut self, doc_id: &str, c: &Checkin) -> Result<()> {
        Batch::checkin(self, doc_id, c)
    }
    fn strike(&mut self, s: &Strike) -> Result<()> {
        Batch::strike(self, s)
    }
    fn sheet(&mut self, s: &Sheet) -> Result<()> {
        Batch::sheet(self, s)
    }
    fn flush(self: Box<Self>) -> Result<()> {
        Batch::flush(*self)
    }
}

impl Storage for Store {
    fn read_with(&self, f: &mut dyn FnMut(&dyn Reads) -> Result<()>) -> Result<()> {
        Store::read(self, |r| f(r))
    }
    fn write_with(&self, f: &mut dyn FnMut(&dyn Writes) -> Result<()>) -> Result<()> {
        Store::write(self, |w| f(w))
    }
    fn write_alone_with(&self, f: &mut dyn FnMut(&dyn Writes) -> Result<()>) -> Result<()> {
        Store::write_alone_with_error(self, |w| f(w))
    }
    fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        Store::put_meta(self, meta)
    }
    fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        Store::append_chunk(self, doc_id, bytes, now)
    }
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        Store::doc_meta(self, doc_id)
    }
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        Store::load_document(self, doc_id)
    }
    fn compact(&self, doc_id: &str, snapshot: &[u8], through_seq: i64, now: i64) -> Result<bool> {
        Store::compact(self, doc_id, snapshot, through_seq, now)
    }
    fn chunks_since_snapshot(&self, doc_id: &str) -> Result<ChunkStats> {
        Store::chunks_since_snapshot(self, doc_id)
    }
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        Store::list_documents(self, filter)
    }
    fn list_campaigns(&self) -> Result<Vec<DocMeta>> {
        Store::list_campaigns(self)
    }
    fn count_documents_by_owner(&self, owner: &str) -> Result<u64> {
        Store::count_documents_by_owner(self, owner)
    }
    fn count_collections(&self, owner: &str, campaign: &str) -> Result<u64> {
        Store::count_collections(self, owner, campaign)
    }
    fn save_sync_state(&self, peer_key: &str, doc_id: &str, bytes: &[u8], now: i64) -> Result<()> {
        Store::save_sync_state(self, peer_key, doc_id, bytes, now)
    }
    fn load_sync_state(&self, peer_key: &str, doc_id: &str) -> Result<Option<Vec<u8>>> {
        Store::load_sync_state(self, peer_key, doc_id)
    }
    fn subscribe(
        &self,
        _on_change: Arc<dyn Fn(Change) + Send + Sync>,
    ) -> Result<Option<Subscription>> {
        // One process writes a SQLite file (the data folder's lock): it knows its own changes.
        Ok(None)
    }
    fn try_exclusive(&self, _what: &str) -> Result<Option<Exclusive<'_>>> {
        // The data folder's lock already makes this server the only one.
        Ok(Some(Exclusive::alone()))
    }
    fn has_admin(&self) -> Result<bool> {
        Store::has_admin(self)
    }
    fn create_admin(&self, name: &str, now: i64) -> Result<(Device, Token)> {
        Store::create_admin(self, name, now)
    }
    fn create_invite(
        &self,
        campaign: Option<&str>,
        role: Role,
        ttl_ms: i64,
        now: i64,
    ) -> Result<(String, InviteCode)> {
        Store::create_invite(self, campaign, role, ttl_ms, now)
    }
    fn redeem_invite_replacing(
        &self,
        code: &str,
        device_name: &str,
        now: i64,
        replaces: Option<Replaces<'_>>,
    ) -> Result<(Device, Token)> {
        Store::redeem_invite_replacing(self, code, device_name, now, replaces)
    }
    fn check_token(
        &self,
        token: &str,
        now: i64,
        idle_expiry_ms: Option<i64>,
    ) -> Result<std::result::Result<Device, TokenRefusal>> {
        Store::check_token(self, token, now, idle_expiry_ms)
    }
    fn record_seen(&self, device: &Device, now: i64) -> Result<bool> {
        Store::record_seen(self, device, now)
    }
    fn revoke_device(&self, device_id: &str, now: i64) -> Result<bool> {
        Store::revoke_device(self, device_id, now)
    }
    fn device(&self, device_id: &str) -> Result<Option<Device>> {
        Store::device(self, device_id)
    }
    fn list_devices(&self) -> Result<Vec<Device>> {
        Store::list_devices(self)
    }
    fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>> {
        Store::revoked_since(self, since_ms)
    }
    fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        Store::quarantine_entry(self, entry, quota)
    }
    fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        Store::quarantine(self, device_id, doc_id, reason, bytes, now)
    }
    fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
        Store::list_quarantine(self, filter)
    }
    fn quarantine_len(&self) -> Result<u64> {
        Store::quarantine_len(self)
    }
    fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        Store::audit(self, e)
    }
    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        Store::list_audit(self, filter)
    }
    fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBroken>> {
        Store::verify_audit(self)
    }
    fn put_keys(
        &self,
        campaign: &str,
        device: &str,
        keys: &[(String, Vec<u8>)],
        max_per_device: u64,
        now: i64,
    ) -> Result<Vec<KeyOutcome>> {
        Store::put_keys(self, campaign, device, keys, max_per_device, now)
    }
    fn list_keys(&self, campaign: &str, after: Option<&str>, limit: u32) -> Result<Vec<StoredKey>> {
        Store::list_keys(self, campaign, after, limit)
    }
    fn records_with_token(&self, campaign: &str, token: &str) -> Result<Vec<String>> {
        Store::records_with_token(self, campaign, token)
    }
    fn unknown_signatures(&self, campaign: &str, records: &[String]) -> Result<Vec<String>> {
        Store::unknown_signatures(self, campaign, records)
    }
    fn erased_records(&self, campaign: &str) -> Result<Vec<String>> {
        Store::erased_records(self, campaign)
    }
    fn erase_records(
        &self,
        campaign: &str,
        records: &[String],
        by: &str,
        now: i64,
    ) -> Result<Erasure> {
        Store::erase_records(self, campaign, records, by, now)
    }
    fn scrub_erased(&self) -> Result<()> {
        Store::checkpoint_truncate(self)
    }
    fn group_commits(&self) -> Option<(u64, u64)> {
        Some(Store::group_commits(self))
    }
    fn database_bytes(&self) -> Result<u64> {
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let path = self.path();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(size(path) + size(std::path::Path::new(&wal)))
    }
}
