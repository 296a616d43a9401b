//! The PostgreSQL backend (issue 17): [`PgStore`] implements the storage interface
//! ([`crate::Storage`], `backend`) over a pool of PostgreSQL clients, with the same behaviours
//! as SQLite's [`crate::Store`] (the conformance suite, `tests/conformance.rs`, plays every one
//! on both). Modules: `documents` (documents, chunks, compaction, sync states), `devices`
//! (devices, tokens, invites), `quarantine`, `audit` (the chain), `keys` (record keys and
//! erasure), `projection` (the totals projection), `backend` (the traits over them).
//!
//! Several servers may share one database: writes to one document are serialized by a row lock
//! on its `documents` row; the audit chain, the quarantine's quotas, a campaign's projection
//! and its record keys each by an advisory lock held until the transaction ends (see each
//! module). A change stored by one server reaches the others by `NOTIFY` (`listen`,
//! [`crate::Storage::subscribe`]).
//!
//! Driver: the synchronous `postgres` crate (0.19). The store's calls already run on blocking
//! threads (`spawn_blocking`, the hub's writer), like SQLite's, so an async driver would only
//! add a runtime inside a runtime; `r2d2_postgres` is not among the crates this workspace can
//! resolve, so the pool is `Pool`, a bounded set of clients behind a mutex: a call waits at
//! most [`POOL_WAIT`] for a free client, a client that lost its connection is dropped (and a
//! new one opened on the next call), so the store reconnects by itself after an outage.
//!
//! Durability: every session runs with `synchronous_commit = on`, so a transaction's `COMMIT`
//! returns only once its WAL record is flushed (fsynced, with the server's `fsync = on`): the
//! same promise as SQLite's `synchronous=FULL`, "committed before acknowledged".
//!
//! Migrations: the table `tally_schema` holds the number of migrations applied; opening a store
//! applies the missing ones in one transaction that first takes an advisory lock named after the
//! schema, so several servers starting at once on one database migrate it once. PostgreSQL's
//! versions count from 1 on their own (the first is SQLite's schema version 8 as one step);
//! append-only, like SQLite's.

mod audit;
mod backend;
mod devices;
mod documents;
mod keys;
mod listen;
mod projection;
mod quarantine;
mod queue;

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::error::{Result, StoreError};

