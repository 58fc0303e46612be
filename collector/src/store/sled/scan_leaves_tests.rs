//! The vendored sled's `Tree::scan_leaves` (vendor/sled/PATCHED.md): the same items as
//! `Tree::range` for any range, across leaf boundaries, and sane under concurrent writes;
//! both with the leaves in sled's cache and with most of them not resident (a reopened
//! store far larger than its cache), when `scan_leaves` reads them straight from the log.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;

fn db() -> sled::Db {
    sled::Config::new().temporary(true).open().unwrap()
}

fn by_range(
    tree: &sled::Tree,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree.range::<Vec<u8>, _>((lo.clone(), hi.clone()))
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn by_leaves(
    tree: &sled::Tree,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    tree.scan_leaves::<Vec<u8>, _, _>((lo.clone(), hi.clone()), |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    out
}

fn bound(kind: u8, key: Vec<u8>) -> Bound<Vec<u8>> {
    match kind % 3 {
        0 => Bound::Included(key),
        1 => Bound::Excluded(key),
        _ => Bound::Unbounded,
    }
}

/// Keys over a small alphabet share long prefixes (sled prefix-encodes keys per leaf).
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![0u8, 1, b'a', b'b', 254, 255]),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scan_leaves_is_range(
        keys in prop::collection::btree_set(key(), 0..400),
        lo in key(),
        hi in key(),
        lo_kind in 0u8..3,
        hi_kind in 0u8..3,
    ) {
        let db = db();
        for (i, k) in keys.iter().enumerate() {
            // Values of both sled representations: inline (short) and shared (long).
            let v = if i % 2 == 0 { vec![i as u8; 3] } else { vec![i as u8; 40] };
            db.insert(k, v).unwrap();
        }
        let (lo, hi) = (bound(lo_kind, lo), bound(hi_kind, hi));
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) = (&lo, &hi) {
            // `range` panics on an inverted range, as BTreeMap does.
            prop_assume!(l <= h);
        }
        prop_assert_eq!(by_leaves(&db, &lo, &hi), by_range(&db, &lo, &hi));
    }
}

/// Many leaves (sled splits a leaf past 16 items), ranges starting and ending on, between,
/// before and after keys, an early stop.
#[test]
fn scan_leaves_across_leaves() {
    let db = db();
    for i in 0..5_000u32 {
        db.insert(
            format!("c/host-{:03}\0package\0ci-{i:016x}", i / 800),
            i.to_be_bytes().repeat(i as usize % 9),
        )
        .unwrap();
    }
    db.insert(b"a", b"before").unwrap();
    db.insert(b"z", b"after").unwrap();
    let all = by_range(&db, &Bound::Unbounded, &Bound::Unbounded);
    assert_eq!(all.len(), 5_002);
    assert_eq!(by_leaves(&db, &Bound::Unbounded, &Bound::Unbounded), all);
    let at = |i: usize| all[i].0.clone();
    let mut between = at(1_234);
    between.push(0);
    for (lo, hi) in [
        (Bound::Included(at(17)), Bound::Excluded(at(18))),
        (Bound::Included(at(17)), Bound::Included(at(17))),
        (Bound::Excluded(at(17)), Bound::Included(at(4_000))),
        (Bound::Included(between.clone()), Bound::Unbounded),
        (Bound::Excluded(between.clone()), Bound::Excluded(at(4_999))),
        (
            Bound::Included(b"c/host-002\0".to_vec()),
            Bound::Excluded(b"c/host-002\x01".to_vec()),
        ),
        (
            Bound::Included(b"c/host-009\0".to_vec()),
            Bound::Excluded(b"c/host-009\x01".to_vec()),
        ),
        (Bound::Included(b"zz".to_vec()), Bound::Unbounded),
        (Bound::Unbounded, Bound::Excluded(b"a".to_vec())),
    ] {
        assert_eq!(
            by_leaves(&db, &lo, &hi),
            by_range(&db, &lo, &hi),
            "{lo:?}..{hi:?}"
        );
    }
    let host2 = by_leaves(
        &db,
        &Bound::Included(b"c/host-002\0".to_vec()),
        &Bound::Excluded(b"c/host-002\x01".to_vec()),
    );
    assert_eq!(host2.len(), 800);

    let mut seen = 0;
    db.scan_leaves::<&[u8], _, _>(.., |_, _| {
        seen += 1;
        seen < 100
    })
    .unwrap();
    assert_eq!(seen, 100);
}

