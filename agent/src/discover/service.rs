//! `service` CIs: the host's systemd `.service` units, loaded or merely installed (a
//! disabled service is a CI too). Other unit types (sockets, timers, mounts, targets) are
//! out of scope: they are not what an operator means by "the services on this host".
//!
//! systemd is present when `/run/systemd/system` exists under the host root (the test
//! `sd_booted()` makes); otherwise the collector is `unsupported`. Runtime state only exists
//! in the running manager, so the collector asks it through `systemctl` (three or more runs,
//! each under its own timeout, all within a budget shorter than the collector's timeout, each
//! with capped output):
//! `list-units --type=service --all` (loaded units and their states),
//! `list-unit-files --type=service` (installed units, including disabled ones) and batched
//! `show -p …` (details, in chunks so the argument list stays bounded).
//! `--root` is never used: it only reads unit files, not runtime state. In container mode
//! (`--host-root /host`) the host's `/run/systemd` must be mounted at the container's
//! `/run/systemd`, so that `systemctl` reaches the host manager's private socket; then no
//! `SYSTEMD_*` environment is needed.
//!
//! Any failing or hung `systemctl` run fails the whole collector (status `error` or
//! `timeout`, no items) rather than reporting units with half their attributes, which
//! would read as drift. Unparseable output lines are skipped with a warning (`partial`).
//! Units that the manager only knows as missing references (`not-found` and inactive, with
//! no unit file) are not services on this host and are left out; template unit files
//! (`getty@.service`) and aliases are left out too (their instances and targets are listed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cmdb_proto::model::{CollectorState, Item, class};

use super::{Collector, Context, Outcome};
use crate::command::{self, CommandError};

mod systemctl;

pub use systemctl::{
    Exec, ListedUnit, ShownUnit, parse_exec, parse_list_unit_files, parse_list_units, parse_show,
};

/// The properties asked of `systemctl show`.
pub const SHOW_PROPERTIES: &str = "Id,Description,LoadState,ActiveState,SubState,UnitFileState,MainPID,ExecStart,FragmentPath,User";

pub struct ServiceCollector;

impl Collector for ServiceCollector {
    fn name(&self) -> &'static str {
        "systemd"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::SERVICE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect_with(ctx, &Systemctl::default())
    }
}

/// How the collector runs `systemctl` (tests substitute the program and shrink the limits).
#[derive(Clone, Debug)]
pub struct Systemctl {
    /// The program, looked up on PATH when not a path.
    pub program: String,
    /// Timeout for one run (scaled by `Options::timeout_scale`).
    pub per_command: Duration,
    /// Time for all runs together; below the collector's 10 s timeout so that a slow
    /// manager is reported by us, with a reason, not by the runner.
    pub budget: Duration,
    /// At most this many unit names per `show` run.
    pub chunk: usize,
    /// Output cap for one run.
    pub output_cap: usize,
}

impl Default for Systemctl {
    fn default() -> Self {
        Systemctl {
            program: "systemctl".to_owned(),
            per_command: Duration::from_secs(4),
            budget: Duration::from_secs(8),
            // 256 names of at most 255 bytes: 64 KiB of argv, far below ARG_MAX.
            chunk: 256,
            output_cap: 8 * 1024 * 1024,
        }
    }
}

/// Runs the collector with an explicit `systemctl`.
pub fn collect_with(ctx: &Context, sc: &Systemctl) -> Outcome {
    if !ctx.root.exists("/run/systemd/system") {
        return Outcome::unsupported("systemd is not running (no /run/systemd/system)");
    }
    let scale = ctx.options.timeout_scale.max(0.001);
    let mut runner = Runner {
        sc,
        per_command: sc.per_command.mul_f64(scale),
        deadline: Instant::now() + sc.budget.mul_f64(scale),
    };
    match discover(&mut runner) {
        Ok(outcome) => outcome,
        Err(e) => failed(&e),
    }
}

/// Runs `systemctl` within the per-command timeout and the overall budget.
struct Runner<'a> {
    sc: &'a Systemctl,
    per_command: Duration,
    deadline: Instant,
}

