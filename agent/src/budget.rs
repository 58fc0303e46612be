//! The agent's self-limits: it never harms its host.
//!
//! Owns three things: lowering the agent's own priority once at start ([`Budget::lower_priority`]:
//! nice 10; with no explicit I/O priority set, Linux derives the best-effort I/O level from the
//! nice value, so this lowers disk priority too), pacing heavy jobs so that the agent's average
//! CPU use stays within `cpu_percent` of one core ([`Budget::pace`]), and telling the caller
//! when resident memory is above `memory_bytes` ([`Budget::memory_check`]).
//!
//! Pacing is cooperative: the caller awaits `pace()` before each heavy job (discovery,
//! re-hashing), which sleeps until the CPU the agent used since the previous pace point,
//! spread over the time since then, is within the budget. A wait is bounded by
//! [`MAX_PACE_WAIT`], so a misconfigured budget delays work but never stops it. Never kills,
//! throttles or signals anything; never blocks a thread (the wait is a tokio sleep).
//!
//! Own CPU time comes from /proc/self/stat (utime + stime, all threads, in USER_HZ ticks, which
//! Linux fixes at 100 for user space); RSS from /proc/self/status (`VmRSS`, in kB, which needs
//! no page size).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest one `pace()` waits.
pub const MAX_PACE_WAIT: Duration = Duration::from_secs(600);

/// The nice value the agent runs at.
pub const NICE: i32 = 10;

/// Linux's user-visible clock tick (USER_HZ): /proc times are in 1/100 s on every
/// architecture, whatever the kernel's internal HZ.
const USER_HZ: f64 = 100.0;

/// Resident memory is above the budget: the caller skips optional work and logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("resident memory {rss_bytes} bytes is above the budget of {limit_bytes} bytes")]
pub struct OverBudget {
    /// The agent's RSS when checked.
    pub rss_bytes: u64,
    /// The configured budget.
    pub limit_bytes: u64,
}

/// CPU seconds used so far (the process's, or a test's fake clock).
type CpuClock = fn() -> f64;

/// Where the previous pace point was.
#[derive(Clone, Copy, Debug)]
struct PacePoint {
    at: Instant,
    cpu_seconds: f64,
}

/// The agent's CPU and memory budget.
#[derive(Debug)]
pub struct Budget {
    cpu_fraction: f64,
    memory_bytes: u64,
    clock: CpuClock,
    last: Mutex<PacePoint>,
}

impl Budget {
    /// `cpu_percent` of one core (averaged between pace points); `memory_bytes` of RSS.
    /// Non-finite or non-positive CPU budgets are treated as 0.01 %.
    pub fn new(cpu_percent: f64, memory_bytes: u64) -> Self {
        Self::with_clock(cpu_percent, memory_bytes, Budget::cpu_seconds)
    }

    fn with_clock(cpu_percent: f64, memory_bytes: u64, clock: CpuClock) -> Self {
        let pct = if cpu_percent.is_finite() && cpu_percent > 0.0 {
            cpu_percent
        } else {
            0.01
        };
        Budget {
            cpu_fraction: pct / 100.0,
            memory_bytes,
            clock,
            last: Mutex::new(PacePoint {
                at: Instant::now(),
                cpu_seconds: clock(),
            }),
        }
    }

