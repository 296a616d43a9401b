//! Filtered totals at scale (issue 18): fills one campaign's projection with N synthetic
//! signatures through the store's own projection batch (`Writes::projection_batch`, the code
//! the hub runs for each accepted change: one batch per synthetic sync of 100 records, 1 in 100
//! struck, 1 in 50 withdrawn, 1 in 10 signers signing twice, a check-in every 20 signatures),
//! then times:
//!
//! - a write of one sync of 100 new signatures (the ingest path's serialized part, the commit
//!   included), p50/p99 over 100 writes;
//! - the unfiltered totals (the aggregate cells);
//! - every filter the dashboard offers (`query_totals`, what the API runs) and every pair of
//!   them, p50/p99, each checked equal to the scan of the rows (`scan_totals`), whose time is
//!   printed beside it.
//!
//! Run on SQLite (a file in a temporary folder):
//!     cargo run --release -p tally-store --example filtered_totals -- 1000000
//! and on PostgreSQL (a schema of its own in the database at TALLY_TEST_DATABASE_URL):
//!     scripts/with-postgres cargo run --release -p tally-store --example filtered_totals -- 1000000 pg

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::cells::SignatureRow;
use tally_core::collection::{Checkin, Signature};
use tally_core::review::{Strike, StrikeReason};
use tally_store::{Filter, PgStore, Storage, Store};

mod common;
use common::{CAMPAIGN, DAY, Rng, START, TZ};

/// Records per synthetic sync (one projection batch).
const SYNC: u64 = 100;

const CITIES: &[&str] = &[
    "Toronto",
    "Montréal",
    "Vancouver",
    "Calgary",
    "Edmonton",
    "Ottawa",
    "Winnipeg",
    "Québec",
    "Hamilton",
    "Kitchener",
    "London",
    "Victoria",
    "Halifax",
    "Oshawa",
    "Windsor",
    "Saskatoon",
    "Regina",
    "Sherbrooke",
    "St. John's",
    "Barrie",
];
/// Other spellings of the first cities, as phones type them.
const SPELLINGS: &[&str] = &["toronto", "TORONTO", "Montreal", "montréal"];
const FIRST: &[u8] = b"ABCEGHJKLMNPRSTVXY";
const LATER: &[u8] = b"ABCEGHJKLMNPRSTVWXYZ";

