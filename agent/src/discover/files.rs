//! `file` CIs: the configuration files an operator wants tracked, named by absolute host-path
//! globs (`Options::watch_globs`). Each glob is expanded under the host root, matches are
//! mapped back to host paths (the CI key), and every regular file among them is reported with
//! its sha256 (streamed in 64 KiB chunks, skipped above `Options::file_hash_cap_bytes`), size,
//! mode, owner, group and mtime.
//!
//! Symlinks are resolved component by component *within* the root: an absolute target is
//! re-rooted (in a fixture tree, /etc/resolv.conf → /run/… stays in the tree), `..` never
//! climbs above the root, and at most 8 links are followed. The file is then opened with
//! O_NOFOLLOW|O_NONBLOCK, so a link or FIFO swapped in meanwhile is never followed or waited
//! on. Directory listings during glob expansion use the operating system's resolution; only
//! the contents read are guaranteed to come from inside the root.
//!
//! Never writes, never follows a link out of the root. A glob matching nothing is normal and
//! silent; a dangling link, an oversized file or a broken glob is a warning (`partial`); a
//! file that cannot be read for lack of privilege keeps its metadata, has `sha256` null and
//! makes the status `permission_denied`. Like a shell, `*` does not match a leading dot.
//! [`describe_file`] re-describes one file, for the agent's inotify path.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cmdb_proto::model::{AttrValue, CollectorState, Item, class};
use sha2::{Digest, Sha256};

use super::passwd::AccountNames;
use super::{Collector, Context, Options, Outcome};
use crate::hostroot::HostRoot;

/// Symlinks followed per path, at most.
pub const MAX_SYMLINKS: usize = 8;
/// Read size while hashing.
const HASH_CHUNK: usize = 64 * 1024;

pub struct FileCollector;

impl Collector for FileCollector {
    fn name(&self) -> &'static str {
        "files"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::FILE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root, &ctx.options)
    }
}

/// Why one file could not be described.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Watched paths are absolute host paths.
    #[error("{0}: not an absolute path")]
    NotAbsolute(String),
    /// Nothing is there (for a symlink: its target is missing).
    #[error("{0}: not found")]
    NotFound(String),
    /// A directory, FIFO, socket or device: only regular files are CIs.
    #[error("{path}: not a regular file ({kind})")]
    NotRegular { path: String, kind: &'static str },
    /// A symlink chain longer than [`MAX_SYMLINKS`] (or a loop).
    #[error("{0}: more than 8 symbolic links to follow")]
    TooManyLinks(String),
    /// Even the file's metadata is off limits to the agent.
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    /// Any other I/O failure.
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl FileError {
    fn from_io(path: &str, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                FileError::NotFound(path.to_owned())
            }
            io::ErrorKind::PermissionDenied => FileError::PermissionDenied(path.to_owned()),
            _ => FileError::Io {
                path: path.to_owned(),
                source: e,
            },
        }
    }
}

/// What became of the hash.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hashed {
    Yes,
    TooLarge(u64),
    PermissionDenied,
    Failed(String),
}

/// Describes one watched file: the CI the collector would report for `host_path`.
/// An unreadable or oversized file is still `Ok`, with `sha256` null and `hash_skipped`
/// saying why.
pub fn describe_file(
    root: &HostRoot,
    host_path: &str,
    options: &Options,
) -> Result<Item, FileError> {
    let names = AccountNames::load(root).unwrap_or_default();
    let mut buf = vec![0u8; HASH_CHUNK];
    describe(root, host_path, options, &names, &mut buf).map(|(item, _)| item)
}

