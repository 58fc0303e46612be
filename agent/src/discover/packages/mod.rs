//! Package managers: one collector each, all producing `package` CIs keyed
//! `<manager>:<name>:<arch>`. Each reads the manager's own database files directly; only
//! rpm is asked through its command (with a timeout), since its database format varies.
//!
//! Every collector builds its items through [`Package::item`], so all six report the same
//! attribute set: manager, name, version, arch, vendor, source, install_time, license,
//! size_bytes, summary — `null` where the manager does not record the value, never an empty
//! string passed off as real. Collectors never write to a package database and never run
//! one subprocess per package.
//!
//! What each manager's attributes mean (details in each module):
//!
//! | manager | version | vendor | source | install_time | license |
//! |---|---|---|---|---|---|
//! | dpkg | `1:2.3-4` (epoch kept) | Maintainer | source package (`Source`, else the name) | mtime of `info/<pkg>.list` | null (not recorded) |
//! | rpm | `[epoch:]version-release` | VENDOR | source package name (from SOURCERPM) | INSTALLTIME | LICENSE |
//! | apk | `V:` | `m:` maintainer | `o:` origin package | null (apk records build time only: `build_time`) | `L:` |
//! | pacman | `%VERSION%` | `%PACKAGER%` | `%BASE%` pkgbase | `%INSTALLDATE%` | `%LICENSE%` lines joined with " AND " |
//! | snap | snap.yaml `version` | publisher display name | tracking channel | mtime of the `.snap` file | snap.yaml `license` |
//! | flatpak | AppStream `<release version>` | AppStream developer | remote (origin) | mtime of the `deploy` file | `<project_license>` |
//!
//! Keys must be unique: install-only rpm packages (kernels) and several flatpak branches
//! are folded into one CI each (see rpm.rs, flatpak.rs); any other duplicate (a corrupt
//! database) keeps its first entry and warns ([`drop_duplicate_keys`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdb_proto::model::{AttrValue, Item, class};

use crate::discover::Outcome;
use crate::hostroot::ReadError;

pub mod apk;
pub mod dpkg;
pub mod flatpak;
pub mod pacman;
pub mod rpm;
pub mod snap;

/// Summaries longer than this many characters are cut (with "…"): a summary is one line
/// for a table, not a description.
pub const SUMMARY_MAX_CHARS: usize = 200;

/// The last second RFC 3339 (and humantime) can express: 9999-12-31T23:59:59Z.
const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// What one package manager knows about one installed package.
///
/// Borrowed strings, so parsers can hand out slices of the database text they read and
/// the only allocation per package is the item itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Package<'a> {
    /// "dpkg", "rpm", "apk", "pacman", "snap" or "flatpak".
    pub manager: &'static str,
    pub name: &'a str,
    /// As the manager prints it (with epoch where the manager shows one).
    pub version: Option<&'a str>,
    pub arch: &'a str,
    /// Maintainer / packager / vendor / publisher, as the manager records it.
    pub vendor: Option<&'a str>,
    /// Source package, origin, repository or channel (each manager documents which).
    pub source: Option<&'a str>,
    pub install_time: Option<SystemTime>,
    pub license: Option<&'a str>,
    pub size_bytes: Option<u64>,
    pub summary: Option<&'a str>,
}

// === impl Package ===

impl<'a> Package<'a> {
    /// A package with only its identity known; every other attribute unknown.
    pub fn new(manager: &'static str, name: &'a str, arch: &'a str) -> Self {
        Package {
            manager,
            name,
            version: None,
            arch,
            vendor: None,
            source: None,
            install_time: None,
            license: None,
            size_bytes: None,
            summary: None,
        }
    }

    /// `<manager>:<name>:<arch>`.
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.manager, self.name, self.arch)
    }

    /// The `package` CI, with every attribute of the class present (null when unknown).
    pub fn item(&self) -> Item {
        package_item(self)
    }
}

