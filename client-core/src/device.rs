//! [`Device`]: the phone's state (its SQLite store and its three documents) and everything a
//! canvasser does with it offline: enroll, sign, check in, withdraw, read receipts and totals.
//!
//! Every write is committed to SQLite (the automerge chunk and the receipt in one transaction)
//! before the call returns ([`crate::mirror`] keeps memory equal to the file). Enrollment is in
//! [`crate::enroll`], applying the server's messages in [`crate::apply`].
//!
//! A `Device` is a cheap handle (`Clone`, `Send`, `Sync`) over shared state behind a mutex, so an
//! app can sign on one thread while the sync loop runs on another, and several processes may
//! open the same home directory.
//!
//! Signing does only work that does not grow with the phone's history: the receipt counts come
//! from a table triggers keep, the record count and the campaign are cached, and nothing
//! rewrites or re-reads a whole document.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{Automerge, ChangeHash};
use serde::{Deserialize, Serialize};
use tally_core::campaign::Campaign;
use tally_core::collection::{self, Checkin, SignatureForm, TakenBy};
use tally_core::doc::WriteError;
use tally_core::fields::MAX_ID;
use tally_core::totals::Totals;
use tally_proto::DocumentId;

use crate::compact;
use crate::enroll::{Enrollment, EnrollmentInfo};
use crate::error::{ClientError, Result};
use crate::mirror::{KEY_DROP_PLAINTEXT, KEY_ROLL_OVER_AT, State};
use crate::receipts::{Counts, Receipt, ReceiptDetails, ReceiptKind, SignatureReceipt};
use crate::store::{self, DocRole, DocState};

pub use crate::chain::DEFAULT_ROLL_OVER_AT;
pub use crate::compact::COMPACT_AFTER_CHUNKS;

/// The cities this phone's signatures used ([`KEY_CITIES_USED`]).
fn cities_used(conn: &rusqlite::Connection) -> Result<Vec<String>> {
    Ok(store::setting(conn, KEY_CITIES_USED)?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default())
}

/// Adds `city` to the cities this phone used, unless one of them is the same city.
fn remember_city(conn: &rusqlite::Connection, city: &str) -> Result<()> {
    let mut used = cities_used(conn)?;
    if used.iter().any(|u| tally_core::city::same_city(u, city)) {
        return Ok(());
    }
    used.push(tally_core::city::city_spelling(city));
    let json = serde_json::to_string(&used).map_err(|e| ClientError::Corrupt(e.to_string()))?;
    store::set_setting(conn, KEY_CITIES_USED, &json)
}

/// Pending receipts [`Device::status`] lists at most: a phone offline for days may hold tens of
/// thousands, and a screen (or the status's memory) has no room for them all.
pub const STATUS_PENDING_SHOWN: i64 = 200;

const KEY_LAST_SYNC: &str = "last_sync";
const KEY_LAST_COMPLETE_SYNC: &str = "last_complete_sync_at";
/// The cities this phone's signatures used, each city once (its first spelling), as JSON: what
/// [`Device::known_cities`] offers beside the campaign's event cities.
const KEY_CITIES_USED: &str = "cities_used";

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    /// The oldest pending receipts, at most [`STATUS_PENDING_SHOWN`] of them (`counts` has them
    /// all; [`Device::pending`] lists every one).
    pub pending: Vec<Receipt>,
    /// What the server refused, set aside with its reason (kept sealed, not counted).
    #[serde(default)]
    pub refused: Vec<Receipt>,
    /// Records in the current collection document (the phone starts the next one at
    /// `roll_over_at`).
    pub collection_records: usize,
    /// The phone's chain of collections, oldest first.
    #[serde(default)]
    pub collections: Vec<CollectionStatus>,
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
    /// This phone's records an organizer erased (the server refused their keys as erased):
    /// they no longer count, and nothing of them can be opened.
    #[serde(default)]
    pub erased: Vec<String>,
}

/// One collection of the phone's chain, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionStatus {
    /// Its `automerge:` URL.
    pub url: String,
    /// Current, closed (rolled over), retired (an earlier enrollment's) or refused.
    pub state: DocState,
    /// Its place in the chain, from 0.
    pub chain: i64,
}

