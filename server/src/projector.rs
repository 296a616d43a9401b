//! The projector: a thread that applies the acknowledged changes queued for the totals
//! projection ([`crate::projection::project_pending`]) in batches, off the path a phone waits
//! on. A commit wakes it ([`Signal::wake`]); it also looks every second, for changes another
//! server sharing the database queued and did not project (it stopped, or is behind). After
//! each batch it marks the batch's campaigns' totals as changed (totals document, live
//! streams).
//!
//! `projection_delay_ms` makes it wait that long after being woken, so that more changes are
//! netted into one batch (fewer writes of the same aggregate cells), at the cost of that much
//! more lag. A stop projects what is left; a crash leaves it queued for the next start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hub::{Hub, now_ms};
use crate::projection::project_pending;

/// How many records one projector write takes at most (more when one change has more): a
/// batch holds the store's writer, and a phone's acknowledgement may wait behind it.
pub const BATCH_RECORDS: u64 = 2_000;

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

    /// Waits until woken or `timeout` passes; whether it was woken.
    fn wait(&self, timeout: Duration) -> bool {
        let woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut woken, _) = self
            .cv
            .wait_timeout_while(woken, timeout, |w| !*w)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *woken, false)
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
                loop {
                    let stopping = stop.load(Ordering::SeqCst);
                    if !stopping && signal.wait(LOOK) {
                        // Gather more changes into the batch; a stop cuts the wait short.
                        let until = Instant::now() + delay;
                        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                            std::thread::sleep(STEP.min(until - Instant::now()));
                        }
                    }
                    if !drain(&hub) {
                        std::thread::sleep(BACKOFF);
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

/// Projects until nothing is queued (or another server is projecting); `false` after a
/// failure, which is logged.
pub fn drain(hub: &Hub) -> bool {
    loop {
        match project_pending(hub.store().as_ref(), BATCH_RECORDS) {
            Ok(Some(done)) if done.changes > 0 => {
                for campaign in &done.campaigns {
                    hub.mark_dirty(campaign);
                }
                let lag = done
                    .oldest_at
                    .map_or(0, |at| u64::try_from(now_ms() - at).unwrap_or(0));
                hub.metrics()
                    .projected(done.records, Duration::from_millis(lag));
            }
            Ok(_) => return true,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the totals projection is behind: acknowledged changes wait in its queue (nothing is lost); if this repeats, run `tally reindex`"
                );
                return false;
            }
        }
    }
}
