//! Group commit: one fsync for every transaction committed while writers were queued.
//!
//! Why: a `sled::Batch` takes sled's global concurrency-control lock exclusively, and
//! `Db::flush` holds it shared for the whole write + fsync, so a commit cannot start while
//! a flush is in progress. When every durable write flushed right after its commit,
//! commits and fsyncs alternated one for one and the writer lock became the bottleneck in
//! bursts: with `fleet-sim --scenario fleet --agents 10000`, the ~2 000 metrics batches
//! that arrive within a few seconds every minute waited up to 400 ms for the writer lock
//! (each commit ~0.2 ms, each one then blocked behind another caller's fsync).
//!
//! Promises:
//! - [`GroupCommit::wait_durable`] returns `Ok` only after a flush that STARTED after the
//!   caller's commit was applied has completed (the flush's `covered` number is read before
//!   it starts): an ack sent then still means durable.
//! - A caller flushes itself when no other writer is in flight (nobody else will commit
//!   soon, so waiting buys nothing), or after waiting [`MAX_WAIT`] for them; otherwise it
//!   waits for the flush of whoever commits last. One flush runs at a time; a failed flush
//!   is returned to the caller that ran it, and the others try again themselves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// Longest a committed writer waits for the writers behind it before it flushes itself.
pub(super) const MAX_WAIT: Duration = Duration::from_millis(4);

pub(super) struct GroupCommit {
    state: Mutex<State>,
    changed: Condvar,
    /// Writers that entered `SledStore::write` and have not committed (or failed) yet.
    writers: AtomicUsize,
}

struct State {
    /// Every commit up to this number is durable.
    durable: u64,
    /// A flush is running.
    flushing: bool,
}

/// Counts a writer in flight until dropped.
pub(super) struct Writing<'a>(&'a GroupCommit);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.0.writers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last writer is done: whoever waits for it may flush now. Notified under the
            // lock so that a waiter cannot miss it between its check and its wait.
            let _state = self.0.lock();
            self.0.changed.notify_all();
        }
    }
}

// === impl GroupCommit ===

impl GroupCommit {
    /// `durable`: the last commit known durable (at open: the tree's).
    pub(super) fn new(durable: u64) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                durable,
                flushing: false,
            }),
            changed: Condvar::new(),
            writers: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Two plain values, each written whole: nothing is left half-done by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the caller as a writer in flight until the guard is dropped (after its commit).
    pub(super) fn writing(&self) -> Writing<'_> {
        self.writers.fetch_add(1, Ordering::AcqRel);
        Writing(self)
    }

    /// Waits until no writer is in flight, at most `limit` (the last writer's guard wakes
    /// it). Returns whether it found none.
    pub(super) fn wait_quiet(&self, limit: Duration) -> bool {
        let give_up = Instant::now() + limit;
        let mut state = self.lock();
        loop {
            if self.writers.load(Ordering::Acquire) == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= give_up {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, give_up - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Returns once commit `commit` is durable. `flush` makes everything committed before it
    /// starts durable and returns the number of the last commit it covered.
    pub(super) fn wait_durable(
        &self,
        commit: u64,
        flush: impl Fn() -> Result<u64, StoreError>,
    ) -> Result<(), StoreError> {
        let give_up = Instant::now() + MAX_WAIT;
        let mut state = self.lock();
        loop {
            if state.durable >= commit {
                return Ok(());
            }
            let now = Instant::now();
            if !state.flushing && (self.writers.load(Ordering::Acquire) == 0 || now >= give_up) {
                state.flushing = true;
                drop(state);
                let result = flush();
                state = self.lock();
                state.flushing = false;
                if let Ok(covered) = &result {
                    state.durable = state.durable.max(*covered);
                }
                self.changed.notify_all();
                result?;
                continue;
            }
            let wait = if state.flushing {
                // The running flush notifies when it ends; the timeout is only a safety net.
                Duration::from_millis(100)
            } else {
                give_up.saturating_duration_since(now)
            };
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn one_flush_covers_the_writers_that_committed_while_it_waited() {
        let g = Arc::new(GroupCommit::new(0));
        let committed = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (g, committed, flushes) =
                    (Arc::clone(&g), Arc::clone(&committed), Arc::clone(&flushes));
                std::thread::spawn(move || {
                    let mine = {
                        let _w = g.writing();
                        committed.fetch_add(1, Ordering::AcqRel) + 1
                    };
                    g.wait_durable(mine, || {
                        let covered = committed.load(Ordering::Acquire);
                        flushes.fetch_add(1, Ordering::AcqRel);
                        std::thread::sleep(Duration::from_millis(2));
                        Ok(covered)
                    })
                    .unwrap();
                    // Durable means a flush covered this commit.
                    assert!(g.lock().durable >= mine);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(flushes.load(Ordering::Acquire) <= 8);
        assert_eq!(g.lock().durable, 8);
    }

    /// No writer: at once. A writer in flight: until it is done (woken by its guard, long
    /// before the limit), or the limit when it stays.
    #[test]
    fn waiting_for_idle_writers_ends_when_the_last_one_is_done() {
        let g = Arc::new(GroupCommit::new(0));
        assert!(g.wait_quiet(Duration::from_secs(60)));

        let held = g.writing();
        let started = Instant::now();
        assert!(!g.wait_quiet(Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(held);

        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let g = Arc::clone(&g);
            std::thread::spawn(move || {
                let _w = g.writing();
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            })
        };
        rx.recv().unwrap();
        let started = Instant::now();
        assert!(g.wait_quiet(Duration::from_secs(60)));
        assert!(started.elapsed() < Duration::from_secs(30));
        writer.join().unwrap();
    }

    #[test]
    fn a_failed_flush_is_reported_and_the_next_caller_retries() {
        let g = GroupCommit::new(0);
        let err = g.wait_durable(1, || Err(StoreError::Backend("disk gone".into())));
        assert!(err.is_err());
        assert!(g.wait_durable(1, || Ok(1)).is_ok());
        // Already durable: no flush.
        assert!(g.wait_durable(1, || panic!("flushed again")).is_ok());
    }
}
