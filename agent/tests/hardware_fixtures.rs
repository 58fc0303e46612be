//! Hardware and OS discovery (`system`, `memory_module`, `os`, `cpu`, `memory`) against the
//! fixture hosts, through the real binary: exact attributes and collector statuses.
//!
//! Virtualization on debian12 is "kvm": its DMI says QEMU and its clocksources include
//! kvm-clock, i.e. a KVM-accelerated QEMU guest (what systemd-detect-virt reports).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

const CLASSES: &str = "system,os,cpu,memory,memory_module";

fn fixture(distro: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(distro)
}

fn inventory(root: &Path) -> Value {
    common::inventory(root, CLASSES, &[], &[])
}

/// (status, message) of a collector.
fn status(inv: &Value, name: &str) -> (String, Value) {
    common::status(inv, name)
}

fn items<'a>(inv: &'a Value, class: &str) -> Vec<&'a Value> {
    inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .collect()
}

/// The attrs of the one item of `class` with `key`.
fn attrs<'a>(inv: &'a Value, class: &str, key: &str) -> &'a Value {
    let found: Vec<_> = items(inv, class)
        .into_iter()
        .filter(|i| i["key"] == key)
        .collect();
    assert_eq!(found.len(), 1, "{class}/{key}");
    &found[0]["attrs"]
}

