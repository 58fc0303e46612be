//! Watching configuration files with inotify (notify 8, non-recursive directory watches), so
//! that an edited `file` CI is re-hashed within a second instead of at the next scheduled
//! verification.
//!
//! Owns: the inotify watcher, the set of watched directories, and a debouncer thread. The
//! watched directories are the directory parts of the watch globs (editors replace a file by
//! renaming a new one over it, which only the directory sees), expanded when they contain
//! wildcards, plus the literal prefix of such a directory part so that new matching
//! directories are noticed; a directory that does not exist yet is stood in for by its
//! nearest existing ancestor, and watched itself once it appears (its current matches are
//! then reported). Events are mapped back to host paths (the host root stripped), kept only
//! when they match a glob (a wildcard does not match a leading dot, as in a shell and in
//! `discover::files`), collected for `debounce` after the first one, and sent as one
//! [`WatchEvent::Changed`] of sorted, deduplicated paths.
//!
//! Promises: events are hints, never the truth — inotify can overflow and a directory can be
//! replaced — so every doubt becomes [`WatchEvent::Rescan`] (notify's rescan flag, a watcher
//! error, the raw-event queue overflowing, a batch above [`MAX_BATCH_PATHS`]) and the caller
//! verifies every watched file. Nothing is lost when the consumer is slow: a batch that does
//! not fit in the bounded channel is kept and merged with later events, and retried every
//! `debounce`. Everything is bounded: [`RAW_QUEUE`] raw events, [`MAX_BATCH_PATHS`] paths
//! per batch, [`MAX_WATCHED_DIRS`] directories. Never reads or hashes the files (the caller
//! does), never watches recursively, never writes.
//!
//! Read-only accesses are not asked for: the vendored notify (vendor/notify/PATCHED.md) no
//! longer puts `IN_OPEN` in the watch mask, so a program start on the host (it opens
//! /etc/ld.so.cache) does not wake the inotify thread. Should a read-only access event
//! still arrive, it is dropped in the notify callback, before any queue.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError as TokioTrySendError;

use crate::hostroot::HostRoot;

/// Raw events queued between the notify callback and the debouncer.
pub const RAW_QUEUE: usize = 4096;
/// A batch with more paths than this becomes a Rescan.
pub const MAX_BATCH_PATHS: usize = 4096;
/// Directories watched at most (inotify watches are a per-user kernel resource).
pub const MAX_WATCHED_DIRS: usize = 1024;
/// Entries listed at most when a newly appeared directory is scanned for matches.
const MAX_NEW_DIR_ENTRIES: usize = 4096;

/// What the watcher tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// These host paths (sorted, deduplicated) were created, modified, replaced or removed.
    Changed(Vec<String>),
    /// Events may have been lost: verify every watched file.
    Rescan,
}

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify could not be initialised (no inotify, or the per-user instance limit).
    #[error("cannot start inotify: {0}")]
    Init(#[from] notify::Error),
    /// The debouncer thread could not be spawned.
    #[error("cannot start the file-watch thread: {0}")]
    Thread(std::io::Error),
}

/// Keeps the inotify watcher and its debouncer thread alive; dropping it stops both.
pub struct FileWatcher {
    /// Only held: the debouncer has a weak reference, so this is what keeps inotify alive.
    _watcher: Arc<Mutex<RecommendedWatcher>>,
    watched: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher")
            .field("watched", &self.watched_dirs())
            .finish()
    }
}

/// What the notify callback hands the debouncer.
enum Raw {
    Paths {
        paths: Vec<PathBuf>,
        /// Create, remove or rename: may change which directories need a watch.
        structural: bool,
    },
    Rescan,
}

