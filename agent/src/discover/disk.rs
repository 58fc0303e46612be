//! Block devices as `disk` CIs, keyed by kernel name ("sda", "nvme0n1", "vda", "dm-0"),
//! read from sysfs only: /sys/block/<dev> for size, queue and partitions, the `device`
//! directory its link points at for model, vendor, serial and firmware, and the text of the
//! /sys/block link itself for the transport (the bus path the kernel registered it under).
//!
//! Reported: every whole disk, device-mapper (`dm`) and md RAID device, CD/DVD drives;
//! loop and nbd devices only while attached (a detached loop is not configuration); ram
//! and zram devices only while in use (swap in /proc/swaps, or mounted). Partitions are an
//! attribute of their disk, not CIs. Placeholder serials become null.
//!
//! Never: opens a device node, issues an ioctl or runs a tool (no smartctl, no udev
//! database); values udev would compute from the device itself (ID_SERIAL of a USB bridge)
//! are therefore only as good as what sysfs exposes.
//!
//! The small block-topology functions here ([`block_name_of_devnum`], [`disks_under`],
//! [`dm_device_by_name`]) are shared with the `filesystem` collector so that a filesystem's
//! `disks` attribute names exactly the keys this collector reports.

use std::collections::BTreeSet;

use cmdb_proto::model::{Item, class};

use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};
use crate::identity;

/// sysfs `size` is in 512-byte sectors, whatever the device's logical block size.
const SECTOR_BYTES: u64 = 512;

/// How deep dm/md stacks are followed (a cycle in a broken tree must not loop forever).
const MAX_STACK_DEPTH: usize = 8;

pub struct DiskCollector;

impl Collector for DiskCollector {
    fn name(&self) -> &'static str {
        "disk"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::DISK]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let names = match ctx.root.read_dir_names("/sys/block") {
            Ok(n) => n,
            Err(e) if e.is_not_found() => {
                return Outcome::unsupported("no /sys/block: no block devices are visible");
            }
            Err(e @ ReadError::PermissionDenied(_)) => {
                let mut o = Outcome::new();
                o.permission_denied(e.to_string());
                return o;
            }
            Err(e) => return Outcome::error(e.to_string()),
        };
        let mut out = Outcome::new();
        let mut usage: Option<InUse> = None;
        for name in names {
            let mut attrs = Attrs {
                root: &ctx.root,
                dir: format!("/sys/block/{name}"),
                out: &mut out,
            };
            if !is_reported(&name, &mut attrs, &mut usage) {
                continue;
            }
            let item = disk_item(&name, &mut attrs);
            out.push(item);
        }
        out
    }
}

/// Reads one device's sysfs attributes, turning errors into statuses: absent → `None`,
/// unreadable for lack of privilege → `permission_denied`, anything else → `partial`.
struct Attrs<'a> {
    root: &'a HostRoot,
    dir: String,
    out: &'a mut Outcome,
}

impl Attrs<'_> {
    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.dir)
    }

    fn text(&mut self, rel: &str) -> Option<String> {
        let path = self.path(rel);
        match self.root.read_trimmed(&path) {
            Ok(v) => v,
            Err(e) => {
                self.record(e);
                None
            }
        }
    }

    fn bytes(&mut self, rel: &str) -> Option<Vec<u8>> {
        let path = self.path(rel);
        match self.root.read_capped(&path, 4096) {
            Ok(v) => Some(v),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                self.record(e);
                None
            }
        }
    }

    fn u64(&mut self, rel: &str) -> Option<u64> {
        let v = self.text(rel)?;
        match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                let p = self.path(rel);
                self.out.warn(format!("{p}: not a number: {v:?}"));
                None
            }
        }
    }

    fn flag(&mut self, rel: &str) -> Option<bool> {
        self.u64(rel).map(|v| v != 0)
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.exists(self.path(rel))
    }

    fn link_name(&mut self, rel: &str) -> Option<String> {
        match self.root.read_link(self.path(rel)) {
            Ok(t) => t.file_name().map(|n| n.to_string_lossy().into_owned()),
            Err(e) if e.is_not_found() => None,
            // Not a symlink (EINVAL) is not an error worth reporting.
            Err(ReadError::Io { .. }) => None,
            Err(e) => {
                self.record(e);
                None
            }
        }
    }

    fn names(&mut self, rel: &str) -> Vec<String> {
        match self.root.read_dir_names(self.path(rel)) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => {
                self.record(e);
                Vec::new()
            }
        }
    }

    fn record(&mut self, e: ReadError) {
        match e {
            ReadError::NotFound(_) => {}
            ReadError::PermissionDenied(_) => self.out.permission_denied(e.to_string()),
            other => self.out.warn(other.to_string()),
        }
    }
}

