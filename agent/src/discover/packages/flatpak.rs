//! flatpak: the system installation `/var/lib/flatpak/{app,runtime}/<id>/<arch>/<branch>`,
//! whose `active` symlink names the deployed commit directory. Runtimes are reported as
//! well as apps: they are installed software that takes disk space, carries licenses and
//! needs security updates. Per-user installations (~/.local/share/flatpak) are not read.
//! It never runs `flatpak` or writes anything.
//!
//! Key `flatpak:<id>:<arch>`; `name` = the id. From the deploy directory: `version`,
//! `license` (`<project_license>`), `summary` and `vendor` (the developer name) from the
//! AppStream file `files/share/metainfo/<id>.metainfo.xml` (or `.appdata.xml`, or under
//! `share/appdata`) — null when there is none, which is common for runtimes; `source` and
//! `origin` = the remote it was installed from, and `size_bytes` = the installed size, both
//! from the `deploy` file (a GVariant of which only the leading fields are decoded);
//! `install_time` = that file's mtime (written at deploy). Extra: `kind` (app/runtime),
//! `branch`, `commit`, `runtime` (apps: the runtime ref they use, from `metadata`).
//! Several branches of one id and arch (org.gnome.Platform 45 and 46) share the key: they
//! become one CI describing the app's current branch (or the highest), with `branches`
//! listing all of them.

use std::borrow::Cow;

use cmdb_proto::model::class;

use crate::discover::packages::{self, Package};
use crate::discover::{Collector, Context, Outcome};
use crate::hostroot::HostRoot;

/// The system-wide installation.
pub const SYSTEM_DIR: &str = "/var/lib/flatpak";
/// Metadata files are small; AppStream files of big apps stay well below this.
const META_CAP: u64 = 2 * 1024 * 1024;

pub struct FlatpakCollector;

impl Collector for FlatpakCollector {
    fn name(&self) -> &'static str {
        "flatpak"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        if !ctx.root.exists(SYSTEM_DIR) {
            return Outcome::unsupported(format!("no flatpak system installation at {SYSTEM_DIR}"));
        }
        let mut out = Outcome::new();
        let mut deployed = Vec::new();
        for kind in ["app", "runtime"] {
            scan_kind(&ctx.root, kind, &mut deployed, &mut out);
        }
        for (d, branches) in merge_branches(deployed) {
            let mut pkg = Package::new("flatpak", &d.id, &d.arch);
            pkg.version = d.meta.version.as_deref();
            pkg.license = d.meta.license.as_deref();
            pkg.summary = d.meta.summary.as_deref();
            pkg.vendor = d.meta.developer.as_deref();
            pkg.source = d.origin.as_deref();
            pkg.size_bytes = d.installed_size;
            pkg.install_time = d.install_time;
            out.push(
                pkg.item()
                    .with("kind", d.kind)
                    .with("branch", d.branch.as_str())
                    .with("branches", branches)
                    .with("commit", d.commit.as_str())
                    .with("origin", d.origin.as_deref())
                    .with("runtime", d.runtime.as_deref()),
            );
        }
        packages::drop_duplicate_keys(&mut out);
        out
    }
}

/// One deployed ref.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployed {
    pub kind: &'static str,
    pub id: String,
    pub arch: String,
    pub branch: String,
    pub commit: String,
    /// The branch `app/<id>/current` points at, for apps.
    pub current_branch: Option<String>,
    pub origin: Option<String>,
    pub installed_size: Option<u64>,
    pub install_time: Option<std::time::SystemTime>,
    pub runtime: Option<String>,
    pub meta: Metainfo,
}

