//! Service monitors: is a systemd unit active, does a process run, does something listen on
//! a TCP port. Evaluated by the resident agent every `intervals.monitor` (and at once when
//! the set changes) and reported as CIs of class `monitor`, which travel through the same
//! diff, outbox and snapshot machinery as every other CI.
//!
//! **The set** ([`effective`]): the monitors of `agent.toml` (checked at load: a bad one is
//! a configuration error) and those of the collector's latest `Config` (checked here: a bad
//! one is skipped and logged), the collector's winning on a name clash, at most
//! [`MAX_MONITORS`] in all (the agent's own first).
//!
//! **A round** ([`Checker::evaluate`]): one check per kind present, each on its own thread
//! and under its own timeout, sharing one read per kind: one `systemctl show` for every unit
//! (through [`crate::command::run`]), one pass over /proc/<pid>/{exe,comm} for every process
//! monitor, one read of the TCP listeners for every port (a sock_diag dump of listeners on
//! the live host, else /proc/net/tcp and tcp6), all under the [`HostRoot`]. A
//! check that overruns its timeout leaves its monitors `unknown` ("check did not finish …")
//! and is not started again while its thread still runs, so a wedged manager or procfs costs
//! one thread, not one per round.
//!
//! **A result** is an item `monitor/<name>` with `kind`, `target`, `status` (up, down,
//! unknown) and `detail`, a short text that depends only on what was observed (never pids,
//! counts or times), so an unchanged status makes no new CI version. The round's report is
//! the collector status `monitor` (classes `[monitor]`): `ok` whenever the round ran, even
//! when single checks were `unknown`, so a monitor dropped from the set becomes a removed CI;
//! a round that could not run at all reports `error` with no items, and the diff then keeps
//! every monitor CI as it was: a failing evaluation never reads as "all monitors removed".
//!
//! Never: writes to the host, runs anything but `systemctl`, or holds more than one thread
//! per kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cmdb_proto::model::{CollectorReport, CollectorState, Item, class};
pub use cmdb_proto::monitor::{MAX_MONITORS, MonitorKind, MonitorSpec, MonitorStatus};
use cmdb_proto::v1;

use crate::discover::service::Systemctl;
use crate::hostroot::HostRoot;

pub mod process;
pub mod systemd;
pub mod tcp_port;

/// The collector status name (and only class) of monitor results.
pub const REPORT_NAME: &str = "monitor";
/// The longest `detail` kept (a command's error text can be long).
pub const MAX_DETAIL_CHARS: usize = 200;
/// How long one check may take by default.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What one check concluded about one monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: MonitorStatus,
    /// Short and stable (see the module doc).
    pub detail: String,
}

impl Verdict {
    pub fn up(detail: impl Into<String>) -> Self {
        Verdict::new(MonitorStatus::Up, detail)
    }
    pub fn down(detail: impl Into<String>) -> Self {
        Verdict::new(MonitorStatus::Down, detail)
    }
    pub fn unknown(detail: impl Into<String>) -> Self {
        Verdict::new(MonitorStatus::Unknown, detail)
    }

    fn new(status: MonitorStatus, detail: impl Into<String>) -> Self {
        let mut detail: String = detail.into();
        if detail.chars().count() > MAX_DETAIL_CHARS {
            detail = detail.chars().take(MAX_DETAIL_CHARS - 1).collect();
            detail.push('…');
        }
        Verdict { status, detail }
    }
}

// === the set ===

/// The collector's monitors from a `Config`: each converted and checked, invalid ones and
/// repeated names skipped (returned as messages), at most [`MAX_MONITORS`] kept.
pub fn from_collector(config: &v1::Config) -> (Vec<MonitorSpec>, Vec<String>) {
    let mut specs = Vec::new();
    let mut skipped = Vec::new();
    let mut names = BTreeSet::new();
    for (i, m) in config.monitors.iter().enumerate() {
        let spec = match MonitorSpec::try_from(m) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(format!("monitors[{i}] {:?}: {e}", m.name));
                continue;
            }
        };
        if let Err(e) = spec.check() {
            skipped.push(format!("monitors[{i}] {:?}: {e}", m.name));
            continue;
        }
        if !names.insert(spec.name.clone()) {
            skipped.push(format!(
                "monitors[{i}]: duplicate monitor name {:?}",
                m.name
            ));
            continue;
        }
        if specs.len() == MAX_MONITORS {
            skipped.push(format!(
                "{} monitors beyond the first {MAX_MONITORS}",
                config.monitors.len() - i
            ));
            break;
        }
        specs.push(spec);
    }
    (specs, skipped)
}

