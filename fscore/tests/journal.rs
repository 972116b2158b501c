//! Proves the journal (`Pool::log`, `Pool::begin_sync`, `Pool::take_journal`)
//! neither loses nor invents records across crashes.
//!
//! A seeded workload changes keys, logs one record per change (the change
//! and its index in the history of changes) and syncs every few changes,
//! committing now and then; on small regions many syncs turn into commits.
//! It is cut at every write and flush boundary of either disk (the journal
//! region is on the data device, the tree on the metadata device), a random
//! subset of each disk's unflushed writes (some torn) survives, and the
//! reopened pool must hold the tree of a commit it made, return exactly the
//! records logged after that commit up to the end of a sync no earlier than
//! the last completed sync or commit (and no later than the last change
//! made), refuse to commit before they are taken, and check clean (data
//! space included) before and after they are applied and committed. A
//! chained test crashes recovered pools again. FSCORE_JOURNAL_SEED=<seed>
//! replays a run.

mod support;

use fscore::{
    CheckReport, Error, Extent, Key, OpenOptions, Pool, SimDisk, Storage, JOURNAL_BLOCKS_MAX,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use support::{contents, new_pool, Model};

/// Crash points of `every_crash_point_keeps_every_synced_record` per run.
const CRASH_POINTS_MIN: u64 = 3_000;
/// Changes per workload of the every-crash-point test.
const OPS: usize = 200;
/// Bytes of a journal block (a data block).
const JOURNAL_BLOCK_BYTES: usize = 4096;

/// A pool geometry. The journal region is min(4096, data blocks / 16,
/// free data blocks / 4) data blocks: these give regions of 16, 8 and 4.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    meta_bytes: u64,
    meta_block_bytes: u32,
    data_bytes: u64,
    keys_max: u64,
}

const GEOMETRIES: [Geometry; 3] = [
    Geometry {
        meta_bytes: 512 << 10,
        meta_block_bytes: 1024,
        data_bytes: 1 << 20,
        keys_max: 200,
    },
    Geometry {
        meta_bytes: 512 << 10,
        meta_block_bytes: 4096,
        data_bytes: 512 << 10,
        keys_max: 200,
    },
    Geometry {
        meta_bytes: 128 << 10,
        meta_block_bytes: 1024,
        data_bytes: 256 << 10,
        keys_max: 24,
    },
];

/// Opens as a caller that logs does: commits give the next transaction a
/// journal region (as large as the devices allow).
fn open(meta: &SimDisk, data: &SimDisk) -> Result<Pool, Error> {
    let opts = OpenOptions {
        cache_bytes: 64 << 10,
        journal_blocks_max: JOURNAL_BLOCKS_MAX,
    };
    Pool::open_on(Box::new(meta.clone()), Box::new(data.clone()), &opts)
}

/// The disk a crash test makes fail.
#[derive(Clone, Copy, Debug)]
enum Disk {
    Meta,
    Data,
}

/// Data space check: no value references data (the journal region is the
/// only data space in use).
fn no_data_refs(_: &Key, _: &[u8]) -> Vec<Extent> {
    Vec::new()
}

// ---------------------------------------------------------------------
// Records: what the test logs for each change.

/// One change: `value` None deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Change {
    /// Index of the change in the history (0, 1, 2, ... since mkfs).
    index: u32,
    key: u64,
    value: Option<Vec<u8>>,
}

impl Change {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.index.to_le_bytes().to_vec();
        out.extend_from_slice(&self.key.to_le_bytes());
        match &self.value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(value);
            }
        }
        out
    }

    fn decode(record: &[u8]) -> Change {
        assert!(record.len() >= 13, "record of {} bytes", record.len());
        let value = match record[12] {
            0 => None,
            1 => Some(record[13..].to_vec()),
            tag => panic!("record with tag {tag}"),
        };
        Change {
            index: u32::from_le_bytes(record[..4].try_into().unwrap()),
            key: u64::from_le_bytes(record[4..12].try_into().unwrap()),
            value,
        }
    }

    fn apply_to_model(&self, model: &mut Model) {
        let key = Key::new(0, self.key);
        match &self.value {
            Some(value) => {
                model.insert(key, value.clone());
            }
            None => {
                model.remove(&key);
            }
        }
    }

    fn apply_to_pool(&self, pool: &Pool) -> Result<(), Error> {
        let key = Key::new(0, self.key);
        match &self.value {
            Some(value) => pool.insert(&key, value),
            None => pool.delete(&key).map(|_| ()),
        }
    }
}

// ---------------------------------------------------------------------
// The model: every change ever made, and which of them are durable.

#[derive(Clone, Default)]
struct History {
    /// The record of every change, in order: change i is `log[i]`.
    log: Vec<Vec<u8>>,
    /// Changes a commit covers, by the seq it writes (a commit that was in
    /// flight when the disk failed included).
    commits: BTreeMap<u64, usize>,
    /// Seq of the last completed commit.
    completed_seq: u64,
    /// Changes covered by the last completed sync or commit: at least these
    /// must survive a crash.
    acked: usize,
    /// Changes covered by each sync begun (completed or not): a sync is
    /// replayed whole or not at all, so the records found end at one.
    sync_ends: BTreeSet<usize>,
    /// The state after every change (checked against the pool as it goes).
    model: Model,
    syncs: u64,
    syncs_committed: u64,
    multi_block_syncs: u64,
}

