//! Server configuration in layers: built-in defaults, then a TOML file (`--config FILE`, or
//! `DATA/tally.toml` when present), then `TALLY_*` environment variables, then command-line
//! flags. `tally config` prints a commented example file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `tally serve` can be told. Its Debug output hides a URL's user and password.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder for the database and the admin token.
    pub data: PathBuf,
    /// URL phones use to reach this server (printed in enrollment payloads); defaults to
    /// `http://LISTEN`.
    pub public_url: Option<String>,
    /// A PostgreSQL database (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`) to keep everything
    /// in instead of the data folder's SQLite file; the data folder still holds the lock and
    /// the admin token. Its password is redacted wherever the configuration is printed.
    pub database_url: Option<String>,
    /// TLS certificate chain (PEM, server certificate first). With `tls_key`, the server speaks
    /// HTTPS and WSS itself; without both, plain HTTP (put a TLS-terminating proxy in front).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) belonging to `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Caps the database file at this many KiB (0: no cap). A write that would grow it further
    /// fails like a full disk: the phone hears the error and keeps its data, nothing is
    /// acknowledged. SQLite never sets the cap below the file's current size.
    pub max_database_kib: u64,
    /// Largest WebSocket frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Most collection documents one device may create in a campaign: the length of a phone's
    /// chain of collections (it starts the next one at a roll-over bound, after a refusal, and
    /// after a re-enrollment).
    pub max_documents_per_device: u64,
    /// Most wrapped record keys one device may hold on the server (`PUT /api/v1/keys`,
    /// docs/clients.md 5a): 40 full collections of 5,000 signatures by default. Past it a key
    /// is refused `too_many` and the phone keeps it.
    pub max_keys_per_device: u64,
    /// Most simultaneous sync connections.
    pub max_connections: usize,
    /// Seconds a document stays in memory after its last use.
    pub idle_unload_secs: u64,
    /// Most documents held in memory at once; past it the least recently used ones not in use
    /// are unloaded (a reconnect wave of many phones then stays within bounded memory). 0: no
    /// cap, only `idle_unload_secs`.
    pub max_loaded_documents: usize,
    /// Compact a document once this many incremental chunks follow its snapshot.
    pub compact_after_chunks: u64,
    /// How long an invite code stays valid, in hours.
    pub invite_ttl_hours: u64,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    /// Wrong tokens tolerated from one address within `auth_window_secs`; past that the
    /// address gets 429 until the window has passed (token guessing).
    pub max_auth_failures: u32,
    /// How long wrong tokens are remembered per address, in seconds.
    pub auth_window_secs: u64,
    /// Most connections from one address that have not yet had the answer to their first
    /// request (TLS handshake, request head and body, the token check): the unauthenticated
    /// phase. Authenticated sync connections are capped per device instead
    /// (`max_connections_per_device`), since phones behind one carrier NAT share an address.
    pub max_connections_per_address: usize,
    /// Most such connections in all; a new connection past it is refused at once (503). Kept
    /// at most a quarter of the open-files limit, so they never starve the rest.
    pub max_pending_connections: usize,
    /// Seconds a client has to send a request's head (request line and headers), counted from
    /// when the server starts waiting for it; an idle keep-alive connection is closed after as
    /// long.
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body.
    pub request_body_timeout_secs: u64,
    /// Sync connections one device may hold at once; a new one beyond replaces (closes) the
    /// oldest.
    pub max_connections_per_device: usize,
    /// Seconds between the WebSocket pings the server sends each sync connection (0: none).
    pub ping_interval_secs: u64,
    /// A sync connection from which nothing (not a frame, not a pong) arrived for this many
    /// seconds is closed (0: never).
    pub idle_timeout_secs: u64,
    /// Live totals streams one device may hold at once (429 past it).
    pub max_streams_per_device: usize,
    /// Live totals streams in all (503 past it).
    pub max_streams: usize,
    /// Enrollment attempts one address may make within `enroll_window_secs` (429 past it).
    pub max_enrollments_per_address: u32,
    /// The window of `max_enrollments_per_address`, in seconds.
    pub enroll_window_secs: u64,
    /// A sync connection whose peer has not taken a frame for this many seconds is closed, so a
    /// client that never reads cannot make the server buffer without bound.
    pub send_timeout_secs: u64,
    /// A device token not used for this many seconds expires (lost or abandoned phones); the
    /// device then enrolls again with a new invite, keeping what it holds. 0: tokens never
    /// expire. The admin's token never expires. Default: 90 days.
    pub token_idle_expiry_secs: u64,
    /// The totals documents (what phones show offline) are rewritten at most this often, in
    /// seconds; every connected phone is sent each rewrite. Live totals streams are not
    /// affected (they update within half a second).
    pub totals_document_secs: u64,
    /// How long the projector waits after a change is acknowledged before it counts it in
    /// the totals, in milliseconds, so that it counts more changes in one batch; totals lag by
    /// that much more. Default: 0 (it counts what is there as soon as it is woken).
    pub projection_delay_ms: u64,
    /// Threads that run the sync connections' work (applying, validating and storing changes).
    /// 0: twice the number of cores.
    pub sync_workers: usize,
    /// How far below the server's scheduling priority the sync workers run (Linux `nice` steps,
    /// 0 to 19), so that organizers' queries are answered at once while phones sync. 0: the
    /// same priority.
    pub sync_workers_niceness: i32,
    /// Small-cell suppression: totals breakdown cells counting fewer distinct people than this
    /// are hidden from every token but the admin's, and from the totals document.
    pub suppress_below: u64,

    // What one sync message and one connection may cost, and what the quarantine keeps
    // (issue 11.2 and 11.4; `Config::sync_limits`).
    /// Most operations the changes of one sync message may claim (counted from the chunks'
    /// columns before anything is loaded).
    pub max_ops_per_message: u64,
    /// Frames per second one sync connection may send on average; past its burst the
    /// connection is closed (0: no budget).
    pub max_frames_per_second: u32,
    /// Frames one sync connection may send at once before `max_frames_per_second` applies.
    pub frame_burst: u32,
    /// Bytes of changes waiting for dependencies that never arrived one document may make the
    /// server hold (beyond: dropped, and the peer told).
    pub max_pending_bytes_per_document: usize,
    /// Likewise per device, over all its connections.
    pub max_pending_bytes_per_device: usize,
    /// The quarantine keeps a refused message's raw bytes only up to this size (0: never), and
    /// never for a refused field's value.
    pub quarantine_max_raw_bytes: usize,
    /// Raw bytes the quarantine keeps per device.
    pub quarantine_raw_bytes_per_device: u64,
    /// Raw bytes the quarantine keeps in all.
    pub quarantine_raw_bytes_total: u64,
    /// Quarantine entries per device; later refusals are counted in the device's latest one.
    pub quarantine_entries_per_device: u64,
    /// Quarantine entries in all.
    pub quarantine_entries_total: u64,
    /// Quarantine entries are deleted after this many days (0: kept forever).
    pub quarantine_retention_days: u64,
    /// Record ids (signatures or check-ins) the server refuses, e.g. to stop a known-bad record
    /// from a broken client: a change that writes one is refused with an error naming it, and
    /// the phone sets that record aside and carries on with the others. Environment:
    /// `TALLY_REFUSE_RECORDS`, ids separated by commas.
    #[serde(deserialize_with = "string_or_list")]
    pub refuse_records: Vec<String>,
    /// Where `/metrics` (Prometheus' text exposition) listens, e.g. `127.0.0.1:9300`; off when
    /// unset. Its own address, not the main port: a scraper needs no token, and the address can
    /// be kept to the monitoring network (docs/operations.md, "Metrics").
    pub metrics_listen: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7300".parse().expect("valid default address"),
            data: PathBuf::from("tally-data"),
            public_url: None,
            database_url: None,
            tls_cert: None,
            tls_key: None,
            max_database_kib: 0,
            max_frame_bytes: 16 * 1024 * 1024,
            max_documents_per_device: 64,
            max_keys_per_device: 200_000,
            max_connections: 10_000,
            idle_unload_secs: 60,
            compact_after_chunks: 64,
            max_loaded_documents: 128,
            invite_ttl_hours: 72,
            log_format: LogFormat::Text,
            suppress_below: 5,
            max_auth_failures: 20,
            auth_window_secs: 60,
            max_connections_per_address: 128,
            max_pending_connections: 1_024,
            header_read_timeout_secs: 10,
            request_body_timeout_secs: 10,
            max_connections_per_device: 4,
            ping_interval_secs: 30,
            idle_timeout_secs: 90,
            max_streams_per_device: 4,
            max_streams: 256,
            max_enrollments_per_address: 20,
            enroll_window_secs: 60,
            send_timeout_secs: 20,
            token_idle_expiry_secs: 90 * 24 * 3600,
            totals_document_secs: 2,
            projection_delay_ms: 0,
            sync_workers: 0,
            sync_workers_niceness: 10,
            max_ops_per_message: 1_000_000,
            max_frames_per_second: 1_000,
            frame_burst: 5_000,
            max_pending_bytes_per_document: 4 * 1024 * 1024,
            max_pending_bytes_per_device: 8 * 1024 * 1024,
            // None by default: a message refused for who wrote it was never judged field by
            // field, so its bytes may hold a plaintext name (docs/security.md).
            quarantine_max_raw_bytes: 0,
            quarantine_raw_bytes_per_device: 256 * 1024,
            quarantine_raw_bytes_total: 16 * 1024 * 1024,
            quarantine_entries_per_device: 1_000,
            quarantine_entries_total: 100_000,
            quarantine_retention_days: 30,
            refuse_records: Vec::new(),
            metrics_listen: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match toml::Value::try_from(self.redacted()) {
            Ok(toml::Value::Table(t)) => f.debug_map().entries(t.iter()).finish(),
            _ => f.write_str("Config(<unprintable>)"),
        }
    }
}

