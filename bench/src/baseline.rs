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
//!
//! And the **floor** (issue 18): what any automerge server that keeps data must pay at least.
//! Each phone's changes loaded into its document as the server held it after enrollment
//! (`load_incremental`) and their bytes appended to one log file, `fdatasync`ed before the next
//! phone counts as done, as a minimal durable server would; no validation, no projection, no
//! SQLite. The ratio of the server's ingest rate to the floor is what tally's own work costs.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use automerge::Automerge;
use tally_core::DocHeader;
use tally_core::collection::{self, SIGNATURES};
use tally_core::validate::{Accepted, Role, Writer, validate};
use tally_proto::DocumentId;
use tally_server::hub::{Hub, HubConfig};
use tally_server::projection;
use tally_store::{DocMeta, Store, StoreError};

use crate::report::Figures;
use crate::server::Backend;
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

/// A document as a minimal durable server holds it, and the changes a phone pushes to it.
pub struct FloorDoc {
    /// The document's key (its id), written before each record in the log.
    pub key: String,
    /// The document as the server held it after enrollment.
    pub doc: Automerge,
    /// The phone's new changes, as bytes.
    pub chunk: Vec<u8>,
}

/// The floor: for each document in turn, its chunk loaded into it (`load_incremental`) and
/// appended to `log` (the key's length and bytes, the chunk's length and bytes), then
/// `fdatasync`; a document counts as done only once its bytes are durable. Returns the time it
/// took.
pub fn floor(docs: &mut [FloorDoc], log: &Path) -> Result<Duration> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening the floor's log {}", log.display()))?;
    let t = Instant::now();
    for d in docs.iter_mut() {
        d.doc.load_incremental(&d.chunk)?;
        let mut record = Vec::with_capacity(d.key.len() + d.chunk.len() + 8);
        record.extend_from_slice(&(d.key.len() as u32).to_le_bytes());
        record.extend_from_slice(d.key.as_bytes());
        record.extend_from_slice(&(d.chunk.len() as u32).to_le_bytes());
        record.extend_from_slice(&d.chunk);
        file.write_all(&record)?;
        file.sync_data()?;
    }
    Ok(t.elapsed())
}

/// `rate / reference`, when both are measured and the reference is not zero.
pub fn ratio(rate: Option<f64>, reference: f64) -> Option<f64> {
    rate.filter(|_| reference > 0.0).map(|r| r / reference)
}

