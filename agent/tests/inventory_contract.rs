//! The `cmdb.inventory/v1` JSON contract (DESIGN.md), checked on every fixture host tree
//! and on the live machine: the document's shape, one collector entry per class, statuses
//! from the allowed set, unique keys, relations that resolve, determinism, and the CLI's
//! error handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

const CLASSES: &[&str] = &[
    "system",
    "os",
    "cpu",
    "memory",
    "memory_module",
    "disk",
    "filesystem",
    "network_interface",
    "package",
    "service",
    "listening_port",
    "connection",
    "user",
    "group",
    "kernel_module",
    "file",
    "process",
];
const STATUSES: &[&str] = &[
    "ok",
    "partial",
    "timeout",
    "error",
    "permission_denied",
    "unsupported",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Fixture host trees: every directory under tests/fixtures with an etc/ or proc/ inside.
fn fixture_hosts() -> Vec<PathBuf> {
    let mut hosts: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("etc").is_dir() || p.join("proc").is_dir())
                .collect()
        })
        .unwrap_or_default();
    hosts.sort();
    hosts
}

/// PATH with the fake `rpm` and `systemctl` of the fixtures first (real-format captured
/// output), so the command-driven collectors run their real code paths on fixture hosts.
fn fixture_path() -> String {
    let mut parts = vec![];
    for d in ["rpm/bin", "systemd/bin"] {
        let p = fixtures().join(d);
        if p.is_dir() {
            parts.push(p.display().to_string());
        }
    }
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

fn inventory(root: &Path, state: &Path, extra: &[&str]) -> Value {
    let mut cmd = Command::cargo_bin("cmdb-agent").unwrap();
    if root != Path::new("/") {
        cmd.env("PATH", fixture_path());
        // The fake systemctl answers from the captured outputs of this distro.
        if let Some(name) = root.file_name() {
            cmd.env("FAKE_SYSTEMCTL_DATA", fixtures().join("systemd").join(name));
        }
    }
    let out = cmd
        .args(["inventory", "--format", "json", "--host-root"])
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check_contract(inv: &Value, what: &str) {
    let obj = inv.as_object().unwrap();
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "schema",
            "collected_at",
            "agent",
            "host",
            "collectors",
            "items",
            "relations"
        ]),
        "{what}: top-level keys"
    );
    assert_eq!(inv["schema"], "cmdb.inventory/v1");
    assert!(
        inv["collected_at"].as_str().unwrap().ends_with('Z'),
        "{what}: RFC 3339 UTC"
    );
    assert!(inv["agent"]["version"].is_string());
    assert!(inv["agent"]["instance_id"].is_string());
    let host = inv["host"].as_object().unwrap();
    for k in [
        "hostname",
        "fqdn",
        "machine_id",
        "product_uuid",
        "serial_number",
        "board_serial",
        "cloud_instance_id",
        "macs",
    ] {
        assert!(host.contains_key(k), "{what}: host.{k}");
    }

    // Every class is covered by a collector, and every status is from the allowed set.
    let mut covered = BTreeSet::new();
    for c in inv["collectors"].as_array().unwrap() {
        let status = c["status"].as_str().unwrap();
        assert!(STATUSES.contains(&status), "{what}: status {status}");
        assert!(c["duration_ms"].is_u64() && c["items"].is_u64());
        assert!(c["message"].is_null() || c["message"].is_string());
        for cl in c["classes"].as_array().unwrap() {
            covered.insert(cl.as_str().unwrap().to_owned());
        }
        assert_ne!(
            c["message"].as_str(),
            Some("not implemented yet"),
            "{what}: collector {} is still a stub",
            c["name"]
        );
    }
    for cl in CLASSES {
        assert!(
            covered.contains(*cl),
            "{what}: no collector reports class {cl}"
        );
    }

    // Keys are unique per class; items are sorted; attrs are objects.
    let mut seen = BTreeSet::new();
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    let items = inv["items"].as_array().unwrap();
    for it in items {
        let class = it["class"].as_str().unwrap();
        let key = it["key"].as_str().unwrap();
        assert!(CLASSES.contains(&class), "{what}: unknown class {class}");
        assert!(!key.is_empty(), "{what}: empty key in {class}");
        assert!(
            seen.insert(format!("{class}/{key}")),
            "{what}: duplicate {class}/{key}"
        );
        assert!(it["attrs"].is_object());
        *per_class.entry(class).or_default() += 1;
    }
    let order: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                i["class"].as_str().unwrap().into(),
                i["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "{what}: items sorted by (class, key)");

    // A collector's item count equals the items of its class (single-class collectors;
    // several package managers share `package`, so their sum is checked instead).
    let mut package_sum = 0;
    for c in inv["collectors"].as_array().unwrap() {
        let classes = c["classes"].as_array().unwrap();
        let n = c["items"].as_u64().unwrap() as usize;
        if classes.len() == 1 && classes[0] == "package" {
            package_sum += n;
        } else if classes.len() == 1 {
            let cl = classes[0].as_str().unwrap();
            assert_eq!(
                n,
                per_class.get(cl).copied().unwrap_or(0),
                "{what}: collector {} item count",
                c["name"]
            );
        }
    }
    assert_eq!(
        package_sum,
        per_class.get("package").copied().unwrap_or(0),
        "{what}: package collectors' item counts"
    );

    // Relations resolve to items of this inventory.
    for r in inv["relations"].as_array().unwrap() {
        for end in ["from", "to"] {
            let e = r[end].as_str().unwrap();
            assert!(seen.contains(e), "{what}: relation end {e} is not an item");
        }
        assert!(!r["kind"].as_str().unwrap().is_empty());
    }
}

