//! The rig both the end-to-end tests (`tests/`) and the load benchmark (`bench/`) drive a real
//! `tally serve` with: [`ServerProcess`], the server in a child process; [`Api`], its HTTP API
//! client (typed with the server's own request and answer types); [`Peer`], a bare
//! automerge-repo peer on one WebSocket (the tests' frame-by-frame peer, the benchmark's phones);
//! and [`new_id`]. It holds nothing test-only (the fault harness, the cutting proxy, the hostile
//! frames and the throwaway certificates stay in `tests/src`), so the benchmark depends on it
//! without depending on the tests.

pub mod api;
pub mod peer;
pub mod process;

pub use api::Api;
pub use peer::Peer;
pub use process::{ServerProcess, Spawn};

use tally_proto::DocumentId;

/// A fresh random document id.
pub fn new_id() -> DocumentId {
    DocumentId::random(&mut rand::thread_rng())
}
