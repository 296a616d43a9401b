//! The tally sync server: automerge-repo's WebSocket protocol at `/sync`, an HTTP API under
//! `/api/v1`, one SQLite file in the data folder. [`serve`] takes a bound listener and a
//! shutdown future, so tests bind port 0 and stop it cleanly.
//!
//! Modules: [`config`] (layered settings), [`hub`] (documents in memory, the validated write
//! path, unloading), [`projection`] (SQL rows, aggregates and totals; `tally reindex`),
//! [`suppression`] (small-cell suppression of totals), [`sync`] (WebSocket connections), [`api`]
//! (HTTP), [`live`] (totals as Server-Sent Events), [`openapi`] (the API's description),
//! [`error`] (HTTP errors), [`workers`] (the sync connections' threads, below the API's priority),
//! [`net`] (the accept loop: HTTP timeouts, caps on unfinished connections), [`guard`] (abuse
//! limits per address and per device), [`organizer_cli`] (the organizers' side of the `tally`
//! command, which calls the API), [`web`] (the embedded web dashboard at `/`).

pub mod api;
pub mod config;
pub mod error;
pub mod guard;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod organizer_cli;
pub mod projection;
pub mod projector;
pub mod suppression;
pub mod sync;
pub mod tls;
pub mod web;
pub mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tally_store::{Readers, Storage, Store};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::ApiError;
use crate::hub::{Hub, HubConfig, now_ms};

/// The file the admin token is written to, in the data folder.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The database file, in the data folder.
pub const DB_FILE: &str = "tally.db";

/// Shared state of the running server.
pub struct AppState {
    /// The document hub: every document write goes through it.
    pub hub: Arc<Hub>,
    /// The store, for what is not a document: devices and tokens, invites, the audit log,
    /// quarantine, record keys, the list of documents. Held through the storage interface.
    pub store: Arc<dyn Storage>,
    /// The configuration.
    pub config: Config,
    /// Read-only connections to the database for the API's token checks and totals queries,
    /// so that they never wait behind the writer's lock (WAL lets them read while the hub
    /// writes) nor, up to the pool's size, behind each other. The hub's store alone for an
    /// in-memory store, which cannot be opened twice.
    pub reader: Arc<Readers>,
    /// Subscribers of live totals, woken when a campaign's totals are refreshed.
    pub live: live::Live,
    /// Per-address abuse limits: wrong tokens, unfinished connections, enrollments.
    pub guard: Mutex<guard::Guard>,
    /// Per-device limits: sync connections (the handle closes a replaced one) and live
    /// streams.
    pub devices: Mutex<guard::Devices<CancellationToken>>,
    /// Open sync connections and totals streams by device id, to close them when a device is
    /// revoked.
    conns: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    /// Limits simultaneous sync connections.
    slots: Arc<Semaphore>,
    /// The threads that run sync connections' work, below the API's priority (see `sync::run`).
    workers: Arc<workers::Workers>,
    /// Cancelled at shutdown.
    shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown waits for them to flush.
    tasks: TaskTracker,
    /// The dashboard's one-time sign-in links waiting to be used (in memory only).
    pub signin_links: api::signin::Links,
}

impl AppState {
    /// Closes every sync connection of a device; returns how many.
    pub fn disconnect(&self, device_id: &str) -> usize {
        let conns = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id)
            .unwrap_or_default();
        for (_, c) in &conns {
            c.cancel();
        }
        conns.len()
    }
}

/// [`open_database`] with the data folder's SQLite file.
pub fn open_data(data: &Path) -> anyhow::Result<(Store, Option<PathBuf>)> {
    match open_database(data, None)? {
        (Database::Sqlite(store), admin) => Ok((store, admin)),
        (Database::Postgres(_), _) => {
            anyhow::bail!("open_database without a URL opened PostgreSQL")
        }
    }
}

/// The database a server keeps everything in.
pub enum Database {
    /// The data folder's SQLite file (the default).
    Sqlite(Store),
    /// A PostgreSQL database (`database_url`).
    Postgres(tally_store::PgStore),
}

impl Database {
    /// The database through the storage interface.
    pub fn storage(&self) -> &dyn Storage {
        match self {
            Database::Sqlite(s) => s,
            Database::Postgres(p) => p,
        }
    }
}

