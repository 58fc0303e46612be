//! The disk, filesystem and network_interface collectors on the machine running the tests
//! (`--host-root /`), checked against the tools an operator would use: `findmnt`, `ip -j
//! addr` and `lsblk`. A missing tool skips its check with a note, never fails it.
//!
//! The tools list more than the collectors report, by design (see the collectors' module
//! docs); the filters below restate those rules independently of the agent's code so that a
//! disagreement shows up here:
//! - filesystems: findmnt's `--real` (util-linux's list of pseudo filesystems) plus
//!   overlay, which util-linux counts as pseudo but which is a container's root; minus
//!   snap squashfs under /snap/, container-runtime mounts, runtime-injected files, FUSE
//!   portals, subtree bind mounts of a filesystem mounted here in full, and mount points
//!   that are files; the last mount on a mount point is the visible one;
//! - interfaces: every interface `ip` shows, IPv6 temporary (privacy) addresses left out;
//! - disks: `lsblk -d` without ram/zram devices that are neither swap nor mounted (lsblk
//!   already hides detached loops, which have size 0).

// Helpers outside #[test] functions panic on purpose: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command as Std;

use serde_json::Value;

fn inventory() -> Value {
    common::inventory(
        std::path::Path::new("/"),
        "disk,filesystem,network_interface",
        &[],
        &[],
    )
}

/// Runs a tool; `None` (with a note) when it is not installed or fails.
fn tool(program: &str, args: &[&str]) -> Option<String> {
    match Std::new(program).args(args).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            eprintln!(
                "skipping: {program} {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("skipping: {program} not available: {e}");
            None
        }
    }
}

fn items<'a>(inv: &'a Value, class: &str) -> BTreeMap<String, &'a Value> {
    inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .map(|i| (i["key"].as_str().unwrap().to_owned(), &i["attrs"]))
        .collect()
}

fn status(inv: &Value, name: &str) -> String {
    common::status(inv, name).0
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// findmnt -r escapes unsafe characters as \xHH.
fn unhex(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Mount {
    id: String,
    target: String,
    fstype: String,
    fsroot: String,
    majmin: String,
    fs_options: String,
    size: Option<i64>,
}

fn findmnt_rows(extra: &[&str]) -> Option<Vec<Mount>> {
    let mut args = vec![
        "-rn",
        "-b",
        "-o",
        "ID,TARGET,FSTYPE,FSROOT,MAJ:MIN,FS-OPTIONS,SIZE",
    ];
    args.extend_from_slice(extra);
    let text = tool("findmnt", &args)?;
    Some(
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() >= 7).then(|| Mount {
                    id: f[0].to_owned(),
                    target: unhex(f[1]),
                    fstype: unhex(f[2]),
                    fsroot: unhex(f[3]),
                    majmin: f[4].to_owned(),
                    fs_options: unhex(f[5]),
                    size: f[6].parse().ok(),
                })
            })
            .collect(),
    )
}

/// The mount points the filesystem collector should report, per findmnt.
fn expected_filesystems() -> Option<BTreeMap<String, Mount>> {
    let all = findmnt_rows(&[])?;
    let real: BTreeSet<String> = findmnt_rows(&["--real"])?
        .into_iter()
        .map(|m| m.id)
        .collect();
    let mut visible: BTreeMap<String, Mount> = BTreeMap::new();
    for m in all {
        visible.insert(m.target.clone(), m);
    }
    let runtime = [
        "/var/lib/docker/",
        "/var/lib/containers/",
        "/var/lib/containerd/",
        "/run/containerd/",
        "/run/docker/",
        "/var/lib/kubelet/pods/",
    ];
    let files = [
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/dev/termination-log",
        "/run/.containerenv",
    ];
    let not_real = ["fuse.gvfsd-fuse", "fuse.portal", "fuse.lxcfs"];
    visible.retain(|target, m| {
        (real.contains(&m.id) || m.fstype == "overlay")
            && !not_real.contains(&m.fstype.as_str())
            && !(target.starts_with("/snap/") && m.fstype.contains("squash"))
            && !runtime.iter().any(|p| target.starts_with(p))
            && !(m.fsroot != "/" && files.contains(&target.as_str()))
            // Only bind mounts can be files; never stat a network mount point (it may hang).
            && (m.fsroot == "/"
                || m.fstype.starts_with("nfs")
                || std::fs::metadata(target).map(|md| md.is_dir()).unwrap_or(true))
    });
    let bind = |m: &Mount| {
        if m.fsroot == "/" {
            return false;
        }
        if m.fstype == "btrfs" {
            let subvol = m
                .fs_options
                .split(',')
                .find_map(|o| o.strip_prefix("subvol="));
            return subvol != Some(m.fsroot.as_str());
        }
        !m.majmin.starts_with("0:")
    };
    let whole: BTreeSet<String> = visible
        .values()
        .filter(|m| !bind(m))
        .map(|m| m.majmin.clone())
        .collect();
    visible.retain(|_, m| !(bind(m) && whole.contains(&m.majmin)));
    Some(visible)
}

