//! apk (Alpine): reads the installed database `/lib/apk/db/installed` once — paragraphs of
//! one-letter `X:value` lines — and never runs `apk` or writes anything.
//!
//! Attributes: `version` = `V:` as recorded ("1.36.1-r15"); `arch` = `A:`; `license` =
//! `L:`; `source` = `o:` (the origin, i.e. source, package); `vendor` = `m:` (the
//! maintainer); `size_bytes` = `I:` (installed size); `summary` = `T:`. apk does not record
//! when a package was installed, so `install_time` is null; `t:` is the *build* time and
//! is reported as `build_time` (RFC 3339). Extra: `url` (`U:`).

use cmdb_proto::model::class;

use crate::discover::packages::{self, Package};
use crate::discover::{Collector, Context, Outcome};

/// The installed-packages database.
pub const DB_PATH: &str = "/lib/apk/db/installed";
/// Far above any real database (a few MB with file lists for 1000 packages).
const DB_CAP: u64 = 64 * 1024 * 1024;

pub struct ApkCollector;

impl Collector for ApkCollector {
    fn name(&self) -> &'static str {
        "apk"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let text = match ctx.root.read_to_string_capped(DB_PATH, DB_CAP) {
            Ok(t) => t,
            Err(e) => return packages::unreadable(&e, &format!("no apk database at {DB_PATH}")),
        };
        let (entries, warnings) = parse_installed(&text);
        let mut out = Outcome::new();
        for w in warnings {
            out.warn(format!("{DB_PATH} {w}"));
        }
        for e in &entries {
            let mut pkg = Package::new("apk", e.name, e.arch);
            pkg.version = Some(e.version);
            pkg.vendor = e.maintainer;
            pkg.source = e.origin;
            pkg.license = e.license;
            pkg.size_bytes = e.installed_size;
            pkg.summary = e.description;
            let build_time = e
                .build_time
                .and_then(packages::unix_time)
                .and_then(packages::rfc3339);
            out.push(
                pkg.item()
                    .with("build_time", build_time)
                    .with("url", packages::text(e.url)),
            );
        }
        packages::drop_duplicate_keys(&mut out);
        out
    }
}

/// One package of the database, borrowing from its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApkEntry<'a> {
    /// Line number (1-based) where the entry starts.
    pub line: usize,
    pub name: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub license: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub maintainer: Option<&'a str>,
    /// `t:` as written (Unix seconds).
    pub build_time: Option<&'a str>,
    pub installed_size: Option<u64>,
    pub description: Option<&'a str>,
    pub url: Option<&'a str>,
}

/// Parses `/lib/apk/db/installed`. An entry with a line that is not `X:value`, or without
/// `P:`, `V:` or `A:`, is skipped with a warning "line N: reason"; the rest are kept.
pub fn parse_installed(text: &str) -> (Vec<ApkEntry<'_>>, Vec<String>) {
    let mut st = State::default();
    let mut line_no = 0;
    for raw in text.split('\n') {
        line_no += 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            st.close();
            continue;
        }
        if !st.in_entry {
            st.in_entry = true;
            st.cur.line = line_no;
        }
        if st.bad.is_some() {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b':' || !bytes[0].is_ascii_alphanumeric() {
            st.bad = Some((line_no, "line is not \"X:value\""));
            continue;
        }
        let value = line[2..].trim();
        let cur = &mut st.cur;
        match bytes[0] {
            b'P' if cur.name.is_empty() => cur.name = value,
            b'V' if cur.version.is_empty() => cur.version = value,
            b'A' if cur.arch.is_empty() => cur.arch = value,
            b'L' => set_once(&mut cur.license, value),
            b'o' => set_once(&mut cur.origin, value),
            b'm' => set_once(&mut cur.maintainer, value),
            b't' => set_once(&mut cur.build_time, value),
            b'I' => set_once(&mut st.size_text, value),
            b'T' => set_once(&mut cur.description, value),
            b'U' => set_once(&mut cur.url, value),
            _ => {}
        }
    }
    st.close();
    (st.out, st.warnings)
}

/// First occurrence wins: apk writes each of these once per entry.
fn set_once<'a>(slot: &mut Option<&'a str>, value: &'a str) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// The parser's state between lines.
#[derive(Default)]
struct State<'a> {
    cur: ApkEntry<'a>,
    in_entry: bool,
    bad: Option<(usize, &'static str)>,
    size_text: Option<&'a str>,
    out: Vec<ApkEntry<'a>>,
    warnings: Vec<String>,
}

