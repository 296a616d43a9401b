//! The document hub: the server's documents in memory, loaded on first use from SQLite and
//! unloaded when idle, and the one path every write takes: apply the incoming changes to a fork,
//! validate the fork against the document before, then store the new changes, claim their
//! records and queue them for the totals projection in one transaction (the projector,
//! `crate::projector`, counts them after), and only then replace the document in memory and
//! tell the connections that follow it. Rejected changes go to the quarantine.
//!
//! What to do (fork, apply, judge, what to store, whether anything changed) is decided by the
//! pure `tally_proto::host::decide`, as the in-memory test hubs decide it; this module runs the
//! decision against the store, the quarantine and the followers.
//!
//! Everything here is synchronous (SQLite and automerge work); the async side calls it through
//! `spawn_blocking`. Work per event is keyed by document: nothing walks every connection or
//! every document, except the idle sweep, which runs on a timer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use automerge::{Automerge, ReadDoc};
use tally_core::campaign::{self, Campaign};
use tally_core::collection::{CHECKINS, SIGNATURES};
use tally_core::validate::{Accepted, Rule, Writer, validate};
use tally_core::{DocHeader, DocKind, Role};
use tally_proto::DocumentId;
use tally_proto::host::{self, Decision, Waiting};
use tally_store::{
    Device, DocFilter, DocMeta, NewQuarantine, QuarantineQuota, Storage, StoreError, Writes,
};
use tokio::sync::mpsc;

use crate::projection;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A document as the hub holds it.
pub struct Slot {
    /// The document (empty if it does not exist yet).
    pub doc: Automerge,
    /// Its stored meta; `None` until it is first stored.
    pub meta: Option<DocMeta>,
    /// When it was last used, for unloading.
    last_used: Instant,
    /// Incremental chunks stored since the last compaction.
    chunks: u64,
    /// The seq of the last stored chunk `doc` holds (0 if none). Another server sharing the
    /// database may have stored more since: [`Hub::commit_sync`] reloads the document before
    /// writing when the store holds a later seq, and checks under the row lock.
    last_seq: i64,
}

/// Why the hub refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The change broke a rule; it was quarantined.
    #[error("change refused: {0}")]
    Rejected(#[source] Refusal),
    /// The device may not read this document, or it does not exist.
    #[error("document unavailable")]
    Unavailable,
    /// Storage failed; nothing was acknowledged.
    #[error("storage failed, nothing was saved: {0}")]
    Store(#[from] StoreError),
    /// The projection failed; nothing was saved.
    #[error("storage failed, nothing was saved: {0}")]
    Projection(#[from] projection::ProjectionError),
    /// automerge could not load a stored document or apply changes the hub had accepted (a
    /// damaged database, or a bug).
    #[error("{what}: {source}")]
    Automerge {
        /// What was being loaded or applied.
        what: String,
        source: Box<automerge::AutomergeError>,
    },
    /// A stored document does not read as its kind (a damaged database, or a bug).
    #[error("{what}: {source}")]
    Unreadable {
        /// Which document.
        what: String,
        source: tally_core::validate::Rejection,
    },
}

/// What [`Hub::commit_sync`] did with a message it accepted.
#[derive(Debug, Default)]
pub struct Committed {
    /// What validation accepted (empty when nothing applied).
    pub accepted: Accepted,
    /// Some of the message's changes wait for dependencies that have not arrived; they were
    /// not kept.
    pub waiting: bool,
}

/// How [`Hub::commit_as`] keeps other servers sharing the database from storing a change to
/// the document between its decision and its write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locking {
    /// Decide outside the store's writer, then check in the write that nothing came between
    /// (else `Conflict`, nothing kept).
    Optimistic,
    /// Decide inside the write, under the document's lock.
    Locked,
}

/// Where a change comes from: the connection not to notify of it, and what to quarantine (and
/// name) if it is refused.
#[derive(Clone, Copy)]
struct Source<'a> {
    origin: Option<u64>,
    raw: &'a [u8],
    change_hashes: &'a [String],
}

/// What deciding on a change came to, before anything is written.
enum Step {
    /// Nothing to store (nothing applied; changes may wait for dependencies).
    Done(Committed),
    /// Refused: quarantined by the caller once the slot is let go.
    Refused(Refusal),
    /// To store.
    Write(Box<Prepared>),
}

/// A change decided and ready to write.
struct Prepared {
    after: Automerge,
    chunk: Vec<u8>,
    acc: Accepted,
    header: DocHeader,
    waiting: bool,
    changes: projection::Changes,
    meta: DocMeta,
    /// The document is new here.
    created: bool,
    /// The last seq of the copy decided on.
    known_seq: i64,
}

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Unload documents idle this long.
    pub idle_unload: Duration,
    /// Compact after this many chunks.
    pub compact_after_chunks: u64,
    /// Most collection documents one device creates in a campaign: the length of a phone's
    /// chain of collections.
    pub max_documents_per_device: u64,
    /// Most documents held in memory; past it the least recently used ones not in use are
    /// unloaded at once, whatever their idle time (0: no cap, only the idle time).
    pub max_loaded_documents: usize,
}

/// What one sync message and one connection may cost, and what the quarantine keeps
/// (issue 11.2 and 11.4; `Config::sync_limits`).
#[derive(Debug, Clone)]
pub struct SyncLimits {
    /// What one sync message may ask for (heads, needs, haves, blooms, chunks, ops).
    pub bounds: tally_proto::SyncBounds,
    /// A connection's frame budget: frames per second on average (0: none) ...
    pub frames_per_second: u32,
    /// ... and at once.
    pub frame_burst: u32,
    /// Bytes of changes waiting for missing dependencies one document may hold (all
    /// connections together).
    pub max_pending_bytes_per_document: usize,
    /// Bytes of such changes one device may make the server hold (all its connections).
    pub max_pending_bytes_per_device: usize,
    /// What the quarantine keeps.
    pub quarantine: QuarantineQuota,
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            bounds: tally_proto::SyncBounds::default(),
            frames_per_second: 1_000,
            frame_burst: 5_000,
            max_pending_bytes_per_document: 4 * 1024 * 1024,
            max_pending_bytes_per_device: 8 * 1024 * 1024,
            quarantine: QuarantineQuota::default(),
        }
    }
}