/// Everything but timings and the timestamp.
fn stable_part(inv: &Value) -> Value {
    let mut v = inv.clone();
    v["collected_at"] = Value::Null;
    for c in v["collectors"].as_array_mut().unwrap() {
        c["duration_ms"] = Value::Null;
    }
    v
}

#[test]
fn every_fixture_host_meets_the_contract_and_is_deterministic() {
    let hosts = fixture_hosts();
    assert!(
        !hosts.is_empty(),
        "no fixture host trees under {}",
        fixtures().display()
    );
    for root in hosts {
        let state = tempfile::tempdir().unwrap();
        let what = root.file_name().unwrap().to_string_lossy().into_owned();
        let a = inventory(&root, state.path(), &[]);
        check_contract(&a, &what);
        let b = inventory(&root, state.path(), &[]);
        assert_eq!(stable_part(&a), stable_part(&b), "{what}: two runs differ");
        assert_eq!(
            a["agent"]["instance_id"], b["agent"]["instance_id"],
            "{what}: instance id kept"
        );
    }
}

#[test]
fn the_live_host_meets_the_contract() {
    let state = tempfile::tempdir().unwrap();
    let inv = inventory(Path::new("/"), state.path(), &[]);
    check_contract(&inv, "live");
    for c in inv["collectors"].as_array().unwrap() {
        eprintln!(
            "live collector {:<18} {:<18} {:>5} ms {:>5} items {}",
            c["name"].as_str().unwrap(),
            c["status"].as_str().unwrap(),
            c["duration_ms"],
            c["items"],
            c["message"].as_str().unwrap_or("")
        );
    }
}

#[test]
fn only_limits_classes_and_rejects_unknown_ones() {
    let state = tempfile::tempdir().unwrap();
    let inv = inventory(Path::new("/"), state.path(), &["--only", "memory,user"]);
    let classes: BTreeSet<&str> = inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["class"].as_str().unwrap())
        .collect();
    assert!(
        classes.is_subset(&BTreeSet::from(["memory", "user"])),
        "{classes:?}"
    );
    let reported: BTreeSet<&str> = inv["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["classes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
        })
        .collect();
    assert!(
        reported.contains("memory") && reported.contains("user"),
        "{reported:?}"
    );

    Command::cargo_bin("cmdb-agent")
        .unwrap()
        .args(["inventory", "--only", "memory,nonsense"])
        .arg("--state-dir")
        .arg(state.path())
        .assert()
        .code(64)
        .stderr(predicates::str::contains("unknown class \"nonsense\""));
}

#[test]
fn table_format_lists_collectors_and_host() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("cmdb-agent")
        .unwrap()
        .args(["inventory", "--format", "table", "--only", "memory"])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("HOST") && text.contains("COLLECTOR") && text.contains("MEMORY (1)"),
        "{text}"
    );
}

#[test]
fn an_empty_host_root_reports_statuses_instead_of_crashing() {
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let inv = inventory(empty.path(), state.path(), &[]);
    check_contract(&inv, "empty root");
    let items = inv["items"].as_array().unwrap();
    assert!(
        items.len() <= 3,
        "an empty root has (almost) nothing: {items:?}"
    );
}
