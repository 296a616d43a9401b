//! What a new organizer hits when something goes wrong (issue 13, "Errors that mislead" and
//! "Files and secrets"), run against the real `tally` and `tally-device` binaries: a closed
//! standard output, error messages whatever `RUST_BACKTRACE` says, the data folder's lock, the
//! export with the wrong identity, the files a first run leaves in a checkout, and the server the
//! organizer commands ask.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tally_tests::server::binary;

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `program ARGS` with standard output a pipe whose reading end is already closed, so the
/// first write fails with EPIPE, every time.
fn run_with_closed_stdout(dir: &Path, program: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(binary(program));
    for (k, _) in std::env::vars() {
        if k.starts_with("TALLY_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.wait_with_output().expect("wait")
}

/// `tally-device status | head` (and `tally config | head`): the reader went away; the program
/// stops quietly instead of panicking with "failed printing to stdout: Broken pipe".
#[test]
fn closed_stdout_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    for (program, args) in [
        ("tally-device", &["--home", "phone", "status"][..]),
        ("tally", &["config"][..]),
    ] {
        let out = run_with_closed_stdout(dir.path(), program, args);
        assert_eq!(out.status.code(), Some(0), "{program}: {}", text(&out));
        assert_eq!(stderr(&out), "", "{program}: {}", text(&out));
    }
}
