//! `tally`: the sync server (`tally serve`) and the organizers' commands, which call a running
//! server's HTTP API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tally_server::api::types::{
    CampaignList, Device, Event, NewCampaign, NewEvent, NewSheet, NewStrike, ReviewList, Revoked,
    Sheet, Strike, TotalsResponse,
};
use tally_server::config::Config;
use tally_server::organizer_cli::{self, Api, render};

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
    about = "Offline-first petition and check-in sync server, and the organizers' commands"
)]
struct Cli {
    #[command(flatten)]
    shared: Shared,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The options every organizer command shares, given before or after the subcommand
/// (`tally --json totals ...` or `tally totals ... --json`): how to reach the server and with
/// which token, where the campaign keys are, and JSON output. Shown under their own heading.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Shared options")]
struct Shared {
    /// The server's URL (default: the `public_url`, else the `listen` address, of the server's
    /// configuration: --config, DATA/tally.toml, TALLY_* variables; as `tally serve` reads it).
    #[arg(long, env = "TALLY_SERVER", global = true, value_name = "URL")]
    server: Option<String>,
    /// The server's configuration file, to find the server when --server is not given
    /// (default DATA/tally.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// API token. Prefer TALLY_TOKEN or --token-file: a token on the command line is visible to
    /// other users of the machine (`ps`). Default: --token-file, else TALLY_TOKEN, else the
    /// admin token in DATA/admin.token.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Read the API token from this file (e.g. an organizer's token, mode 0600); it wins over
    /// TALLY_TOKEN.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The server's data folder, to find the admin token and DATA/tally.toml
    /// [env: TALLY_DATA] [default: tally-data].
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Folder of campaign duplicate keys (never sent to the server).
    #[arg(
        long,
        env = "TALLY_KEYS",
        default_value = "tally-keys",
        global = true,
        value_name = "DIR"
    )]
    keys: PathBuf,
    /// Print JSON (the API's answer) instead of text for people.
    #[arg(long, global = true)]
    json: bool,
}