fn scan_kind(root: &HostRoot, kind: &'static str, found: &mut Vec<Deployed>, out: &mut Outcome) {
    let kind_dir = format!("{SYSTEM_DIR}/{kind}");
    let ids = match root.read_dir_names(&kind_dir) {
        Ok(ids) => ids,
        Err(e) if e.is_not_found() => return,
        Err(e) => {
            out.warn(format!("{kind_dir}: {e}"));
            return;
        }
    };
    for id in ids.iter().filter(|i| !i.starts_with('.')) {
        if !packages::usable_in_key(id) {
            out.warn(format!("{kind_dir}/{id}: unusable id; skipped"));
            continue;
        }
        let id_dir = format!("{kind_dir}/{id}");
        let current_branch = root
            .read_link(format!("{id_dir}/current"))
            .ok()
            .and_then(|t| t.file_name().map(|b| b.to_string_lossy().into_owned()));
        let Ok(arches) = root.read_dir_names(&id_dir) else {
            out.warn(format!("{id_dir}: unreadable; skipped"));
            continue;
        };
        for arch in arches
            .iter()
            .filter(|a| *a != "current" && packages::usable_in_key(a))
        {
            let Ok(branches) = root.read_dir_names(format!("{id_dir}/{arch}")) else {
                continue;
            };
            for branch in &branches {
                let ref_dir = format!("{id_dir}/{arch}/{branch}");
                // No `active` link: the ref is not deployed (a partial or removed install).
                let Ok(target) = root.read_link(format!("{ref_dir}/active")) else {
                    continue;
                };
                let Some(commit) = target.file_name().map(|c| c.to_string_lossy().into_owned())
                else {
                    continue;
                };
                let deploy_dir = format!("{ref_dir}/{commit}");
                found.push(read_deploy(
                    root,
                    &deploy_dir,
                    Deployed {
                        kind,
                        id: id.clone(),
                        arch: arch.clone(),
                        branch: branch.clone(),
                        commit,
                        current_branch: current_branch.clone(),
                        ..Deployed::default()
                    },
                ));
            }
        }
    }
}

/// Fills in what the deploy directory tells: deploy data, metadata, AppStream.
fn read_deploy(root: &HostRoot, dir: &str, mut d: Deployed) -> Deployed {
    let deploy_file = format!("{dir}/deploy");
    if let Ok(bytes) = root.read_capped(&deploy_file, META_CAP) {
        let data = parse_deploy(&bytes);
        d.origin = data.origin;
        d.installed_size = data.installed_size;
    }
    d.install_time = packages::mtime(&root.path(&deploy_file));
    if d.kind == "app"
        && let Ok(text) = root.read_to_string_capped(format!("{dir}/metadata"), META_CAP)
    {
        d.runtime = keyfile_value(&text, "Application", "runtime").map(str::to_owned);
    }
    for rel in [
        format!("files/share/metainfo/{}.metainfo.xml", d.id),
        format!("files/share/metainfo/{}.appdata.xml", d.id),
        format!("files/share/appdata/{}.appdata.xml", d.id),
    ] {
        if let Ok(xml) = root.read_to_string_capped(format!("{dir}/{rel}"), META_CAP) {
            d.meta = parse_metainfo(&xml);
            break;
        }
    }
    d
}

/// Folds several deployed branches of one id and arch into one (see module doc); returns
/// each with the sorted list of its branches.
pub fn merge_branches(mut all: Vec<Deployed>) -> Vec<(Deployed, Vec<String>)> {
    all.sort_by(|a, b| (&a.id, &a.arch, &a.branch).cmp(&(&b.id, &b.arch, &b.branch)));
    let mut out: Vec<(Deployed, Vec<String>)> = Vec::with_capacity(all.len());
    for d in all {
        match out.last_mut() {
            Some((last, branches)) if last.id == d.id && last.arch == d.arch => {
                branches.push(d.branch.clone());
                // Sorted order: a later branch replaces the kept one unless the kept one
                // is the app's current branch.
                if last.current_branch.as_deref() != Some(last.branch.as_str()) {
                    *last = d;
                }
            }
            _ => {
                let b = vec![d.branch.clone()];
                out.push((d, b));
            }
        }
    }
    out
}

/// What the leading fields of a flatpak `deploy` file say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeployData {
    pub origin: Option<String>,
    pub installed_size: Option<u64>,
}

/// Decodes the GVariant `(ssasta{sv})` flatpak writes as deploy data: origin, commit,
/// subpaths, installed size (stored big-endian), metadata. Only the first and fourth are
/// used; anything that does not frame correctly gives `None`, never a guess.
pub fn parse_deploy(b: &[u8]) -> DeployData {
    let mut d = DeployData::default();
    let n = b.len();
    let osz = match n {
        0 => return d,
        1..=0xff => 1,
        0x100..=0xffff => 2,
        _ if n <= 0xffff_ffff => 4,
        _ => 8,
    };
    let Some(frames_start) = n.checked_sub(3 * osz) else {
        return d;
    };
    // Framing offsets of the variable-size members, stored in reverse order at the end.
    let off = |k: usize| -> usize {
        let end = n - (k - 1) * osz;
        let mut v: u64 = 0;
        for (i, byte) in b[end - osz..end].iter().enumerate() {
            v |= u64::from(*byte) << (8 * i);
        }
        usize::try_from(v).unwrap_or(usize::MAX)
    };
    let (origin_end, commit_end, subpaths_end) = (off(1), off(2), off(3));
    if !(origin_end <= commit_end && commit_end <= subpaths_end && subpaths_end <= frames_start) {
        return d;
    }
    if origin_end >= 1 && b[origin_end - 1] == 0 {
        d.origin = std::str::from_utf8(&b[..origin_end - 1])
            .ok()
            .filter(|s| !s.is_empty() && !s.contains('\0'))
            .map(str::to_owned);
    }
    let size_start = subpaths_end.div_ceil(8) * 8;
    if let Some(bytes) = b.get(size_start..size_start + 8)
        && size_start + 8 <= frames_start
    {
        let mut be = [0u8; 8];
        be.copy_from_slice(bytes);
        d.installed_size = Some(u64::from_be_bytes(be));
    }
    d
}

