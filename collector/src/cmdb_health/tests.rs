//! Planted CMDBs with known KPI figures.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use cmdb_proto::model::HostIdentity;

use super::*;
use crate::compliance::{ComplianceFailure, ComplianceReport, ComplianceRow};
use crate::store::memory::Planted;
use crate::store::{AgentRecord, host_ci_id};

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

const NOW: u64 = 10 * 86_400;

fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.to_owned())
}

fn ci(host: &str, class: &str, key: &str, state: CiState, a: Attrs, seen: u64) -> CiRecord {
    CiRecord {
        id: crate::store::ci_id(host, class, key),
        host_id: host.to_owned(),
        class: class.to_owned(),
        key: key.to_owned(),
        state,
        attrs: a,
        version: 1,
        first_seen: t(0),
        last_seen: t(seen),
        last_changed: t(0),
        source_agent: "agt-x".into(),
        source_seq: 1,
    }
}

fn host(id: &str, hostname: &str, uuid: Option<&str>, machine_id: &str, seen: u64) -> CiRecord {
    let mut a = attrs(&[("hostname", s(hostname)), ("machine_id", s(machine_id))]);
    a.insert("product_uuid".into(), uuid.map_or(AttrValue::Null, s));
    let mut c = ci(id, HOST_CLASS, id, CiState::Present, a, seen);
    c.id = host_ci_id(id);
    c
}

fn pkg(host: &str, name: &str, version: Option<&str>, seen: u64) -> CiRecord {
    let mut a = attrs(&[("manager", s("dpkg")), ("name", s(name))]);
    if let Some(v) = version {
        a.insert("version".into(), s(v));
    }
    ci(
        host,
        "package",
        &format!("dpkg:{name}:amd64"),
        CiState::Present,
        a,
        seen,
    )
}

/// The planted CMDB:
/// - host-a (web-1, uuid U1) seen now; host-b (web-2, uuid U1 — same machine as host-a:
///   a duplicate); host-c (web-3) with no machine_id (incomplete) and its CI last seen 3 days
///   ago but an agent heartbeat now (fresh); host-d (web-1 — same hostname as host-a)
///   retired; host-e (web-5) last seen 2 days ago with no agent (stale; its uuid U5 is shared
///   with nobody live).
/// - packages: a/bash ok, a/curl without version (incomplete), b/bash stale (3 days),
///   c/vim ok, d/old on the retired host (orphan), z/ghost on a host that does not exist
///   (orphan and incomplete), a/gone absent (not counted).
fn planted() -> Planted {
    let mut hd = host("host-d", "web-1", Some("U4"), "m-d", NOW);
    hd.state = CiState::Retired;
    let mut hc = host("host-c", "web-3", None, "", NOW - 3 * 86_400);
    hc.attrs.remove("machine_id");
    let mut gone = pkg("host-a", "gone", Some("1"), NOW);
    gone.state = CiState::Absent;
    let mut agent_c = AgentRecord::new("agt-c", "i", "1.0.0", HostIdentity::default(), t(0));
    agent_c.host_id = Some("host-c".into());
    agent_c.last_seen = Some(t(NOW - 10));
    Planted {
        cis: vec![
            host("host-a", "web-1", Some("U1"), "m-a", NOW),
            host("host-b", "web-2", Some("u1"), "m-b", NOW - 60),
            hc,
            hd,
            host("host-e", "web-5", Some("U5"), "m-e", NOW - 2 * 86_400),
            pkg("host-a", "bash", Some("5.2"), NOW),
            pkg("host-a", "curl", None, NOW),
            pkg("host-b", "bash", Some("5.2"), NOW - 3 * 86_400),
            pkg("host-c", "vim", Some("9"), NOW - 86_400),
            pkg("host-d", "old", Some("1"), NOW),
            pkg("host-z", "ghost", Some(""), NOW),
            gone,
        ],
        agents: vec![agent_c],
        ..Planted::default()
    }
}

fn row(rep: &HealthReport, kpi: Kpi, class: &str) -> (u64, u64) {
    rep.kpis
        .iter()
        .find(|r| r.kpi == kpi && r.class == class)
        .map_or((u64::MAX, u64::MAX), |r| (r.healthy, r.total))
}

fn reasons(rep: &HealthReport, kpi: Kpi, class: &str) -> Vec<(String, String)> {
    let (items, _) = rep.failing(Some(kpi), Some(class), 1000);
    let mut v: Vec<(String, String)> = items.into_iter().map(|f| (f.key, f.reason)).collect();
    v.sort();
    v
}

