//! What takes the database's space, per signature: each table with its indexes (SQLite's
//! `dbstat`), the free pages and the WAL, measured on the server's file once it stopped,
//! then again after every document is compacted (its chunks folded into one snapshot, as the
//! server does after `compact_after_chunks` chunks) and the WAL checkpointed, and the file's
//! size after a `VACUUM`. The server must
//! be stopped: the compaction here writes the file.

use std::path::Path;

use anyhow::{Context, Result};
use automerge::Automerge;
use tally_store::{DocFilter, Store};

use crate::report::{Cmp, Figures};

/// The WAL beside `db`, bytes (0 if none).
fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(Path::new(&wal)).map_or(0, |m| m.len())
}

/// Adds the figures of one measurement, `stage` naming it in keys and labels.
fn measure(
    store: &Store,
    db: &Path,
    stage: &str,
    signatures: usize,
    figs: &mut Figures,
) -> Result<f64> {
    let n = signatures.max(1) as f64;
    let space = store.space_by_table()?;
    let file = std::fs::metadata(db).map_or(0, |m| m.len());
    let wal = wal_bytes(db);
    let per_sig = (file + wal) as f64 / n;
    for (table, bytes) in &space {
        if *bytes as f64 / n < 1.0 {
            continue;
        }
        let key = table
            .trim_matches(|c| c == '(' || c == ')')
            .replace(' ', "_");
        figs.add(
            &format!("disk.{stage}.{key}_bytes_per_sig"),
            &format!("disk {stage}: {table} (with its indexes), per signature"),
            Some(*bytes as f64 / n),
            "B",
        );
    }
    figs.add(
        &format!("disk.{stage}.wal_bytes_per_sig"),
        &format!("disk {stage}: the WAL, per signature"),
        Some(wal as f64 / n),
        "B",
    );
    Ok(per_sig)
}

/// Measures the database at `db` (holding `signatures` signatures) as it is, then compacts
/// every document, checkpoints, and measures again.
pub fn run(db: &Path, signatures: usize, figs: &mut Figures) -> Result<()> {
    let store = Store::open(db).with_context(|| format!("opening {}", db.display()))?;
    let before = measure(&store, db, "stopped", signatures, figs)?;
    figs.add(
        "disk.stopped.bytes_per_sig",
        "disk once the server stopped, before compaction: file and WAL, per signature",
        Some(before),
        "B",
    );
    let docs = store.list_documents(&DocFilter::default())?;
    let now = tally_server::hub::now_ms();
    for meta in &docs {
        let Some(stored) = store.load_document(&meta.doc_id)? else {
            continue;
        };
        if stored.incremental.is_empty() {
            continue;
        }
        let mut doc = match &stored.snapshot {
            Some(s) => Automerge::load(s)?,
            None => Automerge::new(),
        };
        for chunk in &stored.incremental {
            doc.load_incremental(chunk)?;
        }
        store.compact(&meta.doc_id, &doc.save(), stored.last_seq, now)?;
    }
    store.checkpoint_truncate()?;
    let after = measure(&store, db, "compacted", signatures, figs)?;
    figs.add(
        "disk.compacted.bytes_per_sig",
        "disk after compacting every document and a checkpoint: file (with its free pages), per signature",
        Some(after),
        "B",
    )
    .with_note(format!("{} documents compacted", docs.len()));
    store.vacuum()?;
    // VACUUM writes the new file through the WAL: fold it back in.
    store.checkpoint_truncate()?;
    let file = std::fs::metadata(db).map_or(0, |m| m.len()) + wal_bytes(db);
    figs.add_target(
        "disk.vacuumed.bytes_per_sig",
        "disk after compacting, a checkpoint and VACUUM: file, per signature",
        Some(file as f64 / signatures.max(1) as f64),
        "B",
        Cmp::Below,
        4096.0,
    );
    Ok(())
}
