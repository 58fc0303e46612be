//! The package collectors (dpkg, rpm, apk, pacman, snap, flatpak) run by the real binary
//! against the fixture host trees, with exact expectations. Git keeps no mtimes, so trees
//! whose install times come from file mtimes (dpkg .list files, .snap files, flatpak deploy
//! files) are copied to a tempdir and their mtimes set before the run.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test, with its message"
)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use assert_cmd::Command;
use serde_json::{Value, json};

const MANAGERS: &[&str] = &["dpkg", "rpm", "apk", "pacman", "snap", "flatpak"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `inventory --only package` on `root` with `path` as PATH (None: inherit).
fn inventory(root: &Path, path: Option<&str>) -> Value {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::cargo_bin("cmdb-agent").unwrap();
    cmd.args(["inventory", "--format", "json", "--only", "package"])
        .arg("--host-root")
        .arg(root)
        .arg("--state-dir")
        .arg(state.path());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn collector<'a>(inv: &'a Value, name: &str) -> &'a Value {
    inv["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no collector {name}"))
}

fn item<'a>(inv: &'a Value, key: &str) -> &'a Value {
    items(inv)
        .iter()
        .find(|i| i["key"] == key)
        .unwrap_or_else(|| panic!("no item {key}"))
}

fn items(inv: &Value) -> &Vec<Value> {
    inv["items"].as_array().unwrap()
}

fn keys_of(inv: &Value, manager: &str) -> BTreeSet<String> {
    items(inv)
        .iter()
        .filter(|i| i["attrs"]["manager"] == manager)
        .map(|i| i["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Every package CI carries every attribute of the class and the shared extras.
fn assert_complete(inv: &Value) {
    for i in items(inv) {
        assert_eq!(i["class"], "package");
        let attrs = i["attrs"].as_object().unwrap();
        for a in [
            "manager",
            "name",
            "version",
            "arch",
            "vendor",
            "source",
            "install_time",
            "license",
            "size_bytes",
            "summary",
        ] {
            assert!(attrs.contains_key(a), "{} lacks {a}", i["key"]);
        }
        let key = format!(
            "{}:{}:{}",
            attrs["manager"].as_str().unwrap(),
            attrs["name"].as_str().unwrap(),
            attrs["arch"].as_str().unwrap()
        );
        assert_eq!(i["key"], key.as_str());
        for (k, v) in attrs {
            assert_ne!(v, "", "{} has an empty {k}", i["key"]);
        }
    }
}

/// Status of each manager's collector, in registry order.
fn statuses(inv: &Value) -> Vec<(String, String)> {
    MANAGERS
        .iter()
        .map(|m| {
            (
                (*m).to_owned(),
                collector(inv, m)["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expect_statuses(inv: &Value, ok: &[&str]) {
    let want: Vec<(String, String)> = MANAGERS
        .iter()
        .map(|m| {
            let s = if ok.contains(m) { "ok" } else { "unsupported" };
            ((*m).to_owned(), s.to_owned())
        })
        .collect();
    assert_eq!(statuses(inv), want);
}

fn expect_unsupported_messages(inv: &Value, skip: &[&str]) {
    let msgs = [
        ("dpkg", "no dpkg database at /var/lib/dpkg/status"),
        (
            "rpm",
            "no rpm database at /usr/lib/sysimage/rpm or /var/lib/rpm",
        ),
        ("apk", "no apk database at /lib/apk/db/installed"),
        ("pacman", "no pacman database at /var/lib/pacman/local"),
        ("snap", "no snaps at /snap or /var/lib/snapd/snap"),
        (
            "flatpak",
            "no flatpak system installation at /var/lib/flatpak",
        ),
    ];
    for (m, msg) in msgs {
        if !skip.contains(&m) {
            assert_eq!(collector(inv, m)["message"], msg, "{m}");
            assert_eq!(collector(inv, m)["items"], 0, "{m}");
        }
    }
}

/// Copies a tree, keeping symlinks as symlinks (their relative targets stay valid).
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from).unwrap(), &to).unwrap();
        } else if ft.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).unwrap();
        }
    }
}

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap()
}

fn set_mtime(path: &Path, rfc3339: &str) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .set_modified(at(rfc3339))
        .unwrap();
}

const DEBIAN_BASE_TIME: &str = "2024-03-11T08:30:00Z";

