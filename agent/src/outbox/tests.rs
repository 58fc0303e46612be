//! Unit, restart, overflow and corruption tests. The model check is in `model_check.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cmdb_proto::v1;

use super::*;

pub(super) fn metrics(payload: usize) -> v1::Event {
    v1::Event {
        seq: 0,
        observed_at: None,
        kind: Some(v1::event::Kind::Metrics(v1::Metrics {
            window_start: None,
            window_seconds: 60,
            summaries: vec![v1::MetricSummary {
                name: "x".repeat(payload.max(1)),
                ..Default::default()
            }],
        })),
    }
}

pub(super) fn shutdown(reason: &str) -> v1::Event {
    v1::Event {
        seq: 0,
        observed_at: None,
        kind: Some(v1::event::Kind::Shutdown(v1::Shutdown {
            reason: reason.into(),
        })),
    }
}

pub(super) fn item_change(
    kind: v1::ChangeKind,
    key: &str,
    old: Option<i64>,
    new: Option<i64>,
) -> v1::ItemChange {
    let attrs = |v: Option<i64>| -> BTreeMap<String, v1::Value> {
        v.map(|v| {
            [(
                "v".to_owned(),
                v1::Value {
                    kind: Some(v1::value::Kind::Int(v)),
                },
            )]
            .into()
        })
        .unwrap_or_default()
    };
    v1::ItemChange {
        kind: kind as i32,
        class: "package".into(),
        key: key.into(),
        old_attrs: attrs(old),
        new_attrs: attrs(new),
    }
}

pub(super) fn delta_event(changes: Vec<v1::ItemChange>) -> v1::Event {
    v1::Event {
        seq: 0,
        observed_at: None,
        kind: Some(v1::event::Kind::Delta(v1::Delta {
            changes,
            content_hash: vec![7; 32],
            ..Default::default()
        })),
    }
}

pub(super) fn snapshot_event(items: usize) -> v1::Event {
    v1::Event {
        seq: 0,
        observed_at: None,
        kind: Some(v1::event::Kind::Snapshot(v1::Snapshot {
            inventory: Some(v1::Inventory {
                items: (0..items)
                    .map(|i| v1::Item {
                        class: "package".into(),
                        key: format!("k{i}"),
                        attrs: BTreeMap::new(),
                    })
                    .collect(),
                ..Default::default()
            }),
            content_hash: vec![1; 32],
        })),
    }
}

