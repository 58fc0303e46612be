//! Behaviour of the sled store as ingest and the API see it, plus a model check.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdb_proto::convert::{attrs_to_proto, timestamp_from_system};
use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};
use cmdb_proto::v1;
use proptest::prelude::*;

use super::*;
use crate::store::{
    ChangeKind, FeedEntry, FeedHead, FeedPos, MAX_RECORD_BYTES, MAX_RECORD_ID_BYTES, RecordOp,
    ScanPart, ci_id, host_ci_id,
};

const CACHE: u64 = 8 << 20;

fn open() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), CACHE).unwrap();
    (dir, store)
}

/// Reopens a store dropped a moment ago: sled's background threads can hold the directory
/// lock briefly after the drop (in-process only; bounded wait).
fn reopen(dir: &std::path::Path) -> Result<SledStore, StoreError> {
    for _ in 0..100 {
        match SledStore::open(dir, CACHE) {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
    SledStore::open(dir, CACHE)
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn identity(uuid: &str) -> HostIdentity {
    HostIdentity {
        hostname: Some("web-1".into()),
        fqdn: Some(format!("web-1.{uuid}.example.com")),
        machine_id: Some(format!("mid-{uuid}")),
        product_uuid: Some(uuid.into()),
        serial_number: None,
        board_serial: None,
        cloud_instance_id: None,
        macs: vec![format!(
            "52:54:00:00:{:02x}:{:02x}",
            blake3::hash(uuid.to_lowercase().as_bytes()).as_bytes()[0],
            blake3::hash(uuid.to_lowercase().as_bytes()).as_bytes()[1]
        )],
    }
}

fn attrs(pairs: &[(&str, i64)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), AttrValue::Int(*v)))
        .collect()
}

fn item(class: &str, key: &str, v: i64) -> v1::Item {
    v1::Item {
        class: class.into(),
        key: key.into(),
        attrs: attrs_to_proto(&attrs(&[("v", v)])),
    }
}

fn collector(name: &str, state: v1::CollectorState, classes: &[&str]) -> v1::CollectorStatus {
    v1::CollectorStatus {
        name: name.into(),
        state: state as i32,
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    }
}

fn event(seq: u64, secs: u64, kind: v1::event::Kind) -> v1::Event {
    v1::Event {
        seq,
        observed_at: Some(timestamp_from_system(t(secs))),
        kind: Some(kind),
    }
}

fn snapshot(
    seq: u64,
    items: Vec<v1::Item>,
    collectors: Vec<v1::CollectorStatus>,
    relations: Vec<v1::Relation>,
) -> v1::Event {
    event(
        seq,
        seq,
        v1::event::Kind::Snapshot(v1::Snapshot {
            inventory: Some(v1::Inventory {
                schema: "cmdb.inventory/v1".into(),
                collected_at: Some(timestamp_from_system(t(seq))),
                agent: Some(v1::AgentInfo {
                    version: "0.1.0".into(),
                    instance_id: "i".into(),
                }),
                host: Some(v1::HostIdentity::default()),
                collectors,
                items,
                relations,
            }),
            content_hash: vec![seq as u8; 4],
        }),
    )
}

fn change(kind: v1::ChangeKind, class: &str, key: &str, v: i64) -> v1::ItemChange {
    v1::ItemChange {
        kind: kind as i32,
        class: class.into(),
        key: key.into(),
        old_attrs: BTreeMap::new(),
        new_attrs: if kind == v1::ChangeKind::Removed {
            BTreeMap::new()
        } else {
            attrs_to_proto(&attrs(&[("v", v)]))
        },
    }
}

/// Changes of packages `p0`..`p{n-1}` to value `v`.
fn package_changes(n: usize, kind: v1::ChangeKind, v: u64) -> Vec<v1::ItemChange> {
    (0..n)
        .map(|i| change(kind, "package", &format!("p{i}"), v as i64))
        .collect()
}

fn delta(seq: u64, changes: Vec<v1::ItemChange>) -> v1::Event {
    event(
        seq,
        seq,
        v1::event::Kind::Delta(v1::Delta {
            changes,
            ..Default::default()
        }),
    )
}

fn relation(from: &str, to: &str, kind: &str) -> v1::Relation {
    v1::Relation {
        from: from.into(),
        to: to.into(),
        kind: kind.into(),
    }
}

fn ok(classes: &[&str]) -> Vec<v1::CollectorStatus> {
    vec![collector("c", v1::CollectorState::Ok, classes)]
}

/// An identified agent "agt-1" on a fresh host.
fn setup() -> (tempfile::TempDir, SledStore, String) {
    let (dir, store) = open();
    let host = store
        .identify("agt-1", "inst-1", &identity("uuid-1"), SystemTime::now())
        .unwrap();
    (dir, store, host)
}

fn versions(store: &SledStore, host: &str, class: &str, key: &str) -> Vec<CiVersion> {
    store.ci_versions(&ci_id(host, class, key)).unwrap()
}

fn state(store: &SledStore, host: &str, class: &str, key: &str) -> Option<CiState> {
    store.ci(&ci_id(host, class, key)).unwrap().map(|c| c.state)
}

// === work done before the writer lock (apply::Prepared) ===

/// Applies `events` of "agt-1" with `prepared` (read as of commit `as_of`) as
/// `Store::apply` does: the writer keeps what is still current.
fn apply_prepared(
    store: &SledStore,
    events: &[v1::Event],
    (prepared, as_of): (Option<apply::Prepared>, u64),
) -> ApplyOutcome {
    store
        .write_with(true, |writer, txn| {
            let prepared = prepared.map(|p| {
                p.trusted(
                    |host| writer.rows_current(host, as_of),
                    writer.agent_current("agt-1", as_of),
                )
            });
            apply::apply_events(txn, "agt-1", events, SystemTime::now(), prepared)
        })
        .unwrap()
}

/// The value of the last version (the seq that wrote it, in these tests).
fn v_of_last(v: &[(u64, Option<i64>)]) -> u64 {
    v.last().and_then(|(_, x)| *x).unwrap_or(0) as u64
}

fn versions_and_values(store: &SledStore, host: &str, key: &str) -> Vec<(u64, Option<i64>)> {
    versions(store, host, "package", key)
        .iter()
        .map(|v| (v.version, v_of(&v.attrs)))
        .collect()
}

/// Rows read ahead without the writer lock are trusted only while no later commit wrote a
/// CI of their host. Here one did, between the read and the lock: the apply must read the
/// row again (version 3), not write version 2 over the one already there.
#[test]
fn rows_read_ahead_are_dropped_when_a_later_commit_wrote_their_host() {
    use v1::ChangeKind::{Added, Changed};
    let (_d, store, host) = setup();
    store
        .apply("agt-1", &[delta(1, vec![change(Added, "package", "p", 1)])])
        .unwrap();
    let late = [delta(3, vec![change(Changed, "package", "p", 3)])];
    let as_of = store.commits.load(Ordering::Acquire);
    let prepared = apply::Prepared::read(&store.tree, "agt-1", &late).unwrap();
    assert!(prepared.is_some());
    store
        .apply(
            "agt-1",
            &[delta(2, vec![change(Changed, "package", "p", 2)])],
        )
        .unwrap();
    let out = apply_prepared(&store, &late, (prepared, as_of));
    assert_eq!(out.ci_versions, 1);
    assert_eq!(
        versions_and_values(&store, &host, "p"),
        vec![(1, Some(1)), (2, Some(2)), (3, Some(3))]
    );
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
}

/// A commit that wrote only another host's CIs leaves the rows read ahead current, and they
/// give the same result as reading them under the lock.
#[test]
fn rows_read_ahead_stay_current_across_other_hosts_commits() {
    use v1::ChangeKind::{Added, Changed};
    let (_d, store, host) = setup();
    store
        .identify("agt-2", "inst-2", &identity("uuid-2"), SystemTime::now())
        .unwrap();
    store
        .apply("agt-1", &[delta(1, vec![change(Added, "package", "p", 1)])])
        .unwrap();
    let next = [delta(2, vec![change(Changed, "package", "p", 2)])];
    let as_of = store.commits.load(Ordering::Acquire);
    let prepared = apply::Prepared::read(&store.tree, "agt-1", &next).unwrap();
    store
        .apply("agt-2", &[delta(1, vec![change(Added, "package", "q", 1)])])
        .unwrap();
    assert!(store.lock().rows_current(&host, as_of));
    assert!(store.lock().agent_current("agt-1", as_of));
    let out = apply_prepared(&store, &next, (prepared, as_of));
    assert_eq!(out.ci_versions, 1);
    assert_eq!(
        versions_and_values(&store, &host, "p"),
        vec![(1, Some(1)), (2, Some(2))]
    );
}

/// Work prepared for another agent (another host, another record) is not used: its ids are
/// that host's, its record that agent's.
#[test]
fn work_prepared_for_another_agent_is_not_used() {
    use v1::ChangeKind::Added;
    let (_d, store, host) = setup();
    let other = store
        .identify("agt-2", "inst-2", &identity("uuid-2"), SystemTime::now())
        .unwrap();
    let events = [delta(1, vec![change(Added, "package", "p", 1)])];
    let as_of = store.commits.load(Ordering::Acquire);
    let prepared = apply::Prepared::read(&store.tree, "agt-2", &events).unwrap();
    let out = apply_prepared(&store, &events, (prepared, as_of));
    assert_eq!(out.ci_versions, 1);
    assert_eq!(versions_and_values(&store, &host, "p"), vec![(1, Some(1))]);
    assert!(versions(&store, &other, "package", "p").is_empty());
    assert_eq!(store.agent("agt-1").unwrap().unwrap().last_seq, 1);
    assert_eq!(store.agent("agt-2").unwrap().unwrap().last_seq, 0);
}

/// The commit pipeline under concurrent writers: four agents apply deltas to their own
/// hosts from four threads (each delta changing the CIs the one before changed, their rows
/// read ahead without the lock, built while another agent's batch is applied), while a
/// fifth thread identifies new agents and writes records (writers that wait for the
/// pipeline). Every version is written once, in order, with its attributes; the feed lists
/// each once, in commit order; `verify` finds the store consistent, also after reopening.
#[test]
fn concurrent_writers_through_the_pipeline_lose_nothing() {
    const AGENTS: u64 = 4;
    const CALLS: u64 = 40;
    const CIS: usize = 20;
    let (dir, store) = open();
    let store = std::sync::Arc::new(store);
    let hosts: Vec<String> = (0..AGENTS)
        .map(|a| {
            store
                .identify(
                    &format!("agt-{a}"),
                    &format!("inst-{a}"),
                    &identity(&format!("uuid-{a}")),
                    SystemTime::now(),
                )
                .unwrap()
        })
        .collect();
    let mut threads: Vec<std::thread::JoinHandle<()>> = (0..AGENTS)
        .map(|a| {
            let store = store.clone();
            std::thread::spawn(move || {
                for seq in 1..=CALLS {
                    let kind = if seq == 1 {
                        v1::ChangeKind::Added
                    } else {
                        v1::ChangeKind::Changed
                    };
                    let changes = package_changes(CIS, kind, seq);
                    let out = store
                        .apply(&format!("agt-{a}"), &[delta(seq, changes)])
                        .unwrap();
                    assert_eq!(out.ci_versions, CIS as u64);
                }
            })
        })
        .collect();
    // Two threads applying for one agent (as a superseded stream still finishing might):
    // each call's rows and agent record were read ahead while the other's may be in flight,
    // so it must read again after it. Seqs interleave; a call whose seq is not above the
    // agent's watermark any more is a duplicate and writes nothing.
    let shared = store
        .identify("agt-s", "inst-s", &identity("uuid-s"), SystemTime::now())
        .unwrap();
    let applied = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for t in 0..2 {
        let (store, applied) = (store.clone(), applied.clone());
        threads.push(std::thread::spawn(move || {
            for k in 0..CALLS {
                let seq = 2 * k + t + 1;
                let changes = package_changes(CIS, v1::ChangeKind::Changed, seq);
                let out = store.apply("agt-s", &[delta(seq, changes)]).unwrap();
                if out.ci_versions > 0 {
                    assert_eq!(out.ci_versions, CIS as u64);
                    applied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    threads.push({
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..CALLS {
                store
                    .identify(
                        &format!("agt-x{i}"),
                        &format!("inst-x{i}"),
                        &identity(&format!("uuid-x{i}")),
                        SystemTime::now(),
                    )
                    .unwrap();
                store
                    .write_records(&[RecordOp::Put {
                        collection: "test",
                        id: format!("r{i}"),
                        value: b"{}".to_vec(),
                    }])
                    .unwrap();
            }
        })
    });
    for t in threads {
        t.join().unwrap();
    }
    let expected: Vec<(u64, Option<i64>)> = (1..=CALLS).map(|v| (v, Some(v as i64))).collect();
    for host in &hosts {
        for i in 0..CIS {
            assert_eq!(
                versions_and_values(&store, host, &format!("p{i}")),
                expected
            );
        }
    }
    let n = applied.load(Ordering::Relaxed);
    assert!(n >= CALLS, "{n} calls applied for the shared agent");
    for i in 0..CIS {
        let v = versions_and_values(&store, &shared, &format!("p{i}"));
        assert_eq!(v.len() as u64, n, "p{i}: {v:?}");
        assert!(
            v.iter()
                .enumerate()
                .all(|(j, (ver, _))| *ver == j as u64 + 1),
            "p{i}: {v:?}"
        );
        assert!(v.windows(2).all(|w| w[0].1 < w[1].1), "p{i}: {v:?}");
    }
    assert_eq!(
        store.agent("agt-s").unwrap().unwrap().last_seq,
        v_of_last(&versions_and_values(&store, &shared, "p0"))
    );
    let feed = read_feed(&store, None, &[997]);
    let mut seen = std::collections::BTreeSet::new();
    for e in &feed {
        assert!(seen.insert(e.pos.clone()), "twice: {:?}", e.pos);
    }
    assert!(feed.windows(2).all(|w| w[0].pos < w[1].pos), "feed order");
    let package_versions = feed.iter().filter(|e| e.class == "package").count();
    assert_eq!(package_versions as u64, (AGENTS * CALLS + n) * CIS as u64);
    assert_eq!(
        store.records("test", None, 1000).unwrap().len(),
        CALLS as usize
    );
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    drop(store);
    let store = reopen(dir.path()).unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    assert_eq!(versions_and_values(&store, &hosts[0], "p0"), expected);
}

// === exactly once ===

#[test]
fn the_same_batch_twice_applies_once() {
    let (_d, store, host) = setup();
    let batch = vec![
        snapshot(1, vec![item("package", "p1", 1)], ok(&["package"]), vec![]),
        delta(2, vec![change(v1::ChangeKind::Changed, "package", "p1", 2)]),
        delta(3, vec![change(v1::ChangeKind::Added, "package", "p2", 1)]),
    ];
    let first = store.apply("agt-1", &batch).unwrap();
    assert_eq!(
        (
            first.last_seq,
            first.applied,
            first.duplicates,
            first.ci_versions
        ),
        (3, 3, 0, 3)
    );
    let again = store.apply("agt-1", &batch).unwrap();
    assert_eq!(
        (
            again.last_seq,
            again.applied,
            again.duplicates,
            again.ci_versions
        ),
        (3, 0, 3, 0)
    );
    assert_eq!(versions(&store, &host, "package", "p1").len(), 2);
    assert_eq!(versions(&store, &host, "package", "p2").len(), 1);
    assert_eq!(store.agent("agt-1").unwrap().unwrap().last_seq, 3);
}

#[test]
fn overlapping_batches_skip_what_was_applied() {
    let (_d, store, host) = setup();
    let e = |seq: u64| {
        delta(
            seq,
            vec![change(v1::ChangeKind::Added, "file", "/f", seq as i64)],
        )
    };
    store.apply("agt-1", &[e(1), e(2), e(3)]).unwrap();
    // Out of order on purpose: apply sorts by seq.
    let out = store.apply("agt-1", &[e(5), e(2), e(3), e(4)]).unwrap();
    assert_eq!(
        (out.last_seq, out.applied, out.duplicates, out.ci_versions),
        (5, 2, 2, 2)
    );
    let v = versions(&store, &host, "file", "/f");
    assert_eq!(
        v.iter().map(|v| v.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        v.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(v[0].change, ChangeKind::Added);
    assert!(v[1..].iter().all(|v| v.change == ChangeKind::Changed));
    assert_eq!(v[4].old_attrs, attrs(&[("v", 4)]));
    assert_eq!(v[4].observed_at, t(5));
    assert_eq!(v[4].agent_id, "agt-1");
}

#[test]
fn unchanged_attrs_make_no_version_but_confirm_last_seen() {
    let (_d, store, host) = setup();
    store
        .apply(
            "agt-1",
            &[snapshot(1, vec![item("os", "os", 1)], ok(&["os"]), vec![])],
        )
        .unwrap();
    let out = store
        .apply(
            "agt-1",
            &[snapshot(9, vec![item("os", "os", 1)], ok(&["os"]), vec![])],
        )
        .unwrap();
    assert_eq!(out.ci_versions, 0);
    let ci = store.ci(&ci_id(&host, "os", "os")).unwrap().unwrap();
    assert_eq!((ci.version, ci.last_seen, ci.first_seen), (1, t(9), t(1)));
}

// === snapshots, removal, re-add ===

#[test]
fn a_failed_collector_removes_nothing() {
    let (_d, store, host) = setup();
    let collectors = vec![
        collector("dpkg", v1::CollectorState::Ok, &["package"]),
        collector("systemd", v1::CollectorState::Ok, &["service"]),
    ];
    store
        .apply(
            "agt-1",
            &[snapshot(
                1,
                vec![
                    item("package", "bash", 1),
                    item("package", "curl", 1),
                    item("service", "sshd", 1),
                    item("service", "cron", 1),
                ],
                collectors,
                vec![],
            )],
        )
        .unwrap();
    // dpkg timed out (no packages at all), systemd ok without cron.
    let collectors = vec![
        collector("dpkg", v1::CollectorState::Timeout, &["package"]),
        collector("systemd", v1::CollectorState::Ok, &["service"]),
    ];
    let out = store
        .apply(
            "agt-1",
            &[snapshot(
                2,
                vec![item("service", "sshd", 1)],
                collectors,
                vec![],
            )],
        )
        .unwrap();
    assert_eq!(out.ci_versions, 1);
    assert_eq!(
        state(&store, &host, "package", "bash"),
        Some(CiState::Present)
    );
    assert_eq!(
        state(&store, &host, "package", "curl"),
        Some(CiState::Present)
    );
    assert_eq!(
        state(&store, &host, "service", "sshd"),
        Some(CiState::Present)
    );
    assert_eq!(
        state(&store, &host, "service", "cron"),
        Some(CiState::Absent)
    );
    // A class no collector claims is never removed either.
    store
        .apply("agt-1", &[snapshot(3, vec![], ok(&["memory"]), vec![])])
        .unwrap();
    assert_eq!(
        state(&store, &host, "service", "sshd"),
        Some(CiState::Present)
    );
    let agent = store.agent("agt-1").unwrap().unwrap();
    assert_eq!(agent.collectors.len(), 1);
    assert_eq!(agent.inventory_hash, "03030303");
}

#[test]
fn removal_marks_absent_with_a_version_and_a_re_add_revives() {
    let (_d, store, host) = setup();
    store
        .apply(
            "agt-1",
            &[
                delta(1, vec![change(v1::ChangeKind::Added, "user", "bob", 1)]),
                delta(2, vec![change(v1::ChangeKind::Removed, "user", "bob", 0)]),
            ],
        )
        .unwrap();
    let ci = store.ci(&ci_id(&host, "user", "bob")).unwrap().unwrap();
    assert_eq!((ci.state, ci.version), (CiState::Absent, 2));
    assert_eq!(
        ci.attrs,
        attrs(&[("v", 1)]),
        "an absent CI keeps its last attrs"
    );
    // Removing it again changes nothing.
    let out = store
        .apply(
            "agt-1",
            &[delta(
                3,
                vec![change(v1::ChangeKind::Removed, "user", "bob", 0)],
            )],
        )
        .unwrap();
    assert_eq!(out.ci_versions, 0);
    store
        .apply(
            "agt-1",
            &[delta(
                4,
                vec![change(v1::ChangeKind::Added, "user", "bob", 7)],
            )],
        )
        .unwrap();
    let v = versions(&store, &host, "user", "bob");
    assert_eq!(
        v.iter()
            .map(|v| (v.version, v.change, v.state))
            .collect::<Vec<_>>(),
        vec![
            (1, ChangeKind::Added, CiState::Present),
            (2, ChangeKind::Removed, CiState::Absent),
            (3, ChangeKind::Added, CiState::Present),
        ]
    );
    assert_eq!(v[2].old_attrs, attrs(&[("v", 1)]));
    assert_eq!(state(&store, &host, "user", "bob"), Some(CiState::Present));
    // Present CIs only by default; absent on request.
    let filter = CiFilter {
        class: Some("user".into()),
        ..Default::default()
    };
    assert_eq!(store.cis(&filter).unwrap().len(), 1);
}

#[test]
fn retention_retires_long_absent_cis_and_deletes_nothing() {
    let (_d, store, host) = setup();
    store
        .apply(
            "agt-1",
            &[
                delta(10, vec![change(v1::ChangeKind::Added, "user", "old", 1)]),
                delta(20, vec![change(v1::ChangeKind::Removed, "user", "old", 0)]),
                delta(30, vec![change(v1::ChangeKind::Added, "user", "new", 1)]),
                delta(40, vec![change(v1::ChangeKind::Removed, "user", "new", 0)]),
            ],
        )
        .unwrap();
    assert_eq!(store.retire_absent(t(30)).unwrap(), 1);
    assert_eq!(state(&store, &host, "user", "old"), Some(CiState::Retired));
    assert_eq!(state(&store, &host, "user", "new"), Some(CiState::Absent));
    let v = versions(&store, &host, "user", "old");
    assert_eq!(v.last().unwrap().change, ChangeKind::Retired);
    assert_eq!(v.last().unwrap().agent_id, RETENTION_AGENT);
    assert_eq!(store.retire_absent(t(30)).unwrap(), 0, "idempotent");
    // A retired CI seen again is present again.
    store
        .apply(
            "agt-1",
            &[delta(
                50,
                vec![change(v1::ChangeKind::Added, "user", "old", 2)],
            )],
        )
        .unwrap();
    assert_eq!(state(&store, &host, "user", "old"), Some(CiState::Present));
    assert_eq!(
        store.retire_absent(t(1000)).unwrap(),
        1,
        "only 'new' is absent"
    );
}

// === relations ===

#[test]
fn relations_follow_snapshots_and_deltas() {
    let (_d, store, host) = setup();
    let classes = vec![
        collector("svc", v1::CollectorState::Ok, &["service"]),
        collector("ports", v1::CollectorState::Ok, &["listening_port"]),
        collector("users", v1::CollectorState::Error, &["user", "group"]),
    ];
    let items = vec![
        item("service", "sshd", 1),
        item("listening_port", "tcp:0.0.0.0:22", 1),
        item("user", "root", 1),
        item("group", "root", 1),
    ];
    let rels = vec![
        relation(
            "service/sshd",
            "listening_port/tcp:0.0.0.0:22",
            "listens_on",
        ),
        relation("user/root", "group/root", "member_of"),
    ];
    store
        .apply(
            "agt-1",
            &[snapshot(1, items.clone(), classes.clone(), rels)],
        )
        .unwrap();
    let sshd = ci_id(&host, "service", "sshd");
    let port = ci_id(&host, "listening_port", "tcp:0.0.0.0:22");
    let rel = store.relations_of(&sshd).unwrap();
    assert_eq!(rel.len(), 1);
    assert_eq!(
        (rel[0].from.as_str(), rel[0].to.as_str()),
        (sshd.as_str(), port.as_str())
    );
    assert_eq!(rel[0].from_ref, "service/sshd");
    assert_eq!(
        store.relations_of(&port).unwrap(),
        rel,
        "found from either end"
    );
    // Next snapshot without relations: the ok-class one goes, the failed-class one stays.
    store
        .apply("agt-1", &[snapshot(2, items, classes, vec![])])
        .unwrap();
    assert!(!store.relations_of(&sshd).unwrap()[0].present);
    let root = ci_id(&host, "user", "root");
    assert!(store.relations_of(&root).unwrap()[0].present);
    // Deltas add and remove.
    store
        .apply(
            "agt-1",
            &[event(
                3,
                3,
                v1::event::Kind::Delta(v1::Delta {
                    relations_added: vec![relation(
                        "service/sshd",
                        "listening_port/tcp:0.0.0.0:22",
                        "listens_on",
                    )],
                    relations_removed: vec![relation("user/root", "group/root", "member_of")],
                    ..Default::default()
                }),
            )],
        )
        .unwrap();
    assert!(store.relations_of(&sshd).unwrap()[0].present);
    assert!(!store.relations_of(&root).unwrap()[0].present);
}

// === identification ===

#[test]
fn a_reinstalled_agent_keeps_the_host_and_its_history() {
    let (_d, store) = open();
    let now = SystemTime::now();
    let h1 = store
        .identify("agt-old", "inst-old", &identity("U1"), now)
        .unwrap();
    store.set_connected("agt-old", true, now).unwrap();
    store
        .apply(
            "agt-old",
            &[delta(
                1,
                vec![change(v1::ChangeKind::Added, "package", "p", 1)],
            )],
        )
        .unwrap();
    // Package removal stops the agent gracefully.
    store
        .apply(
            "agt-old",
            &[event(
                2,
                2,
                v1::event::Kind::Shutdown(v1::Shutdown {
                    reason: "uninstall".into(),
                }),
            )],
        )
        .unwrap();
    store.set_connected("agt-old", false, now).unwrap();
    let later = SystemTime::now() + Duration::from_secs(1);
    let h2 = store
        .identify("agt-new", "inst-new", &identity("u1"), later)
        .unwrap();
    assert_eq!(
        h1, h2,
        "same machine, same host CI (uuid case does not matter)"
    );
    store
        .apply(
            "agt-new",
            &[delta(
                1,
                vec![change(v1::ChangeKind::Changed, "package", "p", 2)],
            )],
        )
        .unwrap();
    let v = versions(&store, &h1, "package", "p");
    assert_eq!(
        v.iter().map(|v| v.agent_id.as_str()).collect::<Vec<_>>(),
        vec!["agt-old", "agt-new"]
    );
    assert!(store.clones().unwrap().is_empty());
    let host_ci = store.ci(&host_ci_id(&h1)).unwrap().unwrap();
    assert_eq!(
        host_ci.attrs["agents"],
        AttrValue::from(vec!["agt-old", "agt-new"])
    );
    // A long-silent agent (no shutdown) is not live either.
    let (_d2, store) = open();
    let h = store.identify("a", "ia", &identity("U2"), t(0)).unwrap();
    store.record_heartbeat("a", 0, 0, t(0)).unwrap();
    let h_b = store.identify("b", "ib", &identity("U2"), t(3600)).unwrap();
    assert_eq!(h, h_b);
}

#[test]
fn a_clone_gets_its_own_host_and_a_record() {
    let (_d, store) = open();
    let now = SystemTime::now();
    let original = store
        .identify("agt-a", "inst-a", &identity("U1"), now)
        .unwrap();
    store.set_connected("agt-a", true, now).unwrap();
    store
        .apply(
            "agt-a",
            &[delta(
                1,
                vec![change(v1::ChangeKind::Added, "package", "p", 1)],
            )],
        )
        .unwrap();
    let clone = store
        .identify("agt-b", "inst-b", &identity("U1"), now)
        .unwrap();
    assert_ne!(original, clone);
    let clone_ci = store.ci(&host_ci_id(&clone)).unwrap().unwrap();
    assert_eq!(clone_ci.attrs["clone_of"], AttrValue::Str(original.clone()));
    assert_eq!(clone_ci.class, "host");
    let records = store.clones().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].host_id, original);
    assert_eq!(records[0].clone_host_id, clone);
    assert_eq!(
        records[0].agents,
        vec!["agt-a".to_owned(), "agt-b".to_owned()]
    );
    assert_eq!(records[0].identity_key, "product_uuid=u1");
    // The two inventories do not overwrite each other.
    store
        .apply(
            "agt-b",
            &[delta(
                1,
                vec![change(v1::ChangeKind::Added, "package", "p", 9)],
            )],
        )
        .unwrap();
    let a = store
        .ci(&ci_id(&original, "package", "p"))
        .unwrap()
        .unwrap();
    assert_eq!(a.attrs, attrs(&[("v", 1)]));
    // The clone reconnecting stays on its host, without a second record; the original
    // reconnecting stays on its own.
    assert_eq!(
        store
            .identify("agt-b", "inst-b", &identity("U1"), now)
            .unwrap(),
        clone
    );
    assert_eq!(
        store
            .identify("agt-a", "inst-a", &identity("U1"), now)
            .unwrap(),
        original
    );
    assert_eq!(store.clones().unwrap().len(), 1);
    // Both hosts are CIs of class host.
    let hosts = store
        .cis(&CiFilter {
            class: Some("host".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hosts.len(), 2);
}

#[test]
fn placeholders_never_match() {
    let (_d, store) = open();
    let now = SystemTime::now();
    let placeholder = |machine: Option<&str>| HostIdentity {
        hostname: Some("localhost".into()),
        fqdn: None,
        machine_id: machine.map(str::to_owned),
        product_uuid: Some("00000000-0000-0000-0000-000000000000".into()),
        serial_number: Some("To Be Filled By O.E.M.".into()),
        board_serial: None,
        cloud_instance_id: None,
        macs: vec!["00:00:00:00:00:00".into()],
    };
    let a = store
        .identify("a", "ia", &placeholder(Some("m-a")), now)
        .unwrap();
    let b = store
        .identify("b", "ib", &placeholder(Some("m-b")), now)
        .unwrap();
    let c = store.identify("c", "ic", &placeholder(None), now).unwrap();
    let d = store.identify("d", "id", &placeholder(None), now).unwrap();
    let all = [&a, &b, &c, &d];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y, "placeholders or a shared hostname merged two hosts");
        }
    }
    assert!(store.clones().unwrap().is_empty());
    // An agent without any key keeps its host across reconnects.
    assert_eq!(
        store.identify("c", "ic", &placeholder(None), now).unwrap(),
        c
    );
}

#[test]
fn the_highest_ranked_key_wins_and_takes_the_others() {
    let (_d, store) = open();
    let now = t(0);
    let only_machine = HostIdentity {
        machine_id: Some("m1".into()),
        ..Default::default()
    };
    let only_uuid = HostIdentity {
        product_uuid: Some("u1".into()),
        ..Default::default()
    };
    let h_m = store.identify("a", "ia", &only_machine, now).unwrap();
    let h_u = store.identify("b", "ib", &only_uuid, now).unwrap();
    assert_ne!(h_m, h_u);
    // An identity carrying both matches by product_uuid; machine_id now points there too.
    let both = HostIdentity {
        machine_id: Some("m1".into()),
        product_uuid: Some("u1".into()),
        ..Default::default()
    };
    assert_eq!(store.identify("c", "ic", &both, now).unwrap(), h_u);
    assert_eq!(store.identify("d", "id", &only_machine, now).unwrap(), h_u);
}

// === reads ===

#[test]
fn ci_queries_use_filters_and_pagination() {
    let (_d, store, host) = setup();
    let other = store
        .identify("agt-2", "inst-2", &identity("uuid-2"), SystemTime::now())
        .unwrap();
    let mut pkgs: Vec<v1::Item> = (0..25)
        .map(|i| item("package", &format!("pkg-{i:02}"), i))
        .collect();
    pkgs[3].attrs.insert(
        "vendor".into(),
        v1::Value::from(&AttrValue::Str("Acme Corp".into())),
    );
    pkgs.push(item("service", "sshd", 1));
    store
        .apply(
            "agt-1",
            &[snapshot(1, pkgs, ok(&["package", "service"]), vec![])],
        )
        .unwrap();
    store
        .apply(
            "agt-2",
            &[snapshot(
                1,
                vec![item("package", "other", 1)],
                ok(&["package"]),
                vec![],
            )],
        )
        .unwrap();
    let q = |f: CiFilter| store.cis(&f).unwrap();
    let class = |c: &str| CiFilter {
        class: Some(c.into()),
        ..Default::default()
    };
    assert_eq!(q(class("package")).len(), 26);
    let mine = CiFilter {
        host: Some(host.clone()),
        ..Default::default()
    };
    assert_eq!(
        q(mine.clone()).len(),
        27,
        "25 packages, a service and the host CI"
    );
    let by_hostname = CiFilter {
        host: Some("web-1".into()),
        class: Some("service".into()),
        ..Default::default()
    };
    assert_eq!(
        q(by_hostname).len(),
        1,
        "both hosts are web-1; one has sshd"
    );
    let text = CiFilter {
        q: Some("ACME".into()),
        ..Default::default()
    };
    assert_eq!(q(text)[0].key, "pkg-03");
    let text = CiFilter {
        q: Some("PKG-1".into()),
        host: Some(host.clone()),
        ..Default::default()
    };
    assert_eq!(q(text).len(), 10);
    // Keyset pagination over ids returns everything exactly once, in id order.
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..20 {
        let page = q(CiFilter {
            class: Some("package".into()),
            host: Some(host.clone()),
            limit: 7,
            after: after.clone(),
            ..Default::default()
        });
        if page.is_empty() {
            break;
        }
        after = page.last().map(|c| c.id.clone());
        seen.extend(page.into_iter().map(|c| c.id));
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    // Unfiltered: everything, ordered by id.
    let all = q(CiFilter::default());
    assert_eq!(all.len(), 27 + 2);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        q(CiFilter {
            host: Some("nonexistent".into()),
            ..Default::default()
        })
        .is_empty()
    );
    // Every listing (several classes, several hosts, or all of them merged by id) pages
    // through the same CIs as one big page, and every CI listed resolves by its bare id.
    for filter in [
        CiFilter::default(),
        mine.clone(),
        class("package"),
        CiFilter {
            host: Some("web-1".into()),
            ..Default::default()
        },
    ] {
        let whole = q(filter.clone());
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = q(CiFilter {
                limit: 4,
                after: after.clone(),
                ..filter.clone()
            });
            if page.is_empty() {
                break;
            }
            after = page.last().map(|c| c.id.clone());
            paged.extend(page);
        }
        assert_eq!(paged, whole, "{filter:?}");
        assert!(whole.windows(2).all(|w| w[0].id < w[1].id), "{filter:?}");
        for ci in &whole {
            assert_eq!(store.ci(&ci.id).unwrap().as_ref(), Some(ci));
        }
    }
    assert_eq!(
        q(CiFilter {
            host: Some("web-1".into()),
            ..Default::default()
        })
        .len(),
        27 + 2
    );
    assert_eq!(store.ci("ci-0000000000000000").unwrap(), None);
    assert!(store.ci_versions("ci-0000000000000000").unwrap().is_empty());
    let _ = other;
}

/// The audit's bulk scan sees exactly what paging `cis` sees (absent CIs included), with
/// the same attributes, whatever the other classes and hosts.
#[test]
fn scan_class_sees_what_cis_sees() {
    let (_d, store, _host) = setup();
    store
        .identify("agt-2", "inst-2", &identity("uuid-2"), SystemTime::now())
        .unwrap();
    let mut pkgs: Vec<v1::Item> = (0..30)
        .map(|i| item("package", &format!("pkg-{i:02}"), i))
        .collect();
    pkgs[4].attrs.insert(
        "vendor".into(),
        v1::Value::from(&AttrValue::Str("Acme Corp".into())),
    );
    pkgs.push(item("service", "sshd", 1));
    store
        .apply(
            "agt-1",
            &[snapshot(1, pkgs, ok(&["package", "service"]), vec![])],
        )
        .unwrap();
    store
        .apply(
            "agt-2",
            &[
                snapshot(
                    1,
                    vec![item("package", "a", 1), item("package", "b", 2)],
                    ok(&["package"]),
                    vec![],
                ),
                delta(2, vec![change(v1::ChangeKind::Removed, "package", "b", 0)]),
            ],
        )
        .unwrap();
    for class in ["package", "service", "host", "nothing"] {
        let mut want: Vec<CiRecord> = store
            .cis(&CiFilter {
                class: Some(class.into()),
                include_absent: true,
                limit: MAX_LIST,
                ..Default::default()
            })
            .unwrap();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        let mut got = Vec::new();
        let parts = [
            ScanPart::ALL,
            ScanPart { index: 0, of: 2 },
            ScanPart { index: 1, of: 2 },
        ];
        for (i, part) in parts.into_iter().enumerate() {
            store
                .scan_class(class, part, &mut |v| {
                    let names: Vec<String> = want
                        .iter()
                        .flat_map(|w| w.attrs.keys().cloned())
                        .chain(["absent-attr".to_owned()])
                        .collect();
                    let attrs: Attrs = names
                        .iter()
                        .filter_map(|n| v.attr(n).map(|a| (n.clone(), a.into_owned())))
                        .collect();
                    got.push((
                        v.id.to_owned(),
                        v.host_id.to_owned(),
                        v.class.to_owned(),
                        v.key.to_owned(),
                        v.state,
                        v.last_seen,
                        attrs,
                        i == 0,
                    ));
                })
                .unwrap();
        }
        got.sort_by_key(|a| (a.0.clone(), a.7));
        let want: Vec<_> = want
            .into_iter()
            .flat_map(|c| {
                // Once in one of the two parts, once in the whole scan.
                [false, true].map(|whole| {
                    let c = c.clone();
                    (
                        c.id,
                        c.host_id,
                        c.class,
                        c.key,
                        c.state,
                        c.last_seen,
                        c.attrs,
                        whole,
                    )
                })
            })
            .collect();
        assert_eq!(got, want, "class {class}");
    }
    assert!(
        store
            .cis(&CiFilter {
                class: Some("package".into()),
                include_absent: true,
                limit: MAX_LIST,
                ..Default::default()
            })
            .unwrap()
            .iter()
            .any(|c| c.state == CiState::Absent),
        "the absent CI is part of the comparison"
    );
}

#[test]
fn metrics_are_stored_per_window_and_pruned() {
    let (_d, store, host) = setup();
    let metrics = |seq: u64, minute: u64| {
        event(
            seq,
            minute * 60,
            v1::event::Kind::Metrics(v1::Metrics {
                window_start: Some(timestamp_from_system(t(minute * 60))),
                window_seconds: 60,
                summaries: vec![
                    v1::MetricSummary {
                        name: "cpu.percent".into(),
                        min: 1.0,
                        avg: 2.0,
                        max: 3.0,
                        p95: 2.9,
                        samples: 4,
                        ..Default::default()
                    },
                    v1::MetricSummary {
                        name: "broken".into(),
                        avg: f64::NAN,
                        ..Default::default()
                    },
                ],
            }),
        )
    };
    let out = store
        .apply("agt-1", &[metrics(1, 0), metrics(2, 1), metrics(3, 2)])
        .unwrap();
    assert_eq!(out.rejected, 3, "NaN summaries are dropped");
    let got = store.metrics(&host, t(60), t(180)).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].window_start, t(60));
    assert_eq!(got[0].summaries.len(), 1);
    assert_eq!(got[0].summaries[0].p95, 2.9);
    assert_eq!(store.prune_metrics(t(120)).unwrap(), 2);
    assert_eq!(store.metrics(&host, t(0), t(1000)).unwrap().len(), 1);
}

#[test]
fn agent_events_are_recorded() {
    let (_d, store, _host) = setup();
    let no_time = v1::Event {
        seq: 3,
        observed_at: None,
        kind: Some(v1::event::Kind::Delta(v1::Delta {
            changes: vec![change(v1::ChangeKind::Added, "file", "/etc/hosts", 1)],
            ..Default::default()
        })),
    };
    let out = store
        .apply(
            "agt-1",
            &[
                event(
                    1,
                    1,
                    v1::event::Kind::Gap(v1::Gap {
                        dropped_metrics: 5,
                        dropped_inventory_changes: 1,
                        reason: "full".into(),
                    }),
                ),
                event(
                    2,
                    2,
                    v1::event::Kind::Shutdown(v1::Shutdown {
                        reason: "SIGTERM".into(),
                    }),
                ),
                no_time,
                // A heartbeat is not sequenced.
                v1::Event {
                    seq: 0,
                    observed_at: None,
                    kind: Some(v1::event::Kind::Heartbeat(v1::Heartbeat {
                        outbox_events: 7,
                        outbox_bytes: 700,
                        uptime_seconds: 1,
                    })),
                },
                // A sequenced event without a kind, and a change of unknown kind.
                v1::Event {
                    seq: 4,
                    observed_at: None,
                    kind: None,
                },
                delta(
                    5,
                    vec![v1::ItemChange {
                        kind: 42,
                        class: "file".into(),
                        key: "/x".into(),
                        ..Default::default()
                    }],
                ),
                delta(6, vec![change(v1::ChangeKind::Added, "host", "sneaky", 1)]),
            ],
        )
        .unwrap();
    assert_eq!(out.last_seq, 6);
    assert_eq!(out.unsequenced, 1);
    assert_eq!(out.missing_observed_at, 2);
    assert_eq!(out.rejected, 3);
    let a = store.agent("agt-1").unwrap().unwrap();
    assert_eq!(
        (a.gaps, a.dropped_metrics, a.dropped_inventory_changes),
        (1, 5, 1)
    );
    assert_eq!(a.last_shutdown.unwrap().reason, "SIGTERM");
    assert_eq!((a.outbox_events, a.outbox_bytes), (7, 700));
    // Heartbeats outside apply: cheap, no versions.
    let before = store.size_on_disk().unwrap();
    assert!(store.record_heartbeat("agt-1", 1, 2, t(99)).unwrap());
    assert!(!store.record_heartbeat("nobody", 1, 2, t(99)).unwrap());
    let a = store.agent("agt-1").unwrap().unwrap();
    assert_eq!((a.last_seen, a.outbox_events), (Some(t(99)), 1));
    let _ = before;
}

#[test]
fn an_unidentified_agent_is_refused() {
    let (_d, store) = open();
    let err = store.apply("agt-x", &[delta(1, vec![])]).unwrap_err();
    assert!(matches!(err, StoreError::Unidentified { .. }), "{err}");
}

#[test]
fn put_agent_never_rewinds_the_watermark() {
    let (_d, store, host) = setup();
    let stale = store.agent("agt-1").unwrap().unwrap();
    store.apply("agt-1", &[delta(4, vec![])]).unwrap();
    let mut copy = stale.clone();
    copy.revoked = true;
    copy.host_id = None;
    store.put_agent(&copy).unwrap();
    let a = store.agent("agt-1").unwrap().unwrap();
    assert_eq!((a.last_seq, a.revoked, a.host_id), (4, true, Some(host)));
    assert_eq!(store.agents().unwrap().len(), 1);
}

/// Bare CI ids are resolved through the classes, so their number is capped: items of a new
/// class beyond the cap are rejected, known classes keep working, also after a reopen.
#[test]
fn distinct_classes_are_capped() {
    let (dir, store, host) = setup();
    // The host class is one of them.
    let items = |range: std::ops::Range<usize>| {
        range
            .map(|i| item(&format!("c{i:04}"), "k", 1))
            .collect::<Vec<_>>()
    };
    let out = store
        .apply(
            "agt-1",
            &[snapshot(1, items(0..txn::MAX_CLASSES + 5), vec![], vec![])],
        )
        .unwrap();
    assert_eq!((out.ci_versions, out.rejected), (1023, 6));
    let last = ci_id(&host, "c1022", "k");
    assert_eq!(store.ci(&last).unwrap().unwrap().class, "c1022");
    assert_eq!(state(&store, &host, "c1023", "k"), None);
    drop(store);
    let store = reopen(dir.path()).unwrap();
    let d = |seq, class: &str| delta(seq, vec![change(v1::ChangeKind::Added, class, "k2", 1)]);
    let out = store.apply("agt-1", &[d(2, "c0005"), d(3, "new")]).unwrap();
    assert_eq!((out.ci_versions, out.rejected), (1, 1));
    assert!(store.verify().unwrap().is_consistent());
}

/// `old_attrs` is not stored: it comes from the previous version, also across apply
/// calls, removals, revivals and several versions of one CI in one call.
#[test]
fn versions_carry_the_attributes_they_replaced() {
    use v1::ChangeKind::{Added, Changed, Removed};
    let (_d, store, host) = setup();
    let c = |seq, kind, v| delta(seq, vec![change(kind, "package", "p", v)]);
    store.apply("agt-1", &[c(1, Added, 1)]).unwrap();
    store.apply("agt-1", &[c(2, Changed, 2)]).unwrap();
    store.apply("agt-1", &[c(3, Removed, 0)]).unwrap();
    store
        .apply(
            "agt-1",
            &[c(4, Added, 3), c(5, Changed, 4), c(6, Changed, 5)],
        )
        .unwrap();
    let got: Vec<_> = versions(&store, &host, "package", "p")
        .into_iter()
        .map(|v| {
            let one = |a: &Attrs| a.get("v").and_then(AttrValue::as_i64);
            (
                v.version,
                v.change,
                v.state,
                one(&v.attrs),
                one(&v.old_attrs),
                v.seq,
            )
        })
        .collect();
    use CiState::{Absent, Present};
    assert_eq!(
        got,
        vec![
            (1, ChangeKind::Added, Present, Some(1), None, 1),
            (2, ChangeKind::Changed, Present, Some(2), Some(1), 2),
            (3, ChangeKind::Removed, Absent, Some(2), Some(2), 3),
            (4, ChangeKind::Added, Present, Some(3), Some(2), 4),
            (5, ChangeKind::Changed, Present, Some(4), Some(3), 5),
            (6, ChangeKind::Changed, Present, Some(5), Some(4), 6),
        ]
    );
    let all = versions(&store, &host, "package", "p");
    assert!(all[0].old_attrs.is_empty());
    assert!(
        all.iter()
            .all(|v| v.agent_id == "agt-1" && v.change_id.is_none())
    );
    assert_eq!(all[5].observed_at, t(6));
    // Capped: the newest ones, the oldest of them still with what it replaced.
    let id = ci_id(&host, "package", "p");
    let (h, c) = store.location(&id).unwrap().unwrap();
    let ci = txn::read_ci(&store.tree, &h, &c, &id).unwrap().unwrap();
    let newest = history::versions(
        &store.tree,
        &store.vlog,
        &ci.record().unwrap(),
        ci.row.head,
        2,
    )
    .unwrap();
    assert_eq!(newest, all[4..].to_vec());
}

#[test]
fn floats_do_not_make_spurious_versions() {
    let (_d, store, host) = setup();
    let f = |seq: u64| {
        let mut i = item("cpu", "cpu", 0);
        i.attrs.insert(
            "mhz".into(),
            v1::Value::from(&AttrValue::Float(2894.0 / 3.0 + 0.1)),
        );
        i.attrs
            .insert("odd".into(), v1::Value::from(&AttrValue::Float(f64::NAN)));
        snapshot(seq, vec![i], ok(&["cpu"]), vec![])
    };
    store.apply("agt-1", &[f(1)]).unwrap();
    let out = store.apply("agt-1", &[f(2)]).unwrap();
    assert_eq!(out.ci_versions, 0);
    let ci = store.ci(&ci_id(&host, "cpu", "cpu")).unwrap().unwrap();
    assert_eq!(ci.attrs["odd"], AttrValue::Null);
}

// === change feed ===

/// Reads the feed after `after` to its end in calls of `limits` entries (cycled; each ≥ 1).
fn read_feed(store: &SledStore, mut after: Option<FeedPos>, limits: &[usize]) -> Vec<FeedEntry> {
    let mut out = Vec::new();
    for &limit in limits.iter().cycle() {
        let page = store.feed(after.as_ref(), limit).unwrap();
        assert!(
            page.len() <= limit,
            "{} entries for a limit of {limit}",
            page.len()
        );
        // Strictly after `after` and in order (else a broken feed would loop forever).
        let mut prev = after.as_ref();
        for e in &page {
            assert!(
                prev.is_none_or(|p| *p < e.pos),
                "{:?} after {prev:?}",
                e.pos
            );
            prev = Some(&e.pos);
        }
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.pos.clone());
        out.extend(page);
    }
    out
}

