//! `tally-store`: the sync server's storage, one SQLite file (or a PostgreSQL database, [`pg`]).
//!
//! It holds the documents (as opaque automerge bytes: a compacted snapshot plus incremental
//! chunks), the per-peer sync states, the enrolled devices and their hashed tokens, the
//! one-time invites, and the quarantine of rejected sync messages. It knows nothing about
//! automerge itself.
//!
//! The crate is synchronous: the server calls it from `spawn_blocking` or a dedicated writer
//! thread. A [`Store`] owns one connection behind a mutex, so it is `Send + Sync` and its calls
//! are serialized; for reads beside a busy writer, open a [`Readers`] pool of read-only
//! connections on the same file (WAL lets readers and one writer run at once).
//!
//! Durability: the file runs in WAL mode with `synchronous=FULL`, so when [`Store::write`] (or
//! any other writing call) returns `Ok`, the change has been committed and fsynced, and survives
//! power loss. That return is the point after which the server may acknowledge a change.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller (the store never reads
//! the clock), so tests control time.
//!
//! Modules: [`error`] (the error type and SQLite error mapping), `schema` (migrations),
//! [`documents`] (documents, chunks, compaction, sync states), [`devices`] (devices, tokens,
//! invites), [`quarantine`] (rejected messages), [`audit`] (the audit chain), [`projection`]
//! (the totals projection's rows and aggregate cells), [`readers`] (a pool of read
//! connections), [`backend`] (the storage traits a backend implements, SQLite's impl), [`pg`]
//! (the PostgreSQL backend: the same storage traits over a database several servers share).
//! All of the server's SQL lives in these modules: callers get typed methods on [`Store`],
//! [`ReadTx`] and [`WriteTx`] (or the traits), never a connection.

pub mod audit;
pub mod backend;
pub mod devices;
pub mod documents;
pub mod error;
mod group;
pub mod keys;
pub mod pg;
pub mod projection;
pub mod quarantine;
mod queue;
pub mod readers;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

pub use audit::{AuditBroken, AuditEntry, AuditFilter, NewAudit};
pub use backend::{
    Change, Exclusive, Projecting, ProjectionStatus, Queued, Reads, Storage, Subscription, Writes,
};
pub use devices::{Device, InviteCode, Replaces, Token, TokenRefusal};
pub use documents::{CAMPAIGN_KIND, ChunkStats, DocFilter, DocMeta, StoredDoc};
pub use error::{ReplaceRefusal, Result, StoreError};
pub use keys::{Erasure, KeyOutcome, StoredKey};
pub use pg::{PG_SCHEMA_VERSION, PgStore};
pub use projection::{Batch, Filter, ReindexReport};
pub use quarantine::{
    NewQuarantine, QuarantineEntry, QuarantineFilter, QuarantineOutcome, QuarantineQuota,
};
pub use readers::{Reader, Readers};
pub use schema::SCHEMA_VERSION;

/// How long a call waits for another connection's write lock before failing with
/// [`StoreError::Unavailable`] (SQLITE_BUSY).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's storage: one SQLite database file.
pub struct Store {
    /// The connection, its open group transaction, and whether a failed rollback left it
    /// unusable.
    inner: Mutex<Inner>,
    /// Told each time a group transaction ends (committed or not).
    group_ended: Condvar,
    /// The writes waiting for the writer, and the group commits so far.
    book: group::Book,
    /// When a group is committed.
    rule: group::Rule,
    /// Where the file lives (for messages and for opening companion stores).
    path: PathBuf,
}

