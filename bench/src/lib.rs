//! `tally-bench`: how close the tally server is to its limits. See `docs/benchmarks.md`.
//!
//! Phases (all by default, in this order):
//! - [`ingest`]: the real `tally serve` on a temporary data folder; K phones enrolled through the
//!   HTTP API collect M signatures each offline and reconnect at once over real WebSockets while
//!   N organizers poll the totals; on each backend of `--backends` in turn (one server on
//!   SQLite, one on PostgreSQL, N on one PostgreSQL database: [`server::Backend`]);
//! - [`phone`]: a real `tally_client::Device` timed signing, and the memory of a process holding
//!   its signatures;
//! - [`baseline`]: the same changes, in one process, without network, and the floor any
//!   automerge server that keeps data must pay;
//! - [`rest`]: a large store (1M signatures), the totals at rest, the restart time, and what
//!   takes the disk ([`disk`]).
//!
//! [`run`] returns a [`report::Report`]: every figure with the machine's core count, its target
//! and whether it was met.

pub mod baseline;
pub mod data;
pub mod disk;
pub mod ingest;
pub mod peer;
pub mod phone;
pub mod report;
pub mod rest;
pub mod server;
pub mod setup;
pub mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::report::{Figures, Machine, Report, cores};
use crate::server::{Backend, Cluster, Server};

/// A phase of the benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// K phones reconnect at once; organizers poll the totals meanwhile.
    Ingest,
    /// The same changes in one process, no network.
    Baseline,
    /// A large store: totals at rest and the restart time.
    Rest,
    /// The phone library: signing time and memory.
    Phone,
}

/// The benchmark's settings.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct RunArgs {
    /// Phases to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,phone,baseline,rest"
    )]
    pub phases: Vec<Phase>,
    /// K: phones reconnecting at once.
    #[arg(long, default_value_t = 1000)]
    pub phones: usize,
    /// M: signatures each phone collects offline.
    #[arg(long, default_value_t = 100)]
    pub signatures: usize,
    /// Percentage of signatures by people who also sign on another phone.
    #[arg(long, default_value_t = 5.0)]
    pub duplicates_pct: f64,
    /// N: organizers polling the totals during ingest.
    #[arg(long, default_value_t = 50)]
    pub organizers: usize,
    /// Pause between one organizer's totals requests, ms.
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Signatures in the large store of the at-rest phase.
    #[arg(long, default_value_t = 1_000_000)]
    pub at_rest_signatures: usize,
    /// Signatures per phone when building the large store: each phone's in one collection
    /// document built directly (at most 10,000; a real phone rolls over to the next collection
    /// at its `roll_over_at`).
    #[arg(long, default_value_t = 10_000)]
    pub at_rest_per_phone: usize,
    /// Phones pushing at once while building the large store.
    #[arg(long, default_value_t = 2)]
    pub at_rest_push_concurrency: usize,
    /// How long to query the totals at rest, seconds.
    #[arg(long, default_value_t = 20)]
    pub at_rest_seconds: u64,
    /// Most totals queries at rest.
    #[arg(long, default_value_t = 1000)]
    pub at_rest_max_queries: usize,
    /// Signatures the phone phase takes with `Device::sign` (its memory is measured holding
    /// them, its current collection loaded).
    #[arg(long, default_value_t = 10_000)]
    pub phone_signatures: usize,
    /// The phone's roll-over bound in the phone phase (records per collection; default: the
    /// library's, `tally_client::DEFAULT_ROLL_OVER_AT`).
    #[arg(long)]
    pub phone_roll_over_at: Option<usize>,
    /// Seed of the signer plan.
    #[arg(long, default_value_t = 6)]
    pub seed: u64,
    /// HTTP threads enrolling phones during setup.
    #[arg(long, default_value_t = 8)]
    pub setup_threads: usize,
    /// Phones syncing at once during setup (their first sync).
    #[arg(long, default_value_t = 64)]
    pub setup_concurrency: usize,
    /// Longest the reconnect (and one push of the large store) may take, seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Where the ingest phase's servers keep their data, comma-separated, run one after the
    /// other with the same workload: `sqlite` (one server), `pg` (one server on PostgreSQL),
    /// `pgN` (N servers on one PostgreSQL database). PostgreSQL needs `--database-url`.
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    pub backends: Vec<Backend>,
    /// A PostgreSQL server the benchmark may create databases on (`postgres://USER@HOST:PORT/DB`):
    /// each PostgreSQL backend gets a fresh database `tally_bench_<pid>_<n>` there, dropped after.
    #[arg(long, env = "TALLY_BENCH_DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    pub database_url: Option<String>,
    /// Benchmark this running server instead of starting `tally serve` (its URL).
    #[arg(long, requires = "admin_token")]
    pub server: Option<String>,
    /// The admin token of `--server`.
    #[arg(long, env = "TALLY_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// The process id of `--server`, to read its memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The data folder of `--server`, to measure its database.
    #[arg(long)]
    pub server_data: Option<PathBuf>,
    /// The `tally` binary (default: next to this executable).
    #[arg(long)]
    pub tally_bin: Option<PathBuf>,
    /// Folder for the data folders and phone stores (default: a temporary folder, removed).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl RunArgs {
    fn has(&self, p: Phase) -> bool {
        self.phases.contains(&p)
    }

    fn server(&self, bin: Option<&PathBuf>, data: PathBuf) -> Result<Server> {
        match (&self.server, &self.admin_token) {
            (Some(url), Some(token)) => Ok(Server::external(
                url,
                token,
                self.server_pid,
                self.server_data.clone(),
            )),
            _ => Server::start(bin.context("no tally binary")?, &data),
        }
    }
}

