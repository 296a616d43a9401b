//! A document's bytes on the phone: loading it from its snapshot and chunks, and compaction,
//! which folds the chunks into a new snapshot (a chunk per change is about twice the size of
//! the same change in a compacted save, and slower to load).
//!
//! Compaction never runs on the signing path. The [`Compactor`] is a background thread with its
//! own SQLite connection: nudged after local writes and syncs, it takes the document to save,
//! saves it with no lock held, then swaps the new snapshot in with a short write transaction
//! that first checks no one else compacted the document meanwhile. Every change it folds was
//! committed (durable) before; chunks appended while it worked are numbered past what it read
//! and stay. The `Device`'s documents in memory are left alone: they already hold everything the
//! snapshot holds. The thread also runs the WAL checkpoints, which the `Device`'s connection
//! leaves to it.
//!
//! The document it saves is, when the `Device` has it loaded, a copy of the one in memory
//! ([`Source`]): loading it again from the file would cost far more memory than the copy
//! (automerge 0.12 rebuilds every change of a loaded document to check its hashes: about 50 MB
//! at its peak for 10,000 records, against 11 MB for the document itself, and the allocator
//! keeps much of that peak). Otherwise it reads the snapshot and chunks in a read transaction
//! and loads them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

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

/// A copy of a document as a `Device` holds it in memory, with the last chunk it holds with
/// every earlier one (`LocalDoc::seen_seq`); `None` when it is not loaded. The copy must not run
/// ahead of the file: take it while no write is half done.
pub(crate) type Source = Arc<dyn Fn(&DocumentId) -> Option<(Automerge, i64)> + Send + Sync>;

/// Folds a document's chunks into its snapshot when [`due`]. Returns whether it did. Safe
/// beside other connections and processes writing or compacting the same file.
///
/// `copy` gives the document from memory, if it can (see [`Source`]); it is used when it holds
/// every chunk the file's snapshot folds in and more, else the document is loaded from the file.
pub(crate) fn compact(
    conn: &mut Connection,
    id: &DocumentId,
    role: DocRole,
    min_chunks: u64,
    by_size: bool,
    copy: impl FnOnce() -> Option<(Automerge, i64)>,
) -> Result<bool> {
    if !due(store::chunk_stats(conn, id)?, min_chunks, by_size) {
        return Ok(false);
    }
    // The copy first, outside any transaction: taking it waits for the device's lock, whose
    // holder may be waiting for this connection's readers (a checkpoint).
    let copy = copy();
    // One consistent state of the file (the snapshot's extent, and the document when there is
    // no usable copy), then the work with no lock held.
    let (doc, upto, seen) = {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let upto = store::snapshot_upto(&tx, id)?;
        // The copy holds every chunk up to its `seen`, so past the snapshot's `upto` it holds
        // everything the snapshot does; a copy at or behind `upto` (another process compacted
        // chunks it never saw) does not.
        let (doc, seen) = match copy {
            Some((doc, seen)) if seen > upto => (doc, seen),
            _ => load(&tx, id, role)?,
        };
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
    /// Copies of the documents the `Device` holds in memory, once it gave the means.
    source: Option<Source>,
}

impl Compactor {
    pub fn new(path: &Path) -> Compactor {
        Compactor {
            path: path.to_path_buf(),
            tx: None,
            source: None,
        }
    }

    /// Where the thread (started after this) takes copies of loaded documents from.
    pub fn set_source(&mut self, source: Source) {
        self.source = Some(source);
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
        let source = self.source.clone();
        let spawned = std::thread::Builder::new()
            .name("tally-compact".into())
            .spawn(move || run(&path, &rx, source.as_ref()));
        if spawned.is_ok() && tx.send((id, role)).is_ok() {
            self.tx = Some(tx);
        }
    }
}

fn run(path: &Path, rx: &mpsc::Receiver<(DocumentId, DocRole)>, source: Option<&Source>) {
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
            let _ = compact(conn, &id, role, COMPACT_AFTER_CHUNKS, true, || {
                source.and_then(|copy| copy(&id))
            });
        }
        // The `Device`'s own connection leaves checkpoints to this thread. A passive one waits
        // for no one and blocks no writer; what it cannot copy yet waits for the next nudge.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable as _;
    use automerge::{ChangeHash, ROOT};

    use super::*;

    /// A store with one document: its snapshot, then `chunks` changes appended one chunk each.
    /// Returns the connection, the document as written, and the chunks' numbers.
    fn store_with_chunks(
        path: &Path,
        id: &DocumentId,
        chunks: usize,
    ) -> (Connection, Automerge, Vec<i64>) {
        let conn = store::open(path).unwrap();
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "created", true))
            .unwrap();
        store::insert_doc(&conn, id, DocRole::Collection, 0, Some(&doc.save()), 0).unwrap();
        let seqs = (0..chunks)
            .map(|i| append(&conn, id, &mut doc, i))
            .collect();
        (conn, doc, seqs)
    }

    fn append(conn: &Connection, id: &DocumentId, doc: &mut Automerge, i: usize) -> i64 {
        let before = doc.get_heads();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, format!("record {i}"), i as i64)
        })
        .unwrap();
        store::append_chunk(conn, id, &doc.save_after(&before), 0).unwrap()
    }

    fn heads_in_file(conn: &Connection, id: &DocumentId) -> Vec<ChangeHash> {
        load(conn, id, DocRole::Collection).unwrap().0.get_heads()
    }

    fn chunks_left(conn: &Connection, id: &DocumentId) -> u64 {
        store::chunk_stats(conn, id).unwrap().chunks
    }

    #[test]
    fn a_copy_from_memory_is_saved_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocumentId::from_bytes([7; 16]);
        let (mut conn, mut doc, seqs) = store_with_chunks(&dir.path().join("db"), &id, 4);
        // The copy holds every chunk but the last (as a device that has not caught up yet).
        let behind = doc.clone();
        let seen = seqs[3];
        append(&conn, &id, &mut doc, 4);
        let done = compact(&mut conn, &id, DocRole::Collection, 1, false, || {
            Some((behind, seen))
        })
        .unwrap();
        assert!(done);
        // The copy was the one saved: the snapshot goes up to what it held, the last chunk
        // stays, and the file still holds every change.
        assert_eq!(store::snapshot_upto(&conn, &id).unwrap(), seen);
        assert_eq!(chunks_left(&conn, &id), 1);
        assert_eq!(heads_in_file(&conn, &id), doc.get_heads());
    }

    #[test]
    fn a_copy_behind_the_snapshot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocumentId::from_bytes([7; 16]);
        let (mut conn, mut doc, seqs) = store_with_chunks(&dir.path().join("db"), &id, 3);
        let stale = (doc.clone(), seqs[2]);
        // Another process compacts, then writes two more changes this copy never saw.
        assert!(compact(&mut conn, &id, DocRole::Collection, 1, false, || None).unwrap());
        let newest = [
            append(&conn, &id, &mut doc, 3),
            append(&conn, &id, &mut doc, 4),
        ];
        assert_eq!(store::snapshot_upto(&conn, &id).unwrap(), seqs[2]);
        let done = compact(&mut conn, &id, DocRole::Collection, 1, false, || {
            Some(stale)
        })
        .unwrap();
        assert!(done);
        // Loaded from the file instead: everything folded, nothing lost.
        assert_eq!(store::snapshot_upto(&conn, &id).unwrap(), newest[1]);
        assert_eq!(chunks_left(&conn, &id), 0);
        assert_eq!(heads_in_file(&conn, &id), doc.get_heads());
    }
}
