//! `tally serve` on PostgreSQL (issue 17): a real server with `TALLY_DATABASE_URL` (the
//! `database_url` setting) in a database of its own in the throwaway PostgreSQL of
//! `scripts/with-postgres`, real `tally-device` phones enrolling, signing offline and syncing:
//! the totals are exact, the records are in PostgreSQL and no SQLite file is made, and after a
//! restart the totals are still exact and the phones sync on. PostgreSQL stopped under the
//! server (a cluster of the test's own): the phone hears "nothing was acknowledged, retry" and
//! keeps its signature; started again, the server reconnects by itself and the phone's next
//! sync lands it. `tally serve --database-url` with a database that refuses connections stops
//! at once, saying so, without the password.
//!
//! Without `TALLY_TEST_DATABASE_URL` these tests say so and skip; with
//! `TALLY_POSTGRES_TESTS=required` (CI) they fail instead.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_tests::server::Server as _;
use tally_tests::{Organizer, Phone, ServerProcess};

/// A new database in the test PostgreSQL for the test `module::test`, and its URL; or `None`,
/// said loudly, without one (a failure instead when `TALLY_POSTGRES_TESTS=required`, as in CI).
pub(crate) fn database(module: &str, test: &str) -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = match std::env::var("TALLY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("TALLY_POSTGRES_TESTS").as_deref() != Ok("required"),
                "{module}::{test}: TALLY_POSTGRES_TESTS=required but TALLY_TEST_DATABASE_URL is \
                 not set: run the tests under scripts/with-postgres"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {module}::{test}: no PostgreSQL (TALLY_TEST_DATABASE_URL is not set): \
                 run `scripts/with-postgres cargo test -p tally-tests --test e2e {module}::`"
            );
            return None;
        }
    };
    let name = format!(
        "e2e_{module}_{test}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("test database");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create the test's database");
    let (base, _) = url.rsplit_once('/').expect("a URL with a database name");
    Some(format!("{base}/{name}"))
}

fn signatures_in(url: &str) -> i64 {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap()
        .query_one("SELECT count(DISTINCT sig_id) FROM signatures", &[])
        .unwrap()
        .get(0)
}

