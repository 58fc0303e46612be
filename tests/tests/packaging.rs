//! Packaging (`packaging/`, the `[package.metadata.deb]` and `[package.metadata.generate-rpm]`
//! sections of agent/ and collector/Cargo.toml):
//! - the packaged default configurations parse with the binaries' own loaders, and agree
//!   with the systemd units (binary, config and state paths);
//! - the units carry the hardening the packaging promises;
//! - `cargo deb` builds both .deb packages from the debug binaries the other end-to-end tests
//!   build anyway (copied into a scratch target dir as `release-agent/`, the agent's
//!   packaging profile, and `release/`, stripped: no extra compile), `dpkg-deb -c`/`-I`
//!   show the right files, conffiles and maintainer scripts, and both install into a throwaway root with `dpkg --root` (maintainer scripts run
//!   chrootless and honour DPKG_ROOT: the host's users and files are never touched): the
//!   service users exist there, the state directories are theirs, every path the units name
//!   exists, the installed binary runs, and a purge removes the agent's state;
//! - `systemd-analyze verify` accepts the installed units;
//! - `cargo generate-rpm` builds both .rpm packages, checked with `rpm -qlp` when rpm is
//!   installed.
//!
//! Tools that are missing (cargo-deb, cargo-generate-rpm, dpkg, systemd-sysusers,
//! systemd-analyze, rpm) make the affected part print a reason and skip; with
//! `CMDB_REQUIRE_PACKAGING=1` (set by `.ci/run`, which installs them) a missing cargo-deb or
//! dpkg fails the test instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn packaging() -> PathBuf {
    workspace().join("packaging")
}

/// `Key=Value` lines of a unit file, in order (comments and section headers left out).
fn unit(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(packaging().join("systemd").join(name)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("Key=Value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn values<'a>(unit: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn one<'a>(unit: &'a [(String, String)], key: &str) -> &'a str {
    let v = values(unit, key);
    assert_eq!(v.len(), 1, "{key}= should appear once, got {v:?}");
    v[0]
}

/// The ExecStart binary and its `--config` argument.
fn exec_start(unit: &[(String, String)]) -> (String, String) {
    let words: Vec<&str> = one(unit, "ExecStart").split_whitespace().collect();
    let config = words
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].to_owned())
        .expect("--config in ExecStart");
    (words[0].to_owned(), config)
}