#[test]
fn planted_cmdb_gives_known_completeness_and_correctness() {
    let store = planted();
    let rep = compute(&store, None, &HealthSettings::default(), t(NOW)).unwrap();
    // Hosts present: a, b, c, e (d retired). Completeness: c lacks machine_id.
    assert_eq!(row(&rep, Kpi::Completeness, "host"), (3, 4));
    assert_eq!(
        reasons(&rep, Kpi::Completeness, "host"),
        [("host-c".to_owned(), "missing: machine_id".to_owned())]
    );
    // Packages present: 6. Incomplete: a/curl (no version), z/ghost (empty version).
    assert_eq!(row(&rep, Kpi::Completeness, "package"), (4, 6));
    // Correctness of hosts: a and b duplicate (uuid U1 case-insensitively), e stale; c is
    // fresh through its agent; d is retired and not counted.
    assert_eq!(row(&rep, Kpi::Correctness, "host"), (1, 4));
    let r = reasons(&rep, Kpi::Correctness, "host");
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[0].0, "host-a");
    assert_eq!(r[0].1, "duplicate host: product_uuid=u1 shared with host-b");
    assert_eq!(r[1].1, "duplicate host: product_uuid=u1 shared with host-a");
    assert_eq!(r[2].0, "host-e");
    assert!(
        r[2].1.starts_with("stale: last seen 2days ago"),
        "{}",
        r[2].1
    );
    // Packages: b/bash stale (3 d > 2 d), d/old orphan (retired host), z/ghost orphan.
    assert_eq!(row(&rep, Kpi::Correctness, "package"), (3, 6));
    let r = reasons(&rep, Kpi::Correctness, "package");
    assert_eq!(r[0].0, "dpkg:bash:amd64");
    assert!(
        r[0].1.starts_with("stale: last seen 3days ago"),
        "{}",
        r[0].1
    );
    assert_eq!(
        r[1],
        (
            "dpkg:ghost:amd64".to_owned(),
            "orphan: host CI host-z does not exist".to_owned()
        )
    );
    assert_eq!(
        r[2],
        (
            "dpkg:old:amd64".to_owned(),
            "orphan: host CI host-d is retired".to_owned()
        )
    );
    assert_eq!(rep.cis_scanned, 10);
    assert_eq!(
        rep.compliance,
        ComplianceStatus::None("no audit source".into())
    );
    assert!(rep.rows(Some(Kpi::Compliance), None).is_empty());
    let ratio = rep
        .kpis
        .iter()
        .find(|r| r.kpi == Kpi::Correctness && r.class == "package")
        .map(|r| r.ratio);
    assert_eq!(ratio, Some(0.5));
}

#[test]
fn same_hostname_is_a_duplicate_only_while_both_live() {
    let mut store = planted();
    // host-f shares web-1 with host-a and is live: both fail; host-d (also web-1) is
    // retired and does not count.
    store
        .cis
        .push(host("host-f", "WEB-1", Some("U6"), "m-f", NOW));
    let rep = compute(&store, None, &HealthSettings::default(), t(NOW)).unwrap();
    let r = reasons(&rep, Kpi::Correctness, "host");
    let f = r
        .iter()
        .find(|(k, _)| k == "host-f")
        .map(|(_, r)| r.clone());
    assert_eq!(
        f.as_deref(),
        Some("duplicate host: hostname=web-1 shared with host-a")
    );
    let a = r
        .iter()
        .find(|(k, _)| k == "host-a")
        .map(|(_, r)| r.clone());
    assert_eq!(
        a.as_deref(),
        Some(
            "duplicate host: hostname=web-1 shared with host-f; duplicate host: \
             product_uuid=u1 shared with host-b"
        )
    );
    assert_eq!(row(&rep, Kpi::Correctness, "host"), (1, 5));
    // A stale duplicate is not live: host-e's uuid shared with a new stale host fails only
    // for staleness.
    let mut store = planted();
    store
        .cis
        .push(host("host-g", "web-7", Some("U5"), "m-g", NOW - 5 * 86_400));
    let rep = compute(&store, None, &HealthSettings::default(), t(NOW)).unwrap();
    let r = reasons(&rep, Kpi::Correctness, "host");
    assert!(
        r.iter()
            .all(|(_, why)| !why.contains("U5") && !why.contains("u5"))
    );
}

