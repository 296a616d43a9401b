//! The storage interface ([`crate::backend`]) on PostgreSQL: a transaction's reads and writes
//! ([`Reads`], [`Writes`], [`Projecting`]) over one `postgres::Transaction`, and [`Storage`]
//! over [`PgStore`]'s typed methods.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use postgres::Transaction;
use tally_core::cells::SignatureRow;
use tally_core::collection::{Checkin, Collection};
use tally_core::review::{Review, Sheet, Strike};
use tally_core::totals::Totals;
use tally_core::validate::Role;

use crate::backend::{
    Change, Projecting, ProjectionStatus, Queued, Reads, Storage, Subscription, Writes,
};
use crate::{
    AuditBroken, AuditEntry, AuditFilter, ChunkStats, Device, DocFilter, DocMeta, Erasure, Filter,
    InviteCode, KeyOutcome, NewAudit, NewQuarantine, QuarantineEntry, QuarantineFilter,
    QuarantineOutcome, QuarantineQuota, Replaces, Result, StoredDoc, StoredKey, Token,
    TokenRefusal,
};

use super::projection::PgBatch;
use super::{PgStore, audit, documents, projection, quarantine, queue};

/// One transaction, read (and written) through the storage traits.
pub(crate) struct PgTx<'a> {
    tx: RefCell<Transaction<'a>>,
}

impl<'a> PgTx<'a> {
    pub(crate) fn new(tx: Transaction<'a>) -> PgTx<'a> {
        PgTx {
            tx: RefCell::new(tx),
        }
    }

    pub(crate) fn commit(self) -> Result<()> {
        self.tx.into_inner().commit()?;
        Ok(())
    }
}

impl Reads for PgTx<'_> {
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        documents::doc_meta(&mut *self.tx.borrow_mut(), doc_id)
    }
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        documents::load_document(&mut *self.tx.borrow_mut(), doc_id)
    }
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        documents::list_documents(&mut *self.tx.borrow_mut(), filter)
    }
    fn totals(&self, campaign: &str) -> Result<Totals> {
        projection::totals(&mut *self.tx.borrow_mut(), campaign)
    }
    fn query_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        projection::query_totals(&mut *self.tx.borrow_mut(), campaign, filter)
    }
    fn scan_totals(&self, campaign: &str, filter: &Filter) -> Result<Totals> {
        projection::scan(&mut *self.tx.borrow_mut(), campaign, filter)
    }
    fn has_signature(&self, campaign: &str, sig_id: &str) -> Result<bool> {
        projection::has_signature(&mut *self.tx.borrow_mut(), campaign, sig_id)
    }
    fn signature_rows(&self) -> Result<u64> {
        projection::signature_rows(&mut *self.tx.borrow_mut())
    }
    fn lineage_of(&self, device_id: &str) -> Result<String> {
        projection::lineage_of(&mut *self.tx.borrow_mut(), device_id)
    }
    fn projection_dump(&self) -> Result<BTreeMap<&'static str, Vec<String>>> {
        projection::dump(&mut *self.tx.borrow_mut())
    }
    fn projection_status(&self, campaign: Option<&str>) -> Result<ProjectionStatus> {
        queue::projection_status(&mut *self.tx.borrow_mut(), campaign)
    }
}

