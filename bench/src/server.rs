//! The server under test: the real `tally serve` binary in a child process on a temporary data
//! folder (or a server given by URL and admin token); its HTTP API through `tally_rig::Api` (the
//! client the end-to-end tests use too), and the benchmark's campaign. A [`Cluster`] is the
//! servers of one [`Backend`]: one on SQLite, or N on one PostgreSQL database the benchmark
//! creates for the run and drops after.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
pub use tally_rig::Api;
use tally_rig::{ServerProcess, Spawn};
use tally_server::api::types::{NewCampaign, NewEvent};

/// Where the `tally` binary is: `explicit`, else `$TALLY_BIN`, else next to this executable
/// (`target/release/tally` beside `target/release/tally-bench`), else one folder up (when this
/// is a test binary in `target/*/deps`).
pub fn tally_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TALLY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("where is this executable?")?;
    let dir = exe.parent().context("executable without a folder")?;
    for candidate in [dir.join("tally"), dir.join("../tally")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no `tally` binary next to {}: build it with `cargo build --release -p tally-server` \
         (same profile as the benchmark), or pass --tally-bin",
        exe.display()
    )
}

/// A running server: ours (a child process, `tally_rig::ServerProcess`, the one the end-to-end
/// tests run too) or someone else's (URL and token only).
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token.
    pub admin: String,
    /// The data folder, when known.
    pub data: Option<PathBuf>,
    /// The process id, when known.
    pub pid: Option<u32>,
    process: Option<ServerProcess>,
}

impl Server {
    /// Starts `tally serve` on a free loopback port with `data` as its data folder and waits
    /// until `/healthz` answers.
    pub fn start(bin: &Path, data: &Path) -> Result<Server> {
        Server::start_with(bin, data, &[], None)
    }

    /// The same with extra environment settings (`TALLY_DATABASE_URL`); `admin` is the admin
    /// token when another server made the admin (several servers on one database: the first
    /// one to start writes the token into its own data folder only), else it is read from
    /// this server's data folder.
    pub fn start_with(
        bin: &Path,
        data: &Path,
        extra_env: &[(&str, &str)],
        admin: Option<&str>,
    ) -> Result<Server> {
        let spawn = Spawn {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            log: data.join("serve.log"),
            rust_log: std::env::var("TALLY_BENCH_SERVER_LOG").unwrap_or("warn".into()),
            // Every simulated phone comes from 127.0.0.1, where real ones come from many
            // addresses: the per-address limits on enrollment and on connections still in their
            // upgrade would otherwise refuse most of the reconnect wave.
            env: [
                ("TALLY_MAX_ENROLLMENTS_PER_ADDRESS", "1000000"),
                ("TALLY_MAX_CONNECTIONS_PER_ADDRESS", "100000"),
                ("TALLY_MAX_PENDING_CONNECTIONS", "4096"),
            ]
            .iter()
            .chain(extra_env)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let mut process = ServerProcess::new(spawn, ureq::agent())?;
        process.start(Duration::from_secs(60))?;
        let admin = match admin {
            Some(a) => a.to_string(),
            None => process
                .admin()
                .context("reading the admin token the server wrote")?,
        };
        Ok(Server {
            base: process.base(),
            admin,
            data: Some(data.to_path_buf()),
            pid: process.pid(),
            process: Some(process),
        })
    }

    /// A server someone else runs. `pid` and `data` are optional (memory and database size are
    /// only measured when they are given).
    pub fn external(base: &str, admin: &str, pid: Option<u32>, data: Option<PathBuf>) -> Server {
        Server {
            base: base.trim_end_matches('/').to_string(),
            admin: admin.to_string(),
            data,
            pid,
            process: None,
        }
    }

    /// Whether this benchmark started (and may restart) the server.
    pub fn is_ours(&self) -> bool {
        self.process.is_some()
    }

    /// `ws://HOST:PORT/sync`.
    pub fn ws_url(&self) -> String {
        format!(
            "{}/sync",
            self.base
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        )
    }

    fn ours(&mut self) -> Result<&mut ServerProcess> {
        self.process
            .as_mut()
            .context("cannot start a server this benchmark does not own")
    }

    /// Starts the process (the server must not be running). Returns when it is spawned.
    pub fn spawn(&mut self) -> Result<()> {
        let process = self.ours()?;
        process.spawn()?;
        self.pid = process.pid();
        Ok(())
    }

    /// Waits until `/healthz` answers.
    pub fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        self.ours()?.wait_healthy(limit)
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        let text = self
            .process
            .as_ref()
            .map(ServerProcess::log_text)
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and waits for it, up to `limit`;
    /// kills it after that. Returns whether it exited cleanly.
    pub fn stop(&mut self, limit: Duration) -> Result<bool> {
        let Some(process) = self.process.as_mut() else {
            return Ok(false);
        };
        let clean = process.stop(Some(limit));
        self.pid = None;
        Ok(clean)
    }

    /// Resident memory now (VmRSS), MB.
    pub fn rss_mb(&self) -> Option<f64> {
        crate::stats::status_kb(Some(self.pid?), "VmRSS").map(|kb| kb as f64 / 1024.0)
    }

    /// Peak resident memory since the process started (VmHWM), MB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        crate::stats::status_kb(Some(self.pid?), "VmHWM").map(|kb| kb as f64 / 1024.0)
    }