/// Devices that exist in /sys/block but are not configuration right now.
fn is_reported(name: &str, a: &mut Attrs<'_>, usage: &mut Option<InUse>) -> bool {
    if a.flag("hidden") == Some(true) {
        // NVMe multipath per-path nodes (nvme0c0n1): the shared nvme0n1 is the disk.
        return false;
    }
    match device_family(name) {
        Family::Loop => a.exists("loop/backing_file"),
        Family::Nbd => a.exists("pid"),
        Family::Ram | Family::Zram => {
            let devnum = a.text("dev");
            let u = usage.get_or_insert_with(|| InUse::load(a.root, a.out));
            u.swaps.contains(name) || devnum.is_some_and(|d| u.mounted_devnums.contains(&d))
        }
        _ => true,
    }
}

fn disk_item(name: &str, a: &mut Attrs<'_>) -> Item {
    let family = device_family(name);
    let link = a
        .root
        .read_link(&a.dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let driver = a.link_name("device/driver");
    let transport = transport(name, &link, driver.as_deref());

    let serial = a
        .text("serial")
        .or_else(|| a.text("device/serial"))
        .or_else(|| a.bytes("device/vpd_pg80").and_then(|b| parse_vpd_pg80(&b)))
        .and_then(|s| identity::real_value(&s));
    let wwn = a
        .text("wwid")
        .or_else(|| a.text("device/wwid"))
        .and_then(|w| normalize_wwn(&w));
    let size_bytes = a.u64("size").and_then(|s| s.checked_mul(SECTOR_BYTES));
    let firmware = a
        .text("device/firmware_rev")
        .or_else(|| a.text("device/rev"));

    let mut partitions: Vec<String> = a
        .names("")
        .into_iter()
        .filter(|p| a.exists(&format!("{p}/partition")))
        .collect();
    partitions.sort_by(|x, y| natural_key(x).cmp(&natural_key(y)));

    let mut item = Item::new(class::DISK, name)
        .with("model", a.text("device/model"))
        .with("vendor", a.text("device/vendor"))
        .with("serial", serial)
        .with("wwn", wwn)
        .with("firmware", firmware)
        .with("size_bytes", size_bytes)
        .with("rotational", a.flag("queue/rotational"))
        .with("transport", transport)
        .with("removable", a.flag("removable"))
        .with("read_only", a.flag("ro"))
        .with("logical_block_size", a.u64("queue/logical_block_size"))
        .with("driver", driver)
        .with("partitions", partitions);
    match family {
        Family::Loop => item.set("backing_file", a.text("loop/backing_file")),
        Family::Dm => {
            item.set("dm_name", a.text("dm/name"));
            item.set("dm_uuid", a.text("dm/uuid"));
            item.set("slaves", a.names("slaves"));
        }
        Family::Md => {
            item.set("md_level", a.text("md/level"));
            item.set("slaves", a.names("slaves"));
        }
        _ => {}
    }
    item
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Loop,
    Nbd,
    Ram,
    Zram,
    Dm,
    Md,
    Other,
}

fn device_family(name: &str) -> Family {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    if numbered("loop") {
        Family::Loop
    } else if numbered("nbd") {
        Family::Nbd
    } else if numbered("zram") {
        Family::Zram
    } else if numbered("ram") {
        Family::Ram
    } else if numbered("dm-") {
        Family::Dm
    } else if numbered("md") || name.starts_with("md_") {
        Family::Md
    } else {
        Family::Other
    }
}

/// How the device is attached, from its kernel name, the /sys/block link text (the bus
/// path it was registered under) and its driver. `None` when nothing says.
pub fn transport(name: &str, link: &str, driver: Option<&str>) -> Option<&'static str> {
    match device_family(name) {
        Family::Loop => return Some("loop"),
        Family::Nbd => return Some("nbd"),
        Family::Ram => return Some("ram"),
        Family::Zram => return Some("zram"),
        Family::Dm => return Some("dm"),
        Family::Md => return Some("md"),
        Family::Other => {}
    }
    let segs: Vec<&str> = link.split('/').collect();
    let numbered = |prefix: &str| {
        segs.iter().any(|s| {
            s.strip_prefix(prefix)
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    let starts = |prefix: &str| segs.iter().any(|s| s.starts_with(prefix));
    // Most specific first: USB and SATA disks are also SCSI hosts underneath.
    if numbered("usb") {
        Some("usb")
    } else if numbered("ata") {
        Some("sata")
    } else if starts("end_device-") || starts("port-") || starts("expander-") {
        Some("sas")
    } else if starts("rport-") {
        Some("fc")
    } else if numbered("session") {
        Some("iscsi")
    } else if segs.contains(&"nvme") || name.starts_with("nvme") {
        Some("nvme")
    } else if segs.contains(&"mmc_host") || name.starts_with("mmcblk") {
        Some("mmc")
    } else if starts("vbd-") || name.starts_with("xvd") {
        Some("xen")
    } else if numbered("host") {
        // virtio-scsi, RAID controllers, Hyper-V storvsc: SCSI without a more specific bus.
        Some("scsi")
    } else if numbered("virtio") {
        Some("virtio")
    } else {
        match driver? {
            "virtio_blk" => Some("virtio"),
            "nvme" => Some("nvme"),
            "mmcblk" => Some("mmc"),
            "vbd" | "xen_blkfront" | "xen-blkfront" => Some("xen"),
            "sd" | "sr" => Some("scsi"),
            _ => None,
        }
    }
}

/// The unit serial number from a SCSI VPD page 0x80 (SPC-4 7.8.15): a 4-byte header whose
/// bytes 2..4 are the page length, then ASCII padded with spaces (or NULs).
pub fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let body = page.get(4..)?;
    let body = &body[..len.min(body.len())];
    let text: String = body
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect();
    let t = text.trim();
    (!t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() || c == ' ')).then(|| t.to_owned())
}

/// Normalises a sysfs `wwid` to the form lsblk and udev show: NAA names as `0x<hex>`,
/// EUI-64/NGUID as `eui.<hex>`, namespace UUIDs as `uuid.<uuid>`, all lower case. T10
/// vendor ids (vendor + model + serial text) and the constructed `nvme.` ids are not World
/// Wide Names and give `None`, as do all-zero values.
pub fn normalize_wwn(raw: &str) -> Option<String> {
    let t = raw.trim().to_ascii_lowercase();
    let is_hex = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit());
    let out = if let Some(h) = t.strip_prefix("naa.").or_else(|| t.strip_prefix("0x")) {
        is_hex(h).then(|| (format!("0x{h}"), h.to_owned()))
    } else if let Some(h) = t.strip_prefix("eui.") {
        is_hex(h).then(|| (t.clone(), h.to_owned()))
    } else if let Some(u) = t.strip_prefix("uuid.") {
        let hex: String = u.chars().filter(|c| *c != '-').collect();
        is_hex(&hex).then(|| (t.clone(), hex))
    } else {
        None
    };
    out.filter(|(_, hex)| !identity::is_placeholder(hex))
        .map(|(w, _)| w)
}

