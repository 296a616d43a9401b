//! [`CutProxy`]: a TCP proxy on 127.0.0.1:0 in front of a server, for tests of bad networks.
//! It forwards bytes both ways and can
//!
//! - cut a link after a byte budget (both directions counted together), set per new connection
//!   with [`CutProxy::set_limit`]: the link is dropped mid-frame, as when a phone loses signal;
//! - stall one or both directions ([`CutProxy::stall`]): bytes stop moving but the link stays
//!   open, as on a network that silently stops delivering;
//! - drop every open link at once ([`CutProxy::cut_all`]).
//!
//! It runs on its own thread with its own tokio runtime, so tests that block (running child
//! processes) can use it without an async runtime of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Counters of what the proxy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Links accepted.
    pub connections: usize,
    /// Links dropped because they reached their byte budget.
    pub cuts: usize,
    /// Bytes forwarded, both directions, all links.
    pub bytes: u64,
}

struct Shared {
    upstream: SocketAddr,
    /// Byte budget given to each new link; `u64::MAX` for none.
    limit: AtomicU64,
    /// Client to server bytes are held back.
    stall_up: AtomicBool,
    /// Server to client bytes are held back.
    stall_down: AtomicBool,
    connections: AtomicUsize,
    cuts: AtomicUsize,
    bytes: AtomicU64,
    /// Bumped by `cut_all`: every open link ends.
    cut_all: watch::Sender<u64>,
}

/// A TCP proxy that can cut and stall links. See the module docs. Dropping it stops it and
/// closes every link.
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl CutProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`, with no byte budget.
    pub fn start(upstream: SocketAddr) -> CutProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("proxy address");
        let (cut_all, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstream,
            limit: AtomicU64::new(u64::MAX),
            stall_up: AtomicBool::new(false),
            stall_down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            cut_all,
        });
        let (stop, stop_rx) = watch::channel(false);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cut-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(accept_loop(listener, s, stop_rx));
            })
            .expect("proxy thread");
        CutProxy {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// The address phones connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Links accepted from now on are dropped after `bytes` bytes (both directions together);
    /// `None` lets them run. Open links keep the budget they started with.
    pub fn set_limit(&self, bytes: Option<u64>) {
        self.shared
            .limit
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Holds back (or lets go again) the bytes of every link, client to server (`up`) and
    /// server to client (`down`). Held bytes stay in the sockets' buffers, undelivered.
    pub fn stall(&self, up: bool, down: bool) {
        self.shared.stall_up.store(up, Ordering::SeqCst);
        self.shared.stall_down.store(down, Ordering::SeqCst);
    }

    /// Drops every open link (bytes held back are lost with them).
    pub fn cut_all(&self) {
        self.shared.cut_all.send_modify(|g| *g += 1);
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            cuts: self.shared.cuts.load(Ordering::SeqCst),
            bytes: self.shared.bytes.load(Ordering::SeqCst),
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let mut links = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let limit = shared.limit.load(Ordering::SeqCst);
                links.spawn(link(client, shared.clone(), limit));
            }
        }
    }
    links.abort_all();
}

/// How one direction of a link stands.
enum Flow {
    Open,
    Closed,
    Cut,
}

/// Forwards up to `left` bytes of what `from` read; `Cut` once the budget is spent.
async fn forward(
    read: std::io::Result<usize>,
    buf: &[u8],
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    left: &mut u64,
    shared: &Shared,
) -> Flow {
    let n = match read {
        Ok(0) | Err(_) => return Flow::Closed,
        Ok(n) => n,
    };
    let k = usize::try_from((*left).min(n as u64)).unwrap_or(n);
    if to.write_all(&buf[..k]).await.is_err() {
        return Flow::Closed;
    }
    *left -= k as u64;
    shared.bytes.fetch_add(k as u64, Ordering::SeqCst);
    if *left == 0 { Flow::Cut } else { Flow::Open }
}

async fn link(client: TcpStream, shared: Arc<Shared>, mut left: u64) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut cut_all = shared.cut_all.subscribe();
    cut_all.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let go_up = !shared.stall_up.load(Ordering::SeqCst);
        let go_down = !shared.stall_down.load(Ordering::SeqCst);
        let flow = tokio::select! {
            // A cut comes before any more bytes.
            biased;
            _ = cut_all.changed() => Flow::Closed,
            r = cr.read(&mut up), if go_up => forward(r, &up, &mut uw, &mut left, &shared).await,
            r = ur.read(&mut down), if go_down => forward(r, &down, &mut cw, &mut left, &shared).await,
            // Look at the stall flags again now and then.
            () = tokio::time::sleep(Duration::from_millis(10)) => Flow::Open,
        };
        match flow {
            Flow::Open => {}
            Flow::Closed => return,
            Flow::Cut => {
                shared.cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}
