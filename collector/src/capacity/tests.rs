//! Capacity passes over synthetic fleets with known answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};

use super::fake_store::FakeStore;
use super::*;
use crate::judgment::JudgmentSettings;
use crate::store::{AgentRecord, CiRecord, CiState, MetricRecord, MetricSummary};

const GB: f64 = 1e9;
/// A Monday at midnight UTC, far from any hour boundary trouble.
const START: u64 = 1_800_000_000 - 1_800_000_000 % DAY;

fn agent(host: &str) -> AgentRecord {
    let mut a = AgentRecord::new(
        &format!("agt-{host}"),
        "i",
        "0.1.0",
        HostIdentity::default(),
        time(START),
    );
    a.host_id = Some(host.to_owned());
    a.hostname = Some(format!("{host}.example"));
    a
}

fn fs_ci(host: &str, mount: &str, size: f64) -> CiRecord {
    let mut attrs = Attrs::new();
    attrs.insert("size_bytes".into(), AttrValue::Int(size as i64));
    CiRecord {
        id: ci_id(host, "filesystem", mount),
        host_id: host.into(),
        class: "filesystem".into(),
        key: mount.into(),
        state: CiState::Present,
        attrs,
        version: 1,
        first_seen: time(START),
        last_seen: time(START),
        last_changed: time(START),
        source_agent: "a".into(),
        source_seq: 1,
    }
}

fn windows(host: &str, days: u64, used: impl Fn(u64, u64) -> f64) -> Vec<MetricRecord> {
    (0..days * 1440)
        .map(|i| {
            let t = START + i * 60;
            let v = used(i, t);
            MetricRecord {
                host_id: host.into(),
                window_start: time(t),
                window_seconds: 60,
                summaries: vec![
                    MetricSummary {
                        name: "filesystem.used_bytes".into(),
                        labels: [("mount".to_owned(), "/var".to_owned())]
                            .into_iter()
                            .collect(),
                        min: v,
                        avg: v,
                        max: v,
                        p95: v,
                        samples: 4,
                    },
                    MetricSummary {
                        name: "load.1m".into(),
                        labels: Default::default(),
                        min: 0.5,
                        avg: 0.5,
                        max: 0.5,
                        p95: 0.5,
                        samples: 4,
                    },
                ],
            }
        })
        .collect()
}

fn settings() -> CapacitySettings {
    CapacitySettings {
        forecast_window: Duration::from_secs(7 * DAY),
        ..CapacitySettings::default()
    }
}

fn fleet(store: &FakeStore, host: &str, size: f64, w: Vec<MetricRecord>) {
    store.agent_list.lock().unwrap().push(agent(host));
    store
        .ci_list
        .lock()
        .unwrap()
        .push(fs_ci(host, "/var", size));
    store.put_metrics(&w);
}

fn find<'a>(fs: &'a [Forecast], host: &str, r: &str) -> &'a Forecast {
    fs.iter()
        .find(|f| f.host_id == host && f.resource == r)
        .unwrap_or_else(|| panic!("no forecast for {host} {r}: {fs:?}"))
}

