//! The projector's write at scale: projects N records of one campaign through the store's
//! projection batch (`Writes::projection_batch`, what `project_pending` runs), in writes of
//! 2,000 records (the projector's batch), and prints the records counted per second.
//!
//! The records are a wave as phones send it: mostly new signatures (500 canvassers, one
//! collection each; one signer in ten signs twice), and among them, 1 in 20 an edit of an
//! earlier signature of the same collection (withdrawn, or its city corrected), 1 in 20 a copy
//! of an earlier signature in another lineage's collection, 1 in 25 a check-in, 1 in 100 a
//! strike (sometimes revoked). Earlier means earlier in the same batch as often as before it.
//!
//! At the end the aggregates are rebuilt from the rows and must equal what the batches wrote.
//! On PostgreSQL, one more batch of 2,000 records is written through a connection that logs
//! every statement (`log_statement = all`; the test cluster's user is a superuser), and the
//! statements the write sent are counted from the server's log (`scripts/with-postgres` writes
//! it beside the data folder).
//!
//!     scripts/with-postgres cargo run -p tally-store --example projector -- 20000 pg
//!     cargo run -p tally-store --example projector -- 20000
//!
//! PROJECTOR_PG_OPTIONS adds settings to the store's connections (auto_explain, for one).

use std::sync::Arc;
use std::time::Instant;

use tally_core::cells::SignatureRow;
use tally_core::collection::{Checkin, Signature};
use tally_core::review::{Strike, StrikeReason};
use tally_store::{PgStore, Storage, Store};

mod common;
use common::{CAMPAIGN, DAY, Rng, START, TZ};

/// Records per projector write.
const BATCH: u64 = 2_000;

const CITIES: &[&str] = &[
    "Toronto",
    "Montréal",
    "Vancouver",
    "Calgary",
    "Ottawa",
    "Hamilton",
    "toronto",
    "Montreal",
];

/// The wave: every signature written so far (its collection and itself).
struct Wave {
    rng: Rng,
    signatures: Vec<(String, Signature)>,
    checkins: u64,
}

