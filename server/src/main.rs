//! `tally`: the sync server (`tally serve`) and the organizers' commands, which call a running
//! server's HTTP API.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tally_server::api::types::{
    CampaignList, Device, Event, NewCampaign, NewEvent, Revoked, TotalsResponse,
};
use tally_server::client::{self, Api};
use tally_server::config::Config;

/// Writes to standard output. A reader that went away (`tally ... | head`) ends the program
/// quietly with status 0, as it has all it asked for; any other failure to write (a full disk
/// under a redirect) is an error, said once on standard error.
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(
            std::io::stderr(),
            "error: cannot write to standard output: {e}"
        );
        std::process::exit(1);
    }
}

/// `print!` through [`emit`]: no panic when standard output is closed.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

/// `println!` through [`emit`].
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Offline-first petition and check-in sync server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Remote {
    /// The server's URL (default: the `public_url`, else the `listen` address, of the server's
    /// configuration: --config, DATA/tally.toml, TALLY_* variables; as `tally serve` reads it).
    #[arg(long, env = "TALLY_SERVER", global = true)]
    server: Option<String>,
    /// The server's configuration file, to find the server when --server is not given
    /// (default DATA/tally.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// API token (default: the admin token in DATA/admin.token).
    #[arg(long, env = "TALLY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The server's data folder, to find the admin token.
    #[arg(long, env = "TALLY_DATA", default_value = "tally-data", global = true)]
    data: PathBuf,
    /// Folder of campaign duplicate keys (never sent to the server).
    #[arg(long, env = "TALLY_KEYS", default_value = "tally-keys", global = true)]
    keys: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sync server.
    Serve {
        /// Address to listen on (default 127.0.0.1:7300).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data folder (default ./tally-data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Configuration file (default DATA/tally.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve HTTPS and WSS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Print an example configuration file.
    Config,
    /// Rebuild the totals tables (rows and aggregates) from the stored documents. Works offline
    /// on the data folder: stop the server first (its writes would wait for the rebuild).
    Reindex {
        /// Data folder (default ./tally-data).
        #[arg(long, env = "TALLY_DATA", default_value = "tally-data")]
        data: PathBuf,
    },
    /// Make an organizer's age identity (the secret that opens signers' details) and print its
    /// recipient (the public half that campaigns seal to).
    Keygen {
        /// Where to write the identity (mode 0600); it must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Campaigns.
    Campaign {
        #[command(subcommand)]
        cmd: CampaignCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Events of a campaign.
    Event {
        #[command(subcommand)]
        cmd: EventCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// Invite a phone: prints a one-time code and the QR payload.
    Invite {
        #[arg(long)]
        campaign: String,
        /// canvasser or organizer.
        #[arg(long, default_value = "canvasser")]
        role: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Device tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
        #[command(flatten)]
        remote: Remote,
    },
    /// A campaign's totals.
    Totals {
        #[arg(long)]
        campaign: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Export signers to CSV, opening sealed fields locally with an organizer's age identity.
    Export {
        #[arg(long)]
        campaign: String,
        /// age identity file (AGE-SECRET-KEY-1...).
        #[arg(long)]
        identity: PathBuf,
        /// CSV file to write (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Include withdrawn and struck signatures.
        #[arg(long)]
        all: bool,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum CampaignCmd {
    /// Create a campaign (and its duplicate key, kept in --keys).
    Create {
        #[arg(long)]
        title: String,
        #[arg(long)]
        petition: String,
        #[arg(long)]
        addressee: String,
        #[arg(long, default_value_t = 0)]
        goal: i64,
        #[arg(long, default_value = "America/Toronto")]
        timezone: String,
        /// An organizer's age recipient (age1...); repeat for several.
        #[arg(long = "recipient", required = true)]
        recipients: Vec<String>,
    },
    /// List campaigns.
    List,
}

#[derive(Subcommand)]
enum EventCmd {
    /// Add an event.
    Add {
        #[arg(long)]
        campaign: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        city: String,
        /// RFC 3339 time, e.g. 2026-07-01T18:00:00-04:00.
        #[arg(long)]
        starts_at: String,
        #[arg(long, default_value = "")]
        place: String,
        /// Event id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Revoke a device: its token stops working and its connections close.
    Revoke { device: String },
    /// List devices.
    List,
}

fn api(r: &Remote) -> anyhow::Result<Api> {
    let (server, origin) = match &r.server {
        Some(url) => (url.clone(), "given by --server or TALLY_SERVER".to_string()),
        None => server_from_config(r)?,
    };
    Ok(Api {
        server,
        origin,
        token: client::load_token(r.token.clone(), &r.data)?,
    })
}

/// The server `tally serve` would be with the same configuration (`--config`, else
/// `DATA/tally.toml` if present, then the `TALLY_*` variables): its `public_url` if set, else its
/// `listen` address (a wildcard one asked on loopback). Returns the URL and where it came from.
fn server_from_config(r: &Remote) -> anyhow::Result<(String, String)> {
    let cfg = Config::load(r.config.as_deref(), Some(&r.data))?;
    let default_file = r.data.join("tally.toml");
    let file = r
        .config
        .clone()
        .or_else(|| default_file.exists().then_some(default_file));
    let from = |key: &str, var: &str| {
        if std::env::var_os(var).is_some() {
            format!("{var}, as `tally serve` reads it")
        } else {
            match &file {
                Some(f) => format!("{key} in {}", f.display()),
                None => format!(
                    "the default {key} address; no {}",
                    r.data.join("tally.toml").display()
                ),
            }
        }
    };
    if let Some(url) = &cfg.public_url {
        return Ok((url.clone(), from("public_url", "TALLY_PUBLIC_URL")));
    }
    let mut addr = cfg.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok((format!("{scheme}://{addr}"), from("listen", "TALLY_LISTEN")))
}

fn print(json_out: bool, value: &serde_json::Value, human: impl FnOnce() -> String) {
    if json_out {
        outln!("{value}");
    } else {
        outln!("{}", human());
    }
}

fn init_logs(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or journal gets plain `key=value` text.
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init()
    } else {
        b.init()
    }
}

/// The data folder's lock file. `tally serve` holds an exclusive lock on it (`flock`) for as
/// long as it runs, and `tally reindex` while it rebuilds; it holds the holder's pid. The kernel
/// drops the lock when the process ends, however it ends, so a stale file stops nobody.
const LOCK_FILE: &str = "tally.lock";

/// Takes the data folder's lock: `Ok(Ok(file))` while held (keep the file open), `Ok(Err(who))`
/// when another process holds it (`who`: "pid N"). A folder where the file cannot be opened at
/// all (a read-only folder without one) is not locked: opening the database says why it fails.
fn lock_data(data: &Path) -> anyhow::Result<Result<Option<std::fs::File>, String>> {
    use std::io::{Read as _, Write as _};
    let path = data.join(LOCK_FILE);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let (mut file, writable) = match opened {
        Ok(f) => (f, true),
        Err(_) => match std::fs::File::open(&path) {
            Ok(f) => (f, false),
            Err(_) => return Ok(Ok(None)),
        },
    };
    match file.try_lock() {
        Ok(()) => {
            if writable {
                file.set_len(0)
                    .and_then(|()| writeln!(file, "{}", std::process::id()))
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(Ok(Some(file)))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Ok(Err(if pid.is_empty() {
                "pid unknown".to_string()
            } else {
                format!("pid {pid}")
            }))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes (`{:#}`), never anyhow's debug form: that one prints a
            // backtrace whenever RUST_BACKTRACE is set, which tells an organizer nothing.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            listen,
            data,
            config,
            tls_cert,
            tls_key,
        } => {
            let mut cfg = Config::load(config.as_deref(), data.as_deref())?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data {
                cfg.data = d;
            }
            if tls_cert.is_some() {
                cfg.tls_cert = tls_cert;
                cfg.tls_key = tls_key;
            }
            std::fs::create_dir_all(&cfg.data)
                .with_context(|| format!("cannot create the data folder {}", cfg.data.display()))?;
            let _lock = lock_data(&cfg.data)?.map_err(|who| {
                anyhow::anyhow!(
                    "another tally server ({who}) is running on the data folder {} (it holds {}): \
                     stop it first, or give this one another --data",
                    cfg.data.display(),
                    cfg.data.join(LOCK_FILE).display()
                )
            })?;
            init_logs(&cfg.log_format);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let (store, admin) = tally_server::open_data(&cfg.data)?;
                if let Some(path) = admin {
                    tracing::info!(path = %path.display(), "first start: wrote the admin token (mode 0600); `tally` commands read it from there");
                }
                let listener = tally_server::listen(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
                tally_server::serve(cfg, store, listener, shutdown_signal()).await
            })
        }
        Cmd::Keygen { out } => {
            use age::secrecy::ExposeSecret;
            anyhow::ensure!(
                !out.exists(),
                "{} exists already; choose another file (an identity is never overwritten)",
                out.display()
            );
            let id = age::x25519::Identity::generate();
            let recipient = id.to_public().to_string();
            let text = format!(
                "# tally organizer identity\n# recipient: {recipient}\n{}\n",
                id.to_string().expose_secret()
            );
            tally_server::write_secret(&out, &text)?;
            outln!("{recipient}");
            eprintln!(
                "identity written to {} (keep it offline and backed up: it opens every signer's details)",
                out.display()
            );
            Ok(())
        }
        Cmd::Config => {
            out!("{}", Config::example());
            Ok(())
        }
        Cmd::Reindex { data } => {
            // Only where there is a database to rebuild: otherwise reindex says so.
            let _lock = if data.join(tally_server::DB_FILE).exists() {
                lock_data(&data)?.map_err(|who| {
                    anyhow::anyhow!(
                        "a tally server ({who}) is running on the data folder {}: stop it first. \
                         reindex rebuilds the totals tables in one transaction, which would hold \
                         up the server's writes (phones' syncs stall) while it runs",
                        data.display()
                    )
                })?
            } else {
                None
            };
            let r = tally_server::reindex(&data)?;
            outln!(
                "reindexed {} documents: {} signatures, {} check-ins, {} strikes, {} sheets, {} aggregate cells",
                r.documents,
                r.signatures,
                r.checkins,
                r.strikes,
                r.sheets,
                r.cells
            );
            Ok(())
        }
        Cmd::Campaign { cmd, remote } => {
            let a = api(&remote)?;
            match cmd {
                CampaignCmd::Create {
                    title,
                    petition,
                    addressee,
                    goal,
                    timezone,
                    recipients,
                } => {
                    let c = client::campaign_create(
                        &a,
                        &remote.keys,
                        &NewCampaign {
                            title,
                            petition,
                            addressee,
                            goal,
                            timezone,
                            recipients,
                        },
                    )?;
                    let v = serde_json::to_value(&c)?;
                    print(remote.json, &v, || {
                        format!(
                            "campaign {}\n  duplicate key kept in {}",
                            c.campaign,
                            client::key_path(&remote.keys, &c.campaign).display()
                        )
                    });
                }
                CampaignCmd::List => {
                    let v = serde_json::to_value(a.get::<CampaignList>("/api/v1/campaigns")?)?;
                    print(remote.json, &v, || {
                        serde_json::to_string_pretty(&v).unwrap_or_default()
                    });
                }
            }
            Ok(())
        }
        Cmd::Event {
            cmd:
                EventCmd::Add {
                    campaign,
                    name,
                    city,
                    starts_at,
                    place,
                    id,
                },
            remote,
        } => {
            let event: Event = api(&remote)?.post(
                &format!("/api/v1/campaigns/{campaign}/events"),
                &NewEvent {
                    id,
                    name,
                    city,
                    starts_at: starts_at.into(),
                    place,
                },
            )?;
            let v = serde_json::to_value(&event)?;
            print(remote.json, &v, || format!("event {}", event.id));
            Ok(())
        }
        Cmd::Invite {
            campaign,
            role,
            remote,
        } => {
            let v = client::invite(&api(&remote)?, &remote.keys, &campaign, &role)?;
            print(remote.json, &v, || {
                format!(
                    "one-time code: {}\nQR payload:\n{}",
                    v["code"].as_str().unwrap_or("?"),
                    v["payload"]
                )
            });
            Ok(())
        }
        Cmd::Token { cmd, remote } => {
            let a = api(&remote)?;
            let v = match cmd {
                TokenCmd::Revoke { device } => serde_json::to_value(
                    a.post::<Revoked>(&format!("/api/v1/devices/{device}/revoke"), &json!({}))?,
                )?,
                TokenCmd::List => serde_json::to_value(a.get::<Vec<Device>>("/api/v1/devices")?)?,
            };
            print(remote.json, &v, || {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            });
            Ok(())
        }
        Cmd::Totals { campaign, remote } => {
            let t: TotalsResponse =
                api(&remote)?.get(&format!("/api/v1/campaigns/{campaign}/totals"))?;
            let v = serde_json::to_value(&t)?;
            print(remote.json, &v, || {
                format!(
                    "{} signatures counted, {} unique signers ({} struck, {} withdrawn); paper: {} sheets, {} signatures",
                    v["signatures"],
                    v["unique_signers"],
                    v["struck"],
                    v["withdrawn"],
                    v["paper"]["sheets"],
                    v["paper"]["signatures"]
                )
            });
            Ok(())
        }
        Cmd::Export {
            campaign,
            identity,
            out,
            all,
            force,
            remote,
        } => {
            let (rows, failed) =
                client::export(&api(&remote)?, &campaign, &identity, &out, !all, force)?;
            if failed > 0 {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: {failed} of {} signatures could not be opened with the identity in {} \
                     and are NOT in {}: they are sealed to other organizers; export them with one \
                     of those organizers' identities",
                    rows + failed,
                    identity.display(),
                    out.display()
                );
            }
            let v = json!({ "rows": rows, "unopened": failed, "out": out });
            print(remote.json, &v, || {
                format!(
                    "wrote {rows} signers to {} ({failed} could not be opened with this identity)",
                    out.display()
                )
            });
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: closing connections and flushing");
}