/// Every version of every CI, as `ci_versions` and `ci` tell it.
fn every_version(store: &SledStore) -> BTreeMap<(String, u64), (CiRecord, CiVersion)> {
    let cis = store
        .cis(&CiFilter {
            include_absent: true,
            limit: MAX_LIST,
            ..Default::default()
        })
        .unwrap();
    assert!(cis.len() < MAX_LIST, "the test outgrew one page of CIs");
    let mut all = BTreeMap::new();
    for ci in cis {
        for v in store.ci_versions(&ci.id).unwrap() {
            all.insert((ci.id.clone(), v.version), (ci.clone(), v));
        }
    }
    all
}

/// `feed` is in strict position order and holds every version of every CI exactly once,
/// as `ci_versions` has it (with `old_attrs`), with the CI's host, class and key.
fn check_feed(store: &SledStore, feed: &[FeedEntry]) -> Result<(), TestCaseError> {
    for w in feed.windows(2) {
        prop_assert!(w[0].pos < w[1].pos, "{:?} before {:?}", w[0].pos, w[1].pos);
    }
    let all = every_version(store);
    prop_assert_eq!(feed.len(), all.len(), "feed entries vs versions of all CIs");
    for e in feed {
        prop_assert_eq!(&e.pos.ci_id, &e.version.ci_id);
        prop_assert_eq!(e.pos.version, e.version.version);
        let Some((ci, v)) = all.get(&(e.pos.ci_id.clone(), e.pos.version)) else {
            return Err(TestCaseError::fail(format!(
                "{:?} is no CI's version",
                e.pos
            )));
        };
        prop_assert_eq!(&e.version, v);
        prop_assert_eq!(
            (&e.host_id, &e.class, &e.key),
            (&ci.host_id, &ci.class, &ci.key)
        );
    }
    Ok(())
}

