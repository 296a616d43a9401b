//! What a new organizer hits when something goes wrong (issue 13, "Errors that mislead" and
//! "Files and secrets"), run against the real `tally` and `tally-device` binaries: a closed
//! standard output, error messages whatever `RUST_BACKTRACE` says, the data folder's lock, the
//! export with the wrong identity, the files a first run leaves in a checkout, and the server the
//! organizer commands ask.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tally_tests::server::{Server as _, binary};
use tally_tests::{Organizer, Phone, ServerProcess};

/// `program ARGS` in `dir`, with no `TALLY_*` variable of the test's environment and `env` added.
fn run_in(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary(program));
    for (k, _) in std::env::vars() {
        if k.starts_with("TALLY_") || k.starts_with("RUST_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the binary")
}

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

/// The one line a failed command prints on standard error, whatever `RUST_BACKTRACE` says.
#[track_caller]
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {}", text(out));
    assert!(lines[0].starts_with("error: "), "{}", text(out));
    lines[0].to_string()
}

/// With `RUST_BACKTRACE=1` every `tally` error printed anyhow's debug form: "Error: ...",
/// "Caused by:" and a 20-frame "Stack backtrace:". A user's error is one clean line, with its
/// causes on it.
#[test]
fn errors_are_one_line_whatever_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let backtrace = [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")];
    for env in [&[][..], &backtrace[..]] {
        // Nobody listens on port 1.
        let out = run_in(
            dir.path(),
            "tally",
            &[
                "campaign",
                "list",
                "--server",
                "http://127.0.0.1:1",
                "--token",
                "x",
            ],
            env,
        );
        let line = one_error_line(&out);
        assert!(
            line.contains("cannot reach the server at http://127.0.0.1:1"),
            "{line}"
        );

        let out = run_in(
            dir.path(),
            "tally",
            &["reindex", "--data", "no-such-folder"],
            env,
        );
        let line = one_error_line(&out);
        assert!(line.contains("no database at"), "{line}");

        // A cause chain stays on the line: "cannot listen on ADDR: Address already in use".
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut env_off = env.to_vec();
        env_off.push(("RUST_LOG", "off"));
        let out = run_in(
            dir.path(),
            "tally",
            &["serve", "--listen", &addr, "--data", "data"],
            &env_off,
        );
        let line = one_error_line(&out);
        assert!(
            line.starts_with(&format!("error: cannot listen on {addr}: ")),
            "{line}"
        );
        assert!(line.contains("in use"), "{line}");

        let out = run_in(
            dir.path(),
            "tally-device",
            &[
                "--home",
                "phone",
                "sign",
                "--name",
                "A B",
                "--postal-code",
                "M5V 2T6",
                "--city",
                "Toronto",
            ],
            env,
        );
        one_error_line(&out);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two servers on one data folder: the second is refused, naming the first one's pid, and so is
/// `tally reindex` while a server runs there; both work once it has stopped.
#[test]
fn one_server_per_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = ServerProcess::start(&data);
    let pid = first.pid();

    let port = free_port();
    let mut second = Command::new(binary("tally"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&data)
        .env("RUST_LOG", "off")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second server");
    // Either it exits, or it comes up (the bug): no clock decides.
    let health = format!("http://127.0.0.1:{port}/healthz");
    loop {
        if second.try_wait().unwrap().is_some() {
            break;
        }
        if ureq::get(&health)
            .timeout(std::time::Duration::from_millis(500))
            .call()
            .is_ok()
        {
            let _ = second.kill();
            let out = second.wait_with_output().unwrap();
            panic!(
                "a second server started on the same data folder: {}",
                text(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    let line = one_error_line(&out);
    assert!(line.contains(&format!("pid {pid}")), "{line}");
    assert!(line.contains(&data.display().to_string()), "{line}");
    assert!(first.healthy(), "the first server still runs");

    let data_arg = data.display().to_string();
    let out = run_in(dir.path(), "tally", &["reindex", "--data", &data_arg], &[]);
    let line = one_error_line(&out);
    assert!(line.contains(&format!("pid {pid}")), "{line}");
    assert!(line.contains("stop it"), "{line}");

    assert!(first.terminate(), "the first server stops cleanly");
    let out = run_in(dir.path(), "tally", &["reindex", "--data", &data_arg], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut again = ServerProcess::start(&data);
    assert!(again.healthy());
    again.kill();
}

/// `tally export` with the wrong identity: it wrote a header-only CSV and exited 0 ("wrote 0
/// signers ... 1 could not be opened"). Now it fails and writes nothing; an existing file is not
/// overwritten without `--force`.
#[test]
fn export_with_the_wrong_identity_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"));
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    org.keygen("other.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    let phone = Phone::new(&dir.path().join("phone"));
    phone.enroll(&org.invite(&campaign), "Amina's phone");
    phone.sign("Amara Okafor", "M5V 2T6", "Toronto", &[]);
    phone.sync(20).ok();

    let export = |identity: &str, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--campaign",
            &campaign,
            "--identity",
            identity,
            "--out",
            "signers.csv",
        ];
        args.extend_from_slice(extra);
        org.run(&args)
    };
    let out = export("other.age", &[]).code(1);
    assert!(
        out.stderr
            .contains("none of the 1 signatures could be opened"),
        "{out}"
    );
    assert!(out.stderr.contains("nothing written"), "{out}");
    assert!(!org.dir.join("signers.csv").exists(), "{out}");

    let out = export("organizer.age", &[]).ok();
    assert!(out.stdout.contains("wrote 1 signers"), "{out}");
    let csv = std::fs::read_to_string(org.dir.join("signers.csv")).unwrap();
    assert!(csv.contains("Amara Okafor"), "{csv}");

    let out = export("organizer.age", &[]).code(1);
    assert!(out.stderr.contains("--force"), "{out}");
    export("organizer.age", &["--force"]).ok();
}

/// Answers every HTTP request with `body` (JSON), one connection after another.
fn stub_server(body: String) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

/// Some records open, some do not (sealed to another organizer): the CSV holds those that open
/// and the command says loudly how many are missing.
#[test]
fn export_warns_when_some_records_do_not_open() {
    use tally_core::seal::{self, PersonalFields};
    let dir = tempfile::tempdir().unwrap();
    let org = Organizer::new(dir.path(), "http://unused", &dir.path().join("data"));
    let mine = org.keygen("organizer.age");
    let theirs = org.keygen("other.age");
    let record = |id: &str, recipient: &str| {
        let fields = PersonalFields {
            name: format!("Signer {id}"),
            postal_code: "M5V2T6".into(),
            ..PersonalFields::default()
        };
        let sealed: String = seal::seal(&[recipient.to_string()], &fields)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({"id": id, "collected_at": 0, "collected_by": "d", "event": null,
            "city": "Toronto", "fsa": "M5V", "riding": null, "consent_contact": false,
            "counted": true, "withdrawn": false, "sealed": sealed})
    };
    let body = serde_json::json!([
        record("r1", &mine),
        record("r2", &theirs),
        record("r3", &theirs)
    ]);
    let base = stub_server(body.to_string());
    let out = run_in(
        dir.path(),
        "tally",
        &[
            "export",
            "--campaign",
            "c",
            "--identity",
            "organizer.age",
            "--out",
            "signers.csv",
            "--server",
            &base,
            "--token",
            "t",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("warning: 2 of 3 signatures could not be opened"),
        "{}",
        text(&out)
    );
    let csv = std::fs::read_to_string(dir.path().join("signers.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains("Signer r1"), "{csv}");
}

/// A first run from the repository root leaves an organizer's identity, campaign keys, a phone's
/// database and signers' details in the checkout: git must ignore them (a `git add -A` would
/// commit an identity and signers), and docs/operations.md's "A first run" works in a scratch
/// folder.
#[test]
fn first_run_files_are_ignored_by_git() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let first_run = docs
        .split("## A first run")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/operations.md has a ```sh block under \"## A first run\"");
    let scratch = first_run
        .find("cd \"$(mktemp -d)\"")
        .expect("the first run moves to a scratch folder");
    let first_data = first_run.find("tally serve").expect("the first run serves");
    assert!(scratch < first_data, "the scratch folder comes first");

    let git = Command::new("git").arg("--version").output();
    if !git.is_ok_and(|o| o.status.success()) {
        eprintln!("no git here: .gitignore not checked");
        return;
    }
    for path in [
        "organizer.age",
        "tally-keys/3Vt16xB8yr2QixdPwJcbxBVxeUs.key",
        "tally-phone/tally-device.sqlite3",
        "signers.csv",
        "tally-data/admin.token",
    ] {
        let out = Command::new("git")
            .args(["check-ignore", "--no-index", "-q", path])
            .current_dir(&root)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{path} is not ignored by git: {}",
            text(&out)
        );
    }
}

/// Without `--server` or `TALLY_SERVER`, the organizer commands ask the server the data folder's
/// `tally.toml` describes (its `public_url`, else its `listen`), not the default port; every
/// connection or auth error says which server was asked and why that one.
#[test]
fn organizer_commands_find_the_server_in_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data);
    let url = server.base();
    let data_arg = data.display().to_string();
    let config = data.join("tally.toml");

    std::fs::write(&config, format!("listen = \"127.0.0.1:{}\"\n", server.port)).unwrap();
    let out = run_in(
        dir.path(),
        "tally",
        &["campaign", "list", "--json", "--data", &data_arg],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A wrong token: the error names the server and where its address came from.
    let out = run_in(
        dir.path(),
        "tally",
        &["campaign", "list", "--data", &data_arg, "--token", "wrong"],
        &[],
    );
    let line = one_error_line(&out);
    assert!(line.contains(&format!("the server at {url}")), "{line}");
    assert!(line.contains("(401)"), "{line}");
    assert!(line.contains("listen"), "{line}");
    assert!(line.contains("tally.toml"), "{line}");

    // public_url wins over listen (behind a proxy, listen may be no address to ask).
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:1\"\npublic_url = \"{url}\"\n"),
    )
    .unwrap();
    let out = run_in(
        dir.path(),
        "tally",
        &["campaign", "list", "--json", "--data", &data_arg],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Nobody there: the connection error names the server and the flag that chose it.
    let out = run_in(
        dir.path(),
        "tally",
        &[
            "campaign",
            "list",
            "--data",
            &data_arg,
            "--server",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    let line = one_error_line(&out);
    assert!(
        line.contains("cannot reach the server at http://127.0.0.1:1"),
        "{line}"
    );
    assert!(line.contains("--server"), "{line}");
}
