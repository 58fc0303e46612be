//! The collector's own metrics, in an explicit prometheus-client [`Registry`].
//!
//! Owns every metric the collector exports on `/metrics`; ingest, enrollment and the store
//! report through the methods of [`Telemetry`], never by touching the registry.
//!
//! Promises:
//! - Label cardinality is bounded: event kinds come from a fixed list, and the `reason` and
//!   `result` labels admit at most [`MAX_LABEL_VALUES`] distinct well-formed values each;
//!   anything else is counted under `other`. A bug or a hostile peer cannot grow the registry.
//! - Recording never blocks on I/O and never panics.
//! - Rates (events/s by kind, CI versions/s) are NOT computed here: Prometheus derives them
//!   from the counters, e.g. `rate(cmdb_events_total[1m])`.
//!
//! Two encodings of the same metrics: [`Telemetry::encode`] gives the classic Prometheus text
//! format (`text/plain; version=0.0.4`), [`Telemetry::encode_openmetrics`] gives OpenMetrics
//! 1.0 text (what prometheus-client writes natively), for scrapers that ask for it.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Event kinds counted by `cmdb_events_total{kind}`; others count as `other`.
pub const EVENT_KINDS: &[&str] = &[
    "snapshot",
    "delta",
    "metrics",
    "heartbeat",
    "shutdown",
    "gap",
];
/// Distinct values admitted per free-form label (`reason`, `result`).
pub const MAX_LABEL_VALUES: usize = 32;
/// Longest admitted free-form label value, in bytes.
pub const MAX_LABEL_LEN: usize = 48;
/// Upper bounds (seconds) of the ack latency histogram buckets: 1 ms .. 10 s.
pub const ACK_LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Label value for anything not admitted.
const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// The collector's metrics. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Telemetry {
    registry: Registry,
    agents_connected: Gauge,
    events: Family<KindLabel, Counter>,
    ci_versions: Counter,
    judged_versions: Counter,
    ack_latency: Histogram,
    refused: Family<ReasonLabel, Counter>,
    enrollments: Family<ResultLabel, Counter>,
    store_size: Gauge,
    notify_sent: Counter,
    notify_failed_attempts: Counter,
    notify_dead: Counter,
    notify_pending: Gauge,
    refused_values: AdmittedValues,
    enrollment_values: AdmittedValues,
}