fn keys(inv: &Value, class: &str) -> Vec<String> {
    items(inv, class)
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_all_ok(inv: &Value) {
    for name in ["system", "memory_module", "os", "cpu", "memory"] {
        assert_eq!(status(inv, name), ("ok".into(), Value::Null), "{name}");
    }
}

#[test]
fn rocky9_dell_poweredge() {
    let inv = inventory(&fixture("rocky9"));
    assert_all_ok(&inv);
    assert_eq!(
        attrs(&inv, "system", "system"),
        &json!({
            "vendor": "Dell Inc.",
            "product": "PowerEdge R740",
            "product_version": null,
            "serial_number": "7XJ2PQ2",
            "product_uuid": "4c4c4544-0058-4a10-8032-b7c04f505132",
            "product_family": "PowerEdge",
            "product_sku": "SKU=NotProvided;ModelName=PowerEdge R740",
            "board_vendor": "Dell Inc.",
            "board_product": "06WXJT",
            "board_version": "A01",
            "board_serial": ".7XJ2PQ2.CNFCP0098B0123.",
            "board_asset_tag": null,
            "bios_vendor": "Dell Inc.",
            "bios_version": "2.19.1",
            "bios_date": "06/21/2023",
            "chassis_vendor": "Dell Inc.",
            "chassis_type": "Rack Mount Chassis",
            "chassis_serial": "7XJ2PQ2",
            "chassis_asset_tag": "IT-004217",
            "virtualization": "none",
            "container": "none",
            "cloud_instance_id": null,
        })
    );
    assert_eq!(
        inv["host"]["product_uuid"],
        "4c4c4544-0058-4a10-8032-b7c04f505132"
    );
    assert_eq!(inv["host"]["serial_number"], "7XJ2PQ2");

    assert_eq!(keys(&inv, "memory_module"), ["A1", "A2", "B1", "B2"]);
    for (key, serial, asset) in [
        ("A1", "35A1B2C3", "01193560"),
        ("A2", "35A1B2C4", "01193561"),
        ("B1", "35A1B2D0", "01193563"),
        ("B2", "35A1B2D1", "01193564"),
    ] {
        assert_eq!(
            attrs(&inv, "memory_module", key),
            &json!({
                "locator": key,
                "bank_locator": null,
                // 32 GiB does not fit the 15-bit size word: the extended size is used.
                "size_bytes": 34_359_738_368_i64,
                "type": "DDR4",
                "type_detail": ["Synchronous", "Registered (Buffered)"],
                "form_factor": "DIMM",
                "speed_mts": 2933,
                "configured_speed_mts": 2933,
                "rank": 2,
                "manufacturer": "Samsung",
                "serial_number": serial,
                "part_number": "M393A4K40DB2-CVF",
                "asset_tag": asset,
            }),
            "{key}"
        );
    }

    assert_eq!(
        attrs(&inv, "os", "os"),
        &json!({
            "name": "Rocky Linux",
            "version": "9.4 (Blue Onyx)",
            "version_id": "9.4",
            "version_codename": null,
            "build_id": null,
            "id": "rocky",
            "id_like": ["rhel", "centos", "fedora"],
            "pretty_name": "Rocky Linux 9.4 (Blue Onyx)",
            "kernel": "5.14.0-427.22.1.el9_4.x86_64",
            "kernel_version": "#1 SMP PREEMPT_DYNAMIC Wed Jun 12 13:06:32 UTC 2024",
            "arch": "x86_64",
            "hostname": "db01.corp.example.com",
            "fqdn": "db01.corp.example.com",
            "machine_id": "5f1c0b2e9a7d4c3b8e6f1a2d3c4b5a69",
            "boot_time": "2024-06-03T07:33:20Z",
            "timezone": "America/New_York",
        })
    );
    assert_eq!(
        attrs(&inv, "cpu", "cpu"),
        &json!({
            "model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
            "vendor": "GenuineIntel",
            "sockets": 2,
            "cores": 40,
            "logical_cpus": 80,
            "threads_per_core": 2,
            // cpufreq's maximum, not the momentary "cpu MHz" of cpuinfo.
            "mhz": 3900,
            "virtualization_support": "vmx",
            "cache_size_bytes": 28_835_840,
            "microcode": "0x5003604",
        })
    );
    assert_eq!(
        attrs(&inv, "memory", "memory"),
        &json!({
            "total_bytes": 131_470_628_i64 * 1024,
            "swap_total_bytes": 4_194_300_i64 * 1024,
            "hugepages_total": 0,
            "hugepage_size_bytes": 2_097_152,
        })
    );
}

#[test]
fn ubuntu2204_placeholders_are_null() {
    let inv = inventory(&fixture("ubuntu2204"));
    assert_all_ok(&inv);
    assert_eq!(
        attrs(&inv, "system", "system"),
        &json!({
            "vendor": null,
            "product": null,
            "product_version": null,
            "serial_number": null,
            "product_uuid": null,
            "product_family": null,
            "product_sku": null,
            "board_vendor": "ASRock",
            "board_product": "B450M Pro4",
            "board_version": null,
            "board_serial": "M80-C6016100456",
            "board_asset_tag": null,
            "bios_vendor": "American Megatrends International, LLC.",
            "bios_version": "P5.60",
            "bios_date": "10/20/2023",
            "chassis_vendor": null,
            "chassis_type": "Desktop",
            "chassis_serial": null,
            "chassis_asset_tag": null,
            "virtualization": "none",
            "container": "none",
            "cloud_instance_id": null,
        })
    );
    let host = &inv["host"];
    assert_eq!(host["product_uuid"], Value::Null);
    assert_eq!(host["serial_number"], Value::Null);
    assert_eq!(host["board_serial"], "M80-C6016100456");

    // Both channels call their slots "DIMM 0"/"DIMM 1": the bank prefixes the key.
    assert_eq!(
        keys(&inv, "memory_module"),
        ["P0 CHANNEL A/DIMM 1", "P0 CHANNEL B/DIMM 1"]
    );
    for bank in ["P0 CHANNEL A", "P0 CHANNEL B"] {
        assert_eq!(
            attrs(&inv, "memory_module", &format!("{bank}/DIMM 1")),
            &json!({
                "locator": "DIMM 1",
                "bank_locator": bank,
                "size_bytes": 17_179_869_184_i64,
                "type": "DDR4",
                "type_detail": ["Synchronous", "Unbuffered (Unregistered)"],
                "form_factor": "DIMM",
                "speed_mts": 3200,
                "configured_speed_mts": 3200,
                "rank": 2,
                "manufacturer": null,
                "serial_number": null,
                "part_number": "F4-3200C16-16GVK",
                "asset_tag": null,
            })
        );
    }

    assert_eq!(
        attrs(&inv, "os", "os"),
        &json!({
            "name": "Ubuntu",
            "version": "22.04.4 LTS (Jammy Jellyfish)",
            "version_id": "22.04",
            "version_codename": "jammy",
            "build_id": null,
            "id": "ubuntu",
            "id_like": ["debian"],
            "pretty_name": "Ubuntu 22.04.4 LTS",
            "kernel": "6.5.0-41-generic",
            "kernel_version": "#41~22.04.2-Ubuntu SMP PREEMPT_DYNAMIC Mon Jun  3 11:32:55 UTC 2",
            "arch": "x86_64",
            "hostname": "jdoe-desktop",
            "fqdn": null,
            "machine_id": "b7e2c4a1f0d94e8c9a3b5d6e7f801234",
            "boot_time": "2024-06-09T08:00:00Z",
            "timezone": "Europe/Berlin",
        })
    );
    assert_eq!(
        attrs(&inv, "cpu", "cpu"),
        &json!({
            "model": "AMD Ryzen 7 5800X 8-Core Processor",
            "vendor": "AuthenticAMD",
            "sockets": 1,
            "cores": 8,
            "logical_cpus": 16,
            "threads_per_core": 2,
            "mhz": 3800,
            "virtualization_support": "svm",
            "cache_size_bytes": 524_288,
            "microcode": "0xa201016",
        })
    );
    assert_eq!(
        attrs(&inv, "memory", "memory"),
        &json!({
            "total_bytes": 32_802_384_i64 * 1024,
            "swap_total_bytes": 2_097_148_i64 * 1024,
            "hugepages_total": 0,
            "hugepage_size_bytes": 2_097_152,
        })
    );
}

#[test]
fn arch_thinkpad() {
    let inv = inventory(&fixture("arch"));
    assert_all_ok(&inv);
    assert_eq!(
        attrs(&inv, "system", "system"),
        &json!({
            "vendor": "LENOVO",
            "product": "20XWCTO1WW",
            "product_version": "ThinkPad X1 Carbon Gen 9",
            "serial_number": "PF3K7ZQM",
            "product_uuid": "a5b7c3d2-1e4f-11b2-a85c-8f7e3d2c1b0a",
            "product_family": "ThinkPad X1 Carbon Gen 9",
            "product_sku": "LENOVO_MT_20XW_BU_Think_FM_ThinkPad X1 Carbon Gen 9",
            "board_vendor": "LENOVO",
            "board_product": "20XWCTO1WW",
            "board_version": "SDK0J40697 WIN",
            "board_serial": "L1HF16K01AB",
            "board_asset_tag": null,
            "bios_vendor": "LENOVO",
            "bios_version": "N32ET86W (1.62 )",
            "bios_date": "06/20/2023",
            "chassis_vendor": "LENOVO",
            "chassis_type": "Notebook",
            "chassis_serial": "PF3K7ZQM",
            "chassis_asset_tag": null,
            "virtualization": "none",
            "container": "none",
            "cloud_instance_id": null,
        })
    );
    let modules = keys(&inv, "memory_module");
    assert_eq!(
        modules,
        [
            "Controller0-ChannelA-DIMM0",
            "Controller0-ChannelB-DIMM0",
            "Controller1-ChannelA-DIMM0",
            "Controller1-ChannelB-DIMM0",
        ]
    );
    for (i, key) in modules.iter().enumerate() {
        assert_eq!(
            attrs(&inv, "memory_module", key),
            &json!({
                "locator": key,
                "bank_locator": format!("BANK {i}"),
                "size_bytes": 4_294_967_296_i64,
                "type": "LPDDR4",
                "type_detail": ["Synchronous"],
                "form_factor": "Row Of Chips",
                "speed_mts": 4267,
                "configured_speed_mts": 4267,
                "rank": 2,
                "manufacturer": "Samsung",
                "serial_number": null,
                "part_number": "K4UBE3D4AB-MGCL",
                "asset_tag": null,
            })
        );
    }
    assert_eq!(
        attrs(&inv, "os", "os"),
        &json!({
            "name": "Arch Linux",
            "version": null,
            "version_id": null,
            "version_codename": null,
            "build_id": "rolling",
            "id": "arch",
            "id_like": null,
            "pretty_name": "Arch Linux",
            "kernel": "6.9.7-arch1-1",
            "kernel_version": "#1 SMP PREEMPT_DYNAMIC Fri, 28 Jun 2024 04:32:50 +0000",
            "arch": "x86_64",
            "hostname": "thinkpad",
            "fqdn": "thinkpad.home.arpa",
            "machine_id": "0c8e5f2a7b3d4e1f9a6b2c8d4e0f1a3b",
            "boot_time": "2024-07-01T10:33:20Z",
            // From the /etc/localtime link text alone (Arch has no /etc/timezone).
            "timezone": "Europe/Berlin",
        })
    );
    assert_eq!(
        attrs(&inv, "cpu", "cpu"),
        &json!({
            "model": "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz",
            "vendor": "GenuineIntel",
            "sockets": 1,
            "cores": 4,
            "logical_cpus": 8,
            "threads_per_core": 2,
            "mhz": 4700,
            "virtualization_support": "vmx",
            "cache_size_bytes": 12_582_912,
            "microcode": "0xb8",
        })
    );
    assert_eq!(
        attrs(&inv, "memory", "memory")["total_bytes"],
        15_996_628_i64 * 1024
    );
}

#[test]
fn debian12_kvm_guest() {
    let inv = inventory(&fixture("debian12"));
    assert_all_ok(&inv);
    assert_eq!(
        attrs(&inv, "system", "system"),
        &json!({
            "vendor": "QEMU",
            "product": "Standard PC (Q35 + ICH9, 2009)",
            "product_version": "pc-q35-7.2",
            "serial_number": null,
            "product_uuid": "8d4e2f0a-3b6c-4c1e-9f2a-5e7d8c9b0a11",
            "product_family": null,
            "product_sku": null,
            // QEMU has no baseboard structure: sysfs has no board_* files, nor the table.
            "board_vendor": null,
            "board_product": null,
            "board_version": null,
            "board_serial": null,
            "board_asset_tag": null,
            "bios_vendor": "SeaBIOS",
            "bios_version": "1.16.2-debian-1.16.2-1",
            "bios_date": "04/01/2014",
            "chassis_vendor": "QEMU",
            "chassis_type": "Other",
            "chassis_serial": null,
            "chassis_asset_tag": null,
            "virtualization": "kvm",
            "container": "none",
            "cloud_instance_id": "iid-local01",
        })
    );
    assert_eq!(inv["host"]["cloud_instance_id"], "iid-local01");
    assert_eq!(keys(&inv, "memory_module"), ["DIMM 0"]);
    assert_eq!(
        attrs(&inv, "memory_module", "DIMM 0"),
        &json!({
            "locator": "DIMM 0",
            "bank_locator": null,
            "size_bytes": 8_589_934_592_i64,
            "type": "RAM",
            "type_detail": [],
            "form_factor": "DIMM",
            "speed_mts": null,
            "configured_speed_mts": null,
            "rank": null,
            "manufacturer": "QEMU",
            "serial_number": null,
            "part_number": null,
            "asset_tag": null,
        })
    );
    let os = attrs(&inv, "os", "os");
    assert_eq!(os["name"], "Debian GNU/Linux");
    assert_eq!(os["version"], "12 (bookworm)");
    assert_eq!(os["id"], "debian");
    assert_eq!(os["id_like"], Value::Null);
    assert_eq!(os["kernel"], "6.1.0-21-amd64");
    assert_eq!(os["hostname"], "debian12-vm");
    assert_eq!(os["fqdn"], "debian12-vm.lab.example.net");
    assert_eq!(os["timezone"], "Etc/UTC");
    assert_eq!(os["boot_time"], "2024-06-17T04:53:20Z");
    assert_eq!(
        attrs(&inv, "cpu", "cpu"),
        &json!({
            "model": "Intel Xeon Processor (Cascadelake)",
            "vendor": "GenuineIntel",
            "sockets": 1,
            "cores": 4,
            "logical_cpus": 4,
            "threads_per_core": 1,
            // No cpufreq in a guest: cpuinfo's steady 2394.374 MHz, rounded.
            "mhz": 2394,
            "virtualization_support": null,
            "cache_size_bytes": 16_777_216,
            "microcode": "0x1",
        })
    );
    assert_eq!(
        attrs(&inv, "memory", "memory"),
        &json!({
            "total_bytes": 8_131_312_i64 * 1024,
            "swap_total_bytes": 999_420_i64 * 1024,
            "hugepages_total": 0,
            "hugepage_size_bytes": 2_097_152,
        })
    );
}

#[test]
fn alpine319_docker_container() {
    let inv = inventory(&fixture("alpine319"));
    for name in ["system", "os", "cpu", "memory"] {
        assert_eq!(status(&inv, name), ("ok".into(), Value::Null), "{name}");
    }
    assert_eq!(
        status(&inv, "memory_module"),
        (
            "unsupported".into(),
            json!("no SMBIOS table (/sys/firmware/dmi/tables/DMI absent)")
        )
    );
    assert!(keys(&inv, "memory_module").is_empty());
    let system = attrs(&inv, "system", "system");
    assert_eq!(system["container"], "docker");
    assert_eq!(system["virtualization"], "none");
    for (name, value) in system.as_object().unwrap() {
        if !matches!(name.as_str(), "container" | "virtualization") {
            assert_eq!(value, &Value::Null, "{name}: no DMI in a container");
        }
    }
    assert_eq!(system.as_object().unwrap().len(), 22);
    assert_eq!(
        attrs(&inv, "os", "os"),
        &json!({
            "name": "Alpine Linux",
            // No VERSION in Alpine's os-release: VERSION_ID stands in.
            "version": "3.19.1",
            "version_id": "3.19.1",
            "version_codename": null,
            "build_id": null,
            "id": "alpine",
            "id_like": null,
            "pretty_name": "Alpine Linux v3.19",
            "kernel": "6.1.0-18-amd64",
            "kernel_version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)",
            "arch": "x86_64",
            "hostname": "3f9c2b7e1a4d",
            "fqdn": null,
            "machine_id": null,
            "boot_time": "2024-05-20T10:13:20Z",
            // No /etc/localtime at all: libc's default.
            "timezone": "UTC",
        })
    );
    let cpu = attrs(&inv, "cpu", "cpu");
    assert_eq!(cpu["sockets"], 1);
    assert_eq!(cpu["cores"], 6);
    assert_eq!(cpu["logical_cpus"], 12);
    assert_eq!(cpu["mhz"], 4800);
    assert_eq!(
        attrs(&inv, "memory", "memory")["swap_total_bytes"],
        json!(0)
    );
}

/// Copies `files` of a fixture into a fresh tree (the rest absent).
fn partial_tree(distro: &str, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let to = dir.path().join(f);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(fixture(distro).join(f), to).unwrap();
    }
    dir
}

