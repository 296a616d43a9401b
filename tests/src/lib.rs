//! Helpers for tally's end-to-end tests: a real server (in-process on 127.0.0.1:0, or the `tally`
//! binary as a child process that can be SIGKILLed), its HTTP API, [`Peer`] (the rig's bare
//! automerge-repo WebSocket peer, built on `tally_proto::Session` and driven frame by frame, with
//! the test certificate's TLS client), the real command lines ([`cli::Organizer`],
//! [`cli::Phone`]), [`CutProxy`], a TCP proxy that cuts or stalls links, and a throwaway TLS
//! certificate ([`tls`]).

pub mod cli;
pub mod faults;
pub mod peer;
pub mod proxy;
pub mod server;
pub mod tls;

pub use cli::{Organizer, Phone, Run};
pub use peer::Peer;
pub use proxy::{CutProxy, ProxyStats};
pub use server::{Campaign, ServerProcess, TestServer};
pub use tally_rig::new_id;