/// Opens, retrying (bounded) while sled's background thread of a just-dropped instance
/// still holds the directory lock: in-process reopens race with it, processes do not.
pub(super) fn open_retrying(cfg: OutboxConfig) -> Opened {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Outbox::open(cfg.clone()) {
            Ok(o) => return o,
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

pub(super) fn config(dir: &Path, max_bytes: u64) -> OutboxConfig {
    OutboxConfig {
        dir: dir.to_owned(),
        max_bytes,
        cache_bytes: 1 << 20,
    }
}

/// The outbox's sled database opened directly (to damage it), as the outbox opens it.
fn raw_db(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .segment_size(super::segment_size(dir))
        .open()
        .unwrap()
}

fn open(dir: &Path, max_bytes: u64) -> Outbox {
    let opened = open_retrying(config(dir, max_bytes));
    assert_eq!(opened.moved_aside, None);
    opened.outbox
}

fn kind_name(e: &v1::Event) -> &'static str {
    match e.kind {
        Some(v1::event::Kind::Snapshot(_)) => "snapshot",
        Some(v1::event::Kind::Delta(_)) => "delta",
        Some(v1::event::Kind::Metrics(_)) => "metrics",
        Some(v1::event::Kind::Shutdown(_)) => "shutdown",
        Some(v1::event::Kind::Gap(_)) => "gap",
        Some(v1::event::Kind::Heartbeat(_)) => "heartbeat",
        None => "none",
    }
}

fn all(outbox: &Outbox) -> Vec<v1::Event> {
    outbox.read_after(0, usize::MAX, usize::MAX).unwrap()
}

fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

// === basics ===

#[test]
fn seqs_start_at_one_and_events_come_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), DEFAULT_MAX_BYTES);
    assert_eq!((outbox.last_seq(), outbox.acked_seq()), (0, 0));
    let mut e = metrics(10);
    e.seq = 99; // overwritten
    assert_eq!(outbox.append(e).unwrap(), 1);
    assert_eq!(
        outbox.append_all(vec![shutdown("a"), metrics(20)]).unwrap(),
        vec![2, 3]
    );
    let got = all(&outbox);
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(kind_name(&got[1]), "shutdown");

    assert_eq!(outbox.read_after(1, 1, usize::MAX).unwrap()[0].seq, 2);
    // At least one event even when it alone exceeds max_bytes.
    assert_eq!(outbox.read_after(0, 10, 1).unwrap().len(), 1);
    assert!(outbox.read_after(0, 0, 100).unwrap().is_empty());
    assert!(outbox.read_after(3, 10, 100).unwrap().is_empty());
    assert!(outbox.read_after(u64::MAX, 10, 100).unwrap().is_empty());

    let stats = outbox.stats();
    assert_eq!(stats.events, 3);
    let encoded: u64 = got
        .iter()
        .map(|e| txn::accounted(prost::Message::encoded_len(e)))
        .sum();
    assert_eq!(stats.bytes, encoded);

    outbox.ack(2).unwrap();
    outbox.ack(1).unwrap(); // below the watermark: a no-op
    assert_eq!(outbox.acked_seq(), 2);
    assert_eq!(
        all(&outbox).iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(outbox.stats().events, 1);
    outbox.ack(3).unwrap();
    assert_eq!(outbox.stats().bytes, 0);
    assert_eq!(
        outbox.append(metrics(1)).unwrap(),
        4,
        "seqs are never reused"
    );
}

#[test]
fn refuses_heartbeats_empty_events_and_events_larger_than_the_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), MIN_MAX_BYTES);
    let hb = v1::Event {
        seq: 0,
        observed_at: None,
        kind: Some(v1::event::Kind::Heartbeat(v1::Heartbeat::default())),
    };
    assert!(matches!(
        outbox.append(hb.clone()),
        Err(OutboxError::Heartbeat)
    ));
    assert!(matches!(
        outbox.append(v1::Event::default()),
        Err(OutboxError::NoKind)
    ));
    assert!(matches!(
        outbox.append(metrics(8192)),
        Err(OutboxError::TooLarge { .. })
    ));
    // A batch with one bad event stores nothing.
    assert!(outbox.append_all(vec![metrics(1), hb]).is_err());
    assert_eq!(outbox.last_seq(), 0);
    assert!(matches!(
        Outbox::open(config(&tmp.path().join("o2"), 100)),
        Err(OutboxError::Config(_))
    ));
}

#[test]
fn a_restart_keeps_events_seqs_watermark_and_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    {
        let outbox = open(&dir, DEFAULT_MAX_BYTES);
        for i in 0..5 {
            outbox.append(metrics(10 + i)).unwrap();
        }
        outbox.ack(2).unwrap();
    }
    let outbox = open(&dir, DEFAULT_MAX_BYTES);
    assert_eq!((outbox.last_seq(), outbox.acked_seq()), (5, 2));
    let got = outbox.read_after(outbox.acked_seq(), 100, 1 << 20).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(outbox.stats().events, 3);
    assert_eq!(outbox.append(metrics(1)).unwrap(), 6);
    outbox.ack(6).unwrap();
    drop(outbox);
    // Everything acknowledged and trimmed: the counter still continues.
    let outbox = open(&dir, DEFAULT_MAX_BYTES);
    assert_eq!(outbox.append(metrics(1)).unwrap(), 7);
}