/// A copy of the debian12 tree with .list mtimes set: all at DEBIAN_BASE_TIME except bash
/// and libc6:i386; tzdata's .list removed (its install time must then be null).
fn debian_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("debian12/var/lib/dpkg");
    copy_tree(&src, &dir.path().join("var/lib/dpkg"));
    let info = dir.path().join("var/lib/dpkg/info");
    for e in fs::read_dir(&info).unwrap() {
        set_mtime(&e.unwrap().path(), DEBIAN_BASE_TIME);
    }
    set_mtime(&info.join("bash.list"), "2024-06-10T09:14:03Z");
    set_mtime(&info.join("libc6:i386.list"), "2024-06-12T17:45:31Z");
    fs::remove_file(info.join("tzdata.list")).unwrap();
    dir
}

const DEBIAN12_KEYS: &[&str] = &[
    "dpkg:adduser:all",
    "dpkg:apt:amd64",
    "dpkg:base-files:amd64",
    "dpkg:base-passwd:amd64",
    "dpkg:bash:amd64",
    "dpkg:bsdutils:amd64",
    "dpkg:ca-certificates:all",
    "dpkg:coreutils:amd64",
    "dpkg:curl:amd64",
    "dpkg:dash:amd64",
    "dpkg:debconf:all",
    "dpkg:debianutils:amd64",
    "dpkg:diffutils:amd64",
    "dpkg:dpkg:amd64",
    "dpkg:e2fsprogs:amd64",
    "dpkg:findutils:amd64",
    "dpkg:gcc-12-base:amd64",
    "dpkg:grep:amd64",
    "dpkg:gzip:amd64",
    "dpkg:hostname:amd64",
    "dpkg:init-system-helpers:all",
    "dpkg:libacl1:amd64",
    "dpkg:libc-bin:amd64",
    "dpkg:libc6:amd64",
    "dpkg:libc6:i386",
    "dpkg:libcurl4:amd64",
    "dpkg:libgcc-s1:amd64",
    "dpkg:libssl3:amd64",
    "dpkg:libstdc++6:amd64",
    "dpkg:libsystemd0:amd64",
    "dpkg:login:amd64",
    "dpkg:mawk:amd64",
    "dpkg:ncurses-base:all",
    "dpkg:openssh-client:amd64",
    "dpkg:openssl:amd64",
    "dpkg:passwd:amd64",
    "dpkg:perl-base:amd64",
    "dpkg:sed:amd64",
    "dpkg:sensible-utils:all",
    "dpkg:systemd:amd64",
    "dpkg:tar:amd64",
    "dpkg:tzdata:all",
    "dpkg:util-linux:amd64",
    "dpkg:zlib1g:amd64",
];

#[test]
fn debian12_dpkg_packages() {
    let root = debian_copy();
    let inv = inventory(root.path(), None);
    expect_statuses(&inv, &["dpkg"]);
    expect_unsupported_messages(&inv, &["dpkg"]);
    let dpkg = collector(&inv, "dpkg");
    assert_eq!(dpkg["message"], Value::Null);
    assert_eq!(dpkg["items"], 44);
    assert_complete(&inv);

    // 45 paragraphs: rsyslog (deinstall ok config-files) is not installed; the held
    // openssl is; libc6 is there once per architecture.
    let want: BTreeSet<String> = DEBIAN12_KEYS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(keys_of(&inv, "dpkg"), want);

    assert_eq!(
        item(&inv, "dpkg:bash:amd64")["attrs"],
        json!({
            "manager": "dpkg",
            "name": "bash",
            "version": "5.2.15-2+b8",
            "arch": "amd64",
            "vendor": "Matthias Klose <doko@debian.org>",
            "source": "bash",
            "install_time": "2024-06-10T09:14:03Z",
            "license": null,
            "size_bytes": 7164 * 1024,
            "summary": "GNU Bourne Again SHell",
            "multi_arch": "foreign",
        })
    );
    assert_eq!(
        item(&inv, "dpkg:libc6:i386")["attrs"],
        json!({
            "manager": "dpkg",
            "name": "libc6",
            "version": "2.36-9+deb12u14",
            "arch": "i386",
            "vendor": "GNU Libc Maintainers <debian-glibc@lists.debian.org>",
            "source": "glibc",
            "install_time": "2024-06-12T17:45:31Z",
            "license": null,
            "size_bytes": 12985 * 1024,
            "summary": "GNU C Library: Shared libraries",
            "multi_arch": "same",
        })
    );
    let libc_amd64 = &item(&inv, "dpkg:libc6:amd64")["attrs"];
    assert_eq!(libc_amd64["install_time"], DEBIAN_BASE_TIME);
    assert_eq!(libc_amd64["size_bytes"], 13001 * 1024);

    let openssl = &item(&inv, "dpkg:openssl:amd64")["attrs"];
    assert_eq!(openssl["version"], "3.0.19-1~deb12u2");
    assert_eq!(
        openssl["source"], "openssl",
        "no Source field: the package name"
    );
    assert_eq!(
        item(&inv, "dpkg:libssl3:amd64")["attrs"]["source"],
        "openssl"
    );
    assert_eq!(
        item(&inv, "dpkg:bsdutils:amd64")["attrs"]["version"],
        "1:2.38.1-5+deb12u3",
        "epoch kept as dpkg prints it"
    );
    assert_eq!(
        item(&inv, "dpkg:bsdutils:amd64")["attrs"]["source"],
        "util-linux"
    );
    let tzdata = &item(&inv, "dpkg:tzdata:all")["attrs"];
    assert_eq!(tzdata["install_time"], Value::Null, "no .list file");
    assert_eq!(tzdata["arch"], "all");
    assert_eq!(
        item(&inv, "dpkg:adduser:all")["attrs"]["summary"],
        "add and remove users and groups"
    );
}

