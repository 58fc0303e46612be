//! The disk, filesystem and network_interface collectors against the fixture host trees,
//! through the real binary: exact keys, attributes, statuses and the derived
//! `filesystem mounted_on disk` relations.

// Helpers outside #[test] functions panic on purpose: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::{Value, json};

fn fixture(distro: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(distro)
}

fn inventory(distro: &str, only: &str) -> Value {
    common::inventory(&fixture(distro), only, &[], &[])
}

fn status(inv: &Value, collector: &str) -> (String, Value) {
    common::status(inv, collector)
}

fn keys(inv: &Value, class: &str) -> Vec<String> {
    inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .map(|i| i["key"].as_str().unwrap().to_owned())
        .collect()
}

fn attrs<'a>(inv: &'a Value, class: &str, key: &str) -> &'a Value {
    &inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["class"] == class && i["key"] == key)
        .unwrap_or_else(|| panic!("no {class}/{key}"))["attrs"]
}

fn relations(inv: &Value) -> Vec<(String, String, String)> {
    inv["relations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
                r["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn mounted_on(fs: &str, disk: &str) -> (String, String, String) {
    (
        format!("filesystem/{fs}"),
        "mounted_on".to_owned(),
        format!("disk/{disk}"),
    )
}

fn all_ok(inv: &Value) {
    for c in ["disk", "filesystem", "network_interface"] {
        assert_eq!(status(inv, c), ("ok".to_owned(), Value::Null), "{c}");
    }
}

/// Filesystem attributes under a fixture root: statvfs is never asked (the fixture tree is
/// not the mounted filesystem), so the sizes are null.
fn fs(device: &str, fstype: &str, options: &[&str], disks: &[&str]) -> Value {
    json!({
        "device": device, "fstype": fstype, "options": options, "read_only": false,
        "disks": disks, "size_bytes": null, "used_bytes": null, "available_bytes": null,
        "inodes_total": null, "inodes_used": null,
    })
}

const ALL: &str = "disk,filesystem,network_interface";

#[test]
fn debian12_kvm_guest() {
    let inv = inventory("debian12", ALL);
    all_ok(&inv);
    // loop0/loop1 exist but are not attached.
    assert_eq!(keys(&inv, "disk"), ["sr0", "vda"]);
    assert_eq!(
        *attrs(&inv, "disk", "vda"),
        json!({
            "model": null, "vendor": "0x1af4", "serial": null, "wwn": null, "firmware": null,
            "size_bytes": 21_474_836_480_i64, "rotational": true, "transport": "virtio",
            "removable": false, "read_only": false, "logical_block_size": 512,
            "driver": "virtio_blk", "partitions": ["vda1", "vda2", "vda5"],
        })
    );
    assert_eq!(
        *attrs(&inv, "disk", "sr0"),
        json!({
            "model": "QEMU DVD-ROM", "vendor": "QEMU", "serial": null, "wwn": null,
            "firmware": "2.5+", "size_bytes": 0, "rotational": true, "transport": "sata",
            "removable": true, "read_only": false, "logical_block_size": 2048,
            "driver": "sr", "partitions": [],
        })
    );

    // Pseudo filesystems, tmpfs and ramfs credentials are not CIs; NFS is.
    assert_eq!(keys(&inv, "filesystem"), ["/", "/srv/backup"]);
    assert_eq!(
        *attrs(&inv, "filesystem", "/"),
        fs(
            "/dev/vda1",
            "ext4",
            &["rw", "relatime", "errors=remount-ro"],
            &["vda"]
        )
    );
    assert_eq!(
        attrs(&inv, "filesystem", "/srv/backup")["device"],
        "nas.example.lan:/export/backup"
    );
    assert_eq!(attrs(&inv, "filesystem", "/srv/backup")["disks"], json!([]));

    assert_eq!(keys(&inv, "network_interface"), ["enp1s0", "lo"]);
    assert_eq!(
        *attrs(&inv, "network_interface", "enp1s0"),
        json!({
            "mac": "52:54:00:8a:3c:11", "mtu": 1500, "state": "up",
            // virtio_net reports speed -1 and duplex "unknown".
            "speed_mbps": null, "duplex": null, "virtual": false, "type": "ether",
            "driver": "virtio_net", "master": null, "wireless": false,
            "ipv4": ["192.168.122.50/24"],
            "ipv6": ["2001:db8:122:0:5054:ff:fe8a:3c11/64", "fe80::5054:ff:fe8a:3c11/64"],
        })
    );
    assert_eq!(
        *attrs(&inv, "network_interface", "lo"),
        json!({
            "mac": null, "mtu": 65536, "state": "unknown", "speed_mbps": null,
            "duplex": null, "virtual": true, "type": "loopback", "driver": null,
            "master": null, "wireless": false, "ipv4": ["127.0.0.1/8"], "ipv6": ["::1/128"],
        })
    );
    assert_eq!(relations(&inv), [mounted_on("/", "vda")]);
    assert_eq!(inv["host"]["macs"], json!(["52:54:00:8a:3c:11"]));
}

#[test]
fn rocky9_dell_server_with_md_and_lvm() {
    let inv = inventory("rocky9", ALL);
    all_ok(&inv);
    assert_eq!(
        keys(&inv, "disk"),
        [
            "dm-0", "dm-1", "dm-2", "md126", "md127", "nvme0n1", "sda", "sdb"
        ]
    );
    assert_eq!(
        *attrs(&inv, "disk", "sda"),
        json!({
            "model": "ST600MM0009", "vendor": "SEAGATE",
            // From the binary VPD page 0x80.
            "serial": "WAF1K2LM0000K9381ABC",
            "wwn": "0x5000c500b1f2e3d4", "firmware": "N004",
            "size_bytes": 600_127_266_816_i64, "rotational": true, "transport": "sas",
            "removable": false, "read_only": false, "logical_block_size": 512,
            "driver": "sd", "partitions": ["sda1", "sda2"],
        })
    );
    assert_eq!(attrs(&inv, "disk", "sdb")["serial"], "WAF1K2LN0000K9382DEF");
    assert_eq!(
        *attrs(&inv, "disk", "nvme0n1"),
        json!({
            "model": "Dell Express Flash PM1725b 1.6TB SFF", "vendor": null,
            "serial": "S4ENNA0N501234", "wwn": "eui.36344730525012340025384500000001",
            "firmware": "1.1.0", "size_bytes": 1_600_321_314_816_i64, "rotational": false,
            "transport": "nvme", "removable": false, "read_only": false,
            "logical_block_size": 512, "driver": null, "partitions": [],
        })
    );
    assert_eq!(
        *attrs(&inv, "disk", "dm-0"),
        json!({
            "model": null, "vendor": null, "serial": null, "wwn": null, "firmware": null,
            "size_bytes": 75_161_927_680_i64, "rotational": true, "transport": "dm",
            "removable": false, "read_only": false, "logical_block_size": 512,
            "driver": null, "partitions": [], "dm_name": "rl-root",
            "dm_uuid": "LVM-Qm3x0bXy1GkQ2n8Zr5vT7wJ4pL6sD9fHa1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6",
            "slaves": ["md126"],
        })
    );
    let md = attrs(&inv, "disk", "md126");
    assert_eq!(md["transport"], "md");
    assert_eq!(md["md_level"], "raid1");
    assert_eq!(md["slaves"], json!(["sda2", "sdb2"]));

    assert_eq!(
        keys(&inv, "filesystem"),
        ["/", "/boot", "/home", "/mnt/backup", "/var/lib/pgsql"]
    );
    let xfs = [
        "rw",
        "relatime",
        "seclabel",
        "attr2",
        "inode64",
        "logbufs=8",
        "logbsize=32k",
        "noquota",
    ];
    // LVM on md RAID1 on two SAS disks: every layer is listed.
    assert_eq!(
        *attrs(&inv, "filesystem", "/"),
        fs(
            "/dev/mapper/rl-root",
            "xfs",
            &xfs,
            &["dm-0", "md126", "sda", "sdb"]
        )
    );
    assert_eq!(
        *attrs(&inv, "filesystem", "/boot"),
        fs("/dev/md127", "xfs", &xfs, &["md127", "sda", "sdb"])
    );
    assert_eq!(
        attrs(&inv, "filesystem", "/var/lib/pgsql")["disks"],
        json!(["nvme0n1"])
    );
    assert_eq!(attrs(&inv, "filesystem", "/mnt/backup")["fstype"], "nfs4");

    // bonding_masters is a file in /sys/class/net, not an interface.
    assert_eq!(
        keys(&inv, "network_interface"),
        ["eno1", "eno2", "eno3", "lo"]
    );
    assert_eq!(
        *attrs(&inv, "network_interface", "eno1"),
        json!({
            "mac": "e4:43:4b:1a:2b:3c", "mtu": 1500, "state": "up", "speed_mbps": 10000,
            "duplex": "full", "virtual": false, "type": "ether", "driver": "i40e",
            "master": null, "wireless": false, "ipv4": ["10.20.30.41/24"],
            "ipv6": ["2001:db8:20:30::41/64", "fe80::e643:4bff:fe1a:2b3c/64"],
        })
    );
    let eno2 = attrs(&inv, "network_interface", "eno2");
    assert_eq!(eno2["speed_mbps"], 1000);
    assert_eq!(eno2["driver"], "igb");
    assert_eq!(eno2["ipv4"], json!(["192.168.100.41/24"]));
    // No cable: speed -1 and duplex "unknown" are unknown, not values.
    assert_eq!(
        *attrs(&inv, "network_interface", "eno3"),
        json!({
            "mac": "e4:43:4b:1a:2b:3e", "mtu": 1500, "state": "down", "speed_mbps": null,
            "duplex": null, "virtual": false, "type": "ether", "driver": "igb",
            "master": null, "wireless": false, "ipv4": [], "ipv6": [],
        })
    );

    let rels = relations(&inv);
    let mut want = vec![
        mounted_on("/", "dm-0"),
        mounted_on("/", "md126"),
        mounted_on("/", "sda"),
        mounted_on("/", "sdb"),
        mounted_on("/boot", "md127"),
        mounted_on("/boot", "sda"),
        mounted_on("/boot", "sdb"),
        mounted_on("/home", "dm-2"),
        mounted_on("/home", "md126"),
        mounted_on("/home", "sda"),
        mounted_on("/home", "sdb"),
        mounted_on("/var/lib/pgsql", "nvme0n1"),
    ];
    want.sort();
    assert_eq!(rels, want);
}

#[test]
fn ubuntu2204_desktop_with_snaps_docker_and_usb() {
    let inv = inventory("ubuntu2204", ALL);
    all_ok(&inv);
    // loop0/loop1 back snaps; loop2 is detached.
    assert_eq!(
        keys(&inv, "disk"),
        ["loop0", "loop1", "nvme0n1", "sda", "sdb"]
    );
    assert_eq!(
        *attrs(&inv, "disk", "loop0"),
        json!({
            "model": null, "vendor": null, "serial": null, "wwn": null, "firmware": null,
            "size_bytes": 66_863_104, "rotational": false, "transport": "loop",
            "removable": false, "read_only": true, "logical_block_size": 512,
            "driver": null, "partitions": [],
            "backing_file": "/var/lib/snapd/snaps/core20_2105.snap",
        })
    );
    assert_eq!(
        *attrs(&inv, "disk", "sda"),
        json!({
            "model": "WDC WD20EZAZ-00G", "vendor": "ATA", "serial": "WD-WX12D80ABCDE",
            "wwn": "0x50014ee2b5c6d7e8", "firmware": "0A80",
            "size_bytes": 2_000_398_934_016_i64, "rotational": true, "transport": "sata",
            "removable": false, "read_only": false, "logical_block_size": 512,
            "driver": "sd", "partitions": ["sda1"],
        })
    );
    // A card reader whose VPD serial is all zeros: a placeholder, so null.
    assert_eq!(
        *attrs(&inv, "disk", "sdb"),
        json!({
            "model": "SD/MMC", "vendor": "Generic-", "serial": null, "wwn": null,
            "firmware": "1.00", "size_bytes": 31_914_983_424_i64, "rotational": true,
            "transport": "usb", "removable": true, "read_only": false,
            "logical_block_size": 512, "driver": "sd", "partitions": ["sdb1"],
        })
    );
    assert_eq!(attrs(&inv, "disk", "nvme0n1")["serial"], "S5GXNX0T512345X");
    assert_eq!(
        attrs(&inv, "disk", "nvme0n1")["partitions"],
        json!(["nvme0n1p1", "nvme0n1p2"])
    );

    // No snap squashfs, no docker overlay/netns, no FUSE portals, no host-hunspell bind
    // (a subtree of /), and the escaped space in the SD card's mount point is decoded.
    assert_eq!(
        keys(&inv, "filesystem"),
        ["/", "/boot/efi", "/media/alex/SD CARD", "/mnt/data"]
    );
    assert_eq!(
        *attrs(&inv, "filesystem", "/"),
        fs(
            "/dev/nvme0n1p2",
            "ext4",
            &["rw", "relatime", "errors=remount-ro"],
            &["nvme0n1"]
        )
    );
    let sd = attrs(&inv, "filesystem", "/media/alex/SD CARD");
    assert_eq!(sd["device"], "/dev/sdb1");
    assert_eq!(sd["disks"], json!(["sdb"]));
    assert_eq!(
        sd["options"],
        json!([
            "rw",
            "nosuid",
            "nodev",
            "relatime",
            "uid=1000",
            "gid=1000",
            "fmask=0022",
            "dmask=0022",
            "codepage=437",
            "iocharset=iso8859-1",
            "shortname=mixed",
            "showexec",
            "utf8",
            "flush",
            "errors=remount-ro"
        ])
    );

    assert_eq!(
        keys(&inv, "network_interface"),
        ["docker0", "lo", "veth3f2a1b0", "wlp0s20f3"]
    );
    // The temporary (privacy) IPv6 address in if_inet6 is left out.
    assert_eq!(
        *attrs(&inv, "network_interface", "wlp0s20f3"),
        json!({
            "mac": "8c:f8:c5:6d:21:9a", "mtu": 1500, "state": "up", "speed_mbps": null,
            "duplex": null, "virtual": false, "type": "ether", "driver": "iwlwifi",
            "master": null, "wireless": true, "ipv4": ["192.168.1.23/24"],
            "ipv6": ["2a01:db8:8a2b:1200:3e5f:8c1a:2b4d:6e7f/64", "fe80::8ef8:c5ff:fe6d:219a/64"],
        })
    );
    assert_eq!(
        *attrs(&inv, "network_interface", "docker0"),
        json!({
            "mac": "02:42:5c:1e:7a:90", "mtu": 1500, "state": "up", "speed_mbps": null,
            "duplex": null, "virtual": true, "type": "ether", "driver": null,
            "master": null, "wireless": false, "ipv4": ["172.17.0.1/16"],
            "ipv6": ["fe80::42:5cff:fe1e:7a90/64"],
        })
    );
    assert_eq!(
        *attrs(&inv, "network_interface", "veth3f2a1b0"),
        json!({
            "mac": "6a:1c:3e:88:90:ab", "mtu": 1500, "state": "up", "speed_mbps": 10000,
            "duplex": "full", "virtual": true, "type": "ether", "driver": null,
            "master": "docker0", "wireless": false, "ipv4": [],
            "ipv6": ["fe80::681c:3eff:fe88:90ab/64"],
        })
    );
    // Virtual interfaces stay out of the host's MAC set.
    assert_eq!(inv["host"]["macs"], json!(["8c:f8:c5:6d:21:9a"]));

    let mut want = vec![
        mounted_on("/", "nvme0n1"),
        mounted_on("/boot/efi", "nvme0n1"),
        mounted_on("/media/alex/SD CARD", "sdb"),
        mounted_on("/mnt/data", "sda"),
    ];
    want.sort();
    assert_eq!(relations(&inv), want);
}

#[test]
fn arch_laptop_with_luks_btrfs_and_zram() {
    let inv = inventory("arch", ALL);
    all_ok(&inv);
    // zram0 is swap (/proc/swaps); zram1 is unused.
    assert_eq!(keys(&inv, "disk"), ["dm-0", "nvme0n1", "zram0"]);
    assert_eq!(
        *attrs(&inv, "disk", "dm-0"),
        json!({
            "model": null, "vendor": null, "serial": null, "wwn": null, "firmware": null,
            "size_bytes": 1_023_117_623_296_i64, "rotational": false, "transport": "dm",
            "removable": false, "read_only": false, "logical_block_size": 512,
            "driver": null, "partitions": [], "dm_name": "cryptroot",
            "dm_uuid": "CRYPT-LUKS2-4f6b2a7c9d1e4a8b9c0d1e2f3a4b5c6d-cryptroot",
            "slaves": ["nvme0n1p2"],
        })
    );
    assert_eq!(attrs(&inv, "disk", "zram0")["transport"], "zram");
    assert_eq!(
        attrs(&inv, "disk", "zram0")["size_bytes"],
        8_589_934_592_i64
    );

    // btrfs subvolumes are separate filesystems; their anonymous device number is
    // resolved through /dev/mapper/cryptroot → dm-0 → nvme0n1p2 → nvme0n1.
    assert_eq!(
        keys(&inv, "filesystem"),
        ["/", "/boot", "/home", "/var/log"]
    );
    let root = attrs(&inv, "filesystem", "/");
    assert_eq!(root["device"], "/dev/mapper/cryptroot");
    assert_eq!(root["fstype"], "btrfs");
    assert_eq!(root["disks"], json!(["dm-0", "nvme0n1"]));
    assert_eq!(
        root["options"],
        json!([
            "rw",
            "relatime",
            "compress=zstd:3",
            "ssd",
            "discard=async",
            "space_cache=v2",
            "subvolid=256",
            "subvol=/@"
        ])
    );
    assert_eq!(
        attrs(&inv, "filesystem", "/home")["disks"],
        json!(["dm-0", "nvme0n1"])
    );
    assert_eq!(
        attrs(&inv, "filesystem", "/boot")["disks"],
        json!(["nvme0n1"])
    );

    assert_eq!(
        keys(&inv, "network_interface"),
        ["enp0s31f6", "lo", "wlan0"]
    );
    assert_eq!(
        *attrs(&inv, "network_interface", "wlan0"),
        json!({
            "mac": "3c:58:c2:4e:1f:07", "mtu": 1500, "state": "up", "speed_mbps": null,
            "duplex": null, "virtual": false, "type": "ether", "driver": "iwlwifi",
            "master": null, "wireless": true, "ipv4": ["10.0.0.57/24"],
            "ipv6": ["2001:db8:57:0:7e2f:1a9c:44d0:3b61/64", "fe80::3e58:c2ff:fe4e:1f07/64"],
        })
    );
    let en = attrs(&inv, "network_interface", "enp0s31f6");
    assert_eq!(en["state"], "down");
    assert_eq!(en["speed_mbps"], Value::Null);
    assert_eq!(en["ipv4"], json!([]));
    assert_eq!(relations(&inv).len(), 7);
    assert!(relations(&inv).contains(&mounted_on("/var/log", "dm-0")));
}

#[test]
fn alpine319_container() {
    let inv = inventory("alpine319", ALL);
    // The fixture container has no /sys/block.
    assert_eq!(status(&inv, "disk").0, "unsupported");
    assert_eq!(status(&inv, "filesystem").0, "ok");
    assert_eq!(status(&inv, "network_interface").0, "ok");
    assert!(keys(&inv, "disk").is_empty());

    // The overlay root and a named volume; not the /etc/hosts-style files Docker binds in,
    // nor the masked /proc paths.
    assert_eq!(keys(&inv, "filesystem"), ["/", "/var/lib/app"]);
    let root = attrs(&inv, "filesystem", "/");
    assert_eq!(root["device"], "overlay");
    assert_eq!(root["fstype"], "overlay");
    assert_eq!(root["disks"], json!([]));
    assert_eq!(root["size_bytes"], Value::Null);
    let layer =
        "/var/lib/docker/overlay2/e1c0a9f8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0";
    assert_eq!(
        root["options"],
        json!([
            "rw",
            "relatime",
            "lowerdir=/var/lib/docker/overlay2/l/Z7GQ4XKCJ3RZ2KLDIKD5NVT3GV:/var/lib/docker/overlay2/l/UB2QX7O5CF7YKTJ5TDQUFZP5NB",
            format!("upperdir={layer}/diff"),
            format!("workdir={layer}/work"),
            "nouserxattr"
        ])
    );
    assert_eq!(
        *attrs(&inv, "filesystem", "/var/lib/app"),
        fs(
            "/dev/sda1",
            "ext4",
            &["rw", "relatime", "discard", "errors=remount-ro"],
            &[]
        )
    );

    assert_eq!(keys(&inv, "network_interface"), ["eth0", "lo"]);
    assert_eq!(
        *attrs(&inv, "network_interface", "eth0"),
        json!({
            "mac": "02:42:ac:11:00:02", "mtu": 1500, "state": "up", "speed_mbps": 10000,
            "duplex": "full", "virtual": true, "type": "ether", "driver": null,
            "master": null, "wireless": false, "ipv4": ["172.17.0.2/16"], "ipv6": [],
        })
    );
    assert_eq!(
        attrs(&inv, "network_interface", "lo")["ipv4"],
        json!(["127.0.0.1/8"])
    );
    // The container's veth is virtual: no host MACs.
    assert_eq!(inv["host"]["macs"], json!([]));
    assert!(relations(&inv).is_empty());
}

#[test]
fn relations_need_both_classes() {
    // With only filesystems requested, the disks are not in the inventory, so neither are
    // the relations that would point at them.
    let inv = inventory("debian12", "filesystem");
    assert!(relations(&inv).is_empty());
    assert_eq!(keys(&inv, "filesystem"), ["/", "/srv/backup"]);
    assert!(keys(&inv, "disk").is_empty());
    let inv = inventory("debian12", "filesystem,disk");
    assert_eq!(relations(&inv), [mounted_on("/", "vda")]);
}

#[test]
fn a_tree_without_proc_or_sys_is_reported_not_guessed() {
    let empty = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("cmdb-agent")
        .unwrap()
        .args(["inventory", "--format", "json", "--host-root"])
        .arg(empty.path())
        .arg("--state-dir")
        .arg(state.path())
        .args(["--only", ALL])
        .output()
        .unwrap();
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status(&inv, "disk").0, "unsupported");
    assert_eq!(status(&inv, "network_interface").0, "unsupported");
    assert_eq!(status(&inv, "filesystem").0, "error");
    assert!(inv["items"].as_array().unwrap().is_empty());
}
