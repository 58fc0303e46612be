//! Availability: outages of hosts (from heartbeats) and of monitored services (from the
//! agents' `monitor` CIs), planned downtime, and the figures operations report on.
//!
//! A host is down when no heartbeat arrived for `missed_heartbeats` intervals; the outage
//! starts at the last heartbeat and ends at the first one after it. A graceful shutdown
//! inside an approved change's window with `outage_expected` is planned downtime (no
//! incident). A monitor's outage runs from the observation of `down` to that of `up`.
//!
//! Figures per CI over a period (DESIGN.md): agreed time = the period minus planned
//! downtime; availability % = (agreed − unplanned downtime) / agreed; MTRS = unplanned
//! downtime / outages; MTBF = (agreed − unplanned downtime) / outages (null without
//! outages).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// What an outage is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageSubject {
    Host,
    Monitor,
}

/// One outage (open while `end` is `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// `OUT` + 10 digits.
    pub id: String,
    pub subject: OutageSubject,
    pub ci_id: String,
    pub host_id: String,
    #[serde(default)]
    pub hostname: Option<String>,
    /// The monitor's name, or the hostname.
    pub name: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub start: SystemTime,
    #[serde(default, with = "crate::store::opt_time")]
    pub end: Option<SystemTime>,
    pub planned: bool,
    /// The change record that planned it.
    #[serde(default)]
    pub change_id: Option<String>,
    /// Why it started: "missed heartbeats", "graceful shutdown", "ActiveState=failed"…
    pub cause: String,
    #[serde(default)]
    pub incident: Option<String>,
}

/// Availability figures of one CI over a period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityFigures {
    pub ci_id: String,
    pub host_id: String,
    pub name: String,
    pub subject: OutageSubject,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub from: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub to: SystemTime,
    pub agreed_seconds: u64,
    pub planned_downtime_seconds: u64,
    pub unplanned_downtime_seconds: u64,
    pub availability_percent: f64,
    pub outages: u64,
    pub planned_outages: u64,
    /// Mean time between failures (uptime per outage), seconds; null without outages.
    pub mtbf_seconds: Option<f64>,
    /// Mean time to restore service, seconds; null without outages.
    pub mtrs_seconds: Option<f64>,
    /// The outages overlapping the period.
    pub outage_list: Vec<Outage>,
}

fn overlap(o: &Outage, from: SystemTime, to: SystemTime, now: SystemTime) -> Duration {
    let end = o.end.unwrap_or(now).min(to);
    let start = o.start.max(from);
    end.duration_since(start).unwrap_or_default()
}

/// The figures of one CI from its outages (all of them, any order).
// The arguments are the figures' identity and period, each named at the call site.
#[allow(clippy::too_many_arguments)]
pub fn figures(
    ci_id: &str,
    host_id: &str,
    name: &str,
    subject: OutageSubject,
    outages: &[Outage],
    from: SystemTime,
    to: SystemTime,
    now: SystemTime,
) -> AvailabilityFigures {
    let period = to.duration_since(from).unwrap_or_default();
    let mut planned = Duration::ZERO;
    let mut unplanned = Duration::ZERO;
    let (mut n_unplanned, mut n_planned) = (0u64, 0u64);
    let mut list = Vec::new();
    for o in outages.iter().filter(|o| o.ci_id == ci_id) {
        let d = overlap(o, from, to, now);
        let starts_inside = o.start >= from && o.start < to;
        if d.is_zero() && !starts_inside {
            continue;
        }
        if o.planned {
            planned += d;
            n_planned += u64::from(starts_inside);
        } else {
            unplanned += d;
            n_unplanned += u64::from(starts_inside);
        }
        list.push(o.clone());
    }
    list.sort_by_key(|o| o.start);
    let agreed = period.saturating_sub(planned);
    let up = agreed.saturating_sub(unplanned);
    let availability = if agreed.is_zero() {
        100.0
    } else {
        100.0 * up.as_secs_f64() / agreed.as_secs_f64()
    };
    let per = |d: Duration| (n_unplanned > 0).then(|| d.as_secs_f64() / n_unplanned as f64);
    AvailabilityFigures {
        ci_id: ci_id.to_owned(),
        host_id: host_id.to_owned(),
        name: name.to_owned(),
        subject,
        from,
        to,
        agreed_seconds: agreed.as_secs(),
        planned_downtime_seconds: planned.as_secs(),
        unplanned_downtime_seconds: unplanned.as_secs(),
        availability_percent: (availability * 1000.0).round() / 1000.0,
        outages: n_unplanned,
        planned_outages: n_planned,
        mtbf_seconds: per(up),
        mtrs_seconds: per(unplanned),
        outage_list: list,
    }
}