#[test]
fn a_second_open_of_a_live_outbox_fails_without_moving_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let outbox = open(&dir, DEFAULT_MAX_BYTES);
    outbox.append(metrics(1)).unwrap();
    assert!(matches!(
        Outbox::open(config(&dir, DEFAULT_MAX_BYTES)),
        Err(OutboxError::Open { .. })
    ));
    assert_eq!(all(&outbox).len(), 1);
    let siblings = fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(siblings, 2, "only the directory and its seq file");
}

#[test]
fn an_ack_beyond_the_last_seq_moves_the_counter_past_it() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), DEFAULT_MAX_BYTES);
    outbox.append(metrics(1)).unwrap();
    outbox.ack(5000).unwrap();
    assert_eq!(outbox.acked_seq(), 5000);
    assert!(outbox.take_snapshot_required());
    assert!(!outbox.take_snapshot_required());
    assert_eq!(outbox.append(metrics(1)).unwrap(), 5001);
}

#[test]
fn trimming_a_large_backlog_works_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), DEFAULT_MAX_BYTES);
    let n = TRIM_CHUNK * 2 + 17;
    outbox
        .append_all((0..n).map(|_| metrics(8)).collect())
        .unwrap();
    outbox.ack(n as u64 - 3).unwrap();
    assert_eq!(outbox.stats().events, 3);
    assert_eq!(outbox.acked_seq(), n as u64 - 3);
    assert_eq!(all(&outbox).len(), 3);
}

// === overflow ===

#[test]
fn the_oldest_metrics_go_first_and_inventory_is_never_given_up_for_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), 8192);
    let d = outbox
        .append(delta_event(vec![item_change(
            v1::ChangeKind::Added,
            "a",
            None,
            Some(1),
        )]))
        .unwrap();
    let mut seqs = Vec::new();
    for _ in 0..40 {
        seqs.push(outbox.append(metrics(400)).unwrap());
    }
    let stats = outbox.stats();
    assert!(stats.bytes <= 8192);
    assert!(stats.dropped_metrics > 0);
    let got = all(&outbox);
    assert_eq!(got[0].seq, d, "the delta is still there");
    let kept: Vec<u64> = got[1..].iter().map(|e| e.seq).collect();
    assert_eq!(
        kept,
        seqs[seqs.len() - kept.len()..],
        "the newest metrics are kept"
    );
    assert_eq!(stats.dropped_metrics as usize, seqs.len() - kept.len());

    // Fill the rest with inventory: a new metrics event is dropped itself.
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), 8192);
    outbox.append(snapshot_event(420)).unwrap();
    let before = outbox.stats();
    outbox.append(metrics(3000)).unwrap();
    let after = outbox.stats();
    assert_eq!(after.dropped_metrics, before.dropped_metrics + 1);
    assert_eq!(after.events, 1);
    assert_eq!(kind_name(&all(&outbox)[0]), "snapshot");
}

#[test]
fn superseded_changes_are_compacted_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), 8192);
    use v1::ChangeKind::{Added, Changed, Removed};
    let mut seqs = Vec::new();
    // Item "a" changes in every delta; each delta also carries a unique change.
    let first = outbox
        .append(delta_event(vec![
            item_change(Added, "a", None, Some(0)),
            item_change(Added, "gone", None, Some(0)),
        ]))
        .unwrap();
    for i in 1..60 {
        let mut changes = vec![item_change(Changed, "a", Some(i - 1), Some(i))];
        if i == 30 {
            changes.push(item_change(Removed, "gone", Some(0), None));
        }
        seqs.push(outbox.append(delta_event(changes)).unwrap());
    }
    let stats = outbox.stats();
    assert!(stats.compacted_changes > 0, "{stats:?}");
    assert_eq!(stats.gaps, 0);
    assert!(stats.bytes <= 8192);
    let got = all(&outbox);
    // Every remaining change to "a" is the last one; its old attrs are where the chain began.
    let a_changes: Vec<(u64, &v1::ItemChange)> = got
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::event::Kind::Delta(d)) => Some((e.seq, d)),
            _ => None,
        })
        .flat_map(|(seq, d)| {
            d.changes
                .iter()
                .filter(|c| c.key == "a")
                .map(move |c| (seq, c))
        })
        .collect();
    let (last_seq, last) = a_changes.last().unwrap();
    assert_eq!(*last_seq, *seqs.last().unwrap());
    assert_eq!(
        last.new_attrs["v"].kind,
        Some(v1::value::Kind::Int(59)),
        "the final state is kept"
    );
    assert!(!outbox.take_snapshot_required());
    let _ = first;
}

