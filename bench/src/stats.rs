//! Latency distributions (hdrhistogram, microsecond resolution) and what the process table says
//! about a process: resident memory from `/proc/PID/status`, CPU time from `/proc/PID/stat`, and
//! the machine's busy time from `/proc/stat`.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency distribution in microseconds, 1 µs to 1 hour, 3 significant digits.
#[derive(Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty distribution.
    pub fn new() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one duration (saturating at the upper bound).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    /// Adds another distribution's samples.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at a quantile (0.0 to 1.0), in milliseconds; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.count() > 0).then(|| self.hist.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The largest sample, in milliseconds.
    pub fn max_ms(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.hist.max() as f64 / 1000.0)
    }
}

/// One field of `/proc/PID/status` in kB (e.g. `VmRSS`, `VmHWM`); `pid` `None` is this process.
pub fn status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clock ticks per second of `/proc` CPU times. Linux reports USER_HZ, which is 100 on every
/// architecture this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds a process has used so far; `pid` `None` is this process.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    match pid {
        Some(p) => stat_cpu_seconds(&format!("/proc/{p}/stat")),
        None => stat_cpu_seconds("/proc/self/stat"),
    }
}

/// User plus system CPU seconds the calling thread has used so far.
pub fn thread_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, so utime (14) and stime (15) are 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// CPU seconds of this process plus its children that have been waited for.
pub fn cpu_seconds_with_children() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    (fields.len() == 4).then(|| fields.iter().sum::<f64>() / TICKS_PER_SEC)
}

/// The machine's (busy, total) CPU seconds so far, summed over cores, from `/proc/stat`.
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    Some(((total - idle) / TICKS_PER_SEC, total / TICKS_PER_SEC))
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().filter_map(|x| x.parse().ok());
    Some([it.next()?, it.next()?, it.next()?])
}

/// CPU use over a window: the servers', this process's and everything else's, in cores.
#[derive(Clone, Debug, Default)]
pub struct CpuWindow {
    /// (machine busy, this process) CPU seconds at the start.
    start: Option<(f64, f64)>,
    /// Each server's CPU seconds at the start.
    servers0: Vec<Option<f64>>,
    started: Option<std::time::Instant>,
    servers: Vec<Option<u32>>,
}

/// What a [`CpuWindow`] measured, in cores (1.0 = one core busy for the whole window).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CpuUse {
    /// The server processes together.
    pub server: Option<f64>,
    /// Each server process, in the order given.
    pub servers: Vec<Option<f64>>,
    /// The benchmark process (the phones and organizers).
    pub bench: Option<f64>,
    /// Everything else on the machine (other engineers' builds, the kernel).
    pub others: Option<f64>,
    /// The window's length in seconds.
    pub seconds: f64,
}

impl CpuWindow {
    /// Starts a window; `server` is the server's pid when it runs here.
    pub fn start(server: Option<u32>) -> Self {
        Self::start_many(&[server])
    }

    /// Starts a window over several servers (their pids, when they run here).
    pub fn start_many(servers: &[Option<u32>]) -> Self {
        let m = machine_cpu_seconds();
        let servers0 = servers
            .iter()
            .map(|p| p.and_then(|p| cpu_seconds(Some(p))))
            .collect();
        let b = cpu_seconds(None);
        CpuWindow {
            start: match (m, b) {
                (Some((busy, _)), Some(b)) => Some((busy, b)),
                _ => None,
            },
            servers0,
            started: Some(std::time::Instant::now()),
            servers: servers.to_vec(),
        }
    }

    /// Ends the window.
    pub fn finish(&self) -> CpuUse {
        let secs = self
            .started
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
            .max(1e-6);
        let Some((busy0, bench0)) = self.start else {
            return CpuUse {
                seconds: secs,
                servers: vec![None; self.servers.len()],
                ..CpuUse::default()
            };
        };
        let busy = machine_cpu_seconds().map(|(b, _)| b - busy0);
        let servers: Vec<Option<f64>> = self
            .servers
            .iter()
            .zip(&self.servers0)
            .map(|(p, s0)| Some(cpu_seconds(Some((*p)?))? - (*s0)?))
            .collect();
        let server = servers
            .iter()
            .copied()
            .sum::<Option<f64>>()
            .filter(|_| !servers.is_empty());
        let bench = cpu_seconds(None).map(|b| b - bench0);
        let all_servers: f64 = servers.iter().flatten().sum();
        let others = match (busy, bench) {
            (Some(busy), Some(bench)) => Some((busy - bench - all_servers).max(0.0)),
            _ => None,
        };
        CpuUse {
            server: server.map(|s| s / secs),
            servers: servers.iter().map(|s| s.map(|s| s / secs)).collect(),
            bench: bench.map(|b| b / secs),
            others: others.map(|o| o / secs),
            seconds: secs,
        }
    }
}

/// Latency of a small durable write in `dir` (4 KiB written, then `fdatasync`), `n` times: what
/// every SQLite commit with `synchronous=FULL` pays at least once, on the server and the phone.
pub fn fsync_latency(dir: &std::path::Path, n: usize) -> std::io::Result<Latencies> {
    use std::io::{Seek, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [7u8; 4096];
    let mut lat = Latencies::new();
    for _ in 0..n {
        let t = std::time::Instant::now();
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
        lat.record(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(path)?;
    Ok(lat)
}
