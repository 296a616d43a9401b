//! tally's end-to-end tests, compiled as one test binary (`e2e`): real `tally serve` and
//! `tally-device` processes, real sockets on 127.0.0.1, real SQLite files. One module per area;
//! the helpers they share are the `tally_tests` library (`tests/src`).
//!
//! One binary links the server once: a change to it relinks one test program, not one per area.
//! Run one area or one test with a filter on the test path:
//!
//! ```sh
//! cargo test -p tally-tests hostile::            # every test of tests/e2e/hostile.rs
//! cargo test -p tally-tests restart:: -- --nocapture
//! ```
//!
//! All areas share one process, so no test sets the process's environment variables or other
//! global state: a server's settings go to its child process ([`tally_tests::ServerProcess`]) or
//! its in-process [`tally_server::config::Config`]. The heavy tests (tens of thousands of
//! signatures or documents, resident memory measured, the fault schedules, the attacks on the
//! cost of a sync) hold [`heavy`], so that at most one of them runs at a time: on a small
//! machine two of them together would starve each other's servers of CPU and turn their
//! timeouts into failures.

mod app;
mod audit;
mod chains;
mod cli_errors;
mod dashboard;
mod docs_names;
mod erasure;
mod faults;
mod hostile;
mod hostile_net;
mod hostile_sync;
mod interop;
mod log_secrets;
mod memory;
mod metrics;
mod organizer_api;
mod organizer_cli;
mod phone_chain;
mod phones;
mod postgres;
mod quickstart;
mod restart;
mod servers;
mod sync_server;
mod tls;

/// Held for the whole of a heavy test: at most one runs at a time, beside the light ones. A
/// tokio mutex, so that a heavy test that fails does not poison it for the others.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the heavy tests' turn (in an async test).
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// Waits for the heavy tests' turn (in a test outside a runtime).
pub fn heavy_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

/// With `autotests = false` a file nobody names is never compiled: every `tests/e2e/*.rs` must be
/// a module here, and `tests/tests/` (where cargo would have found test programs) must hold none.
#[test]
fn every_test_file_is_compiled() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let main = std::fs::read_to_string(root.join("e2e/main.rs")).expect("e2e/main.rs");
    let rs_files = |dir: &str| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let missing: Vec<String> = rs_files("e2e")
        .into_iter()
        .filter(|n| n != "main" && !main.lines().any(|l| l.trim() == format!("mod {n};")))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/e2e/ files that are not compiled: {missing:?}; add `mod NAME;` to tests/e2e/main.rs"
    );
    let stray = rs_files("tests");
    assert!(
        stray.is_empty(),
        "tests/tests/ holds {stray:?}, which cargo no longer compiles (autotests = false): move \
         them to tests/e2e/ and add `mod NAME;` to tests/e2e/main.rs"
    );
}
