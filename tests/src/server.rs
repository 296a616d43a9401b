//! Running a tally server for a test: in-process ([`TestServer`]) or as the real binary in a child
//! process ([`ServerProcess`]), plus the HTTP calls tests need (campaigns, events, invites,
//! enrollment, totals).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_core::fixtures::World;
use tally_server::api::types::{NewCampaign, NewEvent};
use tally_server::config::Config;

/// The API client of the server at `base` with `token` (`tally_rig::Api`, the one the benchmark
/// uses too), trusting the test certificate for `https://` once [`crate::tls::trust`] was called.
pub fn api(base: &str, token: Option<&str>) -> tally_rig::Api {
    tally_rig::Api::with_agent(base, token, crate::tls::agent_for(base))
}

/// An HTTP call: method, URL path, token, body; returns (status, JSON body).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    api(base, token)
        .call(method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{e}"))
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
    api(base, token)
        .ok(method, path, Some(body))
        .unwrap_or_else(|e| panic!("{e}"))
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

    /// The API client with the admin token.
    fn api(&self) -> tally_rig::Api {
        api(&self.base(), Some(&self.admin()))
    }

    /// Creates a campaign sealed to a fresh test world's organizers, with the world's event.
    fn campaign(&self) -> Campaign {
        let world = World::new();
        let api = self.api();
        let created = api
            .create_campaign(&NewCampaign {
                title: world.campaign.title.clone(),
                petition: world.campaign.petition.clone(),
                addressee: world.campaign.addressee.clone(),
                goal: 100,
                timezone: "America/Toronto".into(),
                recipients: world.campaign.recipients.clone(),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let id = created.campaign.clone();
        let ev = &world.campaign.events[tally_core::fixtures::EVENT];
        api.add_event(
            &id,
            &NewEvent {
                id: Some(ev.id.clone()),
                name: ev.name.clone(),
                city: ev.city.clone(),
                starts_at: ev.starts_at.into(),
                place: ev.place.clone(),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
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
        self.api()
            .invite(campaign, role)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Invites and enrolls a device; returns (device id, token).
    fn enroll(&self, campaign: &str, role: &str) -> (String, String) {
        let e = api(&self.base(), None)
            .enroll(&self.invite(campaign, role), "test phone")
            .unwrap_or_else(|e| panic!("{e}"));
        (e.device_id, e.token)
    }

    /// The totals from the API.
    fn totals(&self, campaign: &str) -> Value {
        let (s, v, _) = self
            .api()
            .totals(campaign)
            .unwrap_or_else(|e| panic!("{e}"));
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

/// The real `tally serve` in a child process (`tally_rig::ServerProcess`, the one the benchmark
/// runs too) with the tests' defaults: the workspace's binary, `RUST_LOG=info`, the log beside
/// the data folder; a failure to start panics with the log.
pub struct ServerProcess {
    /// Its data folder (kept across restarts).
    pub data: PathBuf,
    /// The port it listens on.
    pub port: u16,
    process: tally_rig::ServerProcess,
}

impl ServerProcess {
    /// Starts `tally serve` on a free port with `data` as its data folder.
    pub fn start(data: &Path) -> ServerProcess {
        Self::start_with_env(data, &[])
    }

    /// Starts `tally serve` with extra `TALLY_*` environment settings.
    pub fn start_with_env(data: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let env = owned(env);
        let tls = env.iter().any(|(k, _)| k == "TALLY_TLS_CERT");
        let spawn = tally_rig::Spawn {
            bin: binary("tally"),
            data: data.to_path_buf(),
            // Beside the data folder, not in it: fault tests make the folder read-only.
            log: PathBuf::from(format!("{}.serve.log", data.display())),
            rust_log: "info".into(),
            env,
        };
        let agent = crate::tls::agent_for(if tls { "https://" } else { "http://" });
        let process = tally_rig::ServerProcess::new(spawn, agent).expect("a free port");
        let mut p = ServerProcess {
            data: data.to_path_buf(),
            port: process.port(),
            process,
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
        self.process.start(wait).map_err(|e| format!("{e:#}"))
    }

    /// Replaces the extra environment used from the next start on.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.process.set_env(owned(env));
    }

    /// Whether the process is running (started and not killed).
    pub fn running(&self) -> bool {
        self.process.running()
    }

    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.process.healthy()
    }

    /// The server's log file (beside the data folder).
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid().expect("running")
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops it with SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.process.stop(None)
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.process.status_kb("VmRSS").unwrap_or(0)
    }
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Server for ServerProcess {
    fn base(&self) -> String {
        self.process.base()
    }
    fn admin(&self) -> String {
        self.process.admin().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
