//! TLS for tests: a throwaway self-signed certificate for 127.0.0.1, and a client side that
//! trusts it. Once [`trust`] was called, the HTTP helper ([`crate::server::http`]) and
//! [`crate::Peer`] use it for `https://` and `wss://` URLs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A certificate and its key, as PEM files.
pub struct TestCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The certificate's PEM text.
    pub pem: String,
}

/// Writes a fresh self-signed certificate for `127.0.0.1` and `localhost` into `dir`.
pub fn make_cert(dir: &Path) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("generate a certificate");
    let pem = ck.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &pem).expect("write cert.pem");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key.pem");
    TestCert { cert, key, pem }
}

static CLIENT: Mutex<Option<Arc<rustls::ClientConfig>>> = Mutex::new(None);

/// From now on, TLS clients of this process trust `cert_pem` (and nothing else).
pub fn trust(cert_pem: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.expect("PEM certificate")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    *CLIENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
}

/// The TLS client configuration set by [`trust`].
pub fn client_config() -> Option<Arc<rustls::ClientConfig>> {
    CLIENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// An HTTP agent for `url`: one that trusts the certificate given to [`trust`] for an
/// `https://` URL once it was called, the default one otherwise; 30 s per call.
pub fn agent_for(url: &str) -> ureq::Agent {
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30));
    match client_config().filter(|_| url.starts_with("https://")) {
        Some(tls) => agent.tls_config(tls).build(),
        None => agent.build(),
    }
}
