//! Mounted filesystems as `filesystem` CIs, keyed by mount point, from mountinfo: on the
//! live host /proc/self/mountinfo (the agent's mount namespace), unless systemd is init and
//! the agent runs in a mount namespace other than init's (a sandboxed unit:
//! ProtectSystem=strict shows every mount read-only there) and can read init's, then
//! /proc/1/mountinfo; under another host root
//! /proc/1/mountinfo (the host's init, i.e. the host's namespace when /proc is the host's).
//! Both fall back to /proc/self/mountinfo.
//!
//! What counts: filesystems that hold data an operator configured — block-device
//! filesystems, network filesystems (nfs, cifs, …), overlay (a container's root) and FUSE
//! filesystems. Skipped, by rule:
//! - kernel and memory pseudo filesystems (proc, sysfs, cgroup, debugfs, …) **and tmpfs**:
//!   /run, /dev/shm and /run/user/<uid> are runtime state that comes and goes with logins,
//!   not configuration, and never have a disk under them;
//! - snap squashfs images under /snap/ (one per installed revision: they are packages, and
//!   the `snap` collector reports them; their loop devices stay visible as `disk` CIs);
//! - container-runtime internals: mounts under /var/lib/docker/, /var/lib/containers/,
//!   /var/lib/containerd/, /run/containerd/, /run/docker/ and /var/lib/kubelet/pods/ (one
//!   per running container or pod), and the files a runtime binds into a container
//!   (/etc/hosts, /etc/hostname, /etc/resolv.conf, …), and any other mount point that is a
//!   file rather than a directory;
//! - bind mounts of a subtree of a filesystem that is also mounted here in full (the
//!   `root` field of mountinfo is not "/", and for btrfs not the mounted subvolume): the
//!   same filesystem is already a CI.
//!
//! When a mount point is mounted over, the last mount (the visible one) wins.
//!
//! Attributes: `device` (the mount source; "/dev/root" resolved through its device number),
//! `fstype`, `options` (the per-mount options followed by the superblock options not already
//! listed, e.g. ["rw", "relatime", "errors=remount-ro"]), `read_only`, `disks` (the `disk`
//! keys the filesystem lives on: partition → its disk, dm/md → their slaves, recursively;
//! see [`super::disk::disks_under`]), and from statvfs `size_bytes`, `used_bytes`,
//! `available_bytes`, `inodes_total`, `inodes_used`.
//!
//! statvfs is only asked where the answer is the host's: on the live host, or under a host
//! root where the mount point is itself the root of a mount with the device number
//! mountinfo lists (statx `STATX_ATTR_MOUNT_ROOT`). A fixture tree is not a mounted
//! filesystem, so there the sizes are null rather than the size of the test's own disk.
//! Network and FUSE filesystems are asked from a helper thread with a short deadline, since
//! statvfs on a dead NFS server blocks forever; a late answer is reported as null.

pub mod mountinfo;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cmdb_proto::model::{Item, class};
use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};

use self::mountinfo::{MountEntry, parse_mountinfo};
use super::{Collector, Context, Outcome, disk};
use crate::hostroot::{HostRoot, ReadError};

