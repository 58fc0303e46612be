//! Test support: the process's own anonymous memory, read at checkpoints of a loop, after
//! handing freed pages back (`malloc_trim`), to bound how much a repeated operation leaves
//! resident (the ignored `*_rss` measurements).

/// A `/proc/self/status` field in KiB (0 when unreadable).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Anonymous RSS since the first checkpoint.
#[derive(Default)]
pub(crate) struct Growth {
    first: Option<u64>,
}

impl Growth {
    /// Trims, prints VmRSS and RssAnon after `done` iterations, and keeps the first reading.
    pub(crate) fn checkpoint(&mut self, done: u64, what: &str) {
        cmdb_malloc::release_free_memory();
        let anon = status_kib("RssAnon:");
        println!(
            "{done} {what}: VmRSS {} KiB, RssAnon {anon} KiB",
            status_kib("VmRSS:")
        );
        self.first.get_or_insert(anon);
    }

    /// KiB of anonymous memory gained since the first checkpoint (after a trim).
    pub(crate) fn grown_kib(&self) -> u64 {
        cmdb_malloc::release_free_memory();
        status_kib("RssAnon:").saturating_sub(self.first.unwrap_or(0))
    }
}