struct Inner {
    conn: Connection,
    /// Set when a rollback failed and the connection is still inside a transaction: from then
    /// on every call returns [`StoreError::Unavailable`] with this description.
    broken: Option<String>,
    /// The group transaction open on the connection, if any (see [`group`]).
    group: Option<group::Open>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database file at `path` for reading and writing, sets WAL
    /// mode, `synchronous=FULL`, foreign keys and the busy timeout, and applies any missing
    /// schema migrations.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Invalid(format!(
                "SQLite refused WAL mode for {} (got journal_mode={mode}): put the database \
                 on a local filesystem",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        schema::migrate(&mut conn)?;
        Ok(Store::from_conn(conn, path.to_path_buf()))
    }

    /// Opens an existing database file read-only (for inspection and backups): every writing
    /// call then fails with [`StoreError::ReadOnly`]. The file must already be at this build's
    /// schema version.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        let found = schema::current_version(&conn)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::SchemaTooOld {
                found,
                needed: SCHEMA_VERSION,
            });
        }
        Ok(Store::from_conn(conn, path.to_path_buf()))
    }

    /// An in-memory store, for unit tests of callers that do not care about files. Anything
    /// about durability must be tested with [`Store::open`] on a real file.
    pub fn open_in_memory() -> Result<Store> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        Ok(Store::from_conn(conn, PathBuf::from(":memory:")))
    }

    fn from_conn(conn: Connection, path: PathBuf) -> Store {
        Store {
            inner: Mutex::new(Inner {
                conn,
                broken: None,
                group: None,
            }),
            group_ended: Condvar::new(),
            book: group::Book::default(),
            rule: group::Rule::default(),
            path,
        }
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Caps the database at `max_pages` pages (`PRAGMA max_page_count`) on this store's
    /// connection, until it is reopened; returns the cap in force, which SQLite never sets
    /// below the file's current size. A write that would grow the file past the cap fails with
    /// [`StoreError::Full`], exactly like a full disk: fault tests use it to simulate one, and
    /// an operator can use it to bound the file. Pass `u32::MAX` to lift the cap.
    pub fn set_max_pages(&self, max_pages: u32) -> Result<u64> {
        let inner = self.lock()?;
        let cap: i64 =
            inner
                .conn
                .query_row(&format!("PRAGMA max_page_count = {max_pages}"), [], |row| {
                    row.get(0)
                })?;
        Ok(u64::try_from(cap).unwrap_or(0))
    }

    /// The database's current size in pages (`PRAGMA page_count`).
    pub fn page_count(&self) -> Result<u64> {
        let inner = self.lock()?;
        let count: i64 = inner
            .conn
            .pragma_query_value(None, "page_count", |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Runs `f` inside one immediate (write-locking) transaction and commits it before
    /// returning `Ok`: that commit is the durability point the server acknowledges after.
    /// If `f` returns `Err`, or the commit fails, everything `f` wrote is rolled back and the
    /// error is returned.
    ///
    /// Writes from several threads that are ready at the same moment share one transaction
    /// (group commit, see [`group`]): each runs in a savepoint of it, so one that fails leaves
    /// the others' work alone, and each returns only once the group has committed.
    ///
    /// `f` gets a [`WriteTx`], with the store's writes (`append_chunk`, `put_meta`,
    /// `quarantine`, a projection batch, ...) and, through it, its reads ([`ReadTx`]).
    pub fn write<T>(&self, f: impl FnOnce(&WriteTx<'_>) -> Result<T>) -> Result<T> {
        self.write_with_error(f)
    }

    /// Like [`Store::write`], for a closure with its own error type (one that a
    /// [`StoreError`] converts into), e.g. the server's "change rejected" error.
    pub fn write_with_error<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let arrival = self.book.arrive();
        let mut inner = self.lock_as_is()?;
        if inner.group.is_none() {
            inner
                .conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(StoreError::from)?;
            inner.group = Some(group::Open::new());
        }
        let outcome = inner.run_in_savepoint(f);
        drop(arrival);
        let alive = !inner.conn.is_autocommit();
        let Some(open) = inner.group.as_mut().filter(|_| alive) else {
            // SQLite rolled the whole transaction back (some I/O errors and a full disk do):
            // every write of the group lost its work.
            self.end_group(&mut inner, Err(group::Failure::RolledBack));
            return outcome.and_then(|_| Err(group::Failure::RolledBack.to_error().into()));
        };
        open.members += 1;
        let fate = open.fate.clone();
        if self.rule.commit_now(
            open.members,
            open.since.elapsed(),
            self.book.others_waiting(),
        ) {
            self.commit_group(&mut inner);
        } else if outcome.is_err() {
            // Rolled back to its savepoint: nothing of it waits for the commit.
            return outcome;
        } else {
            inner = self.wait_for_commit(inner, &fate);
        }
        drop(inner);
        match fate.get() {
            Some(Ok(())) => outcome,
            Some(Err(failure)) => outcome.and_then(|_| Err(failure.to_error().into())),
            None => outcome.and_then(|_| {
                Err(StoreError::Invalid(
                    "a grouped write returned before its group ended: a bug in the store".into(),
                )
                .into())
            }),
        }
    }

    /// Like [`Store::write_with_error`], but in a transaction of its own, never grouped: for a
    /// long write (the projector's batches, a reindex) that the short writes of a group should
    /// not wait for. An open group is committed first; writes that come meanwhile wait for the
    /// writer as they would for any write, then group among themselves.
    pub fn write_alone_with_error<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut inner = self.lock()?;
        let outcome = run_in_transaction(&mut inner.conn, TransactionBehavior::Immediate, |tx| {
            f(&WriteTx {
                tx,
                read: ReadTx { conn: tx },
            })
        });
        inner.check_no_open_transaction();
        outcome
    }

    /// Sleeps until the group of `fate` has ended. Normally the group's last write commits it;
    /// if none will (a closure panicked), the waiting write commits it itself.
    fn wait_for_commit<'s>(
        &'s self,
        mut inner: MutexGuard<'s, Inner>,
        fate: &group::Fate,
    ) -> MutexGuard<'s, Inner> {
        while fate.get().is_none() {
            let (guard, waited) = self
                .group_ended
                .wait_timeout(inner, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner);
            inner = guard;
            let ours = inner
                .group
                .as_ref()
                .is_some_and(|open| std::sync::Arc::ptr_eq(&open.fate, fate));
            if waited.timed_out() && ours && !self.book.others_waiting() {
                self.commit_group(&mut inner);
            }
        }
        inner
    }

    /// Commits the open group transaction, if any, and tells its writes how that went.
    fn commit_group(&self, inner: &mut Inner) {
        if inner.group.is_none() {
            return;
        }
        let fate = match inner.conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(err) => Err(group::Failure::of(&err)),
        };
        self.end_group(inner, fate);
    }

    fn end_group(&self, inner: &mut Inner, fate: Result<(), group::Failure>) {
        // A failed COMMIT may leave the transaction open: roll it back (or mark the store
        // broken) before anyone else uses the connection.
        inner.check_no_open_transaction();
        if let Some(open) = inner.group.take() {
            if fate.is_ok() {
                self.book.committed(open.members);
            }
            let _first = open.fate.set(fate);
        }
        self.group_ended.notify_all();
    }

    /// Group commits so far, and the writes they held (for metrics: their ratio is the mean
    /// group size).
    pub fn group_commits(&self) -> (u64, u64) {
        self.book.stats()
    }

    /// Writes that have asked for the writer and not yet finished (the one running counts).
    pub fn writes_waiting(&self) -> usize {
        self.book.waiting()
    }

    /// The database's page size in bytes.
    pub fn page_size(&self) -> Result<u64> {
        let inner = self.lock()?;
        let size: i64 = inner
            .conn
            .pragma_query_value(None, "page_size", |row| row.get(0))?;
        Ok(u64::try_from(size).unwrap_or(4096))
    }

    /// What takes the file's space: the bytes of the pages each table holds with its indexes
    /// (SQLite's `dbstat`), largest first, then the free pages as `"(free pages)"`. The WAL is
    /// not in it: checkpoint first to count everything.
    pub fn space_by_table(&self) -> Result<Vec<(String, u64)>> {
        let inner = self.lock()?;
        let mut stmt = inner.conn.prepare(
            "SELECT COALESCE(m.tbl_name, d.name), SUM(d.pgsize) FROM dbstat AS d \
             LEFT JOIN sqlite_schema AS m ON m.name = d.name GROUP BY 1 ORDER BY 2 DESC, 1",
        )?;
        let mut out = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .map(|r| r.map(|(name, bytes)| (name, u64::try_from(bytes).unwrap_or(0))))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let free: i64 = inner.conn.query_row(
            "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
            [],
            |r| r.get(0),
        )?;
        out.push(("(free pages)".into(), u64::try_from(free).unwrap_or(0)));
        Ok(out)
    }

    /// Rewrites the file without its free pages (`VACUUM`), e.g. after compacting documents
    /// offline; it needs as much free disk as the file takes, and no other connection writing.
    pub fn vacuum(&self) -> Result<()> {
        self.with_conn(|conn| Ok(conn.execute_batch("VACUUM")?))
    }

    /// Sets this connection's page cache to about `kib` KiB (`PRAGMA cache_size`), e.g. to share
    /// a memory budget between the connections of a [`Readers`] pool.
    pub fn set_cache_kib(&self, kib: u64) -> Result<()> {
        let inner = self.lock()?;
        inner
            .conn
            .execute_batch(&format!("PRAGMA cache_size = -{kib}"))?;
        Ok(())
    }

    /// Runs `f` in a deferred (read) transaction, so that several queries see one snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTx<'_>) -> Result<T>) -> Result<T> {
        self.read_conn(|conn| f(&ReadTx { conn }))
    }

    /// Like [`Store::read`], for the store's own modules' SQL.
    pub(crate) fn read_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut inner = self.lock()?;
        let outcome =
            run_in_transaction(&mut inner.conn, TransactionBehavior::Deferred, |tx| f(tx));
        inner.check_no_open_transaction();
        outcome
    }

    /// Runs one statement (or a few that need no common snapshot) outside a transaction.
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let inner = self.lock()?;
        f(&inner.conn)
    }

    /// The connection, outside any transaction: an open group is committed first.
    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        let mut inner = self.lock_as_is()?;
        self.commit_group(&mut inner);
        Ok(inner)
    }

    /// The connection, inside the open group transaction if there is one.
    fn lock_as_is(&self) -> Result<MutexGuard<'_, Inner>> {
        // A panic inside a closure drops its savepoint or transaction, which rolls back: the
        // connection itself is still sound, so a poisoned lock is safe to take over.
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &inner.broken {
            return Err(StoreError::unavailable(
                "a failed rollback left the store's database connection unusable: restart the \
                 server",
                why.clone(),
            ));
        }
        Ok(inner)
    }
}

