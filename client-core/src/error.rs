//! The one error type of the phone library. Every message says what went wrong and what the
//! canvasser (or the app) can do about it, because the CLI and the app show it as is.

use tally_core::collection::FormError;

pub use tally_payload::PayloadError;

/// Everything the phone library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The enrollment payload is malformed.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A form field the canvasser must fix; nothing was written.
    #[error("{0}")]
    Form(FormError),
    /// The phone has not been enrolled.
    #[error(
        "this phone is not enrolled yet: scan the organizer's enrollment code (tally-device enroll --payload '...')"
    )]
    NotEnrolled,
    /// The phone is enrolled already, in another campaign.
    #[error(
        "this phone is already enrolled in campaign {campaign} as device {device_id}, and this code is for another campaign: use another home directory for it (a code for the same campaign enrolls this phone again and keeps its records)"
    )]
    AlreadyEnrolled {
        /// The campaign it is enrolled in.
        campaign: String,
        /// Its device id.
        device_id: String,
    },
    /// The campaign document (petition, events, sealing keys) has never been received.
    #[error(
        "sync once with signal before collecting: the campaign's sealing keys are not on this phone yet"
    )]
    NoCampaign,
    /// The campaign document on the phone cannot be used.
    #[error(
        "the campaign document on this phone is not usable ({0}): sync again, and tell an organizer if this persists"
    )]
    BadCampaign(String),
    /// The enrollment server refused the code (its message says why).
    #[error("the server refused the enrollment (HTTP {status}): {message}")]
    EnrollRefused {
        /// HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error(
        "cannot reach the server at {url}: {detail}. Check the phone's connection and try again"
    )]
    Network {
        /// What was being reached.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The server refused this phone's token (revoked, expired or unknown).
    #[error("{}", unauthorized_message(*.waiting))]
    Unauthorized {
        /// Signatures, check-ins and withdrawals on the phone not yet on the server.
        waiting: u64,
    },
    /// The server is up but cannot store anything now (HTTP 503: its database is down or
    /// full); its own words say what happened.
    #[error(
        "the server cannot take anything right now: {0}. Nothing on this phone is lost: sync again in a minute, and tell an organizer if it goes on"
    )]
    Unavailable(String),
    /// The server answered something this phone does not understand.
    #[error(
        "the server answered something unexpected: {0}. Check that the server address is a tally server and that the app is up to date"
    )]
    Protocol(String),
    /// No record with this id on the phone.
    #[error(
        "no signature or check-in with record id {0:?} on this phone: check the id (tally-device status lists pending ones; `sign` and `checkin` print each new one)"
    )]
    NotFound(String),
    /// The record was withdrawn already.
    #[error("record id {0:?} is already withdrawn: nothing to do")]
    AlreadyWithdrawn(String),
    /// The local database failed.
    #[error(
        "the phone's storage failed: {0}. Free some space or restart the app; nothing entered has been lost"
    )]
    Storage(String),
    /// Stored data cannot be read back.
    #[error(
        "the phone's stored data is damaged: {0}. Keep the file and tell an organizer before reinstalling"
    )]
    Corrupt(String),
}

impl ClientError {
    /// The field at fault: the form field of a [`ClientError::Form`] error, the payload field
    /// of a [`ClientError::Payload`] error, `record_id` for an unknown or withdrawn record.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ClientError::Form(f) => Some(f.field),
            ClientError::Payload(p) => Some(p.field),
            ClientError::NotFound(_) | ClientError::AlreadyWithdrawn(_) => Some("record_id"),
            _ => None,
        }
    }

    /// A stable short name of the error kind, for apps and `--json` output.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Payload(_) => "payload",
            ClientError::Form(_) => "form",
            ClientError::NotEnrolled => "not_enrolled",
            ClientError::AlreadyEnrolled { .. } => "already_enrolled",
            ClientError::NoCampaign => "no_campaign",
            ClientError::BadCampaign(_) => "bad_campaign",
            ClientError::EnrollRefused { .. } => "enroll_refused",
            ClientError::Network { .. } => "network",
            ClientError::Unauthorized { .. } => "unauthorized",
            ClientError::Protocol(_) => "protocol",
            ClientError::Unavailable(_) => "unavailable",
            ClientError::NotFound(_) => "not_found",
            ClientError::AlreadyWithdrawn(_) => "already_withdrawn",
            ClientError::Storage(_) => "storage",
            ClientError::Corrupt(_) => "corrupt",
        }
    }

    pub(crate) fn form(field: &'static str, message: impl Into<String>) -> Self {
        ClientError::Form(FormError {
            field,
            message: message.into(),
        })
    }
}

fn unauthorized_message(waiting: u64) -> String {
    let start = "the server refused this phone's token (revoked, expired or unknown)";
    let how = "ask an organizer for a new enrollment code and enroll again in this same home (tally-device enroll --payload '...')";
    match waiting {
        0 => format!("{start}: {how}"),
        1 => format!("{start}: 1 record is waiting: {how}; it will be kept and sent"),
        n => format!("{start}: {n} records are waiting: {how}; they will be kept and sent"),
    }
}

impl From<FormError> for ClientError {
    fn from(e: FormError) -> Self {
        ClientError::Form(e)
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Storage(e.to_string())
    }
}

/// The library's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