/// Filesystem types that never hold configured data (see the module doc).
const PSEUDO_FSTYPES: &[&str] = &[
    "anon_inodefs",
    "autofs",
    "bdev",
    "binder",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "cpuset",
    "debugfs",
    "devfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nfsd",
    "nsfs",
    "pipefs",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "smackfs",
    "sockfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Filesystems whose statvfs may block on a remote server.
const REMOTE_FSTYPES: &[&str] = &[
    "9p",
    "afs",
    "ceph",
    "cifs",
    "glusterfs",
    "gpfs",
    "lustre",
    "ncpfs",
    "nfs",
    "nfs4",
    "smb3",
    "smbfs",
    "sshfs",
];

/// Where container runtimes keep per-container mounts (visible in the host's namespace).
const RUNTIME_PREFIXES: &[&str] = &[
    "/var/lib/docker/",
    "/var/lib/containers/",
    "/var/lib/containerd/",
    "/run/containerd/",
    "/run/docker/",
    "/var/lib/kubelet/pods/",
];

/// Files a container runtime binds into a container.
const RUNTIME_FILES: &[&str] = &[
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
    "/run/.containerenv",
];

/// How long a remote filesystem gets to answer statvfs.
const REMOTE_STATVFS_DEADLINE: Duration = Duration::from_secs(2);

pub struct FilesystemCollector;

impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::FILESYSTEM]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let mut out = Outcome::new();
        let (path, text) = match read_mountinfo(&ctx.root) {
            Ok(MountinfoText {
                path,
                text,
                pid1_denied,
            }) => {
                if pid1_denied {
                    out.permission_denied(
                        "/proc/1/mountinfo: permission denied; mounts are those of the \
                         agent's own mount namespace (/proc/self/mountinfo)",
                    );
                }
                (path, text)
            }
            Err(e @ ReadError::PermissionDenied(_)) => {
                out.permission_denied(e.to_string());
                return out;
            }
            Err(e) => return Outcome::error(format!("cannot read mountinfo: {e}")),
        };
        let (entries, bad) = parse_mountinfo(&text);
        for b in bad {
            out.warn(format!("{path} {b}"));
        }
        let kept = visible_filesystems(&entries, |mp| is_non_directory(&ctx.root, mp));

        let sizes = statvfs_all(&ctx.root, &kept, &mut out);
        for (m, size) in kept.iter().zip(sizes) {
            out.push(filesystem_item(&ctx.root, m, size));
        }
        out
    }
}

/// mountinfo as read, with where it came from.
pub struct MountinfoText {
    pub path: &'static str,
    pub text: String,
    /// /proc/1/mountinfo existed but could not be read, so /proc/self's was used.
    pub pid1_denied: bool,
}

/// Reads the host's mountinfo (see the module doc for which one).
pub fn read_mountinfo(root: &HostRoot) -> Result<MountinfoText, ReadError> {
    const SELF: &str = "/proc/self/mountinfo";
    const PID1: &str = "/proc/1/mountinfo";
    let mut pid1_denied = false;
    if !root.is_live() || in_own_mount_namespace(root) {
        match root.read_to_string(PID1) {
            Ok(text) => {
                return Ok(MountinfoText {
                    path: PID1,
                    text,
                    pid1_denied,
                });
            }
            Err(e) if e.is_not_found() => {}
            Err(e) if e.is_permission_denied() => pid1_denied = true,
            Err(e) => return Err(e),
        }
    }
    root.read_to_string(SELF).map(|text| MountinfoText {
        path: SELF,
        text,
        pid1_denied,
    })
}

/// Whether the agent is a sandboxed systemd service: systemd is init and the agent's mount
/// namespace differs from init's, so its own mountinfo shows the sandbox (read-only binds,
/// private /tmp), not the host. False when init is something else (a container runtime's
/// or a VM agent's namespaces are not ours to second-guess) or when either link cannot be
/// read (no CAP_SYS_PTRACE for init's): the agent's own view is used.
fn in_own_mount_namespace(root: &HostRoot) -> bool {
    if !matches!(root.read_trimmed("/proc/1/comm"), Ok(Some(c)) if c == "systemd") {
        return false;
    }
    match (
        root.read_link("/proc/self/ns/mnt"),
        root.read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(own), Ok(init)) => own != init,
        _ => false,
    }
}