/// A refusal on its way to the quarantine: the words for the peer, the rule broken when
/// validation refused it (which decides whether the raw bytes may be kept), and the record at
/// fault when one record is (the peer's error frame names it, so that a phone sets that record
/// aside and carries on with the others: docs/protocol.md, "Refusals").
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why, in words the peer and an organizer can act on.
    pub reason: String,
    /// What validation refused, when it did (the source of this refusal).
    pub rejection: Option<tally_core::validate::Rejection>,
    /// Whether the raw message may be kept (small ones only, see [`QuarantineQuota`]).
    pub keep_raw: bool,
    /// The id of the signature or check-in at fault, when one record is.
    pub record: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.rejection.as_ref().map(|r| r as _)
    }
}

/// The record a validation path names: `signatures/<id>/...` or `checkins/<id>/...` -> `<id>`.
pub fn record_of_path(path: &str) -> Option<String> {
    let mut segs = path.split('/');
    let container = segs.next()?;
    let id = segs.next()?;
    (matches!(container, SIGNATURES | CHECKINS) && !id.is_empty()).then(|| id.to_string())
}

impl Refusal {
    /// A refusal by validation: the raw bytes are kept only for rules that judge who writes
    /// what kind of document, never for rules that judge a written value (an unknown field,
    /// an oversized or malformed one, a conflict's loser...), whose bytes may hold exactly
    /// what the server must not keep.
    pub fn by_rule(rejection: &tally_core::validate::Rejection) -> Refusal {
        let keep_raw = matches!(
            rejection.rule,
            Rule::RoleMayNotWrite
                | Rule::OutsideCampaign
                | Rule::NotOwner
                | Rule::UnknownKind
                | Rule::UnsupportedSchema
                | Rule::WrongKind
                | Rule::Deletion
        );
        Refusal {
            reason: rejection.to_string(),
            rejection: Some(rejection.clone()),
            keep_raw,
            record: record_of_path(&rejection.path),
        }
    }

    /// A refusal by the server itself (no rule); `keep_raw` as given.
    pub fn server(reason: impl Into<String>, keep_raw: bool) -> Refusal {
        Refusal {
            reason: reason.into(),
            rejection: None,
            keep_raw,
            record: None,
        }
    }

    /// The validation rule broken, when validation refused it.
    pub fn rule(&self) -> Option<Rule> {
        self.rejection.as_ref().map(|r| r.rule)
    }

    /// The fixed word a metric counts this refusal under: the validation rule's name, or, for
    /// the server's own refusals, the reason's first word (`limit`, `campaign`, `change`), never
    /// anything a client wrote.
    pub fn metric_reason(&self) -> String {
        if let Some(rule) = self.rule() {
            return format!("{rule:?}");
        }
        let word: String = self
            .reason
            .chars()
            .take_while(|c| c.is_ascii_alphabetic() || *c == '_')
            .take(24)
            .collect();
        match word.as_str() {
            "limit" | "campaign" | "change" | "refused" | "record" => word,
            _ => "other".to_string(),
        }
    }

    /// The same refusal, naming the record at fault.
    pub fn naming(mut self, record: impl Into<String>) -> Refusal {
        self.record = Some(record.into());
        self
    }
}

/// Bytes of changes waiting for dependencies, per document and per device (all connections).
#[derive(Default)]
struct PendingBook {
    by_doc: HashMap<DocumentId, usize>,
    by_device: HashMap<String, usize>,
}

/// Who follows a document: connection id -> a channel that receives the ids of changed docs.
type Followers = HashMap<u64, mpsc::UnboundedSender<DocumentId>>;

/// The document hub.
pub struct Hub {
    /// The database: documents, chunks, sync states and the projection are written through the
    /// hub alone (the API keeps its own handle for devices, audit and reads).
    store: Arc<dyn Storage>,
    /// Unloading, compaction and the chain length (from the configuration).
    cfg: HubConfig,
    /// The loaded documents; one document's writes are serialized by its slot's lock.
    docs: Mutex<HashMap<DocumentId, Arc<Mutex<Slot>>>>,
    /// Campaigns read from their documents, by id, until their document changes
    /// ([`Hub::campaign`]): every change is judged against its campaign.
    campaigns: Mutex<HashMap<String, Arc<Campaign>>>,
    /// The connections following each document, told when it changes.
    followers: Mutex<HashMap<DocumentId, Followers>>,
    /// Campaigns whose totals document is to be rewritten ([`Hub::refresh_totals`]).
    dirty_totals: Mutex<HashSet<String>>,
    /// Campaigns whose totals changed since the live streams were last woken.
    dirty_live: Mutex<HashSet<String>>,
    /// Documents with enough chunks to compact, for the background task ([`Hub::compact_due`]),
    /// so that no acknowledgement waits for a compaction.
    due_compaction: Mutex<HashSet<DocumentId>>,
    /// Small-cell suppression threshold of the totals documents (canvassers read them).
    totals_suppress_below: AtomicU64,
    /// What a sync message, a connection and the quarantine may cost.
    sync_limits: Mutex<Arc<SyncLimits>>,
    /// Changes waiting for dependencies, held by the connections ([`Hub::reserve_pending`]).
    pending: Mutex<PendingBook>,
    /// Record ids the operator told the server to refuse (`refuse_records`), e.g. to stop a
    /// known-bad record from a broken client.
    refused_records: Mutex<Arc<HashSet<String>>>,
    /// The server's metrics (`/metrics`): the hub counts refusals and times its commits; the
    /// sync connections and the API count the rest through [`Hub::metrics`].
    metrics: Arc<crate::metrics::Metrics>,
    /// Woken when a change is queued for the projection (`crate::projector`).
    projection: Arc<crate::projector::Signal>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new collection's `continues` (the collection before it in its phone's chain) must name,