#[test]
fn packaged_configs_parse_and_agree_with_the_units() {
    let agent_unit = unit("cmdb-agent.service");
    let (agent_bin, agent_config) = exec_start(&agent_unit);
    assert_eq!(agent_bin, "/usr/bin/cmdb-agent");
    assert_eq!(agent_config, "/etc/cmdb/agent.toml");
    let agent = cmdb_agent::config::load(&packaging().join("agent.toml")).unwrap();
    assert_eq!(
        agent.state_dir,
        Path::new("/var/lib").join(one(&agent_unit, "StateDirectory")),
        "the agent's state_dir is the unit's StateDirectory"
    );
    assert_eq!(agent.host_root, Path::new("/"));
    // The unit only starts an enrolled agent: the certificate `enroll` writes.
    assert!(
        values(&agent_unit, "ConditionPathExists").contains(&agent.tls.cert.to_str().unwrap()),
        "the agent unit waits for {}",
        agent.tls.cert.display()
    );

    let collector_unit = unit("cmdb-collector.service");
    let (collector_bin, collector_config) = exec_start(&collector_unit);
    assert_eq!(collector_bin, "/usr/bin/cmdb-collector");
    assert_eq!(collector_config, "/etc/cmdb/collector.toml");
    let collector =
        cmdb_collector::config::CollectorConfig::load(&packaging().join("collector.toml")).unwrap();
    assert_eq!(
        collector.data_dir,
        Path::new("/var/lib").join(one(&collector_unit, "StateDirectory"))
    );
    assert_eq!(collector.grpc_listen.to_string(), "0.0.0.0:7443");
    assert_eq!(collector.http_listen.to_string(), "127.0.0.1:8080");
    let ca = cmdb_collector::serve::pki_dir(&collector.data_dir).join("ca.pem");
    assert!(
        values(&collector_unit, "ConditionPathExists").contains(&ca.to_str().unwrap()),
        "the collector unit waits for {}",
        ca.display()
    );
    // The whole file, as written, equals the built-in defaults it documents.
    let defaults = cmdb_collector::config::CollectorConfig::with_data_dir(collector.data_dir);
    assert_eq!(collector.store.cache_bytes, defaults.store.cache_bytes);
    assert_eq!(collector.limits.max_streams, defaults.limits.max_streams);
    assert_eq!(
        collector.limits.concurrent_applies,
        defaults.limits.concurrent_applies
    );
    assert_eq!(collector.capacity.horizon, defaults.capacity.horizon);
    assert_eq!(
        collector.capacity.day_retention,
        defaults.capacity.day_retention
    );
    assert_eq!(
        collector.capacity.thresholds.memory,
        defaults.capacity.thresholds.memory
    );
    assert_eq!(collector.licenses.refresh, defaults.licenses.refresh);
    assert_eq!(
        collector.licenses.expiry_window,
        defaults.licenses.expiry_window
    );
    assert_eq!(
        collector.cmdb_health.cache_ttl,
        defaults.cmdb_health.cache_ttl
    );
    assert_eq!(
        collector.cmdb_health.default_stale_after,
        defaults.cmdb_health.default_stale_after
    );

    let container = cmdb_collector::config::CollectorConfig::load(
        &packaging().join("container/collector.toml"),
    )
    .unwrap();
    assert_eq!(container.data_dir, Path::new("/var/lib/cmdb/collector"));
    assert_eq!(container.http_listen.to_string(), "0.0.0.0:8080");
    let containerfile = std::fs::read_to_string(packaging().join("Containerfile")).unwrap();
    for needle in [
        "EXPOSE 7443 8080",
        "VOLUME [\"/var/lib/cmdb/collector\"]",
        "HEALTHCHECK",
        "/healthz",
        "USER cmdb-collector",
    ] {
        assert!(
            containerfile.contains(needle),
            "Containerfile lacks {needle:?}"
        );
    }
}

#[test]
fn units_are_hardened() {
    for (name, user) in [
        ("cmdb-agent.service", "cmdb-agent"),
        ("cmdb-collector.service", "cmdb-collector"),
    ] {
        let u = unit(name);
        assert_eq!(one(&u, "User"), user, "{name}");
        for (key, want) in [
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictNamespaces", "yes"),
            ("SystemCallFilter", "@system-service"),
            ("SystemCallArchitectures", "native"),
            ("RestartPreventExitStatus", "64"),
        ] {
            assert_eq!(one(&u, key), want, "{name}: {key}");
        }
        assert!(!values(&u, "ProtectHome").is_empty(), "{name}: ProtectHome");
        // Never started before it can work (enrollment / PKI): no crash loop.
        assert!(!values(&u, "ConditionPathExists").is_empty(), "{name}");
    }
    let agent = unit("cmdb-agent.service");
    let caps = "CAP_DAC_READ_SEARCH CAP_SYS_PTRACE";
    assert_eq!(one(&agent, "CapabilityBoundingSet"), caps);
    assert_eq!(one(&agent, "AmbientCapabilities"), caps);
    // The agent must see every process, and reach D-Bus and rtnetlink.
    assert!(values(&agent, "ProtectProc").is_empty());
    assert!(values(&agent, "ProcSubset").is_empty());
    let families = one(&agent, "RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"] {
        assert!(families.contains(f), "agent needs {f}");
    }
    for key in ["CPUQuota", "MemoryMax", "MemoryHigh"] {
        assert!(!values(&agent, key).is_empty(), "agent: {key}");
    }
    let collector = unit("cmdb-collector.service");
    assert_eq!(one(&collector, "CapabilityBoundingSet"), "");
    assert_eq!(one(&collector, "LimitNOFILE"), "65536");
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// Whether `program args` runs and succeeds (a tool's presence).
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn required() -> bool {
    std::env::var_os("CMDB_REQUIRE_PACKAGING").is_some_and(|v| v == "1")
}

fn skip(what: &str) {
    assert!(
        !required(),
        "{what} is missing and CMDB_REQUIRE_PACKAGING=1"
    );
    eprintln!("packaging: SKIPPED: {what} is missing");
}

/// `cargo` for subcommands, without the test process's package variables (they would make
/// cargo-deb see this test crate's metadata).
fn cargo(target_dir: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_") || k.starts_with("CARGO_MANIFEST_") {
            c.env_remove(&key);
        }
    }
    c.current_dir(workspace())
        .env("CARGO_TARGET_DIR", target_dir);
    c
}

