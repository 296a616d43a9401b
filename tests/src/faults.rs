//! The fault harness: a real `tally serve` (child process, SQLite file), organizers' `tally`
//! commands, and a fleet of phones (`tally-device` processes, each with its own SQLite file)
//! that reach the server through a [`CutProxy`]. A seed draws a schedule of steps ([`schedule`],
//! pure): phones collecting offline and syncing over clean links, links cut after a random
//! number of bytes (mid-frame), links that deliver frames twice, phones SIGKILLed mid-sync
//! (between commit and acknowledgement), the server SIGKILLed (idle or mid-sync) and restarted,
//! a full disk (the database capped at its current size), a read-only database. [`run`] plays
//! it, heals every fault, syncs every phone and checks the invariant:
//!
//! - every signature any phone committed is on the server exactly once (the sealed export's ids
//!   equal the union of the phones' record ids, with no repeat, and the totals count them);
//! - no acknowledged change is missing: after every server kill and restart, each signature a
//!   phone holds as acknowledged is still on the server, before any further sync.
//!
//! A failing schedule is reproduced from its seed alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::server::{Server as _, http};
use crate::{CutProxy, Organizer, Phone, ServerProcess};

/// How a phone's link behaves during one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Everything arrives.
    Clean,
    /// The link drops after this many bytes (both directions together), mid-frame.
    CutAfter(u64),
    /// Every n-th binary WebSocket frame arrives twice, in both directions.
    Duplicate(u64),
}

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A phone collects `count` signatures, offline.
    Sign { phone: usize, count: usize },
    /// A phone syncs over a link.
    Sync { phone: usize, link: Link },
    /// A phone is SIGKILLed this long after its sync started.
    KillPhone { phone: usize, after_ms: u64 },
    /// The server is SIGKILLed (while `phone` syncs, if given, this long after it started) and
    /// started again.
    KillServer {
        during: Option<usize>,
        after_ms: u64,
    },
    /// A phone syncs over a clean link to the end (the server acknowledged its changes) and
    /// the server is SIGKILLed at once: between the commit of those changes and their
    /// projection, unless the projector counted them already. After the restart the totals
    /// count every stored signature once.
    KillServerAfterAck { phone: usize },
    /// The server restarts with its database capped at its current size: the disk is full.
    DiskFull,
    /// The server restarts on a read-only data folder.
    ReadOnly,
    /// Every fault is lifted: a writable folder, no cap, the server running.
    Heal,
}

/// Draws a schedule of `steps` steps for `phones` phones from `seed`. The same seed gives the
/// same schedule.
pub fn schedule(seed: u64, phones: usize, steps: usize) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(steps + phones);
    // Everyone has something to lose from the start.
    for phone in 0..phones {
        out.push(Step::Sign {
            phone,
            count: rng.gen_range(1..=3),
        });
    }
    for _ in 0..steps {
        let phone = rng.gen_range(0..phones);
        let step = match rng.gen_range(0..100) {
            0..=24 => Step::Sign {
                phone,
                count: rng.gen_range(1..=3),
            },
            25..=39 => Step::Sync {
                phone,
                link: Link::Clean,
            },
            40..=54 => Step::Sync {
                phone,
                link: Link::CutAfter(rng.gen_range(100..12_000)),
            },
            55..=64 => Step::Sync {
                phone,
                link: Link::Duplicate(rng.gen_range(1..=3)),
            },
            65..=69 => Step::KillPhone {
                phone,
                after_ms: rng.gen_range(0..600),
            },
            70..=74 => Step::KillServerAfterAck { phone },
            75..=84 => Step::KillServer {
                during: rng.gen_bool(0.6).then_some(phone),
                after_ms: rng.gen_range(0..600),
            },
            85..=90 => Step::DiskFull,
            91..=95 => Step::ReadOnly,
            _ => Step::Heal,
        };
        out.push(step);
    }
    out
}

