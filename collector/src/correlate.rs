//! Correlation: which incident an alert belongs to, so that one burst is one incident.
//!
//! An alert's dedup key is (host, class, key, kind). When one fires:
//! 1. an open incident already holding that key takes it (a repeat, or a re-fire);
//! 2. while the host is down (an open incident holds its firing `host_down` alert), its
//!    monitor alerts join that incident as suppressed: they open nothing;
//! 3. a `host_down` alert joins an open availability incident of the host;
//! 4. an open incident of the same host and category started within the grouping window
//!    takes it;
//! 5. a resolved incident that held the key and recovered within the flap window is
//!    reopened (a flip); more than `flap_threshold` flips within the window mark it
//!    flapping, and a flapping incident stays open until the key has been quiet for the
//!    window;
//! 6. otherwise a new incident opens.
//!
//! A recovery ("resolved") always reaches the alert, suppressed or not; an incident whose
//! alerts have all recovered resolves itself unless it is flapping.
//!
//! The correlator holds the incidents that are not closed (closed ones are history in the
//! store) and the recent flips per key (memory only: a restart forgets flap history).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::incidents::{
    AlertKind, AlertRecord, Category, Incident, IncidentState, MAX_ALERTS, MAX_DRIFT_IDS,
    Resolution, priority,
};
use crate::policy::Level;

/// Correlation settings.
#[derive(Clone, Copy, Debug)]
pub struct CorrelationSettings {
    /// Alerts of one host and category within this window join one incident. Default 2 min.
    pub grouping_window: Duration,
    /// More flips than this within `flap_window` make an incident flapping. Default 5.
    pub flap_threshold: usize,
    /// Default 10 min.
    pub flap_window: Duration,
}

impl Default for CorrelationSettings {
    fn default() -> Self {
        CorrelationSettings {
            grouping_window: Duration::from_secs(120),
            flap_threshold: 5,
            flap_window: Duration::from_secs(600),
        }
    }
}

/// An alert as the drift engine, availability or identity checks raise it.
#[derive(Clone, Debug)]
pub struct AlertEvent {
    pub kind: AlertKind,
    pub host_id: String,
    pub hostname: Option<String>,
    pub ci_id: String,
    pub class: String,
    pub key: String,
    pub summary: String,
    pub at: SystemTime,
    pub impact: Level,
    pub urgency: Level,
    pub drift_id: Option<String>,
}

impl AlertEvent {
    pub fn dedup(&self) -> String {
        dedup_key(&self.host_id, &self.class, &self.key, self.kind)
    }
}

/// The dedup key of (host, class, key, kind).
pub fn dedup_key(host_id: &str, class: &str, key: &str, kind: AlertKind) -> String {
    format!("{host_id}|{class}|{key}|{}", kind.as_str())
}

/// What a call did to an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Opened,
    Updated,
    Resolved,
}

/// The open and resolved (not yet closed) incidents, and flip history.
#[derive(Debug, Default)]
pub struct Correlator {
    pub settings: CorrelationSettings,
    pub incidents: BTreeMap<String, Incident>,
    /// Host id → numbers of its incidents (may name incidents since removed from
    /// `incidents`; lookups skip those): every rule is per host, so a lookup costs the
    /// host's incidents, not the fleet's.
    by_host: HashMap<String, BTreeSet<String>>,
    /// Incident number → the dedup keys of its alerts → the alert's position in `alerts`.
    /// An incident holds a key at most once (an alert is attached only when no open
    /// incident holds its key; a resolved one holding it is reopened instead), alerts are
    /// only ever appended and leave with their incident, so a position stays valid: the
    /// rules ask "does this incident hold this key" in O(1) instead of scanning up to
    /// `MAX_ALERTS` alerts per incident per event.
    keys: HashMap<String, HashMap<String, usize>>,
    flips: HashMap<String, VecDeque<SystemTime>>,
}

const ACTOR: &str = "collector";

