//! dpkg (Debian, Ubuntu): reads `/var/lib/dpkg/status` once, by hand (deb822 paragraphs
//! with continuation lines), and stats one `/var/lib/dpkg/info/<pkg>.list` per package for
//! its install time. It never runs `dpkg-query` and never writes to the database.
//!
//! What counts as installed: a paragraph whose `Status` is `install ok installed` or
//! `hold ok installed` (dpkg-query's `ii` / `hi`). Packages removed but with configuration
//! left (`deinstall ok config-files`, `rc`), not installed, half-installed, unpacked,
//! half-configured or awaiting triggers, and any state with the `reinstreq` flag, are not
//! reported: they are not a working install an auditor or license team should count.
//!
//! Attributes: `version` exactly as dpkg prints it (with epoch, "1:2.38.1-5"); `arch` from
//! `Architecture` ("all" stays "all"; a `Multi-Arch: same` library installed for two
//! architectures is two CIs); `vendor` = `Maintainer`; `source` = the `Source` field without
//! its version, or the package name when there is none (dpkg's own rule); `license` is null
//! (dpkg records none); `size_bytes` = `Installed-Size` (KiB) × 1024; `summary` = the
//! first line of `Description`; `install_time` = the mtime of the package's `.list` file
//! (rewritten whenever dpkg unpacks the package, so: when this version was installed or
//! upgraded), null when that file is missing. Extra: `multi_arch`.

use cmdb_proto::model::class;

use crate::discover::packages::{self, Package};
use crate::discover::{Collector, Context, Outcome};

/// The dpkg status database.
pub const STATUS_PATH: &str = "/var/lib/dpkg/status";
/// Per-package file lists (their mtimes are the install times).
pub const INFO_DIR: &str = "/var/lib/dpkg/info";
/// A status file beyond this is not a real one (~10 MB holds 5000 packages).
const STATUS_CAP: u64 = 64 * 1024 * 1024;

pub struct DpkgCollector;

impl Collector for DpkgCollector {
    fn name(&self) -> &'static str {
        "dpkg"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let text = match ctx.root.read_to_string_capped(STATUS_PATH, STATUS_CAP) {
            Ok(t) => t,
            Err(e) => {
                return packages::unreadable(&e, &format!("no dpkg database at {STATUS_PATH}"));
            }
        };
        let (paragraphs, warnings) = parse_status(&text);
        let mut out = Outcome::new();
        for w in warnings {
            out.warn(format!("{STATUS_PATH} {w}"));
        }
        let info_dir = ctx.root.path(INFO_DIR);
        for p in paragraphs.iter().filter(|p| p.is_installed()) {
            let mut pkg = Package::new("dpkg", p.name, p.arch);
            pkg.version = Some(p.version);
            pkg.vendor = p.maintainer;
            pkg.source = Some(p.source_package());
            pkg.size_bytes = p.installed_size_kib.and_then(|k| k.checked_mul(1024));
            pkg.summary = p.summary;
            pkg.install_time = install_time(&info_dir, p);
            out.push(pkg.item().with("multi_arch", packages::text(p.multi_arch)));
        }
        packages::drop_duplicate_keys(&mut out);
        out
    }
}

/// The mtime of `<name>:<arch>.list` (Multi-Arch: same) or `<name>.list` (all others);
/// the other spelling is tried second, so one stat usually suffices.
fn install_time(info_dir: &std::path::Path, p: &Paragraph<'_>) -> Option<std::time::SystemTime> {
    let qualified = format!("{}:{}.list", p.name, p.arch);
    let plain = format!("{}.list", p.name);
    let (first, second) = if p.multi_arch == Some("same") {
        (qualified, plain)
    } else {
        (plain, qualified)
    };
    packages::mtime(&info_dir.join(first)).or_else(|| packages::mtime(&info_dir.join(second)))
}