/// Writes racing with scans (leaves splitting and merging under the scan) neither crash it
/// nor make it repeat, reorder, overshoot or lose a key that stays put.
#[test]
fn scan_leaves_under_concurrent_writes() {
    let db = db();
    let key = churn_key;
    // Even keys stay; odd keys come and go.
    for i in (0..6_000).step_by(2) {
        db.insert(key(i), b"stable").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    for i in (1 + 2 * w..6_000).step_by(4) {
                        if round.is_multiple_of(2) {
                            db.insert(key(i), vec![7u8; (i % 50) as usize]).unwrap();
                        } else {
                            db.remove(key(i)).unwrap();
                        }
                    }
                    round += 1;
                }
            })
        })
        .collect();
    for n in 0..60u32 {
        let (lo, hi) = (n * 97 % 3_000, 3_000 + n * 31 % 3_000);
        scan_while_odd_keys_churn(&db, lo, hi);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}

/// A store with a 64 KiB cache: past the first few dozen leaves read, the cache evicts and
/// `scan_leaves` reads leaves that are not resident straight from the log. Reopening a store
/// dropped a moment ago waits (bounded) for sled's background threads to let go of the
/// directory lock, as `tests::reopen` does.
fn cold_db(dir: &Path) -> sled::Db {
    let open = || {
        sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024)
            .open()
    };
    for _ in 0..250 {
        match open() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
    open().unwrap()
}

const COLD_ITEMS: u32 = 20_000;

fn cold_key(i: u32) -> Vec<u8> {
    format!("c/host-{:04}\0package\0ci-{i:08x}", i / 500).into_bytes()
}

/// Empty, short (inline) and longer values, and a few of 200 000 bytes, whose leaves sled
/// stores as blob files of their own.
fn cold_value(i: u32) -> Vec<u8> {
    match i {
        _ if i % 6_007 == 17 => vec![i as u8; 200_000],
        _ => i.to_be_bytes().repeat(i as usize % 11),
    }
}

/// Whether item `i` is still there after `write_cold` (every 17th is removed again).
fn cold_live(i: u32) -> bool {
    i % 17 != 5
}

/// Writes `COLD_ITEMS` items (~1 MB, ~16 times the cache) in a scattered order, then
/// overwrites every third and removes every 17th (so that many leaves are stored as a base
/// plus set and delete links), plus two outliers; flushes, closes and reopens the store,
/// so that no leaf is resident, then reads every key twice: sled's cache applies accesses
/// in batches (64 per shard of 256), so it only evicts, and `scan_leaves` only reads from
/// the log once the cache has evicted, after that many (`range` alone touches too few
/// pages for that).
fn write_cold(dir: &Path) -> sled::Db {
    let order = || (0..COLD_ITEMS).map(|j| j * 7_919 % COLD_ITEMS);
    {
        let db = cold_db(dir);
        for i in order() {
            db.insert(cold_key(i), cold_value(i + 1)).unwrap();
        }
        for i in order() {
            if !cold_live(i) {
                db.remove(cold_key(i)).unwrap();
            } else if i % 3 == 0 {
                db.insert(cold_key(i), cold_value(i)).unwrap();
            }
        }
        db.insert(b"a", b"before").unwrap();
        db.insert(b"z", b"after").unwrap();
        db.flush().unwrap();
    }
    let db = cold_db(dir);
    touch(&db, (0..COLD_ITEMS).filter(|&i| cold_live(i)).map(cold_key));
    db
}

