//! Memory stays bounded: 10,000 documents touched, then idle, and the server unloads them. The
//! resident memory before, at the peak and after unloading is printed for the record.

use std::time::{Duration, Instant};

use tally_core::collection;
use tally_proto::DocumentId;
use tally_tests::server::{Server, http};
use tally_tests::{Peer, ServerProcess};

const DOCS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_documents_are_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_IDLE_UNLOAD_SECS", "2"),
            ("TALLY_MAX_DOCUMENTS_PER_DEVICE", "20000"),
        ],
    );
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let rss_start = server.rss_kib();
    let mut peer = Peer::connect(&server.ws(), &token).await.unwrap();
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(DOCS);
    // The most documents the server held at once while they were being synced: with a 2 s idle
    // time it must stay far below the number touched (memory does not grow with documents).
    let mut loaded_max = 0;
    for i in 0..DOCS {
        let mut doc = collection::create(&c.id, &device).unwrap();
        let sig = c.world.signature(
            &device,
            &format!("s{i}"),
            "Amara Okafor",
            "M5V 2T6",
            "Toronto",
        );
        collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
        let id = DocumentId::random(&mut rand::thread_rng());
        peer.push(id, doc).await.unwrap();
        ids.push(id);
        if i % 500 == 499 {
            peer.settle(Duration::from_millis(30)).await.unwrap();
            let (_, health) = http(&server.base(), "GET", "/healthz", None, None);
            loaded_max = loaded_max.max(health["documents_loaded"].as_u64().unwrap());
        }
    }
    peer.settle(Duration::from_millis(1000)).await.unwrap();
    let not_acked = ids.iter().filter(|id| !peer.acknowledged(id)).count();
    assert_eq!(not_acked, 0, "{not_acked} documents not acknowledged");
    let rss_peak = server.rss_kib();
    println!(
        "{DOCS} documents synced in {:?}; at most {loaded_max} loaded at once; RSS start {rss_start} KiB, after sync {rss_peak} KiB",
        t0.elapsed()
    );
    assert!(
        loaded_max > 0,
        "the server reported no loaded documents while syncing"
    );
    assert!(
        loaded_max < (DOCS / 4) as u64,
        "{loaded_max} of {DOCS} documents held at once: idle documents are not unloaded"
    );
    drop(peer);

    // Idle: everything unloads (the campaign and totals documents may be reloaded by totals work).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut loaded = loaded_max;
    while Instant::now() < deadline && loaded > 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, health) = http(&server.base(), "GET", "/healthz", None, None);
        loaded = health["documents_loaded"].as_u64().unwrap();
    }
    let rss_idle = server.rss_kib();
    println!("after idle: loaded {loaded}; RSS {rss_idle} KiB (after sync {rss_peak} KiB)");
    assert!(
        loaded <= 2,
        "{loaded} documents still loaded after the idle time"
    );
    assert!(
        rss_idle <= rss_peak,
        "resident memory grew while idle: {rss_idle} KiB idle vs {rss_peak} KiB after sync"
    );
    assert_eq!(
        server.totals(&c.id)["signatures"].as_u64(),
        Some(DOCS as u64)
    );
}
