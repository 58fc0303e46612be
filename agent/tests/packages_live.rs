//! Live cross-check of the dpkg collector against `dpkg-query` on this machine. Where
//! `dpkg-query` is absent (not a Debian-family host), the test prints why and passes.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test, with its message"
)]

use std::collections::BTreeSet;
use std::process::Command as Std;

use assert_cmd::Command;
use serde_json::Value;

type Triple = (String, String, String);

/// The installed packages according to dpkg-query: `ii` (install ok installed) and `hi`
/// (hold ok installed), the states the collector documents as installed.
fn dpkg_query() -> Option<BTreeSet<Triple>> {
    let out = Std::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ])
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                if f.len() != 4 {
                    return None;
                }
                let abbrev = f[0].trim_end();
                (abbrev == "ii" || abbrev == "hi")
                    .then(|| (f[1].to_owned(), f[2].to_owned(), f[3].to_owned()))
            })
            .collect(),
    )
}

#[test]
fn dpkg_matches_dpkg_query() {
    let Some(want) = dpkg_query() else {
        println!("skipped: dpkg-query is not available on this host");
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("cmdb-agent")
        .unwrap()
        .args(["inventory", "--format", "json", "--only", "package"])
        .args(["--host-root", "/"])
        .arg("--state-dir")
        .arg(state.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let inv: Value = serde_json::from_slice(&out).unwrap();
    let dpkg = inv["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dpkg")
        .unwrap();
    assert_eq!(dpkg["status"], "ok", "{dpkg}");
    let got: BTreeSet<Triple> = inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["attrs"]["manager"] == "dpkg")
        .map(|i| {
            let a = &i["attrs"];
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("version"), s("arch"))
        })
        .collect();
    println!(
        "dpkg-query: {} installed packages; agent: {} dpkg CIs in {} ms",
        want.len(),
        got.len(),
        dpkg["duration_ms"]
    );
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing from the agent: {missing:?}; not in dpkg-query: {extra:?}"
    );
    assert_eq!(dpkg["items"].as_u64(), Some(want.len() as u64));
}
