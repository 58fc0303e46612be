//! pacman (Arch): reads the local database `/var/lib/pacman/local/<name>-<ver>-<rel>/desc`,
//! one small file per package, and never runs `pacman` or writes anything. The
//! `ALPM_DB_VERSION` file beside the package directories is not a package.
//!
//! Attributes: `version` = `%VERSION%` as recorded ("1:1.3.1-1", epoch included);
//! `arch` = `%ARCH%` ("any" stays "any"); `vendor` = `%PACKAGER%` (null for pacman's
//! "Unknown Packager"); `source` = `%BASE%` (the pkgbase the package was built from);
//! `install_time` = `%INSTALLDATE%`; `license` = the `%LICENSE%` lines joined with " AND "
//! (a package lists several licenses when its parts carry different ones, so all apply;
//! a compound line such as "MIT OR Apache-2.0" is parenthesised);
//! `size_bytes` = `%SIZE%` (installed size); `summary` = `%DESC%`. Extra: `install_reason`
//! ("explicit" or "dependency", from `%REASON%`).

use cmdb_proto::model::class;

use crate::discover::packages::{self, Package};
use crate::discover::{Collector, Context, Outcome};

/// The local (installed) database.
pub const LOCAL_DIR: &str = "/var/lib/pacman/local";
/// A desc file is a few KB; beyond this it is not one.
const DESC_CAP: u64 = 1024 * 1024;

pub struct PacmanCollector;

impl Collector for PacmanCollector {
    fn name(&self) -> &'static str {
        "pacman"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let dirs = match ctx.root.read_dir_names(LOCAL_DIR) {
            Ok(d) => d,
            Err(e) => {
                return packages::unreadable(&e, &format!("no pacman database at {LOCAL_DIR}"));
            }
        };
        let mut out = Outcome::new();
        for dir in dirs.iter().filter(|d| *d != "ALPM_DB_VERSION") {
            let path = format!("{LOCAL_DIR}/{dir}/desc");
            let text = match ctx.root.read_to_string_capped(&path, DESC_CAP) {
                Ok(t) => t,
                Err(e) if e.is_permission_denied() => {
                    out.permission_denied(format!("{path}: permission denied"));
                    continue;
                }
                Err(e) => {
                    out.warn(format!(
                        "{path}: {}; package skipped",
                        packages::read_reason(&e)
                    ));
                    continue;
                }
            };
            let d = match parse_desc(&text) {
                Ok(d) => d,
                Err(why) => {
                    out.warn(format!("{path}: {why}; package skipped"));
                    continue;
                }
            };
            let license = join_licenses(&d.licenses);
            let mut pkg = Package::new("pacman", d.name, d.arch);
            pkg.version = Some(d.version);
            pkg.vendor = d.packager.filter(|p| *p != "Unknown Packager");
            pkg.source = d.base;
            pkg.install_time = d.install_date.and_then(packages::unix_time);
            pkg.license = license.as_deref();
            pkg.size_bytes = d.size.and_then(|s| s.parse().ok());
            pkg.summary = d.desc;
            let reason = match d.reason {
                Some("1") => Some("dependency"),
                Some("0") | None => Some("explicit"),
                Some(_) => None,
            };
            out.push(pkg.item().with("install_reason", reason));
        }
        packages::drop_duplicate_keys(&mut out);
        out
    }
}

/// The fields of one `desc` file that the inventory uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desc<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub base: Option<&'a str>,
    pub desc: Option<&'a str>,
    pub install_date: Option<&'a str>,
    pub packager: Option<&'a str>,
    pub size: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub licenses: Vec<&'a str>,
}