/// when the server has that document, a collection of the same campaign whose owner is of the
/// same lineage (the same phone, re-enrolled or not); a document the server never received is
/// accepted (it may never have reached the server).
fn check_continues(tx: &dyn Writes, header: &DocHeader) -> Result<(), HubError> {
    let Some(previous) = &header.continues else {
        return Ok(());
    };
    let found = tx
        .doc_meta(previous)?
        .map(|m| (m.kind, m.campaign, m.owner));
    let Some((kind, campaign, owner)) = found else {
        return Ok(());
    };
    let lineage = |device: &str| tx.lineage_of(device);
    let mine = lineage(header.owner.as_deref().unwrap_or_default())?;
    let same_phone = match &owner {
        Some(o) => lineage(o)? == mine,
        None => false,
    };
    if kind != "collection" || campaign != header.campaign || !same_phone {
        return Err(HubError::Rejected(Refusal::server(
            format!(
                "continues: {previous} is not a collection of this phone in this campaign; a collection continues only its own phone's previous collection (or one the server never received)"
            ),
            false,
        )));
    }
    Ok(())
}

/// The writer identity of a device.
pub fn writer_of(device: &Device) -> Writer {
    Writer {
        id: device.device_id.clone(),
        role: device.role,
        campaign: device.campaign.clone(),
    }
}

/// The server's own writer identity (totals documents).
pub fn server_writer() -> Writer {
    Writer {
        id: "server".into(),
        role: Role::Server,
        campaign: None,
    }
}

impl Hub {
    /// A peer's saved sync state of document `doc` (`None` if none was saved).
    pub fn load_sync_state(
        &self,
        peer_key: &str,
        doc: &DocumentId,
    ) -> Result<Option<Vec<u8>>, HubError> {
        Ok(self.store.load_sync_state(peer_key, &doc.to_string())?)
    }

    /// Saves a peer's sync state of document `doc`.
    pub fn save_sync_state(
        &self,
        peer_key: &str,
        doc: &DocumentId,
        bytes: &[u8],
        now: i64,
    ) -> Result<(), HubError> {
        Ok(self
            .store
            .save_sync_state(peer_key, &doc.to_string(), bytes, now)?)
    }

    /// A hub over `store`.
    pub fn new(store: Arc<dyn Storage>, cfg: HubConfig) -> Hub {
        Hub {
            store,
            cfg,
            docs: Mutex::default(),
            campaigns: Mutex::default(),
            followers: Mutex::default(),
            dirty_totals: Mutex::default(),
            dirty_live: Mutex::default(),
            due_compaction: Mutex::default(),
            totals_suppress_below: AtomicU64::new(5),
            sync_limits: Mutex::new(Arc::new(SyncLimits::default())),
            pending: Mutex::default(),
            refused_records: Mutex::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            projection: Arc::default(),
        }
    }