/// The value of attribute `v`, if any.
fn v_of(a: &Attrs) -> Option<i64> {
    a.get("v").and_then(AttrValue::as_i64)
}

#[test]
fn the_feed_lists_every_version_in_commit_order() {
    use v1::ChangeKind::{Added, Changed, Removed};
    let (dir, store, host) = setup();
    let both = ok(&["package", "user"]);
    store
        .apply(
            "agt-1",
            &[snapshot(
                1,
                vec![
                    item("package", "p1", 1),
                    item("package", "p2", 1),
                    item("user", "u1", 1),
                ],
                both.clone(),
                vec![],
            )],
        )
        .unwrap();
    store
        .apply(
            "agt-1",
            &[
                delta(
                    2,
                    vec![
                        change(Changed, "package", "p1", 2),
                        change(Removed, "package", "p2", 0),
                        change(Added, "package", "p3", 1),
                    ],
                ),
                delta(3, vec![change(Changed, "package", "p1", 3)]),
            ],
        )
        .unwrap();
    // u1 is missing from an authoritative snapshot: removed; p1 and p3 unchanged.
    let snap = vec![item("package", "p1", 3), item("package", "p3", 1)];
    store
        .apply("agt-1", &[snapshot(4, snap, both, vec![])])
        .unwrap();
    assert_eq!(store.retire_absent(t(100)).unwrap(), 2, "p2 and u1");

    let feed = store.feed(None, 1000).unwrap();
    check_feed(&store, &feed).unwrap();
    assert!(feed.iter().all(|e| e.host_id == host));
    // One group per commit, in commit order: identify, the three applies, retention.
    let mut groups: Vec<(u64, Vec<_>)> = Vec::new();
    for e in &feed {
        let row = (
            e.class.as_str(),
            e.key.as_str(),
            e.pos.version,
            e.version.change,
            v_of(&e.version.old_attrs),
            v_of(&e.version.attrs),
        );
        match groups.last_mut() {
            Some((c, rows)) if *c == e.pos.commit => rows.push(row),
            _ => groups.push((e.pos.commit, vec![row])),
        }
    }
    for (_, rows) in &mut groups {
        rows.sort_by_key(|r| (r.0, r.1, r.2));
    }
    use ChangeKind as K;
    let host_key = host.as_str();
    assert_eq!(
        groups.into_iter().map(|(_, rows)| rows).collect::<Vec<_>>(),
        vec![
            vec![("host", host_key, 1, K::Added, None, None)],
            vec![
                ("package", "p1", 1, K::Added, None, Some(1)),
                ("package", "p2", 1, K::Added, None, Some(1)),
                ("user", "u1", 1, K::Added, None, Some(1)),
            ],
            vec![
                ("package", "p1", 2, K::Changed, Some(1), Some(2)),
                ("package", "p1", 3, K::Changed, Some(2), Some(3)),
                ("package", "p2", 2, K::Removed, Some(1), Some(1)),
                ("package", "p3", 1, K::Added, None, Some(1)),
            ],
            vec![("user", "u1", 2, K::Removed, Some(1), Some(1))],
            vec![
                ("package", "p2", 3, K::Retired, Some(1), Some(1)),
                ("user", "u1", 3, K::Retired, Some(1), Some(1)),
            ],
        ]
    );
    let retired: Vec<_> = feed
        .iter()
        .filter(|e| e.version.change == ChangeKind::Retired)
        .collect();
    assert!(
        retired
            .iter()
            .all(|e| e.version.agent_id == RETENTION_AGENT && e.version.state == CiState::Retired)
    );
    let host_ci = &feed[0];
    assert_eq!(host_ci.pos.ci_id, host_ci_id(&host));
    assert!(host_ci.version.old_attrs.is_empty());
    assert_eq!(
        host_ci.version.attrs["product_uuid"],
        AttrValue::Str("uuid-1".into())
    );

    // Nothing after the end; the same feed after a restart.
    let end = feed.last().map(|e| e.pos.clone());
    assert_eq!(store.feed(end.as_ref(), 10).unwrap(), vec![]);
    assert_eq!(store.feed(None, 0).unwrap(), vec![]);
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.feed(None, 1000).unwrap(), feed);
    assert_eq!(store.feed(end.as_ref(), 10).unwrap(), vec![]);
}

