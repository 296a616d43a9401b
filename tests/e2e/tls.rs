//! TLS in `tally serve` itself: the real binary with a certificate and key from PEM files
//! serves the API over HTTPS and sync over WSS (a phone's signature is acknowledged and
//! counted); plain HTTP and silent clients on the TLS port do not disturb it; a bad pair of
//! files stops the server at start with a message naming the problem.

use std::process::Command;
use std::time::Duration;

use tally_core::collection;
use tally_tests::new_id;
use tally_tests::server::{Server, binary};
use tally_tests::{Peer, ServerProcess, tls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_and_wss_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let cert = tls::make_cert(dir.path());
    tls::trust(&cert.pem);
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        &[
            ("TALLY_TLS_CERT", cert.cert.to_str().unwrap()),
            ("TALLY_TLS_KEY", cert.key.to_str().unwrap()),
        ],
    );
    assert!(server.base().starts_with("https://"));
    assert!(server.ws().starts_with("wss://"));

    // A silent client holds a TLS handshake open; nobody else waits for it.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();

    // The organizer API over HTTPS, a phone over WSS.
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let mut peer = Peer::connect(&server.ws(), &token).await.unwrap();
    let mut doc = collection::create(&c.id, &device).unwrap();
    let sig = c
        .world
        .signature(&device, "s1", "Amara Okafor", "M5V 2T6", "Toronto");
    collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
    let id = new_id();
    peer.push(id, doc).await.unwrap();
    peer.until_acknowledged(&[id], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(peer.acknowledged(&id), "errors: {:?}", peer.errors);
    assert_eq!(server.totals(&c.id)["signatures"].as_u64(), Some(1));

    // Authentication works through the TLS listener: a wrong token is refused before the
    // upgrade, and logged with the client's address.
    let wrong = Peer::open(&server.ws(), Some("tly_0123")).await;
    match wrong {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }

    // Plain HTTP on the TLS port gets no HTTP answer, and the server carries on.
    let plain = ureq::get(&format!("http://127.0.0.1:{}/healthz", server.port))
        .timeout(Duration::from_secs(5))
        .call();
    assert!(plain.is_err(), "plain HTTP was answered on the TLS port");
    assert!(server.healthy());
    let log = server.log_text();
    let serving = log.lines().find(|l| l.contains("tally serving")).unwrap();
    assert!(serving.contains("tls=true"), "{serving}");
    let wrong = log.lines().find(|l| l.contains("wrong token")).unwrap();
    assert!(wrong.contains("address=127.0.0.1"), "{wrong}");
}

/// Runs `tally serve` with the given TLS files; returns its exit success and stderr.
fn serve_with(
    data: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (bool, String) {
    let out = Command::new(binary("tally"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .output()
        .expect("run tally serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_certificate_files_stop_the_server_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = tls::make_cert(&dir.path().join("a").tap_mkdir());
    let b = tls::make_cert(&dir.path().join("b").tap_mkdir());
    let data = dir.path().join("data");

    // A key that belongs to another certificate.
    let (ok, err) = serve_with(&data, &a.cert, &b.key);
    assert!(!ok, "tally serve started with a mismatched key");
    assert!(err.contains("do not work together"), "{err}");

    // A missing key file: named.
    let missing = dir.path().join("nope.pem");
    let (ok, err) = serve_with(&data, &a.cert, &missing);
    assert!(!ok);
    assert!(err.contains("nope.pem") && err.contains("key"), "{err}");

    // The certificate and key swapped: the certificate file holds no certificate.
    let (ok, err) = serve_with(&data, &a.key, &a.cert);
    assert!(!ok);
    assert!(
        err.contains("no CERTIFICATE block") || err.contains("key"),
        "{err}"
    );

    // Only one of the two: clap refuses it before anything starts.
    let out = Command::new(binary("tally"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(&a.cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