impl Runner<'_> {
    fn run(&mut self, args: &[&str]) -> Result<String, CommandError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = self.per_command.min(left);
        if timeout.is_zero() {
            return Err(CommandError::Timeout {
                program: self.sc.program.clone(),
                timeout: self.per_command,
            });
        }
        let out = command::run(&self.sc.program, args, timeout, self.sc.output_cap)?;
        Ok(match String::from_utf8(out.stdout) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// The outcome for a `systemctl` run that did not succeed.
fn failed(e: &CommandError) -> Outcome {
    match e {
        CommandError::Timeout { .. } => {
            let mut o = Outcome::new();
            o.fail(
                CollectorState::Timeout,
                format!("systemd manager did not answer: {e}"),
            );
            o
        }
        CommandError::NotFound(_) => Outcome::error(format!(
            "{e} (systemd is running, but systemctl is not installed where the agent runs)"
        )),
        _ => Outcome::error(e.to_string()),
    }
}

fn discover(runner: &mut Runner<'_>) -> Result<Outcome, CommandError> {
    let mut out = Outcome::new();
    let listed_text = runner.run(&[
        "list-units",
        "--type=service",
        "--all",
        "--plain",
        "--no-legend",
        "--no-pager",
    ])?;
    let (listed, warnings) = parse_list_units(&listed_text);
    warnings.into_iter().for_each(|w| out.warn(w));
    let files_text = runner.run(&[
        "list-unit-files",
        "--type=service",
        "--no-legend",
        "--no-pager",
    ])?;
    let (files, warnings) = parse_list_unit_files(&files_text);
    warnings.into_iter().for_each(|w| out.warn(w));

    let listed: BTreeMap<String, ListedUnit> =
        listed.into_iter().map(|u| (u.name.clone(), u)).collect();
    let files: BTreeMap<String, String> = files.into_iter().collect();
    let names: Vec<&str> = listed
        .keys()
        .chain(files.keys())
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // Keyed by the name asked for: `show` answers an alias under the real unit's Id, and
    // its blocks come back in the order asked, so they are matched by position.
    let mut shown: BTreeMap<&str, ShownUnit> = BTreeMap::new();
    // Alias name → the unit it names.
    let mut alias_of: BTreeMap<&str, String> = BTreeMap::new();
    for chunk in names.chunks(runner.sc.chunk.max(1)) {
        let mut args = vec!["show", "--no-pager", "-p", SHOW_PROPERTIES, "--"];
        args.extend_from_slice(chunk);
        let text = runner.run(&args)?;
        let (blocks, warnings) = parse_show(&text);
        warnings.into_iter().for_each(|w| out.warn(w));
        if blocks.len() == chunk.len() {
            for (asked, block) in chunk.iter().zip(blocks) {
                if *asked != block.id {
                    alias_of.insert(asked, block.id.clone());
                }
                shown.insert(asked, block);
            }
        } else {
            // Should not happen; fall back to matching by Id and say so.
            out.warn(format!(
                "systemctl show answered {} blocks for {} units",
                blocks.len(),
                chunk.len()
            ));
            for block in blocks {
                if let Some(asked) = chunk.iter().find(|n| **n == block.id) {
                    shown.insert(asked, block);
                }
            }
        }
    }

    for name in &names {
        if alias_of
            .get(name)
            .is_some_and(|target| names.binary_search(&target.as_str()).is_ok())
        {
            continue;
        }
        let item = service_item(name, listed.get(*name), files.get(*name), shown.get(name));
        let orphan_reference = !files.contains_key(*name)
            && item.attr("load_state").and_then(|v| v.as_str()) == Some("not-found")
            && item.attr("active_state").and_then(|v| v.as_str()) == Some("inactive");
        if !orphan_reference {
            out.push(item);
        }
    }
    Ok(out)
}

/// One `service` CI from whatever the three outputs said about the unit (`show` wins).
fn service_item(
    name: &str,
    listed: Option<&ListedUnit>,
    file_state: Option<&String>,
    shown: Option<&ShownUnit>,
) -> Item {
    let prop = |p: &str| shown.and_then(|s| s.get(p)).map(str::to_owned);
    let from_list = |f: fn(&ListedUnit) -> &String| {
        listed
            .map(f)
            .filter(|v| !v.is_empty())
            .map(String::to_owned)
    };
    let exec = shown
        .and_then(|s| s.exec_start.first())
        .and_then(|v| parse_exec(v));
    let main_pid = prop("MainPID")
        .and_then(|p| p.parse::<i64>().ok())
        .filter(|p| *p > 0);
    Item::new(class::SERVICE, name)
        .with("manager", "systemd")
        .with(
            "description",
            prop("Description").or_else(|| from_list(|u| &u.description)),
        )
        .with(
            "load_state",
            prop("LoadState").or_else(|| from_list(|u| &u.load)),
        )
        .with(
            "active_state",
            prop("ActiveState").or_else(|| from_list(|u| &u.active)),
        )
        .with(
            "sub_state",
            prop("SubState").or_else(|| from_list(|u| &u.sub)),
        )
        .with(
            "enabled",
            prop("UnitFileState").or_else(|| file_state.cloned()),
        )
        .with("main_pid", main_pid)
        .with("exec", exec.as_ref().map(|e| e.path.clone()))
        .with("exec_args", exec.map(|e| e.argv))
        .with("fragment_path", prop("FragmentPath"))
        .with("user", prop("User"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostroot::HostRoot;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn ctx_with_systemd() -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
        let ctx = Context {
            root: HostRoot::new(dir.path()),
            ..Context::default()
        };
        (dir, ctx)
    }

    fn script(dir: &std::path::Path, body: &str) -> String {
        let p = dir.join("systemctl");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn no_systemd_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context {
            root: HostRoot::new(dir.path()),
            ..Context::default()
        };
        let o = ServiceCollector.collect(&ctx);
        assert_eq!(o.state(), CollectorState::Unsupported);
        assert_eq!(
            o.message().as_deref(),
            Some("systemd is not running (no /run/systemd/system)")
        );
    }

    #[test]
    fn a_hung_manager_is_a_timeout_not_a_hang() {
        let (dir, ctx) = ctx_with_systemd();
        let sc = Systemctl {
            program: script(dir.path(), "exec sleep 30"),
            per_command: Duration::from_millis(300),
            budget: Duration::from_secs(1),
            ..Systemctl::default()
        };
        let t = Instant::now();
        let o = collect_with(&ctx, &sc);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(o.state(), CollectorState::Timeout);
        assert!(o.items.is_empty());
        let m = o.message().unwrap();
        assert!(m.contains("systemd manager did not answer"), "{m}");
    }

    #[test]
    fn failures_and_absence_are_errors() {
        let (dir, ctx) = ctx_with_systemd();
        let sc = Systemctl {
            program: script(dir.path(), "echo 'Failed to connect to bus' >&2; exit 1"),
            ..Systemctl::default()
        };
        let o = collect_with(&ctx, &sc);
        assert_eq!(o.state(), CollectorState::Error);
        assert!(o.message().unwrap().contains("Failed to connect to bus"));
        let sc = Systemctl {
            program: "/nonexistent/systemctl".to_owned(),
            ..Systemctl::default()
        };
        let o = collect_with(&ctx, &sc);
        assert_eq!(o.state(), CollectorState::Error);
        assert!(o.message().unwrap().contains("not installed"));
    }

    #[test]
    fn units_are_merged_chunked_and_aliases_dropped() {
        let (dir, ctx) = ctx_with_systemd();
        let log = dir.path().join("calls");
        // Answers `show` with one block per name, mapping the alias sshd → ssh.
        let body = format!(
            r#"echo "$*" >> {log}
case "$1" in
list-units) printf 'ssh.service loaded active running OpenBSD Secure Shell server\nghost.service not-found inactive dead ghost.service\n' ;;
list-unit-files) printf 'ssh.service enabled enabled\nsshd.service enabled enabled\nrsync.service disabled disabled\n' ;;
show)
  shift 5; first=1
  for u in "$@"; do
    [ $first = 1 ] || echo; first=0
    case "$u" in
      sshd.service|ssh.service) printf 'MainPID=612\nExecStart={{ path=/usr/sbin/sshd ; argv[]=/usr/sbin/sshd -D ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=612 ; code=(null) ; status=0/0 }}\nUser=\nId=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n' ;;
      ghost.service) printf 'MainPID=0\nUser=\nId=ghost.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n' ;;
      *) printf 'MainPID=0\nUser=\nId=%s\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nUnitFileState=disabled\n' "$u" ;;
    esac
  done ;;
esac"#,
            log = log.display()
        );
        let sc = Systemctl {
            program: script(dir.path(), &body),
            chunk: 2,
            ..Systemctl::default()
        };
        let o = collect_with(&ctx, &sc);
        assert_eq!(o.state(), CollectorState::Ok, "{:?}", o.message());
        let keys: Vec<&str> = o.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["rsync.service", "ssh.service"]);
        let ssh = &o.items[1];
        assert_eq!(ssh.attr("main_pid").and_then(|v| v.as_i64()), Some(612));
        assert_eq!(
            ssh.attr("exec").and_then(|v| v.as_str()),
            Some("/usr/sbin/sshd")
        );
        assert!(ssh.attr("user").is_some_and(|v| v.is_null()));
        // Described only by list-units (show said nothing): falls back to the list.
        assert_eq!(
            ssh.attr("description").and_then(|v| v.as_str()),
            Some("OpenBSD Secure Shell server")
        );
        let calls = fs::read_to_string(&log).unwrap();
        let shows: Vec<&str> = calls.lines().filter(|l| l.starts_with("show")).collect();
        assert_eq!(shows.len(), 2, "{calls}");
        assert!(
            shows[0].ends_with("-- ghost.service rsync.service"),
            "{calls}"
        );
    }
}
