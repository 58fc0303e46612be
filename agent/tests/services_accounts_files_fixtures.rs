//! The `service`, `user`/`group` and `file` classes on the fixture hosts, through the real
//! binary: `cmdb-agent inventory --format json --host-root <fixture> --only …`.
//!
//! systemd's runtime state comes from a fake `systemctl` (tests/fixtures/systemd/bin) put
//! first on PATH, answering from outputs captured per distro; it fails on any command line
//! the collector is not supposed to run.

// Helpers outside #[test] fns: a panic there is the test failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ALL_DISTROS: &[&str] = &["debian12", "ubuntu2204", "rocky9", "alpine319", "arch"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs the inventory; `env` is applied to the child only.
fn inventory(root: &Path, only: &str, extra: &[&str], env: &[(&str, String)]) -> Value {
    common::inventory(root, only, extra, env)
}

fn collector<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no collector {name} in {doc}"))
}

fn items<'a>(doc: &'a Value, class: &str) -> BTreeMap<&'a str, &'a Value> {
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .map(|i| (i["key"].as_str().unwrap(), &i["attrs"]))
        .collect()
}

fn keys<'a>(m: &BTreeMap<&'a str, &'a Value>) -> Vec<&'a str> {
    m.keys().copied().collect()
}

// === service ===

fn systemd_env(distro: &str, log: &Path) -> Vec<(&'static str, String)> {
    let bin = fixtures().join("systemd/bin");
    let path = std::env::var("PATH").unwrap_or_default();
    vec![
        ("PATH", format!("{}:{path}", bin.display())),
        (
            "FAKE_SYSTEMCTL_DATA",
            fixtures()
                .join("systemd")
                .join(distro)
                .display()
                .to_string(),
        ),
        ("FAKE_SYSTEMCTL_LOG", log.display().to_string()),
    ]
}

fn services(distro: &str) -> (Value, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("calls");
    let doc = inventory(
        &fixtures().join(distro),
        "service",
        &[],
        &systemd_env(distro, &log),
    );
    let calls = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    (doc, calls)
}

#[test]
fn systemd_services_on_debian12() {
    let (doc, calls) = services("debian12");
    let c = collector(&doc, "systemd");
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(c["message"], Value::Null);
    let svc = items(&doc, "service");
    // auditd.service (a not-found reference), the getty@/serial-getty@ templates and the
    // sshd/autovt aliases are not services of this host.
    assert_eq!(
        keys(&svc),
        vec![
            "apparmor.service",
            "apt-daily-upgrade.service",
            "apt-daily.service",
            "console-getty.service",
            "cron.service",
            "dbus.service",
            "e2scrub_reap.service",
            "getty@tty1.service",
            "networking.service",
            "nfs-common.service",
            "rsync.service",
            "smartmontools.service",
            "ssh.service",
            "systemd-journald.service",
            "systemd-logind.service",
            "systemd-resolved.service",
            "systemd-timesyncd.service",
            "unattended-upgrades.service",
        ]
    );
    assert_eq!(
        svc["ssh.service"],
        &json!({
            "manager": "systemd",
            "description": "OpenBSD Secure Shell server",
            "load_state": "loaded",
            "active_state": "active",
            "sub_state": "running",
            "enabled": "enabled",
            "main_pid": 612,
            "exec": "/usr/sbin/sshd",
            "exec_args": "/usr/sbin/sshd -D $SSHD_OPTS",
            "fragment_path": "/lib/systemd/system/ssh.service",
            "user": null,
        })
    );
    // Installed but never loaded: only list-unit-files knows it, show fills in the rest.
    assert_eq!(
        svc["rsync.service"],
        &json!({
            "manager": "systemd",
            "description": "fast remote file copy program daemon",
            "load_state": "loaded",
            "active_state": "inactive",
            "sub_state": "dead",
            "enabled": "disabled",
            "main_pid": null,
            "exec": "/usr/bin/rsync",
            "exec_args": "/usr/bin/rsync --daemon --no-detach",
            "fragment_path": "/lib/systemd/system/rsync.service",
            "user": null,
        })
    );
    assert_eq!(
        svc["nfs-common.service"],
        &json!({
            "manager": "systemd",
            "description": "nfs-common.service",
            "load_state": "masked",
            "active_state": "inactive",
            "sub_state": "dead",
            "enabled": "masked",
            "main_pid": null,
            "exec": null,
            "exec_args": null,
            "fragment_path": "/dev/null",
            "user": null,
        })
    );
    assert_eq!(svc["systemd-timesyncd.service"]["user"], "systemd-timesync");
    assert_eq!(svc["smartmontools.service"]["active_state"], "failed");
    assert_eq!(svc["smartmontools.service"]["main_pid"], Value::Null);
    assert_eq!(svc["getty@tty1.service"]["enabled"], "enabled");
    assert_eq!(
        svc["getty@tty1.service"]["exec_args"],
        r"/sbin/agetty -o -p -- \u --noclear - $TERM"
    );
    // Three runs: both lists and one batched show with every name.
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        calls[0],
        "list-units --type=service --all --plain --no-legend --no-pager"
    );
    assert_eq!(
        calls[1],
        "list-unit-files --type=service --no-legend --no-pager"
    );
    assert!(calls[2].starts_with("show --no-pager -p Id,Description,LoadState,ActiveState,SubState,UnitFileState,MainPID,ExecStart,FragmentPath,User -- apparmor.service "));
    assert!(!calls[2].contains("sshd.service") && !calls[2].contains("getty@.service"));
}

