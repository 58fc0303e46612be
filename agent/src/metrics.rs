//! Host metrics: a [`Sampler`] takes one sample every `intervals.metrics_sample` (15 s), a
//! [`Window`] collects them and summarises each series (min/avg/max/p95, sample count) into
//! the `Metrics` event sent once per `intervals.metrics_window` (60 s).
//!
//! Series (names and labels as in events.proto): `cpu.percent` (all cores, 0..100, from
//! /proc/stat deltas), `load.1m` (/proc/loadavg), `memory.used_bytes` (MemTotal −
//! MemAvailable), `swap.used_bytes` (SwapTotal − SwapFree), `filesystem.used_bytes{mount}`
//! (statvfs of the filesystems `discover::filesystem` reports, minus network and FUSE
//! filesystems, whose statvfs can hang on a dead server every 15 s),
//! `interface.{rx,tx}_{bytes,errors}{interface}` (per-second rates from /proc/net/dev deltas;
//! loopback left out) and `process.count`. Rates and cpu need a previous sample, so the first
//! sample has none; a counter that went backwards (an interface re-created, a clock step)
//! yields no rate for that sample rather than a huge or negative one.
//!
//! Cheap by design, since it runs forever: /proc files are read with small caps, mountinfo
//! is re-parsed only when its text changes, and a [`Window`] keeps its buffers across
//! windows ([`Window::reset`]). Everything is bounded: at most [`MAX_INTERFACES`] interfaces
//! and [`MAX_FILESYSTEMS`] filesystems per sample, [`MAX_SERIES`] series and a per-series
//! sample cap per window. A missing or malformed source leaves its series out of the sample
//! (logged once); it never fails the sample. Never writes anything.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cmdb_proto::v1::{MetricSummary, Metrics};

use crate::discover::filesystem::{Sizes, mountinfo::parse_mountinfo, read_mountinfo};
use crate::discover::{filesystem, memory, process};
use crate::hostroot::HostRoot;

pub const CPU_PERCENT: &str = "cpu.percent";
pub const LOAD_1M: &str = "load.1m";
pub const MEMORY_USED: &str = "memory.used_bytes";
pub const SWAP_USED: &str = "swap.used_bytes";
pub const FILESYSTEM_USED: &str = "filesystem.used_bytes";
pub const RX_BYTES: &str = "interface.rx_bytes";
pub const TX_BYTES: &str = "interface.tx_bytes";
pub const RX_ERRORS: &str = "interface.rx_errors";
pub const TX_ERRORS: &str = "interface.tx_errors";
pub const PROCESS_COUNT: &str = "process.count";

/// Interfaces sampled at most (a container host can have hundreds of veths).
pub const MAX_INTERFACES: usize = 64;
/// Filesystems sampled at most.
pub const MAX_FILESYSTEMS: usize = 64;
/// Series one window keeps at most; samples of further series are dropped (and counted).
pub const MAX_SERIES: usize = 256;
/// Hard cap on samples per series per window, whatever the window and interval.
pub const MAX_SAMPLES_PER_SERIES: usize = 1024;

// === samples ===

/// One value of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The series name ([`CPU_PERCENT`], …).
    pub name: &'static str,
    /// The label (`("mount", "/")`, `("interface", "eth0")`), for per-object series.
    pub label: Option<(&'static str, String)>,
    pub value: f64,
}

/// One sample: every series that could be read at `at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at: SystemTime,
    pub points: Vec<Point>,
}

impl Sample {
    /// The value of a series (tests and logs).
    pub fn get(&self, name: &str, label: Option<&str>) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.name == name && p.label.as_ref().map(|(_, v)| v.as_str()) == label)
            .map(|p| p.value)
    }
}

/// The aggregate "cpu" line of /proc/stat, in USER_HZ ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

/// One line of /proc/net/dev.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Sources, for logging a failure once rather than every 15 s.
#[derive(Clone, Copy)]
enum Source {
    Stat = 1,
    Loadavg = 2,
    Meminfo = 4,
    Mountinfo = 8,
    NetDev = 16,
    Proc = 32,
}

/// A filesystem to ask statvfs for.
#[derive(Clone, Debug)]
struct Mount {
    point: String,
    /// Where to ask; `None` when the answer would not be the host's (a fixture tree).
    statvfs_at: Option<PathBuf>,
}

