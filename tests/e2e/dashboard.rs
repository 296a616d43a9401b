//! The organizers' web dashboard in a real browser (issue 14): runs `tests/web/dashboard.test.mjs`
//! (node's test runner, playwright-core driving Debian's Chromium headless) against the real
//! `tally serve` and `tally-device` binaries built for these tests. Each step of the suite is one
//! check (sign-in, a campaign and an event, an invite's QR code enrolling a phone, exact totals,
//! the wall screen within 2 s, filters equal to the API, suppressed cells, strikes and paper,
//! revocation, the server going down, the quarantine, the in-browser export equal to
//! `tally export`, sealed v2 opened with the keys from the server beside a v1 record, an erased
//! one and one whose key is missing, with a hostile device's junk key planted (issue 15),
//! erasure from the review page by id and by name, the audit log and its chain, a revoked token,
//! French, a phone screen, the keyboard, the CSP); the screenshots go to
//! `target/tmp/dashboard/screenshots/` (listed in `screenshots.txt` there).
//!
//! Chromium is needed: without `/usr/bin/chromium` (or `$CHROMIUM`) the test says so and skips,
//! unless `TALLY_BROWSER_TESTS=required` (CI sets it, after installing chromium), when it fails.
//! node and the packages are required, as for the interop tests (`scripts/test` runs `npm ci` in
//! tests/web, tests/js and web): the v1 and v2 records are written by `web/test/fixtures/
//! collection.mjs` (web's packages) and pushed by `tests/js/client.mjs`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_dashboard_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let required = std::env::var("TALLY_BROWSER_TESTS").is_ok_and(|v| v == "required");
    if !Path::new(&chromium).exists() {
        assert!(
            !required,
            "TALLY_BROWSER_TESTS=required but there is no Chromium at {chromium}: apt-get install chromium (or set CHROMIUM)"
        );
        eprintln!(
            "skipped: the dashboard's browser tests need Chromium at {chromium} (apt-get install chromium, or set CHROMIUM); CI installs it and sets TALLY_BROWSER_TESTS=required"
        );
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists()
            && dir.join("node_modules/jsqr/package.json").exists(),
        "the browser tests' packages are not installed: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for (folder, package) in [
        ("web", "age-encryption"),
        ("web", "@automerge/automerge"),
        ("tests/js", "@automerge/automerge-repo"),
    ] {
        assert!(
            root.join(folder)
                .join("node_modules")
                .join(package)
                .join("package.json")
                .exists(),
            "{folder}/node_modules has no {package}: run `npm ci` in {folder} (scripts/test does)"
        );
    }
    let tally = tally_tests::server::binary("tally");
    let device = tally_tests::server::binary("tally-device");
    let bin_dir = tally.parent().expect("a folder").to_path_buf();
    assert_eq!(device.parent(), Some(bin_dir.as_path()));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new("node");
    cmd.args([
        "--test",
        "--test-reporter=spec",
        "--test-timeout=90000",
        "dashboard.test.mjs",
    ])
    .current_dir(&dir)
    .env("TALLY_BIN_DIR", &bin_dir)
    .env("TALLY_WEB_OUT", &out)
    .env("CHROMIUM", &chromium);
    let started = std::time::Instant::now();
    let run = cmd
        .output()
        .expect("run node (the browser tests need node 20 or later)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}\n{stderr}");
    println!(
        "browser tests: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        out.join("screenshots").display()
    );
    assert!(
        run.status.success(),
        "the dashboard's browser tests failed ({}); the server's log is in {}:\n{stdout}\n{stderr}",
        run.status,
        out.join("server.log").display()
    );
}