#[test]
fn systemd_services_on_rocky9_arch_and_ubuntu2204() {
    let expected: &[(&str, &[&str])] = &[
        (
            "rocky9",
            &[
                "NetworkManager.service",
                "auditd.service",
                "chronyd.service",
                "crond.service",
                "dataeng.service",
                "dbus-broker.service",
                "firewalld.service",
                "kdump.service",
                "mdmonitor.service",
                "rdisc.service",
                "sshd.service",
                "systemd-journald.service",
                "tuned.service",
            ],
        ),
        (
            "arch",
            &[
                "NetworkManager.service",
                "bluetooth.service",
                "cups.service",
                "dbus-broker.service",
                "fstrim.service",
                "sshd.service",
                "systemd-journald.service",
                "systemd-logind.service",
                "systemd-timesyncd.service",
                "tlp.service",
                "upower.service",
                "user@1000.service",
            ],
        ),
        (
            "ubuntu2204",
            &[
                "NetworkManager.service",
                "accounts-daemon.service",
                "apport.service",
                "bluetooth.service",
                "cups.service",
                "gdm.service",
                "plymouth-quit-wait.service",
                "snapd.service",
                "systemd-journald.service",
                "systemd-resolved.service",
                "whoopsie.service",
            ],
        ),
    ];
    for (distro, want) in expected {
        let (doc, calls) = services(distro);
        let c = collector(&doc, "systemd");
        assert_eq!(c["status"], "ok", "{distro}: {c}");
        let svc = items(&doc, "service");
        assert_eq!(keys(&svc), *want, "{distro}");
        assert_eq!(calls.len(), 3, "{distro}: {calls:?}");
        for (k, attrs) in &svc {
            for a in [
                "manager",
                "description",
                "load_state",
                "active_state",
                "sub_state",
                "enabled",
                "main_pid",
                "exec",
                "exec_args",
                "fragment_path",
                "user",
            ] {
                assert!(attrs.get(a).is_some(), "{distro} {k}: no {a}");
            }
        }
    }
    let (doc, _) = services("rocky9");
    let svc = items(&doc, "service");
    assert_eq!(svc["sshd.service"]["main_pid"], 1188);
    assert_eq!(
        svc["sshd.service"]["exec_args"],
        "/usr/sbin/sshd -D $OPTIONS"
    );
    assert_eq!(svc["dataeng.service"]["enabled"], "enabled");
    let (doc, _) = services("arch");
    let svc = items(&doc, "service");
    assert_eq!(
        svc["user@1000.service"],
        &json!({
            "manager": "systemd",
            "description": "User Manager for UID 1000",
            "load_state": "loaded",
            "active_state": "active",
            "sub_state": "running",
            "enabled": "static",
            "main_pid": 1105,
            "exec": "/usr/lib/systemd/systemd",
            "exec_args": "/usr/lib/systemd/systemd --user",
            "fragment_path": "/usr/lib/systemd/system/user@.service",
            "user": "1000",
        })
    );
    // D-Bus activated: running although not enabled.
    assert_eq!(svc["upower.service"]["enabled"], "disabled");
    assert_eq!(svc["upower.service"]["active_state"], "active");
    let (doc, _) = services("ubuntu2204");
    let svc = items(&doc, "service");
    assert_eq!(svc["apport.service"]["enabled"], "generated");
}