/// The visible, non-pseudo mounts, sorted by mount point. `is_file_mount` says whether a
/// mount point is a file (not a directory) on the host; it is only asked for bind mounts
/// (a filesystem's own root is always a directory) of local filesystems (a stat on a dead
/// NFS server would block).
pub fn visible_filesystems(
    entries: &[MountEntry],
    is_file_mount: impl Fn(&str) -> bool,
) -> Vec<&MountEntry> {
    // Later lines are later mounts: the last one on a mount point is what a path resolves to.
    let mut visible: BTreeMap<&str, &MountEntry> = BTreeMap::new();
    for m in entries {
        visible.insert(m.mount_point.as_str(), m);
    }
    let candidates: Vec<&MountEntry> = visible
        .into_values()
        .filter(|m| {
            let file_bind = m.root != "/" && !is_remote(&m.fstype) && is_file_mount(&m.mount_point);
            !is_skipped(m) && !file_bind
        })
        .collect();
    let whole: BTreeSet<(u32, u32)> = candidates
        .iter()
        .filter(|m| !is_subtree_bind(m))
        .map(|m| (m.major, m.minor))
        .collect();
    candidates
        .into_iter()
        .filter(|m| !(is_subtree_bind(m) && whole.contains(&(m.major, m.minor))))
        .collect()
}

/// The skip rules that need nothing but the entry itself.
fn is_skipped(m: &MountEntry) -> bool {
    let fstype = m.fstype.as_str();
    let mp = m.mount_point.as_str();
    PSEUDO_FSTYPES.contains(&fstype)
        || (mp.starts_with("/snap/")
            && matches!(fstype, "squashfs" | "fuse.snapfuse" | "fuse.squashfuse"))
        || RUNTIME_PREFIXES.iter().any(|p| mp.starts_with(p))
        || (m.root != "/" && RUNTIME_FILES.contains(&mp))
}

/// A bind mount of part of a filesystem (not a btrfs subvolume mounted by `subvol=`).
/// Only block-backed filesystems and btrfs count: NFS and overlay mounts with a non-"/"
/// root are distinct exports or layers, not duplicates.
fn is_subtree_bind(m: &MountEntry) -> bool {
    if m.root == "/" {
        return false;
    }
    if m.fstype == "btrfs" {
        let subvol = m
            .super_options
            .split(',')
            .find_map(|o| o.strip_prefix("subvol="));
        return subvol != Some(m.root.as_str());
    }
    m.major != 0
}

fn is_non_directory(root: &HostRoot, mount_point: &str) -> bool {
    std::fs::symlink_metadata(root.path(mount_point)).is_ok_and(|md| !md.is_dir())
}

fn filesystem_item(root: &HostRoot, m: &MountEntry, size: Option<Sizes>) -> Item {
    let block = block_device_of(root, m);
    let device = if m.source == "/dev/root" {
        block
            .as_deref()
            .map(|b| dev_path(root, b))
            .unwrap_or_else(|| m.source.clone())
    } else {
        m.source.clone()
    };
    let disks = block
        .map(|b| disk::disks_under(root, &b))
        .unwrap_or_default();
    let options = merged_options(&m.mount_options, &m.super_options);
    let read_only = m.mount_options.split(',').any(|o| o == "ro");
    let s = size.unwrap_or_default();
    Item::new(class::FILESYSTEM, m.mount_point.clone())
        .with("device", device)
        .with("fstype", m.fstype.as_str())
        .with("options", options)
        .with("read_only", read_only)
        .with("disks", disks)
        .with("size_bytes", s.size_bytes)
        .with("used_bytes", s.used_bytes)
        .with("available_bytes", s.available_bytes)
        .with("inodes_total", s.inodes_total)
        .with("inodes_used", s.inodes_used)
}

/// "/dev/<name>", or "/dev/mapper/<dm name>" for device-mapper devices.
fn dev_path(root: &HostRoot, block: &str) -> String {
    root.read_trimmed(format!("/sys/class/block/{block}/dm/name"))
        .ok()
        .flatten()
        .map(|n| format!("/dev/mapper/{n}"))
        .unwrap_or_else(|| format!("/dev/{block}"))
}