#[test]
fn settings_override_required_and_stale() {
    let store = planted();
    let settings: HealthSettings = toml::from_str(
        "default_stale_after = \"4d\"\ncache_ttl = \"0s\"\n[required]\npackage = [\"name\"]\nhost = []\n[stale_after]\nhost = \"3d\"\n",
    )
    .unwrap();
    assert!(settings.validate().is_ok());
    let rep = compute(&store, None, &settings, t(NOW)).unwrap();
    assert_eq!(row(&rep, Kpi::Completeness, "package"), (6, 6));
    assert_eq!(row(&rep, Kpi::Completeness, "host"), (4, 4));
    // No package is stale within 4 days; only the two orphans fail. host-e (2 d) is fresh
    // within 3 d, so only the U1 duplicates fail.
    assert_eq!(row(&rep, Kpi::Correctness, "package"), (4, 6));
    assert_eq!(row(&rep, Kpi::Correctness, "host"), (2, 4));
    assert!(toml::from_str::<HealthSettings>("bogus = 1\n").is_err());
    assert!(toml::from_str::<HealthSettings>("[stale_after]\nhost = \"soon\"\n").is_err());
    let zero: HealthSettings = toml::from_str("[stale_after]\nhost = \"0s\"\n").unwrap();
    assert!(zero.validate().is_err());
}

struct FakeCompliance(Result<Option<ComplianceReport>, String>);

impl ComplianceSource for FakeCompliance {
    fn latest(&self) -> Result<Option<ComplianceReport>, String> {
        self.0.clone()
    }
}

#[test]
fn compliance_comes_from_the_latest_audit_run() {
    let store = planted();
    let settings = HealthSettings::default();
    let none = FakeCompliance(Ok(None));
    let rep = compute(&store, Some(&none), &settings, t(NOW)).unwrap();
    assert_eq!(
        rep.compliance,
        ComplianceStatus::None("no audit has run".into())
    );
    assert!(rep.rows(Some(Kpi::Compliance), None).is_empty());
    let failed = FakeCompliance(Err("disk on fire".into()));
    let rep = compute(&store, Some(&failed), &settings, t(NOW)).unwrap();
    assert!(matches!(rep.compliance, ComplianceStatus::None(ref m) if m.contains("failed")));
    let report = ComplianceReport {
        run_id: "AUD0000000001".into(),
        finished_at: t(NOW - 5),
        classes: vec![
            ComplianceRow {
                class: "host".into(),
                healthy: 2,
                total: 3,
            },
            ComplianceRow {
                class: "package".into(),
                healthy: 7,
                total: 10,
            },
        ],
        failing: vec![
            ComplianceFailure {
                ci_id: None,
                class: "host".into(),
                key: "db-9".into(),
                host_id: None,
                reason: "missing".into(),
            },
            ComplianceFailure {
                ci_id: Some("ci-1".into()),
                class: "package".into(),
                key: "dpkg:curl:amd64".into(),
                host_id: Some("host-a".into()),
                reason: "mismatched: version".into(),
            },
        ],
    };
    let src = FakeCompliance(Ok(Some(report)));
    let rep = compute(&store, Some(&src), &settings, t(NOW)).unwrap();
    assert_eq!(row(&rep, Kpi::Compliance, "host"), (2, 3));
    assert_eq!(row(&rep, Kpi::Compliance, "package"), (7, 10));
    let (items, total) = rep.failing(Some(Kpi::Compliance), None, 100);
    assert_eq!(total, 2);
    assert_eq!(items[0].key, "db-9");
    assert_eq!(items[0].ci_id, None);
    assert_eq!(items[1].reason, "mismatched: version");
    let json = serde_json::to_value(&rep.compliance).unwrap();
    assert_eq!(json["run_id"], "AUD0000000001");
}

#[test]
fn failing_lists_are_bounded_and_counted_exactly() {
    let mut store = Planted::default();
    store.cis.push(host("host-a", "web-1", None, "m-a", NOW));
    for i in 0..(MAX_FAILING_KEPT + 5) {
        store
            .cis
            .push(pkg("host-a", &format!("p{i:05}"), None, NOW));
    }
    let rep = compute(&store, None, &HealthSettings::default(), t(NOW)).unwrap();
    assert_eq!(
        row(&rep, Kpi::Completeness, "package"),
        (0, (MAX_FAILING_KEPT + 5) as u64)
    );
    let (items, total) = rep.failing(Some(Kpi::Completeness), Some("package"), 10);
    assert_eq!((items.len(), total), (10, (MAX_FAILING_KEPT + 5) as u64));
    let (items, _) = rep.failing(None, None, 5000);
    assert_eq!(items.len(), MAX_FAILING_KEPT);
}

#[test]
fn walking_pages_sees_every_ci() {
    let mut store = Planted::default();
    store.cis.push(host("host-a", "web-1", None, "m-a", NOW));
    for i in 0..(PAGE + 3) {
        store
            .cis
            .push(pkg("host-a", &format!("p{i:05}"), Some("1"), NOW));
    }
    let rep = compute(&store, None, &HealthSettings::default(), t(NOW)).unwrap();
    assert_eq!(row(&rep, Kpi::Completeness, "package"), (10_003, 10_003));
    assert_eq!(row(&rep, Kpi::Correctness, "package"), (10_003, 10_003));
}

