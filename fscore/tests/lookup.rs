//! Proves point lookups through the cached child indexes (in-memory sorted
//! bound arrays of internal nodes that remember which cache slot each child
//! was last found in) against a model: lookups of present and absent keys,
//! repeated so every internal node gets indexed, interleaved with updates,
//! deletes and commits that replace cached blocks, through caches small
//! enough that slots are evicted and reused under the remembered hints.

mod support;

use fscore::{Key, OpenOptions, Pool};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use support::new_pool;

fn key(lo: u64) -> Key {
    Key::new(lo % 5, lo.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn check_all(pool: &Pool, model: &BTreeMap<u64, Vec<u8>>, keys: u64, rounds: usize) {
    for _ in 0..rounds {
        for lo in 0..keys {
            assert_eq!(
                pool.get(&key(lo)).unwrap().as_ref(),
                model.get(&lo),
                "key {lo}"
            );
        }
    }
}

fn run(block_bytes: u32, cache_bytes: u64, keys: u64, seed: u64) {
    let (meta, data) = new_pool(32 << 20, 1 << 20, block_bytes);
    let pool = Pool::open_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        &OpenOptions {
            cache_bytes,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model = BTreeMap::new();
    for _ in 0..4 {
        for _ in 0..keys {
            let lo = rng.gen_range(0..keys * 2);
            if rng.gen_ratio(1, 4) {
                assert_eq!(pool.delete(&key(lo)).unwrap(), model.remove(&lo).is_some());
            } else {
                let value = vec![rng.gen::<u8>(); rng.gen_range(0..40)];
                pool.insert(&key(lo), &value).unwrap();
                model.insert(lo, value);
            }
            if rng.gen_ratio(1, 50) {
                // Lookups through a tree with dirty and clean nodes.
                let probe = rng.gen_range(0..keys * 2);
                assert_eq!(pool.get(&key(probe)).unwrap().as_ref(), model.get(&probe));
            }
        }
        check_all(&pool, &model, keys * 2, 1);
        pool.commit().unwrap();
        check_all(&pool, &model, keys * 2, 3);
    }
    drop(pool);
    run_reopened(&meta, &data, cache_bytes, &model, keys * 2);
}

fn run_reopened(
    meta: &fscore::SimDisk,
    data: &fscore::SimDisk,
    cache_bytes: u64,
    model: &BTreeMap<u64, Vec<u8>>,
    keys: u64,
) {
    let pool = Pool::open_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        &OpenOptions {
            cache_bytes,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    check_all(&pool, model, keys, 3);
    pool.verify().unwrap();
}

#[test]
fn lookups_agree_with_the_model_through_a_small_cache() {
    // 1 KiB blocks make a tree of height 3-4; 24 cache slots force
    // evictions on nearly every descent.
    run(1024, 24 << 10, 3000, 1);
    run(4096, 64 << 10, 6000, 2);
}

#[test]
fn lookups_agree_with_the_model_through_a_large_cache() {
    run(1024, 64 << 20, 3000, 3);
    run(4096, 64 << 20, 6000, 4);
}
