//! The phone's chain of collections for its campaign (docs/documents.md, "A chain of
//! collections"). Every change of an automerge document depends on the ones before it, so one
//! refused change would strand everything the phone writes after it, and one document grows
//! without bound. So the phone writes a chain: each collection after the first names the one it
//! continues (`continues` in its header), and the phone starts the next one
//!
//! - at a bound ([`DEFAULT_ROLL_OVER_AT`] records, the `roll_over_at` setting): the old one is
//!   `closed`, synced until all of it is acknowledged, and no longer kept in memory;
//! - when the server refuses a change in the current collection: that one is `refused`, the
//!   record the server named is set aside (kept sealed, shown with the reason, never counted), and
//!   every other record not yet acknowledged is written again, **with the same record id**, into
//!   the next collection (the server counts a record id once per campaign);
//! - when the phone enrolls again after its token was revoked or expired: the old device's
//!   collections are `retired`, and what was pending in them moves to the new device's first
//!   collection, which continues the old chain (the server links the two devices).
//!
//! A refusal in a closed collection moves its pending records into the current collection; no
//! new one is needed. Moving a record writes one change per receipt (a signature, then its
//! withdrawal if that was pending too), so every receipt keeps a change of its own whose
//! acknowledgement it waits for. Everything a move does is committed in one transaction.

use automerge::{Automerge, ChangeHash};
use tally_core::campaign::Campaign;
use tally_core::collection;
use tally_proto::DocumentId;

use crate::device::{now_ms, write_error};
use crate::enroll::Enrollment;
use crate::error::{ClientError, Result};
use crate::mirror::{KEY_ENROLLMENT, State};
use crate::receipts::{Receipt, ReceiptKind};
use crate::store::{self, DocRole, DocState};

/// Records a collection takes before the phone starts the next one, unless the `roll_over_at`
/// setting says otherwise ([`crate::Device::set_roll_over_at`]). Chosen by measurement
/// (docs/benchmarks.md, "The phone"): with 5,000 records loaded the phone stays under its 40 MB
/// memory target and signs in under 2 ms at p99, at 10,000 and at 50,000 signatures on the phone.
pub const DEFAULT_ROLL_OVER_AT: usize = 5_000;

/// What a change of the chain did, for the sync report and the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rechained {
    /// Receipts written again into the current collection.
    pub moved: usize,
    /// Receipts set aside (refused by the server, or impossible to move).
    pub set_aside: usize,
    /// The new current collection, if one was started.
    pub started: Option<DocumentId>,
}

/// One change of the chain, carried out by [`State::rechain`].
struct Plan {
    /// Live collections that leave the chain's live part, and the state they move to.
    leave: Vec<(DocumentId, DocState)>,
    /// Why the server refused them, if it did.
    refusal: Option<String>,
    /// Start a new current collection continuing the current one.
    start: bool,
    /// The device that owns the current collection after the change, and collects what moves.
    owner: String,
    /// Receipts to write again into the current collection, in order.
    moves: Vec<Receipt>,
    /// Receipts to set aside, with why.
    set_aside: Vec<(Receipt, String)>,
    /// A new enrollment stored in the same transaction (enrolling again).
    enrollment: Option<Enrollment>,
}

impl State {
    /// Before a local write: starts the next collection if the current one is full.
    pub(crate) fn make_room(&mut self) -> Result<()> {
        if self.collection_records()? < self.roll_over_at {
            return Ok(());
        }
        let current = self.docs[self.index(DocRole::Collection)?].id;
        let owner = self.enrollment()?.device_id.clone();
        self.rechain(Plan {
            leave: vec![(current, DocState::Closed)],
            refusal: None,
            start: true,
            owner,
            moves: Vec::new(),
            set_aside: Vec::new(),
            enrollment: None,
        })?;
        Ok(())
    }