#[test]
fn filesystems_match_findmnt() {
    let Some(expected) = expected_filesystems() else {
        return;
    };
    let inv = inventory();
    assert_eq!(status(&inv, "filesystem"), "ok");
    let got = items(&inv, "filesystem");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "mount points differ from findmnt"
    );
    for (target, m) in &expected {
        let a = got[target];
        assert_eq!(a["fstype"], m.fstype.as_str(), "{target}");
        // Both sizes come from statvfs: blocks × fragment size.
        if let Some(size) = m.size {
            assert_eq!(a["size_bytes"].as_i64(), Some(size), "{target}");
        }
    }
}

#[test]
fn interfaces_and_addresses_match_ip() {
    let Some(text) = tool("ip", &["-j", "addr"]) else {
        return;
    };
    let links: Vec<Value> = serde_json::from_str(&text).unwrap();
    let inv = inventory();
    assert_eq!(status(&inv, "network_interface"), "ok");
    let got = items(&inv, "network_interface");
    let names: BTreeSet<String> = links
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "interface names"
    );
    for l in &links {
        let name = l["ifname"].as_str().unwrap();
        let a = got[name];
        let mac = l["address"]
            .as_str()
            .filter(|m| m.chars().any(|c| c != '0' && c != ':'));
        assert_eq!(a["mac"].as_str(), mac, "{name} mac");
        assert_eq!(a["mtu"], l["mtu"], "{name} mtu");
        assert_eq!(
            a["state"].as_str().map(str::to_ascii_uppercase).as_deref(),
            l["operstate"].as_str(),
            "{name} state"
        );
        assert_eq!(a["type"], l["link_type"], "{name} type");
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        for ai in l["addr_info"].as_array().into_iter().flatten() {
            let cidr = format!(
                "{}/{}",
                ai["local"].as_str().unwrap(),
                ai["prefixlen"].as_u64().unwrap()
            );
            match ai["family"].as_str() {
                Some("inet") => {
                    v4.insert(cidr);
                }
                Some("inet6") if ai["temporary"] != Value::Bool(true) => {
                    v6.insert(cidr);
                }
                _ => {}
            }
        }
        assert_eq!(strings(&a["ipv4"]), v4, "{name} ipv4");
        assert_eq!(strings(&a["ipv6"]), v6, "{name} ipv6");
    }
}

#[test]
fn disks_match_lsblk() {
    let Some(text) = tool("lsblk", &["-dn", "-o", "KNAME"]) else {
        return;
    };
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let mounted = tool("findmnt", &["-rn", "-o", "SOURCE"]).unwrap_or_default();
    let in_use = |name: &str| {
        let dev = format!("/dev/{name}");
        swaps
            .lines()
            .chain(mounted.lines())
            .any(|l| l.split_whitespace().next() == Some(dev.as_str()))
    };
    let expected: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter(|n| !(n.starts_with("ram") || n.starts_with("zram")) || in_use(n))
        .map(str::to_owned)
        .collect();
    let inv = inventory();
    let got: BTreeSet<String> = items(&inv, "disk").into_keys().collect();
    assert_eq!(got, expected, "disk names differ from lsblk -d");
}
