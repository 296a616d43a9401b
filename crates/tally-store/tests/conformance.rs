//! The storage conformance suite (issue 17): every behaviour the server relies on, played
//! through the storage interface (`dyn Storage`) against every backend, so that a backend that
//! passes here can stand in for another. Each behaviour is a function of [`cases`] taking the
//! backend under test; [`conformance!`] makes one `#[test]` per behaviour per backend, so a
//! failure names both.
//!
//! Backends: SQLite (a file in a temporary folder), always; PostgreSQL (a schema of its own per
//! test in the database at `TALLY_TEST_DATABASE_URL`: run under `scripts/with-postgres`), which
//! skips loudly without one, and fails instead with `TALLY_POSTGRES_TESTS=required` (CI). A
//! backend's own matters (its files, its migrations, what a damaged file reads as, its pool)
//! stay in its own tests (`tests/store.rs`, `tests/keys.rs` for SQLite, `tests/postgres.rs`).
//!
//! Behaviours: documents, chunks and compaction; sync states; rollback of a failed write;
//! tokens, idle expiry, revocation, invites and re-enrollment; quarantine; the audit chain; the
//! record keys and erasure; the projection equal to the reference totals over random
//! histories, and a reindex reproducing it; a full or unavailable database refusing a write
//! whole, with a message that says what to do.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::Role;
use tally_core::cells::SignatureRow;
use tally_core::collection::Collection;
use tally_core::fixtures::{EVENT, NOW, World};
use tally_core::review::{Review, Strike, StrikeReason};
use tally_core::totals::{Totals, records, totals_of};
use tally_store::{
    AuditFilter, DocFilter, DocMeta, Filter, KeyOutcome, NewAudit, PgStore, ProjectionStatus,
    QuarantineFilter, Replaces, Storage, Store, StoreError, TokenRefusal,
};

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

/// A backend under test: the storage, and the means to fill it up (a full disk) and give the
/// room back, and to make the database unavailable and back, in the backend's own way.
pub struct Subject {
    storage: Arc<dyn Storage>,
    fill_up: Box<dyn Fn()>,
    make_room: Box<dyn Fn()>,
    go_away: Box<dyn Fn()>,
    come_back: Box<dyn Fn()>,
    /// Whatever must live as long as the storage (a temporary folder).
    _keep: Box<dyn std::any::Any>,
}

impl std::ops::Deref for Subject {
    type Target = dyn Storage;

    fn deref(&self) -> &(dyn Storage + 'static) {
        &*self.storage
    }
}

/// SQLite: a new file in a temporary folder; full means capped at its current size;
/// unavailable means another process holds the file's write lock (past the busy timeout).
fn sqlite(_test: &str) -> Option<Subject> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tally.db");
    let store = Arc::new(Store::open(&path).expect("open store"));
    let (full, room) = (store.clone(), store.clone());
    let holder: Arc<std::sync::Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let (take, give) = (holder.clone(), holder);
    Some(Subject {
        storage: store,
        fill_up: Box::new(move || {
            let pages = full.page_count().unwrap();
            full.set_max_pages(u32::try_from(pages).unwrap()).unwrap();
        }),
        make_room: Box::new(move || {
            room.set_max_pages(u32::MAX).unwrap();
        }),
        go_away: Box::new(move || {
            let other = rusqlite::Connection::open(&path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            *take.lock().unwrap() = Some(other);
        }),
        come_back: Box::new(move || {
            if let Some(other) = give.lock().unwrap().take() {
                other.execute_batch("ROLLBACK").unwrap();
            }
        }),
        _keep: Box::new(dir),
    })
}

/// PostgreSQL: a schema of its own in the database at `TALLY_TEST_DATABASE_URL` (so that the
/// tests run in parallel), or `None`, said loudly, when there is none (a failure instead when
/// `TALLY_POSTGRES_TESTS=required`, as in CI). Full means PostgreSQL refuses the write with its
/// disk-full error (a trigger raising SQLSTATE 53100 on new chunks: a real full volume needs a
/// mount the tests cannot make); unavailable means another session holds an exclusive lock on
/// the documents table past the store's lock timeout (as SQLite's other process holding the
/// write lock). The outage itself (refused connections, an administrator's shutdown, the pool
/// reconnecting) is `tests/postgres.rs`'s.
fn postgres(test: &str) -> Option<Subject> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = match std::env::var("TALLY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("TALLY_POSTGRES_TESTS").as_deref() != Ok("required"),
                "postgres::{test}: TALLY_POSTGRES_TESTS=required but TALLY_TEST_DATABASE_URL is \
                 not set: run the tests under scripts/with-postgres"
            );
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED postgres::{test}: no PostgreSQL (TALLY_TEST_DATABASE_URL is not set): \
                 run `scripts/with-postgres cargo test -p tally-store --test conformance`"
            );
            return None;
        }
    };
    let schema = format!(
        "c_{}_{}_{}",
        test.chars().take(40).collect::<String>(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let connect = || {
        ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect to the test database")
    };
    connect()
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create the test's schema");
    let mut config: ::postgres::Config = url.parse().expect("the test URL parses");
    config.options(&format!("-c search_path={schema}"));
    let store = Arc::new(PgStore::connect_with(config, 4).expect("open the PostgreSQL store"));
    let holder: Arc<std::sync::Mutex<Option<::postgres::Client>>> = Arc::default();
    let (take, give) = (holder.clone(), holder);
    let (full, room, away) = (schema.clone(), schema.clone(), schema);
    let (full_url, room_url, away_url) = (url.clone(), url.clone(), url);
    Some(Subject {
        storage: store,
        fill_up: Box::new(move || {
            ::postgres::Client::connect(&full_url, ::postgres::NoTls)
                .unwrap()
                .batch_execute(&format!(
                    "CREATE FUNCTION {full}.no_space() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'
                         USING ERRCODE = 'disk_full'; END $$;
                     CREATE TRIGGER no_space BEFORE INSERT ON {full}.chunks
                         FOR EACH ROW EXECUTE FUNCTION {full}.no_space();"
                ))
                .unwrap();
        }),
        make_room: Box::new(move || {
            ::postgres::Client::connect(&room_url, ::postgres::NoTls)
                .unwrap()
                .batch_execute(&format!("DROP TRIGGER no_space ON {room}.chunks"))
                .unwrap();
        }),
        go_away: Box::new(move || {
            let mut other = ::postgres::Client::connect(&away_url, ::postgres::NoTls).unwrap();
            other
                .batch_execute(&format!(
                    "BEGIN; LOCK TABLE {away}.documents IN ACCESS EXCLUSIVE MODE"
                ))
                .unwrap();
            *take.lock().unwrap() = Some(other);
        }),
        come_back: Box::new(move || {
            if let Some(mut other) = give.lock().unwrap().take() {
                other.batch_execute("ROLLBACK").unwrap();
            }
        }),
        _keep: Box::new(()),
    })
}

/// One `#[test]` per behaviour for a backend: `conformance!(name, opener; case, ...)`.
macro_rules! conformance {
    ($backend:ident, $open:expr; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[test]
                fn $case() {
                    let Some(subject) = $open(stringify!($case)) else {
                        return;
                    };
                    super::cases::$case(&*subject);
                }
            )*

            #[test]
            fn a_full_database_refuses_a_write_whole() {
                let Some(subject) = $open("full") else {
                    return;
                };
                super::cases::a_full_database_refuses_a_write_whole(&subject);
            }

            #[test]
            fn an_unavailable_database_refuses_a_write_whole() {
                let Some(subject) = $open("unavailable") else {
                    return;
                };
                super::cases::an_unavailable_database_refuses_a_write_whole(&subject);
            }
        }
    };
}

