//! The `process` collector: running programs, aggregated by executable, from
//! /proc/<pid>/{status,exe,comm}.
//!
//! One CI per executable path (the `exe` link, " (deleted)" stripped and flagged), with how
//! many processes run it, as which users, and their pids (relations.rs matches a service's
//! `main_pid` against `pids`). Kernel threads are not programs and are only counted. The
//! class is volatile by design, so the scan stays cheap: two small reads per process (three
//! for the first of each executable), never cmdline or environ, at most [`MAX_PIDS`] pids.
//!
//! It never guesses: a process whose executable cannot be read for lack of privilege is
//! counted and reported as `permission_denied`, never attributed to anything; processes that
//! exit mid-scan are simply not there.

use std::collections::{BTreeMap, BTreeSet};

use cmdb_proto::model::{Item, class};

use super::passwd::AccountNames;
use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};

/// At most this many pids are looked at (pid_max defaults to 4 194 304 on 64-bit hosts).
pub const MAX_PIDS: usize = 65_536;

/// /proc/<pid>/status is ~1.5 KiB; anything far beyond is not a status file.
const STATUS_CAP: u64 = 64 * 1024;

pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PROCESS]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root)
    }
}

/// What one executable's processes add up to.
struct ByExe {
    /// comm of the lowest pid running it.
    name: String,
    count: u64,
    users: BTreeSet<String>,
    /// Ascending: pids are visited in ascending order.
    pids: Vec<i64>,
    /// Some process runs a binary that was replaced or removed since it started.
    deleted: bool,
}

fn collect(root: &HostRoot) -> Outcome {
    let mut out = Outcome::new();
    let (pids, total) = match list_pids(root, MAX_PIDS) {
        Ok(p) => p,
        Err(e) if e.is_not_found() => return Outcome::unsupported("no /proc on this host"),
        Err(e) if e.is_permission_denied() => {
            out.permission_denied(format!("cannot list processes: {e}"));
            return out;
        }
        Err(e) => return Outcome::error(format!("cannot list processes: {e}")),
    };
    if total > pids.len() {
        out.warn(format!(
            "scanned the first {} of {total} processes",
            pids.len()
        ));
    }
    let names = AccountNames::load(root).unwrap_or_else(|e| {
        out.warn(format!("user names unavailable, uids shown: {e}"));
        AccountNames::default()
    });

    let mut by_exe: BTreeMap<String, ByExe> = BTreeMap::new();
    let (mut kernel_threads, mut denied, mut seen) = (0usize, 0usize, 0usize);
    for pid in pids {
        let status = match root.read_to_string_capped(format!("/proc/{pid}/status"), STATUS_CAP) {
            Ok(text) => text,
            Err(e) if is_vanished(&e) => continue,
            Err(e) if e.is_permission_denied() => {
                denied += 1;
                continue;
            }
            Err(e) => {
                out.warn(e.to_string());
                continue;
            }
        };
        let status = match parse_status(&status) {
            Ok(s) => s,
            Err(reason) => {
                out.warn(format!("/proc/{pid}/status: {reason}"));
                continue;
            }
        };
        if status.kthread == Some(true) {
            kernel_threads += 1;
            continue;
        }
        let exe = match read_exe(root, pid) {
            Ok(Some(exe)) => exe,
            // An empty link is not a program we could name.
            Ok(None) => continue,
            // No readable exe (ENOENT as root, EACCES otherwise) under kthreadd.
            Err(e)
                if status.looks_like_kernel_thread(pid)
                    && (e.is_not_found() || e.is_permission_denied()) =>
            {
                kernel_threads += 1;
                continue;
            }
            // ENOENT here is a zombie or a process that just exited: nothing runs.
            Err(e) if is_vanished(&e) => continue,
            Err(e) if e.is_permission_denied() => {
                denied += 1;
                continue;
            }
            Err(e) => {
                out.warn(e.to_string());
                continue;
            }
        };
        seen += 1;
        let user = names.user(status.uid);
        let entry = by_exe.entry(exe.path).or_insert_with(|| ByExe {
            name: read_comm(root, pid)
                .or_else(|| status.name.clone())
                .unwrap_or_default(),
            count: 0,
            users: BTreeSet::new(),
            pids: Vec::new(),
            deleted: false,
        });
        entry.count += 1;
        entry.users.insert(user);
        entry.pids.push(i64::from(pid));
        entry.deleted |= exe.deleted;
    }

    if seen == 0 && denied == 0 {
        return Outcome::unsupported("no user processes readable under /proc");
    }
    if kernel_threads > 0 {
        // Informational: the status stays what it is.
        out.fail(
            out.state(),
            format!("{kernel_threads} kernel threads skipped"),
        );
    }
    if denied > 0 {
        out.permission_denied(format!(
            "processes not inventoried: {denied} ({})",
            denied_hint("the executables")
        ));
    }
    for (exe, p) in by_exe {
        out.push(
            Item::new(class::PROCESS, exe.clone())
                .with("exe", exe)
                .with("name", p.name)
                .with("count", p.count)
                .with("users", p.users.into_iter().collect::<Vec<_>>())
                .with("pids", p.pids)
                .with("deleted", p.deleted),
        );
    }
    out
}