// === impl Telemetry ===

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let agents_connected = Gauge::default();
        registry.register(
            "cmdb_agents_connected",
            "Agent streams currently connected",
            agents_connected.clone(),
        );
        let events = Family::<KindLabel, Counter>::default();
        registry.register(
            "cmdb_events",
            "Agent events applied, by kind (use rate() for events/s)",
            events.clone(),
        );
        // Every known kind exists from the start, so rate() has a zero to start from.
        for kind in EVENT_KINDS {
            let _ = events.get_or_create(&KindLabel {
                kind: (*kind).to_owned(),
            });
        }
        let ci_versions = Counter::default();
        registry.register(
            "cmdb_ci_versions",
            "CI versions written to the store",
            ci_versions.clone(),
        );
        let judged_versions = Counter::default();
        registry.register(
            "cmdb_judged_versions",
            "CI versions the judgment engine has judged (cmdb_ci_versions_total minus this is \
             its backlog)",
            judged_versions.clone(),
        );
        let ack_latency = Histogram::new(ACK_LATENCY_BUCKETS);
        registry.register_with_unit(
            "cmdb_ack_latency",
            "Time from receiving a batch to acknowledging it (durable in the store)",
            Unit::Seconds,
            ack_latency.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "cmdb_streams_refused",
            "Agent streams or messages refused, by reason",
            refused.clone(),
        );
        let enrollments = Family::<ResultLabel, Counter>::default();
        registry.register(
            "cmdb_enrollments",
            "Enrollment attempts, by result",
            enrollments.clone(),
        );
        let store_size = Gauge::default();
        registry.register_with_unit(
            "cmdb_store_size",
            "Size of the CMDB store on disk",
            Unit::Bytes,
            store_size.clone(),
        );
        let notify_sent = Counter::default();
        registry.register(
            "cmdb_notify_sent",
            "Incident notifications delivered (a 2xx answer from the sink)",
            notify_sent.clone(),
        );
        let notify_failed_attempts = Counter::default();
        registry.register(
            "cmdb_notify_failed_attempts",
            "Incident notification attempts that failed (error, timeout or non-2xx); retried",
            notify_failed_attempts.clone(),
        );
        let notify_dead = Counter::default();
        registry.register(
            "cmdb_notify_dead",
            "Incident notifications given up on and moved to the dead letters",
            notify_dead.clone(),
        );
        let notify_pending = Gauge::default();
        registry.register(
            "cmdb_notify_pending",
            "Incident notifications waiting in the outbox",
            notify_pending.clone(),
        );
        Self {
            registry,
            agents_connected,
            events,
            ci_versions,
            judged_versions,
            ack_latency,
            refused,
            enrollments,
            store_size,
            notify_sent,
            notify_failed_attempts,
            notify_dead,
            notify_pending,
            refused_values: AdmittedValues::default(),
            enrollment_values: AdmittedValues::default(),
        }
    }

    /// An agent stream was established (after authentication).
    pub fn agent_connected(&self) {
        self.agents_connected.inc();
    }

    /// An agent stream ended, for whatever reason.
    pub fn agent_disconnected(&self) {
        self.agents_connected.dec();
    }

    /// `n` events of `kind` were applied; unknown kinds count as `other`.
    pub fn events(&self, kind: &str, n: u64) {
        let kind = EVENT_KINDS
            .iter()
            .find(|k| **k == kind)
            .copied()
            .unwrap_or(OTHER);
        self.events
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    /// `n` CI versions were written.
    pub fn ci_versions(&self, n: u64) {
        self.ci_versions.inc_by(n);
    }

    /// The judgment engine judged `n` more CI versions.
    pub fn judged_versions(&self, n: u64) {
        self.judged_versions.inc_by(n);
    }

    /// One ack went out `seconds` after its batch arrived. Negative or NaN values are ignored.
    pub fn ack_latency(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.ack_latency.observe(seconds);
        }
    }

    /// A stream or message was refused; `reason` is a short snake_case word.
    pub fn refused(&self, reason: &str) {
        let reason = self.refused_values.admit(reason);
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// An enrollment attempt ended with `result` (a short snake_case word, e.g. `ok`).
    pub fn enrollment(&self, result: &str) {
        let result = self.enrollment_values.admit(result);
        self.enrollments
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// An incident notification was delivered.
    pub fn notify_sent(&self) {
        self.notify_sent.inc();
    }

    /// An incident notification attempt failed (it will be retried or dead-lettered).
    pub fn notify_attempt_failed(&self) {
        self.notify_failed_attempts.inc();
    }

    /// An incident notification was moved to the dead letters.
    pub fn notify_dead(&self) {
        self.notify_dead.inc();
    }

    /// `n` incident notifications are waiting in the outbox.
    pub fn notify_pending(&self, n: u64) {
        self.notify_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The store size last given to an `encode*` call (0 before the first).
    pub fn store_size_bytes(&self) -> u64 {
        u64::try_from(self.store_size.get()).unwrap_or(0)
    }

    /// Classic Prometheus text exposition (`text/plain; version=0.0.4`), after setting
    /// `cmdb_store_size_bytes` to `store_size_bytes`.
    pub fn encode(&self, store_size_bytes: u64) -> String {
        to_prometheus_text(&self.encode_openmetrics(store_size_bytes))
    }

    /// OpenMetrics 1.0 text exposition, after setting `cmdb_store_size_bytes`.
    pub fn encode_openmetrics(&self, store_size_bytes: u64) -> String {
        self.store_size
            .set(i64::try_from(store_size_bytes).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be a library bug, and an
        // empty scrape is the harmless answer to it.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("Encoding the metrics registry failed.");
            out.clear();
        }
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Rewrites OpenMetrics text into the classic format: counters' `# HELP`/`# TYPE` lines name
/// the `_total` series (as client_golang writes them), `# UNIT` and `# EOF` are dropped.
/// Sample lines are identical in both formats.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The set of values admitted for one free-form label.
#[derive(Default)]
struct AdmittedValues {
    seen: Mutex<HashSet<String>>,
}

// === impl AdmittedValues ===

impl AdmittedValues {
    /// `value` if it is well formed and either known or there is room; `other` otherwise.
    fn admit(&self, value: &str) -> String {
        let well_formed = !value.is_empty()
            && value.len() <= MAX_LABEL_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return OTHER.to_owned();
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is still valid.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < MAX_LABEL_VALUES {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exposition_names_every_metric() {
        let t = Telemetry::new();
        t.agent_connected();
        t.agent_connected();
        t.agent_disconnected();
        t.events("delta", 5);
        t.events("bogus", 1);
        t.ci_versions(7);
        t.judged_versions(6);
        t.ack_latency(0.003);
        t.refused("bad_identity");
        t.enrollment("ok");
        t.notify_sent();
        t.notify_attempt_failed();
        t.notify_attempt_failed();
        t.notify_dead();
        t.notify_pending(3);
        let text = t.encode(4096);
        for needle in [
            "# TYPE cmdb_agents_connected gauge",
            "cmdb_agents_connected 1",
            "# TYPE cmdb_events_total counter",
            "cmdb_events_total{kind=\"delta\"} 5",
            "cmdb_events_total{kind=\"snapshot\"} 0",
            "cmdb_events_total{kind=\"other\"} 1",
            "cmdb_ci_versions_total 7",
            "cmdb_judged_versions_total 6",
            "# TYPE cmdb_ack_latency_seconds histogram",
            "cmdb_ack_latency_seconds_bucket{le=\"0.005\"} 1",
            "cmdb_ack_latency_seconds_count 1",
            "cmdb_streams_refused_total{reason=\"bad_identity\"} 1",
            "cmdb_enrollments_total{result=\"ok\"} 1",
            "cmdb_store_size_bytes 4096",
            "cmdb_notify_sent_total 1",
            "cmdb_notify_failed_attempts_total 2",
            "cmdb_notify_dead_total 1",
            "# TYPE cmdb_notify_pending gauge",
            "cmdb_notify_pending 3",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        assert_eq!(t.store_size_bytes(), 4096);
    }

    #[test]
    fn openmetrics_keeps_its_own_conventions() {
        let t = Telemetry::new();
        let text = t.encode_openmetrics(1);
        assert!(text.contains("# TYPE cmdb_events counter"));
        assert!(text.contains("# UNIT cmdb_store_size_bytes bytes"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn free_form_labels_are_bounded() {
        let t = Telemetry::new();
        for i in 0..(MAX_LABEL_VALUES + 10) {
            t.refused(&format!("reason_{i}"));
        }
        t.refused("Has Spaces\n");
        t.refused(&"x".repeat(MAX_LABEL_LEN + 1));
        let text = t.encode(0);
        let series = text
            .lines()
            .filter(|l| l.starts_with("cmdb_streams_refused_total{"))
            .count();
        assert_eq!(series, MAX_LABEL_VALUES + 1, "{text}");
        assert!(text.contains("cmdb_streams_refused_total{reason=\"other\"} 12"));
        // An admitted value keeps counting under its own name.
        t.refused("reason_0");
        assert!(
            t.encode(0)
                .contains("cmdb_streams_refused_total{reason=\"reason_0\"} 2")
        );
    }

    #[test]
    fn odd_latencies_are_ignored() {
        let t = Telemetry::new();
        t.ack_latency(f64::NAN);
        t.ack_latency(-1.0);
        t.ack_latency(f64::INFINITY);
        assert!(t.encode(0).contains("cmdb_ack_latency_seconds_count 0"));
    }

    proptest! {
        #[test]
        fn any_label_value_encodes_cleanly(reason in ".{0,80}", result in "[a-z_]{0,60}") {
            let t = Telemetry::new();
            t.refused(&reason);
            t.enrollment(&result);
            let text = t.encode(u64::MAX);
            // Every sample line is `name{labels} value` or `name value`, one per line.
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                prop_assert!(line.starts_with("cmdb_"), "{}", line);
                prop_assert!(line.rsplit_once(' ').is_some(), "{}", line);
            }
        }
    }
}
