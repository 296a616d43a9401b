//! A stranger (no token) or one canvasser (one token) against the server's sockets: the real
//! `tally serve` process with short timeouts and small caps, real sockets on 127.0.0.1 and on
//! other loopback addresses (127.0.0.2 and up stand for other clients, or for many clients behind
//! one carrier NAT). Each test plays one class of attack in several shapes, and checks that an
//! honest phone still syncs while it runs.
//!
//! - slowloris: half a request line, half the headers, a body never sent, an idle keep-alive
//!   connection; the per-address and total caps on connections that have not finished their
//!   request;
//! - silent peers: one that never writes (not even a pong), one that neither reads nor writes,
//!   against an honest idle phone that must stay connected;
//! - many sync connections on one token, and several tokens behind one address;
//! - live totals streams per device and in all; enrollment attempts per address;
//! - oversized messages: a close frame with code 1009 and the limit in its reason.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tally_core::collection;
use tally_proto::DocumentId;
use tally_proto::wire::{self, Message, PeerId, PeerMetadata};
use tally_tests::new_id;
use tally_tests::server::{Server, http};
use tally_tests::{Peer, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const QUIET: Duration = Duration::from_millis(300);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(server: &ServerProcess) -> SocketAddr {
    SocketAddr::new(ip("127.0.0.1"), server.port)
}

/// A TCP connection to the server from a chosen loopback address.
async fn tcp_from(local: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Reads until the server closes the connection or `within` passes; returns what was read and
/// when it was closed (`None`: still open).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(t0.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One HTTP/1.1 request over a new connection from `local`; the status and body.
async fn http_from(local: IpAddr, server: SocketAddr, request: &str) -> (u16, String) {
    let mut s = tcp_from(local, server).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(
        closed.is_some() || text.contains("\r\n\r\n"),
        "no answer: {text:?}"
    );
    status_and_body(&text)
}

fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn enroll_request(body: &str) -> String {
    format!(
        "POST /api/v1/enroll HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The `connections` count of `/healthz`.
fn connections(server: &ServerProcess) -> u64 {
    let (s, v) = http(&server.base(), "GET", "/healthz", None, None);
    assert_eq!(s, 200, "{v}");
    v["connections"].as_u64().unwrap()
}

/// Waits (polling, up to `within`) until `/healthz` counts `n` sync connections.
async fn wait_connections(server: &ServerProcess, n: u64, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if connections(server) == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A WebSocket to `/sync` from `local` with `token`.
async fn ws_from(local: IpAddr, server: SocketAddr, token: &str) -> Result<Ws, tungstenite::Error> {
    let stream = tcp_from(local, server).await;
    let mut req = format!("ws://{server}/sync").into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

fn join_frame(me: &str) -> Vec<u8> {
    wire::encode(&Message::Join {
        sender_id: PeerId::new(me),
        supported_protocol_versions: Some(vec!["1".into()]),
        peer_metadata: Some(PeerMetadata::default()),
    })
}

/// Reads a WebSocket until it closes or `within` passes: `Some((code, reason))` if the server
/// closed it (code 1005 when the close frame had none, 1006 when there was no close frame).
async fn closed_with(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => {
                return Some((u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(WsMessage::Close(None)))) => return Some((1005, String::new())),
            Ok(None) | Ok(Some(Err(_))) => return Some((1006, String::new())),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The WebSocket handshake by hand on a raw socket (for peers that misbehave below the
/// WebSocket library); returns the socket after the server's 101.
async fn raw_ws(local: IpAddr, server: SocketAddr, token: &str) -> TcpStream {
    let mut s = tcp_from(local, server).await;
    let req = format!(
        "GET /sync HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("the server answered the upgrade")
            .unwrap();
        assert!(n == 1, "closed during the upgrade: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A binary client frame in raw bytes (masked with a zero key, which leaves the payload as is).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let h = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        mask: Some([0; 4]),
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    h.format(payload.len() as u64, &mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

/// Server frames in raw bytes (unmasked): (opcode, payload) for each whole frame.
fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let op = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (usize::from(n), 2),
            _ => break,
        };
        if b.len() < head + len {
            break;
        }
        out.push((op, b[head..head + len].to_vec()));
        b = &b[head + len..];
    }
    out
}

/// A close frame's (code, reason) among raw server frames.
fn close_of(frames: &[(u8, Vec<u8>)]) -> Option<(u16, String)> {
    frames.iter().find(|(op, _)| *op == 8).map(|(_, p)| {
        if p.len() >= 2 {
            (
                u16::from_be_bytes([p[0], p[1]]),
                String::from_utf8_lossy(&p[2..]).to_string(),
            )
        } else {
            (1005, String::new())
        }
    })
}

/// A canvasser's phone with its collection stored: (device id, peer, collection id).
async fn phone(
    server: &ServerProcess,
    c: &tally_tests::Campaign,
) -> (String, String, Peer, DocumentId) {
    let (device, token) = server.enroll(&c.id, "canvasser");
    let mut p = Peer::connect(&server.ws(), &token).await.unwrap();
    let doc = new_id();
    p.push(doc, collection::create(&c.id, &device).unwrap())
        .await
        .unwrap();
    p.until_acknowledged(&[doc], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(p.acknowledged(&doc), "{:?}", p.errors);
    (device, token, p, doc)
}

/// The phone signs once more and syncs; returns how long until the server acknowledged it.
async fn signs(
    p: &mut Peer,
    doc: DocumentId,
    c: &tally_tests::Campaign,
    device: &str,
    n: u32,
) -> Duration {
    let t0 = Instant::now();
    let mut d = p.docs[&doc].fork();
    let sig = c.world.signature(
        device,
        &format!("s{n}"),
        &format!("Honest Signer {n}"),
        "M5V 2T6",
        "Toronto",
    );
    collection::add_signature(&mut d, &sig, &c.world.campaign).unwrap();
    p.docs.insert(doc, d);
    p.sync(doc).await.unwrap();
    while !p.acknowledged(&doc) && t0.elapsed() < Duration::from_secs(10) {
        p.settle(Duration::from_millis(50)).await.unwrap();
        assert!(
            !p.closed,
            "the honest phone was disconnected: {:?}",
            p.errors
        );
    }
    assert!(
        p.acknowledged(&doc),
        "the honest phone's signature {n} was not acknowledged: {:?}",
        p.errors
    );
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_timed_out_and_capped() {
    const PER_ADDRESS: usize = 8;
    const PENDING: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            // Long enough that no slow connection times out while the caps are checked, even
            // on a loaded machine; short enough for a quick test.
            ("TALLY_HEADER_READ_TIMEOUT_SECS", "3"),
            ("TALLY_REQUEST_BODY_TIMEOUT_SECS", "3"),
            (
                "TALLY_MAX_CONNECTIONS_PER_ADDRESS",
                &PER_ADDRESS.to_string(),
            ),
            ("TALLY_MAX_PENDING_CONNECTIONS", &PENDING.to_string()),
        ],
    );
    let a = addr(&server);
    let c = server.campaign();
    let (device, _, mut honest, doc) = phone(&server, &c).await;

    // Shapes of a request that never finishes, from one address.
    let many_headers = format!("GET /healthz HTTP/1.1\r\n{}", "X-Pad: 1\r\n".repeat(50));
    let shapes: [&str; PER_ADDRESS] = [
        "",
        "GET /hea",
        "GET /healthz HTTP/1.1\r\n",
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ",
        "GET /sync HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n",
        "POST /api/v1/enroll HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"code\"",
        "POST /api/v1/enroll HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"cod",
        &many_headers,
    ];
    let slow_from = ip("127.0.0.2");
    let t0 = Instant::now();
    // First a whole request, answered, then left idle (keep-alive): no longer counted against
    // the address, but timed out all the same.
    let mut idle = tcp_from(slow_from, a).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answered = Vec::new();
    while !String::from_utf8_lossy(&answered).contains("\"status\":\"ok\"}") {
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answered.extend_from_slice(&buf[..n]);
    }
    let mut slow = Vec::new();
    for shape in shapes {
        let mut s = tcp_from(slow_from, a).await;
        s.write_all(shape.as_bytes()).await.unwrap();
        slow.push(s);
    }
    // One more from that address is refused at once, saying why.
    let (status, body) = http_from(slow_from, a, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("too many connections from this address"),
        "{body}"
    );
    // Others are not affected: the API answers, the honest phone syncs.
    assert!(server.healthy(), "/healthz unreachable during the attack");
    let took = signs(&mut honest, doc, &c, &device, 1).await;
    eprintln!("slowloris: honest phone's sync during the attack: {took:?}");

    // Every slow connection is closed by the server within the timeouts; the one with a body
    // never sent hears 408 first, the idle keep-alive one got its answer first.
    for (i, s) in slow.iter_mut().enumerate() {
        let (got, closed) = read_until_closed(s, Duration::from_secs(6)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            closed.is_some(),
            "shape {i} ({:?}) still open after {:?}",
            shapes[i],
            t0.elapsed()
        );
        match i {
            5 | 6 => assert!(
                text.starts_with("HTTP/1.1 408") && text.contains("request body"),
                "shape {i}: {text}"
            ),
            _ => {}
        }
    }
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(6)).await;
    assert!(
        closed.is_some(),
        "the idle keep-alive connection is still open"
    );
    eprintln!(
        "slowloris: all {} slow connections closed after {:?}",
        slow.len(),
        t0.elapsed()
    );
    drop(slow);
    // Released: the address may connect again.
    let (status, _) = http_from(
        slow_from,
        a,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);

    // From many addresses: past the total cap new connections are refused (503) until the slow
    // ones time out; connected phones carry on meanwhile.
    let mut slow = Vec::new();
    for n in 0..PENDING {
        let from = ip(&format!("127.0.0.{}", 3 + n / 4));
        let mut s = tcp_from(from, a).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let (status, body) = http_from(
        ip("127.0.0.20"),
        a,
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not finished their request"), "{body}");
    signs(&mut honest, doc, &c, &device, 2).await;
    for s in &mut slow {
        let (_, closed) = read_until_closed(s, Duration::from_secs(6)).await;
        assert!(closed.is_some(), "a slow connection was not timed out");
    }
    assert!(server.healthy());
    assert!(
        server
            .log_text()
            .contains("connection refused: too many connections")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_pinged_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_PING_INTERVAL_SECS", "1"),
            ("TALLY_IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let a = addr(&server);
    let c = server.campaign();
    let (device, token, mut honest, doc) = phone(&server, &c).await;
    let t0 = Instant::now();

    // Never writes (reads everything, answers no ping), before and after joining.
    let mut mute = raw_ws(ip("127.0.0.1"), a, &token).await;
    let mut mute_joined = raw_ws(ip("127.0.0.1"), a, &token).await;
    mute_joined
        .write_all(&client_frame(&join_frame("mute")))
        .await
        .unwrap();
    // Neither reads nor writes.
    let _deaf = raw_ws(ip("127.0.0.1"), a, &token).await;
    assert_eq!(connections(&server), 4);

    // The honest phone idles through several idle timeouts (its WebSocket answers pings).
    let idle = tokio::time::timeout(
        Duration::from_secs(5),
        honest.settle(Duration::from_secs(60)),
    )
    .await;
    assert!(
        idle.is_err() && !honest.closed,
        "the idle honest phone was disconnected"
    );

    for (name, s) in [
        ("never writes", &mut mute),
        ("never writes, joined", &mut mute_joined),
    ] {
        let (got, closed) = read_until_closed(s, Duration::from_secs(2)).await;
        let frames = server_frames(&got);
        assert!(
            closed.is_some(),
            "{name}: still open after {:?}",
            t0.elapsed()
        );
        assert!(
            frames.iter().any(|(op, _)| *op == 9),
            "{name}: the server sent no ping: {frames:?}"
        );
        let (code, reason) = close_of(&frames).unwrap_or_else(|| panic!("{name}: no close frame"));
        assert_eq!(code, 1008, "{name}: {reason}");
        assert!(reason.contains("silent"), "{name}: {reason}");
    }
    assert!(
        wait_connections(&server, 1, Duration::from_secs(3)).await,
        "the peer that neither reads nor writes was not dropped ({} connections)",
        connections(&server)
    );
    eprintln!("silent peers dropped after {:?}", t0.elapsed());
    signs(&mut honest, doc, &c, &device, 1).await;
    assert!(server.log_text().contains("silent for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_connections_are_capped_per_device_not_per_address() {
    const PER_DEVICE: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_MAX_CONNECTIONS_PER_DEVICE", &PER_DEVICE.to_string()),
            // The per-address cap is for connections that have not finished their request: it
            // is far below what these devices hold at once, behind their one address.
            ("TALLY_MAX_CONNECTIONS_PER_ADDRESS", "6"),
        ],
    );
    let a = addr(&server);
    let c = server.campaign();
    let nat = ip("127.0.0.6");

    // Three tokens behind one address, each opening more than its cap, joined or not.
    let mut held = Vec::new();
    for (k, n) in [(0, 10), (1, 6), (2, 5)] {
        let (_, token) = server.enroll(&c.id, "canvasser");
        let mut socks = Vec::new();
        for i in 0..n {
            let mut ws = ws_from(nat, a, &token)
                .await
                .unwrap_or_else(|e| panic!("device {k}, connection {i} refused: {e}"));
            if i % 2 == 0 {
                ws.send(WsMessage::Binary(join_frame(&format!("d{k}-{i}")).into()))
                    .await
                    .unwrap();
            }
            socks.push(ws);
        }
        // The oldest were closed with a reason; the newest PER_DEVICE are open.
        let keep = socks.len() - PER_DEVICE;
        for (i, ws) in socks.iter_mut().enumerate() {
            let closed = closed_with(
                ws,
                if i < keep {
                    Duration::from_secs(3)
                } else {
                    QUIET
                },
            )
            .await;
            if i < keep {
                let (code, reason) =
                    closed.unwrap_or_else(|| panic!("device {k}: connection {i} still open"));
                assert_eq!(code, 1008, "{reason}");
                assert!(reason.contains("newer connection"), "{reason}");
            } else {
                assert!(
                    closed.is_none(),
                    "device {k}: newest connection {i} closed: {closed:?}"
                );
            }
        }
        held.push(socks);
    }
    assert!(
        wait_connections(&server, (3 * PER_DEVICE) as u64, Duration::from_secs(3)).await,
        "replaced connections were not released: {} open",
        connections(&server)
    );

    // An honest phone behind the same address connects and syncs.
    let (device, token) = server.enroll(&c.id, "canvasser");
    let ws = ws_from(nat, a, &token)
        .await
        .expect("the honest phone was refused");
    drop(ws);
    let mut p = Peer::connect(&server.ws(), &token).await.unwrap();
    let doc = new_id();
    p.push(doc, collection::create(&c.id, &device).unwrap())
        .await
        .unwrap();
    p.settle(QUIET).await.unwrap();
    let took = signs(&mut p, doc, &c, &device, 1).await;
    eprintln!("per-device cap: honest phone synced in {took:?} beside 12 held connections");
    assert!(server.log_text().contains("replaced by a newer connection"));
}

/// Opens a live totals stream; the status and, for 200, the socket kept open.
async fn stream(
    server: &ServerProcess,
    campaign: &str,
    token: &str,
) -> (u16, String, Option<TcpStream>) {
    let mut s = tcp_from(ip("127.0.0.1"), addr(server)).await;
    let req = format!(
        "GET /api/v1/campaigns/{campaign}/totals/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let text = String::from_utf8_lossy(&got).to_string();
        if text.starts_with("HTTP/1.1 200") && text.contains("event: totals") {
            return (200, text, Some(s));
        }
        if !text.starts_with("HTTP/1.1 200") && text.contains("\"}") {
            let (st, body) = status_and_body(&text);
            return (st, body, None);
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    panic!(
        "no answer to the stream request: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped_per_device_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_MAX_STREAMS_PER_DEVICE", "2"),
            ("TALLY_MAX_STREAMS", "3"),
        ],
    );
    let c = server.campaign();
    let (_, org_a) = server.enroll(&c.id, "organizer");
    let (_, org_b) = server.enroll(&c.id, "organizer");

    let (s1, _, a1) = stream(&server, &c.id, &org_a).await;
    let (s2, _, _a2) = stream(&server, &c.id, &org_a).await;
    assert_eq!((s1, s2), (200, 200));
    let (s3, body, _) = stream(&server, &c.id, &org_a).await;
    assert_eq!(s3, 429, "{body}");
    assert!(
        body.contains("live totals streams for this device (limit 2)"),
        "{body}"
    );
    let (s4, _, _b1) = stream(&server, &c.id, &org_b).await;
    assert_eq!(s4, 200);
    let (s5, body, _) = stream(&server, &c.id, &org_b).await;
    assert_eq!(s5, 503, "{body}");
    assert!(body.contains("3 live totals streams"), "{body}");
    // The admin is counted too: a wall screen's total is the server's.
    let (s6, _, _) = stream(&server, &c.id, &server.admin()).await;
    assert_eq!(s6, 503);

    // A stream that ends gives its place back.
    drop(a1);
    let t0 = Instant::now();
    loop {
        let (s, body, _keep) = stream(&server, &c.id, &org_b).await;
        if s == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a closed stream was not released: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_MAX_ENROLLMENTS_PER_ADDRESS", "5"),
            ("TALLY_ENROLL_WINDOW_SECS", "60"),
        ],
    );
    let a = addr(&server);
    let c = server.campaign();
    let from = ip("127.0.0.7");
    // Five attempts of any shape: wrong codes, not JSON, an empty body.
    let attempts = [
        r#"{"code": "AAAA-BBBB-CCCC"}"#,
        r#"{"code": "AAAA-BBBB-CCCD", "name": "x"}"#,
        "not json",
        "",
        r#"{"code": ""}"#,
    ];
    for body in attempts {
        let (s, answer) = http_from(from, a, &enroll_request(body)).await;
        assert!(s == 410 || s == 400, "{body:?}: {s} {answer}");
    }
    // The sixth is refused before the code is looked at, even a valid one.
    let (_, inv) = http(
        &server.base(),
        "POST",
        "/api/v1/invites",
        Some(&server.admin()),
        Some(serde_json::json!({ "campaign": c.id, "role": "canvasser" })),
    );
    let good = format!(r#"{{"code": "{}"}}"#, inv["code"].as_str().unwrap());
    let (s, answer) = http_from(from, a, &enroll_request(&good)).await;
    assert_eq!(s, 429, "{answer}");
    assert!(
        answer.contains("too many enrollment attempts from this address"),
        "{answer}"
    );
    assert!(answer.contains("wait"), "{answer}");
    // Another address enrolls with that very code.
    let (s, answer) = http_from(ip("127.0.0.1"), a, &enroll_request(&good)).await;
    assert_eq!(s, 200, "{answer}");
    assert!(server.log_text().contains("enrollment refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_with_1009_and_the_limit() {
    const MAX: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_env(dir.path(), &[("TALLY_MAX_FRAME_BYTES", &MAX.to_string())]);
    let a = addr(&server);
    let c = server.campaign();
    let (device, token, mut honest, doc) = phone(&server, &c).await;
    let limit = format!("exceeds max_frame_bytes = {MAX}");

    // Just over the limit, in one frame.
    let mut ws = ws_from(ip("127.0.0.1"), a, &token).await.unwrap();
    ws.send(WsMessage::Binary(join_frame("big-1").into()))
        .await
        .unwrap();
    ws.send(WsMessage::Binary(vec![0u8; MAX + 1].into()))
        .await
        .unwrap();
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(3))
        .await
        .expect("not closed");
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.contains(&format!("{} bytes", MAX + 1)) && reason.contains(&limit),
        "{reason}"
    );

    // A message in fragments, each under the limit, together over it.
    let mut ws = ws_from(ip("127.0.0.1"), a, &token).await.unwrap();
    for (i, op) in [Data::Binary, Data::Continue, Data::Continue]
        .into_iter()
        .enumerate()
    {
        let f = Frame::message(vec![0u8; MAX / 2], OpCode::Data(op), i == 2);
        if ws.send(WsMessage::Frame(f)).await.is_err() {
            break;
        }
    }
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(3))
        .await
        .expect("not closed");
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains(&limit), "{reason}");

    // A frame announcing far more than the limit, of which only a little ever comes.
    let mut s = raw_ws(ip("127.0.0.1"), a, &token).await;
    let announced = 100 * MAX;
    let mut head = Vec::new();
    let h = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        mask: Some([0; 4]),
        ..FrameHeader::default()
    };
    h.format(announced as u64, &mut head).unwrap();
    s.write_all(&head).await.unwrap();
    s.write_all(&vec![0u8; 4096]).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "the connection stayed open");
    let (code, reason) = close_of(&server_frames(&got)).expect("no close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.contains(&format!("{announced} bytes")) && reason.contains(&limit),
        "{reason}"
    );

    signs(&mut honest, doc, &c, &device, 1).await;
    assert!(server.log_text().contains(&limit));
}
