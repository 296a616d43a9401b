//! The large store: S signatures pushed through a fresh server by phones holding bigger
//! collections (up to 10,000 signatures each, a phone's limit), built and pushed as a pipeline
//! so that only a few large documents are in memory at once. Then the server is restarted and
//! timed to its first correct totals answer, and the totals are queried at rest.

/// Signatures in one phone's collection document of the large store at most (built directly,
/// not through the phone's library, which would roll over earlier).
pub const MAX_PER_COLLECTION: usize = 10_000;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use tokio::runtime::Runtime;

use crate::data::{Builder, Plan, Sealing, seal_pool};
use crate::peer::{self, Phone};
use crate::report::{Cmp, Figures, cores};
use crate::server::Server;
use crate::setup::{self, now_ms, progress};
use crate::stats::{CpuWindow, Latencies};

/// Settings of the at-rest phase.
#[derive(Clone, Debug)]
pub struct RestArgs {
    /// S: signatures in the store.
    pub signatures: usize,
    /// Signatures per phone (at most 10,000, a phone collection's limit).
    pub per_phone: usize,
    /// Percentage of signatures by people who also sign on another phone.
    pub dup_pct: f64,
    /// Seed of the signer plan.
    pub seed: u64,
    /// How long to query the totals at rest.
    pub query_time: Duration,
    /// Most queries at rest.
    pub max_queries: usize,
    /// Phones pushing at once while building.
    pub push_concurrency: usize,
    /// HTTP threads enrolling phones.
    pub setup_threads: usize,
    /// Phones syncing at once during setup.
    pub setup_concurrency: usize,
    /// Longest one phone's push may take.
    pub timeout: Duration,
}

fn totals_of(v: &serde_json::Value) -> (Option<u64>, Option<u64>) {
    (v["signatures"].as_u64(), v["unique_signers"].as_u64())
}