impl FileWatcher {
    /// Starts watching (see the module doc). Invalid or relative globs are skipped with a
    /// warning (config validation refuses them earlier); a directory that cannot be
    /// watched is logged and verified by schedule.
    pub fn start(
        root: HostRoot,
        globs: &[String],
        debounce: Duration,
        tx: Sender<WatchEvent>,
    ) -> Result<FileWatcher, WatchError> {
        let (raw_tx, raw_rx) = mpsc::sync_channel::<Raw>(RAW_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let watcher = notify::recommended_watcher(callback(raw_tx, overflow.clone()))?;
        let watcher = Arc::new(Mutex::new(watcher));
        let watched = Arc::new(Mutex::new(BTreeSet::new()));

        let plan = Plan::new(root, globs);
        // The debouncer holds the watcher weakly: dropping the FileWatcher drops the inotify
        // watcher and with it the callback's sender, which ends the debouncer thread.
        let mut dirs = Dirs {
            watcher: Arc::downgrade(&watcher),
            watched: watched.clone(),
            missing: BTreeSet::new(),
        };
        // Initial watches: nothing is "new" yet, so no directory needs scanning.
        let _ = dirs.reconcile_with(&plan.root, &plan.desired_dirs());

        let mut debouncer = Debouncer {
            plan,
            dirs,
            raw_rx,
            overflow,
            tx,
            debounce,
            batch: Batch::default(),
        };
        thread::Builder::new()
            .name("file-watch".into())
            .spawn(move || debouncer.run())
            .map_err(WatchError::Thread)?;
        Ok(FileWatcher {
            _watcher: watcher,
            watched,
        })
    }

    /// The host directories currently watched (tests, logs).
    pub fn watched_dirs(&self) -> Vec<String> {
        match self.watched.lock() {
            Ok(g) => g.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }
}

/// The notify callback: drops read-only accesses, flags rescans, never blocks.
fn callback(
    raw_tx: SyncSender<Raw>,
    overflow: Arc<AtomicBool>,
) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    move |res| {
        let msg = match res {
            Err(_) => Raw::Rescan,
            Ok(ev) if ev.need_rescan() => Raw::Rescan,
            Ok(ev) => match ev.kind {
                EventKind::Access(
                    AccessKind::Open(_)
                    | AccessKind::Read
                    | AccessKind::Close(AccessMode::Read | AccessMode::Execute),
                ) => return,
                kind => Raw::Paths {
                    structural: matches!(
                        kind,
                        EventKind::Create(_)
                            | EventKind::Remove(_)
                            | EventKind::Modify(ModifyKind::Name(_))
                    ),
                    paths: ev.paths,
                },
            },
        };
        if let Err(TrySendError::Full(_)) = raw_tx.try_send(msg) {
            overflow.store(true, Ordering::Relaxed);
        }
    }
}

// === what to watch ===

const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// The globs, compiled, and what they say about directories.
struct Plan {
    root: HostRoot,
    patterns: Vec<glob::Pattern>,
    /// Directory parts without wildcards.
    literal_dirs: BTreeSet<String>,
    /// Directory parts with wildcards (expanded on each reconcile).
    wild_dirs: Vec<String>,
    wild_patterns: Vec<glob::Pattern>,
}

impl Plan {
    fn empty() -> Plan {
        Plan {
            root: HostRoot::default(),
            patterns: Vec::new(),
            literal_dirs: BTreeSet::new(),
            wild_dirs: Vec::new(),
            wild_patterns: Vec::new(),
        }
    }