    /// The server refused a change in collection `doc` for `reason`, naming `record` when one
    /// record is at fault. Sets that record aside, and moves every other record of `doc` not yet
    /// acknowledged into the current collection (a new one if `doc` was current). Returns
    /// `None` when `doc` is not a live collection of this phone (already handled, or not ours).
    ///
    /// A refusal that names no record cannot be pinned on one: everything pending moves, once.
    /// If the collection it moved into is refused again, naming no record either, before the
    /// server acknowledged anything in it, the records are set aside instead of moving again,
    /// so that a rule this phone keeps breaking cannot grow the chain without end.
    pub(crate) fn recover_refusal(
        &mut self,
        doc: &DocumentId,
        record: Option<&str>,
        reason: &str,
    ) -> Result<Option<Rechained>> {
        let Some(idx) = self.index_of(doc) else {
            return Ok(None);
        };
        let local = &self.docs[idx];
        if local.role != DocRole::Collection || !local.state.is_live() {
            return Ok(None);
        }
        let (state, chain) = (local.state, local.chain);
        let pending = store::pending_in(&self.conn, doc)?;
        let named: Vec<&Receipt> = match record {
            Some(r) => pending.iter().filter(|p| p.record_id == r).collect(),
            None => Vec::new(),
        };
        let (set_aside, moves): (Vec<Receipt>, Vec<Receipt>) = if !named.is_empty() {
            pending
                .into_iter()
                .partition(|p| Some(p.record_id.as_str()) == record)
        } else {
            let previous_refused = self.docs.iter().any(|d| {
                d.role == DocRole::Collection
                    && d.chain == chain - 1
                    && d.state == DocState::Refused
            });
            if previous_refused && !store::any_acknowledged_in(&self.conn, doc)? {
                (pending, Vec::new())
            } else {
                (Vec::new(), pending)
            }
        };
        let owner = self.enrollment()?.device_id.clone();
        let reason = reason.to_string();
        let done = self.rechain(Plan {
            leave: vec![(*doc, DocState::Refused)],
            refusal: Some(reason.clone()),
            start: state == DocState::Current,
            owner,
            moves,
            set_aside: set_aside.into_iter().map(|r| (r, reason.clone())).collect(),
            enrollment: None,
        })?;
        Ok(Some(done))
    }

    /// Enrolling again in the same campaign as a new device: the old device's collections are
    /// retired, and everything pending in them moves into the new device's first collection,
    /// stored with the new enrollment in one transaction.
    pub(crate) fn reenroll(&mut self, enrollment: Enrollment) -> Result<Rechained> {
        let mut leave = Vec::new();
        let mut moves = Vec::new();
        let mut live: Vec<(i64, DocumentId)> = self
            .docs
            .iter()
            .filter(|d| d.role == DocRole::Collection && d.state.is_live())
            .map(|d| (d.chain, d.id))
            .collect();
        live.sort();
        for (_, id) in live {
            leave.push((id, DocState::Retired));
            moves.extend(store::pending_in(&self.conn, &id)?);
        }
        let owner = enrollment.device_id.clone();
        self.rechain(Plan {
            leave,
            refusal: None,
            start: true,
            owner,
            moves,
            set_aside: Vec::new(),
            enrollment: Some(enrollment),
        })
    }

    /// Carries out a change of the chain: in memory first (the new collection, the records
    /// written again), then in one transaction, then memory is read again from the file (which
    /// also drops the collections that left from memory). On any failure nothing is kept.
    fn rechain(&mut self, plan: Plan) -> Result<Rechained> {
        let done = self.rechain_inner(plan);
        if done.is_err() {
            self.restore();
        }
        done
    }

    fn rechain_inner(&mut self, plan: Plan) -> Result<Rechained> {
        let now = now_ms();
        let campaign = if plan.moves.is_empty() {
            None
        } else {
            Some(self.campaign()?)
        };
        let current = self.index(DocRole::Collection)?;
        let campaign_id = self.enrollment()?.campaign.clone();
        // The collection that takes the moved records: a new one, or the current one.
        let (target_id, mut target, before, chain) = if plan.start {
            let chain = self
                .docs
                .iter()
                .filter(|d| d.role == DocRole::Collection)
                .map(|d| d.chain)
                .max()
                .unwrap_or(0)
                + 1;
            let previous = self.docs[current].id.to_string();
            let doc = collection::create_continuing(&campaign_id, &plan.owner, &previous).map_err(
                |e| ClientError::Corrupt(format!("cannot start the next collection: {e}")),
            )?;
            let id = DocumentId::random(&mut rand::rngs::OsRng);
            (id, doc, Vec::new(), chain)
        } else {
            self.ensure(current)?;
            let doc = self.docs[current].doc()?.clone();
            let heads = doc.get_heads();
            (self.docs[current].id, doc, heads, self.docs[current].chain)
        };
        let mut moved: Vec<(String, String)> = Vec::new();
        let mut set_aside = plan.set_aside;
        for receipt in plan.moves {
            let campaign = campaign.as_ref().expect("read when there are moves");
            match self.write_again(&mut target, &receipt, &plan.owner, campaign) {
                Ok(hash) => moved.push((receipt.change_hash.clone(), store::hash_hex(&hash))),
                Err(e) => {
                    let why = format!("it could not be moved to the next collection: {e}");
                    set_aside.push((receipt, why));
                }
            }
        }
        let bytes = if plan.start {
            target.save()
        } else {
            target.save_after(&before)
        };
        let enrollment_json = plan
            .enrollment
            .as_ref()
            .map(|e| serde_json::to_string(e).expect("enrollment serializes"));
        let current_enrollment = self.enrollment()?.clone();
        self.commit(|tx, _| {
            for (id, state) in &plan.leave {
                store::set_doc_state(tx, id, *state, plan.refusal.as_deref(), now)?;
            }
            if plan.start {
                store::insert_doc(
                    tx,
                    &target_id,
                    DocRole::Collection,
                    chain,
                    Some(&bytes),
                    now,
                )?;
            } else if !moved.is_empty() {
                store::append_chunk(tx, &target_id, &bytes, now)?;
            }
            for (old, new) in &moved {
                store::move_receipt(tx, old, new, &target_id)?;
            }
            for (receipt, why) in &set_aside {
                store::refuse_receipt(tx, &receipt.change_hash, why, now)?;
            }
            let mut enrollment = match &enrollment_json {
                Some(json) => serde_json::from_str::<Enrollment>(json)
                    .map_err(|e| ClientError::Corrupt(format!("the new enrollment: {e}")))?,
                None => current_enrollment.clone(),
            };
            if plan.start {
                enrollment.collection_doc = target_id;
            }
            let json = serde_json::to_string(&enrollment).expect("enrollment serializes");
            store::set_setting(tx, KEY_ENROLLMENT, &json)?;
            Ok(())
        })?;
        self.reload()?;
        Ok(Rechained {
            moved: moved.len(),
            set_aside: set_aside.len(),
            started: plan.start.then_some(target_id),
        })
    }