#[test]
fn debian12_malformed_paragraph_is_skipped_with_a_warning() {
    let root = debian_copy();
    let status = root.path().join("var/lib/dpkg/status");
    let mut text = fs::read_to_string(&status).unwrap();
    let lines_before = text.lines().count();
    text.push_str(
        "Package: broken-pkg\nStatus: install ok installed\nthis line is not a field\nVersion: 1.0\n\n\
         Package: late-pkg\nStatus: install ok installed\nVersion: 2.0-1\nArchitecture: all\n\n",
    );
    fs::write(&status, text).unwrap();
    let inv = inventory(root.path(), None);
    let dpkg = collector(&inv, "dpkg");
    assert_eq!(dpkg["status"], "partial");
    assert_eq!(
        dpkg["items"], 45,
        "the rest is kept, including what follows"
    );
    let bad_line = lines_before + 3;
    assert_eq!(
        dpkg["message"],
        format!(
            "/var/lib/dpkg/status line {bad_line}: line is neither \"Field: value\" nor a continuation (package broken-pkg); paragraph skipped"
        )
        .as_str()
    );
    let late = &item(&inv, "dpkg:late-pkg:all")["attrs"];
    assert_eq!(late["install_time"], Value::Null);
    assert_eq!(late["vendor"], Value::Null);
    assert_eq!(late["size_bytes"], Value::Null);
    assert_eq!(late["summary"], Value::Null);
}

#[test]
fn empty_root_has_no_package_manager() {
    let root = tempfile::tempdir().unwrap();
    let inv = inventory(root.path(), None);
    expect_statuses(&inv, &[]);
    expect_unsupported_messages(&inv, &[]);
    assert!(items(&inv).is_empty());
}

/// A copy of the ubuntu2204 tree with install-time mtimes set.
fn ubuntu_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("ubuntu2204");
    for sub in ["var/lib/dpkg", "var/lib/snapd", "var/lib/flatpak", "snap"] {
        copy_tree(&src.join(sub), &dir.path().join(sub));
    }
    let r = dir.path();
    for e in fs::read_dir(r.join("var/lib/dpkg/info")).unwrap() {
        set_mtime(&e.unwrap().path(), "2023-08-10T06:12:44Z");
    }
    set_mtime(
        &r.join("var/lib/snapd/snaps/core22_1380.snap"),
        "2024-04-22T06:12:40Z",
    );
    set_mtime(
        &r.join("var/lib/snapd/snaps/firefox_4173.snap"),
        "2024-03-26T17:01:02Z",
    );
    set_mtime(
        &r.join("var/lib/snapd/snaps/firefox_4336.snap"),
        "2024-05-14T17:02:11Z",
    );
    let fp = r.join("var/lib/flatpak");
    set_mtime(
        &fp.join("app/org.libreoffice.LibreOffice/x86_64/stable/4d3b0e5c8f1a9e27b6c0d5f4a3e2b1c09d8e7f6a5b4c3d2e1f0a9b8c7d6e5f40/deploy"),
        "2024-05-20T18:40:05Z",
    );
    set_mtime(
        &fp.join("runtime/org.freedesktop.Platform/x86_64/23.08/a17c9e3f5b2d8e6a4c1f0b9d7e5c3a1f8e6d4c2b0a9f7e5d3c1b9a8f6e4d2c05/deploy"),
        "2024-05-20T18:38:51Z",
    );
    dir
}