// === impl State ===

impl State<'_> {
    /// Ends the current entry (if any): keeps it or records why it was skipped.
    fn close(&mut self) {
        if !std::mem::replace(&mut self.in_entry, false) {
            return;
        }
        let mut e = std::mem::take(&mut self.cur);
        let size_text = self.size_text.take();
        let which = if e.name.is_empty() {
            String::new()
        } else {
            format!(" (package {})", e.name)
        };
        if let Some((line, reason)) = self.bad.take() {
            self.warnings
                .push(format!("line {line}: {reason}{which}; entry skipped"));
        } else if !packages::usable_in_key(e.name)
            || e.version.is_empty()
            || !packages::usable_in_key(e.arch)
        {
            self.warnings.push(format!(
                "line {}: entry without a usable P:, V: or A:{which}; entry skipped",
                e.line
            ));
        } else {
            e.installed_size = size_text.and_then(|s| s.parse().ok());
            self.out.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DB: &str = "\
C:Q1nMDDiv3yAx4qAUaDcqNtmG5d/0g=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407278
I:667648
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1701956113
c:0ff4a4acb0f0f4ba3e3bda5d2d36bcc5d0f9a7c5
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1w9A1PAxK0Ohd6T0VNmsHVSXmI1c=
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q17yJ3JFNypA4mxhJJr0ou6CzsJVI=

P:busybox
V:1.36.1-r15
A:x86_64
I:949248
T:Size optimized toolbox of many common UNIX utilities
L:GPL-2.0-only
o:busybox
t:1701956113
";

    #[test]
    fn parses_entries() {
        let (es, w) = parse_installed(DB);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].name, "musl");
        assert_eq!(es[0].version, "1.2.4_git20230717-r4");
        assert_eq!(es[0].installed_size, Some(667_648));
        assert_eq!(
            es[0].maintainer,
            Some("Natanael Copa <ncopa@alpinelinux.org>")
        );
        assert_eq!(es[1].maintainer, None);
        assert_eq!(es[1].line, 23);
    }

    #[test]
    fn malformed_entries_are_skipped_and_named() {
        let text = format!(
            "{DB}\nP:bad\nthis is not a field\nV:1\nA:x86_64\n\nV:1\nA:x86_64\n\nP:ok\nV:2\nA:noarch\n"
        );
        let (es, w) = parse_installed(&text);
        let names: Vec<_> = es.iter().map(|e| e.name).collect();
        assert_eq!(names, ["musl", "busybox", "ok"]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("line 33: line is not"), "{w:?}");
        assert!(w[0].contains("(package bad)"), "{w:?}");
        assert!(w[1].starts_with("line 37: entry without a usable"), "{w:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            let (es, _) = parse_installed(&s);
            for e in es {
                prop_assert!(packages::usable_in_key(e.name) && packages::usable_in_key(e.arch));
            }
        }

        #[test]
        fn generated_entries_round_trip(
            es in prop::collection::vec(("[a-z][a-z0-9_.+-]{0,15}", "[0-9][0-9a-z._]{0,8}-r[0-9]", 0u64..1_000_000_000), 0..20),
            junk in any::<prop::sample::Index>(),
        ) {
            let blocks: Vec<String> = es.iter().enumerate().map(|(i, (n, v, sz))| {
                format!("P:{n}{i}\nV:{v}\nA:x86_64\nI:{sz}\nF:usr/bin\nR:{n}\n")
            }).collect();
            let text = blocks.join("\n");
            let (got, w) = parse_installed(&text);
            prop_assert!(w.is_empty());
            prop_assert_eq!(got.len(), es.len());
            for (g, (_, v, sz)) in got.iter().zip(&es) {
                prop_assert_eq!(g.version, v.as_str());
                prop_assert_eq!(g.installed_size, Some(*sz));
            }
            if !blocks.is_empty() {
                let mut b2 = blocks.clone();
                let k = junk.index(b2.len());
                b2[k].push_str("garbage line\n");
                let text2 = b2.join("\n");
                let (got2, w2) = parse_installed(&text2);
                prop_assert_eq!(got2.len(), es.len() - 1);
                prop_assert_eq!(w2.len(), 1);
            }
        }
    }
}