#[test]
fn phones_sync_to_a_server_on_postgresql_and_the_totals_survive_a_restart_and_a_reindex() {
    let Some(url) = database("postgres", "restart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        ServerProcess::start_with_env(&dir.path().join("data"), &[("TALLY_DATABASE_URL", &url)]);
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    let phones: Vec<Phone> = ["amina", "bo"]
        .iter()
        .map(|name| {
            let phone = Phone::new(&dir.path().join(name));
            phone.enroll(&org.invite(&campaign), name);
            phone
        })
        .collect();
    // Offline: three signatures each, then one sync each.
    for (i, phone) in phones.iter().enumerate() {
        for j in 0..3 {
            phone.sign(&format!("Signer {i}-{j}"), "M5V 2T6", "Toronto", &[]);
        }
        assert_eq!(phone.pending().len(), 3);
    }
    for phone in &phones {
        phone.sync(30).ok();
        assert!(phone.pending().is_empty(), "every signature acknowledged");
    }
    assert_eq!(org.totals(&campaign)["signatures"], 6);
    assert_eq!(signatures_in(&url), 6, "the records are in PostgreSQL");
    assert!(
        !server.data.join(tally_server::DB_FILE).exists(),
        "no SQLite file beside a PostgreSQL database"
    );

    server.restart();
    assert_eq!(org.totals(&campaign)["signatures"], 6, "after the restart");
    phones[0].sign("After Restart", "M4C 1B5", "Toronto", &[]);
    phones[0].sync(30).ok();
    assert!(phones[0].pending().is_empty());
    assert_eq!(org.totals(&campaign)["signatures"], 7);
    assert_eq!(signatures_in(&url), 7);

    // `tally reindex --database-url` rebuilds the rows from the documents while the server
    // runs on, and the server goes on storing after it.
    postgres::Client::connect(&url, postgres::NoTls)
        .unwrap()
        .batch_execute("DELETE FROM signatures")
        .unwrap();
    assert_eq!(signatures_in(&url), 0);
    let out = std::process::Command::new(tally_tests::server::binary("tally"))
        .args(["reindex", "--database-url", &url])
        .env_remove("TALLY_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("7 signatures"), "{stdout}");
    assert_eq!(signatures_in(&url), 7, "the rows are back");
    assert_eq!(org.totals(&campaign)["signatures"], 7);
    phones[1].sign("After Reindex", "M4C 1B5", "Toronto", &[]);
    phones[1].sync(30).ok();
    assert!(phones[1].pending().is_empty());
    assert_eq!(org.totals(&campaign)["signatures"], 8);
    assert_eq!(signatures_in(&url), 8);
}

#[test]
fn a_database_that_refuses_connections_stops_the_start_and_says_so() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tally_tests::server::binary("tally"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--database-url")
        .arg(format!("postgres://tally:s3cret@127.0.0.1:{port}/tally"))
        .env_remove("TALLY_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot open the PostgreSQL database")
            && stderr.contains(&format!("127.0.0.1:{port}/tally"))
            && stderr.contains("retry"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "no password in the message: {stderr}"
    );
}

/// A PostgreSQL cluster of this test's own (PostgreSQL 15's programs, as `scripts/with-postgres`
/// finds them), so that it can be stopped and started under a running server.
struct Cluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl Cluster {
    fn owner_cmd(&self, program: &str, args: &[String]) -> std::process::Output {
        let path = self.bin.join(program);
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = if root {
            let line = std::iter::once(path.display().to_string())
                .chain(args.iter().map(|a| format!("'{a}'")))
                .collect::<Vec<_>>()
                .join(" ");
            let mut c = std::process::Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
            c
        } else {
            let mut c = std::process::Command::new(path);
            c.args(args);
            c
        };
        cmd.output().expect("run a PostgreSQL program")
    }

    fn new() -> Cluster {
        let bin = std::path::PathBuf::from(
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let dir = tempfile::tempdir().unwrap();
        let _ = std::process::Command::new("chmod")
            .arg("777")
            .arg(dir.path())
            .status();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let cluster = Cluster { dir, bin, port };
        let data = cluster.dir.path().join("data").display().to_string();
        let out = cluster.owner_cmd(
            "initdb",
            &[
                "-D".into(),
                data,
                "-U".into(),
                "tally".into(),
                "--auth=trust".into(),
            ],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        cluster.start();
        cluster
    }

    fn pg_ctl(&self, what: &[&str]) -> std::process::Output {
        let mut args: Vec<String> = vec![
            "-D".into(),
            self.dir.path().join("data").display().to_string(),
            "-l".into(),
            self.dir.path().join("log").display().to_string(),
            "-w".into(),
        ];
        args.extend(what.iter().map(|s| s.to_string()));
        self.owner_cmd("pg_ctl", &args)
    }

    fn start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let out = self.pg_ctl(&["-o", &options, "start"]);
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }

    fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    fn url(&self) -> String {
        format!("postgres://tally@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// PostgreSQL stopped under a running server: a phone's sync is told nothing was acknowledged
/// and keeps its signature; PostgreSQL started again, the server reconnects by itself and the
/// same phone's next sync lands it, and both servers sharing the database hear each other's
/// changes again.
#[test]
fn postgresql_stopped_and_started_under_the_server_loses_nothing() {
    if database("postgres", "outage").is_none() {
        return;
    }
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let server =
        ServerProcess::start_with_env(&dir.path().join("data"), &[("TALLY_DATABASE_URL", &url)]);
    // A second server on the same database, to see it hear changes again after the outage.
    let other =
        ServerProcess::start_with_env(&dir.path().join("other"), &[("TALLY_DATABASE_URL", &url)]);
    let org = Organizer::new(&dir.path().join("org"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    let phone = Phone::new(&dir.path().join("amina"));
    phone.enroll(&org.invite(&campaign), "amina");
    phone.sign("Before Outage", "M5V 2T6", "Toronto", &[]);
    phone.sync(30).ok();
    assert_eq!(org.totals(&campaign)["signatures"], 1);

    cluster.stop();
    phone.sign("During Outage", "M5V 2T6", "Toronto", &[]);
    let run = phone.sync(10);
    assert_ne!(
        run.code, 0,
        "a sync with the database down is not complete: {run}"
    );
    assert!(
        run.stdout.contains("nothing was acknowledged, retry"),
        "the phone hears what to do: {run}"
    );
    assert!(
        run.stdout
            .contains("the server cannot take anything right now")
            && !run.stdout.contains("something unexpected"),
        "the phone says the server is unavailable, not that it spoke nonsense: {run}"
    );
    assert_eq!(
        phone.pending().len(),
        1,
        "the phone keeps what was not acknowledged"
    );

    cluster.start();
    phone.sync(60).ok();
    assert!(phone.pending().is_empty(), "landed once PostgreSQL is back");
    assert_eq!(org.totals(&campaign)["signatures"], 2);

    // Both servers listen again by themselves: a device revoked through the first has its
    // stream on the second ended.
    let (device, token) = server.enroll(&campaign, "organizer");
    let mut stream = crate::servers::Stream::open(&other.base(), &campaign, &token);
    let (status, body) = tally_tests::server::http(
        &server.base(),
        "POST",
        &format!("/api/v1/devices/{device}/revoke"),
        Some(&server.admin()),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        stream.wait_closed(Duration::from_secs(5)).is_some(),
        "the second server did not hear the revocation after the outage; its log:\n{}",
        other.log_text()
    );
}
