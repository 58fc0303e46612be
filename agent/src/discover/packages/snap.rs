//! snap (Ubuntu and others): installed snaps from `/snap/<name>/current` (a symlink to the
//! active revision) and that revision's `meta/snap.yaml`, read through the host root like
//! every path (Fedora-style hosts use `/var/lib/snapd/snap`). It never talks to snapd and
//! never writes anything.
//!
//! Attributes: `version`, `summary` and `license` from snap.yaml (a small line reader for
//! its top-level scalars, not a YAML library); `arch` = "all" when `architectures` is
//! `[all]` or absent (snapd's default), else the first listed; `source` = the tracking
//! channel ("latest/stable") from `/var/lib/snapd/state.json`; `vendor` = the publisher's
//! display name from snapd's assertion store (snap-declaration → account), null when either
//! is unavailable; `install_time` = the mtime of `/var/lib/snapd/snaps/<name>_<rev>.snap`
//! (written when that revision was installed or refreshed); `size_bytes` = that file's
//! size (the squashfs image is what occupies the disk). Extra: `revision`, `snap_type`.

use std::collections::HashMap;
use std::io::Read;

use cmdb_proto::model::class;
use serde::Deserialize;

use crate::discover::packages::{self, Package};
use crate::discover::{Collector, Context, Outcome};
use crate::hostroot::HostRoot;

/// Where snaps are mounted (first that exists wins).
pub const SNAP_DIRS: &[&str] = &["/snap", "/var/lib/snapd/snap"];
/// snapd's state; large on busy systems, so it is streamed, and only up to this size.
pub const STATE_PATH: &str = "/var/lib/snapd/state.json";
const STATE_CAP: u64 = 64 * 1024 * 1024;
/// snapd's assertion store.
const ASSERTS_DIR: &str = "/var/lib/snapd/assertions/asserts-v0";
/// snap.yaml and assertions are small.
const META_CAP: u64 = 1024 * 1024;

pub struct SnapCollector;

impl Collector for SnapCollector {
    fn name(&self) -> &'static str {
        "snap"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::PACKAGE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let mut found = None;
        for dir in SNAP_DIRS {
            // Fedora's /snap is an absolute symlink to /var/lib/snapd/snap: under a host
            // root it would lead to this machine, not the host, so the real dir is used.
            let is_link = std::fs::symlink_metadata(ctx.root.path(dir))
                .is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                continue;
            }
            match ctx.root.read_dir_names(dir) {
                Ok(names) => {
                    found = Some((*dir, names));
                    break;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return packages::unreadable(&e, ""),
            }
        }
        let Some((snap_dir, names)) = found else {
            return Outcome::unsupported(format!("no snaps at {}", SNAP_DIRS.join(" or ")));
        };
        let mut out = Outcome::new();
        let state = load_state(&ctx.root, &mut out);
        for name in &names {
            // /snap/bin, /snap/README and anything else without a `current` link are not snaps.
            let Ok(target) = ctx.root.read_link(format!("{snap_dir}/{name}/current")) else {
                continue;
            };
            let Some(rev) = target
                .file_name()
                .and_then(|r| r.to_str())
                .filter(|r| !r.is_empty() && *r != "." && *r != "..")
            else {
                out.warn(format!(
                    "{snap_dir}/{name}/current: unusable link target; snap skipped"
                ));
                continue;
            };
            let yaml_path = format!("{snap_dir}/{name}/{rev}/meta/snap.yaml");
            let text = match ctx.root.read_to_string_capped(&yaml_path, META_CAP) {
                Ok(t) => t,
                Err(e) => {
                    let why = packages::read_reason(&e);
                    out.warn(format!("{yaml_path}: {why}; snap skipped"));
                    continue;
                }
            };
            let y = parse_snap_yaml(&text);
            let snap_name = y.name.as_deref().unwrap_or(name);
            if !packages::usable_in_key(snap_name) {
                out.warn(format!("{yaml_path}: unusable snap name; snap skipped"));
                continue;
            }
            let arch = y.arch();
            if !packages::usable_in_key(arch) {
                out.warn(format!("{yaml_path}: unusable architecture; snap skipped"));
                continue;
            }
            let st = state.get(name.as_str());
            let publisher = st
                .and_then(|s| s.snap_id.as_deref())
                .and_then(|id| publisher(&ctx.root, id));
            let file = ctx
                .root
                .path(format!("/var/lib/snapd/snaps/{name}_{rev}.snap"));
            let meta = std::fs::metadata(&file).ok();
            let mut pkg = Package::new("snap", snap_name, arch);
            pkg.version = y.version.as_deref();
            pkg.summary = y.summary.as_deref();
            pkg.license = y.license.as_deref();
            pkg.source = st.and_then(|s| s.channel.as_deref());
            pkg.vendor = publisher.as_ref().map(|p| p.display_name.as_str());
            pkg.install_time = meta.as_ref().and_then(|m| m.modified().ok());
            pkg.size_bytes = meta.as_ref().map(std::fs::Metadata::len);
            out.push(
                pkg.item()
                    .with("revision", rev)
                    .with("snap_type", y.snap_type.as_deref().unwrap_or("app"))
                    .with("publisher", publisher.map(|p| p.username)),
            );
        }
        packages::drop_duplicate_keys(&mut out);
        out
    }
}