#[test]
fn no_systemd_in_the_alpine_container() {
    let (doc, calls) = services("alpine319");
    let c = collector(&doc, "systemd");
    assert_eq!(c["status"], "unsupported");
    assert_eq!(
        c["message"],
        "systemd is not running (no /run/systemd/system)"
    );
    assert!(items(&doc, "service").is_empty());
    assert!(calls.is_empty(), "systemctl was run: {calls:?}");
}

#[test]
fn a_hung_systemctl_is_reported_as_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut env = systemd_env("debian12", &tmp.path().join("calls"));
    env.push(("FAKE_SYSTEMCTL_HANG", "1".to_owned()));
    let t = Instant::now();
    let doc = inventory(&fixtures().join("debian12"), "service", &[], &env);
    // The per-command timeout (4 s) fires well before the collector's own (10 s).
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    let c = collector(&doc, "systemd");
    assert_eq!(c["status"], "timeout", "{c}");
    let m = c["message"].as_str().unwrap();
    assert!(
        m.contains("systemd manager did not answer") && m.contains("timed out after"),
        "{m}"
    );
    assert!(items(&doc, "service").is_empty());
}

// === user / group ===

/// The first field of every well-formed line, from the fixture file itself.
fn names_in(distro: &str, file: &str, fields: usize) -> Vec<String> {
    let text = fs::read_to_string(fixtures().join(distro).join("etc").join(file)).unwrap();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.split(':').count() == fields)
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn accounts_on_every_distro() {
    for distro in ALL_DISTROS {
        let doc = inventory(&fixtures().join(distro), "user,group", &[], &[]);
        let c = collector(&doc, "users");
        if *distro == "rocky9" {
            assert_eq!(c["status"], "partial", "{c}");
            assert_eq!(
                c["message"],
                "/etc/passwd line 21: expected 7 colon-separated fields"
            );
        } else {
            assert_eq!(c["status"], "ok", "{distro}: {c}");
        }
        let users = items(&doc, "user");
        let groups = items(&doc, "group");
        assert_eq!(keys(&users), names_in(distro, "passwd", 7), "{distro}");
        assert_eq!(keys(&groups), names_in(distro, "group", 4), "{distro}");
        for (name, u) in &users {
            let obj = u.as_object().unwrap();
            let mut attrs: Vec<&str> = obj.keys().map(String::as_str).collect();
            attrs.sort_unstable();
            assert_eq!(
                attrs,
                vec![
                    "gecos",
                    "gid",
                    "groups",
                    "home",
                    "login_shell",
                    "primary_group",
                    "shell",
                    "system_account",
                    "uid"
                ],
                "{distro} {name}"
            );
            // Every group named is a group CI, so each becomes a member_of relation.
            for g in u["groups"].as_array().unwrap() {
                let g = g.as_str().unwrap();
                assert!(groups.contains_key(g), "{distro} {name}: {g}");
                let rel = json!({"from": format!("user/{name}"), "to": format!("group/{g}"), "kind": "member_of"});
                assert!(
                    doc["relations"].as_array().unwrap().contains(&rel),
                    "{distro}: {rel}"
                );
            }
        }
    }
}

