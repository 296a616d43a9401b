//! The canvassers' web app (`web/src/app`, served by `tally serve` at `/app/`, issue 16), tested
//! where it runs:
//!
//! - `the_app_computes_what_tally_core_computes`: the app's form rules, normalizations, tokens
//!   and sealed v2 (TypeScript, run by node) against every shared vector of
//!   `docs/clients-vectors.json`,
//!   which `crates/tally-core/tests/vectors.rs` generates from tally-core
//!   (`web/test/app/vectors.test.mjs`);
//! - `the_app_in_a_real_browser`: Debian's Chromium, driven by playwright-core, against the
//!   real `tally serve`, `tally` and `tally-device` binaries: enrolling from the invite's link,
//!   offline for real, 6 signatures and 2 check-ins, reopening offline, syncing by itself, the
//!   API's totals, `tally export`, IndexedDB holding no name in the clear, the same token as
//!   `tally-device`, a refused record, the server killed mid-sync, a revoked phone enrolling
//!   again, sealed v2 with each record key in the server's key table (issue 15), a signature not
//!   safe while its key is refused, a record erased before its key arrived
//!   (`tests/web/app.test.mjs` lists each step; its fixtures are the dashboard's
//!   `tests/web/harness.mjs` and `tests/web/app-harness.mjs`). Screenshots of every screen and
//!   the figures (first paint offline, signing time) go to `target/tmp/app-tests/`.
//!
//! node and the packages are required: `web/node_modules` for the first (`npm ci` in web/),
//! `tests/web/node_modules` for the second (`scripts/test` installs both). The browser test is
//! skipped, saying so, only when Chromium is missing and `TALLY_BROWSER_TESTS=required` is not
//! set (CI sets it and installs Chromium).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_tests::server::binary;

/// The browser test's longest run (it takes about 20 s).
const BROWSER_RUN: Duration = Duration::from_secs(300);

/// `dir` (relative to the repository), checked to hold the packages a test imports.
fn installed(dir: &str, packages: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    for package in packages {
        assert!(
            dir.join("node_modules")
                .join(package)
                .join("package.json")
                .exists(),
            "{}/node_modules has no {package}: run `npm ci` there (scripts/test does)",
            dir.display()
        );
    }
    dir
}

/// Debian's Chromium (or `$CHROMIUM`, as for the dashboard's tests), if it is here.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    path.exists().then_some(path)
}

/// Runs `node ARGS` in `dir` to its end (killed after `limit`); panics with its output unless
/// it passed.
fn node(dir: &Path, args: &[&str], envs: &[(&str, &Path)], limit: Duration) {
    // Output to files, not pipes: nothing to read while waiting, and no full pipe to block on.
    let logs = tempfile::tempdir().expect("a temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let script = args.join(" ");
    let mut cmd = Command::new("node");
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TALLY_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("could not run node ({e}): install node 20.19+ (and `npm ci` in web/ and tests/web)")
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            panic!("node {script} did not finish in {limit:?}:\n{stdout}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "node {script} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    println!("{stdout}");
}

#[test]
fn the_app_computes_what_tally_core_computes() {
    let web = installed("web", &["esbuild", "@automerge/automerge-repo"]);
    node(
        &web,
        &["test/app/run-unit.mjs"],
        &[],
        Duration::from_secs(120),
    );
}

#[test]
fn the_app_in_a_real_browser() {
    let required = std::env::var("TALLY_BROWSER_TESTS").is_ok_and(|v| v == "required");
    let Some(browser) = chromium() else {
        assert!(
            !required,
            "TALLY_BROWSER_TESTS=required but Chromium is not installed: apt-get install -y chromium (or set CHROMIUM)"
        );
        eprintln!(
            "SKIPPED the_app_in_a_real_browser: Chromium is not installed (apt-get install -y chromium); CI requires it"
        );
        return;
    };
    let dir = installed("tests/web", &["playwright-core"]);
    let tally = binary("tally");
    binary("tally-device");
    let bins = tally.parent().expect("the binaries' folder").to_path_buf();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("app-tests");
    node(
        &dir,
        &[
            "--test",
            "--test-reporter=spec",
            "--test-timeout=120000",
            "app.test.mjs",
        ],
        &[
            ("TALLY_BIN_DIR", &bins),
            ("TALLY_WEB_OUT", &out),
            ("CHROMIUM", &browser),
        ],
        BROWSER_RUN,
    );
    println!("screenshots and figures: {}", out.display());
}