impl History {
    fn new(seq: u64) -> History {
        History {
            commits: BTreeMap::from([(seq, 0)]),
            completed_seq: seq,
            ..History::default()
        }
    }

    /// The state after the first `changes` changes.
    fn state(&self, changes: usize) -> Model {
        let mut model = Model::new();
        for record in &self.log[..changes] {
            Change::decode(record).apply_to_model(&mut model);
        }
        model
    }

    fn describe(&self, at: usize) -> String {
        match self.log.get(at) {
            Some(record) => format!("{:?}", Change::decode(record)),
            None => "nothing (never logged)".into(),
        }
    }
}

/// Runs changes, syncs and commits decided by a seeded generator (the same
/// seed replays the same calls up to where a crash stops them).
struct Workload {
    rng: SmallRng,
    keys_max: u64,
    value_len_max: usize,
    /// Changes until the next sync.
    until_sync: u32,
    commit_every: u32,
}

impl Workload {
    fn new(seed: u64, keys_max: u64) -> Workload {
        let mut workload = Workload {
            rng: SmallRng::seed_from_u64(seed),
            keys_max,
            value_len_max: 120,
            until_sync: 0,
            commit_every: 100,
        };
        workload.until_sync = workload.sync_gap();
        workload
    }

    /// Starts with a sync of about two journal blocks.
    fn long_first_sync(mut self) -> Workload {
        self.until_sync = self.rng.gen_range(70..=110);
        self
    }

    /// Mostly a few changes between syncs; sometimes enough for a sync of
    /// more than one journal block.
    fn sync_gap(&mut self) -> u32 {
        if self.rng.gen_ratio(1, 12) {
            self.rng.gen_range(50..=150)
        } else {
            self.rng.gen_range(1..=5)
        }
    }

    /// Stops at the first error (a crash).
    fn run(&mut self, pool: &Pool, history: &mut History, changes: usize) -> Result<(), Error> {
        self.value_len_max = self.value_len_max.min(pool.value_len_max());
        for _ in 0..changes {
            self.change(pool, history)?;
            self.until_sync -= 1;
            if self.until_sync == 0 {
                self.until_sync = self.sync_gap();
                sync(pool, history)?;
            }
            if self.rng.gen_ratio(1, self.commit_every) {
                commit(pool, history)?;
            }
        }
        Ok(())
    }

    fn change(&mut self, pool: &Pool, history: &mut History) -> Result<(), Error> {
        let key = self.rng.gen_range(0..self.keys_max);
        let value = if self.rng.gen_ratio(3, 4) {
            let len = self.rng.gen_range(0..=self.value_len_max);
            let fill: u8 = self.rng.gen();
            Some((0..len).map(|at| fill.wrapping_add(at as u8)).collect())
        } else {
            None
        };
        let change = Change {
            index: history.log.len() as u32,
            key,
            value,
        };
        let done = match &change.value {
            Some(value) => pool.insert(&Key::new(0, key), value),
            None => pool.delete(&Key::new(0, key)).map(|present| {
                assert_eq!(
                    present,
                    history.model.contains_key(&Key::new(0, key)),
                    "delete of {key}"
                );
            }),
        };
        match done {
            Ok(()) => {}
            // Refused: nothing changed, nothing to log.
            Err(Error::NoSpace) => return Ok(()),
            Err(error) => return Err(error),
        }
        let record = change.encode();
        pool.log(&record)?;
        change.apply_to_model(&mut history.model);
        history.log.push(record);
        Ok(())
    }
}

/// A sync of everything logged so far; records what it covers once it
/// completed.
fn sync(pool: &Pool, history: &mut History) -> Result<(), Error> {
    let covered = history.log.len();
    let before = pool.info();
    let generation = pool.generation();
    history.sync_ends.insert(covered);
    let pending = pool.begin_sync(&[])?;
    let is_commit = pending.is_commit();
    if is_commit {
        history.commits.insert(before.seq + 1, covered);
    }
    pending.finish()?;
    let after = pool.info();
    if is_commit {
        assert_eq!(after.seq, before.seq + 1, "a sync that commits");
        assert_eq!(
            after.journal_used_blocks, 0,
            "a commit starts an empty journal"
        );
        history.completed_seq = after.seq;
        history.syncs_committed += 1;
    } else {
        assert_eq!(after.seq, before.seq, "a sync is not a commit");
        assert_eq!(after.journal_pending_bytes, 0, "a sync writes every record");
        if after.journal_used_blocks > before.journal_used_blocks + 1 {
            history.multi_block_syncs += 1;
        }
    }
    if before.journal_pending_bytes > 0 {
        assert!(
            pool.generation() > generation,
            "a sync advances the generation"
        );
    }
    history.syncs += 1;
    history.acked = covered;
    Ok(())
}

fn commit(pool: &Pool, history: &mut History) -> Result<(), Error> {
    let covered = history.log.len();
    let seq = pool.info().seq;
    history.commits.insert(seq + 1, covered);
    pool.commit()?;
    let now = pool.info().seq;
    if now == seq {
        // Nothing to write (no change since the last commit).
        history.commits.remove(&(seq + 1));
    }
    history.completed_seq = now;
    history.acked = covered;
    Ok(())
}

// ---------------------------------------------------------------------
// Recovery.

