//! The `user`/`group`, `file` and `service` classes on the machine running the tests
//! (`--host-root /`), cross-checked against the system's own tools: `getent passwd`,
//! `getent group`, `sha256sum`, and the presence of /run/systemd/system. A missing tool is
//! reported and the check skipped, never failed.

// Helpers outside #[test] fns: a panic there is the test failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Std;

use serde_json::Value;

fn inventory(only: &str, extra: &[&str]) -> Value {
    common::inventory(Path::new("/"), only, extra, &[])
}

fn collector<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

fn items<'a>(doc: &'a Value, class: &str) -> BTreeMap<String, &'a Value> {
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .map(|i| (i["key"].as_str().unwrap().to_owned(), &i["attrs"]))
        .collect()
}

/// `tool args…` stdout, or `None` (with the reason printed) when it cannot run.
fn tool(program: &str, args: &[&str]) -> Option<String> {
    match Std::new(program).args(args).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            println!("skipped: {program} {args:?} exited with {}", o.status);
            None
        }
        Err(e) => {
            println!("skipped: {program} is not available: {e}");
            None
        }
    }
}

/// NSS sources for a database other than local files ("systemd", "sss", "ldap" …).
fn other_nss_sources(db: &str) -> Vec<String> {
    let conf = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.split('#').next()?.trim().strip_prefix(&format!("{db}:")))
        .flat_map(|rest| {
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.starts_with('[') && s != "files" && s != "compat")
        .collect()
}

/// Compares "what getent says" with "what the agent says" keyed by name; extra getent
/// entries are tolerated only when NSS has sources besides local files.
fn compare(db: &str, getent: BTreeMap<String, String>, ours: BTreeMap<String, String>) {
    println!(
        "{db}: agent {} entries, getent {}",
        ours.len(),
        getent.len()
    );
    assert!(!ours.is_empty(), "the agent reported no {db} entries");
    for (name, mine) in &ours {
        assert_eq!(getent.get(name), Some(mine), "{db} {name}: agent vs getent");
    }
    let extra: Vec<&String> = getent.keys().filter(|k| !ours.contains_key(*k)).collect();
    if !extra.is_empty() {
        let sources = other_nss_sources(db);
        assert!(
            !sources.is_empty(),
            "getent {db} has entries the agent does not report, with only local files in NSS: {extra:?}"
        );
        println!(
            "getent {db} also lists {extra:?}: they come from NSS sources {sources:?}, not local files"
        );
    }
}

#[test]
fn users_and_groups_match_getent() {
    let (Some(pw), Some(gr)) = (tool("getent", &["passwd"]), tool("getent", &["group"])) else {
        return;
    };
    let doc = inventory("user,group", &[]);
    let status = collector(&doc, "users")["status"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(status == "ok" || status == "partial", "{status}");

    let mut getent = BTreeMap::new();
    for l in pw.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() == 7 {
            // First entry wins, as in getpwnam.
            getent
                .entry(f[0].to_owned())
                .or_insert_with(|| format!("{}:{}:{}:{}", f[2], f[3], f[5], f[6]));
        }
    }
    let ours = items(&doc, "user")
        .into_iter()
        .map(|(k, a)| {
            let v = format!(
                "{}:{}:{}:{}",
                a["uid"],
                a["gid"],
                a["home"].as_str().unwrap(),
                a["shell"].as_str().unwrap()
            );
            (k, v)
        })
        .collect();
    compare("passwd", getent, ours);

    let mut getent = BTreeMap::new();
    for l in gr.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() == 4 {
            let mut members: Vec<&str> = f[3].split(',').filter(|m| !m.is_empty()).collect();
            members.sort_unstable();
            members.dedup();
            getent
                .entry(f[0].to_owned())
                .or_insert_with(|| format!("{}:{}", f[2], members.join(",")));
        }
    }
    let ours = items(&doc, "group")
        .into_iter()
        .map(|(k, a)| {
            let members: Vec<&str> = a["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap())
                .collect();
            (k, format!("{}:{}", a["gid"], members.join(",")))
        })
        .collect();
    compare("group", getent, ours);
}

#[test]
fn a_watched_file_hashes_like_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("watched.conf");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let p = path.to_str().unwrap();
    let Some(sum) = tool("sha256sum", &[p]) else {
        return;
    };
    let expected = sum.split_whitespace().next().unwrap();
    let doc = inventory("file", &["--watch", p]);
    assert_eq!(collector(&doc, "files")["status"], "ok");
    let files = items(&doc, "file");
    assert_eq!(files.len(), 1);
    assert_eq!(files[p]["sha256"], expected);
    assert_eq!(files[p]["size"], 200_000);
}

#[test]
fn services_follow_systemd_presence() {
    let doc = inventory("service", &[]);
    let c = collector(&doc, "systemd");
    if Path::new("/run/systemd/system").exists() {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(!items(&doc, "service").is_empty());
    } else {
        println!("this machine does not run systemd (no /run/systemd/system)");
        assert_eq!(c["status"], "unsupported");
        assert_eq!(
            c["message"],
            "systemd is not running (no /run/systemd/system)"
        );
        assert!(items(&doc, "service").is_empty());
    }
}
