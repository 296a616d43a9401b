//! Memory stays bounded: two rounds of 5,000 new documents each, touched then left idle; the
//! server never holds more than `max_loaded_documents` (200 here), unloads the rest when idle,
//! and the second round adds far less resident memory than the first. The resident memory
//! after each round is printed for the record.

use std::time::{Duration, Instant};

use tally_core::collection;
use tally_tests::new_id;
use tally_tests::server::{Server, http};
use tally_tests::{Peer, ServerProcess};

/// Documents pushed in each of the two rounds.
const DOCS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_documents_are_unloaded() {
    let _heavy = crate::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(
        dir.path(),
        &[
            ("TALLY_IDLE_UNLOAD_SECS", "2"),
            ("TALLY_MAX_DOCUMENTS_PER_DEVICE", "20000"),
            ("TALLY_MAX_LOADED_DOCUMENTS", "200"),
        ],
    );
    let c = server.campaign();
    let (device, token) = server.enroll(&c.id, "canvasser");
    let rss_start = server.rss_kib();
    let mut rss_idle = Vec::new();
    for round in 0..2 {
        let mut peer = Peer::connect(&server.ws(), &token).await.unwrap();
        let t0 = Instant::now();
        let mut ids = Vec::with_capacity(DOCS);
        // The most documents the server held at once while they were being synced: with a 2 s
        // idle time it must stay far below the number touched.
        let mut loaded_max = 0;
        for i in 0..DOCS {
            let mut doc = collection::create(&c.id, &device).unwrap();
            let sig = c.world.signature(
                &device,
                &format!("r{round}s{i}"),
                "Amara Okafor",
                "M5V 2T6",
                "Toronto",
            );
            collection::add_signature(&mut doc, &sig, &c.world.campaign).unwrap();
            let id = new_id();
            peer.push(id, doc).await.unwrap();
            ids.push(id);
            if i % 500 == 499 {
                peer.settle(Duration::from_millis(30)).await.unwrap();
                let (_, health) = http(&server.base(), "GET", "/healthz", None, None);
                loaded_max = loaded_max.max(health["documents_loaded"].as_u64().unwrap());
            }
        }
        peer.until_acknowledged(&ids, Duration::from_secs(120))
            .await
            .unwrap();
        let not_acked = ids.iter().filter(|id| !peer.acknowledged(id)).count();
        assert_eq!(
            not_acked, 0,
            "round {round}: {not_acked} documents not acknowledged"
        );
        let rss_peak = server.rss_kib();
        println!(
            "round {round}: {DOCS} documents synced in {:?}; at most {loaded_max} loaded at once; RSS after sync {rss_peak} KiB",
            t0.elapsed()
        );
        assert!(
            loaded_max > 0,
            "the server reported no loaded documents while syncing"
        );
        // The cap of 200 holds however fast documents arrive (a few in use may exceed it).
        assert!(
            loaded_max <= 210,
            "{loaded_max} of {DOCS} documents held at once, over max_loaded_documents (200)"
        );
        drop(peer);

        // Idle: everything unloads (the campaign and totals documents may be reloaded by totals
        // work).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut loaded = loaded_max;
        while Instant::now() < deadline && loaded > 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (_, health) = http(&server.base(), "GET", "/healthz", None, None);
            loaded = health["documents_loaded"].as_u64().unwrap();
        }
        let rss = server.rss_kib();
        println!("round {round}: after idle: loaded {loaded}; RSS {rss} KiB");
        assert!(
            loaded <= 2,
            "{loaded} documents still loaded after the idle time"
        );
        rss_idle.push(rss);
        assert_eq!(
            server.totals(&c.id)["signatures"].as_u64(),
            Some(((round + 1) * DOCS) as u64)
        );
    }
    // Memory does not grow with the number of documents ever touched: the second round of as
    // many new documents adds far less than the first (which also paid for the allocator's and
    // SQLite's working set). Exact equality is not expected: allocators keep some freed pages.
    let first = rss_idle[0].saturating_sub(rss_start);
    let second = rss_idle[1].saturating_sub(rss_idle[0]);
    println!("RSS start {rss_start} KiB; growth in round 0 {first} KiB, in round 1 {second} KiB");
    assert!(
        second * 2 < first.max(8 * 1024),
        "resident memory grew by {second} KiB over a second round of {DOCS} new documents (first round: {first} KiB): memory grows with documents ever touched"
    );
}
