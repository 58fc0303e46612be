//! Capacity resources and roll-up points: which metric series become which resource id,
//! in which unit, and how summaries combine into coarser points. Pure, no I/O.
//!
//! Resource ids (the API's `resource`): `cpu`, `load`, `memory`, `swap`,
//! `filesystem:<mount>`, `interface:<name>:rx` / `interface:<name>:tx`, `processes`.
//! Interface error rates are not capacity series and are left out.
//!
//! Combining summaries (1-minute windows into an hour, hours into a day): `min` is the
//! minimum, `max` the maximum, `avg` the sample-weighted mean (each part weighs its sample
//! count, at least 1), and `p95` the 95th percentile (nearest rank) of the parts' p95s —
//! an approximation, since percentiles do not compose exactly; it never exceeds `max`.

use serde::{Deserialize, Serialize};

use crate::store::MetricSummary;

/// One rolled-up point of one series. Stored as a compact JSON array
/// `[t, min, avg, max, p95, n]` (blocks hold thousands of them).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "PointRow", from = "PointRow")]
pub struct Point {
    /// Start of the period, seconds since the epoch.
    pub t: u64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub p95: f64,
    /// Raw samples behind it.
    pub n: u64,
}

/// [`Point`]'s stored form.
type PointRow = (u64, f64, f64, f64, f64, u64);

impl From<Point> for PointRow {
    fn from(p: Point) -> Self {
        (p.t, p.min, p.avg, p.max, p.p95, p.n)
    }
}

impl From<PointRow> for Point {
    fn from((t, min, avg, max, p95, n): PointRow) -> Self {
        Point {
            t,
            min,
            avg,
            max,
            p95,
            n,
        }
    }
}

/// What kind of resource a series measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Cpu,
    Load,
    Memory,
    Swap,
    Filesystem,
    Interface,
    Processes,
}

impl Kind {
    /// The kind of a resource id.
    pub fn of(resource: &str) -> Option<Kind> {
        Some(match resource {
            "cpu" => Kind::Cpu,
            "load" => Kind::Load,
            "memory" => Kind::Memory,
            "swap" => Kind::Swap,
            "processes" => Kind::Processes,
            r if r.starts_with("filesystem:") => Kind::Filesystem,
            r if r.starts_with("interface:") => Kind::Interface,
            _ => return None,
        })
    }

    /// The unit of its values.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Cpu => "percent",
            Kind::Load => "load",
            Kind::Memory | Kind::Swap | Kind::Filesystem => "bytes",
            Kind::Interface => "bytes_per_second",
            Kind::Processes => "count",
        }
    }

    /// The statistic a forecast fits: the average for levels that only move slowly
    /// (memory, swap, filesystems), the p95 for utilisations whose peaks matter.
    pub fn fitted(self, p: &Point) -> f64 {
        match self {
            Kind::Memory | Kind::Swap | Kind::Filesystem | Kind::Processes => p.avg,
            Kind::Cpu | Kind::Load | Kind::Interface => p.p95,
        }
    }
}

/// The resource id of a metric summary, or `None` for series that are not capacity
/// series (or lack their label).
pub fn resource_of(s: &MetricSummary) -> Option<String> {
    Some(match s.name.as_str() {
        "cpu.percent" => "cpu".to_owned(),
        "load.1m" => "load".to_owned(),
        "memory.used_bytes" => "memory".to_owned(),
        "swap.used_bytes" => "swap".to_owned(),
        "process.count" => "processes".to_owned(),
        "filesystem.used_bytes" => format!("filesystem:{}", s.labels.get("mount")?),
        "interface.rx_bytes" => format!("interface:{}:rx", s.labels.get("interface")?),
        "interface.tx_bytes" => format!("interface:{}:tx", s.labels.get("interface")?),
        _ => return None,
    })
}

/// Accumulates parts into one point.
#[derive(Clone, Debug, Default)]
pub struct Acc {
    min: f64,
    max: f64,
    weighted: f64,
    weight: f64,
    n: u64,
    p95s: Vec<f64>,
}

/// Most p95 values one accumulator keeps (a day of minutes is 1 440).
const MAX_P95S: usize = 4096;

impl Acc {
    /// Adds one part (a 1-minute summary or a finer point). Non-finite parts are ignored.
    pub fn add(&mut self, min: f64, avg: f64, max: f64, p95: f64, samples: u64) {
        if ![min, avg, max, p95].iter().all(|v| v.is_finite()) {
            return;
        }
        if self.weight == 0.0 {
            self.min = min;
            self.max = max;
        } else {
            self.min = self.min.min(min);
            self.max = self.max.max(max);
        }
        let w = samples.max(1) as f64;
        self.weighted += avg * w;
        self.weight += w;
        self.n += samples;
        if self.p95s.len() < MAX_P95S {
            self.p95s.push(p95);
        }
    }

    pub fn add_point(&mut self, p: &Point) {
        self.add(p.min, p.avg, p.max, p.p95, p.n);
    }

    /// The combined point starting at `t`, or `None` when nothing was added.
    pub fn point(&mut self, t: u64) -> Option<Point> {
        if self.weight == 0.0 {
            return None;
        }
        self.p95s.sort_by(f64::total_cmp);
        let rank = ((self.p95s.len() as f64) * 0.95).ceil() as usize;
        let p95 = self.p95s[rank.clamp(1, self.p95s.len()) - 1].min(self.max);
        Some(Point {
            t,
            min: self.min,
            avg: self.weighted / self.weight,
            max: self.max,
            p95,
            n: self.n,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn summary(name: &str, label: Option<(&str, &str)>) -> MetricSummary {
        MetricSummary {
            name: name.into(),
            labels: label
                .map(|(k, v)| [(k.to_owned(), v.to_owned())].into_iter().collect())
                .unwrap_or_default(),
            min: 0.0,
            avg: 0.0,
            max: 0.0,
            p95: 0.0,
            samples: 4,
        }
    }

    #[test]
    fn series_map_to_resource_ids() {
        assert_eq!(resource_of(&summary("cpu.percent", None)).unwrap(), "cpu");
        assert_eq!(
            resource_of(&summary("filesystem.used_bytes", Some(("mount", "/var")))).unwrap(),
            "filesystem:/var"
        );
        assert_eq!(
            resource_of(&summary("interface.tx_bytes", Some(("interface", "eth0")))).unwrap(),
            "interface:eth0:tx"
        );
        assert!(resource_of(&summary("filesystem.used_bytes", None)).is_none());
        assert!(resource_of(&summary("interface.rx_errors", Some(("interface", "e")))).is_none());
        assert_eq!(Kind::of("filesystem:/"), Some(Kind::Filesystem));
        assert_eq!(Kind::of("bogus"), None);
    }

    #[test]
    fn parts_combine_with_weighted_average() {
        let mut a = Acc::default();
        a.add(1.0, 2.0, 3.0, 3.0, 1);
        a.add(0.5, 5.0, 9.0, 8.0, 3);
        a.add(f64::NAN, 1.0, 1.0, 1.0, 1);
        let p = a.point(3600).unwrap();
        assert_eq!(p.t, 3600);
        assert_eq!(p.min, 0.5);
        assert_eq!(p.max, 9.0);
        assert!((p.avg - (2.0 + 15.0) / 4.0).abs() < 1e-12);
        assert_eq!(p.p95, 8.0);
        assert_eq!(p.n, 4);
        assert!(Acc::default().point(0).is_none());
    }
}
