//! The projector: a thread that applies the acknowledged changes queued for the totals
//! projection ([`crate::projection::project_pending`]) in batches, off the path a phone waits
//! on. A commit wakes it ([`Signal::wake`]); it also looks every second, for changes another
//! server sharing the database queued and did not project (it stopped, or is behind). After
//! each batch it marks the batch's campaigns' totals as changed (totals document, live
//! streams).
//!
//! At rest it counts a change as soon as it is woken. Under load (a drain that found a wave's
//! worth of records, [`BUSY_RECORDS`]) it waits [`UNDER_LOAD`] after each wake, so that more
//! changes are counted in one write: the aggregate cells, index pages and the commit are paid
//! once for many changes, and the acknowledging writes wait less for the store's one writer.
//! `projection_delay_ms` makes it always wait at least that long. A stop projects what is
//! left; a crash leaves it queued for the next start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hub::{Hub, now_ms};
use crate::projection::project_pending;

/// How many records one projector write takes at most (more when one change has more): a
/// batch holds the store's writer, and a phone's acknowledgement may wait behind it.
pub const BATCH_RECORDS: u64 = 2_000;

/// A drain that found at least this many records means a wave of phones: the projector then
/// waits [`UNDER_LOAD`] after each wake, so that it counts more changes per write. Measured
/// with `tally-bench` (1,000 phones, SQLite): counting at once gave 3,112 signatures
/// acknowledged per second and a lag of 61 ms at p99; waiting 250 ms, 4,486 and 523 ms;
/// 500 ms, 4,596 and 992 ms (docs/benchmarks.md).
pub const BUSY_RECORDS: u64 = 500;

/// How long the projector gathers changes after a wake under load.
pub const UNDER_LOAD: Duration = Duration::from_millis(250);

/// How often the projector looks for changes without being woken.
const LOOK: Duration = Duration::from_secs(1);

/// How often a wait of `projection_delay_ms` checks for a stop.
const STEP: Duration = Duration::from_millis(50);

/// How long the projector waits after a failed write before it tries again.
const BACKOFF: Duration = Duration::from_secs(1);

/// What wakes the projector.
#[derive(Debug, Default)]
pub struct Signal {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Wakes the projector: a change was queued.
    pub fn wake(&self) {
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    /// Waits until woken or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut woken, _) = self
            .cv
            .wait_timeout_while(woken, timeout, |w| !*w)
            .unwrap_or_else(PoisonError::into_inner);
        *woken = false;
    }
}

/// The running projector; [`Running::stop`] ends it.
pub struct Running {
    stop: Arc<AtomicBool>,
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the projector after it projected what is queued now.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signal.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signal.wake();
    }
}

/// Starts the projector of `hub`'s store, waiting `delay` after each wake.
pub fn start(hub: Arc<Hub>, delay: Duration) -> std::io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = hub.projection_signal().clone();
    let thread = {
        let (stop, signal) = (stop.clone(), signal.clone());
        std::thread::Builder::new()
            .name("tally-projector".into())
            .spawn(move || {
                // Whether the last drain found a wave's worth of changes.
                let mut busy = false;
                // What a crash left queued is counted at once.
                let mut first = true;
                loop {
                    let stopping = stop.load(Ordering::SeqCst);
                    if !stopping && !std::mem::take(&mut first) {
                        // Woken, or the periodic look: either way, gather more changes into
                        // the batch first (a change queued just before a look is held back as
                        // long as one that woke it); a stop cuts the wait short.
                        signal.wait(LOOK);
                        let gather = if busy { delay.max(UNDER_LOAD) } else { delay };
                        let until = Instant::now() + gather;
                        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                            std::thread::sleep(STEP.min(until - Instant::now()));
                        }
                    }
                    match drain(&hub) {
                        Some(records) => busy = records >= BUSY_RECORDS,
                        None => std::thread::sleep(BACKOFF),
                    }
                    if stopping {
                        return;
                    }
                }
            })?
    };
    Ok(Running {
        stop,
        signal,
        thread: Some(thread),
    })
}

/// Projects until nothing is queued (or another server is projecting); the records it
/// projected, or `None` after a failure, which is logged.
pub fn drain(hub: &Hub) -> Option<u64> {
    let mut records = 0;
    loop {
        match project_pending(hub.store().as_ref(), BATCH_RECORDS) {
            Ok(Some(done)) if done.changes > 0 => {
                records += done.records;
                for campaign in &done.campaigns {
                    hub.mark_dirty(campaign);
                }
                let lag = done
                    .oldest_at
                    .map_or(0, |at| u64::try_from(now_ms() - at).unwrap_or(0));
                hub.metrics()
                    .projected(done.records, Duration::from_millis(lag));
            }
            Ok(_) => return Some(records),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the totals projection is behind: acknowledged changes wait in its queue (nothing is lost); if this repeats, run `tally reindex`"
                );
                return None;
            }
        }
    }
}