/// What the inventory takes from snapd's state for one snap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapState {
    /// The tracking channel ("latest/stable").
    pub channel: Option<String>,
    /// The store id of the current revision (absent for locally installed snaps).
    pub snap_id: Option<String>,
}

#[derive(Deserialize)]
struct StateFile {
    #[serde(default)]
    data: StateData,
}

#[derive(Default, Deserialize)]
struct StateData {
    #[serde(default)]
    snaps: HashMap<String, RawSnapState>,
}

#[derive(Deserialize)]
struct RawSnapState {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    current: Option<serde_json::Value>,
    /// A list of side infos (older snapd) or `{"revisions": [{"snap": side info}, …]}`.
    #[serde(default)]
    sequence: Option<serde_json::Value>,
}

/// Reads state.json (streamed, size-capped); a missing or unparsable one costs only the
/// channel and publisher (null), with a warning when it exists but cannot be used.
fn load_state(root: &HostRoot, out: &mut Outcome) -> HashMap<String, SnapState> {
    let path = root.path(STATE_PATH);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            out.warn(format!(
                "{STATE_PATH}: {e}; channels and publishers unknown"
            ));
            return HashMap::new();
        }
    };
    let reader = std::io::BufReader::new(file.take(STATE_CAP));
    match parse_state(reader) {
        Ok(m) => m,
        Err(e) => {
            out.warn(format!(
                "{STATE_PATH}: {e}; channels and publishers unknown"
            ));
            HashMap::new()
        }
    }
}

/// Parses snapd's state.json, keeping only each snap's channel and current snap-id.
pub fn parse_state(r: impl Read) -> Result<HashMap<String, SnapState>, serde_json::Error> {
    let f: StateFile = serde_json::from_reader(r)?;
    Ok(f.data
        .snaps
        .into_iter()
        .map(|(name, raw)| {
            let current = raw.current.as_ref().and_then(revision_text);
            let snap_id = raw
                .sequence
                .as_ref()
                .and_then(|seq| current_snap_id(seq, current.as_deref()));
            let channel = raw.channel.filter(|c| !c.is_empty());
            (name, SnapState { channel, snap_id })
        })
        .collect())
}