    fn new(root: HostRoot, globs: &[String]) -> Plan {
        let mut plan = Plan::empty();
        plan.root = root;
        for g in globs {
            if !g.starts_with('/') {
                tracing::warn!(glob = %g, "A watch glob is not absolute; it is not watched.");
                continue;
            }
            let pattern = match glob::Pattern::new(g) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(glob = %g, error = %e, "A watch glob is invalid; it is not watched.");
                    continue;
                }
            };
            plan.patterns.push(pattern);
            let dir = dir_part(g);
            if has_wildcard(dir) {
                plan.literal_dirs.insert(literal_prefix(dir).to_owned());
                if let Ok(p) = glob::Pattern::new(dir) {
                    plan.wild_patterns.push(p);
                }
                plan.wild_dirs.push(dir.to_owned());
            } else {
                plan.literal_dirs.insert(dir.to_owned());
            }
        }
        plan
    }

    /// Whether a host path is one the globs select.
    fn matches(&self, host_path: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| p.matches_with(host_path, MATCH))
    }

    /// Whether a host path could be (or contain) a directory to watch.
    fn is_dir_candidate(&self, host_path: &str) -> bool {
        self.literal_dirs.contains(host_path)
            || self
                .wild_patterns
                .iter()
                .any(|p| p.matches_with(host_path, MATCH))
    }

    /// Every directory that should be watched, at most [`MAX_WATCHED_DIRS`].
    fn desired_dirs(&self) -> BTreeSet<String> {
        let mut dirs = self.literal_dirs.clone();
        let Some(root_str) = self.root.root().to_str() else {
            return dirs;
        };
        let prefix = glob::Pattern::escape(root_str.trim_end_matches('/'));
        for d in &self.wild_dirs {
            let Ok(entries) = glob::glob_with(&format!("{prefix}{d}"), MATCH) else {
                continue;
            };
            for real in entries.flatten().take(MAX_WATCHED_DIRS) {
                if dirs.len() >= MAX_WATCHED_DIRS {
                    break;
                }
                if real.is_dir()
                    && let Some(host) = host_path(&self.root, &real)
                {
                    dirs.insert(host);
                }
            }
        }
        dirs
    }
}

/// "/etc/cron.d" of "/etc/cron.d/*"; "/" of "/x".
fn dir_part(glob: &str) -> &str {
    match glob.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &glob[..i],
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The directories before the first component with a wildcard: "/etc" of "/etc/*/conf.d".
fn literal_prefix(dir: &str) -> &str {
    let mut end = 0;
    for (i, _) in dir.match_indices('/') {
        if has_wildcard(&dir[..i]) {
            break;
        }
        end = i;
    }
    if end == 0 { "/" } else { &dir[..end] }
}

/// The host path of a path under the root ("/etc/hosts" of "/host/etc/hosts").
fn host_path(root: &HostRoot, real: &Path) -> Option<String> {
    let rel = real.strip_prefix(root.root()).ok()?;
    let rel = rel.to_str()?;
    Some(format!("/{}", rel.trim_start_matches('/')))
}

/// The inotify watches: which host directories are watched, and which wanted ones are
/// missing (stood in for by an ancestor).
struct Dirs {
    watcher: Weak<Mutex<RecommendedWatcher>>,
    watched: Arc<Mutex<BTreeSet<String>>>,
    missing: BTreeSet<String>,
}

impl Dirs {
    fn is_watched(&self, dir: &str) -> bool {
        match self.watched.lock() {
            Ok(g) => g.contains(dir),
            Err(p) => p.into_inner().contains(dir),
        }
    }

    fn set_watched(&self, dir: &str, on: bool) {
        let mut g = match self.watched.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if on {
            g.insert(dir.to_owned());
        } else {
            g.remove(dir);
        }
    }

    fn watched_count(&self) -> usize {
        match self.watched.lock() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    /// Watches every desired directory that exists (or its nearest existing ancestor);
    /// returns the desired directories that were missing before and are watched now.
    fn reconcile_with(&mut self, root: &HostRoot, desired: &BTreeSet<String>) -> Vec<String> {
        let Some(watcher) = self.watcher.upgrade() else {
            return Vec::new();
        };
        let mut appeared = Vec::new();
        let mut missing = BTreeSet::new();
        for dir in desired {
            if root.path(dir).is_dir() {
                if !self.is_watched(dir)
                    && self.watch(&watcher, root, dir)
                    && self.missing.contains(dir)
                {
                    appeared.push(dir.clone());
                }
                continue;
            }
            missing.insert(dir.clone());
            let mut anc = Path::new(dir.as_str()).parent();
            while let Some(a) = anc {
                let a_str = a.to_string_lossy();
                if root.path(a).is_dir() {
                    if !self.is_watched(&a_str) {
                        self.watch(&watcher, root, &a_str);
                    }
                    break;
                }
                anc = a.parent();
            }
        }
        self.missing = missing;
        appeared
    }

    fn watch(&self, watcher: &Arc<Mutex<RecommendedWatcher>>, root: &HostRoot, dir: &str) -> bool {
        if self.watched_count() >= MAX_WATCHED_DIRS {
            tracing::warn!(
                dir,
                limit = MAX_WATCHED_DIRS,
                "Too many watched directories; this one is verified by schedule only."
            );
            return false;
        }
        let mut w = match watcher.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        match w.watch(&root.path(dir), RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.set_watched(dir, true);
                true
            }
            Err(e) => {
                tracing::warn!(dir, error = %e, "Cannot watch a directory; its files are verified by schedule only.");
                false
            }
        }
    }
}

// === batching ===

/// Paths collected since the last delivery.
#[derive(Debug, Default)]
struct Batch {
    paths: BTreeSet<String>,
    rescan: bool,
}

impl Batch {
    fn add(&mut self, path: String) {
        if self.rescan {
            return;
        }
        self.paths.insert(path);
        if self.paths.len() > MAX_BATCH_PATHS {
            self.set_rescan();
        }
    }

    /// A rescan covers every path: they need not be kept.
    fn set_rescan(&mut self) {
        self.rescan = true;
        self.paths.clear();
    }

    fn is_empty(&self) -> bool {
        !self.rescan && self.paths.is_empty()
    }

    fn take(&mut self) -> Option<WatchEvent> {
        if self.rescan {
            self.rescan = false;
            self.paths.clear();
            return Some(WatchEvent::Rescan);
        }
        if self.paths.is_empty() {
            return None;
        }
        Some(WatchEvent::Changed(
            std::mem::take(&mut self.paths).into_iter().collect(),
        ))
    }

    /// Puts back an event the channel had no room for (later events merge into it).
    fn restore(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Rescan => self.set_rescan(),
            WatchEvent::Changed(paths) => {
                for p in paths {
                    self.add(p);
                }
            }
        }
    }
}