/// The entries of a `dpkg-deb -c` listing: (mode, path without the leading '.').
fn listing(deb: &Path) -> Vec<(String, String)> {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[f.len() - 1].trim_start_matches('.').to_owned(),
            )
        })
        .collect()
}

fn has(list: &[(String, String)], path: &str, mode: &str) {
    assert!(
        list.iter().any(|(m, p)| p == path && m == mode),
        "{path} ({mode}) not in the package: {list:?}"
    );
}

/// uid of `user` in the passwd file under `root`.
fn uid_in(root: &Path, user: &str) -> Option<u32> {
    std::fs::read_to_string(root.join("etc/passwd"))
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == user).then(|| f[2].parse().unwrap())
        })
}

/// The cargo profile the agent is packaged from (Cargo.toml, `[profile.release-agent]`).
const AGENT_PROFILE: &str = "release-agent";

/// Each package: its name, its member directory (`cargo generate-rpm -p`) and the profile
/// it is built from.
const PACKAGES: [(&str, &str, &str); 2] = [
    ("cmdb-agent", "agent", AGENT_PROFILE),
    ("cmdb-collector", "collector", "release"),
];

/// Each packaged binary and the profile directory its package takes it from.
const PACKAGED_BINARIES: [(&str, &str); 3] = [
    ("cmdb-agent", AGENT_PROFILE),
    ("cmdb-collector", "release"),
    ("cmdbctl", "release"),
];