/// Takes samples; keeps the previous counters for rates.
pub struct Sampler {
    root: HostRoot,
    prev_cpu: Option<CpuTimes>,
    prev_net: Option<(SystemTime, Vec<NetCounters>)>,
    mountinfo_text: String,
    mounts: Vec<Mount>,
    warned: u8,
}

impl Sampler {
    pub fn new(root: HostRoot) -> Self {
        Sampler {
            root,
            prev_cpu: None,
            prev_net: None,
            mountinfo_text: String::new(),
            mounts: Vec::new(),
            warned: 0,
        }
    }

    /// One sample of every series (see the module doc). The first has no cpu or rates.
    pub fn sample(&mut self, now: SystemTime) -> Sample {
        let mut points = Vec::with_capacity(8 + 4 * MAX_INTERFACES.min(8));
        self.sample_cpu(&mut points);
        self.sample_load(&mut points);
        self.sample_memory(&mut points);
        self.sample_filesystems(&mut points);
        self.sample_interfaces(now, &mut points);
        self.sample_processes(&mut points);
        Sample { at: now, points }
    }

    fn failed(&mut self, source: Source, what: &str) {
        let bit = source as u8;
        if self.warned & bit == 0 {
            self.warned |= bit;
            tracing::warn!(
                problem = what,
                "A metrics source cannot be read; its series are left out (logged once)."
            );
        }
    }

    fn sample_cpu(&mut self, points: &mut Vec<Point>) {
        let cur = match read_prefix(&self.root, "/proc/stat", 4096) {
            Ok(text) => parse_stat_cpu(&text),
            Err(e) => {
                self.failed(Source::Stat, &e);
                return;
            }
        };
        let Some(cur) = cur else {
            self.failed(Source::Stat, "/proc/stat: no aggregate cpu line");
            return;
        };
        if let Some(pct) = self.prev_cpu.and_then(|prev| cpu_percent(prev, cur)) {
            points.push(point(CPU_PERCENT, pct));
        }
        self.prev_cpu = Some(cur);
    }

    fn sample_load(&mut self, points: &mut Vec<Point>) {
        match self.root.read_to_string_capped("/proc/loadavg", 4096) {
            Ok(text) => match parse_loadavg(&text) {
                Some(l) => points.push(point(LOAD_1M, l)),
                None => self.failed(Source::Loadavg, "/proc/loadavg: malformed"),
            },
            Err(e) => self.failed(Source::Loadavg, &e.to_string()),
        }
    }

    fn sample_memory(&mut self, points: &mut Vec<Point>) {
        let text = match self.root.read_to_string_capped("/proc/meminfo", 64 * 1024) {
            Ok(t) => t,
            Err(e) => return self.failed(Source::Meminfo, &e.to_string()),
        };
        let (used, swap) = memory_used(&text);
        match used {
            Some(u) => points.push(point(MEMORY_USED, u as f64)),
            None => self.failed(Source::Meminfo, "/proc/meminfo: no MemTotal"),
        }
        if let Some(s) = swap {
            points.push(point(SWAP_USED, s as f64));
        }
    }

    fn sample_filesystems(&mut self, points: &mut Vec<Point>) {
        let text = match read_mountinfo(&self.root) {
            Ok(m) => m.text,
            Err(e) => return self.failed(Source::Mountinfo, &e.to_string()),
        };
        if text != self.mountinfo_text {
            self.mounts = sampled_mounts(&self.root, &text);
            self.mountinfo_text = text;
        }
        for m in &self.mounts {
            let Some(at) = &m.statvfs_at else { continue };
            if let Ok(v) = rustix::fs::statvfs(at)
                && let Some(used) = Sizes::from_statvfs(&v).used_bytes
            {
                points.push(labelled(FILESYSTEM_USED, "mount", &m.point, used as f64));
            }
        }
    }

