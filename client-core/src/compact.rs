//! A document's bytes on the phone: loading it from its snapshot and chunks, and compaction,
//! which folds the chunks into a new snapshot (a chunk per change is about twice the size of
//! the same change in a compacted save, and slower to load).
//!
//! Compaction never runs on the signing path. The [`Compactor`] is a background thread with its
//! own SQLite connection: nudged after local writes and syncs, it reads the snapshot and chunks
//! in a read transaction, loads and saves the document with no lock held, then swaps the new
//! snapshot in with a short write transaction that first checks no one else compacted the
//! document meanwhile. Every change it folds was committed (durable) before; chunks appended
//! while it worked are numbered past what it read and stay. The `Device`'s documents in memory
//! are left alone: they already hold everything the snapshot holds. The thread also runs the WAL
//! checkpoints, which the `Device`'s connection leaves to it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use automerge::Automerge;
use rusqlite::{Connection, TransactionBehavior};
use tally_proto::DocumentId;

use crate::error::{ClientError, Result};
use crate::store::{self, ChunkStats, DocRole};

/// Chunks a document accumulates before the background compaction considers it.
pub const COMPACT_AFTER_CHUNKS: u64 = 200;

/// Local writes between two nudges of the compactor.
pub(crate) const NUDGE_EVERY: usize = 50;

fn corrupt(what: impl std::fmt::Display) -> impl FnOnce(automerge::AutomergeError) -> ClientError {
    move |e| ClientError::Corrupt(format!("{what}: {e}"))
}

/// Loads a document from its snapshot and its chunks. Returns it with the number of the last
/// chunk it holds. Call it inside a transaction: between two reads outside one, a compaction
/// could fold and delete chunks the second read then misses.
pub(crate) fn load(conn: &Connection, id: &DocumentId, role: DocRole) -> Result<(Automerge, i64)> {
    let (snapshot, upto) = store::snapshot(conn, id)?;
    let mut doc = match snapshot {
        Some(bytes) => Automerge::load(&bytes).map_err(corrupt(format!("the {role} document")))?,
        None => Automerge::new(),
    };
    let seen = load_chunks(conn, id, role, &mut doc, upto)?;
    Ok((doc, seen))
}

/// Applies the chunks of a document numbered above `after` to `doc`; returns the last number.
/// The chunks go in as one batch: automerge applies a batch of changes at about the cost of one
/// (beside a 9,500-record snapshot, 500 chunks one by one took 6 s to load; 399 in one batch,
/// 0.38 s with the snapshot).
pub(crate) fn load_chunks(
    conn: &Connection,
    id: &DocumentId,
    role: DocRole,
    doc: &mut Automerge,
    after: i64,
) -> Result<i64> {
    let mut batch = Vec::new();
    let seen = store::each_chunk(conn, id, after, |chunk| {
        batch.extend_from_slice(chunk);
        Ok(())
    })?;
    if !batch.is_empty() {
        doc.load_incremental(&batch)
            .map_err(corrupt(format!("the saved changes of the {role} document")))?;
    }
    Ok(seen)
}

/// When a document is worth compacting: at least `min_chunks` chunks, and (in the background)
/// chunks amounting to half the snapshot's size, so that the snapshots saved grow
/// geometrically and compacting a phone's whole day costs a few saves of its final document,
/// not one per 200 signatures.
fn due(stats: ChunkStats, min_chunks: u64, by_size: bool) -> bool {
    stats.chunks >= min_chunks.max(1) && (!by_size || stats.chunk_bytes * 2 >= stats.snapshot_bytes)
}

/// Folds a document's chunks into its snapshot when [`due`]. Returns whether it did. Safe
/// beside other connections and processes writing or compacting the same file.
pub(crate) fn compact(
    conn: &mut Connection,
    id: &DocumentId,
    role: DocRole,
    min_chunks: u64,
    by_size: bool,
) -> Result<bool> {
    if !due(store::chunk_stats(conn, id)?, min_chunks, by_size) {
        return Ok(false);
    }
    // Read one consistent state of the file, then work on it with no lock held.
    let (doc, upto, seen) = {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let upto = store::snapshot_upto(&tx, id)?;
        let (doc, seen) = load(&tx, id, role)?;
        tx.commit()?;
        (doc, upto, seen)
    };
    if seen == upto {
        return Ok(false);
    }
    let saved = doc.save();
    drop(doc);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if store::snapshot_upto(&tx, id)? != upto {
        // Someone else compacted meanwhile: their snapshot stands.
        return Ok(false);
    }
    store::replace_snapshot(&tx, id, &saved, seen)?;
    tx.commit()?;
    Ok(true)
}

/// The background compaction thread of one `Device`, started at its first nudge. It stops when
/// the `Device` is dropped (after the compaction under way, if any: an interrupted one leaves
/// the file as it was).
pub(crate) struct Compactor {
    path: PathBuf,
    tx: Option<mpsc::Sender<(DocumentId, DocRole)>>,
}

impl Compactor {
    pub fn new(path: &Path) -> Compactor {
        Compactor {
            path: path.to_path_buf(),
            tx: None,
        }
    }

    /// Asks the thread to compact `id` if it is due. Never blocks.
    pub fn nudge(&mut self, id: DocumentId, role: DocRole) {
        if let Some(tx) = &self.tx
            && tx.send((id, role)).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("tally-compact".into())
            .spawn(move || run(&path, &rx));
        if spawned.is_ok() && tx.send((id, role)).is_ok() {
            self.tx = Some(tx);
        }
    }
}

fn run(path: &Path, rx: &mpsc::Receiver<(DocumentId, DocRole)>) {
    let mut conn = None;
    while let Ok(first) = rx.recv() {
        // Nudges that queued up while compacting: once per document is enough.
        let mut todo = vec![first];
        while let Ok(next) = rx.try_recv() {
            if !todo.contains(&next) {
                todo.push(next);
            }
        }
        if conn.is_none() {
            conn = store::open(path).ok();
        }
        let Some(conn) = conn.as_mut() else { continue };
        for (id, role) in todo {
            // A failed compaction leaves the chunks in place for the next nudge.
            let _ = compact(conn, &id, role, COMPACT_AFTER_CHUNKS, true);
        }
        // The `Device`'s own connection leaves checkpoints to this thread. A passive one waits
        // for no one and blocks no writer; what it cannot copy yet waits for the next nudge.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}
