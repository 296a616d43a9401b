//! The phone: a real `tally_client::Device` enrolled through the server (invite, enrollment, a
//! first sync for the campaign), then `Device::sign` timed for every signature (sealed,
//! committed to the phone's SQLite file with `synchronous=FULL` before it returns; the phone
//! rolls over to its next collection every `roll_over_at` records, and those signatures are
//! timed too). Then a child process opens the same phone, holding all of its signatures, reads
//! its status and reports its own resident memory; then it loads the current collection document
//! too (as signing would) and reports it again, with the peak the load reached.
//!
//! Besides the latency of `sign`, the phase reports the CPU the signing thread used per
//! signature: the difference is time spent waiting, mostly for the disk to confirm the commit
//! (`fsync`; compare the machine's own write + fdatasync latency in the same table), and the
//! memory of the signing process itself, which held the collection and compacted it in the
//! background.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tally_client::Device;
use tally_core::seal::DuplicateKey;

use crate::data::form;
use crate::report::{Cmp, Figures};
use crate::server::Server;
use crate::setup::progress;
use crate::stats::{Latencies, status_kb, thread_cpu_seconds};

/// What the child process reports about itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct PhoneMemory {
    /// Records in the phone's current collection document.
    pub records: usize,
    /// Collections in the phone's chain.
    #[serde(default)]
    pub collections: usize,
    /// Resident memory after opening the phone and reading its status, kB.
    pub vmrss_kb: u64,
    /// Peak resident memory then, kB.
    pub vmhwm_kb: u64,
    /// How long opening the phone and reading its status took, ms.
    pub open_ms: f64,
    /// Resident memory once the collection document is loaded too, kB.
    pub loaded_vmrss_kb: u64,
    /// Peak resident memory once the collection document is loaded, kB: automerge's load
    /// reaches it (it rebuilds every change to check the document's hashes) and then frees most
    /// of it, but the allocator may keep the freed pages.
    pub loaded_vmhwm_kb: u64,
    /// How long loading the collection document took, ms.
    pub load_ms: f64,
    /// Size of the phone's SQLite file (its WAL not included), bytes.
    pub db_bytes: u64,
}

