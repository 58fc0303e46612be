//! rpm (RHEL, Rocky, Fedora, SUSE): runs only when an rpm database exists under the root
//! (`/usr/lib/sysimage/rpm` or `/var/lib/rpm` holding `rpmdb.sqlite`, `Packages` or
//! `Packages.db`), and then asks `rpm -qa --queryformat …` once, through
//! [`crate::command::run`] with a timeout and an output cap — rpm's database formats
//! (Berkeley DB, NDB, SQLite) are not worth re-implementing. Under a host root, `--root`
//! and `--dbpath` point rpm at the host's database. It never writes to the database.
//!
//! Attributes: `version` as rpm prints it, `[epoch:]version-release` (no prefix when the
//! epoch is 0 or unset); `vendor` = `VENDOR`; `source` = the source package name taken
//! from `SOURCERPM` (the full file name is in `source_rpm`); `license` = `LICENSE`;
//! `install_time` = `INSTALLTIME`; `size_bytes` = `SIZE`; `summary` = `SUMMARY`. rpm's
//! "(none)" is null. `gpg-pubkey` entries are skipped: they are imported signing keys that
//! rpm lists as pseudo packages, not installed software. Install-only packages (several
//! kernels of one arch) share one key: they become one CI whose attributes are the most
//! recently installed instance's, plus `versions`, every installed version, sorted.
//!
//! Status: `unsupported` without a database; `error` when the database is there but the
//! `rpm` command is not ("rpm database present but the rpm command is missing") or fails;
//! `timeout` when rpm runs past its limit (it is killed); `partial` for unparsable lines.

use std::time::{Duration, SystemTime};

use cmdb_proto::model::{CollectorState, class};

use crate::command::{self, CommandError};
use crate::discover::packages::{self, Package};
use crate::discover::{Collector, Context, Outcome};
use crate::hostroot::HostRoot;

/// Where rpm databases live, newest layout first.
pub const DB_DIRS: &[&str] = &["/usr/lib/sysimage/rpm", "/var/lib/rpm"];
/// Files that make a directory an rpm database (SQLite, Berkeley DB, NDB).
const DB_FILES: &[&str] = &["rpmdb.sqlite", "Packages", "Packages.db"];
/// One line per package, eleven tab-separated fields; SUMMARY last since it is free text.
pub const QUERY_FORMAT: &str = "%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\t%{VENDOR}\t%{LICENSE}\t%{INSTALLTIME}\t%{SIZE}\t%{SOURCERPM}\t%{SUMMARY}\n";
/// How long `rpm -qa` may take (scaled by `timeout_scale`); below the collector timeout.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The output of a host with ~20 000 packages fits easily.
const OUTPUT_CAP: usize = 32 * 1024 * 1024;
/// rpm's placeholder for an unset tag.
const NONE: &str = "(none)";

pub struct RpmCollector;

impl Collector for RpmCollector {
    fn name(&self) -> &'static str {
        "rpm"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn timeout(&self) -> Duration {
        // Above COMMAND_TIMEOUT so a slow rpm is reported by us (killed, with a message),
        // not abandoned by the runner.
        Duration::from_secs(25)
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let Some(dbpath) = find_database(&ctx.root) else {
            return Outcome::unsupported(format!("no rpm database at {}", DB_DIRS.join(" or ")));
        };
        let timeout = COMMAND_TIMEOUT.mul_f64(ctx.options.timeout_scale.max(0.001));
        query(&ctx.root, "rpm", dbpath, timeout)
    }
}

/// The database directory under `root`, if there is one.
pub fn find_database(root: &HostRoot) -> Option<&'static str> {
    DB_DIRS
        .iter()
        .copied()
        .find(|dir| DB_FILES.iter().any(|f| root.exists(format!("{dir}/{f}"))))
}

/// Runs `program -qa` against the database at `dbpath` under `root` and turns its output
/// into package CIs. `program` is a parameter so tests can point at a fake rpm.
pub fn query(root: &HostRoot, program: &str, dbpath: &str, timeout: Duration) -> Outcome {
    // rpm wants an absolute --root; a relative --host-root is resolved here.
    let root_abs = std::path::absolute(root.root()).unwrap_or_else(|_| root.root().to_path_buf());
    let root_arg = root_abs.to_string_lossy();
    let mut args: Vec<&str> = Vec::with_capacity(7);
    if !root.is_live() {
        args.extend(["--root", &root_arg, "--dbpath", dbpath]);
    }
    args.extend(["-qa", "--queryformat", QUERY_FORMAT]);
    let stdout = match command::run(program, &args, timeout, OUTPUT_CAP) {
        Ok(o) => o.stdout,
        Err(CommandError::NotFound(_)) => {
            return Outcome::error("rpm database present but the rpm command is missing");
        }
        Err(CommandError::Timeout { .. }) => {
            let mut o = Outcome::new();
            o.fail(
                CollectorState::Timeout,
                format!(
                    "rpm -qa did not finish within {} ms and was killed",
                    timeout.as_millis()
                ),
            );
            return o;
        }
        Err(e) => return Outcome::error(format!("rpm -qa failed: {e}")),
    };
    let text = String::from_utf8_lossy(&stdout);
    let (entries, warnings) = parse_query(&text);
    let mut out = Outcome::new();
    for w in warnings {
        out.warn(format!("rpm -qa output {w}"));
    }
    for (entry, versions) in merge_instances(entries) {
        let version = entry.version_string();
        let mut pkg = Package::new("rpm", entry.name, entry.arch);
        pkg.version = Some(&version);
        pkg.vendor = entry.vendor;
        pkg.source = entry.source_package();
        pkg.license = entry.license;
        pkg.install_time = entry.install_time;
        pkg.size_bytes = entry.size;
        pkg.summary = entry.summary;
        let mut item = pkg
            .item()
            .with("source_rpm", packages::text(entry.source_rpm));
        if let Some(vs) = versions {
            item.set("versions", vs);
        }
        out.push(item);
    }
    packages::drop_duplicate_keys(&mut out);
    out
}

