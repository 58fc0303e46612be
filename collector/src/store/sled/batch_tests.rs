//! The vendored sled's `Tree::apply_batch`, which every store commit goes through, and its
//! `Tree::get_many`, which reads the CIs a commit changes: checked against a `BTreeMap`
//! model over batches that insert, overwrite and remove clustered keys (leaves fill, split
//! and merge inside one batch; runs of writes into one leaf are installed as one node),
//! with values inline and not, in memory and after a reopen from disk. The guard of the
//! vendored sled's leaf-at-a-time batches and reads (`vendor/sled/PATCHED.md`;
//! docs/BENCHMARKS.md, "Batches a leaf at a time") and of any later change to sled's write
//! path.

use std::collections::BTreeMap;

use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Keys clustered under a few prefixes, as the store's are (`c/<host>\0<class>\0<id>`), so
/// that one batch puts many writes into the same leaves.
fn key() -> impl Strategy<Value = Vec<u8>> {
    (0u8..3, 0u16..400).prop_map(|(prefix, n)| {
        let mut k = format!("c/host-{prefix}\0package\0").into_bytes();
        k.extend_from_slice(&n.to_be_bytes());
        k
    })
}

/// `None` removes; values both inline (≤ 22 bytes) and reference-counted.
fn write() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>)> {
    (
        key(),
        prop::option::weighted(0.8, (any::<u8>(), 0usize..64)),
    )
        .prop_map(|(k, v)| (k, v.map(|(b, len)| vec![b; len])))
}

fn apply(tree: &sled::Tree, model: &mut Model, writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        match v {
            Some(v) => {
                batch.insert(k.clone(), v.clone());
                model.insert(k.clone(), v.clone());
            }
            None => {
                batch.remove(k.clone());
                model.remove(k);
            }
        }
    }
    tree.apply_batch(batch).unwrap();
}

fn contents(tree: &sled::Tree) -> Model {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// sled releases its directory lock a moment after the last handle is dropped (its
/// background threads let go of the file last): retry as the store's tests do.
fn reopen(dir: &std::path::Path) -> sled::Db {
    for _ in 0..100 {
        match sled::Config::new().path(dir).open() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
    sled::Config::new().path(dir).open().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batches_match_a_model_in_memory_and_after_reopen(
        batches in prop::collection::vec(prop::collection::vec(write(), 0..300), 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("t").unwrap();
            for writes in &batches {
                apply(&tree, &mut model, writes);
                prop_assert_eq!(&contents(&tree), &model);
                // Point reads agree too (they walk from the root, not the batch's views).
                for (k, _) in writes {
                    let got = tree.get(k).unwrap().map(|v| v.to_vec());
                    prop_assert_eq!(got.as_ref(), model.get(k));
                }
                // And reads of many keys a leaf at a time, in key order and in the batch's.
                let mut sorted: Vec<&[u8]> = writes.iter().map(|(k, _)| k.as_slice()).collect();
                sorted.sort_unstable();
                let unsorted: Vec<&[u8]> = writes.iter().map(|(k, _)| k.as_slice()).collect();
                for ks in [&sorted, &unsorted] {
                    let got = tree.get_many(ks).unwrap();
                    prop_assert_eq!(got.len(), ks.len());
                    for (k, v) in ks.iter().zip(got) {
                        let v = v.map(|v| v.to_vec());
                        prop_assert_eq!(v.as_ref(), model.get(*k));
                    }
                }
            }
            db.flush().unwrap();
        }
        let db = reopen(dir.path());
        let tree = db.open_tree("t").unwrap();
        prop_assert_eq!(&contents(&tree), &model);
    }
}

/// One batch far larger than a leaf, into an empty tree and then over it: every key lands
/// (the batch's leaf is full after ~16 new keys, so later keys walk again and split it).
#[test]
fn a_large_batch_of_new_and_changed_keys() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let tree = db.open_tree("t").unwrap();
    let mut model = Model::new();
    for round in 0u8..3 {
        let writes: Vec<_> = (0u16..5_000)
            .map(|n| {
                let mut k = b"c/host\0package\0".to_vec();
                k.extend_from_slice(&n.to_be_bytes());
                // Odd rounds remove every third key; the others (re)write them all.
                let removed = round % 2 == 1 && n % 3 == 0;
                (k, (!removed).then(|| vec![round; 40]))
            })
            .collect();
        apply(&tree, &mut model, &writes);
        assert_eq!(contents(&tree), model, "round {round}");
    }
}

/// Readers never see half a batch: a writer sets every key of a group to the batch's number
/// (each leaf's run installed as one node) while a reader reads the whole group with
/// `get_many`, which holds sled's concurrency-control read lock for the whole call, so all
/// its values come from one batch.
#[test]
fn get_many_sees_whole_batches_while_batches_are_applied() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let tree = db.open_tree("t").unwrap();
    let keys: Vec<Vec<u8>> = (0u16..600)
        .map(|n| {
            let mut k = b"c/host\0package\0".to_vec();
            k.extend_from_slice(&n.to_be_bytes());
            k
        })
        .collect();
    let write = |round: u32| {
        let mut batch = sled::Batch::default();
        for k in &keys {
            // Values alternate between inline (≤ 22 bytes) and reference-counted sizes.
            let len = if round.is_multiple_of(2) { 8 } else { 40 };
            let mut v = round.to_be_bytes().to_vec();
            v.resize(len, 0);
            batch.insert(k.clone(), v);
        }
        tree.apply_batch(batch).unwrap();
    };
    write(0);
    let rounds = 200u32;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for round in 1..=rounds {
                write(round);
            }
        });
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let values = tree.get_many(&keys).unwrap();
            let first: [u8; 4] = values[0].as_ref().unwrap()[..4].try_into().unwrap();
            for v in &values {
                assert_eq!(v.as_ref().unwrap()[..4], first, "a read saw two batches");
            }
            reads += 1;
        }
        assert!(reads > 0);
    });
    let last = tree.get_many(&keys).unwrap();
    assert!(
        last.iter()
            .all(|v| v.as_ref().unwrap()[..4] == rounds.to_be_bytes())
    );
}

/// The vendored sled's I/O pool wakes one thread per job (`vendor/sled/PATCHED.md`,
/// `Queue::send`): a job queued while no thread waits, or while the woken one is still
/// waking, must still run, or a flush waiting for its iobuf's write never returns. Many
/// writers that each flush after every write queue jobs faster than the pool drains them;
/// all of them must finish, and everything flushed must be there after a reopen.
#[test]
fn concurrent_flushes_all_complete() {
    const WRITERS: u32 = 8;
    const WRITES: u32 = 150;
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for w in 0..WRITERS {
            let db = db.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                for n in 0..WRITES {
                    let key = format!("w{w}/{n:05}");
                    db.insert(key.as_bytes(), vec![w as u8; 300]).unwrap();
                    db.flush().unwrap();
                }
                done.send(w).unwrap();
            });
        }
        for _ in 0..WRITERS {
            // A lost wakeup leaves a flush waiting forever: fail instead of hanging CI.
            done_rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("a writer's flush never completed");
        }
    }
    let db = reopen(dir.path());
    assert_eq!(db.len(), (WRITERS * WRITES) as usize);
}