/// What one schedule did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Steps played (without the final heal and sync).
    pub steps: usize,
    /// Signatures the phones committed.
    pub signatures: usize,
    /// Syncs that did not finish (cut, killed, refused, server down).
    pub syncs_failed: usize,
    /// Syncs that finished.
    pub syncs_ok: usize,
    /// Syncs that did not finish while the disk was full (the phone was refused).
    pub syncs_failed_full: usize,
    /// Syncs that did not finish while the database was read-only.
    pub syncs_failed_read_only: usize,
    /// Server SIGKILLs.
    pub server_kills: usize,
    /// Server SIGKILLs that left acknowledged changes queued for the projection (between
    /// the commit and the projector).
    pub kills_with_queued: usize,
    /// Server SIGKILLs right after a phone's changes were acknowledged.
    pub kills_after_ack: usize,
    /// Checks, after such a kill and the restart, that the totals count every stored
    /// signature once.
    pub counted_once_checks: usize,
    /// The server's `projection_delay_ms` in this schedule (drawn from the seed).
    pub projection_delay_ms: u64,
    /// Phone SIGKILLs.
    pub phone_kills: usize,
    /// Links cut by the proxy.
    pub cuts: usize,
    /// Frames delivered twice.
    pub duplicated: usize,
    /// Disk-full periods.
    pub disk_full: usize,
    /// Read-only periods, and whether the server refused to start on them.
    pub read_only: usize,
    /// Read-only periods where the server refused to start (said why and exited).
    pub read_only_refused: usize,
    /// Durability checks after a server restart (acknowledged signatures still there).
    pub durability_checks: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// The steps played and what each sync said.
    pub log: Vec<String>,
}

/// How the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Full,
    ReadOnly,
}

/// A read-only data folder, undone on drop: as root (whom file modes do not stop) a read-only
/// bind mount of the folder onto itself; otherwise the write bits taken off.
struct ReadOnlyFolder {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnlyFolder {
    fn apply(dir: &Path) -> Result<ReadOnlyFolder, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| format!("{}: {e}", args[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        let d = dir.to_str().ok_or("data folder path is not UTF-8")?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if root {
            run(&["mount", "--bind", d, d])?;
            if let Err(e) = run(&["mount", "-o", "remount,bind,ro", d]) {
                let _ = run(&["umount", d]);
                return Err(e);
            }
            Ok(ReadOnlyFolder {
                dir: dir.to_path_buf(),
                mounted: true,
            })
        } else {
            run(&["chmod", "-R", "a-w", d])?;
            Ok(ReadOnlyFolder {
                dir: dir.to_path_buf(),
                mounted: false,
            })
        }
    }
}

impl Drop for ReadOnlyFolder {
    fn drop(&mut self) {
        let d = self.dir.as_os_str();
        let status = if self.mounted {
            Command::new("umount").arg(d).status()
        } else {
            Command::new("chmod").arg("-R").arg("u+w").arg(d).status()
        };
        if !status.map(|s| s.success()).unwrap_or(false) {
            eprintln!(
                "fault harness: could not make {} writable again",
                self.dir.display()
            );
        }
    }
}

/// The server's data folder on a small tmpfs of its own (as root), so that the disk can really
/// fill up: [`SmallDisk::fill`] writes a ballast file until the filesystem says ENOSPC, and
/// [`SmallDisk::drain`] deletes it. Unmounted on drop.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Size of the filesystem.
    const SIZE: &'static str = "size=64m";

    /// Mounts a fresh tmpfs on `dir` (created if needed).
    pub fn mount(dir: &Path) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", Self::SIZE, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }

    /// Fills the filesystem to the last byte.
    pub fn fill(&self) -> Result<u64, String> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())
            .map_err(|e| format!("ballast: {e}"))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(format!("ballast: {e}")),
            }
        }
        // The last partial blocks.
        let mut one = [0u8; 512];
        while f.write(&one).map(|n| n > 0).unwrap_or(false) {
            written += one.len() as u64;
            one = [0u8; 512];
        }
        Ok(written)
    }

    /// Frees the space again.
    pub fn drain(&self) {
        let _ = std::fs::remove_file(self.ballast());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // A process that has just let go of the folder may still hold it for a moment; if the
        // filesystem stays busy, detach it (it goes once the last user does).
        for _ in 0..10 {
            if Command::new("umount")
                .arg(&self.dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Compacts the (stopped) server's database file, so that it has no free pages left.
fn vacuum(db: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .map_err(|e| format!("VACUUM {}: {e}", db.display()))
}

/// Set to play the stand-ins that need no mounts (a capped database for a full disk, no
/// read-only steps), as on a machine that allows none.
const NO_MOUNTS: &str = "TALLY_FAULT_NO_MOUNTS";

fn mounts_allowed() -> Result<(), String> {
    match std::env::var_os(NO_MOUNTS) {
        Some(_) => Err(format!("{NO_MOUNTS} is set")),
        None => Ok(()),
    }
}

/// Whether this machine can give a folder a small filesystem of its own (tmpfs, as root).
pub fn small_disk_available(scratch: &Path) -> Result<(), String> {
    mounts_allowed()?;
    let disk = SmallDisk::mount(&scratch.join("disk-probe"))?;
    let filled = disk.fill()?;
    disk.drain();
    drop(disk);
    if filled > 0 {
        Ok(())
    } else {
        Err("the small filesystem took no bytes".into())
    }
}

/// Whether this machine can make a folder read-only for the server (a bind mount as root).
pub fn read_only_available(scratch: &Path) -> Result<(), String> {
    mounts_allowed()?;
    let dir = scratch.join("ro-probe");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let guard = ReadOnlyFolder::apply(&dir)?;
    let refused = std::fs::write(dir.join("probe"), b"x").is_err();
    drop(guard);
    if refused {
        Ok(())
    } else {
        Err("writes still succeed in the read-only folder".into())
    }
}

/// One phone and what it committed.
struct Handset {
    phone: Phone,
    committed: Vec<String>,
}

impl Handset {
    /// Record ids the phone holds as acknowledged by the server.
    fn acknowledged(&self) -> Result<BTreeSet<String>, String> {
        let run = self.phone.run(&["--json", "status"]);
        if run.code != 0 {
            return Err(format!("status failed: {run}"));
        }
        let pending: BTreeSet<String> = run.json()["status"]["pending"]
            .as_array()
            .ok_or_else(|| format!("status without pending: {run}"))?
            .iter()
            .filter_map(|r| r["record_id"].as_str().map(str::to_string))
            .collect();
        Ok(self
            .committed
            .iter()
            .filter(|id| !pending.contains(*id))
            .cloned()
            .collect())
    }
}

/// Changes in the projection's queue of the database at `db` (0 when it cannot be read, e.g.
/// a read-only folder).
fn queued_for_projection(db: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM projection_queue", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// Fields drop in order: the server is killed before its folder's mounts go.
struct Rig {
    server: ServerProcess,
    proxy: CutProxy,
    campaign: String,
    phones: Vec<Handset>,
    mode: Mode,
    read_only: Option<ReadOnlyFolder>,
    rng: StdRng,
    report: Report,
    log: Vec<String>,
    /// `TALLY_PROJECTION_DELAY_MS` for every start.
    delay: String,
    /// The data folder's own small filesystem, when this machine allows one (else a full disk
    /// is a database capped at its size).
    disk: Option<SmallDisk>,
}

impl Rig {
    /// The signature ids on the server (with repeats, if any).
    fn server_ids(&self) -> Result<Vec<String>, String> {
        let (s, v) = http(
            &self.server.base(),
            "GET",
            &format!("/api/v1/campaigns/{}/sealed", self.campaign),
            Some(&self.server.admin()),
            None,
        );
        if s != 200 {
            return Err(format!("sealed export answered {s}: {v}"));
        }
        Ok(v.as_array()
            .ok_or("sealed export is not a list")?
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect())
    }

    fn set_link(&self, link: Link) {
        self.proxy.set_limit(match link {
            Link::CutAfter(n) => Some(n),
            _ => None,
        });
        self.proxy.duplicate_frames(match link {
            Link::Duplicate(n) => Some(n),
            _ => None,
        });
    }

    fn sign(&mut self, phone: usize, count: usize) -> Result<(), String> {
        for _ in 0..count {
            let h = &mut self.phones[phone];
            let n = h.committed.len();
            let name = format!("Signer {phone}-{n}-{}", self.rng.gen_range(0..1_000_000));
            let run = h.phone.run(&[
                "--json",
                "sign",
                "--name",
                &name,
                "--postal-code",
                "M5V 2T6",
                "--city",
                "Toronto",
            ]);
            if run.code != 0 {
                return Err(format!("phone {phone} could not sign offline: {run}"));
            }
            let id = run.json()["signature"]["record_id"]
                .as_str()
                .ok_or_else(|| format!("sign printed no record id: {run}"))?
                .to_string();
            h.committed.push(id);
            self.report.signatures += 1;
        }
        Ok(())
    }

    fn sync(&mut self, phone: usize, link: Link) {
        self.set_link(link);
        let run = self.phones[phone].phone.sync(15);
        self.set_link(Link::Clean);
        if run.code == 0 {
            self.report.syncs_ok += 1;
        } else {
            self.report.syncs_failed += 1;
            match self.mode {
                Mode::Full => self.report.syncs_failed_full += 1,
                Mode::ReadOnly => self.report.syncs_failed_read_only += 1,
                Mode::Normal => {}
            }
        }
        let summary = serde_json::from_str::<Value>(run.stdout.trim())
            .map(|v| v["summary"].to_string())
            .unwrap_or_else(|_| run.stderr.trim().to_string());
        self.log.push(format!(
            "  phone {phone} sync over {link:?}: exit {}: {summary}",
            run.code
        ));
    }

    /// Starts a phone's sync in the background; returns the child.
    fn spawn_sync(&self, phone: usize) -> std::process::Child {
        self.phones[phone]
            .phone
            .spawn(&["--json", "sync", "--timeout", "8"])
    }

    fn kill_phone(&mut self, phone: usize, after_ms: u64) {
        let mut child = self.spawn_sync(phone);
        std::thread::sleep(Duration::from_millis(after_ms));
        let _ = child.kill();
        let _ = child.wait();
        self.report.phone_kills += 1;
    }

    /// Starts the server in `mode`, returning whether it came up.
    fn start(&mut self, mode: Mode) -> Result<bool, String> {
        self.read_only = None;
        match mode {
            Mode::Full if self.disk.is_none() => {
                // No slack in the file either: SQLite would first fill its free pages.
                vacuum(&self.server.data.join("tally.db"))?;
                self.server.set_env(&[
                    ("TALLY_MAX_DATABASE_KIB", "1"),
                    ("TALLY_PROJECTION_DELAY_MS", &self.delay),
                ])
            }
            _ => self
                .server
                .set_env(&[("TALLY_PROJECTION_DELAY_MS", &self.delay)]),
        }
        if mode == Mode::ReadOnly {
            self.read_only = Some(ReadOnlyFolder::apply(&self.server.data)?);
        }
        self.mode = mode;
        match self.server.try_spawn(Duration::from_secs(20)) {
            Ok(()) => Ok(true),
            Err(e) if mode != Mode::Normal => {
                // Refusing to start on a read-only or full disk is right, if it says why.
                let said = e.to_lowercase();
                let why = match mode {
                    Mode::ReadOnly => ["read-only", "not writable"],
                    _ => ["full", "no space"],
                };
                if !why.iter().any(|w| said.contains(w)) {
                    return Err(format!(
                        "on a {mode:?} disk the server stopped without saying why: {e}"
                    ));
                }
                if mode == Mode::ReadOnly {
                    self.report.read_only_refused += 1;
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// After the server restarted: every acknowledged signature is still there.
    fn check_acknowledged(&mut self) -> Result<(), String> {
        if !self.server.running() {
            return Ok(());
        }
        let on_server: BTreeSet<String> = self.server_ids()?.into_iter().collect();
        for (i, h) in self.phones.iter().enumerate() {
            let acked = h.acknowledged()?;
            let missing: Vec<_> = acked.difference(&on_server).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "phone {i} holds {} signatures as acknowledged that the server lost: {missing:?}",
                    missing.len()
                ));
            }
        }
        self.report.durability_checks += 1;
        Ok(())
    }

    fn kill_server(&mut self, during: Option<usize>, after_ms: u64) -> Result<(), String> {
        let child = during
            .filter(|_| self.server.running())
            .map(|p| self.spawn_sync(p));
        if child.is_some() {
            std::thread::sleep(Duration::from_millis(after_ms));
        }
        self.kill_and_restart()?;
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    fn kill_server_after_ack(&mut self, phone: usize) -> Result<(), String> {
        let counted_before = self.server.running() && self.mode == Mode::Normal;
        self.sync(phone, Link::Clean);
        self.report.kills_after_ack += 1;
        if self.kill_and_restart()? && counted_before && self.mode == Mode::Normal {
            self.check_counted_once()?;
        }
        Ok(())
    }

    /// SIGKILLs the server and starts it again as it was (a full disk stays full, a read-only
    /// folder read-only); returns whether it came up.
    fn kill_and_restart(&mut self) -> Result<bool, String> {
        self.server.kill();
        self.report.server_kills += 1;
        if queued_for_projection(&self.server.data.join("tally.db")) > 0 {
            self.report.kills_with_queued += 1;
        }
        let mode = self.mode;
        let up = self.start(mode)?;
        if up {
            self.check_acknowledged()?;
        }
        Ok(up)
    }

    /// The totals (which wait for the projector) count each signature the documents hold, once.
    fn check_counted_once(&mut self) -> Result<(), String> {
        let stored: BTreeSet<String> = self.server_ids()?.into_iter().collect();
        let totals = self.server.totals(&self.campaign);
        if totals["signatures"].as_u64() != Some(stored.len() as u64) {
            return Err(format!(
                "after a kill right after an acknowledgement, the totals count {} signatures \
                 where the documents hold {} ({totals})",
                totals["signatures"],
                stored.len()
            ));
        }
        self.report.counted_once_checks += 1;
        Ok(())
    }

    fn play(&mut self, step: &Step) -> Result<(), String> {
        self.log.push(format!("{step:?}"));
        match *step {
            Step::Sign { phone, count } => self.sign(phone, count)?,
            Step::Sync { phone, link } => self.sync(phone, link),
            Step::KillPhone { phone, after_ms } => self.kill_phone(phone, after_ms),
            Step::KillServer { during, after_ms } => self.kill_server(during, after_ms)?,
            Step::KillServerAfterAck { phone } => self.kill_server_after_ack(phone)?,
            Step::DiskFull => {
                self.report.disk_full += 1;
                match &self.disk {
                    // The disk fills up under the running server.
                    Some(disk) if self.mode != Mode::ReadOnly => {
                        disk.fill()?;
                        self.mode = Mode::Full;
                    }
                    _ => {
                        self.server.kill();
                        self.start(Mode::Full)?;
                    }
                }
            }
            Step::ReadOnly => {
                self.server.kill();
                self.report.read_only += 1;
                self.start(Mode::ReadOnly)?;
            }
            Step::Heal => self.heal()?,
        }
        Ok(())
    }

    fn heal(&mut self) -> Result<(), String> {
        self.set_link(Link::Clean);
        if self.read_only.is_some() {
            // The read-only mount goes first: the ballast beneath it can only be deleted then.
            self.server.kill();
            self.read_only = None;
        }
        if let Some(disk) = &self.disk {
            disk.drain();
            // Space again: the running server carries on without a restart.
            if self.mode == Mode::Full && self.server.running() {
                self.mode = Mode::Normal;
            }
        }
        if self.mode != Mode::Normal || !self.server.running() {
            self.server.kill();
            self.start(Mode::Normal)?;
            self.check_acknowledged()?;
        }
        Ok(())
    }
}

/// Settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Whether the server's data folder gets a small filesystem of its own, so that a full
    /// disk is real (needs tmpfs mounts as root); otherwise the database is capped.
    pub small_disk: bool,
    /// Phones in the fleet.
    pub phones: usize,
    /// Random steps per schedule.
    pub steps: usize,
    /// Whether read-only steps are played (they need a read-only bind mount as root).
    pub read_only: bool,
}

/// Plays the schedule of `seed` in `root` and checks the invariant. The error says what broke,
/// with the steps played.
pub fn run(root: &Path, seed: u64, settings: Settings) -> Result<Report, String> {
    let steps: Vec<Step> = schedule(seed, settings.phones, settings.steps)
        .into_iter()
        .filter(|s| settings.read_only || *s != Step::ReadOnly)
        .collect();
    run_steps(root, seed, settings.phones, settings.small_disk, &steps)
}

/// Plays `steps` with `phones` phones (`seed` draws the signers' names), heals, syncs every
/// phone and checks the invariant.
pub fn run_steps(
    root: &Path,
    seed: u64,
    phones_n: usize,
    small_disk: bool,
    steps: &[Step],
) -> Result<Report, String> {
    let t0 = Instant::now();
    let disk = if small_disk {
        Some(SmallDisk::mount(&root.join("server"))?)
    } else {
        None
    };
    // A projector that counts at once, a little later, or seconds later: server kills land
    // between a commit and its projection.
    let delay = [0u64, 200, 2_000][(seed % 3) as usize];
    let server = ServerProcess::start_with_env(
        &root.join("server"),
        &[("TALLY_PROJECTION_DELAY_MS", &delay.to_string())],
    );
    let org = Organizer::new(&root.join("organizer"), &server.base(), &server.data);
    let recipient = org.keygen("organizer.age");
    let campaign = org.create_campaign("Status for All", &recipient);
    let proxy = CutProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let mut phones = Vec::new();
    for i in 0..phones_n {
        let mut payload: Value = org.invite(&campaign);
        payload["server"] = Value::String(proxy.base());
        let phone = Phone::new(&root.join(format!("phone{i}")));
        phone.enroll(&payload, &format!("phone {i}"));
        phones.push(Handset {
            phone,
            committed: Vec::new(),
        });
    }
    let mut rig = Rig {
        disk,
        server,
        proxy,
        campaign,
        phones,
        mode: Mode::Normal,
        read_only: None,
        rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        report: Report {
            seed,
            projection_delay_ms: delay,
            ..Report::default()
        },
        log: Vec::new(),
        delay: delay.to_string(),
    };
    rig.report.steps = steps.len();
    let outcome = play_and_check(&mut rig, steps);
    // The server goes before its filesystems do.
    rig.server.kill();
    rig.read_only = None;
    let stats = rig.proxy.stats();
    rig.report.cuts = stats.cuts;
    rig.report.duplicated = stats.duplicated;
    rig.report.elapsed = t0.elapsed();
    rig.report.log = rig.log.clone();
    let result = match outcome {
        Ok(()) => Ok(rig.report.clone()),
        Err(e) => Err(format!(
            "seed {seed}: {e}\nsteps:\n{}\nserver log (tail):\n{}",
            rig.log.join("\n"),
            tail(&rig.server.log_text(), 40)
        )),
    };
    drop(rig.disk.take());
    result
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn play_and_check(rig: &mut Rig, steps: &[Step]) -> Result<(), String> {
    for step in steps {
        rig.play(step)?;
    }
    // Heal, then every phone syncs until nothing is pending.
    rig.log.push("Heal (final)".into());
    rig.heal()?;
    for i in 0..rig.phones.len() {
        let mut last = None;
        for _ in 0..4 {
            let run = rig.phones[i].phone.sync(20);
            let done = run.code == 0
                && rig.phones[i].phone.status()["counts"]["signatures_pending"].as_u64() == Some(0);
            if done {
                last = None;
                break;
            }
            last = Some(run);
        }
        if let Some(run) = last {
            return Err(format!(
                "phone {i} could not finish syncing after healing: {run}"
            ));
        }
    }
    // The invariant.
    let ids = rig.server_ids()?;
    let mut seen = BTreeMap::<&str, usize>::new();
    for id in &ids {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    if !repeated.is_empty() {
        return Err(format!("signatures stored more than once: {repeated:?}"));
    }
    let committed: BTreeSet<&str> = rig
        .phones
        .iter()
        .flat_map(|h| h.committed.iter().map(String::as_str))
        .collect();
    let stored: BTreeSet<&str> = seen.keys().copied().collect();
    let lost: Vec<_> = committed.difference(&stored).collect();
    let unknown: Vec<_> = stored.difference(&committed).collect();
    if !lost.is_empty() || !unknown.is_empty() {
        return Err(format!(
            "committed {} signatures, server holds {}: lost {lost:?}, never committed {unknown:?}",
            committed.len(),
            stored.len()
        ));
    }
    let totals = rig.server.totals(&rig.campaign);
    if totals["signatures"].as_u64() != Some(committed.len() as u64) {
        return Err(format!(
            "totals count {} signatures, the phones committed {}",
            totals["signatures"],
            committed.len()
        ));
    }
    Ok(())
}
