//! The PostgreSQL backend's own matters against a real PostgreSQL: migrations, the pool and its
//! reconnection, errors mapped to what `StoreError` says to do, two stores (servers) writing one
//! document at once. Every storage behaviour is the conformance suite's (`tests/conformance.rs`,
//! its `postgres::` tests).
//!
//! Run under `scripts/with-postgres` (`scripts/with-postgres cargo test -p tally-store --test
//! postgres`), which hands the tests `TALLY_TEST_DATABASE_URL`. Each test works in a schema of
//! its own, so they run in parallel. Without a URL the tests that need the database say so and
//! skip; with `TALLY_POSTGRES_TESTS=required` (CI) they fail instead.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tally_store::{DocMeta, PG_SCHEMA_VERSION, PgStore, StoreError};

/// The test database's URL, or `None` (said loudly) when there is none and it is not required.
fn url(test: &str) -> Option<String> {
    match std::env::var("TALLY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("TALLY_POSTGRES_TESTS").as_deref() == Ok("required") {
                panic!(
                    "{test}: TALLY_POSTGRES_TESTS=required but TALLY_TEST_DATABASE_URL is not \
                     set: run the tests under scripts/with-postgres"
                );
            }
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no PostgreSQL (TALLY_TEST_DATABASE_URL is not set): run \
                 `scripts/with-postgres cargo test -p tally-store --test postgres` to run it"
            );
            None
        }
    }
}

/// A configuration whose sessions work in a new schema of their own, named after the test, and
/// carry the test's name as their application name (to find their server processes).
fn isolated(test: &str) -> Option<(postgres::Config, String)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = url(test)?;
    let schema = format!(
        "t_{test}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin =
        postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test database");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create the test's schema");
    let mut config: postgres::Config = url.parse().expect("the test URL parses");
    config.options(&format!("-c search_path={schema}"));
    config.application_name(&schema);
    Some((config, schema))
}

fn admin() -> postgres::Client {
    let url = std::env::var("TALLY_TEST_DATABASE_URL").expect("a test database");
    postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test database")
}

#[test]
fn migrations_create_every_table_once_and_are_idempotent() {
    let Some((config, schema)) = isolated("migrations") else {
        return;
    };
    let store = PgStore::connect_with(config.clone(), 2).expect("connect and migrate");
    assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    let tables: Vec<String> = admin()
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
             ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "agg_cells",
            "agg_keys",
            "agg_members",
            "agg_records",
            "agg_tokens",
            "audit",
            "checkins",
            "chunks",
            "devices",
            "documents",
            "erased_records",
            "invites",
            "projection_queue",
            "projection_state",
            "quarantine",
            "record_claims",
            "record_keys",
            "sheets",
            "signatures",
            "strikes",
            "sync_states",
            "tally_schema",
        ]
    );
    drop(store);
    let again = PgStore::connect_with(config, 2).expect("open an up-to-date database again");
    assert_eq!(again.schema_version().unwrap(), PG_SCHEMA_VERSION);
    let rows: i64 = admin()
        .query_one(&format!("SELECT count(*) FROM {schema}.tally_schema"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "one version row");
}

#[test]
fn servers_starting_together_migrate_once() {
    let Some((config, _schema)) = isolated("together") else {
        return;
    };
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || PgStore::connect_with(config, 1))
        })
        .collect();
    for handle in opened {
        let store = handle
            .join()
            .expect("thread")
            .expect("every server opens the database");
        assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    }
}

#[test]
fn a_schema_from_a_newer_tally_is_refused() {
    let Some((config, schema)) = isolated("newer") else {
        return;
    };
    drop(PgStore::connect_with(config.clone(), 1).expect("migrate"));
    admin()
        .batch_execute(&format!("UPDATE {schema}.tally_schema SET version = 999"))
        .unwrap();
    let err = PgStore::connect_with(config, 1).expect_err("a newer schema");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("run a newer tally"), "{err}");
}

#[test]
fn a_read_only_database_is_read_only() {
    let Some((mut config, _schema)) = isolated("readonly") else {
        return;
    };
    let options = format!(
        "{} -c default_transaction_read_only=on",
        config.get_options().unwrap_or("")
    );
    config.options(&options);
    let err = PgStore::connect_with(config, 1).expect_err("cannot migrate read-only");
    assert!(matches!(err, StoreError::ReadOnly(_)), "{err:?}");
    assert!(err.to_string().contains("writable"), "{err}");
}

