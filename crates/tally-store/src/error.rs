//! The one error type of the store, whatever the database behind it, and the one place where
//! SQLite's errors are sorted into it.
//!
//! [`StoreError`] names no backend: a full disk is [`StoreError::Full`] whether SQLite or
//! PostgreSQL ran out of space, and the backend's own error is kept as the source (a
//! [`BackendError`]) for logs. Every message says what went wrong and what the operator (or the
//! calling code) should do about it, because the server shows these to people: a full disk must
//! read as a full disk, not as "database error 13".

use rusqlite::ErrorCode;

/// The database's own error, kept as the source of a [`StoreError`] (for logs and `Debug`),
/// without naming the database in the type.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a store call can fail with. Nothing is swallowed: a failed write is reported, and
/// the transaction it belonged to is rolled back.
///
/// The first six variants are the storage failures every backend reports alike (`Full`,
/// `ReadOnly`, `NotFound`, `Conflict`, `Unavailable`, `Other`); the others are the store's
/// own refusals (a damaged file, a schema from another version, an invite, a record id another
/// phone holds, ...), the same on every backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database has no space left: its volume is full, or the store's own limit (see
    /// [`crate::Store::set_max_pages`]) was reached. Nothing of the failed write was kept.
    #[error(
        "the disk is full: free space on the server's data volume, then retry \
         (nothing of the failed write was kept; the database said: {0})"
    )]
    Full(#[source] BackendError),

    /// The database, its files, folder or volume cannot be written.
    #[error(
        "the database is read-only: make the database (its file and folder, or its server) \
         writable by tally (or remount the volume read-write), then retry (the database said: \
         {0})"
    )]
    ReadOnly(#[source] BackendError),

    /// The named thing (a document, a device) is not in the store.
    #[error("{0} not found: check the id, or create it first")]
    NotFound(String),

    /// The write would contradict what is stored (e.g. a document re-declared with another
    /// kind, or a concurrent write to the same rows that the database refused).
    #[error(
        "conflict with stored data: {0} (nothing of the write was kept; read again, then retry)"
    )]
    Conflict(String),

    /// The database cannot be reached or used right now: it cannot be opened, its disk failed
    /// a read or write, a lock was held past the timeout, or a failed rollback left the
    /// connection unusable. Nothing of the failed write was kept.
    #[error(
        "the database is unavailable ({what}): nothing of the failed write was kept; retry. If \
         it persists, check that the database and its volume are up (server log, kernel log) \
         (the database said: {source})"
    )]
    Unavailable {
        /// What could not be done, in words.
        what: String,
        /// The database's error.
        #[source]
        source: BackendError,
    },

    /// Any other database error (a constraint, a misuse).
    #[error("database error: {0} (if it persists, check the server log and the data volume)")]
    Other(#[source] BackendError),

    /// The database is damaged or is not a tally database at all.
    #[error(
        "the database file is damaged or is not a tally database: stop the server, keep a copy \
         of the file, and restore the latest backup ({0})"
    )]
    Corrupt(String),

    /// The database was written by a newer tally whose schema this build does not know.
    #[error(
        "the database has schema version {found} but this build knows only up to {supported}: \
         run a newer tally server on it (never an older one)"
    )]
    SchemaTooNew {
        /// The schema version found in the database.
        found: i64,
        /// The newest schema version this build can migrate to.
        supported: i64,
    },

    /// A read-only store was opened on a database whose schema is older than this build's.
    #[error(
        "the database has schema version {found} but this build needs {needed}: open it once \
         read-write (start the server) to upgrade it"
    )]
    SchemaTooOld {
        /// The schema version found in the database.
        found: i64,
        /// The schema version this build reads.
        needed: i64,
    },

    /// The caller passed something the store cannot accept (a bad argument, not a bad disk).
    #[error("invalid request to the store: {0}")]
    Invalid(String),

    /// A collection record new to its document has an id that a collection of another phone
    /// (another lineage of devices) in the campaign already holds: a record id is one phone's.
    #[error(
        "{container}/{id}: record {id:?} already belongs to another phone's collection in this campaign; a record id is one phone's (a phone re-writes its own records into its next collection, never another's): nothing of this change was stored"
    )]
    Claimed {
        /// signatures or checkins.
        container: &'static str,
        /// The record id.
        id: String,
    },

    /// An aggregate would go below zero: the totals aggregates no longer match the rows.
    #[error(
        "the totals aggregates are out of step with the rows ({0}); stop the server and run `tally reindex`"
    )]
    Drift(String),

    /// `create_admin` on a store that already has a working admin device.
    #[error(
        "an admin device already exists: enroll new devices with an invite from it, \
         or revoke it first if its token was lost"
    )]
    AdminExists,

    /// No invite has this code (or it was mistyped).
    #[error("unknown invite code: check it was typed correctly, or ask an organizer for a new one")]
    InviteUnknown,

    /// The invite exists but its time to live is over.
    #[error("this invite code has expired: ask an organizer for a new one")]
    InviteExpired,

    /// The invite was already redeemed: codes are single use.
    #[error(
        "this invite code was already used: each code enrolls one device; ask an organizer \
         for a new one"
    )]
    InviteUsed,

    /// A re-enrollment's proof of the device it replaces was refused; the invite was not used.
    #[error("{0}")]
    ReplaceRefused(ReplaceRefusal),
}