#[test]
fn feed_pages_resume_exactly_also_inside_a_version_page() {
    use v1::ChangeKind::{Changed, Removed};
    let (dir, store, _host) = setup();
    let packages: Vec<_> = (0..300)
        .map(|i| item("package", &format!("p{i:03}"), 1))
        .collect();
    store
        .apply("agt-1", &[snapshot(1, packages, ok(&["package"]), vec![])])
        .unwrap();
    let big = store.commits.load(Ordering::Acquire);
    let pages = store
        .tree
        .scan_prefix(keys::version_pages(big))
        .keys()
        .count();
    assert!(
        pages > 2,
        "300 versions should fill several pages, got {pages}"
    );
    store
        .write_records(&[RecordOp::Put {
            collection: "baselines",
            id: "b1".into(),
            value: b"{}".to_vec(),
        }])
        .unwrap();
    let records_commit = store.commits.load(Ordering::Acquire);
    assert_eq!(records_commit, big + 1, "a record write is a commit");
    let changes = (0..300)
        .step_by(2)
        .map(|i| change(Changed, "package", &format!("p{i:03}"), 2))
        .chain([change(Removed, "package", "p001", 0)])
        .collect();
    store.apply("agt-1", &[delta(2, changes)]).unwrap();
    store
        .apply(
            "agt-1",
            &[delta(3, vec![change(Changed, "package", "p000", 3)])],
        )
        .unwrap();

    let full = read_feed(&store, None, &[MAX_FEED]);
    assert_eq!(full.len(), 1 + 300 + 151 + 1);
    check_feed(&store, &full).unwrap();
    assert!(
        full.iter().all(|e| e.pos.commit != records_commit),
        "record writes make no feed entries"
    );
    for limits in [&[1][..], &[2], &[7], &[3, 50, 1, 89], &[90], &[91], &[1000]] {
        assert_eq!(read_feed(&store, None, limits), full, "limits {limits:?}");
    }
    // Resuming from any position, also ones no entry has: exactly what follows it.
    let after = |p: &FeedPos| {
        full.iter()
            .filter(|e| e.pos > *p)
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut positions: Vec<FeedPos> = Vec::new();
    for e in full.iter().step_by(7).chain(full.last()) {
        let p = &e.pos;
        positions.push(p.clone());
        positions.push(FeedPos {
            version: p.version + 1,
            ..p.clone()
        });
        positions.push(FeedPos {
            version: 0,
            ..p.clone()
        });
        for id in ["", "ci-", "ci-zzzz", "zzzz", "ci-0000000000000000"] {
            positions.push(FeedPos {
                ci_id: id.into(),
                ..p.clone()
            });
        }
        positions.push(FeedPos {
            commit: p.commit + 1,
            ci_id: String::new(),
            version: 0,
        });
    }
    positions.push(FeedPos::default());
    positions.push(FeedPos {
        commit: records_commit,
        ci_id: String::new(),
        version: 0,
    });
    positions.push(FeedPos {
        commit: u64::MAX,
        ci_id: "ci-ffffffffffffffff".into(),
        version: u64::MAX,
    });
    for p in &positions {
        assert_eq!(store.feed(Some(p), 3).unwrap(), after(p), "after {p:?}");
    }
    // A consumer that stopped in the middle of a page resumes there after a restart.
    let mid = full[150].pos.clone();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(read_feed(&store, None, &[MAX_FEED]), full);
    assert_eq!(read_feed(&store, Some(mid), &[13]), full[151..].to_vec());
}

/// A consumer paging while an agent's applies commit (new CIs of new classes included)
/// misses nothing and sees nothing twice.
#[test]
fn a_consumer_reading_during_writes_gets_every_version_once() {
    let (_d, store, _host) = setup();
    let store = std::sync::Arc::new(store);
    const CALLS: u64 = 150;
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for seq in 1..=CALLS {
                let mut changes = vec![change(
                    v1::ChangeKind::Added,
                    &format!("class-{seq}"),
                    "k",
                    1,
                )];
                changes.extend((0..20).map(|i| {
                    change(
                        v1::ChangeKind::Changed,
                        "package",
                        &format!("p{i}"),
                        seq as i64,
                    )
                }));
                store.apply("agt-1", &[delta(seq, changes)]).unwrap();
            }
        })
    };
    let mut consumed: Vec<FeedEntry> = Vec::new();
    let mut cursor: Option<FeedPos> = None;
    let mut while_writing = 0;
    loop {
        let done = writer.is_finished();
        let page = store.feed(cursor.as_ref(), 7).unwrap();
        if !done && !page.is_empty() {
            while_writing += 1;
        }
        if let Some(last) = page.last() {
            cursor = Some(last.pos.clone());
        } else if done {
            break;
        }
        consumed.extend(page);
    }
    writer.join().unwrap();
    assert!(while_writing > 0, "no read overlapped the writes");
    assert_eq!(consumed.len() as u64, 1 + CALLS * 21);
    assert_eq!(consumed, read_feed(&store, None, &[MAX_FEED]));
    check_feed(&store, &consumed).unwrap();
}

