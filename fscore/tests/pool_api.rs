//! Proves the public Pool API end to end on real files and on SimDisk:
//! mkfs, open, insert/get/delete/range both ways, data allocation, commit,
//! reopen with the committed contents, exclusive open, and a clean check.

mod support;

use fscore::{Error, Extent, Key, MkfsOptions, OpenOptions, Pool, SimDisk, FIRST_DATA_BLOCK};
use rand::SeedableRng;
use std::collections::BTreeMap;

const META_BYTES: u64 = 64 << 20;
const DATA_BYTES: u64 = 256 << 20;

fn value_for(index: u64) -> Vec<u8> {
    let len = 16 + (index % 49) as usize;
    (0..len).map(|at| (index as usize + at) as u8).collect()
}

fn fill(pool: &Pool, model: &mut BTreeMap<Key, Vec<u8>>, count: u64) {
    for index in 0..count {
        let key = Key::new(index % 7, index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let value = value_for(index);
        pool.insert(&key, &value).unwrap();
        model.insert(key, value);
        if index % 500 == 0 {
            pool.commit().unwrap();
        }
    }
}

fn assert_matches(pool: &Pool, model: &BTreeMap<Key, Vec<u8>>) {
    let all = pool.range(&Key::MIN, &Key::MAX, usize::MAX).unwrap();
    let expected: Vec<(Key, Vec<u8>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(all, expected);
    let mut backward = pool.range_rev(&Key::MIN, &Key::MAX, usize::MAX).unwrap();
    backward.reverse();
    assert_eq!(backward, expected);
    for (key, value) in model.iter().step_by(37) {
        assert_eq!(pool.get(key).unwrap().as_ref(), Some(value));
    }
}

#[test]
fn files_round_trip_through_commit_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    let info = Pool::mkfs(&meta, &data, &MkfsOptions::new(META_BYTES, DATA_BYTES)).unwrap();
    assert_eq!(info.data_blocks, DATA_BYTES / 4096);
    let mut model = BTreeMap::new();
    let extent;
    {
        let pool = Pool::open(&meta, &data, &OpenOptions::default()).unwrap();
        assert!(matches!(
            Pool::open(&meta, &data, &OpenOptions::default()),
            Err(Error::InUse)
        ));
        fill(&pool, &mut model, 20_000);
        extent = pool.alloc_data(8).unwrap();
        assert_eq!(extent.len, 8);
        pool.verify().unwrap();
        pool.commit().unwrap();
        // Not committed: must vanish at reopen.
        pool.insert(&Key::new(99, 99), b"lost").unwrap();
    }
    let pool = Pool::open(&meta, &data, &OpenOptions::default()).unwrap();
    assert_eq!(pool.get(&Key::new(99, 99)).unwrap(), None);
    assert_matches(&pool, &model);
    let info = pool.info();
    assert_eq!(info.items, model.len() as u64);
    assert_eq!(
        info.data_free_blocks,
        DATA_BYTES / 4096 - FIRST_DATA_BLOCK - 8
    );
    drop(pool);
    let report = fscore::check_with_data_refs(&meta, &data, |_, _| Vec::new()).unwrap();
    // The allocated extent is referenced by nobody: check must call it leaked.
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.device == fscore::Device::Data && p.block == extent.start),
        "{report:?}"
    );
    let report = fscore::check_with_data_refs(&meta, &data, |key, _| {
        if *key == model.keys().next().copied().unwrap() {
            vec![extent]
        } else {
            Vec::new()
        }
    })
    .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(Pool::check(&meta, &data).unwrap().is_clean());
}

#[test]
fn deletes_shrink_the_tree_and_ranges_respect_bounds() {
    let meta = SimDisk::new(META_BYTES);
    let data = SimDisk::new(1 << 20);
    Pool::mkfs_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        &MkfsOptions::new(META_BYTES, 1 << 20),
    )
    .unwrap();
    let pool = Pool::open_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        &OpenOptions::default(),
    )
    .unwrap();
    let mut model = BTreeMap::new();
    fill(&pool, &mut model, 10_000);
    let tall = pool.info().tree_height;
    assert!(tall >= 2);
    let keys: Vec<Key> = model.keys().copied().collect();
    for (index, key) in keys.iter().enumerate() {
        if index % 10 != 0 {
            assert!(pool.delete(key).unwrap());
            model.remove(key);
        }
        if index % 1000 == 0 {
            pool.verify().unwrap();
        }
    }
    assert!(!pool.delete(&keys[1]).unwrap());
    pool.verify().unwrap();
    assert_matches(&pool, &model);
    let (start, end) = (keys[100], keys[900]);
    let got = pool.range(&start, &end, 5).unwrap();
    let want: Vec<(Key, Vec<u8>)> = model
        .range(start..=end)
        .take(5)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(got, want);
    let got = pool.range_rev(&start, &end, 5).unwrap();
    let want: Vec<(Key, Vec<u8>)> = model
        .range(start..=end)
        .rev()
        .take(5)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(got, want);
    for key in model.keys().copied().collect::<Vec<_>>() {
        assert!(pool.delete(&key).unwrap());
    }
    assert_eq!(pool.info().tree_height, 1);
    pool.verify().unwrap();
    pool.commit().unwrap();
    drop(pool);
    let report = Pool::check_on(Box::new(meta), Box::new(data), Some(&|_, _| Vec::new())).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.items, 0);
}