#[test]
fn linear_disk_growth_forecasts_its_known_exhaustion_date_and_raises_an_incident() {
    let store = Arc::new(FakeStore::default());
    // 100 GB filesystem, 50 GB used at START, +3 GB/day: 90 % (90 GB) on day 40/3.
    fleet(
        &store,
        "h1",
        100.0 * GB,
        windows("h1", 5, |_, t| {
            50.0 * GB + 3.0 * GB * (t - START) as f64 / DAY as f64
        }),
    );
    // A second host with a flat, roomy filesystem.
    fleet(&store, "h2", 100.0 * GB, windows("h2", 5, |_, _| 20.0 * GB));
    let dyn_store: Arc<dyn Store> = store.clone();
    let judgment = Arc::new(
        Judgment::open(
            Arc::clone(&dyn_store),
            JudgmentSettings::default(),
            None,
            None,
        )
        .unwrap(),
    );
    let cap = Capacity::new(
        Arc::clone(&dyn_store),
        settings(),
        Some(Arc::clone(&judgment)),
        Duration::from_secs(7 * DAY),
    );
    let now = time(START + 5 * DAY + 600);
    let r = cap.pass(now, false).unwrap().unwrap();
    assert_eq!(r.hosts, 2);
    assert_eq!(r.windows, 2 * 5 * 1440);
    assert_eq!(r.at_risk, 1);
    assert_eq!(r.raised, 1);

    let (all, truncated) = list_forecasts(store.as_ref(), None, true).unwrap();
    assert!(!truncated);
    let f = find(&all, "h1", "filesystem:/var");
    assert_eq!(f.status, Status::AtRisk);
    assert_eq!(f.unit, "bytes");
    assert_eq!(f.threshold, Some(90.0 * GB));
    assert!((f.slope_per_day.unwrap() - 3.0 * GB).abs() < 0.001 * GB);
    // Hourly points are hour averages (the value at hh:29:30), so the fitted crossing is
    // 29.5 minutes before the exact one.
    let exact = START as f64 + 40.0 / 3.0 * DAY as f64;
    let got = secs(f.exhaustion_at.unwrap()) as f64;
    assert!((got - exact).abs() < 3600.0, "off by {} s", got - exact);
    let days = f.days_to_threshold.unwrap();
    assert!(
        (days - (40.0 / 3.0 - 5.0 - 600.0 / DAY as f64)).abs() < 0.05,
        "{days}"
    );
    assert!(f.confidence > 0.7, "{}", f.confidence);
    let incident = f.incident.clone().unwrap();
    assert_eq!(
        judgment.incident(&incident).unwrap().category,
        crate::incidents::Category::Capacity
    );

    let flat = find(&all, "h2", "filesystem:/var");
    assert_eq!(flat.status, Status::Ok);
    assert!(flat.exhaustion_at.is_none());
    // Load has no capacity: a trend, no threshold.
    let load = find(&all, "h1", "load");
    assert_eq!(load.status, Status::Ok);
    assert!(load.threshold.is_none());
    // The default list is the at-risk one.
    let (risky, _) = list_forecasts(store.as_ref(), None, false).unwrap();
    assert_eq!(risky.len(), 1);
    let (by_name, _) = list_forecasts(store.as_ref(), Some("h1.example"), true).unwrap();
    assert_eq!(by_name.len(), 2);

    // Series: hours and the complete days.
    let s = series(
        store.as_ref(),
        "h1",
        Some("filesystem:/var"),
        Tier::Day,
        time(START),
        now,
    )
    .unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].points.len(), 5);
    assert_eq!(s[0].capacity, Some(100.0 * GB));

    // Not due again within the hour; forced, it keeps the incident number.
    assert!(
        cap.pass(now + Duration::from_secs(60), false)
            .unwrap()
            .is_none()
    );
    let r = cap
        .pass(now + Duration::from_secs(60), true)
        .unwrap()
        .unwrap();
    assert_eq!(r.raised, 0);
    let (all, _) = list_forecasts(store.as_ref(), Some("h1"), false).unwrap();
    assert_eq!(all[0].incident.as_deref(), Some(incident.as_str()));

    // The admins grow the filesystem to 1 TB: no longer at risk, the incident resolves.
    store.ci_list.lock().unwrap().retain(|c| c.host_id != "h1");
    store
        .ci_list
        .lock()
        .unwrap()
        .push(fs_ci("h1", "/var", 1000.0 * GB));
    let r = cap
        .pass(now + Duration::from_secs(120), true)
        .unwrap()
        .unwrap();
    assert_eq!((r.at_risk, r.cleared), (0, 1));
    assert_eq!(
        judgment.incident(&incident).unwrap().state,
        crate::incidents::IncidentState::Resolved
    );
}

#[test]
fn noisy_growth_with_outliers_still_finds_the_trend() {
    let store = Arc::new(FakeStore::default());
    // +2 GB/day from 40 GB with ±1 GB noise, and one minute in ten reading 0 or 3× (a
    // broken statvfs, a transient mount): 90 GB reached on day 25.
    fleet(
        &store,
        "h1",
        100.0 * GB,
        windows("h1", 6, |i, t| {
            let base = 40.0 * GB + 2.0 * GB * (t - START) as f64 / DAY as f64;
            let noise = ((i * 7919) % 2001) as f64 / 1000.0 - 1.0;
            match i % 10 {
                3 => 0.0,
                7 => base * 3.0,
                _ => base + noise * GB,
            }
        }),
    );
    let dyn_store: Arc<dyn Store> = store.clone();
    let cap = Capacity::new(
        dyn_store,
        CapacitySettings {
            horizon: Duration::from_secs(30 * DAY),
            ..settings()
        },
        None,
        Duration::from_secs(7 * DAY),
    );
    let now = time(START + 6 * DAY + 300);
    cap.pass(now, false).unwrap().unwrap();
    let (all, _) = list_forecasts(store.as_ref(), None, true).unwrap();
    let f = find(&all, "h1", "filesystem:/var");
    let slope = f.slope_per_day.unwrap();
    // Hour averages carry the outliers ((0 + 3×) / 10 = +20 % level), but not the slope
    // much: within 25 %; least squares on the minutes would be no better, the median fit
    // on hourly p95 would be worse.
    assert!((slope - 2.0 * GB).abs() < 0.5 * GB, "{slope}");
    assert_eq!(f.status, Status::AtRisk);
    assert!(
        f.confidence > 0.3 && f.confidence <= 1.0,
        "{}",
        f.confidence
    );
}