/// Runs the benchmark.
pub fn run(args: &RunArgs, command: Vec<String>) -> Result<Report> {
    let started = Instant::now();
    let mut machine = Machine::detect();
    let busy0 = stats::machine_cpu_seconds();
    let own0 = stats::cpu_seconds_with_children();
    let exe = std::env::current_exe()?;
    let temp = tempfile::Builder::new().prefix("tally-bench-").tempdir()?;
    let work = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let external = args.server.is_some();
    if external && args.backends != [Backend::Sqlite] {
        anyhow::bail!(
            "--server benchmarks a server that is already running: --backends cannot be \
             combined with it (drop one of them)"
        );
    }
    if args.has(Phase::Ingest)
        && args.database_url.is_none()
        && args.backends.iter().any(|b| *b != Backend::Sqlite)
    {
        anyhow::bail!(
            "--backends {} needs --database-url (or TALLY_BENCH_DATABASE_URL): a PostgreSQL \
             server the benchmark may create databases on; scripts/with-postgres runs a \
             throwaway one and gives its URL in TALLY_TEST_DATABASE_URL",
            args.backends
                .iter()
                .map(Backend::name)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let bin = if external {
        None
    } else {
        Some(server::tally_binary(args.tally_bin.as_deref())?)
    };
    eprintln!(
        "tally-bench: {} cores, load average {:?}; server {}",
        machine.cores,
        machine.load_average_start.unwrap_or_default(),
        match (&args.server, &bin) {
            (Some(url), _) => url.clone(),
            (None, Some(b)) => b.display().to_string(),
            _ => "?".into(),
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()?;
    let mut figs = Figures::default();
    let mut phases = Vec::new();
    // The disk: every acknowledged change and every signature on the phone waits for a flush.
    let fsync = stats::fsync_latency(&work, 50)?;
    figs.add(
        "machine.fsync_p50_ms",
        "machine: 4 KiB write + fdatasync in the work folder, p50",
        fsync.quantile_ms(0.5),
        "ms",
    );
    figs.add(
        "machine.fsync_p99_ms",
        "machine: 4 KiB write + fdatasync, p99",
        fsync.quantile_ms(0.99),
        "ms",
    );

    // Ingest runs on each backend in turn; the phone shares the first backend's first server.
    let mut ingested = None;
    let mut rates: Vec<(Backend, Option<f64>)> = Vec::new();
    let backends: Vec<Backend> = if args.has(Phase::Ingest) {
        args.backends.clone()
    } else {
        vec![Backend::Sqlite]
    };
    for (n, backend) in backends.iter().copied().enumerate() {
        let phone_here = n == 0 && args.has(Phase::Phone);
        if !args.has(Phase::Ingest) && !phone_here {
            break;
        }
        let mut cluster = if external {
            Cluster::external(args.server(None, work.clone())?)
        } else {
            let dir = if backend == Backend::Sqlite {
                work.join("ingest-data")
            } else {
                work.join(format!("ingest-{}", backend.name()))
            };
            Cluster::start(
                backend,
                bin.as_ref().context("no tally binary")?,
                &dir,
                args.database_url.as_deref(),
            )?
        };
        if args.has(Phase::Ingest) {
            let a = ingest::IngestArgs {
                phones: args.phones,
                per_phone: args.signatures,
                dup_pct: args.duplicates_pct,
                organizers: args.organizers,
                poll_interval: Duration::from_millis(args.poll_interval_ms),
                timeout: Duration::from_secs(args.timeout_secs),
                seed: args.seed,
                setup_threads: args.setup_threads,
                setup_concurrency: args.setup_concurrency,
            };
            let mut own = Figures::default();
            let setup = ingest::run(&cluster, &rt, &a, &mut own);
            figs.merge_renamed(own, |k| backend.key(k), &backend.label_prefix());
            let setup = setup?;
            rates.push((
                backend,
                figs.value(&backend.key("ingest.signatures_per_sec")),
            ));
            if n == 0 {
                ingested = Some(setup);
            }
        }
        if phone_here {
            let server = cluster.first();
            let (campaign, key, event) = match &ingested {
                Some(s) => (s.campaign_id.clone(), s.key.clone(), s.event.clone()),
                None => {
                    let c = server::create_campaign(
                        &server.api(),
                        &setup::recipients(),
                        setup::now_ms(),
                    )?;
                    (c.id, tally_core::seal::DuplicateKey::generate(), c.event)
                }
            };
            let a = phone::PhoneArgs {
                campaign: &campaign,
                key: &key,
                event: &event,
                signatures: args.phone_signatures,
                roll_over_at: args.phone_roll_over_at,
                exe: &exe,
                dir: &work,
            };
            phone::run(server, &a, &mut figs)?;
        }
        if cluster.is_ours() && !cluster.stop(Duration::from_secs(120))? {
            figs.note(format!(
                "{}the ingest server did not stop cleanly on SIGTERM",
                backend.label_prefix()
            ));
        }
    }
    if args.has(Phase::Ingest) {
        phases.push("ingest".to_string());
    }
    if args.has(Phase::Phone) {
        phases.push("phone".to_string());
    }

    if args.has(Phase::Baseline) {
        phases.push("baseline".to_string());
        let setup = match ingested.take() {
            Some(s) => s,
            None => {
                // Same shape of data as ingest would have pushed.
                let mut s = setup::local(args.phones)?;
                let plan =
                    data::Plan::new(args.phones, args.signatures, args.duplicates_pct, args.seed);
                let pb = setup::progress(plan.total, "collecting offline");
                let builder = data::Builder {
                    campaign: &s.campaign,
                    key: &s.key,
                    event: &s.event,
                    sealing: data::Sealing::Real,
                    start_ms: setup::now_ms() - (args.signatures as i64 + 60) * 1000,
                    time: Default::default(),
                };
                data::par_for_each(&mut s.phones, cores(), |i, phone| {
                    let owner = phone.device_id.clone();
                    builder.add_all(phone.collection_doc_mut(), &owner, &plan.slots[i], &pb)
                })?;
                pb.finish();
                s
            }
        };
        baseline::run(&setup, &work, &rates, &mut figs)?;
    }
    drop(ingested);

    if args.has(Phase::Rest) {
        phases.push("rest".to_string());
        let mut server = args.server(bin.as_ref(), work.join("rest-data"))?;
        let a = rest::RestArgs {
            signatures: args.at_rest_signatures,
            per_phone: args.at_rest_per_phone.clamp(1, rest::MAX_PER_COLLECTION),
            dup_pct: args.duplicates_pct,
            seed: args.seed + 1,
            query_time: Duration::from_secs(args.at_rest_seconds),
            max_queries: args.at_rest_max_queries.max(3),
            push_concurrency: args.at_rest_push_concurrency,
            setup_threads: args.setup_threads,
            setup_concurrency: args.setup_concurrency,
            timeout: Duration::from_secs(args.timeout_secs),
        };
        rest::run(&mut server, &rt, &a, &mut figs)?;
        if server.is_ours() {
            server.stop(Duration::from_secs(120))?;
        }
    }

    machine.load_average_end = stats::load_average();
    let wall = started.elapsed().as_secs_f64();
    if let (Some((b0, _)), Some((b1, _)), Some(o0), Some(o1)) = (
        busy0,
        stats::machine_cpu_seconds(),
        own0,
        stats::cpu_seconds_with_children(),
    ) {
        machine.others_cpu_cores = Some(((b1 - b0) - (o1 - o0)).max(0.0) / wall.max(1e-9));
    }
    let (figures, notes) = figs.into_parts();
    Ok(Report {
        tool: "tally-bench",
        command,
        machine,
        config: serde_json::to_value(args)?,
        phases,
        figures,
        notes,
        wall_seconds: wall,
        backends: if args.has(Phase::Ingest) {
            backends.iter().map(Backend::name).collect()
        } else {
            Vec::new()
        },
    })
}

impl Report {
    /// The header, table and notes, for people.
    pub fn render(&self) -> String {
        let m = &self.machine;
        let la = |l: Option<[f64; 3]>| {
            l.map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                .unwrap_or_else(|| "?".into())
        };
        let mut out = format!(
            "tally-bench: {} cores ({}), {} MB; load average {} at start, {} at end; \
             other processes used {} cores on average; {:.0} s in all\n`{}`\n\n",
            m.cores,
            m.cpu_model.as_deref().unwrap_or("?"),
            m.mem_total_mb.unwrap_or(0),
            la(m.load_average_start),
            la(m.load_average_end),
            m.others_cpu_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "?".into()),
            self.wall_seconds,
            self.command.join(" "),
        );
        let side_by_side = self.backends_table();
        if !side_by_side.is_empty() {
            out.push_str(&side_by_side);
            out.push('\n');
        }
        out.push_str(&self.table());
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    /// Did every correctness check pass (totals exact, every phone acknowledged)?
    pub fn correct(&self) -> bool {
        self.figures
            .iter()
            .filter(|f| f.key.ends_with("totals_exact") || f.key.ends_with("all_acknowledged"))
            .all(|f| f.pass == Some(true))
    }
}