conformance!(sqlite, super::sqlite;
    documents_append_load_compact_round_trip,
    a_failing_write_rolls_back_everything,
    a_closure_with_its_own_error_type_rolls_back_too,
    document_meta_listing_and_conflicts,
    sync_states_round_trip_per_peer_and_document,
    idle_tokens_expire_except_the_admins,
    authenticate_known_unknown_and_revoked,
    invites_are_single_use_expire_and_unknown_codes_fail,
    quarantine_round_trip_and_filters,
    the_quarantine_keeps_metadata_always_and_raw_bytes_within_bounds,
    a_reenrolled_phone_replaces_the_device_whose_token_it_holds,
    the_storage_interface_commits_or_rolls_back_as_the_store_does,
    the_projection_equals_the_reference_over_random_histories,
    a_reindex_reproduces_the_projection,
    the_audit_chain_appends_and_verifies,
    record_keys_and_erasure,
    claims_and_the_projection_queue,
    a_batch_counts_as_its_records_one_by_one,
);

// The one more line: the same behaviours on PostgreSQL.
conformance!(postgres, super::postgres;
    documents_append_load_compact_round_trip,
    a_failing_write_rolls_back_everything,
    a_closure_with_its_own_error_type_rolls_back_too,
    document_meta_listing_and_conflicts,
    sync_states_round_trip_per_peer_and_document,
    idle_tokens_expire_except_the_admins,
    authenticate_known_unknown_and_revoked,
    invites_are_single_use_expire_and_unknown_codes_fail,
    quarantine_round_trip_and_filters,
    the_quarantine_keeps_metadata_always_and_raw_bytes_within_bounds,
    a_reenrolled_phone_replaces_the_device_whose_token_it_holds,
    the_storage_interface_commits_or_rolls_back_as_the_store_does,
    the_projection_equals_the_reference_over_random_histories,
    a_reindex_reproduces_the_projection,
    the_audit_chain_appends_and_verifies,
    record_keys_and_erasure,
    claims_and_the_projection_queue,
    a_batch_counts_as_its_records_one_by_one,
);

fn meta(doc_id: &str, kind: &str, campaign: &str, owner: Option<&str>) -> DocMeta {
    DocMeta {
        doc_id: doc_id.to_owned(),
        kind: kind.to_owned(),
        campaign: campaign.to_owned(),
        owner: owner.map(str::to_owned),
        created_at: T0,
    }
}

fn refusal<'a>(
    device: &'a str,
    raw: &'a [u8],
    keep_raw: bool,
    now: i64,
) -> tally_store::NewQuarantine<'a> {
    tally_store::NewQuarantine {
        device_id: device,
        doc_id: "d1",
        reason: "signatures/s1/name: unknown field",
        rule: Some("unknown field"),
        raw,
        keep_raw,
        change_hashes: &[],
        now,
    }
}

const TZ: &str = "America/Toronto";
const DOCS: [(&str, &str); 3] = [("docA", "dev1"), ("docB", "dev1"), ("docC", "dev2")];
const PEOPLE: [(&str, &str); 3] = [
    ("Amara Okafor", "M5V 2T6"),
    ("Li Wei", "L8P 4R5"),
    ("José Ramírez", "H2X 1Y4"),
];
/// Three cities, two of them spelled several ways (one cell each, issue 13).
const CITIES: [&str; 6] = [
    "Toronto",
    "Hamilton",
    "Montréal",
    "TORONTO",
    " toronto ",
    "Montreal",
];

/// What the rows should count: the reference over the same records, and the reference of
/// the records (each once) that match `filter`.
fn reference(
    world: &World,
    docs: &BTreeMap<&str, Collection>,
    review: &Review,
    filter: &Filter,
) -> Totals {
    let cols: Vec<Collection> = docs.values().cloned().collect();
    let mut r = records(&world.campaign.id, &cols);
    r.signatures.retain(|_, s| {
        filter
            .event
            .as_ref()
            .is_none_or(|e| s.event.as_ref() == Some(e))
            && filter.from.is_none_or(|f| s.collected_at >= f)
            && filter.to.is_none_or(|t| s.collected_at < t)
            && filter
                .city
                .as_ref()
                .is_none_or(|c| tally_core::city::same_city(&s.city, c))
            && filter.fsa.as_ref().is_none_or(|f| s.fsa == *f)
            && filter
                .riding
                .as_ref()
                .is_none_or(|r| s.riding.as_ref() == Some(r))
            && filter
                .canvasser
                .as_ref()
                .is_none_or(|c| s.collected_by == *c)
    });
    r.checkins.retain(|_, c| {
        filter.event.as_ref().is_none_or(|e| c.event == *e)
            && filter.from.is_none_or(|f| c.at >= f)
            && filter.to.is_none_or(|t| c.at < t)
    });
    let mut t = totals_of(&world.campaign, &r, review);
    if filter.city.is_some()
        || filter.fsa.is_some()
        || filter.riding.is_some()
        || filter.canvasser.is_some()
    {
        // City, FSA, riding and canvasser do not narrow check-ins (see `Filter`).
        let all = totals_of(&world.campaign, &records(&world.campaign.id, &cols), review);
        if filter.event.is_none() && filter.from.is_none() && filter.to.is_none() {
            t.checkins = all.checkins;
        }
    }
    t
}

/// Every filter the dashboard offers, alone (with values several spellings, no record, or
/// records without the field select) and in every pair (issue 18).
fn every_filter() -> Vec<Filter> {
    let one = |f: fn(&mut Filter)| {
        let mut filter = Filter::default();
        f(&mut filter);
        filter
    };
    let kinds = [
        one(|f| f.event = Some(EVENT.into())),
        one(|f| f.city = Some("MONTRÉAL ".into())),
        one(|f| f.fsa = Some("M5V".into())),
        one(|f| f.riding = Some("Spadina".into())),
        one(|f| f.canvasser = Some("dev1".into())),
        one(|f| (f.from, f.to) = (Some(NOW + HOUR), Some(NOW + 40 * HOUR))),
    ];
    let mut all = vec![
        Filter::default(),
        one(|f| f.city = Some("Hamilton".into())),
        one(|f| f.city = Some(" toronto".into())),
        one(|f| f.city = Some("Nowhere".into())),
        one(|f| f.fsa = Some("L8P".into())),
        one(|f| f.fsa = Some("K1A".into())),
        one(|f| f.riding = Some("Nowhere".into())),
        one(|f| f.canvasser = Some("dev2".into())),
        one(|f| f.from = Some(NOW + 5 * HOUR)),
        one(|f| f.to = Some(NOW + 5 * HOUR)),
    ];
    for (i, a) in kinds.iter().enumerate() {
        all.push(a.clone());
        for b in &kinds[i + 1..] {
            all.push(Filter {
                event: a.event.clone().or(b.event.clone()),
                from: a.from.or(b.from),
                to: a.to.or(b.to),
                city: a.city.clone().or(b.city.clone()),
                fsa: a.fsa.clone().or(b.fsa.clone()),
                riding: a.riding.clone().or(b.riding.clone()),
                canvasser: a.canvasser.clone().or(b.canvasser.clone()),
            });
        }
    }
    all
}

/// Every filter's totals, queried (`query_totals`) and scanned (`scan_totals`), equal to the
/// reference's.
fn check_every_filter(
    store: &dyn Storage,
    world: &World,
    docs: &BTreeMap<&str, Collection>,
    review: &Review,
    what: &str,
) {
    let c = &world.campaign.id;
    for f in every_filter() {
        let want = reference(world, docs, review, &f);
        let (queried, scanned) = store
            .read(|r| Ok((r.query_totals(c, &f)?, r.scan_totals(c, &f)?)))
            .unwrap();
        assert_eq!(queried, want, "{what}: query {f:?}");
        assert_eq!(scanned, want, "{what}: scan {f:?}");
    }
}

/// The id of collection `d` of campaign `campaign` (ids are unique across campaigns).
fn doc_id(d: &str, campaign: &str) -> String {
    format!("{d}@{campaign}")
}