/// Opens a crashed pool and checks it against `history`: the tree is a
/// commit's, the journal holds the records logged after it up to the end
/// of a sync at or after the last completed sync or commit, a commit is
/// refused until they are taken, and applying them gives that point's
/// state. Then `history` is cut to that point (what a next life of the pool
/// builds on) and, with `commit_after`, the pool commits. Returns the pool
/// and how many records it replayed.
fn recover(
    meta: &SimDisk,
    data: &SimDisk,
    history: &mut History,
    commit_after: bool,
    context: &str,
) -> (Pool, usize) {
    let report = Pool::check_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Some(&no_data_refs),
    )
    .unwrap_or_else(|error| panic!("{context}: check failed to run: {error}"));
    assert!(report.is_clean(), "{context}: {:?}", report.problems);
    let pool = open(meta, data).unwrap_or_else(|error| panic!("{context}: reopen: {error}"));
    let seq = pool.info().seq;
    assert_eq!(report.seq, seq, "{context}: check and open disagree");
    assert!(
        seq >= history.completed_seq,
        "{context}: recovered seq {seq} older than the last completed commit {}",
        history.completed_seq
    );
    let at = *history
        .commits
        .get(&seq)
        .unwrap_or_else(|| panic!("{context}: recovered seq {seq} was never committed"));
    assert_eq!(
        contents(&pool).unwrap(),
        history.state(at),
        "{context}: tree at seq {seq} (after change {at})"
    );
    if report.journal_records > 0 {
        assert!(
            matches!(pool.commit(), Err(Error::Invalid(_))),
            "{context}: a commit before the journal's records were taken"
        );
    }
    let replay = pool.take_journal();
    let records = replay.records;
    assert!(
        pool.take_journal().records.is_empty(),
        "{context}: records returned twice"
    );
    assert_eq!(
        records.len() as u64,
        report.journal_records,
        "{context}: check and open count different records"
    );
    for (i, record) in records.iter().enumerate() {
        assert!(
            history.log.get(at + i) == Some(record),
            "{context}: record {i} of {} after the commit at seq {seq} (change {at}) is {:?}, \
             but change {} was {}",
            records.len(),
            Change::decode(record),
            at + i,
            history.describe(at + i)
        );
    }
    let end = at + records.len();
    assert!(
        end == at || history.sync_ends.contains(&end),
        "{context}: the {} records found end inside a sync (changes {at}..{end})",
        records.len()
    );
    // The last sync starts where the one before it ended (or at the commit).
    let last_from = match records.len() {
        0 => at,
        _ => history
            .sync_ends
            .range(at + 1..end)
            .next_back()
            .copied()
            .unwrap_or(at),
    };
    assert_eq!(
        at + replay.last_sync_from,
        last_from,
        "{context}: where the last sync of the {} records found starts",
        records.len()
    );
    assert!(
        end >= history.acked,
        "{context}: changes {end}..{} were acknowledged by a sync or commit and are lost \
         (commit at seq {seq} covers {at}, {} records)",
        history.acked,
        records.len()
    );
    for record in &records {
        Change::decode(record)
            .apply_to_pool(&pool)
            .unwrap_or_else(|error| panic!("{context}: applying a record: {error}"));
    }
    let state = history.state(end);
    assert_eq!(
        contents(&pool).unwrap(),
        state,
        "{context}: after applying {} records",
        records.len()
    );
    // What a next life builds on: the changes after `end` never happened.
    history.log.truncate(end);
    history.commits.retain(|&s, _| s <= seq);
    history.completed_seq = seq;
    history.acked = end;
    history.sync_ends.retain(|&covered| covered <= end);
    history.model = state;
    if commit_after {
        commit(&pool, history).unwrap_or_else(|error| panic!("{context}: commit: {error}"));
    }
    (pool, records.len())
}

/// The durable images of both disks, checked clean, with the check's report.
fn durable_and_clean(meta: &SimDisk, data: &SimDisk) -> (SimDisk, SimDisk, CheckReport) {
    let (meta, data) = (durable(meta), durable(data));
    let report = Pool::check_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Some(&no_data_refs),
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    (meta, data, report)
}

fn durable(disk: &SimDisk) -> SimDisk {
    SimDisk::from_image(disk.durable_image())
}

/// After `recover(.., commit_after: true)`: the durable images check clean
/// with an empty journal and reopen to the same state.
fn check_durable(meta: &SimDisk, data: &SimDisk, history: &History, context: &str) {
    let (meta, data) = (durable(meta), durable(data));
    let report = Pool::check_on(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Some(&no_data_refs),
    )
    .unwrap_or_else(|error| panic!("{context}: check after the commit: {error}"));
    assert!(
        report.is_clean(),
        "{context}: after the commit: {:?}",
        report.problems
    );
    assert_eq!(
        report.journal_records, 0,
        "{context}: records after the commit"
    );
    let pool = open(&meta, &data).unwrap_or_else(|error| panic!("{context}: reopen: {error}"));
    assert_eq!(
        contents(&pool).unwrap(),
        history.model,
        "{context}: contents after the commit"
    );
    assert!(
        pool.take_journal().records.is_empty(),
        "{context}: records after the commit"
    );
}