/// The monitors to evaluate, sorted by name: `local` ∪ `remote`, `remote` winning on a name
/// clash, at most [`MAX_MONITORS`] (local ones first, then remote ones in order). Also
/// returns how many remote monitors did not fit.
pub fn effective(local: &[MonitorSpec], remote: &[MonitorSpec]) -> (Vec<MonitorSpec>, usize) {
    let mut set: BTreeMap<&str, &MonitorSpec> =
        local.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut dropped = 0;
    for m in remote {
        if set.contains_key(m.name.as_str()) || set.len() < MAX_MONITORS {
            set.insert(&m.name, m);
        } else {
            dropped += 1;
        }
    }
    (set.into_values().cloned().collect(), dropped)
}

// === a round ===

/// The results of one round: `monitor` items and the report that makes them authoritative.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    pub items: Vec<Item>,
    pub report: CollectorReport,
}

impl Round {
    /// A round that could not run: no items, and an `error` report, so that the diff keeps
    /// the monitor CIs as they were.
    pub fn failed(message: impl Into<String>) -> Self {
        Round {
            items: Vec::new(),
            report: CollectorReport {
                name: REPORT_NAME.into(),
                status: CollectorState::Error,
                duration_ms: 0,
                items: 0,
                message: Some(message.into()),
                classes: vec![class::MONITOR.into()],
            },
        }
    }
}

/// The `monitor` CI for a spec and its verdict.
pub fn item(spec: &MonitorSpec, verdict: &Verdict) -> Item {
    Item::new(class::MONITOR, spec.name.clone())
        .with("kind", spec.kind.as_str())
        .with("target", spec.target.clone())
        .with("status", verdict.status.as_str())
        .with("detail", verdict.detail.clone())
}

/// Runs monitor rounds. Blocking: call it off the async threads.
#[derive(Debug)]
pub struct Checker {
    root: HostRoot,
    systemctl: Systemctl,
    timeout: Duration,
    /// Per kind: a check thread is still running (a previous round's, past its timeout).
    busy: [Arc<AtomicBool>; 3],
}

fn kind_index(k: MonitorKind) -> usize {
    match k {
        MonitorKind::SystemdUnit => 0,
        MonitorKind::Process => 1,
        MonitorKind::TcpPort => 2,
    }
}