/// Builds the `package` CI for `p`: blank strings become null, the summary is cut to one
/// bounded line, the install time is RFC 3339 UTC.
pub fn package_item(p: &Package<'_>) -> Item {
    Item::new(class::PACKAGE, p.key())
        .with("manager", p.manager)
        .with("name", p.name)
        .with("version", text(p.version))
        .with("arch", p.arch)
        .with("vendor", text(p.vendor))
        .with("source", text(p.source))
        .with("install_time", p.install_time.and_then(rfc3339))
        .with("license", text(p.license))
        .with("size_bytes", p.size_bytes)
        .with("summary", p.summary.and_then(summary_line))
}

/// A recorded string, or null when the manager left it blank.
pub fn text(s: Option<&str>) -> AttrValue {
    match s.map(str::trim) {
        Some(t) if !t.is_empty() => AttrValue::Str(t.to_owned()),
        _ => AttrValue::Null,
    }
}

/// The first line of `s`, trimmed and cut to [`SUMMARY_MAX_CHARS`]; `None` when blank.
pub fn summary_line(s: &str) -> Option<String> {
    let line = s.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return None;
    }
    match line.char_indices().nth(SUMMARY_MAX_CHARS) {
        None => Some(line.to_owned()),
        Some((cut, _)) => {
            // Leave room for the ellipsis so the result stays within the bound.
            let keep = line[..cut]
                .char_indices()
                .nth(SUMMARY_MAX_CHARS - 1)
                .map_or(cut, |(i, _)| i);
            Some(format!("{}…", line[..keep].trim_end()))
        }
    }
}

/// RFC 3339 UTC with seconds ("2024-05-20T08:15:00Z"); `None` for times RFC 3339 cannot
/// express (before 1970 or after 9999), which a broken clock or file can produce.
pub fn rfc3339(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    if secs > MAX_UNIX_SECONDS {
        return None;
    }
    Some(humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string())
}

/// A Unix timestamp as recorded in a database ("1716301187"); `None` when not a positive
/// number within RFC 3339's range (0 is what managers write when they do not know).
pub fn unix_time(s: &str) -> Option<SystemTime> {
    let secs: u64 = s.trim().parse().ok()?;
    (secs > 0 && secs <= MAX_UNIX_SECONDS).then(|| UNIX_EPOCH + Duration::from_secs(secs))
}

/// Why a read failed, without the (host-root-prefixed) path: for messages that already
/// name the host path.
pub fn read_reason(e: &ReadError) -> String {
    match e {
        ReadError::NotFound(_) => "not found".to_owned(),
        ReadError::PermissionDenied(_) => "permission denied".to_owned(),
        ReadError::TooLarge { cap, .. } => format!("larger than {cap} bytes"),
        ReadError::Io { source, .. } => source.to_string(),
    }
}

/// Keeps one item per key: a corrupt database can list a package twice, and a key must be
/// unique within the inventory. The first entry wins; each dropped one is a warning.
pub fn drop_duplicate_keys(out: &mut Outcome) {
    if out.items.len() < 2 {
        return;
    }
    out.items.sort_by(|a, b| a.key.cmp(&b.key));
    let mut dropped = Vec::new();
    let mut kept: Vec<Item> = Vec::with_capacity(out.items.len());
    for item in std::mem::take(&mut out.items) {
        match kept.last() {
            Some(last) if last.key == item.key => dropped.push(item.key),
            _ => kept.push(item),
        }
    }
    out.items = kept;
    for key in dropped {
        out.warn(format!(
            "{key} is listed more than once; later entry ignored"
        ));
    }
}

/// Whether a name or architecture can go into `<manager>:<name>:<arch>` unambiguously:
/// not empty, no colons, no blanks or control characters.
pub fn usable_in_key(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control())
}