impl Correlator {
    pub fn new(settings: CorrelationSettings, incidents: BTreeMap<String, Incident>) -> Self {
        let mut by_host: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut keys: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for i in incidents.values() {
            by_host
                .entry(i.host_id.clone())
                .or_default()
                .insert(i.number.clone());
            let held = keys.entry(i.number.clone()).or_default();
            for (at, a) in i.alerts.iter().enumerate() {
                // The first one, as the scans this index replaced found it.
                held.entry(a.dedup.clone()).or_insert(at);
            }
        }
        Correlator {
            settings,
            incidents,
            by_host,
            keys,
            flips: HashMap::new(),
        }
    }

    /// Drops closed incidents from memory (they are history in the store).
    pub fn forget_closed(&mut self) {
        self.incidents
            .retain(|_, i| i.state != IncidentState::Closed);
        let incidents = &self.incidents;
        self.by_host.retain(|_, set| {
            set.retain(|n| incidents.contains_key(n));
            !set.is_empty()
        });
        self.keys.retain(|n, _| incidents.contains_key(n));
    }

    /// Files a firing alert; `next_number` mints an incident number when one opens.
    /// Returns the incident it went to and what happened to it.
    pub fn fire(
        &mut self,
        ev: &AlertEvent,
        next_number: &mut dyn FnMut() -> String,
    ) -> (String, Effect) {
        let dedup = ev.dedup();
        // 1. An open incident holding the key.
        if let Some(number) = self.find(&ev.host_id, |i| {
            i.state.is_open() && self.alert_of(&i.number, &dedup).is_some()
        }) {
            let refire = self.refire(&number, &dedup, ev);
            if refire {
                self.note_flip(&number, &dedup, ev.at);
            }
            return (number, Effect::Updated);
        }
        // 2. Topology suppression: the host is down.
        if ev.kind == AlertKind::MonitorDown
            && let Some(number) = self.find(&ev.host_id, |i| {
                i.state.is_open()
                    && i.alerts.iter().any(|a| {
                        a.kind == AlertKind::HostDown && a.host_id == ev.host_id && a.firing
                    })
            })
        {
            self.attach(&number, ev, true);
            return (number, Effect::Updated);
        }
        // 3. Host down joins the host's open availability incident.
        if ev.kind == AlertKind::HostDown
            && let Some(number) = self.find(&ev.host_id, |i| {
                i.state.is_open() && i.host_id == ev.host_id && i.category == Category::Availability
            })
        {
            self.attach(&number, ev, false);
            if let Some(inc) = self.incidents.get_mut(&number) {
                inc.title = format!("Host {} is down", display_host(ev));
                inc.ci_id = ev.ci_id.clone();
            }
            return (number, Effect::Updated);
        }
        // 4. The grouping window.
        let category = ev.kind.category();
        let grouping = self.settings.grouping_window;
        if let Some(number) = self.find(&ev.host_id, |i| {
            i.state.is_open()
                && !i.flapping
                && i.host_id == ev.host_id
                && i.category == category
                && ev.at.duration_since(i.started_at).unwrap_or_default() <= grouping
        }) {
            self.attach(&number, ev, false);
            if let Some(inc) = self.incidents.get_mut(&number) {
                let n = inc.alerts.len() as u64 + inc.alerts_overflow;
                if category == Category::UnauthorizedChange && n > 1 {
                    inc.title = format!("Unauthorized changes on {}: {n} CIs", display_host(ev));
                    inc.ci_id = crate::store::host_ci_id(&ev.host_id);
                }
            }
            return (number, Effect::Updated);
        }
        // 5. A recently auto-resolved incident holding the key: a flip.
        let window = self.settings.flap_window;
        if let Some(number) = self.find(&ev.host_id, |i| {
            i.state == IncidentState::Resolved
                && i.resolution.as_ref().is_some_and(|r| r.code == "recovered")
                && self.alert_of(&i.number, &dedup).is_some()
                && i.resolved_at
                    .is_some_and(|r| ev.at.duration_since(r).unwrap_or_default() <= window)
        }) {
            if let Some(inc) = self.incidents.get_mut(&number) {
                inc.state = if inc.assignee.is_some() {
                    IncidentState::InProgress
                } else {
                    IncidentState::New
                };
                inc.resolved_at = None;
                inc.resolution = None;
                inc.log(
                    ev.at,
                    ACTOR,
                    "reopened",
                    format!("{} fired again", ev.summary),
                );
            }
            self.refire(&number, &dedup, ev);
            self.note_flip(&number, &dedup, ev.at);
            return (number, Effect::Updated);
        }
        // 6. A new incident.
        let number = next_number();
        let mut inc = Incident {
            number: number.clone(),
            title: title_for(ev),
            category,
            ci_id: ev.ci_id.clone(),
            host_id: ev.host_id.clone(),
            hostname: ev.hostname.clone(),
            impact: ev.impact,
            urgency: ev.urgency,
            priority: priority(ev.impact, ev.urgency),
            state: IncidentState::New,
            started_at: ev.at,
            updated_at: ev.at,
            resolved_at: None,
            closed_at: None,
            assignee: None,
            flapping: false,
            alerts: Vec::new(),
            alerts_overflow: 0,
            timeline: Vec::new(),
            timeline_overflow: 0,
            resolution: None,
        };
        inc.log(ev.at, ACTOR, "opened", ev.summary.clone());
        self.incidents.insert(number.clone(), inc);
        self.by_host
            .entry(ev.host_id.clone())
            .or_default()
            .insert(number.clone());
        self.attach(&number, ev, false);
        (number, Effect::Opened)
    }