fn images(geometry: Geometry) -> (Vec<u8>, Vec<u8>) {
    let (meta, data) = new_pool(
        geometry.meta_bytes,
        geometry.data_bytes,
        geometry.meta_block_bytes,
    );
    (meta.durable_image(), data.durable_image())
}

fn pool_from(images: &(Vec<u8>, Vec<u8>)) -> (SimDisk, SimDisk, Pool) {
    let meta = SimDisk::from_image(images.0.clone());
    let data = SimDisk::from_image(images.1.clone());
    let pool = open(&meta, &data).unwrap();
    (meta, data, pool)
}

/// What a crash leaves of both disks: each one's durable image plus some of
/// its unflushed writes, some torn.
fn crash(meta: &SimDisk, data: &SimDisk, rng: &mut SmallRng) -> (SimDisk, SimDisk) {
    let mut random = || rng.gen::<u64>();
    let meta = SimDisk::from_image(meta.crash_image(&mut random));
    let data = SimDisk::from_image(data.crash_image(&mut random));
    (meta, data)
}

/// Runs the workload of `seed` on fresh copies of `images`, failing a disk
/// at one of its events (None: never), ending with a sync.
fn run_until(
    seed: u64,
    geometry: Geometry,
    images: &(Vec<u8>, Vec<u8>),
    fail_at: Option<(Disk, u64)>,
) -> (SimDisk, SimDisk, History, Result<(), Error>) {
    let (meta, data, pool) = pool_from(images);
    match fail_at {
        Some((Disk::Meta, event)) => meta.fail_after_events(event),
        Some((Disk::Data, event)) => data.fail_after_events(event),
        None => {}
    }
    let mut history = History::new(pool.info().seq);
    let mut workload = Workload::new(seed, geometry.keys_max);
    let result = workload
        .run(&pool, &mut history, OPS)
        .and_then(|()| sync(&pool, &mut history));
    (meta, data, history, result)
}

// ---------------------------------------------------------------------
// The crash tests.

#[test]
fn every_crash_point_keeps_every_synced_record() {
    let seed = support::seed_from_env("FSCORE_JOURNAL_SEED");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut crash_points, mut workloads, mut replayed) = (0u64, 0usize, 0u64);
    let (mut syncs, mut syncs_committed, mut multi_block) = (0, 0, 0);
    let geometry_images: Vec<_> = GEOMETRIES.iter().map(|&g| images(g)).collect();
    while crash_points < CRASH_POINTS_MIN {
        let which = workloads % GEOMETRIES.len();
        let (geometry, images) = (GEOMETRIES[which], &geometry_images[which]);
        let workload_seed: u64 = rng.gen();
        let (full_meta, full_data, full, result) = run_until(workload_seed, geometry, images, None);
        result.unwrap();
        syncs += full.syncs;
        syncs_committed += full.syncs_committed;
        multi_block += full.multi_block_syncs;
        for (disk, events) in [
            (Disk::Meta, full_meta.events()),
            (Disk::Data, full_data.events()),
        ] {
            for fail_at in 0..events {
                let (meta, data, mut history, result) =
                    run_until(workload_seed, geometry, images, Some((disk, fail_at)));
                let failed = match disk {
                    Disk::Meta => meta.has_failed(),
                    Disk::Data => data.has_failed(),
                };
                assert!(
                    result.is_err() && failed,
                    "the {disk:?} disk failed at event {fail_at}"
                );
                let context = format!(
                    "seed {seed} workload {workloads} ({workload_seed}) {geometry:?} \
                     crash at {disk:?} event {fail_at}/{events}"
                );
                let (meta, data) = crash(&meta, &data, &mut rng);
                let (_, records) = recover(&meta, &data, &mut history, true, &context);
                replayed += (records > 0) as u64;
                check_durable(&meta, &data, &history, &context);
                crash_points += 1;
            }
        }
        workloads += 1;
    }
    println!(
        "{crash_points} crash points in {workloads} workloads, {replayed} recovered records; \
         the full runs made {syncs} syncs, {syncs_committed} of them commits, {multi_block} \
         of several blocks"
    );
    assert!(
        replayed > crash_points / 4,
        "too few crash points had records to replay"
    );
    assert!(syncs_committed > 0, "no sync found the region full");
    assert!(
        syncs > 3 * syncs_committed,
        "too few syncs were journal writes"
    );
    assert!(multi_block > 0, "no sync wrote more than one block");
}

/// Lives of a pool per chain of `crashes_of_recovered_pools_...`.
const LIVES: usize = 5;
const CHAINS: usize = 2_000;

