//! `tally-client`: the library a canvasser's phone embeds, and the `tally-device` CLI over it.
//!
//! The phone collects petition signatures and event check-ins offline, writes them into its own
//! automerge *collection* document, and syncs that document to the tally server over
//! automerge-repo's WebSocket protocol. It never loses what the canvasser entered: every record
//! is committed to the phone's SQLite file before the call returns, and stays *pending* until
//! the server's heads include it (the server acknowledges only committed changes).
//!
//! - [`Device`] ([`device`]): the phone. Enroll ([`Device::enroll`]), [`Device::sign`],
//!   [`Device::checkin`], [`Device::withdraw`], [`Device::pending`], [`Device::counts`],
//!   [`Device::totals`], [`Device::status`]. Synchronous; safe to share between threads.
//! - Sync: [`Device::sync_once`] and [`Device::spawn_watch`] ([`net`]) drive the sans-IO
//!   [`SyncEngine`] ([`sync`]) over a WebSocket on a private runtime thread.
//! - [`EnrollPayload`] ([`payload`], the `tally-payload` crate): the organizer's QR code, parsed
//!   strictly.
//! - [`chain`]: the phone's chain of collections: roll-over at a bound, and moving what is not
//!   yet acknowledged to the next collection after a refusal or a re-enrollment, so that no
//!   record is ever stranded.
//! - [`store`]: the SQLite schema; [`compact`]: loading documents from it, and folding their
//!   chunks into snapshots in the background, off the signing path.
//!
//! Signers' personal fields are sealed on the phone (tally-core's `SignatureForm::prepare`) to
//! the campaign's organizers before they touch a document; the plaintext kept for the
//! canvasser's receipts is dropped once the server acknowledges the record.

mod apply;
pub mod chain;
pub mod compact;
pub mod device;
pub mod enroll;
pub mod error;
pub mod keys;
mod mirror;
pub mod net;
/// The enrollment payload's parser lives in a crate of its own, below this one (the fuzz target
/// uses it too).
pub use tally_payload as payload;
pub mod receipts;
pub mod store;
pub mod sync;

pub use chain::DEFAULT_ROLL_OVER_AT;
pub use device::{CollectionStatus, Device, LastSync, Status, TeamTotals};
pub use enroll::{EnrollResponse, EnrollmentInfo};
pub use error::{ClientError, PayloadError, Result};
pub use net::{WatchEvent, WatchHandle};
pub use payload::EnrollPayload;
pub use receipts::{AckCounts, Counts, Receipt, ReceiptDetails, ReceiptKind, SignatureReceipt};
pub use store::{DocRole, DocState};
pub use sync::{SyncEngine, SyncReport};
pub use tally_core::collection::{FormError, SignatureForm};