#[test]
fn past_compaction_a_gap_and_a_snapshot_replace_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), 8192);
    use v1::ChangeKind::Added;
    let shut = outbox.append(shutdown("upgrade")).unwrap();
    // Distinct items: nothing to compact.
    let mut last = 0;
    for i in 0..100 {
        let key = format!("item-{i:03}-{}", "p".repeat(40));
        match outbox.append(delta_event(vec![item_change(Added, &key, None, Some(i))])) {
            Ok(seq) => last = seq,
            Err(e) => panic!("{e}"),
        }
    }
    let stats = outbox.stats();
    assert!(stats.gaps >= 1, "{stats:?}");
    assert!(stats.dropped_inventory_events > 0);
    assert!(stats.bytes <= 8192);
    assert!(outbox.take_snapshot_required());
    let got = all(&outbox);
    assert_eq!(got[0].seq, shut, "shutdown events are never dropped");
    let gap = got
        .iter()
        .find_map(|e| match &e.kind {
            Some(v1::event::Kind::Gap(g)) => Some(g.clone()),
            _ => None,
        })
        .unwrap();
    assert!(gap.dropped_inventory_changes > 0);

    // Deltas are superseded until the snapshot arrives.
    let before = outbox.stats().dropped_inventory_events;
    let s = outbox
        .append(delta_event(vec![item_change(Added, "x", None, Some(1))]))
        .unwrap();
    assert!(s > last);
    assert_eq!(outbox.stats().dropped_inventory_events, before + 1);
    assert!(all(&outbox).iter().all(|e| e.seq != s));
    let snap = outbox.append(snapshot_event(3)).unwrap();
    let d = outbox
        .append(delta_event(vec![item_change(Added, "y", None, Some(1))]))
        .unwrap();
    let seqs: Vec<u64> = all(&outbox).iter().map(|e| e.seq).collect();
    assert!(seqs.contains(&snap) && seqs.contains(&d));
    assert!(!outbox.take_snapshot_required());
}

#[test]
fn snapshot_required_survives_a_restart_until_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    {
        let outbox = open(&dir, 8192);
        for i in 0..100 {
            let key = format!("item-{i:03}-{}", "p".repeat(40));
            outbox
                .append(delta_event(vec![item_change(
                    v1::ChangeKind::Added,
                    &key,
                    None,
                    Some(i),
                )]))
                .unwrap();
        }
    }
    let outbox = open(&dir, 8192);
    assert!(outbox.take_snapshot_required());
    assert!(!outbox.take_snapshot_required());
    drop(outbox);
    // Taken but the snapshot never came (a crash): it is required again.
    let outbox = open(&dir, 8192);
    assert!(outbox.take_snapshot_required());
    outbox.append(snapshot_event(1)).unwrap();
    drop(outbox);
    let outbox = open(&dir, 8192);
    assert!(!outbox.take_snapshot_required());
}

#[test]
fn shutdowns_and_gaps_alone_can_fill_it() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = open(&tmp.path().join("outbox"), MIN_MAX_BYTES);
    let mut stored = 0;
    let mut full = false;
    for _ in 0..200 {
        match outbox.append(shutdown(&"r".repeat(100))) {
            Ok(_) => stored += 1,
            Err(OutboxError::Full { .. }) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full);
    assert_eq!(all(&outbox).len(), stored);
    assert!(outbox.stats().bytes <= MIN_MAX_BYTES);
}