/// Each life of a pool recovers what the previous one left (checked as in
/// `recover`), sometimes commits, runs a workload and crashes at a random
/// point, often within its first sync. So a transaction whose syncs never
/// completed may be continued by the next life, with the same seq: what
/// that life's syncs leave must not mix with what the earlier one's left.
#[test]
fn crashes_of_recovered_pools_keep_every_synced_record() {
    let seed = support::seed_from_env("FSCORE_JOURNAL_SEED");
    let mut rng = SmallRng::seed_from_u64(seed);
    let geometry_images: Vec<_> = GEOMETRIES.iter().map(|&g| images(g)).collect();
    let mut replayed = 0;
    for chain in 0..CHAINS {
        let which = chain % GEOMETRIES.len();
        let geometry = GEOMETRIES[which];
        let (mut meta, mut data) = (
            SimDisk::from_image(geometry_images[which].0.clone()),
            SimDisk::from_image(geometry_images[which].1.clone()),
        );
        let mut history = History::default();
        for life in 0..=LIVES {
            let context = format!("seed {seed} chain {chain} {geometry:?} life {life}");
            let pool = if life == 0 {
                let pool = open(&meta, &data).unwrap();
                history = History::new(pool.info().seq);
                pool
            } else {
                let (pool, records) =
                    recover(&meta, &data, &mut history, rng.gen_ratio(1, 4), &context);
                replayed += (records > 0) as usize;
                pool
            };
            if life == LIVES {
                break;
            }
            // Often within the first sync: its block writes or its flush.
            let fail_at = if rng.gen_ratio(2, 3) {
                rng.gen_range(0..3)
            } else {
                rng.gen_range(0..80)
            };
            if rng.gen_ratio(3, 4) {
                data.fail_after_events(fail_at);
            } else {
                meta.fail_after_events(fail_at);
            }
            let mut workload = Workload::new(rng.gen(), geometry.keys_max);
            if rng.gen_ratio(2, 3) {
                workload = workload.long_first_sync();
            }
            let _ = workload.run(&pool, &mut history, rng.gen_range(1..=150));
            drop(pool);
            (meta, data) = crash(&meta, &data, &mut rng);
        }
    }
    println!("{CHAINS} chains of {LIVES} crashes, {replayed} recovered records");
}

/// A crash image from a script: for each unflushed write in issue order,
/// 0 keeps it whole, 1 drops it, 2 tears it and then one entry per 512-byte
/// sector says whether it lands (0) or not (see `SimDisk::crash_image`);
/// writes past the script are dropped.
fn scripted_crash(disk: &SimDisk, script: &[u64]) -> SimDisk {
    let mut next = script.iter().copied();
    let mut random = || next.next().unwrap_or(1);
    SimDisk::from_image(disk.crash_image(&mut random))
}

/// A record of life `life`, 200 bytes: 20 fit in a journal block.
fn life_record(life: u8, index: u8) -> Vec<u8> {
    let mut record = vec![life; 200];
    record[1] = index;
    record
}

/// A fresh pool for the tests of lives that follow one another.
fn fresh_pool() -> (SimDisk, SimDisk) {
    new_pool(512 << 10, 2 << 20, 1024)
}

/// Runs one life: opens, (in the first life) commits so that its syncs go
/// to the journal, logs `records` records, and syncs with the data disk
/// failing at event `fail_at` of the sync; the crash keeps what `script`
/// says of the data disk's unflushed writes.
fn life(
    meta: &SimDisk,
    data: &SimDisk,
    life: u8,
    records: u8,
    fail_at: u64,
    script: &[u64],
) -> (SimDisk, SimDisk, Option<u64>) {
    let pool = open(meta, data).unwrap();
    assert!(pool.take_journal().records.is_empty(), "life {life}");
    if life == 0 {
        pool.insert(&Key::new(0, 1), b"committed").unwrap();
        pool.commit().unwrap();
    }
    for index in 0..records {
        pool.log(&life_record(life, index)).unwrap();
    }
    data.fail_after_events(fail_at);
    // (A pool that never writes a region again after an open commits
    // instead: then nothing of this life's can mix with an earlier one's.)
    let pending = pool.begin_sync(&[]).unwrap();
    let journal_blocks = (!pending.is_commit()).then(|| pool.info().journal_used_blocks);
    let _ = pending.finish();
    drop(pool);
    let meta = SimDisk::from_image(meta.crash_image(&mut || 1));
    (meta, scripted_crash(data, script), journal_blocks)
}

/// Only a prefix of the last life's records may come back.
fn assert_only_a_prefix_of_life(meta: &SimDisk, data: &SimDisk, last: u8) {
    let pool = open(meta, data).unwrap();
    let records = pool.take_journal().records;
    let lives: Vec<u8> = records.iter().map(|record| record[0]).collect();
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(index, record)| *record == life_record(last, index as u8)),
        "records of lives {lives:?}: only a prefix of life {last}'s may be replayed \
         (the others' syncs never completed)"
    );
    assert_eq!(
        contents(&pool).unwrap(),
        model_of(&[(1, b"committed")]),
        "only the commit of life 0"
    );
}

/// A sync whose first block was lost and whose second landed leaves an
/// intact block of the open transaction's seq in the region, and the
/// reopened pool finds no records. If its next life syncs into the same
/// blocks with the same seq, a crash of that sync that keeps its first
/// block and loses its second must not give the earlier life's second
/// block as the rest of the sync.
#[test]
fn a_torn_sync_of_one_life_does_not_complete_a_torn_sync_of_the_next() {
    let (meta, data) = fresh_pool();
    // Two block writes (events 0 and 1), then the flush (2) fails.
    let (meta, data, blocks) = life(&meta, &data, 0, 30, 2, &[1, 0]);
    assert_eq!(
        blocks,
        Some(2),
        "life 0 writes a journal sync of two blocks"
    );
    let (meta, data, _) = life(&meta, &data, 1, 30, 2, &[0, 1]);
    assert_only_a_prefix_of_life(&meta, &data, 1);
}