/// The hidden `phone-rss` subcommand: opens the phone in `home` as the app would, reads its
/// status, and notes this process's memory; then loads the collection document (`preload`, as
/// the first signature or sync would) and notes it again; prints both as JSON.
pub fn memory_child(home: &Path) -> Result<()> {
    let t = Instant::now();
    let device = Device::open(home)?;
    let status = device.status()?;
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;
    let vmrss_kb = status_kb(None, "VmRSS").unwrap_or(0);
    let vmhwm_kb = status_kb(None, "VmHWM").unwrap_or(0);
    let t = Instant::now();
    device.preload()?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let db_bytes = std::fs::metadata(device.database_path()).map_or(0, |m| m.len());
    let report = PhoneMemory {
        records: status.collection_records,
        collections: status.collections.len(),
        vmrss_kb,
        vmhwm_kb,
        open_ms,
        loaded_vmrss_kb: status_kb(None, "VmRSS").unwrap_or(0),
        loaded_vmhwm_kb: status_kb(None, "VmHWM").unwrap_or(0),
        load_ms,
        db_bytes,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Settings of the phone phase.
pub struct PhoneArgs<'a> {
    /// The campaign to enroll in.
    pub campaign: &'a str,
    /// Its duplicate key (goes into the enrollment payload, as `tally invite` prints it).
    pub key: &'a DuplicateKey,
    /// The event signatures are collected at (every other one).
    pub event: &'a str,
    /// Signatures to take.
    pub signatures: usize,
    /// The phone's roll-over bound (`None`: the library's default).
    pub roll_over_at: Option<usize>,
    /// This benchmark's executable, run as the child process.
    pub exe: &'a Path,
    /// Where the phone's home folder goes.
    pub dir: &'a Path,
}

/// Runs the phase: enrolls a phone on the campaign of `server`, signs, then measures a process
/// holding the phone.
pub fn run(server: &Server, a: &PhoneArgs<'_>, figs: &mut Figures) -> Result<()> {
    let PhoneArgs {
        campaign,
        key,
        event,
        signatures: n,
        roll_over_at,
        exe,
        dir,
    } = *a;
    eprintln!("== phone: {n} signatures with Device::sign, then a process holding them");
    let api = server.api();
    let code = api.invite(campaign, "canvasser")?;
    let payload = serde_json::json!({
        "v": 1,
        "server": server.base,
        "code": code,
        "campaign": format!("automerge:{campaign}"),
        "key": key.to_hex(),
    })
    .to_string();
    let home = dir.join("phone");
    let device = Device::open(&home)?;
    if let Some(bound) = roll_over_at {
        device.set_roll_over_at(bound)?;
    }
    let bound = device.roll_over_at()?;
    device.enroll(&payload, "bench phone")?;
    let report = device.sync_once(Duration::from_secs(60))?;
    if !report.complete {
        bail!(
            "the phone's first sync did not complete: {}",
            report.summary()
        );
    }
    let pb = progress(n as u64, "phone: Device::sign");
    let mut lat = Latencies::new();
    let cpu_before = thread_cpu_seconds();
    for i in 0..n {
        let f = form(4_000_000_000 - i as u32, (i % 2 == 0).then_some(event));
        let t = Instant::now();
        device.sign(&f).with_context(|| format!("signature {i}"))?;
        lat.record(t.elapsed());
        pb.inc(1);
    }
    pb.finish();
    let sign_cpu_ms = match (cpu_before, thread_cpu_seconds()) {
        (Some(a), Some(b)) if n > 0 => Some((b - a) * 1000.0 / n as f64),
        _ => None,
    };
    // This process signed with the collection loaded and compacted it in the background.
    let signing_rss_kb = status_kb(None, "VmRSS");
    let signing_hwm_kb = status_kb(None, "VmHWM");
    drop(device);

    let out = Command::new(exe)
        .arg("phone-rss")
        .arg("--home")
        .arg(&home)
        .output()
        .context("running the phone-rss child")?;
    let mem: Option<PhoneMemory> = if out.status.success() {
        serde_json::from_slice(&out.stdout).ok()
    } else {
        figs.note(format!(
            "phone: the child process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        None
    };
    figs.add(
        "phone.signatures",
        "phone: signatures taken",
        Some(n as f64),
        "count",
    );
    figs.add(
        "phone.sign_p50_ms",
        "phone: Device::sign (sealed, committed, durable), p50",
        lat.quantile_ms(0.5),
        "ms",
    );
    figs.add_target(
        "phone.sign_p99_ms",
        "phone: Device::sign (sealed, committed, durable), p99",
        lat.quantile_ms(0.99),
        "ms",
        Cmp::Below,
        2.0,
    );
    figs.add(
        "phone.sign_max_ms",
        "phone: Device::sign, max",
        lat.max_ms(),
        "ms",
    );
    figs.add(
        "phone.sign_cpu_ms",
        "phone: Device::sign, CPU of the signing thread per signature (mean; the rest of its time is waiting, mostly for the disk)",
        sign_cpu_ms,
        "ms",
    );
    figs.add(
        "phone.rss_mb",
        "phone: resident memory of a process that opened the phone and read its status",
        mem.as_ref().map(|m| m.vmrss_kb as f64 / 1024.0),
        "MB",
    );
    figs.add(
        "phone.open_ms",
        "phone: opening the phone and reading its status in the child",
        mem.as_ref().map(|m| m.open_ms),
        "ms",
    );
    figs.add_target(
        "phone.rss_loaded_mb",
        "phone: resident memory once the current collection document is loaded too (as when signing)",
        mem.as_ref().map(|m| m.loaded_vmrss_kb as f64 / 1024.0),
        "MB",
        Cmp::Below,
        40.0,
    )
    .with_note(format!(
        "{n} signatures on the phone in {} collections of at most {bound}",
        mem.as_ref().map(|m| m.collections).unwrap_or(0)
    ));
    figs.add(
        "phone.signing_rss_mb",
        "phone: resident memory of the signing process after its signatures (the bench's own process: the phone, its background compaction, the harness)",
        signing_rss_kb.map(|kb| kb as f64 / 1024.0),
        "MB",
    );
    figs.add(
        "phone.signing_peak_mb",
        "phone: peak resident memory of the signing process",
        signing_hwm_kb.map(|kb| kb as f64 / 1024.0),
        "MB",
    );
    figs.add(
        "phone.rss_load_peak_mb",
        "phone: peak resident memory while loading the collection document",
        mem.as_ref().map(|m| m.loaded_vmhwm_kb as f64 / 1024.0),
        "MB",
    );
    figs.add(
        "phone.db_mb",
        "phone: the phone's SQLite file",
        mem.as_ref().map(|m| m.db_bytes as f64 / (1024.0 * 1024.0)),
        "MB",
    );
    figs.add(
        "phone.load_ms",
        "phone: loading the collection document in the child",
        mem.as_ref().map(|m| m.load_ms),
        "ms",
    );
    Ok(())
}