/// Runs the phase on `server` (restarted only if this benchmark started it).
pub fn run(server: &mut Server, rt: &Runtime, a: &RestArgs, figs: &mut Figures) -> Result<()> {
    let phones_n = a.signatures.div_ceil(a.per_phone.max(1)).max(1);
    let per = a.signatures.div_ceil(phones_n);
    eprintln!(
        "== at rest: building a store of {} signatures ({phones_n} phones x {per})",
        phones_n * per
    );
    let mut setup = setup::enrolled(
        std::slice::from_ref(server),
        rt,
        phones_n,
        a.setup_threads,
        a.setup_concurrency,
    )?;
    let plan = Plan::new(phones_n, per, a.dup_pct, a.seed);
    let pool = seal_pool(&setup.campaign, 256)?;
    let builder = Builder {
        campaign: &setup.campaign,
        key: &setup.key,
        event: &setup.event,
        sealing: Sealing::Pool(&pool),
        start_ms: now_ms() - (per as i64 + 60) * 1000,
        time: Default::default(),
    };
    let queue: Mutex<VecDeque<(usize, Phone)>> = Mutex::new(
        std::mem::take(&mut setup.phones)
            .into_iter()
            .enumerate()
            .collect(),
    );
    let pb = progress(plan.total, "at rest: built and pushed");
    let url = server.ws_url();
    let cpu = CpuWindow::start(server.pid);
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Phone>(1);
    let pushed: Result<()> = std::thread::scope(|s| {
        let builders: Vec<_> = (0..cores().clamp(1, 2))
            .map(|_| {
                let tx = tx.clone();
                let (queue, builder, plan) = (&queue, &builder, &plan);
                s.spawn(move || -> Result<()> {
                    let hidden = ProgressBar::hidden();
                    loop {
                        let next = queue.lock().map_err(|_| anyhow!("poisoned"))?.pop_front();
                        let Some((i, mut phone)) = next else {
                            return Ok(());
                        };
                        let owner = phone.device_id.clone();
                        builder.add_all(
                            phone.collection_doc_mut(),
                            &owner,
                            &plan.slots[i],
                            &hidden,
                        )?;
                        if tx.blocking_send(phone).is_err() {
                            return Ok(()); // the pusher stopped on an error
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let pushing = rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(a.push_concurrency.max(1)));
            let mut tasks = Vec::new();
            while let Some(mut phone) = rx.recv().await {
                let permit = sem.clone().acquire_owned().await?;
                let url = url.clone();
                let pb = pb.clone();
                let timeout = a.timeout;
                tasks.push(tokio::spawn(async move {
                    let r = peer::sync(&url, &mut phone, false, Instant::now() + timeout)
                        .await
                        .with_context(|| format!("pushing the collection of {}", phone.device_id));
                    drop(permit);
                    let signatures =
                        tally_core::collection::record_count(phone.collection_doc()) as u64;
                    drop(phone);
                    r.map(|_| pb.inc(signatures))
                }));
                // Stop early on a failed push.
                if tasks.iter().any(|t| t.is_finished()) {
                    let mut i = 0;
                    while i < tasks.len() {
                        if tasks[i].is_finished() {
                            tasks.swap_remove(i).await??;
                        } else {
                            i += 1;
                        }
                    }
                }
            }
            for t in tasks {
                t.await??;
            }
            Ok::<(), anyhow::Error>(())
        });
        rx.close();
        for b in builders {
            b.join().map_err(|_| anyhow!("builder thread panicked"))??;
        }
        pushing
    });
    pushed?;
    let build_secs = started.elapsed().as_secs_f64();
    let cpu_use = cpu.finish();
    pb.finish();

    let api = server.api();
    let expected = (Some(plan.total), Some(plan.distinct));
    let mut got = (None, None);
    let exact_by = Instant::now() + Duration::from_secs(60);
    while Instant::now() < exact_by {
        if let Ok((200, v, _)) = api.totals(&setup.campaign_id) {
            got = totals_of(&v);
            if got == expected {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let exact = got == expected;
    figs.add(
        "rest.signatures",
        "at rest: signatures in the store",
        Some(plan.total as f64),
        "count",
    )
    .with_note(format!("{phones_n} phones x {per}"));
    figs.add(
        "rest.build_seconds",
        "at rest: building and pushing the store",
        Some(build_secs),
        "s",
    );
    figs.add(
        "rest.build_signatures_per_sec",
        "at rest: signatures acknowledged per second while building",
        Some(plan.total as f64 / build_secs.max(1e-9)),
        "sig/s",
    )
    .with_note(format!("{} phones pushing at once", a.push_concurrency));
    figs.add(
        "rest.build_cpu_server_cores",
        "at rest: server CPU while building",
        cpu_use.server,
        "cores",
    );
    figs.add(
        "rest.build_cpu_bench_cores",
        "at rest: benchmark CPU (building the phones' documents) while building",
        cpu_use.bench,
        "cores",
    );
    figs.add(
        "rest.add_us_per_sig",
        "at rest: collection::add_signature on the phone side, per signature",
        builder.time.per_signature_us().1,
        "µs",
    )
    .with_note(format!("collections of {per} signatures"));
    figs.add_target(
        "rest.totals_exact",
        "at rest: totals from the API exact",
        Some(if exact { 1.0 } else { 0.0 }),
        "yes/no",
        Cmp::Yes,
        1.0,
    )
    .with_note(format!(
        "got {}/{}; expected {}/{}",
        got.0.map_or("none".into(), |n| n.to_string()),
        got.1.map_or("none".into(), |n| n.to_string()),
        plan.total,
        plan.distinct
    ));
    figs.add(
        "rest.build_server_peak_rss_mb",
        "at rest: server peak resident memory while building (VmHWM)",
        server.peak_rss_mb(),
        "MB",
    );
    figs.add(
        "rest.db_mb",
        "at rest: database size (with WAL)",
        server.db_mb(),
        "MB",
    );

    // Restart: from `tally serve` starting to the first correct totals answer.
    let mut restart = None;
    let mut listening = None;
    if server.is_ours() {
        let clean = server.stop(Duration::from_secs(300))?;
        if !clean {
            figs.note("at rest: the server did not stop cleanly on SIGTERM");
        }
        let t0 = Instant::now();
        server.spawn()?;
        let limit = t0 + Duration::from_secs(300);
        while Instant::now() < limit {
            match api.totals(&setup.campaign_id) {
                Ok((status, v, _)) => {
                    listening.get_or_insert(t0.elapsed());
                    if status == 200 && totals_of(&v) == expected {
                        restart = Some(t0.elapsed());
                        break;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if restart.is_none() {
            bail!(
                "the restarted server gave no correct totals within 300 s; log:\n{}",
                server.log_tail()
            );
        }
    } else {
        figs.note("restart not measured: the server is not one this benchmark started");
    }
    figs.add_target(
        "restart.seconds",
        "restart: from `tally serve` start to the first correct totals",
        restart.map(|d| d.as_secs_f64()),
        "s",
        Cmp::Below,
        2.0,
    )
    .with_note(format!("{} signatures", plan.total));
    figs.add(
        "restart.first_answer_seconds",
        "restart: from start to the first HTTP answer",
        listening.map(|d| d.as_secs_f64()),
        "s",
    );

    // Totals at rest: one organizer, one request after the other.
    let pb = progress(a.max_queries as u64, "at rest: totals queries");
    let mut lat = Latencies::new();
    let t = Instant::now();
    let mut errors = 0u64;
    while (t.elapsed() < a.query_time || lat.count() < 3) && (lat.count() as usize) < a.max_queries
    {
        match api.totals(&setup.campaign_id) {
            Ok((200, _, d)) => lat.record(d),
            _ => errors += 1,
        }
        pb.inc(1);
        if errors > 10 {
            bail!("totals at rest keep failing");
        }
    }
    pb.finish();
    figs.add(
        "query.rest_requests",
        "totals at rest: requests (one organizer, sequential)",
        Some(lat.count() as f64),
        "count",
    );
    figs.add(
        "query.rest_p50_ms",
        "totals at rest: latency p50",
        lat.quantile_ms(0.5),
        "ms",
    )
    .with_note(format!("{} signatures", plan.total));
    figs.add_target(
        "query.rest_p99_ms",
        "totals at rest: latency p99",
        lat.quantile_ms(0.99),
        "ms",
        Cmp::Below,
        10.0,
    )
    .with_note(format!("{} signatures", plan.total));
    figs.add_target(
        "rest.server_rss_mb",
        "at rest: server resident memory after restart and queries (VmRSS)",
        server.rss_mb(),
        "MB",
        Cmp::Below,
        300.0,
    )
    .with_note(format!("{} signatures", plan.total));
    figs.add(
        "rest.server_peak_rss_mb",
        "at rest: server peak resident memory since restart (VmHWM)",
        server.peak_rss_mb(),
        "MB",
    );
    // What takes the space: the server stops, its file is measured, compacted and measured
    // again (the totals above are its last answers).
    match server.data.clone().filter(|_| server.is_ours()) {
        Some(data) => {
            server.stop(Duration::from_secs(300))?;
            crate::disk::run(&data.join("tally.db"), plan.total as usize, figs)?;
        }
        None => figs.note("disk not broken down: the server is not one this benchmark started"),
    }
    Ok(())
}