impl StoreError {
    /// [`StoreError::Unavailable`] with `what` could not be done and the database's error.
    pub fn unavailable(what: impl Into<String>, source: impl Into<BackendError>) -> StoreError {
        StoreError::Unavailable {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Why a re-enrollment may not replace the device it names (the invite stays unused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceRefusal {
    /// No device has this id.
    #[error(
        "the device this phone replaces ({0}) is not known to this server: enroll without \
         `replaces` (as a new phone), or check that the phone is talking to the server it \
         was enrolled with"
    )]
    UnknownDevice(String),
    /// The token given is not that device's.
    #[error(
        "the token given does not belong to device {0}: a phone proves the device it replaces \
         with that device's own token (revoked or expired tokens still prove it)"
    )]
    WrongToken(String),
    /// The old device belongs to another campaign than the invite.
    #[error(
        "device {0} belongs to another campaign than this invite: ask an organizer for an \
         invite to the campaign the phone was enrolled in, or enroll without `replaces`"
    )]
    OtherCampaign(String),
}

/// The crate's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full(err.into()),
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(err.into()),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(format!("the database said: {err}"))
            }
            Some(ErrorCode::SystemIoFailure) => {
                StoreError::unavailable("the disk failed a read or write", err)
            }
            Some(ErrorCode::CannotOpen) => StoreError::unavailable(
                "cannot open the database file: check that its folder exists and that the \
                 server may read and write there",
                err,
            ),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::unavailable(
                "another connection held the database's write lock past the timeout",
                err,
            ),
            _ => StoreError::Other(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_err(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_codes_map_to_variants_that_name_no_backend() {
        let mapped = |code| StoreError::from(sqlite_err(code));
        assert!(matches!(
            mapped(rusqlite::ffi::SQLITE_FULL),
            StoreError::Full(_)
        ));
        assert!(matches!(
            mapped(rusqlite::ffi::SQLITE_READONLY),
            StoreError::ReadOnly(_)
        ));
        assert!(matches!(
            mapped(rusqlite::ffi::SQLITE_CORRUPT),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            mapped(rusqlite::ffi::SQLITE_NOTADB),
            StoreError::Corrupt(_)
        ));
        for code in [
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
            rusqlite::ffi::SQLITE_CANTOPEN,
            rusqlite::ffi::SQLITE_BUSY,
        ] {
            assert!(
                matches!(mapped(code), StoreError::Unavailable { .. }),
                "{code}"
            );
        }
        assert!(matches!(
            mapped(rusqlite::ffi::SQLITE_CONSTRAINT),
            StoreError::Other(_)
        ));
        for code in [
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_BUSY,
        ] {
            let message = mapped(code).to_string();
            assert!(!message.to_lowercase().contains("sqlite said"), "{message}");
            assert!(
                message.contains("retry") || message.contains("restart"),
                "says what to do: {message}"
            );
        }
    }
}
