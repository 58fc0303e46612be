//! The fleet view: every enrolled agent with its version, last contact, up/down, outbox
//! backlog, collector statuses and failures, and a summary by status and version.
//!
//! An agent is **up** when its stream is connected, it is not revoked, and it was seen
//! (a heartbeat, a batch or its stream opening) within `missed_heartbeats × heartbeat`
//! (`[availability] missed_heartbeats`, default 3, × `[agents] heartbeat`, default 30 s:
//! 90 s) — the same rule availability uses to call a host down, so a stream the collector
//! has not yet noticed is dead does not keep an agent up. Everything else is down. The
//! hostname is the host CI's `hostname` attribute (the agent's reported one when the host
//! CI has none).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cmdb_proto::model::{AttrValue, CollectorState};
use serde::Serialize;

use crate::store::{AgentRecord, Store, StoreError, host_ci_id};

/// Most agents listed in one answer (the summary counts them all).
pub const MAX_FLEET_ITEMS: usize = 20_000;

/// One collector's status from the agent's last inventory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CollectorStatus {
    pub name: String,
    pub status: CollectorState,
    pub message: Option<String>,
}

/// One agent in the fleet view.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetItem {
    pub agent_id: String,
    pub host_id: Option<String>,
    pub hostname: Option<String>,
    pub version: String,
    #[serde(with = "crate::store::opt_time")]
    pub last_seen: Option<SystemTime>,
    pub up: bool,
    /// The stream is open (as the collector last knew it).
    pub connected: bool,
    pub outbox_events: u64,
    pub outbox_bytes: u64,
    pub collectors: Vec<CollectorStatus>,
    /// Collectors whose last status was a failure: not `ok`, and not `unsupported` (the
    /// source does not exist on this host, e.g. rpm on Debian: nothing to fix).
    pub failures: u64,
    pub revoked: bool,
    /// Gap events received (the agent's outbox had to drop something).
    pub gaps: u64,
    pub dropped_metrics: u64,
    pub dropped_inventory_changes: u64,
}

/// Counts over the whole fleet (before filters).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FleetSummary {
    pub agents: u64,
    pub up: u64,
    pub down: u64,
    /// Agents per version.
    pub versions: BTreeMap<String, u64>,
}

/// The fleet view.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetView {
    pub summary: FleetSummary,
    pub items: Vec<FleetItem>,
    /// More agents matched than [`MAX_FLEET_ITEMS`].
    pub truncated: bool,
}

/// Filters of the fleet view.
#[derive(Clone, Debug, Default)]
pub struct FleetFilter {
    /// `Some(true)` up only, `Some(false)` down only.
    pub up: Option<bool>,
    pub version: Option<String>,
}

/// Whether `agent` is up at `now` given the window (missed heartbeats × interval).
pub fn is_up(agent: &AgentRecord, now: SystemTime, window: Duration) -> bool {
    agent.connected
        && !agent.revoked
        && agent
            .last_seen
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() <= window)
}

/// The fleet view of `agents` (pure: `hostname_of` resolves host CI hostnames).
pub fn view(
    agents: Vec<AgentRecord>,
    mut hostname_of: impl FnMut(&str) -> Option<String>,
    filter: &FleetFilter,
    now: SystemTime,
    window: Duration,
) -> FleetView {
    let mut summary = FleetSummary::default();
    let mut items = Vec::new();
    let mut truncated = false;
    let mut agents = agents;
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    for a in agents {
        let up = is_up(&a, now, window);
        summary.agents += 1;
        if up {
            summary.up += 1;
        } else {
            summary.down += 1;
        }
        *summary.versions.entry(a.version.clone()).or_default() += 1;
        if filter.up.is_some_and(|want| want != up)
            || filter.version.as_ref().is_some_and(|v| *v != a.version)
        {
            continue;
        }
        if items.len() >= MAX_FLEET_ITEMS {
            truncated = true;
            continue;
        }
        let hostname = a
            .host_id
            .as_deref()
            .and_then(&mut hostname_of)
            .or(a.hostname.clone());
        let collectors: Vec<CollectorStatus> = a
            .collectors
            .iter()
            .map(|c| CollectorStatus {
                name: c.name.clone(),
                status: c.status,
                message: c.message.clone(),
            })
            .collect();
        let failures = collectors.iter().filter(|c| is_failure(c.status)).count() as u64;
        items.push(FleetItem {
            agent_id: a.agent_id,
            host_id: a.host_id,
            hostname,
            version: a.version,
            last_seen: a.last_seen,
            up,
            connected: a.connected,
            outbox_events: a.outbox_events,
            outbox_bytes: a.outbox_bytes,
            collectors,
            failures,
            revoked: a.revoked,
            gaps: a.gaps,
            dropped_metrics: a.dropped_metrics,
            dropped_inventory_changes: a.dropped_inventory_changes,
        });
    }
    FleetView {
        summary,
        items,
        truncated,
    }
}