/// Availability settings (collector.toml `[availability]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilitySettings {
    /// A host is down after this many missed heartbeat intervals. Default 3.
    #[serde(default = "default_missed")]
    pub missed_heartbeats: u32,
    /// Service monitors pushed to the agents whose host matches `selector`.
    #[serde(default)]
    pub monitors: Vec<MonitorConfig>,
}

impl Default for AvailabilitySettings {
    fn default() -> Self {
        AvailabilitySettings {
            missed_heartbeats: default_missed(),
            monitors: Vec::new(),
        }
    }
}

fn default_missed() -> u32 {
    3
}

/// A service monitor, evaluated on the agents of the hosts `selector` matches.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub name: String,
    /// Hosts it applies to (its host term; other terms are ignored).
    pub selector: Selector,
    /// `systemd_unit`, `process` or `tcp_port`.
    pub kind: String,
    pub target: String,
}

impl MonitorConfig {
    /// Checks one monitor definition; the message names the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 128 || self.name.chars().any(char::is_control)
        {
            return Err(format!(
                "monitor name {:?}: 1 to 128 printable bytes",
                self.name
            ));
        }
        match self.kind.as_str() {
            "systemd_unit" | "process" => {
                if self.target.is_empty() || self.target.len() > 256 {
                    return Err(format!(
                        "monitor {}: target must be 1 to 256 bytes",
                        self.name
                    ));
                }
            }
            "tcp_port" => {
                if !self.target.parse::<u16>().is_ok_and(|p| p > 0) {
                    return Err(format!(
                        "monitor {}: tcp_port target must be a port number 1-65535, not {:?}",
                        self.name, self.target
                    ));
                }
            }
            other => {
                return Err(format!(
                    "monitor {}: kind {other:?} is not systemd_unit, process or tcp_port",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn outage(start: u64, end: Option<u64>, planned: bool) -> Outage {
        Outage {
            id: format!("OUT{start}"),
            subject: OutageSubject::Host,
            ci_id: "ci-h".into(),
            host_id: "host-1".into(),
            hostname: None,
            name: "web-1".into(),
            start: t(start),
            end: end.map(t),
            planned,
            change_id: None,
            cause: "missed heartbeats".into(),
            incident: None,
        }
    }

    #[test]
    fn figures_follow_the_definitions() {
        // A 1000 s period: 100 s planned, two unplanned outages of 50 s and 100 s (the
        // second still open at `now`, clipped to the period).
        let os = vec![
            outage(100, Some(150), false),
            outage(200, Some(300), true),
            outage(900, None, false),
        ];
        let f = figures(
            "ci-h",
            "host-1",
            "web-1",
            OutageSubject::Host,
            &os,
            t(0),
            t(1000),
            t(2000),
        );
        assert_eq!(f.agreed_seconds, 900);
        assert_eq!(f.planned_downtime_seconds, 100);
        assert_eq!(f.unplanned_downtime_seconds, 150);
        assert_eq!(f.outages, 2);
        assert_eq!(f.planned_outages, 1);
        assert!(
            (f.availability_percent - 83.333).abs() < 0.001,
            "{}",
            f.availability_percent
        );
        assert_eq!(f.mtrs_seconds, Some(75.0));
        assert_eq!(f.mtbf_seconds, Some(375.0));
        let none = figures(
            "ci-x",
            "h",
            "x",
            OutageSubject::Host,
            &os,
            t(0),
            t(1000),
            t(2000),
        );
        assert_eq!(none.availability_percent, 100.0);
        assert_eq!(none.mtbf_seconds, None);
    }

    #[test]
    fn monitor_definitions_are_checked() {
        let m = |kind: &str, target: &str| MonitorConfig {
            name: "web".into(),
            selector: "host=web-*".parse().unwrap(),
            kind: kind.into(),
            target: target.into(),
        };
        assert!(m("tcp_port", "443").validate().is_ok());
        assert!(m("tcp_port", "0").validate().is_err());
        assert!(m("tcp_port", "http").validate().is_err());
        assert!(m("ping", "x").validate().is_err());
        assert!(m("process", "").validate().is_err());
    }
}
