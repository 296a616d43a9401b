//! What every phase starts from: a campaign created through the HTTP API (sealed to two fresh
//! organizer identities, with one event), phones enrolled with one-time invite codes, and each
//! phone's first sync (it pushes its new collection document and fetches the campaign and totals
//! documents, as `tally-device enroll` does). Also: progress bars, and the organizers who poll
//! the totals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use automerge::{Automerge, ChangeHash};
use indicatif::{ProgressBar, ProgressStyle};
use tally_core::campaign::{self, Campaign, CampaignInit, Event};
use tally_core::seal::DuplicateKey;
use tokio::runtime::Runtime;

use crate::peer::{self, Phone};
use crate::server::{Api, Server};
use crate::stats::Latencies;

/// A progress bar on standard error (hidden when it is not a terminal), with a log line.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    eprintln!("{what} ({len})");
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>24} [{bar:40.cyan/blue}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A campaign and its enrolled phones.
pub struct Setup {
    /// The campaign id.
    pub campaign_id: String,
    /// The event id signatures are collected at.
    pub event: String,
    /// The campaign, read from the document the phones received.
    pub campaign: Campaign,
    /// The campaign document.
    pub campaign_doc: Automerge,
    /// The campaign's duplicate key (kept by the organizers and the phones, never the server).
    pub key: DuplicateKey,
    /// The phones, enrolled and synced once.
    pub phones: Vec<Phone>,
    /// Heads of each phone's collection after its first sync (before any signature).
    pub base_heads: Vec<Vec<ChangeHash>>,
    /// How long setting up took, seconds.
    pub seconds: f64,
}

/// Fresh organizer recipients (age X25519 public keys) for a campaign.
pub fn recipients() -> Vec<String> {
    (0..2)
        .map(|_| age::x25519::Identity::generate().to_public().to_string())
        .collect()
}

/// Creates a campaign on the first of `servers`, enrolls `n` phones (invite + enroll over HTTP,
/// `threads` at a time) and runs each phone's first sync (`concurrency` at a time). Phone `i`
/// is invited, enrolled and synced through server `i % servers.len()` (where it reconnects
/// later too).
pub fn enrolled(
    servers: &[Server],
    rt: &Runtime,
    n: usize,
    threads: usize,
    concurrency: usize,
) -> Result<Setup> {
    let started = Instant::now();
    let first = servers.first().context("no server to enroll phones on")?;
    let created = crate::server::create_campaign(&first.api(), &recipients(), now_ms())?;
    let apis: Vec<Api> = servers.iter().map(Server::api).collect();
    let pb = progress(n as u64, "enrolling phones");
    let per = n.div_ceil(threads.max(1)).max(1);
    let mut phones: Vec<Phone> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                let apis = &apis;
                let pb = pb.clone();
                let campaign = created.id.clone();
                s.spawn(move || -> Result<Vec<Phone>> {
                    let mut out = Vec::new();
                    for i in start..(start + per).min(n) {
                        let api = &apis[i % apis.len()];
                        let code = api.invite(&campaign, "canvasser")?;
                        let answer = api.enroll(&code, &format!("bench phone {i}"))?;
                        out.push(Phone::enrolled(&answer)?);
                        pb.inc(1);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow!("enrollment thread panicked"))??,
            );
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    pb.finish();
    let pb = progress(n as u64, "first syncs");
    let urls: Vec<String> = servers.iter().map(Server::ws_url).collect();
    phones = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::with_capacity(n);
        for (i, mut phone) in phones.into_iter().enumerate() {
            let sem = sem.clone();
            let url = urls[i % urls.len()].clone();
            let pb = pb.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let deadline = Instant::now() + Duration::from_secs(120);
                peer::sync(&url, &mut phone, true, deadline)
                    .await
                    .with_context(|| format!("first sync of {}", phone.device_id))?;
                pb.inc(1);
                Ok::<Phone, anyhow::Error>(phone)
            }));
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    pb.finish();
    let first = phones.first().context("no phone enrolled")?;
    let campaign_doc = first.campaign_doc().clone();
    let campaign = campaign::read(&campaign_doc)
        .map_err(|e| anyhow!("the campaign document the server sent does not read: {e}"))?;
    let base_heads = phones
        .iter()
        .map(|p| p.collection_doc().get_heads())
        .collect();
    Ok(Setup {
        campaign_id: created.id,
        event: created.event,
        campaign,
        campaign_doc,
        key: DuplicateKey::generate(),
        phones,
        base_heads,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The same, without a server (for the baseline alone): a campaign document made locally and
/// `n` phones with new collection documents.
pub fn local(n: usize) -> Result<Setup> {
    let campaign_id = tally_rig::new_id();
    let init = CampaignInit {
        id: campaign_id.to_string(),
        title: "Status for All (benchmark)".into(),
        petition: "We call on the Government of Canada to regularize all undocumented people."
            .into(),
        addressee: "the House of Commons".into(),
        goal: 1_000_000,
        timezone: "America/Toronto".into(),
        recipients: recipients(),
    };
    let mut doc = campaign::create(&init).map_err(|e| anyhow!("{e}"))?;
    campaign::put_event(
        &mut doc,
        &Event {
            id: "march-end".into(),
            name: "End of the march".into(),
            city: "Toronto".into(),
            starts_at: now_ms(),
            place: "Queen's Park".into(),
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    let campaign = campaign::read(&doc).map_err(|e| anyhow!("{e}"))?;
    let totals = tally_rig::new_id();
    let mut phones = Vec::with_capacity(n);
    for _ in 0..n {
        let device_id = hex::encode(rand::random::<[u8; 8]>());
        let answer = tally_server::api::types::Enrolled {
            device_id,
            token: "local".into(),
            role: "canvasser".into(),
            campaign: Some(init.id.clone()),
            campaign_url: Some(campaign_id.to_url()),
            totals_url: Some(totals.to_url()),
            replaces: None,
        };
        phones.push(Phone::enrolled(&answer)?);
    }
    let base_heads = phones
        .iter()
        .map(|p| p.collection_doc().get_heads())
        .collect();
    Ok(Setup {
        campaign_id: init.id,
        event: "march-end".into(),
        campaign,
        campaign_doc: doc,
        key: DuplicateKey::generate(),
        phones,
        base_heads,
        seconds: 0.0,
    })
}

/// Organizers polling a campaign's totals, each on its own keep-alive connection: one request,
/// then a pause of `interval` from the request's start (none if it took longer). They ask as
/// the dashboard would poll, `wait=false`: at once, with how far the count is behind.
pub struct Pollers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Polled>>,
}

/// What the organizers saw.
pub struct Polled {
    /// Latencies of answered requests.
    pub latencies: Latencies,
    /// Requests that failed (not 200).
    pub errors: u64,
    /// Requests answered with 200.
    pub answered: u64,
    /// The projection's lag each answer reported (`projection.lag_ms`).
    pub lags: Latencies,
}

impl Pollers {
    /// Starts `n` organizers on `campaign`, organizer `i` asking `bases[i % bases.len()]`.
    pub fn start(
        bases: &[String],
        token: &str,
        campaign: &str,
        n: usize,
        interval: Duration,
    ) -> Pollers {
        let stop = Arc::new(AtomicBool::new(false));
        // A server from before `wait` (an A/B run against an older binary) refuses it: ask
        // as its dashboard did.
        let query = match bases.first().map(|b| Api::new(b, Some(token))) {
            Some(api) if matches!(api.totals_with(campaign, "wait=false"), Ok((400, _, _))) => "",
            _ => "wait=false",
        };
        let handles = (0..n)
            .filter(|_| !bases.is_empty())
            .map(|i| {
                let api = Api::new(&bases[i % bases.len()], Some(token));
                let stop = stop.clone();
                let campaign = campaign.to_string();
                // Spread the organizers over the first interval.
                let offset = interval.mul_f64(i as f64 / n.max(1) as f64);
                std::thread::spawn(move || {
                    let mut seen = Polled {
                        latencies: Latencies::new(),
                        errors: 0,
                        answered: 0,
                        lags: Latencies::new(),
                    };
                    std::thread::sleep(offset);
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match api.totals_with(&campaign, query) {
                            Ok((200, v, d)) => {
                                seen.latencies.record(d);
                                let lag = v["projection"]["lag_ms"].as_u64().unwrap_or(0);
                                seen.lags.record(Duration::from_millis(lag));
                                seen.answered += 1;
                            }
                            _ => seen.errors += 1,
                        }
                        let next = t + interval;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                            std::thread::sleep(
                                (next - Instant::now()).min(Duration::from_millis(20)),
                            );
                        }
                    }
                    seen
                })
            })
            .collect();
        Pollers { stop, handles }
    }

    /// Stops them (each finishes its request in flight) and gathers what they saw.
    pub fn finish(self) -> Polled {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Polled {
            latencies: Latencies::new(),
            errors: 0,
            answered: 0,
            lags: Latencies::new(),
        };
        for h in self.handles {
            if let Ok(seen) = h.join() {
                out.latencies.merge(&seen.latencies);
                out.lags.merge(&seen.lags);
                out.errors += seen.errors;
                out.answered += seen.answered;
            }
        }
        out
    }
}