/// The kernel block device name a mount is on: by device number (exact for every
/// block-backed filesystem), else by the source path (btrfs reports an anonymous device
/// number): /dev/mapper/<name> through dm names, /dev/<name> directly, and /dev symlinks
/// such as /dev/disk/by-uuid/… by their link text.
fn block_device_of(root: &HostRoot, m: &MountEntry) -> Option<String> {
    if m.major != 0
        && let Some(name) = disk::block_name_of_devnum(root, m.major, m.minor)
    {
        return Some(name);
    }
    let src = m.source.strip_prefix("/dev/")?;
    if let Some(dm) = src.strip_prefix("mapper/") {
        return disk::dm_device_by_name(root, dm);
    }
    let name = root
        .read_link(&m.source)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| src.rsplit('/').next().unwrap_or(src).to_owned());
    root.exists(format!("/sys/class/block/{name}"))
        .then_some(name)
}

/// Per-mount options, then the superblock options not already listed.
pub fn merged_options(per_mount: &str, per_super: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in per_mount.split(',').chain(per_super.split(',')) {
        if !o.is_empty() && !out.iter().any(|x| x == o) {
            out.push(o.to_owned());
        }
    }
    out
}

/// statvfs numbers of one filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    pub size_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub inodes_total: Option<u64>,
    pub inodes_used: Option<u64>,
}

impl Sizes {
    /// Computed as df does: used = blocks − free; available = blocks free to non-root.
    pub fn from_statvfs(v: &rustix::fs::StatVfs) -> Sizes {
        let frsize = if v.f_frsize > 0 {
            v.f_frsize
        } else {
            v.f_bsize
        };
        let bytes = |blocks: u64| blocks.checked_mul(frsize);
        // Filesystems without a fixed inode table (btrfs) report zero inodes: unknown.
        let has_inodes = v.f_files > 0;
        Sizes {
            size_bytes: bytes(v.f_blocks),
            used_bytes: bytes(v.f_blocks.saturating_sub(v.f_bfree)),
            available_bytes: bytes(v.f_bavail),
            inodes_total: has_inodes.then_some(v.f_files),
            inodes_used: has_inodes.then(|| v.f_files.saturating_sub(v.f_ffree)),
        }
    }
}

/// Network and FUSE filesystems: statvfs on them can hang on a dead server.
pub(crate) fn is_remote(fstype: &str) -> bool {
    REMOTE_FSTYPES.contains(&fstype) || fstype.starts_with("fuse.") || fstype == "fuse"
}

/// statvfs for each mount where the answer is the host's (see the module doc); `None`
/// where it is not asked or did not answer. Remote filesystems are looked at (statx and
/// statvfs) only from helper threads, waited for at most [`REMOTE_STATVFS_DEADLINE`].
fn statvfs_all(root: &HostRoot, mounts: &[&MountEntry], out: &mut Outcome) -> Vec<Option<Sizes>> {
    type Answer = Option<rustix::io::Result<rustix::fs::StatVfs>>;
    let mut results: Vec<Option<Sizes>> = vec![None; mounts.len()];
    let (tx, rx) = mpsc::channel::<(usize, Answer)>();
    let mut remote_pending = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        if is_remote(&m.fstype) {
            let (tx, root, m) = (tx.clone(), root.clone(), (*m).clone());
            let spawned = thread::Builder::new()
                .name("statvfs-remote".into())
                .spawn(move || {
                    let answer = statvfs_path(&root, &m.mount_point, m.major, m.minor)
                        .map(rustix::fs::statvfs);
                    let _ = tx.send((i, answer));
                });
            if spawned.is_ok() {
                remote_pending.insert(i);
            }
        } else if let Some(path) = statvfs_path(root, &m.mount_point, m.major, m.minor) {
            record_statvfs(&mut results, i, m, rustix::fs::statvfs(&path), out);
        }
    }
    drop(tx);
    let deadline = Instant::now() + REMOTE_STATVFS_DEADLINE;
    while !remote_pending.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((i, answer)) => {
                remote_pending.remove(&i);
                if let (Some(m), Some(r)) = (mounts.get(i), answer) {
                    record_statvfs(&mut results, i, m, r, out);
                }
            }
            Err(_) => break,
        }
    }
    for i in remote_pending {
        if let Some(m) = mounts.get(i) {
            out.warn(format!(
                "{}: statvfs did not answer within {} s (unreachable server?); sizes unknown",
                m.mount_point,
                REMOTE_STATVFS_DEADLINE.as_secs()
            ));
        }
    }
    results
}

