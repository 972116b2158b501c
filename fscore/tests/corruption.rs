//! Proves that corruption is an error naming the block, never a panic or
//! wrong data: random bit flips in referenced metadata blocks make every
//! read that touches the block fail with `Corrupt { block }` and make check
//! report the block, flips in free blocks change nothing; node bytes that
//! are garbled behind a valid checksum (a software bug, not the disk) are
//! caught by the node verifier or at least give only corruption errors; a bad newest superblock falls back to the older one.
//! FSCORE_CORRUPTION_SEED=<seed> replays a run.

mod support;

use fscore::{Error, Key, Pool, SimDisk};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use support::{contents, new_pool, open, Model};

const META_BYTES: u64 = 4 << 20;
const BLOCK_BYTES: u32 = 4096;
const FLIPS: usize = 300;
/// Offset of the metadata block header's fields (docs/format.md).
const HEADER_MAGIC_AT: usize = 4;

fn build(seed: u64) -> (SimDisk, SimDisk, Model) {
    let (meta, data) = new_pool(META_BYTES, 1 << 20, BLOCK_BYTES);
    let pool = open(&meta, &data).unwrap();
    let mut workload = support::Workload::new(seed, pool.info().seq, Model::new());
    workload.keys_max = 3000;
    workload.run(&pool, 4000).unwrap();
    workload.commit(&pool).unwrap();
    // Changes made while that commit was written are in the next one,
    // with every in-flight allocation referenced or freed.
    workload.land_all_in_flight(&pool).unwrap();
    pool.commit().unwrap();
    let model = workload.model.clone();
    drop(pool);
    (meta, data, model)
}

fn check(meta: &SimDisk, data: &SimDisk) -> fscore::CheckReport {
    Pool::check_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Some(&support::data_refs),
    )
    .unwrap()
}

/// Reads everything every way; every error must be Corrupt naming `block`.
/// Returns how many reads failed.
fn read_all(meta: &SimDisk, data: &SimDisk, model: &Model, block: u64) -> usize {
    let pool = match open(meta, data) {
        Ok(pool) => pool,
        Err(Error::Corrupt { block: named, .. }) => {
            assert_eq!(named, block, "open names the corrupt block");
            return 1;
        }
        Err(error) => panic!("open: {error}"),
    };
    let mut failed = 0;
    let mut expect_corrupt = |result: Error| match result {
        Error::Corrupt { block: named, .. } => {
            assert_eq!(named, block, "error names the corrupt block");
            failed += 1;
        }
        other => panic!("unexpected error {other}"),
    };
    for (key, value) in model {
        match pool.get(key) {
            Ok(got) => assert_eq!(
                got.as_ref(),
                Some(value),
                "a read that succeeds returns the right value"
            ),
            Err(error) => expect_corrupt(error),
        }
    }
    match contents(&pool) {
        Ok(all) => assert_eq!(&all, model),
        Err(error) => expect_corrupt(error),
    }
    match pool.range_rev(&Key::MIN, &Key::MAX, usize::MAX) {
        Ok(all) => assert_eq!(all.len(), model.len()),
        Err(error) => expect_corrupt(error),
    }
    failed
}

#[test]
fn bit_flips_are_reported_with_the_block_number() {
    let seed = support::seed_from_env("FSCORE_CORRUPTION_SEED");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (meta, data, model) = build(seed);
    let clean = check(&meta, &data);
    assert!(clean.is_clean(), "{:?}", clean.problems);
    let referenced = clean.referenced_meta_blocks.clone();
    let meta_blocks = META_BYTES / BLOCK_BYTES as u64;
    let mut referenced_hits = 0;
    for _ in 0..FLIPS {
        let is_referenced = rng.gen_ratio(4, 5);
        let block = if is_referenced {
            referenced[rng.gen_range(0..referenced.len())]
        } else {
            loop {
                let block = rng.gen_range(2..meta_blocks);
                if referenced.binary_search(&block).is_err() {
                    break block;
                }
            }
        };
        let at = block * BLOCK_BYTES as u64 + rng.gen_range(0..BLOCK_BYTES as u64);
        let original = meta.peek(at, 1)[0];
        meta.poke(at, &[original ^ (1 << rng.gen_range(0..8))]);
        let report = check(&meta, &data);
        let failed = read_all(&meta, &data, &model, block);
        if is_referenced {
            assert!(
                report.problems.iter().any(|problem| problem.block == block),
                "seed {seed}: check names block {block}: {:?}",
                report.problems
            );
            referenced_hits += 1;
            let _ = failed;
        } else {
            assert!(
                report.is_clean(),
                "seed {seed}: a flip in free block {block} is harmless: {:?}",
                report.problems
            );
            assert_eq!(failed, 0);
        }
        meta.poke(at, &[original]);
    }
    assert!(referenced_hits > 0);
    assert!(check(&meta, &data).is_clean());
}

#[test]
fn garbled_nodes_behind_a_valid_checksum_never_panic() {
    let seed = support::seed_from_env("FSCORE_CORRUPTION_SEED");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (meta, data, model) = build(seed);
    let referenced = check(&meta, &data).referenced_meta_blocks;
    let mut caught = 0;
    for _ in 0..FLIPS {
        let block = referenced[rng.gen_range(0..referenced.len())];
        let offset = block * BLOCK_BYTES as u64;
        let original = meta.peek(offset, BLOCK_BYTES as usize);
        let mut garbled = original.clone();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(48..garbled.len());
            garbled[at] = rng.gen();
        }
        let crc = crc32c::crc32c(&garbled[HEADER_MAGIC_AT..]);
        garbled[..4].copy_from_slice(&crc.to_le_bytes());
        meta.poke(offset, &garbled);
        let report = check(&meta, &data);
        if report.problems.iter().any(|problem| problem.block == block) {
            caught += 1;
        }
        // Reads may return garbled values (the checksum was forged), and a
        // garbled child reference is reported at the block it points to,
        // but every error is a corruption error and nothing panics.
        if let Ok(pool) = open(&meta, &data) {
            for key in model.keys() {
                if let Err(error) = pool.get(key) {
                    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
                }
            }
        }
        meta.poke(offset, &original);
    }
    assert!(
        caught > 0,
        "structural damage is caught by the node verifier"
    );
}

#[test]
fn a_corrupt_newest_superblock_falls_back_to_the_older_one() {
    let (meta, data, _) = build(7);
    let seq = open(&meta, &data).unwrap().info().seq;
    let newest = (seq % 2) * 4096;
    let original = meta.peek(newest + 100, 1)[0];
    meta.poke(newest + 100, &[original ^ 1]);
    let pool = open(&meta, &data).unwrap();
    assert_eq!(pool.info().seq, seq - 1);
    drop(pool);
    assert!(check(&meta, &data).is_clean());
    let older = ((seq - 1) % 2) * 4096;
    meta.poke(older + 100, &[meta.peek(older + 100, 1)[0] ^ 1]);
    assert!(matches!(
        open(&meta, &data),
        Err(Error::Corrupt { .. } | Error::BadFormat(_))
    ));
    let zeroed = SimDisk::new(META_BYTES);
    assert!(matches!(open(&zeroed, &data), Err(Error::BadFormat(_))));
}
