//! The server under test: the real `tally serve` binary in a child process on a temporary data
//! folder (or a server given by URL and admin token); its HTTP API through `tally_rig::Api` (the
//! client the end-to-end tests use too), and the benchmark's campaign.

use std::path::{Path, PathBuf};
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
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let mut process = ServerProcess::new(spawn, ureq::agent())?;
        process.start(Duration::from_secs(60))?;
        let admin = process
            .admin()
            .context("reading the admin token the server wrote")?;
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
