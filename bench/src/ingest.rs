//! The ingest phase: K phones enrolled and synced once, each collects M signatures offline, then
//! all reconnect at once over real WebSockets while N organizers poll the totals. Measures the
//! signatures acknowledged per second, the time for each phone to be acknowledged (from the
//! moment they all start reconnecting), the server's memory and CPU, the database size, whether
//! the totals are exact, and the organizers' latency. The servers may be several (a
//! [`Cluster`] on one PostgreSQL database): phones and organizers are then spread over them
//! round-robin, and the totals must be exact on every one.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::runtime::Runtime;

use crate::data::{Builder, Plan, Sealing, par_for_each};
use crate::peer::{self, Phone, Synced};
use crate::report::{Cmp, Figures, cores};
use crate::server::Cluster;
use crate::setup::{self, Pollers, Setup, now_ms, progress};
use crate::stats::{CpuWindow, Latencies};

/// Settings of the ingest phase.
#[derive(Clone, Debug)]
pub struct IngestArgs {
    /// K: phones.
    pub phones: usize,
    /// M: signatures per phone.
    pub per_phone: usize,
    /// Percentage of signatures by people who also sign on another phone.
    pub dup_pct: f64,
    /// N: organizers polling the totals during the reconnect.
    pub organizers: usize,
    /// Pause between one organizer's requests.
    pub poll_interval: Duration,
    /// Longest the reconnect may take.
    pub timeout: Duration,
    /// Seed of the signer plan.
    pub seed: u64,
    /// HTTP threads enrolling phones.
    pub setup_threads: usize,
    /// Phones syncing at once during setup.
    pub setup_concurrency: usize,
}

