//! Totals latency at scale: fills the projection of one campaign with N synthetic signatures
//! through `tally_store::Batch` (the code the hub runs for each accepted change, one batch per
//! synthetic sync of 100 records, so the aggregate cells are kept exactly as in production),
//! then times the totals queries the API runs:
//!
//! - `totals` (the unfiltered answer, from the aggregate cells),
//! - `scan` (the same answer by scanning every row: what every query cost before aggregates),
//! - filtered queries (by city, by event, by a one-week range, by FSA), which scan matching rows.
//!
//! Run: `cargo run --release -p tally-server --example totals_latency -- 100000 1000000`
//! (sizes default to 100,000 and 1,000,000). The database lives in a temporary folder.

use std::time::{Duration, Instant};

use tally_core::cells::SignatureRow;
use tally_core::collection::{Checkin, Signature};
use tally_core::review::{Strike, StrikeReason};
use tally_store::{Filter, Store};

const CAMPAIGN: &str = "bench-campaign";
const TZ: &str = "America/Toronto";
/// 2025-06-01T00:00:00Z.
const START: i64 = 1_748_736_000_000;
const DAY: i64 = 86_400_000;
/// Records per synthetic sync (one aggregate batch).
const SYNC: u64 = 100;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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
const FIRST: &[u8] = b"ABCEGHJKLMNPRSTVXY";
const LATER: &[u8] = b"ABCEGHJKLMNPRSTVWXYZ";

fn signature(rng: &mut Rng, i: u64) -> (String, Signature) {
    let canvasser = format!("canvasser{:03}", rng.below(500));
    // About one signer in ten signs twice (same token).
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
    let s = Signature {
        id: format!("sig{i:08}"),
        campaign: CAMPAIGN.into(),
        event: (rng.below(3) == 0).then(|| format!("event{:02}", rng.below(40))),
        collected_at: START + rng.below(180) as i64 * DAY + rng.below(DAY as u64) as i64,
        collected_by: canvasser.clone(),
        city: CITIES[rng.below(CITIES.len() as u64) as usize].into(),
        fsa,
        riding: (rng.below(2) == 0).then(|| format!("riding{:03}", rng.below(338))),
        consent_contact: rng.below(2) == 0,
        dup: format!("{:064x}", person.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        sealed: Vec::new(),
        withdrawn: rng.below(50) == 0,
    };
    (format!("collection-{canvasser}"), s)
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

fn run(n: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("tally.db"))?;
    // The same page cache as the server's reader connection (`serve` in server/src/lib.rs).
    store.set_cache_kib(65_536)?;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ n);
    let t0 = Instant::now();
    let mut flushing = Duration::ZERO;
    let batch = 10_000;
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        store.write_with_error::<_, anyhow::Error>(|tx| {
            let mut batch = tx.projection_batch(CAMPAIGN);
            for k in i..end {
                if k % SYNC == 0 {
                    let t = Instant::now();
                    std::mem::replace(&mut batch, tx.projection_batch(CAMPAIGN)).flush()?;
                    flushing += t.elapsed();
                }
                let (doc, s) = signature(&mut rng, k);
                batch.signature(&doc, &s.id, &SignatureRow::of(&s, TZ))?;
                if k % 100 == 7 {
                    let strike = Strike {
                        signature: s.id.clone(),
                        reason: StrikeReason::Duplicate,
                        by: "organizer1".into(),
                        at: START,
                        revoked: false,
                    };
                    batch.strike(&strike)?;
                }
                if k % 20 == 0 {
                    let c = Checkin {
                        id: format!("ci{k:08}"),
                        event: format!("event{:02}", rng.below(40)),
                        attendee: format!("{:064x}", rng.below(n / 20 + 1)),
                        at: s.collected_at,
                        by: s.collected_by.clone(),
                        walk_in: rng.below(3) == 0,
                        withdrawn: false,
                    };
                    batch.checkin(&doc, &c)?;
                }
            }
            batch.flush()?;
            Ok(())
        })?;
        i = end;
    }
    let fill = t0.elapsed();
    let size = std::fs::metadata(dir.path().join("tally.db"))?.len()
        + std::fs::metadata(dir.path().join("tally.db-wal")).map_or(0, |m| m.len());
    println!(
        "\n== {n} signatures: filled through the projection in {:.1} s ({:.0} signatures/s; {:.1} s of it writing aggregates), database {} MB",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64(),
        flushing.as_secs_f64(),
        size / 1_000_000
    );

    // The aggregates must give what a scan of the rows gives.
    let (agg, full) = store.read(|r| {
        Ok((
            r.totals(CAMPAIGN)?,
            r.scan_totals(CAMPAIGN, &Filter::default())?,
        ))
    })?;
    anyhow::ensure!(agg == full, "aggregates differ from the scan");
    println!(
        "   {} counted, {} unique, {} struck, {} withdrawn; {} cities, {} FSAs, {} days, {} canvassers",
        agg.signatures,
        agg.unique_signers,
        agg.struck,
        agg.withdrawn,
        agg.by_city.len(),
        agg.by_fsa.len(),
        agg.by_day.len(),
        agg.by_canvasser.len()
    );

    let (p50, p99) = time(500, || store.read(|r| r.totals(CAMPAIGN)).unwrap());
    println!(
        "   totals (aggregates, what GET /totals runs):  p50 {}  p99 {}",
        ms(p50),
        ms(p99)
    );
    let scans = if n > 200_000 { 5 } else { 20 };
    let (p50, p99) = time(scans, || {
        store
            .read(|r| r.scan_totals(CAMPAIGN, &Filter::default()))
            .unwrap()
    });
    println!(
        "   totals by scanning all rows (no aggregates): p50 {}  p99 {}  ({scans} runs)",
        ms(p50),
        ms(p99)
    );
    let filters = [
        (
            "city=Toronto (1/20 of rows)",
            Filter {
                city: Some("Toronto".into()),
                ..Filter::default()
            },
        ),
        (
            "event=event07 (1/120 of rows)",
            Filter {
                event: Some("event07".into()),
                ..Filter::default()
            },
        ),
        (
            "one week (1/26 of rows)",
            Filter {
                from: Some(START + 30 * DAY),
                to: Some(START + 37 * DAY),
                ..Filter::default()
            },
        ),
        (
            "fsa=M5V (1/1800 of rows)",
            Filter {
                fsa: Some("M5V".into()),
                ..Filter::default()
            },
        ),
    ];
    for (name, f) in filters {
        let runs = if n > 200_000 { 20 } else { 50 };
        let (p50, p99) = time(runs, || {
            store.read(|r| r.query_totals(CAMPAIGN, &f)).unwrap()
        });
        println!("   filtered {name:32} p50 {}  p99 {}", ms(p50), ms(p99));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.replace('_', "").parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n)?;
    }
    Ok(())
}
