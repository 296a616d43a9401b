//! The baseline: the same changes the phones pushed, applied in one process with no network,
//! one phone after the other, by the server's own library code:
//!
//! - **apply + rows** (the baseline of the issue): each phone's changes applied to a fork of its
//!   collection document as the server held it after enrollment (`load_incremental`), then one
//!   SQLite transaction through `tally_store::Store` (WAL, `synchronous=FULL`, as the server opens
//!   it) appending the chunk and writing the rows with the server's `projection::apply`;
//! - the same with `tally_core::validate` between the two (what the server also does);
//! - the server's whole write path, `tally_server::hub::Hub::commit`, in-process.
//!
//! The ratio of the server's ingest rate to the first is how much the network, the protocol,
//! the concurrency and validation cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use automerge::Automerge;
use tally_core::DocHeader;
use tally_core::collection::{self, SIGNATURES};
use tally_core::validate::{Accepted, Role, Writer, validate};
use tally_proto::DocumentId;
use tally_server::hub::{Hub, HubConfig};
use tally_server::projection;
use tally_store::{DocMeta, Store, StoreError};

use crate::report::Figures;
use crate::setup::{Setup, now_ms, progress};

/// Time spent in each step, summed over phones.
#[derive(Default, Debug, Clone, Copy)]
struct Steps {
    apply: Duration,
    validate: Duration,
    rows: Duration,
}

/// One phone's work, prepared before timing.
struct Work {
    key: String,
    id: DocumentId,
    writer: Writer,
    /// The collection as the server held it after enrollment, loaded from its bytes.
    before: Automerge,
    /// The phone's new changes, as bytes.
    chunk: Vec<u8>,
    /// The signature ids the changes add.
    ids: Vec<String>,
    header: DocHeader,
    signatures: usize,
}

fn prepare(setup: &Setup) -> Result<Vec<Work>> {
    setup
        .phones
        .iter()
        .zip(&setup.base_heads)
        .map(|(p, base)| {
            let doc = p.collection_doc();
            // As the server holds it: loaded from the bytes it stored (it unloads idle
            // documents, so at the reconnect it loads them from SQLite).
            let before = Automerge::load(&doc.fork_at(base)?.save())?;
            let read = collection::read(doc).map_err(|e| anyhow!("{e}"))?;
            let header = DocHeader::read(doc).map_err(|e| anyhow!("{e}"))?;
            Ok(Work {
                key: p.collection.to_string(),
                id: p.collection,
                writer: Writer {
                    id: p.device_id.clone(),
                    role: Role::Canvasser,
                    campaign: Some(setup.campaign_id.clone()),
                },
                before,
                chunk: doc.save_after(base),
                signatures: read.signatures.len(),
                ids: read.signatures.into_keys().collect(),
                header,
            })
        })
        .collect()
}