// === records ===

fn put(collection: &'static str, id: &str, value: &[u8]) -> RecordOp {
    RecordOp::Put {
        collection,
        id: id.into(),
        value: value.to_vec(),
    }
}

fn del(collection: &'static str, id: &str) -> RecordOp {
    RecordOp::Delete {
        collection,
        id: id.into(),
    }
}

#[test]
fn records_are_put_read_listed_in_id_order_and_deleted() {
    let (_d, store) = open();
    store
        .write_records(&[
            put("changes", "CHG-2", b"two"),
            put("changes", "CHG-10", b"ten"),
            put("changes", "CHG-1", b"one"),
            put("baselines", "web", b"{\"scope\":\"web-*\"}"),
            // The last write of one id in a batch wins.
            put("changes", "CHG-3", b"draft"),
            del("changes", "CHG-3"),
        ])
        .unwrap();
    assert_eq!(
        store.record("changes", "CHG-2").unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(store.record("changes", "CHG-3").unwrap(), None);
    assert_eq!(
        store.record("changes", "web").unwrap(),
        None,
        "other collection"
    );
    assert_eq!(
        store.record("baseline", "web").unwrap(),
        None,
        "not a prefix"
    );
    let ids = |after: Option<&str>, limit| -> Vec<String> {
        store
            .records("changes", after, limit)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    assert_eq!(ids(None, 10), ["CHG-1", "CHG-10", "CHG-2"]);
    assert_eq!(ids(None, 2), ["CHG-1", "CHG-10"]);
    assert_eq!(ids(Some("CHG-10"), 2), ["CHG-2"]);
    assert_eq!(ids(Some("CHG-1"), 10), ["CHG-10", "CHG-2"]);
    assert_eq!(ids(Some("CHG-0"), 1), ["CHG-1"], "`after` need not exist");
    assert_eq!(ids(Some("CHG-2"), 10), Vec::<String>::new());
    assert_eq!(ids(None, 0), Vec::<String>::new());
    assert_eq!(
        store.records("baselines", None, 10).unwrap(),
        vec![("web".to_owned(), b"{\"scope\":\"web-*\"}".to_vec())]
    );
    assert_eq!(store.records("incidents", None, 10).unwrap(), vec![]);
    // Overwrite and delete (deleting what is not there is fine).
    store
        .write_records(&[
            put("changes", "CHG-2", b"two, approved"),
            del("changes", "CHG-1"),
            del("changes", "never"),
        ])
        .unwrap();
    assert_eq!(ids(None, 10), ["CHG-10", "CHG-2"]);
    assert_eq!(
        store.record("changes", "CHG-2").unwrap().as_deref(),
        Some(&b"two, approved"[..])
    );
    // Ids that cannot exist are simply not found; a bad collection name is a bug.
    assert_eq!(store.record("changes", "").unwrap(), None);
    assert_eq!(store.record("changes", "a\0b").unwrap(), None);
    assert_eq!(store.record("changes", &"x".repeat(300)).unwrap(), None);
    assert!(matches!(store.record("", "x"), Err(StoreError::Backend(_))));
    assert!(matches!(
        store.records("bad\0name", None, 1),
        Err(StoreError::Backend(_))
    ));
    store.write_records(&[]).unwrap();
}

#[test]
fn a_batch_with_one_invalid_op_writes_nothing() {
    let (dir, store) = open();
    store
        .write_records(&[put("changes", "keep", b"1")])
        .unwrap();
    let commit = store.commits.load(Ordering::Acquire);
    let long_id = "x".repeat(MAX_RECORD_ID_BYTES + 1);
    let invalid = [
        (put("", "a", b"v"), "collection name"),
        (put("bäd", "a", b"v"), "collection name"),
        (put("bad\0", "a", b"v"), "collection name"),
        (
            put(
                "a-name-far-longer-than-anyone-would-give-a-collection-of-records-x",
                "a",
                b"v",
            ),
            "collection name",
        ),
        (put("changes", "", b"v"), "invalid record id"),
        (put("changes", "a\0b", b"v"), "invalid record id"),
        (put("changes", &long_id, b"v"), "invalid record id"),
        (del("changes", &long_id), "invalid record id"),
        (
            put("changes", "huge", &vec![0u8; MAX_RECORD_BYTES + 1]),
            "over the limit",
        ),
    ];
    for (bad, why) in invalid {
        let ops = [
            put("changes", "new", b"2"),
            del("changes", "keep"),
            bad.clone(),
            put("changes", "after", b"3"),
        ];
        match store.write_records(&ops) {
            Err(StoreError::Backend(msg)) => assert!(msg.contains(why), "{msg} for {bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert_eq!(store.record("changes", "new").unwrap(), None);
        assert_eq!(store.record("changes", "after").unwrap(), None);
        assert_eq!(
            store.record("changes", "keep").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(store.commits.load(Ordering::Acquire), commit, "no commit");
    }
    // The limits themselves are fine.
    let id = "y".repeat(MAX_RECORD_ID_BYTES);
    let at_limit = vec![7u8; MAX_RECORD_BYTES];
    store
        .write_records(&[put("changes", &id, &at_limit)])
        .unwrap();
    assert_eq!(store.record("changes", &id).unwrap(), Some(at_limit));
    assert_eq!(seal::read(dir.path()), seal::Seal::Commit(commit + 1));
}

#[test]
fn records_persist_make_no_feed_entries_and_keep_verify_clean() {
    let (dir, store, _host) = setup();
    store
        .apply(
            "agt-1",
            &[snapshot(
                1,
                vec![item("package", "p", 1)],
                ok(&["package"]),
                vec![],
            )],
        )
        .unwrap();
    let feed = store.feed(None, 100).unwrap();
    for i in 0..20 {
        store
            .write_records(&[
                put(
                    "incidents",
                    &format!("INC-{i:04}"),
                    format!("#{i}").as_bytes(),
                ),
                put("audit", &format!("{i:08}"), b"entry"),
            ])
            .unwrap();
    }
    store
        .write_records(&[del("incidents", "INC-0003")])
        .unwrap();
    assert_eq!(
        store.feed(None, 100).unwrap(),
        feed,
        "records are not CI versions"
    );
    // Durable: the seal covers the record writes' commits.
    let commit = store.commits.load(Ordering::Acquire);
    assert_eq!(seal::read(dir.path()), seal::Seal::Commit(commit));
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    assert_eq!(report.records, 39);
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.commits.load(Ordering::Acquire), commit);
    let incidents = store.records("incidents", None, 100).unwrap();
    assert_eq!(incidents.len(), 19);
    assert_eq!(incidents[3], ("INC-0004".to_owned(), b"#4".to_vec()));
    assert_eq!(
        store.records("audit", Some("00000018"), 100).unwrap().len(),
        1
    );
    assert_eq!(store.feed(None, 100).unwrap(), feed);
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    // verify does see a record key it could not have written.
    store.tree.insert(b"j/no-separator", b"x").unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.problem_count, 1, "{:?}", report.problems);
}

// === persistence and refusal ===

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (host, clone) = {
        let store = SledStore::open(dir.path(), CACHE).unwrap();
        let now = SystemTime::now();
        let host = store.identify("a", "ia", &identity("U"), now).unwrap();
        store.set_connected("a", true, now).unwrap();
        let clone = store.identify("b", "ib", &identity("U"), now).unwrap();
        store
            .apply(
                "a",
                &[
                    snapshot(1, vec![item("package", "p", 1)], ok(&["package"]), vec![]),
                    delta(2, vec![change(v1::ChangeKind::Changed, "package", "p", 2)]),
                ],
            )
            .unwrap();
        (host, clone)
    };
    let store = reopen(dir.path()).unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(a.last_seq, 2);
    assert!(
        !a.connected,
        "nobody is connected to a collector that just started"
    );
    assert_eq!(a.host_id.as_deref(), Some(host.as_str()));
    assert_eq!(versions(&store, &host, "package", "p").len(), 2);
    assert_eq!(store.clones().unwrap()[0].clone_host_id, clone);
    assert_eq!(store.apply("a", &[delta(2, vec![])]).unwrap().duplicates, 1);
    assert!(store.size_on_disk().unwrap() > 0);
}

#[test]
fn an_unusable_store_is_refused_not_moved_aside() {
    // Held open by another instance (sled locks the directory).
    let dir = tempfile::tempdir().unwrap();
    let first = SledStore::open(dir.path(), CACHE).unwrap();
    let err = SledStore::open(dir.path(), CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    drop(first);
    // Not a directory.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        SledStore::open(&file, CACHE).unwrap_err(),
        StoreError::Open { .. }
    ));
    // A sled database that is not ours.
    let foreign = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(foreign.path()).open().unwrap();
        db.open_tree(TREE).unwrap().insert(b"x", b"y").unwrap();
        db.flush().unwrap();
    }
    let err = reopen(foreign.path()).unwrap_err();
    assert!(err.to_string().contains("format marker"), "{err}");
    // Garbage where sled's files should be: refused, and the files are left where they are.
    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(garbage.path().join("conf"), b"\xff\xfe not a sled config").unwrap();
    std::fs::write(garbage.path().join("db"), vec![0xa5u8; 4096]).unwrap();
    let err = SledStore::open(garbage.path(), CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(garbage.path().join("db").exists());
}

// === model check ===

const CLASSES: [&str; 2] = ["a", "b"];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

#[derive(Clone, Debug)]
enum Op {
    /// (class, key, Some(value) = add/change, None = remove)
    Delta(Vec<(usize, usize, Option<i64>)>),
    /// items (class, key, value) and which classes' collectors were ok
    Snapshot(Vec<(usize, usize, i64)>, [bool; 2]),
    /// Send the previous apply call's events again (at-least-once delivery).
    Resend,
}

fn op() -> impl Strategy<Value = Op> {
    let ck = (0..CLASSES.len(), 0..KEYS.len());
    prop_oneof![
        4 => prop::collection::vec((ck.clone(), prop::option::of(0i64..3)), 1..5)
            .prop_map(|v| Op::Delta(v.into_iter().map(|((c, k), x)| (c, k, x)).collect())),
        2 => (prop::collection::vec((ck, 0i64..3), 0..6), any::<[bool; 2]>())
            .prop_map(|(v, ok)| Op::Snapshot(v.into_iter().map(|((c, k), x)| (c, k, x)).collect(), ok)),
        1 => Just(Op::Resend),
    ]
}

/// The model: per (class, key), (present, value, version count).
type Model = BTreeMap<(usize, usize), (bool, i64, u64)>;

fn model_upsert(m: &mut Model, c: usize, k: usize, v: i64) {
    match m.get_mut(&(c, k)) {
        None => {
            m.insert((c, k), (true, v, 1));
        }
        Some((present, value, n)) => {
            if !*present || *value != v {
                *present = true;
                *value = v;
                *n += 1;
            }
        }
    }
}

fn model_remove(m: &mut Model, c: usize, k: usize) {
    if let Some((present, _, n)) = m.get_mut(&(c, k))
        && *present
    {
        *present = false;
        *n += 1;
    }
}

fn to_event(seq: u64, op: &Op) -> v1::Event {
    match op {
        Op::Delta(changes) => delta(
            seq,
            changes
                .iter()
                .map(|(c, k, v)| match v {
                    Some(v) => change(v1::ChangeKind::Changed, CLASSES[*c], KEYS[*k], *v),
                    None => change(v1::ChangeKind::Removed, CLASSES[*c], KEYS[*k], 0),
                })
                .collect(),
        ),
        Op::Snapshot(items, oks) => snapshot(
            seq,
            items
                .iter()
                .map(|(c, k, v)| item(CLASSES[*c], KEYS[*k], *v))
                .collect(),
            CLASSES
                .iter()
                .zip(oks)
                .map(|(class, ok)| {
                    let state = if *ok {
                        v1::CollectorState::Ok
                    } else {
                        v1::CollectorState::Error
                    };
                    collector(class, state, &[class])
                })
                .collect(),
            vec![],
        ),
        Op::Resend => unreachable!("resends are not events"),
    }
}

fn model_apply(m: &mut Model, op: &Op) {
    match op {
        Op::Delta(changes) => {
            for (c, k, v) in changes {
                match v {
                    Some(v) => model_upsert(m, *c, *k, *v),
                    None => model_remove(m, *c, *k),
                }
            }
        }
        Op::Snapshot(items, oks) => {
            for (c, k, v) in items {
                model_upsert(m, *c, *k, *v);
            }
            for (c, ok) in oks.iter().enumerate() {
                if !ok {
                    continue;
                }
                for k in 0..KEYS.len() {
                    if !items.iter().any(|(ic, ik, _)| (*ic, *ik) == (c, k)) {
                        model_remove(m, c, k);
                    }
                }
            }
        }
        Op::Resend => {}
    }
}

fn check(store: &SledStore, host: &str, m: &Model) -> Result<(), TestCaseError> {
    for (c, class) in CLASSES.iter().enumerate() {
        for (k, key) in KEYS.iter().enumerate() {
            let id = ci_id(host, class, key);
            let ci = store.ci(&id).unwrap();
            match (m.get(&(c, k)), ci) {
                (None, None) => {}
                (Some((present, value, n)), Some(ci)) => {
                    let want = if *present {
                        CiState::Present
                    } else {
                        CiState::Absent
                    };
                    prop_assert_eq!(ci.state, want);
                    prop_assert_eq!(&ci.attrs, &attrs(&[("v", *value)]));
                    prop_assert_eq!(ci.version, *n);
                    let versions = store.ci_versions(&id).unwrap();
                    prop_assert_eq!(
                        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
                        (1..=*n).collect::<Vec<_>>()
                    );
                    prop_assert!(versions.windows(2).all(|w| w[0].seq <= w[1].seq));
                    prop_assert_eq!(versions.last().map(|v| v.state), Some(want));
                }
                (want, got) => {
                    prop_assert!(false, "{:?}: model {:?}, store {:?}", (c, k), want, got)
                }
            }
        }
        let listed = store
            .cis(&CiFilter {
                class: Some((*class).into()),
                include_absent: true,
                ..Default::default()
            })
            .unwrap();
        prop_assert_eq!(listed.len(), m.keys().filter(|(mc, _)| *mc == c).count());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Random delta/snapshot sequences, grouped into apply calls of random size and
    /// resent at random, leave every CI in the model's state with the model's version count.
    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..14), group in 1usize..4) {
        let (dir, store, host) = setup();
        let mut model = Model::new();
        let mut seq = 0u64;
        let mut last_call: Vec<v1::Event> = Vec::new();
        let mut pending: Vec<v1::Event> = Vec::new();
        for op in &ops {
            if let Op::Resend = op {
                let out = store.apply("agt-1", &last_call).unwrap();
                prop_assert_eq!(out.applied, 0);
                prop_assert_eq!(out.duplicates, last_call.len() as u64);
                continue;
            }
            seq += 1;
            pending.push(to_event(seq, op));
            model_apply(&mut model, op);
            if pending.len() >= group {
                let out = store.apply("agt-1", &pending).unwrap();
                prop_assert_eq!(out.last_seq, seq);
                prop_assert_eq!(out.applied, pending.len() as u64);
                last_call = std::mem::take(&mut pending);
                check(&store, &host, &model)?;
            }
        }
        if !pending.is_empty() {
            store.apply("agt-1", &pending).unwrap();
        }
        check(&store, &host, &model)?;
        prop_assert_eq!(store.agent("agt-1").unwrap().unwrap().last_seq, seq);
        // And all of it survives a restart.
        drop(store);
        let store = reopen(dir.path()).unwrap();
        check(&store, &host, &model)?;
        let report = store.verify().unwrap();
        prop_assert!(report.is_consistent(), "{:?}", report.problems);
        prop_assert_eq!(store.agent("agt-1").unwrap().unwrap().last_seq, seq);
    }
}