/// A random history of one campaign: eight projection batches of copies of a few record ids
/// written into three collections (two of one device), with corrections, one-way withdrawals
/// and strikes. After every batch, `check` sees the collections and the review as written.
fn random_history(
    store: &dyn Storage,
    world: &World,
    seed: u64,
    mut check: impl FnMut(&BTreeMap<&'static str, Collection>, &Review),
) -> (BTreeMap<&'static str, Collection>, Review) {
    let camp = world.campaign.id.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut docs: BTreeMap<&'static str, Collection> = DOCS
        .iter()
        .map(|(d, owner)| {
            (
                *d,
                Collection {
                    campaign: camp.clone(),
                    owner: owner.to_string(),
                    signatures: BTreeMap::new(),
                    checkins: BTreeMap::new(),
                },
            )
        })
        .collect();
    let mut review = Review::default();
    for _ in 0..8 {
        store
            .write(|tx| {
                let mut b = tx.projection_batch(&camp);
                for _ in 0..rng.gen_range(1..6) {
                    let (d, owner) = DOCS[rng.gen_range(0..DOCS.len())];
                    let n = rng.gen_range(0..4usize);
                    let col = docs.get_mut(d).unwrap();
                    match rng.gen_range(0..10) {
                        0..6 => {
                            let id = format!("s{n}");
                            let (name, postal) = PEOPLE[rng.gen_range(0..PEOPLE.len())];
                            let mut s = world.signature(owner, &id, name, postal, "Toronto");
                            s.city = CITIES[rng.gen_range(0..CITIES.len())].into();
                            // Set at creation, never changed: the same per copy.
                            s.collected_at = NOW + ((d.len() + n) as i64 % 3) * 5 * HOUR;
                            s.event = rng.gen_bool(0.5).then(|| EVENT.to_string());
                            s.riding = rng.gen_bool(0.5).then(|| "Spadina".to_string());
                            let was = col.signatures.get(&id).is_some_and(|o| o.withdrawn);
                            s.withdrawn = was || rng.gen_bool(0.2);
                            b.signature(&doc_id(d, &camp), &s.id, &SignatureRow::of(&s, TZ))?;
                            col.signatures.insert(id, s);
                        }
                        6..9 => {
                            let id = format!("c{n}");
                            let mut ci = world.checkin(
                                owner,
                                &id,
                                PEOPLE[rng.gen_range(0..PEOPLE.len())].0,
                                rng.gen_bool(0.5),
                            );
                            ci.at = NOW + ((d.len() + n) as i64 % 2) * 30 * HOUR;
                            let was = col.checkins.get(&id).is_some_and(|o| o.withdrawn);
                            ci.withdrawn = was || rng.gen_bool(0.2);
                            b.checkin(&doc_id(d, &camp), &ci)?;
                            col.checkins.insert(id, ci);
                        }
                        _ => {
                            let strike = Strike {
                                signature: format!("s{n}"),
                                reason: StrikeReason::Duplicate,
                                by: "org1".into(),
                                at: NOW,
                                revoked: rng.gen_bool(0.3),
                            };
                            b.strike(&strike)?;
                            review.strikes.insert(strike.signature.clone(), strike);
                        }
                    }
                }
                b.flush()
            })
            .unwrap();
        check(&docs, &review);
    }
    (docs, review)
}

/// One record of a projection batch, as the projector hands it over.
#[derive(Clone)]
enum Op {
    Signature(&'static str, SignatureRow, String),
    Checkin(&'static str, tally_core::collection::Checkin),
    Strike(Strike),
    Sheet(tally_core::review::Sheet),
}

/// A random run of records over a few ids (so that one batch often holds a record and its
/// edit, its strike and revocation, or its copy in another lineage's collection).
fn random_ops(world: &World, rng: &mut StdRng, n: usize) -> Vec<Op> {
    use tally_core::review::{Sheet, SheetStatus};
    (0..n)
        .map(|_| {
            let di = rng.gen_range(0..DOCS.len());
            let (d, owner) = DOCS[di];
            let k = rng.gen_range(0..4usize);
            match rng.gen_range(0..20) {
                0..11 => {
                    let id = format!("s{k}");
                    let (name, postal) = PEOPLE[rng.gen_range(0..PEOPLE.len())];
                    let mut s = world.signature(owner, &id, name, postal, "Toronto");
                    s.city = CITIES[rng.gen_range(0..CITIES.len())].into();
                    // Set at creation, never changed: the same per copy, another per lineage.
                    s.collected_at = NOW + ((di + k) as i64 % 3) * 5 * HOUR;
                    s.event = rng.gen_bool(0.5).then(|| EVENT.to_string());
                    s.riding = rng.gen_bool(0.5).then(|| "Spadina".to_string());
                    s.withdrawn = rng.gen_bool(0.15);
                    Op::Signature(d, SignatureRow::of(&s, TZ), id)
                }
                11..16 => {
                    let mut ci = world.checkin(
                        owner,
                        &format!("c{k}"),
                        PEOPLE[rng.gen_range(0..PEOPLE.len())].0,
                        rng.gen_bool(0.5),
                    );
                    ci.at = NOW + ((di + k) as i64 % 2) * 30 * HOUR;
                    ci.withdrawn = rng.gen_bool(0.15);
                    Op::Checkin(d, ci)
                }
                16..19 => Op::Strike(Strike {
                    signature: format!("s{k}"),
                    reason: StrikeReason::Duplicate,
                    by: "org1".into(),
                    at: NOW + rng.gen_range(0..3),
                    revoked: rng.gen_bool(0.4),
                }),
                _ => Op::Sheet(Sheet {
                    serial: format!("P{}", k % 2),
                    count: rng.gen_range(0..30),
                    riding: rng.gen_bool(0.5).then(|| "Spadina".to_string()),
                    status: [SheetStatus::Collected, SheetStatus::Counted][rng.gen_range(0..2)],
                }),
            }
        })
        .collect()
}

/// Projects `ops` into campaign `camp` in one write, one batch per group of `per_batch`.
fn project_ops(store: &dyn Storage, camp: &str, ops: &[Op], per_batch: usize) {
    for group in ops.chunks(per_batch.max(1)) {
        store
            .write(|tx| {
                let mut b = tx.projection_batch(camp);
                for op in group {
                    match op {
                        Op::Signature(d, row, id) => b.signature(&doc_id(d, camp), id, row)?,
                        Op::Checkin(d, ci) => b.checkin(&doc_id(d, camp), ci)?,
                        Op::Strike(s) => b.strike(s)?,
                        Op::Sheet(s) => b.sheet(s)?,
                    }
                }
                b.flush()
            })
            .unwrap();
    }
}

/// The lines of `dump` that are campaign `camp`'s, with its name replaced by `as_name`.
fn campaign_lines(
    dump: &BTreeMap<&'static str, Vec<String>>,
    camp: &str,
    as_name: &str,
) -> BTreeMap<&'static str, Vec<String>> {
    dump.iter()
        .map(|(table, lines)| {
            let mut mine: Vec<String> = lines
                .iter()
                .filter(|l| l.contains(camp))
                .map(|l| l.replace(camp, as_name))
                .collect();
            mine.sort();
            (*table, mine)
        })
        .collect()
}

pub mod cases {
    use super::*;

    pub fn documents_append_load_compact_round_trip(store: &dyn Storage) {
        assert!(store.load_document("d1").unwrap().is_none());
        assert!(
            store
                .put_meta(&meta("d1", "collection", "c1", Some("dev1")))
                .unwrap()
        );

        let chunks: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 10 + usize::from(i)]).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let seq = store.append_chunk("d1", chunk, T0 + i as i64).unwrap();
            assert_eq!(seq, i as i64 + 1);
        }
        let doc = store.load_document("d1").unwrap().unwrap();
        assert_eq!(doc.meta, meta("d1", "collection", "c1", Some("dev1")));
        assert_eq!(doc.snapshot, None);
        assert_eq!(doc.incremental, chunks);
        assert_eq!(doc.last_seq, 5);
        let stats = store.chunks_since_snapshot("d1").unwrap();
        assert_eq!((stats.count, stats.bytes, stats.snapshot_bytes), (5, 60, 0));

        // Compact through seq 3 while chunks 4 and 5 exist: they must stay, in order.
        let snapshot = b"snapshot-through-3".to_vec();
        assert!(store.compact("d1", &snapshot, 3, T0 + 10).unwrap());
        let doc = store.load_document("d1").unwrap().unwrap();
        assert_eq!(doc.snapshot.as_deref(), Some(snapshot.as_slice()));
        assert_eq!(doc.incremental, chunks[3..].to_vec());
        assert_eq!(doc.last_seq, 5);
        let stats = store.chunks_since_snapshot("d1").unwrap();
        assert_eq!((stats.count, stats.bytes), (2, 13 + 14));
        assert_eq!(stats.snapshot_bytes, snapshot.len() as u64);

        // Appending continues after the highest seq, never reusing a compacted one.
        assert_eq!(store.append_chunk("d1", b"six", T0 + 11).unwrap(), 6);

        // A stale compaction (through an older seq than the stored snapshot) changes nothing.
        assert!(!store.compact("d1", b"older", 2, T0 + 12).unwrap());
        // Compacting everything leaves only the snapshot.
        assert!(store.compact("d1", b"all", 6, T0 + 13).unwrap());
        let doc = store.load_document("d1").unwrap().unwrap();
        assert_eq!(doc.snapshot.as_deref(), Some(&b"all"[..]));
        assert!(doc.incremental.is_empty());
        assert_eq!(doc.last_seq, 6);

        // Misuse is reported, not guessed at.
        assert!(matches!(
            store.compact("d1", b"x", 7, T0),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.compact("nope", b"x", 1, T0),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.append_chunk("nope", b"x", T0),
            Err(StoreError::NotFound(_))
        ));
    }

    pub fn a_failing_write_rolls_back_everything(store: &dyn Storage) {
        let world = World::new();
        let camp = world.campaign.id.clone();
        let err = store
            .write(|tx| {
                tx.put_meta(&meta("d1", "collection", &camp, Some("dev1")))?;
                tx.append_chunk("d1", b"changes", T0)?;
                tx.save_sync_state("peer", "d1", b"state", T0)?;
                tx.quarantine("dev1", "d1", "bad change", b"msg", T0)?;
                let mut batch = tx.projection_batch(&camp);
                let s = world.signature("dev1", "s1", "Li Wei", "L8P 4R5", "Montreal");
                batch.signature("d1", &s.id, &SignatureRow::of(&s, "UTC"))?;
                batch.flush()?;
                assert_eq!(tx.totals(&camp)?.signatures, 1, "seen inside the write");
                Err::<(), _>(StoreError::Invalid("the projection refused".into()))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)));

        assert!(store.doc_meta("d1").unwrap().is_none());
        assert!(store.load_document("d1").unwrap().is_none());
        assert!(store.load_sync_state("peer", "d1").unwrap().is_none());
        assert!(
            store
                .list_quarantine(&QuarantineFilter::default())
                .unwrap()
                .is_empty()
        );
        let (rows, totals) = store
            .read(|r| Ok((r.signature_rows()?, r.totals(&camp)?)))
            .unwrap();
        assert_eq!((rows, totals.signatures), (0, 0));

        // The same work without the error commits all of it.
        store
            .write(|tx| {
                tx.put_meta(&meta("d1", "collection", "c1", Some("dev1")))?;
                tx.append_chunk("d1", b"changes", T0)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store.load_document("d1").unwrap().unwrap().incremental,
            vec![b"changes".to_vec()]
        );
    }

    pub fn a_closure_with_its_own_error_type_rolls_back_too(store: &dyn Storage) {
        #[derive(Debug)]
        enum ServerError {
            Rejected,
            Store(StoreError),
        }
        impl From<StoreError> for ServerError {
            fn from(err: StoreError) -> Self {
                ServerError::Store(err)
            }
        }
        let result = store.write_with_error(|tx| {
            tx.put_meta(&meta("d1", "collection", "c1", None))?;
            Err::<(), _>(ServerError::Rejected)
        });
        assert!(matches!(result, Err(ServerError::Rejected)));
        assert!(store.doc_meta("d1").unwrap().is_none());
        let result = store.write_with_error(|tx| -> Result<i64, ServerError> {
            Ok(tx.append_chunk("missing", b"x", T0)?)
        });
        assert!(matches!(
            result,
            Err(ServerError::Store(StoreError::NotFound(_)))
        ));
    }

    pub fn document_meta_listing_and_conflicts(store: &dyn Storage) {
        store
            .put_meta(&meta("camp1", "campaign", "camp1", None))
            .unwrap();
        store
            .put_meta(&meta("camp2", "campaign", "camp2", None))
            .unwrap();
        store
            .put_meta(&meta("col1", "collection", "camp1", Some("devA")))
            .unwrap();
        store
            .put_meta(&meta("col2", "collection", "camp1", Some("devA")))
            .unwrap();
        store
            .put_meta(&meta("col3", "collection", "camp2", Some("devB")))
            .unwrap();

        // Re-declaring identical meta is fine; changing kind, campaign or owner is not.
        assert!(
            !store
                .put_meta(&meta("col1", "collection", "camp1", Some("devA")))
                .unwrap()
        );
        assert!(matches!(
            store.put_meta(&meta("col1", "collection", "camp1", Some("devB"))),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.put_meta(&meta("", "collection", "camp1", None)),
            Err(StoreError::Invalid(_))
        ));

        let ids = |filter: DocFilter| -> Vec<String> {
            store
                .list_documents(&filter)
                .unwrap()
                .into_iter()
                .map(|m| m.doc_id)
                .collect()
        };
        assert_eq!(ids(DocFilter::default()).len(), 5);
        assert_eq!(
            ids(DocFilter {
                campaign: Some("camp1".into()),
                kind: Some("collection".into()),
                ..DocFilter::default()
            }),
            ["col1", "col2"]
        );
        assert_eq!(
            ids(DocFilter {
                owner: Some("devB".into()),
                ..DocFilter::default()
            }),
            ["col3"]
        );
        let campaigns: Vec<String> = store
            .list_campaigns()
            .unwrap()
            .into_iter()
            .map(|m| m.doc_id)
            .collect();
        assert_eq!(campaigns, ["camp1", "camp2"]);
        assert_eq!(store.count_documents_by_owner("devA").unwrap(), 2);
        assert_eq!(store.count_documents_by_owner("nobody").unwrap(), 0);
        assert_eq!(store.count_collections("devA", "camp1").unwrap(), 2);
        assert_eq!(store.count_collections("devA", "camp2").unwrap(), 0);
        assert_eq!(store.count_collections("devB", "camp2").unwrap(), 1);
        assert_eq!(
            store.doc_meta("col3").unwrap(),
            Some(meta("col3", "collection", "camp2", Some("devB")))
        );
    }

    pub fn sync_states_round_trip_per_peer_and_document(store: &dyn Storage) {
        store
            .put_meta(&meta("d1", "collection", "c1", None))
            .unwrap();
        store
            .put_meta(&meta("d2", "collection", "c1", None))
            .unwrap();
        assert!(store.load_sync_state("p1", "d1").unwrap().is_none());
        store.save_sync_state("p1", "d1", b"a", T0).unwrap();
        store.save_sync_state("p1", "d2", b"b", T0).unwrap();
        store.save_sync_state("p2", "d1", b"c", T0).unwrap();
        store.save_sync_state("p1", "d1", b"a2", T0 + 1).unwrap();
        assert_eq!(
            store.load_sync_state("p1", "d1").unwrap().as_deref(),
            Some(&b"a2"[..])
        );
        assert_eq!(
            store.load_sync_state("p1", "d2").unwrap().as_deref(),
            Some(&b"b"[..])
        );
        assert_eq!(
            store.load_sync_state("p2", "d1").unwrap().as_deref(),
            Some(&b"c"[..])
        );
        assert!(matches!(
            store.save_sync_state("p1", "unknown", b"x", T0),
            Err(StoreError::NotFound(_))
        ));
    }

    pub fn idle_tokens_expire_except_the_admins(store: &dyn Storage) {
        let (_admin, admin_token) = store.create_admin("laptop", T0).unwrap();
        let (_id, code) = store
            .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
            .unwrap();
        let (phone, token) = store.redeem_invite(code.as_str(), "phone", T0).unwrap();
        let day = 24 * HOUR;
        let ttl = Some(30 * day);
        // Used on day 20: the idle clock restarts there, so day 45 is still fine.
        let used = store
            .check_token(token.as_str(), T0 + 20 * day, ttl)
            .unwrap()
            .unwrap();
        assert!(store.record_seen(&used, T0 + 20 * day).unwrap());
        let used = store
            .check_token(token.as_str(), T0 + 45 * day, ttl)
            .unwrap()
            .unwrap();
        assert_eq!(used.device_id, phone.device_id);
        assert_eq!(used.last_seen, Some(T0 + 20 * day));
        assert!(store.record_seen(&used, T0 + 45 * day).unwrap());
        // Seen again within the minute: no write.
        let again = store
            .check_token(token.as_str(), T0 + 45 * day + 10, ttl)
            .unwrap()
            .unwrap();
        assert!(!store.record_seen(&again, T0 + 45 * day + 10).unwrap());
        // Then 31 idle days: expired, and it says since when.
        assert_eq!(
            store
                .check_token(token.as_str(), T0 + 76 * day + 1, ttl)
                .unwrap(),
            Err(TokenRefusal::Expired {
                last_active: T0 + 45 * day
            })
        );
        // Without an expiry the same token still works (the operator can lift it).
        assert!(
            store
                .check_token(token.as_str(), T0 + 76 * day + 1, None)
                .unwrap()
                .is_ok()
        );
        // The admin's token never expires; unknown and revoked tokens say so.
        assert!(
            store
                .check_token(admin_token.as_str(), T0 + 400 * day, ttl)
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            store.check_token("tly_00", T0, ttl).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        store
            .revoke_device(&phone.device_id, T0 + 80 * day)
            .unwrap();
        assert_eq!(
            store
                .check_token(token.as_str(), T0 + 80 * day, None)
                .unwrap(),
            Err(TokenRefusal::Revoked { at: T0 + 80 * day })
        );
    }

    pub fn authenticate_known_unknown_and_revoked(store: &dyn Storage) {
        assert!(!store.has_admin().unwrap());
        let (admin, admin_token) = store.create_admin("laptop", T0).unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert!(store.has_admin().unwrap());
        assert!(matches!(
            store.create_admin("second", T0),
            Err(StoreError::AdminExists)
        ));

        let (_id, code) = store
            .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
            .unwrap();
        let (phone, phone_token) = store
            .redeem_invite(code.as_str(), "  Amina's phone ", T0)
            .unwrap();
        assert_eq!(phone.name, "Amina's phone");
        assert_eq!(phone.role, Role::Canvasser);
        assert_eq!(phone.campaign.as_deref(), Some("c1"));

        let seen = store
            .authenticate(phone_token.as_str(), T0 + 5)
            .unwrap()
            .unwrap();
        assert_eq!(seen.device_id, phone.device_id);
        assert_eq!(seen.last_seen, Some(T0 + 5));
        // Within a minute last_seen is not rewritten; after it, it is.
        let seen = store
            .authenticate(phone_token.as_str(), T0 + 30_000)
            .unwrap()
            .unwrap();
        assert_eq!(seen.last_seen, Some(T0 + 5));
        let seen = store
            .authenticate(phone_token.as_str(), T0 + 70_000)
            .unwrap()
            .unwrap();
        assert_eq!(seen.last_seen, Some(T0 + 70_000));
        assert_eq!(
            store.device(&phone.device_id).unwrap().unwrap().last_seen,
            Some(T0 + 70_000)
        );

        assert!(store.authenticate("tly_0000", T0).unwrap().is_none());
        assert!(store.authenticate("", T0).unwrap().is_none());
        let mut forged = phone_token.as_str().to_owned();
        forged.pop();
        forged.push('x');
        assert!(store.authenticate(&forged, T0).unwrap().is_none());

        assert!(store.revoked_since(T0).unwrap().is_empty());
        assert!(store.revoke_device(&phone.device_id, T0 + HOUR).unwrap());
        assert!(
            !store
                .revoke_device(&phone.device_id, T0 + 2 * HOUR)
                .unwrap()
        );
        assert!(
            store
                .authenticate(phone_token.as_str(), T0 + HOUR)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .authenticate(admin_token.as_str(), T0 + HOUR)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store.revoked_since(T0 + HOUR).unwrap(),
            std::slice::from_ref(&phone.device_id)
        );
        assert!(store.revoked_since(T0 + HOUR + 1).unwrap().is_empty());
        assert!(matches!(
            store.revoke_device("nobody", T0),
            Err(StoreError::NotFound(_))
        ));

        let devices = store.list_devices().unwrap();
        assert_eq!(devices.len(), 2);
        let revoked = devices
            .iter()
            .find(|d| d.device_id == phone.device_id)
            .unwrap();
        assert_eq!(revoked.revoked_at, Some(T0 + HOUR));

        // With the admin revoked, a new admin may be created (lost-token recovery).
        store.revoke_device(&admin.device_id, T0 + HOUR).unwrap();
        assert!(!store.has_admin().unwrap());
        store.create_admin("new laptop", T0 + HOUR).unwrap();
    }

    pub fn invites_are_single_use_expire_and_unknown_codes_fail(store: &dyn Storage) {
        let (_id, code) = store
            .create_invite(Some("c1"), Role::Organizer, HOUR, T0)
            .unwrap();

        // Typed in lower case with spaces: still the same code.
        let typed = code.as_str().to_lowercase().replace('-', " ");
        let (device, _token) = store.redeem_invite(&typed, "tablet", T0 + 1).unwrap();
        assert_eq!(device.role, Role::Organizer);
        let err = store
            .redeem_invite(code.as_str(), "another", T0 + 2)
            .unwrap_err();
        assert!(matches!(err, StoreError::InviteUsed), "{err}");
        assert!(err.to_string().contains("already used"));

        let (_id, expiring) = store
            .create_invite(Some("c1"), Role::Canvasser, HOUR, T0)
            .unwrap();
        let err = store
            .redeem_invite(expiring.as_str(), "late", T0 + HOUR)
            .unwrap_err();
        assert!(matches!(err, StoreError::InviteExpired), "{err}");
        // A failed redemption enrolls nobody.
        assert_eq!(store.list_devices().unwrap().len(), 1);

        assert!(matches!(
            store.redeem_invite("ZZZZ-ZZZZ-ZZZZ", "x", T0),
            Err(StoreError::InviteUnknown)
        ));
        assert!(matches!(
            store.redeem_invite("not a code", "x", T0),
            Err(StoreError::InviteUnknown)
        ));
        let (_id, fresh) = store
            .create_invite(None, Role::Canvasser, HOUR, T0)
            .unwrap();
        assert!(matches!(
            store.redeem_invite(fresh.as_str(), "   ", T0),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.create_invite(None, Role::Canvasser, 0, T0),
            Err(StoreError::Invalid(_))
        ));
    }

    pub fn quarantine_round_trip_and_filters(store: &dyn Storage) {
        let a = store
            .quarantine(
                "devA",
                "d1",
                "removes another writer's record",
                b"\x00\x01",
                T0,
            )
            .unwrap();
        let b = store
            .write(|tx| tx.quarantine("devB", "d2", "field too large", b"\x02", T0 + 10))
            .unwrap();
        let c = store
            .quarantine("devA", "d2", "wrong kind", b"\x03", T0 + 20)
            .unwrap();
        assert!(a < b && b < c);
        assert!(matches!(
            store.quarantine("devA", "d2", " ", b"", T0),
            Err(StoreError::Invalid(_))
        ));

        let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].id, a);
        assert_eq!(all[0].device_id, "devA");
        assert_eq!(all[0].doc_id, "d1");
        assert_eq!(all[0].at, T0);
        assert_eq!(all[0].reason, "removes another writer's record");
        assert_eq!(all[0].bytes, b"\x00\x01");

        let ids = |filter: QuarantineFilter| -> Vec<i64> {
            store
                .list_quarantine(&filter)
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(
            ids(QuarantineFilter {
                device_id: Some("devA".into()),
                ..Default::default()
            }),
            [a, c]
        );
        assert_eq!(
            ids(QuarantineFilter {
                doc_id: Some("d2".into()),
                since: Some(T0 + 15),
                ..Default::default()
            }),
            [c]
        );
        assert_eq!(
            ids(QuarantineFilter {
                after_id: Some(a),
                limit: Some(1),
                ..Default::default()
            }),
            [b]
        );
    }

    pub fn the_quarantine_keeps_metadata_always_and_raw_bytes_within_bounds(store: &dyn Storage) {
        use tally_store::{QuarantineOutcome, QuarantineQuota};
        let quota = QuarantineQuota {
            max_raw_bytes: 100,
            max_raw_bytes_per_device: 250,
            max_raw_bytes_total: 400,
            max_entries_per_device: 5,
            max_entries_total: 8,
            retention_ms: 1_000,
        };
        let hashes = vec!["ab".repeat(32), "cd".repeat(32)];
        // A refusal whose bytes may hold a refused field: only its metadata is kept.
        let secret = b"Amara Okafor, 12 Main St";
        let mut entry = refusal("devA", secret, false, T0);
        entry.change_hashes = &hashes;
        assert!(matches!(
            store.quarantine_entry(&entry, &quota).unwrap(),
            QuarantineOutcome::Kept {
                raw_kept: false,
                ..
            }
        ));
        // Small bytes that may be kept are; large ones are not.
        assert!(matches!(
            store
                .quarantine_entry(&refusal("devA", &[1; 100], true, T0), &quota)
                .unwrap(),
            QuarantineOutcome::Kept { raw_kept: true, .. }
        ));
        assert!(matches!(
            store
                .quarantine_entry(&refusal("devA", &[2; 101], true, T0), &quota)
                .unwrap(),
            QuarantineOutcome::Kept {
                raw_kept: false,
                ..
            }
        ));
        // The per-device raw quota: 100 + 100 fit, the third does not.
        store
            .quarantine_entry(&refusal("devA", &[3; 100], true, T0), &quota)
            .unwrap();
        assert!(matches!(
            store
                .quarantine_entry(&refusal("devA", &[4; 60], true, T0), &quota)
                .unwrap(),
            QuarantineOutcome::Kept {
                raw_kept: false,
                ..
            }
        ));
        // The device's entry quota (5) is reached: later refusals are counted in its last entry.
        for _ in 0..3 {
            assert!(matches!(
                store
                    .quarantine_entry(&refusal("devA", &[5; 10], true, T0), &quota)
                    .unwrap(),
                QuarantineOutcome::Counted { id: Some(_) }
            ));
        }
        let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
        assert_eq!(all.len(), 5);
        let first = &all[0];
        assert!(
            first.bytes.is_empty(),
            "a refused field's bytes are never kept"
        );
        assert_eq!(first.size, secret.len() as i64);
        assert_eq!(first.digest.len(), 64);
        assert_eq!(first.change_hashes, hashes);
        assert_eq!(first.rule.as_deref(), Some("unknown field"));
        assert_eq!(all[1].bytes, vec![1; 100]);
        assert_eq!(all[4].repeats, 3);
        let raw: usize = all.iter().map(|e| e.bytes.len()).sum();
        assert!(raw <= 250, "{raw}");
        // Another device still gets its own entries, up to the total (8).
        for i in 0..5 {
            let out = store
                .quarantine_entry(&refusal("devB", &[6; 10], true, T0), &quota)
                .unwrap();
            assert_eq!(
                matches!(out, QuarantineOutcome::Kept { .. }),
                i < 3,
                "{i}: {out:?}"
            );
        }
        // Retention: everything older than 1 s goes with the next refusal.
        store
            .quarantine_entry(&refusal("devC", b"x", true, T0 + 5_000), &quota)
            .unwrap();
        let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].device_id, "devC");
    }

    pub fn a_reenrolled_phone_replaces_the_device_whose_token_it_holds(store: &dyn Storage) {
        let invite = |campaign: &str| {
            store
                .create_invite(Some(campaign), Role::Canvasser, HOUR, T0)
                .unwrap()
                .1
        };
        let (old, old_token) = store
            .redeem_invite(invite("c1").as_str(), "phone", T0)
            .unwrap();
        assert_eq!(
            (old.lineage.as_str(), old.replaces.as_deref()),
            (old.device_id.as_str(), None)
        );
        let (other, other_token) = store
            .redeem_invite(invite("c2").as_str(), "other", T0)
            .unwrap();

        // Every wrong proof is refused, and leaves the invite unused.
        let code = invite("c1");
        let refusals = [
            (
                Replaces {
                    device_id: "nobody",
                    token: old_token.as_str(),
                },
                "not known",
            ),
            (
                Replaces {
                    device_id: &old.device_id,
                    token: other_token.as_str(),
                },
                "does not belong",
            ),
            (
                Replaces {
                    device_id: &other.device_id,
                    token: other_token.as_str(),
                },
                "another campaign",
            ),
        ];
        for (proof, words) in refusals {
            let err = store
                .redeem_invite_replacing(code.as_str(), "phone", T0 + 1, Some(proof.clone()))
                .unwrap_err();
            assert!(matches!(err, StoreError::ReplaceRefused(_)), "{err}");
            assert!(err.to_string().contains(words), "{proof:?}: {err}");
            assert!(
                !format!("{proof:?}").contains(&old_token.as_str()[4..]),
                "Debug hides the token"
            );
        }
        assert_eq!(store.list_devices().unwrap().len(), 2, "nobody enrolled");

        // The right proof, with the same (still unused) invite: linked, and the old one revoked.
        let proof = Replaces {
            device_id: &old.device_id,
            token: old_token.as_str(),
        };
        let (new, new_token) = store
            .redeem_invite_replacing(code.as_str(), "phone", T0 + 2, Some(proof))
            .unwrap();
        assert_eq!(new.replaces.as_deref(), Some(old.device_id.as_str()));
        assert_eq!(new.lineage, old.device_id);
        assert_eq!(
            store.device(&old.device_id).unwrap().unwrap().revoked_at,
            Some(T0 + 2)
        );
        assert!(matches!(
            store.check_token(old_token.as_str(), T0 + 3, None).unwrap(),
            Err(TokenRefusal::Revoked { .. })
        ));
        // A chain: the new device replaced in turn keeps the first device's lineage, and a
        // revoked device's token (the phone's only proof after a revocation) still proves it.
        let proof = Replaces {
            device_id: &new.device_id,
            token: new_token.as_str(),
        };
        let (third, _) = store
            .redeem_invite_replacing(invite("c1").as_str(), "phone", T0 + 3, Some(proof))
            .unwrap();
        assert_eq!(third.lineage, old.device_id);
        assert_eq!(third.replaces.as_deref(), Some(new.device_id.as_str()));
        let proof = Replaces {
            device_id: &old.device_id,
            token: old_token.as_str(),
        };
        let (fourth, _) = store
            .redeem_invite_replacing(invite("c1").as_str(), "phone", T0 + 4, Some(proof))
            .unwrap();
        assert_eq!(fourth.lineage, old.device_id);
    }

    /// The storage interface (`dyn Storage`) over SQLite: a closure's own error rolls the write
    /// back and comes back as it was; a committed write is read back in one snapshot.
    pub fn the_storage_interface_commits_or_rolls_back_as_the_store_does(store: &dyn Storage) {
        let storage = store;
        #[derive(Debug, PartialEq)]
        enum Mine {
            No,
            Store(String),
        }
        impl From<StoreError> for Mine {
            fn from(e: StoreError) -> Mine {
                Mine::Store(e.to_string())
            }
        }
        let refused = storage.write_with_error(|w| {
            w.put_meta(&meta("d1", "collection", "c1", Some("dev1")))?;
            w.append_chunk("d1", b"one", T0)?;
            Err::<(), _>(Mine::No)
        });
        assert_eq!(refused, Err(Mine::No));
        assert!(storage.doc_meta("d1").unwrap().is_none());
        let seq = storage
            .write(|w| {
                w.put_meta(&meta("d1", "collection", "c1", Some("dev1")))?;
                w.append_chunk("d1", b"one", T0)
            })
            .unwrap();
        assert_eq!(seq, 1);
        let (meta_kind, chunks) = storage
            .read(|r| {
                let m = r.doc_meta("d1")?.expect("declared");
                let d = r.load_document("d1")?.expect("stored");
                Ok((m.kind, d.incremental.len()))
            })
            .unwrap();
        assert_eq!((meta_kind.as_str(), chunks), ("collection", 1));
        let err = storage.append_chunk("nope", b"x", T0).unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }

    /// The projection over random histories: after every batch, the aggregates and the scan (whole
    /// and filtered) equal the reference, which counts each record id once; at the end a rebuild
    /// of the aggregates from the rows changes nothing.
    pub fn the_projection_equals_the_reference_over_random_histories(store: &dyn Storage) {
        let world = World::new();
        let camp = world.campaign.id.clone();
        for seed in 0..12u64 {
            // Each seed its own campaign, so that the seeds share one database and do not mix.
            let mut world = World::new();
            world.campaign.id = format!("{camp}-{seed}");
            let c = world.campaign.id.clone();
            random_history(store, &world, seed, |docs, review| {
                let t = store.read(|r| r.totals(&c)).unwrap();
                assert_eq!(
                    t,
                    reference(&world, docs, review, &Filter::default()),
                    "seed {seed}: aggregates"
                );
                check_every_filter(store, &world, docs, review, &format!("seed {seed}"));
            });
        }
        let incremental = store.read(|r| r.projection_dump()).unwrap();
        store.write(|tx| tx.rebuild_aggregates()).unwrap();
        assert_eq!(store.read(|r| r.projection_dump()).unwrap(), incremental);
    }

    /// A reindex (every row deleted, written again from the documents, the aggregates rebuilt)
    /// reproduces what the incremental path wrote, table for table.
    pub fn a_reindex_reproduces_the_projection(store: &dyn Storage) {
        let world = World::new();
        let camp = world.campaign.id.clone();
        let (docs, review) = random_history(store, &world, 7, |_, _| {});
        let incremental = store.read(|r| r.projection_dump()).unwrap();
        assert!(!incremental["signatures"].is_empty());
        let cells = store
            .write(|tx| {
                tx.clear_projection_rows()?;
                assert_eq!(tx.signature_rows()?, 0);
                for (doc, c) in &docs {
                    tx.project_collection(&doc_id(doc, &camp), &camp, c, TZ)?;
                }
                tx.project_review(&camp, &review)?;
                tx.rebuild_aggregates()
            })
            .unwrap();
        assert_eq!(cells as usize, incremental["agg_cells"].len());
        assert_eq!(store.read(|r| r.projection_dump()).unwrap(), incremental);
        check_every_filter(store, &world, &docs, &review, "after a reindex");
    }

    /// What the acknowledging write keeps (issue 18): a record id is claimed for one phone's
    /// lineage; changes queue for the projector in order, leave the queue only with the write
    /// that takes them, and a reindex empties the queue and rebuilds the claims from the rows.
    pub fn claims_and_the_projection_queue(store: &dyn Storage) {
        let camp = "camp-q";
        // Unknown devices are their own lineage.
        store
            .write(|tx| tx.claim_records(camp, "phoneA", "signatures", &["s1", "s2"]))
            .unwrap();
        store
            .write(|tx| tx.claim_records(camp, "phoneA", "signatures", &["s2"]))
            .expect("a phone's own record again");
        let err = store
            .write(|tx| tx.claim_records(camp, "phoneB", "signatures", &["s3", "s2"]))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Claimed { container: "signatures", id } if id == "s2"),
            "{err}"
        );
        store
            .write(|tx| tx.claim_records(camp, "phoneB", "signatures", &["s3"]))
            .expect("s3's claim went with the refused write");
        store
            .write(|tx| tx.claim_records(camp, "phoneB", "checkins", &["s1"]))
            .expect("a check-in id is not a signature id");
        store
            .write(|tx| tx.claim_records("other-camp", "phoneB", "signatures", &["s1"]))
            .expect("another campaign's id");
        assert!(
            store.read(|r| r.has_signature(camp, "s1")).unwrap(),
            "acknowledged and not projected yet"
        );
        assert!(!store.read(|r| r.has_signature(camp, "s9")).unwrap());

        let status = || store.read(|r| r.projection_status(None)).unwrap();
        assert_eq!(status(), ProjectionStatus::default());
        assert!(status().covers(0));
        let ids = store
            .write(|tx| {
                let mut ids = Vec::new();
                for (n, records) in [3u64, 2, 4].into_iter().enumerate() {
                    let payload = vec![n as u8; 3];
                    ids.push(tx.enqueue_projection(
                        camp,
                        "docA",
                        records,
                        &payload,
                        1_000 + n as i64,
                    )?);
                }
                Ok(ids)
            })
            .unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let s = status();
        assert_eq!((s.changes, s.records, s.oldest_at), (3, 9, Some(1_000)));
        assert_eq!((s.first, s.last), (Some(ids[0]), Some(ids[2])));
        assert!(!s.covers(ids[0]));
        assert_eq!(s.lag_ms(1_500), 500);

        // A write that takes and then fails puts them back.
        let failed = store.write(|tx| {
            let taken = tx.take_projection(5)?.expect("no other server");
            assert_eq!(taken.len(), 2);
            Err::<(), _>(StoreError::Invalid("the projection failed".into()))
        });
        assert!(failed.is_err());
        assert_eq!(status().changes, 3, "nothing taken by a write rolled back");
        let taken = store
            .write(|tx| Ok(tx.take_projection(5)?.expect("no other server")))
            .unwrap();
        assert_eq!(
            taken
                .iter()
                .map(|q| (q.id, q.records, q.payload.clone()))
                .collect::<Vec<_>>(),
            [(ids[0], 3, vec![0; 3]), (ids[1], 2, vec![1; 3])]
        );
        assert_eq!(taken[0].campaign, camp);
        assert_eq!(taken[0].doc_id, "docA");
        let s = status();
        assert_eq!((s.changes, s.records, s.first), (1, 4, Some(ids[2])));
        assert!(s.covers(ids[1]) && !s.covers(ids[2]));
        let last = store
            .write(|tx| Ok(tx.take_projection(1)?.expect("no other server")))
            .unwrap();
        assert_eq!(
            last.len(),
            1,
            "the first change even when larger than asked"
        );
        assert!(status().covers(ids[2]));
        assert!(
            store
                .write(|tx| Ok(tx.take_projection(100)?.expect("no other server")))
                .unwrap()
                .is_empty()
        );

        // Each campaign's answer says how far its own totals are behind, not another's.
        let (mine, theirs) = store
            .write(|tx| {
                Ok((
                    tx.enqueue_projection(camp, "docA", 2, b"m", 3_000)?,
                    tx.enqueue_projection("other-camp", "docO", 5, b"o", 2_500)?,
                ))
            })
            .unwrap();
        let of = |c: Option<&str>| store.read(|r| r.projection_status(c)).unwrap();
        let s = of(Some(camp));
        assert_eq!((s.changes, s.records, s.oldest_at), (1, 2, Some(3_000)));
        assert_eq!((s.first, s.last), (Some(mine), Some(mine)));
        let o = of(Some("other-camp"));
        assert_eq!(
            (o.records, o.first, o.last),
            (5, Some(theirs), Some(theirs))
        );
        assert_eq!(of(Some("no-such-camp")), ProjectionStatus::default());
        let all = of(None);
        assert_eq!(
            (all.changes, all.records, all.oldest_at),
            (2, 7, Some(2_500))
        );
        assert_eq!(
            store
                .write(|tx| Ok(tx.take_projection(100)?.expect("no other server")))
                .unwrap()
                .len(),
            2
        );
        assert!(of(Some(camp)).covers(mine) && of(None).covers(theirs));

        // A reindex: the queue goes (the documents hold what it held), the claims are the
        // rows' (none here).
        store
            .write(|tx| {
                tx.enqueue_projection(camp, "docA", 1, b"x", 2_000)
                    .map(|_| ())
            })
            .unwrap();
        store
            .write(|tx| {
                tx.clear_projection_rows()?;
                tx.rebuild_claims().map(|_| ())
            })
            .unwrap();
        assert_eq!(status(), ProjectionStatus::default());
        assert!(!store.read(|r| r.has_signature(camp, "s1")).unwrap());
        store
            .write(|tx| tx.claim_records(camp, "phoneB", "signatures", &["s2"]))
            .expect("the claims went with the reindex");
    }

    /// The audit chain: entries append in order, filter, and verify.
    pub fn the_audit_chain_appends_and_verifies(store: &dyn Storage) {
        for (i, action) in ["server.start", "device.enroll", "device.revoke"]
            .iter()
            .enumerate()
        {
            let e = store
                .audit(&NewAudit {
                    at: T0 + i as i64,
                    actor_id: "admin1",
                    actor_name: "Admin",
                    action,
                    campaign: (i > 0).then_some("c1"),
                    target: "dev9",
                    result: "ok",
                })
                .unwrap();
            assert_eq!(e.action, *action);
        }
        assert_eq!(store.verify_audit().unwrap(), Ok(3));
        let only = store
            .list_audit(&AuditFilter {
                action: Some("device.revoke".into()),
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(only.len(), 1);
        let campaign = store
            .list_audit(&AuditFilter {
                campaign: Some("c1".into()),
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(campaign.len(), 2);
    }

    /// A batch is applied as its records one after the other (issue 18, the projector's
    /// batches): random runs of records over a few ids, after a history of their own, projected
    /// in one batch into one campaign and one record per write into another, leave the same
    /// rows, record facts, cells and totals; so does the same run in batches of 7; and a
    /// rebuild of the aggregates from the rows changes nothing.
    pub fn a_batch_counts_as_its_records_one_by_one(store: &dyn Storage) {
        let world = World::new();
        for seed in 0..6u64 {
            let mut rng = StdRng::seed_from_u64(1_000 + seed);
            let history = random_ops(&world, &mut rng, 12);
            let run = random_ops(&world, &mut rng, 60);
            let [whole, sevens, single] =
                ["whole", "sevens", "single"].map(|k| format!("camp-{k}-{seed}-x"));
            for (camp, per_batch) in [(&whole, run.len()), (&sevens, 7), (&single, 1)] {
                project_ops(store, camp, &history, 1);
                project_ops(store, camp, &run, per_batch);
            }
            let totals = |c: &str| store.read(|r| r.totals(c)).unwrap();
            assert_eq!(totals(&whole), totals(&single), "seed {seed}: totals");
            assert_eq!(totals(&sevens), totals(&single), "seed {seed}: totals");
            let dump = store.read(|r| r.projection_dump()).unwrap();
            let want = campaign_lines(&dump, &single, "C");
            assert!(!want["signatures"].is_empty() && !want["agg_records"].is_empty());
            assert_eq!(
                campaign_lines(&dump, &whole, "C"),
                want,
                "seed {seed}: one batch"
            );
            assert_eq!(
                campaign_lines(&dump, &sevens, "C"),
                want,
                "seed {seed}: batches of 7"
            );
        }
        let incremental = store.read(|r| r.projection_dump()).unwrap();
        store.write(|tx| tx.rebuild_aggregates()).unwrap();
        assert_eq!(store.read(|r| r.projection_dump()).unwrap(), incremental);
    }

    /// Record keys: per device, idempotent, a conflict for other bytes, another campaign's record
    /// refused; an erasure deletes every copy and refuses the record's key from then on.
    pub fn record_keys_and_erasure(store: &dyn Storage) {
        let world = World::new();
        store
            .write(|tx| {
                for c in ["A", "B"] {
                    tx.put_meta(&meta(&format!("doc{c}"), "campaign", c, None))?;
                }
                for (campaign, doc, id) in [("B", "colB", "sig_b"), ("A", "colA", "sig_a")] {
                    let s = world.signature("dev", id, "Li Wei", "M5V 2T6", "Toronto");
                    let mut batch = tx.projection_batch(campaign);
                    batch.signature(doc, &s.id, &SignatureRow::of(&s, "UTC"))?;
                    batch.flush()?;
                }
                Ok(())
            })
            .unwrap();
        let key = |tag: u8| vec![tag; 300];
        let put = |device: &str, record: &str, tag: u8| {
            store
                .put_keys("A", device, &[(record.into(), key(tag))], 10, T0)
                .unwrap()
        };
        assert_eq!(put("phone", "sig_a", 1), [KeyOutcome::Stored]);
        assert_eq!(put("squatter", "sig_a", 2), [KeyOutcome::Stored]);
        assert_eq!(put("phone", "sig_a", 1), [KeyOutcome::AlreadyStored]);
        assert_eq!(put("phone", "sig_a", 3), [KeyOutcome::Conflict]);
        assert_eq!(put("phone", "sig_b", 4), [KeyOutcome::OtherCampaign]);
        assert_eq!(store.list_keys("A", None, 100).unwrap().len(), 2);
        assert_eq!(
            store
                .records_with_token(
                    "A",
                    &world
                        .signature("dev", "x", "Li Wei", "M5V 2T6", "Toronto")
                        .dup
                )
                .unwrap(),
            ["sig_a"]
        );
        assert_eq!(
            store
                .unknown_signatures("A", &["sig_a".into(), "sig_b".into()])
                .unwrap(),
            ["sig_b"]
        );
        let erased = store
            .erase_records("A", &["sig_a".into()], "org", T0)
            .unwrap();
        assert_eq!((erased.keys_deleted, erased.newly_erased), (2, 1));
        assert!(store.list_keys("A", None, 100).unwrap().is_empty());
        assert_eq!(store.erased_records("A").unwrap(), ["sig_a"]);
        assert_eq!(put("phone", "sig_a", 1), [KeyOutcome::Erased]);
        let again = store
            .erase_records("A", &["sig_a".into()], "org", T0)
            .unwrap();
        assert_eq!((again.keys_deleted, again.newly_erased), (0, 0));
    }

    /// A full database refuses a write whole, says so (and what to do), and takes writes again
    /// once there is room, with what it held before intact.
    pub fn a_full_database_refuses_a_write_whole(subject: &Subject) {
        let store: &dyn Storage = &**subject;
        store
            .put_meta(&meta("d1", "collection", "c1", None))
            .unwrap();
        store.append_chunk("d1", b"safe", T0).unwrap();
        (subject.fill_up)();
        let big = vec![7u8; 256 * 1024];
        let err = store
            .write(|tx| {
                tx.put_meta(&meta("d2", "collection", "c1", None))?;
                tx.append_chunk("d2", &big, T0)
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Full(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("the disk is full: free space"),
            "{err}"
        );
        assert!(
            store.doc_meta("d2").unwrap().is_none(),
            "nothing half written"
        );
        (subject.make_room)();
        assert_eq!(store.append_chunk("d1", &big, T0).unwrap(), 2);
        let doc = store.load_document("d1").unwrap().unwrap();
        assert_eq!(doc.incremental, vec![b"safe".to_vec(), big]);
    }

    /// An unavailable database refuses a write whole ([`StoreError::Unavailable`], saying that
    /// nothing was kept and to retry) and takes writes again once it is back.
    pub fn an_unavailable_database_refuses_a_write_whole(subject: &Subject) {
        let store: &dyn Storage = &**subject;
        store
            .put_meta(&meta("d1", "collection", "c1", None))
            .unwrap();
        (subject.go_away)();
        let err = store
            .write(|tx| {
                tx.put_meta(&meta("d2", "collection", "c1", None))?;
                tx.append_chunk("d2", b"lost?", T0)
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("nothing of the failed write was kept") && message.contains("retry"),
            "{message}"
        );
        (subject.come_back)();
        assert!(
            store.doc_meta("d2").unwrap().is_none(),
            "nothing half written"
        );
        assert_eq!(store.append_chunk("d1", b"back", T0).unwrap(), 1);
    }
}