/// How long a call waits for one of the pool's clients before failing with
/// [`StoreError::Unavailable`].
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long opening a connection to PostgreSQL may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool's size when the caller does not choose one.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// The migrations, in order; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// The tables and columns are SQLite's (`schema.rs`), in PostgreSQL's types: `BIGINT` for
/// integers (times in ms, counts), `BOOLEAN` for flags, `BYTEA` for bytes, identity columns for
/// SQLite's rowids and for the aggregate cells' ids (so that servers adding cells at once never
/// pick the same one).
const MIGRATIONS: &[&str] = &[
    // v1: everything of SQLite's schema version 8.
    r#"
    CREATE TABLE documents (
        doc_id     TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        campaign   TEXT NOT NULL,
        owner      TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX documents_by_campaign ON documents (campaign, kind);
    CREATE INDEX documents_by_kind ON documents (kind);
    CREATE INDEX documents_by_owner ON documents (owner) WHERE owner IS NOT NULL;

    CREATE TABLE chunks (
        doc_id     TEXT NOT NULL REFERENCES documents (doc_id) ON DELETE CASCADE,
        seq        BIGINT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('snapshot', 'incremental')),
        bytes      BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (doc_id, seq)
    );
    CREATE UNIQUE INDEX chunks_one_snapshot ON chunks (doc_id) WHERE kind = 'snapshot';

    CREATE TABLE sync_states (
        peer_key   TEXT NOT NULL,
        doc_id     TEXT NOT NULL REFERENCES documents (doc_id) ON DELETE CASCADE,
        bytes      BYTEA NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (peer_key, doc_id)
    );
    CREATE INDEX sync_states_by_doc ON sync_states (doc_id);

    CREATE TABLE devices (
        device_id  TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'organizer', 'canvasser')),
        campaign   TEXT,
        token_hash BYTEA NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT,
        last_seen  BIGINT,
        replaces   TEXT,
        lineage    TEXT NOT NULL
    );
    CREATE INDEX devices_by_revoked_at ON devices (revoked_at) WHERE revoked_at IS NOT NULL;
    CREATE INDEX devices_by_lineage ON devices (lineage);

    CREATE TABLE invites (
        invite_id  TEXT PRIMARY KEY,
        code_hash  BYTEA NOT NULL UNIQUE,
        campaign   TEXT,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'organizer', 'canvasser')),
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at    BIGINT,
        device_id  TEXT REFERENCES devices (device_id)
    );

    CREATE TABLE quarantine (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        device_id     TEXT NOT NULL,
        doc_id        TEXT NOT NULL,
        at            BIGINT NOT NULL,
        reason        TEXT NOT NULL,
        bytes         BYTEA NOT NULL,
        size          BIGINT NOT NULL DEFAULT 0,
        digest        TEXT NOT NULL DEFAULT '',
        change_hashes TEXT NOT NULL DEFAULT '',
        rule          TEXT,
        repeats       BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX quarantine_by_at ON quarantine (at);
    CREATE INDEX quarantine_by_device ON quarantine (device_id, at);
    CREATE INDEX quarantine_by_doc ON quarantine (doc_id, at);

    CREATE TABLE signatures (
        doc_id       TEXT NOT NULL,
        sig_id       TEXT NOT NULL,
        campaign     TEXT NOT NULL,
        event        TEXT,
        collected_at BIGINT NOT NULL,
        day          TEXT NOT NULL,
        collected_by TEXT NOT NULL,
        city         TEXT NOT NULL,
        city_key     TEXT,
        fsa          TEXT NOT NULL,
        riding       TEXT,
        consent      BOOLEAN NOT NULL,
        dup          TEXT NOT NULL,
        withdrawn    BOOLEAN NOT NULL,
        PRIMARY KEY (doc_id, sig_id)
    );
    CREATE INDEX signatures_by_campaign ON signatures (campaign, sig_id);
    CREATE INDEX signatures_by_event ON signatures (campaign, event);
    CREATE INDEX signatures_by_time ON signatures (campaign, collected_at);
    CREATE INDEX signatures_by_city_key ON signatures (campaign, city_key);
    CREATE INDEX signatures_by_fsa ON signatures (campaign, fsa);

    CREATE TABLE checkins (
        doc_id    TEXT NOT NULL,
        ci_id     TEXT NOT NULL,
        campaign  TEXT NOT NULL,
        event     TEXT NOT NULL,
        attendee  TEXT NOT NULL,
        at        BIGINT NOT NULL,
        by_id     TEXT NOT NULL,
        walk_in   BOOLEAN NOT NULL,
        withdrawn BOOLEAN NOT NULL,
        PRIMARY KEY (doc_id, ci_id)
    );
    CREATE INDEX checkins_by_campaign ON checkins (campaign, event);
    CREATE INDEX checkins_by_id ON checkins (campaign, ci_id);

    CREATE TABLE strikes (
        campaign TEXT NOT NULL,
        sig_id   TEXT NOT NULL,
        reason   TEXT NOT NULL,
        by_id    TEXT NOT NULL,
        at       BIGINT NOT NULL,
        revoked  BOOLEAN NOT NULL,
        PRIMARY KEY (campaign, sig_id)
    );

    CREATE TABLE sheets (
        campaign TEXT NOT NULL,
        serial   TEXT NOT NULL,
        count    BIGINT NOT NULL,
        riding   TEXT,
        status   TEXT NOT NULL,
        PRIMARY KEY (campaign, serial)
    );

    CREATE TABLE agg_cells (
        campaign TEXT NOT NULL,
        dim      TEXT NOT NULL,
        key      TEXT NOT NULL,
        key_id   BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
        n        BIGINT NOT NULL,
        uniq     BIGINT NOT NULL,
        PRIMARY KEY (campaign, dim, key)
    );
    CREATE TABLE agg_tokens (
        token_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        campaign TEXT NOT NULL,
        token    TEXT NOT NULL,
        UNIQUE (campaign, token)
    );
    CREATE TABLE agg_members (
        key_id   BIGINT NOT NULL,
        token_id BIGINT NOT NULL,
        n        BIGINT NOT NULL,
        PRIMARY KEY (key_id, token_id)
    );
    CREATE TABLE projection_state (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE audit (
        seq        BIGINT PRIMARY KEY,
        at         BIGINT NOT NULL,
        actor_id   TEXT NOT NULL,
        actor_name TEXT NOT NULL,
        action     TEXT NOT NULL,
        campaign   TEXT,
        target     TEXT NOT NULL,
        result     TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE INDEX audit_by_campaign ON audit (campaign, seq);

    CREATE TABLE record_keys (
        campaign  TEXT NOT NULL,
        record    TEXT NOT NULL,
        device    TEXT NOT NULL,
        wrapped   BYTEA NOT NULL,
        stored_at BIGINT NOT NULL,
        PRIMARY KEY (campaign, record, device)
    );
    CREATE INDEX record_keys_by_device ON record_keys (device);
    CREATE TABLE erased_records (
        campaign  TEXT NOT NULL,
        record    TEXT NOT NULL,
        erased_at BIGINT NOT NULL,
        by_id     TEXT NOT NULL,
        PRIMARY KEY (campaign, record)
    );
    "#,
    // v2: SQLite's 9, the record facts of filtered totals (issue 18).
    projection::FACTS_SCHEMA,
    // v3: SQLite's 10, the claims and the projection queue (issue 18).
    concat!(
        r#"
    CREATE TABLE record_claims (
        campaign  TEXT NOT NULL,
        container TEXT NOT NULL,
        id        TEXT NOT NULL,
        lineage   TEXT NOT NULL,
        PRIMARY KEY (campaign, container, id)
    );
    CREATE TABLE projection_queue (
        id       BIGSERIAL PRIMARY KEY,
        campaign TEXT NOT NULL,
        doc_id   TEXT NOT NULL,
        records  BIGINT NOT NULL,
        at       BIGINT NOT NULL,
        payload  BYTEA NOT NULL
    );
    "#,
        queue::claim_rows!()
    ),
];

/// The PostgreSQL schema version this build writes and reads.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The server's storage in a PostgreSQL database (see the module's documentation for what is
/// there so far).
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.pool.target)
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) with a
    /// pool of [`DEFAULT_CONNECTIONS`] clients and applies any missing migration.
    pub fn connect(url: &str) -> Result<PgStore> {
        let config: postgres::Config = url.parse().map_err(|err| {
            StoreError::Invalid(format!(
                "the database URL is not a PostgreSQL connection URL ({err}): write it as \
                 postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        PgStore::connect_with(config, DEFAULT_CONNECTIONS)
    }

    /// Like [`PgStore::connect`], from a parsed configuration (e.g. with a `search_path` in its
    /// options) and with at most `max_connections` clients.
    pub fn connect_with(mut config: postgres::Config, max_connections: usize) -> Result<PgStore> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let pool = Pool::new(config, max_connections.max(1));
        let store = PgStore { pool };
        store.migrate()?;
        Ok(store)
    }

    /// Where the store's database is (host, port and database name; never a password).
    pub fn target(&self) -> &str {
        &self.pool.target
    }

    /// Hears every change stored in the database (by this server or another) by `LISTEN` on a
    /// connection of its own, from a thread of its own, until the subscription is dropped
    /// (see `listen`).
    pub fn subscribe(
        &self,
        on_change: std::sync::Arc<dyn Fn(crate::Change) + Send + Sync>,
    ) -> Result<crate::Subscription> {
        listen::subscribe(
            self.pool.config.clone(),
            self.pool.target.clone(),
            on_change,
        )
    }

    /// Background work one server at a time must do (see [`crate::Storage::try_exclusive`]):
    /// a session-level advisory lock named after `what`, tried without waiting and held on a
    /// pooled client of its own until the returned guard is dropped (or that connection dies,
    /// which lets go of it too).
    pub fn try_exclusive(&self, what: &str) -> Result<Option<crate::Exclusive<'_>>> {
        let mut conn = self.pool.get()?;
        let held = conn.run(|client| {
            let row = client.query_one(
                "SELECT pg_try_advisory_lock(hashtext('tally once ' || current_schema() || ' ' || $1))",
                &[&what],
            )?;
            Ok(row.get::<_, bool>(0))
        })?;
        Ok(held.then(|| {
            crate::Exclusive::held_by(Advisory {
                conn,
                what: what.to_string(),
            })
        }))
    }

    /// The schema version found in the database.
    pub fn schema_version(&self) -> Result<i64> {
        let mut conn = self.pool.get()?;
        conn.run(|client| {
            let row = client.query_one("SELECT version FROM tally_schema", &[])?;
            Ok(row.get(0))
        })
    }

    /// Runs `f` inside one transaction and commits it before returning `Ok`: with
    /// `synchronous_commit = on`, the durability point after which the server may acknowledge.
    /// If `f` fails, the transaction rolls back and nothing of it is kept; if the commit fails
    /// for want of the connection, the error is [`StoreError::Unavailable`] (nothing was
    /// acknowledged, and a retry of an idempotent write is safe).
    fn write<T>(&self, f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.pool.get()?;
        conn.run(|client| {
            let mut tx = client.transaction()?;
            // On an error the dropped transaction rolls back.
            let value = f(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Runs `f` inside one read-only snapshot (`REPEATABLE READ`), so that several queries see
    /// one state of the database.
    fn read<T>(&self, f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.pool.get()?;
        conn.run(|client| {
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let value = f(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Runs `f` on a client outside any transaction (for statements that refuse to run in one,
    /// such as VACUUM).
    fn plain<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut conn = self.pool.get()?;
        conn.run(f)
    }

    /// [`PgStore::write`] for the storage traits: `f` gets the transaction as `Writes`.
    fn write_tx(&self, f: impl FnOnce(&backend::PgTx<'_>) -> Result<()>) -> Result<()> {
        let mut conn = self.pool.get()?;
        conn.run(|client| {
            let tx = backend::PgTx::new(client.transaction()?);
            f(&tx)?;
            tx.commit()
        })
    }

    /// [`PgStore::read`] for the storage traits: `f` gets the snapshot as `Reads`.
    fn read_tx(&self, f: impl FnOnce(&backend::PgTx<'_>) -> Result<()>) -> Result<()> {
        let mut conn = self.pool.get()?;
        conn.run(|client| {
            let tx = backend::PgTx::new(
                client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?,
            );
            f(&tx)?;
            tx.commit()
        })
    }

    /// How many clients the pool holds open right now (idle or in use).
    pub fn open_connections(&self) -> usize {
        self.pool.lock().open
    }

    /// Applies every missing migration in one transaction, under an advisory lock named after
    /// the schema so that servers starting together migrate once. Idempotent.
    fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.get()?;
        conn.run(|client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('tally migrate ' || current_schema()))",
                &[],
            )?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS tally_schema (version BIGINT NOT NULL)")?;
            let found: Option<i64> = tx
                .query_opt("SELECT version FROM tally_schema", &[])?
                .map(|row| row.get(0));
            let found = match found {
                Some(found) => found,
                None => {
                    tx.execute("INSERT INTO tally_schema (version) VALUES (0)", &[])?;
                    0
                }
            };
            if found > PG_SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found,
                    supported: PG_SCHEMA_VERSION,
                });
            }
            if found < 0 {
                return Err(StoreError::Invalid(format!(
                    "the database's tally_schema.version is {found}, which tally never writes: \
                     is this database (and schema) tally's?"
                )));
            }
            for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "UPDATE tally_schema SET version = $1",
                    &[&(index as i64 + 1)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

/// A bounded pool of PostgreSQL clients.
struct Pool {
    config: postgres::Config,
    max: usize,
    /// host:port/database, for messages.
    target: String,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Client>,
    /// Clients open: idle ones and those lent out.
    open: usize,
}

impl Pool {
    fn new(config: postgres::Config, max: usize) -> Pool {
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let target = format!(
            "{}:{}/{}",
            hosts.join(","),
            if ports.is_empty() {
                "5432".to_string()
            } else {
                ports.join(",")
            },
            config.get_dbname().unwrap_or("")
        );
        Pool {
            config,
            max,
            target,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is a list and a count, consistent after every statement: safe to take over.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A client: an idle one, a new one if fewer than `max` are open, else the first one freed
    /// within [`POOL_WAIT`].
    fn get(&self) -> Result<Conn<'_>> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut state = self.lock();
        loop {
            while let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    off_runtime(|| drop(client));
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                    discard: false,
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.open_client() {
                    Ok(client) => Ok(Conn {
                        pool: self,
                        client: Some(client),
                        discard: false,
                    }),
                    Err(err) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(err)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::unavailable(
                    format!(
                        "all {} connections to PostgreSQL at {} stayed busy for {} s: nothing \
                         was acknowledged, retry (or raise the pool's size)",
                        self.max,
                        self.target,
                        POOL_WAIT.as_secs()
                    ),
                    "no free connection in the pool",
                ));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn open_client(&self) -> Result<Client> {
        let mut client = off_runtime(|| self.config.connect(NoTls)).map_err(|err| {
            if err.as_db_error().is_some() {
                StoreError::from(err)
            } else {
                StoreError::unavailable(
                    format!(
                        "cannot connect to PostgreSQL at {}: nothing was acknowledged, retry \
                         once it is up (check that it runs and accepts connections there)",
                        self.target
                    ),
                    err,
                )
            }
        })?;
        // Committed means flushed to the WAL on disk before COMMIT returns; a lock held by
        // another session past the store's busy timeout fails the call (as SQLite's busy
        // timeout does) instead of hanging the server.
        off_runtime(|| {
            client.batch_execute(&format!(
                "SET synchronous_commit = on; SET lock_timeout = {}",
                crate::BUSY_TIMEOUT.as_millis()
            ))
        })?;
        Ok(client)
    }
}

/// Runs `f`, which drives a client's own small runtime (the synchronous `postgres` crate's),
/// outside the caller's tokio runtime if it is called on one of its worker threads (the
/// server calls the store from async code too): there, `block_in_place` lets the worker's other
/// tasks move to another thread while `f` blocks. Elsewhere (blocking threads, tests), it just
/// runs `f`.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        off_runtime(|| drop(idle));
    }
}

/// A client lent by the pool, given back when dropped (or closed, if its connection failed).
struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    discard: bool,
}

impl Conn<'_> {
    /// Runs `f` on the client; if it fails with [`StoreError::Unavailable`], the client is not
    /// given back to the pool (its connection is likely gone), so the next call reconnects.
    fn run<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let client = self.client.as_mut().ok_or_else(|| {
            StoreError::Invalid(
                "a pooled PostgreSQL client was used after it was given back".into(),
            )
        })?;
        let outcome = off_runtime(|| f(client));
        if matches!(outcome, Err(StoreError::Unavailable { .. })) {
            self.discard = true;
            // An idle client's connection is driven only while it is used, so one whose server
            // went away still looks open: after one failure, let every idle client go, so that
            // the next call connects afresh (the server reconnects by itself once PostgreSQL is
            // back) instead of failing once per stale client.
            let idle = {
                let mut state = self.pool.lock();
                let idle = std::mem::take(&mut state.idle);
                state.open -= idle.len();
                idle
            };
            off_runtime(|| drop(idle));
            self.pool.freed.notify_all();
        }
        outcome
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if self.discard || client.is_closed() {
            state.open -= 1;
            drop(state);
            off_runtime(|| drop(client));
        } else {
            state.idle.push(client);
            drop(state);
        }
        self.pool.freed.notify_one();
    }
}

/// A session-level advisory lock ([`PgStore::try_exclusive`]), let go when dropped.
struct Advisory<'a> {
    conn: Conn<'a>,
    what: String,
}

impl Drop for Advisory<'_> {
    fn drop(&mut self) {
        let what = self.what.clone();
        let unlocked = self.conn.run(|client| {
            client.execute(
                "SELECT pg_advisory_unlock(hashtext('tally once ' || current_schema() || ' ' || $1))",
                &[&what],
            )?;
            Ok(())
        });
        if unlocked.is_err() {
            // Closing the connection lets go of the lock too.
            self.conn.discard = true;
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(err: postgres::Error) -> Self {
        let Some(code) = err.code().cloned() else {
            // No SQLSTATE: the connection itself failed (refused, reset, closed).
            return StoreError::unavailable(
                "the connection to PostgreSQL failed or was closed: nothing was acknowledged, \
                 retry once it is up",
                err,
            );
        };
        if code == SqlState::DISK_FULL {
            StoreError::Full(err.into())
        } else if code == SqlState::READ_ONLY_SQL_TRANSACTION {
            StoreError::ReadOnly(err.into())
        } else if code == SqlState::ADMIN_SHUTDOWN
            || code == SqlState::CRASH_SHUTDOWN
            || code == SqlState::CANNOT_CONNECT_NOW
            || code == SqlState::DATABASE_DROPPED
            || code.code().starts_with("08")
        {
            StoreError::unavailable(
                "PostgreSQL shut down or refused the connection: nothing was acknowledged, \
                 retry once it is up",
                err,
            )
        } else if code == SqlState::TOO_MANY_CONNECTIONS || code == SqlState::OUT_OF_MEMORY {
            StoreError::unavailable(
                "PostgreSQL is out of connections or memory: nothing was acknowledged, retry \
                 (or raise its max_connections)",
                err,
            )
        } else if code == SqlState::LOCK_NOT_AVAILABLE || code == SqlState::QUERY_CANCELED {
            StoreError::unavailable(
                "busy: another write held what this one needs for longer than the lock \
                 timeout (many writes to one campaign at once, or a reindex); nothing was \
                 acknowledged, retry",
                err,
            )
        } else if code == SqlState::IO_ERROR || code == SqlState::SYSTEM_ERROR {
            StoreError::unavailable(
                "PostgreSQL's disk failed a read or write: nothing was acknowledged, retry",
                err,
            )
        } else if code == SqlState::T_R_SERIALIZATION_FAILURE
            || code == SqlState::T_R_DEADLOCK_DETECTED
        {
            StoreError::Conflict(format!("a concurrent write to the same rows won ({err})"))
        } else if code == SqlState::DATA_CORRUPTED || code == SqlState::INDEX_CORRUPTED {
            StoreError::Corrupt(format!("PostgreSQL said: {err}"))
        } else {
            StoreError::Other(err.into())
        }
    }
}
