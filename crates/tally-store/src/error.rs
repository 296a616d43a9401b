//! The one error type of the store, and the one place where SQLite's errors are sorted into it.
//!
//! Every message says what went wrong and what the operator (or the calling code) should do
//! about it, because the server shows these to people: a full disk must read as a full disk,
//! not as "database error 13".

use rusqlite::ErrorCode;

/// Everything a store call can fail with. Nothing is swallowed: a failed write is reported, and
/// the transaction it belonged to is rolled back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing (a document, a device) is not in the store.
    #[error("{0} not found: check the id, or create it first")]
    NotFound(String),

    /// SQLITE_FULL: the volume holding the database has no space left (or the store's page limit,
    /// see [`crate::Store::set_max_pages`], was reached). Nothing of the failed write was kept.
    #[error(
        "the disk is full: free space on the server's data volume, then retry \
         (nothing of the failed write was kept; sqlite said: {0})"
    )]
    Full(#[source] rusqlite::Error),

    /// SQLITE_READONLY: the database file, its folder or its volume cannot be written.
    #[error(
        "the database is read-only: make the database file and its folder writable by the \
         server (or remount the volume read-write), then retry (sqlite said: {0})"
    )]
    ReadOnly(#[source] rusqlite::Error),

    /// SQLITE_CORRUPT / SQLITE_NOTADB: the file is damaged or is not a tally database at all.
    #[error(
        "the database file is damaged or is not a tally database: stop the server, keep a copy \
         of the file, and restore the latest backup ({0})"
    )]
    Corrupt(String),

    /// SQLITE_IOERR: the operating system failed a read, write or fsync.
    #[error(
        "the disk failed a read or write: check the data volume (kernel log, hardware), \
         then restart the server (sqlite said: {0})"
    )]
    Io(#[source] rusqlite::Error),

    /// SQLITE_CANTOPEN: the file (or its WAL/shm companions) could not be opened.
    #[error(
        "cannot open the database file: check that its folder exists and that the server may \
         read and write there (sqlite said: {0})"
    )]
    CannotOpen(#[source] rusqlite::Error),

    /// The file was written by a newer tally whose schema this build does not know.
    #[error(
        "the database has schema version {found} but this build knows only up to {supported}: \
         run a newer tally server on it (never an older one)"
    )]
    SchemaTooNew {
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest schema version this build can migrate to.
        supported: i64,
    },

    /// A read-only store was opened on a file whose schema is older than this build's.
    #[error(
        "the database has schema version {found} but this build needs {needed}: open it once \
         read-write (start the server) to upgrade it"
    )]
    SchemaTooOld {
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The schema version this build reads.
        needed: i64,
    },

    /// The caller passed something the store cannot accept (a bad argument, not a bad disk).
    #[error("invalid request to the store: {0}")]
    Invalid(String),

    /// The write would contradict what is stored (e.g. a document re-declared with another kind).
    #[error("conflict with stored data: {0}")]
    Conflict(String),

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

    /// A previous failure left the connection inside a transaction that could not be rolled
    /// back; the store refuses further work rather than risk mixing writes.
    #[error(
        "the store's database connection is unusable after a failed rollback ({0}): \
         restart the server"
    )]
    Broken(String),

    /// Any other SQLite error (busy past the timeout, a constraint, a misuse).
    #[error("database error: {0} (if it persists, check the server log and the data volume)")]
    Other(#[source] rusqlite::Error),
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
            Some(ErrorCode::DiskFull) => StoreError::Full(err),
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(err),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(format!("sqlite said: {err}"))
            }
            Some(ErrorCode::SystemIoFailure) => StoreError::Io(err),
            Some(ErrorCode::CannotOpen) => StoreError::CannotOpen(err),
            _ => StoreError::Other(err),
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
    fn sqlite_codes_map_to_variants() {
        assert!(matches!(
            StoreError::from(sqlite_err(rusqlite::ffi::SQLITE_FULL)),
            StoreError::Full(_)
        ));
        assert!(matches!(
            StoreError::from(sqlite_err(rusqlite::ffi::SQLITE_READONLY)),
            StoreError::ReadOnly(_)
        ));
        assert!(matches!(
            StoreError::from(sqlite_err(rusqlite::ffi::SQLITE_CORRUPT)),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            StoreError::from(sqlite_err(rusqlite::ffi::SQLITE_NOTADB)),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            StoreError::from(sqlite_err(rusqlite::ffi::SQLITE_IOERR_FSYNC)),
            StoreError::Io(_)
        ));
        assert!(matches!(
            StoreError::from(sqlite_err(rusqlite::ffi::SQLITE_BUSY)),
            StoreError::Other(_)
        ));
    }
}
