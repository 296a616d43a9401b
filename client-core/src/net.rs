//! The network side: drives a [`SyncEngine`] over a WebSocket (`ws://HOST/sync`, or `wss://`
//! with rustls and the bundled webpki roots), authenticated with the enrollment's bearer token.
//!
//! Everything here runs on a private current-thread tokio runtime on a thread of its own, so the
//! library's API stays synchronous and is safe to call from any thread, even one that already
//! runs another async runtime.
//!
//! - [`Device::sync_once`]: connect, push and pull until settled and quiet for [`QUIET`], or
//!   until the timeout; a connection lost midway still returns a report of what got through.
//! - [`Device::spawn_watch`]: keep a connection open, push every local write at once, and
//!   reconnect with exponential backoff and jitter (1 s doubling to 30 s), waking early when the
//!   canvasser enters something. Interrupted anywhere, the next connection resumes from the
//!   persisted sync states: automerge's sync sends what the server lacks, nothing twice.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::device::{Device, LastSync, now_ms};
use crate::error::{ClientError, Result};
use crate::payload::sync_url;
use crate::sync::{SyncEngine, SyncReport};

/// How long the connection must stay silent, once settled, before a sync counts as done.
pub const QUIET: Duration = Duration::from_millis(500);
/// First reconnection delay of the watch loop.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest reconnection delay of the watch loop.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A ping is sent after this long without traffic.
const PING_EVERY: Duration = Duration::from_secs(20);
/// The connection is given up after this long without hearing from the server.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How often a connection looks for writes made by other processes.
const TICK: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the watch loop reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// Connected to the server.
    Connected,
    /// A round of sync settled (or stopped on the server's errors).
    Synced(Box<SyncReport>),
    /// The connection failed or dropped; the loop retries after the delay (or sooner, when the
    /// canvasser enters something).
    Disconnected {
        /// What went wrong.
        error: String,
        /// When it will try again, in ms.
        retry_in_ms: u64,
    },
}

/// A running watch loop ([`Device::spawn_watch`]). Dropping it stops the loop and waits for it.
pub struct WatchHandle {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl WatchHandle {
    /// Stops the loop (closing its connection) and waits for it to end.
    pub fn stop(mut self) -> Result<()> {
        self.stop.send_replace(true);
        self.join_thread()
    }

