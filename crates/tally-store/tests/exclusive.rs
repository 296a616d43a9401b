//! `Storage::try_exclusive`: background work that must run once however many servers share
//! the database (a campaign's totals document rewrite, a document's compaction). On
//! PostgreSQL two stores on one database stand for two servers; on SQLite one process owns
//! the file, so the work is always its own.
//!
//! The PostgreSQL half runs in the database at `TALLY_TEST_DATABASE_URL` (run under
//! `scripts/with-postgres`); without it the test says so and skips, and with
//! `TALLY_POSTGRES_TESTS=required` (CI) it fails instead.

use std::io::Write as _;

use tally_store::{PgStore, Storage, Store};

#[test]
fn sqlite_work_is_always_this_servers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tally.db")).unwrap();
    let held = store.try_exclusive("totals c1").unwrap();
    assert!(held.is_some());
    // One process: nothing to wait for, even for the same work.
    assert!(store.try_exclusive("totals c1").unwrap().is_some());
}

#[test]
fn postgres_work_is_one_servers_at_a_time() {
    let url = match std::env::var("TALLY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("TALLY_POSTGRES_TESTS").as_deref() != Ok("required"),
                "TALLY_POSTGRES_TESTS=required but TALLY_TEST_DATABASE_URL is not set: run the \
                 tests under scripts/with-postgres"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED exclusive::postgres: no PostgreSQL (TALLY_TEST_DATABASE_URL is not \
                 set): run `scripts/with-postgres cargo test -p tally-store --test exclusive`"
            );
            return;
        }
    };
    let schema = format!("x_{}", std::process::id());
    postgres::Client::connect(&url, postgres::NoTls)
        .unwrap()
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let server = || {
        let mut config: postgres::Config = url.parse().unwrap();
        config.options(&format!("-c search_path={schema}"));
        PgStore::connect_with(config, 4).unwrap()
    };
    let (a, b) = (server(), server());

    let held = a.try_exclusive("totals c1").unwrap();
    assert!(held.is_some(), "nobody does it yet: A may");
    assert!(
        b.try_exclusive("totals c1").unwrap().is_none(),
        "A does it: B must not"
    );
    assert!(
        b.try_exclusive("totals c2").unwrap().is_some(),
        "another campaign's work is free"
    );
    assert!(
        b.try_exclusive("compact c1").unwrap().is_some(),
        "other work on the same campaign is free"
    );
    drop(held);
    let now_b = b.try_exclusive("totals c1").unwrap();
    assert!(now_b.is_some(), "A let go: B may");
    assert!(a.try_exclusive("totals c1").unwrap().is_none());

    // A server that dies lets go: its connection closes (here PostgreSQL ends it).
    drop(now_b);
    let mut config: postgres::Config = url.parse().unwrap();
    let dying = format!("dying_{schema}");
    config.options(&format!("-c search_path={schema}"));
    config.application_name(&dying);
    let c = PgStore::connect_with(config, 4).unwrap();
    let held_by_c = c.try_exclusive("totals c1").unwrap();
    assert!(held_by_c.is_some());
    assert!(a.try_exclusive("totals c1").unwrap().is_none());
    postgres::Client::connect(&url, postgres::NoTls)
        .unwrap()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&dying],
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while a.try_exclusive("totals c1").unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a dead server's lock was never let go"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The dead connection's guard lets go without complaint.
    drop(held_by_c);

    // The projector: while A's write holds what it took, B takes nothing (and does not
    // wait); after A's write, what A took is gone and B takes the rest.
    let (a, b): (&dyn Storage, &dyn Storage) = (&a, &b);
    a.write(|tx| {
        for n in 0..3 {
            tx.enqueue_projection("c1", "d1", 1, &[n], n.into())?;
        }
        Ok(())
    })
    .unwrap();
    let (took, go) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    std::thread::scope(|s| {
        let (took_tx, go_rx) = (took.0.clone(), go.1);
        s.spawn(move || {
            a.write(|tx| {
                let taken = tx.take_projection(2)?.expect("A projects");
                took_tx.send(taken.len()).unwrap();
                go_rx.recv().unwrap();
                Ok(())
            })
            .unwrap();
        });
        assert_eq!(took.1.recv().unwrap(), 2);
        let started = std::time::Instant::now();
        let b_took = b.write(|tx| tx.take_projection(10)).unwrap();
        assert!(b_took.is_none(), "A is projecting: B must not");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "B waited for A's lock"
        );
        go.0.send(()).unwrap();
    });
    let rest = b
        .write(|tx| tx.take_projection(10))
        .unwrap()
        .expect("A is done");
    assert_eq!(
        rest.iter().map(|q| q.payload.clone()).collect::<Vec<_>>(),
        [vec![2u8]],
        "A's two went with A's write"
    );
}
