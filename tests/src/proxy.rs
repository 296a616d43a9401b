//! [`CutProxy`]: a TCP proxy on 127.0.0.1:0 in front of a server, for tests of bad networks.
//! It forwards bytes both ways and can
//!
//! - cut a link after a byte budget (both directions counted together), set per new connection
//!   with [`CutProxy::set_limit`]: the link is dropped mid-frame, as when a phone loses signal;
//! - stall one or both directions ([`CutProxy::stall`]): bytes stop moving but the link stays
//!   open, as on a network that silently stops delivering;
//! - drop every open link at once ([`CutProxy::cut_all`]);
//! - deliver WebSocket frames twice ([`CutProxy::duplicate_frames`]): after the HTTP upgrade it
//!   finds frame boundaries in both directions and sends every n-th binary frame again, whole,
//!   as a retransmitting middlebox or a replaying attacker would.
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
    /// WebSocket frames sent twice.
    pub duplicated: usize,
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
    /// Every n-th binary WebSocket frame of a new link is sent twice; 0 for none.
    dup_every: AtomicU64,
    duplicated: AtomicUsize,
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
            dup_every: AtomicU64::new(0),
            duplicated: AtomicUsize::new(0),
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

    /// Links accepted from now on send every `every`-th binary WebSocket frame twice, in both
    /// directions; `None` turns it off.
    pub fn duplicate_frames(&self, every: Option<u64>) {
        self.shared
            .dup_every
            .store(every.unwrap_or(0), Ordering::SeqCst);
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
            duplicated: self.shared.duplicated.load(Ordering::SeqCst),
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
                let every = shared.dup_every.load(Ordering::SeqCst);
                links.spawn(link(client, shared.clone(), limit, every));
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

/// Finds WebSocket frame boundaries in one direction of a link (after the HTTP upgrade's
/// header) and repeats every n-th complete binary frame.
struct Framer {
    /// Still in the HTTP request or response header.
    in_http: bool,
    buf: Vec<u8>,
    every: u64,
    binary_frames: u64,
}

impl Framer {
    fn new(every: u64) -> Framer {
        Framer {
            in_http: true,
            buf: Vec::new(),
            every,
            binary_frames: 0,
        }
    }

    /// The length of the frame at the start of `b`, once all of it is there.
    fn frame_len(b: &[u8]) -> Option<usize> {
        let b1 = *b.get(1)?;
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let (ext, len) = match b1 & 0x7f {
            126 => (
                2,
                u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            ),
            127 => (
                8,
                usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?,
            ),
            n => (0, n as usize),
        };
        let total = 2 + ext + mask + len;
        (b.len() >= total).then_some(total)
    }

    /// Takes the bytes read; returns the bytes to send and how many frames went twice.
    fn feed(&mut self, bytes: &[u8]) -> (Vec<u8>, usize) {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.buf.len());
        let mut dups = 0;
        if self.in_http {
            match self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    out.extend(self.buf.drain(..end + 4));
                    self.in_http = false;
                }
                None => return (out, 0),
            }
        }
        while let Some(n) = Self::frame_len(&self.buf) {
            let frame: Vec<u8> = self.buf.drain(..n).collect();
            out.extend_from_slice(&frame);
            let binary_final = frame[0] & 0x80 != 0 && frame[0] & 0x0f == 2;
            if binary_final {
                self.binary_frames += 1;
                if self.binary_frames.is_multiple_of(self.every) {
                    out.extend_from_slice(&frame);
                    dups += 1;
                }
            }
        }
        (out, dups)
    }
}

/// Forwards up to `left` bytes of what `from` read (through `framer`, when frames are
/// duplicated); `Cut` once the budget is spent.
async fn forward(
    read: std::io::Result<usize>,
    buf: &[u8],
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    left: &mut u64,
    shared: &Shared,
    framer: Option<&mut Framer>,
) -> Flow {
    let n = match read {
        Ok(0) | Err(_) => return Flow::Closed,
        Ok(n) => n,
    };
    let framed;
    let bytes = match framer {
        Some(f) => {
            let (out, dups) = f.feed(&buf[..n]);
            shared.duplicated.fetch_add(dups, Ordering::SeqCst);
            framed = out;
            &framed[..]
        }
        None => &buf[..n],
    };
    let k = usize::try_from((*left).min(bytes.len() as u64)).unwrap_or(bytes.len());
    if to.write_all(&bytes[..k]).await.is_err() {
        return Flow::Closed;
    }
    *left -= k as u64;
    shared.bytes.fetch_add(k as u64, Ordering::SeqCst);
    if *left == 0 { Flow::Cut } else { Flow::Open }
}

async fn link(client: TcpStream, shared: Arc<Shared>, mut left: u64, dup_every: u64) {
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
    let (mut up_framer, mut down_framer) = match dup_every {
        0 => (None, None),
        n => (Some(Framer::new(n)), Some(Framer::new(n))),
    };
    loop {
        let go_up = !shared.stall_up.load(Ordering::SeqCst);
        let go_down = !shared.stall_down.load(Ordering::SeqCst);
        let flow = tokio::select! {
            // A cut comes before any more bytes.
            biased;
            _ = cut_all.changed() => Flow::Closed,
            r = cr.read(&mut up), if go_up => forward(r, &up, &mut uw, &mut left, &shared, up_framer.as_mut()).await,
            r = ur.read(&mut down), if go_down => forward(r, &down, &mut cw, &mut left, &shared, down_framer.as_mut()).await,
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

#[cfg(test)]
mod tests {
    use super::Framer;

    #[test]
    fn the_framer_repeats_every_nth_binary_frame_and_nothing_else() {
        let mut f = Framer::new(2);
        let header = b"GET /sync HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let text = vec![0x81, 0x02, b'h', b'i'];
        let bin = |b: u8| vec![0x82, 0x01, b];
        let masked = vec![0x82, 0x81, 1, 2, 3, 4, 9];
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        let mut all = header.clone();
        for part in [&text, &bin(1), &bin(2), &masked, &long] {
            all.extend_from_slice(part);
        }
        // Fed one byte at a time: boundaries are found across reads.
        let mut out = Vec::new();
        let mut dups = 0;
        for b in &all {
            let (o, d) = f.feed(std::slice::from_ref(b));
            out.extend(o);
            dups += d;
        }
        let mut expected = header;
        for part in [&text, &bin(1), &bin(2), &bin(2), &masked, &long, &long] {
            expected.extend_from_slice(part);
        }
        assert_eq!(dups, 2);
        assert_eq!(out, expected);
    }
}