fn record_statvfs(
    results: &mut [Option<Sizes>],
    i: usize,
    m: &MountEntry,
    r: rustix::io::Result<rustix::fs::StatVfs>,
    out: &mut Outcome,
) {
    match r {
        Ok(v) => {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(Sizes::from_statvfs(&v));
            }
        }
        Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => {
            out.permission_denied(format!("{}: statvfs: permission denied", m.mount_point));
        }
        Err(e) => out.warn(format!("{}: statvfs: {e}", m.mount_point)),
    }
}

/// The path to ask statvfs for a mount, or `None` when the answer would not be the host's:
/// on the live host the mount point itself; under a host root only where the path is the
/// root of a mount with the device number mountinfo lists (a fixture tree is not a
/// filesystem).
pub(crate) fn statvfs_path(
    root: &HostRoot,
    mount_point: &str,
    major: u32,
    minor: u32,
) -> Option<PathBuf> {
    let path = root.path(mount_point);
    if root.is_live() {
        return Some(path);
    }
    let st = rustix::fs::statx(
        CWD,
        &path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .ok()?;
    let mount_root = st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
    (mount_root && st.stx_dev_major == major && st.stx_dev_minor == minor).then_some(path)
}

/// The strings of a list attribute (tests of the item shape).
#[cfg(test)]
fn strings(v: Option<&cmdb_proto::model::AttrValue>) -> Vec<&str> {
    use cmdb_proto::model::AttrValue;
    v.and_then(AttrValue::as_list)
        .unwrap_or_default()
        .iter()
        .filter_map(AttrValue::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mounts(text: &str) -> Vec<MountEntry> {
        let (e, bad) = parse_mountinfo(text);
        assert!(bad.is_empty(), "{bad:?}");
        e
    }

    fn points(v: &[&MountEntry]) -> Vec<String> {
        v.iter().map(|m| m.mount_point.clone()).collect()
    }

    /// A root with init's comm and the two mount-namespace links.
    fn ns_root(comm: &str, own: &str, init: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, target) in [("self", own), ("1", init)] {
            let ns = dir.path().join("proc").join(pid).join("ns");
            std::fs::create_dir_all(&ns).unwrap();
            std::os::unix::fs::symlink(target, ns.join("mnt")).unwrap();
        }
        std::fs::write(dir.path().join("proc/1/comm"), format!("{comm}\n")).unwrap();
        dir
    }

    #[test]
    fn a_sandboxed_systemd_service_reads_inits_mounts() {
        let d = ns_root("systemd", "mnt:[4026532174]", "mnt:[4026531832]");
        assert!(in_own_mount_namespace(&HostRoot::new(d.path())));
        // Same namespace: the agent's own view is the host's.
        let d = ns_root("systemd", "mnt:[4026531832]", "mnt:[4026531832]");
        assert!(!in_own_mount_namespace(&HostRoot::new(d.path())));
        // Another init (a container runtime, a VM agent): never second-guessed.
        let d = ns_root("process_api", "mnt:[4026532174]", "mnt:[4026531832]");
        assert!(!in_own_mount_namespace(&HostRoot::new(d.path())));
        // Unreadable links (no CAP_SYS_PTRACE): the agent's own view.
        let d = ns_root("systemd", "mnt:[1]", "mnt:[2]");
        std::fs::remove_file(d.path().join("proc/1/ns/mnt")).unwrap();
        assert!(!in_own_mount_namespace(&HostRoot::new(d.path())));
    }

    #[test]
    fn pseudo_snap_runtime_and_bind_mounts_are_skipped() {
        let e = mounts(
            "\
22 28 0:21 / /sys rw - sysfs sysfs rw
26 28 0:24 / /run rw - tmpfs tmpfs rw,size=1k
28 1 259:2 / / rw,relatime - ext4 /dev/nvme0n1p2 rw
30 28 7:0 / /snap/core20/2105 ro - squashfs /dev/loop0 ro
31 28 259:2 /usr/share/hunspell /var/snap/firefox/common/host-hunspell ro - ext4 /dev/nvme0n1p2 rw
32 28 0:50 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=/a
33 28 0:51 / /srv/nfs rw - nfs4 nas:/export rw
34 28 8:1 /vol /data rw - ext4 /dev/sda1 rw
",
        );
        let v = visible_filesystems(&e, |_| false);
        assert_eq!(points(&v), vec!["/", "/data", "/srv/nfs"]);
    }

    #[test]
    fn btrfs_subvolumes_are_kept_and_binds_inside_them_dropped() {
        let e = mounts(
            "\
28 1 0:26 /@ / rw - btrfs /dev/mapper/cryptroot rw,subvolid=256,subvol=/@
29 28 0:26 /@home /home rw - btrfs /dev/mapper/cryptroot rw,subvolid=257,subvol=/@home
30 28 0:26 /@/srv/x /mnt/x rw - btrfs /dev/mapper/cryptroot rw,subvolid=256,subvol=/@
",
        );
        assert_eq!(
            points(&visible_filesystems(&e, |_| false)),
            vec!["/", "/home"]
        );
    }

    #[test]
    fn the_last_mount_on_a_mount_point_wins() {
        let e = mounts(
            "\
28 1 8:1 / / rw - ext4 /dev/sda1 rw
40 28 8:2 / /tmp rw - ext4 /dev/sda2 rw
41 40 0:60 / /tmp rw - tmpfs tmpfs rw
42 28 8:3 / /srv rw - ext4 /dev/sda3 rw
43 42 8:4 / /srv rw - xfs /dev/sda4 rw
",
        );
        let v = visible_filesystems(&e, |_| false);
        assert_eq!(points(&v), vec!["/", "/srv"]);
        assert_eq!(v[1].fstype, "xfs");
    }

    #[test]
    fn container_file_binds_are_skipped() {
        let e = mounts(
            "\
500 480 0:77 / / rw - overlay overlay rw,lowerdir=/l
510 500 8:1 /var/lib/docker/containers/abc/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw
511 500 8:1 /srv/data /data rw - ext4 /dev/sda1 rw
512 500 8:1 /srv/app.conf /app.conf rw - ext4 /dev/sda1 rw
",
        );
        let v = visible_filesystems(&e, |mp| mp == "/app.conf");
        assert_eq!(points(&v), vec!["/", "/data"]);
    }

    #[test]
    fn options_merge_without_repeats() {
        assert_eq!(
            merged_options("rw,relatime", "rw,errors=remount-ro"),
            vec!["rw", "relatime", "errors=remount-ro"]
        );
        assert_eq!(merged_options("", ""), Vec::<String>::new());
    }

    #[test]
    fn statvfs_numbers_follow_df() {
        let v = rustix::fs::statvfs("/").unwrap();
        let s = Sizes::from_statvfs(&v);
        assert!(s.size_bytes.unwrap() >= s.used_bytes.unwrap());
    }

    #[test]
    fn fixture_like_roots_get_no_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        let m = &mounts("28 1 254:1 / / rw - ext4 /dev/vda1 rw\n")[0];
        assert_eq!(statvfs_path(&root, &m.mount_point, m.major, m.minor), None);
        let item = filesystem_item(&root, m, None);
        assert!(item.attr("size_bytes").unwrap().is_null());
        assert_eq!(strings(item.attr("options")), vec!["rw"]);
    }

    /// A minimal sysfs: sda with partition sda2 (8:2), dm-0 "vg-root" (253:0) over sda2.
    fn sysfs_tree() -> tempfile::TempDir {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let sda_rel = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda";
        let sda = sys.join(sda_rel);
        let dm = sys.join("devices/virtual/block/dm-0");
        std::fs::create_dir_all(sda.join("sda2")).unwrap();
        std::fs::write(sda.join("sda2/partition"), "2\n").unwrap();
        std::fs::create_dir_all(dm.join("dm")).unwrap();
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        std::fs::write(dm.join("dm/name"), "vg-root\n").unwrap();
        for d in ["block", "class/block", "dev/block"] {
            std::fs::create_dir_all(sys.join(d)).unwrap();
        }
        symlink(format!("../{sda_rel}"), sys.join("block/sda")).unwrap();
        symlink(
            format!("../../{sda_rel}/sda2"),
            sys.join("class/block/sda2"),
        )
        .unwrap();
        symlink(format!("../../{sda_rel}/sda2"), sys.join("dev/block/8:2")).unwrap();
        symlink("../devices/virtual/block/dm-0", sys.join("block/dm-0")).unwrap();
        symlink(
            "../../devices/virtual/block/dm-0",
            sys.join("class/block/dm-0"),
        )
        .unwrap();
        symlink(
            "../../devices/virtual/block/dm-0",
            sys.join("dev/block/253:0"),
        )
        .unwrap();
        symlink(
            format!("../../../../{sda_rel}/sda2"),
            dm.join("slaves/sda2"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn dev_root_is_resolved_through_the_device_number() {
        let dir = sysfs_tree();
        let root = HostRoot::new(dir.path());
        let m = &mounts("28 1 8:2 / / rw - ext4 /dev/root rw\n")[0];
        let item = filesystem_item(&root, m, None);
        assert_eq!(item.attr("device").unwrap().as_str(), Some("/dev/sda2"));
        assert_eq!(strings(item.attr("disks")), vec!["sda"]);

        let m = &mounts("28 1 253:0 / / rw - xfs /dev/root rw\n")[0];
        let item = filesystem_item(&root, m, None);
        assert_eq!(
            item.attr("device").unwrap().as_str(),
            Some("/dev/mapper/vg-root")
        );
        assert_eq!(strings(item.attr("disks")), vec!["dm-0", "sda"]);

        // btrfs: an anonymous device number, so the /dev/mapper name is used instead.
        let m = &mounts("28 1 0:26 /@ / rw - btrfs /dev/mapper/vg-root rw,subvol=/@\n")[0];
        let item = filesystem_item(&root, m, None);
        assert_eq!(strings(item.attr("disks")), vec!["dm-0", "sda"]);

        // An unknown device resolves to no disks rather than a guess.
        let m = &mounts("28 1 0:27 / /x rw - ext4 /dev/nowhere rw\n")[0];
        assert!(strings(filesystem_item(&root, m, None).attr("disks")).is_empty());
    }

    #[test]
    fn statvfs_errors_map_to_statuses() {
        let m = &mounts("28 1 0:40 / /mnt/fuse rw - fuse.sshfs u@h: rw\n")[0];
        let mut results = vec![None];
        let mut out = Outcome::new();
        record_statvfs(&mut results, 0, m, Err(rustix::io::Errno::ACCESS), &mut out);
        assert_eq!(
            out.state(),
            cmdb_proto::model::CollectorState::PermissionDenied
        );
        let mut out = Outcome::new();
        record_statvfs(&mut results, 0, m, Err(rustix::io::Errno::IO), &mut out);
        assert_eq!(out.state(), cmdb_proto::model::CollectorState::Partial);
        assert_eq!(results, vec![None]);
    }

    proptest! {
        #[test]
        fn visibility_never_panics_and_keeps_no_pseudo(s in "\\PC*") {
            let (e, _) = parse_mountinfo(&s);
            for m in visible_filesystems(&e, |_| false) {
                prop_assert!(!PSEUDO_FSTYPES.contains(&m.fstype.as_str()));
            }
        }

        #[test]
        fn merged_options_are_unique(a in "[a-z=,]{0,30}", b in "[a-z=,]{0,30}") {
            let o = merged_options(&a, &b);
            let set: BTreeSet<&String> = o.iter().collect();
            prop_assert_eq!(set.len(), o.len());
        }
    }
}