/// `scheme://user:password@host/...` with the user and password replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// How the server writes its log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text (coloured on a terminal).
    Text,
    /// One JSON object a line.
    Json,
}

/// What went wrong reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config file {path} is invalid: {source} (run `tally config` for a valid file)")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A key in the file has a value its type allows but the server does not.
    #[error("config file {path}: {key} is invalid: {why}")]
    Value {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?} is invalid: {why}")]
    Env {
        name: String,
        value: String,
        why: String,
    },
    /// `TALLY_*` variables that name no key and belong to no other program (a misspelling).
    #[error(
        "unknown environment variable{} {}: `tally serve` reads {}; and these belong to other \
         programs: {}. Correct the name or unset it",
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        Config::env_names().join(", "),
        OTHER_PROGRAMS_VARIABLES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    UnknownEnv { names: Vec<String> },
}

/// The prefix of the configuration's environment variables.
const ENV_PREFIX: &str = "TALLY_";

/// The variable that sets `key`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// `TALLY_*` variables that belong to other programs than `tally serve` (the organizer
/// commands, the phone's command line, the benchmark, the tests), with who reads each: `tally
/// serve` started where they are set (a shell that also runs `tally campaign ...`, CI) ignores
/// them, and refuses any other unknown `TALLY_*` name. A test keeps this list true to the
/// repository (`every_tally_variable_in_the_repository_is_known`).
pub const OTHER_PROGRAMS_VARIABLES: &[(&str, &str)] = &[
    ("TALLY_SERVER", "organizer commands: the server's URL"),
    ("TALLY_TOKEN", "organizer commands: the token"),
    (
        "TALLY_KEYS",
        "organizer commands: the campaigns' key folder",
    ),
    ("TALLY_HOME", "tally-device: the phone's folder"),
    (
        "TALLY_BIN",
        "tally-bench, scripts/api-fuzz: the server binary",
    ),
    ("TALLY_BENCH_SERVER_LOG", "tally-bench: the server's log"),
    ("TALLY_BENCH_ADMIN_TOKEN", "tally-bench: the admin token"),
    (
        "TALLY_BENCH_DATABASE_URL",
        "tally-bench: the PostgreSQL server its PostgreSQL backends make databases on",
    ),
    (
        "TALLY_BROWSER_TESTS",
        "tests: whether the browser tests must run",
    ),
    ("TALLY_WEB_OUT", "tests: the browser tests' output folder"),
    (
        "TALLY_BIN_DIR",
        "tests: where the browser tests find the binaries",
    ),
    (
        "TALLY_TEST_BIN_DIR",
        "tests: where the tests find the binaries",
    ),
    (
        "TALLY_FAULT_SCHEDULES",
        "tests: the fault harness's schedule count",
    ),
    ("TALLY_FAULT_SEED", "tests: the fault harness's seed"),
    (
        "TALLY_TEST_DATABASE_URL",
        "scripts/with-postgres: the throwaway PostgreSQL it hands to the command it runs",
    ),
    (
        "TALLY_POSTGRES_TESTS",
        "tests: whether the PostgreSQL tests must run (required: fail instead of skipping)",
    ),
    (
        "TALLY_FAULT_NO_MOUNTS",
        "tests: the fault harness without mounts",
    ),
    ("TALLY_WRITE_VECTORS", "tests: rewrite the shared vectors"),
    (
        "TALLY_JS_TIMEOUT_MS",
        "tests: the JavaScript client's timeout",
    ),
    (
        "TALLY_JS_DEBUG",
        "tests: the JavaScript client's debug output",
    ),
    ("TALLY_ATTACK", "tests: the hostile peer's attack"),
    ("TALLY_WEB_ROOT", "web tests: the built pages' folder"),
];

