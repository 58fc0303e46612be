//! The `sockets`, `process` and `kernel_modules` collectors against the fixture host trees,
//! through the real binary.
//!
//! Each test copies the fixture's `proc/` into a temporary root and writes its own minimal
//! /etc/passwd there, so that user names are exact here and do not depend on the shared
//! trees' account files (which other collectors own).

// Test helpers fail the test by panicking; clippy's test exemption covers only #[test] fns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn fixture(distro: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(distro)
}

/// Copies a directory tree, recreating symlinks as symlinks (fd and exe links dangle).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ty = entry.file_type().unwrap();
        if ty.is_symlink() {
            symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ty.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A host root with the fixture's /proc and the given /etc/passwd.
fn host(distro: &str, passwd: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let proc_ = fixture(distro).join("proc");
    if proc_.exists() {
        copy_tree(&proc_, &dir.path().join("proc"));
    }
    fs::create_dir_all(dir.path().join("etc")).unwrap();
    fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
    dir
}

fn inventory(root: &Path, only: &str) -> Value {
    common::inventory(root, only, &[], &[])
}

/// key → attrs of every item of `class`.
fn items(inv: &Value, class: &str) -> BTreeMap<String, Value> {
    inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .map(|i| (i["key"].as_str().unwrap().to_owned(), i["attrs"].clone()))
        .collect()
}

/// (status, message) of a collector.
fn collector(inv: &Value, name: &str) -> (String, Value) {
    let c = inv["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no collector {name} in {inv}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["message"].clone(),
    )
}

fn keys(m: &BTreeMap<String, Value>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// The attributes of a listening port: (protocol, family, address, port) and the owner
/// (pid, process, exe, user).
fn listening(socket: (&str, &str, &str, u16), owner: (u32, &str, &str, &str)) -> Value {
    let (protocol, family, address, port) = socket;
    let (pid, process, exe, user) = owner;
    json!({
        "protocol": protocol, "family": family, "address": address, "port": port,
        "pid": pid, "process": process, "exe": exe, "user": user,
    })
}

const DEBIAN_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
systemd-resolve:x:990:990:systemd Resolver:/:/usr/sbin/nologin
systemd-timesync:x:997:997:systemd Time Synchronization:/:/usr/sbin/nologin
billing:x:1001:1001:Billing API:/srv/billing:/usr/sbin/nologin
";

#[test]
fn debian12_sockets() {
    let root = host("debian12", DEBIAN_PASSWD);
    let inv = inventory(root.path(), "listening_port,connection");
    assert_eq!(collector(&inv, "sockets"), ("ok".into(), Value::Null));

    let ports = items(&inv, "listening_port");
    assert_eq!(
        keys(&ports),
        ["tcp:0.0.0.0:22", "tcp:[::]:22", "udp:127.0.0.53:53"]
    );
    let sshd = "/usr/sbin/sshd";
    assert_eq!(
        ports["tcp:0.0.0.0:22"],
        listening(("tcp", "ipv4", "0.0.0.0", 22), (640, "sshd", sshd, "root"))
    );
    assert_eq!(
        ports["tcp:[::]:22"],
        listening(("tcp", "ipv6", "::", 22), (640, "sshd", sshd, "root"))
    );
    // comm is what the kernel keeps: truncated to 15 bytes.
    assert_eq!(
        ports["udp:127.0.0.53:53"],
        listening(
            ("udp", "ipv4", "127.0.0.53", 53),
            (
                412,
                "systemd-resolve",
                "/usr/lib/systemd/systemd-resolved",
                "systemd-resolve"
            )
        )
    );

    // The TIME_WAIT socket and timesyncd's connected UDP socket are not there.
    let conns = items(&inv, "connection");
    assert_eq!(
        keys(&conns),
        [
            "tcp:10.0.0.5:5432",
            "tcp:192.168.122.1:in:22",
            "tcp:[2001:db8:0:5::20]:443"
        ]
    );
    let billing = "/opt/billing/bin/billing-api";
    assert_eq!(
        conns["tcp:10.0.0.5:5432"],
        json!({
            "protocol": "tcp", "family": "ipv4", "direction": "outbound",
            "remote_address": "10.0.0.5", "remote_port": 5432, "local_port": null,
            "count": 2, "loopback": false, "process": "billing-api", "exe": billing,
            "processes": ["billing-api"],
        })
    );
    assert_eq!(
        conns["tcp:192.168.122.1:in:22"],
        json!({
            "protocol": "tcp", "family": "ipv4", "direction": "inbound",
            "remote_address": "192.168.122.1", "remote_port": null, "local_port": 22,
            "count": 1, "loopback": false, "process": "sshd", "exe": sshd,
            "processes": ["sshd"],
        })
    );
    assert_eq!(
        conns["tcp:[2001:db8:0:5::20]:443"],
        json!({
            "protocol": "tcp", "family": "ipv6", "direction": "outbound",
            "remote_address": "2001:db8:0:5::20", "remote_port": 443, "local_port": null,
            "count": 1, "loopback": false, "process": "billing-api", "exe": billing,
            "processes": ["billing-api"],
        })
    );
}

#[test]
fn debian12_processes_and_relations() {
    let root = host("debian12", DEBIAN_PASSWD);
    let inv = inventory(root.path(), "process,listening_port,connection");
    assert_eq!(
        collector(&inv, "process"),
        ("ok".into(), json!("2 kernel threads skipped"))
    );
    let procs = items(&inv, "process");
    assert_eq!(
        keys(&procs),
        [
            "/opt/billing/bin/billing-api",
            "/usr/lib/systemd/systemd",
            "/usr/lib/systemd/systemd-resolved",
            "/usr/lib/systemd/systemd-timesyncd",
            "/usr/sbin/sshd",
        ]
    );
    assert_eq!(
        procs["/usr/sbin/sshd"],
        json!({"exe": "/usr/sbin/sshd", "name": "sshd", "count": 2, "users": ["root"],
               "pids": [640, 1210], "deleted": false})
    );
    // Upgraded on disk while running: the kernel's " (deleted)" is a flag, not part of the key.
    assert_eq!(
        procs["/opt/billing/bin/billing-api"],
        json!({"exe": "/opt/billing/bin/billing-api", "name": "billing-api", "count": 1,
               "users": ["billing"], "pids": [1320], "deleted": true})
    );
    assert_eq!(
        procs["/usr/lib/systemd/systemd-timesyncd"]["users"],
        json!(["systemd-timesync"])
    );

    let rels: Vec<(String, String, String)> = inv["relations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
                r["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |from: &str, kind: &str, to: &str| {
        rels.contains(&(from.to_owned(), kind.to_owned(), to.to_owned()))
    };
    assert!(
        has(
            "process//usr/sbin/sshd",
            "listens_on",
            "listening_port/tcp:0.0.0.0:22"
        ),
        "{rels:?}"
    );
    assert!(has(
        "process//usr/sbin/sshd",
        "listens_on",
        "listening_port/tcp:[::]:22"
    ));
    assert!(has(
        "process//usr/lib/systemd/systemd-resolved",
        "listens_on",
        "listening_port/udp:127.0.0.53:53"
    ));
    assert!(has(
        "process//opt/billing/bin/billing-api",
        "connects_to",
        "connection/tcp:10.0.0.5:5432"
    ));
    assert!(has(
        "process//usr/sbin/sshd",
        "connects_to",
        "connection/tcp:192.168.122.1:in:22"
    ));
    assert_eq!(rels.len(), 6, "{rels:?}");
}

const ROCKY_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
apache:x:48:48:Apache:/usr/share/httpd:/sbin/nologin
nginx:x:993:993:Nginx web server:/var/lib/nginx:/sbin/nologin
chrony:x:994:994:chrony system user:/var/lib/chrony:/sbin/nologin
ops:x:1000:1000:Operations:/home/ops:/bin/bash
";

#[test]
fn rocky9_nginx_workers_and_aggregation() {
    let root = host("rocky9", ROCKY_PASSWD);
    let inv = inventory(root.path(), "process,listening_port,connection");
    assert_eq!(collector(&inv, "sockets"), ("ok".into(), Value::Null));

    let ports = items(&inv, "listening_port");
    assert_eq!(
        keys(&ports),
        [
            "tcp:0.0.0.0:443",
            "tcp:0.0.0.0:80",
            "tcp:127.0.0.1:9000",
            "tcp:[::]:443",
            "tcp:[::]:80",
            "udp:127.0.0.1:323",
            "udp:[::1]:323",
        ]
    );
    // The master and its four workers share the listening sockets: the lowest pid owns them.
    let nginx = "/usr/sbin/nginx";
    assert_eq!(
        ports["tcp:[::]:443"],
        listening(("tcp", "ipv6", "::", 443), (1101, "nginx", nginx, "root"))
    );
    assert_eq!(
        ports["tcp:0.0.0.0:80"],
        listening(
            ("tcp", "ipv4", "0.0.0.0", 80),
            (1101, "nginx", nginx, "root")
        )
    );
    assert_eq!(
        ports["tcp:127.0.0.1:9000"],
        listening(
            ("tcp", "ipv4", "127.0.0.1", 9000),
            (1300, "php-fpm", "/usr/sbin/php-fpm", "root")
        )
    );
    assert_eq!(
        ports["udp:[::1]:323"],
        listening(
            ("udp", "ipv6", "::1", 323),
            (845, "chronyd", "/usr/sbin/chronyd", "chrony")
        )
    );

    let conns = items(&inv, "connection");
    assert_eq!(
        keys(&conns),
        [
            "tcp:10.20.0.7:8080",
            "tcp:127.0.0.1:9000",
            "tcp:127.0.0.1:in:9000",
            "tcp:203.0.113.9:in:443",
            "tcp:[::ffff:192.0.2.44]:in:80",
        ]
    );
    // Three workers and a curl to one upstream: one CI, the busiest process named.
    assert_eq!(
        conns["tcp:10.20.0.7:8080"],
        json!({
            "protocol": "tcp", "family": "ipv4", "direction": "outbound",
            "remote_address": "10.20.0.7", "remote_port": 8080, "local_port": null,
            "count": 4, "loopback": false, "process": "nginx", "exe": nginx,
            "processes": ["curl", "nginx"],
        })
    );
    // Two clients' ephemeral ports, one inbound CI per (client, service port).
    assert_eq!(
        conns["tcp:203.0.113.9:in:443"],
        json!({
            "protocol": "tcp", "family": "ipv4", "direction": "inbound",
            "remote_address": "203.0.113.9", "remote_port": null, "local_port": 443,
            "count": 2, "loopback": false, "process": "nginx", "exe": nginx,
            "processes": ["nginx"],
        })
    );
    // An IPv4 client on the dual-stack listener stays IPv6 text.
    assert_eq!(
        conns["tcp:[::ffff:192.0.2.44]:in:80"]["family"],
        json!("ipv6")
    );
    assert_eq!(
        conns["tcp:[::ffff:192.0.2.44]:in:80"]["remote_address"],
        json!("::ffff:192.0.2.44")
    );
    // Both ends of a loopback connection are dependencies of this host.
    assert_eq!(
        conns["tcp:127.0.0.1:9000"],
        json!({
            "protocol": "tcp", "family": "ipv4", "direction": "outbound",
            "remote_address": "127.0.0.1", "remote_port": 9000, "local_port": null,
            "count": 1, "loopback": true, "process": "nginx", "exe": nginx,
            "processes": ["nginx"],
        })
    );
    assert_eq!(
        conns["tcp:127.0.0.1:in:9000"],
        json!({
            "protocol": "tcp", "family": "ipv4", "direction": "inbound",
            "remote_address": "127.0.0.1", "remote_port": null, "local_port": 9000,
            "count": 1, "loopback": true, "process": "php-fpm", "exe": "/usr/sbin/php-fpm",
            "processes": ["php-fpm"],
        })
    );

    let procs = items(&inv, "process");
    assert_eq!(
        keys(&procs),
        [
            "/usr/bin/curl",
            "/usr/lib/systemd/systemd",
            "/usr/sbin/chronyd",
            "/usr/sbin/nginx",
            "/usr/sbin/php-fpm",
        ]
    );
    assert_eq!(
        procs[nginx],
        json!({"exe": nginx, "name": "nginx", "count": 5, "users": ["nginx", "root"],
               "pids": [1101, 1102, 1103, 1104, 1105], "deleted": false})
    );
    assert_eq!(
        procs["/usr/sbin/php-fpm"]["users"],
        json!(["apache", "root"])
    );
    assert_eq!(procs["/usr/bin/curl"]["users"], json!(["ops"]));
    assert_eq!(
        collector(&inv, "process"),
        ("ok".into(), json!("2 kernel threads skipped"))
    );
}

#[test]
fn alpine319_container_with_one_process() {
    let root = host("alpine319", "root:x:0:0:root:/root:/bin/ash\n");
    let inv = inventory(
        root.path(),
        "process,listening_port,connection,kernel_module",
    );
    assert_eq!(collector(&inv, "sockets"), ("ok".into(), Value::Null));
    assert_eq!(collector(&inv, "process"), ("ok".into(), Value::Null));
    let ports = items(&inv, "listening_port");
    assert_eq!(keys(&ports), ["tcp:0.0.0.0:80"]);
    assert_eq!(
        ports["tcp:0.0.0.0:80"],
        listening(
            ("tcp", "ipv4", "0.0.0.0", 80),
            (1, "nginx", "/usr/sbin/nginx", "root")
        )
    );
    let conns = items(&inv, "connection");
    assert_eq!(keys(&conns), ["tcp:172.17.0.1:in:80"]);
    assert_eq!(conns["tcp:172.17.0.1:in:80"]["count"], json!(1));
    let procs = items(&inv, "process");
    assert_eq!(
        procs["/usr/sbin/nginx"],
        json!({"exe": "/usr/sbin/nginx", "name": "nginx", "count": 1, "users": ["root"],
               "pids": [1], "deleted": false})
    );
    assert_eq!(procs.len(), 1);

    // /proc/modules inside a container is the host's.
    assert_eq!(
        collector(&inv, "kernel_modules"),
        ("ok".into(), Value::Null)
    );
    let mods = items(&inv, "kernel_module");
    assert_eq!(mods.len(), 9);
    assert_eq!(
        mods["nf_conntrack"]["used_by"],
        json!(["nf_nat", "xt_MASQUERADE", "xt_conntrack"])
    );
}

#[test]
fn arch_kernel_modules() {
    let root = host("arch", "root:x:0:0::/root:/bin/bash\n");
    let inv = inventory(root.path(), "kernel_module");
    assert_eq!(
        collector(&inv, "kernel_modules"),
        ("ok".into(), Value::Null)
    );
    let mods = items(&inv, "kernel_module");
    assert_eq!(
        keys(&mods),
        [
            "cfg80211",
            "i915",
            "iwlmvm",
            "iwlwifi",
            "libarc4",
            "mac80211",
            "snd_hda_intel",
            "thinkpad_acpi",
            "vboxdrv",
            "vboxnetadp",
            "vboxnetflt",
        ]
    );
    assert_eq!(
        mods["iwlwifi"],
        json!({"name": "iwlwifi", "size": 598016, "used_by": ["iwlmvm"], "state": "Live",
               "permanent": false, "taint": null})
    );
    assert_eq!(mods["iwlmvm"]["used_by"], json!([]));
    // Sorted, not in the kernel's load order.
    assert_eq!(
        mods["cfg80211"]["used_by"],
        json!(["iwlmvm", "iwlwifi", "mac80211"])
    );
    assert_eq!(
        mods["vboxdrv"],
        json!({"name": "vboxdrv", "size": 700416, "used_by": ["vboxnetadp", "vboxnetflt"],
               "state": "Live", "permanent": false, "taint": "OE"})
    );
    // Only the asked-for class is reported.
    let names: Vec<&str> = inv["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kernel_modules"]);
}

#[test]
fn server_and_vm_kernel_modules() {
    let inv = inventory(&fixture("debian12"), "kernel_module");
    let mods = items(&inv, "kernel_module");
    assert_eq!(mods.len(), 8);
    assert_eq!(mods["jbd2"]["used_by"], json!(["ext4"]));
    assert_eq!(mods["ext4"]["size"], json!(1073152));
    let inv = inventory(&fixture("rocky9"), "kernel_module");
    let mods = items(&inv, "kernel_module");
    assert_eq!(mods.len(), 9);
    assert_eq!(mods["libcrc32c"]["used_by"], json!(["nf_conntrack", "xfs"]));
    assert_eq!(
        mods["ipmi_msghandler"]["used_by"],
        json!(["ipmi_devintf", "ipmi_si"])
    );
}

#[test]
fn hosts_without_the_sources_are_unsupported() {
    // arch has only /proc/modules here; ubuntu2204 has none of these files.
    for distro in ["arch", "ubuntu2204"] {
        let root = host(distro, "root:x:0:0::/root:/bin/bash\n");
        let inv = inventory(
            root.path(),
            "process,listening_port,connection,kernel_module",
        );
        assert_eq!(collector(&inv, "sockets").0, "unsupported", "{distro}");
        assert_eq!(collector(&inv, "process").0, "unsupported", "{distro}");
        assert!(items(&inv, "listening_port").is_empty());
        assert!(items(&inv, "process").is_empty());
    }
    let root = host("ubuntu2204", "");
    let inv = inventory(root.path(), "kernel_module");
    assert_eq!(
        collector(&inv, "kernel_modules"),
        (
            "unsupported".into(),
            json!("no /proc/modules (kernel without loadable module support)")
        )
    );
}

#[test]
fn unknown_owners_and_malformed_lines_are_reported_not_guessed() {
    let root = host("debian12", DEBIAN_PASSWD);
    // A socket no process holds (a kernel socket) and a garbage line.
    let tcp = root.path().join("proc/net/tcp");
    let mut text = fs::read_to_string(&tcp).unwrap();
    text.push_str("   9: 0100007F:0801 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77777 1 0000000000000000 100 0 0 10 0\n");
    text.push_str("  10: not a socket line\n");
    fs::write(&tcp, text).unwrap();
    let inv = inventory(root.path(), "listening_port");
    let (status, message) = collector(&inv, "sockets");
    assert_eq!(status, "partial");
    assert_eq!(message, json!("/proc/net/tcp line 8: too few fields"));
    let ports = items(&inv, "listening_port");
    let kernel = &ports["tcp:127.0.0.1:2049"];
    assert_eq!(kernel["pid"], Value::Null);
    assert_eq!(kernel["process"], Value::Null);
    assert_eq!(kernel["exe"], Value::Null);
    assert_eq!(kernel["user"], json!("root"));
}