impl Shared {
    /// The data folder: --data, else TALLY_DATA, else `tally-data`. (Not a clap default, so
    /// that `serve` and `reindex`, which have a --data of their own, are not given one.)
    fn data(&self) -> PathBuf {
        self.data
            .clone()
            .or_else(|| std::env::var_os("TALLY_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("tally-data"))
    }
}

/// A campaign option: its id, or its `automerge:` URL.
#[derive(clap::Args, Clone)]
struct CampaignArg {
    /// The campaign: its id or its `automerge:` URL (`tally campaign list` shows the ids;
    /// `tally-device status` and invites show the URL).
    #[arg(long = "campaign", value_name = "CAMPAIGN")]
    given: String,
}

impl CampaignArg {
    fn id(&self) -> String {
        organizer_cli::campaign_id(&self.given)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sync server.
    Serve {
        /// Address to listen on (default 127.0.0.1:7300).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Data folder (default ./tally-data).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Configuration file (default DATA/tally.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve HTTPS and WSS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Keep everything in this PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB)
        /// instead of the data folder's SQLite file.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Print the configuration `tally serve` would use here (defaults, then --config or
    /// DATA/tally.toml, then TALLY_* variables; each set key says where it came from), then an
    /// example file with every key and its default.
    Config {
        /// Print only the example file.
        #[arg(long)]
        example: bool,
    },
    /// Rebuild the totals tables (rows and aggregates) from the stored documents. Works offline
    /// on the data folder: stop the server first (its writes would wait for the rebuild).
    Reindex {
        /// Data folder (default ./tally-data).
        #[arg(
            long,
            env = "TALLY_DATA",
            default_value = "tally-data",
            value_name = "DIR"
        )]
        data: PathBuf,
        /// Rebuild the projection in this PostgreSQL database instead of the data folder's
        /// SQLite file. The servers sharing it may keep running: their writes wait for the
        /// rebuild (phones are told to retry) and go on after it.
        #[arg(long, env = "TALLY_DATABASE_URL", value_name = "URL")]
        database_url: Option<String>,
    },
    /// Make an organizer's age identity (the secret that opens signers' details) and print its
    /// recipient (the public half that campaigns seal to).
    Keygen {
        /// Where to write the identity (mode 0600); it must not exist yet.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print a one-time link that opens the web dashboard signed in with this command's token
    /// (the admin's, or --token / --token-file): it works once, within 10 minutes. (Or open
    /// the server's address and paste a token.)
    Dashboard,
    /// Campaigns: create, list.
    Campaign {
        #[command(subcommand)]
        cmd: CampaignCmd,
    },
    /// Events of a campaign.
    Event {
        #[command(subcommand)]
        cmd: EventCmd,
    },
    /// Invite a phone: prints a one-time code and the QR payload.
    Invite {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The phone's role: canvasser (collects signatures) or organizer (reads totals,
        /// exports, reviews).
        #[arg(long, default_value = "canvasser", value_parser = ["canvasser", "organizer"])]
        role: String,
    },
    /// Device tokens: list, revoke.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The audit log: every organizer and admin action (the admin reads all of it, an organizer
    /// their campaign's), or `verify` to check its chain of hashes.
    Audit {
        #[command(subcommand)]
        cmd: Option<AuditCmd>,
        /// Entries at or after this time (RFC 3339, e.g. 2026-07-01T00:00:00-04:00).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Entries before this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// One device's actions (a device id: `tally token list`).
        #[arg(long, value_name = "DEVICE")]
        actor: Option<String>,
        /// One action, e.g. device.revoke, review.strike, export.sealed.
        #[arg(long)]
        action: Option<String>,
        /// One campaign's entries (its id or `automerge:` URL).
        #[arg(long, value_name = "CAMPAIGN")]
        campaign: Option<String>,
        /// The newest N entries (default 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A campaign's totals: the headline numbers and their breakdowns by event, city, FSA,
    /// riding, day and canvasser, optionally filtered.
    Totals {
        #[command(flatten)]
        campaign: CampaignArg,
        /// Only this event's signatures and check-ins (an event id: `tally campaign list`).
        #[arg(long, value_name = "EVENT_ID")]
        event: Option<String>,
        /// Only signers of this city.
        #[arg(long)]
        city: Option<String>,
        /// Only signers of this postal area (the first three characters of a postal code, e.g.
        /// M5V).
        #[arg(long)]
        fsa: Option<String>,
        /// Only signatures of this riding (electoral district), as the signature names it.
        #[arg(long)]
        riding: Option<String>,
        /// Only signatures this canvasser collected (a device id: `tally device list`).
        #[arg(long, value_name = "DEVICE_ID")]
        canvasser: Option<String>,
        /// From this day (YYYY-MM-DD, in the campaign's time zone) or time (RFC 3339, e.g.
        /// 2026-07-01T18:00:00-04:00), included.
        #[arg(long, value_name = "DATE|TIME")]
        from: Option<String>,
        /// Until this day (YYYY-MM-DD: that day included) or time (RFC 3339: not included).
        #[arg(long, value_name = "DATE|TIME")]
        to: Option<String>,
    },
    /// Export signers to CSV, opening sealed fields locally with an organizer's age identity:
    /// one row per unique signer (for delivery), or every signature with --all.
    Export {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The organizer's age identity file (AGE-SECRET-KEY-1..., from `tally keygen`).
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// CSV file to write (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// One row per signature instead of per unique signer: duplicates, withdrawn and struck
        /// signatures included (the duplicate_group column shows which rows are one signer).
        #[arg(long)]
        all: bool,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Strike a signature: it stops counting (a duplicate, an invalid entry, withdrawn consent,
    /// a test entry). Undo with `tally unstrike`.
    Strike {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The signature's id (the id column of `tally export --all`).
        #[arg(long, value_name = "ID")]
        record: String,
        /// Why it must not count.
        #[arg(long, value_parser = ["duplicate", "invalid", "withdrawn_consent", "test_entry"])]
        reason: String,
    },
    /// Erase signatures for good at a signer's request: the server deletes every wrapped key of
    /// the records (their sealed details can never be opened again), refuses their keys from
    /// then on, and stops counting them. By record id, or every signature of one person by name
    /// and postal code (the duplicate token is computed here with the campaign's duplicate key
    /// in --keys; the server never sees the name). A backup taken before still holds the keys:
    /// docs/security.md, "Erasure".
    Erase {
        #[command(flatten)]
        campaign: CampaignArg,
        /// A signature's id (the id column of `tally export --all`); repeat for several.
        #[arg(long, value_name = "ID", conflicts_with_all = ["name", "postal_code"])]
        record: Vec<String>,
        /// The person's name, as they signed (case, spacing and width do not matter).
        #[arg(long, requires = "postal_code")]
        name: Option<String>,
        /// Their postal code.
        #[arg(long, value_name = "CODE", requires = "name")]
        postal_code: Option<String>,
    },
    /// Undo a strike: the signature counts again.
    Unstrike {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The struck signature's id.
        #[arg(long, value_name = "ID")]
        record: String,
    },
    /// Paper petition sheets: add, list, set.
    Sheet {
        #[command(subcommand)]
        cmd: SheetCmd,
    },
}

#[derive(Subcommand)]
enum CampaignCmd {
    /// Create a campaign (and its duplicate key, kept in --keys).
    Create {
        /// The campaign's title, as phones and organizers see it.
        #[arg(long)]
        title: String,
        /// The petition's text, as signers read it.
        #[arg(long)]
        petition: String,
        /// To whom the petition goes, e.g. "the House of Commons".
        #[arg(long)]
        addressee: String,
        /// How many signatures the campaign aims for (0: no goal).
        #[arg(long, default_value_t = 0)]
        goal: i64,
        /// The IANA time zone the campaign's days are counted in (totals by day).
        #[arg(long, default_value = "America/Toronto", value_name = "ZONE")]
        timezone: String,
        /// An organizer's age recipient (age1..., from `tally keygen`): signers' details are
        /// sealed to it. Repeat for several organizers.
        #[arg(long = "recipient", required = true, value_name = "AGE_RECIPIENT")]
        recipients: Vec<String>,
    },
    /// List campaigns (all for the admin, the token's own otherwise), with their events.
    List,
    /// How a campaign's signatures are sealed, for erasure: how many are v2 (erasable; with
    /// their key on the server or not yet), how many v1 (taken before erasure existed: their
    /// details stay in the document's history and cannot be shredded), how many erased. Reads
    /// the sealed records and the keys' list (audited as an export); opens nothing.
    Sealing {
        #[command(flatten)]
        campaign: CampaignArg,
    },
}

#[derive(Subcommand)]
enum EventCmd {
    /// Add an event (or correct one, given its --id).
    Add {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The event's name, e.g. "Rally at Queen's Park".
        #[arg(long)]
        name: String,
        /// The city it takes place in.
        #[arg(long)]
        city: String,
        /// When it starts: an RFC 3339 time, e.g. 2026-07-01T18:00:00-04:00.
        #[arg(long, value_name = "TIME")]
        starts_at: String,
        /// Where, e.g. an address or a landmark.
        #[arg(long, default_value = "")]
        place: String,
        /// The event's id, to correct an existing event (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the audit log's chain of hashes: exits 1 naming the first entry that was changed,
    /// moved or removed (admin).
    Verify,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Revoke a device: its token stops working and its connections close.
    Revoke {
        /// The device's id (the DEVICE column of `tally token list`).
        device: String,
    },
    /// List devices: their names, roles, campaigns, and when they enrolled, were last seen,
    /// were revoked.
    List,
}

#[derive(Subcommand)]
enum SheetCmd {
    /// Record a paper petition sheet.
    Add {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The serial number written on the sheet.
        #[arg(long)]
        serial: String,
        /// How many signatures it holds.
        #[arg(long)]
        count: i64,
        /// The riding it was collected in.
        #[arg(long)]
        riding: Option<String>,
        /// Where it is: collected, counted or delivered.
        #[arg(long, default_value = "collected", value_parser = SHEET_STATUSES)]
        status: String,
    },
    /// List the campaign's paper sheets.
    List {
        #[command(flatten)]
        campaign: CampaignArg,
    },
    /// Change a sheet's count, riding or status.
    Set {
        #[command(flatten)]
        campaign: CampaignArg,
        /// The sheet's serial.
        #[arg(long)]
        serial: String,
        /// Its new signature count.
        #[arg(long)]
        count: Option<i64>,
        /// Its riding ("" clears it).
        #[arg(long)]
        riding: Option<String>,
        /// Where it is now: collected, counted or delivered.
        #[arg(long, value_parser = SHEET_STATUSES)]
        status: Option<String>,
    },
}

const SHEET_STATUSES: [&str; 3] = ["collected", "counted", "delivered"];

fn api(r: &Shared) -> anyhow::Result<Api> {
    let (server, origin) = match &r.server {
        Some(url) => (url.clone(), "given by --server or TALLY_SERVER".to_string()),
        None => server_from_config(r)?,
    };
    Ok(Api {
        server,
        origin,
        token: organizer_cli::load_token(
            r.token.clone(),
            r.token_file.as_deref(),
            std::env::var("TALLY_TOKEN").ok().filter(|t| !t.is_empty()),
            &r.data(),
        )?,
    })
}

/// The server `tally serve` would be with the same configuration (`--config`, else
/// `DATA/tally.toml` if present, then the `TALLY_*` variables): its `public_url` if set, else its
/// `listen` address (a wildcard one asked on loopback). Returns the URL and where it came from.
fn server_from_config(r: &Shared) -> anyhow::Result<(String, String)> {
    let data = r.data();
    let cfg = Config::load(r.config.as_deref(), Some(&data))?;
    let default_file = data.join("tally.toml");
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
                    data.join("tally.toml").display()
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

fn init_logs(format: tally_server::config::LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or journal gets plain `key=value` text.
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == tally_server::config::LogFormat::Json {
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
            database_url,
        } => {
            let mut cfg = Config::load(config.as_deref(), data.as_deref())?;
            if database_url.is_some() {
                cfg.database_url = database_url;
            }
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
            init_logs(cfg.log_format);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let (store, admin) = tally_server::open_database(&cfg.data, cfg.database_url.as_deref())?;
                if let Some(path) = admin {
                    tracing::info!(path = %path.display(), "first start: wrote the admin token (mode 0600); `tally` commands read it from there");
                }
                let listener = tally_server::listen(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
                tally_server::serve_database(cfg, store, listener, shutdown_signal()).await
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
        Cmd::Config { example } => {
            if example {
                out!("{}", Config::example());
            } else {
                out!("{}", effective_config(&cli.shared)?);
            }
            Ok(())
        }
        Cmd::Reindex { data, database_url } => {
            // Only where there is a database to rebuild: otherwise reindex says so. On
            // PostgreSQL the rebuild's transaction locks out the servers' writes itself.
            let _lock = if database_url.is_none() && data.join(tally_server::DB_FILE).exists() {
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
            let r = match database_url {
                Some(url) => tally_server::reindex_database(&url)?,
                None => tally_server::reindex(&data)?,
            };
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
        Cmd::Campaign { cmd } => campaign_cmd(&cli.shared, cmd),
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
        } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            let event: Event = a.about_campaign(&c, || {
                a.post(
                    &format!("/api/v1/campaigns/{c}/events"),
                    &NewEvent {
                        id,
                        name,
                        city,
                        starts_at: starts_at.into(),
                        place,
                    },
                )
            })?;
            let v = serde_json::to_value(&event)?;
            print(shared.json, &v, || format!("event {}", event.id));
            Ok(())
        }
        Cmd::Invite { campaign, role } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            if !organizer_cli::key_path(&shared.keys, &c).exists() {
                // No invite without the campaign's key; but a wrong id is the likelier mistake.
                a.require_campaign(&c)?;
            }
            let v = a.about_campaign(&c, || organizer_cli::invite(&a, &shared.keys, &c, &role))?;
            print(shared.json, &v, || {
                // The payload stays the last line (`| tail -n 1` gives it to tally-device).
                format!(
                    "one-time code: {}\napp link (show it as a QR code; the phone's camera opens the app and enrolls):\n{}\nQR payload:\n{}",
                    v["code"].as_str().unwrap_or("?"),
                    v["app_link"].as_str().unwrap_or("?"),
                    v["payload"]
                )
            });
            Ok(())
        }
        Cmd::Token { cmd } => token_cmd(&cli.shared, cmd),
        Cmd::Dashboard => {
            let (link, expires_at) = tally_server::web::signin_link(&api(&cli.shared)?)?;
            print(
                cli.shared.json,
                &json!({ "link": link, "expires_at": expires_at }),
                || {
                    format!(
                        "Open this link in a browser: it signs the dashboard in once, within 10 minutes, and keeps the token in that tab only.\n{link}"
                    )
                },
            );
            Ok(())
        }
        Cmd::Audit {
            cmd,
            from,
            to,
            actor,
            action,
            campaign,
            limit,
        } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            if let Some(AuditCmd::Verify) = cmd {
                let v: serde_json::Value = a.get("/api/v1/audit/verify")?;
                if shared.json {
                    outln!("{v}");
                } else if v["ok"] == true {
                    outln!(
                        "the audit log verifies: {} entries, each chained to the one before",
                        v["entries"]
                    );
                }
                if v["ok"] != true {
                    anyhow::bail!(
                        "the audit log does not verify at entry {}: {}",
                        v["broken_at"],
                        v["why"].as_str().unwrap_or("no reason given")
                    );
                }
                return Ok(());
            }
            let time = |flag: &str, t: &str| -> anyhow::Result<String> {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_millis().to_string())
                    .map_err(|e| anyhow::anyhow!("{flag} {t:?} is not an RFC 3339 time like 2026-07-01T00:00:00-04:00: {e}"))
            };
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(f) = from {
                query.push(("from", time("--from", &f)?));
            }
            if let Some(t) = to {
                query.push(("to", time("--to", &t)?));
            }
            for (k, v) in [("actor", actor), ("action", action)] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if let Some(c) = campaign {
                query.push(("campaign", c.trim_start_matches("automerge:").to_string()));
            }
            if let Some(n) = limit {
                query.push(("limit", n.to_string()));
            }
            let entries: Vec<tally_store::AuditEntry> = a.get_query("/api/v1/audit", &query)?;
            if shared.json {
                outln!("{}", serde_json::to_value(&entries)?);
            } else {
                out!("{}", render::audit(&entries));
            }
            Ok(())
        }
        Cmd::Totals {
            campaign,
            event,
            city,
            fsa,
            riding,
            canvasser,
            from,
            to,
        } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            let summary = a.require_campaign(&c)?;
            let mut query: Vec<(&str, String)> = Vec::new();
            for (k, v) in [
                ("event", event),
                ("city", city),
                ("fsa", fsa),
                ("riding", riding),
                ("canvasser", canvasser),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if let Some(f) = from {
                query.push(("from", when_arg("--from", &f, &summary.timezone, false)?));
            }
            if let Some(t) = to {
                query.push(("to", when_arg("--to", &t, &summary.timezone, true)?));
            }
            let t: TotalsResponse =
                a.get_query(&format!("/api/v1/campaigns/{c}/totals"), &query)?;
            if shared.json {
                outln!("{}", serde_json::to_value(&t)?);
                return Ok(());
            }
            let mut names = render::Names::default();
            for e in &summary.events {
                names.events.insert(e.id.clone(), e.name.clone());
            }
            if !t.by_canvasser.is_empty() {
                // Only the admin may list devices: an organizer's token shows device ids.
                if let Ok(devices) = a.get::<Vec<Device>>("/api/v1/devices") {
                    for d in devices {
                        names.devices.insert(d.device_id, d.name);
                    }
                }
            }
            out!("{}", render::totals(&t, Some(&summary.title), &names));
            Ok(())
        }
        Cmd::Export {
            campaign,
            identity,
            out,
            all,
            force,
        } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            let e = a.about_campaign(&c, || {
                organizer_cli::export(&a, &c, &identity, &out, all, force)
            })?;
            if e.unopened > 0 {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: {} of {} signatures could not be opened with the identity in {} \
                     and are NOT in {}: they are sealed to other organizers; export them with one \
                     of those organizers' identities",
                    e.unopened,
                    e.signatures + e.unopened,
                    identity.display(),
                    out.display()
                );
            }
            if e.sealed_v1 > 0 {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: {} of the campaign's signatures are sealed in format v1 (taken before \
                     erasure existed): `tally erase` stops counting them but cannot shred their \
                     details, which stay in the collection's history (docs/security.md, \"Erasure\")",
                    e.sealed_v1
                );
            }
            if e.erased > 0 {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: {} erased signatures are written with \"erased\" in the name column \
                     and no other personal detail",
                    e.erased
                );
            }
            if e.key_missing > 0 {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: {} signatures are written as \"key missing\": the server does not \
                     hold their record key yet (the phone that took them has not synced since); \
                     export again after it syncs",
                    e.key_missing
                );
            }
            let v = json!({
                "rows": e.rows, "signatures": e.signatures, "folded": e.folded,
                "repeated": e.repeated, "unopened": e.unopened, "erased": e.erased,
                "key_missing": e.key_missing, "sealed_v1": e.sealed_v1, "all": all, "out": out,
            });
            print(shared.json, &v, || {
                let folded = match e.folded {
                    1 => "1 duplicate folded".to_string(),
                    n => format!("{n} duplicates folded"),
                };
                if all {
                    format!(
                        "wrote {} signatures to {}: every signature, withdrawn and struck included, \
                         0 duplicates folded ({} with the duplicate_group of an earlier row); \
                         {} could not be opened with this identity",
                        e.rows,
                        out.display(),
                        e.repeated,
                        e.unopened
                    )
                } else {
                    format!(
                        "wrote {} signers to {}, one row each: {} counted signatures, {folded} \
                         (withdrawn and struck signatures left out; --all writes every signature); \
                         {} could not be opened with this identity",
                        e.rows,
                        out.display(),
                        e.signatures,
                        e.unopened
                    )
                }
            });
            Ok(())
        }
        Cmd::Erase {
            campaign,
            record,
            name,
            postal_code,
        } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            let person = name.as_deref().zip(postal_code.as_deref());
            let e = a.about_campaign(&c, || {
                organizer_cli::erase(&a, &shared.keys, &c, &record, person)
            })?;
            let v = serde_json::to_value(&e)?;
            print(shared.json, &v, || {
                let mut line = format!(
                    "erased {} signature{} ({}): {} wrapped key{} deleted; they no longer count, \
                     and exports show them as erased",
                    e.erased.len(),
                    if e.erased.len() == 1 { "" } else { "s" },
                    e.erased.join(", "),
                    e.keys_deleted,
                    if e.keys_deleted == 1 { "" } else { "s" },
                );
                if !e.v1.is_empty() {
                    line.push_str(&format!(
                        "\nwarning: {} of them ({}) were sealed in format v1, before erasure \
                         existed: their details stay in the collection's history, openable by \
                         an organizer identity (docs/security.md, \"Erasure\")",
                        e.v1.len(),
                        e.v1.join(", ")
                    ));
                }
                line.push_str(
                    "\na backup of the database taken before now still holds their keys: \
                     rotate your backups (docs/security.md, \"Erasure\")",
                );
                line
            });
            Ok(())
        }
        Cmd::Strike {
            campaign,
            record,
            reason,
        } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            let review = review_of(&a, &c)?;
            let before = render::strike_of(&review, &record)
                .filter(|s| !s.revoked)
                .cloned();
            let s: Strike = a.post(
                &format!("/api/v1/campaigns/{c}/strikes"),
                &NewStrike {
                    signature: record.clone(),
                    reason: reason.clone(),
                    revoked: false,
                },
            )?;
            let v = serde_json::to_value(&s)?;
            print(shared.json, &v, || {
                let mut line = format!(
                    "struck signature {record} ({reason}): it no longer counts; \
                     `tally unstrike --campaign {c} --record {record}` undoes it"
                );
                if let Some(b) = before {
                    line.push_str(&format!(
                        "\n(it was struck already, as {} at {}; the reason is now {reason})",
                        b.reason.as_str(),
                        render::local_time(b.at)
                    ));
                }
                line
            });
            Ok(())
        }
        Cmd::Unstrike { campaign, record } => {
            let shared = &cli.shared;
            let a = api(shared)?;
            let c = campaign.id();
            let review = review_of(&a, &c)?;
            let Some(was) = render::strike_of(&review, &record).cloned() else {
                anyhow::bail!(
                    "signature {record:?} is not struck in campaign {c}: nothing to undo"
                );
            };
            anyhow::ensure!(
                !was.revoked,
                "the strike of signature {record} was already undone at {}: it counts",
                render::local_time(was.at)
            );
            let s: Strike = a.post(
                &format!("/api/v1/campaigns/{c}/strikes"),
                &NewStrike {
                    signature: record.clone(),
                    reason: was.reason.as_str().into(),
                    revoked: true,
                },
            )?;
            let v = serde_json::to_value(&s)?;
            print(shared.json, &v, || {
                format!(
                    "unstruck signature {record}: it counts again (it was struck as {} at {})",
                    was.reason.as_str(),
                    render::local_time(was.at)
                )
            });
            Ok(())
        }
        Cmd::Sheet { cmd } => sheet_cmd(&cli.shared, cmd),
    }
}