/// Reads each key twice: enough accesses for a small cache to evict most pages.
fn touch(db: &sled::Db, keys: impl Iterator<Item = Vec<u8>> + Clone) {
    for _ in 0..2 {
        for k in keys.clone() {
            assert!(db.get(k).unwrap().is_some());
        }
    }
}

/// One cold store shared by the property test's cases (writing it takes a while).
fn shared_cold() -> &'static sled::Db {
    static COLD: OnceLock<(tempfile::TempDir, sled::Db)> = OnceLock::new();
    let (_, db) = COLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let db = write_cold(dir.path());
        // Cold: most leaves are read straight from the log.
        by_leaves(&db, &Bound::Unbounded, &Bound::Unbounded);
        assert!(db.scan_leaves_cold_reads().0 > 1_000);
        (dir, db)
    });
    db
}

/// All of a cold store, scanned whole and in many ranges, twice (the second pass after
/// `range` pulled some leaves into the cache and evicted others): the same as `range`,
/// and the leaves were mostly read straight from the log.
#[test]
fn scan_leaves_cold_is_range() {
    let dir = tempfile::tempdir().unwrap();
    let db = write_cold(dir.path());
    let (cold0, linked0) = db.scan_leaves_cold_reads();
    let scanned = by_leaves(&db, &Bound::Unbounded, &Bound::Unbounded);
    let (cold, linked) = db.scan_leaves_cold_reads();
    let (cold, linked) = (cold - cold0, linked - linked0);
    let all = by_range(&db, &Bound::Unbounded, &Bound::Unbounded);
    let live = (0..COLD_ITEMS).filter(|&i| cold_live(i)).count();
    assert_eq!(all.len(), live + 2);
    assert!(scanned == all, "whole scan differs from range");
    // ~1 700 leaves; a 64 KiB cache holds few of them.
    assert!(
        cold > 1_000,
        "only {cold} leaves read straight from the log"
    );
    // The scattered writes left many leaves as a base plus links.
    assert!(
        linked > 200,
        "only {linked} of {cold} leaves read from the log had links"
    );
    eprintln!("scan_leaves_cold_is_range: {cold} leaves read from the log, {linked} with links");
    let at = |i: usize| all[i].0.clone();
    let mut between = at(9_276);
    between.push(0);
    for pass in 0..2 {
        for (lo, hi) in [
            (Bound::Included(at(17)), Bound::Excluded(at(18))),
            (Bound::Included(at(17)), Bound::Included(at(15_000))),
            (Bound::Excluded(at(100)), Bound::Excluded(at(18_000))),
            (Bound::Included(between.clone()), Bound::Unbounded),
            (
                Bound::Excluded(between.clone()),
                Bound::Included(at(12_000)),
            ),
            (
                Bound::Included(b"c/host-0020\0".to_vec()),
                Bound::Excluded(b"c/host-0020\x01".to_vec()),
            ),
            (Bound::Included(b"c/host-0039\0".to_vec()), Bound::Unbounded),
            (Bound::Unbounded, Bound::Excluded(b"c/host-0003".to_vec())),
            (Bound::Included(b"zz".to_vec()), Bound::Unbounded),
        ] {
            let got = by_leaves(&db, &lo, &hi);
            assert!(
                got == by_range(&db, &lo, &hi),
                "pass {pass}: {lo:?}..{hi:?} differs from range"
            );
        }
    }
    let host20 = by_leaves(
        &db,
        &Bound::Included(b"c/host-0020\0".to_vec()),
        &Bound::Excluded(b"c/host-0020\x01".to_vec()),
    );
    assert_eq!(
        host20.len(),
        (20 * 500..21 * 500).filter(|&i| cold_live(i)).count()
    );
    let mut seen = 0;
    db.scan_leaves::<&[u8], _, _>(.., |_, _| {
        seen += 1;
        seen < 3_000
    })
    .unwrap();
    assert_eq!(seen, 3_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Arbitrary ranges over the shared cold store: bounds on keys, between keys and
    /// outside them. (Whole scans of it read most leaves from the log, `shared_cold`; so
    /// do these ranges past their first leaf.)
    #[test]
    fn scan_leaves_cold_is_range_prop(
        lo in 0..COLD_ITEMS + 2,
        hi in 0..COLD_ITEMS + 2,
        lo_kind in 0u8..3,
        hi_kind in 0u8..3,
        lo_between: bool,
        hi_between: bool,
    ) {
        let db = shared_cold();
        let edge = |i: u32, between: bool| {
            let mut k = if i < COLD_ITEMS {
                cold_key(i)
            } else if i == COLD_ITEMS {
                b"a".to_vec()
            } else {
                b"z".to_vec()
            };
            if between {
                k.push(0);
            }
            k
        };
        let (lo, hi) = (bound(lo_kind, edge(lo, lo_between)), bound(hi_kind, edge(hi, hi_between)));
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) = (&lo, &hi) {
            prop_assume!(l <= h);
        }
        let got = by_leaves(db, &lo, &hi);
        prop_assert!(got == by_range(db, &lo, &hi), "{:?}..{:?} differs from range", lo, hi);
    }
}