impl Writes for PgTx<'_> {
    fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        documents::put_meta(&mut *self.tx.borrow_mut(), meta)
    }
    fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        documents::append_chunk(&mut *self.tx.borrow_mut(), doc_id, bytes, now)
    }
    fn lock_document(&self, doc_id: &str) -> Result<()> {
        documents::lock_document(&mut *self.tx.borrow_mut(), doc_id)
    }
    fn save_sync_state(&self, peer_key: &str, doc_id: &str, bytes: &[u8], now: i64) -> Result<()> {
        documents::save_sync_state(&mut *self.tx.borrow_mut(), peer_key, doc_id, bytes, now)
    }
    fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        let entry = crate::quarantine::legacy(device_id, doc_id, reason, bytes, now);
        quarantine::quarantine(
            &mut *self.tx.borrow_mut(),
            &entry,
            &QuarantineQuota::default(),
        )
        .map(crate::quarantine::id_of)
    }
    fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        quarantine::quarantine(&mut *self.tx.borrow_mut(), entry, quota)
    }
    fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        audit::append(&mut *self.tx.borrow_mut(), e)
    }
    fn claim_records(
        &self,
        campaign: &str,
        owner: &str,
        container: &'static str,
        ids: &[&str],
    ) -> Result<()> {
        queue::claim_records(&mut *self.tx.borrow_mut(), campaign, owner, container, ids)
    }
    fn enqueue_projection(
        &self,
        campaign: &str,
        doc_id: &str,
        records: u64,
        payload: &[u8],
        now: i64,
    ) -> Result<i64> {
        queue::enqueue_projection(
            &mut *self.tx.borrow_mut(),
            campaign,
            doc_id,
            records,
            payload,
            now,
        )
    }
    fn take_projection(&self, max_records: u64) -> Result<Option<Vec<Queued>>> {
        queue::take_projection(&mut *self.tx.borrow_mut(), max_records)
    }
    fn projection_batch(&self, campaign: &str) -> Box<dyn Projecting + '_> {
        Box::new(PgProjecting {
            tx: &self.tx,
            batch: PgBatch::new(campaign),
        })
    }
    fn clear_projection_rows(&self) -> Result<()> {
        // A rebuild while other servers run: no chunk may be stored (and projected) between
        // reading the documents and committing the rebuilt rows, or it would be missed or
        // counted twice. SHARE conflicts with every write to the table and with nothing that
        // reads it; the lock is held until the rebuild commits.
        self.tx
            .borrow_mut()
            .batch_execute("LOCK TABLE chunks IN SHARE MODE")?;
        // No projector write meanwhile: the queue goes with the rows.
        queue::hold_projector(&mut *self.tx.borrow_mut())?;
        projection::clear_projection_rows(&mut *self.tx.borrow_mut())
    }
    fn rebuild_claims(&self) -> Result<()> {
        queue::rebuild_claims(&mut *self.tx.borrow_mut())
    }
    fn project_collection(
        &self,
        doc_id: &str,
        campaign: &str,
        collection: &Collection,
        timezone: &str,
    ) -> Result<(u64, u64)> {
        projection::project_collection(
            &mut *self.tx.borrow_mut(),
            doc_id,
            campaign,
            collection,
            timezone,
        )
    }
    fn project_review(&self, campaign: &str, review: &Review) -> Result<(u64, u64)> {
        projection::project_review(&mut *self.tx.borrow_mut(), campaign, review)
    }
    fn rebuild_aggregates(&self) -> Result<u64> {
        projection::rebuild_aggregates(&mut *self.tx.borrow_mut())
    }
    fn rebuild_aggregates_if_stale(&self) -> Result<bool> {
        projection::rebuild_aggregates_if_stale(&mut *self.tx.borrow_mut())
    }
}

/// A projection batch inside a [`PgTx`].
struct PgProjecting<'t, 'a> {
    tx: &'t RefCell<Transaction<'a>>,
    batch: PgBatch,
}

impl Projecting for PgProjecting<'_, '_> {
    fn signature(&mut self, doc_id: &str, id: &str, row: &SignatureRow) -> Result<()> {
        self.batch.signature(doc_id, id, row);
        Ok(())
    }
    fn checkin(&mut self, doc_id: &str, c: &Checkin) -> Result<()> {
        self.batch.checkin(doc_id, c);
        Ok(())
    }
    fn strike(&mut self, s: &Strike) -> Result<()> {
        self.batch.strike(s);
        Ok(())
    }
    fn sheet(&mut self, s: &Sheet) -> Result<()> {
        self.batch.sheet(s);
        Ok(())
    }
    fn flush(self: Box<Self>) -> Result<()> {
        let this = *self;
        this.batch.flush(&mut *this.tx.borrow_mut())
    }
}

