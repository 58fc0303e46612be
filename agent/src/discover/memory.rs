//! The `memory` CI: installed memory as the kernel sees it (/proc/meminfo) — total, swap
//! and huge pages. Only configuration, never usage: used/free/cached change every second
//! and belong to metrics, not to a CI whose changes are drift.
//!
//! A missing MemTotal is `null` with status `partial`; an unreadable /proc/meminfo is
//! `error`. It reads one file and runs nothing.

use std::collections::HashMap;

use cmdb_proto::model::{Item, class};

use super::{Collector, Context, Outcome};

pub struct MemoryCollector;

impl Collector for MemoryCollector {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::MEMORY]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let text = match ctx.root.read_to_string_capped("/proc/meminfo", 1024 * 1024) {
            Ok(t) => t,
            Err(e) => return Outcome::error(format!("cannot read memory information: {e}")),
        };
        let mut outcome = Outcome::new();
        let (values, warnings) = parse_meminfo(&text);
        for w in warnings {
            outcome.warn(format!("/proc/meminfo {w}"));
        }
        let total = values.get("MemTotal").copied();
        if total.is_none() {
            outcome.warn("/proc/meminfo: no MemTotal");
        }
        outcome.push(
            Item::new(class::MEMORY, "memory")
                .with("total_bytes", total)
                .with("swap_total_bytes", values.get("SwapTotal").copied())
                .with("hugepages_total", values.get("HugePages_Total").copied())
                .with("hugepage_size_bytes", values.get("Hugepagesize").copied()),
        );
        outcome
    }
}

/// Parses /proc/meminfo (`Key:   value [kB]`) into values — in bytes for kB fields, as
/// counts for unitless ones (HugePages_*) — and warnings "line N: reason".
pub fn parse_meminfo(text: &str) -> (HashMap<&str, u64>, Vec<String>) {
    let mut values = HashMap::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(key, rest)| {
            let mut parts = rest.split_whitespace();
            let number: u64 = parts.next()?.parse().ok()?;
            let value = match (parts.next(), parts.next()) {
                (None, None) => Some(number),
                (Some("kB"), None) => number.checked_mul(1024),
                _ => None,
            }?;
            Some((key.trim(), value))
        });
        match parsed {
            Some((key, value)) if !key.is_empty() => {
                values.insert(key, value);
            }
            _ => warnings.push(format!("line {}: malformed entry", n + 1)),
        }
    }
    (values, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_in_bytes_or_counts() {
        let text = "MemTotal:       131470628 kB\nMemFree:         1000 kB\nSwapTotal:       4194300 kB\n\
HugePages_Total:       0\nHugepagesize:       2048 kB\n";
        let (v, w) = parse_meminfo(text);
        assert!(w.is_empty());
        assert_eq!(v["MemTotal"], 131_470_628 * 1024);
        assert_eq!(v["HugePages_Total"], 0);
        assert_eq!(v["Hugepagesize"], 2048 * 1024);
    }

    #[test]
    fn malformed_lines_are_skipped_with_a_warning() {
        let (v, w) = parse_meminfo("MemTotal: 10 kB\nBogus\nSwapTotal: x kB\nA: 1 MB\n: 5\n");
        assert_eq!(v.len(), 1);
        assert_eq!(w.len(), 4, "{w:?}");
        assert_eq!(w[0], "line 2: malformed entry");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let (v, w) = parse_meminfo(&text);
            prop_assert!(v.len() + w.len() <= text.lines().count());
        }

        #[test]
        fn kb_values_round_trip(n in 0u64..(u64::MAX / 1024)) {
            let text = format!("MemTotal:   {n} kB\n");
            let (v, _) = parse_meminfo(&text);
            prop_assert_eq!(v["MemTotal"], n * 1024);
        }
    }
}