#[test]
fn ubuntu2204_dpkg_snap_and_flatpak() {
    let root = ubuntu_copy();
    let inv = inventory(root.path(), None);
    expect_statuses(&inv, &["dpkg", "snap", "flatpak"]);
    expect_unsupported_messages(&inv, &["dpkg", "snap", "flatpak"]);
    assert_complete(&inv);
    assert_eq!(collector(&inv, "dpkg")["items"], 12);
    assert_eq!(collector(&inv, "snap")["items"], 2);
    assert_eq!(collector(&inv, "flatpak")["items"], 2);

    let ff_deb = &item(&inv, "dpkg:firefox:amd64")["attrs"];
    assert_eq!(ff_deb["version"], "1:1snap1-0ubuntu2");
    assert_eq!(
        ff_deb["vendor"],
        "Ubuntu Mozilla Team <ubuntu-mozillateam@lists.ubuntu.com>"
    );
    assert_eq!(ff_deb["install_time"], "2023-08-10T06:12:44Z");
    assert_eq!(item(&inv, "dpkg:zlib1g:amd64")["attrs"]["source"], "zlib");
    assert_eq!(
        item(&inv, "dpkg:ubuntu-desktop-minimal:amd64")["attrs"]["source"],
        "ubuntu-meta"
    );

    // The current revision (4336), not the older 4173 that is still on disk.
    assert_eq!(
        item(&inv, "snap:firefox:amd64")["attrs"],
        json!({
            "manager": "snap",
            "name": "firefox",
            "version": "124.0.1-1",
            "arch": "amd64",
            "vendor": "Mozilla",
            "publisher": "mozilla",
            "source": "latest/stable",
            "install_time": "2024-05-14T17:02:11Z",
            "license": "MPL-2.0",
            "size_bytes": 4096,
            "summary": "Mozilla Firefox web browser",
            "revision": "4336",
            "snap_type": "app",
        })
    );
    assert_eq!(
        item(&inv, "snap:core22:amd64")["attrs"],
        json!({
            "manager": "snap",
            "name": "core22",
            "version": "20240408",
            "arch": "amd64",
            "vendor": "Canonical",
            "publisher": "canonical",
            "source": "latest/stable",
            "install_time": "2024-04-22T06:12:40Z",
            "license": null,
            "size_bytes": 4096,
            "summary": "Runtime environment based on Ubuntu 22.04",
            "revision": "1380",
            "snap_type": "base",
        })
    );

    assert_eq!(
        item(&inv, "flatpak:org.libreoffice.LibreOffice:x86_64")["attrs"],
        json!({
            "manager": "flatpak",
            "name": "org.libreoffice.LibreOffice",
            "version": "24.2.3.2",
            "arch": "x86_64",
            "vendor": "The Document Foundation",
            "source": "flathub",
            "origin": "flathub",
            "install_time": "2024-05-20T18:40:05Z",
            "license": "MPL-2.0",
            "size_bytes": 642_318_336,
            "summary": "The LibreOffice productivity suite",
            "kind": "app",
            "branch": "stable",
            "branches": ["stable"],
            "commit": "4d3b0e5c8f1a9e27b6c0d5f4a3e2b1c09d8e7f6a5b4c3d2e1f0a9b8c7d6e5f40",
            "runtime": "org.freedesktop.Platform/x86_64/23.08",
        })
    );
    assert_eq!(
        item(&inv, "flatpak:org.freedesktop.Platform:x86_64")["attrs"],
        json!({
            "manager": "flatpak",
            "name": "org.freedesktop.Platform",
            "version": "23.08.17",
            "arch": "x86_64",
            "vendor": "freedesktop-sdk",
            "source": "flathub",
            "origin": "flathub",
            "install_time": "2024-05-20T18:38:51Z",
            "license": "LicenseRef-proprietary=https://freedesktop-sdk.gitlab.io/documentation/license/",
            "size_bytes": 584_097_792,
            "summary": "Runtime platform for applications",
            "kind": "runtime",
            "branch": "23.08",
            "branches": ["23.08"],
            "commit": "a17c9e3f5b2d8e6a4c1f0b9d7e5c3a1f8e6d4c2b0a9f7e5d3c1b9a8f6e4d2c05",
            "runtime": null,
        })
    );
}