/// Parses a pacman `desc` file: `%FIELD%` headers, each followed by value lines up to a
/// blank line. Errors when `%NAME%`, `%VERSION%` or `%ARCH%` is missing or unusable, or a
/// value line appears outside any field.
pub fn parse_desc(text: &str) -> Result<Desc<'_>, String> {
    let mut d = Desc::default();
    let mut field: Option<&str> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            field = None;
            continue;
        }
        if field.is_none() {
            if line.len() > 2 && line.starts_with('%') && line.ends_with('%') {
                field = Some(&line[1..line.len() - 1]);
                continue;
            }
            return Err(format!("line {}: value outside any %FIELD%", i + 1));
        }
        let value = line.trim();
        match field.unwrap_or("") {
            "NAME" if d.name.is_empty() => d.name = value,
            "VERSION" if d.version.is_empty() => d.version = value,
            "ARCH" if d.arch.is_empty() => d.arch = value,
            "BASE" => set_once(&mut d.base, value),
            "DESC" => set_once(&mut d.desc, value),
            "INSTALLDATE" => set_once(&mut d.install_date, value),
            "PACKAGER" => set_once(&mut d.packager, value),
            "SIZE" => set_once(&mut d.size, value),
            "REASON" => set_once(&mut d.reason, value),
            "LICENSE" => d.licenses.push(value),
            _ => {}
        }
    }
    if !packages::usable_in_key(d.name) {
        return Err("no usable %NAME%".to_owned());
    }
    if d.version.is_empty() {
        return Err(format!("no %VERSION% for {}", d.name));
    }
    if !packages::usable_in_key(d.arch) {
        return Err(format!("no usable %ARCH% for {}", d.name));
    }
    Ok(d)
}

/// Several `%LICENSE%` lines all apply (different parts of the package): joined with
/// " AND ", each compound expression in parentheses so the result stays unambiguous.
pub fn join_licenses(licenses: &[&str]) -> Option<String> {
    match licenses {
        [] => None,
        [one] => Some((*one).to_owned()),
        many => Some(
            many.iter()
                .map(|l| {
                    if l.contains(char::is_whitespace) {
                        format!("({l})")
                    } else {
                        (*l).to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
    }
}

/// The first value of a single-valued field wins.
fn set_once<'a>(slot: &mut Option<&'a str>, value: &'a str) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DESC: &str = "%NAME%
zlib

%VERSION%
1:1.3.1-1

%BASE%
zlib

%DESC%
Compression library implementing the deflate compression method found in gzip and PKZIP

%URL%
https://www.zlib.net/

%ARCH%
x86_64

%BUILDDATE%
1706018937

%INSTALLDATE%
1716301101

%PACKAGER%
Levente Polyak <anthraxx@archlinux.org>

%SIZE%
375853

%REASON%
1

%LICENSE%
Zlib
custom

%VALIDATION%
pgp

%DEPENDS%
glibc

";

    #[test]
    fn parses_desc() {
        let d = parse_desc(DESC).unwrap();
        assert_eq!(d.name, "zlib");
        assert_eq!(d.version, "1:1.3.1-1");
        assert_eq!(d.arch, "x86_64");
        assert_eq!(d.base, Some("zlib"));
        assert_eq!(d.licenses, ["Zlib", "custom"]);
        assert_eq!(d.reason, Some("1"));
        assert_eq!(d.size, Some("375853"));
    }

    #[test]
    fn licenses_join_unambiguously() {
        assert_eq!(join_licenses(&[]), None);
        assert_eq!(
            join_licenses(&["MIT OR Apache-2.0"]).as_deref(),
            Some("MIT OR Apache-2.0")
        );
        assert_eq!(
            join_licenses(&["GPL2", "MIT OR Apache-2.0"]).as_deref(),
            Some("GPL2 AND (MIT OR Apache-2.0)")
        );
    }

    #[test]
    fn malformed_desc_is_refused() {
        assert!(parse_desc("garbage\n").unwrap_err().contains("line 1"));
        assert!(parse_desc("%NAME%\nx\n").unwrap_err().contains("VERSION"));
        assert!(
            parse_desc("%NAME%\nx y\n\n%VERSION%\n1\n\n%ARCH%\nany\n")
                .unwrap_err()
                .contains("NAME")
        );
        assert!(parse_desc("").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            if let Ok(d) = parse_desc(&s) {
                prop_assert!(packages::usable_in_key(d.name) && packages::usable_in_key(d.arch));
            }
        }

        #[test]
        fn generated_desc_round_trips(
            name in "[a-z0-9@._+-]{1,20}",
            version in "([0-9]:)?[0-9a-z.+_]{1,10}-[0-9]{1,2}",
            licenses in prop::collection::vec("[A-Za-z0-9.+-]{1,12}", 0..4),
        ) {
            let mut text = format!("%NAME%\n{name}\n\n%VERSION%\n{version}\n\n%ARCH%\nany\n\n");
            if !licenses.is_empty() {
                text.push_str(&format!("%LICENSE%\n{}\n\n", licenses.join("\n")));
            }
            let d = parse_desc(&text).unwrap();
            prop_assert_eq!(d.name, name.as_str());
            prop_assert_eq!(d.version, version.as_str());
            prop_assert_eq!(d.licenses, licenses.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
