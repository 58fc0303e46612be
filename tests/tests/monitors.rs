//! End-to-end: service monitors evaluated by a real `cmdb-agent` on a fixture host tree and
//! reported as `monitor` CIs through a collector over loopback mTLS. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmdb_proto::v1;
use common::{Agent, AgentSpec, Collector, copy_tree, fixtures, wait_for};
use serde_json::Value;

/// A listener on 0.0.0.0:8443 in /proc/net/tcp's format (0x20FB = 8443, state 0A = LISTEN).
const LISTEN_8443: &str = "   9: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 47001 1 0000000000000000 100 0 0 10 0\n";

const INTERVALS: &str = "[intervals]\nheartbeat = \"1s\"\nmetrics_sample = \"1s\"\nmetrics_window = \"10s\"\nfile_debounce = \"100ms\"\nfast = \"60s\"\ninventory = \"1h\"\nmonitor = \"300ms\"\n";

/// A private copy of the debian12 fixture host; returns its root and its /proc/net/tcp
/// text as captured (sshd on :22, no :8443).
fn host(dir: &Path) -> (PathBuf, String) {
    let root = dir.join("host");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let tcp = std::fs::read_to_string(root.join("proc/net/tcp")).unwrap();
    (root, tcp)
}

/// Replaces the fixture's /proc/net/tcp in one rename, so the agent never reads half of it.
fn set_tcp(root: &Path, text: &str) {
    let tmp = root.join("proc/net/.tcp.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, root.join("proc/net/tcp")).unwrap();
}

fn spec(root: &Path, monitors: &str) -> AgentSpec {
    AgentSpec {
        host_root: root.to_owned(),
        watch: vec!["/etc/hostname".into()],
        extra: format!("{INTERVALS}\n{monitors}"),
    }
}

fn host_id_of(c: &Collector, agent_id: &str) -> String {
    wait_for(Duration::from_secs(20), "agent identified", || {
        c.agents()
            .into_iter()
            .find(|a| a["agent_id"] == agent_id)
            .and_then(|a| a["host_id"].as_str().map(str::to_owned))
    })
}

fn monitor_ci(c: &Collector, host_id: &str, name: &str) -> Option<Value> {
    c.cis(&format!("class=monitor&host={host_id}&include_absent=true"))
        .into_iter()
        .find(|ci| ci["key"] == name)
}

/// Waits until the monitor CI `name` is present with `status`; returns it.
fn wait_status(c: &Collector, host_id: &str, name: &str, status: &str, within: Duration) -> Value {
    wait_for(within, &format!("monitor {name} {status}"), || {
        monitor_ci(c, host_id, name)
            .filter(|ci| ci["state"] == "present" && ci["attrs"]["status"] == status)
    })
}

/// The (state, status) history of a CI, oldest first.
fn history(c: &Collector, ci: &Value) -> Vec<String> {
    let id = ci["id"].as_str().unwrap();
    c.get(&format!("/api/v1/cis/{id}"))["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            if v["state"] == "present" {
                v["attrs"]["status"].as_str().unwrap_or("?").to_owned()
            } else {
                v["state"].as_str().unwrap_or("?").to_owned()
            }
        })
        .collect()
}

