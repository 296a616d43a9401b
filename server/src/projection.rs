//! The totals projection, the document side: which records an accepted change touched
//! ([`Changes::read`], from automerge's diff between the old and new heads, as validation read
//! them). The write that stores the change and is acknowledged only claims its records and
//! queues them ([`Changes::acknowledge`]); the projector ([`project_pending`], run by
//! `crate::projector`) applies the queued changes to the projection's rows and aggregates in
//! batches, in writes of its own, and takes them out of the queue in the same write. Nothing
//! re-reads a whole document, and a restart needs no rebuild: what was queued and not yet
//! projected is projected after it.
//!
//! The tables, the SQL and the totals queries live in `tally_store::projection`; the cells a
//! record counts in are `tally_core::cells`, the reference totals' equal. [`reindex`] rebuilds
//! the projection from the stored documents (rows through the store's upserts, aggregates by
//! one SQL pass over the rows), for `tally reindex`.
//!
//! No personal field is ever written to the projection: only what totals need, and the
//! duplicate and attendee tokens (HMACs under a key the server never has).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::Automerge;
use tally_core::cells::SignatureRow;
use tally_core::collection::{self, CHECKINS, Checkin, SIGNATURES};
use tally_core::review::{self, SHEETS, STRIKES, Sheet, Strike};
use tally_core::validate::Accepted;
use tally_core::{DocHeader, DocKind};
use tally_store::{DocFilter, Projecting, Queued, Storage, StoreError, Writes};
pub use tally_store::{Filter, ReindexReport};

/// Projection failures: a stored record that does not read back (a bug), or storage (which
/// includes a record id another phone holds, `StoreError::Claimed`, and aggregates out of step
/// with the rows, `StoreError::Drift`).
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A record could not be read from the document.
    #[error("record {0} could not be projected: {1}")]
    Record(String, String),
    /// A stored document could not be loaded (reindex).
    #[error("document {0} could not be loaded: {1}")]
    Load(String, String),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The records a change touched, as the projection holds them (a signature's row, no sealed
/// field): made by [`Changes::read`] before the store's writer is taken. The acknowledging
/// write claims its records and queues it ([`Changes::acknowledge`]); the projector applies it
/// later, in a batch with others ([`project_pending`]).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    signatures: Vec<(String, SignatureRow)>,
    checkins: Vec<Checkin>,
    strikes: Vec<Strike>,
    sheets: Vec<Sheet>,
}

impl Changes {
    /// Every record `acc` touched: as `validate` checked it ([`Accepted::checked`]), else read
    /// from `after`. `timezone` is the campaign's, for a signature's day.
    pub fn read(
        header: &DocHeader,
        acc: &Accepted,
        after: &Automerge,
        timezone: &str,
    ) -> Result<Changes, ProjectionError> {
        fn each<T: Clone>(
            ids: impl Iterator<Item = impl AsRef<str>>,
            checked: &BTreeMap<String, T>,
            read: impl Fn(&str) -> Result<Option<T>, tally_core::validate::Rejection>,
            out: &mut Vec<T>,
        ) -> Result<(), ProjectionError> {
            for id in ids {
                let id = id.as_ref();
                match checked.get(id) {
                    Some(r) => out.push(r.clone()),
                    None => out.extend(
                        read(id).map_err(|e| ProjectionError::Record(id.into(), e.to_string()))?,
                    ),
                }
            }
            Ok(())
        }
        let (k, mut c) = (&acc.checked, Changes::default());
        match header.kind {
            DocKind::Collection => {
                let mut signatures = Vec::new();
                let ids = acc.in_container(SIGNATURES);
                each(
                    ids,
                    &k.signatures,
                    |id| collection::signature(after, id),
                    &mut signatures,
                )?;
                c.signatures = signatures
                    .iter()
                    .map(|s| (s.id.clone(), SignatureRow::of(s, timezone)))
                    .collect();
                let ids = acc.in_container(CHECKINS);
                each(
                    ids,
                    &k.checkins,
                    |id| collection::checkin(after, id),
                    &mut c.checkins,
                )?;
            }
            DocKind::Review => {
                let ids = acc.in_container(STRIKES);
                each(
                    ids,
                    &k.strikes,
                    |id| review::strike(after, id),
                    &mut c.strikes,
                )?;
                let ids = acc.in_container(SHEETS);
                each(ids, &k.sheets, |id| review::sheet(after, id), &mut c.sheets)?;
            }
            DocKind::Campaign | DocKind::Totals => {}
        }
        Ok(c)
    }

    /// How many records the change touched.
    pub fn records(&self) -> u64 {
        (self.signatures.len() + self.checkins.len() + self.strikes.len() + self.sheets.len())
            as u64
    }

    /// What the acknowledging write keeps of the change's projection: a collection's records
    /// are claimed for its owner's phone (a record id another phone's collection holds is
    /// refused, [`StoreError::Claimed`], and the caller rolls the write back), and the change
    /// is queued for the projector.
    pub fn acknowledge(
        &self,
        tx: &dyn Writes,
        doc_id: &str,
        header: &DocHeader,
        now: i64,
    ) -> Result<(), StoreError> {
        if header.kind == DocKind::Collection
            && let Some(owner) = &header.owner
        {
            let ids: Vec<&str> = self.signatures.iter().map(|(id, _)| id.as_str()).collect();
            tx.claim_records(&header.campaign, owner, SIGNATURES, &ids)?;
            let ids: Vec<&str> = self.checkins.iter().map(|c| c.id.as_str()).collect();
            tx.claim_records(&header.campaign, owner, CHECKINS, &ids)?;
        }
        let records = self.records();
        if records > 0 {
            let payload = serde_json::to_vec(self).map_err(|e| {
                StoreError::Invalid(format!("the change to {doc_id} could not be queued: {e}"))
            })?;
            tx.enqueue_projection(&header.campaign, doc_id, records, &payload, now)?;
        }
        Ok(())
    }

