//! Server configuration in layers: built-in defaults, then a TOML file (`--config FILE`, or
//! `DATA/tally.toml` when present), then `TALLY_*` environment variables, then command-line
//! flags. `tally config` prints a commented example file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `tally serve` can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder for the database and the admin token.
    pub data: PathBuf,
    /// URL phones use to reach this server (printed in enrollment payloads); defaults to
    /// `http://LISTEN`.
    pub public_url: Option<String>,
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
    pub log_format: String,
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
            tls_cert: None,
            tls_key: None,
            max_database_kib: 0,
            max_frame_bytes: 16 * 1024 * 1024,
            max_documents_per_device: 64,
            max_connections: 10_000,
            idle_unload_secs: 60,
            compact_after_chunks: 64,
            max_loaded_documents: 128,
            invite_ttl_hours: 72,
            log_format: "text".into(),
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
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?} is invalid: {why}")]
    Env {
        name: String,
        value: String,
        why: String,
    },
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
        }
        cfg.apply_env(std::env::vars())?;
        Ok(cfg)
    }

    /// Applies `TALLY_*` variables.
    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("TALLY_") else {
                continue;
            };
            let bad = |why: &str| ConfigError::Env {
                name: name.clone(),
                value: value.clone(),
                why: why.into(),
            };
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad("expected a whole number"));
            match key {
                "LISTEN" => {
                    self.listen = value
                        .parse()
                        .map_err(|_| bad("expected HOST:PORT, e.g. 127.0.0.1:7300"))?
                }
                "DATA" => self.data = PathBuf::from(&value),
                "PUBLIC_URL" => self.public_url = Some(value.clone()),
                "METRICS_LISTEN" => self.metrics_listen = Some(value.clone()),
                "TLS_CERT" => self.tls_cert = Some(PathBuf::from(&value)),
                "TLS_KEY" => self.tls_key = Some(PathBuf::from(&value)),
                "MAX_DATABASE_KIB" => self.max_database_kib = num(&value)?,
                "MAX_FRAME_BYTES" => self.max_frame_bytes = num(&value)? as usize,
                "MAX_DOCUMENTS_PER_DEVICE" => self.max_documents_per_device = num(&value)?,
                "MAX_CONNECTIONS" => self.max_connections = num(&value)? as usize,
                "IDLE_UNLOAD_SECS" => self.idle_unload_secs = num(&value)?,
                "COMPACT_AFTER_CHUNKS" => self.compact_after_chunks = num(&value)?,
                "MAX_LOADED_DOCUMENTS" => self.max_loaded_documents = num(&value)? as usize,
                "INVITE_TTL_HOURS" => self.invite_ttl_hours = num(&value)?,
                "SUPPRESS_BELOW" => self.suppress_below = num(&value)?,
                "MAX_AUTH_FAILURES" => {
                    self.max_auth_failures =
                        u32::try_from(num(&value)?).map_err(|_| bad("number too large"))?
                }
                "AUTH_WINDOW_SECS" => self.auth_window_secs = num(&value)?,
                "MAX_CONNECTIONS_PER_ADDRESS" => {
                    self.max_connections_per_address = num(&value)? as usize
                }
                "MAX_PENDING_CONNECTIONS" => self.max_pending_connections = num(&value)? as usize,
                "HEADER_READ_TIMEOUT_SECS" => self.header_read_timeout_secs = num(&value)?,
                "REQUEST_BODY_TIMEOUT_SECS" => self.request_body_timeout_secs = num(&value)?,
                "MAX_CONNECTIONS_PER_DEVICE" => {
                    self.max_connections_per_device = num(&value)? as usize
                }
                "PING_INTERVAL_SECS" => self.ping_interval_secs = num(&value)?,
                "IDLE_TIMEOUT_SECS" => self.idle_timeout_secs = num(&value)?,
                "MAX_STREAMS_PER_DEVICE" => self.max_streams_per_device = num(&value)? as usize,
                "MAX_STREAMS" => self.max_streams = num(&value)? as usize,
                "MAX_ENROLLMENTS_PER_ADDRESS" => {
                    self.max_enrollments_per_address =
                        u32::try_from(num(&value)?).map_err(|_| bad("number too large"))?
                }
                "ENROLL_WINDOW_SECS" => self.enroll_window_secs = num(&value)?,
                "SEND_TIMEOUT_SECS" => self.send_timeout_secs = num(&value)?,
                "TOKEN_IDLE_EXPIRY_SECS" => self.token_idle_expiry_secs = num(&value)?,
                "TOTALS_DOCUMENT_SECS" => self.totals_document_secs = num(&value)?,
                "SYNC_WORKERS" => self.sync_workers = num(&value)? as usize,
                "SYNC_WORKERS_NICENESS" => {
                    self.sync_workers_niceness = i32::try_from(num(&value)?)
                        .ok()
                        .filter(|n| *n <= 19)
                        .ok_or_else(|| bad("expected 0 to 19"))?
                }
                "MAX_OPS_PER_MESSAGE" => self.max_ops_per_message = num(&value)?,
                "MAX_FRAMES_PER_SECOND" => {
                    self.max_frames_per_second =
                        u32::try_from(num(&value)?).map_err(|_| bad("number too large"))?
                }
                "FRAME_BURST" => {
                    self.frame_burst =
                        u32::try_from(num(&value)?).map_err(|_| bad("number too large"))?
                }
                "MAX_PENDING_BYTES_PER_DOCUMENT" => {
                    self.max_pending_bytes_per_document = num(&value)? as usize
                }
                "MAX_PENDING_BYTES_PER_DEVICE" => {
                    self.max_pending_bytes_per_device = num(&value)? as usize
                }
                "QUARANTINE_MAX_RAW_BYTES" => self.quarantine_max_raw_bytes = num(&value)? as usize,
                "QUARANTINE_RAW_BYTES_PER_DEVICE" => {
                    self.quarantine_raw_bytes_per_device = num(&value)?
                }
                "QUARANTINE_RAW_BYTES_TOTAL" => self.quarantine_raw_bytes_total = num(&value)?,
                "QUARANTINE_ENTRIES_PER_DEVICE" => {
                    self.quarantine_entries_per_device = num(&value)?
                }
                "QUARANTINE_ENTRIES_TOTAL" => self.quarantine_entries_total = num(&value)?,
                "QUARANTINE_RETENTION_DAYS" => self.quarantine_retention_days = num(&value)?,
                "REFUSE_RECORDS" => {
                    self.refuse_records = value
                        .split(',')
                        .map(str::trim)
                        .filter(|id| !id.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "LOG_FORMAT" => {
                    if value != "text" && value != "json" {
                        return Err(bad("expected text or json"));
                    }
                    self.log_format = value.clone();
                }
                _ => {} // TALLY_ADMIN_TOKEN, TALLY_SERVER etc. belong to the command line client.
            }
        }
        Ok(())
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
        cfg.apply_env(
            [
                ("TALLY_IDLE_UNLOAD_SECS".to_string(), "2".to_string()),
                ("PATH".into(), "/bin".into()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(cfg.idle_unload_secs, 2);
        let err = cfg
            .apply_env([("TALLY_LISTEN".to_string(), "nowhere".to_string())].into_iter())
            .unwrap_err();
        assert!(err.to_string().contains("TALLY_LISTEN"));
        assert!(
            toml::from_str::<Config>("listen_on = 1")
                .unwrap_err()
                .to_string()
                .contains("listen_on")
        );
        let example: Config = toml::from_str(&Config::example()).unwrap();
        assert_eq!(example, Config::default());
    }

    #[test]
    fn refused_records_come_from_the_file_or_the_environment() {
        let mut cfg: Config = toml::from_str("refuse_records = [\"sig-1\", \"ci-2\"]\n").unwrap();
        assert_eq!(cfg.refuse_records, ["sig-1", "ci-2"]);
        cfg.apply_env([("TALLY_REFUSE_RECORDS".to_string(), " a, b ,,".to_string())].into_iter())
            .unwrap();
        assert_eq!(cfg.refuse_records, ["a", "b"]);
    }
}