impl Inner {
    /// Runs `f` in a savepoint of the open transaction: released if `f` succeeds, rolled back
    /// to (leaving the transaction's other work) if it fails.
    fn run_in_savepoint<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let sp = self.conn.savepoint().map_err(StoreError::from)?;
        let outcome = f(&WriteTx {
            tx: &sp,
            read: ReadTx { conn: &sp },
        });
        let ended = match &outcome {
            Ok(_) => sp.commit(),
            Err(_) => sp.finish(),
        };
        if let Err(err) = ended {
            // The savepoint could not be released or rolled back to: the transaction's work
            // cannot be told apart any more, so all of it goes (the caller sees the
            // connection back in autocommit and tells the group's writes).
            if !self.conn.is_autocommit() && self.conn.execute_batch("ROLLBACK").is_err() {
                self.broken = Some(StoreError::from(err).to_string());
            }
        }
        outcome
    }

    /// After a transaction, the connection must be back in autocommit mode. If a rollback
    /// failed, try once more, and if that fails too, refuse all further work.
    fn check_no_open_transaction(&mut self) {
        if self.conn.is_autocommit() {
            return;
        }
        if let Err(err) = self.conn.execute_batch("ROLLBACK") {
            self.broken = Some(StoreError::from(err).to_string());
        }
    }
}