#[test]
fn account_details() {
    let doc = inventory(&fixtures().join("debian12"), "user,group", &[], &[]);
    let users = items(&doc, "user");
    let groups = items(&doc, "group");
    assert_eq!(
        users["debian"],
        &json!({
            "uid": 1000, "gid": 1000, "primary_group": "debian",
            "home": "/home/debian", "shell": "/bin/bash", "gecos": "Debian",
            "groups": ["adm", "audio", "cdrom", "debian", "dialout", "dip", "floppy",
                       "netdev", "plugdev", "sudo", "video"],
            "login_shell": true, "system_account": false,
        })
    );
    assert_eq!(
        users["_apt"],
        &json!({
            "uid": 42, "gid": 65534, "primary_group": "nogroup",
            "home": "/nonexistent", "shell": "/usr/sbin/nologin", "gecos": "",
            "groups": ["nogroup"], "login_shell": false, "system_account": true,
        })
    );
    assert_eq!(users["nobody"]["system_account"], true);
    assert_eq!(users["sync"]["login_shell"], true);
    assert_eq!(
        groups["sudo"],
        &json!({"gid": 27, "members": ["debian"], "primary_members": []})
    );
    assert_eq!(
        groups["nogroup"],
        &json!({"gid": 65534, "members": [], "primary_members": ["_apt", "nobody", "sshd", "sync"]})
    );
    assert_eq!(
        groups["tape"],
        &json!({"gid": 26, "members": [], "primary_members": []})
    );

    // Busybox style: root listed in its own groups.
    let doc = inventory(&fixtures().join("alpine319"), "user,group", &[], &[]);
    let users = items(&doc, "user");
    assert_eq!(
        users["root"]["groups"],
        json!([
            "adm", "bin", "daemon", "dialout", "disk", "floppy", "root", "sys", "tape", "video",
            "wheel"
        ])
    );
    assert_eq!(users["root"]["shell"], "/bin/ash");
    assert_eq!(users["app"]["groups"], json!(["app"]));
    assert_eq!(
        items(&doc, "group")["bin"]["members"],
        json!(["bin", "daemon", "root"])
    );

    let doc = inventory(&fixtures().join("rocky9"), "user,group", &[], &[]);
    let users = items(&doc, "user");
    assert!(!users.contains_key("backupsvc"));
    assert_eq!(
        users["oracle"]["groups"],
        json!(["dba", "oinstall", "oracle"])
    );
    assert_eq!(users["shutdown"]["login_shell"], true);
    assert_eq!(users["shutdown"]["primary_group"], "root");
    // The group of the malformed account is still a CI.
    assert_eq!(
        items(&doc, "group")["backupsvc"],
        &json!({"gid": 1002, "members": [], "primary_members": []})
    );

    let doc = inventory(&fixtures().join("arch"), "user,group", &[], &[]);
    let users = items(&doc, "user");
    assert_eq!(
        users["jan"]["groups"],
        json!(["audio", "jan", "uucp", "video", "wheel"])
    );
    assert_eq!(users["git"]["login_shell"], true);
    assert_eq!(users["root"]["gecos"], "");
}

// === file ===

const WATCH: &[&str] = &[
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/etc/fstab",
    "/etc/crontab",
    "/etc/cron.d/*",
    "/etc/resolv.conf",
    "/etc/no-such-file",
];

/// Paths copied from a fixture into a temporary root, where modes and times can be set.
const OWNED: &[&str] = &[
    "etc/passwd",
    "etc/group",
    "etc/ssh",
    "etc/sudoers",
    "etc/sudoers.d",
    "etc/fstab",
    "etc/crontab",
    "etc/cron.d",
    "etc/resolv.conf",
    "run/systemd",
];

const MTIME: u64 = 1_709_539_272;

fn copy_tree(from: &Path, to: &Path) {
    let meta = match fs::symlink_metadata(from) {
        Ok(m) => m,
        Err(_) => return,
    };
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(from).unwrap(), to).unwrap();
    } else if meta.is_dir() {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        fs::copy(from, to).unwrap();
        let mode = if to.to_string_lossy().contains("sudoers") {
            0o440
        } else {
            0o644
        };
        fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
        let f = fs::File::options().write(true).open(to).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME))
            .unwrap();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The owner name the fixture's passwd gives `uid`, or the number.
fn name_for(distro: &str, file: &str, id: u32) -> String {
    let text = fs::read_to_string(fixtures().join(distro).join("etc").join(file)).unwrap();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2] == id.to_string())
        .map(|f| f[0].to_owned())
        .unwrap_or_else(|| id.to_string())
}

fn watched_files(distro: &str, expected: &[(&str, Option<&str>, &str)]) {
    let root = tempfile::tempdir().unwrap();
    for p in OWNED {
        copy_tree(&fixtures().join(distro).join(p), &root.path().join(p));
    }
    let mut extra = Vec::new();
    for g in WATCH {
        extra.extend(["--watch", g]);
    }
    let doc = inventory(root.path(), "file", &extra, &[]);
    let c = collector(&doc, "files");
    assert_eq!(c["status"], "ok", "{distro}: {c}");
    let files = items(&doc, "file");
    let want: Vec<&str> = expected.iter().map(|e| e.0).collect();
    assert_eq!(keys(&files), want, "{distro}");
    for (path, link, content_at) in expected {
        let real = fixtures().join(distro).join(content_at);
        let bytes = fs::read(&real).unwrap();
        let copied = fs::metadata(root.path().join(content_at)).unwrap();
        let mode = if path.contains("sudoers") {
            "0440"
        } else {
            "0644"
        };
        assert_eq!(
            files[path],
            &json!({
                "sha256": sha256_hex(&bytes),
                "hash_skipped": null,
                "size": bytes.len(),
                "mode": mode,
                "uid": copied.uid(),
                "gid": copied.gid(),
                "owner": name_for(distro, "passwd", copied.uid()),
                "group": name_for(distro, "group", copied.gid()),
                "mtime": "2024-03-04T08:01:12Z",
                "link_target": link,
            }),
            "{distro} {path}"
        );
    }
}