/// snapd writes revisions as strings ("4336") or, in places, numbers.
fn revision_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The snap-id of the sequence entry for `current` (or the last entry).
fn current_snap_id(seq: &serde_json::Value, current: Option<&str>) -> Option<String> {
    let entries: Vec<&serde_json::Value> = match seq {
        serde_json::Value::Array(a) => a.iter().collect(),
        serde_json::Value::Object(o) => o
            .get("revisions")?
            .as_array()?
            .iter()
            .map(|r| r.get("snap").unwrap_or(r))
            .collect(),
        _ => return None,
    };
    let e = entries
        .iter()
        .find(|e| {
            current.is_some() && e.get("revision").and_then(revision_text).as_deref() == current
        })
        .or_else(|| entries.last())?;
    e.get("snap-id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A snap publisher from the assertion store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publisher {
    pub display_name: String,
    pub username: String,
}

/// snap-declaration (series 16) → publisher-id → account assertion.
fn publisher(root: &HostRoot, snap_id: &str) -> Option<Publisher> {
    if !packages::usable_in_key(snap_id) || snap_id.contains(['/', '%']) {
        return None;
    }
    let decl = root
        .read_to_string_capped(
            format!("{ASSERTS_DIR}/snap-declaration/16/{snap_id}/active"),
            META_CAP,
        )
        .ok()?;
    let account_id = assertion_header(&decl, "publisher-id")?;
    if account_id.contains(['/', '%']) || account_id.starts_with('.') {
        return None;
    }
    let account = root
        .read_to_string_capped(
            format!("{ASSERTS_DIR}/account/{account_id}/active"),
            META_CAP,
        )
        .ok()?;
    Some(Publisher {
        display_name: assertion_header(&account, "display-name")?.to_owned(),
        username: assertion_header(&account, "username")?.to_owned(),
    })
}

/// A top-level header of a snapd assertion ("publisher-id: abc"); headers end at the
/// first blank line (the body and signature follow).
pub fn assertion_header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k == name
        {
            let v = v.trim();
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

/// The top-level scalars of a snap.yaml the inventory uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapYaml {
    pub name: Option<String>,
    pub version: Option<String>,
    pub summary: Option<String>,
    pub license: Option<String>,
    pub snap_type: Option<String>,
    pub architectures: Vec<String>,
}

// === impl SnapYaml ===

impl SnapYaml {
    /// "all" for `[all]` or no architectures (snapd's default), else the first listed.
    pub fn arch(&self) -> &str {
        match self.architectures.first() {
            None => "all",
            Some(a) => a,
        }
    }
}

/// Reads the top-level keys of a snap.yaml that the inventory needs. Not a YAML parser:
/// it understands `key: scalar` (plain, 'single' or "double" quoted), block scalars
/// (`key: |` → first line), and for `architectures` a flow (`[a, b]`) or block (`- a`)
/// list. Everything else (nested maps, other keys) is skipped. Never fails: unknown is
/// `None`.
pub fn parse_snap_yaml(text: &str) -> SnapYaml {
    let mut y = SnapYaml::default();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() || line.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let rest = rest.trim();
        if key == "architectures" {
            if rest.is_empty() {
                while let Some(next) = lines.peek() {
                    let t = next.trim_start();
                    let Some(item) = t.strip_prefix('-') else {
                        if t.is_empty() || t.starts_with('#') {
                            lines.next();
                            continue;
                        }
                        break;
                    };
                    if let Some(v) = scalar(item.trim()) {
                        y.architectures.push(v);
                    }
                    lines.next();
                }
            } else if let Some(inner) = rest.strip_prefix('[') {
                let inner = inner.split(']').next().unwrap_or("");
                y.architectures
                    .extend(inner.split(',').filter_map(|a| scalar(a.trim())));
            } else if let Some(v) = scalar(rest) {
                y.architectures.push(v);
            }
            continue;
        }
        let slot = match key {
            "name" => &mut y.name,
            "version" => &mut y.version,
            "summary" => &mut y.summary,
            "license" => &mut y.license,
            "type" => &mut y.snap_type,
            _ => continue,
        };
        let value = if rest.starts_with(['|', '>']) {
            // A block scalar: its first indented line stands for it.
            let mut first = None;
            while let Some(next) = lines.peek() {
                if !next.is_empty() && !next.starts_with([' ', '\t']) {
                    break;
                }
                if first.is_none() && !next.trim().is_empty() {
                    first = Some(next.trim().to_owned());
                }
                lines.next();
            }
            first
        } else {
            scalar(rest)
        };
        if slot.is_none() {
            *slot = value;
        }
    }
    y
}