    /// Waits until the loop ends by itself (only on an error retrying cannot fix, such as a
    /// revoked token).
    pub fn wait(mut self) -> Result<()> {
        self.join_thread()
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn join_thread(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(ClientError::Protocol("the sync thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        let _ = self.join_thread();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Storage(format!("cannot start the sync runtime: {e}")))
}

fn tls_connector() -> Result<Connector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Protocol(format!("TLS setup failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

fn network(url: &str, detail: impl std::fmt::Display) -> ClientError {
    ClientError::Network {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

/// Opens the WebSocket with the bearer token. 401/403 before the upgrade is
/// [`ClientError::Unauthorized`].
async fn connect(device: &Device, deadline: Option<Instant>) -> Result<(Ws, String)> {
    let (url, token) = {
        let st = device.lock()?;
        let e = st.enrollment()?;
        (sync_url(&e.server)?, e.token.clone())
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Protocol(format!("the sync URL {url} is not usable: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::Corrupt("the stored token is not valid header text".into()))?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        true,
        Some(tls_connector()?),
    );
    let result = match deadline {
        Some(d) => tokio::time::timeout_at(d, connecting)
            .await
            .map_err(|_| network(&url, "no answer before the timeout"))?,
        None => tokio::time::timeout(Duration::from_secs(30), connecting)
            .await
            .map_err(|_| network(&url, "no answer within 30 s"))?,
    };
    match result {
        Ok((ws, _)) => Ok((ws, url)),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            if status == 401 || status == 403 {
                let waiting = device.counts().map(|c| c.pending_total()).unwrap_or(0);
                return Err(ClientError::Unauthorized { waiting });
            }
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .map(|b| {
                    serde_json::from_str::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                        .unwrap_or_else(|| b.chars().take(200).collect())
                })
                .unwrap_or_default();
            if status == 503 {
                return Err(ClientError::Unavailable(if body.trim().is_empty() {
                    format!("HTTP 503 from {url}")
                } else {
                    body
                }));
            }
            Err(ClientError::Protocol(format!(
                "HTTP {status} from {url} instead of a WebSocket upgrade{}",
                if body.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {body}")
                }
            )))
        }
        Err(e) => Err(network(&url, e)),
    }
}

async fn send(ws: &mut Ws, url: &str, frame: Vec<u8>) -> Result<()> {
    ws.send(Message::Binary(frame.into()))
        .await
        .map_err(|e| network(url, e))
}

/// Resolves when the watch loop is told to stop (or its handle is gone).
async fn wait_stop(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn stopped(stop: &mut Option<&mut watch::Receiver<bool>>) {
    match stop {
        None => std::future::pending::<()>().await,
        Some(rx) => wait_stop(rx).await,
    }
}

enum End {
    /// `sync_once` finished (settled and quiet, or timed out).
    Done(Box<SyncReport>),
    /// The watch loop was told to stop.
    Stopped,
}

fn now_u64() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0)
}

/// Runs one connection. With a deadline it ends at the first settled-and-quiet moment (or the
/// deadline); without one it reports each settled round and runs until stopped or broken.
#[allow(clippy::too_many_arguments)] // one call site; the arguments are the connection's parts
async fn converse(
    device: &Device,
    ws: &mut Ws,
    url: &str,
    engine: &mut SyncEngine,
    join: Vec<u8>,
    deadline: Option<Instant>,
    mut stop: Option<&mut watch::Receiver<bool>>,
    on_round: &mut dyn FnMut(SyncReport),
) -> Result<End> {
    let mut writes = device.shared.writes.subscribe();
    writes.borrow_and_update();
    send(ws, url, join).await?;
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut dirty = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let settled =
            engine.is_settled()? || (engine.is_established() && engine.has_server_errors());
        let quiet_at = last_heard + QUIET;
        tokio::select! {
            () = stopped(&mut stop) => {
                let _ = ws.close(None).await;
                return Ok(End::Stopped);
            }
            msg = ws.next() => match msg {
                None => return Err(network(url, "the server closed the connection")),
                Some(Err(e)) => return Err(network(url, e)),
                Some(Ok(Message::Binary(frame))) => {
                    last_heard = Instant::now();
                    dirty = true;
                    for out in engine.receive(&frame, now_u64())? {
                        send(ws, url, out).await?;
                        last_sent = Instant::now();
                    }
                    if engine.is_closed() {
                        return Err(ClientError::Protocol(format!(
                            "the server ended the sync session{}",
                            engine.report()?.server_errors.last().map(|e| format!(": {e}")).unwrap_or_default()
                        )));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                    return Err(network(url, format!(
                        "the server closed the connection{}",
                        reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    )));
                }
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            changed = writes.changed() => {
                if changed.is_ok() {
                    for out in engine.poll_local()? {
                        send(ws, url, out).await?;
                        last_sent = Instant::now();
                        dirty = true;
                    }
                }
            }
            _ = tick.tick() => {
                for out in engine.poll_local()? {
                    send(ws, url, out).await?;
                    last_sent = Instant::now();
                    dirty = true;
                }
                if last_heard.elapsed() > SILENCE_LIMIT {
                    return Err(network(url, "the server stopped answering"));
                }
                if last_heard.elapsed() > PING_EVERY && last_sent.elapsed() > PING_EVERY {
                    ws.send(Message::Ping(Vec::new().into())).await.map_err(|e| network(url, e))?;
                    last_sent = Instant::now();
                }
            }
            () = tokio::time::sleep_until(quiet_at), if settled && dirty => {
                let report = engine.finish_round(None)?;
                if deadline.is_some() {
                    let _ = ws.close(None).await;
                    return Ok(End::Done(Box::new(report)));
                }
                on_round(report);
                dirty = false;
            }
            () = sleep_until_opt(deadline) => {
                let report = engine.finish_round(Some("timed out before the server acknowledged everything: try again with more time or better signal".into()))?;
                let _ = ws.close(None).await;
                return Ok(End::Done(Box::new(report)));
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Errors a reconnection cannot fix.
fn is_final(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unauthorized { .. } | ClientError::NotEnrolled | ClientError::Corrupt(_)
    )
}

/// Errors of the connection rather than of the phone: `sync_once` turns them into a report.
fn is_connection_error(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Network { .. } | ClientError::Protocol(_) | ClientError::Unavailable(_)
    )
}

fn record_failure(device: &Device, e: &ClientError) {
    let _ = device.record_sync(&LastSync {
        at: now_ms(),
        complete: false,
        server_errors: Vec::new(),
        problem: Some(e.to_string()),
    });
}

async fn sync_once(device: &Device, timeout: Duration) -> Result<SyncReport> {
    let deadline = Instant::now() + timeout;
    let (mut ws, url) = match connect(device, Some(deadline)).await {
        Ok(c) => c,
        Err(e) => {
            record_failure(device, &e);
            return Err(e);
        }
    };
    let (mut engine, join) = SyncEngine::start(device)?;
    match converse(
        device,
        &mut ws,
        &url,
        &mut engine,
        join,
        Some(deadline),
        None,
        &mut |_| {},
    )
    .await
    {
        Ok(End::Done(report)) => Ok(*report),
        Ok(End::Stopped) => engine.finish_round(Some("stopped".into())),
        Err(e) if is_connection_error(&e) => engine.finish_round(Some(e.to_string())),
        Err(e) => Err(e),
    }
}

fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = rand::random::<f64>() * half.as_secs_f64();
    half + Duration::from_secs_f64(extra)
}

async fn watch_loop(
    device: &Device,
    mut stop: watch::Receiver<bool>,
    on_event: &mut (dyn FnMut(WatchEvent) + Send),
) -> Result<()> {
    let mut backoff = BACKOFF_MIN;
    let mut writes = device.shared.writes.subscribe();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let attempt = Instant::now();
        let connected = tokio::select! {
            r = connect(device, None) => Some(r),
            () = wait_stop(&mut stop) => None,
        };
        let error = match connected {
            None => return Ok(()),
            Some(Err(e)) if is_final(&e) => {
                record_failure(device, &e);
                return Err(e);
            }
            Some(Err(e)) => {
                record_failure(device, &e);
                e.to_string()
            }
            Some(Ok((mut ws, url))) => {
                on_event(WatchEvent::Connected);
                let (mut engine, join) = SyncEngine::start(device)?;
                let result = converse(
                    device,
                    &mut ws,
                    &url,
                    &mut engine,
                    join,
                    None,
                    Some(&mut stop),
                    &mut |mut report| {
                        // Keys with (after) each settled round; an expired token shows at the
                        // next connection.
                        let _ = device.upload_keys_into(&mut report);
                        on_event(WatchEvent::Synced(Box::new(report)))
                    },
                )
                .await;
                if engine.is_established() {
                    backoff = BACKOFF_MIN;
                }
                match result {
                    Ok(_) => return Ok(()),
                    Err(e) if is_final(&e) => return Err(e),
                    Err(e) => {
                        let _ = engine.finish_round(Some(e.to_string()));
                        e.to_string()
                    }
                }
            }
        };
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        on_event(WatchEvent::Disconnected {
            error,
            retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
        writes.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = wait_stop(&mut stop) => return Ok(()),
            () = async {
                let _ = writes.changed().await;
                tokio::time::sleep_until(attempt + BACKOFF_MIN).await;
            } => {}
        }
    }
}

impl Device {
    /// Connects to the server, pushes this phone's changes and pulls the campaign and the team
    /// totals until the sync settles and stays quiet for [`QUIET`], or `timeout` passes. Blocks
    /// the calling thread (the network runs on a private thread).
    ///
    /// `Err` when the server cannot be reached or refuses the token; a connection that breaks
    /// midway gives `Ok` with `complete: false` and the `problem`, plus whatever was
    /// acknowledged before. Errors the server sends are in `server_errors`.
    ///
    /// After the sync, the record keys the server does not hold yet are uploaded and those of
    /// safe records dropped ([`Device::upload_keys`]); a failure there is the report's
    /// `problem` (the keys stay on the phone and go with the next sync).
    pub fn sync_once(&self, timeout: Duration) -> Result<SyncReport> {
        self.lock()?.enrollment()?;
        let device = self.clone();
        let mut report = std::thread::scope(|s| {
            s.spawn(move || runtime()?.block_on(sync_once(&device, timeout)))
                .join()
                .unwrap_or_else(|_| Err(ClientError::Protocol("the sync thread panicked".into())))
        })?;
        self.upload_keys_into(&mut report)?;
        Ok(report)
    }

    /// Uploads record keys after a sync round and folds the outcome into its report.
    fn upload_keys_into(&self, report: &mut SyncReport) -> Result<()> {
        match self.upload_keys() {
            Ok(k) => report.keys = k,
            Err(e @ ClientError::Unauthorized { .. }) => return Err(e),
            Err(e) => {
                let p = format!("record keys not uploaded: {e}");
                report.problem = Some(match report.problem.take() {
                    Some(before) => format!("{before}; {p}"),
                    None => p,
                });
            }
        }
        if let Ok(c) = self.counts() {
            report.counts = c;
        }
        Ok(())
    }

    /// Starts the background sync loop on its own thread: keeps a connection open, pushes each
    /// local write at once, reports each settled round to `on_event`, and reconnects with
    /// backoff. Ends by itself only on an error retrying cannot fix (e.g. a revoked token).
    pub fn spawn_watch(
        &self,
        mut on_event: impl FnMut(WatchEvent) + Send + 'static,
    ) -> Result<WatchHandle> {
        self.lock()?.enrollment()?;
        let device = self.clone();
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("tally-sync".into())
            .spawn(move || runtime()?.block_on(watch_loop(&device, stop_rx, &mut on_event)))
            .map_err(|e| ClientError::Storage(format!("cannot start the sync thread: {e}")))?;
        Ok(WatchHandle {
            stop,
            thread: Some(thread),
        })
    }
}