/// A `key=value` of `[section]` in a GLib key file (flatpak's `metadata`).
pub fn keyfile_value<'a>(text: &'a str, section: &str, key: &str) -> Option<&'a str> {
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name == section;
        } else if in_section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            let v = v.trim();
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

/// What an AppStream metainfo file says about the component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metainfo {
    /// The first (newest, by AppStream convention) `<release version="…">`.
    pub version: Option<String>,
    pub license: Option<String>,
    pub summary: Option<String>,
    /// `<developer_name>` or `<developer><name>`.
    pub developer: Option<String>,
}

/// Scans an AppStream file for the few values the inventory uses. Not an XML parser:
/// comments are skipped, entities in text are decoded, and untranslated elements (no
/// `xml:lang`) are preferred by taking exact `<tag>` openings only.
pub fn parse_metainfo(xml: &str) -> Metainfo {
    let xml = strip_comments(xml);
    let developer = element_text(&xml, "developer_name").or_else(|| {
        let start = find_open_tag(&xml, "developer")?;
        let end = xml[start..]
            .find("</developer>")
            .map_or(xml.len(), |e| start + e);
        element_text(&xml[start..end], "name")
    });
    Metainfo {
        version: release_version(&xml),
        license: element_text(&xml, "project_license"),
        summary: element_text(&xml, "summary"),
        developer,
    }
}

fn strip_comments(xml: &str) -> Cow<'_, str> {
    if !xml.contains("<!--") {
        return Cow::Borrowed(xml);
    }
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        match rest[i + 4..].find("-->") {
            Some(j) => rest = &rest[i + 4 + j + 3..],
            None => return Cow::Owned(out),
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Where `<tag` opens (followed by whitespace, `>` or `/`, so `<release` ≠ `<releases>`).
fn find_open_tag(xml: &str, tag: &str) -> Option<usize> {
    let pat = format!("<{tag}");
    let mut from = 0;
    while let Some(i) = xml[from..].find(&pat) {
        let at = from + i;
        let next = xml[at + pat.len()..].chars().next();
        if matches!(next, Some(c) if c.is_whitespace() || c == '>' || c == '/') {
            return Some(at);
        }
        from = at + pat.len();
    }
    None
}

/// The text of the first `<tag>…</tag>` without attributes, entities decoded.
fn element_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let t = decode_entities(xml[start..end].trim());
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    (!t.is_empty()).then_some(t)
}

fn release_version(xml: &str) -> Option<String> {
    let start = find_open_tag(xml, "release")?;
    let tag_end = start + xml[start..].find('>')?;
    let tag = &xml[start..tag_end];
    let mut from = 0;
    while let Some(i) = tag[from..].find("version=") {
        let at = from + i;
        // Not the tail of another attribute name (e.g. "xversion=").
        let preceded_ok = tag[..at].ends_with(char::is_whitespace);
        let rest = &tag[at + "version=".len()..];
        if preceded_ok && let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let inner = &rest[1..];
            let v = decode_entities(inner.split(q).next().unwrap_or(""));
            return (!v.trim().is_empty()).then(|| v.trim().to_owned());
        }
        from = at + "version=".len();
    }
    None
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const APPDATA: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- <release version="0.0-comment"/> -->
<component type="desktop-application">
  <id>org.libreoffice.LibreOffice</id>
  <metadata_license>CC0-1.0</metadata_license>
  <project_license>MPL-2.0</project_license>
  <name>LibreOffice</name>
  <summary xml:lang="de">Büro</summary>
  <summary>The LibreOffice productivity suite</summary>
  <developer id="org.documentfoundation">
    <name xml:lang="fr">TDF</name>
    <name>The Document Foundation</name>
  </developer>
  <releases>
    <release version="24.2.3.2" date="2024-05-02"/>
    <release version="24.2.2.2" date="2024-04-04"/>
  </releases>
