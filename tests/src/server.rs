//! Running a tally server for a test: in-process ([`TestServer`]) or as the real binary in a child
//! process ([`ServerProcess`]), plus the HTTP calls tests need (campaigns, events, invites,
//! enrollment, totals).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_core::fixtures::World;
use tally_server::api::types::{
    CreatedCampaign, EnrollRequest, Enrolled, Invite, InviteRequest, NewCampaign, NewEvent,
};
use tally_server::config::Config;

/// An HTTP call: method, URL path, token, body; returns (status, JSON body).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let mut req = crate::tls::agent_for(&url)
        .request(method, &url)
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("HTTP {method} {path} failed: {e}"),
    }
}

/// A call that must succeed: sends `body` (one of `tally_server::api::types`) and reads the
/// answer as `R`; panics with the status and the server's message otherwise.
pub fn call<R: DeserializeOwned>(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &impl Serialize,
) -> R {
    let body = serde_json::to_value(body).expect("request body as JSON");
    let (status, v) = http(base, method, path, token, Some(body));
    assert_eq!(status, 200, "{method} {path}: {v}");
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{method} {path}: unexpected answer {v}: {e}"))
}

/// A campaign created through the API, with its organizers' keys.
pub struct Campaign {
    /// The campaign id (= campaign doc id).
    pub id: String,
    /// The totals document's URL.
    pub totals_url: String,
    /// Test keys: organizer identities and the duplicate key.
    pub world: World,
}

/// What every way of running a server offers.
pub trait Server {
    /// `http://127.0.0.1:PORT`.
    fn base(&self) -> String;
    /// The admin token.
    fn admin(&self) -> String;

    /// `ws://127.0.0.1:PORT/sync` (`wss://` with TLS).
    fn ws(&self) -> String {
        let base = self.base();
        match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}/sync"),
            None => format!("{}/sync", base.replace("http://", "ws://")),
        }
    }

    /// Creates a campaign sealed to a fresh test world's organizers, with the world's event.
    fn campaign(&self) -> Campaign {
        let world = World::new();
        let created: CreatedCampaign = call(
            &self.base(),
            "POST",
            "/api/v1/campaigns",
            Some(&self.admin()),
            &NewCampaign {
                title: world.campaign.title.clone(),
                petition: world.campaign.petition.clone(),
                addressee: world.campaign.addressee.clone(),
                goal: 100,
                timezone: "America/Toronto".into(),
                recipients: world.campaign.recipients.clone(),
            },
        );
        let id = created.campaign.clone();
        let ev = &world.campaign.events[tally_core::fixtures::EVENT];
        let _: tally_server::api::types::Event = call(
            &self.base(),
            "POST",
            &format!("/api/v1/campaigns/{id}/events"),
            Some(&self.admin()),
            &NewEvent {
                id: Some(ev.id.clone()),
                name: ev.name.clone(),
                city: ev.city.clone(),
                starts_at: ev.starts_at.into(),
                place: ev.place.clone(),
            },
        );
        // The world's campaign now describes the server's campaign (same keys, the server's id).
        let mut world = world;
        world.campaign.id = id.clone();
        Campaign {
            id,
            totals_url: created.totals_url,
            world,
        }
    }

    /// A one-time invite code for a device of `campaign` with `role`.
    fn invite(&self, campaign: &str, role: &str) -> String {
        let inv: Invite = call(
            &self.base(),
            "POST",
            "/api/v1/invites",
            Some(&self.admin()),
            &InviteRequest {
                campaign: campaign.to_string(),
                role: role.to_string(),
            },
        );
        inv.code
    }

    /// Invites and enrolls a device; returns (device id, token).
    fn enroll(&self, campaign: &str, role: &str) -> (String, String) {
        let e: Enrolled = call(
            &self.base(),
            "POST",
            "/api/v1/enroll",
            None,
            &EnrollRequest {
                code: self.invite(campaign, role),
                name: "test phone".into(),
                replaces: None,
            },
        );
        (e.device_id, e.token)
    }

    /// The totals from the API.
    fn totals(&self, campaign: &str) -> Value {
        let (s, v) = http(
            &self.base(),
            "GET",
            &format!("/api/v1/campaigns/{campaign}/totals"),
            Some(&self.admin()),
            None,
        );
        assert_eq!(s, 200, "totals: {v}");
        v
    }
}

