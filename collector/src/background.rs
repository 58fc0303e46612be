//! Dedicated, lower-priority threads for the collector's derived work: the judgment engine
//! and host links, which follow the durable change feed.
//!
//! Why: under a sustained stream of changes the derived work can use every cycle it gets
//! (it was about half of the collector's CPU in the `changes` load), and with the same CPU
//! priority as ingest it took those cycles from the streams whose agents wait for their
//! acks. Ingest is what must not fall behind: an agent's outbox is bounded, the feed is
//! not (it is the store). So the derived work runs on threads of its own at a higher
//! `nice` value (`[judgment] worker_nice`, default 10): when the cores are busy the
//! scheduler favours ingest, and the derived work catches up from the feed as soon as they
//! are not; on an idle machine nothing changes. A `nice` of 0 turns this off.
//!
//! Invariants:
//! - One thread per worker, named (`top -H` shows `cmdb-judgment`, `cmdb-host-links`),
//!   running one job at a time in submission order; at most [`QUEUE`] jobs wait, further
//!   submitters wait for room (no unbounded queue).
//! - A job that panics is reported to its submitter as [`WorkerError::Panicked`]; the thread
//!   lives on for the next job. A worker whose thread is gone reports
//!   [`WorkerError::Gone`].
//! - The priority is set once, for the worker's own thread only (Linux `setpriority` on
//!   the thread id): the async runtime and ingest threads keep theirs. An unprivileged
//!   process cannot lower it again, which is why the worker never runs anything else.

#![forbid(unsafe_code)]

use std::panic::AssertUnwindSafe;

use tokio::sync::{mpsc, oneshot};

/// Jobs that may wait for a worker.
pub const QUEUE: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("could not start the {name} thread: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("the {0} job panicked")]
    Panicked(String),
    #[error("the {0} thread is gone")]
    Gone(String),
}

/// A dedicated thread that runs blocking jobs at a chosen `nice` value.
pub struct Worker {
    name: String,
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread `name` and lowers its CPU priority to `nice` (0–19; 0 leaves it).
    /// A priority that cannot be set is logged; the worker runs anyway.
    pub fn spawn(name: &str, nice: i32) -> Result<Worker, WorkerError> {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUE);
        let thread_name = name.to_owned();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if nice != 0 {
                    set_own_nice(&thread_name, nice);
                }
                while let Some(job) = rx.blocking_recv() {
                    job();
                }
            })
            .map_err(|source| WorkerError::Spawn {
                name: name.to_owned(),
                source,
            })?;
        Ok(Worker {
            name: name.to_owned(),
            jobs,
        })
    }

    /// Runs `f` on the worker's thread and returns its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic drops `tx`: the submitter learns of it below.
            if let Ok(out) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(out);
            }
        });
        if self.jobs.send(job).await.is_err() {
            return Err(WorkerError::Gone(self.name.clone()));
        }
        rx.await
            .map_err(|_| WorkerError::Panicked(self.name.clone()))
    }
}

/// The calling thread's `nice` value becomes `nice` (clamped to 0–19).
fn set_own_nice(name: &str, nice: i32) {
    let nice = nice.clamp(0, 19);
    let tid = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(tid), nice) {
        Ok(()) => tracing::debug!(thread = name, nice, "Derived-work thread priority lowered."),
        Err(e) => tracing::warn!(
            thread = name,
            nice,
            error = %e,
            "Could not lower the thread's CPU priority; it runs at the process's."
        ),
    }
}

/// The calling thread's `nice` value (tests).
#[cfg(test)]
fn own_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(i32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_named_thread_at_the_lower_priority_and_in_order() {
        let base = own_nice();
        let w = Worker::spawn("cmdb-test-worker", 7).unwrap();
        let (name, nice) = w
            .run(|| (std::thread::current().name().map(str::to_owned), own_nice()))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("cmdb-test-worker"));
        if base <= 7 {
            assert_eq!(nice, 7);
        }
        // The submitter's thread keeps its priority.
        assert_eq!(own_nice(), base);
        let mut order = Vec::new();
        for i in 0..10 {
            order.push(w.run(move || i * 2).await.unwrap());
        }
        assert_eq!(order, (0..10).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_the_worker_lives_on() {
        let w = Worker::spawn("cmdb-test-panics", 0).unwrap();
        let err = w.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, WorkerError::Panicked(ref n) if n == "cmdb-test-panics"));
        assert_eq!(w.run(|| 41 + 1).await.unwrap(), 42);
    }
}
