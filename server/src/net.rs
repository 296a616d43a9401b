//! The server's accept loop: TCP (and TLS) connections served over HTTP/1.1 with hyper, with the
//! limits a stranger with no token meets before anything else:
//!
//! - a connection that has not yet had the answer to its first request (TLS handshake, request
//!   head, body, the token check) is *unfinished*; at most `max_connections_per_address` of them
//!   per address and `max_pending_connections` in all ([`crate::guard::Guard`]); a connection
//!   past either is answered at once (429 or 503, plain HTTP only) and closed;
//! - the request head must arrive within `header_read_timeout_secs` (hyper's
//!   `header_read_timeout`, counted from when the server starts waiting for it, so an idle
//!   keep-alive connection is closed after as long), and the body within
//!   `request_body_timeout_secs` (408);
//! - an `accept` that fails (out of file descriptors) is retried after 100 ms and logged at most
//!   once a second; [`raise_open_files_limit`] raises the soft limit to the hard one at start.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::AppState;
use crate::api::auth::lock_guard;
use crate::guard::Refusal;
use crate::tls::{HANDSHAKE_TIMEOUT, PeerAddr};

/// The largest request body read (axum's default body limit, which the JSON routes apply too).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Refused connections answered at once (beyond, they are just closed).
const REFUSALS_AT_ONCE: usize = 64;

/// How long a refused connection is given to take its answer.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// The timeouts of the HTTP phase.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request's head; `None`: no limit.
    pub header_read: Option<Duration>,
    /// For a request's whole body; `None`: no limit.
    pub body: Option<Duration>,
}

/// One unfinished connection counted in the guard, until its first answer or its end.
struct Unfinished {
    state: Arc<AppState>,
    ip: IpAddr,
    counted: AtomicBool,
}

impl Unfinished {
    fn release(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            lock_guard(&self.state).close_connection(self.ip);
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.release();
    }
}

/// At most one log line a second for a repeated event, with how many were not logged.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    /// `Some(skipped since the last line)` when a line may be logged now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`; then stops accepting, lets
/// the open requests finish (idle keep-alive connections close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    state: Arc<AppState>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let conns = TaskTracker::new();
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut accept_failed = Throttle::default();
    let mut refused = Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if let Some(skipped) = accept_failed.ready() {
                        tracing::warn!(error = %e, skipped, "accepting a connection failed; if it says too many open files, raise the open files limit (docs/operations.md, Limits)");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            }
        };
        let ip = peer.ip();
        let admitted = lock_guard(&state).open_connection(ip);
        if let Err(r) = admitted {
            if let Some(skipped) = refused.ready() {
                tracing::warn!(address = %ip, skipped, "connection refused: {r}");
            }
            // Over TLS there is no way to answer before a handshake: the connection is closed.
            if acceptor.is_none()
                && let Ok(permit) = refusals.clone().try_acquire_owned()
            {
                tokio::spawn(refuse(stream, r, permit));
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let unfinished = Arc::new(Unfinished {
            state: state.clone(),
            ip,
            counted: AtomicBool::new(true),
        });
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            match acceptor {
                None => serve_connection(stream, peer, unfinished, app, timeouts, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            serve_connection(tls, peer, unfinished, app, timeouts, stop).await
                        }
                        // Scanners and plain-HTTP clients end here all the time: debug only.
                        Ok(Err(e)) => {
                            tracing::debug!(address = %ip, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(address = %ip, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Answers a refused connection with its status and reason, then closes it; the request is
/// drained for a moment so that the close is not a reset that would lose the answer.
async fn refuse(mut stream: TcpStream, why: Refusal, _permit: OwnedSemaphorePermit) {
    let status = if why.server_wide() {
        "503 Service Unavailable"
    } else {
        "429 Too Many Requests"
    };
    let body = serde_json::json!({ "error": why.to_string() }).to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Serves one connection with hyper until it closes, is upgraded (the WebSocket then lives on
/// in its own task) or the server stops.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    unfinished: Arc<Unfinished>,
    app: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = unfinished.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let first = first.clone();
        async move {
            let res = answer(app, req, peer, timeouts).await;
            // Answered: the connection has finished its request (a WebSocket is upgraded).
            first.release();
            Ok::<_, Infallible>(res)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // Header timeouts, resets, clients that went away: the normal life of a server.
        tracing::debug!(address = %peer.ip(), error = %e, "HTTP connection ended");
    }
    drop(unfinished);
}

/// Reads the request's body within its time and size limits, then hands the request to `app`.
async fn answer(app: Router, req: Request<Incoming>, peer: SocketAddr, t: Timeouts) -> Response {
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(PeerAddr(peer)));
    let body = if body.is_end_stream() {
        Body::empty()
    } else {
        let read = Limited::new(body, BODY_LIMIT).collect();
        let read = match t.body {
            Some(d) => tokio::time::timeout(d, read).await,
            None => Ok(read.await),
        };
        match read {
            Ok(Ok(b)) => Body::from(b.to_bytes()),
            Err(_) => {
                tracing::debug!(address = %peer.ip(), "request body timed out");
                return refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s (request_body_timeout_secs); send the whole request at once",
                        t.body.unwrap_or_default().as_secs()
                    ),
                );
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than the API accepts (2 MB); send only the fields the endpoint documents".into(),
                );
            }
            Ok(Err(e)) => {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read ({e}); send the request again"),
                );
            }
        }
    };
    match app.oneshot(Request::from_parts(parts, body)).await {
        Ok(res) => res,
        Err(e) => match e {},
    }
}

/// A JSON error answer that closes the connection (its body may be left unread).
fn refusal(status: StatusCode, message: String) -> Response {
    let mut res = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    res
}

/// The soft open-files limit before and after [`raise_open_files_limit`], and the hard limit
/// (`None`: unlimited or unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises this process's soft limit on open files to its hard limit: each connection holds a
/// file descriptor, and the common default of 1,024 is a few hundred phones and a slowloris
/// away from refusing everyone. No privilege is needed (raising the hard limit needs one:
/// `LimitNOFILE=` in a systemd unit, `ulimit -Hn` as root, docker's `--ulimit nofile=`).
pub fn raise_open_files_limit() -> OpenFiles {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let lim = getrlimit(Resource::Nofile);
        let mut files = OpenFiles {
            before: lim.current,
            now: lim.current,
            hard: lim.maximum,
        };
        let raise = match (lim.current, lim.maximum) {
            (Some(cur), Some(max)) => max > cur,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if raise {
            // Some kernels refuse an unlimited soft limit for files (nr_open): try the hard
            // limit, else leave things as they are.
            if setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: lim.maximum,
                    maximum: lim.maximum,
                },
            )
            .is_ok()
            {
                files.now = getrlimit(Resource::Nofile).current;
            }
        }
        files
    }
    #[cfg(not(target_os = "linux"))]
    {
        OpenFiles {
            before: None,
            now: None,
            hard: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let files = raise_open_files_limit();
        if cfg!(target_os = "linux") {
            assert!(files.now >= files.before, "{files:?}");
            if let (Some(now), Some(hard)) = (files.now, files.hard) {
                assert_eq!(now, hard, "{files:?}");
            }
        }
    }

    #[test]
    fn repeated_log_lines_are_throttled() {
        let mut t = Throttle::default();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.ready(), Some(2), "the skipped lines are counted");
    }
}