/// The campaign's strikes and sheets.
fn review_of(a: &Api, campaign: &str) -> anyhow::Result<ReviewList> {
    a.about_campaign(campaign, || {
        a.get(&format!("/api/v1/campaigns/{campaign}/review"))
    })
}

/// A `--from` / `--to` value for the totals query: an RFC 3339 time as given, or a day
/// (`YYYY-MM-DD`) in the campaign's time zone: its start, or with `end` the start of the next
/// day (so that `--to` a day includes it).
fn when_arg(flag: &str, v: &str, tz: &str, end: bool) -> anyhow::Result<String> {
    use chrono::TimeZone as _;
    if chrono::DateTime::parse_from_rfc3339(v).is_ok() {
        return Ok(v.to_string());
    }
    let day = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
        anyhow::anyhow!(
            "{flag} {v:?}: give a day, 2026-07-01 (in the campaign's time zone, {tz}), or an \
             RFC 3339 time, 2026-07-01T18:00:00-04:00"
        )
    })?;
    let day = if end {
        day.succ_opt()
            .ok_or_else(|| anyhow::anyhow!("{flag} {v:?}: no day after it"))?
    } else {
        day
    };
    let zone: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::UTC);
    let start = day
        .and_hms_opt(0, 0, 0)
        .and_then(|n| zone.from_local_datetime(&n).earliest())
        .ok_or_else(|| anyhow::anyhow!("{flag} {v:?}: that day has no midnight in {tz}"))?;
    Ok(start.to_rfc3339())
}