/// The modification time of a host file, if it can be read and is expressible.
pub fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The outcome when a manager's database cannot be read: `unsupported` (with `absent`,
/// e.g. "no dpkg database at /var/lib/dpkg/status") when it does not exist,
/// `permission_denied` when the agent may not read it, `error` otherwise.
pub fn unreadable(e: &ReadError, absent: &str) -> Outcome {
    if e.is_not_found() {
        return Outcome::unsupported(absent);
    }
    if e.is_permission_denied() {
        let mut o = Outcome::new();
        o.permission_denied(e.to_string());
        return o;
    }
    Outcome::error(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn item_has_every_attribute_and_nulls_blanks() {
        let mut p = Package::new("dpkg", "bash", "amd64");
        p.version = Some("5.2.15-2+b8");
        p.vendor = Some("  ");
        p.install_time = unix_time("1716301187");
        p.size_bytes = Some(7_000_000);
        p.summary = Some("GNU Bourne Again SHell\n more text");
        let item = p.item();
        assert_eq!(item.key, "dpkg:bash:amd64");
        assert_eq!(item.class, "package");
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
            assert!(item.attrs.contains_key(a), "{a}");
        }
        assert_eq!(item.attr("vendor"), Some(&AttrValue::Null));
        assert_eq!(
            item.attr("install_time").and_then(AttrValue::as_str),
            Some("2024-05-21T14:19:47Z")
        );
        assert_eq!(
            item.attr("summary").and_then(AttrValue::as_str),
            Some("GNU Bourne Again SHell")
        );
        assert_eq!(item.attr("size_bytes"), Some(&AttrValue::Int(7_000_000)));
    }

    #[test]
    fn times_out_of_range_are_unknown() {
        assert_eq!(unix_time("0"), None);
        assert_eq!(unix_time("-5"), None);
        assert_eq!(unix_time("x"), None);
        assert_eq!(unix_time("99999999999999"), None);
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(10)), None);
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(MAX_UNIX_SECONDS)).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(MAX_UNIX_SECONDS + 1)),
            None
        );
    }

    #[test]
    fn read_errors_map_to_statuses() {
        use cmdb_proto::model::CollectorState;
        use std::path::PathBuf;
        let p = PathBuf::from("/var/lib/dpkg/status");
        let o = unreadable(&ReadError::NotFound(p.clone()), "no dpkg database");
        assert_eq!(o.state(), CollectorState::Unsupported);
        assert_eq!(o.message().as_deref(), Some("no dpkg database"));
        let o = unreadable(&ReadError::PermissionDenied(p.clone()), "x");
        assert_eq!(o.state(), CollectorState::PermissionDenied);
        assert!(o.message().unwrap().contains("permission denied"));
        let o = unreadable(&ReadError::TooLarge { path: p, cap: 1 }, "x");
        assert_eq!(o.state(), CollectorState::Error);
    }

    #[test]
    fn duplicate_keys_are_dropped_with_a_warning() {
        use cmdb_proto::model::CollectorState;
        let mut o = Outcome::new();
        let mut a = Package::new("dpkg", "a", "all");
        a.version = Some("1");
        o.push(a.item());
        o.push(Package::new("dpkg", "b", "all").item());
        a.version = Some("2");
        o.push(a.item());
        drop_duplicate_keys(&mut o);
        assert_eq!(o.items.len(), 2);
        assert_eq!(
            o.items[0].attr("version"),
            Some(&AttrValue::Str("1".into()))
        );
        assert_eq!(o.state(), CollectorState::Partial);
        assert_eq!(
            o.message().as_deref(),
            Some("dpkg:a:all is listed more than once; later entry ignored")
        );
    }

    #[test]
    fn long_summaries_are_bounded() {
        let long = "é".repeat(500);
        let s = summary_line(&long).unwrap();
        assert_eq!(s.chars().count(), SUMMARY_MAX_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(summary_line("  \n x"), None);
        let exact = "a".repeat(SUMMARY_MAX_CHARS);
        assert_eq!(summary_line(&exact).as_deref(), Some(exact.as_str()));
    }

    proptest! {
        #[test]
        fn summary_never_panics_and_is_bounded(s in any::<String>()) {
            if let Some(out) = summary_line(&s) {
                prop_assert!(out.chars().count() <= SUMMARY_MAX_CHARS);
                prop_assert!(!out.contains('\n'));
            }
        }

        #[test]
        fn rfc3339_never_panics(secs in any::<u64>()) {
            if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
                let _ = rfc3339(t);
            }
            let _ = unix_time(&secs.to_string());
        }
    }
}
