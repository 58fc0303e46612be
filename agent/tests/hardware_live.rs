//! Hardware and OS discovery on the machine running the tests (`--host-root /`), checked
//! against what the system's own tools say. A missing tool skips its check with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command as Std;

use assert_cmd::Command;
use serde_json::Value;

fn live_inventory() -> Value {
    let state = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("cmdb-agent")
        .unwrap()
        .args(["inventory", "--format", "json", "--host-root", "/"])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--only", "system,os,cpu,memory,memory_module"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn attrs<'a>(inv: &'a Value, class: &str) -> &'a Value {
    &inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["class"] == class)
        .unwrap_or_else(|| panic!("no {class} item"))["attrs"]
}

/// The trimmed stdout of a tool, or `None` (with the reason printed) when it cannot run.
fn tool(program: &str, args: &[&str]) -> Option<String> {
    match Std::new(program).args(args).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => {
            println!("skipping: {program} {args:?} exited with {}", o.status);
            None
        }
        Err(e) => {
            println!("skipping: cannot run {program}: {e}");
            None
        }
    }
}

#[test]
fn logical_cpus_match_nproc() {
    let inv = live_inventory();
    let Some(all) = tool("nproc", &["--all"]) else {
        return;
    };
    println!("nproc --all = {all}; nproc = {:?}", tool("nproc", &[]));
    let cpu = attrs(&inv, "cpu");
    println!("cpu = {cpu}");
    assert_eq!(cpu["logical_cpus"].as_i64(), all.parse::<i64>().ok());
}

#[test]
fn memory_total_matches_meminfo() {
    let inv = live_inventory();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(
        attrs(&inv, "memory")["total_bytes"].as_i64(),
        Some(kib * 1024)
    );
}

#[test]
fn kernel_and_arch_match_uname() {
    let inv = live_inventory();
    let os = attrs(&inv, "os");
    println!("os = {os}");
    if let Some(release) = tool("uname", &["-r"]) {
        assert_eq!(os["kernel"].as_str(), Some(release.as_str()));
    }
    if let Some(machine) = tool("uname", &["-m"]) {
        assert_eq!(os["arch"].as_str(), Some(machine.as_str()));
    }
}

#[test]
fn hardware_collectors_are_quick_and_never_fail() {
    let inv = live_inventory();
    let mut total = 0;
    for c in inv["collectors"].as_array().unwrap() {
        println!(
            "{} {} {} ms {}",
            c["name"], c["status"], c["duration_ms"], c["message"]
        );
        assert_ne!(c["status"], "error", "{c}");
        assert_ne!(c["status"], "timeout", "{c}");
        total += c["duration_ms"].as_u64().unwrap();
    }
    // A few milliseconds in release builds; generous for a debug build on a busy machine.
    assert!(total < 500, "hardware collectors took {total} ms");
    println!("system = {}", attrs(&inv, "system"));
}