/// Why /proc/<pid>/{exe,fd} was refused, for a message about `what`: without privilege the
/// answer is root or CAP_SYS_PTRACE; as root it is another user namespace or an LSM.
pub fn denied_hint(what: &str) -> String {
    if rustix::process::geteuid().is_root() {
        format!(
            "{what} of some processes are refused even to root: another user namespace or a security module"
        )
    } else {
        format!("{what} of other users' processes need root or CAP_SYS_PTRACE")
    }
}

/// The numeric entries of /proc in ascending order, at most `cap` of them, and how many
/// there were in all.
pub fn list_pids(root: &HostRoot, cap: usize) -> Result<(Vec<u32>, usize), ReadError> {
    let path = root.path("/proc");
    let rd = std::fs::read_dir(&path).map_err(|e| ReadError::from_io(&path, e))?;
    let mut pids: Vec<u32> = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| ReadError::from_io(&path, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(pid) = name.parse::<u32>()
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    let total = pids.len();
    pids.truncate(cap);
    Ok((pids, total))
}

/// A process's executable as its /proc/<pid>/exe link names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exe {
    /// The path, without the kernel's " (deleted)" suffix: the process CI key.
    pub path: String,
    /// The file was removed or replaced after the process started it.
    pub deleted: bool,
}

/// Reads /proc/<pid>/exe as link text (never followed). `Ok(None)` for an empty link.
pub fn read_exe(root: &HostRoot, pid: u32) -> Result<Option<Exe>, ReadError> {
    let link = root.read_link(format!("/proc/{pid}/exe"))?;
    Ok(exe_from_link(&link.to_string_lossy()))
}

/// " (deleted)" is how the kernel marks an executable unlinked since exec.
pub fn exe_from_link(link: &str) -> Option<Exe> {
    let (path, deleted) = match link.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (link, false),
    };
    (!path.is_empty()).then(|| Exe {
        path: path.to_owned(),
        deleted,
    })
}

/// /proc/<pid>/comm (the 15-byte task name), or `None` when unreadable.
pub fn read_comm(root: &HostRoot, pid: u32) -> Option<String> {
    root.read_trimmed(format!("/proc/{pid}/comm"))
        .ok()
        .flatten()
}

/// The process exited between listing and reading (ENOENT, or ESRCH from a dying task).
pub fn is_vanished(e: &ReadError) -> bool {
    match e {
        ReadError::NotFound(_) => true,
        ReadError::Io { source, .. } => {
            source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
        }
        _ => false,
    }
}

/// The fields of /proc/<pid>/status this collector uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    /// `Name:` (comm, with the kernel's escaping).
    pub name: Option<String>,
    /// `PPid:`.
    pub ppid: u32,
    /// The real uid (first of the four `Uid:` values).
    pub uid: u32,
    /// `Kthread:` (Linux ≥ 6.9); `None` on older kernels.
    pub kthread: Option<bool>,
}

