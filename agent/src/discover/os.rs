//! The `os` CI: the distribution (os-release), the running kernel (`/proc/sys/kernel`), the
//! architecture, host names, machine id, boot time and time zone.
//!
//! It promises values that are stable between runs (boot time, not uptime) and `null` for
//! anything it cannot establish from files — it never asks DNS for the FQDN and never runs
//! `hostname`, `uname` or `timedatectl`. Under a host root other than "/" the hostname
//! comes from `/etc/hostname`, because `/proc/sys/kernel/hostname` shows the reader's own
//! UTS namespace, not the host's.

pub mod release;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use cmdb_proto::model::{Item, class};

use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};

pub struct OsCollector;

impl Collector for OsCollector {
    fn name(&self) -> &'static str {
        "os"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::OS]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root)
    }
}

const OS_RELEASE_PATHS: &[&str] = &["/etc/os-release", "/usr/lib/os-release"];

fn collect(root: &HostRoot) -> Outcome {
    let mut outcome = Outcome::new();
    let mut item = Item::new(class::OS, "os");

    let release = OS_RELEASE_PATHS
        .iter()
        .find_map(|p| read_in_root(root, p).ok().map(|text| (*p, text)));
    let assignments = match &release {
        Some((path, text)) => {
            let (a, warnings) = release::parse(text);
            for w in warnings {
                outcome.warn(format!("{path} {w}"));
            }
            a
        }
        None => {
            outcome.warn("no /etc/os-release or /usr/lib/os-release");
            Vec::new()
        }
    };
    let get = |k: &str| {
        release::get(&assignments, k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    item.set("name", get("NAME"));
    item.set("version", get("VERSION").or(get("VERSION_ID")));
    item.set("version_id", get("VERSION_ID"));
    item.set("version_codename", get("VERSION_CODENAME"));
    item.set("build_id", get("BUILD_ID"));
    item.set("id", get("ID"));
    item.set(
        "id_like",
        get("ID_LIKE").map(|l| l.split_whitespace().collect::<Vec<_>>()),
    );
    item.set("pretty_name", get("PRETTY_NAME"));

    let proc_value = |p: &str| root.read_trimmed(p).ok().flatten();
    item.set("kernel", proc_value("/proc/sys/kernel/osrelease"));
    item.set("kernel_version", proc_value("/proc/sys/kernel/version"));
    let arch = proc_value("/proc/sys/kernel/arch").or_else(|| {
        // /proc/sys/kernel/arch is recent (Linux 6.1); the live kernel answers directly.
        root.is_live().then(|| {
            rustix::system::uname()
                .machine()
                .to_string_lossy()
                .into_owned()
        })
    });
    item.set("arch", arch);

    let hostname = hostname(root);
    let fqdn = hostname.as_deref().and_then(|h| {
        let hosts = root.read_to_string_capped("/etc/hosts", 1024 * 1024).ok();
        let domain = proc_value("/proc/sys/kernel/domainname");
        fqdn(h, hosts.as_deref(), domain.as_deref())
    });
    item.set("hostname", hostname);
    item.set("fqdn", fqdn);
    item.set("machine_id", machine_id(root));

    match root.read_to_string_capped("/proc/stat", 4 * 1024 * 1024) {
        Ok(text) => {
            let (btime, warnings) = parse_btime(&text);
            for w in warnings {
                outcome.warn(format!("/proc/stat {w}"));
            }
            item.set("boot_time", btime.map(format_time));
        }
        Err(e) => {
            outcome.warn(e.to_string());
            item.set("boot_time", None::<String>);
        }
    }
    item.set("timezone", timezone(root));
    outcome.push(item);
    outcome
}

/// Reads a host file; an absolute symlink is resolved inside the root (one level), so a
/// host's `/etc/os-release -> /usr/lib/os-release` is not read from the agent's own root.
fn read_in_root(root: &HostRoot, path: &str) -> Result<String, ReadError> {
    if !root.is_live()
        && let Ok(target) = root.read_link(path)
        && target.is_absolute()
    {
        return root.read_to_string_capped(&target, 1024 * 1024);
    }
    root.read_to_string_capped(path, 1024 * 1024)
}

/// The host's name: the kernel's when live, `/etc/hostname` under another root.
fn hostname(root: &HostRoot) -> Option<String> {
    let kernel = || {
        root.read_trimmed("/proc/sys/kernel/hostname")
            .ok()
            .flatten()
            .filter(|h| h != "(none)")
    };
    let file = || {
        root.read_to_string_capped("/etc/hostname", 64 * 1024)
            .ok()
            .and_then(|t| parse_hostname_file(&t))
    };
    if root.is_live() {
        kernel().or_else(file)
    } else {
        file().or_else(kernel)
    }
}

/// The first non-comment, non-empty line of /etc/hostname.
pub fn parse_hostname_file(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

/// The fully qualified name: the hostname if dotted; else the canonical (first) name of the
/// /etc/hosts line naming the host, or a dotted alias starting with `<hostname>.`; else
/// hostname + the kernel's domain name when set. `None` when nothing qualifies it.
pub fn fqdn(hostname: &str, hosts: Option<&str>, domainname: Option<&str>) -> Option<String> {
    let is_local = |n: &str| n.starts_with("localhost");
    if hostname.contains('.') {
        return Some(hostname.to_owned());
    }
    if let Some(hosts) = hosts {
        let prefix = format!("{hostname}.");
        for line in hosts.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            if fields.next().is_none() {
                continue;
            }
            let names: Vec<&str> = fields.collect();
            let matches = names.iter().any(|n| {
                n.eq_ignore_ascii_case(hostname)
                    || n.to_ascii_lowercase()
                        .starts_with(&prefix.to_ascii_lowercase())
            });
            if !matches {
                continue;
            }
            let canonical = names.first().filter(|n| n.contains('.') && !is_local(n));
            let alias = names.iter().find(|n| {
                n.to_ascii_lowercase()
                    .starts_with(&prefix.to_ascii_lowercase())
                    && n.len() > prefix.len()
            });
            if let Some(name) = canonical.or(alias) {
                return Some((*name).to_owned());
            }
        }
    }
    domainname
        .map(str::trim)
        .filter(|d| !d.is_empty() && *d != "(none)")
        .map(|d| format!("{hostname}.{d}"))
}

/// /etc/machine-id, else the D-Bus copy; only a well-formed id (32 hex digits) counts —
/// images ship an empty file or "uninitialized".
fn machine_id(root: &HostRoot) -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| root.read_trimmed(p).ok().flatten())
        .find(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|id| id.to_ascii_lowercase())
}