fn collect(root: &HostRoot, options: &Options) -> Outcome {
    let mut out = Outcome::new();
    let names = match AccountNames::load(root) {
        Ok(n) => n,
        Err(e) => {
            out.warn(format!("owner names unknown, reporting ids: {e}"));
            AccountNames::default()
        }
    };
    let paths = expand(
        root,
        &options.watch_globs,
        options.max_watched_files,
        &mut out,
    );
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut beyond = 0usize;
    for path in &paths {
        if out.items.len() >= options.max_watched_files {
            // Only counted: resolving is cheap, hashing is not.
            if resolve(root, path).is_ok_and(|r| r.is_regular) {
                beyond += 1;
            }
            continue;
        }
        match describe(root, path, options, &names, &mut buf) {
            Ok((item, hashed)) => {
                match hashed {
                    Hashed::Yes => {}
                    Hashed::TooLarge(cap) => {
                        out.warn(format!("{path}: larger than {cap} bytes, not hashed"));
                    }
                    Hashed::PermissionDenied => {
                        out.permission_denied(format!("{path}: permission denied, not hashed"));
                    }
                    Hashed::Failed(e) => out.warn(format!("{path}: not hashed: {e}")),
                }
                out.push(item);
            }
            Err(FileError::NotRegular { .. }) => {}
            Err(FileError::NotFound(_)) => {
                // Gone since the glob saw it, or a dangling link: only the latter is news.
                if fs::symlink_metadata(root.path(path)).is_ok_and(|m| m.file_type().is_symlink()) {
                    out.warn(format!("{path}: dangling symbolic link"));
                }
            }
            Err(e @ FileError::PermissionDenied(_)) => out.permission_denied(e.to_string()),
            Err(e) => out.warn(e.to_string()),
        }
    }
    if beyond > 0 {
        out.warn(format!(
            "{beyond} more watched files beyond the cap of {} were not reported",
            options.max_watched_files
        ));
    }
    out
}

/// Expands the globs under the root into sorted, deduplicated host paths.
fn expand(root: &HostRoot, globs: &[String], max_files: usize, out: &mut Outcome) -> Vec<String> {
    let Some(root_str) = root.root().to_str() else {
        out.fail(
            CollectorState::Error,
            format!("host root {} is not valid UTF-8", root.root().display()),
        );
        return Vec::new();
    };
    let prefix = glob::Pattern::escape(root_str.trim_end_matches('/'));
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        // Filtered below instead: glob 0.3 panics on non-UTF-8 names with this set.
        require_literal_leading_dot: false,
    };
    // Bounds the walk for globs like /etc/** (and symlink loops under them).
    let walk_limit = max_files.saturating_mul(4).max(1024);
    let mut walked = 0usize;
    let mut paths = std::collections::BTreeSet::new();
    for g in globs {
        if !g.starts_with('/') {
            out.warn(format!("watch glob {g:?} is not an absolute path; skipped"));
            continue;
        }
        let entries = match glob::glob_with(&format!("{prefix}{g}"), options) {
            Ok(e) => e,
            Err(e) => {
                out.warn(format!("watch glob {g:?}: {e}"));
                continue;
            }
        };
        for entry in entries {
            walked += 1;
            if walked > walk_limit {
                out.warn(format!(
                    "watch globs matched more than {walk_limit} paths; expansion stopped"
                ));
                return paths.into_iter().collect();
            }
            match entry {
                Ok(real) => {
                    let Ok(rel) = real.strip_prefix(root.root()) else {
                        continue;
                    };
                    let Some(rel) = rel.to_str() else {
                        out.warn(format!(
                            "{}: name is not valid UTF-8; skipped",
                            real.display()
                        ));
                        continue;
                    };
                    if !hidden_by_wildcard(g, rel) {
                        paths.insert(format!("/{rel}"));
                    }
                }
                Err(e) if e.error().kind() == io::ErrorKind::PermissionDenied => {
                    out.permission_denied(format!("watch glob {g:?}: {e}"));
                }
                Err(e) => out.warn(format!("watch glob {g:?}: {e}")),
            }
        }
    }
    paths.into_iter().collect()
}