// === corruption ===

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Fills an outbox and closes it, returning the last seq.
fn filled(dir: &Path) -> u64 {
    let outbox = open(dir, DEFAULT_MAX_BYTES);
    for i in 0..50 {
        outbox.append(metrics(100 + i)).unwrap();
    }
    outbox.ack(10).unwrap();
    outbox.last_seq()
}

/// Opens a damaged outbox: it must not panic, and every seq it hands out must be above
/// everything handed out before.
fn reopen_damaged(dir: &Path, last: u64) -> Opened {
    let opened = open_retrying(config(dir, DEFAULT_MAX_BYTES));
    let outbox = &opened.outbox;
    assert!(outbox.last_seq() >= last, "{} < {last}", outbox.last_seq());
    // Whatever is readable reads without error.
    let _ = outbox.read_after(0, usize::MAX, usize::MAX).unwrap();
    let seq = outbox.append(metrics(5)).unwrap();
    assert!(seq > last);
    if let Some(moved) = &opened.moved_aside {
        assert!(moved.exists());
        assert!(
            moved
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("outbox.corrupt-")
        );
        assert!(outbox.take_snapshot_required());
        assert!(all(outbox).iter().any(|e| kind_name(e) == "gap"));
    }
    opened
}

#[test]
fn flipped_bytes_anywhere_never_panic_and_never_reuse_a_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let last = filled(&pristine);
    let files = files_under(&pristine);
    let mut moved = 0;
    for (fi, file) in files.iter().enumerate() {
        let len = fs::metadata(file).unwrap().len();
        // A handful of spread positions per file, bounded.
        let positions: Vec<u64> = if len == 0 {
            vec![]
        } else {
            (0..16u64)
                .map(|i| (len * i / 16 + fi as u64 * 7) % len)
                .collect()
        };
        for pos in positions {
            let case = tmp.path().join(format!("case-{fi}-{pos}"));
            let dir = case.join("outbox");
            copy_dir(&pristine, &dir);
            fs::copy(
                seqfile::path_for(&pristine).unwrap(),
                seqfile::path_for(&dir).unwrap(),
            )
            .unwrap();
            let rel = file.strip_prefix(&pristine).unwrap();
            let mut bytes = fs::read(dir.join(rel)).unwrap();
            bytes[pos as usize] ^= 0xff;
            fs::write(dir.join(rel), &bytes).unwrap();
            let opened = reopen_damaged(&dir, last);
            moved += usize::from(opened.moved_aside.is_some());
            drop(opened);
            fs::remove_dir_all(&case).unwrap();
        }
    }
    eprintln!("{} files, {moved} damaged copies moved aside", files.len());
}

#[test]
fn truncated_files_never_panic_and_never_reuse_a_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let last = filled(&pristine);
    for (fi, file) in files_under(&pristine).iter().enumerate() {
        let len = fs::metadata(file).unwrap().len();
        for keep in [0, len / 3, len.saturating_sub(1)] {
            let case = tmp.path().join(format!("trunc-{fi}-{keep}"));
            let dir = case.join("outbox");
            copy_dir(&pristine, &dir);
            fs::copy(
                seqfile::path_for(&pristine).unwrap(),
                seqfile::path_for(&dir).unwrap(),
            )
            .unwrap();
            let rel = file.strip_prefix(&pristine).unwrap();
            let f = fs::OpenOptions::new()
                .write(true)
                .open(dir.join(rel))
                .unwrap();
            f.set_len(keep).unwrap();
            drop(reopen_damaged(&dir, last));
            fs::remove_dir_all(&case).unwrap();
        }
    }
}

