//! The real command lines in child processes: [`Organizer`] runs `tally` (keygen, campaign,
//! event, invite, totals, export) and [`Phone`] runs `tally-device` with its own home directory.
//! Each run's exit code, stdout and stderr are kept in a [`Run`]; failures panic with all three.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::server::binary;

/// One finished run of a command.
#[derive(Debug, Clone)]
pub struct Run {
    /// What ran, for messages.
    pub what: String,
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(what: String, out: std::process::Output) -> Run {
        Run {
            what,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{} failed:\n{self}", self.what);
        self
    }

    /// Panics unless the command exited with `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "{}: unexpected exit code:\n{self}",
            self.what
        );
        self
    }

    /// Stdout as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{self}", self.what))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A command with the `TALLY_*` variables of the test's own environment removed.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(binary(program));
    for (k, _) in std::env::vars() {
        if k.starts_with("TALLY_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn describe(program: &str, args: &[&str]) -> String {
    format!("{program} {}", args.join(" "))
}

/// An organizer's shell: runs `tally` in `dir` (where `tally-keys/` is kept) against a server.
pub struct Organizer {
    /// The working directory: campaign duplicate keys go to `dir/tally-keys`.
    pub dir: PathBuf,
    /// The server's base URL.
    pub server: String,
    /// The server's data folder (for its `admin.token`).
    pub data: PathBuf,
}

impl Organizer {
    pub fn new(dir: &Path, server: &str, data: &Path) -> Organizer {
        std::fs::create_dir_all(dir).expect("organizer dir");
        Organizer {
            dir: dir.to_path_buf(),
            server: server.to_string(),
            data: data.to_path_buf(),
        }
    }

    /// Runs `tally ARGS` and waits.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = command("tally")
            .args(args)
            .current_dir(&self.dir)
            .env("TALLY_SERVER", &self.server)
            .env("TALLY_DATA", &self.data)
            .env("TALLY_KEYS", self.dir.join("tally-keys"))
            .output()
            .expect("run tally");
        Run::from_output(describe("tally", args), out)
    }

    /// Runs `tally ARGS` with `env` added to (or, for an empty value, removed from) the
    /// organizer's environment, and waits.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = command("tally");
        cmd.args(args)
            .current_dir(&self.dir)
            .env("TALLY_SERVER", &self.server)
            .env("TALLY_DATA", &self.data)
            .env("TALLY_KEYS", self.dir.join("tally-keys"));
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().expect("run tally");
        Run::from_output(describe("tally", args), out)
    }

    /// `tally keygen --out FILE`: returns the recipient (age1...).
    pub fn keygen(&self, file: &str) -> String {
        let r = self.run(&["keygen", "--out", file]).ok();
        let recipient = r.stdout.trim().to_string();
        assert!(recipient.starts_with("age1"), "keygen printed:\n{r}");
        recipient
    }

    /// `tally campaign create` sealed to `recipient`: returns the campaign id.
    pub fn create_campaign(&self, title: &str, recipient: &str) -> String {
        let r = self
            .run(&[
                "campaign",
                "create",
                "--title",
                title,
                "--petition",
                "We call on the Government of Canada to regularize all undocumented people.",
                "--addressee",
                "the House of Commons",
                "--goal",
                "100",
                "--recipient",
                recipient,
                "--json",
            ])
            .ok();
        r.json()["campaign"]
            .as_str()
            .unwrap_or_else(|| panic!("no campaign id:\n{r}"))
            .to_string()
    }

    /// `tally event add` with a given id.
    pub fn add_event(&self, campaign: &str, id: &str, name: &str, city: &str) {
        self.run(&[
            "event",
            "add",
            "--campaign",
            campaign,
            "--id",
            id,
            "--name",
            name,
            "--city",
            city,
            "--starts-at",
            "2026-07-01T18:00:00-04:00",
            "--json",
        ])
        .ok();
    }

    /// `tally invite --json`: returns the enrollment payload a phone reads.
    pub fn invite(&self, campaign: &str) -> Value {
        let r = self.run(&["invite", "--campaign", campaign, "--json"]).ok();
        let payload = r.json()["payload"].clone();
        assert!(payload.is_object(), "invite printed no payload:\n{r}");
        payload
    }

    /// `tally totals --json`.
    pub fn totals(&self, campaign: &str) -> Value {
        self.run(&["totals", "--campaign", campaign, "--json"])
            .ok()
            .json()
    }

    /// `tally export`: returns the CSV text.
    pub fn export(&self, campaign: &str, identity: &str, out: &str) -> String {
        self.run(&[
            "export",
            "--campaign",
            campaign,
            "--identity",
            identity,
            "--out",
            out,
            "--json",
        ])
        .ok();
        std::fs::read_to_string(self.dir.join(out)).expect("exported CSV")
    }
}

/// A phone: `tally-device --home HOME`.
pub struct Phone {
    pub home: PathBuf,
}

impl Phone {
    pub fn new(home: &Path) -> Phone {
        Phone {
            home: home.to_path_buf(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = command("tally-device");
        cmd.arg("--home").arg(&self.home).args(args);
        cmd
    }

    /// The device token the phone holds now, read from its SQLite file (tests that check a
    /// token stays out of a log, or that a revoked one is refused).
    pub fn token(&self) -> String {
        let conn = rusqlite::Connection::open(self.home.join("tally-device.sqlite3"))
            .expect("the phone's database");
        let json: String = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'enrollment'",
                [],
                |r| r.get(0),
            )
            .expect("the phone is enrolled");
        serde_json::from_str::<Value>(&json).expect("enrollment JSON")["token"]
            .as_str()
            .expect("a token")
            .to_string()
    }

    /// Runs `tally-device --home HOME ARGS` and waits.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().expect("run tally-device");
        Run::from_output(describe("tally-device", args), out)
    }

    /// Runs it with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write as _;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally-device");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait tally-device");
        Run::from_output(describe("tally-device", args), out)
    }

    /// Starts `tally-device --home HOME ARGS` with stdout piped, without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally-device")
    }

    /// `enroll --payload JSON --json`; panics unless the campaign arrived.
    pub fn enroll(&self, payload: &Value, name: &str) -> Value {
        let r = self
            .run(&[
                "--json",
                "enroll",
                "--payload",
                &payload.to_string(),
                "--name",
                name,
            ])
            .ok();
        let v = r.json();
        assert_eq!(v["campaign_received"], true, "enrollment:\n{r}");
        v
    }

    /// `sign --json` with the required fields and `extra` flags; returns the record id.
    pub fn sign(&self, name: &str, postal_code: &str, city: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "--json",
            "sign",
            "--name",
            name,
            "--postal-code",
            postal_code,
            "--city",
            city,
        ];
        args.extend_from_slice(extra);
        let r = self.run(&args).ok();
        r.json()["signature"]["record_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no record id:\n{r}"))
            .to_string()
    }

    /// `status --json`: the `status` object.
    pub fn status(&self) -> Value {
        self.run(&["--json", "status"]).ok().json()["status"].clone()
    }

    /// Record ids of the pending receipts, oldest first.
    pub fn pending(&self) -> Vec<String> {
        self.status()["pending"]
            .as_array()
            .expect("pending list")
            .iter()
            .map(|r| r["record_id"].as_str().expect("record id").to_string())
            .collect()
    }

    /// `sync --json --timeout SECS` (not checked: exit 3 is an incomplete sync).
    pub fn sync(&self, timeout_secs: u64) -> Run {
        self.run(&["--json", "sync", "--timeout", &timeout_secs.to_string()])
    }
}
