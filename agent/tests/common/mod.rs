//! Shared by the agent's integration tests: run the real `cmdb-agent inventory` and read
//! what it printed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

/// `cmdb-agent inventory --format json --host-root ROOT --only ONLY EXTRA…` with a fresh
/// state directory and the given environment; asserts success and parses the JSON.
pub fn inventory(root: &Path, only: &str, extra: &[&str], env: &[(&str, String)]) -> Value {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::cargo_bin("cmdb-agent").unwrap();
    cmd.args(["inventory", "--format", "json", "--host-root"])
        .arg(root)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--only", only])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (status, message) of the collector named `name`.
pub fn status(inv: &Value, name: &str) -> (String, Value) {
    let c = inv["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no collector {name}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["message"].clone(),
    )
}