</component>
"#;

    #[test]
    fn reads_appstream() {
        let m = parse_metainfo(APPDATA);
        assert_eq!(m.version.as_deref(), Some("24.2.3.2"));
        assert_eq!(m.license.as_deref(), Some("MPL-2.0"));
        assert_eq!(
            m.summary.as_deref(),
            Some("The LibreOffice productivity suite")
        );
        assert_eq!(m.developer.as_deref(), Some("The Document Foundation"));
        let m = parse_metainfo(
            "<component><developer_name>A &amp; B</developer_name><release date='x' version='1.0'></release></component>",
        );
        assert_eq!(m.developer.as_deref(), Some("A & B"));
        assert_eq!(m.version.as_deref(), Some("1.0"));
        assert_eq!(parse_metainfo("<component/>"), Metainfo::default());
    }

    /// (ssasta{sv}) as GLib serialises it: origin "flathub", a 64-char commit, no
    /// subpaths, installed size 4096 (big-endian), empty metadata, 1-byte offsets.
    fn deploy_bytes(origin: &str, commit: &str, size: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(origin.as_bytes());
        b.push(0);
        let o1 = b.len();
        b.extend_from_slice(commit.as_bytes());
        b.push(0);
        let o2 = b.len();
        let o3 = b.len(); // empty `as`
        while b.len() % 8 != 0 {
            b.push(0);
        }
        b.extend_from_slice(&size.to_be_bytes());
        // empty a{sv}: nothing
        let body = b.len();
        let osz = if body + 3 <= 0xff { 1 } else { 2 };
        for o in [o3, o2, o1] {
            b.extend_from_slice(&(o as u64).to_le_bytes()[..osz]);
        }
        b
    }

    #[test]
    fn reads_deploy_data() {
        let d = parse_deploy(&deploy_bytes("flathub", &"a".repeat(64), 4096));
        assert_eq!(d.origin.as_deref(), Some("flathub"));
        assert_eq!(d.installed_size, Some(4096));
        let big = deploy_bytes("flathub", &"c".repeat(300), 123_456_789);
        assert_eq!(parse_deploy(&big).installed_size, Some(123_456_789));
        assert_eq!(parse_deploy(b""), DeployData::default());
        assert_eq!(parse_deploy(b"\xff\xff\xff"), DeployData::default());
    }

    #[test]
    fn reads_keyfile_values() {
        let md = "[Application]\nname=org.libreoffice.LibreOffice\nruntime=org.freedesktop.Platform/x86_64/23.08\n\n[Context]\nshared=network;\n";
        assert_eq!(
            keyfile_value(md, "Application", "runtime"),
            Some("org.freedesktop.Platform/x86_64/23.08")
        );
        assert_eq!(keyfile_value(md, "Context", "runtime"), None);
    }

    #[test]
    fn branches_merge_to_current_or_highest() {
        let d = |branch: &str, current: Option<&str>| Deployed {
            kind: "runtime",
            id: "org.gnome.Platform".into(),
            arch: "x86_64".into(),
            branch: branch.into(),
            current_branch: current.map(str::to_owned),
            ..Deployed::default()
        };
        let m = merge_branches(vec![d("46", None), d("45", None)]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0.branch, "46");
        assert_eq!(m[0].1, ["45", "46"]);
        let m = merge_branches(vec![d("stable", Some("beta")), d("beta", Some("beta"))]);
        assert_eq!(m[0].0.branch, "beta");
    }

    proptest! {
        #[test]
        fn arbitrary_inputs_never_panic(s in any::<String>(), b in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_metainfo(&s);
            let _ = keyfile_value(&s, "Application", "runtime");
            let _ = parse_deploy(&b);
            let _ = parse_deploy(s.as_bytes());
        }

        #[test]
        fn deploy_data_round_trips(origin in "[a-z][a-z0-9-]{0,30}", commit in "[0-9a-f]{64}", size in any::<u64>()) {
            let d = parse_deploy(&deploy_bytes(&origin, &commit, size));
            prop_assert_eq!(d.origin.as_deref(), Some(origin.as_str()));
            prop_assert_eq!(d.installed_size, Some(size));
        }
    }
}