/// Sets the per-connection settings every store connection needs.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted content is overwritten with zeros, so an erased record key (`keys`) leaves no
    // bytes behind in the file's free pages (the WAL is truncated after an erasure).
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

fn run_in_transaction<T, E: From<StoreError>>(
    conn: &mut Connection,
    behavior: TransactionBehavior,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let tx = conn
        .transaction_with_behavior(behavior)
        .map_err(StoreError::from)?;
    match f(&tx) {
        Ok(value) => {
            // On failure the dropped transaction rolls back; the caller checks it did.
            tx.commit().map_err(StoreError::from)?;
            Ok(value)
        }
        Err(err) => {
            // The caller's error is the one to report. If this rollback fails, the caller's
            // `check_no_open_transaction` retries it and marks the store broken if needed, so
            // that failure is reported by every later call rather than lost.
            // `finish` rolls back unless SQLite already did (some errors end the transaction).
            let _checked_by_caller = tx.finish();
            Err(err)
        }
    }
}

/// The read side of one transaction (one snapshot), handed to the closure of [`Store::read`];
/// a [`WriteTx`] has it too (it dereferences to one), to read what it is writing.
pub struct ReadTx<'a> {
    conn: &'a Connection,
}

/// The write side of one transaction, handed to the closure of [`Store::write`]. Everything
/// done through it commits or rolls back with the rest of the closure.
pub struct WriteTx<'a> {
    tx: &'a Connection,
    read: ReadTx<'a>,
}

impl<'a> WriteTx<'a> {
    /// The connection, inside the write's transaction (a savepoint of a group transaction),
    /// for the store's own modules.
    pub(crate) fn conn(&self) -> &'a Connection {
        self.tx
    }
}

impl<'a> std::ops::Deref for WriteTx<'a> {
    type Target = ReadTx<'a>;

    fn deref(&self) -> &ReadTx<'a> {
        &self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_is_set_up_for_durability() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("tally.db")).expect("open store");
        let (journal, synchronous, foreign_keys): (String, i64, i64) = store
            .write(|tx| {
                let conn = tx.conn();
                let pragma = |name: &str| {
                    conn.pragma_query_value(None, name, |row| {
                        row.get::<_, rusqlite::types::Value>(0)
                    })
                };
                let journal = match pragma("journal_mode")? {
                    rusqlite::types::Value::Text(text) => text,
                    other => panic!("journal_mode {other:?}"),
                };
                let int = |value| match value {
                    rusqlite::types::Value::Integer(n) => n,
                    other => panic!("pragma {other:?}"),
                };
                Ok((
                    journal,
                    int(pragma("synchronous")?),
                    int(pragma("foreign_keys")?),
                ))
            })
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL");
        assert_eq!(foreign_keys, 1);
    }
}