fn signature(rng: &mut Rng, i: u64) -> (String, Signature) {
    let canvasser = format!("canvasser{:03}", rng.below(500));
    // About one signer in ten signs twice (same token), on any phone.
    let person = if rng.below(10) == 0 {
        rng.below(i.max(1))
    } else {
        i
    };
    let fsa = format!(
        "{}{}{}",
        FIRST[rng.below(FIRST.len() as u64) as usize] as char,
        rng.below(10),
        LATER[rng.below(LATER.len() as u64) as usize] as char
    );
    let city = if rng.below(20) == 0 {
        SPELLINGS[rng.below(SPELLINGS.len() as u64) as usize]
    } else {
        CITIES[rng.below(CITIES.len() as u64) as usize]
    };
    let s = Signature {
        id: format!("sig{i:08}"),
        campaign: CAMPAIGN.into(),
        event: (rng.below(3) == 0).then(|| format!("event{:02}", rng.below(40))),
        collected_at: START + rng.below(180) as i64 * DAY + rng.below(DAY as u64) as i64,
        collected_by: canvasser.clone(),
        city: city.into(),
        fsa,
        riding: (rng.below(2) == 0).then(|| format!("riding{:03}", rng.below(338))),
        consent_contact: rng.below(2) == 0,
        dup: format!("{:064x}", person.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        sealed: Vec::new(),
        withdrawn: rng.below(50) == 0,
    };
    (format!("collection-{canvasser}"), s)
}

/// Writes signatures `from..to` in one write, one projection batch per sync of 100.
fn fill(
    store: &dyn Storage,
    rng: &mut Rng,
    from: u64,
    to: u64,
    n: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    store.write_with(&mut |tx| {
        let mut batch = tx.projection_batch(CAMPAIGN);
        for k in from..to {
            if k % SYNC == 0 && k != from {
                std::mem::replace(&mut batch, tx.projection_batch(CAMPAIGN)).flush()?;
            }
            let (doc, s) = signature(rng, k);
            batch.signature(&doc, &s.id, &SignatureRow::of(&s, TZ))?;
            if k % 100 == 7 {
                batch.strike(&Strike {
                    signature: s.id.clone(),
                    reason: StrikeReason::Duplicate,
                    by: "organizer1".into(),
                    at: START,
                    revoked: false,
                })?;
            }
            if k % 20 == 0 {
                batch.checkin(
                    &doc,
                    &Checkin {
                        id: format!("ci{k:08}"),
                        event: format!("event{:02}", rng.below(40)),
                        attendee: format!("{:064x}", rng.below(n / 20 + 1)),
                        at: s.collected_at,
                        by: s.collected_by.clone(),
                        walk_in: rng.below(3) == 0,
                        withdrawn: false,
                    },
                )?;
            }
        }
        batch.flush()
    })?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn time<T>(iterations: usize, mut f: impl FnMut() -> T) -> (Duration, Duration) {
    let mut d: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    d.sort();
    (percentile(&d, 0.5), percentile(&d, 0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The filters the dashboard offers, one of each kind.
fn kinds() -> Vec<(&'static str, Filter)> {
    vec![
        (
            "event",
            Filter {
                event: Some("event07".into()),
                ..Filter::default()
            },
        ),
        (
            "city",
            Filter {
                city: Some("toronto".into()),
                ..Filter::default()
            },
        ),
        (
            "fsa",
            Filter {
                fsa: Some("M5V".into()),
                ..Filter::default()
            },
        ),
        (
            "riding",
            Filter {
                riding: Some("riding042".into()),
                ..Filter::default()
            },
        ),
        (
            "canvasser",
            Filter {
                canvasser: Some("canvasser123".into()),
                ..Filter::default()
            },
        ),
        (
            "week",
            Filter {
                from: Some(START + 30 * DAY),
                to: Some(START + 37 * DAY),
                ..Filter::default()
            },
        ),
        (
            "all days",
            Filter {
                from: Some(START),
                to: Some(START + 180 * DAY),
                ..Filter::default()
            },
        ),
    ]
}

fn merge(a: &Filter, b: &Filter) -> Filter {
    Filter {
        event: a.event.clone().or(b.event.clone()),
        from: a.from.or(b.from),
        to: a.to.or(b.to),
        city: a.city.clone().or(b.city.clone()),
        fsa: a.fsa.clone().or(b.fsa.clone()),
        riding: a.riding.clone().or(b.riding.clone()),
        canvasser: a.canvasser.clone().or(b.canvasser.clone()),
    }
}

fn read<T>(
    store: &dyn Storage,
    f: impl Fn(&dyn tally_store::Reads) -> tally_store::Result<T>,
) -> T {
    let mut out = None;
    store
        .read_with(&mut |r| {
            out = Some(f(r)?);
            Ok(())
        })
        .unwrap();
    out.unwrap()
}

fn run(store: &dyn Storage, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ n);
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        fill(store, &mut rng, i, end, n)?;
        i = end;
    }
    println!(
        "\n== {n} signatures: filled through the projection batch in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // A commit of one sync of 100 new signatures, 100 times.
    let mut next = n;
    let (p50, p99) = time(100, || {
        fill(store, &mut rng, next, next + SYNC, n).expect("write a sync");
        next += SYNC;
    });
    println!(
        "   write of 100 signatures (one batch, committed): p50 {}  p99 {}",
        ms(p50),
        ms(p99)
    );
    let t = read(store, |r| r.totals(CAMPAIGN));
    println!(
        "   {} counted, {} unique, {} struck, {} withdrawn; {} cities, {} FSAs, {} ridings, {} days, {} canvassers",
        t.signatures,
        t.unique_signers,
        t.struck,
        t.withdrawn,
        t.by_city.len(),
        t.by_fsa.len(),
        t.by_riding.len(),
        t.by_day.len(),
        t.by_canvasser.len()
    );
    let (p50, p99) = time(200, || read(store, |r| r.totals(CAMPAIGN)));
    println!(
        "   unfiltered (aggregate cells): p50 {}  p99 {}",
        ms(p50),
        ms(p99)
    );
    let kinds = kinds();
    let mut cases: Vec<(String, Filter)> = kinds
        .iter()
        .map(|(k, f)| (k.to_string(), f.clone()))
        .collect();
    for (i, (a, fa)) in kinds.iter().enumerate() {
        for (b, fb) in &kinds[i + 1..] {
            let time_both =
                (fa.from.is_some() || fa.to.is_some()) && (fb.from.is_some() || fb.to.is_some());
            if !time_both {
                cases.push((format!("{a} + {b}"), merge(fa, fb)));
            }
        }
    }
    println!(
        "   {:24} {:>9} {:>10} {:>10} {:>10}",
        "filter", "counted", "query p50", "query p99", "scan p50"
    );
    for (name, f) in cases {
        let started = Instant::now();
        let got = read(store, |r| r.query_totals(CAMPAIGN, &f));
        // Slow queries (the scan) are timed fewer times: their p99 is then their slowest.
        let runs = if started.elapsed() < Duration::from_millis(100) {
            50
        } else {
            5
        };
        let scanned = read(store, |r| r.scan_totals(CAMPAIGN, &f));
        if got != scanned {
            return Err(format!("{name}: the query differs from the scan").into());
        }
        let (p50, p99) = time(runs, || read(store, |r| r.query_totals(CAMPAIGN, &f)));
        // FILTERED_TOTALS_SCAN_TIMES=0: the scan is run once (the check), not timed.
        let scans = std::env::var("FILTERED_TOTALS_SCAN_TIMES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let (s50, _) = if scans == 0 {
            (Duration::ZERO, Duration::ZERO)
        } else {
            time(scans, || read(store, |r| r.scan_totals(CAMPAIGN, &f)))
        };
        println!(
            "   {name:24} {:>9} {:>10} {:>10} {:>10}",
            got.signatures,
            ms(p50),
            ms(p99),
            ms(s50)
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .map(|a| a.replace('_', "").parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let pg = args.get(1).is_some_and(|a| a == "pg");
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Storage> = if pg {
        let url = std::env::var("TALLY_TEST_DATABASE_URL")
            .map_err(|_| "pg: set TALLY_TEST_DATABASE_URL (run under scripts/with-postgres)")?;
        let schema = format!("bench_{}", std::process::id());
        postgres::Client::connect(&url, postgres::NoTls)?
            .batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        let mut config: postgres::Config = url.parse()?;
        config.options(&format!("-c search_path={schema}"));
        println!("PostgreSQL, schema {schema}");
        Arc::new(PgStore::connect_with(config, 2)?)
    } else {
        let store = Store::open(&dir.path().join("tally.db"))?;
        // The same page cache as the server's reader connection.
        store.set_cache_kib(65_536)?;
        println!("SQLite, {}", dir.path().display());
        Arc::new(store)
    };
    run(&*store, n)
}