impl Wave {
    fn new_signature(&mut self) -> (String, Signature) {
        let rng = &mut self.rng;
        let i = self.signatures.len() as u64;
        let canvasser = format!("canvasser{:03}", rng.below(500));
        let person = if rng.below(10) == 0 {
            rng.below(i.max(1))
        } else {
            i
        };
        let s = Signature {
            id: format!("sig{i:08}"),
            campaign: CAMPAIGN.into(),
            event: (rng.below(3) == 0).then(|| format!("event{:02}", rng.below(40))),
            collected_at: START + rng.below(30) as i64 * DAY + rng.below(DAY as u64) as i64,
            collected_by: canvasser.clone(),
            city: CITIES[rng.below(CITIES.len() as u64) as usize].into(),
            fsa: format!("M{}V", rng.below(10)),
            riding: (rng.below(2) == 0).then(|| format!("riding{:03}", rng.below(338))),
            consent_contact: rng.below(2) == 0,
            dup: format!("{:064x}", person.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            sealed: Vec::new(),
            withdrawn: false,
        };
        let doc = format!("collection-{canvasser}");
        self.signatures.push((doc.clone(), s.clone()));
        (doc, s)
    }

    /// An earlier signature: one of the last 3,000 (this batch's or the one before's).
    fn earlier(&mut self) -> Option<usize> {
        let n = self.signatures.len() as u64;
        (n > 0).then(|| (n - 1 - self.rng.below(n.min(3_000))) as usize)
    }

    /// Projects one record into `batch`.
    fn record(&mut self, batch: &mut dyn tally_store::Projecting) -> tally_store::Result<()> {
        let roll = self.rng.below(100);
        match (roll, self.earlier()) {
            (0..5, Some(i)) => {
                let (doc, s) = &mut self.signatures[i];
                if self.rng.below(2) == 0 {
                    s.withdrawn = true;
                } else {
                    s.city = CITIES[self.rng.below(CITIES.len() as u64) as usize].into();
                }
                batch.signature(doc, &s.id, &SignatureRow::of(s, TZ))
            }
            (5..10, Some(i)) => {
                let (_, s) = &self.signatures[i];
                let doc = format!("collection-other{:03}", self.rng.below(50));
                batch.signature(&doc, &s.id, &SignatureRow::of(s, TZ))
            }
            (10..14, _) => {
                let k = self.checkins;
                self.checkins += 1;
                batch.checkin(
                    &format!("collection-canvasser{:03}", self.rng.below(500)),
                    &Checkin {
                        id: format!("ci{k:08}"),
                        event: format!("event{:02}", self.rng.below(40)),
                        attendee: format!("{:064x}", self.rng.below(5_000)),
                        at: START + self.rng.below(30 * DAY as u64) as i64,
                        by: "canvasser001".into(),
                        walk_in: self.rng.below(3) == 0,
                        withdrawn: false,
                    },
                )
            }
            (14, Some(i)) => {
                let id = self.signatures[i].1.id.clone();
                batch.strike(&Strike {
                    signature: id,
                    reason: StrikeReason::Duplicate,
                    by: "organizer1".into(),
                    at: START,
                    revoked: self.rng.below(4) == 0,
                })
            }
            _ => {
                let (doc, s) = self.new_signature();
                batch.signature(&doc, &s.id, &SignatureRow::of(&s, TZ))
            }
        }
    }

    /// One projector write of `n` records.
    fn write(&mut self, store: &dyn Storage, n: u64) -> tally_store::Result<()> {
        store.write(|tx| {
            let mut batch = tx.projection_batch(CAMPAIGN);
            for _ in 0..n {
                self.record(batch.as_mut())?;
            }
            batch.flush()
        })
    }
}

fn pg_store(url: &str, schema: &str, options: &str) -> Result<PgStore, Box<dyn std::error::Error>> {
    let mut config: postgres::Config = url.parse()?;
    config.options(&format!("-c search_path={schema} {options}"));
    Ok(PgStore::connect_with(config, 2)?)
}

/// The statements one write of `BATCH` records sends, counted from the server's log.
fn count_statements(
    url: &str,
    schema: &str,
    wave: &mut Wave,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    let data: String = client
        .query_one("SELECT current_setting('data_directory')", &[])?
        .get(0);
    let log = std::path::Path::new(&data)
        .parent()
        .ok_or("no data folder")?
        .join("postgres.log");
    let logged = pg_store(url, schema, "-c log_statement=all")?;
    let before = std::fs::read(&log)?.len();
    wave.write(&logged, BATCH)?;
    let bytes = std::fs::read(&log)?;
    Ok(String::from_utf8_lossy(&bytes[before..])
        .lines()
        .filter(|l| l.contains("LOG:  statement: ") || l.contains("LOG:  execute "))
        .count())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .map(|a| a.replace('_', "").parse())
        .transpose()?
        .unwrap_or(20_000);
    let pg = args.get(1).is_some_and(|a| a == "pg");
    let dir = tempfile::tempdir()?;
    let url = std::env::var("TALLY_TEST_DATABASE_URL").unwrap_or_default();
    let schema = format!("projector_{}", std::process::id());
    let store: Arc<dyn Storage> = if pg {
        if url.is_empty() {
            return Err("pg: set TALLY_TEST_DATABASE_URL (run under scripts/with-postgres)".into());
        }
        postgres::Client::connect(&url, postgres::NoTls)?
            .batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        println!("PostgreSQL, schema {schema}");
        // PROJECTOR_PG_OPTIONS: more settings for the store's connections, e.g.
        // "-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=50".
        let options = std::env::var("PROJECTOR_PG_OPTIONS").unwrap_or_default();
        Arc::new(pg_store(&url, &schema, &options)?)
    } else {
        println!("SQLite, {}", dir.path().display());
        Arc::new(Store::open(&dir.path().join("tally.db"))?)
    };
    let mut wave = Wave {
        rng: Rng(0x2545_f491_4f6c_dd1d),
        signatures: Vec::new(),
        checkins: 0,
    };
    let t0 = Instant::now();
    let mut done = 0;
    let mut last = Instant::now();
    while done < n {
        let k = BATCH.min(n - done);
        wave.write(&*store, k)?;
        done += k;
        if done % 20_000 == 0 && done < n {
            println!(
                "  {done} records: the last 20,000 at {:.0} records/s",
                20_000.0 / last.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{n} records in writes of {BATCH}: {secs:.2} s, {:.0} records/s",
        n as f64 / secs
    );
    if pg {
        let statements = count_statements(&url, &schema, &mut wave)?;
        println!(
            "one write of {BATCH} records: {statements} statements (BEGIN and COMMIT included)"
        );
    }
    let t = store.read(|r| r.totals(CAMPAIGN))?;
    println!(
        "{} counted, {} unique, {} struck, {} withdrawn, {} attendees checked in (summed over events)",
        t.signatures,
        t.unique_signers,
        t.struck,
        t.withdrawn,
        t.checkins.values().map(|c| c.unique).sum::<u64>()
    );
    if pg {
        // The rebuild's one SQL pass is planned on the tables' statistics: fresh ones, as a
        // server's tables have (autovacuum), not none at all (a wave of a few seconds).
        postgres::Client::connect(&url, postgres::NoTls)?
            .batch_execute(&format!("SET search_path = {schema}; ANALYZE"))?;
    }
    let incremental = store.read(|r| r.projection_dump())?;
    // A digest of every projection table, to compare runs (and builds) with.
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&incremental, &mut digest);
    println!(
        "projection tables: {} lines, digest {:016x}",
        incremental.values().map(Vec::len).sum::<usize>(),
        std::hash::Hasher::finish(&digest)
    );
    store.write(|tx| tx.rebuild_aggregates())?;
    if store.read(|r| r.projection_dump())? != incremental {
        return Err("the rebuilt aggregates differ from what the batches wrote".into());
    }
    println!("the aggregates rebuilt from the rows equal the incremental ones");
    Ok(())
}