#[test]
fn without_sysfs_dmi_the_smbios_table_fills_system() {
    let tree = partial_tree(
        "rocky9",
        &[
            "sys/firmware/dmi/tables/DMI",
            "sys/firmware/dmi/tables/smbios_entry_point",
        ],
    );
    let inv = inventory(tree.path());
    assert_eq!(status(&inv, "system").0, "ok");
    let system = attrs(&inv, "system", "system");
    for (name, want) in [
        ("vendor", json!("Dell Inc.")),
        ("product", json!("PowerEdge R740")),
        ("serial_number", json!("7XJ2PQ2")),
        (
            "product_uuid",
            json!("4c4c4544-0058-4a10-8032-b7c04f505132"),
        ),
        ("board_serial", json!(".7XJ2PQ2.CNFCP0098B0123.")),
        ("bios_version", json!("2.19.1")),
        ("chassis_type", json!("Rack Mount Chassis")),
        ("chassis_asset_tag", json!("IT-004217")),
    ] {
        assert_eq!(system[name], want, "{name}");
    }
    assert_eq!(
        inv["host"]["product_uuid"],
        "4c4c4544-0058-4a10-8032-b7c04f505132"
    );
}

#[test]
fn a_truncated_smbios_table_keeps_the_modules_before_the_damage() {
    let tree = partial_tree(
        "rocky9",
        &[
            "sys/firmware/dmi/tables/DMI",
            "sys/firmware/dmi/tables/smbios_entry_point",
        ],
    );
    let table = tree.path().join("sys/firmware/dmi/tables/DMI");
    let bytes = fs::read(&table).unwrap();
    // Cut inside the fourth populated module (B2): A1, A2 and B1 survive.
    let b2 = bytes
        .windows(b"35A1B2D1".len())
        .position(|w| w == b"35A1B2D1")
        .unwrap();
    fs::write(&table, &bytes[..b2 + 3]).unwrap();
    let inv = inventory(tree.path());
    let (state, message) = status(&inv, "memory_module");
    assert_eq!(state, "partial");
    assert!(
        message.as_str().unwrap().contains("not terminated"),
        "{message}"
    );
    assert_eq!(keys(&inv, "memory_module"), ["A1", "A2", "B1"]);
}

