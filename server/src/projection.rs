//! The totals projection, the document side: which records an accepted change touched
//! ([`Changes::read`], from automerge's diff between the old and new heads, as validation read
//! them), written into the store's projection inside the same write transaction that stores the
//! change ([`Changes::write`], through a `tally_store::Batch`). Nothing re-reads a whole
//! document, and a restart needs no rebuild.
//!
//! The tables, the SQL and the totals queries live in `tally_store::projection`; the cells a
//! record counts in are `tally_core::cells`, the reference totals' equal. [`reindex`] rebuilds
//! the projection from the stored documents (rows through the store's upserts, aggregates by
//! one SQL pass over the rows), for `tally reindex`.
//!
//! No personal field is ever written to the projection: only what totals need, and the
//! duplicate and attendee tokens (HMACs under a key the server never has).

use std::collections::{BTreeMap, HashMap};

use automerge::Automerge;
use tally_core::collection::{self, CHECKINS, Checkin, SIGNATURES, Signature};
use tally_core::review::{self, SHEETS, STRIKES, Sheet, Strike};
use tally_core::validate::Accepted;
use tally_core::{DocHeader, DocKind};
use tally_store::{DocFilter, Storage, StoreError, Writes};
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

/// The records a change touched, as validation read them: made by [`Changes::read`] before the
/// store's writer is taken, so that only SQL runs under it ([`Changes::write`]).
#[derive(Debug, Default)]
pub struct Changes {
    signatures: Vec<Signature>,
    checkins: Vec<Checkin>,
    strikes: Vec<Strike>,
    sheets: Vec<Sheet>,
}

impl Changes {
    /// Every record `acc` touched: as `validate` checked it ([`Accepted::checked`]), else read
    /// from `after`.
    pub fn read(
        header: &DocHeader,
        acc: &Accepted,
        after: &Automerge,
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
                let ids = acc.in_container(SIGNATURES);
                each(
                    ids,
                    &k.signatures,
                    |id| collection::signature(after, id),
                    &mut c.signatures,
                )?;
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

    /// Updates the rows (and aggregates) of the records. `timezone` is the campaign's, for the
    /// day column. A collection's new record whose id another lineage's collection of the
    /// campaign already holds is refused ([`StoreError::Claimed`]), and the caller rolls
    /// the transaction back: a record id is one phone's.
    pub fn write(
        &self,
        tx: &dyn Writes,
        doc_id: &str,
        header: &DocHeader,
        timezone: &str,
    ) -> Result<(), StoreError> {
        let mut batch = tx.projection_batch(&header.campaign);
        if header.kind == DocKind::Collection
            && let Some(owner) = &header.owner
        {
            batch.claim_for(owner)?;
        }
        for s in &self.signatures {
            batch.signature(doc_id, s, timezone)?;
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
        batch.flush()
    }
}

/// Updates the rows (and aggregates) of every record `acc` touched, reading them from `after`.
/// `timezone` is the campaign's, for the day column.
pub fn apply(
    tx: &dyn Writes,
    doc_id: &str,
    header: &DocHeader,
    acc: &Accepted,
    after: &Automerge,
    timezone: &str,
) -> Result<(), ProjectionError> {
    Ok(Changes::read(header, acc, after)?.write(tx, doc_id, header, timezone)?)
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
    store.write_with_error(|tx| {
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
        report.cells = tx.rebuild_aggregates()?;
        Ok(report)
    })
}