/// Maps a write refused by the document core to the form field at fault.
pub(crate) fn write_error(e: WriteError) -> ClientError {
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

    pub(crate) fn wrote(&self) {
        self.shared.writes.send_modify(|v| *v = v.wrapping_add(1));
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
        // The form's rules (tally_core::form) before anything else: a refused form writes
        // nothing, not even the next collection of the chain.
        let checked = form.check(&campaign)?;
        st.make_room()?;
        let now = now_ms();
        let key = enrollment.key()?;
        // Sealed v2: the personal fields under a key of their own, wrapped to the organizers
        // and kept outside the document (docs/clients.md 4), so an erasure can shred them.
        let collection::Shreddable {
            signature,
            wrapped_key,
        } = checked.seal_shreddable(&TakenBy {
            campaign: &campaign,
            key: &key,
            canvasser: &enrollment.device_id,
            now,
            id: collection::random_id(),
        })?;
        let details = ReceiptDetails {
            name: checked.name.clone(),
            postal_code: Some(checked.postal_code.clone()),
            city: Some(checked.city.clone()),
            email: checked.email.clone(),
            phone: checked.phone.clone(),
            street: checked.street.clone(),
            riding: checked.riding.clone(),
            event: signature.event.clone(),
            walk_in: None,
        };
        let receipt = st.commit_local_keyed(
            ReceiptKind::Signature,
            &signature.id,
            now,
            Some(details),
            Some(&wrapped_key),
            |doc| collection::add_signature(doc, &signature, &campaign),
        )?;
        let counts = store::counts(&st.conn)?;
        // Only a city new to this phone writes (rarely): the signature is already committed,
        // and a failure here loses an offer, never a signature.
        let _ = remember_city(&st.conn, &signature.city);
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

    /// The cities this phone can offer the canvasser: the campaign's event cities (once its
    /// document has arrived), then the cities this phone's signatures used, each city once
    /// (`tally_core::city::city_key`: case, spacing and accents folded) under the first
    /// spelling met.
    pub fn known_cities(&self) -> Result<Vec<String>> {
        let mut st = self.lock()?;
        st.refresh()?;
        let events: Vec<String> = match st.campaign() {
            Ok(c) => c.events.into_values().map(|e| e.city).collect(),
            Err(_) => Vec::new(),
        };
        let used = cities_used(&st.conn)?;
        Ok(tally_core::city::distinct(
            events.iter().chain(&used).map(String::as_str),
        ))
    }

    /// The known spelling of `city` when it is a known city ([`Device::known_cities`]) typed
    /// otherwise (`toronto` for `Toronto`): what a canvasser should be told before signing.
    /// The totals count both as one city, so this is a warning, never a refusal.
    pub fn known_spelling(&self, city: &str) -> Result<Option<String>> {
        let typed = tally_core::city::city_spelling(city);
        Ok(self
            .known_cities()?
            .into_iter()
            .find(|k| tally_core::city::same_city(k, &typed) && *k != typed))
    }

    /// Checks someone in to an event (a walk-in, or pre-registered). Only an attendee token (an
    /// HMAC of the normalized name) goes into the document. Committed before returning.
    pub fn checkin(&self, event: &str, name: &str, walk_in: bool) -> Result<Receipt> {
        let mut st = self.lock()?;
        // Catch up first if another connection wrote (cheap when none did).
        st.refresh()?;
        let enrollment = st.enrollment()?.clone();
        let campaign = st.campaign()?;
        let (event, name) = tally_core::form::check_checkin(event, name, &campaign)?;
        st.make_room()?;
        let now = now_ms();
        let key = enrollment.key()?;
        let checkin = Checkin {
            id: collection::random_id(),
            event: event.clone(),
            attendee: key.attendee_token(&name),
            at: now,
            by: enrollment.device_id.clone(),
            walk_in,
            withdrawn: false,
        };
        let details = ReceiptDetails {
            name,
            event: Some(event.clone()),
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
        let owner = st.enrollment()?.device_id.clone();
        let receipts = store::receipts_of(&st.conn, record_id)?;
        if let Some(r) = receipts.iter().find(|r| r.refused_at.is_some()) {
            return Err(ClientError::Form(tally_core::collection::FormError {
                field: "record_id",
                message: format!(
                    "record {record_id:?} was refused by the server and set aside ({}); it is not counted, so there is nothing to withdraw",
                    r.refusal.as_deref().unwrap_or("no reason given")
                ),
            }));
        }
        // The record is in the collection of its latest receipt: the current one, or an older
        // one of the chain (rolled over, or an earlier enrollment's).
        let current = st.index(DocRole::Collection)?;
        let home = receipts
            .last()
            .and_then(|r| r.doc_id.as_deref())
            .and_then(|d| d.parse::<DocumentId>().ok())
            .and_then(|d| st.index_of(&d))
            .unwrap_or(current);
        st.ensure(home)?;
        let doc = st.docs[home].doc()?;
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
        let details = receipts.into_iter().find_map(|r| r.details);
        let now = now_ms();
        let receipt = if home == current {
            st.commit_local(kind, record_id, now, details, |doc| {
                if kind == ReceiptKind::SignatureWithdrawal {
                    collection::withdraw_signature(doc, record_id)
                } else {
                    collection::withdraw_checkin(doc, record_id)
                }
            })?
        } else {
            // An older collection is not written again: the withdrawal is a copy of the record,
            // marked withdrawn, in the current one (a record id counts once per campaign, and is
            // withdrawn if any copy is).
            let campaign = st.campaign()?;
            if home != current {
                st.unload_old_collections(&[]);
            }
            st.commit_local(kind, record_id, now, details, |doc| {
                match (found_sig, found_checkin) {
                    (Some(mut sig), _) => {
                        sig.withdrawn = true;
                        sig.collected_by = owner.clone();
                        collection::add_signature(doc, &sig, &campaign)
                    }
                    (None, Some(mut ci)) => {
                        ci.withdrawn = true;
                        ci.by = owner.clone();
                        collection::add_checkin(doc, &ci, &campaign)
                    }
                    (None, None) => Err(WriteError::NotFound(record_id.to_string())),
                }
            })?
        };
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

    /// Records the current collection takes before the phone starts the next one
    /// ([`DEFAULT_ROLL_OVER_AT`] unless set).
    pub fn roll_over_at(&self) -> Result<usize> {
        Ok(self.lock()?.roll_over_at)
    }

    /// Sets [`Device::roll_over_at`] (at least 1). A lower bound keeps less in memory and makes
    /// more collections; the next write rolls over if the current collection holds as many.
    pub fn set_roll_over_at(&self, records: usize) -> Result<()> {
        if records == 0 {
            return Err(ClientError::form(
                "roll_over_at",
                "a collection must take at least 1 record",
            ));
        }
        let mut st = self.lock()?;
        st.set_setting(KEY_ROLL_OVER_AT, &records.to_string())?;
        st.roll_over_at = records;
        Ok(())
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
        let seen = st.commit(|tx, quiet| {
            let seq = store::append_chunk(tx, &id, &chunk, now_ms())?;
            Ok(if quiet { seq } else { seen })
        })?;
        st.appended(idx, seen);
        Ok(())
    }

    /// A copy of one of the phone's current documents (for inspection, export and tests); for
    /// collections, the current one.
    pub fn document(&self, role: DocRole) -> Result<Automerge> {
        let mut st = self.lock()?;
        let idx = st.index(role)?;
        st.ensure(idx)?;
        Ok(st.docs[idx].doc()?.clone())
    }

    /// Loads the current collection document now. Reading the status does not need it;
    /// signing, checking in, withdrawing and syncing load it at their first use (at 5,000
    /// records that takes about 0.15 s and most of the phone's memory), so an app can call this
    /// in the background once the status is on screen.
    pub fn preload(&self) -> Result<()> {
        self.lock()?.ensure_current()
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
        let pending = store::receipts_up_to(&st.conn, true, STATUS_PENDING_SHOWN)?;
        let refused = store::refused_receipts(&st.conn)?;
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
            (title, totals, st.records_for_status()?)
        } else {
            problems.push(ClientError::NotEnrolled.to_string());
            (None, None, 0)
        };
        let (_, keys_refused) = store::keys_not_on_server(&st.conn)?;
        let erased = store::erased_records(&st.conn)?;
        for (record, why) in keys_refused {
            problems.push(format!(
                "the server refused the key of record {record} ({why}): it is kept on this phone; show an organizer"
            ));
        }
        let last_sync =
            store::setting(&st.conn, KEY_LAST_SYNC)?.and_then(|j| serde_json::from_str(&j).ok());
        let last_complete_sync_at =
            store::setting(&st.conn, KEY_LAST_COMPLETE_SYNC)?.and_then(|v| v.parse().ok());
        let mut collections: Vec<CollectionStatus> = st
            .docs
            .iter()
            .filter(|d| d.role == DocRole::Collection)
            .map(|d| CollectionStatus {
                url: d.id.to_url(),
                state: d.state,
                chain: d.chain,
            })
            .collect();
        collections.sort_by_key(|c| c.chain);
        Ok(Status {
            enrollment: st.enrollment.as_ref().map(Enrollment::info),
            summary: counts.summary(),
            counts,
            pending,
            refused,
            collection_records,
            collections,
            campaign_title,
            last_complete_sync_at,
            last_sync,
            totals,
            problems,
            erased,
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
            if !st.docs[idx].state.is_live() {
                continue;
            }
            let (id, role) = (st.docs[idx].id, st.docs[idx].role);
            st.compactor.nudge(id, role);
        }
        // Push dropped plaintext out of the WAL file too.
        let _ = st.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        Ok(())
    }
}
