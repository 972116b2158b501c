//! Proves the btree and pool against a `BTreeMap` model with proptest:
//! random insert/update/delete/lookup/range (both directions)/commit/reopen
//! sequences with small and large values, on tiny (1 KiB) and normal (4 KiB)
//! metadata blocks. The verifier (tree invariants, allocator indexes, space
//! accounting) runs after every operation in debug builds and every 16 in
//! release builds, and always at the end.

mod support;

use fscore::{Key, Pool};
use proptest::prelude::*;
use std::collections::BTreeMap;
use support::{contents, new_pool, open, Model};

#[derive(Clone, Debug)]
enum Op {
    Insert {
        key: u64,
        len: usize,
        fill: u8,
    },
    Delete {
        key: u64,
    },
    Get {
        key: u64,
    },
    Range {
        start: u64,
        end: u64,
        limit: usize,
        backward: bool,
    },
    Commit,
    Reopen,
}

/// Keys are drawn from a small space so updates and deletes hit.
const KEY_SPACE: u64 = 600;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEY_SPACE, 0usize..48, any::<u8>()).prop_map(|(key, len, fill)| Op::Insert { key, len, fill }),
        2 => (0..KEY_SPACE, 48usize..=1024, any::<u8>()).prop_map(|(key, len, fill)| Op::Insert { key, len, fill }),
        5 => (0..KEY_SPACE).prop_map(|key| Op::Delete { key }),
        2 => (0..KEY_SPACE).prop_map(|key| Op::Get { key }),
        1 => (0..KEY_SPACE, 0..KEY_SPACE, 0usize..80, any::<bool>())
            .prop_map(|(start, end, limit, backward)| Op::Range { start, end, limit, backward }),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn key(lo: u64) -> Key {
    // Spread keys over both halves of the key so comparisons see `hi` too.
    Key::new(lo % 3, lo.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn run(block_bytes: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let (meta, data) = new_pool(8 << 20, 1 << 20, block_bytes);
    let mut pool = open(&meta, &data).unwrap();
    let value_len_max = pool.value_len_max();
    let mut model = Model::new();
    let mut committed = BTreeMap::new();
    let verify_every = if cfg!(debug_assertions) { 1 } else { 16 };
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::Insert { key: lo, len, fill } => {
                let value: Vec<u8> = (0..(*len).min(value_len_max))
                    .map(|at| fill.wrapping_add(at as u8))
                    .collect();
                pool.insert(&key(*lo), &value).unwrap();
                model.insert(key(*lo), value);
            }
            Op::Delete { key: lo } => {
                prop_assert_eq!(
                    pool.delete(&key(*lo)).unwrap(),
                    model.remove(&key(*lo)).is_some()
                );
            }
            Op::Get { key: lo } => {
                let got = pool.get(&key(*lo)).unwrap();
                prop_assert_eq!(got.as_ref(), model.get(&key(*lo)));
            }
            Op::Range {
                start,
                end,
                limit,
                backward,
            } => {
                let (start, end) = (key(*start), key(*end));
                let got = if *backward {
                    pool.range_rev(&start, &end, *limit)
                } else {
                    pool.range(&start, &end, *limit)
                }
                .unwrap();
                let want: Vec<(Key, Vec<u8>)> = if start > end {
                    Vec::new()
                } else if *backward {
                    model
                        .range(start..=end)
                        .rev()
                        .take(*limit)
                        .map(|(k, v)| (*k, v.clone()))
                        .collect()
                } else {
                    model
                        .range(start..=end)
                        .take(*limit)
                        .map(|(k, v)| (*k, v.clone()))
                        .collect()
                };
                prop_assert_eq!(got, want);
            }
            Op::Commit => {
                pool.commit().unwrap();
                committed = model.clone();
            }
            Op::Reopen => {
                drop(pool);
                pool = open(&meta, &data).unwrap();
                model = committed.clone();
            }
        }
        if index % verify_every == 0 {
            pool.verify().unwrap();
        }
    }
    pool.verify().unwrap();
    prop_assert_eq!(&contents(&pool).unwrap(), &model);
    prop_assert_eq!(pool.info().items, model.len() as u64);
    pool.commit().unwrap();
    drop(pool);
    let report = Pool::check_on(Box::new(meta), Box::new(data), None).unwrap();
    prop_assert!(report.is_clean(), "{:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn tiny_blocks_match_the_model(ops in proptest::collection::vec(op(), 1..600)) {
        run(1024, &ops)?;
    }

    #[test]
    fn normal_blocks_match_the_model(ops in proptest::collection::vec(op(), 1..600)) {
        run(4096, &ops)?;
    }
}

/// Long deterministic run: many items, tall tiny-block tree, everything
/// deleted again, so joins and root shrinking happen at every level.
#[test]
fn grow_and_shrink_a_tall_tree() {
    let (meta, data) = new_pool(16 << 20, 1 << 20, 1024);
    let pool = open(&meta, &data).unwrap();
    let mut model = Model::new();
    for lo in 0..6000u64 {
        let value = vec![lo as u8; (lo % 40) as usize];
        pool.insert(&key(lo), &value).unwrap();
        model.insert(key(lo), value);
        if lo % 700 == 0 {
            pool.commit().unwrap();
        }
    }
    assert!(pool.info().tree_height >= 4, "tiny blocks make a tall tree");
    pool.verify().unwrap();
    for lo in (0..6000u64).rev().step_by(1).filter(|lo| lo % 5 != 0) {
        assert!(pool.delete(&key(lo)).unwrap());
        model.remove(&key(lo));
        if lo % 500 == 0 {
            pool.verify().unwrap();
            pool.commit().unwrap();
        }
    }
    pool.verify().unwrap();
    assert_eq!(contents(&pool).unwrap(), model);
    for lo in (0..6000u64).filter(|lo| lo % 5 == 0) {
        assert!(pool.delete(&key(lo)).unwrap());
    }
    pool.verify().unwrap();
    assert_eq!(pool.info().tree_height, 1);
    assert_eq!(pool.info().items, 0);
}
