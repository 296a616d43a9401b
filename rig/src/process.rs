//! The real `tally serve` in a child process: on a free loopback port, a data folder, extra
//! environment settings, its log in a file. Started, waited for (`/healthz`), killed (SIGKILL),
//! stopped gracefully (SIGTERM), started again on the same port and data; its resident memory.
//! The tests' `ServerProcess` and the benchmark's `Server` are this, with their own defaults.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How a server process is started.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// The `tally` binary.
    pub bin: PathBuf,
    /// The data folder (created if missing, kept across restarts).
    pub data: PathBuf,
    /// Where its standard error (the log) is appended.
    pub log: PathBuf,
    /// `RUST_LOG` for it.
    pub rust_log: String,
    /// Extra environment settings (`TALLY_*`).
    pub env: Vec<(String, String)>,
}

/// A `tally serve` child process; killed when dropped.
pub struct ServerProcess {
    spawn: Spawn,
    port: u16,
    tls: bool,
    child: Option<Child>,
    /// The agent `/healthz` is asked with (one that trusts a test certificate, for TLS).
    agent: ureq::Agent,
}

impl ServerProcess {
    /// A server that is not started yet, on a free loopback port; `agent` asks its `/healthz`.
    pub fn new(spawn: Spawn, agent: ureq::Agent) -> Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let tls = spawn.env.iter().any(|(k, _)| k == "TALLY_TLS_CERT");
        Ok(ServerProcess {
            spawn,
            port,
            tls,
            child: None,
            agent,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS).
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Its data folder.
    pub fn data(&self) -> &Path {
        &self.spawn.data
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.spawn.log
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.spawn.log).unwrap_or_default()
    }

    /// Replaces the extra environment used from the next start on.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.tls = env.iter().any(|(k, _)| k == "TALLY_TLS_CERT");
        self.spawn.env = env;
    }

    /// The admin token the server wrote into its data folder.
    pub fn admin(&self) -> Result<String> {
        let path = self.spawn.data.join(tally_server::ADMIN_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t.trim().to_string()),
            Err(e) => bail!("reading the admin token {}: {e}", path.display()),
        }
    }

    /// Starts the process and waits up to `wait` for `/healthz`; on failure (it exited, or did
    /// not answer in time) the process is gone and the error holds its log.
    pub fn start(&mut self, wait: Duration) -> Result<()> {
        self.spawn()?;
        self.wait_healthy(wait)
    }

    /// Starts the process (it must not be running) and returns at once.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("tally serve is already running");
        }
        let s = &self.spawn;
        std::fs::create_dir_all(&s.data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        let child = Command::new(&s.bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data")
            .arg(&s.data)
            .env("RUST_LOG", &s.rust_log)
            .envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => bail!("starting {}: {e}", s.bin.display()),
        };
        self.child = Some(child);
        Ok(())
    }

    /// Waits up to `wait` for `/healthz`; on failure (the process exited, or did not answer in
    /// time) the process is gone and the error holds its log.
    pub fn wait_healthy(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                bail!("tally serve exited ({status}); log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        bail!(
            "tally serve did not answer /healthz within {wait:?}; log:\n{}",
            self.log_text()
        )
    }

    /// Whether the process is running (started, not killed or stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether `/healthz` answers 200 within half a second.
    pub fn healthy(&self) -> bool {
        self.agent
            .get(&format!("{}/healthz", self.base()))
            .timeout(Duration::from_millis(500))
            .call()
            .is_ok()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it with SIGTERM (a graceful shutdown) and waits up to `limit` (for ever with
    /// `None`), then kills it. Returns whether it exited cleanly in time.
    pub fn stop(&mut self, limit: Option<Duration>) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) => {}
                Err(_) => return false,
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A field of the process's `/proc/PID/status` in kB (`VmRSS`: resident memory now,
    /// `VmHWM`: its peak), while it runs.
    pub fn status_kb(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