    /// The store the hub writes through.
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// What wakes the projector: a change queued for the projection here, or heard from
    /// another server.
    pub fn projection_signal(&self) -> &Arc<crate::projector::Signal> {
        &self.projection
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Sets the record ids the server refuses (`refuse_records`): a change that writes any of
    /// them (a signature or a check-in) is refused, naming the record.
    pub fn set_refused_records(&self, ids: impl IntoIterator<Item = String>) {
        *lock(&self.refused_records) = Arc::new(ids.into_iter().collect());
    }

    /// Sets what a sync message, a connection and the quarantine may cost.
    pub fn set_sync_limits(&self, limits: SyncLimits) {
        *lock(&self.sync_limits) = Arc::new(limits);
    }

    /// What a sync message, a connection and the quarantine may cost.
    pub fn sync_limits(&self) -> Arc<SyncLimits> {
        lock(&self.sync_limits).clone()
    }

    /// Records a refusal in the quarantine within its quota, and logs it.
    pub fn refuse(
        &self,
        device_id: &str,
        doc: &str,
        refusal: &Refusal,
        raw: &[u8],
        change_hashes: &[String],
    ) -> Result<(), StoreError> {
        let limits = self.sync_limits();
        let rule = refusal.rule().map(|r| r.describe());
        let outcome = self.store.quarantine_entry(
            &NewQuarantine {
                device_id,
                doc_id: doc,
                reason: &refusal.reason,
                rule,
                raw,
                keep_raw: refusal.keep_raw,
                change_hashes,
                now: now_ms(),
            },
            &limits.quarantine,
        )?;
        tracing::warn!(doc = %doc, device = %device_id, reason = %refusal.reason, size = raw.len(), ?outcome, "change refused and quarantined");
        self.metrics.refused(&refusal.metric_reason());
        Ok(())
    }

    /// Reserves `bytes` of waiting changes for `doc` and `device`, within the per-document and
    /// per-device bounds; the error says which bound and what to do.
    pub fn reserve_pending(
        &self,
        doc: &DocumentId,
        device: &str,
        bytes: usize,
    ) -> Result<(), String> {
        let limits = self.sync_limits();
        let mut book = lock(&self.pending);
        let on_doc = book.by_doc.get(doc).copied().unwrap_or(0) + bytes;
        let on_device = book.by_device.get(device).copied().unwrap_or(0) + bytes;
        if on_doc > limits.max_pending_bytes_per_document {
            return Err(format!(
                "{on_doc} bytes of changes would wait here for changes the server never received (their dependencies), more than the {} one document may hold",
                limits.max_pending_bytes_per_document
            ));
        }
        if on_device > limits.max_pending_bytes_per_device {
            return Err(format!(
                "{on_device} bytes of this device's changes would wait for changes the server never received (their dependencies), more than the {} one device may make it hold",
                limits.max_pending_bytes_per_device
            ));
        }
        book.by_doc.insert(*doc, on_doc);
        book.by_device.insert(device.to_string(), on_device);
        Ok(())
    }

    /// Gives back what [`Hub::reserve_pending`] reserved.
    pub fn release_pending(&self, doc: &DocumentId, device: &str, bytes: usize) {
        let mut book = lock(&self.pending);
        if let Some(n) = book.by_doc.get_mut(doc) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                book.by_doc.remove(doc);
            }
        }
        if let Some(n) = book.by_device.get_mut(device) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                book.by_device.remove(device);
            }
        }
    }

    /// Bytes of waiting changes held for `doc` and for `device`.
    pub fn pending_bytes(&self, doc: &DocumentId, device: &str) -> (usize, usize) {
        let book = lock(&self.pending);
        (
            book.by_doc.get(doc).copied().unwrap_or(0),
            book.by_device.get(device).copied().unwrap_or(0),
        )
    }

    /// Sets the small-cell suppression threshold applied to the totals documents (default 5).
    pub fn set_totals_suppress_below(&self, threshold: u64) {
        self.totals_suppress_below
            .store(threshold, Ordering::Relaxed);
    }

    /// The slot of a document, loading it from the store on first use. A document that does not
    /// exist gets an empty slot (with no meta).
    pub fn slot(&self, id: &DocumentId) -> Result<Arc<Mutex<Slot>>, HubError> {
        if let Some(s) = lock(&self.docs).get(id) {
            return Ok(s.clone());
        }
        let key = id.to_string();
        let slot = self.load_slot(&key)?;
        let mut docs = lock(&self.docs);
        let slot = docs
            .entry(*id)
            .or_insert_with(|| Arc::new(Mutex::new(slot)))
            .clone();
        let cap = self.cfg.max_loaded_documents;
        if cap > 0 && docs.len() > cap {
            Self::evict(&mut docs, cap - cap / 10);
        }
        Ok(slot)
    }

    /// Loads a document as stored now.
    fn load_slot(&self, key: &str) -> Result<Slot, HubError> {
        Ok(match self.store.load_document(key)? {
            None => Slot {
                doc: Automerge::new(),
                meta: self.store.doc_meta(key)?,
                last_used: Instant::now(),
                chunks: 0,
                last_seq: 0,
            },
            Some(stored) => {
                let mut doc = match &stored.snapshot {
                    Some(snap) => Automerge::load(snap).map_err(|e| HubError::Automerge {
                        what: format!("the stored snapshot of {key} does not load"),
                        source: Box::new(e),
                    })?,
                    None => Automerge::new(),
                };
                for chunk in &stored.incremental {
                    doc.load_incremental(chunk)
                        .map_err(|e| HubError::Automerge {
                            what: format!("a stored chunk of {key} does not load"),
                            source: Box::new(e),
                        })?;
                }
                Slot {
                    doc,
                    meta: Some(stored.meta),
                    last_used: Instant::now(),
                    chunks: stored.incremental.len() as u64,
                    last_seq: stored.last_seq,
                }
            }
        })
    }

    /// Brings `slot` up to the stored document when the store holds chunks it lacks (written
    /// by another server sharing the database); returns whether it reloaded.
    fn refresh(&self, key: &str, slot: &mut Slot) -> Result<bool, HubError> {
        let stored_seq = match &slot.meta {
            Some(_) => self.store.chunks_since_snapshot(key)?.last_seq,
            None if self.store.doc_meta(key)?.is_some() => i64::MAX,
            None => return Ok(false),
        };
        if stored_seq <= slot.last_seq {
            return Ok(false);
        }
        let fresh = self.load_slot(key)?;
        slot.doc = fresh.doc;
        slot.meta = fresh.meta;
        slot.chunks = fresh.chunks;
        slot.last_seq = fresh.last_seq;
        Ok(true)
    }

    /// Unloads the least recently used documents until at most `keep` are loaded, skipping the
    /// ones in use (held by a caller, or locked). (No document holds changes waiting for
    /// dependencies: the connections keep those, see [`Hub::commit_sync`]; the check stays
    /// for safety.)
    fn evict(docs: &mut HashMap<DocumentId, Arc<Mutex<Slot>>>, keep: usize) {
        let mut idle: Vec<(Instant, DocumentId)> = docs
            .iter()
            .filter(|(_, slot)| Arc::strong_count(slot) == 1)
            .filter_map(|(id, slot)| {
                let s = slot.try_lock().ok()?;
                s.doc
                    .get_missing_deps(&[])
                    .is_empty()
                    .then_some((s.last_used, *id))
            })
            .collect();
        idle.sort_unstable();
        let excess = docs.len().saturating_sub(keep);
        for (_, id) in idle.into_iter().take(excess) {
            docs.remove(&id);
        }
    }

    /// A document's meta, `None` if it was never stored.
    pub fn meta(&self, id: &DocumentId) -> Result<Option<DocMeta>, HubError> {
        let slot = lock(&self.docs).get(id).cloned();
        match slot {
            Some(s) => Ok(lock(&s).meta.clone()),
            None => Ok(self.store.doc_meta(&id.to_string())?),
        }
    }

    /// The campaign with this id, read from its document (cached until it changes).
    pub fn campaign(&self, id: &str) -> Result<Option<Arc<Campaign>>, HubError> {
        if let Some(c) = lock(&self.campaigns).get(id) {
            return Ok(Some(c.clone()));
        }
        let Ok(doc_id) = id.parse::<DocumentId>() else {
            return Ok(None);
        };
        let slot = self.slot(&doc_id)?;
        let guard = lock(&slot);
        if guard.meta.as_ref().is_none_or(|m| m.kind != "campaign") {
            return Ok(None);
        }
        let c = Arc::new(
            campaign::read(&guard.doc).map_err(|source| HubError::Unreadable {
                what: format!("the stored campaign {id} does not read"),
                source,
            })?,
        );
        lock(&self.campaigns).insert(id.to_string(), c.clone());
        Ok(Some(c))
    }

    /// Applies `edit` to a fork of the document as `writer`, validates, stores and publishes.
    /// `origin` (a connection id) is not notified. `raw` is what to quarantine on rejection;
    /// the quarantine names the writer by its id.
    ///
    /// When another server sharing the database stored a change to the same document at the
    /// same moment (nothing of this write was kept), the edit is made again, this time deciding
    /// under the document's lock ([`Writes::lock_document`]), where no other server can store a
    /// change to it: an organizer's action through one server is not refused because another
    /// organizer acted through another.
    pub fn commit(
        &self,
        id: &DocumentId,
        writer: &Writer,
        origin: Option<u64>,
        raw: &[u8],
        mut edit: impl FnMut(&mut Automerge) -> Result<(), String>,
    ) -> Result<Accepted, HubError> {
        let from = Source {
            origin,
            raw,
            change_hashes: &[],
        };
        match self.commit_as(id, writer, from, &mut edit, Locking::Optimistic) {
            Err(HubError::Store(StoreError::Conflict(why))) => {
                tracing::info!(doc = %id, "{why}; made again under the document's lock");
                self.commit_as(id, writer, from, edit, Locking::Locked)
            }
            outcome => outcome,
        }
        .map(|c| c.accepted)
    }

    /// [`Hub::commit`] for a sync message: also says whether changes of it wait for
    /// dependencies that have not arrived. Those are never kept in the document (where they
    /// would hold memory beyond any bound and keep it from being unloaded): the caller keeps
    /// their bytes, within [`Hub::reserve_pending`]'s bounds, and hands them back with the
    /// connection's next message. `change_hashes` name the message's changes in the quarantine.
    pub fn commit_sync(
        &self,
        id: &DocumentId,
        writer: &Writer,
        origin: Option<u64>,
        raw: &[u8],
        change_hashes: &[String],
        edit: impl FnOnce(&mut Automerge) -> Result<(), String>,
    ) -> Result<Committed, HubError> {
        let from = Source {
            origin,
            raw,
            change_hashes,
        };
        self.commit_as(id, writer, from, edit, Locking::Optimistic)
    }

    fn commit_as(
        &self,
        id: &DocumentId,
        writer: &Writer,
        from: Source<'_>,
        edit: impl FnOnce(&mut Automerge) -> Result<(), String>,
        locking: Locking,
    ) -> Result<Committed, HubError> {
        let Source {
            origin,
            raw,
            change_hashes,
        } = from;
        let key = id.to_string();
        let slot = self.slot(id)?;
        let mut guard = lock(&slot);
        guard.last_used = Instant::now();
        let started = Instant::now();
        let (step, written) = match locking {
            Locking::Optimistic => {
                // Another server sharing the database may have stored changes since this copy
                // was loaded: decide on the document as stored. Deciding (apply, validate) runs
                // outside the store's writer, on every core; the write checks that no other
                // server stored a change meanwhile.
                self.refresh(&key, &mut guard)?;
                let step = self.prepare(&guard, &key, writer, edit)?;
                let written = match &step {
                    Step::Write(p) => self
                        .store
                        .write_with_error::<_, HubError>(|tx| self.write_prepared(tx, &key, p))
                        .map(Some),
                    _ => Ok(None),
                };
                (Some(step), written)
            }
            Locking::Locked => {
                // Deciding under the document's lock, on the document as stored then.
                let mut step = None;
                let written = self.store.write_with_error::<_, HubError>(|tx| {
                    tx.lock_document(&key)?;
                    self.refresh(&key, &mut guard)?;
                    let s = self.prepare(&guard, &key, writer, edit)?;
                    let seq = match &s {
                        Step::Write(p) => Some(self.write_prepared(tx, &key, p)?),
                        _ => None,
                    };
                    step = Some(s);
                    Ok(seq)
                });
                (step, written)
            }
        };
        let seq = match written {
            Ok(seq) => seq,
            Err(e) => {
                let refusal = match e {
                    HubError::Rejected(r) => r,
                    HubError::Store(StoreError::Claimed { container, id }) => {
                        let reason = StoreError::Claimed {
                            container,
                            id: id.clone(),
                        }
                        .to_string();
                        Refusal::server(reason, false).naming(id)
                    }
                    other => return Err(other),
                };
                drop(guard);
                self.refuse(&writer.id, &key, &refusal, raw, change_hashes)?;
                return Err(HubError::Rejected(refusal));
            }
        };
        let (p, seq) = match (step, seq) {
            (Some(Step::Write(p)), Some(seq)) => {
                self.metrics.commit(started.elapsed());
                (p, seq)
            }
            (Some(Step::Done(committed)), _) => return Ok(committed),
            (Some(Step::Refused(refusal)), _) => {
                drop(guard);
                self.refuse(&writer.id, &key, &refusal, raw, change_hashes)?;
                return Err(HubError::Rejected(refusal));
            }
            _ => {
                return Err(HubError::Store(StoreError::Invalid(format!(
                    "the write of {key} ended without its decision"
                ))));
            }
        };
        let Prepared {
            after,
            acc,
            header,
            waiting,
            meta,
            ..
        } = *p;
        // Durable: from here on the change may be acknowledged.
        guard.doc = after;
        if guard.meta.is_none() {
            guard.meta = Some(meta);
        }
        guard.chunks += 1;
        guard.last_seq = seq;
        let compact = guard.chunks >= self.cfg.compact_after_chunks;
        if header.kind == DocKind::Campaign {
            lock(&self.campaigns).remove(&header.campaign);
        }
        drop(guard);
        if compact {
            lock(&self.due_compaction).insert(*id);
        }
        if matches!(header.kind, DocKind::Collection | DocKind::Review) {
            // The projector counts it, and marks the campaign's totals as changed.
            self.projection.wake();
        }
        self.publish(id, origin);
        Ok(Committed {
            accepted: acc,
            waiting,
        })
    }

    /// Decides on `edit` made to the slot's document as `writer` (pure but for the reads of
    /// validation): what to write, or why nothing is.
    fn prepare(
        &self,
        slot: &Slot,
        key: &str,
        writer: &Writer,
        edit: impl FnOnce(&mut Automerge) -> Result<(), String>,
    ) -> Result<Step, HubError> {
        let known_seq = slot.last_seq;
        // The decision is pure (tally_proto::host): fork, apply, judge; what follows runs it.
        let decision = host::decide(&slot.doc, edit, Waiting::LeftToCaller, |_, after| {
            self.judge(slot, after, writer)
        })
        .map_err(|e| HubError::Automerge {
            what: format!("the changes of {key} that applied do not apply again alone"),
            source: Box::new(e),
        })?;
        let (after, chunk, acc, header, campaign, waiting) = match decision {
            Decision::Unapplicable(e) => {
                // Bytes automerge cannot apply (corrupted, truncated, forged) are refused and
                // kept like any other bad change; the stored document is untouched.
                return Ok(Step::Refused(Refusal::server(
                    format!(
                        "the changes could not be applied ({e}); the sending app must resend them intact"
                    ),
                    true,
                )));
            }
            Decision::Unchanged { waiting, .. } => {
                // Nothing applied. Changes automerge queued for missing dependencies are
                // dropped with the fork; the caller keeps their bytes (bounded) and offers
                // them again.
                return Ok(Step::Done(Committed {
                    accepted: Accepted::default(),
                    waiting,
                }));
            }
            Decision::Refused(refusal) => return Ok(Step::Refused(refusal)),
            Decision::Store {
                after,
                chunk,
                verdict: (acc, header, campaign),
                waiting,
                ..
            } => (after, chunk, acc, header, campaign, waiting),
        };
        let timezone = campaign
            .as_ref()
            .map(|c| c.timezone.clone())
            .unwrap_or_else(|| "UTC".into());
        // Read the touched records now, so that only SQL runs under the store's writer.
        let changes = projection::Changes::read(&header, &acc, &after, &timezone)?;
        let meta = DocMeta {
            doc_id: key.to_string(),
            kind: header.kind.as_str().into(),
            campaign: header.campaign.clone(),
            owner: header.owner.clone(),
            created_at: now_ms(),
        };
        Ok(Step::Write(Box::new(Prepared {
            after,
            chunk,
            acc,
            header,
            waiting,
            changes,
            meta,
            created: slot.meta.is_none(),
            known_seq,
        })))
    }

    /// Writes a decided change in the transaction `tx`; its chunk's seq.
    fn write_prepared(&self, tx: &dyn Writes, key: &str, p: &Prepared) -> Result<i64, HubError> {
        // Judged inside the write transaction, so that two writers cannot both pass: a
        // chain's link, and (in `changes.acknowledge`) record ids another phone holds.
        if p.created && p.header.kind == DocKind::Collection {
            check_continues(tx, &p.header)?;
        }
        if p.created {
            tx.put_meta(&p.meta)?;
        }
        let seq = tx.append_chunk(key, &p.chunk, p.meta.created_at)?;
        if seq != p.known_seq + 1 {
            // Another server stored a change between the refresh and this transaction's
            // row lock: this decision was made on an older copy. Nothing is kept; the copy
            // is reloaded before the next write.
            return Err(HubError::Store(StoreError::Conflict(format!(
                "another server stored a change to {key} at the same moment"
            ))));
        }
        p.changes.acknowledge(tx, key, &p.header, now_ms())?;
        Ok(seq)
    }

    /// Decides whether `after` may replace the slot's document, as `writer`.
    fn judge(
        &self,
        slot: &Slot,
        after: &Automerge,
        writer: &Writer,
    ) -> Result<(Accepted, DocHeader, Option<Arc<Campaign>>), Refusal> {
        let header = DocHeader::read(after).map_err(|r| Refusal::by_rule(&r))?;
        let campaign = if header.kind == DocKind::Campaign {
            None
        } else {
            match self.campaign(&header.campaign) {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    return Err(Refusal::server(
                        format!(
                            "campaign: no campaign {:?} on this server; enroll again with a current invite",
                            header.campaign
                        ),
                        false,
                    ));
                }
                Err(e) => return Err(Refusal::server(e.to_string(), false)),
            }
        };
        if slot.meta.is_none() && header.kind == DocKind::Collection {
            // A phone writes a chain of collections per campaign (roll-overs, refusals): the
            // limit is on that chain's length.
            let owned = self
                .store
                .count_collections(&writer.id, &header.campaign)
                .map_err(|e| Refusal::server(e.to_string(), false))?;
            let max = self.cfg.max_documents_per_device;
            if owned >= max {
                return Err(Refusal::server(
                    format!(
                        "limit: this phone's chain of collections has reached {owned} collections in this campaign, the most one device may create (max_documents_per_device = {max}); ask an organizer to raise max_documents_per_device"
                    ),
                    false,
                ));
            }
        }
        let acc = validate(&slot.doc, after, writer, campaign.as_deref())
            .map_err(|r| Refusal::by_rule(&r))?;
        if header.kind == DocKind::Collection {
            self.check_refused_records(&acc)?;
        }
        let campaign = match header.kind {
            DocKind::Campaign => campaign::read(after).ok().map(Arc::new),
            _ => campaign,
        };
        Ok((acc, header, campaign))
    }

    /// Refuses a change that writes a record the operator listed in `refuse_records`.
    fn check_refused_records(&self, acc: &Accepted) -> Result<(), Refusal> {
        let refused = lock(&self.refused_records).clone();
        if refused.is_empty() {
            return Ok(());
        }
        for (container, id) in &acc.records {
            if refused.contains(id) {
                return Err(Refusal::server(
                    format!(
                        "{container}/{id}: this server refuses record {id:?} (refuse_records in its configuration); set it aside and sync the others"
                    ),
                    false,
                )
                .naming(id.clone()));
            }
        }
        Ok(())
    }

    fn compact(&self, key: &str, slot: &mut Slot) {
        // The snapshot covers exactly the chunks this copy holds (through its last seq); chunks
        // another server stored since stay after it.
        if let Err(e) = self.refresh(key, slot) {
            tracing::warn!(doc = %key, error = %e, "compaction skipped");
            return;
        }
        let snapshot = slot.doc.save();
        match self.store.compact(key, &snapshot, slot.last_seq, now_ms()) {
            Ok(_) => slot.chunks = 0,
            Err(e) => tracing::warn!(doc = %key, error = %e, "compaction failed; the chunks stay"),
        }
    }

    /// Compacts the loaded documents that have gathered `compact_after_chunks` chunks since
    /// their snapshot (run by the background task); returns how many were compacted. A document
    /// unloaded meanwhile waits until its next write.
    ///
    /// Servers sharing a database compact a document once: the one that holds the
    /// document's [`Storage::try_exclusive`] counts the chunks as stored, so a server coming
    /// after it finds them already compacted; one that finds the document taken tries again
    /// on its next tick.
    pub fn compact_due(&self) -> usize {
        let due: Vec<DocumentId> = lock(&self.due_compaction).drain().collect();
        let mut n = 0;
        for id in due {
            let Some(slot) = lock(&self.docs).get(&id).cloned() else {
                continue;
            };
            let key = id.to_string();
            let exclusive = match self.store.try_exclusive(&format!("compact {key}")) {
                Ok(Some(exclusive)) => exclusive,
                Ok(None) => {
                    lock(&self.due_compaction).insert(id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(doc = %key, error = %e, "compaction skipped");
                    continue;
                }
            };
            let mut guard = lock(&slot);
            let stored = match self.store.chunks_since_snapshot(&key) {
                Ok(stats) => stats.count,
                Err(e) => {
                    tracing::warn!(doc = %key, error = %e, "compaction skipped");
                    continue;
                }
            };
            if stored >= self.cfg.compact_after_chunks {
                self.compact(&key, &mut guard);
                n += 1;
            } else {
                // Compacted by another server sharing the database.
                guard.chunks = stored;
            }
            drop(exclusive);
        }
        n
    }

    /// Follows a document: `tx` receives its id whenever someone else changes it.
    pub fn follow(&self, id: DocumentId, conn: u64, tx: mpsc::UnboundedSender<DocumentId>) {
        lock(&self.followers)
            .entry(id)
            .or_default()
            .insert(conn, tx);
    }

    /// Stops following every document in `ids`.
    pub fn unfollow(&self, ids: impl IntoIterator<Item = DocumentId>, conn: u64) {
        let mut f = lock(&self.followers);
        for id in ids {
            if let Some(m) = f.get_mut(&id) {
                m.remove(&conn);
                if m.is_empty() {
                    f.remove(&id);
                }
            }
        }
    }

    fn publish(&self, id: &DocumentId, origin: Option<u64>) {
        if let Some(m) = lock(&self.followers).get(id) {
            for (conn, tx) in m {
                if Some(*conn) != origin {
                    let _ = tx.send(*id);
                }
            }
        }
    }

    /// A change to `doc_id` was stored (heard from the database, written by this server or
    /// another sharing it): a loaded copy that lacks it is reloaded and its followers synced.
    pub fn stored(&self, doc_id: &str) -> Result<(), HubError> {
        let Ok(id) = doc_id.parse::<DocumentId>() else {
            return Ok(());
        };
        let slot = lock(&self.docs).get(&id).cloned();
        let meta = match slot {
            Some(slot) => {
                let mut guard = lock(&slot);
                if !self.refresh(doc_id, &mut guard)? {
                    // This server's own change, or one it already holds.
                    return Ok(());
                }
                guard.meta.clone()
            }
            // Not loaded here: a follower's connection loads it as stored; the live streams
            // of its campaign are told.
            None => self.store.doc_meta(doc_id)?,
        };
        self.changed_elsewhere(&id, meta.as_ref());
        Ok(())
    }

    /// Reloads every loaded document that lacks stored changes (after the subscription to
    /// the database's changes was cut), and syncs their followers.
    pub fn resync(&self) -> Result<(), HubError> {
        let loaded: Vec<(DocumentId, Arc<Mutex<Slot>>)> = lock(&self.docs)
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect();
        for (id, slot) in loaded {
            let meta = {
                let mut guard = lock(&slot);
                if !self.refresh(&id.to_string(), &mut guard)? {
                    continue;
                }
                guard.meta.clone()
            };
            self.changed_elsewhere(&id, meta.as_ref());
        }
        Ok(())
    }

    /// After another server stored a change: caches dropped, live streams told, followers
    /// synced. (The totals document is rewritten by the server that stored the change.)
    fn changed_elsewhere(&self, id: &DocumentId, meta: Option<&DocMeta>) {
        if let Some(meta) = meta {
            match meta.kind.as_str() {
                "campaign" => {
                    lock(&self.campaigns).remove(&meta.campaign);
                }
                "collection" | "review" => {
                    lock(&self.dirty_live).insert(meta.campaign.clone());
                }
                _ => {}
            }
        }
        self.publish(id, None);
    }

    /// Unloads documents unused for the idle time and not in use; returns how many.
    pub fn sweep(&self) -> usize {
        let idle = self.cfg.idle_unload;
        let mut docs = lock(&self.docs);
        let before = docs.len();
        docs.retain(|_, slot| Arc::strong_count(slot) > 1 || lock(slot).last_used.elapsed() < idle);
        let n = before - docs.len();
        if n > 0 {
            lock(&self.campaigns).clear();
        }
        n
    }

    /// How many documents are loaded.
    pub fn loaded(&self) -> usize {
        lock(&self.docs).len()
    }

    /// Rewrites the totals document (with small cells suppressed) of every campaign whose
    /// collections or review changed, unless its totals are the same; returns how many
    /// campaigns were looked at.
    pub fn refresh_totals(&self) -> Result<usize, HubError> {
        let dirty: Vec<String> = lock(&self.dirty_totals).drain().collect();
        for (i, campaign) in dirty.iter().enumerate() {
            if let Err(e) = self.refresh_totals_of(campaign) {
                // Tried again on the next tick (e.g. another server sharing the database wrote
                // the same totals document at the same moment), with the ones not reached.
                lock(&self.dirty_totals).extend(dirty[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(dirty.len())
    }

    /// Rewrites one campaign's totals document if its totals changed. Servers sharing a
    /// database rewrite it once: under the campaign's [`Storage::try_exclusive`], a server
    /// compares the totals with the document as stored (so one coming after another finds it
    /// current); a server that finds the campaign taken keeps it for its next tick.
    fn refresh_totals_of(&self, campaign: &str) -> Result<(), HubError> {
        let Some(_exclusive) = self.store.try_exclusive(&format!("totals {campaign}"))? else {
            lock(&self.dirty_totals).insert(campaign.to_string());
            return Ok(());
        };
        let docs = self.store.list_documents(&DocFilter {
            campaign: Some(campaign.to_string()),
            kind: Some("totals".into()),
            owner: None,
        })?;
        let Some(meta) = docs.first() else {
            return Ok(());
        };
        let Ok(id) = meta.doc_id.parse::<DocumentId>() else {
            return Ok(());
        };
        let mut totals = self.store.read(|r| r.totals(campaign))?;
        crate::suppression::for_document(
            &mut totals,
            self.totals_suppress_below.load(Ordering::Relaxed),
        );
        let slot = self.slot(&id)?;
        let current = {
            let mut guard = lock(&slot);
            // As stored: another server may have written it since this copy was loaded.
            self.refresh(&meta.doc_id, &mut guard)?;
            tally_core::totals_doc::read(&guard.doc).ok().flatten()
        };
        if current.is_some_and(|(t, _)| t == totals) {
            return Ok(());
        }
        let now = now_ms();
        self.commit(&id, &server_writer(), None, b"", |doc| {
            tally_core::totals_doc::write(doc, &totals, now).map_err(|e| e.to_string())
        })?;
        Ok(())
    }

    /// Marks a campaign's totals for rewriting.
    pub fn mark_dirty(&self, campaign: &str) {
        lock(&self.dirty_totals).insert(campaign.to_string());
        lock(&self.dirty_live).insert(campaign.to_string());
    }

    /// The campaigns whose totals changed since the last call, for the live streams (which
    /// read the totals tables themselves, more often than the totals documents are written).
    pub fn take_dirty_live(&self) -> Vec<String> {
        lock(&self.dirty_live).drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::validate::Rejection;
    use tally_store::Store;

    #[test]
    fn raw_bytes_are_kept_only_for_rules_that_judge_no_written_value() {
        let keeps = |rule| Refusal::by_rule(&Rejection::new("signatures/s1", rule, "x")).keep_raw;
        for rule in [
            Rule::RoleMayNotWrite,
            Rule::NotOwner,
            Rule::Deletion,
            Rule::WrongKind,
        ] {
            assert!(keeps(rule), "{rule:?}");
        }
        for rule in [
            Rule::UnknownField,
            Rule::TooLarge,
            Rule::Malformed,
            Rule::WrongType,
            Rule::Conflict,
            Rule::Replaced,
            Rule::UnsupportedOperation,
            Rule::Immutable,
            Rule::ActingAsOther,
            Rule::Missing,
            Rule::UnknownEvent,
        ] {
            assert!(!keeps(rule), "{rule:?}");
        }
        let r = Refusal::by_rule(&Rejection::new(
            "signatures/s1/name",
            Rule::UnknownField,
            "x",
        ));
        assert_eq!(r.rule(), Some(Rule::UnknownField));
        // The typed rejection stays the refusal's source, up through HubError.
        let e = HubError::Rejected(r.clone());
        let source = std::error::Error::source(&e).unwrap();
        let rejection = std::error::Error::source(source)
            .and_then(|s| s.downcast_ref::<Rejection>())
            .unwrap();
        assert_eq!(rejection.rule, Rule::UnknownField);
        assert!(r.reason.contains("signatures/s1/name"));
        assert_eq!(r.record.as_deref(), Some("s1"));
    }

    #[test]
    fn a_refusal_names_the_record_of_its_path() {
        assert_eq!(
            record_of_path("signatures/abc/city").as_deref(),
            Some("abc")
        );
        assert_eq!(record_of_path("checkins/c1").as_deref(), Some("c1"));
        assert_eq!(record_of_path("signatures"), None);
        assert_eq!(record_of_path("strikes/abc/reason"), None);
        assert_eq!(record_of_path("owner"), None);
        assert_eq!(record_of_path(""), None);
    }

    #[test]
    fn waiting_changes_are_bounded_per_document_and_per_device() {
        let hub = Hub::new(
            Arc::new(Store::open_in_memory().unwrap()),
            HubConfig {
                idle_unload: Duration::from_secs(60),
                compact_after_chunks: 64,
                max_documents_per_device: 64,
                max_loaded_documents: 0,
            },
        );
        hub.set_sync_limits(SyncLimits {
            max_pending_bytes_per_document: 100,
            max_pending_bytes_per_device: 150,
            ..SyncLimits::default()
        });
        let (a, b) = (
            DocumentId::from_bytes([1; 16]),
            DocumentId::from_bytes([2; 16]),
        );
        hub.reserve_pending(&a, "dev1", 60).unwrap();
        hub.reserve_pending(&a, "dev2", 40).unwrap();
        let err = hub.reserve_pending(&a, "dev2", 1).unwrap_err();
        assert!(err.contains("one document may hold"), "{err}");
        hub.reserve_pending(&b, "dev1", 90).unwrap();
        let err = hub.reserve_pending(&b, "dev1", 1).unwrap_err();
        assert!(err.contains("one device may"), "{err}");
        assert_eq!(hub.pending_bytes(&a, "dev1"), (100, 150));
        hub.release_pending(&a, "dev1", 60);
        hub.release_pending(&b, "dev1", 90);
        assert_eq!(hub.pending_bytes(&b, "dev1"), (0, 0));
        hub.reserve_pending(&b, "dev1", 100).unwrap();
        // Releasing more than was reserved never goes below zero.
        hub.release_pending(&a, "dev2", 1_000);
        assert_eq!(hub.pending_bytes(&a, "dev2"), (0, 0));
    }
}
