//! The README's quickstart, run as written: the ```sh block under "## Quickstart" is taken out of
//! README.md and run with bash (`set -euo pipefail`) in a temp dir, with the built `tally` and
//! `tally-device` first on PATH and `TALLY_LISTEN` (which the block reads, with a default) on a
//! free port. So the README and what the programs do cannot drift apart.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_tests::server::binary;

/// The first ```sh block after the "## Quickstart" heading.
fn quickstart_block(readme: &str) -> String {
    let mut lines = readme.lines().skip_while(|l| l.trim() != "## Quickstart");
    assert!(
        lines.next().is_some(),
        "README.md has no \"## Quickstart\" heading"
    );
    let mut lines = lines.skip_while(|l| {
        assert!(
            !l.starts_with("## "),
            "no ```sh block under \"## Quickstart\" before {l:?}"
        );
        l.trim() != "```sh"
    });
    assert!(
        lines.next().is_some(),
        "no ```sh block under \"## Quickstart\""
    );
    let mut block = String::new();
    for line in lines {
        if line.trim() == "```" {
            return block;
        }
        block.push_str(line);
        block.push('\n');
    }
    panic!("the quickstart's ```sh block is not closed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn readme_quickstart_runs() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let block = quickstart_block(&readme);
    for step in [
        "tally serve",
        "tally keygen",
        "tally campaign create",
        "tally event add",
        "tally invite",
        "tally-device --home amina enroll",
        "tally-device --home bo enroll",
        "sign",
        "sync",
        "tally totals",
        "tally export",
    ] {
        assert!(
            block.contains(step),
            "the quickstart lost its step {step:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("quickstart.sh");
    std::fs::write(&script, format!("set -euo pipefail\n{block}")).unwrap();
    let bin_dir = binary("tally").parent().unwrap().to_path_buf();
    assert!(bin_dir.join("tally-device").exists());
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let listen = format!("127.0.0.1:{}", free_port());

    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        // `mktemp -d` makes the scratch folder inside the test's temp dir.
        .env("TMPDIR", dir.path())
        .env("TALLY_LISTEN", &listen)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a server left behind by a failing step can be ended with it.
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("TALLY_") && k != "TALLY_LISTEN" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("run bash");
    let pgid = child.id();
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever happened, nothing of the script outlives the test.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    if status.is_none() {
        let _ = child.wait();
    }
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    println!("{report}");
    let status =
        status.unwrap_or_else(|| panic!("the quickstart did not finish in 90 s\n{report}"));
    assert!(
        status.success(),
        "the quickstart failed: {status}\n{report}"
    );

    // Collected offline: Bo's phone says what is not yet safe.
    assert!(
        stdout.contains("1 signature not yet safe: sync when you have signal"),
        "{report}"
    );
    // Both phones synced everything.
    assert_eq!(
        stdout.matches("synced; ").count(),
        2,
        "two complete syncs expected\n{report}"
    );
    // The totals: three signatures, the same person twice.
    assert!(
        stdout.contains("3 signatures counted, 2 unique signers (0 struck, 0 withdrawn)"),
        "{report}"
    );
    // The delivery export: one row per unique signer, the duplicate folded.
    assert!(
        stdout.contains(
            "wrote 2 signers to signers.csv, one row each: 3 counted signatures, 1 duplicate folded"
        ),
        "{report}"
    );

    // The export, as the organizer opens it.
    let scratch: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("signers.csv"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(scratch.len(), 1, "one signers.csv expected: {scratch:?}");
    let csv = std::fs::read_to_string(&scratch[0]).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("id,collected_at,collected_by,event,city")
    );
    let mut people: Vec<String> = lines
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            format!("{} {} {}", cols[10], cols[14], cols[4])
        })
        .collect();
    people.sort();
    assert_eq!(
        people,
        [
            "Amara Okafor M5V2T6 Toronto",
            "Jean Tremblay H2X1Y4 Montréal"
        ]
    );
    assert!(stdout.contains(&csv), "the block prints the CSV\n{report}");
}
