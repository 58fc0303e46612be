//! End-to-end: real `cmdb-collector` and `cmdb-agent` processes over loopback mTLS.
//! Each test owns its temp dirs, ports and processes; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, AgentSpec, Collector, bin, copy_tree, fixtures, wait_for};
use serde_json::Value;

/// A private copy of the debian12 fixture host with a watched directory inside it.
fn host(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("host");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let watched = root.join("etc/cmdb-test");
    std::fs::create_dir_all(&watched).unwrap();
    (root, watched)
}

fn spec(root: &Path) -> AgentSpec {
    AgentSpec {
        host_root: root.to_owned(),
        watch: vec![
            "/etc/cmdb-test/*.conf".into(),
            "/etc/ssh/sshd_config".into(),
        ],
        extra: String::new(),
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

fn file_ci(c: &Collector, host_id: &str, path: &str) -> Option<Value> {
    c.cis(&format!("class=file&host={host_id}&include_absent=true"))
        .into_iter()
        .find(|ci| ci["key"] == path)
}

/// Waits for the file CI at `path` and returns its id.
fn file_ci_id(c: &Collector, host_id: &str, path: &str) -> String {
    wait_for(Duration::from_secs(20), "file CI", || {
        file_ci(c, host_id, path)
    })["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn versions(c: &Collector, ci_id: &str) -> Vec<Value> {
    c.get(&format!("/api/v1/cis/{ci_id}"))["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The sha256 history of a file CI, oldest first (removed versions as "-").
fn sha_history(c: &Collector, ci_id: &str) -> Vec<String> {
    versions(c, ci_id)
        .iter()
        .map(|v| {
            if v["state"] == "present" {
                v["attrs"]["sha256"].as_str().unwrap_or("?").to_owned()
            } else {
                "-".to_owned()
            }
        })
        .collect()
}

#[test]
fn inventory_arrives_and_matches_the_one_shot_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _watched) = host(tmp.path());
    let c = Collector::start(&tmp.path().join("collector"));
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &spec(&root));
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);

    // The same host through the one-shot command.
    let out = Command::new(bin("cmdb-agent"))
        .args(["inventory", "--format", "json", "--host-root"])
        .arg(&root)
        .arg("--state-dir")
        .arg(tmp.path().join("oneshot"))
        .args([
            "--watch",
            "/etc/cmdb-test/*.conf",
            "--watch",
            "/etc/ssh/sshd_config",
        ])
        .env(
            "PATH",
            format!(
                "{}:{}",
                fixtures().join("systemd/bin").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("FAKE_SYSTEMCTL_DATA", fixtures().join("systemd/debian12"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: BTreeMap<(String, String), Value> = inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] != "service") // the resident agent has no fake systemctl
        .map(|i| {
            (
                (
                    i["class"].as_str().unwrap().into(),
                    i["key"].as_str().unwrap().into(),
                ),
                i["attrs"].clone(),
            )
        })
        .collect();

    let got = wait_for(Duration::from_secs(30), "the inventory in the CMDB", || {
        let got: BTreeMap<(String, String), Value> = c
            .cis(&format!("host={host_id}"))
            .into_iter()
            .filter(|ci| ci["class"] != "host" && ci["class"] != "service")
            .map(|ci| {
                (
                    (
                        ci["class"].as_str().unwrap().into(),
                        ci["key"].as_str().unwrap().into(),
                    ),
                    ci["attrs"].clone(),
                )
            })
            .collect();
        (got.len() >= expected.len()).then_some(got)
    });
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>(),
        "same CIs"
    );
    for (k, attrs) in &expected {
        assert_eq!(&got[k], attrs, "attrs of {k:?}");
    }
    a.stop();
}

#[test]
fn a_watched_file_edit_is_visible_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, watched) = host(tmp.path());
    std::fs::write(watched.join("app.conf"), b"v=1\n").unwrap();
    let c = Collector::start(&tmp.path().join("collector"));
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &spec(&root));
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);
    let ci = wait_for(Duration::from_secs(20), "file CI", || {
        file_ci(&c, &host_id, "/etc/cmdb-test/app.conf")
    });
    let ci_id = ci["id"].as_str().unwrap().to_owned();
    assert_eq!(ci["attrs"]["sha256"], sha256_hex(b"v=1\n"));

    std::thread::sleep(Duration::from_millis(300));
    let edited = std::time::Instant::now();
    std::fs::write(watched.join("app.conf"), b"v=2\n").unwrap();
    let want = sha256_hex(b"v=2\n");
    wait_for(
        Duration::from_secs(2),
        "the new file version through the API",
        || {
            let ci = c.get(&format!("/api/v1/cis/{ci_id}"));
            (ci["attrs"]["sha256"] == want.as_str()).then_some(())
        },
    );
    eprintln!("watched-file edit visible after {:?}", edited.elapsed());
    let hist = sha_history(&c, &ci_id);
    assert_eq!(hist, vec![sha256_hex(b"v=1\n"), want]);
    // The file delta reported only the files collector; the others' statuses are kept.
    let agent = c.get(&format!("/api/v1/agents/{}", a.agent_id));
    let names: Vec<&str> = agent["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"dpkg") && names.contains(&"files"),
        "{names:?}"
    );
    a.stop();
}