fn campaign_cmd(shared: &Shared, cmd: CampaignCmd) -> anyhow::Result<()> {
    let a = api(shared)?;
    match cmd {
        CampaignCmd::Create {
            title,
            petition,
            addressee,
            goal,
            timezone,
            recipients,
        } => {
            let c = organizer_cli::campaign_create(
                &a,
                &shared.keys,
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
            print(shared.json, &v, || {
                format!(
                    "campaign {}\n  duplicate key kept in {}",
                    c.campaign,
                    organizer_cli::key_path(&shared.keys, &c.campaign).display()
                )
            });
        }
        CampaignCmd::List => {
            let list: CampaignList = a.get("/api/v1/campaigns")?;
            if shared.json {
                outln!("{}", serde_json::to_value(&list)?);
            } else {
                out!("{}", render::campaigns(&list.campaigns));
            }
        }
        CampaignCmd::Sealing { campaign } => {
            let c = campaign.id();
            let s = a.about_campaign(&c, || organizer_cli::sealing(&a, &c))?;
            print(shared.json, &serde_json::to_value(&s)?, || {
                format!(
                    "{} signatures: {} sealed v2 (erasable; {} with their key on the server, {} \
                     whose key is not there yet), {} sealed v1 (taken before erasure existed: \
                     `tally erase` stops counting them but cannot shred their details, which \
                     stay in the collection's history), {} erased",
                    s.signatures,
                    s.v2,
                    s.v2 - s.key_missing,
                    s.key_missing,
                    s.v1,
                    s.erased
                )
            });
        }
    }
    Ok(())
}

fn token_cmd(shared: &Shared, cmd: TokenCmd) -> anyhow::Result<()> {
    let a = api(shared)?;
    let titles = |a: &Api| -> BTreeMap<String, String> {
        a.campaigns()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.campaign, c.title))
            .collect()
    };
    match cmd {
        TokenCmd::Revoke { device } => {
            let r: Revoked = a.post(&format!("/api/v1/devices/{device}/revoke"), &json!({}))?;
            if shared.json {
                outln!("{}", serde_json::to_value(&r)?);
                return Ok(());
            }
            let devices: Vec<Device> = a.get("/api/v1/devices").unwrap_or_default();
            let row: Vec<Device> = devices
                .into_iter()
                .filter(|d| d.device_id == r.revoked)
                .collect();
            outln!(
                "revoked device {}: its token no longer works; {} connections closed",
                r.revoked,
                r.connections_closed
            );
            if !row.is_empty() {
                out!("\n{}", render::devices(&row, &titles(&a)));
            }
        }
        TokenCmd::List => {
            let devices: Vec<Device> = a.get("/api/v1/devices")?;
            if shared.json {
                outln!("{}", serde_json::to_value(&devices)?);
            } else {
                out!("{}", render::devices(&devices, &titles(&a)));
            }
        }
    }
    Ok(())
}