#[test]
fn deb_and_rpm_packages_build_install_and_match_the_units() {
    if !works("cargo", &["deb", "--version"]) {
        return skip("cargo-deb (cargo install --locked --version =3.8.0 cargo-deb)");
    }
    if !works("dpkg-deb", &["--version"]) {
        return skip("dpkg-deb");
    }
    let bins = common::bin_dir();
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("target");
    // The agent ships from its size-optimised profile (`release-agent`), the collector from
    // `release`: each tool rewrites the manifests' `target/release/` to the profile's dir.
    for (b, profile) in PACKAGED_BINARIES {
        let dir = target.join(profile);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(bins.join(b), dir.join(b)).unwrap();
        if works("strip", &["--version"]) {
            run(Command::new("strip").arg(dir.join(b)));
        }
    }
    let debs = scratch.path().join("deb");
    for (pkg, _, profile) in PACKAGES {
        run(cargo(&target)
            .args([
                "deb",
                "--no-build",
                "--fast",
                "-p",
                pkg,
                "--profile",
                profile,
            ])
            .arg("--output")
            .arg(format!("{}/", debs.display())));
    }
    let version = env!("CARGO_PKG_VERSION");
    let agent_deb = debs.join(format!("cmdb-agent_{version}-1_amd64.deb"));
    let collector_deb = debs.join(format!("cmdb-collector_{version}-1_amd64.deb"));

    // Contents.
    let a = listing(&agent_deb);
    has(&a, "/usr/bin/cmdb-agent", "-rwxr-xr-x");
    has(&a, "/etc/cmdb/agent.toml", "-rw-r--r--");
    has(
        &a,
        "/usr/lib/systemd/system/cmdb-agent.service",
        "-rw-r--r--",
    );
    has(&a, "/usr/lib/sysusers.d/cmdb-agent.conf", "-rw-r--r--");
    has(&a, "/usr/lib/tmpfiles.d/cmdb-agent.conf", "-rw-r--r--");
    let c = listing(&collector_deb);
    has(&c, "/usr/bin/cmdb-collector", "-rwxr-xr-x");
    has(&c, "/usr/bin/cmdbctl", "-rwxr-xr-x");
    has(&c, "/etc/cmdb/collector.toml", "-rw-r--r--");
    has(
        &c,
        "/usr/lib/systemd/system/cmdb-collector.service",
        "-rw-r--r--",
    );
    has(&c, "/usr/lib/sysusers.d/cmdb-collector.conf", "-rw-r--r--");
    has(&c, "/usr/lib/tmpfiles.d/cmdb-collector.conf", "-rw-r--r--");
    // The state directories come from tmpfiles.d (owned by the service users, which do not
    // exist when the package is unpacked), not from the archive.
    let tmpfiles =
        std::fs::read_to_string(packaging().join("systemd/cmdb-agent.tmpfiles")).unwrap();
    assert!(tmpfiles.contains("d /var/lib/cmdb/agent 0750 cmdb-agent cmdb-agent"));

    // Control information.
    for (deb, name, conffile) in [
        (&agent_deb, "cmdb-agent", "/etc/cmdb/agent.toml"),
        (&collector_deb, "cmdb-collector", "/etc/cmdb/collector.toml"),
    ] {
        let info = stdout(Command::new("dpkg-deb").arg("-I").arg(deb));
        assert!(info.contains(&format!(" Package: {name}\n")), "{info}");
        assert!(info.contains(&format!(" Version: {version}-1\n")), "{info}");
        let depends = info
            .lines()
            .find(|l| l.starts_with(" Depends: "))
            .expect("Depends");
        assert!(depends.contains("libc6"), "{depends}");
        for script in ["postinst", "prerm", "postrm", "conffiles"] {
            assert!(
                info.contains(&format!(" {script} ")),
                "{name}: no {script}:\n{info}"
            );
        }
        let conffiles = stdout(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"));
        assert_eq!(conffiles.trim(), conffile);
        let postinst = stdout(Command::new("dpkg-deb").arg("-I").arg(deb).arg("postinst"));
        assert!(postinst.contains("DPKG_ROOT"));
        // A fresh install never enables or starts the service.
        assert!(!postinst.contains("systemctl enable"));
        assert!(!postinst.contains("systemctl start"));
    }

    install_into_a_throwaway_root(&agent_deb, &collector_deb, scratch.path());
    rpm_packages(&target, scratch.path());
}

fn install_into_a_throwaway_root(agent_deb: &Path, collector_deb: &Path, scratch: &Path) {
    if !works("dpkg", &["--version"]) {
        return skip("dpkg");
    }
    if !works("systemd-sysusers", &["--version"]) || !works("systemd-tmpfiles", &["--version"]) {
        // The maintainer scripts need them to work under DPKG_ROOT.
        eprintln!("packaging: SKIPPED dpkg --root: systemd-sysusers/systemd-tmpfiles missing");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        // The scripts chown the state directories to the service users.
        eprintln!("packaging: SKIPPED dpkg --root: needs root (CI runs as root)");
        return;
    }
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let root = scratch.join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-not-root",
                "--force-depends",
            ])
            .arg(format!("--log={}", scratch.join("dpkg.log").display()))
            .args(args);
        c
    };
    run(dpkg(&["-i"]).arg(agent_deb).arg(collector_deb));

    // The host was not touched.
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), host_passwd);

    for (name, unit_file, data) in [
        ("cmdb-agent", "cmdb-agent.service", "var/lib/cmdb/agent"),
        (
            "cmdb-collector",
            "cmdb-collector.service",
            "var/lib/cmdb/collector",
        ),
    ] {
        let uid = uid_in(&root, name).unwrap_or_else(|| panic!("no user {name} in the root"));
        assert_ne!(uid, 0);
        let installed =
            std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit_file)).unwrap();
        assert_eq!(
            installed,
            std::fs::read_to_string(packaging().join("systemd").join(unit_file)).unwrap()
        );
        let u = unit(unit_file);
        let (bin, config) = exec_start(&u);
        let bin = root.join(bin.trim_start_matches('/'));
        let mode = std::fs::metadata(&bin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", bin.display());
        assert!(root.join(config.trim_start_matches('/')).is_file());
        let state = root.join("var/lib").join(one(&u, "StateDirectory"));
        assert_eq!(state, root.join(data));
        let meta = std::fs::metadata(&state).unwrap();
        assert_eq!(meta.uid(), uid, "{} owner", state.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o750);
        // The installed binary runs.
        let v = stdout(Command::new(&bin).arg("--version"));
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    }
    // The collector's configuration may hold secrets: readable by its group only.
    let conf = std::fs::metadata(root.join("etc/cmdb/collector.toml")).unwrap();
    assert_eq!(conf.permissions().mode() & 0o777, 0o640);
    assert_eq!(conf.uid(), 0);
    // The installed agent configuration is the one the loader accepts.
    cmdb_agent::config::load(&root.join("etc/cmdb/agent.toml")).unwrap();
    let status = std::fs::read_to_string(admin.join("status")).unwrap();
    assert!(status.contains(" /etc/cmdb/agent.toml "), "{status}");

    verify_units(&root);

    // Purge: the agent's state goes, the collector's CMDB stays, users stay.
    run(&mut dpkg(&["--purge", "cmdb-agent", "cmdb-collector"]));
    assert!(!root.join("var/lib/cmdb/agent").exists());
    assert!(root.join("var/lib/cmdb/collector").is_dir());
    assert!(!root.join("etc/cmdb/agent.toml").exists());
    assert!(uid_in(&root, "cmdb-agent").is_some());
}