/// One well-formed paragraph of the status file, borrowing from its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paragraph<'a> {
    /// Line number (1-based) where the paragraph starts.
    pub line: usize,
    pub name: &'a str,
    /// The three words of `Status`, e.g. "install ok installed".
    pub status: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub maintainer: Option<&'a str>,
    /// `Source` as written ("glibc (2.36-9+deb12u4)"), if present.
    pub source: Option<&'a str>,
    pub installed_size_kib: Option<u64>,
    pub multi_arch: Option<&'a str>,
    /// The synopsis: the part of `Description` on its first line.
    pub summary: Option<&'a str>,
}

// === impl Paragraph ===

impl<'a> Paragraph<'a> {
    /// `install ok installed` or `hold ok installed` (see the module doc).
    pub fn is_installed(&self) -> bool {
        let mut words = self.status.split_ascii_whitespace();
        matches!(
            (words.next(), words.next(), words.next(), words.next()),
            (
                Some("install" | "hold"),
                Some("ok"),
                Some("installed"),
                None
            )
        )
    }

    /// The source package name: `Source` without its "(version)", else the package name.
    pub fn source_package(&self) -> &'a str {
        self.source
            .and_then(|s| s.split_ascii_whitespace().next())
            .unwrap_or(self.name)
    }
}

/// Fields of the paragraph being read; `None` until seen.
#[derive(Default)]
struct Fields<'a> {
    start: usize,
    any: bool,
    field_seen: bool,
    bad: Option<(usize, &'static str)>,
    package: Option<&'a str>,
    status: Option<&'a str>,
    version: Option<&'a str>,
    arch: Option<&'a str>,
    maintainer: Option<&'a str>,
    source: Option<&'a str>,
    installed_size: Option<&'a str>,
    multi_arch: Option<&'a str>,
    description: Option<&'a str>,
}

/// Parses a dpkg status file into its paragraphs. A malformed paragraph (a line that is
/// neither `Field: value` nor a continuation, no `Package`/`Status`, an installed package
/// without `Version`/`Architecture`, a name unusable in a key) is skipped, with a warning
/// "line N: reason"; every other paragraph is kept.
pub fn parse_status(text: &str) -> (Vec<Paragraph<'_>>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut cur = Fields::default();
    let mut line_no = 0;
    for raw in text.split('\n') {
        line_no += 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            finish(&mut cur, &mut out, &mut warnings);
            continue;
        }
        if !cur.any {
            cur.start = line_no;
            cur.any = true;
        }
        if cur.bad.is_some() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line only belongs to a field already started; none of the
            // fields we keep need their continuation text.
            if !cur.field_seen {
                cur.bad = Some((line_no, "continuation line before any field"));
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            cur.bad = Some((
                line_no,
                "line is neither \"Field: value\" nor a continuation",
            ));
            continue;
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            cur.bad = Some((line_no, "invalid field name"));
            continue;
        }
        cur.field_seen = true;
        let value = value.trim();
        let slot = match_field(&mut cur, name);
        if let Some(slot) = slot {
            // The first occurrence wins; dpkg itself refuses duplicates.
            if slot.is_none() {
                *slot = Some(value);
            }
        }
    }
    finish(&mut cur, &mut out, &mut warnings);
    (out, warnings)
}

/// The slot for a field we keep (names are case-insensitive in deb822). Dispatching on
/// the length first keeps this to one or two comparisons per line of a large file.
fn match_field<'f, 'a>(f: &'f mut Fields<'a>, name: &str) -> Option<&'f mut Option<&'a str>> {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    let slot = match name.len() {
        6 if is("Status") => &mut f.status,
        6 if is("Source") => &mut f.source,
        7 if is("Package") => &mut f.package,
        7 if is("Version") => &mut f.version,
        10 if is("Maintainer") => &mut f.maintainer,
        10 if is("Multi-Arch") => &mut f.multi_arch,
        11 if is("Description") => &mut f.description,
        12 if is("Architecture") => &mut f.arch,
        14 if is("Installed-Size") => &mut f.installed_size,
        _ => return None,
    };
    Some(slot)
}