    /// Size of the database with its WAL, MB.
    pub fn db_mb(&self) -> Option<f64> {
        let data = self.data.as_ref()?;
        let mut total = 0u64;
        let mut found = false;
        for suffix in ["", "-wal", "-shm"] {
            let p = data.join(format!("{}{suffix}", tally_server::DB_FILE));
            if let Ok(m) = std::fs::metadata(p) {
                total += m.len();
                found = true;
            }
        }
        found.then_some(total as f64 / 1_048_576.0)
    }

    /// An API client with the admin token.
    pub fn api(&self) -> Api {
        Api::new(&self.base, Some(&self.admin))
    }
}

/// A campaign created for the benchmark.
#[derive(Clone, Debug)]
pub struct CreatedCampaign {
    /// The campaign id (= the campaign document's id).
    pub id: String,
    /// The event signatures are collected at.
    pub event: String,
}

/// Creates the benchmark's campaign sealed to `recipients`, with one event starting now.
pub fn create_campaign(api: &Api, recipients: &[String], now_ms: i64) -> Result<CreatedCampaign> {
    let created = api.create_campaign(&NewCampaign {
        title: "Status for All (benchmark)".into(),
        petition: "We call on the Government of Canada to regularize all undocumented people."
            .into(),
        addressee: "the House of Commons".into(),
        goal: 1_000_000,
        timezone: "America/Toronto".into(),
        recipients: recipients.to_vec(),
    })?;
    let id = created.campaign;
    let ev = api.add_event(
        &id,
        &NewEvent {
            id: Some("march-end".into()),
            name: "End of the march".into(),
            city: "Toronto".into(),
            starts_at: now_ms.into(),
            place: "Queen's Park".into(),
        },
    )?;
    Ok(CreatedCampaign { id, event: ev.id })
}

/// Where the servers of a run keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One server on its embedded SQLite file (the default).
    Sqlite,
    /// `servers` servers on one PostgreSQL database (`--database-url`).
    Postgres {
        /// How many `tally serve` processes share the database.
        servers: usize,
    },
}

impl Backend {
    /// Its name on the command line and in the report: `sqlite`, `pg`, `pg3`.
    pub fn name(&self) -> String {
        match self {
            Backend::Sqlite => "sqlite".into(),
            Backend::Postgres { servers: 1 } => "pg".into(),
            Backend::Postgres { servers } => format!("pg{servers}"),
        }
    }

    /// The key of one of its figures: as is for SQLite (the keys of earlier runs), the part
    /// before the first dot suffixed with the name otherwise: `ingest.seconds` on pg3 is
    /// `ingest_pg3.seconds`.
    pub fn key(&self, key: &str) -> String {
        match (self, key.split_once('.')) {
            (Backend::Sqlite, _) => key.to_string(),
            (_, Some((phase, rest))) => format!("{phase}_{}.{rest}", self.name()),
            (_, None) => format!("{key}_{}", self.name()),
        }
    }

    /// What its figures' labels start with: nothing for SQLite, `[pg3] ` otherwise.
    pub fn label_prefix(&self) -> String {
        match self {
            Backend::Sqlite => String::new(),
            _ => format!("[{}] ", self.name()),
        }
    }

    /// How many servers it runs.
    pub fn servers(&self) -> usize {
        match self {
            Backend::Sqlite => 1,
            Backend::Postgres { servers } => *servers,
        }
    }