/// Opens (or creates) the data folder and the database (the folder's SQLite file, or the
/// PostgreSQL database at `database_url`), and on first start the admin token (always in the
/// data folder). Returns the database and, when it was just created, the admin token's path. A
/// database whose schema upgrade left the totals aggregates stale gets them rebuilt from its
/// rows here, once.
pub fn open_database(
    data: &Path,
    database_url: Option<&str>,
) -> anyhow::Result<(Database, Option<PathBuf>)> {
    std::fs::create_dir_all(data)
        .map_err(|e| anyhow::anyhow!("cannot create the data folder {}: {e}", data.display()))?;
    // SQLite may open a database on a read-only disk and fail only at the first write, after
    // phones have connected: find out now, and say so.
    let probe = data.join(".tally-write-probe");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            anyhow::anyhow!(
                "the data folder {} is not writable ({e}); a read-only or full disk? tally keeps \
                 its database there: make the folder writable (remount it read-write, free \
                 space) or choose another --data",
                data.display()
            )
        })?;
    let db = match database_url {
        Some(url) => Database::Postgres(tally_store::PgStore::connect(url).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the PostgreSQL database {}: {e}",
                config::redact_url(url)
            )
        })?),
        None => Database::Sqlite(Store::open(&data.join(DB_FILE))?),
    };
    let store = db.storage();
    if store.write(|tx| tx.rebuild_aggregates_if_stale())? {
        tracing::info!(
            "rebuilt the totals aggregates from the projection rows (once, after an upgrade)"
        );
    }
    if store.has_admin()? {
        return Ok((db, None));
    }
    let (_, token) = store.create_admin("admin", now_ms())?;
    let path = data.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &format!("{}\n", token.as_str()))?;
    Ok((db, Some(path)))
}

/// Writes a file readable only by its owner (mode 0600 on Unix).
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Rebuilds the totals projection of the data folder `data` from its stored documents
/// (`tally reindex`). Works offline on the file; stop the server first, as its writes would wait
/// for the rebuild's transaction.
pub fn reindex(data: &Path) -> anyhow::Result<projection::ReindexReport> {
    let path = data.join(DB_FILE);
    anyhow::ensure!(
        path.exists(),
        "no database at {}: pass the server's data folder with --data",
        path.display()
    );
    let store = Store::open(&path)?;
    Ok(projection::reindex(&store)?)
}

/// Rebuilds the totals projection of the PostgreSQL database at `url` (`tally reindex
/// --database-url`). The servers sharing it may keep running: the rebuild's transaction holds
/// their new chunks back until it commits (a phone whose sync waits past the lock timeout is
/// told nothing was acknowledged and retries), so the rebuilt projection misses nothing.
pub fn reindex_database(url: &str) -> anyhow::Result<projection::ReindexReport> {
    let store = tally_store::PgStore::connect(url).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the PostgreSQL database {}: {e}",
            config::redact_url(url)
        )
    })?;
    Ok(projection::reindex(&store)?)
}

/// Declares the routes once: `ROUTES` lists them for the OpenAPI test, `routes()` builds them.
macro_rules! route_table {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every (method, path) the server serves. The router is built from this same list, and
        /// the OpenAPI document ([`openapi::document`]) describes exactly these.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn routes() -> Router<Arc<AppState>> {
            let router = Router::new();
            $(let router = router.route($path, axum::routing::$method($handler));)*
            router
        }
    };
}

route_table! {
    get "/healthz" => healthz,
    get "/sync" => sync_upgrade,
    get "/api/v1/openapi.json" => api::openapi,
    post "/api/v1/enroll" => api::devices::enroll,
    get "/api/v1/campaigns" => api::campaigns::list_campaigns,
    post "/api/v1/campaigns" => api::campaigns::create_campaign,
    post "/api/v1/campaigns/{id}/events" => api::campaigns::add_event,
    get "/api/v1/campaigns/{id}/totals" => api::totals::totals,
    get "/api/v1/campaigns/{id}/totals/stream" => api::totals::totals_stream,
    get "/api/v1/campaigns/{id}/sealed" => api::export::sealed,
    get "/api/v1/campaigns/{id}/keys" => api::keys::list_keys,
    post "/api/v1/campaigns/{id}/erase" => api::keys::erase,
    put "/api/v1/keys" => api::keys::put_keys,
    post "/api/v1/campaigns/{id}/strikes" => api::review::strike,
    post "/api/v1/campaigns/{id}/sheets" => api::review::sheet,
    get "/api/v1/campaigns/{id}/review" => api::review::review,
    post "/api/v1/invites" => api::devices::invite,
    get "/api/v1/devices" => api::devices::list_devices,
    post "/api/v1/devices/{id}/revoke" => api::devices::revoke,
    get "/api/v1/me" => api::auth::me,
    get "/api/v1/audit" => api::audit::list,
    get "/api/v1/audit/verify" => api::audit::verify,
    get "/api/v1/quarantine" => api::quarantine::list,
    post "/api/v1/signin-links" => api::signin::create,
    post "/api/v1/signin-links/{id}/redeem" => api::signin::redeem,
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    routes()
        // Every organizer and admin action leaves one entry in the audit log.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::audit::record,
        ))
        .fallback(web::fallback)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route {}: the API is described at GET /api/v1/openapi.json",
        uri.path()
    ))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({ "error": format!(
            "{method} is not served at {}: the methods of each route are in GET /api/v1/openapi.json",
            uri.path()
        ) })),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let open = state.config.max_connections - state.slots.available_permits();
    Json(
        serde_json::json!({ "status": "ok", "documents_loaded": state.hub.loaded(), "connections": open }),
    )
}

