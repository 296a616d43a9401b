//! A small pool of read handles on one database, so that reads run side by side instead of
//! queueing on one connection's mutex: an organizer's totals query (a few ms) does not hold up
//! another organizer's, nor a token check. On SQLite, read-only connections on the file (WAL
//! lets any number of readers run beside the one writer); on PostgreSQL, handles on the store's
//! own pool of clients. Each read still sees one snapshot ([`Storage::read_with`]).
//!
//! [`Readers::get`] hands out a free connection, or waits for one when all are busy.

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::{Result, Storage, Store};

/// A fixed set of read handles.
pub struct Readers {
    stores: Vec<Arc<dyn Storage>>,
    /// Indexes of the connections nobody holds.
    free: Mutex<Vec<usize>>,
    returned: Condvar,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("connections", &self.stores.len())
            .finish()
    }
}

/// One connection of a [`Readers`], given back when dropped.
pub struct Reader<'a> {
    pool: &'a Readers,
    index: usize,
}

impl Readers {
    /// Opens `n` (at least one) read-only connections on the file at `path`, each set up by
    /// `setup` (e.g. a page cache size).
    pub fn open(path: &Path, n: usize, setup: impl Fn(&Store) -> Result<()>) -> Result<Readers> {
        let stores = (0..n.max(1))
            .map(|_| {
                let s = Store::open_read_only(path)?;
                setup(&s)?;
                Ok(Arc::new(s) as Arc<dyn Storage>)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Readers::from_stores(stores))
    }

    /// A pool of the given stores (e.g. the writer's own store, where no second connection can
    /// be opened: an in-memory database; or handles on one PostgreSQL store, whose own pool
    /// bounds the connections).
    pub fn from_stores(stores: Vec<Arc<dyn Storage>>) -> Readers {
        assert!(!stores.is_empty(), "a pool needs at least one connection");
        Readers {
            free: Mutex::new((0..stores.len()).rev().collect()),
            stores,
            returned: Condvar::new(),
        }
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        self.stores.len()
    }

    /// Always false: a pool holds at least one connection.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A free connection; blocks until one is given back when all are in use.
    pub fn get(&self) -> Reader<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(index) = free.pop() {
                return Reader { pool: self, index };
            }
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Deref for Reader<'_> {
    type Target = dyn Storage;

    fn deref(&self) -> &(dyn Storage + 'static) {
        &*self.pool.stores[self.index]
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        free.push(self.index);
        drop(free);
        self.pool.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn pool(n: usize) -> (tempfile::TempDir, Store, Readers) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = Store::open(&path).unwrap();
        let readers = Readers::open(&path, n, |_| Ok(())).unwrap();
        (dir, writer, readers)
    }

    #[test]
    fn reads_run_side_by_side_up_to_the_pool_size() {
        let (_dir, _writer, readers) = pool(3);
        assert_eq!(readers.len(), 3);
        let (busy, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let r = readers.get();
                    r.read_with(&mut |tx| {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        busy.fetch_sub(1, Ordering::SeqCst);
                        tx.signature_rows().map(drop)
                    })
                    .unwrap();
                });
            }
        });
        // Eight readers of 200 ms on three connections: never more than three at once, and
        // (the threads all start together) more than one at some point.
        let most = most.load(Ordering::SeqCst);
        assert!((2..=3).contains(&most), "{most} reads at once");
    }

    #[test]
    fn a_connection_is_given_back_and_reused() {
        let (_dir, _writer, readers) = pool(1);
        for _ in 0..3 {
            let r = readers.get();
            assert!(r.database_bytes().unwrap() > 0);
        }
        // All back: a second holder does not block.
        let a = readers.get();
        drop(a);
        let _b = readers.get();
    }

    #[test]
    fn readers_see_what_the_writer_committed() {
        let (_dir, writer, readers) = pool(2);
        let meta = crate::DocMeta {
            doc_id: "d".into(),
            kind: "collection".into(),
            campaign: "c".into(),
            owner: None,
            created_at: 7,
        };
        writer.put_meta(&meta).unwrap();
        let (a, b) = (readers.get(), readers.get());
        for r in [&a, &b] {
            assert_eq!(r.doc_meta("d").unwrap(), Some(meta.clone()));
        }
    }
}
