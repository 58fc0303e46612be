//! Which process holds a socket: the kernel's socket tables name an inode, and only the
//! /proc/<pid>/fd/N links ("socket:[inode]") tie it to a process.
//!
//! The scan walks pids in ascending order and stops as soon as every wanted inode has an
//! owner, so a socket shared by a parent and its children (nginx's master and workers) is
//! attributed to the lowest pid, the one that usually created it. Reading another user's
//! fd table needs root or CAP_SYS_PTRACE; such tables are counted, never guessed at.

use std::collections::{HashMap, HashSet};
use std::fs;

use super::proc_net::socket_inode;
use crate::discover::process::is_vanished;
use crate::hostroot::{HostRoot, ReadError};

/// At most this many fd links are read in one scan (a handful of processes with a million
/// descriptors must not stall the pass).
pub const MAX_FD_LINKS: usize = 1 << 20;

/// The result of one owner scan.
#[derive(Debug, Default)]
pub struct OwnerScan {
    /// socket inode → the lowest pid holding it.
    pub owners: HashMap<u64, u32>,
    /// Processes whose fd table could not be read for lack of privilege.
    pub denied: usize,
    /// The scan stopped at [`MAX_FD_LINKS`].
    pub capped: bool,
}

/// Finds the owners of `wanted` among `pids` (ascending).
pub fn scan(root: &HostRoot, pids: &[u32], wanted: &HashSet<u64>) -> OwnerScan {
    let mut scan = OwnerScan::default();
    let mut links = 0usize;
    for &pid in pids {
        if scan.owners.len() >= wanted.len() {
            break;
        }
        let dir = root.path(format!("/proc/{pid}/fd"));
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                if ReadError::from_io(&dir, e).is_permission_denied() {
                    scan.denied += 1;
                }
                // Otherwise the process exited: nothing to find there.
                continue;
            }
        };
        let mut denied_here = false;
        for entry in entries {
            let Ok(entry) = entry else { break };
            links += 1;
            if links > MAX_FD_LINKS {
                scan.capped = true;
                return scan;
            }
            let target = match fs::read_link(entry.path()) {
                Ok(t) => t,
                Err(e) => {
                    let e = ReadError::from_io(&entry.path(), e);
                    // A closed descriptor is normal; EACCES is a table we cannot see.
                    if !is_vanished(&e) && e.is_permission_denied() {
                        denied_here = true;
                        break;
                    }
                    continue;
                }
            };
            let Some(inode) = target.to_str().and_then(socket_inode) else {
                continue;
            };
            if wanted.contains(&inode) {
                scan.owners.entry(inode).or_insert(pid);
            }
        }
        if denied_here {
            scan.denied += 1;
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lowest_pid_wins_and_the_scan_stops_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let fd = |pid: u32, n: u32, target: &str| {
            let d = dir.path().join(format!("proc/{pid}/fd"));
            fs::create_dir_all(&d).unwrap();
            symlink(target, d.join(n.to_string())).unwrap();
        };
        fd(10, 0, "/dev/null");
        fd(10, 3, "socket:[100]");
        fd(11, 3, "socket:[100]");
        fd(11, 4, "socket:[200]");
        fd(12, 4, "socket:[300]");
        fd(12, 5, "pipe:[300]");
        let root = HostRoot::new(dir.path());
        let wanted: HashSet<u64> = [100, 200, 999].into_iter().collect();
        // 13 does not exist (exited): skipped silently.
        let s = scan(&root, &[10, 11, 12, 13], &wanted);
        assert_eq!(s.owners.get(&100), Some(&10));
        assert_eq!(s.owners.get(&200), Some(&11));
        assert_eq!(s.owners.len(), 2);
        assert_eq!((s.denied, s.capped), (0, false));
    }
}