    /// Files a recovery of the alert with `dedup`. Returns the incidents it touched (the
    /// recovery reaches every incident holding the firing key).
    pub fn recover(&mut self, dedup: &str, at: SystemTime, why: &str) -> Vec<(String, Effect)> {
        let host = dedup.split('|').next().unwrap_or_default();
        let Some(numbers) = self.by_host.get(host) else {
            return Vec::new();
        };
        let numbers: Vec<String> = numbers
            .iter()
            .filter_map(|n| self.incidents.get(n))
            .filter(|i| i.state != IncidentState::Closed)
            .filter(|i| {
                self.alert_of(&i.number, dedup)
                    .and_then(|at| i.alerts.get(at))
                    .is_some_and(|a| a.firing)
            })
            .map(|i| i.number.clone())
            .collect();
        let mut out = Vec::new();
        for number in numbers {
            let position = self.alert_of(&number, dedup);
            let Some(inc) = self.incidents.get_mut(&number) else {
                continue;
            };
            let mut summary = String::new();
            if let Some(a) = position.and_then(|p| inc.alerts.get_mut(p)) {
                a.firing = false;
                a.last_at = at;
                summary = a.summary.clone();
            }
            inc.log(at, ACTOR, "recovered", format!("{summary}: {why}"));
            // A host that is back makes its suppressed alerts ordinary again: if they are
            // still firing, they are real.
            if dedup.ends_with("|host_down") {
                for a in inc.alerts.iter_mut().filter(|a| a.suppressed && a.firing) {
                    a.suppressed = false;
                }
            }
            if inc.state.is_open() && inc.all_recovered() && !inc.flapping {
                resolve_recovered(inc, at);
                out.push((number, Effect::Resolved));
            } else {
                out.push((number, Effect::Updated));
            }
        }
        out
    }

    /// Periodic work: flapping incidents quiet for a whole window resolve. Returns the
    /// incidents resolved.
    pub fn tick(&mut self, now: SystemTime) -> Vec<String> {
        let window = self.settings.flap_window;
        let mut resolved = Vec::new();
        for inc in self.incidents.values_mut() {
            if inc.flapping && inc.state.is_open() && inc.all_recovered() {
                let last = inc.alerts.iter().map(|a| a.last_at).max().unwrap_or(now);
                if now.duration_since(last).unwrap_or_default() >= window {
                    inc.flapping = false;
                    inc.log(now, ACTOR, "stable", "no flips for a whole flap window");
                    resolve_recovered(inc, now);
                    resolved.push(inc.number.clone());
                }
            }
        }
        self.flips.retain(|_, v| {
            v.back()
                .is_some_and(|t| now.duration_since(*t).unwrap_or_default() < window)
        });
        resolved
    }

    /// Whether the host has a firing `host_down` alert.
    pub fn host_down(&self, host_id: &str) -> bool {
        self.find(host_id, |i| {
            i.state != IncidentState::Closed
                && i.alerts
                    .iter()
                    .any(|a| a.kind == AlertKind::HostDown && a.host_id == host_id && a.firing)
        })
        .is_some()
    }