/// Sort key that orders "nvme0n1p2" before "nvme0n1p10".
fn natural_key(s: &str) -> (&str, u64) {
    let digits = s.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (head, tail) = s.split_at(s.len() - digits);
    (head, tail.parse().unwrap_or(0))
}

/// Which ram/zram devices are in use: swap devices and mounted device numbers.
struct InUse {
    swaps: BTreeSet<String>,
    mounted_devnums: BTreeSet<String>,
}

impl InUse {
    fn load(root: &HostRoot, out: &mut Outcome) -> InUse {
        let mut swaps = BTreeSet::new();
        match root.read_to_string("/proc/swaps") {
            Ok(text) => {
                let (entries, bad) = parse_swaps(&text);
                for b in bad {
                    out.warn(format!("/proc/swaps {b}"));
                }
                swaps.extend(
                    entries
                        .into_iter()
                        .filter_map(|s| s.filename.strip_prefix("/dev/").map(str::to_owned)),
                );
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => out.warn(format!(
                "cannot tell whether ram/zram devices are swap: {e}"
            )),
        }
        let mut mounted_devnums = BTreeSet::new();
        match super::filesystem::read_mountinfo(root) {
            Ok(mi) => {
                let (entries, _) = super::filesystem::mountinfo::parse_mountinfo(&mi.text);
                mounted_devnums.extend(entries.iter().map(|m| format!("{}:{}", m.major, m.minor)));
            }
            Err(e) => out.warn(format!(
                "cannot tell whether ram/zram devices are mounted: {e}"
            )),
        }
        InUse {
            swaps,
            mounted_devnums,
        }
    }
}

/// One /proc/swaps entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwapEntry {
    /// Device or file, escapes decoded ("/dev/zram0", "/swap file").
    pub filename: String,
    /// "partition" or "file".
    pub kind: String,
    pub size_kib: u64,
}

