//! The commit pipeline: the next writer builds its transaction while the previous one's
//! batch is being applied.
//!
//! Why: a perf profile of the `changes` storm had the store's writer lock as the serial
//! path of ingest: each writer built its transaction (reading rows, computing versions)
//! and then applied it as a sled batch, and every other stream waited for both. Now a
//! writer holds the writer lock only to build; it takes the commit lock before it
//! releases the writer lock, so batches are applied one at a time in the order they were
//! built, while the next writer builds.
//!
//! Invariants (kept by `SledStore::write_with` and [`Txn`](super::txn::Txn)):
//! - **Numbering**: a built transaction that writes anything takes the next number after
//!   the last one built (`Writer::built`), not the last one published: the previous may
//!   still be in flight. Batches are applied in build order (commit lock taken under the
//!   writer lock), each publishes its number after its batch is applied, so published
//!   numbers still rise by one.
//! - **Reads see everything built before**: a transaction's reads of the tree (every read
//!   goes through `Txn::tree`) first wait until the transaction in flight when it began
//!   has finished ([`Finished::wait_for`] its ticket). Writers other than ingest's apply
//!   wait before they start. Ingest's apply reads nothing in the common case: its rows and
//!   its agent record were read before the writer lock (`apply::Prepared`) and are used
//!   only if no transaction built after that read wrote them (`Writer::host_written`,
//!   `Writer::agent_written`, set at build time).
//! - **A failed batch breaks the chain**: if a batch fails, or the one before it did, its
//!   writer reports an error and sets [`Finished::broken`]; transactions built on it
//!   (numbered after it) fail the same way when they come to apply (their number no longer
//!   follows the published one). The next writer to start waits for every transaction in
//!   flight to finish and renumbers from the published number. Nothing is half-applied:
//!   each batch is atomic, and a transaction that fails writes nothing.
//! - **Tickets**: every built transaction also gets a ticket (never reused, unlike numbers
//!   after a break); [`Finished`] records the last ticket whose apply has finished, with
//!   or without success, so waits end even when a batch fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The last ticket whose batch has been applied or has failed.
#[derive(Default)]
pub(super) struct Finished {
    last: Mutex<u64>,
    changed: Condvar,
    /// A batch failed since the last renumbering (see the module doc).
    broken: AtomicBool,
}

impl Finished {
    fn lock(&self) -> MutexGuard<'_, u64> {
        // One number, written whole: a panic leaves nothing half-done.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once ticket `ticket` (and every earlier one) has finished.
    pub(super) fn wait_for(&self, ticket: u64) {
        let mut last = self.lock();
        while *last < ticket {
            last = self
                .changed
                .wait(last)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Ticket `ticket` has finished (tickets finish in order).
    pub(super) fn finish(&self, ticket: u64) {
        let mut last = self.lock();
        if ticket > *last {
            *last = ticket;
        }
        self.changed.notify_all();
    }

    fn set_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Ticket `ticket` is in flight: it finishes when the returned guard is dropped, as a
    /// failure (the chain broken) unless [`Finishing::succeeded`] said otherwise, so a
    /// panic while its batch is applied never leaves later writers waiting for it.
    pub(super) fn finishing(&self, ticket: u64) -> Finishing<'_> {
        Finishing {
            finished: self,
            ticket,
            ok: false,
        }
    }

    /// Whether a batch failed since the last call that returned true.
    pub(super) fn take_broken(&self) -> bool {
        self.broken.swap(false, Ordering::AcqRel)
    }
}

/// See [`Finished::finishing`].
pub(super) struct Finishing<'a> {
    finished: &'a Finished,
    ticket: u64,
    ok: bool,
}

impl Finishing<'_> {
    /// The ticket's batch was applied and its number published.
    pub(super) fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        if !self.ok {
            self.finished.set_broken();
        }
        self.finished.finish(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn waits_end_when_the_ticket_finishes() {
        let f = Arc::new(Finished::default());
        f.wait_for(0);
        let waiter = {
            let f = Arc::clone(&f);
            std::thread::spawn(move || f.wait_for(2))
        };
        f.finish(1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        f.finish(2);
        waiter.join().unwrap();
        // Finishing an older ticket never moves the mark back.
        f.finish(1);
        f.wait_for(2);
    }

    #[test]
    fn a_ticket_finishes_broken_unless_it_succeeded() {
        let f = Finished::default();
        f.finishing(1).succeeded();
        f.wait_for(1);
        assert!(!f.take_broken());
        drop(f.finishing(2));
        f.wait_for(2);
        assert!(f.take_broken());
        assert!(!f.take_broken(), "reported once");
        // A panic while a batch is applied: the ticket finishes, and broken.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _finishing = f.finishing(3);
            panic!("in apply");
        }));
        assert!(caught.is_err());
        f.wait_for(3);
        assert!(f.take_broken());
    }
}
