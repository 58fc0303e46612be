//! Test support: the process's own anonymous memory, read at checkpoints of a loop, after
//! handing freed pages back (`malloc_trim`), to bound how much a repeated operation leaves
//! resident (the ignored `*_rss` measurements).

/// (VmRSS, RssAnon) of this process in KiB (0 when unreadable).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field| crate::budget::status_field_bytes(&status, field).map_or(0, |b| b / 1024);
    (kib("VmRSS:"), kib("RssAnon:"))
}

/// Runs `step(i)` for `i` in `1..=iterations`, with a checkpoint after every `every`
/// iterations; returns the KiB of anonymous memory gained since the first checkpoint.
pub(crate) fn grown_over(
    iterations: u64,
    every: u64,
    what: &str,
    mut step: impl FnMut(u64),
) -> u64 {
    let mut growth = Growth::default();
    for i in 1..=iterations {
        step(i);
        if i % every == 0 {
            growth.checkpoint(i, what);
        }
    }
    growth.grown_kib()
}

/// Anonymous RSS since the first checkpoint.
#[derive(Default)]
struct Growth {
    first: Option<u64>,
}

impl Growth {
    /// Trims, prints VmRSS and RssAnon after `done` iterations, and keeps the first reading.
    fn checkpoint(&mut self, done: u64, what: &str) {
        cmdb_malloc::release_free_memory();
        let (rss, anon) = rss_kib();
        println!("{done} {what}: VmRSS {rss} KiB, RssAnon {anon} KiB");
        self.first.get_or_insert(anon);
    }

    /// KiB of anonymous memory gained since the first checkpoint (after a trim).
    fn grown_kib(&self) -> u64 {
        cmdb_malloc::release_free_memory();
        rss_kib().1.saturating_sub(self.first.unwrap_or(0))
    }
}