async fn sync_upgrade(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let device = match api::auth::Auth::from_request_parts(&mut parts, &state).await {
        Ok(api::auth::Auth(d)) => d,
        Err(e) => return e.into_response(),
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        // Not an upgrade: said as every API error is, `{"error": ...}` (the OpenAPI document's 400).
        Err(e) => {
            let error = format!(
                "{}: /sync takes a WebSocket upgrade (docs/protocol.md)",
                e.body_text()
            );
            return (e.status(), Json(serde_json::json!({ "error": error }))).into_response();
        }
    };
    let Ok(permit) = state.slots.clone().try_acquire_owned() else {
        return ApiError::Unavailable(format!(
            "the server is at its limit of {} connections; retry in a minute",
            state.config.max_connections
        ))
        .into_response();
    };
    let cancel = state.shutdown.child_token();
    let (conn, notify) = sync::Conn::new(
        state.hub.clone(),
        device.clone(),
        state.config.max_frame_bytes,
    );
    let conn_id = conn.id;
    state
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(device.device_id.clone())
        .or_default()
        .push((conn_id, cancel.clone()));
    let st = state.clone();
    let tasks = state.tasks.clone();
    let opts = sync::RunOptions::from_config(&state.config);
    let workers = state.workers.clone();
    // Small socket buffers: tungstenite's default of 128 KiB each way per connection came to
    // about 250 MB with a thousand phones connected. They grow for a large frame and shrink
    // back; every frame is sent whole and flushed anyway. tungstenite's own limit is a little
    // above max_frame_bytes, so that a message just over it reaches `sync::run`, which closes
    // with 1009 and the sizes; one far over it fails in tungstenite, which `run` answers alike.
    let transport_limit = sync::transport_limit(state.config.max_frame_bytes);
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                // A device holds a few sync connections at most: this one replaces the oldest
                // past the cap (a phone's connections lost with its network never lock it out).
                let replaced_by_newer = CancellationToken::new();
                let (replaced, cap) = {
                    let mut d = st.devices.lock().unwrap_or_else(|p| p.into_inner());
                    let r = d.open_sync(&device.device_id, conn_id, replaced_by_newer.clone());
                    (r, d.max_connections_per_device())
                };
                for old in replaced {
                    old.cancel();
                }
                sync::run(
                    socket,
                    conn,
                    notify,
                    sync::Stops {
                        cancel,
                        replaced: replaced_by_newer,
                        per_device: cap,
                    },
                    opts,
                    workers,
                )
                .await;
                st.devices
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .close_sync(&device.device_id, conn_id);
                if let Some(v) = st
                    .conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&device.device_id)
                {
                    v.retain(|(id, _)| *id != conn_id);
                }
                drop(permit);
            })
        })
}

/// The listening socket's accept queue. tokio's `TcpListener::bind` asks for 1,024; when a march
/// ends and a thousand phones reconnect at once (and organizers open the totals), the kernel
/// drops the SYNs that find the queue full and the clients retry only after a second, so a
/// queue sized for the reconnect storm saves each of them that second. The kernel caps it at
/// `net.core.somaxconn` (4,096 on current Linux).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the server's listening socket on `addr`, with [`LISTEN_BACKLOG`] (call inside a tokio
/// runtime).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server can take its port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The API's read connections: one per core (two to four), sharing a page cache budget of
/// 64 MiB (filtered totals scan rows). An in-memory store cannot be opened a second time, so
/// there the writer's own connection serves; on a file, a connection that cannot be opened is
/// an error, not a silent fall back to reading behind every write.
fn open_readers(store: &Arc<Store>) -> anyhow::Result<Readers> {
    if store.path() == Path::new(":memory:") {
        return Ok(Readers::from_stores(
            vec![store.clone() as Arc<dyn Storage>],
        ));
    }
    let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let cache_kib = 65_536 / n as u64;
    let readers = Readers::open(store.path(), n, |r| r.set_cache_kib(cache_kib)).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the API's read connections on {}: {e}",
            store.path().display()
        )
    })?;
    Ok(readers)
}