/// Needs no PostgreSQL: nothing listens on the port.
#[test]
fn a_refused_connection_is_unavailable_and_says_retry() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = PgStore::connect(&format!("postgres://tally:secret@127.0.0.1:{port}/tally"))
        .expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("nothing was acknowledged, retry"),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{port}/tally")),
        "{message}"
    );
    assert!(
        !message.contains("secret"),
        "no password in messages: {message}"
    );
    assert!(
        !format!("{err:?}").contains("secret"),
        "nor in Debug: {err:?}"
    );
}

#[test]
fn a_malformed_url_says_how_to_write_one() {
    let err = PgStore::connect("postgres://tally@127.0.0.1:notaport/tally").expect_err("bad port");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string().contains("postgres://USER:PASSWORD@HOST"),
        "{err}"
    );
}

/// PostgreSQL ending the store's sessions (an administrator's shutdown): a call either fails as
/// `Unavailable` saying to retry, or already runs on a new connection; within a few calls the
/// store works again on a connection of its own, without being reopened.
#[test]
fn a_terminated_connection_is_replaced_by_itself() {
    let Some((config, schema)) = isolated("terminated") else {
        return;
    };
    let store = PgStore::connect_with(config, 1).expect("connect");
    store.schema_version().expect("works before");
    let pid_of = |admin: &mut postgres::Client| -> Vec<i32> {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&schema],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let mut admin = admin();
    let before = pid_of(&mut admin);
    assert_eq!(before.len(), 1, "one pooled session: {before:?}");
    let ended: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&before[0]])
        .unwrap()
        .get(0);
    assert!(ended);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refusals = 0;
    loop {
        match store.schema_version() {
            Ok(version) => {
                assert_eq!(version, PG_SCHEMA_VERSION);
                break;
            }
            Err(err @ StoreError::Unavailable { .. }) => {
                assert!(
                    err.to_string().contains("nothing was acknowledged, retry"),
                    "{err}"
                );
                refusals += 1;
                assert!(refusals <= 2, "the store did not reconnect: {err}");
            }
            Err(other) => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "no reconnection within 30 s");
    }
    let after = pid_of(&mut admin);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "a new session replaced the ended one");
    assert_eq!(store.open_connections(), 1);
}

// Several servers on one database (the conformance suite, tests/conformance.rs, plays every
// storage behaviour on PostgreSQL with one store).

const T0: i64 = 1_700_000_000_000;

fn meta(doc_id: &str, kind: &str, campaign: &str, owner: Option<&str>) -> DocMeta {
    DocMeta {
        doc_id: doc_id.into(),
        kind: kind.into(),
        campaign: campaign.into(),
        owner: owner.map(Into::into),
        created_at: T0,
    }
}

/// Two stores on one database (two servers) appending to one document from several threads at
/// once: the document's row lock numbers every chunk once, none lost, none twice.
#[test]
fn two_servers_appending_to_one_document_lose_nothing() {
    let Some((config, _)) = isolated("appends") else {
        return;
    };
    let servers = [
        std::sync::Arc::new(PgStore::connect_with(config.clone(), 3).expect("server A")),
        std::sync::Arc::new(PgStore::connect_with(config, 3).expect("server B")),
    ];
    servers[0]
        .put_meta(&meta("d", "collection", "c", None))
        .unwrap();
    const PER_THREAD: u8 = 25;
    let threads: Vec<_> = (0u8..6)
        .map(|t| {
            let store = servers[usize::from(t % 2)].clone();
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| store.append_chunk("d", &[t, i], T0).expect("append"))
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut seqs: Vec<i64> = threads
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    seqs.sort_unstable();
    let n = 6 * i64::from(PER_THREAD);
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "every seq once");
    let doc = servers[1].load_document("d").unwrap().unwrap();
    assert_eq!(doc.incremental.len() as i64, n);
    let mut chunks = doc.incremental.clone();
    chunks.sort();
    chunks.dedup();
    assert_eq!(chunks.len() as i64, n, "every chunk stored once");
}