/// Edits `path` `n` times with distinct contents, `pause` apart; returns the expected hashes.
fn edit_series(path: &Path, tag: &str, n: usize, pause: Duration) -> Vec<String> {
    (0..n)
        .map(|i| {
            let body = format!("{tag} edit {i}\n");
            std::fs::write(path, &body).unwrap();
            std::thread::sleep(pause);
            sha256_hex(body.as_bytes())
        })
        .collect()
}

#[test]
fn sigkill_of_the_collector_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, watched) = host(tmp.path());
    let f = watched.join("series.conf");
    std::fs::write(&f, b"start\n").unwrap();
    let mut c = Collector::start(&tmp.path().join("collector"));
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &spec(&root));
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);
    let ci_id = file_ci_id(&c, &host_id, "/etc/cmdb-test/series.conf");

    let mut expected = vec![sha256_hex(b"start\n")];
    expected.extend(edit_series(&f, "before", 5, Duration::from_millis(250)));
    c.kill9();
    expected.extend(edit_series(&f, "while-down", 5, Duration::from_millis(250)));
    c.restart();
    expected.extend(edit_series(&f, "after", 5, Duration::from_millis(250)));

    let hist = wait_for(Duration::from_secs(30), "every version", || {
        let h = sha_history(&c, &ci_id);
        (h.len() >= expected.len() && h.last() == expected.last()).then_some(h)
    });
    assert_eq!(hist, expected, "each edit exactly once, in order");
    // The agent's watermark equals what it sent: nothing pending, nothing skipped.
    let agent = c.get(&format!("/api/v1/agents/{}", a.agent_id));
    assert!(agent["last_seq"].as_u64().unwrap() > 0);
    a.stop();
}

#[test]
fn sigkill_of_the_agent_with_a_full_outbox_resumes_and_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, watched) = host(tmp.path());
    let f = watched.join("pending.conf");
    std::fs::write(&f, b"start\n").unwrap();
    let mut c = Collector::start(&tmp.path().join("collector"));
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &spec(&root));
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);
    let ci_id = file_ci_id(&c, &host_id, "/etc/cmdb-test/pending.conf");

    c.kill9();
    let mut expected = vec![sha256_hex(b"start\n")];
    expected.extend(edit_series(&f, "queued", 4, Duration::from_millis(300)));
    a.kill9(); // events are in the outbox only
    c.restart();
    a.start();
    let hist = wait_for(Duration::from_secs(30), "queued versions", || {
        let h = sha_history(&c, &ci_id);
        (h.last() == expected.last()).then_some(h)
    });
    // Every queued edit arrives once, in order (the restart's snapshot adds nothing new).
    assert_eq!(hist, expected);
    a.stop();
}

#[test]
fn a_backlog_drains_at_the_hinted_rate() {
    // ~60 queued events are more than the collector's bucket holds (two seconds of the
    // rate, 40 events): the agent must split the backlog into paced batches of ≤ 20.
    backlog_drains("[limits]\nper_agent_events_per_second = 20\n");
}