/// A server running inside the test process.
pub struct TestServer {
    /// Its data folder.
    pub dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with a fresh data folder; `tweak` adjusts the config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config {
            data: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut cfg);
        let listener = tally_server::listen("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        cfg.listen = addr;
        let (store, _) = tally_server::open_data(&cfg.data).expect("open data");
        let admin = std::fs::read_to_string(cfg.data.join(tally_server::ADMIN_TOKEN_FILE))
            .expect("admin token")
            .trim()
            .to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(tally_server::serve(cfg, store, listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            dir,
            addr,
            admin,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts a server with the default config.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join(tally_server::DB_FILE)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server ran cleanly");
        }
    }
}

impl Server for TestServer {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn admin(&self) -> String {
        self.admin.clone()
    }
}

/// Path of a workspace binary, building it if needed (`cargo test --workspace` has built it), or
/// taken from `TALLY_TEST_BIN_DIR` when set.
pub fn binary(name: &str) -> PathBuf {
    // Prebuilt programs (e.g. release builds for the long fault mode): used as they are.
    if let Some(dir) = std::env::var_os("TALLY_TEST_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(
            path.exists(),
            "TALLY_TEST_BIN_DIR has no {name}: build it there first"
        );
        return path;
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--bins",
            "-p",
            "tally-server",
            "-p",
            "tally-client",
        ]);
        // Without the variables cargo sets for a test process: some build scripts (ring's)
        // rerun when they differ from the outer build's environment, and everything above
        // them (rustls, the WebSocket client, both binaries) would be rebuilt, minutes on CI.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || matches!(
                    key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                build.env_remove(key);
            }
        }
        let status = build
            .stdout(Stdio::null())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The real `tally serve` in a child process.
pub struct ServerProcess {
    /// Its data folder (kept across restarts).
    pub data: PathBuf,
    /// The port it listens on.
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// Whether it serves TLS (`TALLY_TLS_CERT` given).
    tls: bool,
}

impl ServerProcess {
    /// Starts `tally serve` on a free port with `data` as its data folder.
    pub fn start(data: &Path) -> ServerProcess {
        Self::start_with_env(data, &[])
    }

    /// Starts `tally serve` with extra `TALLY_*` environment settings.
    pub fn start_with_env(data: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let tls = env.iter().any(|(k, _)| k == "TALLY_TLS_CERT");
        let mut p = ServerProcess {
            data: data.to_path_buf(),
            port,
            child: None,
            // Beside the data folder, not in it: fault tests make the folder read-only.
            log: PathBuf::from(format!("{}.serve.log", data.display())),
            env,
            tls,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn(Duration::from_secs(30)) {
            panic!("{e}");
        }
    }

    /// Starts the process and waits up to `wait` for `/healthz`; on failure (it exited, or did
    /// not answer in time) the process is gone and the error holds its log.
    pub fn try_spawn(&mut self, wait: Duration) -> Result<(), String> {
        std::fs::create_dir_all(&self.data).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary("tally"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data",
            ])
            .arg(&self.data)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tally serve");
        self.child = Some(child);
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
                return Err(format!(
                    "tally serve exited ({status}); log:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!(
            "tally serve did not come up; log:\n{}",
            self.log_text()
        ))
    }

    /// Replaces the extra environment used from the next start on.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Whether the process is running (started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.base());
        crate::tls::agent_for(&url)
            .get(&url)
            .timeout(Duration::from_millis(500))
            .call()
            .is_ok()
    }

    /// The server's log file (beside the data folder).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it with SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Server for ServerProcess {
    fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
    fn admin(&self) -> String {
        std::fs::read_to_string(self.data.join(tally_server::ADMIN_TOKEN_FILE))
            .expect("admin token")
            .trim()
            .to_string()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
