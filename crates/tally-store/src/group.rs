//! Group commit for the SQLite store's one writer: the writes of many connections that are
//! ready at the same moment share one transaction, and so one commit and one fsync.
//!
//! Each [`crate::Store::write`] runs its closure in a savepoint of the open group transaction
//! (beginning one if none is open). A closure that fails rolls back to its savepoint and
//! leaves the others' work alone. When it succeeds, the write either commits the group (no
//! other write is waiting for the writer, or the group is full) or leaves it open for the
//! writes waiting behind it and sleeps until the write that commits it says how the commit
//! went. No write returns `Ok` before its group has committed, so `Ok` still means durable;
//! and no write waits longer than one group: the last of a burst commits it.
//!
//! What decides is pure ([`Rule::commit_now`]); the store holds the state beside its
//! connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// When a group is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Most writes in one group.
    pub max_members: usize,
    /// A group open this long is committed by its next write, even if others wait.
    pub max_open: Duration,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            max_members: 256,
            max_open: Duration::from_millis(20),
        }
    }
}

impl Rule {
    /// Whether the write that just finished in a group of `members` writes, open for
    /// `open_for`, commits it, given whether other writes are waiting for the writer.
    pub fn commit_now(&self, members: usize, open_for: Duration, others_waiting: bool) -> bool {
        !others_waiting || members >= self.max_members || open_for >= self.max_open
    }
}

/// How a group's commit went, as the writes that waited for it learn it. An error keeps the
/// database's code, so a full disk still reads as a full disk to every write of the group.
pub(crate) type Fate = Arc<OnceLock<Result<(), Failure>>>;

/// Why a group's writes were not kept, told to each write of the group.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The commit failed: SQLite's extended result code and message.
    Commit { code: i32, message: String },
    /// A write of the group failed in a way that made SQLite roll back the whole transaction
    /// (a full disk or a disk error does), taking the others' work with it.
    RolledBack,
}

impl Failure {
    pub fn of(err: &rusqlite::Error) -> Failure {
        let code = match err {
            rusqlite::Error::SqliteFailure(e, _) => e.extended_code,
            _ => rusqlite::ffi::SQLITE_ERROR,
        };
        Failure::Commit {
            code,
            message: err.to_string(),
        }
    }

    /// The error, as the store reports it, for one write of the group.
    pub fn to_error(&self) -> crate::StoreError {
        match self {
            Failure::Commit { code, message } => {
                crate::StoreError::from(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(*code),
                    Some(format!(
                        "the commit of this write's group transaction failed: {message}"
                    )),
                ))
            }
            Failure::RolledBack => crate::StoreError::unavailable(
                "another write in the same group transaction failed and SQLite rolled the \
                 whole transaction back, this write with it",
                "transaction rolled back (a full disk or a disk error does this)",
            ),
        }
    }
}

/// The open group transaction.
#[derive(Debug)]
pub(crate) struct Open {
    pub members: usize,
    pub since: Instant,
    pub fate: Fate,
}

impl Open {
    pub fn new() -> Open {
        Open {
            members: 0,
            since: Instant::now(),
            fate: Arc::default(),
        }
    }
}

/// Writes that have asked for the writer and not yet finished their closure, and the
/// counters the metrics read.
#[derive(Debug, Default)]
pub(crate) struct Book {
    arrived: AtomicUsize,
    commits: AtomicU64,
    writes: AtomicU64,
}

impl Book {
    /// Counts a write in until the returned guard drops (also on a panic in its closure).
    pub fn arrive(&self) -> Arrival<'_> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        Arrival { book: self }
    }

    pub fn others_waiting(&self) -> bool {
        self.waiting() > 0
    }

    /// Writes that asked for the writer and have not finished their closure.
    pub fn waiting(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    pub fn committed(&self, members: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(members as u64, Ordering::Relaxed);
    }

    /// Group commits so far, and the writes they held.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

/// One write between its arrival and the end of its closure.
pub(crate) struct Arrival<'a> {
    book: &'a Book,
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        self.book.arrived.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_commits_at_once_unless_others_wait_and_the_group_has_room() {
        let rule = Rule {
            max_members: 3,
            max_open: Duration::from_millis(10),
        };
        let short = Duration::from_millis(1);
        assert!(rule.commit_now(1, short, false), "alone: at once");
        assert!(
            !rule.commit_now(1, short, true),
            "others wait: leave it open"
        );
        assert!(!rule.commit_now(2, short, true));
        assert!(rule.commit_now(3, short, true), "full");
        assert!(
            rule.commit_now(1, Duration::from_millis(10), true),
            "open too long"
        );
    }

    #[test]
    fn an_arrival_is_counted_until_it_drops_even_in_a_panic() {
        let book = Book::default();
        let a = book.arrive();
        assert!(book.others_waiting());
        drop(a);
        assert!(!book.others_waiting());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _a = book.arrive();
            panic!("a closure's bug");
        }));
        assert!(caught.is_err());
        assert!(!book.others_waiting());
    }

    #[test]
    fn a_failed_commit_keeps_its_code_for_every_write() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let f = Failure::of(&full);
        assert!(matches!(f.to_error(), crate::StoreError::Full(_)));
        assert!(matches!(f.to_error(), crate::StoreError::Full(_)), "again");
        assert!(
            f.to_error()
                .to_string()
                .contains("group transaction failed")
        );
        let lost = Failure::RolledBack.to_error();
        assert!(matches!(lost, crate::StoreError::Unavailable { .. }));
        assert!(lost.to_string().contains("retry"), "{lost}");
    }
}