#[test]
fn a_backlog_drains_in_batches_the_collector_accepts() {
    // The agent's own limit is 500 events per batch; this collector takes 8 (its Ack says so).
    backlog_drains("[limits]\nper_agent_events_per_second = 20\nmax_batch_events = 8\n");
}

/// Queues ~60 events while the collector (configured with `limits`, 20 events/s) is down,
/// restarts it and checks the backlog drains, paced, with no batch refused.
fn backlog_drains(limits: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _watched) = host(tmp.path());
    let mut c = Collector::start_with(&tmp.path().join("collector"), limits);
    let mut sp = spec(&root);
    sp.extra = "[intervals]\nheartbeat = \"1s\"\nmetrics_sample = \"100ms\"\nmetrics_window = \"200ms\"\nfile_debounce = \"100ms\"\nfast = \"60s\"\ninventory = \"1h\"\n".into();
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &sp);
    a.start();
    let _ = host_id_of(&c, &a.agent_id);
    c.kill9();
    std::thread::sleep(Duration::from_secs(12)); // ~60 metric windows queue up
    let seq_before = c_last_seq_after_restart(&mut c, &a.agent_id);
    let t = std::time::Instant::now();
    // At 20 events/s a backlog of ~55+ events takes > 2 s, and the stream is never refused.
    let drained = wait_for(Duration::from_secs(30), "backlog drained", || {
        let s = c.get(&format!("/api/v1/agents/{}", a.agent_id))["last_seq"]
            .as_u64()
            .unwrap();
        (s >= seq_before + 55).then_some(s)
    });
    let took = t.elapsed();
    eprintln!("drained to seq {drained} in {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "faster than the hint: {took:?}"
    );
    let log = c.log();
    assert!(
        !log.contains("more than 20 events/s"),
        "agent ignored the hint"
    );
    assert!(
        !log.contains("exceeds the limit"),
        "agent ignored the batch limit"
    );
    a.stop();
}

