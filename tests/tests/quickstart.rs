//! `cmdb-collector quickstart --dir DIR`: one command gives a collector and a local agent;
//! `DIR/quickstart.json` tells scripts where the API is; a second run resumes the same data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, wait_for};
use serde_json::Value;

fn read_info(dir: &std::path::Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("quickstart.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn cmdbctl(dir: &std::path::Path, args: &[&str]) -> Option<Value> {
    let out = Command::new(bin("cmdbctl"))
        .arg("--quickstart-dir")
        .arg(dir)
        .args(["--format", "json"])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn items(v: &Value) -> Vec<Value> {
    v.as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap_or_default()
}

struct Quickstart(std::process::Child);

impl Quickstart {
    fn start(dir: &std::path::Path) -> Quickstart {
        Quickstart(
            Command::new(bin("cmdb-collector"))
                .arg("quickstart")
                .arg("--dir")
                .arg(dir)
                .args(["--watch", "/etc/hostname"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = wait_for(Duration::from_secs(20), "quickstart exit", || {
            self.0.try_wait().ok().flatten()
        });
        assert!(status.success(), "quickstart exited with {status}");
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn quickstart_runs_a_collector_and_an_agent_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let qs = Quickstart::start(&dir);
    let info = wait_for(Duration::from_secs(30), "quickstart.json", || {
        read_info(&dir)
    });
    assert!(
        info["api_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    let token = info["admin_token"].as_str().unwrap().to_owned();
    // The local agent's inventory arrives: this host's os CI and its packages.
    let os = wait_for(Duration::from_secs(30), "the os CI", || {
        cmdbctl(&dir, &["cis", "--class", "os"])
            .map(|v| items(&v))
            .filter(|v| !v.is_empty())
    });
    let host = os[0]["host_id"].as_str().unwrap().to_owned();
    let agents = items(&cmdbctl(&dir, &["agents"]).unwrap());
    assert_eq!(agents.len(), 1);
    qs.stop();

    // Second run: same admin token, same host, same agent, nothing re-enrolled.
    let qs = Quickstart::start(&dir);
    wait_for(Duration::from_secs(30), "the API again", || {
        cmdbctl(&dir, &["agents"]).filter(|v| items(v).iter().any(|a| a["connected"] == true))
    });
    let info2 = read_info(&dir).unwrap();
    assert_eq!(info2["admin_token"].as_str().unwrap(), token);
    let agents2 = items(&cmdbctl(&dir, &["agents"]).unwrap());
    assert_eq!(agents2.len(), 1, "the agent was not enrolled a second time");
    assert_eq!(agents2[0]["agent_id"], agents[0]["agent_id"]);
    let os2 = items(&cmdbctl(&dir, &["cis", "--class", "os"]).unwrap());
    assert_eq!(os2[0]["host_id"].as_str().unwrap(), host);
    qs.stop();
}