    fn sample_interfaces(&mut self, now: SystemTime, points: &mut Vec<Point>) {
        let text = match read_proc_net_dev(&self.root) {
            Ok(t) => t,
            Err(e) => return self.failed(Source::NetDev, &e),
        };
        let cur = parse_net_dev(&text);
        if let Some((then, prev)) = &self.prev_net
            && let Some(secs) = now
                .duration_since(*then)
                .ok()
                .map(|d| d.as_secs_f64())
                .filter(|s| *s > 0.0)
        {
            for c in &cur {
                let Some(p) = prev.iter().find(|p| p.name == c.name) else {
                    continue;
                };
                let rates = [
                    (RX_BYTES, c.rx_bytes.checked_sub(p.rx_bytes)),
                    (TX_BYTES, c.tx_bytes.checked_sub(p.tx_bytes)),
                    (RX_ERRORS, c.rx_errors.checked_sub(p.rx_errors)),
                    (TX_ERRORS, c.tx_errors.checked_sub(p.tx_errors)),
                ];
                // A counter that went backwards: the interface was re-created; skip it once.
                if rates.iter().any(|(_, d)| d.is_none()) {
                    continue;
                }
                for (name, delta) in rates {
                    let rate = delta.unwrap_or(0) as f64 / secs;
                    points.push(labelled(name, "interface", &c.name, rate));
                }
            }
        }
        self.prev_net = Some((now, cur));
    }

    fn sample_processes(&mut self, points: &mut Vec<Point>) {
        match process::list_pids(&self.root, 0) {
            Ok((_, total)) => points.push(point(PROCESS_COUNT, total as f64)),
            Err(e) => self.failed(Source::Proc, &e.to_string()),
        }
    }
}

fn point(name: &'static str, value: f64) -> Point {
    Point {
        name,
        label: None,
        value,
    }
}

fn labelled(name: &'static str, key: &'static str, value_of: &str, value: f64) -> Point {
    Point {
        name,
        label: Some((key, value_of.to_owned())),
        value,
    }
}

