//! `process` monitors: up when at least one process runs the target, an executable's base
//! name ("nginx") or absolute path ("/usr/sbin/nginx"). One pass over /proc under the host
//! root serves every process monitor of a round, through the `process` collector's readers
//! ([`crate::discover::process::list_pids`], `read_exe`, `read_comm`).
//!
//! Matching: an absolute target matches a process whose /proc/<pid>/exe names exactly that
//! path (an executable replaced since it started, "… (deleted)", still counts: the program
//! runs). A base name matches the base name of the executable, or the process's `comm` (a
//! script started through its `#!` line runs /usr/bin/python3 but is named after itself).
//! Zombies and kernel threads have no executable and never match.
//!
//! Without root (or CAP_SYS_PTRACE) other users' executables are unreadable; their `comm`
//! (at most 15 bytes) still is. Such a process counts for a base-name target its `comm`
//! equals; when it merely *might* be the target (its `comm` equals the target's first 15
//! bytes of base name, but the target is a path or longer than a `comm`), and nothing else
//! matched, the monitor is `unknown` rather than a possibly false `down`.

use std::collections::BTreeSet;

use super::{MonitorSpec, Verdict};
use crate::discover::process::{self, MAX_PIDS};
use crate::hostroot::HostRoot;

/// The kernel's task name length, without the terminating NUL (TASK_COMM_LEN - 1).
const COMM_BYTES: usize = 15;

/// What could be learned about one process.
#[derive(Clone, Debug)]
struct Proc {
    comm: Option<String>,
    /// The executable's path; `None` when it exists but is unreadable (permission).
    exe: Option<String>,
}

/// One verdict per spec, in order.
pub fn check(root: &HostRoot, specs: &[&MonitorSpec]) -> Vec<Verdict> {
    match processes(root) {
        Ok(procs) => specs.iter().map(|s| verdict(&procs, &s.target)).collect(),
        Err(e) => vec![Verdict::unknown(format!("cannot list processes: {e}")); specs.len()],
    }
}

