//! The tally sync server: automerge-repo's WebSocket protocol at `/sync`, an HTTP API under
//! `/api/v1`, one SQLite file in the data folder. [`serve`] takes a bound listener and a
//! shutdown future, so tests bind port 0 and stop it cleanly.
//!
//! Modules: [`config`] (layered settings), [`hub`] (documents in memory, the validated write
//! path, unloading), [`projection`] (SQL rows and totals), [`sync`] (WebSocket connections),
//! [`api`] (HTTP), [`error`] (HTTP errors), [`client`] (the organizers' command line, which calls
//! the API).

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod hub;
pub mod projection;
pub mod sync;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tally_store::Store;
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
    /// The document hub (and through it the store).
    pub hub: Arc<Hub>,
    /// The configuration.
    pub config: Config,
    /// Open sync connections by device id, to close them when a device is revoked.
    conns: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    /// Limits simultaneous sync connections.
    slots: Arc<Semaphore>,
    /// Cancelled at shutdown.
    shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown waits for them to flush.
    tasks: TaskTracker,
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

/// Opens (or creates) the data folder: the database, and on first start the admin token.
/// Returns the store and, when it was just created, the admin token's path.
pub fn open_data(data: &Path) -> anyhow::Result<(Store, Option<PathBuf>)> {
    std::fs::create_dir_all(data)
        .map_err(|e| anyhow::anyhow!("cannot create the data folder {}: {e}", data.display()))?;
    let store = Store::open(&data.join(DB_FILE))?;
    if store.has_admin()? {
        return Ok((store, None));
    }
    let (_, token) = store.create_admin("admin", now_ms())?;
    let path = data.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &format!("{}\n", token.as_str()))?;
    Ok((store, Some(path)))
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

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/sync", get(sync_upgrade))
        .merge(api::routes())
        .with_state(state)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let open = state.config.max_connections - state.slots.available_permits();
    Json(
        serde_json::json!({ "status": "ok", "documents_loaded": state.hub.loaded(), "connections": open }),
    )
}

async fn sync_upgrade(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let device = match api::Auth::from_request_parts(&mut parts, &state).await {
        Ok(api::Auth(d)) => d,
        Err(e) => return e.into_response(),
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
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
    ws.max_message_size(state.config.max_frame_bytes)
        .max_frame_size(state.config.max_frame_bytes)
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                sync::run(socket, conn, notify, cancel).await;
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

/// Runs the server on `listener` until `shutdown` completes; then closes connections (which
/// persist their sync states), writes pending totals and returns.
pub async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let hub = Arc::new(Hub::new(
        Arc::new(store),
        HubConfig {
            idle_unload: config.idle_unload(),
            compact_after_chunks: config.compact_after_chunks,
            max_documents_per_device: config.max_documents_per_device,
        },
    ));
    let token = CancellationToken::new();
    let state = Arc::new(AppState {
        hub: hub.clone(),
        slots: Arc::new(Semaphore::new(config.max_connections)),
        config,
        conns: Mutex::default(),
        shutdown: token.clone(),
        tasks: TaskTracker::new(),
    });
    let background = tokio::spawn(background(
        hub.clone(),
        token.clone(),
        state.config.idle_unload(),
    ));
    let app = router(state.clone());
    let t = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        t.cancel();
    });
    tracing::info!(listen = %listener.local_addr()?, "tally serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(token.clone().cancelled_owned())
        .await?;
    state.tasks.close();
    state.tasks.wait().await;
    let _ = background.await;
    let h = hub.clone();
    tokio::task::spawn_blocking(move || h.refresh_totals()).await??;
    tracing::info!("tally stopped; everything acknowledged is on disk");
    Ok(())
}

async fn background(hub: Arc<Hub>, stop: CancellationToken, idle: Duration) {
    let mut totals = tokio::time::interval(Duration::from_millis(500));
    let mut sweep = tokio::time::interval(
        (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15)),
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
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
        }
    }
}