/// Closes the paragraph in `cur` (if any): keeps it, or records why it was skipped.
fn finish<'a>(cur: &mut Fields<'a>, out: &mut Vec<Paragraph<'a>>, warnings: &mut Vec<String>) {
    let f = std::mem::take(cur);
    if !f.any {
        return;
    }
    let which = f
        .package
        .map(|p| format!(" (package {p})"))
        .unwrap_or_default();
    if let Some((line, reason)) = f.bad {
        warnings.push(format!("line {line}: {reason}{which}; paragraph skipped"));
        return;
    }
    let skip = |reason: &str| format!("line {}: {reason}{which}; paragraph skipped", f.start);
    let Some(name) = f.package.filter(|n| packages::usable_in_key(n)) else {
        warnings.push(skip(if f.package.is_some() {
            "invalid Package name"
        } else {
            "paragraph without a Package field"
        }));
        return;
    };
    let Some(status) = f.status else {
        warnings.push(skip("paragraph without a Status field"));
        return;
    };
    let version = f.version.unwrap_or("");
    let arch = f.arch.unwrap_or("");
    let p = Paragraph {
        line: f.start,
        name,
        status,
        version,
        arch,
        maintainer: f.maintainer,
        source: f.source,
        installed_size_kib: f.installed_size.and_then(|s| s.parse().ok()),
        multi_arch: f.multi_arch,
        summary: f.description,
    };
    if p.is_installed() {
        if version.is_empty() {
            warnings.push(skip("installed package without a Version"));
            return;
        }
        if !packages::usable_in_key(arch) {
            warnings.push(skip("installed package without a valid Architecture"));
            return;
        }
    }
    out.push(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Section: shells
Installed-Size: 7164
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Multi-Arch: foreign
Source: bash (5.2.15-2)
Version: 5.2.15-2+b8
Replaces: bash-completion (<< 20060301-0), bash-doc (<= 2.05-1)
Depends: base-files (>= 2.1.12), debianutils (>= 5.6-0.1)
Pre-Depends: libc6 (>= 2.36), libtinfo6 (>= 6)
Recommends: bash-completion (>= 20060301-0)
Suggests: bash-doc
Conffiles:
 /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d
 /etc/skel/.bash_logout 22bfb8c1dd94b5f3813a2b25da67463f
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter that executes
 commands read from the standard input or from a file.
 .
 The Programmable Completion Code, by Ian Macdonald, is now found in
 the bash-completion package.
Homepage: http://tiswww.case.edu/php/chet/bash/bashtop.html

Package: rsyslog
Status: deinstall ok config-files
Priority: important
Section: admin
Installed-Size: 2002
Maintainer: Michael Biebl <biebl@debian.org>
Architecture: amd64
Version: 8.2302.0-1
Config-Version: 8.2302.0-1
Conffiles:
 /etc/logrotate.d/rsyslog d4d3b8da0d1e87e9e7e5b7ab7a84d4f5

Package: libc6
Status: hold ok installed
Installed-Size: 12985
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
";

    #[test]
    fn parses_paragraphs_with_continuations() {
        let (ps, warnings) = parse_status(SAMPLE);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(ps.len(), 3);
        let bash = &ps[0];
        assert_eq!(bash.name, "bash");
        assert_eq!(bash.version, "5.2.15-2+b8");
        assert_eq!(bash.arch, "amd64");
        assert_eq!(bash.source_package(), "bash");
        assert_eq!(bash.installed_size_kib, Some(7164));
        assert_eq!(bash.summary, Some("GNU Bourne Again SHell"));
        assert_eq!(bash.maintainer, Some("Matthias Klose <doko@debian.org>"));
        assert!(bash.is_installed());
        assert!(!ps[1].is_installed(), "rc is not installed");
        assert!(ps[2].is_installed(), "held is installed");
        assert_eq!(ps[2].source_package(), "glibc");
        assert_eq!(ps[2].line, 40);
    }

    #[test]
    fn states_that_count_as_installed() {
        let mut p = parse_status(SAMPLE).0.remove(0);
        for (s, want) in [
            ("install ok installed", true),
            ("hold ok installed", true),
            ("deinstall ok installed", false),
            ("install ok unpacked", false),
            ("install ok half-configured", false),
            ("install ok triggers-pending", false),
            ("install reinstreq installed", false),
            ("purge ok not-installed", false),
            ("install ok installed extra", false),
            ("", false),
        ] {
            p.status = s;
            assert_eq!(p.is_installed(), want, "{s}");
        }
    }

    #[test]
    fn malformed_paragraphs_are_skipped_and_named() {
        let text = format!(
            "{SAMPLE}\nPackage: broken\nStatus: install ok installed\nthis line has no colon\nVersion: 1\n\n \
             leading continuation\nPackage: x\n\nStatus: install ok installed\nVersion: 1\n\n\
             Package: nover\nStatus: install ok installed\nArchitecture: amd64\n\n\
             Package: ok2\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n"
        );
        let (ps, w) = parse_status(&text);
        let names: Vec<_> = ps.iter().map(|p| p.name).collect();
        assert_eq!(names, ["bash", "rsyslog", "libc6", "ok2"]);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].starts_with("line 52: line is neither"), "{w:?}");
        assert!(w[0].contains("(package broken)"), "{w:?}");
        assert!(
            w[1].starts_with("line 55: continuation line before"),
            "{w:?}"
        );
        assert!(w[2].contains("without a Package field"), "{w:?}");
        assert!(w[3].contains("without a Version (package nover)"), "{w:?}");
    }

    #[test]
    fn field_names_are_case_insensitive_and_crlf_tolerated() {
        let (ps, w) = parse_status(
            "package: a\r\nSTATUS: install ok installed\r\nversion: 1:2.3-4\r\narchitecture: all\r\n",
        );
        assert!(w.is_empty());
        assert_eq!(ps[0].version, "1:2.3-4");
        assert_eq!(ps[0].arch, "all");
        assert_eq!(ps[0].source_package(), "a");
    }

    fn paragraph_strategy() -> impl Strategy<Value = (String, String, String, Vec<String>)> {
        (
            "[a-z0-9][a-z0-9+.-]{0,20}",
            "[0-9]:[0-9a-z.+~-]{1,12}",
            prop::sample::select(vec!["amd64", "i386", "all", "arm64"]),
            prop::collection::vec("[!-~][ -~]{0,39}", 0..4),
        )
            .prop_map(|(n, v, a, c)| (n, v, a.to_owned(), c))
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            let (ps, _) = parse_status(&s);
            for p in ps {
                prop_assert!(packages::usable_in_key(p.name));
            }
        }

        #[test]
        fn well_formed_paragraphs_round_trip(
            paras in prop::collection::vec(paragraph_strategy(), 0..20),
            junk_at in any::<prop::sample::Index>(),
        ) {
            let mut text = String::new();
            for (i, (n, v, a, cont)) in paras.iter().enumerate() {
                text.push_str(&format!(
                    "Package: {n}{i}\nStatus: install ok installed\nVersion: {v}\nArchitecture: {a}\nDescription: d\n"
                ));
                for c in cont {
                    text.push_str(&format!(" {c}\n"));
                }
                text.push('\n');
            }
            let (ps, w) = parse_status(&text);
            prop_assert!(w.is_empty(), "{:?}", w);
            prop_assert_eq!(ps.len(), paras.len());
            for (p, (n, v, a, _)) in ps.iter().zip(&paras) {
                prop_assert!(p.name.starts_with(n.as_str()));
                prop_assert_eq!(p.version, v.as_str());
                prop_assert_eq!(p.arch, a.as_str());
            }
            // One malformed paragraph costs only itself.
            if !paras.is_empty() {
                let k = junk_at.index(paras.len());
                let mut blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
                let bad = format!("{}\nno colon here", blocks[k]);
                blocks[k] = &bad;
                let text2 = blocks.join("\n\n");
                let (ps2, w2) = parse_status(&text2);
                prop_assert_eq!(ps2.len(), paras.len() - 1);
                prop_assert_eq!(w2.len(), 1);
            }
        }
    }
}