fn sheet_cmd(shared: &Shared, cmd: SheetCmd) -> anyhow::Result<()> {
    let a = api(shared)?;
    let post = |c: &str, sheet: NewSheet| -> anyhow::Result<Sheet> {
        a.post(&format!("/api/v1/campaigns/{c}/sheets"), &sheet)
    };
    let describe = |s: &Sheet| {
        format!(
            "{} signatures, riding {}, {}",
            s.count,
            s.riding.as_deref().unwrap_or("-"),
            s.status.as_str()
        )
    };
    match cmd {
        SheetCmd::Add {
            campaign,
            serial,
            count,
            riding,
            status,
        } => {
            let c = campaign.id();
            let review = review_of(&a, &c)?;
            if let Some(s) = review.sheets.iter().find(|s| s.serial == serial) {
                anyhow::bail!(
                    "sheet {serial:?} exists already ({}): change it with `tally sheet set \
                     --campaign {c} --serial {serial} ...`",
                    describe(s)
                );
            }
            let s = post(
                &c,
                NewSheet {
                    serial,
                    count,
                    riding,
                    status: Some(status),
                },
            )?;
            let v = serde_json::to_value(&s)?;
            print(shared.json, &v, || {
                format!("recorded sheet {}: {}", s.serial, describe(&s))
            });
        }
        SheetCmd::List { campaign } => {
            let c = campaign.id();
            let review = review_of(&a, &c)?;
            if shared.json {
                outln!("{}", serde_json::to_value(&review.sheets)?);
            } else {
                out!("{}", render::sheets(&review.sheets));
            }
        }
        SheetCmd::Set {
            campaign,
            serial,
            count,
            riding,
            status,
        } => {
            let c = campaign.id();
            anyhow::ensure!(
                count.is_some() || riding.is_some() || status.is_some(),
                "nothing to change: give --count, --riding or --status"
            );
            let review = review_of(&a, &c)?;
            let Some(was) = review.sheets.iter().find(|s| s.serial == serial).cloned() else {
                anyhow::bail!(
                    "no sheet {serial:?} in campaign {c}: `tally sheet list --campaign {c}` shows \
                     its sheets; `tally sheet add` records a new one"
                );
            };
            let s = post(
                &c,
                NewSheet {
                    serial,
                    count: count.unwrap_or(was.count),
                    riding: riding.or(was.riding.clone()),
                    status: Some(status.unwrap_or_else(|| was.status.as_str().into())),
                },
            )?;
            let v = serde_json::to_value(&s)?;
            print(shared.json, &v, || {
                format!(
                    "sheet {}: {} (was {})",
                    s.serial,
                    describe(&s),
                    describe(&was)
                )
            });
        }
    }
    Ok(())
}

