//! Helpers for tally's end-to-end tests: a real server (in-process on 127.0.0.1:0, or the `tally`
//! binary as a child process that can be SIGKILLed), its HTTP API, and [`Peer`], a bare
//! automerge-repo WebSocket peer built on `tally_proto::Session` that tests drive frame by frame.

pub mod peer;
pub mod server;

pub use peer::Peer;
pub use server::{Campaign, ServerProcess, TestServer};