#[test]
fn snap_without_state_or_assertions_has_null_channel_and_vendor() {
    let root = ubuntu_copy();
    fs::remove_file(root.path().join("var/lib/snapd/state.json")).unwrap();
    fs::remove_dir_all(root.path().join("var/lib/snapd/assertions")).unwrap();
    let inv = inventory(root.path(), None);
    assert_eq!(collector(&inv, "snap")["status"], "ok");
    let ff = &item(&inv, "snap:firefox:amd64")["attrs"];
    assert_eq!(ff["source"], Value::Null);
    assert_eq!(ff["vendor"], Value::Null);
    assert_eq!(ff["version"], "124.0.1-1");

    // A corrupt state.json costs the channels, with a warning; the snaps stay.
    fs::write(
        root.path().join("var/lib/snapd/state.json"),
        "{\"data\": {\"snaps\": [",
    )
    .unwrap();
    let inv = inventory(root.path(), None);
    let snap = collector(&inv, "snap");
    assert_eq!(snap["status"], "partial");
    assert_eq!(snap["items"], 2);
    assert!(
        snap["message"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/snapd/state.json: "),
        "{snap}"
    );
}

fn fake_rpm_path() -> String {
    let bin = fixtures().join("rpm/bin");
    format!("{}:/usr/bin:/bin", bin.display())
}

#[test]
fn rocky9_rpm_through_the_fake_rpm() {
    let inv = inventory(&fixtures().join("rocky9"), Some(&fake_rpm_path()));
    expect_statuses(&inv, &["rpm"]);
    expect_unsupported_messages(&inv, &["rpm"]);
    assert_complete(&inv);
    // 41 lines: two gpg-pubkey pseudo packages skipped; two kernels and two kernel-cores
    // folded into one CI each.
    assert_eq!(collector(&inv, "rpm")["items"], 37);
    let keys = keys_of(&inv, "rpm");
    assert!(!keys.iter().any(|k| k.contains("gpg-pubkey")));
    assert!(keys.contains("rpm:glibc:x86_64") && keys.contains("rpm:glibc:i686"));

    assert_eq!(
        item(&inv, "rpm:bash:x86_64")["attrs"],
        json!({
            "manager": "rpm",
            "name": "bash",
            "version": "5.1.8-9.el9",
            "arch": "x86_64",
            "vendor": "Rocky Enterprise Software Foundation",
            "source": "bash",
            "source_rpm": "bash-5.1.8-9.el9.src.rpm",
            "install_time": "2024-05-16T10:00:01Z",
            "license": "GPLv3+",
            "size_bytes": 7_738_634,
            "summary": "The GNU Bourne Again shell",
        })
    );
    let kernel = &item(&inv, "rpm:kernel-core:x86_64")["attrs"];
    assert_eq!(kernel["version"], "5.14.0-427.20.1.el9_4");
    assert_eq!(kernel["install_time"], "2024-06-10T09:38:20Z");
    assert_eq!(
        kernel["versions"],
        json!(["5.14.0-362.24.1.el9_3", "5.14.0-427.20.1.el9_4"])
    );
    assert_eq!(kernel["source"], "kernel");
    assert_eq!(
        item(&inv, "rpm:openssl:x86_64")["attrs"]["version"],
        "1:3.0.7-27.el9"
    );
    assert_eq!(
        item(&inv, "rpm:shadow-utils:x86_64")["attrs"]["version"],
        "2:4.9-8.el9"
    );
    assert_eq!(
        item(&inv, "rpm:python3:x86_64")["attrs"]["source"],
        "python3.9"
    );
    assert_eq!(item(&inv, "rpm:tzdata:noarch")["attrs"]["arch"], "noarch");
    let dsu = &item(&inv, "rpm:dell-system-update:x86_64")["attrs"];
    assert_eq!(dsu["vendor"], "Dell Inc.");
    let acme = &item(&inv, "rpm:acme-ops-scripts:noarch")["attrs"];
    assert_eq!(acme["vendor"], Value::Null, "(none) is null");
    assert_eq!(acme["license"], "Proprietary");
    assert!(
        item(&inv, "rpm:glibc:x86_64")["attrs"]
            .get("versions")
            .is_none()
    );
}

#[test]
fn rpm_database_without_rpm_command_is_an_error() {
    let empty = tempfile::tempdir().unwrap();
    let inv = inventory(
        &fixtures().join("rocky9"),
        Some(empty.path().to_str().unwrap()),
    );
    let rpm = collector(&inv, "rpm");
    assert_eq!(rpm["status"], "error");
    assert_eq!(
        rpm["message"],
        "rpm database present but the rpm command is missing"
    );
    assert_eq!(rpm["items"], 0);
}

#[test]
fn rpm_under_usr_lib_sysimage_is_found() {
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("usr/lib/sysimage/rpm");
    fs::create_dir_all(&db).unwrap();
    fs::write(db.join("rpmdb.sqlite"), "").unwrap();
    assert_eq!(
        cmdb_agent::discover::packages::rpm::find_database(&cmdb_agent::hostroot::HostRoot::new(
            root.path()
        )),
        Some("/usr/lib/sysimage/rpm")
    );
    let inv = inventory(root.path(), Some(&fake_rpm_path()));
    assert_eq!(collector(&inv, "rpm")["status"], "ok");
    assert_eq!(collector(&inv, "rpm")["items"], 37);
}

/// Writes an executable shell script to `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn slow_or_failing_rpm_never_hangs_the_collector() {
    use cmdb_agent::discover::packages::rpm;
    use cmdb_agent::hostroot::HostRoot;
    use cmdb_proto::model::CollectorState;

    let bin = tempfile::tempdir().unwrap();
    let root = HostRoot::new(fixtures().join("rocky9"));
    let sleepy = script(bin.path(), "rpm-sleepy", "sleep 30");
    let t = Instant::now();
    let o = rpm::query(
        &root,
        sleepy.to_str().unwrap(),
        "/var/lib/rpm",
        Duration::from_millis(300),
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(o.state(), CollectorState::Timeout);
    assert_eq!(
        o.message().as_deref(),
        Some("rpm -qa did not finish within 300 ms and was killed")
    );
    assert!(o.items.is_empty());

    let failing = script(
        bin.path(),
        "rpm-failing",
        "echo 'error: cannot open Packages database in /var/lib/rpm' >&2; exit 1",
    );
    let o = rpm::query(
        &root,
        failing.to_str().unwrap(),
        "/var/lib/rpm",
        Duration::from_secs(5),
    );
    assert_eq!(o.state(), CollectorState::Error);
    let msg = o.message().unwrap();
    assert!(msg.starts_with("rpm -qa failed: "), "{msg}");
    assert!(msg.contains("cannot open Packages database"), "{msg}");

    // Garbage lines cost only themselves.
    let noisy = script(
        bin.path(),
        "rpm-noisy",
        "printf 'garbage\\nbash\\t0\\t5.1.8\\t9.el9\\tx86_64\\tV\\tGPLv3+\\t1715853601\\t1\\tbash-5.1.8-9.el9.src.rpm\\tsh\\n'",
    );
    let o = rpm::query(
        &root,
        noisy.to_str().unwrap(),
        "/var/lib/rpm",
        Duration::from_secs(5),
    );
    assert_eq!(o.state(), CollectorState::Partial);
    assert_eq!(o.items.len(), 1);
    assert_eq!(
        o.message().as_deref(),
        Some("rpm -qa output line 1: expected 11 tab-separated fields, found 1; skipped")
    );
}

#[test]
fn alpine319_apk_packages() {
    let inv = inventory(&fixtures().join("alpine319"), None);
    expect_statuses(&inv, &["apk"]);
    expect_unsupported_messages(&inv, &["apk"]);
    assert_complete(&inv);
    assert_eq!(collector(&inv, "apk")["items"], 16);
    assert_eq!(
        item(&inv, "apk:busybox:x86_64")["attrs"],
        json!({
            "manager": "apk",
            "name": "busybox",
            "version": "1.36.1-r15",
            "arch": "x86_64",
            "vendor": "Sören Tempel <soeren+alpine@soeren-tempel.net>",
            "source": "busybox",
            "install_time": null,
            "build_time": "2023-12-21T14:22:33Z",
            "license": "GPL-2.0-only",
            "size_bytes": 949_248,
            "summary": "Size optimized toolbox of many common UNIX utilities",
            "url": "https://busybox.net/",
        })
    );
    let ca = &item(&inv, "apk:ca-certificates-bundle:x86_64")["attrs"];
    assert_eq!(ca["source"], "ca-certificates");
    assert_eq!(ca["license"], "MPL-2.0 AND MIT");
    assert_eq!(
        item(&inv, "apk:libssl3:x86_64")["attrs"]["source"],
        "openssl"
    );
    assert_eq!(
        item(&inv, "apk:musl:x86_64")["attrs"]["version"],
        "1.2.4_git20230717-r4"
    );
}

#[test]
fn arch_pacman_packages() {
    let inv = inventory(&fixtures().join("arch"), None);
    expect_statuses(&inv, &["pacman"]);
    expect_unsupported_messages(&inv, &["pacman"]);
    assert_complete(&inv);
    assert_eq!(collector(&inv, "pacman")["items"], 12);
    assert_eq!(
        item(&inv, "pacman:zlib:x86_64")["attrs"],
        json!({
            "manager": "pacman",
            "name": "zlib",
            "version": "1:1.3.1-1",
            "arch": "x86_64",
            "vendor": "Levente Polyak <anthraxx@archlinux.org>",
            "source": "zlib",
            "install_time": "2024-05-21T14:18:21Z",
            "license": "Zlib",
            "size_bytes": 375_853,
            "summary": "Compression library implementing the deflate compression method found in gzip and PKZIP",
            "install_reason": "dependency",
        })
    );
    let fw = &item(&inv, "pacman:linux-firmware:any")["attrs"];
    assert_eq!(
        fw["license"],
        "GPL2 AND custom AND LicenseRef-Redistributable"
    );
    assert_eq!(fw["install_reason"], "explicit");
    assert_eq!(
        item(&inv, "pacman:yay-bin:x86_64")["attrs"]["vendor"],
        Value::Null
    );
    assert_eq!(item(&inv, "pacman:base:any")["attrs"]["version"], "3-2");
    assert_eq!(
        item(&inv, "pacman:glibc:x86_64")["attrs"]["license"],
        "GPL-2.0-or-later AND LGPL-2.1-or-later"
    );
}

#[test]
fn pacman_broken_desc_is_skipped_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(
        &fixtures().join("arch/var/lib/pacman"),
        &root.path().join("var/lib/pacman"),
    );
    let local = root.path().join("var/lib/pacman/local");
    fs::write(local.join("sudo-1.9.15.p5-1/desc"), "%NAME%\nsudo\n\n").unwrap();
    fs::create_dir(local.join("half-installed-1.0-1")).unwrap();
    let inv = inventory(root.path(), None);
    let pacman = collector(&inv, "pacman");
    assert_eq!(pacman["status"], "partial");
    assert_eq!(pacman["items"], 11);
    assert_eq!(
        pacman["message"],
        "/var/lib/pacman/local/half-installed-1.0-1/desc: not found; package skipped; \
         /var/lib/pacman/local/sudo-1.9.15.p5-1/desc: no %VERSION% for sudo; package skipped"
    );
}

#[test]
fn snap_dir_behind_an_absolute_symlink_is_not_followed_out_of_the_root() {
    // Fedora layout: /snap -> /var/lib/snapd/snap (absolute). Under a host root, following
    // it would read this machine; the collector must use the host's real directory.
    let root = ubuntu_copy();
    let r = root.path();
    fs::rename(r.join("snap"), r.join("var/lib/snapd/snap")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    fs::create_dir_all(elsewhere.path().join("not-the-host/1/meta")).unwrap();
    fs::write(
        elsewhere.path().join("not-the-host/1/meta/snap.yaml"),
        "name: not-the-host\nversion: 1\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("1", elsewhere.path().join("not-the-host/current")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), r.join("snap")).unwrap();
    let inv = inventory(r, None);
    assert_eq!(collector(&inv, "snap")["status"], "ok");
    assert_eq!(
        keys_of(&inv, "snap"),
        BTreeSet::from([
            "snap:core22:amd64".to_owned(),
            "snap:firefox:amd64".to_owned()
        ])
    );
}