/// One line of the query output, borrowing from it.
#[derive(Clone, Debug, PartialEq)]
pub struct RpmEntry<'a> {
    pub name: &'a str,
    pub epoch: Option<u64>,
    pub version: &'a str,
    pub release: Option<&'a str>,
    pub arch: &'a str,
    pub vendor: Option<&'a str>,
    pub license: Option<&'a str>,
    pub install_time: Option<SystemTime>,
    pub size: Option<u64>,
    pub source_rpm: Option<&'a str>,
    pub summary: Option<&'a str>,
}

// === impl RpmEntry ===

impl<'a> RpmEntry<'a> {
    /// `[epoch:]version-release`, as `rpm -q` shows it.
    pub fn version_string(&self) -> String {
        let mut s = String::with_capacity(self.version.len() + 24);
        if let Some(e) = self.epoch.filter(|e| *e > 0) {
            s.push_str(&e.to_string());
            s.push(':');
        }
        s.push_str(self.version);
        if let Some(r) = self.release {
            s.push('-');
            s.push_str(r);
        }
        s
    }

    /// The source package's name: "bash-5.1.8-9.el9.src.rpm" → "bash".
    pub fn source_package(&self) -> Option<&'a str> {
        let srpm = self.source_rpm?;
        let base = srpm
            .strip_suffix(".src.rpm")
            .or_else(|| srpm.strip_suffix(".nosrc.rpm"))?;
        // name-version-release: the name is everything before the last two dashes.
        let mut parts = base.rsplitn(3, '-');
        let (_release, _version, name) = (parts.next()?, parts.next()?, parts.next()?);
        (!name.is_empty()).then_some(name)
    }
}

/// A tag value, or `None` for rpm's "(none)" and blanks.
fn tag(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty() && s != NONE).then_some(s)
}

/// Parses `rpm -qa --queryformat QUERY_FORMAT` output. Lines without eleven fields, without
/// a name, version or arch, or with a name or arch unusable in a key are skipped with a
/// warning "line N: reason"; `gpg-pubkey` lines are skipped silently (see module doc).
pub fn parse_query(text: &str) -> (Vec<RpmEntry<'_>>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(11, '\t').collect();
        if f.len() != 11 {
            warnings.push(format!(
                "line {n}: expected 11 tab-separated fields, found {}; skipped",
                f.len()
            ));
            continue;
        }
        let name = f[0].trim();
        if name == "gpg-pubkey" {
            continue;
        }
        let (Some(version), Some(arch)) = (tag(f[2]), tag(f[4])) else {
            warnings.push(format!(
                "line {n}: package {name:?} without version or arch; skipped"
            ));
            continue;
        };
        if !packages::usable_in_key(name) || !packages::usable_in_key(arch) {
            warnings.push(format!(
                "line {n}: name or arch unusable in a key ({name:?}, {arch:?}); skipped"
            ));
            continue;
        }
        out.push(RpmEntry {
            name,
            epoch: tag(f[1]).and_then(|e| e.parse().ok()),
            version,
            release: tag(f[3]),
            arch,
            vendor: tag(f[5]),
            license: tag(f[6]),
            install_time: tag(f[7]).and_then(packages::unix_time),
            size: tag(f[8]).and_then(|s| s.parse().ok()),
            source_rpm: tag(f[9]),
            summary: tag(f[10]),
        });
    }
    (out, warnings)
}