    /// The newest incident of `host` satisfying `pred` (numbers grow).
    fn find(&self, host: &str, pred: impl Fn(&Incident) -> bool) -> Option<String> {
        self.by_host
            .get(host)?
            .iter()
            .rev()
            .filter_map(|n| self.incidents.get(n))
            .find(|i| pred(i))
            .map(|i| i.number.clone())
    }

    /// The position of the alert with `dedup` in incident `number`'s alerts, if it holds one.
    fn alert_of(&self, number: &str, dedup: &str) -> Option<usize> {
        self.keys.get(number)?.get(dedup).copied()
    }

    /// Marks an existing alert as firing again; returns whether it had recovered.
    fn refire(&mut self, number: &str, dedup: &str, ev: &AlertEvent) -> bool {
        let position = self.alert_of(number, dedup);
        let Some(inc) = self.incidents.get_mut(number) else {
            return false;
        };
        let mut was_recovered = false;
        if let Some(a) = position.and_then(|p| inc.alerts.get_mut(p)) {
            was_recovered |= !a.firing;
            a.firing = true;
            a.count += 1;
            a.last_at = ev.at;
            a.summary = ev.summary.clone();
            if let Some(d) = &ev.drift_id {
                if a.drift_ids.len() < MAX_DRIFT_IDS {
                    a.drift_ids.push(d.clone());
                } else {
                    a.drift_ids_overflow += 1;
                }
            }
        }
        if was_recovered {
            inc.log(ev.at, ACTOR, "fired", ev.summary.clone());
        }
        inc.set_criticality(ev.impact, ev.urgency);
        inc.updated_at = inc.updated_at.max(ev.at);
        was_recovered
    }

    fn note_flip(&mut self, number: &str, dedup: &str, at: SystemTime) {
        let window = self.settings.flap_window;
        let flips = self.flips.entry(dedup.to_owned()).or_default();
        flips.push_back(at);
        while flips
            .front()
            .is_some_and(|t| at.duration_since(*t).unwrap_or_default() > window)
        {
            flips.pop_front();
        }
        if flips.len() > self.settings.flap_threshold
            && let Some(inc) = self.incidents.get_mut(number)
            && !inc.flapping
        {
            inc.flapping = true;
            let n = flips.len();
            inc.log(
                at,
                ACTOR,
                "flapping",
                format!("{dedup} flipped {n} times within {}s", window.as_secs()),
            );
        }
    }

    fn attach(&mut self, number: &str, ev: &AlertEvent, suppressed: bool) {
        let Some(inc) = self.incidents.get_mut(number) else {
            return;
        };
        let dedup = ev.dedup();
        if inc.alerts.len() >= MAX_ALERTS {
            inc.alerts_overflow += 1;
        } else {
            self.keys
                .entry(number.to_owned())
                .or_default()
                .entry(dedup.clone())
                .or_insert(inc.alerts.len());
            inc.alerts.push(AlertRecord {
                dedup,
                kind: ev.kind,
                host_id: ev.host_id.clone(),
                ci_id: ev.ci_id.clone(),
                class: ev.class.clone(),
                key: ev.key.clone(),
                summary: ev.summary.clone(),
                first_at: ev.at,
                last_at: ev.at,
                firing: true,
                suppressed,
                count: 1,
                drift_ids: ev.drift_id.iter().cloned().collect(),
                drift_ids_overflow: 0,
            });
        }
        if inc.alerts.len() > 1 {
            let event = if suppressed { "suppressed" } else { "grouped" };
            inc.log(ev.at, ACTOR, event, ev.summary.clone());
        }
        inc.set_criticality(ev.impact, ev.urgency);
    }
}

fn resolve_recovered(inc: &mut Incident, at: SystemTime) {
    inc.state = IncidentState::Resolved;
    inc.resolved_at = Some(at);
    inc.resolution = Some(Resolution {
        code: "recovered".into(),
        note: "every alert recovered".into(),
        change_id: None,
    });
    inc.log(at, ACTOR, "resolved", "every alert recovered");
}