#[test]
fn a_garbage_directory_is_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    // Junk where sled expects its files.
    let dir = tmp.path().join("outbox");
    let last = filled(&dir);
    for f in files_under(&dir) {
        let len = fs::metadata(&f).unwrap().len() as usize;
        fs::write(
            &f,
            (0..len.max(64))
                .map(|i| (i * 31 % 251) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    }
    let opened = reopen_damaged(&dir, last);
    assert!(opened.moved_aside.is_some());

    // A regular file where the directory should be.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    fs::write(&dir, b"not a directory").unwrap();
    let opened = open_retrying(config(&dir, DEFAULT_MAX_BYTES));
    assert!(opened.moved_aside.is_some());
    assert!(
        opened.outbox.append(metrics(1)).unwrap() > 1_600_000_000_000,
        "no side file: a clock floor"
    );
}

#[test]
fn an_undecodable_meta_record_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let last = filled(&dir);
    {
        let db = raw_db(&dir);
        db.open_tree("meta")
            .unwrap()
            .insert(record::META_KEY, &b"garbage"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let opened = reopen_damaged(&dir, last);
    assert!(opened.moved_aside.is_some());
    // With the side file gone as well, the clock keeps seqs monotonic.
    drop(opened);
    let tmp2 = tempfile::tempdir().unwrap();
    let dir2 = tmp2.path().join("outbox");
    let last2 = filled(&dir2);
    fs::remove_file(seqfile::path_for(&dir2).unwrap()).unwrap();
    {
        let db = raw_db(&dir2);
        db.open_tree("meta")
            .unwrap()
            .insert(record::META_KEY, &b"garbage"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let opened = reopen_damaged(&dir2, last2);
    assert!(
        opened.outbox.last_seq() > 1_600_000_000_000,
        "a clock floor"
    );
}

#[test]
fn an_undecodable_event_is_skipped_counted_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    filled(&dir);
    {
        let db = raw_db(&dir);
        db.open_tree("events")
            .unwrap()
            .insert(record::seq_key(20), &[0xff, 0xff, 0xff][..])
            .unwrap();
        db.flush().unwrap();
    }
    let outbox = open(&dir, DEFAULT_MAX_BYTES);
    let got = all(&outbox);
    assert!(got.iter().all(|e| e.seq != 20));
    assert_eq!(got.len(), 39);
    assert_eq!(outbox.stats().corrupt_events, 1);
    assert_eq!(outbox.stats().events, 39 + 1, "the rest plus a Gap");
    assert!(outbox.take_snapshot_required());
    let again = all(&outbox);
    assert_eq!(kind_name(again.last().unwrap()), "gap");
}

#[test]
fn a_store_that_lost_durable_events_is_noticed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let last = filled(&dir);
    // The store as it was before the last appends (simulated: remove it, keep the side file).
    fs::remove_dir_all(&dir).unwrap();
    let outbox = open(&dir, DEFAULT_MAX_BYTES);
    assert!(outbox.last_seq() >= last);
    assert!(outbox.take_snapshot_required());
    assert_eq!(kind_name(&all(&outbox)[0]), "gap");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

// === space ===

/// sled's space amplification for the outbox's insert-then-delete pattern, 10 000 events of
/// 1 KiB (about 10 MiB of payload): appended and acknowledged one at a time (a connected
/// agent), then appended as a backlog and acknowledged at the end (an outage). Prints the
/// directory sizes; the figures are in the module doc. Runs under a watchdog: this write
/// pattern is the one that deadlocked sled 0.34 before every commit was flushed.
#[test]
fn space_amplification() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let worker = std::thread::spawn(move || {
        let outbox = open(&dir, DEFAULT_MAX_BYTES);
        let started = std::time::Instant::now();
        let mut peak = 0;
        for i in 0..10_000u64 {
            let seq = outbox.append(metrics(1024)).unwrap();
            outbox.ack(seq).unwrap();
            if i % 1000 == 999 {
                peak = peak.max(dir_size(&dir));
            }
        }
        let steady = started.elapsed();
        let mut backlog_peak = 0;
        for _ in 0..10 {
            outbox
                .append_all((0..1000).map(|_| metrics(1024)).collect())
                .unwrap();
            backlog_peak = backlog_peak.max(dir_size(&dir));
        }
        let live = outbox.stats().bytes;
        outbox.ack(outbox.last_seq()).unwrap();
        let after_ack = dir_size(&dir);
        drop(outbox);
        let closed = dir_size(&dir);
        eprintln!(
            "space amplification: one at a time: {steady:?}, directory peak {} KiB; backlog of \
             {} KiB: directory peak {} KiB, {} KiB after the ack, {} KiB after close",
            peak / 1024,
            live / 1024,
            backlog_peak / 1024,
            after_ack / 1024,
            closed / 1024,
        );
        let _ = tx.send((peak, backlog_peak, live));
    });
    let (peak, backlog_peak, live) = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the outbox hung (sled deadlock?)");
    worker.join().unwrap();
    assert!(peak < 16 << 20, "{peak}");
    assert!(backlog_peak < 4 * live, "{backlog_peak} for {live}");
}

#[test]
fn dropped_metrics_are_reported_by_a_gap_without_touching_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(&dir.path().join("ob"), 8 * 1024);
    assert!(
        !outbox.report_dropped_metrics().unwrap(),
        "nothing dropped yet"
    );
    for _ in 0..40 {
        outbox.append(metrics(400)).unwrap();
    }
    let dropped = outbox.stats().dropped_metrics;
    assert!(dropped > 0);
    assert!(outbox.report_dropped_metrics().unwrap());
    assert!(!outbox.report_dropped_metrics().unwrap(), "reported once");
    let events = outbox.read_after(0, 1000, usize::MAX).unwrap();
    let gaps: Vec<&v1::Gap> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::event::Kind::Gap(g)) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1);
    // Every drop so far is in the Gap (including any made to fit the Gap itself).
    assert_eq!(gaps[0].dropped_metrics, outbox.stats().dropped_metrics);
    assert_eq!(gaps[0].dropped_inventory_changes, 0);
    assert!(
        !outbox.take_snapshot_required(),
        "metrics loss needs no snapshot"
    );
    assert!(outbox.stats().bytes <= 8 * 1024);
}