/// Folds several installed instances of one name and arch (install-only packages such as
/// kernels) into the most recently installed one, with every version alongside; a package
/// installed once comes back with `None`.
pub fn merge_instances(mut entries: Vec<RpmEntry<'_>>) -> Vec<(RpmEntry<'_>, Option<Vec<String>>)> {
    entries.sort_by(|a, b| (a.name, a.arch).cmp(&(b.name, b.arch)));
    let mut out: Vec<(RpmEntry<'_>, Option<Vec<String>>)> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some((last, versions)) if last.name == e.name && last.arch == e.arch => {
                let vs = versions.get_or_insert_with(|| vec![last.version_string()]);
                vs.push(e.version_string());
                if e.install_time >= last.install_time {
                    *last = e;
                }
            }
            _ => out.push((e, None)),
        }
    }
    for (_, vs) in &mut out {
        if let Some(vs) = vs {
            vs.sort();
            vs.dedup();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OUT: &str = "\
bash\t0\t5.1.8\t9.el9\tx86_64\tRocky Enterprise Software Foundation\tGPLv3+\t1715853601\t7738634\tbash-5.1.8-9.el9.src.rpm\tThe GNU Bourne Again shell
gpg-pubkey\t0\t350d275d\t6279464b\t(none)\t(none)\tpubkey\t1715853580\t0\t(none)\tRocky Enterprise Software Foundation - Release key 2022 <releng@rockylinux.org> public key
openssl\t1\t3.0.7\t27.el9\tx86_64\tRocky Enterprise Software Foundation\tASL 2.0\t1715853610\t1929126\topenssl-3.0.7-27.el9.src.rpm\tUtilities from the general purpose cryptography library with TLS implementation
kernel-core\t0\t5.14.0\t362.24.1.el9_3\tx86_64\tRocky Enterprise Software Foundation\tGPLv2\t1715853700\t70000000\tkernel-5.14.0-362.24.1.el9_3.src.rpm\tThe Linux kernel
kernel-core\t0\t5.14.0\t427.20.1.el9_4\tx86_64\tRocky Enterprise Software Foundation\tGPLv2\t1718000000\t71000000\tkernel-5.14.0-427.20.1.el9_4.src.rpm\tThe Linux kernel
acme-tools\t(none)\t1.4.2\t1.el9\tnoarch\t(none)\tProprietary\t(none)\t(none)\t(none)\tAcme\twith a tab
broken line without tabs
";

    #[test]
    fn parses_query_output() {
        let (es, w) = parse_query(OUT);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("line 7: expected 11"), "{w:?}");
        assert_eq!(es.len(), 5, "gpg-pubkey skipped");
        assert_eq!(es[0].version_string(), "5.1.8-9.el9");
        assert_eq!(es[0].source_package(), Some("bash"));
        assert_eq!(es[1].version_string(), "1:3.0.7-27.el9");
        assert_eq!(es[2].source_package(), Some("kernel"));
        let acme = &es[4];
        assert_eq!(acme.vendor, None);
        assert_eq!(acme.install_time, None);
        assert_eq!(acme.size, None);
        assert_eq!(acme.source_package(), None);
        assert_eq!(acme.summary, Some("Acme\twith a tab"));
        assert_eq!(acme.version_string(), "1.4.2-1.el9");
    }

    #[test]
    fn install_only_packages_merge_into_the_newest() {
        let (es, _) = parse_query(OUT);
        let merged = merge_instances(es);
        let kernels: Vec<_> = merged
            .iter()
            .filter(|(e, _)| e.name == "kernel-core")
            .collect();
        assert_eq!(kernels.len(), 1);
        assert_eq!(kernels[0].0.version_string(), "5.14.0-427.20.1.el9_4");
        assert_eq!(
            kernels[0].1.as_deref(),
            Some(
                &[
                    "5.14.0-362.24.1.el9_3".to_owned(),
                    "5.14.0-427.20.1.el9_4".to_owned()
                ][..]
            )
        );
        assert!(
            merged
                .iter()
                .filter(|(e, _)| e.name == "bash")
                .all(|(_, v)| v.is_none())
        );
    }

    proptest! {
        #[test]
        fn arbitrary_output_never_panics(s in any::<String>()) {
            let (es, _) = parse_query(&s);
            for e in &es {
                prop_assert!(packages::usable_in_key(e.name) && packages::usable_in_key(e.arch));
                let _ = e.source_package();
                let _ = e.version_string();
            }
            let _ = merge_instances(es);
        }

        #[test]
        fn well_formed_lines_are_kept(
            lines in prop::collection::vec(("[a-z][a-z0-9+._-]{0,15}", 0u32..5, "[0-9][0-9a-z.]{0,8}", "[0-9][0-9a-z._]{0,8}", "[ -~]{0,30}"), 0..20)
        ) {
            let text: String = lines.iter().enumerate().map(|(i, (n, e, v, r, s))| {
                format!("{n}{i}\t{e}\t{v}\t{r}\tx86_64\tV\tMIT\t1700000000\t10\t{n}-{v}-{r}.src.rpm\t{s}\n")
            }).collect();
            let (es, w) = parse_query(&text);
            prop_assert!(w.is_empty(), "{:?}", w);
            prop_assert_eq!(es.len(), lines.len());
            for (e, (n, ep, v, r, _)) in es.iter().zip(&lines) {
                prop_assert_eq!(e.source_package(), Some(n.as_str()));
                let want = if *ep > 0 { format!("{ep}:{v}-{r}") } else { format!("{v}-{r}") };
                prop_assert_eq!(e.version_string(), want);
            }
        }
    }
}