/// Writes racing with scans of a cold store (leaves read from the log while others are
/// pulled in, rewritten, split and merged) neither crash a scan nor make it repeat,
/// reorder, overshoot or lose a key that stays put.
#[test]
fn scan_leaves_cold_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let key = churn_key;
    const N: u32 = 30_000;
    {
        let db = cold_db(dir.path());
        // Even keys stay; odd keys come and go.
        for i in (0..N).step_by(2) {
            db.insert(key(i), i.to_be_bytes().repeat(i as usize % 7))
                .unwrap();
        }
        db.flush().unwrap();
    }
    let db = cold_db(dir.path());
    touch(&db, (0..N).step_by(2).map(key));
    let (cold0, _) = db.scan_leaves_cold_reads();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // A stretch at a time, so that most leaves stay cold for a while.
                    let from = round.wrapping_mul(7_919) % N;
                    for i in ((from | 1)..(from + 3_000).min(N)).step_by(2) {
                        if (i / 2 + w).is_multiple_of(2) {
                            if round.is_multiple_of(2) {
                                db.insert(key(i), vec![7u8; (i % 50) as usize]).unwrap();
                            } else {
                                db.remove(key(i)).unwrap();
                            }
                        }
                    }
                    round += 1;
                }
            })
        })
        .collect();
    for n in 0..40u32 {
        let (lo, hi) = (n * 997 % (N / 2), N / 2 + n * 331 % (N / 2));
        scan_while_odd_keys_churn(&db, lo, hi);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let cold = db.scan_leaves_cold_reads().0 - cold0;
    eprintln!("scan_leaves_cold_under_concurrent_writes: {cold} leaves read from the log");
    assert!(cold > 100, "only {cold} leaves read straight from the log");
}

/// The keys of the concurrent-write tests: even ones stay, odd ones come and go.
fn churn_key(i: u32) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

/// Scans `key(lo)..key(hi)` while writers insert and remove the odd keys: strictly
/// ascending, in range, and every (stable) even key there exactly once.
fn scan_while_odd_keys_churn(db: &sled::Db, lo: u32, hi: u32) {
    let key = churn_key;
    let mut got: Vec<Vec<u8>> = Vec::new();
    db.scan_leaves(key(lo)..key(hi), |k, _| {
        got.push(k.to_vec());
        true
    })
    .unwrap();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "not strictly ascending"
    );
    assert!(
        got.iter().all(|k| *k >= key(lo) && *k < key(hi)),
        "out of range"
    );
    let stable: Vec<Vec<u8>> = got
        .iter()
        .filter(|k| {
            let i: u32 = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
            i.is_multiple_of(2)
        })
        .cloned()
        .collect();
    let want: Vec<Vec<u8>> = (lo..hi).filter(|i| i % 2 == 0).map(key).collect();
    assert_eq!(stable, want, "a stable key was lost");
}