/// Runs the phase on `cluster`; returns the phones (with their signatures) for the baseline.
pub fn run(cluster: &Cluster, rt: &Runtime, a: &IngestArgs, figs: &mut Figures) -> Result<Setup> {
    eprintln!(
        "== ingest on {}: {} phones x {} signatures, {} organizers polling every {:?}",
        cluster.backend.describe(),
        a.phones,
        a.per_phone,
        a.organizers,
        a.poll_interval
    );
    let servers = &cluster.servers;
    let first = cluster.first();
    let mut setup = setup::enrolled(servers, rt, a.phones, a.setup_threads, a.setup_concurrency)?;
    let plan = Plan::new(a.phones, a.per_phone, a.dup_pct, a.seed);
    // Offline collection: every phone signs M people, sealed and tokenized as on the phone.
    let pb = progress(plan.total, "collecting offline");
    let built = Instant::now();
    let (prepare_us, add_us) = {
        let builder = Builder {
            campaign: &setup.campaign,
            key: &setup.key,
            event: &setup.event,
            sealing: Sealing::Real,
            start_ms: now_ms() - (a.per_phone as i64 + 60) * 1000,
            time: Default::default(),
        };
        let slots = &plan.slots;
        par_for_each(&mut setup.phones, cores(), |i, phone| {
            let owner = phone.device_id.clone();
            builder.add_all(phone.collection_doc_mut(), &owner, &slots[i], &pb)
        })?;
        builder.time.per_signature_us()
    };
    pb.finish();
    let build_secs = built.elapsed().as_secs_f64();

    // Everyone reconnects at once; the organizers poll meanwhile.
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let pollers = Pollers::start(
        &bases,
        &first.admin,
        &setup.campaign_id,
        a.organizers,
        a.poll_interval,
    );
    let pb = progress(a.phones as u64, "reconnect: acknowledged");
    let urls: Vec<String> = servers.iter().map(|s| s.ws_url()).collect();
    let phones = std::mem::take(&mut setup.phones);
    // The servers, then PostgreSQL's backends serving the run's database (those connected
    // now: the servers' pools are open by the end of setup).
    let mut pids: Vec<Option<u32>> = servers.iter().map(|s| s.pid).collect();
    let database_pids = cluster
        .database
        .as_ref()
        .map(|d| d.backend_pids())
        .unwrap_or_default();
    pids.extend(database_pids.iter().map(|p| Some(*p)));
    let cpu = CpuWindow::start_many(&pids);
    let t0 = Instant::now();
    let deadline = t0 + a.timeout;
    let results: Vec<(Phone, Result<Synced>)> = rt.block_on(async {
        let tasks: Vec<_> = phones
            .into_iter()
            .enumerate()
            .map(|(i, mut phone)| {
                // The server it enrolled through.
                let url = urls[i % urls.len()].clone();
                let pb = pb.clone();
                tokio::spawn(async move {
                    let r = peer::sync(&url, &mut phone, false, deadline).await;
                    if r.is_ok() {
                        pb.inc(1);
                    }
                    (phone, r)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.map_err(|e| anyhow!("phone task: {e}"))?);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let cpu_use = cpu.finish();
    let polled = pollers.finish();
    pb.finish();

    let mut sync_times = Latencies::new();
    let mut last = Duration::ZERO;
    let mut acked = 0usize;
    let mut failures = Vec::new();
    for (phone, r) in &results {
        match r {
            Ok(s) => match s.acknowledged_at {
                Some(at) => {
                    let d = at - t0;
                    sync_times.record(d);
                    last = last.max(d);
                    acked += 1;
                }
                None => failures.push(format!("{}: never acknowledged", phone.device_id)),
            },
            Err(e) => failures.push(format!("{}: {e:#}", phone.device_id)),
        }
    }
    setup.phones = results.into_iter().map(|(p, _)| p).collect();
    let acked_sigs = (acked * a.per_phone) as f64;
    let rate = (acked > 0).then(|| acked_sigs / last.as_secs_f64().max(1e-9));

    // How long after the last acknowledgement the projector had counted everything.
    let counted = counted_after(&first.api(), &setup.campaign_id, t0);
    // The totals straight after, from every server: they must be exact.
    let checked: Vec<(bool, String)> = servers
        .iter()
        .map(|server| exact_totals(&server.api(), &setup.campaign_id, &plan))
        .collect();
    let exact_servers = checked.iter().filter(|(e, _)| *e).count();
    let exact = exact_servers == servers.len();
    let got = checked
        .iter()
        .enumerate()
        .map(|(i, (_, g))| {
            if servers.len() == 1 {
                g.clone()
            } else {
                format!("server {i}: {g}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ");

    let p = "ingest";
    figs.add(
        &format!("{p}.phones"),
        "ingest: phones",
        Some(a.phones as f64),
        "count",
    );
    figs.add(
        &format!("{p}.signatures"),
        "ingest: signatures (all phones)",
        Some(plan.total as f64),
        "count",
    );
    figs.add(
        &format!("{p}.unique_signers"),
        "ingest: distinct signers",
        Some(plan.distinct as f64),
        "count",
    )
    .with_note(format!(
        "{} signatures by people who also signed on another phone",
        plan.duplicates
    ));
    figs.add(
        &format!("{p}.setup_seconds"),
        "ingest setup: campaign, enroll and first sync of every phone",
        Some(setup.seconds),
        "s",
    );
    figs.add(
        &format!("{p}.collect_seconds"),
        "ingest setup: collecting the signatures offline (sealing included)",
        Some(build_secs),
        "s",
    );
    figs.add(
        &format!("{p}.prepare_us_per_sig"),
        "phone side: SignatureForm::prepare (age sealing, token, checks), per signature",
        prepare_us,
        "µs",
    );
    figs.add(
        &format!("{p}.add_us_per_sig"),
        "phone side: collection::add_signature (one change), per signature",
        add_us,
        "µs",
    )
    .with_note(format!("collections of {} signatures", a.per_phone));
    figs.add_target(
        &format!("{p}.signatures_per_sec"),
        "ingest: signatures acknowledged per second",
        rate,
        "sig/s",
        Cmp::AtLeast,
        20_000.0,
    )
    .with_note(format!(
        "{} phones reconnecting at once, {} organizers polling",
        a.phones, a.organizers
    ));
    figs.add(
        &format!("{p}.seconds"),
        "ingest: reconnect until the last phone is acknowledged",
        Some(last.as_secs_f64()),
        "s",
    );
    figs.add(
        &format!("{p}.sync_p50_ms"),
        "ingest: time for a phone to be fully synced, p50",
        sync_times.quantile_ms(0.50),
        "ms",
    );
    figs.add_target(
        &format!("{p}.sync_p99_ms"),
        "ingest: time for a phone to be fully synced, p99",
        sync_times.quantile_ms(0.99),
        "ms",
        Cmp::Below,
        2000.0,
    );
    figs.add(
        &format!("{p}.sync_max_ms"),
        "ingest: time for a phone to be fully synced, max",
        sync_times.max_ms(),
        "ms",
    );
    figs.add_target(
        &format!("{p}.all_acknowledged"),
        "ingest: every phone acknowledged",
        Some(if failures.is_empty() { 1.0 } else { 0.0 }),
        "yes/no",
        Cmp::Yes,
        1.0,
    )
    .with_note(format!("{acked} of {}", a.phones));
    figs.add_target(
        &format!("{p}.totals_exact"),
        "ingest: totals from the API exact after the reconnect",
        Some(if exact { 1.0 } else { 0.0 }),
        "yes/no",
        Cmp::Yes,
        1.0,
    )
    .with_note(format!(
        "got {got}; expected {} and {}",
        plan.total, plan.distinct
    ));
    figs.add(
        &format!("{p}.servers"),
        "ingest: servers (phones and organizers spread over them)",
        Some(servers.len() as f64),
        "count",
    );
    figs.add(
        &format!("{p}.totals_exact_servers"),
        "ingest: servers whose totals are exact after the reconnect",
        Some(exact_servers as f64),
        "count",
    );
    let peaks: Vec<Option<f64>> = servers.iter().map(|s| s.peak_rss_mb()).collect();
    let max = |v: &[Option<f64>]| -> Option<f64> {
        v.iter()
            .copied()
            .collect::<Option<Vec<f64>>>()?
            .into_iter()
            .reduce(f64::max)
    };
    let peak = figs.add_target(
        &format!("{p}.server_peak_rss_mb"),
        "ingest: server peak resident memory (VmHWM; the largest of the servers)",
        max(&peaks),
        "MB",
        Cmp::Below,
        300.0,
    );
    if first.pid.is_none() {
        peak.with_note("external server without --server-pid");
    }
    let rss: Vec<Option<f64>> = servers.iter().map(|s| s.rss_mb()).collect();
    figs.add_target(
        &format!("{p}.server_rss_after_mb"),
        "ingest: server resident memory right after (VmRSS; the largest of the servers)",
        max(&rss),
        "MB",
        Cmp::Below,
        300.0,
    );
    figs.add(
        &format!("{p}.db_mb"),
        if cluster.database.is_some() {
            "ingest: database size (pg_database_size)"
        } else {
            "ingest: database size (with WAL)"
        },
        cluster.db_mb(),
        "MB",
    );
    let n = servers.len();
    let server_cpu = cpu_use.servers[..n].iter().copied().sum::<Option<f64>>();
    figs.add(
        &format!("{p}.cpu_server_cores"),
        "ingest: server CPU during the reconnect (all servers)",
        server_cpu,
        "cores",
    );
    if cluster.database.is_some() {
        figs.add(
            &format!("{p}.cpu_database_cores"),
            "ingest: PostgreSQL's CPU during the reconnect (the database's backend processes)",
            (!database_pids.is_empty()).then(|| cpu_use.servers[n..].iter().flatten().sum::<f64>()),
            "cores",
        )
        .with_note(format!(
            "{} connections open at the start",
            database_pids.len()
        ));
    }
    if servers.len() > 1 {
        for (i, c) in cpu_use.servers[..n].iter().enumerate() {
            figs.add(
                &format!("{p}.cpu_server{i}_cores"),
                &format!("ingest: server {i}'s CPU during the reconnect"),
                *c,
                "cores",
            );
        }
    }
    figs.add(
        &format!("{p}.cpu_bench_cores"),
        "ingest: benchmark CPU (phones, organizers) during the reconnect",
        cpu_use.bench,
        "cores",
    );
    figs.add(
        &format!("{p}.cpu_others_cores"),
        "ingest: other processes' CPU during the reconnect",
        cpu_use.others,
        "cores",
    );
    figs.add(
        "query.organizers",
        "totals during ingest: organizers polling",
        Some(a.organizers as f64),
        "count",
    );
    figs.add(
        "query.ingest_requests",
        "totals during ingest: requests answered",
        Some(polled.answered as f64),
        "count",
    )
    .with_note(format!("{} failed", polled.errors));
    figs.add(
        "query.ingest_p50_ms",
        "totals during ingest: latency p50",
        polled.latencies.quantile_ms(0.50),
        "ms",
    );
    figs.add_target(
        "query.ingest_p99_ms",
        "totals during ingest: latency p99",
        polled.latencies.quantile_ms(0.99),
        "ms",
        Cmp::Below,
        10.0,
    );
    figs.add_target(
        "query.ingest_lag_p99_ms",
        "totals during ingest: how far behind the count was (projection.lag_ms), p99",
        polled.lags.quantile_ms(0.99),
        "ms",
        Cmp::Below,
        1000.0,
    );
    figs.add(
        "query.ingest_lag_max_ms",
        "totals during ingest: how far behind the count was, max",
        polled.lags.max_ms(),
        "ms",
    );
    figs.add(
        "ingest.counted_after_last_ack_s",
        "ingest: from the last phone acknowledged to every signature counted (nothing left in the projection's queue)",
        counted.map(|c| c.saturating_sub(last).as_secs_f64()),
        "s",
    );
    figs.add(
        "query.ingest_max_ms",
        "totals during ingest: latency max",
        polled.latencies.max_ms(),
        "ms",
    );
    for f in failures.iter().take(5) {
        figs.note(format!("ingest: phone failed: {f}"));
    }
    if failures.len() > 5 {
        figs.note(format!("ingest: {} more phones failed", failures.len() - 5));
    }
    if !exact {
        figs.note(format!(
            "ingest: totals not exact: got {got}, expected {} signatures and {} unique",
            plan.total, plan.distinct
        ));
    }
    Ok(setup)
}

/// When (from `t0`) the projection had counted every acknowledged change: asks `api` with
/// `wait=false` until nothing is pending, for up to 5 minutes.
fn counted_after(api: &crate::server::Api, campaign: &str, t0: Instant) -> Option<Duration> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        match api.totals_with(campaign, "wait=false") {
            Ok((200, v, _)) if v["projection"]["pending_records"].as_u64() == Some(0) => {
                return Some(t0.elapsed());
            }
            // A server from before the projector counts in the acknowledging write.
            Ok((400, _, _)) => return Some(t0.elapsed()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Asks `api` for the campaign's totals until they are exact (`signatures` and `unique_signers`
/// as the plan says), for up to 10 s: another server's totals may trail the one that stored
/// the last change. Returns whether they were, and what was last seen.
fn exact_totals(api: &crate::server::Api, campaign: &str, plan: &Plan) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (exact, got) = match api.totals(campaign) {
            Ok((200, v, _)) => {
                let sigs = v["signatures"].as_u64();
                let unique = v["unique_signers"].as_u64();
                (
                    sigs == Some(plan.total) && unique == Some(plan.distinct),
                    format!(
                        "{} signatures, {} unique",
                        sigs.map_or("none".into(), |n| n.to_string()),
                        unique.map_or("none".into(), |n| n.to_string())
                    ),
                )
            }
            Ok((s, v, _)) => (false, format!("HTTP {s}: {v}")),
            Err(e) => (false, e.to_string()),
        };
        if exact || Instant::now() >= deadline {
            return (exact, got);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