fn c_last_seq_after_restart(c: &mut Collector, agent_id: &str) -> u64 {
    c.restart();
    c.get(&format!("/api/v1/agents/{agent_id}"))["last_seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn refusals_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _watched) = host(tmp.path());
    let c = Collector::start(&tmp.path().join("collector"));
    let enroll = |state: &Path, token: &str| {
        Command::new(bin("cmdb-agent"))
            .args(["enroll", "--collector", &c.grpc_url(), "--token", token])
            .arg("--ca-file")
            .arg(c.ca_file())
            .arg("--state-dir")
            .arg(state)
            .arg("--host-root")
            .arg(&root)
            .output()
            .unwrap()
    };
    // A used-up token.
    let token = c.token(1, "10m");
    assert!(enroll(&tmp.path().join("a1"), &token).status.success());
    let out = enroll(&tmp.path().join("a2"), &token);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An expired token.
    let token = c.token(5, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!enroll(&tmp.path().join("a3"), &token).status.success());
    // An unknown token.
    assert!(
        !enroll(
            &tmp.path().join("a4"),
            "cmdb-enroll-00000000000000000000000000000000"
        )
        .status
        .success()
    );
    assert_eq!(
        c.agents().len(),
        1,
        "only the first enrollment stored an agent"
    );

    // A revoked agent's stream is refused and stores nothing.
    let mut a = Agent::enroll(&c, &tmp.path().join("revoked"), &spec(&root));
    common::run_ok(
        Command::new(bin("cmdb-collector"))
            .args(["agent", "revoke", &a.agent_id, "--data-dir"])
            .arg(&c.dir),
    );
    a.start();
    wait_for(
        Duration::from_secs(20),
        "revoked refusal in the agent log",
        || a.log().contains("revoked").then_some(()),
    );
    let rec = c.get(&format!("/api/v1/agents/{}", a.agent_id));
    assert_eq!(rec["last_seq"], 0);
    assert!(rec["host_id"].is_null());

    // An agent claiming another instance's identity (its certificate, another instance id).
    let mut b = Agent::enroll(&c, &tmp.path().join("liar"), &spec(&root));
    std::fs::write(
        b.state_dir.join("instance_id"),
        "00000000-1111-4222-8333-444444444444\n",
    )
    .unwrap();
    b.start();
    wait_for(
        Duration::from_secs(20),
        "identity refusal in the agent log",
        || b.log().contains("instance id").then_some(()),
    );
    let rec = c.get(&format!("/api/v1/agents/{}", b.agent_id));
    assert_eq!(rec["last_seq"], 0);
    a.kill9();
    b.kill9();
}

#[test]
fn outbox_overflow_drops_metrics_sends_a_gap_and_loses_no_inventory_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, watched) = host(tmp.path());
    let f = watched.join("overflow.conf");
    std::fs::write(&f, b"start\n").unwrap();
    let mut c = Collector::start(&tmp.path().join("collector"));
    let mut sp = spec(&root);
    // 56 KiB holds the fixture host's snapshot (~35 KiB encoded) but not ten seconds of
    // metrics summarised every 50 ms.
    sp.extra = "[outbox]\nmax_bytes = 57344\n\n[intervals]\nheartbeat = \"1s\"\nmetrics_sample = \"25ms\"\nmetrics_window = \"50ms\"\nfile_debounce = \"50ms\"\nfast = \"60s\"\ninventory = \"1h\"\n".into();
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &sp);
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);
    let ci_id = file_ci_id(&c, &host_id, "/etc/cmdb-test/overflow.conf");
    c.kill9();
    // Metrics fill 64 KiB in seconds; file edits keep coming.
    let last = edit_series(&f, "overflow", 40, Duration::from_millis(250));
    std::fs::write(watched.join("late.conf"), b"late\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.restart();
    let final_sha = last.last().unwrap().clone();
    // The CI may be missing for a while: if the kill came after it was visible but before
    // it was flushed (and acknowledged), it arrives again with the agent's forced snapshot.
    wait_for(Duration::from_secs(40), "reconciled file state", || {
        let ci = c.get_if_found(&format!("/api/v1/cis/{ci_id}"))?;
        (ci["attrs"]["sha256"] == final_sha.as_str()).then_some(())
    });
    wait_for(Duration::from_secs(40), "late file present", || {
        file_ci(&c, &host_id, "/etc/cmdb-test/late.conf").filter(|ci| ci["state"] == "present")
    });
    let agent = c.get(&format!("/api/v1/agents/{}", a.agent_id));
    assert!(
        agent["gaps"].as_u64().unwrap_or(0) >= 1,
        "a Gap arrived: {agent}"
    );
    a.stop();
}