/// A YAML scalar: quotes removed (with their escapes), a trailing ` # comment` dropped
/// from plain scalars; `None` when empty or `~`/`null`.
fn scalar(s: &str) -> Option<String> {
    let s = s.trim();
    let v = if let Some(inner) = s.strip_prefix('\'') {
        let end = inner.rfind('\'').unwrap_or(inner.len());
        inner[..end].replace("''", "'")
    } else if let Some(inner) = s.strip_prefix('"') {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        out
    } else {
        let plain = match s.find(" #") {
            Some(i) => &s[..i],
            None => s,
        };
        let plain = plain.trim();
        if plain.is_empty() || plain == "~" || plain == "null" {
            return None;
        }
        plain.to_owned()
    };
    (!v.trim().is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIREFOX: &str = "name: firefox
version: 124.0.1-1
summary: Mozilla Firefox web browser
description: |-
  Firefox is a powerful, extensible web browser with support for modern web
  application technologies.
license: MPL-2.0
architectures:
- amd64
base: core22
assumes:
- snapd2.54
apps:
  firefox:
    command: firefox.launcher
    summary: not this one
confinement: strict
grade: stable
";

    #[test]
    fn reads_top_level_scalars() {
        let y = parse_snap_yaml(FIREFOX);
        assert_eq!(y.name.as_deref(), Some("firefox"));
        assert_eq!(y.version.as_deref(), Some("124.0.1-1"));
        assert_eq!(y.summary.as_deref(), Some("Mozilla Firefox web browser"));
        assert_eq!(y.license.as_deref(), Some("MPL-2.0"));
        assert_eq!(y.architectures, ["amd64"]);
        assert_eq!(y.arch(), "amd64");
        assert_eq!(y.snap_type, None);
    }

    #[test]
    fn quoting_flow_lists_and_defaults() {
        let y = parse_snap_yaml(
            "name: 'core22'\nversion: \"20240111\" \ntype: base # the base\narchitectures: [all]\nsummary: >\n  Folded\n  text\n",
        );
        assert_eq!(y.name.as_deref(), Some("core22"));
        assert_eq!(y.version.as_deref(), Some("20240111"));
        assert_eq!(y.snap_type.as_deref(), Some("base"));
        assert_eq!(y.arch(), "all");
        assert_eq!(y.summary.as_deref(), Some("Folded"));
        assert_eq!(parse_snap_yaml("name: x\n").arch(), "all");
        let y = parse_snap_yaml("architectures: [ 'arm64', amd64 ]\nversion: 'it''s'\n");
        assert_eq!(y.architectures, ["arm64", "amd64"]);
        assert_eq!(y.version.as_deref(), Some("it's"));
    }

    #[test]
    fn state_gives_channel_and_snap_id() {
        let json = r#"{"data":{"snaps":{
            "firefox":{"type":"app","sequence":[
                {"name":"firefox","snap-id":"old","revision":"4173"},
                {"name":"firefox","snap-id":"3wdHCAVyZEmYsCMFDE9qt92UV8rC8Wdk","revision":"4336"}],
                "active":true,"current":"4336","channel":"latest/stable"},
            "local":{"type":"app","sequence":[{"name":"local","revision":"x1"}],"current":"x1"},
            "newer":{"sequence":{"revisions":[{"snap":{"snap-id":"abc","revision":"7"}}]},"current":7,"channel":"22/stable"}
        }},"changes":{"1":{"huge":"ignored"}}}"#;
        let m = parse_state(json.as_bytes()).unwrap();
        assert_eq!(
            m["firefox"],
            SnapState {
                channel: Some("latest/stable".into()),
                snap_id: Some("3wdHCAVyZEmYsCMFDE9qt92UV8rC8Wdk".into())
            }
        );
        assert_eq!(m["local"], SnapState::default());
        assert_eq!(m["newer"].snap_id.as_deref(), Some("abc"));
        assert!(parse_state(&b"{not json"[..]).is_err());
        assert!(parse_state(&b"{}"[..]).unwrap().is_empty());
    }

    #[test]
    fn assertion_headers_stop_at_the_body() {
        let a = "type: account\nauthority-id: canonical\naccount-id: OgTL\ndisplay-name: Mozilla\nusername: mozilla\n\nAcLBXAQAAQoABgUCY\n";
        assert_eq!(assertion_header(a, "display-name"), Some("Mozilla"));
        assert_eq!(assertion_header(a, "username"), Some("mozilla"));
        assert_eq!(assertion_header(a, "AcLBXAQAAQoABgUCY"), None);
        assert_eq!(assertion_header("display-name:\n", "display-name"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_yaml_never_panics(s in any::<String>()) {
            let y = parse_snap_yaml(&s);
            let _ = y.arch();
            let _ = assertion_header(&s, "x");
            let _ = parse_state(s.as_bytes());
        }

        #[test]
        fn generated_yaml_round_trips(
            name in "[a-z][a-z0-9-]{0,30}",
            version in "[0-9a-zA-Z][0-9a-zA-Z.+~-]{0,20}",
            summary in "[A-Za-z][A-Za-z0-9 ,.()-]{0,60}[A-Za-z0-9.)]",
            arches in prop::collection::vec(prop::sample::select(vec!["amd64", "arm64", "armhf", "all"]), 0..3),
            flow in any::<bool>(),
        ) {
            let mut text = format!("name: {name}\nversion: '{version}'\nsummary: {summary}\n");
            if !arches.is_empty() {
                if flow {
                    text.push_str(&format!("architectures: [{}]\n", arches.join(", ")));
                } else {
                    text.push_str("architectures:\n");
                    for a in &arches {
                        text.push_str(&format!("  - {a}\n"));
                    }
                }
            }
            text.push_str("apps:\n  x:\n    command: bin/x\n    summary: nested\n");
            let y = parse_snap_yaml(&text);
            prop_assert_eq!(y.name.as_deref(), Some(name.as_str()));
            prop_assert_eq!(y.version.as_deref(), Some(version.as_str()));
            prop_assert_eq!(y.summary.as_deref(), Some(summary.as_str()));
            prop_assert_eq!(y.architectures, arches.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        }
    }
}