/// Every process with a readable or permission-denied executable.
fn processes(root: &HostRoot) -> Result<Vec<Proc>, crate::hostroot::ReadError> {
    let (pids, _) = process::list_pids(root, MAX_PIDS)?;
    let mut procs = Vec::with_capacity(pids.len());
    for pid in pids {
        let exe = match process::read_exe(root, pid) {
            Ok(Some(exe)) => Some(exe.path),
            Err(e) if e.is_permission_denied() => None,
            // An empty link, a zombie, a kernel thread, a process gone meanwhile.
            Ok(None) | Err(_) => continue,
        };
        procs.push(Proc {
            comm: process::read_comm(root, pid),
            exe,
        });
    }
    Ok(procs)
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The first 15 bytes of `name`, as the kernel truncates a task name.
fn as_comm(name: &str) -> &str {
    let mut end = name.len().min(COMM_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn verdict(procs: &[Proc], target: &str) -> Verdict {
    let absolute = target.starts_with('/');
    let comm_form = as_comm(base_name(target));
    let mut running: BTreeSet<&str> = BTreeSet::new();
    let (mut by_comm_only, mut maybe) = (false, false);
    for p in procs {
        let comm = p.comm.as_deref();
        match &p.exe {
            Some(exe) => {
                let hit = if absolute {
                    exe == target
                } else {
                    base_name(exe) == target || comm == Some(target)
                };
                if hit {
                    running.insert(exe);
                }
            }
            None if !absolute && comm == Some(target) => by_comm_only = true,
            None if comm == Some(comm_form) => maybe = true,
            None => {}
        }
    }
    if let Some(exe) = running.first() {
        return Verdict::up(format!("running: {exe}"));
    }
    if by_comm_only {
        return Verdict::up(format!(
            "running: a process named {target} (its executable is unreadable)"
        ));
    }
    if maybe {
        return Verdict::unknown(format!(
            "a process named {comm_form} runs but its executable is unreadable (the agent needs root or CAP_SYS_PTRACE)"
        ));
    }
    if absolute {
        Verdict::down(format!("no process runs {target}"))
    } else {
        Verdict::down(format!("no process named {target}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::MonitorKind;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// A /proc tree in the kernel's formats: exe symlinks, comm files with a newline.
    fn proc_(root: &Path, pid: u32, exe: Option<&str>, comm: &str) {
        let d = root.join(format!("proc/{pid}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(
            d.join("status"),
            format!("Name:\t{comm}\nPPid:\t1\nUid:\t0\t0\t0\t0\n"),
        )
        .unwrap();
        if let Some(exe) = exe {
            symlink(exe, d.join("exe")).unwrap();
        }
    }

    fn run(root: &Path, targets: &[&str]) -> Vec<Verdict> {
        let specs: Vec<MonitorSpec> = targets
            .iter()
            .map(|t| MonitorSpec {
                name: (*t).into(),
                kind: MonitorKind::Process,
                target: (*t).into(),
            })
            .collect();
        let refs: Vec<&MonitorSpec> = specs.iter().collect();
        check(&HostRoot::new(root), &refs)
    }

    #[test]
    fn matches_by_base_name_path_and_comm() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        proc_(r, 1, Some("/usr/lib/systemd/systemd"), "systemd");
        proc_(r, 640, Some("/usr/sbin/nginx"), "nginx");
        proc_(r, 641, Some("/usr/sbin/nginx (deleted)"), "nginx");
        // A script run through its #! line.
        proc_(r, 700, Some("/usr/bin/python3.11"), "backup-agent");
        // journald names itself with the 15-byte comm "systemd-journal".
        proc_(
            r,
            300,
            Some("/usr/lib/systemd/systemd-journald"),
            "systemd-journal",
        );
        // A kernel thread and a zombie: no executable.
        proc_(r, 2, None, "kthreadd");
        proc_(r, 900, None, "redis-server");
        let v = run(
            r,
            &[
                "nginx",
                "/usr/sbin/nginx",
                "backup-agent",
                "python3.11",
                "systemd-journald",
                "/usr/sbin/apache2",
                "redis-server",
                "kthreadd",
            ],
        );
        assert_eq!(v[0], Verdict::up("running: /usr/sbin/nginx"));
        assert_eq!(v[1], Verdict::up("running: /usr/sbin/nginx"));
        assert_eq!(v[2], Verdict::up("running: /usr/bin/python3.11"));
        assert_eq!(v[3], Verdict::up("running: /usr/bin/python3.11"));
        assert_eq!(
            v[4],
            Verdict::up("running: /usr/lib/systemd/systemd-journald")
        );
        assert_eq!(v[5], Verdict::down("no process runs /usr/sbin/apache2"));
        assert_eq!(v[6], Verdict::down("no process named redis-server"));
        assert_eq!(v[7], Verdict::down("no process named kthreadd"));
    }

    #[test]
    fn the_fixture_host_runs_sshd_and_a_deleted_billing_api() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian12");
        let v = run(&root, &["sshd", "/opt/billing/bin/billing-api", "nginx"]);
        assert_eq!(v[0], Verdict::up("running: /usr/sbin/sshd"));
        assert_eq!(v[1], Verdict::up("running: /opt/billing/bin/billing-api"));
        assert_eq!(v[2], Verdict::down("no process named nginx"));
    }

    #[test]
    fn no_proc_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let v = run(dir.path(), &["nginx"]);
        assert_eq!(v[0].status, cmdb_proto::monitor::MonitorStatus::Unknown);
        assert!(v[0].detail.starts_with("cannot list processes: "), "{v:?}");
    }

    #[test]
    fn unreadable_executables_are_judged_by_comm_or_left_unknown() {
        let procs = [
            Proc {
                comm: Some("nginx".into()),
                exe: None,
            },
            Proc {
                comm: Some("systemd-journal".into()),
                exe: None,
            },
        ];
        assert_eq!(
            verdict(&procs, "nginx"),
            Verdict::up("running: a process named nginx (its executable is unreadable)")
        );
        let unsure = Verdict::unknown(
            "a process named nginx runs but its executable is unreadable (the agent needs root or CAP_SYS_PTRACE)",
        );
        assert_eq!(verdict(&procs, "/usr/sbin/nginx"), unsure);
        assert_eq!(
            verdict(&procs, "systemd-journald").status,
            cmdb_proto::monitor::MonitorStatus::Unknown
        );
        assert_eq!(
            verdict(&procs, "sshd"),
            Verdict::down("no process named sshd")
        );
        assert_eq!(as_comm("ééééééééé"), "ééééééé");
    }
}
