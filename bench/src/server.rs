//! The server under test: the real `tally serve` binary in a child process on a temporary data
//! folder (or a server given by URL and admin token), and the HTTP API calls the benchmark makes
//! (campaign, event, invite, enroll, totals), as the organizers' command line makes them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_server::api::types::{
    self, EnrollRequest, Enrolled, Invite, InviteRequest, NewCampaign, NewEvent,
};

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

/// A running server: ours (a child process) or someone else's (URL and token only).
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token.
    pub admin: String,
    /// The data folder, when known.
    pub data: Option<PathBuf>,
    /// The process id, when known.
    pub pid: Option<u32>,
    child: Option<Child>,
    bin: Option<PathBuf>,
    port: u16,
    log: Option<PathBuf>,
}

impl Server {
    /// Starts `tally serve` on a free loopback port with `data` as its data folder and waits
    /// until `/healthz` answers.
    pub fn start(bin: &Path, data: &Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut s = Server {
            base: format!("http://127.0.0.1:{port}"),
            admin: String::new(),
            data: Some(data.to_path_buf()),
            pid: None,
            child: None,
            bin: Some(bin.to_path_buf()),
            port,
            log: Some(data.join("serve.log")),
        };
        s.spawn()?;
        s.wait_healthy(Duration::from_secs(60))?;
        s.admin = std::fs::read_to_string(data.join(tally_server::ADMIN_TOKEN_FILE))
            .context("reading the admin token the server wrote")?
            .trim()
            .to_string();
        Ok(s)
    }

    /// A server someone else runs. `pid` and `data` are optional (memory and database size are
    /// only measured when they are given).
    pub fn external(base: &str, admin: &str, pid: Option<u32>, data: Option<PathBuf>) -> Server {
        Server {
            base: base.trim_end_matches('/').to_string(),
            admin: admin.to_string(),
            data,
            pid,
            child: None,
            bin: None,
            port: 0,
            log: None,
        }
    }

    /// Whether this benchmark started (and may restart) the server.
    pub fn is_ours(&self) -> bool {
        self.bin.is_some()
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

    /// Starts the process (the server must not be running). Returns when it is spawned.
    pub fn spawn(&mut self) -> Result<()> {
        let (Some(bin), Some(data), Some(log)) = (&self.bin, &self.data, &self.log) else {
            bail!("cannot start a server this benchmark does not own");
        };
        std::fs::create_dir_all(data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data")
            .arg(data)
            .env(
                "RUST_LOG",
                std::env::var("TALLY_BENCH_SERVER_LOG").unwrap_or("warn".into()),
            )
            // Every simulated phone comes from 127.0.0.1, where real ones come from many
            // addresses: the per-address limits on enrollment and on connections still in their
            // upgrade would otherwise refuse most of the reconnect wave.
            .env("TALLY_MAX_ENROLLMENTS_PER_ADDRESS", "1000000")
            .env("TALLY_MAX_CONNECTIONS_PER_ADDRESS", "100000")
            .env("TALLY_MAX_PENDING_CONNECTIONS", "4096")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.pid = Some(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/healthz` answers.
    pub fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(500))
            .build();
        while Instant::now() < deadline {
            if agent.get(&format!("{}/healthz", self.base)).call().is_ok() {
                return Ok(());
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("tally serve exited ({status}); log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "tally serve did not answer within {limit:?}; log:\n{}",
            self.log_tail()
        )
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and waits for it, up to `limit`;
    /// kills it after that. Returns whether it exited cleanly.
    pub fn stop(&mut self, limit: Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.pid = None;
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.pid = None;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        Api::new(&self.base, &self.admin)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The HTTP API, with one token and a keep-alive connection.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// A campaign created for the benchmark.
#[derive(Clone, Debug)]
pub struct CreatedCampaign {
    /// The campaign id (= the campaign document's id).
    pub id: String,
    /// The event signatures are collected at.
    pub event: String,
}

impl Api {
    /// A client of `base` with `token`.
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.to_string(),
            token: token.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
        }
    }

    /// One call; returns (status, JSON body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(u16, Value)> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok((r.status(), r.into_json().unwrap_or(Value::Null))),
            Err(ureq::Error::Status(code, r)) => Ok((code, r.into_json().unwrap_or(Value::Null))),
            Err(e) => Err(anyhow!("HTTP {method} {path}: {e}")),
        }
    }

    /// A call that must answer 200 with an `R`.
    fn ok<R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<R> {
        let (status, v) = self.call(method, path, Some(body))?;
        if status != 200 {
            bail!("HTTP {method} {path} answered {status}: {v}");
        }
        serde_json::from_value(v).with_context(|| format!("the answer of {method} {path}"))
    }

    /// Creates a campaign sealed to `recipients`, with one event starting now.
    pub fn create_campaign(&self, recipients: &[String], now_ms: i64) -> Result<CreatedCampaign> {
        let created: types::CreatedCampaign = self.ok(
            "POST",
            "/api/v1/campaigns",
            &NewCampaign {
                title: "Status for All (benchmark)".into(),
                petition:
                    "We call on the Government of Canada to regularize all undocumented people."
                        .into(),
                addressee: "the House of Commons".into(),
                goal: 1_000_000,
                timezone: "America/Toronto".into(),
                recipients: recipients.to_vec(),
            },
        )?;
        let id = created.campaign;
        let ev: types::Event = self.ok(
            "POST",
            &format!("/api/v1/campaigns/{id}/events"),
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

    /// Creates a one-time canvasser invite; returns its code.
    pub fn invite(&self, campaign: &str) -> Result<String> {
        let inv: Invite = self.ok(
            "POST",
            "/api/v1/invites",
            &InviteRequest {
                campaign: campaign.to_string(),
                role: "canvasser".into(),
            },
        )?;
        Ok(inv.code)
    }

    /// Redeems an invite code; returns the server's answer (device id, token, document URLs).
    pub fn enroll(&self, code: &str, name: &str) -> Result<Enrolled> {
        self.ok(
            "POST",
            "/api/v1/enroll",
            &EnrollRequest {
                code: code.to_string(),
                name: name.to_string(),
                replaces: None,
            },
        )
    }

    /// The campaign's totals; returns (status, body, latency).
    pub fn totals(&self, campaign: &str) -> Result<(u16, Value, Duration)> {
        let t = Instant::now();
        let (s, v) = self.call(
            "GET",
            &format!("/api/v1/campaigns/{campaign}/totals"),
            None::<&()>,
        )?;
        Ok((s, v, t.elapsed()))
    }
}
