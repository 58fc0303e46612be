//! The vendored sled's `Tree::scan_leaves` (vendor/sled/PATCHED.md): the same items as
//! `Tree::range` for any range, across leaf boundaries, and sane under concurrent writes.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    let key = |i: u32| format!("k{i:06}").into_bytes();
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
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}
