//! Discovery: every CI class of DESIGN.md, one collector per module, each run on its own
//! thread under its own timeout. One failing collector never fails the pass: its status
//! (ok / partial / timeout / error / permission_denied / unsupported) goes into the
//! inventory's `collectors` list, and consumers never read a missing class as "removed".
//!
//! A collector only reads through [`HostRoot`], never writes to the host, and runs external
//! programs only through [`crate::command::run`] (timeout + output cap).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use cmdb_proto::model::{
    self, AgentInfo, CollectorReport, CollectorState, Inventory, Item, Relation, class,
};

use crate::hostroot::HostRoot;

pub mod cpu;
pub mod disk;
pub mod files;
pub mod filesystem;
pub mod kernel_modules;
pub mod memory;
pub mod memory_modules;
pub mod network;
pub mod os;
pub mod packages;
pub mod passwd;
pub mod process;
pub mod relations;
pub mod service;
pub mod smbios;
pub mod sockets;
pub mod system;
pub mod users;

/// Default watch globs for `file` CIs: the configuration an operator expects tracked.
pub const DEFAULT_WATCH_GLOBS: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/fstab",
    "/etc/crontab",
    "/etc/cron.d/*",
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*",
    "/etc/pam.d/*",
    "/etc/security/limits.conf",
    "/etc/sysctl.conf",
    "/etc/sysctl.d/*",
    "/etc/systemd/system/*.service",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d/*",
    "/etc/yum.repos.d/*",
    "/etc/login.defs",
    "/etc/cmdb/*.toml",
];

/// Options that shape discovery (from the agent config or the command line).
#[derive(Clone, Debug)]
pub struct Options {
    /// Absolute host-path globs whose matches become `file` CIs.
    pub watch_globs: Vec<String>,
    /// Files larger than this are reported with size and metadata but not hashed.
    pub file_hash_cap_bytes: u64,
    /// At most this many `file` CIs per pass (a glob like /etc/** must not explode).
    pub max_watched_files: usize,
    /// Multiplier on every collector's own timeout (tests shrink it, slow hosts grow it).
    pub timeout_scale: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            watch_globs: DEFAULT_WATCH_GLOBS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            file_hash_cap_bytes: 16 * 1024 * 1024,
            max_watched_files: 4096,
            timeout_scale: 1.0,
        }
    }
}

/// What a collector gets: where the host is and how to look at it.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub root: HostRoot,
    pub options: Options,
}

/// One discovery collector.
pub trait Collector: Send + Sync {
    /// The name in the inventory's `collectors` list ("dpkg", "system", …).
    fn name(&self) -> &'static str;
    /// The CI classes this collector is authoritative for.
    fn classes(&self) -> &'static [&'static str];
    /// How long it may take before it is reported as `timeout`.
    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
    /// Discovers its CIs. Never panics on host input; bad entries become warnings.
    fn collect(&self, ctx: &Context) -> Outcome;
}

/// How many messages an outcome keeps verbatim; the rest are counted.
const MAX_MESSAGES: usize = 5;

/// The result of one collector run: items, relations it found itself, and its status.
#[derive(Debug)]
pub struct Outcome {
    pub items: Vec<Item>,
    pub relations: Vec<Relation>,
    state: CollectorState,
    messages: Vec<String>,
    dropped_messages: usize,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome::new()
    }
}

impl Outcome {
    /// An `ok` outcome with nothing in it yet.
    pub fn new() -> Self {
        Outcome {
            items: Vec::new(),
            relations: Vec::new(),
            state: CollectorState::Ok,
            messages: Vec::new(),
            dropped_messages: 0,
        }
    }

    /// This host has nothing for the collector (no dpkg database, no systemd).
    pub fn unsupported(message: impl Into<String>) -> Self {
        let mut o = Outcome::new();
        o.state = CollectorState::Unsupported;
        o.messages.push(message.into());
        o
    }

    /// The collector could not do its job at all.
    pub fn error(message: impl Into<String>) -> Self {
        let mut o = Outcome::new();
        o.fail(CollectorState::Error, message);
        o
    }

    pub fn push(&mut self, item: Item) {
        self.items.push(item);
    }

    pub fn relate(&mut self, from: String, to: String, kind: &str) {
        self.relations.push(Relation {
            from,
            to,
            kind: kind.to_owned(),
        });
    }

    /// Something worth telling that lost nothing (a fallback that worked): recorded with
    /// the status left as it is.
    pub fn note(&mut self, message: impl Into<String>) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(message.into());
        } else {
            self.dropped_messages += 1;
        }
    }

    /// A malformed or unreadable entry was skipped; the rest is kept (status `partial`).
    pub fn warn(&mut self, message: impl Into<String>) {
        self.fail(CollectorState::Partial, message);
    }

    /// Something could not be read for lack of privilege (status `permission_denied`).
    pub fn permission_denied(&mut self, message: impl Into<String>) {
        self.fail(CollectorState::PermissionDenied, message);
    }

    /// Records a message and raises the status to `state` if that is worse than the
    /// current one (ok < partial < permission_denied < error).
    pub fn fail(&mut self, state: CollectorState, message: impl Into<String>) {
        if severity(state) > severity(self.state) {
            self.state = state;
        }
        self.note(message);
    }

    pub fn state(&self) -> CollectorState {
        self.state
    }

    /// The messages joined for the report, with a count of those not kept.
    pub fn message(&self) -> Option<String> {
        if self.messages.is_empty() {
            return None;
        }
        let mut m = self.messages.join("; ");
        if self.dropped_messages > 0 {
            m.push_str(&format!(" (and {} more)", self.dropped_messages));
        }
        Some(m)
    }
}

fn severity(s: CollectorState) -> u8 {
    match s {
        CollectorState::Ok => 0,
        CollectorState::Partial => 1,
        CollectorState::PermissionDenied => 2,
        CollectorState::Timeout => 3,
        CollectorState::Error => 4,
        CollectorState::Unsupported => 5,
    }
}

/// Every collector this platform has, in report order.
pub fn registry() -> Vec<Arc<dyn Collector>> {
    vec![
        Arc::new(system::SystemCollector),
        Arc::new(memory_modules::MemoryModuleCollector),
        Arc::new(os::OsCollector),
        Arc::new(cpu::CpuCollector),
        Arc::new(memory::MemoryCollector),
        Arc::new(disk::DiskCollector),
        Arc::new(filesystem::FilesystemCollector),
        Arc::new(network::NetworkCollector),
        Arc::new(packages::dpkg::DpkgCollector),
        Arc::new(packages::rpm::RpmCollector),
        Arc::new(packages::apk::ApkCollector),
        Arc::new(packages::pacman::PacmanCollector),
        Arc::new(packages::snap::SnapCollector),
        Arc::new(packages::flatpak::FlatpakCollector),
        Arc::new(service::ServiceCollector),
        Arc::new(sockets::SocketCollector),
        Arc::new(process::ProcessCollector),
        Arc::new(users::UserCollector),
        Arc::new(kernel_modules::KernelModuleCollector),
        Arc::new(files::FileCollector),
    ]
}

/// A `--only` list naming a class that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown class {0:?} (known: {known})", known = class::ALL.join(", "))]
pub struct UnknownClass(pub String);

/// Parses "package,service" into a class set; `None` means every class.
pub fn parse_only(spec: &str) -> Result<BTreeSet<String>, UnknownClass> {
    let mut set = BTreeSet::new();
    for c in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if !class::ALL.contains(&c) {
            return Err(UnknownClass(c.to_owned()));
        }
        set.insert(c.to_owned());
    }
    Ok(set)
}

/// Classes the host identity block needs; their collectors always run.
const IDENTITY_CLASSES: &[&str] = &[class::SYSTEM, class::OS, class::NETWORK_INTERFACE];

/// Runs the collectors for `only` (all when `None`) and assembles the inventory.
pub fn run(ctx: &Context, agent: AgentInfo, only: Option<&BTreeSet<String>>) -> Inventory {
    run_with(ctx, agent, only, registry())
}

/// Runs only the collectors of `only`, without the identity collectors: the resident
/// agent's partial refreshes (ports every minute, re-hashed files) keep the host block of
/// their base inventory, so the `host` block of the result is incomplete.
pub fn run_partial(ctx: &Context, agent: AgentInfo, only: &BTreeSet<String>) -> Inventory {
    let collectors = registry()
        .into_iter()
        .filter(|c| c.classes().iter().any(|cl| only.contains(*cl)))
        .collect();
    run_with(ctx, agent, Some(only), collectors)
}

/// [`run`] with an explicit collector set (tests inject slow or failing collectors).
pub fn run_with(
    ctx: &Context,
    agent: AgentInfo,
    only: Option<&BTreeSet<String>>,
    collectors: Vec<Arc<dyn Collector>>,
) -> Inventory {
    let wanted = |c: &str| only.is_none_or(|o| o.contains(c));
    let selected: Vec<Arc<dyn Collector>> = collectors
        .into_iter()
        .filter(|c| {
            c.classes()
                .iter()
                .any(|cl| wanted(cl) || IDENTITY_CLASSES.contains(cl))
        })
        .collect();

    let collected_at = SystemTime::now();
    let results = run_collectors(ctx, &selected);

    let mut all_items = Vec::new();
    let mut relations = Vec::new();
    let mut reports = Vec::new();
    for (collector, result) in selected.iter().zip(results) {
        let reported = collector.classes().iter().any(|cl| wanted(cl));
        let (report, outcome) = result;
        if reported {
            reports.push(report);
        }
        if let Some(o) = outcome {
            all_items.extend(o.items);
            relations.extend(o.relations);
        }
    }

    let host = crate::identity::host_identity(ctx, &all_items);
    relations.extend(relations::derive(&all_items));
    let mut items: Vec<Item> = all_items.into_iter().filter(|i| wanted(&i.class)).collect();
    items.sort_by(|a, b| (&a.class, &a.key).cmp(&(&b.class, &b.key)));
    relations::retain_resolvable(&mut relations, &items);

    let mut inv = Inventory {
        schema: model::SCHEMA.to_owned(),
        collected_at,
        agent,
        host,
        collectors: reports,
        items,
        relations,
    };
    inv.canonicalize();
    inv
}

type RunResult = (CollectorReport, Option<Outcome>);

/// Runs each collector on its own thread; one that overruns its timeout is reported as
/// `timeout` and abandoned (its thread finishes or dies with the process; its late result
/// is discarded).
fn run_collectors(ctx: &Context, collectors: &[Arc<dyn Collector>]) -> Vec<RunResult> {
    let ctx = Arc::new(ctx.clone());
    let (tx, rx) = mpsc::channel::<(usize, Outcome, Duration)>();
    let start = Instant::now();
    let mut deadlines = Vec::with_capacity(collectors.len());
    let mut results: Vec<Option<RunResult>> = (0..collectors.len()).map(|_| None).collect();

    for (idx, c) in collectors.iter().enumerate() {
        let timeout = c.timeout().mul_f64(ctx.options.timeout_scale.max(0.001));
        deadlines.push(start + timeout);
        let c2 = Arc::clone(c);
        let ctx2 = Arc::clone(&ctx);
        let tx2 = tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("discover-{}", c.name()))
            .spawn(move || {
                let t = Instant::now();
                // A collector bug must cost only that collector, never the pass.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c2.collect(&ctx2)))
                        .unwrap_or_else(|_| {
                            Outcome::error("collector panicked (a bug; please report)")
                        });
                let _ = tx2.send((idx, outcome, t.elapsed()));
            });
        if let Err(e) = spawned {
            results[idx] = Some(report_for(
                c.as_ref(),
                Outcome::error(format!("cannot start collector thread: {e}")),
                Duration::ZERO,
            ));
        }
    }
    drop(tx);

    loop {
        let pending: Vec<usize> = (0..collectors.len())
            .filter(|i| results[*i].is_none())
            .collect();
        let Some(next_deadline) = pending.iter().map(|i| deadlines[*i]).min() else {
            break;
        };
        let wait = next_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((idx, outcome, took)) => {
                if results[idx].is_none() {
                    results[idx] = Some(report_for(collectors[idx].as_ref(), outcome, took));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                for i in pending {
                    if deadlines[i] <= now && results[i].is_none() {
                        let c = &collectors[i];
                        let took = now.duration_since(start);
                        results[i] = Some((
                            CollectorReport {
                                name: c.name().to_owned(),
                                status: CollectorState::Timeout,
                                duration_ms: millis(took),
                                items: 0,
                                message: Some(format!(
                                    "gave up after {} ms",
                                    millis(deadlines[i].duration_since(start))
                                )),
                                classes: classes_of(c.as_ref()),
                            },
                            None,
                        ));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    results
        .into_iter()
        .zip(collectors)
        .map(|(r, c)| {
            r.unwrap_or_else(|| {
                // Only reachable if the process ran out of threads mid-pass.
                report_for(
                    c.as_ref(),
                    Outcome::error("collector ended without a result"),
                    Duration::ZERO,
                )
            })
        })
        .collect()
}

fn report_for(c: &dyn Collector, outcome: Outcome, took: Duration) -> RunResult {
    let report = CollectorReport {
        name: c.name().to_owned(),
        status: outcome.state(),
        duration_ms: millis(took),
        items: outcome.items.len() as u64,
        message: outcome.message(),
        classes: classes_of(c),
    };
    (report, Some(outcome))
}

fn classes_of(c: &dyn Collector) -> Vec<String> {
    c.classes().iter().map(|s| (*s).to_owned()).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow;
    impl Collector for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn classes(&self) -> &'static [&'static str] {
            &[class::PROCESS]
        }
        fn timeout(&self) -> Duration {
            Duration::from_millis(100)
        }
        fn collect(&self, _: &Context) -> Outcome {
            thread::sleep(Duration::from_secs(5));
            Outcome::new()
        }
    }

    struct Panics;
    impl Collector for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn classes(&self) -> &'static [&'static str] {
            &[class::USER]
        }
        #[allow(clippy::panic)]
        fn collect(&self, _: &Context) -> Outcome {
            panic!("boom")
        }
    }

    struct Fine;
    impl Collector for Fine {
        fn name(&self) -> &'static str {
            "fine"
        }
        fn classes(&self) -> &'static [&'static str] {
            &[class::KERNEL_MODULE]
        }
        fn collect(&self, _: &Context) -> Outcome {
            let mut o = Outcome::new();
            o.push(Item::new(class::KERNEL_MODULE, "ext4"));
            o.warn("line 3: malformed");
            o
        }
    }

    fn agent() -> AgentInfo {
        AgentInfo {
            version: "t".into(),
            instance_id: "i".into(),
        }
    }

    #[test]
    fn slow_and_panicking_collectors_cost_only_themselves() {
        let t = Instant::now();
        let inv = run_with(
            &Context::default(),
            agent(),
            None,
            vec![Arc::new(Slow), Arc::new(Panics), Arc::new(Fine)],
        );
        assert!(t.elapsed() < Duration::from_secs(3));
        let status = |n: &str| inv.collectors.iter().find(|c| c.name == n).unwrap().status;
        assert_eq!(status("slow"), CollectorState::Timeout);
        assert_eq!(status("panics"), CollectorState::Error);
        assert_eq!(status("fine"), CollectorState::Partial);
        assert_eq!(inv.items.len(), 1);
    }

    #[test]
    fn only_filters_classes_and_reports() {
        let only = parse_only("kernel_module").unwrap();
        let inv = run_with(
            &Context::default(),
            agent(),
            Some(&only),
            vec![Arc::new(Panics), Arc::new(Fine)],
        );
        assert_eq!(inv.collectors.len(), 1);
        assert!(parse_only("kernel_module,nope").is_err());
    }

    #[test]
    fn partial_runs_skip_the_identity_collectors() {
        let only = parse_only("kernel_module").unwrap();
        let inv = run_partial(&Context::default(), agent(), &only);
        let names: Vec<&str> = inv.collectors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["kernel_modules"]);
    }

    #[test]
    fn outcome_keeps_the_worst_state_and_bounds_messages() {
        let mut o = Outcome::new();
        for i in 0..20 {
            o.warn(format!("w{i}"));
        }
        o.permission_denied("no access");
        assert_eq!(o.state(), CollectorState::PermissionDenied);
        assert!(o.message().unwrap().contains("and 16 more"));
    }

    #[test]
    fn a_note_is_told_without_changing_the_state() {
        let mut o = Outcome::new();
        o.note("netlink refused; /proc/net/tcp read instead");
        assert_eq!(o.state(), CollectorState::Ok);
        assert!(o.message().unwrap().contains("/proc/net/tcp read instead"));
        o.warn("line 3: bad");
        assert_eq!(o.state(), CollectorState::Partial);
    }
}