/// Whether a wildcard matched a dot-file name that the pattern did not spell with a dot
/// (a shell's `*` skips `.placeholder` in /etc/cron.d; so do we).
fn hidden_by_wildcard(pattern: &str, rel_match: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let got: Vec<&str> = rel_match.split('/').filter(|c| !c.is_empty()).collect();
    let hidden = |p: &str, g: &str| g.starts_with('.') && !p.starts_with('.');
    if pat.len() == got.len() {
        pat.iter().zip(&got).any(|(p, g)| hidden(p, g))
    } else {
        // `**` in play: judge the file name only.
        matches!((pat.last(), got.last()), (Some(p), Some(g)) if hidden(p, g))
    }
}

/// A watched path after following its symlinks within the root.
#[derive(Debug, PartialEq, Eq)]
struct Resolved {
    /// The host path of the file itself.
    host: PathBuf,
    /// The link text, when the watched path itself is a symlink.
    link_target: Option<String>,
    is_regular: bool,
    kind: &'static str,
}

/// Follows `host_path` component by component under the root, re-rooting absolute link
/// targets and never climbing above "/".
fn resolve(root: &HostRoot, host_path: &str) -> Result<Resolved, FileError> {
    if !host_path.starts_with('/') {
        return Err(FileError::NotAbsolute(host_path.to_owned()));
    }
    // A stack of remaining components; `true` marks the watched path's own last component.
    let mut todo: Vec<(std::ffi::OsString, bool)> = Vec::new();
    let original: Vec<&std::ffi::OsStr> = Path::new(host_path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            Component::ParentDir => Some(std::ffi::OsStr::new("..")),
            _ => None,
        })
        .collect();
    let last = original.len().saturating_sub(1);
    for (i, c) in original.iter().enumerate().rev() {
        todo.push(((*c).to_owned(), i == last));
    }
    let mut resolved = PathBuf::from("/");
    let mut links = 0usize;
    let mut link_target = None;
    let mut meta: Option<Metadata> = None;
    while let Some((name, is_final)) = todo.pop() {
        if name == ".." {
            resolved.pop();
            meta = None;
            continue;
        }
        if name == "." {
            continue;
        }
        let candidate = resolved.join(&name);
        let m = fs::symlink_metadata(root.path(&candidate))
            .map_err(|e| FileError::from_io(host_path, e))?;
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(FileError::TooManyLinks(host_path.to_owned()));
            }
            let target = fs::read_link(root.path(&candidate))
                .map_err(|e| FileError::from_io(host_path, e))?;
            if is_final {
                link_target = Some(target.to_string_lossy().into_owned());
            }
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push((n.to_owned(), false)),
                    Component::ParentDir => todo.push(("..".into(), false)),
                    _ => {}
                }
            }
            meta = None;
            continue;
        }
        resolved = candidate;
        meta = Some(m);
    }
    // "/" itself, or a path ending in "..": look at what it names.
    let m = match meta {
        Some(m) => m,
        None => fs::symlink_metadata(root.path(&resolved))
            .map_err(|e| FileError::from_io(host_path, e))?,
    };
    Ok(Resolved {
        host: resolved,
        link_target,
        is_regular: m.file_type().is_file(),
        kind: kind_of(&m),
    })
}

fn kind_of(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "symbolic link"
    }
}

