//! tally-proto: a sans-IO implementation of automerge-repo's WebSocket sync protocol.
//!
//! - [`docid`]: document ids (base58check of 16 bytes) and `automerge:` URLs;
//! - [`wire`]: the CBOR messages (`join`, `peer`, `request`, `sync`, ...), tolerant decoding
//!   and JS-compatible encoding;
//! - [`session`]: the state machine of one connection, server or client side, with one
//!   automerge sync state per document and the host in charge of the documents, so that a
//!   server can validate incoming changes before merging them;
//! - [`host`]: the document host's decisions (may this device see it, fork, judge, store),
//!   returned as data for the server and the test hubs to run;
//! - `testkit` (feature `testkit`): a deterministic in-memory hub and client repos.
//!
//! No sockets, threads, clocks, randomness sources or storage live here: frames go in and
//! out as bytes, time is passed in as milliseconds, randomness as an `Rng`.

pub mod bounds;
pub mod docid;
pub mod host;
pub mod session;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use bounds::{ChangesSummary, FrameBudget, SyncBounds};
pub use docid::{DocIdError, DocumentId};
pub use session::{Event, Limits, Session, SessionError, Side};
pub use wire::{Message, PeerId, PeerMetadata, StorageId, WireError};