#[test]
fn too_little_history_is_not_enough_data() {
    let store = Arc::new(FakeStore::default());
    fleet(&store, "h1", 100.0 * GB, windows("h1", 1, |_, _| 95.0 * GB));
    let dyn_store: Arc<dyn Store> = store.clone();
    let cap = Capacity::new(dyn_store, settings(), None, Duration::from_secs(7 * DAY));
    // 12 hours of the day are complete.
    cap.pass(time(START + DAY / 2 + 300), false)
        .unwrap()
        .unwrap();
    let (all, _) = list_forecasts(store.as_ref(), None, true).unwrap();
    let f = find(&all, "h1", "filesystem:/var");
    assert_eq!(f.status, Status::NotEnoughData);
    assert_eq!(f.current, Some(95.0 * GB));
    assert!(f.incident.is_none());
}

#[test]
fn the_watermark_survives_a_restart_and_retention_prunes_old_tiers() {
    let store = Arc::new(FakeStore::default());
    fleet(&store, "h1", 100.0 * GB, windows("h1", 3, |_, _| 10.0 * GB));
    let dyn_store: Arc<dyn Store> = store.clone();
    let mk = || {
        Capacity::new(
            Arc::clone(&dyn_store),
            settings(),
            None,
            Duration::from_secs(7 * DAY),
        )
    };
    let first = mk()
        .pass(time(START + 2 * DAY + 300), false)
        .unwrap()
        .unwrap();
    assert_eq!(first.windows, 2 * 1440);
    // A new engine (a restart) continues from the watermark minus the lateness.
    let second = mk()
        .pass(time(START + 3 * DAY + 300), false)
        .unwrap()
        .unwrap();
    assert_eq!(second.windows, 1440 + 3 * 60);
    let hours = rollup::read(store.as_ref(), "h1", Tier::Hour, START, START + 3 * DAY).unwrap();
    assert_eq!(hours["filesystem:/var"].len(), 72);
    assert!(hours["filesystem:/var"].iter().all(|p| p.n == 240));
    // 90 days later the hour tier is gone, the day tier kept.
    let cap = Capacity::new(
        Arc::clone(&dyn_store),
        CapacitySettings {
            hour_retention: Duration::from_secs(30 * DAY),
            ..settings()
        },
        None,
        Duration::from_secs(7 * DAY),
    );
    let late = cap.pass(time(START + 90 * DAY), false).unwrap().unwrap();
    assert_eq!(late.pruned, 3);
    let days = rollup::read(store.as_ref(), "h1", Tier::Day, START, START + 3 * DAY).unwrap();
    assert_eq!(days["filesystem:/var"].len(), 3);
}

#[test]
fn settings_are_validated() {
    assert!(CapacitySettings::default().validate().is_ok());
    let mut s = CapacitySettings::default();
    s.thresholds.filesystem = 120.0;
    assert_eq!(
        s.validate().unwrap_err().0,
        "capacity.thresholds.filesystem"
    );
    let s = CapacitySettings {
        hour_retention: Duration::from_secs(DAY),
        ..CapacitySettings::default()
    };
    assert!(s.validate().is_err());
    let _ = SystemTime::now();
}

#[test]
fn the_capacity_section_parses_and_bad_values_name_their_field() {
    use crate::config::CollectorConfig;
    let p = std::path::Path::new("collector.toml");
    let cfg = CollectorConfig::parse(
        "[capacity]\nhorizon = \"7d\"\nrollup_lateness = \"1d\"\n[capacity.thresholds]\nfilesystem = 85\n",
        p,
    )
    .unwrap();
    assert_eq!(cfg.capacity.horizon, Duration::from_secs(7 * DAY));
    assert_eq!(cfg.capacity.thresholds.filesystem, 85.0);
    assert_eq!(cfg.capacity.thresholds.memory, 95.0);
    assert!(cfg.capacity.enabled);
    let e = CollectorConfig::parse("[capacity.thresholds]\nswap = 0\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("capacity.thresholds.swap"), "{e}");
    let e = CollectorConfig::parse("[capacity]\nhorizon = \"soon\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("soon"), "{e}");
    assert!(CollectorConfig::parse("[capacity]\nbogus = 1\n", p).is_err());
}