/// The fleet service: the store and the liveness window.
pub struct Fleet {
    store: Arc<dyn Store>,
    window: Duration,
}

impl Fleet {
    /// `heartbeat × missed_heartbeats` is the window within which an up agent was seen.
    pub fn new(store: Arc<dyn Store>, heartbeat: Duration, missed_heartbeats: u32) -> Self {
        Fleet {
            store,
            window: heartbeat.saturating_mul(missed_heartbeats.max(1)),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The fleet view now (blocking).
    pub fn view(&self, filter: &FleetFilter) -> Result<FleetView, StoreError> {
        let agents = self.store.agents()?;
        let store = &self.store;
        let mut failed = None;
        let v = view(
            agents,
            |host| match store.ci(&host_ci_id(host)) {
                Ok(ci) => ci.and_then(|c| match c.attrs.get("hostname") {
                    Some(AttrValue::Str(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                }),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            },
            filter,
            SystemTime::now(),
            self.window,
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(v),
        }
    }
}

/// A collector status that needs someone's attention.
pub fn is_failure(s: CollectorState) -> bool {
    !matches!(s, CollectorState::Ok | CollectorState::Unsupported)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use cmdb_proto::model::{CollectorReport, HostIdentity};

    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn agent(id: &str, version: &str, connected: bool, seen: u64) -> AgentRecord {
        let mut a = AgentRecord::new(id, "inst", version, HostIdentity::default(), t(0));
        a.connected = connected;
        a.last_seen = Some(t(seen));
        a.host_id = Some(format!("host-{id}"));
        a.hostname = Some(format!("reported-{id}"));
        a
    }

    #[test]
    fn up_needs_connected_unrevoked_and_recent() {
        let w = Duration::from_secs(90);
        assert!(is_up(&agent("a", "1", true, 1000), t(1090), w));
        assert!(!is_up(&agent("a", "1", true, 1000), t(1091), w));
        assert!(!is_up(&agent("a", "1", false, 1000), t(1000), w));
        let mut r = agent("a", "1", true, 1000);
        r.revoked = true;
        assert!(!is_up(&r, t(1000), w));
        let mut never = agent("a", "1", true, 0);
        never.last_seen = None;
        assert!(!is_up(&never, t(0), w));
    }

    #[test]
    fn view_counts_filters_and_reports_failures() {
        let mut a = agent("a", "1.0.0", true, 100);
        a.outbox_events = 7;
        a.outbox_bytes = 700;
        a.collectors = vec![
            CollectorReport {
                name: "dpkg".into(),
                status: CollectorState::Ok,
                duration_ms: 1,
                items: 3,
                message: None,
                classes: vec!["package".into()],
            },
            CollectorReport {
                name: "smbios".into(),
                status: CollectorState::PermissionDenied,
                duration_ms: 1,
                items: 0,
                message: Some("no root".into()),
                classes: vec!["system".into()],
            },
            // rpm on a Debian host: not a failure.
            CollectorReport {
                name: "rpm".into(),
                status: CollectorState::Unsupported,
                duration_ms: 0,
                items: 0,
                message: Some("no rpm database".into()),
                classes: vec!["package".into()],
            },
        ];
        let b = agent("b", "1.1.0", false, 100);
        let c = agent("c", "1.1.0", true, 0);
        let all = vec![c.clone(), b.clone(), a.clone()];
        let host = |h: &str| (h == "host-a").then(|| "web-1".to_owned());
        let v = view(
            all.clone(),
            host,
            &FleetFilter::default(),
            t(150),
            Duration::from_secs(90),
        );
        assert_eq!((v.summary.agents, v.summary.up, v.summary.down), (3, 1, 2));
        assert_eq!(v.summary.versions.get("1.1.0"), Some(&2));
        assert_eq!(v.summary.versions.get("1.0.0"), Some(&1));
        let ids: Vec<&str> = v.items.iter().map(|i| i.agent_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let ia = &v.items[0];
        assert_eq!(ia.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            (ia.outbox_events, ia.outbox_bytes, ia.failures),
            (7, 700, 1)
        );
        assert!(ia.up);
        assert_eq!(v.items[1].hostname.as_deref(), Some("reported-b"));
        let down = view(
            all.clone(),
            host,
            &FleetFilter {
                up: Some(false),
                version: None,
            },
            t(150),
            Duration::from_secs(90),
        );
        let ids: Vec<&str> = down.items.iter().map(|i| i.agent_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(down.summary.agents, 3);
        let ver = view(
            all,
            host,
            &FleetFilter {
                up: None,
                version: Some("1.0.0".into()),
            },
            t(150),
            Duration::from_secs(90),
        );
        assert_eq!(ver.items.len(), 1);
        let json = serde_json::to_value(&ver).unwrap_or_default();
        assert_eq!(
            json["items"][0]["collectors"][1]["status"],
            "permission_denied"
        );
        assert_eq!(json["summary"]["versions"]["1.1.0"], 2);
    }
}