/// A /proc/swaps line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadSwapLine {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses /proc/swaps (header line, then `Filename Type Size Used Priority`).
pub fn parse_swaps(text: &str) -> (Vec<SwapEntry>, Vec<BadSwapLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("Filename") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 3 {
            bad.push(BadSwapLine {
                line: n + 1,
                reason: "expected filename, type and size",
            });
            continue;
        }
        let Ok(size_kib) = f[2].parse() else {
            bad.push(BadSwapLine {
                line: n + 1,
                reason: "size is not a number",
            });
            continue;
        };
        entries.push(SwapEntry {
            filename: super::filesystem::mountinfo::unescape(f[0]),
            kind: f[1].to_owned(),
            size_kib,
        });
    }
    (entries, bad)
}

// === block topology (shared with the filesystem collector) ===

/// The kernel name of the block device with number `major:minor` ("sda1", "dm-0"), from
/// the /sys/dev/block/<major>:<minor> link.
pub fn block_name_of_devnum(root: &HostRoot, major: u32, minor: u32) -> Option<String> {
    let target = root
        .read_link(format!("/sys/dev/block/{major}:{minor}"))
        .ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The whole disk a partition belongs to ("sda1" → "sda"), or the name itself when it is a
/// whole device. Read from the /sys/class/block/<name> link text, whose parent directory is
/// the disk (…/block/sda/sda1), so nothing is followed out of the host root.
pub fn whole_disk(root: &HostRoot, name: &str) -> String {
    if !root.exists(format!("/sys/class/block/{name}/partition")) {
        return name.to_owned();
    }
    root.read_link(format!("/sys/class/block/{name}"))
        .ok()
        .and_then(|t| {
            t.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|p| p != "block" && !p.is_empty())
        .unwrap_or_else(|| name.to_owned())
}

/// Every disk (in the sense of this collector's keys) that block device `name` lives on:
/// its whole disk, then, for dm and md devices, their slaves' disks, recursively, in
/// breadth-first order without repeats. "dm-0" on an md RAID1 of sda2 and sdb2 gives
/// ["dm-0", "md126", "sda", "sdb"].
pub fn disks_under(root: &HostRoot, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut level = vec![whole_disk(root, name)];
    for _ in 0..MAX_STACK_DEPTH {
        let mut next = Vec::new();
        for disk in level {
            if out.contains(&disk) {
                continue;
            }
            for slave in root
                .read_dir_names(format!("/sys/block/{disk}/slaves"))
                .unwrap_or_default()
            {
                next.push(whole_disk(root, &slave));
            }
            out.push(disk);
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    out
}

/// The dm-N device whose device-mapper name is `dm_name` ("rl-root" → "dm-0").
pub fn dm_device_by_name(root: &HostRoot, dm_name: &str) -> Option<String> {
    root.read_dir_names("/sys/block")
        .ok()?
        .into_iter()
        .filter(|n| device_family(n) == Family::Dm)
        .find(|n| {
            root.read_trimmed(format!("/sys/block/{n}/dm/name"))
                .ok()
                .flatten()
                .is_some_and(|v| v == dm_name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transports_from_real_sysfs_paths() {
        let cases = [
            (
                "vda",
                "../devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
                Some("virtio_blk"),
                Some("virtio"),
            ),
            (
                "sda",
                "../devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                Some("sd"),
                Some("sata"),
            ),
            (
                "sda",
                "../devices/pci0000:17/0000:17:00.0/0000:18:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sda",
                Some("sd"),
                Some("sas"),
            ),
            (
                "sdb",
                "../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
                Some("sd"),
                Some("usb"),
            ),
            (
                "nvme0n1",
                "../devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1",
                None,
                Some("nvme"),
            ),
            (
                "sda",
                "../devices/pci0000:00/0000:00:03.0/virtio2/host2/target2:0:0/2:0:0:0/block/sda",
                Some("sd"),
                Some("scsi"),
            ),
            (
                "mmcblk0",
                "../devices/pci0000:00/0000:00:14.5/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0",
                Some("mmcblk"),
                Some("mmc"),
            ),
            (
                "xvda",
                "../devices/vbd-51712/block/xvda",
                Some("vbd"),
                Some("xen"),
            ),
            ("dm-0", "../devices/virtual/block/dm-0", None, Some("dm")),
            ("md127", "../devices/virtual/block/md127", None, Some("md")),
            (
                "loop0",
                "../devices/virtual/block/loop0",
                None,
                Some("loop"),
            ),
            (
                "zram0",
                "../devices/virtual/block/zram0",
                None,
                Some("zram"),
            ),
            ("weird", "../devices/platform/foo/block/weird", None, None),
        ];
        for (name, link, driver, want) in cases {
            assert_eq!(transport(name, link, driver), want, "{name} {link}");
        }
    }

    #[test]
    fn wwns_are_normalised() {
        assert_eq!(
            normalize_wwn("naa.5000C500A1B2C3D4\n").as_deref(),
            Some("0x5000c500a1b2c3d4")
        );
        assert_eq!(
            normalize_wwn("eui.0025388B71B4C2E1").as_deref(),
            Some("eui.0025388b71b4c2e1")
        );
        assert_eq!(normalize_wwn("eui.0000000000000000"), None);
        assert_eq!(
            normalize_wwn("t10.ATA     Samsung SSD 860 EVO 500GB               S3Z9NB0K123456A"),
            None
        );
        assert_eq!(normalize_wwn("nvme.8086-50484b-494e54454c-00000001"), None);
        assert_eq!(normalize_wwn(""), None);
    }

    #[test]
    fn vpd_page_80_serials() {
        let mut page = vec![0x00, 0x80, 0x00, 0x0c];
        page.extend_from_slice(b"  WFK0AB1C  ");
        assert_eq!(parse_vpd_pg80(&page).as_deref(), Some("WFK0AB1C"));
        assert_eq!(parse_vpd_pg80(&[0x00, 0x83, 0x00, 0x00]), None);
        assert_eq!(
            parse_vpd_pg80(&[0x00, 0x80, 0xff, 0xff, b'A']).as_deref(),
            Some("A")
        );
        assert_eq!(parse_vpd_pg80(&[0x00, 0x80, 0x00, 0x04, 0, 0, 0, 0]), None);
    }

    #[test]
    fn partitions_sort_naturally() {
        let mut v = vec!["nvme0n1p10", "nvme0n1p2", "nvme0n1p1"];
        v.sort_by(|x, y| natural_key(x).cmp(&natural_key(y)));
        assert_eq!(v, vec!["nvme0n1p1", "nvme0n1p2", "nvme0n1p10"]);
    }

    #[test]
    fn swaps_parse() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/zram0                              partition\t8388604\t\t0\t\t100\n/swap\\040file file 1024 0 -2\nbroken\n/dev/x partition many 0 0\n";
        let (e, bad) = parse_swaps(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].filename, "/dev/zram0");
        assert_eq!(e[0].size_kib, 8_388_604);
        assert_eq!(e[1].filename, "/swap file");
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn unreadable_attributes_map_to_statuses() {
        let root = HostRoot::new("/nonexistent");
        let mut out = Outcome::new();
        let mut a = Attrs {
            root: &root,
            dir: "/sys/block/sda".into(),
            out: &mut out,
        };
        a.record(ReadError::NotFound("/x".into()));
        assert_eq!(a.out.state(), cmdb_proto::model::CollectorState::Ok);
        a.record(ReadError::Io {
            path: "/x".into(),
            source: std::io::Error::other("EIO"),
        });
        assert_eq!(a.out.state(), cmdb_proto::model::CollectorState::Partial);
        // vpd_pg80 is readable by root only: without the privilege the serial is unknown
        // and the status says why.
        a.record(ReadError::PermissionDenied(
            "/sys/block/sda/device/vpd_pg80".into(),
        ));
        assert_eq!(
            a.out.state(),
            cmdb_proto::model::CollectorState::PermissionDenied
        );
    }

    proptest! {
        #[test]
        fn vpd_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_vpd_pg80(&b);
        }

        #[test]
        fn swaps_never_panic(s in "\\PC*") {
            let _ = parse_swaps(&s);
        }

        #[test]
        fn transport_and_wwn_never_panic(name in "\\PC{0,12}", link in "\\PC{0,60}", w in "\\PC{0,40}") {
            let _ = transport(&name, &link, None);
            let _ = normalize_wwn(&w);
            let _ = natural_key(&name);
        }
    }
}