#[test]
fn busy_data_blocks_come_back_only_after_commit() {
    let meta = SimDisk::new(8 << 20);
    let data = SimDisk::new(64 * 4096);
    Pool::mkfs_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        &MkfsOptions::new(8 << 20, 64 * 4096),
    )
    .unwrap();
    let pool = Pool::open_on(Box::new(meta), Box::new(data), &OpenOptions::default()).unwrap();
    // Block 0 is the data device's label: 63 allocatable blocks.
    let all = pool.alloc_data(64).unwrap();
    assert_eq!(all, Extent::new(FIRST_DATA_BLOCK, 63));
    pool.commit().unwrap();
    pool.free_data(all).unwrap();
    assert!(
        matches!(pool.free_data(Extent::new(3, 1)), Err(Error::Invalid(_))),
        "double free is refused"
    );
    assert!(
        matches!(pool.alloc_data(1), Err(Error::NoSpace)),
        "only busy space is left"
    );
    pool.commit().unwrap();
    assert_eq!(
        pool.alloc_data(100).unwrap(),
        Extent::new(FIRST_DATA_BLOCK, 63)
    );
}

/// The free space after a commit is the base chain plus the free-space log:
/// small commits append to the log (not a rewrite of every free extent),
/// the log is compacted into a new chain once it outgrows it, and after
/// every commit a reopen rebuilds exactly the free space the handle had.
#[test]
fn the_free_space_log_appends_compacts_and_replays_exactly() {
    let (meta, data) = support::new_pool(4 << 20, 16 << 20, 1024);
    let pool = support::open(&meta, &data).unwrap();
    let mut held: Vec<Extent> = Vec::new();
    let (mut appended, mut compacted, mut longest_log) = (0, 0, 0);
    for round in 0..300u64 {
        // Scatter data allocations and frees so free space fragments.
        for i in 0..3 {
            held.push(pool.alloc_data(1 + (round + i) % 3).unwrap());
        }
        if round % 2 == 1 {
            let extent = held.remove((round as usize * 7) % held.len());
            pool.free_data(extent).unwrap();
        }
        pool.insert(&Key::new(round % 5, round), &value_for(round))
            .unwrap();
        let before = pool.info();
        pool.commit().unwrap();
        let after = pool.info();
        if after.freelog_blocks == 0 {
            compacted += (before.freelog_blocks > 0) as u32;
        } else {
            appended += 1;
            longest_log = longest_log.max(after.freelog_blocks);
        }
        if round % 10 == 0 {
            let copy = support::open(
                &SimDisk::from_image(meta.durable_image()),
                &SimDisk::from_image(data.durable_image()),
            )
            .unwrap();
            let (a, b) = (copy.info(), pool.info());
            assert_eq!(
                (a.meta_free_blocks, a.data_free_blocks, a.freelog_entries),
                (b.meta_free_blocks, b.data_free_blocks, b.freelog_entries),
                "round {round}"
            );
            copy.verify().unwrap();
            drop(copy);
        }
    }
    assert!(appended > 100, "commits appended to the log: {appended}");
    assert!(compacted > 0, "the log was never compacted");
    assert!(longest_log > 1, "the log never spanned blocks");
    drop(pool);
    let report = Pool::check_on(Box::new(meta.clone()), Box::new(data.clone()), None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // Every allocation still held is allocated after a reopen: none is free.
    let pool = support::open(&meta, &data).unwrap();
    let free_before = pool.info().data_free_blocks;
    let held_blocks: u64 = held.iter().map(|e| e.len).sum();
    assert_eq!(
        free_before + held_blocks,
        pool.info().data_blocks - FIRST_DATA_BLOCK
    );
}

/// The tree's shape, read from its internal nodes, is consistent: one root,
/// each level's nodes are the items of the level above, and the leaves hold
/// every item.
#[test]
fn tree_shape_counts_every_node_and_item() {
    let (meta, data) = support::new_pool(64 << 20, 1 << 20, 1024);
    let pool = support::open(&meta, &data).unwrap();
    assert_eq!(pool.tree_shape().unwrap().len(), 1);
    let mut model = BTreeMap::new();
    fill(&pool, &mut model, 5_000);
    let shape = pool.tree_shape().unwrap();
    let info = pool.info();
    assert_eq!(shape.len(), info.tree_height as usize);
    assert!(shape.len() >= 3, "1 KiB blocks make a tall tree: {shape:?}");
    assert_eq!(shape[0].nodes, 1, "one root");
    for pair in shape.windows(2) {
        assert_eq!(
            pair[1].nodes, pair[0].items,
            "children are parent items: {shape:?}"
        );
    }
    let leaves = shape.last().unwrap();
    assert_eq!((leaves.level, leaves.items), (0, info.items));
}

/// A commit that frees more scattered extents than
/// `OVERLAPPED_ABSORB_EXTENTS_MIN` (256) leaves them to be merged into the
/// free space while the next commit's writes run on another thread: the
/// space is counted free at once, allocatable in full, never handed out
/// twice, and what reaches disk matches the live handle.
#[test]
fn space_freed_by_a_commit_is_merged_while_the_next_commit_writes() {
    let (meta, data) = support::new_pool(16 << 20, 64 << 20, 4096);
    let pool = support::open(&meta, &data).unwrap();
    let total = pool.info().data_blocks - FIRST_DATA_BLOCK;
    let singles: Vec<Extent> = (0..2000).map(|_| pool.alloc_data(1).unwrap()).collect();
    pool.commit().unwrap();
    // Every other block: 1000 extents that cannot merge with each other.
    for extent in singles.iter().step_by(2) {
        pool.free_data(*extent).unwrap();
    }
    pool.commit().unwrap();
    assert_eq!(pool.info().data_free_blocks, total - 1000);
    // This commit finds the 1000 freed extents waiting and merges them on
    // this thread while its writer thread writes.
    pool.insert(&Key::new(1, 1), b"next").unwrap();
    pool.commit().unwrap();
    pool.verify().unwrap();
    let copy = support::open(
        &SimDisk::from_image(meta.durable_image()),
        &SimDisk::from_image(data.durable_image()),
    )
    .unwrap();
    assert_eq!(copy.info().data_free_blocks, pool.info().data_free_blocks);
    copy.verify().unwrap();
    drop(copy);
    // All free space can be allocated, and none of it is a block still held.
    let held: std::collections::BTreeSet<u64> =
        singles.iter().skip(1).step_by(2).map(|e| e.start).collect();
    let mut got = 0;
    while let Ok(extent) = pool.alloc_data(1 << 20) {
        assert!(
            (extent.start..extent.end()).all(|b| !held.contains(&b)),
            "held block handed out in {extent:?}"
        );
        got += extent.len;
    }
    assert_eq!(got, total - 1000);
    pool.verify().unwrap();
}

/// A data allocation carried across a commit (a write still in flight) is
/// free in that commit, so a crash right after it leaks nothing; it stays
/// allocated in the live pool, and the next commit records it allocated
/// once it is referenced.
#[test]
fn an_allocation_carried_across_a_commit_is_free_in_it_and_allocated_after() {
    let (meta, data) = support::new_pool(1 << 20, 64 * 4096, 4096);
    let pool = support::open(&meta, &data).unwrap();
    let free_at_start = pool.info().data_free_blocks;
    let in_flight = pool.alloc_data(4).unwrap();
    pool.insert(&Key::new(0, 1), b"other change").unwrap();
    pool.begin_commit_carrying(&[in_flight])
        .unwrap()
        .finish()
        .unwrap();
    let after_carry = SimDisk::from_image(meta.durable_image());

    // Still allocated here: nothing else is handed its blocks.
    for _ in 0..(free_at_start - 4) {
        let extent = pool.alloc_data(1).unwrap();
        assert!(extent.end() <= in_flight.start || extent.start >= in_flight.end());
    }
    assert!(matches!(pool.alloc_data(1), Err(Error::NoSpace)));
    // The write lands: referenced, and the next commit records it.
    let key = Key::new(support::DATA_KEY_HI, 7);
    pool.insert(&key, &support::encode_extent(in_flight))
        .unwrap();
    pool.commit().unwrap();
    drop(pool);

    let crashed = support::open(&after_carry, &data).unwrap();
    assert_eq!(crashed.info().data_free_blocks, free_at_start);
    drop(crashed);
    let report = Pool::check_on(
        Box::new(after_carry.clone()),
        Box::new(data.clone()),
        Some(&support::data_refs),
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let reopened = support::open(&meta, &data).unwrap();
    assert_eq!(
        reopened.get(&key).unwrap(),
        Some(support::encode_extent(in_flight))
    );
    assert_eq!(reopened.info().data_free_blocks, 0);
}

/// Keys inserted in ascending order (a volume written from start to end)
/// leave nearly full leaves: a full node whose insert lands at its right end
/// splits off only the new key. Random order leaves the usual ~70%.
#[test]
fn ascending_inserts_pack_leaves_fuller_than_random_ones() {
    const ITEMS: u64 = 20_000;
    let leaf_fill = |keys: &[u64]| {
        let (meta, data) = support::new_pool(16 << 20, 64 * 4096, 4096);
        let pool = support::open(&meta, &data).unwrap();
        for &lo in keys {
            pool.insert(&Key::new(0, lo), &[0x5a; 20]).unwrap();
        }
        pool.verify().unwrap();
        let shape = pool.tree_shape().unwrap();
        let leaves = shape.last().unwrap();
        assert_eq!(leaves.level, 0);
        assert_eq!(leaves.items, ITEMS);
        leaves.items as f64 / leaves.nodes as f64
    };
    let ascending: Vec<u64> = (0..ITEMS).collect();
    let mut shuffled = ascending.clone();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    rand::seq::SliceRandom::shuffle(&mut shuffled[..], &mut rng);
    let (packed, random) = (leaf_fill(&ascending), leaf_fill(&shuffled));
    assert!(
        packed > 1.25 * random,
        "items per leaf: ascending {packed:.1}, random {random:.1}"
    );
}

/// mkfs of a pool on SimDisks of META_BYTES and 1 MiB of data.
fn mkfs_sim(meta: &SimDisk, data: &SimDisk, overwrite: bool) -> Result<fscore::PoolInfo, Error> {
    let opts = MkfsOptions {
        overwrite,
        ..MkfsOptions::new(META_BYTES, 1 << 20)
    };
    Pool::mkfs_on(Box::new(meta.clone()), Box::new(data.clone()), &opts)
}

fn open_sim(meta: &SimDisk, data: &SimDisk) -> Result<Pool, Error> {
    Pool::open_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        &OpenOptions::default(),
    )
}

/// mkfs refuses a metadata device that holds a pool, leaving the pool as it
/// was, even when one superblock slot is damaged or both are; it formats
/// over it only with `overwrite`. A device with no fscore magic is formatted.
#[test]
fn mkfs_refuses_to_format_over_a_pool_unless_told_to() {
    let (mkfs, open) = (mkfs_sim, open_sim);
    let (meta, data) = (SimDisk::new(META_BYTES), SimDisk::new(1 << 20));
    // Garbage without the magic is not a pool.
    meta.poke(0, &[0xa5; 8192]);
    let first = mkfs(&meta, &data, false).expect("a device without a pool");
    let pool = open(&meta, &data).unwrap();
    pool.insert(&Key::new(1, 1), b"kept").unwrap();
    pool.commit().unwrap();
    drop(pool);

    // With a blank data device: the metadata device alone is refused.
    let blank = SimDisk::new(1 << 20);
    match mkfs(&meta, &blank, false) {
        Err(Error::PoolExists(what)) => {
            assert!(what.contains(&format!("{:#018x}", first.pool_id)), "{what}")
        }
        other => panic!("mkfs over a pool: {other:?}"),
    }
    // One slot damaged (a flipped byte: its checksum fails), then both.
    for slot_offset in [0u64, 4096] {
        let mut byte = meta.peek(slot_offset + 100, 1);
        byte[0] ^= 0xff;
        meta.poke(slot_offset + 100, &byte);
        assert!(
            matches!(mkfs(&meta, &blank, false), Err(Error::PoolExists(_))),
            "slot at {slot_offset} damaged"
        );
    }
    // Refused every time without writing: the first damage undone, the
    // pool opens from that slot with what was committed.
    let mut byte = meta.peek(100, 1);
    byte[0] ^= 0xff;
    meta.poke(100, &byte);
    let pool = open(&meta, &data).unwrap();
    assert_eq!(
        pool.get(&Key::new(1, 1)).unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    drop(pool);

    let second = mkfs(&meta, &data, true).expect("overwrite");
    assert_ne!(second.pool_id, first.pool_id);
    let pool = open(&meta, &data).unwrap();
    assert_eq!(pool.get(&Key::new(1, 1)).unwrap(), None);
}

/// A pool opens only with its own data device: another pool's (or one
/// without a label) is refused naming whose it is, before anything is
/// written to it; mkfs refuses a data device holding a pool's data unless
/// told to overwrite.
#[test]
fn a_pool_opens_only_with_its_own_data_device() {
    let new_disks = || (SimDisk::new(META_BYTES), SimDisk::new(1 << 20));
    let (mkfs, open) = (mkfs_sim, open_sim);
    let (meta_a, data_a) = new_disks();
    let (meta_b, data_b) = new_disks();
    let a = mkfs(&meta_a, &data_a, false).unwrap();
    let b = mkfs(&meta_b, &data_b, false).unwrap();
    let image_b = data_b.peek(0, 1 << 20);
    match open(&meta_a, &data_b) {
        Err(Error::BadFormat(what)) => assert!(
            what.contains(&format!("belongs to pool {:#018x}", b.pool_id))
                && what.contains(&format!("{:#018x}", a.pool_id)),
            "{what}"
        ),
        other => panic!("pool a with b's data device: {:?}", other.map(|_| ())),
    }
    match open(&meta_a, &SimDisk::new(1 << 20)) {
        Err(Error::BadFormat(what)) => assert!(what.contains("carries no pool label"), "{what}"),
        other => panic!("a blank data device: {:?}", other.map(|_| ())),
    }
    // A fresh metadata device with b's data device: mkfs refuses.
    let (meta_c, _) = new_disks();
    match mkfs(&meta_c, &data_b, false) {
        Err(Error::PoolExists(what)) => assert!(
            what.contains(&format!("the data of pool {:#018x}", b.pool_id)),
            "{what}"
        ),
        other => panic!("mkfs over b's data: {other:?}"),
    }
    assert_eq!(data_b.peek(0, 1 << 20), image_b, "refusals wrote nothing");
    drop(open(&meta_b, &data_b).expect("b opens with its own devices"));
    let c = mkfs(&meta_c, &data_b, true).expect("overwrite");
    drop(open(&meta_c, &data_b).expect("c opens with the relabelled device"));
    assert!(matches!(open(&meta_b, &data_b), Err(Error::BadFormat(_))));
    assert_ne!(c.pool_id, b.pool_id);
}

/// A metadata device and a data device from different commits (one of
/// them restored from an older copy) are refused, naming the older one.
/// A pair one commit apart is what a crash inside a commit leaves (label
/// written, superblock not): that cannot be told from an old metadata copy
/// and opens.
#[test]
fn devices_from_different_commits_are_refused() {
    const DATA_BYTES: u64 = 1 << 20;
    let (meta, data) = (SimDisk::new(META_BYTES), SimDisk::new(DATA_BYTES));
    mkfs_sim(&meta, &data, false).unwrap();
    let commit_key = |key: u64| {
        let pool = open_sim(&meta, &data).unwrap();
        pool.insert(&Key::new(1, key), b"v").unwrap();
        pool.commit().unwrap();
    };
    commit_key(1);
    let (old_meta, old_data) = (
        meta.peek(0, META_BYTES as usize),
        data.peek(0, DATA_BYTES as usize),
    );
    commit_key(2);
    let one_commit_on = meta.peek(0, META_BYTES as usize);
    commit_key(3);
    let (new_meta, new_data) = (
        meta.peek(0, META_BYTES as usize),
        data.peek(0, DATA_BYTES as usize),
    );
    let refusal = || match open_sim(&meta, &data) {
        Err(Error::BadFormat(what)) => what,
        other => panic!("devices from different commits: {:?}", other.map(|_| ())),
    };

    data.poke(0, &old_data);
    let what = refusal();
    assert!(
        what.contains("the data device is older than the metadata device"),
        "{what}"
    );
    data.poke(0, &new_data);

    meta.poke(0, &old_meta);
    let what = refusal();
    assert!(
        what.contains("the metadata device is older than the data device"),
        "{what}"
    );

    meta.poke(0, &one_commit_on);
    let pool = open_sim(&meta, &data).expect("one commit apart: a crash mid-commit");
    assert!(pool.get(&Key::new(1, 2)).unwrap().is_some());
    drop(pool);

    meta.poke(0, &new_meta);
    data.poke(0, &new_data);
    let pool = open_sim(&meta, &data).unwrap();
    assert!(pool.get(&Key::new(1, 3)).unwrap().is_some());
}
