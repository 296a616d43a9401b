//! docs/architecture.md walks a signature through the code naming functions, types and modules
//! (`Hub::commit`, `projection::Batch`, `State::make_room`). This keeps those names real: every
//! `Qualifier::name` the page writes in backticks must be defined in the workspace's source, as a
//! function, a type, a constant, a module or an enum variant, and, where the qualifier is a type
//! or a module of the workspace, in a file that defines or implements that qualifier. Names of
//! other crates (automerge's, std's) are listed in [`EXTERNAL`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Qualifiers that belong to other crates.
const EXTERNAL: &[&str] = &[
    "Automerge",
    "automerge",
    "std",
    "sync",
    "tokio",
    "axum",
    "hyper",
    "age",
    "rusqlite",
    "serde_json",
    "chrono",
    "chrono_tz",
    "tower",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n == "target" || n == "node_modules")
            {
                continue;
            }
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((p.clone(), std::fs::read_to_string(&p).unwrap_or_default()));
        }
    }
}

/// The `A::b` (and `a::b::C`) names written in backticks, with an optional call's parentheses.
fn names(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, span) in doc.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let span = span.split('(').next().unwrap_or_default().trim();
        let ok = span.contains("::")
            && span
                .split("::")
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            && span.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if ok {
            out.insert(span.to_string());
        }
    }
    out
}

/// Does `text` define `name` (a function, a type, a constant, a module, a variant or a field)?
fn defines(text: &str, name: &str) -> bool {
    for kw in [
        "fn", "struct", "enum", "const", "static", "type", "trait", "mod",
    ] {
        for sep in [" ", "<", "(", ":", ";", "{"] {
            if text.contains(&format!("{kw} {name}{sep}")) {
                return true;
            }
        }
    }
    if text.contains(&format!("    pub {name}:"))
        || text.contains(&format!("    pub(crate) {name}:"))
    {
        return true;
    }
    text.lines().any(|l| {
        let t = l.trim_start();
        l.starts_with("    ")
            && t.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([',', '(', ' ', '{']))
            && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
    })
}

/// Is `qualifier` a type this file defines or implements, or the module this file is?
fn is_home_of(path: &Path, text: &str, qualifier: &str) -> bool {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let dir = path
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if stem == qualifier || (stem == "mod" && dir == qualifier) {
        return true;
    }
    // A crate's name: any file of that crate (it may re-export the item).
    if qualifier.starts_with("tally_")
        && path.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|s| s.replace('-', "_") == qualifier)
        })
    {
        return true;
    }
    ["struct", "enum", "trait", "impl", "for"].iter().any(|kw| {
        [" ", "<", " {", "{"]
            .iter()
            .any(|sep| text.contains(&format!("{kw} {qualifier}{sep}")))
    })
}

#[test]
fn every_name_architecture_md_gives_is_in_the_code() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut files = Vec::new();
    for dir in ["crates", "server", "client-core", "bench", "tests/src"] {
        sources(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 50,
        "the sources were not found from {}",
        root.display()
    );
    let names = names(&doc);
    assert!(names.len() > 50, "too few names found: {names:?}");
    let mut missing = Vec::new();
    for full in &names {
        let parts: Vec<&str> = full.split("::").collect();
        let (qualifier, name) = (parts[parts.len() - 2], parts[parts.len() - 1]);
        if EXTERNAL.contains(&parts[0]) || EXTERNAL.contains(&qualifier) {
            continue;
        }
        let found = files
            .iter()
            .any(|(path, text)| defines(text, name) && is_home_of(path, text, qualifier));
        if !found {
            missing.push(full.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md names what the code does not define (renamed or gone? bring the \
         page true): {missing:?}"
    );
}

#[test]
fn the_check_catches_a_name_that_is_not_there() {
    let doc = "`Hub::commit` and `Hub::no_such_function` and `projection::Batch`";
    assert_eq!(names(doc).len(), 3);
    let text = "impl Hub {\n    pub fn commit(&self) {}\n}\n";
    assert!(defines(text, "commit") && is_home_of(Path::new("hub.rs"), text, "Hub"));
    assert!(!defines(text, "no_such_function"));
}