/// The same with tearing inside a block (512-byte sectors): life 0 leaves
/// all but the first sector of a full journal block, life 1 only the first
/// sector of a short one (all its others are zeros), which reads as
/// damage; life 2's short block, whose first sector is lost and whose
/// zeros land, must not complete life 1's block.
#[test]
fn a_torn_block_of_one_life_is_not_completed_by_the_next() {
    const SECTORS: usize = JOURNAL_BLOCK_BYTES / 512;
    let torn = |first_lands: bool| {
        let mut script = vec![2, if first_lands { 0 } else { 1 }];
        script.extend(std::iter::repeat_n(
            if first_lands { 1 } else { 0 },
            SECTORS - 1,
        ));
        script
    };
    let (meta, data) = fresh_pool();
    // One block write (event 0), then the flush (1) fails.
    let (meta, data, blocks) = life(&meta, &data, 0, 20, 1, &torn(false));
    assert_eq!(blocks, Some(1), "life 0 writes a journal sync of one block");
    let (meta, data, _) = life(&meta, &data, 1, 2, 1, &torn(true));
    let (meta, data, _) = life(&meta, &data, 2, 2, 1, &torn(false));
    assert_only_a_prefix_of_life(&meta, &data, 2);
}

// ---------------------------------------------------------------------
// Single behaviours.

fn key_record(key: u64, value: &[u8]) -> Vec<u8> {
    Change {
        index: key as u32,
        key,
        value: Some(value.to_vec()),
    }
    .encode()
}

fn insert_logged(pool: &Pool, key: u64, value: &[u8]) -> Vec<u8> {
    pool.insert(&Key::new(0, key), value).unwrap();
    let record = key_record(key, value);
    pool.log(&record).unwrap();
    record
}

/// A small pool with a journal, whose first commit (with key 1 = "one")
/// gave the journal its region.
fn committed_pool() -> (SimDisk, SimDisk, Pool) {
    let (meta, data) = new_pool(512 << 10, 2 << 20, 4096);
    let pool = open(&meta, &data).unwrap();
    pool.insert(&Key::new(0, 1), b"one").unwrap();
    pool.commit().unwrap();
    (meta, data, pool)
}

fn model_of(items: &[(u64, &[u8])]) -> Model {
    items
        .iter()
        .map(|&(key, value)| (Key::new(0, key), value.to_vec()))
        .collect()
}

/// A sync that has room in the region writes only the journal: the
/// superblock stays, and a reopen finds the commit's tree plus exactly the
/// synced records, in order (not the ones logged after the last sync),
/// with the last sync's first record marked, refuses to commit until they
/// are taken, and returns them once.
#[test]
fn a_sync_keeps_the_commit_and_returns_exactly_its_records() {
    let (meta, data, pool) = committed_pool();
    let seq = pool.info().seq;
    let generation = pool.generation();
    let mut synced = vec![
        insert_logged(&pool, 2, b"two"),
        insert_logged(&pool, 3, b"three"),
    ];
    let pending = pool.begin_sync(&[]).unwrap();
    assert!(!pending.is_commit(), "the region has room");
    pending.finish().unwrap();
    let info = pool.info();
    assert_eq!(info.seq, seq, "a sync is not a commit");
    assert_eq!(info.journal_used_blocks, 1);
    assert_eq!(info.journal_pending_bytes, 0);
    assert!(
        pool.generation() > generation,
        "a sync advances the generation"
    );
    synced.push(insert_logged(&pool, 2, b"two again"));
    let pending = pool.begin_sync(&[]).unwrap();
    assert!(!pending.is_commit());
    pending.finish().unwrap();
    assert_eq!(pool.info().seq, seq);
    // Logged, never synced: lost in a crash.
    insert_logged(&pool, 4, b"four");
    drop(pool);

    let (meta, data, report) = durable_and_clean(&meta, &data);
    assert_eq!((report.seq, report.journal_records), (seq, 3));
    // A handle that does not journal itself still finds them.
    let records = support::open(&meta, &data).unwrap().take_journal().records;
    assert_eq!(
        records, synced,
        "opened without a journal region of its own"
    );
    let pool = open(&meta, &data).unwrap();
    assert_eq!(pool.info().seq, seq);
    assert_eq!(contents(&pool).unwrap(), model_of(&[(1, b"one")]));
    assert!(
        matches!(pool.commit(), Err(Error::Invalid(_))),
        "a commit before the records are taken"
    );
    let replay = pool.take_journal();
    assert_eq!(replay.records, synced);
    assert_eq!(
        replay.last_sync_from, 2,
        "the last sync starts at its first record"
    );
    assert!(pool.take_journal().records.is_empty(), "returned once");
    for record in &replay.records {
        Change::decode(record).apply_to_pool(&pool).unwrap();
    }
    pool.commit().unwrap();
    assert_eq!(pool.info().seq, seq + 1);
    drop(pool);

    let (meta, data, report) = durable_and_clean(&meta, &data);
    assert_eq!(report.journal_records, 0, "the commit covered every record");
    let pool = open(&meta, &data).unwrap();
    assert!(
        pool.take_journal().records.is_empty(),
        "the commit covers them"
    );
    assert_eq!(
        contents(&pool).unwrap(),
        model_of(&[(1, b"one"), (2, b"two again"), (3, b"three")])
    );
}

