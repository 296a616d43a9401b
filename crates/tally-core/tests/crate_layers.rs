//! The workspace's arrows point one way: a crate under `crates/` (the shared foundations: core
//! rules, the protocol, the store, the payload parser, the fuzz targets' bodies) depends only on
//! crates under `crates/`, never on one above it (`server/`, `client-core/`, `tests/`,
//! `bench/`). Read from `cargo metadata`, so every kind of dependency counts: normal, dev and
//! build.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/tally-core sits two folders below the workspace root")
        .to_path_buf()
}

/// `cargo metadata` of the workspace, its own packages only.
fn metadata(root: &Path) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn nothing_under_crates_depends_on_a_crate_above_it() {
    let root = workspace_root();
    let crates_dir = root.join("crates");
    let meta = metadata(&root);
    let packages = meta["packages"].as_array().expect("packages");
    // Each workspace package's folder, by name.
    let folder = |name: &str| -> Option<PathBuf> {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["manifest_path"].as_str())
            .map(|m| Path::new(m).parent().unwrap().to_path_buf())
    };
    let mut below = Vec::new();
    let mut wrong = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let dir = folder(name).unwrap();
        if !dir.starts_with(&crates_dir) {
            continue;
        }
        below.push(name.to_string());
        for dep in p["dependencies"].as_array().unwrap() {
            // Workspace crates are path dependencies; crates.io's have no path.
            let Some(path) = dep["path"].as_str() else {
                continue;
            };
            if !Path::new(path).starts_with(&crates_dir) {
                wrong.push(format!(
                    "{name} ({}) depends on {} ({}{})",
                    dir.strip_prefix(&root).unwrap().display(),
                    dep["name"].as_str().unwrap(),
                    Path::new(path)
                        .strip_prefix(&root)
                        .unwrap_or(Path::new(path))
                        .display(),
                    dep["kind"]
                        .as_str()
                        .map(|k| format!(", a {k}-dependency"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    below.sort();
    for expected in [
        "tally-core",
        "tally-fuzz",
        "tally-payload",
        "tally-proto",
        "tally-store",
    ] {
        assert!(
            below.iter().any(|b| b == expected),
            "{expected} not found under crates/ (found {below:?})"
        );
    }
    assert!(
        wrong.is_empty(),
        "crates under crates/ must depend only on crates under crates/ (move the code down, or \
         the crate out of crates/): {wrong:#?}"
    );
}