// === change feed model check ===

#[derive(Clone, Debug)]
enum FeedOp {
    /// One apply call of one event (or a resend of the previous call).
    Apply(Op),
    /// One delta setting `wide/w0..wN` to a value: enough versions for several pages.
    Wide(usize, i64),
    /// Retention: every absent CI is retired.
    Retire,
    /// A record write (a commit without versions).
    Records(u8),
    /// The consumer reads one page of this size.
    Read(usize),
}

fn feed_op() -> impl Strategy<Value = FeedOp> {
    prop_oneof![
        6 => op().prop_map(FeedOp::Apply),
        1 => (1usize..250, 0i64..3).prop_map(|(n, v)| FeedOp::Wide(n, v)),
        1 => Just(FeedOp::Retire),
        1 => any::<u8>().prop_map(FeedOp::Records),
        4 => (1usize..60).prop_map(FeedOp::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// A consumer paging through the feed with arbitrary limits while applies, retention and
    /// record writes go on ends up with exactly the whole feed, which holds every version
    /// `ci_versions` knows exactly once; other limits and a restart change nothing. Reads
    /// come from the feed's tail in memory or from the tree (a small tail evicts, a store
    /// set up before the tail began reads its start from the tree), and both give the same.
    #[test]
    fn feed_pages_add_up_to_every_version_once(
        ops in prop::collection::vec(feed_op(), 1..24),
        limits in prop::collection::vec(1usize..100, 1..6),
        tail_bytes in prop::option::of(0usize..30_000),
    ) {
        let (dir, mut store, _host) = setup();
        if let Some(bytes) = tail_bytes {
            store.tail = feed_tail::FeedTail::new(store.commits.load(Ordering::Acquire), bytes);
        }
        let mut seq = 0u64;
        let mut last_call: Vec<v1::Event> = Vec::new();
        let mut cursor: Option<FeedPos> = None;
        let mut consumed: Vec<FeedEntry> = Vec::new();
        for op in &ops {
            match op {
                FeedOp::Apply(Op::Resend) => {
                    store.apply("agt-1", &last_call).unwrap();
                }
                FeedOp::Apply(op) => {
                    seq += 1;
                    last_call = vec![to_event(seq, op)];
                    store.apply("agt-1", &last_call).unwrap();
                }
                FeedOp::Wide(n, v) => {
                    seq += 1;
                    let changes = (0..*n)
                        .map(|i| change(v1::ChangeKind::Changed, "wide", &format!("w{i}"), *v))
                        .collect();
                    last_call = vec![delta(seq, changes)];
                    store.apply("agt-1", &last_call).unwrap();
                }
                FeedOp::Retire => {
                    store.retire_absent(SystemTime::now() + Duration::from_secs(3600)).unwrap();
                }
                FeedOp::Records(b) => {
                    store.write_records(&[put("feedtest", &format!("r{b}"), &[*b])]).unwrap();
                }
                FeedOp::Read(limit) => {
                    let page = store.feed(cursor.as_ref(), *limit).unwrap();
                    prop_assert!(page.len() <= *limit);
                    prop_assert!(cursor.as_ref().is_none_or(|c| page.iter().all(|e| e.pos > *c)));
                    if let Some(last) = page.last() {
                        cursor = Some(last.pos.clone());
                    }
                    consumed.extend(page);
                }
            }
        }
        consumed.extend(read_feed(&store, cursor, &limits));
        let full = read_feed(&store, None, &[MAX_FEED]);
        prop_assert_eq!(&consumed, &full);
        check_feed(&store, &full)?;
        let last = store.commits.load(Ordering::Acquire);
        // From the tree with no identity known (cold), then with every one known (warm).
        let cold = feed::Source { identities: &feed::Identities::default(), ..store.feed_source() };
        prop_assert_eq!(&feed::read(&cold, last, None, MAX_FEED).unwrap(), &full);
        let ids = &store.feed_source();
        let heads = |entries: Vec<FeedEntry>| -> Vec<FeedHead> {
            entries.into_iter().map(FeedHead::from).collect()
        };
        prop_assert_eq!(
            feed::read_heads(ids, last, None, MAX_FEED).unwrap(),
            heads(full.clone())
        );
        for e in full.iter().step_by(7) {
            let from_tree = feed::read(ids, last, Some(&e.pos), 50).unwrap();
            prop_assert_eq!(&from_tree, &store.feed(Some(&e.pos), 50).unwrap());
            // Heads: the same positions and identities, from the tail and from the tree.
            prop_assert_eq!(
                feed::read_heads(ids, last, Some(&e.pos), 50).unwrap(),
                heads(from_tree.clone())
            );
            prop_assert_eq!(store.feed_heads(Some(&e.pos), 50).unwrap(), heads(from_tree));
        }
        prop_assert_eq!(&read_feed(&store, None, &limits), &full);
        drop(store);
        let store = reopen(dir.path()).unwrap();
        prop_assert_eq!(&read_feed(&store, None, &limits), &full);
        let report = store.verify().unwrap();
        prop_assert!(report.is_consistent(), "{:?}", report.problems);
    }
}

// === throughput ===

/// Applies 100 000 CI changes (50 000 packages added, then each changed) in apply calls of
/// 500 changes (50 Delta events of 10), one batch and one flush per call, and prints
/// changes/s with the time split between building the batch (read, diff, encode), sled's
/// `apply_batch` and the flush, the rate of each half, the bytes on disk per change and the
/// process CPU time (the machine is shared: CPU time is the steadier figure). Then checks
/// the result (untimed): `verify` and one CI's history. Run it optimised:
/// `cargo test --release -p cmdb-collector --lib throughput -- --ignored --nocapture`
#[test]
#[ignore = "throughput measurement; run explicitly, ideally with --release"]
fn throughput_of_ci_changes() {
    const TOTAL: usize = 100_000;
    const PER_CALL: usize = 500;
    const PER_EVENT: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 256 << 20).unwrap();
    store
        .identify("agt-1", "inst-1", &identity("uuid-1"), SystemTime::now())
        .unwrap();
    let mut seq = 0u64;
    let mut written = 0u64;
    let (mut build, mut batch, mut flush) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut added = Duration::ZERO;
    let cpu_start = process_cpu();
    for call in 0..TOTAL / PER_CALL {
        let events: Vec<v1::Event> = (0..PER_CALL / PER_EVENT)
            .map(|e| {
                seq += 1;
                let changes = (0..PER_EVENT)
                    .map(|i| {
                        let n = (call * PER_CALL + e * PER_EVENT + i) % (TOTAL / 2);
                        let mut c = change(
                            v1::ChangeKind::Changed,
                            "package",
                            &format!("dpkg:package-{n}:amd64"),
                            (call * PER_CALL / (TOTAL / 2)) as i64,
                        );
                        for (k, v) in [
                            ("name", "package"),
                            ("arch", "amd64"),
                            ("manager", "dpkg"),
                            ("vendor", "Debian"),
                        ] {
                            c.new_attrs
                                .insert(k.into(), v1::Value::from(&AttrValue::Str(v.into())));
                        }
                        c
                    })
                    .collect();
                delta(seq, changes)
            })
            .collect();
        // The same steps as `Store::apply`, timed one by one.
        let t0 = std::time::Instant::now();
        let (out, t1) = store
            .write(|txn| {
                let out = apply::apply_events(txn, "agt-1", &events, SystemTime::now(), None)?;
                Ok((out, std::time::Instant::now()))
            })
            .unwrap();
        let t2 = std::time::Instant::now();
        store.flush().unwrap();
        let t3 = std::time::Instant::now();
        build += t1 - t0;
        batch += t2 - t1;
        flush += t3 - t2;
        written += out.ci_versions;
        if (call + 1) * PER_CALL == TOTAL / 2 {
            added = build + batch + flush;
            println!("first half: build {build:?}, sled batch {batch:?}, flush {flush:?}");
        }
    }
    let total = build + batch + flush;
    let cpu = process_cpu().zip(cpu_start).map(|(end, start)| end - start);
    assert_eq!(written, TOTAL as u64);
    let bytes = store.size_on_disk().unwrap();
    println!(
        "{TOTAL} CI changes in {:.2} s: {:.0} changes/s ({PER_CALL} per apply call); \
         build {build:?}, sled batch {batch:?}, flush {flush:?}; first half (new CIs) \
         {:.0}/s, second half (changed CIs) {:.0}/s; store {bytes} bytes ({} per change); \
         process CPU {cpu:?} (includes building the events)",
        total.as_secs_f64(),
        TOTAL as f64 / total.as_secs_f64(),
        (TOTAL / 2) as f64 / added.as_secs_f64(),
        (TOTAL / 2) as f64 / (total - added).as_secs_f64(),
        bytes / TOTAL as u64,
    );
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    assert_eq!((report.cis, report.versions), (50_001, TOTAL as u64 + 1));
    let host = store.agent("agt-1").unwrap().unwrap().host_id.unwrap();
    let history = versions(&store, &host, "package", "dpkg:package-7:amd64");
    let v = |a: &Attrs| a.get("v").and_then(AttrValue::as_i64);
    assert_eq!(
        history
            .iter()
            .map(|h| (h.version, v(&h.old_attrs), v(&h.attrs)))
            .collect::<Vec<_>>(),
        vec![(1, None, Some(0)), (2, Some(0), Some(1))]
    );
}

/// Reads back a change feed of 40 001 versions — 20 000 CIs of 17 classes (80 % packages,
/// like a real host) added, then 20 000 changes, in apply calls of 500 — in pages of 1 000,
/// and prints the cost per entry next to the cost of writing it, both timed here (the
/// machine is shared: compare the two, not runs across days). Run it optimised:
/// `cargo test --release -p cmdb-collector --lib feed_read_cost -- --ignored --nocapture`
#[test]
#[ignore = "feed cost measurement; run explicitly"]
fn feed_read_cost() {
    const CIS: usize = 20_000;
    const PER_CALL: usize = 500;
    let classes: Vec<String> = (1..17).map(|c| format!("class-{c:02}")).collect();
    let class_of = |n: usize| match n % 5 {
        0 => classes[(n / 5) % classes.len()].as_str(),
        _ => "package",
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 256 << 20).unwrap();
    store
        .identify("agt-1", "inst-1", &identity("uuid-1"), SystemTime::now())
        .unwrap();
    let mut seq = 0u64;
    let t0 = std::time::Instant::now();
    for round in 0..2i64 {
        for call in 0..CIS / PER_CALL {
            seq += 1;
            let changes = (call * PER_CALL..(call + 1) * PER_CALL)
                .map(|n| {
                    let mut c = change(
                        v1::ChangeKind::Changed,
                        class_of(n),
                        &format!("key-{n}"),
                        round,
                    );
                    c.new_attrs.insert(
                        "name".into(),
                        v1::Value::from(&AttrValue::Str(format!("item {n}"))),
                    );
                    c
                })
                .collect();
            store.apply("agt-1", &[delta(seq, changes)]).unwrap();
        }
    }
    let write = t0.elapsed();
    let cpu0 = process_cpu();
    let t1 = std::time::Instant::now();
    let mut n = 0usize;
    let mut after: Option<FeedPos> = None;
    loop {
        let page = store.feed(after.as_ref(), 1_000).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.pos.clone());
        n += page.len();
    }
    let read = t1.elapsed();
    let cpu = process_cpu().zip(cpu0).map(|(end, start)| end - start);
    assert_eq!(n, 2 * CIS + 1);
    println!(
        "feed: {n} entries in {read:?} = {:.1} µs/entry ({:.0}/s), process CPU {cpu:?}; \
         writing them took {write:?} = {:.1} µs/version (apply incl. flush)",
        read.as_secs_f64() * 1e6 / n as f64,
        n as f64 / read.as_secs_f64(),
        write.as_secs_f64() * 1e6 / n as f64,
    );
}