/// Clears a kind's busy flag when its check thread ends, also by a panic.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Checker {
    /// A checker reading under `root`, each check bounded by `timeout`.
    pub fn new(root: HostRoot, timeout: Duration) -> Self {
        Checker::with_systemctl(root, timeout, Systemctl::default())
    }

    /// [`Checker::new`] with an explicit `systemctl` (tests substitute a script).
    pub fn with_systemctl(root: HostRoot, timeout: Duration, systemctl: Systemctl) -> Self {
        Checker {
            root,
            systemctl,
            timeout,
            busy: Default::default(),
        }
    }

    /// Evaluates every spec once (see the module doc).
    pub fn evaluate(&self, specs: &[MonitorSpec]) -> Round {
        let start = Instant::now();
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, s) in specs.iter().enumerate() {
            groups.entry(kind_index(s.kind)).or_default().push(i);
        }
        let mut verdicts: Vec<Option<Verdict>> = vec![None; specs.len()];
        let overran = Verdict::unknown(format!(
            "check did not finish within {}",
            humantime::format_duration(self.timeout)
        ));
        let (tx, rx) = mpsc::channel::<(usize, Vec<Verdict>)>();
        let mut pending = BTreeSet::new();
        for (&kind, members) in &groups {
            let busy = &self.busy[kind];
            if busy.swap(true, Ordering::SeqCst) {
                for &i in members {
                    verdicts[i] = Some(overran.clone());
                }
                continue;
            }
            let guard = BusyGuard(Arc::clone(busy));
            let group: Vec<MonitorSpec> = members.iter().map(|&i| specs[i].clone()).collect();
            let name = group.first().map_or("", |s| s.kind.as_str());
            let (root, sc, timeout, tx) = (
                self.root.clone(),
                self.systemctl.clone(),
                self.timeout,
                tx.clone(),
            );
            let spawned = thread::Builder::new()
                .name(format!("monitor-{name}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    let _guard = guard;
                    let refs: Vec<&MonitorSpec> = group.iter().collect();
                    let run = || match group.first().map(|s| s.kind) {
                        // systemctl gets most of the time, so that a wedged manager is
                        // reported as such (and killed) before the check's own deadline.
                        Some(MonitorKind::SystemdUnit) => {
                            systemd::check(&root, &sc, timeout.mul_f64(0.8), &refs)
                        }
                        Some(MonitorKind::Process) => process::check(&root, &refs),
                        Some(MonitorKind::TcpPort) => tcp_port::check(&root, &refs),
                        None => Vec::new(),
                    };
                    // A bug in one check must cost only its monitors, never the round.
                    let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                        .unwrap_or_else(|_| {
                            vec![
                                Verdict::unknown("check failed (a bug; please report)");
                                refs.len()
                            ]
                        });
                    let _ = tx.send((kind, v));
                });
            match spawned {
                Ok(_) => {
                    pending.insert(kind);
                }
                Err(e) => {
                    // The closure (and with it the guard) is dropped: the flag is clear.
                    for &i in members {
                        verdicts[i] =
                            Some(Verdict::unknown(format!("cannot start the check: {e}")));
                    }
                }
            }
        }
        drop(tx);
        let deadline = start + self.timeout;
        while !pending.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((kind, v)) => {
                    pending.remove(&kind);
                    let members = groups.get(&kind).map(Vec::as_slice).unwrap_or_default();
                    for (n, &i) in members.iter().enumerate() {
                        verdicts[i] = Some(v.get(n).cloned().unwrap_or_else(|| {
                            Verdict::unknown("check gave no answer (a bug; please report)")
                        }));
                    }
                }
                Err(_) => break,
            }
        }
        let items: Vec<Item> = specs
            .iter()
            .zip(verdicts)
            .map(|(s, v)| item(s, &v.unwrap_or_else(|| overran.clone())))
            .collect();
        Round {
            report: CollectorReport {
                name: REPORT_NAME.into(),
                status: CollectorState::Ok,
                duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                items: items.len() as u64,
                message: None,
                classes: vec![class::MONITOR.into()],
            },
            items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn spec(name: &str, kind: MonitorKind, target: &str) -> MonitorSpec {
        MonitorSpec {
            name: name.into(),
            kind,
            target: target.into(),
        }
    }

    fn pspec(name: &str, kind: MonitorKind, target: &str) -> v1::MonitorSpec {
        v1::MonitorSpec::from(&spec(name, kind, target))
    }

    #[test]
    fn the_collector_wins_on_a_name_clash_and_bad_specs_are_skipped() {
        let local = vec![
            spec("ssh", MonitorKind::TcpPort, "22"),
            spec("web", MonitorKind::TcpPort, "80"),
        ];
        let config = v1::Config {
            monitors: vec![
                pspec("web", MonitorKind::TcpPort, "443"),
                pspec("bad-port", MonitorKind::TcpPort, "http"),
                v1::MonitorSpec {
                    name: "weird".into(),
                    kind: 42,
                    target: "x".into(),
                },
                pspec("nginx", MonitorKind::Process, "nginx"),
                pspec("nginx", MonitorKind::Process, "/usr/sbin/nginx"),
            ],
            ..Default::default()
        };
        let (remote, skipped) = from_collector(&config);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("not a port number"), "{skipped:?}");
        assert!(skipped[1].contains("unknown MonitorSpec.kind value 42"));
        assert!(skipped[2].contains("duplicate"));
        let (set, dropped) = effective(&local, &remote);
        assert_eq!(dropped, 0);
        assert_eq!(
            set,
            vec![
                spec("nginx", MonitorKind::Process, "nginx"),
                spec("ssh", MonitorKind::TcpPort, "22"),
                spec("web", MonitorKind::TcpPort, "443"),
            ]
        );
    }

    #[test]
    fn the_set_is_bounded_with_local_monitors_first() {
        let local: Vec<MonitorSpec> = (0..200)
            .map(|i| spec(&format!("l{i:03}"), MonitorKind::TcpPort, "22"))
            .collect();
        let config = v1::Config {
            monitors: (0..300)
                .map(|i| pspec(&format!("r{i:03}"), MonitorKind::TcpPort, "80"))
                .chain([pspec("l000", MonitorKind::TcpPort, "23")])
                .collect(),
            ..Default::default()
        };
        let (remote, skipped) = from_collector(&config);
        assert_eq!(remote.len(), MAX_MONITORS);
        assert_eq!(skipped, vec![format!("45 monitors beyond the first 256")]);
        let (set, dropped) = effective(&local, &remote);
        assert_eq!(set.len(), MAX_MONITORS);
        assert_eq!(dropped, 200);
        assert!(set.iter().filter(|m| m.name.starts_with('l')).count() == 200);
    }

    fn fake_systemctl(dir: &std::path::Path, body: &str) -> Systemctl {
        let p = dir.join("systemctl");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        Systemctl {
            program: p.to_string_lossy().into_owned(),
            ..Systemctl::default()
        }
    }

    fn status(r: &Round, name: &str) -> (String, String) {
        let i = r.items.iter().find(|i| i.key == name).unwrap();
        (
            i.attr("status")
                .and_then(|v| v.as_str())
                .unwrap()
                .to_owned(),
            i.attr("detail")
                .and_then(|v| v.as_str())
                .unwrap()
                .to_owned(),
        )
    }

    #[test]
    fn a_hung_manager_is_killed_within_the_check_timeout() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
        let sc = fake_systemctl(dir.path(), "exec sleep 30");
        let checker =
            Checker::with_systemctl(HostRoot::new(dir.path()), Duration::from_millis(500), sc);
        let t = Instant::now();
        let r = checker.evaluate(&[spec("unit", MonitorKind::SystemdUnit, "nginx.service")]);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(r.report.status, CollectorState::Ok);
        let (st, detail) = status(&r, "unit");
        assert_eq!(st, "unknown");
        assert!(
            detail.ends_with("/systemctl: timed out after 400ms and was killed"),
            "{detail}"
        );
    }

    #[test]
    fn a_hung_read_is_unknown_and_its_check_not_started_twice() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        let tcp = dir.path().join("proc/net/tcp");
        // A FIFO without a writer blocks open(2) like a wedged filesystem would.
        let made = std::process::Command::new("mkfifo")
            .arg(&tcp)
            .status()
            .unwrap();
        assert!(made.success());
        let root = HostRoot::new(dir.path());
        let checker = Checker::new(root, Duration::from_millis(300));
        let specs = [spec("port", MonitorKind::TcpPort, "22")];
        let t = Instant::now();
        let r = checker.evaluate(&specs);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(r.report.status, CollectorState::Ok);
        let overran = (
            "unknown".to_owned(),
            "check did not finish within 300ms".to_owned(),
        );
        assert_eq!(status(&r, "port"), overran);
        // While the first check hangs, the next round does not start a second one.
        assert!(checker.busy[kind_index(MonitorKind::TcpPort)].load(Ordering::SeqCst));
        assert_eq!(status(&checker.evaluate(&specs), "port"), overran);

        // Unblock it with an empty table; once it ended, rounds run checks again.
        fs::write(&tcp, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while checker.busy[kind_index(MonitorKind::TcpPort)].load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the check never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::remove_file(&tcp).unwrap();
        fs::write(&tcp, "").unwrap();
        assert_eq!(
            status(&checker.evaluate(&specs), "port"),
            ("down".into(), "nothing listens on TCP port 22".into())
        );
    }

    #[test]
    fn items_carry_kind_target_status_and_detail() {
        let s = spec("web", MonitorKind::TcpPort, "443");
        let i = item(&s, &Verdict::down("nothing listens on TCP port 443"));
        assert_eq!((i.class.as_str(), i.key.as_str()), ("monitor", "web"));
        let attr = |k: &str| i.attr(k).and_then(|v| v.as_str()).unwrap().to_owned();
        assert_eq!(attr("kind"), "tcp_port");
        assert_eq!(attr("target"), "443");
        assert_eq!(attr("status"), "down");
        assert_eq!(attr("detail"), "nothing listens on TCP port 443");
        let long = Verdict::unknown("x".repeat(1000));
        assert_eq!(long.detail.chars().count(), MAX_DETAIL_CHARS);
        let failed = Round::failed("boom");
        assert_eq!(failed.report.status, CollectorState::Error);
        assert_eq!(failed.report.classes, vec!["monitor".to_owned()]);
    }
}