/// The first `cap` bytes of a host file (the aggregate line of /proc/stat comes first; the
/// per-cpu lines after it are not needed).
fn read_prefix(root: &HostRoot, host_path: &str, cap: u64) -> Result<String, String> {
    let path = root.path(host_path);
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::with_capacity(cap as usize);
    file.take(cap)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// /proc/1/net/dev under a host root (the host's network namespace), else /proc/net/dev —
/// the same choice `discover::network` makes, through the same function.
fn read_proc_net_dev(root: &HostRoot) -> Result<String, String> {
    crate::discover::network::read_proc_net(root, "dev")
        .map(|(_, text)| text)
        .map_err(|e| e.to_string())
}

/// The filesystems `discover::filesystem` would report, minus remote ones, with where to
/// ask statvfs.
fn sampled_mounts(root: &HostRoot, mountinfo: &str) -> Vec<Mount> {
    let (entries, _) = parse_mountinfo(mountinfo);
    let is_file = |mp: &str| std::fs::symlink_metadata(root.path(mp)).is_ok_and(|m| !m.is_dir());
    filesystem::visible_filesystems(&entries, is_file)
        .into_iter()
        .filter(|m| !filesystem::is_remote(&m.fstype))
        .take(MAX_FILESYSTEMS)
        .map(|m| Mount {
            point: m.mount_point.clone(),
            statvfs_at: filesystem::statvfs_path(root, &m.mount_point, m.major, m.minor),
        })
        .collect()
}

// === parsers ===

/// The aggregate `cpu` line of /proc/stat: `cpu user nice system idle iowait irq softirq
/// steal guest guest_nice` (older kernels stop after idle; guest time is already in user).
pub fn parse_stat_cpu(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let mut v = [0u64; 8];
    let mut n = 0;
    for (slot, field) in v.iter_mut().zip(line.split_ascii_whitespace().skip(1)) {
        *slot = field.parse().ok()?;
        n += 1;
    }
    if n < 4 {
        return None;
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
    let busy = [user, nice, system, irq, softirq, steal]
        .iter()
        .try_fold(0u64, |a, b| a.checked_add(*b))?;
    let total = busy.checked_add(idle)?.checked_add(iowait)?;
    Some(CpuTimes { busy, total })
}

/// Percent busy (0..=100) between two /proc/stat readings; `None` when no time passed or a
/// counter went backwards.
pub fn cpu_percent(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let busy = cur.busy.checked_sub(prev.busy)?;
    if total == 0 {
        return None;
    }
    Some((busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
}

/// The 1-minute load average, the first field of /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    let v: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// (memory used, swap used) in bytes from /proc/meminfo, parsed by `discover::memory`.
/// Used memory is MemTotal − MemAvailable (kernels before 3.14 lack MemAvailable: then
/// MemFree + Buffers + Cached stand in for it).
pub fn memory_used(meminfo: &str) -> (Option<u64>, Option<u64>) {
    let (v, _) = memory::parse_meminfo(meminfo);
    let get = |k: &str| v.get(k).copied();
    let available = get("MemAvailable").or_else(|| {
        get("MemFree")?
            .checked_add(get("Buffers").unwrap_or(0))?
            .checked_add(get("Cached").unwrap_or(0))
    });
    let used = get("MemTotal").map(|t| t.saturating_sub(available.unwrap_or(0)));
    let swap = get("SwapTotal").map(|t| t.saturating_sub(get("SwapFree").unwrap_or(0)));
    (used, swap)
}

/// /proc/net/dev: two header lines, then `name: rx_bytes rx_packets rx_errs rx_drop rx_fifo
/// rx_frame rx_compressed rx_multicast tx_bytes tx_packets tx_errs …`. Loopback and
/// malformed lines are left out; at most [`MAX_INTERFACES`] are kept.
pub fn parse_net_dev(text: &str) -> Vec<NetCounters> {
    let mut out = Vec::new();
    for line in text.lines() {
        if out.len() >= MAX_INTERFACES {
            break;
        }
        // Header lines have "|" and no ":" before it; names may be long enough to touch
        // the counters ("veth1234567890:123"), so split on the first ':' only.
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name == "lo" || name.contains(['|', ' ']) {
            continue;
        }
        let mut f = [0u64; 11];
        let mut n = 0;
        let mut ok = true;
        for (slot, field) in f.iter_mut().zip(rest.split_ascii_whitespace()) {
            match field.parse() {
                Ok(v) => *slot = v,
                Err(_) => ok = false,
            }
            n += 1;
        }
        if !ok || n < 11 {
            continue;
        }
        out.push(NetCounters {
            name: name.to_owned(),
            rx_bytes: f[0],
            rx_errors: f[2],
            tx_bytes: f[8],
            tx_errors: f[10],
        });
    }
    out
}

// === windows ===

/// The samples of one series in the current window.
#[derive(Debug)]
struct Series {
    name: &'static str,
    label: Option<(&'static str, String)>,
    values: Vec<f64>,
}

/// The samples of one summary window, bounded (see the module doc).
#[derive(Debug)]
pub struct Window {
    start: SystemTime,
    window: Duration,
    per_series_cap: usize,
    series: Vec<Series>,
    dropped: u64,
}

impl Window {
    /// A window of `window` from `window_start`, sized for samples at least 1 s apart.
    pub fn new(window_start: SystemTime, window: Duration) -> Self {
        Self::with_sample_interval(window_start, window, Duration::from_secs(1))
    }

    /// A window sized for samples every `sample` (at most twice the expected count per
    /// series, at most [`MAX_SAMPLES_PER_SERIES`]).
    pub fn with_sample_interval(
        window_start: SystemTime,
        window: Duration,
        sample: Duration,
    ) -> Self {
        let expected = if sample.is_zero() {
            MAX_SAMPLES_PER_SERIES as u128
        } else {
            window.as_millis() / sample.as_millis().max(1)
        };
        let cap = usize::try_from(expected.saturating_mul(2))
            .unwrap_or(MAX_SAMPLES_PER_SERIES)
            .clamp(2, MAX_SAMPLES_PER_SERIES);
        Window {
            start: window_start,
            window,
            per_series_cap: cap,
            series: Vec::new(),
            dropped: 0,
        }
    }

    pub fn window_start(&self) -> SystemTime {
        self.start
    }

    /// When this window ends (the next one starts).
    pub fn window_end(&self) -> SystemTime {
        self.start.checked_add(self.window).unwrap_or(self.start)
    }

    /// Values dropped for exceeding a bound (series or per-series cap) in this window.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// True when no sample was pushed since the start or last reset.
    pub fn is_empty(&self) -> bool {
        self.series.iter().all(|s| s.values.is_empty())
    }

    /// Starts the next window, keeping buffers (series that stay silent for a whole window
    /// are forgotten).
    pub fn reset(&mut self, window_start: SystemTime) {
        self.start = window_start;
        self.dropped = 0;
        self.series.retain(|s| !s.values.is_empty());
        for s in &mut self.series {
            s.values.clear();
        }
    }

    /// Adds a sample's points. Non-finite values are ignored.
    pub fn push(&mut self, s: &Sample) {
        for p in &s.points {
            if !p.value.is_finite() {
                continue;
            }
            let found = self
                .series
                .iter_mut()
                .position(|x| x.name == p.name && x.label == p.label);
            let idx = match found {
                Some(i) => i,
                None if self.series.len() < MAX_SERIES => {
                    self.series.push(Series {
                        name: p.name,
                        label: p.label.clone(),
                        values: Vec::new(),
                    });
                    self.series.len() - 1
                }
                None => {
                    self.dropped += 1;
                    continue;
                }
            };
            if let Some(series) = self.series.get_mut(idx) {
                if series.values.len() < self.per_series_cap {
                    series.values.push(p.value);
                } else {
                    self.dropped += 1;
                }
            }
        }
    }

    /// min/avg/max/p95 (nearest rank) and the sample count per series, in first-seen order.
    pub fn summarise(&self) -> Metrics {
        let mut scratch = Vec::new();
        let summaries = self
            .series
            .iter()
            .filter(|s| !s.values.is_empty())
            .map(|s| summary(s, &mut scratch))
            .collect();
        Metrics {
            window_start: Some(cmdb_proto::convert::timestamp_from_system(self.start)),
            window_seconds: u32::try_from(self.window.as_secs()).unwrap_or(u32::MAX),
            summaries,
        }
    }
}

fn summary(s: &Series, scratch: &mut Vec<f64>) -> MetricSummary {
    scratch.clear();
    scratch.extend_from_slice(&s.values);
    scratch.sort_unstable_by(f64::total_cmp);
    let n = scratch.len();
    let sum: f64 = scratch.iter().sum();
    let first = scratch.first().copied().unwrap_or(0.0);
    let last = scratch.last().copied().unwrap_or(0.0);
    MetricSummary {
        name: s.name.to_owned(),
        labels: s
            .label
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        min: first,
        avg: if n == 0 { 0.0 } else { sum / n as f64 },
        max: last,
        p95: nearest_rank(scratch, 95),
        samples: u32::try_from(n).unwrap_or(u32::MAX),
    }
}

/// The `pct`-th percentile of sorted values by nearest rank: the value at rank
/// ⌈pct/100 · n⌉ (1-based). 0 for no values.
pub fn nearest_rank(sorted: &[f64], pct: usize) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let rank = (pct.min(100) * n).div_ceil(100).clamp(1, n);
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;

    /// Resident memory over many samples of the live host, a window summarised every 4
    /// (the agent's loop, faster): flat (2 000 → 20 000 samples: +0 KiB when written).
    /// Ignored: it reads the live host and its own RSS;
    /// `cargo test --release -p cmdb-agent --lib sample_rss -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement"]
    fn sample_rss() {
        let mut sampler = Sampler::new(HostRoot::default());
        let mut window = Window::new(SystemTime::now(), Duration::from_secs(60));
        let grown = crate::rss_probe::grown_over(20_000, 2_000, "samples", |i| {
            window.push(&sampler.sample(SystemTime::now()));
            if i % 4 == 0 {
                let summary = window.summarise();
                assert!(!summary.summaries.is_empty());
                window = Window::new(SystemTime::now(), Duration::from_secs(60));
            }
        });
        assert!(
            grown < 128,
            "anonymous memory grew {grown} KiB over 18 000 samples"
        );
    }

    const STAT_A: &str =
        "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\n";
    const STAT_B: &str =
        "cpu  160 0 70 880 70 10 10 0 0 0\ncpu0 80 0 35 440 35 5 5 0 0 0\nintr 1 2 3\n";

    const NET_HEAD: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn net(eth0: (u64, u64, u64, u64)) -> String {
        let (rb, re, tb, te) = eth0;
        format!(
            "{NET_HEAD}    lo:  999 9 0 0 0 0 0 0  999 9 0 0 0 0 0 0\n  eth0: {rb} 10 {re} 0 0 0 0 0 {tb} 20 {te} 0 0 0 0 0\n"
        )
    }

    #[test]
    fn stat_cpu_line_is_parsed() {
        let c = parse_stat_cpu(STAT_A).unwrap();
        assert_eq!(
            c,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        // Old kernels: only four fields.
        assert_eq!(
            parse_stat_cpu("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, total: 10 })
        );
        assert_eq!(parse_stat_cpu("cpu 1 2 3\n"), None);
        assert_eq!(parse_stat_cpu("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_stat_cpu("cpu 1 x 3 4\n"), None);
        assert_eq!(parse_stat_cpu(""), None);
    }

    #[test]
    fn cpu_percent_is_busy_over_total() {
        let a = parse_stat_cpu(STAT_A).unwrap();
        let b = parse_stat_cpu(STAT_B).unwrap();
        // busy +100 (60 user, 20 system, 10 irq, 10 softirq), total +200.
        assert_eq!(cpu_percent(a, b), Some(50.0));
        assert_eq!(cpu_percent(a, a), None);
        assert_eq!(cpu_percent(b, a), None);
    }

    #[test]
    fn loadavg_is_parsed() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 2/1144 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("x 1 2"), None);
        assert_eq!(parse_loadavg("-1 0 0"), None);
        assert_eq!(parse_loadavg("NaN 0 0"), None);
    }

    #[test]
    fn meminfo_gives_used_memory_and_swap() {
        let m = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\nBuffers: 50 kB\nCached: 100 kB\nSwapTotal: 200 kB\nSwapFree: 150 kB\n";
        assert_eq!(memory_used(m), (Some(600 * 1024), Some(50 * 1024)));
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 100 kB\n";
        assert_eq!(memory_used(old), (Some(750 * 1024), None));
        assert_eq!(memory_used("garbage"), (None, None));
    }

    #[test]
    fn net_dev_is_parsed_without_loopback() {
        let v = parse_net_dev(&net((1000, 1, 2000, 2)));
        assert_eq!(
            v,
            vec![NetCounters {
                name: "eth0".into(),
                rx_bytes: 1000,
                rx_errors: 1,
                tx_bytes: 2000,
                tx_errors: 2
            }]
        );
        // A long name runs into the first counter.
        let v = parse_net_dev("veth0123456789a:12 1 0 0 0 0 0 0 34 1 0 0 0 0 0 0\n");
        assert_eq!(v[0].name, "veth0123456789a");
        assert_eq!((v[0].rx_bytes, v[0].tx_bytes), (12, 34));
        assert!(parse_net_dev("eth0: 1 2 3\n").is_empty());
        assert!(parse_net_dev(NET_HEAD).is_empty());
    }

    #[test]
    fn net_dev_is_bounded() {
        let mut text = String::from(NET_HEAD);
        for i in 0..200 {
            text.push_str(&format!("veth{i}: 1 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n"));
        }
        assert_eq!(parse_net_dev(&text).len(), MAX_INTERFACES);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 95), 19.0);
        assert_eq!(nearest_rank(&v, 100), 20.0);
        assert_eq!(nearest_rank(&v[..4], 95), 4.0);
        assert_eq!(nearest_rank(&[7.0], 95), 7.0);
        assert_eq!(nearest_rank(&[], 95), 0.0);
        assert_eq!(nearest_rank(&v, 0), 1.0);
    }

    fn write(root: &std::path::Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn snapshot(
        root: &std::path::Path,
        stat: &str,
        load: &str,
        avail_kb: u64,
        eth0: (u64, u64, u64, u64),
    ) {
        write(root, "proc/stat", stat);
        write(
            root,
            "proc/loadavg",
            &format!("{load} 0.50 0.40 1/100 999\n"),
        );
        write(
            root,
            "proc/meminfo",
            &format!(
                "MemTotal: 4000 kB\nMemFree: 100 kB\nMemAvailable: {avail_kb} kB\nSwapTotal: 1000 kB\nSwapFree: 900 kB\n"
            ),
        );
        write(root, "proc/net/dev", &net(eth0));
    }

    #[test]
    fn two_snapshots_give_exact_rates_and_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for pid in ["1", "42", "4242"] {
            fs::create_dir_all(root.join("proc").join(pid)).unwrap();
        }
        fs::create_dir_all(root.join("proc/self")).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut sampler = Sampler::new(HostRoot::new(root));
        let mut window =
            Window::with_sample_interval(t0, Duration::from_secs(60), Duration::from_secs(15));

        snapshot(root, STAT_A, "1.00", 3000, (10_000, 5, 20_000, 0));
        let s1 = sampler.sample(t0);
        assert_eq!(
            s1.get(CPU_PERCENT, None),
            None,
            "no cpu without a previous sample"
        );
        assert_eq!(s1.get(RX_BYTES, Some("eth0")), None, "no rates either");
        assert_eq!(s1.get(LOAD_1M, None), Some(1.0));
        assert_eq!(s1.get(MEMORY_USED, None), Some(1000.0 * 1024.0));
        assert_eq!(s1.get(SWAP_USED, None), Some(100.0 * 1024.0));
        assert_eq!(s1.get(PROCESS_COUNT, None), Some(3.0));
        // Not a mounted filesystem (and no mountinfo): no filesystem series.
        assert!(s1.points.iter().all(|p| p.name != FILESYSTEM_USED));
        window.push(&s1);

        // 15 s later: eth0 received 15 000 bytes and 3 errors, sent 30 000 bytes.
        snapshot(root, STAT_B, "3.00", 2000, (25_000, 8, 50_000, 0));
        fs::create_dir_all(root.join("proc/5000")).unwrap();
        let s2 = sampler.sample(t0 + Duration::from_secs(15));
        assert_eq!(s2.get(CPU_PERCENT, None), Some(50.0));
        assert_eq!(s2.get(RX_BYTES, Some("eth0")), Some(1000.0));
        assert_eq!(s2.get(TX_BYTES, Some("eth0")), Some(2000.0));
        assert_eq!(s2.get(RX_ERRORS, Some("eth0")), Some(0.2));
        assert_eq!(s2.get(TX_ERRORS, Some("eth0")), Some(0.0));
        assert_eq!(s2.get(RX_BYTES, Some("lo")), None);
        assert_eq!(s2.get(PROCESS_COUNT, None), Some(4.0));
        window.push(&s2);

        // An interface re-created (counters back to small numbers): no rate this time.
        snapshot(root, STAT_B, "2.00", 2500, (10, 0, 10, 0));
        let s3 = sampler.sample(t0 + Duration::from_secs(30));
        assert_eq!(s3.get(RX_BYTES, Some("eth0")), None);
        assert_eq!(s3.get(CPU_PERCENT, None), None, "no cpu time passed");
        window.push(&s3);

        let m = window.summarise();
        assert_eq!(m.window_seconds, 60);
        assert_eq!(m.window_start.unwrap().seconds, 1_700_000_000);
        let find = |name: &str| {
            m.summaries
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let load = find(LOAD_1M);
        assert_eq!(
            (load.min, load.avg, load.max, load.p95, load.samples),
            (1.0, 2.0, 3.0, 3.0, 3)
        );
        let mem = find(MEMORY_USED);
        assert_eq!(mem.min, 1000.0 * 1024.0);
        assert_eq!(mem.max, 2000.0 * 1024.0);
        assert_eq!(mem.avg, 1500.0 * 1024.0);
        let cpu = find(CPU_PERCENT);
        assert_eq!((cpu.min, cpu.max, cpu.samples), (50.0, 50.0, 1));
        let rx = find(RX_BYTES);
        assert_eq!(rx.labels.get("interface").map(String::as_str), Some("eth0"));
        assert_eq!((rx.avg, rx.samples), (1000.0, 1));
        let procs = find(PROCESS_COUNT);
        assert_eq!((procs.min, procs.max, procs.samples), (3.0, 4.0, 3));
        assert!(find(SWAP_USED).labels.is_empty());
    }

    #[test]
    fn a_missing_host_gives_an_empty_sample_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sampler::new(HostRoot::new(dir.path().join("nothing")));
        let a = s.sample(SystemTime::now());
        assert!(a.points.is_empty());
        let b = s.sample(SystemTime::now());
        assert!(b.points.is_empty());
    }

    #[test]
    fn the_live_host_has_every_series_after_two_samples() {
        let mut s = Sampler::new(HostRoot::default());
        let t = SystemTime::now();
        let _ = s.sample(t);
        std::thread::sleep(Duration::from_millis(50));
        let b = s.sample(t + Duration::from_secs(1));
        for name in [CPU_PERCENT, LOAD_1M, MEMORY_USED, PROCESS_COUNT] {
            assert!(b.get(name, None).is_some(), "{name}: {b:?}");
        }
        assert!(
            b.points.iter().any(|p| p.name == FILESYSTEM_USED),
            "no filesystem: {b:?}"
        );
    }

    #[test]
    fn windows_are_bounded_and_reusable() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut w =
            Window::with_sample_interval(t0, Duration::from_secs(60), Duration::from_secs(15));
        // (60 / 15) * 2 = 8 samples per series.
        for i in 0..20 {
            w.push(&Sample {
                at: t0,
                points: vec![point(LOAD_1M, f64::from(i))],
            });
        }
        let m = w.summarise();
        assert_eq!(m.summaries[0].samples, 8);
        assert_eq!(w.dropped(), 12);
        // Series beyond MAX_SERIES are dropped and counted.
        let many: Vec<Point> = (0..MAX_SERIES + 10)
            .map(|i| labelled(RX_BYTES, "interface", &format!("if{i}"), 1.0))
            .collect();
        w.reset(t0 + Duration::from_secs(60));
        assert!(w.is_empty());
        w.push(&Sample {
            at: t0,
            points: many,
        });
        let m = w.summarise();
        // The load series (kept across the reset, empty now) holds one of the slots.
        assert_eq!(m.summaries.len(), MAX_SERIES - 1);
        assert_eq!(w.dropped(), 11);
        assert_eq!(m.window_start.unwrap().seconds, 60);
        // NaN never enters a summary.
        w.reset(t0);
        w.push(&Sample {
            at: t0,
            points: vec![point(LOAD_1M, f64::NAN)],
        });
        assert!(w.summarise().summaries.is_empty());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_stat_cpu(&s);
            let _ = parse_loadavg(&s);
            let _ = memory_used(&s);
            prop_assert!(parse_net_dev(&s).len() <= MAX_INTERFACES);
        }

        #[test]
        fn stat_round_trips(v in proptest::collection::vec(0u64..1u64 << 40, 8)) {
            let line = format!("cpu  {}\n", v.iter().map(u64::to_string).collect::<Vec<_>>().join(" "));
            let c = parse_stat_cpu(&line).unwrap();
            prop_assert_eq!(c.busy, v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
            prop_assert_eq!(c.total, c.busy + v[3] + v[4]);
        }

        #[test]
        fn cpu_percent_is_in_range(a in 0u64..1 << 40, b in 0u64..1 << 40, da in 0u64..1 << 30, di in 0u64..1 << 30) {
            let prev = CpuTimes { busy: a, total: a + b };
            let cur = CpuTimes { busy: a + da, total: a + b + da + di };
            if let Some(p) = cpu_percent(prev, cur) {
                prop_assert!((0.0..=100.0).contains(&p));
            }
        }

        #[test]
        fn net_dev_round_trips(name in "[a-z][a-z0-9]{0,14}", c in proptest::collection::vec(0u64..u64::MAX, 16)) {
            prop_assume!(name != "lo");
            let line = format!("{name}: {}\n", c.iter().map(u64::to_string).collect::<Vec<_>>().join(" "));
            let v = parse_net_dev(&format!("{NET_HEAD}{line}"));
            prop_assert_eq!(v.len(), 1);
            prop_assert_eq!(&v[0].name, &name);
            prop_assert_eq!((v[0].rx_bytes, v[0].rx_errors, v[0].tx_bytes, v[0].tx_errors), (c[0], c[2], c[8], c[10]));
        }

        #[test]
        fn summaries_match_a_naive_model(values in proptest::collection::vec(-1e9f64..1e9, 1..100)) {
            let t0 = SystemTime::UNIX_EPOCH;
            let mut w = Window::with_sample_interval(t0, Duration::from_secs(1000), Duration::from_secs(1));
            for v in &values {
                w.push(&Sample { at: t0, points: vec![point(LOAD_1M, *v)] });
            }
            let m = w.summarise();
            let s = &m.summaries[0];
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            prop_assert_eq!(s.samples as usize, values.len());
            prop_assert_eq!(s.min, sorted[0]);
            prop_assert_eq!(s.max, *sorted.last().unwrap());
            prop_assert!(s.min <= s.avg + 1e-6 && s.avg <= s.max + 1e-6);
            // Nearest rank: at least 95 % of the values are <= p95, and p95 is one of them.
            let at_or_below = values.iter().filter(|v| **v <= s.p95).count();
            prop_assert!(at_or_below * 100 >= 95 * values.len());
            prop_assert!(values.contains(&s.p95));
            let below = values.iter().filter(|v| **v < s.p95).count();
            prop_assert!(below * 100 < 95 * values.len());
        }
    }
}
