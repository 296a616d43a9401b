//! Replays every input kept under `fuzz/regressions/<target>/` (crashers found by cargo-fuzz,
//! once fixed, and a few seeds) through the target's body, so that none comes back.

use std::path::PathBuf;

#[test]
fn kept_inputs_pass_every_target() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut replayed = 0;
    for target in tally_fuzz::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; every target keeps its inputs there",
                dir.display()
            )
        });
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let data = std::fs::read(&path).expect("regression input");
            eprintln!("{target}: {}", path.display());
            tally_fuzz::run(target, &data);
            replayed += 1;
        }
    }
    assert!(
        replayed >= tally_fuzz::TARGETS.len(),
        "only {replayed} inputs kept; each target keeps at least its seed"
    );
}