/// Caps the SQLite file at `max_database_kib`, if set.
fn cap_database(config: &Config, store: &Store) -> anyhow::Result<()> {
    if config.max_database_kib > 0 {
        let page_size = store.page_size()?;
        let pages = (config.max_database_kib * 1024).div_ceil(page_size.max(512));
        let cap = store.set_max_pages(u32::try_from(pages).unwrap_or(u32::MAX))?;
        tracing::info!(
            max_pages = cap,
            page_size,
            "database size capped (max_database_kib)"
        );
    }
    Ok(())
}

/// Runs the server on `listener` over a SQLite store until `shutdown` completes (see
/// [`serve_database`]).
pub async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_database(config, Database::Sqlite(store), listener, shutdown).await
}

/// Runs the server on `listener` until `shutdown` completes; then closes connections (which
/// persist their sync states), writes pending totals and returns.
pub async fn serve_database(
    config: Config,
    db: Database,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The certificate and key are read before anything starts, so a bad pair stops here.
    let tls_config = match config.tls_files().map_err(anyhow::Error::msg)? {
        Some((cert, key)) => Some(tls::server_config(cert, key)?),
        None => None,
    };
    let (store, reader): (Arc<dyn Storage>, Readers) = match db {
        Database::Sqlite(store) => {
            cap_database(&config, &store)?;
            let store = Arc::new(store);
            let reader = open_readers(&store)?;
            (store, reader)
        }
        Database::Postgres(pg) => {
            anyhow::ensure!(
                config.max_database_kib == 0,
                "max_database_kib caps the data folder's SQLite file, which a server with \
                 database_url does not use: unset max_database_kib and bound the PostgreSQL \
                 database's volume instead"
            );
            let pg: Arc<dyn Storage> = Arc::new(pg);
            // Handles on the store's own pool of clients, which bounds the connections.
            let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
            (pg.clone(), Readers::from_stores(vec![pg; n]))
        }
    };
    let hub = Arc::new(Hub::new(
        store.clone(),
        HubConfig {
            idle_unload: config.idle_unload(),
            compact_after_chunks: config.compact_after_chunks,
            max_documents_per_device: config.max_documents_per_device,
            max_loaded_documents: config.max_loaded_documents,
        },
    ));
    // The start, with the settings that differ from the defaults, opens the audit log's record
    // of this run (issue 15). A full or read-only disk does not stop the start (the server then
    // refuses writes and says why): the entry is then missing, and the log says so.
    if let Err(e) = store.audit(&tally_store::NewAudit {
        at: now_ms(),
        actor_id: "server",
        actor_name: "tally serve",
        action: "server.start",
        campaign: None,
        target: &config.changed_settings().join(","),
        result: "ok",
    }) {
        tracing::warn!(error = %e, "the audit log's server.start entry was not written");
    }
    hub.set_totals_suppress_below(config.suppress_below);
    hub.set_sync_limits(config.sync_limits());
    hub.set_refused_records(config.refuse_records.iter().cloned());
    if !config.refuse_records.is_empty() {
        tracing::warn!(records = ?config.refuse_records, "refusing the records listed in refuse_records");
    }
    // A crash between a commit and the next refresh leaves a totals document behind: bring
    // every campaign's up to date (unchanged ones are not rewritten).
    for m in store.list_campaigns()? {
        hub.mark_dirty(&m.campaign);
    }
    // What a crash left queued for the projection is counted first thing.
    let projector = projector::start(
        hub.clone(),
        Duration::from_millis(config.projection_delay_ms),
    )?;
    let reader = Arc::new(reader);
    tracing::debug!(connections = reader.len(), "read connections opened");
    let workers =
        workers::Workers::start(config.sync_worker_threads(), config.sync_workers_niceness)?;
    tracing::info!(
        threads = workers.threads(),
        niceness = workers.niceness(),
        "sync workers started"
    );
    // Every connection holds a file descriptor: take what the system allows, and keep the
    // unfinished connections (slowloris) to a quarter of it.
    let files = net::raise_open_files_limit();
    let mut guard_limits = config.guard_limits();
    if let Some(limit) = files.now {
        let quarter = usize::try_from(limit / 4).unwrap_or(usize::MAX).max(16);
        if quarter < guard_limits.max_pending_connections {
            guard_limits.max_pending_connections = quarter;
        }
        if limit < config.files_needed() {
            tracing::warn!(
                open_files = limit,
                needed = config.files_needed(),
                max_pending_connections = guard_limits.max_pending_connections,
                "the open files limit is below what max_connections + max_pending_connections + max_streams need; raise it (LimitNOFILE= in a systemd unit, docker --ulimit nofile=, ulimit -n): see docs/operations.md, Limits"
            );
        }
    }
    tracing::info!(
        before = ?files.before,
        now = ?files.now,
        hard = ?files.hard,
        max_pending_connections = guard_limits.max_pending_connections,
        "open files limit"
    );
    let token = CancellationToken::new();
    let state = Arc::new(AppState {
        guard: Mutex::new(guard::Guard::new(guard_limits)),
        devices: Mutex::new(guard::Devices::new(config.device_limits())),
        hub: hub.clone(),
        store: store.clone(),
        slots: Arc::new(Semaphore::new(config.max_connections)),
        workers,
        reader,
        live: live::Live::default(),
        config,
        conns: Mutex::default(),
        shutdown: token.clone(),
        tasks: TaskTracker::new(),
        signin_links: Default::default(),
    });
    // Changes other servers sharing the database store (PostgreSQL): their documents reach
    // this server's followers, their revocations close this server's connections.
    let heard = Arc::downgrade(&state);
    let _subscription = store.subscribe(Arc::new(move |change| {
        if let Some(state) = heard.upgrade() {
            on_stored_change(&state, change);
        }
    }))?;
    let background = tokio::spawn(background(
        state.clone(),
        token.clone(),
        state.config.idle_unload(),
    ));
    let app = router(state.clone());
    let t = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        t.cancel();
    });
    if let Some(addr) = state.config.metrics_listen.clone() {
        let metrics = TcpListener::bind(&addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for /metrics on {addr} (metrics_listen): {e}; choose a free address or leave metrics_listen unset"
            )
        })?;
        tracing::info!(listen = %metrics.local_addr()?, "metrics served at /metrics");
        let app = Router::new()
            .route("/metrics", axum::routing::get(metrics_page))
            .with_state(state.clone());
        let stop = token.clone();
        state.tasks.spawn(async move {
            let served = axum::serve(metrics, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let local = listener.local_addr()?;
    let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
    let timeouts = net::Timeouts {
        header_read: secs(state.config.header_read_timeout_secs),
        body: secs(state.config.request_body_timeout_secs),
    };
    tracing::info!(listen = %local, tls = tls_config.is_some(), "tally serving");
    net::serve(
        listener,
        tls_config,
        app,
        state.clone(),
        timeouts,
        token.clone(),
    )
    .await;
    state.tasks.close();
    state.tasks.wait().await;
    let _ = background.await;
    // What was acknowledged is counted before the last totals documents are written.
    tokio::task::spawn_blocking(move || projector.stop()).await?;
    let h = hub.clone();
    tokio::task::spawn_blocking(move || h.refresh_totals()).await??;
    tracing::info!("tally stopped; everything acknowledged is on disk");
    Ok(())
}

/// `GET /metrics` on `metrics_listen`: the exposition, with the gauges read now.
async fn metrics_page(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    let st = state.clone();
    let snapshot = tokio::task::spawn_blocking(move || -> Result<metrics::Snapshot, ApiError> {
        let status = st.store.read(|r| r.projection_status(None))?;
        Ok(metrics::Snapshot {
            loaded_documents: st.hub.loaded() as u64,
            quarantine_entries: st.store.quarantine_len()?,
            database_bytes: st.store.database_bytes()?,
            projection_pending: status.records,
            projection_lag: Duration::from_millis(status.lag_ms(hub::now_ms())),
            group_commits: st.store.group_commits(),
        })
    })
    .await??;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.hub.metrics().encode(snapshot),
    ))
}