    /// For people: `one server on SQLite`, `3 servers on one PostgreSQL`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite => "one server on SQLite".into(),
            Backend::Postgres { servers: 1 } => "one server on PostgreSQL".into(),
            Backend::Postgres { servers } => format!("{servers} servers on one PostgreSQL"),
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Backend, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "sqlite" {
            return Ok(Backend::Sqlite);
        }
        let rest = s
            .strip_prefix("postgres")
            .or_else(|| s.strip_prefix("pg"))
            .ok_or_else(|| {
                format!(
                    "unknown backend {s:?}: say sqlite, pg (one server on PostgreSQL) or pgN \
                     (N servers on one PostgreSQL database, e.g. pg3)"
                )
            })?;
        if rest.is_empty() {
            return Ok(Backend::Postgres { servers: 1 });
        }
        match rest.parse::<usize>() {
            Ok(n) if (1..=16).contains(&n) => Ok(Backend::Postgres { servers: n }),
            _ => Err(format!(
                "backend {s:?}: the number of servers after pg must be 1 to 16 (e.g. pg3)"
            )),
        }
    }
}

impl serde::Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// `url` with its password, if any, replaced by `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// `url` with its database name replaced by `name` (the query string, if any, kept).
pub fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        bail!(
            "--database-url {}: not a postgres://USER@HOST:PORT/DATABASE URL",
            redact_url(url)
        );
    };
    let host = rest.split_once('/').map_or(rest, |(h, _)| h);
    let mut out = format!("{scheme}://{host}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A database of the run's own on a PostgreSQL server: created empty, dropped when this is
/// dropped (with the connections still on it closed by PostgreSQL).
pub struct PgDatabase {
    /// The URL the benchmark was given (where the database was created from).
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// Its URL, for `tally serve --database-url`.
    pub url: String,
}

impl PgDatabase {
    /// Creates `tally_bench_<pid>_<n>` on the server of `admin_url`.
    pub fn create(admin_url: &str) -> Result<PgDatabase> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "tally_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut client =
            postgres::Client::connect(admin_url, postgres::NoTls).with_context(|| {
                format!(
                    "connecting to PostgreSQL at {} (--database-url): is it running, and may this \
                 user create databases?",
                    redact_url(admin_url)
                )
            })?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| {
                format!(
                    "creating the database {name} at {}: the user of --database-url must be \
                     allowed to create databases (CREATEDB)",
                    redact_url(admin_url)
                )
            })?;
        Ok(PgDatabase {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name)?,
            name,
        })
    }

    /// Its size on disk (`pg_database_size`), MB.
    pub fn size_mb(&self) -> Option<f64> {
        let mut client = postgres::Client::connect(&self.admin_url, postgres::NoTls).ok()?;
        let row = client
            .query_one("SELECT pg_database_size($1)", &[&self.name])
            .ok()?;
        Some(row.get::<_, i64>(0) as f64 / 1_048_576.0)
    }

    /// The process ids of PostgreSQL's backends connected to the database now (one per
    /// connection of the servers' pools and listeners), to read their CPU time.
    pub fn backend_pids(&self) -> Vec<u32> {
        let Ok(mut client) = postgres::Client::connect(&self.admin_url, postgres::NoTls) else {
            return Vec::new();
        };
        client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| u32::try_from(r.get::<_, i32>(0)).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops the database now; says why it could not.
    pub fn drop_now(&mut self) -> Result<()> {
        if self.name.is_empty() {
            return Ok(());
        }
        let mut client = postgres::Client::connect(&self.admin_url, postgres::NoTls)?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .with_context(|| format!("dropping the benchmark's database {}", self.name))?;
        self.name.clear();
        Ok(())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        if let Err(e) = self.drop_now() {
            eprintln!("tally-bench: could not drop the database {name}: {e:#}; drop it by hand");
        }
    }
}

/// The servers of one backend, started for one phase.
pub struct Cluster {
    /// Which backend.
    pub backend: Backend,
    /// The servers; phones and organizers are spread over them round-robin.
    pub servers: Vec<Server>,
    /// The database they share (PostgreSQL), dropped after them.
    pub database: Option<PgDatabase>,
}