/// Draining a cold backlog with sled's cache at `cache_bytes`: the time to read and ack all
/// of it, 500 events per read, as the transport does after an outage. A measurement, not a
/// check (`cargo test --release -p cmdb-agent --lib drain_cost -- --ignored --nocapture`);
/// docs/BENCHMARKS.md has the figures behind the default `[outbox] cache_bytes`.
#[test]
#[ignore = "measurement"]
fn drain_cost() {
    const EVENTS: u64 = 20_000;
    for round in 0..3 {
        for cache_bytes in [1u64 << 20, 256 << 10] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = OutboxConfig {
                dir: dir.path().join("ob"),
                max_bytes: 1 << 30,
                cache_bytes,
            };
            {
                let outbox = open_retrying(cfg.clone()).outbox;
                for _ in 0..EVENTS {
                    outbox.append(metrics(2048)).unwrap();
                }
            }
            let outbox = open_retrying(cfg).outbox;
            let started = std::time::Instant::now();
            let mut read = 0u64;
            loop {
                let batch = outbox.read_after(outbox.acked_seq(), 500, 1 << 20).unwrap();
                let Some(last) = batch.last() else { break };
                read += batch.len() as u64;
                outbox.ack(last.seq).unwrap();
            }
            assert_eq!(read, EVENTS);
            println!(
                "round {round}: cache {} KiB: {EVENTS} events drained in {:.0} ms",
                cache_bytes >> 10,
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

/// Resident memory over many append + ack cycles of one metrics event (what a quiet agent
/// does every minute): ~8 bytes a cycle when written (4 000 → 40 000 cycles: +284 KiB
/// anonymous), the size of a sled page-table slot: sled hands out a new page id per
/// cycle. Ignored: it reads its own RSS;
/// `cargo test --release -p cmdb-agent --lib cycle_rss -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn cycle_rss() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_retrying(OutboxConfig::new(dir.path().join("ob"))).outbox;
    let grown = crate::rss_probe::grown_over(40_000, 4_000, "cycles", |_| {
        let seq = outbox.append(metrics(1500)).unwrap();
        outbox.ack(seq).unwrap();
    });
    assert!(
        grown < 1024,
        "anonymous memory grew {grown} KiB over 36 000 cycles"
    );
}

/// Resident memory while a backlog builds up (the collector unreachable): sled's cache
/// (256 KiB by default) must bound what stays in memory however long the outage. Before
/// vendored sled gave a small cache fewer LRU shards, pages written once were rarely
/// evicted: 7 000 events (~14 MiB) queued up left 3.7 MiB more resident; now 0.6–0.7 MiB
/// (docs/BENCHMARKS.md, "Resident agent footprint"). Ignored: it reads its own RSS;
/// `cargo test --release -p cmdb-agent --lib backlog_rss -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn backlog_rss() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_retrying(OutboxConfig::new(dir.path().join("ob"))).outbox;
    let grown = crate::rss_probe::grown_over(8_000, 1_000, "events pending", |_| {
        outbox.append(metrics(2048)).unwrap();
    });
    assert!(
        grown < 2 * 1024,
        "anonymous memory grew {grown} KiB while 7 000 events (~14 MiB) queued up"
    );
}

// === sled's segment size ===

#[test]
fn a_new_outbox_uses_small_segments_and_an_older_one_keeps_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let conf_size = |dir: &Path| {
        super::persisted_segment_size(&String::from_utf8_lossy(
            &fs::read(dir.join("conf")).unwrap(),
        ))
    };

    let fresh = tmp.path().join("fresh");
    drop(open(&fresh, DEFAULT_MAX_BYTES));
    assert_eq!(conf_size(&fresh), Some(super::SEGMENT_BYTES));

    // A store an older agent made with sled's default segment size (512 KiB): it opens
    // as it is (`open` asserts that nothing was moved aside), keeps its segment size, and
    // keeps what is appended across a reopen.
    let older = tmp.path().join("older");
    drop(
        sled::Config::new()
            .path(&older)
            .segment_size(512 * 1024)
            .flush_every_ms(None)
            .open()
            .unwrap(),
    );
    let seq = {
        let outbox = open(&older, DEFAULT_MAX_BYTES);
        outbox.append(metrics(100)).unwrap()
    };
    let outbox = open(&older, DEFAULT_MAX_BYTES);
    assert_eq!(
        all(&outbox).iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq]
    );
    assert_eq!(conf_size(&older), Some(512 * 1024));
}

#[test]
fn the_segment_size_is_read_from_sleds_conf_text() {
    assert_eq!(
        super::persisted_segment_size(
            "segment_size: 524288\nuse_compression: false\nversion: 0.34\n"
        ),
        Some(524_288)
    );
    assert_eq!(
        super::persisted_segment_size("segment_size: 262144"),
        Some(262_144)
    );
    for bad in [
        "",
        "use_compression: false\n",
        "segment_size: 300000\n",
        "segment_size: 128\n",
        "segment_size: 33554432\n",
        "segment_size: -1\n",
        "segment_size: 99999999999999999999999\n",
        "segment_size:\n",
    ] {
        assert_eq!(super::persisted_segment_size(bad), None, "{bad:?}");
    }
}

proptest::proptest! {
    #[test]
    fn reading_the_segment_size_never_panics_and_finds_what_sled_writes(
        text in proptest::prelude::any::<String>(),
        shift in 8u32..=24,
    ) {
        let _ = super::persisted_segment_size(&text);
        let size = 1usize << shift;
        let written = format!("segment_size: {size}\nuse_compression: false\nversion: 0.34\n");
        proptest::prop_assert_eq!(super::persisted_segment_size(&written), Some(size));
    }
}