    /// Lowers the agent's scheduling priority to nice [`NICE`] (and so its best-effort I/O
    /// priority). Linux keeps the nice value per thread (new threads inherit their creator's),
    /// so every thread that exists now is lowered: call it early in `main`. An error (e.g. a
    /// seccomp filter) is for the caller to log; it is not fatal.
    pub fn lower_priority() -> std::io::Result<()> {
        rustix::process::setpriority_process(None, NICE).map_err(std::io::Error::from)?;
        let tasks = match std::fs::read_dir("/proc/self/task") {
            Ok(t) => t,
            // The calling thread is done; without /proc there is nothing more to find.
            Err(_) => return Ok(()),
        };
        let mut result = Ok(());
        for entry in tasks.flatten().take(4096) {
            let tid = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok());
            if let Some(pid) = tid.and_then(rustix::process::Pid::from_raw)
                && let Err(e) = rustix::process::setpriority_process(Some(pid), NICE)
                // A thread that exited since the listing is not a failure.
                && e != rustix::io::Errno::SRCH
            {
                result = Err(std::io::Error::from(e));
            }
        }
        result
    }

    /// The agent's own CPU time so far (user + system, all threads), in seconds; 0 if
    /// /proc/self/stat cannot be read.
    pub fn cpu_seconds() -> f64 {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat_cpu_ticks(&s))
            .map_or(0.0, |ticks| ticks as f64 / USER_HZ)
    }

    /// The agent's resident set size in bytes; 0 if /proc/self/status cannot be read.
    pub fn rss_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_status_rss(&s))
            .unwrap_or(0)
    }

    /// Waits until the agent's average CPU use since the last pace point is within the
    /// budget (at most [`MAX_PACE_WAIT`]), then starts a new pace point. Call before each
    /// heavy job.
    pub async fn pace(&self) {
        let wait = {
            let last = self.last_point();
            pace_wait(
                last.at.elapsed(),
                (self.clock)() - last.cpu_seconds,
                self.cpu_fraction,
            )
        };
        if !wait.is_zero() {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "Pacing a heavy job to stay within the CPU budget."
            );
            tokio::time::sleep(wait).await;
        }
        let point = PacePoint {
            at: Instant::now(),
            cpu_seconds: (self.clock)(),
        };
        match self.last.lock() {
            Ok(mut g) => *g = point,
            Err(poisoned) => *poisoned.into_inner() = point,
        }
    }

    /// `Err` when resident memory is above the budget.
    pub fn memory_check(&self) -> Result<(), OverBudget> {
        let rss = Budget::rss_bytes();
        if rss > self.memory_bytes {
            Err(OverBudget {
                rss_bytes: rss,
                limit_bytes: self.memory_bytes,
            })
        } else {
            Ok(())
        }
    }

    fn last_point(&self) -> PacePoint {
        match self.last.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// How long to wait so that `cpu_used` seconds over `elapsed` + wait is `fraction` of a core.
fn pace_wait(elapsed: Duration, cpu_used: f64, fraction: f64) -> Duration {
    if !(cpu_used.is_finite() && cpu_used > 0.0 && fraction > 0.0) {
        return Duration::ZERO;
    }
    let needed = cpu_used / fraction - elapsed.as_secs_f64();
    if needed <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(needed)
        .unwrap_or(MAX_PACE_WAIT)
        .min(MAX_PACE_WAIT)
}

/// utime + stime (fields 14 and 15) of /proc/<pid>/stat. The command name (field 2) is in
/// parentheses and may itself contain spaces and ")", so fields are counted after the last ")".
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; utime is field 14, i.e. the 12th here.
    let mut fields = after.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS:  1234 kB` of /proc/<pid>/status, in bytes.
fn parse_status_rss(status: &str) -> Option<u64> {
    status_field_bytes(status, "VmRSS:")
}

/// A `<field>  1234 kB` line of /proc/<pid>/status (`field` with its colon), in bytes.
pub(crate) fn status_field_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let mut parts = line[field.len()..].split_ascii_whitespace();
    let kb: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => kb.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn own_cpu_and_rss_are_sane() {
        let before = Budget::cpu_seconds();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = Budget::cpu_seconds();
        assert!(after > 0.0 && after >= before, "{before} {after}");
        let rss = Budget::rss_bytes();
        assert!(rss > 1024 * 1024 && rss < 4 * 1024 * 1024 * 1024, "{rss}");
    }

    #[test]
    fn memory_check_compares_rss_to_the_budget() {
        assert!(Budget::new(2.0, u64::MAX).memory_check().is_ok());
        let e = Budget::new(2.0, 1).memory_check().unwrap_err();
        assert_eq!(e.limit_bytes, 1);
        assert!(e.rss_bytes > 1);
    }

    #[test]
    fn lowering_priority_works_or_reports() {
        // Raising nice is allowed for an unprivileged process, but a sandbox may forbid it:
        // then the error is reported rather than the priority checked.
        if Budget::lower_priority().is_ok() {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 1..];
            // Field 19 (nice) is the 17th after the command name.
            let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
            assert!(nice >= NICE, "{nice}");
        }
    }

    #[test]
    fn wait_is_what_brings_the_average_within_budget() {
        // 1 s of CPU at 2 %: 50 s in all, 10 s already passed.
        assert_eq!(
            pace_wait(Duration::from_secs(10), 1.0, 0.02),
            Duration::from_secs(40)
        );
        assert_eq!(
            pace_wait(Duration::from_secs(60), 1.0, 0.02),
            Duration::ZERO
        );
        assert_eq!(pace_wait(Duration::ZERO, 0.0, 0.02), Duration::ZERO);
        assert_eq!(pace_wait(Duration::ZERO, -3.0, 0.02), Duration::ZERO);
        assert_eq!(pace_wait(Duration::ZERO, f64::NAN, 0.02), Duration::ZERO);
        assert_eq!(pace_wait(Duration::ZERO, 1e9, 0.02), MAX_PACE_WAIT);
    }

    static FAKE_CPU_MS: AtomicU64 = AtomicU64::new(0);
    fn fake_cpu() -> f64 {
        FAKE_CPU_MS.load(Ordering::SeqCst) as f64 / 1000.0
    }

    static IDLE_CPU_MS: AtomicU64 = AtomicU64::new(5_000);
    fn idle_cpu() -> f64 {
        IDLE_CPU_MS.load(Ordering::SeqCst) as f64 / 1000.0
    }

    #[tokio::test]
    async fn pace_delays_after_a_burst_and_not_when_idle() {
        let b = Budget::with_clock(20.0, u64::MAX, fake_cpu);
        // 300 ms of CPU at a 20 % budget needs 1.5 s of wall time.
        FAKE_CPU_MS.fetch_add(300, Ordering::SeqCst);
        let t = Instant::now();
        b.pace().await;
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(1200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // Nothing used since: no wait.
        let t = Instant::now();
        b.pace().await;
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn pace_does_not_delay_when_idle() {
        let b = Budget::with_clock(2.0, u64::MAX, idle_cpu);
        let t = Instant::now();
        for _ in 0..5 {
            b.pace().await;
        }
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn pace_delays_after_a_real_busy_loop() {
        // The process clock: other tests running in parallel can only add CPU, so the
        // lower bound holds; the upper bound is generous for the same reason.
        // 0.2 s of CPU at 10 % needs 2 s of wall time: even if this thread only got a
        // share of a core for the loop, well over 150 ms remain to be waited.
        let b = Budget::new(10.0, u64::MAX);
        b.pace().await;
        let start_cpu = Budget::cpu_seconds();
        let t = Instant::now();
        let mut x = 0u64;
        while Budget::cpu_seconds() - start_cpu < 0.2 && t.elapsed() < Duration::from_secs(5) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let t = Instant::now();
        b.pace().await;
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(60),
            "{waited:?}"
        );
    }

    #[test]
    fn stat_and_status_parsers() {
        let stat = "1234 (cmdb (agent) x) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 30 10 4 0 99 12345 678 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks(""), None);
        let status = "Name:\tcmdb-agent\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\n";
        assert_eq!(parse_status_rss(status), Some(5120 * 1024));
        assert_eq!(parse_status_rss("VmRSS: 12\n"), None);
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_stat_cpu_ticks(&s);
            let _ = parse_status_rss(&s);
        }

        #[test]
        fn stat_ticks_are_found_after_any_comm(comm in "[ -~]{0,16}", u in 0u32..1_000_000, s in 0u32..1_000_000) {
            let stat = format!("42 ({comm}) R 1 42 42 0 -1 0 0 0 0 0 {u} {s} 0 0 20 0 1 0 5 0 0");
            prop_assert_eq!(parse_stat_cpu_ticks(&stat), Some(u64::from(u) + u64::from(s)));
        }

        #[test]
        fn waits_are_bounded(elapsed_ms in 0u64..10_000_000, cpu in -10.0f64..1e7, pct in 0.001f64..100.0) {
            let w = pace_wait(Duration::from_millis(elapsed_ms), cpu, pct / 100.0);
            prop_assert!(w <= MAX_PACE_WAIT);
        }
    }
}