struct Debouncer {
    plan: Plan,
    dirs: Dirs,
    raw_rx: mpsc::Receiver<Raw>,
    overflow: Arc<AtomicBool>,
    tx: Sender<WatchEvent>,
    debounce: Duration,
    batch: Batch,
}

impl Debouncer {
    fn run(&mut self) {
        let mut deadline: Option<Instant> = None;
        let mut reconcile = false;
        loop {
            let msg = match deadline {
                None => match self.raw_rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
                Some(d) => match self
                    .raw_rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            if let Some(msg) = msg {
                reconcile |= self.absorb(msg);
                if self.overflow.swap(false, Ordering::Relaxed) {
                    self.batch.set_rescan();
                }
                if deadline.is_none() && (!self.batch.is_empty() || reconcile) {
                    deadline = Some(Instant::now() + self.debounce);
                }
                continue;
            }
            // The debounce period is over.
            if reconcile {
                reconcile = false;
                let desired = self.plan.desired_dirs();
                for dir in self.dirs.reconcile_with(&self.plan.root, &desired) {
                    self.add_matches_in(&dir);
                }
            }
            deadline = None;
            if let Some(ev) = self.batch.take() {
                match self.tx.try_send(ev) {
                    Ok(()) => {}
                    Err(TokioTrySendError::Full(ev)) => {
                        // The consumer is behind: keep it, merge what comes, retry later.
                        self.batch.restore(ev);
                        deadline = Some(Instant::now() + self.debounce);
                    }
                    Err(TokioTrySendError::Closed(_)) => return,
                }
            }
        }
    }

    /// Adds a raw event's matching paths; true when watches may need to change.
    fn absorb(&mut self, msg: Raw) -> bool {
        match msg {
            Raw::Rescan => {
                self.batch.set_rescan();
                false
            }
            Raw::Paths { paths, structural } => {
                let mut reconcile = false;
                for p in paths {
                    let Some(host) = host_path(&self.plan.root, &p) else {
                        continue;
                    };
                    if structural {
                        if self.dirs.is_watched(&host) && !self.plan.root.path(&host).is_dir() {
                            // A watched directory went away: inotify dropped its watch.
                            self.dirs.set_watched(&host, false);
                            reconcile = true;
                        }
                        if self.plan.is_dir_candidate(&host)
                            || self.dirs.missing.iter().any(|m| is_ancestor(&host, m))
                        {
                            reconcile = true;
                        }
                    }
                    if self.plan.matches(&host) {
                        self.batch.add(host);
                    }
                }
                reconcile
            }
        }
    }

    /// Reports the matches already in a directory that just got its watch (they may have
    /// been moved in before the watch existed).
    fn add_matches_in(&mut self, dir: &str) {
        let Ok(entries) = std::fs::read_dir(self.plan.root.path(dir)) else {
            return;
        };
        for entry in entries.flatten().take(MAX_NEW_DIR_ENTRIES) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let host = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            if self.plan.matches(&host) {
                self.batch.add(host);
            }
        }
    }
}