/// CPU time of this process so far/// CPU time of this process so far (user + system, 10 ms ticks), from /proc: on a shared
/// machine wall time says as much about the neighbours as about the store.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A store in `dir` with agent "a" and `deltas` deltas of `changes` package changes each.
fn store_with_changes(dir: &std::path::Path, deltas: u64, changes: usize) -> SledStore {
    let store = SledStore::open(dir, CACHE).unwrap();
    store
        .identify("a", "ia", &identity("U"), SystemTime::now())
        .unwrap();
    for seq in 1..=deltas {
        let changes = package_changes(changes, v1::ChangeKind::Changed, seq);
        store.apply("a", &[delta(seq, changes)]).unwrap();
    }
    assert!(store.verify().unwrap().is_consistent());
    store
}

/// Damage anywhere in sled's log: the store refuses to open (tail rolled back: the seal),
/// or `verify` reports what sled dropped, or everything acknowledged is intact.
#[test]
fn flipped_bytes_never_go_unnoticed() {
    let mut refused = 0;
    for offset in [0.02f64, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95] {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with_changes(dir.path(), 49, 20));
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        let at = (bytes.len() as f64 * offset) as usize;
        let end = (at + 64).min(bytes.len());
        bytes[at..end].iter_mut().for_each(|b| *b ^= 0x5a);
        std::fs::write(&db, &bytes).unwrap();
        match reopen(dir.path()) {
            Err(e) => {
                assert!(matches!(e, StoreError::Open { .. }), "{e}");
                refused += 1;
            }
            Ok(store) => {
                let report = store.verify().unwrap();
                if report.is_consistent() {
                    assert_eq!(
                        store.agent("a").unwrap().unwrap().last_seq,
                        49,
                        "at {offset}"
                    );
                    let cis = store.cis(&CiFilter::default()).unwrap();
                    let versions: usize = cis
                        .iter()
                        .map(|c| store.ci_versions(&c.id).unwrap().len())
                        .sum();
                    assert_eq!(versions, 20 * 49 + 1, "at {offset}: verify missed a loss");
                } else {
                    assert!(!report.problems.is_empty());
                }
            }
        }
    }
    assert!(
        refused > 0,
        "the seal never fired: the test no longer damages the live log"
    );
}