fn display_host(ev: &AlertEvent) -> &str {
    ev.hostname.as_deref().unwrap_or(&ev.host_id)
}

fn title_for(ev: &AlertEvent) -> String {
    let host = display_host(ev);
    match ev.kind {
        AlertKind::Drift => format!("Unauthorized change on {host}: {} {}", ev.class, ev.key),
        AlertKind::HostDown => format!("Host {host} is down"),
        AlertKind::MonitorDown => format!("Service monitor {} down on {host}", ev.key),
        AlertKind::Clone => format!("Cloned host identity: {host}"),
        AlertKind::Denied => format!("Denied software on {host}: {}", ev.key),
        AlertKind::Capacity => format!("Capacity exhaustion forecast on {host}: {}", ev.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn ev(kind: AlertKind, host: &str, key: &str, at: u64) -> AlertEvent {
        AlertEvent {
            kind,
            host_id: host.into(),
            hostname: Some(format!("{host}.example")),
            ci_id: format!("ci-{key}"),
            class: match kind {
                AlertKind::Drift => "file".into(),
                AlertKind::MonitorDown => "monitor".into(),
                _ => "host".into(),
            },
            key: key.into(),
            summary: format!("{} {key}", kind.as_str()),
            at: t(at),
            impact: 2,
            urgency: 2,
            drift_id: None,
        }
    }

    fn numbers() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("INC{n:07}")
        }
    }

    #[test]
    fn a_burst_on_one_host_is_one_incident() {
        let mut c = Correlator::default();
        let mut next = numbers();
        for i in 0..20 {
            c.fire(
                &ev(AlertKind::Drift, "h1", &format!("/etc/f{i}"), i),
                &mut next,
            );
        }
        assert_eq!(c.incidents.len(), 1);
        let inc = c.incidents.values().next().unwrap();
        assert_eq!(inc.alerts.len(), 20);
        assert_eq!(inc.started_at, t(0));
        assert!(inc.title.contains("20 CIs"), "{}", inc.title);
        // Another host, and the same host after the window, open their own.
        c.fire(&ev(AlertKind::Drift, "h2", "/etc/x", 30), &mut next);
        c.fire(&ev(AlertKind::Drift, "h1", "/etc/late", 500), &mut next);
        assert_eq!(c.incidents.len(), 3);
    }

    #[test]
    fn repeats_dedup_and_recovery_resolves() {
        let mut c = Correlator::default();
        let mut next = numbers();
        let (n, e) = c.fire(&ev(AlertKind::Drift, "h1", "/etc/a", 0), &mut next);
        assert_eq!(e, Effect::Opened);
        let (n2, e2) = c.fire(&ev(AlertKind::Drift, "h1", "/etc/a", 300), &mut next);
        assert_eq!((n2.as_str(), e2), (n.as_str(), Effect::Updated));
        assert_eq!(c.incidents[&n].alerts[0].count, 2);
        let out = c.recover(
            &dedup_key("h1", "file", "/etc/a", AlertKind::Drift),
            t(400),
            "reverted",
        );
        assert_eq!(out, vec![(n.clone(), Effect::Resolved)]);
        assert_eq!(c.incidents[&n].state, IncidentState::Resolved);
    }

    #[test]
    fn a_down_host_suppresses_its_monitors() {
        let mut c = Correlator::default();
        let mut next = numbers();
        let (n, _) = c.fire(&ev(AlertKind::HostDown, "h1", "h1", 0), &mut next);
        // Long after the grouping window: still suppressed, still one incident.
        let (m, _) = c.fire(&ev(AlertKind::MonitorDown, "h1", "nginx", 1000), &mut next);
        assert_eq!(n, m);
        assert_eq!(c.incidents.len(), 1);
        assert!(c.incidents[&n].alerts[1].suppressed);
        // The monitor recovers while suppressed: the recovery still reaches it.
        c.recover(
            &dedup_key("h1", "monitor", "nginx", AlertKind::MonitorDown),
            t(1100),
            "up",
        );
        assert!(!c.incidents[&n].alerts[1].firing);
        assert!(c.incidents[&n].state.is_open());
        c.recover(
            &dedup_key("h1", "host", "h1", AlertKind::HostDown),
            t(1200),
            "back",
        );
        assert_eq!(c.incidents[&n].state, IncidentState::Resolved);
    }

    #[test]
    fn a_monitor_down_first_then_the_host_is_one_incident() {
        let mut c = Correlator::default();
        let mut next = numbers();
        let (n, _) = c.fire(&ev(AlertKind::MonitorDown, "h1", "nginx", 0), &mut next);
        let (m, _) = c.fire(&ev(AlertKind::HostDown, "h1", "h1", 500), &mut next);
        assert_eq!(n, m);
        assert!(c.incidents[&n].title.contains("is down"));
    }

    #[test]
    fn flapping_is_one_incident_until_quiet() {
        let mut c = Correlator::default();
        let mut next = numbers();
        let key = dedup_key("h1", "monitor", "nginx", AlertKind::MonitorDown);
        let mut first = None;
        for i in 0..8u64 {
            let (n, _) = c.fire(
                &ev(AlertKind::MonitorDown, "h1", "nginx", i * 20),
                &mut next,
            );
            first.get_or_insert(n.clone());
            assert_eq!(Some(&n), first.as_ref());
            c.recover(&key, t(i * 20 + 10), "up");
        }
        let n = first.unwrap();
        assert_eq!(c.incidents.len(), 1);
        let inc = &c.incidents[&n];
        assert!(inc.flapping);
        assert!(
            inc.state.is_open(),
            "a flapping incident does not resolve on recovery"
        );
        assert!(c.tick(t(300)).is_empty());
        assert_eq!(c.tick(t(800)), vec![n.clone()]);
        assert_eq!(c.incidents[&n].state, IncidentState::Resolved);
    }

    /// The key index kept up by `fire`, `recover` and `forget_closed` equals the one built
    /// from the incidents alone (as at start), every alert's key maps to its own position
    /// (no incident holds a key twice), and a correlator rebuilt from the incidents at any
    /// point makes the same decisions as the one that kept going.
    #[test]
    fn the_key_index_matches_the_incidents() {
        use proptest::prelude::*;
        let op = (0u8..4, 0u8..3, 0u8..6, 0u8..3, 1u64..200);
        let runner_config = proptest::test_runner::Config::with_cases(64);
        proptest::proptest!(runner_config, |(ops in prop::collection::vec(op, 1..120))| {
            let settings = CorrelationSettings::default();
            let mut c = Correlator::new(settings, BTreeMap::new());
            let mut next = numbers();
            let mut now = 0u64;
            for (i, (what, host, key, kind, dt)) in ops.into_iter().enumerate() {
                now += dt;
                let host = format!("h{host}");
                let kind = [AlertKind::Drift, AlertKind::MonitorDown, AlertKind::HostDown]
                    [usize::from(kind)];
                let e = ev(kind, &host, &format!("k{key}"), now);
                // The same step on a correlator rebuilt from the incidents as they are.
                let mut fresh = Correlator::new(settings, c.incidents.clone());
                let mut fresh_next = numbers();
                for _ in 0..c.incidents.len() {
                    fresh_next();
                }
                let (kept, rebuilt) = match what {
                    0 | 1 => {
                        let kept = c.fire(&e, &mut next);
                        (vec![kept], vec![fresh.fire(&e, &mut fresh_next)])
                    }
                    2 => {
                        let d = e.dedup();
                        (c.recover(&d, e.at, "ok"), fresh.recover(&d, e.at, "ok"))
                    }
                    _ => {
                        c.forget_closed();
                        fresh.forget_closed();
                        (Vec::new(), Vec::new())
                    }
                };
                // Flap history is memory only (a rebuild forgets it): compare only while
                // no incident is flapping.
                if !c.incidents.values().any(|i| i.flapping) {
                    prop_assert_eq!(&kept, &rebuilt, "step {}", i);
                }
                let expected = Correlator::new(settings, c.incidents.clone()).keys;
                prop_assert_eq!(&c.keys, &expected, "step {}", i);
                for inc in c.incidents.values() {
                    for (at, a) in inc.alerts.iter().enumerate() {
                        prop_assert_eq!(c.alert_of(&inc.number, &a.dedup), Some(at));
                    }
                }
            }
        });
    }
}