/// What is wrong with a variable's value, said for a person.
fn env_why(key: &str, kind: &figment::error::Kind) -> String {
    match (key, kind) {
        ("listen", _) => "expected HOST:PORT, e.g. 127.0.0.1:7300".into(),
        (_, figment::error::Kind::InvalidType(_, want))
            if ["u8", "u16", "u32", "u64", "i32", "usize"].contains(&want.as_str()) =>
        {
            "expected a whole number".into()
        }
        (_, kind) => kind.to_string(),
    }
}

/// The `TALLY_*` layer as a figment provider: each value as its text, so that the target
/// type reads it (a string that looks like a number stays a string for a path or a URL), and
/// errors name the variable.
struct EnvLayer(figment::value::Dict);

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("TALLY_* environment variables")
            .interpolater(|_, keys: &[&str]| env_name(&keys.join("_")))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

/// `refuse_records`: a list in the file, ids separated by commas in the environment (spaces
/// around an id and empty ids are dropped).
fn string_or_list<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    let ids: Vec<String> = serde_aux::field_attributes::deserialize_vec_from_string_or_vec(de)?;
    Ok(ids
        .iter()
        .map(|id| id.trim())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect())
}

impl Config {
    /// Defaults, then `file` (or `data/tally.toml` if it exists), then the environment.
    pub fn load(file: Option<&Path>, data_hint: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let default_file = data_hint.unwrap_or(&cfg.data).join("tally.toml");
        let path = file
            .map(Path::to_path_buf)
            .or_else(|| default_file.exists().then_some(default_file));
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            cfg = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            })?;
            cfg.check().map_err(|(key, why)| ConfigError::Value {
                path: path.clone(),
                key,
                why,
            })?;
        }
        cfg.apply_env(std::env::vars())?;
        Ok(cfg)
    }

    /// Applies the `TALLY_*` variables among `vars` over this configuration: `TALLY_<KEY>` sets
    /// `key`, read through the same serde structure as the file (a number from its digits, a
    /// list from ids separated by commas). A `TALLY_*` name that is neither a key nor one of
    /// [`OTHER_PROGRAMS_VARIABLES`] is refused with the list of known names, as an unknown key
    /// in the file is.
    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let keys = Config::keys();
        let mut layer = figment::value::Dict::new();
        let mut unknown = Vec::new();
        for (name, value) in vars {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if keys.contains(&key.as_str()) && name == env_name(&key) {
                layer.insert(key, value.into());
            } else if !OTHER_PROGRAMS_VARIABLES.iter().any(|(n, _)| *n == name) {
                unknown.push(name);
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(ConfigError::UnknownEnv { names: unknown });
        }
        let values = layer.clone();
        let merged: Config =
            figment::Figment::from(figment::providers::Serialized::defaults(&*self))
                .merge(EnvLayer(layer))
                // Lossy: a number (or a true/false) is read from the variable's text.
                .extract_lossy()
                .map_err(|e| {
                    let key = e.path.first().cloned().unwrap_or_default();
                    ConfigError::Env {
                        name: env_name(&key),
                        value: values
                            .get(&key)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string(),
                        why: env_why(&key, &e.kind),
                    }
                })?;
        merged.check().map_err(|(key, why)| ConfigError::Env {
            name: env_name(key),
            value: values
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            why,
        })?;
        *self = merged;
        Ok(())
    }

    /// The configuration's keys, read from its serde structure (the file's keys; each is also
    /// the variable `TALLY_<KEY>`).
    pub fn keys() -> &'static [&'static str] {
        serde_aux::serde_introspection::serde_introspect::<Config>()
    }

    /// The `TALLY_*` variables `tally serve` reads, one per key.
    pub fn env_names() -> Vec<String> {
        Config::keys().iter().map(|k| env_name(k)).collect()
    }

    /// The checks serde's types do not make: the key and what is wrong.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(0..=19).contains(&self.sync_workers_niceness) {
            return Err(("sync_workers_niceness", "expected 0 to 19".into()));
        }
        Ok(())
    }

    /// This configuration with the secrets a value may hold (a URL's user and password)
    /// replaced, for printing.
    pub fn redacted(&self) -> Config {
        Config {
            public_url: self.public_url.as_deref().map(redact_url),
            database_url: self.database_url.as_deref().map(redact_url),
            ..self.clone()
        }
    }

    /// The per-address abuse limits.
    pub fn guard_limits(&self) -> crate::guard::Limits {
        crate::guard::Limits {
            max_auth_failures: self.max_auth_failures,
            auth_window: Duration::from_secs(self.auth_window_secs),
            max_connections_per_address: self.max_connections_per_address,
            max_pending_connections: self.max_pending_connections,
            max_enrollments_per_address: self.max_enrollments_per_address,
            enroll_window: Duration::from_secs(self.enroll_window_secs),
        }
    }

    /// What one sync message and one connection may cost, and what the quarantine keeps.
    pub fn sync_limits(&self) -> crate::hub::SyncLimits {
        crate::hub::SyncLimits {
            bounds: tally_proto::SyncBounds {
                max_ops: self.max_ops_per_message,
                // Compressed parts may inflate to 64 bytes per operation allowed (64 MiB at the
                // default), at least 1 MiB.
                max_inflated_bytes: usize::try_from(self.max_ops_per_message.saturating_mul(64))
                    .unwrap_or(usize::MAX)
                    .max(1024 * 1024),
                ..tally_proto::SyncBounds::default()
            },
            frames_per_second: self.max_frames_per_second,
            frame_burst: self.frame_burst,
            max_pending_bytes_per_document: self.max_pending_bytes_per_document,
            max_pending_bytes_per_device: self.max_pending_bytes_per_device,
            quarantine: tally_store::QuarantineQuota {
                max_raw_bytes: self.quarantine_max_raw_bytes,
                max_raw_bytes_per_device: self.quarantine_raw_bytes_per_device,
                max_raw_bytes_total: self.quarantine_raw_bytes_total,
                max_entries_per_device: self.quarantine_entries_per_device,
                max_entries_total: self.quarantine_entries_total,
                retention_ms: i64::try_from(
                    self.quarantine_retention_days
                        .saturating_mul(24 * 3600 * 1000),
                )
                .unwrap_or(i64::MAX),
            },
        }
    }

    /// The per-device limits.
    pub fn device_limits(&self) -> crate::guard::DeviceLimits {
        crate::guard::DeviceLimits {
            max_connections_per_device: self.max_connections_per_device,
            max_streams_per_device: self.max_streams_per_device,
            max_streams: self.max_streams,
        }
    }

    /// The open files the server may need at its limits: every sync connection, every
    /// unfinished connection, every live stream, and some for the database, its read
    /// connections and the log.
    pub fn files_needed(&self) -> u64 {
        (self.max_connections + self.max_pending_connections + self.max_streams) as u64 + 64
    }

    /// The idle expiry of device tokens in ms, `None` when they never expire.
    pub fn token_idle_expiry_ms(&self) -> Option<i64> {
        (self.token_idle_expiry_secs > 0).then(|| {
            i64::try_from(self.token_idle_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
        })
    }

    /// How many sync worker threads to start (`sync_workers`, 0 meaning twice the cores).
    pub fn sync_worker_threads(&self) -> usize {
        match self.sync_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            n => n,
        }
    }

    /// How long idle documents stay loaded.
    pub fn idle_unload(&self) -> Duration {
        Duration::from_secs(self.idle_unload_secs)
    }

    /// The certificate and key files when TLS is on; an error naming the missing one when only
    /// one of them is given.
    pub fn tls_files(&self) -> Result<Option<(&Path, &Path)>, String> {
        let missing = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => return Ok(Some((c, k))),
            (None, None) => return Ok(None),
            (Some(_), None) => ("tls_cert", "tls_key"),
            (None, Some(_)) => ("tls_key", "tls_cert"),
        };
        Err(format!(
            "{} is set but {} is not: give both (--tls-cert and --tls-key, or TALLY_TLS_CERT \
             and TALLY_TLS_KEY), or neither for plain HTTP",
            missing.0, missing.1
        ))
    }

    /// The URL phones use: `public_url`, else `https://LISTEN` with TLS or `http://LISTEN`.
    pub fn public_url(&self) -> String {
        let scheme = match self.tls_files() {
            Ok(Some(_)) => "https",
            _ => "http",
        };
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.listen))
    }

    /// The settings that differ from the defaults, as `key=value` (for the audit log's
    /// `server.start` entry; the configuration holds no secret, only paths and numbers).
    pub fn changed_settings(&self) -> Vec<String> {
        let as_table = |c: &Config| match toml::Value::try_from(c) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::map::Map::new(),
        };
        let (now, default) = (as_table(self), as_table(&Config::default()));
        now.iter()
            .filter(|(k, v)| default.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// A commented example configuration file.
    pub fn example() -> String {
        let body = toml::to_string_pretty(&Config::default()).expect("config serializes");
        format!(
            "# tally server configuration. Every key is optional; shown are the defaults.\n\
             # Each can also be set as an environment variable: TALLY_<KEY IN UPPER CASE>.\n\
             # public_url = \"https://tally.example.org\"\n\
             # metrics_listen = \"127.0.0.1:9300\"\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "max_connections = 5\nidle_unload_secs = 9\n").unwrap();
        let mut cfg: Config = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            (
                cfg.max_connections,
                cfg.idle_unload_secs,
                cfg.max_frame_bytes
            ),
            (5, 9, Config::default().max_frame_bytes)
        );
        cfg.apply_env(env(&[("TALLY_IDLE_UNLOAD_SECS", "2"), ("PATH", "/bin")]))
            .unwrap();
        // The variable wins over the file; what it does not name keeps the file's value.
        assert_eq!((cfg.idle_unload_secs, cfg.max_connections), (2, 5));
        let err = cfg
            .apply_env(env(&[("TALLY_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TALLY_LISTEN=\"nowhere\" is invalid: expected HOST:PORT"),
            "{err}"
        );
        let err = cfg
            .apply_env(env(&[("TALLY_MAX_CONNECTIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TALLY_MAX_CONNECTIONS=\"many\" is invalid: expected a whole number"),
            "{err}"
        );
        for (name, value) in [
            ("TALLY_SYNC_WORKERS_NICENESS", "20"),
            ("TALLY_LOG_FORMAT", "xml"),
            ("TALLY_MAX_AUTH_FAILURES", "5000000000"),
        ] {
            let err = cfg
                .apply_env(env(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{name}={value:?} is invalid")),
                "{err}"
            );
        }
        // A refused layer changes nothing.
        assert_eq!(cfg.idle_unload_secs, 2);
        assert!(
            toml::from_str::<Config>("listen_on = 1")
                .unwrap_err()
                .to_string()
                .contains("listen_on")
        );
        std::fs::write(&file, "sync_workers_niceness = -3\n").unwrap();
        let err = Config::load(Some(&file), None).unwrap_err().to_string();
        assert!(
            err.contains("sync_workers_niceness is invalid: expected 0 to 19"),
            "{err}"
        );
        let example: Config = toml::from_str(&Config::example()).unwrap();
        assert_eq!(example, Config::default());
    }

    #[test]
    fn refused_records_come_from_the_file_or_the_environment() {
        let mut cfg: Config = toml::from_str("refuse_records = [\"sig-1\", \"ci-2\"]\n").unwrap();
        assert_eq!(cfg.refuse_records, ["sig-1", "ci-2"]);
        cfg.apply_env(env(&[("TALLY_REFUSE_RECORDS", " a, b ,,")]))
            .unwrap();
        assert_eq!(cfg.refuse_records, ["a", "b"]);
    }

    /// A configuration with every key away from its default (and every optional one set).
    fn everything_changed() -> Config {
        Config {
            listen: "127.0.0.2:7301".parse().unwrap(),
            data: PathBuf::from("/srv/tally"),
            public_url: Some("https://tally.example.org".into()),
            database_url: Some("postgres://tally:secret@db.example.org:5432/tally".into()),
            tls_cert: Some(PathBuf::from("/etc/tally/cert.pem")),
            tls_key: Some(PathBuf::from("/etc/tally/key.pem")),
            max_database_kib: 1,
            max_frame_bytes: 2,
            max_documents_per_device: 3,
            max_keys_per_device: 38,
            max_connections: 4,
            idle_unload_secs: 5,
            max_loaded_documents: 6,
            compact_after_chunks: 7,
            invite_ttl_hours: 8,
            log_format: LogFormat::Json,
            max_auth_failures: 9,
            auth_window_secs: 10,
            max_connections_per_address: 11,
            max_pending_connections: 12,
            header_read_timeout_secs: 13,
            request_body_timeout_secs: 14,
            max_connections_per_device: 15,
            ping_interval_secs: 16,
            idle_timeout_secs: 17,
            max_streams_per_device: 18,
            max_streams: 19,
            max_enrollments_per_address: 200,
            enroll_window_secs: 21,
            send_timeout_secs: 22,
            token_idle_expiry_secs: 23,
            totals_document_secs: 24,
            projection_delay_ms: 39,
            sync_workers: 25,
            sync_workers_niceness: 19,
            suppress_below: 26,
            max_ops_per_message: 27,
            max_frames_per_second: 28,
            frame_burst: 29,
            max_pending_bytes_per_document: 30,
            max_pending_bytes_per_device: 31,
            quarantine_max_raw_bytes: 32,
            quarantine_raw_bytes_per_device: 33,
            quarantine_raw_bytes_total: 34,
            quarantine_entries_per_device: 35,
            quarantine_entries_total: 36,
            quarantine_retention_days: 37,
            refuse_records: vec!["sig-1".into(), "ci-2".into()],
            metrics_listen: Some("127.0.0.1:9300".into()),
        }
    }

    fn table(cfg: &Config) -> toml::Table {
        match toml::Value::try_from(cfg).unwrap() {
            toml::Value::Table(t) => t,
            other => panic!("not a table: {other}"),
        }
    }

    #[test]
    fn each_known_name_sets_its_field_and_only_it() {
        let changed = table(&everything_changed());
        let default = table(&Config::default());
        assert_eq!(
            Config::keys().len(),
            changed.len(),
            "a key is left unset above"
        );
        for key in Config::keys() {
            let name = env_name(key);
            let value = match &changed[*key] {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Array(ids) => ids
                    .iter()
                    .map(|id| id.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(", "),
                other => panic!("{key}: no text for {other}"),
            };
            assert_ne!(changed.get(*key), default.get(*key), "{key} is not changed");
            let mut cfg = Config::default();
            cfg.apply_env(env(&[(&name, &value)]))
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            let now = table(&cfg);
            for k in Config::keys() {
                let want = if k == key { &changed } else { &default };
                assert_eq!(now.get(*k), want.get(*k), "{name}={value} and {k}");
            }
        }
    }

    #[test]
    fn a_value_that_looks_like_a_number_stays_text_where_text_is_wanted() {
        let mut cfg = Config::default();
        cfg.apply_env(env(&[
            ("TALLY_DATA", "2026"),
            ("TALLY_PUBLIC_URL", "7300"),
            ("TALLY_REFUSE_RECORDS", "12,true"),
        ]))
        .unwrap();
        assert_eq!(cfg.data, PathBuf::from("2026"));
        assert_eq!(cfg.public_url.as_deref(), Some("7300"));
        assert_eq!(cfg.refuse_records, ["12", "true"]);
    }

    #[test]
    fn an_unknown_tally_name_is_refused_with_the_list_of_known_ones() {
        for names in [
            &["TALLY_LISTEN_ON"][..],
            &["TALLY_MAX_CONECTIONS", "TALLY_listen"],
            &["TALLY_"],
        ] {
            let vars: Vec<_> = names.iter().map(|n| (*n, "1")).collect();
            let err = Config::default().apply_env(env(&vars)).unwrap_err();
            assert!(matches!(err, ConfigError::UnknownEnv { .. }), "{err:?}");
            let text = err.to_string();
            let mut sorted = names.to_vec();
            sorted.sort();
            assert!(text.starts_with("unknown environment variable"), "{text}");
            assert!(text.contains(&sorted.join(", ")), "{text}");
            for known in Config::env_names() {
                assert!(text.contains(&known), "{known} missing from: {text}");
            }
            assert!(text.contains("TALLY_SERVER"), "{text}");
        }
        // Names of other programs pass, whatever their value; so do other variables.
        let mut cfg = Config::default();
        let others: Vec<_> = OTHER_PROGRAMS_VARIABLES
            .iter()
            .map(|(n, _)| (*n, "anything"))
            .chain([("PATH", "/bin"), ("TALLY", "x"), ("XTALLY_LISTEN", "y")])
            .collect();
        cfg.apply_env(env(&others)).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn debug_hides_a_urls_password() {
        let cfg = Config {
            public_url: Some("https://ops:hunter2@tally.example.org/x".into()),
            database_url: Some("postgres://tally:s3cret@db:5432/tally".into()),
            ..Config::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("ops:"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && shown.contains("postgres://<redacted>@db:5432/tally"),
            "{shown}"
        );
        let printed = toml::to_string(&cfg.redacted()).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            shown.contains("https://<redacted>@tally.example.org/x"),
            "{shown}"
        );
        assert!(shown.contains("max_connections"), "{shown}");
        assert_eq!(
            redact_url("postgres://u:p@db:5432/tally"),
            "postgres://<redacted>@db:5432/tally"
        );
        assert_eq!(redact_url("http://a@b/c@d"), "http://<redacted>@b/c@d");
        assert_eq!(redact_url("http://host/x"), "http://host/x");
    }

    /// Every `TALLY_*` name written anywhere in the repository (code, scripts, docs, tests) is a
    /// configuration key's or listed in `OTHER_PROGRAMS_VARIABLES`: a program that starts
    /// reading a new one must list it there, or `tally serve` started beside it would refuse it.
    #[test]
    fn every_tally_variable_in_the_repository_is_known() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        // Placeholders the app's build replaces in its service worker, and the misspelling
        // docs/operations.md shows refused: not variables.
        let placeholders = ["TALLY_VERSION", "TALLY_PRECACHE", "TALLY_LISTN"];
        let known: Vec<String> = Config::env_names()
            .into_iter()
            .chain(OTHER_PROGRAMS_VARIABLES.iter().map(|(n, _)| n.to_string()))
            .chain(placeholders.iter().map(|n| n.to_string()))
            .collect();
        let mut unknown = std::collections::BTreeSet::new();
        let mut stack = vec![root.to_path_buf()];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if path.is_dir() {
                    if !["target", "node_modules", ".git", "dist"].contains(&name.as_str()) {
                        stack.push(path);
                    }
                    continue;
                }
                if path.ends_with("server/src/config.rs") {
                    continue; // this file: its tests write unknown names on purpose
                }
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                files += 1;
                for (at, _) in text.match_indices(ENV_PREFIX) {
                    let before = text[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                        continue;
                    }
                    let rest = &text[at + ENV_PREFIX.len()..];
                    let len = rest
                        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(rest.len());
                    let var = format!("{ENV_PREFIX}{}", rest[..len].trim_end_matches('_'));
                    if var != ENV_PREFIX && !known.contains(&var) {
                        unknown.insert(format!("{var} ({})", path.display()));
                    }
                }
            }
        }
        assert!(
            files > 100,
            "read only {files} files under {}",
            root.display()
        );
        assert!(
            unknown.is_empty(),
            "TALLY_* names neither a configuration key nor in OTHER_PROGRAMS_VARIABLES: {unknown:?}"
        );
    }
}