/// Data written before a sync that completed is durable with its records;
/// a crash in the next sync may keep that sync's journal block and lose its
/// data (one flush covers both), which `last_sync_from` tells the caller.
#[test]
fn the_data_of_every_sync_but_the_last_is_durable() {
    let (meta, data, pool) = committed_pool();
    let mut writer = data.clone();
    let mut write_logged = |key: u64, fill: u8| {
        let extent = pool.alloc_data(1).unwrap();
        writer
            .write_batch(&[(extent.start * 4096, &[fill; 4096][..])])
            .unwrap();
        (
            extent,
            insert_logged(&pool, key, &extent.start.to_le_bytes()),
        )
    };
    let (first, first_record) = write_logged(2, 0xa1);
    pool.begin_sync(&[]).unwrap().finish().unwrap();
    // The data write (event 0) and the journal block (1) are issued, the
    // flush (2) fails.
    data.fail_after_events(2);
    let (_, second_record) = write_logged(3, 0xa2);
    let pending = pool.begin_sync(&[]).unwrap();
    assert!(!pending.is_commit());
    assert!(pending.finish().is_err());
    drop(pool);
    // The data is lost, the journal block lands.
    let data = scripted_crash(&data, &[1, 0]);
    let pool = open(&durable(&meta), &data).unwrap();
    let replay = pool.take_journal();
    assert_eq!(replay.records, vec![first_record, second_record]);
    assert_eq!(replay.last_sync_from, 1, "the second sync is the last");
    assert_eq!(
        data.peek(first.start * 4096, 4096),
        vec![0xa1; 4096],
        "the data of a completed sync"
    );
}

/// The journal blocks (block number, sync_first) of transaction `seq` in a
/// disk image of `block_bytes` blocks: those whose header has kind 4 and
/// that seq.
fn journal_blocks(image: &[u8], block_bytes: usize, seq: u64) -> Vec<(u64, u32)> {
    (0..image.len() / block_bytes)
        .filter_map(|blkno| {
            let block = &image[blkno * block_bytes..(blkno + 1) * block_bytes];
            let kind = block[32];
            let block_seq = u64::from_le_bytes(block[16..24].try_into().unwrap());
            let sync_first = u32::from_le_bytes(block[48..52].try_into().unwrap());
            (kind == 4 && block_seq == seq).then_some((blkno as u64, sync_first))
        })
        .collect()
}

/// Damage to a sync that completed, behind a later sync that completed
/// too, is corruption (open fails, check reports it), never a silent loss
/// of both syncs' records; damage to the last sync only ends the journal
/// before it (it could have been cut short by a crash).
#[test]
fn a_damaged_sync_before_an_intact_one_is_corruption() {
    let (meta, data, pool) = committed_pool();
    let txn = pool.info().seq + 1;
    let first = vec![insert_logged(&pool, 2, b"two")];
    pool.begin_sync(&[]).unwrap().finish().unwrap();
    insert_logged(&pool, 3, b"three");
    pool.begin_sync(&[]).unwrap().finish().unwrap();
    assert_eq!(pool.info().journal_used_blocks, 2);
    drop(pool);

    let image = data.durable_image();
    let mut blocks = journal_blocks(&image, JOURNAL_BLOCK_BYTES, txn);
    blocks.sort_by_key(|&(_, sync_first)| sync_first);
    assert_eq!(
        blocks
            .iter()
            .map(|&(_, sync_first)| sync_first)
            .collect::<Vec<_>>(),
        vec![0, 1],
        "one block per sync on the data device: {blocks:?}"
    );
    let meta = durable(&meta);
    let flipped = |blkno: u64| {
        let disk = SimDisk::from_image(image.clone());
        let at = blkno * JOURNAL_BLOCK_BYTES as u64 + 100; // inside the first record
        let byte = disk.peek(at, 1)[0];
        disk.poke(at, &[byte ^ 0x40]);
        disk
    };

    let damaged_first = flipped(blocks[0].0);
    assert!(
        matches!(open(&meta, &damaged_first), Err(Error::Corrupt { .. })),
        "damage before an intact sync must not read as a crash"
    );
    let report = Pool::check_on(
        Box::new(meta.clone()),
        Box::new(damaged_first.clone()),
        None,
    )
    .unwrap();
    assert!(!report.is_clean(), "check must report the damaged journal");

    let damaged_last = flipped(blocks[1].0);
    let pool = open(&meta, &damaged_last).unwrap();
    assert_eq!(pool.take_journal().records, first);

    let pool = open(&meta, &SimDisk::from_image(image.clone())).unwrap();
    assert_eq!(pool.take_journal().records.len(), 2, "the undamaged image");
}