/// Whether `a` is a proper ancestor directory of `b` ("/etc" of "/etc/x/y").
fn is_ancestor(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('/');
    b.len() > a.len() && b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use tokio::sync::mpsc::{Receiver, channel};
    use tokio::time::timeout;

    const DEBOUNCE: Duration = Duration::from_millis(100);
    const WAIT: Duration = Duration::from_secs(5);

    struct Fixture {
        dir: tempfile::TempDir,
        rx: Receiver<WatchEvent>,
        watcher: FileWatcher,
    }

    impl Fixture {
        fn new(globs: &[&str], capacity: usize) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("etc/app")).unwrap();
            fs::write(dir.path().join("etc/app/a.conf"), "a=1\n").unwrap();
            fs::write(dir.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
            let (tx, rx) = channel(capacity);
            let globs: Vec<String> = globs.iter().map(|s| (*s).to_owned()).collect();
            let watcher =
                FileWatcher::start(HostRoot::new(dir.path()), &globs, DEBOUNCE, tx).unwrap();
            Fixture { dir, rx, watcher }
        }

        fn path(&self, host: &str) -> PathBuf {
            self.dir.path().join(host.trim_start_matches('/'))
        }

        async fn next(&mut self) -> WatchEvent {
            timeout(WAIT, self.rx.recv())
                .await
                .expect("no event within 5 s")
                .expect("closed")
        }

        /// Events until `want` paths were all seen (bounded by 5 s overall).
        async fn collect_until(&mut self, want: &BTreeSet<String>) -> Vec<WatchEvent> {
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut seen = BTreeSet::new();
            let mut events = Vec::new();
            while !want.is_subset(&seen) {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(ev)) => {
                        if let WatchEvent::Changed(p) = &ev {
                            seen.extend(p.iter().cloned());
                        }
                        events.push(ev);
                    }
                    _ => panic!("only {seen:?} of {want:?} within 5 s: {events:?}"),
                }
            }
            events
        }

        async fn quiet_for(&mut self, d: Duration) -> Option<WatchEvent> {
            timeout(d, self.rx.recv()).await.ok().flatten()
        }
    }

    fn changed(paths: &[&str]) -> WatchEvent {
        WatchEvent::Changed(paths.iter().map(|s| (*s).to_owned()).collect())
    }

    #[tokio::test]
    async fn an_edited_file_is_reported() {
        let mut f = Fixture::new(&["/etc/app/*.conf", "/etc/hosts"], 8);
        assert_eq!(f.watcher.watched_dirs(), vec!["/etc", "/etc/app"]);
        fs::write(f.path("/etc/app/a.conf"), "a=2\n").unwrap();
        assert_eq!(f.next().await, changed(&["/etc/app/a.conf"]));
        fs::write(f.path("/etc/hosts"), "10.0.0.1 x\n").unwrap();
        assert_eq!(f.next().await, changed(&["/etc/hosts"]));
    }

    #[tokio::test]
    async fn a_file_replaced_by_rename_is_reported() {
        let mut f = Fixture::new(&["/etc/app/*.conf"], 8);
        // What vim, sed -i and package managers do: write a temporary file, rename it over.
        fs::write(f.path("/etc/app/.a.conf.swp"), "a=3\n").unwrap();
        fs::write(f.path("/etc/app/a.conf.new"), "a=3\n").unwrap();
        fs::rename(f.path("/etc/app/a.conf.new"), f.path("/etc/app/a.conf")).unwrap();
        assert_eq!(f.next().await, changed(&["/etc/app/a.conf"]));
    }

    #[tokio::test]
    async fn a_new_matching_file_is_reported_and_others_ignored() {
        let mut f = Fixture::new(&["/etc/app/*.conf"], 8);
        fs::write(f.path("/etc/app/notes.txt"), "x").unwrap();
        fs::write(f.path("/etc/app/.hidden.conf"), "x").unwrap();
        assert_eq!(f.quiet_for(Duration::from_millis(500)).await, None);
        fs::write(f.path("/etc/app/b.conf"), "b=1\n").unwrap();
        assert_eq!(f.next().await, changed(&["/etc/app/b.conf"]));
        fs::remove_file(f.path("/etc/app/b.conf")).unwrap();
        assert_eq!(f.next().await, changed(&["/etc/app/b.conf"]));
    }

    #[tokio::test]
    async fn a_burst_arrives_in_few_batches() {
        let mut f = Fixture::new(&["/etc/app/*.conf"], 8);
        let mut want = BTreeSet::new();
        for i in 0..20 {
            let host = format!("/etc/app/f{i:02}.conf");
            fs::write(f.path(&host), format!("{i}\n")).unwrap();
            want.insert(host);
        }
        let events = f.collect_until(&want).await;
        assert!(events.len() <= 3, "{events:?}");
        assert!(events.iter().all(|e| matches!(e, WatchEvent::Changed(_))));
    }

    #[tokio::test]
    async fn a_directory_created_later_is_watched() {
        let mut f = Fixture::new(&["/etc/later.d/*"], 8);
        assert!(f.watcher.watched_dirs().contains(&"/etc".to_owned()));
        // Created with a file in it before the watch can exist (as a package would).
        let tmp = f.path("/etc/.later.tmp");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("one"), "1").unwrap();
        fs::rename(&tmp, f.path("/etc/later.d")).unwrap();
        f.collect_until(&BTreeSet::from(["/etc/later.d/one".to_owned()]))
            .await;
        assert!(
            f.watcher
                .watched_dirs()
                .contains(&"/etc/later.d".to_owned())
        );
        fs::write(f.path("/etc/later.d/two"), "2").unwrap();
        f.collect_until(&BTreeSet::from(["/etc/later.d/two".to_owned()]))
            .await;
    }

    #[tokio::test]
    async fn wildcard_directories_are_expanded() {
        let mut f = Fixture::new(&["/etc/*/x.conf"], 8);
        assert!(f.watcher.watched_dirs().contains(&"/etc/app".to_owned()));
        fs::write(f.path("/etc/app/x.conf"), "1").unwrap();
        assert_eq!(f.next().await, changed(&["/etc/app/x.conf"]));
    }

    #[tokio::test]
    async fn a_full_channel_coalesces_into_the_next_batch() {
        let mut f = Fixture::new(&["/etc/app/*.conf"], 1);
        fs::write(f.path("/etc/app/a.conf"), "1").unwrap();
        // Sent, and now sitting in the one-slot channel.
        tokio::time::sleep(Duration::from_millis(400)).await;
        fs::write(f.path("/etc/app/b.conf"), "1").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        fs::write(f.path("/etc/app/c.conf"), "1").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(f.next().await, changed(&["/etc/app/a.conf"]));
        assert_eq!(
            f.next().await,
            changed(&["/etc/app/b.conf", "/etc/app/c.conf"])
        );
    }

    #[tokio::test]
    async fn dropping_the_watcher_ends_its_thread() {
        let f = Fixture::new(&["/etc/app/*.conf"], 8);
        let Fixture {
            dir,
            mut rx,
            watcher,
        } = f;
        drop(watcher);
        // The debouncer thread ends, dropping the sender: the channel closes.
        let closed = timeout(WAIT, rx.recv())
            .await
            .expect("channel not closed within 5 s");
        assert_eq!(closed, None);
        drop(dir);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(dir_part("/etc/cron.d/*"), "/etc/cron.d");
        assert_eq!(dir_part("/fstab"), "/");
        assert_eq!(literal_prefix("/etc/*/conf.d"), "/etc");
        assert_eq!(literal_prefix("/*/x"), "/");
        assert_eq!(literal_prefix("/etc/a/b*"), "/etc/a");
        assert!(is_ancestor("/etc", "/etc/x/y"));
        assert!(is_ancestor("/", "/etc"));
        assert!(!is_ancestor("/etc", "/etcx"));
        assert!(!is_ancestor("/etc", "/etc"));
        let root = HostRoot::new("/host");
        assert_eq!(
            host_path(&root, Path::new("/host/etc/hosts")).as_deref(),
            Some("/etc/hosts")
        );
        assert_eq!(host_path(&root, Path::new("/other/etc")), None);
        assert_eq!(
            host_path(&HostRoot::default(), Path::new("/etc/hosts")).as_deref(),
            Some("/etc/hosts")
        );
    }

    #[test]
    fn matching_follows_the_shell() {
        let plan = Plan::new(
            HostRoot::default(),
            &[
                "/etc/cron.d/*".into(),
                "/etc/*.conf".into(),
                "relative".into(),
            ],
        );
        assert!(plan.matches("/etc/cron.d/backup"));
        assert!(!plan.matches("/etc/cron.d/.placeholder"));
        assert!(!plan.matches("/etc/cron.d/sub/x"));
        assert!(plan.matches("/etc/a.conf"));
        assert!(!plan.matches("/etc/x/a.conf"));
        assert_eq!(plan.patterns.len(), 2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8),
        Rescan,
        Deliver { room: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16).prop_map(Op::Add),
            Just(Op::Rescan),
            any::<bool>().prop_map(|room| Op::Deliver { room }),
        ]
    }

    proptest! {
        /// Model check: whatever the order of events, rescans and full channels, every added
        /// path is eventually delivered in a Changed batch or covered by a later Rescan, and
        /// batches are sorted and deduplicated.
        #[test]
        fn batches_lose_nothing(ops in proptest::collection::vec(op(), 0..60)) {
            let mut batch = Batch::default();
            let mut owed: BTreeSet<String> = BTreeSet::new();
            let mut rescan_owed = false;
            let mut delivered: Vec<WatchEvent> = Vec::new();
            for op in ops.into_iter().chain([Op::Deliver { room: true }]) {
                match op {
                    Op::Add(n) => {
                        let p = format!("/etc/f{n}");
                        owed.insert(p.clone());
                        batch.add(p);
                    }
                    Op::Rescan => {
                        rescan_owed = true;
                        batch.set_rescan();
                    }
                    Op::Deliver { room } => {
                        if let Some(ev) = batch.take() {
                            if room {
                                delivered.push(ev.clone());
                                match ev {
                                    WatchEvent::Rescan => {
                                        prop_assert!(rescan_owed);
                                        rescan_owed = false;
                                        owed.clear();
                                    }
                                    WatchEvent::Changed(p) => {
                                        let mut sorted = p.clone();
                                        sorted.sort();
                                        sorted.dedup();
                                        prop_assert_eq!(&sorted, &p);
                                        for x in &p {
                                            prop_assert!(owed.remove(x), "{} delivered but not owed", x);
                                        }
                                    }
                                }
                            } else {
                                batch.restore(ev);
                            }
                        }
                    }
                }
            }
            prop_assert!(owed.is_empty() && !rescan_owed, "undelivered: {:?}", owed);
            prop_assert!(batch.is_empty());
        }
    }
}