    /// Writes one receipt's change again into `target` (as collected by `owner`), from the
    /// collection it is in now; returns the new change's hash.
    fn write_again(
        &mut self,
        target: &mut Automerge,
        receipt: &Receipt,
        owner: &str,
        campaign: &Campaign,
    ) -> Result<ChangeHash> {
        let source = receipt
            .doc_id
            .as_deref()
            .and_then(|d| d.parse::<DocumentId>().ok())
            .and_then(|d| self.index_of(&d))
            .ok_or_else(|| {
                ClientError::Corrupt(format!(
                    "the collection of record {} is not on this phone",
                    receipt.record_id
                ))
            })?;
        self.ensure(source)?;
        let src = self.docs[source].doc()?;
        let id = receipt.record_id.as_str();
        let corrupt = |r: tally_core::validate::Rejection| ClientError::Corrupt(r.to_string());
        let before = target.get_heads();
        match receipt.kind {
            ReceiptKind::Signature | ReceiptKind::SignatureWithdrawal => {
                let withdrawal = receipt.kind == ReceiptKind::SignatureWithdrawal;
                if withdrawal
                    && collection::signature(target, id)
                        .map_err(corrupt)?
                        .is_some()
                {
                    collection::withdraw_signature(target, id).map_err(write_error)?;
                } else {
                    let mut sig = collection::signature(src, id)
                        .map_err(corrupt)?
                        .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
                    // A signature's creation moves as it was taken; its withdrawal, pending
                    // too, moves as a change of its own after it.
                    sig.withdrawn = withdrawal;
                    sig.collected_by = owner.to_string();
                    collection::add_signature(target, &sig, campaign).map_err(write_error)?;
                }
            }
            ReceiptKind::Checkin | ReceiptKind::CheckinWithdrawal => {
                let withdrawal = receipt.kind == ReceiptKind::CheckinWithdrawal;
                if withdrawal && collection::checkin(target, id).map_err(corrupt)?.is_some() {
                    collection::withdraw_checkin(target, id).map_err(write_error)?;
                } else {
                    let mut ci = collection::checkin(src, id)
                        .map_err(corrupt)?
                        .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
                    ci.withdrawn = withdrawal;
                    ci.by = owner.to_string();
                    collection::add_checkin(target, &ci, campaign).map_err(write_error)?;
                }
            }
        }
        let new: Vec<ChangeHash> = target
            .get_changes_meta(&before)
            .iter()
            .map(|m| m.hash)
            .collect();
        match new[..] {
            [hash] => Ok(hash),
            _ => Err(ClientError::Corrupt(format!(
                "moving record {id} made {} changes instead of one",
                new.len()
            ))),
        }
    }

    /// The phone's collections the sync pushes: every live one that still holds something the
    /// server has not acknowledged, and the current one once it holds a record (the first of the
    /// chain always, so that the server knows it from the first sync). A new collection with
    /// nothing in it is not pushed: after a refusal that left nothing to move, the server has
    /// nothing to refuse again.
    pub(crate) fn collections_to_sync(&self) -> Result<Vec<DocumentId>> {
        let pending = store::docs_with_pending(&self.conn)?;
        let mut out = Vec::new();
        for d in &self.docs {
            if d.role != DocRole::Collection || !d.state.is_live() {
                continue;
            }
            let push = pending.contains(&d.id)
                || (d.state == DocState::Current
                    && (d.chain == 0 || store::records_in(&self.conn, &d.id)? > 0));
            if push {
                out.push(d.id);
            }
        }
        Ok(out)
    }

    /// Drops from memory the collections that are neither current nor in `keep` (they are
    /// read again from the file when needed).
    pub(crate) fn unload_old_collections(&mut self, keep: &[DocumentId]) {
        for d in &mut self.docs {
            if d.role == DocRole::Collection
                && d.state != DocState::Current
                && !keep.contains(&d.id)
            {
                d.doc = None;
                d.seen_seq = 0;
            }
        }
    }
}
