//! Proves crash consistency: random workloads with commits at random points
//! are cut at every write and flush boundary of the metadata disk, a random
//! subset of the unflushed writes (some torn) survives, and the reopened pool
//! checks clean (metadata and data space accounting included) and holds
//! exactly the model of the commit its superblock names, which is the last
//! completed commit or the one in flight. At least 10,000 crash points per
//! run; FSCORE_CRASH_SEED=<seed> replays a run.

mod support;

use fscore::{Error, Key, Pool, SimDisk};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use support::{contents, data_refs, new_pool, open, Workload};

const CRASH_POINTS_MIN: u64 = 10_000;
const META_BYTES: u64 = 512 << 10;
const DATA_BYTES: u64 = 128 * 4096;
/// Operations per workload: enough for splits, joins and several commits.
const OPS: usize = 160;

/// Runs the workload of `seed` on fresh copies of the formatted images,
/// failing the metadata disk at event `fail_at` (None: never).
fn run_until(
    seed: u64,
    images: &(Vec<u8>, Vec<u8>),
    fail_at: Option<u64>,
) -> (SimDisk, SimDisk, Workload, Result<(), Error>) {
    let meta = SimDisk::from_image(images.0.clone());
    let data = SimDisk::from_image(images.1.clone());
    let pool = open(&meta, &data).unwrap();
    if let Some(event) = fail_at {
        meta.fail_after_events(event);
    }
    let mut workload = Workload::new(seed, pool.info().seq, Default::default());
    workload.commit_every_max = 25;
    let result = workload
        .run(&pool, OPS)
        .and_then(|()| workload.commit(&pool));
    (meta, data, workload, result)
}

fn check_recovered(meta_image: Vec<u8>, data: &SimDisk, workload: &Workload, context: &str) {
    let meta = SimDisk::from_image(meta_image);
    let report = Pool::check_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Some(&data_refs),
    )
    .unwrap_or_else(|error| panic!("{context}: check failed to run: {error}"));
    assert!(report.is_clean(), "{context}: {:?}", report.problems);
    let pool = open(&meta, data).unwrap_or_else(|error| panic!("{context}: reopen: {error}"));
    let seq = pool.info().seq;
    let expected = workload
        .by_seq
        .get(&seq)
        .unwrap_or_else(|| panic!("{context}: recovered seq {seq} was never committed"));
    let last_completed = workload.by_seq.keys().rev().nth(1).copied().unwrap_or(seq);
    assert!(
        seq >= last_completed,
        "{context}: recovered seq {seq} older than the last completed commit {last_completed}"
    );
    assert_eq!(
        &contents(&pool).unwrap(),
        expected,
        "{context}: contents at seq {seq}"
    );
}

#[test]
fn every_crash_point_recovers_the_last_commit() {
    let seed = support::seed_from_env("FSCORE_CRASH_SEED");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut crash_points = 0u64;
    let mut workloads = 0;
    while crash_points < CRASH_POINTS_MIN {
        let block_bytes = if workloads % 2 == 0 { 1024 } else { 4096 };
        let (meta, data) = new_pool(META_BYTES, DATA_BYTES, block_bytes);
        let images = (meta.durable_image(), data.durable_image());
        let workload_seed: u64 = rng.gen();
        let (full_meta, _, _, result) = run_until(workload_seed, &images, None);
        result.unwrap();
        let events = full_meta.events();
        for fail_at in 0..events {
            let (meta, data, workload, result) = run_until(workload_seed, &images, Some(fail_at));
            assert!(
                result.is_err() && meta.has_failed(),
                "the disk failed at event {fail_at}"
            );
            let context = format!("seed {seed} workload {workloads} ({workload_seed}) block {block_bytes} crash at event {fail_at}/{events}");
            let mut random = || rng.gen::<u64>();
            let image = meta.crash_image(&mut random);
            check_recovered(image, &data, &workload, &context);
            crash_points += 1;
        }
        workloads += 1;
    }
    println!("{crash_points} crash points in {workloads} workloads");
}

#[test]
fn a_failed_write_poisons_the_handle_until_reopen() {
    let (meta, data) = new_pool(META_BYTES, DATA_BYTES, 4096);
    let pool = open(&meta, &data).unwrap();
    pool.insert(&Key::new(0, 1), b"one").unwrap();
    pool.commit().unwrap();
    pool.insert(&Key::new(0, 2), b"two").unwrap();
    meta.fail_after_events(0);
    assert!(matches!(pool.commit(), Err(Error::Io(_))));
    assert!(matches!(
        pool.insert(&Key::new(0, 3), b"three"),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(pool.commit(), Err(Error::Poisoned(_))));
    assert!(matches!(
        pool.free_data(fscore::Extent::new(0, 1)),
        Err(Error::Poisoned(_))
    ));
    drop(pool);
    let mut zero = || 1u64; // drop every unflushed write
    let pool = open(&SimDisk::from_image(meta.crash_image(&mut zero)), &data).unwrap();
    assert_eq!(
        pool.get(&Key::new(0, 1)).unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(pool.get(&Key::new(0, 2)).unwrap(), None);
}