impl Storage for PgStore {
    fn read_with(&self, f: &mut dyn FnMut(&dyn Reads) -> Result<()>) -> Result<()> {
        self.read_tx(|tx| f(tx))
    }
    fn write_with(&self, f: &mut dyn FnMut(&dyn Writes) -> Result<()>) -> Result<()> {
        self.write_tx(|tx| f(tx))
    }
    fn put_meta(&self, meta: &DocMeta) -> Result<bool> {
        PgStore::put_meta(self, meta)
    }
    fn append_chunk(&self, doc_id: &str, bytes: &[u8], now: i64) -> Result<i64> {
        PgStore::append_chunk(self, doc_id, bytes, now)
    }
    fn doc_meta(&self, doc_id: &str) -> Result<Option<DocMeta>> {
        PgStore::doc_meta(self, doc_id)
    }
    fn load_document(&self, doc_id: &str) -> Result<Option<StoredDoc>> {
        PgStore::load_document(self, doc_id)
    }
    fn compact(&self, doc_id: &str, snapshot: &[u8], through_seq: i64, now: i64) -> Result<bool> {
        PgStore::compact(self, doc_id, snapshot, through_seq, now)
    }
    fn chunks_since_snapshot(&self, doc_id: &str) -> Result<ChunkStats> {
        PgStore::chunks_since_snapshot(self, doc_id)
    }
    fn list_documents(&self, filter: &DocFilter) -> Result<Vec<DocMeta>> {
        PgStore::list_documents(self, filter)
    }
    fn list_campaigns(&self) -> Result<Vec<DocMeta>> {
        PgStore::list_campaigns(self)
    }
    fn count_documents_by_owner(&self, owner: &str) -> Result<u64> {
        self.read(|tx| {
            let n: i64 = tx
                .query_one("SELECT COUNT(*) FROM documents WHERE owner = $1", &[&owner])?
                .get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
    fn count_collections(&self, owner: &str, campaign: &str) -> Result<u64> {
        self.read(|tx| {
            let n: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM documents WHERE owner = $1 AND campaign = $2 \
                     AND kind = 'collection'",
                    &[&owner, &campaign],
                )?
                .get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
    fn save_sync_state(&self, peer_key: &str, doc_id: &str, bytes: &[u8], now: i64) -> Result<()> {
        PgStore::save_sync_state(self, peer_key, doc_id, bytes, now)
    }
    fn load_sync_state(&self, peer_key: &str, doc_id: &str) -> Result<Option<Vec<u8>>> {
        PgStore::load_sync_state(self, peer_key, doc_id)
    }
    fn subscribe(
        &self,
        on_change: Arc<dyn Fn(Change) + Send + Sync>,
    ) -> Result<Option<Subscription>> {
        PgStore::subscribe(self, on_change).map(Some)
    }
    fn try_exclusive(&self, what: &str) -> Result<Option<crate::Exclusive<'_>>> {
        PgStore::try_exclusive(self, what)
    }
    fn has_admin(&self) -> Result<bool> {
        PgStore::has_admin(self)
    }
    fn create_admin(&self, name: &str, now: i64) -> Result<(Device, Token)> {
        PgStore::create_admin(self, name, now)
    }
    fn create_invite(
        &self,
        campaign: Option<&str>,
        role: Role,
        ttl_ms: i64,
        now: i64,
    ) -> Result<(String, InviteCode)> {
        PgStore::create_invite(self, campaign, role, ttl_ms, now)
    }
    fn redeem_invite_replacing(
        &self,
        code: &str,
        device_name: &str,
        now: i64,
        replaces: Option<Replaces<'_>>,
    ) -> Result<(Device, Token)> {
        PgStore::redeem_invite_replacing(self, code, device_name, now, replaces)
    }
    fn check_token(
        &self,
        token: &str,
        now: i64,
        idle_expiry_ms: Option<i64>,
    ) -> Result<std::result::Result<Device, TokenRefusal>> {
        PgStore::check_token(self, token, now, idle_expiry_ms)
    }
    fn record_seen(&self, device: &Device, now: i64) -> Result<bool> {
        PgStore::record_seen(self, device, now)
    }
    fn revoke_device(&self, device_id: &str, now: i64) -> Result<bool> {
        PgStore::revoke_device(self, device_id, now)
    }
    fn device(&self, device_id: &str) -> Result<Option<Device>> {
        PgStore::device(self, device_id)
    }
    fn list_devices(&self) -> Result<Vec<Device>> {
        PgStore::list_devices(self)
    }
    fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>> {
        PgStore::revoked_since(self, since_ms)
    }
    fn quarantine(
        &self,
        device_id: &str,
        doc_id: &str,
        reason: &str,
        bytes: &[u8],
        now: i64,
    ) -> Result<i64> {
        PgStore::quarantine(self, device_id, doc_id, reason, bytes, now)
    }
    fn quarantine_entry(
        &self,
        entry: &NewQuarantine<'_>,
        quota: &QuarantineQuota,
    ) -> Result<QuarantineOutcome> {
        PgStore::quarantine_entry(self, entry, quota)
    }
    fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineEntry>> {
        PgStore::list_quarantine(self, filter)
    }
    fn quarantine_len(&self) -> Result<u64> {
        PgStore::quarantine_len(self)
    }
    fn audit(&self, e: &NewAudit<'_>) -> Result<AuditEntry> {
        PgStore::audit(self, e)
    }
    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        PgStore::list_audit(self, filter)
    }
    fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBroken>> {
        PgStore::verify_audit(self)
    }
    fn put_keys(
        &self,
        campaign: &str,
        device: &str,
        keys: &[(String, Vec<u8>)],
        max_per_device: u64,
        now: i64,
    ) -> Result<Vec<KeyOutcome>> {
        PgStore::put_keys(self, campaign, device, keys, max_per_device, now)
    }
    fn list_keys(&self, campaign: &str, after: Option<&str>, limit: u32) -> Result<Vec<StoredKey>> {
        PgStore::list_keys(self, campaign, after, limit)
    }
    fn records_with_token(&self, campaign: &str, token: &str) -> Result<Vec<String>> {
        PgStore::records_with_token(self, campaign, token)
    }
    fn unknown_signatures(&self, campaign: &str, records: &[String]) -> Result<Vec<String>> {
        PgStore::unknown_signatures(self, campaign, records)
    }
    fn erased_records(&self, campaign: &str) -> Result<Vec<String>> {
        PgStore::erased_records(self, campaign)
    }
    fn erase_records(
        &self,
        campaign: &str,
        records: &[String],
        by: &str,
        now: i64,
    ) -> Result<Erasure> {
        PgStore::erase_records(self, campaign, records, by, now)
    }
    fn scrub_erased(&self) -> Result<()> {
        PgStore::scrub_erased(self)
    }
    fn database_bytes(&self) -> Result<u64> {
        self.read(|tx| {
            let n: i64 = tx
                .query_one("SELECT pg_database_size(current_database())", &[])?
                .get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