#[test]
fn the_report_is_cached_for_its_ttl() {
    let store = Arc::new(planted());
    let health = Arc::new(CmdbHealth::new(
        Arc::clone(&store) as Arc<dyn Store>,
        None,
        HealthSettings::default(),
    ));
    let a = health.report().unwrap();
    let reads = store.cis_calls.load(Ordering::SeqCst);
    let b = health.report().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(store.cis_calls.load(Ordering::SeqCst), reads);
    let fresh = Arc::new(CmdbHealth::new(
        Arc::clone(&store) as Arc<dyn Store>,
        None,
        HealthSettings {
            cache_ttl: Duration::ZERO,
            ..HealthSettings::default()
        },
    ));
    let c = fresh.report().unwrap();
    let d = fresh.report().unwrap();
    assert!(!Arc::ptr_eq(&c, &d));
}

/// A source whose latest run id the test moves on.
struct MovingRun(std::sync::Mutex<Option<String>>);

impl ComplianceSource for MovingRun {
    fn latest(&self) -> Result<Option<ComplianceReport>, String> {
        Ok(None)
    }
    fn latest_run_id(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn a_new_audit_run_makes_the_cached_report_stale() {
    let store = Arc::new(planted());
    let source = Arc::new(MovingRun(std::sync::Mutex::new(None)));
    let health = Arc::new(CmdbHealth::new(
        Arc::clone(&store) as Arc<dyn Store>,
        Some(Arc::clone(&source) as Arc<dyn ComplianceSource>),
        HealthSettings::default(),
    ));
    let a = health.report().unwrap();
    assert!(
        Arc::ptr_eq(&a, &health.report().unwrap()),
        "cached within the TTL"
    );
    *source.0.lock().unwrap() = Some("run-000001".into());
    let b = health.report().unwrap();
    assert!(!Arc::ptr_eq(&a, &b), "recomputed after a new run");
    assert!(
        Arc::ptr_eq(&b, &health.report().unwrap()),
        "then cached again"
    );
}

#[test]
fn a_slow_report_is_served_stale_while_the_next_is_computed() {
    let store = Arc::new(planted());
    let health = Arc::new(
        CmdbHealth::new(
            Arc::clone(&store) as Arc<dyn Store>,
            None,
            HealthSettings {
                cache_ttl: Duration::ZERO,
                ..HealthSettings::default()
            },
        )
        // Every computation counts as slow.
        .with_serve_stale_above(Duration::ZERO),
    );
    let first = health.report().unwrap();
    // Expired at once, but slow: the previous report comes back without waiting...
    let second = health.report().unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    // ... and a background computation replaces it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = health.report().unwrap();
        if !Arc::ptr_eq(&first, &r) {
            assert_eq!(r.cis_scanned, first.cis_scanned);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background refresh"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_collector_config_carries_the_section() {
    use crate::config::{CollectorConfig, ConfigError};
    let p = std::path::Path::new("c.toml");
    let cfg = CollectorConfig::parse("[cmdb_health]\ncache_ttl = \"5s\"\n", p).unwrap();
    assert_eq!(cfg.cmdb_health.cache_ttl, Duration::from_secs(5));
    assert_eq!(cfg.cmdb_health.host_stale_after, DAY);
    let defaults = CollectorConfig::parse("", p).unwrap();
    assert_eq!(defaults.cmdb_health.cache_ttl, Duration::from_secs(60));
    assert_eq!(defaults.cmdb_health.stale_after_of("package"), 2 * DAY);
    let e = CollectorConfig::parse("[cmdb_health]\nttl = \"5s\"\n", p).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    let e = CollectorConfig::parse("[cmdb_health]\nhost_stale_after = \"0s\"\n", p).unwrap_err();
    assert!(
        e.to_string().contains("cmdb_health.host_stale_after"),
        "{e}"
    );
    let e = CollectorConfig::parse("[cmdb_health]\ncache_ttl = \"2h\"\n", p).unwrap_err();
    assert!(e.to_string().contains("cmdb_health.cache_ttl"), "{e}");
}

#[test]
fn the_builder_gives_the_same_answer_in_any_order() {
    let store = planted();
    let settings = HealthSettings::default();
    let walked = compute(&store, None, &settings, t(NOW)).unwrap();
    // CIs before their hosts, hosts never declared complete: judged at the end.
    let mut b = ReportBuilder::new(&settings, t(NOW));
    for a in &store.agents {
        b.add_agent(a);
    }
    for c in store.cis.iter().rev() {
        b.add_ci(c);
    }
    let any_order = b.finish(ComplianceInput::NoSource);
    assert_eq!(any_order.kpis, walked.kpis);
    assert_eq!(any_order.cis_scanned, walked.cis_scanned);
}