/// Opens a resolved file without following a final symlink or blocking on a FIFO.
fn open_resolved(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn describe(
    root: &HostRoot,
    host_path: &str,
    options: &Options,
    names: &AccountNames,
    buf: &mut [u8],
) -> Result<(Item, Hashed), FileError> {
    let r = resolve(root, host_path)?;
    if !r.is_regular {
        return Err(FileError::NotRegular {
            path: host_path.to_owned(),
            kind: r.kind,
        });
    }
    let real = root.path(&r.host);
    let (meta, sha, hashed) = match open_resolved(&real) {
        Ok(mut f) => {
            // fstat: the metadata of exactly what is hashed.
            let meta = f.metadata().map_err(|e| FileError::from_io(host_path, e))?;
            if !meta.file_type().is_file() {
                return Err(FileError::NotRegular {
                    path: host_path.to_owned(),
                    kind: kind_of(&meta),
                });
            }
            let cap = options.file_hash_cap_bytes;
            if meta.len() > cap {
                (meta, None, Hashed::TooLarge(cap))
            } else {
                match sha256(&mut f, cap, buf) {
                    Ok(Some(h)) => (meta, Some(h), Hashed::Yes),
                    // Grew past the cap while being read.
                    Ok(None) => (meta, None, Hashed::TooLarge(cap)),
                    Err(e) => {
                        let h = hashed_after_error(&e);
                        (meta, None, h)
                    }
                }
            }
        }
        Err(e) => {
            let h = hashed_after_error(&e);
            if matches!(h, Hashed::Failed(_)) && e.kind() != io::ErrorKind::PermissionDenied {
                // Not a privilege problem: the file is not describable at all.
                return Err(FileError::from_io(host_path, e));
            }
            let meta = fs::symlink_metadata(&real).map_err(|e| FileError::from_io(host_path, e))?;
            (meta, None, h)
        }
    };
    let skipped = match &hashed {
        Hashed::Yes => None,
        Hashed::TooLarge(cap) => Some(format!("larger than {cap} bytes")),
        Hashed::PermissionDenied => Some("permission denied".to_owned()),
        Hashed::Failed(e) => Some(e.clone()),
    };
    let item = Item::new(class::FILE, host_path)
        .with("sha256", sha)
        .with("hash_skipped", skipped)
        .with("size", meta.len())
        .with("mode", format!("{:04o}", meta.mode() & 0o7777))
        .with("uid", meta.uid())
        .with("gid", meta.gid())
        .with("owner", names.user(meta.uid()))
        .with("group", names.group(meta.gid()))
        .with("mtime", rfc3339(meta.mtime()))
        .with("link_target", r.link_target);
    Ok((item, hashed))
}

/// How a failed open or read of the content is reported.
fn hashed_after_error(e: &io::Error) -> Hashed {
    if e.kind() == io::ErrorKind::PermissionDenied {
        Hashed::PermissionDenied
    } else {
        Hashed::Failed(e.to_string())
    }
}

/// Lowercase hex sha256 of at most `cap` bytes; `None` when there is more than that.
fn sha256(r: &mut impl Read, cap: u64, buf: &mut [u8]) -> io::Result<Option<String>> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > cap {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

/// RFC 3339 UTC (seconds) for a Unix time; null outside years 1970–9999.
fn rfc3339(secs: i64) -> AttrValue {
    const MAX: u64 = 253_402_300_799;
    match u64::try_from(secs) {
        Ok(s) if s <= MAX => {
            let t = UNIX_EPOCH + Duration::from_secs(s);
            AttrValue::Str(humantime::format_rfc3339_seconds(t).to_string())
        }
        _ => AttrValue::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tree() -> (tempfile::TempDir, HostRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        fs::create_dir_all(dir.path().join("etc/ssh/sshd_config.d")).unwrap();
        fs::create_dir_all(dir.path().join("run/systemd/resolve")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(dir.path().join("etc/ssh/sshd_config"), "Port 22\n").unwrap();
        fs::write(dir.path().join("etc/ssh/sshd_config.d/10-a.conf"), "a\n").unwrap();
        fs::write(dir.path().join("etc/ssh/sshd_config.d/.hidden"), "h\n").unwrap();
        fs::write(
            dir.path().join("run/systemd/resolve/stub-resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        (dir, root)
    }

    fn opts(globs: &[&str]) -> Options {
        Options {
            watch_globs: globs.iter().map(|s| (*s).to_owned()).collect(),
            ..Options::default()
        }
    }

    fn s<'a>(i: &'a Item, a: &str) -> Option<&'a str> {
        i.attr(a).and_then(AttrValue::as_str)
    }

    #[test]
    fn absolute_links_are_rerooted_and_relative_ones_stay_inside() {
        let (dir, root) = tree();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            dir.path().join("etc/resolv.conf"),
        )
        .unwrap();
        symlink(
            "../../../../../../run/systemd/resolve/stub-resolv.conf",
            dir.path().join("etc/rel.conf"),
        )
        .unwrap();
        for p in ["/etc/resolv.conf", "/etc/rel.conf"] {
            let r = resolve(&root, p).unwrap();
            assert_eq!(
                r.host,
                PathBuf::from("/run/systemd/resolve/stub-resolv.conf")
            );
            assert!(r.is_regular);
        }
        let item = describe_file(&root, "/etc/resolv.conf", &Options::default()).unwrap();
        assert_eq!(
            s(&item, "link_target"),
            Some("/run/systemd/resolve/stub-resolv.conf")
        );
        assert_eq!(item.attr("size"), Some(&AttrValue::Int(22)));
        let plain = describe_file(&root, "/etc/ssh/sshd_config", &Options::default()).unwrap();
        assert_eq!(plain.attr("link_target"), Some(&AttrValue::Null));
        assert_eq!(
            s(&plain, "sha256"),
            Some(hex::encode(Sha256::digest(b"Port 22\n")).as_str())
        );
    }

    #[test]
    fn loops_dangling_links_and_directories() {
        let (dir, root) = tree();
        symlink("b", dir.path().join("etc/a")).unwrap();
        symlink("a", dir.path().join("etc/b")).unwrap();
        symlink("/nonexistent/x", dir.path().join("etc/dangling")).unwrap();
        assert!(matches!(
            resolve(&root, "/etc/a"),
            Err(FileError::TooManyLinks(_))
        ));
        assert!(matches!(
            resolve(&root, "/etc/dangling"),
            Err(FileError::NotFound(_))
        ));
        assert!(matches!(
            describe_file(&root, "/etc/ssh", &Options::default()),
            Err(FileError::NotRegular {
                kind: "directory",
                ..
            })
        ));
        assert!(matches!(
            describe_file(&root, "etc/passwd", &Options::default()),
            Err(FileError::NotAbsolute(_))
        ));
        let o = collect(
            &root,
            &opts(&["/etc/a", "/etc/dangling", "/etc/ssh", "/etc/nothing*"]),
        );
        assert_eq!(o.state(), CollectorState::Partial);
        assert!(o.items.is_empty());
        let m = o.message().unwrap();
        assert!(m.contains("/etc/a: more than 8 symbolic links"), "{m}");
        assert!(m.contains("/etc/dangling: dangling symbolic link"), "{m}");
    }

    #[test]
    fn eight_links_are_followed_nine_are_not() {
        let (dir, root) = tree();
        for i in 0..9 {
            symlink(format!("l{}", i + 1), dir.path().join(format!("etc/l{i}"))).unwrap();
        }
        fs::write(dir.path().join("etc/l9"), "x").unwrap();
        assert!(resolve(&root, "/etc/l1").unwrap().is_regular);
        assert!(matches!(
            resolve(&root, "/etc/l0"),
            Err(FileError::TooManyLinks(_))
        ));
    }

    #[test]
    fn globs_skip_dot_files_dedupe_and_cap() {
        let (_dir, root) = tree();
        let o = collect(
            &root,
            &opts(&[
                "/etc/ssh/sshd_config.d/*",
                "/etc/ssh/*",
                "/etc/ssh/sshd_config",
            ]),
        );
        assert_eq!(o.state(), CollectorState::Ok, "{:?}", o.message());
        let keys: Vec<&str> = o.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/10-a.conf"]
        );
        let dotted = collect(&root, &opts(&["/etc/ssh/sshd_config.d/.*"]));
        assert_eq!(dotted.items.len(), 1);
        let mut capped = opts(&["/etc/**/*"]);
        capped.max_watched_files = 2;
        let o = collect(&root, &capped);
        assert_eq!(o.items.len(), 2);
        assert_eq!(o.state(), CollectorState::Partial);
        let m = o.message().unwrap();
        assert!(
            m.contains("2 more watched files beyond the cap of 2"),
            "{m}"
        );
        let o = collect(&root, &opts(&["relative/*", "/etc/[", "/none/*"]));
        assert_eq!(o.state(), CollectorState::Partial);
        assert!(o.message().unwrap().contains("not an absolute path"));
    }

    #[test]
    fn hash_mode_owner_mtime_and_cap() {
        let (dir, root) = tree();
        let p = dir.path().join("etc/ssh/sshd_config");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
        let f = File::options().write(true).open(&p).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .unwrap();
        let item = describe_file(&root, "/etc/ssh/sshd_config", &Options::default()).unwrap();
        assert_eq!(
            s(&item, "sha256"),
            Some(hex::encode(Sha256::digest(b"Port 22\n")).as_str())
        );
        assert_eq!(s(&item, "mode"), Some("4755"));
        assert_eq!(s(&item, "mtime"), Some("2023-11-14T22:13:20Z"));
        let uid = fs::metadata(&p).unwrap().uid();
        let expected_owner = if uid == 0 {
            "root".to_owned()
        } else {
            uid.to_string()
        };
        assert_eq!(s(&item, "owner"), Some(expected_owner.as_str()));
        assert_eq!(item.attr("hash_skipped"), Some(&AttrValue::Null));

        let mut small = opts(&["/etc/ssh/sshd_config"]);
        small.file_hash_cap_bytes = 4;
        let o = collect(&root, &small);
        assert_eq!(o.state(), CollectorState::Partial);
        assert_eq!(o.items[0].attr("sha256"), Some(&AttrValue::Null));
        assert_eq!(s(&o.items[0], "hash_skipped"), Some("larger than 4 bytes"));
        assert_eq!(o.items[0].attr("size"), Some(&AttrValue::Int(8)));
    }

    #[test]
    fn permission_errors_keep_metadata() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(hashed_after_error(&denied), Hashed::PermissionDenied);
        let other = io::Error::other("disk on fire");
        assert!(matches!(hashed_after_error(&other), Hashed::Failed(_)));
        assert!(matches!(
            FileError::from_io("/x", io::Error::from(io::ErrorKind::PermissionDenied)),
            FileError::PermissionDenied(_)
        ));
    }

    #[test]
    fn a_fifo_is_not_opened() {
        let (dir, root) = tree();
        let fifo = dir.path().join("etc/fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let o = collect(&root, &opts(&["/etc/fifo"]));
        assert_eq!(o.state(), CollectorState::Ok);
        assert!(o.items.is_empty());
    }

    #[test]
    fn a_root_with_glob_characters_is_taken_literally() {
        let dir = tempfile::Builder::new()
            .prefix("host[1]*?")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/fstab"), "x\n").unwrap();
        let root = HostRoot::new(dir.path());
        let o = collect(&root, &opts(&["/etc/*"]));
        assert_eq!(o.state(), CollectorState::Ok, "{:?}", o.message());
        let keys: Vec<&str> = o.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["/etc/fstab"]);
    }

    #[test]
    fn rfc3339_range() {
        assert_eq!(rfc3339(0), AttrValue::Str("1970-01-01T00:00:00Z".into()));
        assert_eq!(rfc3339(-1), AttrValue::Null);
        assert_eq!(rfc3339(i64::MAX), AttrValue::Null);
    }

    proptest! {
        #[test]
        fn resolution_never_leaves_the_root(target in "[a-z./]{0,40}", path in "/[a-z./]{0,30}") {
            let (dir, root) = tree();
            let _ = symlink(&target, dir.path().join("etc/link"));
            for p in [path.as_str(), "/etc/link"] {
                if let Ok(r) = resolve(&root, p) {
                    prop_assert!(r.host.is_absolute());
                    prop_assert!(!r.host.components().any(|c| c == Component::ParentDir));
                }
            }
        }

        #[test]
        fn arbitrary_globs_never_panic(g in "/[a-z*?\\[\\]!./{}-]{0,20}") {
            let (_dir, root) = tree();
            let o = collect(&root, &opts(&[g.as_str()]));
            prop_assert!(o.items.len() <= 64);
        }
    }
}