/// When the region has no room for a sync's records, `begin_sync` commits:
/// the data stays, the records are not returned after a reopen (the
/// commit covers them), and the next transaction journals into its own
/// region.
#[test]
fn a_full_region_turns_the_sync_into_a_commit() {
    let (meta, data) = new_pool(128 << 10, 256 << 10, 1024);
    let pool = open(&meta, &data).unwrap();
    // A commit in this life: its region is this life's alone.
    pool.insert(&Key::new(0, 1000), b"first").unwrap();
    pool.commit().unwrap();
    let region = pool.info().journal_blocks;
    assert!(
        (1..=8).contains(&region),
        "a small data device gets a small region: {region}"
    );
    let seq = pool.info().seq;
    let mut expected = model_of(&[(1000, b"first")]);
    let mut syncs = 0;
    let pending = loop {
        let value = format!("value {syncs}").into_bytes();
        insert_logged(&pool, syncs, &value);
        expected.insert(Key::new(0, syncs), value);
        let pending = pool.begin_sync(&[]).unwrap();
        if pending.is_commit() {
            break pending;
        }
        pending.finish().unwrap();
        syncs += 1;
        assert_eq!(pool.info().seq, seq, "sync {syncs} is not a commit");
        assert!(syncs <= region, "more one-block syncs than region blocks");
    };
    assert_eq!(syncs, region, "one block per sync until the region is full");
    pending.finish().unwrap();
    let info = pool.info();
    assert_eq!(info.seq, seq + 1, "the sync committed");
    assert_eq!(info.journal_used_blocks, 0);
    assert!(info.journal_blocks > 0 && info.journal_free_bytes > 0);
    drop(pool);

    let (meta, data, report) = durable_and_clean(&meta, &data);
    assert_eq!(report.journal_records, 0, "the commit covered every record");
    let pool = open(&meta, &data).unwrap();
    assert_eq!(pool.info().seq, seq + 1);
    assert!(
        pool.take_journal().records.is_empty(),
        "the commit covers them"
    );
    assert_eq!(contents(&pool).unwrap(), expected);
    // The next transaction's region takes syncs again.
    pool.insert(&Key::new(0, 1001), b"second").unwrap();
    pool.commit().unwrap();
    expected.insert(Key::new(0, 1001), b"second".to_vec());
    let after = vec![insert_logged(&pool, 100, b"after")];
    let pending = pool.begin_sync(&[]).unwrap();
    assert!(!pending.is_commit());
    pending.finish().unwrap();
    drop(pool);
    let pool = open(&durable(&meta), &durable(&data)).unwrap();
    assert_eq!(pool.take_journal().records, after);
    assert_eq!(contents(&pool).unwrap(), expected);
}

/// A journal block as a user of data space could write one: everything
/// right (pool, seq, block number, kind, checksum) but the region's nonce,
/// which it cannot know.
fn forged_journal_block(pool_id: u64, seq: u64, blkno: u64, record: &[u8]) -> Vec<u8> {
    let mut block = vec![0u8; JOURNAL_BLOCK_BYTES];
    block[4..8].copy_from_slice(b"FSMB");
    block[8..16].copy_from_slice(&pool_id.to_le_bytes());
    block[16..24].copy_from_slice(&seq.to_le_bytes());
    block[24..32].copy_from_slice(&blkno.to_le_bytes());
    block[32] = 4;
    block[48..52].copy_from_slice(&0u32.to_le_bytes()); // sync_first
    block[52..56].copy_from_slice(&1u32.to_le_bytes()); // sync_blocks
    block[56..60].copy_from_slice(&1u32.to_le_bytes()); // records
    block[64..72].copy_from_slice(&0x5eed_u64.to_le_bytes()); // nonce
    block[72] = record.len() as u8;
    block[73..73 + record.len()].copy_from_slice(record);
    let crc = crc32c::crc32c(&block[4..]);
    block[..4].copy_from_slice(&crc.to_le_bytes());
    block
}

/// The journal region is reused data space: journal blocks a user wrote
/// there (in data blocks it owned, freed since) are never replayed.
#[test]
fn journal_blocks_planted_in_data_space_are_not_replayed() {
    let (meta, data) = new_pool(128 << 10, 256 << 10, 1024);
    let pool = open(&meta, &data).unwrap();
    let commit_one = |key: u64| {
        pool.insert(&Key::new(0, key), b"value").unwrap();
        pool.commit().unwrap();
        pool.info()
    };
    let alloc_all = |owned: &mut Vec<Extent>| {
        while let Ok(extent) = pool.alloc_data(64) {
            owned.push(extent);
        }
    };
    assert!(commit_one(1).journal_blocks > 0);
    // The user takes all free data space; with none free, the next region
    // is empty, and the old one's blocks are free after the commit: the
    // user takes them too.
    let mut owned = Vec::new();
    alloc_all(&mut owned);
    assert_eq!(commit_one(2).journal_blocks, 0);
    alloc_all(&mut owned);
    let info = pool.info();
    assert_eq!(
        owned.iter().map(|extent| extent.len).sum::<u64>(),
        info.data_blocks - fscore::FIRST_DATA_BLOCK,
        "the user owns all data space but the label"
    );
    // It plants journal blocks everywhere for the transaction whose region
    // the second commit from now chooses (the next finds all space busy).
    let target = info.seq + 3;
    let mut writer = data.clone();
    for extent in &owned {
        for blkno in extent.start..extent.end() {
            let block = forged_journal_block(info.pool_id, target, blkno, b"planted");
            writer
                .write_batch(&[(blkno * JOURNAL_BLOCK_BYTES as u64, &block[..])])
                .unwrap();
        }
    }
    writer.flush().unwrap();
    for extent in owned {
        pool.free_data(extent).unwrap();
    }
    assert_eq!(commit_one(3).journal_blocks, 0);
    let info = commit_one(4);
    assert_eq!(info.seq + 1, target);
    assert!(info.journal_blocks > 0, "a region in the planted space");
    drop(pool);
    let pool = open(&durable(&meta), &durable(&data)).unwrap();
    assert_eq!(pool.take_journal().records, Vec::<Vec<u8>>::new());
}