#[test]
fn reinstall_keeps_the_host_and_a_clone_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _watched) = host(tmp.path());
    let c = Collector::start(&tmp.path().join("collector"));
    let mut first = Agent::enroll(&c, &tmp.path().join("first"), &spec(&root));
    first.start();
    let host1 = host_id_of(&c, &first.agent_id);
    first.stop();
    // Not live any more: the collector received its graceful Shutdown and the stream closed.
    wait_for(
        Duration::from_secs(20),
        "first agent's shutdown recorded",
        || {
            let rec = c.get(&format!("/api/v1/agents/{}", first.agent_id));
            (rec["connected"] == false && !rec["last_shutdown"].is_null()).then_some(())
        },
    );

    // Reinstall: new state dir (new key, new instance id, new enrollment), same machine.
    let mut second = Agent::enroll(&c, &tmp.path().join("second"), &spec(&root));
    second.start();
    assert_eq!(
        host_id_of(&c, &second.agent_id),
        host1,
        "reinstall maps to the same host CI"
    );

    // Clone: another live agent claiming the same identity at the same time.
    let mut clone = Agent::enroll(&c, &tmp.path().join("clone"), &spec(&root));
    clone.start();
    let host3 = host_id_of(&c, &clone.agent_id);
    assert_ne!(host3, host1, "a clone gets its own host CI");
    let clones = c.get("/api/v1/clones");
    let list = clones
        .as_array()
        .cloned()
        .or_else(|| clones["items"].as_array().cloned())
        .unwrap();
    assert!(
        list.iter().any(|r| r["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == clone.agent_id.as_str())),
        "clone record: {clones}"
    );
    second.stop();
    clone.stop();
}

#[test]
fn an_inventory_overflow_is_reconciled_by_the_forced_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, watched) = host(tmp.path());
    const FILES: usize = 400;
    for i in 0..FILES {
        std::fs::write(watched.join(format!("f{i:03}.conf")), format!("a{i}\n")).unwrap();
    }
    let mut c = Collector::start(&tmp.path().join("collector"));
    let mut sp = spec(&root);
    // While the collector is down every watched file is replaced by one of another name:
    // FILES "removed" deltas (old attributes) plus FILES "added" ones (new attributes), about
    // twice what the files weigh in a snapshot, however the agent batches them (a slow
    // consumer merges the watcher's batches into fewer, larger Delta events). 160 KiB holds
    // a snapshot of this host (~35 KiB of other CIs + ~0.25 KiB per file: ~135 KiB, before
    // and after) but not those deltas (~200 KiB). An earlier version changed 220 files in
    // place under 128 KiB: a "changed" delta weighs only ~1.3 times its snapshot entry, so
    // the overflow came from per-event overhead and depended on the batching, i.e. on the
    // machine's load. Metrics stay out of it. The CPU budget would (rightly) pause the agent
    // after hundreds of re-hashes; this test is about the outbox, so it gets a bigger one.
    sp.extra = "[budget]\ncpu_percent = 50.0\n\n[outbox]\nmax_bytes = 163840\n\n[intervals]\nheartbeat = \"1s\"\nmetrics_sample = \"1h\"\nmetrics_window = \"1h\"\nfile_debounce = \"20ms\"\nfast = \"60s\"\ninventory = \"2h\"\n".into();
    let mut a = Agent::enroll(&c, &tmp.path().join("agent"), &sp);
    a.start();
    let host_id = host_id_of(&c, &a.agent_id);
    wait_for(
        Duration::from_secs(30),
        "all watched files in the CMDB",
        || (c.cis(&format!("class=file&host={host_id}")).len() > FILES).then_some(()),
    );
    c.kill9();
    for i in 0..FILES {
        std::fs::remove_file(watched.join(format!("f{i:03}.conf"))).unwrap();
        std::fs::write(watched.join(format!("g{i:03}.conf")), format!("b{i}\n")).unwrap();
        if i % 4 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The collector stays down until the agent has hashed and queued the replacements: the
    // overflow shows in its log as the snapshot it then owes (the next queued inventory
    // asks for it). On a loaded machine that takes seconds; should the overflow come with
    // the very last batch, nothing asks before the deadline, and the Gap is queued anyway.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !a.log().contains("Snapshot required") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    c.restart();
    let want: BTreeMap<String, String> = (0..FILES)
        .map(|i| {
            (
                format!("/etc/cmdb-test/g{i:03}.conf"),
                sha256_hex(format!("b{i}\n").as_bytes()),
            )
        })
        .collect();
    let gone: BTreeSet<String> = (0..FILES)
        .map(|i| format!("/etc/cmdb-test/f{i:03}.conf"))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeMap<String, String> = c
            .cis(&format!("class=file&host={host_id}"))
            .into_iter()
            .filter_map(|ci| {
                Some((
                    ci["key"].as_str()?.to_owned(),
                    ci["attrs"]["sha256"].as_str()?.to_owned(),
                ))
            })
            .filter(|(k, _)| want.contains_key(k))
            .collect();
        let still_present = c
            .cis(&format!("class=file&host={host_id}"))
            .into_iter()
            .filter(|ci| ci["state"] == "present")
            .filter(|ci| ci["key"].as_str().is_some_and(|k| gone.contains(k)))
            .count();
        if got == want && still_present == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let wrong = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).count();
            panic!(
                "{wrong} of {FILES} new files not at their final content and {still_present} removed ones still present after 60 s\nagent: {}\nagent log:\n{}\ncollector log:\n{}",
                c.get(&format!("/api/v1/agents/{}", a.agent_id)),
                a.log(),
                c.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let agent = c.get(&format!("/api/v1/agents/{}", a.agent_id));
    assert!(
        agent["gaps"].as_u64().unwrap_or(0) >= 1,
        "a Gap arrived: {agent}"
    );
    assert!(
        agent["dropped_inventory_changes"].as_u64().unwrap_or(0) >= 1,
        "the Gap says inventory changes were dropped: {agent}"
    );
    a.stop();
}