impl Cluster {
    /// Starts the servers of `backend` under `dir` (a data folder each: `dir/server0`, ...): on
    /// PostgreSQL a fresh database is created on `database_url` first, the first server makes
    /// the admin, and the others start once it answers and use its token.
    pub fn start(
        backend: Backend,
        bin: &Path,
        dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Cluster> {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres { .. } => {
                Some(PgDatabase::create(database_url.with_context(|| {
                    format!(
                        "backend {} needs --database-url (a PostgreSQL server the benchmark may \
                         create databases on); scripts/with-postgres gives one in \
                         TALLY_TEST_DATABASE_URL",
                        backend.name()
                    )
                })?)?)
            }
        };
        let mut cluster = Cluster {
            backend,
            servers: Vec::new(),
            database,
        };
        let url = cluster.database.as_ref().map(|d| d.url.clone());
        let env: Vec<(&str, &str)> = url
            .as_deref()
            .map(|u| vec![("TALLY_DATABASE_URL", u)])
            .unwrap_or_default();
        for i in 0..backend.servers() {
            let data = if backend == Backend::Sqlite {
                dir.to_path_buf()
            } else {
                dir.join(format!("server{i}"))
            };
            let admin = cluster.servers.first().map(|s| s.admin.clone());
            let server = Server::start_with(bin, &data, &env, admin.as_deref())
                .with_context(|| format!("starting server {i} of {}", backend.describe()))?;
            cluster.servers.push(server);
        }
        Ok(cluster)
    }

    /// One server someone else runs (`--server`).
    pub fn external(server: Server) -> Cluster {
        Cluster {
            backend: Backend::Sqlite,
            servers: vec![server],
            database: None,
        }
    }

    /// The first server.
    pub fn first(&self) -> &Server {
        &self.servers[0]
    }

    /// The server the `i`-th phone or organizer talks to.
    pub fn of(&self, i: usize) -> &Server {
        &self.servers[i % self.servers.len()]
    }

    /// The size of the database: the shared PostgreSQL database's, else the SQLite file's.
    pub fn db_mb(&self) -> Option<f64> {
        match &self.database {
            Some(d) => d.size_mb(),
            None => self.first().db_mb(),
        }
    }

    /// Whether the benchmark started these servers.
    pub fn is_ours(&self) -> bool {
        self.servers.iter().all(Server::is_ours)
    }

    /// Stops every server (SIGTERM, up to `limit` each), then drops the database. Returns
    /// whether every server exited cleanly.
    pub fn stop(&mut self, limit: Duration) -> Result<bool> {
        let mut clean = true;
        for s in &mut self.servers {
            clean &= s.stop(limit)?;
        }
        if let Some(d) = self.database.as_mut() {
            d.drop_now()?;
        }
        Ok(clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_name_themselves() {
        for (text, want, name, key) in [
            ("sqlite", Backend::Sqlite, "sqlite", "ingest.seconds"),
            (
                "pg",
                Backend::Postgres { servers: 1 },
                "pg",
                "ingest_pg.seconds",
            ),
            (
                "postgres",
                Backend::Postgres { servers: 1 },
                "pg",
                "ingest_pg.seconds",
            ),
            (
                "pg3",
                Backend::Postgres { servers: 3 },
                "pg3",
                "ingest_pg3.seconds",
            ),
            (
                " PG3 ",
                Backend::Postgres { servers: 3 },
                "pg3",
                "ingest_pg3.seconds",
            ),
        ] {
            let b: Backend = text.parse().unwrap();
            assert_eq!(b, want, "{text}");
            assert_eq!(b.name(), name);
            assert_eq!(b.key("ingest.seconds"), key);
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        }
        assert_eq!(Backend::Postgres { servers: 3 }.servers(), 3);
        let pg3 = Backend::Postgres { servers: 3 };
        assert_eq!(pg3.key("query.ingest_p99_ms"), "query_pg3.ingest_p99_ms");
        assert_eq!(pg3.key("odd"), "odd_pg3");
        assert_eq!(pg3.label_prefix(), "[pg3] ");
        assert_eq!(Backend::Sqlite.label_prefix(), "");
        for bad in ["mysql", "pg0", "pgx", "pg99", ""] {
            let e = bad.parse::<Backend>().unwrap_err();
            assert!(e.contains("pg"), "{bad}: {e}");
        }
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://tally@127.0.0.1:5432/tally", "b1").unwrap(),
            "postgres://tally@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgres://u:pw@h/db?sslmode=disable", "b1").unwrap(),
            "postgres://u:pw@h/b1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "b1").unwrap(),
            "postgres://h:5432/b1"
        );
        assert!(with_database("not a url", "b1").is_err());
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:<redacted>@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
