//! `cmdb-agent run` with a configuration it must refuse: exit 64 and a message naming the
//! file, the line and the field, before anything else happens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use predicates::str::contains;

fn run_with(text: &str) -> assert_cmd::assert::Assert {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    Command::cargo_bin("cmdb-agent")
        .unwrap()
        .args(["run", "--config"])
        .arg(&path)
        .assert()
}

const HEAD: &str = "collectors = [\"https://c:7443\"]\nstate_dir = \"/nonexistent/cmdb-test\"\n\n[[monitors]]\nname = \"web\"\nkind = \"tcp_port\"\ntarget = \"443\"\n\n";

#[test]
fn a_duplicate_monitor_name_exits_64() {
    run_with(&format!(
        "{HEAD}[[monitors]]\nname = \"web\"\nkind = \"process\"\ntarget = \"nginx\"\n"
    ))
    .code(64)
    .stderr(contains(
        "agent.toml:10:8: monitors[1].name: duplicate monitor name \"web\"",
    ));
}

#[test]
fn an_unknown_monitor_kind_exits_64() {
    run_with(&format!(
        "{HEAD}[[monitors]]\nname = \"db\"\nkind = \"postgres\"\ntarget = \"5432\"\n"
    ))
    .code(64)
    .stderr(contains(
        "agent.toml:11:8: monitors[1].kind: unknown variant `postgres`",
    ));
}

#[test]
fn a_bad_target_exits_64() {
    run_with(&format!(
        "{HEAD}[[monitors]]\nname = \"unit\"\nkind = \"systemd_unit\"\ntarget = \"nginx service\"\n"
    ))
    .code(64)
    .stderr(contains(
        "agent.toml:12:10: monitors[1].target: \"nginx service\" is not a systemd unit name",
    ));
}