/// Runs the baseline on the phones of `setup` (their collections hold the signatures);
/// `server_rate` is the ingest rate measured over the network, if any.
pub fn run(
    setup: &Setup,
    dir: &std::path::Path,
    server_rate: Option<f64>,
    figs: &mut Figures,
) -> Result<()> {
    eprintln!("== baseline: the same changes in one process, no network");
    let work = prepare(setup)?;
    let total: usize = work.iter().map(|w| w.signatures).sum();
    let tz = setup.campaign.timezone.clone();

    // apply + rows (and validate, timed apart).
    let store = Store::open(&dir.join("baseline.db"))?;
    let now = now_ms();
    store.write(|tx| {
        for w in &work {
            tx.put_meta(&DocMeta {
                doc_id: w.key.clone(),
                kind: "collection".into(),
                campaign: setup.campaign_id.clone(),
                owner: Some(w.writer.id.clone()),
                created_at: now,
            })?;
            tx.append_chunk(&w.key, &w.before.save(), now)?;
        }
        Ok(())
    })?;
    let pb = progress(work.len() as u64, "baseline: apply + rows");
    let mut steps = Steps::default();
    for w in &work {
        let t = Instant::now();
        let mut after = w.before.fork();
        after.load_incremental(&w.chunk)?;
        steps.apply += t.elapsed();

        let t = Instant::now();
        validate(&w.before, &after, &w.writer, Some(&setup.campaign))
            .map_err(|r| anyhow!("the baseline's own changes do not validate: {r}"))?;
        steps.validate += t.elapsed();

        let t = Instant::now();
        let acc = Accepted {
            header: Some(w.header.clone()),
            records: w
                .ids
                .iter()
                .map(|id| (SIGNATURES.to_string(), id.clone()))
                .collect(),
            ..Accepted::default()
        };
        let chunk = after.save_after(&w.before.get_heads());
        store.write_with_error::<_, StoreError>(|tx| {
            tx.append_chunk(&w.key, &chunk, now_ms())?;
            projection::apply(tx, &w.key, &w.header, &acc, &after, &tz)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            Ok(())
        })?;
        steps.rows += t.elapsed();
        pb.inc(1);
    }
    pb.finish();
    let rows = store.read(|r| r.signature_rows())?;
    if rows as usize != total {
        figs.note(format!(
            "baseline: {rows} signature rows written, expected {total}"
        ));
    }
    drop(store);

    // The server's whole write path, in-process.
    let hub_secs = hub_path(setup, &work, dir)?;

    let t = total as f64;
    let base = t / (steps.apply + steps.rows).as_secs_f64().max(1e-9);
    let with_validation = t
        / (steps.apply + steps.validate + steps.rows)
            .as_secs_f64()
            .max(1e-9);
    let per_sig = |d: Duration| Some(d.as_secs_f64() * 1e6 / t.max(1.0));
    figs.add(
        "baseline.signatures_per_sec",
        "baseline: apply the changes + write the rows, one process, no network",
        Some(base),
        "sig/s",
    );
    figs.add_target(
        "baseline.ratio",
        "ingest over the network / baseline",
        server_rate.map(|r| r / base),
        "x",
        crate::report::Cmp::AtLeast,
        0.5,
    );
    figs.add(
        "baseline.with_validation_per_sec",
        "baseline with validate (tally_core::validate)",
        Some(with_validation),
        "sig/s",
    );
    figs.add(
        "baseline.hub_per_sec",
        "baseline: the server's write path (Hub::commit) in-process",
        hub_secs.map(|s| t / s.max(1e-9)),
        "sig/s",
    );
    figs.add(
        "baseline.apply_us_per_sig",
        "baseline: applying the changes, per signature",
        per_sig(steps.apply),
        "µs",
    );
    figs.add(
        "baseline.validate_us_per_sig",
        "baseline: validate, per signature",
        per_sig(steps.validate),
        "µs",
    );
    figs.add(
        "baseline.rows_us_per_sig",
        "baseline: chunk + rows + commit (fsync), per signature",
        per_sig(steps.rows),
        "µs",
    );
    Ok(())
}

/// `Hub::commit` for every phone, on a fresh store holding the campaign and the collections as
/// enrolled; returns the seconds the phones' commits took.
fn hub_path(setup: &Setup, work: &[Work], dir: &std::path::Path) -> Result<Option<f64>> {
    let store = Arc::new(Store::open(&dir.join("hub.db"))?);
    let hub = Hub::new(
        store,
        HubConfig {
            idle_unload: Duration::from_secs(60),
            compact_after_chunks: 64,
            max_documents_per_device: 64,
            max_loaded_documents: 0,
        },
    );
    let admin = Writer {
        id: "admin".into(),
        role: Role::Admin,
        campaign: None,
    };
    let cid: DocumentId = setup
        .campaign_id
        .parse()
        .map_err(|e| anyhow!("campaign id: {e}"))?;
    let mut cdoc = setup.campaign_doc.clone();
    hub.commit(&cid, &admin, None, b"", move |after| {
        after
            .merge(&mut cdoc)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .map_err(|e| anyhow!("hub baseline, campaign: {e}"))?;
    for w in work {
        let bytes = w.before.save();
        hub.commit(&w.id, &w.writer, None, b"", |after| {
            after
                .load_incremental(&bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow!("hub baseline, enrollment of {}: {e}", w.key))?;
    }
    let pb = progress(work.len() as u64, "baseline: Hub::commit");
    let t = Instant::now();
    for w in work {
        hub.commit(&w.id, &w.writer, None, &w.chunk, |after| {
            after
                .load_incremental(&w.chunk)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow!("hub baseline, {}: {e}", w.key))?;
        pb.inc(1);
    }
    let secs = t.elapsed().as_secs_f64();
    pb.finish();
    Ok(Some(secs))
}