/// What `tally config` prints: the configuration `tally serve` would use with the same
/// `--config` and `--data` here (defaults, then the file, then `TALLY_*` variables, then the
/// `--data` flag), each key a layer set saying which, as a TOML file; then the example file,
/// commented out. Nothing in the configuration is a secret but a URL's password, redacted.
fn effective_config(shared: &Shared) -> anyhow::Result<String> {
    let data_flag = shared.data.as_deref();
    let mut cfg = Config::load(shared.config.as_deref(), data_flag)?;
    if let Some(d) = data_flag {
        cfg.data = d.to_path_buf();
    }
    let default_file = data_flag
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Config::default().data)
        .join("tally.toml");
    let file = shared
        .config
        .clone()
        .or_else(|| default_file.exists().then_some(default_file.clone()));
    let in_file: toml::Table = match &file {
        Some(f) => std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_default(),
        None => toml::Table::new(),
    };
    let cfg = cfg.redacted();
    let source = |key: &str| -> Option<String> {
        if key == "data" && data_flag.is_some() {
            return Some("--data".into());
        }
        let var = format!("TALLY_{}", key.to_ascii_uppercase());
        if std::env::var_os(&var).is_some() {
            return Some(var);
        }
        if in_file.contains_key(key) {
            return file.as_ref().map(|f| f.display().to_string());
        }
        None
    };
    let body = toml::to_string_pretty(&cfg)?;
    let mut out = format!(
        "# The configuration `tally serve` would use here: the defaults, then {},\n\
         # then the TALLY_* environment variables. A key set by the file or a variable says which.\n\
         # (It holds no secret: the admin token is kept in {} and is not shown.)\n",
        match &file {
            Some(f) => f.display().to_string(),
            None => format!("no file (none given, no {})", default_file.display()),
        },
        cfg.data.join(tally_server::ADMIN_TOKEN_FILE).display()
    );
    for line in body.lines() {
        let key = line.split_once(" = ").map(|(k, _)| k.trim());
        match key.and_then(&source) {
            Some(from) => out.push_str(&format!("{line}  # {from}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if cfg.public_url.is_none() {
        out.push_str(&format!(
            "# public_url is not set: phones are given {}\n",
            cfg.public_url()
        ));
    }
    if cfg.tls_cert.is_none() && cfg.tls_key.is_none() {
        out.push_str("# tls_cert, tls_key are not set: plain HTTP\n");
    }
    out.push_str(
        "\n# An example file with every key and its default (`tally config --example` prints it \
         alone):\n#\n",
    );
    for line in Config::example().lines() {
        out.push_str(&format!("# {line}\n"));
    }
    Ok(out)
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