/// Runs the baseline on the phones of `setup` (their collections hold the signatures);
/// `server_rates` are the ingest rates measured over the network, one per backend (their ratios
/// are keyed as the backend keys its figures: `baseline.floor_ratio` for SQLite,
/// `baseline_pg3.floor_ratio` for three servers on PostgreSQL).
pub fn run(
    setup: &Setup,
    dir: &std::path::Path,
    server_rates: &[(Backend, Option<f64>)],
    figs: &mut Figures,
) -> Result<()> {
    eprintln!("== baseline: the same changes in one process, no network");
    let work = prepare(setup)?;
    let total: usize = work.iter().map(|w| w.signatures).sum();

    // The floor first, on documents of its own (loaded from the same bytes).
    let mut docs = work
        .iter()
        .map(|w| {
            Ok(FloorDoc {
                key: w.key.clone(),
                doc: Automerge::load(&w.before.save())?,
                chunk: w.chunk.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let floor_log = dir.join("floor.log");
    let floor_time = floor(&mut docs, &floor_log)?;
    drop(docs);
    let floor_bytes = std::fs::metadata(&floor_log).map(|m| m.len()).unwrap_or(0);
    std::fs::remove_file(&floor_log).ok();
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
        let changes = projection::Changes::read(&w.header, &acc, &after, &tz)
            .map_err(|e| anyhow!("the baseline's own changes do not read back: {e}"))?;
        store.write_with_error::<_, StoreError>(|tx| {
            tx.append_chunk(&w.key, &chunk, now_ms())?;
            changes.acknowledge(tx, &w.key, &w.header, now_ms())
        })?;
        steps.rows += t.elapsed();
        pb.inc(1);
    }
    pb.finish();
    // The projector's share: every queued change counted, in its batches.
    let t = Instant::now();
    drain(&store)?;
    steps.rows += t.elapsed();
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
    let floor_rate = t / floor_time.as_secs_f64().max(1e-9);
    figs.add(
        "baseline.floor_per_sec",
        "floor: load_incremental + append the bytes + fdatasync per phone, one process, no \
         validation, no projection, no SQLite",
        Some(floor_rate),
        "sig/s",
    )
    .with_note(format!(
        "{} phones, {:.1} MB appended",
        work.len(),
        floor_bytes as f64 / 1_048_576.0
    ));
    figs.add(
        "baseline.signatures_per_sec",
        "baseline: apply the changes + write the rows, one process, no network",
        Some(base),
        "sig/s",
    );
    if server_rates.is_empty() {
        figs.add_target(
            "baseline.floor_ratio",
            "ingest over the network / floor",
            None,
            "x",
            crate::report::Cmp::AtLeast,
            0.5,
        )
        .with_note("no ingest phase in this run");
        figs.add(
            "baseline.ratio",
            "ingest over the network / baseline",
            None,
            "x",
        )
        .with_note("no ingest phase in this run");
    }
    for (backend, rate) in server_rates {
        let label = backend.label_prefix();
        figs.add_target(
            &backend.key("baseline.floor_ratio"),
            &format!("{label}ingest over the network / floor"),
            ratio(*rate, floor_rate),
            "x",
            crate::report::Cmp::AtLeast,
            0.5,
        );
        figs.add(
            &backend.key("baseline.ratio"),
            &format!("{label}ingest over the network / baseline"),
            ratio(*rate, base),
            "x",
        );
    }
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
/// Projects every queued change, as the server's projector does.
fn drain(store: &dyn tally_store::Storage) -> Result<()> {
    while projection::project_pending(store, tally_server::projector::BATCH_RECORDS)
        .map_err(|e| anyhow!("the baseline's projection: {e}"))?
        .is_some_and(|p| p.changes > 0)
    {}
    Ok(())
}

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
    drain(hub.store().as_ref())?;
    let secs = t.elapsed().as_secs_f64();
    pb.finish();
    Ok(Some(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};

    /// A document with `n` keys set by one change each, and its bytes after `from`'s heads.
    fn grown(from: &Automerge, n: usize) -> (Automerge, Vec<u8>) {
        let mut doc = from.fork();
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("k{i}"), i as i64).unwrap();
            tx.commit();
        }
        let chunk = doc.save_after(&from.get_heads());
        (doc, chunk)
    }

    #[test]
    fn the_floor_loads_every_change_and_appends_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("floor.log");
        let mut wanted = Vec::new();
        let mut docs: Vec<FloorDoc> = (0..3)
            .map(|i| {
                let before = Automerge::new();
                let (after, chunk) = grown(&before, 5 + i);
                wanted.push(after);
                FloorDoc {
                    key: format!("doc{i}"),
                    doc: before,
                    chunk,
                }
            })
            .collect();
        let took = floor(&mut docs, &log).unwrap();
        assert!(took > Duration::ZERO);
        for (d, want) in docs.iter().zip(&wanted) {
            assert_eq!(d.doc.get_heads(), want.get_heads(), "{}", d.key);
            assert_eq!(d.doc.keys(ROOT).count(), want.keys(ROOT).count());
        }
        // The log holds each document's key and chunk, in order, framed by their lengths.
        let bytes = std::fs::read(&log).unwrap();
        let mut at = 0;
        for d in &docs {
            let len = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let k = len(at) as usize;
            assert_eq!(&bytes[at + 4..at + 4 + k], d.key.as_bytes());
            at += 4 + k;
            let c = len(at) as usize;
            assert_eq!(&bytes[at + 4..at + 4 + c], d.chunk.as_slice());
            at += 4 + c;
        }
        assert_eq!(at, bytes.len(), "nothing else in the log");
    }

    #[test]
    fn a_chunk_that_does_not_load_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = vec![FloorDoc {
            key: "bad".into(),
            doc: Automerge::new(),
            chunk: b"not automerge".to_vec(),
        }];
        assert!(floor(&mut docs, &dir.path().join("floor.log")).is_err());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(5_000.0), 20_000.0), Some(0.25));
        assert_eq!(ratio(None, 20_000.0), None);
        assert_eq!(ratio(Some(5_000.0), 0.0), None);
    }
}
