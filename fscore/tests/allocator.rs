//! Proves the allocator's promises against a model: a busy block (freed in
//! the open transaction) is never handed out before `commit_done`, nothing
//! is handed out twice, double and out-of-range frees are refused without
//! changing anything, and free + busy + allocated always add up to the
//! device. FSCORE_ALLOC_SEED=<seed> replays a run.

mod support;

use fscore::{Allocator, Error, Extent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

const FIRST: u64 = 3;
const END: u64 = 3000;

#[test]
fn busy_blocks_are_never_handed_out_before_commit() {
    let seed = support::seed_from_env("FSCORE_ALLOC_SEED");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut allocator = Allocator::all_free(FIRST, END);
    let mut allocated: Vec<Extent> = Vec::new();
    let mut allocated_blocks = BTreeSet::new();
    let mut busy_blocks = BTreeSet::new();
    // Freed by the last commit and not handed out since: freeing it again
    // must be refused whether or not it was merged into the free set yet.
    let mut freed_by_commit: Vec<Extent> = Vec::new();
    for step in 0..40_000 {
        match rng.gen_range(0..100) {
            0..=44 => {
                let single = rng.gen_bool(0.5);
                let result = if single {
                    allocator.alloc_one().map(|block| Extent::new(block, 1))
                } else {
                    allocator.alloc(rng.gen_range(1..20))
                };
                match result {
                    Ok(extent) => {
                        freed_by_commit
                            .retain(|f| f.end() <= extent.start || f.start >= extent.end());
                        for block in extent.start..extent.end() {
                            assert!(
                                (FIRST..END).contains(&block),
                                "seed {seed} step {step}: block {block} out of range"
                            );
                            assert!(
                                !busy_blocks.contains(&block),
                                "seed {seed} step {step}: busy block {block} handed out"
                            );
                            assert!(
                                allocated_blocks.insert(block),
                                "seed {seed} step {step}: block {block} handed out twice"
                            );
                        }
                        allocated.push(extent);
                    }
                    Err(Error::NoSpace) => {
                        assert_eq!(
                            allocator.free_blocks(),
                            0,
                            "seed {seed}: NoSpace with free blocks"
                        );
                    }
                    Err(error) => panic!("{error}"),
                }
            }
            45..=84 if !allocated.is_empty() => {
                let extent = allocated.swap_remove(rng.gen_range(0..allocated.len()));
                allocator.free(extent).unwrap();
                for block in extent.start..extent.end() {
                    allocated_blocks.remove(&block);
                    busy_blocks.insert(block);
                }
                let again = Extent::new(extent.start, 1);
                assert!(
                    matches!(allocator.free(again), Err(Error::Invalid(_))),
                    "double free refused"
                );
            }
            85..=89 => {
                assert!(matches!(
                    allocator.free(Extent::new(END - 1, 2)),
                    Err(Error::Invalid(_))
                ));
                assert!(matches!(
                    allocator.free(Extent::new(0, 1)),
                    Err(Error::Invalid(_))
                ));
            }
            90..=94 => {
                allocator.commit_done();
                freed_by_commit = busy_blocks.iter().map(|b| Extent::new(*b, 1)).collect();
                busy_blocks.clear();
            }
            95..=96 => allocator.absorb_freed(),
            97 if !freed_by_commit.is_empty() => {
                let extent = freed_by_commit[rng.gen_range(0..freed_by_commit.len())];
                assert!(
                    matches!(allocator.free(extent), Err(Error::Invalid(_))),
                    "seed {seed} step {step}: free of free block {} accepted",
                    extent.start
                );
            }
            _ => {}
        }
        assert_eq!(allocator.busy_blocks(), busy_blocks.len() as u64);
        assert_eq!(
            allocator.free_blocks() + allocator.busy_blocks() + allocated_blocks.len() as u64,
            END - FIRST,
            "seed {seed} step {step}: accounting"
        );
        if step % 1000 == 0 {
            allocator.verify().unwrap();
        }
    }
    allocator.verify().unwrap();
}

#[test]
fn best_fit_finds_large_runs_and_partial_when_none_is_long_enough() {
    let mut allocator = Allocator::all_free(0, 100);
    let first = allocator.alloc(10).unwrap();
    let rest = allocator.alloc(90).unwrap();
    assert_eq!((first, rest), (Extent::new(0, 10), Extent::new(10, 90)));
    allocator.free(Extent::new(0, 4)).unwrap();
    allocator.free(Extent::new(50, 30)).unwrap();
    assert!(
        matches!(allocator.alloc(1), Err(Error::NoSpace)),
        "only busy space left"
    );
    allocator.commit_done();
    assert_eq!(
        allocator.alloc(20).unwrap(),
        Extent::new(50, 20),
        "smallest run that holds 20"
    );
    assert_eq!(
        allocator.alloc(3).unwrap(),
        Extent::new(0, 3),
        "best fit prefers the 4-block run"
    );
    assert_eq!(
        allocator.alloc(50).unwrap(),
        Extent::new(70, 10),
        "partial: the largest run left"
    );
    allocator.verify().unwrap();
}

/// Single blocks come from one extent until it is used up, even when
/// another free extent is as large: a commit then writes them as one run
/// (alternating between two extents once cut the runs to a few blocks).
#[test]
fn single_blocks_continue_below_the_last_one_until_the_extent_is_used_up() {
    let mut allocator = Allocator::all_free(FIRST, END);
    let all = allocator.alloc(END - FIRST).unwrap();
    assert_eq!(all, Extent::new(FIRST, END - FIRST));
    allocator.free(Extent::new(100, 100)).unwrap();
    allocator.free(Extent::new(300, 100)).unwrap();
    allocator.commit_done();
    let blocks: Vec<u64> = (0..200).map(|_| allocator.alloc_one().unwrap()).collect();
    let expected: Vec<u64> = (300..400).rev().chain((100..200).rev()).collect();
    assert_eq!(blocks, expected);
    assert!(matches!(allocator.alloc_one(), Err(Error::NoSpace)));
}