/// What the server does with a change heard from the database ([`Storage::subscribe`]); runs
/// on the subscription's thread.
fn on_stored_change(state: &AppState, change: tally_store::Change) {
    use tally_store::Change;
    match change {
        Change::Document(id) => {
            // Its change waits in the projection's queue: the projector of one server takes it.
            state.hub.projection_signal().wake();
            if let Err(e) = state.hub.stored(&id) {
                tracing::warn!(doc = %id, error = %e, "a change stored by another server was not loaded; its followers sync when they next write");
            }
        }
        Change::Projected(campaign) => state.hub.mark_dirty(&campaign),
        Change::Revoked(device) => {
            let closed = state.disconnect(&device);
            if closed > 0 {
                tracing::info!(device = %device, connections = closed, "device revoked (heard from the database)");
            }
        }
        Change::Resync { since_ms } => {
            tracing::info!("hearing other servers' changes again; reloading the documents held");
            if let Err(e) = state.hub.resync() {
                tracing::warn!(error = %e, "documents not reloaded after the outage");
            }
            // A margin for clocks: closing a revoked device's connections twice is harmless.
            match state.store.revoked_since(since_ms - 60_000) {
                Ok(devices) => {
                    for device in devices {
                        state.disconnect(&device);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "devices revoked during the outage not checked")
                }
            }
        }
        Change::Lost(message) => tracing::warn!("{message}"),
    }
}