#[test]
fn watched_files_on_debian12() {
    watched_files(
        "debian12",
        &[
            ("/etc/cron.d/e2scrub_all", None, "etc/cron.d/e2scrub_all"),
            ("/etc/crontab", None, "etc/crontab"),
            ("/etc/fstab", None, "etc/fstab"),
            // Absolute link: re-rooted into the fixture, never the build machine's /run.
            (
                "/etc/resolv.conf",
                Some("/run/systemd/resolve/stub-resolv.conf"),
                "run/systemd/resolve/stub-resolv.conf",
            ),
            ("/etc/ssh/sshd_config", None, "etc/ssh/sshd_config"),
            (
                "/etc/ssh/sshd_config.d/50-cloud-init.conf",
                None,
                "etc/ssh/sshd_config.d/50-cloud-init.conf",
            ),
            ("/etc/sudoers", None, "etc/sudoers"),
            (
                "/etc/sudoers.d/90-cloud-init-users",
                None,
                "etc/sudoers.d/90-cloud-init-users",
            ),
            ("/etc/sudoers.d/README", None, "etc/sudoers.d/README"),
        ],
    );
}

#[test]
fn watched_files_on_other_distros() {
    watched_files(
        "ubuntu2204",
        &[
            ("/etc/crontab", None, "etc/crontab"),
            ("/etc/fstab", None, "etc/fstab"),
            (
                "/etc/resolv.conf",
                Some("../run/systemd/resolve/stub-resolv.conf"),
                "run/systemd/resolve/stub-resolv.conf",
            ),
            ("/etc/sudoers", None, "etc/sudoers"),
        ],
    );
    watched_files(
        "rocky9",
        &[
            ("/etc/cron.d/0hourly", None, "etc/cron.d/0hourly"),
            ("/etc/crontab", None, "etc/crontab"),
            ("/etc/fstab", None, "etc/fstab"),
            ("/etc/resolv.conf", None, "etc/resolv.conf"),
            ("/etc/ssh/sshd_config", None, "etc/ssh/sshd_config"),
            (
                "/etc/ssh/sshd_config.d/50-redhat.conf",
                None,
                "etc/ssh/sshd_config.d/50-redhat.conf",
            ),
            ("/etc/sudoers", None, "etc/sudoers"),
        ],
    );
    watched_files(
        "alpine319",
        &[
            ("/etc/fstab", None, "etc/fstab"),
            ("/etc/resolv.conf", None, "etc/resolv.conf"),
        ],
    );
    watched_files(
        "arch",
        &[
            ("/etc/fstab", None, "etc/fstab"),
            ("/etc/resolv.conf", None, "etc/resolv.conf"),
            ("/etc/ssh/sshd_config", None, "etc/ssh/sshd_config"),
        ],
    );
}

#[test]
fn the_committed_tree_resolves_links_inside_itself() {
    // No copy: the fixture as checked out, absolute symlink and all.
    let doc = inventory(
        &fixtures().join("debian12"),
        "file",
        &["--watch", "/etc/resolv.conf", "--watch", "/etc/cron.d/*"],
        &[],
    );
    assert_eq!(collector(&doc, "files")["status"], "ok");
    let files = items(&doc, "file");
    // .placeholder is skipped like a shell glob would.
    assert_eq!(
        keys(&files),
        vec!["/etc/cron.d/e2scrub_all", "/etc/resolv.conf"]
    );
    let stub = fs::read(fixtures().join("debian12/run/systemd/resolve/stub-resolv.conf")).unwrap();
    assert_eq!(files["/etc/resolv.conf"]["sha256"], sha256_hex(&stub));
    assert_eq!(files["/etc/resolv.conf"]["size"], stub.len());
}