#[test]
fn a_port_that_stops_listening_is_down_within_seconds_and_up_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, captured) = host(tmp.path());
    set_tcp(&root, &format!("{captured}{LISTEN_8443}"));
    let c = Collector::start(&tmp.path().join("collector"));
    let monitors = "[[monitors]]\nname = \"tls\"\nkind = \"tcp_port\"\ntarget = \"8443\"\n\n[[monitors]]\nname = \"sshd\"\nkind = \"process\"\ntarget = \"/usr/sbin/sshd\"\n";
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &spec(&root, monitors));
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);

    let ci = wait_status(&c, &host_id, "tls", "up", Duration::from_secs(20));
    assert_eq!(ci["attrs"]["kind"], "tcp_port");
    assert_eq!(ci["attrs"]["target"], "8443");
    assert_eq!(ci["attrs"]["detail"], "listening on 0.0.0.0");
    let sshd = wait_status(&c, &host_id, "sshd", "up", Duration::from_secs(5));
    assert_eq!(sshd["attrs"]["detail"], "running: /usr/sbin/sshd");
    // Rounds with nothing new make no versions.
    std::thread::sleep(Duration::from_secs(1));

    set_tcp(&root, &captured);
    let stopped = Instant::now();
    let ci = wait_status(&c, &host_id, "tls", "down", Duration::from_secs(5));
    eprintln!("port stop visible after {:?}", stopped.elapsed());
    assert_eq!(ci["attrs"]["detail"], "nothing listens on TCP port 8443");

    std::thread::sleep(Duration::from_secs(1));
    set_tcp(&root, &format!("{captured}{LISTEN_8443}"));
    let ci = wait_status(&c, &host_id, "tls", "up", Duration::from_secs(5));
    assert_eq!(history(&c, &ci), vec!["up", "down", "up"]);
    assert_eq!(history(&c, &sshd), vec!["up"]);

    // The class is reported under its own collector status name.
    let agent = c.get(&format!("/api/v1/agents/{}", a.agent_id));
    let report = agent["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "monitor")
        .cloned()
        .unwrap_or_else(|| panic!("no monitor report in {agent}"));
    assert_eq!(report["status"], "ok");
    assert_eq!(report["classes"], serde_json::json!(["monitor"]));
    a.stop();
}

#[test]
fn collector_monitors_win_clashes_survive_restarts_and_can_be_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, captured) = host(tmp.path());
    set_tcp(&root, &format!("{captured}{LISTEN_8443}"));
    let monitor = |name: &str, target: &str| v1::MonitorSpec {
        name: name.into(),
        kind: v1::MonitorKind::TcpPort as i32,
        target: target.into(),
    };
    // What the hook answers; the test changes it between agent restarts.
    let answer = Arc::new(Mutex::new(vec![
        monitor("from-collector", "22"),
        monitor("clash", "9"),
    ]));
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook: cmdb_collector::ingest::AgentConfigFn = {
        let (answer, asked) = (Arc::clone(&answer), Arc::clone(&asked));
        Arc::new(move |host: &str| {
            asked.lock().unwrap().push(host.to_owned());
            v1::Config {
                heartbeat_seconds: 1,
                monitors: answer.lock().unwrap().clone(),
                ..Default::default()
            }
        })
    };
    let c = Collector::start_in_process(&tmp.path().join("collector"), hook);
    let local = "[[monitors]]\nname = \"clash\"\nkind = \"tcp_port\"\ntarget = \"8443\"\n";
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &spec(&root, local));
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);

    let from = wait_status(
        &c,
        &host_id,
        "from-collector",
        "up",
        Duration::from_secs(20),
    );
    assert_eq!(from["attrs"]["detail"], "listening on 0.0.0.0, [::]");
    // The collector's "clash" (port 9) replaced the agent's own (port 8443).
    let clash = wait_status(&c, &host_id, "clash", "down", Duration::from_secs(5));
    assert_eq!(clash["attrs"]["target"], "9");
    assert!(asked.lock().unwrap().iter().all(|h| *h == host_id));

    // A restarted agent evaluates the kept collector monitors in its first snapshot: they
    // never read as removed while it reconnects.
    a.stop();
    a.start();
    wait_for(Duration::from_secs(20), "a second Config", || {
        (asked.lock().unwrap().len() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(history(&c, &from), vec!["up"]);
    // A fresh agent's first snapshot had only its own "clash"; since then, nothing new.
    assert_eq!(history(&c, &clash), vec!["up", "down"]);

    // The collector drops its monitors: after the next connection they are removed CIs and
    // the agent's own "clash" is back.
    answer.lock().unwrap().clear();
    a.stop();
    a.start();
    wait_for(Duration::from_secs(20), "from-collector removed", || {
        monitor_ci(&c, &host_id, "from-collector").filter(|ci| ci["state"] != "present")
    });
    let clash = wait_for(Duration::from_secs(5), "the agent's own clash", || {
        monitor_ci(&c, &host_id, "clash").filter(|ci| ci["attrs"]["target"] == "8443")
    });
    assert_eq!(clash["attrs"]["status"], "up");
    a.stop();
}
