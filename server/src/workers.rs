//! The sync workers: a fixed pool of threads that run the sync connections' automerge and SQLite
//! work (applying, validating and storing changes, building answers) at a lower scheduling
//! priority than the rest of the server. When a reconnect wave keeps every core busy, the
//! organizers' API and the live totals (tokio's threads and its blocking pool, at normal priority)
//! still get a core the moment they need one: ingest yields to queries, never the other way round.
//! With no queries waiting, the workers have the whole machine, so ingest loses nothing.
//!
//! A connection hands its work over one job at a time and awaits the result, so its frames keep
//! their order. The pool's size bounds how many connections work at once: every write takes the
//! store's one writer in turn, so more threads would only wait on its lock.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool. Its threads end when the last handle is dropped.
pub struct Workers {
    jobs: mpsc::Sender<Job>,
    threads: usize,
    niceness: i32,
}

impl Workers {
    /// Starts `threads` workers (at least one), each `niceness` steps below the server's
    /// scheduling priority (Linux `nice`, 0 to 19; 0 keeps the server's own). A priority the
    /// system refuses to set is logged and the worker runs at the server's.
    pub fn start(threads: usize, niceness: i32) -> std::io::Result<Arc<Workers>> {
        let threads = threads.max(1);
        let niceness = niceness.clamp(0, 19);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("tally-sync-{n}"))
                .spawn(move || {
                    lower_priority(niceness);
                    loop {
                        // The lock is held only while taking a job, never while running one.
                        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job();
                    }
                })?;
        }
        Ok(Arc::new(Workers {
            jobs,
            threads,
            niceness,
        }))
    }

    /// How many threads the pool has.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How far below the server's priority the workers run.
    pub fn niceness(&self) -> i32 {
        self.niceness
    }

    /// Runs `f` on a worker and returns its result; a panic in `f` is raised again here (the
    /// worker itself carries on with the next job).
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs
            .send(job)
            .expect("the sync workers run as long as their pool");
        match result.await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => panic!("a sync worker dropped a job without running it"),
        }
    }
}

/// Lowers the calling thread's priority by `niceness` (on Linux each thread has its own).
#[cfg(target_os = "linux")]
fn lower_priority(niceness: i32) {
    if niceness == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    let result = rustix::process::getpriority_process(Some(tid))
        .and_then(|now| rustix::process::setpriority_process(Some(tid), (now + niceness).min(19)));
    if let Err(e) = result {
        tracing::warn!(error = %e, niceness, "could not lower a sync worker's priority; it runs at the server's");
    }
}

/// Elsewhere the workers run at the server's priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_niceness: i32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn own_priority() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn jobs_run_on_lower_priority_threads_and_return_their_results() {
        let here = own_priority();
        let workers = Workers::start(2, 7).unwrap();
        assert_eq!(workers.threads(), 2);
        let (name, priority) = workers
            .run(|| {
                (
                    std::thread::current().name().map(str::to_string),
                    own_priority(),
                )
            })
            .await;
        assert!(name.unwrap().starts_with("tally-sync-"));
        assert_eq!(priority, (here + 7).min(19));
    }

    #[tokio::test]
    async fn a_panicking_job_is_raised_to_its_caller_and_the_pool_goes_on() {
        let workers = Workers::start(1, 0).unwrap();
        let w = workers.clone();
        let failed = tokio::spawn(async move { w.run(|| panic!("boom")).await })
            .await
            .unwrap_err();
        assert!(failed.is_panic());
        assert_eq!(workers.run(|| 40 + 2).await, 42);
    }

    #[tokio::test]
    async fn jobs_run_concurrently_up_to_the_pool_size() {
        let workers = Workers::start(2, 0).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (barrier.clone(), barrier);
        // Each job waits for the other: this only finishes if both run at once.
        let (x, y) = tokio::join!(
            workers.run(move || a.wait().is_leader()),
            workers.run(move || b.wait().is_leader())
        );
        assert!(x ^ y);
    }
}