#[test]
fn every_fixture_has_the_required_attributes() {
    let required: &[(&str, &[&str])] = &[
        (
            "system",
            &[
                "vendor",
                "product",
                "serial_number",
                "product_uuid",
                "bios_vendor",
                "bios_version",
                "chassis_type",
                "virtualization",
                "container",
            ],
        ),
        (
            "os",
            &[
                "name",
                "version",
                "id",
                "kernel",
                "arch",
                "hostname",
                "boot_time",
                "timezone",
            ],
        ),
        (
            "cpu",
            &["model", "vendor", "sockets", "cores", "logical_cpus", "mhz"],
        ),
        ("memory", &["total_bytes", "swap_total_bytes"]),
        (
            "memory_module",
            &[
                "size_bytes",
                "type",
                "speed_mts",
                "manufacturer",
                "serial_number",
                "part_number",
            ],
        ),
    ];
    for distro in ["rocky9", "ubuntu2204", "arch", "debian12", "alpine319"] {
        let inv = inventory(&fixture(distro));
        for (class, attrs) in required {
            for item in items(&inv, class) {
                for a in *attrs {
                    assert!(
                        item["attrs"].get(a).is_some(),
                        "{distro}: {class}/{} lacks {a}",
                        item["key"]
                    );
                }
            }
        }
    }
}