#[test]
fn heartbeats_are_read_at_once_survive_other_writes_and_reach_disk_by_flush() {
    let (dir, store) = open();
    store.identify("a", "ia", &identity("U1"), t(10)).unwrap();
    store.identify("b", "ib", &identity("U2"), t(10)).unwrap();
    assert!(store.record_heartbeat("a", 3, 300, t(20)).unwrap());
    assert!(store.record_heartbeat("b", 4, 400, t(21)).unwrap());
    // Read at once, by one agent and in the list.
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(
        (a.last_seen, a.outbox_events, a.outbox_bytes),
        (Some(t(20)), 3, 300)
    );
    let all = store.agents().unwrap();
    let b = all.iter().find(|r| r.agent_id == "b").unwrap();
    assert_eq!((b.last_seen, b.outbox_events), (Some(t(21)), 4));
    // A later write of the agent's record starts from the heartbeat, not from the tree.
    store.set_connected("a", true, t(30)).unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(
        (a.last_seen, a.outbox_events, a.connected),
        (Some(t(30)), 3, true)
    );
    // Store::flush writes the pending ones: they survive a reopen.
    store.flush().unwrap();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    let b = store.agent("b").unwrap().unwrap();
    assert_eq!(
        (b.last_seen, b.outbox_events, b.outbox_bytes),
        (Some(t(21)), 4, 400)
    );
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!((a.last_seen, a.outbox_events), (Some(t(30)), 3));
}

/// The history of every CI (all versions, oldest first) and the whole feed.
fn all_history(store: &SledStore) -> (Vec<Vec<CiVersion>>, Vec<FeedEntry>) {
    let mut cis = store.cis(&CiFilter::default()).unwrap();
    cis.sort_by(|a, b| a.id.cmp(&b.id));
    let history = cis
        .iter()
        .map(|c| store.ci_versions(&c.id).unwrap())
        .collect();
    (history, store.feed(None, MAX_FEED).unwrap())
}

/// Damage in the version log: never wrong data and never a panic. `verify` names it, and
/// the history reads that need the damaged page fail with `Corrupt`.
#[test]
fn damaged_version_log_is_reported_by_verify_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    drop(store_with_changes(dir.path(), 19, 20));
    let file = dir.path().join("versions").join("00000000.vlog");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.len() > 20 * 19 * 20,
        "the versions are in the log: {}",
        bytes.len()
    );
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let store = reopen(dir.path()).unwrap();
    let report = store.verify().unwrap();
    assert!(!report.is_consistent());
    assert!(
        report.problems.iter().any(|p| p.contains("checksum")),
        "{:?}",
        report.problems
    );
    let mut corrupt = 0;
    for c in store.cis(&CiFilter::default()).unwrap() {
        match store.ci_versions(&c.id) {
            Ok(versions) => assert_eq!(versions.len() as u64, c.version),
            Err(StoreError::Corrupt { .. }) => corrupt += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(corrupt > 0, "some history needs the damaged page");
    // Truncated to nothing: every history read fails the same way, none panics.
    std::fs::write(&file, b"").unwrap();
    assert!(!store.verify().unwrap().is_consistent());
}

/// A format-2 store (version pages inline in the tree) opens as it is: the same history
/// and feed, its marker becomes format 3, and new commits go to the version log.
#[test]
fn a_store_with_inline_pages_opens_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = store_with_changes(dir.path(), 5, 300);
        let before = all_history(&store);
        // What format 2 wrote: the pages themselves under the same keys.
        for kv in store.tree.scan_prefix(keys::VERSION) {
            let (k, value) = kv.unwrap();
            let page = store.vlog.page(&k, &value).unwrap().to_vec();
            assert_ne!(
                page,
                value.to_vec(),
                "format 3 keeps references in the tree"
            );
            store.tree.insert(k, page).unwrap();
        }
        store
            .tree
            .insert(keys::META_FORMAT, FORMAT_INLINE_PAGES)
            .unwrap();
        store.flush().unwrap();
        before
    };
    std::fs::remove_dir_all(dir.path().join("versions")).unwrap();
    let store = reopen(dir.path()).unwrap();
    assert_eq!(
        store.tree.get(keys::META_FORMAT).unwrap().as_deref(),
        Some(FORMAT)
    );
    assert!(store.verify().unwrap().is_consistent());
    assert_eq!(all_history(&store), before);
    let changes = package_changes(300, v1::ChangeKind::Changed, 6);
    store.apply("a", &[delta(6, changes)]).unwrap();
    assert!(store.verify().unwrap().is_consistent());
    let (history, feed) = all_history(&store);
    assert_eq!(feed.len(), before.1.len() + 300);
    assert!(history.iter().all(|h| h.len() == 6 || h.len() == 1));
}