/// `systemd-analyze verify` on the units as installed (their ExecStart binaries exist under
/// the root; units they order against are outside it, hence --recursive-errors=no).
fn verify_units(root: &Path) {
    if !works("systemd-analyze", &["--version"]) {
        eprintln!("packaging: SKIPPED systemd-analyze verify: systemd-analyze missing");
        return;
    }
    for u in ["cmdb-agent.service", "cmdb-collector.service"] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--recursive-errors=no"])
            .arg(format!("--root={}", root.display()))
            .arg(format!("/usr/lib/systemd/system/{u}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains(u),
            "systemd-analyze verify {u}: {}\n{err}",
            out.status
        );
    }
}

fn rpm_packages(target: &Path, scratch: &Path) {
    if !works("cargo", &["generate-rpm", "--version"]) {
        // The .deb is the tested package; the rpm tool is optional where it is missing.
        eprintln!(
            "packaging: SKIPPED rpm: cargo-generate-rpm missing \
             (cargo install --locked --version =0.21.0 cargo-generate-rpm)"
        );
        return;
    }
    let out = scratch.join("rpm");
    std::fs::create_dir_all(&out).unwrap();
    for (_, member, profile) in PACKAGES {
        // gzip: zstd (the default) takes ~10 s per package here, gzip ~1 s.
        run(cargo(target)
            .args([
                "generate-rpm",
                "--payload-compress",
                "gzip",
                "-p",
                member,
                "--profile",
                profile,
                "-o",
            ])
            .arg(format!("{}/", out.display())));
    }
    let version = env!("CARGO_PKG_VERSION");
    let agent = out.join(format!("cmdb-agent-{version}-1.x86_64.rpm"));
    let collector = out.join(format!("cmdb-collector-{version}-1.x86_64.rpm"));
    assert!(agent.is_file() && collector.is_file());
    if !works("rpm", &["--version"]) {
        eprintln!("packaging: SKIPPED rpm -qlp: rpm missing (apt-get install rpm); packages built");
        return;
    }
    let files = stdout(Command::new("rpm").arg("-qlp").arg(&agent));
    for f in [
        "/usr/bin/cmdb-agent",
        "/etc/cmdb/agent.toml",
        "/usr/lib/systemd/system/cmdb-agent.service",
        "/usr/lib/sysusers.d/cmdb-agent.conf",
        "/usr/lib/tmpfiles.d/cmdb-agent.conf",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in {files}");
    }
    let files = stdout(Command::new("rpm").arg("-qlp").arg(&collector));
    for f in [
        "/usr/bin/cmdb-collector",
        "/usr/bin/cmdbctl",
        "/etc/cmdb/collector.toml",
        "/usr/lib/systemd/system/cmdb-collector.service",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in {files}");
    }
    let config = stdout(
        Command::new("rpm")
            .args(["-qp", "--configfiles"])
            .arg(&agent),
    );
    assert_eq!(config.trim(), "/etc/cmdb/agent.toml");
    let scripts = stdout(Command::new("rpm").args(["-qp", "--scripts"]).arg(&agent));
    assert!(
        scripts.contains("systemd-sysusers cmdb-agent.conf"),
        "{scripts}"
    );
    assert!(!scripts.contains("systemctl enable"), "{scripts}");
}