async fn background(state: Arc<AppState>, stop: CancellationToken, idle: Duration) {
    let hub = state.hub.clone();
    // Live streams (wall screens) hear of new totals within half a second; the totals
    // documents, which every connected phone is sent, are rewritten at most every
    // `totals_document_secs`.
    let mut live = tokio::time::interval(Duration::from_millis(500));
    let mut totals = tokio::time::interval(Duration::from_millis(
        (state.config.totals_document_secs.max(1) * 1000).min(3_600_000),
    ));
    let mut sweep = tokio::time::interval(
        (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15)),
    );
    let mut compaction = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = live.tick() => state.live.notify(&hub.take_dirty_live()),
            _ = totals.tick() => {
                let h = hub.clone();
                match tokio::task::spawn_blocking(move || h.refresh_totals()).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "totals not refreshed"),
                    Err(e) => tracing::error!(error = %e, "totals task failed"),
                    Ok(Ok(_)) => {}
                }
            }
            _ = sweep.tick() => {
                let h = hub.clone();
                if let Ok(n) = tokio::task::spawn_blocking(move || h.sweep()).await && n > 0 {
                    tracing::debug!(unloaded = n, "idle documents unloaded");
                }
            }
            _ = compaction.tick() => {
                let h = hub.clone();
                if let Ok(n) = tokio::task::spawn_blocking(move || h.compact_due()).await && n > 0 {
                    tracing::debug!(compacted = n, "documents compacted");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raises this process's soft limit on open files to `n` if it is lower (the test's clients
    /// each hold one); an error if the hard limit does not allow it.
    fn enough_descriptors(n: u64) -> Result<(), String> {
        #[cfg(target_os = "linux")]
        {
            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let lim = getrlimit(Resource::Nofile);
            if lim.current.is_none_or(|c| c >= n) {
                return Ok(());
            }
            if lim.maximum.is_some_and(|m| m < n) {
                return Err(format!(
                    "the open files limit is {:?} (hard), under the {n} this test needs",
                    lim.maximum
                ));
            }
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(n),
                    maximum: lim.maximum,
                },
            )
            .map_err(|e| format!("raising the open files limit to {n}: {e}"))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = n;
            Ok(())
        }
    }

    /// A reconnect storm larger than tokio's default queue: every connection completes at once
    /// although the server accepts none of them yet. With a 1,024 queue the connections past
    /// it would wait for the SYN retry, a second later, and time out here.
    #[tokio::test]
    async fn the_accept_queue_takes_a_reconnect_storm() {
        const STORM: usize = 1_200;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(usize::MAX);
        if somaxconn <= STORM {
            eprintln!(
                "skipped: net.core.somaxconn is {somaxconn}, which caps any listen backlog below {STORM}"
            );
            return;
        }
        if let Err(why) = enough_descriptors(STORM as u64 + 256) {
            eprintln!("skipped: {why}");
            return;
        }
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::with_capacity(STORM);
        for i in 0..STORM {
            let c = tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .unwrap_or_else(|_| panic!("connection {i} waited: the accept queue is full"))
            .unwrap_or_else(|e| panic!("connection {i}: {e} (too few file descriptors?)"));
            clients.push(c);
        }
        // They are all there to be accepted.
        let (first, _) = listener.accept().await.unwrap();
        assert_eq!(first.local_addr().unwrap(), addr);
    }
}