    /// Projects the records of collection or review `doc_id` into `batch`.
    fn project(&self, batch: &mut dyn Projecting, doc_id: &str) -> Result<(), StoreError> {
        for (id, row) in &self.signatures {
            batch.signature(doc_id, id, row)?;
        }
        for c in &self.checkins {
            batch.checkin(doc_id, c)?;
        }
        for s in &self.strikes {
            batch.strike(s)?;
        }
        for s in &self.sheets {
            batch.sheet(s)?;
        }
        Ok(())
    }
}

/// What one projector write applied ([`project_pending`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Projected {
    /// Queued changes applied.
    pub changes: u64,
    /// The records they touched.
    pub records: u64,
    /// The campaigns whose totals changed.
    pub campaigns: BTreeSet<String>,
    /// When the oldest of them was acknowledged (ms since the epoch).
    pub oldest_at: Option<i64>,
}

/// Projects the oldest acknowledged changes (about `max_records` records) in one write: each
/// campaign's changes in one batch, in the order they were acknowledged, their aggregate
/// cells netted; they leave the queue in the same write, so each is projected exactly once.
/// `None` when another server is projecting. The write is never grouped with the short
/// acknowledging writes (SQLite's group commit), so that they do not wait for it to commit.
pub fn project_pending(
    store: &dyn Storage,
    max_records: u64,
) -> Result<Option<Projected>, ProjectionError> {
    store.write_alone_with_error(|tx| {
        let Some(taken) = tx.take_projection(max_records)? else {
            return Ok(None);
        };
        let mut by_campaign: BTreeMap<&str, Vec<&Queued>> = BTreeMap::new();
        for q in &taken {
            by_campaign.entry(q.campaign.as_str()).or_default().push(q);
        }
        let mut done = Projected {
            oldest_at: taken.iter().map(|q| q.at).min(),
            ..Projected::default()
        };
        for (campaign, queued) in by_campaign {
            let mut batch = tx.projection_batch(campaign);
            for q in queued {
                let changes: Changes = serde_json::from_slice(&q.payload).map_err(|e| {
                    ProjectionError::Record(
                        format!("queued change {} of {}", q.id, q.doc_id),
                        e.to_string(),
                    )
                })?;
                changes.project(batch.as_mut(), &q.doc_id)?;
                done.changes += 1;
                done.records += q.records;
            }
            batch.flush()?;
            done.campaigns.insert(campaign.to_string());
        }
        Ok(Some(done))
    })
}

fn load(tx: &dyn Writes, doc_id: &str) -> Result<Automerge, ProjectionError> {
    let bad = |e: String| ProjectionError::Load(doc_id.to_string(), e);
    let stored = tx
        .load_document(doc_id)?
        .ok_or_else(|| bad("listed but not stored".into()))?;
    let mut doc = match &stored.snapshot {
        Some(snap) => Automerge::load(snap).map_err(|e| bad(e.to_string()))?,
        None => Automerge::new(),
    };
    for chunk in &stored.incremental {
        doc.load_incremental(chunk)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(doc)
}

/// Rebuilds every projection table from the stored documents, in one write transaction: the
/// rows through the same upserts as the incremental path, then the aggregates from the rows.
/// Loads one document at a time.
pub fn reindex(store: &dyn Storage) -> Result<ReindexReport, ProjectionError> {
    store.write_alone_with_error(|tx| {
        tx.clear_projection_rows()?;
        let mut report = ReindexReport::default();
        let mut zones: HashMap<String, String> = HashMap::new();
        for meta in tx.list_documents(&DocFilter {
            kind: Some(tally_store::CAMPAIGN_KIND.into()),
            ..DocFilter::default()
        })? {
            let doc = load(tx, &meta.doc_id)?;
            let c = tally_core::campaign::read(&doc)
                .map_err(|e| ProjectionError::Load(meta.doc_id.clone(), e.to_string()))?;
            zones.insert(meta.campaign.clone(), c.timezone);
        }
        for meta in tx.list_documents(&DocFilter::default())? {
            report.documents += 1;
            let unreadable = |e: tally_core::Rejection| {
                ProjectionError::Load(meta.doc_id.clone(), e.to_string())
            };
            let campaign = meta.campaign.as_str();
            match meta.kind.as_str() {
                "collection" => {
                    let doc = load(tx, &meta.doc_id)?;
                    let tz = zones.get(campaign).map_or("UTC", String::as_str);
                    let c = collection::read(&doc).map_err(unreadable)?;
                    let (sigs, cis) = tx.project_collection(&meta.doc_id, campaign, &c, tz)?;
                    report.signatures += sigs;
                    report.checkins += cis;
                }
                "review" => {
                    let doc = load(tx, &meta.doc_id)?;
                    let r = review::read(&doc).map_err(unreadable)?;
                    let (strikes, sheets) = tx.project_review(campaign, &r)?;
                    report.strikes += strikes;
                    report.sheets += sheets;
                }
                _ => {}
            }
        }
        tx.rebuild_claims()?;
        report.cells = tx.rebuild_aggregates()?;
        Ok(report)
    })
}