/// The `btime` line of /proc/stat (seconds since the epoch), and warnings.
pub fn parse_btime(text: &str) -> (Option<u64>, Vec<String>) {
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("btime") {
            continue;
        }
        match fields.next().map(str::parse::<u64>) {
            Some(Ok(t)) => return (Some(t), warnings),
            _ => warnings.push(format!("line {}: malformed btime", n + 1)),
        }
    }
    if warnings.is_empty() {
        warnings.push("no btime line".to_owned());
    }
    (None, warnings)
}

/// RFC 3339 UTC, seconds precision.
fn format_time(epoch_secs: u64) -> Option<String> {
    let t = UNIX_EPOCH.checked_add(Duration::from_secs(epoch_secs))?;
    // humantime formats years up to 9999 only; anything later is garbage anyway.
    (epoch_secs < 253_402_300_800).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// The time zone: /etc/timezone (Debian), else the zone the /etc/localtime link names,
/// "UTC" when there is no /etc/localtime at all (glibc's default), `None` when
/// /etc/localtime is a copied file we cannot name.
fn timezone(root: &HostRoot) -> Option<String> {
    if let Some(tz) = root
        .read_to_string_capped("/etc/timezone", 4096)
        .ok()
        .and_then(|t| parse_hostname_file(&t))
        .filter(|t| !t.contains(char::is_whitespace))
    {
        return Some(tz);
    }
    match root.read_link("/etc/localtime") {
        Ok(target) => zone_from_link(&target),
        Err(e) if e.is_not_found() => Some("UTC".to_owned()),
        Err(_) => None,
    }
}

/// "../usr/share/zoneinfo/Europe/Berlin" → "Europe/Berlin".
pub fn zone_from_link(target: &Path) -> Option<String> {
    let text = target.to_string_lossy();
    let (_, zone) = text.rsplit_once("zoneinfo/")?;
    let zone = zone
        .strip_prefix("posix/")
        .or_else(|| zone.strip_prefix("right/"))
        .unwrap_or(zone);
    (!zone.is_empty()).then(|| zone.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fqdn_comes_from_hosts_then_domainname() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian12-vm.lab.example.net debian12-vm\n";
        assert_eq!(
            fqdn("debian12-vm", Some(hosts), None).as_deref(),
            Some("debian12-vm.lab.example.net")
        );
        let alias_second = "10.0.0.5 web1 web1.corp.example.com # comment\n";
        assert_eq!(
            fqdn("web1", Some(alias_second), None).as_deref(),
            Some("web1.corp.example.com")
        );
        let plain = "127.0.1.1 jdoe-desktop\n::1 localhost ip6-localhost\n";
        assert_eq!(fqdn("jdoe-desktop", Some(plain), Some("(none)")), None);
        assert_eq!(
            fqdn("jdoe-desktop", Some(plain), Some("corp.example")).as_deref(),
            Some("jdoe-desktop.corp.example")
        );
        assert_eq!(
            fqdn("db01.corp.example.com", None, None).as_deref(),
            Some("db01.corp.example.com")
        );
        let local = "127.0.0.1 localhost.localdomain localhost box\n";
        assert_eq!(fqdn("box", Some(local), None), None);
    }

    #[test]
    fn btime_is_read_and_formatted() {
        let stat = "cpu  1 2 3 4\nintr 0\nctxt 5\nbtime 1717400000\nprocesses 99\n";
        assert_eq!(parse_btime(stat), (Some(1_717_400_000), vec![]));
        assert_eq!(
            format_time(1_717_400_000).as_deref(),
            Some("2024-06-03T07:33:20Z")
        );
        let (t, w) = parse_btime("btime x\n");
        assert_eq!(t, None);
        assert_eq!(w, vec!["line 1: malformed btime"]);
        assert_eq!(parse_btime("cpu 1\n").1, vec!["no btime line"]);
        assert_eq!(format_time(u64::MAX), None);
    }

    #[test]
    fn zones_come_from_link_text() {
        for (link, want) in [
            ("../usr/share/zoneinfo/Europe/Berlin", Some("Europe/Berlin")),
            ("/usr/share/zoneinfo/Etc/UTC", Some("Etc/UTC")),
            ("/usr/share/zoneinfo/posix/Asia/Tokyo", Some("Asia/Tokyo")),
            (
                "/var/db/timezone/zoneinfo/America/New_York",
                Some("America/New_York"),
            ),
            ("/etc/somewhere/else", None),
            ("/usr/share/zoneinfo/", None),
        ] {
            assert_eq!(zone_from_link(Path::new(link)).as_deref(), want, "{link}");
        }
    }

    #[test]
    fn hostname_file_skips_comments() {
        assert_eq!(
            parse_hostname_file("# set by installer\n\n  web-1  \n").as_deref(),
            Some("web-1")
        );
        assert_eq!(parse_hostname_file("# only a comment\n"), None);
    }

    #[test]
    fn live_arch_falls_back_to_uname() {
        let dir = tempfile::tempdir().unwrap();
        let o = collect(&HostRoot::new(dir.path()));
        let os = &o.items[0];
        assert!(
            os.attr("arch").unwrap().is_null(),
            "non-live, no file: null"
        );
        assert_eq!(os.attr("timezone"), Some(&"UTC".into()));
        assert_eq!(o.state(), cmdb_proto::model::CollectorState::Partial);
    }

    #[test]
    fn machine_id_falls_back_to_dbus_and_rejects_malformed_ids() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/dbus")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), "uninitialized\n").unwrap();
        assert_eq!(machine_id(&root), None);
        std::fs::write(
            dir.path().join("var/lib/dbus/machine-id"),
            "0C8E5F2A7B3D4E1F9A6B2C8D4E0F1A3B\n",
        )
        .unwrap();
        assert_eq!(
            machine_id(&root).as_deref(),
            Some("0c8e5f2a7b3d4e1f9a6b2c8d4e0f1a3b")
        );
    }

    proptest! {
        #[test]
        fn btime_round_trips(t in any::<u64>(), noise in "[a-z ]{0,20}") {
            let text = format!("cpu 1 2 3\n{noise}\nbtime {t}\nprocesses 5\n");
            let (parsed, _) = parse_btime(&text);
            // A noise line that itself starts with "btime" is malformed and skipped.
            prop_assert_eq!(parsed, Some(t));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,400}", host in "[a-z0-9.-]{0,20}") {
            let _ = parse_btime(&text);
            let _ = parse_hostname_file(&text);
            let _ = fqdn(&host, Some(&text), Some(&text));
            let _ = zone_from_link(Path::new(&text));
        }
    }
}