impl ProcStatus {
    /// On kernels without the `Kthread:` line, kernel threads are kthreadd (pid 2) and its
    /// children. The caller also requires that there is no readable executable: inside a
    /// container's pid namespace, pid 2 is an ordinary program.
    pub fn looks_like_kernel_thread(&self, pid: u32) -> bool {
        self.kthread.is_none() && (pid == 2 || self.ppid == 2)
    }
}

/// Parses /proc/<pid>/status. `Err` when PPid or Uid is missing or not a number.
pub fn parse_status(text: &str) -> Result<ProcStatus, &'static str> {
    let (mut name, mut ppid, mut uid, mut kthread) = (None, None, None, None);
    for line in text.lines() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match field {
            "Name" => name = Some(value.to_owned()),
            "PPid" => ppid = Some(value.parse::<u32>().map_err(|_| "PPid is not a number")?),
            "Uid" => {
                let real = value.split_ascii_whitespace().next().unwrap_or_default();
                uid = Some(real.parse::<u32>().map_err(|_| "Uid is not a number")?);
            }
            "Kthread" => {
                kthread = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err("Kthread is not 0 or 1"),
                });
            }
            _ => {}
        }
    }
    Ok(ProcStatus {
        name,
        ppid: ppid.ok_or("no PPid line")?,
        uid: uid.ok_or("no Uid line")?,
        kthread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SSHD: &str = "Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t640\nNgid:\t0\nPid:\t640\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\n";

    #[test]
    fn parses_status() {
        let s = parse_status(SSHD).unwrap();
        assert_eq!(s.name.as_deref(), Some("sshd"));
        assert_eq!((s.ppid, s.uid, s.kthread), (1, 0, None));
        assert!(!s.looks_like_kernel_thread(640));
        let worker = parse_status("Name:\tnginx\nPPid:\t1101\nUid:\t993\t993\t993\t993\n").unwrap();
        assert_eq!(worker.uid, 993);
    }

    #[test]
    fn recognises_kernel_threads() {
        let kthreadd = parse_status("Name:\tkthreadd\nPPid:\t0\nUid:\t0\t0\t0\t0\n").unwrap();
        assert!(kthreadd.looks_like_kernel_thread(2));
        let rcu = parse_status("Name:\trcu_gp\nPPid:\t2\nUid:\t0\t0\t0\t0\n").unwrap();
        assert!(rcu.looks_like_kernel_thread(3));
        // Where the kernel says, it is believed (a container's pid 2 is a normal process).
        let new = parse_status("Name:\tsh\nPPid:\t0\nUid:\t0\t0\t0\t0\nKthread:\t0\n").unwrap();
        assert!(!new.looks_like_kernel_thread(2));
        let kw =
            parse_status("Name:\tkworker/0:1\nPPid:\t2\nUid:\t0\t0\t0\t0\nKthread:\t1\n").unwrap();
        assert_eq!(kw.kthread, Some(true));
    }

    #[test]
    fn rejects_incomplete_status() {
        assert_eq!(parse_status("Name:\tx\nUid:\t0\n"), Err("no PPid line"));
        assert_eq!(parse_status("PPid:\t1\n"), Err("no Uid line"));
        assert_eq!(
            parse_status("PPid:\tone\nUid:\t0\n"),
            Err("PPid is not a number")
        );
        assert_eq!(
            parse_status("PPid:\t1\nUid:\t\n"),
            Err("Uid is not a number")
        );
    }

    #[test]
    fn deleted_executables_are_flagged_not_renamed() {
        assert_eq!(
            exe_from_link("/usr/sbin/nginx (deleted)"),
            Some(Exe {
                path: "/usr/sbin/nginx".into(),
                deleted: true
            })
        );
        assert_eq!(
            exe_from_link("/usr/bin/bash").map(|e| e.deleted),
            Some(false)
        );
        assert_eq!(exe_from_link(""), None);
        assert_eq!(exe_from_link(" (deleted)"), None);
    }

    #[test]
    fn vanished_processes_are_recognised() {
        let p = std::path::Path::new("/proc/1/exe");
        assert!(is_vanished(&ReadError::NotFound(p.into())));
        let esrch = std::io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error());
        assert!(is_vanished(&ReadError::from_io(p, esrch)));
        let eacces = std::io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error());
        let e = ReadError::from_io(p, eacces);
        assert!(!is_vanished(&e) && e.is_permission_denied());
    }

    #[test]
    fn aggregates_a_tree_by_executable() {
        let dir = tempfile::tempdir().unwrap();
        let proc_ = |pid: u32, status: &str, exe: Option<&str>, comm: &str| {
            let d = dir.path().join(format!("proc/{pid}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("status"), status).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            if let Some(exe) = exe {
                std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
            }
        };
        proc_(
            2,
            "Name:\tkthreadd\nPPid:\t0\nUid:\t0 0 0 0\n",
            None,
            "kthreadd",
        );
        proc_(
            9,
            "Name:\tkworker\nPPid:\t2\nUid:\t0 0 0 0\n",
            None,
            "kworker",
        );
        proc_(
            30,
            "Name:\tnginx\nPPid:\t1\nUid:\t0 0 0 0\n",
            Some("/usr/sbin/nginx"),
            "nginx",
        );
        proc_(
            31,
            "Name:\tnginx\nPPid:\t30\nUid:\t101 101 101 101\n",
            Some("/usr/sbin/nginx (deleted)"),
            "nginx",
        );
        proc_(
            10,
            "Name:\tkworker/1\nPPid:\t2\nUid:\t0 0 0 0\nKthread:\t1\n",
            None,
            "kworker/1",
        );
        proc_(40, "Name:\tbroken\n", Some("/bin/broken"), "broken");
        // A zombie: status but no exe.
        proc_(
            41,
            "Name:\tdefunct\nPPid:\t1\nUid:\t0 0 0 0\n",
            None,
            "defunct",
        );
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();

        let out = collect(&HostRoot::new(dir.path()));
        assert_eq!(out.state(), cmdb_proto::model::CollectorState::Partial);
        let msg = out.message().unwrap();
        assert!(msg.contains("/proc/40/status: no PPid line"), "{msg}");
        assert!(msg.contains("3 kernel threads skipped"), "{msg}");
        assert_eq!(out.items.len(), 1);
        let i = &out.items[0];
        assert_eq!(i.key, "/usr/sbin/nginx");
        assert_eq!(i.attr("count"), Some(&2_i64.into()));
        assert_eq!(i.attr("pids"), Some(&vec![30_i64, 31].into()));
        assert_eq!(i.attr("users"), Some(&vec!["101", "root"].into()));
        assert_eq!(i.attr("deleted"), Some(&true.into()));
        assert_eq!(i.attr("name"), Some(&"nginx".into()));
    }

    #[test]
    fn no_proc_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let out = collect(&HostRoot::new(dir.path()));
        assert_eq!(out.state(), cmdb_proto::model::CollectorState::Unsupported);
    }

    proptest! {
        #[test]
        fn arbitrary_status_never_panics(s in any::<String>()) {
            let _ = parse_status(&s);
        }

        #[test]
        fn status_fields_round_trip(
            ppid in any::<u32>(), uid in any::<u32>(), k in proptest::option::of(any::<bool>()),
            noise in "[A-Za-z_]{1,12}:\t[ -~]{0,20}"
        ) {
            let mut text = format!("Name:\tx\n{noise}\nPPid:\t{ppid}\nUid:\t{uid}\t1\t2\t3\n");
            if let Some(k) = k {
                text.push_str(&format!("Kthread:\t{}\n", u8::from(k)));
            }
            let s = parse_status(&text);
            // The noise line may itself be a PPid/Uid/Kthread line; only check clean cases.
            if !["PPid", "Uid", "Kthread", "Name"].iter().any(|f| noise.starts_with(&format!("{f}:"))) {
                let s = s.unwrap();
                prop_assert_eq!((s.ppid, s.uid, s.kthread), (ppid, uid, k));
            }
        }
    }
}
